"""Argument checks shared by every ``lowbit.quant`` module: bits, tensors, choices and quantization parameters.

One message style everywhere: ``"<name> must be <what>, got <value>"``, then, where it helps, what to do
(``"; convert with x.float() first"``). Each check returns the value in the form the caller computes with
(an ``int``, a float32 / int64 tensor), so a module never re-derives it. Nothing here imports another
``lowbit.quant`` module: this is the bottom layer.
"""
from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Sequence, Union

import torch

__all__ = ["FLOAT_DTYPES", "check_bits", "check_int", "check_positive_int", "check_choice", "check_axis",
           "check_float_tensor", "check_data", "check_int_tensor", "check_positive_tensor", "scale_tensor",
           "zero_point_tensor", "check_broadcast", "quantized_range", "checked_qparams"]

ScaleLike = Union[float, torch.Tensor]
ZeroPointLike = Union[int, torch.Tensor]

#: Floating dtypes the quantizers accept (computed in float32).
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


# ---------------------------------------------------------------------------------------------- numbers
def check_int(value: object, name: str, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an ``int`` (bools refused) inside ``[low, high]`` (either bound may be None)."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        bounds = f" in [{low}, {high}]" if low is not None and high is not None else ""
        raise ValueError(f"{name} must be an int{bounds}, got {value!r} ({type(value).__name__})")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        if high is None:
            raise ValueError(f"{name} must be an int >= {low}, got {value}")
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")
    return value


def check_bits(bits: object, low: int = 1, high: int = 32, name: str = "bits") -> int:
    """``bits`` as an int in ``[low, high]`` (default 1..32), else ValueError."""
    return check_int(bits, name, low, high)


def check_positive_int(value: object, name: str) -> int:
    """``value`` as an int >= 1."""
    return check_int(value, name, low=1)


def check_choice(name: str, value: object, allowed: Sequence[object]) -> object:
    """``value`` if it is one of ``allowed``, else ValueError naming them all."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(repr(a) for a in allowed)}; got {value!r}")
    return value


def check_axis(axis: object, ndim: int) -> int:
    """``axis`` (may be negative) normalized to ``0..ndim-1``."""
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise TypeError(f"axis must be an int, got {type(axis).__name__}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for a tensor with {ndim} dims")
    return axis % ndim


# ---------------------------------------------------------------------------------------------- tensors
def check_float_tensor(x: object, name: str = "x", nonempty: bool = False, finite: bool = False) -> torch.Tensor:
    """``x`` if it is a floating-point tensor (float32/16, bfloat16, float64); optionally non-empty and finite."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor (float32/float16/bfloat16), got {x.dtype}; "
                        f"convert with {name}.float() first")
    if nonempty and x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}): there is nothing to quantize")
    if finite and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinity; quantization needs finite values")
    return x


def check_data(x: object, name: str = "x") -> torch.Tensor:
    """A non-empty, finite float tensor, detached (what observers and weight quantizers take)."""
    return check_float_tensor(x, name, nonempty=True, finite=True).detach()


def check_int_tensor(q: object, name: str) -> torch.Tensor:
    """``q`` if it is a tensor of an integer dtype (not bool)."""
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(q).__name__}")
    if q.is_floating_point() or q.is_complex() or q.dtype == torch.bool:
        raise TypeError(f"{name} must hold integers (e.g. torch.uint8 / torch.int8), got {q.dtype}")
    return q


def check_positive_tensor(value: torch.Tensor, name: str) -> torch.Tensor:
    """``value`` if it is non-empty, finite and > 0 everywhere (a learned step or clipping level)."""
    if value.numel() == 0 or not bool(torch.isfinite(value).all()) or not bool((value > 0).all()):
        raise ValueError(f"{name} must be finite and > 0 everywhere, got {value.detach().reshape(-1)[:8].tolist()}"
                         f"{' …' if value.numel() > 8 else ''}; a zero {name} would divide by zero (a constant or "
                         "all-zero tensor has no range: initialise from data with a nonzero spread)")
    return value


# ---------------------------------------------------------------------------------------------- qparams
def quantized_range(bits: int, signed: bool = True) -> tuple[int, int]:
    """The integer range ``(q_min, q_max)`` of ``bits``-bit integers (Python ints).

    Signed: [-2^(b-1), 2^(b-1) - 1] (1-bit signed is [-1, 0]); unsigned: [0, 2^b - 1].
    Raises ValueError unless ``bits`` is an int in 1..32.
    """
    bits = check_bits(bits)
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


def scale_tensor(scale: object) -> torch.Tensor:
    """``scale`` (float or float tensor) as a detached float32 tensor, checked to be finite and > 0."""
    if isinstance(scale, torch.Tensor):
        if not scale.is_floating_point():
            raise TypeError(f"scale must be a floating-point tensor or a float, got dtype {scale.dtype}")
        s = scale.detach().to(torch.float32)
    elif isinstance(scale, Real) and not isinstance(scale, bool):
        s = torch.tensor(float(scale), dtype=torch.float32)
    else:
        raise TypeError(f"scale must be a positive float or a float tensor, got {type(scale).__name__}")
    if s.numel() == 0:
        raise ValueError("scale is an empty tensor")
    if not bool(torch.isfinite(s).all()):
        raise ValueError(f"scale must be finite, got {scale!r}")
    if not bool((s > 0).all()):
        raise ValueError(f"scale must be > 0 everywhere, got min {float(s.min())} "
                         "(a zero scale usually means the range was empty or constant: see affine_qparams)")
    return s


def zero_point_tensor(zero_point: object) -> torch.Tensor:
    """``zero_point`` as an int64 tensor; floats are accepted only when integral-valued."""
    if isinstance(zero_point, torch.Tensor):
        z = zero_point.detach()
        if z.dtype == torch.bool:
            raise TypeError("zero_point must be an integer, got a bool tensor")
        if z.is_floating_point():
            if not bool(torch.isfinite(z).all()) or not bool((z == torch.round(z)).all()):
                raise ValueError(f"zero_point must hold integers, got {zero_point!r}")
        return z.to(torch.int64)
    if isinstance(zero_point, bool):
        raise TypeError("zero_point must be an integer, got a bool")
    if isinstance(zero_point, Integral):
        return torch.tensor(int(zero_point), dtype=torch.int64)
    if isinstance(zero_point, Real):
        if not math.isfinite(zero_point) or float(zero_point) != round(zero_point):
            raise ValueError(f"zero_point must be an integer, got {zero_point!r}")
        return torch.tensor(int(zero_point), dtype=torch.int64)
    raise TypeError(f"zero_point must be an int or an integer tensor, got {type(zero_point).__name__}")


def check_broadcast(param: torch.Tensor, shape: torch.Size, name: str) -> None:
    """``param`` must broadcast against ``shape`` without changing it (per-channel: other dims of size 1)."""
    try:
        torch.broadcast_shapes(param.shape, shape)
    except RuntimeError:
        raise ValueError(f"{name} of shape {tuple(param.shape)} does not broadcast against the input of shape "
                         f"{tuple(shape)}; for per-channel parameters keep the other dims as size 1") from None
    if torch.broadcast_shapes(param.shape, shape) != shape:
        raise ValueError(f"{name} of shape {tuple(param.shape)} would change the input's shape {tuple(shape)}")


def checked_qparams(shape: torch.Size, scale: ScaleLike, zero_point: ZeroPointLike, bits: int,
                    signed: bool) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Validated ``(float32 scale, int64 zero point, q_min, q_max)`` for quantizing a tensor of ``shape``:
    scale finite and > 0, zero point integral and inside the range, both broadcasting to ``shape``."""
    q_min, q_max = quantized_range(bits, signed)
    s = scale_tensor(scale)
    z = zero_point_tensor(zero_point)
    check_broadcast(s, shape, "scale")
    check_broadcast(z, shape, "zero_point")
    if bool((z < q_min).any()) or bool((z > q_max).any()):
        raise ValueError(f"zero_point must lie in the quantized range [{q_min}, {q_max}] for bits={bits}, "
                         f"signed={signed}; got {zero_point!r}")
    return s, z, q_min, q_max
