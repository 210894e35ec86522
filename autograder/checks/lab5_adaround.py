"""Hidden checks for Lab 5 — cross-layer equalization, bias correction and AdaRound.

These run on the trusted side only: each ``check_<name>(fn)`` receives a proxy of the student's function, calls it
with plain data drawn from the course secret (``suite.draw``), and compares what comes back with lowbit's reference
(``lowbit.quant.equalize``, ``lowbit.quant.bias_correction``, ``lowbit.quant.adaround``, computed here). The
gradients of ``rectified_sigmoid`` and ``rounding_regularizer`` are asked of the sandbox with
:func:`expect_gradients` against upstream gradients drawn from the secret too.

Exact inputs where the contract makes a result exact: ``init_v``'s weights are drawn as (integer + fraction) times
a power-of-two scale, so w / scale and its fractional part are the same in any precision and the edges (fraction 0,
just below 1, one half) are real; CLE's scales and BN statistics are compared with float32-level tolerances.

``adaround_layer`` is an optimizer: it is graded on outcomes, on small layers and few iterations (the whole suite
runs in seconds): the result is int64 ``[C_out, K]``; every value is floor(w / s) or floor(w / s) + 1, then clamped
to the signed range; with no iteration it is rounding to nearest (V = init_v, V >= 0 rounds up); on a layer whose
nearest rounding shifts every output (fractional parts just above 1/2, inputs with a positive mean) the output
error after the activation is below nearest rounding's; its decisions agree with the reference's on the same
inputs for at least ``AGREEMENT`` of the weights (with and without the ReLU); and the same seed gives the same
result. Mistakes that change the optimum only slightly (the warm start ignored) cannot be seen in an outcome:
they are graded where they are made (``beta_schedule``).
"""
from __future__ import annotations

from typing import Any

import torch

from autograder.checks._api import (CheckSuite, expect_close, expect_dtype, expect_equal, expect_gradients,
                                    expect_length, expect_raises, expect_reference, expect_shape, expect_tensor,
                                    expect_unchanged)
from autograder.contract import load_contract

#: Graded functions, their signatures and references: ``lab5_adaround.contract.json``.
CONTRACT = load_contract("lab5_adaround")
REF = {name: CONTRACT.reference(name) for name in CONTRACT.graded}
#: Float32 results of a few operations (a square root and a division, a sigmoid, a log), in any order.
F32_TOL = {"rtol": 1e-5, "atol": 1e-6}
#: Results in the input's dtype: float32 arithmetic rounded once to float16 / bfloat16 (or computed there).
DTYPE_TOL = {torch.float32: F32_TOL, torch.float64: F32_TOL, torch.float16: {"rtol": 2e-3, "atol": 1e-4},
             torch.bfloat16: {"rtol": 1.6e-2, "atol": 1e-3}}
LOW_PRECISION = (torch.float16, torch.bfloat16)
#: Share of the rounding decisions that must agree with the reference's on the same inputs.
AGREEMENT = 0.95


def _weights(d, *shape: int, std: float = 0.5) -> torch.Tensor:
    """Drawn weights ``shape`` whose output channels (axis 0) differ in range by up to 100x, as after BN folding."""
    spread = torch.exp(d.rand(shape[0], low=-2.3, high=2.3)).reshape(-1, *([1] * (len(shape) - 1)))
    return d.normal(*shape, std=std) * spread


def _pair(d, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(w1, w2) of a linear pair [C, K] → [D, C], a conv pair [C, C_in, k, k] → [D, C, k, k], or a conv followed by
    flatten + linear, the linear weight reshaped to [D, C, h·w]."""
    c, dd = d.integer(3, 10), d.integer(2, 9)
    if kind == "linear":
        w1, w2 = _weights(d, c, d.integer(3, 12)), d.normal(dd, c, std=0.3)
    elif kind == "conv":
        k = d.choice([1, 3])
        w1, w2 = _weights(d, c, d.integer(1, 4), k, k), d.normal(dd, c, d.choice([1, 3]), d.choice([1, 3]), std=0.3)
    else:
        w1, w2 = _weights(d, c, d.integer(1, 4), 3, 3), d.normal(dd, c, d.integer(2, 9), std=0.3)
    # the second layer's input channels differ in range too
    return w1, w2 * torch.exp(d.rand(c, low=-1.5, high=1.5)).reshape(1, c, *([1] * (w2.ndim - 2)))


def _channel(x: torch.Tensor, index: int, axis: int) -> torch.Tensor:
    return x.select(axis, index)


def _zero_channels(d, w1: torch.Tensor, w2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Copies with one output channel of w1 all zero, one input channel of w2 all zero, and one channel zero in
    both (a dead channel): s must be 1 there."""
    w1, w2 = w1.clone(), w2.clone()
    picks = d.sample(list(range(w1.shape[0])), 3)
    _channel(w1, picks[0], 0).zero_()
    _channel(w2, picks[1], 1).zero_()
    _channel(w1, picks[2], 0).zero_()
    _channel(w2, picks[2], 1).zero_()
    return w1, w2


# ----------------------------------------------------------------------------------------------- part 1: CLE
def check_equalization_scales(fn) -> None:
    suite = CheckSuite("equalization_scales", CONTRACT)
    d = suite.draw

    def compare(w1, w2, tolerance=F32_TOL):
        return expect_reference(suite, fn, w1, w2, tolerance=tolerance)

    with suite.check("s = √(r1 · r2) / r2 per channel (linear pair w1 [C, K], w2 [D, C])",
                     hint="r1_i = max |w1[i]| (a row of w1), r2_i = max |w2[:, i]| (a column of w2); "
                          "s = sqrt(r1 * r2) / r2, not its inverse"):
        compare(*_pair(d, "linear"))
        compare(*_pair(d, "linear"))
    with suite.check("w1 / s and w2 · s then share each channel's range √(r1 · r2)",
                     hint="s = sqrt(r1 * r2) / r2: dividing w1's row i by s_i and multiplying w2's column i by s_i "
                          "gives both the range sqrt(r1_i * r2_i)"):
        w1, w2 = _pair(d, d.choice(["linear", "conv"]))
        what, inputs = suite.label(w1, w2)
        s = fn(w1, w2)
        expect_shape(s, (w1.shape[0],), what, inputs=inputs)
        s = s.to(torch.float64)
        r1 = w1.double().abs().reshape(w1.shape[0], -1).amax(1) / s
        r2 = w2.double().abs().transpose(0, 1).reshape(w1.shape[0], -1).amax(1) * s
        expect_close(r1, r2, f"{what}: max |w1[i] / s_i| against max |w2[:, i] · s_i|", rtol=1e-5, inputs=inputs)
    with suite.check("conv pairs: ranges over every axis but 0 of w1 and every axis but 1 of w2 "
                     "(w1 [C, C_in, k, k], w2 [D, C, k, k] or [D, C, h·w])",
                     hint="r1: w1.abs() over all axes except 0; r2: w2.abs() over all axes except 1 (move axis 1 "
                          "first, then flatten the rest) — not just the last axis, not axis 0 of w2"):
        compare(*_pair(d, "conv"))
        compare(*_pair(d, "conv"))
        compare(*_pair(d, "conv_fc"))
    with suite.check("ranges are max |w|: channels with only negative weights",
                     hint="r = max of the absolute values (w.abs().amax), not w.amax()"):
        w1, w2 = _pair(d, d.choice(["linear", "conv"]))
        w1, w2 = w1.clone(), w2.clone()
        for i in d.sample(list(range(w1.shape[0])), 2):
            _channel(w1, i, 0).copy_(-_channel(w1, i, 0).abs())
        for i in d.sample(list(range(w1.shape[0])), 2):
            _channel(w2, i, 1).copy_(-_channel(w2, i, 1).abs())
        compare(w1, w2)
    with suite.check("s = 1 where a range is 0 (a zero channel in w1, in w2, or in both), never NaN or inf",
                     hint="where r1_i == 0 or r2_i == 0 there is nothing to balance: s_i = 1 (torch.where, and "
                          "divide by a safe r2 so that no NaN appears)"):
        compare(*_zero_channels(d, *_pair(d, "linear")))
        compare(*_zero_channels(d, *_pair(d, "conv")))
    with suite.check("float32 result for float16, bfloat16 and float64 weights",
                     hint="compute in float32 (w.float()) and return float32, whatever the weights' dtype"):
        for dtype in (torch.float16, torch.bfloat16, torch.float64):
            w1, w2 = _pair(d, d.choice(["linear", "conv"]))
            w1, w2 = w1.to(dtype), w2.to(dtype)
            compare(w1, w2, tolerance={"rtol": 2e-3, "atol": 1e-6} if dtype in LOW_PRECISION else F32_TOL)
    with suite.check("rejects w2 whose axis 1 does not match w1's channels (ValueError), and integer weights "
                     "(TypeError)",
                     hint="raise ValueError unless w2.shape[1] == w1.shape[0]; TypeError for non-float tensors"):
        w1, w2 = _pair(d, "linear")
        bad = w2.T.contiguous() if w2.shape[0] != w2.shape[1] else w2[:, 1:]
        expect_raises(ValueError, fn, w1, bad, what=f"equalization_scales(w1 {list(w1.shape)}, w2 with "
                                                    f"{bad.shape[1]} input channels on axis 1)")
        expect_raises(TypeError, fn, w1.round().to(torch.int64), w2, what="equalization_scales(w1 of dtype int64, w2)")
    with suite.check("leaves its inputs unchanged", hint="do not write into w1 or w2 (no w1.abs_())"):
        expect_unchanged(fn, *_pair(d, "conv"), what="equalization_scales")
    suite.finish()


def check_equalize_pair(fn) -> None:
    suite = CheckSuite("equalize_pair", CONTRACT)
    d = suite.draw

    def scales(c):
        return torch.exp(d.rand(c, low=-1.5, high=1.5))

    def compare(w1, b1, w2, *s, dtype_tol=None):
        what, inputs = suite.label(w1, b1, w2, *s)
        got = fn(w1, b1, w2, *s)
        expected = REF["equalize_pair"](w1, b1, w2, *s)
        expect_length(got, 3, what, inputs=inputs)
        for index, (name, g, e) in enumerate(zip(("w1'", "b1'", "w2'"), got, expected, strict=True)):
            label = f"{what}[{index}] ({name})"
            if e is None:
                if g is not None:
                    raise AssertionError(f"{label}: b1 is None, so b1' must be None, got {type(g).__name__}")
                continue
            tolerance = dtype_tol or DTYPE_TOL[e.dtype]
            expect_dtype(g, e.dtype, label, inputs=inputs)
            expect_close(g, e, label, inputs=inputs, **tolerance)
        return got

    with suite.check("w1 / s along axis 0, b1 / s, w2 · s along axis 1 (given scales; linear pair)",
                     hint="divide output channel i of w1 (w1[i]) and b1[i] by s_i; multiply input channel i of w2 "
                          "(w2[:, i]) by s_i — reshape s to [C, 1] for w1 and [1, C] for w2"):
        w1, w2 = _pair(d, "linear")
        compare(w1, d.normal(w1.shape[0]), w2, scales(w1.shape[0]))
        w1, w2 = _pair(d, "linear")
        compare(w1, d.normal(w1.shape[0]), w2, scales(w1.shape[0]))
    with suite.check("conv pairs: s broadcast along w1's axis 0 and w2's axis 1 (4-D, and [D, C, h·w])",
                     hint="reshape s to [C, 1, 1, 1] for w1 and [1, C, 1, 1] (or [1, C, 1]) for w2"):
        for kind in ("conv", "conv_fc"):
            w1, w2 = _pair(d, kind)
            compare(w1, d.normal(w1.shape[0]), w2, scales(w1.shape[0]))
    with suite.check("scales=None: s = equalization_scales(w1, w2), zero-range channels kept",
                     hint="when scales is None compute them with equalization_scales (s = 1 on zero channels)"):
        w1, w2 = _pair(d, d.choice(["linear", "conv"]))
        compare(w1, d.normal(w1.shape[0]), w2)
        w1, w2 = _zero_channels(d, *_pair(d, "linear"))
        compare(w1, d.normal(w1.shape[0]), w2, None)
    with suite.check("the pair's function is unchanged across a ReLU: w2' relu(w1' x + b1') = w2 relu(w1 x + b1)",
                     hint="ReLU(x / s) = ReLU(x) / s for s > 0: w1 and b1 are divided by s, w2 multiplied by it"):
        w1, w2 = _pair(d, "linear")
        b1, s = d.normal(w1.shape[0]), scales(w1.shape[0])
        x = d.normal(d.size(20), w1.shape[1])
        what, inputs = suite.label(w1, b1, w2, s)
        got = fn(w1, b1, w2, s)
        expect_length(got, 3, what, inputs=inputs)
        for item in got:
            expect_tensor(item, what)
        before = torch.relu(x.double() @ w1.double().T + b1.double()) @ w2.double().T
        after = torch.relu(x.double() @ got[0].double().T + got[1].double()) @ got[2].double().T
        expect_close(after, before, f"{what}: the pair's output on drawn inputs x", rtol=1e-4,
                     atol=1e-4 * float(before.abs().max()))
    with suite.check("b1 = None gives b1' = None", hint="return (w1', None, w2') when the layer has no bias"):
        w1, w2 = _pair(d, "conv")
        compare(w1, None, w2, scales(w1.shape[0]))
        compare(w1, None, w2)
    with suite.check("each result in its input's dtype and shape (float16, bfloat16, float64)",
                     hint="compute in float32, then .to(w1.dtype), .to(b1.dtype), .to(w2.dtype)"):
        for dtype in (torch.float16, torch.bfloat16, torch.float64):
            w1, w2 = _pair(d, d.choice(["linear", "conv"]))
            compare(w1.to(dtype), d.normal(w1.shape[0]).to(dtype), w2.to(dtype), scales(w1.shape[0]))
        w1, w2 = _pair(d, "linear")
        compare(w1.half(), d.normal(w1.shape[0]).double(), w2, scales(w1.shape[0]))
    with suite.check("rejects mismatched shapes (ValueError)",
                     hint="raise ValueError unless w2.shape[1] == w1.shape[0] and b1 has shape [C]"):
        w1, w2 = _pair(d, "linear")
        c = w1.shape[0]
        expect_raises(ValueError, fn, w1, d.normal(c + 1), w2, what=f"equalize_pair(w1 [{c}, ...], b1 [{c + 1}], w2)")
        expect_raises(ValueError, fn, w1, d.normal(c), w2[:, 1:],
                      what=f"equalize_pair(w1 [{c}, ...], b1, w2 with {c - 1} input channels)")
    with suite.check("leaves its inputs unchanged", hint="do not write into w1, b1, w2 or scales (no w1 /= s)"):
        w1, w2 = _pair(d, "conv")
        expect_unchanged(fn, w1, d.normal(w1.shape[0]), w2, scales(w1.shape[0]), what="equalize_pair")
        expect_unchanged(fn, w1, d.normal(w1.shape[0]), w2, what="equalize_pair")
    suite.finish()


# ----------------------------------------------------------------------------------------------- part 2: bias
def check_expected_relu_input(fn) -> None:
    suite = CheckSuite("expected_relu_input", CONTRACT)
    d = suite.draw

    def bn(c, beta_low=-2.0, beta_high=2.0):
        return d.rand(c, low=beta_low, high=beta_high), d.rand(c, low=0.2, high=2.0)

    def compare(beta, gamma, tolerance=None):
        return expect_reference(suite, fn, beta, gamma, tolerance=tolerance or DTYPE_TOL[beta.dtype])

    with suite.check("β·(1 − Φ(−β/σ)) + σ·φ(−β/σ) with σ = γ > 0",
                     hint="Phi(z) = torch.special.ndtr(z) (or 0.5 * (1 + erf(z / sqrt 2))), "
                          "phi(z) = exp(-z^2 / 2) / sqrt(2 pi), z = -beta / sigma"):
        compare(*bn(d.size(30)))
        compare(*bn(d.size(30), -0.5, 0.5))
    with suite.check("σ = |γ|: a negative BatchNorm weight gives the same mean as its absolute value",
                     hint="the pre-activation's standard deviation is |gamma|: BN's weight can be negative"):
        beta, gamma = bn(d.size(30))
        sign = torch.where(d.rand(gamma.numel()) < 0.6, -1.0, 1.0)
        compare(beta, gamma * sign)
        compare(beta, -gamma)
    with suite.check("γ = 0: E = max(β, 0), never NaN",
                     hint="with sigma == 0 the pre-activation is the constant beta: use max(beta, 0) there, and "
                          "divide by a safe sigma so that no NaN appears"):
        beta, gamma = bn(d.size(20))
        gamma = torch.where(d.rand(beta.numel()) < 0.4, 0.0, gamma)
        dead = d.permutation(beta.numel())[:3]                   # β = 0 with γ = 0 (0 / 0), and β = ±1.5
        beta[dead], gamma[dead] = torch.tensor([0.0, 1.5, -1.5]), 0.0
        compare(beta, gamma)
        compare(beta, torch.zeros_like(beta))
    with suite.check("an all-negative pre-activation (β ≪ 0) gives E ≈ 0, a large positive β gives E ≈ β",
                     hint="for beta << 0 the ReLU is almost always 0 and for beta >> sigma it passes x: E -> 0 and "
                          "E -> beta; use a stable Phi (torch.special.ndtr), not 1 - something that cancels"):
        n = d.size(16)
        gamma = d.rand(n, low=0.2, high=1.0)
        far = d.rand(n, low=6.0, high=40.0)
        sign = torch.where(d.rand(n) < 0.5, -1.0, 1.0)
        compare(sign * far * gamma, gamma * torch.where(d.rand(n) < 0.5, 1.0, -1.0),
                tolerance={"rtol": 1e-5, "atol": 1e-6})
    with suite.check("the result is [C] in β's dtype (float16, bfloat16, float64)",
                     hint="compute in float32, return .to(beta.dtype)"):
        for dtype in (torch.float16, torch.bfloat16, torch.float64):
            beta, gamma = bn(d.size(20))
            compare(beta.to(dtype), gamma.to(dtype))
    with suite.check("rejects β and γ of different shapes (ValueError) and integer tensors (TypeError)",
                     hint="raise ValueError when beta.shape != gamma.shape; TypeError for non-float tensors"):
        beta, gamma = bn(d.size(10))
        expect_raises(ValueError, fn, beta, gamma[1:], what=f"expected_relu_input(beta [{beta.numel()}], "
                                                              f"gamma [{beta.numel() - 1}])")
        expect_raises(TypeError, fn, beta.round().to(torch.int64), gamma,
                      what="expected_relu_input(beta of dtype int64, gamma)")
    with suite.check("leaves its inputs unchanged", hint="do not write into beta or gamma (no gamma.abs_())"):
        beta, gamma = bn(d.size(20))
        expect_unchanged(fn, beta, -gamma, what="expected_relu_input")
    suite.finish()


def check_corrected_bias(fn) -> None:
    suite = CheckSuite("corrected_bias", CONTRACT)
    d = suite.draw

    def layer(conv: bool):
        c_out, c_in = d.integer(3, 10), d.integer(2, 9)
        shape = (c_out, c_in, d.choice([1, 3]), d.choice([1, 3])) if conv else (c_out, c_in)
        w = _weights(d, *shape)
        step = w.abs().reshape(c_out, -1).amax(1) / d.choice([1, 3, 7])
        w_q = torch.round(w / step.reshape(-1, *([1] * (w.ndim - 1)))) * step.reshape(-1, *([1] * (w.ndim - 1)))
        return d.normal(c_out) * 0.3, w, w_q, d.rand(c_in, low=0.0, high=2.0)

    def tolerance(bias, w, w_q, mean, dtype):
        mass = float(((w_q.double() - w.double()).abs().reshape(w.shape[0], w.shape[1], -1).sum(2)
                      @ mean.double().abs()).max())
        scale = mass + (0.0 if bias is None else float(bias.abs().max()))
        if dtype in LOW_PRECISION:
            return {"rtol": DTYPE_TOL[dtype]["rtol"], "atol": DTYPE_TOL[dtype]["rtol"] * scale + 1e-4}
        return {"rtol": 1e-5, "atol": 1e-5 * scale + 1e-7}

    def compare(bias, w, w_q, mean):
        dtype = w.dtype if bias is None else bias.dtype
        return expect_reference(suite, fn, bias, w, w_q, mean, tolerance=tolerance(bias, w, w_q, mean, dtype))

    with suite.check("bias − (w_q − w) @ E[x] (linear layer)",
                     hint="the quantization error eps = w_q - w shifts output c by sum_j eps[c, j] E[x_j]: "
                          "subtract it, bias - eps @ expected_input"):
        compare(*layer(False))
        compare(*layer(False))
    with suite.check("subtracts the shift: a weight error that raises the output lowers the bias",
                     hint="corrected = bias - eps @ E[x], with eps = w_q - w (not w - w_q, not +)"):
        bias, w, _, mean = layer(False)
        w_q = w + d.rand(*w.shape, low=0.0, high=0.1)                   # every weight rounded up
        compare(bias, w, w_q, mean)
        compare(bias, w, w - d.rand(*w.shape, low=0.0, high=0.1), mean)
    with suite.check("conv layers: ε summed over the kernel's spatial axes (dims ≥ 2) before @ E[x]",
                     hint="each of the kh·kw taps of input channel j sees E[x_j]: eps.sum(dim=(2, 3)), "
                          "not the mean, and not summed over the input channels"):
        compare(*layer(True))
        compare(*layer(True))
    with suite.check("bias = None: the correction of a zero bias, in w's dtype",
                     hint="a layer without bias starts from zeros: -eps @ E[x]"):
        _, w, w_q, mean = layer(d.choice([False, True]))
        compare(None, w, w_q, mean)
        _, w, w_q, mean = layer(False)
        compare(None, w.double(), w_q.double(), mean)
    with suite.check("the result in bias's dtype (float16, bfloat16, float64 bias and weights)",
                     hint="compute in float32, return .to(bias.dtype) (w's dtype when bias is None)"):
        for dtype in (torch.float16, torch.bfloat16, torch.float64):
            bias, w, w_q, mean = layer(d.choice([False, True]))
            compare(bias.to(dtype), w.to(dtype), w_q.to(dtype), mean.to(dtype))
        bias, w, w_q, mean = layer(False)
        compare(bias.double(), w, w_q, mean)
    with suite.check("rejects mismatched shapes (ValueError)",
                     hint="raise ValueError unless w_q.shape == w.shape, expected_input is [C_in] and bias [C_out]"):
        bias, w, w_q, mean = layer(False)
        c_out, c_in = w.shape
        expect_raises(ValueError, fn, bias, w, w_q, d.rand(c_in + 1),
                      what=f"corrected_bias(bias, w [{c_out}, {c_in}], w_q, expected_input [{c_in + 1}])")
        expect_raises(ValueError, fn, bias, w, w_q[:, 1:], mean,
                      what=f"corrected_bias(bias, w [{c_out}, {c_in}], w_q [{c_out}, {c_in - 1}], expected_input)")
        expect_raises(ValueError, fn, d.normal(c_out + 1), w, w_q, mean,
                      what=f"corrected_bias(bias [{c_out + 1}], w [{c_out}, {c_in}], w_q, expected_input)")
    with suite.check("leaves its inputs unchanged", hint="do not write into bias, w, w_q or expected_input "
                                                        "(no bias -= ...)"):
        expect_unchanged(fn, *layer(True), what="corrected_bias")
    suite.finish()


# ----------------------------------------------------------------------------------------------- part 3: AdaRound
#: V where the rectified sigmoid reaches 0 and 1: σ(V)(ζ − γ) + γ = 0 or 1.
CLIP_LOW, CLIP_HIGH = -2.3978952728, 2.3978952728


def _v_values(d, *shape: int, std: float = 2.0) -> torch.Tensor:
    """Drawn V of ``shape`` at least 0.05 away from the clip points (where h's gradient jumps)."""
    v = d.normal(*shape, std=std)
    near = ((v - CLIP_LOW).abs() < 0.05) | ((v - CLIP_HIGH).abs() < 0.05)
    return torch.where(near, v + 0.2, v)


def _stretch(d) -> tuple[float, float]:
    """A drawn (ζ, γ) other than the defaults, far enough apart that swapping or ignoring them shows."""
    return 1.0 + d.uniform(0.15, 0.5), -d.uniform(0.15, 0.5)


def check_rectified_sigmoid(fn) -> None:
    suite = CheckSuite("rectified_sigmoid", CONTRACT)
    d = suite.draw

    def compare(*args, **kwargs):
        v = args[0]
        return expect_reference(suite, fn, *args, tolerance=DTYPE_TOL[v.dtype], **kwargs)

    with suite.check("h = clamp(σ(v)·(ζ − γ) + γ, 0, 1) with the defaults ζ = 1.1, γ = −0.1",
                     hint="torch.clamp(torch.sigmoid(v) * (zeta - gamma) + gamma, 0, 1)"):
        compare(_v_values(d, d.size(60)))
        compare(_v_values(d, d.integer(3, 8), d.integer(3, 8)))
    with suite.check("h is exactly 0 and 1 beyond the clip points (|v| large)",
                     hint="clamp to [0, 1]: the stretched sigmoid goes below 0 and above 1"):
        edges = torch.tensor([-30.0, -10.0, -3.0, -2.45, 2.45, 3.0, 10.0, 30.0])
        compare(d.mix(edges, _v_values(d, d.size(20), std=5.0)))
    with suite.check("ζ and γ are the arguments given (not the defaults, not swapped)",
                     hint="use the zeta and gamma passed in: sigmoid(v) * (zeta - gamma) + gamma"):
        zeta, gamma = _stretch(d)
        compare(_v_values(d, d.size(40)), zeta, gamma)
        zeta, gamma = _stretch(d)
        compare(_v_values(d, d.size(40)), zeta=zeta, gamma=gamma)
    with suite.check("gradient σ'(v)·(ζ − γ) inside (0, 1), 0 where clipped",
                     hint="build h from torch ops on v (no .detach(), no .item()); torch.clamp gives 0 gradient "
                          "where h is clipped"):
        v = d.mix(torch.tensor([-6.0, -3.5, 3.5, 6.0]), _v_values(d, d.size(40)))
        expect_gradients(fn, REF["rectified_sigmoid"], v, wrt=[0], upstream=d.normal(v.numel()), suite=suite,
                         rtol=1e-5, atol=1e-7)
        zeta, gamma = _stretch(d)
        v = _v_values(d, d.integer(2, 6), d.integer(2, 6), std=3.0)
        expect_gradients(fn, REF["rectified_sigmoid"], v, zeta, gamma, wrt=[0], upstream=d.normal(*v.shape),
                         suite=suite, rtol=1e-5, atol=1e-7)
    with suite.check("h in v's dtype and shape (float16, bfloat16, float64; 0-dim, 3-D)",
                     hint="compute in float32, return .to(v.dtype)"):
        for dtype in (torch.float16, torch.bfloat16, torch.float64):
            compare(_v_values(d, d.size(30)).to(dtype))
        compare(torch.tensor(d.uniform(-2.0, 2.0)))
        compare(_v_values(d, 24).reshape(2, 3, 4))
    with suite.check("rejects an integer v (TypeError)", hint="raise TypeError for non-float tensors"):
        expect_raises(TypeError, fn, d.randint(-3, 4, (d.size(5),)), what="rectified_sigmoid(v of dtype int64)")
    with suite.check("leaves its input unchanged", hint="do not write into v (no v.sigmoid_())"):
        expect_unchanged(fn, _v_values(d, d.size(30)), what="rectified_sigmoid")
    suite.finish()


def _grid_weights(d, *shape: int, per_channel: bool, fractions: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, Any]:
    """(w, scale): w = (integer + fraction) · scale with power-of-two scales, so w / scale and its fractional part
    are exact in any precision. ``fractions``: hand-picked fractional parts written at drawn positions."""
    n = 1
    for size in shape:
        n *= size
    integer = d.randint(-6, 6, (n,)).to(torch.float32)
    fraction = torch.floor(d.rand(n) * 2**10) / 2**10
    if fractions is not None:
        positions = d.permutation(n)[:fractions.numel()]
        fraction[positions] = fractions[:positions.numel()]
    if per_channel:
        scale = torch.tensor([d.power_of_two(2, 7) for _ in range(shape[0])])
        view = scale.reshape(-1, *([1] * (len(shape) - 1)))
    else:
        scale = d.power_of_two(2, 7)
        view = torch.tensor(scale)
    return ((integer + fraction).reshape(shape) * view), scale


#: Fractional parts at the edges of init_v: 0 (on the grid), 1/2, and just below 1.
EDGE_FRACTIONS = torch.tensor([0.0, 0.0, 0.5, 1 - 2.0**-10, 1 - 2.0**-12, 2.0**-12])


def check_init_v(fn) -> None:
    suite = CheckSuite("init_v", CONTRACT)
    d = suite.draw

    def compare(w, scale, *args, **kwargs):
        return expect_reference(suite, fn, w, scale, *args, tolerance={"rtol": 1e-5, "atol": 2e-5}, **kwargs)

    with suite.check("h(V) = rest: V = −log((ζ − γ) / (rest − γ) − 1), rest = w/scale − floor(w/scale) "
                     "(per-channel scale [C])",
                     hint="V is the inverse of the rectified sigmoid at the fractional part: "
                          "-log((zeta - gamma) / (rest - gamma) - 1), with the gamma shift"):
        compare(*_grid_weights(d, d.integer(3, 8), d.integer(4, 16), per_channel=True))
        compare(*_grid_weights(d, d.integer(3, 8), d.integer(4, 16), per_channel=True))
    with suite.check("fractional parts 0 and just below 1 give finite V (−log 11 and about log 11)",
                     hint="rest = 0 gives -log((zeta - gamma) / -gamma - 1), finite thanks to gamma < 0: never "
                          "take log(rest) or logit(rest) itself"):
        compare(*_grid_weights(d, d.integer(3, 6), d.integer(6, 12), per_channel=True, fractions=EDGE_FRACTIONS))
        w, scale = _grid_weights(d, d.integer(2, 5), d.integer(4, 8), per_channel=False)
        compare(torch.floor(w / scale) * scale, scale)                      # every weight on the grid
    with suite.check("negative weights: rest from floor, in [0, 1) (not trunc, not round)",
                     hint="floor(-2.3) = -3, so the fractional part of -2.3 is 0.7: use torch.floor, not "
                          "torch.trunc / int() / round"):
        w, scale = _grid_weights(d, d.integer(3, 6), d.integer(6, 12), per_channel=True)
        compare(-w.abs() - scale.reshape(-1, 1) * 2.0**-3, scale)
    with suite.check("one scale for the tensor: a float and a 0-dim tensor",
                     hint="scale may be a Python float or a 0-dim tensor: torch.as_tensor(scale) broadcasts"):
        w, scale = _grid_weights(d, d.integer(3, 8), d.integer(4, 16), per_channel=False)
        compare(w, scale)
        compare(w, torch.tensor(scale))
    with suite.check("conv weights [C, C_in, k, k]: the per-channel scale along axis 0",
                     hint="reshape scale [C] to [C, 1, 1, 1] (axis 0), not along the last axis"):
        c = d.integer(3, 6)
        compare(*_grid_weights(d, c, d.integer(1, 4), 3, 3, per_channel=True))
        compare(*_grid_weights(d, c, c, 1, c, per_channel=True))            # axis 0 and the last axis same size
    with suite.check("ζ and γ are the arguments given",
                     hint="use the zeta and gamma passed in (h(V) = rest for that stretch)"):
        zeta, gamma = _stretch(d)
        compare(*_grid_weights(d, d.integer(3, 6), d.integer(4, 12), per_channel=True), zeta, gamma)
    with suite.check("float32 V for float16, bfloat16 and float64 weights",
                     hint="compute w / scale in float32 and return float32, whatever w's dtype"):
        for dtype in (torch.float16, torch.bfloat16, torch.float64):
            w, scale = _grid_weights(d, d.integer(3, 6), d.integer(4, 12), per_channel=True)
            compare(w.to(dtype), scale)
    with suite.check("rejects a scale <= 0 (ValueError)", hint="raise ValueError unless every scale is > 0"):
        w, scale = _grid_weights(d, d.integer(3, 6), d.integer(4, 8), per_channel=True)
        bad = scale.clone()
        bad[d.integer(0, bad.numel() - 1)] = d.choice([0.0, -scale[0].item()])
        expect_raises(ValueError, fn, w, bad, what="init_v(w, scale with an entry <= 0)")
        expect_raises(ValueError, fn, w, -d.uniform(0.01, 1.0), what="init_v(w, scale < 0)")
        expect_raises(ValueError, fn, w, 0.0, what="init_v(w, scale=0.0)")
    with suite.check("leaves its inputs unchanged", hint="do not write into w or scale"):
        expect_unchanged(fn, *_grid_weights(d, d.integer(3, 6), d.integer(4, 8), per_channel=True), what="init_v")
    suite.finish()


def _beta(d) -> float:
    """A non-integer β in (2, 20): a missing |·| gives NaN for negative 2h − 1, and β = 2 would hide it."""
    return d.integer(2, 19) + d.uniform(0.1, 0.9)


def check_rounding_regularizer(fn) -> None:
    suite = CheckSuite("rounding_regularizer", CONTRACT)
    d = suite.draw

    def mass(v):
        return {"rtol": 1e-5, "atol": 1e-6 * v.numel()}

    def compare(v, *args, **kwargs):
        return expect_reference(suite, fn, v, *args, tolerance=mass(v) if v.dtype not in LOW_PRECISION
                                 else {"rtol": DTYPE_TOL[v.dtype]["rtol"], "atol": 1e-3 * v.numel()}, **kwargs)

    with suite.check("Σ (1 − |2·h(V) − 1|^β) over every element (non-integer β)",
                     hint="(1 - (2 * h - 1).abs() ** beta).sum() with h = rectified_sigmoid(v)"):
        compare(_v_values(d, d.size(60)), _beta(d))
        compare(_v_values(d, d.integer(3, 8), d.integer(3, 8)), _beta(d))
    with suite.check("|2h − 1|: h below 1/2 counts like h above (the absolute value)",
                     hint="take the absolute value before the power: (2h - 1) is negative for h < 1/2, and a "
                          "negative number to a non-integer power is NaN"):
        v = -d.rand(d.size(30), low=0.05, high=2.0)                         # every h < 1/2
        compare(v, _beta(d))
        compare(d.mix(torch.tensor([-1.0, -0.5, 0.5, 1.0]), _v_values(d, d.size(20))), 3.0)
    with suite.check("a sum over every element, not a mean: 0 when every h is 0 or 1",
                     hint="sum over all elements (no .mean()); h exactly 0 or 1 contributes 0"):
        far = d.rand(d.size(20), low=3.0, high=20.0)
        signs = torch.where(d.rand(far.numel()) < 0.5, -1.0, 1.0)
        compare(far * signs, _beta(d))
        compare(d.mix(far * signs, _v_values(d, d.size(10))), _beta(d))
    with suite.check("β, ζ and γ are the arguments given",
                     hint="use beta, zeta and gamma as passed (annealed beta changes every step)"):
        v = _v_values(d, d.size(40))
        compare(v, _beta(d))
        compare(v, d.uniform(2.0, 3.0))
        zeta, gamma = _stretch(d)
        compare(v, _beta(d), zeta, gamma)
    with suite.check("gradient: ∂/∂V of Σ 1 − |2h − 1|^β (0 where h is clipped)",
                     hint="build the sum from torch ops on v (rectified_sigmoid, abs, pow, sum): no .detach()"):
        v = d.mix(torch.tensor([-6.0, 6.0]), _v_values(d, d.size(40)))
        expect_gradients(fn, REF["rounding_regularizer"], v, _beta(d), wrt=[0], upstream=torch.tensor(d.uniform(
            0.5, 2.0)), suite=suite, value_tolerance=mass(v), tolerances=[{"rtol": 1e-4, "atol": 1e-6}])
        v = _v_values(d, d.integer(2, 6), d.integer(2, 6))
        expect_gradients(fn, REF["rounding_regularizer"], v, d.uniform(2.0, 4.0), *_stretch(d), wrt=[0],
                         upstream=torch.tensor(-d.uniform(0.5, 2.0)), suite=suite, value_tolerance=mass(v),
                         tolerances=[{"rtol": 1e-4, "atol": 1e-6}])
    with suite.check("a 0-dim result in v's dtype (float16, bfloat16, float64)",
                     hint="return the sum as a 0-dim tensor (not .item(), not keepdim), .to(v.dtype)"):
        for dtype in (torch.float16, torch.bfloat16, torch.float64):
            compare(_v_values(d, d.size(30)).to(dtype), _beta(d))
    with suite.check("leaves its input unchanged", hint="do not write into v"):
        expect_unchanged(fn, _v_values(d, d.size(30)), _beta(d), what="rounding_regularizer")
    suite.finish()


def check_beta_schedule(fn) -> None:
    suite = CheckSuite("beta_schedule", CONTRACT)
    d = suite.draw

    def compare(*args, **kwargs):
        what, inputs = suite.label(*args, **kwargs)
        got = fn(*args, **kwargs)
        if isinstance(got, bool) or not isinstance(got, float):
            raise AssertionError(f"{what}: expected a Python float, got {type(got).__name__}: {got!r}")
        expect_close(got, REF["beta_schedule"](*args, **kwargs), what, rtol=1e-9, atol=1e-9, inputs=inputs)

    def total():
        return 5 * d.integer(4, 60) + d.integer(0, 4)

    with suite.check("β = start during the warm start (step < warm_start · total)",
                     hint="no annealing before step warm_start * total: return start there"):
        n = total()
        for step in (0, 1, int(0.2 * n) - 1, d.integer(0, int(0.2 * n) - 1)):
            compare(step, n)
    with suite.check("linear from start down to end after the warm start; β = end at step = total",
                     hint="end + (start - end) * (1 - (step - warm) / (total - warm)) with warm = warm_start * "
                          "total: it decreases from 20 to 2 (not from 2 to 20, not over the whole run)"):
        n = 5 * d.integer(4, 60) + d.integer(1, 4)              # warm_start · total is not a whole step
        for step in (n, n - 1, (n + int(0.2 * n)) // 2, d.integer(int(0.2 * n) + 1, n), d.integer(int(0.2 * n) + 1,
                                                                                                     n)):
            compare(step, n)
    with suite.check("the warm start's end: β = start at step = warm_start · total, then it decreases",
                     hint="the annealing starts at step warm_start * total (from start), not at step 0"):
        n = 5 * d.integer(4, 60)                                 # warm_start · total is a whole step
        warm = n // 5
        for step in (warm - 1, warm, warm + 1, warm + 2):
            compare(step, n)
    with suite.check("warm_start, start and end are the arguments given",
                     hint="use the warm_start, start and end passed in (the defaults are 0.2, 20 and 2)"):
        n, warm = total(), d.uniform(0.05, 0.6)
        start, end = d.uniform(8.0, 30.0), d.uniform(0.5, 5.0)
        for step in (0, int(warm * n), d.integer(int(warm * n) + 1, n), n):
            compare(step, n, warm, start, end)
            compare(step, n, warm_start=warm, start=start, end=end)
        compare(d.integer(0, n), n, 0.0)
    with suite.check("total = 1 (steps 0 and 1) and warm_start = 0",
                     hint="with total = 1 the warm start is step 0 only; with warm_start = 0 the annealing starts "
                          "at step 0"):
        compare(0, 1)
        compare(1, 1)
        n = total()
        compare(0, n, 0.0)
        compare(d.integer(1, n), n, 0.0)
    with suite.check("rejects step outside [0, total] and total < 1 (ValueError)",
                     hint="raise ValueError unless total >= 1 and 0 <= step <= total"):
        n = total()
        expect_raises(ValueError, fn, n + d.integer(1, 5), n, what=f"beta_schedule(step > total, total={n})")
        expect_raises(ValueError, fn, -d.integer(1, 5), n, what=f"beta_schedule(step < 0, total={n})")
        expect_raises(ValueError, fn, 0, 0, what="beta_schedule(step=0, total=0)")
    suite.finish()


# ----------------------------------------------------------------------------------------------- AdaRound layer
def _layer(d, bits: int, activation: str, biased: bool = False, clamped: bool = False) -> dict:
    """One layer's problem: weight [C_out, K], per-channel scale, inputs [N, K] with a positive mean (post-ReLU),
    targets = act(x_float W^T + b) with x_float a little off the inputs (the earlier layers' rounding errors).

    ``biased``: every fractional part in [1/2, 0.7): nearest rounding rounds them all up and shifts every output by
    the same sign, which AdaRound undoes. ``clamped``: a few integers beyond the signed range, so clamping matters.
    """
    c, k, n = d.integer(4, 8), d.integer(12, 28), d.size(256)
    q_max = 2 ** (bits - 1) - 1
    integer = d.randint(-q_max, q_max, (c, k)).to(torch.float32)
    if clamped:
        flat = integer.reshape(-1)
        flat[d.permutation(flat.numel())[:max(2, flat.numel() // 12)]] = d.choice([-1.0, 1.0]) * (q_max + 2)
    fraction = d.rand(c, k, low=0.5, high=0.7) if biased else d.rand(c, k)
    scale = d.rand(c, low=0.02, high=0.1)
    weight = (integer + fraction) * scale[:, None]
    x_float = torch.relu(d.normal(n, k, std=0.5) + d.uniform(0.5, 1.0))
    inputs = x_float + d.normal(n, k, std=0.02)
    bias = d.normal(c, std=0.3) - (0.2 if activation == "relu" else 0.0)
    targets = x_float @ weight.T + bias
    if activation == "relu":
        targets = torch.relu(targets)
    return {"weight": weight, "scale": scale, "inputs": inputs, "targets": targets, "bits": bits, "bias": bias,
            "activation": activation}


def _output_error(q: torch.Tensor, p: dict) -> float:
    out = p["inputs"].double() @ (p["scale"].double()[:, None] * q.double()).T
    if p["bias"] is not None:
        out = out + p["bias"].double()
    if p["activation"] == "relu":
        out = torch.relu(out)
    return float(((out - p["targets"].double()) ** 2).mean())


def _nearest(p: dict) -> torch.Tensor:
    q_max = 2 ** (p["bits"] - 1) - 1
    return torch.clamp(torch.floor(p["weight"] / p["scale"][:, None] + 0.5), -q_max - 1, q_max).to(torch.int64)


def check_adaround_layer(fn) -> None:
    suite = CheckSuite("adaround_layer", CONTRACT)
    d = suite.draw

    def call(p: dict, **options):
        args = (p["weight"], p["scale"], p["inputs"], p["targets"], p["bits"])
        kwargs = {"bias": p["bias"], "activation": p["activation"], **options}
        what, inputs = suite.label(*args, **kwargs)
        got = fn(*args, **kwargs)
        expect_dtype(got, torch.int64, what, inputs=inputs)
        expect_shape(got, tuple(p["weight"].shape), what, inputs=inputs)
        return got, what, inputs, args, kwargs

    def agreement(p: dict, **options):
        got, what, inputs, args, kwargs = call(p, **options)
        expected = REF["adaround_layer"](*args, **kwargs)
        share = float((got == expected).double().mean())
        if share < AGREEMENT:
            near = float((_nearest(p) == expected).double().mean())
            raise AssertionError(f"{what}: {100 * share:.1f} % of the rounding decisions agree with the reference's "
                                 f"on the same inputs, at least {100 * AGREEMENT:.0f} % expected (rounding to "
                                 f"nearest agrees on {100 * near:.1f} %)")

    options = {"iterations": d.integer(80, 120), "lr": d.uniform(0.02, 0.04), "batch_size": d.choice([64, 128]),
               "seed": d.integer(0, 2**31)}
    with suite.check("int64 [C_out, K]: each value floor(w / s) or floor(w / s) + 1, clamped to "
                     "[−2^(b−1), 2^(b−1) − 1]",
                     hint="AdaRound only chooses the direction: floor(w / s) + (V >= 0), then torch.clamp to the "
                          "signed range, .to(torch.int64)"):
        for bits, clamped in ((d.choice([2, 3]), True), (d.choice([4, 5]), True), (3, False)):
            p = _layer(d, bits, d.choice(["relu", "none"]), clamped=clamped)
            got, what, inputs, _, _ = call(p, **options)
            q_max = 2 ** (bits - 1) - 1
            floor = torch.floor(p["weight"] / p["scale"][:, None])
            allowed = (got == floor.clamp(-q_max - 1, q_max)) | (got == (floor + 1).clamp(-q_max - 1, q_max))
            if not bool(allowed.all()):
                i, j = (~allowed).nonzero()[0].tolist()
                ratio = float(p["weight"][i, j] / p["scale"][i])
                raise AssertionError(f"{what}: at index ({i}, {j}) w / s = {ratio:.4f}"
                                     f", so floor(w / s) or floor(w / s) + 1 clamped to [{-q_max - 1}, {q_max}] was "
                                     f"expected, got {int(got[i, j])} ({int((~allowed).sum())} of {got.numel()} "
                                     f"values outside that set)")
    with suite.check("iterations = 0: V = init_v, so the hard rounding floor + (V >= 0) is rounding to nearest "
                     "(half up)",
                     hint="V starts at init_v(weight, scale), and V >= 0 exactly where the fractional part is >= 1/2 "
                          "(V > 0 or V > 0.5 instead of V >= 0 rounds some of those down)"):
        p = _layer(d, d.choice([3, 4]), "relu", clamped=True)
        p["scale"] = torch.tensor([d.power_of_two(4, 6) for _ in range(p["scale"].numel())])
        q_max = 2 ** (p["bits"] - 1) - 1
        integer = d.randint(-q_max, q_max, tuple(p["weight"].shape)).to(torch.float32)
        fraction = d.mix(torch.tensor([0.5] * 6 + [0.0] * 2 + [0.5 + 2.0**-8, 0.5 - 2.0**-8]),
                         torch.floor(d.rand(integer.numel() - 10) * 256) / 256).reshape(integer.shape)
        p["weight"] = (integer + fraction) * p["scale"][:, None]
        got, what, inputs, _, _ = call(p, iterations=0)
        expect_equal(got, _nearest(p), what, inputs=inputs)
    with suite.check("the output error after the ReLU is below rounding to nearest's",
                     hint="minimize ((relu(x @ W_soft.T + b) - targets) ** 2).mean() over V with Adam, W_soft = "
                          "scale * clamp(floor(w / s) + h(V), q_min, q_max): the gradient must reach V (no hard "
                          "rounding inside the loop)"):
        for _ in range(2):
            p = _layer(d, d.choice([3, 4]), "relu", biased=True)
            got, what, inputs, _, _ = call(p, **options)
            near, mine = _output_error(_nearest(p), p), _output_error(got, p)
            if not mine < near:
                raise AssertionError(f"{what}: the output error of your integers is {mine:.6g}, rounding to nearest's "
                                     f"{near:.6g}: AdaRound must do better on this layer (every fractional part is "
                                     f"in [0.5, 0.7), so nearest rounds them all up)")
    with suite.check(f"decisions agree with the reference's for ≥ {100 * AGREEMENT:.0f} % of the weights "
                     "(ReLU layer, loss after the activation)",
                     hint="the loss compares relu(x @ W_soft.T + b) with the targets (measured after the ReLU), "
                          "plus reg_weight * rounding_regularizer(V, beta_schedule(i, iterations)) after the warm "
                          "start; hard rounding floor + (V >= 0)"):
        agreement(_layer(d, d.choice([3, 4]), "relu"), **options)
        agreement(_layer(d, 3, "relu", biased=True), **options)
    with suite.check(f"decisions agree with the reference's for ≥ {100 * AGREEMENT:.0f} % of the weights "
                     "(activation = 'none', and bias = None)",
                     hint="activation='none': no ReLU on the output; bias None: no bias term"):
        agreement(_layer(d, d.choice([3, 4]), "none"), **options)
        p = _layer(d, 3, "none")
        p["targets"] = p["targets"] - p["bias"]
        p["bias"] = None
        agreement(p, **options)
    with suite.check("the same seed gives the same result",
                     hint="draw the rows with torch.randint(N, (batch_size,), generator=g), g = "
                          "torch.Generator().manual_seed(seed) made inside the function (never the global RNG)"):
        p = _layer(d, 3, "relu")
        first, what, inputs, _, _ = call(p, **options)
        again, _, _, _, _ = call(p, **options)
        expect_equal(again, first, f"{what}, called again with the same seed", inputs=inputs)
    with suite.check("float16 and float64 inputs give int64 integers of the same layer",
                     hint="compute in float32 (weight.float(), ...); the result is int64 whatever the inputs' dtype"):
        for dtype in (torch.float16, torch.float64):
            p = _layer(d, 3, "relu")
            p = {key: value.to(dtype) if isinstance(value, torch.Tensor) else value for key, value in p.items()}
            got, what, inputs, args, kwargs = call(p, iterations=0)
            expect_equal(got, REF["adaround_layer"](*args, **{**kwargs, "iterations": 0}), what, inputs=inputs)
    with suite.check("rejects mismatched shapes and an unknown activation (ValueError)",
                     hint="raise ValueError unless inputs is [N, K], targets [N, C_out] and activation is 'relu' or "
                          "'none'"):
        p = _layer(d, 3, "relu")
        w, s, x, t = p["weight"], p["scale"], p["inputs"], p["targets"]
        expect_raises(ValueError, fn, w, s, x[:, 1:], t, 3, iterations=1,
                      what=f"adaround_layer(weight [{w.shape[0]}, {w.shape[1]}], scale, inputs [N, {w.shape[1] - 1}],"
                           f" targets, bits=3)")
        expect_raises(ValueError, fn, w, s, x, t[:-1], 3, iterations=1,
                      what="adaround_layer(weight, scale, inputs [N, K], targets [N - 1, C_out], bits=3)")
        expect_raises(ValueError, fn, w, s, x, t, 3, activation=d.choice(["sigmoid", "gelu", "tanh"]), iterations=1,
                      what="adaround_layer(..., activation not 'relu' or 'none')")
    with suite.check("leaves its inputs unchanged", hint="do not write into weight, scale, inputs, targets or bias"):
        p = _layer(d, 3, "relu")
        expect_unchanged(fn, p["weight"], p["scale"], p["inputs"], p["targets"], 3, p["bias"], iterations=10,
                         what="adaround_layer")
    suite.finish()


__all__ = [name for name in dir() if name.startswith("check_")] + ["CONTRACT"]
