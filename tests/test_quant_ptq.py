"""lowbit.quant.ptq: weight fake-quant (granularity, MSE clipping) and static PTQ with observers."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.quant.granularity import fake_quantize_per_channel, fake_quantize_per_group, fake_quantize_per_tensor
from lowbit.quant.ptq import ActivationFakeQuant, fake_quantize_weight, mse_symmetric_scale, ptq, quantize_weights


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 8, 3),
                         nn.ReLU(), nn.Flatten(), nn.Linear(8 * 5 * 5, 10)).eval()


def images(n=64, seed=1):
    return torch.randn(n, 1, 14, 14, generator=torch.Generator().manual_seed(seed))


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def unchanged(model, before):
    after = model.state_dict()
    return before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_fake_quantize_weight_matches_granularity_module():
    w = torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(fake_quantize_weight(w, 4, "channel"), fake_quantize_per_channel(w, 4))
    assert torch.equal(fake_quantize_weight(w, 4, "tensor"), fake_quantize_per_tensor(w, 4))
    assert torch.allclose(fake_quantize_weight(w, 4, "group", group_size=8), fake_quantize_per_group(w, 4, 8)[0])


def test_mse_scale_matches_brute_force_and_beats_minmax():
    rows = torch.randn(5, 200, generator=torch.Generator().manual_seed(2))
    rows[:, 0] = 8.0                                                     # an outlier per row
    scale = mse_symmetric_scale(rows, 3, num_candidates=40)
    for r in range(5):
        errors = []
        for k in range(40, 0, -1):
            s = torch.tensor(k / 40 * 8.0 / 3)
            errors.append(float((torch.clamp(torch.round(rows[r] / s), -3, 3) * s - rows[r]).pow(2).sum()))
        best = 40 - min(range(40), key=errors.__getitem__)
        assert float(scale[r]) == pytest.approx(best / 40 * 8.0 / 3, rel=1e-6)
    w = rows.reshape(5, 2, 100)
    minmax_error = (fake_quantize_weight(w, 3, clip="minmax") - w).pow(2).mean()
    assert (fake_quantize_weight(w, 3, clip="mse") - w).pow(2).mean() < minmax_error


@pytest.mark.parametrize("granularity", ["tensor", "channel", "group"])
def test_quantize_weights_copies_and_limits_distinct_values(granularity):
    model = small_cnn()
    before = state(model)
    quantized = quantize_weights(model, 3, granularity, group_size=9)
    assert unchanged(model, before)
    conv = quantized[3].weight.detach()
    scale_groups = {"tensor": conv.reshape(1, -1), "channel": conv.reshape(8, -1),
                    "group": conv.reshape(8, 4, 9).reshape(-1, 9)}[granularity]
    for row in scale_groups:
        assert row.unique().numel() <= 7                                  # 3-bit restricted: 7 levels
    assert torch.equal(quantized[3].bias, model[3].bias)


def test_quantize_weights_errors():
    with pytest.raises(ValueError, match="granularity"):
        quantize_weights(small_cnn(), 4, granularity="row")
    with pytest.raises(ValueError, match="clip"):
        quantize_weights(small_cnn(), 4, clip="kl")


@pytest.mark.parametrize("observer", ["minmax", "ema", "percentile", "mse", "kl"])
def test_ptq_quantizes_input_and_relu_outputs_on_a_grid(observer):
    model, x = small_cnn(), images()
    before = state(model)
    quantized = ptq(model, x, w_bits=8, a_bits=4, observer=observer, progress=False)
    assert unchanged(model, before)
    quantizers = quantized.activation_quantizers()
    assert len(quantizers) == 3 and all(not q.calibrating and q.scale > 0 for q in quantizers)
    seen = []
    hooks = [q.register_forward_hook(lambda m, i, o: seen.append(o)) for q in quantizers]
    quantized(x[:8])
    for h in hooks:
        h.remove()
    for output, quantizer in zip(seen, quantizers):
        codes = output / quantizer.scale + quantizer.zero_point
        assert torch.allclose(codes, codes.round(), atol=1e-3)
        assert codes.round().unique().numel() <= 16


def test_ptq_8_bit_is_close_to_float_and_4_bit_is_worse():
    model, x = small_cnn(), images(128)
    with torch.no_grad():
        reference = model(x)
        error8 = (ptq(model, x, 8, 8, progress=False)(x) - reference).abs().mean()
        error4 = (ptq(model, x, 4, 4, progress=False)(x) - reference).abs().mean()
    assert error8 < 0.02 * reference.abs().mean()
    assert error4 > 3 * error8


def test_ptq_accepts_loaders_none_bits_and_rejects_bad_input():
    model, x = small_cnn(), images()
    loader = [(x[:32], torch.zeros(32)), (x[32:], torch.zeros(32))]
    from_loader = ptq(model, loader, 8, 8, progress=False)
    from_tensor = ptq(model, x, 8, 8, progress=False)
    assert torch.equal(from_loader(x), from_tensor(x))                      # min-max over the same data
    with torch.no_grad():
        assert torch.equal(ptq(model, x, None, None, progress=False)(x), model(x))
    with pytest.raises(ValueError, match="unknown observer"):
        ptq(model, x, observer="max")
    with pytest.raises(ValueError, match="no batches"):
        ptq(model, [], 8, 8)
    assert isinstance(from_tensor.input_quant, ActivationFakeQuant)


def test_ptq_on_fashion_cnn_keeps_predictions_at_8_bits():
    from lowbit import models
    from lowbit.data import calibration_batch
    try:
        model = models.pretrained("cnn")
    except FileNotFoundError:
        torch.manual_seed(0)
        model = models.FashionCNN().train()
        with torch.no_grad():
            for _ in range(3):
                model(torch.randn(64, 1, 28, 28))
        model.eval()
    folded = models.fold_batchnorm(model)
    calib, _ = calibration_batch(64, seed=0)
    test, _ = calibration_batch(64, seed=1)
    quantized = ptq(folded, calib, 8, 8, progress=False)
    with torch.no_grad():
        agree = (quantized(test).argmax(1) == folded(test).argmax(1)).float().mean()
    assert agree >= 0.9
    assert len(quantized.activation_quantizers()) == 4                      # input + three ReLUs


def test_map_weights_applies_fn_to_copies_and_checks_shape():
    from lowbit.quant.ptq import map_weights
    model = small_cnn()
    before = state(model)
    seen = []

    def halve(w):
        seen.append(tuple(w.shape))
        w.mul_(0.0)                                                    # mutating its argument must not leak
        return torch.ones_like(w) * 0.5

    mapped = map_weights(model, halve)
    assert unchanged(model, before)
    assert seen == [(4, 1, 3, 3), (8, 4, 3, 3), (10, 200)]
    assert torch.all(mapped[0].weight == 0.5) and torch.equal(mapped[0].bias, model[0].bias)
    with pytest.raises(ValueError, match="same shape"):
        map_weights(model, lambda w: w.flatten())


def test_collect_activations_returns_layer_inputs():
    from lowbit.quant.ptq import collect_activations
    model, x = small_cnn(), images(10)
    acts = collect_activations(model, x, batch_size=4)
    assert list(acts) == ["0", "3", "6"]
    assert torch.equal(acts["0"], x)
    with torch.no_grad():
        expected = model[2](model[1](model[0](x)))
    assert torch.allclose(acts["3"], expected) and acts["6"].shape == (10, 200)
    assert not model._forward_pre_hooks and not model[0]._forward_pre_hooks


def test_static_ptq_with_plain_functions():
    from lowbit.quant.calibration import minmax, percentile_range
    from lowbit.quant.granularity import per_channel_qparams
    from lowbit.quant.ptq import RangeFunctionObserver, static_ptq
    model, x = small_cnn(), images(64)
    before = state(model)
    calls = []

    def range_fn(values):
        calls.append(values.numel())
        return minmax(values)

    default = static_ptq(model, x, 8, 8)
    explicit = static_ptq(model, x, 8, 8, weight_scale_fn=per_channel_qparams, range_fn=range_fn)
    assert unchanged(model, before)
    assert torch.equal(default(x), explicit(x))
    assert calls[0] == x.numel() and len(calls) == 3                   # input + two ReLUs, whole set each
    assert all(isinstance(q.observer, RangeFunctionObserver) for q in explicit.activation_quantizers())
    clipped = static_ptq(model, x, 8, 4, range_fn=lambda v: percentile_range(v, 99.0))
    assert clipped.input_quant.scale < default.input_quant.scale * 255 / 15
    weights = explicit.model[3].weight.detach()
    for row in weights.reshape(8, -1):
        assert row.unique().numel() <= 255
