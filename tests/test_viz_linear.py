"""lowbit.viz.linear: drive the widgets' controls and check the numbers they compute; headless path."""
from __future__ import annotations

import matplotlib
import pytest
import torch
from torch import nn

from lowbit.quant.linear import affine_qparams, fake_quantize, linear_quantize, sqnr_db, symmetric_qparams
from lowbit.viz import linear as viz


@pytest.fixture
def weights():
    return torch.randn(64, 32, 3, 3, generator=torch.Generator().manual_seed(0)) * 0.1


@pytest.fixture
def activations():
    x = torch.relu(torch.randn(20_000, generator=torch.Generator().manual_seed(1)))
    x[:5] = torch.tensor([9.0, 11.0, 12.0, 10.0, 14.0])        # a few outliers
    return x


def test_no_widget_frontend_under_pytest():
    assert not viz.has_widget_frontend()


def test_quantization_explorer_numbers_follow_the_controls(weights, capsys):
    explorer = viz.quantization_explorer(weights, show=False)
    assert explorer.stats["bits"] == 4 and explorer.stats["scheme"] == "affine"
    scale, zp = affine_qparams(float(weights.min()), float(weights.max()), 4, True)
    expected = fake_quantize(weights.reshape(-1), scale, zp, 4)
    assert explorer.stats["scale"] == scale and explorer.stats["zero_point"] == zp
    assert explorer.stats["mse"] == pytest.approx(float((expected - weights.reshape(-1)).pow(2).mean()), rel=1e-5)
    assert explorer.stats["levels"] == 16
    previous = explorer.stats["sqnr_db"]
    for bits in (5, 6, 7, 8):
        explorer.controls["bits"].value = bits
        assert explorer.stats["levels"] == 2 ** bits
        assert explorer.stats["sqnr_db"] > previous + 4           # ~6 dB per bit
        previous = explorer.stats["sqnr_db"]
    explorer.controls["scheme"].value = "symmetric"
    assert explorer.stats["zero_point"] == 0 and explorer.stats["levels"] == 255
    assert explorer.stats["scale"] == symmetric_qparams(float(weights.abs().max()), 8)
    assert explorer.controls["signed"].disabled
    explorer.controls["scheme"].value = "affine"
    explorer.controls["signed"].value = False
    assert explorer.stats["signed"] is False and explorer.stats["zero_point"] > 0
    assert capsys.readouterr().err == ""


def test_quantization_explorer_uses_the_students_functions_and_reports_their_errors(weights, capsys):
    calls = []

    def student_quantize(r, scale, zero_point, bits, signed=True):
        calls.append(bits)
        return linear_quantize(r, scale, zero_point, bits, signed)

    def broken_qparams(r_min, r_max, bits, signed=True):
        raise ZeroDivisionError("float division by zero")

    explorer = viz.quantization_explorer(weights, quantize_fn=student_quantize, show=False)
    explorer.controls["bits"].value = 3
    assert calls == [4, 3]
    explorer = viz.quantization_explorer(weights, qparams_fn=broken_qparams, show=False)
    assert "ZeroDivisionError" in explorer.stats["error"]
    assert "your function raised ZeroDivisionError" in capsys.readouterr().out
    explorer.controls["scheme"].value = "symmetric"                 # symmetric path does not need qparams_fn
    assert "error" not in explorer.stats and explorer.stats["zero_point"] == 0
    explorer.controls["bits"].value = 1
    assert "at least 2 bits" in explorer.stats["error"]


def test_quantization_explorer_headless_displays_a_static_figure(weights, capsys):
    explorer = viz.quantization_explorer(weights)                  # show=True: display(fig) without a front end
    assert explorer.live is False and explorer.layout is None
    assert isinstance(explorer.figure, matplotlib.figure.Figure)
    assert "Figure" in capsys.readouterr().out                      # IPython's display() falls back to print
    assert "quantization_explorer" in repr(explorer)


def test_clipping_explorer_errors_decompose_and_threshold_moves_them(activations):
    explorer = viz.clipping_explorer(activations, bits=4, show=False)
    stats = explorer.stats
    assert stats["threshold"] == pytest.approx(14.0) and stats["clip_mse"] == 0.0
    assert stats["total_mse"] == pytest.approx(stats["round_mse"], rel=1e-6)
    choices = stats["choices"]
    assert choices["minmax"] == pytest.approx(14.0)
    assert all(0 < choices[m] < 14.0 for m in ("percentile", "mse", "kl"))
    explorer.controls["threshold"].value = 3.0
    low = explorer.stats
    assert low["clip_mse"] > 0 and low["round_mse"] < stats["round_mse"]
    s, z = affine_qparams(0.0, 3.0, 4, signed=False)
    x_hat = fake_quantize(activations, s, z, 4, signed=False)
    assert low["total_mse"] == pytest.approx(float((activations - x_hat).pow(2).mean()), rel=1e-5)
    assert low["sqnr_db"] == pytest.approx(sqnr_db(activations, x_hat), abs=1e-3)
    # the MSE-optimal threshold gives (near) the lowest total error among the marked choices
    totals = {}
    for method, threshold in choices.items():
        explorer.controls["threshold"].value = threshold
        totals[method] = explorer.stats["total_mse"]
    assert totals["mse"] <= min(totals.values()) * 1.05
    explorer.controls["bits"].value = 8
    assert explorer.stats["bits"] == 8 and explorer.stats["round_mse"] < low["round_mse"]


def test_clipping_explorer_signed_data_and_errors():
    x = torch.randn(5000, generator=torch.Generator().manual_seed(2))
    explorer = viz.clipping_explorer(x, show=False)
    explorer.controls["threshold"].value = 1.0
    clipped = x.clamp(-1.0, 1.0)
    assert explorer.stats["clip_mse"] == pytest.approx(float((x - clipped).pow(2).mean()), rel=1e-5)
    with pytest.raises(ValueError, match="all zero"):
        viz.clipping_explorer(torch.zeros(10), show=False)
    with pytest.raises(ValueError, match="empty"):
        viz.clipping_explorer(torch.empty(0), show=False)


def test_channel_range_boxplot():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([0.1, 0.2, 0.4, 0.8]).reshape(4, 1, 1, 1) * torch.ones(4, 1, 3, 3))
    plot = viz.channel_range_boxplot(model, show=False)
    ax = plot.figure.axes[0]
    assert [t.get_text().split("\n")[0] for t in ax.get_xticklabels()] == ["0", "3"]
    assert plot.spread["weights"]["0"] == pytest.approx(8.0)           # 0.8 / 0.1
    assert ax.get_xticklabels()[0].get_text() == "0\n8.0×"
    assert torch.equal(plot.ranges["weights"]["0"], torch.tensor([0.1, 0.2, 0.4, 0.8]))
    with pytest.raises(ValueError, match="no Conv2d"):
        viz.channel_range_boxplot(nn.Sequential(nn.ReLU()), show=False)


def test_channel_range_boxplot_compares_variants_and_folding_widens_the_spread():
    import lowbit
    model = lowbit.models.pretrained("cnn")
    plot = viz.channel_range_boxplot({"as trained": model, "BN folded": lowbit.models.fold_batchnorm(model)},
                                     show=False)
    trained, folded = plot.spread["as trained"], plot.spread["BN folded"]
    assert folded["conv1"] > 10 > 3 > trained["conv1"]                 # the figures the lab's text quotes
    assert all(folded[layer] >= trained[layer] * 0.99 for layer in trained)
    assert "conv1 11.8x" in repr(plot) and len(plot.figure.axes[0].get_legend().get_texts()) == 2
    with pytest.raises(ValueError, match="same Conv2d/Linear layers"):
        viz.channel_range_boxplot({"a": model, "b": nn.Sequential(nn.Linear(2, 2))}, show=False)


def test_quantization_explorer_axis_shows_every_level():
    w = torch.linspace(-0.66, 0.6, 1000)                             # 2-bit affine: a level at -0.84, off the data
    explorer = viz.quantization_explorer(w, show=False)
    explorer.controls["bits"].value = 2
    levels = [segment[0][0] for segment in explorer.figure.axes[0].collections[0].get_segments()]
    low, high = explorer.figure.axes[0].get_xlim()
    assert len(levels) == 4 and min(levels) < -0.66
    assert low < min(levels) and high > max(levels)


def test_clipping_explorer_markers_come_from_the_students_functions(activations):
    def student_mse(x, bits):
        return 0.0, 2.5

    def broken_kl(hist, edges, bits):
        raise NotImplementedError()

    explorer = viz.clipping_explorer(activations, bits=4, mse_fn=student_mse, kl_fn=broken_kl, show=False)
    assert explorer.stats["choices"]["mse"] == 2.5
    assert "kl" not in explorer.stats["choices"] and "NotImplementedError" in explorer.stats["choice_errors"]["kl"]
    assert explorer.stats["total_mse"] > 0                           # the rest of the widget still works
