"""``Study``: a ct-tune study from Python, with the same power as ``ct-tune study ...``.

A ct-tune study is an ordinary Optuna study (readable by ``optuna trials`` and optuna-dashboard) whose user
attributes hold what every worker needs: the spec, the ordered unit names, what the study was created with
(the ReLU-site, weights and data fingerprints) and its MLflow experiment and parent run. Optuna's storage is
the truth of a study; MLflow follows it.

Creation is all-or-nothing: any failure after the Optuna study exists deletes it again, and the MLflow
experiment or parent run made for it.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ct_tune._errors import InputError
from ct_tune._names import check_name
from ct_tune._version import __version__
from ct_tune.search._constraints import stored_bounds
from ct_tune.search._record import unit_keys
from ct_tune.search._space import check_units, initial_trials, profile_from_params, profile_params
from ct_tune.search._spec import StudySpec, load_spec, spec_from_dict
from ct_tune.steering import BetaProfile, family_named
from ct_tune.stores import (
    check_reachable,
    check_two_databases,
    check_writable,
    count_states,
    open_optuna_storage,
    redact,
    resolve_storage,
    resolve_tracking_uri,
    running_ages,
    study_lock,
    without_password,
)
from ct_tune.tracking import Tracker, split_datasets
from ct_tune.tracking.keys import (
    ATTR_DISCARDED,
    ATTR_FEASIBLE,
    ATTR_KIND,
    ATTR_META,
    ATTR_MLFLOW,
    ATTR_REPORT,
    ATTR_RUN_ID,
    ATTR_SPEC,
    ATTR_UNITS,
)
from ct_tune.workers import RayOptions, SlurmOptions

if TYPE_CHECKING:
    from ct_tune.evidence import Reference
    from ct_tune.search._report import StudyReport
    from ct_tune.search._run import RunSummary

    import optuna

__all__ = [
    "Study",
    "StudyStatus",
    "TrialResult",
    "create_study",
    "delete_study",
    "list_studies",
    "load_study",
    "new_study",
    "open_study",
    "study_to_delete",
]

logger = logging.getLogger(__name__)

SpecLike = StudySpec | Mapping[str, Any] | str | os.PathLike[str]


@dataclass
class TrialResult:
    """One finished trial: its values (by objective name), betas, c, and the profile to export or apply."""

    number: int
    state: str
    values: dict[str, float]
    betas: dict[str, float]
    c: float
    profile: BetaProfile
    kind: str = "sampled"  # baseline, paper-grid, warm-start, sampled, retry
    mlflow_run_id: str | None = None
    test: dict[str, float] | None = None  # set once a report scored it on the test split
    seconds: float | None = None
    feasible: bool | None = None  # a constrained study's trial: whether every constraint held (else None)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("profile")
        return data


@dataclass
class StudyStatus:
    study: str
    storage: str  # redacted
    granularity: str
    units: int
    objectives: dict[str, str]  # name -> direction
    budget: int | None
    trials: dict[str, int]  # per state; trials discarded for the budget apart from real failures
    best: list[TrialResult] = field(default_factory=list)
    baseline: TrialResult | None = None
    baseline_label: str = "ReLU"  # "own activation" for a network with SiLU or GELU units
    mlflow_experiment_id: str | None = None
    mlflow_parent_run_id: str | None = None
    jobs: list[dict[str, Any]] = field(default_factory=list)  # the latest SLURM jobs, with their state now
    constraints: list[str] = field(default_factory=list)  # each bound with its baseline value, once known
    infeasible: str | None = None  # constrained, completed trials, none feasible: the line saying so

    def to_dict(self) -> dict[str, Any]:
        data = {key: value for key, value in self.__dict__.items() if key not in ("best", "baseline")}
        data["best"] = [trial.to_dict() for trial in self.best]
        data["baseline"] = self.baseline.to_dict() if self.baseline else None
        return data


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # its warnings (a query retried, ...) are not the user's news
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


NOT_COMPLETE = "is not a complete ct-tune study (a plain Optuna study, or a ct-tune create that did not finish)"
DELETE_IT = "delete it with 'ct-tune study delete {name}' (it asks first; --yes does not) and create it again"


def is_complete(attrs: Mapping[str, Any]) -> bool:
    """Whether a study's user attributes are those of a finished ``create``: its spec, units and MLflow record."""
    return all(key in attrs for key in (ATTR_SPEC, ATTR_UNITS, ATTR_MLFLOW))


def study_exists(name: str, *, storage: optuna.storages.BaseStorage) -> bool:
    """Whether the open Optuna ``storage`` holds a study of that name."""
    return any(summary.study_name == name for summary in storage.get_all_studies())


class Study:
    """An Optuna study with the ct-tune settings stored in it, and the MLflow experiment it logs to.

    Make one with :func:`create_study` or :func:`load_study`. ``optuna_study`` is the underlying
    ``optuna.Study`` and ``experiment_id`` the MLflow experiment, for anything Optuna or MLflow do directly.
    """

    def __init__(
        self,
        *,
        optuna_study: optuna.Study,
        storage_url: str,
        storage: optuna.storages.BaseStorage,
        tracking_uri: str | None = None,
        tracker: Tracker | None = None,
    ) -> None:
        attrs = optuna_study.user_attrs
        name = optuna_study.study_name
        if not is_complete(attrs):
            raise InputError(f"study {name!r} {NOT_COMPLETE}; {DELETE_IT.format(name=name)}")
        self.optuna_study = optuna_study
        self.spec: StudySpec = spec_from_dict(attrs[ATTR_SPEC], source=f"stored spec of study {name!r}")
        self.units: list[str] = list(attrs[ATTR_UNITS])
        self.meta: dict[str, Any] = dict(attrs.get(ATTR_META, {}))
        # unit -> activation family where any is not ReLU (absent: every unit is ReLU)
        self.families: dict[str, str] = dict(self.meta.get("families") or {})
        self.mlflow: dict[str, Any] = dict(attrs[ATTR_MLFLOW])
        self.storage_url = storage_url  # may hold a password: shown only through redact()
        self.storage = storage
        self.study_id: int = storage.get_study_id_from_name(name)
        self._tracking_uri = tracker.tracking_uri if tracker is not None else tracking_uri
        self._tracker = tracker
        self.resumed = False  # create_study(resume_if_exists=True) found it already there

    # ----------------------------------------------------------------------------------------------
    # What it is
    @property
    def name(self) -> str:
        return self.optuna_study.study_name

    @property
    def experiment_id(self) -> str:
        return self.mlflow["experiment_id"]

    @property
    def parent_run_id(self) -> str:
        return self.mlflow["parent_run_id"]

    @property
    def objective_names(self) -> list[str]:
        return self.spec.objective_names

    @property
    def directions(self) -> list[str]:
        return self.spec.directions

    @property
    def multi_objective(self) -> bool:
        return len(self.spec.objective_names) > 1

    @property
    def tracking_uri(self) -> str:
        """The MLflow store: as given, else ``$MLFLOW_TRACKING_URI``, else the one recorded at creation."""
        if self._tracking_uri is None:
            self.use_tracking_uri(None)
        assert self._tracking_uri is not None
        return self._tracking_uri

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            self._tracker = Tracker(self.tracking_uri, artifact_location=self.mlflow.get("artifact_location"))
        return self._tracker

    def __repr__(self) -> str:
        return (
            f"Study({self.name!r}, {len(self.units)} {self.spec.search.granularity} units, "
            f"objectives={self.objective_names}, storage={redact(self.storage_url)!r})"
        )

    def use_tracking_uri(self, tracking_uri: str | None, spec: str | None = None) -> None:
        """Log to the MLflow store the rule of ``resolve_tracking_uri`` picks: ``tracking_uri``, the
        environment, ``spec`` (a spec file's), then the one recorded at creation (without its password)."""
        self._tracking_uri = resolve_tracking_uri(tracking_uri, spec, recorded=self.mlflow.get("tracking_uri"))
        self._tracker = None

    def reopened(self, **storage_settings: Any) -> Study:
        """The same study on a storage opened with other settings (a worker's heartbeats).

        The first storage's idle connections are closed: a worker goes on with the new one, so it holds one
        Optuna connection, not two (a later use of the first storage connects again)."""
        import optuna

        storage = open_optuna_storage(self.storage_url, **storage_settings)
        engine = getattr(self.storage, "engine", None)
        if engine is not None:
            engine.dispose()
        return Study(
            optuna_study=optuna.load_study(study_name=self.name, storage=storage),
            storage_url=self.storage_url,
            storage=storage,
            tracking_uri=self._tracking_uri,
            tracker=self._tracker,
        )

    # ----------------------------------------------------------------------------------------------
    # Trials
    @property
    def families_used(self) -> list[str]:
        """The activation families of the study's units, each once (``["relu"]`` for a ReLU network)."""
        return list(dict.fromkeys(self.families.get(unit, "relu") for unit in self.units))

    @property
    def baselines(self) -> dict[str, float]:
        """Each SiLU or GELU unit's beta0, where the network is its own activation (empty for ReLU networks)."""
        return {unit: beta for unit, beta in self.baseline_betas.items() if beta < 1.0}

    @property
    def baseline_betas(self) -> dict[str, float]:
        """Every unit at its own activation: beta = 1 for ReLU units, beta0 for SiLU and GELU ones."""
        return {unit: family_named(self.families.get(unit, "relu")).baseline for unit in self.units}

    @property
    def baseline_label(self) -> str:
        """What the enqueued baseline is called: "ReLU" for a ReLU network, else "own activation"."""
        return "ReLU" if self.families_used == ["relu"] else "own activation"

    def profile_of(self, trial: optuna.trial.FrozenTrial) -> tuple[dict[str, float], float | None]:
        """(betas per unit, c) of an Optuna trial of this study (c None: each unit's family's)."""
        return profile_from_params(trial.params, self.spec, self.units, self.families)

    def result_of(self, trial: optuna.trial.FrozenTrial) -> TrialResult:
        betas, c = self.profile_of(trial)
        values = dict(zip(self.objective_names, trial.values or [], strict=False))
        reported = self.optuna_study.user_attrs.get(ATTR_REPORT, {}).get(str(trial.number), {})
        profile = BetaProfile(
            granularity=self.spec.search.granularity,
            groups=self.spec.search.groups,
            betas=betas,
            c=c,
            fingerprint=self.meta.get("fingerprint"),
            input_shape=self.meta.get("input_shape"),
            model=self.meta.get("model_class"),
            families=self.families or None,
            metadata={
                "study": self.name,
                "trial": trial.number,
                "values": values,
                "model": self.spec.model.model_dump(exclude_none=True),
                "data": self.spec.data.model_dump(exclude_none=True),
            },
        )
        return TrialResult(
            number=trial.number,
            state=trial.state.name,
            values=values,
            betas=betas,
            c=c,
            profile=profile,
            kind=str(trial.user_attrs.get(ATTR_KIND, "sampled")),
            mlflow_run_id=trial.user_attrs.get(ATTR_RUN_ID),
            test=reported.get("test"),
            seconds=trial.duration.total_seconds() if trial.duration else None,
            feasible=trial.user_attrs.get(ATTR_FEASIBLE),
        )

    def trial(self, number: int) -> TrialResult:
        """A COMPLETE trial by number (one line naming the problem otherwise)."""
        from optuna.trial import TrialState

        trials = self.optuna_study.get_trials(deepcopy=False)
        if not 0 <= number < len(trials) or trials[number].state != TrialState.COMPLETE:
            raise InputError(f"trial {number} of study {self.name!r} does not exist or is not COMPLETE")
        return self.result_of(trials[number])

    def trials(self) -> list[TrialResult]:
        """Every COMPLETE trial, in trial order."""
        from optuna.trial import TrialState

        return [self.result_of(t) for t in self.optuna_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]

    def best(self) -> list[TrialResult]:
        """The best trial for one objective, the Pareto front (in trial order) for several; empty before any
        trial has completed. With constraints, of the feasible trials only (Optuna's ``best_trial`` and
        ``best_trials`` read the violations the loop set); empty when none is feasible (``infeasible_note``)."""
        from optuna.trial import TrialState

        study = self.optuna_study
        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            return []
        if self.multi_objective:
            return [self.result_of(t) for t in sorted(study.best_trials, key=lambda t: t.number)]
        try:
            return [self.result_of(study.best_trial)]
        except ValueError:  # "No feasible trials are completed yet."
            return []

    def infeasible_note(self) -> str | None:
        """With constraints and completed trials but none feasible: one line saying so, and what to change."""
        from optuna.trial import TrialState

        if not self.spec.constraints or self.best():
            return None
        completed = len(self.optuna_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        if not completed:
            return None
        bounds = stored_bounds(self.spec, self.optuna_study)
        held = "; ".join(b.describe() for b in bounds) if bounds else "the constraints"
        return (
            f"study {self.name!r}: none of its {completed} completed trials is feasible ({held}); raise "
            "constraints max_drop, or search nearer beta = 1"
        )

    def baseline(self) -> TrialResult | None:
        """The network's own activation (ReLU: beta = 1 everywhere; SiLU, GELU: beta0 with c = 1), once it
        has completed."""
        from optuna.trial import TrialState

        own = self.baseline_betas
        gated = any(beta < 1.0 for beta in own.values())
        for trial in self.optuna_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            betas, c = self.profile_of(trial)
            if betas == own and (not gated or c in (None, 1.0)):
                return self.result_of(trial)
        return None

    def chosen(self, number: int | None = None) -> TrialResult:
        """The trial to export: the given number, else the single best one."""
        if number is not None:
            return self.trial(number)
        best = self.best()
        note = self.infeasible_note()
        if note is not None:
            raise InputError(note)
        if not best:
            raise InputError(
                f"study {self.name!r} has no completed trial yet; run it with 'ct-tune study run {self.name}'"
            )
        if len(best) > 1:
            numbers = ", ".join(str(t.number) for t in best)
            raise InputError(
                f"study {self.name!r} has {len(best)} Pareto-optimal trials ({numbers}); choose one with --trial N"
            )
        return best[0]

    def counts(self) -> dict[str, int]:
        """Trials per state; trials discarded for the budget are counted apart from real failures."""
        states = count_states(self.storage, self.study_id)
        discarded = 0
        if states.get("FAIL"):
            from optuna.trial import TrialState

            discarded = sum(
                1
                for t in self.optuna_study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                if ATTR_DISCARDED in t.user_attrs
            )
        states["FAIL"] -= discarded
        states["DISCARDED"] = discarded
        return states

    def status(self) -> StudyStatus:
        from ct_tune.search._remote import recorded_jobs

        return StudyStatus(
            study=self.name,
            storage=redact(self.storage_url),
            granularity=self.spec.search.granularity,
            units=len(self.units),
            objectives=dict(zip(self.objective_names, self.directions, strict=True)),
            budget=self.spec.budget.n_trials,
            trials=self.counts(),
            best=self.best(),
            baseline=self.baseline(),
            baseline_label=self.baseline_label,
            mlflow_experiment_id=self.mlflow.get("experiment_id"),
            mlflow_parent_run_id=self.mlflow.get("parent_run_id"),
            jobs=recorded_jobs(self),
            constraints=[bound.describe() for bound in stored_bounds(self.spec, self.optuna_study) or []],
            infeasible=self.infeasible_note(),
        )

    # ----------------------------------------------------------------------------------------------
    # Doing things
    def run(
        self,
        *,
        n_trials: int | None = None,
        timeout: float | None = None,
        workers: int | None = None,
        devices: str | None = None,
        progress: bool = True,
        heartbeat: int = 10,
        grace: int | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        oversubscribe: bool = False,
        executor: str = "local",
        slurm: SlurmOptions | Mapping[str, Any] | None = None,
        ray: RayOptions | Mapping[str, Any] | None = None,
        wait: bool = False,
    ) -> RunSummary:
        """Run trials until the budget is used: the spec's total, or ``n_trials`` more in this call.

        Args:
            n_trials: finished trials to add in this call (default: until the spec's ``budget.n_trials``).
            timeout: seconds after which no trial starts (default: the spec's ``budget.timeout``).
            workers: local worker processes (default one per GPU of ``devices``, else 1); one runs in this
                process, several are child processes. With ``executor="ray"`` it caps the actors.
            devices: ``auto``, ``cpu`` or ``cuda:0,cuda:1`` (default: the spec's ``run.device``).
            progress: a progress bar on a terminal (plain lines otherwise).
            heartbeat: seconds between a running trial's heartbeats.
            grace: seconds without a heartbeat before another worker fails the trial and enqueues its retry
                (default: max(60, 3 x heartbeat)).
            log_dir: where worker processes log (default ``logs/<study>``).
            oversubscribe: allow more CPU workers than cores (refused otherwise: they slow each other down).
            executor: ``local`` processes, ``slurm`` (a job array through submitit) or ``ray`` (actors).
            slurm: the job array's shape, ``SlurmOptions`` or a mapping of its fields.
            ray: the Ray cluster and actors, ``RayOptions`` or a mapping of its fields (default: a Ray
                instance on this machine).
            wait: with ``executor="slurm"``, follow the jobs until they end (else return once submitted).

        Returns what this launch did (``RunSummary``). Ctrl-C fails the running trials and raises
        ``KeyboardInterrupt``; calling ``run`` again resumes.
        """
        self.tracker  # noqa: B018  the MLflow store answers (seconds) before torch, model and data load
        from ct_tune.search._run import RunOptions, run_study

        options = RunOptions(
            workers=workers,
            devices=devices,
            n_trials=n_trials,
            timeout=timeout,
            heartbeat=heartbeat,
            grace=grace,
            log_dir=None if log_dir is None else str(log_dir),
            progress=progress,
            oversubscribe=oversubscribe,
            executor=executor,
            slurm=_options(SlurmOptions, slurm, "slurm"),
            ray=_options(RayOptions, ray, "ray"),
            wait=wait,
        )
        return run_study(self, options)

    def enqueue(self, betas: Mapping[str, float], *, c: float | None = 0.5, kind: str = "warm-start") -> None:
        """Enqueue a profile as a coming trial (``kind`` labels it in MLflow): each beta clipped into its unit's
        range, units it leaves out at 1 (ReLU), ``c`` where the study searches it."""
        params = profile_params(self.spec, betas, c, self.families)
        self.optuna_study.enqueue_trial(params, user_attrs={ATTR_KIND: kind})

    def export(self, path: str | os.PathLike[str] | None = None, *, trial: int | None = None) -> BetaProfile:
        """The beta profile of the best trial (or ``trial``), written to ``path`` when one is given."""
        profile = self.chosen(trial).profile
        if path is not None:
            profile.save(path)
        return profile

    def report(
        self,
        *,
        trials: Sequence[int] | None = None,
        device: str | None = None,
        best_global: Reference | None = None,
        relu: Reference | None = None,
        reselect: int | None = None,
    ) -> StudyReport:
        """Score the best trial(s), the ReLU baseline and the best global profile once on the test split: the
        only reader of the test split. Each value comes with a 95% bootstrap interval, each profile with
        paired comparisons against the baseline and the best global profile.

        Args:
            trials: the trial numbers to report (default: the best trial, or the Pareto front).
            device: where to score (default: the spec's ``run.device``).
            best_global: the profile ``vs_global`` compares with (default: this study's best trial with one
                beta for every unit; a pipeline passes its global stage's best).
            relu: the ReLU baseline of a study without one (a pipeline passes its first stage's).
            reselect: K; report, of the K best trials by val, the one that ranks best on average over
                bootstrap resamples of val (a best val value that was luck does not hold up).

        Results go to the study (``TrialResult.test``), to MLflow (``test.*`` metrics, ``report.json``) and
        to the returned ``StudyReport``."""
        self.tracker  # noqa: B018  the MLflow store answers (seconds) before torch, model and data load
        from ct_tune.search._report import report_study

        return report_study(
            self, trial_numbers=trials, device=device, best_global=best_global, relu=relu, reselect=reselect
        )

    def delete(self, *, force: bool = False) -> dict[str, Any]:
        """Delete the Optuna study and archive its MLflow experiment (restorable from the MLflow UI).

        Refused while a launch runs the study (RUNNING trials with a heartbeat in the last ``LIVE_SECONDS``)
        unless ``force``: then the launch's workers find the study gone and stop (``StudyDeleted``, exit 4).
        Every MLflow run of the study still RUNNING (its trials', its parent's) is ended KILLED first: an
        archived experiment keeps no RUNNING run."""
        import optuna

        live = self.live_trials()
        if live and not force:
            ages = sorted(live.values())
            raise InputError(
                f"study {self.name!r} is running: {len(live)} RUNNING trial(s), the freshest heartbeat "
                f"{ages[0]:.0f} s ago; stop its launch first (Ctrl-C), or pass --force (force=True) to delete it "
                "anyway (the launch then stops)"
            )
        tracker = self.tracker  # reachable first: never an Optuna study deleted and its experiment left
        n_trials = len(self.optuna_study.get_trials(deepcopy=False))
        killed = _kill_running_runs(tracker, self.experiment_id)
        optuna.delete_study(study_name=self.name, storage=self.storage)
        killed |= _kill_running_runs(tracker, self.experiment_id)  # one a worker opened meanwhile
        experiment = tracker.delete_experiment(self.name)
        return {
            "study": self.name,
            "complete": True,
            "trials": n_trials,
            "live_trials": len(live),
            "mlflow_runs_killed": len(killed),
            "mlflow_experiment_deleted": experiment,
        }

    def live_trials(self) -> dict[int, float]:
        """Trial number -> seconds since its last heartbeat, of the RUNNING trials a launch runs now."""
        ages = running_ages(self.storage, self.study_id)
        return {number: age for number, age in ages.items() if age <= LIVE_SECONDS}


LIVE_SECONDS = 120  # a heartbeat (every 10 s by default, --heartbeat) this recent: a launch runs the trial


def _kill_running_runs(tracker: Tracker, experiment_id: str) -> set[str]:
    """End every RUNNING MLflow run of the experiment KILLED; their ids."""
    runs = tracker.client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=5000)
    for run in runs:
        tracker.set_status(run.info.run_id, "KILLED")
    return {run.info.run_id for run in runs}


def _options(kind: type, given: Any, name: str) -> Any:
    """An executor's options from their dataclass or a mapping of its fields (one line for a wrong field)."""
    if given is None or isinstance(given, kind):
        return given
    if not isinstance(given, Mapping):
        raise InputError(f"{name}: give {kind.__name__}(...) or a mapping of its fields, not {type(given).__name__}")
    unknown = sorted(set(given) - set(kind.__dataclass_fields__))
    if unknown:
        known = ", ".join(kind.__dataclass_fields__)
        raise InputError(f"{name}: unknown option(s) {', '.join(unknown)}; the options are {known}")
    return kind(**given)


# --------------------------------------------------------------------------------------------------
# Module-level entry points
def _as_spec(spec: SpecLike) -> tuple[StudySpec, str | None]:
    """(spec, default name): a spec object, a mapping, or a YAML file (its stem is the default name)."""
    if isinstance(spec, StudySpec):
        return spec, spec.name
    if isinstance(spec, Mapping):
        parsed = spec_from_dict(dict(spec), source="spec")
        return parsed, parsed.name
    if isinstance(spec, (str, os.PathLike)):
        parsed = load_spec(spec)
        return parsed, parsed.name or Path(spec).stem
    raise InputError(f"a study spec is a YAML file, a mapping or a StudySpec; got {type(spec).__name__}")


def create_study(
    spec: SpecLike,
    *,
    name: str | None = None,
    storage: str | None = None,
    tracking_uri: str | None = None,
    resume_if_exists: bool = False,
) -> Study:
    """Validate ``spec``, load its model and data once, and create the study, its MLflow experiment and
    parent run; the ReLU baseline (and the paper's grid, if asked) are enqueued as the first trials.

    Args:
        spec: a YAML file (its stem is the default name), a mapping of its sections, or a ``StudySpec``.
        name: the study's name (default: the spec's ``name``, else the file's stem).
        storage: the Optuna storage URL; default ``$CT_TUNE_STORAGE``, then the spec's ``storage``, then
            ``sqlite:///studies/optuna.db``.
        tracking_uri: the MLflow store; default ``$MLFLOW_TRACKING_URI``, then the spec's, then
            ``sqlite:///mlruns/mlflow.db``. It must be another database than the storage.
        resume_if_exists: return the existing study of that name instead of refusing it (it must search
            the same space with the same objectives).

    Nothing is written before both stores answer and the model and data load: a wrong host, password,
    checkpoint or dataset leaves both stores as they were, and any later failure removes what was made.
    """
    from ct_tune.bench import Bench

    parsed, default_name = _as_spec(spec)
    if name is None and not default_name:
        raise InputError("the study needs a name: pass name=... (or --name), or set name: in the spec")
    if name is None:
        name = check_name(default_name, what="the study name from the spec", fix="set name: in the spec or pass --name")
    else:
        name = check_name(name, what="--name (name=...)", fix="pick another name")
    storage_url = resolve_storage(storage, parsed.storage)
    tracking = resolve_tracking_uri(tracking_uri, parsed.tracking_uri)
    check_two_databases(storage_url, tracking)
    # Both stores answer (seconds), then the model and data load: only then is anything created, so a
    # wrong host, password, checkpoint or dataset leaves both stores as they were.
    check_reachable(storage_url, what="Optuna storage")
    check_reachable(tracking, what="MLflow tracking store")
    with Bench.open(parsed, **parsed.grouping, device="cpu", steer=False) as bench:
        units, meta = bench.units, bench.meta()
    check_units(parsed, units, meta.get("families"))  # before the stores are opened: opening SQLite writes it
    optuna_storage = open_optuna_storage(storage_url)
    tracker = Tracker(tracking, artifact_location=parsed.artifact_location)
    check_writable(storage_url, what="Optuna storage")  # both opened (read): before anything is written
    check_writable(tracking, what="MLflow tracking store")
    try:
        return new_study(
            parsed,
            name=name,
            storage_url=storage_url,
            storage=optuna_storage,
            tracker=tracker,
            units=units,
            meta=meta,
            resume_if_exists=resume_if_exists,
        )
    except KeyboardInterrupt:  # new_study removed what it had made: all or nothing
        raise KeyboardInterrupt(f"study create interrupted (Ctrl-C): study {name!r} was not created") from None


def new_study(
    spec: StudySpec,
    *,
    name: str,
    storage_url: str,
    storage: optuna.storages.BaseStorage,
    tracker: Tracker,
    units: Sequence[str],
    meta: dict[str, Any],
    resume_if_exists: bool = False,
) -> Study:
    """Create the study in an open storage from what a bench found (``units``, ``meta``): all or nothing.

    What ``create_study`` does once the model and data are loaded; a pipeline, which opens the bench
    itself to map earlier profiles onto the new units, calls it directly."""
    _quiet_optuna()
    check_units(spec, units, meta.get("families"))
    # The exists-check and the creation are one step for every process on every machine: a second create of
    # the name waits, then finds the study made (and never touches the experiment this one made).
    with study_lock(storage_url, name):
        if study_exists(name, storage=storage):
            return _resumed(spec, name, storage_url, storage, tracker, units, resume_if_exists=resume_if_exists)
        _make_study(spec, name=name, storage_url=storage_url, storage=storage, tracker=tracker, units=units, meta=meta)
    return open_study(name, storage_url=storage_url, storage=storage, tracker=tracker)


def _make_study(
    spec: StudySpec,
    *,
    name: str,
    storage_url: str,
    storage: optuna.storages.BaseStorage,
    tracker: Tracker,
    units: Sequence[str],
    meta: dict[str, Any],
) -> None:
    """The Optuna study, its experiment (unless one of that name exists) and parent run, its attributes and
    first trials: all or nothing. Called under the study's lock, after the name was found free."""
    import optuna

    renamed = unit_keys(units)
    new_experiment = tracker.experiment_id(name, create=False) is None  # only one made here is deleted again
    experiment_id = tracker.experiment_id(name, create=True)
    study = None
    parent_run_id = None
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=name,
            directions=spec.directions,
            sampler=optuna.samplers.RandomSampler(),  # samplers are not stored; each worker builds its own
        )
        study.set_metric_names(spec.objective_names)
        params = _parent_params(spec, name, units, storage_url, meta.get("families") or {})
        val = split_datasets(meta.get("data") or {}, ["val"])
        parent_run_id = tracker.create_study_run(experiment_id, name, params, spec.to_dict(), datasets=val)
        if renamed:  # the MLflow key of each unit whose name MLflow cannot take as it is
            tracker.client.log_dict(parent_run_id, renamed, "unit_keys.json")
        mlflow_info = {
            "tracking_uri": without_password(tracker.tracking_uri),  # workers get the real one on stdin
            "experiment_id": experiment_id,
            "artifact_location": tracker.artifact_location,
            "parent_run_id": parent_run_id,
        }
        study.set_user_attr(ATTR_SPEC, spec.to_dict())
        study.set_user_attr(ATTR_UNITS, list(units))
        study.set_user_attr(ATTR_META, {**meta, "created": _now(), "ct_tune_version": __version__})
        study.set_user_attr(ATTR_MLFLOW, mlflow_info)
        for params, kind in initial_trials(spec, units, meta.get("families")):
            study.enqueue_trial(params, user_attrs={ATTR_KIND: kind}, skip_if_exists=True)
    except BaseException:
        # all or nothing: no orphan study, experiment or parent run (a Ctrl-C inside Optuna's create_study
        # can leave the study it was making: it did not exist before this call)
        if study is not None or study_exists(name, storage=storage):
            optuna.delete_study(study_name=name, storage=storage)
        if new_experiment:
            tracker.delete_experiment(name)
        elif parent_run_id is not None:
            tracker.client.delete_run(parent_run_id)
        raise


def _resumed(
    spec: StudySpec,
    name: str,
    storage_url: str,
    storage: optuna.storages.BaseStorage,
    tracker: Tracker,
    units: Sequence[str],
    *,
    resume_if_exists: bool,
) -> Study:
    """The existing study of that name, if asked for and it searches the same space (else one line)."""
    if not is_complete(storage.get_study_user_attrs(storage.get_study_id_from_name(name))):
        raise InputError(
            f"a study named {name!r} exists in {redact(storage_url)} but {NOT_COMPLETE}; choose another --name, "
            f"or {DELETE_IT.format(name=name)}"
        )
    if not resume_if_exists:
        raise InputError(
            f"a study named {name!r} already exists in {redact(storage_url)}; choose another --name, "
            f"pass --resume-if-exists, or delete it with 'ct-tune study delete {name}'"
        )
    existing = open_study(name, storage_url=storage_url, storage=storage, tracker=tracker)
    if (
        existing.spec.search != spec.search
        or existing.spec.objectives != spec.objectives
        or existing.units != list(units)
    ):
        raise InputError(
            f"study {name!r} exists with another search space or objectives; --resume-if-exists only "
            "resumes the same search (choose another --name)"
        )
    existing.resumed = True
    return existing


def _fixed_c(spec: StudySpec, units: Sequence[str], families: Mapping[str, str]) -> float | str:
    c = spec.search.fixed_c([families.get(unit, "relu") for unit in units])
    return "each family's own" if c is None else c


def _family_params(spec: StudySpec, units: Sequence[str], families: Mapping[str, str]) -> dict[str, Any]:
    """For a network with SiLU or GELU units: its families, their beta0 (the baseline) and beta ranges."""
    used = sorted({families.get(unit, "relu") for unit in units})
    if used == ["relu"]:
        return {}
    ranges = {f: spec.search.range_of("", f) for f in used if f != "relu"}
    return {
        "activations": ",".join(used),
        "baseline": "own activation",
        **{f"beta0.{f}": family_named(f).baseline for f in ranges},
        **{f"beta_range.{f}": f"[{r.low}, {r.high}]" for f, r in ranges.items()},
    }


def _parent_params(
    spec: StudySpec, name: str, units: Sequence[str], storage_url: str, families: Mapping[str, str]
) -> dict[str, Any]:
    """What the study's parent run shows as params: the search at a glance."""
    return {
        "study": name,
        "granularity": spec.search.granularity,
        "n_units": len(units),
        "beta_range": f"[{spec.search.beta.low}, {spec.search.beta.high}]",
        "c": "searched" if spec.search.searches_c else _fixed_c(spec, units, families),
        **_family_params(spec, units, families),
        "objectives": ",".join(spec.objective_names),
        "directions": ",".join(spec.directions),
        "sampler": spec.sampler.name,
        "pruner": spec.pruner.name,
        "n_trials": spec.budget.n_trials,
        "model": spec.model.label,
        "data": spec.data.label,
        "storage": without_password(storage_url),
        "ct_tune_version": __version__,
    }


def open_study(
    name: str,
    *,
    storage_url: str,
    storage: optuna.storages.BaseStorage,
    tracker: Tracker | None = None,
    tracking_uri: str | None = None,
) -> Study:
    """A study of an open storage (one line naming the studies there when it is missing)."""
    import optuna

    _quiet_optuna()
    if not study_exists(name, storage=storage):
        names = sorted(summary.study_name for summary in storage.get_all_studies())
        known = f"studies there: {', '.join(names)}" if names else "it holds no study"
        raise InputError(
            f"no study named {name!r} in {redact(storage_url)} ({known}); pass --storage URL or set CT_TUNE_STORAGE "
            "if it lives elsewhere"
        )
    study = optuna.load_study(study_name=name, storage=storage)
    return Study(
        optuna_study=study, storage_url=storage_url, storage=storage, tracking_uri=tracking_uri, tracker=tracker
    )


def _name_and_stores(name: str | os.PathLike[str], storage: str | None) -> tuple[str, str, str | None]:
    """A study given by name, or by the spec file it was created from: its name, storage, and the spec's
    tracking URI (None for a name)."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        spec = load_spec(path)
        return spec.name or path.stem, resolve_storage(storage, spec.storage), spec.tracking_uri
    return str(name), resolve_storage(storage), None


def load_study(name: str | os.PathLike[str], *, storage: str | None = None, tracking_uri: str | None = None) -> Study:
    """An existing study, by name (or the spec file it was created from).

    Args:
        name: the study's name, or the path of the YAML spec it was created from (which names the stores).
        storage: the Optuna storage URL; default ``$CT_TUNE_STORAGE``, then the spec file's, then
            ``sqlite:///studies/optuna.db``.
        tracking_uri: the MLflow store; default ``$MLFLOW_TRACKING_URI``, then the spec file's, then the store
            the study was created with (recorded without its password: ``~/.pgpass`` or ``PGPASSWORD`` give it).
    """
    study_name, storage_url, spec_tracking_uri = _name_and_stores(name, storage)
    study = open_study(study_name, storage_url=storage_url, storage=open_optuna_storage(storage_url))
    study.use_tracking_uri(tracking_uri, spec_tracking_uri)
    return study


def study_to_delete(name: str | os.PathLike[str], *, storage: str | None = None) -> dict[str, Any]:
    """What ``delete_study`` would delete, to confirm it first: the study's name, whether it is a complete
    ct-tune study, and its trials (one line when there is no such study)."""
    study_name, storage_url, _ = _name_and_stores(name, storage)
    optuna_storage = open_optuna_storage(storage_url)
    _quiet_optuna()
    if not study_exists(study_name, storage=optuna_storage):
        open_study(study_name, storage_url=storage_url, storage=optuna_storage)  # its one line, naming the others
    study_id = optuna_storage.get_study_id_from_name(study_name)
    return {
        "study": study_name,
        "complete": is_complete(optuna_storage.get_study_user_attrs(study_id)),
        "trials": sum(count_states(optuna_storage, study_id).values()),
    }


def delete_study(
    name: str | os.PathLike[str], *, storage: str | None = None, tracking_uri: str | None = None, force: bool = False
) -> dict[str, Any]:
    """Delete a study and archive its MLflow experiment; what was deleted.

    A study that is not a complete ct-tune study (a plain Optuna study of that name, or a create that did not
    finish) is deleted too, and the experiment it recorded, if any, archived: the way out that ``create``
    points at (``complete`` is False in what is returned). A study a launch runs now is refused unless
    ``force`` (see ``Study.delete``)."""
    study_name, storage_url, spec_tracking_uri = _name_and_stores(name, storage)
    optuna_storage = open_optuna_storage(storage_url)
    _quiet_optuna()
    if study_exists(study_name, storage=optuna_storage):
        attrs = optuna_storage.get_study_user_attrs(optuna_storage.get_study_id_from_name(study_name))
        if not is_complete(attrs):
            recorded = attrs.get(ATTR_MLFLOW, {}).get("tracking_uri")
            tracking = resolve_tracking_uri(tracking_uri, spec_tracking_uri, recorded=recorded) if recorded else None
            return _delete_incomplete(study_name, optuna_storage, tracking)
    study = open_study(study_name, storage_url=storage_url, storage=optuna_storage)
    study.use_tracking_uri(tracking_uri, spec_tracking_uri)
    return study.delete(force=force)


def _delete_incomplete(name: str, storage: optuna.storages.BaseStorage, tracking: str | None) -> dict[str, Any]:
    """Delete a study that is no complete ct-tune study, and archive the experiment it recorded (if any)."""
    import optuna

    tracker = Tracker(tracking) if tracking is not None else None  # reachable first, as for any delete
    n_trials = sum(count_states(storage, storage.get_study_id_from_name(name)).values())
    optuna.delete_study(study_name=name, storage=storage)
    experiment = tracker.delete_experiment(name) if tracker is not None else None
    return {"study": name, "complete": False, "trials": n_trials, "mlflow_experiment_deleted": experiment}


def list_studies(*, storage: str | None = None) -> list[dict[str, Any]]:
    """One row per study in the storage: granularity, objectives, trial counts, budget, creation time."""
    import optuna

    _quiet_optuna()
    storage_url = resolve_storage(storage)
    optuna_storage = open_optuna_storage(storage_url)
    rows = []
    for summary in optuna.get_all_study_summaries(storage=optuna_storage, include_best_trial=False):
        attrs = summary.user_attrs
        spec = attrs.get(ATTR_SPEC, {})
        states = count_states(optuna_storage, optuna_storage.get_study_id_from_name(summary.study_name))
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


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
