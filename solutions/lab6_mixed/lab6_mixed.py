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
# # Lab 6 — Capstone: how much of a transformer can run in INT4? Mixed precision by sensitivity
#
# Labs 1–5 quantized every layer of a network to the same width. Real deployments mix widths: a layer that barely
# notices 4-bit (or 2-bit) arithmetic should get it, a fragile one should keep 8 bits. This capstone reproduces a
# study from the course's source notes on a transformer shipped with the course, `TinyViT`: its **38 matrix
# products** (1 patch embedding + 6 blocks × (4 linear layers + 2 attention products) + 1 head) are quantized to INT4
# one at a time, ranked by the accuracy each one costs, and switched on in that order to see how much of the matrix
# arithmetic can run in INT4 within a 2 %, 5 % and 10 % accuracy budget. Then you do better than that greedy
# recipe with an exact bit allocation, check a second-order proxy for sensitivity, recover accuracy with training,
# and bring the idea back to the course CNN.
#
# **You will be able to**
# 1. quantize both operands of a matrix product on the fly (dynamic, per tensor, unsigned) and compute the product
#    with integer arithmetic and four zero-point terms, for linear layers and batched attention products;
# 2. measure the sensitivity of each product, count its multiplications, and say why a budget is a fraction of
#    *multiplications*, not of products;
# 3. read a greedy sensitivity curve that is not monotone, and solve the bit allocation over {8, 4, 2} bits
#    exactly (a knapsack by dynamic programming) — then check the chosen configuration's *true* accuracy;
# 4. compare measured sensitivities with a Hessian-trace proxy (HAWQ), and recover INT4 / INT2 accuracy with
#    quantization-aware training, gradually rather than from scratch;
# 5. place per-layer mixed-precision policies of the CNN on an accuracy-vs-size Pareto front.
#
# **Prerequisites**: Labs 1–3 (affine quantization, the integer matmul with zero points, QAT with LSQ); Lab 2's
# k-means codebooks for Part 5. **Time**: 4–6 hours.
#
# | part | graded functions | points |
# |---|---|---|
# | 1. The quantized product | `quantize_operand`, `zero_point_matmul`, `dynamic_quantized_matmul` | 32 |
# | 2. Sensitivity | `multiply_count`, `sensitivity_ranking` | 16 |
# | 3. Greedy and its limits | `products_within_budget`, `allocate_bits` | 32 |
# | 4. Recover with training | — (experiments with your functions) | — |
# | 5. Back to the CNN | — (experiments with your functions) | — |
# | 6. Wrap-up | four reflection questions (graded by hand) | 20 |
#
# **How this notebook works.** Write each function in its answer cell (replace the line
# `raise NotImplementedError()`), then run the test cell below it. Visible tests show what went in, what was
# expected and what came back, and name the likely mistake. Hidden checks run at grading time on more cases
# (constant and all-zero operands, batched 4-D attention tensors, K = 1, float16 / float64, ties in the ranking,
# the minimum budget and the largest, infeasible budgets, the brute-force optimum of small allocation problems);
# they call only the functions you write — so keep the names and argument orders. Grading runs the setup cell and
# your answer cells only — a function must not depend on a variable computed in an experiment cell. Before
# submitting run `autograder check lab6_mixed.ipynb`. Every widget and experiment below uses **your** functions;
# the few sweeps that would take minutes are read from a cache the course ships (each cell says so, and how to
# recompute it).

# %% nbgrader={"grade": false, "grade_id": "setup", "locked": true, "schema_version": 3, "solution": false, "task": false}
# %matplotlib widget
import itertools
import math
import time

import matplotlib.pyplot as plt
import torch
from IPython.display import display
from tqdm.auto import tqdm

import lowbit
from lowbit import viz
from lowbit.quant.linear import MIN_SCALE
from lowbit.quant.validate import check_bits, check_float_tensor, check_int_tensor
from lowbit.testing import assert_close, assert_dtype, assert_equal_int, assert_not_modified, assert_shape

torch.set_num_threads(1)  # the course machine is shared: one thread is faster than two busy ones
lowbit.seed_everything(0)
vit = lowbit.models.pretrained("vit")  # TinyViT, fp32, eval mode: 38 matrix products
PRODUCTS = lowbit.models.matmul_names(vit)
# While a grader runs this notebook, experiments shrink (200 test images, a few products; same code).
test_images, test_labels = lowbit.data.load_fashion_mnist("test", "embedded")
if lowbit.GRADING:
    test_images, test_labels = test_images[:200], test_labels[:200]
with torch.no_grad():
    fp32_accuracy = float((vit(test_images).argmax(dim=1) == test_labels).float().mean())
print(f"TinyViT: {sum(p.numel() for p in vit.parameters()):,} parameters, {len(PRODUCTS)} matrix products; FP32 "
      f"accuracy on {len(test_labels):,} embedded test images: {100 * fp32_accuracy:.2f} %")

# %% [markdown] nbgrader={"grade": false, "grade_id": "part1_intro", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ## Part 1 — The quantized product
#
# The study quantizes **products**, not layers: every `Linear` ($y = x W^\top + b$, the weight is one operand, the
# activation the other) and both attention products ($Q K^\top$ and $\operatorname{softmax}(\cdot)\, V$, where
# *both* operands are activations) become one integer matrix product. LayerNorm, softmax, GELU and the residual
# additions stay in float, as in the study. Quantization is **dynamic** and **per tensor**: just before each
# product, each operand gets its own scale and zero point from its current min and max, over the **unsigned**
# range $[0, 2^b - 1]$ (the study's choice, and Lab 1's affine convention):
#
# $$ r_\min = \min(\min x,\, 0),\quad r_\max = \max(\max x,\, 0),\qquad
#    S = \frac{r_\max - r_\min}{2^b - 1},\qquad Z = \operatorname{clamp}\Big(\operatorname{round}\big(-r_\min / S\big),
#    0,\, 2^b - 1\Big), $$
#
# $$ Q = \operatorname{clamp}\big(\operatorname{round}(x / S) + Z,\ 0,\ 2^b - 1\big), \qquad x \approx S\,(Q - Z). $$
#
# The range is widened to contain 0 so that 0 is exact (zero padding, ReLU zeros and the softmax's near-zeros are
# common); the study writes $Z = \operatorname{round}(q_\max - r_\max / S)$, which is the same number. A constant
# all-zero operand has $r_\max = r_\min$: take $S = 1$ (a zero scale would divide by zero). `round` is
# round-half-to-even (`torch.round`), computed in float32, and the scale is floored at `MIN_SCALE` (the smallest
# positive float32) as in Lab 1.

# %% nbgrader={"grade": false, "grade_id": "quantize_operand", "locked": false, "schema_version": 3, "solution": true, "task": false}
def quantize_operand(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dynamic per-tensor unsigned min-max quantization of one operand of a matrix product.

    Args:
        x: float tensor (float16 / bfloat16 / float32 / float64; computed in float32), any shape (0-dim included),
            non-empty, finite.
        bits: int in 1..16.
    Returns:
        (q, scale, zero_point): q int64 of x's shape with values in [0, 2^bits - 1]; scale a float32 0-dim tensor
        S = (r_max - r_min) / (2^bits - 1) with r_min = min(min x, 0), r_max = max(max x, 0), floored at MIN_SCALE,
        1.0 when r_max == r_min; zero_point an int64 0-dim tensor Z = clamp(round(-r_min / S), 0, 2^bits - 1);
        q = clamp(round(x / S) + Z, 0, 2^bits - 1), round half to even.
    Raises:
        TypeError if x is not a floating-point tensor; ValueError if x is empty or not finite, or bits is not an int
        in 1..16. x is not modified.
    """
    ### BEGIN SOLUTION
    check_float_tensor(x, "x", nonempty=True, finite=True)
    bits = check_bits(bits, low=1, high=16)
    q_max = 2 ** bits - 1
    r = x.detach().to(torch.float32)
    r_min = torch.clamp(r.min(), max=0.0)                          # the range always contains 0
    r_max = torch.clamp(r.max(), min=0.0)
    width = r_max - r_min
    scale = torch.where(width > 0, (width / q_max).clamp(min=MIN_SCALE), torch.ones_like(width))
    zero_point = torch.clamp(torch.round(-r_min / scale), 0, q_max)
    q = torch.clamp(torch.round(r / scale) + zero_point, 0, q_max)
    return q.to(torch.int64), scale, zero_point.to(torch.int64)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_quantize_operand", "locked": true, "points": 8, "schema_version": 3, "solution": false, "task": false}
x = torch.tensor([-1.0, 0.0, 0.5, 2.0])                        # 2 bits: S = 3 / 3 = 1, Z = round(1 / 1) = 1
q, scale, zero_point = quantize_operand(x, 2)
assert_equal_int(q, torch.tensor([0, 1, 1, 3]), "quantize_operand(x, bits=2): codes", inputs={"x": x, "bits": 2},
                 hint="q = round(x / S) + Z with round half to even: 0.5 / 1 rounds to 0, then add Z = 1 (add the "
                      "zero point after rounding: round(0.5 + 1) = 2)")
assert_close(scale, torch.tensor(1.0), "quantize_operand(x, bits=2): scale", inputs={"x": x, "bits": 2},
             hint="S = (r_max - r_min) / (2^b - 1) = 3 / 3: unsigned codes 0..2^b - 1, not / 2^b")
assert_equal_int(zero_point, torch.tensor(1), "quantize_operand(x, bits=2): zero point", inputs={"x": x, "bits": 2},
                 hint="Z = round(-r_min / S) = 1: the integer that stands for 0.0")
positive = torch.tensor([1.0, 2.0, 4.0])                       # r_min = min(1, 0) = 0: S = 4 / 3, Z = 0
q, scale, zero_point = quantize_operand(positive, 2)
assert_close(scale, torch.tensor(4.0 / 3.0), "quantize_operand of an all-positive x: scale",
             inputs={"x": positive, "bits": 2},
             hint="the range must be widened to contain 0: r_min = min(min x, 0) = 0, so S = (4 - 0) / 3")
assert_equal_int(q, torch.tensor([1, 2, 3]), "quantize_operand of an all-positive x: codes",
                 inputs={"x": positive, "bits": 2})
negative = torch.tensor([-3.0, -1.5, -0.7])                    # S = 1, Z = 3: -1.5 -> round(-1.5) + 3 = -2 + 3 = 1
q, scale, zero_point = quantize_operand(negative, 2)
assert_equal_int(torch.stack([q[0], q[1], q[2], zero_point]), torch.tensor([0, 1, 2, 3]),
                 "quantize_operand of an all-negative x: codes and zero point (last)",
                 inputs={"x": negative, "bits": 2},
                 hint="r_max = max(max x, 0) = 0, Z = round(-r_min / S) = 3; round half to even: round(-1.5) = -2 "
                      "(torch.round, not floor(x + 0.5))")
for constant in (torch.zeros(2, 3), torch.full((4,), 2.5)):
    q, scale, zero_point = quantize_operand(constant, 4)
    expected = 1.0 if float(constant.abs().max()) == 0 else 2.5 / 15
    assert_close(scale, torch.tensor(expected), "quantize_operand of a constant x: scale",
                 inputs={"x": constant, "bits": 4},
                 hint="an all-zero x has r_max == r_min: the scale must be 1.0 (a zero scale divides by zero); a "
                      "constant 2.5 still spans [0, 2.5] once the range contains 0")
    assert_equal_int(q, torch.round(constant / expected).to(torch.int64), "quantize_operand of a constant x: codes",
                     inputs={"x": constant, "bits": 4})
g = torch.Generator().manual_seed(0)
attention = torch.randn(2, 4, 17, 16, generator=g) * 3 + 1     # a 4-D operand, as in the attention products
q, scale, zero_point = quantize_operand(attention, 4)
assert_shape(q, (2, 4, 17, 16), "quantize_operand of a [2, 4, 17, 16] tensor: codes keep x's shape")
assert_dtype(q, torch.int64, "quantize_operand: codes are int64", hint="return q.to(torch.int64)")
assert_shape(scale, (), "quantize_operand: the scale is a 0-dim tensor (one per tensor)")
assert_dtype(scale, torch.float32, "quantize_operand: the scale is float32")
assert_shape(zero_point, (), "quantize_operand: the zero point is a 0-dim tensor")
assert_dtype(zero_point, torch.int64, "quantize_operand: the zero point is int64")
error = (scale * (q - zero_point) - attention).abs().max()
assert_close(torch.clamp(error - scale / 2, min=0), torch.tensor(0.0),
             "quantize_operand: |S (Q - Z) - x| <= S / 2 everywhere (nothing is clipped by min-max)", atol=1e-5,
             inputs={"x": "randn [2, 4, 17, 16] · 3 + 1", "bits": 4})
q64, scale64, _ = quantize_operand(torch.tensor([-1.0, 0.0, 0.5, 2.0], dtype=torch.float64), 2)
assert_dtype(scale64, torch.float32, "quantize_operand of a float64 x: the scale is still float32",
             hint="compute in float32: x.to(torch.float32)")
for bad, error_type, why in ((torch.tensor([1, 2]), TypeError, "integer x"), (torch.zeros(0), ValueError, "empty x"),
                             (torch.tensor([1.0, float("nan")]), ValueError, "x with NaN")):
    try:
        quantize_operand(bad, 4)
    except error_type:
        print(f"✓ quantize_operand refuses an {why} with {error_type.__name__}")
    else:
        raise AssertionError(f"quantize_operand({bad}, 4) must raise {error_type.__name__} ({why})")
for bad_bits in (0, 17):
    try:
        quantize_operand(x, bad_bits)
    except ValueError:
        print(f"✓ quantize_operand refuses bits={bad_bits} with ValueError")
    else:
        raise AssertionError(f"quantize_operand(x, bits={bad_bits}) must raise ValueError: bits is an int in 1..16")
assert_not_modified(quantize_operand, torch.tensor([-1.0, 0.0, 0.5, 2.0]), 2)
### BEGIN HIDDEN TESTS
from autograder.checks.lab6_mixed import check_quantize_operand
check_quantize_operand(quantize_operand)
### END HIDDEN TESTS

# %% [markdown] nbgrader={"grade": false, "grade_id": "zero_point_matmul_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### The product of two quantized operands
# With $A \approx S_A (Q_A - Z_A)$ ($[M, K]$) and $B \approx S_B (Q_B - Z_B)$ ($[K, N]$),
#
# $$ AB \approx S_A S_B\,(Q_A - Z_A)(Q_B - Z_B)
#    = S_A S_B\Big(Q_A Q_B \;-\; Z_B\, Q_A \mathbf 1 \;-\; Z_A\, \mathbf 1^\top Q_B \;+\; K\, Z_A Z_B\Big), $$
#
# where $Q_A \mathbf 1$ is the **row sums** of $Q_A$ (a column $[M, 1]$, `q_a.sum(-1, keepdim=True)`),
# $\mathbf 1^\top Q_B$ the **column sums** of $Q_B$ (a row $[1, N]$, `q_b.sum(-2, keepdim=True)`) and $K$ the inner
# dimension: the constant term is $\sum_{k=1}^{K} Z_A Z_B$. All the $O(MKN)$ work is in $Q_A Q_B$, a product of
# small unsigned integers that integer hardware does natively; the sums are $O(MK + KN)$ and can be precomputed
# for a constant weight (Jacob et al. 2018, *Quantization and Training of Neural Networks for Efficient
# Integer-Arithmetic-Only Inference*, CVPR, §2.3 — the same expansion as Lab 1's `quantized_matmul`, now with
# batch dimensions: the attention products are `[N, H, T, d] @ [N, H, d, T]`). Accumulate in a wide type: 8-bit
# codes overflow an 8- or 16-bit accumulator after a few terms.

# %% nbgrader={"grade": false, "grade_id": "zero_point_matmul", "locked": false, "schema_version": 3, "solution": true, "task": false}
def zero_point_matmul(q_a: torch.Tensor, z_a: int | torch.Tensor, q_b: torch.Tensor,
                      z_b: int | torch.Tensor) -> torch.Tensor:
    """(Q_A - Z_A) @ (Q_B - Z_B) by the zero-point expansion Q_A Q_B - Z_B rowsum(Q_A) - Z_A colsum(Q_B) + K Z_A Z_B.

    Args:
        q_a: integer tensor [..., M, K]; q_b: integer tensor [..., K, N] (each >= 2-D; batch dims broadcast as in
            torch.matmul, e.g. attention [N, H, T, d] @ [N, H, d, T]).
        z_a, z_b: the zero points, one per tensor: Python ints or 0-dim integer tensors.
    Returns:
        int64 tensor [..., M, N], exact (the products are formed in float64, exact while |values| < 2^53).
    Raises:
        TypeError for float (or bool) codes or zero points; ValueError for fewer than 2 dims, K mismatch or a
        zero point that is not one number.
        The inputs are not modified.
    """
    ### BEGIN SOLUTION
    check_int_tensor(q_a, "q_a")
    check_int_tensor(q_b, "q_b")
    if q_a.ndim < 2 or q_b.ndim < 2:
        raise ValueError(f"q_a and q_b must be matrices or batches of matrices (>= 2 dims), got shapes "
                         f"{tuple(q_a.shape)} and {tuple(q_b.shape)}")
    k = q_a.shape[-1]
    if q_b.shape[-2] != k:
        raise ValueError(f"inner dimensions differ: q_a is [..., M, {k}] but q_b is [..., {q_b.shape[-2]}, N]")
    zeros = []
    for z, name in ((z_a, "z_a"), (z_b, "z_b")):
        if isinstance(z, torch.Tensor):
            check_int_tensor(z, name)
            if z.ndim != 0:
                raise ValueError(f"{name} must be one zero point per tensor (an int or a 0-dim tensor), got shape "
                                 f"{tuple(z.shape)}")
            z = int(z)
        elif isinstance(z, bool) or not isinstance(z, int):
            raise TypeError(f"{name} must be a Python int or a 0-dim integer tensor, got {type(z).__name__}")
        zeros.append(z)
    za, zb = zeros
    a, b = q_a.to(torch.float64), q_b.to(torch.float64)
    row_sums = a.sum(dim=-1, keepdim=True)                        # [..., M, 1]
    col_sums = b.sum(dim=-2, keepdim=True)                        # [..., 1, N]
    product = a @ b - zb * row_sums - za * col_sums + k * za * zb
    return product.to(torch.int64)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_zero_point_matmul", "locked": true, "points": 12, "schema_version": 3, "solution": false, "task": false}
q_a = torch.tensor([[1, 2, 0], [3, 0, 2]])                     # [2, 3]
q_b = torch.tensor([[2, 0, 1, 3], [1, 3, 0, 2], [0, 1, 2, 2]])  # [3, 4]
case = {"q_a": q_a, "z_a": 1, "q_b": q_b, "z_b": 2}
# (Q_A - 1) @ (Q_B - 2) = [[0, 1, -1], [2, -1, 1]] @ [[0, -2, -1, 1], [-1, 1, -2, 0], [-2, -1, 0, 0]]
assert_equal_int(zero_point_matmul(q_a, 1, q_b, 2), torch.tensor([[1, 2, -2, 0], [-1, -6, 0, 2]]),
                 "zero_point_matmul of [2, 3] and [3, 4] codes, Z_A = 1, Z_B = 2", inputs=case,
                 hint="subtract Z_B times the row sums of Q_A ([M, 1]) and Z_A times the column sums of Q_B "
                      "([1, N]), then add K · Z_A · Z_B with K = 3 (not Z_A · Z_B alone)")
g = torch.Generator().manual_seed(1)
q_att = torch.randint(0, 16, (2, 4, 17, 16), generator=g)      # Q [N, H, T, d] ...
k_att = torch.randint(0, 16, (2, 4, 16, 17), generator=g)      # ... @ K^T [N, H, d, T]
expected = ((q_att - 7).double() @ (k_att - 9).double()).to(torch.int64)
assert_equal_int(zero_point_matmul(q_att, torch.tensor(7), k_att, torch.tensor(9)), expected,
                 "zero_point_matmul of batched 4-D attention codes [2, 4, 17, 16] @ [2, 4, 16, 17]",
                 inputs={"q_a": q_att, "z_a": "tensor(7)", "q_b": k_att, "z_b": "tensor(9)"},
                 hint="row sums along the last axis of q_a (sum(-1, keepdim=True)), column sums along the "
                      "second-to-last axis of q_b (sum(-2, keepdim=True)): the batch axes stay")
broadcast_a = torch.randint(0, 4, (3, 1, 2, 5), generator=g)
broadcast_b = torch.randint(0, 4, (4, 5, 2), generator=g)
assert_equal_int(zero_point_matmul(broadcast_a, 2, broadcast_b, 1),
                 ((broadcast_a - 2).double() @ (broadcast_b - 1).double()).to(torch.int64),
                 "zero_point_matmul with broadcast batch dims [3, 1, 2, 5] @ [4, 5, 2] -> [3, 4, 2, 2]",
                 inputs={"q_a": broadcast_a, "z_a": 2, "q_b": broadcast_b, "z_b": 1})
column = torch.tensor([[3], [0], [5]])                          # K = 1: [3, 1] @ [1, 2]
assert_equal_int(zero_point_matmul(column, 2, torch.tensor([[1, 4]]), 3), torch.tensor([[-2, 1], [4, -2], [-6, 3]]),
                 "zero_point_matmul with K = 1", inputs={"q_a": column, "z_a": 2, "q_b": [[1, 4]], "z_b": 3})
wide_a = torch.full((2, 64), 255, dtype=torch.uint8)           # 8-bit codes: products up to 255², 64 of them summed
wide_b = torch.full((64, 3), 200, dtype=torch.uint8)
got = zero_point_matmul(wide_a, 0, wide_b, 0)
assert_equal_int(got, torch.full((2, 3), 64 * 255 * 200), "zero_point_matmul of uint8 codes (255 · 200, K = 64)",
                 inputs={"q_a": "uint8 [2, 64] of 255", "z_a": 0, "q_b": "uint8 [64, 3] of 200", "z_b": 0},
                 hint="multiply in a wide type (float64 or int64): products of 8-bit codes overflow uint8 and int16")
assert_dtype(got, torch.int64, "zero_point_matmul returns int64", hint="return the product .to(torch.int64)")
long_a = torch.randint(0, 256, (2, 4096), generator=g)         # K = 4096 8-bit codes: sums far beyond 2^24
long_b = torch.randint(0, 256, (4096, 3), generator=g)
assert_equal_int(zero_point_matmul(long_a, 3, long_b, 250), ((long_a - 3).double() @ (long_b - 250).double()).long(),
                 "zero_point_matmul of 8-bit codes with K = 4096", inputs={"q_a": long_a, "z_a": 3, "q_b": long_b,
                                                                           "z_b": 250},
                 hint="float32 holds integers exactly only up to 2^24 (16,777,216): multiply in float64 or int64")
for bad, error_type, why in (((q_a.float(), 1, q_b, 2), TypeError, "float codes"),
                             ((q_a, 1, q_b[:2], 2), ValueError, "K mismatch ([2, 3] @ [2, 4])"),
                             ((torch.tensor([1, 2, 3]), 1, q_b, 2), ValueError, "a 1-D q_a")):
    try:
        zero_point_matmul(*bad)
    except error_type:
        print(f"✓ zero_point_matmul refuses {why} with {error_type.__name__}")
    else:
        raise AssertionError(f"zero_point_matmul must raise {error_type.__name__} for {why}")
assert_not_modified(zero_point_matmul, torch.tensor([[1, 2, 0], [3, 0, 2]]), 1,
                    torch.tensor([[2, 0], [1, 3], [0, 1]]), 2)
### BEGIN HIDDEN TESTS
from autograder.checks.lab6_mixed import check_zero_point_matmul
check_zero_point_matmul(zero_point_matmul)
### END HIDDEN TESTS

# %% [markdown] nbgrader={"grade": false, "grade_id": "dynamic_matmul_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### The whole dynamic product
# Put the two together: quantize each operand with its own $(S, Z)$, multiply the codes, scale once:
# $C = S_A S_B \cdot \text{zero\_point\_matmul}(Q_A, Z_A, Q_B, Z_B)$ as float32. Up to float rounding this equals
# the **fake-quantized** product $\hat A \hat B$ with $\hat A = S_A (Q_A - Z_A)$ — which is how the model wrapper
# below runs the products (about ten times faster on a CPU than the integer route, same numbers). A `Linear`
# layer's operands are its input $x$ `[..., in]` and its transposed weight `[in, out]`; its bias is added in float.

# %% nbgrader={"grade": false, "grade_id": "dynamic_quantized_matmul", "locked": false, "schema_version": 3, "solution": true, "task": false}
def dynamic_quantized_matmul(a: torch.Tensor, b: torch.Tensor, bits: int) -> torch.Tensor:
    """a @ b with both operands quantized per tensor at `bits` (quantize_operand) and multiplied as integers.

    Args:
        a: float tensor [..., M, K]; b: float tensor [..., K, N] (each >= 2-D, batch dims broadcast as in
            torch.matmul); non-empty and finite. bits: int in 1..16.
    Returns:
        float32 tensor [..., M, N]: S_A * S_B * zero_point_matmul(Q_A, Z_A, Q_B, Z_B), equal to
        fake(a) @ fake(b) with fake(x) = S (Q - Z) up to float rounding.
    Raises:
        TypeError for non-float tensors; ValueError for fewer than 2 dims, K mismatch, empty / non-finite
        operands or bits outside 1..16. a and b are not modified.
    """
    ### BEGIN SOLUTION
    check_float_tensor(a, "a", nonempty=True, finite=True)
    check_float_tensor(b, "b", nonempty=True, finite=True)
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(f"a and b must be matrices or batches of matrices (>= 2 dims), got shapes {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"inner dimensions differ: a is [..., M, {a.shape[-1]}] but b is [..., {b.shape[-2]}, N]")
    q_a, s_a, z_a = quantize_operand(a, bits)
    q_b, s_b, z_b = quantize_operand(b, bits)
    integer = zero_point_matmul(q_a, z_a, q_b, z_b)
    return (s_a.double() * s_b.double() * integer.double()).to(torch.float32)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_dynamic_quantized_matmul", "locked": true, "points": 12, "schema_version": 3, "solution": false, "task": false}
a = torch.tensor([[0.0, 1.0, 2.0, 3.0], [3.0, 2.0, 1.0, 0.0]])   # on the 2-bit grid: S_A = 1, Z_A = 0
b = torch.tensor([[-1.0], [0.0], [1.0], [2.0]]) * 0.5            # on the 2-bit grid: S_B = 0.5, Z_B = 1
assert_close(dynamic_quantized_matmul(a, b, 2), a @ b, "dynamic_quantized_matmul of operands on the 2-bit grid",
             inputs={"a": a, "b": b, "bits": 2},
             hint="values on the grid are exact, so the product must be a @ b: C = S_A · S_B · (Q_A Q_B - Z_B "
                  "rowsum(Q_A) - Z_A colsum(Q_B) + K Z_A Z_B), each operand with its own scale and zero point")


def fake(x, bits):  # S (Q - Z) with the min-max grid of the whole tensor, written out
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    s = (hi - lo) / (2 ** bits - 1) if hi > lo else 1.0
    z = round(-lo / s)
    return s * (torch.clamp(torch.round(x / s) + z, 0, 2 ** bits - 1) - z)


g = torch.Generator().manual_seed(2)
a, b = torch.randn(5, 7, generator=g), torch.rand(7, 3, generator=g) - 0.2
assert_close(dynamic_quantized_matmul(a, b, 4), fake(a, 4) @ fake(b, 4), "dynamic_quantized_matmul vs "
             "fake(a) @ fake(b) at 4 bits", rtol=1e-5, atol=1e-5, inputs={"a": a, "b": b, "bits": 4},
             hint="quantize both operands at `bits` (here 4), then multiply the integer product by both scales, "
                  "S_A · S_B (once each)")
assert_dtype(dynamic_quantized_matmul(a.double(), b.double(), 4), torch.float32,
             "dynamic_quantized_matmul of float64 operands returns float32",
             hint="return float32 whatever the operands' dtype: .to(torch.float32)")
scores = torch.softmax(torch.randn(2, 4, 17, 17, generator=g), dim=-1)    # attention probabilities [N, H, T, T]
values = torch.randn(2, 4, 17, 16, generator=g)                           # V [N, H, T, d]
got = dynamic_quantized_matmul(scores, values, 8)
assert_shape(got, (2, 4, 17, 16), "dynamic_quantized_matmul of attention [2, 4, 17, 17] @ [2, 4, 17, 16]",
             hint="keep the batch dims: quantize the 4-D operands as they are (no reshape to [rows, K]); "
                  "torch.matmul broadcasts the batch")
assert_dtype(got, torch.float32, "dynamic_quantized_matmul returns float32")
assert_close(got, fake(scores, 8) @ fake(values, 8), "dynamic_quantized_matmul of batched attention tensors at 8 bits",
             rtol=1e-5, atol=1e-5, inputs={"a": "softmax [2, 4, 17, 17]", "b": "randn [2, 4, 17, 16]", "bits": 8})
assert_close(got, scores @ values, "dynamic_quantized_matmul at 8 bits vs the float product", atol=0.05,
             inputs={"a": "softmax [2, 4, 17, 17]", "b": "randn [2, 4, 17, 16]", "bits": 8})
try:
    dynamic_quantized_matmul(torch.randn(3, 4), torch.randn(5, 2), 8)
except ValueError:
    print("✓ dynamic_quantized_matmul refuses a K mismatch ([3, 4] @ [5, 2]) with ValueError")
else:
    raise AssertionError("dynamic_quantized_matmul([3, 4], [5, 2]) must raise ValueError: K differs")
assert_not_modified(dynamic_quantized_matmul, torch.tensor([[0.3, -1.2], [2.0, 0.5]]), torch.tensor([[1.0], [-0.5]]), 4)
### BEGIN HIDDEN TESTS
from autograder.checks.lab6_mixed import check_dynamic_quantized_matmul
check_dynamic_quantized_matmul(dynamic_quantized_matmul)
### END HIDDEN TESTS

# %% [markdown] nbgrader={"grade": false, "grade_id": "part1_experiment_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Experiment: TinyViT with quantized products
# `lowbit.quant.mixed.quantize_products` returns a copy of TinyViT whose 38 products are `QuantizedProduct`s: each
# quantizes its two operands with **your** `quantize_operand` (the weight of a `Linear` too, per tensor) and
# multiplies $\hat A \hat B$ in float; `exact=True` runs **your** `dynamic_quantized_matmul` instead, integers and
# all. `set_product_bits` sets the width of every product (an int, or a mapping name → bits; missing names stay
# float). First the two routes side by side on 100 test images, then every product at 8, 4 and 2 bits.

# %% nbgrader={"grade": false, "grade_id": "part1_model", "locked": true, "schema_version": 3, "solution": false, "task": false}
from lowbit.quant import mixed

YOUR_FUNCTIONS = {"quantize_operand": quantize_operand, "zero_point_matmul": zero_point_matmul,
                  "dynamic_quantized_matmul": dynamic_quantized_matmul}
qvit = mixed.quantize_products(vit, functions=YOUR_FUNCTIONS)                 # all float until bits are set
integer_vit = mixed.quantize_products(vit, bits=4, functions=YOUR_FUNCTIONS, exact=True)
few = test_images[:100]
captured = {}
hook = vit.blocks[0].attn.qkv.register_forward_pre_hook(lambda module, inputs: captured.update(x=inputs[0]))
with torch.no_grad():
    vit(few)
    hook.remove()
    qkv = qvit.blocks[0].attn.qkv                       # one product: the first block's qkv projection
    qkv.bits = 4
    fake_out, integer_out = qkv(captured["x"]), integer_vit.blocks[0].attn.qkv(captured["x"])
    qkv.bits = None
    mixed.set_product_bits(qvit, 4)
    fake_logits, integer_logits = qvit(few), integer_vit(few)
    mixed.set_product_bits(qvit, None)
gap = float((fake_out - integer_out).abs().max() / fake_out.abs().max())
agree = float((fake_logits.argmax(1) == integer_logits.argmax(1)).float().mean())
print(f"blocks.0.attn.qkv at INT4 on 100 images [100, 17, 64] @ [64, 192]: fake-quant vs integer route, largest "
      f"difference {gap:.1e} of the output's range (float rounding)")
print(f"all 38 products at INT4: the same prediction for {100 * agree:.0f} % of the 100 images (a rounding difference "
      f"can move a value across a code boundary, and 38 INT4 products amplify it)")

# %% nbgrader={"grade": false, "grade_id": "part1_uniform", "locked": true, "schema_version": 3, "solution": false, "task": false}
uniform = {}                                            # every product at one width, on the 3,000 embedded images
for bits in (8, 4, 2):
    uniform[bits] = mixed.config_accuracy(qvit, bits, test_images, test_labels)
    print(f"every product at INT{bits}: {100 * uniform[bits]:6.2f} % ({100 * (uniform[bits] - fp32_accuracy):+.2f} pt)")
print("the study (ViT on CIFAR-10): FP 79.58 %, every product at INT4 73.09 % (-6.49 pt), at INT2 11.40 %")

# %% [markdown] nbgrader={"grade": false, "grade_id": "part1_results_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# Compare with the study: INT8 everywhere costs nothing, INT2 everywhere is chance (10 classes: 10 %), and INT4
# everywhere sits in between — here much closer to FP32 than in the study's ViT (Fashion-MNIST is an easier task
# and TinyViT's activations are better behaved, but the ordering is the same). The rest of the lab asks *which*
# products carry that loss.

# %% [markdown] nbgrader={"grade": false, "grade_id": "part2_intro", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ## Part 2 — Sensitivity
#
# Which products can go to INT4? The study's answer is empirical: quantize **one product at a time**, leave the 37
# others in float, and measure the accuracy. A product whose quantization costs nothing (or, it turns out, *gains*
# a little) goes first. Before ranking, count what each product is worth: a budget of "how much of the arithmetic
# runs in INT4" should count **multiplications**, because the products differ by orders of magnitude. For
# `torch.matmul(a, b)` with $a$ `[..., M, K]` and $b$ `[..., K, N]`, each of the $M N$ outputs of each matrix in
# the (broadcast) batch is a dot product of length $K$:
#
# $$ \#\text{mult}(a, b) = \Big(\prod_i \text{batch}_i\Big) \cdot M \cdot K \cdot N. $$
#
# In TinyViT one `mlp.fc1` on 17 tokens ($17 \cdot 64 \cdot 128 = 139{,}264$) costs 7.5 times one attention product
# ($4 \text{ heads} \cdot 17 \cdot 16 \cdot 17 = 18{,}496$) and 218 times the head ($64 \cdot 10$). The study counted
# **operations** (each of its 38 products as one, "32 of 38 = 84.2 %"); this lab reports both.

# %% nbgrader={"grade": false, "grade_id": "multiply_count", "locked": false, "schema_version": 3, "solution": true, "task": false}
def multiply_count(a_shape: tuple[int, ...] | list[int] | torch.Size,
                   b_shape: tuple[int, ...] | list[int] | torch.Size) -> int:
    """Scalar multiplications of torch.matmul(a, b) for a [..., M, K] and b [..., K, N].

    Args:
        a_shape, b_shape: tuples / lists / torch.Size of non-negative ints, each with >= 2 entries; the batch
            dims (all but the last two) broadcast as in torch.matmul.
    Returns:
        prod(broadcast batch dims) * M * K * N as a Python int.
    Raises:
        ValueError for fewer than 2 dims, negative or non-integer sizes, K mismatch or batch dims that do not
        broadcast.
    """
    ### BEGIN SOLUTION
    shapes = []
    for shape, name in ((a_shape, "a_shape"), (b_shape, "b_shape")):
        if not isinstance(shape, (tuple, list, torch.Size)):
            raise ValueError(f"{name} must be a tuple, list or torch.Size of ints, got {type(shape).__name__}")
        sizes = tuple(shape)
        if len(sizes) < 2:
            raise ValueError(f"{name} must have at least 2 entries ([..., rows, columns]), got {sizes}")
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in sizes):
            raise ValueError(f"{name} must hold non-negative ints, got {sizes}")
        shapes.append(sizes)
    (*batch_a, m, k), (*batch_b, k_b, n) = shapes
    if k != k_b:
        raise ValueError(f"inner dimensions differ: a is [..., {m}, {k}] but b is [..., {k_b}, {n}]")
    try:
        batch = torch.broadcast_shapes(tuple(batch_a), tuple(batch_b))
    except RuntimeError:
        raise ValueError(f"batch dims {tuple(batch_a)} and {tuple(batch_b)} do not broadcast") from None
    return math.prod(batch) * m * k * n
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_multiply_count", "locked": true, "points": 8, "schema_version": 3, "solution": false, "task": false}
assert_equal_int(multiply_count((2, 3), (3, 4)), 24, "multiply_count((2, 3), (3, 4))",
                 inputs={"a_shape": (2, 3), "b_shape": (3, 4)},
                 hint="M · K · N = 2 · 3 · 4: count multiplications, not one operation per product")
assert_equal_int(multiply_count((1, 17, 64), (64, 192)), 208_896, "multiply_count of TinyViT's qkv on one image",
                 inputs={"a_shape": (1, 17, 64), "b_shape": (64, 192)},
                 hint="17 tokens · 64 inputs · 192 outputs: K = 64 is a factor too")
assert_equal_int(multiply_count(torch.Size([1, 4, 17, 16]), torch.Size([1, 4, 16, 17])), 18_496,
                 "multiply_count of one image's QK^T [1, 4, 17, 16] @ [1, 4, 16, 17]",
                 inputs={"a_shape": (1, 4, 17, 16), "b_shape": (1, 4, 16, 17)},
                 hint="every batch entry (here the 4 heads) is a matrix product of its own: multiply by the "
                      "broadcast batch size, 1 · 4 = 4 (not 4 · 4 from multiplying both operands' batch dims)")
assert_equal_int(multiply_count((3, 4), (7, 4, 2)), 168, "multiply_count((3, 4), (7, 4, 2)): b carries the batch",
                 inputs={"a_shape": (3, 4), "b_shape": (7, 4, 2)},
                 hint="the batch dims of both operands broadcast (torch.broadcast_shapes): here a's [3, 4] is used "
                      "by each of b's 7 matrices")
assert_equal_int(multiply_count([5, 1, 3, 4], [6, 4, 2]), 720, "multiply_count([5, 1, 3, 4], [6, 4, 2]): batch "
                 "[5, 1] broadcast with [6] is [5, 6]", inputs={"a_shape": [5, 1, 3, 4], "b_shape": [6, 4, 2]})
assert_equal_int(multiply_count((0, 3), (3, 5)), 0, "multiply_count with M = 0", inputs={"a_shape": (0, 3),
                                                                                          "b_shape": (3, 5)})
for bad, why in ((((2, 3), (4, 5)), "a K mismatch"), (((3,), (3, 2)), "a 1-D shape"),
                 (((2, 2, 3), (3, 2, 4)), "batch dims 2 and 3 that do not broadcast")):
    try:
        multiply_count(*bad)
    except ValueError:
        print(f"✓ multiply_count refuses {why} with ValueError")
    else:
        raise AssertionError(f"multiply_count{bad} must raise ValueError ({why})")
### BEGIN HIDDEN TESTS
from autograder.checks.lab6_mixed import check_multiply_count
check_multiply_count(multiply_count)
### END HIDDEN TESTS

# %% [markdown] nbgrader={"grade": false, "grade_id": "ranking_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Ranking the products
# With `accuracies[p]` the accuracy when only product $p$ is quantized, the **least** sensitive product has the
# **highest** accuracy: rank from highest to lowest. Accuracies on a few thousand images tie often (3,000 images give
# steps of 1/3000): break ties by the lower index, so that the ranking is reproducible (a stable sort).

# %% nbgrader={"grade": false, "grade_id": "sensitivity_ranking", "locked": false, "schema_version": 3, "solution": true, "task": false}
def sensitivity_ranking(accuracies: torch.Tensor | list[float]) -> list[int]:
    """Product indices from least sensitive (highest accuracy when quantized alone) to most sensitive.

    Args:
        accuracies: 1-D float tensor or sequence [P]; accuracies[p] = accuracy with only product p quantized.
    Returns:
        a list of the P indices (Python ints), by decreasing accuracy; equal accuracies: lower index first.
    Raises:
        ValueError if accuracies is empty, not 1-D or contains NaN. accuracies is not modified.
    """
    ### BEGIN SOLUTION
    acc = torch.as_tensor(accuracies.detach() if isinstance(accuracies, torch.Tensor) else accuracies,
                          dtype=torch.float64)
    if acc.ndim != 1 or acc.numel() == 0:
        raise ValueError(f"accuracies must be a non-empty 1-D sequence [P], got shape {tuple(acc.shape)}")
    if bool(torch.isnan(acc).any()):
        raise ValueError("accuracies contains NaN: every product needs a measured accuracy")
    return torch.sort(acc, descending=True, stable=True).indices.tolist()
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_sensitivity_ranking", "locked": true, "points": 8, "schema_version": 3, "solution": false, "task": false}
accuracies = torch.tensor([0.80, 0.85, 0.79, 0.85, 0.90])
got = sensitivity_ranking(accuracies)
assert_equal_int(got, [4, 1, 3, 0, 2], "sensitivity_ranking([0.80, 0.85, 0.79, 0.85, 0.90])",
                 inputs={"accuracies": accuracies},
                 hint="least sensitive first = highest accuracy first (descending, not ascending), and the tie 0.85 "
                      "keeps the lower index first (a stable sort); return the 0-based indices p, not the sorted "
                      "accuracies or each product's rank")
assert isinstance(got, list) and all(type(i) is int for i in got), \
    f"sensitivity_ranking must return a list of Python ints (e.g. tensor.tolist()), got {got!r}"
assert_equal_int(sensitivity_ranking([0.5, 0.5, 0.5, 0.6, 0.5, 0.5]), [3, 0, 1, 2, 4, 5],
                 "sensitivity_ranking of a Python list with five ties",
                 inputs={"accuracies": [0.5, 0.5, 0.5, 0.6, 0.5, 0.5]},
                 hint="torch.sort(..., descending=True, stable=True): equal accuracies keep their order")
assert_equal_int(sensitivity_ranking([0.7]), [0], "sensitivity_ranking of one product", inputs={"accuracies": [0.7]})
for bad, why in (([], "an empty list"), ([0.5, float("nan")], "a NaN accuracy")):
    try:
        sensitivity_ranking(bad)
    except ValueError:
        print(f"✓ sensitivity_ranking refuses {why} with ValueError")
    else:
        raise AssertionError(f"sensitivity_ranking({bad}) must raise ValueError ({why})")
assert_not_modified(sensitivity_ranking, torch.tensor([0.80, 0.85, 0.79, 0.85, 0.90]))
### BEGIN HIDDEN TESTS
from autograder.checks.lab6_mixed import check_sensitivity_ranking
check_sensitivity_ranking(sensitivity_ranking)
### END HIDDEN TESTS

# %% [markdown] nbgrader={"grade": false, "grade_id": "part2_costs_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Experiment: what each product costs
# `mixed.product_costs` runs one image through the model with hooks on the 38 products and counts each product's
# multiplications with **your** `multiply_count` (a `Linear` on 17 tokens is $[1, 17, \text{in}] @ [\text{in},
# \text{out}]$; the attention products are batched over the 4 heads).

# %% nbgrader={"grade": false, "grade_id": "part2_costs", "locked": true, "schema_version": 3, "solution": false, "task": false}
multiplies = mixed.product_costs(vit, functions={"multiply_count": multiply_count})
total_multiplies = sum(multiplies.values())
kinds = {}
for name, count in multiplies.items():
    kinds.setdefault(name.split(".")[-1], []).append(count)
print(f"{'product':>12} {'count':>6} {'multiplies each':>16} {'share of all':>13}")
for kind, counts in kinds.items():
    print(f"{kind:>12} {len(counts):>6} {counts[0]:>16,} {100 * sum(counts) / total_multiplies:>12.1f} %")
print(f"{'total':>12} {len(multiplies):>6} {total_multiplies:>16,} multiplications per image")

# %% [markdown] nbgrader={"grade": false, "grade_id": "part2_sweep_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Experiment: one product at a time
# `mixed.single_product_accuracies` sets one product to INT4 (your `quantize_operand`), the 37 others float, and
# measures the accuracy — for each of the 38 (the float blocks before the product are run once and replayed, so a
# sweep costs about half of 38 full evaluations). On the 1,000 first images of the embedded test set to stay well
# within a minute; the study's cache (`lowbit/checkpoints/vit_study.json`, the full 10,000-image test set, written
# by `python -m lowbit.quant.mixed_train --write`) holds the same sweep at 8, 4 and 2 bits, used from Part 3 on.
# Your `sensitivity_ranking` orders the products.

# %% nbgrader={"grade": false, "grade_id": "part2_sweep", "locked": true, "schema_version": 3, "solution": false, "task": false}
SWEEP = 200 if lowbit.GRADING else 1000
sweep_images, sweep_labels = test_images[:SWEEP], test_labels[:SWEEP]
sweep_fp32 = mixed.config_accuracy(qvit, None, sweep_images, sweep_labels)
int4_alone = mixed.single_product_accuracies(qvit, sweep_images, sweep_labels, bits=4)
ranking = sensitivity_ranking([int4_alone[name] for name in PRODUCTS])
order = [PRODUCTS[i] for i in ranking]
gains = [name for name in PRODUCTS if int4_alone[name] > sweep_fp32]
print(f"FP32 on these {SWEEP} images: {100 * sweep_fp32:.2f} %; {len(gains)} of 38 products *raise* the accuracy "
      f"when quantized alone")
print("least sensitive: " + ", ".join(f"{name} ({100 * int4_alone[name]:.1f} %)" for name in order[:5]))
print("most sensitive:  " + ", ".join(f"{name} ({100 * int4_alone[name]:.1f} %)" for name in order[-5:]))
with plt.ioff():
    figure, ax = plt.subplots(figsize=(9.0, 3.4), layout="constrained")
drops = [100 * (sweep_fp32 - int4_alone[name]) for name in PRODUCTS]
ax.bar(range(len(PRODUCTS)), drops, color=["C2" if d < 0 else "C0" for d in drops])
ax.axhline(0, color="0.3", linewidth=0.8)
ax.set_xticks(range(len(PRODUCTS)), [viz.mixed.short_name(n) for n in PRODUCTS], rotation=90, fontsize=7)
ax.set_ylabel("accuracy drop (pt)")
ax.set_title(f"one product at INT4, the 37 others float ({SWEEP} test images; green: quantizing helps)")
display(figure)
plt.close(figure)

# %% [markdown] nbgrader={"grade": false, "grade_id": "part3_intro", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ## Part 3 — Greedy and its limits
#
# The study's recipe: switch products to INT4 **in ranked order**, one more each step, and record the accuracy
# $\text{curve}[k]$ with the first $k$ products of the ranking quantized ($\text{curve}[0]$: none,
# $\text{curve}[P]$: all). A budget $\delta$ (an allowed absolute drop, 0.02 = 2 points) admits the largest $k$
# with
#
# $$ \text{curve}[k] \;\ge\; \text{acc}_\text{FP32} - \delta . $$
#
# The study's curve was **not monotone**: some INT4 products *raised* accuracy (quantization noise acting as a
# regularizer, or errors of two products cancelling), so the curve can dip below the line and come back. Reading
# the budget at the first dip would throw away products that fit: take the largest $k$.

# %% nbgrader={"grade": false, "grade_id": "products_within_budget", "locked": false, "schema_version": 3, "solution": true, "task": false}
def products_within_budget(curve: torch.Tensor | list[float], baseline: float, budget: float) -> int:
    """How many products of the ranking can be quantized within an accuracy budget: the largest k with
    curve[k] >= baseline - budget (0 if there is none).

    Args:
        curve: 1-D float tensor or sequence [P + 1]; curve[k] = accuracy with the first k products of the ranking
            quantized (curve[0]: none). Not necessarily monotone.
        baseline: the FP32 accuracy (a fraction). budget: the allowed absolute drop (a fraction, >= 0).
    Returns:
        a Python int in 0..P.
    Raises:
        ValueError for an empty curve, NaN in the curve or the baseline, or a negative budget. curve is not
        modified.
    """
    ### BEGIN SOLUTION
    values = torch.as_tensor(curve.detach() if isinstance(curve, torch.Tensor) else curve, dtype=torch.float64)
    if values.ndim != 1 or values.numel() == 0:
        raise ValueError(f"curve must be a non-empty 1-D sequence [P + 1], got shape {tuple(values.shape)}")
    if bool(torch.isnan(values).any()) or math.isnan(float(baseline)):
        raise ValueError("curve and baseline must not contain NaN")
    if not float(budget) >= 0:
        raise ValueError(f"budget must be >= 0 (an allowed drop, 0.02 = 2 points), got {budget}")
    within = torch.nonzero(values >= float(baseline) - float(budget)).flatten()
    return int(within.max()) if within.numel() else 0
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_products_within_budget", "locked": true, "points": 8, "schema_version": 3, "solution": false, "task": false}
curve = torch.tensor([0.875, 0.9375, 0.8125, 0.5, 0.8125, 0.625])   # dyadic numbers: exact in floating point
case = {"curve": curve, "baseline": 0.875, "budget": 0.125}
assert_equal_int(products_within_budget(curve, 0.875, 0.125), 4, "products_within_budget with a dip at k = 3",
                 inputs=case, hint="the curve is not monotone: take the largest k with curve[k] >= baseline - budget, "
                                   "not the step before the first dip; k indexes curve itself (curve[0]: no product "
                                   "quantized) and budget is a fraction (0.125 = 12.5 points)")
assert_equal_int(products_within_budget([0.875, 0.9375, 0.8125, 0.5, 0.75, 0.625], 0.875, 0.125), 4,
                 "products_within_budget with curve[4] exactly at the line baseline - budget = 0.75",
                 inputs={"curve": [0.875, 0.9375, 0.8125, 0.5, 0.75, 0.625], "baseline": 0.875, "budget": 0.125},
                 hint="curve[k] >= baseline - budget: a value exactly on the line is within the budget (>=, not >); "
                      "the line is the absolute drop 0.875 - 0.125, not baseline · (1 - budget)")
assert_equal_int(products_within_budget(curve, 0.875, 0.0), 1, "products_within_budget with budget 0",
                 inputs={**case, "budget": 0.0})
assert_equal_int(products_within_budget(curve, 0.875, 1.0), 5, "products_within_budget with a budget of 100 points",
                 inputs={**case, "budget": 1.0},
                 hint="every k fits: return the largest index k (P = len(curve) - 1), not how many points are above "
                      "the line")
assert_equal_int(products_within_budget([0.5, 0.4, 0.3], 0.875, 0.125), 0,
                 "products_within_budget when even curve[0] is below the line",
                 inputs={"curve": [0.5, 0.4, 0.3], "baseline": 0.875, "budget": 0.125})
got = products_within_budget(curve.tolist(), 0.875, 0.125)
assert type(got) is int, f"products_within_budget must return a Python int (int(...)), got {type(got).__name__}"
for bad, why in ((([], 0.9, 0.02), "an empty curve"), (([0.9, float("nan")], 0.9, 0.02), "NaN in the curve"),
                 (([0.9, 0.8], 0.9, -0.01), "a negative budget")):
    try:
        products_within_budget(*bad)
    except ValueError:
        print(f"✓ products_within_budget refuses {why} with ValueError")
    else:
        raise AssertionError(f"products_within_budget{bad} must raise ValueError ({why})")
assert_not_modified(products_within_budget, torch.tensor([0.875, 0.9375, 0.8125, 0.5]), 0.875, 0.125)
### BEGIN HIDDEN TESTS
from autograder.checks.lab6_mixed import check_products_within_budget
check_products_within_budget(products_within_budget)
### END HIDDEN TESTS

# %% [markdown] nbgrader={"grade": false, "grade_id": "allocate_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Doing better than greedy: an exact bit allocation
# Greedy answers one question ("which products can go to INT4?") one product at a time. Ask the general one: give
# each product $p$ a width $b_p \in \{8, 4, 2\}$ so that the total **multiply-weighted bits** stay within a budget
# $B$, at the smallest predicted accuracy loss. With $s_{p,c}$ the drop measured with product $p$ alone at width
# $b_c$ and $n_p$ its multiplications per image, the **additive model** predicts the loss of a configuration as the
# sum of the single-product drops:
#
# $$ \min_{c_1, \dots, c_P}\ \sum_{p=1}^{P} s_{p, c_p} \qquad \text{s.t.}\qquad
#    \sum_{p=1}^{P} n_p\, b_{c_p} \;\le\; B. $$
#
# This is a *multiple-choice knapsack*: $3^{38} \approx 1.4 \cdot 10^{18}$ configurations, too many to try (the
# study already found $\binom{38}{10} = 472{,}733{,}756$ hopeless), but exact by **dynamic programming** over the
# budget. Divide every weight $n_p b_c$ and the budget by the weights' greatest common divisor $g$ (TinyViT's
# counts are multiples of 64) and let $F_p(w)$ be the smallest loss of products $1..p$ with total weight at most
# $w$:
#
# $$ F_0(w) = 0, \qquad F_p(w) = \min_{c\,:\, n_p b_c / g \,\le\, w}\ F_{p-1}\big(w - n_p b_c / g\big) + s_{p,c}, $$
#
# computed for every $w = 0, \dots, \lfloor B/g \rfloor$ at once (one tensor operation per product and width), the
# best width of each $(p, w)$ remembered, and the allocation read back from $F_P(\lfloor B/g \rfloor)$. Wang, Liu,
# Lin, Lin & Han (2019, *HAQ: Hardware-Aware Automated Quantization with Mixed Precision*, CVPR) search the same
# space with reinforcement learning and a hardware cost model; Yao et al. (2021, *HAWQ-V3*, ICML) solve it as an
# integer linear program with Hessian-based sensitivities. A budget below $\sum_p n_p \min_c b_c$ (everything at the
# smallest width) cannot be met: say so, with the minimum.

# %% nbgrader={"grade": false, "grade_id": "allocate_bits", "locked": false, "schema_version": 3, "solution": true, "task": false}
def allocate_bits(sensitivities: torch.Tensor | list[list[float]], costs: list[int] | torch.Tensor, budget: int,
                  choices: tuple[int, ...] = (8, 4, 2)) -> list[int]:
    """Bits per product minimizing the summed sensitivities under a multiply-weighted bit budget (exact).

    Args:
        sensitivities: float [P, C] (tensor or nested sequence); sensitivities[p, c] = accuracy drop (may be
            negative) with only product p quantized at choices[c] bits.
        costs: P positive ints (list or integer tensor): multiplications per image of each product.
        budget: int >= 0; an allocation must satisfy sum_p costs[p] * bits[p] <= budget.
        choices: the allowed bit widths, distinct positive ints; column c of sensitivities belongs to choices[c].
    Returns:
        bits: a list of P Python ints, each in choices, minimizing sum_p sensitivities[p, index of bits[p]]
        subject to the budget (any optimal allocation).
    Raises:
        ValueError when the budget is infeasible (below sum_p costs[p] * min(choices); the message says the minimum),
        for mismatched shapes, NaN sensitivities, costs that are not positive ints, empty / duplicated / non-positive
        choices, or a negative or non-int budget. The inputs are not modified.
    """
    ### BEGIN SOLUTION
    widths = list(choices)
    if not widths or len(set(widths)) != len(widths) or \
            any(isinstance(b, bool) or not isinstance(b, int) or b <= 0 for b in widths):
        raise ValueError(f"choices must be distinct positive ints, got {choices!r}")
    s = torch.as_tensor(sensitivities.detach() if isinstance(sensitivities, torch.Tensor) else sensitivities,
                        dtype=torch.float64)
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] != len(widths):
        raise ValueError(f"sensitivities must be [P, {len(widths)}] (one column per choice), got {tuple(s.shape)}")
    if bool(torch.isnan(s).any()):
        raise ValueError("sensitivities contains NaN")
    n = costs.tolist() if isinstance(costs, torch.Tensor) else list(costs)
    if len(n) != s.shape[0] or any(isinstance(c, bool) or not isinstance(c, int) or c <= 0 for c in n):
        raise ValueError(f"costs must be {s.shape[0]} positive ints (multiplications per product), got {costs!r}")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        raise ValueError(f"budget must be an int >= 0 (multiply-weighted bits), got {budget!r}")
    minimum = sum(n) * min(widths)
    if budget < minimum:
        raise ValueError(f"budget {budget} is infeasible: even every product at {min(widths)} bits needs "
                         f"sum(costs) * {min(widths)} = {minimum}; give a budget of at least {minimum}")
    weights = [[c * b for b in widths] for c in n]                               # [P][C]
    g = math.gcd(*[w for row in weights for w in row])
    capacity = min(budget, sum(max(row) for row in weights)) // g                # more than everything at max is moot
    best = torch.zeros(capacity + 1, dtype=torch.float64)                        # F_0(w) = 0 for every w
    picks = torch.zeros(len(n), capacity + 1, dtype=torch.int16)                 # the best choice per (p, w)
    candidates = torch.empty(len(widths), capacity + 1, dtype=torch.float64)     # F_{p-1}(w - weight) + s[p, c]
    for p, row in enumerate(weights):
        candidates.fill_(math.inf)                                               # weight > w: not allowed
        for c, weight in enumerate(row):
            w = weight // g
            if w <= capacity:
                torch.add(best[:capacity + 1 - w], s[p, c], out=candidates[c, w:])
        best, picks[p] = candidates.min(dim=0)
    bits, w = [], capacity
    for p in reversed(range(len(n))):                                            # read the choices back
        c = int(picks[p, w])
        bits.append(widths[c])
        w -= weights[p][c] // g
    return bits[::-1]
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_allocate_bits", "locked": true, "points": 24, "schema_version": 3, "solution": false, "task": false}
def objective(sensitivities, bits, choices=(8, 4, 2)):
    """The additive model's predicted drop of an allocation."""
    return sum(float(sensitivities[p][choices.index(b)]) for p, b in enumerate(bits))


def brute_force(sensitivities, costs, budget, choices=(8, 4, 2)):
    """The smallest objective over every allocation within the budget (3^P of them: small P only)."""
    feasible = [combo for combo in itertools.product(choices, repeat=len(costs))
                if sum(n * b for n, b in zip(costs, combo)) <= budget]
    return min(objective(sensitivities, combo, choices) for combo in feasible)


s = torch.tensor([[0.0, 0.0, 0.875], [0.0, 0.25, 0.5], [0.0, 0.125, 0.625]])   # columns: 8, 4, 2 bits
costs, budget = [4, 4, 2], 28
case = {"sensitivities": s, "costs": costs, "budget": budget}
got = allocate_bits(s, costs, budget)
assert isinstance(got, list) and all(type(b) is int for b in got), \
    f"allocate_bits must return a list of Python ints (one width per product), got {got!r}"
assert_equal_int(got, [4, 2, 2], "allocate_bits on 3 products, budget 28 (greedy by drop per bit saved gets [2, 2, 4])",
                 inputs=case, hint="lowering widths one by one by the smallest drop per bit saved (greedy) ends at "
                                   "[2, 2, 4], predicted drop 1.5; the optimum [4, 2, 2] (cost 16 + 8 + 4 = 28) "
                                   "predicts 1.125: solve the knapsack exactly (dynamic programming over the budget)")
g = torch.Generator().manual_seed(3)
small = torch.randn(5, 3, generator=g).abs() * torch.tensor([0.1, 1.0, 3.0])   # 5 products, drops grow as bits fall
small_costs = [3, 7, 2, 5, 4]
for budget in (42, 60, 81, 100, 131, 168):
    bits = allocate_bits(small, small_costs, budget)
    spent = sum(n * b for n, b in zip(small_costs, bits))
    assert spent <= budget, f"allocate_bits({small_costs}, budget={budget}) returned {bits}: it spends {spent} > budget"
    assert_close(objective(small, bits), brute_force(small, small_costs, budget),
                 f"allocate_bits on 5 products, budget {budget}: predicted drop vs the brute-force optimum",
                 rtol=1e-9, atol=1e-9, inputs={"sensitivities": "|randn [5, 3]| · [0.1, 1, 3]", "costs": small_costs,
                                               "budget": budget},
                 hint="minimize the sum of sensitivities[p, c_p] subject to sum costs[p] · bits[p] <= budget (<=, "
                      "not <), weighting each product by its cost, over all 3^5 allocations; with the weights "
                      "divided by their gcd, read the choices back in the same units")
minimum = 2 * sum(small_costs)
assert_equal_int(allocate_bits(small, small_costs, minimum), [2] * 5, f"allocate_bits at exactly the minimum budget "
                 f"{minimum} = 2 · sum(costs)", inputs={"costs": small_costs, "budget": minimum},
                 hint="a budget equal to sum(costs) · min(choices) is feasible: everything at 2 bits")
least = [(8, 4, 2)[c] for c in small.argmin(dim=1).tolist()]                 # each product's least sensitive width
assert_equal_int(allocate_bits(small, small_costs, 10 ** 6), least, "allocate_bits with a budget for everything",
                 inputs={"costs": small_costs, "budget": 10 ** 6},
                 hint="a budget above sum(costs) · max(choices) allows every product its least sensitive width")
helps = torch.tensor([[0.0, -0.5, 2.0], [0.0, 1.0, 2.0]])                   # product 0 gains from INT4
assert_equal_int(allocate_bits(helps, [1, 1], 16), [4, 8], "allocate_bits when quantizing a product helps "
                 "(a negative drop)", inputs={"sensitivities": helps, "costs": [1, 1], "budget": 16},
                 hint="sensitivities may be negative: the minimum takes a gain even when the budget allows 8 bits")
reordered = s[:, [2, 1, 0]]                                                  # the same problem, columns 2, 4, 8 bits
assert_equal_int(allocate_bits(reordered, costs, 28, choices=(2, 4, 8)), [4, 2, 2],
                 "allocate_bits with choices=(2, 4, 8) (columns in that order)",
                 inputs={"sensitivities": reordered, "costs": costs, "budget": 28, "choices": (2, 4, 8)},
                 hint="column c of sensitivities belongs to choices[c]: use the choices argument, not (8, 4, 2)")
try:
    allocate_bits(small, small_costs, minimum - 1)
except ValueError as error:
    assert str(minimum) in str(error), f"the error must say the minimum budget {minimum}; it says: {error}"
    print(f"✓ allocate_bits refuses budget {minimum - 1} (infeasible) with ValueError: {error}")
else:
    raise AssertionError(f"allocate_bits(budget={minimum - 1}) must raise ValueError: below the minimum {minimum}")
for bad, why in (((small, small_costs[:4], 100), "4 costs for 5 products"),
                 ((small, [3, 0, 2, 5, 4], 100), "a zero cost"),
                 ((small[:, :2], small_costs, 100), "2 columns for 3 choices"), ((small, small_costs, 0), "budget 0")):
    try:
        allocate_bits(*bad)
    except ValueError:
        print(f"✓ allocate_bits refuses {why} with ValueError")
    else:
        raise AssertionError(f"allocate_bits must raise ValueError for {why}")
assert_not_modified(allocate_bits, torch.tensor([[0.0, 0.0, 0.875], [0.0, 0.25, 0.5], [0.0, 0.125, 0.625]]),
                    [4, 4, 2], 28)
### BEGIN HIDDEN TESTS
from autograder.checks.lab6_mixed import check_allocate_bits
check_allocate_bits(allocate_bits)
### END HIDDEN TESTS

# %% [markdown] nbgrader={"grade": false, "grade_id": "part3_greedy_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Experiment: the greedy curve and the 2 / 5 / 10 % budgets
# A greedy curve is 39 evaluations with up to 38 quantized products each — about four minutes on one CPU thread for
# the 3,000 embedded images, over the lab's one-minute-per-cell budget. It is **read from the cache**
# `lowbit/checkpoints/vit_study.json` (the full 10,000-image test set, ranked by the INT4 sweep on that set; written
# by `python -m lowbit.quant.mixed_train --write`, about 45 minutes on 2 cores, seed and recipe inside). Your
# `products_within_budget` reads the budgets off it, `mixed.budget_fractions` turns the first $k$ products into a
# share of the products (the study's *operations*) and of the *multiplications*; then each budget's configuration is
# checked on the embedded test set with your `quantize_operand`.

# %% nbgrader={"grade": false, "grade_id": "part3_greedy", "locked": true, "schema_version": 3, "solution": false, "task": false}
from lowbit.quant import mixed_train

study = mixed_train.load_study()
assert study["names"] == PRODUCTS, "the cache was written for another model: rerun python -m lowbit.quant.mixed_train"
study_order = [PRODUCTS[i] for i in study["ranking"]]
greedy, study_fp32 = study["greedy_curve"], study["fp"]
overlap = len(set(order[:10]) & set(study_order[:10]))
print(f"cache: FP32 {100 * study_fp32:.2f} % on the full test set; {overlap} of your 10 least sensitive products "
      f"(Part 2, {SWEEP} images) are among the cache's 10")
STUDY_INT4_SHARE = {0.02: 32 / 38, 0.05: 37 / 38, 0.10: 38 / 38}      # the study's operations at INT4
BUDGETS = (0.005, 0.01, 0.02, 0.05, 0.10)                             # the study's three, and two tighter ones
budget_rows, embedded_at = {}, {0: fp32_accuracy, len(PRODUCTS): uniform[4]}   # measured in Part 1
print(f"{'budget':>7} {'products':>9} {'operations':>11} {'multiplies':>11} {'curve':>8} {'first dip':>10} "
      f"{'embedded':>9} {'the study':>10}")
for budget in BUDGETS:
    k = products_within_budget(greedy, study_fp32, budget)
    shares = mixed.budget_fractions(study_order, k, multiplies)
    first_dip = mixed.first_dip(greedy, study_fp32, budget)
    if k not in embedded_at:                          # the same k for several budgets: measured once
        embedded_at[k] = mixed.config_accuracy(qvit, {name: 4 for name in study_order[:k]}, test_images, test_labels)
    budget_rows[budget] = {"k": k, "operations": shares.products, "multiplies": shares.multiplies,
                           "embedded": embedded_at[k]}
    study_share = f"{100 * STUDY_INT4_SHARE[budget]:9.1f} %" if budget in STUDY_INT4_SHARE else f"{'—':>11}"
    print(f"{100 * budget:6.1f} % {k:>5} / 38 {100 * shares.products:10.1f} % {100 * shares.multiplies:10.1f} % "
          f"{100 * greedy[k]:7.2f} % {first_dip:>10} {100 * embedded_at[k]:8.2f} % {study_share}")
with plt.ioff():
    figure, ax = plt.subplots(figsize=(8.0, 3.6), layout="constrained")
ax.plot(range(len(greedy)), [100 * a for a in greedy], marker=".", color="C0", label="TinyViT, INT4 in ranked order")
for budget, style in zip(BUDGETS, ("solid", "dashed", "dashdot", (0, (5, 1)), "dotted")):
    ax.axhline(100 * (study_fp32 - budget), color="0.4", linestyle=style, linewidth=1,
               label=f"FP32 − {100 * budget:g} pt: {budget_rows[budget]['k']} products")
ax.axhline(100 * study_fp32, color="k", linewidth=1, label="FP32")
ax.set_xlabel("products at INT4 (the k least sensitive)")
ax.set_ylabel("test accuracy (%), full test set")
ax.set_title("the greedy curve (from the cache)")
ax.legend(fontsize="small", loc="lower left")
display(figure)
plt.close(figure)

# %% [markdown] nbgrader={"grade": false, "grade_id": "part3_greedy_results_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# Read the table against the study's: the share of **operations** is what the study reported (84.2 %, 97.4 %,
# 100 %); the share of **multiplications** is what a budget should count, and it differs because the products
# that stay in float are not average ones. "First dip" is where a reading that stops at the first crossing would
# end — smaller wherever the curve comes back above the line.
#
# ### Experiment: the exact allocation against greedy, and the additive model against the truth
# Three sweeps (each product alone at 8, 4 and 2 bits) give the sensitivity table $s_{p,c}$ (`mixed.drop_table`:
# FP32 minus each accuracy), again from the cache (the full test set; 114 evaluations). Your `allocate_bits` then
# spends a budget of 4 and of 3 bits per multiplication on average; `mixed.greedy_allocation` is the greedy
# baseline (everything at 8 bits, then the cheapest step down per bit saved until the budget is met). The
# **additive prediction** is FP32 minus the sum of the chosen drops; the **true** drop is measured on the embedded
# test set, with every product at its chosen width at once.

# %% nbgrader={"grade": false, "grade_id": "part3_allocation", "locked": true, "schema_version": 3, "solution": false, "task": false}
CHOICES = (8, 4, 2)
sweeps = {bits: dict(zip(PRODUCTS, study["sensitivities"][str(bits)])) for bits in CHOICES}
sensitivities = mixed.drop_table(sweeps, study_fp32, PRODUCTS, CHOICES)                     # [38, 3]
cost_list = [multiplies[name] for name in PRODUCTS]
allocations = {}


def compare_allocations(average: float) -> None:
    """Your allocate_bits and the greedy baseline at `average` bits per multiplication: predicted and true drop."""
    budget = int(average * total_multiplies)
    for method, allocator in (("exact", allocate_bits), ("greedy", mixed.greedy_allocation)):
        start = time.perf_counter()
        bits = allocator(sensitivities, cost_list, budget, CHOICES)
        seconds = time.perf_counter() - start
        predicted = study_fp32 - mixed.additive_prediction(study_fp32, sensitivities, bits, CHOICES)
        true_drop = fp32_accuracy - mixed.config_accuracy(qvit, dict(zip(PRODUCTS, bits)), test_images, test_labels)
        low = sum(c for c, b in zip(cost_list, bits) if b <= 4) / total_multiplies
        allocations[average, method] = {"bits": bits, "predicted": predicted, "true": true_drop, "low": low}
        print(f"{average:.0f} bits/multiply, {method:>6} ({seconds:4.2f} s): INT8/4/2 products "
              f"{bits.count(8):>2}/{bits.count(4):>2}/{bits.count(2):>2}, multiplies at <= 4 bits {100 * low:5.1f} %,"
              f" predicted drop {100 * predicted:5.2f} pt, true drop {100 * true_drop:5.2f} pt")


compare_allocations(4.0)

# %% nbgrader={"grade": false, "grade_id": "part3_allocation_3bits", "locked": true, "schema_version": 3, "solution": false, "task": false}
compare_allocations(3.0)

# %% [markdown] nbgrader={"grade": false, "grade_id": "part3_hawq_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### A second-order proxy: HAWQ
# Measuring 114 single-product accuracies is affordable for 38 products, not for a large model. HAWQ (Dong, Yao,
# Gholami, Mahoney & Keutzer, 2019, *HAWQ: Hessian AWare Quantization of Neural Networks with Mixed-Precision*,
# ICCV) predicts sensitivity from the loss's curvature instead; HAWQ-V2 (Dong, Yao, Arfeen, Gholami, Mahoney &
# Keutzer, 2020, *HAWQ-V2: Hessian Aware trace-Weighted Quantization*, NeurIPS) uses the **average Hessian trace**
# of each block times its quantization error. A second-order expansion of the loss around the trained model (where
# the gradient is about zero) gives, for a perturbation $\Delta x = Q(x) - x$ of the tensor $x$ a product quantizes,
#
# $$ \Delta \mathcal L \approx \tfrac12\, \Delta x^\top H\, \Delta x \;\approx\; \tfrac12\,
#    \frac{\operatorname{Tr}(H)}{n}\, \lVert Q(x) - x \rVert^2 , $$
#
# with $\operatorname{Tr}(H)$ estimated by Hutchinson's method, $\operatorname{Tr}(H) = \mathbb E_v[v^\top H v]$ over
# random $\pm 1$ vectors $v$, each $Hv$ a second backward pass. `mixed.hessian_traces` computes $\operatorname{Tr}(H)/n$
# per product (for a `Linear` with respect to its weight, for an attention product with respect to both operands)
# on 256 calibration images with 8 probes; `mixed.hawq_scores` multiplies it by the INT4 error of **your**
# `quantize_operand`. How well does the proxy rank the products? Spearman's rank correlation with the measured
# INT4 drops says.

# %% nbgrader={"grade": false, "grade_id": "part3_hawq", "locked": true, "schema_version": 3, "solution": false, "task": false}
hawq_images, hawq_labels = lowbit.data.calibration_batch(32 if lowbit.GRADING else 256)
traces = mixed.hessian_traces(vit, hawq_images, hawq_labels, samples=2 if lowbit.GRADING else 8)
hawq = mixed.hawq_scores(vit, hawq_images, hawq_labels, bits=4, traces=traces, functions=YOUR_FUNCTIONS)
int4_drops = {name: float(sensitivities[p, CHOICES.index(4)]) for p, name in enumerate(PRODUCTS)}
int2_drops = {name: float(sensitivities[p, CHOICES.index(2)]) for p, name in enumerate(PRODUCTS)}
rho4, rho2 = mixed.spearman(hawq, int4_drops), mixed.spearman(hawq, int2_drops)
rho_sweep = mixed.spearman({name: sweep_fp32 - int4_alone[name] for name in PRODUCTS}, int4_drops)
print(f"Spearman rank correlation of the HAWQ score with the measured drop alone: INT4 {rho4:+.2f}, INT2 {rho2:+.2f}")
print(f"(for scale: your 1,000-image INT4 sweep of Part 2 against the cache's 10,000-image one: {rho_sweep:+.2f})")
with plt.ioff():
    figure, ax = plt.subplots(figsize=(6.5, 3.6), layout="constrained")
kinds = sorted({name.split(".")[-1] for name in PRODUCTS})
for i, kind in enumerate(kinds):
    members = [name for name in PRODUCTS if name.split(".")[-1] == kind]
    ax.scatter([hawq[name] for name in members], [100 * int2_drops[name] for name in members], color=f"C{i}",
               label=kind, s=18)
ax.set_xscale("symlog", linthresh=1e-4)
ax.set_xlabel("HAWQ score at INT4: Tr(H)/n · ‖Q(x) − x‖²")
ax.set_ylabel("measured drop alone at INT2 (pt)")
ax.set_title(f"the proxy against the measurement (Spearman {rho2:+.2f})")
ax.legend(fontsize="small", ncol=2)
display(figure)
plt.close(figure)

# %% [markdown] nbgrader={"grade": false, "grade_id": "part3_explorer_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Explore: the budget slider
# `viz.mixed.allocation_explorer` calls **your** `allocate_bits` on the sensitivity table: the bars are each
# product's drop alone at 8, 4 and 2 bits (log scale above 1 pt; a ▼ marks the width chosen), the middle row the
# width chosen per product, the bottom the budget curve — the predicted drop of your allocation at 25 budgets, and
# the share of multiplications at 4 bits or fewer. Move the slider (average bits per multiplication): which products
# drop to 2 bits first, and which keep 8 bits until the very end? Is it the cheap ones or the insensitive ones?

# %% nbgrader={"grade": false, "grade_id": "part3_explorer", "locked": true, "schema_version": 3, "solution": false, "task": false}
explorer = viz.mixed.allocation_explorer(sensitivities, cost_list, allocate_bits=allocate_bits, names=PRODUCTS,
                                         average_bits=4.0)

# %% [markdown] nbgrader={"grade": false, "grade_id": "part4_intro", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ## Part 4 — Recover with training
#
# Post-training quantization can only choose *which* products to quantize; quantization-aware training (Lab 3)
# lets the weights adapt. `lowbit.quant.mixed_train.prepare_vit_qat` turns every product into a `QATProduct`: both
# operands fake-quantized per tensor, unsigned, with a **learned** step and zero point per operand — LSQ+ (Bhalgat,
# Lee, Nagel, Blankevoort & Kwak, 2020, *LSQ+: Improving Low-Bit Quantization Through Learnable Offsets and Better
# Initialization*, CVPR Workshops), the unsigned-with-offset extension of LSQ (Esser, McKinstry, Bablani,
# Appuswamy & Modha, 2020, *Learned Step Size Quantization*, ICLR) and the study's `trainsz_quantize` — initialised
# from the min-max range of a calibration batch by **your** `quantize_operand`, the rounding passed through by the
# straight-through estimator:
#
# $$ \hat x = s\,\Big(\operatorname{clamp}\big(\lfloor x / s \rceil + \lfloor z \rceil,\ 0,\ 2^b - 1\big) -
#    \lfloor z \rceil\Big), \qquad \frac{\partial \lfloor u \rceil}{\partial u} := 1 . $$
#
# Three experiments, as in the study: QAT with all 38 products at INT4; then the **gradual path**, switching the
# products from INT4 to INT2 one at a time in the ranked order with a short fine-tune after each switch; and QAT
# at INT2 **from scratch** (a random initialisation), which the study found stuck at chance with a NaN loss.

# %% [markdown] nbgrader={"grade": false, "grade_id": "part4_qat_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Experiment: a short INT4 QAT with your quantizer
# Recipe: every product at INT4 (LSQ+ ranges from your `quantize_operand` on 256 calibration images), a quarter of
# an epoch over the 6,000 embedded training images (12 batches of 128), Adam at $10^{-4}$ with a cosine decay to 0,
# everything trained; seed 0. The cache's run uses the same quantizers on the full 60,000 training images for
# longer (its recipe is printed below).

# %% nbgrader={"grade": false, "grade_id": "part4_qat", "locked": true, "schema_version": 3, "solution": false, "task": false}
qat_start = mixed_train.prepare_vit_qat(vit, bits=4, functions={"quantize_operand": quantize_operand})
qat_before = mixed.accuracy(qat_start, test_images, test_labels)
short = mixed_train.train_vit_qat(vit, bits=4, epochs=1, fraction=0.02 if lowbit.GRADING else 0.25, lr=1e-4,
                                  prepared=qat_start)                          # trains qat_start in place
qat_after = mixed.accuracy(short.model, test_images, test_labels)
print(f"INT4 with learned ranges: {100 * qat_before:.2f} % before training, {100 * qat_after:.2f} % after "
      f"{len(short.losses)} batches ({short.seconds:.0f} s); FP32 {100 * fp32_accuracy:.2f} %, INT4 PTQ "
      f"{100 * uniform[4]:.2f} % (Part 1)")
stages = "; then ".join(f"{stage['epochs'] * stage['fraction']:g} epoch at lr {stage['lr']:g}"
                       for stage in study["recipe"]["qat"]["stages"])
print(f"the cache ({stages}, on 60,000 images; full test set): INT4 QAT {100 * study['qat']['accuracy']:.2f} % against "
      f"FP32 {100 * study_fp32:.2f} % ({100 * (study['qat']['accuracy'] - study_fp32):+.2f} pt); the study: 79.90 % "
      f"from 79.54 %")

# %% [markdown] nbgrader={"grade": false, "grade_id": "part4_paths_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### The gradual path to INT2 and the failure from scratch (from the cache)
# Both are long runs (the gradual path is 38 switches, each followed by a few dozen fine-tuning batches on the full
# training set; the scratch runs train at INT2 and, as a control, in float), so they are **read from the cache**
# (`vit_study.json`, keys `gradual` and `scratch`; recompute with `python -m lowbit.quant.mixed_train --write`).
# Your `products_within_budget` reads the gradual curve like the greedy one: how many products can be INT2 *after
# retraining* within each budget.

# %% nbgrader={"grade": false, "grade_id": "part4_paths", "locked": true, "schema_version": 3, "solution": false, "task": false}
gradual = study["gradual"]
gradual_order, gradual_curve = gradual["order"], gradual["curve_embedded"]   # on the embedded test set
int2_rows = {}
for budget in BUDGETS:
    k = products_within_budget(gradual_curve, fp32_accuracy, budget)
    int2_rows[budget] = {"k": k, **mixed.budget_fractions(gradual_order, k, multiplies)._asdict()}
    print(f"gradual INT4 -> INT2, within {100 * budget:g} %: {k} of 38 products at INT2 "
          f"({100 * int2_rows[budget]['multiplies']:.1f} % of the multiplications), the rest INT4")
print(f"all 38 at INT2 after the gradual path: {100 * gradual_curve[-1]:.2f} % on the embedded test set, "
      f"{100 * gradual['end_accuracy']:.2f} % on the full one (PTQ: {100 * uniform[2]:.2f} %); the study: 74.5 % "
      f"(PTQ 11.4 %)")
scratch = study["scratch"]
for label, run in scratch.items():
    losses = ", ".join("NaN" if x is None else f"{x:.3f}" for x in run["epoch_losses"])
    accuracies = ", ".join(f"{100 * a:.2f} %" for a in run["epoch_accuracies"])
    print(f"from scratch, {label}: loss per epoch {losses}; accuracy {accuracies}")
with plt.ioff():
    figure, (ax_g, ax_s) = plt.subplots(1, 2, figsize=(9.5, 3.4), layout="constrained")
ax_g.plot(range(len(gradual_curve)), [100 * a for a in gradual_curve], marker=".", color="C3")
ax_g.axhline(100 * fp32_accuracy, color="k", linewidth=1, label="FP32")
ax_g.axhline(100 * uniform[2], color="0.5", linestyle="dotted", label="all INT2, PTQ")
ax_g.set_xlabel("products switched INT4 → INT2 (ranked order)")
ax_g.set_ylabel(f"accuracy (%), {len(test_labels):,} embedded test images")
ax_g.set_title("gradual path after INT4 QAT")
ax_g.legend(fontsize="small")
for i, (label, run) in enumerate(scratch.items()):
    losses = [float("nan") if x is None else x for x in run["loss_per_10"]]
    ax_s.plot([10 * j for j in range(len(losses))], losses, color=f"C{i}", label=f"from scratch, {label}")
ax_s.axhline(math.log(10), color="0.5", linestyle="dotted", label="ln 10 (chance)")
ax_s.set_xlabel("training batch")
ax_s.set_ylabel("training loss (mean of 10 batches)")
ax_s.set_title("QAT from a random initialisation")
ax_s.legend(fontsize="small")
display(figure)
plt.close(figure)

# %% [markdown] nbgrader={"grade": false, "grade_id": "part4_why_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# **Why from scratch fails — and why the study saw NaN.** A randomly initialised transformer has small, peaked
# operands; per tensor at 2 bits there are four codes, and the step is set by the few extreme values, so almost
# every other value lands on the zero point's code: at the start of the INT2 run 85 % of the left operands' values
# do on average, 91–98 % of the softmax probabilities entering $A V$ (`scratch["int2"]["stats"]`). The products then
# pass on little more than a constant and the straight-through gradients carry little signal, so training is slow:
# after the same 0.4 epoch the float control reaches 77.9 %, INT2 with learned ranges 52.5 %, and INT2 with
# min-max (dynamic) ranges 24.8 %, its zero-code fraction unchanged at 86 % (the learned ranges brought theirs down
# to 76 %). There is no NaN here because `quantize_operand` gives a constant operand the step 1.0; the study's
# $(\max - \min)/(2^b - 1)$ is 0 for a constant tensor (an attention row that collapses, a dead ReLU output), $0/0$
# is NaN, and NaN logits score exactly 10 % on a balanced test set — the study's chance-level result. Starting from
# trained weights, as QAT and the gradual path do, each operand already has a spread the grid can resolve, and each
# switch to INT2 disturbs the network only as much as a fine-tune can repair — if the fine-tune is long enough.

# %% [markdown] nbgrader={"grade": false, "grade_id": "part5_intro", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ## Part 5 — Back to the CNN
#
# The same idea on the course CNN of Labs 1–5, for its **weights**: each of its four layers (`conv1`, `conv2`,
# `conv3`, `fc`, BatchNorm folded) gets its own quantizer — Lab 1's symmetric per-channel linear grid or Lab 2's
# k-means codebook — at 8, 4 or 2 bits, activations in float. What matters now is storage: a linear layer costs
# its weight count times the bits, a k-means layer also pays its float32 codebook. First each layer alone under
# each of the six options (`mixed.cnn_layer_sensitivities`), on the first 1,000 embedded test images (the CNN runs
# channels-last, about 1.7× faster on a CPU, same predictions).

# %% nbgrader={"grade": false, "grade_id": "part5_sensitivity", "locked": true, "schema_version": 3, "solution": false, "task": false}
cnn = lowbit.models.fold_batchnorm(lowbit.models.pretrained("cnn")).to(memory_format=torch.channels_last)
CNN_IMAGES = 200 if lowbit.GRADING else 1000
cnn_images, cnn_labels = test_images[:CNN_IMAGES], test_labels[:CNN_IMAGES]
cnn_fp32 = mixed.accuracy(cnn, cnn_images, cnn_labels)
cnn_weights = mixed.cnn_layer_weights(cnn)                          # every layer under every option, once
cnn_alone = mixed.cnn_layer_sensitivities(cnn, cnn_images, cnn_labels, weights=cnn_weights)
cnn_layers = list(cnn_alone)
options = list(cnn_alone[cnn_layers[0]])
print(f"FP32 {100 * cnn_fp32:.2f} % on {CNN_IMAGES} images; drop (pt) with one layer quantized:")
print(f"{'layer':>6} {'weights':>8} " + " ".join(f"{m[:6]} {b}b".rjust(10) for m, b in options))
for layer in cnn_layers:
    numel = cnn.get_submodule(layer).weight.numel()
    print(f"{layer:>6} {numel:>8,} " + " ".join(f"{100 * (cnn_fp32 - cnn_alone[layer][o]):10.2f}" for o in options))

# %% [markdown] nbgrader={"grade": false, "grade_id": "part5_pareto_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### The accuracy-vs-size front
# Four layers and six options make $6^4 = 1{,}296$ policies. `mixed.cnn_pareto` evaluates the six **uniform**
# policies and the mixed ones on the Pareto front of the *additive* prediction (the sum of the single-layer drops
# above: a few dozen evaluations); `mixed.pareto_front` keeps those that no other point beats in both size and
# accuracy. Then **your** `allocate_bits` solves the linear-grid version exactly — per layer 8, 4 or 2 bits, the
# weight count as the cost, a budget of $\bar b$ bits per weight on average — and each of its allocations is
# evaluated for real and placed on the same plot.

# %% nbgrader={"grade": false, "grade_id": "part5_pareto", "locked": true, "schema_version": 3, "solution": false, "task": false}
points = mixed.cnn_pareto(cnn, cnn_images, cnn_labels)
front = mixed.pareto_front(points)
numels = [cnn.get_submodule(layer).weight.numel() for layer in cnn_layers]
linear_drops = torch.tensor([[cnn_fp32 - cnn_alone[layer][("linear", b)] for b in CHOICES] for layer in cnn_layers])
yours = []
for average in (2.5, 3.0, 4.0, 5.0, 6.0):
    bits = allocate_bits(linear_drops, numels, int(average * sum(numels)), CHOICES)
    policy = {layer: ("linear", b) for layer, b in zip(cnn_layers, bits)}
    yours.append(mixed.CNNPoint(policy, mixed.cnn_policy_size(cnn, policy),
                                mixed.cnn_policy_accuracy(cnn, policy, cnn_images, cnn_labels, cnn_weights), False))
fp32_size = lowbit.models.model_size_bits(cnn)
with plt.ioff():
    figure, ax = plt.subplots(figsize=(8.0, 4.2), layout="constrained")
ax.scatter([p.size_bits / 8192 for p in points if not p.uniform], [100 * p.accuracy for p in points if not p.uniform],
           color="0.6", s=14, label="mixed policies (additive-front candidates)")
for i, method in enumerate(mixed.CNN_METHODS):
    uniform_points = sorted((p for p in points if p.uniform and next(iter(p.policy.values()))[0] == method),
                            key=lambda p: p.size_bits)
    ax.plot([p.size_bits / 8192 for p in uniform_points], [100 * p.accuracy for p in uniform_points], marker="s",
            color=f"C{i}", label=f"uniform {method} (8 / 4 / 2 bits)")
ax.step([p.size_bits / 8192 for p in front], [100 * p.accuracy for p in front], where="post", color="k",
        linewidth=1, label="Pareto front")
ax.scatter([p.size_bits / 8192 for p in yours], [100 * p.accuracy for p in yours], marker="*", s=120, color="C3",
           zorder=3, label="your allocate_bits (linear, 2.5–6 bits/weight)")
ax.axhline(100 * cnn_fp32, color="0.4", linestyle="dashed", linewidth=1, label=f"FP32 ({fp32_size / 8192:.0f} KiB)")
ax.set_xscale("log")
ax.set_xlabel("model size (KiB, log scale)")
ax.set_ylabel(f"test accuracy (%), {CNN_IMAGES} images")
ax.set_ylim(80, 100 * cnn_fp32 + 1.5)
ax.set_title("the course CNN: per-layer weight policies (points below 80 % are off the plot)")
ax.legend(fontsize="small", loc="lower right")
display(figure)
plt.close(figure)
for point in front:
    policy = ", ".join(f"{layer} {m} {b}" for layer, (m, b) in point.policy.items())
    print(f"{point.size_bits / 8192:7.1f} KiB {100 * point.accuracy:6.2f} %{' (uniform)' if point.uniform else ''}: "
          f"{policy}")

# %% [markdown] nbgrader={"grade": false, "grade_id": "part6_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ## Part 6 — Wrap-up
#
# **How much of this transformer can run in INT4 — and INT2?** The first table answers with the study's question,
# per budget, as a share of the products (the study's *operations*) and of the multiplications: INT4 by
# post-training quantization (the greedy curve of Part 3), INT4 after QAT (all 38 products, if QAT stays within the
# budget), and INT2 after retraining (the gradual path of Part 4, the rest at INT4). All read with your
# `products_within_budget` on the cache's full-test-set curves.

# %% nbgrader={"grade": false, "grade_id": "part6_fractions", "locked": true, "schema_version": 3, "solution": false, "task": false}
qat_fits = {budget: study["qat"]["accuracy"] >= study_fp32 - budget for budget in BUDGETS}
print(f"{'budget':>8} | {'INT4, no retraining':^23} | {'INT4 after QAT':^15} | {'INT2 after retraining':^23}")
print(f"{'':>8} | {'operations':>11} {'multiplies':>11} | {'':>15} | {'operations':>11} {'multiplies':>11}")
for budget in BUDGETS:
    ptq, int2 = budget_rows[budget], int2_rows[budget]
    print(f"{100 * budget:6.1f} % | {100 * ptq['operations']:10.1f} % {100 * ptq['multiplies']:10.1f} % | "
          f"{'100.0 %' if qat_fits[budget] else 'no':>15} | {100 * int2['products']:10.1f} % "
          f"{100 * int2['multiplies']:10.1f} %")
print("the study (operations, INT4, no retraining): 84.2 % within 2 %, 97.4 % within 5 %, 100 % within 10 %")

# %% [markdown] nbgrader={"grade": false, "grade_id": "part6_table_md", "locked": true, "schema_version": 3, "solution": false, "task": false}
# The second table collects what this notebook measured itself, with your functions, on the embedded test set:
# accuracy against FP32 and the size of the weights (a `Linear`'s weight stored at its product's width; the
# attention products have no weights; biases, LayerNorms and embeddings stay float32).

# %% nbgrader={"grade": false, "grade_id": "part6_table", "locked": true, "schema_version": 3, "solution": false, "task": false}
from lowbit.results import Row

LINEAR_PRODUCTS = [name for name in PRODUCTS if hasattr(vit.get_submodule(name), "weight")]


def vit_size_bits(bits_by_product: dict) -> int:
    """Parameter storage of TinyViT with each Linear's weight at its product's width (missing: 32 bits)."""
    return lowbit.models.model_size_bits(vit, {f"{name}.weight": bits_by_product.get(name, 32) or 32
                                               for name in LINEAR_PRODUCTS})


def everything(bits):
    return dict.fromkeys(PRODUCTS, bits)


rows = [Row("FP32", fp32_accuracy, bits=32, size_bits=vit_size_bits({}))]
rows += [Row(f"every product INT{b} (PTQ)", uniform[b], bits=b, size_bits=vit_size_bits(everything(b)))
         for b in CHOICES]
for budget in (0.005, 0.01):
    k = budget_rows[budget]["k"]
    rows.append(Row(f"greedy: {k} products INT4, rest float (≤ {100 * budget:g} pt)", embedded_at[k],
                    size_bits=vit_size_bits({name: 4 for name in study_order[:k]})))
for (average, method), result in allocations.items():
    rows.append(Row(f"{method} allocation, {average:g} bits per multiply", fp32_accuracy - result["true"],
                    size_bits=vit_size_bits(dict(zip(PRODUCTS, result["bits"])))))
rows.append(Row(f"INT4 QAT, {len(short.losses)} batches (Part 4)", qat_after, bits=4,
                size_bits=vit_size_bits(everything(4))))
print(lowbit.results.table(rows))

# %% [markdown] nbgrader={"grade": false, "grade_id": "reflection_intro", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Reflection (graded by hand)
# Answer each in 3–5 sentences, citing numbers from your own results above.

# %% [markdown] nbgrader={"grade": false, "grade_id": "q1_prompt", "locked": true, "schema_version": 3, "solution": false, "task": false}
# **Q1 (5 points).** In Part 2 several products *raised* the accuracy when quantized alone, and your 1,000-image
# ranking agreed only partly with the cache's 10,000-image one. How large is the statistical noise of an accuracy
# measured on $n$ images (give the standard error at $n$ = 1,000 and 10,000), and what does it mean for a ranking of
# products whose drops differ by a few tenths of a point?

# %% [markdown] nbgrader={"grade": true, "grade_id": "q1_answer", "locked": false, "points": 5, "schema_version": 3, "solution": true, "task": false}
# An accuracy $p$ measured on $n$ independent images has the standard error $\sqrt{p(1-p)/n}$: at $p \approx 0.89$
# that is 1.0 pt at $n$ = 1,000 and 0.31 pt at $n$ = 10,000. The INT4 drops of single products are a few tenths of a
# point (the cache's full-test drops lie between −0.1 and 0.2 pt), so on 1,000 images they are well inside the
# noise: 23 of 38 products "raised" the accuracy, only 2 of my 10 least sensitive products were among the cache's 10,
# and the rank correlation of my sweep with the cache's was +0.04 — no agreement at all. The difference between two
# models on the *same* images is less noisy than either accuracy (most predictions do not change), but still a
# handful of flipped images decides it. A ranking among products whose drops differ by less than the noise is
# arbitrary; only the clearly sensitive ones (here `patch_embed`) are ranked reliably, which is also why the greedy
# curve wanders up and down. Rank on the largest set affordable (a held-out one, not the test set) and treat
# differences below ~2 standard errors as ties.

# %% [markdown] nbgrader={"grade": false, "grade_id": "q2_prompt", "locked": true, "schema_version": 3, "solution": false, "task": false}
# **Q2 (5 points).** Read your budget table of Part 3: at the budgets where not every product fits, compare the
# share of **operations** with the share of **multiplications** at INT4. Which products stay in float, and why is
# the multiplication count the better budget for hardware? Name one cost it still leaves out.

# %% [markdown] nbgrader={"grade": true, "grade_id": "q2_answer", "locked": false, "points": 5, "schema_version": 3, "solution": true, "task": false}
# At 0.5 pt the greedy curve admits 23 of 38 products: 60.5 % of the operations but 59.5 % of the multiplications;
# at 1 pt 36 products, 94.7 % of the operations but 92.8 % of the multiplications. The two left in float at 1 pt are
# `patch_embed` (50,176 multiplications per image) and `blocks.2.attn.qkv` (208,896, the largest kind of product),
# which together are 7.2 % of the arithmetic though 5.3 % of the products — products differ in cost by a factor of
# 326 (`head`: 640, a `qkv`: 208,896), so counting products treats a `head` like a `qkv`. Energy and time of a
# matrix engine scale with the multiply-accumulates it runs at each width, so the multiplication count is the
# budget hardware pays. It still leaves out the cost of quantizing the operands on the fly (a min/max pass over each
# activation tensor, the rescale and rounding), the zero-point corrections (row and column sums), the memory traffic
# of moving the operands, and the float work that stays (softmax, LayerNorm, GELU).

# %% [markdown] nbgrader={"grade": false, "grade_id": "q3_prompt", "locked": true, "schema_version": 3, "solution": false, "task": false}
# **Q3 (5 points).** Your `allocate_bits` is optimal for the additive model. At 4 and 3 bits per multiplication,
# how far were its predicted drops from the true ones, and did it beat greedy in *true* accuracy? Explain why the
# drops of single products do not add up, and say whether the HAWQ proxy could have replaced the measured
# sensitivities on this model.

# %% [markdown] nbgrader={"grade": true, "grade_id": "q3_answer", "locked": false, "points": 5, "schema_version": 3, "solution": true, "task": false}
# At 4 bits per multiplication my allocation predicted a *gain* of 0.49 pt (negative single-product drops add up)
# but truly lost 0.67 pt; greedy predicted a 0.47 pt gain and lost 0.87 pt, so the exact allocation was 0.2 pt better
# in true accuracy. At 3 bits it predicted 2.18 pt and lost 7.60 pt (greedy: 2.50 predicted, 8.77 true), 1.2 pt
# better than greedy but the prediction off by a factor of 3.5. Drops do not add because each product's error feeds
# the products after it: errors accumulate along the residual stream and through the softmax, which is far from
# linear once many operands are coarse (13 products at 2 bits), and each single drop was measured with every other
# product in float. The single drops are also noisy (the sum of 38 noisy, partly negative drops is optimistic).
# HAWQ could not have replaced the measurement here: its rank correlation with the measured drops is −0.09 at INT4
# (where the drops are within noise, there is nothing to rank) and +0.39 at INT2 — some signal about which products
# are fragile, not enough to choose widths.

# %% [markdown] nbgrader={"grade": false, "grade_id": "q4_prompt", "locked": true, "schema_version": 3, "solution": false, "task": false}
# **Q4 (5 points).** Retraining: how close did INT4 QAT come to FP32, how far did the gradual path get towards
# INT2, and what happened from scratch? Explain the failure from the operand statistics, and why the gradual path
# does not suffer from it. Compare with the CNN of Lab 3 and of Part 5.

# %% [markdown] nbgrader={"grade": true, "grade_id": "q4_answer", "locked": false, "points": 5, "schema_version": 3, "solution": true, "task": false}
# The cache's INT4 QAT (plain QAT, 2.5 epochs on 60,000 images in three stages) reached 88.63 % against FP32
# 89.05 % (−0.42 pt, within half a point; PTQ was 87.62 %); my 12-batch run lifted INT4 with learned ranges from
# 87.00 % to 87.63 %. The gradual path (40 fine-tuning batches at lr $2 \cdot 10^{-3}$ after each switch, from the
# INT4 QAT model) ended at 78.97 % with all 38 products at INT2 (PTQ 12.59 %; the study 74.5 %): within 5 pt 21
# products (55.6 % of the multiplications) can be INT2, within 10 pt all 38. The fine-tune is what makes it work:
# the precompute's recorded runs with 10 batches per switch at $10^{-4}$ ended at 27.9 %, with 40 at $10^{-4}$ at
# 49.4 %, at $10^{-3}$ 75.5 %. From scratch INT2 did not diverge (no NaN) but learned slowly: 52.5 % with learned
# ranges and 24.8 % with min-max ranges after 0.4 epoch, against 77.9 % in float with the same recipe. The operand statistics say why: 85 % of the
# values of the left operands (91–98 % of the softmax probabilities) sat on the zero-point code at the start, so the
# products carried almost no signal; learned ranges brought that to 76 %, min-max ranges did not move it. A trained
# network's operands are spread, so each switch starts from a working model and disturbs it only as much as a short
# fine-tune repairs. Lab 3's CNN taught the same lesson: W2A2 QAT from the pretrained model came within about 2 pt of
# FP32, from a random init it stayed at chance; its activations follow a ReLU (no softmax squeezing them towards
# zero), so 2 bits cost it less. Part 5 shows a CNN keeps 89.8 % at 15.8 KiB without any training, with 2-bit
# k-means weights in three of its four layers.

# %% [markdown] nbgrader={"grade": false, "grade_id": "further_reading", "locked": true, "schema_version": 3, "solution": false, "task": false}
# ### Further reading
# - The study reproduced here: the course's source notes (`shared/seeds/003`, in Chinese, 2023): product-level
#   post-training quantization of a six-block ViT on CIFAR-10 — one product at a time at INT4, the ranked greedy
#   curve, the 2 / 5 / 10 % budgets, INT4 QAT, INT2 from scratch and the gradual INT4 → INT2 path.
# - B. Jacob, S. Kligys, B. Chen, M. Zhu, M. Tang, A. Howard, H. Adam, D. Kalenichenko, 2018. *Quantization and
#   Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference.* CVPR (the zero-point expansion).
# - Z. Dong, Z. Yao, A. Gholami, M. W. Mahoney, K. Keutzer, 2019. *HAWQ: Hessian AWare Quantization of Neural
#   Networks with Mixed-Precision.* ICCV; Z. Dong, Z. Yao, D. Arfeen, A. Gholami, M. W. Mahoney, K. Keutzer, 2020.
#   *HAWQ-V2: Hessian Aware trace-Weighted Quantization of Neural Networks.* NeurIPS.
# - Z. Yao, Z. Dong, Z. Zheng, A. Gholami, J. Yu, E. Tan, L. Wang, Q. Huang, Y. Wang, M. W. Mahoney, K. Keutzer,
#   2021. *HAWQ-V3: Dyadic Neural Network Quantization.* ICML (bit allocation as an integer linear program).
# - K. Wang, Z. Liu, Y. Lin, J. Lin, S. Han, 2019. *HAQ: Hardware-Aware Automated Quantization with Mixed
#   Precision.* CVPR.
# - S. K. Esser, J. L. McKinstry, D. Bablani, R. Appuswamy, D. S. Modha, 2020. *Learned Step Size Quantization.*
#   ICLR; Y. Bhalgat, J. Lee, M. Nagel, T. Blankevoort, N. Kwak, 2020. *LSQ+: Improving Low-Bit Quantization
#   Through Learnable Offsets and Better Initialization.* CVPR Workshops.
# - A. Dosovitskiy et al., 2021. *An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale.* ICLR
#   (the ViT architecture TinyViT shrinks).
# - M. F. Hutchinson, 1989. *A Stochastic Estimator of the Trace of the Influence Matrix for Laplacian Smoothing
#   Splines.* Communications in Statistics — Simulation and Computation (the trace estimator).
# - S. Han, H. Mao, W. J. Dally, 2016. *Deep Compression.* ICLR (k-means weights, Part 5).
#
# This is the last lab of the course.
