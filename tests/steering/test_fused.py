"""The fused CT kernels: same values and gradients as the eager formula, fallback, no recompiles."""

from __future__ import annotations

import logging

import ct_tune
from ct_tune.steering import _fused, fused_setting
from ct_tune.steering._activation import ct_hot, ct_unchecked

import pytest
import torch


@pytest.fixture
def fused():
    """The fused path forced on for one test (auto would wait for billions of elements)."""
    _fused.set_fused(True)
    yield
    _fused.set_fused(None)


def inputs(dtype: torch.dtype) -> torch.Tensor:
    """Zeros, tiny and huge magnitudes, and ordinary activations, shaped like a conv output."""
    special = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 1e-8, -1e-8, 1.0, -1.0, 30.0, -30.0, 1e4, -1e4, 3e38, -3e38])
    x = torch.cat([special, torch.randn(2 * 3 * 4 * 5 * 4 - len(special)) * 5])
    return x.reshape(2, 3, 4, 20).to(dtype)


def tolerances(dtype: torch.dtype) -> dict[str, float]:
    """float64: F.softplus switches to x above 20, the kernel keeps m * log1p(exp(-u)), at most m * 2e-9."""
    return {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-8, "atol": 1e-9}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("beta", [0.05, 0.7, 0.9, 0.99, 0.99999, 1.0 - 1e-9])
@pytest.mark.parametrize("c", [0.0, 0.5, 1.0])
def test_values_and_gradients_match_eager(fused, dtype, beta, c):
    x = inputs(dtype)
    if dtype == torch.float32 and beta == 1.0 - 1e-9:
        beta = 1.0 - 1e-6  # 1 - 1e-9 is 1.0 in float32 constants
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    eager = ct_unchecked(x1, beta, c)
    fast = ct_hot(x2, beta, c)
    assert fast.dtype == dtype and fast.shape == x.shape
    torch.testing.assert_close(fast, eager, **tolerances(dtype))
    grad = torch.randn_like(x)
    eager.backward(grad)
    fast.backward(grad)
    assert torch.isfinite(fast).all() and torch.isfinite(x2.grad).all()
    finite = torch.isfinite(x1.grad)  # the eager formula's gradient overflows at |x| ~ 3e38 (0 * inf)
    assert finite.sum() >= x.numel() - 2
    torch.testing.assert_close(x2.grad[finite], x1.grad[finite], **tolerances(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_beta_one_is_exact_relu(fused, dtype):
    x = inputs(dtype).requires_grad_(True)
    out = ct_hot(x, 1.0, 0.5)
    assert torch.equal(out, torch.relu(x))
    table = _fused.params_for(torch.tensor([1.0, 0.8]), 0.5, dtype=dtype)
    grouped = _fused.ct_fused(x, table)  # first sample ReLU (flag row), second CT
    assert torch.equal(grouped[0], torch.relu(x[0]))
    grouped.sum().backward()
    assert torch.equal(x.grad[0], (x[0] > 0).to(dtype))


def test_per_group_rows_match_separate_calls(fused):
    x = torch.randn(6, 8, 5, 5)
    table = _fused.params_for(torch.tensor([0.8, 0.95, 1.0]), torch.tensor([0.2, 0.5, 0.9]), dtype=x.dtype)
    out = _fused.ct_fused(x, table)  # 3 groups of 2 samples
    for k, (beta, c) in enumerate([(0.8, 0.2), (0.95, 0.5), (1.0, 0.9)]):
        torch.testing.assert_close(out[2 * k : 2 * k + 2], ct_unchecked(x[2 * k : 2 * k + 2], beta, c))


def test_channels_last_input_keeps_its_layout(fused):
    x = torch.randn(4, 8, 6, 6).to(memory_format=torch.channels_last).requires_grad_(True)
    out = ct_hot(x, 0.85, 0.5)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ct_unchecked(x.detach(), 0.85, 0.5))
    out.sum().backward()
    reference = x.detach().clone().requires_grad_(True)
    ct_unchecked(reference, 0.85, 0.5).sum().backward()
    torch.testing.assert_close(x.grad, reference.grad)


def test_new_betas_never_recompile(fused):
    from torch._dynamo.utils import counters

    x = torch.randn(4, 16, 8, 8, requires_grad=True)
    ct_hot(x, 0.9, 0.5).sum().backward()
    ct_hot(torch.randn(3, 5, 7), 0.9, 0.5)  # another shape: dynamic, at most one more graph
    with torch.inference_mode():
        ct_hot(x.detach(), 0.9, 0.5)
    before = sum(counters["stats"].values()), dict(counters["recompiles"])
    for beta in (0.7, 0.75, 0.8, 0.95, 0.99):
        for c in (0.3, 0.5):
            ct_hot(x, beta, c).sum().backward()
            ct_hot(torch.randn(5, 5, 9), beta, c)
            with torch.inference_mode():
                ct_hot(x.detach(), beta, c)
    after = sum(counters["stats"].values()), dict(counters["recompiles"])
    assert after == before


def test_steered_model_uses_the_fused_kernel_and_matches_eager(fused):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(inplace=True), torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 4)
    ).eval()
    x = torch.rand(5, 3, 8, 8)
    with ct_tune.steer(model, 0.8):
        fast = model(x)
        _fused.set_fused(False)
        eager = model(x)
    torch.testing.assert_close(fast, eager, rtol=1e-5, atol=1e-6)


def test_fallback_is_the_eager_formula_with_one_warning(monkeypatch, caplog):
    _fused.set_fused(None)
    monkeypatch.setattr(_fused, "_eager_elements", [_fused.AUTO_AFTER_ELEMENTS])  # auto: past the threshold

    def broken(key):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(_fused, "_kernel", broken)
    monkeypatch.setattr(_fused, "_checked", set())
    monkeypatch.setattr(_fused, "_disabled", {})
    x = torch.randn(3, 4, 5, requires_grad=True)
    with caplog.at_level(logging.WARNING, logger="ct_tune._fused"):
        out = ct_hot(x, 0.9, 0.5)
        again = ct_hot(x, 0.8, 0.5)
    torch.testing.assert_close(out, ct_unchecked(x, 0.9, 0.5))  # the kernel's math, run uncompiled
    assert torch.equal(again, ct_unchecked(x, 0.8, 0.5))  # from then on the eager formula itself
    assert sum("unavailable" in record.message for record in caplog.records) == 1
    assert _fused.fused_status("cpu").startswith("eager (forward kernel")


def test_forced_on_fails_loudly(monkeypatch):
    _fused.set_fused(True)
    try:
        monkeypatch.setattr(_fused, "_kernel", lambda key: (_ for _ in ()).throw(RuntimeError("no compiler")))
        monkeypatch.setattr(_fused, "_checked", set())
        with pytest.raises(RuntimeError, match="forced on"):
            ct_hot(torch.randn(2, 3), 0.9, 0.5)
    finally:
        _fused.set_fused(None)


def test_check_fused_runs_the_kernels_whatever_the_setting(monkeypatch):
    monkeypatch.setenv("CT_TUNE_FUSED", "0")
    assert ct_tune.steering.check_fused("cpu") is None
    assert _fused.fused_status() == "eager (CT_TUNE_FUSED=0)"


def test_check_fused_says_why_in_one_line_and_leaves_the_process_as_it_was(monkeypatch):
    def broken(key):
        raise RuntimeError("no compiler\n\nSet TORCHDYNAMO_VERBOSE=1 for the internal stack trace")

    monkeypatch.setattr(_fused, "_kernel", broken)
    monkeypatch.setattr(_fused, "_checked", set())
    monkeypatch.setattr(_fused, "_disabled", {"cuda": "no triton"})
    assert (
        ct_tune.steering.check_fused("cpu")
        == "forward kernel for torch.float32 on cpu failed: RuntimeError: no compiler"
    )
    assert _fused._disabled == {"cuda": "no triton"} and _fused._forced == [None]
    assert _fused.fused_status("cuda") == "eager (no triton)"


def test_setting_zero_forces_eager(monkeypatch):
    monkeypatch.setenv("CT_TUNE_FUSED", "0")
    monkeypatch.setattr(_fused, "_eager_elements", [_fused.AUTO_AFTER_ELEMENTS])
    assert not _fused.use_fused(torch.randn(4, 4))
    assert _fused.fused_status() == "eager (CT_TUNE_FUSED=0)"


def test_auto_waits_until_the_compile_pays(monkeypatch):
    monkeypatch.delenv("CT_TUNE_FUSED", raising=False)
    monkeypatch.setattr(_fused, "_eager_elements", [0])
    monkeypatch.setattr(_fused, "AUTO_AFTER_ELEMENTS", 100)
    x = torch.randn(10, 6)
    assert not _fused.use_fused(x)  # 60 elements
    assert not _fused.use_fused(x)  # 120: from the next call on
    assert _fused.use_fused(x)


def test_status_says_gelu_runs_eager_in_one_line(monkeypatch):
    monkeypatch.setattr(_fused, "_disabled", {})
    monkeypatch.setattr(_fused, "_eager_elements", [0])
    with fused_setting(True):
        assert _fused.fused_status("cpu") == "fused for ReLU, SiLU; GELU and GELU (tanh) sites run the eager formula"
    with fused_setting(None):
        monkeypatch.delenv("CT_TUNE_FUSED", raising=False)
        status = _fused.fused_status("cpu")
    assert status.startswith("auto (eager until 2e+09 elements") and "\n" not in status
    assert status.endswith("then fused for ReLU, SiLU); GELU and GELU (tanh) sites run the eager formula")
