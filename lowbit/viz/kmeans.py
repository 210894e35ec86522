"""Lab 2 widget: k-means centroids on a real weight histogram, against the uniform (linear) grid.

``kmeans_explorer`` takes the k-means function it visualizes (the student's ``kmeans_1d``) with lowbit's
reference as the default, and returns an ``Explorer`` (see ``lowbit.viz.linear``): ``.controls`` (name →
ipywidget; set ``.value`` to drive it), ``.stats`` (the last computed numbers), ``.figure`` and ``.show()``.
Live under ipympl's ``%matplotlib widget``; one static figure at the default settings without a widget front
end (nbconvert, nbgrader, CI, ``lowbit.GRADING``, ``LOWBIT_STATIC_WIDGETS=1``).
"""
from __future__ import annotations

from typing import Any, Callable

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch

from lowbit.quant.kmeans import INITS, kmeans_1d
from lowbit.viz.linear import Explorer, _finish, _flat_sample, has_widget_frontend

__all__ = ["kmeans_explorer", "uniform_levels"]


def uniform_levels(w: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` evenly spaced levels from ``w.min()`` to ``w.max()`` (float64 ``[k]``): the grid of a
    min-max linear quantizer with the same number of levels."""
    return torch.linspace(float(w.min()), float(w.max()), k, dtype=torch.float64)


def _nearest_sse(w: torch.Tensor, levels: torch.Tensor) -> float:
    """SSE of rounding every value of ``w`` to its nearest level (ascending ``levels``)."""
    x = w.to(torch.float64)
    index = torch.bucketize(x, (levels[:-1] + levels[1:]) / 2)
    return float((x - levels[index]).square().sum())


FULL_LINES_UP_TO = 16


def _tick_span(k: int) -> tuple[float, float]:
    """Vertical extent of the level marks in axes coordinates: (uniform ticks from, centroid ticks up to).

    Up to ``FULL_LINES_UP_TO`` levels both are full-height lines; above that (5+ bits) they become short
    ticks — centroids along the bottom edge, uniform levels along the top — so the histogram stays visible
    instead of disappearing behind a wall of 2 × 256 lines.
    """
    return (0.0, 1.0) if k <= FULL_LINES_UP_TO else (0.9, 0.1)


def kmeans_explorer(weights: torch.Tensor, kmeans_fn: Callable = kmeans_1d, bits: int = 3, init: str = "linear",
                    iters: int = 100, show: bool = True, max_values: int = 50_000) -> Explorer:
    """Histogram of a weight tensor with the k-means centroids (red) and the uniform levels (blue, dashed);
    above 16 levels they are drawn as ticks (centroids along the bottom edge, uniform levels along the top).

    Controls: ``bits`` (1–8, k = 2^bits centroids) and ``init`` ("linear" / "random" / "kmeans++"). The
    centroids come from ``kmeans_fn(w, k, iters=iters, init=init)`` → ``(centroids [k], labels [n])``.
    Stats: bits, k, init, sse (k-means), uniform_sse (each value rounded to the nearest of the k evenly spaced
    levels between min and max), uniform_over_kmeans (their ratio, ≥ 1 means k-means wins), clusters_used.
    Tensors above ``max_values`` elements are subsampled evenly.
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    w = _flat_sample(weights, max_values, "weights")
    live = has_widget_frontend()
    controls = {
        "bits": widgets.IntSlider(value=bits, min=1, max=8, description="bits", continuous_update=False),
        "init": widgets.ToggleButtons(options=list(INITS), value=init, description="init"),
    }
    with plt.ioff():
        figure, ax = plt.subplots(figsize=(7, 3.8), layout="constrained")
    ax.hist(w.numpy(), bins=200, color="0.6")
    ax.set_xlabel("weight value")
    ax.set_ylabel("count")
    transform = ax.get_xaxis_transform()
    uniform = ax.vlines([], 0, 1, transform=transform, colors="C0", linestyles="dashed", linewidth=0.8,
                        label="uniform levels")
    centroid_lines = ax.vlines([], 0, 1, transform=transform, colors="C3", linewidth=1.2, label="k-means centroids")
    ax.legend(loc="upper right")
    title = ax.set_title("")

    def update() -> dict[str, Any]:
        n_bits, init_now = controls["bits"].value, controls["init"].value
        k = 2**n_bits
        centroids, labels = kmeans_fn(w, k, iters=iters, init=init_now)
        centroids = centroids.detach().to(torch.float64).reshape(-1)
        labels = labels.reshape(-1)
        if centroids.numel() != k or labels.numel() != w.numel():
            raise ValueError(f"kmeans_fn returned {centroids.numel()} centroids and {labels.numel()} labels; "
                             f"expected {k} and {w.numel()}")
        sse = float((w.to(torch.float64) - centroids[labels]).square().sum())
        levels = uniform_levels(w, k)
        uniform_sse = _nearest_sse(w, levels)
        low, high = _tick_span(k)
        centroid_lines.set_segments([[(float(c), 0), (float(c), high)] for c in centroids])
        uniform.set_segments([[(float(g), low), (float(g), 1)] for g in levels])
        title.set_text(f"{n_bits} bits (k = {k}), init {init_now}: k-means SSE {sse:.4g}, uniform SSE {uniform_sse:.4g}")
        return {"bits": n_bits, "k": k, "init": init_now, "sse": sse, "uniform_sse": uniform_sse,
                "uniform_over_kmeans": uniform_sse / sse if sse > 0 else float("inf"),
                "clusters_used": int(torch.unique(labels).numel())}

    return _finish(Explorer("kmeans_explorer", figure, controls, update, live), show)
