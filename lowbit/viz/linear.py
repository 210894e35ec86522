"""Lab 1 widgets: the quantization grid on real weights, activation clipping, per-channel weight ranges.

Each explorer takes the functions it visualizes (the student's) with lowbit's references as defaults, and
returns an ``Explorer``: ``.controls`` (name → ipywidget; set ``.value`` to drive it), ``.stats`` (the last
computed numbers), ``.figure`` and ``.show()``.

With a widget front end (an IPython kernel with ipympl's ``%matplotlib widget`` backend) the figure is built
once and its artists are updated when a control changes; errors raised by the student's function appear in an
``Output`` area under the plot. Without one (nbconvert, nbgrader, CI, ``lowbit.GRADING``, or the environment
variable ``LOWBIT_STATIC_WIDGETS=1``) the call displays one static figure at the default settings and returns;
the controls still work programmatically.
"""
from __future__ import annotations

import math
import os
from typing import Any, Callable

import ipywidgets as widgets
import matplotlib
import matplotlib.pyplot as plt
import torch
from IPython.display import display
from torch import nn

from lowbit.quant import calibration
from lowbit.quant.linear import (affine_qparams, linear_dequantize, linear_quantize, quantized_range, sqnr_db,
                                 symmetric_qparams)

__all__ = ["has_widget_frontend", "Explorer", "quantization_explorer", "clipping_explorer",
           "channel_range_boxplot", "ChannelRanges"]


def has_widget_frontend() -> bool:
    """True inside an IPython kernel using ipympl's interactive backend, when not grading."""
    from lowbit.utils import is_grading
    if is_grading() or os.environ.get("LOWBIT_STATIC_WIDGETS"):
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None or "IPKernelApp" not in getattr(shell, "config", {}):
        return False
    backend = matplotlib.get_backend().lower()
    return "ipympl" in backend or backend == "widget"


def _flat_sample(tensor: torch.Tensor, max_values: int, name: str) -> torch.Tensor:
    """float32 1-d copy of ``tensor`` (an evenly strided subsample above ``max_values``), checked."""
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor")
    if tensor.numel() == 0:
        raise ValueError(f"{name} is empty")
    flat = tensor.detach().reshape(-1).to(torch.float32)
    if not bool(torch.isfinite(flat).all()):
        raise ValueError(f"{name} contains NaN or infinity")
    if flat.numel() > max_values:
        flat = flat[:: -(-flat.numel() // max_values)]
    return flat.clone()


class Explorer:
    """What an explorer returns: its controls, its last numbers, its figure and (live mode) its layout."""

    def __init__(self, name: str, figure: matplotlib.figure.Figure, controls: dict[str, widgets.Widget],
                 update: Callable[[], dict[str, Any]], live: bool) -> None:
        self.name, self.figure, self.controls, self.live = name, figure, controls, live
        self.stats: dict[str, Any] = {}
        self.output = widgets.Output()
        self.numbers = widgets.HTML(layout=widgets.Layout(width="14em", flex="0 0 auto"))
        self._update = update
        for control in controls.values():
            control.observe(self._on_change, names="value")
        self.refresh()
        self.layout = widgets.VBox([widgets.HBox(list(controls.values())),
                                    widgets.HBox([figure.canvas if live else widgets.Label(), self.numbers]),
                                    self.output]) if live else None

    def _on_change(self, _change: dict) -> None:
        self.refresh()

    def refresh(self) -> None:
        """Recompute with the current control values; errors are shown, never raised."""
        try:
            self.stats = self._update()
            rows = "<br>".join(f"<b>{_display_name(k)}</b>: {_fmt(v)}" for k, v in self.stats.items()
                               if not isinstance(v, dict))
            self.numbers.value = f'<div style="white-space: normal; line-height: 1.6">{rows}</div>'  # long labels wrap
            if self.live:
                self.output.clear_output()
        except Exception as exc:  # the student's function failed: say so where they can see it
            self.stats = {"error": f"{type(exc).__name__}: {exc}"}
            message = f"✗ {self.name}: your function raised {type(exc).__name__}: {exc}"
            if self.live:
                self.output.clear_output()
                with self.output:
                    print(message)
            else:
                print(message)
        self.figure.canvas.draw_idle()

    def show(self) -> None:
        """Display the live layout, or the static figure without a widget front end."""
        if self.live:
            display(self.layout)
        else:
            display(self.figure)

    def _ipython_display_(self) -> None:   # the call already displayed it; a bare call shows nothing more
        return None

    def __repr__(self) -> str:
        values = ", ".join(f"{k}={c.value!r}" for k, c in self.controls.items())
        return f"<{self.name}: {values}>"


_DISPLAY_NAMES = {"sse": "SSE", "mse": "MSE", "sqnr_db": "SQNR (dB)", "uniform_sse": "uniform SSE",
                  "uniform_over_kmeans": "uniform SSE / k-means SSE", "clip_mse": "clipping MSE",
                  "round_mse": "rounding MSE", "total_mse": "total MSE", "d_mse_d_step": "d MSE / d step"}


def _display_name(key: str) -> str:
    """How a stats key is labelled next to the figure: ``clusters_used`` → ``clusters used``."""
    return _DISPLAY_NAMES.get(key, key.replace("_", " "))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "∞" if math.isinf(value) else f"{value:.4g}"
    return str(value)


def _finish(explorer: Explorer, show: bool) -> Explorer:
    if show:
        explorer.show()
    if not explorer.live:
        plt.close(explorer.figure)
    return explorer


def _covering_limits(data_min: float, data_max: float, levels: torch.Tensor) -> tuple[float, float]:
    """x limits showing the data and every level (a level may lie outside the data, e.g. 2-bit affine)."""
    lo, hi = min(data_min, float(levels.min())), max(data_max, float(levels.max()))
    margin = 0.04 * (hi - lo) or 1.0
    return lo - margin, hi + margin


# ----------------------------------------------------------------------------------- quantization grid
def quantization_explorer(weights: torch.Tensor, quantize_fn: Callable = linear_quantize,
                          dequantize_fn: Callable = linear_dequantize, qparams_fn: Callable = affine_qparams,
                          symmetric_fn: Callable = symmetric_qparams, bits: int = 4, signed: bool = True,
                          scheme: str = "affine", show: bool = True, max_values: int = 200_000) -> Explorer:
    """Histogram of a real weight tensor with the quantization levels overlaid and the error beside it.

    Controls: ``bits`` (1–8), ``signed`` (checkbox), ``scheme`` ("affine" / "symmetric"; symmetric is
    always signed with zero point 0 and needs ≥ 2 bits). The grid comes from ``qparams_fn(min, max, bits,
    signed)`` or ``symmetric_fn(max|w|, bits)``; values from ``dequantize_fn(quantize_fn(w, ...), ...)``.
    Stats: scale, zero_point, levels (grid size), levels_used, mse, sqnr_db, clipped_fraction.
    """
    w = _flat_sample(weights, max_values, "weights")
    order = torch.argsort(w)
    w_sorted = w[order]
    live = has_widget_frontend()
    controls = {
        "bits": widgets.IntSlider(value=bits, min=1, max=8, description="bits"),
        "signed": widgets.Checkbox(value=signed, description="signed"),
        "scheme": widgets.ToggleButtons(options=["affine", "symmetric"], value=scheme, description="scheme"),
    }
    with plt.ioff():
        figure, (ax_hist, ax_err) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True, layout="constrained",
                                                 gridspec_kw={"height_ratios": [2, 1]})
    ax_hist.hist(w.numpy(), bins=200, color="0.6")
    ax_hist.set_ylabel("count")
    levels = ax_hist.vlines([], 0, 1, transform=ax_hist.get_xaxis_transform(), colors="C3", linewidth=0.8,
                            label="quantization levels")
    ax_hist.legend(loc="upper right")
    (error_line,) = ax_err.plot(w_sorted.numpy(), torch.zeros_like(w_sorted).numpy(), color="C0", linewidth=0.8)
    ax_err.axhline(0, color="0.3", linewidth=0.5)
    ax_err.set_xlabel("weight value r")
    ax_err.set_ylabel("r_hat − r")
    title = ax_hist.set_title("")

    def update() -> dict[str, Any]:
        n_bits, scheme_now = controls["bits"].value, controls["scheme"].value
        symmetric = scheme_now == "symmetric"
        is_signed = True if symmetric else controls["signed"].value
        controls["signed"].disabled = symmetric
        if symmetric:
            if n_bits < 2:
                raise ValueError("symmetric quantization needs at least 2 bits")
            scale, zero_point = symmetric_fn(float(w.abs().max()), n_bits), 0
        else:
            scale, zero_point = qparams_fn(float(w.min()), float(w.max()), n_bits, is_signed)
        q = quantize_fn(w_sorted, scale, zero_point, n_bits, is_signed)
        w_hat = dequantize_fn(q, scale, zero_point).to(torch.float32)
        q_min, q_max = quantized_range(n_bits, is_signed)
        if symmetric:
            q_min = -q_max                                   # restricted symmetric grid
        grid = (torch.arange(q_min, q_max + 1, dtype=torch.float64) - int(zero_point)) * float(scale)
        levels.set_segments([[(float(g), 0), (float(g), 1)] for g in grid])
        ax_hist.set_xlim(*_covering_limits(float(w_sorted[0]), float(w_sorted[-1]), grid))
        error = w_hat - w_sorted
        error_line.set_ydata(error.numpy())
        limit = float(error.abs().max())
        ax_err.set_ylim(-1.1 * limit - 1e-12, 1.1 * limit + 1e-12)
        mse = float(error.pow(2).mean())
        sqnr = sqnr_db(w_sorted, w_hat)
        title.set_text(f"{n_bits}-bit {scheme_now}{'' if symmetric else (' signed' if is_signed else ' unsigned')}:"
                       f" MSE {mse:.3g}, SQNR {sqnr:.1f} dB")
        return {"bits": n_bits, "signed": is_signed, "scheme": scheme_now, "scale": float(scale),
                "zero_point": int(zero_point), "levels": q_max - q_min + 1,
                "levels_used": int(torch.unique(q).numel()), "mse": mse, "sqnr_db": sqnr,
                "clipped_fraction": float(((w_sorted < grid[0]) | (w_sorted > grid[-1])).float().mean())}

    return _finish(Explorer("quantization_explorer", figure, controls, update, live), show)


# ---------------------------------------------------------------------------------------------- clipping
def _clip_range(x_min: float, x_max: float, threshold: float) -> tuple[float, float]:
    """[lo, hi] for a threshold: [0, T] for non-negative data, else [-T, T], cut to the data's range."""
    lo = 0.0 if x_min >= 0 else max(x_min, -threshold)
    return lo, min(x_max, threshold) if x_max > 0 else x_max


def clipping_explorer(activations: torch.Tensor, bits: int = 8, quantize_fn: Callable = linear_quantize,
                      dequantize_fn: Callable = linear_dequantize, qparams_fn: Callable = affine_qparams,
                      mse_fn: Callable = calibration.mse_clip_range, kl_fn: Callable = calibration.kl_clip_threshold,
                      num_thresholds: int = 60, show: bool = True, max_values: int = 50_000) -> Explorer:
    """Drag a clipping threshold T over an activation histogram and see clipping vs rounding error.

    The quantized range is [0, T] for non-negative activations (after ReLU), else [-T, T] (cut to the data);
    qparams from ``qparams_fn(lo, hi, bits, signed=False)``. Curves over ``num_thresholds`` thresholds:
    clipping MSE mean((x − clamp(x))²), rounding MSE mean((clamp(x) − x_hat)²) and total MSE mean((x − x_hat)²).
    Marked choices: min-max, 99.99th percentile, MSE-optimal (``mse_fn(x, bits) → (lo, hi)``) and TensorRT KL
    (``kl_fn(hist, bin_edges, bits) → threshold`` on a 2048-bin histogram of |x|, TensorRT's level count
    2^(bits-1)). A failing ``mse_fn``/``kl_fn`` only loses its marker (reported in ``stats["choice_errors"]``).
    Controls: ``threshold`` and ``bits`` (both update on release). Stats: threshold, clip_mse, round_mse,
    total_mse, sqnr_db and ``choices`` (method → threshold).
    """
    x = _flat_sample(activations, max_values, "activations")
    x_min, x_max = float(x.min()), float(x.max())
    top = max(abs(x_min), abs(x_max))
    if top == 0:
        raise ValueError("activations are all zero: there is nothing to clip")
    live = has_widget_frontend()
    thresholds = torch.linspace(top / num_thresholds, top, num_thresholds)
    controls = {
        "threshold": widgets.FloatSlider(value=top, min=float(thresholds[0]), max=top, step=top / 500,
                                         description="threshold", continuous_update=False, readout_format=".3g"),
        "bits": widgets.IntSlider(value=bits, min=2, max=8, description="bits", continuous_update=False),
    }
    with plt.ioff():
        figure, (ax_hist, ax_curve) = plt.subplots(2, 1, figsize=(8, 6), layout="constrained")
    ax_hist.hist(x.numpy(), bins=200, color="0.6", log=True)
    ax_hist.set_xlabel("activation value")
    ax_hist.set_ylabel("count (log)")
    clip_lines = [ax_hist.axvline(x_min, color="C3"), ax_hist.axvline(x_max, color="C3")]
    lines = {name: ax_curve.plot([], [], label=label, color=color)[0]
             for name, label, color in [("clip", "clipping MSE", "C1"), ("round", "rounding MSE", "C0"),
                                        ("total", "total MSE", "k")]}
    current = ax_curve.axvline(top, color="C3", linestyle="--", label="threshold")
    ax_curve.set_xlim(0, top * 1.02)
    ax_curve.set_xlabel("clipping threshold T")
    ax_curve.set_ylabel("MSE (log)")
    title = ax_hist.set_title("")

    def errors_at(threshold: float, n_bits: int) -> tuple[float, float, float, torch.Tensor]:
        lo, hi = _clip_range(x_min, x_max, threshold)
        scale, zero_point = qparams_fn(lo, hi, n_bits, False)
        x_hat = dequantize_fn(quantize_fn(x, scale, zero_point, n_bits, False), scale, zero_point).to(torch.float32)
        clipped = x.clamp(min(lo, 0.0), max(hi, 0.0))
        return (float((x - clipped).pow(2).mean()), float((clipped - x_hat).pow(2).mean()),
                float((x - x_hat).pow(2).mean()), x_hat)

    choices_cache: dict[int, dict[str, float]] = {}
    curve_cache: dict[int, torch.Tensor] = {}

    choice_errors: dict[str, str] = {}

    def choices_for(n_bits: int) -> dict[str, float]:
        if n_bits not in choices_cache:
            lo_p, hi_p = calibration.percentile_range(x, 99.99)
            found = {"minmax": top, "percentile": max(abs(lo_p), abs(hi_p))}
            try:
                lo_m, hi_m = mse_fn(x, n_bits)
                found["mse"] = max(abs(float(lo_m)), abs(float(hi_m)))
            except Exception as exc:  # the student's function: report, keep the other markers
                choice_errors["mse"] = f"{type(exc).__name__}: {exc}"
            try:
                found["kl"] = float(kl_fn(*calibration.abs_histogram(x, 2048), n_bits))
            except Exception as exc:
                choice_errors["kl"] = f"{type(exc).__name__}: {exc}"
            choices_cache[n_bits] = found
        return choices_cache[n_bits]

    markers: list = []

    def update() -> dict[str, Any]:
        n_bits, threshold = controls["bits"].value, controls["threshold"].value
        if n_bits not in curve_cache:
            curve_cache[n_bits] = torch.tensor([errors_at(float(t), n_bits)[:3] for t in thresholds])
            positive = curve_cache[n_bits][curve_cache[n_bits] > 0]
            floor = float(positive.min()) / 2 if positive.numel() else 1e-12
            curves = curve_cache[n_bits].clamp(min=floor)
            for column, name in enumerate(("clip", "round", "total")):
                lines[name].set_data(thresholds.numpy(), curves[:, column].numpy())
            ax_curve.set_yscale("log")
            ax_curve.set_ylim(floor, float(curves.max()) * 2)
            for marker in markers:
                marker.remove()
            markers.clear()
            for i, (method, value) in enumerate(choices_for(n_bits).items()):
                markers.append(ax_curve.axvline(value, color=f"C{i + 4}", linewidth=1, alpha=0.8, label=method))
            ax_curve.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
        clip_mse, round_mse, total_mse, x_hat = errors_at(threshold, n_bits)
        lo, hi = _clip_range(x_min, x_max, threshold)
        clip_lines[0].set_xdata([lo, lo])
        clip_lines[1].set_xdata([hi, hi])
        current.set_xdata([threshold, threshold])
        sqnr = sqnr_db(x, x_hat)
        title.set_text(f"T = {threshold:.3g}, {n_bits} bits: total MSE {total_mse:.3g} "
                       f"(clip {clip_mse:.2g} + round {round_mse:.2g}), SQNR {sqnr:.1f} dB")
        stats = {"threshold": float(threshold), "bits": n_bits, "clip_mse": clip_mse, "round_mse": round_mse,
                 "total_mse": total_mse, "sqnr_db": sqnr, "choices": dict(choices_for(n_bits))}
        if choice_errors:
            stats["choice_errors"] = dict(choice_errors)
        return stats

    return _finish(Explorer("clipping_explorer", figure, controls, update, live), show)


# ------------------------------------------------------------------------------------- channel ranges
def _channel_ranges(model: nn.Module) -> dict[str, torch.Tensor]:
    """Layer name → max |w_c| per output channel (float32 [C_out]) for every Conv2d/Linear of ``model``."""
    ranges = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            weight = module.weight.detach().to(torch.float32)
            ranges[name] = weight.reshape(weight.shape[0], -1).abs().amax(dim=1)
    if not ranges:
        raise ValueError("the model has no Conv2d or Linear layer")
    return ranges


class ChannelRanges:
    """What ``channel_range_boxplot`` returns: ``.figure``, ``.ranges`` (variant → layer → max |w_c| per
    channel, float32 [C_out]) and ``.spread`` (variant → layer → largest / smallest non-zero channel range).
    It was displayed by the call already, so as a cell's last value it shows nothing more."""

    def __init__(self, figure: matplotlib.figure.Figure, ranges: dict[str, dict[str, torch.Tensor]]) -> None:
        self.figure, self.ranges = figure, ranges
        self.spread = {variant: {layer: _spread(r) for layer, r in layers.items()} for variant, layers in ranges.items()}

    def _ipython_display_(self) -> None:   # the call displayed the figure; a bare call shows nothing more
        return None

    def __repr__(self) -> str:
        rows = "; ".join(f"{variant}: " + ", ".join(f"{layer} {ratio:.1f}x" for layer, ratio in spreads.items())
                         for variant, spreads in self.spread.items())
        return f"<channel ranges, largest/smallest per layer — {rows}>"


def _spread(ranges: torch.Tensor) -> float:
    nonzero = ranges[ranges > 0]
    return float(nonzero.max() / nonzero.min()) if nonzero.numel() else 1.0


def channel_range_boxplot(models: nn.Module | dict[str, nn.Module], show: bool = True) -> ChannelRanges:
    """Box plot of each output channel's weight range max|w_c|, one group of boxes per Conv2d/Linear layer.

    Shows why per-tensor scales waste levels: channel ranges within one layer differ by large factors.
    ``models`` is one model or a dict label → model with the same layer names (e.g. as trained and with
    BatchNorm folded), drawn side by side; each layer's tick says how far its largest channel range is
    from its smallest (the "spread"). Returns a ``ChannelRanges`` (figure, ranges, spread); the figure is
    displayed once when ``show``.
    """
    variants = models if isinstance(models, dict) else {"weights": models}
    if not variants:
        raise ValueError("models is an empty dict: pass a model or a dict label -> model")
    ranges = {label: _channel_ranges(model) for label, model in variants.items()}
    layers = list(next(iter(ranges.values())))
    for label, layer_ranges in ranges.items():
        if list(layer_ranges) != layers:
            raise ValueError(f"models must have the same Conv2d/Linear layers: {label!r} has {list(layer_ranges)}, "
                             f"the first has {layers}")
    n = len(variants)
    width = 0.8 / n
    with plt.ioff():
        figure, ax = plt.subplots(figsize=(1.4 * len(layers) * max(1, n * 0.8) + 2, 3.6), layout="constrained")
    for i, (label, layer_ranges) in enumerate(ranges.items()):
        positions = [j + 1 + (i - (n - 1) / 2) * width for j in range(len(layers))]
        boxes = ax.boxplot([layer_ranges[layer].numpy() for layer in layers], positions=positions,
                           widths=width * 0.85, patch_artist=True, manage_ticks=False)
        for box in boxes["boxes"]:
            box.set_facecolor(f"C{i}")
            box.set_alpha(0.5)
        boxes["boxes"][0].set_label(label)
    handle = ChannelRanges(figure, ranges)
    ticks = [layer + "\n" + " / ".join(f"{handle.spread[label][layer]:.1f}×" for label in ranges) for layer in layers]
    ax.set_xticks(range(1, len(layers) + 1), ticks)
    ax.set_yscale("log")
    ax.set_ylabel("max |w| per output channel")
    ax.set_xlabel("layer (below: largest / smallest channel range" + (", " + " / ".join(ranges) if n > 1 else "")
                  + ")")
    ax.set_title("Per-channel weight ranges (one box per layer" + (" and variant)" if n > 1 else ")"))
    if n > 1:
        ax.legend(loc="best")
    if show:
        display(figure)
    plt.close(figure)
    return handle
