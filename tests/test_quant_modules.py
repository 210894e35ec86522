"""lowbit.quant.modules / quantizer: which layers, per-layer policies, the quantized wrapper, capture."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.quant import calibration, kmeans, ptq, qat
from lowbit.quant.modules import (LayerConfig, Policy, QuantLinear, capture, dequantized, insert_after,
                                  quantizable_layers, quantized, swap_modules)
from lowbit.quant.quantizer import ObserverQuantizer, Quantizer, quantizers


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 8), nn.ReLU(), nn.Linear(8, 3))


def images(n: int = 16) -> torch.Tensor:
    return torch.randn(n, 1, 6, 6, generator=torch.Generator().manual_seed(1))


def test_quantizable_layers_is_one_answer_for_ptq_qat_and_kmeans():
    model = net()
    assert list(quantizable_layers(model)) == ["0", "4", "6"]
    assert list(quantizable_layers(model, exclude=["0"])) == ["4", "6"]
    assert list(quantizable_layers(model, include=["1"])) == ["1"], "include may name any module with a weight"
    with pytest.raises(ValueError, match="not a module with a weight"):
        quantizable_layers(model, include=["3"])
    with pytest.raises(ValueError, match="not modules of this model"):
        quantizable_layers(model, exclude=["fc9"])
    _, codebooks = kmeans.quantize_model_kmeans(model, 2)
    prepared = qat.prepare_qat(model, 4, None)
    assert list(codebooks) == [name for name, m in prepared.named_modules()
                               if isinstance(m, (qat.QATLinear, qat.QATConv2d))]
    assert quantizable_layers(prepared) == {}, "already-quantized layers are not offered again"


def test_policy_rules_by_name_glob_and_type_with_later_rules_winning():
    policy = Policy({"w_bits": 4, "granularity": "channel"},
                    rules=[(nn.Linear, {"w_bits": 8}), ("6", {"w_bits": 2, "options": {"clip": "mse"}}),
                           ("[04]", {"a_bits": 8})], exclude=["0"])
    resolved = policy.resolve(net())
    assert resolved == {"4": LayerConfig(8, 8, "linear", "channel", {}),
                        "6": LayerConfig(2, None, "linear", "channel", {"clip": "mse"})}
    with pytest.raises(ValueError, match="unknown fields"):
        Policy(rules=[("0", {"bits": 3})])


def test_a_mixed_precision_policy_drives_ptq_weights_layer_by_layer():
    model = net().eval()
    policy = Policy({"w_bits": 8}, rules={"0": {"w_bits": 2}, "6": {"w_bits": None}})
    mixed = ptq.quantize_weights(model, policy=policy)
    assert all(len(torch.unique(row)) <= 3 for row in mixed[0].weight.reshape(4, -1)), \
        "2-bit restricted grid: -1, 0, 1 times one scale per channel"
    assert torch.equal(mixed[6].weight, model[6].weight), "w_bits=None keeps the layer float"
    assert torch.equal(mixed[4].weight, ptq.fake_quantize_weight(model[4].weight, 8))
    uniform = ptq.quantize_weights(model, 8)
    assert torch.equal(uniform[4].weight, mixed[4].weight)


def test_swap_modules_and_the_wrapper_round_trip():
    model = net()

    def make(_, layer, config):
        return quantized(layer, qat.LSQQuantizer(config.w_bits, channel_dim=0, init="minmax", example=layer.weight))

    swapped = swap_modules(model, Policy({"w_bits": 8}, include=["4"]), make)
    assert type(swapped[4]) is QuantLinear and type(model[4]) is nn.Linear, "the input model is untouched"
    assert swapped[4].weight is not model[4].weight
    plain = dequantized(swapped[4])
    assert type(plain) is nn.Linear and torch.equal(plain.weight, swapped[4].quantized_weight())


def test_insert_after_every_relu_and_the_quantizer_lifecycle():
    model = net().eval()
    count = insert_after(model, nn.ReLU, lambda: ObserverQuantizer(calibration.MinMaxObserver(), 8))
    assert count == 2 and isinstance(model[2], nn.Sequential)
    x = images()
    reference = net().eval()(x)
    assert torch.equal(model(x), reference), "observing: inputs pass unchanged"
    for q in quantizers(model):
        q.freeze()
    quantized_out = model(x)
    assert not torch.equal(quantized_out, reference) and (quantized_out - reference).abs().max() < 0.1
    for q in quantizers(model):
        q.disable()
    assert torch.equal(model(x), reference), "disabled: identity"
    with pytest.raises(TypeError, match="does not observe"):
        qat.PACTQuantizer(4).observe()(torch.ones(3))
    assert isinstance(qat.PACTQuantizer(4), Quantizer) and isinstance(qat.LSQQuantizer(4), Quantizer)


def test_capture_records_inputs_and_outputs_of_every_layer():
    model = net().eval()
    x = images(10)
    seen = capture(model, x, batch_size=4)
    assert list(seen) == ["0", "4", "6"]
    assert torch.equal(seen["0"].inputs, x) and torch.allclose(seen["0"].outputs, model[0](x))
    assert torch.allclose(seen["6"].outputs, model(x)), "the last layer's output is the network's"
    assert torch.allclose(seen["4"].inputs, model[3](model[2](model[1](model[0](x)))))
    only_inputs = ptq.collect_activations(model, x)
    assert torch.equal(only_inputs["4"], seen["4"].inputs)
    assert capture(model, x, layers=["6"], inputs=False)["6"].inputs is None


def test_a_new_observer_joins_the_registry_by_subclassing():
    class MedianAbsObserver(calibration.SampleObserver):
        name = "test-median-abs"

        def _range(self):
            m = float(self.values().abs().median())
            return -m, m

    try:
        assert calibration.OBSERVERS["test-median-abs"] is MedianAbsObserver
        observer = calibration.make_observer("test-median-abs")
        assert observer.update(torch.tensor([-1.0, 2.0, 3.0])).range() == (-2.0, 2.0)
        model = ptq.ptq(net().eval(), images(), 8, 8, observer="test-median-abs", progress=False)
        assert all(type(q.observer) is MedianAbsObserver for q in model.activation_quantizers())
    finally:
        del calibration.OBSERVERS["test-median-abs"]
    assert "function" not in calibration.OBSERVERS, "RangeFunctionObserver opts out (it needs a function)"


def test_kmeans_model_bits_counts_codebooks_and_float_parameters():
    model = net()
    quantized_model, codebooks = kmeans.quantize_model_kmeans(model, 2, exclude=["0"])
    assert list(codebooks) == ["4", "6"]
    numel = {name: dict(model.named_modules())[name].weight.numel() for name in codebooks}
    floats = sum(p.numel() for p in model.parameters()) - sum(numel.values())
    expected = 32 * floats + sum(n * 2 + 4 * 32 for n in numel.values())
    assert kmeans.model_bits(model, codebooks, 2) == expected
    calls = []
    kmeans.quantize_model_kmeans(model, 3, quantize_fn=lambda w, b: calls.append(b) or kmeans.kmeans_quantize(w, b))
    assert calls == [3, 3, 3]
