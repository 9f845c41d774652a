"""How many workers one PostgreSQL server holds: the connections each worker holds, and the trials per
second the server sustains when every worker's trial is free (no model), so that only the stores' traffic
is measured.

    python benchmarks/postgres_capacity.py [--workers 1,8,64] [--seconds 20] [--mlflow direct|server]

A throw-away server (``tests/postgres.py``, with fsync on: the durability a real server has, and
PostgreSQL's default settings, so ``max_connections`` is 100) holds one Optuna storage and one MLflow
store, as a cluster study does. ``--mlflow direct`` (the default): every worker opens the MLflow database
itself, as ``--tracking-uri postgresql://...`` does. ``--mlflow server``: an ``mlflow server`` on loopback
holds MLflow's connections and the workers log to it over HTTP (docs/postgres_scale.md).

Each light worker is a process that makes a ct-tune trial's calls through ct-tune's own store layer, in
its order: ``ask`` on the heartbeat storage, ten betas suggested, the budget's state count, then inside a
heartbeat thread (``ct_tune.workers.Heartbeats``, which beats at once) an MLflow child run opened with its
params and tags, its id stored on the trial, ``tell``, and the run closed with its metrics and state. Worker
counts run one after another on the same server, each on fresh databases, and nothing but the workers (and
the MLflow server) holds a connection meanwhile. All workers start together once every one is connected;
each count reports the trials per second over its window, the median trial latency, the connections its
workers held (``pg_stat_activity`` by ``application_name``, sampled every half second: the median and the
largest sample, per worker), the largest number of connections on the server, and the workers that failed
(a "too many clients" refusal, say).

On a small machine the workers' own Python, not the server, runs out first: the figure is then a lower
bound on what the server sustains, and the latency column says when the server starts to queue.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ct_tune  # noqa: E402,F401  (first: makes torchvision importable)

from tests.postgres import PASSWORD, PostgresServer, find_bin_dir  # noqa: E402

STUDY = "capacity"
WORKER_NAME = "capacity worker"  # the workers' application_name
SERVER_NAME = "mlflow server"  # the MLflow server's
SAMPLE_SECONDS = 0.5
SERVER_WORKERS = 4  # the MLflow server's processes (gunicorn sync workers)


class DefaultServer(PostgresServer):
    """tests/postgres.py's server with PostgreSQL's own connection limit (the tests raise it to 200)."""

    def start(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root}"
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.root / "server.log"), "-o", options, "-w", "start")


def start_default_server(root: Path) -> DefaultServer | None:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        return None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = DefaultServer(bin_dir, root, port, "postgres" if os.geteuid() == 0 else None, durable=True)
    server.init()
    return server


# --------------------------------------------------------------------------------------------------
# In the worker processes
def light_worker(storage_url: str, tracking_uri: str, ids: dict, ready, go, stop, out) -> None:
    """One worker: set up, say ready (or why not), then run free trials from ``go`` to ``stop``; puts
    (latencies of the trials that ended in the window, the error that stopped it or None) on ``out``."""
    os.environ["PGAPPNAME"] = WORKER_NAME  # libpq reads it at every connect
    logging.getLogger("mlflow").setLevel(logging.ERROR)  # its retries of a refused connection: counted below
    try:
        study, storage, tracker = open_stores(storage_url, tracking_uri)
    except Exception as error:
        ready.put(f"{type(error).__name__}: {error}"[:300])
        return
    ready.put(None)
    go.wait()
    latencies: list[float] = []
    try:
        while not stop.is_set():
            started = time.perf_counter()
            one_trial(study, storage, tracker, ids)
            if not stop.is_set():
                latencies.append(time.perf_counter() - started)
    except Exception as error:
        out.put((latencies, f"{type(error).__name__}: {error}"[:300]))
        return
    out.put((latencies, None))


def open_stores(storage_url: str, tracking_uri: str):
    import warnings

    from ct_tune.stores import open_optuna_storage
    from ct_tune.tracking import Tracker

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore")  # "heartbeat ... used with Study.optimize": ct-tune beats itself, as here
    storage = open_optuna_storage(storage_url, heartbeat_interval=10, grace_period=60)
    study = optuna.load_study(study_name=STUDY, storage=storage, sampler=optuna.samplers.RandomSampler())
    return study, storage, Tracker(tracking_uri)


def one_trial(study, storage, tracker, ids: dict) -> None:
    from ct_tune.stores import count_states
    from ct_tune.workers import Heartbeats

    trial = study.ask()
    betas = {f"b{i:02d}": trial.suggest_float(f"b{i:02d}", 0.7, 1.0) for i in range(10)}
    count_states(storage, ids["study_id"])
    with Heartbeats(storage, [trial._trial_id]):
        run_id = tracker.start_trial_run(
            ids["experiment"],
            ids["parent"],
            study_name=STUDY,
            trial_number=trial.number,
            params=betas,
            tags={"ct_tune.kind": "x"},
        )
        trial.set_user_attr("mlflow_run_id", run_id)
        value = sum(betas.values()) / len(betas)
        study.tell(trial, value)
        tracker.finish_trial_run(run_id, state="COMPLETE", metrics={"accuracy": value})


def create_study(storage_url: str, tracking_uri: str, out) -> None:
    """The study, its experiment and parent run, made in a process of their own: its connections end
    with it, so only the workers' are counted."""
    from ct_tune.stores import open_optuna_storage
    from ct_tune.tracking import Tracker

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = open_optuna_storage(storage_url)
    study = optuna.create_study(study_name=STUDY, storage=storage)
    tracker = Tracker(tracking_uri)
    experiment = tracker.experiment_id(STUDY, create=True)
    parent = tracker.create_study_run(experiment, STUDY, params={}, spec={})
    out.put({"study_id": study._study_id, "experiment": experiment, "parent": parent})


# --------------------------------------------------------------------------------------------------
# In the benchmark's process
def connections(admin) -> tuple[int, int]:
    """(connections of the workers, connections on the server but ``admin``)."""
    return admin.execute(
        "SELECT count(*) FILTER (WHERE application_name = %s), count(*) FROM pg_stat_activity "
        "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
        (WORKER_NAME,),
    ).fetchone()


@contextlib.contextmanager
def mlflow_server(server: PostgresServer, database: str, root: Path):
    """``mlflow server`` on loopback over ``database``; yields its URL. The password reaches it in
    ``$PGPASSWORD``, never on its command line."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "PGPASSWORD": PASSWORD,
        "PGAPPNAME": SERVER_NAME,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", server.url(database, password=False)]
    # gunicorn's sync workers: one request at a time each, so each holds at most two connections (MLflow's
    # log_batch nests a session); uvicorn's default runs 40 request threads on a pool of 15, which starves
    # (measured: 30 of 64 light workers failed on "QueuePool limit of size 5 overflow 10 reached")
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(SERVER_WORKERS)]
    command += ["--gunicorn-opts", "--timeout 120"]
    command += ["--artifacts-destination", str(root / f"artifacts-{database}")]
    log = open(root / f"mlflow-server-{database}.log", "w")  # noqa: SIM115  (closed below)
    process = subprocess.Popen(command, env=env, stdout=log, stderr=log, process_group=0)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(process, url)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)
        process.wait()
        log.close()


def wait_until_up(process: subprocess.Popen, url: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"the MLflow server exited with code {process.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.5)
    sys.exit(f"the MLflow server did not answer within {seconds:.0f} s")


def measure(server: PostgresServer, workers: int, seconds: float, mlflow: str, root: Path) -> dict:
    storage_url = server.url(server.create_database("optuna"))
    tracking_db = server.create_database("mlflow")
    if mlflow == "server":
        with mlflow_server(server, tracking_db, root) as url:
            return run_workers(server, storage_url, url, workers, seconds)
    return run_workers(server, storage_url, server.url(tracking_db), workers, seconds)


def run_workers(server: PostgresServer, storage_url: str, tracking_uri: str, workers: int, seconds: float) -> dict:
    context = multiprocessing.get_context("spawn")
    created = context.Queue()
    setup = context.Process(target=create_study, args=(storage_url, tracking_uri, created))
    setup.start()
    ids = created.get(timeout=300)
    setup.join()
    ready, out = context.Queue(), context.Queue()
    go, stop = context.Event(), context.Event()
    processes = [
        context.Process(target=light_worker, args=(storage_url, tracking_uri, ids, ready, go, stop, out))
        for _ in range(workers)
    ]
    import psycopg

    # Connected first and held: once the workers fill the server, a new connection would be refused.
    admin = psycopg.connect(server.url("postgres").replace("+psycopg", ""), autocommit=True)
    for process in processes:
        process.start()
    refused = [reason for reason in (ready.get(timeout=900) for _ in processes) if reason is not None]
    running = workers - len(refused)
    samples = []
    go.set()
    window_end = time.monotonic() + seconds
    while time.monotonic() < window_end:
        samples.append(connections(admin))
        time.sleep(SAMPLE_SECONDS)
    stop.set()
    admin.close()
    results = [out.get(timeout=300) for _ in range(running)]
    for process in processes:
        process.join()
    latencies = [latency for found, _ in results for latency in found]
    failed = refused + [error for _, error in results if error is not None]
    held = [count for count, _ in samples]
    return {
        "workers": workers,
        "trials_per_second": len(latencies) / seconds,
        "median_latency_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
        "per_worker_median": statistics.median(held) / workers,
        "per_worker_max": max(held) / workers,
        "server_max": max(total for _, total in samples),
        "failed": failed,
    }


HEADER = (
    f"{'workers':>8} {'trials/s':>9} {'median trial (ms)':>18} {'per worker (median)':>20} "
    f"{'per worker (max)':>17} {'server (max)':>13} {'failed':>7}"
)


def line(row: dict) -> str:
    return (
        f"{row['workers']:>8} {row['trials_per_second']:>9.1f} {row['median_latency_ms']:>18.0f} "
        f"{row['per_worker_median']:>20.2f} {row['per_worker_max']:>17.2f} {row['server_max']:>13} "
        f"{len(row['failed']):>7}"
    )


def show(rows: list[dict], max_connections: str, mlflow: str) -> None:
    print(f"PostgreSQL max_connections = {max_connections}; MLflow: {mlflow}")
    print(HEADER)
    for row in rows:
        print(line(row))
    for row in rows:
        for reason in sorted(set(row["failed"])):
            shown = reason.replace(PASSWORD, "***")  # no driver message is known to hold it: never print it
            print(f"{row['workers']} workers: {row['failed'].count(reason)} failed: {shown}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,8,64", help="worker counts, comma-separated")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window per worker count")
    parser.add_argument(
        "--mlflow", choices=("direct", "server"), default="direct", help="workers open MLflow's database, or a server"
    )
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]

    root = Path(tempfile.mkdtemp(prefix="ct-tune-capacity-"))
    root.chmod(0o755)
    server = start_default_server(root / "cluster")
    if server is None:
        sys.exit("needs PostgreSQL's server binaries (pg_ctl, initdb); .ci/run shows how to install them")
    try:
        import psycopg

        with psycopg.connect(server.url("postgres").replace("+psycopg", "")) as connection:
            max_connections = connection.execute("SHOW max_connections").fetchone()[0]
        rows = []
        for n in counts:
            rows.append(measure(server, n, args.seconds, args.mlflow, root))
            print(line(rows[-1]), file=sys.stderr, flush=True)  # as it comes: a long run shows progress
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    show(rows, max_connections, args.mlflow)


if __name__ == "__main__":
    main()
