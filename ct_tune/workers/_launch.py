"""Starting worker processes on this machine and relaying what they report.

``launch`` starts ``python -m <module>`` once per plan, hands each its settings as one JSON document on
stdin (never on the command line, where other users could read storage URLs), pins its GPU and thread
count through the environment, appends its stderr to ``<log_dir>/worker-<k>.log`` under a launch header,
and relays the JSON event lines it prints on stdout until every worker has exited. It knows nothing of
studies: what a worker does is its module's business.

Ctrl-C (or SIGTERM) on the launcher reaches every worker; each fails its running trial and exits, and
the launcher waits for them. Ctrl-C while workers are still starting stops the ones started so far at
once: a worker that has not said "ready" has no trial to fail.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ct_tune._errors import InputError
from ct_tune.workers._events import parse_event
from ct_tune.workers._interrupts import interrupt_on
from ct_tune.workers._plan import WorkerPlan

__all__ = ["EXIT_DATABASE_LOST", "EXIT_STUDY_DELETED", "LaunchResult", "check_log_dir", "launch"]

logger = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 60
OWN_SIGNAL_SECONDS = 10  # after a Ctrl-C, workers get this long to stop on the terminal's own signal
EXIT_DATABASE_LOST = 3  # a worker's exit code when its storage went away during the run
EXIT_STUDY_DELETED = 4  # a worker's exit code when its study was deleted during the run


@dataclass
class LaunchResult:
    exit_codes: dict[int, int] = field(default_factory=dict)
    summaries: dict[int, dict[str, Any]] = field(default_factory=dict)  # each worker's "summary" event
    log_files: dict[int, Path] = field(default_factory=dict)
    interrupted: bool = False
    killed: bool = False  # a second Ctrl-C ended the workers at once (Ray): their trials fail by heartbeat


def launch(
    module: str,
    plans: Sequence[WorkerPlan],
    *,
    settings: Callable[[WorkerPlan], Mapping[str, Any]],
    log_dir: Path,
    on_event: Callable[[int, dict[str, Any]], None],
    env: Mapping[str, str] | None = None,
) -> LaunchResult:
    """Run one ``python -m module`` per plan (``settings(plan)`` on its stdin) and relay their events."""
    check_log_dir(log_dir, plans)
    result = LaunchResult()
    events: queue.Queue[tuple[int, dict[str, Any] | None]] = queue.Queue()
    processes: dict[int, subprocess.Popen] = {}
    ready: set[int] = set()  # workers that said "ready": from then on one may be inside a trial
    try:
        with interrupt_on(signal.SIGTERM) as received:  # a scheduler's preemption, handled like Ctrl-C
            try:
                for plan in plans:
                    _start(module, plan, settings(plan), log_dir, env, result, events, processes, ready)
                running = set(processes)
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
                _stop(processes, ready, forward=signal.SIGTERM if received else None)
    finally:
        for index, process in processes.items():
            try:
                result.exit_codes[index] = process.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                result.exit_codes[index] = process.wait()
    return result


def check_log_dir(log_dir: Path, plans: Sequence[WorkerPlan] = ()) -> None:
    """The log directory exists (made if needed) and each plan's log file can be appended to: checked
    before any worker starts, so a bad ``--log-dir`` is one line, not a launch stopped halfway."""
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        for plan in plans:
            (log_dir / f"worker-{plan.index}.log").open("a").close()
    except OSError as error:
        raise InputError(
            f"cannot write the worker logs in {log_dir} ({error.strerror or error}); "
            "give a directory you can write to with --log-dir"
        ) from None


def _start(
    module: str,
    plan: WorkerPlan,
    settings: Mapping[str, Any],
    log_dir: Path,
    env: Mapping[str, str] | None,
    result: LaunchResult,
    events: queue.Queue,
    processes: dict[int, subprocess.Popen],
    ready: set[int],
) -> None:
    child_env = {
        **os.environ,
        **(env or {}),
        "OMP_NUM_THREADS": str(plan.threads),
        "MKL_NUM_THREADS": str(plan.threads),
        "PYTHONUNBUFFERED": "1",
    }
    if plan.visible_gpu is not None:
        child_env["CUDA_VISIBLE_DEVICES"] = plan.visible_gpu
    log_path = log_dir / f"worker-{plan.index}.log"
    result.log_files[plan.index] = log_path
    with log_path.open("a") as log:  # appended: the log a failed launch names survives the resume
        stamp = dt.datetime.now().isoformat(timespec="seconds")
        log.write(f"===== launch {stamp}: worker {plan.index} on {plan.device}, {plan.threads} thread(s) =====\n")
        log.flush()
        process = subprocess.Popen(
            [sys.executable, "-m", module],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=child_env,
        )
    processes[plan.index] = process  # at once: a Ctrl-C from here on stops it too
    assert process.stdin is not None
    try:
        process.stdin.write(json.dumps(dict(settings)))
        process.stdin.close()
    except BrokenPipeError:  # it died at once; its log says why and the relay sees it exit
        pass
    threading.Thread(target=_relay, args=(plan.index, process, events, ready), daemon=True).start()


def _relay(index: int, process: subprocess.Popen, events: queue.Queue, ready: set[int]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        try:
            event = parse_event(line)
        except json.JSONDecodeError:
            logger.warning("worker %d sent an unreadable event: %s", index, line.strip()[:200])
            continue
        if event is not None:
            if event.get("event") == "ready":
                ready.add(index)  # here, not in the main thread's queue: an interrupt may be waiting there
            events.put((index, event))
    process.wait()
    events.put((index, None))


def _stop(processes: dict[int, subprocess.Popen], ready: set[int], *, forward: signal.Signals | None) -> None:
    """Stop every worker cleanly: each fails its running trial and exits.

    A worker that has not said "ready" holds no trial: it gets SIGTERM at once (during a launch of many,
    waiting on them is what kept hundreds of starting processes alive after a Ctrl-C). A terminal's Ctrl-C
    already reached the ready ones (same process group): signalling them again could interrupt a trial's
    bookkeeping, so they get ``OWN_SIGNAL_SECONDS`` to exit on their own first. A SIGTERM sent to the
    launcher alone is forwarded at once.
    """
    _signal_all({i: p for i, p in processes.items() if i not in ready}, signal.SIGTERM)
    if forward is not None:
        _signal_all({i: p for i, p in processes.items() if i in ready}, forward)
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
