"""Lab 5 widget: AdaRound's soft rounding h(V) on one layer, moving from soft to hard as β anneals.

``rounding_explorer`` optimizes one layer's rounding once, AdaRound's way (Nagel et al. 2020: V from
``init_v``, Adam on V, the reconstruction loss after the activation plus λ·``rounding_regularizer`` with β from
``beta_schedule``, no regularizer during the warm start), recording V along the way; a slider then walks
through the recorded iterations. It calls the functions it visualizes — the student's ``rectified_sigmoid``,
``init_v``, ``rounding_regularizer`` and ``beta_schedule``, as a mapping like the ``functions=`` argument of
``lowbit.quant.adaround.adaround_model`` (missing names: lowbit's references, looked up by name so that
importing this module does not reach them) — and returns an ``Explorer`` (see ``lowbit.viz.linear``):
``.controls``, ``.stats``, ``.figure``, ``.show()``. Live under ipympl's ``%matplotlib widget``; one static
figure at the default settings without a widget front end.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from torch import Tensor

from lowbit.quant.graded import LAB5_REFERENCES, check_functions, resolve_function
from lowbit.quant.validate import check_bits, check_choice, check_float_tensor, check_positive_int, quantized_range
from lowbit.viz.linear import Explorer, _finish, has_widget_frontend

__all__ = ["rounding_explorer", "FUNCTION_NAMES", "RoundingTrace", "trace_rounding"]

#: The graded functions the widget calls (keys of ``functions``).
FUNCTION_NAMES = ("rectified_sigmoid", "init_v", "rounding_regularizer", "beta_schedule")
#: AdaRound's warm start (AIMET's default): the regularizer is off for the first 20 % of the iterations.
_WARM_START = 0.2
_MAX_POINTS = 3000          # weights drawn on the h(V) curve (a fixed, seeded subset of a large layer)


class RoundingTrace:
    """One AdaRound optimization, recorded: ``steps`` (the iterations at which V was saved, 0 and the last
    included), ``v`` (V at each, float32 ``[C_out, K]``), ``beta`` (β at each step, None during the warm start),
    ``regularizer`` (the regularizer's value at each saved step, at that step's β — or at the schedule's
    start during the warm start, where it is not applied), ``base`` (floor(w / s)), ``nearest`` (rounding to
    nearest, clamped), ``q_min`` / ``q_max`` and ``output_mse(q)``: the layer's output error with integers q
    against the targets, over every input row."""

    def __init__(self, steps: list[int], v: list[Tensor], beta: list[float | None], regularizer: list[float],
                 base: Tensor, nearest: Tensor, q_range: tuple[int, int], output_mse: Callable[[Tensor], float]
                 ) -> None:
        self.steps, self.v, self.beta, self.regularizer = steps, v, beta, regularizer
        self.base, self.nearest = base, nearest
        self.q_min, self.q_max = q_range
        self.output_mse = output_mse

    def hard(self, index: int) -> Tensor:
        """The integers AdaRound would return if it stopped at saved step ``index``: floor + (V >= 0), clamped."""
        return torch.clamp(self.base + (self.v[index] >= 0).to(torch.float32), self.q_min, self.q_max)


def _functions(functions: Mapping[str, Callable] | None) -> dict[str, Callable]:
    chosen = check_functions(functions, {name: LAB5_REFERENCES[name] for name in FUNCTION_NAMES})
    return {name: resolve_function(chosen, name, LAB5_REFERENCES) for name in FUNCTION_NAMES}


def _activation(out: Tensor, activation: str) -> Tensor:
    return torch.relu(out) if activation == "relu" else out


def trace_rounding(weight: Tensor, scale: Tensor, inputs: Tensor, targets: Tensor, bits: int,
                   bias: Tensor | None = None, activation: str = "relu", iterations: int = 200, lr: float = 1e-2,
                   reg_weight: float = 0.01, batch_size: int = 256, seed: int = 0, records: int = 50,
                   functions: Mapping[str, Callable] | None = None) -> RoundingTrace:
    """Run AdaRound on one layer with ``functions`` (see the module docstring) and record V ``records + 1`` times.

    Arguments as ``lowbit.quant.adaround.adaround_layer`` (weight ``[C_out, K]``, scale ``[C_out]``, inputs
    ``[N, K]``, targets ``[N, C_out]`` after ``activation``); the same algorithm and the same seeded row draws,
    so the last recorded V rounds as ``adaround_layer`` would (with the same functions).
    """
    fns = _functions(functions)
    w = check_float_tensor(weight, "weight", nonempty=True, finite=True).detach().to(torch.float32)
    if w.ndim != 2:
        raise ValueError(f"weight must be [C_out, K] (flatten a conv weight), got shape {tuple(w.shape)}")
    x = check_float_tensor(inputs, "inputs", nonempty=True).detach().to(torch.float32)
    t = check_float_tensor(targets, "targets", nonempty=True).detach().to(torch.float32)
    if x.ndim != 2 or x.shape[1] != w.shape[1] or tuple(t.shape) != (x.shape[0], w.shape[0]):
        raise ValueError(f"inputs must be [N, {w.shape[1]}] and targets [N, {w.shape[0]}], got {tuple(x.shape)} "
                         f"and {tuple(t.shape)}")
    s = check_float_tensor(torch.as_tensor(scale), "scale").detach().to(torch.float32).reshape(-1)
    if s.numel() != w.shape[0] or not bool((s > 0).all()):
        raise ValueError(f"scale must be [{w.shape[0]}] (one per output channel) and > 0")
    check_choice("activation", activation, ("relu", "none"))
    iterations, records = check_positive_int(iterations, "iterations"), check_positive_int(records, "records")
    q_range = quantized_range(check_bits(bits, low=2, high=16), signed=True)
    b = None if bias is None else check_float_tensor(bias, "bias").detach().to(torch.float32)
    base = torch.floor(w / s[:, None])
    keep = sorted({round(i * iterations / records) for i in range(records + 1)})
    steps, saved, betas, regs = [], [], [], []
    start_beta = float(fns["beta_schedule"](0, iterations))

    def record(step: int, v: Tensor) -> None:
        beta = None if step < _WARM_START * iterations else float(fns["beta_schedule"](step, iterations))
        with torch.no_grad():
            reg = float(fns["rounding_regularizer"](v.detach().clone(), start_beta if beta is None else beta))
        steps.append(step)
        saved.append(v.detach().clone())
        betas.append(beta)
        regs.append(reg)

    v = torch.as_tensor(fns["init_v"](w.clone(), s.clone()), dtype=torch.float32).detach().clone()
    v.requires_grad_(True)
    optimizer = torch.optim.Adam([v], lr=float(lr))
    generator = torch.Generator().manual_seed(seed)
    with torch.enable_grad():
        for step in range(iterations):
            if step in keep:
                record(step, v)
            rows = torch.randint(x.shape[0], (batch_size,), generator=generator)
            w_soft = s[:, None] * torch.clamp(base + fns["rectified_sigmoid"](v), *q_range)
            out = x[rows] @ w_soft.T + (0 if b is None else b)
            loss = (_activation(out, activation) - t[rows]).pow(2).mean()
            if step >= _WARM_START * iterations:
                loss = loss + reg_weight * fns["rounding_regularizer"](v, fns["beta_schedule"](step, iterations))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    record(iterations, v)
    nearest = torch.clamp(torch.floor(w / s[:, None] + 0.5), *q_range)

    def output_mse(q: Tensor) -> float:
        out = x @ (s[:, None] * q.to(torch.float32)).T + (0 if b is None else b)
        return float((_activation(out, activation) - t).pow(2).mean())

    return RoundingTrace(steps, saved, betas, regs, base, nearest, q_range, output_mse)


def rounding_explorer(weight: Tensor, scale: Tensor, inputs: Tensor, targets: Tensor, bits: int,
                      bias: Tensor | None = None, activation: str = "relu", iterations: int = 200,
                      functions: Mapping[str, Callable] | None = None, step: int | None = None, seed: int = 0,
                      records: int = 50, show: bool = True, **options: Any) -> Explorer:
    """h(V) and a layer's rounding decisions along one AdaRound optimization (``trace_rounding``).

    Arguments as ``adaround_layer`` (``options``: ``lr``, ``reg_weight``, ``batch_size``), plus ``functions``
    (``FUNCTION_NAMES``; missing: lowbit's references), ``records`` (how many snapshots of V) and ``step``, the
    iteration shown first (default: the middle of the annealing).

    Control: ``step`` (a slider over the recorded iterations; a play button beside it in JupyterLab). Drawn: your
    ``rectified_sigmoid`` h(V) with the plain sigmoid dotted and the layer's weights as points (V, h(V)) on it
    (up to 3,000, a fixed subset), coloured by their current decision (round up where V ≥ 0); the histogram of
    h over the layer; below, β (your ``beta_schedule``; the warm start shaded) and the fraction of soft weights
    (0 < h < 1) against the iteration, a marker at the current one. Numbers: iteration, β, regularizer value,
    fraction soft, fraction rounded up, fraction rounded unlike nearest, output MSE of the hard rounding at this
    iteration and of rounding to nearest.
    """
    trace = trace_rounding(weight, scale, inputs, targets, bits, bias=bias, activation=activation,
                           iterations=iterations, seed=seed, records=records, functions=functions, **options)
    h_fn = _functions(functions)["rectified_sigmoid"]
    soft = [_as_h(h_fn, v) for v in trace.v]
    soft_fraction = [float(((h > 0) & (h < 1)).float().mean()) for h in soft]
    count = trace.v[0].numel()
    subset = torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:_MAX_POINTS]
    nearest_mse = trace.output_mse(trace.nearest)
    default = trace.steps[len(trace.steps) // 2 + len(trace.steps) // 5] if step is None else step
    if default not in trace.steps:
        default = min(trace.steps, key=lambda s: abs(s - default))
    controls = {"step": widgets.SelectionSlider(options=trace.steps, value=default, description="iteration",
                                                continuous_update=True, layout=widgets.Layout(width="28em"))}
    live = has_widget_frontend()
    with plt.ioff():
        figure = plt.figure(figsize=(8.6, 5.6), layout="constrained")
        grid = figure.add_gridspec(2, 2, height_ratios=[1.5, 1])
        ax_h, ax_hist, ax_t = figure.add_subplot(grid[0, 0]), figure.add_subplot(grid[0, 1]), \
            figure.add_subplot(grid[1, :])
    grid_v = torch.linspace(-6, 6, 241)
    ax_h.plot(grid_v.numpy(), _as_h(h_fn, grid_v).numpy(), color="0.3", linewidth=1.4, label="h(V), yours")
    ax_h.plot(grid_v.numpy(), torch.sigmoid(grid_v).numpy(), color="0.6", linestyle="dotted", label="sigmoid(V)")
    ax_h.axhline(0.5, color="0.8", linewidth=0.8)
    ax_h.axvline(0.0, color="0.8", linewidth=0.8)
    points = ax_h.scatter([], [], s=6, alpha=0.5)
    ax_h.set_xlim(-6, 6)
    ax_h.set_ylim(-0.05, 1.05)
    ax_h.set_xlabel("V")
    ax_h.set_ylabel("h(V): offset above floor(w / s)")
    ax_h.legend(loc="upper left", fontsize="small")
    edges = torch.linspace(0, 1, 21)
    stairs = ax_hist.stairs(torch.zeros(20).numpy(), edges.numpy(), fill=True, color="C0", alpha=0.6)
    ax_hist.set_xlabel("h(V)")
    ax_hist.set_ylabel("weights")
    ax_hist.set_yscale("symlog", linthresh=10)
    ax_hist.set_ylim(0, count * 1.5)
    steps_t = torch.tensor(trace.steps, dtype=torch.float32)
    betas = [float("nan") if beta is None else beta for beta in trace.beta]
    ax_t.axvspan(0, _WARM_START * iterations, color="0.9", label="warm start (no regularizer)")
    ax_t.plot(steps_t.numpy(), betas, color="C3", label="β (yours)")
    ax_t.set_xlabel("iteration")
    ax_t.set_ylabel("β", color="C3")
    ax_t.set_xlim(0, iterations)
    ax_frac = ax_t.twinx()
    ax_frac.plot(steps_t.numpy(), soft_fraction, color="C0", label="fraction soft (0 < h < 1)")
    ax_frac.set_ylim(0, 1.02)
    ax_frac.set_ylabel("fraction soft", color="C0")
    marker = ax_t.axvline(default, color="k", linewidth=1)
    handles = ax_t.get_legend_handles_labels()[0] + ax_frac.get_legend_handles_labels()[0]
    ax_t.legend(handles=handles, loc="center right", fontsize="small")
    title = ax_h.set_title("")

    def update() -> dict[str, Any]:
        chosen = controls["step"].value
        index = trace.steps.index(chosen)
        v, h = trace.v[index].reshape(-1), soft[index].reshape(-1)
        up = v[subset] >= 0
        points.set_offsets(torch.stack([v[subset].clamp(-6, 6), h[subset]], dim=1).numpy())
        points.set_color([("C3" if u else "C0") for u in up.tolist()])
        counts = torch.histogram(h.clamp(0, 1), bins=edges).hist
        stairs.set_data(counts.numpy(), edges.numpy())
        marker.set_xdata([chosen, chosen])
        hard = trace.hard(index)
        beta = trace.beta[index]
        title.set_text(f"iteration {chosen} of {iterations}: " + ("warm start" if beta is None else f"β = {beta:.1f}"))
        return {"iteration": chosen, "beta": "warm start (regularizer off)" if beta is None else beta,
                "regularizer": trace.regularizer[index], "soft_fraction": soft_fraction[index],
                "rounded_up_fraction": float((trace.v[index] >= 0).float().mean()),
                "changed_from_nearest": float((hard != trace.nearest).float().mean()),
                "output_mse": trace.output_mse(hard), "nearest_output_mse": nearest_mse}

    explorer = Explorer("rounding_explorer", figure, controls, update, live)
    explorer.trace = trace
    if explorer.layout is not None:
        play = widgets.Play(min=0, max=len(trace.steps) - 1, step=1, interval=150, value=trace.steps.index(default),
                            description="play")
        index_slider = controls["step"]
        play.observe(lambda change: setattr(index_slider, "value", trace.steps[change["new"]]), names="value")
        explorer.layout.children[0].children = (play, *explorer.layout.children[0].children)
        figure.canvas.header_visible = False
    return _finish(explorer, show)


def _as_h(h_fn: Callable, v: Tensor) -> Tensor:
    """``h_fn(v)`` as a detached float32 tensor of v's shape (a clear error if the student's function is off)."""
    with torch.no_grad():
        h = h_fn(v.detach().clone())
    if not isinstance(h, Tensor) or tuple(h.shape) != tuple(v.shape):
        got = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
        raise ValueError(f"rectified_sigmoid returned {got}; expected a tensor of shape {tuple(v.shape)}")
    return h.detach().to(torch.float32)

