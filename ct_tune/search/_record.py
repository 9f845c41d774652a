"""The MLflow record of a trial, and of the study on its parent run.

A trial's child run is opened when the trial starts (betas and c as params; worker, device, kind as tags;
the val split as its dataset) and its id is stored on the trial (``mlflow_run_id``); it is closed with the
trial's state, its objective values and details as metrics, the running values with their steps,
``trial.json`` and a plot of its betas. A worker that dies leaves its run RUNNING: whoever fails its trial
closes the run as FAILED (``stale_trial_callback``). The parent run holds the best value so far and the
study's plots.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ct_tune.objectives import ObjectiveResult
from ct_tune.search._space import BETA_PREFIX, C_PARAM, beta_param
from ct_tune.stores import count_states, database_reason, is_database_error
from ct_tune.tracking import SplitDataset, Tracker, beta_profile_figure, mlflow_key, study_figures
from ct_tune.tracking.keys import (
    ATTR_RUN_ID,
    TAG_ATTACK,
    TAG_DEVICE,
    TAG_FAILURE,
    TAG_KIND,
    TAG_STATE,
    TAG_TRIAL,
    TAG_TRIALS_PER_BATCH,
    TAG_WORKER,
)

if TYPE_CHECKING:
    from ct_tune.search._study import Study

    import optuna
    from matplotlib.figure import Figure

__all__ = [
    "TrialRecorder",
    "memory_metrics",
    "mlflow_beta_params",
    "objective_tags",
    "open_runs_of",
    "refresh_study_plots",
    "stale_trial_callback",
]

logger = logging.getLogger(__name__)

OPTUNA_MAX_NAME = 512  # Optuna's RDB storage: the longest param name (VARCHAR(512))


@dataclass
class TrialRecorder:
    """Opens and closes the MLflow runs of one worker's trials."""

    tracker: Tracker
    study_name: str
    experiment_id: str
    parent_run_id: str
    sampler: str
    worker: int
    device_label: str
    device: Any  # torch.device, for the memory metrics
    trials_per_batch: int = 1
    lowest_beta: float = 0.7  # the plots' axis floor
    baselines: dict[str, float] = field(default_factory=dict)  # SiLU/GELU units' beta0, for the plots
    run_tags: Mapping[str, str] = field(default_factory=dict)  # on every trial run (``objective_tags``)
    units: Sequence[str] = ()  # in network order (the study's); default: the order of the betas given
    datasets: Sequence[SplitDataset] = ()  # the val split the trials are scored on

    def open(self, trial: optuna.Trial, betas: Mapping[str, float], c: float, kind: str, *, sampler_seed: int) -> str:
        """Open the trial's child run and store its id on the trial; returns the run id."""
        params: dict[str, Any] = mlflow_beta_params(betas, self.units)
        params.update({C_PARAM: c, "trial_number": trial.number, "sampler": self.sampler, "sampler_seed": sampler_seed})
        tags = {**self.run_tags, TAG_WORKER: str(self.worker), TAG_DEVICE: self.device_label, TAG_KIND: kind}
        if self.trials_per_batch > 1:
            tags[TAG_TRIALS_PER_BATCH] = str(self.trials_per_batch)
        run_id = self.tracker.start_trial_run(
            self.experiment_id,
            self.parent_run_id,
            study_name=self.study_name,
            trial_number=trial.number,
            params=params,
            tags=tags,
            datasets=self.datasets,
        )
        trial.set_user_attr(ATTR_RUN_ID, run_id)  # overwrites the id a retried trial inherited
        return run_id

    def close(
        self,
        trial_number: int,
        run_id: str,
        *,
        state: str,
        betas: Mapping[str, float],
        c: float,
        results: Mapping[str, ObjectiveResult],
        history: list[tuple[str, float, int]],
        seconds: float,
        failure: str,
    ) -> dict[str, float]:
        """Close the run with the trial's outcome; returns the metrics written. An MLflow failure is a
        warning: the trial's result stands in Optuna, which is the truth of a study."""
        metrics: dict[str, float] = {"trial_seconds": seconds}
        record: dict[str, Any] = {"trial": trial_number, "state": state, "betas": dict(betas), "c": c, "results": {}}
        compute = 0.0
        for name, result in results.items():
            metrics[name] = result.value
            compute += result.compute_seconds
            for key, value in result.details.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    metrics[f"{name}.{key}"] = float(value)
            record["results"][name] = result.to_dict()
        if results:
            metrics["compute_seconds"] = compute
        metrics.update(memory_metrics(self.device))
        if state == "PRUNED" and history:
            record["pruned_at_step"] = history[-1][2]
        tags = {TAG_FAILURE: failure} if failure else {}
        low, baselines = self.lowest_beta, self.baselines

        def figure() -> Figure:
            title = f"trial {trial_number} ({state})"
            return beta_profile_figure(dict(betas), title=title, low=low, baselines=baselines)

        try:
            self.tracker.finish_trial_run(
                run_id, state=state, metrics=metrics, history=history, tags=tags, record=record, figure=figure
            )
        except Exception as error:
            logger.warning("trial %d: could not finish MLflow run %s: %s", trial_number, run_id, database_reason(error))
        return metrics


def mlflow_beta_params(betas: Mapping[str, float], units: Sequence[str] = ()) -> dict[str, float]:
    """A trial's betas as MLflow params named ``beta.<k>.<unit>``, k the unit's zero-padded index in
    network order: MLflow's runs table sorts params by name, so ``beta.02.layer1.0`` comes before
    ``beta.10.layer3.1`` as the network has them (Optuna's own names stay ``beta.<unit>``)."""
    order = list(units) or list(betas)
    width = max(2, len(str(len(order) - 1)))
    index = {unit: k for k, unit in enumerate(order)}
    return {f"{BETA_PREFIX}{index[unit]:0{width}d}.{unit}": value for unit, value in betas.items()}


def unit_keys(units: Sequence[str]) -> dict[str, str]:
    """The units whose MLflow beta param is not ``beta.<k>.<unit>`` itself, with the key they get instead
    (a study logs them as ``unit_keys.json``; the index k keeps every key unique); one line when a unit's
    name is too long for Optuna's storage."""
    from ct_tune._errors import InputError

    too_long = [unit for unit in units if len(beta_param(unit)) > OPTUNA_MAX_NAME]
    if too_long:
        raise InputError(
            f"unit {too_long[0][:60]!r}... has a name of {len(too_long[0])} characters, longer than Optuna stores "
            f"({OPTUNA_MAX_NAME - len(BETA_PREFIX)}); use a coarser granularity or shorter module names"
        )
    raw = mlflow_beta_params(dict.fromkeys(units, 1.0), units)
    return {unit: mlflow_key(name) for unit, name in zip(units, raw, strict=True) if mlflow_key(name) != name}


def objective_tags(objectives: Sequence[Any]) -> dict[str, str]:
    """Tags naming what the objectives ran: the attack and its version (``ct_tune.attack``)."""
    versions = [objective.version for objective in objectives if objective.name == "adversarial"]
    return {TAG_ATTACK: versions[0]} if versions else {}


def stale_trial_callback(
    tracker_factory: Callable[[], Tracker], experiment_id: str
) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    """Close a dead worker's MLflow run as FAILED, then enqueue its retry (same betas).

    The run is found by its trial-number tag as well as by the id stored on the trial: a worker killed
    between opening the run and storing its id leaves a run the trial does not name."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    retry = RetryHeartbeatStaleTrialCallback(max_retry=3)

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        tracker = tracker_factory()
        for run_id in open_runs_of(tracker, experiment_id, trial):
            tracker.close_run(run_id, state="FAIL", reason="worker stopped sending heartbeats")
        logger.warning("trial %d: its worker stopped responding; marked FAIL and enqueued again", trial.number)
        retry(study, trial)

    return callback


def open_runs_of(tracker: Tracker, experiment_id: str, trial: optuna.trial.FrozenTrial) -> list[str]:
    """Ids of the trial's MLflow runs still RUNNING: the one it names, and any with its number's tag."""
    ids = {trial.user_attrs[ATTR_RUN_ID]} if trial.user_attrs.get(ATTR_RUN_ID) else set()
    try:
        runs = tracker.runs(
            experiment_id,
            filter_string=f"tags.`{TAG_TRIAL}` = '{trial.number}' and tags.`{TAG_STATE}` = 'RUNNING'",
        )
        ids |= {run.info.run_id for run in runs}
    except Exception as error:  # MLflow unreachable: the named run is still closed if it can be
        logger.warning("trial %d: could not search its MLflow runs: %s", trial.number, database_reason(error))
    return sorted(ids)


def refresh_study_plots(study: Study, tracker: Tracker, *, wait: bool = True) -> None:
    """The parent run's best value (metric) and plots: history, Pareto front, importances, best profile."""
    names = study.objective_names
    parent = study.parent_run_id
    try:
        best = study.best()
        if len(best) == 1:
            states = count_states(study.storage, study.study_id)
            step = states["COMPLETE"] + states["PRUNED"]
            tracker.log(parent, metrics={f"best.{names[0]}": best[0].values[names[0]]}, step=step)
    except Exception as error:  # plots must never stop a study; a lost database is reported by the loop
        log = logger.debug if is_database_error(error) else logger.warning
        log("could not log the best value: %s", database_reason(error))

    def figures() -> dict[str, Figure]:
        drawn = {f"plots/{name}.png": figure for name, figure in study_figures(study.optuna_study, names).items()}
        best = study.best()
        if len(best) == 1:
            values = ", ".join(f"{n}={v:.4f}" for n, v in best[0].values.items())
            drawn["plots/best_beta_profile.png"] = beta_profile_figure(
                best[0].betas,
                title=f"best trial {best[0].number}: {values}",
                low=study.spec.search.lowest(study.families_used),
                baselines=study.baselines,
            )
        return drawn

    tracker.log_figures_later(parent, figures)
    if wait:
        tracker.flush()


def memory_metrics(device: Any) -> dict[str, float]:
    """This process's resident memory, and on CUDA the peak allocated since the previous trial (MB)."""
    metrics: dict[str, float] = {}
    try:
        with open("/proc/self/statm") as statm:
            metrics["worker_rss_mb"] = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):  # not Linux
        pass
    if getattr(device, "type", None) == "cuda":
        import torch

        metrics["gpu_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
    return metrics
