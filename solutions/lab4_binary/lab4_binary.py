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
assert_not_modified(binarize, torch.tensor([[0.25, -4.0, 0.0], [-0.1, 7.0, -3.0]]))  # a fresh input
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
expected = torch.tensor([-1.0, -1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
assert_close(binarize_stochastic(w, seed=7), expected, "binarize_stochastic(w, seed=7)", atol=0,
             inputs={"w": w, "u (seed 7)": u},
             hint="u = torch.rand(w.shape, generator=torch.Generator().manual_seed(seed)); +1 where u < p with "
                  "p = clip((w + 1) / 2, 0, 1), -1 elsewhere")
for dtype in (torch.float16, torch.float64):
    assert_close(binarize_stochastic(w.to(dtype), seed=7).float(), expected,
                 f"binarize_stochastic(w as {dtype}, seed=7)", atol=0, inputs={"w": w.to(dtype)},
                 hint="the same float32 draw u = torch.rand(w.shape, generator=...) whatever w's dtype: not "
                      "torch.rand(..., dtype=w.dtype), not torch.bernoulli (it draws doubles for float64)")
tie = torch.where(u >= 0.5, 2 * u - 1, -3.0)   # where u >= 0.5, p = (w + 1) / 2 is exactly u; elsewhere w = -3
assert_close(binarize_stochastic(tie, seed=7), -torch.ones(9), "binarize_stochastic(w, seed=7) with p == u exactly "
             "where u >= 0.5", atol=0, inputs={"w": tie, "u (seed 7)": u},
             hint="strictly +1 where u < p: a tie u == p gives -1 (u <= p gives +1)")
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
assert_not_modified(binarize_stochastic, torch.tensor([-3.0, -0.6, 0.2, 3.0]), 0)
### BEGIN HIDDEN TESTS
from autograder.checks.lab4_binary import check_binarize_stochastic
check_binarize_stochastic(binarize_stochastic)
### END HIDDEN TESTS

# %% [markdown] nbgrader={"grade": false, "grade_id": "part1_unbiased_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Experiment: stochastic binarization is unbiased, deterministic is not
# BinaryConnect keeps its latent weights in $[-1, 1]$, where the hard sigmoid is a probability; below, `conv2`'s weights
# scaled into that range as Part 5's training does (divided by `BINARYCONNECT_LATENT_SCALE` times their mean |w| per
# channel, then clipped). One stochastic draw is a poor copy of a weight, but the average of $K$ draws converges to it,
# the error shrinking like $1/\sqrt{K}$; the deterministic sign is the same ±1 every time, and its average never gets
# closer.

# %% nbgrader={"grade": false, "grade_id": "part1_unbiased", "locked": true, "schema_version": 3, "solution": false, "task": false}
from lowbit.quant.binary_train import BINARYCONNECT_LATENT_SCALE

w = model.conv2.weight.detach()
latent = (w / (BINARYCONNECT_LATENT_SCALE * per_channel(w.abs().mean(dim=(1, 2, 3)), w))).clamp(-1, 1)
DRAWS = (1, 10, 100) if lowbit.GRADING else (1, 10, 100, 1000)
total = torch.zeros_like(latent)
for k in tqdm(range(max(DRAWS)), desc="stochastic draws"):
    total += binarize_stochastic(latent, seed=k)
    if k + 1 in DRAWS:
        print(f"average of {k + 1:>4} stochastic draws: mean |average - w| = "
              f"{float((total / (k + 1) - latent).abs().mean()):.4f}")
print(f"deterministic binarize (any number of draws): mean |sign(w) - w| = "
      f"{float((binarize(latent) - latent).abs().mean()):.4f}")

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
assert_not_modified(sign_ste, torch.tensor([-2.0, -0.5, 0.3, 1.5]))
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
for bad, why in ((torch.tensor(1.0), "a 0-dim tensor has no channel axis"),
                 (torch.zeros(3, 0), "channels without weights have no mean (0 / 0 = NaN)")):
    try:
        bwn_scale(bad)
    except ValueError:
        print(f"✓ bwn_scale of shape {tuple(bad.shape)} raises ValueError")
    else:
        raise AssertionError(f"bwn_scale of shape {tuple(bad.shape)} must raise ValueError: {why}")
assert_not_modified(bwn_scale, torch.tensor([[1.0, -3.0], [-0.5, 0.5]]))
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
assert_not_modified(binarize_weights, torch.tensor([[0.5, -1.5, 0.0, 2.0], [-0.2, -0.4, 0.1, 0.3]]))
### BEGIN HIDDEN TESTS
from autograder.checks.lab4_binary import check_binarize_weights
check_binarize_weights(binarize_weights)
### END HIDDEN TESTS

# %% [markdown] nbgrader={"grade": false, "grade_id": "part2_experiment_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Experiment: what α buys, before any training
# For every layer of the pretrained CNN, the relative reconstruction error
# $\lVert W - \hat W\rVert^2 / \lVert W\rVert^2$ of BinaryConnect's $\operatorname{sign}(W)$ and of your BWN weights
# $\alpha \odot \operatorname{sign}(W)$. (For Gaussian weights the optimum leaves $1 - 2/\pi \approx 36\,\%$ of the
# energy: $\alpha^2 = (\mathbb{E}|w|)^2 = \tfrac{2}{\pi}\sigma^2$.)
# Then the accuracy when `conv2` and `conv3` use each version, **without any training** and with the BatchNorm
# statistics of the float network: BatchNorm was calibrated for weights of order 0.1, and unscaled ±1 weights
# multiply each channel's output by about $1/\alpha_c$ — a different factor per channel.

# %% nbgrader={"grade": false, "grade_id": "part2_experiment", "locked": true, "schema_version": 3, "solution": false, "task": false}
from lowbit.quant.modules import quantizable_layers


def relative_error(w: torch.Tensor, q: torch.Tensor) -> float:
    return float((w - q).square().sum() / w.square().sum())


def with_weights(weight_fn, layers=("conv2", "conv3")) -> nn.Module:
    """A copy of the pretrained CNN whose `layers` compute with weight_fn(weight): no training."""
    net = copy.deepcopy(model)
    with torch.no_grad():
        for name in layers:
            getattr(net, name).weight.copy_(weight_fn(getattr(net, name).weight))
    return net


print(f"{'layer':>6s} {'weights':>8s} {'sign(W)':>9s} {'α·sign(W)':>10s}   (relative reconstruction error)")
for name, layer in quantizable_layers(model).items():
    w = layer.weight.detach()
    print(f"{name:>6s} {w.numel():>8,d} {relative_error(w, binarize(w)):>9.2f} "
          f"{relative_error(w, binarize_weights(w)):>10.3f}")
no_training = {label: lowbit.train.evaluate(with_weights(fn), test_loader, max_batches=EVAL_BATCHES)
               for label, fn in (("sign(W)", binarize), ("α·sign(W)", binarize_weights))}
print(f"accuracy, conv2 and conv3 binarized, no training: FP32 {100 * fp32_accuracy:.2f} %, " +
      ", ".join(f"{label} {100 * acc:.2f} %" for label, acc in no_training.items()))

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
assert_dtype(twn_threshold(w.half()), torch.float16, "twn_threshold of a float16 weight keeps float16")
assert_not_modified(twn_threshold, torch.tensor([[1.0, -2.0, 0.0, 1.0], [0.1, -0.1, 0.3, -0.3]]))
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
assert_not_modified(twn_quantize, torch.tensor([[1.0, -0.2, 0.4, -0.6], [-0.3, -0.1, -0.5, -0.3]]))
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
assert_not_modified(ttq_quantize, torch.tensor([-2.0, -0.1, 0.0, 0.5, 1.0]), torch.tensor(1.5), torch.tensor(0.5))
### BEGIN HIDDEN TESTS
from autograder.checks.lab4_binary import check_ttq_quantize
check_ttq_quantize(ttq_quantize)
### END HIDDEN TESTS

# %% [markdown] nbgrader={"grade": false, "grade_id": "part3_sweep_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Experiment: where should the threshold be?
# Your `twn_quantize` on `conv2` with $\Delta_c = f \cdot \operatorname{mean}|W_c|$ for factors $f$ from 0 (no zeros:
# BWN) to 1.5, the relative reconstruction error and the fraction of zeros. TWN's 0.7 should sit near the minimum;
# the binary error (BWN) is the value at $f = 0$.

# %% nbgrader={"grade": false, "grade_id": "part3_sweep", "locked": true, "schema_version": 3, "solution": false, "task": false}
w = model.conv2.weight.detach()
mean_abs = w.abs().mean(dim=(1, 2, 3))
factors = torch.linspace(0, 1.5, 16 if lowbit.GRADING else 31)
errors, zeros = [], []
for f in factors:
    q = twn_quantize(w, delta=float(f) * mean_abs)
    errors.append(relative_error(w, q))
    zeros.append(float((q == 0).float().mean()))
best = int(torch.tensor(errors).argmin())
with plt.ioff():
    figure, ax = plt.subplots(figsize=(7, 3.2), layout="constrained")
ax.plot(factors.numpy(), errors, marker=".", color="C3", label="relative error (TWN)")
ax.axhline(relative_error(w, binarize_weights(w)), color="0.5", linestyle="dotted", label="binary (BWN)")
ax.axvline(0.7, color="C0", linestyle="dashed", linewidth=1, label="TWN's 0.7")
ax.set_xlabel("threshold factor f (Δ = f · mean|W|)")
ax.set_ylabel("||W - Ŵ||² / ||W||²")
ax.legend(loc="upper center", fontsize="small")
ax.set_title("conv2: ternary reconstruction error vs threshold")
display(figure)
plt.close(figure)
print(f"best factor {float(factors[best]):.2f}: error {errors[best]:.3f}, {100 * zeros[best]:.0f} % zeros; "
      f"f = 0.7: error {relative_error(w, twn_quantize(w)):.3f}; binary (BWN): {errors[0]:.3f}")

# %% [markdown] nbgrader={"grade": false, "grade_id": "part3_explore_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Explore: the levels on the weights
# A layer's weight histogram with the levels of each method drawn on it (solid: ±1, ±α_c, W_p / 0 / −W_n) and the
# thresholds ±Δ (dashed), computed by **your** functions; below it, the map from latent to quantized weight. Pick a
# layer and a single output channel, move TWN's factor or TTQ's t, and read the numbers beside: reconstruction
# error, fraction of zeros, and bits per weight — what the codes take (1 or 2), what the fp32 scales add, and the
# codes' entropy (what an ideal coder would need). In the whole-layer view every channel has its own α and Δ, so for
# BWN and TWN the lines sit at their mean over the channels and a shaded band spans their range. (TTQ starts from
# $W_p$, $W_n$ = the mean |w| above Δ and below −Δ.)

# %% nbgrader={"grade": false, "grade_id": "part3_widget", "locked": true, "schema_version": 3, "solution": false, "task": false}
widget_functions = {"binarize": binarize, "binarize_weights": binarize_weights, "twn_threshold": twn_threshold,
                    "twn_quantize": twn_quantize, "ttq_quantize": ttq_quantize}
viz.binary.levels_explorer(model, functions=widget_functions, method="twn", layer="conv2")

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
assert_not_modified(pack_signs, torch.tensor([[1.0, -1.0, 0.0], [-2.0, 0.5, -0.0]]))
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

# %% [markdown] nbgrader={"grade": false, "grade_id": "part4_exact_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Experiment: a binary convolution is an XNOR–popcount matmul, bit for bit
# A convolution is a matrix product of the weights `[C_out, C_in·3·3]` with the input's patches `[positions, C_in·3·3]`
# (`torch.nn.functional.unfold`). Take `conv3`'s input for 100 test images before the ReLU (so it has both signs),
# binarize it and the weights, and compare `conv2d(sign(x), sign(W))` with your packed product. (No padding here: a
# padded 0 would be a third value, which `pack_signs` stores as +1.) Then the speed of your torch version against the
# float product of the same ±1 matrices, and the memory.

# %% nbgrader={"grade": false, "grade_id": "part4_exact", "locked": true, "schema_version": 3, "solution": false, "task": false}
images, _ = next(iter(test_loader))
with torch.no_grad():
    x = model.pool2(model.bn2(model.conv2(model.pool1(model.relu1(model.bn1(model.conv1(images[:100])))))))
    binary_conv = nn.functional.conv2d(binarize(x), binarize(model.conv3.weight))      # [100, 64, 5, 5]
patches = nn.functional.unfold(x, kernel_size=3).transpose(1, 2).reshape(-1, 64 * 9)   # [100 · 25, 576]
weights = model.conv3.weight.detach().reshape(64, -1)                                  # [64, 576]
start = time.perf_counter()
xnor = xnor_matmul(pack_signs(patches), pack_signs(weights), patches.shape[1])        # [2500, 64] int64
seconds = time.perf_counter() - start
as_conv = xnor.reshape(100, 25, 64).transpose(1, 2).reshape(100, 64, 5, 5)
print(f"conv3 on 100 images: {patches.shape[0]:,} patches × 64 filters of n = {patches.shape[1]} signs "
      f"({pack_signs(weights).shape[1]} words each) in {seconds:.2f} s; "
      f"equal to the float conv2d of the ±1 tensors: {torch.equal(as_conv, binary_conv.round().long())}")

# %% nbgrader={"grade": false, "grade_id": "part4_timing", "locked": true, "schema_version": 3, "solution": false, "task": false}
M, N, n = (64, 64, 1024) if lowbit.GRADING else (256, 256, 4096)
generator = torch.Generator().manual_seed(0)
A, B = binarize(torch.randn(M, n, generator=generator)), binarize(torch.randn(N, n, generator=generator))
a, b = pack_signs(A), pack_signs(B)


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


xnor_s, float_s = best_of(lambda: xnor_matmul(a, b, n)), best_of(lambda: A @ B.T)
print(f"[{M}, {n}] × [{N}, {n}]ᵀ, one thread: your xnor_matmul {1e3 * xnor_s:.1f} ms, fp32 A @ B.T "
      f"{1e3 * float_s:.2f} ms — XNOR is {xnor_s / float_s:.0f}× slower here; bit-exact: "
      f"{torch.equal(xnor_matmul(a, b, n), (A @ B.T).long())}")
print(f"memory: packed {a.numel() * 8:,} bytes vs fp32 {A.numel() * 4:,} bytes "
      f"({A.numel() * 4 / (a.numel() * 8):.0f}× less)")

# %% [markdown] nbgrader={"grade": false, "grade_id": "part4_speed_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# In plain torch the packed product **loses**: torch has no popcount operation, so `popcount` counts the bits of
# every word with a dozen shift-and-mask passes (the SWAR trick), each one a pass over memory, and the
# `[block, N, W]` XOR is written to memory and read back, while `A @ B.T` runs a tuned, vectorized BLAS kernel that
# keeps its tiles in registers. The 64× fewer operations
# pay only with the processor's own `POPCNT` (or vector popcount) instruction in a fused kernel — XNOR-Net measured
# a 58× speed-up of binary convolutions that way. `benchmarks/bench_xnor.py` ("XNOR–popcount matmul" in
# `benchmarks/RESULTS.md`) times the same product against fp32 and int8 matmul at several sizes. The memory saving,
# 32×, holds whatever the kernel.
#
# ### Why the first and the last layer stay wide
# `conv1` sees raw pixels through only 9 weights per filter: binarized, one filter can only add and subtract pixels
# with equal weights, and a binary *input* (the image's signs) would throw away its grey levels. `fc` writes the
# logits: every error lands in the decision. Together they hold 10 % of the weights (288 + 5,760 of 61k), so
# keeping them at 8 bits costs little memory; every binary and ternary paper (BNN, XNOR-Net, TTQ, DoReFa-Net) does
# it. Below, your BWN weights in **one** layer at a time, no training.

# %% nbgrader={"grade": false, "grade_id": "part4_first_last", "locked": true, "schema_version": 3, "solution": false, "task": false}
weight_count = sum(layer.weight.numel() for layer in quantizable_layers(model).values())
for name, layer in quantizable_layers(model).items():
    accuracy = lowbit.train.evaluate(with_weights(binarize_weights, (name,)), test_loader, max_batches=EVAL_BATCHES)
    print(f"BWN in {name:>5s} only ({100 * layer.weight.numel() / weight_count:4.1f} % of the weights): "
          f"accuracy {100 * accuracy:.2f} % (FP32 {100 * fp32_accuracy:.2f} %)")

# %% [markdown] nbgrader={"grade": false, "grade_id": "part5_intro", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ## Part 5 — Train them
#
# lowbit's `train_binary` assembles each network **from your functions** and trains it from the pretrained CNN:
# `conv2` and `conv3` get a weight quantizer that calls your `sign_ste` (BinaryConnect), `binarize_stochastic`
# (BinaryConnect, stochastic; a fresh seeded draw in every training step, with a straight-through gradient),
# `binarize_weights` (BWN), `twn_quantize` (TWN, with a plain STE) or `ttq_quantize` (TTQ, with $W_p$, $W_n$ learned
# per layer); **W1A1** uses BWN weights and your `sign_ste` on the *activations* entering `conv2` and `conv3`, in
# place of the ReLUs before them. `conv1` and `fc` keep 8-bit weights (LSQ, per channel; `fc`'s input at 8 bits
# in W1A1). BinaryConnect's latent weights start as the pretrained ones scaled into $[-1, 1]$ and are clipped there
# after every step (Courbariaux et al. 2015).
#
# **Recipe (short, for this notebook):** half an epoch over the 6,000 embedded training images (24 batches of 128), Adam
# at each method's tuned learning rate (`binary_train.DEFAULT_LR`: $10^{-3}$; $3 \cdot 10^{-3}$ for stochastic
# BinaryConnect, $5 \cdot 10^{-3}$ for W1A1; learned scales at a fraction of it, `SCALE_LR`) decaying to 0 along a
# cosine, BatchNorm on batch statistics, seeded. The README's "Lab 4" section and `benchmarks/RESULTS.md` ("Lab 4
# accuracy") list the full recipe (3 epochs, embedded and full test sets) run with lowbit's reference functions.
#
# **Test time for stochastic BinaryConnect.** The paper evaluates its stochastically trained network with the
# **real-valued** latent weights, not with a draw of their signs: the binary weights were a regulariser (like
# dropout) during training. Such a network is not binary at test time (32 bits per weight). We report both:
# `set_stochastic_test_mode(model, "real")` (the default) and `"sign"`, the truly binary network.

# %% nbgrader={"grade": false, "grade_id": "part5_setup", "locked": true, "schema_version": 3, "solution": false, "task": false}
from lowbit.quant import binary_train
from lowbit.results import Row

YOUR_FUNCTIONS = {"binarize": binarize, "binarize_stochastic": binarize_stochastic, "sign_ste": sign_ste,
                  "binarize_weights": binarize_weights, "twn_quantize": twn_quantize, "ttq_quantize": ttq_quantize}
FRACTION = 0.02 if lowbit.GRADING else 0.5   # of an epoch: 1 batch while grading, 24 batches here
fp32_bits = binary_train.binary_size_bits(model)
runs, accuracy, size_bits = {}, {}, {}


def train(method: str) -> None:
    """Train `method` from the pretrained CNN with the short recipe and your functions; record the results."""
    run = binary_train.train_binary(model, method, epochs=1, fraction=FRACTION, functions=YOUR_FUNCTIONS)
    runs[method] = run
    accuracy[method] = lowbit.train.evaluate(run.model, test_loader, max_batches=EVAL_BATCHES)
    size_bits[method] = binary_train.binary_size_bits(run.model)
    print(f"{method}: {100 * accuracy[method]:.2f} % after {len(run.losses)} batches at lr {run.settings['lr']:g} "
          f"({run.seconds:.1f} s); "
          f"{size_bits[method] / 8192:.1f} KiB, {fp32_bits / size_bits[method]:.1f}× smaller than FP32 "
          f"({100 * fp32_accuracy:.2f} %, {fp32_bits / 8192:.0f} KiB)")

# %% nbgrader={"grade": false, "grade_id": "part5_binaryconnect", "locked": true, "schema_version": 3, "solution": false, "task": false}
train("binaryconnect")
train("binaryconnect_stochastic")
stochastic = runs["binaryconnect_stochastic"].model
binary_train.set_stochastic_test_mode(stochastic, "sign")
accuracy["binaryconnect_stochastic, signs"] = lowbit.train.evaluate(stochastic, test_loader, max_batches=EVAL_BATCHES)
size_bits["binaryconnect_stochastic, signs"] = binary_train.binary_size_bits(stochastic)
binary_train.set_stochastic_test_mode(stochastic, "real")
print(f"stochastic BinaryConnect tested with the real-valued weights "
      f"{100 * accuracy['binaryconnect_stochastic']:.2f} %, with their signs "
      f"{100 * accuracy['binaryconnect_stochastic, signs']:.2f} %")

# %% nbgrader={"grade": false, "grade_id": "part5_scaled", "locked": true, "schema_version": 3, "solution": false, "task": false}
for method in ("bwn", "twn", "ttq"):
    train(method)

# %% nbgrader={"grade": false, "grade_id": "part5_xnor", "locked": true, "schema_version": 3, "solution": false, "task": false}
train("xnor")

# %% nbgrader={"grade": false, "grade_id": "part5_curves", "locked": true, "schema_version": 3, "solution": false, "task": false}
viz.qat.training_curves({method: run.losses for method, run in runs.items()}, reference=math.log(10),
                        title="Binary and ternary training from the pretrained CNN (short recipe)")

# %% [markdown] nbgrader={"grade": false, "grade_id": "part5_ttq_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Explore: what TTQ learned
# The levels explorer on the trained TTQ network's latent weights, with its **learned** $W_p$ and $W_n$ — one pair
# per layer, and unlike TWN's single α per channel they need not be equal: the asymmetry is what TTQ adds. (With the
# short recipe and the scales' small learning rate they move little from where they started.)

# %% nbgrader={"grade": false, "grade_id": "part5_ttq_widget", "locked": true, "schema_version": 3, "solution": false, "task": false}
ttq_layers = {name: module for name, module in runs["ttq"].model.named_modules()
              if isinstance(getattr(module, "weight_quantizer", None), binary_train.TTQQuantizer)}
learned = {name: (m.weight_quantizer.w_p.detach(), m.weight_quantizer.w_n.detach()) for name, m in ttq_layers.items()}
for name, (w_p, w_n) in learned.items():
    start_p, start_n = viz.binary.ttq_initial_scales(getattr(model, name).weight.detach(), 0.05)
    print(f"{name}: W_p {float(start_p):.4f} -> {float(w_p):.4f}, W_n {float(start_n):.4f} -> {float(w_n):.4f} "
          "(start -> trained)")
viz.binary.levels_explorer({name: m.weight for name, m in ttq_layers.items()}, functions=widget_functions,
                           method="ttq", layer="conv2", ttq_scales=learned)

# %% [markdown] nbgrader={"grade": false, "grade_id": "part6_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ## Part 6 — Wrap-up
#
# ### Your results
# All computed with your functions in this notebook (short recipe; `conv1` and `fc` at 8 bits; sizes count 1 bit
# per binary weight, 2 per ternary one, 8 for the wide layers and 32 for scales, BatchNorm and biases). Expect the
# ordering of the papers' ImageNet anchors (ResNet-18: FP 69.6 %, TTQ 66.6 %, TWN 65.3 %, BWN 60.8 %): ternary above
# binary, a scale above none, TTQ's learned asymmetric levels at or above TWN's; W1A1, which binarizes the
# activations too, lowest. Every run is seeded: a gap of more than a point or two from the reference run of the same
# recipe usually means a bug.
#
# **The full recipe** (3 epochs instead of half of one, lowbit's reference functions; README "Lab 4",
# `benchmarks/bench_lab4_accuracy.py`), embedded test set / full test set (FP32 92.67 % / 92.34 %):
#
# | method | accuracy | vs FP32 | size vs FP32 |
# |---|---|---|---|
# | BinaryConnect, deterministic | 91.10 % / 90.45 % | −1.57 / −1.89 pt | 17.1× |
# | BinaryConnect, stochastic, real-valued test weights | 90.57 % / 90.18 % | −2.10 / −2.16 pt | 1.1× |
# | BinaryConnect, stochastic, sign test weights | 89.30 % / 88.55 % | −3.37 / −3.79 pt | 17.1× |
# | BWN | 91.20 % / 91.14 % | −1.47 / −1.20 pt | 16.5× |
# | TWN | 91.70 % / 91.65 % | −0.97 / −0.69 pt | 11.3× |
# | TTQ | 91.73 % / 91.41 % | −0.93 / −0.93 pt | 11.5× |
# | W1A1 (BWN weights, sign activations) | 87.50 % / 86.84 % | −5.17 / −5.50 pt | 16.5× |
#
# With six times the training every method gains, W1A1 most (+9 pt: binary activations need the most adaptation),
# and the ordering holds; TTQ and TWN end within 1.5 pt of FP32, BWN within 3 pt.

# %% nbgrader={"grade": false, "grade_id": "part6_table", "locked": true, "schema_version": 3, "solution": false, "task": false}
LABELS = {"binaryconnect": ("BinaryConnect (sign, no scale)", 1),
          "binaryconnect_stochastic": ("BinaryConnect stochastic, real-valued test weights", 32),
          "binaryconnect_stochastic, signs": ("BinaryConnect stochastic, tested with signs", 1),
          "bwn": ("BWN (α · sign)", 1), "twn": ("TWN (Δ = 0.7 · mean|W|)", 2), "ttq": ("TTQ (learned W_p, W_n)", 2),
          "xnor": ("W1A1 (BWN weights, sign activations)", 1)}
rows = [Row("FP32", fp32_accuracy, bits=32, size_bits=fp32_bits)]
rows += [Row(label, accuracy[key], bits=bits, size_bits=size_bits[key]) for key, (label, bits) in LABELS.items()]
print(lowbit.results.table(rows))

# %% [markdown] nbgrader={"grade": false, "grade_id": "reflection_intro", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Reflection (graded by hand)
# Answer each in 3–5 sentences, citing numbers from your own results above.

# %% [markdown] nbgrader={"grade": false, "grade_id": "q1_prompt", "locked": true, "schema_version": 3, "solution": false, "task": false}
# **Q1 (4 points).** Why does a scale rescue a binary network? Use the reconstruction errors and the untrained
# accuracies of Part 2, and then explain why, after training, BinaryConnect without any scale ends up much closer
# to BWN in this CNN than before training.

# %% [markdown] nbgrader={"grade": true, "grade_id": "q1_answer", "locked": false, "points": 4, "schema_version": 3, "solution": true, "task": false}
# A ±1 weight is about ten times too large for weights of order 0.1: sign(W) leaves a relative reconstruction
# error of 8–73 (the error is larger than the weights themselves), α·sign(W) with α = mean|W| per channel, the
# least-squares optimum, about 0.32–0.40 (near 1 − 2/π for Gaussian weights). Without training, conv2 and conv3
# with sign(W) give about 38 % accuracy, with α·sign(W) about 57 % (FP32 92.7 %). A per-channel factor in front of
# a convolution, though, is exactly what the BatchNorm after it can absorb: BN divides each channel by its batch
# standard deviation during training, so the network re-learns the missing scale and BinaryConnect reaches ≈ 89 %
# against BWN's ≈ 90 % after half an epoch. The scale matters most where no normalisation follows (a linear layer,
# a residual sum) and, before any training, always.

# %% [markdown] nbgrader={"grade": false, "grade_id": "q2_prompt", "locked": true, "schema_version": 3, "solution": false, "task": false}
# **Q2 (4 points).** Why do the first and last layers stay at 8 bits? Use Part 4's one-layer-at-a-time experiment
# and the share of the weights each layer holds.

# %% [markdown] nbgrader={"grade": true, "grade_id": "q2_answer", "locked": false, "points": 4, "schema_version": 3, "solution": true, "task": false}
# Per weight, conv1 is by far the most sensitive layer: BWN in conv1 alone drops the accuracy to ≈ 44 %, although
# it holds 0.5 % of the weights (288), while conv3, with 60 % of the weights, loses only ≈ 10 pt. conv1 has only 9
# weights per filter on raw pixels: with ±α each filter can only add and subtract neighbouring pixels equally, and
# a binarized input would keep just the sign of each pixel. fc writes the logits, so every error lands directly in
# the decision (BWN in fc alone: ≈ 82 %). Keeping both at 8 bits costs little: 6,048 weights at 8 instead of 1 bit
# is ≈ 5 KiB of the model, and every binary and ternary paper (BNN, XNOR-Net, TWN, TTQ) does it.

# %% [markdown] nbgrader={"grade": false, "grade_id": "q3_prompt", "locked": true, "schema_version": 3, "solution": false, "task": false}
# **Q3 (5 points).** Where does ternary sit between 1 and 2 bits? Consider storage (the table's size column), the
# information the codes carry (the explorer's entropy), what the zeros buy in computation, and accuracy.

# %% [markdown] nbgrader={"grade": true, "grade_id": "q3_answer", "locked": false, "points": 5, "schema_version": 3, "solution": true, "task": false}
# A ternary code carries at most log2 3 ≈ 1.58 bits; stored simply it takes 2 bits (the table's 11.3× against 16.5×
# for binary), packed 5 trits to a byte 1.6 bits, and with TWN's threshold about 40–50 % of the codes are 0, so
# their entropy (the explorer: ≈ 1.5 bits per weight) is below that. In computation the zeros are free — a
# multiply by 0 is skipped, and a ternary dot product is two popcounts (the +1 and −1 masks) — so it costs about
# twice a binary one, still far from a 2-bit product of four levels. In accuracy ternary recovers most of the gap:
# TWN ≈ 91.2 % and TTQ ≈ 91.4 % against BWN's ≈ 90.2 % (FP32 92.7 %), because the small weights, which binary
# rounds to ±α, the largest relative error, become exact zeros: the reconstruction error falls from 0.40 to 0.22.

# %% [markdown] nbgrader={"grade": false, "grade_id": "q4_prompt", "locked": true, "schema_version": 3, "solution": false, "task": false}
# **Q4 (5 points).** Explain the ordering of your results table, from W1A1 at the bottom to TTQ at the top. Why is
# stochastic BinaryConnect below the deterministic one here, and why does its real-valued test-time network not
# count as a binary network?

# %% [markdown] nbgrader={"grade": true, "grade_id": "q4_answer", "locked": false, "points": 5, "schema_version": 3, "solution": true, "task": false}
# The more of the network is reduced and the cruder the levels, the lower the accuracy: TTQ (≈ 91.3 %) ≥ TWN (≈ 91.2 %),
# three levels with (TTQ) or without learned asymmetric scales; BWN (≈ 90.2 %), one bit with the least-squares scale;
# BinaryConnect (≈ 89.1 %), one bit without it; W1A1 (≈ 78.5 %) binarizes the activations too, so every feature map
# entering conv2 and conv3 keeps one bit per value, and the STE on activations adds gradient error on top. This matches
# the papers' ImageNet ordering (FP 69.6 > TTQ 66.6 > TWN 65.3 > BWN 60.8). Stochastic BinaryConnect (≈ 88.4 % with the
# real-valued weights, ≈ 85.4 % with their signs) trains a different random network at every step: the latent weights
# lie well inside (−1, 1), where p is far from 0 and 1, so many signs change from one step to the next — a strong
# regulariser (like dropout) that pays over long training, not over half an epoch of fine-tuning, and the network it
# leaves is tuned to the average weight, not to one draw of signs. Its test-time network uses the 32-bit latent weights
# (1.1× smaller than FP32): it is a float network trained with binary noise, not a binary one.

# %% [markdown] nbgrader={"grade": false, "grade_id": "further_reading", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Further reading
# - M. Courbariaux, Y. Bengio, J.-P. David, 2015. *BinaryConnect: Training Deep Neural Networks with binary weights during propagations.* NeurIPS.
# - I. Hubara, M. Courbariaux, D. Soudry, R. El-Yaniv, Y. Bengio, 2016. *Binarized Neural Networks.* NeurIPS.
# - M. Rastegari, V. Ordonez, J. Redmon, A. Farhadi, 2016. *XNOR-Net: ImageNet Classification Using Binary Convolutional Neural Networks.* ECCV.
# - F. Li, B. Zhang, B. Liu, 2016. *Ternary Weight Networks.* arXiv:1605.04711.
# - C. Zhu, S. Han, H. Mao, W. J. Dally, 2017. *Trained Ternary Quantization.* ICLR.
# - S. Zhou et al., 2016. *DoReFa-Net: Training Low Bitwidth Convolutional Neural Networks with Low Bitwidth Gradients.* arXiv:1606.06160.
# - Z. Liu et al., 2018. *Bi-Real Net: Enhancing the Performance of 1-bit CNNs with Improved Representational Capability and Advanced Training Algorithm.* ECCV.
# - H. Qin et al., 2020. *Binary Neural Networks: A Survey.* Pattern Recognition.
# - S. Ma et al., 2024. *The Era of 1-bit LLMs: All Large Language Models are in 1.58 Bits.* arXiv:2402.17764 (ternary weights, TWN's idea, at LLM scale).
#
# Next: **Lab 5**, where the rounding decision itself is learned (AdaRound).
