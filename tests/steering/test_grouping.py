"""Stage and block units of real torchvision and timm networks, as a reader of each architecture names them.

Every expectation below is written from the architecture (its papers' and libraries' stages, depths and
module names), not copied from what the code returns. Also: custom groups, name clashes, no-ReLU models.
"""

from __future__ import annotations

import ct_tune
from ct_tune import InputError
from ct_tune.bench import evaluate_profile, model_units
from ct_tune.models import create_model
from ct_tune.pipelines import map_profile
from ct_tune.search import spec_from_dict
from ct_tune.steering import BetaProfile, apply_profile, find_layout, group_sites, trace_sites

import pytest
import torch
from torch import nn

from tests.helpers import formula
from tests.steering.zoo import example, timm_model, torchvision_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def resnet_blocks(depths: list[int]) -> list[str]:
    return ["stem"] + [f"layer{i}.{j}" for i, depth in enumerate(depths, 1) for j in range(depth)]


RESNET_STAGES = ["stem", "layer1", "layer2", "layer3", "layer4"]


def densenet121_blocks(*, tail: list[str]) -> list[str]:
    """Dense layers 6/12/24/16; each transition before the block it feeds."""
    blocks = ["stem"]
    for k, layers in enumerate([6, 12, 24, 16], 1):
        if k > 1:
            blocks.append(f"features.transition{k - 1}")
        blocks += [f"features.denseblock{k}.denselayer{j}" for j in range(1, layers + 1)]
    return blocks + tail


def peers(prefix: str, names: list[str]) -> list[str]:
    return [f"{prefix}{name}" for name in names]


# model -> (layout rule, stage units, block units)
TORCHVISION_UNITS: dict[str, tuple[str, list[str], list[str]]] = {
    "resnet18": ("ResNet layers", RESNET_STAGES, resnet_blocks([2, 2, 2, 2])),
    "resnet50": ("ResNet layers", RESNET_STAGES, resnet_blocks([3, 4, 6, 3])),
    # ReLUs at features.2/6/10/13/17/20/24/27, max-pools after 2, 6, 13, 20, 27; classifier ReLUs: the head
    "vgg11_bn": (
        "torchvision VGG",
        ["features.2", "features.6", "features.10..13", "features.17..20", "features.24..27", "head"],
        [*peers("features.", ["2", "6", "10", "13", "17", "20", "24", "27"]), "head"],
    ),
    # conv1 (11x11, stride 4) | conv2 | conv3-5, each closed by a max-pool; classifier ReLUs: the head
    "alexnet": (
        "torchvision AlexNet",
        ["features.1", "features.4", "features.7..11", "head"],
        [*peers("features.", ["1", "4", "7", "9", "11"]), "head"],
    ),
    "densenet121": (
        "torchvision DenseNet",
        ["stem", *(f"features.denseblock{k}" for k in range(1, 5)), "head"],  # head: forward's inline F.relu
        densenet121_blocks(tail=["head"]),
    ),
    # regnet_x_400mf: depths 1, 2, 7, 12
    "regnet_x_400mf": (
        "torchvision RegNet",
        ["stem", *(f"trunk_output.block{k}" for k in range(1, 5))],
        ["stem"]
        + [f"trunk_output.block{k}.block{k}-{j}" for k, depth in enumerate([1, 2, 7, 12], 1) for j in range(depth)],
    ),
    # conv1-conv3 stem; inception 3a-3b | 4a-4e | 5a-5b between max-pools
    "googlenet": (
        "torchvision GoogLeNet",
        ["stem", "inception3a..inception3b", "inception4a..inception4e", "inception5a..inception5b"],
        ["stem", *peers("inception", ["3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b"])],
    ),
    # five Conv2d stem layers; 35x35 (5b-5d), 17x17 (6a reduces, 6b-6e), 8x8 (7a reduces, 7b-7c)
    "inception_v3": (
        "torchvision Inception3",
        ["stem", "Mixed_5b..Mixed_5d", "Mixed_6a..Mixed_6e", "Mixed_7a..Mixed_7c"],
        ["stem", *peers("Mixed_", ["5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"])],
    ),
    # squeezenet1_1: conv1 stem; Fire 2-3 | 4-5 | 6-9 between max-pools; the classifier's ReLU: head
    "squeezenet1_1": (
        "torchvision SqueezeNet",
        ["stem", "features.3..4", "features.6..7", "features.9..12", "head"],
        ["stem", *peers("features.", ["3", "4", "6", "7", "9", "10", "11", "12"]), "head"],
    ),
    # conv1 stem; stage2-4 with 4, 8, 4 units; conv5 head
    "shufflenet_v2_x0_5": (
        "torchvision ShuffleNetV2",
        ["stem", "stage2", "stage3", "stage4", "head"],
        ["stem"] + [f"stage{k}.{j}" for k, n in [(2, 4), (3, 8), (4, 4)] for j in range(n)] + ["head"],
    ),
    # two stem convs (layers.2, layers.5 ReLUs); six stacks of 3, 3, 3, 2, 4, 1 blocks; last conv: head
    "mnasnet0_5": (
        "torchvision MNASNet",
        ["stem", *(f"layers.{k}" for k in range(8, 14)), "head"],
        ["stem"]
        + [f"layers.{k}.{j}" for k, n in zip(range(8, 14), [3, 3, 3, 2, 4, 1], strict=True) for j in range(n)]
        + ["head"],
    ),
    # mobilenet_v3_small: blocks 1, 2, 4, 9 have stride 2; the stem and last convs use Hardswish (no ReLU)
    "mobilenet_v3_small": (
        "torchvision MobileNetV3",
        ["features.1", "features.2..3", "features.4..8", "features.9..11"],
        ["features.1.block", *(f"features.{k}" for k in range(2, 12))],
    ),
}

TIMM_UNITS: dict[str, tuple[str, list[str], list[str]]] = {
    "resnet18": ("ResNet layers", RESNET_STAGES, resnet_blocks([2, 2, 2, 2])),
    "resnet26d": ("ResNet layers", RESNET_STAGES, resnet_blocks([2, 2, 2, 2])),  # deep 3-conv stem
    # regnetx_002: depths 1, 1, 4, 7; no ReLU after s4
    "regnetx_002": (
        "timm feature_info",
        ["stem", "s1", "s2", "s3", "s4"],
        ["stem"] + [f"s{k}.b{j}" for k, depth in enumerate([1, 1, 4, 7], 1) for j in range(1, depth + 1)],
    ),
    # timm taps norm5 (BatchNormAct: a ReLU) as the last stage's output: no head
    "densenet121": (
        "timm feature_info",
        ["stem", *(f"features.denseblock{k}" for k in range(1, 5))],
        densenet121_blocks(tail=["features.norm5"]),
    ),
    # the first tap (level0) keeps the resolution (reduction 1), so base_layer + level0 is a stage, not a stem;
    # level1 is one conv-bn-relu (its ReLU is level1.2); trees 2-5 hold tree1/tree2 (and a root when shallow)
    "dla34": (
        "timm feature_info",
        ["base_layer..level0", "level1", "level2", "level3", "level4", "level5"],
        [
            *("base_layer", "level0", "level1.2"),
            *peers("level2.", ["tree1", "tree2", "root"]),
            *peers("level3.", ["tree1", "tree2"]),
            *peers("level4.", ["tree1", "tree2"]),
            *peers("level5.", ["tree1", "tree2", "root"]),
        ],
    ),
    # taps after the ReLUs at features.1/4/9/14/19 (and the last pool): the ConvMlp pre-logits are the head
    "vgg11": (
        "timm feature_info",
        ["features.1", "features.4", "features.7..9", "features.12..14", "features.17..19", "head"],
        [*peers("features.", ["1", "4", "7", "9", "12", "14", "17", "19"]), "head"],
    ),
    # conv1/conv2 stem; layer1; each transition joins the stage it feeds; one module per stage in w18_small;
    # incre_modules, downsamp_modules and final_layer are the head
    "hrnet_w18_small": (
        "timm HighResolutionNet",
        ["stem", "layer1", "stage2", "stage3", "stage4", "head"],
        ["stem", "layer1.0", "transition1", "stage2.0", "transition2", "stage3.0", "transition3", "stage4.0", "head"],
    ),
    # taps stem.2, features.1/3/5, head.1, head.3: SelecSLS's head convolutions are tapped as stages
    "selecsls42b": (
        "timm feature_info",
        ["stem", "features.0..1", "features.2..3", "features.4..5", "head.0..1", "head.2..3"],
        ["stem", *peers("features.", ["0", "1", "2", "3", "4", "5"]), *peers("head.", ["0", "1", "2", "3"])],
    ),
    # dpn68: 3, 4, 12, 3 blocks in conv2-conv5; conv5_bn_ac after the last tap is the head
    "dpn68": (
        "timm feature_info",
        [
            "stem",
            "features.conv2_1..conv2_3",
            "features.conv3_1..conv3_4",
            "features.conv4_1..conv4_12",
            "features.conv5_1..conv5_3",
            "head",
        ],
        ["stem"]
        + [f"features.conv{k}_{j}" for k, n in [(2, 3), (3, 4), (4, 12), (5, 3)] for j in range(1, n + 1)]
        + ["head"],
    ),
    # taps Conv2d_2b (stem), Conv2d_4a, Mixed_5d, Mixed_6e, Mixed_7c
    "inception_v3": (
        "timm feature_info",
        ["stem", "Conv2d_3b_1x1..Conv2d_4a_3x3", "Mixed_5b..Mixed_5d", "Mixed_6a..Mixed_6e", "Mixed_7a..Mixed_7c"],
        [
            *("stem", "Conv2d_3b_1x1", "Conv2d_4a_3x3"),
            *peers("Mixed_", ["5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"]),
        ],
    ),
}


def units_of(model: nn.Module, x: torch.Tensor) -> tuple[str | None, list[str], list[str]]:
    trace = trace_sites(model, x)
    layout = find_layout(model, trace)
    stage = list(dict.fromkeys(group_sites(model, trace, "stage").values()))
    block = list(dict.fromkeys(group_sites(model, trace, "block").values()))
    return (layout.rule if layout else None), stage, block


@pytest.mark.parametrize("name", list(TORCHVISION_UNITS))
def test_torchvision_units_follow_the_architecture(name):
    assert units_of(torchvision_model(name), example(name)) == TORCHVISION_UNITS[name]


@pytest.mark.parametrize("name", list(TIMM_UNITS))
def test_timm_units_follow_the_architecture(name):
    assert units_of(timm_model(name), example(name)) == TIMM_UNITS[name]


def test_hrnet_is_no_longer_taken_for_a_resnet():
    """Its child `layer1` once made it a ResNet: three block units, 70 of its 75 ReLU calls in `head`."""
    model = timm_model("hrnet_w18_small")
    mapping = group_sites(model, trace_sites(model, example("hrnet_w18_small")), "block")
    assert len(mapping) == 75
    counts = {unit: list(mapping.values()).count(unit) for unit in dict.fromkeys(mapping.values())}
    # stem: act1, act2; head: 4 incre_modules x 3 ReLUs + 3 downsamp_modules + final_layer
    assert counts["stem"] == 2 and counts["head"] == 4 * 3 + 3 + 1
    assert counts["layer1.0"] == 3  # one Bottleneck


def test_cifar_resnets_keep_their_names():
    net = create_model("cifar_resnet_small", num_classes=10, in_channels=1).net
    x = torch.zeros(1, 1, 8, 8)
    assert ct_tune.units(net, x, "stage") == ["stem", "layer1", "layer2", "layer3"]
    assert ct_tune.units(net, x, "block") == ["stem", "layer1.0", "layer2.0", "layer3.0"]


# --------------------------------------------------------------------------------------------------
# Names that would clash, and models without a layout
class Tapped(nn.Module):
    """A model with timm-style feature_info whose one ReLU module runs on both sides of the tap."""

    def __init__(self) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        self.body = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU())
        self.feature_info = [{"module": "body", "reduction": 1, "num_chs": 3}]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(self.relu(x))
        return self.relu(x).mean((2, 3))


def test_a_stage_of_peers_is_named_by_their_range():
    model = Tapped().eval()
    x = torch.rand(1, 3, 4, 4)
    # stage: relu#0 and body.1 (neither holds more than half: the range of peers), then relu#1 as the head
    assert ct_tune.units(model, x, "stage") == ["relu..body", "head"]
    assert ct_tune.units(model, x, "block") == ["relu", "body", "head"]


class TwoHalves(nn.Module):
    """feature_info taps the middle of `a`: both halves of `a` are named after it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.ReLU(), nn.ReLU(), nn.ReLU(), nn.ReLU())
        self.feature_info = [{"module": "a.1", "reduction": 1}, {"module": "a.3", "reduction": 2}]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x)


def test_stage_names_stay_unique():
    x = torch.rand(1, 2)
    assert ct_tune.units(TwoHalves(), x, "stage") == ["a.0..1", "a.2..3"]
    assert ct_tune.units(TwoHalves(), x, "block") == ["a.0", "a.1", "a.2", "a.3"]


class Reused(nn.Module):
    """One ReLU module makes up both stages (taps m1 and m2): they cannot both be called `act`."""

    def __init__(self) -> None:
        super().__init__()
        self.act, self.m1, self.m2 = nn.ReLU(), nn.Identity(), nn.Identity()
        self.feature_info = [{"module": "m1", "reduction": 1}, {"module": "m2", "reduction": 2}]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m2(self.act(self.m1(self.act(x))))


def test_a_repeated_name_is_numbered():
    x = torch.rand(1, 2)
    assert ct_tune.units(Reused(), x, "site") == ["act#0", "act#1"]
    assert ct_tune.units(Reused(), x, "stage") == ["act", "act#1"]
    assert ct_tune.units(Reused(), x, "block") == ["act", "act#1"]


def test_models_without_a_layout_use_top_level_children():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.ReLU()))
    assert find_layout(model, trace_sites(model, torch.rand(1, 4))) is None
    assert ct_tune.units(model, torch.rand(1, 4), "stage") == ["1", "2"]
    assert ct_tune.units(model, torch.rand(1, 4), "block") == ["1", "2.1", "2.2"]


# --------------------------------------------------------------------------------------------------
# Custom groups
GROUPS = {"early": ["relu", "layer1"], "late": "", "layer3.1": "layer3.1"}


def test_custom_groups_name_the_units_and_the_longest_prefix_wins():
    model = torchvision_model("resnet18")
    x = example("resnet18")
    assert ct_tune.units(model, x, "custom", groups=GROUPS) == ["early", "late", "layer3.1"]
    mapping = group_sites(model, trace_sites(model, x), "custom", GROUPS)
    assert mapping["relu#0"] == mapping["layer1.1.relu#1"] == "early"
    assert mapping["layer3.0.relu#1"] == mapping["layer4.1.relu#0"] == "late"
    assert mapping["layer3.1.relu#0"] == "layer3.1"


def test_custom_steering_matches_the_formula_site_by_site():
    model = torchvision_model("resnet18")
    x = example("resnet18")
    betas = {"early": 0.7, "late": 0.9}  # layer3.1 stays ReLU
    with ct_tune.steer(model, betas, c=0.4, granularity="custom", groups=GROUPS, example_input=x) as handle:
        steered = model(x)
        profile = handle.profile()
    # by hand: the stem and layer1 at 0.7; layer2, layer3.0 and layer4 at 0.9; layer3.1 plain ReLU
    by_hand = _resnet18_by_hand(model, x, lambda path: 0.7 if path in ("relu", "layer1") else 0.9, c=0.4)
    torch.testing.assert_close(steered, by_hand, rtol=1e-4, atol=1e-5)
    assert profile.granularity == "custom"
    assert profile.groups == {"early": ["relu", "layer1"], "late": [""], "layer3.1": ["layer3.1"]}


def _resnet18_by_hand(model: nn.Module, x: torch.Tensor, beta_of, c: float) -> torch.Tensor:
    """torchvision's BasicBlock forward written out, with CT at the beta of each block's stage prefix."""

    def act(t: torch.Tensor, beta: float) -> torch.Tensor:
        return formula(t, beta, c)

    with torch.no_grad():
        h = model.maxpool(act(model.bn1(model.conv1(x)), beta_of("relu")))
        for layer in ("layer1", "layer2", "layer3", "layer4"):
            for index, block in enumerate(model.get_submodule(layer)):
                path = f"{layer}.{index}"
                beta = 1.0 if path == "layer3.1" else beta_of(layer)
                identity = block.downsample(h) if block.downsample is not None else h
                out = act(block.bn1(block.conv1(h)), beta)
                h = act(block.bn2(block.conv2(out)) + identity, beta)
        return model.fc(torch.flatten(model.avgpool(h), 1))


def test_custom_profile_records_its_groups_and_applies_to_a_fresh_model(tmp_path):
    model = torchvision_model("resnet18")
    x = example("resnet18")
    with ct_tune.steer(model, {"early": 0.8}, granularity="custom", groups=GROUPS, example_input=x) as handle:
        expected = model(x)
        path = handle.profile().save(tmp_path / "custom.json")
    loaded = BetaProfile.load(path)
    assert loaded.groups == {"early": ["relu", "layer1"], "late": [""], "layer3.1": ["layer3.1"]}
    with apply_profile(model, path) as handle:
        assert handle.units == ("early", "late", "layer3.1")
        assert torch.equal(model(x), expected)
    # profiles of other granularities are written as before: no groups field
    with ct_tune.steer(model, 0.9, granularity="stage", example_input=x) as handle:
        assert "groups" not in handle.profile().to_dict()


@pytest.mark.parametrize(
    ("groups", "granularity", "message"),
    [
        ({"a": "layer9"}, "custom", "prefix 'layer9' of unit 'a' matches no ReLU call"),
        ({"a": "layer1.0.rel"}, "custom", "did you mean layer1.0.relu"),
        ({"a": "layer1"}, "custom", "groups leave 13 ReLU call(s) in no unit: relu#0, layer2.0.relu#0"),
        ({"a": "layer1", "b": ["layer2", "layer1"]}, "custom", "prefix 'layer1' is given to both 'a' and 'b'"),
        ({"a": ""}, "block", "groups apply to granularity 'custom' only"),
        (None, "custom", "granularity 'custom' needs groups"),
        ({"a": []}, "custom", "groups entry 'a': give a non-empty unit name"),
        ({"a": 3}, "custom", "groups entry 'a': give a non-empty unit name and a module-path prefix"),
    ],
)
def test_bad_groups_are_one_line(groups, granularity, message):
    with pytest.raises(InputError) as raised:
        ct_tune.units(torchvision_model("resnet18"), example("resnet18"), granularity, groups=groups)
    text = str(raised.value)
    assert message in text and "\n" not in text


def test_custom_granularity_through_a_spec():
    groups = {"early": ["relu", "layer1"], "rest": ""}
    result = model_units(
        model={"name": "cifar_resnet_small"}, data={"name": "digits"}, granularity="custom", groups=groups
    )
    assert result["units"] == ["early", "rest"]
    assert len(result["sites"]["early"]) == 1 + 2  # the stem ReLU and layer1.0's reused relu
    assert result["counts"]["custom"] == 2 and result["counts"]["block"] == 4
    assert result["layout"] == "ResNet layers"


@pytest.mark.parametrize(
    ("search", "message"),
    [
        ({"granularity": "custom"}, "granularity custom needs search.groups"),
        ({"granularity": "block", "groups": {"a": "layer1"}}, "search.groups applies to granularity custom only"),
    ],
)
def test_spec_validates_groups(search, message):
    with pytest.raises(InputError, match=message):
        spec_from_dict({"model": {"name": "cifar_resnet_small"}, "search": search})


def test_map_profile_onto_custom_groups():
    model = torchvision_model("resnet18")
    trace = trace_sites(model, example("resnet18"))
    block = {"stem": 0.7, "layer1.0": 0.8}  # other blocks stay 1.0
    groups = {"early": ["relu", "layer1"], "rest": ""}
    mapped = map_profile(model, trace, block, "block", "custom", target_groups=groups)
    # early: the stem (1 site at 0.7), layer1.0 (2 sites at 0.8), layer1.1 (2 sites at 1.0)
    assert mapped == {"early": pytest.approx((0.7 + 2 * 0.8 + 2 * 1.0) / 5), "rest": 1.0}


# --------------------------------------------------------------------------------------------------
# No ReLU, SiLU or GELU at all (SiLU and GELU networks: tests/steering/test_families.py)
NO_RELU = {
    "timm/cspresnet50": "LeakyReLU",
    "timm/cspdarknet53": "LeakyReLU",
    "timm/mobilenetv2_100": "ReLU6",
    "torchvision/mobilenet_v2": "ReLU6",
}


@pytest.mark.parametrize("name", list(NO_RELU))
def test_a_model_without_relu_is_told_what_it_applies(name):
    source, arch = name.split("/")
    model = timm_model(arch) if source == "timm" else torchvision_model(arch)
    x = example(arch)
    with pytest.raises(InputError) as raised:
        ct_tune.units(model, x, "block")
    text = str(raised.value)
    assert "\n" not in text
    assert f"applies no ReLU, SiLU or GELU on this input, only {NO_RELU[name]} (" in text
    assert "leaves other functions alone" in text
    # global steering without an example input finds nothing to replace and changes nothing
    plain = model(x)
    with ct_tune.steer(model, 0.8):
        assert torch.equal(model(x), plain)


@pytest.mark.slow
def test_a_custom_study_searches_and_exports_its_groups(tmp_path, monkeypatch):
    """granularity custom end to end: a spec, a study of 3 trials in this process, the exported profile."""
    from ct_tune.models import save_checkpoint

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    checkpoint = save_checkpoint(create_model("cifar_resnet_small", num_classes=10, in_channels=1), "net.pt")
    groups = {"early": ["relu", "layer1"], "rest": ""}
    spec = {
        "name": "custom-groups",
        "model": {"checkpoint": str(checkpoint)},
        "data": {"name": "digits", "val_size": 100},
        "search": {"granularity": "custom", "groups": groups},
        "sampler": {"name": "random", "seed": 0},
        "budget": {"n_trials": 3},
        "run": {"device": "cpu"},
        "storage": f"sqlite:///{tmp_path}/optuna.db",
        "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
    }
    study = ct_tune.create_study(spec)
    assert study.units == ["early", "rest"]
    study.run(progress=False)
    profile = study.export(tmp_path / "best.json")
    assert profile.granularity == "custom" and profile.groups == {"early": ["relu", "layer1"], "rest": [""]}
    net = create_model(str(checkpoint), num_classes=10).net
    with apply_profile(net, tmp_path / "best.json") as handle:
        assert handle.units == ("early", "rest") and handle.betas == profile.betas
    scored = evaluate_profile(model=spec["model"], data=spec["data"], profile=profile)  # ct-tune evaluate --profile
    assert scored["granularity"] == "custom" and scored["betas"] == profile.betas
