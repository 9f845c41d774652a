"""Beta profiles: save, load, and apply to a freshly built model in one call."""

from __future__ import annotations

import json

import ct_tune

import pytest
import torch
import torchvision.models as tvm


def fresh_resnet(seed: int = 0, depth: int = 18) -> torch.nn.Module:
    torch.manual_seed(seed)
    return getattr(tvm, f"resnet{depth}")(num_classes=10).eval()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_round_trip_and_apply_to_a_fresh_model(tmp_path, x):
    model = fresh_resnet()
    betas = {"stem": 0.95, "layer2.1": 0.8, "layer4.0": 0.7}
    with ct_tune.steer(model, betas, c=0.4, granularity="block", example_input=x) as handle:
        expected = model(x)
        profile = handle.profile(study="demo")
    path = profile.save(tmp_path / "out" / "profile.json")

    data = json.loads(path.read_text())
    assert data["format"] == "ct-tune/beta-profile"
    assert data["granularity"] == "block"
    assert data["c"] == 0.4
    assert data["input_shape"] == [2, 3, 32, 32]
    assert data["betas"]["layer2.1"] == 0.8 and data["betas"]["layer1.0"] == 1.0
    assert data["metadata"] == {"study": "demo"}

    fresh = fresh_resnet()  # same weights, new instance: what a deployment does
    with ct_tune.apply_profile(fresh, path) as applied:
        torch.testing.assert_close(fresh(x), expected, rtol=0, atol=0)
        assert applied.betas == profile.betas
    assert ct_tune.BetaProfile.load(path) == profile


def test_global_profile_applies_without_input_shape(tmp_path, x):
    model = fresh_resnet()
    with ct_tune.steer(model, 0.9) as handle:
        expected = model(x)
        path = handle.profile().save(tmp_path / "global.json")
    with ct_tune.apply_profile(fresh_resnet(), path):
        pass
    fresh = fresh_resnet()
    with ct_tune.apply_profile(fresh, path):
        torch.testing.assert_close(fresh(x), expected, rtol=0, atol=0)


def test_profile_for_another_architecture_is_refused(tmp_path, x):
    with ct_tune.steer(fresh_resnet(), {"layer1": 0.9}, granularity="stage", example_input=x) as handle:
        path = handle.profile().save(tmp_path / "p.json")
    other = fresh_resnet(depth=34)  # same stage names, other ReLU calls
    with pytest.raises(ValueError, match="other ReLU calls"):
        ct_tune.apply_profile(other, path)
    with ct_tune.apply_profile(other, path, strict=False) as handle:
        assert handle.betas["layer1"] == 0.9


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"granularity": "block"}', "not a ct-tune beta profile"),
        ('{"format": "ct-tune/beta-profile", "granularity": "block"}', "missing the field 'betas'"),
        ('{"format": "ct-tune/beta-profile", "granularity": "blocks", "betas": {"a": 0.9}}', "unknown granularity"),
        ('{"format": "ct-tune/beta-profile", "granularity": "block", "betas": {"a": 1.9}}', r"\(0, 1\]"),
    ],
)
def test_bad_profile_files_are_one_line_value_errors(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        ct_tune.BetaProfile.load(path)
    assert "\n" not in str(info.value)


GOOD = {"format": "ct-tune/beta-profile", "granularity": "block", "betas": {"layer1.0": 0.9}}
WRONG_TYPES = {  # field: (value, what the one line says)
    "betas": ({"layer1.0": "x"}, "beta['layer1.0'] must be a number in (0, 1]"),
    "c": ("abc", "c must be a number in [0, 1]"),
    "format_version": ("x", "format_version must be an integer, not 'x'; export the profile again"),
    "input_shape": ("x", "input_shape must be a list of positive integers or null"),
    "metadata": ([1], "metadata must be an object or null"),
    "fingerprint": (5, "fingerprint must be a string or null"),
    "model": (["VGG"], "model must be a string or null"),
    "granularity": (3, "unknown granularity 3"),
}


@pytest.mark.parametrize("field", list(WRONG_TYPES))
def test_profile_fields_of_the_wrong_type_are_one_input_error(tmp_path, field):
    value, message = WRONG_TYPES[field]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**GOOD, field: value}))
    with pytest.raises(ct_tune.InputError) as info:
        ct_tune.BetaProfile.load(path)
    assert str(info.value).startswith(f"profile file {path}: {message}")
    assert "\n" not in str(info.value)


def test_a_true_beta_is_not_read_as_one(tmp_path):
    path = tmp_path / "bool.json"
    path.write_text(json.dumps({**GOOD, "betas": {"layer1.0": True}}))
    with pytest.raises(ct_tune.InputError, match="got True"):
        ct_tune.BetaProfile.load(path)


def test_a_profile_path_that_is_a_directory(tmp_path):
    with pytest.raises(ct_tune.InputError) as info:
        ct_tune.apply_profile(fresh_resnet(), tmp_path)
    assert str(info.value) == f"profile {tmp_path} is a directory; give the path of a profile JSON file"


@pytest.mark.parametrize("where", ["directory", "under a file"])
def test_saving_where_no_file_can_be_written_is_one_line_and_leaves_nothing(tmp_path, where):
    profile = ct_tune.BetaProfile.from_dict(GOOD)
    (tmp_path / "out").mkdir()
    (tmp_path / "plain").write_text("a file")
    target, message = {
        "directory": (tmp_path / "out", f"profile path {tmp_path / 'out'} is a directory; give a file path, e.g."),
        "under a file": (tmp_path / "plain" / "p.json", f"cannot write profile {tmp_path / 'plain' / 'p.json'} ("),
    }[where]
    with pytest.raises(ct_tune.InputError) as info:
        profile.save(target)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out", "plain"]  # no temporary left anywhere
    assert profile.save(tmp_path / "new" / "p.json").is_file()
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["p.json"]


def test_missing_profile_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        ct_tune.apply_profile(fresh_resnet(), tmp_path / "nope.json")
