"""lowbit.viz.binary: drive the levels explorer's controls and check the numbers and lines it shows."""
from __future__ import annotations

import pytest
import torch
from matplotlib.patches import Rectangle

import lowbit
from lowbit.quant import binary as B
from lowbit.viz import binary as viz


@pytest.fixture(scope="module")
def model():
    return lowbit.models.pretrained("cnn")


def segments_x(collection) -> list[float]:
    """The x position of each vertical segment of a LineCollection, sorted."""
    return sorted(float(seg[0][0]) for seg in collection.get_segments())


def bands(explorer) -> list[Rectangle]:
    """The shaded ranges over channels: levels (negative, positive side), then thresholds (negative, positive)."""
    return [p for p in explorer.figure.axes[0].patches if type(p) is Rectangle]


def test_bwn_and_binaryconnect_errors_match_their_formulas(model, capsys):
    explorer = viz.levels_explorer(model, show=False)
    w = model.conv2.weight.detach()
    alpha = w.abs().mean(dim=(1, 2, 3), keepdim=True)
    bwn = alpha * torch.where(w >= 0, 1.0, -1.0)
    assert explorer.stats["layer"] == "conv2" and explorer.stats["method"] == "bwn"
    assert explorer.stats["mse"] == pytest.approx(float((w - bwn).square().mean()), rel=1e-5)
    assert explorer.stats["relative_error"] == pytest.approx(float((w - bwn).square().sum() / w.square().sum()),
                                                             rel=1e-5)
    assert explorer.stats["zero_fraction"] == 0 and explorer.stats["code_bits_per_weight"] == 1
    assert explorer.stats["scale_bits_per_weight"] == pytest.approx(32 * 64 / w.numel())
    assert explorer.stats["distinct_values"] == 2 * 64          # ±alpha_c for each of the 64 output channels
    assert segments_x(explorer.figure.axes[0].collections[1]) == []   # BWN has no threshold
    a = alpha.reshape(-1)
    assert segments_x(explorer.figure.axes[0].collections[0]) == pytest.approx([-float(a.mean()), float(a.mean())])
    positive_band = bands(explorer)[1]                                # the range of alpha_c over the 64 channels
    assert positive_band.get_x() == pytest.approx(float(a.min())) and \
        positive_band.get_width() == pytest.approx(float(a.max() - a.min()))
    explorer.controls["method"].value = "binaryconnect"
    sign = torch.where(w >= 0, 1.0, -1.0)
    assert explorer.stats["mse"] == pytest.approx(float((w - sign).square().mean()), rel=1e-5)
    assert explorer.stats["relative_error"] > 10 * 0.4, "unscaled ±1 weights are far worse than BWN's"
    assert segments_x(explorer.figure.axes[0].collections[0]) == [-1.0, 1.0]
    assert explorer.stats["scale_bits_per_weight"] == 0
    assert capsys.readouterr().err == ""


def test_twn_threshold_factor_moves_the_thresholds_and_the_zeros(model):
    explorer = viz.levels_explorer(model, method="twn", layer="conv3", show=False)
    w = model.conv3.weight.detach()
    mean_abs = w.abs().mean(dim=(1, 2, 3), keepdim=True)
    for factor in (0.7, 0.3, 1.2):
        explorer.controls["twn_factor"].value = factor
        zeros = float((w.abs() <= factor * mean_abs).float().mean())
        assert explorer.stats["zero_fraction"] == pytest.approx(zeros, abs=1e-6)
        assert explorer.stats["code_bits_per_weight"] == 2
    explorer.controls["view"].value = "one channel"
    explorer.controls["channel"].value = 7
    delta = float(1.2 * mean_abs[7])
    assert segments_x(explorer.figure.axes[0].collections[1]) == pytest.approx([-delta, delta], rel=1e-5)
    kept = w[7].abs() > delta
    alpha = float(w[7].abs()[kept].mean())
    assert segments_x(explorer.figure.axes[0].collections[0]) == pytest.approx([-alpha, 0.0, alpha], rel=1e-5)
    assert explorer.stats["weights"] == w[7].numel() and explorer.stats["channel"] == 7
    assert all(band.get_width() == 0 for band in bands(explorer)), "one channel: exact lines, no range to shade"
    assert explorer.stats["zero_fraction"] == pytest.approx(float((~kept).float().mean()), abs=1e-6)
    codes = torch.tensor([float((~kept).float().mean()), float((w[7] > delta).float().mean()),
                          float((w[7] < -delta).float().mean())])
    entropy = float(-(codes[codes > 0] * torch.log2(codes[codes > 0])).sum())
    assert explorer.stats["entropy_bits_per_weight"] == pytest.approx(entropy, rel=1e-4)
    assert explorer.stats["entropy_bits_per_weight"] < 1.6    # log2(3) = 1.585: the most three codes can carry


def test_ttq_uses_one_threshold_per_layer_and_trained_scales(model):
    w = model.fc.weight.detach()
    explorer = viz.levels_explorer(model, method="ttq", layer="fc", ttq_t=0.2, show=False)
    delta = 0.2 * float(w.abs().max())
    assert explorer.stats["zero_fraction"] == pytest.approx(float((w.abs() <= delta).float().mean()), abs=1e-6)
    assert explorer.stats["scale_bits_per_weight"] == pytest.approx(64 / w.numel())
    w_p, w_n = viz.ttq_initial_scales(w, 0.2)
    assert float(w_p) == pytest.approx(float(w[w > delta].mean())) and float(w_n) > 0
    assert segments_x(explorer.figure.axes[0].collections[0]) == pytest.approx([-float(w_n), 0.0, float(w_p)])
    trained = viz.levels_explorer(model, method="ttq", layer="fc", show=False,
                                  ttq_scales={"fc": (torch.tensor(0.3), torch.tensor(0.1))})
    assert segments_x(trained.figure.axes[0].collections[0]) == pytest.approx([-0.1, 0.0, 0.3])
    assert trained.stats["distinct_values"] == 3


def test_layer_and_channel_controls(model):
    explorer = viz.levels_explorer(model, show=False)
    explorer.controls["layer"].value = "fc"
    assert explorer.controls["channel"].max == 9 and explorer.stats["weights"] == 5760
    explorer.controls["view"].value = "one channel"
    explorer.controls["channel"].value = 9
    assert explorer.stats["weights"] == 576 and explorer.stats["channel"] == 9
    explorer.controls["layer"].value = "conv1"                  # 32 channels of 9 weights
    assert explorer.controls["channel"].max == 31 and explorer.stats["weights"] == 9
    mapping = explorer.figure.axes[1].lines[0]
    w = model.conv1.weight.detach()[9].reshape(-1)
    assert torch.allclose(torch.as_tensor(mapping.get_xdata()), w.sort().values)
    assert torch.allclose(torch.as_tensor(mapping.get_ydata()), B.binarize_weights(model.conv1.weight.detach())[9]
                          .reshape(-1)[w.argsort()])


def test_the_students_functions_are_the_ones_drawn(model, capsys):
    calls = []

    def doubled(w):
        calls.append(tuple(w.shape))
        return 2 * B.binarize_weights(w)

    reference = viz.levels_explorer(model, show=False)
    scaled = viz.levels_explorer(model, functions={"binarize_weights": doubled}, show=False)
    assert calls == [tuple(model.conv2.weight.shape)]
    assert scaled.stats["mse"] > reference.stats["mse"]
    shape = viz.levels_explorer(model, functions={"binarize_weights": lambda w: w.sum()}, show=False)
    assert "expected (64, 32, 3, 3)" in shape.stats["error"]
    raising = viz.levels_explorer(model, method="twn", functions={"twn_quantize": lambda w, d: 1 / 0}, show=False)
    assert "ZeroDivisionError" in raising.stats["error"]
    assert "✗ levels_explorer" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown function names"):
        viz.levels_explorer(model, functions={"binarise": B.binarize}, show=False)
    with pytest.raises(ValueError, match="method must be one of"):
        viz.levels_explorer(model, method="xnor", show=False)
    with pytest.raises(ValueError, match="is not one of"):
        viz.levels_explorer(model, layer="conv9", show=False)


def test_a_mapping_of_weights_and_the_static_figure(capsys):
    weights = {"w": torch.tensor([[0.5, -0.25, 0.0, 1.0], [-2.0, 0.1, 0.3, -0.1]])}
    explorer = viz.levels_explorer(weights, method="twn", show=True)   # no widget front end: a static figure
    out = capsys.readouterr()
    assert "Figure" in out.out and out.err == ""
    assert explorer.stats["layer"] == "w" and explorer.stats["weights"] == 8
    assert explorer.layout is None
