"""Tests of lowbit.quant.kmeans.kmeans_1d_fast (sorted values + prefix sums) against the plain Lloyd reference.

``kmeans_1d_fast`` must run exactly Lloyd's iterations of ``kmeans_1d``, only faster: at convergence (its
defaults) it must reach the same partition, so its SSE is never worse than the reference Lloyd's, and on
inputs whose optimum is known it must reach that optimum. Its extra ``init="quantile"`` is checked against a
Lloyd built from the public steps (``assign`` / ``update_centroids_mean``) started at the same quantiles.
"""
from __future__ import annotations

import pytest
import torch

from lowbit.quant import kmeans as K


def student_t(n: int, seed: int) -> torch.Tensor:
    """Student-t(3) samples (float32 [n]): heavy tails, like trained weights."""
    generator = torch.Generator().manual_seed(seed)
    normal = torch.randn(n, generator=generator)
    chi2 = torch.randn(3, n, generator=generator).square().sum(0)
    return normal / (chi2 / 3).sqrt()


def seeded_inputs() -> dict[str, torch.Tensor]:
    """Inputs that exercise the fast path's conversions and ties: dtypes, layouts, duplicates."""
    generator = torch.Generator().manual_seed(0)
    return {
        "student-t float32": student_t(20_000, seed=1),
        "normal float64": 0.05 * torch.randn(20_000, generator=generator, dtype=torch.float64),
        "float16": student_t(5_000, seed=2).half(),
        "transposed 2-D (non-contiguous)": student_t(6_000, seed=3).reshape(60, 100).T,
        "many duplicates (values on a 1/8 grid)": (student_t(10_000, seed=4) * 8).round() / 8,
    }


@pytest.mark.parametrize("name", list(seeded_inputs()))
@pytest.mark.parametrize("k", [2, 16, 64])
def test_converged_fast_path_is_the_reference_lloyd(name, k):
    w = seeded_inputs()[name]
    fast_c, fast_l = K.kmeans_1d_fast(w, k)
    ref_c, ref_l = K.kmeans_1d(w, k, iters=1000)
    assert K.sse(w, fast_c, fast_l) <= K.sse(w, ref_c, ref_l) * (1 + 1e-9), name
    assert torch.equal(fast_l, ref_l), f"{name}: a different partition than Lloyd's"
    assert torch.allclose(fast_c, ref_c, rtol=1e-6, atol=1e-7), name


@pytest.mark.parametrize("name", list(seeded_inputs()))
def test_fast_result_is_a_lloyd_fixed_point(name):
    w = seeded_inputs()[name]
    centroids, labels = K.kmeans_1d_fast(w, 16)
    assert torch.equal(labels, K.assign(w, centroids)), f"{name}: labels are not the nearest centroids"
    means = K.update_centroids_mean(w.double(), labels, 16, centroids.double())
    assert torch.allclose(means.float(), centroids, rtol=1e-6, atol=1e-7), f"{name}: centroids are not the means"


def reference_lloyd(w: torch.Tensor, start: torch.Tensor, iters: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd from the given ascending float64 centroids, built from the module's public steps."""
    centroids, labels = start, K.assign(w, start)
    for _ in range(iters):
        centroids = K.update_centroids_mean(w, labels, start.numel(), centroids)
        new_labels = K.assign(w, centroids)
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    return centroids.float(), labels


def quantiles(w: torch.Tensor, k: int) -> torch.Tensor:
    """The (j + 1/2) / k quantiles, j = 0..k-1, as the sorted value at index floor((2j + 1) n / 2k)."""
    ordered = w.reshape(-1).double().sort().values
    return ordered[(2 * torch.arange(k) + 1) * ordered.numel() // (2 * k)]


def test_quantile_init_starts_at_the_quantiles():
    w = torch.tensor([7.0, 0.0, 5.0, 2.0, 6.0, 1.0, 4.0, 3.0])
    centroids, labels = K.kmeans_1d_fast(w, 4, iters=0, init="quantile")
    assert torch.equal(centroids, torch.tensor([1.0, 3.0, 5.0, 7.0]))
    assert torch.equal(labels, K.assign(w, centroids))


@pytest.mark.parametrize("name", list(seeded_inputs()))
@pytest.mark.parametrize("k", [2, 16, 64])
def test_quantile_init_runs_the_reference_lloyd(name, k):
    w = seeded_inputs()[name]
    fast_c, fast_l = K.kmeans_1d_fast(w, k, init="quantile")
    ref_c, ref_l = reference_lloyd(w, quantiles(w, k))
    assert K.sse(w, fast_c, fast_l) <= K.sse(w, ref_c, ref_l) * (1 + 1e-9), name
    assert torch.equal(fast_l, ref_l), f"{name}: a different partition than Lloyd's from the quantiles"
    assert torch.allclose(fast_c, ref_c, rtol=1e-6, atol=1e-7), name


def test_quantile_init_is_rejected_by_plain_lloyd_and_bad_inits_name_it():
    w = student_t(100, seed=7)
    with pytest.raises(ValueError, match="init"):
        K.kmeans_1d(w, 4, init="quantile")
    with pytest.raises(ValueError, match="'quantile'"):
        K.kmeans_1d_fast(w, 4, init="median")


@pytest.mark.parametrize("init", ["linear", "quantile"])
def test_separated_groups_reach_the_known_optimum(init):
    # k groups {c - 0.1, c, c + 0.1} at c = 0, 10, ..., 10 (k - 1): the optimum puts one centroid on each
    # group, SSE = k * 2 * 0.1^2; the DP optimum agrees.
    k = 8
    centers = 10.0 * torch.arange(k, dtype=torch.float64)
    w = (centers.reshape(-1, 1) + torch.tensor([-0.1, 0.0, 0.1], dtype=torch.float64)).reshape(-1)
    w = w[torch.randperm(w.numel(), generator=torch.Generator().manual_seed(0))]
    centroids, labels = K.kmeans_1d_fast(w, k, init=init)
    assert torch.allclose(centroids.double(), centers, atol=1e-6)
    assert K.sse(w, centroids, labels) == pytest.approx(k * 2 * 0.1**2, rel=1e-6)
    assert K.sse(w, centroids, labels) == pytest.approx(K.sse(w, *K.kmeans_1d_optimal(w, k)), rel=1e-9)


def test_uneven_groups_reach_the_dp_optimum():
    # three tight groups of different sizes and spreads, far apart: Lloyd from the linear init finds the
    # optimal partition, so the fast path's SSE equals the DP optimum's.
    generator = torch.Generator().manual_seed(5)
    w = torch.cat([-3 + 0.2 * torch.randn(400, generator=generator), 0.1 * torch.randn(2000, generator=generator),
                   5 + 0.5 * torch.randn(100, generator=generator)])
    best = K.sse(w, *K.kmeans_1d_optimal(w, 3))
    for init in ("linear", "quantile"):
        assert K.sse(w, *K.kmeans_1d_fast(w, 3, init=init)) == pytest.approx(best, rel=1e-9), init


def test_values_on_a_midpoint_join_the_lower_cluster_in_every_iteration():
    # linear init [0, 2], midpoint 1: both 1s join cluster 0 -> means [0.5, 2], midpoint 1.25 -> stop.
    # (Sending them up instead would converge to [0, 5/3].)
    w = torch.tensor([0.0, 1.0, 2.0, 0.0, 1.0, 2.0])
    centroids, labels = K.kmeans_1d_fast(w, 2)
    assert torch.equal(centroids, torch.tensor([0.5, 2.0]))
    assert torch.equal(labels, torch.tensor([0, 0, 1, 0, 0, 1]))


@pytest.mark.parametrize("init", ["kmeans++", "quantile"])
def test_fast_path_is_deterministic_and_leaves_its_input_alone(init):
    w = student_t(50_000, seed=6).double()  # float64: the fast path's float64 view of it is the tensor itself
    keep = w.clone()
    first = K.kmeans_1d_fast(w, 16, init=init, seed=3)
    again = K.kmeans_1d_fast(w.clone(), 16, init=init, seed=3)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert torch.equal(w, keep), "kmeans_1d_fast wrote into its input"
