"""``ct-tune pipeline run FILE``: the stages of a pipeline, in order, then the test-split report.

Each stage is a study named <pipeline>.<stage>; a stage may warm-start from an earlier one's best
profile. Run it again and it resumes (finished stages are skipped). --seeds 0,1,2 runs the whole
pipeline once per seed (studies <pipeline>-s<seed>.<stage>) and reports each profile's gain over ReLU
with a t-interval over the seeds. The same from Python:
ct_tune.run_pipeline("pipelines/digits-to-mnist5k-transfer.yaml", workers=2, seeds=[0, 1, 2]).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from ct_tune.cli._common import CommandResult, add_command, add_group, print_table
from ct_tune.cli._evidence import evidence_cells, evidence_columns, print_evidence
from ct_tune.cli._study_common import (
    add_executor_options,
    add_worker_options,
    executor_options,
    profile_text,
    worker_options,
)


def register(subparsers: Any) -> None:
    commands = add_group(
        subparsers,
        "pipeline",
        help="run several studies in order (global, then per block, then the report)",
        description=__doc__,
    )
    run = add_command(commands, "run", _run, help="run every stage (resumable), then report on the test split")
    run.add_argument("file", help="pipeline file (YAML); see pipelines/ for examples")
    run.add_argument(
        "--seeds",
        help="replicates: run the pipeline once per seed (split, samplers, trained stages), e.g. 0,1,2, "
        "then report over the seeds",
    )
    run.add_argument("--trials", type=int, help="every search stage's trial budget (default: the pipeline's)")
    add_worker_options(run)
    run.add_argument("--storage", help="Optuna storage (default: the pipeline's, else sqlite:///studies/optuna.db)")
    run.add_argument("--tracking-uri", help="MLflow store (default: the pipeline's, else sqlite:///mlruns/mlflow.db)")
    add_executor_options(run)


def _run(args: argparse.Namespace) -> CommandResult:
    from ct_tune.pipelines import parse_seeds, run_pipeline

    seeds = None if args.seeds is None else parse_seeds(args.seeds)
    executor = executor_options(args)
    executor.pop("wait", None)  # every stage is waited for: the next one starts from it
    stores = {"storage": args.storage, "tracking_uri": args.tracking_uri}
    if seeds is not None:
        replicates = run_pipeline(
            args.file, seeds=seeds, trials=args.trials, **stores, **worker_options(args), **executor
        )
        return CommandResult(replicates.to_dict(), lambda: render_replicates(replicates))
    result = run_pipeline(args.file, trials=args.trials, **stores, **worker_options(args), **executor)
    return CommandResult(result.to_dict(), lambda: render_pipeline(result))


def render_replicates(result: Any) -> None:
    """The table over seeds: each profile's test value per seed, its paired gain over ReLU per seed, the mean
    gain with its t-interval over seeds, the seeds where it gained, and the verdict."""
    seeds = ", ".join(map(str, result.seeds))
    rows = []
    for row in result.rows:
        gain = row.gain
        interval = "" if gain is None or gain.low is None else f"[{gain.low:+.4f}, {gain.high:+.4f}]"
        rows.append(
            [
                row.profile,
                row.stage,
                row.objective,
                " ".join(f"{value.test:.4f}" for value in row.values),
                row.test_mean,
                "" if gain is None else " ".join(f"{value:+.4f}" for value in gain.gains),
                "" if gain is None else f"{gain.mean:+.4f}",
                interval,
                "" if gain is None else f"{gain.positive}/{len(gain.gains)}",
                "reference" if gain is None else gain.verdict,
            ]
        )
    columns = ["profile", "stage", "objective", f"test (seeds {seeds})", "mean", "gain per seed", "mean gain"]
    columns += ["95% t over seeds", "gained", "verdict"]
    print_table(f"pipeline {result.name}: {len(result.seeds)} seed(s)", columns, rows)
    print(
        "gain: the profile's test value minus the baseline's (ReLU, or the network's own activation) on the "
        "same test samples of that seed "
        "(positive = better); interval: Student t over seeds; each seed's own report (paired bootstrap "
        "intervals, McNemar) is in --json under runs"
    )
    for seed, run in result.runs.items():
        print(f"seed {seed}: studies {', '.join(stage.study for stage in run.stages)}")
    for path in result.plots:
        print(f"plot of gains per seed: {_short(path)}")
    print(f"dashboards: ct-tune ui --tracking-uri '{result.tracking_uri}' (run {result.run_id} holds the report)")


def render_pipeline(result: Any, *, show_plots: int = 4) -> None:
    """The report table (ReLU baseline, then each reported stage's best), the profile, plots, dashboards."""
    names = result.objective_names
    rows = []
    for row in result.report:
        rows.append(
            [
                _label(row),
                f"{row.stage} #{row.number}",
                *(row.val.get(n) for n in names),
                *evidence_cells(row, names),
                profile_text(row.betas, limit=8),
            ]
        )
    columns = ["profile", "trial", *(f"val {n}" for n in names), *evidence_columns(names), "beta per unit"]
    print_table(f"pipeline {result.name}", columns, rows)
    evidence = result.evidence
    note = _against(evidence.get("global_reference", {}))
    print_evidence(result.report, names, label=_label, evidence=evidence.get("evidence", {}), global_note=note)
    if result.profile_path:
        shown = _short(result.profile_path)
        print(f"best profile: {shown}   (ct_tune.apply_profile(model, {shown!r}))")
    for stage in result.stages:
        shown = ", ".join(_short(path) for path in stage.plots[:show_plots]) if stage.plots else "(no plots yet)"
        print(f"plots of {stage.study}: {shown}")
    print(f"dashboards: ct-tune ui --tracking-uri '{result.tracking_uri}'")


def _label(row: Any) -> str:
    return f"{row.baseline_label} baseline" if row.is_baseline else f"best {row.granularity}"


def _against(notes: dict[str, Any]) -> str:
    """What each stage's 'vs best global' is against, once when every stage says the same."""
    texts = {stage: note.get("note", "") for stage, note in notes.items()}
    if len(set(texts.values())) == 1:
        return next(iter(texts.values()), "")
    return "; ".join(f"{stage}: {text}" for stage, text in texts.items())


def _short(path: str) -> str:
    """A path relative to the working directory when it lies below it (what a user would type)."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative
