"""lowbit.viz.mixed: drive the allocation explorer's budget slider and check what it allocates, draws and reports."""
from __future__ import annotations

import itertools

import pytest
import torch

from lowbit.quant import mixed
from lowbit.viz import mixed as viz

CHOICES = (8, 4, 2)


@pytest.fixture(scope="module")
def problem():
    """Six products: drops that grow as the width falls (one product gains at 4 bits), costs 1 to 40."""
    g = torch.Generator().manual_seed(0)
    sens = torch.rand(6, 3, generator=g) * torch.tensor([0.001, 0.01, 0.2])
    sens[2, 1] = -0.004                                       # quantizing product 2 to INT4 helps
    return {"sensitivities": sens, "costs": [40, 12, 3, 25, 1, 9],
            "names": ["patch_embed", "blocks.0.attn.qkv", "blocks.0.attn.qk", "blocks.0.mlp.fc1",
                      "blocks.0.mlp.fc2", "head"]}


def _brute_force(sens, costs, budget):
    feasible = [c for c in itertools.product(range(3), repeat=len(costs))
                if sum(n * CHOICES[i] for n, i in zip(costs, c)) <= budget]
    return min(float(sens[torch.arange(len(costs)), torch.tensor(c)].sum()) for c in feasible)


def test_the_slider_allocates_with_the_given_function_and_redraws(problem):
    explorer = viz.allocation_explorer(**problem, show=False)
    total = sum(problem["costs"])
    for avg in (2.0, 3.1, 4.0, 5.55, 8.0):
        explorer.controls["average_bits"].value = avg
        stats = explorer.stats
        budget = int(avg * total + 1e-9)
        assert stats["budget"] == budget and stats["bits_spent"] <= budget
        bits = list(stats["bits"].values())
        assert bits == mixed.allocate_bits(problem["sensitivities"], problem["costs"], budget)
        assert stats["predicted_drop_pt"] == pytest.approx(100 * _brute_force(problem["sensitivities"],
                                                                               problem["costs"], budget))
        assert sum(stats[f"products_at_{b}_bits"] for b in CHOICES) == 6
        assert sum(stats[f"multiplications_at_{b}_bits"] for b in CHOICES) == pytest.approx(1.0)
        assert stats["average_bits"] == pytest.approx(stats["bits_spent"] / total)
        heights = [bar.get_height() for bar in explorer.figure.axes[1].patches]
        assert heights == bits                                 # the "bits chosen" bars follow the allocation
        marks = explorer.figure.axes[0].collections[0].get_offsets()
        chosen_drop = [100 * float(problem["sensitivities"][p, CHOICES.index(b)]) for p, b in enumerate(bits)]
        assert [float(y) for y in marks[:, 1]] == pytest.approx(chosen_drop)
        assert list(explorer.figure.axes[2].lines[-1].get_xdata()) == [avg, avg]
    assert explorer.stats["products_at_2_bits"] == 0 and explorer.stats["bits"]["0.qk"] == 4   # 8.0: INT4 helps
    explorer.controls["average_bits"].value = 2.0
    assert set(explorer.stats["bits"].values()) == {2}
    assert list(explorer.stats["bits"]) == ["patch", "0.qkv", "0.qk", "0.fc1", "0.fc2", "head"]


def test_the_budget_curve_is_the_allocator_at_each_budget(problem):
    explorer = viz.allocation_explorer(**problem, points=11, show=False)
    assert len(explorer.curve) == 11
    drops = [a.predicted_drop for a in explorer.curve]
    assert drops == sorted(drops, reverse=True)                 # more bits never predict a larger drop
    line = explorer.figure.axes[2].lines[0]
    assert list(line.get_xdata()) == pytest.approx([2 + 0.6 * i for i in range(11)])
    assert list(line.get_ydata()) == pytest.approx([100 * d for d in drops])
    share = explorer.figure.axes[3].lines[0].get_ydata()
    assert share[0] == pytest.approx(1.0)                       # everything at <= 4 bits ...
    assert share[-1] == pytest.approx(3 / 90)                   # ... and at 8 bits on average only product 2 (it gains)


def test_the_students_allocator_is_the_one_called(problem, capsys):
    calls = []

    def everything_at_two(sensitivities, costs, budget, choices=CHOICES):   # a wrong but valid allocator
        calls.append(budget)
        return [2] * len(costs)

    explorer = viz.allocation_explorer(**problem, allocate_bits=everything_at_two, points=5, show=False)
    assert len(calls) == 6                                      # 5 curve points + the first position (cached)
    explorer.controls["average_bits"].value = 7.0
    assert calls[-1] == int(7.0 * sum(problem["costs"])) and explorer.stats["products_at_2_bits"] == 6

    def breaks_above_six(sensitivities, costs, budget, choices=CHOICES):
        if budget > 6 * sum(costs):
            raise ValueError("budget too large for this allocator")
        return mixed.allocate_bits(sensitivities, costs, budget, choices)

    broken = viz.allocation_explorer(**problem, allocate_bits=breaks_above_six, points=3, average_bits=2.5,
                                     show=False)
    assert [a is None for a in broken.curve] == [False, False, True]           # the curve has a gap at 8 bits
    assert "raised at 1 of 3 budgets of the curve" in capsys.readouterr().out
    broken.controls["average_bits"].value = 7.5                 # the error is shown, not raised
    assert broken.stats == {"error": "ValueError: budget too large for this allocator"}
    assert "your function raised ValueError" in capsys.readouterr().out
    invalid = viz.allocation_explorer(**problem, allocate_bits=lambda s, c, b, ch=CHOICES: [3] * 6, points=2,
                                      show=False)
    assert "expected 6 widths, each one of (8, 4, 2)" in invalid.stats["error"]
    assert capsys.readouterr().err == ""


def test_bad_inputs_and_the_static_figure(problem, capsys):
    with pytest.raises(ValueError, match="sensitivities must be"):
        viz.allocation_explorer(problem["sensitivities"][:, :2], problem["costs"], show=False)
    with pytest.raises(ValueError, match="costs must be 6 positive ints"):
        viz.allocation_explorer(problem["sensitivities"], [1.5] * 6, show=False)
    with pytest.raises(ValueError, match="names must name the 6 products"):
        viz.allocation_explorer(problem["sensitivities"], problem["costs"], names=["a"], show=False)
    with pytest.raises(ValueError, match="average_bits must be between 2 and 8"):
        viz.allocation_explorer(**problem, average_bits=9, show=False)
    explorer = viz.allocation_explorer(**problem, points=3, show=True)   # no widget front end: a static figure
    out = capsys.readouterr()
    assert "Figure" in out.out and out.err == ""
    assert explorer.layout is None and explorer.stats["budget"] == 4 * sum(problem["costs"])
    assert viz.short_name("blocks.5.attn.av") == "5.av" and viz.short_name("head") == "head"
