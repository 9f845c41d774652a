"""The CT activation as one pass over memory forward and one backward: what the steering hooks call.

Eager CT is about seven elementwise kernels (sigmoid, softplus, products, sums), each a full pass over
the activation, and its autograd graph keeps several intermediates. Here the formula is one function of
``x`` and a small table of constants (one row per group of samples: batched trials give every slice of
the batch its own betas), compiled by inductor (C++/OpenMP on CPU, Triton on CUDA) with dynamic shapes
and wrapped in an ``autograd.Function`` whose backward is a second compiled kernel that recomputes the
gates from ``x`` (the only tensor saved). Betas and c are *data*, never constants of the compiled code,
so a new trial's betas never recompile.

The compiled math is written for speed on CPU, where CT is bound by its transcendental functions:
- arguments of ``exp`` are clamped to +-80 (float32; 700 for float64): below -87 ``exp`` returns
  denormals, which x86 computes tens of times slower (a 5x slowdown of the whole kernel was measured
  at beta = 0.9); the gate is set to exactly 0 below -80, and the softplus exponential is clamped at
  -40 (its square must stay normal), which changes that term by less than m * 5e-18;
- ``softplus(u) * m`` is ``relu(x) + m * log1p(exp(-|u|))``: the same exponential as the backward's
  ``sigmoid(u)``, no overflow; in float32 that ``log1p`` of [0, 1] is a short series (``_log1p_unit``),
  float64 keeps ``torch.log1p``. It differs from ``F.softplus``'s switch to x at 20 by at most m * 2e-9.

Measured on the 2-core reference CPU (one thread, a 64x64x32x32 activation, ns per element): forward
4.3-4.5 fused vs 7.5 (beta 0.9) to 14 (beta 0.99) eager, ReLU 0.3; forward+backward 7.8-8.9 vs 12-21.
A CIFAR-style resnet18 steered per block runs at 0.95 of its plain speed fused, 0.68-0.73 eager
(``benchmarks/steering_speed.py``). CUDA (Triton) is the same code path but has not been measured.

When it pays: the first call in a process compiles, about 10 s forward + 3 s backward on a fresh
machine and 5 s + 0.4 s once inductor's on-disk cache holds the kernels. ``CT_TUNE_FUSED``:
``1`` fuses from the first call, ``0`` never, ``auto`` (default) after the eager formula has processed
``AUTO_AFTER_ELEMENTS`` elements in this process (a long study on a real model gets there within its
first trials; tests, short evaluations and tiny models never pay the compile).

Without a working compiler (inductor needs a C++ compiler on CPU, Triton on CUDA) a kernel's first use
fails its self-check and the process falls back to eager, with one warning. Every kernel variant
(forward/backward, dtype, device, one row or many) is checked once against the plain math before it is
trusted.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ct_tune.steering._families import FAMILIES

import torch

logger = logging.getLogger(__name__)

__all__ = [
    "check_fused",
    "ct_fused",
    "fused_setting",
    "fused_status",
    "params_for",
    "scalar_params",
    "set_fused",
    "use_fused",
]

_LOW_PRECISION = (torch.float16, torch.bfloat16)
_COLUMNS = 5  # a = beta / m, 1 / m, m, c, relu (1.0 where beta = 1)
_DEVICES = ("cpu", "cuda")
AUTO_AFTER_ELEMENTS = 2_000_000_000  # ~10 s of eager CT on a 2-core CPU: a few compiles' worth

_lock = threading.Lock()
_checked: set[tuple[Any, ...]] = set()  # kernel variants that matched the plain math
_forced: list[bool | None] = [None]  # set_fused(); None: CT_TUNE_FUSED decides
_disabled: dict[str, str] = {}  # device type -> why the fused path is off there
_eager_elements = [0]  # elements the eager formula processed while "auto" waited


def _setting() -> bool | None:
    """True/False when forced (set_fused, then CT_TUNE_FUSED=1/0), None for automatic."""
    if _forced[0] is not None:
        return _forced[0]
    value = os.environ.get("CT_TUNE_FUSED", "auto").strip().lower()
    if value in ("0", "false", "no", "off", "eager"):
        return False
    if value in ("1", "true", "yes", "on", "fused"):
        return True
    return None


def set_fused(enabled: bool | None) -> None:
    """Force the fused path on or off in this process (None: back to ``CT_TUNE_FUSED``, default auto).

    Switching it on again forgets earlier failures (variants that passed their check stay trusted).
    """
    _forced[0] = enabled
    if enabled is not False:
        _disabled.clear()


@contextmanager
def fused_setting(enabled: bool | None) -> Iterator[None]:
    """``set_fused(enabled)`` for a block; afterwards the setting and the failures known before it are back."""
    before, disabled = _forced[0], dict(_disabled)
    set_fused(enabled)
    try:
        yield
    finally:
        _forced[0] = before
        _disabled.clear()
        _disabled.update(disabled)


def fused_status(device_type: str = "cpu") -> str:
    """``fused ...``, ``auto (...) ...`` or ``eager (why)`` for a device type, as the hooks would run now; the
    first two say which families run eager whatever the setting (GELU: the kernels compute the sigmoid gate)."""
    setting = _setting()
    if setting is False:
        return "eager (CT_TUNE_FUSED=0)" if _forced[0] is None else "eager (set_fused(False))"
    if device_type not in _DEVICES:
        return f"eager (no fused kernel for {device_type})"
    if device_type in _disabled:
        return f"eager ({_disabled[device_type]})"
    fused = ", ".join(family.label for family in FAMILIES.values() if family.fused)
    eager = " and ".join(family.label for family in FAMILIES.values() if not family.fused)
    if setting is None and _eager_elements[0] < AUTO_AFTER_ELEMENTS:
        return (
            f"auto (eager until {AUTO_AFTER_ELEMENTS:.0e} elements, {_eager_elements[0]:.2e} so far; then fused "
            f"for {fused}); {eager} sites run the eager formula"
        )
    return f"fused for {fused}; {eager} sites run the eager formula"


def use_fused(x: torch.Tensor) -> bool:
    """Whether the hooks should run CT on ``x`` through the compiled kernels (counts eager work for auto).

    Never inside someone else's ``torch.compile`` (dynamo traces the plain formula itself) nor under
    torch.func transforms (vmap, jacrev: the autograd.Function defines no rules for them).
    """
    setting = _setting()
    if setting is False or x.device.type not in _DEVICES or x.device.type in _disabled:
        return False
    if x.dim() == 0 or torch.compiler.is_compiling():
        return False
    peek = getattr(getattr(torch._C, "_functorch", None), "peek_interpreter_stack", None)
    if peek is not None and peek() is not None:
        return False
    if setting is None and _eager_elements[0] < AUTO_AFTER_ELEMENTS:
        _eager_elements[0] += x.numel()
        return False
    return True


class FusedKernelError(RuntimeError):
    """A fused kernel failed while the fused path was forced on; ``reason`` is the one-line why."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the fused CT activation was forced on (CT_TUNE_FUSED=1) but fails: {reason}")
        self.reason = reason


def _disable(device_type: str, reason: str) -> None:
    reason = (reason.strip().splitlines() or [""])[0]  # compilers add paragraphs of advice
    if _setting() is True:
        raise FusedKernelError(reason)
    if device_type not in _disabled:
        logger.warning("fused CT activation unavailable on %s (%s); using the eager formula", device_type, reason)
    _disabled[device_type] = reason


# --------------------------------------------------------------------------------------------------
# Constants, one row per group of samples
def params_for(beta: float | torch.Tensor, c: float | torch.Tensor, *, dtype: torch.dtype) -> torch.Tensor:
    """The kernel's constants, shape (rows, 5), computed in float64 and cast once.

    ``beta`` and ``c`` are floats (one row) or 1-D tensors (one row each, broadcast against each other).
    Rows where beta = 1 are flagged ReLU and get harmless constants (no 1/0 anywhere).
    """
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    beta_t = torch.as_tensor(beta, dtype=torch.float64).reshape(-1)
    c_t = torch.as_tensor(c, dtype=torch.float64, device=beta_t.device).reshape(-1)
    beta_t, c_t = torch.broadcast_tensors(beta_t, c_t)
    relu = beta_t >= 1.0
    m = torch.where(relu, torch.ones_like(beta_t), 1.0 - beta_t)
    table = torch.stack([beta_t / m, 1.0 / m, m, c_t, relu.to(torch.float64)], dim=1)
    return table.to(compute)


_scalar_cache: dict[tuple[float, float, torch.dtype, torch.device], torch.Tensor] = {}


def scalar_params(beta: float, c: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """One row of constants for a float beta and c, made once per (beta, c, dtype, device).

    Cached so that a forward pass creates no tensors and copies nothing to a GPU; made outside
    inference mode so that autograd may save them later.
    """
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    key = (beta, c, compute, device)
    table = _scalar_cache.get(key)
    if table is None:
        if len(_scalar_cache) > 4096:
            _scalar_cache.clear()
        with torch.inference_mode(False):
            table = _scalar_cache[key] = params_for(beta, c, dtype=compute).to(device)
    return table


# --------------------------------------------------------------------------------------------------
# The kernels (plain torch code; torch.compile turns each into one loop)
def _limit(dtype: torch.dtype) -> float:
    return 700.0 if dtype == torch.float64 else 80.0


def _soft_limit(dtype: torch.dtype) -> float:
    """Lowest argument of the softplus exponential: its square must stay a normal float in ``_log1p_unit``."""
    return 700.0 if dtype == torch.float64 else 40.0


def _gate(z: torch.Tensor) -> torch.Tensor:
    """sigmoid(z) without denormals: exactly 0 below -limit (so that ``gate * x`` is 0 for any huge
    negative x, as in the eager formula) and 1 above it (sigmoid(80) rounds to 1 in float32)."""
    limit = _limit(z.dtype)
    return torch.where(z < -limit, torch.zeros_like(z), torch.sigmoid(z.clamp(-limit, limit)))


def _log1p_unit(t: torch.Tensor) -> torch.Tensor:
    """log(1 + t) for t in [0, 1] as 2 atanh(s), s = t / (2 + t) <= 1/3: odd powers of s up to s^17.

    Relative error below 3e-7 in float32, and 1.6 ns/element less than inductor's vectorised
    ``log1p`` on this CPU (which took a third of the forward kernel's time).
    """
    s = t / (2.0 + t)
    s2 = s * s
    series = torch.full_like(s, 1.0 / 17)
    for k in range(15, 0, -2):
        series = series * s2 + 1.0 / k
    return 2.0 * s * series


def _forward_math(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """CT of ``x`` (rows, features) with constants ``p`` (rows or 1, 5), in float32 or float64."""
    xf = x.float() if x.dtype in _LOW_PRECISION else x
    a, inv_m, m, c, relu = (p[:, k : k + 1] for k in range(_COLUMNS))
    s1 = _gate(xf * a)
    e2 = torch.exp(torch.clamp(-(xf * inv_m).abs(), min=-_soft_limit(xf.dtype)))
    log_term = torch.log1p(e2) if xf.dtype == torch.float64 else _log1p_unit(e2)
    smooth = c * s1 * xf + (1.0 - c) * (torch.relu(xf) + m * log_term)
    return torch.where(relu > 0, torch.relu(xf), smooth).to(x.dtype)


def _backward_math(x: torch.Tensor, p: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """d CT / dx times ``grad``: c*s1*(1 + a*x*(1 - s1)) + (1 - c)*s2, s1 = sigmoid(a*x), s2 = sigmoid(x/m).

    ``x * (s1 * (1 - s1))`` is formed before multiplying by ``a``: it underflows to 0 where ``a * x``
    would overflow, so the gradient stays finite for beta near 1 and huge x.
    """
    xf = x.float() if x.dtype in _LOW_PRECISION else x
    gf = grad.float() if grad.dtype in _LOW_PRECISION else grad
    a, inv_m, _m, c, relu = (p[:, k : k + 1] for k in range(_COLUMNS))
    s1 = _gate(xf * a)
    u = xf * inv_m
    e2 = torch.exp(torch.clamp(-u.abs(), min=-_soft_limit(xf.dtype)))
    s2 = torch.where(u >= 0, torch.ones_like(e2), e2) / (1.0 + e2)
    slope = c * (s1 + (xf * (s1 * (1.0 - s1))) * a) + (1.0 - c) * s2
    relu_slope = (xf > 0).to(xf.dtype)
    return (gf * torch.where(relu > 0, relu_slope, slope)).to(x.dtype)


_MATH = {"forward": _forward_math, "backward": _backward_math}
_compiled: dict[tuple[Any, ...], Callable[..., torch.Tensor]] = {}


def _kernel(key: tuple[Any, ...]) -> Callable[..., torch.Tensor]:
    """A compiled kernel per variant. Each gets its own copy of the code object: dynamo keeps its
    cache (and its limit of 8 entries) per code object, and dtypes x devices x row modes exceed 8."""
    fn = _compiled.get(key)
    if fn is None:
        math = _MATH[key[0]]
        tag = "_".join(str(part).replace("torch.", "") for part in key)
        code = math.__code__.replace(co_name=f"ct_{tag}")
        copy = types.FunctionType(code, math.__globals__, f"ct_{tag}", math.__defaults__, math.__closure__)
        fn = _compiled[key] = torch.compile(copy, dynamic=True, fullgraph=True)
    return fn


def _run(name: str, *args: torch.Tensor) -> torch.Tensor:
    """The compiled kernel, checked against the plain math on its first use per variant."""
    x, p = args[0], args[1]
    key = (name, x.dtype, x.device.type, p.shape[0] == 1)
    if key in _checked:
        return _kernel(key)(*args)
    math = _MATH[name]
    if x.device.type in _disabled:  # failed on an earlier variant: the same math, uncompiled
        return math(*args)
    with _lock:
        try:
            out = _kernel(key)(*args)
            expected = math(*args)
        except Exception as error:  # no C++ compiler, no Triton, an unsupported platform, ...
            reason = f"{name} kernel for {x.dtype} on {x.device.type} failed: {type(error).__name__}: {error}"
            _disable(x.device.type, reason[:300])
            return math(*args)
        tolerance = 1e-2 if x.dtype in _LOW_PRECISION else (1e-4 if x.dtype == torch.float32 else 1e-9)
        if not torch.allclose(out.float(), expected.float(), rtol=tolerance, atol=tolerance, equal_nan=True):
            _disable(x.device.type, f"{name} kernel for {x.dtype} on {x.device.type} disagrees with the plain math")
            return expected
        _checked.add(key)
        return out


def check_fused(device: str | torch.device = "cpu", *, dtype: torch.dtype = torch.float32) -> str | None:
    """Run the fused kernels now on ``device`` (forward and backward, one beta for the batch, as the hooks
    call them): None when they compile and match the plain math, else why not (one line). Whatever
    ``CT_TUNE_FUSED`` says; the setting and the failures known before are back afterwards, and a variant that
    matched is trusted from then on.

    The first compile in a process takes about 10 s forward + 3 s backward on a 2-core CPU (inductor's
    C++), a few seconds once inductor's on-disk cache holds the kernels.
    """
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(6, 8, 12, 12, generator=generator, dtype=torch.float64) * 4  # a conv layer's output
    x = x.to(device=device, dtype=dtype).requires_grad_(True)
    params = scalar_params(0.8, 0.5, dtype, device)
    start = time.perf_counter()
    with fused_setting(True):
        try:
            out = ct_fused(x, params)
            out.backward(torch.ones_like(out))
        except FusedKernelError as error:
            return error.reason
        except Exception as error:  # anything else the device or compiler raises
            return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"[:300]
    logger.debug("fused kernels on %s: %.1f s", device, time.perf_counter() - start)
    # Compared here too: a variant checked on one GPU is trusted on the others by ``_run``.
    flat = x.detach().reshape(1, -1)
    tolerance = 1e-2 if dtype in _LOW_PRECISION else (1e-4 if dtype == torch.float32 else 1e-9)
    for name, got, want in (
        ("forward", out.detach(), _forward_math(flat, params)),
        ("backward", x.grad, _backward_math(flat, params, torch.ones_like(flat))),
    ):
        if not torch.allclose(got.reshape(1, -1).float(), want.float(), rtol=tolerance, atol=tolerance):
            worst = (got.reshape(1, -1).double() - want.double()).abs().max().item()
            return f"the {name} kernel on {device} disagrees with the plain math (max difference {worst:.2e})"
    return None


class _FusedCT(torch.autograd.Function):
    """Forward and backward each one compiled kernel; only ``x`` (and the constants) are saved."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, p)
        return _run("forward", x.detach(), p)  # detached: one compiled variant whether x requires grad or not

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None]:
        x, p = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None
        return _run("backward", x, p, grad.contiguous().view(x.shape)), None


def ct_fused(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """CT of ``x`` with ``params`` from :func:`params_for` (on x's device).

    ``x`` is a floating tensor with samples on dim 0; ``params`` has one row for every sample, or
    ``rows`` rows for ``rows`` equal consecutive groups of samples (batched trials). Returns a tensor
    of x's shape, dtype and memory format. Call only when :func:`use_fused` is true.
    """
    rows = params.shape[0]
    if x.dim() == 0 or x.shape[0] % rows:
        raise ValueError(f"{rows} rows of CT constants for an input of shape {tuple(x.shape)}")
    channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    dense = x.permute(0, 2, 3, 1) if channels_last else x.contiguous()
    flat = dense.reshape(rows, -1)
    out = _FusedCT.apply(flat, params).view(dense.shape)
    return out.permute(0, 3, 1, 2) if channels_last else out
