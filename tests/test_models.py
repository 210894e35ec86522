"""lowbit.models: architectures, pretrained checkpoints, size/MAC counts, BatchNorm folding."""
from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch
from torch import nn

from lowbit import data, models
from lowbit.train import evaluate


def test_fashion_cnn_shape_size_and_names():
    net = models.FashionCNN()
    assert net(torch.zeros(5, 1, 28, 28)).shape == (5, 10)
    assert sum(p.numel() for p in net.parameters()) == 61_674
    named = dict(net.named_modules())
    for i in (1, 2, 3):
        assert isinstance(named[f"conv{i}"], nn.Conv2d) and named[f"conv{i}"].bias is None
        assert isinstance(named[f"bn{i}"], nn.BatchNorm2d)
        assert isinstance(named[f"relu{i}"], nn.ReLU) and isinstance(named[f"pool{i}"], nn.MaxPool2d)
    assert isinstance(named["fc"], nn.Linear) and named["fc"].in_features == 576


def test_tiny_mlp_shape_and_names():
    net = models.TinyMLP()
    assert net(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert {"fc1", "relu", "fc2"} <= set(dict(net.named_modules()))


# ---------------------------------------------------------------- pretrained
@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_pretrained_matches_recorded_embedded_accuracy(name):
    record = json.loads((models.CHECKPOINT_DIR / f"{name}.json").read_text())
    model = models.pretrained(name)
    assert not model.training
    assert (models.CHECKPOINT_DIR / f"{name}.pt").stat().st_size <= 1_000_000
    _, test_loader = data.loaders(batch_size=500)
    accuracy = evaluate(model, test_loader, device="cpu")
    assert accuracy == pytest.approx(record["accuracy_embedded_test"], abs=0.005)
    assert record["parameters"] == sum(p.numel() for p in model.parameters())


def test_shipped_cnn_record_reaches_the_course_target():
    record = json.loads((models.CHECKPOINT_DIR / "cnn.json").read_text())
    assert record["accuracy_full_test"] >= 0.90
    assert record["recipe"]["source"] == "full"


def test_pretrained_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="available: cnn, mlp"):
        models.pretrained("resnet")


def test_pretrained_missing_file_says_how_to_train(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "CHECKPOINT_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="python -m lowbit.train --model mlp"):
        models.pretrained("mlp")


# ---------------------------------------------------------------- size and compute
def small_net() -> nn.Sequential:
    """conv: 2×1×3×3 weights, no bias (18 params); fc: 8×5 weights + 5 bias (45 params)."""
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 2, 3, bias=False), flat=nn.Flatten(),
                                     fc=nn.Linear(8, 5)))


def test_model_size_bits_uniform_and_per_name():
    net = small_net()
    assert models.model_size_bits(net) == 63 * 32
    assert models.model_size_bits(net, 4) == 63 * 4
    assert models.model_size_bits(net, {"conv": 2}) == 18 * 2 + 45 * 32
    assert models.model_size_bits(net, {"fc": 8, "fc.bias": 16}) == 18 * 32 + 40 * 8 + 5 * 16
    assert models.model_size_bits(net, {"conv.weight": 1, "fc.weight": 4}) == 18 + 160 + 5 * 32


@pytest.mark.parametrize("bits, message", [({"conv9": 8}, "match no parameter"), (0, "positive int"),
                                           ({"fc": 2.5}, "positive int")])
def test_model_size_bits_bad_arguments(bits, message):
    with pytest.raises(ValueError, match=message):
        models.model_size_bits(small_net(), bits)


def test_layer_stats_hand_computed():
    net = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3), dw=nn.Conv2d(4, 4, 3, padding=1, groups=4),
                                    flat=nn.Flatten(), fc=nn.Linear(4 * 6 * 6, 5)))
    net.train()
    stats = models.layer_stats(net, input_shape=(2, 3, 8, 8))
    assert net.training
    assert [(s["name"], s["type"]) for s in stats] == [("conv", "Conv2d"), ("dw", "Conv2d"), ("fc", "Linear")]
    # conv: 4×6×6 outputs, each 3×3×3 MACs; weights 4·3·9 + 4 bias
    assert (stats[0]["params"], stats[0]["macs"], stats[0]["output_shape"]) == (112, 144 * 27, (4, 6, 6))
    # depthwise: 4×6×6 outputs, each 1×3×3 MACs; weights 4·1·9 + 4
    assert (stats[1]["params"], stats[1]["macs"]) == (40, 144 * 9)
    assert (stats[2]["params"], stats[2]["macs"]) == (144 * 5 + 5, 144 * 5)


def test_layer_stats_fashion_cnn_totals():
    stats = models.layer_stats(models.FashionCNN())
    assert [s["name"] for s in stats] == ["conv1", "conv2", "conv3", "fc"]
    expected_macs = [28 * 28 * 32 * 9, 14 * 14 * 64 * 32 * 9, 7 * 7 * 64 * 64 * 9, 576 * 10]
    assert [s["macs"] for s in stats] == expected_macs
    assert sum(s["params"] for s in stats) == 61_674 - 2 * (32 + 64 + 64)  # BN affine params excluded


# ---------------------------------------------------------------- BatchNorm folding
def randomize_batchnorm(model: nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator))
            module.running_var.copy_(torch.rand(n, generator=generator) * 2 + 0.1)
            if module.affine:
                module.weight.data.copy_(torch.randn(n, generator=generator))
                module.bias.data.copy_(torch.randn(n, generator=generator))


def test_fold_batchnorm_equivalence_and_structure():
    torch.manual_seed(0)
    net = models.FashionCNN()
    randomize_batchnorm(net)
    net.eval()
    folded = models.fold_batchnorm(net)
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), atol=1e-5, rtol=1e-5)
    named = dict(folded.named_modules())
    assert all(isinstance(named[f"bn{i}"], nn.Identity) for i in (1, 2, 3))
    assert all(named[f"conv{i}"].bias is not None for i in (1, 2, 3))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())


def test_fold_batchnorm_does_not_touch_its_input():
    net = models.FashionCNN()
    randomize_batchnorm(net, seed=1)
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    models.fold_batchnorm(net)
    assert net.training
    assert isinstance(net.bn1, nn.BatchNorm2d) and net.conv1.bias is None
    after = net.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_fold_batchnorm_sequential_with_conv_bias_and_no_affine():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(3, 5, 3, bias=True), nn.BatchNorm2d(5, affine=False), nn.ReLU(),
                        nn.Conv2d(5, 4, 1), nn.BatchNorm2d(4))
    randomize_batchnorm(net, seed=3)
    net.eval()
    folded = models.fold_batchnorm(net)
    x = torch.randn(4, 3, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), atol=1e-5, rtol=1e-5)


def test_fold_batchnorm_without_running_stats_is_an_error():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False))
    with pytest.raises(ValueError, match="running statistics"):
        models.fold_batchnorm(net)
