"""``ct-tune pipeline run FILE``: the stages of a pipeline, in order, then the test-split report."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ct_tune.cli._common import CommandResult, add_command, add_group, print_table
from ct_tune.cli._study_common import profile_text
from ct_tune.cli._study_run import RunOptions, add_worker_options, run_study


def register(subparsers: Any) -> None:
    commands = add_group(
        subparsers,
        "pipeline",
        help="run several studies in order (global, then per block, then the report)",
        description=__doc__,
    )
    run = add_command(commands, "run", _run, help="run every stage (resumable), then report on the test split")
    run.add_argument("file", help="pipeline file (YAML); see pipelines/ for examples")
    add_worker_options(run)
    run.add_argument("--storage", help="Optuna storage (default: the pipeline's, else sqlite:///studies/optuna.db)")
    run.add_argument("--tracking-uri", help="MLflow store (default: the pipeline's, else sqlite:///mlruns/mlflow.db)")


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
class PipelineOutcome:
    name: str
    stages: list[StageOutcome]
    report: list[dict[str, Any]]
    profile_path: str | None
    tracking_uri: str
    objective_names: list[str]


def run_pipeline(
    pipeline: Any,
    options: RunOptions,
    *,
    storage: str | None = None,
    tracking_uri: str | None = None,
    say: Callable[[str], None] = lambda text: print(text, file=sys.stderr, flush=True),
    profile_dir: str = "profiles",
) -> PipelineOutcome:
    """Create (or resume) and run each stage, then report the chosen stages on the test split."""
    from ct_tune.pipeline import stage_spec
    from ct_tune.report import report_study
    from ct_tune.storage import open_optuna_storage, redact, resolve_storage, resolve_tracking_uri
    from ct_tune.study import best_trials, export_profile, load_study, study_exists
    from ct_tune.tracking import Tracker
    from ct_tune.workers import plan_workers

    specs = {stage.name: stage_spec(pipeline, stage.name) for stage in pipeline.stages}
    for spec in specs.values():  # bad --workers/--devices fail now, not after the first stage's study exists
        plan_workers(options.workers, options.devices or spec.run.device)
    outcomes: list[StageOutcome] = []
    infos: dict[str, Any] = {}
    tracker = None
    for index, stage in enumerate(pipeline.stages):
        plain = specs[stage.name]
        storage_url = resolve_storage(storage, plain.storage)
        tracker = tracker or Tracker(
            resolve_tracking_uri(tracking_uri, plain.tracking_uri), artifact_location=plain.artifact_location
        )
        name = pipeline.study_name(stage.name)
        if study_exists(open_optuna_storage(storage_url), name):
            info = load_study(name=name, storage_url=storage_url)
            say(f"stage {index + 1}/{len(pipeline.stages)} {stage.name}: study {name} exists, resuming")
        else:
            info = _create_stage(pipeline, stage, plain, index, storage_url, tracker, infos, say)
        infos[stage.name] = info
        finished, _, stopped = run_study(info, tracker, options)
        plots = _plot_files(tracker, info.mlflow["parent_run_id"])
        outcomes.append(
            StageOutcome(
                stage.name, name, info.spec.search.granularity, stopped, finished, info.mlflow["parent_run_id"], plots
            )
        )
    say(f"report: scoring the best trials of {', '.join(pipeline.report_stages)} once on the test split")
    rows, baseline_row = [], None
    for stage_name in pipeline.report_stages:
        report = report_study(infos[stage_name], tracker)
        for row in report["trials"]:
            row = {"stage": stage_name, "granularity": infos[stage_name].spec.search.granularity, **row}
            if not row["is_baseline"]:
                rows.append(row)
            elif baseline_row is None:  # the ReLU baseline once, first in the table
                baseline_row = row
    rows = ([baseline_row] if baseline_row else []) + rows
    last = infos[pipeline.stages[-1].name]
    profile_path = None
    best = best_trials(last)
    if len(best) == 1:
        saved = export_profile(last, best[0]).save(Path(profile_dir) / f"{pipeline.name}.json")
        profile_path = str(Path(saved).resolve())
    return PipelineOutcome(
        pipeline.name, outcomes, rows, profile_path, redact(tracker.tracking_uri), last.objective_names
    )


def _create_stage(pipeline, stage, plain, index, storage_url, tracker, infos, say):
    from ct_tune.pipeline import ATTR_PIPELINE, map_profile, stage_spec, warm_start_params, warm_start_ranges
    from ct_tune.session import Session
    from ct_tune.study import ATTR_KIND, best_trials, create_study

    session = Session.open(plain, device="cpu", steer=False)  # the units, and the sites to map profiles with
    spec, profiles, c = plain, [], 0.5
    if stage.warm_start is not None:
        earlier = infos[stage.warm_start.from_stage]
        chosen = best_trials(earlier)
        if not chosen:
            raise _no_result(stage.warm_start.from_stage)
        for trial in chosen:
            betas, c = earlier.profile_of(trial)
            profiles.append(
                map_profile(
                    session.model.net,
                    session.trace.sites,
                    betas,
                    earlier.spec.search.granularity,
                    plain.search.granularity,
                )
            )
        beta = plain.search.beta
        ranges = warm_start_ranges(profiles, stage.warm_start.width, beta.low, beta.high)
        spec = stage_spec(pipeline, stage.name, ranges=ranges)
    info, _ = create_study(
        spec=spec,
        name=pipeline.study_name(stage.name),
        storage_url=storage_url,
        tracker=tracker,
        units=session.units,
        meta=session.meta(),
    )
    for params in warm_start_params(spec, profiles, c):
        info.study.enqueue_trial(params, user_attrs={ATTR_KIND: "warm-start"})
    previous = infos[pipeline.stages[index - 1].name] if index else None
    link = {
        "name": pipeline.name,
        "stage": stage.name,
        "index": index,
        "previous_study": previous.name if previous else None,
    }
    info.study.set_user_attr(ATTR_PIPELINE, link)
    tags = {"ct_tune.pipeline": pipeline.name, "ct_tune.stage": stage.name, "ct_tune.stage_index": str(index)}
    if previous is not None:
        tags["ct_tune.previous_stage_run"] = previous.mlflow["parent_run_id"]
    tracker.log(info.mlflow["parent_run_id"], tags=tags)
    warm = f", warm-started from {stage.warm_start.from_stage} ({len(profiles)} profile(s))" if profiles else ""
    say(
        f"stage {index + 1}/{len(pipeline.stages)} {stage.name}: created study {info.name}, "
        f"{len(info.units)} {spec.search.granularity} units{warm}"
    )
    return info


def _no_result(stage: str):
    from ct_tune._errors import InputError

    return InputError(f"stage {stage!r} has no completed trial to warm-start from; run it (or raise its budget)")


def _plot_files(tracker, run_id: str) -> list[str]:
    """Local paths of a parent run's plots (where the artifact store is a local directory)."""
    from urllib.parse import urlparse

    uri = tracker.client.get_run(run_id).info.artifact_uri
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        return [f"{uri}/plots/"]
    folder = Path(parsed.path) / "plots"
    return sorted(str(path) for path in folder.glob("*.png")) if folder.is_dir() else []


def render_outcome(outcome: PipelineOutcome, *, show_plots: int = 4) -> None:
    names = outcome.objective_names
    rows = []
    for row in outcome.report:
        label = "ReLU baseline" if row["is_baseline"] else f"best {row['granularity']}"
        rows.append(
            [
                label,
                f"{row['stage']} #{row['number']}",
                *(row["val"].get(n) for n in names),
                *(row["test"].get(n) for n in names),
                profile_text(row["betas"], limit=8),
            ]
        )
    columns = ["profile", "trial", *(f"val {n}" for n in names), *(f"test {n}" for n in names), "beta per unit"]
    print_table(f"pipeline {outcome.name}", columns, rows)
    if outcome.profile_path:
        shown = _short(outcome.profile_path)
        print(f"best profile: {shown}   (ct_tune.apply_profile(model, {shown!r}))")
    for stage in outcome.stages:
        shown = ", ".join(_short(path) for path in stage.plots[:show_plots]) if stage.plots else "(no plots yet)"
        print(f"plots of {stage.study}: {shown}")
    print(f"dashboards: ct-tune ui --tracking-uri '{outcome.tracking_uri}'")


def _short(path: str) -> str:
    """A path relative to the working directory when it lies below it (what a user would type)."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def outcome_payload(outcome: PipelineOutcome) -> dict[str, Any]:
    return {
        "pipeline": outcome.name,
        "stages": [stage.__dict__ for stage in outcome.stages],
        "report": outcome.report,
        "profile": outcome.profile_path,
        "tracking_uri": outcome.tracking_uri,
    }


def _run(args: argparse.Namespace) -> CommandResult:
    from ct_tune.pipeline import load_pipeline

    pipeline = load_pipeline(args.file)
    outcome = run_pipeline(pipeline, RunOptions.from_args(args), storage=args.storage, tracking_uri=args.tracking_uri)
    return CommandResult(outcome_payload(outcome), lambda: render_outcome(outcome))
