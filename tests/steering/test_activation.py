"""The CT activation: the formula, exact ReLU at beta = 1, stability, gradients, argument checks."""

from __future__ import annotations

import math

import ct_tune

import pytest
import torch

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def reference_ct(x: torch.Tensor, beta: float, c: float) -> torch.Tensor:
    """The paper's formula in float64, written independently (logaddexp for the softplus)."""
    x = x.double()
    m = 1.0 - beta
    swish = torch.sigmoid(beta * x / m) * x
    softplus = torch.logaddexp(torch.zeros_like(x), x / m) * m
    return c * swish + (1.0 - c) * softplus


@pytest.mark.parametrize("dtype", DTYPES)
def test_beta_one_is_bit_identical_relu(dtype):
    x = torch.randn(4096, dtype=torch.float64).mul(10).to(dtype)
    out = ct_tune.ct(x, 1.0)
    assert out.dtype == dtype
    assert torch.equal(out, torch.relu(x))
    assert torch.equal(ct_tune.ct(x, 1), torch.relu(x))  # an int 1 is beta = 1 too


@pytest.mark.parametrize("beta", [0.05, 0.5, 0.7, 0.85, 0.95, 0.99, 0.999])
@pytest.mark.parametrize("c", [0.0, 0.25, 0.5, 1.0])
def test_matches_the_formula(beta, c):
    x = torch.linspace(-30, 30, 2001, dtype=torch.float64)
    torch.testing.assert_close(ct_tune.ct(x, beta, c), reference_ct(x, beta, c), rtol=1e-9, atol=1e-10)
    x32 = x.float()
    torch.testing.assert_close(ct_tune.ct(x32, beta, c).double(), reference_ct(x32, beta, c), rtol=1e-5, atol=1e-6)


def test_c_one_is_swish_like_and_c_zero_is_softplus_like():
    x = torch.randn(1000, dtype=torch.float64)
    beta = 0.8
    torch.testing.assert_close(ct_tune.ct(x, beta, 1.0), torch.sigmoid(4.0 * x) * x)
    torch.testing.assert_close(ct_tune.ct(x, beta, 0.0), torch.nn.functional.softplus(5.0 * x) / 5.0)


def test_approaches_relu_as_beta_goes_to_one():
    x = torch.linspace(-5, 5, 1001, dtype=torch.float64)
    gaps = [(ct_tune.ct(x, b) - torch.relu(x)).abs().max().item() for b in (0.9, 0.99, 0.999, 0.999999)]
    assert gaps == sorted(gaps, reverse=True)
    assert gaps[-1] < 1e-6


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("beta", [0.01, 0.7, 0.99, 0.99999, 1.0 - 1e-12])
def test_outputs_and_gradients_finite_everywhere(dtype, beta):
    values = [0.0, -0.0, 1e-30, -1e-30, 1e-8, -1e-8, 1.0, -1.0, 1e4, -1e4]
    if dtype != torch.float16:
        values += [1e30, -1e30]
    x = torch.tensor(values, dtype=dtype, requires_grad=True)
    out = ct_tune.ct(x, beta)
    assert out.dtype == dtype
    assert torch.isfinite(out).all(), out
    out.sum().backward()
    assert torch.isfinite(x.grad).all(), x.grad


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_matches_float32_within_its_resolution(dtype):
    x = torch.randn(10000) * 4
    low = ct_tune.ct(x.to(dtype), 0.9).float()
    high = ct_tune.ct(x.to(dtype).float(), 0.9)
    torch.testing.assert_close(low, high, rtol=1e-2, atol=1e-2)


def test_gradcheck_float64():
    x = torch.randn(64, dtype=torch.float64, requires_grad=True)
    for beta in (0.3, 0.7, 0.95):
        assert torch.autograd.gradcheck(lambda t, b=beta: ct_tune.ct(t, b), (x,))


def test_gradient_at_zero_is_the_closed_form():
    # d/dx at 0: c * sigmoid(0) + (1 - c) * sigmoid(0) = 0.5 for every beta < 1 and c.
    for beta in (0.5, 0.9, 0.999999):
        x = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        ct_tune.ct(x, beta, 0.3).sum().backward()
        assert math.isclose(x.grad.item(), 0.5, rel_tol=1e-12)


def test_tensor_beta_equals_per_sample_float_beta():
    x = torch.randn(5, 3, 4, 4, dtype=torch.float64)
    betas = [0.7, 1.0, 0.9, 0.99, 1.0]
    beta = torch.tensor(betas, dtype=torch.float64).view(5, 1, 1, 1)
    out = ct_tune.ct(x, beta)
    for i, b in enumerate(betas):
        torch.testing.assert_close(out[i], ct_tune.ct(x[i], b), rtol=1e-12, atol=1e-12)
        if b == 1.0:
            assert torch.equal(out[i], torch.relu(x[i]))


def test_tensor_beta_with_relu_entries_has_finite_gradients():
    x = torch.tensor([[0.0, 1.0, -2.0], [0.0, 3.0, -1.0]], requires_grad=True)
    beta = torch.tensor([[1.0], [0.999999]])
    ct_tune.ct(x, beta).sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("beta", [0.0, -0.1, 1.0000001, 2, float("nan"), float("inf"), "0.9", None, True])
def test_beta_out_of_range_is_a_value_error_naming_the_range(beta):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        ct_tune.ct(torch.ones(3), beta)


def test_tensor_beta_out_of_range_is_a_value_error():
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        ct_tune.ct(torch.ones(3), torch.tensor([0.5, 1.5, 0.9]))


@pytest.mark.parametrize("c", [-0.01, 1.01, float("nan"), "half", None])
def test_c_out_of_range_is_a_value_error_naming_the_range(c):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ct_tune.ct(torch.ones(3), 0.9, c)


def test_integer_input_is_refused():
    with pytest.raises(ValueError, match="floating point"):
        ct_tune.ct(torch.arange(3), 0.9)
