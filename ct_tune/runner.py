"""Running the trials of a study in one process: the model and data are loaded once, then each trial
updates the steering betas, scores the model, reports to Optuna and logs to MLflow.

The budget is a total over every worker of the study (on any machine): a worker runs a trial only
while fewer trials than the budget are finished or running, and waits when the last ones are running
elsewhere (one of them may die, and its retry must be picked up). Two workers can still start a trial
at the same instant; the later one notices at start and is discarded (ended FAIL with a
``ct_tune.discarded`` attribute, without an MLflow run), so exactly the budget completes.

A worker that dies mid-trial leaves its trial RUNNING; its heartbeat stops, another worker marks it
FAIL, closes its MLflow run as FAILED and enqueues a retry with the same betas
(``RetryHeartbeatStaleTrialCallback``). Ctrl-C marks the running trial FAIL (Optuna does) and its run
FAILED (we do); running again resumes.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ct_tune._errors import StorageLost
from ct_tune._fused import fused_status
from ct_tune._interrupts import InterruptGuard
from ct_tune.objectives import Evaluator, ObjectiveResult
from ct_tune.plots import beta_profile_figure, study_figures
from ct_tune.samplers import build_pruner, build_sampler
from ct_tune.search_space import C_PARAM, beta_param, param_names, suggest
from ct_tune.steering import SteeringHandle
from ct_tune.storage import database_cause, database_reason, is_database_error, open_optuna_storage
from ct_tune.study import ATTR_DISCARDED, ATTR_KIND, StudyInfo, best_trials, count_states, load_study
from ct_tune.tracking import ATTR_RUN_ID, Tracker

if TYPE_CHECKING:
    import optuna
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

PLOT_REFRESH_SECONDS = 30.0
PRUNING_CHECKS = 10  # pruner decisions per trial, at evenly spaced fractions of the val set


class Workbench(Protocol):
    """What a worker loads once: a steered model and an evaluator on the val split."""

    handle: SteeringHandle
    evaluator: Evaluator
    device_label: str


@dataclass
class RunSettings:
    target_total: int | None  # finished (COMPLETE + PRUNED) trials the study should reach
    deadline: float | None = None  # time.time() after which no new trial starts
    worker: int = 0
    heartbeat_interval: int = 10
    grace_period: int | None = None
    poll_seconds: float = 2.0
    refresh_plots: bool = True
    on_trial: Callable[[dict[str, Any]], None] | None = None  # progress: called after each trial


@dataclass
class RunSummary:
    finished: int = 0  # trials this worker finished (COMPLETE + PRUNED)
    failed: int = 0
    discarded: int = 0
    reason: str = ""
    trials: list[dict[str, Any]] = field(default_factory=list)
    # Seconds per kind of work, summed over this worker's trials: "evaluate" (scoring the model),
    # "tracking" (MLflow calls), "optuna" (sampling, storage reads and writes, heartbeats).
    seconds: dict[str, float] = field(default_factory=lambda: {"evaluate": 0.0, "tracking": 0.0, "optuna": 0.0})


def _failure_text(error: BaseException) -> str:
    """What a failed trial's MLflow run records as its failure."""
    return "interrupted (Ctrl-C)" if isinstance(error, KeyboardInterrupt) else repr(error)[:500]


class _Discarded(Exception):
    """The budget was reached by other workers between our count and this trial's creation."""


class _DatabaseGone(Exception):
    """The Optuna storage stopped answering during a run."""


def stale_trial_callback(
    tracker_factory: Callable[[], Tracker],
) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    """Close a dead worker's MLflow run as FAILED, then enqueue its retry (same betas)."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    retry = RetryHeartbeatStaleTrialCallback(max_retry=3)

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        run_id = trial.user_attrs.get(ATTR_RUN_ID)
        if run_id:
            tracker_factory().close_run(run_id, state="FAIL", reason="worker stopped sending heartbeats")
        logger.warning("trial %d: its worker stopped responding; marked FAIL and enqueued again", trial.number)
        retry(study, trial)

    return callback


class TrialRunner:
    """Runs trials of one study in this process until the budget or the deadline is reached."""

    def __init__(self, info: StudyInfo, bench: Workbench, tracker: Tracker, settings: RunSettings) -> None:
        import optuna

        self.tracker = tracker
        self.bench = bench
        self.settings = settings
        storage = open_optuna_storage(
            info.storage_url,
            heartbeat_interval=settings.heartbeat_interval,
            grace_period=settings.grace_period,
            stale_trial_callback=stale_trial_callback(lambda: tracker),
        )
        self.info = load_study(name=info.name, storage_url=info.storage_url, storage=storage)
        spec = self.info.spec
        self.study = optuna.load_study(
            study_name=info.name,
            storage=storage,
            sampler=build_sampler(spec, param_names(spec, self.info.units), worker=settings.worker),
            pruner=build_pruner(spec),
        )
        self.objective_names = spec.objective_names
        self.batch = spec.run.trials_per_batch
        device_type = getattr(bench.evaluator.target.device, "type", "cpu")
        logger.info("worker %d: CT activation %s", settings.worker, fused_status(device_type))
        self.prune = len(spec.objectives) == 1 and spec.pruner.name != "none" and self.batch == 1
        if self.batch > 1:
            logger.info(
                "worker %d: %d trials per batch (asked together, scored in one pass, told together); no pruning",
                settings.worker,
                self.batch,
            )
        self.summary = RunSummary()
        self._trial_evaluate = self._trial_tracking = 0.0
        self._round_evaluate = self._round_tracking = 0.0  # summed over the trials of one loop round
        self._interrupts = InterruptGuard()
        self._val_samples = len(bench.evaluator.data.val_y)
        self._last_plots = 0.0
        self._host = socket.gethostname()

    # ----------------------------------------------------------------------------------------------
    # The loop
    def run(self) -> RunSummary:
        import optuna

        parent = self.info.mlflow["parent_run_id"]
        self.tracker.set_status(parent, "RUNNING")
        status = "FINISHED"
        try:
            with self._interrupts.installed():
                while (reason := self._stop_reason()) is None:
                    if self._must_wait():
                        time.sleep(self.settings.poll_seconds)
                        continue
                    started = time.perf_counter()
                    self._round_evaluate = self._round_tracking = 0.0
                    with warnings.catch_warnings(), self._interrupts.deferred():
                        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                        if self.batch == 1:
                            self.study.optimize(self._objective, n_trials=1, catch=(_Discarded,), gc_after_trial=False)
                        else:
                            self._run_batch()
                    spent = self.summary.seconds
                    spent["optuna"] += time.perf_counter() - started - self._round_evaluate - self._round_tracking
            self.summary.reason = reason
        except KeyboardInterrupt:
            status = "KILLED"
            self.summary.reason = "interrupted"
            raise
        except Exception as error:
            status = "FAILED"
            if is_database_error(error) or isinstance(error, _DatabaseGone):
                reason = database_reason(database_cause(error))
                self.summary.reason = f"database unreachable: {reason}"
                raise StorageLost(
                    f"the Optuna storage stopped answering ({reason}); this worker stopped. "
                    f"Run 'ct-tune study run {self.info.name}' again once it is back: the study resumes"
                ) from None
            raise
        finally:
            self.tracker.set_status(parent, status)
            if self.settings.refresh_plots:
                self.refresh_plots(force=True)
            self.tracker.flush()
        return self.summary

    def _counts(self) -> tuple[int, int]:
        """(finished, running) trials of the study, over all workers."""
        from optuna.trial import TrialState

        try:
            states = count_states(self.info.storage, self.info.study_id)
        except Exception as error:
            if is_database_error(error):
                raise _DatabaseGone(database_reason(error)) from error
            raise
        return states[TrialState.COMPLETE.name] + states[TrialState.PRUNED.name], states[TrialState.RUNNING.name]

    def _stop_reason(self) -> str | None:
        if self.settings.deadline is not None and time.time() >= self.settings.deadline:
            return "timeout"
        if self.settings.target_total is not None and self._counts()[0] >= self.settings.target_total:
            return "budget reached"
        return None

    def _must_wait(self) -> bool:
        """The last trials of the budget are running elsewhere: wait (one may die and need a retry)."""
        if self.settings.target_total is None:
            return False
        finished, running = self._counts()
        if finished + running < self.settings.target_total:
            return False
        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)
        return True

    def _is_surplus(self, trial: optuna.Trial) -> bool:
        """Another worker started the last trial of the budget at the same time as this one."""
        target = self.settings.target_total
        if target is None:
            return False
        finished, running = self._counts()
        if finished + running <= target:
            return False
        from optuna.trial import TrialState

        earlier = self.study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        )
        ahead = sum(1 for t in earlier if t.number < trial.number and ATTR_DISCARDED not in t.user_attrs)
        return ahead >= target

    # ----------------------------------------------------------------------------------------------
    # One trial
    def _objective(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        self._trial_evaluate = self._trial_tracking = 0.0
        if self._is_surplus(trial):
            trial.set_user_attr(ATTR_DISCARDED, "the budget was reached by other workers")
            self.summary.discarded += 1
            raise _Discarded
        started = time.perf_counter()
        betas, c, run_id = self._begin(trial)
        history: list[tuple[str, float, int]] = []
        results: Mapping[str, ObjectiveResult] = {}
        state, failure = "FAIL", ""
        try:
            with self._interrupts.interruptible():
                evaluate_started = time.perf_counter()
                try:
                    self.bench.handle.update(betas, c=c)
                    results = self.bench.evaluator.evaluate(self._reporter(trial, history))
                finally:
                    self._trial_evaluate = time.perf_counter() - evaluate_started
            values = self._values(results)
            state = "COMPLETE"
            return values[0] if len(values) == 1 else values
        except _Pruned:
            state = "PRUNED"
            import optuna

            raise optuna.TrialPruned() from None
        except BaseException as error:
            failure = _failure_text(error)
            raise
        finally:
            seconds = time.perf_counter() - started
            self._finish(trial, run_id, state, betas, c, results, history, seconds, failure)

    def _begin(self, trial: optuna.Trial) -> tuple[dict[str, float], float, str]:
        """Sample the trial's betas and open its MLflow child run: (betas, c, run id)."""
        betas, c = suggest(trial, self.info.spec, self.info.units)
        kind, stored_kind = self._kind(trial)
        if kind != stored_kind:  # enqueued trials carry theirs; "sampled" is the default when absent
            trial.set_user_attr(ATTR_KIND, kind)
        params = {beta_param(unit): value for unit, value in betas.items()}
        params.update({C_PARAM: c, "trial_number": trial.number, "sampler": self.info.spec.sampler.name})
        tags = {
            "ct_tune.worker": str(self.settings.worker),
            "ct_tune.device": self.bench.device_label,
            "ct_tune.kind": kind,
        }
        if self.batch > 1:
            tags["ct_tune.trials_per_batch"] = str(self.batch)
        tracking_started = time.perf_counter()
        run_id = self.tracker.start_trial_run(
            self.info.mlflow["experiment_id"],
            self.info.mlflow["parent_run_id"],
            study_name=self.info.name,
            trial_number=trial.number,
            params=params,
            tags=tags,
        )
        self._trial_tracking += time.perf_counter() - tracking_started
        trial.set_user_attr(ATTR_RUN_ID, run_id)  # overwrites the id a retried trial inherited
        return betas, c, run_id

    # ----------------------------------------------------------------------------------------------
    # K trials at once
    def _run_batch(self) -> None:
        """Ask up to K trials, score them in one pass, tell each: the budget stays exact (each trial is
        checked for surplus like a single one), every trial keeps a heartbeat, and none is pruned."""
        import optuna
        from optuna.trial import TrialState

        k = self.batch
        if self.settings.target_total is not None:
            finished, running = self._counts()
            k = max(1, min(k, self.settings.target_total - finished - running))
        if _heartbeat_interval(self.info.storage) is not None:
            optuna.storages.fail_stale_trials(self.study)  # what study.optimize does before each ask
        trials: list[optuna.Trial] = []
        try:
            for _ in range(k):
                trials.append(self.study.ask())
        except BaseException:
            for trial in trials:
                self.study.tell(trial, state=TrialState.FAIL)
            raise
        live = []
        for trial in trials:
            if self._is_surplus(trial):
                trial.set_user_attr(ATTR_DISCARDED, "the budget was reached by other workers")
                self.study.tell(trial, state=TrialState.FAIL)
                self.summary.discarded += 1
            else:
                live.append(trial)
        if not live:
            return
        with _Heartbeats(self.info.storage, [trial._trial_id for trial in live]):
            self._score_batch(live)

    def _score_batch(self, trials: list[optuna.Trial]) -> None:
        from optuna.trial import TrialState

        started = time.perf_counter()
        begun: list[tuple[optuna.Trial, dict[str, float], float, str]] = []
        results: list[dict[str, ObjectiveResult]] = []
        evaluate_seconds = 0.0
        try:
            for trial in trials:
                self._trial_tracking = 0.0
                begun.append((trial, *self._begin(trial)))
                self._round_tracking += self._trial_tracking
            with self._interrupts.interruptible():
                evaluate_started = time.perf_counter()
                try:
                    results = self.bench.evaluator.evaluate_profiles(
                        self.bench.handle, [(betas, c) for _, betas, c, _ in begun]
                    )
                finally:
                    evaluate_seconds = time.perf_counter() - evaluate_started
        except BaseException as error:
            failure = _failure_text(error)
            share = (time.perf_counter() - started) / max(len(trials), 1)
            for trial, betas, c, run_id in begun:
                self._trial_evaluate, self._trial_tracking = evaluate_seconds / len(trials), 0.0
                self._finish(trial, run_id, "FAIL", betas, c, {}, [], share, failure)
            for trial in trials:
                self.study.tell(trial, state=TrialState.FAIL)
            raise
        share = (time.perf_counter() - started) / len(trials)
        for (trial, betas, c, run_id), trial_results in zip(begun, results, strict=True):
            try:
                values = self._values(trial_results)
                state, failure = "COMPLETE", ""
            except RuntimeError as error:
                state, failure = "FAIL", _failure_text(error)
            self._trial_evaluate, self._trial_tracking = evaluate_seconds / len(trials), 0.0
            self._finish(trial, run_id, state, betas, c, trial_results, [], share, failure)
            if state == "COMPLETE":
                self.study.tell(trial, values[0] if len(values) == 1 else list(values))
            else:
                self.study.tell(trial, state=TrialState.FAIL)

    def _values(self, results: Mapping[str, ObjectiveResult]) -> tuple[float, ...]:
        """The objective values in the spec's order; a value that is not finite fails the trial."""
        values = tuple(results[name].value for name in self.objective_names)
        if not all(math.isfinite(v) for v in values):
            raise RuntimeError(f"objective values are not finite: {values}")
        return values

    def _kind(self, trial: optuna.Trial) -> tuple[str, str]:
        """(kind, kind stored on the trial): baseline / paper-grid (enqueued), retry (of a trial whose
        worker died: it inherited the dead trial's attributes), or sampled."""
        from optuna.storages import RetryHeartbeatStaleTrialCallback

        storage = self.info.storage
        frozen = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(self.info.study_id, trial.number))
        stored = str(frozen.user_attrs.get(ATTR_KIND, "sampled"))
        if RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen) is not None:
            return "retry", stored
        return stored, stored

    def _reporter(self, trial: optuna.Trial, history: list[tuple[str, float, int]]):
        """Running values go to MLflow after every chunk; to Optuna (a storage write and a pruner
        decision each) at most PRUNING_CHECKS times per trial."""
        name = self.objective_names[0] if len(self.objective_names) == 1 else None
        gap = max(1, self._val_samples // PRUNING_CHECKS)
        last = [0]

        def report(value: float, step: int) -> None:
            if name is not None:
                history.append((f"{name}.running", value, step))
            if self.prune and (step - last[0] >= gap or step >= self._val_samples):
                last[0] = step
                trial.report(value, step)
                if trial.should_prune():
                    raise _Pruned

        return report

    def _finish(
        self,
        trial: optuna.Trial,
        run_id: str,
        state: str,
        betas: dict[str, float],
        c: float,
        results: Mapping[str, ObjectiveResult],
        history: list[tuple[str, float, int]],
        seconds: float,
        failure: str,
    ) -> None:
        metrics: dict[str, float] = {"trial_seconds": seconds}
        record: dict[str, Any] = {"trial": trial.number, "state": state, "betas": betas, "c": c, "results": {}}
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
        metrics.update(memory_metrics(self.bench.evaluator.target.device))
        if state == "PRUNED" and history:
            record["pruned_at_step"] = history[-1][2]
        tags = {"ct_tune.failure": failure} if failure else {}
        low = self.info.spec.search.lowest

        def figure() -> Figure:
            return beta_profile_figure(betas, title=f"trial {trial.number} ({state})", low=low)

        tracking_started = time.perf_counter()
        try:
            self.tracker.finish_trial_run(
                run_id, state=state, metrics=metrics, history=history, tags=tags, record=record, figure=figure
            )
        except Exception as error:  # the trial's result stands in Optuna even if MLflow hiccups
            logger.warning("trial %d: could not finish MLflow run %s: %s", trial.number, run_id, database_reason(error))
        line = {
            "number": trial.number,
            "state": state,
            "seconds": seconds,
            "values": {n: r.value for n, r in results.items()},
        }
        self._trial_tracking += time.perf_counter() - tracking_started
        self.summary.seconds["evaluate"] += self._trial_evaluate
        self.summary.seconds["tracking"] += self._trial_tracking
        self._round_evaluate += self._trial_evaluate
        self._round_tracking += self._trial_tracking
        line["betas"], line["c"] = betas, c
        line["rss_mb"] = metrics.get("worker_rss_mb")
        if state in ("COMPLETE", "PRUNED"):
            self.summary.finished += 1
        else:
            self.summary.failed += 1
        self.summary.trials.append(line)
        if self.settings.on_trial is not None:
            self.settings.on_trial(line)
        if self.settings.refresh_plots and state == "COMPLETE":
            self.refresh_plots()

    # ----------------------------------------------------------------------------------------------
    # Parent run
    def refresh_plots(self, *, force: bool = False) -> None:
        """Plots and best values on the parent run, at most every PLOT_REFRESH_SECONDS (in the background)."""
        now = time.monotonic()
        if not force and now - self._last_plots < PLOT_REFRESH_SECONDS:
            return
        self._last_plots = now
        refresh_study_plots(self.info, self.tracker, wait=force)


def refresh_study_plots(info: StudyInfo, tracker: Tracker, *, wait: bool = True) -> None:
    """The parent run's best value (metric) and plots: history, Pareto front, importances, best profile."""
    names = info.objective_names
    parent = info.mlflow["parent_run_id"]
    try:
        best = best_trials(info)
        if len(best) == 1:
            states = count_states(info.storage, info.study_id)
            step = states["COMPLETE"] + states["PRUNED"]
            tracker.log(parent, metrics={f"best.{names[0]}": best[0].values[0]}, step=step)
    except Exception as error:  # plots must never stop a study
        logger.warning("could not log the best value: %s", error)

    def figures() -> dict[str, Figure]:
        drawn = {f"plots/{name}.png": figure for name, figure in study_figures(info.study, names).items()}
        best = best_trials(info)
        if len(best) == 1:
            betas, _ = info.profile_of(best[0])
            values = ", ".join(f"{n}={v:.4f}" for n, v in zip(names, best[0].values, strict=True))
            low = info.spec.search.lowest
            drawn["plots/best_beta_profile.png"] = beta_profile_figure(
                betas, title=f"best trial {best[0].number}: {values}", low=low
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


def _heartbeat_interval(storage: Any) -> int | None:
    """The storage's heartbeat interval, None when it has no heartbeats (Optuna's own test)."""
    interval = getattr(storage, "get_heartbeat_interval", None)
    return interval() if interval is not None else None


class _Heartbeats:
    """Keeps the heartbeats of several running trials (Optuna's thread serves the one trial of
    ``study.optimize``; a batch of asked trials needs its own). A failing write is logged once: the
    main loop meets the lost database itself."""

    def __init__(self, storage: Any, trial_ids: list[int]) -> None:
        self.storage = storage
        self.trial_ids = trial_ids
        self.interval = _heartbeat_interval(storage)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _Heartbeats:
        if self.interval is not None:
            self._thread = threading.Thread(target=self._beat, name="ct-tune-heartbeats", daemon=True)
            self._thread.start()
        return self

    def _beat(self) -> None:
        assert self.interval is not None
        while True:
            try:
                for trial_id in self.trial_ids:
                    self.storage.record_heartbeat(trial_id)
            except Exception as error:
                logger.warning("could not record heartbeats: %s", database_reason(error))
                return
            if self._stop.wait(timeout=self.interval):
                return

    def __exit__(self, *exc_info: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()


class _Pruned(Exception):
    """Raised inside the evaluation when the pruner stops the trial (turned into optuna.TrialPruned)."""


def describe_trial(line: Mapping[str, Any], objective_names: list[str], units_shown: int = 6) -> str:
    """One human line per finished trial, for the live log."""
    values = ", ".join(f"{n}={line['values'][n]:.4f}" for n in objective_names if n in line["values"])
    betas = line["betas"]
    shown = ", ".join(f"{unit}={beta:.3f}" for unit, beta in list(betas.items())[:units_shown])
    more = f", ... (+{len(betas) - units_shown})" if len(betas) > units_shown else ""
    return f"trial {line['number']:>4} {line['state']:<8} {values or '-':<30} {line['seconds']:6.1f}s  {shown}{more}"
