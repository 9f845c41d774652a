"""Figures logged to MLflow, where people would rather look than read.

- the beta profile of a trial (beta per unit, in network order, against the ReLU line);
- optimisation history, Pareto front (two or three objectives) and parameter importances of a study,
  drawn by Optuna's matplotlib backend;
- a replicate set's gains over ReLU per seed, with their mean and interval over seeds.

Figures are built without touching pyplot's global state where we draw them ourselves, so importing
this module never changes the user's matplotlib backend.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ct_tune.evidence import OverSeeds

    import optuna
    from matplotlib.figure import Figure


def beta_profile_figure(
    betas: Mapping[str, float],
    *,
    title: str,
    low: float | None = None,
    baselines: Mapping[str, float] | None = None,
) -> Figure:
    """Bars of beta per unit, in network order; 1.0 (plain ReLU) is the dashed line, and each SiLU or GELU
    unit's own activation (``baselines``: unit -> beta0) a dotted one."""
    from matplotlib.figure import Figure

    names = list(betas)
    values = [betas[name] for name in names]
    width = min(18.0, max(4.0, 0.35 * len(names) + 2))
    figure = Figure(figsize=(width, 3.6), layout="constrained")
    axes = figure.add_subplot()
    positions = range(len(names))
    own = [(baselines or {}).get(name, 1.0) for name in names]
    colours = ["#9aa5b1" if value == base else "#2b6cb0" for value, base in zip(values, own, strict=True)]
    axes.bar(positions, values, color=colours)
    axes.axhline(1.0, color="black", linestyle="--", linewidth=0.8, label="ReLU (beta = 1)")
    for base in sorted({base for base in own if base < 1.0}):
        axes.axhline(base, color="#c05621", linestyle=":", linewidth=0.9, label=f"own activation (beta0 = {base:.4g})")
    floor = min([*values, low if low is not None else min(values)])
    axes.set_ylim(max(0.0, floor - 0.05), 1.01)
    axes.set_ylabel("beta")
    axes.set_title(title, fontsize=10)
    if len(names) <= 60:
        axes.set_xticks(list(positions), names, rotation=90 if len(names) > 6 else 0, fontsize=7)
    else:
        axes.set_xlabel(f"{len(names)} units in network order")
    axes.legend(loc="lower left", fontsize=7)
    return figure


def study_figures(study: optuna.Study, objective_names: Sequence[str]) -> dict[str, Figure]:
    """History per objective, Pareto front (2-3 objectives) and importances, as far as the study allows."""
    import optuna
    import optuna.visualization.matplotlib as ovm

    figures: dict[str, Figure] = {}
    finished = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if not finished:
        return figures
    directions = study.directions
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental-API and evaluator notes, not user problems
        for index, name in enumerate(objective_names):
            target = None if len(directions) == 1 else (lambda t, i=index: t.values[i])
            figures[f"history_{name}"] = _figure(ovm.plot_optimization_history(study, target=target, target_name=name))
        if 2 <= len(directions) <= 3 and len(finished) >= 1:
            figures["pareto_front"] = _figure(ovm.plot_pareto_front(study, target_names=list(objective_names)))
        if len(finished) >= 3 and len(finished[0].params) >= 1:
            for index, name in enumerate(objective_names):
                sign = 1.0 if directions[index] == optuna.study.StudyDirection.MINIMIZE else -1.0
                try:  # PedANOVA ranks parameters for *low* target values: flip maximised objectives
                    axes = ovm.plot_param_importances(
                        study,
                        evaluator=optuna.importance.PedAnovaImportanceEvaluator(),
                        target=lambda t, i=index, s=sign: s * t.values[i],
                        target_name=name,
                    )
                except (RuntimeError, ValueError, ZeroDivisionError):
                    continue  # too few distinct trials for importances yet
                figures[f"importances_{name}"] = _figure(axes)
    return figures


def _figure(axes) -> Figure:
    figure = axes.figure
    figure.set_layout_engine("constrained")
    return figure


def close(figure: Figure) -> None:
    """Release a figure (pyplot keeps the ones Optuna created until closed)."""
    import matplotlib.pyplot as plt

    plt.close(figure)


def beta_distribution_figure(channels: Mapping[str, Sequence[float]], *, title: str) -> Figure:
    """The trained betas of every unit as a box (per-channel units) or a dot (one beta), in network order."""
    from matplotlib.figure import Figure

    names = list(channels)
    width = min(18.0, max(4.0, 0.35 * len(names) + 2))
    figure = Figure(figsize=(width, 3.6), layout="constrained")
    axes = figure.add_subplot()
    positions = list(range(1, len(names) + 1))
    axes.boxplot([list(channels[name]) for name in names], positions=positions, widths=0.6, showfliers=True)
    axes.axhline(1.0, color="black", linestyle="--", linewidth=0.8, label="ReLU (beta = 1)")
    axes.set_ylim(0.0, 1.02)
    axes.set_ylabel("beta")
    axes.set_title(title, fontsize=10)
    if len(names) <= 60:
        axes.set_xticks(positions, names, rotation=90 if len(names) > 6 else 0, fontsize=7)
    else:
        axes.set_xticks([])
        axes.set_xlabel(f"{len(names)} units in network order")
    axes.legend(loc="lower left", fontsize=7)
    return figure


def gains_per_seed_figure(gains: Mapping[str, OverSeeds], *, title: str) -> Figure:
    """Each profile's gain over ReLU per seed (dots, labelled with the seed), its mean (a bar) and the
    t-interval over seeds (a line): the spread a single seed hides."""
    from matplotlib.figure import Figure

    names = list(gains)
    figure = Figure(figsize=(max(4.0, 1.4 * len(names) + 2), 3.8), layout="constrained")
    axes = figure.add_subplot()
    for position, name in enumerate(names):
        summary = gains[name]
        axes.scatter([position] * len(summary.gains), summary.gains, color="#2b6cb0", s=18, zorder=3)
        for seed, gain in zip(summary.seeds, summary.gains, strict=True):
            axes.annotate(f"s{seed}", (position, gain), xytext=(5, 0), textcoords="offset points", fontsize=7)
        axes.hlines(summary.mean, position - 0.25, position + 0.25, color="black", linewidth=1.5)
        if summary.low is not None and summary.high is not None:
            axes.vlines(position, summary.low, summary.high, color="black", linewidth=1.0)
    axes.axhline(0.0, color="#9aa5b1", linestyle="--", linewidth=0.8)
    axes.set_xticks(list(range(len(names))), names, fontsize=8)
    axes.set_ylabel("test gain over ReLU (paired, per seed)")
    confidence = next(iter(gains.values())).confidence if gains else 0.95
    axes.set_title(f"{title}\nmean and {confidence:.0%} t-interval over seeds", fontsize=10)
    return figure
