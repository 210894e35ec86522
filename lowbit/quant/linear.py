"""Linear (affine / uniform) quantization: the map between real numbers and b-bit integers.

    q = clamp(round(r / S) + Z, q_min, q_max)          r_hat = S (q - Z)

``round`` is round-half-to-even (``torch.round``). Signed b-bit integers live in [-2^(b-1), 2^(b-1) - 1],
unsigned ones in [0, 2^b - 1]. Reference: Jacob et al. 2018, "Quantization and Training of Neural Networks
for Efficient Integer-Arithmetic-Only Inference", section 2.1.

Conventions of this module (the course's contract):

- Scales are used as float32 (a Python float is rounded to float32 first), zero points are integers.
  ``scale`` / ``zero_point`` may be Python numbers or tensors that broadcast against ``r`` (per-channel).
- ``linear_quantize`` computes ``r / S`` in float32 whatever the input float dtype (fp32, fp16, bf16), and
  returns the smallest integer dtype that holds the range (``storage_dtype``): int8 for signed b <= 8, uint8
  for unsigned b <= 8, int16 for signed b <= 16 / unsigned b <= 15, int32 for signed b <= 32 / unsigned
  b <= 31, and int64 for unsigned 32-bit.
- ``linear_dequantize`` returns float32; it computes (q - Z) in int64 (no uint8/int8 overflow) and
  multiplies by the float32 scale with one float32 rounding (same arithmetic as
  ``torch.fake_quantize_per_tensor_affine``).
- Degenerate ranges (``affine_qparams``/``symmetric_qparams``): the range is first extended to contain 0,
  so only an all-zero range has width 0. Then **scale = 1.0** (the zero point still maps 0 exactly, so an
  all-zero tensor round-trips exactly). A nonzero but tiny width never gives a zero or subnormal scale:
  the scale is clamped below at ``MIN_SCALE`` (the smallest normal float32, 1.18e-38). torch.ao instead
  clamps every scale below at float32 ``eps`` (1.19e-7) — identical for all ranges wider than ~3e-5.
- ``symmetric_qparams``: ``restricted=True`` uses q_max = 2^(b-1) - 1 on both sides (the integer -2^(b-1)
  is never produced), scale = abs_max / (2^(b-1) - 1); ``restricted=False`` uses the full signed range,
  scale = abs_max / 2^(b-1) (so +abs_max is clipped by one step). torch.ao's symmetric observers use a
  third convention, scale = abs_max / ((q_max - q_min) / 2) = abs_max / 127.5 for 8 bits.
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Union

import torch

from lowbit.quant import fakequant
from lowbit.quant.validate import (check_bits, check_broadcast, check_float_tensor, checked_qparams,
                                   quantized_range, scale_tensor, zero_point_tensor)

__all__ = ["MIN_SCALE", "quantized_range", "storage_dtype", "linear_quantize", "linear_dequantize",
           "affine_qparams", "symmetric_qparams", "fake_quantize", "sqnr_db"]

Number = Union[int, float]
ScaleLike = Union[float, torch.Tensor]
ZeroPointLike = Union[int, torch.Tensor]

#: Smallest scale ever returned by the qparams functions (smallest normal float32).
MIN_SCALE: float = float(torch.finfo(torch.float32).tiny)


# ----------------------------------------------------------------------------------------------- ranges
def storage_dtype(bits: int, signed: bool = True) -> torch.dtype:
    """Smallest torch integer dtype holding every ``bits``-bit (un)signed value (see module docstring)."""
    q_min, q_max = quantized_range(bits, signed)
    candidates = (torch.int8, torch.int16, torch.int32) if signed else (torch.uint8, torch.int16, torch.int32,
                                                                        torch.int64)
    for dtype in candidates:
        info = torch.iinfo(dtype)
        if info.min <= q_min and q_max <= info.max:
            return dtype
    raise AssertionError("unreachable: int64 holds every range up to 32 bits")


# -------------------------------------------------------------------------------------- quantize / back
def linear_quantize(r: torch.Tensor, scale: ScaleLike, zero_point: ZeroPointLike, bits: int,
                    signed: bool = True) -> torch.Tensor:
    """q = clamp(round(r / scale) + zero_point, q_min, q_max), round half to even.

    Args:
        r: float tensor (float32, float16 or bfloat16), any shape; computed in float32.
        scale: float > 0 or float tensor broadcastable to ``r`` (per-channel: e.g. shape [C, 1, 1, 1]).
        zero_point: int or integer tensor broadcastable to ``r``, inside [q_min, q_max].
        bits: 1..32; signed: signed or unsigned integer range.

    Returns:
        integer tensor of ``r``'s shape, dtype ``storage_dtype(bits, signed)`` (int8 / uint8 for 8 bits).
    """
    r = check_float_tensor(r, "r")
    s, z, q_min, q_max = checked_qparams(r.shape, scale, zero_point, bits, signed)
    if not bool(torch.isfinite(r).all()):
        raise ValueError("r contains NaN or infinity; quantization needs finite values")
    # float32 division, round half to even; codes in float64 (exact: |rounded| < 2^128, z < 2^32)
    q = fakequant.quantize(r, s, z, q_min, q_max, code_dtype=torch.float64)
    return q.to(storage_dtype(bits, signed))


def linear_dequantize(q: torch.Tensor, scale: ScaleLike, zero_point: ZeroPointLike) -> torch.Tensor:
    """r_hat = scale * (q - zero_point) as float32.

    Args:
        q: integer tensor (any integer dtype, any shape).
        scale, zero_point: as in ``linear_quantize`` (broadcastable to ``q``).

    Returns:
        float32 tensor of ``q``'s shape. (q - Z) is formed in int64, then multiplied by the float32 scale
        with a single float32 rounding.
    """
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"q must be a torch.Tensor, got {type(q).__name__}")
    if q.is_floating_point() or q.is_complex() or q.dtype == torch.bool:
        raise TypeError(f"q must be an integer tensor (the output of linear_quantize), got {q.dtype}")
    s = scale_tensor(scale)
    z = zero_point_tensor(zero_point)
    check_broadcast(s, q.shape, "scale")
    check_broadcast(z, q.shape, "zero_point")
    # float64 product of a float32 scale and an integer below 2^29 is exact; one rounding to float32.
    return fakequant.dequantize(q.to(torch.int64), s, z)


def fake_quantize(r: torch.Tensor, scale: ScaleLike, zero_point: ZeroPointLike, bits: int,
                  signed: bool = True) -> torch.Tensor:
    """Quantize then dequantize: float32 tensor of ``r``'s shape, the values ``r`` is rounded to."""
    return linear_dequantize(linear_quantize(r, scale, zero_point, bits, signed), scale, zero_point)


# ----------------------------------------------------------------------------------------------- qparams
def _as_float32(value: object, name: str) -> tuple[torch.Tensor, bool]:
    """(float32 tensor, was_tensor)."""
    if isinstance(value, torch.Tensor):
        if value.dtype == torch.bool or value.is_complex():
            raise TypeError(f"{name} must be a real number or a float tensor, got {value.dtype}")
        return value.detach().to(torch.float32), True
    if isinstance(value, Real) and not isinstance(value, bool):
        return torch.tensor(float(value), dtype=torch.float32), False
    raise TypeError(f"{name} must be a real number or a tensor, got {type(value).__name__}")


def affine_qparams(r_min: Number | torch.Tensor, r_max: Number | torch.Tensor, bits: int,
                   signed: bool = True) -> tuple[float, int] | tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point mapping [r_min, r_max] onto the full ``bits``-bit range.

    The range is first extended to contain 0 (r_min = min(r_min, 0), r_max = max(r_max, 0)) so that 0 is
    represented exactly. Then scale = (r_max - r_min) / (q_max - q_min) and
    Z = clamp(round(q_min - r_min / scale), q_min, q_max), computed in float32.
    An all-zero range gives scale 1.0; scales never go below ``MIN_SCALE`` (see module docstring).

    Args:
        r_min, r_max: Python numbers (→ returns ``(float, int)``) or float tensors of the same (or
            broadcastable) shape (elementwise, e.g. per channel → ``(float32 tensor, int32 tensor)``).
    Raises:
        ValueError if r_min > r_max anywhere, a bound is NaN/inf, or bits is not in 1..32.
    """
    q_min, q_max = quantized_range(bits, signed)
    lo, lo_is_tensor = _as_float32(r_min, "r_min")
    hi, hi_is_tensor = _as_float32(r_max, "r_max")
    try:
        lo, hi = torch.broadcast_tensors(lo, hi)
    except RuntimeError:
        raise ValueError(f"r_min and r_max must have the same shape (or broadcast), got {tuple(lo.shape)} and "
                         f"{tuple(hi.shape)}") from None
    if not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise ValueError("r_min and r_max must be finite (got NaN or inf; is the tensor empty or diverged?)")
    if bool((lo > hi).any()):
        raise ValueError(f"r_min must be <= r_max, got r_min={r_min!r}, r_max={r_max!r}")
    lo = torch.clamp(lo, max=0.0)
    hi = torch.clamp(hi, min=0.0)
    width = hi - lo
    scale = width / float(q_max - q_min)
    scale = torch.where(width == 0, torch.ones_like(scale), scale.clamp(min=MIN_SCALE))
    zero_point = torch.round(q_min - lo / scale).clamp(q_min, q_max)
    if lo_is_tensor or hi_is_tensor:
        return scale, zero_point.to(torch.int32)
    return float(scale), int(zero_point)


def symmetric_qparams(abs_max: Number | torch.Tensor, bits: int,
                      restricted: bool = True) -> float | torch.Tensor:
    """Scale of symmetric signed quantization (zero point 0) covering [-abs_max, abs_max].

    restricted=True: scale = abs_max / (2^(b-1) - 1)  (integers in [-(2^(b-1) - 1), 2^(b-1) - 1]);
    restricted=False: scale = abs_max / 2^(b-1)       (full signed range; +abs_max clips one step).
    abs_max = 0 gives scale 1.0; scales never go below ``MIN_SCALE``. torch.ao divides by 127.5 at 8 bits.

    Args:
        abs_max: number >= 0 (→ float) or float tensor >= 0 (→ float32 tensor, elementwise).
        bits: 2..32 (1-bit restricted has no positive level; use binary quantization instead).
    """
    bits = check_bits(bits, low=2)
    value, is_tensor = _as_float32(abs_max, "abs_max")
    if not bool(torch.isfinite(value).all()):
        raise ValueError("abs_max must be finite")
    if bool((value < 0).any()):
        raise ValueError(f"abs_max must be >= 0 (it is max(|r|)), got {abs_max!r}")
    levels = 2 ** (bits - 1) - 1 if restricted else 2 ** (bits - 1)
    scale = value / float(levels)
    scale = torch.where(value == 0, torch.ones_like(scale), scale.clamp(min=MIN_SCALE))
    return scale if is_tensor else float(scale)


# ------------------------------------------------------------------------------------------------ metric
def sqnr_db(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio 10·log10(Σx² / Σ(x − x_hat)²) in dB (float64 sums).

    Returns +inf when x_hat == x exactly. Raises ValueError for empty or mismatched shapes, or an all-zero x
    with nonzero error (the ratio is undefined).
    """
    x = check_float_tensor(x, "x").detach()
    x_hat = check_float_tensor(x_hat, "x_hat").detach()
    if x.shape != x_hat.shape:
        raise ValueError(f"x and x_hat must have the same shape, got {tuple(x.shape)} and {tuple(x_hat.shape)}")
    if x.numel() == 0:
        raise ValueError("sqnr_db of an empty tensor is undefined")
    signal = float(x.double().pow(2).sum())
    noise = float((x.double() - x_hat.double()).pow(2).sum())
    if noise == 0:
        return math.inf
    if signal == 0:
        raise ValueError("x is all zeros, so SQNR is undefined (the signal has no power)")
    return 10.0 * math.log10(signal / noise)
