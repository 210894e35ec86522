"""The arithmetic core: quantize, dequantize and fake-quantize, with the rounding and the gradient as arguments.

    codes = clamp(rounding(x / S) + Z, q_min, q_max)        x_hat = S · (codes − Z)

Every module of ``lowbit.quant`` that quantizes goes through these three functions; nothing else writes the
formula. They take already-validated parameters (``lowbit.quant.validate``): ``scale`` a float tensor > 0
and ``zero_point`` an integer-valued tensor (or the int 0), both broadcasting against ``x``, and the integer
range as ``q_min, q_max`` (``validate.quantized_range(bits, signed)``, or ``restricted_range(bits)`` for the
symmetric grid without -2^(b-1)). ``x / S`` is computed in float32 whatever the input dtype (``dtype=`` asks
for float64, for exact simulations of integer arithmetic).

**Rounding** (``rounding=``): a name in ``ROUNDINGS`` or any callable ``Tensor -> Tensor`` (AdaRound's
``floor(v) + h(V)``, a ternary threshold, ...):

- ``"nearest"``: round half to even (``torch.round``), the default everywhere in the course;
- ``"floor"``: ``torch.floor`` (AdaRound's base grid);
- ``"stochastic"``: ``floor(v + u)`` with ``u ~ U[0, 1)`` drawn from ``generator`` (a seeded
  ``torch.Generator`` makes it reproducible), unbiased: E[round(v)] = v (Gupta et al. 2015);
- ``"straight_through"``: nearest, whose gradient is the identity (``ste_round``) — the rounding itself is
  transparent while the clamp still acts; use it inside formulas of your own.

New named roundings join with ``register_rounding(name, fn)``.

**Gradient** (``gradient=``, of ``fake_quantize`` with respect to ``x``):

- ``"none"``: what autograd derives from the formula — zero through the rounding (scale and zero point,
  when they require grad, get their true derivative);
- ``"ste"``: straight-through, 1 everywhere (Bengio et al. 2013);
- ``"clipped_ste"``: 1 where ``rounding(x / S) + Z`` lies inside ``[q_min, q_max]``, 0 where clamped (Jacob et
  al. 2018; ``torch.fake_quantize_per_tensor_affine``). Scale and zero point get no gradient under the two
  STE rules (learned steps use ``lowbit.quant.qat.lsq_fake_quantize``).
"""
from __future__ import annotations

from typing import Callable, Union

import torch
from torch import Tensor

__all__ = ["ROUNDINGS", "GRADIENTS", "register_rounding", "round_values", "ste_round", "quantize", "dequantize",
           "fake_quantize", "restricted_range"]

Rounding = Union[str, Callable[[Tensor], Tensor]]


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        return grad


def ste_round(x: Tensor) -> Tensor:
    """``torch.round(x)`` forward (half to even), identity gradient; same shape and dtype."""
    return _RoundSTE.apply(x)


def _stochastic(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return torch.floor(x + noise)


#: rounding name → function (v, generator) → rounded v.
ROUNDINGS: dict[str, Callable[..., Tensor]] = {
    "nearest": lambda v, generator=None: torch.round(v),
    "floor": lambda v, generator=None: torch.floor(v),
    "stochastic": _stochastic,
    "straight_through": lambda v, generator=None: ste_round(v),
}
GRADIENTS = ("none", "ste", "clipped_ste")


def register_rounding(name: str, fn: Callable[..., Tensor]) -> None:
    """Make ``rounding=name`` available everywhere; ``fn(v, generator=None)`` returns ``v`` rounded."""
    if not isinstance(name, str) or not callable(fn):
        raise TypeError(f"register_rounding needs a name (str) and a callable, got {name!r} and {fn!r}")
    ROUNDINGS[name] = fn


def round_values(v: Tensor, rounding: Rounding = "nearest", generator: torch.Generator | None = None) -> Tensor:
    """``v`` rounded by ``rounding`` (a name in ``ROUNDINGS`` or a callable ``Tensor -> Tensor``)."""
    if callable(rounding):
        return rounding(v)
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {', '.join(repr(r) for r in ROUNDINGS)} or a callable; "
                         f"got {rounding!r}")
    return ROUNDINGS[rounding](v, generator=generator)


def restricted_range(bits: int) -> tuple[int, int]:
    """``(-(2^(b-1) - 1), 2^(b-1) - 1)``: the symmetric signed grid (no -2^(b-1)), as weight quantizers use."""
    q = 2 ** (bits - 1) - 1
    return -q, q


def _is_zero(zero_point: Tensor | int) -> bool:
    return isinstance(zero_point, int) and zero_point == 0


def _codes(x: Tensor, scale: Tensor, zero_point: Tensor | int, q_min: int, q_max: int, rounding: Rounding,
           generator: torch.Generator | None, dtype: torch.dtype, code_dtype: torch.dtype | None
           ) -> tuple[Tensor, Tensor]:
    """(rounded codes before the clamp, clamped codes) in ``code_dtype`` (default ``dtype``); ``x / S`` in
    ``dtype``."""
    rounded = round_values(x.to(dtype) / scale.to(dtype), rounding, generator)
    if code_dtype is not None:
        rounded = rounded.to(code_dtype)
    if not _is_zero(zero_point):
        rounded = rounded + zero_point
    return rounded, rounded.clamp(q_min, q_max)


def quantize(x: Tensor, scale: Tensor, zero_point: Tensor | int, q_min: int, q_max: int,
             rounding: Rounding = "nearest", generator: torch.Generator | None = None,
             dtype: torch.dtype = torch.float32, code_dtype: torch.dtype | None = None) -> Tensor:
    """Integer codes ``clamp(rounding(x / S) + Z, q_min, q_max)`` as a float tensor (every value integral) of
    the broadcast shape. ``x / S`` is computed in ``dtype`` (float32, or float64 for a float64 simulation);
    the codes are held in ``code_dtype`` (default ``dtype``; float64 when they may exceed 2^24, as
    ``linear_quantize`` at up to 32 bits). Cast to an integer dtype where the integers are stored."""
    return _codes(x, scale, zero_point, q_min, q_max, rounding, generator, dtype, code_dtype)[1]


def dequantize(codes: Tensor, scale: Tensor, zero_point: Tensor | int, dtype: torch.dtype = torch.float32) -> Tensor:
    """``S · (codes − Z)`` as ``dtype``, computed in ``codes``' dtype (int64 codes: in float64). float32 codes:
    one rounding of the exact product, as torch's fake-quant ops; float64 codes below 2^29 times a float32
    scale: exact, then one rounding to ``dtype``."""
    if codes.dtype == torch.int64:
        codes = codes.to(torch.float64)
    centered = codes if _is_zero(zero_point) else codes - zero_point
    return (centered * scale.to(centered.dtype)).to(dtype)


class _PassThrough(torch.autograd.Function):
    """Forward: the fake-quantized value; backward: the incoming gradient, masked where ``mask`` is given."""

    @staticmethod
    def forward(ctx, x: Tensor, value: Tensor, mask: Tensor | None) -> Tensor:  # type: ignore[override]
        ctx.has_mask = mask is not None
        if mask is not None:
            ctx.save_for_backward(mask)
        return value

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        if ctx.has_mask:
            (mask,) = ctx.saved_tensors
            return grad * mask, None, None
        return grad, None, None


def fake_quantize(x: Tensor, scale: Tensor, zero_point: Tensor | int, q_min: int, q_max: int,
                  rounding: Rounding = "nearest", gradient: str = "none",
                  generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Quantize then dequantize: float32 ``S · (clamp(rounding(x / S) + Z, q_min, q_max) − Z)``.

    Args:
        x: float tensor, any shape. scale: float32 tensor > 0 broadcasting against ``x``. zero_point:
            integer-valued tensor (or int) broadcasting against ``x``. q_min, q_max: the integer range.
        rounding: see the module docstring. gradient: ``"none"``, ``"ste"`` or ``"clipped_ste"``.
        generator: for ``rounding="stochastic"``. dtype: the arithmetic and output dtype (float32; float64
            for an exact simulation of integer arithmetic).
    Returns:
        ``dtype`` tensor of the broadcast shape of ``x``, ``scale`` and ``zero_point``.
    """
    if gradient == "none":
        codes = quantize(x, scale, zero_point, q_min, q_max, rounding, generator, dtype)
        return dequantize(codes, scale, zero_point, dtype)
    if gradient not in GRADIENTS:
        raise ValueError(f"gradient must be one of {', '.join(repr(g) for g in GRADIENTS)}; got {gradient!r}")
    with torch.no_grad():
        rounded, codes = _codes(x.detach(), scale, zero_point, q_min, q_max, rounding, generator, dtype, None)
        value = dequantize(codes, scale, zero_point, dtype)
        mask = ((rounded >= q_min) & (rounded <= q_max)) if gradient == "clipped_ste" else None
    return _PassThrough.apply(x.to(dtype), value, mask)
