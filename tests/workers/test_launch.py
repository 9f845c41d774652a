"""``launch`` with a tiny worker module written by the test: settings on stdin (never on the command line),
events relayed, exit codes, log files per launch, unreadable events skipped, Ctrl-C and SIGTERM."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ct_tune.workers import EVENT_PREFIX, WorkerPlan, launch

import pytest

from tests.conftest import SOURCE_ROOT
from tests.helpers import read_until, spawn

SECRET = "pw-Only-On-Stdin-4217"

# No ct_tune import in the worker: it starts in ~50 ms instead of seconds (the protocol is tested apart).
WORKER = """
import json, os, signal, sys, time

PREFIX = {prefix!r}


def emit(kind, **payload):
    sys.stdout.write(PREFIX + json.dumps({{"event": kind, **payload}}) + "\\n")
    sys.stdout.flush()


if os.environ.get("TINY_DIE_AT_ONCE"):
    sys.exit(int(os.environ["TINY_DIE_AT_ONCE"]))
settings = json.loads(sys.stdin.read())
mode = settings["mode"]
if mode == "slow-start":  # still setting up (importing torch, loading a model) when the Ctrl-C comes
    with open(os.path.join(settings["pids"], str(settings["index"])), "w") as pid_file:
        pid_file.write(str(os.getpid()))
    time.sleep(120)
if mode == "signals":
    def stop(signum, frame):
        print(f"worker {{settings['index']}} got {{signal.Signals(signum).name}}", file=sys.stderr, flush=True)
        sys.exit(128 + signum)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
emit("ready", pid=os.getpid(), index=settings["index"])
print(f"worker {{settings['index']}} log line", file=sys.stderr, flush=True)
if mode == "normal":
    print("a library printing to stdout")
    emit("trial", number=settings["index"] * 10, env={{k: os.environ.get(k) for k in settings["env_keys"]}})
    sys.stdout.write(PREFIX + "{{this is not json\\n")
    sys.stdout.flush()
    emit("trial", number=settings["index"] * 10 + 1, settings=settings)
    emit("summary", finished=2, reason="budget reached")
    sys.exit(settings["exit"])
if mode == "wait":
    while not os.path.exists(settings["go"]):
        time.sleep(0.02)
    emit("summary", finished=0)
if mode == "signals":
    while True:
        time.sleep(0.05)
"""


@pytest.fixture
def worker_module(tmp_path: Path) -> tuple[str, dict[str, str]]:
    package = tmp_path / "workerpkg"
    package.mkdir()
    (package / "tiny_worker.py").write_text(WORKER.format(prefix=EVENT_PREFIX))
    return "tiny_worker", {"PYTHONPATH": str(package)}


def cpu_plans(n: int, threads: int = 1) -> list[WorkerPlan]:
    return [WorkerPlan(i, "cpu", None, threads) for i in range(n)]


def test_events_exit_codes_logs_and_environment(tmp_path, worker_module, caplog):
    module, env = worker_module
    plans = [WorkerPlan(0, "cpu", None, 2), WorkerPlan(1, "cuda", "3", 1)]
    asked: list[int] = []
    events: list[tuple[int, dict]] = []

    def settings(plan: WorkerPlan) -> dict:
        asked.append(plan.index)
        return {
            "mode": "normal",
            "index": plan.index,
            "exit": 7 * plan.index,
            "storage_url": f"postgresql://ctune:{SECRET}@db/optuna",
            "env_keys": ["OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "PYTHONUNBUFFERED", "EXTRA"],
        }

    sigterm = signal.getsignal(signal.SIGTERM)
    with caplog.at_level(logging.WARNING, logger="ct_tune.workers._launch"):
        result = launch(
            module,
            plans,
            settings=settings,
            log_dir=tmp_path / "logs",
            on_event=lambda index, event: events.append((index, event)),
            env={**env, "EXTRA": "given"},
        )
    assert signal.getsignal(signal.SIGTERM) == sigterm  # the launcher's own handler is gone again
    assert asked == [0, 1] and not result.interrupted
    assert result.exit_codes == {0: 0, 1: 7}
    for index in (0, 1):  # in order per worker, every event once, nothing that was not an event
        kinds = [event["event"] for i, event in events if i == index]
        assert kinds == ["ready", "trial", "trial", "summary"]
        assert [e["number"] for i, e in events if i == index and e["event"] == "trial"] == [10 * index, 10 * index + 1]
    assert result.summaries == {i: {"event": "summary", "finished": 2, "reason": "budget reached"} for i in (0, 1)}
    environments = {i: e["env"] for i, e in events if e.get("env")}
    assert environments[0] == {
        "OMP_NUM_THREADS": "2",
        "MKL_NUM_THREADS": "2",
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "PYTHONUNBUFFERED": "1",
        "EXTRA": "given",
    }
    assert environments[1]["CUDA_VISIBLE_DEVICES"] == "3" and environments[1]["OMP_NUM_THREADS"] == "1"
    received = [e["settings"] for i, e in events if i == 1 and "settings" in e]
    assert received == [settings(plans[1])]  # the whole document arrived on stdin
    unreadable = [r.getMessage() for r in caplog.records if "unreadable event" in r.getMessage()]
    expected = [f"worker {i} sent an unreadable event: {EVENT_PREFIX}{{this is not json" for i in (0, 1)]
    assert sorted(unreadable) == expected

    assert result.log_files == {i: tmp_path / "logs" / f"worker-{i}.log" for i in (0, 1)}
    log = result.log_files[1].read_text().splitlines()
    assert log[0].startswith("===== launch ") and log[0].endswith(": worker 1 on cuda, 1 thread(s) =====")
    assert log[1:] == ["worker 1 log line"]
    assert SECRET not in result.log_files[0].read_text() + result.log_files[1].read_text()


def test_logs_are_appended_per_launch(tmp_path, worker_module):
    module, env = worker_module
    for _ in range(2):
        launch(
            module,
            cpu_plans(1),
            settings=lambda plan: {"mode": "normal", "index": 0, "exit": 0, "env_keys": []},
            log_dir=tmp_path / "logs",
            on_event=lambda index, event: None,
            env=env,
        )
    lines = (tmp_path / "logs/worker-0.log").read_text().splitlines()
    assert [line.startswith("===== launch ") for line in lines] == [True, False, True, False]
    assert lines[1] == lines[3] == "worker 0 log line"


def test_settings_never_reach_the_command_line_or_environment(tmp_path, worker_module):
    module, env = worker_module
    go = tmp_path / "go"
    seen: dict[int, tuple[bytes, bytes]] = {}

    def on_event(index: int, event: dict) -> None:
        if event["event"] == "ready":  # the child is running: read what other users of the machine can read
            pid = event["pid"]
            seen[index] = (Path(f"/proc/{pid}/cmdline").read_bytes(), Path(f"/proc/{pid}/environ").read_bytes())
            if len(seen) == 2:
                go.touch()

    result = launch(
        module,
        cpu_plans(2),
        settings=lambda plan: {"mode": "wait", "index": plan.index, "go": str(go), "password": SECRET},
        log_dir=tmp_path / "logs",
        on_event=on_event,
        env=env,
    )
    assert result.exit_codes == {0: 0, 1: 0} and len(seen) == 2
    for cmdline, environ in seen.values():
        assert cmdline.split(b"\0")[:3] == [sys.executable.encode(), b"-m", module.encode()]
        assert SECRET.encode() not in cmdline and SECRET.encode() not in environ


def test_workers_that_die_at_start(tmp_path, worker_module):
    module, env = worker_module
    result = launch(
        module,
        cpu_plans(1),
        settings=lambda plan: {"mode": "normal", "padding": "x" * 1_000_000},  # more than a pipe buffer
        log_dir=tmp_path / "logs",
        on_event=lambda index, event: pytest.fail(f"no event expected: {event}"),
        env={**env, "TINY_DIE_AT_ONCE": "5"},  # exits before reading its settings: a broken pipe
    )
    assert result.exit_codes == {0: 5} and result.summaries == {}
    missing = launch(
        "no_such_worker_module",
        cpu_plans(1),
        settings=lambda plan: {},
        log_dir=tmp_path / "logs",
        on_event=lambda index, event: None,
    )
    assert missing.exit_codes == {0: 1}
    assert "No module named no_such_worker_module" in (tmp_path / "logs/worker-0.log").read_text()


LAUNCHER = """
import json, sys
from pathlib import Path
from ct_tune.workers import WorkerPlan, launch

def on_event(index, event):
    print("EVENT", index, event["event"], flush=True)

result = launch(
    "tiny_worker",
    [WorkerPlan(i, "cpu", None, 1) for i in range({workers})],
    settings=lambda plan: {{"mode": {mode!r}, "index": plan.index, "pids": {pids!r}}},
    log_dir=Path({log_dir!r}),
    on_event=on_event,
    env={{"PYTHONPATH": {package!r}}},
)
print("RESULT", json.dumps({{"interrupted": result.interrupted, "exit_codes": result.exit_codes}}), flush=True)
"""


def start_launcher(tmp_path: Path, env: dict, *, workers: int, mode: str, pids: Path | None = None):
    """The LAUNCHER script for ``workers`` tiny workers in ``mode``, started in its own process group (as a
    terminal starts a command)."""
    script = tmp_path / "launcher.py"
    script.write_text(
        LAUNCHER.format(
            log_dir=str(tmp_path / "logs"), package=env["PYTHONPATH"], workers=workers, mode=mode, pids=str(pids or "")
        )
    )
    return spawn(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SOURCE_ROOT)},
        start_new_session=True,
    )


@pytest.mark.parametrize(
    ("how", "worker_signal"),
    [("ctrl-c", "SIGINT"), ("sigterm", "SIGTERM")],
    ids=["ctrl-c-to-the-process-group", "sigterm-to-the-launcher-alone"],
)
def test_interrupting_the_launcher_stops_every_worker(tmp_path, worker_module, how, worker_signal):
    """Ctrl-C in a terminal reaches the whole process group; a scheduler's SIGTERM only the launcher, which
    forwards it. Either way every worker stops and the launcher reports the launch as interrupted."""
    _, env = worker_module
    proc = start_launcher(tmp_path, env, workers=2, mode="signals")
    try:
        seen: list[str] = []
        for _ in range(2):
            read_until(proc, r"^EVENT \d ready$", seen, timeout=120, stream="stdout")
        sent = time.monotonic()
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        elapsed = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err
    result = json.loads(out.split("RESULT", 1)[1])
    code = 128 + getattr(signal, worker_signal)
    assert result == {"interrupted": True, "exit_codes": {"0": code, "1": code}}
    assert elapsed < 8, elapsed  # stopped by the signal, not after the launcher's 10 s wait
    for index in (0, 1):
        assert f"worker {index} got {worker_signal}" in (tmp_path / f"logs/worker-{index}.log").read_text()


def test_ctrl_c_while_workers_start_stops_them_at_once(tmp_path, worker_module):
    """SIGINT to the launcher alone while its workers are still setting up: none has a trial, so none is
    waited for; every one started so far is gone within a few seconds (it was 10 s each before)."""
    _, env = worker_module
    pids = tmp_path / "pids"
    pids.mkdir()
    proc = start_launcher(tmp_path, env, workers=3, mode="slow-start", pids=pids)
    started: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(started) < 3:  # every worker runs, none is ready
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()[1] if proc.poll() else ""
            started = [int(f.read_text()) for f in pids.iterdir() if f.read_text()]
            time.sleep(0.05)
        sent = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        elapsed = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 0, err
    result = json.loads(out.split("RESULT", 1)[1])
    assert result == {"interrupted": True, "exit_codes": {str(i): -signal.SIGTERM for i in range(3)}}
    assert elapsed < 5, elapsed
    for pid in started:
        assert not Path(f"/proc/{pid}").exists()
