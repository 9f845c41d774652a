"""The project's GPU check: does ct-tune work, and how fast, on one CUDA GPU? One command, at most 8 minutes on
one H200; a Markdown table and a JSON file in ``--out``.

    python3 benchmarks/gpu_check.py [--out DIR] [--sections numerics,fused,...] [--quick] [--budget SECONDS]

Sections (each in a process of its own with a time budget: a failure, a crash or a hang in one costs that
section, not the others; rows are recorded as they are measured, so a section stopped at its budget keeps
what it had):

- numerics: CT forward and gradient on CUDA in fp32, bf16 and fp16 against the float64 CPU reference (the
  eager formula; the same numbers on the CPU beside them), and beta = 1 bit-identical to ReLU on CUDA.
- fused: the fused Triton kernels against eager CT on CUDA (values, gradients, beta = 1, per-group rows),
  then steered/plain images per second of a CIFAR-style resnet18 at 32x32 and torchvision resnet50 at
  224x224, batch 256, fp32 and bf16 (autocast, as ``run.precision: bf16``), inference and forward+backward,
  eager and fused. Goals: fused/plain >= 0.95 inference, >= 0.90 forward+backward.
- study: a real study through the ``ct-tune`` CLI: the small ResNet pretrained on digits (CPU, seconds), a
  probe and an adversarial objective, SQLite stores, 2 worker processes on cuda:0. Its ReLU baseline
  against the same profile scored on the CPU, ``gpu_peak_mb`` on every trial, every trial's MLflow run
  FINISHED.
- batched: trials/s for K = 1, 2, 4, 8, 16 profiles scored in one pass (``run.trials_per_batch``) on the
  CIFAR-style resnet18 at 32x32 and resnet50 at 224x224 (random weights, digits val upsampled, accuracy),
  and each K's scores against K = 1's for the same profiles. Goal: K = 8 >= 3x K = 1 on the resnet18.
- data: a compact (uint8) 224x224 split resident on the GPU (``run.data_on_gpu_mb``) against streamed from
  pinned memory: seconds per pass, bit-identical pixels and equal scores.
- pytest: ``pytest tests/gpu tests/workers/test_plan.py``: the tests marked ``gpu`` on this GPU, and the
  guards that every other test runs as on a machine without one.

A row's status: pass or FAIL (something is wrong), met or missed (a speed goal: a miss is a number to
look at, not a broken GPU path), or "not run" (the section's time was up). The exit status is 1 when a
section failed, else 0. Without a CUDA GPU it prints ``no CUDA GPU: skipped`` and exits 0, writing the JSON
with status ``skipped``. ``--device cpu`` runs the same code on the CPU with tiny models: a test of the
check itself, not a measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _path in (str(ROOT), str(ROOT / "benchmarks")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

SECTIONS = ("numerics", "fused", "study", "batched", "data", "pytest")
TITLES = {
    "numerics": "CT on CUDA vs the float64 CPU reference",
    "fused": "fused Triton kernels vs eager CT; steered/plain throughput",
    "study": "a real study: 2 workers on cuda:0, probe + adversarial, SQLite",
    "batched": "batched trials: trials/s for K profiles per pass",
    "data": "data path: split resident on the GPU vs streamed",
    "pytest": "pytest tests/gpu tests/workers/test_plan.py",
}
BUDGET_S = {  # the most seconds a section may take: (full, --quick)
    "numerics": (45, 30),
    "fused": (170, 90),
    "study": (150, 110),
    "batched": (110, 60),
    "data": (50, 40),
    "pytest": (150, 110),
}
TOTAL_S = (450, 300)  # the whole check (full, --quick): 8 minutes with the wheels' install and the start
MIN_SECTION_S = 20  # a section given less is not started
GRACE_S = 20  # a section process past its budget by this much is killed

# Bounds and goals, printed beside the numbers
FLOOR = 1e-2  # relative error = |y - ref| / max(|ref|, FLOOR): relative above 0.01, absolute / 0.01 below
CT_LIMITS = {"fp32": 2e-5, "bf16": 8e-3, "fp16": 1e-3}  # 1 ulp for the halves; fp32: the CPU's 3.6e-6 x ~5
GOAL_INFERENCE, GOAL_TRAINING, GOAL_BATCHED = 0.95, 0.90, 3.0
STUDY_TOLERANCE = {"probe": 0.01, "adversarial": 0.02}  # |GPU - CPU| of the ReLU baseline (3.6 / 4 samples)
BATCHED_TOLERANCE = 0.01  # share of samples whose correctness may differ between K and K = 1


# ------------------------------------------------------------------------------------------------ records
@dataclass
class Row:
    check: str
    value: str  # the numbers, formatted
    limit: str = ""  # the bound or goal
    status: str = "pass"  # pass, FAIL, met, missed, not run
    data: dict[str, Any] = field(default_factory=dict)  # the raw numbers, for the JSON


@dataclass
class SectionResult:
    name: str
    title: str
    status: str = "pass"  # pass, fail (a FAIL row or an error), skipped
    seconds: float = 0.0
    budget_s: float = 0.0
    rows: list[Row] = field(default_factory=list)
    error: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SectionResult:
        rows = [Row(**row) for row in data.get("rows", [])]
        return cls(**{**data, "rows": rows})


class Context:
    """What a section works with: the device, the mode, its deadline, a scratch folder, and its rows (written
    to ``result`` after every row, so that a section killed at its budget keeps what it measured)."""

    def __init__(self, name: str, device: str, quick: bool, seconds: float, scratch: Path, result: Path) -> None:
        import torch

        self.name, self.quick, self.scratch, self.result = name, quick, scratch, result
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.tiny = not self.cuda  # --device cpu: tiny models, a test of the check itself
        self.deadline = time.monotonic() + seconds
        self.section = SectionResult(name, TITLES[name], budget_s=seconds)
        self.started = time.monotonic()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def add(self, row: Row) -> Row:
        self.section.rows.append(row)
        print(f"  [{self.name}] {row.check}: {row.value} {row.limit} -> {row.status}", flush=True)
        self.save()
        return row

    def check(self, ok: bool, check: str, value: str, limit: str = "", **data: Any) -> bool:
        self.add(Row(check, value, limit, "pass" if ok else "FAIL", data))
        return ok

    def goal(self, met: bool, check: str, value: str, limit: str, **data: Any) -> None:
        self.add(Row(check, value, limit, "met" if met else "missed", data))

    def attempt(self, label: str, work: Callable[..., None], *args: Any) -> None:
        """``work(*args)``; an exception is a FAIL row for ``label`` and the section goes on."""
        try:
            work(*args)
        except Exception as error:
            self.add(Row(label, f"raised {type(error).__name__}: {str(error)[:300]}", status="FAIL"))
            self.section.error += traceback.format_exc()[-1500:]
            if self.cuda:
                import torch

                torch.cuda.empty_cache()

    def not_run(self, check: str, why: str = "the section's time was up") -> None:
        self.add(Row(check, why, status="not run"))

    def save(self) -> None:
        self.section.seconds = round(time.monotonic() - self.started, 1)
        self.section.status = "fail" if any(r.status == "FAIL" for r in self.section.rows) else "pass"
        self.result.write_text(json.dumps(asdict(self.section), indent=1, default=str))


def synchronize(device: Any) -> None:
    import torch

    if getattr(device, "type", device) == "cuda":
        torch.cuda.synchronize()


def relative_error(y: Any, reference: Any) -> float:
    """max |y - ref| / max(|ref|, FLOOR), in float64 on the CPU (inf where y is not finite)."""
    y = y.detach().double().cpu()
    if not bool(y.isfinite().all()):
        return math.inf
    return float(((y - reference).abs() / reference.abs().clamp_min(FLOOR)).max())


def scaled_difference(a: Any, b: Any) -> float:
    """max |a - b| / max |b|: how far two outputs are apart, relative to the output's size."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def precision_context(device: Any, precision: str) -> Any:
    """What ``run.precision`` does on CUDA: autocast to bf16/fp16; fp32 (and the CPU) as is."""
    import torch

    if precision == "fp32" or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[precision])


DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


# ------------------------------------------------------------------------------------------ 1. numerics
def reference_ct(x: Any, beta: float, c: float) -> tuple[Any, Any]:
    """The paper's formula in float64 on the CPU, written apart from ct_tune's (logaddexp for the softplus),
    and its derivative by autograd."""
    import torch

    x = x.detach().double().cpu().requires_grad_(True)
    m = 1.0 - beta
    y = c * torch.sigmoid(beta * x / m) * x + (1.0 - c) * torch.logaddexp(torch.zeros_like(x), x / m) * m
    y.backward(torch.ones_like(y))
    return y.detach(), x.grad


def ct_errors(x: Any, beta: float, c: float, reference: tuple[Any, Any]) -> tuple[float, float]:
    """Relative errors of ct_tune.ct's value and gradient at ``x`` (its device and dtype)."""
    import ct_tune

    import torch

    xi = x.detach().clone().requires_grad_(True)
    y = ct_tune.ct(xi, beta, c)
    y.backward(torch.ones_like(y))
    return relative_error(y, reference[0]), relative_error(xi.grad, reference[1])


def section_numerics(ctx: Context) -> None:
    import ct_tune
    from ct_tune.steering import _fused

    import torch

    _fused.set_fused(False)  # the eager formula here; the fused kernels are the next section's
    generator = torch.Generator().manual_seed(0)
    points = 2001 if ctx.tiny else 20001
    x64 = torch.cat(
        [
            torch.linspace(-30, 30, points, dtype=torch.float64),
            torch.randn(10 * points, generator=generator, dtype=torch.float64) * 5,
        ]
    )
    betas = (0.5, 0.9, 0.99) if ctx.quick or ctx.tiny else (0.5, 0.7, 0.9, 0.99, 0.999)
    cs = (0.0, 0.5, 1.0)
    where = str(ctx.device)
    for precision, name in DTYPE_NAMES.items():
        dtype = getattr(torch, name)
        x = x64.to(dtype)  # the reference sees the same rounded inputs
        worst = {"cpu": [0.0, 0.0], where: [0.0, 0.0]}
        for beta in betas:
            for c in cs:
                reference = reference_ct(x, beta, c)
                for device in dict.fromkeys(("cpu", where)):
                    errors = ct_errors(x.to(device), beta, c, reference)
                    worst[device] = [max(a, b) for a, b in zip(worst[device], errors, strict=True)]
        limit = CT_LIMITS[precision]
        forward, gradient = worst[where]
        ctx.check(
            forward <= limit and gradient <= limit,
            f"CT {precision} on {where}: max relative error, value / gradient",
            f"{forward:.2e} / {gradient:.2e} (cpu: {worst['cpu'][0]:.2e} / {worst['cpu'][1]:.2e})",
            f"<= {limit:.0e}",
            device=worst[where],
            cpu=worst["cpu"],
            betas=list(betas),
            cs=list(cs),
            points=len(x64),
        )
    for precision, name in DTYPE_NAMES.items():
        dtype = getattr(torch, name)
        x = (torch.randn(4096, generator=generator) * 10).to(dtype).to(ctx.device).requires_grad_(True)
        y = ct_tune.ct(x, 1.0)
        y.sum().backward()
        same = torch.equal(y, torch.relu(x)) and torch.equal(x.grad, (x > 0).to(dtype))
        ctx.check(
            same, f"beta = 1 is ReLU on {where}, {precision}", "bit-identical value and gradient" if same else "differs"
        )


# --------------------------------------------------------------------------------------------- 2. fused
def fused_inputs(dtype: Any, device: Any, tiny: bool) -> Any:
    import torch

    special = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 1e-8, -1e-8, 1.0, -1.0, 30.0, -30.0, 1e4, -1e4])
    shape = (4, 8, 6, 6) if tiny else (64, 32, 16, 16)
    count = math.prod(shape)
    generator = torch.Generator().manual_seed(1)
    x = torch.cat([special, torch.randn(count - len(special), generator=generator) * 5])
    return x.reshape(shape).to(dtype).to(device)


def fused_against_eager(ctx: Context, precision: str) -> None:
    """Values and gradients of the compiled kernels against the eager formula, at three betas."""
    from ct_tune.steering import _fused
    from ct_tune.steering._activation import ct_hot, ct_unchecked

    import torch

    dtype = getattr(torch, DTYPE_NAMES[precision])
    tolerance = {"rtol": 1e-5, "atol": 1e-6} if precision == "fp32" else {"rtol": 1e-2, "atol": 1e-2}
    x = fused_inputs(dtype, ctx.device, ctx.tiny)
    worst, ok, first = 0.0, True, None
    for beta in (0.7, 0.9, 0.99):
        x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        _fused.set_fused(False)
        eager = ct_unchecked(x1, beta, 0.5)
        _fused.set_fused(True)
        started = time.perf_counter()
        fast = ct_hot(x2, beta, 0.5)
        grad = torch.ones_like(x)
        eager.backward(grad)
        fast.backward(grad)
        synchronize(ctx.device)
        first = first if first is not None else time.perf_counter() - started
        finite = x1.grad.isfinite()
        ok &= torch.allclose(fast.float(), eager.float(), **tolerance)
        ok &= torch.allclose(x2.grad[finite].float(), x1.grad[finite].float(), **tolerance)
        ok &= bool(fast.isfinite().all() and x2.grad.isfinite().all())
        worst = max(worst, scaled_difference(fast, eager), scaled_difference(x2.grad[finite], x1.grad[finite]))
    ctx.check(
        ok,
        f"fused vs eager on {ctx.device}, {precision}: values and gradients, beta 0.7/0.9/0.99",
        f"max difference {worst:.1e} of the largest value; first call {first:.1f} s (compile)",
        f"allclose rtol {tolerance['rtol']:g}",
        scaled=worst,
        first_call_s=first,
    )


def fused_exact_and_grouped(ctx: Context) -> None:
    from ct_tune.steering import _fused
    from ct_tune.steering._activation import ct_hot, ct_unchecked

    import torch

    _fused.set_fused(True)
    x = fused_inputs(torch.float32, ctx.device, ctx.tiny).requires_grad_(True)
    out = ct_hot(x, 1.0, 0.5)
    exact = torch.equal(out, torch.relu(x))
    table = _fused.params_for(torch.tensor([1.0, 0.8]), 0.5, dtype=x.dtype).to(ctx.device)
    grouped = _fused.ct_fused(x[:2], table)
    grouped.sum().backward()
    exact &= torch.equal(grouped[0], torch.relu(x[0])) and torch.equal(x.grad[0], (x[0] > 0).float())
    ctx.check(exact, f"fused beta = 1 is ReLU on {ctx.device}", "bit-identical" if exact else "differs")
    y = torch.randn(6, 8, 5, 5, device=ctx.device)
    table = _fused.params_for(torch.tensor([0.8, 0.95, 1.0]), torch.tensor([0.2, 0.5, 0.9]), dtype=y.dtype)
    out = _fused.ct_fused(y, table.to(ctx.device))
    worst = 0.0
    for k, (beta, c) in enumerate([(0.8, 0.2), (0.95, 0.5), (1.0, 0.9)]):
        worst = max(worst, scaled_difference(out[2 * k : 2 * k + 2], ct_unchecked(y[2 * k : 2 * k + 2], beta, c)))
    ctx.check(worst <= 1e-5, "fused per-group rows (batched trials) vs one call per group", f"{worst:.1e}", "<= 1e-5")


def speed_models(ctx: Context) -> list[tuple[str, Callable[[], Any], int]]:
    import torchvision.models as tvm
    from steering_speed import cifar_resnet18

    if ctx.tiny:
        return [("CIFAR-style resnet18 @32x32 (tiny run)", cifar_resnet18, 32)]
    return [
        ("CIFAR-style resnet18 @32x32", cifar_resnet18, 32),
        ("torchvision resnet50 @224x224", lambda: tvm.resnet50(num_classes=1000), 224),
    ]


def throughput(ctx: Context, label: str, build: Callable[[], Any], size: int, precisions: Sequence[str]) -> None:
    """Plain, eager-steered and fused-steered images/s of one model, per precision and pass."""
    import ct_tune
    from ct_tune.steering import _fused

    import torch
    from steering_speed import best_times

    batch, repeats = (8, 1) if ctx.tiny else (256, 2 if ctx.quick else 4)
    torch.manual_seed(0)
    model = build().to(ctx.device).eval()
    x = torch.rand(batch, 3, size, size, device=ctx.device)
    steered = copy.deepcopy(model)
    blocks = ct_tune.units(steered, x[:1], "block")
    ct_tune.steer(steered, {u: 0.9 - 0.01 * i for i, u in enumerate(blocks)}, granularity="block", example_input=x[:1])
    for precision in precisions:
        if ctx.left() < 25:
            ctx.not_run(f"{label}, {precision}")
            continue
        with torch.inference_mode(), precision_context(ctx.device, precision):
            _fused.set_fused(False)
            eager = steered(x)
            _fused.set_fused(True)
            fused = steered(x)
        difference = scaled_difference(fused, eager)
        bound = 1e-3 if precision == "fp32" else 5e-2
        ctx.check(
            difference <= bound, f"{label}, {precision}: fused vs eager logits", f"{difference:.1e}", f"<= {bound:g}"
        )
        for mode, goal in (("inference", GOAL_INFERENCE), ("forward+backward", GOAL_TRAINING)):
            if ctx.left() < 20:
                ctx.not_run(f"{label}, {precision}, {mode}")
                continue

            def side(
                net: Any, fused: bool | None, inference: bool = mode == "inference", precision: str = precision
            ) -> Callable[[], None]:
                def work() -> None:
                    _fused.set_fused(fused)
                    if inference:
                        with torch.inference_mode(), precision_context(ctx.device, precision):
                            net(x)
                    else:
                        with precision_context(ctx.device, precision):
                            out = net(x.clone().requires_grad_(True))
                        out.float().logsumexp(1).sum().backward()
                    synchronize(ctx.device)

                return work

            sides = {"plain": side(model, None), "eager": side(steered, False), "fused": side(steered, True)}
            best = best_times(sides, repeats)
            speed = {name: batch / seconds for name, seconds in best.items()}
            fused_ratio, eager_ratio = best["plain"] / best["fused"], best["plain"] / best["eager"]
            ctx.goal(
                fused_ratio >= goal,
                f"{label}, {precision}, {mode}: steered/plain",
                f"fused {fused_ratio:.2f}, eager {eager_ratio:.2f} (plain {speed['plain']:,.0f} img/s, "
                f"fused {speed['fused']:,.0f}, eager {speed['eager']:,.0f})",
                f"fused >= {goal:.2f}",
                images_per_s=speed,
                batch=batch,
                repeats=repeats,
            )
    _fused.set_fused(None)


def section_fused(ctx: Context) -> None:
    from ct_tune.steering import _fused

    precisions = ("fp32", "bf16") if ctx.quick or ctx.tiny else ("fp32", "bf16", "fp16")
    for precision in precisions:
        ctx.attempt(f"fused vs eager, {precision}", fused_against_eager, ctx, precision)
    ctx.attempt("fused beta = 1 and per-group rows", fused_exact_and_grouped, ctx)
    status = _fused.fused_status(ctx.device.type)
    ctx.check(status.startswith("fused for"), f"fused path in use on {ctx.device.type} (no silent fallback)", status)
    for label, build, size in speed_models(ctx):
        if ctx.left() < 30:
            ctx.not_run(label)
            continue
        ctx.attempt(label, throughput, ctx, label, build, size, ("fp32", "bf16") if ctx.cuda else ("fp32",))


# --------------------------------------------------------------------------------------------- 3. study
STUDY = "gpu-check"
STUDY_OBJECTIVES = [
    {"name": "probe"},
    # no random start: the CPU and the GPU draw other noise, and the baseline is compared between them
    {"name": "adversarial", "eps": 0.1, "steps": 10, "n": 200, "random_start": False},
]


def child_env() -> dict[str, str]:
    """The environment of a process this check starts: this source tree importable, MLflow quiet."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}


def ct_tune_cli(args: Sequence[str], *, cwd: Path, log: Path, timeout: float) -> int:
    """``ct-tune ARGS`` (``python -m ct_tune.cli``: the same entry point), its output appended to ``log``; its
    process group is killed at ``timeout`` (the launcher and its workers)."""
    with log.open("a") as out:
        out.write(f"$ ct-tune {' '.join(args)}\n")
        out.flush()
        process = subprocess.Popen(
            [sys.executable, "-m", "ct_tune.cli", *args],
            cwd=cwd,
            env=child_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            return process.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return -9


def pretrained_digits(ctx: Context) -> Path:
    """The small ResNet of the tests and the quickstart, pretrained on digits on the CPU."""
    from ct_tune.training import PretrainConfig, pretrain

    import torch

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    root = ctx.scratch / "pretrained"
    root.mkdir(parents=True, exist_ok=True)
    config = PretrainConfig(
        data="digits",
        epochs=2 if ctx.tiny else 6,
        out=str(root / "digits.pt"),
        accelerator="cpu",
        tracking_uri=f"sqlite:///{root}/mlflow.db",
        progress=False,
    )
    return Path(pretrain(config)["checkpoint"])


def study_spec(checkpoint: Path, device: str, trials: int) -> dict[str, Any]:
    return {
        "model": {"checkpoint": str(checkpoint)},
        "data": {"name": "digits", "seed": 0},
        "search": {"granularity": "block", "beta": {"low": 0.7, "high": 1.0}, "enqueue_baseline": True},
        "objectives": STUDY_OBJECTIVES,
        "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 3},
        "budget": {"n_trials": trials},
        "run": {"device": device, "batch_size": 128},
    }


def section_study(ctx: Context) -> None:
    started = time.monotonic()
    checkpoint = pretrained_digits(ctx)
    ctx.check(
        checkpoint.is_file(), "pretrained the small ResNet on digits (CPU)", f"{time.monotonic() - started:.0f} s"
    )
    work = ctx.scratch / "study"
    work.mkdir(parents=True, exist_ok=True)
    trials = 4 if ctx.tiny or ctx.quick else 8
    devices = "cuda:0" if ctx.cuda else "cpu"
    (work / "spec.json").write_text(json.dumps(study_spec(checkpoint, devices, trials)))
    stores = ["--storage", f"sqlite:///{work}/optuna.db", "--tracking-uri", f"sqlite:///{work}/mlflow.db"]
    log = work / "cli.log"
    created = ct_tune_cli(["study", "create", "spec.json", "--name", STUDY, *stores], cwd=work, log=log, timeout=60)
    if not ctx.check(created == 0, "ct-tune study create", f"exit {created}"):
        return
    run_args = ["study", "run", STUDY, "--workers", "2", "--devices", devices, *stores]
    run_args += ["--no-progress", "--log-dir", str(work / "logs"), "--heartbeat", "5"]
    if not ctx.cuda:
        run_args.append("--oversubscribe")
    started = time.monotonic()
    code = ct_tune_cli(run_args, cwd=work, log=log, timeout=ctx.left() - 25)  # the rest: the checks below
    seconds = time.monotonic() - started
    output = log.read_text(errors="replace")
    ready = dict(re.findall(r"worker (\d) ready on (.+?) \(pid", output))
    ctx.check(
        code == 0 and len(ready) == 2 and all(("cuda" in d) == ctx.cuda for d in ready.values()),
        f"ct-tune study run --workers 2 --devices {devices}",
        f"exit {code} in {seconds:.0f} s; " + "; ".join(f"worker {w} on {d}" for w, d in sorted(ready.items())),
        output=output[-3000:] if code else "",
    )
    import ct_tune

    study = ct_tune.load_study(STUDY, storage=stores[1], tracking_uri=stores[3])
    counts = {state: count for state, count in study.counts().items() if count}
    ctx.check(counts.get("COMPLETE", 0) == trials, "trials complete", json.dumps(counts), f"{trials} COMPLETE")
    study_runs(ctx, study, stores[3], trials)
    baseline_as_on_the_cpu(ctx, study, checkpoint)


def study_runs(ctx: Context, study: Any, tracking: str, trials: int) -> None:
    """One FINISHED MLflow run per trial, each with its peak GPU memory."""
    from ct_tune.stores import open_mlflow_client

    client = open_mlflow_client(tracking)
    runs = [
        r for r in client.search_runs([study.experiment_id], max_results=1000) if "mlflow.parentRunId" in r.data.tags
    ]
    statuses: dict[str, int] = {}
    for r in runs:
        statuses[r.info.status] = statuses.get(r.info.status, 0) + 1
    workers = sorted({r.data.tags.get("ct_tune.worker", "?") for r in runs})
    ctx.check(
        statuses == {"FINISHED": trials},
        "every trial's MLflow run FINISHED",
        f"{json.dumps(statuses)}; trials by worker(s) {', '.join(workers)}",
        f"{trials} FINISHED",
    )
    if ctx.cuda:
        peaks = [r.data.metrics.get("gpu_peak_mb") for r in runs]
        logged = [p for p in peaks if p is not None and p > 0]
        ctx.check(
            len(logged) == len(runs) == trials,
            "gpu_peak_mb logged on every trial's run",
            f"{len(logged)} of {len(runs)} runs, {min(logged, default=0):.0f}-{max(logged, default=0):.0f} MB",
            peaks=peaks,
        )


def baseline_as_on_the_cpu(ctx: Context, study: Any, checkpoint: Path) -> None:
    """The study's ReLU baseline against the same profile scored on the CPU (``ct-tune evaluate``'s library
    call), after the run: the run gets the section's time first."""
    from ct_tune.bench import evaluate_profile

    baseline = study.baseline()
    if not ctx.check(baseline is not None, "the ReLU baseline trial completed", "yes" if baseline else "missing"):
        return
    model, data, run = (
        {"checkpoint": str(checkpoint)},
        {"name": "digits", "seed": 0},
        {"device": "cpu", "batch_size": 128},
    )
    scored = evaluate_profile(model=model, data=data, beta=1.0, objectives=STUDY_OBJECTIVES, run=run)
    for name, tolerance in STUDY_TOLERANCE.items():
        value, cpu = baseline.values[name], scored["results"][name]["value"]
        ctx.check(
            abs(value - cpu) <= tolerance,
            f"ReLU baseline {name}: study on {ctx.device.type} vs the CPU",
            f"{value:.4f} vs {cpu:.4f}",
            f"|difference| <= {tolerance}",
            study=value,
            cpu=cpu,
        )


# ------------------------------------------------------------------------------------------- 4. batched
def section_batched(ctx: Context) -> None:
    from ct_tune.steering import _fused

    _fused.set_fused(True)  # fixed: "auto" would switch mid-measurement and bill one K for a compile
    if ctx.tiny:
        models = [("small ResNet @8x8 (tiny run)", {"name": "cifar_resnet_small"})]
        ks, profiles, rounds = (1, 2), 2, 1
    else:
        models = [
            ("CIFAR-style resnet18 @32x32", {"name": "cifar_resnet18", "input_size": 32}),
            ("torchvision resnet50 @224x224", {"name": "resnet50", "input_size": 224}),
        ]
        ks, profiles, rounds = ((1, 4, 8), 8, 1) if ctx.quick else ((1, 2, 4, 8, 16), 16, 2)
    for label, model in models:
        if ctx.left() < 25:
            ctx.not_run(label)
            continue
        ctx.attempt(label, batched_model, ctx, label, model, (ks, profiles, rounds))
    _fused.set_fused(None)


def batched_model(ctx: Context, label: str, model: dict[str, Any], sizes: tuple[tuple[int, ...], int, int]) -> None:
    """Trials/s per K of one model (random weights) on digits val, accuracy, ``run.batch_size: auto``."""
    from ct_tune.bench import bench_spec

    from batched_trials import measure_spec

    ks, profiles, rounds = sizes
    spec = bench_spec(
        model=model,
        data={"name": "digits", "seed": 0},
        objectives=["accuracy"],
        run={"device": str(ctx.device), "batch_size": "auto"},
    )
    measured = measure_spec(spec, rounds=rounds, ks=ks, profiles=profiles, seconds=max(5.0, ctx.left() - 30))
    rates = measured.rates
    base = rates[1]
    ctx.check(
        True,
        f"{label}: trials/s for K = {', '.join(map(str, ks))} ({measured.rows} rows a pass)",
        ", ".join(f"K={k} {rate:.1f} ({rate / base:.2f}x)" for k, rate in rates.items()),
        rates=rates,
        rows=measured.rows,
    )
    if 8 in rates and "resnet18" in label:
        ratio = rates[8] / base
        ctx.goal(ratio >= GOAL_BATCHED, f"{label}: K=8 / K=1", f"{ratio:.2f}x", f">= {GOAL_BATCHED:g}x")
    scores_agree(ctx, label, measured)


def scores_agree(ctx: Context, label: str, measured: Any) -> None:
    """Each K's scores of each profile against K = 1's: the value, and how many samples' 1/0 differ."""
    import torch

    worst_value, worst_share, compared = 0.0, 0.0, 0
    for k, found in measured.values.items():
        for i, values in enumerate(found):
            for name, value in values.items():
                worst_value = max(worst_value, abs(value - measured.values[1][i][name]))
                mine, single = measured.correct[k][i].get(name), measured.correct[1][i].get(name)
                if mine is not None and single is not None:
                    differ = int((mine.cpu() != single.cpu()).sum())
                    worst_share = max(worst_share, differ / max(1, single.numel()))
                    compared += 1
    ok = worst_share <= BATCHED_TOLERANCE and worst_value <= BATCHED_TOLERANCE and compared > 0
    ctx.check(
        ok,
        f"{label}: every K's scores vs K = 1, same profiles",
        f"largest |difference| {worst_value:.4f}; samples scored otherwise {worst_share:.2%} ({compared} comparisons)",
        f"<= {BATCHED_TOLERANCE:.0%} of the samples",
        exact=bool(worst_share == 0 and torch.tensor(worst_value) == 0),
    )


# ---------------------------------------------------------------------------------------------- 5. data
def best_seconds(work: Callable[[], Any], device: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        started = time.perf_counter()
        work()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return min(times[1:])


def section_data(ctx: Context) -> None:
    from ct_tune.bench import Bench, bench_spec

    import torch
    from data_scale import make_imagefolder

    val = 24 if ctx.tiny else (256 if ctx.quick else 512)
    images = make_imagefolder(ctx.scratch / "images", 20, val, test=10)
    os.environ["CT_TUNE_CACHE"] = str(ctx.scratch / "cache")
    found: dict[str, dict[str, Any]] = {}
    for label, resident_mb in (("resident", 4096), ("streamed", 0)):
        spec = bench_spec(
            model={"name": "resnet18", **({"input_size": 32} if ctx.tiny else {})},
            data={"name": "imagefolder", "data_dir": str(images), "cache": True},
            objectives=["accuracy"],
            run={"device": str(ctx.device), "batch_size": 256, "data_on_gpu_mb": resident_mb},
        )
        torch.manual_seed(0)
        with Bench.open(spec) as bench:
            samples, _ = bench.samples("val")

            def decode(rows: Any = samples, step: int = 256) -> None:
                for start in range(0, len(rows), step):
                    rows[start : start + step]

            evaluator = bench.evaluator("val")
            found[label] = {
                "resident": samples.resident,
                "repr": repr(samples),
                "encoding": samples.encoding,
                "decode_s": best_seconds(decode, ctx.device, 1 if ctx.tiny else 3),
                "pass_s": best_seconds(evaluator.evaluate, ctx.device, 1 if ctx.tiny else 2),
                "pixels": samples.all().cpu(),
                "result": evaluator.evaluate()["accuracy"],
            }
    resident, streamed = found["resident"], found["streamed"]
    placed = resident["resident"] and not streamed["resident"] if ctx.cuda else True  # on a CPU: always "resident"
    ctx.check(
        resident["encoding"] != "float32" and placed,
        "val split compact; resident with data_on_gpu_mb 4096, streamed with 0",
        f"{resident['repr']}; {streamed['repr']}",
    )
    ctx.check(
        True,
        "seconds per pass, resident vs streamed: decode only / accuracy (resnet18)",
        f"{resident['decode_s']:.4f} vs {streamed['decode_s']:.4f} / "
        f"{resident['pass_s']:.3f} vs {streamed['pass_s']:.3f}",
        decode_s=[resident["decode_s"], streamed["decode_s"]],
        pass_s=[resident["pass_s"], streamed["pass_s"]],
    )
    same_pixels = torch.equal(resident["pixels"], streamed["pixels"])
    ctx.check(same_pixels, "decoded pixels, resident vs streamed", "bit-identical" if same_pixels else "differ")
    a, b = resident["result"], streamed["result"]
    same = a.value == b.value and (a.correct is None or torch.equal(a.correct.cpu(), b.correct.cpu()))
    ctx.check(same, "accuracy, resident vs streamed", f"{a.value:.4f} vs {b.value:.4f}", "equal, sample by sample")


# -------------------------------------------------------------------------------------------- 6. pytest
PYTEST_TARGETS = ("tests/gpu", "tests/workers/test_plan.py")


def read_junit(path: Path) -> dict[str, Any]:
    """Counts and the failed and skipped tests (with their messages) of a pytest ``--junitxml`` file."""
    import xml.etree.ElementTree as ElementTree

    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failed, skipped = [], []
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        if outcome is None:
            counts["passed"] += 1
            continue
        message = (outcome.get("message") or "")[:300]
        if outcome.tag == "skipped":
            counts["skipped"] += 1
            skipped.append(f"{name}: {message}")
        else:
            counts["failed" if outcome.tag == "failure" else "errors"] += 1
            failed.append(f"{name}: {message}")
    return {**counts, "failed_tests": failed, "skipped_tests": skipped}


def section_pytest(ctx: Context) -> None:
    junit = ctx.scratch / "pytest.xml"
    command = [sys.executable, "-m", "pytest", *PYTEST_TARGETS, "-p", "no:cacheprovider", "-q", "-rfEs"]
    command += [f"--junitxml={junit}", "--timeout=240"]
    log = ctx.scratch / "pytest.log"
    started = time.monotonic()
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=child_env(), stdout=out, stderr=subprocess.STDOUT)
        try:
            code = process.wait(timeout=max(1.0, ctx.left() - 5))
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
    seconds = time.monotonic() - started
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
    if not junit.is_file():
        ctx.check(
            False, f"pytest {' '.join(PYTEST_TARGETS)}", f"exit {code} after {seconds:.0f} s, no report", tail=tail
        )
        return
    found = read_junit(junit)
    gpu_skipped = [s for s in found["skipped_tests"] if "needs a CUDA GPU" in s]
    ok = code == 0 and not found["failed"] and not found["errors"] and (not ctx.cuda or not gpu_skipped)
    ctx.check(
        ok,
        f"pytest {' '.join(PYTEST_TARGETS)}",
        f"{found['passed']} passed, {found['failed']} failed, {found['errors']} errors, {found['skipped']} skipped "
        f"in {seconds:.0f} s (exit {code})",
        "all pass; no gpu test skipped" if ctx.cuda else "all pass",
        **found,
        tail=tail if not ok else "",
    )
    for failure in found["failed_tests"][:10]:
        ctx.add(Row("failed test", failure, status="FAIL"))


RUNNERS: dict[str, Callable[[Context], None]] = {
    "numerics": section_numerics,
    "fused": section_fused,
    "study": section_study,
    "batched": section_batched,
    "data": section_data,
    "pytest": section_pytest,
}


def run_section_here(name: str, device: str, quick: bool, seconds: float, scratch: Path, result: Path) -> int:
    """The body of a section's own process: run it, record an exception as a failed row."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    ctx = Context(name, device, quick, seconds, scratch, result)
    ctx.save()
    try:
        RUNNERS[name](ctx)
    except Exception as error:
        ctx.section.error = traceback.format_exc()[-4000:]
        ctx.add(Row("the section raised", f"{type(error).__name__}: {str(error)[:300]}", status="FAIL"))
    ctx.save()
    return 0


# ------------------------------------------------------------------------------------------ the launcher
def budgets(selected: Sequence[str], quick: bool, total: float) -> Iterator[tuple[str, Callable[[float], float]]]:
    """Each section with a function of the seconds spent so far that gives its budget: its own cap, less what
    the sections after it need at least, within the check's total."""
    for index, name in enumerate(selected):
        later = len(selected) - index - 1
        cap = BUDGET_S[name][1 if quick else 0]

        def budget(spent: float, cap: float = cap, later: int = later) -> float:
            return max(0.0, min(cap, total - spent - later * MIN_SECTION_S))

        yield name, budget


def run_section(name: str, args: argparse.Namespace, budget: float, scratch: Path, log: Path) -> SectionResult:
    """One section in a process of its own (its process group killed at the budget plus a grace period)."""
    result = scratch / f"{name}.json"
    folder = scratch / name
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--section-child", name, "--device", args.device]
    command += ["--child-seconds", str(budget), "--child-scratch", str(folder), "--child-result", str(result)]
    if args.quick:
        command.append("--quick")
    started = time.monotonic()
    with log.open("a") as out:
        out.write(f"\n===== section {name} (budget {budget:.0f} s) =====\n")
        out.flush()
        process = subprocess.Popen(
            command, env=child_env(), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
        )
        killed = False
        try:
            code = process.wait(timeout=budget + GRACE_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            code, killed = process.wait(), True
    seconds = time.monotonic() - started
    try:
        section = SectionResult.from_dict(json.loads(result.read_text()))
    except (OSError, ValueError, TypeError):
        section = SectionResult(name, TITLES[name], budget_s=budget)
    section.seconds, section.budget_s = round(seconds, 1), round(budget, 1)
    if killed:
        section.rows.append(
            Row("the section's process", f"killed after {seconds:.0f} s (budget {budget:.0f} s)", status="FAIL")
        )
    elif code != 0 or not section.rows:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        section.rows.append(Row("the section's process", f"exit {code}", status="FAIL"))
        section.error = section.error or tail
    section.status = "fail" if any(r.status == "FAIL" for r in section.rows) else "pass"
    return section


def environment() -> dict[str, Any]:
    """What the numbers were measured on."""
    import importlib.metadata as metadata

    import torch

    found: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cpus": os.cpu_count(),
        "host": platform.node(),
    }
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        found.update(gpu=properties.name, gpu_memory_gib=round(properties.total_memory / 2**30, 1))
        found["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        found["gpus"] = torch.cuda.device_count()
    for package in ("ct-tune", "triton", "torchvision", "lightning", "optuna", "mlflow", "sqlalchemy", "pydantic",
                    "typing_extensions", "numpy", "scikit-learn"):  # fmt: skip
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[package] = metadata.version(package)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        smi = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        found["driver"] = subprocess.run(smi, capture_output=True, text=True, timeout=20).stdout.strip()
    return found


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown page: the environment, then one table row per check."""
    env = report.get("environment", {})
    lines = [f"# ct-tune GPU check: {report['status']}", ""]
    if report["status"] == "skipped":
        return "\n".join([*lines, report.get("reason", ""), ""])
    where = ", ".join(f"{k} {env[k]}" for k in ("gpu", "driver", "torch", "cuda", "triton", "python") if env.get(k))
    lines += [
        f"{where}; started {report['started']}, {report['seconds']:.0f} s in all"
        f"{' (--quick)' if report['options'].get('quick') else ''}.",
        "",
        "| section | check | result | bound / goal | status |",
        "|---|---|---|---|---|",
    ]
    for section in report["sections"]:
        head = f"{section['name']} ({section['seconds']:.0f} of {section['budget_s']:.0f} s)"
        rows = [[row["check"], row["value"], row["limit"], row["status"]] for row in section["rows"]]
        for i, cells in enumerate(rows or [["-", section.get("error") or section["status"], "", section["status"]]]):
            cells = [head if i == 0 else "", *cells]
            lines.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    failed = [s["name"] for s in report["sections"] if s["status"] == "fail"]
    missed = [f"{s['name']}: {r['check']}" for s in report["sections"] for r in s["rows"] if r["status"] == "missed"]
    lines += ["", f"Sections failed: {', '.join(failed) or 'none'}. Goals missed: {len(missed)}."]
    lines += [f"- missed: {m}" for m in missed]
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "gpu_check.md").write_text(markdown(report))


def parse_sections(text: str) -> list[str]:
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if not chosen or unknown:
        raise argparse.ArgumentTypeError(f"{text!r}: choose from {','.join(SECTIONS)}")
    return [s for s in SECTIONS if s in chosen]  # in the check's order


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_check", help="write gpu_check.md, gpu_check.json, sections.log here")
    parser.add_argument(
        "--sections",
        type=parse_sections,
        default=list(SECTIONS),
        help=f"comma-separated (default all: {','.join(SECTIONS)})",
    )
    parser.add_argument("--quick", action="store_true", help="fewer repeats, sizes and Ks (about 5 minutes)")
    parser.add_argument(
        "--budget", type=float, help=f"seconds for the whole check (default {TOTAL_S[0]}, quick {TOTAL_S[1]})"
    )
    parser.add_argument(
        "--device", default="cuda", choices=["cuda", "cpu"], help="cpu: tiny models, a test of the check itself"
    )
    for name in ("--section-child", "--child-seconds", "--child-scratch", "--child-result"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.section_child:
        return run_section_here(
            args.section_child,
            args.device,
            args.quick,
            float(args.child_seconds),
            Path(args.child_scratch),
            Path(args.child_result),
        )
    out = Path(args.out)
    import torch

    report: dict[str, Any] = {
        "status": "pass",
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "seconds": 0.0,
        "options": {"sections": args.sections, "quick": args.quick, "device": args.device, "budget": args.budget},
        "environment": {},
        "sections": [],
    }
    if args.device == "cuda" and not torch.cuda.is_available():
        report.update(status="skipped", reason="no CUDA GPU: torch.cuda.is_available() is False")
        report["environment"] = {"python": platform.python_version(), "torch": torch.__version__}
        write_report(out, report)
        print("no CUDA GPU: skipped")
        return 0
    report["environment"] = environment()
    print(json.dumps(report["environment"]), flush=True)
    total = args.budget or TOTAL_S[1 if args.quick else 0]
    started = time.monotonic()
    log = out / "sections.log"
    out.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        for name, budget_of in budgets(args.sections, args.quick, total):
            budget = budget_of(time.monotonic() - started)
            print(f"== {name}: {TITLES[name]} (budget {budget:.0f} s)", flush=True)
            if budget < MIN_SECTION_S:
                section = SectionResult(
                    name, TITLES[name], status="skipped", error="no time left in the check's budget"
                )
            else:
                section = run_section(name, args, budget, Path(scratch), log)
                junit = Path(scratch) / name / "pytest.xml"
                if junit.is_file():
                    (out / "pytest.xml").write_bytes(junit.read_bytes())
            report["sections"].append(asdict(section))
            report["seconds"] = round(time.monotonic() - started, 1)
            failed = any(s["status"] == "fail" for s in report["sections"])
            report["status"] = "fail" if failed else "pass"
            write_report(out, report)  # after every section: a command stopped at its limit keeps the rest
            print(f"== {name}: {section.status} in {section.seconds:.0f} s", flush=True)
            if section.status == "fail" and section.error:
                print(section.error[-2000:], flush=True)
    print()
    print(markdown(report), flush=True)
    return 1 if report["status"] == "fail" else 0


if __name__ == "__main__":
    sys.exit(main())
