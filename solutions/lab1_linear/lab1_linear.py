# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown] nbgrader={"grade": false, "grade_id": "title", "locked": true, "schema_version": 3, "solution": false, "task": false}
# # Lab 1 — Linear quantization: from one number to an integer-only network
#
# A trained network stores every weight as a 32-bit float. Most of those bits are noise. In this lab you
# replace them with small integers and a few scale factors, measure what that costs, and finally run the
# course CNN with **integer arithmetic only**.
#
# **You will be able to**
# 1. write the affine map $r = S(q - Z)$ and its inverse, for signed and unsigned, symmetric and affine ranges;
# 2. choose the granularity of the scale (per tensor, per channel, per group, two-level) and count the bits it costs;
# 3. calibrate activation ranges (min-max, EMA, percentile, MSE, KL) and explain clipping versus rounding error;
# 4. derive and implement integer-only matrix multiplication with zero points, int32 bias and requantization;
# 5. quantize a whole CNN (W8A8, W4A8) and read the accuracy table critically.
#
# **Prerequisites**: PyTorch tensors and `nn.Module`; matrix products; histograms. **Time**: 3–4 hours.
#
# | part | graded functions | points |
# |---|---|---|
# | 1. The affine map | `quantized_range`, `linear_quantize`, `linear_dequantize`, `affine_qparams`, `symmetric_qparams` | 30 |
# | 2. Granularity | `per_channel_qparams`, `fake_quantize_per_group` | 16 |
# | 3. Calibration and clipping | `ema_minmax`, `mse_clip_range`, `kl_clip_threshold` | 22 |
# | 4. Integer-only inference | `quantized_matmul`, `quantized_linear` | 18 |
# | 5. Wrap-up | three reflection questions (graded by hand) | 14 |
#
# **How this notebook works.** Write each function in its answer cell (replace the line
# `raise NotImplementedError()`), then run the test cell below it. Visible tests show what
# went in, what was expected and what came back. Hidden checks run at grading time on more cases (edge
# ranges, other dtypes and axes, ties); they only call the functions you write, so keep the names and
# argument orders. Grading runs the setup cell and your answer cells only — a function must not depend on
# a variable computed in an experiment cell. Before submitting run `autograder check lab1_linear.ipynb`.
# Every widget and experiment below uses **your** functions.

# %% nbgrader={"grade": false, "grade_id": "setup", "locked": true, "schema_version": 3, "solution": false, "task": false}
# %matplotlib widget
import math
import time

import matplotlib.pyplot as plt
import torch
from tqdm.auto import tqdm

import lowbit
from lowbit import viz
from lowbit.testing import assert_close, assert_dtype, assert_equal_int, assert_not_modified, assert_shape

torch.set_num_threads(1)  # the course tensors are small: one thread avoids thread-pool overhead
lowbit.seed_everything(0)
model = lowbit.models.pretrained("cnn")  # FashionCNN, fp32, eval mode
_, test_loader = lowbit.data.loaders(batch_size=500)
calib_images, _ = lowbit.data.calibration_batch(n=64 if lowbit.GRADING else 256, seed=0)
# While a grader runs this notebook, experiments shrink: fewer test images and bit widths (same code).
EVAL_BATCHES = 1 if lowbit.GRADING else None
BIT_WIDTHS = (4, 2) if lowbit.GRADING else (8, 4, 3, 2)
fp32_accuracy = lowbit.train.evaluate(model, test_loader, max_batches=EVAL_BATCHES)
print(f"FashionCNN: {sum(p.numel() for p in model.parameters()):,} parameters, "
      f"FP32 accuracy on the embedded test set: {100 * fp32_accuracy:.2f} %")

# %% [markdown] nbgrader={"grade": false, "grade_id": "part1_intro", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ## Part 1 — The affine map
#
# Linear (uniform) quantization represents a real number $r$ by a $b$-bit integer $q$, a real **scale**
# $S > 0$ and an integer **zero point** $Z$ (Jacob et al., 2018, *Quantization and Training of Neural
# Networks for Efficient Integer-Arithmetic-Only Inference*):
#
# $$ r \approx S\,(q - Z), \qquad q = \operatorname{clamp}\!\Big(\operatorname{round}\big(r / S\big) + Z,\; q_{\min},\; q_{\max}\Big). $$
#
# With $b$ bits the integers are either **signed**, $[-2^{b-1},\ 2^{b-1}-1]$ (int8: $[-128, 127]$), or
# **unsigned**, $[0,\ 2^b-1]$ (uint8: $[0, 255]$).
#
# *Rounding.* `torch.round` rounds exact halves to the nearest **even** integer ($0.5 \to 0$, $1.5 \to 2$,
# $2.5 \to 2$): this "banker's rounding" has no bias on average. Rounding half away from zero ($2.5 \to 3$)
# is what C's `round` does; the two differ only on exact ties, which are common when $r/S$ comes from
# integers. This course always uses half-to-even.
#
# *Why $Z$ is an integer.* Zero must be represented exactly: zero padding in a convolution and the zeros a
# ReLU produces would otherwise each carry an error. With $Z \in \mathbb{Z}$, $r = 0$ maps to $q = Z$ and back
# to exactly $0$.
#
# *Choosing $S$ and $Z$ from a range.* **Affine** (asymmetric) quantization maps $[r_{\min}, r_{\max}]$ —
# first widened to contain $0$ — onto $[q_{\min}, q_{\max}]$:
#
# $$ S = \frac{r_{\max} - r_{\min}}{q_{\max} - q_{\min}}, \qquad Z = \operatorname{clamp}\Big(\operatorname{round}\big(q_{\min} - r_{\min}/S\big),\ q_{\min},\ q_{\max}\Big). $$
#
# **Symmetric** quantization fixes $Z = 0$ and uses $S = \max|r| / q_{\max}$. With the **restricted** signed
# range $[-(2^{b-1}-1),\ 2^{b-1}-1]$ the grid is symmetric around zero (int8: $\pm 127$) — what weight
# quantization usually uses; the **full** range divides by $2^{b-1}$ instead and keeps $-128$ (Krishnamoorthi,
# 2018, *Quantizing deep convolutional networks for efficient inference: A whitepaper*; Nagel et al., 2021,
# *A White Paper on Neural Network Quantization*).
#
# A constant tensor (all weights equal, or all zeros) has $r_{\max} = r_{\min}$: the formula above gives
# $S = 0$, and $r/S$ is then NaN. Your functions must never return a zero or NaN scale — see the docstrings.

# %% nbgrader={"grade": false, "grade_id": "quantized_range", "locked": false, "schema_version": 3, "solution": true, "task": false}
def quantized_range(bits: int, signed: bool = True) -> tuple[int, int]:
    """The integer range of a `bits`-bit quantizer.

    Args:
        bits: number of bits, an int in 1..32.
        signed: True for two's complement [-2^(b-1), 2^(b-1)-1], False for [0, 2^b - 1].
    Returns:
        (q_min, q_max) as Python ints.
    Raises:
        ValueError if `bits` is not an int in 1..32 (say what was given).
    """
    ### BEGIN SOLUTION
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 32:
        raise ValueError(f"bits must be an int in 1..32, got {bits!r}")
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_quantized_range", "locked": true, "points": 4, "schema_version": 3, "solution": false, "task": false}
assert_equal_int(quantized_range(8), (-128, 127), "quantized_range(8)")
assert_equal_int(quantized_range(8, signed=False), (0, 255), "quantized_range(8, signed=False)")
assert_equal_int(quantized_range(4), (-8, 7), "quantized_range(4)")
assert_equal_int(quantized_range(1, signed=False), (0, 1), "quantized_range(1, signed=False)")
### BEGIN HIDDEN TESTS
from autograder.checks.lab1_linear import check_quantized_range
check_quantized_range(quantized_range)
### END HIDDEN TESTS

# %% nbgrader={"grade": false, "grade_id": "linear_quantize", "locked": false, "schema_version": 3, "solution": true, "task": false}
def linear_quantize(r: torch.Tensor, scale, zero_point, bits: int, signed: bool = True) -> torch.Tensor:
    """Quantize real values: q = clamp(round(r / scale) + zero_point, q_min, q_max).

    Args:
        r: floating tensor of any shape (float32, float16 or bfloat16); compute in float32.
        scale: positive float, or a float tensor broadcastable to `r` (e.g. per channel).
        zero_point: int, or an integer tensor broadcastable to `r`.
        bits: 1..8 for this lab; signed: which integer range to use (see `quantized_range`).
    Returns:
        Integer tensor with the shape of `r`: dtype torch.int8 if signed, torch.uint8 if unsigned
        (bits <= 8), torch.int32 for wider quantizers. Rounding is half-to-even (`torch.round`).
        The input is not modified.
    """
    ### BEGIN SOLUTION
    q_min, q_max = quantized_range(bits, signed)
    q = torch.round(r.float() / scale) + zero_point
    q = q.clamp(q_min, q_max)
    if bits > 8:
        return q.to(torch.int32)
    return q.to(torch.int8 if signed else torch.uint8)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_linear_quantize", "locked": true, "points": 8, "schema_version": 3, "solution": false, "task": false}
r = torch.tensor([-1.0, -0.25, 0.0, 0.3, 0.5, 2.0])
assert_equal_int(linear_quantize(r, 0.5, 0, 8), torch.tensor([-2, 0, 0, 1, 1, 4], dtype=torch.int8),
                 "linear_quantize(r, scale=0.5, zero_point=0, bits=8)", inputs={"r": r},
                 hint="-0.25/0.5 = -0.5 and 0.3/0.5 = 0.6: round half to even gives -0 and 1")
assert_equal_int(linear_quantize(r, 0.01, 0, 8), torch.tensor([-100, -25, 0, 30, 50, 127], dtype=torch.int8),
                 "linear_quantize(r, scale=0.01, zero_point=0, bits=8) — 2.0 must clamp to 127", inputs={"r": r})
assert_equal_int(linear_quantize(r, 0.25, 4, 3, signed=False), torch.tensor([0, 3, 4, 5, 6, 7], dtype=torch.uint8),
                 "linear_quantize(r, scale=0.25, zero_point=4, bits=3, signed=False)", inputs={"r": r},
                 hint="r / 0.25 + 4 = [0, 3, 4, 5.2, 6, 12]: round, then clamp to [0, 7]")
ties = torch.tensor([-0.125, 0.125, 0.375])
assert_equal_int(linear_quantize(ties, 0.25, 3, 3, signed=False), torch.tensor([3, 3, 5], dtype=torch.uint8),
                 "linear_quantize(ties, scale=0.25, zero_point=3, bits=3, signed=False)", inputs={"ties": ties},
                 hint="add the zero point after rounding: round(-0.5, 0.5, 1.5) = (0, 0, 2), plus 3; adding 3 first "
                      "would round the ties 2.5, 3.5, 4.5 instead")
assert_dtype(linear_quantize(r, 0.1, 0, 4), torch.int8, "linear_quantize(..., bits=4) output")
assert_dtype(linear_quantize(r, 0.1, 0, 4, signed=False), torch.uint8, "linear_quantize(..., bits=4, signed=False) output")
assert_not_modified(linear_quantize, r, 0.1, 0, 8)
### BEGIN HIDDEN TESTS
from autograder.checks.lab1_linear import check_linear_quantize
check_linear_quantize(linear_quantize)
### END HIDDEN TESTS

# %% nbgrader={"grade": false, "grade_id": "linear_dequantize", "locked": false, "schema_version": 3, "solution": true, "task": false}
def linear_dequantize(q: torch.Tensor, scale, zero_point) -> torch.Tensor:
    """Map integers back to reals: r_hat = scale * (q - zero_point).

    Args:
        q: integer tensor (int8, uint8, int32, ...) of any shape.
        scale, zero_point: as in `linear_quantize` (numbers or broadcastable tensors).
    Returns:
        float32 tensor with the shape of `q`. Subtract in a wide type: uint8 - int must not wrap around.
    """
    ### BEGIN SOLUTION
    return (q.to(torch.int32) - zero_point).to(torch.float32) * scale
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_linear_dequantize", "locked": true, "points": 4, "schema_version": 3, "solution": false, "task": false}
q = torch.tensor([0, 3, 4, 5, 255], dtype=torch.uint8)
assert_close(linear_dequantize(q, 0.25, 4), torch.tensor([-1.0, -0.25, 0.0, 0.25, 62.75]),
             "linear_dequantize(q, scale=0.25, zero_point=4)", atol=1e-6, inputs={"q": q},
             hint="convert q to a wider type before subtracting the zero point (uint8 wraps around)")
assert_dtype(linear_dequantize(q, 0.25, 4), torch.float32, "linear_dequantize output")
### BEGIN HIDDEN TESTS
from autograder.checks.lab1_linear import check_linear_dequantize
check_linear_dequantize(linear_dequantize)
### END HIDDEN TESTS

# %% nbgrader={"grade": false, "grade_id": "affine_qparams", "locked": false, "schema_version": 3, "solution": true, "task": false}
def affine_qparams(r_min: float, r_max: float, bits: int, signed: bool = True) -> tuple[float, int]:
    """Scale and zero point that map [r_min, r_max] (widened to contain 0) onto the b-bit range.

    S = (r_max - r_min) / (q_max - q_min);  Z = clamp(round(q_min - r_min / S), q_min, q_max).
    If the widened range is empty (r_min == r_max == 0), use S = 1.0 so that S is never 0 or NaN.

    Args:
        r_min, r_max: floats with r_min <= r_max (ValueError otherwise).
    Returns:
        (scale, zero_point) as a Python float and a Python int.
    """
    ### BEGIN SOLUTION
    r_min, r_max = float(r_min), float(r_max)
    if not r_min <= r_max:
        raise ValueError(f"need r_min <= r_max, got r_min={r_min}, r_max={r_max}")
    q_min, q_max = quantized_range(bits, signed)
    r_min, r_max = min(r_min, 0.0), max(r_max, 0.0)
    scale = (r_max - r_min) / (q_max - q_min)
    if scale == 0.0:
        scale = 1.0
    zero_point = round(q_min - r_min / scale)
    return scale, int(min(max(zero_point, q_min), q_max))
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_affine_qparams", "locked": true, "points": 8, "schema_version": 3, "solution": false, "task": false}
scale, zero_point = affine_qparams(-1.0, 2.0, 8, signed=False)
assert_close(scale, 3.0 / 255, "scale of affine_qparams(-1, 2, bits=8, signed=False)", rtol=1e-6)
assert_equal_int(zero_point, 85, "zero point of affine_qparams(-1, 2, bits=8, signed=False)",
                 hint="Z = round(q_min - r_min / S) = round(0 + 1 / (3/255)) = 85")
scale, zero_point = affine_qparams(-0.6, 1.0, 4, signed=False)
assert_equal_int(zero_point, 6, "zero point of affine_qparams(-0.6, 1, bits=4, signed=False)",
                 hint="Z = round(0 + 0.6 / (1.6/15)) = round(5.625) = 6: round, do not truncate")
scale, zero_point = affine_qparams(0.5, 2.0, 8, signed=True)
assert_close(scale, 2.0 / 255, "scale of affine_qparams(0.5, 2, bits=8) — the range must be widened to contain 0", rtol=1e-6)
assert_equal_int(zero_point, -128, "zero point of affine_qparams(0.5, 2, bits=8)")
scale, zero_point = affine_qparams(0.0, 0.0, 8)
assert scale > 0 and math.isfinite(scale), f"a constant-zero range must give a positive finite scale, got {scale}"
### BEGIN HIDDEN TESTS
from autograder.checks.lab1_linear import check_affine_qparams
check_affine_qparams(affine_qparams)
### END HIDDEN TESTS

# %% nbgrader={"grade": false, "grade_id": "symmetric_qparams", "locked": false, "schema_version": 3, "solution": true, "task": false}
def symmetric_qparams(abs_max: float, bits: int, restricted: bool = True) -> float:
    """Scale of a symmetric signed quantizer (zero point 0) covering [-abs_max, abs_max].

    restricted=True:  S = abs_max / (2^(b-1) - 1)   (grid symmetric around 0, e.g. ±127)
    restricted=False: S = abs_max / 2^(b-1)          (full range, keeps -2^(b-1))
    abs_max must be >= 0 (ValueError otherwise); abs_max == 0 gives S = 1.0 (never 0).
    For bits=1 the restricted range is empty: raise ValueError. Returns a Python float.
    """
    ### BEGIN SOLUTION
    abs_max = float(abs_max)
    if not abs_max >= 0:
        raise ValueError(f"abs_max must be >= 0, got {abs_max}")
    _, q_max = quantized_range(bits, signed=True)
    levels = q_max if restricted else q_max + 1
    if levels == 0:
        raise ValueError("a restricted symmetric range needs at least 2 bits")
    return abs_max / levels if abs_max > 0 else 1.0
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_symmetric_qparams", "locked": true, "points": 6, "schema_version": 3, "solution": false, "task": false}
assert_close(symmetric_qparams(1.27, 8), 0.01, "symmetric_qparams(1.27, bits=8, restricted=True)", rtol=1e-6)
assert_close(symmetric_qparams(1.28, 8, restricted=False), 0.01, "symmetric_qparams(1.28, bits=8, restricted=False)", rtol=1e-6)
assert_close(symmetric_qparams(0.7, 4), 0.1, "symmetric_qparams(0.7, bits=4)", rtol=1e-6)
assert symmetric_qparams(0.0, 8) > 0, "symmetric_qparams(0.0, 8) must not return a zero scale"
### BEGIN HIDDEN TESTS
from autograder.checks.lab1_linear import check_symmetric_qparams
check_symmetric_qparams(symmetric_qparams)
### END HIDDEN TESTS

# %% [markdown] nbgrader={"grade": false, "grade_id": "part1_explore", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Explore: the grid on a real weight tensor
# The histogram shows the weights of `conv2`; vertical lines are the values $S(q - Z)$ your functions can
# represent. Lower the bits and watch the error (MSE and the signal-to-quantization-noise ratio
# $\mathrm{SQNR} = 10\log_{10}\big(\sum r^2 / \sum (r - \hat r)^2\big)$ dB) change; compare symmetric and
# affine at 3 bits — which one wastes a level?

# %% nbgrader={"grade": false, "grade_id": "part1_widget", "locked": true, "schema_version": 3, "solution": false, "task": false}
viz.linear.quantization_explorer(model.conv2.weight.detach(), quantize_fn=linear_quantize,
                                 dequantize_fn=linear_dequantize, qparams_fn=affine_qparams,
                                 symmetric_fn=symmetric_qparams)

# %% [markdown] nbgrader={"grade": false, "grade_id": "part1_experiment_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Experiment: one scale for the whole network's weights
# Quantize every weight tensor of the CNN with **one symmetric scale per tensor**, using your functions, and
# measure accuracy. Each bit you remove halves the number of levels, so SQNR drops by about 6 dB per bit.

# %% nbgrader={"grade": false, "grade_id": "part1_experiment", "locked": true, "schema_version": 3, "solution": false, "task": false}
def fake_quantize_symmetric_per_tensor(w: torch.Tensor, bits: int) -> torch.Tensor:
    scale = symmetric_qparams(w.abs().max().item(), bits)
    return linear_dequantize(linear_quantize(w, scale, 0, bits), scale, 0)


# Weights are quantized as deployed: after folding each BatchNorm into its convolution (Part 4 explains it).
folded_model = lowbit.models.fold_batchnorm(model)
per_tensor_rows = []
for bits in BIT_WIDTHS:
    quantized = lowbit.quant.ptq.weight_only(model, lambda w: fake_quantize_symmetric_per_tensor(w, bits))
    sqnr = lowbit.quant.linear.sqnr_db(folded_model.conv2.weight, quantized.conv2.weight)
    accuracy = lowbit.train.evaluate(quantized, test_loader, max_batches=EVAL_BATCHES)
    per_tensor_rows.append((bits, sqnr, accuracy))
    print(f"W{bits} per-tensor: conv2 SQNR {sqnr:5.1f} dB, accuracy {100 * accuracy:5.2f} %")

# %% [markdown] nbgrader={"grade": false, "grade_id": "part2_intro", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ## Part 2 — Granularity: how many scales?
#
# One scale per tensor is cheap, but a single large channel then sets the step for every channel. The box
# plot below shows each output channel's weight range $\max_i |W_{c,i}|$ in the course CNN, and under each
# layer how far its largest channel range is from its smallest (Krishnamoorthi, 2018; Nagel et al., 2019,
# *Data-Free Quantization Through Weight Equalization and Bias Correction*).
#
# *Blue: the weights as trained.* Within a layer the ranges differ by only 1.6–2.5×: BatchNorm after each
# conv rescales every channel anyway, so training had no reason to spread them.
#
# *Orange: with BatchNorm folded in*, the weights a deployed network actually quantizes (Part 4 folds the
# same way). Folding replaces conv + BN by one conv with $W'_c = \frac{\gamma_c}{\sqrt{\sigma_c^2 +
# \varepsilon}}\, W_c$: each output channel is multiplied by its own BN factor, and those factors differ from
# channel to channel (in `bn1` by 10.7×, from 0.57 to 6.2), so the spreads multiply. conv1 goes from 2.5× to
# **11.8×**, conv2 and conv3 to about 3.4×; `fc` has no BatchNorm and stays at 1.6×. With one scale for
# conv1 at 4 bits (7 steps on each side of zero), its smallest channel reaches only 7 / 11.8 ≈ 0.6 of one
# step: every weight in it rounds to 0 or ±1.
#
# - **Per channel**: one symmetric scale per output channel $c$, $S_c = \max_i |W_{c,i}| / q_{\max}$. The
#   integer matmul stays cheap because each output row is rescaled by its own $S_c$ once (Part 4).
# - **Per group** (per vector): one fp32 scale per group of $g$ consecutive weights in a row. Scales cost
#   $32/g$ extra bits per element: 4-bit weights in groups of 32 cost $4 + 32/32 = 5$ bits.
# - **Two-level** scales (Dai et al., 2021, *VS-Quant: Per-vector Scaled Quantization for Accurate
#   Low-Precision Neural Network Inference*): a small *integer* scale per group times one fp32 scale per tensor,
#   $r = \gamma\, s_g\, q$. With 4-bit values and a 4-bit scale per 16 elements the cost is
#   $4 + 4/16 = 4.25$ bits per element. The OCP **MX** formats (Rouhani et al., 2023, *Microscaling Data
#   Formats for Deep Learning*) share one power-of-two scale (8-bit exponent) per block of 32.

# %% nbgrader={"grade": false, "grade_id": "part2_boxplot", "locked": true, "schema_version": 3, "solution": false, "task": false}
viz.linear.channel_range_boxplot({"as trained": model, "BatchNorm folded": lowbit.models.fold_batchnorm(model)})

# %% nbgrader={"grade": false, "grade_id": "per_channel_qparams", "locked": false, "schema_version": 3, "solution": true, "task": false}
def per_channel_qparams(w: torch.Tensor, bits: int, axis: int = 0) -> torch.Tensor:
    """Symmetric, restricted-range scales, one per slice of `w` along `axis`.

    S_c = max |w[c]| / (2^(b-1) - 1), where w[c] is the slice at index c along `axis` (all other axes
    reduced). A slice that is all zeros gets S_c = 1.0. No Python loop over channels.

    Args:
        w: floating tensor, e.g. a conv weight [C_out, C_in, kH, kW]; axis may be negative.
    Returns:
        float32 tensor with w.ndim dimensions, size w.shape[axis] along `axis` and 1 elsewhere, so that
        `w / scale` broadcasts (e.g. [C_out, 1, 1, 1] for axis=0).
    """
    ### BEGIN SOLUTION
    axis = axis % w.ndim
    other_axes = [d for d in range(w.ndim) if d != axis]
    abs_max = w.detach().float().abs().amax(dim=other_axes, keepdim=True) if other_axes else w.detach().float().abs()
    _, q_max = quantized_range(bits, signed=True)
    scale = abs_max / q_max
    return torch.where(abs_max > 0, scale, torch.ones_like(scale))
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_per_channel_qparams", "locked": true, "points": 8, "schema_version": 3, "solution": false, "task": false}
w = torch.tensor([[0.5, -1.27], [0.02, 0.01], [0.0, 0.0]])
assert_close(per_channel_qparams(w, 8), torch.tensor([[0.01], [0.02 / 127], [1.0]]),
             "per_channel_qparams(w, bits=8, axis=0)", rtol=1e-6, inputs={"w": w},
             hint="one scale per row: max |w| over the other axes / 127; an all-zero row gets 1.0")
assert_shape(per_channel_qparams(torch.randn(4, 3, 2, 2), 8), (4, 1, 1, 1), "per_channel_qparams of a [4,3,2,2] weight")
assert_shape(per_channel_qparams(torch.randn(4, 3), 4, axis=1), (1, 3), "per_channel_qparams(w [4,3], axis=1)")
assert_not_modified(per_channel_qparams, w, 8)
### BEGIN HIDDEN TESTS
from autograder.checks.lab1_linear import check_per_channel_qparams
check_per_channel_qparams(per_channel_qparams)
### END HIDDEN TESTS

# %% nbgrader={"grade": false, "grade_id": "fake_quantize_per_group", "locked": false, "schema_version": 3, "solution": true, "task": false}
def fake_quantize_per_group(w: torch.Tensor, bits: int, group_size: int) -> tuple[torch.Tensor, float]:
    """Fake-quantize `w` with one symmetric, restricted-range fp32 scale per group.

    Each row w[i] (w reshaped to [w.shape[0], -1]; a 1-d w is a single row) is cut into groups of
    `group_size` consecutive elements; the last group of a row may be shorter. Each group g gets S_g = max|w_g| / (2^(b-1) - 1)
    (1.0 for an all-zero group) and is quantized with round-half-to-even and clamping, then dequantized.
    Vectorize: pad each row to a multiple of group_size, reshape to [rows, groups, group_size] (padding
    must not change any scale), and cut the padding off again.

    Returns:
        (w_hat, bits_per_element): w_hat float32 with w's shape; bits_per_element = bits + 32 / group_size
        (each group also stores its fp32 scale; the nominal cost, as a short tail group is not counted apart).
    """
    ### BEGIN SOLUTION
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    rows = w.detach().float().reshape(w.shape[0] if w.ndim > 1 else 1, -1)
    row_length = rows.shape[1]
    num_groups = -(-row_length // group_size)
    padded = torch.nn.functional.pad(rows, (0, num_groups * group_size - row_length))
    groups = padded.reshape(rows.shape[0], num_groups, group_size)
    _, q_max = quantized_range(bits, signed=True)
    abs_max = groups.abs().amax(dim=-1, keepdim=True)
    scale = torch.where(abs_max > 0, abs_max / q_max, torch.ones_like(abs_max))
    q = torch.round(groups / scale).clamp(-q_max, q_max)
    w_hat = (q * scale).reshape(rows.shape[0], -1)[:, :row_length].reshape(w.shape)
    return w_hat, bits + 32 / group_size
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_fake_quantize_per_group", "locked": true, "points": 8, "schema_version": 3, "solution": false, "task": false}
w = torch.tensor([[1.0, -0.3, 0.012, 0.02, 0.03], [0.5, 0.0, 0.0, 0.0, 7.0]])
w_hat, bits_per_element = fake_quantize_per_group(w, 4, group_size=2)
expected = torch.tensor([[1.0, -2 / 7, 0.02 * 4 / 7, 0.02, 0.03], [0.5, 0.0, 0.0, 0.0, 7.0]])
assert_close(w_hat, expected, "w_hat of fake_quantize_per_group(w, bits=4, group_size=2)", atol=1e-6, inputs={"w": w},
             hint="groups stay inside a row: [1, -.3] [.012, .02] [.03] and [.5, 0] [0, 0] [7]; S_g = max|w_g| / 7; "
                  "each row's tail group has one element")
assert_close(bits_per_element, 4 + 32 / 2, "bits_per_element (one fp32 scale per 2 weights)", rtol=1e-9)
assert_shape(fake_quantize_per_group(torch.randn(8, 3, 3, 3), 4, 16)[0], (8, 3, 3, 3), "w_hat of a conv weight")
assert_not_modified(fake_quantize_per_group, w, 4, 2)
### BEGIN HIDDEN TESTS
from autograder.checks.lab1_linear import check_fake_quantize_per_group
check_fake_quantize_per_group(fake_quantize_per_group)
### END HIDDEN TESTS

# %% [markdown] nbgrader={"grade": false, "grade_id": "part2_experiment_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Experiment: granularity versus bits
# Weights only (activations stay fp32). Per-tensor and per-channel use your `symmetric_qparams` and
# `per_channel_qparams`; per-group uses your `fake_quantize_per_group` (g = 16); two-level uses `lowbit`'s
# reference (4-bit integer scales per 16). Watch where per-tensor collapses and how many bits per element
# each scheme really costs.

# %% nbgrader={"grade": false, "grade_id": "part2_experiment", "locked": true, "schema_version": 3, "solution": false, "task": false}
# name -> (w, bits) -> fake-quantized w, built from your functions (two-level: lowbit's reference)
granularities = lowbit.quant.ptq.weight_schemes(symmetric_qparams, per_channel_qparams, fake_quantize_per_group,
                                                linear_quantize, linear_dequantize)
granularity_results = {}
for name, quantize in tqdm(granularities.items(), desc="granularity"):
    for bits in BIT_WIDTHS:
        quantized = lowbit.quant.ptq.weight_only(model, lambda w: quantize(w, bits))
        sqnr = lowbit.quant.linear.sqnr_db(folded_model.conv2.weight, quantized.conv2.weight)
        granularity_results[name, bits] = (sqnr, lowbit.train.evaluate(quantized, test_loader, max_batches=EVAL_BATCHES))
print(f"{'scheme':30s}" + "".join(f"   W{b}: SQNR / acc  " for b in BIT_WIDTHS))
for name in granularities:
    print(f"{name:30s}" + "".join(f"  {granularity_results[name, b][0]:5.1f} dB {100 * granularity_results[name, b][1]:5.1f} %"
                                  for b in BIT_WIDTHS))

# %% [markdown] nbgrader={"grade": false, "grade_id": "part3_intro", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ## Part 3 — Calibration and clipping
#
# Weights are known after training; **activations** depend on the input, so their range must be estimated
# from data (*calibration*). Quantizing $x$ to the range $[\alpha, \beta]$ makes two errors: values inside
# are **rounded** (error up to $S/2$, with $S \propto \beta - \alpha$), values outside are **clipped**. A
# wider range means less clipping but coarser rounding; the best range is usually narrower than min-max.
#
# - **Min-max** over the calibration set: no clipping, but one outlier stretches the grid.
# - **EMA of min/max** over a stream of batches (Jacob et al., 2018), the rule used during training:
#   $\hat r^{(t)} = (1-m)\,\hat r^{(t-1)} + m\, r^{(t)}$, initialized with the first batch.
# - **Percentile**: clip at e.g. the 99.99th percentile (Wu et al., 2020, *Integer Quantization for Deep
#   Learning Inference: Principles and Empirical Evaluation*).
# - **MSE-optimal clipping**: search $\alpha \in (0, 1]$ and keep the range $\alpha\,[\min x, \max x]$ that
#   minimizes $\lVert x - \hat x \rVert^2$ (Banner et al., 2019, *Post-training 4-bit quantization of
#   convolutional networks for rapid-deployment*).
# - **KL divergence** (Migacz, 2017, *8-bit Inference with TensorRT*): choose the threshold $T$ on the
#   histogram of $|x|$ such that the quantized distribution $Q$ stays closest to the clipped reference
#   distribution $P$ in $D_{\mathrm{KL}}(P\,\|\,Q) = \sum_i P_i \log (P_i / Q_i)$.
#
# **Dynamic vs static.** *Dynamic* quantization measures each activation's range at run time, per batch: no
# calibration, but a min/max reduction over every activation tensor and float rescaling at inference.
# *Static* quantization fixes all activation scales after calibration, so inference is integer-only
# (Part 4) — and calibration quality decides accuracy.

# %% nbgrader={"grade": false, "grade_id": "ema_minmax", "locked": false, "schema_version": 3, "solution": true, "task": false}
def ema_minmax(batches, momentum: float = 0.01) -> tuple[float, float]:
    """Exponential moving average of per-batch min and max.

    The first batch initializes (lo, hi) = (min, max) of that batch; each later batch updates
    lo = (1 - momentum) * lo + momentum * batch.min(), and likewise hi with batch.max().

    Args:
        batches: an iterable of floating tensors (any shapes); it may be a generator (iterate once).
        momentum: in (0, 1].
    Returns:
        (lo, hi) as Python floats. Raises ValueError for an empty iterable or a momentum outside (0, 1].
    """
    ### BEGIN SOLUTION
    if not 0 < momentum <= 1:
        raise ValueError(f"momentum must be in (0, 1], got {momentum}")
    lo = hi = None
    for batch in batches:
        batch_min, batch_max = batch.min().item(), batch.max().item()
        if lo is None:
            lo, hi = batch_min, batch_max
        else:
            lo = (1 - momentum) * lo + momentum * batch_min
            hi = (1 - momentum) * hi + momentum * batch_max
    if lo is None:
        raise ValueError("ema_minmax needs at least one batch")
    return float(lo), float(hi)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_ema_minmax", "locked": true, "points": 6, "schema_version": 3, "solution": false, "task": false}
batches = [torch.tensor([-1.0, 2.0]), torch.tensor([-3.0, 4.0]), torch.tensor([0.0, 1.0])]
lo, hi = ema_minmax(batches, momentum=0.5)
assert_close((lo, hi), (-1.0, 2.0), "ema_minmax(batches, momentum=0.5)", atol=1e-6, inputs={"batches": batches},
             hint="first batch: (-1, 2); then (-2, 3); then (-1, 2)")
lo, hi = ema_minmax(iter(batches), momentum=0.1)
assert_close((lo, hi), (-1.08, 2.08), "ema_minmax(iter(batches), momentum=0.1)", atol=1e-6,
             hint="the first batch initializes: it is not averaged with zeros")
### BEGIN HIDDEN TESTS
from autograder.checks.lab1_linear import check_ema_minmax
check_ema_minmax(ema_minmax)
### END HIDDEN TESTS

# %% nbgrader={"grade": false, "grade_id": "mse_clip_range", "locked": false, "schema_version": 3, "solution": true, "task": false}
def mse_clip_range(x: torch.Tensor, bits: int, num_candidates: int = 100) -> tuple[float, float]:
    """The clipping range α·[x.min(), x.max()] that minimizes the mean squared fake-quantization error of `x`.

    Candidates: α_i = i / num_candidates for i = num_candidates, ..., 1 (largest first). For each candidate,
    widen [α min, α max] to contain 0 (lo = min(α min, 0), hi = max(α max, 0)) and fake-quantize x affinely
    and unsigned to `bits` bits over it: S = (hi - lo) / (2^b - 1) (S = 1 if hi == lo),
    Z = clamp(round(-lo / S), 0, 2^b - 1), x_hat = S (clamp(round(x / S) + Z, 0, 2^b - 1) - Z).
    Keep the candidate with the smallest mean((x - x_hat)^2); on ties the larger α (the first one).
    Evaluate all candidates at once in float32 (broadcast x against a column of candidates; no Python loop).

    Args:
        x: non-empty floating tensor of any shape. bits: 1..8.
    Returns:
        (α* x.min(), α* x.max()) as Python floats. An all-zero x returns (0.0, 0.0).
    """
    ### BEGIN SOLUTION
    if x.numel() == 0:
        raise ValueError("mse_clip_range needs a non-empty tensor")
    x = x.detach().float().flatten()
    x_min, x_max = x.min(), x.max()
    q_max = 2**bits - 1
    alphas = torch.arange(num_candidates, 0, -1, dtype=torch.float32).unsqueeze(1) / num_candidates
    lo = (alphas * x_min).clamp(max=0.0)
    hi = (alphas * x_max).clamp(min=0.0)
    scale = (hi - lo) / q_max
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero_point = torch.round(-lo / scale).clamp(0, q_max)
    x_hat = scale * (torch.clamp(torch.round(x / scale) + zero_point, 0, q_max) - zero_point)
    errors = (x - x_hat).pow(2).mean(dim=1)
    best = int(torch.argmin(errors))
    return float(alphas[best] * x_min), float(alphas[best] * x_max)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_mse_clip_range", "locked": true, "points": 8, "schema_version": 3, "solution": false, "task": false}
x = torch.cat([torch.linspace(0.0, 1.0, 1001), torch.tensor([3.0])])
lo, hi = mse_clip_range(x, 4)
assert_close((lo, hi), (0.0, 2.07), "mse_clip_range(x, bits=4)", atol=1e-5,
             inputs={"x": "1001 values evenly spaced in [0, 1] and one outlier at 3.0"},
             hint="at 4 bits it pays to clip the outlier: alpha = 0.69 of the min-max range")
lo, hi = mse_clip_range(torch.linspace(-1.0, 1.0, 201), 8)
assert_close((lo, hi), (-1.0, 1.0), "mse_clip_range(uniform on [-1, 1], bits=8)", atol=1e-6,
             hint="with no outliers, 8 bits rounding error is tiny: clipping does not pay off")
assert_not_modified(mse_clip_range, x, 4)
### BEGIN HIDDEN TESTS
from autograder.checks.lab1_linear import check_mse_clip_range
check_mse_clip_range(mse_clip_range)
### END HIDDEN TESTS

# %% nbgrader={"grade": false, "grade_id": "kl_clip_threshold", "locked": false, "schema_version": 3, "solution": true, "task": false}
def smooth_zeros(counts: torch.Tensor, eps: float = 1e-4):
    """Give every zero bin `eps`, taken evenly from the non-zero bins (so the total stays the same).

    Returns None when that is impossible (no non-zero bin, or a non-zero bin would go negative or to zero).
    Provided (not graded): TensorRT and MXNet smooth P and Q this way before computing KL(P || Q).
    """
    zeros = counts == 0
    num_zeros, num_nonzeros = int(zeros.sum()), int((~zeros).sum())
    if num_nonzeros == 0:
        return None
    taken = eps * num_zeros / num_nonzeros
    if taken >= float(counts[~zeros].min()):
        return None
    return counts + eps * zeros - taken * (~zeros)


def kl_clip_threshold(hist: torch.Tensor, bin_edges: torch.Tensor, bits: int) -> float:
    """TensorRT entropy calibration: the threshold T on |x| that minimizes KL(P || Q).

    `hist` holds counts of |x| in B bins with edges `bin_edges` ([B + 1], increasing from 0). With
    L = 2^(bits-1) levels, for every candidate number of kept bins i = L, L + 1, ..., B (in float64):
      - P = hist[:i] with the clipped mass hist[i:].sum() added to its last bin;
      - Q: merge hist[:i] (without the clipped mass) into L levels — bin k belongs to level
        min(k // (i // L), L - 1), so the last level takes the remainder — and spread each level's total
        evenly over its bins where P is non-zero (bins where P is zero get 0);
      - smooth both with `smooth_zeros` (skip this i if either returns None), normalize each to sum 1, and
        compute KL = sum(P * log(P / Q)).
    Return T = bin_edges[i] (the upper edge of the last kept bin) for the i with the smallest KL (the
    smallest i among equals), as a Python float. If B <= L nothing can be clipped: return bin_edges[-1].
    A Python loop over the candidates i is fine; vectorize the work inside it.
    """
    ### BEGIN SOLUTION
    counts = torch.as_tensor(hist).detach().to(torch.float64)
    levels = 2 ** (bits - 1)
    num_bins = counts.numel()
    if num_bins <= levels:
        return float(bin_edges[-1])
    best_kl, best_i = math.inf, num_bins
    for i in range(levels, num_bins + 1):
        p = counts[:i].clone()
        p[-1] += counts[i:].sum()
        level = (torch.arange(i) // (i // levels)).clamp(max=levels - 1)
        nonzero = p != 0
        totals = torch.zeros(levels, dtype=torch.float64).index_add_(0, level, counts[:i])
        support = torch.zeros(levels, dtype=torch.float64).index_add_(0, level, nonzero.double())
        q = torch.where(nonzero, totals[level] / support[level].clamp(min=1), torch.zeros_like(p))
        p, q = smooth_zeros(p), smooth_zeros(q)
        if p is None or q is None:
            continue
        p, q = p / p.sum(), q / q.sum()
        kl = float((p * torch.log(p / q)).sum())
        if kl < best_kl:
            best_kl, best_i = kl, i
    return float(bin_edges[best_i])
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_kl_clip_threshold", "locked": true, "points": 8, "schema_version": 3, "solution": false, "task": false}
generator = torch.Generator().manual_seed(0)
x = torch.cat([torch.randn(20000, generator=generator), torch.tensor([40.0])]).abs()
hist = torch.histc(x, bins=128, min=0.0, max=float(x.max()))
bin_edges = torch.linspace(0.0, float(x.max()), 129)
threshold = kl_clip_threshold(hist, bin_edges, bits=4)
assert 2.0 <= threshold <= 6.0, (f"kl_clip_threshold on |N(0,1)| plus one outlier at 40, bits=4: expected a threshold "
                                 f"between 2 and 6 (the outlier is clipped), got {threshold}")
flat = torch.ones(64)
assert_close(kl_clip_threshold(flat, torch.linspace(0, 1, 65), bits=8), 1.0,
             "kl_clip_threshold of 64 bins with 128 levels (nothing to clip)", atol=1e-9)
### BEGIN HIDDEN TESTS
from autograder.checks.lab1_linear import check_kl_clip_threshold
check_kl_clip_threshold(kl_clip_threshold)
### END HIDDEN TESTS

# %% [markdown] nbgrader={"grade": false, "grade_id": "part3_explore", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Explore: drag the clipping threshold
# The histogram below is a real activation: the input of `conv2` over the calibration batch. Drag the
# threshold and watch the two error terms trade off; the markers show where min-max, percentile, your MSE
# search and your KL calibration land.

# %% nbgrader={"grade": false, "grade_id": "part3_widget", "locked": true, "schema_version": 3, "solution": false, "task": false}
activations = lowbit.quant.ptq.collect_activations(model, calib_images)
print("calibrated activations:", {name: tuple(a.shape) for name, a in activations.items()})
viz.linear.clipping_explorer(activations["conv2"], bits=4, mse_fn=mse_clip_range, kl_fn=kl_clip_threshold)

# %% [markdown] nbgrader={"grade": false, "grade_id": "part3_experiment_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Experiment: static post-training quantization of the CNN
# Weights per channel (your `per_channel_qparams`), activations per tensor with a range from each calibrator,
# fixed after calibration on 256 training images. With 8-bit activations every calibrator should stay close
# to FP32; use the clipping widget above at 4 bits to see where they part ways.

# %% nbgrader={"grade": false, "grade_id": "part3_experiment", "locked": true, "schema_version": 3, "solution": false, "task": false}
def calibrators(a_bits: int) -> dict:
    """Each calibrator maps the calibration activations at one point [N, C, H, W] to a range (lo, hi): min-max,
    EMA (m=0.1, batches of 32), percentile 99.99, MSE and KL (512 bins) — the last three through your
    `ema_minmax`, `mse_clip_range` and `kl_clip_threshold`. The network input keeps its exact min-max range."""
    return lowbit.quant.ptq.calibrators(a_bits, ema_minmax, mse_clip_range, kl_clip_threshold)


ptq_results = {}
def static_ptq_accuracy(w_bits: int, a_bits: int, names) -> None:
    """Static PTQ with each named calibrator; accuracies go to ptq_results and are printed."""
    for name in tqdm(names, desc=f"W{w_bits}A{a_bits}"):
        quantized = lowbit.quant.ptq.static_ptq(model, calib_images, w_bits=w_bits, a_bits=a_bits,
                                                 weight_scale_fn=per_channel_qparams,
                                                 range_fn=calibrators(a_bits)[name])
        ptq_results[w_bits, a_bits, name] = lowbit.train.evaluate(quantized, test_loader, max_batches=EVAL_BATCHES)
        print(f"W{w_bits}A{a_bits}  {name:18s} {100 * ptq_results[w_bits, a_bits, name]:6.2f} %"
              f"   (FP32 {100 * fp32_accuracy:.2f} %)")


static_ptq_accuracy(8, 8, calibrators(8))

# %% nbgrader={"grade": false, "grade_id": "part3_experiment_w4", "locked": true, "schema_version": 3, "solution": false, "task": false}
# 4-bit weights, 8-bit activations. (A grader's run only needs the code to run: two calibrators suffice.)
static_ptq_accuracy(4, 8, ("min-max", "MSE") if lowbit.GRADING else calibrators(8))

# %% [markdown] nbgrader={"grade": false, "grade_id": "part4_intro", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ## Part 4 — Integer-only inference
#
# Let $A = S_A(Q_A - Z_A)$ be an $M\times K$ activation matrix and $B = S_B(Q_B - Z_B)$ a $K \times N$ weight
# matrix. Their product is
#
# $$ C = AB = S_A S_B \big(Q_A Q_B - Z_B\, Q_A \mathbf{1}\mathbf{1}^\top - Z_A\, \mathbf{1}\mathbf{1}^\top Q_B + K Z_A Z_B\big), $$
#
# where $Q_A\mathbf{1}$ are the row sums of $Q_A$ and $\mathbf{1}^\top Q_B$ the column sums of $Q_B$
# (Jacob et al., 2018). Everything inside the brackets is integer: an int8 × int8 product accumulated in
# **int32**; the zero-point terms are cheap (row/column sums), and vanish for symmetric weights ($Z_B = 0$).
#
# **Bias** is added inside the accumulator, so it must share its scale: $S_{\text{bias}} = S_A S_B$,
# $q_{\text{bias}} = \operatorname{round}(b / (S_A S_B))$ in int32. **Requantization** maps the int32
# accumulator to the output's 8-bit grid:
# $$ q_Y = \operatorname{clamp}\big(\operatorname{round}(M \cdot \text{acc}) + Z_Y,\ q_{\min},\ q_{\max}\big), \qquad M = \frac{S_A S_B}{S_Y}. $$
# Hardware computes $M = M_0 2^{-n}$ with an int32 fixed-point $M_0$ and a shift; here a float multiplication
# is fine. With per-channel weights, $S_B$ is a vector: one multiplier per output channel.

# %% nbgrader={"grade": false, "grade_id": "quantized_matmul", "locked": false, "schema_version": 3, "solution": true, "task": false}
def quantized_matmul(q_a: torch.Tensor, z_a: int, q_b: torch.Tensor, z_b: int) -> torch.Tensor:
    """(Q_A - Z_A) @ (Q_B - Z_B) computed with integer operations only.

    Use the expansion Q_A Q_B - Z_B rowsum(Q_A) - Z_A colsum(Q_B) + K Z_A Z_B. Widen before multiplying
    (int8 * int8 overflows int8). The result must be exact: hardware accumulates in int32. On this CPU torch
    has no fast integer matmul; a float64 matmul of integer-valued tensors is exact while every partial sum
    stays below 2^53 (always true for 8-bit inputs) — a fine emulation. float32 is NOT exact (24-bit mantissa).

    Args:
        q_a: integer tensor [M, K] (int8 or uint8); z_a: int.
        q_b: integer tensor [K, N] (int8 or uint8); z_b: int.
    Returns:
        torch.int32 tensor [M, N], exactly equal to (Q_A - Z_A) @ (Q_B - Z_B).
    """
    ### BEGIN SOLUTION
    if q_a.is_floating_point() or q_b.is_floating_point():
        raise TypeError("quantized_matmul takes integer tensors")
    a, b = q_a.to(torch.float64), q_b.to(torch.float64)  # integer-valued: exact below 2^53
    k = a.shape[1]
    acc = a @ b - z_b * a.sum(dim=1, keepdim=True) - z_a * b.sum(dim=0, keepdim=True) + k * z_a * z_b
    return acc.to(torch.int32)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_quantized_matmul", "locked": true, "points": 8, "schema_version": 3, "solution": false, "task": false}
q_a = torch.tensor([[130, 0], [255, 128]], dtype=torch.uint8)
q_b = torch.tensor([[1, -128], [127, 3]], dtype=torch.int8)
expected = (q_a.long() - 128) @ (q_b.long() - 2)
got = quantized_matmul(q_a, 128, q_b, 2)
assert_dtype(got, torch.int32, "quantized_matmul output")
assert_equal_int(got, expected.int(), "quantized_matmul(q_a, 128, q_b, 2)", inputs={"q_a": q_a, "q_b": q_b},
                 hint="widen to int32/int64 before multiplying; subtract both zero points")
assert_not_modified(quantized_matmul, q_a, 128, q_b, 2)
### BEGIN HIDDEN TESTS
from autograder.checks.lab1_linear import check_quantized_matmul
check_quantized_matmul(quantized_matmul)
### END HIDDEN TESTS

# %% nbgrader={"grade": false, "grade_id": "quantized_linear", "locked": false, "schema_version": 3, "solution": true, "task": false}
def quantized_linear(q_x: torch.Tensor, x_scale: float, x_zero_point: int, q_w: torch.Tensor, w_scale: torch.Tensor,
                     q_bias, y_scale: float, y_zero_point: int, bits: int = 8) -> torch.Tensor:
    """An integer-only linear layer: y = x W^T + b on quantized tensors, requantized to the output's grid.

    Args:
        q_x: [N, in_features] unsigned activations (torch.uint8), real value x_scale * (q_x - x_zero_point).
        q_w: [out_features, in_features] torch.int8, symmetric per output channel: W[o] = w_scale[o] * q_w[o].
        w_scale: float tensor [out_features].
        q_bias: torch.int32 [out_features] with scale x_scale * w_scale (see `quantize_bias` in lowbit), or None.
        y_scale, y_zero_point: the output's unsigned `bits`-bit quantization parameters.
    Returns:
        [N, out_features] torch.uint8 (bits <= 8): clamp(round(acc * M) + y_zero_point, 0, 2^bits - 1) with the
        int32 accumulator acc = (q_x - x_zero_point) q_w^T + q_bias and M = x_scale * w_scale / y_scale (one per
        output channel), multiplied in float64 and rounded half to even. Use your `quantized_matmul`.
    """
    ### BEGIN SOLUTION
    acc = quantized_matmul(q_x, x_zero_point, q_w.t(), 0)
    if q_bias is not None:
        acc = acc + q_bias.to(torch.int32)
    multiplier = x_scale * w_scale.to(torch.float64) / y_scale
    q_min, q_max = quantized_range(bits, signed=False)
    q_y = torch.round(acc.to(torch.float64) * multiplier) + y_zero_point
    return q_y.clamp(q_min, q_max).to(torch.uint8)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_quantized_linear", "locked": true, "points": 10, "schema_version": 3, "solution": false, "task": false}
generator = torch.Generator().manual_seed(1)
x = torch.rand(4, 16, generator=generator)
w = torch.randn(3, 16, generator=generator) * 0.3
b = torch.randn(3, generator=generator) * 0.1
x_scale, x_zero_point = 1.0 / 255, 0
w_scale = w.abs().amax(dim=1) / 127
q_x = torch.round(x / x_scale).clamp(0, 255).to(torch.uint8)
q_w = torch.round(w / w_scale[:, None]).clamp(-127, 127).to(torch.int8)
q_bias = torch.round(b / (x_scale * w_scale)).to(torch.int32)
y_float = (x_scale * q_x.double()) @ (w_scale[:, None] * q_w.double()).t() + b.double()
y_lo, y_hi = min(float(y_float.min()), 0.0), max(float(y_float.max()), 0.0)
y_scale = (y_hi - y_lo) / 255
y_zero_point = round(-y_lo / y_scale)
q_y = quantized_linear(q_x, x_scale, x_zero_point, q_w, w_scale, q_bias, y_scale, y_zero_point)
assert_dtype(q_y, torch.uint8, "quantized_linear output")
assert_shape(q_y, (4, 3), "quantized_linear output")
y_hat = y_scale * (q_y.double() - y_zero_point)
assert_close(y_hat, y_float, "dequantized quantized_linear output vs the float layer on the same quantized inputs",
             atol=y_scale * 0.5 + 1e-4, hint="rescale the int32 accumulator by x_scale * w_scale / y_scale per output channel")
### BEGIN HIDDEN TESTS
from autograder.checks.lab1_linear import check_quantized_linear
check_quantized_linear(quantized_linear)
### END HIDDEN TESTS

# %% [markdown] nbgrader={"grade": false, "grade_id": "part4_cnn_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### The whole CNN on integers
# Fold each BatchNorm into the convolution before it ($W' = \gamma W / \sigma$, $b' = \beta - \gamma\mu/\sigma$),
# calibrate every activation, and run: convolutions as integer matrix products (im2col, then *your*
# `quantized_matmul`), ReLU as a clamp at the zero point, max-pooling directly on integers (it commutes with a
# monotone quantizer), and the classifier with *your* `quantized_linear`. It must agree with the fake-quant
# simulation of the same model: exactly on ≥ 99.9 % of the outputs and never by more than one step.

# %% nbgrader={"grade": false, "grade_id": "part4_cnn", "locked": true, "schema_version": 3, "solution": false, "task": false}
folded = lowbit.models.fold_batchnorm(model)
integer_cnn = lowbit.quant.integer.integerize(folded, calib_images, bits=8,
                                              matmul_fn=quantized_matmul, linear_fn=quantized_linear)
images = next(iter(test_loader))[0][: 64 if lowbit.GRADING else 500]
q_logits = integer_cnn.forward_integer(images)
fake_logits_q = integer_cnn.forward_fake_quant(images)
difference = (q_logits.int() - fake_logits_q.int()).abs()
print(f"integer vs fake-quant: exact on {100 * (difference == 0).float().mean():.2f} % of logits, "
      f"max difference {int(difference.max())} step(s)")
integer_accuracy = integer_cnn.evaluate(test_loader, max_batches=EVAL_BATCHES)
print(f"integer-only CNN accuracy: {100 * integer_accuracy:.2f} %  (FP32 {100 * fp32_accuracy:.2f} %)")

# %% [markdown] nbgrader={"grade": false, "grade_id": "part4_speed_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Does it pay off?
# Integer arithmetic is cheaper in silicon, but speed on *your* CPU depends on kernels. Below, PyTorch's
# quantized CPU kernels (FBGEMM / QNNPACK: `torch.ao.nn.quantized.Linear`) against fp32 `nn.Linear`, measured
# here. Small layers are dominated by overhead; the advantage appears in large matrix products, and memory
# traffic drops 4× in every case.

# %% nbgrader={"grade": false, "grade_id": "part4_speed", "locked": true, "schema_version": 3, "solution": false, "task": false}
for rows, features in ((64, 256), (256, 1024)) if not lowbit.GRADING else ((16, 64),):
    timing = lowbit.quant.integer.time_int8_linear(rows, features, repeats=20 if not lowbit.GRADING else 3)
    print(f"[{rows} x {features}] @ [{features} x {features}]^T: fp32 {timing['fp32_ms']:.3f} ms, "
          f"int8 {timing['int8_ms']:.3f} ms, speed-up {timing['fp32_ms'] / timing['int8_ms']:.2f}x")

# %% [markdown] nbgrader={"grade": false, "grade_id": "part5_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ## Part 5 — Wrap-up
# Your results, all computed with your functions in this notebook. The reference table in the course README
# runs the very same lowbit functions (`lowbit.quant.ptq.static_ptq`, `weight_only`, `integerize`; BatchNorm
# folded, as deployed) with lowbit's reference code in place of yours, on the same embedded test set: every
# step is deterministic, so with correct functions each row agrees **to the last digit**, and any gap means a bug.
#
# *Why several W4A8 rows show the same figure.* With 4-bit weights the weight rounding dominates the error;
# 8-bit activations (256 levels) lose little under any of these ranges. Min-max, percentile and KL choose ranges
# up to 2× apart for the same ReLU output, and their models do disagree — on 6 (percentile) and 23 (KL) of the
# 3,000 test images compared with min-max — but as many of those images turn right as turn wrong, so each scores
# 2,733 / 3,000 = 91.10 %. Equal accuracy is not equal behaviour: compare predictions, not only the score. EMA
# (m = 0.1) is the outlier because it averages the maxima of 32-image batches, which clips the rare large
# activations that one batch's maximum would keep.

# %% nbgrader={"grade": false, "grade_id": "part5_table", "locked": true, "schema_version": 3, "solution": false, "task": false}
Row = lowbit.results.Row
rows = [Row("FP32", fp32_accuracy, bits=32)]
rows += [Row(f"W8A8 static, {name}", ptq_results[8, 8, name], bits=8) for name in calibrators(8)]
rows += [Row(f"W4A8 static, {name}", ptq_results[4, 8, name], bits=4) for name in calibrators(8)
         if (4, 8, name) in ptq_results]
rows += [Row(f"W4 weights only, {name}", granularity_results[name, 4][1], bits=4) for name in granularities]
rows += [Row("W8A8 integer-only", integer_accuracy, bits=8)]
print(lowbit.results.table(rows))

# %% [markdown] nbgrader={"grade": false, "grade_id": "reflection_intro", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Reflection (graded by hand)
# Answer each in 2–4 sentences, citing numbers from your own results above.

# %% [markdown] nbgrader={"grade": false, "grade_id": "q1_prompt", "locked": true, "schema_version": 3, "solution": false, "task": false}
# **Q1 (4 points).** At 4 weight bits, per-tensor quantization loses far more accuracy than per-channel.
# Using the box plot of Part 2, explain which channels suffer under one shared scale and why.

# %% [markdown] nbgrader={"grade": true, "grade_id": "q1_answer", "locked": false, "points": 4, "schema_version": 3, "solution": true, "task": false}
# With one scale per tensor the step is set by the channel with the largest |w|. Channels whose weights span a
# range several times smaller then use only a few of the 15 levels — many of their weights round to 0 — so their
# outputs are mostly noise. Per-channel scales give each channel all levels. The box plot shows why the gap is
# large once BatchNorm is folded: folding multiplies each channel by its own γ/√(σ²+ε), so conv1's channel
# ranges differ by 11.8× (2.5× as trained) and conv2/conv3's by about 3.4× (2.1–2.3×); at 4 bits conv1's
# smallest channel then reaches only about 0.6 of one step, so all its weights round to 0 or ±1.

# %% [markdown] nbgrader={"grade": false, "grade_id": "q2_prompt", "locked": true, "schema_version": 3, "solution": false, "task": false}
# **Q2 (5 points).** In the clipping widget at 4 bits, order min-max, percentile, MSE and KL by the total error
# they reach, and explain why min-max is worst even though it never clips. Relate your answer to the two error
# terms the widget plots.

# %% [markdown] nbgrader={"grade": true, "grade_id": "q2_answer", "locked": false, "points": 5, "schema_version": 3, "solution": true, "task": false}
# MSE reaches the lowest total error (by construction), percentile and KL come next, min-max is last. Min-max
# makes the step S = (max − min)/15 as large as the rarest outlier requires, so the rounding error (about S²/12
# per value) hits the bulk of the distribution; clipping accepts a small clipping error on a few outliers in
# exchange for a much smaller step for everything else — the minimum of the total-error curve lies well inside
# the min-max range.

# %% [markdown] nbgrader={"grade": false, "grade_id": "q3_prompt", "locked": true, "schema_version": 3, "solution": false, "task": false}
# **Q3 (5 points).** Your integer-only CNN matched the fake-quant simulation exactly on almost all outputs but
# not all. Name the operation where the two can differ and say why a difference is at most one step.

# %% [markdown] nbgrader={"grade": true, "grade_id": "q3_answer", "locked": false, "points": 5, "schema_version": 3, "solution": true, "task": false}
# Requantization: the integer path rounds acc·M computed from the int32 accumulator, while fake-quant rounds
# a float32 convolution output divided by the output scale. The two real numbers differ only by floating-point
# error (summation order, the rounded bias), which is far below one step, so they can fall on different sides
# of a rounding boundary (a .5 tie) — changing the result by exactly one step, never more.

# %% [markdown] nbgrader={"grade": false, "grade_id": "further_reading", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Further reading
# - B. Jacob et al., 2018. *Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference.* CVPR.
# - R. Krishnamoorthi, 2018. *Quantizing deep convolutional networks for efficient inference: A whitepaper.* arXiv:1806.08342.
# - M. Nagel et al., 2021. *A White Paper on Neural Network Quantization.* arXiv:2106.08295.
# - A. Gholami et al., 2021. *A Survey of Quantization Methods for Efficient Neural Network Inference.* arXiv:2103.13630.
# - S. Migacz, 2017. *8-bit Inference with TensorRT.* GPU Technology Conference.
# - R. Banner, Y. Nahshan, D. Soudry, 2019. *Post-training 4-bit quantization of convolutional networks for rapid-deployment.* NeurIPS.
# - S. Dai et al., 2021. *VS-Quant: Per-vector Scaled Quantization for Accurate Low-Precision Neural Network Inference.* MLSys.
# - B. Rouhani et al., 2023. *Microscaling Data Formats for Deep Learning.* arXiv:2310.10537.
#
# Next: **Lab 2 — k-means quantization**, where the levels are no longer evenly spaced.
