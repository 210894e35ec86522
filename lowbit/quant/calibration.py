"""Calibration: choosing the real range [lo, hi] that an activation tensor is quantized over.

Observers (statistics) are kept apart from the arithmetic (``lowbit.quant.linear``), as in ``torch.ao``:
a range-finding function returns ``(lo, hi)`` and ``affine_qparams`` turns it into a scale and zero point.

- ``minmax``: the full observed range (no clipping, most rounding error).
- ``ema_minmax``: exponential moving average of per-batch min/max, as torch.ao's
  ``MovingAverageMinMaxObserver`` (first batch initializes; then lo ← lo + m·(batch_min − lo)).
- ``percentile_range``: clip the rarest ``100 − pct`` % at each end.
- ``mse_clip_range``: shrink the min-max range by α ∈ (0, 1] to minimize the fake-quant MSE.
- ``kl_clip_threshold``: TensorRT's entropy calibration (Migacz 2017, "8-bit Inference with TensorRT").

The ``Observer`` classes accumulate statistics over calibration batches (``update``) and report
``range()`` and ``qparams(bits, signed)``.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from lowbit.quant import fakequant
from lowbit.quant.linear import affine_qparams, quantized_range
from lowbit.quant.validate import check_bits, check_data

__all__ = ["strided_subsample",
           "minmax", "ema_minmax", "percentile_range", "mse_clip_range", "abs_histogram", "kl_clip_threshold",
           "Observer", "MinMaxObserver", "EMAMinMaxObserver", "PercentileObserver", "MSEObserver", "KLObserver",
           "SampleObserver", "OBSERVERS", "make_observer", "register_observer"]


def strided_subsample(x: torch.Tensor, max_elements: int) -> torch.Tensor:
    """``x`` flattened, or an evenly strided subsample of at most ``max_elements`` of it (deterministic)."""
    flat = x.reshape(-1)
    if flat.numel() > max_elements:
        flat = flat[:: -(-flat.numel() // max_elements)]
    return flat


def minmax(x: torch.Tensor) -> tuple[float, float]:
    """(min, max) of a non-empty finite float tensor, as Python floats."""
    x = check_data(x)
    lo, hi = torch.aminmax(x.to(torch.float32))
    return float(lo), float(hi)


def ema_minmax(batches: Iterable[torch.Tensor], momentum: float = 0.01) -> tuple[float, float]:
    """Exponential moving average of per-batch (min, max).

    The first batch sets (lo, hi); each later batch updates lo ← lo + m·(min_b − lo) = (1 − m)·lo + m·min_b
    (same for hi), in float32 — the arithmetic of ``torch.ao.quantization.MovingAverageMinMaxObserver`` with
    ``averaging_constant = momentum``. Raises ValueError for no batches or momentum outside (0, 1].
    """
    if not 0 < momentum <= 1:
        raise ValueError(f"momentum must be in (0, 1], got {momentum}")
    state: tuple[torch.Tensor, torch.Tensor] | None = None
    for batch in batches:
        lo_b, hi_b = torch.aminmax(check_data(batch, "batch").to(torch.float32))
        if state is None:
            state = (lo_b, hi_b)
        else:
            state = (state[0] + momentum * (lo_b - state[0]), state[1] + momentum * (hi_b - state[1]))
    if state is None:
        raise ValueError("ema_minmax got no batches; pass a non-empty iterable of tensors")
    return float(state[0]), float(state[1])


def _quantiles(x: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    """Linear-interpolation quantiles (as numpy's default) of the flattened tensor; no size limit."""
    values = torch.sort(x.reshape(-1).to(torch.float64)).values
    position = fractions.to(torch.float64) * (values.numel() - 1)
    below = position.floor().long()
    above = position.ceil().long()
    weight = position - below
    return values[below] * (1 - weight) + values[above] * weight


def percentile_range(x: torch.Tensor, pct: float = 99.99) -> tuple[float, float]:
    """(the (100 − pct)-th percentile, the pct-th percentile) of ``x``, linear interpolation.

    pct must be in [50, 100]; 100 gives (min, max).
    """
    x = check_data(x)
    if not 50 <= pct <= 100:
        raise ValueError(f"pct must be between 50 and 100 (e.g. 99.99), got {pct}")
    lo, hi = _quantiles(x, torch.tensor([(100 - pct) / 100, pct / 100], dtype=torch.float64))
    return float(lo), float(hi)


def _candidate_errors(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int) -> torch.Tensor:
    """MSE of unsigned affine fake-quant of ``x`` [n] over each candidate range lo[c], hi[c] → [C]."""
    scale, zero_point = affine_qparams(lo, hi, bits, signed=False)
    q_min, q_max = quantized_range(bits, signed=False)
    scale, zero_point = scale.unsqueeze(1), zero_point.unsqueeze(1).to(torch.float32)
    x_hat = fakequant.fake_quantize(x.unsqueeze(0), scale, zero_point, q_min, q_max)
    return (x_hat - x.unsqueeze(0)).pow(2).mean(dim=1)


def mse_clip_range(x: torch.Tensor, bits: int, num_candidates: int = 100,
                   max_elements: int = 2 ** 20) -> tuple[float, float]:
    """The range α·[min, max] minimizing the MSE of affine fake-quant at ``bits``, α ∈ {k/num_candidates}.

    Vectorized over candidates (in chunks so that at most ~2^24 elements are alive at once). Tensors larger
    than ``max_elements`` are evaluated on an evenly strided subsample of that size (deterministic).
    Returns (lo, hi) as Python floats; ties go to the largest α.
    """
    x = check_data(x).reshape(-1).to(torch.float32)
    bits = check_bits(bits)
    if isinstance(num_candidates, bool) or not isinstance(num_candidates, int) or num_candidates < 1:
        raise ValueError(f"num_candidates must be a positive int, got {num_candidates!r}")
    x = strided_subsample(x, max_elements)
    lo, hi = torch.aminmax(x)
    alphas = torch.arange(num_candidates, 0, -1, dtype=torch.float32) / num_candidates   # 1.0 first
    chunk = max(1, 2 ** 24 // x.numel())
    errors = torch.cat([_candidate_errors(x, a * lo, a * hi, bits) for a in alphas.split(chunk)])
    best = int(torch.argmin(errors))                       # first minimum = largest alpha among ties
    return float(alphas[best] * lo), float(alphas[best] * hi)


def abs_histogram(x: torch.Tensor, num_bins: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """Histogram of |x| over [0, max|x|]: (counts float64 [num_bins], bin_edges float64 [num_bins + 1])."""
    x = check_data(x)
    magnitude = x.abs().reshape(-1).to(torch.float64)
    top = float(magnitude.max())
    top = top if top > 0 else 1.0
    counts = torch.histc(magnitude, bins=num_bins, min=0.0, max=top)
    return counts, torch.linspace(0.0, top, num_bins + 1, dtype=torch.float64)


def _smooth(p: np.ndarray, eps: float = 1e-4) -> np.ndarray | None:
    """Move ``eps`` mass onto every zero bin, taken evenly from the nonzero ones (TensorRT / MXNet)."""
    zeros = p == 0
    n_zeros, n_nonzeros = int(zeros.sum()), int((~zeros).sum())
    if n_nonzeros == 0:
        return None
    eps_taken = eps * n_zeros / n_nonzeros
    if eps_taken >= p[~zeros].min():                       # smoothing would make a bin negative
        return None
    return p + eps * zeros - eps_taken * (~zeros)


def _kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum(p * np.log(p / q)))


def _expanded_quantization(reference: np.ndarray, unclipped: np.ndarray, levels: int) -> np.ndarray:
    """Merge ``unclipped`` (the bins before the threshold, outliers excluded) into ``levels`` bins and spread
    each merged count evenly back over the bins where ``reference`` is nonzero (zeros stay zero)."""
    i = unclipped.size
    merged = i // levels
    owner = np.minimum(np.arange(i) // merged, levels - 1)         # last level takes the remainder
    nonzero = reference != 0
    totals = np.bincount(owner, weights=unclipped, minlength=levels)
    support = np.bincount(owner, weights=nonzero.astype(np.float64), minlength=levels)
    per_bin = np.divide(totals, support, out=np.zeros(levels), where=support > 0)
    return np.where(nonzero, per_bin[owner], 0.0)


def kl_clip_threshold(hist: torch.Tensor | np.ndarray, bin_edges: torch.Tensor | np.ndarray, bits: int) -> float:
    """TensorRT entropy calibration (Migacz 2017): the clipping threshold of |x| minimizing KL(P || Q).

    Args:
        hist: counts of |x| per bin, [num_bins] (e.g. from ``abs_histogram``; 2048 bins is customary).
        bin_edges: [num_bins + 1] increasing edges (bin_edges[0] is usually 0).
        bits: the quantized magnitude has ``levels = 2^(bits-1)`` values (128 at 8 bits, signed symmetric).

    For each candidate i = levels .. num_bins: P = hist[:i] with all counts beyond bin i added to its last
    bin; Q = hist[:i] merged into ``levels`` equal groups of bins and expanded back over P's nonzero bins;
    both are smoothed (zeros get 1e-4) and KL(P || Q) computed. Returns bin_edges[i] (the upper edge of
    the last kept bin) of the best i. With fewer than ``levels`` bins it returns the top edge.
    """
    counts = np.asarray(hist.detach().cpu() if isinstance(hist, torch.Tensor) else hist, dtype=np.float64)
    edges = np.asarray(bin_edges.detach().cpu() if isinstance(bin_edges, torch.Tensor) else bin_edges,
                       dtype=np.float64)
    bits = check_bits(bits, low=2, high=16)
    if counts.ndim != 1 or edges.shape != (counts.size + 1,):
        raise ValueError(f"expected hist [num_bins] and bin_edges [num_bins + 1], got {counts.shape} and "
                         f"{edges.shape}")
    if counts.size == 0 or counts.sum() <= 0 or (counts < 0).any():
        raise ValueError("hist must hold non-negative counts with a positive total (was the tensor empty?)")
    if not np.all(np.diff(edges) > 0):
        raise ValueError("bin_edges must be strictly increasing")
    levels = 2 ** (bits - 1)
    if counts.size <= levels:
        return float(edges[-1])
    tail_mass = np.concatenate([np.cumsum(counts[::-1])[::-1], [0.0]])   # tail_mass[i] = sum(counts[i:])
    best_i, best_kl = counts.size, np.inf
    for i in range(levels, counts.size + 1):
        reference = counts[:i].copy()
        reference[-1] += tail_mass[i]
        candidate = _expanded_quantization(reference, counts[:i], levels)
        p, q = _smooth(reference), _smooth(candidate)
        if p is None or q is None:
            continue
        divergence = _kl_divergence(p, q)
        if divergence < best_kl:
            best_i, best_kl = i, divergence
    return float(edges[best_i])


# --------------------------------------------------------------------------------------------- observers
#: observer name → class, as accepted by ``make_observer`` and ``lowbit.quant.ptq.ptq(observer=...)``. A
#: subclass of ``Observer`` with a ``name`` of its own joins it when it is defined (``register=False`` opts out).
OBSERVERS: dict[str, type["Observer"]] = {}


def register_observer(cls: type["Observer"]) -> type["Observer"]:
    """Add ``cls`` to ``OBSERVERS`` under ``cls.name`` (done automatically for subclasses; usable as decorator)."""
    OBSERVERS[cls.name] = cls
    return cls


class Observer:
    """Accumulates statistics of calibration batches. ``update(x)`` → self; ``range()`` → (lo, hi) floats;
    ``qparams(bits, signed)`` → ``affine_qparams(*range(), bits, signed)``.

    A new observer subclasses this with a class attribute ``name`` and ``_update`` / ``_range``; set
    ``uses_bits = True`` when its range depends on the bit width (``make_observer`` then passes ``bits``).
    """

    name = "base"
    uses_bits = False

    def __init_subclass__(cls, register: bool = True, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if register and "name" in cls.__dict__:
            register_observer(cls)

    def __init__(self) -> None:
        self.batches_seen = 0

    def update(self, x: torch.Tensor) -> "Observer":
        self._update(check_data(x).to(torch.float32))
        self.batches_seen += 1
        return self

    def _update(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def range(self) -> tuple[float, float]:
        if self.batches_seen == 0:
            raise ValueError(f"{type(self).__name__} has seen no data; call .update(batch) first")
        return self._range()

    def _range(self) -> tuple[float, float]:
        raise NotImplementedError

    def qparams(self, bits: int, signed: bool = True) -> tuple[float, int]:
        lo, hi = self.range()
        return affine_qparams(lo, hi, bits, signed)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(batches_seen={self.batches_seen})"


class MinMaxObserver(Observer):
    """Running min and max over every batch (``torch.ao.quantization.MinMaxObserver``)."""

    name = "minmax"

    def _update(self, x: torch.Tensor) -> None:
        lo, hi = minmax(x)
        if self.batches_seen == 0:
            self.lo, self.hi = lo, hi
        else:
            self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)

    def _range(self) -> tuple[float, float]:
        return self.lo, self.hi


class EMAMinMaxObserver(Observer):
    """Moving average of per-batch min/max (see ``ema_minmax``)."""

    name = "ema"

    def __init__(self, momentum: float = 0.01) -> None:
        super().__init__()
        if not 0 < momentum <= 1:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        self.momentum = momentum

    def _update(self, x: torch.Tensor) -> None:
        lo, hi = torch.aminmax(x)
        if self.batches_seen == 0:
            self.lo, self.hi = lo, hi
        else:
            self.lo = self.lo + self.momentum * (lo - self.lo)
            self.hi = self.hi + self.momentum * (hi - self.hi)

    def _range(self) -> tuple[float, float]:
        return float(self.lo), float(self.hi)


class SampleObserver(Observer):
    """Keeps the observed values (a strided subsample of each batch when it exceeds ``max_per_batch``)."""

    def __init__(self, max_per_batch: int = 2 ** 20) -> None:
        super().__init__()
        self.max_per_batch = max_per_batch
        self.samples: list[torch.Tensor] = []

    def _update(self, x: torch.Tensor) -> None:
        self.samples.append(strided_subsample(x, self.max_per_batch).clone())

    def values(self) -> torch.Tensor:
        return torch.cat(self.samples)


class PercentileObserver(SampleObserver):
    """``percentile_range`` of all observed values."""

    name = "percentile"

    def __init__(self, pct: float = 99.99, max_per_batch: int = 2 ** 20) -> None:
        super().__init__(max_per_batch)
        self.pct = pct

    def _range(self) -> tuple[float, float]:
        return percentile_range(self.values(), self.pct)


class MSEObserver(SampleObserver):
    """``mse_clip_range`` of all observed values at the bit width given to ``range``/``qparams``."""

    name = "mse"
    uses_bits = True

    def __init__(self, bits: int = 8, num_candidates: int = 100, max_per_batch: int = 2 ** 20) -> None:
        super().__init__(max_per_batch)
        self.bits, self.num_candidates = bits, num_candidates

    def _range(self) -> tuple[float, float]:
        return mse_clip_range(self.values(), self.bits, self.num_candidates)

    def qparams(self, bits: int, signed: bool = True) -> tuple[float, int]:
        self.bits = bits
        return super().qparams(bits, signed)


class KLObserver(SampleObserver):
    """TensorRT entropy calibration on a 2048-bin histogram of |x|.

    The threshold T clips |x|; the range is (−T, T) when negative values were seen, else (0, T).
    For non-negative data (after ReLU) all 2^bits unsigned levels cover [0, T], so the KL search uses
    2^bits levels (``kl_clip_threshold(..., bits + 1)``); for signed data it uses TensorRT's 2^(bits-1).
    """

    name = "kl"
    uses_bits = True

    def __init__(self, bits: int = 8, num_bins: int = 2048, max_per_batch: int = 2 ** 20) -> None:
        super().__init__(max_per_batch)
        self.bits, self.num_bins = bits, num_bins

    def _range(self) -> tuple[float, float]:
        values = self.values()
        hist, edges = abs_histogram(values, self.num_bins)
        nonnegative = bool(values.min() >= 0)
        threshold = kl_clip_threshold(hist, edges, self.bits + 1 if nonnegative else self.bits)
        return (0.0, threshold) if nonnegative else (-threshold, threshold)

    def qparams(self, bits: int, signed: bool = True) -> tuple[float, int]:
        self.bits = bits
        return super().qparams(bits, signed)


_SampleObserver = SampleObserver  # the name before the registry; kept for old imports


def make_observer(name: str, bits: int = 8) -> Observer:
    """A fresh observer by name (``"minmax"``, ``"ema"``, ``"percentile"``, ``"mse"``, ``"kl"`` or any
    registered one); ``bits`` goes to observers whose range depends on it."""
    if name not in OBSERVERS:
        raise ValueError(f"unknown observer {name!r}; choose one of {', '.join(OBSERVERS)}")
    cls = OBSERVERS[name]
    return cls(bits=bits) if cls.uses_bits else cls()
