"""Running a pipeline: its stages in order (each a study), then the test-split report of the chosen stages.

With ``seeds`` the pipeline runs once per seed and reports over the seeds (``_replicates``).
A stage whose study exists resumes (one that has used its budget is skipped); a new stage is created,
warm-started from an earlier stage's best profile when it says so (or from a trained stage's profile:
a ``kind: train`` stage runs ``train_ct``, writes its profile to the profile folder and is skipped when
that profile exists with the same settings), and linked to the stage before it
(the study's ``ct_tune.pipeline`` attribute, the parent runs' ``ct_tune.pipeline`` / ``ct_tune.stage`` /
``ct_tune.previous_stage_run`` tags). Nothing is created before every stage's spec and the worker
options are known to be valid.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from ct_tune._errors import InputError
from ct_tune.bench import Bench
from ct_tune.pipelines._replicates import ReplicateResult, run_replicates
from ct_tune.pipelines._report import report_pipeline
from ct_tune.pipelines._result import PipelineResult, StageOutcome
from ct_tune.pipelines._spec import (
    PipelineSpec,
    StageSpec,
    load_pipeline,
    pipeline_data,
    pipeline_from_dict,
    stage_spec,
    train_stage_spec,
    with_trials,
)
from ct_tune.pipelines._warm import WarmStartProfiles, warm_start_profiles, warm_start_ranges
from ct_tune.search import RunOptions, Study, StudySpec, new_study, open_study, study_exists
from ct_tune.steering import BetaProfile
from ct_tune.stores import check_two_databases, open_optuna_storage, redact, resolve_storage, resolve_tracking_uri
from ct_tune.tracking import Tracker
from ct_tune.tracking.keys import ATTR_PIPELINE, TAG_PIPELINE, TAG_PREVIOUS_STAGE_RUN, TAG_STAGE, TAG_STAGE_INDEX
from ct_tune.trained import TrainCTSpec, log_trained_ct
from ct_tune.workers import RayOptions, SlurmOptions, check_cores, plan_workers

if TYPE_CHECKING:
    import optuna

__all__ = ["as_pipeline", "delete_pipeline_studies", "run_pipeline"]

PipelineLike = PipelineSpec | Mapping[str, Any] | str | os.PathLike[str]


def as_pipeline(pipeline: PipelineLike) -> PipelineSpec:
    """A pipeline object from itself, a mapping or a YAML file."""
    if isinstance(pipeline, PipelineSpec):
        return pipeline
    if isinstance(pipeline, Mapping):
        return pipeline_from_dict(dict(pipeline))
    if isinstance(pipeline, (str, os.PathLike)):
        return load_pipeline(pipeline)
    raise InputError(f"a pipeline is a YAML file, a mapping or a PipelineSpec; got {type(pipeline).__name__}")


@dataclass
class _Run:
    """One run of a pipeline: what every stage is handed, and what the stages made so far."""

    spec: PipelineSpec
    options: RunOptions
    storage: str | None
    tracking_uri: str | None
    profile_dir: Path
    tell: Callable[[str], None]
    executor: str  # what ``Study.run`` takes besides the options
    oversubscribe: bool
    slurm: SlurmOptions | Mapping[str, Any] | None
    ray: RayOptions | Mapping[str, Any] | None
    searches: dict[str, StudySpec] = field(default_factory=dict)
    trainings: dict[str, TrainCTSpec] = field(default_factory=dict)
    studies: dict[str, Study] = field(default_factory=dict)
    trained: dict[str, BetaProfile] = field(default_factory=dict)
    outcomes: list[StageOutcome] = field(default_factory=list)
    tracker: Tracker | None = None
    replicate: dict[str, Any] | None = None  # the replicate set this run is one seed of

    def label(self, index: int, stage: str) -> str:
        return f"stage {index + 1}/{len(self.spec.stages)} {stage}"


@overload
def run_pipeline(pipeline: PipelineLike, *, seeds: None = None, **options: Any) -> PipelineResult: ...


@overload
def run_pipeline(pipeline: PipelineLike, *, seeds: Sequence[int], **options: Any) -> ReplicateResult: ...


def run_pipeline(
    pipeline: PipelineLike,
    *,
    seeds: Sequence[int] | None = None,
    trials: int | None = None,
    workers: int | None = 1,
    devices: str | None = None,
    storage: str | None = None,
    tracking_uri: str | None = None,
    progress: bool = True,
    heartbeat: int = 10,
    grace: int | None = None,
    log_dir: str | os.PathLike[str] | None = None,
    profile_dir: str | os.PathLike[str] = "profiles",
    say: Callable[[str], None] | None = None,
    oversubscribe: bool = False,
    executor: str = "local",
    slurm: SlurmOptions | Mapping[str, Any] | None = None,
    ray: RayOptions | Mapping[str, Any] | None = None,
) -> PipelineResult | ReplicateResult:
    """Create (or resume) and run each stage, then report the chosen stages on the test split.

    Args:
        pipeline: a pipeline file (YAML), its mapping, or a ``PipelineSpec``.
        seeds: run the pipeline once per seed (split, samplers and trained stages seeded with it; studies
            ``<name>-s<seed>.<stage>``) and report over the seeds: a ``ReplicateResult``.
        trials: every search stage's trial budget (default: as the pipeline says).
        workers: worker processes per stage (as ``Study.run``; None: one per GPU of ``devices``).
        devices: ``auto``, ``cpu`` or a list like ``cuda:0,cuda:1`` (default: each stage's ``run.device``).
        storage: the Optuna storage URL (default: ``$CT_TUNE_STORAGE``, the pipeline's, then
            ``sqlite:///studies/optuna.db``).
        tracking_uri: the MLflow store (default: ``$MLFLOW_TRACKING_URI``, the pipeline's, then
            ``sqlite:///mlruns/mlflow.db``).
        progress: a progress bar per stage (on a terminal).
        heartbeat: seconds between a running trial's heartbeats.
        grace: seconds without a heartbeat before a trial counts as dead (default: max(60, 3 x heartbeat)).
        log_dir: where worker processes log (default: ``logs/<study>``).
        profile_dir: where the final profile and trained stages' profiles are written.
        say: receives the progress lines (default: stderr).
        oversubscribe: allow more CPU workers than cores.
        executor: ``local``, ``slurm`` or ``ray`` (a SLURM stage is waited for: the next starts from it).
        slurm: ``SlurmOptions`` or a mapping of its fields (executor ``slurm``).
        ray: ``RayOptions`` or a mapping of its fields (executor ``ray``).

    Nothing is created before every stage's spec (every seed's) and the worker options are known to be valid.
    """
    spec = as_pipeline(pipeline)
    if trials is not None:
        spec = pipeline_from_dict(with_trials(pipeline_data(spec), trials), source=f"pipeline {spec.name}")
    options = RunOptions(
        workers=workers,
        devices=devices,
        heartbeat=heartbeat,
        grace=grace,
        log_dir=None if log_dir is None else str(log_dir),
        progress=progress,
    )
    tell = say or (lambda text: print(text, file=sys.stderr, flush=True))
    folder = Path(profile_dir)

    def prepare(one: PipelineSpec, replicate: dict[str, Any] | None = None) -> Callable[[], PipelineResult]:
        run = _Run(one, options, storage, tracking_uri, folder, tell, executor, oversubscribe, slurm, ray)
        run.replicate = replicate
        _check(run)
        if replicate is not None:  # a seed's split must fit the checkpoint before the first seed runs
            _check_bench(run)
        return lambda: _run_stages(run)

    if seeds is None:
        return prepare(spec)()
    return run_replicates(
        spec, seeds=seeds, prepare=prepare, storage=storage, tracking_uri=tracking_uri, profile_dir=folder, tell=tell
    )


def _run_stages(run: _Run) -> PipelineResult:
    """Every stage in order, the report and the exported profile."""
    spec = run.spec
    for index, stage in enumerate(spec.stages):
        if stage.kind == "train":
            _train_stage(run, stage.name, index)
        else:
            _search_stage(run, stage, index)
    run.tell(f"report: scoring the best trials of {', '.join(spec.report_stages)} once on the test split")
    report = report_pipeline(spec, run.studies, run.trained, run.trainings)
    profile_path, objective_names = _export(run)
    assert run.tracker is not None
    tracking = redact(run.tracker.tracking_uri)
    directions = {name: "maximize" for name in objective_names}
    for study in run.studies.values():
        directions.update(zip(study.objective_names, study.directions, strict=True))
    return PipelineResult(
        spec.name, run.outcomes, report.rows, profile_path, tracking, objective_names, report.evidence, directions
    )


def _check(run: _Run) -> None:
    """Every stage's spec, the worker options and the stores, before the first stage creates anything."""
    spec, options = run.spec, run.options
    run.searches = {stage.name: stage_spec(spec, stage.name) for stage in spec.stages if stage.kind == "search"}
    run.trainings = {stage.name: train_stage_spec(spec, stage.name) for stage in spec.stages if stage.kind == "train"}
    options.check()
    for stage_study in run.searches.values():  # bad workers/devices fail now, not after a stage's study exists
        if run.executor == "local":
            plans = plan_workers(options.workers, options.devices or stage_study.run.device)
            check_cores(plans, oversubscribe=run.oversubscribe)  # each stage's run prints the warning
        storage_url = resolve_storage(run.storage, stage_study.storage)
        check_two_databases(storage_url, resolve_tracking_uri(run.tracking_uri, stage_study.tracking_uri))


def _check_bench(run: _Run) -> None:
    """Open the first search stage's model and data as its study would (the stages share them): a split the
    checkpoint was pretrained on, or a missing checkpoint, is refused now."""
    first = next(iter(run.searches.values()), None)
    if first is not None:
        with Bench.open(first, **first.grouping, device="cpu", steer=False):
            pass


def _search_stage(run: _Run, stage: StageSpec, index: int) -> None:
    """Create (or resume) the stage's study and run it to its budget."""
    plain = run.searches[stage.name]
    storage_url = resolve_storage(run.storage, plain.storage)
    uri = resolve_tracking_uri(run.tracking_uri, plain.tracking_uri)
    run.tracker = run.tracker or Tracker(uri, artifact_location=plain.artifact_location)
    name = run.spec.study_name(stage.name)
    optuna_storage = open_optuna_storage(storage_url)
    if study_exists(name, storage=optuna_storage):
        study = open_study(name, storage_url=storage_url, storage=optuna_storage, tracker=run.tracker)
        run.tell(f"{run.label(index, stage.name)}: study {name} exists, resuming")
    else:
        study = _create_stage(run, stage, index, storage_url, optuna_storage)
    run.studies[stage.name] = study
    options = run.options
    summary = study.run(
        workers=options.workers,
        devices=options.devices,
        progress=options.progress,
        heartbeat=options.heartbeat,
        grace=options.grace,
        log_dir=options.log_dir,
        oversubscribe=run.oversubscribe,
        executor=run.executor,
        slurm=run.slurm,
        ray=run.ray,
        wait=run.executor == "slurm",
    )
    plots = run.tracker.plot_files(study.parent_run_id)
    granularity = study.spec.search.granularity
    finished, seconds = _finished_trials(study.optuna_study)
    run.outcomes.append(
        StageOutcome(stage.name, name, granularity, summary.reason, finished, study.parent_run_id, seconds, plots)
    )


def _finished_trials(optuna_study: optuna.Study) -> tuple[int, float]:
    """A study's finished trials (complete or pruned; earlier runs' too) and their durations summed."""
    from optuna.trial import TrialState

    finished = optuna_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    return len(finished), sum(trial.duration.total_seconds() for trial in finished if trial.duration is not None)


def _create_stage(run: _Run, stage: StageSpec, index: int, storage_url: str, optuna_storage: Any) -> Study:
    """A stage's new study: warm-started from an earlier stage when it says so, linked to the one before."""
    plain = run.searches[stage.name]
    spec, warm = plain, WarmStartProfiles()
    with Bench.open(plain, **plain.grouping, device="cpu", steer=False) as bench:  # units, and sites to map with
        if stage.warm_start is not None:
            warm = warm_start_profiles(bench, plain, stage.warm_start.from_stage, run.studies, run.trained)
            beta = plain.search.beta
            own = {unit: plain.search.range_of(unit, family) for unit, family in bench.families.items()}
            bounds = {unit: (r.low, r.high) for unit, r in own.items()}
            ranges = warm_start_ranges(warm.profiles, stage.warm_start.width, beta.low, beta.high, bounds=bounds)
            spec = stage_spec(run.spec, stage.name, ranges=ranges)
        units, meta = bench.units, bench.meta()
    assert run.tracker is not None
    study = new_study(
        spec,
        name=run.spec.study_name(stage.name),
        storage_url=storage_url,
        storage=optuna_storage,
        tracker=run.tracker,
        units=units,
        meta=meta,
    )
    for betas in warm.profiles:
        study.enqueue(betas, c=warm.c, kind="warm-start")
    _link(run, study, stage, index)
    started = ""
    if stage.warm_start is not None:
        started = f", warm-started from {stage.warm_start.from_stage} ({len(warm.profiles)} profile(s))"
    run.tell(
        f"{run.label(index, stage.name)}: created study {study.name}, "
        f"{len(study.units)} {spec.search.granularity} units{started}"
    )
    return study


def _link(run: _Run, study: Study, stage: StageSpec, index: int) -> None:
    """The study's ``ct_tune.pipeline`` attribute and its parent run's pipeline tags (the stage before it)."""
    previous = run.studies.get(run.spec.stages[index - 1].name) if index else None  # None after a trained stage
    link = {
        "name": run.spec.name,
        "stage": stage.name,
        "index": index,
        "previous_study": previous.name if previous else None,
    }
    if run.replicate is not None:
        link["replicates"] = run.replicate
    study.optuna_study.set_user_attr(ATTR_PIPELINE, link)
    tags = {TAG_PIPELINE: run.spec.name, TAG_STAGE: stage.name, TAG_STAGE_INDEX: str(index)}
    if previous is not None:
        tags[TAG_PREVIOUS_STAGE_RUN] = previous.parent_run_id
    assert run.tracker is not None
    run.tracker.log(study.parent_run_id, tags=tags)


def _train_stage(run: _Run, stage: str, index: int) -> None:
    """Train (or reuse the profile an earlier run of the pipeline trained with the same settings)."""
    training = run.trainings[stage]
    run.tracker = run.tracker or Tracker(resolve_tracking_uri(run.tracking_uri, training.tracking_uri))
    name = run.spec.study_name(stage)
    path = run.profile_dir / f"{name}.json"
    label = run.label(index, stage)
    granularity = f"trained {training.settings.granularity}"
    made_with = json.loads(json.dumps(training.identity()))
    if path.is_file():
        profile = BetaProfile.load(path)
        meta = profile.metadata
        if meta.get("pipeline_stage") == name and meta.get("made_with") == made_with and meta.get("run_id"):
            run.tell(f"{label}: trained profile {path} exists with these settings, reusing it")
            run.trained[stage] = profile
            epochs, seconds = int(meta.get("epochs_run", 0)), float(meta.get("seconds", 0.0))
            outcome = StageOutcome(stage, name, granularity, "trained earlier", epochs, meta["run_id"], seconds)
            run.outcomes.append(outcome)
            return
    run.tell(f"{label}: training CT ({training.settings.granularity}, {training.settings.epochs} epochs)")
    result = training.train(on_epoch=lambda row: run.tell(f"  epoch {int(row['epoch'])}: val {row['val']:.4f}"))
    logged = log_trained_ct(result, name=name, tracker=run.tracker)
    tags = {TAG_PIPELINE: run.spec.name, TAG_STAGE: stage, TAG_STAGE_INDEX: str(index)}
    run.tracker.log(logged["run_id"], tags=tags)
    profile = result.profile
    epochs = len(result.history)
    profile.metadata.update(pipeline_stage=name, run_id=logged["run_id"], made_with=made_with)
    profile.metadata.update(epochs_run=epochs, seconds=result.seconds)  # what the stage cost, for a resumed run
    if run.replicate is not None:
        profile.metadata["replicates"] = run.replicate
    profile.save(path)
    baseline = f"{result.baseline_label} {result.baseline:.4f}"
    run.tell(f"{label}: val {result.objective} {result.value:.4f} ({baseline}), profile {path}")
    run.trained[stage] = profile
    run.outcomes.append(StageOutcome(stage, name, granularity, "trained", epochs, logged["run_id"], result.seconds))


def _export(run: _Run) -> tuple[str | None, list[str]]:
    """The last stage's best profile, written to the profile folder (none for a Pareto front); the objective
    names of the last stage."""
    last = run.spec.stages[-1].name
    path = run.profile_dir / f"{run.spec.name}.json"
    if last in run.trained:
        profile = run.trained[last]
        return str(Path(profile.save(path)).resolve()), [profile.metadata["objective"]]
    study = run.studies[last]
    best = study.best()
    if len(best) != 1:
        return None, study.objective_names
    return str(Path(best[0].profile.save(path)).resolve()), study.objective_names


def delete_pipeline_studies(
    pipeline: PipelineLike, *, storage: str | None = None, tracking_uri: str | None = None
) -> list[str]:
    """Delete every stage's study (and archive its experiment); the names deleted."""
    spec = as_pipeline(pipeline)
    deleted = []
    for stage in spec.stages:
        if stage.kind == "train":  # no study: its profile file stays
            continue
        stage_study = stage_spec(spec, stage.name)
        storage_url = resolve_storage(storage, stage_study.storage)
        optuna_storage = open_optuna_storage(storage_url)
        name = spec.study_name(stage.name)
        if study_exists(name, storage=optuna_storage):
            uri = resolve_tracking_uri(tracking_uri, stage_study.tracking_uri)
            open_study(name, storage_url=storage_url, storage=optuna_storage, tracking_uri=uri).delete()
            deleted.append(name)
    return deleted
