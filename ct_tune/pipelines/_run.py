"""Running a pipeline: its stages in order (each a study), then the test-split report of the chosen stages.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ct_tune._errors import InputError
from ct_tune.search._evidence import CONFIDENCE, RESAMPLES, SEED, bootstrap_mean
from ct_tune.search._pipeline_spec import (
    PipelineSpec,
    StageSpec,
    load_pipeline,
    map_profile,
    pipeline_from_dict,
    stage_spec,
    train_stage_spec,
    warm_start_params,
    warm_start_ranges,
)
from ct_tune.search._report import Reference, StudyReport, interval_bounds, versus
from ct_tune.search._run import RunOptions
from ct_tune.search._spec import StudySpec
from ct_tune.search._study import Study, new_study, open_study, study_exists
from ct_tune.search._trained import TrainCTSpec, log_trained_ct, score_trained_on_test
from ct_tune.steering import BetaProfile
from ct_tune.stores import (
    check_two_databases,
    open_optuna_storage,
    redact,
    resolve_storage,
    resolve_tracking_uri,
)
from ct_tune.tracking import Tracker
from ct_tune.tracking._keys import (
    ATTR_KIND,
    ATTR_PIPELINE,
    TAG_PIPELINE,
    TAG_PREVIOUS_STAGE_RUN,
    TAG_STAGE,
    TAG_STAGE_INDEX,
)
from ct_tune.workers import RayOptions, SlurmOptions, check_cores, plan_workers

__all__ = ["PipelineResult", "StageOutcome", "as_pipeline", "delete_pipeline_studies", "run_pipeline"]

PipelineLike = PipelineSpec | Mapping[str, Any] | str | os.PathLike[str]


@dataclass
class StageOutcome:
    stage: str
    study: str
    granularity: str
    stopped: str
    finished: int
    parent_run_id: str
    plots: list[str] = field(default_factory=list)


@dataclass
class PipelineResult:
    name: str
    stages: list[StageOutcome]
    report: list[dict[str, Any]]  # the ReLU baseline once, then the best trial(s) of each reported stage
    profile_path: str | None  # the last stage's best profile, exported (None for a Pareto front)
    tracking_uri: str  # redacted
    objective_names: list[str]
    # how the report's intervals and tests were made, and which profile each stage's vs_global is against
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.name,
            "stages": [stage.__dict__ for stage in self.stages],
            "report": self.report,
            **self.evidence,
            "profile": self.profile_path,
            "tracking_uri": self.tracking_uri,
        }


def as_pipeline(pipeline: PipelineLike) -> PipelineSpec:
    """A pipeline object from itself, a mapping or a YAML file."""
    if isinstance(pipeline, PipelineSpec):
        return pipeline
    if isinstance(pipeline, Mapping):
        return pipeline_from_dict(dict(pipeline))
    if isinstance(pipeline, (str, os.PathLike)):
        return load_pipeline(pipeline)
    raise InputError(f"a pipeline is a YAML file, a mapping or a PipelineSpec; got {type(pipeline).__name__}")


def run_pipeline(
    pipeline: PipelineLike,
    *,
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
) -> PipelineResult:
    """Create (or resume) and run each stage, then report the chosen stages on the test split.

    ``workers`` / ``devices`` / ``heartbeat`` / ``grace`` / ``log_dir`` / ``oversubscribe`` / ``executor``
    / ``slurm`` / ``ray`` are those of ``Study.run`` and apply to every stage (a SLURM stage is waited for:
    the next one starts from it); ``say`` receives the progress lines (default: stderr).
    """
    spec = as_pipeline(pipeline)
    options = RunOptions(
        workers=workers,
        devices=devices,
        heartbeat=heartbeat,
        grace=grace,
        log_dir=None if log_dir is None else str(log_dir),
        progress=progress,
    )
    tell = say or (lambda text: print(text, file=sys.stderr, flush=True))
    specs = {stage.name: stage_spec(spec, stage.name) for stage in spec.stages if stage.kind == "search"}
    training = {stage.name: train_stage_spec(spec, stage.name) for stage in spec.stages if stage.kind == "train"}
    options.check()
    for stage_study in specs.values():  # bad workers/devices fail now, not after the first stage's study exists
        if executor == "local":
            plans = plan_workers(options.workers, options.devices or stage_study.run.device)
            check_cores(plans, oversubscribe=oversubscribe)  # each stage's run prints the warning
        check_two_databases(
            resolve_storage(storage, stage_study.storage), resolve_tracking_uri(tracking_uri, stage_study.tracking_uri)
        )
    outcomes: list[StageOutcome] = []
    studies: dict[str, Study] = {}
    trained: dict[str, BetaProfile] = {}
    tracker: Tracker | None = None
    for index, stage in enumerate(spec.stages):
        if stage.kind == "train":
            tracker = tracker or Tracker(resolve_tracking_uri(tracking_uri, training[stage.name].tracking_uri))
            outcome, trained[stage.name] = _train_stage(
                spec, stage.name, index, training[stage.name], tracker, Path(profile_dir), tell
            )
            outcomes.append(outcome)
            continue
        plain = specs[stage.name]
        storage_url = resolve_storage(storage, plain.storage)
        tracker = tracker or Tracker(
            resolve_tracking_uri(tracking_uri, plain.tracking_uri), artifact_location=plain.artifact_location
        )
        name = spec.study_name(stage.name)
        optuna_storage = open_optuna_storage(storage_url)
        if study_exists(optuna_storage, name):
            study = open_study(name, storage_url, optuna_storage, tracker=tracker)
            tell(f"stage {index + 1}/{len(spec.stages)} {stage.name}: study {name} exists, resuming")
        else:
            study = _create_stage(
                spec, stage, plain, index, storage_url, optuna_storage, tracker, studies, trained, tell
            )
        studies[stage.name] = study
        summary = study.run(
            workers=options.workers,
            devices=options.devices,
            progress=options.progress,
            heartbeat=options.heartbeat,
            grace=options.grace,
            log_dir=options.log_dir,
            oversubscribe=oversubscribe,
            executor=executor,
            slurm=slurm,
            ray=ray,
            wait=executor == "slurm",
        )
        outcomes.append(
            StageOutcome(
                stage.name,
                name,
                study.spec.search.granularity,
                summary.reason,
                summary.finished,
                study.parent_run_id,
                _plot_files(tracker, study.parent_run_id),
            )
        )
    assert tracker is not None
    tell(f"report: scoring the best trials of {', '.join(spec.report_stages)} once on the test split")
    reports, best_global, relu = _report_stages(spec, studies)
    rows, baseline_row = [], None
    for stage_name in spec.report_stages:
        if stage_name in trained:
            rows.append(_trained_row(stage_name, training[stage_name], trained[stage_name], best_global, relu))
            continue
        for row in reports[stage_name].trials:
            row = {"stage": stage_name, "granularity": studies[stage_name].spec.search.granularity, **row}
            if row["role"] == "chosen":
                rows.append(row)
            elif row["role"] == "baseline" and baseline_row is None:  # the ReLU baseline once, first in the table
                baseline_row = row
    rows = ([baseline_row] if baseline_row else []) + rows
    searched = [name for name in spec.report_stages if name in reports]
    first = reports[searched[0]] if searched else None
    against = {name: reports[name].global_reference for name in searched}
    evidence = {"evidence": first.evidence if first else {}, "global_reference": against}
    last_name = spec.stages[-1].name
    profile_path = None
    if last_name in trained:
        saved = trained[last_name].save(Path(profile_dir) / f"{spec.name}.json")
        profile_path, objective_names = str(Path(saved).resolve()), [trained[last_name].metadata["objective"]]
    else:
        last = studies[last_name]
        objective_names = last.objective_names
        best = last.best()
        if len(best) == 1:
            saved = best[0].profile.save(Path(profile_dir) / f"{spec.name}.json")
            profile_path = str(Path(saved).resolve())
    return PipelineResult(
        spec.name, outcomes, rows, profile_path, redact(tracker.tracking_uri), objective_names, evidence
    )


def _report_stages(
    spec: PipelineSpec, studies: Mapping[str, Study]
) -> tuple[dict[str, StudyReport], Reference | None, Reference | None]:
    """Each reported search stage's report, with the best global profile and the ReLU baseline every later
    stage (trained ones too) is compared with on the same test samples: the first global stage is reported
    first, and its best is that best global profile, as its ReLU baseline is for stages without one."""
    names = [name for name in spec.report_stages if name in studies]
    glob = next((name for name in names if studies[name].spec.search.granularity == "global"), None)
    reports: dict[str, StudyReport] = {}
    best_global = relu = None
    for name in ([glob] if glob else []) + [name for name in names if name != glob]:
        reports[name] = studies[name].report(best_global=best_global, relu=relu)
        if name == glob:
            best_global = reports[name].reference(f"best of stage {name}")
        relu = relu or reports[name].reference(f"ReLU baseline of stage {name}", role="baseline")
    return reports, best_global, relu


def _train_stage(
    pipeline: PipelineSpec,
    stage: str,
    index: int,
    training: TrainCTSpec,
    tracker: Tracker,
    profile_dir: Path,
    tell: Callable[[str], None],
) -> tuple[StageOutcome, BetaProfile]:
    """Train (or reuse the profile an earlier run of the pipeline trained with the same settings)."""
    name = pipeline.study_name(stage)
    path = profile_dir / f"{name}.json"
    label = f"stage {index + 1}/{len(pipeline.stages)} {stage}"
    made_with = json.loads(json.dumps(training.identity()))
    if path.is_file():
        profile = BetaProfile.load(path)
        meta = profile.metadata
        if meta.get("pipeline_stage") == name and meta.get("made_with") == made_with and meta.get("run_id"):
            tell(f"{label}: trained profile {path} exists with these settings, reusing it")
            granularity = f"trained {training.settings.granularity}"
            return StageOutcome(stage, name, granularity, "trained earlier", 0, meta["run_id"]), profile
    tell(f"{label}: training CT ({training.settings.granularity}, {training.settings.epochs} epochs)")
    result = training.train(on_epoch=lambda row: tell(f"  epoch {int(row['epoch'])}: val {row['val']:.4f}"))
    logged = log_trained_ct(result, name=name, tracker=tracker)
    tracker.log(logged["run_id"], tags={TAG_PIPELINE: pipeline.name, TAG_STAGE: stage, TAG_STAGE_INDEX: str(index)})
    profile = result.profile
    profile.metadata.update(pipeline_stage=name, run_id=logged["run_id"], made_with=made_with)
    profile.save(path)
    tell(f"{label}: val {result.objective} {result.value:.4f} (ReLU {result.baseline:.4f}), profile {path}")
    granularity = f"trained {training.settings.granularity}"
    outcome = StageOutcome(stage, name, granularity, "trained", len(result.history), logged["run_id"])
    return outcome, profile


def _trained_row(
    stage: str, training: TrainCTSpec, profile: BetaProfile, best_global: Reference | None, relu: Reference | None
) -> dict[str, Any]:
    """A trained stage's line of the report: its val score and, once, its test score with its interval and
    its paired comparisons with the pipeline's ReLU baseline and best global profile."""
    results = score_trained_on_test(training, profile)
    objective = profile.metadata["objective"]
    val = {objective: profile.metadata["val"]}
    test = {name: result.value for name, result in results.items()}
    mine = {name: result.correct.cpu().numpy().astype(float) for name, result in results.items()}
    settings = {"confidence": CONFIDENCE, "resamples": RESAMPLES, "seed": SEED}

    return {
        "stage": stage,
        "granularity": f"trained {training.settings.granularity}",
        "number": f"epoch {profile.metadata['best_epoch']}",
        "role": "chosen",
        "is_baseline": False,
        "val": val,
        "test": test,
        "test_ci": {name: interval_bounds(bootstrap_mean(scores=v, **settings)) for name, v in mine.items()},
        "vs_relu": versus(mine, relu, values=val, own=(stage, None), settings=settings),
        "vs_global": versus(mine, best_global, values=val, own=(stage, None), settings=settings),
        "val_test_gap": {name: val[name] - test[name] for name in test if name in val},
        "test_details": {name: result.details for name, result in results.items()},
        "betas": profile.betas,
        "c": profile.c,
    }


def _create_stage(
    pipeline: PipelineSpec,
    stage: StageSpec,
    plain: StudySpec,
    index: int,
    storage_url: str,
    optuna_storage: Any,
    tracker: Tracker,
    studies: dict[str, Study],
    trained: Mapping[str, BetaProfile],
    tell: Callable[[str], None],
) -> Study:
    from ct_tune.search._bench import Bench

    with Bench.open(plain, device="cpu", steer=False) as bench:  # the units, and the sites to map profiles with
        spec, profiles, c = plain, [], 0.5
        if stage.warm_start is not None and stage.warm_start.from_stage in trained:
            # Block (or stage, global) values from the trained channel values: the mean of each unit's sites.
            source = trained[stage.warm_start.from_stage]
            c = source.c
            profiles.append(
                map_profile(
                    bench.model.net,
                    bench.trace,
                    source.betas,
                    source.unit_granularity,
                    plain.search.granularity,
                    target_groups=plain.search.groups,
                )
            )
            beta = plain.search.beta
            ranges = warm_start_ranges(profiles, stage.warm_start.width, beta.low, beta.high)
            spec = stage_spec(pipeline, stage.name, ranges=ranges)
        elif stage.warm_start is not None:
            earlier = studies[stage.warm_start.from_stage]
            chosen = earlier.best()
            if not chosen:
                raise InputError(
                    f"stage {stage.warm_start.from_stage!r} has no completed trial to warm-start from; "
                    "run it (or raise its budget)"
                )
            for trial in chosen:
                c = trial.c
                profiles.append(
                    map_profile(
                        bench.model.net,
                        bench.trace,
                        trial.betas,
                        earlier.spec.search.granularity,
                        plain.search.granularity,
                        source_groups=earlier.spec.search.groups,
                        target_groups=plain.search.groups,
                    )
                )
            beta = plain.search.beta
            ranges = warm_start_ranges(profiles, stage.warm_start.width, beta.low, beta.high)
            spec = stage_spec(pipeline, stage.name, ranges=ranges)
        units, meta = bench.units, bench.meta()
    study = new_study(spec, pipeline.study_name(stage.name), storage_url, optuna_storage, tracker, units, meta)
    for params in warm_start_params(spec, profiles, c):
        study.optuna_study.enqueue_trial(params, user_attrs={ATTR_KIND: "warm-start"})
    previous = studies.get(pipeline.stages[index - 1].name) if index else None  # None after a trained stage
    link = {
        "name": pipeline.name,
        "stage": stage.name,
        "index": index,
        "previous_study": previous.name if previous else None,
    }
    study.optuna_study.set_user_attr(ATTR_PIPELINE, link)
    tags = {TAG_PIPELINE: pipeline.name, TAG_STAGE: stage.name, TAG_STAGE_INDEX: str(index)}
    if previous is not None:
        tags[TAG_PREVIOUS_STAGE_RUN] = previous.parent_run_id
    tracker.log(study.parent_run_id, tags=tags)
    warm = f", warm-started from {stage.warm_start.from_stage} ({len(profiles)} profile(s))" if profiles else ""
    tell(
        f"stage {index + 1}/{len(pipeline.stages)} {stage.name}: created study {study.name}, "
        f"{len(study.units)} {spec.search.granularity} units{warm}"
    )
    return study


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
        if study_exists(optuna_storage, name):
            uri = resolve_tracking_uri(tracking_uri, stage_study.tracking_uri)
            open_study(name, storage_url, optuna_storage, tracking_uri=uri).delete()
            deleted.append(name)
    return deleted


def _plot_files(tracker: Tracker, run_id: str) -> list[str]:
    """Local paths of a parent run's plots (where the artifact store is a local directory)."""
    uri = tracker.client.get_run(run_id).info.artifact_uri
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        return [f"{uri}/plots/"]
    folder = Path(parsed.path) / "plots"
    return sorted(str(path) for path in folder.glob("*.png")) if folder.is_dir() else []
