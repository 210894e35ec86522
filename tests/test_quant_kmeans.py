"""Tests of lowbit.quant.kmeans: Lloyd (plain and fast), the DP optimum, codebooks and fine-tuning."""
from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from lowbit.quant import kmeans as K


def heavy_tailed(n: int, seed: int = 0) -> torch.Tensor:
    """Student-t(3) samples (float32 [n]): a few large values, like trained weights."""
    generator = torch.Generator().manual_seed(seed)
    normal = torch.randn(n, generator=generator)
    chi2 = torch.randn(3, n, generator=generator).square().sum(0)
    return (normal / (chi2 / 3).sqrt()).float()


def nearest_by_distance_matrix(w: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Reference assignment built differently: argmin over an explicit n x k distance matrix."""
    return (w.reshape(-1, 1).double() - centroids.double().reshape(1, -1)).abs().argmin(dim=1)


def brute_force_sse(values: list[float], k: int) -> float:
    """Least SSE over every assignment of the values to k labels (k^n of them), each cluster at its mean."""
    x = np.asarray(values, dtype=np.float64)
    best = np.inf
    for assignment in itertools.product(range(k), repeat=len(x)):
        a = np.asarray(assignment)
        total = sum(((x[a == j] - x[a == j].mean()) ** 2).sum() for j in set(assignment))
        best = min(best, total)
    return float(best)


def quadratic_dp_sse(values: np.ndarray, k: int) -> float:
    """Reference optimum by the textbook O(k n^2) DP (no divide and conquer, no dedup), in numpy."""
    x = np.sort(values.astype(np.float64))
    n = len(x)
    p1 = np.concatenate([[0.0], np.cumsum(x)])
    p2 = np.concatenate([[0.0], np.cumsum(x * x)])

    def cost(j: np.ndarray, i: int) -> np.ndarray:  # SSE of x[j..i], vectorized over j
        c = i + 1 - j
        s1 = p1[i + 1] - p1[j]
        return p2[i + 1] - p2[j] - s1 * s1 / c

    row = np.array([cost(np.array([0]), i)[0] for i in range(n)])
    for m in range(1, k):
        new = np.full(n, np.inf)
        for i in range(m, n):
            j = np.arange(m, i + 1)
            new[i] = np.min(row[j - 1] + cost(j, i))
        row = new
    return float(row[n - 1])


# ----------------------------------------------------------------------------------------- hand cases
def test_linear_init_is_evenly_spaced_from_min_to_max():
    w = torch.tensor([[3.0, -1.0], [0.5, 2.0]])
    assert torch.equal(K.linear_init(w, 3), torch.tensor([-1.0, 1.0, 3.0]))
    assert K.linear_init(w, 3).dtype == torch.float32
    assert torch.equal(K.linear_init(w, 1), torch.tensor([-1.0]))


def test_two_obvious_clusters():
    centroids, labels = K.kmeans_1d(torch.tensor([0.0, 1.0, 10.0, 11.0]), 2)
    assert torch.allclose(centroids, torch.tensor([0.5, 10.5]))
    assert torch.equal(labels, torch.tensor([0, 0, 1, 1]))
    assert centroids.dtype == torch.float32 and labels.dtype == torch.int64


def test_lloyd_by_hand_from_linear_init():
    # init [0, 10], midpoint 5 -> {0, 2, 3} and {10}; means [5/3, 10]; midpoint 5.83 keeps the labels: stop.
    w = torch.tensor([2.0, 0.0, 10.0, 3.0])
    for algorithm in (K.kmeans_1d, K.kmeans_1d_fast):
        centroids, labels = algorithm(w, 2)
        assert torch.allclose(centroids, torch.tensor([5 / 3, 10.0])), algorithm.__name__
        assert torch.equal(labels, torch.tensor([0, 0, 1, 0])), algorithm.__name__


def test_k_equal_one_gives_the_mean_and_constant_input_is_fine():
    w = torch.tensor([1.0, 2.0, 6.0])
    centroids, labels = K.kmeans_1d(w, 1)
    assert torch.allclose(centroids, torch.tensor([3.0])) and torch.equal(labels, torch.zeros(3, dtype=torch.int64))
    constant = torch.full((5,), 0.25)
    for algorithm in (K.kmeans_1d, K.kmeans_1d_fast, K.kmeans_1d_optimal):
        centroids, labels = algorithm(constant, 4)
        assert torch.isfinite(centroids).all() and centroids.shape == (4,), algorithm.__name__
        assert K.sse(constant, centroids, labels) == 0.0, algorithm.__name__


def test_midpoint_ties_go_to_the_lower_centroid():
    w = torch.tensor([1.0, 0.9, 1.1])
    assert torch.equal(K.assign(w, torch.tensor([0.0, 2.0])), torch.tensor([0, 0, 1]))


# ------------------------------------------------------------------------------------ empty clusters
def test_empty_cluster_keeps_its_centroid_never_nan():
    # linear init [0, 5, 10]; nothing lies near 5, so cluster 1 is empty from the start.
    w = torch.tensor([0.0, 0.0, 1.0, 9.0, 10.0, 10.0])
    for algorithm in (K.kmeans_1d, K.kmeans_1d_fast):
        centroids, labels = algorithm(w, 3)
        assert torch.isfinite(centroids).all(), algorithm.__name__
        assert torch.allclose(centroids, torch.tensor([1 / 3, 5.0, 29 / 3])), algorithm.__name__
        assert not (labels == 1).any()


def test_update_centroids_mean_empty_cluster_and_dtype():
    w = torch.tensor([1.0, 3.0, 10.0])
    old = torch.tensor([0.0, 7.0, 20.0])
    new = K.update_centroids_mean(w, torch.tensor([0, 0, 2]), 3, old)
    assert torch.equal(new, torch.tensor([2.0, 7.0, 10.0]))
    assert new.dtype == old.dtype


def test_more_centroids_than_distinct_values():
    w = torch.tensor([1.0, 1.0, 2.0, 4.0])
    for algorithm in (K.kmeans_1d, K.kmeans_1d_fast, K.kmeans_1d_optimal):
        centroids, labels = algorithm(w, 16)
        assert centroids.shape == (16,) and torch.isfinite(centroids).all(), algorithm.__name__
        assert bool((centroids[1:] >= centroids[:-1]).all()), algorithm.__name__
        assert labels.max() < 16
        assert K.sse(w, centroids, labels) == pytest.approx(0.0, abs=1e-12), algorithm.__name__


# ------------------------------------------------------------------------------- Lloyd's properties
@pytest.mark.parametrize("init", K.INITS)
def test_labels_are_nearest_centroid_and_centroids_sorted(init):
    w = heavy_tailed(3000, seed=1).reshape(30, 100)
    for algorithm in (K.kmeans_1d, K.kmeans_1d_fast):
        centroids, labels = algorithm(w, 8, init=init, seed=3)
        assert labels.shape == (3000,)
        assert bool((centroids[1:] >= centroids[:-1]).all()), (algorithm.__name__, centroids)
        assert torch.equal(labels, nearest_by_distance_matrix(w, centroids)), algorithm.__name__


def test_sse_never_increases_over_lloyd_iterations():
    w = heavy_tailed(4000, seed=2)
    history = [K.sse(w, *K.kmeans_1d(w, 8, iters=t)) for t in range(25)]
    for before, after in zip(history, history[1:]):
        assert after <= before * (1 + 1e-12), history
    assert history[-1] < 0.9 * history[0], f"Lloyd should improve on the linear init here: {history}"


@pytest.mark.parametrize("init", K.INITS)
def test_converged_result_is_a_fixed_point(init):
    w = heavy_tailed(2000, seed=4)
    centroids, labels = K.kmeans_1d(w, 6, iters=10_000, init=init)
    again = K.update_centroids_mean(w, labels, 6, centroids)
    assert torch.allclose(again, centroids, atol=1e-6)
    assert torch.equal(K.assign(w, again), labels)


@pytest.mark.parametrize("init", K.INITS)
@pytest.mark.parametrize("iters", [0, 1, 4, 100])
def test_fast_agrees_with_plain_lloyd(init, iters):
    w = heavy_tailed(5000, seed=5)
    slow_c, slow_l = K.kmeans_1d(w, 16, iters=iters, init=init, seed=7)
    fast_c, fast_l = K.kmeans_1d_fast(w, 16, iters=iters, init=init, seed=7)
    assert torch.allclose(fast_c, slow_c, rtol=1e-6, atol=1e-7)
    assert torch.equal(fast_l, slow_l)


def test_inits_are_seeded_and_differ():
    w = heavy_tailed(1000, seed=6)
    assert torch.equal(K.initial_centroids(w, 8, "random", 1), K.initial_centroids(w, 8, "random", 1))
    assert not torch.equal(K.initial_centroids(w, 8, "random", 1), K.initial_centroids(w, 8, "random", 2))
    plus = K.initial_centroids(w, 8, "kmeans++", 0)
    assert torch.isin(plus, w).all(), "k-means++ picks centroids among the data"
    assert torch.equal(K.initial_centroids(w, 8, "linear"), K.linear_init(w, 8))


# ---------------------------------------------------------------------------------------- optimum
@pytest.mark.parametrize("values,k", [
    ([0.0, 1.0, 3.0, 7.0, 8.0], 2),
    ([4.0, -1.0, 0.5, 0.5, 2.0, 9.0], 3),
    ([1.0, 1.0, 1.0, 5.0, 5.0, 6.0, 20.0], 3),
    ([0.3, -2.0, 7.5, 1.25, 1.0, -0.5], 4),
])
def test_optimal_equals_brute_force_on_tiny_inputs(values, k):
    w = torch.tensor(values)
    centroids, labels = K.kmeans_1d_optimal(w, k)
    # float32 centroids round the means: SSEs agree to ~1e-7 relative
    assert K.sse(w, centroids, labels) == pytest.approx(brute_force_sse(w.double().tolist(), k), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("k", [2, 5, 9])
def test_optimal_matches_a_quadratic_dp_reference(k):
    w = heavy_tailed(300, seed=k)
    centroids, labels = K.kmeans_1d_optimal(w, k)
    assert K.sse(w, centroids, labels) == pytest.approx(quadratic_dp_sse(w.numpy(), k), rel=1e-9)
    assert bool((centroids[1:] >= centroids[:-1]).all())
    assert torch.equal(labels, nearest_by_distance_matrix(w, centroids)), "an optimum is a Voronoi partition"


def test_optimal_is_never_worse_than_lloyd():
    w = heavy_tailed(20_000, seed=8)
    for k in (4, 16, 64):
        best = K.sse(w, *K.kmeans_1d_optimal(w, k))
        for init, seed in itertools.product(K.INITS, (0, 1)):
            lloyd = K.sse(w, *K.kmeans_1d_fast(w, k, init=init, seed=seed))
            assert best <= lloyd * (1 + 1e-9), (k, init, seed, best, lloyd)


def test_optimal_refuses_too_large_inputs(monkeypatch):
    monkeypatch.setattr(K, "OPTIMAL_MAX_CELLS", 100)
    with pytest.raises(ValueError, match="kmeans_1d_fast"):
        K.kmeans_1d_optimal(heavy_tailed(60), 4)


# ---------------------------------------------------------------------------- codebooks and storage
def test_kmeans_quantize_and_decode():
    w = heavy_tailed(600, seed=9).reshape(20, 30)
    for method in K.METHODS:
        codebook = K.kmeans_quantize(w, 3, method=method)
        assert isinstance(codebook, K.Codebook)
        assert codebook.centroids.shape == (8,) and codebook.centroids.dtype == torch.float32
        assert codebook.labels.shape == (600,) and codebook.labels.dtype == torch.int64
        w_hat = K.decode(codebook, w.shape)
        assert w_hat.shape == w.shape
        assert torch.equal(w_hat.reshape(-1), codebook.centroids[codebook.labels])
        assert len(torch.unique(w_hat)) <= 8
    assert torch.equal(K.kmeans_quantize(w, 2, init="random", seed=1).centroids,
                       K.kmeans_1d_fast(w, 4, init="random", seed=1)[0])


def test_compressed_bits_counts_indices_and_codebook():
    assert K.compressed_bits(1000, 4) == 1000 * 4 + 16 * 32
    assert K.compressed_bits(1000, 4, codebook_bits=16) == 1000 * 4 + 16 * 16
    assert K.compressed_bits(0, 1) == 2 * 32


def test_centroid_gradients_equal_one_hot_matmul():
    generator = torch.Generator().manual_seed(10)
    grad = torch.randn(7, 9, generator=generator)
    labels = torch.randint(5, (63,), generator=generator)
    labels[labels == 3] = 4  # cluster 3 is empty
    one_hot = torch.nn.functional.one_hot(labels, 6).double()  # k = 6: cluster 5 is empty too
    expected = one_hot.T @ grad.reshape(-1).double()
    got = K.centroid_gradients(grad, labels, 6)
    assert got.shape == (6,) and got.dtype == grad.dtype
    assert torch.allclose(got.double(), expected, atol=1e-6)
    assert got[3] == 0 and got[5] == 0


# ---------------------------------------------------------------------------------- no mutation, errors
def test_inputs_are_not_modified():
    w = heavy_tailed(500, seed=11).double()  # float64 so no dtype conversion hides an in-place write
    keep = w.clone()
    K.kmeans_1d(w, 4), K.kmeans_1d_fast(w, 4), K.kmeans_1d_optimal(w, 4), K.linear_init(w, 4)
    K.kmeans_1d(w, 4, init="kmeans++"), K.kmeans_quantize(w, 2)
    centroids, labels = K.kmeans_1d(w, 4)
    c_keep, l_keep = centroids.clone(), labels.clone()
    K.update_centroids_mean(w, labels, 4, centroids), K.centroid_gradients(w, labels, 4), K.sse(w, centroids, labels)
    K.decode(K.Codebook(centroids, labels), w.shape), K.assign(w, centroids)
    assert torch.equal(w, keep) and torch.equal(centroids, c_keep) and torch.equal(labels, l_keep)


@pytest.mark.parametrize("call,error,match", [
    (lambda: K.kmeans_1d(torch.tensor([1.0, 2.0]), 0), ValueError, "k"),
    (lambda: K.kmeans_1d(torch.tensor([1.0, 2.0]), 2.0), ValueError, "k"),
    (lambda: K.kmeans_1d(torch.tensor([]), 2), ValueError, "empty"),
    (lambda: K.kmeans_1d_fast(torch.tensor([1, 2]), 2), TypeError, "floating-point"),
    (lambda: K.kmeans_1d_optimal(torch.tensor([1, 2]), 2), TypeError, "floating-point"),
    (lambda: K.kmeans_1d([1.0, 2.0], 2), TypeError, "torch.Tensor"),
    (lambda: K.kmeans_1d(torch.tensor([1.0, float("nan")]), 2), ValueError, "NaN"),
    (lambda: K.kmeans_1d(torch.tensor([1.0, 2.0]), 2, init="gaussian"), ValueError, "init"),
    (lambda: K.kmeans_1d(torch.tensor([1.0, 2.0]), 2, iters=-1), ValueError, "iters"),
    (lambda: K.kmeans_quantize(torch.tensor([1.0, 2.0]), 0), ValueError, "bits"),
    (lambda: K.kmeans_quantize(torch.tensor([1.0, 2.0]), 17), ValueError, "bits"),
    (lambda: K.kmeans_quantize(torch.tensor([1.0, 2.0]), 2, method="dp"), ValueError, "method"),
    (lambda: K.compressed_bits(10, 0), ValueError, "bits"),
    (lambda: K.compressed_bits(-1, 2), ValueError, "numel"),
    (lambda: K.centroid_gradients(torch.ones(3), torch.tensor([0, 1]), 2), ValueError, "elements"),
    (lambda: K.centroid_gradients(torch.ones(2), torch.tensor([0, 2]), 2), ValueError, "labels must lie"),
    (lambda: K.centroid_gradients(torch.ones(2), torch.tensor([0.0, 1.0]), 2), TypeError, "int64"),
    (lambda: K.assign(torch.ones(2), torch.tensor([1.0, 0.0])), ValueError, "sorted"),
    (lambda: K.decode(K.Codebook(torch.ones(2), torch.tensor([0, 1, 1])), (2, 2)), ValueError, "elements"),
])
def test_bad_input_raises_a_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ------------------------------------------------------------------------------------------ fine-tuning
def teacher_data(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 12, generator=generator)
    teacher = torch.randn(12, 3, generator=generator)
    return x, (x @ teacher).argmax(dim=1)


def small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 3))


def batches(x: torch.Tensor, y: torch.Tensor, size: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


def test_quantize_model_kmeans_copies_and_quantizes_every_layer():
    model = small_model()
    before = copy.deepcopy(model.state_dict())
    quantized, codebooks = K.quantize_model_kmeans(model, bits={"0": 2, "2": 3})
    assert set(codebooks) == {"0", "2"}
    for name, bits in (("0", 2), ("2", 3)):
        weight = dict(quantized.named_modules())[name].weight
        assert len(torch.unique(weight)) <= 2**bits
        assert torch.equal(weight, K.decode(codebooks[name], weight.shape))
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    assert torch.equal(quantized[0].bias, model[0].bias), "biases stay float"
    with pytest.raises(ValueError, match="not a module"):
        K.quantize_model_kmeans(model, 2, layers=["fc9"])


@pytest.mark.parametrize("rule,lr", [("gradient", 3e-2), ("mean", 1e-1)])
def test_finetune_stays_on_codebook_lowers_loss_and_mutates_nothing(rule, lr):
    x, y = teacher_data()
    model, codebooks = K.quantize_model_kmeans(small_model(), 2)
    model_before = copy.deepcopy(model.state_dict())
    codebooks_before = {name: (c.clone(), l.clone()) for name, (c, l) in codebooks.items()}
    loss_before = nn.functional.cross_entropy(model(x), y).item()
    result = K.finetune_codebooks(model, codebooks, batches(x, y), epochs=5, lr=lr, rule=rule,
                                  optimizer="adam", progress=False)
    loss_after = nn.functional.cross_entropy(result.model(x), y).item()
    assert loss_after < loss_before - 0.05, (loss_before, loss_after)
    assert len(result.losses) == 5 * 8
    for name, module in (("0", result.model[0]), ("2", result.model[2])):
        assert len(torch.unique(module.weight)) <= 4
        assert torch.equal(module.weight, K.decode(result.codebooks[name], module.weight.shape))
        assert bool((result.codebooks[name].centroids[1:] >= result.codebooks[name].centroids[:-1]).all())
    assert torch.equal(result.model[0].bias, model[0].bias), "biases are frozen by default"
    assert all(torch.equal(model_before[key], value) for key, value in model.state_dict().items())
    for name, (c, l) in codebooks_before.items():
        assert torch.equal(codebooks[name].centroids, c) and torch.equal(codebooks[name].labels, l)


def test_one_sgd_step_of_each_rule_matches_its_formula():
    """gradient rule: c -= lr * sum of member grads; mean rule (SGD): c -= lr * mean of member grads."""
    x, y = teacher_data(64)
    model, codebooks = K.quantize_model_kmeans(small_model(), 2)
    reference = copy.deepcopy(model)
    nn.functional.cross_entropy(reference(x), y).backward()
    lr = 0.05
    results = {rule: K.finetune_codebooks(model, codebooks, [(x, y)], lr=lr, rule=rule, optimizer="sgd",
                                          progress=False) for rule in K.RULES}
    for index in (0, 2):
        centroids, labels = codebooks[str(index)]
        one_hot = nn.functional.one_hot(labels, 4).float()
        grad_sum = one_hot.T @ reference[index].weight.grad.reshape(-1)
        counts = one_hot.sum(0)
        expected = {"gradient": centroids - lr * grad_sum,
                    "mean": centroids - lr * grad_sum / counts.clamp_min(1)}
        for rule, result in results.items():
            want = expected[rule][labels].reshape(reference[index].weight.shape)
            assert torch.allclose(result.model[index].weight, want, atol=1e-6), (rule, index)
        assert not torch.allclose(results["gradient"].model[index].weight, results["mean"].model[index].weight)


def test_finetune_with_max_batches_and_train_others():
    x, y = teacher_data()
    model, codebooks = K.quantize_model_kmeans(small_model(), 2)
    result = K.finetune_codebooks(model, codebooks, batches(x, y), epochs=2, lr=1e-2, optimizer="adam",
                                  max_batches=3, progress=False, train_others=True)
    assert len(result.losses) == 6
    assert not torch.equal(result.model[0].bias, model[0].bias)
    with pytest.raises(ValueError, match="rule"):
        K.finetune_codebooks(model, codebooks, batches(x, y), rule="median", progress=False)


def test_quantize_course_mlp_when_available():
    models = pytest.importorskip("lowbit.models")
    quantized, codebooks = K.quantize_model_kmeans(models.TinyMLP(), 4)
    assert set(codebooks) == {"fc1", "fc2"}
    assert len(torch.unique(quantized.fc1.weight)) <= 16


def test_finetune_codebooks_uses_the_given_gradient_and_mean_functions():
    """The labs pass the student's centroid_gradients / update_centroids_mean: they must be the ones called."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    _, codebooks = K.quantize_model_kmeans(model, 2)
    batches = [(torch.randn(8, 6), torch.randint(0, 3, (8,))) for _ in range(3)]
    calls = {"gradient": 0, "mean": 0}

    def gradient_fn(grad_w, labels, k):
        calls["gradient"] += 1
        return K.centroid_gradients(grad_w, labels, k)

    def mean_fn(w, labels, k, old):
        calls["mean"] += 1
        return K.update_centroids_mean(w, labels, k, old)

    default = K.finetune_codebooks(model, codebooks, batches, lr=0.05, progress=False)
    given = K.finetune_codebooks(model, codebooks, batches, lr=0.05, progress=False, gradient_fn=gradient_fn)
    assert calls == {"gradient": 3 * 2, "mean": 0}
    assert default.losses == given.losses
    K.finetune_codebooks(model, codebooks, batches, lr=0.05, rule="mean", progress=False, mean_fn=mean_fn)
    assert calls["mean"] == 3 * 2
    zero = K.finetune_codebooks(model, codebooks, batches, lr=0.05, progress=False,
                                gradient_fn=lambda g, labels, k: torch.zeros(k))
    for name, codebook in codebooks.items():   # a zero gradient leaves every centroid where it was
        assert torch.equal(zero.codebooks[name].centroids, codebook.centroids)


def test_batchnorm_statistics_update_only_with_update_bn():
    x, y = teacher_data()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 24), nn.BatchNorm1d(24), nn.ReLU(), nn.Linear(24, 3)).eval()
    quantized, codebooks = K.quantize_model_kmeans(model, 2)
    frozen = K.finetune_codebooks(quantized, codebooks, batches(x, y), lr=1e-2, optimizer="adam", progress=False,
                                  update_bn=False)
    assert torch.equal(frozen.model[1].running_mean, model[1].running_mean)
    assert not frozen.model.training, "returned in the input's mode"
    updated = K.finetune_codebooks(quantized, codebooks, batches(x, y), lr=1e-2, optimizer="adam", progress=False)
    assert not torch.equal(updated.model[1].running_mean, model[1].running_mean)
    assert torch.equal(quantized[1].running_mean, model[1].running_mean), "input not modified"


def test_cosine_schedule_takes_smaller_and_smaller_steps():
    """Loss = sum of outputs, so every batch gives the same weight gradient: with SGD the gradient rule
    moves a centroid by lr * g per batch (constant) or by lr * g * (1 + cos(pi t / T)) / 2 (cosine)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3, bias=False))
    _, codebooks = K.quantize_model_kmeans(model, 2)
    x = torch.randn(4, 5)
    batches = [(x, torch.zeros(4, dtype=torch.long))] * 4
    lr = 1e-2

    def loss_fn(outputs, _):
        return outputs.sum()

    grad_w = x.sum(0).expand(3, 5)  # d(sum of x @ W.T) / dW, the same for every batch
    centroids, labels = codebooks["0"]
    step = K.centroid_gradients(grad_w, labels, 4) * lr
    factors = {"constant": 4.0, "cosine": sum((1 + math.cos(math.pi * t / 4)) / 2 for t in range(4))}
    for schedule, factor in factors.items():
        result = K.finetune_codebooks(model, codebooks, batches, lr=lr, optimizer="sgd", schedule=schedule,
                                      loss_fn=loss_fn, progress=False)
        want = (centroids - factor * step)[labels].reshape(3, 5)
        assert torch.allclose(result.model[0].weight, want, atol=1e-6), schedule
    assert factors["cosine"] == pytest.approx(2.5)  # 1 + 0.854 + 0.5 + 0.146: later steps are smaller


def test_cosine_schedule_needs_a_loader_with_a_length():
    model = nn.Sequential(nn.Linear(5, 3))
    _, codebooks = K.quantize_model_kmeans(model, 2)
    endless = (batch for batch in [(torch.randn(4, 5), torch.zeros(4, dtype=torch.long))])
    with pytest.raises(ValueError, match="needs the number of batches"):
        K.finetune_codebooks(model, codebooks, endless, schedule="cosine", progress=False)
    with pytest.raises(ValueError, match="schedule"):
        K.finetune_codebooks(model, codebooks, [(torch.randn(4, 5), torch.zeros(4, dtype=torch.long))],
                             schedule="linear", progress=False)
