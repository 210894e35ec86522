"""How many numbers share one scale: per tensor, per channel, per group, two-level scales and MX blocks.

All weight quantizers here are symmetric and signed with the restricted range [-(2^(b-1) - 1), 2^(b-1) - 1]
(zero point 0), except ``per_tensor_qparams(..., symmetric=False)``. Every function returns float32 fake-quantized
values of the input's shape and never modifies its input.

Bits per element (storage cost including the scales):

- per-group, fp32 scales:        b + 32 / group_size
- two-level (integer group scales of ``scale_bits`` bits times one fp32 scale per tensor): b + scale_bits /
  group_size (the single per-tensor fp32 scale is not counted), e.g. 4 + 4/16 = 4.25
- MX (one 8-bit power-of-two scale, E8M0, per block): b + 8 / block, e.g. MXINT8: 8 + 8/32 = 8.25.
  OCP Microscaling Formats (MX) Specification v1.0 (2023); Rouhani et al. 2023, "Microscaling Data
  Formats for Deep Learning".

The bits-per-element figures are nominal: a shorter tail group is counted like a full one.
"""
from __future__ import annotations

import torch

from lowbit.quant.linear import (_check_bits, _check_float_tensor, affine_qparams, fake_quantize,
                                 symmetric_qparams)

__all__ = ["per_tensor_qparams", "fake_quantize_per_tensor", "per_channel_qparams", "fake_quantize_per_channel",
           "fake_quantize_per_group", "fake_quantize_two_level", "fake_quantize_mx"]


def _check_weight(w: torch.Tensor) -> torch.Tensor:
    w = _check_float_tensor(w, "w")
    if w.numel() == 0:
        raise ValueError(f"w is empty (shape {tuple(w.shape)}); there is nothing to quantize")
    if not bool(torch.isfinite(w).all()):
        raise ValueError("w contains NaN or infinity")
    return w


def _check_positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _symmetric_fake_quantize(w: torch.Tensor, scale: torch.Tensor | float, bits: int) -> torch.Tensor:
    """Symmetric restricted fake-quant: clamp(round(w / s), -q, q) * s with q = 2^(b-1) - 1, float32."""
    q = 2 ** (bits - 1) - 1
    s = torch.as_tensor(scale, dtype=torch.float32)
    return torch.clamp(torch.round(w.to(torch.float32) / s), -q, q) * s


# ------------------------------------------------------------------------------------------- per tensor
def per_tensor_qparams(w: torch.Tensor, bits: int, symmetric: bool = True) -> tuple[float, int]:
    """(scale, zero_point) for the whole tensor from its min and max.

    symmetric=True: restricted symmetric, zero point 0 (``symmetric_qparams(max|w|, bits)``);
    symmetric=False: signed affine (``affine_qparams(min w, max w, bits, signed=True)``).
    """
    w = _check_weight(w)
    if symmetric:
        return symmetric_qparams(float(w.abs().max()), bits), 0
    return affine_qparams(float(w.min()), float(w.max()), bits, signed=True)


def fake_quantize_per_tensor(w: torch.Tensor, bits: int, symmetric: bool = True) -> torch.Tensor:
    """Fake-quantize ``w`` (any shape) with one scale (and zero point) for the whole tensor; float32."""
    scale, zero_point = per_tensor_qparams(w, bits, symmetric)
    if symmetric:
        return _symmetric_fake_quantize(w, scale, bits)
    return fake_quantize(w, scale, zero_point, bits, signed=True)


# ------------------------------------------------------------------------------------------ per channel
def _normalize_axis(axis: object, ndim: int) -> int:
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise TypeError(f"axis must be an int, got {type(axis).__name__}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for a tensor with {ndim} dims")
    return axis % ndim


def per_channel_qparams(w: torch.Tensor, bits: int, axis: int = 0) -> torch.Tensor:
    """Symmetric restricted scale per slice along ``axis``: max|w| over all other dims / (2^(b-1) - 1).

    Args:
        w: float tensor with at least one dim, e.g. conv weight [out, in, kh, kw]; axis may be negative.
    Returns:
        float32 scale shaped to broadcast against ``w``: size ``w.shape[axis]`` on ``axis``, 1 elsewhere
        (e.g. [out, 1, 1, 1]). All-zero channels get scale 1.0.
    """
    w = _check_weight(w)
    if w.ndim == 0:
        raise ValueError("per-channel quantization needs a tensor with at least one dim")
    axis = _normalize_axis(axis, w.ndim)
    other_dims = [d for d in range(w.ndim) if d != axis]
    abs_max = w.detach().abs().to(torch.float32).amax(dim=other_dims, keepdim=True) if other_dims \
        else w.detach().abs().to(torch.float32)
    return symmetric_qparams(abs_max, bits)


def fake_quantize_per_channel(w: torch.Tensor, bits: int, axis: int = 0) -> torch.Tensor:
    """Fake-quantize ``w`` with one symmetric scale per slice along ``axis``; float32, ``w``'s shape."""
    return _symmetric_fake_quantize(w, per_channel_qparams(w, bits, axis), bits)


# ---------------------------------------------------------------------------------------------- groups
def _as_groups(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, int]:
    """[rows, n_groups, group_size] view of ``w`` (rows = w.shape[0], each row flattened, zero-padded at
    the tail), and the unpadded row length. A 0-d or 1-d tensor is one row."""
    rows = w.reshape(1, -1) if w.ndim <= 1 else w.reshape(w.shape[0], -1)
    length = rows.shape[1]
    padding = (-length) % group_size
    padded = torch.nn.functional.pad(rows.to(torch.float32), (0, padding))
    return padded.reshape(rows.shape[0], -1, group_size), length


def _from_groups(groups: torch.Tensor, length: int, like: torch.Tensor) -> torch.Tensor:
    return groups.reshape(groups.shape[0], -1)[:, :length].reshape(like.shape)


def fake_quantize_per_group(w: torch.Tensor, bits: int, group_size: int) -> tuple[torch.Tensor, float]:
    """Symmetric restricted fake-quant with one fp32 scale per group of ``group_size`` consecutive elements.

    Each row ``w[i]`` (i along axis 0) is flattened and cut into groups along it; a last group shorter than
    ``group_size`` is zero-padded internally (padding never changes a group's max|w|). A 1-d ``w`` is one row.

    Returns:
        (w_hat float32 of w's shape, bits_per_element = bits + 32 / group_size).
    """
    w = _check_weight(w)
    bits = _check_bits(bits, low=2)
    group_size = _check_positive_int(group_size, "group_size")
    groups, length = _as_groups(w, group_size)
    scale = symmetric_qparams(groups.abs().amax(dim=-1, keepdim=True), bits)
    return _from_groups(_symmetric_fake_quantize(groups, scale, bits), length, w), bits + 32 / group_size


def fake_quantize_two_level(w: torch.Tensor, bits: int, group_size: int = 16,
                            scale_bits: int = 4) -> tuple[torch.Tensor, float]:
    """Per-group scales stored as ``scale_bits``-bit unsigned integers times one fp32 scale per tensor.

    Group g's ideal scale is s_g = max|w_g| / (2^(b-1) - 1). The tensor scale is S = max_g s_g /
    (2^scale_bits - 1) and each group stores k_g = clamp(ceil(s_g / S), 1, 2^scale_bits - 1), so its
    effective scale k_g·S is never smaller than s_g (rounding up never clips a group's largest value; k_g >= 1
    keeps all-zero groups finite). Values are then quantized symmetric-restricted with scale k_g·S.
    Groups as in ``fake_quantize_per_group``.

    Returns:
        (w_hat float32 of w's shape, bits_per_element = bits + scale_bits / group_size), e.g. 4.25 for
        4-bit values, 4-bit scales, groups of 16.
    """
    w = _check_weight(w)
    bits = _check_bits(bits, low=2)
    scale_bits = _check_bits(scale_bits, low=1, high=16)
    group_size = _check_positive_int(group_size, "group_size")
    groups, length = _as_groups(w, group_size)
    q = 2 ** (bits - 1) - 1
    group_scale = groups.abs().amax(dim=-1, keepdim=True) / q                   # s_g, may be 0
    k_max = 2 ** scale_bits - 1
    top = float(group_scale.max())
    tensor_scale = top / k_max if top > 0 else 1.0
    k = torch.clamp(torch.ceil(group_scale / tensor_scale), 1, k_max)
    effective = k * torch.tensor(tensor_scale, dtype=torch.float32)
    return _from_groups(_symmetric_fake_quantize(groups, effective, bits), length, w), bits + scale_bits / group_size


def fake_quantize_mx(w: torch.Tensor, bits: int, block: int = 32) -> tuple[torch.Tensor, float]:
    """MX-style block quantization: ``bits``-bit signed integers sharing one power-of-two scale per block.

    Following the OCP MX spec v1.0 (2023) for MXINT: the shared scale is 2^e with
    e = floor(log2(max|w_block|)) - (bits - 2), i.e. the block's largest value lands in [2^(b-2), 2^(b-1))
    steps; elements are clamp(round(w / 2^e), -(2^(b-1) - 1), 2^(b-1) - 1) (values that round up to
    2^(b-1) clip by one step, as in the spec). e is clamped to the E8M0 range [-127, 127]; all-zero blocks
    use e = 0. Blocks as in ``fake_quantize_per_group``.

    Returns:
        (w_hat float32 of w's shape, bits_per_element = bits + 8 / block).
    """
    w = _check_weight(w)
    bits = _check_bits(bits, low=2)
    block = _check_positive_int(block, "block")
    groups, length = _as_groups(w, block)
    abs_max = groups.abs().amax(dim=-1, keepdim=True)
    exponent = torch.floor(torch.log2(abs_max)) - (bits - 2)
    exponent = torch.where(abs_max > 0, exponent, torch.zeros_like(exponent)).clamp(-127, 127)
    scale = torch.exp2(exponent)
    return _from_groups(_symmetric_fake_quantize(groups, scale, bits), length, w), bits + 8 / block
