"""timm models by name: input specs from timm's data config, classes and channels, errors, checkpoints."""

from __future__ import annotations

import subprocess
import sys

from ct_tune import InputError
from ct_tune.bench import model_units
from ct_tune.models import create_model, list_models, load_checkpoint, save_checkpoint
from ct_tune.models._input_spec import IMAGENET_MEAN, IMAGENET_STD
from ct_tune.search import spec_from_dict

import huggingface_hub
import pytest
import torch


@pytest.mark.parametrize(
    ("name", "size", "mean", "std", "crop_pct", "interpolation"),
    [
        # timm's pretrained configs for these names (timm.models.<arch>.default_cfgs)
        ("timm/resnet50.a1_in1k", 224, IMAGENET_MEAN, IMAGENET_STD, 0.95, "bicubic"),
        ("timm/inception_v3", 299, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 0.875, "bicubic"),
        ("timm/dla34", 224, IMAGENET_MEAN, IMAGENET_STD, 0.875, "bilinear"),
    ],
)
def test_input_spec_comes_from_timms_data_config(name, size, mean, std, crop_pct, interpolation):
    model = create_model(name, num_classes=4)
    spec = model.input_spec
    assert (spec.size, spec.channels, spec.crop_pct, spec.interpolation) == (size, 3, crop_pct, interpolation)
    assert spec.mean == pytest.approx(mean) and spec.std == pytest.approx(std)
    assert (model.source, model.name, model.weights) == ("timm", name, None)


def test_classes_channels_and_input_size_reach_the_network():
    model = create_model("timm/resnet18", num_classes=7, in_channels=1, input_size=32, drop_rate=0.1)
    assert model.net.fc.out_features == 7 and model.net.conv1.in_channels == 1
    assert model.net.drop_rate == 0.1  # other keyword arguments go to timm.create_model
    assert model.input_spec.size == 32 and model.input_spec.channels == 1
    # one channel: the mean of ImageNet's RGB statistics
    assert model.input_spec.mean == pytest.approx((sum(IMAGENET_MEAN) / 3,))
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 7)


def test_listed_with_their_prefix():
    names = list_models("timm")
    assert "timm/resnet18" in names and "timm/hrnet_w18_small" in names


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("timm/resnet5O", {}, "unknown timm model 'timm/resnet5O' (did you mean timm/resnet50"),
        ("timm/resnet50.no_such_tag", {}, "unknown timm model 'timm/resnet50.no_such_tag'"),
        ("timm/resnet18", {"weights": "DEFAULT"}, "timm models take pretrained=True"),
        ("resnet18", {"pretrained": True}, "pretrained applies to timm models (timm/<name>) only"),
        ("timm/resnet18", {"no_such_argument": 1}, "cannot build model 'timm/resnet18'"),
    ],
)
def test_bad_names_and_arguments_are_one_line(name, kwargs, message):
    with pytest.raises(InputError) as raised:
        create_model(name, num_classes=3, **kwargs)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_missing_timm_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # what `import timm` meets when timm is not installed
    with pytest.raises(InputError, match=r"needs timm, an optional extra: pip install 'ct-tune\[timm\]'"):
        create_model("timm/resnet18", num_classes=3)


def test_weights_that_cannot_be_fetched_are_one_line(monkeypatch):
    # offline, as on this machine; the switch HF_HUB_OFFLINE=1 sets, so the hub does not retry for a minute
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(InputError) as raised:
        create_model("timm/resnet18", num_classes=3, pretrained=True)
    text = str(raised.value)
    assert text.startswith("cannot get the pretrained weights of timm/resnet18")
    assert "hf download timm/resnet18.a1_in1k" in text and "--checkpoint" in text and "\n" not in text


def test_checkpoint_round_trip(tmp_path):
    model = create_model("timm/resnet18", num_classes=5, in_channels=1, input_size=32, drop_rate=0.1)
    path = save_checkpoint(model, tmp_path / "timm.pt", note="round trip")
    loaded = load_checkpoint(path)
    assert (loaded.name, loaded.num_classes, loaded.in_channels) == ("timm/resnet18", 5, 1)
    assert loaded.model_kwargs == {"drop_rate": 0.1} and loaded.metadata["note"] == "round trip"
    assert loaded.input_spec == model.input_spec and loaded.source == f"checkpoint:{path}"
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


def test_a_spec_names_timm_models_and_pretrained_only_for_them():
    spec = spec_from_dict({"model": {"name": "timm/resnet50.a1_in1k", "pretrained": True}})
    assert spec.model.pretrained
    with pytest.raises(InputError, match=r"model\.pretrained applies to timm models"):
        spec_from_dict({"model": {"name": "resnet18", "pretrained": True}})
    units = model_units(model={"name": "timm/resnet18", "input_size": 32}, data={"name": "digits"}, granularity="stage")
    assert units["units"] == ["stem", "layer1", "layer2", "layer3", "layer4"] and units["model"] == "ResNet"


@pytest.mark.slow
def test_timm_is_imported_only_when_a_timm_model_is_asked_for():
    code = "import sys, ct_tune, ct_tune.models, ct_tune.search; print('timm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300).stdout
    assert out.strip() == "False"
