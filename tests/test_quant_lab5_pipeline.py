"""Lab 5's pipeline: equalize_model, correct_biases and adaround_model on small chains (few iterations)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.models import fold_batchnorm
from lowbit.quant.adaround import adaround_layer, adaround_model
from lowbit.quant.bias_correction import analytic_input_means, correct_biases, expected_relu_input
from lowbit.quant.equalize import equalize_model
from lowbit.quant.granularity import per_channel_qparams
from lowbit.quant.graded import resolve_function
from lowbit.quant.ptq import quantize_weights


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


class Chain(nn.Module):
    """conv1 → bn1 → relu1 → pool1 → conv2 → bn2 → relu2 → flatten → fc, like the course CNN but small."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2, self.bn2, self.relu2 = nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU()
        self.flatten, self.fc = nn.Flatten(), nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        return self.fc(self.flatten(self.relu2(self.bn2(self.conv2(x)))))


def chain(seed=0, spread=10.0):
    """A Chain with BN statistics set: BN weights from 1/spread to spread (every third negative)."""
    torch.manual_seed(seed)
    model = Chain()
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            n = bn.num_features
            sign = torch.where(torch.arange(n) % 3 == 2, -1.0, 1.0)
            bn.weight.copy_(torch.logspace(-1, 1, n) ** (torch.log10(torch.tensor(spread))) * sign)
            bn.bias.copy_(torch.linspace(-0.5, 1.0, n))
            bn.running_mean.copy_(torch.linspace(-0.2, 0.2, n))
            bn.running_var.copy_(torch.linspace(0.5, 2.0, n))
    return model.eval()


def images(n=32, seed=1):
    return rand(n, 1, 8, 8, seed=seed)


def ranges(w, axis):
    return w.detach().abs().movedim(axis, 0).reshape(w.shape[axis], -1).amax(dim=1)


def test_equalize_model_keeps_the_function_and_equalizes_every_pair():
    folded = fold_batchnorm(chain())
    equalized = equalize_model(folded)
    x = images()
    assert torch.allclose(folded(x), equalized(x), rtol=1e-4, atol=1e-5)
    fc_in = equalized.fc.weight.reshape(5, 6, 16)
    assert torch.allclose(ranges(equalized.conv1.weight, 0), ranges(equalized.conv2.weight, 1), rtol=1e-3)
    assert torch.allclose(ranges(equalized.conv2.weight, 0), ranges(fc_in, 1), rtol=1e-3)
    scales = equalized.equalization_scales
    assert torch.allclose(equalized.conv1.weight, folded.conv1.weight / scales["conv1"].reshape(-1, 1, 1, 1))
    assert torch.allclose(equalized.conv2.bias, folded.conv2.bias / scales["conv2"], rtol=1e-5)
    assert torch.equal(folded.conv1.weight, fold_batchnorm(chain()).conv1.weight)          # input unchanged
    with pytest.raises(ValueError, match="fold"):
        equalize_model(chain())


def test_equalize_model_calls_the_given_functions():
    folded = fold_batchnorm(chain())
    calls = []

    def no_scales(w1, w2):
        calls.append((tuple(w1.shape), tuple(w2.shape)))
        return torch.ones(w1.shape[0])

    same = equalize_model(folded, functions={"equalization_scales": no_scales})
    assert calls[:2] == [((4, 1, 3, 3), (6, 4, 3, 3)), ((6, 4, 3, 3), (5, 6, 16))]
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), folded.state_dict().values()))
    with pytest.raises(ValueError, match="does not use"):
        equalize_model(folded, functions={"equalisation_scales": no_scales})
    with pytest.raises(TypeError, match="callable"):
        equalize_model(folded, functions={"equalize_pair": 3})


def test_resolve_function_finds_the_reference_by_name():
    assert resolve_function(None, "adaround_layer", {"adaround_layer": "lowbit.quant.adaround"}) is adaround_layer
    mine = lambda *args: None   # noqa: E731
    assert resolve_function({"adaround_layer": mine}, "adaround_layer", {"adaround_layer": "x"}) is mine


def test_empirical_bias_correction_restores_each_layers_mean_on_float_inputs():
    folded = fold_batchnorm(chain())
    quantized = quantize_weights(folded, 2)
    x = images(256, seed=2) + 1.0                                   # inputs with a mean for the error to act on
    corrected = correct_biases(folded, quantized, x)
    assert torch.equal(quantized.conv1.bias, quantize_weights(folded, 2).conv1.bias)        # input unchanged
    with torch.no_grad():
        # inside the border every tap sees an input pixel (outside, the zero padding): there E[x] applies
        first = lambda m: m.conv1(x)[:, :, 1:-1, 1:-1].mean(dim=(0, 2, 3))   # noqa: E731
        shift = (first(quantized) - first(folded)).abs().max()
        assert float(shift) > 1e-2 and float((first(corrected) - first(folded)).abs().max()) < 0.05 * float(shift)
    fc_in = folded.flatten(folded.relu2(folded.conv2(folded.pool1(folded.relu1(folded.conv1(x))))))
    mean_out = lambda m: m.fc(fc_in).detach().mean(dim=0)   # noqa: E731
    assert float((mean_out(quantized) - mean_out(folded)).abs().max()) > 1e-3
    assert torch.allclose(mean_out(corrected), mean_out(folded), atol=1e-4)


def test_analytic_bias_correction_uses_bn_statistics_and_cle_scales():
    model = chain()
    folded = fold_batchnorm(model)
    means = analytic_input_means(folded, model)
    assert set(means) == {"conv2", "fc"}
    assert torch.allclose(means["conv2"], expected_relu_input(model.bn1.bias.detach(), model.bn1.weight.detach()))
    assert torch.allclose(means["fc"], expected_relu_input(model.bn2.bias.detach(),
                                                           model.bn2.weight.detach()).repeat_interleave(16))
    equalized = equalize_model(folded)
    scaled = analytic_input_means(equalized, model)
    assert torch.allclose(scaled["conv2"], means["conv2"] / equalized.equalization_scales["conv1"], rtol=1e-5)
    quantized = quantize_weights(folded, 3)
    corrected = correct_biases(folded, quantized, bn_model=model)
    assert torch.equal(corrected.conv1.bias, quantized.conv1.bias)                      # no BN before conv1
    error = (quantized.fc.weight - folded.fc.weight).detach()
    assert torch.allclose(corrected.fc.bias, folded.fc.bias - error @ means["fc"], atol=1e-6)
    with pytest.raises(ValueError, match="calibration images"):
        correct_biases(folded, quantized)


def spy_layer(record):
    def fn(weight, scale, inputs, targets, bits, bias=None, activation="relu", **kwargs):
        record.append({"inputs": inputs, "targets": targets, "bits": bits, "activation": activation, **kwargs})
        return torch.round(weight / scale[:, None]).to(torch.int64)
    return fn


def test_adaround_model_inputs_from_the_rounded_layers_targets_after_the_activation():
    folded = fold_batchnorm(chain())
    x = images(16)
    record = []
    rounded = adaround_model(folded, 3, x, iterations=5, functions={"adaround_layer": spy_layer(record)},
                             first_last_bits=8, progress=False, max_rows=None)
    assert [r["bits"] for r in record] == [8, 3, 8]
    assert [r["activation"] for r in record] == ["relu", "relu", "none"]
    assert record[0]["iterations"] == 5
    nearest8 = quantize_weights(folded, 8)
    # conv2's inputs: the pooled ReLU output of the *rounded* conv1 (im2col, 3x3, padding 1)
    after_conv1 = nearest8.pool1(nearest8.relu1(nearest8.conv1(x)))
    patches = nn.functional.unfold(after_conv1, 3, padding=1).transpose(1, 2).reshape(-1, 36)
    assert torch.allclose(record[1]["inputs"], patches, atol=1e-6)
    float_inputs = nn.functional.unfold(folded.pool1(folded.relu1(folded.conv1(x))), 3, padding=1)
    assert not torch.allclose(record[1]["inputs"], float_inputs.transpose(1, 2).reshape(-1, 36), atol=1e-4)
    targets = torch.relu(folded.conv2(folded.pool1(folded.relu1(folded.conv1(x)))))
    assert torch.allclose(record[1]["targets"], targets.permute(0, 2, 3, 1).reshape(-1, 6), atol=1e-6)
    assert torch.allclose(record[2]["targets"], folded(x), atol=1e-6)        # fc: no activation after it
    assert set(rounded.adaround_seconds) == {"conv1", "conv2", "fc"}
    assert torch.allclose(rounded.conv2.weight, quantize_weights(folded, 3).conv2.weight, atol=1e-6)


def test_adaround_model_reference_rounds_up_or_down_and_beats_nearest_at_two_bits():
    folded = fold_batchnorm(chain(spread=1.5))
    x = images(64, seed=3)
    rounded = adaround_model(folded, 2, x, iterations=150, progress=False, batch_size=128)
    for name in ("conv1", "conv2", "fc"):
        w = getattr(folded, name).weight.detach().reshape(getattr(folded, name).weight.shape[0], -1)
        scale = per_channel_qparams(w, 2)
        q = getattr(rounded, name).weight.detach().reshape(w.shape) / scale
        assert torch.allclose(q, torch.round(q), atol=1e-4)
        floor = torch.floor(w / scale)
        assert bool(((torch.round(q) == floor) | (torch.round(q) == floor + 1)).all())
    with torch.no_grad():
        mse = lambda m: float((m(x) - folded(x)).pow(2).mean())   # noqa: E731
        assert mse(rounded) < mse(quantize_weights(folded, 2))


def test_adaround_runs_under_no_grad():
    folded = fold_batchnorm(chain(spread=1.5))
    with torch.no_grad():
        rounded = adaround_model(folded, 3, images(8), iterations=3, progress=False)
    assert set(rounded.adaround_seconds) == {"conv1", "conv2", "fc"}


def test_the_pipeline_reaches_no_reference_statically():
    # The grader's sandbox replaces the references by stubs and keeps what the lab's setup cell imports. A
    # pipeline that called a reference by a static name would call a stub there whenever the student's
    # mapping lacks that name; resolved by dotted name (lowbit.quant.graded) it calls the student's.
    from pathlib import Path

    from autograder import student_build
    from lowbit.quant.graded import LAB5_REFERENCES

    root = Path(__file__).resolve().parent.parent / "lowbit"
    graph = student_build._Graph(student_build._parse(root))
    protected = {f"{module}.{name}" for name, module in LAB5_REFERENCES.items()}
    pipeline = {"lowbit.quant.equalize.equalize_model", "lowbit.quant.bias_correction.correct_biases",
                "lowbit.quant.adaround.adaround_model"}
    assert pipeline <= set(graph.defs) and protected <= set(graph.defs)
    assert not graph.closure(pipeline) & protected
    removed = set(student_build.removed_names(root, sorted(protected), sorted(pipeline)))
    assert protected <= removed and not removed & pipeline


def test_adaround_model_checks_what_the_layer_function_returns():
    folded = fold_batchnorm(chain())
    with pytest.raises(ValueError, match="integer weights"):
        adaround_model(folded, 3, images(4), functions={"adaround_layer": lambda *a, **k: torch.zeros(2)},
                       progress=False)
    with pytest.raises(ValueError, match="fold"):
        adaround_model(chain(), 3, images(4), progress=False)
