"""How many workers one PostgreSQL server holds: connections per worker, and the trials per second it
sustains when every worker's trial is free (no model), so that only the stores' traffic is measured.

    python benchmarks/postgres_capacity.py [--workers 1,2,4,8,16,32] [--seconds 20]

A throw-away server (``tests/postgres.py``, with fsync on: the durability a real server has) holds one
Optuna storage and one MLflow store, as a cluster study does. Each light worker is a process that makes a
ct-tune trial's calls through ct-tune's own store layer, in its order: ``ask`` on the heartbeat storage,
ten betas suggested, the budget's state count, an MLflow child run opened with its params and tags, a
heartbeat, ``tell``, the run closed with its metrics and state. Worker counts run one after another on
the same server, each on fresh databases; all workers start together once every one is connected, and
each count reports the trials per second over its window, the median trial latency, and the connections
the server held mid-window (``pg_stat_activity``) per worker.

On a small machine the workers' own Python, not the server, runs out first: the figure is then a lower
bound on what the server sustains, and the latency column says when the server starts to queue.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ct_tune  # noqa: E402,F401  (first: makes torchvision importable)

STUDY = "capacity"


def light_worker(storage_url: str, tracking_uri: str, experiment: str, parent: str, ready, go, stop, out) -> None:
    """One worker: set up, say ready, then run free trials from ``go`` to ``stop``; puts (latencies of the
    trials that ended in the window) on ``out``."""
    import warnings

    from ct_tune.stores import count_states, open_optuna_storage
    from ct_tune.tracking import Tracker

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore")  # "heartbeat ... used with Study.optimize": ct-tune beats itself, as here
    storage = open_optuna_storage(storage_url, heartbeat_interval=10, grace_period=60)
    study = optuna.load_study(study_name=STUDY, storage=storage, sampler=optuna.samplers.RandomSampler())
    tracker = Tracker(tracking_uri)
    study_id = storage.get_study_id_from_name(STUDY)
    ready.put(1)
    go.wait()
    latencies = []
    while not stop.is_set():
        started = time.perf_counter()
        trial = study.ask()
        betas = {f"b{i:02d}": trial.suggest_float(f"b{i:02d}", 0.7, 1.0) for i in range(10)}
        count_states(storage, study_id)
        run_id = tracker.start_trial_run(
            experiment, parent, study_name=STUDY, trial_number=trial.number, params=betas, tags={"ct_tune.kind": "x"}
        )
        trial.set_user_attr("mlflow_run_id", run_id)
        storage.record_heartbeat(trial._trial_id)
        value = sum(betas.values()) / len(betas)
        study.tell(trial, value)
        tracker.finish_trial_run(run_id, state="COMPLETE", metrics={"accuracy": value})
        if not stop.is_set():
            latencies.append(time.perf_counter() - started)
    out.put(latencies)


def connections(admin_url: str) -> int:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as connection:
        return connection.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname IS NOT NULL AND datname <> 'postgres'"
        ).fetchone()[0]


def measure(server, workers: int, seconds: float) -> dict:
    from ct_tune.tracking import Tracker

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage_url = server.url(server.create_database("optuna"))
    tracking_uri = server.url(server.create_database("mlflow"))
    optuna.create_study(study_name=STUDY, storage=storage_url)
    tracker = Tracker(tracking_uri)
    experiment = tracker.experiment_id(STUDY, create=True)
    parent = tracker.create_study_run(experiment, STUDY, params={}, spec={})
    context = multiprocessing.get_context("spawn")
    ready, out = context.Queue(), context.Queue()
    go, stop = context.Event(), context.Event()
    processes = [
        context.Process(target=light_worker, args=(storage_url, tracking_uri, experiment, parent, ready, go, stop, out))
        for _ in range(workers)
    ]
    for process in processes:
        process.start()
    for _ in processes:  # start-up (interpreters, imports, first connections) is not measured
        ready.get(timeout=600)
    go.set()
    time.sleep(seconds / 2)
    held = connections(server.url("postgres").replace("+psycopg", ""))
    time.sleep(seconds / 2)
    stop.set()
    latencies = [latency for _ in processes for latency in out.get(timeout=300)]
    for process in processes:
        process.join()
    return {
        "workers": workers,
        "trials_per_second": len(latencies) / seconds,
        "median_latency_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
        "connections": held,
        "connections_per_worker": held / workers,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2,4,8,16,32", help="worker counts, comma-separated")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window per worker count")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]

    from tests.postgres import start_server

    root = Path(tempfile.mkdtemp(prefix="ct-tune-capacity-"))
    root.chmod(0o755)
    server = start_server(root / "cluster", durable=True)
    if server is None:
        sys.exit("needs PostgreSQL's server binaries (pg_ctl, initdb); .ci/run shows how to install them")
    try:
        rows = [measure(server, n, args.seconds) for n in counts]
    finally:
        server.stop()
    print(f"{'workers':>8} {'trials/s':>9} {'median trial (ms)':>18} {'connections':>12} {'per worker':>11}")
    for row in rows:
        print(
            f"{row['workers']:>8} {row['trials_per_second']:>9.1f} {row['median_latency_ms']:>18.0f} "
            f"{row['connections']:>12} {row['connections_per_worker']:>11.1f}"
        )


if __name__ == "__main__":
    main()
