"""Quantization-aware training: fake quantization that gradients can pass through.

Rounding has zero gradient almost everywhere, so training through ``fake_quantize`` needs an estimator:

- **Straight-through estimator** (STE; Bengio, Léonard & Courville 2013, "Estimating or Propagating Gradients
  Through Stochastic Neurons"): treat ``round`` as the identity in the backward pass. ``ste_round``.
- **Clipped STE** (Jacob et al. 2018; what ``torch.fake_quantize_per_tensor_affine`` does): the gradient of
  ``fake_quantize`` w.r.t. its input is 1 where ``round(x / S) + Z`` lies in ``[q_min, q_max]``, else 0.
  ``fake_quantize_ste``; scale and zero point are constants.
- **LSQ** (Esser et al. 2020, "Learned Step Size Quantization"): the step ``s`` is a parameter. With
  ``v = clip(x / s, -Q_N, Q_P)`` and ``y = round(v) · s``: ∂y/∂x = 1 inside the clip range, else 0;
  ∂y/∂s = round(v) − v inside, −Q_N or Q_P outside; the step's gradient is scaled by
  ``g = 1 / sqrt(N · Q_P)`` (``N`` values share the step). ``lsq_fake_quantize``, ``LSQQuantizer``.
  torch's ``_fake_quantize_learnable_per_tensor_affine`` implements the same gradients but decides
  "inside" on ``round(x / s)`` instead of ``x / s``: the two differ only for ``x / s`` within half a step
  outside the range.
- **PACT** (Choi et al. 2018, "PACT: Parameterized Clipping Activation for Quantized Neural Networks"):
  activations are clipped to ``[0, α]`` with a learned ``α``, then quantized unsigned with scale
  ``α / (2^b − 1)``; by the STE, ∂y/∂x = 1 on ``(0, α]`` and ∂y/∂α = 1 where ``x > α``. ``pact_quantize``,
  ``PACTQuantizer``.

- **LSQ+** (Bhalgat et al. 2020): a learned zero point too, rounded straight-through in the forward pass.
  ``lsq_plus_fake_quantize``, ``LSQPlusQuantizer``.
- **BatchNorm folding** (Jacob et al. 2018, section 3.2): ``fold_batchnorm`` (w' = w·γ/σ, b' = β + (b − μ)·γ/σ)
  with ``bn_fold_statistics`` (the batch's statistics while training, the running ones after
  ``freeze_bn_stats``); ``QATConvBn2d`` fake-quantizes the folded weight. ``freeze_schedule`` freezes BN and
  then the quantizer ranges on a schedule (the torchvision QAT recipe), through ``lowbit.train.train``'s hooks.

Every quantizer and ``prepare_qat`` take the function they call (``quantize_fn=`` / ``fold_fn=`` / ``stats_fn=``,
default the references here), so a lab assembles the modules from the student's functions. ``train_qat`` is
the course's QAT recipe (Lab 3 and ``benchmarks/bench_lab3_accuracy.py``), ``ptq_baselines`` its PTQ peers.

``prepare_qat`` turns a float model into a QAT model: every Conv2d/Linear becomes a ``QATConv2d`` /
``QATLinear`` whose forward pass uses its weight's fake-quantized value (the float "latent" weight is what
the optimizer updates), and every ReLU is followed by an activation quantizer. ``freeze_qat`` bakes the
quantized weights into plain layers. (Not ``torch.nn.utils.parametrize``: a deep copy of a parametrized
module shares its generated class, and removing the parametrization from the copy breaks the original.)
Rounding is round-half-to-even everywhere (``torch.round``), as in the rest of ``lowbit.quant``.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from lowbit.models import conv_bn_pairs
from lowbit.quant import fakequant
from lowbit.quant.modules import (LayerConfig, Policy, QuantConv2d, QuantLinear, dequantized, insert_after,
                                  quantizable_layers, quantized, replace_children, swap_modules)
from lowbit.quant.quantizer import Quantizer
from lowbit.quant.validate import (check_bits, check_broadcast, check_choice, check_float_tensor, check_int,
                                   check_positive_tensor, checked_qparams, quantized_range)

__all__ = ["ste_round", "fake_quantize_ste", "lsq_grad_scale", "lsq_fake_quantize", "lsq_init_step", "STEP_INITS",
           "lsq_plus_fake_quantize", "pact_quantize", "fold_batchnorm", "bn_fold_statistics",
           "LSQQuantizer", "LSQPlusQuantizer", "PACTQuantizer", "QATConv2d", "QATLinear", "QATConvBn2d",
           "STEP_FLOOR", "prepare_qat", "freeze_qat", "qat_quantizers", "alpha_penalty", "qat_policy",
           "freeze_bn_stats", "freeze_ranges", "freeze_schedule", "QAT_METHODS", "QATRun", "first_last_policy",
           "PTQ_OBSERVERS", "PTQ_CLIPS", "ptq_baselines",
           "prepare_recipe", "retarget_bits", "check_recipe_length", "recipe_training", "train_qat"]

# ------------------------------------------------------------------------------------------ checks
def _check_float(x: object, name: str = "x") -> Tensor:
    """``x`` if it is a non-empty floating-point tensor, else raise."""
    return check_float_tensor(x, name, nonempty=True)


def _check_positive(value: Tensor, name: str) -> None:
    check_positive_tensor(value, name)


# ------------------------------------------------------------------------------------------ STE
def ste_round(x: Tensor) -> Tensor:
    """``torch.round(x)`` (half to even) forward; gradient passed through unchanged (straight-through).

    ``x``: floating tensor of any shape; returns the same shape and dtype.
    """
    return fakequant.ste_round(_check_float(x))


def fake_quantize_ste(x: Tensor, scale: float | Tensor, zero_point: int | Tensor, bits: int,
                      signed: bool = True) -> Tensor:
    """Fake-quantize ``x`` (quantize, then dequantize) with the clipped straight-through gradient.

    Forward: ``S · (clamp(round(x / S) + Z, q_min, q_max) − Z)`` in float32. Backward: the incoming gradient
    where ``round(x / S) + Z`` is inside ``[q_min, q_max]``, 0 where it was clamped; ``scale`` and
    ``zero_point`` get no gradient. ``x``: floating tensor ``[...]``; ``scale`` > 0 and ``zero_point``
    (integer-valued) are numbers or tensors broadcasting against ``x`` (per-channel: shape ``[C, 1, ..., 1]``).
    Returns float32 of ``x``'s shape. Matches ``torch.fake_quantize_per_tensor_affine`` /
    ``per_channel_affine`` (which multiply by ``1 / S``: equal whenever ``S`` is a power of two).
    (``lowbit.quant.fakequant.fake_quantize(..., gradient="clipped_ste")`` with the arguments validated.)
    """
    _check_float(x)
    scale_t, zero_t, q_min, q_max = checked_qparams(x.shape, scale, zero_point, bits, signed)
    return fakequant.fake_quantize(x, scale_t.to(x.device), zero_t.to(x.device, torch.float32), q_min, q_max,
                                   gradient="clipped_ste")


# ------------------------------------------------------------------------------------------ LSQ
class _LSQ(torch.autograd.Function):
    """y = round(clamp(x / s, q_min, q_max)) * s with LSQ's gradients, in few passes and few saved tensors.

    Outside the clip range round(clamp(v)) is the bound itself, so the step's elementwise gradient is
    round(clamp(v)) − v·1[inside] everywhere: one expression instead of a three-way select. With nearest
    rounding nothing but ``x`` and ``s`` is saved (``x`` is usually kept alive by the layer before anyway):
    the forward pass works in one buffer (divide, round, clamp, multiply in place), the backward pass
    recomputes v = x / s and decides "inside" as clamp(v) == v; a per-tensor step's gradient is two dot
    products, Σ g·round(clamp(v)) − Σ (g·1[inside])·v, with no elementwise temporary.
    """

    @staticmethod
    def forward(ctx, x: Tensor, step: Tensor, q_min: int, q_max: int, grad_scale: float,  # type: ignore[override]
                rounding: fakequant.Rounding) -> Tensor:
        ctx.q_min, ctx.q_max, ctx.grad_scale = q_min, q_max, grad_scale
        ctx.nearest = isinstance(rounding, str) and rounding == "nearest"
        v = x / step
        if ctx.nearest:
            ctx.save_for_backward(x, step)
            return v.round_().clamp_(q_min, q_max).mul_(step)
        codes = fakequant.round_values(v, rounding).clamp_(q_min, q_max)
        ctx.save_for_backward(x, step, v, codes)
        return codes * step

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        if not ctx.nearest:                                   # the forward's own rounding (any rule)
            x, step, v, codes = ctx.saved_tensors
            grad_inside = grad * ((v >= ctx.q_min) & (v <= ctx.q_max))
            grad_step = (grad * codes - grad_inside * v).sum_to_size(step.shape).mul_(ctx.grad_scale) \
                if ctx.needs_input_grad[1] else None
            return grad_inside if ctx.needs_input_grad[0] else None, grad_step, None, None, None, None
        x, step = ctx.saved_tensors
        v = x / step
        grad_inside = _pass_inside(grad, v, ctx.q_min, ctx.q_max)
        grad_step = None
        if ctx.needs_input_grad[1]:
            if step.numel() == 1 and grad.dtype == v.dtype:
                inner = torch.dot(grad_inside.reshape(-1), v.reshape(-1))
                codes = v.clamp_(ctx.q_min, ctx.q_max).round_()                    # v's buffer, reused
                total = torch.dot(grad.reshape(-1), codes.reshape(-1)) - inner
                grad_step = total.reshape(step.shape) * ctx.grad_scale
            else:
                codes = v.clamp(ctx.q_min, ctx.q_max).round_()
                grad_step = (grad * codes - grad_inside * v).sum_to_size(step.shape).mul_(ctx.grad_scale)
        return grad_inside if ctx.needs_input_grad[0] else None, grad_step, None, None, None, None


def _next(value: float, dtype: torch.dtype, toward: float) -> float:
    """The ``dtype`` number next to ``value`` in the direction of ``toward`` (as a Python float, exact)."""
    return float(torch.nextafter(torch.tensor(value, dtype=dtype), torch.tensor(toward, dtype=dtype)))


def _pass_inside(grad: Tensor, v: Tensor, low: float, high: float) -> Tensor:
    """``grad`` where ``low <= v <= high`` (both inclusive), else 0, in one pass without a boolean mask
    (``hardtanh_backward`` keeps the open interval, so its bounds are moved one float outwards)."""
    return torch.ops.aten.hardtanh_backward(grad, v, _next(low, v.dtype, -math.inf), _next(high, v.dtype, math.inf))


def _lsq_q_max(bits: object, signed: bool) -> tuple[int, int]:
    q_min, q_max = quantized_range(bits, signed)
    if q_max < 1:
        raise ValueError(f"signed {bits}-bit LSQ has Q_P = {q_max}: no positive level to learn a step from; "
                         "use bits >= 2, or signed=False")
    return q_min, q_max


def lsq_grad_scale(num_elements: int, bits: int, signed: bool = True) -> float:
    """LSQ's gradient scale ``g = 1 / sqrt(N · Q_P)`` for a step shared by ``num_elements`` values (a float).

    Esser et al. 2020, section 2.2: scaling the step's gradient by ``g`` keeps its update the same size,
    relative to the step, as the weights' updates relative to the weights. ``num_elements`` (N): an int >= 1,
    the number of values that share one step (a whole tensor per tensor, one output channel's weights per
    channel). ``Q_P = 2^(b−1) − 1`` for ``signed``, ``2^b − 1`` unsigned; signed 1-bit (Q_P = 0) is refused.
    """
    n = check_int(num_elements, "num_elements", low=1)
    _, q_max = _lsq_q_max(bits, signed)
    return 1.0 / math.sqrt(n * q_max)


def _values_per_step(x: Tensor, step: Tensor) -> int:
    """N of the gradient scale: how many values of ``x`` share one entry of ``step`` (which broadcasts)."""
    return max(1, x.numel() // max(1, step.numel()))


STEP_INITS = ("lsq", "minmax")


def lsq_init_step(x: Tensor, bits: int, signed: bool = True, dim: int | None = None, init: str = "lsq") -> Tensor:
    """Initial LSQ step for ``x``, float32.

    ``init="lsq"``: the paper's ``2 · mean(|x|) / sqrt(Q_P)`` (Esser et al. 2020, section 2.1) — a start for
    training that clips the tails (the shipped CNN's weights use about 45 of 127 levels at 8 bits).
    ``init="minmax"``: ``max(|x|) / Q_P``, no value clipped (Lab 1's symmetric scale): a better start when
    the model should keep its accuracy before any training. ``dim=None``: one step (0-d tensor); ``dim=d``:
    one step per index of dimension ``d``, shaped to broadcast against ``x`` (``[C, 1, 1, 1]`` for a conv
    weight with ``dim=0``). An all-zero slice raises.
    """
    _check_float(x)
    check_choice("init", init, STEP_INITS)
    _, q_max = _lsq_q_max(bits, signed)
    magnitude = x.detach().abs().to(torch.float32)
    reduce = None if dim is None else [d for d in range(x.ndim) if d != dim % x.ndim]
    if init == "lsq":
        statistic = magnitude.mean() if reduce is None else magnitude.mean(dim=reduce, keepdim=True)
        step = 2 * statistic / math.sqrt(q_max)
    else:
        statistic = magnitude.amax() if reduce is None else magnitude.amax(dim=reduce, keepdim=True)
        step = statistic / q_max
    _check_positive(step, "the initial step")
    return step


def lsq_fake_quantize(x: Tensor, step: Tensor, bits: int, signed: bool = True,
                      grad_scale: float | None = None, rounding: fakequant.Rounding = "nearest") -> Tensor:
    """LSQ fake quantization ``round(clip(x / s, -Q_N, Q_P)) · s`` with a learnable step ``s``.

    ``x``: floating tensor; ``step``: positive float tensor broadcasting against ``x`` (0-d for per-tensor,
    ``[C, 1, ..., 1]`` per channel), usually an ``nn.Parameter``. Gradients: to ``x`` 1 inside the clip
    range, 0 outside; to ``step`` (round(v) − v) inside, −Q_N / Q_P below / above, times ``grad_scale``
    (default ``1 / sqrt(N · Q_P)`` with N = number of values sharing one step). The zero point is 0
    (symmetric for ``signed``, [0, 2^b − 1] otherwise). Returns ``x``'s shape in the promoted float dtype.
    """
    _check_float(x)
    _check_float(step, "step")
    _check_positive(step.detach(), "step")
    check_broadcast(step, x.shape, "step")
    q_min, q_max = _lsq_q_max(bits, signed)
    if grad_scale is None:
        grad_scale = lsq_grad_scale(_values_per_step(x, step), bits, signed)
    return _LSQ.apply(x, step, q_min, q_max, float(grad_scale), rounding)


# ------------------------------------------------------------------------------------------ LSQ+
class _LSQPlus(torch.autograd.Function):
    """y = (round(clamp(x / s + z̃, 0, q_max)) − z̃) · s with z̃ = round(z) and LSQ+'s gradients.

    With c = round(clamp(v)) (the bound itself outside the range) and u = x / s = v − z̃, the step's
    elementwise gradient (round(v) − v inside, q_min − z̃ below, q_max − z̃ above) is ``c − z̃ − u·1[inside]``
    and the zero point's is ``−s·1[outside]``: two expressions instead of three-way selects.
    """

    @staticmethod
    def forward(ctx, x: Tensor, step: Tensor, zero_point: Tensor, q_max: int,  # type: ignore[override]
                grad_scale: float) -> Tensor:
        rounded_zero = torch.round(zero_point)
        u = x / step
        v = u + rounded_zero
        codes = torch.round(v).clamp_(0, q_max)
        centered = codes - rounded_zero
        ctx.save_for_backward(u, v, centered, step, zero_point)
        ctx.q_max, ctx.grad_scale = q_max, grad_scale
        return centered * step

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        u, v, centered, step, zero_point = ctx.saved_tensors
        inside = (v >= 0) & (v <= ctx.q_max)
        grad_x = grad * inside if ctx.needs_input_grad[0] else None
        grad_step = grad_zero = None
        if ctx.needs_input_grad[1]:
            grad_step = (grad * (centered - u * inside)).sum_to_size(step.shape).mul_(ctx.grad_scale)
        if ctx.needs_input_grad[2]:
            grad_zero = (grad * ~inside * -step).sum_to_size(zero_point.shape).mul_(ctx.grad_scale)
        return grad_x, grad_step, grad_zero, None, None


def lsq_plus_fake_quantize(x: Tensor, step: Tensor, zero_point: Tensor, bits: int,
                           grad_scale: float | None = None) -> Tensor:
    """LSQ+ fake quantization (Bhalgat et al. 2020, "LSQ+: Improving low-bit quantization through learnable
    offsets and better initialization"): a learned step ``s`` **and** a learned zero point ``z``, unsigned
    range ``[0, 2^b − 1]``.

    ``z̃ = ste_round(z)`` (rounded in the forward pass, identity gradient), ``v = x / s + z̃``,
    ``y = (round(clamp(v, 0, 2^b − 1)) − z̃) · s``. Gradients: to ``x`` 1 inside (0 ≤ v ≤ 2^b − 1, both
    bounds inclusive), else 0; to ``s`` (round(v) − v) inside, (0 − z̃) below, (2^b − 1 − z̃) above; to ``z`` 0
    inside and −s outside; the ``s`` and ``z`` gradients are multiplied by ``grad_scale`` (default
    ``lsq_grad_scale(N, bits, signed=False)`` = 1/√(N·(2^b − 1)), N = values sharing one step).

    ``x``: floating tensor ``[...]``; ``step`` (> 0) and ``zero_point``: float tensors, 0-d or broadcasting
    against ``x`` (per channel ``[C, 1, ..., 1]``), usually ``nn.Parameter``s. Computed and returned in
    float32 (an fp16 input's gradient comes back as fp16), ``x``'s shape.
    """
    _check_float(x)
    _check_float(step, "step")
    _check_float(zero_point, "zero_point")
    _check_positive(step.detach(), "step")
    if not bool(torch.isfinite(zero_point.detach()).all()):
        raise ValueError(f"zero_point must be finite, got {zero_point.detach().reshape(-1)[:8].tolist()}")
    check_broadcast(step, x.shape, "step")
    check_broadcast(zero_point, x.shape, "zero_point")
    _, q_max = _lsq_q_max(bits, signed=False)
    if grad_scale is None:
        grad_scale = lsq_grad_scale(_values_per_step(x, step), bits, signed=False)
    return _LSQPlus.apply(x.to(torch.float32), step.to(torch.float32), zero_point, q_max, float(grad_scale))


# ------------------------------------------------------------------------------------------ PACT
class _PACT(torch.autograd.Function):
    """PACT with one α in few passes: forward clamp, divide, round, multiply in one buffer; backward two
    single-pass masks (``hardtanh_backward`` on (0, α], ``threshold_backward`` for x > α), only ``x`` saved."""

    @staticmethod
    def forward(ctx, x: Tensor, alpha: Tensor, levels: int) -> Tensor:  # type: ignore[override]
        a = float(alpha)
        ctx.save_for_backward(x)
        ctx.alpha, ctx.alpha_shape = a, alpha.shape
        values = x.to(torch.float32).clamp(0.0, a)
        step = torch.tensor(a, dtype=torch.float32) / levels          # the step of fake_quantize, in float32
        return values.div_(step).round_().mul_(step).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        grad = grad.to(x.dtype)
        grad_x = torch.ops.aten.hardtanh_backward(grad, x, 0.0, _next(ctx.alpha, x.dtype, math.inf)) \
            if ctx.needs_input_grad[0] else None
        grad_alpha = torch.ops.aten.threshold_backward(grad, x, ctx.alpha).sum().reshape(ctx.alpha_shape) \
            if ctx.needs_input_grad[1] else None
        return grad_x, grad_alpha, None


def pact_quantize(x: Tensor, alpha: Tensor, bits: int) -> Tensor:
    """PACT: clip ``x`` to ``[0, α]`` and quantize to ``2^b`` unsigned levels of step ``α / (2^b − 1)``.

    ``x``: floating tensor (pre-activations); ``alpha``: positive 0-d (or broadcasting) tensor, usually an
    ``nn.Parameter``. Gradients (STE through the rounding, as in the paper): to ``x`` 1 on ``(0, α]``, else
    0; to ``α`` 1 for every ``x > α``. Returns ``x``'s shape.
    """
    _check_float(x)
    _check_float(alpha, "alpha")
    bits = check_bits(bits)
    _check_positive(alpha.detach(), "alpha")
    levels = 2**bits - 1
    if alpha.numel() == 1:
        return _PACT.apply(x, alpha, levels)
    clipped = torch.relu(x) - torch.relu(x - alpha)    # = clamp(x, 0, α), with ∂/∂α = 1[x > α]
    step = alpha.detach() / levels
    quantized = fakequant.fake_quantize(clipped.detach(), step, 0, 0, levels).to(clipped.dtype)
    return clipped + (quantized - clipped).detach()


# ------------------------------------------------------------------------------------------ BatchNorm folding
def _check_channels(value: Tensor, channels: int, name: str) -> Tensor:
    _check_float(value, name)
    if value.ndim != 1 or value.shape[0] != channels:
        raise ValueError(f"{name} must have shape [{channels}] (one value per output channel of the weight / "
                         f"channel of the output), got {tuple(value.shape)}")
    return value


def fold_batchnorm(weight: Tensor, bias: Tensor | None, gamma: Tensor, beta: Tensor, mean: Tensor, var: Tensor,
                   eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """Fold a BatchNorm's affine map into the layer before it: ``(w', b')`` with ``layer'(x) = bn(layer(x))``.

    ``w' = w · γ / sqrt(var + ε)`` per output channel (broadcast over the weight's trailing dims) and
    ``b' = β + (b − mean) · γ / sqrt(var + ε)`` (Jacob et al. 2018, section 3.2; Krishnamoorthi 2018).
    ``weight``: float ``[C, C_in, k_h, k_w]`` (conv) or ``[C, C_in]`` (linear); ``bias``: ``[C]`` or None (0);
    ``gamma``, ``beta``, ``mean``, ``var``: float ``[C]`` — running statistics for inference, the batch's
    (``bn_fold_statistics``) while training; ``var`` ≥ 0, ``eps`` ≥ 0 with var + eps > 0. Returns float32
    ``(weight_folded [weight's shape], bias_folded [C])``, differentiable in every input.
    """
    _check_float(weight, "weight")
    if weight.ndim < 2:
        raise ValueError(f"weight must be a conv [C, C_in, kh, kw] or linear [C, C_in] weight, got shape "
                         f"{tuple(weight.shape)}")
    channels = weight.shape[0]
    for name, value in (("gamma", gamma), ("beta", beta), ("mean", mean), ("var", var)):
        _check_channels(value, channels, name)
    if bias is not None:
        _check_channels(bias, channels, "bias")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if bool((var.detach() < 0).any()) or not bool((var.detach() + eps > 0).all()):
        raise ValueError(f"var must be >= 0 with var + eps > 0 (a variance), got min {float(var.detach().min())} "
                         f"and eps={eps}")
    multiplier = gamma.float() / torch.sqrt(var.float() + eps)                    # [C]
    weight_folded = weight.float() * multiplier.reshape(-1, *([1] * (weight.ndim - 1)))
    offset = mean.float() if bias is None else mean.float() - bias.float()
    return weight_folded, beta.float() - offset * multiplier


def bn_fold_statistics(conv_out: Tensor, running_mean: Tensor, running_var: Tensor,
                       training: bool) -> tuple[Tensor, Tensor]:
    """The mean and variance BatchNorm normalises ``conv_out`` with, to fold (``fold_batchnorm``).

    ``training=True``: the batch's per-channel mean and **biased** variance (divided by the count, as
    ``nn.BatchNorm2d`` normalises in training) over every dim except dim 1 — differentiable, so gradients flow
    through the statistics as through BatchNorm. ``training=False``: ``running_mean`` and ``running_var`` as
    new float32 tensors (copies, not the same objects). ``conv_out``: float ``[N, C, H, W]`` or ``[N, C]``
    (any ``[N, C, ...]``); ``running_mean`` / ``running_var``: float ``[C]``. Returns float32 ``([C], [C])``.
    """
    _check_float(conv_out, "conv_out")
    if conv_out.ndim < 2:
        raise ValueError(f"conv_out must be [N, C, ...] (a batch of layer outputs), got shape {tuple(conv_out.shape)}")
    channels = conv_out.shape[1]
    _check_channels(running_mean, channels, "running_mean")
    _check_channels(running_var, channels, "running_var")
    if not isinstance(training, bool):
        raise TypeError(f"training must be a bool, got {type(training).__name__}")
    if not training:
        return running_mean.detach().to(torch.float32).clone(), running_var.detach().to(torch.float32).clone()
    dims = [d for d in range(conv_out.ndim) if d != 1]
    var, mean = torch.var_mean(conv_out.float(), dim=dims, unbiased=False)
    return mean, var


# ------------------------------------------------------------------------------------------ modules
#: The smallest value a learned step or clipping level takes in a quantizer's forward pass (see ``_floored``).
STEP_FLOOR = 1e-8

QuantizeFn = Callable[..., Tensor]


def _floored(value: Tensor, floor: float = STEP_FLOOR) -> Tensor:
    """``value`` with a floor at ``floor`` in the forward pass and an identity gradient (straight through).

    An optimizer step can push a learned step (or PACT's α) to zero or below, and ``lsq_fake_quantize``
    refuses a step ≤ 0 (it would divide by zero or flip the grid). The quantizers therefore use
    ``max(step, floor)`` in their forward pass; the gradient still reaches the parameter unchanged, so the
    step can grow back, and the parameter itself is left as the optimizer made it (no hook needed, whatever
    loop trains the model). A NaN stays NaN and is refused with a clear error.
    """
    return value.detach().clamp_min(floor) + (value - value.detach())


class _LearnedRange(Quantizer):
    """Shared state handling of the learned-range quantizers: parameters (``_range_names``) created with their
    final shape at construction (per tensor) or by ``prepare`` (per channel) and never replaced; values
    initialised in place from an example or the first tensor ``forward`` sees."""

    _range_names: tuple[str, ...] = ("step",)

    def __init__(self, bits: int, signed: bool, channel_dim: int | None, example: Tensor | None,
                 quantize_fn: QuantizeFn | None) -> None:
        super().__init__(bits, signed)
        self.channel_dim, self.quantize_fn = channel_dim, quantize_fn
        for name in self._range_names:
            setattr(self, name, nn.Parameter(torch.ones(())) if channel_dim is None else None)
        self.register_buffer("initialized", torch.tensor(False))
        if example is not None:
            self.prepare(example)

    def _reduce_dims(self, example: Tensor) -> list[int] | None:
        return None if self.channel_dim is None else [d for d in range(example.ndim)
                                                      if d != self.channel_dim % example.ndim]

    def _initial_values(self, example: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def prepare(self, example: Tensor) -> "_LearnedRange":
        """Create the parameters with their final shape (if not yet created) and initialise them from ``example``."""
        with torch.no_grad():
            for name, value in self._initial_values(example).items():
                value = value.to(example.device, torch.float32)
                current = getattr(self, name)
                if current is None:
                    setattr(self, name, nn.Parameter(value))
                elif tuple(current.shape) != tuple(value.shape):
                    raise ValueError(f"{type(self).__name__}'s {name} has shape {tuple(current.shape)} but this "
                                     f"example needs {tuple(value.shape)}; build one quantizer per tensor shape")
                else:
                    current.copy_(value)
            self.initialized.fill_(True)
        return self

    def _ready(self, x: Tensor) -> None:
        if getattr(self, self._range_names[0]) is None:
            raise RuntimeError(f"a per-channel {type(self).__name__} needs its parameter shapes before the first "
                               "forward pass: pass example= (the tensor it quantizes) or call prepare(example) "
                               "first, then build the optimizer")
        if not bool(self.initialized):
            self.prepare(x)                                   # in place: the Parameter objects stay the same

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # a saved per-channel step, not prepared
        for name in self._range_names:
            if prefix + name in state_dict and getattr(self, name) is None:
                setattr(self, name, nn.Parameter(torch.empty_like(state_dict[prefix + name])))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def retarget(self, bits: int) -> "_LearnedRange":
        """Change the bit width keeping the learned clipping range: every step (and zero point, in codes) is
        rescaled by ``Q_P(old) / Q_P(new)``. For gradual QAT (8 → 4 → 2 bits)."""
        _, old = _lsq_q_max(self.bits, self.signed)
        _, new = _lsq_q_max(bits, self.signed)
        with torch.no_grad():
            if self.step is not None:
                self.step.mul_(old / new)
            zero_point = getattr(self, "zero_point", None)
            if zero_point is not None:
                zero_point.mul_(new / old)
        self.bits = check_bits(bits)
        return self

    def _where(self) -> str:
        return "per tensor" if self.channel_dim is None else f"per channel (dim {self.channel_dim})"


class LSQQuantizer(_LearnedRange):
    """A tensor quantizer with a learned step (LSQ). ``forward(x)`` → ``quantize_fn(x, step, bits, signed)``,
    by default ``lsq_fake_quantize``; ``quantize_fn`` (same signature, e.g. a student's) lets the lab assemble
    the module from its own function.

    ``channel_dim=None``: one step (shape ``[]``); ``channel_dim=d``: a step per index of dimension ``d``
    (per-channel weights: ``d = 0``), shaped to broadcast against the tensor. The ``step`` parameter is created
    with its final shape — at construction when ``example`` (the tensor it will quantize, e.g. the layer's
    weight) is given or the step is per tensor, else by ``prepare(example)`` — and is never replaced: its
    value is initialised (``lsq_init_step`` with ``init``) from ``example`` or, failing that, in place from the
    first tensor ``forward`` sees (an empty or non-finite first tensor raises). An optimizer built after
    construction (after ``prepare`` for a per-channel step without example) therefore trains it. The forward
    pass uses ``max(step, STEP_FLOOR)`` with a straight-through gradient (``_floored``), so an optimizer step
    that drives the step to ≤ 0 does not break training. Used as the weight quantizer of a ``QATConv2d`` /
    ``QATLinear`` / ``QATConvBn2d`` or after a ReLU (``signed=False``).
    """

    def __init__(self, bits: int, signed: bool = True, channel_dim: int | None = None, init: str = "lsq",
                 example: Tensor | None = None, rounding: fakequant.Rounding = "nearest",
                 quantize_fn: QuantizeFn | None = None) -> None:
        _lsq_q_max(bits, signed)
        check_choice("init", init, STEP_INITS)
        if quantize_fn is not None and rounding != "nearest":
            raise ValueError("rounding= applies to the reference lsq_fake_quantize; a quantize_fn does its own")
        self.init, self.rounding = init, rounding
        super().__init__(bits, signed, channel_dim, example, quantize_fn)

    def _initial_values(self, example: Tensor) -> dict[str, Tensor]:
        return {"step": lsq_init_step(example, self.bits, self.signed, self.channel_dim, self.init)}

    def quantize(self, x: Tensor) -> Tensor:
        self._ready(x)
        step = _floored(self.step)
        if self.quantize_fn is None:
            return lsq_fake_quantize(x, step, self.bits, self.signed, rounding=self.rounding)
        return self.quantize_fn(x, step, self.bits, self.signed)

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, signed={self.signed}, {self._where()}, init={self.init}, "
                f"initialized={bool(self.initialized)}")


class LSQPlusQuantizer(_LearnedRange):
    """A quantizer with a learned step **and** zero point (LSQ+, Bhalgat et al. 2020), unsigned
    ``[0, 2^b − 1]``: ``forward(x)`` → ``quantize_fn(x, step, zero_point, bits)``, by default
    ``lsq_plus_fake_quantize`` (the zero point is rounded straight-through inside it).

    For activations that are not all ≥ 0 (before a ReLU, or Swish-like ones) where a zero point of 0 wastes
    levels. Initialised from ``example`` or the first tensor seen by min-max: ``lowbit.quant.linear
    .affine_qparams(min, max, bits, signed=False)`` (the range is widened to contain 0), per tensor or per
    ``channel_dim``. Same lifecycle and step floor as ``LSQQuantizer``.
    """

    _range_names = ("step", "zero_point")

    def __init__(self, bits: int, channel_dim: int | None = None, example: Tensor | None = None,
                 quantize_fn: QuantizeFn | None = None) -> None:
        _lsq_q_max(bits, signed=False)
        super().__init__(bits, False, channel_dim, example, quantize_fn)

    def _initial_values(self, example: Tensor) -> dict[str, Tensor]:
        from lowbit.quant.linear import affine_qparams

        x = _check_float(example, "example").detach().to(torch.float32)
        if not bool(torch.isfinite(x).all()):
            raise ValueError("the tensor the LSQ+ range is initialised from contains NaN or inf")
        dims = self._reduce_dims(x)
        lo = x.amin() if dims is None else x.amin(dim=dims, keepdim=True)
        hi = x.amax() if dims is None else x.amax(dim=dims, keepdim=True)
        if bool((hi - lo <= 0).any()):
            raise ValueError("the tensor the LSQ+ range is initialised from is constant (or all zero): no range "
                             "to learn a step from")
        step, zero_point = affine_qparams(lo, hi, self.bits, signed=False)
        return {"step": step, "zero_point": zero_point.to(torch.float32)}

    def quantize(self, x: Tensor) -> Tensor:
        self._ready(x)
        quantize = self.quantize_fn or lsq_plus_fake_quantize
        return quantize(x, _floored(self.step), self.zero_point, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, {self._where()}, initialized={bool(self.initialized)}"


class PACTQuantizer(Quantizer):
    """ReLU + quantization with a learned clipping level ``alpha`` (PACT). ``forward(x)`` →
    ``quantize_fn(x, alpha, bits)``, by default ``pact_quantize``.

    ``alpha`` (a 0-d parameter, created here) starts at ``init_alpha`` (the paper uses 10 and an L2 penalty on
    α — ``alpha_penalty`` — given to ``lowbit.train.train(extra_loss=...)``; a value near the activations' high
    percentile trains faster). Replaces a ReLU: negative inputs become 0. The forward pass uses
    ``max(alpha, STEP_FLOOR)`` (straight-through), as ``LSQQuantizer`` does for its step.
    """

    def __init__(self, bits: int, init_alpha: float = 6.0, quantize_fn: QuantizeFn | None = None) -> None:
        if not init_alpha > 0:
            raise ValueError(f"init_alpha must be > 0, got {init_alpha!r}")
        super().__init__(bits, signed=False)
        self.alpha = nn.Parameter(torch.tensor(float(init_alpha)))
        self.quantize_fn = quantize_fn

    def quantize(self, x: Tensor) -> Tensor:
        return (self.quantize_fn or pact_quantize)(x, _floored(self.alpha), self.bits)

    def retarget(self, bits: int) -> "PACTQuantizer":
        """Change the bit width; α (the clipping level) stays."""
        self.bits = check_bits(bits)
        return self

    def extra_repr(self) -> str:
        return f"bits={self.bits}, alpha={float(self.alpha):.4g}"


def alpha_penalty(model: nn.Module, weight: float = 1e-4) -> Tensor:
    """PACT's L2 regularizer ``weight · Σ α²`` over every ``PACTQuantizer`` of ``model`` (0-d tensor)."""
    alphas = [m.alpha for m in model.modules() if isinstance(m, PACTQuantizer)]
    if not alphas:
        return torch.zeros(())
    return weight * torch.stack([a.pow(2) for a in alphas]).sum()


#: The QAT layers are the package's one quantized-module wrapper (``lowbit.quant.modules``).
QATConv2d = QuantConv2d
QATLinear = QuantLinear


class QATConvBn2d(QuantConv2d):
    """A Conv2d with the BatchNorm after it folded in, for QAT (Jacob et al. 2018, section 3.2 and fig. C.8).

    Training (and BN statistics not frozen): a float conv of the input gives the batch statistics
    (``stats_fn(conv_out, running_mean, running_var, True)``), which also update the running statistics as
    ``nn.BatchNorm2d`` does (momentum, unbiased variance); the weight and bias are folded with them
    (``fold_fn(weight, bias, γ, β, mean, var, eps)``), the folded weight is fake-quantized by
    ``weight_quantizer`` and the conv runs with it. Eval mode or after ``freeze_bn_stats()``: folded with the
    running statistics (``stats_fn(..., False)``; its ``conv_out`` is then a ``[1, C]`` placeholder, since
    running statistics need no conv), no statistics updated: exactly what the deployed integer conv computes.
    ``fold_fn`` / ``stats_fn`` default to ``fold_batchnorm`` / ``bn_fold_statistics`` (the lab passes the
    student's). Parameters: the conv's ``weight`` / ``bias`` and the BN's (``bn.weight`` = γ, ``bn.bias`` = β);
    the BN module is a child (``bn``) and is not called. Build with ``QATConvBn2d.of(conv, bn, quantizer)``.
    """

    bn: nn.BatchNorm2d

    @classmethod
    def of(cls, conv: nn.Conv2d, bn: nn.BatchNorm2d, weight_quantizer: nn.Module | None = None,
           fold_fn: Callable[..., tuple[Tensor, Tensor]] | None = None,
           stats_fn: Callable[..., tuple[Tensor, Tensor]] | None = None) -> "QATConvBn2d":
        """``conv`` + ``bn`` (sharing their parameters and buffers) as one QAT module. ``weight_quantizer=None``:
        a per-channel 8-bit ``LSQQuantizer`` initialised (min-max) from the weight folded with the running
        statistics."""
        if not isinstance(bn, nn.BatchNorm2d) or bn.running_mean is None or not bn.affine:
            raise ValueError("QATConvBn2d needs an affine nn.BatchNorm2d with running statistics")
        if bn.num_features != conv.out_channels:
            raise ValueError(f"BatchNorm2d has {bn.num_features} features but the conv has {conv.out_channels} "
                             "output channels")
        if weight_quantizer is None:
            with torch.no_grad():
                folded, _ = fold_batchnorm(conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean,
                                           bn.running_var, bn.eps)
            weight_quantizer = LSQQuantizer(8, channel_dim=0, init="minmax", example=folded)
        module = quantized(conv, weight_quantizer, wrapper=cls)
        module.bn = bn
        module.fold_fn, module.stats_fn = fold_fn or fold_batchnorm, stats_fn or bn_fold_statistics
        module.register_buffer("bn_frozen", torch.tensor(False, device=conv.weight.device))
        return module

    def freeze_bn_stats(self, frozen: bool = True) -> "QATConvBn2d":
        """Fold with the running statistics from now on, in training too, and stop updating them."""
        self.bn_frozen.fill_(bool(frozen))
        return self

    def _statistics(self, x: Tensor | None) -> tuple[Tensor, Tensor]:
        bn = self.bn
        if x is None or not self.training or bool(self.bn_frozen):
            return self.stats_fn(bn.running_mean.unsqueeze(0), bn.running_mean, bn.running_var, False)
        conv_out = self._conv_forward(x, self.weight, self.bias)            # the float conv: batch statistics
        mean, var = self.stats_fn(conv_out, bn.running_mean, bn.running_var, True)
        self._update_running(mean.detach(), var.detach(), conv_out.numel() // conv_out.shape[1])
        return mean, var

    @torch.no_grad()
    def _update_running(self, mean: Tensor, var: Tensor, count: int) -> None:
        bn = self.bn
        bn.num_batches_tracked.add_(1)
        momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        unbiased = var * (count / max(count - 1, 1))
        bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), momentum)
        bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), momentum)

    def folded(self, x: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(folded weight, folded bias), float32: with ``x``'s batch statistics in training, else running ones."""
        mean, var = self._statistics(x)
        return self.fold_fn(self.weight, self.bias, self.bn.weight, self.bn.bias, mean, var, self.bn.eps)

    def quantized_weight(self) -> Tensor:
        """The fake-quantized weight folded with the running statistics (what is deployed)."""
        return self.weight_quantizer(self.folded()[0])

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self.folded(x)
        return self._conv_forward(x, self.weight_quantizer(weight), bias)

    def to_conv(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` with the quantized folded weight and the folded bias (running statistics)."""
        with torch.no_grad():
            weight, bias = self.folded()
            weight = self.weight_quantizer(weight)
        conv = dequantized(self)
        del conv._modules["bn"]
        for name in ("fold_fn", "stats_fn"):
            conv.__dict__.pop(name, None)
        conv._buffers.pop("bn_frozen", None)
        conv.weight, conv.bias = nn.Parameter(weight.detach().clone()), nn.Parameter(bias.detach().clone())
        return conv


def freeze_bn_stats(model: nn.Module, frozen: bool = True) -> int:
    """Every ``QATConvBn2d`` of ``model`` folds with its running statistics from now on (``frozen=False``:
    back to batch statistics); returns how many. The torchvision QAT recipe freezes BN after a few epochs."""
    layers = [m for m in model.modules() if isinstance(m, QATConvBn2d)]
    for layer in layers:
        layer.freeze_bn_stats(frozen)
    return len(layers)


def freeze_ranges(model: nn.Module, frozen: bool = True) -> int:
    """Stop (``frozen=False``: resume) learning every quantizer's range — LSQ steps, LSQ+ zero points, PACT α —
    while the weights keep training: QAT's "observers off" step (``requires_grad`` off, so optimizers skip
    them). Returns how many parameters changed."""
    params = [p for q in qat_quantizers(model) for p in q.parameters(recurse=False)]
    for p in params:
        p.requires_grad_(not frozen)
    return len(params)


def freeze_schedule(steps_per_epoch: int, freeze_bn_after: float | None = None,
                    freeze_ranges_after: float | None = None) -> Callable[[nn.Module, int, float], None]:
    """An ``after_step`` hook for ``lowbit.train.train`` that calls ``freeze_bn_stats`` once ``freeze_bn_after``
    epochs are done and ``freeze_ranges`` after ``freeze_ranges_after`` epochs (None: never; fractions allowed:
    the step is ``ceil(epochs · steps_per_epoch)``). torchvision's QAT recipe: observers off after epoch 4 and
    BN frozen after epoch 3 of its schedule."""
    steps_per_epoch = check_int(steps_per_epoch, "steps_per_epoch", low=1)
    events = []
    for after, action in ((freeze_bn_after, freeze_bn_stats), (freeze_ranges_after, freeze_ranges)):
        if after is not None:
            if not after >= 0:
                raise ValueError(f"freeze epochs must be >= 0 or None, got {after!r}")
            events.append((max(1, math.ceil(after * steps_per_epoch)), action))

    def hook(model: nn.Module, step_index: int, _loss: float) -> None:
        for at, action in events:
            if step_index + 1 == at:
                action(model)

    return hook


ACTIVATION_METHODS = ("lsq", "pact", "lsq+")


def qat_policy(w_bits: int | None = 4, a_bits: int | None = 8, activation: str = "lsq",
               keep_float: Iterable[str] = (), policy: Policy | None = None) -> Policy:
    """The layer policy ``prepare_qat`` applies: ``policy`` itself, or every quantizable layer except
    ``keep_float`` at ``w_bits`` (method ``"lsq"``, per channel)."""
    if policy is not None:
        return policy
    return Policy({"w_bits": w_bits, "a_bits": a_bits, "method": "lsq", "granularity": "channel"},
                  exclude=keep_float, exclude_label="keep_float")


def prepare_qat(model: nn.Module, w_bits: int | None = 4, a_bits: int | None = 8, activation: str = "lsq",
                keep_float: Iterable[str] = (), pact_alpha: float = 6.0, weight_init: str = "minmax",
                activation_init: str = "lsq", policy: Policy | None = None, fold_bn: bool = False,
                weight_quantize_fn: QuantizeFn | None = None, activation_quantize_fn: QuantizeFn | None = None,
                fold_fn: Callable[..., tuple[Tensor, Tensor]] | None = None,
                stats_fn: Callable[..., tuple[Tensor, Tensor]] | None = None) -> nn.Module:
    """A QAT copy of ``model``: quantized weights (per-channel LSQ) and activations after every ReLU.

    ``w_bits``: bits of every quantizable weight (``lowbit.quant.modules.quantizable_layers``) except the
    layers named in ``keep_float`` (None: weights stay float); those layers become ``QATConv2d`` /
    ``QATLinear`` with a per-output-channel ``LSQQuantizer`` whose step starts at ``weight_init`` (default
    ``"minmax"``: the float model's accuracy is kept at 8 bits before training). ``policy`` (a
    ``lowbit.quant.modules.Policy``) sets the weight bits per layer instead (``w_bits=None`` in a rule keeps a
    layer float). ``fold_bn``: a quantized Conv2d followed by a BatchNorm2d becomes one ``QATConvBn2d`` (BN
    folded before the weight is quantized, batch statistics while training; the BN becomes ``nn.Identity``),
    built with ``fold_fn`` / ``stats_fn``. ``a_bits``: bits of every ReLU output (None: activations stay
    float), quantized by an unsigned per-tensor ``LSQQuantizer`` after the ReLU (``activation="lsq"``, step
    from ``activation_init``, the paper's by default), an ``LSQPlusQuantizer`` after it (``"lsq+"``) or a
    ``PACTQuantizer`` that replaces the ReLU (``"pact"``). ``weight_quantize_fn`` / ``activation_quantize_fn``:
    the quantize functions those quantizers call (default the references ``lsq_fake_quantize`` /
    ``lsq_plus_fake_quantize`` / ``pact_quantize``; same signatures) — how a lab runs QAT on the student's
    functions. Every quantizer parameter exists with its final shape when this returns (weight steps already
    initialised from the weights; activation ranges take their value, in place, from the first batch), so an
    optimizer built right away — ``lowbit.train.train(qat, loader)`` — trains them. ``model`` is not modified.
    """
    check_choice("activation", activation, ACTIVATION_METHODS)
    for name, init in (("weight_init", weight_init), ("activation_init", activation_init)):
        check_choice(name, init, STEP_INITS)
    chosen = qat_policy(w_bits, a_bits, activation, keep_float, policy)
    qat = _checked_copy(model, chosen)
    followed_by_bn = {id(getattr(parent, conv)): (parent, bn) for parent, conv, bn in conv_bn_pairs(qat)} \
        if fold_bn else {}
    folded_bns: list[tuple[nn.Module, str]] = []

    def weight_quantized(_: str, layer: nn.Module, config: LayerConfig) -> nn.Module | None:
        if config.w_bits is None:
            return None
        pair = followed_by_bn.get(id(layer))
        if pair is None:
            return quantized(layer, LSQQuantizer(config.w_bits, signed=True, channel_dim=0, init=weight_init,
                                                 example=layer.weight, quantize_fn=weight_quantize_fn))
        parent, bn_name = pair
        bn = getattr(parent, bn_name)
        with torch.no_grad():
            folded, _ = fold_batchnorm(layer.weight, layer.bias, bn.weight, bn.bias, bn.running_mean,
                                       bn.running_var, bn.eps)
        quantizer = LSQQuantizer(config.w_bits, signed=True, channel_dim=0, init=weight_init, example=folded,
                                 quantize_fn=weight_quantize_fn)
        folded_bns.append(pair)
        return QATConvBn2d.of(layer, bn, quantizer, fold_fn, stats_fn)

    if w_bits is not None or policy is not None:
        swap_modules(qat, chosen, weight_quantized, inplace=True)
        for parent, bn_name in folded_bns:
            setattr(parent, bn_name, nn.Identity())
    if a_bits is not None:
        if activation == "pact":
            replace_children(qat, lambda _, child: PACTQuantizer(a_bits, pact_alpha, activation_quantize_fn)
                             if isinstance(child, nn.ReLU) else None)
        elif activation == "lsq+":
            insert_after(qat, nn.ReLU, lambda: LSQPlusQuantizer(a_bits, quantize_fn=activation_quantize_fn))
        else:
            insert_after(qat, nn.ReLU, lambda: LSQQuantizer(a_bits, signed=False, init=activation_init,
                                                            quantize_fn=activation_quantize_fn))
    return qat


def _checked_copy(model: nn.Module, policy: Policy) -> nn.Module:
    """A copy of ``model`` after checking the policy's names against it."""
    policy.resolve(model)
    return copy.deepcopy(model)


def qat_quantizers(model: nn.Module) -> list[nn.Module]:
    """Every ``LSQQuantizer`` / ``LSQPlusQuantizer`` / ``PACTQuantizer`` in ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, (_LearnedRange, PACTQuantizer))]


def freeze_qat(model: nn.Module) -> nn.Module:
    """A copy of a QAT model with plain ``nn.Conv2d`` / ``nn.Linear`` layers holding the quantized weights
    (a ``QATConvBn2d`` becomes one conv with the folded, quantized weight and the folded bias).

    Activation quantizers stay (they are part of the quantized model's forward pass). ``model`` is not modified.
    """
    frozen = copy.deepcopy(model)

    def plain(_: str, child: nn.Module) -> nn.Module | None:
        if isinstance(child, QATConvBn2d):
            return child.to_conv()
        return dequantized(child) if hasattr(child, "quantized_weight") else None

    replace_children(frozen, plain)
    return frozen


# ------------------------------------------------------------------------------------------ the QAT recipe
#: Gradient estimators ``train_qat(method=...)`` compares: fixed ranges with the plain STE (identity) or the
#: clipped STE; learned ranges with LSQ (weights and activations) or PACT (LSQ weights, PACT activations).
QAT_METHODS = ("ste", "clipped_ste", "lsq", "pact")


@dataclass
class QATRun:
    """What ``train_qat`` returns: the trained QAT ``model`` (eval mode), the per-batch ``losses`` (floats,
    NaN kept as NaN), the wall ``seconds`` of training and the ``settings`` it ran with."""

    model: nn.Module
    losses: list[float]
    seconds: float
    settings: dict[str, object] = field(default_factory=dict)

    @property
    def diverged(self) -> bool:
        """True when some loss was NaN or infinite."""
        return not all(math.isfinite(loss) for loss in self.losses)


def _fixed_range_fn(gradient: str) -> QuantizeFn:
    """A quantize function with the LSQ quantizer's signature whose step is a constant (its initial value)
    and whose input gradient is ``gradient`` ("ste" or "clipped_ste"): the fixed-range STE baselines."""

    def quantize(x: Tensor, step: Tensor, bits: int, signed: bool) -> Tensor:
        q_min, q_max = quantized_range(bits, signed)
        return fakequant.fake_quantize(x, step.detach().to(torch.float32), 0, q_min, q_max, gradient=gradient)

    return quantize


def first_last_policy(model: nn.Module, w_bits: int, first_last_bits: int | None = 8, **default: object) -> Policy:
    """Every quantizable layer at ``w_bits`` except the first and the last (``quantizable_layers`` order) at
    ``first_last_bits`` (None: the same ``w_bits``). The first layer sees the raw image, the last one decides
    the logits: both are small (here 288 and 5,760 weights) and most sensitive, so low-bit recipes keep them at
    8 bits (Esser et al. 2020; Choi et al. 2018). ``default``: more ``LayerConfig`` fields (e.g. ``options``)."""
    names = list(quantizable_layers(model))
    rules = {} if first_last_bits is None or not names else {names[0]: {"w_bits": first_last_bits},
                                                              names[-1]: {"w_bits": first_last_bits}}
    return Policy({"w_bits": w_bits, "method": "lsq", "granularity": "channel", **default}, rules=rules)


#: The PTQ settings ``ptq_baselines`` tries: Lab 1's calibrators (``lowbit.quant.calibration``) × weight clips
#: (KL is left out: at 4 bits and below its thresholds leave the CNN at chance).
PTQ_OBSERVERS = ("minmax", "percentile", "mse")
PTQ_CLIPS = ("minmax", "mse")


def ptq_baselines(model: nn.Module, w_bits: int, a_bits: int, calib: Tensor, first_last_bits: int | None = 8,
                  observers: Iterable[str] = PTQ_OBSERVERS, clips: Iterable[str] = PTQ_CLIPS
                  ) -> dict[str, nn.Module]:
    """Static PTQ models (``lowbit.quant.ptq.ptq`` of the BN-folded ``model``, Lab 1's pipeline) at the same
    layout as ``prepare_recipe``: weights per channel at ``w_bits`` with the first and last layer at
    ``first_last_bits``, activations (input and every ReLU output) at ``a_bits`` with the input and the last
    layer's input at ``first_last_bits``; one model per (weight clip, activation observer), named
    ``"<observer>, <clip> weights"``. ``calib``: calibration images ``[N, 1, 28, 28]``. QAT is compared with the
    best of them."""
    from lowbit.models import fold_batchnorm
    from lowbit.quant.ptq import ptq

    folded = fold_batchnorm(model)
    models = {}
    for clip in clips:
        policy = first_last_policy(folded, w_bits, first_last_bits, options={"clip": clip})
        for observer in observers:
            quantized = ptq(folded, calib, None, a_bits, observer=observer, policy=policy, progress=False)
            activations = quantized.activation_quantizers()          # the input's first, the last layer's last
            if first_last_bits is not None:
                for quantizer in (activations[0], activations[-1]):
                    quantizer.bits = check_bits(first_last_bits)
                    quantizer.freeze()
            models[f"{observer}, {clip} weights"] = quantized
    return models


def prepare_recipe(model: nn.Module, w_bits: int, a_bits: int, method: str = "lsq", first_last_bits: int | None = 8,
                   fold_bn: bool = True, weight_quantize_fn: QuantizeFn | None = None,
                   activation_quantize_fn: QuantizeFn | None = None,
                   fold_fn: Callable[..., tuple[Tensor, Tensor]] | None = None,
                   stats_fn: Callable[..., tuple[Tensor, Tensor]] | None = None) -> nn.Module:
    """The QAT model ``train_qat`` trains: ``prepare_qat`` with ``first_last_policy``, activations after every
    ReLU at ``a_bits`` except the last one (the last layer's input) at ``first_last_bits``, BN folded
    (``fold_bn``), and ``method``'s quantize functions (``QAT_METHODS``; explicit ``*_quantize_fn`` win)."""
    check_choice("method", method, QAT_METHODS)
    if method in ("ste", "clipped_ste"):
        weight_quantize_fn = weight_quantize_fn or _fixed_range_fn(method)
        activation_quantize_fn = activation_quantize_fn or _fixed_range_fn(method)
    qat = prepare_qat(model, None, a_bits, activation="pact" if method == "pact" else "lsq",
                      policy=first_last_policy(model, w_bits, first_last_bits), fold_bn=fold_bn,
                      weight_quantize_fn=weight_quantize_fn, activation_quantize_fn=activation_quantize_fn,
                      fold_fn=fold_fn, stats_fn=stats_fn)
    _, activations = _weight_and_activation_quantizers(qat)
    if activations and first_last_bits is not None:
        activations[-1].retarget(first_last_bits)
    return qat


def _weight_and_activation_quantizers(qat: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """(the weight quantizers of the quantized layers, every other QAT quantizer), each in module order."""
    weights = [m.weight_quantizer for m in qat.modules() if isinstance(m, (QuantConv2d, QuantLinear))]
    activations = [q for q in qat_quantizers(qat) if not any(q is w for w in weights)]
    return weights, activations


def retarget_bits(qat: nn.Module, w_bits: int, a_bits: int, first_last_bits: int | None = 8) -> nn.Module:
    """In place: a ``prepare_recipe`` model moved to ``w_bits`` / ``a_bits`` (first and last layer and the last
    activation at ``first_last_bits``): one stage of a gradual 8 → 4 → 2 schedule. The latent weights are kept;
    every quantizer range is initialised again, from the next forward pass, for the new width (as
    ``prepare_recipe`` would): an 8-bit LSQ activation range hardly clips, and an 8-bit weight step trained by
    Adam at lr 1e-3 moves by a large fraction of itself each step, so ranges kept across widths (``retarget``'s
    rescaling) left the gradual path at chance (measured: 11.8 % and 14.1 % on the embedded test set).
    Returns ``qat``."""
    weights, activations = _weight_and_activation_quantizers(qat)
    for index, quantizer in enumerate(weights):
        edge = index in (0, len(weights) - 1) and first_last_bits is not None
        quantizer.retarget(first_last_bits if edge else w_bits)
    for index, quantizer in enumerate(activations):
        edge = index == len(activations) - 1 and first_last_bits is not None
        quantizer.retarget(first_last_bits if edge else a_bits)
    for quantizer in weights + activations:
        if hasattr(quantizer, "initialized"):
            quantizer.initialized.fill_(False)
    return qat


def check_recipe_length(epochs: int, fraction: float) -> None:
    """Raise unless ``epochs`` is an int >= 1 and ``0 < fraction <= 1`` (the recipes' length arguments)."""
    check_int(epochs, "epochs", low=1)
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")


def recipe_training(model: nn.Module, epochs: int, lr: float, batch_size: int = 128, fraction: float = 1.0,
                    seed: int = 0, loader: Iterable | None = None, progress: bool = True,
                    hooks: Callable[[int], list[Callable]] | None = None, extra_loss: Callable | None = None,
                    desc: str = "QAT", param_groups: list[dict] | None = None) -> tuple[list[float], float]:
    """The training loop of the course's recipes (``train_qat`` and ``lowbit.quant.binary_train.train_binary``),
    in place on ``model``: ``epochs`` epochs of ``lowbit.train.train`` over ``loader`` (default: the 6,000
    embedded training images, batches of ``batch_size``, shuffled with ``seed``), ``fraction`` of each epoch's
    batches, Adam at ``lr`` decayed to 0 on a cosine per batch. ``hooks(batches_per_epoch)`` returns the
    ``after_step`` hooks (e.g. ``freeze_schedule``); ``extra_loss`` as in ``train``; ``param_groups``: Adam's
    parameter groups (default: every parameter that requires a gradient, at ``lr``). Leaves ``model`` in eval
    mode; returns (the per-batch losses, the wall seconds of training)."""
    from lowbit import data
    from lowbit.train import train

    check_recipe_length(epochs, fraction)
    if loader is None:
        loader = data.loaders(batch_size=batch_size, seed=seed)[0]
    per_epoch = max(1, math.ceil(fraction * len(loader)))
    groups = param_groups if param_groups is not None else [{"params": [p for p in model.parameters()
                                                                          if p.requires_grad]}]
    optimizer = torch.optim.Adam(groups, lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * per_epoch)
    started = time.perf_counter()
    losses = train(model, loader, epochs=epochs, optimizer=optimizer, scheduler=scheduler, device="cpu",
                   progress=progress, max_batches=per_epoch, after_step=hooks(per_epoch) if hooks else None,
                   extra_loss=extra_loss, desc=desc)
    seconds = time.perf_counter() - started
    model.eval()
    return losses, seconds


def train_qat(model: nn.Module, w_bits: int, a_bits: int, epochs: int = 3, method: str = "lsq",
              first_last_bits: int | None = 8, fold_bn: bool = True, lr: float = 1e-3, batch_size: int = 128,
              fraction: float = 1.0, freeze_bn_after: float | None = 1.0, freeze_ranges_after: float | None = None,
              seed: int = 0, loader: Iterable | None = None, progress: bool = True, prepared: nn.Module | None = None,
              **quantize_fns: Callable) -> QATRun:
    """The course's QAT recipe, in one place (Lab 3 and ``benchmarks/bench_lab3_accuracy.py`` call it).

    ``prepare_recipe(model, w_bits, a_bits, method, first_last_bits, fold_bn, **quantize_fns)`` (or
    ``prepared``, an already prepared model, e.g. the previous stage of a gradual schedule, trained in place),
    then ``epochs`` epochs of ``lowbit.train.train`` over ``loader`` (default: the 6,000 embedded training
    images, batches of ``batch_size``, shuffled with ``seed``), ``fraction`` of each epoch's batches
    (``0 < fraction <= 1``: the lab's short version): Adam at ``lr`` decayed to 0 on a cosine per batch, PACT's
    ``alpha_penalty`` for ``method="pact"``, BN statistics frozen after ``freeze_bn_after`` epochs and
    quantizer ranges after ``freeze_ranges_after`` (``freeze_schedule``; the torchvision recipe's BN-after-3 /
    observers-after-4 of its schedule, scaled: BN frozen after the first of 3 epochs, which measured best on the
    course CNN at W4A4 — 92.53 % vs 92.23 % frozen after 2 epochs and 92.13 % / 91.57 % at lr 5e-4 / 2e-4). ``quantize_fns``: ``weight_quantize_fn``,
    ``activation_quantize_fn``, ``fold_fn``, ``stats_fn`` (a lab passes the student's). Seeded: the same
    arguments give the same model (one torch thread gives bit-identical runs). A loss that turns NaN is
    recorded, not raised (``QATRun.diverged``).
    """
    from lowbit.utils import seed_everything

    check_recipe_length(epochs, fraction)
    unknown = set(quantize_fns) - {"weight_quantize_fn", "activation_quantize_fn", "fold_fn", "stats_fn"}
    if unknown:
        raise TypeError(f"train_qat got unexpected arguments {sorted(unknown)}")
    seed_everything(seed)
    qat = prepared if prepared is not None else prepare_recipe(model, w_bits, a_bits, method, first_last_bits,
                                                               fold_bn, **quantize_fns)
    losses, seconds = recipe_training(
        qat, epochs, lr, batch_size, fraction, seed, loader, progress,
        hooks=lambda per_epoch: [freeze_schedule(per_epoch, freeze_bn_after, freeze_ranges_after)],
        extra_loss=alpha_penalty if method == "pact" else None, desc=f"QAT W{w_bits}A{a_bits} {method}")
    settings = {"w_bits": w_bits, "a_bits": a_bits, "epochs": epochs, "method": method, "fraction": fraction,
                "first_last_bits": first_last_bits, "fold_bn": fold_bn, "lr": lr, "batch_size": batch_size,
                "freeze_bn_after": freeze_bn_after, "freeze_ranges_after": freeze_ranges_after, "seed": seed}
    return QATRun(qat, losses, seconds, settings)
