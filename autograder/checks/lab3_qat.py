"""Hidden checks for Lab 3 — quantization-aware training: the STE, learned ranges (LSQ, LSQ+, PACT), BN folding.

These run on the trusted side only: each ``check_<name>(fn)`` receives a proxy of the student's function,
calls it with plain data, and compares what comes back with lowbit's reference (computed here, in the
grader's process). Gradients are graded too: :func:`call_with_gradients` asks the sandbox for the result
*and* the gradients of ⟨upstream, result⟩ with respect to named inputs, computed inside the sandbox; the
upstream gradient is drawn from the course secret like every other input, and the expected gradients come
from the reference (and, where the lab says so, from torch's own fake-quant ops) with the same upstream.

Scales and steps are drawn as powers of two where the check is about a rounding decision (ties, clip
boundaries): then ``x / S`` and ``x · (1/S)`` agree bit for bit and every boundary value is exact, so a correct
answer written either way passes, and a mistake at the boundary fails on every draw. Scalar gradients
(a shared step, α, a zero point) are sums over many values: where a mistake changes a few terms, the
upstream gradient of those checks is drawn positive so that the changed terms cannot cancel.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from autograder.checks._api import (CheckSuite, call_with_gradients, expect_close, expect_dtype, expect_equal,
                                    expect_gradients, expect_length, expect_raises, expect_shape, expect_unchanged,
                                    summed_tolerance)
from autograder.contract import load_contract

#: Graded functions, their signatures and references: ``lab3_qat.contract.json``.
CONTRACT = load_contract("lab3_qat")
#: Forward values of fake quantization: exact up to float32 rounding of one product.
VALUE_TOL = {"rtol": 1e-6, "atol": 1e-7}
#: Elementwise gradients (upstream · mask): exact up to one rounding of S · (1/S).
MASK_TOL = {"rtol": 1e-6, "atol": 1e-7}
#: BN folding and statistics: float32 arithmetic on values of order 1.
PAIR_TOL = {"rtol": 1e-5, "atol": 1e-6}
#: Gradients of float16 / bfloat16 inputs (the student may compute in either precision).
HALF_TOL = {"rtol": 1e-2, "atol": 1e-2}


def _reference(function: str) -> Callable:
    return CONTRACT.reference(function)


# ----------------------------------------------------------------------------------------------- part 1
def check_ste_round(fn) -> None:
    suite = CheckSuite("ste_round", CONTRACT)
    d = suite.draw
    n = d.size(200)
    x = d.normal(n, std=d.uniform(2.0, 6.0))

    def exact(x):
        what, inputs = suite.label(x)
        expect_equal(fn(x), torch.round(x), what, inputs=inputs)

    with suite.check("forward is round(x)", hint="torch.round(x): the value must be the rounded one"):
        exact(x)
        exact(d.normal(d.integer(2, 4), d.integer(3, 6), d.integer(2, 5), std=3.0))
    with suite.check("rounds half to even", hint="torch.round rounds exact halves to the even integer"):
        halves = d.randint(-50, 50, (d.integer(10, 30),)).float() + 0.5
        exact(d.mix(torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5]), halves))
    with suite.check("gradient passes through unchanged (straight-through)",
                     hint="(torch.round(x) - x).detach() + x: the backward pass sees the identity"):
        wide = d.mix(torch.tensor([-1000.0, -3.5, 0.0, 0.5, 2.0, 1000.0]), x * d.uniform(1.0, 50.0))
        upstream = d.normal(wide.numel())
        expect_gradients(fn, None, wide, wrt=[0], upstream=upstream, suite=suite, value_tolerance=VALUE_TOL,
                         expected=(torch.round(wide), [upstream]))
    with suite.check("keeps the dtype and shape (float16, bfloat16, float64)"):
        for dtype in (torch.float16, torch.bfloat16, torch.float64):
            values = d.mix(torch.tensor([-1.5, 0.5, 2.5]), d.normal(d.integer(20, 40), std=4.0)).to(dtype)
            exact(values)
            upstream = d.normal(values.numel()).to(dtype)
            expect_gradients(fn, None, values, wrt=[0], upstream=upstream, suite=suite, value_tolerance=VALUE_TOL,
                             expected=(torch.round(values), [upstream]))
            what, inputs = suite.label(values)
            expect_dtype(fn(values), dtype, what, inputs=inputs)
    with suite.check("rejects bad input", hint="TypeError for a non-float tensor; ValueError for an empty one"):
        expect_raises(TypeError, fn, d.randint(-5, 5, (d.integer(3, 9),)), what="ste_round(an int64 tensor)")
        expect_raises(ValueError, fn, torch.zeros(0), what="ste_round(an empty tensor)")
    with suite.check("leaves its input unchanged"):
        expect_unchanged(fn, d.normal(d.size(50), std=3.0), what="ste_round")
    suite.finish()


def _torch_fake_quantize(x: torch.Tensor, scale: float | torch.Tensor, zero_point: int | torch.Tensor, bits: int,
                         signed: bool) -> torch.Tensor:
    """torch's own clipped-STE fake quantization (per tensor, or per channel along dim 0)."""
    q_min, q_max = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    if isinstance(scale, torch.Tensor) and scale.numel() > 1:
        return torch.fake_quantize_per_channel_affine(x, scale.reshape(-1).float(), zero_point.reshape(-1).int(), 0,
                                                      q_min, q_max)
    return torch.fake_quantize_per_tensor_affine(x, float(scale), int(zero_point), q_min, q_max)


def check_fake_quantize_ste(fn) -> None:
    suite = CheckSuite("fake_quantize_ste", CONTRACT)
    d = suite.draw

    def compare(x, scale, zero_point, bits, *signed, upstream=None, torch_too=False):
        upstream = d.normal(*x.shape) if upstream is None else upstream
        args = (x, scale, zero_point, bits, *signed)
        expect_gradients(fn, _reference(suite.function), *args, wrt=[0], upstream=upstream, suite=suite,
                         value_tolerance=VALUE_TOL, tolerances=[MASK_TOL])
        if torch_too:
            expected = call_with_gradients(_torch_fake_quantize, x, scale, zero_point, bits, *(signed or (True,)),
                                           wrt=[0], upstream=upstream)
            expect_gradients(fn, None, *args, wrt=[0], upstream=upstream, suite=suite, value_tolerance=VALUE_TOL,
                             tolerances=[MASK_TOL], expected=expected)

    def levels(bits, signed):
        return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)

    scale = d.power_of_two(3, 6)
    x = d.rand(d.size(200), low=-150 * scale, high=150 * scale)   # some beyond ±128 S: clipped
    with suite.check("basic signed 8-bit values"):
        compare(x, scale, 0, 8)
    with suite.check("rounds half to even", hint="torch.round rounds exact halves to the even integer"):
        halves = (d.randint(-60, 60, (d.integer(10, 30),)).float() + 0.5) * scale
        compare(d.mix(torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5]) * scale, halves), scale, 0, 8)
    with suite.check("adds the zero point after rounding", hint="q = round(x / S) + Z, not round(x / S + Z)"):
        halves = (d.randint(-40, 40, (d.integer(10, 30),)).float() + 0.5) * scale
        ties = d.mix(torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5]) * scale, halves)
        compare(ties, scale, d.choice([-7, -5, -3, -1, 1, 3, 5, 7]), 8)
        compare(ties, scale, d.choice([101, 115, 127, 131, 141]), 8, False)
    with suite.check("clamps to [q_min, q_max]", hint="clamp(round(x / S) + Z, q_min, q_max), then subtract Z"):
        far = d.mix(torch.tensor([-1000.0, -129.0, 128.0, 1000.0]),
                    d.rand(d.size(20), low=-400, high=400)) * scale
        compare(far, scale, 0, 8)
        compare(far, scale, d.integer(-6, 6), 4)
        compare(far, scale, d.integer(1, 40), 8, False)
    with suite.check("gradient is 0 where the value is clipped (clipped STE)",
                     hint="the gradient passes only where round(x / S) + Z lies in [q_min, q_max]"):
        bits = d.integer(2, 8)
        q_min, q_max = levels(bits, True)
        wide = d.rand(d.size(150), low=(q_min - 20) * scale, high=(q_max + 20) * scale)
        compare(wide, scale, 0, bits, torch_too=True)
    with suite.check("x exactly on a clip boundary: both bounds are inside",
                     hint="inside means q_min <= round(x / S) + Z <= q_max, both bounds included, decided on the "
                          "rounded value"):
        for bits, signed in ((8, True), (d.integer(2, 7), True), (8, False), (d.integer(2, 7), False)):
            q_min, q_max = levels(bits, signed)
            zero_point = d.integer(q_min // 2, q_max // 2) if signed else d.integer(0, q_max // 2)
            low, high = q_min - zero_point, q_max - zero_point          # x / S at the bounds
            edges = torch.tensor([low, high, low - 0.3, high + 0.3, low - 0.5, high + 0.5, low - 0.7, high + 0.7,
                                  low + 0.5, high - 0.5, low - 1.0, high + 1.0]) * scale
            drawn = (d.rand(d.size(30), low=low - 3, high=high + 3) * 4).round() / 4 * scale   # quarters
            compare(d.mix(edges, drawn), scale, zero_point, bits, signed, torch_too=True)
    with suite.check("gradient equals torch.fake_quantize_per_tensor_affine's"):
        for signed in (True, False):
            bits = d.integer(2, 8)
            q_min, q_max = levels(bits, signed)
            zero_point = d.integer(q_min, q_max)
            values = d.rand(d.size(120), low=(q_min - zero_point - 8) * scale, high=(q_max - zero_point + 8) * scale)
            compare(values, scale, zero_point, bits, signed, torch_too=True)
    with suite.check("every bit width from 2 to 8, signed and unsigned"):
        for bits in range(2, 9):
            for signed in (True, False):
                q_min, q_max = levels(bits, signed)
                step = d.power_of_two(0, 3) * 4 / 2**bits
                values = d.rand(d.size(40), low=(q_min - 3) * step, high=(q_max + 3) * step)
                compare(values, step, 0 if signed else 2 ** (bits - 1), bits, signed)
    with suite.check("per-channel scale and zero point tensors broadcast"):
        channels = d.integer(3, 6)
        w = d.normal(channels, d.integer(2, 4), 3, 3, std=0.5)
        scales = torch.tensor([d.power_of_two(3, 7) for _ in range(channels)]).reshape(-1, 1, 1, 1)
        zero_points = d.randint(-20, 20, (channels, 1, 1, 1))
        compare(w, scales, zero_points, 8, torch_too=True)
        compare(w, scales, zero_points.abs() * 3, 8, False, torch_too=True)
    with suite.check("float32 output for float16, bfloat16 and float64 inputs",
                     hint="compute in float32 (x.float() / scale) and return float32"):
        for dtype in (torch.float16, torch.bfloat16, torch.float64):
            values = (d.randint(-600, 600, (d.size(60),)).float() / 4 * scale).to(dtype)   # exact in every dtype
            what, inputs = suite.label(values, scale, 0, 8)
            expect_dtype(fn(values, scale, 0, 8), torch.float32, what, inputs=inputs)
            expect_gradients(fn, _reference(suite.function), values, scale, 0, 8, wrt=[0],
                             upstream=d.normal(values.numel()).to(dtype), suite=suite, value_tolerance=VALUE_TOL,
                             tolerances=[HALF_TOL])
    with suite.check("rejects bad input",
                     hint="TypeError for a non-float x; ValueError for an empty x, a scale <= 0 or bits outside 1..32"):
        good = d.normal(d.size(10))
        expect_raises(TypeError, fn, d.randint(-9, 9, (5,)), scale, 0, 8, what="fake_quantize_ste(an int64 x, ...)")
        expect_raises(ValueError, fn, torch.zeros(0), scale, 0, 8, what="fake_quantize_ste(an empty x, ...)")
        for bad in (0.0, -scale):
            expect_raises(ValueError, fn, good, bad, 0, 8,
                          what=f"fake_quantize_ste(x, scale={bad}, zero_point=0, bits=8)")
        expect_raises(ValueError, fn, good, torch.tensor([[scale], [0.0]]), torch.zeros(2, 1), 8,
                      what="fake_quantize_ste(x, scale with a 0 entry, ...)")
        expect_raises(ValueError, fn, good, scale, 0, 0, what="fake_quantize_ste(x, scale, zero_point=0, bits=0)")
    with suite.check("leaves its input unchanged"):
        expect_unchanged(fn, d.normal(d.size(40)), scale, 0, 8, what="fake_quantize_ste")
    suite.finish()


# ----------------------------------------------------------------------------------------------- part 2
def check_lsq_grad_scale(fn) -> None:
    suite = CheckSuite("lsq_grad_scale", CONTRACT)
    d = suite.draw
    ref = _reference("lsq_grad_scale")

    def compare(*args):
        what, _ = suite.label(*args)
        expect_close(fn(*args), ref(*args), what, rtol=1e-9, atol=0)

    with suite.check("g = 1 / sqrt(N · Q_P), signed Q_P = 2^(b-1) - 1",
                     hint="Q_P is the largest positive level, 2^(b-1) - 1 for signed (not 2^(b-1))"):
        for bits in range(2, 9):
            compare(d.integer(1, 100000), bits, True)
        compare(d.integer(2, 50), 2, True)
    with suite.check("unsigned: Q_P = 2^b - 1", hint="unsigned levels go up to 2^b - 1"):
        for bits in range(1, 9):
            compare(d.integer(1, 100000), bits, False)
    with suite.check("signed is the default"):
        n, bits = d.integer(10, 5000), d.integer(2, 8)
        what, _ = suite.label(n, bits)
        expect_close(fn(n, bits), ref(n, bits, True), what, rtol=1e-9, atol=0)
    with suite.check("one value per step: N = 1"):
        compare(1, d.integer(2, 8), True)
        compare(1, d.integer(1, 8), False)
    with suite.check("returns a Python float"):
        n, bits = d.integer(1, 1000), d.integer(2, 8)
        got = fn(n, bits)
        assert type(got) is float, \
            f"lsq_grad_scale(num_elements={n}, bits={bits}) returned {type(got).__name__} {got!r}: expected a float"
    with suite.check("rejects bad input",
                     hint="ValueError for num_elements < 1, bits outside 1..32 and signed 1-bit (Q_P = 0)"):
        expect_raises(ValueError, fn, 0, 4, what="lsq_grad_scale(num_elements=0, bits=4)")
        expect_raises(ValueError, fn, -d.integer(1, 100), 4, what="lsq_grad_scale(num_elements < 0, bits=4)")
        expect_raises(ValueError, fn, d.integer(1, 100), 1, True,
                      what="lsq_grad_scale(num_elements, bits=1, signed=True)")
        expect_raises(ValueError, fn, d.integer(1, 100), 0, False, what="lsq_grad_scale(num_elements, bits=0)")
        expect_raises((ValueError, TypeError), fn, 2.5, 4, what="lsq_grad_scale(num_elements=2.5, bits=4)")
    suite.finish()


def check_lsq_init_step(fn) -> None:
    suite = CheckSuite("lsq_init_step", CONTRACT)
    d = suite.draw

    def compare(x, bits, *signed, tolerance=None):
        what, inputs = suite.label(x, bits, *signed)
        got = fn(x, bits, *signed)
        expect_close(got, _reference("lsq_init_step")(x, bits, *signed), what, inputs=inputs,
                     **(tolerance or {"rtol": 1e-5, "atol": 0}))

    w = d.heavy_tailed(d.size(1000)) + d.uniform(-0.02, 0.02)
    with suite.check("2 · mean(|x|) / sqrt(Q_P)",
                     hint="the mean of the absolute values, times 2, over sqrt(Q_P) with Q_P = 2^(b-1) - 1"):
        for bits in (2, 3, 4, 8, d.integer(5, 7)):
            compare(w, bits)
        compare(d.normal(d.size(300), std=d.uniform(0.5, 2.0)), d.integer(2, 8))
    with suite.check("unsigned: Q_P = 2^b - 1", hint="unsigned levels go up to 2^b - 1"):
        activations = torch.relu(d.normal(d.size(500), std=d.uniform(0.5, 3.0)))
        for bits in (1, 2, 4, 8, d.integer(3, 7)):
            compare(activations, bits, False)
    with suite.check("any shape: a conv weight"):
        compare(d.normal(d.integer(4, 8), d.integer(2, 4), 3, 3, std=0.1), d.integer(2, 8))
    with suite.check("returns a 0-d float32 tensor", hint="one step for the whole tensor: shape (), dtype float32"):
        for dtype in (torch.float32, torch.float64, torch.float16):
            values = d.normal(d.integer(3, 6), d.integer(3, 6)).to(dtype)
            what, inputs = suite.label(values, 4)
            got = fn(values, 4)
            expect_dtype(got, torch.float32, what, inputs=inputs)
            expect_shape(got, (), what, inputs=inputs)
    with suite.check("float16 and bfloat16 inputs"):
        for dtype in (torch.float16, torch.bfloat16):
            compare(d.heavy_tailed(d.size(400)).to(dtype), d.integer(2, 8), tolerance={"rtol": 1e-3, "atol": 0})
    with suite.check("rejects bad input", hint="ValueError for an all-zero or empty x and signed 1-bit; "
                                               "TypeError for a non-float x"):
        expect_raises(ValueError, fn, torch.zeros(d.integer(3, 20)), 4, what="lsq_init_step(an all-zero x, bits=4)")
        expect_raises(ValueError, fn, torch.zeros(0), 4, what="lsq_init_step(an empty x, bits=4)")
        expect_raises(ValueError, fn, d.normal(10), 1, True, what="lsq_init_step(x, bits=1, signed=True)")
        expect_raises(TypeError, fn, d.randint(-5, 5, (10,)), 4, what="lsq_init_step(an int64 x, bits=4)")
    with suite.check("leaves its input unchanged"):
        expect_unchanged(fn, d.normal(d.size(60)), 4, what="lsq_init_step")
    suite.finish()


def _mass(upstream: torch.Tensor, v: torch.Tensor, low: float | torch.Tensor, high: float | torch.Tensor,
          scale: float | torch.Tensor = 1.0) -> float:
    """The total size of a summed step gradient's terms: |upstream| · (1/2 inside, the bound's size outside)."""
    inside = (v >= low) & (v <= high)
    bound = torch.maximum(torch.as_tensor(low).abs(), torch.as_tensor(high).abs())
    return float((upstream.abs() * torch.where(inside, 0.5, bound.to(v.dtype)) * scale).sum())


def check_lsq_fake_quantize(fn) -> None:
    suite = CheckSuite("lsq_fake_quantize", CONTRACT)
    d = suite.draw

    def q_range(bits, signed):
        return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)

    def compare(x, step, bits, *signed, grad_scale=None, upstream=None, only=None):
        upstream = d.normal(*x.shape) if upstream is None else upstream
        q_min, q_max = q_range(bits, *(signed or (True,)))
        g = grad_scale if grad_scale is not None else \
            1 / math.sqrt(max(1, x.numel() // step.numel()) * q_max)
        mass = _mass(upstream, x / step, q_min, q_max) * g
        kwargs = {} if grad_scale is None else {"grad_scale": grad_scale}
        expect_gradients(fn, _reference(suite.function), x, step, bits, *signed, wrt=[0, 1], upstream=upstream,
                         suite=suite, value_tolerance=VALUE_TOL, tolerances=[MASK_TOL, summed_tolerance(mass)],
                         only=only, **kwargs)

    def codes(bits, signed, n, margin):
        """Values of x / s: quarters from q_min - margin to q_max + margin (exact halves among them)."""
        q_min, q_max = q_range(bits, signed)
        return (d.rand(n, low=q_min - margin, high=q_max + margin) * 4).round() / 4

    step = torch.tensor(d.power_of_two(2, 6))
    with suite.check("forward: round(clamp(x / s, -Q_N, Q_P)) · s"):
        bits = d.integer(3, 5)
        compare(codes(bits, True, d.size(200), 4) * step + d.uniform(-0.1, 0.1) * step, step, bits)
        compare(d.normal(d.size(300)) * 0.1, torch.tensor(d.uniform(0.005, 0.05)), 8)
    with suite.check("rounds half to even", hint="torch.round rounds exact halves to the even integer"):
        halves = d.randint(-6, 6, (d.integer(10, 20),)).float() + 0.5
        compare(d.mix(torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5]), halves) * step, step, 4)
    with suite.check("x gradient: the upstream gradient inside the range, 0 outside",
                     hint="dy/dx = 1 where -Q_N <= x / s <= Q_P, else 0"):
        bits = d.integer(2, 6)
        compare(codes(bits, True, d.size(200), 10) * step, step, bits, only=[0])
    with suite.check("x exactly on a clip boundary: both bounds are inside, decided on x / s",
                     hint="inside means -Q_N <= x / s <= Q_P (both included), before rounding"):
        for bits, signed in ((d.integer(2, 8), True), (d.integer(2, 8), False)):
            q_min, q_max = q_range(bits, signed)
            edges = torch.tensor([q_min, q_max, q_min - 0.25, q_max + 0.25, q_min - 0.5, q_max + 0.5, q_min + 0.25,
                                  q_max - 0.25, q_min - 2.0, q_max + 2.0]).float()
            values = d.mix(edges, codes(bits, signed, d.size(30), 2)) * step
            compare(values, step, bits, signed, grad_scale=1.0, upstream=d.positive(values.numel()))
    with suite.check("step gradient inside the range: round(v) - v",
                     hint="d(round(v) · s)/ds = round(v) - v with v = x / s (straight-through round)"):
        bits = d.integer(3, 8)
        q_min, q_max = q_range(bits, True)
        inside = (d.rand(d.size(150), low=q_min, high=q_max) * 8).round() / 8 * step   # eighths: round(v) - v ≠ 0
        compare(inside, step, bits, grad_scale=1.0, only=[1])
        compare(inside, step, bits, grad_scale=1.0, upstream=d.positive(inside.numel()), only=[1])
    with suite.check("step gradient below the range is -Q_N, above it Q_P",
                     hint="clipped values: y = -Q_N · s or Q_P · s, so dy/ds = -Q_N or Q_P (mind the sign below)"):
        for signed in (True, False):
            bits = d.integer(2, 8)
            q_min, q_max = q_range(bits, signed)
            below = d.rand(d.size(30), low=q_min - 20, high=q_min - 0.5)
            above = d.rand(d.size(30), low=q_max + 0.5, high=q_max + 20)
            for values in (below * step, above * step, d.mix(below, above) * step):
                compare(values, step, bits, signed, grad_scale=1.0, upstream=d.positive(values.numel()), only=[1])
    with suite.check("default gradient scale g = 1 / sqrt(N · Q_P)",
                     hint="g = lsq_grad_scale(x.numel() / step.numel(), bits, signed): 1/sqrt, not squared, Q_P"):
        for bits, signed in ((2, True), (d.integer(3, 8), True), (d.integer(2, 8), False)):
            values = codes(bits, signed, d.size(200), 3) * step + d.uniform(-0.2, 0.2) * step
            compare(values, step, bits, signed, upstream=d.positive(values.numel()), only=[1])
    with suite.check("grad_scale is used", hint="multiply the step's gradient by grad_scale when it is given"):
        values = codes(4, True, d.size(100), 3) * step
        compare(values, step, 4, grad_scale=d.uniform(0.01, 0.5), upstream=d.positive(values.numel()))
    with suite.check("per-channel steps: N counts the values sharing one step",
                     hint="N = x.numel() / step.numel(); the step gradient is summed per channel"):
        channels = d.integer(3, 6)
        w = d.normal(channels, d.integer(2, 4), 3, 3, std=0.3)
        steps = torch.tensor([d.power_of_two(4, 7) for _ in range(channels)]).reshape(-1, 1, 1, 1)
        compare(w, steps, d.integer(2, 5))
        compare(w, steps, 4, upstream=d.positive(*w.shape))
        rows = d.normal(channels, d.integer(5, 12), std=0.4)
        compare(rows, steps.reshape(-1, 1), 3, False)
    with suite.check("unsigned range [0, 2^b - 1]"):
        bits = d.integer(2, 8)
        compare(codes(bits, False, d.size(150), 6) * step, step, bits, False)
    with suite.check("every bit width from 2 to 8"):
        for bits in range(2, 9):
            compare(codes(bits, True, d.size(60), 3) * step + d.uniform(-0.2, 0.2) * step, step, bits)
    with suite.check("float16 input"):
        values = (codes(4, True, d.size(100), 3) * step).half()                 # exact in float16
        upstream = d.normal(values.numel()).half()
        q_min, q_max = q_range(4, True)
        mass = _mass(upstream.float(), values.float() / step, q_min, q_max) / math.sqrt(values.numel() * q_max)
        expect_gradients(fn, _reference(suite.function), values, step, 4, wrt=[0, 1], upstream=upstream,
                         suite=suite, value_tolerance=HALF_TOL,
                         tolerances=[HALF_TOL, {"rtol": 1e-2, "atol": 1e-3 * mass}])
    with suite.check("rejects step <= 0", hint="raise ValueError when any step is <= 0 (clamp it while training)"):
        x = d.normal(d.size(20))
        for bad in (0.0, -float(step)):
            expect_raises(ValueError, fn, x, torch.tensor(bad), 4, what=f"lsq_fake_quantize(x, step={bad}, bits=4)")
        rows = d.normal(3, 4)
        expect_raises(ValueError, fn, rows, torch.tensor([[0.1], [0.0], [0.2]]), 4,
                      what="lsq_fake_quantize(x [3, 4], step [[0.1], [0.0], [0.2]], bits=4)")
    with suite.check("rejects bad input",
                     hint="TypeError for a non-float x; ValueError for an empty x or signed 1-bit"):
        expect_raises(TypeError, fn, d.randint(-9, 9, (6,)), step, 4,
                      what="lsq_fake_quantize(an int64 x, step, bits=4)")
        expect_raises(ValueError, fn, torch.zeros(0), step, 4, what="lsq_fake_quantize(an empty x, step, bits=4)")
        expect_raises(ValueError, fn, d.normal(8), step, 1, True,
                      what="lsq_fake_quantize(x, step, bits=1, signed=True)")
    with suite.check("leaves its inputs unchanged"):
        expect_unchanged(fn, d.normal(d.size(40)), step.clone(), 4, what="lsq_fake_quantize")
    suite.finish()


def check_lsq_plus_fake_quantize(fn) -> None:
    suite = CheckSuite("lsq_plus_fake_quantize", CONTRACT)
    d = suite.draw

    def compare(x, step, zero_point, bits, *, grad_scale=None, upstream=None, only=None, value=True):
        upstream = d.normal(*x.shape) if upstream is None else upstream
        q_max = 2**bits - 1
        g = grad_scale if grad_scale is not None else 1 / math.sqrt(max(1, x.numel() // step.numel()) * q_max)
        z = torch.round(zero_point)
        v = x / step + z
        step_mass = _mass(upstream, v, 0, q_max) * g + float((upstream.abs() * z.abs()).sum()) * g
        zero_mass = float((upstream.abs() * step).sum()) * g
        kwargs = {} if grad_scale is None else {"grad_scale": grad_scale}
        expect_gradients(fn, _reference(suite.function), x, step, zero_point, bits, wrt=[0, 1, 2], upstream=upstream,
                         suite=suite, value_tolerance=VALUE_TOL, check_value=value, only=only,
                         tolerances=[MASK_TOL, summed_tolerance(step_mass), summed_tolerance(zero_mass)], **kwargs)

    def codes(bits, n, margin):
        """Values of v = x / s + round(z): quarters from -margin to 2^b - 1 + margin."""
        return (d.rand(n, low=-margin, high=2**bits - 1 + margin) * 4).round() / 4

    def fractional_zero(bits):
        """A zero point that is not an integer (0.1..0.4 or 0.6..0.9 from one): rounding it matters."""
        return torch.tensor(d.integer(1, 2 ** (bits - 1)) + d.choice([-1, 1]) * d.uniform(0.1, 0.4))

    step = torch.tensor(d.power_of_two(2, 6))
    with suite.check("z is rounded in the forward pass (straight-through)",
                     hint="z̃ = ste_round(zero_point): round it in the forward pass, pass its gradient through"):
        for bits in (4, 8, d.integer(2, 7)):
            z = fractional_zero(bits)
            compare((codes(bits, d.size(100), 3) - torch.round(z)) * step, step, z, bits)
    with suite.check("clips v = x / s + z̃ to [0, 2^b - 1]",
                     hint="add the zero point before clamping: clamp(x / s + z̃, 0, 2^b - 1)"):
        bits = d.integer(2, 6)
        z = torch.tensor(float(d.integer(1, 2**bits - 2)))
        compare((codes(bits, d.size(150), 8) - z) * step, step, z, bits)
    with suite.check("rounds half to even", hint="torch.round rounds exact halves to the even integer"):
        z = torch.tensor(float(d.choice([3, 5, 7])))
        halves = torch.arange(0, 15).float() + 0.5
        compare((d.mix(halves, d.randint(0, 15, (10,)).float() + 0.5) - z) * step, step, z, 4)
    with suite.check("x gradient: 1 inside (0 <= v <= 2^b - 1, both bounds included), else 0",
                     hint="decide inside on v = x / s + z̃ before rounding, both bounds included"):
        bits = d.integer(2, 8)
        q_max = 2**bits - 1
        z = torch.tensor(float(d.integer(0, q_max)))
        edges = torch.tensor([0.0, q_max, -0.25, q_max + 0.25, -0.5, q_max + 0.5, 0.25, q_max - 0.25])
        compare((d.mix(edges, codes(bits, d.size(40), 3)) - z) * step, step, z, bits, only=[0])
    with suite.check("step gradient: round(v) - v inside, (0 - z̃) below, (2^b - 1 - z̃) above",
                     hint="with y = (round(clamp(v)) - z̃) · s, a clipped value's step gradient is the bound "
                          "minus z̃"):
        for bits in (d.integer(2, 4), d.integer(5, 8)):
            q_max = 2**bits - 1
            z = fractional_zero(bits)
            values = (d.mix(torch.tensor([0.0, q_max, -3.0, q_max + 3.0]), codes(bits, d.size(80), 6) + 0.125)
                      - torch.round(z)) * step
            compare(values, step, z, bits, grad_scale=1.0, only=[1])
            compare(values, step, z, bits, grad_scale=1.0, upstream=d.positive(values.numel()), only=[1])
    with suite.check("zero_point gradient: 0 inside, -s outside",
                     hint="d((round(clamp(v)) - z̃) · s)/dz = s · (1[inside] - 1): -s where v was clipped"):
        bits = d.integer(2, 8)
        z = fractional_zero(bits)
        values = (codes(bits, d.size(120), 8) - torch.round(z)) * step
        compare(values, step, z, bits, grad_scale=1.0, upstream=d.positive(values.numel()), only=[2])
        compare(values, step, z, bits, grad_scale=1.0, only=[2])
    with suite.check("default gradient scale 1 / sqrt(N · (2^b - 1)) on the step and the zero point",
                     hint="g = lsq_grad_scale(N, bits, signed=False): multiply both learned gradients by it"):
        for bits in (2, d.integer(3, 8)):
            z = fractional_zero(bits)
            values = (codes(bits, d.size(200), 6) + 0.125 - torch.round(z)) * step
            compare(values, step, z, bits, upstream=d.positive(values.numel()))
    with suite.check("grad_scale scales the zero point's gradient too",
                     hint="apply grad_scale to zero_point as well as to step"):
        bits = d.integer(2, 8)
        z = fractional_zero(bits)
        values = (codes(bits, d.size(100), 8) - torch.round(z)) * step
        compare(values, step, z, bits, grad_scale=d.uniform(0.02, 0.5), upstream=d.positive(values.numel()),
                only=[2])
    with suite.check("per-channel step and zero point"):
        channels, bits = d.integer(3, 6), d.integer(3, 8)
        rows = d.rand(channels, d.integer(8, 16), low=-0.3, high=1.5)
        steps = torch.tensor([d.power_of_two(3, 6) for _ in range(channels)]).reshape(-1, 1)
        zeros = torch.stack([fractional_zero(bits) for _ in range(channels)]).reshape(-1, 1)
        compare(rows, steps, zeros, bits)
        compare(rows, steps, zeros, bits, upstream=d.positive(*rows.shape))
    with suite.check("every bit width from 2 to 8"):
        for bits in range(2, 9):
            z = torch.tensor(float(d.integer(0, 2**bits - 1)))
            compare((codes(bits, d.size(50), 3) - z) * step, step, z, bits)
    with suite.check("float16 input"):
        z = torch.tensor(3.0)
        values = ((codes(4, d.size(60), 3) - 3) * step).half()
        upstream = d.normal(values.numel()).half()
        expect_gradients(fn, _reference(suite.function), values, step, z, 4, wrt=[0, 1, 2], upstream=upstream,
                         suite=suite, **HALF_TOL)
    with suite.check("rejects step <= 0", hint="raise ValueError when any step is <= 0"):
        x, z = d.rand(d.size(20)), torch.tensor(2.0)
        for bad in (0.0, -float(step)):
            expect_raises(ValueError, fn, x, torch.tensor(bad), z, 4,
                          what=f"lsq_plus_fake_quantize(x, step={bad}, zero_point=2.0, bits=4)")
    with suite.check("rejects bad input", hint="TypeError for a non-float x or zero_point; ValueError for an empty x"):
        expect_raises(TypeError, fn, d.randint(0, 9, (6,)), step, torch.tensor(1.0), 4,
                      what="lsq_plus_fake_quantize(an int64 x, step, zero_point, bits=4)")
        expect_raises(ValueError, fn, torch.zeros(0), step, torch.tensor(1.0), 4,
                      what="lsq_plus_fake_quantize(an empty x, step, zero_point, bits=4)")
        expect_raises(TypeError, fn, d.rand(5), step, torch.tensor(1), 4,
                      what="lsq_plus_fake_quantize(x, step, an int64 zero_point, bits=4)")
    with suite.check("leaves its inputs unchanged"):
        expect_unchanged(fn, d.rand(d.size(40)), step.clone(), torch.tensor(2.3), 4, what="lsq_plus_fake_quantize")
    suite.finish()


def check_pact_quantize(fn) -> None:
    suite = CheckSuite("pact_quantize", CONTRACT)
    d = suite.draw

    def compare(x, alpha, bits, *, upstream=None, only=None, value=True):
        upstream = d.normal(*x.shape) if upstream is None else upstream
        mass = float(upstream.abs().sum())
        expect_gradients(fn, _reference(suite.function), x, alpha, bits, wrt=[0, 1], upstream=upstream, suite=suite,
                         value_tolerance=VALUE_TOL, check_value=value, tolerances=[MASK_TOL, summed_tolerance(mass)],
                         only=only)

    def alpha_for(bits):
        """α = 2^k · (2^b - 1): its step α / (2^b - 1) is a power of two, so the grid is exact."""
        return torch.tensor(d.power_of_two(3, 6) * (2**bits - 1))

    def levels(alpha, bits, n, low=-0.5, high=1.5):
        """Values in [low·α, high·α] on a grid of quarter steps."""
        step = float(alpha) / (2**bits - 1)
        return (d.rand(n, low=low * (2**bits - 1), high=high * (2**bits - 1)) * 4).round() / 4 * step

    with suite.check("clips to [0, alpha] and quantizes with step alpha / (2^b - 1)",
                     hint="2^b levels from 0 to alpha: step = alpha / (2^b - 1)"):
        for bits in (d.integer(2, 4), 8):
            alpha = alpha_for(bits)
            compare(levels(alpha, bits, d.size(150)), alpha, bits)
        alpha = torch.tensor(d.uniform(2.0, 8.0))
        compare(d.normal(d.size(200), std=float(alpha)), alpha, 4)
    with suite.check("rounds half to even", hint="torch.round rounds exact halves to the even integer"):
        bits = 4
        alpha = alpha_for(bits)
        step = float(alpha) / 15
        halves = (torch.arange(0, 15).float() + 0.5) * step
        compare(d.mix(halves, levels(alpha, bits, 20)), alpha, bits)
    with suite.check("x gradient: 1 on (0, alpha], 0 elsewhere (x = 0 gives 0, x = alpha gives 1)",
                     hint="dy/dx = 1 only for 0 < x <= alpha"):
        bits = d.integer(2, 8)
        alpha = alpha_for(bits)
        edges = torch.tensor([0.0, 0.0, float(alpha), float(alpha), -1.0, 2.0 * float(alpha)])
        compare(d.mix(edges, levels(alpha, bits, d.size(60))), alpha, bits, only=[0])
    with suite.check("alpha gradient: 1 where x > alpha, else 0",
                     hint="dy/dalpha = 1 only where x was clipped at alpha (x > alpha), not below it"):
        for bits in (d.integer(2, 4), d.integer(5, 8)):
            alpha = alpha_for(bits)
            step = float(alpha) / (2**bits - 1)
            inside = (d.randint(0, 2**bits - 1, (d.size(30),)).float() + 0.25) * step   # round(v) - v = -1/4
            edges = torch.tensor([float(alpha), float(alpha), 0.0, -1.0])
            for values in (d.mix(edges, inside), d.mix(edges, levels(alpha, bits, d.size(60)))):
                compare(values, alpha, bits, upstream=d.positive(values.numel()), only=[1], value=False)
            compare(levels(alpha, bits, d.size(80)), alpha, bits, only=[1])
    with suite.check("negative inputs give 0 (PACT replaces the ReLU)"):
        alpha = alpha_for(3)
        compare(-d.rand(d.size(30), low=0.01, high=5.0), alpha, 3)
    with suite.check("every bit width from 2 to 8"):
        for bits in range(2, 9):
            alpha = alpha_for(bits)
            compare(levels(alpha, bits, d.size(50)), alpha, bits)
    with suite.check("float16 input"):
        alpha = alpha_for(4)
        values = levels(alpha, 4, d.size(60)).half()
        expect_gradients(fn, _reference(suite.function), values, alpha, 4, wrt=[0, 1],
                         upstream=d.normal(values.numel()).half(), suite=suite, **HALF_TOL)
    with suite.check("rejects alpha <= 0", hint="raise ValueError when alpha <= 0"):
        x = d.normal(d.size(20))
        for bad in (0.0, -d.uniform(0.5, 4.0)):
            expect_raises(ValueError, fn, x, torch.tensor(bad), 4, what=f"pact_quantize(x, alpha={bad:.3g}, bits=4)")
    with suite.check("rejects bad input", hint="TypeError for a non-float x; ValueError for an empty x or bits < 1"):
        alpha = alpha_for(4)
        expect_raises(TypeError, fn, d.randint(0, 9, (6,)), alpha, 4, what="pact_quantize(an int64 x, alpha, bits=4)")
        expect_raises(ValueError, fn, torch.zeros(0), alpha, 4, what="pact_quantize(an empty x, alpha, bits=4)")
        expect_raises(ValueError, fn, d.normal(5), alpha, 0, what="pact_quantize(x, alpha, bits=0)")
    with suite.check("leaves its inputs unchanged"):
        expect_unchanged(fn, d.normal(d.size(40)), alpha_for(4), 4, what="pact_quantize")
    suite.finish()


# ----------------------------------------------------------------------------------------------- part 3
def _expect_pair(suite: CheckSuite, fn: Callable, args: Sequence, names: tuple[str, str],
                 parts: Sequence[int] = (0, 1)) -> None:
    """``fn(*args)`` returns a pair; the items in ``parts`` (called ``names`` in messages) match the reference's."""
    what, inputs = suite.label(*args)
    got = fn(*args)
    expected = _reference(suite.function)(*args)
    expect_length(got, 2, what, inputs=inputs)
    for index in parts:
        expect_close(got[index], expected[index], f"{names[index]} of {what}", inputs=inputs, **PAIR_TOL)


def check_fold_batchnorm(fn) -> None:
    suite = CheckSuite("fold_batchnorm", CONTRACT)
    d = suite.draw
    ref = _reference("fold_batchnorm")

    def bn(channels):
        """(gamma, beta, mean, var) of a BatchNorm with ``channels`` channels; gamma of both signs."""
        return (d.normal(channels, std=0.5, mean=1.0), d.normal(channels, std=0.3), d.normal(channels, std=0.5),
                d.rand(channels, low=0.05, high=2.0))

    def compare(*args, parts=(0, 1)):
        _expect_pair(suite, fn, args, ("the folded weight", "the folded bias"), parts)

    channels = d.integer(4, 10)
    conv = d.normal(channels, d.integer(2, 5), 3, 3, std=0.2)
    with suite.check("folds the weight: w · gamma / sqrt(var + eps) per output channel",
                     hint="scale each output channel (dim 0) by gamma / sqrt(var + eps)"):
        compare(conv, d.normal(channels, std=0.1), *bn(channels), parts=(0,))
    with suite.check("folds the bias: beta + (b - mean) · gamma / sqrt(var + eps)",
                     hint="the bias is shifted by the mean and scaled like the weight, then beta is added"):
        compare(conv, d.normal(channels, std=0.5), *bn(channels), parts=(1,))
    with suite.check("bias None means a bias of 0",
                     hint="treat bias=None as zeros: b' = beta - mean · gamma / sqrt(var + eps)"):
        compare(conv, None, *bn(channels))
    with suite.check("linear weights [C, C_in], also square ones",
                     hint="reshape the per-channel factor to [C, 1, ...] so it multiplies the rows, not the columns"):
        compare(d.normal(channels, d.integer(3, 12), std=0.3), d.normal(channels, std=0.1), *bn(channels))
        compare(d.normal(channels, channels, std=0.3), d.normal(channels, std=0.1), *bn(channels))
    with suite.check("eps inside the square root", hint="gamma / sqrt(var + eps), not gamma / (sqrt(var) + eps)"):
        gamma, beta, mean, _ = bn(channels)
        var = d.mix(torch.tensor([0.0, 1e-4]), d.rand(channels - 2, low=0.0, high=1e-3))
        eps = d.uniform(1e-3, 1e-2)
        compare(conv, d.normal(channels, std=0.1), gamma, beta, mean, var, eps)
        compare(conv, None, gamma, beta, mean, var)
    with suite.check("eps is used (default 1e-5)", hint="eps defaults to 1e-5; pass it on when given"):
        gamma, beta, mean, _ = bn(channels)
        var = d.rand(channels, low=0.0, high=1e-4)
        compare(conv, None, gamma, beta, mean, var, d.uniform(0.01, 0.1))
        compare(conv, None, gamma, beta, mean, var)
    with suite.check("float32 results of the weight's shape and [C]",
                     hint="compute in float32: weight.float(), and return (weight-shaped, [C]) tensors"):
        for dtype in (torch.float16, torch.float64):
            stats = [t.to(dtype) for t in bn(channels)]
            weight, bias = conv.to(dtype), d.normal(channels, std=0.1).to(dtype)
            what, inputs = suite.label(weight, bias, *stats)
            got = fn(weight, bias, *stats)
            expect_length(got, 2, what, inputs=inputs)
            expect_dtype(got[0], torch.float32, f"the folded weight of {what}", inputs=inputs)
            expect_shape(got[0], tuple(conv.shape), f"the folded weight of {what}", inputs=inputs)
            expect_dtype(got[1], torch.float32, f"the folded bias of {what}", inputs=inputs)
            expect_shape(got[1], (channels,), f"the folded bias of {what}", inputs=inputs)
            expect_close(got[0], ref(weight, bias, *stats)[0], f"the folded weight of {what}", inputs=inputs,
                         rtol=2e-3, atol=1e-4)
    with suite.check("rejects statistics of the wrong length", hint="ValueError when gamma/beta/mean/var are not [C]"):
        gamma, beta, mean, var = bn(channels + 1)
        expect_raises(ValueError, fn, conv, None, gamma, beta, mean, var,
                      what=f"fold_batchnorm(weight with {channels} channels, statistics of {channels + 1})")
    with suite.check("leaves its inputs unchanged"):
        expect_unchanged(fn, conv.clone(), d.normal(channels), *bn(channels), what="fold_batchnorm")
    suite.finish()


def check_bn_fold_statistics(fn) -> None:
    suite = CheckSuite("bn_fold_statistics", CONTRACT)
    d = suite.draw
    ref = _reference("bn_fold_statistics")

    def compare(*args, parts=(0, 1)):
        _expect_pair(suite, fn, args, ("the mean", "the variance"), parts)

    def running(channels):
        return d.normal(channels, std=0.3), d.rand(channels, low=0.2, high=2.0)

    def batch(*shape):
        """Conv outputs with a per-channel offset and spread (dim 1 is the channel)."""
        channels = shape[1]
        view = (1, channels) + (1,) * (len(shape) - 2)
        return d.normal(*shape) * d.rand(channels, low=0.3, high=2.0).reshape(view) + \
            d.normal(channels).reshape(view)

    channels = d.integer(3, 8)
    small = batch(d.integer(2, 3), channels, d.integer(2, 3), d.integer(2, 3))   # few values: n / (n - 1) shows
    with suite.check("training: the batch's per-channel mean over N, H and W",
                     hint="reduce over every dim except dim 1 (the channels)"):
        compare(small, *running(channels), True, parts=(0,))
        large = batch(d.integer(4, 8), channels, d.integer(3, 6), d.integer(3, 6))
        compare(large, *running(channels), True, parts=(0,))
    with suite.check("training: the biased variance (divides by the count, like BatchNorm)",
                     hint="torch.var(..., unbiased=False) over N, H, W together: divide by N·H·W, not N·H·W - 1"):
        compare(small, *running(channels), True, parts=(1,))
        compare(batch(d.integer(2, 6), channels), *running(channels), True, parts=(1,))
    with suite.check("training: uses the batch statistics, not the running ones",
                     hint="while training BatchNorm normalises with the batch's statistics"):
        compare(batch(d.integer(4, 8), channels, 4, 4), *running(channels), True)
    with suite.check("eval: returns the running statistics",
                     hint="training=False: return (running_mean, running_var) — the batch is not used"):
        compare(batch(d.integer(4, 8), channels, 4, 4), *running(channels), False)
    with suite.check("linear outputs [N, C]"):
        compare(batch(d.integer(3, 12), channels), *running(channels), True)
        compare(batch(d.integer(3, 12), channels), *running(channels), False)
    with suite.check("float32 [C] results", hint="return float32 tensors of shape [C]"):
        for dtype in (torch.float16, torch.float64):
            out = batch(d.integer(2, 5), channels, 3, 3).to(dtype)
            stats = [t.to(dtype) for t in running(channels)]
            for training in (True, False):
                what, inputs = suite.label(out, *stats, training)
                got = fn(out, *stats, training)
                expect_length(got, 2, what, inputs=inputs)
                for index, part in enumerate(("the mean", "the variance")):
                    expect_dtype(got[index], torch.float32, f"{part} of {what}", inputs=inputs)
                    expect_shape(got[index], (channels,), f"{part} of {what}", inputs=inputs)
                    expect_close(got[index], ref(out, *stats, training)[index], f"{part} of {what}", inputs=inputs,
                                 rtol=1e-3, atol=1e-3)
    with suite.check("rejects running statistics of the wrong length",
                     hint="ValueError when running_mean/running_var are not [C] with C = conv_out.shape[1]"):
        out = batch(2, channels, 3, 3)
        expect_raises(ValueError, fn, out, *running(channels + 1), True,
                      what=f"bn_fold_statistics(conv_out with {channels} channels, running statistics of "
                           f"{channels + 1})")
    with suite.check("leaves its inputs unchanged", hint="do not update running_mean / running_var in place"):
        for training in (True, False):
            expect_unchanged(fn, batch(d.integer(2, 4), channels, 3, 3), *running(channels), training,
                             what="bn_fold_statistics")
    suite.finish()


__all__ = [name for name in dir() if name.startswith("check_")] + ["CONTRACT"]
