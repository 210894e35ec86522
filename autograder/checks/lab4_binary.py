"""Hidden checks for Lab 4 — binary and ternary networks: sign, stochastic sign, the sign STE, BWN scales, TWN, TTQ,
packed signs and the XNOR–popcount matmul.

These run on the trusted side only: each ``check_<name>(fn)`` receives a proxy of the student's function, calls it
with plain data drawn from the course secret (``suite.draw``), and compares what comes back with lowbit's reference
(``lowbit.quant.binary``, computed here). Gradients (``sign_ste``, ``binarize_weights``, ``ttq_quantize``) are asked
of the sandbox with :func:`expect_gradients` / :func:`call_with_gradients` against upstream gradients drawn from the
secret too; where a summed gradient could hide a mistake (TTQ's ∂/∂w_n, whose sign is the point, BWN's 1/n term)
the upstream is drawn positive so that no terms cancel.

Exact values where the contract makes them exact: thresholds given explicitly (``twn_quantize``'s ``delta``, TTQ's
t · max|w|) are drawn as powers of two, or integers times them, so ``|w| == Δ`` is a real tie in every dtype; the
stochastic checks use weights on a grid where p = (w + 1) / 2 is exact in the input's dtype, so a correct answer
computing p in any precision, or as w / 2 + 1/2, draws the same ±1 as the reference.

``binarize_stochastic`` is graded three ways: it reproduces the stated draw u = torch.rand(w.shape,
generator=torch.Generator().manual_seed(seed)) (float32) with +1 where u < p; its mean over many draws is clip(w, −1,
1) within 6 standard deviations (a bound stated in the check's name); and |w| >= 1 is deterministic. What the
hidden checks cannot see is the worker's global RNG (only the function's results cross the sandbox): a function
that seeds the global generator and draws from it returns the stated draw. The visible test checks
``torch.get_rng_state()`` around a call, in the student's own process.
"""
from __future__ import annotations

from typing import Any

import torch

from autograder.checks._api import (CheckSuite, call_with_gradients, expect_equal, expect_gradients, expect_raises,
                                    expect_reference, expect_shape, expect_unchanged, summed_tolerance)
from autograder.contract import load_contract

#: Graded functions, their signatures and references: ``lab4_binary.contract.json``.
CONTRACT = load_contract("lab4_binary")
REF = {name: CONTRACT.reference(name) for name in CONTRACT.graded}
#: Means of |w| (scales, thresholds) by dtype: a float32 reduction in any order (also for float64 input: a result
#: in the input's dtype computed in float32 is not a mistake of this lab); in float16 / bfloat16 up to 3 units in
#: the last place (a sum rounded, then divided and scaled by 0.7 in the input's dtype, or all in float32).
MEAN_TOL = {torch.float32: {"rtol": 1e-5, "atol": 1e-7}, torch.float64: {"rtol": 1e-5, "atol": 1e-7},
            torch.float16: {"rtol": 3e-3, "atol": 1e-5}, torch.bfloat16: {"rtol": 2.4e-2, "atol": 1e-4}}
#: Gradients of float16 / bfloat16 inputs (the student may compute in either precision).
HALF_TOL = {"rtol": 1e-2, "atol": 1e-2}
#: Elementwise gradients: one product, rounded once.
PRODUCT_TOL = {"rtol": 1e-6, "atol": 1e-7}
LOW_PRECISION = (torch.float16, torch.bfloat16)
#: Grids on which (w + 1) / 2 is exact in each dtype (spacing of the stochastic checks' weights).
EXACT_P_GRID = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7, torch.float32: 2.0**-20, torch.float64: 2.0**-20}
#: Copies of each value in the mean-over-many-draws check, and the bound in standard deviations.
DRAWS_PER_VALUE, SIGMAS = 8192, 6


def _weights(d, *shape: int, std: float = 0.5) -> torch.Tensor:
    """Drawn weights ``shape`` with a drawn per-channel spread (channels along axis 0 differ in scale)."""
    spread = d.rand(shape[0], low=0.2, high=2.0).reshape(-1, *([1] * (len(shape) - 1)))
    return d.normal(*shape, std=std) * spread


def _conv_shape(d) -> tuple[int, int, int, int]:
    return d.integer(3, 9), d.integer(2, 6), d.choice([1, 3, 5]), d.choice([1, 3])


def _with_edges(d, w: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """``w`` with the hand-picked ``edges`` written at drawn positions (same shape: channels keep their layout)."""
    flat = w.reshape(-1).clone()
    positions = d.permutation(flat.numel())[:edges.numel()]
    flat[positions] = edges.to(flat.dtype)[:positions.numel()]
    return flat.reshape(w.shape)


def _signs(x: torch.Tensor) -> torch.Tensor:
    """±1 float64 with +1 where x >= 0 (the contract's sign), for the checks' own expected values."""
    return torch.where(x >= 0, 1.0, -1.0).to(torch.float64)


# ----------------------------------------------------------------------------------------------- part 1
def check_binarize(fn) -> None:
    suite = CheckSuite("binarize", CONTRACT)
    d = suite.draw
    with suite.check("±1: +1 where w >= 0, -1 where w < 0", hint="torch.where(w >= 0, 1, -1) in w's dtype"):
        expect_reference(suite, fn, d.normal(d.size(200), std=d.uniform(0.1, 3.0)))
        expect_reference(suite, fn, _weights(d, *_conv_shape(d)))
    with suite.check("sign(0) = +1, also for -0.0",
                     hint="torch.sign(0) is 0: use w >= 0 (true for 0.0 and -0.0), not w > 0, torch.sign or signbit"):
        edges = torch.tensor([0.0, -0.0, 0.0, -0.0, 1e-30, -1e-30, 1e-45, -1e-45])
        expect_reference(suite, fn, d.mix(edges, d.normal(d.size(40))))
        expect_reference(suite, fn, torch.zeros(d.integer(2, 5), d.integer(2, 5)))
        expect_reference(suite, fn, -torch.zeros(d.integer(3, 9)))
    with suite.check("large and infinite values", hint="every w >= 0 is +1, every w < 0 is -1, whatever its size"):
        edges = torch.tensor([float("inf"), -float("inf"), 3e38, -3e38, 1e6, -1e6])
        expect_reference(suite, fn, d.mix(edges, d.normal(d.size(30), std=100.0)))
    with suite.check("keeps the dtype and shape (float16, bfloat16, float64; 0-dim, 1-D, 4-D)",
                     hint="return (w >= 0).to(w.dtype) * 2 - 1: the input's dtype and shape"):
        for dtype in (torch.float16, torch.bfloat16, torch.float64):
            expect_reference(suite, fn, d.mix(torch.tensor([0.0, -0.0]), d.normal(d.size(30))).to(dtype))
            expect_reference(suite, fn, _weights(d, *_conv_shape(d)).to(dtype))
        expect_reference(suite, fn, torch.tensor(d.choice([-1.0, 1.0]) * d.uniform(0.0, 2.0)))
        expect_reference(suite, fn, torch.tensor(0.0))
    with suite.check("empty in, empty out", hint="an empty w gives an empty result of the same shape and dtype"):
        expect_reference(suite, fn, torch.zeros(0))
        expect_reference(suite, fn, torch.zeros(d.integer(1, 4), 0, dtype=torch.float64))
    with suite.check("leaves its input unchanged", hint="do not write into w (no w.sign_(), w[...] = ...)"):
        expect_unchanged(fn, d.mix(torch.tensor([0.0, -0.5]), d.normal(d.size(40))), what="binarize")
    suite.finish()


def _grid_weights(d, dtype: torch.dtype, *shape: int, low: float = -2.0, high: float = 2.0) -> torch.Tensor:
    """Weights in [low, high] on the dtype's EXACT_P_GRID: (w + 1) / 2 is exact, so p is the same in any precision."""
    step = EXACT_P_GRID[dtype]
    return ((d.rand(*shape, low=low, high=high) / step).round() * step).to(dtype)


def check_binarize_stochastic(fn) -> None:
    suite = CheckSuite("binarize_stochastic", CONTRACT)
    d = suite.draw

    def seed() -> int:
        return d.integer(0, 2**40)

    with suite.check("reproduces the stated draw: u = torch.rand(w.shape, generator=torch.Generator()"
                     ".manual_seed(seed)), +1 where u < p",
                     hint="make the generator from the seed inside the function and draw u with torch.rand(w.shape, "
                          "generator=g) — float32, one draw per element, in w's shape"):
        expect_reference(suite, fn, _grid_weights(d, torch.float32, d.size(300)), seed())
        expect_reference(suite, fn, _grid_weights(d, torch.float32, *_conv_shape(d), low=-1.2, high=1.2), seed())
        expect_reference(suite, fn, _grid_weights(d, torch.float32, d.integer(3, 8), d.integer(5, 30)), seed())
    with suite.check("p = clip((w + 1) / 2, 0, 1): the hard sigmoid",
                     hint="p = (w + 1) / 2 clipped to [0, 1] (not torch.sigmoid(w)); +1 with probability p"):
        values = d.mix(torch.tensor([-0.75, -0.5, -0.25, 0.25, 0.5, 0.75]), d.rand(d.size(60), low=-1.0, high=1.0))
        step = EXACT_P_GRID[torch.float32]
        expect_reference(suite, fn, (values / step).round() * step, seed())
    with suite.check("+1 where u < p, strictly (u == p gives -1)",
                     hint="compare u < p (not u <= p), and +1 goes with u < p (not u > p)"):
        n, s = d.size(120), seed()
        u = torch.rand(n, generator=torch.Generator().manual_seed(s))   # the function's own draw, as specified
        tie = d.rand(n) < 0.5                                          # half the weights make p == u exactly
        w = torch.where(tie, 2 * u - 1, _grid_weights(d, torch.float32, n, low=-1.0, high=1.0))
        expect_reference(suite, fn, w, s)
    with suite.check("deterministic where |w| >= 1: +1 for w >= 1, -1 for w <= -1",
                     hint="p is clipped to [0, 1]: p = 1 for w >= 1 and p = 0 for w <= -1 (torch.bernoulli refuses "
                          "p outside [0, 1])"):
        edges = torch.tensor([1.0, -1.0, 1.5, -1.5, 3.0, -3.0, 1000.0, -1000.0])
        n = d.size(40)
        beyond = d.rand(n, low=1.0, high=4.0) * torch.where(d.rand(n) < 0.5, 1.0, -1.0)
        for _ in range(3):
            w, s = d.mix(edges, beyond), seed()
            what, inputs = suite.label(w, s)
            expect_equal(fn(w, s), REF["binarize"](w), what, inputs=inputs)
    with suite.check(f"the mean over {DRAWS_PER_VALUE} draws is clip(w, -1, 1) within {SIGMAS} standard deviations",
                     hint="E[result] = 2p - 1 = clip(w, -1, 1): +1 with probability p = clip((w + 1) / 2, 0, 1)"):
        values = d.mix(torch.tensor([-0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.5]), d.rand(6, low=-1.0, high=1.0))
        w = values.reshape(-1, 1).repeat(1, DRAWS_PER_VALUE)
        s = seed()
        what, inputs = suite.label(w, s)
        got = fn(w, s)
        expect_shape(got, tuple(w.shape), what, inputs=inputs)
        mean = got.double().mean(dim=1)
        target = values.double().clamp(-1, 1)
        bound = SIGMAS * torch.sqrt((1 - target**2).clamp(min=1e-12) / DRAWS_PER_VALUE) + 1e-9
        bad = (mean - target).abs() > bound
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise AssertionError(f"{what}: each row of w repeats one value {DRAWS_PER_VALUE} times; for the value "
                                 f"{values[i].item():.4g} the mean of the result is {mean[i].item():.4f}, expected "
                                 f"clip(w, -1, 1) = {target[i].item():.4f} ± {bound[i].item():.4f}")
    with suite.check("same seed, same result; different seeds, different results",
                     hint="seed a new torch.Generator with the seed on every call (never the global RNG, never a "
                          "generator kept between calls)"):
        w = _grid_weights(d, torch.float32, d.size(200), low=-0.5, high=0.5)
        first, second = seed(), seed()
        what, inputs = suite.label(w, first)
        a = fn(w, first)
        fn(w, second)
        expect_equal(fn(w, first), a, f"{what}, called again with the same seed", inputs=inputs)
        expect_equal(a, REF["binarize_stochastic"](w, first), what, inputs=inputs)
        other = fn(w, second)
        if isinstance(other, torch.Tensor) and other.shape == a.shape and torch.equal(other, a):
            raise AssertionError(f"{what}: seeds {first} and {second} gave the same {w.numel()} signs for weights "
                                 "with p near 1/2: the seed is not used")
    with suite.check("keeps the dtype and shape (float16, bfloat16, float64; 4-D)",
                     hint="p and the ±1 in w's dtype; u stays float32 (torch.rand without dtype=), compared with p"):
        for dtype in (torch.float16, torch.bfloat16, torch.float64):
            expect_reference(suite, fn, _grid_weights(d, dtype, d.size(200)), seed())
            expect_reference(suite, fn, _grid_weights(d, dtype, *_conv_shape(d)), seed())
    with suite.check("leaves its input unchanged", hint="do not write into w (no w.clamp_(), w.add_(1))"):
        expect_unchanged(fn, _grid_weights(d, torch.float32, d.size(50)), seed(), what="binarize_stochastic")
    suite.finish()


def _ste_points(dtype: torch.dtype) -> torch.Tensor:
    """±1 exactly, their neighbours in ``dtype``, 0 and -0.0: where the STE's mask decides."""
    one = torch.tensor(1.0, dtype=dtype)
    return torch.stack([one, -one, torch.nextafter(one, one * 2), -torch.nextafter(one, one * 2),
                        torch.nextafter(one, one * 0), -torch.nextafter(one, one * 0), one * 0, -(one * 0),
                        one * 1.5, -one * 3]).to(dtype)


def check_sign_ste(fn) -> None:
    suite = CheckSuite("sign_ste", CONTRACT)
    d = suite.draw

    def compare(x, upstream=None, **tolerance):
        upstream = d.normal(*x.shape).to(x.dtype) if upstream is None else upstream
        expect_gradients(fn, REF["sign_ste"], x, wrt=[0], upstream=upstream, suite=suite, **tolerance)

    with suite.check("forward is binarize(x): ±1 with sign(0) = +1 (also -0.0)",
                     hint="the value is +1 where x >= 0 else -1: not torch.sign (sign(0) = 0)"):
        expect_reference(suite, fn, d.mix(torch.tensor([0.0, -0.0, 1e-30, -1e-30]), d.normal(d.size(100), std=2.0)))
        expect_reference(suite, fn, d.normal(d.integer(2, 5), d.integer(2, 6), std=0.2))
    with suite.check("gradient passes where |x| <= 1, inclusive at ±1",
                     hint="backward: grad · 1{|x| <= 1} — x = ±1 exactly passes (torch.clamp and F.hardtanh give 0 "
                          "at the bounds)"):
        x = d.mix(_ste_points(torch.float32).repeat(2), d.normal(d.size(80), std=1.0))
        compare(x)
        compare(x, upstream=d.positive(x.numel()))
    with suite.check("gradient is cancelled where |x| > 1",
                     hint="the straight-through gradient is 0 beyond ±1 (Hubara et al. 2016), not passed everywhere"):
        n = d.size(40)
        beyond = d.rand(n, low=1.0, high=5.0) * torch.where(d.rand(n) < 0.5, 1.0, -1.0)
        x = d.mix(torch.tensor([1.0001, -1.0001, 2.0, -10.0]), torch.cat([beyond, d.rand(10, low=-1.0, high=1.0)]))
        compare(x, upstream=d.positive(x.numel()))
        compare(x)
    with suite.check("the gradient is the upstream itself inside (not scaled)",
                     hint="d sign_ste / dx = 1 inside [-1, 1]: pass grad unchanged there (not 2·grad, not grad / 2)"):
        compare(d.rand(d.size(60), low=-0.99, high=0.99))
    with suite.check("keeps the dtype and shape (float16, bfloat16, float64; 4-D)",
                     hint="value and gradient in x's dtype and shape"):
        for dtype in (torch.float16, torch.bfloat16, torch.float64):
            x = d.mix(_ste_points(dtype).float(), d.normal(d.size(40), std=1.2)).to(dtype)
            expect_reference(suite, fn, x)
            compare(x)
        w = _weights(d, *_conv_shape(d), std=0.8)
        expect_reference(suite, fn, w)
        compare(w)
    with suite.check("leaves its input unchanged", hint="do not write into x"):
        expect_unchanged(fn, d.normal(d.size(40), std=1.5), what="sign_ste")
    suite.finish()


# ----------------------------------------------------------------------------------------------- part 2
def _channel_statistic_checks(suite: CheckSuite, fn, symbol: str) -> None:
    """The checks bwn_scale (α) and twn_threshold (Δ) share: one value per output channel, of |w|, in w's dtype."""
    d = suite.draw

    def compare(w):
        expect_reference(suite, fn, w, tolerance=MEAN_TOL[w.dtype])

    with suite.check(f"one {symbol} per output channel: a [C] result, not one {symbol} for the tensor",
                     hint="reduce every axis except axis 0, and return shape [C] (not keepdim)"):
        c = d.integer(3, 8)
        compare(_weights(d, c, d.integer(4, 20)) * torch.logspace(-2, 1, c).reshape(-1, 1))
        compare(_weights(d, c, c))                                      # square: rows, not columns
    with suite.check("mean of |w|, not of w (all-negative channels; an all-zero channel gives 0)",
                     hint="average the absolute values; a channel of zeros gives 0 (no division by a count of "
                          "nonzeros)"):
        w = _weights(d, d.integer(3, 6), d.integer(4, 12))
        w[0] = -w[0].abs()
        w[-2] = -w[-2].abs() - 0.01
        compare(w)
        w[d.integer(0, w.shape[0] - 1)] = 0
        compare(w)
    with suite.check("1-D w: C channels of one weight each",
                     hint=f"a 1-D [C] w has no axis to reduce: {symbol}_c comes from |w_c| alone"):
        compare(d.mix(torch.tensor([0.0, -0.0, -1.5]), d.normal(d.size(20))))
    with suite.check("keeps the dtype (float16, bfloat16, float64)", hint=f"{symbol} in w's dtype"):
        for dtype in (torch.float16, torch.bfloat16, torch.float64):
            compare(_weights(d, *_conv_shape(d)).to(dtype))
    with suite.check("leaves its input unchanged", hint="do not write into w (no w.abs_())"):
        expect_unchanged(fn, _weights(d, *_conv_shape(d)), what=suite.function)


def check_bwn_scale(fn) -> None:
    suite = CheckSuite("bwn_scale", CONTRACT)
    d = suite.draw
    with suite.check("α = mean |w| over every axis but 0 (conv weights [C, C_in, k, k])",
                     hint="w.abs().mean over dims 1..ndim-1: one α per output channel"):
        for w in (_weights(d, *_conv_shape(d)), _weights(d, d.integer(3, 8), d.integer(2, 4), 3, 3)):
            expect_reference(suite, fn, w, tolerance=MEAN_TOL[w.dtype])
    _channel_statistic_checks(suite, fn, "α")
    with suite.check("rejects a 0-dim w and channels without elements (ValueError)",
                     hint="w.ndim == 0 or a shape like [C, 0]: raise ValueError saying why"):
        expect_raises(ValueError, fn, torch.tensor(d.uniform(-1.0, 1.0)), what="bwn_scale(a 0-dim w)")
        expect_raises(ValueError, fn, torch.zeros(d.integer(2, 5), 0), what="bwn_scale(w of shape [C, 0])")
    suite.finish()


def _bwn_mass(w: torch.Tensor, upstream: torch.Tensor) -> float:
    """Σ |terms| of BWN's gradient: α · |g| plus the per-channel sums |g| / n."""
    return float((upstream.abs().double() * (1 + w.abs().double())).sum())


def check_binarize_weights(fn) -> None:
    suite = CheckSuite("binarize_weights", CONTRACT)
    d = suite.draw

    def value(w):
        expect_reference(suite, fn, w, tolerance=MEAN_TOL[w.dtype])

    def gradient(w, upstream=None, tolerance=None):
        upstream = d.normal(*w.shape).to(w.dtype) if upstream is None else upstream
        tolerance = tolerance or summed_tolerance(_bwn_mass(w, upstream) / max(1, w.shape[0]))
        expect_gradients(fn, REF["binarize_weights"], w, wrt=[0], upstream=upstream, suite=suite,
                         value_tolerance=MEAN_TOL[w.dtype], tolerances=[tolerance])

    def nonzero(w):
        """No weight exactly 0: there torch's |w|' is 0 where another way of writing α gives ±1 / n."""
        return torch.where(w == 0, 0.125, w)

    with suite.check("value α_c · sign(w) per output channel (conv weights)",
                     hint="per_channel(bwn_scale(w), w) * sign_ste(w): α per output channel times ±1"):
        value(_weights(d, *_conv_shape(d)))
        value(_weights(d, d.integer(3, 8), d.integer(5, 30)))
    with suite.check("α per channel, not over the whole tensor",
                     hint="one α per output channel (axis 0), broadcast back with per_channel"):
        c = d.integer(3, 7)
        value(_weights(d, c, d.integer(4, 12)) * torch.logspace(-2, 1, c).reshape(-1, 1))
        value(_weights(d, c, c, 3, 3))
    with suite.check("sign(0) = +1: a zero weight becomes +α",
                     hint="binarize with w >= 0 (torch.sign(0) = 0 would drop the weight)"):
        w = _with_edges(d, _weights(d, d.integer(3, 6), d.integer(4, 10)), torch.tensor([0.0, -0.0, 0.0, -0.0]))
        value(w)
    with suite.check("all-negative and all-zero channels", hint="α uses |w|; an all-zero channel gives 0 everywhere"):
        w = _weights(d, d.integer(3, 6), d.integer(3, 10))
        w[0] = -w[0].abs()
        w[-1] = 0
        value(w)
    with suite.check("1-D w: each weight is its own channel",
                     hint="for a 1-D w, α_c = |w_c|: the value is |w| · sign(w)"):
        value(d.mix(torch.tensor([0.0, -2.0, 0.5]), d.normal(d.size(20))))
    with suite.check("gradient: autograd of per_channel(bwn_scale(w), w) * sign_ste(w) (α in the graph)",
                     hint="keep α = mean |w| in the graph (not detached): XNOR-Net's ∂C/∂W has the 1/n term "
                          "sign(w) / n · Σ g · sign(w)"):
        w = nonzero(_weights(d, *_conv_shape(d), std=0.6))
        gradient(w)
        gradient(w, upstream=d.positive(*w.shape))
        rows = nonzero(_weights(d, d.integer(3, 6), d.integer(4, 16), std=0.7))
        gradient(rows)
    with suite.check("gradient is cancelled where |w| > 1 (the sign's STE)",
                     hint="use sign_ste, whose gradient is 0 beyond ±1, not a plain straight-through sign"):
        w = nonzero(_weights(d, d.integer(3, 6), d.integer(6, 16), std=1.5))
        w = _with_edges(d, w, torch.tensor([1.0, -1.0, 1.0 + 2**-10, -(1.0 + 2**-10), 3.0, -3.0]))
        gradient(w, upstream=d.positive(*w.shape))
        gradient(w)
    with suite.check("gradient with an all-positive channel (the 1/n term does not cancel)",
                     hint="∂α/∂w = sign(w) / n: with α detached the gradient misses Σ g · sign(w) / n"):
        w = nonzero(_weights(d, d.integer(3, 6), d.integer(4, 10), std=0.4)).abs()
        gradient(w, upstream=d.positive(*w.shape))
    with suite.check("keeps the dtype and shape (float16, bfloat16, float64)", hint="value and gradient in w's dtype"):
        for dtype in (torch.float16, torch.bfloat16, torch.float64):
            w = nonzero(_weights(d, *_conv_shape(d), std=0.6)).to(dtype)
            value(w)
            gradient(w, tolerance=HALF_TOL if dtype in LOW_PRECISION else None)
    with suite.check("leaves its input unchanged", hint="do not write into w"):
        expect_unchanged(fn, _weights(d, *_conv_shape(d)), what="binarize_weights")
    suite.finish()


# ----------------------------------------------------------------------------------------------- part 3
def check_twn_threshold(fn) -> None:
    suite = CheckSuite("twn_threshold", CONTRACT)
    d = suite.draw
    with suite.check("Δ = 0.7 · mean |w| per output channel (conv weights)",
                     hint="0.7 times the mean of |w| over every axis but 0 (not the max, not 0.7 · mean w)"):
        for w in (_weights(d, *_conv_shape(d)), d.heavy_tailed(d.integer(4, 8) * 36).reshape(-1, 4, 3, 3)):
            expect_reference(suite, fn, w, tolerance=MEAN_TOL[w.dtype])
    _channel_statistic_checks(suite, fn, "Δ")
    suite.finish()


def _grid(d, *shape: int, step: float, levels: int = 24) -> torch.Tensor:
    """Integers in [-levels, levels] times ``step`` (a power of two): exact in every float dtype for levels <= 256."""
    return d.randint(-levels, levels + 1, shape).float() * step


def check_twn_quantize(fn) -> None:
    suite = CheckSuite("twn_quantize", CONTRACT)
    d = suite.draw

    def compare(w, *delta):
        expect_reference(suite, fn, w, *delta, tolerance=MEAN_TOL[w.dtype])

    with suite.check("default Δ = twn_threshold(w): values α_c · t with t ∈ {-1, 0, 1}",
                     hint="t = sign(w) · 1{|w| > Δ_c}, Δ_c = 0.7 · mean |w_c|, α_c = mean |w| over |w| > Δ_c"):
        compare(_weights(d, *_conv_shape(d)))
        compare(_weights(d, d.integer(3, 8), d.integer(6, 30)))
    with suite.check("strict threshold: |w| == Δ gives 0",
                     hint="keep |w| > Δ, not |w| >= Δ: a weight exactly at the threshold is 0"):
        step = d.power_of_two(4, 7)
        delta = step * d.integer(4, 12)
        w = _with_edges(d, _grid(d, d.integer(3, 6), d.integer(8, 20), step=step),
                        torch.tensor([delta, -delta] * 4))
        compare(w, delta)
        compare(w, torch.tensor(delta))
    with suite.check("α_c = mean of |w| over the kept weights only",
                     hint="average |w| over {|w| > Δ_c}, not over the whole channel"):
        compare(_weights(d, d.integer(3, 7), d.integer(6, 20)))
        step = d.power_of_two(4, 7)
        compare(_grid(d, d.integer(3, 6), d.integer(8, 20), step=step), step * d.integer(2, 10))
    with suite.check("per-channel thresholds: delta of shape [C]",
                     hint="a [C] delta is one threshold per output channel: broadcast it as [C, 1, ...]"):
        c = d.integer(3, 7)
        step = d.power_of_two(4, 7)
        w = _grid(d, c, d.integer(2, 4), 3, 3, step=step)
        deltas = d.randint(0, 20, (c,)).float() * step
        compare(w, deltas)
        square = _grid(d, c, c, step=step)
        compare(square, deltas)
    with suite.check("one threshold for all channels: delta a float or a 0-dim tensor",
                     hint="a scalar delta applies to every channel (α is still per channel)"):
        w = _weights(d, *_conv_shape(d))
        delta = d.uniform(0.05, 0.5)
        compare(w, delta)
        compare(w, torch.tensor(delta))
    with suite.check("a channel with nothing above Δ gives 0 (never NaN)",
                     hint="α = sum / count with count 0 must give 0: divide by count.clamp(min=1)"):
        w = _weights(d, d.integer(3, 6), d.integer(4, 12))
        w[d.integer(0, w.shape[0] - 1)] = 0
        compare(w)
        small = _weights(d, d.integer(3, 6), d.integer(4, 12), std=0.05)
        compare(small, float(small.abs().max()) * 2)
        compare(torch.zeros(d.integer(2, 4), d.integer(2, 6)))
    with suite.check("signs kept: all-negative channels and zeros",
                     hint="t = sign(w) · 1{|w| > Δ}: negative weights give -α; zeros give 0"):
        w = _with_edges(d, _weights(d, d.integer(3, 6), d.integer(5, 12)), torch.tensor([0.0, -0.0, 0.0]))
        w[0] = -w[0].abs()
        compare(w)
    with suite.check("1-D w: each weight is its own channel",
                     hint="for a 1-D w, Δ_c = 0.7 |w_c| < |w_c|: every nonzero weight is kept, α_c = |w_c|"):
        compare(d.mix(torch.tensor([0.0, -1.0]), d.normal(d.size(20))))
        step = d.power_of_two(3, 6)
        compare(_grid(d, d.size(30), step=step), step * d.integer(1, 8))
    with suite.check("keeps the dtype and shape (float16, bfloat16, float64)", hint="values in w's dtype and shape"):
        # The default Δ only in float64: in float16 / bfloat16 a weight within one rounding of 0.7 · mean |w| is
        # likely, and a correct answer computing Δ in float32 would keep it. Explicit thresholds are exact.
        compare(_weights(d, *_conv_shape(d)).double())
        for dtype in (torch.float16, torch.bfloat16, torch.float64):
            step = d.power_of_two(4, 6)
            grid = _grid(d, d.integer(3, 6), d.integer(8, 16), step=step).to(dtype)
            compare(grid, step * d.integer(2, 10))
            compare(grid, torch.tensor(step * d.integer(2, 10), dtype=dtype))
            compare(grid, (d.randint(0, 12, (grid.shape[0],)) * step).to(dtype))
    with suite.check("rejects a negative delta (ValueError)", hint="raise ValueError when delta < 0"):
        w = _weights(d, d.integer(2, 5), d.integer(3, 8))
        bad = -d.uniform(0.01, 1.0)
        expect_raises(ValueError, fn, w, bad, what=f"twn_quantize(w, delta={bad:.3g})")
        expect_raises(ValueError, fn, w, torch.tensor(bad), what=f"twn_quantize(w, delta=tensor({bad:.3g}))")
    with suite.check("leaves its inputs unchanged", hint="do not write into w or delta"):
        w = _weights(d, *_conv_shape(d))
        expect_unchanged(fn, w, what="twn_quantize")
        expect_unchanged(fn, w, d.rand(w.shape[0], low=0.0, high=0.3), what="twn_quantize")
    suite.finish()


def check_ttq_quantize(fn) -> None:
    suite = CheckSuite("ttq_quantize", CONTRACT)
    d = suite.draw

    def scales(dtype=torch.float32):
        """W_p and W_n, drawn apart (so swapping them shows)."""
        w_p = d.uniform(0.6, 1.6)
        return torch.tensor(w_p, dtype=dtype), torch.tensor(w_p * d.uniform(0.2, 0.7), dtype=dtype)

    def tied(*shape, t_exponent=None):
        """Weights on a grid with max |w| a power of two and values exactly at ±Δ for t = 2^-k: (w, t)."""
        k = d.integer(3, 5) if t_exponent is None else t_exponent
        top = 2.0 ** d.integer(-2, 1)
        step = top * 2.0**-k / 4                                            # Δ = t · top = 4 steps
        w = (d.rand(*shape, low=-1.0, high=1.0) * (top / step)).round() * step
        delta = top * 2.0**-k
        w = _with_edges(d, w, torch.tensor([top, -delta, delta, -delta, delta, delta + step, -delta - step]))
        return w, 2.0**-k

    def masses(w, t, upstream):
        delta = t * float(w.abs().max())
        g = upstream.abs().double()
        return float(g[w > delta].sum()), float(g[w < -delta].sum())

    def gradients(w, w_p, w_n, *t, upstream=None, only=None, tolerance=None):
        upstream = d.normal(*w.shape).to(w.dtype) if upstream is None else upstream
        above, below = masses(w, *(t or (0.05,)), upstream)
        tolerances = [tolerance or PRODUCT_TOL, tolerance or summed_tolerance(above),
                      tolerance or summed_tolerance(below)]
        expect_gradients(fn, REF["ttq_quantize"], w, w_p, w_n, *t, wrt=[0, 1, 2], upstream=upstream, suite=suite,
                         tolerances=tolerances, only=only)

    with suite.check("value: w_p above Δ = t · max|w|, -w_n below -Δ, 0 between",
                     hint="torch.where(w > Δ, w_p, torch.where(w < -Δ, -w_n, 0)) with Δ = t · w.abs().max()"):
        w = _weights(d, *_conv_shape(d))
        expect_reference(suite, fn, w, *scales())
        expect_reference(suite, fn, w, *scales(), d.uniform(0.05, 0.6))
    with suite.check("strict at ±Δ: w == ±Δ gives 0",
                     hint="w > Δ and w < -Δ (strict): a weight exactly at ±Δ is 0"):
        for _ in range(2):
            w, t = tied(d.integer(3, 6), d.integer(8, 20))
            expect_reference(suite, fn, w, *scales(), t)
    with suite.check("one Δ for the whole tensor (per layer: max |w| over every channel)",
                     hint="Δ = t · max |w| over all of w (not per channel, not mean |w|)"):
        c = d.integer(3, 6)
        w = _weights(d, c, d.integer(6, 16)) * torch.logspace(-1, 0.5, c).reshape(-1, 1)
        expect_reference(suite, fn, w, *scales(), d.uniform(0.1, 0.5))
        expect_reference(suite, fn, w, *scales())
    with suite.check("t is used (default 0.05)", hint="Δ = t · max|w| with the t passed in; 0.05 when none is given"):
        w = _weights(d, d.integer(3, 6), d.integer(8, 20))
        w_p, w_n = scales()
        expect_reference(suite, fn, w, w_p, w_n, d.uniform(0.2, 0.7))
        expect_reference(suite, fn, w, w_p, w_n)
        expect_reference(suite, fn, w, w_p, w_n, 0.0)
    with suite.check("gradient w.r.t. w_p: the sum of the upstream over w > Δ",
                     hint="∂/∂w_p = Σ_{w>Δ} g: w_p must stay in the graph where w > Δ"):
        w, t = tied(d.integer(3, 6), d.integer(8, 20))
        gradients(w, *scales(), t, upstream=d.positive(*w.shape), only=[1])
        gradients(w, *scales(), t, only=[1])
    with suite.check("gradient w.r.t. w_n: minus the sum of the upstream over w < -Δ (negative for a positive "
                     "upstream)",
                     hint="the value there is -w_n, so ∂/∂w_n = -Σ_{w<-Δ} g (mind the minus sign)"):
        w, t = tied(d.integer(3, 6), d.integer(8, 20))
        w_p, w_n = scales()
        upstream = d.positive(*w.shape)
        what, inputs = suite.label(w, w_p, w_n, t)
        _, grads = call_with_gradients(fn, w, w_p, w_n, t, wrt=[2], upstream=upstream)
        expect_shape(grads[0], (), f"{what}: gradient ∂⟨upstream, result⟩/∂w_n", inputs=inputs)
        if not float(grads[0]) < 0:
            raise AssertionError(f"{what}: with a positive upstream gradient, ∂⟨upstream, result⟩/∂w_n must be "
                                 f"negative (-Σ_{{w<-Δ}} g), got {float(grads[0]):.6g}")
        gradients(w, w_p, w_n, t, upstream=upstream, only=[2])
        gradients(w, w_p, w_n, t, only=[2])
    with suite.check("gradient w.r.t. w: w_p · g above Δ, g in [-Δ, Δ], w_n · g below -Δ (TTQ's scaled STE)",
                     hint="the latent weights' gradient is scaled by w_p, 1, w_n in the three regions (w_n, not "
                          "-w_n; the middle region passes g unchanged)"):
        w, t = tied(d.integer(3, 6), d.integer(8, 20))
        gradients(w, *scales(), t, only=[0])
        gradients(w, *scales(), t, upstream=d.positive(*w.shape), only=[0])
        gradients(_weights(d, *_conv_shape(d)), *scales(), only=[0])
    with suite.check("value and gradients together (1-D and 4-D w)"):
        gradients(_weights(d, *_conv_shape(d)), *scales())
        gradients(d.normal(d.size(40)), *scales(), d.uniform(0.05, 0.4))
    with suite.check("keeps the dtype and shape (float16 / bfloat16 / float64 w, float32 or w's dtype scales)",
                     hint="the value in w's dtype (cast w_p and w_n to w.dtype); the scales' gradients in theirs"):
        for dtype in (torch.float16, torch.bfloat16, torch.float64):
            w, t = tied(d.integer(3, 6), d.integer(6, 12), t_exponent=4)
            w = w.to(dtype)
            for scale_dtype in (torch.float32, dtype):
                w_p, w_n = scales(scale_dtype)
                expect_reference(suite, fn, w, w_p, w_n, t)
                gradients(w, w_p, w_n, t, tolerance=HALF_TOL if dtype in LOW_PRECISION else None)
    with suite.check("rejects t outside [0, 1) (ValueError)", hint="raise ValueError unless 0 <= t < 1"):
        w = _weights(d, d.integer(2, 5), d.integer(3, 8))
        for bad in (-d.uniform(0.01, 0.5), 1.0, 1.0 + d.uniform(0.1, 2.0)):
            expect_raises(ValueError, fn, w, *scales(), bad, what=f"ttq_quantize(w, w_p, w_n, t={bad:.3g})")
    with suite.check("leaves its inputs unchanged", hint="do not write into w, w_p or w_n"):
        expect_unchanged(fn, _weights(d, *_conv_shape(d)), *scales(), what="ttq_quantize")
    suite.finish()


# ----------------------------------------------------------------------------------------------- part 4
def _signed_values(d, *shape: int) -> torch.Tensor:
    """Normal values with a few exact zeros and -0.0 (sign +1)."""
    x = d.normal(*shape)
    zero = d.rand(*shape) < 0.05
    return torch.where(zero, torch.where(d.rand(*shape) < 0.5, 0.0, -0.0), x)


def _odd_n(d, low: int = 65, high: int = 400) -> int:
    """A drawn n that is not a multiple of 64 (the last word has padding bits)."""
    n = d.integer(low, high)
    return n + 1 if n % 64 == 0 else n


def check_pack_signs(fn) -> None:
    suite = CheckSuite("pack_signs", CONTRACT)
    d = suite.draw

    def compare(x):
        expect_reference(suite, fn, x)

    with suite.check("bit j of word k is x[64k + j] >= 0, least significant bit first",
                     hint="word k = Σ_j bit_j · 2^j over j = 0..63 (bit 0 is x[64k], the least significant)"):
        compare(_signed_values(d, d.integer(2, 6), _odd_n(d)))
        compare(_signed_values(d, d.integer(2, 6), 64 * d.integer(1, 4)))
    with suite.check("sign(0) = +1: zeros and -0.0 set their bit", hint="the bit is x >= 0 (true for 0.0 and -0.0)"):
        x = _with_edges(d, _signed_values(d, d.integer(2, 5), _odd_n(d)), torch.tensor([0.0, -0.0] * 6))
        compare(x)
        compare(torch.zeros(d.integer(1, 4), d.integer(1, 200)))
    with suite.check("padding bits of the last word are 0",
                     hint="pad the last word with 0 bits (as if those x were negative), never with 1"):
        for n in (d.integer(1, 63), _odd_n(d), 64 * d.integer(1, 3) + d.integer(1, 63)):
            compare(d.rand(d.integer(1, 4), n, low=0.0, high=1.0))            # every real bit is 1
            compare(_signed_values(d, d.integer(1, 4), n))
    with suite.check("ceil(n / 64) int64 words (n = 1, 63, 64, 65, 128 and drawn)",
                     hint="W = ceil(n / 64) words of dtype int64; a partial last word still counts"):
        for n in (1, 63, 64, 65, 128, _odd_n(d, 130, 1000)):
            compare(_signed_values(d, d.integer(1, 3), n))
    with suite.check("bit 63 set: the word is a negative int64",
                     hint="bit 63 is the sign bit of int64: build the word with integer shifts or a uint8 view, "
                          "not with float sums (2^63 does not fit a float64 exactly, and int64 overflows)"):
        x = d.rand(d.integer(2, 5), 64 * d.integer(1, 3), low=0.0, high=1.0)
        compare(x)                                                          # all ones: every word is -1
        x = _signed_values(d, d.integer(2, 5), 64 * d.integer(1, 3))
        x[:, 63::64] = d.rand(x.shape[0], x.shape[1] // 64, low=0.0, high=1.0)   # the top bit of every word set
        compare(x)
        compare(-d.rand(d.integer(2, 4), _odd_n(d), low=0.01, high=1.0))   # all negative: every word is 0
    with suite.check("leading dimensions kept: [..., n] → [..., ceil(n / 64)]",
                     hint="pack along the last axis only; 1-D and 3-D inputs keep their leading shape"):
        compare(_signed_values(d, _odd_n(d)))
        compare(_signed_values(d, d.integer(2, 4), d.integer(2, 4), _odd_n(d)))
    with suite.check("float16, bfloat16 and float64 input", hint="compare x >= 0 in any float dtype; words stay int64"):
        for dtype in (torch.float16, torch.bfloat16, torch.float64):
            compare(_signed_values(d, d.integer(2, 4), _odd_n(d)).to(dtype))
    with suite.check("rejects n == 0 (ValueError)", hint="an empty last axis has no signs to pack: raise ValueError"):
        expect_raises(ValueError, fn, torch.zeros(d.integer(1, 4), 0), what="pack_signs(x of shape [k, 0])")
    with suite.check("leaves its input unchanged", hint="do not write into x"):
        expect_unchanged(fn, _signed_values(d, d.integer(2, 4), _odd_n(d)), what="pack_signs")
    suite.finish()


def check_xnor_matmul(fn) -> None:
    suite = CheckSuite("xnor_matmul", CONTRACT)
    d = suite.draw
    pack = REF["pack_signs"]

    def compare(a_float, b_float):
        """The student's xnor_matmul of the packed signs equals the float matmul of the ±1 tensors, exactly."""
        n = a_float.shape[1]
        a, b = pack(a_float), pack(b_float)
        what, inputs = suite.label(a, b, n)
        expected = torch.round(_signs(a_float) @ _signs(b_float).T).to(torch.int64)
        expect_equal(fn(a, b, n), expected, f"{what} (the ±1 dot products binarize(A) @ binarize(B).T)",
                     inputs=inputs)

    def rows(k, n):
        return _signed_values(d, k, n)

    with suite.check("equals binarize(A) @ binarize(B).T exactly (n not a multiple of 64)",
                     hint="n - 2 · Σ_words popcount(a ^ b): matching signs count +1, differing ones -1"):
        n = _odd_n(d)
        compare(rows(d.integer(3, 12), n), rows(d.integer(3, 12), n))
        n = _odd_n(d, 400, 1500)
        compare(rows(d.integer(2, 6), n), rows(d.integer(2, 6), n))
    with suite.check("uses n, not 64 · W: the padding bits are not signs",
                     hint="the padding bits agree (both 0) and must not count as matches: use n - 2·popcount, "
                          "with the n given"):
        for n in (d.integer(1, 63), _odd_n(d, 65, 127), _odd_n(d, 129, 250)):
            compare(rows(d.integer(2, 8), n), rows(d.integer(2, 8), n))
    with suite.check("n a multiple of 64 (64, 128, drawn)"):
        for n in (64, 128, 64 * d.integer(3, 8)):
            compare(rows(d.integer(2, 8), n), rows(d.integer(2, 8), n))
    with suite.check("all-equal rows give n, opposite rows give -n",
                     hint="equal signs: popcount 0, result n; opposite signs: result -n"):
        n = _odd_n(d)
        a = rows(d.integer(2, 5), n)
        compare(a, torch.cat([a, -torch.where(a == 0, 1.0, a)]))
    with suite.check("int64 result [M, N] (M ≠ N, one row, one column)",
                     hint="rows of a against rows of b: result [M, N] of dtype int64"):
        n = _odd_n(d)
        compare(rows(d.integer(2, 4), n), rows(d.integer(6, 10), n))
        compare(rows(1, n), rows(d.integer(2, 6), n))
        compare(rows(d.integer(2, 6), n), rows(1, n))
    with suite.check("rejects mismatched shapes and W != ceil(n / 64) (ValueError)",
                     hint="check a [M, W] and b [N, W] share W, and W == ceil(n / 64); raise ValueError otherwise"):
        n = _odd_n(d, 65, 250)
        a, b = pack(rows(3, n)), pack(rows(4, n))
        words = a.shape[1]
        expect_raises(ValueError, fn, a, pack(rows(4, n + 64)), n,
                      what=f"xnor_matmul(a [3, {words}], b [4, {words + 1}], n={n})")
        expect_raises(ValueError, fn, a, b, n + 64, what=f"xnor_matmul(a [3, {words}], b [4, {words}], n={n + 64})")
        expect_raises(ValueError, fn, a, b, 64 * (words - 1), what=f"xnor_matmul(a [3, {words}], b [4, {words}], "
                                                                  f"n={64 * (words - 1)})")
    with suite.check("leaves its inputs unchanged", hint="do not write into a or b (no a ^= b)"):
        n = _odd_n(d)
        expect_unchanged(fn, pack(rows(3, n)), pack(rows(5, n)), n, what="xnor_matmul")
    suite.finish()


__all__ = [name for name in dir() if name.startswith("check_")] + ["CONTRACT"]
