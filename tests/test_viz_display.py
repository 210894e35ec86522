"""Every widget and plot helper of lowbit.viz shows its figure exactly once when it is a cell's last line.

A helper that displays its figure and also returns it makes Jupyter show the figure a second time (as the
cell's result). Run the calls the way a notebook does, in an IPython shell, and count what is published.
"""
from __future__ import annotations

import inspect

import pytest
import IPython
from IPython.testing.globalipapp import start_ipython
from IPython.utils.capture import capture_output

from lowbit.viz import kmeans, linear, qat

SETUP = """
import torch
from torch import nn
from lowbit import viz
weights = torch.randn(2000, generator=torch.Generator().manual_seed(0)) * 0.1
activations = torch.relu(torch.randn(2000, generator=torch.Generator().manual_seed(1)))
model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4, 2))
"""
CALLS = {
    "quantization_explorer": "viz.linear.quantization_explorer(weights)",
    "clipping_explorer": "viz.linear.clipping_explorer(activations, num_thresholds=8)",
    "channel_range_boxplot": "viz.linear.channel_range_boxplot(model)",
    "kmeans_explorer": "viz.kmeans.kmeans_explorer(weights, iters=5)",
    "ste_explorer": "viz.qat.ste_explorer()",
    "training_curves": "viz.qat.training_curves({'W4A4': [2.0, 1.0, 0.5]}, window=2)",
}
NOT_PLOTS = {"has_widget_frontend", "uniform_levels", "lsq_raw", "smoothed"}


def test_every_plot_helper_is_listed():
    public = {name for module in (linear, kmeans, qat) for name in module.__all__
              if inspect.isfunction(getattr(module, name)) and name not in NOT_PLOTS}
    assert public == set(CALLS)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_figure_is_shown_once(name):
    shell = IPython.get_ipython() or start_ipython()
    shell.run_cell(SETUP).raise_error()
    with capture_output() as captured:
        run = shell.run_cell(CALLS[name])
    run.raise_error()
    assert len(captured.outputs) == 1, f"{CALLS[name]} displayed {len(captured.outputs)} outputs"
    shown_again, _ = shell.display_formatter.format(run.result)       # what Jupyter shows as the cell's result
    assert shown_again == {}, f"{CALLS[name]} returns {type(run.result).__name__}, which Jupyter shows again"
