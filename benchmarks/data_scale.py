"""Memory and speed of a study on a 224x224 ImageFolder: today's path (every worker decodes both splits
into float32 in its own memory, 256 rows a pass) against the per-machine data cache (decoded once per
machine as uint8, read by every worker with ``pread``, ``run.batch_size: auto``).

    python benchmarks/data_scale.py [--sizes 2000x500,4000x1000] [--workers 1,2] [--trials 3]
                                    [--warm-trials 1] [--variants today,new,warm] [--keep-data DIR]
                                    [--work-dir DIR] [--json PATH]

Builds a synthetic RGB ImageFolder per size (``NxM``: N train and M val images, 10 classes of oriented,
coloured stripes with noise; no download; ``--keep-data`` keeps it for the next run), then for every
size and worker count creates and runs the same study side by side with each variant: torchvision
resnet18 (random weights), the ``probe`` objective (it reads the train split), per-stage betas, random
sampler (seed 0: the same profiles in every variant; no ReLU baseline), ``--trials`` trials per
worker, SQLite stores in a temporary folder, ``ct-tune study run`` on the CPU in a subprocess. The
variants:

- ``today``: ``data.cache: false``, ``run.batch_size: 256``;
- ``new``: ``data.cache: true`` in a cache folder of its own (cold: the study decodes the splits),
  ``run.batch_size: auto``;
- ``warm`` (``--warm-trials`` > 0): ``new`` again, on the cache ``new`` filled, ``--warm-trials`` trials
  per worker (``--variants warm`` alone: on the caches an earlier run left in ``--work-dir``).

Measured per run: the proportional set size (PSS, ``/proc/<pid>/smaps_rollup``: shared pages are divided
between the processes mapping them; the cache is read with ``pread``, so its pages sit in the kernel's page
cache, one reclaimable copy per machine that counts in no process) of every worker process (with one worker,
the ``study run`` process itself: it runs that worker in its own process), sampled every 0.5 s, its peak per
worker and the peak of the sum over workers; peak RSS per worker for contrast (it counts shared pages in
full); median seconds per trial (Optuna's start to complete); seconds from the launch to the first finished
trial of worker 1 and of worker 2 (MLflow's ``ct_tune.worker`` tag); how many processes decoded each split
(the workers' log lines: ``cached <entry>`` from the process that builds an entry, ``... in memory`` from a
process that decodes for itself). Then the ratios new/today and the issue's targets: PSS per worker at most
1.5 GB (1.5e9 bytes) and at most a third of today's, growing by less than 15% when the dataset doubles,
seconds per trial within 10% of today's, and one decode per split on the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

CLASSES = 10
IMAGE_SIZE = 224
GB = 1.5e9  # the bound on PSS per worker at 2,000 + 500 images, in bytes
MiB = 2**20
VARIANTS = ("today", "new", "warm")


# ------------------------------------------------------------------------------------------------ the data
def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"2000x500,4000x1000"`` -> ``[(2000, 500), (4000, 1000)]`` (train x val images)."""
    sizes = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", part)
        if not match or min(int(match[1]), int(match[2])) < CLASSES:
            raise argparse.ArgumentTypeError(f"{part!r}: give TRAINxVAL, each at least {CLASSES} images")
        sizes.append((int(match[1]), int(match[2])))
    return sizes


def parse_counts(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",")]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give worker counts like 1,2")
    return counts


def pattern(label: int, rng, size: int = IMAGE_SIZE):
    """One RGB image (H, W, 3) uint8 of class ``label``: stripes whose orientation, frequency and colour
    depend on the class, with a random phase, a small tilt and pixel noise per image."""
    import numpy as np

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = math.pi * label / CLASSES + rng.normal(0, 0.05)
    frequency = 3 + 2 * (label % 4)
    wave = np.sin(2 * math.pi * frequency * (xx * math.cos(angle) + yy * math.sin(angle)) + rng.uniform(0, 2 * math.pi))
    hue = 2 * math.pi * label / CLASSES
    colour = np.array([math.cos(hue), math.cos(hue + 2.1), math.cos(hue + 4.2)], dtype=np.float32)
    image = 128 + 60 * wave[..., None] * colour + rng.normal(0, 12, (size, size, 3)) + rng.normal(0, 10)
    return np.clip(image, 0, 255).astype(np.uint8)


def make_imagefolder(root: Path, train: int, val: int, *, test: int | None = None, seed: int = 0) -> Path:
    """``root/{train,val,test}/c<k>/<i>.png`` with ``train`` + ``val`` (+ ``test``, default val // 5) images
    over the classes; kept and reused when ``root/complete.json`` says it holds those counts."""
    import numpy as np
    from PIL import Image

    test = max(CLASSES, val // 5) if test is None else test
    counts = {"train": train, "val": val, "test": test}
    marker = root / "complete.json"
    wanted = {"counts": counts, "classes": CLASSES, "size": IMAGE_SIZE, "seed": seed}
    with contextlib.suppress(OSError, ValueError):
        if json.loads(marker.read_text()) == wanted:
            return root
    rng = np.random.default_rng(seed)
    for split, count in counts.items():
        for label in range(CLASSES):
            (root / split / f"c{label}").mkdir(parents=True, exist_ok=True)
        for i in range(count):
            label = i % CLASSES
            path = root / split / f"c{label}" / f"{i:06d}.png"
            Image.fromarray(pattern(label, rng)).save(path, compress_level=1)
    marker.write_text(json.dumps(wanted))
    return root


# ------------------------------------------------------------------------------------------------- memory
def memory_kb(pid: int) -> tuple[int, int] | None:
    """(PSS, RSS) of ``pid`` in kB from ``/proc/<pid>/smaps_rollup``; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    fields = dict(re.findall(r"^(Pss|Rss):\s+(\d+) kB", text, re.MULTILINE))
    if "Pss" not in fields:
        return None
    return int(fields["Pss"]), int(fields["Rss"])


def parents() -> dict[int, int]:
    """pid -> parent pid of every process, from /proc/<pid>/stat."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                table[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    return table


@dataclass
class MemoryPeaks:
    """Peaks over a run's samples: per worker process (pid), and of the sum over the workers at once."""

    pss_kb: dict[int, int] = field(default_factory=dict)
    rss_kb: dict[int, int] = field(default_factory=dict)
    sum_pss_kb: int = 0
    others_pss_kb: int = 0  # the launcher and any helper processes below it, summed, at their peak
    samples: int = 0
    cpu_track: list[tuple[float, float]] = field(default_factory=list)  # (time, CPU seconds of the workers)


class MemorySampler:
    """Samples every worker process of a launch every ``interval`` seconds: the launcher itself when it
    runs its one worker in its own process, else its children (``python -m ct_tune.search.worker``)."""

    def __init__(self, launcher: int, *, in_process: bool, interval: float = 0.5) -> None:
        self.launcher = launcher
        self.in_process = in_process
        self.interval = interval
        self.peaks = MemoryPeaks()
        self._cpu_by_pid: dict[int, float] = {}  # last seen: a worker that exited keeps what it used
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        table = parents()
        if self.in_process:
            workers = [self.launcher]
        else:
            workers = [pid for pid, parent in table.items() if parent == self.launcher and is_worker(pid)]
        below = ({self.launcher} | descendants(self.launcher, table)) - set(workers)
        total = 0
        for pid in workers:
            measured = memory_kb(pid)
            if measured is None:
                continue
            pss, rss = measured
            total += pss
            self.peaks.pss_kb[pid] = max(self.peaks.pss_kb.get(pid, 0), pss)
            self.peaks.rss_kb[pid] = max(self.peaks.rss_kb.get(pid, 0), rss)
            used = cpu_seconds(pid)
            if used is not None:
                self._cpu_by_pid[pid] = used
        self.peaks.cpu_track.append((time.time(), sum(self._cpu_by_pid.values())))
        others = sum(m[0] for m in map(memory_kb, below) if m is not None)
        self.peaks.sum_pss_kb = max(self.peaks.sum_pss_kb, total)
        self.peaks.others_pss_kb = max(self.peaks.others_pss_kb, others)
        self.peaks.samples += 1

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` (all its threads) from /proc/<pid>/stat; None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_between(track: Sequence[tuple[float, float]], start: float, end: float) -> float:
    """CPU seconds the workers used from ``start`` to ``end`` (epoch seconds), read off the samples."""

    def at(moment: float) -> float:
        before = [used for when, used in track if when <= moment]
        return before[-1] if before else (track[0][1] if track else math.nan)

    return at(end) - at(start)


def is_worker(pid: int) -> bool:
    try:
        return b"ct_tune.search.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def descendants(root: int, table: dict[int, int]) -> set[int]:
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in table.items() if parent in frontier} - found
        found |= frontier
    return found


def needed_mb(variant: str, workers: int, train: int, val: int) -> float:
    """A run's peak memory (MiB), from this machine's measurements (resnet18 at 224x224, eager CT): today
    a worker holds both splits as float32, twice while it concatenates them, and a 256-row pass (~4 GB);
    with the cache a worker holds ~1.5 GB whatever the size, and the machine one uint8 copy of the data."""
    pixels = (train + val) * 3 * IMAGE_SIZE * IMAGE_SIZE
    if variant == "today":
        return workers * (4000 + 2 * 4 * pixels / MiB)
    return workers * 1500 + pixels / MiB


def available_mb() -> float:
    """``MemAvailable`` of /proc/meminfo: what can be allocated without swapping (nan when unknown)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return math.nan


# ------------------------------------------------------------------------------------------ one study run
@dataclass
class Measurement:
    size: str  # "NxM"
    workers: int
    variant: str  # today, new, warm
    pss_worker_mb: float = math.nan  # peak PSS of the largest worker
    pss_sum_mb: float = math.nan  # peak of the workers' summed PSS
    rss_worker_mb: float = math.nan  # peak RSS of the largest worker
    others_pss_mb: float = math.nan  # the launcher (and helpers) at its peak
    seconds_per_trial: float = math.nan  # median
    cpu_s_per_trial: float = (
        math.nan
    )  # the workers' CPU seconds from the first trial's start to the last's end, per trial
    trial_seconds: list[float] = field(default_factory=list)
    first_trial_s: dict[int, float] = field(default_factory=dict)  # worker index -> seconds from the launch
    decodes: dict[str, int] = field(default_factory=dict)  # split -> processes that decoded it
    decode_seconds: dict[str, float] = field(default_factory=dict)  # split -> longest decode
    batch_size: str = ""  # rows per pass: 256, or auto (what it picks)
    wall_s: float = math.nan
    samples: int = 0
    returncode: int = 0
    skipped: str = ""  # why the run was not started (not enough memory on the machine)
    error: str = ""  # the launch's error line, when it failed


_CHILDREN: list[subprocess.Popen] = []  # launches in flight, stopped (whole process group) on any exit


def stop_children() -> None:
    for process in _CHILDREN:
        if process.poll() is None:
            for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(wait)
                    break
    _CHILDREN.clear()


def cli(*args: str, log: Path, **popen: object) -> subprocess.Popen:
    """``ct-tune ARGS`` in a process group of its own (so that it and its workers can be stopped together)."""
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}
    with log.open("a") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "ct_tune.cli", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            **popen,  # type: ignore[arg-type]
        )
    _CHILDREN.append(process)
    return process


def finish(process: subprocess.Popen, log: Path, what: str) -> int:
    code = process.wait()
    _CHILDREN.remove(process)
    if code != 0:
        tail = "\n".join(log.read_text().splitlines()[-25:])
        print(f"{what} exited with {code}; the end of {log}:\n{tail}", file=sys.stderr)
    return code


def study_spec(data_dir: Path, variant: str, cache_dir: Path, trials: int) -> dict:
    cached = variant != "today"
    data = {"name": "imagefolder", "data_dir": str(data_dir), "cache": cached}
    if cached:
        data["cache_dir"] = str(cache_dir)
    return {
        "model": {"name": "resnet18"},
        "data": data,
        "search": {"granularity": "stage", "enqueue_baseline": False},  # every trial a sampled profile
        "objectives": ["probe"],
        "sampler": {"name": "random", "seed": 0},
        "budget": {"n_trials": trials},
        "run": {"device": "cpu", "batch_size": "auto" if cached else 256},
    }


def run_study(
    root: Path, data_dir: Path, size: str, workers: int, variant: str, trials: int, cache_dir: Path
) -> Measurement:
    """Create one study and run it with ``workers`` worker processes, sampling their memory."""
    name = f"{variant}-{size}-w{workers}"
    folder = root / name
    for again in range(2, 100):  # a --work-dir that holds an earlier run of it: a folder of its own
        if not folder.exists():
            break
        folder = root / f"{name}-{again}"
    folder.mkdir()
    storage, tracking = f"sqlite:///{folder}/optuna.db", f"sqlite:///{folder}/mlflow.db"
    spec = folder / "spec.yaml"
    spec.write_text(json.dumps(study_spec(data_dir, variant, cache_dir, trials * workers), indent=1))
    stores = ("--storage", storage, "--tracking-uri", tracking)
    log = folder / "launcher.log"
    created = cli("study", "create", str(spec), "--name", name, *stores, log=log)
    result = Measurement(size, workers, variant)
    if finish(created, log, f"study create {name}") != 0:
        result.returncode = created.returncode
        return result
    run_args = ("--workers", str(workers), "--devices", "cpu", "--log-dir", str(folder / "logs"), "--no-progress")
    started = time.time()
    launch = cli("study", "run", name, *stores, *run_args, log=log)
    with MemorySampler(launch.pid, in_process=workers == 1) as sampler:  # one worker runs in the launcher
        result.returncode = finish(launch, log, f"study run {name}")
    if result.returncode:
        errors = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("ct-tune: error")]
        result.error = errors[-1] if errors else f"exit {result.returncode}"
    result.wall_s = time.time() - started
    peaks = sampler.peaks
    if peaks.pss_kb:
        result.pss_worker_mb = max(peaks.pss_kb.values()) / 1024
        result.rss_worker_mb = max(peaks.rss_kb.values()) / 1024
        result.pss_sum_mb = peaks.sum_pss_kb / 1024
    result.others_pss_mb = peaks.others_pss_kb / 1024
    result.samples = peaks.samples
    result.trial_seconds, result.first_trial_s, window = trial_times(name, storage, tracking, started)
    if result.trial_seconds:
        result.seconds_per_trial = statistics.median(result.trial_seconds)
        result.cpu_s_per_trial = cpu_between(peaks.cpu_track, *window) / len(result.trial_seconds)
    result.decodes, result.decode_seconds = read_logs([log, *sorted((folder / "logs").glob("*"))])
    result.batch_size = "256" if variant == "today" else f"auto ({auto_rows()})"
    return result


def trial_times(
    name: str, storage: str, tracking: str, started: float
) -> tuple[list[float], dict[int, float], tuple[float, float]]:
    """Seconds of every completed trial (Optuna), per worker index the seconds from ``started`` to its
    first finished trial (MLflow's child runs carry the worker's index as a tag), and the window from the
    first trial's start to the last one's end (epoch seconds)."""
    from ct_tune.tracking.keys import TAG_WORKER

    import optuna
    from mlflow.tracking import MlflowClient

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=storage)
    done = [
        t
        for t in study.trials
        if t.state == optuna.trial.TrialState.COMPLETE and t.datetime_start and t.datetime_complete
    ]
    seconds = [(t.datetime_complete - t.datetime_start).total_seconds() for t in done]
    window = (
        (min(t.datetime_start for t in done).timestamp(), max(t.datetime_complete for t in done).timestamp())
        if done
        else (math.nan, math.nan)
    )
    client = MlflowClient(tracking_uri=tracking)
    experiments = [e.experiment_id for e in client.search_experiments() if e.name.split("/")[-1] == name]
    first: dict[int, float] = {}
    if experiments:
        for run in client.search_runs(experiments, max_results=10_000):
            worker = run.data.tags.get(TAG_WORKER)
            if worker is None or run.info.status != "FINISHED" or not run.info.end_time:
                continue
            ended = run.info.end_time / 1000 - started
            first[int(worker)] = min(first.get(int(worker), math.inf), ended)
    return seconds, dict(sorted(first.items())), window


_CACHED = re.compile(r"cached \S+?-(train|val|test)-[0-9a-f]+: .* in ([\d.]+) s")
_IN_MEMORY = re.compile(r"\S+ (train|val|test): \d+ images .*, in memory\) in ([\d.]+) s")


def read_logs(paths: Sequence[Path]) -> tuple[dict[str, int], dict[str, float]]:
    """From the launcher's and the workers' logs: how many processes decoded each split (a cache entry
    built, or a split decoded into a process's own memory), and the longest decode per split."""
    decodes: dict[str, int] = {}
    longest: dict[str, float] = {}
    for path in paths:
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                match = _CACHED.search(line) or _IN_MEMORY.search(line)
                if match:
                    split = match[1]
                    decodes[split] = decodes.get(split, 0) + 1
                    longest[split] = max(longest.get(split, 0.0), float(match[2]))
    return dict(sorted(decodes.items())), longest


@functools.cache
def auto_rows() -> int | str:
    """The rows per pass ``run.batch_size: auto`` gives resnet18 at 224x224 on this CPU (what the workers
    compute at start-up; their log does not say it)."""
    try:
        import ct_tune  # noqa: F401  (first: makes torchvision importable)
        from ct_tune.bench._memory import rows_per_pass

        import torch
        import torchvision

        net = torchvision.models.resnet18(num_classes=CLASSES).eval()
        example = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)
        return rows_per_pass(net, example, device=torch.device("cpu"), budget_mb=None, gradients=False)
    except Exception as error:  # an internal function: a renamed one costs the number, not the run
        return f"? {type(error).__name__}"


def from_dict(row: dict) -> Measurement:
    """A measurement as ``--json`` wrote it (JSON keys are strings: the worker indices are numbers again)."""
    measured = Measurement(**row)
    measured.first_trial_s = {int(k): v for k, v in measured.first_trial_s.items()}
    return measured


# ------------------------------------------------------------------------------------------------ reports
def fmt(value: float, digits: int = 0) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:,.{digits}f}"


def ratio(new: float, old: float) -> float:
    if new is None or old is None or math.isnan(new) or math.isnan(old) or old == 0:
        return math.nan
    return new / old


def measurements_table(rows: Sequence[Measurement]) -> str:
    header = (
        "| size | workers | variant | rows/pass | PSS/worker MiB | PSS sum MiB | RSS/worker MiB | s/trial "
        "| CPU s/trial | 1st trial w1 s | 1st trial w2 s | decodes train/val | wall s |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for m in rows:
        if m.skipped:
            lines.append(f"| {m.size} | {m.workers} | {m.variant} | skipped: {m.skipped} |" + " |" * 9)
            continue
        decodes = f"{m.decodes.get('train', 0)}/{m.decodes.get('val', 0)}"
        lines.append(
            f"| {m.size} | {m.workers} | {m.variant}{' (failed)' if m.returncode else ''} | {m.batch_size} "
            f"| {fmt(m.pss_worker_mb)} "
            f"| {fmt(m.pss_sum_mb)} | {fmt(m.rss_worker_mb)} | {fmt(m.seconds_per_trial, 1)} "
            f"| {fmt(m.cpu_s_per_trial, 1)} "
            f"| {fmt(m.first_trial_s.get(0, math.nan), 1)} | {fmt(m.first_trial_s.get(1, math.nan), 1)} "
            f"| {decodes} | {fmt(m.wall_s)} |"
        )
    return "\n".join(lines)


def by_key(rows: Sequence[Measurement]) -> dict[tuple[str, int, str], Measurement]:
    return {(m.size, m.workers, m.variant): m for m in rows}


def ratios_table(rows: Sequence[Measurement]) -> str:
    table = by_key(rows)
    header = (
        "| size | workers | PSS/worker new/today | PSS sum new/today | RSS/worker new/today | s/trial new/today "
        "| CPU s/trial new/today | 1st trial w2 new/today | 1st trial w2 warm/today |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for size, workers in dict.fromkeys((m.size, m.workers) for m in rows):
        today, new = table.get((size, workers, "today")), table.get((size, workers, "new"))
        if today is None or new is None:
            continue
        warm = table.get((size, workers, "warm"))
        w2 = today.first_trial_s.get(1, math.nan)
        cells = [
            ratio(new.pss_worker_mb, today.pss_worker_mb),
            ratio(new.pss_sum_mb, today.pss_sum_mb),
            ratio(new.rss_worker_mb, today.rss_worker_mb),
            ratio(new.seconds_per_trial, today.seconds_per_trial),
            ratio(new.cpu_s_per_trial, today.cpu_s_per_trial),
            ratio(new.first_trial_s.get(1, math.nan), w2),
            ratio(warm.first_trial_s.get(1, math.nan), w2) if warm else math.nan,
        ]
        lines.append(f"| {size} | {workers} | " + " | ".join(fmt(c, 2) for c in cells) + " |")
    return "\n".join(lines)


def targets(rows: Sequence[Measurement]) -> list[tuple[str, bool | None, str]]:
    """The issue's targets: (what, met (None: not measured), the numbers)."""
    table = by_key(rows)
    found: list[tuple[str, bool | None, str]] = []
    pairs = list(dict.fromkeys((m.size, m.workers) for m in rows))
    for size, workers in pairs:
        today, new = table.get((size, workers, "today")), table.get((size, workers, "new"))
        if new is None:
            continue
        where = f"{size}, {workers} worker(s)"
        pss = new.pss_worker_mb * MiB
        found.append(
            (
                f"PSS per worker <= 1.5 GB ({where})",
                None if math.isnan(pss) else pss <= GB,
                f"{pss / 1e9:.2f} GB",
            )
        )
        if today is not None:
            share = ratio(new.pss_worker_mb, today.pss_worker_mb)
            found.append(
                (
                    f"PSS per worker <= 1/3 of today's ({where})",
                    None if math.isnan(share) else share <= 1 / 3,
                    f"{fmt(new.pss_worker_mb)} vs {fmt(today.pss_worker_mb)} MiB = {fmt(share, 2)}",
                )
            )
            speed = ratio(new.seconds_per_trial, today.seconds_per_trial)
            found.append(
                (
                    f"s/trial within 10% of today's or faster ({where})",
                    None if math.isnan(speed) else speed <= 1.10,
                    f"{fmt(new.seconds_per_trial, 1)} vs {fmt(today.seconds_per_trial, 1)} s = {fmt(speed, 2)}",
                )
            )
            cpu = ratio(new.cpu_s_per_trial, today.cpu_s_per_trial)  # what a busy machine disturbs less
            found.append(
                (
                    f"CPU s/trial within 10% of today's or less ({where})",
                    None if math.isnan(cpu) else cpu <= 1.10,
                    f"{fmt(new.cpu_s_per_trial, 1)} vs {fmt(today.cpu_s_per_trial, 1)} CPU s = {fmt(cpu, 2)}",
                )
            )
        if workers >= 2:
            for variant, expected in (("new", 1), ("warm", 0)):
                run = table.get((size, workers, variant))
                if run is None:
                    continue
                counts = [run.decodes.get(split, 0) for split in ("train", "val")]
                found.append(
                    (
                        f"the second worker does not decode again: {variant}, {expected} decode(s) per split ({where})",
                        all(c == expected for c in counts),
                        f"train {counts[0]}, val {counts[1]}",
                    )
                )
    for (size, workers), (bigger, _) in doubling(pairs):
        small, large = table.get((size, workers, "new")), table.get((bigger, workers, "new"))
        if small is None or large is None:
            continue
        growth = ratio(large.pss_worker_mb, small.pss_worker_mb) - 1
        found.append(
            (
                f"PSS per worker grows < 15% when the data doubles ({size} -> {bigger}, {workers} worker(s))",
                None if math.isnan(growth) else growth < 0.15,
                f"{fmt(small.pss_worker_mb)} -> {fmt(large.pss_worker_mb)} MiB = {growth:+.0%}",
            )
        )
    return found


def doubling(pairs: Sequence[tuple[str, int]]) -> Iterator[tuple[tuple[str, int], tuple[str, int]]]:
    """Pairs of (size, workers) whose second size is twice the first (train and val), same workers."""
    for size, workers in pairs:
        train, val = map(int, size.split("x"))
        bigger = f"{2 * train}x{2 * val}"
        if (bigger, workers) in pairs:
            yield (size, workers), (bigger, workers)


def report(rows: Sequence[Measurement]) -> None:
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    per_worker: dict[str, set[int]] = {}
    for m in rows:
        per_worker.setdefault(m.variant, set()).add(round(len(m.trial_seconds) / m.workers))
    trials = ", ".join(f"{v} {'/'.join(map(str, sorted(n)))}" for v, n in per_worker.items())
    print(
        f"synthetic ImageFolder {IMAGE_SIZE}x{IMAGE_SIZE} RGB PNG, {CLASSES} classes; torchvision resnet18 (random "
        f"weights), probe objective, per-stage betas, random sampler; completed trials per worker: {trials}; CPU, "
        f"{cores} cores, torch {torch.__version__}. today: data.cache false, batch 256; new: cache (cold), "
        "batch auto; warm: new again on the cache it filled. MiB = 2^20 bytes; GB = 1e9 bytes."
    )
    print()
    print(measurements_table(rows))
    for m in rows:
        if m.returncode:
            print(f"\n{m.size} {m.workers} worker(s) {m.variant} failed (peaks and times up to then): {m.error}")
    print()
    print(ratios_table(rows))
    print()
    print("| target | met | numbers |")
    print("|---|---|---|")
    for what, met, numbers in targets(rows):
        print(f"| {what} | {'-' if met is None else 'yes' if met else 'no'} | {numbers} |")


# --------------------------------------------------------------------------------------------------- main
def measure(root: Path, args: argparse.Namespace, variants: Sequence[str], rows: list[Measurement]) -> None:
    """Every size, worker count and variant in turn, appended to ``rows`` as each run ends."""
    images = Path(args.keep_data) if args.keep_data else root / "images"
    for train, val in args.sizes:
        size = f"{train}x{val}"
        started = time.perf_counter()
        data_dir = make_imagefolder(images / size, train, val)
        print(f"{size}: images ready in {time.perf_counter() - started:.0f} s ({data_dir})", file=sys.stderr)
        for workers in args.workers:
            cache_dir = root / f"cache-{size}-w{workers}"
            planned = [(v, args.trials) for v in variants if v != "warm"]
            if args.warm_trials > 0 and ("new" in variants or "warm" in variants):
                planned.append(("warm", args.warm_trials))
            for variant, trials in planned:
                needed, free = needed_mb(variant, workers, train, val), available_mb()
                if variant == "warm" and not any(cache_dir.glob("*/meta.json")):
                    measured = Measurement(size, workers, variant, skipped=f"no cache in {cache_dir} to be warm on")
                elif args.memory_check and needed > free:  # the OOM killer would pick any process of the machine
                    measured = Measurement(
                        size,
                        workers,
                        variant,
                        skipped=f"needs ~{needed / 1024:.1f} GiB, {free / 1024:.1f} GiB available",
                    )
                else:
                    measured = run_study(root, data_dir, size, workers, variant, trials, cache_dir)
                rows.append(measured)
                print(f"{size} {workers} worker(s) {variant}: {json.dumps(asdict(measured))}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sizes", type=parse_sizes, default="2000x500,4000x1000", help="TRAINxVAL images, comma-separated"
    )
    parser.add_argument("--workers", type=parse_counts, default="1,2", help="worker counts, comma-separated")
    parser.add_argument("--trials", type=int, default=3, help="trials per worker (default 3)")
    parser.add_argument(
        "--warm-trials", type=int, default=1, help="trials per worker of the warm-cache rerun (0: none; default 1)"
    )
    parser.add_argument(
        "--variants",
        default="today,new",
        help="today, new (default both); warm follows new unless --warm-trials is 0, and alone runs on the "
        "caches an earlier run left in --work-dir",
    )
    parser.add_argument("--keep-data", metavar="DIR", help="write (or reuse) the synthetic images here")
    parser.add_argument("--json", metavar="PATH", help="write every measurement here")
    parser.add_argument(
        "--work-dir", metavar="DIR", help="keep the studies, their logs and caches here (default: a temporary folder)"
    )
    parser.add_argument(
        "--no-memory-check",
        dest="memory_check",
        action="store_false",
        help="start every run even when its estimated peak exceeds the machine's available memory (default: "
        "such a run is skipped and marked so: on a shared machine the OOM killer may pick another's process)",
    )
    parser.add_argument(
        "--from-json", metavar="PATH", nargs="+", help="measure nothing: print the tables of these --json files"
    )
    args = parser.parse_args(argv)
    if args.from_json:
        loaded = [row for path in args.from_json for row in json.loads(Path(path).read_text())]
        report([from_dict(row) for row in loaded])
        return 0
    variants = [v for v in args.variants.split(",") if v]
    if not variants or any(v not in VARIANTS for v in variants):
        parser.error(f"--variants: choose from {', '.join(VARIANTS)} (got {args.variants})")

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)
    rows: list[Measurement] = []
    with tempfile.TemporaryDirectory(prefix="data-scale-") as scratch:
        root = Path(args.work_dir) if args.work_dir else Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        interrupted = ""
        try:
            measure(root, args, variants, rows)
        except KeyboardInterrupt as stop:
            interrupted = str(stop) or "Ctrl-C"
        finally:
            stop_children()  # before the folder goes: an interrupted launch and its workers stop first
            if args.json:
                Path(args.json).write_text(json.dumps([asdict(m) for m in rows], indent=1))
    report(rows)
    if interrupted:
        print(f"interrupted ({interrupted}): the tables hold the runs that ended before it", file=sys.stderr)
        return 130
    return 1 if any(m.returncode for m in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
