"""Lab 4 widget: a layer's weight histogram with its binary or ternary levels and thresholds.

``levels_explorer`` takes the functions it visualizes — the student's ``binarize``, ``binarize_weights``,
``twn_threshold``, ``twn_quantize`` and ``ttq_quantize``, as a mapping like the ``functions=`` argument of
``lowbit.quant.binary_train.train_binary`` (missing names: lowbit's references) — and returns an ``Explorer``
(see ``lowbit.viz.linear``): ``.controls``, ``.stats``, ``.figure``, ``.show()``. Live under ipympl's
``%matplotlib widget``; one static figure at the default settings without a widget front end.

The whole layer is always quantized (a per-channel scale needs every channel, TTQ's threshold the whole layer);
"one channel" only selects which weights are drawn and counted.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from matplotlib.collections import LineCollection
from matplotlib.patches import Rectangle
from torch import nn

from lowbit.quant.modules import quantizable_layers
from lowbit.viz.linear import Explorer, _finish, has_widget_frontend

__all__ = ["levels_explorer", "METHODS", "FUNCTION_NAMES", "ttq_initial_scales"]

#: What the widget can show: BinaryConnect's sign (±1, no scale), BWN (±α per channel), TWN and TTQ.
METHODS = ("binaryconnect", "bwn", "twn", "ttq")
#: The graded functions the widget calls (keys of ``functions``).
FUNCTION_NAMES = ("binarize", "binarize_weights", "twn_threshold", "twn_quantize", "ttq_quantize")
_BINS = 80


def _functions(functions: Mapping[str, Callable] | None) -> dict[str, Callable]:
    """The functions to draw with: the given ones, lowbit's references for the rest (looked up by name, as
    ``binary_train.resolve_function`` does, so that importing this module does not reach the references)."""
    given = dict(functions or {})
    unknown = sorted(set(given) - set(FUNCTION_NAMES))
    if unknown:
        raise ValueError(f"unknown function names {unknown}; levels_explorer uses {list(FUNCTION_NAMES)}")
    references = importlib.import_module("lowbit.quant.binary")
    return {name: given.get(name, getattr(references, name)) for name in FUNCTION_NAMES}


def _layer_weights(source: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """name -> detached float32 weight copy, from a model's quantizable layers or a mapping of tensors."""
    if isinstance(source, nn.Module):
        weights = {name: layer.weight for name, layer in quantizable_layers(source).items()}
    elif isinstance(source, Mapping):
        weights = dict(source)
    else:
        raise TypeError(f"levels_explorer takes a model or a mapping name -> weight tensor, got "
                        f"{type(source).__name__}")
    if not weights:
        raise ValueError("levels_explorer found no weights to show")
    out = {}
    for name, w in weights.items():
        if not isinstance(w, torch.Tensor) or not w.is_floating_point() or w.ndim == 0 or w.numel() == 0:
            raise ValueError(f"weight {name!r} must be a non-empty float tensor [C, ...]")
        out[name] = w.detach().to(torch.float32).clone()
    return out


def ttq_initial_scales(w: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_p, W_n) a TTQ layer starts training from (``binary_train.TTQQuantizer``'s initialisation: the mean |w|
    above Δ and below −Δ, Δ = t · max|w|), as 0-dim float32 tensors."""
    from lowbit.quant.binary_train import TTQQuantizer

    quantizer = TTQQuantizer(w, t)
    return quantizer.w_p.detach().clone(), quantizer.w_n.detach().clone()


def _as_float32(value: Any, name: str, like: torch.Tensor) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} returned {type(value).__name__}; expected a tensor of shape {tuple(like.shape)}")
    if tuple(value.shape) != tuple(like.shape):
        raise ValueError(f"{name} returned shape {tuple(value.shape)}; expected {tuple(like.shape)}")
    return value.detach().to(torch.float32)


def _entropy_bits(codes: torch.Tensor) -> float:
    """Empirical entropy (bits per weight) of the codes (-1 / 0 / +1): what an ideal entropy coder would take."""
    _, counts = torch.unique(codes, return_counts=True)
    p = counts.double() / counts.sum()
    return float(-(p * torch.log2(p)).sum()) + 0.0


def levels_explorer(source: nn.Module | Mapping[str, torch.Tensor], functions: Mapping[str, Callable] | None = None,
                    method: str = "bwn", layer: str | None = None, twn_factor: float = 0.7, ttq_t: float = 0.05,
                    ttq_scales: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
                    show: bool = True) -> Explorer:
    """Histogram of one layer's weights (or one output channel's) with the quantized levels and thresholds on it.

    ``source``: a model (its conv / linear layers) or a mapping name -> weight ``[C, ...]``. ``functions``: the
    graded functions to use (``FUNCTION_NAMES``; missing: lowbit's references). ``ttq_scales``: trained
    ``(W_p, W_n)`` per layer name; otherwise ``ttq_initial_scales``.

    Controls: ``method`` (``METHODS``), ``layer``, ``view`` ("whole layer" / "one channel"), ``twn_factor`` (TWN's Δ
    = factor · mean|w| per channel, via ``twn_threshold`` scaled by factor / 0.7), ``ttq_t`` (TTQ's Δ = t · max|w|)
    and ``channel`` (for "one channel"). Drawn: the histogram of the latent weights, the levels (±1; ±α_c; ±α_c and
    0; W_p, 0, −W_n) as solid lines and the thresholds ±Δ dashed — in the whole-layer view, per-channel levels and
    thresholds as a line at their mean over the channels and a shaded band over their range; below, the map w →
    quantized w. Stats: weights shown, distinct quantized values, MSE, relative error ||w − q||² / ||w||², fraction
    of zeros, code bits per weight (1 binary, 2 ternary), scale bits per weight (fp32 scales spread over the layer's
    weights) and the entropy of the codes (sign of q: −1 / 0 / +1) in bits per weight, the least an entropy coder
    would need.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    fns = _functions(functions)
    weights = _layer_weights(source)
    names = list(weights)
    layer = names[min(1, len(names) - 1)] if layer is None else layer
    if layer not in weights:
        raise ValueError(f"layer {layer!r} is not one of {names}")
    trained_ttq = dict(ttq_scales or {})
    live = has_widget_frontend()
    controls = {
        "method": widgets.ToggleButtons(options=list(METHODS), value=method, description="method"),
        "layer": widgets.Dropdown(options=names, value=layer, description="layer"),
        "view": widgets.ToggleButtons(options=["whole layer", "one channel"], value="whole layer", description="view"),
        "twn_factor": widgets.FloatSlider(value=twn_factor, min=0.0, max=2.0, step=0.05, description="TWN factor",
                                          continuous_update=False),
        "ttq_t": widgets.FloatSlider(value=ttq_t, min=0.0, max=0.5, step=0.01, description="TTQ t",
                                     continuous_update=False, readout_format=".2f"),
        "channel": widgets.IntSlider(value=0, min=0, max=weights[layer].shape[0] - 1, description="channel",
                                     continuous_update=False),
    }
    with plt.ioff():
        figure, (ax_hist, ax_map) = plt.subplots(2, 1, figsize=(7.5, 5.4), sharex=True, layout="constrained",
                                                 gridspec_kw={"height_ratios": [2, 1.2]})
    stairs = ax_hist.stairs([0.0], [0.0, 1.0], fill=True, color="0.7", label="latent weights")
    levels = LineCollection([], colors="C3", linewidths=1.4, alpha=0.9, label="levels")
    thresholds = LineCollection([], colors="C0", linewidths=1.1, linestyles="dashed", label="thresholds ±Δ")
    ax_hist.add_collection(levels)
    ax_hist.add_collection(thresholds)
    # per-channel levels and thresholds of a whole layer: a line at their mean over the channels, a band over their
    # range
    bands = {(kind, side): ax_hist.add_patch(Rectangle((0, 0), 0, 1, transform=ax_hist.get_xaxis_transform(),
                                                       color="C3" if kind == "level" else "C0", alpha=0.15,
                                                       label="range over channels" if (kind, side) == ("level", 1)
                                                       else None))
             for kind in ("level", "threshold") for side in (-1, 1)}
    ax_hist.set_ylabel("count")
    ax_hist.legend(loc="upper right", fontsize="small")
    (mapping,) = ax_map.plot([], [], linestyle="none", marker=".", markersize=2, color="C3")
    ax_map.plot([-10, 10], [-10, 10], color="0.6", linestyle="dotted", linewidth=0.8)
    ax_map.axhline(0, color="0.4", linewidth=0.5)
    ax_map.set_xlabel("latent weight w")
    ax_map.set_ylabel("quantized")
    title = ax_hist.set_title("")
    state = {"layer": layer}

    def quantize(w: torch.Tensor, kind: str, factor: float, t: float) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """(q of the whole layer, Δ per channel [C] or 0-dim / None, scale count) with the student's functions."""
        if kind == "binaryconnect":
            return _as_float32(fns["binarize"](w.clone()), "binarize", w), None, 0
        if kind == "bwn":
            return _as_float32(fns["binarize_weights"](w.clone()), "binarize_weights", w), None, w.shape[0]
        if kind == "twn":
            delta = _as_float32(fns["twn_threshold"](w.clone()), "twn_threshold", torch.empty(w.shape[0]))
            delta = delta * (factor / 0.7)
            return _as_float32(fns["twn_quantize"](w.clone(), delta), "twn_quantize", w), delta, w.shape[0]
        w_p, w_n = trained_ttq.get(state["layer"]) or ttq_initial_scales(w, t)
        w_p, w_n = (torch.as_tensor(v, dtype=torch.float32).detach() for v in (w_p, w_n))
        q = _as_float32(fns["ttq_quantize"](w.clone(), w_p, w_n, t), "ttq_quantize", w)
        return q, t * w.abs().max(), 2

    def update() -> dict[str, Any]:
        kind, name = controls["method"].value, controls["layer"].value
        if name != state["layer"]:          # a new layer: its channel count
            state["layer"] = name
            controls["channel"].max = weights[name].shape[0] - 1
        w = weights[name]
        factor, t = float(controls["twn_factor"].value), float(controls["ttq_t"].value)
        q, delta, scales = quantize(w, kind, factor, t)
        one = controls["view"].value == "one channel"
        c = int(controls["channel"].value)
        rows = slice(c, c + 1) if one else slice(None)
        shown_w, shown_q = w[rows].reshape(-1), q[rows].reshape(-1)
        # levels per shown channel: its positive and its negative value (TTQ: the layer's W_p and -W_n)
        per_row = q[rows].reshape(q[rows].shape[0], -1)
        tops, bottoms = per_row.amax(dim=1), per_row.amin(dim=1)
        sides = {1: tops[tops > 0], -1: bottoms[bottoms < 0]}
        if delta is None:
            sides_delta = {}
        else:
            d = delta.expand(w.shape[0]) if delta.ndim == 0 else delta
            sides_delta = {1: d[rows].reshape(-1), -1: -d[rows].reshape(-1)}
        level_values = sorted(float(v.mean()) for v in sides.values() if v.numel())
        if kind in ("twn", "ttq"):
            level_values = sorted(level_values + [0.0])
        delta_values = sorted(float(v.mean()) for v in sides_delta.values() if v.numel())
        for (band_kind, side), band in bands.items():
            values = (sides if band_kind == "level" else sides_delta).get(side, torch.empty(0))
            low, high = (float(values.min()), float(values.max())) if values.numel() else (0.0, 0.0)
            band.set_x(low)
            band.set_width(high - low)
        counts, edges = torch.histogram(shown_w, bins=_BINS)
        stairs.set_data(counts.numpy(), edges.numpy())
        top = float(counts.max()) * 1.08 or 1.0
        levels.set_segments([[(v, 0), (v, top)] for v in level_values])
        thresholds.set_segments([[(d, 0), (d, top)] for d in delta_values])
        order = torch.argsort(shown_w)
        mapping.set_data(shown_w[order].numpy(), shown_q[order].numpy())
        extent = max(float(shown_w.abs().max()), max((abs(v) for v in level_values), default=0.0)) * 1.08 or 1.0
        ax_hist.set_xlim(-extent, extent)
        ax_hist.set_ylim(0, top)
        q_extent = max(float(shown_q.abs().max()), float(shown_w.abs().max())) * 1.1 or 1.0
        ax_map.set_ylim(-q_extent, q_extent)
        error = (shown_w - shown_q).square()
        energy = float(shown_w.square().sum())
        code_bits = 1 if kind in ("binaryconnect", "bwn") else 2
        where = f"{name}, channel {c}" if one else f"{name}, all {w.shape[0]} channels"
        title.set_text(f"{kind}: {where}")
        return {"method": kind, "layer": name, "channel": c if one else "all", "weights": shown_w.numel(),
                "distinct_values": len(set(shown_q.tolist())), "mse": float(error.mean()),
                "relative_error": float(error.sum()) / energy if energy > 0 else float("nan"),
                "zero_fraction": float((shown_q == 0).float().mean()),
                "code_bits_per_weight": code_bits, "scale_bits_per_weight": 32 * scales / w.numel(),
                "entropy_bits_per_weight": _entropy_bits(torch.sign(shown_q))}

    explorer = Explorer("levels_explorer", figure, controls, update, live)
    if explorer.layout is not None:        # six controls: let them wrap onto a second row
        explorer.layout.children[0].layout = widgets.Layout(flex_flow="row wrap")
        figure.canvas.header_visible = False   # ipympl's "Figure 1" title bar says nothing here
    return _finish(explorer, show)
