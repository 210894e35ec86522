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
# # Lab 4 — Binary and ternary networks: one bit, or three levels, per weight
#
# Lab 3 trained networks down to 2 bits with the straight-through estimator. This lab goes to the end of the
# line: **one bit per weight** (±1), or **three levels** (−α, 0, +α), and finally one bit per *activation* too,
# where a dot product becomes an XOR and a popcount. The arithmetic is simple; what makes it train is a handful
# of ideas — a scale per channel, a threshold, a clipped gradient, latent real-valued weights — each from one paper.
#
# **You will be able to**
# 1. binarize weights deterministically and stochastically (BinaryConnect) and write the sign's straight-through
#    gradient with its |w| ≤ 1 cancel;
# 2. explain why a per-channel scale α = mean |W| rescues a binary network (BWN / XNOR-Net) and measure what it
#    buys in reconstruction error;
# 3. quantize to three levels with a threshold (TWN) and with two learned scales (TTQ), gradients included;
# 4. pack ±1 vectors 64 to a word and compute a matrix product with XOR and popcount, bit-exact;
# 5. train the course CNN binary and ternary, read the accuracy / size table, and say why the first and last
#    layers stay at 8 bits.
#
# **Prerequisites**: Lab 3 (straight-through estimator, latent weights, QAT); PyTorch autograd; bit operations
# (`^`, `>>`, `&`). **Time**: 2–3 hours.
#
# | part | graded functions | points |
# |---|---|---|
# | 1. Binarization | `binarize`, `binarize_stochastic`, `sign_ste` | 22 |
# | 2. A scale rescues accuracy | `bwn_scale`, `binarize_weights` | 14 |
# | 3. Ternary | `twn_threshold`, `twn_quantize`, `ttq_quantize` | 30 |
# | 4. Binary activations too: XNOR and popcount | `pack_signs`, `xnor_matmul` | 16 |
# | 5. Train them | — (experiments with your functions) | — |
# | 6. Wrap-up | four reflection questions (graded by hand) | 18 |
#
# **How this notebook works.** Write each function in its answer cell (replace the line
# `raise NotImplementedError()`), then run the test cell below it. Visible tests show what went in, what was
# expected and what came back — for **values and gradients**. Hidden checks run at grading time on more cases
# (zeros and −0.0, values exactly on a threshold, all-negative channels, 1-D and 4-D weights, float16, many
# stochastic draws); they call only the functions you write and ask for their gradients, so keep the names and
# argument orders. **Sign convention, everywhere in this lab: sign(0) = +1** (`+1 where w >= 0`, −0.0 too).
# Grading runs the setup cell and your answer cells only — a function must not depend on a variable computed in
# an experiment cell. Before submitting run `autograder check lab4_binary.ipynb`. Every widget and experiment
# below uses **your** functions.

# %% nbgrader={"grade": false, "grade_id": "setup", "locked": true, "schema_version": 3, "solution": false, "task": false}
# %matplotlib widget
import math
import time

import matplotlib.pyplot as plt
import torch
from torch import nn
from tqdm.auto import tqdm

import lowbit
from lowbit import viz
from lowbit.quant.binary import per_channel, popcount, unpack_signs
from lowbit.quant.validate import check_float_tensor
from lowbit.testing import (assert_close, assert_dtype, assert_equal_int, assert_gradient_close, assert_not_modified,
                            assert_shape, gradients_of)

torch.set_num_threads(1)  # the course machine is shared: one thread is faster than two busy ones
lowbit.seed_everything(0)
model = lowbit.models.pretrained("cnn")  # FashionCNN, fp32, eval mode
_, test_loader = lowbit.data.loaders(batch_size=500)
# While a grader runs this notebook, experiments shrink (fewer batches, shorter training; same code).
EVAL_BATCHES = 1 if lowbit.GRADING else None
fp32_accuracy = lowbit.train.evaluate(model, test_loader, max_batches=EVAL_BATCHES)
print(f"FashionCNN: {sum(p.numel() for p in model.parameters()):,} parameters, "
      f"FP32 accuracy on the embedded test set: {100 * fp32_accuracy:.2f} %")

# %% [markdown] nbgrader={"grade": false, "grade_id": "part1_intro", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ## Part 1 — Binarization
#
# Courbariaux, Bengio & David (2015, *BinaryConnect: Training Deep Neural Networks with binary weights during
# propagations*) replace every weight by its sign in the forward and backward passes:
#
# $$ w_b = \operatorname{sign}(w) = \begin{cases} +1 & w \ge 0 \\ -1 & w < 0. \end{cases} $$
#
# `torch.sign` is **not** this function: it maps 0 to 0, a third level that a 1-bit code cannot store. We send 0
# (and −0.0, for which `w >= 0` is true) to +1, here and in every function of the lab, so that one bit — "is
# $w \ge 0$?" — describes the binarized weight exactly (Part 4 packs exactly that bit).

# %% nbgrader={"grade": false, "grade_id": "binarize", "locked": false, "schema_version": 3, "solution": true, "task": false}
def binarize(w: torch.Tensor) -> torch.Tensor:
    """Deterministic binarization: +1 where w >= 0 (0 and -0.0 included), -1 where w < 0.

    Args:
        w: floating tensor of any shape (float32, float16, bfloat16 or float64); may be empty.
    Returns:
        tensor of w's shape and dtype holding only -1.0 and +1.0. No gradient requirement.
    Raises:
        TypeError if w is not a floating-point tensor. w is not modified.
    """
    ### BEGIN SOLUTION
    check_float_tensor(w, "w")
    ones = torch.ones_like(w)
    return torch.where(w >= 0, ones, -ones)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_binarize", "locked": true, "points": 6, "schema_version": 3, "solution": false, "task": false}
w = torch.tensor([-2.0, -0.5, -1e-8, -0.0, 0.0, 1e-8, 0.3, 3.0])
assert_close(binarize(w), torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0]), "binarize(w)", atol=0,
             inputs={"w": w}, hint="sign(0) = +1 in this course (+1 where w >= 0, -0.0 included): torch.sign(0) is 0, "
                                   "w > 0 sends 0 to -1, and torch.signbit(-0.0) is True")
w2 = torch.tensor([[0.25, -4.0, 0.0], [-0.1, 7.0, -3.0]])
assert_close(binarize(w2), torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0]]), "binarize of a [2, 3] weight", atol=0,
             inputs={"w": w2})
assert_dtype(binarize(w2.half()), torch.float16, "binarize of a float16 tensor keeps float16",
             hint="build ±1 with w's dtype (torch.ones_like(w)), not a bool or int64 tensor")
assert_shape(binarize(torch.zeros(0, 3)), (0, 3), "binarize of an empty [0, 3] tensor")
assert_not_modified(binarize, w2)
### BEGIN HIDDEN TESTS
from autograder.checks.lab4_binary import check_binarize
check_binarize(binarize)
### END HIDDEN TESTS

# %% [markdown] nbgrader={"grade": false, "grade_id": "stochastic_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Stochastic binarization
# BinaryConnect's second rule draws the sign at random, with a probability given by the *hard sigmoid*:
#
# $$ w_b = \begin{cases} +1 & \text{with probability } p = \sigma_h(w)
#    = \operatorname{clip}\!\big(\tfrac{w+1}{2}, 0, 1\big) \\
#    -1 & \text{with probability } 1 - p. \end{cases} $$
#
# It is **unbiased** on $[-1, 1]$: $\mathbb{E}[w_b] = p - (1 - p) = 2p - 1 = \operatorname{clip}(w, -1, 1)$, so
# over many passes the binary weight averages to the real one, like stochastic rounding. Hardware dislikes it: every
# weight needs a fresh random number at every use, and the result is no longer a function of the weight alone.
#
# To make it reproducible and testable we fix the randomness: draw
# `u = torch.rand(w.shape, generator=torch.Generator().manual_seed(seed))` (float32 on the CPU, never the global
# generator) and return +1 where `u < p`, −1 elsewhere, in w's dtype.

# %% nbgrader={"grade": false, "grade_id": "binarize_stochastic", "locked": false, "schema_version": 3, "solution": true, "task": false}
def binarize_stochastic(w: torch.Tensor, seed: int) -> torch.Tensor:
    """BinaryConnect's stochastic binarization: +1 with probability p = clip((w + 1) / 2, 0, 1), else -1.

    Args:
        w: floating tensor of any shape (float32, float16, bfloat16 or float64).
        seed: int; the uniform numbers are u = torch.rand(w.shape, generator=torch.Generator().manual_seed(seed)).
    Returns:
        tensor of w's shape and dtype: +1.0 where u < p, -1.0 elsewhere. Same seed, same result; the global random
        generator is not used. No gradient requirement.
    Raises:
        TypeError if w is not a floating-point tensor. w is not modified.
    """
    ### BEGIN SOLUTION
    check_float_tensor(w, "w")
    p = torch.clamp((w.detach() + 1) / 2, 0, 1)                       # hard sigmoid
    u = torch.rand(w.shape, generator=torch.Generator().manual_seed(seed))
    ones = torch.ones_like(w)
    return torch.where(u < p, ones, -ones)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_binarize_stochastic", "locked": true, "points": 8, "schema_version": 3, "solution": false, "task": false}
w = torch.tensor([-3.0, -1.0, -0.6, -0.2, 0.0, 0.2, 0.6, 1.0, 3.0])
u = torch.rand(w.shape, generator=torch.Generator().manual_seed(7))
assert_close(binarize_stochastic(w, seed=7), torch.tensor([-1.0, -1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
             "binarize_stochastic(w, seed=7)", atol=0, inputs={"w": w, "u (seed 7)": u},
             hint="u = torch.rand(w.shape, generator=torch.Generator().manual_seed(seed)); +1 where u < p with "
                  "p = clip((w + 1) / 2, 0, 1), -1 elsewhere")
many = torch.linspace(-1.5, 1.5, 13).repeat(4000, 1)               # 4,000 draws of each of 13 weights
mean = binarize_stochastic(many, seed=1).mean(dim=0)
assert_close(mean, torch.linspace(-1.5, 1.5, 13).clamp(-1, 1), "mean of 4,000 draws per weight vs clip(w, -1, 1)",
             atol=0.06, inputs={"w": torch.linspace(-1.5, 1.5, 13)},
             hint="E[w_b] = 2p - 1 = clip(w, -1, 1) needs the hard sigmoid p = clip((w + 1) / 2, 0, 1) (not "
                  "torch.sigmoid(w), not p = w) and +1 where u < p (u > p flips the probability)")
assert torch.equal(binarize_stochastic(many, seed=3), binarize_stochastic(many, seed=3)), \
    "binarize_stochastic with the same seed must give the same result: draw u from torch.Generator().manual_seed(seed)"
assert not torch.equal(binarize_stochastic(many, seed=3), binarize_stochastic(many, seed=4)), \
    "binarize_stochastic with seeds 3 and 4 gave the same result: is the seed used?"
state = torch.get_rng_state()
binarize_stochastic(many, seed=5)
assert torch.equal(state, torch.get_rng_state()), \
    "binarize_stochastic changed the global random state: draw u with your own torch.Generator, not torch.rand(w.shape)"
print("✓ binarize_stochastic: reproducible per seed, the global random generator untouched")
assert_dtype(binarize_stochastic(w.half(), seed=0), torch.float16, "binarize_stochastic of a float16 tensor")
assert_not_modified(binarize_stochastic, w, 0)
### BEGIN HIDDEN TESTS
from autograder.checks.lab4_binary import check_binarize_stochastic
check_binarize_stochastic(binarize_stochastic)
### END HIDDEN TESTS

# %% [markdown] nbgrader={"grade": false, "grade_id": "ste_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### The sign's straight-through estimator
# `sign` has derivative 0 almost everywhere, so — as with rounding in Lab 3 — training needs a straight-through
# estimator. Hubara, Courbariaux, Soudry, El-Yaniv & Bengio (2016, *Binarized Neural Networks*) pass the gradient
# only where the input lies in $[-1, 1]$, the derivative of the "hard tanh" $\operatorname{clip}(x, -1, 1)$:
#
# $$ \text{forward: } y = \operatorname{sign}(x), \qquad \text{backward: } \frac{\partial \mathcal{L}}{\partial x} :=
#    \frac{\partial \mathcal{L}}{\partial y}\,\mathbb{1}\big[|x| \le 1\big]
#    \quad (\text{the ends } \pm 1 \text{ included}). $$
#
# Beyond $|x| > 1$ the gradient is **cancelled**: making such a weight larger changes nothing, its sign is already
# settled, and without the cancel the latent weight could drift without bound. BinaryConnect also **clips the latent
# weights** to $[-1, 1]$ after every optimizer step (the training code of Part 5 does it for you). The same
# `sign_ste` binarizes activations in Part 4.

# %% nbgrader={"grade": false, "grade_id": "sign_ste", "locked": false, "schema_version": 3, "solution": true, "task": false}
def sign_ste(x: torch.Tensor) -> torch.Tensor:
    """Binarize with a straight-through gradient: value binarize(x); gradient upstream · 1{|x| <= 1}.

    Args:
        x: floating tensor of any shape (float32, float16, bfloat16 or float64).
    Returns:
        tensor of x's shape and dtype holding ±1 (sign(0) = +1). Backward: x.grad = upstream where -1 <= x <= 1
        (both ends included), 0 where |x| > 1.
    Raises:
        TypeError if x is not a floating-point tensor. x is not modified.
    """
    ### BEGIN SOLUTION
    check_float_tensor(x, "x")
    inside = (x.detach().abs() <= 1).to(x.dtype)                      # the hard tanh's derivative
    return binarize(x.detach()) + (x - x.detach()) * inside           # value ±1; gradient 1 inside, 0 outside
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_sign_ste", "locked": true, "points": 8, "schema_version": 3, "solution": false, "task": false}
x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5])
upstream = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
assert_close(sign_ste(x), torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0]), "sign_ste(x)", atol=0,
             inputs={"x": x}, hint="the value is binarize(x): sign(0) = +1")
assert_gradient_close(sign_ste, x, wrt=[0], upstream=upstream,
                      expected=[torch.tensor([0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0])],
                      what="sign_ste(x), gradient", atol=0,
                      hint="the gradient passes where |x| <= 1 (x = ±1 included) and is cancelled where |x| > 1 "
                           "(x = -2, 1.5): a plain STE without the cancel lets it through everywhere")
assert_dtype(sign_ste(x.half()), torch.float16, "sign_ste of a float16 tensor keeps float16")
assert_not_modified(sign_ste, x)
### BEGIN HIDDEN TESTS
from autograder.checks.lab4_binary import check_sign_ste
check_sign_ste(sign_ste)
### END HIDDEN TESTS

# %% [markdown] nbgrader={"grade": false, "grade_id": "part2_intro", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ## Part 2 — A scale rescues accuracy
#
# A ±1 weight has the wrong magnitude: the CNN's weights are of order 0.1, so $\operatorname{sign}(W)$ multiplies
# every layer's output by about ten (BatchNorm repairs some of that, not the shape of the error). Rastegari,
# Ordonez, Redmon & Farhadi (2016, *XNOR-Net: ImageNet Classification Using Binary Convolutional Neural Networks*)
# approximate each output channel $W_c \in \mathbb{R}^n$ by $\alpha_c B_c$ with $B_c \in \{-1, +1\}^n$ and solve
#
# $$ \min_{\alpha_c, B_c} \lVert W_c - \alpha_c B_c \rVert^2 \quad\Rightarrow\quad B_c = \operatorname{sign}(W_c),
#    \qquad \alpha_c = \frac{W_c^\top B_c}{n} = \frac{1}{n}\sum_i |W_{c,i}| , $$
#
# the **mean absolute value per output channel** (along axis 0, over every other axis). With it, binary-weight
# AlexNet reached 56.8 % top-1 on ImageNet against 56.6 % in full precision, where BinaryConnect's unscaled ±1
# weights reached 35.4 % (−21.2 pt; Rastegari et al. 2016, Table 1).

# %% nbgrader={"grade": false, "grade_id": "bwn_scale", "locked": false, "schema_version": 3, "solution": true, "task": false}
def bwn_scale(w: torch.Tensor) -> torch.Tensor:
    """BWN / XNOR-Net scale: alpha_c = mean |w| over every axis but 0, one per output channel.

    Args:
        w: floating tensor [C, ...] with at least one axis (a 1-D [C] is C channels of one weight each) and at
            least one element per channel.
    Returns:
        alpha, tensor [C] (not keepdim) of w's dtype; 0 for an all-zero channel. Differentiable in w.
    Raises:
        TypeError for a non-float w; ValueError for a 0-dim w or channels without elements (e.g. shape [3, 0]).
        w is not modified.
    """
    ### BEGIN SOLUTION
    check_float_tensor(w, "w")
    if w.ndim == 0:
        raise ValueError("w must have an output-channel axis (at least 1-D), got a 0-dim tensor")
    per_channel_count = math.prod(w.shape[1:])
    if per_channel_count == 0:
        raise ValueError(f"w of shape {tuple(w.shape)} has no elements per channel: nothing to average")
    return w.abs().reshape(w.shape[0], per_channel_count).mean(dim=1)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_bwn_scale", "locked": true, "points": 6, "schema_version": 3, "solution": false, "task": false}
w = torch.tensor([[1.0, -3.0, 0.5, -0.5], [0.1, 0.1, -0.2, 0.0], [0.0, 0.0, 0.0, 0.0]])
assert_close(bwn_scale(w), torch.tensor([1.25, 0.1, 0.0]), "bwn_scale(w [3, 4])", atol=1e-6, inputs={"w": w},
             hint="alpha_c = mean |w| of output channel c (row c): one per channel, not the whole tensor's mean "
                  "(0.45), not max |w|, and of the absolute values (not mean w)")
assert_shape(bwn_scale(w), (3,), "bwn_scale returns shape [C]", hint="reduce every axis but 0, without keepdim")
conv = torch.arange(-8.0, 8.0).reshape(2, 2, 2, 2) / 4              # a conv weight [C_out=2, C_in=2, 2, 2]
assert_close(bwn_scale(conv), torch.tensor([1.125, 0.875]), "bwn_scale of a conv weight [2, 2, 2, 2]", atol=1e-6,
             inputs={"w": conv}, hint="for a 4-D weight average over axes 1, 2 and 3 (8 values per channel)")
assert_close(bwn_scale(torch.tensor([-2.0, 0.5, 0.0])), torch.tensor([2.0, 0.5, 0.0]), "bwn_scale of a 1-D w [3]",
             atol=0, hint="a 1-D w of shape [C] is C channels of one weight each: alpha = |w|")
assert_dtype(bwn_scale(w.half()), torch.float16, "bwn_scale of a float16 weight")
try:
    bwn_scale(torch.tensor(1.0))
except ValueError:
    print("✓ bwn_scale of a 0-dim tensor raises ValueError")
else:
    raise AssertionError("bwn_scale(torch.tensor(1.0)) must raise ValueError: a 0-dim tensor has no channel axis")
assert_not_modified(bwn_scale, w)
### BEGIN HIDDEN TESTS
from autograder.checks.lab4_binary import check_bwn_scale
check_bwn_scale(bwn_scale)
### END HIDDEN TESTS

# %% [markdown] nbgrader={"grade": false, "grade_id": "binarize_weights_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Scaled binary weights and their gradient
# The BWN weight is $\tilde W = \alpha \odot \operatorname{sign}(W)$ (α broadcast along the output channels:
# `per_channel(alpha, w)` from the setup cell reshapes `[C]` to `[C, 1, 1, 1]`). Keep α **in the graph**: XNOR-Net's
# gradient (its eq. 7) has two terms, the sign's STE scaled by α and α's own dependence on every weight of the
# channel,
#
# $$ \frac{\partial \mathcal{L}}{\partial W_{c,i}} = \alpha_c\, g_{c,i}\, \mathbb{1}\big[|W_{c,i}| \le 1\big]
#    + \frac{\operatorname{sign}(W_{c,i})}{n} \sum_j g_{c,j} \operatorname{sign}(W_{c,j}), \qquad
#    g = \frac{\partial \mathcal{L}}{\partial \tilde W}, $$
#
# which is exactly what autograd computes for `per_channel(bwn_scale(w), w) * sign_ste(w)` (one detail: autograd's
# derivative of $|w|$ at $w = 0$ is 0, so a zero weight gets no share of α's term).

# %% nbgrader={"grade": false, "grade_id": "binarize_weights", "locked": false, "schema_version": 3, "solution": true, "task": false}
def binarize_weights(w: torch.Tensor) -> torch.Tensor:
    """BWN weights: alpha_c · sign(w) per output channel, alpha = bwn_scale(w) kept in the autograd graph.

    Args:
        w: floating tensor [C, ...] (1-D [C] up to 4-D conv weights), at least one element per channel.
    Returns:
        tensor of w's shape and dtype. Backward: what autograd gives for per_channel(bwn_scale(w), w) * sign_ste(w)
        (the STE cancelled where |w| > 1, plus alpha's own term).
    Raises:
        TypeError / ValueError as bwn_scale. w is not modified.
    """
    ### BEGIN SOLUTION
    alpha = bwn_scale(w)                                             # [C], differentiable
    return per_channel(alpha, w) * sign_ste(w)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_binarize_weights", "locked": true, "points": 8, "schema_version": 3, "solution": false, "task": false}
w = torch.tensor([[0.5, -1.5, 0.0, 2.0], [-0.2, -0.4, 0.1, 0.3]])
upstream = torch.tensor([[1.0, 2.0, -1.0, 0.5], [2.0, -1.0, 1.0, 1.0]])
assert_close(binarize_weights(w), torch.tensor([[1.0, -1.0, 1.0, 1.0], [-0.25, -0.25, 0.25, 0.25]]),
             "binarize_weights(w [2, 4])", atol=1e-6, inputs={"w": w},
             hint="alpha = [1.0, 0.25], one per row (output channel), times sign(w) with sign(0) = +1; alpha over the "
                  "whole tensor would be 0.625 for both rows")
assert_gradient_close(binarize_weights, w, wrt=[0], upstream=upstream,
                      expected=[torch.tensor([[0.625, 0.375, -1.0, -0.375], [0.25, -0.5, 0.5, 0.5]])],
                      what="binarize_weights(w), gradient", atol=1e-6,
                      hint="keep alpha in the graph (no .detach()): its term sign(w_i) / n · Σ_j g_j sign(w_j) "
                           "adds to the STE term alpha · g · 1{|w| <= 1}, which is cancelled at w = -1.5 and 2.0")
conv = torch.randn(3, 2, 3, 3, generator=torch.Generator().manual_seed(0)) * 0.1
expected = bwn_scale(conv).reshape(3, 1, 1, 1) * binarize(conv)
assert_close(binarize_weights(conv), expected, "binarize_weights of a conv weight [3, 2, 3, 3]", atol=1e-7,
             hint="reshape alpha [C] to [C, 1, 1, 1] (per_channel(alpha, w)) so it scales axis 0, not the last axis")
assert_dtype(binarize_weights(w.half()), torch.float16, "binarize_weights of a float16 weight")
assert_not_modified(binarize_weights, w)
### BEGIN HIDDEN TESTS
from autograder.checks.lab4_binary import check_binarize_weights
check_binarize_weights(binarize_weights)
### END HIDDEN TESTS

# %% [markdown] nbgrader={"grade": false, "grade_id": "part3_intro", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ## Part 3 — Ternary
#
# A third level, 0, lets small weights switch off. Li, Zhang & Liu (2016, *Ternary Weight Networks*) quantize
# to $\{-\alpha, 0, +\alpha\}$ with a threshold $\Delta$:
#
# $$ t_i = \begin{cases} \operatorname{sign}(w_i) & |w_i| > \Delta \\ 0 & |w_i| \le \Delta, \end{cases} \qquad
#    \Delta = 0.7 \cdot \frac{1}{n}\sum_i |w_i|, \qquad
#    \alpha = \frac{1}{|I_\Delta|} \sum_{i \in I_\Delta} |w_i|, \quad I_\Delta = \{i : |w_i| > \Delta\}. $$
#
# For a given $\Delta$ this α minimises $\lVert w - \alpha t\rVert^2$; the factor 0.7 is the paper's approximation
# of the best $\Delta$ for Gaussian or uniform weights. The paper takes one Δ per layer; as everywhere in this course
# we take **one Δ and one α per output channel**. Note the **strict** inequality: $|w| = \Delta$ gives 0. A channel
# with nothing above Δ gets α = 0 (never 0/0 = NaN).

# %% nbgrader={"grade": false, "grade_id": "twn_threshold", "locked": false, "schema_version": 3, "solution": true, "task": false}
def twn_threshold(w: torch.Tensor) -> torch.Tensor:
    """TWN's threshold Delta_c = 0.7 · mean |w| per output channel (over every axis but 0).

    Args:
        w: floating tensor [C, ...] with at least one element per channel.
    Returns:
        Delta, tensor [C] of w's dtype. No gradient requirement.
    Raises:
        TypeError / ValueError as bwn_scale. w is not modified.
    """
    ### BEGIN SOLUTION
    return 0.7 * bwn_scale(w)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_twn_threshold", "locked": true, "points": 6, "schema_version": 3, "solution": false, "task": false}
w = torch.tensor([[1.0, -2.0, 0.0, 1.0], [0.1, -0.1, 0.3, -0.3]])
assert_close(twn_threshold(w), torch.tensor([0.7, 0.14]), "twn_threshold(w [2, 4])", atol=1e-6, inputs={"w": w},
             hint="Delta_c = 0.7 · mean |w_c| per output channel: mean, not max |w| (which gives [1.4, 0.21]); of the "
                  "absolute values; per row, not one Delta for the whole tensor")
conv = torch.arange(-8.0, 8.0).reshape(2, 2, 2, 2) / 4
assert_close(twn_threshold(conv), torch.tensor([0.7875, 0.6125]), "twn_threshold of a conv weight [2, 2, 2, 2]",
             atol=1e-6, inputs={"w": conv})
assert_shape(twn_threshold(conv), (2,), "twn_threshold returns shape [C]")
assert_not_modified(twn_threshold, w)
### BEGIN HIDDEN TESTS
from autograder.checks.lab4_binary import check_twn_threshold
check_twn_threshold(twn_threshold)
### END HIDDEN TESTS

# %% nbgrader={"grade": false, "grade_id": "twn_quantize", "locked": false, "schema_version": 3, "solution": true, "task": false}
def twn_quantize(w: torch.Tensor, delta=None) -> torch.Tensor:
    """TWN ternary weights alpha_c · t with t = sign(w) · 1{|w| > Delta_c} (strict) per output channel.

    alpha_c is the mean of |w| over {|w| > Delta_c} in channel c, 0 if that set is empty.

    Args:
        w: floating tensor [C, ...] (1-D [C] up to 4-D), at least one element per channel.
        delta: None (use twn_threshold(w)), a float or 0-dim tensor (one Delta for every channel), or a tensor [C].
    Returns:
        tensor of w's shape and dtype with values in {-alpha_c, 0, +alpha_c}. No gradient requirement.
    Raises:
        TypeError for a non-float w; ValueError for a negative delta, a delta of another shape, or a w as bwn_scale
        refuses. w is not modified.
    """
    ### BEGIN SOLUTION
    check_float_tensor(w, "w")
    if w.ndim == 0:
        raise ValueError("w must have an output-channel axis (at least 1-D), got a 0-dim tensor")
    channels, count = w.shape[0], math.prod(w.shape[1:])
    if count == 0:
        raise ValueError(f"w of shape {tuple(w.shape)} has no elements per channel")
    delta = twn_threshold(w) if delta is None else torch.as_tensor(delta)
    if bool((delta < 0).any()):
        raise ValueError(f"delta must be >= 0, got {delta}")
    if tuple(delta.shape) == (channels,):
        delta = delta.reshape(channels, 1)                           # one threshold per row
    elif delta.ndim != 0:
        raise ValueError(f"delta must be a number or a tensor [{channels}], got shape {tuple(delta.shape)}")
    flat = w.detach().reshape(channels, count)
    kept = flat.abs() > delta                                        # strict: |w| == Delta gives 0
    alpha = (flat.abs() * kept).sum(dim=1) / kept.sum(dim=1).clamp(min=1)
    t = torch.where(kept, binarize(flat), torch.zeros_like(flat))
    return (alpha.reshape(channels, 1) * t).reshape(w.shape)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_twn_quantize", "locked": true, "points": 10, "schema_version": 3, "solution": false, "task": false}
w = torch.tensor([[0.5, -0.5, 1.0, -2.0, 0.1]])
assert_close(twn_quantize(w, delta=0.5), torch.tensor([[0.0, 0.0, 1.5, -1.5, 0.0]]), "twn_quantize(w, delta=0.5)",
             atol=1e-6, inputs={"w": w},
             hint="strict threshold: |w| == Delta (0.5 here) gives 0; alpha is the mean |w| of the weights kept "
                  "(1.0 and 2.0), not of all weights")
w = torch.tensor([[1.0, -0.2, 0.4, -0.6], [-0.3, -0.1, -0.5, -0.3]])
assert_close(twn_quantize(w), torch.tensor([[2 / 3, 0.0, 2 / 3, -2 / 3], [-1.1 / 3, 0.0, -1.1 / 3, -1.1 / 3]]),
             "twn_quantize(w) with the default Delta = twn_threshold(w) = [0.385, 0.21]", atol=1e-6, inputs={"w": w},
             hint="per channel: Delta_c and alpha_c from row c only; an all-negative row keeps its signs")
assert_close(twn_quantize(w, delta=torch.tensor([0.5, 10.0])), torch.tensor([[0.8, 0.0, 0.0, -0.8], [0.0] * 4]),
             "twn_quantize(w, delta=[0.5, 10.0])", atol=1e-6, inputs={"w": w},
             hint="a channel with nothing above its Delta gets alpha = 0 (guard the division: 0 / 0 is NaN)")
conv = torch.randn(3, 2, 3, 3, generator=torch.Generator().manual_seed(1))
ternary = twn_quantize(conv)
assert_shape(ternary, (3, 2, 3, 3), "twn_quantize of a conv weight keeps its shape")
levels = [sorted(set(ternary[c].abs().unique().tolist())) for c in range(3)]
assert all(len(lv) == 2 and lv[0] == 0 for lv in levels), \
    f"twn_quantize of a conv weight must give the levels {{-alpha_c, 0, +alpha_c}} per channel, got |values| {levels}"
print("✓ twn_quantize of a conv weight [3, 2, 3, 3]: three levels per output channel")
assert_dtype(twn_quantize(w.half()), torch.float16, "twn_quantize of a float16 weight")
try:
    twn_quantize(w, delta=-0.1)
except ValueError:
    print("✓ twn_quantize with delta = -0.1 raises ValueError")
else:
    raise AssertionError("twn_quantize(w, delta=-0.1) must raise ValueError: a threshold on |w| cannot be negative")
assert_not_modified(twn_quantize, w)
### BEGIN HIDDEN TESTS
from autograder.checks.lab4_binary import check_twn_quantize
check_twn_quantize(twn_quantize)
### END HIDDEN TESTS

# %% [markdown] nbgrader={"grade": false, "grade_id": "ttq_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Trained ternary quantization
# Zhu, Han, Mao & Dally (2017, *Trained Ternary Quantization*) let the two levels differ and **learn** them: one
# positive scale $W_p$ and one negative $W_n$ per layer, a threshold $\Delta = t \cdot \max |w|$ over the whole
# layer ($t = 0.05$; no gradient through Δ), and
#
# $$ w^t = \begin{cases} W_p & w > \Delta \\ 0 & |w| \le \Delta \\ -W_n & w < -\Delta \end{cases} \qquad
#    \frac{\partial \mathcal{L}}{\partial W_p} = \sum_{w > \Delta} g, \qquad
#    \frac{\partial \mathcal{L}}{\partial W_n} = -\sum_{w < -\Delta} g, \qquad
#    \frac{\partial \mathcal{L}}{\partial w} = \begin{cases} W_p\, g & w > \Delta \\ g & |w| \le \Delta \\
#    W_n\, g & w < -\Delta \end{cases} $$
#
# with $g = \partial\mathcal{L}/\partial w^t$. Mind the minus sign of $W_n$'s gradient (the value is $-W_n$) — the
# test checks it. The latent weights get a *scaled* straight-through gradient, with $W_p$ and $W_n$ taken as
# constants there (detached). Build it like Lab 3's STE: a value term that carries $W_p$ and $W_n$'s gradients,
# plus `slope * (w - w.detach())`, which is 0 in value and has gradient `slope`.

# %% nbgrader={"grade": false, "grade_id": "ttq_quantize", "locked": false, "schema_version": 3, "solution": true, "task": false}
def ttq_quantize(w: torch.Tensor, w_p: torch.Tensor, w_n: torch.Tensor, t: float = 0.05) -> torch.Tensor:
    """TTQ: w_p where w > Delta, -w_n where w < -Delta, 0 elsewhere, Delta = t · max|w| over the whole tensor.

    Gradients: d/dw_p = sum of the upstream over w > Delta; d/dw_n = -(sum over w < -Delta); d/dw = w_p · upstream
    where w > Delta, upstream where |w| <= Delta, w_n · upstream where w < -Delta (w_p, w_n detached there).
    No gradient through Delta.

    Args:
        w: floating tensor of any shape, at least one element (the latent weights of one layer).
        w_p, w_n: 0-dim floating tensors (the learned positive and negative scales; usually nn.Parameters).
        t: float, 0 <= t < 1: the threshold as a fraction of max |w|.
    Returns:
        tensor of w's shape and dtype.
    Raises:
        TypeError for a non-float w; ValueError for an empty w or t outside [0, 1). No input is modified.
    """
    ### BEGIN SOLUTION
    check_float_tensor(w, "w", nonempty=True)
    if not 0 <= t < 1:
        raise ValueError(f"t must be in [0, 1), got {t!r}")
    delta = t * w.detach().abs().max()                                # per layer, no gradient
    positive = (w.detach() > delta).to(w.dtype)
    negative = (w.detach() < -delta).to(w.dtype)
    value = positive * w_p - negative * w_n                           # carries the gradients of w_p and w_n
    slope = positive * w_p.detach() + negative * w_n.detach() + (1 - positive - negative)
    return value + slope * (w - w.detach())                           # scaled STE for the latent weights
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_ttq_quantize", "locked": true, "points": 14, "schema_version": 3, "solution": false, "task": false}
w = torch.tensor([-2.0, -0.1, -0.05, 0.0, 0.1, 0.5, 1.0])          # max |w| = 2: Delta = 0.05 · 2 = 0.1
w_p, w_n = torch.tensor(1.5), torch.tensor(0.5)
upstream = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
inputs = {"w": w, "w_p": w_p, "w_n": w_n, "t": 0.05, "upstream": upstream}
assert_close(ttq_quantize(w, w_p, w_n), torch.tensor([-0.5, 0.0, 0.0, 0.0, 0.0, 1.5, 1.5]),
             "ttq_quantize(w, w_p=1.5, w_n=0.5)", atol=1e-6, inputs=inputs,
             hint="Delta = t · max|w| = 0.1; strict: w = ±0.1 gives 0; the negative level is -w_n (w_n > 0)")
assert_gradient_close(ttq_quantize, w, w_p, w_n, wrt=[1], upstream=upstream, expected=[torch.tensor(13.0)],
                      what="ttq_quantize, gradient to w_p", atol=1e-5, inputs=inputs,
                      hint="d/dw_p = Σ upstream over w > Delta (w = 0.5, 1.0: 6 + 7)")
assert_gradient_close(ttq_quantize, w, w_p, w_n, wrt=[2], upstream=upstream, expected=[torch.tensor(-1.0)],
                      what="ttq_quantize, gradient to w_n", atol=1e-5, inputs=inputs,
                      hint="the value is -w_n where w < -Delta, so d/dw_n = -Σ upstream there (= -1): mind the "
                           "minus sign")
assert_gradient_close(ttq_quantize, w, w_p, w_n, wrt=[0], upstream=upstream,
                      expected=[torch.tensor([0.5, 2.0, 3.0, 4.0, 5.0, 9.0, 10.5])], what="ttq_quantize, gradient to w",
                      atol=1e-5, inputs=inputs,
                      hint="scaled STE: w_p · g above Delta (1.5 · 6, 1.5 · 7), g in between (ties included), "
                           "w_n · g below (0.5 · 1) — not w_p everywhere, not 1 everywhere")
w2 = torch.tensor([[0.1, 0.2, -0.3], [2.0, -1.0, 0.05]])             # Delta = 0.1 · 2 = 0.2, one for the whole layer
assert_close(ttq_quantize(w2, w_p, w_n, t=0.1), torch.tensor([[0.0, 0.0, -0.5], [1.5, -0.5, 0.0]]),
             "ttq_quantize(w [2, 3], t=0.1)", atol=1e-6, inputs={"w": w2},
             hint="TTQ's threshold is per layer: t · max|w| over the whole tensor (0.2), not per row")
assert_dtype(ttq_quantize(w.half(), w_p, w_n), torch.float16, "ttq_quantize of a float16 w (float32 scales)",
             hint="build the masks in w's dtype, so a float32 w_p does not promote the result")
try:
    ttq_quantize(w, w_p, w_n, t=1.0)
except ValueError:
    print("✓ ttq_quantize with t = 1.0 raises ValueError")
else:
    raise AssertionError("ttq_quantize(w, w_p, w_n, t=1.0) must raise ValueError: t must be in [0, 1)")
assert_not_modified(ttq_quantize, w, w_p, w_n)
### BEGIN HIDDEN TESTS
from autograder.checks.lab4_binary import check_ttq_quantize
check_ttq_quantize(ttq_quantize)
### END HIDDEN TESTS

# %% [markdown] nbgrader={"grade": false, "grade_id": "part4_intro", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ## Part 4 — Binary activations too: XNOR and popcount
#
# With ±1 weights *and* ±1 activations (W1A1; XNOR-Net, Rastegari et al. 2016, and Hubara et al. 2016), a dot
# product of two ±1 vectors of length $n$ needs no multiplication. Store $+1$ as bit 1 and $-1$ as bit 0: two
# entries agree exactly where their bits are equal, so with $d$ = the number of differing bits,
#
# $$ a \cdot b = (\#\text{agree}) - (\#\text{differ}) = (n - d) - d = n - 2\,\operatorname{popcount}(a \oplus b). $$
#
# Packed 64 to a 64-bit word, one XOR and one popcount instruction handle 64 multiply-adds, and the weights take
# 32× less memory than fp32. We pack into `torch.int64` words: bit $j$ ($j = 0$ the least significant) of word
# $k$ is 1 iff $x_{64k+j} \ge 0$ (the same sign(0) = +1), and the padding bits of the last word are 0 — in both
# operands, so they never differ and cancel in the XOR. (A word with bit 63 set is a negative int64: fine, it is a
# bit pattern.) `popcount` (counts the 1 bits of each int64, from the setup cell) is provided.

# %% nbgrader={"grade": false, "grade_id": "pack_signs", "locked": false, "schema_version": 3, "solution": true, "task": false}
def pack_signs(x: torch.Tensor) -> torch.Tensor:
    """Pack the signs of x along its last axis, 64 per int64 word, least significant bit first.

    Bit j of word k is 1 iff x[..., 64 k + j] >= 0; the padding bits of the last word are 0.

    Args:
        x: floating tensor [..., n], n >= 1.
    Returns:
        int64 tensor [..., ceil(n / 64)].
    Raises:
        TypeError for a non-float x; ValueError for a 0-dim x or n == 0. x is not modified.
    """
    ### BEGIN SOLUTION
    check_float_tensor(x, "x")
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError(f"x must have a non-empty last axis to pack, got shape {tuple(x.shape)}")
    n = x.shape[-1]
    words = -(-n // 64)
    bits = (x >= 0).to(torch.int64)
    padding = torch.zeros(*x.shape[:-1], words * 64 - n, dtype=torch.int64)
    bits = torch.cat([bits, padding], dim=-1).reshape(*x.shape[:-1], words, 64)
    place = torch.bitwise_left_shift(torch.ones(64, dtype=torch.int64), torch.arange(64))   # 2^j (2^63 wraps)
    return (bits * place).sum(dim=-1)                                 # distinct bits: the sum is a bitwise OR
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_pack_signs", "locked": true, "points": 6, "schema_version": 3, "solution": false, "task": false}
x = torch.tensor([1.0, -1.0, 0.0, -0.5, 2.0])
assert_equal_int(pack_signs(x), torch.tensor([0b10101]), "pack_signs([1, -1, 0, -0.5, 2])", inputs={"x": x},
                 hint="bit j is x[j] >= 0 with j = 0 the least significant (1 + 4 + 16 = 21); 0 packs as 1 "
                      "(sign(0) = +1), and the first element goes to the lowest bit, not the highest")
assert_equal_int(pack_signs(torch.ones(2, 64)), torch.tensor([[-1], [-1]]), "pack_signs(ones [2, 64])",
                 hint="64 set bits make the int64 -1 (bit 63 is the sign bit): one word per 64 values")
x = torch.cat([-torch.ones(64), torch.tensor([3.0, -3.0, 3.0])])
assert_equal_int(pack_signs(x), torch.tensor([0, 0b101]), "pack_signs of 64 × -1 then [3, -3, 3] (n = 67)",
                 hint="n = 67 needs ceil(67 / 64) = 2 words; x[64 + j] goes to bit j of word 1, padding bits 0")
x = torch.randn(3, 130, generator=torch.Generator().manual_seed(0))
packed = pack_signs(x)
assert_shape(packed, (3, 3), "pack_signs of [3, 130] -> [3, ceil(130 / 64)]")
assert_dtype(packed, torch.int64, "pack_signs returns int64 words")
assert_close(unpack_signs(packed, 130), binarize(x), "unpack_signs(pack_signs(x), 130) vs binarize(x), x [3, 130]",
             atol=0, hint="each row is packed on its own along the last axis")
assert_not_modified(pack_signs, x)
### BEGIN HIDDEN TESTS
from autograder.checks.lab4_binary import check_pack_signs
check_pack_signs(pack_signs)
### END HIDDEN TESTS

# %% nbgrader={"grade": false, "grade_id": "xnor_matmul", "locked": false, "schema_version": 3, "solution": true, "task": false}
def xnor_matmul(a: torch.Tensor, b: torch.Tensor, n: int) -> torch.Tensor:
    """Binary matrix product from packed signs: out[i, j] = n - 2 · Σ_words popcount(a[i] XOR b[j]).

    Equal, exactly, to binarize(A) @ binarize(B).T for a = pack_signs(A), b = pack_signs(B), A [M, n], B [N, n].
    Works in blocks of rows so that the [block, N, W] XOR stays small.

    Args:
        a: int64 tensor [M, W]; b: int64 tensor [N, W], W = ceil(n / 64) (from pack_signs).
        n: int >= 1, the length of the unpacked vectors.
    Returns:
        int64 tensor [M, N].
    Raises:
        TypeError for non-int64 words; ValueError for shapes that are not [M, W] / [N, W] with W = ceil(n / 64).
        No input is modified.
    """
    ### BEGIN SOLUTION
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.dtype != torch.int64 \
            or b.dtype != torch.int64:
        raise TypeError("a and b must be int64 tensors of packed signs (from pack_signs)")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    words = -(-n // 64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != words or b.shape[1] != words:
        raise ValueError(f"a and b must be [M, {words}] and [N, {words}] for n = {n}, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    out = torch.empty(a.shape[0], b.shape[0], dtype=torch.int64)
    block = max(1, 2**18 // max(1, b.shape[0] * words))             # rows per block: [block, N, W] <= 256k words
    for start in range(0, a.shape[0], block):
        differ = popcount(a[start:start + block, None, :] ^ b[None, :, :]).sum(dim=-1)
        out[start:start + block] = n - 2 * differ
    return out
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_xnor_matmul", "locked": true, "points": 10, "schema_version": 3, "solution": false, "task": false}
A, B = torch.tensor([[1.0, -1.0, 1.0]]), torch.tensor([[1.0, 1.0, 1.0], [-1.0, 1.0, -1.0]])
assert_equal_int(xnor_matmul(pack_signs(A), pack_signs(B), 3), torch.tensor([[1, -3]]),
                 "xnor_matmul(pack_signs(A), pack_signs(B), n=3)", inputs={"A": A, "B": B},
                 hint="out = n - 2 · popcount(a XOR b) with the true n = 3 (not 64 · W): the padding bits are 0 in "
                      "both words, equal, so they drop out of the XOR")
generator = torch.Generator().manual_seed(0)
A, B = torch.randn(37, 200, generator=generator), torch.randn(23, 200, generator=generator)
expected = (binarize(A) @ binarize(B).T).round().long()
assert_equal_int(xnor_matmul(pack_signs(A), pack_signs(B), 200), expected,
                 "xnor_matmul vs binarize(A) @ binarize(B).T, A [37, 200], B [23, 200] (4 words per row)",
                 hint="popcount every word of a[i] XOR b[j] and sum over the words (axis -1)")
assert_dtype(xnor_matmul(pack_signs(A), pack_signs(B), 200), torch.int64, "xnor_matmul returns int64")
try:
    xnor_matmul(pack_signs(A), pack_signs(B), 300)
except ValueError:
    print("✓ xnor_matmul with n = 300 for 4-word rows raises ValueError")
else:
    raise AssertionError("xnor_matmul(a, b, n=300) with 4 words per row must raise ValueError: ceil(300 / 64) = 5")
assert_not_modified(xnor_matmul, pack_signs(A), pack_signs(B), 200)
### BEGIN HIDDEN TESTS
from autograder.checks.lab4_binary import check_xnor_matmul
check_xnor_matmul(xnor_matmul)
### END HIDDEN TESTS
