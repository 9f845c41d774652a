"""Several worker processes on one study: one per GPU, or N CPU processes sharing the cores.

The launcher (``ct-tune study run NAME --workers N``) prepares the study once (schema creation races
on both SQLite and PostgreSQL when several processes do it), computes the budget as an absolute number
of finished trials, then starts the workers as ``ct-tune study worker`` processes. Each loads the model
and data once and pulls trials until that number is reached by all of them together (see
``ct_tune.runner``). Storage URLs travel in the environment, never on the command line, where other
users could read them.

Each worker's log goes to ``<log_dir>/worker-<k>.log``; its finished trials come back as JSON lines on
its stdout and feed one combined progress view. Ctrl-C (or SIGTERM) on the launcher reaches every
worker; each fails its running trial and exits, and the launcher waits for them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ct_tune._errors import InputError

logger = logging.getLogger(__name__)

EVENT_PREFIX = "ct-tune-event "
STOP_GRACE_SECONDS = 60
OWN_SIGNAL_SECONDS = 10  # after a Ctrl-C, workers get this long to stop on the terminal's own signal
EXIT_DATABASE_LOST = 3  # a worker's exit code when its storage went away during the run


@dataclass(frozen=True)
class WorkerPlan:
    index: int
    device: str  # what the worker passes to torch: cpu, cuda
    visible_gpu: str | None  # CUDA_VISIBLE_DEVICES for the worker (one GPU each), None on CPU
    threads: int  # torch intra-op threads


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover  (not Linux)
        return os.cpu_count() or 1


def plan_workers(workers: int | None, devices: str) -> list[WorkerPlan]:
    """Workers per device: one per listed GPU, or ``workers`` CPU processes splitting the cores."""
    import torch

    devices = devices.strip().lower()
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be at least 1, not {workers}")
    if devices == "auto":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        devices = ",".join(f"cuda:{i}" for i in range(count)) if count else "cpu"
    if devices == "cpu":
        n = workers or 1
        threads = max(1, available_cores() // n)
        return [WorkerPlan(i, "cpu", None, threads) for i in range(n)]
    gpus = []
    for item in devices.split(","):
        item = item.strip()
        if item == "cuda":
            item = "cuda:0"
        if not item.startswith("cuda:") or not item[5:].isdigit():
            raise InputError(f"--devices: {item!r} is not cpu, auto, or a list like cuda:0,cuda:1")
        gpus.append(item[5:])
    if not torch.cuda.is_available():
        raise InputError(f"--devices {devices} asks for GPUs, but this machine has no usable CUDA GPU; use cpu")
    missing = [g for g in gpus if int(g) >= torch.cuda.device_count()]
    if missing:
        raise InputError(f"--devices: GPU {missing[0]} does not exist (this machine has {torch.cuda.device_count()})")
    n = workers or len(gpus)
    threads = max(1, available_cores() // n)
    return [WorkerPlan(i, "cuda", gpus[i % len(gpus)], threads) for i in range(n)]


def emit_event(kind: str, **payload: Any) -> None:
    """A worker's message to its launcher: one line on stdout."""
    sys.stdout.write(EVENT_PREFIX + json.dumps({"event": kind, **payload}, default=str) + "\n")
    sys.stdout.flush()


@dataclass
class LaunchResult:
    exit_codes: dict[int, int] = field(default_factory=dict)
    summaries: dict[int, dict[str, Any]] = field(default_factory=dict)
    log_files: dict[int, Path] = field(default_factory=dict)
    interrupted: bool = False


def launch(
    study: str,
    plans: Sequence[WorkerPlan],
    *,
    storage_url: str,
    tracking_uri: str,
    target_total: int | None,
    deadline: float | None,
    heartbeat: int,
    grace: int | None,
    log_dir: Path,
    on_event: Callable[[int, dict[str, Any]], None],
) -> LaunchResult:
    """Start one ``ct-tune study worker`` per plan and relay their events until all have exited."""
    log_dir.mkdir(parents=True, exist_ok=True)
    result = LaunchResult()
    events: queue.Queue[tuple[int, dict[str, Any] | None]] = queue.Queue()
    processes: dict[int, subprocess.Popen] = {}
    for plan in plans:
        command = [
            sys.executable,
            "-m",
            "ct_tune.cli",
            "study",
            "worker",
            study,
            "--worker",
            str(plan.index),
            "--device",
            plan.device,
            "--threads",
            str(plan.threads),
            "--heartbeat",
            str(heartbeat),
        ]
        if target_total is not None:
            command += ["--target-total", str(target_total)]
        if deadline is not None:
            command += ["--deadline", repr(deadline)]
        if grace is not None:
            command += ["--grace", str(grace)]
        env = {
            **os.environ,
            "CT_TUNE_STORAGE": storage_url,
            "MLFLOW_TRACKING_URI": tracking_uri,
            "OMP_NUM_THREADS": str(plan.threads),
            "MKL_NUM_THREADS": str(plan.threads),
            "PYTHONUNBUFFERED": "1",
        }
        if plan.visible_gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = plan.visible_gpu
        log_path = log_dir / f"worker-{plan.index}.log"
        result.log_files[plan.index] = log_path
        log = log_path.open("w")
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        log.close()  # the child holds its own descriptor
        processes[plan.index] = process
        threading.Thread(target=_relay, args=(plan.index, process, events), daemon=True).start()
    running = set(processes)
    terminated = threading.Event()
    previous = _on_sigterm(terminated)
    try:
        while running:
            index, event = events.get()
            if event is None:
                running.discard(index)
                continue
            if event.get("event") == "summary":
                result.summaries[index] = event
            on_event(index, event)
    except KeyboardInterrupt:
        result.interrupted = True
        _stop(processes, forward=signal.SIGTERM if terminated.is_set() else None)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        for index, process in processes.items():
            try:
                result.exit_codes[index] = process.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                result.exit_codes[index] = process.wait()
    return result


def _relay(index: int, process: subprocess.Popen, events: queue.Queue) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith(EVENT_PREFIX):
            try:
                events.put((index, json.loads(line[len(EVENT_PREFIX) :])))
            except json.JSONDecodeError:
                logger.warning("worker %d sent an unreadable event: %s", index, line.strip()[:200])
    process.wait()
    events.put((index, None))


def _on_sigterm(flag: threading.Event):
    """SIGTERM on the launcher (a scheduler's preemption) becomes a KeyboardInterrupt, remembered."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        flag.set()
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


def _stop(processes: dict[int, subprocess.Popen], *, forward: signal.Signals | None) -> None:
    """Stop every worker cleanly: each fails its running trial and exits.

    A terminal's Ctrl-C already reached every worker (same process group): signalling them again could
    interrupt a trial's bookkeeping, so they get ``OWN_SIGNAL_SECONDS`` to exit on their own first. A
    SIGTERM sent to the launcher alone is forwarded at once.
    """
    if forward is not None:
        _signal_all(processes, forward)
    if not _wait_all(processes, OWN_SIGNAL_SECONDS):
        _signal_all(processes, signal.SIGINT)
    if not _wait_all(processes, STOP_GRACE_SECONDS):
        for process in processes.values():
            if process.poll() is None:
                process.kill()


def _signal_all(processes: dict[int, subprocess.Popen], sig: signal.Signals) -> None:
    for process in processes.values():
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # it exited in the meantime
                process.send_signal(sig)


def _wait_all(processes: dict[int, subprocess.Popen], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    for process in processes.values():
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return False
    return True
