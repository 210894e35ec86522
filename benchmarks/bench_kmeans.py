"""K-means quantization benchmark: lowbit's 1-D k-means against two named peers, and Lloyd against the optimum.

Part 1 — 1,000,000 weights, k = 16, every method started from the same linear init (Deep Compression's) and
run to convergence (labels unchanged; at most MAX_ITER iterations), back to back in this process, median
of REPEATS runs (one run for the two slowest):
  - ``lowbit.quant.kmeans.kmeans_1d_fast`` (sort + prefix sums),
  - ``lowbit.quant.kmeans.kmeans_1d`` (plain vectorized Lloyd, for reference),
  - scikit-learn ``KMeans(n_clusters=16, n_init=1, init=<linear init>, algorithm="lloyd", tol=0)``,
  - ``fast_pytorch_kmeans.KMeans(n_clusters=16, tol=0)`` with ``fit_predict(X, centroids=<linear init>)``.
Two data sets (both seeded): a heavy-tailed mixture (90 % N(0, 0.01²) + 10 % Laplace(0, 0.05)), and the
shipped model's weights resampled with replacement to 1 M.

Part 2 — a real layer (the largest weight tensor of the shipped model): SSE of Lloyd (linear init, and
k-means++) over the exact optimum of ``kmeans_1d_optimal`` for growing k.

Run: ``.venv/bin/python benchmarks/bench_kmeans.py [--threads 1]`` (needs the ``bench`` extra: scikit-learn,
fast-pytorch-kmeans). Prints a markdown block for ``benchmarks/RESULTS.md``.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings
from typing import Callable

import numpy as np
import torch

from lowbit.quant import kmeans as K

N = 1_000_000
K_CLUSTERS = 16
MAX_ITER = 300
REPEATS = 3
SEED = 0
LARGE_KS = (4, 16, 64, 256)


def heavy_tailed_mixture(n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    core = 0.01 * torch.randn(n, generator=generator)
    uniform = torch.rand(n, generator=generator) - 0.5
    laplace = -0.05 * uniform.sign() * torch.log1p(-2 * uniform.abs())
    tail = torch.rand(n, generator=generator) < 0.1
    return torch.where(tail, laplace, core).float()


def shipped_model() -> tuple[str, torch.nn.Module]:
    from lowbit.models import pretrained
    for name in ("cnn", "mlp"):
        try:
            return name, pretrained(name)
        except FileNotFoundError:
            continue
    raise SystemExit("no shipped checkpoint found in lowbit/checkpoints (cnn.pt or mlp.pt)")


def resampled_weights(model: torch.nn.Module, n: int, seed: int) -> torch.Tensor:
    weights = torch.cat([p.detach().reshape(-1) for name, p in model.named_parameters() if name.endswith("weight")
                         and p.dim() > 1])
    generator = torch.Generator().manual_seed(seed)
    return weights[torch.randint(weights.numel(), (n,), generator=generator)].float()


def largest_layer(model: torch.nn.Module) -> tuple[str, torch.Tensor]:
    name, weight = max(((n, p) for n, p in model.named_parameters() if p.dim() > 1), key=lambda item: item[1].numel())
    return name, weight.detach()


# ------------------------------------------------------------------------------------------- runners
def run_lowbit_fast(w: torch.Tensor, init: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, str]:
    centroids, labels = K.kmeans_1d_fast(w, K_CLUSTERS, iters=MAX_ITER, init="linear")
    return centroids, labels, ""


def run_lowbit_plain(w: torch.Tensor, init: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, str]:
    centroids, labels = K.kmeans_1d(w, K_CLUSTERS, iters=MAX_ITER, init="linear")
    return centroids, labels, ""


def run_sklearn(w: torch.Tensor, init: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, str]:
    from sklearn.cluster import KMeans
    x = w.numpy().reshape(-1, 1)
    model = KMeans(n_clusters=K_CLUSTERS, n_init=1, init=init.numpy().reshape(-1, 1).astype(x.dtype),
                   max_iter=MAX_ITER, tol=0.0, algorithm="lloyd")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x)
    return (torch.from_numpy(model.cluster_centers_.reshape(-1).astype(np.float32)),
            torch.from_numpy(model.labels_.astype(np.int64)), f"n_iter={model.n_iter_}")


def run_fast_pytorch_kmeans(w: torch.Tensor, init: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, str]:
    from fast_pytorch_kmeans import KMeans
    model = KMeans(n_clusters=K_CLUSTERS, max_iter=MAX_ITER, tol=0.0, mode="euclidean")
    labels = model.fit_predict(w.reshape(-1, 1), centroids=init.reshape(-1, 1).clone())
    return model.centroids.reshape(-1).float(), labels.long(), ""


RUNNERS: dict[str, Callable] = {
    "lowbit kmeans_1d_fast": run_lowbit_fast,
    "lowbit kmeans_1d (plain Lloyd)": run_lowbit_plain,
    "scikit-learn KMeans (lloyd)": run_sklearn,
    "fast_pytorch_kmeans KMeans": run_fast_pytorch_kmeans,
}
REFERENCE = "lowbit kmeans_1d_fast"
#: Runs per method (median reported). The two slowest (about 25 s and 2–3 min per run here) run once.
RUNS = {"lowbit kmeans_1d_fast": REPEATS, "lowbit kmeans_1d (plain Lloyd)": 1,
        "scikit-learn KMeans (lloyd)": REPEATS, "fast_pytorch_kmeans KMeans": 1}


def compare_on(label: str, w: torch.Tensor) -> list[str]:
    init = K.linear_init(w, K_CLUSTERS)
    times: dict[str, list[float]] = {name: [] for name in RUNNERS}
    results = {}
    for repeat in range(REPEATS):  # interleaved, back to back
        for name, runner in RUNNERS.items():
            if repeat >= RUNS[name]:
                continue
            start = time.perf_counter()
            results[name] = runner(w, init)
            times[name].append(time.perf_counter() - start)
            print(f"  {label}: {name} {times[name][-1]:.3f} s", file=sys.stderr, flush=True)
    lines = [f"**{label}** (n = {w.numel():,}, k = {K_CLUSTERS}, linear init, ≤ {MAX_ITER} iterations, "
             f"median of {REPEATS} runs; plain Lloyd and fast_pytorch_kmeans 1 run)", "",
             "| method | time (s) | time / lowbit fast | SSE | SSE / lowbit fast | notes |", "|---|---|---|---|---|---|"]
    ref_time = statistics.median(times[REFERENCE])
    ref_sse = K.sse(w, results[REFERENCE][0], results[REFERENCE][1])
    for name in RUNNERS:
        centroids, labels, note = results[name]
        error = K.sse(w, centroids, labels)
        median = statistics.median(times[name])
        lines.append(f"| {name} | {median:.3f} | {median / ref_time:.1f}× | {error:.6g} | {error / ref_sse:.6f} | {note} |")
    lines.append("")
    return lines


def lloyd_vs_optimum(layer_name: str, w: torch.Tensor) -> list[str]:
    lines = [f"**Lloyd vs exact optimum** on `{layer_name}` ({w.numel():,} weights, "
             f"{torch.unique(w).numel():,} distinct)", "",
             "| k | optimal SSE (DP) | DP time (s) | Lloyd linear init SSE / optimal | Lloyd k-means++ SSE / optimal |",
             "|---|---|---|---|---|"]
    for k in LARGE_KS:
        start = time.perf_counter()
        best = K.sse(w, *K.kmeans_1d_optimal(w, k))
        dp_time = time.perf_counter() - start
        linear = K.sse(w, *K.kmeans_1d_fast(w, k, init="linear"))
        plus = K.sse(w, *K.kmeans_1d_fast(w, k, init="kmeans++", seed=SEED))
        lines.append(f"| {k} | {best:.6g} | {dp_time:.2f} | {linear / best:.3f} | {plus / best:.3f} |")
        print(f"  optimum k={k}: DP {dp_time:.2f} s, Lloyd/optimal {linear / best:.3f}", file=sys.stderr, flush=True)
    lines.append("")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None,
                        help="torch and scikit-learn (OpenMP/BLAS) threads; default: the libraries' own")
    args = parser.parse_args(argv)
    if args.threads is not None:
        from threadpoolctl import threadpool_limits
        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    import sklearn
    import fast_pytorch_kmeans  # noqa: F401 (version below)
    from importlib.metadata import version

    model_name, model = shipped_model()
    load = os.getloadavg()[0]
    header = [f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()}, "
              f"{os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
              f"scikit-learn {sklearn.__version__}, fast-pytorch-kmeans {version('fast-pytorch-kmeans')}; "
              f"load average at start {load:.2f}.", ""]
    lines = header
    lines += compare_on("Heavy-tailed mixture", heavy_tailed_mixture(N, SEED))
    lines += compare_on(f"Shipped `{model_name}` weights resampled", resampled_weights(model, N, SEED))
    layer_name, layer = largest_layer(model)
    lines += lloyd_vs_optimum(f"{model_name}.{layer_name}", layer)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
