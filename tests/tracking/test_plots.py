"""Figures for MLflow: a trial's beta profile, and a real small Optuna study's history, Pareto front and
importances."""

from __future__ import annotations

import ct_tune  # noqa: F401  (torchvision compat first)
from ct_tune.tracking import beta_profile_figure, study_figures
from ct_tune.tracking._plots import close

import matplotlib
import optuna
import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from optuna.trial import TrialState


@pytest.fixture(autouse=True)
def _close_all():
    import matplotlib.pyplot as plt

    yield
    plt.close("all")


def small_study(directions: list[str], n: int = 6) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=directions, sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(n):
        trial = study.ask()
        a, b = trial.suggest_float("beta.stem", 0.7, 1.0), trial.suggest_float("beta.layer1", 0.7, 1.0)
        values = [a + 0.1 * b, 1.0 - a * b][: len(directions)]
        study.tell(trial, values if len(values) > 1 else values[0])
    study.tell(study.ask(), state=TrialState.FAIL)  # not COMPLETE: never plotted
    return study


def test_single_objective_history_and_importances():
    figures = study_figures(small_study(["maximize"]), ["accuracy"])
    assert set(figures) == {"history_accuracy", "importances_accuracy"}
    assert all(isinstance(figure, Figure) for figure in figures.values())
    history = figures["history_accuracy"].axes[0]
    assert history.get_title() == "Optimization History Plot" and "accuracy" in history.get_ylabel()
    labels = {label.get_text() for label in figures["importances_accuracy"].axes[0].get_yticklabels()}
    assert labels == {"beta.stem", "beta.layer1"}


def test_two_objectives_history_pareto_front_and_importances():
    study = small_study(["maximize", "minimize"])
    figures = study_figures(study, ["accuracy", "adversarial"])
    assert set(figures) == {
        "history_accuracy",
        "history_adversarial",
        "pareto_front",
        "importances_accuracy",
        "importances_adversarial",
    }
    pareto = figures["pareto_front"].axes[0]
    assert (pareto.get_xlabel(), pareto.get_ylabel()) == ("accuracy", "adversarial")
    plotted = sum(len(collection.get_offsets()) for collection in pareto.collections)
    assert plotted == 6  # every complete trial, the failed one left out
    assert "adversarial" in figures["history_adversarial"].axes[0].get_ylabel()


def test_a_study_too_young_for_some_figures():
    assert study_figures(optuna.create_study(), ["accuracy"]) == {}
    two = small_study(["maximize"], n=2)
    assert set(study_figures(two, ["accuracy"])) == {"history_accuracy"}  # importances need three trials


def test_beta_profile_of_a_few_units():
    betas = {"stem": 1.0, "layer1": 0.8, "layer2": 0.75}
    figure = beta_profile_figure(betas, title="trial 3 (COMPLETE)", low=0.7)
    (axes,) = figure.axes
    assert [tick.get_text() for tick in axes.get_xticklabels()] == list(betas)
    assert [round(bar.get_height(), 6) for bar in axes.patches] == [1.0, 0.8, 0.75]
    colours = [to_hex(bar.get_facecolor()) for bar in axes.patches]
    assert colours == ["#9aa5b1", "#2b6cb0", "#2b6cb0"]  # ReLU units grey
    assert axes.get_ylim() == pytest.approx((0.65, 1.01))  # the search's floor, not the lowest bar
    assert axes.get_title() == "trial 3 (COMPLETE)"
    assert figure.get_size_inches()[0] == pytest.approx(4.0)
    close(figure)


def test_beta_profile_of_many_units():
    betas = {f"layer{i // 10}.{i % 10}.relu#{i % 3}": 0.5 + i / 400 for i in range(150)}
    figure = beta_profile_figure(betas, title="best", low=None)
    (axes,) = figure.axes
    assert len(axes.patches) == 150 and figure.get_size_inches()[0] == pytest.approx(18.0)  # width capped
    assert axes.get_xlabel() == "150 units in network order"
    assert not {tick.get_text() for tick in axes.get_xticklabels()} & set(betas)  # numbered, not 150 names
    assert axes.get_ylim()[0] == pytest.approx(0.45)  # lowest beta - 0.05
    sixty = beta_profile_figure(dict(list(betas.items())[:60]), title="t")
    labels = sixty.axes[0].get_xticklabels()
    assert len(labels) == 60 and labels[0].get_rotation() == 90


def test_drawing_leaves_the_matplotlib_backend_alone():
    backend = matplotlib.get_backend()
    beta_profile_figure({"a": 0.9}, title="t")
    assert matplotlib.get_backend() == backend
