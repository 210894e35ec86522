"""Hidden checks for Lab 1 — linear quantization.

These run on the trusted side only: each ``check_<name>(fn)`` receives a proxy of the student's function,
calls it with plain data, and compares what comes back with lowbit's reference (computed here, in the
grader's process). Every named check states what it tests, so that feedback names the mistake.
"""
from __future__ import annotations

import math

import torch

from autograder.checks._api import (CheckSuite, expect_close, expect_dtype, expect_equal, expect_raises, expect_shape,
                                    generator, heavy_tailed)
from lowbit.quant import calibration as ref_calibration
from lowbit.quant import granularity as ref_granularity
from lowbit.quant import integer as ref_integer
from lowbit.quant import linear as ref_linear

PROTECTED_REFERENCES = [
    "lowbit.quant.linear.quantized_range",
    "lowbit.quant.linear.linear_quantize",
    "lowbit.quant.linear.linear_dequantize",
    "lowbit.quant.linear.affine_qparams",
    "lowbit.quant.linear.symmetric_qparams",
    "lowbit.quant.granularity.per_channel_qparams",
    "lowbit.quant.granularity.fake_quantize_per_group",
    "lowbit.quant.calibration.ema_minmax",
    "lowbit.quant.calibration.mse_clip_range",
    "lowbit.quant.calibration.kl_clip_threshold",
    "lowbit.quant.integer.quantized_matmul",
    "lowbit.quant.integer.quantized_linear",
]


# ----------------------------------------------------------------------------------------------- part 1
def check_quantized_range(fn) -> None:
    suite = CheckSuite("quantized_range")
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
            assert all(type(v) is int for v in got), f"quantized_range(4, signed={signed}) returned {got!r}: expected two Python ints"
    with suite.check("rejects bits out of range", hint="raise ValueError for bits < 1 or bits > 32"):
        for bad in (0, -3, 33):
            expect_raises(ValueError, fn, bad, True, what=f"quantized_range({bad})")
    with suite.check("rejects non-integer bits"):
        expect_raises(ValueError, fn, 4.5, True, what="quantized_range(4.5)")
    suite.finish()


def check_linear_quantize(fn) -> None:
    suite = CheckSuite("linear_quantize")
    r = torch.linspace(-3.0, 3.0, 97)
    with suite.check("basic signed 8-bit values"):
        expect_equal(fn(r, 0.05, 0, 8), ref_linear.linear_quantize(r, 0.05, 0, 8), "linear_quantize(r, 0.05, 0, 8)")
    with suite.check("rounds half to even", hint="torch.round rounds exact halves to the even integer"):
        ties = torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5])
        expect_equal(fn(ties, 1.0, 0, 8), torch.tensor([-2, -2, 0, 0, 2, 2, 4], dtype=torch.int8), "linear_quantize(ties, 1.0, 0, 8)")
    with suite.check("adds the zero point after rounding", hint="q = round(r / S) + Z, not round(r / S + Z)"):
        ties = torch.tensor([0.5, 1.5, 2.5, -0.5])
        expect_equal(fn(ties, 1.0, 3, 8), torch.tensor([3, 5, 5, 3], dtype=torch.int8), "linear_quantize(ties, 1.0, 3, 8)")
    with suite.check("clamps to the quantized range", hint="clamp after adding the zero point"):
        big = torch.tensor([-1000.0, -129.0, 128.0, 1000.0])
        expect_equal(fn(big, 1.0, 0, 8), torch.tensor([-128, -128, 127, 127], dtype=torch.int8), "signed 8-bit clamp")
        expect_equal(fn(big, 1.0, 0, 4), torch.tensor([-8, -8, 7, 7], dtype=torch.int8), "signed 4-bit clamp")
        expect_equal(fn(big, 1.0, 10, 8, False), torch.tensor([0, 0, 138, 255], dtype=torch.uint8), "unsigned 8-bit clamp")
    with suite.check("unsigned range with a zero point"):
        expect_equal(fn(r, 6.0 / 255, 128, 8, False), ref_linear.linear_quantize(r, 6.0 / 255, 128, 8, False), "unsigned 8-bit")
    with suite.check("every bit width from 1 to 8"):
        for bits in range(1, 9):
            for signed in (True, False):
                scale = 6.0 / (2**bits)
                zero_point = 0 if signed else 2 ** (bits - 1)
                expect_equal(fn(r, scale, zero_point, bits, signed), ref_linear.linear_quantize(r, scale, zero_point, bits, signed),
                             f"linear_quantize(r, {scale}, {zero_point}, bits={bits}, signed={signed})")
    with suite.check("output dtype is int8 (signed) or uint8 (unsigned)"):
        expect_dtype(fn(r, 0.1, 0, 4), torch.int8, "signed 4-bit output")
        expect_dtype(fn(r, 0.1, 8, 4, False), torch.uint8, "unsigned 4-bit output")
    with suite.check("float16 and bfloat16 inputs", hint="compute in float32: r.float() / scale"):
        for dtype in (torch.float16, torch.bfloat16):
            x = torch.linspace(-2.0, 2.0, 301).to(dtype)
            expect_equal(fn(x, 0.013, 0, 8), ref_linear.linear_quantize(x, 0.013, 0, 8), f"{dtype} input")
    with suite.check("per-channel scale and zero point tensors broadcast"):
        w = torch.randn(4, 6, generator=generator(1))
        scale = torch.tensor([[0.01], [0.02], [0.05], [0.1]])
        zero_point = torch.tensor([[0], [1], [-2], [3]])
        expect_equal(fn(w, scale, zero_point, 8), ref_linear.linear_quantize(w, scale, zero_point, 8), "per-channel quantize")
    with suite.check("keeps the shape, including empty tensors"):
        expect_shape(fn(torch.zeros(2, 3, 4), 0.1, 0, 8), (2, 3, 4), "3-D input")
        expect_shape(fn(torch.zeros(0), 0.1, 0, 8), (0,), "empty input")
    suite.finish()


def check_linear_dequantize(fn) -> None:
    suite = CheckSuite("linear_dequantize")
    q = torch.arange(-128, 128, dtype=torch.int32).to(torch.int8)
    with suite.check("basic signed values"):
        expect_close(fn(q, 0.02, 0), 0.02 * q.float(), "linear_dequantize(q, 0.02, 0)", atol=1e-6)
    with suite.check("subtracts the zero point"):
        expect_close(fn(q, 0.5, -3), 0.5 * (q.float() + 3), "linear_dequantize(q, 0.5, -3)", atol=1e-6)
    with suite.check("uint8 minus zero point does not wrap around", hint="convert q to int32 or float before subtracting"):
        u = torch.tensor([0, 1, 127, 200, 255], dtype=torch.uint8)
        expect_close(fn(u, 0.1, 128), 0.1 * (u.float() - 128), "linear_dequantize(uint8 q, 0.1, 128)", atol=1e-5)
    with suite.check("int32 inputs (accumulators)"):
        big = torch.tensor([-2**30, -5, 0, 7, 2**30], dtype=torch.int32)
        expect_close(fn(big, 1e-6, 0), 1e-6 * big.double(), "linear_dequantize(int32 q, 1e-6, 0)", rtol=1e-6, atol=1e-9)
    with suite.check("output is float32 with the input's shape"):
        out = fn(q.reshape(16, 16), 0.1, 2)
        expect_dtype(out, torch.float32, "output")
        expect_shape(out, (16, 16), "output")
    with suite.check("per-channel scale tensors broadcast"):
        qc = torch.randint(-128, 128, (3, 5), generator=generator(2)).to(torch.int8)
        scale = torch.tensor([[0.1], [0.01], [1.0]])
        expect_close(fn(qc, scale, 0), scale * qc.float(), "per-channel dequantize", atol=1e-6)
    suite.finish()


def check_affine_qparams(fn) -> None:
    suite = CheckSuite("affine_qparams")

    def compare(r_min, r_max, bits, signed):
        scale, zero_point = fn(r_min, r_max, bits, signed)
        ref_scale, ref_zero = ref_linear.affine_qparams(r_min, r_max, bits, signed)
        what = f"affine_qparams({r_min}, {r_max}, bits={bits}, signed={signed})"
        expect_close(float(scale), ref_scale, f"scale of {what}", rtol=1e-6)
        expect_equal(int(zero_point), ref_zero, f"zero point of {what}")

    with suite.check("scale and zero point of a range around zero"):
        compare(-1.0, 2.0, 8, False)
        compare(-0.37, 1.2, 8, True)
    with suite.check("the range is widened to contain zero", hint="r_min = min(r_min, 0), r_max = max(r_max, 0)"):
        compare(0.5, 2.0, 8, True)
        compare(0.5, 2.0, 8, False)
        compare(-3.0, -1.0, 8, False)
        compare(-3.0, -1.0, 4, True)
    with suite.check("zero is exactly representable", hint="Z must be an integer inside [q_min, q_max]"):
        for r_min, r_max in ((-0.7, 0.3), (-5.0, 1.0), (0.0, 3.0), (-2.0, 0.0)):
            scale, zero_point = fn(r_min, r_max, 8, False)
            assert float(zero_point) == int(zero_point), f"zero point {zero_point!r} is not an integer"
            assert 0 <= int(zero_point) <= 255, f"zero point {zero_point} outside [0, 255] for range [{r_min}, {r_max}]"
    with suite.check("every bit width from 1 to 8"):
        for bits in range(1, 9):
            compare(-1.3, 0.9, bits, True)
            compare(-1.3, 0.9, bits, False)
    with suite.check("constant-zero range gives a positive, finite scale", hint="use S = 1.0 when r_max == r_min == 0"):
        scale, zero_point = fn(0.0, 0.0, 8, True)
        assert math.isfinite(float(scale)) and float(scale) > 0, f"affine_qparams(0, 0, 8) gave scale {scale}"
        compare(0.0, 0.0, 8, True)
    with suite.check("constant non-zero range"):
        compare(0.25, 0.25, 8, False)
        compare(-4.0, -4.0, 8, True)
    with suite.check("returns a Python float and a Python int"):
        scale, zero_point = fn(-1.0, 1.0, 8, True)
        assert type(scale) is float and type(zero_point) is int, f"got ({type(scale).__name__}, {type(zero_point).__name__})"
    with suite.check("rejects r_min > r_max"):
        expect_raises(ValueError, fn, 1.0, -1.0, 8, True, what="affine_qparams(1.0, -1.0, 8)")
    suite.finish()


def check_symmetric_qparams(fn) -> None:
    suite = CheckSuite("symmetric_qparams")
    with suite.check("restricted range divides by 2^(b-1) - 1"):
        for bits in range(2, 9):
            expect_close(float(fn(2.5, bits, True)), 2.5 / (2 ** (bits - 1) - 1), f"symmetric_qparams(2.5, {bits}, restricted=True)", rtol=1e-6)
    with suite.check("restricted is the default"):
        expect_close(float(fn(1.27, 8)), 0.01, "symmetric_qparams(1.27, 8)", rtol=1e-6)
    with suite.check("full range divides by 2^(b-1)"):
        for bits in range(2, 9):
            expect_close(float(fn(2.5, bits, False)), 2.5 / 2 ** (bits - 1), f"symmetric_qparams(2.5, {bits}, restricted=False)", rtol=1e-6)
    with suite.check("zero abs_max gives scale 1.0, never 0"):
        expect_close(float(fn(0.0, 8, True)), 1.0, "symmetric_qparams(0.0, 8)", rtol=0)
        expect_close(float(fn(0.0, 4, False)), 1.0, "symmetric_qparams(0.0, 4, restricted=False)", rtol=0)
    with suite.check("returns a Python float"):
        got = fn(1.0, 8, True)
        assert type(got) is float, f"symmetric_qparams(1.0, 8) returned {type(got).__name__}"
    with suite.check("rejects a negative abs_max"):
        expect_raises(ValueError, fn, -1.0, 8, True, what="symmetric_qparams(-1.0, 8)")
    suite.finish()


# ----------------------------------------------------------------------------------------------- part 2
def check_per_channel_qparams(fn) -> None:
    suite = CheckSuite("per_channel_qparams")
    w = torch.randn(6, 3, 3, 3, generator=generator(3)) * torch.logspace(-2, 0, 6).reshape(6, 1, 1, 1)

    def compare(x, bits, axis, what):
        expect_close(fn(x, bits, axis), ref_granularity.per_channel_qparams(x, bits, axis), what, rtol=1e-6, atol=0)

    with suite.check("one scale per output channel of a conv weight"):
        compare(w, 8, 0, "per_channel_qparams(conv weight [6,3,3,3], 8, axis=0)")
    with suite.check("the scale broadcasts against w", hint="keep a size-1 dimension on every reduced axis"):
        expect_shape(fn(w, 8, 0), (6, 1, 1, 1), "scale of a [6,3,3,3] weight")
        expect_shape(fn(torch.randn(5, 7), 4, 1), (1, 7), "scale of a [5,7] weight along axis 1")
    with suite.check("uses the absolute maximum", hint="a channel whose largest magnitude is negative"):
        neg = -torch.rand(4, 10, generator=generator(4)) - 0.5
        compare(neg, 8, 0, "all-negative weight")
    with suite.check("other axes, including negative ones"):
        compare(w, 8, 1, "axis=1")
        compare(w, 4, -1, "axis=-1")
        compare(torch.randn(5, 7, generator=generator(5)), 8, 1, "[5,7] weight along axis 1")
    with suite.check("restricted range for 2 to 8 bits", hint="divide by 2^(b-1) - 1"):
        for bits in range(2, 9):
            compare(w, bits, 0, f"bits={bits}")
    with suite.check("an all-zero channel gets scale 1.0"):
        z = w.clone()
        z[2] = 0
        compare(z, 8, 0, "weight with channel 2 all zero")
    with suite.check("float16 input gives float32 scales"):
        out = fn(w.half(), 8, 0)
        expect_dtype(out, torch.float32, "scale of a float16 weight")
        compare(w.half(), 8, 0, "float16 weight")
    suite.finish()


def check_fake_quantize_per_group(fn) -> None:
    suite = CheckSuite("fake_quantize_per_group")

    def compare(w, bits, group_size, what):
        got, got_bits = fn(w, bits, group_size)
        ref, ref_bits = ref_granularity.fake_quantize_per_group(w, bits, group_size)
        expect_shape(got, tuple(w.shape), f"w_hat of {what}")
        expect_close(got, ref, f"w_hat of {what}", atol=1e-6, rtol=1e-5)
        expect_close(float(got_bits), float(ref_bits), f"bits_per_element of {what}", rtol=1e-9)

    w = heavy_tailed(8 * 64, 6).reshape(8, 64)
    with suite.check("groups that divide the row evenly"):
        compare(w, 4, 16, "[8,64] weight, 4 bits, groups of 16")
    with suite.check("groups stay inside a row", hint="reshape to [rows, -1] first; never mix two rows in a group"):
        compare(w.reshape(16, 32), 4, 64, "[16,32] weight, groups of 64 (one group per row)")
        compare(heavy_tailed(6 * 10, 7).reshape(6, 10), 3, 4, "[6,10] weight, groups of 4")
    with suite.check("a shorter tail group", hint="pad each row with zeros; zeros never change a group's max |w|"):
        compare(heavy_tailed(5 * 37, 8).reshape(5, 37), 4, 16, "[5,37] weight, groups of 16 (tail of 5)")
        compare(heavy_tailed(3 * 9, 9).reshape(3, 9), 8, 32, "[3,9] weight, groups of 32 (one short group)")
    with suite.check("bits per element counts the fp32 scales", hint="bits + 32 / group_size: each group stores an fp32 scale"):
        compare(torch.randn(4, 40, generator=generator(10)), 4, 16, "[4,40] weight, groups of 16")
    with suite.check("conv weights are grouped along each output channel"):
        compare(torch.randn(4, 3, 3, 3, generator=generator(11)), 4, 16, "[4,3,3,3] weight")
    with suite.check("an all-zero group gives zeros, not NaN"):
        z = torch.randn(4, 32, generator=generator(12))
        z[1, :16] = 0
        got, _ = fn(z, 4, 16)
        assert not torch.isnan(torch.as_tensor(got)).any(), "w_hat contains NaN for an all-zero group"
        compare(z, 4, 16, "weight with an all-zero group")
    with suite.check("restricted symmetric rounding for 2 to 8 bits"):
        for bits in range(2, 9):
            compare(w, bits, 8, f"bits={bits}, groups of 8")
    suite.finish()


# ----------------------------------------------------------------------------------------------- part 3
def check_ema_minmax(fn) -> None:
    suite = CheckSuite("ema_minmax")
    g = generator(13)
    batches = [torch.randn(64, generator=g) * (1 + i % 3) + i * 0.1 for i in range(12)]
    with suite.check("first batch initializes", hint="lo, hi = batch.min(), batch.max() on the first batch"):
        expect_close(tuple(fn(batches[:1], 0.01)), (float(batches[0].min()), float(batches[0].max())), "one batch", atol=1e-6)
        expect_close(tuple(fn(batches[:2], 0.3)), ref_calibration.ema_minmax(batches[:2], 0.3), "two batches, momentum 0.3", atol=1e-6)
    with suite.check("moving average of min and max", hint="lo = (1 - m) * lo + m * batch.min()"):
        for momentum in (0.01, 0.1, 0.5):
            expect_close(tuple(fn(batches, momentum)), ref_calibration.ema_minmax(batches, momentum), f"12 batches, momentum {momentum}", atol=1e-5)
    with suite.check("momentum 1 keeps the last batch"):
        expect_close(tuple(fn(batches, 1.0)), (float(batches[-1].min()), float(batches[-1].max())), "momentum 1.0", atol=1e-6)
    with suite.check("batches of different shapes"):
        mixed = [torch.randn(3, 4, generator=g), torch.randn(10, generator=g), torch.randn(2, 2, 2, generator=g)]
        expect_close(tuple(fn(mixed, 0.2)), ref_calibration.ema_minmax(mixed, 0.2), "mixed shapes", atol=1e-6)
    with suite.check("returns Python floats"):
        lo, hi = fn(batches, 0.1)
        assert type(lo) is float and type(hi) is float, f"got ({type(lo).__name__}, {type(hi).__name__})"
    with suite.check("rejects an empty stream"):
        expect_raises(ValueError, fn, [], 0.1, what="ema_minmax([])")
    suite.finish()


def _clip_mse(x: torch.Tensor, lo: float, hi: float, bits: int) -> float:
    """Mean squared error of unsigned affine fake-quant of ``x`` over [lo, hi] (widened to contain 0)."""
    scale, zero_point = ref_linear.affine_qparams(min(lo, 0.0), max(hi, 0.0), bits, signed=False)
    x_hat = ref_linear.fake_quantize(x.float(), scale, zero_point, bits, signed=False)
    return float((x.double() - x_hat.double()).pow(2).mean())


def check_mse_clip_range(fn) -> None:
    suite = CheckSuite("mse_clip_range")

    def compare(x, bits, num_candidates, what):
        got = tuple(float(v) for v in fn(x, bits, num_candidates))
        ref = tuple(float(v) for v in ref_calibration.mse_clip_range(x, bits, num_candidates))
        if all(math.isclose(g, r, rel_tol=1e-5, abs_tol=1e-7) for g, r in zip(got, ref)):
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
            f"{what}: expected (lo, hi) = ({ref[0]:.6g}, {ref[1]:.6g}) with MSE {best_error:.6g}\n"
            f"got ({got[0]:.6g}, {got[1]:.6g}) with MSE {got_error:.6g}")

    g = generator(14)
    with suite.check("no clipping when the range is already tight"):
        compare(torch.linspace(-1.0, 1.0, 201), 8, 100, "uniform on [-1, 1], 8 bits")
    with suite.check("clips outliers at low bit widths"):
        compare(torch.cat([torch.linspace(0.0, 1.0, 1001), torch.tensor([3.0])]), 4, 100, "[0,1] plus an outlier, 4 bits")
        compare(torch.randn(5000, generator=g), 4, 100, "Gaussian, 4 bits")
        compare(torch.randn(5000, generator=g).relu(), 2, 100, "ReLU of a Gaussian, 2 bits")
    with suite.check("all-positive and all-negative inputs", hint="each candidate range is widened to contain 0 before quantizing"):
        compare(torch.rand(1000, generator=g) + 2.0, 4, 100, "values in [2, 3]")
        compare(-torch.rand(1000, generator=g) - 1.0, 4, 50, "values in [-2, -1]")
    with suite.check("honours num_candidates", hint="alpha_i = i / num_candidates, i = num_candidates..1"):
        compare(torch.randn(3000, generator=g), 4, 10, "Gaussian, 10 candidates")
        compare(torch.randn(3000, generator=g), 3, 37, "Gaussian, 37 candidates")
    with suite.check("float16 input and other shapes"):
        compare(torch.randn(20, 30, generator=g).half(), 4, 100, "[20,30] float16")
    with suite.check("all-zero input returns (0.0, 0.0)"):
        compare(torch.zeros(100), 8, 100, "zeros")
    suite.finish()


def _abs_histogram(x: torch.Tensor, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    top = float(x.abs().max())
    return torch.histc(x.abs(), bins=bins, min=0.0, max=top), torch.linspace(0.0, top, bins + 1)


def check_kl_clip_threshold(fn) -> None:
    suite = CheckSuite("kl_clip_threshold")

    def compare(hist, edges, bits, what):
        got = float(fn(hist, edges, bits))
        ref = float(ref_calibration.kl_clip_threshold(hist, edges, bits))
        expect_close(got, ref, what, rtol=1e-6, atol=1e-9)

    g = generator(15)
    gaussian = torch.cat([torch.randn(20000, generator=g), torch.tensor([25.0, -30.0])])
    with suite.check("clips a Gaussian with outliers (TensorRT entropy calibration)"):
        compare(*_abs_histogram(gaussian, 256), 8, "Gaussian + outliers, 256 bins, 8 bits")
        compare(*_abs_histogram(gaussian, 160), 4, "Gaussian + outliers, 160 bins, 4 bits")
    with suite.check("clipped mass goes into the last kept bin", hint="P = hist[:i]; P[-1] += hist[i:].sum()"):
        compare(*_abs_histogram(torch.randn(5000, generator=g).relu() ** 2, 200), 6, "squared ReLU, 200 bins, 6 bits")
    def sparse_histogram(step: int, peak: int) -> torch.Tensor:
        sparse = torch.zeros(200)
        sparse[::step] = torch.rand(len(range(0, 200, step)), generator=g) * 100
        sparse[:peak] += 200
        return sparse

    with suite.check("Q spreads each level over P's non-zero bins only"):
        compare(sparse_histogram(3, 40), torch.linspace(0.0, 3.0, 201), 5, "sparse histogram, 5 bits")
    with suite.check("minimizes KL(P || Q), the reference distribution first", hint="KL = sum(P * log(P / Q))"):
        compare(sparse_histogram(3, 40), torch.linspace(0.0, 3.0, 201), 5, "sparse histogram, 5 bits")
        compare(sparse_histogram(2, 60), torch.linspace(0.0, 3.0, 201), 6, "sparse histogram, 6 bits")
    with suite.check("uses 2^(b-1) levels", hint="a symmetric signed quantizer has 2^(b-1) magnitudes"):
        hist, edges = _abs_histogram(torch.randn(8000, generator=g), 160)
        for bits in (3, 5, 7):
            compare(hist, edges, bits, f"Gaussian, 200 bins, {bits} bits")
    with suite.check("no clipping when there are no more bins than levels"):
        compare(torch.rand(100, generator=g), torch.linspace(0.0, 2.0, 101), 8, "100 bins, 128 levels")
    suite.finish()


# ----------------------------------------------------------------------------------------------- part 4
def _exact_matmul(q_a: torch.Tensor, z_a: int, q_b: torch.Tensor, z_b: int) -> torch.Tensor:
    return ((q_a.to(torch.int64) - z_a) @ (q_b.to(torch.int64) - z_b)).to(torch.int32)


def check_quantized_matmul(fn) -> None:
    suite = CheckSuite("quantized_matmul")
    g = generator(16)

    def random_int(shape, dtype):
        low, high = (0, 256) if dtype == torch.uint8 else (-128, 128)
        return torch.randint(low, high, shape, generator=g).to(dtype)

    with suite.check("uint8 activations times int8 weights with both zero points"):
        q_a, q_b = random_int((7, 19), torch.uint8), random_int((19, 5), torch.int8)
        expect_equal(fn(q_a, 131, q_b, -3), _exact_matmul(q_a, 131, q_b, -3), "[7,19] @ [19,5], z_a=131, z_b=-3")
    with suite.check("subtracts both zero points", hint="(Q_A - Z_A)(Q_B - Z_B) = Q_A Q_B - Z_B rowsum(Q_A) - Z_A colsum(Q_B) + K Z_A Z_B"):
        q_a, q_b = random_int((4, 9), torch.int8), random_int((9, 6), torch.int8)
        for z_a, z_b in ((0, 0), (5, 0), (0, -7), (-128, 127)):
            expect_equal(fn(q_a, z_a, q_b, z_b), _exact_matmul(q_a, z_a, q_b, z_b), f"z_a={z_a}, z_b={z_b}")
    with suite.check("returns int32"):
        expect_dtype(fn(random_int((2, 3), torch.int8), 0, random_int((3, 2), torch.int8), 0), torch.int32, "output")
    with suite.check("exact for long rows with extreme values", hint="float32 has only 24 bits of mantissa: use integer ops"):
        q_a = torch.full((3, 4096), 255, dtype=torch.uint8)
        q_a[1] = random_int((4096,), torch.uint8)
        q_b = torch.full((4096, 2), -128, dtype=torch.int8)
        q_b[:, 1] = random_int((4096,), torch.int8)
        expect_equal(fn(q_a, 1, q_b, 1), _exact_matmul(q_a, 1, q_b, 1), "[3,4096] @ [4096,2] at the range limits")
    with suite.check("no int8 overflow in products", hint="widen to int32 before multiplying"):
        q_a = torch.full((2, 2), 127, dtype=torch.int8)
        q_b = torch.full((2, 2), 127, dtype=torch.int8)
        expect_equal(fn(q_a, 0, q_b, 0), _exact_matmul(q_a, 0, q_b, 0), "127 * 127 products")
    with suite.check("non-square shapes"):
        q_a, q_b = random_int((1, 33), torch.uint8), random_int((33, 17), torch.int8)
        expect_equal(fn(q_a, 200, q_b, 4), _exact_matmul(q_a, 200, q_b, 4), "[1,33] @ [33,17]")
    suite.finish()


def _linear_case(seed: int, n: int, k: int, out: int, with_bias: bool, bits: int = 8):
    g = generator(seed)
    x = torch.rand(n, k, generator=g) * 3 - 0.5
    w = torch.randn(out, k, generator=g) * torch.logspace(-2, 0, out).unsqueeze(1)
    b = torch.randn(out, generator=g) * 0.2
    x_scale, x_zero = ref_linear.affine_qparams(float(x.min()), float(x.max()), 8, signed=False)
    q_x = ref_linear.linear_quantize(x, x_scale, x_zero, 8, signed=False)
    w_scale = ref_granularity.per_channel_qparams(w, 8, axis=0).reshape(out)
    q_w = ref_linear.linear_quantize(w, w_scale.unsqueeze(1), 0, 8, signed=True)
    q_bias = ref_integer.quantize_bias(b, x_scale, w_scale) if with_bias else None
    y = x @ w.t() + (b if with_bias else 0)
    y_scale, y_zero = ref_linear.affine_qparams(float(y.min()), float(y.max()), bits, signed=False)
    return (q_x, x_scale, x_zero, q_w, w_scale, q_bias, y_scale, y_zero, bits)


def check_quantized_linear(fn) -> None:
    suite = CheckSuite("quantized_linear")

    def compare(args, what):
        got = fn(*args)
        ref = ref_integer.quantized_linear(*args)
        expect_dtype(got, ref.dtype, f"output of {what}")
        expect_shape(got, tuple(ref.shape), f"output of {what}")
        difference = (torch.as_tensor(got).to(torch.int32) - ref.to(torch.int32)).abs()
        assert int(difference.max()) <= 1, (f"{what}: output differs from the reference by up to {int(difference.max())} "
                                            "steps (at most 1 is allowed, from rounding ties)")
        exact = float((difference == 0).float().mean())
        assert exact >= 0.999, f"{what}: only {100 * exact:.2f} % of outputs match the reference exactly (need 99.9 %)"

    with suite.check("matches the integer reference with bias"):
        compare(_linear_case(17, 32, 64, 16, True), "[32,64] x [16,64]^T with bias")
    with suite.check("adds the int32 bias inside the accumulator", hint="acc = (q_x - Z_x) q_w^T + q_bias, then rescale"):
        compare(_linear_case(18, 8, 20, 6, True), "[8,20] x [6,20]^T with bias")
    with suite.check("works without a bias"):
        compare(_linear_case(19, 8, 20, 6, False), "no bias")
    with suite.check("per-channel weight scales", hint="M = x_scale * w_scale[o] / y_scale for each output channel o"):
        compare(_linear_case(20, 16, 48, 12, True), "per-channel scales spanning 100x")
    with suite.check("uses the output zero point and clamps to the range"):
        args = list(_linear_case(21, 16, 32, 8, True))
        args[6] = args[6] * 0.25  # a finer output grid: many outputs saturate
        compare(tuple(args), "saturating outputs")
    with suite.check("4-bit output range"):
        compare(_linear_case(22, 8, 24, 5, True, bits=4), "bits=4 output")
        args = list(_linear_case(23, 8, 24, 5, True, bits=4))
        args[6] = args[6] * 0.25  # outputs beyond 15 must clamp to the 4-bit range
        compare(tuple(args), "bits=4, saturating outputs")
    suite.finish()
