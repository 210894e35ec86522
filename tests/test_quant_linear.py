"""lowbit.quant.linear: the affine map, its qparams, and agreement with PyTorch's fake-quant and observers."""
from __future__ import annotations

import math

import pytest
import torch

from lowbit.quant.linear import (MIN_SCALE, affine_qparams, fake_quantize, linear_dequantize, linear_quantize,
                                 quantized_range, sqnr_db, storage_dtype, symmetric_qparams)


def rand(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


# ------------------------------------------------------------------------------------- quantized_range
@pytest.mark.parametrize("bits", range(1, 33))
def test_quantized_range_matches_formula(bits):
    assert quantized_range(bits, signed=True) == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    assert quantized_range(bits, signed=False) == (0, 2 ** bits - 1)
    q_min, q_max = quantized_range(bits)
    assert isinstance(q_min, int) and isinstance(q_max, int)


def test_one_bit_signed_is_minus_one_zero():
    assert quantized_range(1) == (-1, 0)


@pytest.mark.parametrize("bad", [0, 33, -1, 8.0, "8", True, None])
def test_quantized_range_rejects_bad_bits(bad):
    with pytest.raises(ValueError, match="bits"):
        quantized_range(bad)


@pytest.mark.parametrize("bits, signed, dtype", [(8, True, torch.int8), (8, False, torch.uint8),
                                                 (4, True, torch.int8), (1, False, torch.uint8),
                                                 (9, False, torch.int16), (16, True, torch.int16),
                                                 (16, False, torch.int32), (24, True, torch.int32),
                                                 (32, True, torch.int32), (32, False, torch.int64)])
def test_storage_dtype(bits, signed, dtype):
    assert storage_dtype(bits, signed) == dtype
    q = linear_quantize(torch.tensor([-1e30, 0.0, 1e30]), 1.0, 0, bits, signed)
    assert q.dtype == dtype
    assert q.tolist() == [quantized_range(bits, signed)[0], 0, quantized_range(bits, signed)[1]]


# -------------------------------------------------------------------------------------- linear_quantize
def test_round_half_to_even_on_exact_ties():
    r = torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5])
    assert linear_quantize(r, 1.0, 0, 8).tolist() == [-2, -2, 0, 0, 2, 2, 4]
    # ties after scaling: r / 0.5 = 2*r, ties come from r = k + 0.25
    r = torch.tensor([0.25, 0.75, 1.25])
    assert linear_quantize(r, 0.5, 0, 8).tolist() == [0, 2, 2]


def test_zero_point_is_added_after_rounding_and_clamped():
    r = torch.tensor([-10.0, -0.5, 0.0, 0.5, 1.5, 100.0])
    assert linear_quantize(r, 1.0, 3, 4, signed=False).tolist() == [0, 3, 3, 3, 5, 15]
    assert linear_quantize(r, 1.0, -2, 3, signed=True).tolist() == [-4, -2, -2, -2, 0, 3]


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("signed", [True, False])
def test_quantize_stays_in_range_and_matches_formula(bits, signed):
    r = rand(1000, seed=bits) * 3
    q_min, q_max = quantized_range(bits, signed)
    scale, zp = 0.37, (q_min + q_max) // 2
    q = linear_quantize(r, scale, zp, bits, signed)
    expected = torch.clamp(torch.round(r / torch.tensor(0.37)) + zp, q_min, q_max)
    assert torch.equal(q.long(), expected.long())
    assert int(q.min()) >= q_min and int(q.max()) <= q_max


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_computed_in_float32(dtype):
    r = rand(500, seed=3, dtype=dtype)
    q = linear_quantize(r, 0.013, 5, 8)
    assert torch.equal(q, linear_quantize(r.float(), 0.013, 5, 8))
    assert fake_quantize(r, 0.013, 5, 8).dtype == torch.float32


def test_per_channel_scale_and_zero_point_broadcast():
    w = rand(4, 3, 5, seed=1)
    scale = torch.tensor([0.1, 0.2, 0.05, 1.0]).reshape(4, 1, 1)
    zp = torch.tensor([0, 1, -1, 2]).reshape(4, 1, 1)
    q = linear_quantize(w, scale, zp, 8)
    for c in range(4):
        assert torch.equal(q[c], linear_quantize(w[c], float(scale[c]), int(zp[c]), 8))
    # the other axis: scale per column
    scale_cols = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5]).reshape(1, 1, 5)
    q = linear_quantize(w, scale_cols, 0, 8)
    assert torch.equal(q[..., 4], linear_quantize(w[..., 4], 0.5, 0, 8))


def test_scale_that_would_change_shape_is_rejected():
    with pytest.raises(ValueError, match="broadcast|shape"):
        linear_quantize(rand(4, 3), torch.ones(5, 1), 0, 8)
    with pytest.raises(ValueError, match="shape"):
        linear_quantize(rand(4), torch.ones(2, 4), 0, 8)


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf"), torch.tensor([0.1, 0.0])])
def test_bad_scale_errors(scale):
    with pytest.raises(ValueError, match="scale"):
        linear_quantize(torch.zeros(2), scale, 0, 8)


@pytest.mark.parametrize("zp", [0.5, torch.tensor([0.5]), float("nan")])
def test_non_integer_zero_point_errors(zp):
    with pytest.raises(ValueError, match="zero_point"):
        linear_quantize(torch.zeros(1), 1.0, zp, 8)


def test_integral_float_zero_point_is_accepted_and_out_of_range_is_not():
    assert torch.equal(linear_quantize(torch.ones(2), 1.0, 3.0, 8), linear_quantize(torch.ones(2), 1.0, 3, 8))
    with pytest.raises(ValueError, match="range"):
        linear_quantize(torch.ones(2), 1.0, 300, 8, signed=False)
    with pytest.raises(TypeError):
        linear_quantize(torch.ones(2), 1.0, True, 8)


@pytest.mark.parametrize("bad", [torch.tensor([1, 2]), torch.tensor([True]), [1.0, 2.0]])
def test_non_float_input_errors(bad):
    with pytest.raises(TypeError, match="floating|Tensor"):
        linear_quantize(bad, 1.0, 0, 8)


def test_nan_input_errors_and_empty_input_gives_empty_output():
    with pytest.raises(ValueError, match="NaN"):
        linear_quantize(torch.tensor([1.0, float("nan")]), 1.0, 0, 8)
    q = linear_quantize(torch.empty(0, 3), 1.0, 0, 8)
    assert q.shape == (0, 3) and q.dtype == torch.int8


def test_inputs_are_not_modified():
    r, scale, zp = rand(50), torch.tensor(0.1), torch.tensor(3)
    copies = r.clone(), scale.clone(), zp.clone()
    q = linear_quantize(r, scale, zp, 8)
    q_copy = q.clone()
    linear_dequantize(q, scale, zp)
    fake_quantize(r, scale, zp, 8)
    assert torch.equal(r, copies[0]) and torch.equal(scale, copies[1]) and torch.equal(zp, copies[2])
    assert torch.equal(q, q_copy)


# ------------------------------------------------------------------------------------ linear_dequantize
def test_dequantize_has_no_integer_overflow():
    q = torch.tensor([0, 255], dtype=torch.uint8)
    assert linear_dequantize(q, 1.0, 200).tolist() == [-200.0, 55.0]
    q = torch.tensor([-128, 127], dtype=torch.int8)
    assert linear_dequantize(q, 2.0, 127).tolist() == [-510.0, 0.0]
    assert linear_dequantize(q, 2.0, 127).dtype == torch.float32


def test_dequantize_rejects_float_codes():
    with pytest.raises(TypeError, match="integer"):
        linear_dequantize(torch.tensor([1.0]), 1.0, 0)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_round_trip_error_is_at_most_half_a_step_inside_the_range(bits):
    r = rand(2000, seed=bits)
    scale, zp = affine_qparams(float(r.min()), float(r.max()), bits)
    r_hat = fake_quantize(r, scale, zp, bits)
    assert float((r - r_hat).abs().max()) <= scale / 2 * (1 + 1e-5)


# ----------------------------------------------------------------------------------- agreement with torch
@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("signed", [True, False])
def test_fake_quantize_equals_torch_with_power_of_two_scale(bits, signed):
    # torch multiplies by 1/scale where we divide by scale: identical when scale is a power of two.
    r = rand(5000, seed=10 + bits) * 2
    r[:8] = torch.tensor([-1.5, -0.5, 0.5, 1.5, 2.5, 0.25, -0.25, 0.75]) * 0.125  # ties at scale 1/8
    q_min, q_max = quantized_range(bits, signed)
    zp = (q_min + q_max + 1) // 2
    ours = fake_quantize(r, 0.125, zp, bits, signed)
    theirs = torch.fake_quantize_per_tensor_affine(r, 0.125, zp, q_min, q_max)
    assert torch.equal(ours, theirs)


def test_fake_quantize_agrees_with_torch_for_arbitrary_scales():
    r = rand(100_000, seed=7) * 3
    scale, zp = affine_qparams(float(r.min()), float(r.max()), 8, signed=False)
    ours = fake_quantize(r, scale, zp, 8, signed=False)
    theirs = torch.fake_quantize_per_tensor_affine(r, scale, zp, 0, 255)
    differ = ours != theirs
    assert float((ours - theirs).abs().max()) <= scale * 1.0001  # at most one step (near-ties only)
    assert differ.float().mean() < 1e-3


def test_per_channel_fake_quantize_equals_torch():
    w = rand(8, 4, 3, 3, seed=2)
    scale = 2.0 ** -torch.arange(3, 11, dtype=torch.float32)
    zp = torch.arange(-4, 4, dtype=torch.int32)
    ours = fake_quantize(w, scale.reshape(8, 1, 1, 1), zp.reshape(8, 1, 1, 1), 8)
    theirs = torch.fake_quantize_per_channel_affine(w, scale, zp, 0, -128, 127)
    assert torch.equal(ours, theirs)
    # another axis
    ours = fake_quantize(w, scale[:4].reshape(1, 4, 1, 1), 0, 8)
    theirs = torch.fake_quantize_per_channel_affine(w, scale[:4], torch.zeros(4, dtype=torch.int32), 1, -128, 127)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("lo, hi", [(-1.3, 2.7), (0.2, 5.0), (-4.0, -0.5), (-3.0, 3.0), (0.0, 1e-3)])
@pytest.mark.parametrize("dtype, signed", [(torch.quint8, False), (torch.qint8, True)])
def test_affine_qparams_equal_torch_minmax_observer(lo, hi, dtype, signed):
    observer = torch.ao.quantization.MinMaxObserver(dtype=dtype, qscheme=torch.per_tensor_affine)
    observer(torch.tensor([lo, hi]))
    torch_scale, torch_zp = observer.calculate_qparams()
    scale, zp = affine_qparams(lo, hi, 8, signed)
    assert scale == float(torch_scale)
    assert zp == int(torch_zp)


def test_torch_symmetric_convention_differs_by_127_5():
    observer = torch.ao.quantization.MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
    observer(torch.tensor([-2.0, 1.0]))
    torch_scale, torch_zp = observer.calculate_qparams()
    assert float(torch_scale) == pytest.approx(2.0 / 127.5)
    assert int(torch_zp) == 0
    assert symmetric_qparams(2.0, 8) == pytest.approx(2.0 / 127)
    assert symmetric_qparams(2.0, 8, restricted=False) == pytest.approx(2.0 / 128)


def test_torch_clamps_tiny_scales_at_eps_and_we_do_not():
    observer = torch.ao.quantization.MinMaxObserver(dtype=torch.quint8)
    observer(torch.tensor([0.0, 1e-6]))
    torch_scale, _ = observer.calculate_qparams()
    assert float(torch_scale) == pytest.approx(torch.finfo(torch.float32).eps)
    scale, _ = affine_qparams(0.0, 1e-6, 8, signed=False)
    assert scale == pytest.approx(1e-6 / 255, rel=1e-6)


# ------------------------------------------------------------------------------------------- qparams
def test_affine_qparams_formula_and_zero_exact():
    scale, zp = affine_qparams(-1.0, 3.0, 8, signed=False)
    assert scale == pytest.approx(4.0 / 255)
    assert zp == round(0 - (-1.0) / scale) == 64
    assert isinstance(scale, float) and isinstance(zp, int)
    assert fake_quantize(torch.zeros(3), scale, zp, 8, signed=False).tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("signed", [True, False])
def test_range_is_extended_to_contain_zero(signed):
    q_min, q_max = quantized_range(8, signed)
    scale, zp = affine_qparams(2.0, 5.0, 8, signed)        # all positive → [0, 5]
    assert scale == pytest.approx(5.0 / 255) and zp == q_min
    scale, zp = affine_qparams(-5.0, -2.0, 8, signed)      # all negative → [-5, 0]
    assert scale == pytest.approx(5.0 / 255) and zp == q_max


@pytest.mark.parametrize("value", [0.0, 3.0, -2.0, 1e-30])
@pytest.mark.parametrize("signed", [True, False])
def test_constant_ranges_give_positive_scale_and_round_trip(value, signed):
    scale, zp = affine_qparams(value, value, 8, signed)
    assert math.isfinite(scale) and scale >= MIN_SCALE
    r = torch.full((10,), value)
    r_hat = fake_quantize(r, scale, zp, 8, signed)
    assert torch.isfinite(r_hat).all()
    if value == 0.0:
        assert scale == 1.0 and torch.equal(r_hat, r)
    else:
        assert torch.allclose(r_hat, r, rtol=1e-6, atol=0)


def test_affine_qparams_elementwise_on_tensors():
    lo = torch.tensor([-1.0, 0.0, 2.0, 0.0])
    hi = torch.tensor([3.0, 0.0, 4.0, 1.0])
    scale, zp = affine_qparams(lo, hi, 8, signed=False)
    assert scale.dtype == torch.float32 and zp.dtype == torch.int32 and scale.shape == (4,)
    for i in range(4):
        s_i, z_i = affine_qparams(float(lo[i]), float(hi[i]), 8, signed=False)
        assert float(scale[i]) == s_i and int(zp[i]) == z_i
    scale_b, zp_b = affine_qparams(0.0, hi, 8, signed=False)          # a number broadcasts against a tensor
    assert scale_b.shape == (4,) and zp_b.tolist() == [0, 0, 0, 0]


def test_affine_qparams_errors():
    with pytest.raises(ValueError, match="r_min must be <= r_max"):
        affine_qparams(1.0, 0.5, 8)
    with pytest.raises(ValueError, match="finite"):
        affine_qparams(float("nan"), 1.0, 8)
    with pytest.raises(ValueError, match="bits"):
        affine_qparams(0.0, 1.0, 0)
    with pytest.raises(ValueError, match="same shape"):
        affine_qparams(torch.zeros(2), torch.ones(3), 8)


def test_symmetric_qparams():
    assert symmetric_qparams(1.27, 8) == pytest.approx(0.01)
    assert symmetric_qparams(0.0, 8) == 1.0
    assert symmetric_qparams(1.0, 2) == 1.0 and symmetric_qparams(1.0, 2, restricted=False) == 0.5
    scales = symmetric_qparams(torch.tensor([0.0, 7.0]), 4)
    assert scales.tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match=">= 0"):
        symmetric_qparams(-1.0, 8)
    with pytest.raises(ValueError, match="bits"):
        symmetric_qparams(1.0, 1)


def test_symmetric_restricted_never_produces_q_min():
    r = rand(1000, seed=4)
    scale = symmetric_qparams(float(r.abs().max()), 8)
    q = linear_quantize(r, scale, 0, 8)
    assert int(q.min()) >= -127 and int(q.abs().max()) == 127


# -------------------------------------------------------------------------------------------------- sqnr
def test_sqnr_db_accepts_parameters_without_warnings():
    import warnings
    weight = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sqnr_db(weight, weight * 1.1) == pytest.approx(20.0)


def test_sqnr_db():
    x = torch.tensor([1.0, -1.0, 1.0, -1.0])
    assert sqnr_db(x, x * 1.1) == pytest.approx(20.0)
    assert sqnr_db(x, x.clone()) == math.inf
    # each extra bit buys ~6 dB for a uniform signal
    u = torch.rand(100_000, generator=torch.Generator().manual_seed(0)) * 2 - 1
    s4 = sqnr_db(u, fake_quantize(u, symmetric_qparams(1.0, 4), 0, 4))
    s8 = sqnr_db(u, fake_quantize(u, symmetric_qparams(1.0, 8), 0, 8))
    assert 22 < s8 - s4 < 26
    with pytest.raises(ValueError, match="shape"):
        sqnr_db(x, x[:2])
    with pytest.raises(ValueError, match="empty"):
        sqnr_db(torch.empty(0), torch.empty(0))
    with pytest.raises(ValueError, match="zeros"):
        sqnr_db(torch.zeros(3), torch.ones(3))
