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
# # Lab 3 — Quantization-aware training: the straight-through estimator, learned ranges, 4 and 2 bits
#
# Post-training quantization (Lab 1) rounds a trained network and hopes for the best; at 4 bits and below
# the hope runs out. **Quantization-aware training** (QAT) puts the rounding into the forward pass while the
# network trains, so the weights — and the quantization ranges themselves — learn to live with it. The catch:
# rounding has no useful gradient. This lab is about the estimators that supply one.
#
# **You will be able to**
# 1. explain why a training step through plain rounding changes nothing, and write the straight-through
#    estimator (STE) and its clipped form with the gradients of `torch.fake_quantize_per_tensor_affine`;
# 2. make the quantization range a trained parameter — LSQ's step with its gradient scale, LSQ+'s zero point,
#    PACT's clipping level — and recognise the ways such training breaks;
# 3. fold BatchNorm into a convolution for QAT, with batch statistics while training and running statistics after;
# 4. train the course CNN at W8A8, W4A4, W3A3 and W2A2, compare with PTQ and FP32, and get 2 bits to train;
# 5. judge when QAT pays off over PTQ, and what the STE gets wrong.
#
# **Prerequisites**: Lab 1 (linear quantization, `r = S(q − Z)`); PyTorch autograd (`backward`, `detach`,
# `torch.autograd.Function`); BatchNorm. **Time**: 3 hours.
#
# | part | graded functions | points |
# |---|---|---|
# | 1. Why rounding stops gradients | `ste_round`, `fake_quantize_ste` | 18 |
# | 2. Learned ranges | `lsq_grad_scale`, `lsq_init_step`, `lsq_fake_quantize`, `lsq_plus_fake_quantize`, `pact_quantize` | 50 |
# | 3. BatchNorm in QAT | `fold_batchnorm`, `bn_fold_statistics` | 18 |
# | 4. QAT of the course CNN | — (experiments with your functions) | — |
# | 5. Wrap-up | three reflection questions (graded by hand) | 14 |
#
# **How this notebook works.** Write each function in its answer cell (replace the line
# `raise NotImplementedError()`), then run the test cell below it. Visible tests show what went in, what was
# expected and what came back — for **values and gradients**. Hidden checks run at grading time on more cases
# (values exactly on a clip boundary, ties, bits 2–8, per-channel steps, float16 inputs, step ≤ 0); they call
# only the functions you write and ask for their gradients, so keep the names and argument orders. Grading
# runs the setup cell and your answer cells only — a function must not depend on a variable computed in an
# experiment cell. Before submitting run `autograder check lab3_qat.ipynb`. Every widget and experiment below
# uses **your** functions.

# %% nbgrader={"grade": false, "grade_id": "setup", "locked": true, "schema_version": 3, "solution": false, "task": false}
# %matplotlib widget
import copy
import itertools
import math

import matplotlib.pyplot as plt
import torch
from torch import nn
from tqdm.auto import tqdm

import lowbit
from lowbit import viz
from lowbit.quant.validate import (check_bits, check_float_tensor, check_positive_tensor, checked_qparams,
                                   quantized_range)
from lowbit.testing import (assert_close, assert_dtype, assert_gradient_close, assert_not_modified, assert_shape,
                            gradients_of)

torch.set_num_threads(1)  # the course machine is shared: one thread is faster than two busy ones
lowbit.seed_everything(0)
model = lowbit.models.pretrained("cnn")  # FashionCNN, fp32, eval mode
_, test_loader = lowbit.data.loaders(batch_size=500)
# While a grader runs this notebook, experiments shrink (fewer batches and epochs; same code).
EVAL_BATCHES = 1 if lowbit.GRADING else None
TRAIN_BATCHES = 1 if lowbit.GRADING else None
fp32_accuracy = lowbit.train.evaluate(model, test_loader, max_batches=EVAL_BATCHES)
print(f"FashionCNN: {sum(p.numel() for p in model.parameters()):,} parameters, "
      f"FP32 accuracy on the embedded test set: {100 * fp32_accuracy:.2f} %")

# %% [markdown] nbgrader={"grade": false, "grade_id": "part1_intro", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ## Part 1 — Why rounding stops gradients
#
# Fake quantization (Lab 1) maps a weight to the nearest grid point and back:
#
# $$ \hat w = S\,\big(\operatorname{clamp}(\operatorname{round}(w/S) + Z,\ q_{\min},\ q_{\max}) - Z\big). $$
#
# `round` is a staircase: flat between the steps, a jump at each half-integer. Its derivative is $0$ almost
# everywhere (and undefined on the jumps), so by the chain rule $\partial\mathcal{L}/\partial w = 0$ for every
# weight: an optimizer step through $\hat w$ changes **nothing**. The cell below shows it on one layer.

# %% nbgrader={"grade": false, "grade_id": "part1_zero_gradient", "locked": true, "schema_version": 3, "solution": false, "task": false}
def one_sgd_step(fake_quant, lr: float = 0.1) -> torch.Tensor:
    """One SGD step on the classifier's latent float weights, the forward pass seeing fake_quant(weights).
    Returns the change of the latent weights."""
    latent = model.fc.weight.detach().clone().requires_grad_()
    optimizer = torch.optim.SGD([latent], lr=lr)
    images, labels = next(iter(test_loader))
    logits = torch.func.functional_call(model, {"fc.weight": fake_quant(latent)}, (images,))
    nn.functional.cross_entropy(logits, labels).backward()
    before = latent.detach().clone()
    optimizer.step()
    return latent.detach() - before


fc_scale = model.fc.weight.detach().abs().max() / 7           # symmetric 4-bit grid for the classifier


def plain_fake_quant(w: torch.Tensor) -> torch.Tensor:  # Lab 1's formula; autograd differentiates torch.round
    return lowbit.quant.fakequant.fake_quantize(w, fc_scale, 0, -8, 7, gradient="none")


change = one_sgd_step(plain_fake_quant)
print(f"plain fake-quant: {int((change != 0).sum())} of {change.numel()} weights moved, "
      f"largest change {float(change.abs().max()):.3g}")

# %% [markdown] nbgrader={"grade": false, "grade_id": "ste_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### The straight-through estimator
#
# Bengio, Léonard & Courville (2013, *Estimating or Propagating Gradients Through Stochastic Neurons for
# Conditional Computation*) proposed to **pretend, in the backward pass, that the rounding was the identity**:
#
# $$ \text{forward: } y = \operatorname{round}(x), \qquad \text{backward: } \frac{\partial \mathcal{L}}{\partial x} := \frac{\partial \mathcal{L}}{\partial y}. $$
#
# In PyTorch this is one line, `torch.round(x) - x.detach() + x`: its value is `round(x)` (the two `x` cancel,
# exactly, in floating point), but only the last term is seen by autograd, whose derivative is 1. The same
# estimator as a custom `torch.autograd.Function` is written out after the test below.
#
# Applied to fake quantization, the plain STE lets the gradient through everywhere, also where `clamp` cut the
# value off. The **clipped STE** (Jacob et al., 2018, *Quantization and Training of Neural Networks for
# Efficient Integer-Arithmetic-Only Inference*) passes it only where the code was not clamped,
#
# $$ \frac{\partial \hat x}{\partial x} = \mathbb{1}\big[q_{\min} \le \operatorname{round}(x/S) + Z \le q_{\max}\big], $$
#
# so a weight beyond the grid stops being pushed further out. That is exactly the gradient of
# `torch.fake_quantize_per_tensor_affine` and `torch.fake_quantize_per_channel_affine`. Note where the test is
# made: on the *rounded* code, so a value half a step outside the grid still counts as inside.

# %% nbgrader={"grade": false, "grade_id": "ste_round", "locked": false, "schema_version": 3, "solution": true, "task": false}
def ste_round(x: torch.Tensor) -> torch.Tensor:
    """Round half to even in the forward pass; pass the gradient through unchanged (straight-through).

    Args:
        x: floating tensor of any shape (float32, float16, bfloat16 or float64), at least one element.
    Returns:
        torch.round(x): same shape and dtype. Backward: d round / dx := 1, so x.grad equals the upstream gradient.
    Raises:
        TypeError if x is not a floating-point tensor; ValueError if it is empty. x is not modified.
    """
    ### BEGIN SOLUTION
    check_float_tensor(x, "x", nonempty=True)
    return torch.round(x) - x.detach() + x
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_ste_round", "locked": true, "points": 6, "schema_version": 3, "solution": false, "task": false}
x = torch.tensor([-1.5, -0.5, 0.4, 0.5, 1.5, 2.5])
upstream = torch.tensor([1.0, -2.0, 3.0, 0.5, 4.0, -1.0])
assert_close(ste_round(x), torch.tensor([-2.0, -0.0, 0.0, 0.0, 2.0, 2.0]), "ste_round(x)", atol=0, inputs={"x": x},
             hint="halves round to the even neighbour: torch.round, not floor(x + 0.5)")
assert_gradient_close(ste_round, x, wrt=[0], upstream=upstream, expected=[upstream], what="ste_round(x)", atol=0,
                      hint="the gradient must pass unchanged: torch.round alone has gradient 0; keep `+ x` outside detach()")
assert_dtype(ste_round(x.half()), torch.float16, "ste_round of a float16 tensor keeps float16")
assert_not_modified(ste_round, x)
### BEGIN HIDDEN TESTS
from autograder.checks.lab3_qat import check_ste_round
check_ste_round(ste_round)
### END HIDDEN TESTS

# %% [markdown] nbgrader={"grade": false, "grade_id": "ste_function_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# The same estimator as an `autograd.Function`: `forward` computes the value, `backward` receives
# $\partial\mathcal{L}/\partial y$ and returns whatever we declare to be $\partial\mathcal{L}/\partial x$. This
# form is what libraries use (it saves memory: nothing is kept for the backward pass) and the one that lets you
# return *any* gradient, e.g. a clipped or a smoothed one.

# %% nbgrader={"grade": false, "grade_id": "ste_function", "locked": true, "schema_version": 3, "solution": false, "task": false}
class RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        return grad_output  # "d round / dx = 1"


x = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 4
upstream = torch.randn(1000, generator=torch.Generator().manual_seed(1))
yours, (your_grad,) = gradients_of(ste_round, x, wrt=[0], upstream=upstream)
function, (function_grad,) = gradients_of(RoundSTE.apply, x, wrt=[0], upstream=upstream)
print(f"your ste_round vs RoundSTE on 1,000 values: same values {torch.equal(yours, function)}, "
      f"same gradients {torch.equal(your_grad, function_grad)}")

# %% nbgrader={"grade": false, "grade_id": "fake_quantize_ste", "locked": false, "schema_version": 3, "solution": true, "task": false}
def fake_quantize_ste(x: torch.Tensor, scale, zero_point, bits: int, signed: bool = True) -> torch.Tensor:
    """Fake-quantize with the clipped straight-through gradient (torch.fake_quantize_per_tensor_affine's).

    Forward: S · (clamp(round(x / S) + Z, q_min, q_max) − Z), float32, rounding half to even.
    Backward: the upstream gradient where round(x / S) + Z lies in [q_min, q_max] (both ends included), 0 where
    it was clamped. scale and zero_point get no gradient.

    Args:
        x: floating tensor [...] (float32/float16/bfloat16/float64), at least one element.
        scale: a float > 0 or a float tensor > 0 broadcasting against x (per channel: shape [C, 1, ..., 1]).
        zero_point: an int or an integer-valued tensor broadcasting against x, inside [q_min, q_max].
        bits: int in 1..32; signed: range [-2^(b-1), 2^(b-1) - 1] if True, else [0, 2^b - 1].
    Returns:
        float32 tensor of x's shape.
    Raises:
        TypeError / ValueError for a non-float or empty x, bits out of range, scale <= 0 or a bad zero point
        (lowbit's `checked_qparams` does the parameter checks). x is not modified.
    """
    ### BEGIN SOLUTION
    check_float_tensor(x, "x", nonempty=True)
    scale, zero_point, q_min, q_max = checked_qparams(x.shape, scale, zero_point, bits, signed)
    x = x.float()
    q = torch.round(x.detach() / scale) + zero_point
    inside = (q >= q_min) & (q <= q_max)                         # clipped STE: the gradient passes only here
    y = scale * (torch.clamp(q, q_min, q_max) - zero_point)
    return y + (x - x.detach()) * inside                         # value y; gradient 1 inside, 0 outside
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_fake_quantize_ste", "locked": true, "points": 12, "schema_version": 3, "solution": false, "task": false}
x = torch.tensor([-1.0, -0.7, 0.25, 0.75, 3.2, 3.6])
assert_close(fake_quantize_ste(x, 0.5, 1, 3, signed=False), torch.tensor([-0.5, -0.5, 0.0, 1.0, 3.0, 3.0]),
             "fake_quantize_ste(x, 0.5, 1, 3, signed=False)",
             atol=1e-7, inputs={"x": x}, hint="x/S = 0.5 rounds to 0 (half to even), then add Z = 1: add the zero "
                                            "point after rounding, then clamp to [0, 7]")
assert_gradient_close(fake_quantize_ste, x, 0.5, 1, 3, signed=False, wrt=[0], upstream=torch.ones(6),
                      expected=[torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0, 0.0])],
                      what="fake_quantize_ste(x, 0.5, 1, 3, signed=False), upstream ones", atol=0,
                      hint="clipped STE: 0 where round(x/S) + Z was clamped (x = -1.0, 3.6), 1 inside; decide on the rounded "
                  "code (x = -0.7 and 3.2 round onto the range's ends 0 and 7)")
w = torch.tensor([[0.3, -2.0, 0.9], [0.1, 2.2, -0.6]])
scale = torch.tensor([[0.5], [0.25]])
torch_w = w.clone().requires_grad_()
zeros = torch.zeros(2, dtype=torch.int32)
expected = torch.fake_quantize_per_channel_affine(torch_w, scale.reshape(-1), zeros, 0, -8, 7)
expected.sum().backward()
assert_close(fake_quantize_ste(w, scale, 0, 4), expected.detach(),
             "per-channel fake_quantize_ste(w, scale [2, 1], 0, 4) vs "
             "torch.fake_quantize_per_channel_affine", atol=1e-7, inputs={"w": w, "scale": scale})
assert_gradient_close(fake_quantize_ste, w, scale, 0, 4, wrt=[0], upstream=torch.ones(2, 3), expected=[torch_w.grad],
                      what="per channel, vs torch.fake_quantize_per_channel_affine", atol=0)
assert_dtype(fake_quantize_ste(x.half(), 0.5, 1, 3, signed=False), torch.float32, "fake_quantize_ste of float16 x")
assert_not_modified(fake_quantize_ste, x, 0.5, 1, 3, signed=False)
### BEGIN HIDDEN TESTS
from autograder.checks.lab3_qat import check_fake_quantize_ste
check_fake_quantize_ste(fake_quantize_ste)
### END HIDDEN TESTS

# %% [markdown] nbgrader={"grade": false, "grade_id": "latent_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Latent weights
# With the STE the step of Part 1 moves the weights. What it moves are **latent** ("shadow") float weights:
# the optimizer keeps and updates full-precision values, and every forward pass uses their fake-quantized
# copy. A single step is usually too small to move a weight across a rounding boundary, but the small updates
# accumulate in the latent weight until it does. Courbariaux, Bengio & David (2015, *BinaryConnect: Training
# Deep Neural Networks with binary weights during propagations*) introduced this for ±1 weights; every QAT
# method since keeps it. Below: the same step as in Part 1 through your `fake_quantize_ste`, and how many of the
# quantized weights it changed.

# %% nbgrader={"grade": false, "grade_id": "part1_latent", "locked": true, "schema_version": 3, "solution": false, "task": false}
def ste_fake_quant(w: torch.Tensor) -> torch.Tensor:
    return fake_quantize_ste(w, fc_scale, 0, 4)


latent_before = model.fc.weight.detach()
change = one_sgd_step(ste_fake_quant)
codes_changed = (ste_fake_quant(latent_before + change) != ste_fake_quant(latent_before)).sum()
print(f"your clipped STE: {int((change != 0).sum())} of {change.numel()} latent weights moved "
      f"(largest change {float(change.abs().max()):.3g}, grid step {float(fc_scale):.3g}); "
      f"{int(codes_changed)} quantized weights changed")

# %% [markdown] nbgrader={"grade": false, "grade_id": "part1_explore", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Explore: the staircase and what flows back
# Top: your `fake_quantize_ste` with step $s$ (zero point 0, signed); middle: $\partial y/\partial x$, the
# clipped-STE mask; bottom: $\partial y/\partial s$ — empty here, since a fixed scale gets no gradient. Move
# the step: the shaded band is the grid's range; outside it the gradient is 0. After Part 2 the same widget
# shows LSQ, where the step does get a gradient.

# %% nbgrader={"grade": false, "grade_id": "part1_widget", "locked": true, "schema_version": 3, "solution": false, "task": false}
viz.qat.ste_explorer(lambda x, step, bits: fake_quantize_ste(x, step, 0, bits))

# %% [markdown] nbgrader={"grade": false, "grade_id": "part2_intro", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ## Part 2 — Learned ranges
#
# With a fixed scale the network can only move its weights onto the grid. **LSQ** (Esser, McKinstry, Bablani,
# Appuswamy & Modha, 2020, *Learned Step Size Quantization*) trains the grid too: the step $s$ is a
# parameter. With $v = x/s$ and the integer range $[-Q_N, Q_P]$ ($Q_N = 2^{b-1}$, $Q_P = 2^{b-1}-1$ signed;
# $Q_N = 0$, $Q_P = 2^b - 1$ unsigned),
#
# $$ \hat x = \operatorname{round}\big(\operatorname{clamp}(v, -Q_N, Q_P)\big)\cdot s, \qquad
#    \frac{\partial \hat x}{\partial x} = \begin{cases} 1 & -Q_N \le v \le Q_P \\ 0 & \text{otherwise,}\end{cases}
#    \qquad
#    \frac{\partial \hat x}{\partial s} = \begin{cases} -Q_N & v < -Q_N \\ \operatorname{round}(v) - v & -Q_N \le v \le Q_P \\ Q_P & v > Q_P. \end{cases} $$
#
# The STE on the rounding gives both: inside the range the step's gradient is the (signed) rounding error,
# which a larger step makes larger; outside, a larger step would bring the clipped value closer. Unlike the
# clipped STE, "inside" is decided on $v$ itself: LSQ's clamp comes before the rounding. Both ends count as
# inside — but `torch.clamp`'s own gradient is 0 *on* its bounds, so write the clamp with `torch.where`.
#
# **Gradient scale.** One step is shared by $N$ values (a whole tensor, or one output channel), so its
# gradient is a sum of $N$ terms and grows with $N$, and with $Q_P$, while the step itself is small. LSQ
# multiplies the step's gradient by
#
# $$ g = \frac{1}{\sqrt{N \cdot Q_P}} $$
#
# so that the step learns at the same relative rate as the weights. The trick: use
# $s' = s_{\text{detached}} + g\,(s - s_{\text{detached}})$, whose value is $s$ but whose gradient is $g$.
#
# **Initialization.** The paper starts from $s_0 = 2\,\langle |x| \rangle / \sqrt{Q_P}$ (mean absolute value).

# %% nbgrader={"grade": false, "grade_id": "lsq_grad_scale", "locked": false, "schema_version": 3, "solution": true, "task": false}
def lsq_grad_scale(num_elements: int, bits: int, signed: bool = True) -> float:
    """LSQ's gradient scale g = 1 / sqrt(N · Q_P) for a step shared by N = num_elements values.

    Args:
        num_elements: N, the number of values that share one step, an int >= 1.
        bits: int in 1..32; signed: Q_P = 2^(bits-1) - 1 if True, else 2^bits - 1.
    Returns:
        a Python float.
    Raises:
        ValueError if num_elements is not an int >= 1, bits is out of range, or Q_P = 0 (signed 1-bit).
    """
    ### BEGIN SOLUTION
    if isinstance(num_elements, bool) or not isinstance(num_elements, int) or num_elements < 1:
        raise ValueError(f"num_elements must be an int >= 1, got {num_elements!r}")
    q_max = quantized_range(bits, signed)[1]
    if q_max < 1:
        raise ValueError(f"signed {bits}-bit has Q_P = {q_max}: LSQ needs a positive level (use bits >= 2)")
    return 1.0 / math.sqrt(num_elements * q_max)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_lsq_grad_scale", "locked": true, "points": 6, "schema_version": 3, "solution": false, "task": false}
assert_close(lsq_grad_scale(1000, 4), 1 / math.sqrt(1000 * 7), "lsq_grad_scale(1000, 4)", rtol=1e-9,
             hint="g = 1 / sqrt(N · Q_P) with Q_P = 2^(4-1) - 1 = 7: the square root of the product")
assert_close(lsq_grad_scale(1000, 4, signed=False), 1 / math.sqrt(1000 * 15), "lsq_grad_scale(1000, 4, signed=False)",
             rtol=1e-9, hint="unsigned 4-bit: Q_P = 2^4 - 1 = 15")
assert_close(lsq_grad_scale(1, 2), 1.0, "lsq_grad_scale(1, 2): N = 1, Q_P = 1", rtol=1e-9)
assert type(lsq_grad_scale(10, 8)) is float, "lsq_grad_scale must return a Python float"
try:
    lsq_grad_scale(10, 1)
except ValueError:
    print("✓ lsq_grad_scale(10, 1) raises ValueError (signed 1-bit has Q_P = 0)")
else:
    raise AssertionError("lsq_grad_scale(10, 1) must raise ValueError: signed 1-bit has Q_P = 0")
### BEGIN HIDDEN TESTS
from autograder.checks.lab3_qat import check_lsq_grad_scale
check_lsq_grad_scale(lsq_grad_scale)
### END HIDDEN TESTS

# %% nbgrader={"grade": false, "grade_id": "lsq_init_step", "locked": false, "schema_version": 3, "solution": true, "task": false}
def lsq_init_step(x: torch.Tensor, bits: int, signed: bool = True) -> torch.Tensor:
    """LSQ's initial step 2 · mean(|x|) / sqrt(Q_P), computed in float32.

    Args:
        x: floating tensor of any shape, at least one element, not all zero.
        bits: int in 1..32; signed: Q_P = 2^(bits-1) - 1 if True, else 2^bits - 1.
    Returns:
        a 0-d float32 tensor > 0 (no gradient).
    Raises:
        TypeError for a non-float x; ValueError for an empty or all-zero x, bits out of range or Q_P = 0.
        x is not modified.
    """
    ### BEGIN SOLUTION
    check_float_tensor(x, "x", nonempty=True)
    q_max = quantized_range(bits, signed)[1]
    if q_max < 1:
        raise ValueError(f"signed {bits}-bit has Q_P = {q_max}: LSQ needs a positive level (use bits >= 2)")
    step = 2 * x.detach().float().abs().mean() / math.sqrt(q_max)
    return check_positive_tensor(step, "the initial step (x is all zeros?)")
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_lsq_init_step", "locked": true, "points": 6, "schema_version": 3, "solution": false, "task": false}
x = torch.tensor([[-1.0, 0.5], [0.0, 2.5]])
assert_close(lsq_init_step(x, 4), torch.tensor(2 * 1.0 / math.sqrt(7)), "lsq_init_step(x, 4)", rtol=1e-6,
             inputs={"x": x}, hint="2 · mean(|x|) / sqrt(Q_P): mean(|x|) = 1.0 (of the absolute values), Q_P = 7")
assert_close(lsq_init_step(x, 4, signed=False), torch.tensor(2 / math.sqrt(15)), "lsq_init_step(x, 4, signed=False)",
             rtol=1e-6, inputs={"x": x}, hint="unsigned: Q_P = 2^4 - 1 = 15")
assert_shape(lsq_init_step(x, 4), (), "lsq_init_step returns a 0-d tensor")
assert_dtype(lsq_init_step(x.half(), 4), torch.float32, "lsq_init_step of a float16 x")
try:
    lsq_init_step(torch.zeros(3), 4)
except ValueError:
    print("✓ lsq_init_step(all zeros) raises ValueError")
else:
    raise AssertionError("lsq_init_step(torch.zeros(3), 4) must raise ValueError: a zero step divides by zero")
assert_not_modified(lsq_init_step, x, 4)
### BEGIN HIDDEN TESTS
from autograder.checks.lab3_qat import check_lsq_init_step
check_lsq_init_step(lsq_init_step)
### END HIDDEN TESTS

# %% nbgrader={"grade": false, "grade_id": "lsq_fake_quantize", "locked": false, "schema_version": 3, "solution": true, "task": false}
def lsq_fake_quantize(x: torch.Tensor, step: torch.Tensor, bits: int, signed: bool = True,
                      grad_scale: float | None = None) -> torch.Tensor:
    """LSQ: y = round(clamp(x / s, -Q_N, Q_P)) · s with a learnable step s (zero point 0).

    Gradients (STE through the rounding): to x, 1 where -Q_N <= x/s <= Q_P, else 0; to s, (round(v) - v)
    inside, -Q_N below, Q_P above (v = x/s), multiplied by grad_scale.

    Args:
        x: floating tensor [...], at least one element.
        step: floating tensor > 0, 0-d (one step) or broadcasting against x without changing its shape
            (per channel: [C, 1, ..., 1]); usually an nn.Parameter.
        bits: int in 1..32 (Q_P >= 1); signed: range [-2^(b-1), 2^(b-1) - 1], else [0, 2^b - 1].
        grad_scale: multiplies the step's gradient; None: lsq_grad_scale(N, bits, signed) with
            N = x.numel() // step.numel(), the number of values sharing one step.
    Returns:
        tensor of x's shape (dtype: x's and step's promoted).
    Raises:
        TypeError / ValueError for non-float or empty x or step, a step that is <= 0 anywhere or does not
        broadcast, bits out of range. No input is modified.
    """
    ### BEGIN SOLUTION
    check_float_tensor(x, "x", nonempty=True)
    check_float_tensor(step, "step", nonempty=True)
    check_positive_tensor(step.detach(), "step")
    if torch.broadcast_shapes(x.shape, step.shape) != x.shape:
        raise ValueError(f"step of shape {tuple(step.shape)} does not broadcast against x of shape {tuple(x.shape)}")
    q_min, q_max = quantized_range(bits, signed)
    if grad_scale is None:
        grad_scale = lsq_grad_scale(x.numel() // step.numel(), bits, signed)
    s = step.detach() + (step - step.detach()) * grad_scale      # value: step; gradient: × grad_scale
    v = x / s
    v = torch.where(v < q_min, q_min, torch.where(v > q_max, q_max, v))  # clamp, gradient 1 on both ends
    return ste_round(v) * s
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_lsq_fake_quantize", "locked": true, "points": 16, "schema_version": 3, "solution": false, "task": false}
x = torch.tensor([-2.5, -2.0, -0.25, 0.7, 1.5, 1.6])
step = torch.full((6,), 0.5)  # one step per value: each element of step.grad is that value's own ∂y/∂s
assert_close(lsq_fake_quantize(x, step, 3), torch.tensor([-2.0, -2.0, -0.0, 0.5, 1.5, 1.5]),
             "lsq_fake_quantize(x, step=0.5, bits=3)",
             atol=1e-6, inputs={"x": x}, hint="v = x/s = [-5, -4, -0.5, 1.4, 3, 3.2]: clamp to [-4, 3] first, then "
                                            "round half to even (-0.5 -> 0)")
assert_gradient_close(lsq_fake_quantize, x, step, 3, grad_scale=1.0, wrt=[0], upstream=torch.ones(6),
                      expected=[torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0, 0.0])], what="lsq_fake_quantize, grad_scale=1",
                      atol=1e-6, hint="1 where -Q_N <= x/s <= Q_P, ends included (torch.clamp's gradient is 0 on its "
                                      "bounds); decided on v = x/s, not on round(v) (v = 3.2 is outside)")
assert_gradient_close(lsq_fake_quantize, x, step, 3, grad_scale=1.0, wrt=[1], upstream=torch.ones(6),
                      expected=[torch.tensor([-4.0, 0.0, 0.5, -0.4, 0.0, 3.0])],
                      what="lsq_fake_quantize with one step per value, grad_scale=1", atol=1e-6,
                      hint="below the range ∂y/∂s = -Q_N = -4 (negative), above +Q_P = 3, inside round(v) - v")
step = torch.tensor(0.5)
assert_gradient_close(lsq_fake_quantize, x, step, 3, wrt=[1], upstream=torch.ones(6),
                      expected=[torch.tensor(-0.9 / math.sqrt(6 * 3))],
                      what="lsq_fake_quantize with the default gradient scale", atol=1e-6,
                      hint="the summed gradient -0.9 times g = 1 / sqrt(N · Q_P) = 1 / sqrt(6 · 3) (not squared, not missing)")
w = torch.tensor([[0.2, -0.9, 0.4], [0.1, 0.3, -0.2]])
step = torch.tensor([[0.5], [0.25]])
assert_close(lsq_fake_quantize(w, step, 3), torch.tensor([[0.0, -1.0, 0.5], [0.0, 0.25, -0.25]]),
             "per-channel lsq_fake_quantize(w, step [2, 1])", atol=1e-6, inputs={"w": w, "step": step})
assert_gradient_close(lsq_fake_quantize, w, step, 3, wrt=[1], upstream=torch.ones(2, 3),
                      expected=[torch.tensor([[-0.4], [-0.8]]) / math.sqrt(3 * 3)],
                      what="per-channel lsq_fake_quantize (N = 3 values per step)", atol=1e-6,
                      hint="N counts the values sharing one step: w.numel() // step.numel() = 3")
assert_not_modified(lsq_fake_quantize, x, torch.tensor(0.5), 3)
try:
    lsq_fake_quantize(x, torch.tensor(0.0), 3)
except ValueError:
    print("✓ lsq_fake_quantize with step = 0 raises ValueError")
else:
    raise AssertionError("lsq_fake_quantize(x, step=0, 3) must raise ValueError: x / 0 is inf or NaN")
### BEGIN HIDDEN TESTS
from autograder.checks.lab3_qat import check_lsq_fake_quantize
check_lsq_fake_quantize(lsq_fake_quantize)
### END HIDDEN TESTS

# %% [markdown] nbgrader={"grade": false, "grade_id": "lsq_plus_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### A learned zero point: LSQ+
# Activations after a ReLU are non-negative, but after other layers (or with Swish, GELU) they are skewed and
# signed. Bhalgat, Lee, Nagel, Blankevoort & Kwak (2020, *LSQ+: Improving low-bit quantization through
# learnable offsets and better initialization*) learn a zero point $z$ beside the step, on the unsigned range
# $[0, Q_P]$, $Q_P = 2^b - 1$. The zero point must be an integer in the forward pass (Lab 1: zero is then
# exact), so it is rounded with the straight-through estimator, $\tilde z = \operatorname{round}_{\text{STE}}(z)$:
#
# $$ v = x/s + \tilde z, \qquad \hat x = \big(\operatorname{round}(\operatorname{clamp}(v, 0, Q_P)) - \tilde z\big)\cdot s,
#    \qquad \frac{\partial \hat x}{\partial z} = \begin{cases} 0 & 0 \le v \le Q_P \\ -s & \text{otherwise,}\end{cases} $$
#
# and $\partial\hat x/\partial s$ = $\operatorname{round}(v) - v$ inside, $-\tilde z$ below, $Q_P - \tilde z$ above.
# Both gradients get LSQ's scale $g = 1/\sqrt{N Q_P}$. (The seed study of this course trains $s$ and $z$
# exactly this way for its INT4 and INT2 activations.)

# %% nbgrader={"grade": false, "grade_id": "lsq_plus_fake_quantize", "locked": false, "schema_version": 3, "solution": true, "task": false}
def lsq_plus_fake_quantize(x: torch.Tensor, step: torch.Tensor, zero_point: torch.Tensor, bits: int,
                           grad_scale: float | None = None) -> torch.Tensor:
    """LSQ+ on the unsigned range [0, 2^bits - 1] with a learnable step and zero point.

    z = ste_round(zero_point) (rounded in the forward pass, identity gradient); v = x / s + z;
    y = (round(clamp(v, 0, 2^bits - 1)) - z) · s. The gradients of step and zero_point are multiplied by
    grad_scale.

    Args:
        x: floating tensor [...], at least one element.
        step: floating tensor > 0; zero_point: floating tensor (any real value, rounded in the forward pass);
            each 0-d or broadcasting against x without changing its shape.
        bits: int in 1..32.
        grad_scale: None: lsq_grad_scale(x.numel() // step.numel(), bits, signed=False).
    Returns:
        tensor of x's shape.
    Raises:
        TypeError / ValueError for non-float or empty tensors, step <= 0 anywhere, shapes that do not broadcast,
        bits out of range. No input is modified.
    """
    ### BEGIN SOLUTION
    check_float_tensor(x, "x", nonempty=True)
    check_float_tensor(zero_point, "zero_point", nonempty=True)
    check_float_tensor(step, "step", nonempty=True)
    check_positive_tensor(step.detach(), "step")
    for name, p in (("step", step), ("zero_point", zero_point)):
        if torch.broadcast_shapes(x.shape, p.shape) != x.shape:
            raise ValueError(f"{name} of shape {tuple(p.shape)} does not broadcast against x of shape {tuple(x.shape)}")
    q_min, q_max = quantized_range(bits, signed=False)
    if grad_scale is None:
        grad_scale = lsq_grad_scale(x.numel() // step.numel(), bits, signed=False)
    s = step.detach() + (step - step.detach()) * grad_scale
    z = zero_point.detach() + (zero_point - zero_point.detach()) * grad_scale
    z = ste_round(z)                                             # an integer zero point in the forward pass
    v = x / s + z
    v = torch.where(v < q_min, q_min, torch.where(v > q_max, q_max, v))  # clamp, gradient 1 on both ends
    return (ste_round(v) - z) * s
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_lsq_plus_fake_quantize", "locked": true, "points": 12, "schema_version": 3, "solution": false, "task": false}
x = torch.tensor([-1.0, -0.5, 0.5, 0.75, 1.0, 1.5])
step, zero_point = torch.full((6,), 0.5), torch.full((6,), 1.4)  # per value: the gradients are per value
assert_close(lsq_plus_fake_quantize(x, step, zero_point, 2), torch.tensor([-0.5, -0.5, 0.5, 0.5, 1.0, 1.0]),
             "lsq_plus_fake_quantize(x, 0.5, 1.4, bits=2)",
             atol=1e-6, inputs={"x": x}, hint="round the zero point in the forward pass: z = 1 (not 1.4); "
                                            "v = x/s + z = [-1, 0, 2, 2.5, 3, 4] clamps to [0, 3] and 2.5 rounds to 2")
assert_gradient_close(lsq_plus_fake_quantize, x, step, zero_point, 2, grad_scale=1.0, wrt=[0], upstream=torch.ones(6),
                      expected=[torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0, 0.0])],
                      what="lsq_plus_fake_quantize, grad_scale=1", atol=1e-6)
assert_gradient_close(lsq_plus_fake_quantize, x, step, zero_point, 2, grad_scale=1.0, wrt=[1], upstream=torch.ones(6),
                      expected=[torch.tensor([-1.0, 0.0, 0.0, -0.5, 0.0, 2.0])],
                      what="lsq_plus_fake_quantize, one step per value, grad_scale=1", atol=1e-6,
                      hint="below the range ∂y/∂s = 0 - z = -1, above Q_P - z = 3 - 1 = 2, inside round(v) - v")
assert_gradient_close(lsq_plus_fake_quantize, x, step, zero_point, 2, grad_scale=1.0, wrt=[2], upstream=torch.ones(6),
                      expected=[torch.tensor([-0.5, 0.0, 0.0, 0.0, 0.0, -0.5])],
                      what="lsq_plus_fake_quantize, one zero point per value, grad_scale=1", atol=1e-6,
                      hint="∂y/∂z = -s where v was clamped, 0 inside; the STE passes it through the "
                                            "rounding of z")
step, zero_point = torch.tensor(0.5), torch.tensor(1.4)
assert_gradient_close(lsq_plus_fake_quantize, x, step, zero_point, 2, wrt=[1, 2], upstream=torch.ones(6),
                      expected=[torch.tensor(0.5 / math.sqrt(18)), torch.tensor(-1.0 / math.sqrt(18))],
                      what="lsq_plus_fake_quantize with the default gradient scale", atol=1e-6,
                      hint="both gradients times g = 1 / sqrt(N · Q_P) = 1 / sqrt(6 · 3), Q_P = 2^2 - 1")
assert_not_modified(lsq_plus_fake_quantize, x, step, zero_point, 2)
### BEGIN HIDDEN TESTS
from autograder.checks.lab3_qat import check_lsq_plus_fake_quantize
check_lsq_plus_fake_quantize(lsq_plus_fake_quantize)
### END HIDDEN TESTS

# %% [markdown] nbgrader={"grade": false, "grade_id": "pact_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### PACT: a learned clipping level for activations
# Choi, Wang, Venkataramani, Chuang, Srinivasan & Gopalakrishnan (2018, *PACT: Parameterized Clipping
# Activation for Quantized Neural Networks*) replace ReLU by a clip to $[0, \alpha]$ with a trained $\alpha$,
# then quantize $[0, \alpha]$ to $2^b$ levels:
#
# $$ y = \operatorname{clamp}(x, 0, \alpha), \qquad \hat y = \operatorname{round}\!\big(y / \Delta\big)\,\Delta,
#    \quad \Delta = \frac{\alpha}{2^b - 1}, \qquad
#    \frac{\partial \hat y}{\partial \alpha} = \begin{cases} 1 & x > \alpha \\ 0 & x \le \alpha, \end{cases}
#    \qquad \frac{\partial \hat y}{\partial x} = \mathbb{1}[0 < x \le \alpha], $$
#
# by the STE through the rounding ($\Delta$ is treated as a constant). Only the clipped values pull $\alpha$
# up; the paper's L2 penalty on $\alpha$ pulls it down, and the balance sets the range. Compared with LSQ's
# step, $\alpha$ never learns from the rounding error.

# %% nbgrader={"grade": false, "grade_id": "pact_quantize", "locked": false, "schema_version": 3, "solution": true, "task": false}
def pact_quantize(x: torch.Tensor, alpha: torch.Tensor, bits: int) -> torch.Tensor:
    """PACT: clip x to [0, alpha], then quantize to 2^bits unsigned levels of step alpha / (2^bits - 1).

    Gradients (STE through the rounding, the step treated as a constant): to x, 1 on (0, alpha] (x <= 0 gives 0,
    x = alpha gives 1); to alpha, 1 where x > alpha, else 0.

    Args:
        x: floating tensor [...], at least one element (pre-activations).
        alpha: floating tensor > 0, 0-d (usually an nn.Parameter).
        bits: int in 1..32.
    Returns:
        tensor of x's shape.
    Raises:
        TypeError / ValueError for non-float or empty tensors, alpha <= 0, bits out of range. No input is modified.
    """
    ### BEGIN SOLUTION
    check_float_tensor(x, "x", nonempty=True)
    check_float_tensor(alpha, "alpha", nonempty=True)
    check_positive_tensor(alpha.detach(), "alpha")
    bits = check_bits(bits)
    clipped = torch.where(x > alpha, alpha, torch.relu(x))      # ∂/∂alpha = 1 only where x > alpha
    delta = alpha.detach() / (2**bits - 1)                       # the step: no gradient to alpha through it
    return ste_round(clipped / delta) * delta
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_pact_quantize", "locked": true, "points": 10, "schema_version": 3, "solution": false, "task": false}
x = torch.tensor([-1.0, 0.0, 0.5, 1.0, 2.0, 3.0])
alpha = torch.tensor(2.0)
assert_close(pact_quantize(x, alpha, 2), torch.tensor([0.0, 0.0, 2 / 3, 4 / 3, 2.0, 2.0]),
             "pact_quantize(x, alpha=2, bits=2)", atol=1e-6,
             inputs={"x": x}, hint="clip to [0, 2], then round to multiples of 2 / (2^2 - 1) = 2/3")
assert_gradient_close(pact_quantize, x, alpha, 2, wrt=[0], upstream=torch.ones(6),
                      expected=[torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, 0.0])], what="pact_quantize(x, alpha=2, bits=2)",
                      atol=1e-6, hint="1 on (0, alpha]: 0 for x <= 0, 1 at x = alpha, 0 above")
upstream = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
assert_gradient_close(pact_quantize, x, alpha, 2, wrt=[1], upstream=upstream, expected=[torch.tensor(6.0)],
                      what="pact_quantize for upstream [1, 2, 3, 4, 5, 6]", atol=1e-5,
                      inputs={"x": x, "upstream": upstream},
                      hint="only x > alpha (x = 3, upstream 6) counts: not x < alpha, not x = alpha, and no rounding term "
                  "through the step alpha / 3")
assert_not_modified(pact_quantize, x, alpha, 2)
### BEGIN HIDDEN TESTS
from autograder.checks.lab3_qat import check_pact_quantize
check_pact_quantize(pact_quantize)
### END HIDDEN TESTS

# %% [markdown] nbgrader={"grade": false, "grade_id": "part2_explore", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Explore: LSQ's step gradient
# The same widget as in Part 1, now with your `lsq_fake_quantize` (gradient scale 1, so you see the paper's raw
# $\partial y/\partial s$). The stats under the figure give $\partial\,\mathrm{MSE}/\partial s$ on 20,000
# samples of $\mathcal N(0,1)$: negative when a larger step would lower the error (too much clipping),
# positive when a smaller one would (too much rounding). Find the step where it changes sign at 2, 3 and 4
# bits: that is the step LSQ's gradient pushes toward if the loss were the MSE.

# %% nbgrader={"grade": false, "grade_id": "part2_widget", "locked": true, "schema_version": 3, "solution": false, "task": false}
viz.qat.ste_explorer(lambda x, step, bits: lsq_fake_quantize(x, step, bits, grad_scale=1.0))

# %% [markdown] nbgrader={"grade": false, "grade_id": "pitfalls_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Three ways learned ranges break
# Each cell below provokes one failure on a toy problem and then shows the fix.
#
# **1. A step that goes ≤ 0.** Nothing in gradient descent keeps $s > 0$. A large learning rate (or a large
# unscaled gradient: $N$ values summed) pushes it through zero; with $s < 0$ every $x/s$ flips sign and the grid
# is mirrored, with $s = 0$ it is NaN. Clamp the step after every optimizer step (lowbit's quantizers floor it).

# %% nbgrader={"grade": false, "grade_id": "pitfall_step", "locked": true, "schema_version": 3, "solution": false, "task": false}
def quantization_mse(step: torch.Tensor, **kwargs) -> torch.Tensor:
    return (lsq_fake_quantize(sample, step, 4, **kwargs) - sample).square().mean()


sample = torch.randn(4096, generator=torch.Generator().manual_seed(0))
step = nn.Parameter(lsq_init_step(sample, 4))
print(f"initial step {step.item():.3g}, MSE {quantization_mse(step).item():.3g}")
optimizer = torch.optim.SGD([step], lr=50.0)            # far too large for an unscaled gradient
quantization_mse(step, grad_scale=1.0).backward()
optimizer.step()
print(f"after one SGD step with lr = 50 and no gradient scale: step = {step.item():.3g}")
try:
    quantization_mse(step)
except ValueError as error:
    print(f"your lsq_fake_quantize refuses it: {str(error)[:80]}…")
optimizer = torch.optim.Adam([step], lr=0.01)
for _ in range(200):                                    # the fix: clamp after every update, so training goes on
    with torch.no_grad():
        step.clamp_(min=1e-4)
    optimizer.zero_grad()
    quantization_mse(step).backward()
    optimizer.step()
print(f"clamped to >= 1e-4 after every update, 200 Adam steps: step = {step.item():.3g}, "
      f"MSE {quantization_mse(step).item():.3g}")

# %% [markdown] nbgrader={"grade": false, "grade_id": "pitfall_optimizer_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# **2. An optimizer built before the parameters exist.** A quantizer that creates its step lazily, at its first
# forward pass ("initialise from the first batch"), creates it *after* `torch.optim.Adam(model.parameters())`
# was called: the optimizer never sees it, and the step never trains — silently. (The seed study's notes fall
# into the same trap when a parameter is re-assigned inside `forward`.) Create every parameter with its final
# shape at construction, initialise its *value* in place from data, then build the optimizer.

# %% nbgrader={"grade": false, "grade_id": "pitfall_optimizer", "locked": true, "schema_version": 3, "solution": false, "task": false}
class LazyLSQ(nn.Module):
    """The broken pattern: the step is created at the first forward pass."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits, self.step = bits, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.step is None:
            self.step = nn.Parameter(lsq_init_step(x, self.bits))
        return lsq_fake_quantize(x, self.step, self.bits)


class EagerLSQ(LazyLSQ):
    """The fix: the parameter exists from the start; its value is set in place from the first batch."""

    def __init__(self, bits: int) -> None:
        super().__init__(bits)
        self.step, self.initialized = nn.Parameter(torch.ones(())), False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.initialized:
            with torch.no_grad():
                self.step.copy_(lsq_init_step(x, self.bits))
            self.initialized = True
        return lsq_fake_quantize(x, self.step, self.bits)


data = sample.reshape(256, 16)
for quantizer in (LazyLSQ(3), EagerLSQ(3)):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 16), quantizer)  # a layer whose output is quantized
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)  # built right away, as a training loop does
    for i in range(50):
        optimizer.zero_grad()
        nn.functional.mse_loss(net(data), data).backward()
        start = quantizer.step.item() if i == 0 else start
        optimizer.step()
    print(f"{type(quantizer).__name__}: the optimizer holds {len(optimizer.param_groups[0]['params'])} tensors; "
          f"step {start:.4f} -> {quantizer.step.item():.4f} after 50 steps")

# %% [markdown] nbgrader={"grade": false, "grade_id": "pitfall_nan_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# **3. NaN ranges from an empty calibration.** Ranges are often initialised from a few calibration batches. If
# no value reached the quantizer (zero batches, a layer skipped, a mask that selected nothing), the mean of
# nothing is NaN, the step is NaN, and so is every output and the loss — with no error. Refuse empty input
# where the range is computed, as your `lsq_init_step` does.

# %% nbgrader={"grade": false, "grade_id": "pitfall_nan", "locked": true, "schema_version": 3, "solution": false, "task": false}
seen = torch.empty(0)                                     # the activations collected: none
naive_step = 2 * seen.abs().mean() / math.sqrt(7)
naive_loss = (torch.round(torch.clamp(sample / naive_step, -8, 7)) * naive_step - sample).square().mean()
print(f"naive step from no data: {float(naive_step)}, loss: {float(naive_loss)}")
try:
    lsq_init_step(seen, 4)
except ValueError as error:
    print(f"your lsq_init_step refuses it: {error}")

# %% [markdown] nbgrader={"grade": false, "grade_id": "part3_intro", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ## Part 3 — BatchNorm in QAT
#
# At inference an integer network has no BatchNorm: BN's affine map is **folded** into the convolution
# before it runs (Lab 1's PTQ did this). With per-channel statistics $\mu_c$, $\sigma^2_c$ and BN's
# $\gamma_c$, $\beta_c$,
#
# $$ \operatorname{BN}(w * x + b) = w' * x + b', \qquad w'_c = w_c\,\frac{\gamma_c}{\sqrt{\sigma_c^2 + \epsilon}}, \qquad
#    b'_c = \beta_c + (b_c - \mu_c)\,\frac{\gamma_c}{\sqrt{\sigma_c^2 + \epsilon}} . $$
#
# So the weights that get quantized at inference are the **folded** $w'$, and QAT must fake-quantize $w'$,
# not $w$ — otherwise it trains for a grid the deployed model does not use. Jacob et al. (2018, section 3.2)
# fold in the training graph too. While training, BN normalises with the statistics of the current batch, so
# the fold uses them: a float convolution of the same input gives the batch's per-channel mean and (biased)
# variance. After some epochs the running statistics have settled; `freeze_bn_stats` then switches the fold to
# the running statistics, so training sees exactly the arithmetic of the deployed model. The observers (the
# activation ranges) are frozen likewise. torchvision's QAT recipe for MobileNet trains 8 epochs, freezes the
# observers after epoch 4 and BN after epoch 3; this lab's short runs scale that down (Part 4).

# %% nbgrader={"grade": false, "grade_id": "fold_batchnorm", "locked": false, "schema_version": 3, "solution": true, "task": false}
def fold_batchnorm(weight: torch.Tensor, bias: torch.Tensor | None, gamma: torch.Tensor, beta: torch.Tensor,
                   mean: torch.Tensor, var: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold a BatchNorm (gamma, beta, mean, var) into the layer before it.

    w' = w · gamma / sqrt(var + eps), scaled per output channel (axis 0) and broadcast over weight's other
    axes; b' = beta + (b - mean) · gamma / sqrt(var + eps), with bias None meaning b = 0.

    Args:
        weight: floating tensor [C, C_in, kh, kw] (conv) or [C, C_in] (linear).
        bias: floating tensor [C] or None.
        gamma, beta, mean, var: floating tensors [C] (var >= 0).
        eps: float > 0, BatchNorm's epsilon.
    Returns:
        (weight_folded float32 of weight's shape, bias_folded float32 [C]); differentiable in every input.
    Raises:
        TypeError for non-float tensors; ValueError if a [C] argument has the wrong length or eps <= 0.
        No input is modified.
    """
    ### BEGIN SOLUTION
    check_float_tensor(weight, "weight", nonempty=True)
    channels = weight.shape[0]
    for name, p in (("bias", bias), ("gamma", gamma), ("beta", beta), ("mean", mean), ("var", var)):
        if p is not None and tuple(check_float_tensor(p, name).shape) != (channels,):
            raise ValueError(f"{name} must have shape [{channels}] (one value per output channel), got {tuple(p.shape)}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    factor = gamma.float() / torch.sqrt(var.float() + eps)                   # [C]
    weight_folded = weight.float() * factor.reshape(-1, *([1] * (weight.ndim - 1)))
    b = torch.zeros(channels) if bias is None else bias.float()
    bias_folded = beta.float() + (b - mean.float()) * factor
    return weight_folded, bias_folded
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_fold_batchnorm", "locked": true, "points": 10, "schema_version": 3, "solution": false, "task": false}
weight = torch.tensor([[[[1.0, 2.0]]], [[[-1.0, 0.5]]]])  # conv weight [2, 1, 1, 2]
bias, gamma, beta = torch.tensor([0.5, -1.0]), torch.tensor([2.0, 0.5]), torch.tensor([0.1, 0.2])
mean, var = torch.tensor([1.0, -2.0]), torch.tensor([4.0, 1.0])
bn = {"bias": bias, "gamma": gamma, "beta": beta, "mean": mean, "var": var}
w_folded, b_folded = fold_batchnorm(weight, bias, gamma, beta, mean, var, eps=1e-12)
assert_close(w_folded, torch.tensor([[[[1.0, 2.0]]], [[[-0.5, 0.25]]]]), "folded weight (eps ≈ 0)", atol=1e-6,
             inputs=bn, hint="gamma / sqrt(var + eps) = [1, 0.5] scales output channel c = weight[c], i.e. axis 0 "
                             "(reshape it to [C, 1, 1, 1]), not the last axis")
assert_close(b_folded, torch.tensor([-0.4, 0.7]), "folded bias (eps ≈ 0)", atol=1e-6, inputs=bn,
             hint="b' = beta + (b - mean) · gamma / sqrt(var + eps): subtract the mean from the bias")
_, b_folded = fold_batchnorm(weight, None, gamma, beta, mean, var, eps=1e-12)
assert_close(b_folded, torch.tensor([-0.9, 1.2]), "folded bias for bias=None", atol=1e-6, hint="bias None means b = 0")
w_linear = torch.tensor([[1.0, -1.0, 2.0], [0.5, 0.0, 4.0]])
small_var = torch.tensor([1e-5, 3e-5])
w_folded, _ = fold_batchnorm(w_linear, None, torch.ones(2), torch.zeros(2), torch.zeros(2), small_var)
assert_close(w_folded, w_linear / torch.sqrt(small_var + 1e-5)[:, None], "linear weight [2, 3], var [1e-5, 3e-5], "
             "default eps", rtol=1e-5, hint="add eps = 1e-5 to the variance before the square root")
assert_dtype(fold_batchnorm(weight.half(), bias, gamma, beta, mean, var)[0], torch.float32, "folded float16 weight")
assert_not_modified(fold_batchnorm, weight, bias, gamma, beta, mean, var)
### BEGIN HIDDEN TESTS
from autograder.checks.lab3_qat import check_fold_batchnorm
check_fold_batchnorm(fold_batchnorm)
### END HIDDEN TESTS

# %% [markdown] nbgrader={"grade": false, "grade_id": "bn_stats_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# Which statistics to fold: in training mode the batch's own, per channel over every axis but the channel axis
# (for a conv output $[N, C, H, W]$: over $N$, $H$, $W$), with the **biased** variance $\frac1n\sum(x-\mu)^2$
# that BatchNorm normalises with; in eval mode (and after `freeze_bn_stats`) the running statistics.

# %% nbgrader={"grade": false, "grade_id": "bn_fold_statistics", "locked": false, "schema_version": 3, "solution": true, "task": false}
def bn_fold_statistics(conv_out: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor,
                       training: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The (mean, var) to fold BatchNorm with.

    training=True: the batch statistics of conv_out per channel (axis 1) over every other axis, the variance
    biased (divide by n, as BatchNorm does when it normalises); differentiable in conv_out.
    training=False: the running statistics, returned as new tensors (not the same objects).

    Args:
        conv_out: floating tensor [N, C, H, W] or [N, C], at least one element (the float conv's output).
        running_mean, running_var: floating tensors [C].
        training: a bool.
    Returns:
        (mean, var), float32 tensors [C].
    Raises:
        TypeError for non-float tensors or a non-bool training; ValueError for conv_out with fewer than 2 axes,
        empty, or running statistics that are not [C]. No input is modified.
    """
    ### BEGIN SOLUTION
    check_float_tensor(conv_out, "conv_out", nonempty=True)
    if conv_out.ndim < 2:
        raise ValueError(f"conv_out must be [N, C, ...], got shape {tuple(conv_out.shape)}")
    for name, p in (("running_mean", running_mean), ("running_var", running_var)):
        if tuple(check_float_tensor(p, name).shape) != (conv_out.shape[1],):
            raise ValueError(f"{name} must have shape [{conv_out.shape[1]}], got {tuple(p.shape)}")
    if not isinstance(training, bool):
        raise TypeError(f"training must be a bool, got {type(training).__name__}")
    if training:
        dims = [d for d in range(conv_out.ndim) if d != 1]                   # every axis but the channels
        x = conv_out.float()
        return x.mean(dim=dims), x.var(dim=dims, unbiased=False)
    return running_mean.detach().clone().float(), running_var.detach().clone().float()
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_bn_fold_statistics", "locked": true, "points": 8, "schema_version": 3, "solution": false, "task": false}
conv_out = torch.tensor([[[[1.0, 2.0]], [[0.0, 0.0]]], [[[3.0, 4.0]], [[2.0, 2.0]]]])  # [N=2, C=2, H=1, W=2]
running_mean, running_var = torch.tensor([0.5, -1.0]), torch.tensor([2.0, 3.0])
inputs = {"conv_out": conv_out, "running_mean": running_mean, "running_var": running_var}
mean, var = bn_fold_statistics(conv_out, running_mean, running_var, training=True)
assert_close(mean, torch.tensor([2.5, 1.0]), "batch mean, training=True", atol=1e-6, inputs=inputs,
             hint="training mode folds with the batch statistics, per channel over N, H and W — not the running ones")
assert_close(var, torch.tensor([1.25, 1.0]), "batch variance, training=True", atol=1e-6, inputs=inputs,
             hint="the biased variance (divide by n = 4, unbiased=False), what BatchNorm normalises with")
mean, var = bn_fold_statistics(conv_out, running_mean, running_var, training=False)
assert_close(torch.stack([mean, var]), torch.stack([running_mean, running_var]), "(mean, var), training=False",
             atol=0, inputs=inputs, hint="eval mode (or after freeze_bn_stats) folds with the running statistics")
assert mean is not running_mean and var is not running_var, \
    "bn_fold_statistics(training=False) must return new tensors (.clone()), not the running buffers themselves"
assert_shape(bn_fold_statistics(torch.randn(5, 3), torch.zeros(3), torch.ones(3), True)[1], (3,),
             "variance of a linear layer's output [5, 3]")
assert_not_modified(bn_fold_statistics, conv_out, running_mean, running_var, True)
### BEGIN HIDDEN TESTS
from autograder.checks.lab3_qat import check_bn_fold_statistics
check_bn_fold_statistics(bn_fold_statistics)
### END HIDDEN TESTS

# %% [markdown] nbgrader={"grade": false, "grade_id": "part3_check_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Experiment: your fold on the CNN's second convolution
# A batch of 500 test images up to `conv2`'s input. Folding with the batch statistics must reproduce
# `bn2(conv2(x))` in training mode, folding with the running statistics the eval-mode output — both to float
# rounding. Then lowbit's `QATConvBn2d` (the QAT conv+BN of Jacob et al.) is assembled from your two functions
# and a 4-bit LSQ weight quantizer: how far is its output from the float layer, before and after
# `freeze_bn_stats`? The last line measures why freezing matters: the fold factor $\gamma/\sqrt{\sigma^2+\epsilon}$
# of a single batch moves around the running one, and with it the grid of the folded weight.

# %% nbgrader={"grade": false, "grade_id": "part3_check", "locked": true, "schema_version": 3, "solution": false, "task": false}
images, _ = next(iter(test_loader))
with torch.no_grad():
    conv2_input = model.pool1(model.relu1(model.bn1(model.conv1(images))))
conv, bn = copy.deepcopy(model.conv2), copy.deepcopy(model.bn2)


def folded_output(training: bool) -> torch.Tensor:
    mean, var = bn_fold_statistics(conv(conv2_input), bn.running_mean, bn.running_var, training)
    weight, bias = fold_batchnorm(conv.weight, conv.bias, bn.weight, bn.bias, mean, var, bn.eps)
    return nn.functional.conv2d(conv2_input, weight, bias, padding=1)


with torch.no_grad():
    for training in (True, False):
        reference = copy.deepcopy(bn).train(training)(conv(conv2_input))
        print(f"training={training}: max |your fold - bn2(conv2(x))| = "
              f"{float((folded_output(training) - reference).abs().max()):.2e}")
    bn.eval()
    quantizer = lowbit.quant.qat.LSQQuantizer(4, channel_dim=0, init="minmax", example=fold_batchnorm(
        conv.weight, None, bn.weight, bn.bias, bn.running_mean, bn.running_var)[0])
    qat_layer = lowbit.quant.qat.QATConvBn2d.of(copy.deepcopy(conv), copy.deepcopy(bn), quantizer,
                                                fold_fn=fold_batchnorm, stats_fn=bn_fold_statistics)
    for frozen in (False, True):
        qat_layer.train().freeze_bn_stats(frozen)
        target = copy.deepcopy(bn).train(not frozen)(conv(conv2_input))
        error = (qat_layer(conv2_input) - target).square().mean() / target.square().mean()
        print(f"QATConvBn2d (W4, your fold), training, BN frozen={frozen}: "
              f"relative MSE vs the float layer {float(error):.4f}")
    factors = []
    for batch, _ in itertools.islice(test_loader, 2 if lowbit.GRADING else 6):
        x = model.pool1(model.relu1(model.bn1(model.conv1(batch))))
        _, var = bn_fold_statistics(conv(x), bn.running_mean, bn.running_var, True)
        factors.append(bn.weight / torch.sqrt(var + bn.eps))
    running_factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    spread = (torch.stack(factors) / running_factor - 1).abs()
    print(f"batch fold factors vs running: mean |relative difference| {100 * float(spread.mean()):.2f} %, "
          f"largest {100 * float(spread.max()):.2f} % (a 4-bit grid step is {100 / 7:.0f} % of the largest weight)")

# %% [markdown] nbgrader={"grade": false, "grade_id": "part4_intro", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ## Part 4 — QAT of the course CNN
#
# lowbit's `prepare_qat` assembles a QAT model **from your functions**: every conv+BN pair becomes a
# `QATConvBn2d` folded with your `fold_batchnorm` / `bn_fold_statistics`, whose folded weight is quantized per
# output channel by your `lsq_fake_quantize` (step initialised min-max, so training starts from the PTQ
# grid); every ReLU output is quantized unsigned by your `lsq_fake_quantize` too (step initialised from the first
# batch with the LSQ rule). We train W8A8, W4A4, W3A3 and W2A2 from the pretrained CNN and compare each with
# PTQ at the same widths (Lab 1's best recipe: MSE calibration, MSE weight clipping, BN folded) and with FP32.
#
# **The first and the last layer stay at 8 bits** (weights). `conv1` sees raw pixels through 9 weights per filter,
# so one rounding step changes a whole feature map; `fc` writes the logits directly, every error lands in the
# decision. Together they hold 9 % of the weights (288 + 5,760 of 61k), so 8 bits there costs little memory —
# and every low-bit paper does it (DoReFa-Net, Zhou et al. 2016; PACT; LSQ).
#
# **Recipe (short, for this notebook):** half an epoch over the 6,000 embedded training images (24 batches of 128,
# no augmentation), Adam, lr $10^{-3}$ decaying to 0 along a cosine; BN statistics frozen after 50 % of the run and
# the ranges (steps) after 75 % — torchvision's schedule (BN after epoch 3, observers after epoch 4 of 8) scaled
# to half an epoch. `benchmarks/RESULTS.md` ("Lab 3 accuracy") lists the same experiment with the full recipe.

# %% nbgrader={"grade": false, "grade_id": "part4_setup", "locked": true, "schema_version": 3, "solution": false, "task": false}
from lowbit.quant import qat as qat_lib
from lowbit.quant.modules import Policy, quantizable_layers
from lowbit.results import Row

BIT_WIDTHS = (4, 2) if lowbit.GRADING else (8, 4, 3, 2)  # grading: fewer runs, same code
KEEP_8BIT = ("conv1", "fc")
QAT_EPOCHS = 0.5                                         # fraction of an epoch per run (the short recipe)
ACTIVATION_FNS = {"lsq": lsq_fake_quantize, "lsq+": lsq_plus_fake_quantize, "pact": pact_quantize}


def width_policy(bits: int) -> Policy:
    """Weights at `bits`, except conv1 and fc at 8."""
    return Policy({"w_bits": bits, "a_bits": bits}, rules={name: {"w_bits": 8} for name in KEEP_8BIT})


def qat_model(start: nn.Module, bits: int, activation: str = "lsq", weight_fn=None) -> nn.Module:
    """A QAT copy of `start` at W`bits`A`bits`, built from your functions (`weight_fn`: your lsq_fake_quantize)."""
    return qat_lib.prepare_qat(start, a_bits=bits, policy=width_policy(bits), fold_bn=True, activation=activation,
                               weight_quantize_fn=weight_fn or lsq_fake_quantize,
                               activation_quantize_fn=ACTIVATION_FNS[activation],
                               fold_fn=fold_batchnorm, stats_fn=bn_fold_statistics)


def train_qat(qat: nn.Module, epochs: float = QAT_EPOCHS, desc: str = "QAT") -> list[float]:
    """The short recipe: Adam, cosine lr 1e-3 -> 0, BN frozen at 50 % and ranges at 75 % of the run; the losses."""
    train_loader, _ = lowbit.data.loaders(batch_size=128, seed=0)   # the same batches for every run
    steps = TRAIN_BATCHES or max(1, round(epochs * len(train_loader)))
    optimizer = torch.optim.Adam(qat.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    freeze = qat_lib.freeze_schedule(steps, freeze_bn_after=0.5, freeze_ranges_after=0.75)
    return lowbit.train.train(qat, train_loader, epochs=1, optimizer=optimizer, scheduler=scheduler, max_batches=steps,
                              after_step=freeze, desc=desc)


def size_bits(bits: int) -> int:
    """Deployed size: weights at their width, one fp32 step and one fp32 (folded) bias per output channel."""
    return sum(layer.weight.numel() * (8 if name in KEEP_8BIT else bits) + 2 * 32 * layer.weight.shape[0]
               for name, layer in quantizable_layers(model).items())


def accuracy_of(net: nn.Module) -> float:
    return lowbit.train.evaluate(net, test_loader, max_batches=EVAL_BATCHES)


def qat_from_pretrained(bits: int) -> None:
    """QAT at W`bits`A`bits` from the pretrained CNN with the short recipe; records losses and accuracy."""
    lowbit.seed_everything(0)
    trained = qat_model(model, bits)
    qat_losses[f"W{bits}A{bits}"] = train_qat(trained, desc=f"QAT W{bits}A{bits}")
    qat_accuracy[bits] = accuracy_of(trained)
    print(f"W{bits}A{bits}: PTQ {100 * ptq_accuracy[bits]:.2f} % -> QAT {100 * qat_accuracy[bits]:.2f} % "
          f"(FP32 {100 * fp32_accuracy:.2f} %)")


fp32_bits = 32 * sum(p.numel() for p in model.parameters())
ptq_accuracy, qat_accuracy, qat_losses = {}, {}, {}
print(f"sizes vs FP32: " + ", ".join(f"{b} bits {fp32_bits / size_bits(b):.1f}x" for b in BIT_WIDTHS))

# %% nbgrader={"grade": false, "grade_id": "part4_ptq", "locked": true, "schema_version": 3, "solution": false, "task": false}
calib_images, _ = lowbit.data.calibration_batch(n=16 if lowbit.GRADING else 32, seed=0)
folded_model = lowbit.models.fold_batchnorm(model)
for bits in tqdm(BIT_WIDTHS, desc="PTQ"):
    policy = Policy({"w_bits": bits, "options": {"clip": "mse"}}, rules={name: {"w_bits": 8} for name in KEEP_8BIT})
    ptq_model = lowbit.quant.ptq.ptq(folded_model, calib_images, a_bits=bits, observer="mse", policy=policy,
                                     progress=False)
    ptq_accuracy[bits] = accuracy_of(ptq_model)
print("PTQ (MSE calibration, MSE weight clip): " +
      ", ".join(f"W{b}A{b} {100 * a:.2f} %" for b, a in ptq_accuracy.items()))

# %% nbgrader={"grade": false, "grade_id": "part4_qat_high", "locked": true, "schema_version": 3, "solution": false, "task": false}
for bits in [b for b in BIT_WIDTHS if b >= 4]:
    qat_from_pretrained(bits)

# %% nbgrader={"grade": false, "grade_id": "part4_qat_low", "locked": true, "schema_version": 3, "solution": false, "task": false}
for bits in [b for b in BIT_WIDTHS if b < 4]:
    qat_from_pretrained(bits)

# %% nbgrader={"grade": false, "grade_id": "part4_curves", "locked": true, "schema_version": 3, "solution": false, "task": false}
viz.qat.training_curves(qat_losses, title="QAT from the pretrained CNN (short recipe)")
rows = [Row("FP32", fp32_accuracy, bits=32, size_bits=fp32_bits)]
for bits in BIT_WIDTHS:
    rows += [Row(f"W{bits}A{bits} PTQ", ptq_accuracy[bits], bits=bits, size_bits=size_bits(bits)),
             Row(f"W{bits}A{bits} QAT", qat_accuracy[bits], bits=bits, size_bits=size_bits(bits))]
print(lowbit.results.table(rows))

# %% [markdown] nbgrader={"grade": false, "grade_id": "int2_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### 2 bits: from scratch, or step by step?
# The seed study of this course quantized a small ViT on CIFAR-10 (FP32 79.6 %). INT4 PTQ of every matrix
# product gave 73.1 %, INT4 QAT 79.9 % — above FP32. At INT2, PTQ fell to 11.4 % (chance is 10 %), and QAT
# **from scratch** at INT2 stayed at chance: 10.0 % with a NaN loss for every epoch. A **gradual** path from the
# pretrained model, lowering the bits a few layers at a time from 4 to 2, reached 74.5 % with all 38 products
# at INT2. Below, the same two experiments on the course CNN: W2A2 QAT of a randomly initialised FashionCNN
# (half the recipe), and 8 → 4 → 2 from the pretrained one, each stage a third of the recipe (every stage
# builds fresh quantizers at its width on the latent weights and BatchNorms the previous stage trained).

# %% nbgrader={"grade": false, "grade_id": "int2_scratch", "locked": true, "schema_version": 3, "solution": false, "task": false}
lowbit.seed_everything(0)
scratch = qat_model(type(model)(), 2)                    # FashionCNN with random weights
qat_losses_int2 = {"W2A2 from scratch": train_qat(scratch, QAT_EPOCHS / 2, desc="W2A2 from scratch")}
scratch_accuracy = accuracy_of(scratch)
last = qat_losses_int2["W2A2 from scratch"][-1]
print(f"W2A2 QAT from scratch: accuracy {100 * scratch_accuracy:.2f} %, last loss {last:.3f} "
      f"(ln 10 = {math.log(10):.3f} is the loss of a uniform guess)")

# %% nbgrader={"grade": false, "grade_id": "int2_gradual", "locked": true, "schema_version": 3, "solution": false, "task": false}
def latent_model(qat: nn.Module) -> nn.Module:
    """The float CNN holding a QAT model's latent weights and BatchNorms: the start of the next, lower stage."""
    start = copy.deepcopy(model)
    with torch.no_grad():
        for index in (1, 2, 3):
            layer = getattr(qat, f"conv{index}")                 # a QATConvBn2d: latent conv weight + its BN
            getattr(start, f"conv{index}").weight.copy_(layer.weight)
            getattr(start, f"bn{index}").load_state_dict(layer.bn.state_dict())
        start.fc.load_state_dict({"weight": qat.fc.weight, "bias": qat.fc.bias})
    return start


lowbit.seed_everything(0)
stage_start, gradual_losses, gradual_accuracy = model, [], {}
for bits in (4, 2) if lowbit.GRADING else (8, 4, 2):         # grading: one stage fewer, same code
    gradual = qat_model(stage_start, bits)                     # fresh quantizers at this width
    gradual_losses += train_qat(gradual, QAT_EPOCHS / 3, desc=f"gradual, W{bits}A{bits}")
    gradual_accuracy[bits] = accuracy_of(gradual)
    stage_start = latent_model(gradual)
qat_losses_int2["W2A2 gradual 8 -> 4 -> 2"] = gradual_losses
qat_losses_int2["W2A2 from the pretrained CNN"] = qat_losses["W2A2"]
viz.qat.training_curves(qat_losses_int2, reference=math.log(10), title="W2A2: from scratch vs from the pretrained CNN")
print("gradual: " + " -> ".join(f"W{b}A{b} {100 * a:.2f} %" for b, a in gradual_accuracy.items()) +
      f"; direct W2A2 from the pretrained CNN {100 * qat_accuracy[2]:.2f} %, "
      f"from scratch {100 * scratch_accuracy:.2f} %")

# %% [markdown] nbgrader={"grade": false, "grade_id": "part5_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ## Part 5 — Wrap-up
#
# ### Four estimators side by side
# The short recipe, halved (12 batches) so that eight runs fit in the time, at W4A4 and
# W2A2, changing only the quantizer functions (accuracy on the first 1,000 test images):
#
# - **plain STE**: the range fixed at its initial value, gradient 1 everywhere (also where the value was clipped):
#   $x + (\hat x - x)_{\text{detached}}$;
# - **clipped STE**: the range fixed, your `fake_quantize_ste` (gradient 0 where clipped);
# - **LSQ**: your `lsq_fake_quantize`, steps learned (as in Part 4);
# - **PACT**: LSQ weights, activations through your `pact_quantize` with a learned $\alpha$ (initial $\alpha = 6$,
#   no L2 penalty).

# %% nbgrader={"grade": false, "grade_id": "part5_variants", "locked": true, "schema_version": 3, "solution": false, "task": false}
def clipped_ste(x: torch.Tensor, step: torch.Tensor, bits: int, signed: bool = True) -> torch.Tensor:
    return fake_quantize_ste(x, step.detach(), 0, bits, signed)


def plain_ste(x: torch.Tensor, step: torch.Tensor, bits: int, signed: bool = True) -> torch.Tensor:
    return x + (clipped_ste(x, step, bits, signed) - x).detach()


VARIANTS = {"plain STE": (plain_ste, plain_ste, "lsq"), "clipped STE": (clipped_ste, clipped_ste, "lsq"),
            "LSQ": (lsq_fake_quantize, lsq_fake_quantize, "lsq"), "PACT": (lsq_fake_quantize, pact_quantize, "pact")}
VARIANT_BITS = (2,) if lowbit.GRADING else (4, 2)
variant_accuracy = {}
for bits in VARIANT_BITS:
    for name, (weight_fn, activation_fn, activation) in tqdm(VARIANTS.items(), desc=f"W{bits}A{bits} estimators"):
        lowbit.seed_everything(0)
        net = qat_lib.prepare_qat(model, a_bits=bits, policy=width_policy(bits), fold_bn=True, activation=activation,
                                  weight_quantize_fn=weight_fn, activation_quantize_fn=activation_fn,
                                  fold_fn=fold_batchnorm, stats_fn=bn_fold_statistics)
        train_qat(net, QAT_EPOCHS / 2, desc=name)
        variant_accuracy[name, bits] = lowbit.train.evaluate(net, test_loader, max_batches=EVAL_BATCHES or 2)
print(f"{'estimator':>12s}" + "".join(f" {f'W{b}A{b}':>8s}" for b in VARIANT_BITS) +
      "   (half the recipe; 1,000 test images)")
for name in VARIANTS:
    print(f"{name:>12s}" + "".join(f" {100 * variant_accuracy[name, b]:7.2f}%" for b in VARIANT_BITS))

# %% [markdown] nbgrader={"grade": false, "grade_id": "part5_table_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Your results
# All computed with your functions in this notebook; compare them with `benchmarks/RESULTS.md` ("Lab 3
# accuracy": the same experiment with the full recipe; and the short-recipe figures of this notebook). Every run
# is seeded: a gap of more than a few tenths of a point from the reference run usually means a bug.

# %% nbgrader={"grade": false, "grade_id": "part5_table", "locked": true, "schema_version": 3, "solution": false, "task": false}
rows = [Row("FP32", fp32_accuracy, bits=32, size_bits=fp32_bits)]
for bits in BIT_WIDTHS:
    rows += [Row(f"W{bits}A{bits} PTQ (MSE)", ptq_accuracy[bits], bits=bits, size_bits=size_bits(bits)),
             Row(f"W{bits}A{bits} QAT (LSQ)", qat_accuracy[bits], bits=bits, size_bits=size_bits(bits))]
rows += [Row("W2A2 QAT from scratch", scratch_accuracy, bits=2, size_bits=size_bits(2)),
         Row("W2A2 QAT gradual 8 -> 4 -> 2", gradual_accuracy[2], bits=2, size_bits=size_bits(2))]
rows += [Row(f"W{bits}A{bits} {name} (half recipe, 1k images)", variant_accuracy[name, bits], bits=bits,
             size_bits=size_bits(bits))
         for bits in VARIANT_BITS for name in VARIANTS]
print(lowbit.results.table(rows))

# %% [markdown] nbgrader={"grade": false, "grade_id": "reflection_intro", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Reflection (graded by hand)
# Answer each in 2–4 sentences, citing numbers from your own results above.

# %% [markdown] nbgrader={"grade": false, "grade_id": "q1_prompt", "locked": true, "schema_version": 3, "solution": false, "task": false}
# **Q1 (4 points).** From your table: at which widths does QAT pay off over PTQ, by how many points, and what
# does it cost (training time, data, labels)? When would you stay with PTQ?

# %% [markdown] nbgrader={"grade": true, "grade_id": "q1_answer", "locked": false, "points": 4, "schema_version": 3, "solution": true, "task": false}
# At 8 bits PTQ is within 0.1–0.2 pt of FP32, and the short QAT run even loses about a point: training perturbs a
# model that needed nothing. From 4 bits down QAT pays: about +1 pt at W4A4, roughly even at W3A3 with this short
# recipe, and about +11 pt at W2A2 (73 → 84 %), where PTQ breaks. The price is a training run with labelled data
# (half an epoch over 6,000 images here, ~10× the cost of PTQ's calibration), the training code and its
# hyper-parameters (learning rate, freeze schedule). Stay with PTQ at 8 bits, when no labelled training data is
# available, or when the model is too large to fine-tune.

# %% [markdown] nbgrader={"grade": false, "grade_id": "q2_prompt", "locked": true, "schema_version": 3, "solution": false, "task": false}
# **Q2 (5 points).** What does the straight-through estimator get wrong? Describe one situation in which the STE
# gradient points the wrong way, and say how the clipped STE, LSQ and the latent weights each limit the damage.

# %% [markdown] nbgrader={"grade": true, "grade_id": "q2_answer", "locked": false, "points": 5, "schema_version": 3, "solution": true, "task": false}
# The STE differentiates the identity instead of the staircase: it tells a weight how the loss changes if the
# weight moved continuously, but the output changes only when the weight crosses a rounding boundary, and then by
# a whole step. A weight just below a boundary whose gradient says "decrease" does nothing for many steps; one
# that crosses changes the output by a full step, far more than the gradient predicted (the estimate is biased,
# and at 2 bits the step is large). Beyond the grid, the plain STE keeps pushing a clipped value outward although
# the output no longer changes; the clipped STE sets that gradient to 0. LSQ lets the step itself respond to the
# rounding and clipping errors, and the latent float weights accumulate the small updates until a crossing
# really helps, instead of losing them to rounding.

# %% [markdown] nbgrader={"grade": false, "grade_id": "q3_prompt", "locked": true, "schema_version": 3, "solution": false, "task": false}
# **Q3 (5 points).** Why did W2A2 from scratch stay at chance while the pretrained paths trained? Use the loss
# curves of Part 4 and what the quantizers see at initialisation. Did the gradual path beat the direct one here?

# %% [markdown] nbgrader={"grade": true, "grade_id": "q3_answer", "locked": false, "points": 5, "schema_version": 3, "solution": true, "task": false}
# From scratch the loss stays at ln 10 ≈ 2.30, the loss of a uniform guess: random weights quantized to 4 signed
# levels per channel and activations to 4 levels leave almost no signal, the STE gradients through such a coarse,
# random network are close to noise, and the ranges start from statistics of a network that computes nothing.
# From the pretrained model the quantized network already classifies (PTQ's accuracy), the ranges start where the
# useful values are, and the STE only corrects small errors. On this CNN the gradual 8 → 4 → 2 path trains too
# (≈ 58 % after three stages of 8 batches), but the direct W2A2 run from the pretrained weights does far better with
# the same budget (≈ 84 %): what matters is starting from trained weights — the seed study never tried INT2 QAT
# directly from its pretrained ViT. (Its NaN loss is the step pitfall of Part 2: a range that reaches 0.)

# %% [markdown] nbgrader={"grade": false, "grade_id": "further_reading", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Further reading
# - Y. Bengio, N. Léonard, A. Courville, 2013. *Estimating or Propagating Gradients Through Stochastic Neurons for Conditional Computation.* arXiv:1308.3432.
# - M. Courbariaux, Y. Bengio, J.-P. David, 2015. *BinaryConnect: Training Deep Neural Networks with binary weights during propagations.* NeurIPS.
# - B. Jacob et al., 2018. *Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference.* CVPR.
# - J. Choi et al., 2018. *PACT: Parameterized Clipping Activation for Quantized Neural Networks.* arXiv:1805.06085.
# - S. K. Esser, J. L. McKinstry, D. Bablani, R. Appuswamy, D. S. Modha, 2020. *Learned Step Size Quantization.* ICLR.
# - Y. Bhalgat, J. Lee, M. Nagel, T. Blankevoort, N. Kwak, 2020. *LSQ+: Improving low-bit quantization through learnable offsets and better initialization.* CVPR Workshops.
# - S. Zhou et al., 2016. *DoReFa-Net: Training Low Bitwidth Convolutional Neural Networks with Low Bitwidth Gradients.* arXiv:1606.06160.
# - P. Yin et al., 2019. *Understanding Straight-Through Estimator in Training Activation Quantized Neural Nets.* ICLR.
# - M. Nagel et al., 2022. *Overcoming Oscillations in Quantization-Aware Training.* ICML.
#
# Next: **Lab 4**, where the weights shrink to one bit or three levels (binary and ternary networks).
