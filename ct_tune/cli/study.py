"""``ct-tune study ...``: create, run, watch and use a search."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from ct_tune._errors import InputError
from ct_tune.cli._common import CommandResult, add_command, print_table

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
    group = subparsers.add_parser(
        "study",
        help="create, run, inspect and export studies",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    group.set_defaults(handler=lambda args: _group_usage(group))
    commands = group.add_subparsers(dest="study_command", metavar="COMMAND")

    create = add_command(commands, "create", _create, help="validate a spec and create its study")
    create.add_argument("spec", help="study spec (YAML); see studies/ for examples")
    create.add_argument("--name", help="study name (default: the spec's name, else the file name)")
    create.add_argument("--resume-if-exists", action="store_true", help="reuse an existing study of the same name")
    _stores(create)

    run = add_command(commands, "run", _run, help="run trials of a study until its budget is used")
    run.add_argument("study", help="study name, or the spec file it was created from")
    run.add_argument(
        "--n-trials", type=int, help="finish this many more trials in this launch (default: up to the spec's budget)"
    )
    run.add_argument("--timeout", help="stop starting trials after this long (seconds, or 30m, 2h)")
    run.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the spec's)")
    run.add_argument("--heartbeat", type=int, default=10, help="seconds between worker heartbeats (default 10)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    _stores(run)

    for name, handler, text in (
        ("status", _status, "trial counts, best values and where the study is stored"),
        ("best", _best, "the best trial, or the Pareto front, as a table"),
    ):
        command = add_command(commands, name, handler, help=text)
        command.add_argument("study", help="study name, or the spec file it was created from")
        _stores(command)

    listing = add_command(commands, "list", _list, help="the studies in a storage")
    _stores(listing)

    delete = add_command(commands, "delete", _delete, help="delete a study (and archive its MLflow experiment)")
    delete.add_argument("study", help="study name")
    delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    _stores(delete)

    export = add_command(commands, "export", _export, help="write a trial's beta profile as JSON")
    export.add_argument("study", help="study name, or the spec file it was created from")
    export.add_argument("--trial", type=int, help="trial number (default: the best trial)")
    export.add_argument("--out", help="output file (default: profiles/<study>-trial<N>.json)")
    _stores(export)

    report = add_command(commands, "report", _report, help="score the best trial(s) once on the test split")
    report.add_argument("study", help="study name, or the spec file it was created from")
    report.add_argument("--trial", type=int, action="append", help="trial number(s) (default: best or Pareto front)")
    report.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the spec's)")
    _stores(report)


def _stores(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage", help="Optuna storage URL (default: $CT_TUNE_STORAGE, else sqlite:///studies/optuna.db)"
    )
    parser.add_argument(
        "--tracking-uri",
        help="MLflow backend store (default: $MLFLOW_TRACKING_URI, else the one the study was created with)",
    )


def _group_usage(parser: argparse.ArgumentParser) -> CommandResult:
    parser.print_help(sys.stderr)
    raise SystemExit(2)


# --------------------------------------------------------------------------------------------------
# Locating a study
def _spec_file(text: str) -> Path | None:
    path = Path(text)
    return path if path.suffix in (".yaml", ".yml") and path.is_file() else None


def _name_and_storage(args: argparse.Namespace) -> tuple[str, str]:
    """A study given by name, or by the spec file it was created from (its name and storage)."""
    from ct_tune.spec import load_spec
    from ct_tune.storage import resolve_storage

    spec_path = _spec_file(args.study)
    if spec_path is None:
        return args.study, resolve_storage(args.storage)
    spec = load_spec(spec_path)
    return spec.name or spec_path.stem, resolve_storage(args.storage, spec.storage)


def _open(args: argparse.Namespace):
    from ct_tune.study import load_study

    name, storage_url = _name_and_storage(args)
    return load_study(name=name, storage_url=storage_url)


def _tracker(args: argparse.Namespace, info: Any):
    from ct_tune.storage import resolve_tracking_uri
    from ct_tune.tracking import Tracker

    uri = resolve_tracking_uri(args.tracking_uri, info.mlflow.get("tracking_uri"))
    if ":***@" in uri:
        raise InputError(
            f"study {info.name!r} logs to {uri}, whose password is not stored: pass --tracking-uri with it, set "
            "MLFLOW_TRACKING_URI, or keep the password in ~/.pgpass / PGPASSWORD"
        )
    return Tracker(uri, artifact_location=info.mlflow.get("artifact_location"))


# --------------------------------------------------------------------------------------------------
# create
def _create(args: argparse.Namespace) -> CommandResult:
    from ct_tune.session import Session
    from ct_tune.spec import load_spec
    from ct_tune.storage import redact, resolve_storage, resolve_tracking_uri
    from ct_tune.study import create_study
    from ct_tune.tracking import Tracker

    spec = load_spec(args.spec)
    name = args.name or spec.name or Path(args.spec).stem
    storage_url = resolve_storage(args.storage, spec.storage)
    tracking_uri = resolve_tracking_uri(args.tracking_uri, spec.tracking_uri)
    # Model and data first: a bad checkpoint or dataset must fail before any store is touched.
    session = Session.open(spec, device="cpu", steer=False)
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
        print(f"  {len(info.units)} {spec.search.granularity} units: {_short_list(info.units)}")
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
def _run(args: argparse.Namespace) -> CommandResult:
    import time

    from ct_tune.runner import RunSettings, TrialRunner, describe_trial
    from ct_tune.session import Session, StudyBench
    from ct_tune.study import counts, requeue_initial_trials

    if args.n_trials is not None and args.n_trials < 1:
        raise InputError(f"--n-trials must be at least 1, not {args.n_trials}")
    timeout = _duration(args.timeout)
    info = _open(args)
    tracker = _tracker(args, info)
    spec = info.spec
    state = counts(info)
    finished = state.get("COMPLETE", 0) + state.get("PRUNED", 0)
    target = finished + args.n_trials if args.n_trials is not None else spec.budget.n_trials
    timeout = timeout if timeout is not None else spec.budget.timeout
    if target is not None and finished >= target and args.n_trials is None:
        return _already_done(info, finished)

    requeued = requeue_initial_trials(info)
    session = Session.open(spec, device=args.device)
    expected = info.meta.get("fingerprint")
    if expected and session.trace.fingerprint != expected:
        raise InputError(
            f"the model now applies ReLU at other places than when study {info.name!r} was created "
            "(different architecture or checkpoint); create a new study for it"
        )
    progress = _Progress(total=None if target is None else target - finished, enabled=not args.no_progress)
    names = info.objective_names
    settings = RunSettings(
        target_total=target,
        deadline=None if timeout is None else time.time() + timeout,
        heartbeat_interval=args.heartbeat,
        on_trial=lambda line: progress.trial(line, describe_trial(line, names)),
    )
    runner = TrialRunner(info, StudyBench(session), tracker, settings)
    if requeued:
        progress.write(f"enqueued {requeued} baseline/grid trial(s) again: their earlier attempt failed")
    progress.write(
        f"study {info.name}: {len(info.units)} {spec.search.granularity} units on {session.device_label}, "
        f"{finished} trial(s) finished, target {target if target is not None else 'none'}"
        + (f", timeout {timeout:.0f}s" if timeout else "")
    )
    try:
        summary = runner.run()
    except KeyboardInterrupt:
        progress.close()
        print(
            f"ct-tune: interrupted; the running trial was marked FAIL. Resume with: ct-tune study run {info.name}",
            file=sys.stderr,
        )
        raise
    finally:
        progress.close()
        session.close()
    return _summary_result(info, summary.reason, summary.finished, summary.failed)


def _already_done(info: Any, finished: int) -> CommandResult:
    return _summary_result(info, f"budget already reached ({finished} trials); use --n-trials to run more", 0, 0)


def _summary_result(info: Any, reason: str, finished: int, failed: int) -> CommandResult:
    from ct_tune.study import status

    payload = status(info)
    payload.update({"stopped": reason, "finished_this_run": finished, "failed_this_run": failed})

    def render() -> None:
        print(f"study {info.name}: {reason}; {finished} trial(s) finished in this run, {failed} failed")
        _render_best(info, payload)

    return CommandResult(payload, render)


class _Progress:
    """A tqdm bar on stderr with a line per finished trial (or plain lines without a bar)."""

    def __init__(self, total: int | None, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            # disable=None: no bar when stderr is not a terminal (logs stay readable lines)
            self.bar = tqdm(total=total, unit="trial", file=sys.stderr, dynamic_ncols=True, leave=False, disable=None)

    def trial(self, line: dict[str, Any], text: str) -> None:
        self.write(text)
        if self.bar is not None and line["state"] in ("COMPLETE", "PRUNED"):
            self.bar.update(1)

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# --------------------------------------------------------------------------------------------------
# status, best, list
def _status(args: argparse.Namespace) -> CommandResult:
    from ct_tune.study import status

    info = _open(args)
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
        _render_best(info, payload)

    return CommandResult(payload, render)


def _best(args: argparse.Namespace) -> CommandResult:
    from ct_tune.study import status

    info = _open(args)
    full = status(info)
    if not full["best"]:
        raise InputError(f"study {info.name!r} has no completed trial yet; run it with 'ct-tune study run {info.name}'")
    payload = {
        "study": info.name,
        "objectives": full["objectives"],
        "trials": full["best"],
        "baseline": full["baseline"],
    }
    return CommandResult(payload, lambda: _render_best(info, full))


def _render_best(info: Any, payload: dict[str, Any]) -> None:
    best = payload.get("best") or []
    if not best:
        print("no completed trial yet")
        return
    names = info.objective_names
    baseline = payload.get("baseline")
    title = "Pareto front" if len(best) > 1 else "best trial"
    rows = []
    for trial in best:
        rows.append(
            [trial["number"], *(trial["values"].get(n) for n in names), trial["c"], _profile_text(trial["betas"])]
        )
    if baseline is not None:
        rows.append(
            [f"{baseline['number']} (ReLU)", *(baseline["values"].get(n) for n in names), baseline["c"], "all 1.0"]
        )
    print_table(f"{title} of {info.name}", ["trial", *names, "c", "beta per unit"], rows)


def _profile_text(betas: dict[str, float], limit: int = 12) -> str:
    items = [f"{unit} {value:.3f}" for unit, value in betas.items()]
    return ", ".join(items[:limit]) + (f", ... ({len(items)} units)" if len(items) > limit else "")


def _short_list(names: list[str], limit: int = 8) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


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
    tracker = _tracker(args, info)
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

    info = _open(args)
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

    info = _open(args)
    tracker = _tracker(args, info)
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
                    _profile_text(row["betas"], limit=6),
                ]
            )
        columns = ["trial", *(f"val {n}" for n in names), *(f"test {n}" for n in names), "beta per unit"]
        print_table(f"test-split report of {info.name} ({result['test_samples']} test samples)", columns, rows)
        print(f"logged to MLflow run {info.mlflow['parent_run_id']} (test.* metrics)")

    return CommandResult(result, render)


def _duration(text: str | None) -> float | None:
    if text is None:
        return None
    from ct_tune.spec import parse_duration

    try:
        value = parse_duration(text)
    except ValueError as error:
        raise InputError(f"--timeout: {error}") from None
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"--timeout must be positive, not {text!r}")
    return value
