"""lowbit.quant.adaround: the rectified sigmoid, V's initialisation, the regularizer, β's schedule, one layer."""
from __future__ import annotations

import math

import pytest
import torch

from lowbit.quant.adaround import (BETA_RANGE, GAMMA, WARM_START, ZETA, adaround_layer, beta_schedule, init_v,
                                   rectified_sigmoid, rounding_regularizer)
from lowbit.quant.granularity import per_channel_qparams


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def h_formula(v, zeta=1.1, gamma=-0.1):
    """The paper's h in float64, written out: min(1, max(0, (ζ − γ) / (1 + e^−v) + γ))."""
    return torch.clamp((zeta - gamma) / (1.0 + torch.exp(-v.double())) + gamma, 0.0, 1.0)


def test_constants_are_aimets_defaults():
    assert (ZETA, GAMMA, BETA_RANGE, WARM_START) == (1.1, -0.1, (20.0, 2.0), 0.2)


def test_rectified_sigmoid_values_clip_points_and_dtype():
    v = torch.linspace(-8, 8, 101)
    assert torch.allclose(rectified_sigmoid(v).double(), h_formula(v), atol=1e-6)
    ends = rectified_sigmoid(torch.tensor([-5.0, 5.0, 0.0]))
    assert ends.tolist() == [0.0, 1.0, 0.5]                    # stretched past [0, 1], so 0 and 1 exactly
    half = rectified_sigmoid(v.half())
    assert half.dtype == torch.float16 and torch.allclose(half.double(), h_formula(v), atol=1e-3)
    assert torch.allclose(rectified_sigmoid(v, 1.2, -0.3).double(), h_formula(v, 1.2, -0.3), atol=1e-6)


def test_rectified_sigmoid_gradient_matches_autograd_of_the_formula():
    v = torch.tensor([-2.0, -1.0, -0.3, 0.0, 0.4, 1.5, 2.2], requires_grad=True)   # inside (0, 1), away from clips
    rectified_sigmoid(v).sum().backward()
    v64 = v.detach().double().requires_grad_(True)
    h_formula(v64).sum().backward()
    assert torch.allclose(v.grad.double(), v64.grad, atol=1e-6)
    outside = torch.tensor([-6.0, 6.0], requires_grad=True)
    rectified_sigmoid(outside).sum().backward()
    assert outside.grad.tolist() == [0.0, 0.0]


@pytest.mark.parametrize("rest", [0.0, 1e-4, 0.25, 0.5, 0.9, 0.999])
def test_init_v_round_trip_at_the_fractional_part(rest):
    scale = torch.tensor([0.1, 0.5, 2.0])
    w = (torch.tensor([[-3.0], [0.0], [2.0]]) + rest) * scale[:, None]
    v = init_v(w, scale)
    assert v.dtype == torch.float32 and v.shape == w.shape and bool(torch.isfinite(v).all())
    assert torch.allclose(h_formula(v).float(), torch.full_like(w, rest), atol=1e-5)


def test_init_v_scalar_scale_negative_weights_and_errors():
    w = torch.tensor([-0.35, -0.05, 0.05, 0.26], dtype=torch.float16)
    v = init_v(w, 0.1)
    rest = torch.tensor([0.5, 0.5, 0.5, 0.6])
    assert v.dtype == torch.float32 and torch.allclose(h_formula(v).float(), rest, atol=2e-3)
    assert torch.allclose(init_v(w, torch.tensor(0.1)), v)
    with pytest.raises(ValueError, match="> 0"):
        init_v(w, 0.0)
    with pytest.raises(ValueError, match="> 0"):
        init_v(torch.ones(2, 3), torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="one per output"):
        init_v(torch.ones(2, 3), torch.ones(3))


@pytest.mark.parametrize("beta", [2.5, 7.3, 20.0])
def test_rounding_regularizer_matches_the_formula_with_non_integer_beta(beta):
    v = torch.linspace(-3, 3, 41, requires_grad=True)
    reg = rounding_regularizer(v, beta)
    h = h_formula(v.detach())
    assert reg.ndim == 0 and reg.dtype == torch.float32
    assert float(reg.detach()) == pytest.approx(float((1 - (2 * h - 1).abs() ** beta).sum()), rel=1e-5)
    reg.backward()
    v64 = v.detach().double().requires_grad_(True)
    (1 - (2 * h_formula(v64) - 1).abs() ** beta).sum().backward()
    assert torch.allclose(v.grad.double(), v64.grad, atol=1e-5)
    assert float(rounding_regularizer(torch.tensor([-9.0, 9.0]), beta)) == 0.0   # h at 0 or 1 costs nothing


def test_beta_schedule_ends_and_middle():
    assert beta_schedule(0, 100) == 20.0 and beta_schedule(19, 100) == 20.0     # warm start
    assert beta_schedule(20, 100) == 20.0 and beta_schedule(100, 100) == 2.0
    assert beta_schedule(60, 100) == pytest.approx(11.0)                          # halfway through the annealing
    assert beta_schedule(5, 10, warm_start=0.0, start=10.0, end=0.0) == pytest.approx(5.0)
    values = [beta_schedule(i, 50) for i in range(51)]
    assert all(a >= b for a, b in zip(values, values[1:]))                        # never increases
    for step, total in ((-1, 10), (11, 10), (0, 0)):
        with pytest.raises(ValueError):
            beta_schedule(step, total)
    with pytest.raises(ValueError, match="warm_start"):
        beta_schedule(1, 10, warm_start=1.0)


def reconstruction_problem(bits=3, seed=0):
    """A ReLU layer with correlated inputs, where nearest rounding is far from the best reconstruction."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(24, 24, generator=g)
    inputs = torch.relu(torch.randn(2048, 24, generator=g) @ mix) / 4
    weight = torch.randn(12, 24, generator=g) * 0.2
    bias = torch.randn(12, generator=g) * 0.1
    targets = torch.relu(inputs @ weight.T + bias)
    scale = per_channel_qparams(weight, bits).reshape(-1)
    return weight, scale, inputs, targets, bias


def reconstruction_error(q, scale, inputs, targets, bias):
    return float((torch.relu(inputs @ (scale[:, None] * q.float()).T + bias) - targets).pow(2).mean())


def test_adaround_layer_beats_nearest_and_rounds_only_up_or_down():
    weight, scale, inputs, targets, bias = reconstruction_problem()
    q = adaround_layer(weight, scale, inputs, targets, 3, bias=bias, iterations=300, lr=1e-2)
    assert q.dtype == torch.int64 and q.shape == weight.shape
    ratio = weight / scale[:, None]
    assert bool(((q == torch.floor(ratio)) | (q == torch.floor(ratio) + 1)).all())
    nearest = torch.round(ratio).clamp(-4, 3)
    assert reconstruction_error(q, scale, inputs, targets, bias) < \
        0.7 * reconstruction_error(nearest, scale, inputs, targets, bias)
    assert not torch.equal(q, nearest)


def test_adaround_layer_is_seeded_and_deterministic():
    weight, scale, inputs, targets, bias = reconstruction_problem(seed=1)
    run = lambda seed: adaround_layer(weight, scale, inputs, targets, 3, bias=bias, iterations=60,   # noqa: E731
                                      batch_size=32, seed=seed)
    first = run(0)
    assert torch.equal(first, run(0))
    assert not torch.equal(first, run(1))


def test_adaround_layer_clamps_to_the_signed_range_and_zero_iterations_is_nearest():
    weight, scale, inputs, targets, bias = reconstruction_problem(bits=2, seed=2)
    q = adaround_layer(weight, scale * 0.3, inputs, targets, 2, bias=bias, iterations=40, activation="none")
    assert int(q.min()) >= -2 and int(q.max()) <= 1 and (q == -2).any() and (q == 1).any()
    ratio = weight / scale[:, None]
    assert torch.equal(adaround_layer(weight, scale, inputs, targets, 2, bias=bias, iterations=0),
                       torch.floor(ratio + 0.5).clamp(-2, 1).to(torch.int64))


def test_adaround_layer_reconstructs_after_the_activation():
    # Every output of the layer is far below 0, so after the ReLU every rounding reconstructs the targets (0)
    # exactly: only the regularizer acts and pushes each h to its nearer end — rounding to nearest. A loss taken
    # before the ReLU would pull the outputs up towards 0 and round many weights up.
    weight, scale, inputs, _, _ = reconstruction_problem(seed=3)
    bias = torch.full((12,), -50.0)
    targets = torch.relu(inputs @ weight.T + bias)
    assert float(targets.abs().max()) == 0.0
    q = adaround_layer(weight, scale, inputs, targets, 3, bias=bias, iterations=100)
    assert torch.equal(q, torch.floor(weight / scale[:, None] + 0.5).clamp(-4, 3).to(torch.int64))
    pulled = adaround_layer(weight, scale, inputs, targets, 3, bias=bias, iterations=100, activation="none")
    assert float((pulled != q).float().mean()) > 0.2


def test_adaround_layer_bad_inputs():
    weight, scale, inputs, targets, bias = reconstruction_problem()
    with pytest.raises(ValueError, match="inputs"):
        adaround_layer(weight, scale, inputs[:, :5], targets, 3)
    with pytest.raises(ValueError, match="same number of rows"):
        adaround_layer(weight, scale, inputs, targets[:10], 3)
    with pytest.raises(ValueError, match="activation"):
        adaround_layer(weight, scale, inputs, targets, 3, activation="gelu")
    with pytest.raises(ValueError, match="bits"):
        adaround_layer(weight, scale, inputs, targets, 1)
    with pytest.raises(TypeError, match="floating-point"):
        adaround_layer(weight.to(torch.int64), scale, inputs, targets, 3)
    with pytest.raises(ValueError, match="> 0"):
        adaround_layer(weight, -scale, inputs, targets, 3)
    assert math.isclose(float(rectified_sigmoid(torch.tensor(0.0))), 0.5)
