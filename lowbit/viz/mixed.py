"""Lab 6 widget: a mixed-precision bit allocation of a network's matrix products as the budget moves.

``allocation_explorer`` draws, for every product, the accuracy drop measured with that product alone at each
bit width (the sensitivity bars), the widths an allocator chooses at the current budget, and the budget curve:
the additive model's predicted drop of the chosen allocation against the budget, in average bits per
multiplication. It calls the allocator it visualizes — the student's ``allocate_bits`` (lowbit's reference,
looked up by name so that importing this module does not reach it, when none is given) — once per budget on the
curve and once per slider move, and returns an ``Explorer`` (see ``lowbit.viz.linear``): ``.controls``,
``.stats``, ``.figure``, ``.show()``. Live under ipympl's ``%matplotlib widget``; one static figure at the default
budget without a widget front end.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from torch import Tensor

from lowbit.quant.graded import LAB6_REFERENCES, resolve_function
from lowbit.viz.linear import Explorer, _finish, has_widget_frontend

__all__ = ["allocation_explorer", "short_name", "Allocation"]

_WIDTH_COLORS = ("C0", "C1", "C3", "C2", "C4", "C5", "C6", "C7")   # one per choice, widest first


def short_name(name: str) -> str:
    """A product's name for an axis label: ``blocks.3.attn.qkv`` → ``3.qkv``, ``patch_embed`` → ``patch``."""
    parts = [p for p in name.split(".") if p not in ("blocks", "attn", "mlp")]
    return ".".join(parts).replace("patch_embed", "patch")


class Allocation:
    """One allocation: ``budget`` (multiply-weighted bits), ``bits`` per product, ``spent`` (Σ costs·bits),
    ``predicted_drop`` (Σ of the chosen sensitivities, the additive model) and ``multiply_fraction[b]`` (share of
    the multiplications at ``b`` bits)."""

    def __init__(self, budget: int, bits: list[int], sensitivities: Tensor, costs: list[int],
                 choices: tuple[int, ...]) -> None:
        self.budget, self.bits = budget, bits
        columns = torch.tensor([choices.index(b) for b in bits])
        self.predicted_drop = float(sensitivities[torch.arange(len(bits)), columns].sum())
        self.spent = sum(n * b for n, b in zip(costs, bits))
        total = sum(costs)
        self.multiply_fraction = {b: sum(n for n, chosen in zip(costs, bits) if chosen == b) / total for b in choices}


def _checked(sensitivities: Any, costs: Any, names: Sequence[str] | None,
             choices: Sequence[int]) -> tuple[Tensor, list[int], list[str], tuple[int, ...]]:
    widths = tuple(choices)
    if not widths or len(set(widths)) != len(widths) or \
            any(isinstance(b, bool) or not isinstance(b, int) or b <= 0 for b in widths):
        raise ValueError(f"choices must be distinct positive ints, got {choices!r}")
    s = torch.as_tensor(sensitivities.detach() if isinstance(sensitivities, Tensor) else sensitivities,
                        dtype=torch.float64)
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] != len(widths) or not bool(torch.isfinite(s).all()):
        raise ValueError(f"sensitivities must be a finite [P, {len(widths)}] table (one column per choice "
                         f"{widths}), got shape {tuple(s.shape)}")
    n = costs.tolist() if isinstance(costs, Tensor) else list(costs)
    if len(n) != s.shape[0] or any(isinstance(c, bool) or not isinstance(c, int) or c <= 0 for c in n):
        raise ValueError(f"costs must be {s.shape[0]} positive ints (multiplications per product), got {costs!r}")
    labels = [f"{p}" for p in range(len(n))] if names is None else [short_name(str(m)) for m in names]
    if len(labels) != len(n):
        raise ValueError(f"names must name the {len(n)} products, got {len(labels)} names")
    return s, n, labels, widths


def allocation_explorer(sensitivities: Tensor | Sequence[Sequence[float]], costs: Sequence[int] | Tensor,
                        allocate_bits: Callable | None = None, names: Sequence[str] | None = None,
                        choices: Sequence[int] = (8, 4, 2), average_bits: float = 4.0, points: int = 25,
                        show: bool = True) -> Explorer:
    """Sensitivity bars, the widths ``allocate_bits`` chooses, and the budget curve, under a budget slider.

    Args:
        sensitivities: ``[P, C]``: accuracy drop (a fraction; may be negative) with product p alone at
            ``choices[c]`` bits. costs: ``P`` positive ints, multiplications per image of each product.
        allocate_bits: ``(sensitivities, costs, budget, choices) -> bits`` (the lab's graded function; default:
            lowbit's reference). names: the products' names (axis labels), e.g. ``lowbit.models.matmul_names``.
        choices: the bit widths. average_bits: the budget shown first, in average bits per multiplication (the
            budget is ``floor(average_bits · Σ costs)`` multiply-weighted bits). points: budgets on the curve.

    Control: ``average_bits`` (a slider from min(choices) to max(choices); the allocator runs when it is
    released). Drawn: per product the measured drop at each width (bars, in points) with the chosen width marked
    under it; the chosen width per product; the curve of the predicted drop against the budget (the allocator at
    ``points`` budgets), a marker at the current one. Numbers: budget, bits spent, average bits, predicted drop
    (the additive model: the sum of the chosen drops), products and share of multiplications at each width.
    """
    s, n, labels, widths = _checked(sensitivities, costs, names, choices)
    allocate = allocate_bits if allocate_bits is not None else resolve_function(None, "allocate_bits",
                                                                                LAB6_REFERENCES)
    if not callable(allocate):
        raise TypeError(f"allocate_bits must be callable, got {type(allocate).__name__}")
    low, high = min(widths), max(widths)
    if not low <= float(average_bits) <= high:
        raise ValueError(f"average_bits must be between {low} and {high} (the narrowest and widest choice), got "
                         f"{average_bits}")
    total = sum(n)
    cache: dict[int, Allocation] = {}

    def allocation(budget: int) -> Allocation:
        if budget not in cache:
            bits = allocate(s.clone(), list(n), budget, widths)
            bits = [int(b) for b in bits]
            if len(bits) != len(n) or any(b not in widths for b in bits):
                raise ValueError(f"allocate_bits returned {bits}: expected {len(n)} widths, each one of {widths}")
            cache[budget] = Allocation(budget, bits, s, n, widths)
        return cache[budget]

    def budget_of(avg: float) -> int:
        return max(low * total, math.floor(avg * total + 1e-9))

    curve_avg = torch.linspace(low, high, max(2, int(points))).tolist()
    controls = {"average_bits": widgets.FloatSlider(value=float(average_bits), min=low, max=high, step=0.05,
                                                    description="avg bits", continuous_update=False,
                                                    readout_format=".2f", layout=widgets.Layout(width="30em"))}
    live = has_widget_frontend()
    with plt.ioff():
        figure = plt.figure(figsize=(7.2, 6.6), layout="constrained")  # beside the 14em readout
        grid = figure.add_gridspec(3, 1, height_ratios=[1.6, 0.8, 1.3])
        ax_s, ax_b, ax_c = (figure.add_subplot(grid[i]) for i in range(3))
    x = torch.arange(len(n), dtype=torch.float64)
    bar_width = 0.8 / len(widths)
    for c, b in enumerate(widths):
        ax_s.bar((x + (c - (len(widths) - 1) / 2) * bar_width).numpy(), (100 * s[:, c]).numpy(), width=bar_width,
                 color=_WIDTH_COLORS[c % len(_WIDTH_COLORS)], label=f"{b} bits alone")
    ax_s.axhline(0, color="0.3", linewidth=0.8)
    ax_s.set_yscale("symlog", linthresh=1.0)
    ax_s.set_ylabel("accuracy drop (pt)")
    ax_s.set_title("sensitivity: each product quantized alone")
    ax_s.legend(fontsize="small", ncol=len(widths), loc="upper left")
    chosen_marks = ax_s.scatter(x.numpy(), torch.zeros(len(n)).numpy(), marker="v", s=22, color="k", zorder=3,
                                label="chosen width")
    bits_bars = ax_b.bar(x.numpy(), [high] * len(n), color="0.7", width=0.8)
    ax_b.set_ylim(0, high * 1.1)
    ax_b.set_yticks(list(widths))
    ax_b.set_ylabel("bits chosen")
    for ax in (ax_s, ax_b):
        ax.set_xlim(-0.6, len(n) - 0.4)
        ax.set_xticks(x.numpy(), labels if ax is ax_b else [], rotation=90, fontsize=6 if len(n) > 20 else 8)
    curve, errors = [], []
    for avg in curve_avg:                        # a failing allocator leaves gaps; the slider shows its error
        try:
            curve.append(allocation(budget_of(avg)))
        except Exception as exc:  # noqa: BLE001 - the student's function: report, do not crash the widget
            curve.append(None)
            errors.append(f"{type(exc).__name__}: {exc}")
    if errors:
        print(f"✗ allocation_explorer: your allocate_bits raised at {len(errors)} of {len(curve)} budgets of the "
              f"curve, first: {errors[0]}")
    nan = float("nan")
    ax_c.plot(curve_avg, [nan if a is None else 100 * a.predicted_drop for a in curve], color="0.3", marker=".",
              label="predicted drop")
    ax_c.set_xlabel("budget: average bits per multiplication")
    ax_c.set_ylabel("predicted drop (pt)")
    ax_c.set_title("the budget curve (your allocate_bits at each budget; the additive model)")
    ax_frac = ax_c.twinx()
    low_width = sorted(widths)[: max(1, len(widths) - 1)]
    ax_frac.plot(curve_avg, [nan if a is None else sum(a.multiply_fraction[b] for b in low_width) for a in curve],
                 color="C1",
                 linestyle="dashed", label=f"share of multiplications at ≤ {max(low_width)} bits")
    ax_frac.set_ylim(0, 1.02)
    ax_frac.set_ylabel("share of multiplications", color="C1")
    marker = ax_c.axvline(float(average_bits), color="k", linewidth=1)
    handles = ax_c.get_legend_handles_labels()[0] + ax_frac.get_legend_handles_labels()[0]
    ax_c.legend(handles=handles, fontsize="small", loc="upper right")
    ax_c.set_xlim(low, high)

    def update() -> dict[str, Any]:
        avg = float(controls["average_bits"].value)
        chosen = allocation(budget_of(avg))
        columns = [widths.index(b) for b in chosen.bits]
        offsets = [float(x[p]) + (c - (len(widths) - 1) / 2) * bar_width for p, c in enumerate(columns)]
        heights = [100 * float(s[p, c]) for p, c in enumerate(columns)]
        chosen_marks.set_offsets(torch.tensor([offsets, heights]).T.numpy())
        for bar, b, c in zip(bits_bars, chosen.bits, columns):
            bar.set_height(b)
            bar.set_color(_WIDTH_COLORS[c % len(_WIDTH_COLORS)])
        marker.set_xdata([avg, avg])
        stats: dict[str, Any] = {"budget": chosen.budget, "bits_spent": chosen.spent,
                                 "average_bits": chosen.spent / total,
                                 "predicted_drop_pt": 100 * chosen.predicted_drop}
        for b in widths:
            stats[f"products_at_{b}_bits"] = sum(1 for chosen_b in chosen.bits if chosen_b == b)
            stats[f"multiplications_at_{b}_bits"] = chosen.multiply_fraction[b]
        stats["bits"] = dict(zip(labels, chosen.bits))
        return stats

    explorer = Explorer("allocation_explorer", figure, controls, update, live)
    explorer.curve = curve
    explorer.allocation = lambda avg: allocation(budget_of(float(avg)))
    if explorer.layout is not None:
        figure.canvas.header_visible = False
    return _finish(explorer, show)
