"""Hidden checks for Lab 6 — mixed precision by sensitivity: the quantized product, multiply counts, the ranking,
the greedy budget and the exact bit allocation.

These run on the trusted side only: each ``check_<name>(fn)`` receives a proxy of the student's function, calls it
with plain data drawn from the course secret (``suite.draw``), and compares what comes back with lowbit's reference
(``lowbit.quant.mixed``, computed here).

Exact inputs where the contract makes a result exact: the rounding checks of ``quantize_operand`` use a power-of-two
scale and a zero point chosen so that x / S lands on exact halves; accuracies and curves are multiples of 1/4096
(like accuracies on a few thousand images, and exact in float32 and float64), so a point *at* baseline − budget is a
real tie. Integer results (codes, zero points, the integer core of the product, multiply counts, rankings) are
compared exactly; the float product within a tolerance of its float rounding (1e-5 of |fake(a)| @ |fake(b)|), which
accepts both C = S_A·S_B·(integer core) and fake(a) @ fake(b).

``allocate_bits`` is an optimizer with many optimal answers, so it is graded on what the contract promises: P Python
ints, each in ``choices``, within the budget, and an objective Σ sensitivities[p, c_p] equal to the optimum — found
by brute force over every allocation on small drawn instances (up to 3^6), and given by the reference's exact
dynamic program on a TinyViT-sized one (38 products with multiply counts of a ViT). The greedy allocation the lab
compares with is not optimal on those instances, which is the point of the exercise.
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Sequence

import torch

from autograder.checks._api import (CheckSuite, expect_close, expect_dtype, expect_equal, expect_length,
                                    expect_raises, expect_reference, expect_shape, expect_unchanged)
from autograder.contract import load_contract

#: Graded functions, their signatures and references: ``lab6_mixed.contract.json``.
CONTRACT = load_contract("lab6_mixed")
REF = {name: CONTRACT.reference(name) for name in CONTRACT.graded}
#: Accuracies and curves are multiples of this (exact in float32 and float64).
GRID = 1.0 / 4096
#: The float product against the reference: this fraction of max(|fake(a)| @ |fake(b)|), plus as much relative.
PRODUCT_TOL = 1e-5
#: Smallest normal float32, the floor of every scale (``lowbit.quant.linear.MIN_SCALE``).
MIN_SCALE = float(torch.finfo(torch.float32).tiny)


def _expect_int(got: Any, expected: int, what: str) -> None:
    """``got`` is a Python int (not a bool, float or tensor) equal to ``expected``."""
    if type(got) is not int:
        raise AssertionError(f"{what}: expected the Python int {expected}, got {type(got).__name__} {got!r}")
    expect_equal(got, expected, what)


# ----------------------------------------------------------------------------------------------- operands
def _operand(d, *shape: int) -> torch.Tensor:
    """A float32 operand of ``shape``: both signs, a drawn offset and spread (activations, weights)."""
    return d.normal(*shape, std=d.uniform(0.2, 3.0), mean=d.uniform(-0.5, 0.5))


def _shape(d, ndim: int) -> tuple[int, ...]:
    return tuple(d.integer(1, 6) for _ in range(ndim - 2)) + (d.integer(3, 12), d.integer(3, 12))


def check_quantize_operand(fn) -> None:
    suite = CheckSuite("quantize_operand", CONTRACT)
    d = suite.draw

    def compare(x, bits):
        what, inputs = suite.label(x, bits)
        got = fn(x, bits)
        q, scale, zero_point = REF["quantize_operand"](x, bits)
        expect_length(got, 3, what, inputs=inputs)
        expect_equal(got[0], q, f"{what}[0] (the codes q)", inputs=inputs)
        expect_dtype(got[1], torch.float32, f"{what}[1] (the scale S)", inputs=inputs)
        expect_shape(got[1], (), f"{what}[1] (the scale S)", inputs=inputs)
        expect_close(got[1], scale, f"{what}[1] (the scale S)", rtol=2.5e-7, inputs=inputs)
        expect_equal(got[2], zero_point, f"{what}[2] (the zero point Z)", inputs=inputs)

    with suite.check("S = (r_max − r_min) / (2^b − 1), Z = round(−r_min / S), q = clamp(round(x / S) + Z, 0, "
                     "2^b − 1) for operands of both signs",
                     hint="r_min = min(x.min(), 0), r_max = max(x.max(), 0); unsigned range [0, 2^b − 1] (not "
                          "2^b levels, not a signed range)"):
        for bits in (8, 4, 2, d.integer(3, 7)):
            compare(_operand(d, d.integer(20, 60), d.integer(4, 20)), bits)
    with suite.check("the range is widened to contain 0: an all-positive operand (after a ReLU or softmax) has "
                     "Z = 0, an all-negative one Z = 2^b − 1",
                     hint="r_min = min(min x, 0) and r_max = max(max x, 0), so 0 is exactly representable: a "
                          "softmax output in (0, 1] still uses the range [0, max x]"):
        for bits in (8, 4, d.integer(2, 7)):
            positive = d.rand(d.integer(30, 80), low=0.2, high=2.0) + d.uniform(0.1, 1.0)
            compare(positive, bits)
            compare(torch.softmax(d.normal(3, d.integer(5, 17)), dim=-1), bits)
            compare(-positive, bits)
    with suite.check("rounds half to even, and adds Z after rounding (x / S on exact halves, odd Z)",
                     hint="q = torch.round(x / S) + Z, then clamp: torch.round rounds exact halves to the even "
                          "integer; round(x / S + Z) differs from it on halves when Z is odd"):
        for bits in (d.integer(3, 5), d.integer(6, 8)):
            q_max = 2**bits - 1
            step = d.power_of_two(2, 6)
            zero = 2 * d.integer(1, (q_max - 1) // 2) - 1          # odd, inside (0, q_max)
            n = d.randint(-zero, q_max - zero, (d.integer(20, 40),)).to(torch.float32)
            x = d.mix(torch.tensor([-zero * step, (q_max - zero) * step, 0.5 * step, -0.5 * step, 1.5 * step]),
                      (n + 0.5) * step)
            compare(x, bits)
    with suite.check("a constant operand: all-zero gives S = 1, Z = 0; one value c everywhere the range "
                     "[min(c, 0), max(c, 0)]",
                     hint="r_max == r_min only when x is all zeros: then S = 1.0 (never 0, never MIN_SCALE); a "
                          "constant c ≠ 0 still has the range [0, c] (or [c, 0]) once it is widened to contain 0"):
        shape = (d.integer(2, 9), d.integer(2, 9))
        for bits in (8, d.integer(2, 7)):
            compare(torch.zeros(shape), bits)
            compare(torch.full(shape, d.uniform(0.1, 5.0)), bits)
            compare(torch.full(shape, -d.uniform(0.1, 5.0)), bits)
    with suite.check("the scale is floored at lowbit.quant.linear.MIN_SCALE (an operand of subnormal floats)",
                     hint="S = max((r_max − r_min) / (2^b − 1), MIN_SCALE) with MIN_SCALE = "
                          "torch.finfo(torch.float32).tiny: a subnormal scale loses precision"):
        compare(d.normal(d.integer(10, 30)) * 1e-39, 8)
        compare(d.rand(d.integer(10, 30)) * 3e-39, d.integer(4, 8))
    with suite.check("every bit width from 1 to 16",
                     hint="q_max = 2^bits − 1 for bits = 1 (codes 0 and 1) up to 16 (0 … 65535)"):
        x = _operand(d, d.integer(40, 80))
        for bits in range(1, 17):
            compare(x, bits)
    with suite.check("any shape: a 0-dim tensor, 1-D, batched 4-D attention tensors [N, H, T, d]",
                     hint="one scale and zero point for the whole tensor (min and max over every element), q of "
                          "x's shape"):
        compare(torch.tensor(d.uniform(-3.0, 3.0)), d.integer(2, 8))
        compare(_operand(d, d.integer(5, 30)), d.integer(2, 8))
        compare(_operand(d, d.integer(1, 3), d.integer(2, 4), d.integer(5, 17), d.integer(4, 16)), d.integer(2, 8))
    with suite.check("float16, bfloat16 and float64 operands are computed in float32 (int64 q and Z, float32 S)",
                     hint="x = x.float() first; return q and Z as int64, S as a 0-dim float32 tensor"):
        for dtype in (torch.float16, torch.bfloat16, torch.float64):
            compare(_operand(d, d.integer(20, 50)).to(dtype), d.choice([8, 4, 2]))
    with suite.check("rejects integer tensors and non-tensors (TypeError), empty or non-finite x and bits outside "
                     "1..16 (ValueError)",
                     hint="TypeError unless x is a float tensor; ValueError for x.numel() == 0, NaN / inf, bits < 1 or "
                          "bits > 16"):
        x = _operand(d, d.integer(5, 20))
        expect_raises(TypeError, fn, d.randint(0, 9, (d.integer(3, 9),)), 8, what="quantize_operand(x of dtype int64, "
                                                                                   "bits=8)")
        expect_raises(ValueError, fn, torch.zeros(0), 8, what="quantize_operand(an empty x, bits=8)")
        bad = x.clone()
        bad[d.integer(0, bad.numel() - 1)] = d.choice([math.nan, math.inf, -math.inf])
        expect_raises(ValueError, fn, bad, 8, what="quantize_operand(x with a NaN or an infinity, bits=8)")
        for bits in (0, 17, -d.integer(1, 8)):
            expect_raises(ValueError, fn, x, bits, what=f"quantize_operand(x, bits={bits})")
    with suite.check("leaves its input unchanged", hint="do not write into x (no x.div_(), x.clamp_())"):
        expect_unchanged(fn, _operand(d, d.integer(10, 30), 3), d.integer(2, 8), what="quantize_operand")
    suite.finish()


# ----------------------------------------------------------------------------------------------- integer core
def _exact(q_a: torch.Tensor, z_a, q_b: torch.Tensor, z_b) -> torch.Tensor:
    """(Q_A − Z_A)(Q_B − Z_B) in int64 arithmetic (no expansion, no float): what the expansion must equal."""
    return torch.matmul(q_a.to(torch.int64) - int(z_a), q_b.to(torch.int64) - int(z_b))


def _codes(d, shape: tuple[int, ...], bits: int, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    return d.randint(0, 2**bits, shape, dtype)


def _zero(d, bits: int) -> int:
    return d.integer(1, 2**bits - 2)


def check_zero_point_matmul(fn) -> None:
    suite = CheckSuite("zero_point_matmul", CONTRACT)
    d = suite.draw

    def compare(q_a, z_a, q_b, z_b):
        what, inputs = suite.label(q_a, z_a, q_b, z_b)
        expected = _exact(q_a, z_a, q_b, z_b)
        got = fn(q_a, z_a, q_b, z_b)
        expect_equal(got, expected, what, inputs=inputs)

    def pair(bits, m, k, n, batch_a=(), batch_b=()):
        return _codes(d, (*batch_a, m, k), bits), _codes(d, (*batch_b, k, n), bits)

    with suite.check("(Q_A − Z_A)(Q_B − Z_B) exactly, both zero points non-zero (int64 [M, N])",
                     hint="Q_A Q_B − Z_B·rowsum(Q_A) − Z_A·colsum(Q_B) + K·Z_A·Z_B"):
        for bits in (8, 4, d.integer(2, 7)):
            q_a, q_b = pair(bits, d.integer(3, 9), d.integer(4, 20), d.integer(3, 9))
            compare(q_a, _zero(d, bits), q_b, _zero(d, bits))
    with suite.check("Z_B multiplies the row sums of Q_A [M, 1], Z_A the column sums of Q_B [1, N] (M ≠ N, "
                     "one zero point at a time)",
                     hint="rowsum(Q_A) = q_a.sum(-1, keepdim=True) goes with z_b, colsum(Q_B) = q_b.sum(-2, "
                          "keepdim=True) with z_a — not the other way round"):
        m = d.integer(3, 7)
        q_a, q_b = pair(8, m, d.integer(4, 16), m + d.integer(1, 5))
        compare(q_a, _zero(d, 8), q_b, 0)
        compare(q_a, 0, q_b, _zero(d, 8))
        z = _zero(d, 8)
        compare(q_a, z, q_b, (z + d.integer(1, 100)) % 255)
    with suite.check("the constant term is K·Z_A·Z_B (K = the shared inner dimension)",
                     hint="(Q_A − Z_A)(Q_B − Z_B) sums K products, so Z_A·Z_B appears K times: + K * z_a * z_b "
                          "with K = q_a.shape[-1] (not M, not N)"):
        m, k, n = d.integer(2, 5), d.integer(6, 12), d.integer(13, 20)
        q_a, q_b = pair(4, m, k, n)
        compare(q_a, _zero(d, 4), q_b, _zero(d, 4))
        q_a, q_b = pair(8, n, m, k)
        compare(q_a, _zero(d, 8), q_b, _zero(d, 8))
    with suite.check("K = 1: an outer product",
                     hint="rowsum and colsum over an axis of size 1 are the codes themselves"):
        for bits in (8, 4):
            q_a, q_b = pair(bits, d.integer(2, 9), 1, d.integer(2, 9))
            compare(q_a, _zero(d, bits), q_b, _zero(d, bits))
    with suite.check("batched 4-D attention codes [N, H, T, d] @ [N, H, d, T] (sums over the last two axes)",
                     hint="rowsum(Q_A) = q_a.sum(dim=-1, keepdim=True), colsum(Q_B) = q_b.sum(dim=-2, keepdim=True),"
                          " K = q_a.shape[-1]: axes counted from the end, so any batch dims work"):
        batch, tokens, width = (d.integer(1, 3), d.integer(2, 4)), d.integer(5, 17), d.integer(4, 16)
        q_a, q_b = pair(8, tokens, width, tokens, batch, batch)
        compare(q_a, _zero(d, 8), q_b, _zero(d, 8))
        q_a, q_b = pair(4, tokens, tokens, width, batch, batch)
        compare(q_a, _zero(d, 4), q_b, _zero(d, 4))
    with suite.check("batch dims broadcast as in torch.matmul ([H, T, d] @ [d, T'], [N, 1, T, d] @ [H, d, T'])",
                     hint="use torch.matmul (or @) on the codes and keepdim sums: they broadcast by themselves"):
        heads = d.integer(2, 4)
        q_a, q_b = pair(8, d.integer(3, 8), d.integer(4, 10), d.integer(3, 8), (heads,), ())
        compare(q_a, _zero(d, 8), q_b, _zero(d, 8))
        q_a, q_b = pair(8, d.integer(3, 8), d.integer(4, 10), d.integer(3, 8), (d.integer(2, 3), 1), (heads,))
        compare(q_a, _zero(d, 8), q_b, _zero(d, 8))
    with suite.check("zero points as Python ints or 0-dim int64 tensors",
                     hint="int(z_a) works for both; a 0-dim tensor times a tensor also broadcasts"):
        q_a, q_b = pair(8, d.integer(3, 8), d.integer(4, 10), d.integer(3, 8))
        compare(q_a, torch.tensor(_zero(d, 8)), q_b, torch.tensor(_zero(d, 8)))
        compare(q_a, _zero(d, 8), q_b, torch.tensor(_zero(d, 8)))
    with suite.check("exact for long rows of 8-bit codes and for 16-bit codes (float32 products would round)",
                     hint="multiply the codes in float64 (exact below 2^53) or int64, never float32 (24-bit mantissa)"):
        k = d.integer(3000, 5000)
        q_a = torch.full((3, k), 255, dtype=torch.int64)
        q_a[1] = _codes(d, (k,), 8)
        q_b = torch.full((k, 2), 255, dtype=torch.int64)
        q_b[:, 1] = _codes(d, (k,), 8)
        compare(q_a, _zero(d, 8), q_b, _zero(d, 8))
        q_a, q_b = pair(16, d.integer(2, 5), d.integer(50, 100), d.integer(2, 5))
        compare(q_a, _zero(d, 16), q_b, _zero(d, 16))
    with suite.check("uint8 and int32 codes give the exact int64 result (no uint8 wrap-around)",
                     hint="widen the codes to int64 (or float64) before multiplying and summing: uint8 products wrap "
                          "around at 256"):
        m, k, n = d.integer(3, 8), d.integer(8, 20), d.integer(3, 8)
        q_a, q_b = _codes(d, (m, k), 8, torch.uint8), _codes(d, (k, n), 8, torch.uint8)
        compare(q_a, _zero(d, 8), q_b, _zero(d, 8))
        q_a, q_b = _codes(d, (m, k), 12, torch.int32), _codes(d, (k, n), 12, torch.int32)
        compare(q_a, _zero(d, 12), q_b, _zero(d, 12))
    with suite.check("rejects float codes (TypeError), mismatched K and 1-D codes (ValueError)",
                     hint="TypeError unless both codes are integer tensors; ValueError unless q_a is [..., M, K] and "
                          "q_b [..., K, N] with at least 2 dims each"):
        m, k, n = d.integer(2, 6), d.integer(3, 8), d.integer(2, 6)
        q_a, q_b = pair(8, m, k, n)
        expect_raises(TypeError, fn, q_a.float(), 3, q_b, 5, what="zero_point_matmul(q_a of dtype float32, ...)")
        expect_raises(ValueError, fn, q_a, 3, _codes(d, (k + 1, n), 8), 5,
                      what=f"zero_point_matmul(q_a [{m}, {k}], z_a=3, q_b [{k + 1}, {n}], z_b=5)")
        expect_raises(ValueError, fn, _codes(d, (k,), 8), 3, q_b, 5,
                      what=f"zero_point_matmul(q_a [{k}] (1-D), z_a=3, q_b [{k}, {n}], z_b=5)")
    with suite.check("leaves its inputs unchanged", hint="do not write into q_a or q_b (no q_a.sub_(z_a))"):
        q_a, q_b = pair(8, d.integer(2, 6), d.integer(3, 8), d.integer(2, 6))
        expect_unchanged(fn, q_a, _zero(d, 8), q_b, _zero(d, 8), what="zero_point_matmul")
    suite.finish()


# ----------------------------------------------------------------------------------------------- float product
def _fake(x: torch.Tensor, bits: int) -> torch.Tensor:
    """S (Q − Z) in float64, from the reference's quantization of x."""
    q, scale, zero_point = REF["quantize_operand"](x, bits)
    return (q - zero_point).to(torch.float64) * float(scale)


def check_dynamic_quantized_matmul(fn) -> None:
    suite = CheckSuite("dynamic_quantized_matmul", CONTRACT)
    d = suite.draw

    def compare(a, b, bits):
        what, inputs = suite.label(a, b, bits)
        got = fn(a, b, bits)
        expected = REF["dynamic_quantized_matmul"](a, b, bits)
        mass = float((_fake(a, bits).abs() @ _fake(b, bits).abs()).max())
        expect_dtype(got, torch.float32, what, inputs=inputs)
        expect_close(got, expected, what, rtol=PRODUCT_TOL, atol=PRODUCT_TOL * mass + 1e-30, inputs=inputs)

    def pair(m, k, n, batch_a=(), batch_b=()):
        return _operand(d, *batch_a, m, k), _operand(d, *batch_b, k, n)

    with suite.check("S_A·S_B·(Q_A − Z_A)(Q_B − Z_B) = fake(a) @ fake(b), both operands of both signs",
                     hint="quantize a and b on their own with quantize_operand, then S_A * S_B * "
                          "zero_point_matmul(Q_A, Z_A, Q_B, Z_B): each operand's own scale and zero point"):
        for bits in (8, 4, 2, d.integer(3, 7)):
            compare(*pair(d.integer(3, 12), d.integer(4, 24), d.integer(3, 12)), bits)
    with suite.check("activations after a ReLU (Z_A = 0) times weights of both signs, and the reverse",
                     hint="each operand has its own zero point: Z_A from a's range, Z_B from b's"):
        m, k, n = d.integer(3, 12), d.integer(4, 24), d.integer(3, 12)
        compare(torch.relu(_operand(d, m, k)) + 0.05, _operand(d, k, n), d.choice([8, 4]))
        compare(_operand(d, m, k), torch.relu(_operand(d, k, n)) + 0.05, d.choice([8, 4]))
    with suite.check("a constant operand: all zeros gives exactly 0, one value c everywhere is represented exactly",
                     hint="an all-zero operand has S = 1, Z = 0 (no division by zero); c fills [0, c]: Q = 2^b − 1"):
        m, k, n = d.integer(3, 9), d.integer(4, 16), d.integer(3, 9)
        compare(torch.zeros(m, k), _operand(d, k, n), 8)
        compare(_operand(d, m, k), torch.full((k, n), d.uniform(0.2, 3.0)), d.choice([8, 4]))
        compare(torch.full((m, k), -d.uniform(0.2, 3.0)), _operand(d, k, n), 4)
    with suite.check("batched 4-D attention [N, H, T, d] @ [N, H, d, T] and softmax(·) @ v, one scale per tensor",
                     hint="quantize the whole 4-D tensor at once (one S and Z over every head and batch element), "
                          "then the batched integer product"):
        batch, tokens, width = (d.integer(1, 3), d.integer(2, 4)), d.integer(5, 17), d.integer(4, 16)
        q, k = _operand(d, *batch, tokens, width), _operand(d, *batch, width, tokens)
        compare(q, k, d.choice([8, 4]))
        attention = torch.softmax(d.normal(*batch, tokens, tokens) * 2, dim=-1)
        compare(attention, _operand(d, *batch, tokens, width), d.choice([8, 4, 2]))
    with suite.check("batch dims broadcast as in torch.matmul ([N, T, K] @ [K, N'], [H, T, d] @ [1, d, T'])",
                     hint="quantize each operand as it comes; torch.matmul broadcasts the batch dims"):
        compare(*pair(d.integer(3, 8), d.integer(4, 12), d.integer(3, 8), (d.integer(2, 4),), ()), 8)
        compare(*pair(d.integer(3, 8), d.integer(4, 12), d.integer(3, 8), (d.integer(2, 4),), (1,)), 4)
    with suite.check("K = 1: an outer product", hint="a [M, 1] @ b [1, N] works like any other product"):
        compare(*pair(d.integer(2, 9), 1, d.integer(2, 9)), d.choice([8, 4]))
    with suite.check("bits is used: every width from 1 to 16 on the same operands",
                     hint="pass bits on to quantize_operand for both operands (q_max = 2^bits − 1)"):
        a, b = pair(d.integer(3, 8), d.integer(4, 12), d.integer(3, 8))
        for bits in range(1, 17):
            compare(a, b, bits)
    with suite.check("a float32 result for float16, bfloat16 and float64 operands",
                     hint="quantize_operand works in float32; return the product as float32, whatever the inputs' "
                          "dtype"):
        for dtype in (torch.float16, torch.bfloat16, torch.float64):
            a, b = pair(d.integer(3, 8), d.integer(4, 12), d.integer(3, 8))
            compare(a.to(dtype), b.to(dtype), d.choice([8, 4]))
    with suite.check("rejects integer operands (TypeError), mismatched K and 1-D operands (ValueError)",
                     hint="TypeError unless a and b are float tensors; ValueError unless a is [..., M, K] and b "
                          "[..., K, N] with at least 2 dims each"):
        m, k, n = d.integer(2, 6), d.integer(3, 8), d.integer(2, 6)
        a, b = pair(m, k, n)
        expect_raises(TypeError, fn, d.randint(0, 9, (m, k)), b, 8,
                      what="dynamic_quantized_matmul(a of dtype int64, b, bits=8)")
        expect_raises(ValueError, fn, a, _operand(d, k + 1, n), 8,
                      what=f"dynamic_quantized_matmul(a [{m}, {k}], b [{k + 1}, {n}], bits=8)")
        expect_raises(ValueError, fn, _operand(d, k), b, 8,
                      what=f"dynamic_quantized_matmul(a [{k}] (1-D), b [{k}, {n}], bits=8)")
    with suite.check("leaves its inputs unchanged", hint="do not write into a or b"):
        expect_unchanged(fn, *pair(d.integer(2, 6), d.integer(3, 8), d.integer(2, 6)), d.choice([8, 4]),
                         what="dynamic_quantized_matmul")
    suite.finish()


# ----------------------------------------------------------------------------------------------- multiply count
def check_multiply_count(fn) -> None:
    suite = CheckSuite("multiply_count", CONTRACT)
    d = suite.draw

    def compare(a_shape, b_shape):
        what, _ = suite.label(a_shape, b_shape)
        what = f"multiply_count(a_shape={a_shape!r}, b_shape={b_shape!r})"
        _expect_int(fn(a_shape, b_shape), REF["multiply_count"](a_shape, b_shape), what)

    def dims():
        return d.integer(2, 200), d.integer(2, 200), d.integer(2, 200)

    with suite.check("M·K·N multiplications for a [M, K] @ b [K, N] (not M·N outputs, not 2·M·K·N FLOPs, not one "
                     "operation per product)",
                     hint="every one of the M·N outputs is a sum of K products: M * K * N scalar multiplications"):
        for _ in range(3):
            m, k, n = dims()
            compare((m, k), (k, n))
        compare((d.integer(10, 30), 64), (64, 192))
    with suite.check("batched 4-D attention [N, H, T, d] @ [N, H, d, T]: the batch dims multiply",
                     hint="prod(batch dims) · M · K · N: every head of every image does its own T·d·T multiplies"):
        batch, tokens, width = (d.integer(1, 8), d.integer(2, 8)), d.integer(5, 65), d.integer(4, 32)
        compare((*batch, tokens, width), (*batch, width, tokens))
        compare((*batch, tokens, tokens), (*batch, tokens, width))
    with suite.check("batch dims broadcast as in torch.matmul ([T, K] @ [H, K, N], [N, 1, T, d] @ [H, d, T])",
                     hint="the batch is torch.broadcast_shapes(a_shape[:-2], b_shape[:-2]): a dim of size 1 (or a "
                          "missing one) takes the other operand's size"):
        m, k, n = dims()
        heads = d.integer(2, 8)
        compare((m, k), (heads, k, n))
        compare((d.integer(2, 6), 1, m, k), (heads, k, n))
        compare((heads, m, k), (k, n))
    with suite.check("shapes as tuples, lists and torch.Size; a zero-size dim gives 0",
                     hint="accept any sequence of ints (list(a_shape)); a product with an empty axis multiplies "
                          "nothing"):
        m, k, n = dims()
        compare([m, k], [k, n])
        compare(torch.Size([d.integer(2, 5), m, k]), torch.Size([k, n]))
        compare((0, k), (k, n))
        compare((m, k), [k, n])
    with suite.check("rejects mismatched K, shapes with fewer than 2 dims and batch dims that do not broadcast "
                     "(ValueError)",
                     hint="ValueError unless a_shape[-1] == b_shape[-2], both have ≥ 2 entries and "
                          "torch.broadcast_shapes(a_shape[:-2], b_shape[:-2]) succeeds"):
        m, k, n = dims()
        expect_raises(ValueError, fn, (m, k), (k + 1, n), what=f"multiply_count(({m}, {k}), ({k + 1}, {n}))")
        expect_raises(ValueError, fn, (k,), (k, n), what=f"multiply_count(({k},), ({k}, {n}))")
        expect_raises(ValueError, fn, (2, m, k), (3, k, n), what=f"multiply_count((2, {m}, {k}), (3, {k}, {n}))")
    suite.finish()


# ----------------------------------------------------------------------------------------------- ranking
def _accuracies(d, p: int, levels: int | None = None) -> torch.Tensor:
    """float64 [p]: accuracies near 0.85 on the 1/4096 grid; with ``levels``, only that many distinct values."""
    if levels is None:
        return (3481 - d.permutation(p * 3)[:p].to(torch.float64)) * GRID        # distinct
    values = 3481 - d.permutation(40)[:levels].to(torch.float64)
    return values[d.randint(0, levels, (p,))] * GRID


def check_sensitivity_ranking(fn) -> None:
    suite = CheckSuite("sensitivity_ranking", CONTRACT)
    d = suite.draw

    def compare(accuracies):
        what, inputs = suite.label(accuracies)
        expected = REF["sensitivity_ranking"](accuracies)
        got = fn(accuracies)
        expect_length(got, len(expected), what, inputs=inputs)
        for index, item in enumerate(got):
            if type(item) is not int:
                raise AssertionError(f"{what}[{index}]: expected a Python int (a product index), got "
                                     f"{type(item).__name__} {item!r}")
        expect_equal(list(got), expected, what, inputs=inputs)

    with suite.check("indices from the highest accuracy (least sensitive) to the lowest",
                     hint="sort by accuracy in descending order and return the indices (torch.argsort(acc, "
                          "descending=True, stable=True).tolist()), not the sorted accuracies or the ranks"):
        for p in (38, d.integer(5, 30)):
            compare(_accuracies(d, p))
    with suite.check("ties: the lower index first",
                     hint="a stable sort keeps equal accuracies in index order: torch.argsort(..., stable=True) on "
                          "descending values, or sorted(range(P), key=lambda p: -acc[p]); not a reversed ascending "
                          "sort"):
        compare(_accuracies(d, 38, levels=d.integer(4, 9)))
        compare(_accuracies(d, d.integer(10, 30), levels=d.integer(2, 4)))
        compare(torch.full((d.integer(3, 9),), 3481 * GRID, dtype=torch.float64))
    with suite.check("a list, a tuple, a float32 tensor; one product",
                     hint="torch.as_tensor(accuracies, dtype=torch.float64) accepts all of them"):
        acc = _accuracies(d, d.integer(8, 20), levels=d.integer(4, 7))
        compare(acc.tolist())
        compare(tuple(acc.tolist()))
        compare(acc.float())
        compare([float(acc[0])] + acc[1:].tolist())
        compare(acc[:1])
    with suite.check("rejects empty accuracies and NaN (ValueError)",
                     hint="ValueError when there is nothing to rank or an accuracy is NaN (a failed measurement)"):
        expect_raises(ValueError, fn, [], what="sensitivity_ranking(accuracies=[])")
        acc = _accuracies(d, d.integer(5, 20))
        acc[d.integer(0, acc.numel() - 1)] = math.nan
        expect_raises(ValueError, fn, acc, what="sensitivity_ranking(accuracies with a NaN)")
    with suite.check("leaves its input unchanged", hint="do not sort accuracies in place (no acc.sort() on the input)"):
        expect_unchanged(fn, _accuracies(d, d.integer(10, 38), levels=6), what="sensitivity_ranking")
    suite.finish()


# ----------------------------------------------------------------------------------------------- budget
def _curve(d, p: int, answer: int, threshold: int, dips: int, at_threshold: bool = False,
           below: int = 1) -> torch.Tensor:
    """float64 [p + 1] on the 1/4096 grid (``threshold`` in grid units): the points up to ``answer`` at or above
    the threshold except ``dips`` of them (between 1 and answer − 1), every later one at least ``below`` units under
    it; curve[answer] exactly at the threshold when ``at_threshold``."""
    units = threshold + d.randint(0, 60, (p + 1,)).to(torch.float64)
    units[answer + 1:] = threshold - below - d.randint(0, 60, (p - answer,)).to(torch.float64)
    if dips:
        positions = 1 + d.permutation(answer - 1)[:dips]
        units[positions] = threshold - 1 - d.randint(0, 40, (dips,)).to(torch.float64)
    if at_threshold:
        units[answer] = threshold
    return units * GRID


def check_products_within_budget(fn) -> None:
    suite = CheckSuite("products_within_budget", CONTRACT)
    d = suite.draw

    def compare(curve, baseline, budget):
        what, inputs = suite.label(curve, baseline, budget)
        _expect_int(fn(curve, baseline, budget), REF["products_within_budget"](curve, baseline, budget),
                    f"{what} with input curve={curve!r}" if not isinstance(curve, torch.Tensor) else
                    f"{what} with input curve={curve.tolist()}")

    def setting(p):
        baseline = d.integer(3500, 3700)          # in grid units (~0.87)
        budget = d.choice([82, 205, 410, d.integer(20, 400)])   # ~2 %, 5 %, 10 %, drawn
        return baseline, budget

    with suite.check("the largest k with curve[k] ≥ baseline − budget, past dips below it (the curve is not "
                     "monotone)",
                     hint="scan the whole curve and keep the last k that is within the budget; stopping at the first "
                          "point below it, or counting the points within it, undercounts"):
        for _ in range(3):
            p = d.integer(20, 38)
            baseline, budget = setting(p)
            answer = d.integer(p // 2, p - 2)
            curve = _curve(d, p, answer, baseline - budget, dips=d.integer(2, 4))
            compare(curve, baseline * GRID, budget * GRID)
    with suite.check("a point exactly at baseline − budget is within the budget (≥, not >)",
                     hint="curve[k] >= baseline - budget: a drop of exactly the budget is allowed"):
        p = d.integer(20, 38)
        baseline, budget = setting(p)
        answer = d.integer(p // 2, p - 2)
        compare(_curve(d, p, answer, baseline - budget, dips=2, at_threshold=True), baseline * GRID, budget * GRID)
    with suite.check("budget is an absolute drop in accuracy (a fraction: 0.02 = 2 points), not a relative one",
                     hint="the threshold is baseline - budget, not baseline * (1 - budget) and not baseline - "
                          "budget / 100"):
        p = d.integer(20, 38)
        baseline, budget = d.integer(3500, 3700), d.choice([205, 410])
        relative = math.ceil(baseline * (1 - budget * GRID))           # the relative threshold, in grid units
        answer = d.integer(p // 2, p - 2)
        curve = _curve(d, p, answer, baseline - budget, dips=2, at_threshold=True)
        gap = relative - (baseline - budget)                             # > 0: points in between count
        curve[answer] = (baseline - budget + d.integer(0, gap - 1)) * GRID
        compare(curve, baseline * GRID, budget * GRID)
    with suite.check("budget 0 (no drop allowed), and a budget that allows everything (k = P)",
                     hint="budget = 0 keeps the points at or above the baseline itself; with budget >= baseline every "
                          "point qualifies and the answer is P = len(curve) - 1"):
        p = d.integer(20, 38)
        baseline = d.integer(3500, 3700)
        answer = d.integer(p // 3, p - 2)
        compare(_curve(d, p, answer, baseline, dips=2, at_threshold=True), baseline * GRID, 0.0)
        curve = _curve(d, p, answer, baseline - 200, dips=2)
        compare(curve, baseline * GRID, 1.0)
        compare(curve, baseline * GRID, baseline * GRID)
    with suite.check("k = 0 when only the float model (curve[0]) is within the budget, and 0 when no point is",
                     hint="k counts quantized products: curve[0] within the budget and nothing after it gives 0, and "
                          "so does a curve entirely below the threshold; curve[1] within it gives 1"):
        p = d.integer(10, 38)
        baseline, budget = setting(p)
        curve = _curve(d, p, 0, baseline - budget, dips=0)
        compare(curve, baseline * GRID, budget * GRID)
        compare(curve - 0.5, baseline * GRID, budget * GRID)
        compare(_curve(d, p, 1, baseline - budget, dips=0), baseline * GRID, budget * GRID)
    with suite.check("a list, a tuple, a float32 tensor",
                     hint="torch.as_tensor(curve, dtype=torch.float64) accepts all of them"):
        p = d.integer(10, 38)
        baseline, budget = setting(p)
        curve = _curve(d, p, d.integer(p // 2, p - 2), baseline - budget, dips=2, at_threshold=True)
        compare(curve.tolist(), baseline * GRID, budget * GRID)
        compare(tuple(curve.tolist()), baseline * GRID, budget * GRID)
        compare(curve.float(), baseline * GRID, budget * GRID)
    with suite.check("rejects an empty curve, NaN and a negative budget (ValueError)",
                     hint="ValueError when curve is empty or holds NaN, and when budget < 0"):
        p = d.integer(10, 38)
        baseline, budget = setting(p)
        curve = _curve(d, p, d.integer(p // 2, p - 2), baseline - budget, dips=2)
        expect_raises(ValueError, fn, [], baseline * GRID, budget * GRID,
                      what="products_within_budget(curve=[], ...)")
        bad = curve.clone()
        bad[d.integer(0, p)] = math.nan
        expect_raises(ValueError, fn, bad, baseline * GRID, budget * GRID,
                      what="products_within_budget(curve with a NaN, ...)")
        expect_raises(ValueError, fn, curve, baseline * GRID, -budget * GRID,
                      what=f"products_within_budget(curve, baseline={baseline * GRID}, budget={-budget * GRID})")
    with suite.check("leaves its input unchanged", hint="do not write into curve"):
        p = d.integer(10, 38)
        baseline, budget = setting(p)
        expect_unchanged(fn, _curve(d, p, d.integer(p // 2, p - 2), baseline - budget, dips=2), baseline * GRID,
                         budget * GRID, what="products_within_budget")
    suite.finish()


# ----------------------------------------------------------------------------------------------- allocation
def _objective(sensitivities: torch.Tensor, bits: Sequence[int], choices: Sequence[int]) -> float:
    columns = [list(choices).index(b) for b in bits]
    return float(sensitivities.to(torch.float64)[torch.arange(len(columns)), torch.tensor(columns)].sum())


def _brute_force(sensitivities: torch.Tensor, costs: Sequence[int], budget: int, choices: Sequence[int]) -> float:
    """The least Σ sensitivities[p, c_p] over every allocation within the budget (C^P of them)."""
    sens = sensitivities.to(torch.float64)
    columns = torch.tensor(list(itertools.product(range(len(choices)), repeat=len(costs))))          # [C^P, P]
    spent = (torch.tensor(choices)[columns] * torch.tensor(costs)).sum(dim=1)
    total = sens[torch.arange(len(costs)), columns].sum(dim=1)
    return float(total[spent <= budget].min())


def _problem(d, p: int, choices: Sequence[int], unit: int = 1) -> tuple[torch.Tensor, list[int]]:
    """(sensitivities float32 [p, C], costs [p]): accuracy drops that grow as bits shrink (small, sometimes negative,
    at the widest choice), costs = unit × small ints (multiplies)."""
    order = sorted(range(len(choices)), key=lambda c: -choices[c])     # widest first
    sens = torch.zeros(p, len(choices))
    level = d.rand(p, low=-0.004, high=0.004)
    for c in order:
        sens[:, c] = level
        level = level + d.rand(p, low=0.0, high=0.08) * d.rand(p).pow(2)
    costs = [unit * v for v in d.randint(1, 41, (p,)).tolist()]
    return sens, costs


def _budget_between(d, costs: Sequence[int], choices: Sequence[int]) -> int:
    low, high = sum(costs) * min(choices), sum(costs) * max(choices)
    return d.integer(low, high)


def _allocation_tolerance(sensitivities: torch.Tensor) -> float:
    return 1e-6 * float(sensitivities.abs().sum()) + 1e-12


def check_allocate_bits(fn) -> None:
    suite = CheckSuite("allocate_bits", CONTRACT)
    d = suite.draw

    def call(sensitivities, costs, budget, choices=None):
        args = (sensitivities, costs, budget) + (() if choices is None else (choices,))
        what, inputs = suite.label(*args)
        return fn(*args), what, inputs

    def expect_allocation(got, sensitivities, costs, budget, choices, optimum, what, inputs):
        choices = list(choices)
        expect_length(got, len(costs), what, inputs=inputs)
        for index, item in enumerate(got):
            if type(item) is not int or item not in choices:
                raise AssertionError(f"{what}[{index}]: expected a Python int in choices {tuple(choices)}, got "
                                     f"{type(item).__name__} {item!r}")
        spent = sum(c * b for c, b in zip(costs, got, strict=True))
        if spent > budget:
            raise AssertionError(f"{what}: returned bits {list(got)} spend Σ costs·bits = {spent} > budget {budget}")
        value = _objective(sensitivities, got, choices)
        if value > optimum + _allocation_tolerance(sensitivities):
            raise AssertionError(f"{what}: returned bits {list(got)} (Σ costs·bits = {spent} ≤ {budget}) have a "
                                 f"summed sensitivity of {value:.6g}, but the best allocation within the budget "
                                 f"has {optimum:.6g}")

    def optimal(sensitivities, costs, budget, choices=None):
        got, what, inputs = call(sensitivities, costs, budget, choices)
        picked = (8, 4, 2) if choices is None else choices
        expect_allocation(got, sensitivities, costs, budget, picked,
                          _brute_force(sensitivities, costs, budget, picked), what, inputs)

    with suite.check("optimal: the least summed sensitivity within the budget (brute force over every allocation "
                     "of small problems)",
                     hint="a multiple-choice knapsack: dynamic programming over the capacity (weights costs·bits "
                          "divided by their gcd), keeping for every capacity the least total sensitivity, then "
                          "backtracking the choices; greedy choices are not optimal"):
        for _ in range(4):
            sens, costs = _problem(d, d.integer(4, 6), (8, 4, 2), unit=d.choice([1, 7, 64]))
            optimal(sens, costs, _budget_between(d, costs, (8, 4, 2)))
    with suite.check("beats greedy: one wide product against many narrow ones",
                     hint="lowering the product with the smallest sensitivity per saved multiply first is not "
                          "optimal: compare whole allocations (dynamic programming), not one step at a time"):
        for _ in range(2):
            small = d.integer(4, 5)
            unit = d.integer(1, 9)
            sens = torch.zeros(small + 1, 3)
            sens[:, 1] = d.rand(small + 1, low=0.003, high=0.005)
            sens[0, 1] = d.uniform(0.05, 0.06)                       # the wide product: its 4 bits cost the most
            sens[:, 2] = 0.5 + d.rand(small + 1)                     # 2 bits: far too costly
            sens[:, 0] = d.rand(small + 1, low=-0.001, high=0.001)
            costs = [10 * unit] + [unit] * small
            budget = sum(costs) * 8 - 40 * unit                      # saving 40·unit: the wide product at 4 bits
            perm = d.permutation(small + 1).tolist()
            optimal(sens[perm], [costs[i] for i in perm], budget)
    with suite.check("exactly the minimum budget Σ costs·min(choices): every product at the lowest bits",
                     hint="the budget is inclusive (Σ costs·bits <= budget): at the minimum only the all-lowest "
                          "allocation fits"):
        sens, costs = _problem(d, d.integer(4, 12), (8, 4, 2), unit=d.choice([1, 3, 64]))
        got, what, inputs = call(sens, costs, sum(costs) * 2)
        expect_equal(list(got) if isinstance(got, (list, tuple)) else got, [2] * len(costs), what, inputs=inputs)
    with suite.check("a budget that affords everything: each product at its least costly choice (which may be "
                     "below the widest when its sensitivity there is negative)",
                     hint="minimize the summed sensitivity, do not maximize the bits: with budget >= Σ costs·max("
                          "choices) each product takes the choice with its smallest sensitivity"):
        sens, costs = _problem(d, d.integer(5, 12), (8, 4, 2))
        flip = d.sample(list(range(len(costs))), 2)
        sens[flip, 1] = sens[flip, 0] - d.rand(2, low=0.001, high=0.01)
        for budget in (sum(costs) * 8, sum(costs) * 8 + d.integer(1, 1000)):
            got, what, inputs = call(sens, costs, budget)
            expect_allocation(got, sens, costs, budget, (8, 4, 2), float(sens.double().min(dim=1).values.sum()),
                              what, inputs)
    with suite.check("other choices, in any order: (4, 8), (2, 3, 4, 6), (16, 8, 4, 2)",
                     hint="use the choices argument: sensitivities[:, c] belongs to choices[c], whatever their order "
                          "and number"):
        for choices in ((4, 8), (2, 3, 4, 6), (16, 8, 4, 2)):
            order = d.permutation(len(choices)).tolist()
            picked = tuple(choices[i] for i in order)
            sens, costs = _problem(d, d.integer(3, 5), picked, unit=d.choice([1, 5]))
            optimal(sens, costs, _budget_between(d, costs, picked), list(picked))
    with suite.check("TinyViT-sized: 38 products with a ViT's multiply counts (large costs with a common factor)",
                     hint="divide the weights costs·bits by their gcd before the dynamic program, so that the "
                          "capacity axis stays small; vectorize over it"):
        sens, costs = _vit_problem(d)
        budget = d.integer(2 * sum(costs), 5 * sum(costs))          # between all at INT2 and most at INT4
        got, what, inputs = call(sens, costs, budget)
        reference = REF["allocate_bits"](sens, costs, budget)
        expect_allocation(got, sens, costs, budget, (8, 4, 2), _objective(sens, reference, (8, 4, 2)), what, inputs)
    with suite.check("one product, one choice; sensitivities as nested lists or float64, costs as an int64 tensor",
                     hint="P = 1 and C = 1 are ordinary cases; accept any [P, C] numbers and [P] positive ints"):
        sens, costs = _problem(d, 1, (8, 4, 2), unit=d.integer(1, 50))
        optimal(sens, costs, _budget_between(d, costs, (8, 4, 2)))
        width = d.choice([8, 4])
        sens, costs = _problem(d, d.integer(3, 6), (width,))
        optimal(sens, costs, sum(costs) * width + d.integer(0, 5), [width])
        sens, costs = _problem(d, d.integer(4, 6), (8, 4, 2))
        budget = _budget_between(d, costs, (8, 4, 2))
        best = _brute_force(sens, costs, budget, (8, 4, 2))
        got, what, inputs = call(sens.double().tolist(), torch.tensor(costs), budget)
        expect_allocation(got, sens, costs, budget, (8, 4, 2), best, what, inputs)
        got, what, inputs = call(sens.double(), costs, budget)
        expect_allocation(got, sens, costs, budget, (8, 4, 2), best, what, inputs)
    with suite.check("refuses an infeasible budget (below Σ costs·min(choices), and 0) with a ValueError that states "
                     "the minimum budget",
                     hint="raise ValueError(f'... needs at least {minimum} ...') with minimum = sum(costs) * "
                          "min(choices): the student reading it must learn what budget would work"):
        sens, costs = _problem(d, d.integer(4, 12), (8, 4, 2), unit=d.integer(1, 9))
        minimum = sum(costs) * 2
        for budget in (minimum - d.integer(1, min(50, minimum)), 0):
            error = expect_raises(ValueError, fn, sens, costs, budget,
                                  what=f"allocate_bits(sensitivities, costs, budget={budget}) (the minimum is "
                                       f"{minimum})")
            if not any(text in str(error) for text in (str(minimum), f"{minimum:,}", f"{minimum:_}")):
                raise AssertionError(f"allocate_bits(sensitivities, costs, budget={budget}) raised ValueError("
                                     f"{str(error)!r}): the message must state the minimum budget {minimum}")
    with suite.check("rejects mismatched shapes, non-positive or non-integer costs, bad choices and a negative "
                     "budget (ValueError)",
                     hint="ValueError unless sensitivities is [P, len(choices)], costs are P positive ints, choices "
                          "are distinct positive ints and budget >= 0"):
        sens, costs = _problem(d, d.integer(4, 8), (8, 4, 2))
        budget = sum(costs) * 8
        cases = [((sens, costs[:-1], budget), "costs with P − 1 entries"),
                 ((sens[:, :2], costs, budget), "sensitivities with 2 columns for 3 choices"),
                 ((sens, [0] + costs[1:], budget), "a cost of 0"),
                 ((sens, [-costs[0]] + costs[1:], budget), "a negative cost"),
                 ((sens, [costs[0] + 0.5] + costs[1:], budget), "a cost of 1.5 multiplies"),
                 ((sens, costs, budget, ()), "choices=()"),
                 ((sens, costs, budget, (8, 4, 4)), "choices=(8, 4, 4)"),
                 ((sens, costs, budget, (8, 4, 0)), "choices=(8, 4, 0)"),
                 ((sens, costs, -d.integer(1, 100)), "a negative budget")]
        for args, label in cases:
            expect_raises(ValueError, fn, *args, what=f"allocate_bits({label})")
    with suite.check("leaves its inputs unchanged", hint="do not write into sensitivities or costs"):
        sens, costs = _problem(d, d.integer(4, 8), (8, 4, 2))
        expect_unchanged(fn, sens, torch.tensor(costs), _budget_between(d, costs, (8, 4, 2)), what="allocate_bits")
    suite.finish()


def _vit_problem(d) -> tuple[torch.Tensor, list[int]]:
    """38 products in TinyViT's order (patch embedding, 6 blocks × qkv / q·kᵀ / attn·v / proj / fc1 / fc2, head)
    with the multiply counts of one image (16 patches of 49 pixels + a class token, MLP ratio 2) for a drawn width
    and head count, and drawn sensitivities (float32 [38, 3])."""
    dim, heads, tokens = d.choice([32, 48, 64]), d.choice([2, 4]), 17
    hidden, width = 2 * dim, dim // heads
    count = REF["multiply_count"]
    block = [count((tokens, dim), (dim, 3 * dim)), count((heads, tokens, width), (heads, width, tokens)),
             count((heads, tokens, tokens), (heads, tokens, width)), count((tokens, dim), (dim, dim)),
             count((tokens, dim), (dim, hidden)), count((tokens, hidden), (hidden, dim))]
    costs = [count((tokens - 1, 49), (49, dim))] + block * 6 + [count((1, dim), (dim, 10))]
    sens, _ = _problem(d, len(costs), (8, 4, 2))
    return sens, costs


__all__ = [name for name in dir() if name.startswith("check_")] + ["CONTRACT"]
