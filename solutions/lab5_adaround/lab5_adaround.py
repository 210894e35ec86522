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
# # Lab 5 — Beyond rounding to nearest: equalization, bias correction, AdaRound
#
# Labs 1–2 quantized a trained network by rounding every weight to the nearest grid point; Lab 3 retrained it so
# it could live with the rounding. This lab sits between the two: **post-training** quantization that uses a little
# calibration data (or none) but is smarter than rounding to nearest. Three ideas, all from Markus Nagel and
# colleagues at Qualcomm, made 4-bit weights and below work without retraining: rescale consecutive layers so one
# grid fits every channel (cross-layer equalization), undo the shift quantization puts on each output's mean (bias
# correction), and **learn** whether each weight rounds up or down (AdaRound).
#
# **You will be able to**
# 1. equalize the per-channel weight ranges of two layers across a ReLU without changing what they compute, and
#    say when that helps a per-tensor grid and why it does little for a per-channel one;
# 2. compute the mean shift quantization causes in a layer's output and correct the bias for it, from calibration
#    data or, data-free, from the BatchNorm statistics (the mean of a rectified Gaussian);
# 3. write AdaRound's pieces — the rectified sigmoid, its initialization, the rounding regularizer and its β
#    schedule — and the layer-wise optimization that puts them together;
# 4. AdaRound the course CNN to 4, 3 and 2 bits on one CPU, read the method × bits table, and compare learned
#    rounding with Lab 3's quantization-aware training.
#
# **Prerequisites**: Labs 1–3 (scales and grids, per-tensor vs per-channel, BatchNorm folding, the STE); PyTorch
# autograd and `torch.optim.Adam`. **Time**: 2–3 hours.
#
# | part | graded functions | points |
# |---|---|---|
# | 1. Cross-layer equalization | `equalization_scales`, `equalize_pair` | 16 |
# | 2. Bias correction | `expected_relu_input`, `corrected_bias` | 16 |
# | 3. AdaRound | `rectified_sigmoid`, `init_v`, `rounding_regularizer`, `beta_schedule`, `adaround_layer` | 48 |
# | 4. Put together | — (experiments with your functions) | — |
# | 5. Wrap-up | four reflection questions (graded by hand) | 20 |
#
# **How this notebook works.** Write each function in its answer cell (replace the line
# `raise NotImplementedError()`), then run the test cell below it. Visible tests show what went in, what was
# expected and what came back, and name the likely mistake. Hidden checks run at grading time on more cases
# (zero-range channels, negative BatchNorm weights, β at the ends of its schedule, h exactly 0 or 1, fractional
# parts 0 and near 1, conv and linear layers, float16); they call only the functions you write, and ask for
# gradients where the lab says a function must be differentiable — so keep the names and argument orders.
# Grading runs the setup cell and your answer cells only — a function must not depend on a variable computed in
# an experiment cell. Before submitting run `autograder check lab5_adaround.ipynb`. Every widget and experiment
# below uses **your** functions.

# %% nbgrader={"grade": false, "grade_id": "setup", "locked": true, "schema_version": 3, "solution": false, "task": false}
# %matplotlib widget
import copy
import math
import time

import matplotlib.pyplot as plt
import torch
from IPython.display import display
from torch import nn
from tqdm.auto import tqdm

import lowbit
from lowbit import viz
from lowbit.quant.validate import check_float_tensor, quantized_range
from lowbit.testing import (assert_close, assert_dtype, assert_equal_int, assert_gradient_close, assert_not_modified,
                            assert_shape)

torch.set_num_threads(1)  # the course machine is shared: one thread is faster than two busy ones
lowbit.seed_everything(0)
model = lowbit.models.pretrained("cnn")  # FashionCNN, fp32, eval mode (with its BatchNorms)
folded = lowbit.models.fold_batchnorm(model)  # a copy with every BatchNorm folded into the conv before it
# While a grader runs this notebook, experiments shrink (100 test images, fewer iterations; same code).
_, test_loader = lowbit.data.loaders(batch_size=100 if lowbit.GRADING else 500)
EVAL_BATCHES = 1 if lowbit.GRADING else None
fp32_accuracy = lowbit.train.evaluate(folded, test_loader, max_batches=EVAL_BATCHES)
print(f"FashionCNN: {sum(p.numel() for p in folded.parameters()):,} parameters after BatchNorm folding, "
      f"FP32 accuracy on the embedded test set: {100 * fp32_accuracy:.2f} %")

# %% [markdown] nbgrader={"grade": false, "grade_id": "part1_intro", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ## Part 1 — Cross-layer equalization
#
# Fold a BatchNorm into the conv before it (Lab 2) and each output channel of the conv is multiplied by its own
# $\gamma_c / \sigma_c$: after folding, the ranges of a layer's channels can differ by an order of magnitude (12× in
# `conv1`, in the box plots below; more in deeper networks such as MobileNets). One scale per tensor must then cover the widest channel, and the narrow
# ones land on a handful of grid points — or on zero. Per-channel scales (Lab 2) solve this in hardware that
# supports them; Nagel, van Baalen, Blankevoort & Welling (2019, *Data-Free Quantization Through Weight
# Equalization and Bias Correction*, ICCV) solve it **in the weights**, for any grid.
#
# The trick is that ReLU is *positively homogeneous*: $\operatorname{ReLU}(x / s) = \operatorname{ReLU}(x) / s$ for
# $s > 0$ (max pooling and flatten too). For two consecutive layers $y = W_2\, f(W_1 x + b_1)$, divide output
# channel $i$ of the first layer (row $i$ of $W_1$ and $b_{1,i}$) by $s_i$ and multiply input channel $i$ of the
# second (column $i$ of $W_2$) by $s_i$:
#
# $$ W_2\, f(W_1 x + b_1) = (W_2 S)\, f\big(S^{-1} W_1 x + S^{-1} b_1\big), \qquad S = \operatorname{diag}(s). $$
#
# Nothing changes in what the pair computes, but the ranges move. With $r^{(1)}_i = \max |W_1[i, \cdot]|$ (output
# channel $i$: every axis but 0) and $r^{(2)}_i = \max |W_2[\cdot, i]|$ (input channel $i$: every axis but 1), the
# paper's choice
#
# $$ s_i = \frac{\sqrt{r^{(1)}_i\, r^{(2)}_i}}{r^{(2)}_i} \quad\Longrightarrow\quad
#    \frac{r^{(1)}_i}{s_i} = r^{(2)}_i\, s_i = \sqrt{r^{(1)}_i\, r^{(2)}_i} $$
#
# gives both rescaled channels the same range, the geometric mean of the two (it maximizes the product of the
# channels' precisions relative to their tensors' ranges, the paper's §4.1). A channel with range 0 on either side
# has nothing to balance: keep $s_i = 1$ there (and avoid $0/0$). For a conv, $W_1$ is $[C, C_\text{in}, k_h, k_w]$
# and $W_2$ is $[D, C, k_h, k_w]$; a conv followed by flatten and a linear layer reshapes the linear weight
# $[D, C \cdot h \cdot w]$ to $[D, C, h \cdot w]$ (flatten keeps each channel's $h \cdot w$ values together).

# %% nbgrader={"grade": false, "grade_id": "equalization_scales", "locked": false, "schema_version": 3, "solution": true, "task": false}
def equalization_scales(w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """Cross-layer equalization scales of the pair (w1 then w2), Nagel et al. 2019.

    Args:
        w1: float tensor [C, ...], the first layer's weight; output channel i is w1[i].
        w2: float tensor [D, C, ...], the second layer's weight; input channel i is w2[:, i].
    Returns:
        float32 tensor [C]: s_i = sqrt(r1_i * r2_i) / r2_i with r1_i = max |w1[i]| (over every axis but 0) and
        r2_i = max |w2[:, i]| (over every axis but 1); s_i = 1 where r1_i == 0 or r2_i == 0.
    Raises:
        TypeError for non-float tensors; ValueError for empty weights or when w2.shape[1] != w1.shape[0].
        w1 and w2 are not modified.
    """
    ### BEGIN SOLUTION
    check_float_tensor(w1, "w1", nonempty=True)
    check_float_tensor(w2, "w2", nonempty=True)
    if w2.ndim < 2 or w2.shape[1] != w1.shape[0]:
        raise ValueError(f"w2 must be [D, C, ...] with C = w1.shape[0] = {w1.shape[0]} input channels on axis 1, "
                         f"got shapes {tuple(w1.shape)} and {tuple(w2.shape)}")
    channels = w1.shape[0]
    r1 = w1.detach().float().abs().reshape(channels, -1).amax(dim=1)                  # range of output channel i
    r2 = w2.detach().float().abs().transpose(0, 1).reshape(channels, -1).amax(dim=1)  # range of input channel i
    both = (r1 > 0) & (r2 > 0)
    ones = torch.ones_like(r1)
    s = torch.sqrt(r1 * r2) / torch.where(both, r2, ones)
    return torch.where(both, s, ones)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_equalization_scales", "locked": true, "points": 8, "schema_version": 3, "solution": false, "task": false}
w1 = torch.tensor([[1.0, -0.5], [2.0, 4.0]])          # output-channel (row) ranges 1, 4; column ranges 2, 4
w2 = torch.tensor([[1.0, 9.0], [-4.0, 1.0]])          # input-channel (column) ranges 4, 9; row ranges 9, 4
assert_close(equalization_scales(w1, w2), torch.tensor([0.5, 2.0 / 3.0]), "equalization_scales of a square pair",
             inputs={"w1": w1, "w2": w2},
             hint="r1 is the range of w1's output channel i (row i, axis 0) and r2 the range of w2's input channel i "
                  "(column i, axis 1): max over the other axes, not over the same axis of both")
zero = torch.tensor([[0.0, 0.0], [3.0, -1.0], [0.5, 0.5]])  # output channel 0 of w1 is dead
w2z = torch.tensor([[2.0, 0.0, 1.0], [-1.0, 0.0, 2.0]])      # input channel 1 of w2 is never used
assert_close(equalization_scales(zero, w2z), torch.tensor([1.0, 1.0, math.sqrt(0.5 * 2.0) / 2.0]),
             "equalization_scales with a zero range on each side", inputs={"w1": zero, "w2": w2z},
             hint="s_i = 1 where r1_i == 0 or r2_i == 0 (nothing to balance), without NaN or inf from 0 / 0")
g = torch.Generator().manual_seed(0)
conv1 = torch.randn(4, 2, 3, 3, generator=g) * torch.tensor([0.1, 1.0, 5.0, 0.5]).reshape(4, 1, 1, 1)
conv2 = torch.randn(6, 4, 3, 3, generator=g)
s = equalization_scales(conv1, conv2)
assert_shape(s, (4,), "equalization_scales of two conv weights [4, 2, 3, 3] and [6, 4, 3, 3]")
ranges1 = (conv1 / s.reshape(4, 1, 1, 1)).abs().amax(dim=(1, 2, 3))
ranges2 = (conv2 * s.reshape(1, 4, 1, 1)).abs().amax(dim=(0, 2, 3))
assert_close(ranges1, ranges2, "ranges of conv1 / s (per output channel) and conv2 · s (per input channel)",
             rtol=1e-5, inputs={"w1": "conv [4, 2, 3, 3]", "w2": "conv [6, 4, 3, 3]"},
             hint="after equalization both ranges are sqrt(r1 · r2): s = sqrt(r1 r2) / r2 (not / r1), r1 over "
                  "every axis of w1 but 0, r2 over every axis of w2 but 1")
assert_close(ranges1, (conv1.abs().amax(dim=(1, 2, 3)) * conv2.abs().amax(dim=(0, 2, 3))).sqrt(),
             "the equalized range sqrt(r1 · r2)", rtol=1e-5,
             inputs={"w1": "conv [4, 2, 3, 3]", "w2": "conv [6, 4, 3, 3]"})
assert_dtype(equalization_scales(w1.half(), w2.half()), torch.float32, "equalization_scales of float16 weights",
             hint="compute in float32 and return float32 scales")
assert_not_modified(equalization_scales, torch.tensor([[1.0, -0.5], [2.0, 4.0]]),
                    torch.tensor([[1.0, 9.0], [-4.0, 1.0]]))
### BEGIN HIDDEN TESTS
from autograder.checks.lab5_adaround import check_equalization_scales
check_equalization_scales(equalization_scales)
### END HIDDEN TESTS

# %% [markdown] nbgrader={"grade": false, "grade_id": "equalize_pair_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Equalizing a pair
# `equalize_pair` applies the scales: $W_1' = S^{-1} W_1$ (each output channel, axis 0), $b_1' = S^{-1} b_1$,
# $W_2' = W_2 S$ (each input channel, axis 1). The bias must be scaled with its channel, otherwise
# $\operatorname{ReLU}(W_1 x / s + b_1) \ne \operatorname{ReLU}(W_1 x + b_1) / s$.
# `lowbit.quant.equalize.equalize_model` runs your two functions over the CNN's chain `conv1 → conv2 → conv3 → fc`,
# sweeping until the scales settle (a middle layer belongs to two pairs, so equalizing one disturbs the other; the
# paper iterates the same way).

# %% nbgrader={"grade": false, "grade_id": "equalize_pair", "locked": false, "schema_version": 3, "solution": true, "task": false}
def equalize_pair(w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor,
                  scales: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Equalize one pair of layers: (w1 / s, b1 / s, w2 * s), the pair's function unchanged across a ReLU.

    Args:
        w1: float tensor [C, ...], the first layer's weight. b1: float tensor [C] (its bias) or None.
        w2: float tensor [D, C, ...], the second layer's weight.
        scales: float tensor [C], every entry > 0; None -> equalization_scales(w1, w2).
    Returns:
        (w1', b1', w2'): w1' = w1 with output channel i (axis 0) divided by s_i, b1' = b1 / s (None if b1 is None),
        w2' = w2 with input channel i (axis 1) multiplied by s_i; each computed in float32 and returned in its
        input's dtype and shape.
    Raises:
        TypeError for non-float tensors; ValueError for mismatched shapes or scales <= 0. Inputs are not modified.
    """
    ### BEGIN SOLUTION
    check_float_tensor(w1, "w1", nonempty=True)
    check_float_tensor(w2, "w2", nonempty=True)
    channels = w1.shape[0]
    if w2.ndim < 2 or w2.shape[1] != channels:
        raise ValueError(f"w2 must have {channels} input channels on axis 1, got shape {tuple(w2.shape)}")
    if b1 is not None and tuple(check_float_tensor(b1, "b1").shape) != (channels,):
        raise ValueError(f"b1 must have shape [{channels}], got {tuple(b1.shape)}")
    s = equalization_scales(w1, w2) if scales is None else check_float_tensor(scales, "scales").detach().float()
    if tuple(s.shape) != (channels,) or not bool((s > 0).all()):
        raise ValueError(f"scales must be [{channels}] and > 0 everywhere, got {s}")
    s1 = s.reshape([channels] + [1] * (w1.ndim - 1))          # along w1's axis 0
    s2 = s.reshape([1, channels] + [1] * (w2.ndim - 2))       # along w2's axis 1
    w1_new = (w1.detach().float() / s1).to(w1.dtype)
    b1_new = None if b1 is None else (b1.detach().float() / s).to(b1.dtype)
    w2_new = (w2.detach().float() * s2).to(w2.dtype)
    return w1_new, b1_new, w2_new
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_equalize_pair", "locked": true, "points": 8, "schema_version": 3, "solution": false, "task": false}
w1 = torch.tensor([[4.0, -1.0], [0.5, 0.25], [-2.0, 1.0]])
b1 = torch.tensor([1.0, -0.5, 0.25])
w2 = torch.tensor([[1.0, -8.0, 0.5], [-0.25, 2.0, 2.0]])
s = torch.tensor([2.0, 0.25, 1.0])
w1_new, b1_new, w2_new = equalize_pair(w1, b1, w2, s)
pair = {"w1": w1, "b1": b1, "w2": w2, "scales": s}
assert_close(w1_new, torch.tensor([[2.0, -0.5], [2.0, 1.0], [-2.0, 1.0]]), "w1' = w1 / s along axis 0", inputs=pair,
             hint="divide output channel i of w1 (row i) by s_i: w1 / s.reshape(-1, 1); multiplying w1 and "
                  "dividing w2 is the inverse equalization")
assert_close(b1_new, torch.tensor([0.5, -2.0, 0.25]), "b1' = b1 / s", inputs=pair,
             hint="the bias belongs to the first layer's output channel: ReLU(w1 x / s + b1 / s) = ReLU(w1 x + b1) / s")
assert_close(w2_new, torch.tensor([[2.0, -2.0, 0.5], [-0.5, 0.5, 2.0]]), "w2' = w2 · s along axis 1", inputs=pair,
             hint="multiply input channel i of w2 (column i, axis 1) by s_i: w2 * s.reshape(1, -1)")
g = torch.Generator().manual_seed(1)
conv1, bias1 = torch.randn(4, 2, 3, 3, generator=g), torch.randn(4, generator=g)
conv2 = torch.randn(5, 4, 3, 3, generator=g)
x = torch.randn(3, 2, 8, 8, generator=g)
c1, cb1, c2 = equalize_pair(conv1, bias1, conv2)
before = nn.functional.conv2d(torch.relu(nn.functional.conv2d(x, conv1, bias1)), conv2)
after = nn.functional.conv2d(torch.relu(nn.functional.conv2d(x, c1, cb1)), c2)
assert_close(after, before, "conv2(ReLU(conv1(x))) after equalize_pair (scales=None) vs before", rtol=1e-4, atol=1e-5,
             inputs={"w1": "conv [4, 2, 3, 3]", "b1": "[4]", "w2": "conv [5, 4, 3, 3]", "x": "[3, 2, 8, 8]"},
             hint="the pair's function must not change: w1 and b1 divided by s per output channel (axis 0), w2 "
                  "multiplied by s per input channel (axis 1), s = equalization_scales(w1, w2) when scales is None")
assert_close(c1.abs().amax(dim=(1, 2, 3)), c2.abs().amax(dim=(0, 2, 3)), "ranges after equalize_pair(scales=None)",
             rtol=1e-5, inputs={"w1": "conv [4, 2, 3, 3]", "w2": "conv [5, 4, 3, 3]"},
             hint="scales=None means s = equalization_scales(w1, w2)")
assert equalize_pair(w1, None, w2, s)[1] is None, "equalize_pair(w1, None, w2, s) must return None as b1'"
half = equalize_pair(w1.half(), b1.half(), w2.half())
for got, name in zip(half, ("w1'", "b1'", "w2'")):
    assert_dtype(got, torch.float16, f"equalize_pair of float16 tensors: {name}",
                 hint="compute in float32 and cast each result back to its input's dtype")
try:
    equalize_pair(w1, b1, w2, torch.tensor([1.0, -1.0, 1.0]))
except ValueError:
    print("✓ equalize_pair rejects a negative scale with ValueError")
else:
    raise AssertionError("equalize_pair(w1, b1, w2, scales=[1, -1, 1]) must raise ValueError: ReLU(x / s) = "
                         "ReLU(x) / s only holds for s > 0")
assert_not_modified(equalize_pair, torch.tensor([[4.0, -1.0], [0.5, 0.25]]), torch.tensor([1.0, -0.5]),
                    torch.tensor([[1.0, -8.0], [-0.25, 2.0]]))
### BEGIN HIDDEN TESTS
from autograder.checks.lab5_adaround import check_equalize_pair
check_equalize_pair(equalize_pair)
### END HIDDEN TESTS

# %% [markdown] nbgrader={"grade": false, "grade_id": "part1_experiment_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Experiment: equalize the course CNN
# `equalize_model` runs your `equalization_scales` and `equalize_pair` over the BN-folded CNN's chain
# (`conv1 → conv2 → conv3 → fc`, the linear layer's weight reshaped to `[10, 64, 9]` for the pair `conv3 → fc`). The
# network's function must not change (up to float rounding), while each layer's channel ranges move closer together.
# The box plots show $\max |w_c|$ per output channel before and after; below each layer, largest / smallest range.

# %% nbgrader={"grade": false, "grade_id": "part1_equalize", "locked": true, "schema_version": 3, "solution": false, "task": false}
from lowbit.quant import equalize, ptq
from lowbit.quant.modules import quantizable_layers

CLE_FUNCTIONS = {"equalization_scales": equalization_scales, "equalize_pair": equalize_pair}
equalized = equalize.equalize_model(folded, functions=CLE_FUNCTIONS)
images, _ = next(iter(test_loader))
with torch.no_grad():
    change = float((equalized(images) - folded(images)).abs().max() / folded(images).abs().max())
print(f"largest change of the logits after CLE, relative to their range: {change:.1e} (float rounding only)")
for name, s in equalized.equalization_scales.items():
    print(f"{name}: its {s.numel()} output channels divided by s in [{float(s.min()):.3g}, {float(s.max()):.3g}]")
ranges = viz.linear.channel_range_boxplot({"BN-folded": folded, "after CLE": equalized})

# %% [markdown] nbgrader={"grade": false, "grade_id": "part1_accuracy_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# CLE is for **per-tensor** grids: one scale per layer, set by its widest channel. Below, weights only, rounded to
# nearest (activations in float), per tensor at 8 and 4 bits and per channel at 4 bits, before and after CLE. Per channel, every channel
# already has its own scale, so CLE can only help by what it does to the *next* layer's input channels.

# %% nbgrader={"grade": false, "grade_id": "part1_accuracy", "locked": true, "schema_version": 3, "solution": false, "task": false}
def accuracy_of(net: nn.Module) -> float:
    """Top-1 accuracy on the embedded test set. Evaluated on a channels-last copy: the CPU convolutions run about
    1.7× faster that way, with the same predictions."""
    fast = copy.deepcopy(net).to(memory_format=torch.channels_last)
    return lowbit.train.evaluate(fast, test_loader, max_batches=EVAL_BATCHES)


cle_accuracy = {}
print(f"{'weights':>8} {'granularity':>12} {'BN-folded':>10} {'after CLE':>10}   (FP32 {100 * fp32_accuracy:.2f} %)")
for bits, granularity in ((8, "tensor"), (4, "tensor"), (4, "channel")):
    for label, net in (("folded", folded), ("cle", equalized)):
        quantized = ptq.quantize_weights(net, bits, granularity=granularity)
        cle_accuracy[bits, granularity, label] = accuracy_of(quantized)
    print(f"{'W' + str(bits):>8} {granularity:>12} {100 * cle_accuracy[bits, granularity, 'folded']:9.2f} % "
          f"{100 * cle_accuracy[bits, granularity, 'cle']:9.2f} %")

# %% [markdown] nbgrader={"grade": false, "grade_id": "part2_intro", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ## Part 2 — Bias correction
#
# Rounding errors are not zero-mean per output channel: a channel whose weights happen to round mostly up has a
# quantized weight $\widetilde W = W + \varepsilon$ whose output is, **on average**, too large. For an input $x$,
#
# $$ \mathbb{E}[\widetilde W x] - \mathbb{E}[W x] = \varepsilon\, \mathbb{E}[x], $$
#
# a fixed shift per output channel that the next layers see as a bias error; at 4 bits and below it costs accuracy
# (Nagel et al. 2019, §4.2). Subtracting it from the bias removes it: $b' = b - \varepsilon\,\mathbb{E}[x]$. All it
# needs is $\mathbb{E}[x]$, the mean input of each input channel:
#
# - **empirically**, from a few calibration images (the mean of the layer's input over every axis but the channel);
# - **data-free**, from the BatchNorm before the ReLU that produces $x$: by BatchNorm's design the pre-activation of
#   channel $c$ is roughly $\mathcal N(\beta_c, \gamma_c^2)$ ($\beta$, $\gamma$ the BN's bias and weight), and the
#   mean of a rectified Gaussian is
#
# $$ \mathbb{E}[\operatorname{ReLU}(x)] = \beta\,\Big(1 - \Phi\big(\tfrac{-\beta}{\sigma}\big)\Big)
#    + \sigma\, \varphi\big(\tfrac{-\beta}{\sigma}\big), \qquad \sigma = |\gamma|, $$
#
# with $\Phi$, $\varphi$ the standard normal cdf and pdf. A BatchNorm weight can be negative: the spread is
# $|\gamma|$. Where $\sigma = 0$ the pre-activation is the constant $\beta$, so $\mathbb{E} = \max(\beta, 0)$.

# %% nbgrader={"grade": false, "grade_id": "expected_relu_input", "locked": false, "schema_version": 3, "solution": true, "task": false}
def expected_relu_input(beta: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """E[ReLU(x)] for x ~ N(beta, gamma^2), per channel: the mean input a layer gets after BatchNorm + ReLU.

    Args:
        beta: float tensor [C], the pre-activation's mean (the previous BatchNorm's bias).
        gamma: float tensor [C], its standard deviation up to sign (the BatchNorm's weight, possibly negative).
    Returns:
        tensor [C] in beta's dtype (computed in float32): with sigma = |gamma|,
        beta * (1 - Phi(-beta / sigma)) + sigma * phi(-beta / sigma), Phi / phi the standard normal cdf / pdf;
        max(beta, 0) where sigma == 0 (never NaN).
    Raises:
        TypeError for non-float tensors; ValueError when beta and gamma differ in shape. Inputs are not modified.
    """
    ### BEGIN SOLUTION
    check_float_tensor(beta, "beta")
    check_float_tensor(gamma, "gamma")
    if beta.shape != gamma.shape:
        raise ValueError(f"beta and gamma must have the same shape, got {tuple(beta.shape)} and {tuple(gamma.shape)}")
    b, sigma = beta.detach().float(), gamma.detach().float().abs()
    positive = sigma > 0
    safe_sigma = torch.where(positive, sigma, torch.ones_like(sigma))    # no division by 0 where sigma == 0
    z = -b / safe_sigma
    cdf = torch.special.ndtr(z)                                           # Phi(z)
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)                # phi(z)
    mean = b * (1 - cdf) + safe_sigma * pdf
    return torch.where(positive, mean, b.clamp(min=0)).to(beta.dtype)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_expected_relu_input", "locked": true, "points": 8, "schema_version": 3, "solution": false, "task": false}
beta = torch.tensor([0.0, 1.0, -1.0, 0.5, -3.0])
gamma = torch.tensor([1.0, 1.0, 1.0, -1.0, 2.0])
# e.g. beta = 1, sigma = 1: 1 · Φ(1) + φ(1) = 0.841345 + 0.241971
assert_close(expected_relu_input(beta, gamma), torch.tensor([0.398942, 1.083315, 0.083315, 0.697797, 0.058614]),
             "expected_relu_input(beta, gamma)", atol=1e-5, inputs={"beta": beta, "gamma": gamma},
             hint="E = beta (1 - Phi(-beta / sigma)) + sigma phi(-beta / sigma) with sigma = |gamma|: a BatchNorm "
                  "weight can be negative (channel 3 here), the spread of x is still |gamma|")
samples = beta + gamma.abs() * torch.randn(200_000, 5, generator=torch.Generator().manual_seed(0))
assert_close(expected_relu_input(beta, gamma), torch.relu(samples).mean(dim=0),
             "expected_relu_input vs the mean of ReLU over 200,000 samples of N(beta, gamma²)", atol=0.01,
             inputs={"beta": beta, "gamma": gamma},
             hint="Phi is the standard normal cdf (torch.special.ndtr), phi its pdf exp(-z² / 2) / sqrt(2 pi)")
assert_close(expected_relu_input(torch.tensor([-1.0, 2.0, 0.0]), torch.tensor([0.0, 0.0, 0.0])),
             torch.tensor([0.0, 2.0, 0.0]), "expected_relu_input with gamma = 0 (a constant pre-activation)",
             inputs={"beta": [-1.0, 2.0, 0.0], "gamma": [0.0, 0.0, 0.0]},
             hint="sigma == 0: x is the constant beta, so E[ReLU(x)] = max(beta, 0); avoid 0 / 0 (torch.where)")
assert_close(expected_relu_input(torch.tensor([-60.0, 60.0]), torch.tensor([1.0, 1.0])), torch.tensor([0.0, 60.0]),
             "expected_relu_input far from 0 (beta / sigma = ±60)", atol=1e-6,
             inputs={"beta": [-60.0, 60.0], "gamma": 1},
             hint="no NaN or inf for large |beta / sigma|: use the cdf, not exp of a large number")
assert_dtype(expected_relu_input(beta.half(), gamma.half()), torch.float16, "expected_relu_input of float16 inputs",
             hint="compute in float32, return beta's dtype")
assert_not_modified(expected_relu_input, torch.tensor([0.0, 1.0, -1.0]), torch.tensor([1.0, -1.0, 2.0]))
### BEGIN HIDDEN TESTS
from autograder.checks.lab5_adaround import check_expected_relu_input
check_expected_relu_input(expected_relu_input)
### END HIDDEN TESTS

# %% [markdown] nbgrader={"grade": false, "grade_id": "corrected_bias_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Correcting the bias
# $b' = b - \bar\varepsilon\, \mathbb{E}[x]$ with $\bar\varepsilon = \widetilde W - W$, shape
# $[C_\text{out}, C_\text{in}]$ for a linear layer. In a conv, output channel $o$ sees input channel $j$ through all
# $k_h k_w$ taps, each with mean $\mathbb{E}[x_j]$ (padding aside), so $\bar\varepsilon_{oj} = \sum_{u, v}
# \varepsilon_{o j u v}$: **sum** over the spatial axes, then the matrix–vector product. A layer without a bias gets
# one (zeros minus the shift).

# %% nbgrader={"grade": false, "grade_id": "corrected_bias", "locked": false, "schema_version": 3, "solution": true, "task": false}
def corrected_bias(bias: torch.Tensor | None, w: torch.Tensor, w_q: torch.Tensor,
                   expected_input: torch.Tensor) -> torch.Tensor:
    """The bias that cancels the mean output shift of a quantized layer: bias - (w_q - w) E[x].

    Args:
        bias: float tensor [C_out], or None (a layer without bias: zeros).
        w, w_q: float tensors [C_out, C_in, ...], the float weight and the quantized (dequantized) weight.
        expected_input: float tensor [C_in], E[x] per input channel.
    Returns:
        tensor [C_out] in bias's dtype (w's dtype when bias is None), computed in float32:
        bias - eps @ expected_input, with eps = w_q - w summed over the kernel's spatial axes (dims >= 2).
    Raises:
        TypeError for non-float tensors; ValueError for mismatched shapes. Inputs are not modified.
    """
    ### BEGIN SOLUTION
    check_float_tensor(w, "w", nonempty=True)
    check_float_tensor(w_q, "w_q", nonempty=True)
    check_float_tensor(expected_input, "expected_input")
    if w.ndim < 2 or w_q.shape != w.shape or tuple(expected_input.shape) != (w.shape[1],):
        raise ValueError(f"w and w_q must be the same [C_out, C_in, ...] and expected_input [C_in], got "
                         f"{tuple(w.shape)}, {tuple(w_q.shape)}, {tuple(expected_input.shape)}")
    if bias is None:
        b, dtype = torch.zeros(w.shape[0]), w.dtype
    else:
        check_float_tensor(bias, "bias")
        if tuple(bias.shape) != (w.shape[0],):
            raise ValueError(f"bias must have shape [{w.shape[0]}], got {tuple(bias.shape)}")
        b, dtype = bias.detach().float(), bias.dtype
    eps = w_q.detach().float() - w.detach().float()
    if eps.ndim > 2:
        eps = eps.sum(dim=tuple(range(2, eps.ndim)))       # every kernel tap of input channel j sees E[x_j]
    return (b - eps @ expected_input.detach().float()).to(dtype)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_corrected_bias", "locked": true, "points": 8, "schema_version": 3, "solution": false, "task": false}
bias = torch.tensor([0.5, -1.0])
w = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
w_q = w + torch.tensor([[0.1, -0.2], [0.0, 0.3]])           # quantization error eps = w_q - w
mean_x = torch.tensor([2.0, 1.0])
assert_close(corrected_bias(bias, w, w_q, mean_x), torch.tensor([0.5, -1.3]), "corrected_bias of a linear layer",
             atol=1e-6, inputs={"bias": bias, "w": w, "w_q": w_q, "expected_input": mean_x},
             hint="the quantized layer's mean output is too large by eps @ E[x] with eps = w_q - w: subtract it "
                  "(bias - (w_q - w) @ E[x]; w - w_q flips the sign)")
g = torch.Generator().manual_seed(2)
x = torch.rand(4096, 6, generator=g) * torch.tensor([0.5, 1.0, 2.0, 0.0, 3.0, 1.5])
w6 = torch.randn(3, 6, generator=g)
w6_q = (w6 * 2).round() / 2
b6 = corrected_bias(torch.zeros(3), w6, w6_q, x.mean(dim=0))
assert_close((x @ w6_q.T + b6).mean(dim=0), (x @ w6.T).mean(dim=0), "mean output of the corrected quantized layer vs "
             "the float layer's (empirical E[x] from 4,096 rows)", atol=1e-4,
             inputs={"w": "[3, 6]", "w_q": "w rounded to a grid of 0.5", "expected_input": "x.mean(dim=0)"},
             hint="bias - eps @ E[x] makes E[w_q x + b'] = E[w x + b] exactly")
conv, conv_q = torch.randn(2, 3, 3, 3, generator=g), torch.randn(2, 3, 3, 3, generator=g)
channel_means = torch.tensor([1.0, -2.0, 0.5])
constant = channel_means.reshape(1, 3, 1, 1).expand(1, 3, 5, 5)  # every pixel of channel j equals E[x_j]
b_conv = corrected_bias(torch.tensor([0.1, 0.2]), conv, conv_q, channel_means)
assert_close(nn.functional.conv2d(constant, conv_q, b_conv),
             nn.functional.conv2d(constant, conv, torch.tensor([0.1, 0.2])),
             "a conv layer: conv(E[x], w_q) + corrected bias vs conv(E[x], w) + bias", rtol=1e-5, atol=1e-5,
             inputs={"w, w_q": "[2, 3, 3, 3]", "expected_input": channel_means},
             hint="each output channel sees input channel j through all kh·kw taps: sum eps over the spatial axes "
                  "(dims 2, 3), not the mean, then @ E[x]")
no_bias = corrected_bias(None, w, w_q, mean_x)
assert_close(no_bias, torch.tensor([0.0, -0.3]), "corrected_bias(None, ...) starts from a zero bias", atol=1e-6,
             inputs={"bias": None, "w": w, "w_q": w_q, "expected_input": mean_x})
assert_dtype(corrected_bias(bias.half(), w, w_q, mean_x), torch.float16, "corrected_bias with a float16 bias",
             hint="return the bias's dtype (w's when bias is None)")
assert_not_modified(corrected_bias, torch.tensor([0.5, -1.0]), torch.tensor([[1.0, 2.0], [3.0, 4.0]]),
                    torch.tensor([[1.1, 1.8], [3.0, 4.3]]), torch.tensor([2.0, 1.0]))
### BEGIN HIDDEN TESTS
from autograder.checks.lab5_adaround import check_corrected_bias
check_corrected_bias(corrected_bias)
### END HIDDEN TESTS

# %% [markdown] nbgrader={"grade": false, "grade_id": "part2_experiment_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Experiment: where the means come from, and what the correction buys
# `lowbit.quant.bias_correction.correct_biases` applies your `corrected_bias` to every layer of a quantized model:
# **empirically** with $\mathbb{E}[x]$ measured on 256 calibration images from the training set, or **analytically**
# from the BatchNorms of the unfolded model (your `expected_relu_input` of each BN's $\beta$, $\gamma$ — divided by
# the CLE scales when the model was equalized; `conv1`'s input, the image, has no BN before it and is left alone).
# First the two estimates of $\mathbb{E}[x]$ side by side. The analytic one ignores the max pooling between the
# layers (the max of a window is larger than one ReLU output), so it underestimates: one reason the empirical
# correction usually does better.

# %% nbgrader={"grade": false, "grade_id": "part2_means", "locked": true, "schema_version": 3, "solution": false, "task": false}
from lowbit.quant import bias_correction

BC_FUNCTIONS = {"expected_relu_input": expected_relu_input, "corrected_bias": corrected_bias}
calib_images, _ = lowbit.data.calibration_batch(16 if lowbit.GRADING else 256)
empirical_means = bias_correction.input_means(folded, calib_images)
analytic_means = bias_correction.analytic_input_means(folded, model, expected_fn=expected_relu_input)
for name, analytic in analytic_means.items():
    measured = empirical_means[name]
    correlation = float(torch.corrcoef(torch.stack([measured, analytic]))[0, 1])
    print(f"{name}: E[x] per input channel, measured mean {float(measured.mean()):.3f}, analytic mean "
          f"{float(analytic.mean()):.3f}; correlation {correlation:.3f}")

# %% [markdown] nbgrader={"grade": false, "grade_id": "part2_accuracy_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# Now the accuracy, weights only: rounding to nearest, then with the empirical and with the analytic correction,
# at W4 per tensor and W3 per channel, with and without CLE (Part 4 adds W4 and W2 per channel). The correction
# fixes only the *mean* of each output: expect it to matter where the rounding errors are large and biased.

# %% nbgrader={"grade": false, "grade_id": "part2_accuracy", "locked": true, "schema_version": 3, "solution": false, "task": false}
bc_accuracy = {}
print(f"{'setting':>22} {'nearest':>9} {'+ empirical':>12} {'+ analytic':>11}")
for bits, granularity in ((4, "tensor"), (3, "channel")):
    for label, net in (("BN-folded", folded), ("CLE", equalized)):
        quantized = ptq.quantize_weights(net, bits, granularity=granularity)
        nearest = cle_accuracy.get((bits, granularity, "folded" if net is folded else "cle"))   # from Part 1
        results = [accuracy_of(quantized) if nearest is None else nearest,
                   accuracy_of(bias_correction.correct_biases(net, quantized, images=calib_images,
                                                              functions=BC_FUNCTIONS)),
                   accuracy_of(bias_correction.correct_biases(net, quantized, bn_model=model, functions=BC_FUNCTIONS))]
        bc_accuracy[bits, granularity, label] = results
        print(f"{f'W{bits} per {granularity}, {label}':>22} " + " ".join(f"{100 * a:9.2f} %" for a in results))

# %% [markdown] nbgrader={"grade": false, "grade_id": "part3_intro", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ## Part 3 — AdaRound
#
# Rounding to nearest minimizes each weight's own error $|w - \widetilde w|$. What matters is the layer's output:
# Nagel, Amjad, van Baalen, Louizos & Blankevoort (2020, *Up or Down? Adaptive Rounding for Post-Training
# Quantization*, ICML) show with a second-order expansion of the task loss that the errors of different weights
# interact, and that choosing for each weight whether to round **down or up** — a binary choice per weight — to
# minimize the **layer's output error** on a little calibration data does much better: ResNet-18 at 4-bit weights
# goes from 23.99 % (nearest) to 68.71 % (AdaRound) against 69.68 % in FP32, no retraining.
#
# Per layer, with per-channel scale $s$ and the grid kept ($\lfloor w/s \rfloor$ plus 0 or 1), AdaRound learns a
# continuous $V$ per weight and optimizes
#
# $$ \min_V\; \Big\| f_a\big(\widetilde W x + b\big) - f_a(W x + b) \Big\|_F^2
#    + \lambda \sum_{ij} \Big(1 - |2 h(V_{ij}) - 1|^{\beta}\Big),
#    \qquad \widetilde W = s \cdot \operatorname{clamp}\big(\lfloor W/s \rfloor + h(V),\, q_\min,\, q_\max\big), $$
#
# where $f_a$ is the activation after the layer (ReLU for the CNN's convs), $x$ the layer's input **from the already
# quantized layers before it** (so it can compensate their errors) and $h$ the *rectified sigmoid*
#
# $$ h(V) = \operatorname{clip}\big(\sigma(V)\,(\zeta - \gamma) + \gamma,\; 0,\; 1\big),
#    \qquad \zeta = 1.1,\ \gamma = -0.1. $$
#
# Stretched past $[0, 1]$ and clipped, $h$ reaches 0 and 1 **exactly** for finite $V$ (a plain sigmoid never does)
# and keeps a non-vanishing gradient near them. At the end each weight rounds up where $h(V) \ge 1/2$, i.e.
# $V \ge 0$. The constants are AIMET's defaults (Qualcomm's `aimet_torch` AdaRound, the paper's too): $\zeta = 1.1$,
# $\gamma = -0.1$, $\lambda = 0.01$, $\beta$ from 20 to 2 after a 20 % warm start.

# %% nbgrader={"grade": false, "grade_id": "rectified_sigmoid", "locked": false, "schema_version": 3, "solution": true, "task": false}
def rectified_sigmoid(v: torch.Tensor, zeta: float = 1.1, gamma: float = -0.1) -> torch.Tensor:
    """AdaRound's soft rounding offset h(V) = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1).

    Args:
        v: float tensor of any shape (one V per weight). zeta > 1, gamma < 0: the stretch (AIMET: 1.1 and -0.1).
    Returns:
        h in [0, 1], v's shape and dtype (computed in float32), differentiable in v.
    Raises:
        TypeError if v is not a floating-point tensor. v is not modified.
    """
    ### BEGIN SOLUTION
    check_float_tensor(v, "v")
    stretched = torch.sigmoid(v.float()) * (zeta - gamma) + gamma
    return torch.clamp(stretched, 0.0, 1.0).to(v.dtype)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_rectified_sigmoid", "locked": true, "points": 6, "schema_version": 3, "solution": false, "task": false}
v = torch.tensor([-10.0, -3.0, -1.0, 0.0, 1.0, 3.0, 10.0])
assert_close(rectified_sigmoid(v), torch.tensor([0.0, 0.0, 0.222730, 0.5, 0.777270, 1.0, 1.0]), "rectified_sigmoid(v)",
             atol=1e-5, inputs={"v": v},
             hint="h = clamp(sigmoid(v) · (zeta - gamma) + gamma, 0, 1) with zeta = 1.1, gamma = -0.1; swapping them "
                  "gives 1 - h (0.777 at v = -1), forgetting the clamp leaves values outside [0, 1]")
assert_close(rectified_sigmoid(torch.tensor([1.0]), zeta=1.5, gamma=-0.5), torch.tensor([0.962117]),
             "rectified_sigmoid(1, zeta=1.5, gamma=-0.5)", atol=1e-5, inputs={"v": 1.0, "zeta": 1.5, "gamma": -0.5},
             hint="use the zeta and gamma arguments, not the constants 1.1 and -0.1")
assert_gradient_close(rectified_sigmoid, v, wrt=[0], upstream=torch.ones(7),
                      expected=[torch.tensor([0.0, 0.0, 0.235934, 0.3, 0.235934, 0.0, 0.0])],
                      what="gradient of rectified_sigmoid", atol=1e-5,
                      hint="d h / d v = sigmoid'(v) · (zeta - gamma) where 0 < h < 1, and 0 where h is clipped "
                           "(torch.clamp does both; no .detach(), no torch.no_grad())")
assert_dtype(rectified_sigmoid(torch.zeros(2, 3).half()), torch.float16, "rectified_sigmoid of a float16 [2, 3] tensor",
             hint="compute in float32, return v's dtype")
assert_shape(rectified_sigmoid(torch.zeros(2, 3)), (2, 3), "rectified_sigmoid of a [2, 3] tensor")
assert_not_modified(rectified_sigmoid, torch.tensor([-1.0, 0.0, 2.0]))
### BEGIN HIDDEN TESTS
from autograder.checks.lab5_adaround import check_rectified_sigmoid
check_rectified_sigmoid(rectified_sigmoid)
### END HIDDEN TESTS

# %% [markdown] nbgrader={"grade": false, "grade_id": "init_v_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Starting from the float weights
# AdaRound starts where the float weight is: $h(V)$ equal to each weight's fractional part on the grid,
# $\text{rest} = w/s - \lfloor w/s \rfloor \in [0, 1)$ (for negative weights too: $-0.25 \mapsto 0.75$). Inverting
# $h$ on $(0, 1)$:
#
# $$ V = -\log\Big(\frac{\zeta - \gamma}{\text{rest} - \gamma} - 1\Big). $$
#
# Because $\gamma < 0 < 1 < \zeta$ the logarithm's argument stays positive and finite for every rest in $[0, 1]$:
# $V$ is finite at rest $= 0$ (about $-2.40$) and just below 1 (float rounding can make $w/s - \lfloor w/s \rfloor$
# exactly 1.0 for a tiny negative $w$ — clamp rest to $[0, 1]$). `scale` is one number or one per output channel
# (axis 0).

# %% nbgrader={"grade": false, "grade_id": "init_v", "locked": false, "schema_version": 3, "solution": true, "task": false}
def init_v(w: torch.Tensor, scale: float | torch.Tensor, zeta: float = 1.1, gamma: float = -0.1) -> torch.Tensor:
    """V such that rectified_sigmoid(V) equals each weight's fractional part on the grid.

    Args:
        w: float tensor [C, ...] (a layer's weight).
        scale: a float, a 0-dim tensor, or a tensor [C] (one scale per output channel, along axis 0); > 0.
        zeta, gamma: the stretch of rectified_sigmoid.
    Returns:
        float32 tensor of w's shape: V = -log((zeta - gamma) / (rest - gamma) - 1) with
        rest = w / scale - floor(w / scale) in [0, 1); finite everywhere.
    Raises:
        TypeError for a non-float w; ValueError for a scale <= 0 or of the wrong shape. w is not modified.
    """
    ### BEGIN SOLUTION
    check_float_tensor(w, "w")
    s = torch.as_tensor(scale, dtype=torch.float32).detach()
    if s.ndim > 1 or (s.ndim == 1 and (w.ndim == 0 or s.shape[0] != w.shape[0])):
        raise ValueError(f"scale must be a number or a tensor [C] with C = w.shape[0], got shape {tuple(s.shape)}")
    if not bool((s > 0).all()):
        raise ValueError(f"scale must be > 0, got {s}")
    if s.ndim == 1:
        s = s.reshape([-1] + [1] * (w.ndim - 1))              # one scale per output channel
    ratio = w.detach().float() / s
    rest = (ratio - torch.floor(ratio)).clamp(0.0, 1.0)
    return -torch.log((zeta - gamma) / (rest - gamma) - 1)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_init_v", "locked": true, "points": 8, "schema_version": 3, "solution": false, "task": false}
w = torch.tensor([0.0, 0.125, 0.25, 0.5, -0.125])           # w / 0.5 = 0, 0.25, 0.5, 1, -0.25: rest 0, .25, .5, 0, .75
assert_close(init_v(w, 0.5), torch.tensor([-2.397895, -0.887303, 0.0, -2.397895, 0.887303]), "init_v(w, scale=0.5)",
             atol=1e-5, inputs={"w": w, "scale": 0.5},
             hint="rest = w / scale - floor(w / scale) (in [0, 1), also for negative w; not w - round(w)); "
                  "V = -log((zeta - gamma) / (rest - gamma) - 1), the inverse of h; swapping zeta and gamma flips "
                  "V's sign")
rest = torch.tensor([0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.999])
v = init_v(rest * 0.02, 0.02)
assert_close(torch.clamp(torch.sigmoid(v) * 1.2 - 0.1, 0, 1), rest, "h(init_v(w, s)) vs the fractional part of w / s",
             atol=1e-4, inputs={"w": rest * 0.02, "scale": 0.02},
             hint="init_v inverts h = sigmoid(V) · 1.2 - 0.1 on (0, 1): AdaRound starts from the float weight")
edge = init_v(torch.tensor([-1e-9, 0.0, 0.0999999]), 0.1)
assert bool(torch.isfinite(edge).all()), (f"init_v must be finite for every fractional part in [0, 1), also very "
                                          f"close to 1 (w = -1e-9, 0.0999999 with scale 0.1); got {edge}")
print("✓ init_v is finite at fractional parts 0 and near 1")
w2 = torch.tensor([[0.3, 0.6], [0.3, 0.6]])
assert_close(torch.clamp(torch.sigmoid(init_v(w2, torch.tensor([0.5, 0.25]))) * 1.2 - 0.1, 0, 1),
             torch.tensor([[0.6, 0.2], [0.2, 0.4]]), "init_v with one scale per output channel [0.5, 0.25]", atol=1e-4,
             inputs={"w": w2, "scale": [0.5, 0.25]},
             hint="scale[c] divides row c (output channel, axis 0): reshape it to [C, 1, ...], not along the last axis")
assert_dtype(init_v(w.half(), 0.5), torch.float32, "init_v of a float16 weight", hint="V is float32 whatever w's dtype")
try:
    init_v(w, 0.0)
except ValueError:
    print("✓ init_v rejects scale = 0 with ValueError")
else:
    raise AssertionError("init_v(w, scale=0.0) must raise ValueError: a scale must be > 0")
assert_not_modified(init_v, torch.tensor([0.0, 0.125, -0.3]), torch.tensor(0.5))
### BEGIN HIDDEN TESTS
from autograder.checks.lab5_adaround import check_init_v
check_init_v(init_v)
### END HIDDEN TESTS

# %% [markdown] nbgrader={"grade": false, "grade_id": "regularizer_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Pushing h to 0 or 1
# The reconstruction loss alone is happy with soft values ($h = 0.37$): they are not a rounding. The regularizer
#
# $$ f_\text{reg}(V) = \sum_{ij} 1 - |2 h(V_{ij}) - 1|^{\beta} $$
#
# is 0 when every $h$ is 0 or 1 and 1 per weight at $h = 1/2$. With a large $\beta$ it is flat except near 0 and 1,
# so soft values move freely; as $\beta$ shrinks every $h$ feels a pull towards the nearer end. $\beta$ is not an
# integer during annealing, so the absolute value matters: a fractional power of a negative number is NaN.

# %% nbgrader={"grade": false, "grade_id": "rounding_regularizer", "locked": false, "schema_version": 3, "solution": true, "task": false}
def rounding_regularizer(v: torch.Tensor, beta: float, zeta: float = 1.1, gamma: float = -0.1) -> torch.Tensor:
    """AdaRound's rounding regularizer: sum over every element of 1 - |2 h(V) - 1| ** beta.

    Args:
        v: float tensor of any shape. beta: a number > 0 (need not be an integer). zeta, gamma: as rectified_sigmoid.
    Returns:
        0-dim tensor in v's dtype (computed in float32), differentiable in v; 0 exactly when every h is 0 or 1.
    Raises:
        TypeError for a non-float v; ValueError for beta <= 0. v is not modified.
    """
    ### BEGIN SOLUTION
    check_float_tensor(v, "v")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    h = rectified_sigmoid(v.float(), zeta, gamma)
    return (1 - (2 * h - 1).abs() ** beta).sum().to(v.dtype)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_rounding_regularizer", "locked": true, "points": 8, "schema_version": 3, "solution": false, "task": false}
v = torch.tensor([-10.0, 10.0, 0.0, -0.887303, 1.609438])    # h = 0, 1, 0.5, 0.25, 0.9
# terms 1 - |2h - 1|^2.5: 0, 0, 1, 1 - 0.5^2.5, 1 - 0.8^2.5
assert_close(rounding_regularizer(v, 2.5), torch.tensor(2.250790), "rounding_regularizer(v, beta=2.5)", atol=1e-5,
             inputs={"v": v, "h(v)": [0.0, 1.0, 0.5, 0.25, 0.9], "beta": 2.5},
             hint="sum of 1 - |2 h - 1| ** beta: without the absolute value a non-integer power of a negative "
                  "number is NaN (h < 0.5); a mean instead of the sum gives 0.45")
assert_gradient_close(rounding_regularizer, v, 2.5, wrt=[0],
                      expected=[torch.tensor([0.0, 0.0, 0.0, 0.438259, -0.596285])],
                      what="gradient of rounding_regularizer(v, beta=2.5)", atol=1e-4,
                      hint="build it from rectified_sigmoid with torch operations, so that autograd reaches v; the "
                           "gradient pushes h < 0.5 down and h > 0.5 up, and is 0 where h is clipped at 0 or 1")
assert_close(rounding_regularizer(torch.full((2, 3), 20.0), 2.0), torch.tensor(0.0),
             "rounding_regularizer when every h is 1", atol=1e-6, inputs={"v": "[2, 3] of 20", "beta": 2.0},
             hint="0 when every h is exactly 0 or 1: 1 - |2h - 1| ** beta, not |2h - 1| ** beta")
assert_shape(rounding_regularizer(torch.zeros(2, 3), 20.0), (), "rounding_regularizer of a [2, 3] tensor (a 0-dim sum)")
assert_close(rounding_regularizer(torch.zeros(2, 3), 20.0), torch.tensor(6.0), "rounding_regularizer(zeros [2, 3], 20)",
             inputs={"v": "[2, 3] of 0", "beta": 20.0}, hint="h(0) = 0.5: each term is 1, summed over all 6 elements")
assert_dtype(rounding_regularizer(v.half(), 2.5), torch.float16, "rounding_regularizer of float16 v")
assert_not_modified(rounding_regularizer, torch.tensor([-1.0, 0.0, 2.0]), 2.5)
### BEGIN HIDDEN TESTS
from autograder.checks.lab5_adaround import check_rounding_regularizer
check_rounding_regularizer(rounding_regularizer)
### END HIDDEN TESTS

# %% [markdown] nbgrader={"grade": false, "grade_id": "beta_schedule_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Annealing β
# AIMET anneals $\beta$ linearly from 20 (a gentle regularizer: soft values are free to move) down to 2 (a strong
# pull to 0 or 1), after a warm start of 20 % of the iterations during which only the reconstruction loss is
# optimized:
#
# $$ \beta(t) = \begin{cases} \beta_\text{start} & t < w T \\
#    \beta_\text{end} + (\beta_\text{start} - \beta_\text{end})
#    \max\!\Big(0,\, 1 - \dfrac{t - wT}{T - wT}\Big) & \text{else}
#    \end{cases} \qquad (w = 0.2,\ \beta_\text{start} = 20,\ \beta_\text{end} = 2). $$

# %% nbgrader={"grade": false, "grade_id": "beta_schedule", "locked": false, "schema_version": 3, "solution": true, "task": false}
def beta_schedule(step: int, total: int, warm_start: float = 0.2, start: float = 20.0, end: float = 2.0) -> float:
    """The regularizer's exponent beta at iteration `step` of `total` (AIMET's linear annealing).

    Args:
        step: int, 0 <= step <= total. total: int >= 1. warm_start: the fraction of iterations without regularizer.
        start, end: beta at the end of the warm start and at the last step.
    Returns:
        float: `start` while step < warm_start * total; afterwards
        end + (start - end) * max(0, 1 - (step - warm_start * total) / (total - warm_start * total)).
    Raises:
        ValueError for total < 1 or a step outside [0, total].
    """
    ### BEGIN SOLUTION
    if total < 1 or not 0 <= step <= total:
        raise ValueError(f"need total >= 1 and 0 <= step <= total, got step={step}, total={total}")
    warm = warm_start * total
    if step < warm:
        return float(start)
    progress = (step - warm) / (total - warm)
    return float(end + (start - end) * max(0.0, 1.0 - progress))
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_beta_schedule", "locked": true, "points": 8, "schema_version": 3, "solution": false, "task": false}
steps = [0, 10, 19, 20, 40, 60, 80, 100]
got = [beta_schedule(step, 100) for step in steps]
assert_close(torch.tensor(got), torch.tensor([20.0, 20.0, 20.0, 20.0, 15.5, 11.0, 6.5, 2.0]),
             "beta_schedule(step, total=100) at steps " + str(steps), atol=1e-6, inputs={"steps": steps, "total": 100},
             hint="20 during the warm start (step < 0.2 · total), then linear down to 2 at step = total, "
                  "measured from the end of the warm start: beta anneals from 20 (gentle) to 2 (strong), "
                  "not from 2 to 20")
assert_close(torch.tensor(beta_schedule(50, 100, warm_start=0.0, start=10.0, end=0.0)), torch.tensor(5.0),
             "beta_schedule(50, 100, warm_start=0, start=10, end=0)", inputs={"warm_start": 0.0, "start": 10, "end": 0},
             hint="use the warm_start, start and end arguments")
assert_close(torch.tensor(beta_schedule(6, 10)), torch.tensor(11.0), "beta_schedule(6, total=10)", atol=1e-6,
             inputs={"step": 6, "total": 10})
assert isinstance(beta_schedule(3, 10), float), \
    f"beta_schedule must return a Python float, got {type(beta_schedule(3, 10)).__name__}"
for step, total in ((11, 10), (-1, 10), (0, 0)):
    try:
        beta_schedule(step, total)
    except ValueError:
        pass
    else:
        raise AssertionError(f"beta_schedule({step}, {total}) must raise ValueError (0 <= step <= total, total >= 1)")
print("✓ beta_schedule rejects steps outside [0, total] and total < 1")
### BEGIN HIDDEN TESTS
from autograder.checks.lab5_adaround import check_beta_schedule
check_beta_schedule(beta_schedule)
### END HIDDEN TESTS

# %% [markdown] nbgrader={"grade": false, "grade_id": "adaround_layer_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### One layer, optimized
# `adaround_layer` puts the pieces together on plain tensors: a conv's weight flattened to $[C_\text{out}, K]$ with
# its inputs as im2col rows $[N, K]$ (the pipeline does that), per-channel scales $[C_\text{out}]$, and the float
# layer's outputs **after** its activation as targets. Each of the `iterations` Adam steps (learning rate `lr`, on
# $V$ only) draws `batch_size` rows with `torch.randint(N, (batch_size,), generator=g)`,
# `g = torch.Generator().manual_seed(seed)` created once, and minimizes
# `((act(x @ W̃.T + b) - t) ** 2).mean() + reg_weight * rounding_regularizer(V, β)`, with $\beta$ from your
# `beta_schedule` and the regularizer left out during the warm start (`step < 0.2 * iterations`). It returns the
# hard rounding $\lfloor w/s \rfloor + [V \ge 0]$, clamped to the signed range, as int64. Use your own
# `rectified_sigmoid`, `init_v`, `rounding_regularizer` and `beta_schedule`.

# %% nbgrader={"grade": false, "grade_id": "adaround_layer", "locked": false, "schema_version": 3, "solution": true, "task": false}
def adaround_layer(weight: torch.Tensor, scale: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor, bits: int,
                   bias: torch.Tensor | None = None, activation: str = "relu", iterations: int = 200,
                   lr: float = 1e-2, reg_weight: float = 0.01, batch_size: int = 256, seed: int = 0) -> torch.Tensor:
    """AdaRound one layer: learn for each weight whether it rounds down or up (Nagel et al. 2020).

    Args:
        weight: float tensor [C_out, K] (a conv's weight flattened to [C_out, C_in * kh * kw]).
        scale: float tensor [C_out] > 0, one symmetric scale per output channel.
        inputs: float tensor [N, K], the layer's inputs from the already-quantized layers before it.
        targets: float tensor [N, C_out], the float layer's outputs after `activation`.
        bits: weight bits; integers are clamped to [-2^(bits-1), 2^(bits-1) - 1].
        bias: float tensor [C_out] or None. activation: "relu" or "none".
        iterations: Adam steps on V. lr: Adam's learning rate. reg_weight: the regularizer's weight lambda.
        batch_size: rows drawn per step with torch.randint(N, (batch_size,), generator=g),
            g = torch.Generator().manual_seed(seed).
    Returns:
        int64 tensor [C_out, K]: floor(weight / scale) + (V >= 0), clamped to the signed range.
    Raises:
        TypeError for non-float tensors; ValueError for mismatched shapes or an unknown activation.
        Inputs are not modified.
    """
    ### BEGIN SOLUTION
    for name, x in (("weight", weight), ("inputs", inputs), ("targets", targets)):
        check_float_tensor(x, name, nonempty=True)
    out_channels, k = weight.shape
    if inputs.ndim != 2 or inputs.shape[1] != k or targets.shape != (inputs.shape[0], out_channels):
        raise ValueError(f"need inputs [N, {k}] and targets [N, {out_channels}], got {tuple(inputs.shape)} and "
                         f"{tuple(targets.shape)}")
    if activation not in ("relu", "none"):
        raise ValueError(f"activation must be 'relu' or 'none', got {activation!r}")
    q_min, q_max = quantized_range(bits, signed=True)
    w, x, t = weight.detach().float(), inputs.detach().float(), targets.detach().float()
    s = torch.as_tensor(scale, dtype=torch.float32).detach()
    s = s.reshape(-1, 1) if s.ndim == 1 else s                # one scale per output channel (row)
    b = None if bias is None else bias.detach().float()
    base = torch.floor(w / s)
    with torch.enable_grad():
        v = init_v(w, s.reshape(-1) if s.ndim else s).requires_grad_(True)
        optimizer = torch.optim.Adam([v], lr=lr)
        generator = torch.Generator().manual_seed(seed)
        for step in range(iterations):
            rows = torch.randint(x.shape[0], (batch_size,), generator=generator)
            w_soft = s * torch.clamp(base + rectified_sigmoid(v), q_min, q_max)
            out = x[rows] @ w_soft.T
            if b is not None:
                out = out + b
            if activation == "relu":
                out = torch.relu(out)                         # reconstruct after the activation
            loss = ((out - t[rows]) ** 2).mean()
            if step >= 0.2 * iterations:                      # no regularizer during the warm start
                loss = loss + reg_weight * rounding_regularizer(v, beta_schedule(step, iterations))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return torch.clamp(base + (v.detach() >= 0).float(), q_min, q_max).to(torch.int64)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_adaround_layer", "locked": true, "points": 18, "schema_version": 3, "solution": false, "task": false}
g = torch.Generator().manual_seed(3)
w_layer = torch.randn(8, 24, generator=g) * 0.3
b_layer = torch.randn(8, generator=g) * 0.1
x_layer = torch.relu(torch.randn(1024, 24, generator=g))
t_layer = torch.relu(x_layer @ w_layer.T + b_layer)              # float outputs after the ReLU
s_layer = w_layer.abs().amax(dim=1) / 3                          # 3 bits: integers in [-4, 3]
q = adaround_layer(w_layer, s_layer, x_layer, t_layer, bits=3, bias=b_layer, iterations=300)
assert_dtype(q, torch.int64, "adaround_layer's result", hint="return integers: .to(torch.int64)")
assert_shape(q, (8, 24), "adaround_layer's result")
floor = torch.floor(w_layer / s_layer[:, None])
assert bool(((q == floor.clamp(-4, 3)) | (q == (floor + 1).clamp(-4, 3))).all()), \
    "every integer weight must be floor(w / s) or floor(w / s) + 1 (then clamped to [-4, 3]): AdaRound only " \
    "chooses the rounding direction; hard rounding at the end is floor + (V >= 0)"
print("✓ adaround_layer: every weight rounded down or up, within [-4, 3]")
nearest = torch.round(w_layer / s_layer[:, None]).clamp(-4, 3)


def output_error(integers, targets, bias=b_layer, activation=torch.relu):
    """MSE between activation(x W_q^T + b) with W_q = s · integers and the targets."""
    return float(((activation(x_layer @ (s_layer[:, None] * integers.float()).T + bias) - targets) ** 2).mean())


changed = float((q != nearest).float().mean())
print(f"output MSE after the ReLU: nearest {output_error(nearest, t_layer):.5f}, your AdaRound "
      f"{output_error(q, t_layer):.5f} ({100 * changed:.1f} % of the weights rounded differently from nearest)")
assert output_error(q, t_layer) < 0.9 * output_error(nearest, t_layer), \
    "AdaRound's output error (after the ReLU) must be clearly below rounding to nearest's; likely mistakes: the " \
    "loss compares the outputs before the ReLU with targets after it, the regularizer is never added (then the " \
    "hard rounding is nearest's), or the final rounding is not floor + (V >= 0)"
assert torch.equal(q, adaround_layer(w_layer, s_layer, x_layer, t_layer, bits=3, bias=b_layer, iterations=300)), \
    "adaround_layer with the same seed must give the same result: draw rows with torch.Generator().manual_seed(seed)"
t_linear = x_layer @ w_layer.T
q_linear = adaround_layer(w_layer, s_layer, x_layer, t_linear, bits=3, activation="none", iterations=300)
linear = {"bias": torch.zeros(8), "activation": lambda y: y}
print(f"output MSE without activation or bias: nearest {output_error(nearest, t_linear, **linear):.5f}, your AdaRound "
      f"{output_error(q_linear, t_linear, **linear):.5f}")
assert output_error(q_linear, t_linear, **linear) < 0.95 * output_error(nearest, t_linear, **linear), \
    "adaround_layer(..., activation='none', bias=None): the output error must be below nearest rounding's " \
    "(activation='none' means no ReLU on the layer's output)"
print("✓ adaround_layer beats rounding to nearest with and without the ReLU, reproducibly")
start = adaround_layer(w_layer, s_layer, x_layer, t_layer, bits=3, bias=b_layer, iterations=0)
assert_equal_int(start, torch.floor(w_layer / s_layer[:, None] + 0.5).clamp(-4, 3),
                 "adaround_layer(..., iterations=0): no optimization, so floor(w / s) + (init_v >= 0)",
                 inputs={"weight": "[8, 24]", "scale": "[8]", "iterations": 0},
                 hint="V starts at init_v(weight, scale) (h(V) = the fractional part), so with no step the hard "
                      "rounding floor + (V >= 0) is rounding to nearest; V = 0 at the start would round every weight "
                      "up")
assert_not_modified(adaround_layer, w_layer[:2, :4].clone(), s_layer[:2].clone(), x_layer[:64, :4].clone(),
                    t_layer[:64, :2].clone(), 4, iterations=5)
### BEGIN HIDDEN TESTS
from autograder.checks.lab5_adaround import check_adaround_layer
check_adaround_layer(adaround_layer)
### END HIDDEN TESTS

# %% [markdown] nbgrader={"grade": false, "grade_id": "part3_explore_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Explore: from soft to hard
# The rounding explorer runs AdaRound on `conv2` at 3 bits (per-channel scales, its inputs as im2col rows from 256
# calibration images, targets after the ReLU) with **your** `init_v`, `rectified_sigmoid`, `rounding_regularizer`
# and `beta_schedule`, and records $V$ along the way. Move the slider (or press play): during the warm start the
# reconstruction loss alone moves the soft values, and the histogram of $h$ stays spread over $(0, 1)$; as $\beta$
# falls the regularizer pulls every $h$ to 0 or 1 and the fraction of soft weights drops. Beside: how many weights
# round up, how many differ from rounding to nearest, and the layer's output error of the hard rounding at that
# point against nearest's. (A few hundred iterations leave some weights soft; the pipeline below runs more.)

# %% nbgrader={"grade": false, "grade_id": "part3_widget", "locked": true, "schema_version": 3, "solution": false, "task": false}
from lowbit.quant import adaround
from lowbit.quant.granularity import per_channel_qparams
from lowbit.quant.modules import capture

ADAROUND_FUNCTIONS = {"rectified_sigmoid": rectified_sigmoid, "init_v": init_v,
                      "rounding_regularizer": rounding_regularizer, "beta_schedule": beta_schedule}
seen = capture(folded, calib_images, layers=["conv2"])["conv2"]
rows, targets = adaround.layer_rows(folded.conv2, seen.inputs, torch.relu(seen.outputs))
keep = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(0))[:8192]   # 8,192 of 50,176 patches
conv2_weight = folded.conv2.weight.detach().reshape(64, -1)
conv2_scale = per_channel_qparams(conv2_weight, 3).reshape(-1)
explorer = viz.adaround.rounding_explorer(conv2_weight, conv2_scale, rows[keep], targets[keep], bits=3,
                                          bias=folded.conv2.bias.detach(), iterations=20 if lowbit.GRADING else 400,
                                          functions=ADAROUND_FUNCTIONS)

# %% [markdown] nbgrader={"grade": false, "grade_id": "part4_intro", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ## Part 4 — Put together
#
# `lowbit.quant.adaround.adaround_model` AdaRounds the CNN layer by layer with **your** `adaround_layer` (and through
# it your other AdaRound functions): for each layer in turn it takes the layer's inputs from the copy whose earlier
# layers are **already AdaRounded** (so the layer learns to compensate their errors), the targets from the float
# model **after** the ReLU, turns a conv into a matrix product with im2col (every output position of every image a
# row), and keeps a random subset of the rows. Weights per channel, symmetric; activations in float — and, for the
# full pipeline, also at 8 bits (`ptq.ptq(..., w_bits=None, a_bits=8)` on top, min/max observers on the calibration
# images; "A8" in the printout).
#
# **Methods**: rounding to nearest; CLE; CLE + bias correction (empirical); AdaRound; all of them (CLE, then AdaRound,
# then bias correction); AdaRound with the first and last layer kept at 8 bits (the rest at the width named).
#
# **Short settings, for this notebook:** 250 Adam iterations per layer, 256 calibration images, at most 16,384 rows
# per layer (about 4 s per layer on one thread; the grading run does 10). The README's "Lab 5" section lists the
# benchmark's settings and figures (`benchmarks/bench_lab5_accuracy.py`, reference functions), including accuracy
# against the number of iterations.

# %% nbgrader={"grade": false, "grade_id": "part4_setup", "locked": true, "schema_version": 3, "solution": false, "task": false}
from lowbit.results import Row

ITERATIONS = 10 if lowbit.GRADING else 250
MAX_ROWS = 512 if lowbit.GRADING else 16384
BIT_WIDTHS = (4, 3, 2)
METHODS = ("nearest", "CLE", "CLE + BC", "AdaRound", "all: CLE + AdaRound + BC", "AdaRound, first/last at 8 bits")
YOUR_FUNCTIONS = {**CLE_FUNCTIONS, **BC_FUNCTIONS, **ADAROUND_FUNCTIONS, "adaround_layer": adaround_layer}
accuracy, accuracy_a8, seconds = {}, {}, {}
layers = quantizable_layers(folded)
fp32_bits = 32 * sum(p.numel() for p in folded.parameters())


def size_bits(bits: int, first_last: int | None = None) -> int:
    """Deployed size: weights at their width, one fp32 scale and one fp32 bias per output channel."""
    ends = (next(iter(layers)), list(layers)[-1])
    return sum(layer.weight.numel() * (first_last if first_last and name in ends else bits)
               + 2 * 32 * layer.weight.shape[0] for name, layer in layers.items())


def adarounded(net: nn.Module, bits: int, first_last_bits: int | None = None) -> nn.Module:
    return adaround.adaround_model(net, bits, calib_images, iterations=ITERATIONS, functions=YOUR_FUNCTIONS,
                                   first_last_bits=first_last_bits, max_rows=MAX_ROWS)


def run(bits: int) -> None:
    """Every method at `bits`-bit weights: accuracy (FP activations; 8-bit too for "all") and seconds."""
    builders = {
        "nearest": lambda: ptq.quantize_weights(folded, bits),
        "CLE": lambda: ptq.quantize_weights(equalized, bits),
        "CLE + BC": lambda: bias_correction.correct_biases(equalized, ptq.quantize_weights(equalized, bits),
                                                           images=calib_images, functions=YOUR_FUNCTIONS),
        "AdaRound": lambda: adarounded(folded, bits),
        "all: CLE + AdaRound + BC": lambda: bias_correction.correct_biases(
            equalized, adarounded(equalized, bits), images=calib_images, functions=YOUR_FUNCTIONS),
        "AdaRound, first/last at 8 bits": lambda: adarounded(folded, bits, first_last_bits=8),
    }
    known = {("nearest", 4): cle_accuracy.get((4, "channel", "folded")),   # measured in Parts 1 and 2 already
             ("CLE", 4): cle_accuracy.get((4, "channel", "cle")),
             ("nearest", 3): bc_accuracy.get((3, "channel", "BN-folded"), [None])[0],
             ("CLE", 3): bc_accuracy.get((3, "channel", "CLE"), [None])[0],
             ("CLE + BC", 3): bc_accuracy.get((3, "channel", "CLE"), [None, None])[1]}
    for method, build in builders.items():
        start = time.perf_counter()
        net = build()
        seconds[method, bits] = time.perf_counter() - start
        reused = known.get((method, bits))
        accuracy[method, bits] = accuracy_of(net) if reused is None else reused
        line = f"W{bits} {method:>31}: {100 * accuracy[method, bits]:6.2f} %"
        if method.startswith("all"):
            accuracy_a8[method, bits] = accuracy_of(ptq.ptq(net, calib_images, w_bits=None, a_bits=8, progress=False))
            line += f" (A8 {100 * accuracy_a8[method, bits]:6.2f} %)"
        print(f"{line} in {seconds[method, bits]:5.1f} s")
    gap = fp32_accuracy - accuracy["nearest", bits]
    recovered = (accuracy["AdaRound", bits] - accuracy["nearest", bits]) / gap if gap > 0 else float("nan")
    print(f"AdaRound recovers {100 * recovered:.0f} % of the nearest -> FP32 gap at W{bits}")

# %% nbgrader={"grade": false, "grade_id": "part4_w4", "locked": true, "schema_version": 3, "solution": false, "task": false}
run(4)

# %% nbgrader={"grade": false, "grade_id": "part4_w3", "locked": true, "schema_version": 3, "solution": false, "task": false}
run(3)

# %% nbgrader={"grade": false, "grade_id": "part4_w2", "locked": true, "schema_version": 3, "solution": false, "task": false}
run(2)

# %% [markdown] nbgrader={"grade": false, "grade_id": "part4_table_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### The table and the plot

# %% nbgrader={"grade": false, "grade_id": "part4_table", "locked": true, "schema_version": 3, "solution": false, "task": false}
rows = [Row("FP32", fp32_accuracy, bits=32, size_bits=fp32_bits)]
for bits in BIT_WIDTHS:
    for method in METHODS:
        first_last = 8 if method.endswith("8 bits") else None
        rows.append(Row(f"W{bits} {method}", accuracy[method, bits], bits=bits,
                        size_bits=size_bits(bits, first_last)))
print(lowbit.results.table(rows))
with plt.ioff():
    figure, ax = plt.subplots(figsize=(7.5, 3.8), layout="constrained")
for i, method in enumerate(METHODS):
    ax.plot(BIT_WIDTHS, [100 * accuracy[method, b] for b in BIT_WIDTHS], marker="o", color=f"C{i}", label=method)
ax.axhline(100 * fp32_accuracy, color="0.4", linestyle="dashed", linewidth=1, label="FP32")
ax.set_xticks(BIT_WIDTHS, [f"W{b}" for b in BIT_WIDTHS])
ax.invert_xaxis()
ax.set_xlabel("weight bits (per channel; activations in float)")
ax.set_ylabel("test accuracy (%)")
ax.set_title("Post-training quantization of the course CNN, your functions")
ax.legend(fontsize="small", loc="lower left")
display(figure)
plt.close(figure)

# %% [markdown] nbgrader={"grade": false, "grade_id": "part4_qat_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# **The benchmark's figures** (`benchmarks/bench_lab5_accuracy.py`, README "Lab 5" / `benchmarks/RESULTS.md` "Lab 5
# accuracy"): lowbit's reference functions, 1,000 Adam iterations per layer on 1,024 calibration images and up to
# 65,536 rows per layer; embedded test set (FP32 92.67 %), weights per channel, activations in float:
#
# | weights | nearest | CLE + BC | AdaRound | CLE + AdaRound + BC | gap recovered by AdaRound |
# |---|---|---|---|---|---|
# | W4, every layer | 91.20 % | 91.83 % | 92.40 % | 92.23 % | 82 % |
# | W3, every layer | 89.63 % | 90.57 % | 92.40 % | 91.93 % | 91 % |
# | W2, every layer | 16.87 % | 17.13 % | 87.67 % | 87.47 % | 93 % |
# | W2, first/last at 8 bits | 52.40 % | 28.40 % | 91.07 % | 89.93 % | 96 % |
#
# Accuracy against iterations (W3 / W2): 250 iterations 91.97 / 84.83 %, 1,000 92.40 / 87.67 %, 2,000 92.40 /
# 89.60 % — at 3 bits AdaRound stops improving after about 1,000 iterations, at 2 bits it still gains. Your short
# run should land within a point or two of the 250-iteration figures (fewer calibration images and rows).
#
# ### Learned rounding or retraining?
# Lab 3 **retrained** the CNN with the quantizers in place (QAT, LSQ ranges; README "Lab 3", embedded test set,
# weights *and* activations at the width): W4A4 92.53 %, W3A3 91.20 %, W2A2 90.73 %, after 3 epochs over the 6,000
# training images — minutes of training with labels, every weight free to move. AdaRound changes each weight by at
# most one grid step, layer by layer, from 256 unlabelled images in seconds per layer. Compare both with your table:
# at 4 and 3 bits learned rounding comes within a fraction of a point of FP32 and of QAT; at 2 bits, with only four
# levels per weight, the best rounding of the trained weights is no longer enough, and QAT, which can move weights
# across many steps and retrain the BatchNorms, keeps its lead (keeping `conv1` and `fc` at 8 bits closes most of the
# gap). Note that Lab 3's figures also quantize the activations, which makes its comparison conservative.

# %% [markdown] nbgrader={"grade": false, "grade_id": "part5_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ## Part 5 — Wrap-up
#
# Three data-light ways past rounding to nearest, from the same group (Nagel et al. 2019, 2020):
#
# - **CLE** rescales consecutive layers (ReLU is positively homogeneous) so that a per-tensor grid fits every
#   channel: it rescued per-tensor W4 in Part 1, and does next to nothing for a per-channel grid;
# - **bias correction** removes the mean shift $\varepsilon\,\mathbb{E}[x]$ from each output, from calibration data or
#   from the BatchNorm statistics (the mean of a rectified Gaussian): cheap, a small gain where rounding is biased;
# - **AdaRound** learns up-or-down per weight to reconstruct each layer's output after its activation, from inputs
#   of the already quantized layers: seconds per layer on a CPU, and most of the gap to FP32 at 3 and 2 bits.
#
# Your table of Part 4 is the lab's results table.

# %% [markdown] nbgrader={"grade": false, "grade_id": "reflection_intro", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Reflection (graded by hand)
# Answer each in 3–5 sentences, citing numbers from your own results above.

# %% [markdown] nbgrader={"grade": false, "grade_id": "q1_prompt", "locked": true, "schema_version": 3, "solution": false, "task": false}
# **Q1 (5 points).** CLE changed per-tensor W4 a lot and per-channel W4 little (Part 1). Explain both from the box
# plots, and say why the equalized network computes exactly the same function as the folded one before quantization.

# %% [markdown] nbgrader={"grade": true, "grade_id": "q1_answer", "locked": false, "points": 5, "schema_version": 3, "solution": true, "task": false}
# After BatchNorm folding the channel ranges of a layer differ by large factors (the box plots: 12× between the
# widest and the narrowest channel of `conv1`, 3× in `conv2` and `conv3`), so one scale per tensor, set by the widest
# channel, leaves the narrow channels only a few of the 16 levels of 4 bits: per-tensor W4 falls to 84.2 % (FP32
# 92.67 %). After CLE the spreads shrink to 3.2×, 2.0× and 1.7×, and per-tensor W4 recovers to 91.3 %, as good as
# per channel without CLE (91.2 %). Per channel, every channel already has its own scale, so there is little to gain
# (91.2 → 91.8 %): CLE only moves range between a channel of one layer and the matching input channel of the next.
# At 8 bits there is nothing to fix (92.6 % either way). The function is unchanged because ReLU and max pooling are
# positively homogeneous: ReLU(x / s) = ReLU(x) / s for s > 0, so dividing output channel i of the first layer
# (weights and bias) by s_i and multiplying input channel i of the second by s_i cancels exactly — the logits
# changed by 5e-7 of their range, float rounding.

# %% [markdown] nbgrader={"grade": false, "grade_id": "q2_prompt", "locked": true, "schema_version": 3, "solution": false, "task": false}
# **Q2 (5 points).** Bias correction fixes the mean of each output. When did it help in Part 2 and when not? Why does
# the analytic (data-free) correction differ from the empirical one on this network?

# %% [markdown] nbgrader={"grade": true, "grade_id": "q2_answer", "locked": false, "points": 5, "schema_version": 3, "solution": true, "task": false}
# It helped where quantization leaves a systematic shift per output channel and the inputs it was computed from
# are still representative: W3 per channel gains 0.6 pt (89.6 → 90.2 %, empirical) and about 1 pt after CLE
# (89.7 → 90.6 / 90.8 %), per-tensor W4 after CLE 0.6 pt (91.3 → 91.8 %). Per tensor *without* CLE it hurts
# (84.2 → 81.3 / 82.5 %): there the error is not a shift but the loss of resolution in narrow channels, which a
# bias cannot undo, and each layer's correction uses float-model statistics that the badly quantized network no
# longer produces. The analytic correction assumes x = ReLU of a Gaussian N(β, γ²) straight after the BatchNorm;
# in this CNN a max pooling sits in between, which raises the mean (analytic 0.25 vs measured 0.35 for conv2's
# inputs), the pre-activations are not exactly Gaussian, and for fc the per-channel estimates do not even
# correlate with the measured ones (−0.02). It is still useful because it needs no data at all.

# %% [markdown] nbgrader={"grade": false, "grade_id": "q3_prompt", "locked": true, "schema_version": 3, "solution": false, "task": false}
# **Q3 (5 points).** Explain the roles of the rectified sigmoid's stretch (ζ, γ), the regularizer and the β schedule.
# What goes wrong without the regularizer, and what would go wrong if β were annealed from 2 up to 20? Use the
# explorer of Part 3.

# %% [markdown] nbgrader={"grade": true, "grade_id": "q3_answer", "locked": false, "points": 5, "schema_version": 3, "solution": true, "task": false}
# h(V) = clip(σ(V)(ζ − γ) + γ, 0, 1) with ζ = 1.1 and γ = −0.1 stretches the sigmoid past [0, 1] and clips it, so h
# reaches 0 and 1 exactly at finite V (|V| ≈ 2.4) and its gradient does not fade near them as a sigmoid's does. The
# reconstruction loss alone is minimized by soft values (h = 0.37 is a better fit than 0 or 1), which are not a
# rounding: without the regularizer the final V ≥ 0 step would throw that solution away (in the test, the hard
# result is then nearest rounding). The regularizer Σ 1 − |2h − 1|^β is 0 only at h ∈ {0, 1}; with β = 20 it is flat
# in the middle and lets the soft values move freely to where the loss wants them, and as β falls to 2 it pulls
# every h to its nearer end: in the explorer the fraction of soft weights stays near 1 during the warm start and
# falls steadily while β decreases. Annealed the wrong way, β = 2 at the start would freeze each h at its nearer end
# from the beginning, i.e. round to nearest, before the loss could move anything.

# %% [markdown] nbgrader={"grade": false, "grade_id": "q4_prompt", "locked": true, "schema_version": 3, "solution": false, "task": false}
# **Q4 (5 points).** From your Part 4 table: how much of the nearest → FP32 gap does AdaRound recover at W4, W3 and
# W2, what does keeping the first and last layers at 8 bits add at W2, and when is learned rounding enough compared
# with Lab 3's QAT? Mention the cost of each.

# %% [markdown] nbgrader={"grade": true, "grade_id": "q4_answer", "locked": false, "points": 5, "schema_version": 3, "solution": true, "task": false}
# Rounding to nearest per channel loses 1.5 pt at W4, 3.0 pt at W3 and collapses at W2 (16.9 %); AdaRound ends at
# 92.4 %, 91.8 % and 82.0 % (FP32 92.67 %), i.e. 84 %, 70 % and 86 % of the gap with the notebook's short settings
# (250 iterations per layer; the README's benchmark with 1,000 recovers more at W3). Keeping conv1 and fc at 8 bits
# adds 8 pt at W2 (90.1 %) for about 5 KiB (11.6× instead of 14.7× smaller than FP32): conv1's 9 weights per filter
# and the logits layer are the most sensitive. CLE and bias correction take well under a second and add little on
# top (at W2 the full pipeline is even below AdaRound alone, 79.1 %); AdaRound takes a few seconds per layer from
# 256 unlabelled images; QAT needs labels and minutes of training. Learned rounding is enough at 4 and 3 bits, where
# it matches Lab 3's QAT (92.5 % at W4A4, 91.2 % at W3A3) at a fraction of the cost; at 2 bits the best rounding of
# the trained weights is 9 pt short of QAT's W2A2 90.7 % unless the first and last layers stay at 8 bits.

# %% [markdown] nbgrader={"grade": false, "grade_id": "further_reading", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Further reading
# - M. Nagel, M. van Baalen, T. Blankevoort, M. Welling, 2019. *Data-Free Quantization Through Weight Equalization and Bias Correction.* ICCV.
# - M. Nagel, R. A. Amjad, M. van Baalen, C. Louizos, T. Blankevoort, 2020. *Up or Down? Adaptive Rounding for Post-Training Quantization.* ICML.
# - M. Nagel, M. Fournarakis, R. A. Amjad, Y. Bondarenko, M. van Baalen, T. Blankevoort, 2021. *A White Paper on Neural Network Quantization.* arXiv:2106.08295 (CLE, bias correction and AdaRound in one pipeline; AIMET's defaults).
# - Qualcomm AI Research, *AI Model Efficiency Toolkit (AIMET)*: `aimet_torch` AdaRound and cross-layer equalization (the ζ, γ, β and λ defaults used here).
# - Y. Li, R. Gong, X. Tan, Y. Yang, P. Hu, Q. Zhang, F. Yu, W. Wang, S. Gu, 2021. *BRECQ: Pushing the Limit of Post-Training Quantization by Block Reconstruction.* ICLR (reconstruct blocks, not layers).
# - X. Wei, R. Gong, Y. Li, X. Liu, F. Yu, 2022. *QDrop: Randomly Dropping Quantization for Extremely Low-bit Post-Training Quantization.* ICLR.
# - E. Frantar, S. Ashkboos, T. Hoefler, D. Alistarh, 2023. *GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers.* ICLR (the same layer-wise reconstruction, solved with second-order updates, at LLM scale).
#
# Next: **Lab 6**.
