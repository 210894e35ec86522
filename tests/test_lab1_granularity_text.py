"""Lab 1 Part 2: the spreads the text and the Q1 model answer quote are the ones the box plot computes."""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import torch

import lowbit
from lowbit.viz.linear import channel_range_boxplot

REPO = Path(__file__).resolve().parents[1]
SPREAD = re.compile(r"(\d+\.\d)(?:–(\d+\.\d))?×")


def _cells() -> dict[str, str]:
    notebook = nbformat.read(REPO / "solutions" / "lab1_linear" / "lab1_linear.ipynb", as_version=4)
    return {c.metadata["nbgrader"]["grade_id"]: c.source for c in notebook.cells if "nbgrader" in c.metadata}


def test_quoted_spreads_are_computed_ones():
    model = lowbit.models.pretrained("cnn")
    plot = channel_range_boxplot({"as trained": model, "folded": lowbit.models.fold_batchnorm(model)}, show=False)
    bn_factor = (model.bn1.weight / torch.sqrt(model.bn1.running_var + model.bn1.eps)).abs().detach()
    computed = {f"{v:.1f}" for spreads in plot.spread.values() for v in spreads.values()}
    computed.add(f"{float(bn_factor.max() / bn_factor.min()):.1f}")
    cells = _cells()
    for grade_id in ("part2_intro", "q1_answer"):
        quoted = {n for pair in SPREAD.findall(cells[grade_id]) for n in pair if n}
        assert quoted, f"{grade_id} quotes no spread"
        assert quoted <= computed, f"{grade_id} quotes {sorted(quoted - computed)}, the figure shows {sorted(computed)}"
    assert f"{plot.spread['folded']['conv1']:.1f}×" in cells["q1_answer"]          # the answer cites the folded conv1
    assert "fold_batchnorm(model)" in cells["part2_boxplot"]                         # and the figure shows it
