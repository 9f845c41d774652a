"""``ct-tune study ...``: create, run, watch and use a search."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ct_tune._errors import InputError
from ct_tune.cli._common import CommandResult, add_command, add_group, print_table
from ct_tune.cli._study_common import (
    add_store_options,
    open_study,
    profile_text,
    render_best,
    short_list,
    tracker_for,
)
from ct_tune.cli._study_run import add_run_arguments, add_worker_arguments
from ct_tune.cli._study_run import run as run_command
from ct_tune.cli._study_run import worker as worker_command

DESCRIPTION = """\
A study searches CT betas for one model with Optuna and logs every trial to MLflow.

  ct-tune study create studies/digits-block.yaml     validate the spec, create the study
  ct-tune study run digits-block                     run trials (Ctrl-C stops; run again resumes)
  ct-tune study status digits-block                  counts, best values, where things are
  ct-tune study best digits-block                    the best trial, or the Pareto front
  ct-tune study export digits-block --out p.json     the best beta profile, for ct_tune.apply_profile
  ct-tune study report digits-block                  score the best profile(s) once on the test split
"""


def register(subparsers: Any) -> None:
    commands = add_group(subparsers, "study", help="create, run, inspect and export studies", description=DESCRIPTION)

    create = add_command(commands, "create", _create, help="validate a spec and create its study")
    create.add_argument("spec", help="study spec (YAML); see studies/ for examples")
    create.add_argument("--name", help="study name (default: the spec's name, else the file name)")
    create.add_argument("--resume-if-exists", action="store_true", help="reuse an existing study of the same name")
    add_store_options(create)

    run = add_command(commands, "run", run_command, help="run trials until the study's budget is used")
    add_run_arguments(run)
    add_store_options(run)

    worker = commands.add_parser("worker", add_help=False)  # started by `study run --workers N`; not for users
    add_worker_arguments(worker)
    add_store_options(worker)
    worker.set_defaults(handler=worker_command, json=False, verbose=0, quiet=0)

    for name, handler, text in (
        ("status", _status, "trial counts, best values and where the study is stored"),
        ("best", _best, "the best trial, or the Pareto front, as a table"),
    ):
        command = add_command(commands, name, handler, help=text)
        command.add_argument("study", help="study name, or the spec file it was created from")
        add_store_options(command)

    listing = add_command(commands, "list", _list, help="the studies in a storage")
    add_store_options(listing)

    delete = add_command(commands, "delete", _delete, help="delete a study (and archive its MLflow experiment)")
    delete.add_argument("study", help="study name")
    delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    add_store_options(delete)

    export = add_command(commands, "export", _export, help="write a trial's beta profile as JSON")
    export.add_argument("study", help="study name, or the spec file it was created from")
    export.add_argument("--trial", type=int, help="trial number (default: the best trial)")
    export.add_argument("--out", help="output file (default: profiles/<study>-trial<N>.json)")
    add_store_options(export)

    report = add_command(commands, "report", _report, help="score the best trial(s) once on the test split")
    report.add_argument("study", help="study name, or the spec file it was created from")
    report.add_argument("--trial", type=int, action="append", help="trial number(s) (default: best or Pareto front)")
    report.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the spec's)")
    add_store_options(report)


# --------------------------------------------------------------------------------------------------
# Locating a study
# --------------------------------------------------------------------------------------------------
# create
def _create(args: argparse.Namespace) -> CommandResult:
    from ct_tune.session import Session
    from ct_tune.spec import load_spec
    from ct_tune.storage import open_optuna_storage, redact, resolve_storage, resolve_tracking_uri
    from ct_tune.study import create_study
    from ct_tune.tracking import Tracker

    spec = load_spec(args.spec)
    name = args.name or spec.name or Path(args.spec).stem
    storage_url = resolve_storage(args.storage, spec.storage)
    tracking_uri = resolve_tracking_uri(args.tracking_uri, spec.tracking_uri)
    # Model and data first, then the Optuna storage: a bad checkpoint, dataset or storage URL fails
    # before the MLflow store is touched.
    session = Session.open(spec, device="cpu", steer=False)
    open_optuna_storage(storage_url)
    tracker = Tracker(tracking_uri, artifact_location=spec.artifact_location)
    info, created = create_study(
        spec=spec,
        name=name,
        storage_url=storage_url,
        tracker=tracker,
        units=session.units,
        meta=session.meta(),
        resume_if_exists=args.resume_if_exists,
    )
    from optuna.trial import TrialState

    waiting = len(info.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    payload = {
        "study": name,
        "created": created,
        "storage": redact(storage_url),
        "tracking_uri": redact(tracker.tracking_uri),
        "granularity": spec.search.granularity,
        "units": info.units,
        "objectives": dict(zip(spec.objective_names, spec.directions, strict=True)),
        "sampler": spec.sampler.name,
        "budget": spec.budget.n_trials,
        "enqueued": waiting,
        "mlflow_experiment_id": info.mlflow["experiment_id"],
        "mlflow_parent_run_id": info.mlflow["parent_run_id"],
    }

    def render() -> None:
        verb = "created" if created else "exists, resuming"
        print(f"study {name!r} {verb} in {payload['storage']}")
        print(f"  {len(info.units)} {spec.search.granularity} units: {short_list(info.units)}")
        objectives = ", ".join(f"{n} ({d})" for n, d in payload["objectives"].items())
        print(f"  objectives: {objectives}; sampler {spec.sampler.name}")
        print(f"  budget: {spec.budget.n_trials} trials, {waiting} enqueued first (ReLU baseline / paper grid)")
        print(f"  MLflow: {payload['tracking_uri']} (experiment {info.mlflow['experiment_id']})")
        print(
            f"next: ct-tune study run {name}" + ("" if args.storage is None else f" --storage '{payload['storage']}'")
        )

    return CommandResult(payload, render)


# --------------------------------------------------------------------------------------------------
# run
# --------------------------------------------------------------------------------------------------
# status, best, list
def _status(args: argparse.Namespace) -> CommandResult:
    from ct_tune.study import status

    info = open_study(args)
    payload = status(info)

    def render() -> None:
        trials = payload["trials"]
        print(f"study {info.name} in {payload['storage']}")
        print(
            f"  {payload['units']} {payload['granularity']} units; objectives "
            + ", ".join(f"{n} ({d})" for n, d in payload["objectives"].items())
        )
        shown = ", ".join(f"{k.lower()} {v}" for k, v in trials.items() if v)
        print(f"  trials: {shown or 'none yet'} (budget {payload['budget']})")
        print(f"  MLflow experiment {payload['mlflow_experiment_id']}, parent run {payload['mlflow_parent_run_id']}")
        render_best(info, payload)

    return CommandResult(payload, render)


def _best(args: argparse.Namespace) -> CommandResult:
    from ct_tune.study import status

    info = open_study(args)
    full = status(info)
    if not full["best"]:
        raise InputError(f"study {info.name!r} has no completed trial yet; run it with 'ct-tune study run {info.name}'")
    payload = {
        "study": info.name,
        "objectives": full["objectives"],
        "trials": full["best"],
        "baseline": full["baseline"],
    }
    return CommandResult(payload, lambda: render_best(info, full))


def _list(args: argparse.Namespace) -> CommandResult:
    from ct_tune.storage import redact, resolve_storage
    from ct_tune.study import list_studies

    storage_url = resolve_storage(args.storage)
    rows = list_studies(storage_url=storage_url)
    payload = {"storage": redact(storage_url), "studies": rows}

    def render() -> None:
        if not rows:
            print(f"no studies in {payload['storage']}")
            return
        print_table(
            f"studies in {payload['storage']}",
            ["name", "granularity", "objectives", "complete", "pruned", "failed", "running", "budget", "created"],
            [
                [
                    r["name"],
                    r["granularity"],
                    ",".join(o or "?" for o in r["objectives"]),
                    r["complete"],
                    r["pruned"],
                    r["failed"],
                    r["running"],
                    r["budget"],
                    r["created"],
                ]
                for r in rows
            ],
        )

    return CommandResult(payload, render)


# --------------------------------------------------------------------------------------------------
# delete, export
def _delete(args: argparse.Namespace) -> CommandResult:
    from ct_tune.storage import resolve_storage
    from ct_tune.study import delete_study, load_study

    storage_url = resolve_storage(args.storage)
    info = load_study(name=args.study, storage_url=storage_url)
    if not args.yes:
        if not sys.stdin.isatty():
            raise InputError(f"deleting study {args.study!r} needs confirmation: add --yes")
        answer = input(f"delete study {args.study!r} and archive its MLflow experiment? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            raise InputError("not deleted")
    tracker = tracker_for(args, info)
    payload = delete_study(name=args.study, storage_url=storage_url, tracker=tracker)

    def render() -> None:
        print(f"deleted study {args.study!r} ({payload['trials']} trials)")
        if payload["mlflow_experiment_deleted"]:
            print(
                f"  MLflow experiment {payload['mlflow_experiment_deleted']} archived (restorable from the MLflow UI)"
            )

    return CommandResult(payload, render)


def _export(args: argparse.Namespace) -> CommandResult:
    from ct_tune.study import choose_trial, export_profile

    info = open_study(args)
    trial = choose_trial(info, args.trial)
    profile = export_profile(info, trial)
    path = Path(args.out or f"profiles/{info.name}-trial{trial.number}.json")
    profile.save(path)
    payload = {"study": info.name, "trial": trial.number, "path": str(path), "profile": profile.to_dict()}

    def render() -> None:
        values = ", ".join(f"{k}={v:.4f}" for k, v in profile.metadata["values"].items())
        print(f"wrote {path}: trial {trial.number} of {info.name} ({values})")
        print(f"  {profile.describe()}")
        print(f"  apply it: ct_tune.apply_profile(model, {str(path)!r})")

    return CommandResult(payload, render)


# --------------------------------------------------------------------------------------------------
# report: the only command that reads the test split
def _report(args: argparse.Namespace) -> CommandResult:
    from ct_tune.report import report_study

    info = open_study(args)
    tracker = tracker_for(args, info)
    result = report_study(info, tracker, trial_numbers=args.trial, device=args.device)

    def render() -> None:
        names = info.objective_names
        rows = []
        for row in result["trials"]:
            label = f"{row['number']} (ReLU)" if row["is_baseline"] else str(row["number"])
            rows.append(
                [
                    label,
                    *(row["val"].get(n) for n in names),
                    *(row["test"].get(n) for n in names),
                    profile_text(row["betas"], limit=6),
                ]
            )
        columns = ["trial", *(f"val {n}" for n in names), *(f"test {n}" for n in names), "beta per unit"]
        print_table(f"test-split report of {info.name} ({result['test_samples']} test samples)", columns, rows)
        print(f"logged to MLflow run {info.mlflow['parent_run_id']} (test.* metrics)")

    return CommandResult(result, render)
