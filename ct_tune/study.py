"""Study lifecycle: create, load, list, delete, summarise, export.

A ct-tune study is an ordinary Optuna study (readable by ``optuna trials`` and optuna-dashboard)
whose user attributes hold what every worker needs: the spec, the ordered unit names, the ReLU-site
fingerprint, the example input shape and the MLflow experiment and parent run. Creation is
all-or-nothing: any failure after the Optuna study exists deletes it again.
"""

from __future__ import annotations

import datetime as dt
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ct_tune._errors import InputError
from ct_tune._version import __version__
from ct_tune.profile import BetaProfile
from ct_tune.search_space import check_units, initial_trials, profile_from_params
from ct_tune.spec import StudySpec, spec_from_dict
from ct_tune.storage import open_optuna_storage, redact
from ct_tune.tracking import ATTR_RUN_ID, TAG_STATE, TAG_TRIAL, Tracker

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)

ATTR_SPEC = "ct_tune.spec"
ATTR_UNITS = "ct_tune.units"
ATTR_META = "ct_tune.meta"
ATTR_MLFLOW = "ct_tune.mlflow"
ATTR_KIND = "ct_tune.kind"  # trial: baseline | paper-grid | sampled | retry
ATTR_DISCARDED = "ct_tune.discarded"  # trial: created after the budget was reached by other workers


@dataclass
class StudyInfo:
    """An Optuna study together with the ct-tune settings stored in it."""

    study: optuna.Study
    spec: StudySpec
    units: list[str]
    meta: dict[str, Any]
    mlflow: dict[str, Any]
    storage_url: str
    storage: optuna.storages.BaseStorage
    study_id: int

    @property
    def name(self) -> str:
        return self.study.study_name

    @property
    def objective_names(self) -> list[str]:
        return self.spec.objective_names

    @property
    def multi_objective(self) -> bool:
        return len(self.spec.objectives) > 1

    def profile_of(self, trial: optuna.trial.FrozenTrial) -> tuple[dict[str, float], float]:
        return profile_from_params(trial.params, self.spec, self.units)


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def study_exists(storage: optuna.storages.BaseStorage, name: str) -> bool:
    return any(summary.study_name == name for summary in storage.get_all_studies())


def create_study(
    *,
    spec: StudySpec,
    name: str,
    storage_url: str,
    tracker: Tracker,
    units: Sequence[str],
    meta: dict[str, Any],
    resume_if_exists: bool = False,
) -> tuple[StudyInfo, bool]:
    """Create the Optuna study, its MLflow experiment and parent run, and enqueue the first trials.

    ``units`` and ``meta`` (fingerprint, input shape, data description) come from tracing the model
    once (``ct_tune.session``). Returns the study and whether it was newly created.
    """
    import optuna

    _quiet_optuna()
    check_units(spec, units)
    storage = open_optuna_storage(storage_url)
    if study_exists(storage, name):
        if not resume_if_exists:
            raise InputError(
                f"a study named {name!r} already exists in {redact(storage_url)}; choose another --name, "
                "pass --resume-if-exists, or delete it with 'ct-tune study delete'"
            )
        info = load_study(name=name, storage_url=storage_url)
        if info.spec.search != spec.search or info.spec.objectives != spec.objectives or info.units != list(units):
            raise InputError(
                f"study {name!r} exists with another search space or objectives; --resume-if-exists only "
                "resumes the same search (choose another --name)"
            )
        return info, False

    new_experiment = tracker.experiment_id(name, create=False) is None
    experiment_id = tracker.experiment_id(name, create=True)
    study = None
    mlflow_info: dict[str, Any] = {}
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=name,
            directions=spec.directions,
            sampler=optuna.samplers.RandomSampler(),  # samplers are not stored; each run builds its own
        )
        study.set_metric_names(spec.objective_names)
        mlflow_info.update(
            {
                "tracking_uri": redact(tracker.tracking_uri),  # never a password; workers pass their own
                "experiment_id": experiment_id,
                "artifact_location": tracker.artifact_location,
            }
        )
        parent_params = {
            "study": name,
            "granularity": spec.search.granularity,
            "n_units": len(units),
            "beta_range": f"[{spec.search.beta.low}, {spec.search.beta.high}]",
            "c": spec.search.c if not spec.search.searches_c else "searched",
            "objectives": ",".join(spec.objective_names),
            "directions": ",".join(spec.directions),
            "sampler": spec.sampler.name,
            "pruner": spec.pruner.name,
            "n_trials": spec.budget.n_trials,
            "model": spec.model.checkpoint or spec.model.name,
            "data": spec.data.name,
            "storage": redact(storage_url),
            "ct_tune_version": __version__,
        }
        mlflow_info["parent_run_id"] = tracker.create_study_run(experiment_id, name, parent_params, spec.to_dict())
        study.set_user_attr(ATTR_SPEC, spec.to_dict())
        study.set_user_attr(ATTR_UNITS, list(units))
        study.set_user_attr(ATTR_META, {**meta, "created": _now(), "ct_tune_version": __version__})
        study.set_user_attr(ATTR_MLFLOW, mlflow_info)
        for params, kind in initial_trials(spec, units):
            study.enqueue_trial(params, user_attrs={ATTR_KIND: kind}, skip_if_exists=True)
    except BaseException:
        # all or nothing: no orphan study, experiment or parent run
        if study is not None:
            optuna.delete_study(study_name=name, storage=storage)
        if new_experiment:
            tracker.delete_experiment(name)
        elif "parent_run_id" in mlflow_info:
            tracker.client.delete_run(mlflow_info["parent_run_id"])
        raise
    return load_study(name=name, storage_url=storage_url), True


def requeue_initial_trials(info: StudyInfo) -> int:
    """Enqueue again the baseline / paper-grid trials that ended FAIL (a crash, a Ctrl-C), so that the
    ReLU baseline is always part of the study. Returns how many were enqueued."""
    from optuna.trial import TrialState

    alive = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    present = [
        t.system_attrs.get("fixed_params", t.params) for t in info.study.get_trials(deepcopy=False, states=alive)
    ]
    added = 0
    for params, kind in initial_trials(info.spec, info.units):
        if not any(_same_params(params, other) for other in present):
            info.study.enqueue_trial(params, user_attrs={ATTR_KIND: kind})
            present.append(params)
            added += 1
    return added


def close_orphan_runs(info: StudyInfo, tracker: Tracker) -> int:
    """Close MLflow runs left RUNNING although their trial is not running any more (a worker died while
    its database was unreachable, so nobody could close the run). Returns how many were closed."""
    from optuna.trial import TrialState

    experiment = info.mlflow.get("experiment_id")
    if experiment is None:
        return 0
    runs = tracker.runs(experiment, filter_string=f"tags.`{TAG_STATE}` = 'RUNNING'")
    if not runs:
        return 0
    trials = {t.number: t for t in info.study.get_trials(deepcopy=False)}
    closed = 0
    for run in runs:
        trial = trials.get(int(run.data.tags.get(TAG_TRIAL, -1)))
        alive = trial is not None and trial.state == TrialState.RUNNING
        if not (alive and trial.user_attrs.get(ATTR_RUN_ID) == run.info.run_id):
            tracker.close_run(run.info.run_id, state="FAIL", reason="its worker stopped before closing it")
            closed += 1
    return closed


def _same_params(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(abs(float(a[k]) - float(b[k])) < 1e-12 for k in a)


def load_study(*, name: str, storage_url: str, storage: optuna.storages.BaseStorage | None = None) -> StudyInfo:
    import optuna

    _quiet_optuna()
    storage = storage or open_optuna_storage(storage_url)
    if not study_exists(storage, name):
        names = sorted(summary.study_name for summary in storage.get_all_studies())
        known = f"studies there: {', '.join(names)}" if names else "it holds no study"
        raise InputError(
            f"no study named {name!r} in {redact(storage_url)} ({known}); pass --storage URL or set CT_TUNE_STORAGE "
            "if it lives elsewhere"
        )
    study = optuna.load_study(study_name=name, storage=storage)
    attrs = study.user_attrs
    if ATTR_SPEC not in attrs:
        raise InputError(
            f"study {name!r} was not created by ct-tune (no spec stored); create it with 'ct-tune study create'"
        )
    spec = spec_from_dict(attrs[ATTR_SPEC], source=f"stored spec of study {name!r}")
    return StudyInfo(
        study,
        spec,
        list(attrs[ATTR_UNITS]),
        dict(attrs.get(ATTR_META, {})),
        dict(attrs[ATTR_MLFLOW]),
        storage_url,
        storage,
        storage.get_study_id_from_name(name),
    )


def delete_study(*, name: str, storage_url: str, tracker: Tracker | None) -> dict[str, Any]:
    import optuna

    info = load_study(name=name, storage_url=storage_url)
    n_trials = len(info.study.get_trials(deepcopy=False))
    optuna.delete_study(study_name=name, storage=info.storage)
    experiment = tracker.delete_experiment(name) if tracker is not None else None
    return {"study": name, "trials": n_trials, "mlflow_experiment_deleted": experiment}


def list_studies(*, storage_url: str) -> list[dict[str, Any]]:
    import optuna

    _quiet_optuna()
    storage = open_optuna_storage(storage_url)
    rows = []
    for summary in optuna.get_all_study_summaries(storage=storage, include_best_trial=False):
        attrs = summary.user_attrs
        spec = attrs.get(ATTR_SPEC, {})
        states = count_states(storage, storage.get_study_id_from_name(summary.study_name))
        rows.append(
            {
                "name": summary.study_name,
                "granularity": spec.get("search", {}).get("granularity"),
                "objectives": [o.get("name") for o in spec.get("objectives", [])],
                "directions": [d.name.lower() for d in summary.directions],
                "complete": states.get("COMPLETE", 0),
                "pruned": states.get("PRUNED", 0),
                "failed": states.get("FAIL", 0),
                "running": states.get("RUNNING", 0),
                "budget": spec.get("budget", {}).get("n_trials"),
                "created": attrs.get(ATTR_META, {}).get("created")
                or (summary.datetime_start.isoformat(timespec="seconds") if summary.datetime_start else None),
                "ct_tune": ATTR_SPEC in attrs,
            }
        )
    return rows


def count_states(storage: optuna.storages.BaseStorage, study_id: int) -> dict[str, int]:
    """Trials per state name, in one query on an RDB storage.

    ``get_n_trials`` loads every trial of a state (with its params) to count it: a cost that grows with
    the study and is paid several times per trial by the budget checks.
    """
    from optuna.storages import RDBStorage
    from optuna.trial import TrialState

    counts = dict.fromkeys((state.name for state in TrialState), 0)
    if isinstance(storage, RDBStorage):
        from sqlalchemy import text

        query = text("SELECT state, COUNT(*) FROM trials WHERE study_id = :study_id GROUP BY state")
        with storage.engine.connect() as connection:
            for state, count in connection.execute(query, {"study_id": study_id}):
                name = state.name if isinstance(state, TrialState) else str(state)
                counts[name] = int(count)
        return counts
    return {state.name: storage.get_n_trials(study_id, state) for state in TrialState}


def counts(info: StudyInfo) -> dict[str, int]:
    """Trials per state; trials discarded for the budget are counted apart from real failures."""
    states = count_states(info.storage, info.study_id)
    discarded = 0
    if states.get("FAIL"):
        from optuna.trial import TrialState

        discarded = sum(
            1
            for t in info.study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
            if ATTR_DISCARDED in t.user_attrs
        )
    states["FAIL"] -= discarded
    states["DISCARDED"] = discarded
    return states


def best_trials(info: StudyInfo) -> list[optuna.trial.FrozenTrial]:
    """The best trial, or the Pareto front (in trial order) for several objectives."""
    study = info.study
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return []
    if info.multi_objective:
        return sorted(study.best_trials, key=lambda t: t.number)
    return [study.best_trial]


def baseline_trial(info: StudyInfo) -> optuna.trial.FrozenTrial | None:
    from optuna.trial import TrialState

    for trial in info.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        betas, _ = info.profile_of(trial)
        if all(value == 1.0 for value in betas.values()):
            return trial
    return None


def trial_summary(info: StudyInfo, trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    betas, c = info.profile_of(trial)
    values = dict(zip(info.objective_names, trial.values or [], strict=False))
    return {
        "number": trial.number,
        "state": trial.state.name,
        "values": values,
        "betas": betas,
        "c": c,
        "kind": trial.user_attrs.get(ATTR_KIND, "sampled"),
        "mlflow_run_id": trial.user_attrs.get(ATTR_RUN_ID),
        "test": info.study.user_attrs.get("ct_tune.report", {}).get(str(trial.number), {}).get("test"),
        "seconds": trial.duration.total_seconds() if trial.duration else None,
    }


def status(info: StudyInfo) -> dict[str, Any]:
    states = counts(info)
    best = [trial_summary(info, trial) for trial in best_trials(info)]
    baseline = baseline_trial(info)
    return {
        "study": info.name,
        "storage": redact(info.storage_url),
        "granularity": info.spec.search.granularity,
        "units": len(info.units),
        "objectives": dict(zip(info.objective_names, info.spec.directions, strict=True)),
        "budget": info.spec.budget.n_trials,
        "trials": states,
        "best": best,
        "baseline": trial_summary(info, baseline) if baseline else None,
        "mlflow_experiment_id": info.mlflow.get("experiment_id"),
        "mlflow_parent_run_id": info.mlflow.get("parent_run_id"),
    }


def choose_trial(info: StudyInfo, number: int | None) -> optuna.trial.FrozenTrial:
    """The trial to export or report: the given number, else the single best one."""
    from optuna.trial import TrialState

    if number is not None:
        trials = info.study.get_trials(deepcopy=False)
        if not 0 <= number < len(trials) or trials[number].state != TrialState.COMPLETE:
            raise InputError(f"trial {number} of study {info.name!r} does not exist or is not COMPLETE")
        return trials[number]
    best = best_trials(info)
    if not best:
        raise InputError(f"study {info.name!r} has no completed trial yet; run it with 'ct-tune study run {info.name}'")
    if len(best) > 1:
        numbers = ", ".join(str(t.number) for t in best)
        raise InputError(
            f"study {info.name!r} has {len(best)} Pareto-optimal trials ({numbers}); choose one with --trial N"
        )
    return best[0]


def export_profile(info: StudyInfo, trial: optuna.trial.FrozenTrial) -> BetaProfile:
    betas, c = info.profile_of(trial)
    return BetaProfile(
        granularity=info.spec.search.granularity,
        betas=betas,
        c=c,
        fingerprint=info.meta.get("fingerprint"),
        input_shape=info.meta.get("input_shape"),
        model=info.meta.get("model_class"),
        metadata={
            "study": info.name,
            "trial": trial.number,
            "values": dict(zip(info.objective_names, trial.values, strict=True)),
            "model": info.spec.model.model_dump(exclude_none=True),
            "data": info.spec.data.model_dump(exclude_none=True),
        },
    )


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
