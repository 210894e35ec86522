"""lowbit.quant.qat: straight-through estimators, LSQ and PACT, checked against PyTorch and the papers."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lowbit.quant import linear
from lowbit.quant import qat as Q


def data(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def test_ste_round_rounds_half_to_even_and_passes_the_gradient():
    x = torch.tensor([-1.5, -0.5, 0.2, 0.5, 1.5, 2.5], requires_grad=True)
    y = Q.ste_round(x)
    assert torch.equal(y, torch.tensor([-2.0, -0.0, 0.0, 0.0, 2.0, 2.0]))
    (y * torch.arange(6.0)).sum().backward()
    assert torch.equal(x.grad, torch.arange(6.0))


@pytest.mark.parametrize("bits,signed,zero_point", [(8, True, 0), (4, True, 3), (4, False, 5), (2, True, 0)])
def test_fake_quantize_ste_matches_torch_forward_and_backward(bits, signed, zero_point):
    x = data(4096, scale=2.0).requires_grad_()
    x_torch = x.detach().clone().requires_grad_()
    scale = 2.0 ** (3 - bits)  # a power of two (torch multiplies by 1/S: equal to our x / S) reaching the clamp
    q_min, q_max = linear.quantized_range(bits, signed)
    ours = Q.fake_quantize_ste(x, scale, zero_point, bits, signed)
    theirs = torch.fake_quantize_per_tensor_affine(x_torch, scale, zero_point, q_min, q_max)
    assert torch.equal(ours, theirs)
    assert torch.equal(ours, linear.fake_quantize(x.detach(), scale, zero_point, bits, signed))
    weights = data(4096, seed=1)
    (ours * weights).sum().backward()
    (theirs * weights).sum().backward()
    assert torch.equal(x.grad, x_torch.grad)
    assert 0 < int((x.grad == 0).sum()) < 4096, "the test data must reach both the clipped and the kept region"


def test_fake_quantize_ste_per_channel_matches_torch():
    w = data(8, 3, 3, 3, scale=0.5).requires_grad_()
    w_torch = w.detach().clone().requires_grad_()
    scales = 2.0 ** -torch.arange(2, 10).float()     # very different steps per output channel
    ours = Q.fake_quantize_ste(w, scales.reshape(8, 1, 1, 1), 0, 4)
    theirs = torch.fake_quantize_per_channel_affine(w_torch, scales, torch.zeros(8, dtype=torch.int32), 0, -8, 7)
    assert torch.equal(ours, theirs)
    ours.square().sum().backward()
    theirs.square().sum().backward()
    assert torch.equal(w.grad, w_torch.grad)


def test_fake_quantize_ste_rejects_bad_input():
    x = data(10)
    with pytest.raises(TypeError, match="floating-point"):
        Q.fake_quantize_ste(torch.arange(10), 0.1, 0, 8)
    with pytest.raises(ValueError, match="empty"):
        Q.fake_quantize_ste(torch.empty(0), 0.1, 0, 8)
    with pytest.raises(ValueError, match="scale must be > 0 everywhere"):
        Q.fake_quantize_ste(x, 0.0, 0, 8)
    with pytest.raises(ValueError, match="zero_point must be an integer"):
        Q.fake_quantize_ste(x, 0.1, 0.5, 8)
    with pytest.raises(ValueError, match="bits"):
        Q.fake_quantize_ste(x, 0.1, 0, 0)


def lsq_reference_gradients(x: torch.Tensor, step: float, q_min: int, q_max: int) -> tuple[torch.Tensor, float]:
    """Esser et al. 2020, eq. 3 (step gradient before the scale g) and the clipped STE for x."""
    v = x / step
    inside = (v >= q_min) & (v <= q_max)
    d_step = torch.where(v < q_min, float(q_min), torch.where(v > q_max, float(q_max), torch.round(v) - v))
    return inside.float(), float(d_step.sum())


@pytest.mark.parametrize("bits,signed", [(4, True), (3, False), (8, True)])
def test_lsq_gradients_follow_the_paper_and_the_gradient_scale(bits, signed):
    x = data(2000, scale=1.5).requires_grad_()
    step = torch.tensor(0.2, requires_grad=True)
    q_min, q_max = linear.quantized_range(bits, signed)
    y = Q.lsq_fake_quantize(x, step, bits, signed)
    expected = torch.round(torch.clamp(x.detach() / 0.2, q_min, q_max)) * step.detach()
    assert torch.allclose(y, expected, atol=1e-6)
    y.sum().backward()
    want_x, want_step = lsq_reference_gradients(x.detach(), 0.2, q_min, q_max)
    g = 1 / math.sqrt(2000 * q_max)
    assert torch.equal(x.grad, want_x)
    assert float(step.grad) == pytest.approx(g * want_step, rel=1e-4, abs=1e-6)


def test_lsq_matches_torch_learnable_fake_quantize_away_from_the_half_step_band():
    """torch decides "inside" on round(x/s): it differs from LSQ only for x/s within half a step outside."""
    q_min, q_max = -8, 7
    x = data(5000, scale=0.6)
    v = x / 0.125
    x = x[(v < q_min - 0.5) | (v > q_max + 0.5) | ((v > q_min) & (v < q_max))].requires_grad_()
    step = torch.tensor(0.125, requires_grad=True)
    ours = Q.lsq_fake_quantize(x, step, 4, grad_scale=0.37)
    x_t = x.detach().clone().requires_grad_()
    s_t = torch.tensor([0.125], requires_grad=True)
    theirs = torch._fake_quantize_learnable_per_tensor_affine(x_t, s_t, torch.zeros(1), q_min, q_max, 0.37)
    assert torch.equal(ours, theirs)
    weights = data(x.numel(), seed=3)
    (ours * weights).sum().backward()
    (theirs * weights).sum().backward()
    assert torch.equal(x.grad, x_t.grad)
    assert float(step.grad) == pytest.approx(float(s_t.grad), rel=1e-5)


def test_lsq_per_channel_step_and_init():
    w = data(6, 4, 3, 3) * torch.arange(1, 7).float().reshape(6, 1, 1, 1)
    step = Q.lsq_init_step(w, 4, dim=0)
    assert step.shape == (6, 1, 1, 1)
    want = 2 * w.abs().mean(dim=(1, 2, 3)) / math.sqrt(7)
    assert torch.allclose(step.reshape(-1), want)
    step.requires_grad_()
    Q.lsq_fake_quantize(w, step, 4).sum().backward()
    assert step.grad.shape == (6, 1, 1, 1) and bool((step.grad != 0).all())
    assert float(Q.lsq_init_step(w, 4)) == pytest.approx(2 * float(w.abs().mean()) / math.sqrt(7))


def test_lsq_rejects_a_zero_step_constant_data_and_signed_one_bit():
    with pytest.raises(ValueError, match="initial step must be finite and > 0"):
        Q.lsq_init_step(torch.zeros(3, 3), 4)
    with pytest.raises(ValueError, match="step must be finite and > 0"):
        Q.lsq_fake_quantize(data(5), torch.tensor(0.0), 4)
    with pytest.raises(ValueError, match="Q_P = 0"):
        Q.lsq_fake_quantize(data(5), torch.tensor(0.1), 1, signed=True)
    with pytest.raises(ValueError, match="Q_P = 0"):
        Q.LSQQuantizer(1, signed=True)


def test_pact_clips_quantizes_and_learns_alpha():
    x = torch.tensor([-1.0, 0.0, 0.3, 1.0, 2.9, 3.0, 3.5, 8.0], requires_grad=True)
    alpha = torch.tensor(3.0, requires_grad=True)
    y = Q.pact_quantize(x, alpha, 2)           # 3 steps of 1.0 on [0, 3]
    assert torch.equal(y.detach(), torch.tensor([0.0, 0.0, 0.0, 1.0, 3.0, 3.0, 3.0, 3.0]))
    y.sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]))
    assert float(alpha.grad) == 2.0, "one for each input above alpha (3.5 and 8.0)"
    with pytest.raises(ValueError, match="alpha must be finite and > 0"):
        Q.pact_quantize(x, torch.tensor(-1.0), 2)


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


@pytest.mark.parametrize("activation", ["lsq", "pact"])
def test_prepare_qat_quantizes_weights_and_activations_and_trains(activation):
    model = small_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = data(32, 1, 6, 6), torch.arange(32) % 3
    qat = Q.prepare_qat(model, w_bits=3, a_bits=4, activation=activation)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "input model untouched"
    qat(x)  # the first batch initialises the steps
    for layer in (qat[0], qat[3]):
        assert isinstance(layer, (Q.QATConv2d, Q.QATLinear))
        quantized = layer.quantized_weight()
        per_channel = quantized.reshape(quantized.shape[0], -1)
        assert max(len(torch.unique(row)) for row in per_channel) <= 8, "3-bit weights: at most 8 values per channel"
    quantizers = Q.qat_quantizers(qat)
    assert len(quantizers) == 3
    optimizer = torch.optim.Adam(qat.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(qat(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses[::10]
    steps = [p for name, p in qat.named_parameters() if name.endswith(("step", "alpha"))]
    assert steps and all(p.grad is not None and bool((p.grad != 0).any()) for p in steps), "quantizer parameters learn"
    frozen = Q.freeze_qat(qat)
    assert type(frozen[0]) is nn.Conv2d and type(frozen[3]) is nn.Linear
    assert torch.allclose(frozen(x), qat(x), atol=1e-6), "same function, and the QAT model still works"
    assert torch.equal(frozen[0].weight, qat[0].quantized_weight())
    assert not torch.equal(qat[0].weight, qat[0].quantized_weight()), "the QAT model keeps its float weights"


def test_prepare_qat_keep_float_and_bad_arguments():
    model = small_cnn()
    qat = Q.prepare_qat(model, w_bits=4, a_bits=None, keep_float=["0"])
    assert type(qat[0]) is nn.Conv2d and type(qat[3]) is Q.QATLinear
    assert isinstance(qat[1], nn.ReLU), "a_bits=None leaves activations float"
    with pytest.raises(ValueError, match="not modules of this model"):
        Q.prepare_qat(model, keep_float=["conv9"])
    with pytest.raises(ValueError, match="activation must be one of"):
        Q.prepare_qat(model, activation="relu6")


def test_qat_state_dict_round_trip_keeps_per_channel_steps():
    model = small_cnn()
    qat = Q.prepare_qat(model, w_bits=4, a_bits=8)
    x = data(8, 1, 6, 6)
    qat(x)
    fresh = Q.prepare_qat(model, w_bits=4, a_bits=8)
    fresh.load_state_dict(qat.state_dict())
    assert torch.equal(fresh(x), qat(x))


def test_fake_quantize_ste_of_half_precision_input_keeps_a_float32_scale():
    x = torch.linspace(-1, 1, 101).half()
    scale = 0.1  # 0.0999755859375 in float16: the codes of values near ±1 would differ
    assert torch.equal(Q.fake_quantize_ste(x, scale, 0, 8), linear.fake_quantize(x, scale, 0, 8))


def test_course_cnn_at_w8a8_before_training_keeps_its_accuracy_and_low_bits_lose_some():
    """LSQ's data-driven init is good enough at 8 bits to start QAT from the float accuracy; at 2 bits it is not."""
    import lowbit
    model = lowbit.models.pretrained("cnn")
    images, labels = next(iter(lowbit.data.loaders(batch_size=500)[1]))

    def accuracy(m: nn.Module) -> float:
        with torch.no_grad():
            return float((m.eval()(images).argmax(1) == labels).float().mean())

    reference = accuracy(model)
    for bits, low, high in ((8, reference - 0.01, 1.0), (2, 0.0, reference - 0.05)):
        qat = Q.prepare_qat(model, w_bits=bits, a_bits=bits)
        qat.eval()(images[:128])           # initialise the steps (eval: BatchNorm statistics untouched)
        assert low <= accuracy(qat) <= high, (bits, accuracy(qat), reference)


def test_minmax_step_init_covers_the_largest_value_without_clipping():
    w = data(5, 7) * torch.arange(1, 6).float().reshape(5, 1)
    step = Q.lsq_init_step(w, 4, dim=0, init="minmax")
    assert torch.allclose(step.reshape(-1), w.abs().amax(dim=1) / 7)
    assert torch.equal(Q.lsq_fake_quantize(w, step, 4), linear.fake_quantize(w, step, 0, 4)), \
        "max|w| / Q_P is Lab 1's symmetric per-channel scale"
    unsigned = Q.lsq_init_step(torch.relu(w), 3, signed=False, init="minmax")
    assert float(unsigned) == pytest.approx(float(torch.relu(w).max()) / 7)
    with pytest.raises(ValueError, match="init must be one of"):
        Q.lsq_init_step(w, 4, init="mse")
    with pytest.raises(ValueError, match="weight_init must be one of"):
        Q.prepare_qat(small_cnn(), weight_init="percentile")


def test_train_moves_every_lsq_step_of_a_prepare_qat_model():
    """Issue 9: train() builds its optimizer before the first batch; the steps it trains must be the steps
    forward() uses (they used to be replaced on the first forward pass and never trained)."""
    import lowbit
    from torch.utils.data import DataLoader, TensorDataset
    images, labels = lowbit.data.calibration_batch(256, seed=0)
    loader = DataLoader(TensorDataset(images, labels), batch_size=64)
    torch.manual_seed(0)
    model = lowbit.models.TinyMLP()
    initial = Q.prepare_qat(model, 4, 4)
    with torch.no_grad():
        initial(images[:64])                       # the first batch sets the activation steps' values
    qat = Q.prepare_qat(model, 4, 4)
    steps_before = {name: p for name, p in qat.named_parameters() if name.endswith("step")}
    assert len(steps_before) == 3, "two weight steps (per channel) and one activation step"
    lowbit.train.train(qat, loader, epochs=1, lr=1e-4, device="cpu", progress=False)
    steps_after = {name: p for name, p in qat.named_parameters() if name.endswith("step")}
    assert all(steps_after[name] is p for name, p in steps_before.items()), "the step parameters are never replaced"
    for name, start in initial.named_parameters():
        if name.endswith("step"):
            assert steps_after[name].shape == start.shape, name
            assert not torch.equal(steps_after[name], start), f"{name} did not train"


def test_a_per_channel_lsq_quantizer_has_its_final_step_before_any_forward_pass():
    w = data(6, 5)
    prepared = Q.LSQQuantizer(4, channel_dim=0, example=w)
    assert prepared.step.shape == (6, 1) and bool(prepared.initialized)
    unprepared = Q.LSQQuantizer(4, channel_dim=0)
    with pytest.raises(RuntimeError, match="prepare"):
        unprepared(w)
    step = unprepared.prepare(w).step
    out = unprepared(w)
    assert unprepared.step is step and torch.equal(out, prepared(w))


def test_alpha_penalty_is_the_l2_term_over_every_pact_alpha():
    qat = Q.prepare_qat(small_cnn(), w_bits=4, a_bits=4, activation="pact", pact_alpha=3.0)
    assert Q.alpha_penalty(qat, weight=0.5).item() == pytest.approx(0.5 * 9.0)
    assert float(Q.alpha_penalty(small_cnn())) == 0.0
