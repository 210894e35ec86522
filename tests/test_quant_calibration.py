"""lowbit.quant.calibration: range finders, TensorRT KL calibration, observers; agreement with torch.ao."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lowbit.quant import calibration as cal
from lowbit.quant.linear import affine_qparams, fake_quantize


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_minmax_and_errors():
    x = torch.tensor([[3.0, -2.0], [0.5, 7.0]])
    assert cal.minmax(x) == (-2.0, 7.0)
    assert cal.minmax(x.half()) == (-2.0, 7.0)
    with pytest.raises(ValueError, match="empty"):
        cal.minmax(torch.empty(0))
    with pytest.raises(ValueError, match="NaN"):
        cal.minmax(torch.tensor([float("nan")]))
    with pytest.raises(TypeError, match="floating"):
        cal.minmax(torch.tensor([1, 2]))


def test_minmax_observer_matches_torch_ao():
    batches = [rand(64, 10, seed=s) * (s + 1) for s in range(5)]
    ours, theirs = cal.MinMaxObserver(), torch.ao.quantization.MinMaxObserver(dtype=torch.quint8)
    for b in batches:
        ours.update(b)
        theirs(b)
    assert ours.range() == (float(theirs.min_val), float(theirs.max_val))
    scale, zp = ours.qparams(8, signed=False)
    torch_scale, torch_zp = theirs.calculate_qparams()
    assert scale == float(torch_scale) and zp == int(torch_zp)


@pytest.mark.parametrize("momentum", [0.01, 0.3, 1.0])
def test_ema_matches_torch_moving_average_observer(momentum):
    batches = [rand(32, 8, seed=s) * (1 + s % 3) + s * 0.1 for s in range(12)]
    theirs = torch.ao.quantization.MovingAverageMinMaxObserver(averaging_constant=momentum, dtype=torch.quint8)
    for b in batches:
        theirs(b)
    lo, hi = cal.ema_minmax(iter(batches), momentum)
    assert lo == float(theirs.min_val) and hi == float(theirs.max_val)
    observer = cal.EMAMinMaxObserver(momentum)
    for b in batches:
        observer.update(b)
    assert observer.range() == (lo, hi)


def test_ema_formula_first_batch_initializes():
    batches = [torch.tensor([-1.0, 1.0]), torch.tensor([-3.0, 5.0])]
    lo, hi = cal.ema_minmax(batches, momentum=0.5)
    assert (lo, hi) == (-2.0, 3.0)
    assert cal.ema_minmax([torch.tensor([2.0, 4.0])]) == (2.0, 4.0)
    with pytest.raises(ValueError, match="no batches"):
        cal.ema_minmax([])
    with pytest.raises(ValueError, match="momentum"):
        cal.ema_minmax(batches, momentum=0.0)


def test_percentile_range_matches_numpy():
    x = rand(10_001, seed=1) ** 3
    lo, hi = cal.percentile_range(x, 99.0)
    expected = np.percentile(x.double().numpy(), [1.0, 99.0])
    assert lo == pytest.approx(expected[0], rel=1e-12) and hi == pytest.approx(expected[1], rel=1e-12)
    assert cal.percentile_range(x, 100) == cal.minmax(x)
    with pytest.raises(ValueError, match="pct"):
        cal.percentile_range(x, 101)


def test_mse_clip_range_picks_the_best_candidate_by_brute_force():
    x = torch.cat([rand(5000, seed=2), torch.tensor([40.0, -35.0])])  # heavy outliers → clipping pays
    lo, hi = cal.mse_clip_range(x, 4, num_candidates=50)
    def error(alpha):
        s, z = affine_qparams(alpha * float(x.min()), alpha * float(x.max()), 4, signed=False)
        return float((fake_quantize(x, s, z, 4, signed=False) - x).pow(2).mean())
    errors = {k: error(k / 50) for k in range(1, 51)}
    best = min(errors, key=errors.get)
    assert hi == pytest.approx(best / 50 * float(x.max()), rel=1e-6)
    assert lo == pytest.approx(best / 50 * float(x.min()), rel=1e-6)
    assert hi < 40.0 * 0.5


def test_mse_clip_range_keeps_full_range_for_uniform_data():
    x = torch.linspace(-1, 1, 4001)
    lo, hi = cal.mse_clip_range(x, 8)
    assert hi >= 0.97 and lo <= -0.97


def _kl_reference(hist, edges, bits):
    """A direct loop transcription of Migacz 2017 / MXNet's _get_optimal_threshold for |x| histograms."""
    hist = np.asarray(hist, dtype=np.float64)
    levels = 2 ** (bits - 1)
    best, best_kl = None, np.inf
    for i in range(levels, len(hist) + 1):
        p = hist[:i].copy()
        p[i - 1] += hist[i:].sum()
        nonzero = p != 0
        sliced = hist[:i]
        merged = i // levels
        q = np.zeros(i)
        for j in range(levels):
            start, stop = j * merged, (i if j == levels - 1 else (j + 1) * merged)
            total = sliced[start:stop].sum()
            norm = nonzero[start:stop].sum()
            if norm:
                q[start:stop] = np.where(nonzero[start:stop], total / norm, 0.0)
        def smooth(d):
            z = d == 0
            nz = (~z).sum()
            e1 = 1e-4 * z.sum() / nz
            if nz == 0 or e1 >= d[~z].min():
                return None
            return d + 1e-4 * z - e1 * (~z)
        ps, qs = smooth(p), smooth(q)
        if ps is None or qs is None:
            continue
        ps, qs = ps / ps.sum(), qs / qs.sum()
        kl = np.sum(ps * np.log(ps / qs))
        if kl < best_kl:
            best, best_kl = i, kl
    return edges[best]


def test_kl_threshold_matches_loop_reference_and_clips_long_tails():
    torch.manual_seed(0)
    x = torch.distributions.Laplace(0.0, 1.0).sample((50_000,))
    hist, edges = cal.abs_histogram(x, num_bins=512)
    threshold = cal.kl_clip_threshold(hist, edges, bits=6)
    assert threshold == pytest.approx(float(_kl_reference(hist.numpy(), edges.numpy(), 6)))
    assert threshold < float(x.abs().max()) * 0.9           # a long-tailed distribution gets clipped
    assert threshold in edges.tolist()


def test_kl_threshold_errors():
    with pytest.raises(ValueError, match="num_bins"):
        cal.kl_clip_threshold(torch.ones(10), torch.arange(10.0), 8)
    with pytest.raises(ValueError, match="positive total"):
        cal.kl_clip_threshold(torch.zeros(300), torch.arange(301.0), 8)
    assert cal.kl_clip_threshold(torch.ones(100), torch.arange(101.0), 8) == 100.0


@pytest.mark.parametrize("name", list(cal.OBSERVERS))
def test_every_observer_gives_a_range_inside_minmax_and_valid_qparams(name):
    observer = cal.make_observer(name, bits=8)
    batches = [torch.relu(rand(256, 16, seed=s)) for s in range(3)]
    copies = [b.clone() for b in batches]
    for b in batches:
        assert observer.update(b) is observer
    lo, hi = observer.range()
    data_lo, data_hi = cal.minmax(torch.cat(batches))
    assert data_lo - 1e-6 <= lo <= hi <= data_hi + 1e-6 or name == "ema"
    assert hi > 0
    scale, zp = observer.qparams(8, signed=False)
    assert scale > 0 and 0 <= zp <= 255
    assert all(torch.equal(b, c) for b, c in zip(batches, copies))


def test_observer_without_data_and_unknown_name():
    with pytest.raises(ValueError, match="no data"):
        cal.MinMaxObserver().range()
    with pytest.raises(ValueError, match="unknown observer"):
        cal.make_observer("max")
    with pytest.raises(ValueError, match="empty"):
        cal.PercentileObserver().update(torch.empty(0))


def test_clipping_observers_clip_outliers_minmax_does_not():
    x = torch.relu(rand(20_000, seed=5))
    x[0] = 100.0
    ranges = {name: cal.make_observer(name).update(x).range() for name in ("minmax", "percentile", "kl")}
    assert ranges["minmax"][1] == 100.0
    assert ranges["percentile"][1] < 20.0
    assert ranges["kl"][1] < 30.0   # 2048 bins over [0, 100]: the smallest KL candidate is 256 bins = 12.5
    # MSE weighs the outlier's clipping error against everyone's rounding error: at 8 bits one outlier in
    # 20k is worth keeping, at 3 bits it is not.
    assert cal.make_observer("mse", bits=8).update(x).qparams(8)[0] > 90.0 / 255
    assert cal.make_observer("mse", bits=3).update(x).qparams(3)[0] < 20.0 / 7
