"""`ct-tune evaluate`: one profile scored as a trial would be, and its one-line errors."""

from __future__ import annotations

import pytest

from tests.helpers import plain_val_hits

pytestmark = pytest.mark.slow


def test_evaluate_several_objectives_with_unit_betas(cli_fast, digits_checkpoint):
    result = cli_fast(
        "evaluate",
        "--checkpoint",
        str(digits_checkpoint),
        "--data",
        "digits",
        "--granularity",
        "stage",
        "--beta",
        "layer1=0.8,layer3=0.9",
        "--objective",
        "accuracy,adversarial,probe",
        "--steps",
        "3",
        "--n",
        "100",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    payload = result.json()
    assert payload["betas"] == {"stem": 1.0, "layer1": 0.8, "layer2": 1.0, "layer3": 0.9}
    results = payload["results"]
    assert set(results) == {"accuracy", "adversarial", "probe"}
    assert 0.9 < results["accuracy"]["value"] <= 1.0
    assert results["adversarial"]["eps"] == pytest.approx(8 / 255) and results["adversarial"]["n"] == 100
    assert results["adversarial"]["value"] <= results["adversarial"]["clean_accuracy"]
    assert 0.8 < results["probe"]["value"] <= 1.0
    assert len(results["accuracy"]["per_class"]) == 10


def test_evaluate_beta_one_equals_plain_model(cli_fast, digits_checkpoint):
    plain = ("evaluate", "--checkpoint", str(digits_checkpoint), "--device", "cpu", "--batch-size", "256", "--json")
    one = cli_fast(*plain, "--beta", "1").json()["results"]["accuracy"]
    correct, total = plain_val_hits(digits_checkpoint, batch_size=256)  # the network without ct-tune
    assert one["n"] == total and round(one["value"] * total) == correct
    assert one["value"] == pytest.approx(correct / total, abs=1e-9)
    smooth = cli_fast(*plain, "--beta", "0.5").json()["results"]["accuracy"]
    assert one["per_class"] != smooth["per_class"]  # and beta steers: 0.5 is not the plain model


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--beta", "0.9", "--profile", "p.json"), "not allowed with argument"),
        (("--beta", "layer9=0.9", "--granularity", "stage"), "unknown unit(s) layer9"),
        (("--beta", "1.5"), "(0, 1]"),
        (("--beta", "x"), "is not a number"),
        (("--beta", "0.9", "--objective", "robustness"), "expected one of 'accuracy', 'probe', 'adversarial'"),
        (("--beta", "0.9", "--objective", "adversarial", "--eps", "abc"), "objectives.0.eps: got 'abc'"),
        (("--beta", "0.9", "--granularity", "layers"), "unknown granularity 'layers'; choose one of"),
        (("--beta", "0.9", "--data", "cifar11"), "unknown dataset 'cifar11'"),
        (("--beta", "0.9", "--profile", "missing.json"), "not allowed with argument"),
    ],
)
def test_evaluate_bad_input_is_one_line(cli_fast, digits_checkpoint, args, message):
    result = cli_fast("evaluate", "--checkpoint", str(digits_checkpoint), *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_evaluate_missing_profile_and_checkpoint(cli_fast, digits_checkpoint):
    missing = cli_fast("evaluate", "--checkpoint", str(digits_checkpoint), "--profile", "missing.json")
    assert missing.returncode == 2 and "profile file missing.json does not exist" in missing.stderr
    no_model = cli_fast("evaluate", "--checkpoint", "nowhere.pt", "--beta", "0.9")
    assert no_model.returncode == 2 and "nowhere.pt not found" in no_model.stderr


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        ("dir", "profile dir is a directory; give the path of a profile JSON file"),
        ('{"format": "ct-tune/beta-profile", "granularity": "global", "betas": {"global": 0.9}, "c": "abc"}', "c must"),
    ],
)
def test_evaluate_a_profile_that_is_a_directory_or_has_a_bad_field(
    cli_fast, digits_checkpoint, tmp_path, profile, message
):
    if profile == "dir":
        (tmp_path / "dir").mkdir()
    else:
        (tmp_path / "p.json").write_text(profile)
        profile = "p.json"
    result = cli_fast("evaluate", "--checkpoint", "unused.pt", "--profile", profile)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr and "Traceback" not in result.stderr


def test_a_plain_state_dict_with_its_architecture_named(cli_fast, digits_checkpoint, tmp_path):
    """--model NAME --checkpoint STATE_DICT: the advice the error gives works (the two were exclusive once)."""
    from ct_tune.models import load_checkpoint

    import torch

    weights = tmp_path / "weights.pt"
    torch.save(load_checkpoint(digits_checkpoint).net.state_dict(), weights)
    bare = cli_fast("evaluate", "--checkpoint", str(weights), "--data", "digits", "--beta", "1", "--json")
    assert bare.returncode == 2 and "--model resnet18 --checkpoint" in bare.stderr
    named = ["--model", "cifar_resnet_small", "--checkpoint", str(weights), "--data", "digits", "--beta", "1"]
    full = cli_fast("evaluate", "--checkpoint", str(digits_checkpoint), "--data", "digits", "--beta", "1", "--json")
    result = cli_fast("evaluate", *named, "--json")
    assert result.returncode == 0, result.stderr
    assert result.json()["results"]["accuracy"]["value"] == full.json()["results"]["accuracy"]["value"]
    units = cli_fast("units", "--model", "cifar_resnet_small", "--checkpoint", str(weights), "--json")
    assert units.returncode == 0 and units.json()["units"] == ["stem", "layer1.0", "layer2.0", "layer3.0"]
    nothing = cli_fast("evaluate", "--data", "digits", "--beta", "1")
    assert nothing.returncode == 2 and "give --checkpoint FILE, --model NAME, or both" in nothing.stderr
