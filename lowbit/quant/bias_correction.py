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

import copy
import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from lowbit.quant.equalize import SCALES_ATTRIBUTE, check_folded, layer_chain
from lowbit.quant.graded import LAB5_REFERENCES, check_functions, resolve_function
from lowbit.quant.modules import capture
from lowbit.quant.validate import check_float_tensor

__all__ = ["expected_relu_input", "corrected_bias", "correct_biases", "input_means", "analytic_input_means"]

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


# ------------------------------------------------------------------------------------------ the pipeline
def _weight_of(layer: nn.Module) -> Tensor:
    """The weight a layer computes with: ``quantized_weight()`` of a ``lowbit.quant.modules`` wrapper, else
    ``weight``; detached."""
    fn = getattr(layer, "quantized_weight", None)
    return (fn() if callable(fn) else layer.weight).detach()


def input_means(model: nn.Module, images: Tensor | object, batch_size: int = 256) -> dict[str, Tensor]:
    """E[x] per input channel of every layer of ``model`` over ``images`` (a tensor ``[N, C, H, W]`` or a
    loader): ``{name: float32 [C_in]}``, the mean over every axis but 1 of the layer's input (``capture``)."""
    seen = capture(model, images, outputs=False, batch_size=batch_size)
    return {name: c.inputs.mean(dim=[d for d in range(c.inputs.ndim) if d != 1]) for name, c in seen.items()}


def analytic_input_means(float_model: nn.Module, bn_model: nn.Module,
                         expected_fn: Callable[[Tensor, Tensor], Tensor] | None = None) -> dict[str, Tensor]:
    """Data-free E[x] per input channel of every layer of the chain after the first, from BatchNorm.

    ``bn_model``: the model before folding (the course CNN with its ``bn{i}``); ``float_model``: the folded
    (possibly equalized) one. Layer k's input is ReLU (then max pooling, flatten) of layer k − 1's BN output,
    x ~ N(β, γ²) per channel by BN's design, divided by layer k − 1's CLE scale where ``equalize_model`` ran
    (``equalization_scales`` attribute): E[x] = ``expected_fn``(β / s, γ / s) (default
    ``expected_relu_input``). A linear layer after flatten repeats each channel's mean over its h·w inputs.
    Max pooling is ignored: the max of a window is larger than one ReLU output, so E[x] is underestimated —
    one reason the empirical correction does better. Layers whose predecessor has no BN are left out (and
    the first layer: the network input's mean is not in the model). → ``{name: float32 [C_in]}``.
    """
    if expected_fn is None:                 # by name, not statically: see lowbit.quant.graded
        expected_fn = resolve_function(None, "expected_relu_input", LAB5_REFERENCES)
    layers = layer_chain(float_model)
    bns = {}
    for parent_name, parent in bn_model.named_modules():
        children = list(parent.named_children())
        for (first, _), (second, module) in zip(children, children[1:]):
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                bns[f"{parent_name}.{first}" if parent_name else first] = module
    scales = getattr(float_model, SCALES_ATTRIBUTE, {})
    means = {}
    names = list(layers)
    for previous, name in zip(names, names[1:]):
        bn = bns.get(previous)
        if bn is None or not bn.affine:
            continue
        s = scales.get(previous, torch.ones(bn.num_features)).to(torch.float32)
        mean = torch.as_tensor(expected_fn(bn.bias.detach().float() / s, bn.weight.detach().float() / s),
                               dtype=torch.float32)
        inputs = layers[name].weight.shape[1]
        if inputs != mean.shape[0]:
            if inputs % mean.shape[0]:
                raise ValueError(f"{name!r} takes {inputs} inputs, not a multiple of the {mean.shape[0]} channels "
                                 f"of {previous!r}'s BatchNorm")
            mean = mean.repeat_interleave(inputs // mean.shape[0])      # flatten: channel-major
        means[name] = mean
    return means


def correct_biases(float_model: nn.Module, quantized_model: nn.Module, images: Tensor | object | None = None,
                   bn_model: nn.Module | None = None, functions: Mapping[str, Callable] | None = None,
                   batch_size: int = 256) -> nn.Module:
    """A copy of ``quantized_model`` with every layer's bias replaced by ``corrected_bias(b, w, w_q, E[x])``.

    Args:
        float_model: the BatchNorm-folded float model ``quantized_model`` was made from (possibly equalized
            by ``equalize_model``): the layers' float weights w and biases b.
        quantized_model: the same architecture with quantized weights w_q (``ptq.quantize_weights``, or
            ``lowbit.quant.modules`` wrappers, whose ``quantized_weight()`` is used). Layers without a bias
            gain one.
        images: calibration images ``[N, 1, 28, 28]`` (or a loader) → the **empirical** correction: E[x] is
            the mean input of each layer in ``float_model`` over them, per channel (``input_means``).
        bn_model: with ``images=None``, the **analytic** (data-free) correction: E[x] from the BatchNorm
            statistics of this unfolded model (``analytic_input_means``; the first layer is left as it is).
        functions: the student's ``corrected_bias`` / ``expected_relu_input`` (any Lab 5 name); missing →
            the references. batch_size: for the forward passes.
    Neither model is modified.
    """
    check_folded(float_model, "correct_biases")
    chosen = check_functions(functions, LAB5_REFERENCES)
    correct_fn = resolve_function(chosen, "corrected_bias", LAB5_REFERENCES)
    if images is not None:
        means = input_means(float_model, images, batch_size)
    elif bn_model is not None:
        means = analytic_input_means(float_model, bn_model,
                                     resolve_function(chosen, "expected_relu_input", LAB5_REFERENCES))
    else:
        raise ValueError("correct_biases needs calibration images (empirical correction) or bn_model, the model "
                         "before BatchNorm folding (analytic correction from its BN statistics)")
    float_layers = layer_chain(float_model)
    corrected = copy.deepcopy(quantized_model).eval()
    layers = layer_chain(corrected)
    if list(layers) != list(float_layers):
        raise ValueError(f"float_model and quantized_model must have the same layers, got {list(float_layers)} "
                         f"and {list(layers)}")
    with torch.no_grad():
        for name, mean in means.items():
            layer, reference = layers[name], float_layers[name]
            w, w_q = reference.weight.detach(), _weight_of(layer)
            if w.shape != w_q.shape:
                raise ValueError(f"{name}: the float weight {tuple(w.shape)} and the quantized weight "
                                 f"{tuple(w_q.shape)} differ in shape")
            bias = None if reference.bias is None else reference.bias.detach()
            new = torch.as_tensor(correct_fn(bias, w, w_q, mean)).to(torch.float32)
            layer.bias = nn.Parameter(new.to(layer.weight.dtype).clone())
    return corrected
