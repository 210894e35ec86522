"""K-means quantization benchmark: lowbit's 1-D k-means against two named peers, and Lloyd against the optimum.

Part 1 — 1,000,000 weights, k = 16, on three seeded data sets: N(0, 0.05²) (weights at init), a heavy-tailed
mixture (90 % N(0, 0.01²) + 10 % Laplace(0, 0.05)), and the shipped model's weights resampled with
replacement to 1 M. Methods run interleaved, back to back in this process; median of the runs.

  a. **As their users call them** (each library's defaults; the headline ratio):
     - ``lowbit.quant.kmeans.kmeans_1d_fast(w, 16)`` (linear init, Lloyd to convergence), the reference row,
       and with its one option for minimum SSE, ``init="quantile"``,
     - scikit-learn ``KMeans(16, n_init=1, random_state=r)`` (k-means++ init, tol=1e-4, max_iter=300),
       ``random_state`` = the run's index so each run is reproducible and the runs differ,
     - ``fast_pytorch_kmeans.KMeans(16).fit_predict(X)`` (random init, tol=1e-4, max_iter=100), torch seed r.
  b. **Matched** (every method from the same linear init, run to convergence: labels unchanged, tol=0, at most
     MAX_ITER iterations — the same Lloyd iterations, so the same centroids): the two lowbit Lloyds,
     scikit-learn ``KMeans(16, n_init=1, init=<linear init>, algorithm="lloyd", tol=0)`` and
     ``fast_pytorch_kmeans.KMeans(16, tol=0)`` with ``fit_predict(X, centroids=<linear init>)``.

Part 2 — where ``kmeans_1d_fast``'s time goes: cProfile of its calls on the N(0, 0.05²) set.

Part 3 — a real layer (the largest weight tensor of the shipped model): SSE of Lloyd (linear init, and
k-means++) over the exact optimum of ``kmeans_1d_optimal`` for growing k.

Run: ``.venv/bin/python benchmarks/bench_kmeans.py`` (one torch thread unless ``--threads``; scikit-learn with
its own OpenMP threads unless ``--peer-threads``; needs the ``bench`` extra: scikit-learn, fast-pytorch-kmeans).
Prints a markdown block for ``benchmarks/RESULTS.md``.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import statistics
import sys
import time
import warnings
from typing import Callable, NamedTuple

import numpy as np
import torch

from lowbit.quant import kmeans as K

N = 1_000_000
K_CLUSTERS = 16
MAX_ITER = 300
SEED = 0
LARGE_KS = (4, 16, 64, 256)


def normal_weights(n: int, seed: int) -> torch.Tensor:
    """N(0, 0.05²) float32 [n], the data of the issue's measurement."""
    return (0.05 * torch.randn(n, generator=torch.Generator().manual_seed(seed))).float()


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
class Fit(NamedTuple):
    centroids: torch.Tensor
    labels: torch.Tensor
    n_iter: int | None  # iterations run, where the library reports it


def to_fit(centroids: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, n_iter: int | None = None) -> Fit:
    centroids, labels = torch.as_tensor(centroids), torch.as_tensor(labels)
    return Fit(centroids.reshape(-1).float(), labels.reshape(-1).long(), n_iter)


def sklearn_fit(x: np.ndarray, **options: object) -> Fit:
    from sklearn.cluster import KMeans
    model = KMeans(n_clusters=K_CLUSTERS, n_init=1, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x)
    return to_fit(model.cluster_centers_, model.labels_, int(model.n_iter_))


# each runner: (weights [n] float32, the linear init [k], index of the run) -> Fit
def lowbit_defaults(w: torch.Tensor, init: torch.Tensor, run: int) -> Fit:
    return to_fit(*K.kmeans_1d_fast(w, K_CLUSTERS))


def lowbit_quantile(w: torch.Tensor, init: torch.Tensor, run: int) -> Fit:
    return to_fit(*K.kmeans_1d_fast(w, K_CLUSTERS, init="quantile"))


def sklearn_defaults(w: torch.Tensor, init: torch.Tensor, run: int) -> Fit:
    return sklearn_fit(w.numpy().reshape(-1, 1), random_state=run)


def fast_pytorch_kmeans_defaults(w: torch.Tensor, init: torch.Tensor, run: int) -> Fit:
    from fast_pytorch_kmeans import KMeans
    torch.manual_seed(run)
    model = KMeans(n_clusters=K_CLUSTERS)
    labels = model.fit_predict(w.reshape(-1, 1))
    return to_fit(model.centroids, labels)


def lowbit_fast_matched(w: torch.Tensor, init: torch.Tensor, run: int) -> Fit:
    return to_fit(*K.kmeans_1d_fast(w, K_CLUSTERS, iters=MAX_ITER, init="linear"))


def lowbit_plain_matched(w: torch.Tensor, init: torch.Tensor, run: int) -> Fit:
    return to_fit(*K.kmeans_1d(w, K_CLUSTERS, iters=MAX_ITER, init="linear"))


def sklearn_matched(w: torch.Tensor, init: torch.Tensor, run: int) -> Fit:
    x = w.numpy().reshape(-1, 1)
    return sklearn_fit(x, init=init.numpy().reshape(-1, 1).astype(x.dtype), max_iter=MAX_ITER, tol=0.0,
                       algorithm="lloyd")


def fast_pytorch_kmeans_matched(w: torch.Tensor, init: torch.Tensor, run: int) -> Fit:
    from fast_pytorch_kmeans import KMeans
    model = KMeans(n_clusters=K_CLUSTERS, max_iter=MAX_ITER, tol=0.0, mode="euclidean")
    labels = model.fit_predict(w.reshape(-1, 1), centroids=init.reshape(-1, 1).clone())
    return to_fit(model.centroids, labels)


class Table(NamedTuple):
    caption: str
    runners: dict[str, Callable[[torch.Tensor, torch.Tensor, int], Fit]]
    runs: dict[str, int]  # runs per method (median reported); the first runner is the reference


AS_USERS_CALL = Table(
    "as their users call them: each library's defaults",
    {"lowbit `kmeans_1d_fast(w, 16)`": lowbit_defaults,
     "lowbit `kmeans_1d_fast(w, 16, init='quantile')`": lowbit_quantile,
     "scikit-learn `KMeans(16, n_init=1)` (k-means++)": sklearn_defaults,
     "fast_pytorch_kmeans `KMeans(16)` (random init)": fast_pytorch_kmeans_defaults},
    {"lowbit `kmeans_1d_fast(w, 16)`": 5, "lowbit `kmeans_1d_fast(w, 16, init='quantile')`": 5,
     "scikit-learn `KMeans(16, n_init=1)` (k-means++)": 5,
     "fast_pytorch_kmeans `KMeans(16)` (random init)": 1})
MATCHED = Table(
    f"matched: every method from lowbit's linear init, tol = 0, ≤ {MAX_ITER} iterations",
    {"lowbit kmeans_1d_fast": lowbit_fast_matched,
     "lowbit kmeans_1d (plain Lloyd)": lowbit_plain_matched,
     "scikit-learn KMeans (lloyd), matched init": sklearn_matched,
     "fast_pytorch_kmeans KMeans, matched init": fast_pytorch_kmeans_matched},
    # the two slowest (about 25 s and 2–3 min per run here) run once
    {"lowbit kmeans_1d_fast": 3, "lowbit kmeans_1d (plain Lloyd)": 1,
     "scikit-learn KMeans (lloyd), matched init": 3, "fast_pytorch_kmeans KMeans, matched init": 1})


def spread(values: list[float], fmt: str) -> str:
    low, high = min(values), max(values)
    return format(low, fmt) if low == high else f"{low:{fmt}}–{high:{fmt}}"


def compare_on(label: str, w: torch.Tensor, table: Table) -> list[str]:
    init = K.linear_init(w, K_CLUSTERS)
    times: dict[str, list[float]] = {name: [] for name in table.runners}
    errors: dict[str, list[float]] = {name: [] for name in table.runners}
    n_iters: dict[str, list[int]] = {name: [] for name in table.runners}
    for run in range(max(table.runs.values())):  # interleaved, back to back
        for name, runner in table.runners.items():
            if run >= table.runs[name]:
                continue
            start = time.perf_counter()
            fit = runner(w, init, run)
            times[name].append(time.perf_counter() - start)
            errors[name].append(K.sse(w, fit.centroids, fit.labels))
            if fit.n_iter is not None:
                n_iters[name].append(fit.n_iter)
            print(f"  {label}: {name} {times[name][-1]:.3f} s, SSE {errors[name][-1]:.6g}", file=sys.stderr, flush=True)
    reference = next(iter(table.runners))
    ref_time, ref_sse = statistics.median(times[reference]), statistics.median(errors[reference])
    lines = [f"**{label}** (n = {w.numel():,}, k = {K_CLUSTERS}; {table.caption}; median of the runs)", "",
             "| method | runs | time (s) | time / lowbit fast | SSE (median) | SSE / lowbit fast | notes |",
             "|---|---|---|---|---|---|---|"]
    for name in table.runners:
        median, error = statistics.median(times[name]), statistics.median(errors[name])
        note = [f"n_iter {spread(n_iters[name], 'd')}"] if n_iters[name] else []
        if len(set(errors[name])) > 1:
            note.insert(0, f"SSE {spread(errors[name], '.6g')} over the runs")
        lines.append(f"| {name} | {len(times[name])} | {median:.3f} | {median / ref_time:.1f}× | {error:.6g} | "
                     f"{error / ref_sse:.6f} | {'; '.join(note)} |")
    lines.append("")
    return lines


def where_the_time_goes(w: torch.Tensor, calls: int = 5, top: int = 8) -> list[str]:
    """cProfile of ``calls`` calls of ``kmeans_1d_fast(w, 16)``: the functions with the most own time."""
    K.kmeans_1d_fast(w, K_CLUSTERS)  # warm-up
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.runcall(lambda: [K.kmeans_1d_fast(w, K_CLUSTERS) for _ in range(calls)])
    wall = (time.perf_counter() - start) / calls
    stats = pstats.Stats(profiler).stats  # {(file, line, function): (calls, ncalls, tottime, cumtime, callers)}
    rows = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:top]
    lines = [f"**Where `kmeans_1d_fast(w, 16)`'s time goes** (N(0, 0.05²), n = {w.numel():,}; cProfile of {calls} "
             f"calls, {wall * 1e3:.1f} ms per call under the profiler; own time per call)", "",
             "| function | calls per call | own time (ms) | share |", "|---|---|---|---|"]
    for (path, line, function), (_, ncalls, own, _, _) in rows:
        where = function if path == "~" else f"{function} ({os.path.basename(path)}:{line})"
        lines.append(f"| `{where}` | {ncalls / calls:g} | {own / calls * 1e3:.2f} | {own / calls / wall:.0%} |")
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


def sklearn_threads() -> int:
    from threadpoolctl import threadpool_info
    return max((pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "openmp"), default=1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (lowbit, fast_pytorch_kmeans; default 1)")
    parser.add_argument("--peer-threads", type=int, default=0,
                        help="scikit-learn's OpenMP/BLAS threads (default 0: its own, as its users run it)")
    parser.add_argument("--n", type=int, default=N, help=f"weights per data set (default {N:,})")
    parser.add_argument("--defaults-only", action="store_true",
                        help="only the as-users-call-them tables and the profile (skips the slow matched runs)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.peer_threads:
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.peer_threads)
    import sklearn
    import fast_pytorch_kmeans  # noqa: F401 (version below)
    from importlib.metadata import version

    model_name, model = shipped_model()
    load = os.getloadavg()[0]
    lines = [f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()}, "
             f"{os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), numpy "
             f"{np.__version__}, scikit-learn {sklearn.__version__} ({sklearn_threads()} OpenMP threads), "
             f"fast-pytorch-kmeans "
             f"{version('fast-pytorch-kmeans')}; load average at start {load:.2f}.", ""]
    data = {"N(0, 0.05²)": normal_weights(args.n, SEED), "Heavy-tailed mixture": heavy_tailed_mixture(args.n, SEED),
            f"Shipped `{model_name}` weights resampled": resampled_weights(model, args.n, SEED)}
    for table in (AS_USERS_CALL,) if args.defaults_only else (AS_USERS_CALL, MATCHED):
        for label, w in data.items():
            lines += compare_on(label, w, table)
    lines += where_the_time_goes(data["N(0, 0.05²)"])
    if not args.defaults_only:
        layer_name, layer = largest_layer(model)
        lines += lloyd_vs_optimum(f"{model_name}.{layer_name}", layer)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
