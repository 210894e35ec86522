"""Bias correction: undo the shift of each output's mean that quantizing the weights causes.

Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and Bias Correction" (ICCV), §4.2.
With quantized weights W̃ = W + ε, a layer's output mean moves by E[W̃x] − E[Wx] = ε E[x]; subtracting ε E[x]
from the bias removes that shift. E[x] per input channel comes from calibration data (the *empirical*
correction) or, data-free, from the BatchNorm before the ReLU that produces x: a pre-activation
x ~ N(β, γ²) (β, γ: BN's bias and weight) gives E[ReLU(x)] = β(1 − Φ(−β/γ)) + γ φ(−β/γ) (the *analytic*
correction, the mean of a rectified Gaussian).

- ``expected_relu_input(beta, gamma)`` → E[ReLU(x)] ``[C]``; ``corrected_bias(bias, w, w_q, expected_input)``
  → the corrected bias ``[C_out]`` (the graded functions of Lab 5);
- ``correct_biases(float_model, quantized_model, images=None, bn_model=None, functions=None)``: a copy of the
  quantized model with every layer's bias corrected, empirically or analytically.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from lowbit.quant.validate import check_float_tensor

__all__ = ["expected_relu_input", "corrected_bias"]

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def expected_relu_input(beta: Tensor, gamma: Tensor) -> Tensor:
    """E[ReLU(x)] for x ~ N(β, γ²), per channel (Nagel et al. 2019, §4.2 / appendix C).

    Args:
        beta: float ``[C]``, the mean of the pre-activation (BatchNorm's bias).
        gamma: float ``[C]``, its standard deviation up to sign (BatchNorm's weight, which may be negative:
            σ = |γ| is used).
    Returns:
        ``[C]`` in beta's dtype (computed in float32): β·(1 − Φ(−β/σ)) + σ·φ(−β/σ), with Φ / φ the standard
        normal cdf / pdf; where σ = 0 the pre-activation is the constant β, so max(β, 0). Never NaN for
        finite inputs (a very negative β/σ gives 0, a very positive one β).
    """
    beta = check_float_tensor(beta, "beta", finite=True).detach()
    gamma = check_float_tensor(gamma, "gamma", finite=True).detach()
    if beta.shape != gamma.shape:
        raise ValueError(f"beta and gamma must have the same shape (one per channel), got {tuple(beta.shape)} and "
                         f"{tuple(gamma.shape)}")
    b, sigma = beta.to(torch.float32), gamma.to(torch.float32).abs()
    positive = sigma > 0
    safe_sigma = torch.where(positive, sigma, torch.ones_like(sigma))
    z = b / safe_sigma                                      # −(−β/σ): Φ(z) = 1 − Φ(−β/σ), φ is even
    gaussian = b * torch.special.ndtr(z) + safe_sigma * torch.exp(-0.5 * z * z) * _INV_SQRT_2PI
    return torch.where(positive, gaussian, b.clamp(min=0.0)).to(beta.dtype)


def corrected_bias(bias: Tensor | None, w: Tensor, w_q: Tensor, expected_input: Tensor) -> Tensor:
    """The bias that cancels the quantized layer's mean output shift: ``bias − ε̄ @ E[x]``.

    Args:
        bias: float ``[C_out]`` or None (a layer without bias: zeros).
        w, w_q: float ``[C_out, C_in, ...]``, the float and the quantized (dequantized) weight.
        expected_input: float ``[C_in]``, E[x] per input channel (``expected_relu_input`` from a BatchNorm, or
            the mean of calibration inputs over every axis but the channel).
    Returns:
        ``[C_out]`` in bias's dtype (w's when bias is None), computed in float32: bias − ε̄ E[x] with
        ε̄ = (w_q − w) summed over the kernel's spatial axes (dims ≥ 2): a conv's output channel sees input
        channel j through all kh·kw taps, each with the same mean E[x_j] (padding aside).
    """
    w = check_float_tensor(w, "w", nonempty=True, finite=True).detach()
    w_q = check_float_tensor(w_q, "w_q", nonempty=True, finite=True).detach()
    expected = check_float_tensor(expected_input, "expected_input", finite=True).detach()
    if w.ndim < 2:
        raise ValueError(f"w must be a layer weight [C_out, C_in, ...], got shape {tuple(w.shape)}")
    if w_q.shape != w.shape:
        raise ValueError(f"w_q must have w's shape {tuple(w.shape)}, got {tuple(w_q.shape)}")
    if tuple(expected.shape) != (w.shape[1],):
        raise ValueError(f"expected_input must have shape [{w.shape[1]}] (one mean per input channel of w), got "
                         f"{tuple(expected.shape)}")
    out_dtype = w.dtype
    if bias is None:
        b = torch.zeros(w.shape[0], dtype=torch.float32)
    else:
        bias = check_float_tensor(bias, "bias", finite=True).detach()
        if tuple(bias.shape) != (w.shape[0],):
            raise ValueError(f"bias must have shape [{w.shape[0]}] (one per output channel), got {tuple(bias.shape)}")
        b, out_dtype = bias.to(torch.float32), bias.dtype
    error = w_q.to(torch.float32) - w.to(torch.float32)
    if error.ndim > 2:
        error = error.sum(dim=tuple(range(2, error.ndim)))
    return (b - error @ expected.to(torch.float32)).to(out_dtype)
