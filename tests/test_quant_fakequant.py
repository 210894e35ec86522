"""lowbit.quant.fakequant: the one quantize / dequantize / fake-quantize, with rounding and gradient as arguments."""
from __future__ import annotations

import pytest
import torch

from lowbit.quant import fakequant as FQ
from lowbit.quant import linear


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_nearest_rounds_half_to_even_and_matches_linear_fake_quantize():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 3.49, 100.0, -100.0])
    codes = FQ.quantize(x, torch.tensor(1.0), 0, -8, 7)
    assert codes.tolist() == [0.0, 2.0, 2.0, -0.0, -2.0, 3.0, 7.0, -8.0]
    w = rand(64, 9)
    scale, zero_point = torch.tensor(0.05), torch.tensor(3)
    assert torch.equal(FQ.fake_quantize(w, scale, zero_point, -8, 7), linear.fake_quantize(w, 0.05, 3, 4))


def test_floor_and_a_callable_rounding():
    x = torch.tensor([0.2, 0.7, -0.2, -0.7])
    assert FQ.quantize(x, torch.tensor(1.0), 0, -8, 7, rounding="floor").tolist() == [0.0, 0.0, -1.0, -1.0]
    ceil = FQ.quantize(x, torch.tensor(1.0), 0, -8, 7, rounding=torch.ceil)
    assert ceil.tolist() == [1.0, 1.0, -0.0, -0.0]


def test_stochastic_rounding_is_seeded_and_unbiased():
    x = torch.full((200_000,), 0.3)
    first = FQ.quantize(x, torch.tensor(1.0), 0, -8, 7, "stochastic", torch.Generator().manual_seed(1))
    again = FQ.quantize(x, torch.tensor(1.0), 0, -8, 7, "stochastic", torch.Generator().manual_seed(1))
    other = FQ.quantize(x, torch.tensor(1.0), 0, -8, 7, "stochastic", torch.Generator().manual_seed(2))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert set(first.unique().tolist()) == {0.0, 1.0}
    assert abs(float(first.mean()) - 0.3) < 0.005, "E[round(v)] = v"


def test_unknown_rounding_and_gradient_are_refused_and_new_roundings_register():
    with pytest.raises(ValueError, match="rounding must be one of"):
        FQ.quantize(torch.ones(2), torch.tensor(1.0), 0, -8, 7, rounding="banker")
    with pytest.raises(ValueError, match="gradient must be one of"):
        FQ.fake_quantize(torch.ones(2), torch.tensor(1.0), 0, -8, 7, gradient="lsq")
    FQ.register_rounding("toward_zero", lambda v, generator=None: torch.trunc(v))
    try:
        assert FQ.quantize(torch.tensor([-1.7, 1.7]), torch.tensor(1.0), 0, -8, 7, "toward_zero").tolist() == [-1, 1]
    finally:
        del FQ.ROUNDINGS["toward_zero"]


@pytest.mark.parametrize("gradient, expected", [("none", [0.0, 0.0, 0.0]), ("ste", [1.0, 1.0, 1.0]),
                                                ("clipped_ste", [1.0, 1.0, 0.0])])
def test_gradient_rules(gradient, expected):
    x = torch.tensor([0.3, -7.4, 9.0], requires_grad=True)           # the last one is clamped at 7
    y = FQ.fake_quantize(x, torch.tensor(1.0), 0, -8, 7, gradient=gradient)
    assert y.tolist() == [0.0, -7.0, 7.0]
    y.sum().backward()
    assert x.grad.tolist() == expected, "none: the true derivative of round, 0 almost everywhere"


def test_clipped_ste_equals_torch_fake_quantize_forward_and_backward():
    x = (rand(10_000, seed=3) * 2).requires_grad_()
    ours = FQ.fake_quantize(x, torch.tensor(0.125), torch.tensor(2), -8, 7, gradient="clipped_ste")
    ref_x = x.detach().clone().requires_grad_()
    theirs = torch.fake_quantize_per_tensor_affine(ref_x, 0.125, 2, -8, 7)
    assert torch.equal(ours, theirs)
    grad = rand(10_000, seed=4)
    ours.backward(grad)
    theirs.backward(grad)
    assert torch.equal(x.grad, ref_x.grad)


def test_ste_round_passes_the_gradient_and_float64_simulation_keeps_float64():
    x = torch.tensor([0.4, 1.6], requires_grad=True)
    FQ.ste_round(x).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0]
    y = torch.tensor([0.1 + 2 ** -40], dtype=torch.float64)
    out = FQ.fake_quantize(y, torch.tensor(0.1, dtype=torch.float64), 0, 0, 255, dtype=torch.float64)
    assert out.dtype == torch.float64 and float(out) == 0.1
