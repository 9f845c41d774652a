"""Studies of SiLU and GELU networks: the baseline is the network's own activation, ranges and the paper
grid sit around each family's beta0, reports say "own activation", and bad input is one line."""

from __future__ import annotations

import json

import ct_tune
from ct_tune.search import family_range, paper_grid
from ct_tune.search._space import beta_param

import pytest
import torch
from torch import nn

from tests._fresh import tiny_study
from tests.conftest import write_spec


class GeluDigitsNet(nn.Module):
    """A small digits CNN whose activation is GELU (or ``act``), random but fixed weights."""

    def __init__(self, act: str = "gelu") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.act1 = {"gelu": nn.GELU, "silu": nn.SiLU, "relu": nn.ReLU}[act]()
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.act2 = {"gelu": nn.GELU, "silu": nn.SiLU, "relu": nn.ReLU}[act]()
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


class SiluDigitsNet(GeluDigitsNet):
    def __init__(self) -> None:
        super().__init__("silu")


MODEL = {"class_path": f"{__name__}.GeluDigitsNet"}


def test_paper_grid_and_ranges_sit_around_each_familys_own_activation():
    assert paper_grid() == [round(0.70 + 0.01 * i, 2) for i in range(30)]
    silu = paper_grid("silu")
    assert len(silu) == 30 and silu[0] == 0.35 and silu[-1] == 0.65 and 0.5 not in silu
    gelu = paper_grid("gelu")
    beta0 = 1.702 / 2.702
    assert len(gelu) == 30 and min(gelu) == pytest.approx(beta0 - 0.15) and max(gelu) == pytest.approx(beta0 + 0.15)
    assert (family_range("silu").low, family_range("silu").high) == (0.2, 0.8)


@pytest.mark.parametrize("model, family", [(MODEL, "gelu"), ({"class_path": f"{__name__}.SiluDigitsNet"}, "silu")])
def test_the_baseline_is_the_networks_own_activation(tmp_path, model, family):
    study = tiny_study(
        tmp_path,
        None,
        model=model,
        search={"granularity": "block", "enqueue_paper_grid": True},
        budget={"n_trials": 33},
    )
    beta0 = ct_tune.steering.family_named(family).baseline
    assert study.families == dict.fromkeys(study.units, family)
    enqueued = [t.system_attrs["fixed_params"] for t in study.optuna_study.get_trials()]
    assert enqueued[0] == {beta_param(unit): beta0 for unit in study.units}
    grid = sorted({p for params in enqueued[1:] for p in params.values()})
    assert grid == paper_grid(family)
    study.run(n_trials=2, progress=False)
    baseline = study.baseline()
    assert baseline is not None and baseline.number == 0 and baseline.c == 1.0
    # the baseline scored what the unsteered network scores, exactly
    bench = ct_tune.bench.Bench.open(study.spec, **study.spec.grouping, device="cpu", steer=False)
    with bench:
        x, y = bench.data.tensors("val")
        with torch.no_grad():
            plain = float((bench.model.net(bench.normalize(x)).argmax(1) == y).double().mean())
    assert baseline.values["accuracy"] == pytest.approx(plain, abs=0)
    assert study.status().baseline_label == "own activation"
    profile = study.export(tmp_path / "best.json")
    assert set(json.loads((tmp_path / "best.json").read_text())["families"].values()) == {family}
    assert profile.families == study.families


def test_report_and_cli_say_own_activation(tmp_path, cli_fast):
    write_spec(tmp_path / "g.yaml", tmp_path / "unused.pt", name="g", model=MODEL, budget={"n_trials": 3})
    assert cli_fast("study", "create", "g.yaml").returncode == 0
    created = cli_fast("study", "run", "g", "--no-progress")
    assert created.returncode == 0, created.stderr
    best = cli_fast("study", "best", "g")
    assert "(own activation)" in best.stdout and "(ReLU)" not in best.stdout


@pytest.mark.parametrize(
    "search, message",
    [
        ({"c": 0.5}, "search.c: 0.5 makes the enqueued baseline something else than this network's own GELU"),
        ({"c": {"low": 0.0, "high": 0.9}}, "search.c [0.0, 0.9] leaves out c = 1"),
        ({"ranges": {"conv1": {"low": 0.7, "high": 1.0}}}, "search.ranges names unknown unit(s) conv1"),
        (
            {"families": {"gelu": {"low": 0.7, "high": 0.9}}},
            "enqueue_baseline needs beta 0.6299 (GELU's own) inside families.gelu [0.7, 0.9]",
        ),
    ],
)
def test_bad_family_input_is_one_line_and_writes_nothing(tmp_path, cli_fast, search, message):
    write_spec(
        tmp_path / "g.yaml",
        tmp_path / "unused.pt",
        name="g",
        model=MODEL,
        search={"granularity": "block", "enqueue_baseline": True, **search},
    )
    result = cli_fast("study", "create", "g.yaml")
    assert result.returncode == 2
    assert message in result.stderr and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.yaml"]  # no store was opened


def test_a_relu_network_study_is_as_before(tmp_path):
    study = tiny_study(tmp_path, None, model={"class_path": f"{__name__}.ReluDigitsNet"}, budget={"n_trials": 2})
    assert study.families == {} and study.baseline_label == "ReLU"
    assert "families" not in study.meta
    first = study.optuna_study.get_trials()[0].system_attrs["fixed_params"]
    assert first == {beta_param(unit): 1.0 for unit in study.units}
    assert study.spec.to_dict()["search"].get("c", 0.5) == 0.5


class ReluDigitsNet(GeluDigitsNet):
    def __init__(self) -> None:
        super().__init__("relu")


VIT = {"name": "timm/vit_tiny_patch16_224"}
VIT_DATA = {"name": "digits", "seed": 0, "val_size": 10, "test_size": 10}


@pytest.mark.slow
def test_a_vit_study_runs_from_python(tmp_path):
    pytest.importorskip("timm")
    study = tiny_study(tmp_path, None, model=VIT, data=VIT_DATA, budget={"n_trials": 2}, run={"device": "cpu"})
    assert study.units[0] == "blocks.0" and len(study.units) == 12
    assert set(study.families.values()) == {"gelu"}
    study.run(progress=False)
    assert study.baseline() is not None
    report = study.report()
    assert report.trials[-1].baseline_label == "own activation"


@pytest.mark.slow
def test_a_vit_study_runs_from_the_cli(tmp_path, cli):
    pytest.importorskip("timm")
    write_spec(
        tmp_path / "vit.yaml", tmp_path / "unused.pt", name="vit", model=VIT, data=VIT_DATA, budget={"n_trials": 2}
    )
    for args in (("study", "create", "vit.yaml"), ("study", "run", "vit"), ("study", "report", "vit")):
        result = cli(*args)
        assert result.returncode == 0, result.stderr
    assert "own activation" in result.stdout


@pytest.mark.parametrize("granularity", ["channel", "block"])
def test_trained_ct_starts_from_and_records_the_own_activation(granularity):
    from ct_tune.trained import train_ct

    data = {"name": "digits", "seed": 0, "train_size": 200, "val_size": 100, "test_size": 100}
    trained = train_ct(
        model=MODEL,
        data=data,
        objective="accuracy",
        settings={"granularity": granularity, "epochs": 1, "lr": 0.01},
    )
    assert set(trained.profile.families.values()) == {"gelu"}
    # one epoch at a small learning rate stays next to where training started: GELU's beta0, c near 1
    start = trained.history[0]
    assert abs(start["beta_mean"] - 1.702 / 2.702) < 0.05 and start["c_mean"] > 0.95
