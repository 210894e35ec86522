"""Lab 3's new reference functions: LSQ's gradient scale, LSQ+ and BatchNorm folding, each against an
independent computation (the paper's formula written out, torch's own ops, nn.BatchNorm2d)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lowbit.quant import qat as Q


def data(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


# ------------------------------------------------------------------------------------------ lsq_grad_scale
@pytest.mark.parametrize("n,bits,signed,q_p", [(1, 2, True, 1), (1000, 4, True, 7), (27, 8, True, 127),
                                                (64, 4, False, 15), (5, 1, False, 1), (3, 32, True, 2**31 - 1)])
def test_lsq_grad_scale_is_one_over_root_n_q_p(n, bits, signed, q_p):
    assert Q.lsq_grad_scale(n, bits, signed) == pytest.approx(1 / math.sqrt(n * q_p), rel=1e-12)
    assert isinstance(Q.lsq_grad_scale(n, bits, signed), float)


@pytest.mark.parametrize("n,bits,signed,message", [(0, 4, True, "num_elements"), (-3, 4, True, "num_elements"),
                                                    (2.5, 4, True, "num_elements"), (True, 4, True, "num_elements"),
                                                    (10, 1, True, "Q_P = 0"), (10, 0, True, "bits"),
                                                    (10, 33, False, "bits"), (10, 4.0, True, "bits")])
def test_lsq_grad_scale_refuses_bad_arguments(n, bits, signed, message):
    with pytest.raises(ValueError, match=message):
        Q.lsq_grad_scale(n, bits, signed)


def test_lsq_fake_quantize_default_scale_is_lsq_grad_scale_of_the_values_per_step():
    w = data(6, 3, 2, 2, scale=0.3)
    step = torch.full((6, 1, 1, 1), 0.05, requires_grad=True)
    Q.lsq_fake_quantize(w, step, 4).sum().backward()
    default = step.grad.clone()
    step.grad = None
    Q.lsq_fake_quantize(w, step, 4, grad_scale=Q.lsq_grad_scale(12, 4)).sum().backward()
    assert torch.equal(default, step.grad)
    step.grad = None
    Q.lsq_fake_quantize(w, step, 4, grad_scale=1.0).sum().backward()
    assert torch.allclose(default, step.grad / math.sqrt(12 * 7))


def test_lsq_fake_quantize_refuses_a_step_that_does_not_broadcast():
    with pytest.raises(ValueError, match="step of shape"):
        Q.lsq_fake_quantize(data(4, 3), torch.full((3, 1), 0.1), 4)


# ------------------------------------------------------------------------------------------ LSQ+
def lsq_plus_by_hand(x: torch.Tensor, s: torch.Tensor, z: torch.Tensor, bits: int, g: float):
    """The paper's case analysis written elementwise, independent of the implementation's fused formulas."""
    q_max = 2**bits - 1
    zr = torch.round(z)
    v = x / s + zr
    below, above = v < 0, v > q_max
    inside = ~below & ~above
    y = (torch.round(v.clamp(0, q_max)) - zr) * s
    d_x = inside.float()
    d_s = torch.where(below, 0 - zr, torch.where(above, q_max - zr, torch.round(v) - v))
    d_z = torch.where(inside, torch.zeros_like(v), -s.expand_as(v))
    return y, d_x, d_s * g, d_z * g


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_lsq_plus_value_and_gradients_follow_the_case_analysis(bits):
    x = data(2000, scale=1.5)
    s = torch.tensor(3.0 / 2**bits, requires_grad=True)
    z = torch.tensor(2**bits / 3 + 0.3, requires_grad=True)     # not an integer: rounding z matters
    xg = x.clone().requires_grad_()
    upstream = data(2000, seed=1)
    y = Q.lsq_plus_fake_quantize(xg, s, z, bits, grad_scale=0.5)
    (y * upstream).sum().backward()
    y_ref, d_x, d_s, d_z = lsq_plus_by_hand(x, s.detach(), z.detach(), bits, 0.5)
    assert torch.allclose(y, y_ref, atol=1e-6)
    assert torch.equal(xg.grad, upstream * d_x)
    assert torch.allclose(s.grad, (upstream * d_s).sum(), rtol=1e-4, atol=1e-4)
    assert torch.allclose(z.grad, (upstream * d_z).sum(), rtol=1e-4, atol=1e-4)
    assert 0 < int(d_x.sum()) < 2000, "the data must reach both clip bounds and the inside"


def test_lsq_plus_rounds_the_zero_point_in_the_forward_pass_and_hits_both_bounds_inclusive():
    s = torch.tensor(0.5, requires_grad=True)
    z = torch.tensor(1.4, requires_grad=True)                     # z̃ = 1: v = 2x + 1, range [0, 3]
    x = torch.tensor([-0.5, 1.0, -0.75, 1.25, 0.25], requires_grad=True)   # v = 0, 3 (bounds), -0.5, 3.5, 1.5
    y = Q.lsq_plus_fake_quantize(x, s, z, 2, grad_scale=1.0)
    assert torch.equal(y.detach(), torch.tensor([-0.5, 1.0, -0.5, 1.0, 0.5]))  # round(1.5)=2 (half to even)
    y.sum().backward()
    assert torch.equal(x.grad, torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0]))
    # s: inside round(v) - v = 0, 0, 0.5; below q_min - z̃ = -1; above q_max - z̃ = 2
    assert torch.allclose(s.grad, torch.tensor(0.0 + 0.0 - 1.0 + 2.0 + 0.5))
    assert torch.allclose(z.grad, torch.tensor(-0.5 * 2))        # −s at the two outside values


def test_lsq_plus_matches_torch_learnable_fake_quantize_on_the_clip_range_interior():
    # torch's op takes an integer-valued zero point and decides "inside" on round(v); away from the half-step
    # band outside the range both agree on values and on the gradients of x and s.
    x = data(3000, scale=1.0)
    s, z = torch.tensor(0.1), torch.tensor(7.0)
    v = x / s + z
    x = x[((v >= 0) & (v <= 15)) | (v < -1) | (v > 16.5)]
    ours_x, ours_s = x.clone().requires_grad_(), s.clone().requires_grad_()
    theirs_x, theirs_s = x.clone().requires_grad_(), s.clone().reshape(1).requires_grad_()
    ours = Q.lsq_plus_fake_quantize(ours_x, ours_s, z, 4, grad_scale=1.0)
    theirs = torch._fake_quantize_learnable_per_tensor_affine(theirs_x, theirs_s, z.reshape(1), 0, 15, 1.0)
    assert torch.allclose(ours, theirs, atol=1e-6)
    upstream = data(x.numel(), seed=2)
    (ours * upstream).sum().backward()
    (theirs * upstream).sum().backward()
    assert torch.equal(ours_x.grad, theirs_x.grad)
    assert torch.allclose(ours_s.grad, theirs_s.grad.reshape(()), rtol=1e-4)


def test_lsq_plus_per_channel_and_default_gradient_scale():
    w = data(4, 10, scale=0.5)
    s = torch.full((4, 1), 0.05, requires_grad=True)
    z = torch.full((4, 1), 7.0, requires_grad=True)
    Q.lsq_plus_fake_quantize(w, s, z, 4).sum().backward()
    default_s, default_z = s.grad.clone(), z.grad.clone()
    s.grad = z.grad = None
    Q.lsq_plus_fake_quantize(w, s, z, 4, grad_scale=1.0).sum().backward()
    g = Q.lsq_grad_scale(10, 4, signed=False)
    assert g == pytest.approx(1 / math.sqrt(10 * 15))
    assert torch.allclose(default_s, s.grad * g) and torch.allclose(default_z, z.grad * g)
    assert default_s.shape == (4, 1) and default_z.shape == (4, 1)


def test_lsq_plus_half_precision_input():
    y = Q.lsq_plus_fake_quantize(data(50).half(), torch.tensor(0.1), torch.tensor(3.0), 4)
    assert y.shape == (50,) and y.dtype == torch.float32


@pytest.mark.parametrize("args,error,message", [
    ((data(5), torch.tensor(0.0), torch.tensor(1.0), 4), ValueError, "step"),
    ((data(5), torch.tensor(-0.1), torch.tensor(1.0), 4), ValueError, "step"),
    ((torch.empty(0), torch.tensor(0.1), torch.tensor(1.0), 4), ValueError, "empty"),
    ((torch.arange(5), torch.tensor(0.1), torch.tensor(1.0), 4), TypeError, "floating-point"),
    ((data(5), torch.tensor(0.1), torch.tensor(1), 4), TypeError, "zero_point"),
    ((data(5), torch.tensor(0.1), torch.tensor(float("nan")), 4), ValueError, "zero_point"),
    ((data(5), torch.tensor(0.1), torch.tensor(1.0), 0), ValueError, "bits"),
    ((data(5), torch.tensor(0.1), torch.tensor(1.0), 33), ValueError, "bits"),
    ((data(4, 3), torch.full((4, 1), 0.1), torch.zeros(3, 1), 4), ValueError, "zero_point of shape"),
])
def test_lsq_plus_refuses_bad_input(args, error, message):
    with pytest.raises(error, match=message):
        Q.lsq_plus_fake_quantize(*args)


# ------------------------------------------------------------------------------------------ BN folding
def conv_and_bn(seed: int = 0, bias: bool = False) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    torch.manual_seed(seed)
    conv, bn = nn.Conv2d(3, 5, 3, padding=1, bias=bias), nn.BatchNorm2d(5)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.2, 3.0)
    return conv, bn


@pytest.mark.parametrize("bias", [False, True])
def test_fold_with_running_statistics_equals_eval_mode_batchnorm(bias):
    conv, bn = conv_and_bn(bias=bias)
    x = data(4, 3, 8, 8)
    mean, var = Q.bn_fold_statistics(conv(x), bn.running_mean, bn.running_var, training=False)
    w, b = Q.fold_batchnorm(conv.weight, conv.bias, bn.weight, bn.bias, mean, var, bn.eps)
    assert w.shape == conv.weight.shape and b.shape == (5,) and w.dtype == b.dtype == torch.float32
    folded = nn.functional.conv2d(x, w, b, padding=1)
    assert torch.allclose(folded, bn.eval()(conv(x)), atol=1e-5)


def test_fold_with_batch_statistics_equals_training_mode_batchnorm_output_and_gradients():
    conv, bn = conv_and_bn(seed=1)
    x = data(6, 3, 7, 7, seed=3)
    bn.train()
    expected = bn(conv(x))
    upstream = data(*expected.shape, seed=4)
    expected_grads = torch.autograd.grad((expected * upstream).sum(), [conv.weight, bn.weight, bn.bias])
    mean, var = Q.bn_fold_statistics(conv(x), bn.running_mean, bn.running_var, training=True)
    w, b = Q.fold_batchnorm(conv.weight, None, bn.weight, bn.bias, mean, var, bn.eps)
    folded = nn.functional.conv2d(x, w, b, padding=1)
    assert torch.allclose(folded, expected, atol=1e-5)
    grads = torch.autograd.grad((folded * upstream).sum(), [conv.weight, bn.weight, bn.bias])
    for ours, theirs in zip(grads, expected_grads):
        assert torch.allclose(ours, theirs, atol=1e-4)


def test_bn_fold_statistics_training_is_biased_and_eval_copies_the_running_buffers():
    y = data(5, 4, 3, 3, scale=2.0) + 1.0
    running_mean, running_var = torch.zeros(4), torch.ones(4)
    mean, var = Q.bn_fold_statistics(y, running_mean, running_var, training=True)
    flat = y.permute(1, 0, 2, 3).reshape(4, -1).double()
    assert torch.allclose(mean.double(), flat.mean(1), atol=1e-6)
    assert torch.allclose(var.double(), flat.var(1, unbiased=False), atol=1e-5)
    assert not torch.allclose(var.double(), flat.var(1, unbiased=True), atol=1e-3)
    mean, var = Q.bn_fold_statistics(y, running_mean, running_var, training=False)
    assert torch.equal(mean, running_mean) and mean is not running_mean and mean.data_ptr() != running_mean.data_ptr()
    assert torch.equal(var, running_var) and var.data_ptr() != running_var.data_ptr()
    mean2d, var2d = Q.bn_fold_statistics(flat.T.float(), running_mean, running_var, training=True)   # [N, C]
    assert torch.allclose(mean2d.double(), flat.mean(1), atol=1e-6)


def test_fold_batchnorm_of_a_linear_weight_equals_batchnorm1d():
    torch.manual_seed(2)
    linear, bn = nn.Linear(6, 4), nn.BatchNorm1d(4)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
    x = data(9, 6)
    w, b = Q.fold_batchnorm(linear.weight, linear.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)
    assert torch.allclose(nn.functional.linear(x, w, b), bn.eval()(linear(x)), atol=1e-5)


@pytest.mark.parametrize("change,error,message", [
    ({"weight": torch.zeros(5)}, ValueError, "weight"),
    ({"weight": torch.empty(0, 3)}, ValueError, "empty"),
    ({"weight": torch.zeros(5, 3, dtype=torch.int64)}, TypeError, "floating-point"),
    ({"gamma": torch.ones(4)}, ValueError, r"gamma must have shape \[5\]"),
    ({"mean": torch.zeros(5, 1)}, ValueError, r"mean must have shape \[5\]"),
    ({"bias": torch.zeros(6)}, ValueError, r"bias must have shape \[5\]"),
    ({"var": -torch.ones(5)}, ValueError, "var must be >= 0"),
    ({"var": torch.zeros(5), "eps": 0.0}, ValueError, "var \\+ eps > 0"),
    ({"eps": -1e-5}, ValueError, "eps"),
    ({"beta": torch.zeros(5, dtype=torch.int32)}, TypeError, "beta"),
])
def test_fold_batchnorm_refuses_bad_input(change, error, message):
    args = {"weight": torch.ones(5, 3, 2, 2), "bias": None, "gamma": torch.ones(5), "beta": torch.zeros(5),
            "mean": torch.zeros(5), "var": torch.ones(5), "eps": 1e-5}
    args.update(change)
    with pytest.raises(error, match=message):
        Q.fold_batchnorm(**args)


@pytest.mark.parametrize("args,error,message", [
    ((torch.ones(4), torch.zeros(4), torch.ones(4), True), ValueError, r"\[N, C"),
    ((torch.ones(2, 4, 3), torch.zeros(3), torch.ones(4), True), ValueError, r"running_mean must have shape \[4\]"),
    ((torch.ones(2, 4, 3), torch.zeros(4), torch.ones(5), False), ValueError, r"running_var must have shape \[4\]"),
    ((torch.ones(2, 4, dtype=torch.int64), torch.zeros(4), torch.ones(4), True), TypeError, "floating-point"),
    ((torch.ones(0, 4), torch.zeros(4), torch.ones(4), True), ValueError, "empty"),
    ((torch.ones(2, 4), torch.zeros(4), torch.ones(4), 1), TypeError, "training must be a bool"),
])
def test_bn_fold_statistics_refuses_bad_input(args, error, message):
    with pytest.raises(error, match=message):
        Q.bn_fold_statistics(*args)


def test_model_fold_batchnorm_reuses_the_reference_and_keeps_eval_outputs():
    from lowbit.models import FashionCNN, fold_batchnorm
    torch.manual_seed(0)
    model = FashionCNN().eval()
    for bn in (model.bn1, model.bn2, model.bn3):
        with torch.no_grad():
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
    x = data(3, 1, 28, 28)
    folded = fold_batchnorm(model)
    assert torch.allclose(folded(x), model(x), atol=1e-4)
    w, b = Q.fold_batchnorm(model.conv1.weight, None, model.bn1.weight, model.bn1.bias, model.bn1.running_mean,
                            model.bn1.running_var, model.bn1.eps)
    assert torch.equal(folded.conv1.weight, w) and torch.equal(folded.conv1.bias, b)


# ------------------------------------------------------------------------------------------ the fast paths
def lsq_by_hand(x: torch.Tensor, s: torch.Tensor, q_min: int, q_max: int, rounding) -> tuple:
    v = x / s
    inside = (v >= q_min) & (v <= q_max)
    codes = rounding(v).clamp(q_min, q_max)
    return codes * s, inside.float(), codes - v * inside


@pytest.mark.parametrize("rounding,fn", [("nearest", torch.round), ("floor", torch.floor)])
@pytest.mark.parametrize("step_shape", [(), (4, 1)])
def test_lsq_fast_and_general_backward_paths_equal_the_formula_on_the_bounds(rounding, fn, step_shape):
    s = torch.full(step_shape, 0.25)
    x = torch.cat([torch.tensor([-2.0, 1.75, -2.0625, 1.8125, 0.0, 0.125]).repeat(4, 1), data(4, 50)], dim=1)
    xg, sg = x.clone().requires_grad_(), s.clone().requires_grad_()
    upstream = data(4, 56, seed=7)
    y = Q.lsq_fake_quantize(xg, sg, 4, grad_scale=0.5, rounding=rounding)
    (y * upstream).sum().backward()
    y_ref, d_x, d_s = lsq_by_hand(x, s, -8, 7, fn)
    assert torch.equal(y.detach(), y_ref)
    assert torch.equal(xg.grad, upstream * d_x)
    assert torch.equal(xg.grad[:, :4] != 0, torch.tensor([True, True, False, False]).repeat(4, 1)), \
        "v = -8 and v = 7 are inside (both bounds inclusive), one float beyond is outside"
    assert torch.allclose(sg.grad, (upstream * d_s).sum_to_size(step_shape) * 0.5, rtol=1e-5, atol=1e-5)


def test_lsq_half_precision_input_gradients():
    x = data(300).half().requires_grad_()
    s = torch.tensor(0.2, requires_grad=True)
    Q.lsq_fake_quantize(x, s, 4).sum().backward()
    assert x.grad.dtype == torch.float16 and s.grad.dtype == torch.float32 and torch.isfinite(s.grad)


def test_pact_one_alpha_fast_path_equals_the_broadcast_formula_including_the_bounds():
    x = torch.cat([torch.tensor([0.0, 3.0, -0.0, 3.0000002, -1e-7]), data(500, scale=3)])
    alpha = torch.tensor(3.0)
    upstream = data(505, seed=8)
    fast_x, fast_a = x.clone().requires_grad_(), alpha.clone().requires_grad_()
    wide_x, wide_a = x.clone().requires_grad_(), alpha.reshape(1).clone().requires_grad_()  # the general path
    fast, wide = Q.pact_quantize(fast_x, fast_a, 3), Q.pact_quantize(wide_x, wide_a, 3)
    assert torch.allclose(fast, wide, atol=1e-6)
    (fast * upstream).sum().backward()
    (wide * upstream).sum().backward()
    assert torch.equal(fast_x.grad, wide_x.grad)
    assert torch.equal(fast_x.grad[:5] != 0, torch.tensor([False, True, False, False, False]))
    assert torch.allclose(fast_a.grad, wide_a.grad.reshape(()))
    half = Q.pact_quantize(x.half().requires_grad_(), alpha, 3)
    assert half.dtype == torch.float16
