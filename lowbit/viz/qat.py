"""QAT widget: a fake quantizer, the gradients its estimator passes back, and where the step wants to go.

``ste_explorer`` takes the quantizer it visualizes — ``quantize_fn(x, step, bits) -> y`` built on the
student's straight-through or LSQ function — with lowbit's LSQ (gradient scale 1, the paper's raw
gradients) as the default, and returns an ``Explorer`` (see ``lowbit.viz.linear``): ``.controls``,
``.stats``, ``.figure``, ``.show()``. Live under ipympl's ``%matplotlib widget``; one static figure at the
default settings without a widget front end. ``training_curves`` plots the per-batch losses of several QAT runs
(a static figure: nothing to control).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import ipywidgets as widgets
from IPython.display import display
import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle
import torch

from lowbit.quant.linear import quantized_range
from lowbit.quant.qat import lsq_fake_quantize
from lowbit.viz.linear import Explorer, _finish, has_widget_frontend

__all__ = ["ste_explorer", "lsq_raw", "training_curves", "smoothed", "TrainingCurves"]

QuantizeFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def lsq_raw(x: torch.Tensor, step: torch.Tensor, bits: int) -> torch.Tensor:
    """lowbit's LSQ quantizer (signed) with gradient scale 1: the paper's unscaled gradients."""
    return lsq_fake_quantize(x, step, bits, signed=True, grad_scale=1.0)


def _gradients(quantize_fn: QuantizeFn, x: torch.Tensor, step: float, bits: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(y, ∂y_i/∂x_i, ∂y_i/∂step or None): the step is one tensor per point so the gradient is per point."""
    xs = x.clone().requires_grad_()
    steps = torch.full_like(x, step).requires_grad_()
    y = quantize_fn(xs, steps, bits)
    if not isinstance(y, torch.Tensor) or y.shape != x.shape:
        raise ValueError(f"quantize_fn returned {type(y).__name__} of shape {getattr(y, 'shape', None)}; "
                         f"expected a tensor of shape {tuple(x.shape)}")
    if not y.requires_grad:
        raise ValueError("quantize_fn's output has no gradient: a quantizer for training must let gradients "
                         "through (straight-through estimator), not return a detached or integer tensor")
    y.sum().backward()
    d_x = xs.grad if xs.grad is not None else torch.zeros_like(x)
    return y.detach(), d_x, steps.grad


def _mse_step_gradient(quantize_fn: QuantizeFn, sample: torch.Tensor, step: float, bits: int) -> tuple[float, float | None]:
    """MSE of quantizing ``sample`` and d MSE / d step (None when the quantizer gives the step no gradient)."""
    step_t = torch.tensor(step, requires_grad=True)
    y = quantize_fn(sample, step_t, bits)
    mse = (y - sample).square().mean()
    if not mse.requires_grad:
        return float(mse), None
    mse.backward()
    return float(mse.detach()), (None if step_t.grad is None else float(step_t.grad))


def ste_explorer(quantize_fn: QuantizeFn = lsq_raw, bits: int = 3, step: float = 0.5, x_range: float = 3.0,
                 show: bool = True, seed: int = 0) -> Explorer:
    """The quantizer's staircase, its gradient to the input and to the step, on ``x`` in ``±x_range``.

    Controls: ``bits`` (2–8) and ``step`` (log slider, 0.01–2). Top: ``y = quantize_fn(x, step, bits)``
    against the identity. Middle: ∂y/∂x (the straight-through mask: 1 inside the clip range). Bottom: ∂y/∂s
    per point (LSQ: round(x/s) − x/s inside, −Q_N / Q_P outside; absent for a fixed-step STE).
    Stats: levels, clip range, clipped fraction and MSE of 20,000 N(0, 1) samples, and d MSE / d step on
    them — negative: a larger step would lower the error (clipping dominates); positive: a smaller one
    (rounding dominates).
    """
    x = torch.linspace(-x_range, x_range, 1201)
    sample = torch.randn(20_000, generator=torch.Generator().manual_seed(seed))
    live = has_widget_frontend()
    controls = {
        "bits": widgets.IntSlider(value=bits, min=2, max=8, description="bits", continuous_update=False),
        "step": widgets.FloatLogSlider(value=step, base=10, min=-2, max=0.3, step=0.05, description="step s",
                                       continuous_update=False, readout_format=".3f"),
    }
    with plt.ioff():
        figure, (ax_y, ax_dx, ax_ds) = plt.subplots(3, 1, figsize=(7, 6.2), sharex=True, layout="constrained",
                                                    gridspec_kw={"height_ratios": [2, 1, 1.4]})
    ax_y.plot(x.numpy(), x.numpy(), color="0.6", linestyle="dashed", linewidth=0.8, label="identity")
    (y_line,) = ax_y.plot(x.numpy(), x.numpy(), color="C3", linewidth=1.2, label="fake-quantized")
    ax_y.set_ylabel("y")
    ax_y.legend(loc="upper left")
    (dx_line,) = ax_dx.plot(x.numpy(), torch.ones_like(x).numpy(), color="C0", linewidth=1.2)
    ax_dx.set_ylim(-0.15, 1.15)
    ax_dx.set_ylabel("∂y/∂x")
    (ds_line,) = ax_ds.plot(x.numpy(), torch.zeros_like(x).numpy(), color="C2", linewidth=1.0)
    ax_ds.axhline(0, color="0.3", linewidth=0.5)
    ax_ds.set_ylabel("∂y/∂s")
    ax_ds.set_xlabel("x")
    clip_marks = [ax.add_patch(Rectangle((0, 0), 0, 1, transform=ax.get_xaxis_transform(), color="C1", alpha=0.08))
                  for ax in (ax_y, ax_dx, ax_ds)]
    no_step_gradient = ax_ds.text(0.5, 0.5, "", transform=ax_ds.transAxes, ha="center", va="center")
    title = ax_y.set_title("")

    def update() -> dict[str, Any]:
        n_bits, step_now = controls["bits"].value, float(controls["step"].value)
        q_min, q_max = quantized_range(n_bits, True)
        y, d_x, d_step = _gradients(quantize_fn, x, step_now, n_bits)
        y_line.set_ydata(y.numpy())
        dx_line.set_ydata(d_x.numpy())
        if d_step is None:
            ds_line.set_ydata(torch.full_like(x, float("nan")).numpy())
            no_step_gradient.set_text("no gradient reaches the step (fixed-step STE)")
        else:
            ds_line.set_ydata(d_step.numpy())
            no_step_gradient.set_text("")
            ax_ds.set_ylim(q_min - 0.8, q_max + 0.8)
        low, high = q_min * step_now, q_max * step_now
        for mark in clip_marks:  # shade the range the grid covers; outside it values are clipped
            mark.set_x(low)
            mark.set_width(high - low)
        mse, d_mse = _mse_step_gradient(quantize_fn, sample, step_now, n_bits)
        clipped = float(((sample < low) | (sample > high)).float().mean())
        title.set_text(f"{n_bits} bits, step {step_now:.3g}: grid [{low:.3g}, {high:.3g}], MSE on N(0,1) {mse:.3g}")
        return {"bits": n_bits, "step": step_now, "levels": q_max - q_min + 1, "clip_low": low, "clip_high": high,
                "clipped_fraction": clipped, "mse": mse,
                "d_mse_d_step": float("nan") if d_mse is None else d_mse}

    return _finish(Explorer("ste_explorer", figure, controls, update, live), show)


def smoothed(values: Sequence[float], window: int) -> torch.Tensor:
    """Trailing moving average of ``values`` (float64 [n]): point i averages the last ``min(i + 1, window)`` values.
    NaN and infinite losses stay visible as NaN."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an int >= 1, got {window!r}")
    v = torch.as_tensor(list(values), dtype=torch.float64)
    if v.ndim != 1:
        raise ValueError(f"values must be a flat sequence of numbers, got shape {tuple(v.shape)}")
    finite = torch.isfinite(v)
    sums = torch.cumsum(torch.where(finite, v, 0.0), 0)
    bad = torch.cumsum((~finite).to(torch.float64), 0)
    shifted = lambda c: torch.cat([torch.zeros(window, dtype=torch.float64), c])[: v.numel()]  # noqa: E731
    counts = torch.clamp(torch.arange(1, v.numel() + 1, dtype=torch.float64), max=window)
    mean = (sums - shifted(sums)) / counts
    return torch.where(bad - shifted(bad) > 0, torch.full_like(mean, math.nan), mean)


class TrainingCurves:
    """What ``training_curves`` returns: ``.figure`` and ``.final`` (label → last smoothed loss). It was displayed
    by the call already, so as a cell's last value it shows nothing more."""

    def __init__(self, figure: plt.Figure, final: dict[str, float]) -> None:
        self.figure, self.final = figure, final

    def _ipython_display_(self) -> None:   # the call displayed the figure; a bare call shows nothing more
        return None

    def __repr__(self) -> str:
        return "TrainingCurves(" + ", ".join(f"{label}: {loss:.3g}" for label, loss in self.final.items()) + ")"


def training_curves(curves: Mapping[str, Sequence[float]], window: int = 8, reference: float | None = None,
                    title: str = "QAT training loss", show: bool = True) -> TrainingCurves:
    """Per-batch training losses of several runs, ``{label: losses}``, smoothed over ``window`` batches (the raw
    losses faint behind). ``reference``: a horizontal line (e.g. ln 10, the loss of a uniform guess over 10
    classes). Runs with NaN losses are marked "NaN" in the legend. Displayed once when ``show``; returns a
    ``TrainingCurves`` (its figure closed, so it is not shown twice)."""
    if not curves:
        raise ValueError("training_curves needs at least one run")
    with plt.ioff():
        figure, ax = plt.subplots(figsize=(7, 3.6), layout="constrained")
    final = {}
    for i, (label, losses) in enumerate(curves.items()):
        raw = torch.as_tensor(list(losses), dtype=torch.float64)
        if raw.numel() == 0:
            raise ValueError(f"run {label!r} has no losses")
        steps = torch.arange(1, raw.numel() + 1).numpy()
        has_nan = not bool(torch.isfinite(raw).all())
        ax.plot(steps, raw.numpy(), color=f"C{i}", alpha=0.2, linewidth=0.8)
        smooth = smoothed(raw.tolist(), window)
        final[label] = float(smooth[-1])
        ax.plot(steps, smooth.numpy(), color=f"C{i}", linewidth=1.6, label=f"{label} (NaN)" if has_nan else label)
    if reference is not None:
        ax.axhline(reference, color="0.4", linestyle="dotted", linewidth=1.0, label=f"{reference:.3g}")
    ax.set_xlabel("batch")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize="small")
    if show:
        display(figure)
    plt.close(figure)
    return TrainingCurves(figure, final)
