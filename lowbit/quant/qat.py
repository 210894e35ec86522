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
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from lowbit.quant import fakequant
from lowbit.quant.modules import (LayerConfig, Policy, QuantConv2d, QuantLinear, dequantized, insert_after,
                                  quantized, replace_children, swap_modules)
from lowbit.quant.quantizer import Quantizer
from lowbit.quant.validate import (check_bits, check_broadcast, check_choice, check_float_tensor, check_int,
                                   check_positive_tensor, checked_qparams, quantized_range)

__all__ = ["ste_round", "fake_quantize_ste", "lsq_grad_scale", "lsq_fake_quantize", "lsq_init_step", "STEP_INITS",
           "lsq_plus_fake_quantize", "pact_quantize", "fold_batchnorm", "bn_fold_statistics",
           "LSQQuantizer", "PACTQuantizer", "QATConv2d", "QATLinear", "prepare_qat", "freeze_qat",
           "qat_quantizers", "alpha_penalty", "qat_policy"]

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
    """y = round(clamp(x / s, q_min, q_max)) * s with LSQ's gradients, in a few fused passes.

    Outside the clip range round(clamp(v)) is the bound itself, so the step's elementwise gradient is
    round(clamp(v)) − v·1[inside] everywhere: one expression instead of a three-way select.
    """

    @staticmethod
    def forward(ctx, x: Tensor, step: Tensor, q_min: int, q_max: int, grad_scale: float,  # type: ignore[override]
                rounding: fakequant.Rounding) -> Tensor:
        v = x / step
        codes = fakequant.round_values(v, rounding).clamp_(q_min, q_max)
        ctx.save_for_backward(v, codes, step)
        ctx.q_min, ctx.q_max, ctx.grad_scale = q_min, q_max, grad_scale
        return codes * step

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        v, codes, step = ctx.saved_tensors
        inside = (v >= ctx.q_min) & (v <= ctx.q_max)
        grad_x = grad * inside if ctx.needs_input_grad[0] else None
        grad_step = None
        if ctx.needs_input_grad[1]:
            per_value = codes - v * inside                   # the forward's own rounding (any rule)
            grad_step = (grad * per_value).sum_to_size(step.shape).mul_(ctx.grad_scale)
        return grad_x, grad_step, None, None, None, None


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
    clipped = torch.relu(x) - torch.relu(x - alpha)    # = clamp(x, 0, α), with ∂/∂α = 1[x > α]
    levels = 2**bits - 1
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
class LSQQuantizer(Quantizer):
    """A tensor quantizer with a learned step (LSQ). ``forward(x)`` → ``lsq_fake_quantize(x, step, …)``.

    ``channel_dim=None``: one step (shape ``[]``); ``channel_dim=d``: a step per index of dimension ``d``
    (per-channel weights: ``d = 0``), shaped to broadcast against the tensor. The ``step`` parameter is created
    with its final shape — at construction when ``example`` (the tensor it will quantize, e.g. the layer's
    weight) is given or the step is per tensor, else by ``prepare(example)`` — and is never replaced: its
    value is initialised (``lsq_init_step`` with ``init``) from ``example`` or, failing that, in place from the
    first tensor ``forward`` sees. An optimizer built after construction (after ``prepare`` for a per-channel
    step without example) therefore trains it. Used as the weight quantizer of a ``QATConv2d``/``QATLinear`` or
    after a ReLU (``signed=False``).
    """

    def __init__(self, bits: int, signed: bool = True, channel_dim: int | None = None, init: str = "lsq",
                 example: Tensor | None = None, rounding: fakequant.Rounding = "nearest") -> None:
        _lsq_q_max(bits, signed)
        check_choice("init", init, STEP_INITS)
        super().__init__(bits, signed)
        self.channel_dim, self.init, self.rounding = channel_dim, init, rounding
        self.step = nn.Parameter(torch.ones(())) if channel_dim is None else None
        self.register_buffer("initialized", torch.tensor(False))
        if example is not None:
            self.prepare(example)

    def _step_shape(self, example: Tensor) -> tuple[int, ...]:
        if self.channel_dim is None:
            return ()
        dim = self.channel_dim % example.ndim
        return tuple(size if d == dim else 1 for d, size in enumerate(example.shape))

    def prepare(self, example: Tensor) -> "LSQQuantizer":
        """Create the step with its final shape (if not yet created) and initialise it from ``example``."""
        with torch.no_grad():
            step = lsq_init_step(example, self.bits, self.signed, self.channel_dim, self.init).to(example.device)
            if self.step is None:
                self.step = nn.Parameter(step)
            elif tuple(self.step.shape) != tuple(step.shape):
                raise ValueError(f"LSQQuantizer's step has shape {tuple(self.step.shape)} but this example needs "
                                 f"{tuple(step.shape)}; build one quantizer per tensor shape")
            else:
                self.step.copy_(step)
            self.initialized.fill_(True)
        return self

    def quantize(self, x: Tensor) -> Tensor:
        if self.step is None:
            raise RuntimeError("a per-channel LSQQuantizer needs its step shape before the first forward pass: "
                               "pass example= (the tensor it quantizes) or call prepare(example) first, then build "
                               "the optimizer")
        if not bool(self.initialized):
            self.prepare(x)                                   # in place: the Parameter object stays the same
        return lsq_fake_quantize(x, self.step, self.bits, self.signed, rounding=self.rounding)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # a saved per-channel step, not prepared
        key = prefix + "step"
        if key in state_dict and self.step is None:
            self.step = nn.Parameter(torch.empty_like(state_dict[key]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        where = "per tensor" if self.channel_dim is None else f"per channel (dim {self.channel_dim})"
        return (f"bits={self.bits}, signed={self.signed}, {where}, init={self.init}, "
                f"initialized={bool(self.initialized)}")


class PACTQuantizer(Quantizer):
    """ReLU + quantization with a learned clipping level ``alpha`` (PACT). ``forward(x)`` → ``pact_quantize``.

    ``alpha`` (a 0-d parameter, created here) starts at ``init_alpha`` (the paper uses 10 and an L2 penalty on
    α — ``alpha_penalty`` — given to ``lowbit.train.train(extra_loss=...)``; a value near the activations' high
    percentile trains faster). Replaces a ReLU: negative inputs become 0.
    """

    def __init__(self, bits: int, init_alpha: float = 6.0) -> None:
        if not init_alpha > 0:
            raise ValueError(f"init_alpha must be > 0, got {init_alpha!r}")
        super().__init__(bits, signed=False)
        self.alpha = nn.Parameter(torch.tensor(float(init_alpha)))

    def quantize(self, x: Tensor) -> Tensor:
        return pact_quantize(x, self.alpha, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, alpha={float(self.alpha):.4g}"


def alpha_penalty(model: nn.Module, weight: float = 1e-4) -> Tensor:
    """PACT's L2 regularizer ``weight · Σ α²`` over every ``PACTQuantizer`` of ``model`` (0-d tensor)."""
    alphas = [m.alpha for m in model.modules() if isinstance(m, PACTQuantizer)]
    if not alphas:
        return torch.zeros(())
    return weight * torch.stack([a.pow(2) for a in alphas]).sum()


ACTIVATION_METHODS = ("lsq", "pact")


#: The QAT layers are the package's one quantized-module wrapper (``lowbit.quant.modules``).
QATConv2d = QuantConv2d
QATLinear = QuantLinear


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
                activation_init: str = "lsq", policy: Policy | None = None) -> nn.Module:
    """A QAT copy of ``model``: quantized weights (per-channel LSQ) and activations after every ReLU.

    ``w_bits``: bits of every quantizable weight (``lowbit.quant.modules.quantizable_layers``) except the
    layers named in ``keep_float`` (None: weights stay float); those layers become ``QATConv2d`` /
    ``QATLinear`` with a per-output-channel ``LSQQuantizer`` whose step starts at ``weight_init`` (default
    ``"minmax"``: the float model's accuracy is kept at 8 bits before training). ``policy`` (a
    ``lowbit.quant.modules.Policy``) sets the weight bits per layer instead (``w_bits=None`` in a rule keeps a
    layer float). ``a_bits``: bits of every ReLU output (None: activations stay float), quantized by an
    unsigned per-tensor ``LSQQuantizer`` after the ReLU (``activation="lsq"``, step from ``activation_init``,
    the paper's by default) or by a ``PACTQuantizer`` that replaces the ReLU (``"pact"``). Every quantizer
    parameter exists with its final shape when this returns (weight steps already initialised from the
    weights; activation steps take their value, in place, from the first batch), so an optimizer built right
    away — ``lowbit.train.train(qat, loader)`` — trains them. ``model`` is not modified.
    """
    check_choice("activation", activation, ACTIVATION_METHODS)
    for name, init in (("weight_init", weight_init), ("activation_init", activation_init)):
        check_choice(name, init, STEP_INITS)

    def weight_quantized(_: str, layer: nn.Module, config: LayerConfig) -> nn.Module | None:
        if config.w_bits is None:
            return None
        return quantized(layer, LSQQuantizer(config.w_bits, signed=True, channel_dim=0, init=weight_init,
                                             example=layer.weight))

    chosen = qat_policy(w_bits, a_bits, activation, keep_float, policy)
    qat = swap_modules(model, chosen, weight_quantized) if w_bits is not None or policy is not None \
        else _checked_copy(model, chosen)
    if a_bits is not None:
        if activation == "pact":
            replace_children(qat, lambda _, child: PACTQuantizer(a_bits, pact_alpha)
                             if isinstance(child, nn.ReLU) else None)
        else:
            insert_after(qat, nn.ReLU, lambda: LSQQuantizer(a_bits, signed=False, init=activation_init))
    return qat


def _checked_copy(model: nn.Module, policy: Policy) -> nn.Module:
    """A copy of ``model`` after checking the policy's names against it (weights stay float)."""
    policy.resolve(model)
    return copy.deepcopy(model)


def qat_quantizers(model: nn.Module) -> list[nn.Module]:
    """Every ``LSQQuantizer`` / ``PACTQuantizer`` in ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, (LSQQuantizer, PACTQuantizer))]


def freeze_qat(model: nn.Module) -> nn.Module:
    """A copy of a QAT model with plain ``nn.Conv2d`` / ``nn.Linear`` layers holding the quantized weights.

    Activation quantizers stay (they are part of the quantized model's forward pass). ``model`` is not modified.
    """
    frozen = copy.deepcopy(model)
    replace_children(frozen, lambda _, child: dequantized(child) if hasattr(child, "quantized_weight") else None)
    return frozen
