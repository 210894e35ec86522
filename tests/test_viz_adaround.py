"""lowbit.viz.adaround: drive the rounding explorer's slider and check the numbers and artists it shows."""
from __future__ import annotations

import pytest
import torch

from lowbit.quant import adaround as A
from lowbit.viz import adaround as viz


@pytest.fixture(scope="module")
def layer():
    """A small ReLU layer at 3 bits: weight [12, 40], per-channel scales, 2,048 input rows, float targets."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(12, 40, generator=g) * 0.2
    b = torch.randn(12, generator=g) * 0.05
    x = torch.relu(torch.randn(2048, 40, generator=g))
    return {"weight": w, "scale": w.abs().amax(dim=1) / 3, "inputs": x, "targets": torch.relu(x @ w.T + b),
            "bits": 3, "bias": b}


@pytest.fixture(scope="module")
def explorer(layer):
    return viz.rounding_explorer(**layer, iterations=150, records=30, show=False)


def test_the_last_step_rounds_like_adaround_layer_and_beats_nearest(layer, explorer):
    trace = explorer.trace
    assert trace.steps[0] == 0 and trace.steps[-1] == 150 and len(trace.steps) == 31
    q = A.adaround_layer(**layer, iterations=150)
    assert float((trace.hard(-1) == q).float().mean()) >= 0.99      # the same algorithm, float rounding aside
    explorer.controls["step"].value = 150
    stats = explorer.stats
    assert stats["iteration"] == 150 and stats["beta"] == pytest.approx(2.0)
    assert stats["output_mse"] < stats["nearest_output_mse"]
    assert stats["rounded_up_fraction"] == pytest.approx(float((trace.v[-1] >= 0).float().mean()))
    nearest = torch.clamp(torch.round(layer["weight"] / layer["scale"][:, None]), -4, 3)
    assert stats["changed_from_nearest"] == pytest.approx(float((q != nearest).float().mean()), abs=0.01)


def test_the_slider_walks_from_soft_to_hard(layer, explorer):
    explorer.controls["step"].value = 0
    start = dict(explorer.stats)
    assert start["beta"].startswith("warm start") and start["changed_from_nearest"] == 0
    assert start["output_mse"] == pytest.approx(start["nearest_output_mse"])   # init_v: h(V) = the fractional part
    h0 = A.rectified_sigmoid(A.init_v(layer["weight"], layer["scale"]))
    assert start["soft_fraction"] == pytest.approx(float(((h0 > 0) & (h0 < 1)).float().mean()))
    assert start["regularizer"] == pytest.approx(float(A.rounding_regularizer(A.init_v(layer["weight"],
                                                                                        layer["scale"]), 20.0)),
                                                 rel=1e-4)
    explorer.controls["step"].value = 75
    middle = dict(explorer.stats)
    assert middle["beta"] == pytest.approx(A.beta_schedule(75, 150))
    marker = explorer.figure.axes[2].lines[-1]
    assert list(marker.get_xdata()) == [75, 75]
    explorer.controls["step"].value = 150
    end = explorer.stats
    assert end["soft_fraction"] < middle["soft_fraction"] < start["soft_fraction"]
    assert end["regularizer"] < start["regularizer"]
    counts = explorer.figure.axes[1].patches[0].get_data().values
    assert counts.sum() == layer["weight"].numel()               # the histogram covers every weight
    points = explorer.figure.axes[0].collections[0].get_offsets()
    assert len(points) == layer["weight"].numel()                # 480 weights: all drawn (at most 3,000)


def test_the_students_functions_are_the_ones_used(layer, capsys):
    calls = {"rectified_sigmoid": 0}

    def counted(v, zeta=1.1, gamma=-0.1):
        calls["rectified_sigmoid"] += 1
        return A.rectified_sigmoid(v, zeta, gamma)

    def wrong_way(step, total, warm_start=0.2, start=20.0, end=2.0):   # β annealed from 2 up to 20
        return A.beta_schedule(step, total, warm_start, end, start)

    explorer = viz.rounding_explorer(**layer, iterations=50, records=10, show=False,
                                     functions={"rectified_sigmoid": counted, "beta_schedule": wrong_way})
    assert calls["rectified_sigmoid"] >= 50
    betas = [b for b in explorer.trace.beta if b is not None]
    assert betas == sorted(betas) and betas[-1] == pytest.approx(20.0)
    curve = explorer.figure.axes[0].lines[0]
    assert curve.get_label() == "h(V), yours"
    stretched = viz.rounding_explorer(**layer, iterations=20, records=4, show=False,
                                      functions={"rectified_sigmoid": lambda v, zeta=1.1, gamma=-0.1:
                                                 A.rectified_sigmoid(v, 1.5, -0.5)})
    at_one = list(curve.get_xdata()).index(pytest.approx(1.0))
    assert float(curve.get_ydata()[at_one]) == pytest.approx(0.777270, abs=1e-5)         # h(1), AIMET's stretch
    assert float(stretched.figure.axes[0].lines[0].get_ydata()[at_one]) == pytest.approx(0.962117, abs=1e-5)
    with pytest.raises(ValueError, match="functions names"):
        viz.rounding_explorer(**layer, iterations=10, show=False, functions={"rectified_sigmoids": counted})
    with pytest.raises(ValueError, match="expected a tensor of shape"):
        viz.rounding_explorer(**layer, iterations=10, records=2, show=False,
                              functions={"rectified_sigmoid": lambda v, zeta=1.1, gamma=-0.1: v.sum()})
    assert capsys.readouterr().err == ""


def test_bad_inputs_and_the_static_figure(layer, capsys):
    with pytest.raises(ValueError, match="inputs must be"):
        viz.rounding_explorer(layer["weight"], layer["scale"], layer["inputs"][:, :5], layer["targets"], 3,
                              show=False)
    with pytest.raises(ValueError, match="scale must be"):
        viz.rounding_explorer(layer["weight"], -layer["scale"], layer["inputs"], layer["targets"], 3, show=False)
    explorer = viz.rounding_explorer(**layer, iterations=20, records=4, show=True)   # no widget front end
    out = capsys.readouterr()
    assert "Figure" in out.out and out.err == ""
    assert explorer.layout is None and explorer.stats["iteration"] in explorer.trace.steps
