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

from lowbit.quant.linear import _check_bits, _check_float_tensor, _checked_qparams, quantized_range

__all__ = ["ste_round", "fake_quantize_ste", "lsq_fake_quantize", "lsq_init_step", "STEP_INITS", "pact_quantize",
           "LSQQuantizer", "PACTQuantizer", "QATConv2d", "QATLinear", "prepare_qat", "freeze_qat",
           "qat_quantizers"]

# ------------------------------------------------------------------------------------------ checks
def _check_float(x: object, name: str = "x") -> Tensor:
    """``x`` if it is a non-empty floating-point tensor (``lowbit.quant.linear``'s dtype check), else raise."""
    _check_float_tensor(x, name)
    if x.numel() == 0:  # type: ignore[union-attr]
        raise ValueError(f"{name} is empty: there is nothing to quantize")
    return x  # type: ignore[return-value]


def _check_positive(value: Tensor, name: str) -> None:
    if value.numel() == 0 or not bool(torch.isfinite(value).all()) or not bool((value > 0).all()):
        raise ValueError(f"{name} must be finite and > 0 everywhere, got {value.detach().reshape(-1)[:8].tolist()}"
                         f"{' …' if value.numel() > 8 else ''}; a zero {name} would divide by zero (a constant or "
                         "all-zero tensor has no range: initialise from data with a nonzero spread)")


# ------------------------------------------------------------------------------------------ STE
class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        return grad


def ste_round(x: Tensor) -> Tensor:
    """``torch.round(x)`` (half to even) forward; gradient passed through unchanged (straight-through).

    ``x``: floating tensor of any shape; returns the same shape and dtype.
    """
    return _RoundSTE.apply(_check_float(x))


class _FakeQuantizeSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, zero_point: Tensor, q_min: int, q_max: int) -> Tensor:  # type: ignore[override]
        codes = torch.round(x / scale) + zero_point
        ctx.save_for_backward((codes >= q_min) & (codes <= q_max))
        return (codes.clamp(q_min, q_max) - zero_point) * scale

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None


def fake_quantize_ste(x: Tensor, scale: float | Tensor, zero_point: int | Tensor, bits: int,
                      signed: bool = True) -> Tensor:
    """Fake-quantize ``x`` (quantize, then dequantize) with the clipped straight-through gradient.

    Forward: ``S · (clamp(round(x / S) + Z, q_min, q_max) − Z)`` in float32. Backward: the incoming gradient
    where ``round(x / S) + Z`` is inside ``[q_min, q_max]``, 0 where it was clamped; ``scale`` and
    ``zero_point`` get no gradient. ``x``: floating tensor ``[...]``; ``scale`` > 0 and ``zero_point``
    (integer-valued) are numbers or tensors broadcasting against ``x`` (per-channel: shape ``[C, 1, ..., 1]``).
    Returns float32 of ``x``'s shape. Matches ``torch.fake_quantize_per_tensor_affine`` /
    ``per_channel_affine`` (which multiply by ``1 / S``: equal whenever ``S`` is a power of two).
    """
    _check_float(x)
    scale_t, zero_t, q_min, q_max = _checked_qparams(x.shape, scale, zero_point, bits, signed)
    return _FakeQuantizeSTE.apply(x.to(torch.float32), scale_t.to(x.device), zero_t.to(x.device, torch.float32),
                                  q_min, q_max)


# ------------------------------------------------------------------------------------------ LSQ
class _LSQ(torch.autograd.Function):
    """y = round(clamp(x / s, q_min, q_max)) * s with LSQ's gradients, in a few fused passes.

    Outside the clip range round(clamp(v)) is the bound itself, so the step's elementwise gradient is
    round(clamp(v)) − v·1[inside] everywhere: one expression instead of a three-way select.
    """

    @staticmethod
    def forward(ctx, x: Tensor, step: Tensor, q_min: int, q_max: int, grad_scale: float) -> Tensor:  # type: ignore[override]
        v = x / step
        ctx.save_for_backward(v, step)
        ctx.q_min, ctx.q_max, ctx.grad_scale = q_min, q_max, grad_scale
        return v.clamp(q_min, q_max).round_().mul_(step)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        v, step = ctx.saved_tensors
        inside = (v >= ctx.q_min) & (v <= ctx.q_max)
        grad_x = grad * inside if ctx.needs_input_grad[0] else None
        grad_step = None
        if ctx.needs_input_grad[1]:
            per_value = v.clamp(ctx.q_min, ctx.q_max).round_().sub_(v * inside)
            grad_step = (grad * per_value).sum_to_size(step.shape).mul_(ctx.grad_scale)
        return grad_x, grad_step, None, None, None


def _lsq_q_max(bits: object, signed: bool) -> tuple[int, int]:
    q_min, q_max = quantized_range(bits, signed)
    if q_max < 1:
        raise ValueError(f"signed {bits}-bit LSQ has Q_P = {q_max}: no positive level to learn a step from; "
                         "use bits >= 2, or signed=False")
    return q_min, q_max


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
    if init not in STEP_INITS:
        raise ValueError(f"init must be one of {STEP_INITS}, got {init!r}")
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
                      grad_scale: float | None = None) -> Tensor:
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
    q_min, q_max = _lsq_q_max(bits, signed)
    if grad_scale is None:
        grad_scale = 1.0 / math.sqrt(x.numel() / step.numel() * q_max)
    return _LSQ.apply(x, step, q_min, q_max, float(grad_scale))


# ------------------------------------------------------------------------------------------ PACT
def pact_quantize(x: Tensor, alpha: Tensor, bits: int) -> Tensor:
    """PACT: clip ``x`` to ``[0, α]`` and quantize to ``2^b`` unsigned levels of step ``α / (2^b − 1)``.

    ``x``: floating tensor (pre-activations); ``alpha``: positive 0-d (or broadcasting) tensor, usually an
    ``nn.Parameter``. Gradients (STE through the rounding, as in the paper): to ``x`` 1 on ``(0, α]``, else
    0; to ``α`` 1 for every ``x > α``. Returns ``x``'s shape.
    """
    _check_float(x)
    _check_float(alpha, "alpha")
    bits = _check_bits(bits)
    _check_positive(alpha.detach(), "alpha")
    clipped = torch.relu(x) - torch.relu(x - alpha)    # = clamp(x, 0, α), with ∂/∂α = 1[x > α]
    levels = 2**bits - 1
    step = alpha.detach() / levels
    quantized = torch.round(clipped.detach() / step) * step
    return clipped + (quantized - clipped).detach()


# ------------------------------------------------------------------------------------------ modules
class LSQQuantizer(nn.Module):
    """A tensor quantizer with a learned step (LSQ). ``forward(x)`` → ``lsq_fake_quantize(x, step, …)``.

    ``channel_dim=None``: one step; ``channel_dim=d``: a step per index of dimension ``d`` (per-channel
    weights: ``d = 0``). The step is initialised from the first tensor it sees (``lsq_init_step`` with
    ``init``) and is
    an ``nn.Parameter`` from then on. Used as the weight quantizer of a ``QATConv2d``/``QATLinear`` or after a ReLU
    (``signed=False``).
    """

    def __init__(self, bits: int, signed: bool = True, channel_dim: int | None = None, init: str = "lsq") -> None:
        super().__init__()
        _lsq_q_max(bits, signed)
        if init not in STEP_INITS:
            raise ValueError(f"init must be one of {STEP_INITS}, got {init!r}")
        self.bits, self.signed, self.channel_dim, self.init = int(bits), signed, channel_dim, init
        self.step = nn.Parameter(torch.ones(()))
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, x: Tensor) -> Tensor:
        if not bool(self.initialized):
            with torch.no_grad():
                step = lsq_init_step(x, self.bits, self.signed, self.channel_dim, self.init)
                self.step = nn.Parameter(step.to(x.device))
                self.initialized.fill_(True)
        return lsq_fake_quantize(x, self.step, self.bits, self.signed)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # a saved step may be per-channel
        key = prefix + "step"
        if key in state_dict and state_dict[key].shape != self.step.shape:
            self.step = nn.Parameter(torch.empty_like(state_dict[key]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        where = "per tensor" if self.channel_dim is None else f"per channel (dim {self.channel_dim})"
        return f"bits={self.bits}, signed={self.signed}, {where}, init={self.init}, initialized={bool(self.initialized)}"


class PACTQuantizer(nn.Module):
    """ReLU + quantization with a learned clipping level ``alpha`` (PACT). ``forward(x)`` → ``pact_quantize``.

    ``alpha`` starts at ``init_alpha`` (the paper uses 10 and an L2 penalty on α; a value near the
    activations' high percentile trains faster). Replaces a ReLU: negative inputs become 0.
    """

    def __init__(self, bits: int, init_alpha: float = 6.0) -> None:
        super().__init__()
        if not init_alpha > 0:
            raise ValueError(f"init_alpha must be > 0, got {init_alpha!r}")
        self.bits = _check_bits(bits)
        self.alpha = nn.Parameter(torch.tensor(float(init_alpha)))

    def forward(self, x: Tensor) -> Tensor:
        return pact_quantize(x, self.alpha, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, alpha={float(self.alpha):.4g}"


ACTIVATION_METHODS = ("lsq", "pact")


class QATConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose forward pass uses ``weight_quantizer(weight)``; ``weight`` stays the float latent
    weight the optimizer updates (as in ``torch.ao.nn.qat.Conv2d``)."""

    weight_quantizer: nn.Module

    def quantized_weight(self) -> Tensor:
        return self.weight_quantizer(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.quantized_weight(), self.bias)


class QATLinear(nn.Linear):
    """``nn.Linear`` whose forward pass uses ``weight_quantizer(weight)`` (see ``QATConv2d``)."""

    weight_quantizer: nn.Module

    def quantized_weight(self) -> Tensor:
        return self.weight_quantizer(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.quantized_weight(), self.bias)


_QAT_CLASSES = {nn.Conv2d: QATConv2d, nn.Linear: QATLinear}
_FLOAT_CLASSES = {qat_class: float_class for float_class, qat_class in _QAT_CLASSES.items()}


def _swap_class(module: nn.Module, new_class: type) -> nn.Module:
    """A copy of ``module`` as ``new_class`` (same parameters, buffers and settings; no hooks copied)."""
    swapped = new_class.__new__(new_class)
    swapped.__dict__ = copy.copy(module.__dict__)
    for store in ("_parameters", "_buffers", "_modules"):
        swapped.__dict__[store] = dict(module.__dict__[store])
    return swapped


def _replace_children(model: nn.Module, make: Callable[[str, nn.Module], nn.Module | None]) -> None:
    """Replace every module (at any depth) for which ``make(name, module)`` returns a new module."""
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}" if parent_name else name
            replacement = make(full, child)
            if replacement is not None:
                setattr(parent, name, replacement)


def _weight_layers(model: nn.Module, keep_float: Iterable[str]) -> dict[str, nn.Module]:
    """Conv2d/Linear modules by name, except those in ``keep_float`` (which must all exist)."""
    keep = set(keep_float)
    modules = dict(model.named_modules())
    unknown = keep - set(modules)
    if unknown:
        raise ValueError(f"keep_float names {sorted(unknown)}, which are not modules of this model; "
                         f"layers with weights: {[n for n, m in modules.items() if type(m) in _QAT_CLASSES]}")
    return {name: m for name, m in modules.items() if type(m) in _QAT_CLASSES and name not in keep}


def prepare_qat(model: nn.Module, w_bits: int | None = 4, a_bits: int | None = 8, activation: str = "lsq",
                keep_float: Iterable[str] = (), pact_alpha: float = 6.0, weight_init: str = "minmax",
                activation_init: str = "lsq") -> nn.Module:
    """A QAT copy of ``model``: quantized weights (per-channel LSQ) and activations after every ReLU.

    ``w_bits``: bits of every Conv2d/Linear weight except the layers named in ``keep_float`` (None: weights
    stay float); those layers become ``QATConv2d`` / ``QATLinear`` with a per-output-channel
    ``LSQQuantizer`` whose step starts at ``weight_init`` (default ``"minmax"``: the float model's accuracy
    is kept at 8 bits before training). ``a_bits``: bits of every ReLU output (None: activations stay float), quantized by an
    unsigned per-tensor ``LSQQuantizer`` after the ReLU (``activation="lsq"``, step from ``activation_init``,
    the paper's by default) or by a ``PACTQuantizer`` that
    replaces the ReLU (``"pact"``). Steps are initialised lazily: run one batch (``model(x)``) before
    building the optimizer so it sees the final parameters. ``model`` is not modified.
    """
    if activation not in ACTIVATION_METHODS:
        raise ValueError(f"activation must be one of {ACTIVATION_METHODS}, got {activation!r}")
    for name, init in (("weight_init", weight_init), ("activation_init", activation_init)):
        if init not in STEP_INITS:
            raise ValueError(f"{name} must be one of {STEP_INITS}, got {init!r}")
    qat = copy.deepcopy(model)
    layers = set(_weight_layers(qat, keep_float)) if w_bits is not None else set()

    def quantized(name: str, child: nn.Module) -> nn.Module | None:
        if name in layers:
            swapped = _swap_class(child, _QAT_CLASSES[type(child)])
            swapped.weight_quantizer = LSQQuantizer(w_bits, signed=True, channel_dim=0, init=weight_init)
            return swapped
        if a_bits is not None and isinstance(child, nn.ReLU):
            return (PACTQuantizer(a_bits, pact_alpha) if activation == "pact"
                    else nn.Sequential(child, LSQQuantizer(a_bits, signed=False, init=activation_init)))
        return None

    _replace_children(qat, quantized)
    return qat


def qat_quantizers(model: nn.Module) -> list[nn.Module]:
    """Every ``LSQQuantizer`` / ``PACTQuantizer`` in ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, (LSQQuantizer, PACTQuantizer))]


def freeze_qat(model: nn.Module) -> nn.Module:
    """A copy of a QAT model with plain ``nn.Conv2d`` / ``nn.Linear`` layers holding the quantized weights.

    Activation quantizers stay (they are part of the quantized model's forward pass). ``model`` is not modified.
    """
    frozen = copy.deepcopy(model)

    def plain(_: str, child: nn.Module) -> nn.Module | None:
        if type(child) not in _FLOAT_CLASSES:
            return None
        with torch.no_grad():
            weight = child.quantized_weight().detach().clone()
        swapped = _swap_class(child, _FLOAT_CLASSES[type(child)])
        del swapped._modules["weight_quantizer"]
        swapped.weight = nn.Parameter(weight)
        return swapped

    _replace_children(frozen, plain)
    return frozen
