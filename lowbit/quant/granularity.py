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

This is the one place scale layouts live. Every layout is a way to cut a tensor into **rows that share one
scale** (``scale_rows``): per tensor → one row, per channel (any axis) → one row per slice, per group → one row
per ``group_size`` consecutive elements of each output row (zero-padded tail). A scale is computed per row
(``row_scales``: max|row| or the MSE-optimal clip, then encoded as fp32, a two-level integer, or an MX power of
two) and broadcast back (``from_rows``). Return convention:

- ``*_qparams`` return scales (float32) that **broadcast against the input** (per channel on axis 1 of a
  [O, I, kh, kw] weight: [1, I, 1, 1]); ``per_tensor_qparams`` returns Python ``(scale, zero_point)`` because
  it may be affine. Symmetric layouts have zero point 0 and do not return it.
- ``fake_quantize_*`` return the fake-quantized tensor (float32, input's shape) — and, for the layouts whose
  storage cost depends on the group (per group, two-level, MX), ``(w_hat, bits_per_element)``, the figure Lab 1
  asks students to weigh against accuracy. ``fake_quantize_weight`` (one entry point for every layout, used by
  PTQ and the layer policies) always returns the tensor alone; ``bits_per_element`` gives the cost.
"""
from __future__ import annotations

from typing import Callable

import torch

from lowbit.quant import fakequant
from lowbit.quant.linear import affine_qparams, fake_quantize, symmetric_qparams
from lowbit.quant.validate import check_axis, check_bits, check_choice, check_data, check_positive_int

__all__ = ["GRANULARITIES", "CLIPS", "SCALE_FORMATS", "per_tensor_qparams", "fake_quantize_per_tensor",
           "per_channel_qparams", "fake_quantize_per_channel", "fake_quantize_per_group", "fake_quantize_two_level",
           "fake_quantize_mx", "scale_rows", "from_rows", "row_scales", "mse_symmetric_scale",
           "fake_quantize_weight", "bits_per_element"]

GRANULARITIES = ("tensor", "channel", "group")
CLIPS = ("minmax", "mse")
SCALE_FORMATS = ("fp32", "two_level", "mx")


def _check_weight(w: torch.Tensor) -> torch.Tensor:
    return check_data(w, "w")


def _symmetric_fake_quantize(w: torch.Tensor, scale: torch.Tensor | float, bits: int) -> torch.Tensor:
    """Symmetric restricted fake-quant: clamp(round(w / s), -q, q) * s with q = 2^(b-1) - 1, float32."""
    q_min, q_max = fakequant.restricted_range(bits)
    return fakequant.fake_quantize(w, torch.as_tensor(scale, dtype=torch.float32), 0, q_min, q_max)


# ------------------------------------------------------------------------------------------------ layouts
def scale_rows(w: torch.Tensor, granularity: str, group_size: int = 32, axis: int = 0
               ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """``w`` cut into rows that share one scale, float32 ``[R, L]``, and the function mapping rows back to
    ``w``'s shape.

    ``"tensor"``: one row. ``"channel"``: one row per index of ``axis``. ``"group"``: each slice ``w[i]`` of
    axis 0 flattened and cut into rows of ``group_size`` (the last zero-padded; a 0-d / 1-d ``w`` is one slice).
    """
    check_choice("granularity", granularity, GRANULARITIES)
    w = w.detach().to(torch.float32)
    if granularity == "tensor":
        return w.reshape(1, -1), lambda rows: rows.reshape(w.shape)
    if granularity == "channel":
        if w.ndim == 0:
            raise ValueError("per-channel quantization needs a tensor with at least one dim")
        axis = check_axis(axis, w.ndim)
        moved = w.movedim(axis, 0)
        return moved.reshape(moved.shape[0], -1), lambda rows: rows.reshape(moved.shape).movedim(0, axis)
    group_size = check_positive_int(group_size, "group_size")
    sliced = w.reshape(1, -1) if w.ndim <= 1 else w.reshape(w.shape[0], -1)
    length = sliced.shape[1]
    padded = torch.nn.functional.pad(sliced, (0, (-length) % group_size))
    return padded.reshape(-1, group_size), \
        lambda rows: rows.reshape(sliced.shape[0], -1)[:, :length].reshape(w.shape)


def from_rows(rows: torch.Tensor, restore: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``restore(rows)``: the inverse of ``scale_rows`` (kept for symmetry of reading)."""
    return restore(rows)


def mse_symmetric_scale(rows: torch.Tensor, bits: int, num_candidates: int = 100) -> torch.Tensor:
    """Per-row symmetric scale α·max|row| / (2^(b-1) - 1) with α ∈ {k / num_candidates} minimizing the
    row's fake-quant squared error. rows: float32 [R, L] → scales float32 [R, 1]. Ties go to the largest α.
    Vectorized over candidates and rows (candidates in chunks to bound memory)."""
    abs_max = rows.abs().amax(dim=1, keepdim=True)                            # [R, 1]
    alphas = torch.arange(num_candidates, 0, -1, dtype=torch.float32) / num_candidates
    chunk = max(1, 2 ** 24 // max(rows.numel(), 1))
    errors = []
    for part in alphas.split(chunk):
        scales = symmetric_qparams(part.reshape(-1, 1, 1) * abs_max, bits)  # [A, R, 1]
        errors.append((_symmetric_fake_quantize(rows, scales, bits) - rows).pow(2).sum(dim=2))   # [A, R]
    best = torch.cat(errors).argmin(dim=0)                                   # [R]
    return symmetric_qparams(alphas[best].reshape(-1, 1) * abs_max, bits)


def _two_level_scales(abs_max: torch.Tensor, bits: int, scale_bits: int) -> torch.Tensor:
    """k_g·S with S = max_g s_g / (2^scale_bits - 1), k_g = clamp(ceil(s_g / S), 1, 2^scale_bits - 1)."""
    group_scale = abs_max / (2 ** (bits - 1) - 1)                              # s_g, may be 0
    k_max = 2 ** scale_bits - 1
    top = float(group_scale.max())
    tensor_scale = top / k_max if top > 0 else 1.0
    k = torch.clamp(torch.ceil(group_scale / tensor_scale), 1, k_max)
    return k * torch.tensor(tensor_scale, dtype=torch.float32)


def _mx_scales(abs_max: torch.Tensor, bits: int) -> torch.Tensor:
    """2^e with e = floor(log2 max|block|) - (bits - 2), clamped to E8M0's [-127, 127]; 0 for zero blocks."""
    exponent = torch.floor(torch.log2(abs_max)) - (bits - 2)
    exponent = torch.where(abs_max > 0, exponent, torch.zeros_like(exponent)).clamp(-127, 127)
    return torch.exp2(exponent)


def row_scales(rows: torch.Tensor, bits: int, clip: str = "minmax", scale_format: str = "fp32",
               scale_bits: int = 4) -> torch.Tensor:
    """One symmetric restricted scale per row of ``rows`` [R, L] → float32 [R, 1].

    clip: ``"minmax"`` (max|row| / (2^(b-1) - 1)) or ``"mse"`` (``mse_symmetric_scale``). scale_format:
    ``"fp32"``, ``"two_level"`` (``scale_bits``-bit integer per row times one fp32 scale; min-max only) or
    ``"mx"`` (a power of two per row, OCP MX; min-max only).
    """
    check_choice("clip", clip, CLIPS)
    check_choice("scale_format", scale_format, SCALE_FORMATS)
    if clip == "mse":
        if scale_format != "fp32":
            raise ValueError(f"clip='mse' is only defined for scale_format='fp32', got {scale_format!r}")
        return mse_symmetric_scale(rows, bits)
    abs_max = rows.abs().amax(dim=1, keepdim=True)
    if scale_format == "two_level":
        return _two_level_scales(abs_max, bits, scale_bits)
    if scale_format == "mx":
        return _mx_scales(abs_max, bits)
    return symmetric_qparams(abs_max, bits)


def fake_quantize_weight(weight: torch.Tensor, bits: int, granularity: str = "channel", group_size: int = 32,
                         clip: str = "minmax", axis: int = 0, scale_format: str = "fp32",
                         scale_bits: int = 4) -> torch.Tensor:
    """Symmetric restricted fake-quant of one tensor in any layout → float32 of the same shape.

    granularity: "tensor" (one scale), "channel" (one per index of ``axis``) or "group" (``group_size``
    consecutive elements of each flattened output row, as ``fake_quantize_per_group``); clip and
    scale_format: as ``row_scales``. ``weight`` is not modified.
    """
    check_choice("granularity", granularity, GRANULARITIES)
    check_choice("clip", clip, CLIPS)
    bits = check_bits(bits, low=2)
    rows, restore = scale_rows(weight, granularity, group_size, axis)
    scale = row_scales(rows, bits, clip, scale_format, scale_bits)
    return restore(_symmetric_fake_quantize(rows, scale, bits))


def bits_per_element(bits: int, granularity: str = "channel", group_size: int = 32, scale_format: str = "fp32",
                     scale_bits: int = 4) -> float:
    """Nominal storage per element of ``fake_quantize_weight``'s layout, scales included; per tensor and per
    channel count only ``bits`` (their scales are negligible)."""
    if granularity != "group":
        return float(bits)
    return bits + {"fp32": 32, "two_level": scale_bits, "mx": 8}[scale_format] / group_size


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
    axis = check_axis(axis, w.ndim)
    other_dims = [d for d in range(w.ndim) if d != axis]
    abs_max = w.detach().abs().to(torch.float32).amax(dim=other_dims, keepdim=True) if other_dims \
        else w.detach().abs().to(torch.float32)
    return symmetric_qparams(abs_max, bits)


def fake_quantize_per_channel(w: torch.Tensor, bits: int, axis: int = 0) -> torch.Tensor:
    """Fake-quantize ``w`` with one symmetric scale per slice along ``axis``; float32, ``w``'s shape."""
    return _symmetric_fake_quantize(w, per_channel_qparams(w, bits, axis), bits)


# ---------------------------------------------------------------------------------------------- groups
def _grouped(w: torch.Tensor, bits: int, group_size: int, scale_format: str, scale_bits: int = 4) -> torch.Tensor:
    rows, restore = scale_rows(w, "group", group_size)
    return restore(_symmetric_fake_quantize(rows, row_scales(rows, bits, "minmax", scale_format, scale_bits), bits))


def fake_quantize_per_group(w: torch.Tensor, bits: int, group_size: int) -> tuple[torch.Tensor, float]:
    """Symmetric restricted fake-quant with one fp32 scale per group of ``group_size`` consecutive elements.

    Each row ``w[i]`` (i along axis 0) is flattened and cut into groups along it; a last group shorter than
    ``group_size`` is zero-padded internally (padding never changes a group's max|w|). A 1-d ``w`` is one row.

    Returns:
        (w_hat float32 of w's shape, bits_per_element = bits + 32 / group_size).
    """
    w = _check_weight(w)
    bits = check_bits(bits, low=2)
    group_size = check_positive_int(group_size, "group_size")
    return _grouped(w, bits, group_size, "fp32"), bits_per_element(bits, "group", group_size)


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
    bits = check_bits(bits, low=2)
    scale_bits = check_bits(scale_bits, low=1, high=16, name="scale_bits")
    group_size = check_positive_int(group_size, "group_size")
    return (_grouped(w, bits, group_size, "two_level", scale_bits),
            bits_per_element(bits, "group", group_size, "two_level", scale_bits))


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
    bits = check_bits(bits, low=2)
    block = check_positive_int(block, "block")
    return _grouped(w, bits, block, "mx"), bits_per_element(bits, "group", block, "mx")
