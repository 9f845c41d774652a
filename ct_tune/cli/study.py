"""``ct-tune study ...``: create, run, watch and use a search (each command one call of ``ct_tune.search``)."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from ct_tune import InputError
from ct_tune._names import profile_path
from ct_tune.cli._common import CommandResult, add_command, add_group, print_table
from ct_tune.cli._evidence import evidence_cells, evidence_columns, print_evidence
from ct_tune.cli._study_common import (
    add_executor_options,
    add_store_options,
    add_worker_options,
    executor_options,
    parse_timeout,
    profile_text,
    render_best,
    short_list,
    summary_result,
    worker_options,
)

DESCRIPTION = """\
A study searches CT betas for one model with Optuna and logs every trial to MLflow.

  ct-tune study create studies/digits-block.yaml     validate the spec, create the study
  ct-tune study run digits-block                     run trials (Ctrl-C stops; run again resumes)
  ct-tune study status digits-block                  counts, best values, where things are
  ct-tune study best digits-block                    the best trial, or the Pareto front
  ct-tune study export digits-block --out p.json     the best beta profile, for ct_tune.apply_profile
  ct-tune study report digits-block                  score the best profile(s) once on the test split

The same from Python: ct_tune.create_study(...), ct_tune.load_study(...).run(), .best(), .export(), .report().
"""

STUDY_ARGUMENT = "study name, or the spec file it was created from"


def register(subparsers: Any) -> None:
    commands = add_group(subparsers, "study", help="create, run, inspect and export studies", description=DESCRIPTION)

    create = add_command(commands, "create", _create, help="validate a spec and create its study")
    create.add_argument("spec", help="study spec (YAML); see studies/ for examples")
    create.add_argument("--name", help="study name (default: the spec's name, else the file name)")
    create.add_argument("--resume-if-exists", action="store_true", help="reuse an existing study of the same name")
    add_store_options(create)

    run = add_command(commands, "run", _run, help="run trials until the study's budget is used")
    run.add_argument("study", help=STUDY_ARGUMENT)
    run.add_argument(
        "--n-trials", type=int, help="finish this many more trials in this launch (default: the spec's budget)"
    )
    run.add_argument("--timeout", help="stop starting trials after this long (seconds, or 30m, 2h)")
    add_worker_options(run)
    add_store_options(run)
    add_executor_options(run)

    for name, handler, text in (
        ("status", _status, "trial counts, best values and where the study is stored"),
        ("best", _best, "the best trial, or the Pareto front, as a table"),
    ):
        command = add_command(commands, name, handler, help=text)
        command.add_argument("study", help=STUDY_ARGUMENT)
        add_store_options(command)

    listing = add_command(commands, "list", _list, help="the studies in a storage")
    add_store_options(listing)

    delete = add_command(commands, "delete", _delete, help="delete a study (and archive its MLflow experiment)")
    delete.add_argument("study", help="study name")
    delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    delete.add_argument(
        "--force", action="store_true", help="delete a study a launch runs now (the launch then stops, exit 4)"
    )
    add_store_options(delete)

    export = add_command(commands, "export", _export, help="write a trial's beta profile as JSON")
    export.add_argument("study", help=STUDY_ARGUMENT)
    export.add_argument("--trial", type=int, help="trial number (default: the best trial)")
    export.add_argument("--out", help="output file (default: profiles/<study>-trial<N>.json)")
    add_store_options(export)

    report = add_command(commands, "report", _report, help="score the best trial(s) once on the test split")
    report.add_argument("study", help=STUDY_ARGUMENT)
    report.add_argument("--trial", type=int, action="append", help="trial number(s) (default: best or Pareto front)")
    report.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the spec's)")
    report.add_argument(
        "--reselect",
        type=int,
        metavar="K",
        help="report, of the K best trials by val, the one with the best mean rank over 200 bootstrap resamples "
        "of val (says which and why)",
    )
    add_store_options(report)


def _load(args: argparse.Namespace):
    from ct_tune.search import load_study

    return load_study(args.study, storage=args.storage, tracking_uri=args.tracking_uri)


# --------------------------------------------------------------------------------------------------
def _create(args: argparse.Namespace) -> CommandResult:
    from ct_tune.search import create_study

    study = create_study(
        args.spec,
        name=args.name,
        storage=args.storage,
        tracking_uri=args.tracking_uri,
        resume_if_exists=args.resume_if_exists,
    )
    from ct_tune.stores import redact

    waiting = study.counts()["WAITING"]
    created = not study.resumed
    spec = study.spec
    payload = {
        "study": study.name,
        "created": created,
        "storage": redact(study.storage_url),
        "tracking_uri": redact(study.tracking_uri),
        "granularity": spec.search.granularity,
        "units": study.units,
        "objectives": dict(zip(spec.objective_names, spec.directions, strict=True)),
        "sampler": spec.sampler.name,
        "budget": spec.budget.n_trials,
        "enqueued": waiting,
        "mlflow_experiment_id": study.experiment_id,
        "mlflow_parent_run_id": study.parent_run_id,
    }

    def render() -> None:
        verb = "created" if created else "exists, resuming"
        print(f"study {study.name!r} {verb} in {payload['storage']}")
        print(f"  {len(study.units)} {spec.search.granularity} units: {short_list(study.units)}")
        objectives = ", ".join(f"{n} ({d})" for n, d in payload["objectives"].items())
        print(f"  objectives: {objectives}; sampler {spec.sampler.name}")
        first = f"{study.baseline_label} baseline / paper grid"
        print(f"  budget: {spec.budget.n_trials} trials, {waiting} enqueued first ({first})")
        print(f"  MLflow: {payload['tracking_uri']} (experiment {study.experiment_id})")
        print(f"next: ct-tune study run {_next_target(args, study)}")

    return CommandResult(payload, render)


def _next_target(args: argparse.Namespace, study) -> str:
    """How the next command finds the study: the spec file when it names the stores, else name and storage
    (without its password, which ~/.pgpass, PGPASSWORD or --storage give)."""
    from ct_tune.stores import without_password

    if args.storage is None and args.name is None and (study.spec.storage or study.spec.tracking_uri):
        return shlex.quote(args.spec)  # pasted into a shell: a path with spaces or quotes stays one word
    if args.storage is None and study.spec.storage is None:
        return study.name
    return f"{study.name} --storage {shlex.quote(without_password(study.storage_url))}"


def _run(args: argparse.Namespace) -> CommandResult:
    study = _load(args)
    summary = study.run(
        n_trials=args.n_trials, timeout=parse_timeout(args.timeout), **worker_options(args), **executor_options(args)
    )
    return summary_result(study, summary)


def _status(args: argparse.Namespace) -> CommandResult:
    study = _load(args)
    payload = study.status().to_dict()

    def render() -> None:
        trials = payload["trials"]
        print(f"study {study.name} in {payload['storage']}")
        print(
            f"  {payload['units']} {payload['granularity']} units; objectives "
            + ", ".join(f"{n} ({d})" for n, d in payload["objectives"].items())
        )
        shown = ", ".join(f"{k.lower()} {v}" for k, v in trials.items() if v)
        print(f"  trials: {shown or 'none yet'} (budget {payload['budget']})")
        print(f"  MLflow experiment {payload['mlflow_experiment_id']}, parent run {payload['mlflow_parent_run_id']}")
        if payload["jobs"]:
            print_table(
                "SLURM jobs (latest first)",
                ["job", "cluster", "workers", "submitted", "state"],
                [
                    [
                        job["job_id"],
                        job["cluster"],
                        short_list([str(w) for w in job["workers"]]),
                        job["submitted"],
                        job["state"],
                    ]
                    for job in reversed(payload["jobs"])
                ],
            )
        render_best(study.objective_names, study.name, payload)

    return CommandResult(payload, render)


def _best(args: argparse.Namespace) -> CommandResult:
    study = _load(args)
    status = study.status().to_dict()
    if not status["best"]:
        raise InputError(
            f"study {study.name!r} has no completed trial yet; run it with 'ct-tune study run {study.name}'"
        )
    payload = {
        "study": study.name,
        "objectives": status["objectives"],
        "trials": status["best"],
        "baseline": status["baseline"],
    }
    return CommandResult(payload, lambda: render_best(study.objective_names, study.name, status))


def _list(args: argparse.Namespace) -> CommandResult:
    from ct_tune.search import list_studies
    from ct_tune.stores import redact, resolve_storage

    rows = list_studies(storage=args.storage)
    payload = {"storage": redact(resolve_storage(args.storage)), "studies": rows}

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


def _delete(args: argparse.Namespace) -> CommandResult:
    from ct_tune.search import delete_study, study_to_delete

    target = study_to_delete(args.study, storage=args.storage)
    what = "" if target["complete"] else " (not a complete ct-tune study: a plain Optuna study or an unfinished create)"
    if not args.yes:
        if not sys.stdin.isatty():
            raise InputError(f"deleting study {args.study!r}{what} needs confirmation: add --yes")
        answer = input(f"delete study {args.study!r}{what} and archive its MLflow experiment? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            raise InputError("not deleted")
    payload = delete_study(args.study, storage=args.storage, tracking_uri=args.tracking_uri, force=args.force)

    def render() -> None:
        print(f"deleted study {args.study!r}{what} ({payload['trials']} trials)")
        if payload.get("live_trials"):
            print(f"  {payload['live_trials']} trial(s) were running: their launch stops with exit 4")
        if payload["mlflow_experiment_deleted"]:
            print(
                f"  MLflow experiment {payload['mlflow_experiment_deleted']} archived (restorable from the MLflow UI)"
            )

    return CommandResult(payload, render)


def _export(args: argparse.Namespace) -> CommandResult:
    study = _load(args)
    trial = study.chosen(args.trial)
    path = args.out or profile_path(study.name, trial.number)
    profile = study.export(path, trial=trial.number)
    payload = {"study": study.name, "trial": trial.number, "path": str(path), "profile": profile.to_dict()}

    def render() -> None:
        values = ", ".join(f"{k}={v:.4f}" for k, v in profile.metadata["values"].items())
        print(f"wrote {path}: trial {trial.number} of {study.name} ({values})")
        print(f"  {profile.describe()}")
        print(f"  apply it: ct_tune.apply_profile(model, {str(path)!r})")

    return CommandResult(payload, render)


def _report(args: argparse.Namespace) -> CommandResult:
    study = _load(args)
    report = study.report(trials=args.trial, device=args.device, reselect=args.reselect)

    def render() -> None:
        names = study.objective_names
        roles = {"baseline": f" ({study.baseline_label})", "best global": " (best global)"}
        rows = []
        for row in report.trials:
            rows.append(
                [
                    f"{row.number}{roles.get(row.role, '')}",
                    *(row.val.get(n) for n in names),
                    *evidence_cells(row, names),
                    profile_text(row.betas, limit=6),
                ]
            )
        columns = ["trial", *(f"val {n}" for n in names), *evidence_columns(names), "beta per unit"]
        print_table(f"test-split report of {study.name} ({report.test_samples} test samples)", columns, rows)
        print_evidence(
            report.trials,
            names,
            label=lambda row: f"trial {row.number}{roles.get(row.role, '')}",
            evidence=report.evidence,
            global_note=report.global_reference.get("note", ""),
            relu_note=report.relu_reference.get("note", ""),
        )
        if report.reselection:
            print(f"reselected trial {report.reselection['picked']}: {report.reselection['why']}")
            ranks = ", ".join(
                f"#{c['number']} {c['val']:.4f} rank {c['mean_rank']:.2f}" for c in report.reselection["candidates"]
            )
            print(f"candidates (val {report.reselection['objective']}, mean rank): {ranks}")
        print(f"logged to MLflow run {study.parent_run_id} (test.* metrics)")

    return CommandResult(report.to_dict(), render)
