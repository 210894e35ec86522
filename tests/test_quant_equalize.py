"""lowbit.quant.equalize: cross-layer equalization scales, equalized pairs (function unchanged) and models."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.quant.equalize import equalization_scales, equalize_pair


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def spread(w, seed=1):
    """w with its output channels (axis 0) scaled over two orders of magnitude, as BN folding does."""
    order = torch.randperm(w.shape[0], generator=torch.Generator().manual_seed(seed))
    factors = torch.logspace(-1, 1, w.shape[0])[order]
    return w * factors.reshape([-1] + [1] * (w.ndim - 1))


def loop_ranges(w, axis):
    """max |w| of each slice along ``axis``, one Python loop per channel (independent of the vectorized code)."""
    return torch.tensor([float(w.select(axis, i).abs().max()) for i in range(w.shape[axis])])


def test_scales_match_the_formula_channel_by_channel():
    w1, w2 = spread(rand(6, 4, 3, 3)), rand(5, 6, 3, 3, seed=2)
    s = equalization_scales(w1, w2)
    r1, r2 = loop_ranges(w1, 0), loop_ranges(w2, 1)
    assert s.dtype == torch.float32 and s.shape == (6,)
    assert torch.allclose(s, torch.sqrt(r1 * r2) / r2, rtol=1e-6)


def test_linear_relu_linear_unchanged_and_ranges_equalized():
    w1, b1, w2 = spread(rand(8, 5)), rand(8, seed=3), rand(3, 8, seed=4)   # w2 not square: a wrong axis shows
    x = rand(64, 5, seed=5)
    before = torch.relu(x @ w1.T + b1) @ w2.T
    w1e, b1e, w2e = equalize_pair(w1, b1, w2)
    after = torch.relu(x @ w1e.T + b1e) @ w2e.T
    assert torch.allclose(before, after, rtol=1e-5, atol=1e-5)
    target = torch.sqrt(loop_ranges(w1, 0) * loop_ranges(w2, 1))
    assert torch.allclose(loop_ranges(w1e, 0), target, rtol=1e-5)
    assert torch.allclose(loop_ranges(w2e, 1), target, rtol=1e-5)
    assert float(loop_ranges(w1e, 0).max() / loop_ranges(w1e, 0).min()) < \
        float(loop_ranges(w1, 0).max() / loop_ranges(w1, 0).min())


def test_conv_relu_conv_unchanged_and_ranges_equalized():
    conv1, conv2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 4, 3, padding=1)
    with torch.no_grad():
        conv1.weight.copy_(spread(conv1.weight))
    pair = nn.Sequential(conv1, nn.ReLU(), nn.MaxPool2d(2), conv2)
    x = rand(4, 3, 8, 8, seed=6)
    before = pair(x)
    w1e, b1e, w2e = equalize_pair(conv1.weight.detach(), conv1.bias.detach(), conv2.weight.detach())
    with torch.no_grad():
        conv1.weight.copy_(w1e), conv1.bias.copy_(b1e), conv2.weight.copy_(w2e)
    assert torch.allclose(before, pair(x), rtol=1e-4, atol=1e-5)
    assert torch.allclose(loop_ranges(w1e, 0), loop_ranges(w2e, 1), rtol=1e-5)


def test_conv_then_flatten_linear_through_a_reshape():
    w1, w2 = spread(rand(4, 2, 3, 3)), rand(10, 4 * 9, seed=7)
    x = rand(5, 2, 3, 3, seed=8)
    conv = lambda w: torch.nn.functional.conv2d(x, w, padding=1)          # noqa: E731
    before = torch.relu(conv(w1)).flatten(1) @ w2.T
    w1e, _, w2e = equalize_pair(w1, None, w2.reshape(10, 4, 9))
    after = torch.relu(conv(w1e)).flatten(1) @ w2e.reshape(10, 36).T
    assert torch.allclose(before, after, rtol=1e-5, atol=1e-5)


def test_zero_ranges_keep_scale_one_and_stay_finite():
    w1, w2 = rand(4, 3), rand(2, 4, seed=1)
    w1[1] = 0.0                 # a dead output channel of the first layer
    w2[:, 2] = 0.0              # an input channel the second layer ignores
    s = equalization_scales(w1, w2)
    assert s[1] == 1.0 and s[2] == 1.0 and bool(torch.isfinite(s).all())
    r1, r2 = loop_ranges(w1, 0), loop_ranges(w2, 1)
    assert torch.allclose(s[[0, 3]], torch.sqrt(r1 * r2)[[0, 3]] / r2[[0, 3]])
    w1e, b1e, w2e = equalize_pair(w1, None, w2)
    assert b1e is None and torch.equal(w1e[1], w1[1]) and torch.equal(w2e[:, 2], w2[:, 2])


def test_given_scales_are_used_and_dtypes_kept():
    w1, b1, w2 = rand(3, 2).half(), rand(3, seed=1).half(), rand(4, 3, seed=2).half()
    s = torch.tensor([2.0, 0.5, 4.0])
    w1e, b1e, w2e = equalize_pair(w1, b1, w2, s)
    assert (w1e.dtype, b1e.dtype, w2e.dtype) == (torch.float16,) * 3
    assert torch.allclose(w1e.float(), (w1.float() / s[:, None]).half().float())
    assert torch.allclose(b1e.float(), (b1.float() / s).half().float())
    assert torch.allclose(w2e.float(), (w2.float() * s[None, :]).half().float())
    assert equalization_scales(w1, w2).dtype == torch.float32


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="input channels"):
        equalization_scales(rand(4, 3), rand(2, 5))
    with pytest.raises(TypeError, match="floating-point"):
        equalization_scales(torch.ones(4, 3, dtype=torch.int64), rand(2, 4))
    with pytest.raises(ValueError, match="> 0"):
        equalize_pair(rand(2, 3), None, rand(4, 2), torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="shape"):
        equalize_pair(rand(2, 3), rand(3), rand(4, 2))
    with pytest.raises(ValueError, match="at least 2 dims"):
        equalization_scales(rand(4), rand(4))
