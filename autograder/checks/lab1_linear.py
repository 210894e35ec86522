"""Hidden checks for Lab 1 — linear quantization.

These run on the trusted side only: each ``check_<name>(fn)`` receives a proxy of the student's function,
calls it with plain data, and compares what comes back with lowbit's reference (computed here, in the
grader's process). Every named check states what it tests, so that feedback names the mistake.
"""
from __future__ import annotations

import math

import torch

from autograder.checks._api import (CheckSuite, describe, expect_close, expect_dtype, expect_equal, expect_length, expect_raises,
                                    expect_shape)
from autograder.contract import load_contract
from lowbit.quant import granularity as ref_granularity
from lowbit.quant import integer as ref_integer
from lowbit.quant import linear as ref_linear

#: Graded functions, their signatures and references: ``lab1_linear.contract.json``.
CONTRACT = load_contract("lab1_linear")
REF = {name: CONTRACT.reference(name) for name in CONTRACT.graded}


# ----------------------------------------------------------------------------------------------- part 1
def check_quantized_range(fn) -> None:
    suite = CheckSuite("quantized_range", CONTRACT)  # every input (1..32 bits x signed) is checked: none drawn
    with suite.check("signed range for 1 to 32 bits", hint="[-2^(b-1), 2^(b-1) - 1]"):
        for bits in range(1, 33):
            expect_equal(tuple(fn(bits, True)), (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1), f"quantized_range({bits}, signed=True)")
    with suite.check("signed is the default"):
        expect_equal(tuple(fn(8)), (-128, 127), "quantized_range(8)")
    with suite.check("unsigned range for 1 to 32 bits", hint="[0, 2^b - 1]"):
        for bits in range(1, 33):
            expect_equal(tuple(fn(bits, False)), (0, 2**bits - 1), f"quantized_range({bits}, signed=False)")
    with suite.check("returns Python ints"):
        for signed in (True, False):
            got = fn(4, signed)
            expect_length(got, 2, f"quantized_range(4, signed={signed})")
            assert all(type(v) is int for v in got), f"quantized_range(4, signed={signed}) returned {got!r}: expected two Python ints"
    with suite.check("rejects bits out of range", hint="raise ValueError for bits < 1 or bits > 32"):
        for bad in (0, -3, 33):
            expect_raises(ValueError, fn, bad, True, what=f"quantized_range({bad})")
    with suite.check("rejects non-integer bits"):
        expect_raises(ValueError, fn, 4.5, True, what="quantized_range(4.5)")
    suite.finish()


def check_linear_quantize(fn) -> None:
    suite = CheckSuite("linear_quantize", CONTRACT)
    d, ref = suite.draw, REF["linear_quantize"]

    def compare(r, scale, zero_point, bits, *signed):
        what, inputs = suite.label(r, scale, zero_point, bits, *signed)
        expect_equal(fn(r, scale, zero_point, bits, *signed), ref(r, scale, zero_point, bits, *signed), what, inputs=inputs)

    top = d.uniform(1.5, 4.0)
    r = d.rand(d.integer(60, 140), low=-top, high=top)
    with suite.check("basic signed 8-bit values"):
        compare(r, d.uniform(0.02, 0.08), 0, 8)
    scale = d.choice([0.25, 0.5, 1.0, 2.0])  # a power of two: r / scale is an exact half
    halves = (d.randint(-40, 40, (d.integer(8, 20),)).float() + 0.5) * scale
    with suite.check("rounds half to even", hint="torch.round rounds exact halves to the even integer"):
        compare(d.mix(torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5]) * scale, halves), scale, 0, 8)
    with suite.check("adds the zero point after rounding", hint="q = round(r / S) + Z, not round(r / S + Z)"):
        compare(d.mix(torch.tensor([0.5, 1.5, 2.5, -0.5]) * scale, halves), scale, d.choice([-5, -3, -1, 1, 3, 5, 7]), 8)
    with suite.check("clamps to the quantized range", hint="clamp after adding the zero point"):
        big = d.mix(torch.tensor([-1000.0, -129.0, 128.0, 1000.0]), d.rand(d.integer(4, 12), low=-400, high=400))
        compare(big, 1.0, 0, 8)
        compare(big, 1.0, 0, 4)
        compare(big, 1.0, d.integer(1, 20), 8, False)
    with suite.check("unsigned range with a zero point"):
        compare(r, d.uniform(4.0, 8.0) / 255, d.integer(100, 156), 8, False)
    with suite.check("every bit width from 1 to 8"):
        for bits in range(1, 9):
            for signed in (True, False):
                scale = d.uniform(4.0, 8.0) / (2**bits)
                zero_point = 0 if signed else 2 ** (bits - 1)
                compare(r, scale, zero_point, bits, signed)
    with suite.check("output dtype is int8 (signed) or uint8 (unsigned)"):
        expect_dtype(fn(r, 0.1, 0, 4), torch.int8, "signed 4-bit output")
        expect_dtype(fn(r, 0.1, 8, 4, False), torch.uint8, "unsigned 4-bit output")
    with suite.check("float16 and bfloat16 inputs", hint="compute in float32: r.float() / scale"):
        for dtype in (torch.float16, torch.bfloat16):
            compare(d.rand(d.integer(200, 400), low=-2.0, high=2.0).to(dtype), d.uniform(0.008, 0.02), 0, 8)
    with suite.check("per-channel scale and zero point tensors broadcast"):
        channels = d.integer(3, 6)
        w = d.normal(channels, d.integer(4, 9))
        compare(w, d.rand(channels, 1, low=0.01, high=0.1), d.randint(-3, 4, (channels, 1)), 8)
    with suite.check("keeps the shape, including empty tensors"):
        shape = (d.integer(1, 3), d.integer(1, 4), d.integer(2, 5))
        expect_shape(fn(d.normal(*shape), 0.1, 0, 8), shape, f"a {len(shape)}-D input of shape {shape}")
        expect_shape(fn(torch.zeros(0), 0.1, 0, 8), (0,), "an empty input")
    suite.finish()


def check_linear_dequantize(fn) -> None:
    suite = CheckSuite("linear_dequantize", CONTRACT)
    d = suite.draw

    def compare(q, scale, zero_point, expected, **tolerance):
        what, inputs = suite.label(q, scale, zero_point)
        expect_close(fn(q, scale, zero_point), expected, what, inputs=inputs, **tolerance)

    q = d.mix(torch.arange(-128, 128, 17), d.randint(-128, 128, (d.integer(40, 120),))).to(torch.int8)
    with suite.check("basic signed values"):
        scale = d.uniform(0.005, 0.05)
        compare(q, scale, 0, scale * q.float(), atol=1e-6)
    with suite.check("subtracts the zero point"):
        scale, zero_point = d.uniform(0.1, 1.0), d.choice([-9, -5, -3, 3, 6, 11])
        compare(q, scale, zero_point, scale * (q.float() - zero_point), atol=1e-5)
    with suite.check("uint8 minus zero point does not wrap around", hint="convert q to int32 or float before subtracting"):
        u = d.mix(torch.tensor([0, 1, 127, 200, 255]), d.randint(0, 256, (d.integer(5, 30),))).to(torch.uint8)
        scale, zero_point = d.uniform(0.05, 0.2), d.integer(100, 156)
        compare(u, scale, zero_point, scale * (u.float() - zero_point), atol=1e-5)
    with suite.check("int32 inputs (accumulators)"):
        big = d.mix(torch.tensor([-2**30, -5, 0, 7, 2**30]), d.randint(-2**31, 2**31 - 1, (d.integer(5, 20),))).to(torch.int32)
        scale = d.uniform(0.5, 2.0) * 1e-6
        compare(big, scale, 0, scale * big.double(), rtol=1e-6, atol=1e-9)
    with suite.check("output is float32 with the input's shape"):
        rows = d.integer(2, 8)
        grid = d.randint(-128, 128, (rows, d.integer(2, 8)), torch.int8)
        out = fn(grid, 0.1, 2)
        expect_dtype(out, torch.float32, "output")
        expect_shape(out, tuple(grid.shape), "output")
    with suite.check("per-channel scale tensors broadcast"):
        channels = d.integer(2, 6)
        qc = d.randint(-128, 128, (channels, d.integer(3, 8)), torch.int8)
        scale = d.rand(channels, 1, low=0.01, high=1.0)
        compare(qc, scale, 0, scale * qc.float(), atol=1e-6)
    suite.finish()


def check_affine_qparams(fn) -> None:
    suite = CheckSuite("affine_qparams", CONTRACT)
    d = suite.draw

    def compare(r_min, r_max, bits, signed):
        what, _ = suite.label(r_min, r_max, bits, signed)
        result = fn(r_min, r_max, bits, signed)
        expect_length(result, 2, what)
        scale, zero_point = result
        ref_scale, ref_zero = REF["affine_qparams"](r_min, r_max, bits, signed)
        expect_close(scale, ref_scale, f"scale of {what}", rtol=1e-6)
        expect_equal(int(zero_point), ref_zero, f"zero point of {what}")

    with suite.check("scale and zero point of a range around zero"):
        compare(-d.uniform(0.1, 3.0), d.uniform(0.1, 3.0), 8, False)
        compare(-d.uniform(0.1, 3.0), d.uniform(0.1, 3.0), 8, True)
    with suite.check("the range is widened to contain zero", hint="r_min = min(r_min, 0), r_max = max(r_max, 0)"):
        low, high = sorted((d.uniform(0.1, 3.0), d.uniform(0.1, 3.0)))
        compare(low, high, 8, True)
        compare(low, high, 8, False)
        compare(-high, -low, 8, False)
        compare(-high, -low, 4, True)
    with suite.check("zero is exactly representable", hint="Z must be an integer inside [q_min, q_max]"):
        for r_min, r_max in ((-d.uniform(0.1, 5.0), d.uniform(0.1, 5.0)), (0.0, d.uniform(0.5, 4.0)),
                             (-d.uniform(0.5, 4.0), 0.0)):
            scale, zero_point = fn(r_min, r_max, 8, False)
            assert float(zero_point) == int(zero_point), f"zero point {zero_point!r} is not an integer"
            assert 0 <= int(zero_point) <= 255, f"zero point {zero_point} outside [0, 255] for range [{r_min}, {r_max}]"
    with suite.check("every bit width from 1 to 8"):
        for bits in range(1, 9):
            r_min, r_max = -d.uniform(0.1, 2.0), d.uniform(0.1, 2.0)
            compare(r_min, r_max, bits, True)
            compare(r_min, r_max, bits, False)
    with suite.check("constant-zero range gives a positive, finite scale", hint="use S = 1.0 when r_max == r_min == 0"):
        scale, zero_point = fn(0.0, 0.0, 8, True)
        assert math.isfinite(float(scale)) and float(scale) > 0, f"affine_qparams(0, 0, 8) gave scale {scale}"
        compare(0.0, 0.0, 8, True)
    with suite.check("constant non-zero range"):
        value = d.uniform(0.1, 4.0)
        compare(value, value, 8, False)
        compare(-value, -value, 8, True)
    with suite.check("returns a Python float and a Python int"):
        scale, zero_point = fn(-1.0, 1.0, 8, True)
        assert type(scale) is float and type(zero_point) is int, f"got ({type(scale).__name__}, {type(zero_point).__name__})"
    with suite.check("rejects r_min > r_max"):
        high, low = d.uniform(0.1, 2.0), -d.uniform(0.1, 2.0)
        expect_raises(ValueError, fn, high, low, 8, True, what=f"affine_qparams(r_min={high!r}, r_max={low!r}, bits=8)")
    suite.finish()


def check_symmetric_qparams(fn) -> None:
    suite = CheckSuite("symmetric_qparams", CONTRACT)
    d, ref = suite.draw, REF["symmetric_qparams"]

    def compare(*args):
        what, _ = suite.label(*args)
        expect_close(fn(*args), ref(*args), what, rtol=1e-6)

    abs_max = d.uniform(0.1, 5.0)
    with suite.check("restricted range divides by 2^(b-1) - 1"):
        for bits in range(2, 9):
            compare(abs_max, bits, True)
    with suite.check("restricted is the default"):
        compare(d.uniform(0.1, 5.0), d.integer(2, 8))
    with suite.check("full range divides by 2^(b-1)"):
        for bits in range(2, 9):
            compare(abs_max, bits, False)
    with suite.check("zero abs_max gives scale 1.0, never 0"):
        expect_close(fn(0.0, 8, True), 1.0, "symmetric_qparams(abs_max=0.0, bits=8)")
        bits = d.integer(2, 7)
        expect_close(fn(0.0, bits, False), 1.0, f"symmetric_qparams(abs_max=0.0, bits={bits}, restricted=False)")
    with suite.check("returns a Python float"):
        got = fn(abs_max, 8, True)
        assert type(got) is float, f"symmetric_qparams(abs_max={abs_max!r}, bits=8) returned {type(got).__name__}"
    with suite.check("rejects a negative abs_max"):
        bad = -d.uniform(0.1, 2.0)
        expect_raises(ValueError, fn, bad, 8, True, what=f"symmetric_qparams(abs_max={bad!r}, bits=8)")
    suite.finish()


# ----------------------------------------------------------------------------------------------- part 2
def check_per_channel_qparams(fn) -> None:
    suite = CheckSuite("per_channel_qparams", CONTRACT)
    d, ref = suite.draw, REF["per_channel_qparams"]

    def compare(x, bits, axis):
        what, inputs = suite.label(x, bits, axis)
        expect_close(fn(x, bits, axis), ref(x, bits, axis), what, rtol=1e-6, atol=0, inputs=inputs)

    channels = d.integer(4, 8)
    w = d.normal(channels, d.integer(2, 4), 3, 3) * torch.logspace(-2, 0, channels).reshape(channels, 1, 1, 1)
    rows, cols = d.integer(3, 7), d.integer(4, 9)
    with suite.check("one scale per output channel of a conv weight"):
        compare(w, 8, 0)
    with suite.check("the scale broadcasts against w", hint="keep a size-1 dimension on every reduced axis"):
        expect_shape(fn(w, 8, 0), (channels, 1, 1, 1), f"per_channel_qparams(w of shape {tuple(w.shape)}, bits=8, axis=0)")
        expect_shape(fn(d.normal(rows, cols), 4, 1), (1, cols), f"per_channel_qparams(w of shape ({rows}, {cols}), bits=4, axis=1)")
    with suite.check("uses the absolute maximum", hint="a channel whose largest magnitude is negative"):
        compare(-d.rand(rows, cols) - 0.5, 8, 0)
    with suite.check("other axes, including negative ones"):
        compare(w, 8, 1)
        compare(w, 4, -1)
        compare(d.normal(rows, cols), 8, 1)
    with suite.check("restricted range for 2 to 8 bits", hint="divide by 2^(b-1) - 1"):
        for bits in range(2, 9):
            compare(w, bits, 0)
    with suite.check("an all-zero channel gets scale 1.0"):
        z = w.clone()
        z[d.integer(0, channels - 1)] = 0
        compare(z, 8, 0)
    with suite.check("float16 input gives float32 scales"):
        out = fn(w.half(), 8, 0)
        expect_dtype(out, torch.float32, "scale of a float16 weight")
        compare(w.half(), 8, 0)
    suite.finish()


def check_fake_quantize_per_group(fn) -> None:
    suite = CheckSuite("fake_quantize_per_group", CONTRACT)
    d, ref = suite.draw, REF["fake_quantize_per_group"]

    def compare(w, bits, group_size):
        what, inputs = suite.label(w, bits, group_size)
        result = fn(w, bits, group_size)
        expect_length(result, 2, what, inputs=inputs)
        got, got_bits = result
        ref_w, ref_bits = ref(w, bits, group_size)
        expect_shape(got, tuple(w.shape), f"w_hat of {what}", inputs=inputs)
        expect_close(got, ref_w, f"w_hat of {what}", atol=1e-6, rtol=1e-5, inputs=inputs)
        expect_close(got_bits, float(ref_bits), f"bits_per_element of {what}", rtol=1e-9)

    def weight(rows, cols):
        return d.heavy_tailed(rows * cols).reshape(rows, cols)

    group = d.choice([8, 16, 32])
    w = weight(d.integer(4, 10), group * d.integer(2, 5))
    with suite.check("groups that divide the row evenly"):
        compare(w, 4, group)
    with suite.check("groups stay inside a row", hint="reshape to [rows, -1] first; never mix two rows in a group"):
        cols = d.choice([16, 24, 32])
        compare(weight(d.integer(6, 16), cols), 4, cols * 2)
        compare(weight(d.integer(4, 8), 10), 3, 4)
    with suite.check("a shorter tail group", hint="pad each row with zeros; zeros never change a group's max |w|"):
        compare(weight(d.integer(3, 7), 16 * d.integer(1, 3) + d.integer(1, 15)), 4, 16)
        compare(weight(d.integer(2, 5), d.integer(3, 31)), 8, 32)
    with suite.check("bits per element counts the fp32 scales", hint="bits + 32 / group_size: each group stores an fp32 scale"):
        compare(d.normal(d.integer(2, 6), d.integer(20, 60)), 4, d.choice([8, 16]))
    with suite.check("conv weights are grouped along each output channel"):
        compare(d.normal(d.integer(2, 6), d.integer(2, 4), 3, 3), 4, 16)
    with suite.check("an all-zero group gives zeros, not NaN"):
        z = d.normal(d.integer(3, 6), 32)
        z[d.integer(0, z.shape[0] - 1), :16] = 0
        got = fn(z, 4, 16)
        expect_length(got, 2, "fake_quantize_per_group(w, bits=4, group_size=16)", inputs={"w": z})
        assert not torch.isnan(torch.as_tensor(got[0])).any(), "w_hat contains NaN for an all-zero group"
        compare(z, 4, 16)
    with suite.check("restricted symmetric rounding for 2 to 8 bits"):
        for bits in range(2, 9):
            compare(w, bits, 8)
    suite.finish()


# ----------------------------------------------------------------------------------------------- part 3
def check_ema_minmax(fn) -> None:
    suite = CheckSuite("ema_minmax", CONTRACT)
    d, ref = suite.draw, REF["ema_minmax"]

    def compare(batches, momentum, expected=None, atol=1e-6):
        what = f"ema_minmax(batches, momentum={momentum!r})"
        result = fn(batches, momentum)
        expect_close(tuple(result) if isinstance(result, (tuple, list)) else result,
                     ref(batches, momentum) if expected is None else expected, what, atol=atol, inputs={"batches": batches})

    size, drift = d.integer(32, 96), d.uniform(0.05, 0.3)
    batches = [d.normal(size, std=1 + i % 3, mean=i * drift) for i in range(d.integer(8, 14))]
    with suite.check("first batch initializes", hint="lo, hi = batch.min(), batch.max() on the first batch"):
        compare(batches[:1], d.uniform(0.005, 0.05), (float(batches[0].min()), float(batches[0].max())))
        compare(batches[:2], d.uniform(0.2, 0.5))
    with suite.check("moving average of min and max", hint="lo = (1 - m) * lo + m * batch.min()"):
        for momentum in (d.uniform(0.005, 0.05), d.uniform(0.05, 0.2), d.uniform(0.3, 0.7)):
            compare(batches, momentum, atol=1e-5)
    with suite.check("momentum 1 keeps the last batch"):
        compare(batches, 1.0, (float(batches[-1].min()), float(batches[-1].max())))
    with suite.check("batches of different shapes"):
        mixed = [d.normal(d.integer(2, 4), d.integer(2, 5)), d.normal(d.integer(5, 15)), d.normal(2, d.integer(1, 3), 2)]
        compare(mixed, d.uniform(0.1, 0.4))
    with suite.check("returns Python floats"):
        result = fn(batches, 0.1)
        expect_length(result, 2, "ema_minmax(batches, momentum=0.1)")
        lo, hi = result
        assert type(lo) is float and type(hi) is float, f"got ({type(lo).__name__}, {type(hi).__name__})"
    with suite.check("rejects an empty stream"):
        expect_raises(ValueError, fn, [], 0.1, what="ema_minmax(batches=[], momentum=0.1)")
    suite.finish()


def _clip_mse(x: torch.Tensor, lo: float, hi: float, bits: int) -> float:
    """Mean squared error of unsigned affine fake-quant of ``x`` over [lo, hi] (widened to contain 0)."""
    scale, zero_point = ref_linear.affine_qparams(min(lo, 0.0), max(hi, 0.0), bits, signed=False)
    x_hat = ref_linear.fake_quantize(x.float(), scale, zero_point, bits, signed=False)
    return float((x.double() - x_hat.double()).pow(2).mean())


def check_mse_clip_range(fn) -> None:
    suite = CheckSuite("mse_clip_range", CONTRACT)
    d = suite.draw

    def compare(x, bits, num_candidates):
        what, inputs = suite.label(x, bits, num_candidates)
        result = fn(x, bits, num_candidates)
        expect_length(result, 2, what, inputs=inputs)  # never zip: an empty tuple would pass every case
        got = tuple(float(v) for v in result)
        ref = tuple(float(v) for v in REF["mse_clip_range"](x, bits, num_candidates))
        if all(math.isclose(g, r, rel_tol=1e-5, abs_tol=1e-7) for g, r in zip(got, ref, strict=True)):
            return
        # A different candidate is still right if it is on the grid and reaches the same error (float ties).
        x_min, x_max = float(x.min()), float(x.max())
        top = x_max if abs(x_max) >= abs(x_min) else x_min
        alpha = got[1] / x_max if top == x_max else got[0] / x_min
        on_grid = abs(alpha * num_candidates - round(alpha * num_candidates)) < 1e-3 and 0 < alpha <= 1 + 1e-6
        same_alpha_both_ends = math.isclose(got[0], alpha * x_min, rel_tol=1e-5, abs_tol=1e-7) and \
            math.isclose(got[1], alpha * x_max, rel_tol=1e-5, abs_tol=1e-7)
        got_error, best_error = _clip_mse(x, *got, bits), _clip_mse(x, *ref, bits)
        assert on_grid and same_alpha_both_ends and got_error <= best_error * (1 + 1e-6) + 1e-12, (
            f"{what} with input x={describe(x)}: expected (lo, hi) = ({ref[0]:.6g}, {ref[1]:.6g}) with MSE {best_error:.6g}\n"
            f"got ({got[0]:.6g}, {got[1]:.6g}) with MSE {got_error:.6g}")

    with suite.check("no clipping when the range is already tight"):
        top = d.uniform(0.5, 2.0)
        compare(torch.linspace(-top, top, d.integer(150, 250)), 8, 100)
    with suite.check("clips outliers at low bit widths"):
        compare(torch.cat([d.rand(d.integer(800, 1200)), torch.tensor([d.uniform(2.5, 4.0)])]), 4, 100)
        compare(d.normal(d.integer(4000, 6000)), 4, 100)
        compare(d.normal(d.integer(4000, 6000)).relu(), 2, 100)
    with suite.check("all-positive and all-negative inputs", hint="each candidate range is widened to contain 0 before quantizing"):
        compare(d.rand(d.integer(800, 1200)) + d.uniform(1.5, 3.0), 4, 100)
        compare(-d.rand(d.integer(800, 1200)) - d.uniform(0.5, 2.0), 4, 50)
    with suite.check("honours num_candidates", hint="alpha_i = i / num_candidates, i = num_candidates..1"):
        compare(d.normal(d.integer(2000, 4000)), 4, d.integer(8, 16))
        compare(d.normal(d.integer(2000, 4000)), 3, d.integer(25, 45))
    with suite.check("float16 input and other shapes"):
        compare(d.normal(d.integer(10, 30), d.integer(10, 40)).half(), 4, 100)
    with suite.check("all-zero input returns (0.0, 0.0)"):
        compare(torch.zeros(d.integer(50, 150)), 8, 100)
    suite.finish()


def _abs_histogram(x: torch.Tensor, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    top = float(x.abs().max())
    return torch.histc(x.abs(), bins=bins, min=0.0, max=top), torch.linspace(0.0, top, bins + 1)


def check_kl_clip_threshold(fn) -> None:
    suite = CheckSuite("kl_clip_threshold", CONTRACT)
    d = suite.draw

    def compare(hist, edges, bits):
        what, inputs = suite.label(hist, edges, bits)
        expect_close(float(fn(hist, edges, bits)), float(REF["kl_clip_threshold"](hist, edges, bits)), what,
                     rtol=1e-6, atol=1e-9, inputs=inputs)

    outliers = torch.tensor([d.uniform(15.0, 30.0), -d.uniform(15.0, 30.0)])
    gaussian = torch.cat([d.normal(d.integer(15000, 25000)), outliers])
    with suite.check("clips a Gaussian with outliers (TensorRT entropy calibration)"):
        compare(*_abs_histogram(gaussian, 256), 8)
        compare(*_abs_histogram(gaussian, 160), 4)
    with suite.check("clipped mass goes into the last kept bin", hint="P = hist[:i]; P[-1] += hist[i:].sum()"):
        compare(*_abs_histogram(d.normal(d.integer(4000, 6000)).relu() ** 2, 200), 6)

    def sparse_histogram(step: int, peak: int) -> torch.Tensor:
        sparse = torch.zeros(200)
        sparse[::step] = d.rand(len(range(0, 200, step))) * 100
        sparse[:peak] += 200
        return sparse

    def fixed_sparse_histogram(step: int, peak: int) -> torch.Tensor:
        """Hand-picked counts (no draw) on which both mistakes below always show: a random draw may hide them."""
        sparse = torch.zeros(200)
        sparse[::step] = (torch.arange(len(range(0, 200, step))) * 37 % 101).float() + 1
        sparse[:peak] += 200
        return sparse

    edges, fixed_edges = torch.linspace(0.0, d.uniform(2.0, 4.0), 201), torch.linspace(0.0, 3.0, 201)
    with suite.check("Q spreads each level over P's non-zero bins only"):
        compare(sparse_histogram(3, 40), edges, 5)
        compare(fixed_sparse_histogram(3, 40), fixed_edges, 5)
    with suite.check("minimizes KL(P || Q), the reference distribution first", hint="KL = sum(P * log(P / Q))"):
        compare(sparse_histogram(3, 40), edges, 5)
        compare(sparse_histogram(2, 60), edges, 6)
        compare(fixed_sparse_histogram(2, 60), fixed_edges, 6)
        compare(fixed_sparse_histogram(3, 40), fixed_edges, 6)
    with suite.check("uses 2^(b-1) levels", hint="a symmetric signed quantizer has 2^(b-1) magnitudes"):
        hist, gaussian_edges = _abs_histogram(d.normal(d.integer(6000, 10000)), 160)
        for bits in (3, 5, 7):
            compare(hist, gaussian_edges, bits)
    with suite.check("no clipping when there are no more bins than levels"):
        bins = d.integer(60, 128)
        compare(d.rand(bins), torch.linspace(0.0, d.uniform(1.0, 3.0), bins + 1), 8)
    suite.finish()


# ----------------------------------------------------------------------------------------------- part 4
def _exact_matmul(q_a: torch.Tensor, z_a: int, q_b: torch.Tensor, z_b: int) -> torch.Tensor:
    return ((q_a.to(torch.int64) - z_a) @ (q_b.to(torch.int64) - z_b)).to(torch.int32)


def check_quantized_matmul(fn) -> None:
    suite = CheckSuite("quantized_matmul", CONTRACT)
    d = suite.draw

    def random_int(shape, dtype):
        low, high = (0, 256) if dtype == torch.uint8 else (-128, 128)
        return d.randint(low, high, shape, dtype)

    def compare(q_a, z_a, q_b, z_b):
        what, inputs = suite.label(q_a, z_a, q_b, z_b)
        expect_equal(fn(q_a, z_a, q_b, z_b), _exact_matmul(q_a, z_a, q_b, z_b), what, inputs=inputs)

    with suite.check("uint8 activations times int8 weights with both zero points"):
        inner = d.integer(10, 30)
        compare(random_int((d.integer(3, 9), inner), torch.uint8), d.integer(100, 160),
                random_int((inner, d.integer(3, 8)), torch.int8), d.integer(-9, -1))
    with suite.check("subtracts both zero points", hint="(Q_A - Z_A)(Q_B - Z_B) = Q_A Q_B - Z_B rowsum(Q_A) - Z_A colsum(Q_B) + K Z_A Z_B"):
        inner = d.integer(5, 12)
        q_a, q_b = random_int((d.integer(2, 6), inner), torch.int8), random_int((inner, d.integer(2, 7)), torch.int8)
        for z_a, z_b in ((0, 0), (d.integer(1, 9), 0), (0, -d.integer(1, 9)), (-128, 127)):
            compare(q_a, z_a, q_b, z_b)
    with suite.check("returns int32"):
        expect_dtype(fn(random_int((2, 3), torch.int8), 0, random_int((3, 2), torch.int8), 0), torch.int32,
                     "output of quantized_matmul")
    with suite.check("exact for long rows with extreme values", hint="float32 has only 24 bits of mantissa: use integer ops"):
        inner = d.integer(3000, 5000)
        q_a = torch.full((3, inner), 255, dtype=torch.uint8)
        q_a[1] = random_int((inner,), torch.uint8)
        q_b = torch.full((inner, 2), -128, dtype=torch.int8)
        q_b[:, 1] = random_int((inner,), torch.int8)
        compare(q_a, 1, q_b, 1)
    with suite.check("no int8 overflow in products", hint="widen to int32 before multiplying"):
        size = d.integer(2, 4)
        compare(torch.full((size, size), 127, dtype=torch.int8), 0, torch.full((size, size), d.choice([127, -128]), dtype=torch.int8), 0)
    with suite.check("non-square shapes"):
        inner = d.integer(20, 40)
        compare(random_int((1, inner), torch.uint8), d.integer(150, 230), random_int((inner, d.integer(10, 20)), torch.int8),
                d.integer(1, 8))
    suite.finish()


def _linear_case(d, n: int, k: int, out: int, with_bias: bool, bits: int = 8):
    """Inputs of quantized_linear for a float layer drawn from ``d``, quantized with lowbit's reference."""
    x = d.rand(n, k) * 3 - 0.5
    w = d.normal(out, k) * torch.logspace(-2, 0, out).unsqueeze(1)
    b = d.normal(out) * 0.2
    x_scale, x_zero = ref_linear.affine_qparams(float(x.min()), float(x.max()), 8, signed=False)
    q_x = ref_linear.linear_quantize(x, x_scale, x_zero, 8, signed=False)
    w_scale = ref_granularity.per_channel_qparams(w, 8, axis=0).reshape(out)
    q_w = ref_linear.linear_quantize(w, w_scale.unsqueeze(1), 0, 8, signed=True)
    q_bias = ref_integer.quantize_bias(b, x_scale, w_scale) if with_bias else None
    y = x @ w.t() + (b if with_bias else 0)
    y_scale, y_zero = ref_linear.affine_qparams(float(y.min()), float(y.max()), bits, signed=False)
    return (q_x, x_scale, x_zero, q_w, w_scale, q_bias, y_scale, y_zero, bits)


def check_quantized_linear(fn) -> None:
    suite = CheckSuite("quantized_linear", CONTRACT)
    d = suite.draw

    def compare(args):
        what, inputs = suite.label(*args)
        got = fn(*args)
        ref = REF["quantized_linear"](*args)
        expect_dtype(got, ref.dtype, f"output of {what}", inputs=inputs)
        expect_shape(got, tuple(ref.shape), f"output of {what}", inputs=inputs)
        difference = (torch.as_tensor(got).to(torch.int32) - ref.to(torch.int32)).abs()
        if int(difference.max()) > 1 or float((difference == 0).float().mean()) < 0.999:
            expect_equal(got, ref, f"{what} (outputs may differ by 1 step on at most 0.1 % of positions)", inputs=inputs)

    def case(n, k, out, with_bias, bits=8):
        return _linear_case(d, d.integer(*n), d.integer(*k), d.integer(*out), with_bias, bits)

    with suite.check("matches the integer reference with bias"):
        compare(case((24, 40), (48, 80), (12, 20), True))
    with suite.check("adds the int32 bias inside the accumulator", hint="acc = (q_x - Z_x) q_w^T + q_bias, then rescale"):
        compare(case((6, 10), (16, 24), (4, 8), True))
    with suite.check("works without a bias"):
        compare(case((6, 10), (16, 24), (4, 8), False))
    with suite.check("per-channel weight scales", hint="M = x_scale * w_scale[o] / y_scale for each output channel o"):
        compare(case((12, 20), (40, 56), (10, 14), True))
    with suite.check("uses the output zero point and clamps to the range"):
        args = list(case((12, 20), (24, 40), (6, 10), True))
        args[6] = args[6] * 0.25  # a finer output grid: many outputs saturate
        compare(tuple(args))
    with suite.check("4-bit output range"):
        compare(case((6, 10), (20, 28), (4, 6), True, bits=4))
        args = list(case((6, 10), (20, 28), (4, 6), True, bits=4))
        args[6] = args[6] * 0.25  # outputs beyond 15 must clamp to the 4-bit range
        compare(tuple(args))
    suite.finish()
