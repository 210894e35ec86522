"""lowbit.quant.granularity: per-tensor, per-channel (any axis), per-group with tails, two-level and MX scales."""
from __future__ import annotations

import pytest
import torch

from lowbit.quant.granularity import (fake_quantize_mx, fake_quantize_per_channel, fake_quantize_per_group,
                                      fake_quantize_per_tensor, fake_quantize_two_level, per_channel_qparams,
                                      per_tensor_qparams)
from lowbit.quant.linear import fake_quantize


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def mse(a, b):
    return float((a - b).pow(2).mean())


def test_per_tensor_symmetric_and_affine():
    w = rand(16, 8) + 0.5
    scale, zp = per_tensor_qparams(w, 8)
    assert zp == 0 and scale == pytest.approx(float(w.abs().max()) / 127)
    w_hat = fake_quantize_per_tensor(w, 8)
    assert torch.equal(w_hat, fake_quantize(w, scale, 0, 8))
    scale_a, zp_a = per_tensor_qparams(w, 8, symmetric=False)
    assert scale_a == pytest.approx((float(w.max()) - float(w.min())) / 255)
    assert mse(w, fake_quantize_per_tensor(w, 4, symmetric=False)) < mse(w, fake_quantize_per_tensor(w, 4))


@pytest.mark.parametrize("axis", [0, 1, 2, 3, -1, -4])
def test_per_channel_scale_shape_and_values_on_any_axis(axis):
    w = rand(6, 5, 3, 2, seed=1)
    scale = per_channel_qparams(w, 8, axis=axis)
    expected_shape = [1, 1, 1, 1]
    expected_shape[axis] = w.shape[axis]
    assert list(scale.shape) == expected_shape and scale.dtype == torch.float32
    moved = w.movedim(axis, 0).reshape(w.shape[axis], -1)
    assert torch.allclose(scale.flatten(), moved.abs().amax(dim=1) / 127)


def test_per_channel_equals_torch_with_power_of_two_scales():
    w = rand(8, 4, 3, 3, seed=2).clamp(-1, 1)
    exponents = torch.arange(2, 10)
    w = w * (2.0 ** -exponents.float()).reshape(8, 1, 1, 1)
    w[:, 0, 0, 0] = 127.0 * 2.0 ** -exponents.float()                  # abs max → scale exactly 2^-k
    scale = per_channel_qparams(w, 8)
    assert torch.equal(scale.flatten(), 2.0 ** -exponents.float())
    theirs = torch.fake_quantize_per_channel_affine(w, scale.flatten(), torch.zeros(8, dtype=torch.int32), 0,
                                                    -127, 127)
    assert torch.equal(fake_quantize_per_channel(w, 8), theirs)


def test_per_channel_agrees_with_torch_on_other_axis_within_one_step():
    w = rand(64, 32, seed=3)
    scale = per_channel_qparams(w, 4, axis=1)
    ours = fake_quantize_per_channel(w, 4, axis=1)
    theirs = torch.fake_quantize_per_channel_affine(w, scale.flatten(), torch.zeros(32, dtype=torch.int32), 1,
                                                    -7, 7)
    assert torch.all((ours - theirs).abs() <= scale * 1.0001)
    assert (ours != theirs).float().mean() < 1e-3


def test_per_channel_beats_per_tensor_when_channel_ranges_differ_and_handles_zero_channel():
    w = rand(8, 50, seed=4) * torch.logspace(-3, 0, 8).reshape(8, 1)
    w[3] = 0
    w_hat = fake_quantize_per_channel(w, 4)
    assert torch.isfinite(w_hat).all() and torch.equal(w_hat[3], torch.zeros(50))
    assert mse(w, w_hat) < mse(w, fake_quantize_per_tensor(w, 4)) / 2


def test_fp16_and_bf16_weights():
    w = rand(4, 9, seed=5)
    for dtype in (torch.float16, torch.bfloat16):
        out = fake_quantize_per_channel(w.to(dtype), 8)
        assert out.dtype == torch.float32
        assert torch.equal(out, fake_quantize_per_channel(w.to(dtype).float(), 8))


@pytest.mark.parametrize("group_size", [1, 4, 7, 16, 64])
def test_per_group_matches_loop_reference_including_tail(group_size):
    w = rand(5, 3, 3, 3, seed=6)                              # rows of 27 → tail groups for 4, 7, 16
    w_hat, bpe = fake_quantize_per_group(w, 4, group_size)
    assert bpe == 4 + 32 / group_size
    assert w_hat.shape == w.shape and torch.isfinite(w_hat).all()
    rows, rows_hat = w.reshape(5, -1), w_hat.reshape(5, -1)
    for i in range(5):
        for start in range(0, 27, group_size):
            g = rows[i, start:start + group_size]
            scale = float(g.abs().max()) / 7
            expected = torch.clamp(torch.round(g / torch.tensor(scale)), -7, 7) * torch.tensor(scale)
            assert torch.allclose(rows_hat[i, start:start + group_size], expected, atol=1e-7)


def test_per_group_one_dim_and_zero_groups():
    w = torch.zeros(10)
    w[:3] = torch.tensor([1.0, -0.5, 0.25])
    w_hat, _ = fake_quantize_per_group(w, 8, 4)
    assert torch.isfinite(w_hat).all()
    assert torch.equal(w_hat[4:], torch.zeros(6))


def test_smaller_groups_lower_error_cost_more_bits():
    w = rand(32, 256, seed=7) * torch.rand(32, 256, generator=torch.Generator().manual_seed(8)).pow(4)
    errors, costs = [], []
    for group_size in (256, 64, 16):
        w_hat, bpe = fake_quantize_per_group(w, 4, group_size)
        errors.append(mse(w, w_hat))
        costs.append(bpe)
    assert errors[0] > errors[1] > errors[2] and costs[0] < costs[1] < costs[2]


def test_two_level_scales_are_integer_multiples_and_never_clip():
    w = rand(16, 64, seed=9)
    w_hat, bpe = fake_quantize_two_level(w, 4, group_size=16, scale_bits=4)
    assert bpe == 4.25
    groups, groups_hat = w.reshape(16, 4, 16), w_hat.reshape(16, 4, 16)
    s_g = groups.abs().amax(-1) / 7
    tensor_scale = float(s_g.max()) / 15
    # error never exceeds half of the effective step, which is at most s_g + tensor_scale
    assert torch.all((groups - groups_hat).abs() <= (s_g + tensor_scale).unsqueeze(-1) / 2 * 1.0001)
    # no clipping: the largest magnitude of each group is represented within half a step
    k = torch.clamp(torch.ceil(s_g / tensor_scale), 1, 15)
    assert torch.all(k * tensor_scale >= s_g * (1 - 1e-6))
    per_group_hat, _ = fake_quantize_per_group(w, 4, 16)
    assert mse(w, per_group_hat) <= mse(w, w_hat) < 2 * mse(w, per_group_hat)


def test_two_level_handles_zero_tensor_and_tail():
    w_hat, _ = fake_quantize_two_level(torch.zeros(3, 20), 4)
    assert torch.equal(w_hat, torch.zeros(3, 20))
    w = rand(3, 20, seed=10)
    w_hat, _ = fake_quantize_two_level(w, 4, group_size=16)
    assert torch.isfinite(w_hat).all() and w_hat.shape == (3, 20)


def test_mx_scales_are_powers_of_two_and_bits_per_element():
    w = rand(4, 70, seed=11)                                  # 70 = 2 blocks of 32 + a tail of 6
    w_hat, bpe = fake_quantize_mx(w, 8, block=32)
    assert bpe == 8.25
    for i in range(4):
        for start in (0, 32, 64):
            block = w[i, start:start + 32]
            e = torch.floor(torch.log2(block.abs().max())) - 6
            expected = torch.clamp(torch.round(block / 2.0 ** e), -127, 127) * 2.0 ** e
            assert torch.equal(w_hat[i, start:start + 32], expected)
    assert mse(w, fake_quantize_mx(w, 4)[0]) > mse(w, w_hat)
    w_zero, _ = fake_quantize_mx(torch.zeros(40), 8)
    assert torch.equal(w_zero, torch.zeros(40))


@pytest.mark.parametrize("fn", [lambda w: fake_quantize_per_channel(w, 8),
                                lambda w: fake_quantize_per_group(w, 4, 8),
                                lambda w: fake_quantize_two_level(w, 4),
                                lambda w: fake_quantize_mx(w, 8),
                                lambda w: fake_quantize_per_tensor(w, 8)])
def test_errors_and_no_mutation(fn):
    w = rand(4, 10, seed=12)
    copy = w.clone()
    fn(w)
    assert torch.equal(w, copy)
    with pytest.raises(ValueError, match="empty"):
        fn(torch.empty(0, 4))
    with pytest.raises(TypeError, match="floating"):
        fn(torch.ones(3, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match="NaN"):
        fn(torch.tensor([[1.0, float("nan")]]))


def test_bad_arguments():
    w = rand(4, 4)
    with pytest.raises(ValueError, match="group_size"):
        fake_quantize_per_group(w, 4, 0)
    with pytest.raises(ValueError, match="axis"):
        per_channel_qparams(w, 8, axis=2)
    with pytest.raises(ValueError, match="bits"):
        fake_quantize_per_group(w, 1, 4)
