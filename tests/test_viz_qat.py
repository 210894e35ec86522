"""lowbit.viz.qat: drive the STE explorer's controls and check the gradients it shows."""
from __future__ import annotations

import math

import pytest
import torch

from lowbit.quant import qat as Q
from lowbit.viz import qat as viz


def line_data(explorer, index: int) -> torch.Tensor:
    return torch.as_tensor(explorer.figure.axes[index].lines[-1 if index == 0 else 0].get_ydata())


def test_ste_explorer_shows_the_lsq_gradients(capsys):
    explorer = viz.ste_explorer(show=False)
    x = torch.linspace(-3, 3, 1201)
    for bits, step in ((3, 0.5), (4, 0.1), (2, 1.0)):
        explorer.controls["bits"].value = bits
        explorer.controls["step"].value = step
        step = float(explorer.controls["step"].value)   # the log slider snaps to its grid
        q_min, q_max = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        v = x / step
        inside = (v >= q_min) & (v <= q_max)
        assert torch.allclose(line_data(explorer, 0), torch.round(v.clamp(q_min, q_max)) * step, atol=1e-6)
        assert torch.equal(line_data(explorer, 1), inside.float())
        want = torch.where(inside, torch.round(v) - v, v.clamp(q_min, q_max).round())
        assert torch.allclose(line_data(explorer, 2), want, atol=1e-5)
        assert explorer.stats["levels"] == 2**bits
        assert explorer.stats["clip_high"] == pytest.approx(q_max * step)
    assert capsys.readouterr().err == ""


def test_ste_explorer_step_gradient_sign_says_which_error_dominates():
    explorer = viz.ste_explorer(bits=3, step=0.02, show=False)
    assert explorer.stats["clipped_fraction"] > 0.8
    assert explorer.stats["d_mse_d_step"] < 0, "a tiny step clips most values: the step should grow"
    explorer.controls["step"].value = 1.9
    assert explorer.stats["clipped_fraction"] < 0.01
    assert explorer.stats["d_mse_d_step"] > 0, "a huge step has coarse rounding: the step should shrink"


def test_ste_explorer_with_a_fixed_step_ste_and_with_broken_functions(capsys):
    fixed = viz.ste_explorer(lambda x, s, b: Q.fake_quantize_ste(x, s.detach(), 0, b), show=False)
    assert fixed.stats["d_mse_d_step"] != fixed.stats["d_mse_d_step"], "NaN: no gradient reaches the step"
    assert torch.isnan(line_data(fixed, 2)).all()
    detached = viz.ste_explorer(lambda x, s, b: torch.round(x / s).detach() * s.detach(), show=False)
    assert "no gradient" in detached.stats["error"]
    wrong_shape = viz.ste_explorer(lambda x, s, b: x.sum(), show=False)
    assert "expected a tensor of shape" in wrong_shape.stats["error"]
    assert "✗ ste_explorer" in capsys.readouterr().out


def test_smoothed_is_a_trailing_mean_that_keeps_nan_visible():
    assert torch.allclose(viz.smoothed([1.0, 3.0, 5.0, 7.0], 2),
                          torch.tensor([1.0, 2.0, 4.0, 6.0], dtype=torch.float64))
    assert torch.allclose(viz.smoothed([2.0, 4.0], 5), torch.tensor([2.0, 3.0], dtype=torch.float64))
    with_nan = viz.smoothed([1.0, float("nan"), 3.0, 5.0, 7.0], 2)
    assert torch.isnan(with_nan[1:3]).all() and torch.allclose(with_nan[[0, 3, 4]],
                                                                torch.tensor([1.0, 4.0, 6.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="window"):
        viz.smoothed([1.0], 0)


def test_training_curves_plots_every_run_and_marks_nan(capsys):
    losses = {"W4A4": [2.0, 1.0, 0.5, 0.4], "W2A2 from scratch": [2.3, float("nan"), float("nan"), 2.3]}
    curves = viz.training_curves(losses, window=2, reference=2.302585, show=False)
    ax = curves.figure.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["W4A4", "W2A2 from scratch (NaN)", "2.3"]
    smooth_w4 = torch.as_tensor(ax.lines[1].get_ydata())
    assert torch.allclose(smooth_w4, torch.tensor([2.0, 1.5, 0.75, 0.45], dtype=torch.float64))
    assert curves.final["W4A4"] == pytest.approx(0.45)
    assert math.isnan(curves.final["W2A2 from scratch"]), "the last window holds a NaN loss"
    with pytest.raises(ValueError, match="at least one run"):
        viz.training_curves({}, show=False)
    with pytest.raises(ValueError, match="no losses"):
        viz.training_curves({"empty": []}, show=False)
    assert capsys.readouterr().err == ""
