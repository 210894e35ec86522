"""Lab 4's reference functions (lowbit.quant.binary), each against an independent computation: the papers'
formulas written out elementwise, torch autograd of an equivalent expression, least squares solved by
torch.linalg.lstsq, Python integers for the bit patterns, and the float matmul of the ±1 tensors."""
from __future__ import annotations

import math

import pytest
import torch

from lowbit.quant import binary as B

HALF_DTYPES = [torch.float16, torch.bfloat16, torch.float64]


def data(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


def sign_by_hand(w: torch.Tensor) -> torch.Tensor:
    """+1 where w >= 0 else -1, elementwise in Python (independent of any torch sign)."""
    return torch.tensor([1.0 if v >= 0 else -1.0 for v in w.reshape(-1).tolist()]).reshape(w.shape)


# ------------------------------------------------------------------------------------------ binarize
def test_binarize_maps_zero_and_negative_zero_to_plus_one():
    w = torch.tensor([-2.0, -1e-30, -0.0, 0.0, 1e-30, 3.0])
    assert torch.equal(B.binarize(w), torch.tensor([-1.0, -1.0, 1.0, 1.0, 1.0, 1.0]))


@pytest.mark.parametrize("shape", [(), (7,), (4, 5), (3, 2, 3, 3)])
def test_binarize_matches_the_rule_in_every_shape(shape):
    w = data(*shape)
    assert torch.equal(B.binarize(w), sign_by_hand(w))


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_binarize_keeps_the_dtype(dtype):
    w = data(6, 4).to(dtype)
    out = B.binarize(w)
    assert out.dtype == dtype and torch.equal(out.float(), sign_by_hand(w.float()))


def test_binarize_empty_in_empty_out_and_refuses_integers():
    assert B.binarize(torch.empty(0, 3)).shape == (0, 3)
    with pytest.raises(TypeError, match="torch.int64"):
        B.binarize(torch.arange(3))


# ------------------------------------------------------------------------------------------ binarize_stochastic
def stochastic_by_hand(w: torch.Tensor, seed: int) -> torch.Tensor:
    u = torch.rand(w.shape, generator=torch.Generator().manual_seed(seed))
    p = [min(max((v + 1) / 2, 0.0), 1.0) for v in w.reshape(-1).tolist()]
    return torch.tensor([1.0 if uu < pp else -1.0 for uu, pp in zip(u.reshape(-1).tolist(), p)]).reshape(w.shape)


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_binarize_stochastic_is_exactly_the_stated_draw(seed):
    w = data(9, 13, seed=seed, scale=0.8)
    assert torch.equal(B.binarize_stochastic(w, seed), stochastic_by_hand(w, seed))


def test_binarize_stochastic_is_reproducible_and_leaves_the_global_rng_alone():
    w = data(50, 20, scale=0.5)
    torch.manual_seed(7)
    state = torch.get_rng_state()
    first, again, other = B.binarize_stochastic(w, 3), B.binarize_stochastic(w, 3), B.binarize_stochastic(w, 4)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_binarize_stochastic_mean_is_the_clipped_weight_within_five_standard_errors():
    values = torch.tensor([-1.5, -1.0, -0.6, -0.1, 0.0, 0.3, 0.75, 1.0, 2.0])
    draws = 20000
    out = B.binarize_stochastic(values.repeat(draws, 1), seed=11)
    mean = out.mean(dim=0)
    expected = values.clamp(-1, 1)
    # each draw is ±1 with mean m: variance 1 - m², standard error sqrt((1 - m²) / draws)
    standard_error = ((1 - expected**2) / draws).sqrt()
    assert bool((mean - expected).abs().le(5 * standard_error + 1e-12).all()), (mean, expected)
    # a logistic sigmoid instead of the hard one would give 2·sigmoid(0.3) − 1 ≈ 0.149 at w = 0.3
    assert abs(float(mean[5]) - 0.3) < 0.05


def test_binarize_stochastic_is_deterministic_outside_the_unit_interval():
    w = torch.tensor([-3.0, -1.0, 1.0, 5.0]).repeat(500, 1)
    out = B.binarize_stochastic(w, 0)
    assert bool((out[:, 0] == -1).all() and (out[:, 1] == -1).all() and (out[:, 2] == 1).all()
                and (out[:, 3] == 1).all())


def test_binarize_stochastic_a_tie_u_equal_p_gives_minus_one():
    u = torch.rand((6, 50), generator=torch.Generator().manual_seed(21))
    w = 2 * u - 1                       # exact in float32 (u is a multiple of 2^-24): p = (w + 1) / 2 == u
    assert torch.equal((w + 1) / 2, u)
    assert torch.equal(B.binarize_stochastic(w, 21), -torch.ones(6, 50))
    assert torch.equal(B.binarize_stochastic(w + 2**-23, 21), torch.ones(6, 50))         # p = u + 2^-24, exact


def test_binarize_stochastic_half_input_uses_its_own_precision_for_p_and_float32_draws():
    # w = 2^-11: in float16 w + 1 rounds to 1 (half an ulp, ties to even), so p = 0.5, where float32 has
    # p = 0.5 + 2^-12; the draws u in between (about 2.4 per 10,000) tell the two apart
    w = torch.full((100_000,), 2.0**-11, dtype=torch.float16)
    u = torch.rand(w.shape, generator=torch.Generator().manual_seed(9))                   # float32, not half
    p = ((w + 1) / 2).clamp(0, 1)                                                        # in float16: 0.5
    out = B.binarize_stochastic(w, 9)
    assert torch.equal(out, torch.where(u < p.float(), 1.0, -1.0).half())
    assert int((out != torch.where(u < (w.float() + 1) / 2, 1.0, -1.0).half()).sum()) > 5


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_binarize_stochastic_keeps_the_dtype_and_shape(dtype):
    w = data(3, 2, 3, 3, scale=0.5)
    out = B.binarize_stochastic(w.to(dtype), 5)
    assert out.dtype == dtype and out.shape == w.shape
    assert set(out.float().unique().tolist()) <= {-1.0, 1.0}
    if dtype == torch.float64:                     # exact there: p computed in float64 from the same w
        assert torch.equal(out.float(), stochastic_by_hand(w.double(), 5))


@pytest.mark.parametrize("seed", [-1, 2.5, True, "0"])
def test_binarize_stochastic_refuses_a_bad_seed(seed):
    with pytest.raises(ValueError, match="seed"):
        B.binarize_stochastic(data(3), seed)


# ------------------------------------------------------------------------------------------ sign_ste
EDGE = torch.tensor([-3.0, -1.0000001, -1.0, -0.5, -0.0, 0.0, 0.999, 1.0, 1.0000001, 2.0])


def test_sign_ste_forward_is_binarize_and_backward_is_the_hubara_mask():
    x = EDGE.clone().requires_grad_()
    upstream = torch.arange(1.0, 11.0)
    y = B.sign_ste(x)
    assert torch.equal(y.detach(), B.binarize(EDGE))
    y.backward(upstream)
    mask = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0])     # |x| <= 1, inclusive
    assert torch.equal(x.grad, upstream * mask)


def test_sign_ste_gradient_equals_autograd_of_an_inclusive_straight_through_expression():
    x = data(40, 30, scale=1.2)
    x[0, :4] = torch.tensor([-1.0, 1.0, 0.0, -0.0])
    ours, plain = x.clone().requires_grad_(), x.clone().requires_grad_()
    upstream = data(40, 30, seed=1)
    B.sign_ste(ours).backward(upstream)
    inside = torch.where(plain.abs() <= 1, plain, plain.detach())           # identity on [-1, 1], constant beyond
    (inside + (sign_by_hand(x) - inside).detach()).backward(upstream)
    assert torch.equal(ours.grad, plain.grad)
    assert 0 < int((ours.grad == 0).sum()) < x.numel()
    # torch's hardtanh / scalar clamp gradients are open at ±1: the STE here is not
    clip = x[0, :2].clone().requires_grad_()
    torch.nn.functional.hardtanh(clip).backward(upstream[0, :2])
    assert torch.equal(clip.grad, torch.zeros(2)) and torch.equal(ours.grad[0, :2], upstream[0, :2])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sign_ste_half_precision(dtype):
    x = EDGE.to(dtype).requires_grad_()
    y = B.sign_ste(x)
    y.sum().backward()
    assert y.dtype == dtype and x.grad.dtype == dtype
    assert torch.equal(x.grad.float(), (EDGE.to(dtype).float().abs() <= 1).float())


# ------------------------------------------------------------------------------------------ bwn_scale
def test_bwn_scale_is_the_mean_magnitude_of_each_output_channel():
    w = torch.tensor([[[1.0, -3.0]], [[0.5, 0.5]], [[0.0, 0.0]], [[-2.0, -6.0]]])     # [4, 1, 2]
    assert torch.equal(B.bwn_scale(w), torch.tensor([2.0, 0.5, 0.0, 4.0]))


def test_bwn_scale_is_the_least_squares_optimum_of_each_channel():
    w = data(6, 3, 3, 3, scale=0.2) * torch.arange(1.0, 7.0).reshape(6, 1, 1, 1)
    alpha = B.bwn_scale(w)
    assert alpha.shape == (6,)
    for c in [0, 5]:       # lstsq: min_a || sign(w_c) a − w_c ||²
        design = sign_by_hand(w[c]).reshape(-1, 1).double()
        solved = torch.linalg.lstsq(design, w[c].reshape(-1, 1).double()).solution
        assert float(alpha[c]) == pytest.approx(float(solved), rel=1e-5)

    def error(a: torch.Tensor) -> torch.Tensor:
        return ((w - B.per_channel(a, w) * sign_by_hand(w)) ** 2).reshape(6, -1).sum(1)
    best = error(alpha)
    assert bool((error(alpha * 1.02) > best).all() and (error(alpha * 0.98) > best).all())
    assert bool((error(torch.full((6,), float(w.abs().mean()))) >= best).all())      # one α for the layer


def test_bwn_scale_one_dimensional_weights_are_one_weight_per_channel():
    w = torch.tensor([-0.5, 2.0, 0.0])
    assert torch.equal(B.bwn_scale(w), torch.tensor([0.5, 2.0, 0.0]))


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_bwn_scale_keeps_the_dtype(dtype):
    w = data(4, 8, scale=0.3).to(dtype)
    alpha = B.bwn_scale(w)
    assert alpha.dtype == dtype and alpha.shape == (4,)
    assert torch.allclose(alpha.double(), w.double().abs().mean(1), rtol=1e-2)


@pytest.mark.parametrize("w,error,message", [
    (torch.tensor(1.0), ValueError, "channel axis"), (torch.empty(0), ValueError, "empty"),
    (torch.empty(3, 0), ValueError, "empty"), (torch.ones(3, dtype=torch.int32), TypeError, "torch.int32")])
def test_bwn_scale_refuses_bad_weights(w, error, message):
    with pytest.raises(error, match=message):
        B.bwn_scale(w)


# ------------------------------------------------------------------------------------------ binarize_weights
def test_binarize_weights_value_is_alpha_times_sign_per_channel():
    w = data(5, 2, 3, 3, scale=0.4)
    w[1, 0, 0, 0] = 0.0
    alpha = w.abs().reshape(5, -1).mean(1).reshape(5, 1, 1, 1)
    assert torch.allclose(B.binarize_weights(w), alpha * sign_by_hand(w), rtol=1e-6, atol=0)


def test_binarize_weights_gradient_is_xnor_nets_with_the_one_over_n_term():
    w = data(3, 4, scale=0.9)
    w[0] = torch.tensor([1.0, -1.0, 0.0, 1.5])        # the STE's bounds, a zero, a weight past the cancel
    w[2] = torch.tensor([-2.0, 3.0, -0.1, 0.2])
    upstream = data(3, 4, seed=2)
    x = w.clone().requires_grad_()
    B.binarize_weights(x).backward(upstream)
    n = 4
    alpha = w.abs().mean(1, keepdim=True)
    s = sign_by_hand(w)
    by_hand = alpha * upstream * (w.abs() <= 1) + torch.sign(w) / n * (upstream * s).sum(1, keepdim=True)
    assert torch.allclose(x.grad, by_hand, rtol=1e-6, atol=1e-7)
    # the 1/n term matters: without it the gradient differs
    assert not torch.allclose(x.grad, alpha * upstream * (w.abs() <= 1), atol=1e-3)


def test_binarize_weights_gradient_equals_autograd_of_the_composition_in_plain_torch():
    w = data(6, 3, 3, 3, scale=0.8)
    upstream = data(6, 3, 3, 3, seed=3)
    ours, plain = w.clone().requires_grad_(), w.clone().requires_grad_()
    B.binarize_weights(ours).backward(upstream)
    clipped = plain.clamp(-1, 1)
    ste = clipped + (sign_by_hand(w) - clipped).detach()
    (plain.abs().mean(dim=(1, 2, 3), keepdim=True) * ste).backward(upstream)
    assert torch.allclose(ours.grad, plain.grad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_binarize_weights_half_precision_and_one_dimensional(dtype):
    w = data(4, 9, scale=0.5).to(dtype).requires_grad_()
    y = B.binarize_weights(w)
    y.sum().backward()
    assert y.dtype == dtype and w.grad.dtype == dtype and y.shape == (4, 9)
    v = torch.tensor([-0.25, 0.5])
    assert torch.equal(B.binarize_weights(v), torch.tensor([-0.25, 0.5]))       # α = |w| for one weight


# ------------------------------------------------------------------------------------------ twn_threshold
def test_twn_threshold_is_seven_tenths_of_the_mean_magnitude_per_channel():
    w = torch.tensor([[1.0, -1.0, 2.0, -4.0], [0.0, 0.0, 0.0, 0.0], [10.0, 0.0, 0.0, 0.0]])
    assert torch.allclose(B.twn_threshold(w), torch.tensor([0.7 * 2.0, 0.0, 0.7 * 2.5]))
    w4 = data(8, 3, 3, 3)
    assert B.twn_threshold(w4).shape == (8,)
    assert torch.allclose(B.twn_threshold(w4), 0.7 * w4.abs().mean(dim=(1, 2, 3)))


def test_twn_threshold_keeps_the_dtype_and_refuses_no_channel_axis():
    assert B.twn_threshold(data(3, 5).half()).dtype == torch.float16
    with pytest.raises(ValueError, match="channel axis"):
        B.twn_threshold(torch.tensor(0.5))


# ------------------------------------------------------------------------------------------ twn_quantize
def test_twn_quantize_on_a_constructed_channel():
    # mean |w| = (0.1 + 0.2 + 0.9 + 1.3 + 0 + 0.5) / 6 = 0.5, Δ = 0.35: kept 0.9, −1.3, 0.5 → α = 0.9
    w = torch.tensor([[0.1, -0.2, 0.9, -1.3, 0.0, 0.5]], dtype=torch.float64)
    assert torch.allclose(B.twn_quantize(w), torch.tensor([[0.0, 0.0, 0.9, -0.9, 0.0, 0.9]], dtype=torch.float64))


def test_twn_quantize_thresholds_are_strict_and_per_channel():
    w = torch.tensor([[0.5, -0.5, 0.75, -1.0], [0.25, -0.25, 0.5, 2.0]])
    out = B.twn_quantize(w, delta=0.5)                      # ±0.5 ties → 0
    assert torch.equal(out, torch.tensor([[0.0, 0.0, 0.875, -0.875], [0.0, 0.0, 0.0, 2.0]]))
    per_channel = B.twn_quantize(w, delta=torch.tensor([0.75, 0.25]))
    assert torch.equal(per_channel, torch.tensor([[0.0, 0.0, 0.0, -1.0], [0.0, 0.0, 1.25, 1.25]]))
    assert torch.equal(B.twn_quantize(w, delta=torch.tensor(0.5)), out)


def test_twn_quantize_all_zero_and_all_negative_channels():
    w = torch.tensor([[0.0, 0.0, 0.0], [-1.0, -2.0, -3.0], [-0.1, -0.1, -4.0]])
    out = B.twn_quantize(w)
    assert not bool(torch.isnan(out).any())
    # channel 1: Δ = 1.4 → kept −2, −3, α = 2.5; channel 2: Δ = 0.7 · 1.4 = 0.98 → only −4
    assert torch.allclose(out, torch.tensor([[0.0, 0.0, 0.0], [0.0, -2.5, -2.5], [0.0, 0.0, -4.0]]))
    assert torch.equal(B.twn_quantize(w, delta=10.0), torch.zeros(3, 3))      # nothing above Δ: α = 0, not NaN


def test_twn_quantize_default_matches_the_paper_formula_on_conv_weights():
    w = data(8, 4, 3, 3, scale=0.1)
    delta = 0.7 * w.abs().mean(dim=(1, 2, 3), keepdim=True)
    kept = w.abs() > delta
    alpha = (w.abs() * kept).sum(dim=(1, 2, 3), keepdim=True) / kept.sum(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(B.twn_quantize(w), alpha * torch.sign(w) * kept, rtol=1e-6, atol=0)


def test_twn_alpha_is_the_least_squares_optimum_for_its_ternary_pattern():
    w = data(4, 50, scale=0.3)
    out = B.twn_quantize(w)
    pattern = torch.where(out != 0, torch.sign(out), torch.zeros(()))
    alpha = out.abs().amax(1)

    def error(a: torch.Tensor) -> torch.Tensor:
        return ((w - a[:, None] * pattern) ** 2).sum(1)
    assert bool((error(alpha * 1.03) > error(alpha)).all() and (error(alpha * 0.97) > error(alpha)).all())


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_twn_quantize_dtypes_and_one_dimensional(dtype):
    w = data(6, 10, scale=0.2).to(dtype)
    out = B.twn_quantize(w)
    assert out.dtype == dtype and out.shape == w.shape
    assert (out.float().unique().numel()) <= 2 * 6 + 1
    v = torch.tensor([0.3, -0.2, 0.0], dtype=dtype)                   # a 1-D w: one weight per channel
    assert torch.equal(B.twn_quantize(v), torch.tensor([0.3, -0.2, 0.0], dtype=dtype))


@pytest.mark.parametrize("delta,error,message", [
    (-0.1, ValueError, "delta"), (torch.tensor(-0.1), ValueError, "delta"),
    (torch.tensor([0.1, -0.1]), ValueError, "delta"), (float("nan"), ValueError, "delta"),
    (torch.tensor([0.1, 0.2, 0.3]), ValueError, "shape"), ([0.1, 0.1], TypeError, "delta"),
    (True, TypeError, "delta")])
def test_twn_quantize_refuses_bad_thresholds(delta, error, message):
    with pytest.raises(error, match=message):
        B.twn_quantize(data(2, 4), delta)


# ------------------------------------------------------------------------------------------ ttq_quantize
def ttq_by_hand(w, w_p, w_n, t, upstream):
    """TTQ's case analysis elementwise: value and the three gradients, independent of the Function."""
    delta = t * max(abs(v) for v in w.reshape(-1).tolist())
    pos, neg = w > delta, w < -delta
    value = torch.where(pos, w_p, torch.where(neg, -w_n, torch.zeros(())))
    d_w = upstream * torch.where(pos, w_p, torch.where(neg, w_n, torch.ones(())))
    return value, d_w, upstream[pos].sum(), -upstream[neg].sum()


@pytest.mark.parametrize("t", [0.0, 0.05, 0.3])
def test_ttq_value_and_gradients_follow_the_case_analysis(t):
    w = data(16, 8, 3, 3, scale=0.2)
    upstream = data(16, 8, 3, 3, seed=4)
    x = w.clone().requires_grad_()
    w_p, w_n = torch.tensor(1.3, requires_grad=True), torch.tensor(0.6, requires_grad=True)
    y = B.ttq_quantize(x, w_p, w_n, t)
    y.backward(upstream)
    value, d_w, d_p, d_n = ttq_by_hand(w, torch.tensor(1.3), torch.tensor(0.6), t, upstream)
    assert torch.equal(y.detach(), value)
    assert torch.allclose(x.grad, d_w)
    assert torch.allclose(w_p.grad, d_p, rtol=1e-5) and torch.allclose(w_n.grad, d_n, rtol=1e-5)


def test_ttq_gradients_equal_autograd_of_an_equivalent_expression():
    w = data(10, 20, scale=0.5)
    upstream = data(10, 20, seed=5)
    ours_w, plain_w = w.clone().requires_grad_(), w.clone().requires_grad_()
    ours_p, plain_p = torch.tensor(0.8, requires_grad=True), torch.tensor(0.8, requires_grad=True)
    ours_n, plain_n = torch.tensor(1.1, requires_grad=True), torch.tensor(1.1, requires_grad=True)
    B.ttq_quantize(ours_w, ours_p, ours_n).backward(upstream)
    delta = 0.05 * w.abs().max()
    pos, neg = (w > delta).float(), (w < -delta).float()
    scaled = plain_w * (pos * plain_p.detach() + neg * plain_n.detach() + (1 - pos - neg))
    value = plain_p * pos - plain_n * neg + scaled - scaled.detach()
    value.backward(upstream)
    assert torch.allclose(ours_w.grad, plain_w.grad)
    assert torch.allclose(ours_p.grad, plain_p.grad) and torch.allclose(ours_n.grad, plain_n.grad)


def test_ttq_negative_scale_gets_minus_the_sum_of_its_region():
    w = torch.tensor([-2.0, -1.5, 0.01, 2.0], requires_grad=True)
    w_p, w_n = torch.tensor(1.0, requires_grad=True), torch.tensor(0.5, requires_grad=True)
    y = B.ttq_quantize(w, w_p, w_n)
    assert torch.equal(y.detach(), torch.tensor([-0.5, -0.5, 0.0, 1.0]))
    y.sum().backward()
    assert float(w_n.grad) == -2.0 and float(w_p.grad) == 1.0          # raising w_n lowers the output
    assert torch.equal(w.grad, torch.tensor([0.5, 0.5, 1.0, 1.0]))


def test_ttq_threshold_is_per_layer_strict_and_exact_at_the_ties():
    # max |w| = 4 over the layer, t = 0.25 → Δ = 1 for both channels (a per-channel Δ would be 0.25 for row 1)
    w = torch.tensor([[4.0, 1.0, -1.0, 1.5, -3.0], [0.5, -0.5, 1.0, 0.9, -1.25]], requires_grad=True)
    w_p, w_n = torch.tensor(2.0, requires_grad=True), torch.tensor(3.0, requires_grad=True)
    y = B.ttq_quantize(w, w_p, w_n, t=0.25)
    assert torch.equal(y.detach(), torch.tensor([[2.0, 0.0, 0.0, 2.0, -3.0], [0.0, 0.0, 0.0, 0.0, -3.0]]))
    y.sum().backward()
    assert torch.equal(w.grad, torch.tensor([[2.0, 1.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0, 3.0]]))


def test_ttq_half_precision_weights_with_float32_scales():
    w = data(4, 6, scale=0.3).half().requires_grad_()
    w_p, w_n = torch.tensor(0.7, requires_grad=True), torch.tensor(0.9, requires_grad=True)
    y = B.ttq_quantize(w, w_p, w_n)
    y.sum().backward()
    assert y.dtype == torch.float16 and w.grad.dtype == torch.float16
    assert w_p.grad.dtype == torch.float32 and w_p.grad.shape == ()
    assert set(y.detach().float().unique().tolist()) <= {float(torch.tensor(0.7).half()), 0.0,
                                                         -float(torch.tensor(0.9).half())}


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(t=1.0), ValueError, "t must"), (dict(t=-0.01), ValueError, "t must"), (dict(t=True), ValueError, "t must"),
    (dict(w_p=torch.tensor([1.0])), TypeError, "w_p"), (dict(w_n=1.0), TypeError, "w_n"),
    (dict(w=torch.empty(0, 3)), ValueError, "empty"), (dict(w=torch.ones(3, dtype=torch.int8)), TypeError, "int8")])
def test_ttq_refuses_bad_arguments(kwargs, error, message):
    args = dict(w=data(3, 3), w_p=torch.tensor(1.0), w_n=torch.tensor(1.0), t=0.05) | kwargs
    with pytest.raises(error, match=message):
        B.ttq_quantize(**args)


# ------------------------------------------------------------------------------------------ pack_signs
def pack_by_hand(row: torch.Tensor) -> list[int]:
    """Signed int64 words of one row, from Python integers."""
    values = row.tolist()
    words = []
    for k in range(0, len(values), 64):
        word = sum(1 << j for j, v in enumerate(values[k:k + 64]) if v >= 0)
        words.append(word - (1 << 64) if word >= 1 << 63 else word)
    return words


@pytest.mark.parametrize("n", [1, 3, 63, 64, 65, 127, 128, 200])
def test_pack_signs_bit_layout_matches_python_integers(n):
    x = data(5, n)
    x[0, 0] = -0.0
    packed = B.pack_signs(x)
    assert packed.dtype == torch.int64 and packed.shape == (5, math.ceil(n / 64))
    assert packed.tolist() == [pack_by_hand(row) for row in x]


def test_pack_signs_known_words_and_zero_padding():
    assert B.pack_signs(torch.ones(64)).tolist() == [-1]                 # all 64 bits set
    assert B.pack_signs(torch.tensor([1.0, -1.0, 0.0])).tolist() == [0b101]
    assert B.pack_signs(-torch.ones(70)).tolist() == [0, 0]
    assert B.pack_signs(torch.ones(70)).tolist() == [-1, 0b111111]       # padding bits 6..63 stay 0


def test_pack_signs_batch_axes_and_round_trip():
    x = data(2, 3, 4, 100).to(torch.bfloat16)
    packed = B.pack_signs(x)
    assert packed.shape == (2, 3, 4, 2)
    assert torch.equal(B.unpack_signs(packed, 100), B.binarize(x).float())


@pytest.mark.parametrize("x,error,message", [(torch.empty(4, 0), ValueError, "n >= 1"),
                                             (torch.tensor(1.0), ValueError, "n >= 1"),
                                             (torch.ones(3, 5, dtype=torch.int64), TypeError, "int64")])
def test_pack_signs_refuses_bad_input(x, error, message):
    with pytest.raises(error, match=message):
        B.pack_signs(x)


def test_unpack_signs_refuses_a_word_count_that_does_not_match_n():
    with pytest.raises(ValueError, match="ceil"):
        B.unpack_signs(torch.zeros(3, 2, dtype=torch.int64), 64)
    with pytest.raises(TypeError, match="int64"):
        B.unpack_signs(torch.zeros(3, 1, dtype=torch.int32), 64)


# ------------------------------------------------------------------------------------------ popcount
def test_popcount_matches_python_bin_count_on_negative_and_extreme_words():
    x = torch.randint(-2**63, 2**63 - 1, (40, 3), generator=torch.Generator().manual_seed(0), dtype=torch.int64)
    x[0, :3] = torch.tensor([0, -1, -2**63])
    original = x.clone()
    counts = B.popcount(x)
    assert torch.equal(x, original), "popcount must not change its input"
    assert int(B.popcount(torch.tensor(2**62 + 5))) == 3                          # 0-dim
    assert counts.dtype == torch.int64 and counts.shape == (40, 3)
    assert counts.tolist() == [[bin(v & (2**64 - 1)).count("1") for v in row] for row in x.tolist()]
    assert counts[0].tolist() == [0, 64, 1]


def test_popcount_refuses_other_dtypes():
    with pytest.raises(TypeError, match="int64"):
        B.popcount(torch.zeros(3, dtype=torch.int32))
    with pytest.raises(TypeError, match="integers"):
        B.popcount(torch.zeros(3))


# ------------------------------------------------------------------------------------------ xnor_matmul
@pytest.mark.parametrize("n", [1, 2, 63, 64, 65, 100, 128, 129, 576])
def test_xnor_matmul_is_bit_exact_against_the_float_matmul_of_the_signs(n):
    a, b = data(17, n, seed=n), data(9, n, seed=n + 1)
    a[0, :1] = 0.0
    expected = B.binarize(a) @ B.binarize(b).T
    out = B.xnor_matmul(B.pack_signs(a), B.pack_signs(b), n)
    assert out.dtype == torch.int64 and out.shape == (17, 9)
    assert torch.equal(out, expected.to(torch.int64))


def test_xnor_matmul_extremes_and_several_row_blocks(monkeypatch):
    n = 130
    a = torch.cat([torch.ones(1, n), -torch.ones(1, n), data(40, n)])
    b = torch.cat([torch.ones(1, n), data(7, n, seed=9)])
    expected = (B.binarize(a) @ B.binarize(b).T).to(torch.int64)
    monkeypatch.setattr(B, "_BLOCK_ELEMENTS", 3 * 8 * 3)          # 3 rows per block: 14 blocks, a ragged last one
    out = B.xnor_matmul(B.pack_signs(a), B.pack_signs(b), n)
    assert torch.equal(out, expected)
    assert int(out[0, 0]) == n and int(out[1, 0]) == -n


@pytest.mark.parametrize("a,b,n,message", [
    (torch.zeros(3, 2, dtype=torch.int64), torch.zeros(4, 2, dtype=torch.int64), 64, "ceil"),
    (torch.zeros(3, 2, dtype=torch.int64), torch.zeros(4, 1, dtype=torch.int64), 100, "same number of words"),
    (torch.zeros(2, dtype=torch.int64), torch.zeros(4, 2, dtype=torch.int64), 100, "2-D"),
    (torch.zeros(3, 1, dtype=torch.int64), torch.zeros(4, 1, dtype=torch.int64), 0, "n must")])
def test_xnor_matmul_refuses_mismatched_operands(a, b, n, message):
    with pytest.raises(ValueError, match=message):
        B.xnor_matmul(a, b, n)


def test_xnor_matmul_refuses_words_that_are_not_int64():
    with pytest.raises(TypeError, match="int64"):
        B.xnor_matmul(torch.zeros(3, 2, dtype=torch.int32), torch.zeros(4, 2, dtype=torch.int32), 100)
    with pytest.raises(TypeError, match="integers"):
        B.xnor_matmul(torch.zeros(3, 2), torch.zeros(4, 2), 100)


def test_xnor_matmul_empty_operands_give_an_empty_product():
    words = B.pack_signs(data(5, 70))
    assert B.xnor_matmul(words[:0], words, 70).shape == (0, 5)
    assert B.xnor_matmul(words, words[:0], 70).shape == (5, 0)


# ------------------------------------------------------------------------------------------ helpers
def test_per_channel_reshapes_for_broadcasting_and_checks_the_channel_count():
    v = torch.arange(4.0)
    assert B.per_channel(v, torch.zeros(4, 3, 2, 2)).shape == (4, 1, 1, 1)
    assert B.per_channel(v, torch.zeros(4)).shape == (4,)
    with pytest.raises(ValueError, match="shape"):
        B.per_channel(v, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="shape"):
        B.per_channel(v.reshape(4, 1), torch.zeros(4, 2))


@pytest.mark.parametrize("call", [
    lambda w: B.binarize(w), lambda w: B.binarize_stochastic(w, 0), lambda w: B.sign_ste(w),
    lambda w: B.bwn_scale(w), lambda w: B.binarize_weights(w), lambda w: B.twn_threshold(w),
    lambda w: B.twn_quantize(w), lambda w: B.twn_quantize(w, 0.3),
    lambda w: B.ttq_quantize(w, torch.tensor(1.0), torch.tensor(2.0)), lambda w: B.pack_signs(w)])
def test_no_function_modifies_its_input(call):
    w = data(4, 3, 3, seed=13)
    w[0, 0, 0] = -0.0
    original = w.clone()
    call(w)
    assert torch.equal(w, original) and torch.equal(w.sign(), original.sign())
    assert str(w[0, 0, 0].item()) == "-0.0"


def test_all_zero_weights_everywhere():
    zero = torch.zeros(3, 4)
    assert torch.equal(B.binarize(zero), torch.ones(3, 4))
    assert torch.equal(B.bwn_scale(zero), torch.zeros(3)) and torch.equal(B.twn_threshold(zero), torch.zeros(3))
    assert torch.equal(B.twn_quantize(zero), zero)
    w = zero.clone().requires_grad_()
    y = B.binarize_weights(w)
    y.sum().backward()
    assert torch.equal(y.detach(), zero) and torch.equal(w.grad, zero)     # α = 0: no gradient through α·sign
    w.grad = None
    w_p, w_n = torch.tensor(1.5, requires_grad=True), torch.tensor(0.5, requires_grad=True)
    y = B.ttq_quantize(w, w_p, w_n)                                    # Δ = 0: every weight is in the middle
    y.sum().backward()
    assert torch.equal(y.detach(), zero) and torch.equal(w.grad, torch.ones(3, 4))
    assert float(w_p.grad) == 0.0 and float(w_n.grad) == 0.0


def test_ttq_one_dimensional_and_zero_dim_weights():
    w = torch.tensor([0.01, -2.0, 0.5, -0.04])                         # Δ = 0.05 · 2 = 0.1
    out = B.ttq_quantize(w, torch.tensor(0.25), torch.tensor(0.75))
    assert torch.equal(out, torch.tensor([0.0, -0.75, 0.25, 0.0]))
    assert float(B.ttq_quantize(torch.tensor(-3.0), torch.tensor(0.25), torch.tensor(0.75))) == -0.75


def test_sign_ste_four_dimensional_activations():
    x = data(2, 3, 5, 5, scale=1.5).requires_grad_()
    upstream = data(2, 3, 5, 5, seed=6)
    y = B.sign_ste(x)
    y.backward(upstream)
    assert y.shape == x.shape and torch.equal(y.detach(), sign_by_hand(x.detach()))
    assert torch.equal(x.grad, torch.where(x.detach().abs() <= 1, upstream, torch.zeros(())))


def test_binary_methods_are_the_six_recipes():
    assert B.BINARY_METHODS == ("binaryconnect", "binaryconnect_stochastic", "bwn", "twn", "ttq", "xnor")
