"""lowbit.quant.bias_correction: the rectified-Gaussian mean and the corrected bias."""
from __future__ import annotations

import math

import pytest
import torch

from lowbit.quant.bias_correction import corrected_bias, expected_relu_input
from lowbit.quant.granularity import fake_quantize_per_channel


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def relu_mean_integral(beta, gamma, points=200_001):
    """E[ReLU(x)], x ~ N(beta, gamma²), by the trapezoid rule over [0, beta + 12|gamma|] in float64."""
    sigma = abs(gamma)
    if sigma == 0:
        return max(beta, 0.0)
    top = max(beta + 12 * sigma, 1e-12)
    x = torch.linspace(0.0, top, points, dtype=torch.float64)
    density = torch.exp(-0.5 * ((x - beta) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    return float(torch.trapezoid(x * density, x))


CASES = [(0.0, 1.0), (1.5, 0.5), (-1.0, 2.0), (0.3, -0.7), (-2.0, -0.4), (2.0, 0.0), (-3.0, 0.0), (-40.0, 1.0),
         (40.0, 1.0)]


def test_expected_relu_input_matches_a_numerical_integral():
    beta = torch.tensor([b for b, _ in CASES])
    gamma = torch.tensor([g for _, g in CASES])
    got = expected_relu_input(beta, gamma)
    assert got.shape == (len(CASES),) and got.dtype == torch.float32 and bool(torch.isfinite(got).all())
    expected = torch.tensor([relu_mean_integral(b, g) for b, g in CASES])
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_expected_relu_input_matches_monte_carlo_with_negative_gamma():
    beta, gamma = torch.tensor([0.5, -0.5]), torch.tensor([-1.5, -1.0])
    x = beta + gamma.abs() * rand(400_000, 2, seed=3)
    assert torch.allclose(expected_relu_input(beta, gamma), torch.relu(x).mean(dim=0), atol=5e-3)


def test_expected_relu_input_dtype_and_errors():
    got = expected_relu_input(torch.tensor([0.0, 1.0], dtype=torch.float16), torch.tensor([1.0, 0.0],
                                                                                        dtype=torch.float16))
    assert got.dtype == torch.float16 and torch.allclose(got.float(), torch.tensor([1 / math.sqrt(2 * math.pi), 1.0]),
                                                         atol=1e-3)
    with pytest.raises(ValueError, match="same shape"):
        expected_relu_input(torch.zeros(3), torch.ones(2))
    with pytest.raises(TypeError, match="floating-point"):
        expected_relu_input(torch.zeros(3, dtype=torch.int32), torch.ones(3))


def test_corrected_bias_restores_the_mean_output_of_a_linear_layer():
    w = rand(6, 16) * 0.3
    w_q = fake_quantize_per_channel(w, 3)
    bias = rand(6, seed=1)
    mean = torch.rand(16, generator=torch.Generator().manual_seed(2)) * 2.0
    x = mean + 0.5 * rand(200_000, 16, seed=3)
    float_mean = (x @ w.T + bias).mean(dim=0)
    shifted = (x @ w_q.T + bias).mean(dim=0)
    corrected = (x @ w_q.T + corrected_bias(bias, w, w_q, mean)).mean(dim=0)
    assert float((shifted - float_mean).abs().max()) > 0.05            # the shift is there to correct
    assert torch.allclose(corrected, float_mean, atol=5e-3)


def test_corrected_bias_of_a_conv_sums_the_kernel_taps():
    w = rand(5, 3, 3, 3) * 0.3
    w_q = fake_quantize_per_channel(w, 2)
    mean = torch.tensor([1.0, 0.2, 2.0])
    x = mean.reshape(1, 3, 1, 1) + 0.3 * rand(64, 3, 12, 12, seed=4)
    conv = lambda w, b: torch.nn.functional.conv2d(x, w, b).mean(dim=(0, 2, 3))   # no padding: every tap sees x
    new_bias = corrected_bias(None, w, w_q, mean)
    assert new_bias.shape == (5,) and new_bias.dtype == torch.float32
    assert float((conv(w_q, None) - conv(w, None)).abs().max()) > 0.05
    assert torch.allclose(conv(w_q, new_bias), conv(w, None), atol=1e-2)


def test_corrected_bias_formula_dtype_and_errors():
    w, w_q = rand(2, 3, 1, 2), rand(2, 3, 1, 2, seed=1)
    e, bias = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, -0.5], dtype=torch.float64)
    got = corrected_bias(bias, w, w_q, e)
    expected = torch.tensor([float(bias[o]) - sum(float((w_q - w)[o, i].sum()) * float(e[i]) for i in range(3))
                             for o in range(2)])
    assert got.dtype == torch.float64 and torch.allclose(got.float(), expected, atol=1e-5)
    with pytest.raises(ValueError, match="expected_input"):
        corrected_bias(None, w, w_q, torch.ones(2))
    with pytest.raises(ValueError, match="w_q"):
        corrected_bias(None, w, w_q[:1], e)
    with pytest.raises(ValueError, match="bias"):
        corrected_bias(torch.zeros(3), w, w_q, e)
