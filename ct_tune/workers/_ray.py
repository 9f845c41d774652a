"""Workers as Ray actors: one per GPU (``num_gpus=1``) or per CPU slot, placed by Ray across its cluster.

Each actor runs the same worker entry point as a local worker process, with its settings as a task
argument (held in Ray's memory, never in a ``runtime_env``, which Ray's dashboard shows) and its events
put on a Ray queue the driver relays, so the progress view is the local launch's. A lost actor (its
process killed, its node gone) is restarted by Ray, at most ``max_restarts`` times, and its call is
retried: the worker resumes the study and its dead trial is failed by heartbeat and retried, as on one
machine. Ctrl-C asks every actor to stop after its running trials; a second Ctrl-C kills them.

Without an address, a Ray instance is started on this machine for the launch and shut down after it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue as queue_module
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ct_tune._errors import CTTuneError, InputError
from ct_tune.workers._entry import resolve_entry
from ct_tune.workers._launch import LaunchResult
from ct_tune.workers._plan import WorkerPlan, available_cores

__all__ = ["RayOptions", "import_ray", "launch_on_ray"]

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.5


@dataclass(frozen=True)
class RayOptions:
    """Where and how the actors run."""

    address: str | None = None  # None: a Ray instance on this machine; "auto", or ray://head:10001
    workers: int | None = None  # actors; default one per GPU of the cluster, else one per CPU
    cpus_per_worker: int = 1
    max_restarts: int = 3  # per actor: a process or node lost more often than this ends the launch

    def check(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise InputError(f"--workers must be at least 1, not {self.workers}")
        if self.cpus_per_worker < 1:
            raise InputError(f"--cpus-per-worker must be at least 1, not {self.cpus_per_worker}")
        if self.max_restarts < 0:
            raise InputError(f"--max-restarts must be 0 or more, not {self.max_restarts}")
        if self.address is not None and not (self.address == "auto" or "://" in self.address or ":" in self.address):
            raise InputError(f"--address {self.address!r}: give auto, ray://HOST:10001 or HOST:6379")


def import_ray():
    try:
        import ray
    except ImportError:
        raise InputError("--executor ray needs Ray: pip install -c constraints.txt 'ct-tune[ray]'") from None
    return ray


def local_cpus(options: RayOptions, *, oversubscribe: bool) -> tuple[int, str | None]:
    """CPUs to give a Ray instance started here, and the warning to print when that means more actors
    than cores (refused unless ``oversubscribe``, as for local worker processes)."""
    cores = available_cores()
    needed = (options.workers or max(1, cores // options.cpus_per_worker)) * options.cpus_per_worker
    if needed <= cores:
        return cores, None
    if not oversubscribe:
        raise InputError(
            f"--workers {options.workers} x --cpus-per-worker {options.cpus_per_worker}: more CPUs than the {cores} "
            "core(s) this process may use; ask for fewer, or pass --oversubscribe to start them anyway"
        )
    return needed, f"warning: {needed} Ray CPU slots share {cores} core(s) (--oversubscribe): each actor runs slower"


@contextlib.contextmanager
def connected(options: RayOptions, *, cpus: int):
    """Ray, connected to the given cluster or to a fresh instance of ``cpus`` CPUs on this machine;
    disconnected after (a notebook's own connection is left as it was)."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    kwargs: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
    if options.address is None:  # "local": a new instance, never one that `ray start` left running here
        kwargs.update(num_cpus=cpus, include_dashboard=False)
    try:
        ray.init(address=options.address or "local", **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as error:
        reason = " ".join(str(error).split())[:200]
        raise InputError(f"cannot connect to Ray at {options.address or 'this machine'}: {reason}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def plan_actors(ray, options: RayOptions, limit: int | None) -> list[WorkerPlan]:
    """One actor per GPU of the cluster (or ``workers``), else one per ``cpus_per_worker`` CPUs; never more
    than the cluster holds at once (the rest would wait forever) nor than trials left (``limit``)."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    slots = gpus or max(1, int(resources.get("CPU", 1)) // options.cpus_per_worker)
    count = options.workers or slots
    if count > slots:
        kind = "GPU" if gpus else f"{options.cpus_per_worker}-CPU"
        raise InputError(
            f"--workers {count}: the Ray cluster has room for {slots} {kind} actor(s) at once; ask for {slots} or fewer"
        )
    device = "cuda" if gpus else "cpu"
    count = min(count, limit) if limit is not None else count
    return [WorkerPlan(i, device, None, options.cpus_per_worker) for i in range(count)]


class _Actor:
    """A worker in a Ray actor process: ``target(settings, emit=, keep_going=)`` (``"module:function"``)
    with its events put on a queue."""

    def __init__(self, index: int, log_file: str | None) -> None:
        self.index = index
        if log_file is not None and Path(log_file).parent.is_dir():  # on the driver's machine, or a shared disk
            handler = logging.FileHandler(log_file)
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            root = logging.getLogger("ct_tune")
            root.handlers[:] = [handler]
            root.setLevel(logging.INFO)
            root.propagate = False

    def pid(self) -> int:
        return os.getpid()

    def run(self, target: str, settings: Mapping[str, Any], events, stop) -> dict[str, Any]:
        import ray

        def emit(kind: str, **payload: Any) -> None:
            events.put((self.index, {"event": kind, **payload}))

        def keep_going() -> bool:
            return not ray.get(stop.is_set.remote())

        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        try:
            summary = resolve_entry(target)(dict(settings), emit=emit, keep_going=keep_going)
            return {"summary": summary, "exit_code": 0}
        except CTTuneError as error:  # a one-line reason, as a local worker prints it
            logging.getLogger("ct_tune").error("ct-tune: error: %s", " ".join(str(error).split()))
            return {"summary": None, "exit_code": error.exit_code, "error": " ".join(str(error).split())}


class _Stop:
    """A flag every actor reads before each round of trials (set on the driver's first Ctrl-C)."""

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


def launch_on_ray(
    ray,
    target: str,
    plans: Sequence[WorkerPlan],
    *,
    settings: Callable[[WorkerPlan], Mapping[str, Any]],
    options: RayOptions,
    log_dir: Path,
    on_event: Callable[[int, dict[str, Any]], None],
) -> LaunchResult:
    """Run ``target`` in one actor per plan on a connected Ray and relay their events until all return."""
    from ray.util.queue import Queue

    log_dir.mkdir(parents=True, exist_ok=True)
    events = Queue()
    stop = ray.remote(num_cpus=0)(_Stop).remote()
    actor_class = ray.remote(_Actor)
    result = LaunchResult()
    actors: dict[int, Any] = {}
    calls: dict[Any, int] = {}
    for plan in plans:
        log_file = log_dir / f"worker-{plan.index}.log"
        result.log_files[plan.index] = log_file
        actor = actor_class.options(
            num_cpus=plan.threads,
            num_gpus=1 if plan.device == "cuda" else 0,
            max_restarts=options.max_restarts,
            max_task_retries=options.max_restarts,
        ).remote(plan.index, str(log_file.resolve()))
        actors[plan.index] = actor
        calls[actor.run.remote(target, dict(settings(plan)), events, stop)] = plan.index
    pending = list(calls)
    stopping = False
    try:
        while pending:
            try:
                done, pending = ray.wait(pending, num_returns=1, timeout=POLL_SECONDS)
                _relay(events, result, on_event)
                for ref in done:
                    _collect(ray, ref, calls[ref], result)
            except KeyboardInterrupt:
                result.interrupted = True
                if stopping:
                    raise
                stopping = True
                ray.get(stop.set.remote())
                logger.warning("stopping after the running trials (Ctrl-C again to stop at once)")
        _relay(events, result, on_event)
    except KeyboardInterrupt:
        result.killed = True
        for actor in actors.values():
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
    return result


def _relay(events, result: LaunchResult, on_event: Callable[[int, dict[str, Any]], None]) -> None:
    while True:
        try:
            index, event = events.get_nowait()
        except queue_module.Empty:  # ray.util.queue.Empty is one
            return
        if event.get("event") == "summary":
            result.summaries[index] = event
        on_event(index, event)


def _collect(ray, ref, index: int, result: LaunchResult) -> None:
    """An actor's call returned: its exit code as a local worker's would be."""
    try:
        outcome = ray.get(ref)
    except ray.exceptions.RayActorError as error:  # restarted more than max_restarts times, or killed
        logger.warning("worker %d: its Ray actor died for good: %s", index, " ".join(str(error).split())[:300])
        result.exit_codes[index] = 1
        return
    except ray.exceptions.RayTaskError as error:
        logger.warning("worker %d failed: %s", index, " ".join(str(error).split())[:300])
        result.exit_codes[index] = 1
        return
    result.exit_codes[index] = outcome["exit_code"]
    if outcome.get("summary") is not None:
        result.summaries.setdefault(index, {"event": "summary", **outcome["summary"]})
