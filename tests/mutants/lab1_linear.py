"""Realistic wrong answers for Lab 1, each with the hidden check that must catch it.

A mutant is a textual edit of the solution cell (``old`` → ``new``, applied once to the cell's source); the
grader must take the cell's points away and name ``check`` in the feedback.
"""
from __future__ import annotations

from typing import NamedTuple


class Mutant(NamedTuple):
    function: str  # the solution cell's grade_id
    mistake: str
    old: str
    new: str
    check: str  # name of the hidden check that must fail


MUTANTS = [
    # quantized_range
    Mutant("quantized_range", "signed max off by one", "2 ** (bits - 1) - 1", "2 ** (bits - 1)", "signed range for 1 to 32 bits"),
    Mutant("quantized_range", "unsigned max off by one", "return 0, 2**bits - 1", "return 0, 2**bits", "unsigned range for 1 to 32 bits"),
    Mutant("quantized_range", "symmetric signed minimum", "return -(2 ** (bits - 1)),", "return -(2 ** (bits - 1)) + 1,", "signed range for 1 to 32 bits"),
    Mutant("quantized_range", "float powers", "return 0, 2**bits - 1", "return 0.0, 2.0**bits - 1", "returns Python ints"),
    Mutant("quantized_range", "no validation of bits", "not 1 <= bits <= 32", "False", "rejects bits out of range"),
    Mutant("quantized_range", "signed/unsigned swapped", "if signed:", "if not signed:", "signed range for 1 to 32 bits"),
    # linear_quantize
    Mutant("linear_quantize", "floor instead of round", "torch.round(r.float() / scale)", "torch.floor(r.float() / scale)", "basic signed 8-bit values"),
    Mutant("linear_quantize", "round half away from zero", "torch.round(r.float() / scale)",
           "torch.sign(r.float() / scale) * torch.floor((r.float() / scale).abs() + 0.5)", "rounds half to even"),
    Mutant("linear_quantize", "zero point added before rounding", "torch.round(r.float() / scale) + zero_point",
           "torch.round(r.float() / scale + zero_point)", "adds the zero point after rounding"),
    Mutant("linear_quantize", "missing clamp", "q = q.clamp(q_min, q_max)", "q = q", "clamps to the quantized range"),
    Mutant("linear_quantize", "off-by-one quantized range", "q = q.clamp(q_min, q_max)", "q = q.clamp(q_min, q_max + 1)", "clamps to the quantized range"),
    Mutant("linear_quantize", "multiplies by the scale", "r.float() / scale", "r.float() * scale", "basic signed 8-bit values"),
    Mutant("linear_quantize", "always int8", "torch.int8 if signed else torch.uint8", "torch.int8", "output dtype is int8 (signed) or uint8 (unsigned)"),
    Mutant("linear_quantize", "computes in the input dtype", "torch.round(r.float() / scale)", "torch.round(r / scale).float()", "float16 and bfloat16 inputs"),
    # linear_dequantize
    Mutant("linear_dequantize", "forgets the zero point", "(q.to(torch.int32) - zero_point)", "q.to(torch.int32)", "subtracts the zero point"),
    Mutant("linear_dequantize", "adds the zero point", "(q.to(torch.int32) - zero_point)", "(q.to(torch.int32) + zero_point)", "subtracts the zero point"),
    Mutant("linear_dequantize", "uint8 wrap-around", "(q.to(torch.int32) - zero_point).to(torch.float32)", "(q - zero_point).to(torch.float32)",
           "uint8 minus zero point does not wrap around"),
    Mutant("linear_dequantize", "divides by the scale", ".to(torch.float32) * scale", ".to(torch.float32) / scale", "basic signed values"),
    Mutant("linear_dequantize", "returns float64", ".to(torch.float32) * scale", ".to(torch.float64) * scale", "output is float32 with the input's shape"),
    Mutant("linear_dequantize", "int16 accumulator overflow", "q.to(torch.int32)", "q.to(torch.int16)", "int32 inputs (accumulators)"),
    # affine_qparams
    Mutant("affine_qparams", "range not widened to contain zero", "r_min, r_max = min(r_min, 0.0), max(r_max, 0.0)", "pass",
           "the range is widened to contain zero"),
    Mutant("affine_qparams", "zero point truncated instead of rounded", "zero_point = round(q_min - r_min / scale)", "zero_point = q_min - r_min / scale",
           "scale and zero point of a range around zero"),
    Mutant("affine_qparams", "divides by 2^b levels", "scale = (r_max - r_min) / (q_max - q_min)", "scale = (r_max - r_min) / (q_max - q_min + 1)",
           "scale and zero point of a range around zero"),
    Mutant("affine_qparams", "zero scale for a constant range", "        scale = 1.0\n", "        scale = 0.0 * scale\n",
           "constant-zero range gives a positive, finite scale"),
    Mutant("affine_qparams", "sign error in the zero point", "round(q_min - r_min / scale)", "round(q_min + r_min / scale)",
           "scale and zero point of a range around zero"),
    Mutant("affine_qparams", "zero point from q_max", "round(q_min - r_min / scale)", "round(q_max - r_max / scale) - 1",
           "scale and zero point of a range around zero"),
    # symmetric_qparams
    Mutant("symmetric_qparams", "restricted and full swapped", "levels = q_max if restricted else q_max + 1", "levels = q_max + 1 if restricted else q_max",
           "restricted range divides by 2^(b-1) - 1"),
    Mutant("symmetric_qparams", "divides by 2^b - 1", "levels = q_max if restricted else q_max + 1", "levels = 2 * q_max + 1",
           "restricted range divides by 2^(b-1) - 1"),
    Mutant("symmetric_qparams", "zero scale for zero abs_max", "return abs_max / levels if abs_max > 0 else 1.0", "return abs_max / levels",
           "zero abs_max gives scale 1.0, never 0"),
    Mutant("symmetric_qparams", "ignores restricted", "levels = q_max if restricted else q_max + 1", "levels = q_max",
           "full range divides by 2^(b-1)"),
    Mutant("symmetric_qparams", "returns a tensor", "return abs_max / levels if abs_max > 0 else 1.0",
           "return torch.tensor(abs_max / levels if abs_max > 0 else 1.0)", "returns a Python float"),
    # per_channel_qparams
    Mutant("per_channel_qparams", "reduces over the channel axis", "other_axes = [d for d in range(w.ndim) if d != axis]", "other_axes = [axis]",
           "one scale per output channel of a conv weight"),
    Mutant("per_channel_qparams", "no keepdim", ".amax(dim=other_axes, keepdim=True)", ".amax(dim=other_axes)", "the scale broadcasts against w"),
    Mutant("per_channel_qparams", "max instead of absolute max", "w.detach().float().abs().amax(dim=other_axes, keepdim=True)",
           "w.detach().float().amax(dim=other_axes, keepdim=True)", "uses the absolute maximum"),
    Mutant("per_channel_qparams", "full range (divides by 2^(b-1))", "scale = abs_max / q_max", "scale = abs_max / (q_max + 1)",
           "restricted range for 2 to 8 bits"),
    Mutant("per_channel_qparams", "zero scale for an all-zero channel", "torch.where(abs_max > 0, scale, torch.ones_like(scale))", "scale",
           "an all-zero channel gets scale 1.0"),
    Mutant("per_channel_qparams", "ignores the axis argument", "axis = axis % w.ndim", "axis = 0", "other axes, including negative ones"),
    # fake_quantize_per_group
    Mutant("fake_quantize_per_group", "groups across rows", "rows = w.detach().float().reshape(w.shape[0] if w.ndim > 1 else 1, -1)", "rows = w.detach().float().reshape(1, -1)",
           "groups stay inside a row"),
    Mutant("fake_quantize_per_group", "tail padded with a large value", "torch.nn.functional.pad(rows, (0, num_groups * group_size - row_length))",
           "torch.nn.functional.pad(rows, (0, num_groups * group_size - row_length), value=1.0)", "a shorter tail group"),
    Mutant("fake_quantize_per_group", "scales not counted", "return w_hat, bits + 32 / group_size",
           "return w_hat, bits", "bits per element counts the fp32 scales"),
    Mutant("fake_quantize_per_group", "full range (divides by 2^(b-1))", "abs_max / q_max, torch.ones_like", "abs_max / (q_max + 1), torch.ones_like",
           "restricted symmetric rounding for 2 to 8 bits"),
    Mutant("fake_quantize_per_group", "NaN for an all-zero group", "torch.where(abs_max > 0, abs_max / q_max, torch.ones_like(abs_max))",
           "abs_max / q_max", "an all-zero group gives zeros, not NaN"),
    Mutant("fake_quantize_per_group", "floor instead of round", "q = torch.round(groups / scale)", "q = torch.floor(groups / scale)",
           "groups that divide the row evenly"),
    # ema_minmax
    Mutant("ema_minmax", "initialized at zero", "lo, hi = batch_min, batch_max", "lo, hi = momentum * batch_min, momentum * batch_max",
           "first batch initializes"),
    Mutant("ema_minmax", "momentum applied to the old value", "lo = (1 - momentum) * lo + momentum * batch_min", "lo = momentum * lo + (1 - momentum) * batch_min",
           "moving average of min and max"),
    Mutant("ema_minmax", "running min/max instead of a moving average", "lo = (1 - momentum) * lo + momentum * batch_min", "lo = min(lo, batch_min)",
           "moving average of min and max"),
    Mutant("ema_minmax", "mean instead of min", "batch.min().item(), batch.max().item()", "batch.mean().item(), batch.max().item()",
           "first batch initializes"),
    Mutant("ema_minmax", "returns tensors", "return float(lo), float(hi)", "return torch.tensor(lo), torch.tensor(hi)", "returns Python floats"),
    Mutant("ema_minmax", "no error on an empty stream", 'raise ValueError("ema_minmax needs at least one batch")', "return 0.0, 0.0",
           "rejects an empty stream"),
    # mse_clip_range
    Mutant("mse_clip_range", "candidate range not widened to contain zero",
           "lo = (alphas * x_min).clamp(max=0.0)\n    hi = (alphas * x_max).clamp(min=0.0)", "lo = alphas * x_min\n    hi = alphas * x_max",
           "all-positive and all-negative inputs"),
    Mutant("mse_clip_range", "largest error instead of smallest", "best = int(torch.argmin(errors))", "best = int(torch.argmax(errors))",
           "clips outliers at low bit widths"),
    Mutant("mse_clip_range", "candidate grid off by one", "torch.arange(num_candidates, 0, -1, dtype=torch.float32).unsqueeze(1) / num_candidates",
           "torch.arange(num_candidates, 0, -1, dtype=torch.float32).unsqueeze(1) / (num_candidates + 1)", "honours num_candidates"),
    Mutant("mse_clip_range", "signed levels (2^(b-1) - 1)", "q_max = 2**bits - 1", "q_max = 2 ** (bits - 1) - 1", "clips outliers at low bit widths"),
    Mutant("mse_clip_range", "error measured without clipping", "torch.clamp(torch.round(x / scale) + zero_point, 0, q_max)",
           "(torch.round(x / scale) + zero_point)", "clips outliers at low bit widths"),
    Mutant("mse_clip_range", "ignores num_candidates", "torch.arange(num_candidates, 0, -1, dtype=torch.float32).unsqueeze(1) / num_candidates",
           "torch.arange(100, 0, -1, dtype=torch.float32).unsqueeze(1) / 100", "honours num_candidates"),
    # kl_clip_threshold
    Mutant("kl_clip_threshold", "outliers dropped instead of clipped", "p[-1] += counts[i:].sum()", "pass", "clipped mass goes into the last kept bin"),
    Mutant("kl_clip_threshold", "Q spread over zero bins too",
           "q = torch.where(nonzero, totals[level] / support[level].clamp(min=1), torch.zeros_like(p))",
           "q = totals[level] / torch.bincount(level, minlength=levels).double()[level]", "Q spreads each level over P's non-zero bins only"),
    Mutant("kl_clip_threshold", "2^b levels", "levels = 2 ** (bits - 1)", "levels = 2**bits", "uses 2^(b-1) levels"),
    Mutant("kl_clip_threshold", "lower edge of the bin", "return float(bin_edges[best_i])", "return float(bin_edges[best_i - 1])",
           "clips a Gaussian with outliers (TensorRT entropy calibration)"),
    Mutant("kl_clip_threshold", "KL(Q || P) instead of KL(P || Q)", "kl = float((p * torch.log(p / q)).sum())", "kl = float((q * torch.log(q / p)).sum())",
           "minimizes KL(P || Q), the reference distribution first"),
    Mutant("kl_clip_threshold", "never clips", "return float(bin_edges[best_i])", "return float(bin_edges[-1])",
           "clips a Gaussian with outliers (TensorRT entropy calibration)"),
    # quantized_matmul
    Mutant("quantized_matmul", "forgets the Z_B row-sum term", "acc = a @ b - z_b * a.sum(dim=1, keepdim=True)", "acc = a @ b",
           "subtracts both zero points"),
    Mutant("quantized_matmul", "wrong sign of K Z_A Z_B", "+ k * z_a * z_b", "- k * z_a * z_b", "subtracts both zero points"),
    Mutant("quantized_matmul", "float32 arithmetic", "a, b = q_a.to(torch.float64), q_b.to(torch.float64)", "a, b = q_a.float(), q_b.float()",
           "exact for long rows with extreme values"),
    Mutant("quantized_matmul", "zero points swapped", "- z_b * a.sum(dim=1, keepdim=True) - z_a * b.sum(dim=0, keepdim=True)",
           "- z_a * a.sum(dim=1, keepdim=True) - z_b * b.sum(dim=0, keepdim=True)", "subtracts both zero points"),
    Mutant("quantized_matmul", "returns int64", "return acc.to(torch.int32)", "return acc", "returns int32"),
    Mutant("quantized_matmul", "int8 products overflow", "a, b = q_a.to(torch.float64), q_b.to(torch.float64)", "a, b = q_a.to(torch.int8), q_b.to(torch.int8)",
           "no int8 overflow in products"),
    # quantized_linear
    Mutant("quantized_linear", "bias added after requantization", "acc = acc + q_bias.to(torch.int32)", "pass",
           "adds the int32 bias inside the accumulator"),
    Mutant("quantized_linear", "forgets the input zero point", "quantized_matmul(q_x, x_zero_point, q_w.t(), 0)", "quantized_matmul(q_x, 0, q_w.t(), 0)",
           "matches the integer reference with bias"),
    Mutant("quantized_linear", "per-tensor weight scale", "multiplier = x_scale * w_scale.to(torch.float64) / y_scale",
           "multiplier = x_scale * w_scale.to(torch.float64).mean() / y_scale", "per-channel weight scales"),
    Mutant("quantized_linear", "no clamp (uint8 wraps)", "return q_y.clamp(q_min, q_max).to(torch.uint8)", "return q_y.to(torch.int64).to(torch.uint8)",
           "uses the output zero point and clamps to the range"),
    Mutant("quantized_linear", "ignores the output zero point", "q_y = torch.round(acc.to(torch.float64) * multiplier) + y_zero_point",
           "q_y = torch.round(acc.to(torch.float64) * multiplier)", "matches the integer reference with bias"),
    Mutant("quantized_linear", "floor instead of round", "q_y = torch.round(acc.to(torch.float64) * multiplier)", "q_y = torch.floor(acc.to(torch.float64) * multiplier)",
           "matches the integer reference with bias"),
    Mutant("quantized_linear", "always 8-bit output range", "q_min, q_max = quantized_range(bits, signed=False)", "q_min, q_max = 0, 255",
           "4-bit output range"),
]
