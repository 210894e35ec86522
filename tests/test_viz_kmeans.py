"""lowbit.viz.kmeans: drive the widget's controls and check the numbers it computes; headless path."""
from __future__ import annotations

import matplotlib
import pytest
import torch

from lowbit.quant import kmeans as K
from lowbit.viz import kmeans as viz


@pytest.fixture
def weights():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(32, 16, 3, 3, generator=g) * torch.rand(32, 16, 3, 3, generator=g).pow(2) * 0.1)


def test_kmeans_explorer_numbers_follow_the_controls(weights, capsys):
    explorer = viz.kmeans_explorer(weights, show=False)
    flat = weights.reshape(-1)
    centroids, labels = K.kmeans_1d(flat, 8, iters=100, init="linear")
    assert explorer.stats["k"] == 8 and explorer.stats["init"] == "linear"
    assert explorer.stats["sse"] == pytest.approx(K.sse(flat, centroids, labels), rel=1e-9)
    levels = torch.linspace(float(flat.min()), float(flat.max()), 8, dtype=torch.float64)
    uniform = (flat.double()[:, None] - levels[None]).abs().min(dim=1).values.square().sum().item()
    assert explorer.stats["uniform_sse"] == pytest.approx(uniform, rel=1e-9)
    assert explorer.stats["uniform_over_kmeans"] > 1.5     # k-means beats the uniform grid on peaked weights
    previous = explorer.stats["sse"]
    for bits in (4, 5, 6):
        explorer.controls["bits"].value = bits
        assert explorer.stats["k"] == 2**bits
        assert explorer.stats["sse"] < previous
        previous = explorer.stats["sse"]
    for init in ("kmeans++", "random"):
        explorer.controls["init"].value = init
        c, lab = K.kmeans_1d(flat, 64, iters=100, init=init)
        assert explorer.stats["init"] == init
        assert explorer.stats["sse"] == pytest.approx(K.sse(flat, c, lab), rel=1e-9)
    assert capsys.readouterr().err == ""


def test_kmeans_explorer_uses_the_students_function_and_reports_its_errors(weights, capsys):
    calls = []

    def student_kmeans(w, k, iters=100, init="linear"):
        calls.append((k, init))
        return K.kmeans_1d(w, k, iters=iters, init=init)

    explorer = viz.kmeans_explorer(weights, kmeans_fn=student_kmeans, show=False)
    explorer.controls["bits"].value = 2
    explorer.controls["init"].value = "kmeans++"
    assert calls == [(8, "linear"), (4, "linear"), (4, "kmeans++")]

    def wrong_count(w, k, iters=100, init="linear"):
        return K.kmeans_1d(w, k - 1, iters=iters, init=init)

    explorer = viz.kmeans_explorer(weights, kmeans_fn=wrong_count, show=False)
    assert "expected 8" in explorer.stats["error"]
    assert "your function raised ValueError" in capsys.readouterr().out


def test_kmeans_explorer_headless_displays_a_static_figure(weights, capsys):
    explorer = viz.kmeans_explorer(weights)
    assert explorer.live is False and explorer.layout is None
    assert isinstance(explorer.figure, matplotlib.figure.Figure)
    assert "Figure" in capsys.readouterr().out
    with pytest.raises(ValueError, match="init must be one of"):
        viz.kmeans_explorer(weights, init="kmeans", show=False)


def test_kmeans_explorer_numbers_panel_uses_readable_labels(weights):
    explorer = viz.kmeans_explorer(weights, show=False)
    shown = explorer.numbers.value
    ratio = explorer.stats["uniform_over_kmeans"]
    assert f"<b>uniform SSE / k-means SSE</b>: {ratio:.4g}" in shown
    assert "<b>clusters used</b>: " in shown and "uniform_over_kmeans" not in shown
    assert explorer.numbers.layout.width, "the panel keeps its width next to the figure"


def test_kmeans_explorer_draws_many_levels_as_ticks(weights):
    explorer = viz.kmeans_explorer(weights, bits=3, show=False)
    centroids, uniform = explorer.figure.axes[0].collections[-1], explorer.figure.axes[0].collections[-2]
    heights = {round(abs(seg[1][1] - seg[0][1]), 3) for seg in centroids.get_segments() + uniform.get_segments()}
    assert heights == {1.0}                                            # 8 levels: full-height lines
    explorer.controls["bits"].value = 8
    assert len(centroids.get_segments()) == 256
    assert max(seg[1][1] for seg in centroids.get_segments()) <= 0.1  # 256 levels: ticks along the bottom ...
    assert min(seg[0][1] for seg in uniform.get_segments()) >= 0.9    # ... and along the top
