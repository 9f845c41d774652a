"""Model registry: built-ins, torchvision models, checkpoint files of every kind, user factories, bad input."""

from __future__ import annotations

import copy
import textwrap

import ct_tune
from ct_tune import InputError
from ct_tune.data import create_datamodule
from ct_tune.models import (
    DEFAULT_MODEL,
    InputSpec,
    LoadedModel,
    _build,
    _registry,
    create_model,
    list_models,
    load_checkpoint,
    register_model,
    save_checkpoint,
)
from ct_tune.training import ClassifierModule

import lightning as L
import pytest
import torch
import torchvision
from torch import nn


def _same_outputs(a: LoadedModel, b: LoadedModel, x: torch.Tensor) -> bool:
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


# ---------------------------------------------------------------------------------------------- input spec
def test_input_spec_normalizes_differentiably_in_any_dtype():
    spec = InputSpec(size=4, channels=3, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.125))
    x = torch.rand(2, 3, 4, 4, requires_grad=True)
    y = spec.normalize(x)
    expected = (x - torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1)) / torch.tensor([0.5, 0.25, 0.125]).view(3, 1, 1)
    assert torch.allclose(y, expected)
    y.sum().backward()
    assert torch.allclose(x.grad[0, 2], torch.full((4, 4), 8.0))
    assert spec.normalize(x.detach().half()).dtype == torch.float16
    assert InputSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"channels": 2, "mean": (0.5, 0.5), "std": (1, 1)}, "channels must be 1 or 3"),
        ({"channels": 3, "mean": (0.5,), "std": (1,)}, "need 3 value"),
        ({"channels": 1, "mean": (0.5,), "std": (0,)}, "positive"),
        ({"channels": 1, "mean": (0.5,), "std": (1,), "crop_pct": 0}, "crop_pct"),
    ],
)
def test_input_spec_rejects_bad_values(kwargs, match):
    with pytest.raises(InputError, match=match):
        InputSpec(size=None, **kwargs)


def test_normalize_first_used_in_inference_mode_still_supports_gradients():
    spec = InputSpec(size=None, channels=3, mean=(0.3, 0.2, 0.1), std=(0.7, 0.6, 0.5))
    with torch.inference_mode():
        spec.normalize(torch.rand(1, 3, 2, 2))
    x = torch.rand(1, 3, 2, 2, requires_grad=True)
    spec.normalize(x).sum().backward()
    assert torch.allclose(x.grad[0, :, 0, 0], 1 / torch.tensor([0.7, 0.6, 0.5]))


def test_input_spec_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match="3-channel"):
        InputSpec.uniform(3, 0.5, 0.5).normalize(torch.rand(2, 1, 4, 4))


# ------------------------------------------------------------------------------------------------ built-ins
def test_list_models_has_builtins_then_torchvision():
    names = list_models()
    assert names[:3] == ["cifar_resnet18", "cifar_resnet50", "cifar_resnet_small"]
    assert "resnet18" in names and "vit_b_16" in names
    assert DEFAULT_MODEL == "cifar_resnet_small"
    assert list_models(source="registered") == names[:3]


def test_small_builtin_has_torchvision_names_and_block_units():
    model = create_model("cifar_resnet_small", num_classes=10, in_channels=1)
    net = model.net
    assert [name for name, _ in net.named_children()] == [
        "conv1",
        "bn1",
        "relu",
        "maxpool",
        "layer1",
        "layer2",
        "layer3",
        "avgpool",
        "fc",
    ]
    assert isinstance(net.relu, nn.ReLU) and net.relu.inplace and isinstance(net.fc, nn.Linear)
    assert isinstance(net.layer1[0], torchvision.models.resnet.BasicBlock) and not net.training
    assert net.conv1.in_channels == 1 and net.conv1.stride == (1, 1) and net.conv1.kernel_size == (3, 3)
    assert model.input_spec == InputSpec(size=None, channels=1, mean=(0.5,), std=(0.5,))
    assert model.source == "builtin" and model.num_classes == 10
    x = torch.rand(2, 1, 8, 8)
    assert ct_tune.units(net, x, "block") == ["stem", "layer1.0", "layer2.0", "layer3.0"]
    assert model(x).shape == (2, 10) and model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize(("activation", "module"), [("silu", nn.SiLU), ("gelu", nn.GELU)])
def test_small_builtin_builds_silu_and_gelu_at_the_places_of_relu(activation, module):
    torch.manual_seed(0)
    relu = create_model("cifar_resnet_small", num_classes=10, in_channels=1)
    torch.manual_seed(0)
    other = create_model("cifar_resnet_small", num_classes=10, in_channels=1, activation=activation)
    relu_paths = [path for path, m in relu.net.named_modules() if isinstance(m, nn.ReLU)]
    act_paths = [path for path, m in other.net.named_modules() if isinstance(m, module)]
    assert relu_paths == ["relu", "layer1.0.relu", "layer2.0.relu", "layer3.0.relu"]
    assert act_paths == [path.replace("relu", "act") for path in relu_paths]  # named act: no SiLU called relu
    assert not any(isinstance(m, nn.ReLU) for m in other.net.modules())
    assert module is not nn.GELU or other.net.act.approximate == "none"  # exact GELU (erf), as CT's gelu family
    relu_state, other_state = relu.net.state_dict(), other.net.state_dict()
    assert list(other_state) == list(relu_state)  # the same weights, by name, in the same order
    assert all(torch.equal(relu_state[key], other_state[key]) for key in relu_state)  # and the same initial values
    x = torch.rand(4, 1, 8, 8)
    assert other(x).shape == (4, 10) and not torch.allclose(other(x), relu(x))
    assert other.model_kwargs == {"activation": activation} and relu.model_kwargs == {}
    assert ct_tune.units(other.net, x, "block") == ["stem", "layer1.0", "layer2.0", "layer3.0"]  # steerable as ReLU's


def test_the_activated_block_computes_what_torchvision_basicblock_does():
    from ct_tune.models._resnets import _ActBasicBlock

    downsample = nn.Sequential(nn.Conv2d(4, 8, 1, stride=2, bias=False), nn.BatchNorm2d(8))
    reference = torchvision.models.resnet.BasicBlock(4, 8, 2, downsample).eval()
    block = _ActBasicBlock(4, 8, 2, copy.deepcopy(downsample), act=nn.ReLU()).eval()
    for bn in (reference.bn1, reference.bn2):  # non-trivial statistics, so every layer matters
        bn.running_mean.uniform_(-1, 1)
        bn.weight.data.uniform_(0.5, 1.5)
    block.load_state_dict(reference.state_dict())
    x = torch.randn(2, 4, 6, 6)
    assert torch.allclose(block(x), reference(x)) and not hasattr(block, "relu")


def test_small_builtin_relu_is_the_default_and_unknown_activations_are_refused():
    torch.manual_seed(0)
    default = create_model("cifar_resnet_small", num_classes=10, in_channels=1)
    torch.manual_seed(0)
    explicit = create_model("cifar_resnet_small", num_classes=10, in_channels=1, activation="relu")
    assert [path for path, _ in explicit.net.named_modules()] == [path for path, _ in default.net.named_modules()]
    assert type(explicit.net.layer1[0]) is torchvision.models.resnet.BasicBlock
    assert _same_outputs(default, explicit, torch.rand(2, 1, 8, 8))
    with pytest.raises(InputError, match=r"^unknown activation 'tanh'; choose one of: relu, silu, gelu$"):
        create_model("cifar_resnet_small", num_classes=10, in_channels=1, activation="tanh")


@pytest.mark.parametrize(("name", "block"), [("cifar_resnet18", "BasicBlock"), ("cifar_resnet50", "Bottleneck")])
def test_cifar_resnets_are_torchvision_resnets_with_a_cifar_stem(name, block):
    model = create_model(name, num_classes=100, in_channels=3)
    net = model.net
    assert type(net) is torchvision.models.ResNet
    assert isinstance(net.maxpool, nn.Identity) and net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert type(net.layer4[0]).__name__ == block and net.fc.out_features == 100
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 100)


def test_builtin_kwargs_are_passed_and_checked():
    wide = create_model("cifar_resnet_small", num_classes=3, in_channels=3, widths=(8, 16), blocks=2)
    assert [name for name, _ in wide.net.named_children() if name.startswith("layer")] == ["layer1", "layer2"]
    assert len(wide.net.layer1) == 2 and wide.model_kwargs == {"widths": (8, 16), "blocks": 2}
    with pytest.raises(InputError, match="cannot build model"):
        create_model("cifar_resnet_small", num_classes=3, in_channels=3, depth=5)


def test_register_model_refuses_duplicates_and_torchvision_names(monkeypatch):
    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))

    @register_model("tiny_mlp", mean=0.0, std=1.0, input_size=6)
    def tiny_mlp(*, num_classes: int, in_channels: int) -> nn.Module:
        """A two-layer perceptron on 6x6 images."""
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 36, 16), nn.ReLU(), nn.Linear(16, num_classes))

    model = create_model("tiny_mlp", num_classes=4, in_channels=1)
    assert model.input_spec.size == 6 and model.input_spec.mean == (0.0,) and "tiny_mlp" in list_models()
    assert model(torch.rand(3, 1, 6, 6)).shape == (3, 4)
    with pytest.raises(ValueError, match="already registered"):
        register_model("tiny_mlp")(tiny_mlp)
    with pytest.raises(ValueError, match="torchvision model name"):
        register_model("resnet18")(tiny_mlp)


# ---------------------------------------------------------------------------------------------- torchvision
def test_torchvision_model_gets_imagenet_spec_and_data_classes():
    model = create_model("resnet18", num_classes=7, in_channels=1)
    assert model.source == "torchvision" and model.net.fc.out_features == 7
    spec = model.input_spec
    assert (spec.size, spec.channels, spec.crop_pct) == (224, 3, 224 / 256)
    assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)
    small = create_model("resnet18", num_classes=7, input_size=32)
    assert small.input_spec.size == 32 and small(torch.rand(2, 3, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("name", ["resnet18", "squeezenet1_1", "mobilenet_v3_small", "googlenet"])
def test_head_replacement_matches_a_model_built_for_those_classes(name):
    """Pretrained weights come with 1000 classes; the swapped head must equal a fresh num_classes build."""
    kwargs = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    imagenet = torchvision.models.get_model(name, num_classes=1000, **kwargs)
    replaced = _build.replace_head(imagenet, 1000, 5)
    assert replaced
    fresh = torchvision.models.get_model(name, num_classes=5, **kwargs)
    shapes = {key: tuple(value.shape) for key, value in imagenet.state_dict().items()}
    assert shapes == {key: tuple(value.shape) for key, value in fresh.state_dict().items()}


def test_unknown_weights_list_the_valid_ones():
    with pytest.raises(InputError, match="unknown weights 'IMAGENET9K' for resnet18; choose DEFAULT or one of: "):
        create_model("resnet18", num_classes=10, weights="IMAGENET9K")
    with pytest.raises(InputError, match="torchvision models only"):
        create_model("cifar_resnet_small", num_classes=10, weights="DEFAULT")


def test_unknown_model_lists_the_valid_ones():
    with pytest.raises(InputError) as caught:
        create_model("resnet19", num_classes=10)
    message = str(caught.value)
    assert "unknown model 'resnet19' (did you mean resnet18" in message
    assert "cifar_resnet_small" in message and "vit_b_16" in message and "package.module:function" in message


# ---------------------------------------------------------------------------------------------- checkpoints
def test_ct_tune_checkpoint_round_trip(tmp_path):
    model = create_model("cifar_resnet_small", num_classes=10, in_channels=1, widths=(8, 16, 32))
    path = save_checkpoint(model, tmp_path / "sub" / "model.pt", val_accuracy=0.5, dataset={"name": "digits"})
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "ct-tune/checkpoint" and raw["model"]["kwargs"] == {"widths": (8, 16, 32)}
    loaded = load_checkpoint(path)
    assert loaded.name == "cifar_resnet_small" and loaded.source == f"checkpoint:{path}"
    assert loaded.metadata == {"val_accuracy": 0.5, "dataset": {"name": "digits"}}
    assert loaded.input_spec == model.input_spec and not loaded.net.training
    assert _same_outputs(model, loaded, torch.rand(4, 1, 8, 8))
    via_create = create_model(str(path), num_classes=10, in_channels=1)
    assert _same_outputs(model, via_create, torch.rand(4, 1, 8, 8))
    assert not list(tmp_path.joinpath("sub").glob(".*.tmp"))  # written atomically, no leftovers


@pytest.mark.parametrize(("activation", "module"), [("silu", nn.SiLU), ("gelu", nn.GELU)])
def test_silu_and_gelu_checkpoints_rebuild_their_activation(tmp_path, activation, module):
    model = create_model("cifar_resnet_small", num_classes=10, in_channels=1, activation=activation)
    path = save_checkpoint(model, tmp_path / f"{activation}.pt")
    assert torch.load(path, weights_only=True)["model"]["kwargs"] == {"activation": activation}
    loaded = load_checkpoint(path)
    assert isinstance(loaded.net.act, module) and isinstance(loaded.net.layer3[0].act, module)
    assert loaded.model_kwargs == {"activation": activation}
    assert _same_outputs(model, loaded, torch.rand(4, 1, 8, 8))


def test_plain_state_dict_needs_and_takes_a_model_name(tmp_path):
    model = create_model("cifar_resnet_small", num_classes=4, in_channels=3)
    torch.save(model.net.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(InputError, match="plain state dict without its architecture; name it"):
        load_checkpoint(tmp_path / "plain.pt")
    loaded = load_checkpoint(tmp_path / "plain.pt", model="cifar_resnet_small")
    assert (loaded.num_classes, loaded.in_channels) == (4, 3)
    assert _same_outputs(model, loaded, torch.rand(2, 3, 16, 16))


def test_wrapped_and_prefixed_state_dict_loads(tmp_path):
    model = create_model("resnet18", num_classes=3, input_size=32)
    wrapped = {"epoch": 3, "model_state_dict": {f"module.{k}": v for k, v in model.net.state_dict().items()}}
    torch.save(wrapped, tmp_path / "ddp.pth")
    loaded = load_checkpoint(tmp_path / "ddp.pth", model="resnet18", input_size=32)
    assert loaded.num_classes == 3 and _same_outputs(model, loaded, torch.rand(2, 3, 32, 32))


@pytest.mark.slow
def test_lightning_checkpoint_loads_with_and_without_ct_tune_metadata(tmp_path):
    L.seed_everything(0)
    datamodule = create_datamodule("digits", batch_size=32, train_size=64, val_size=32)
    model = create_model("cifar_resnet_small", num_classes=10, in_channels=1)
    datamodule.input_spec = model.input_spec
    trainer = L.Trainer(
        max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path
    )
    trainer.fit(ClassifierModule(model), datamodule=datamodule)
    (ckpt,) = tmp_path.rglob("*.ckpt")
    loaded = load_checkpoint(ckpt)  # the ct_tune hyper-parameter names the architecture
    assert loaded.name == "cifar_resnet_small" and loaded.input_spec == model.input_spec
    assert _same_outputs(model, loaded, torch.rand(3, 1, 8, 8))
    # a Lightning checkpoint from someone else's module: keys under "model.", architecture named by the user
    foreign = {
        "pytorch-lightning_version": L.__version__,
        "state_dict": {f"model.{k}": v for k, v in model.net.state_dict().items()},
    }
    torch.save(foreign, tmp_path / "foreign.ckpt")
    other = load_checkpoint(tmp_path / "foreign.ckpt", model="cifar_resnet_small", in_channels=1)
    assert _same_outputs(model, other, torch.rand(3, 1, 8, 8))


def test_mismatching_head_is_one_clear_line(tmp_path):
    model = create_model("cifar_resnet_small", num_classes=10, in_channels=1)
    torch.save(model.net.state_dict(), tmp_path / "ten.pt")
    with pytest.raises(InputError) as caught:
        load_checkpoint(tmp_path / "ten.pt", model="cifar_resnet_small", num_classes=3)
    assert "fc.weight [10, 64] in the file vs [3, 64] in the model" in str(caught.value)
    assert "the file's head has 10 classes, the model 3" in str(caught.value)
    save_checkpoint(model, tmp_path / "ten-ct.pt", dataset={"name": "digits"})
    with pytest.raises(InputError, match=r"head for 10 classes \(trained on digits\) but the data has 3"):
        create_model(tmp_path / "ten-ct.pt", num_classes=3, in_channels=1)


def test_wrong_architecture_is_one_clear_line(tmp_path):
    torch.save(create_model("cifar_resnet_small", num_classes=10, in_channels=3).net.state_dict(), tmp_path / "s.pt")
    with pytest.raises(InputError, match=r"does not fit model resnet18: .*missing"):
        load_checkpoint(tmp_path / "s.pt", model="resnet18")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"this is not a checkpoint", "not a PyTorch file, or corrupt"),
        (None, "corrupt/truncated"),  # a real checkpoint cut in half
        (b"", "corrupt"),
    ],
)
def test_corrupt_checkpoint_is_one_clear_line(tmp_path, content, match):
    path = tmp_path / "broken.pt"
    if content is None:
        save_checkpoint(create_model("cifar_resnet_small", num_classes=2, in_channels=1), path)
        content = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(content)
    with pytest.raises(InputError, match=match):
        load_checkpoint(path)


class _Custom:
    pass


def test_checkpoint_with_python_objects_is_refused(tmp_path):
    torch.save({"state_dict": {}, "extra": _Custom()}, tmp_path / "objects.pt")
    with pytest.raises(InputError, match="ct-tune does not execute pickled code"):
        load_checkpoint(tmp_path / "objects.pt", model="cifar_resnet_small")


class _Shell:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("kind", ["torch.save", "legacy torch.save", "plain pickle"])
def test_a_pickle_that_calls_a_function_is_refused_quietly_and_never_run(tmp_path, monkeypatch, kind):
    import pickle
    import warnings

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    if kind == "plain pickle":
        path.write_bytes(pickle.dumps({"state_dict": _Shell()}, protocol=4))
    else:
        torch.save({"state_dict": _Shell()}, path, _use_new_zipfile_serialization=kind == "torch.save")
    with warnings.catch_warnings(record=True) as caught, pytest.raises(InputError) as error:
        warnings.simplefilter("always")
        load_checkpoint(path, model="cifar_resnet_small")
    assert caught == []  # torch's "Detected pickle protocol 4" warning came before the error line
    expected = "cannot read checkpoint" if kind == "plain pickle" else "ct-tune does not execute pickled code"
    assert expected in str(error.value)
    assert not (tmp_path / "pwned").exists()


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(InputError, match=r"checkpoint file .*missing\.pt not found"):
        create_model(str(tmp_path / "missing.pt"), num_classes=10)


# --------------------------------------------------------------------------------------------- factories
@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    (tmp_path / "my_nets.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn
            from ct_tune.models import InputSpec


            def mlp(num_classes, hidden=32):
                return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


            def conv(num_classes, in_channels):
                net = nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                    nn.Linear(4, num_classes))
                return net, InputSpec(size=16, channels=in_channels, mean=(0.1,) * in_channels,
                                      std=(0.2,) * in_channels)


            not_callable = 3
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_user_factory_builds_and_round_trips_through_a_checkpoint(factory_module, tmp_path):
    model = create_model("my_nets:mlp", num_classes=5, in_channels=1, hidden=8)
    assert model.source == "factory:my_nets:mlp" and model.model_kwargs == {"hidden": 8}
    assert model.input_spec == InputSpec(size=None, channels=1, mean=(0.5,), std=(0.5,))
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 5)
    loaded = load_checkpoint(save_checkpoint(model, tmp_path / "mlp.pt"))
    assert _same_outputs(model, loaded, torch.rand(2, 1, 8, 8))
    conv = create_model("my_nets:conv", num_classes=2, in_channels=3)
    assert conv.input_spec.size == 16 and conv.input_spec.mean == (0.1, 0.1, 0.1) and conv.in_channels == 3


@pytest.mark.parametrize(
    ("target", "match"),
    [
        ("no_such_pkg.nets:build", "cannot import 'no_such_pkg.nets'"),
        ("my_nets:absent", "no callable 'absent'"),
        ("my_nets:not_callable", "no callable 'not_callable'"),
    ],
)
def test_bad_factory_is_one_clear_line(factory_module, target, match):
    with pytest.raises(InputError, match=match):
        create_model(target, num_classes=2)


def test_loaded_model_as_module_shares_the_network():
    model = create_model("cifar_resnet_small", num_classes=3, in_channels=1)
    module = model.as_module()
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(module(x), model(x)) and module.net is model.net
