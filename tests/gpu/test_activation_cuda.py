"""The CT activation on CUDA: the eager formula against the float64 reference in every precision, beta = 1 as
ReLU bit for bit, and the fused Triton kernels against the eager formula."""

from __future__ import annotations

import ct_tune
from ct_tune.steering import _fused
from ct_tune.steering._activation import ct_hot, ct_unchecked

import pytest
import torch

from tests.helpers import formula

pytestmark = pytest.mark.gpu

# max |y - ref| / max(|ref|, 0.01): one ulp for the halves; float32 measured 1.3e-6 (value), 2.3e-6 (gradient) on
# the CPU (benchmarks/gpu_check.py prints both devices side by side)
LIMITS = {torch.float32: 2e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3}


def relative_error(y: torch.Tensor, reference: torch.Tensor) -> float:
    return float(((y.detach().double().cpu() - reference).abs() / reference.abs().clamp_min(1e-2)).max())


@pytest.fixture
def eager():
    _fused.set_fused(False)
    yield
    _fused.set_fused(None)


@pytest.fixture
def fused():
    _fused.set_fused(True)  # forced: a kernel that fails raises instead of falling back
    yield
    _fused.set_fused(None)


@pytest.mark.parametrize("dtype", list(LIMITS))
@pytest.mark.parametrize(("beta", "c"), [(0.5, 0.5), (0.9, 0.0), (0.99, 1.0), (0.999, 0.5)])
def test_eager_ct_on_cuda_matches_the_float64_reference(eager, dtype, beta, c):
    x = torch.cat([torch.linspace(-30, 30, 4001), torch.randn(20000) * 5]).to(dtype)
    reference_input = x.double().requires_grad_(True)
    reference = formula(reference_input, beta, c)
    reference.backward(torch.ones_like(reference))
    on_gpu = x.cuda().requires_grad_(True)
    y = ct_tune.ct(on_gpu, beta, c)
    y.backward(torch.ones_like(y))
    assert y.device.type == "cuda" and y.dtype == dtype
    assert relative_error(y, reference.detach()) <= LIMITS[dtype]
    assert relative_error(on_gpu.grad, reference_input.grad) <= LIMITS[dtype]


@pytest.mark.parametrize("dtype", list(LIMITS))
def test_beta_one_is_bit_identical_relu_on_cuda(dtype):
    x = (torch.randn(4096, device="cuda") * 10).to(dtype).requires_grad_(True)
    y = ct_tune.ct(x, 1.0)
    y.sum().backward()
    assert torch.equal(y, torch.relu(x)) and torch.equal(x.grad, (x > 0).to(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("beta", [0.7, 0.99])
def test_fused_kernels_match_eager_on_cuda(fused, dtype, beta):
    torch.manual_seed(0)
    x = (torch.randn(8, 16, 12, 12, device="cuda") * 5).to(dtype)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    eager = ct_unchecked(x1, beta, 0.5)
    fast = ct_hot(x2, beta, 0.5)
    grad = torch.randn_like(x)
    eager.backward(grad)
    fast.backward(grad)
    tolerance = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-2}
    torch.testing.assert_close(fast, eager, **tolerance)
    torch.testing.assert_close(x2.grad, x1.grad, **tolerance)
    assert _fused.fused_status("cuda").startswith("fused for")  # the kernels ran: no fallback to eager math


def test_fused_per_group_rows_and_beta_one_on_cuda(fused):
    x = torch.randn(6, 8, 5, 5, device="cuda", requires_grad=True)
    table = _fused.params_for(torch.tensor([0.8, 0.95, 1.0]), torch.tensor([0.2, 0.5, 0.9]), dtype=x.dtype)
    out = _fused.ct_fused(x, table.cuda())
    for k, (beta, c) in enumerate([(0.8, 0.2), (0.95, 0.5), (1.0, 0.9)]):
        torch.testing.assert_close(out[2 * k : 2 * k + 2], ct_unchecked(x[2 * k : 2 * k + 2].detach(), beta, c))
    assert torch.equal(out[4:], torch.relu(x[4:]))
    out.sum().backward()
    assert torch.equal(x.grad[4:], (x[4:] > 0).float())
