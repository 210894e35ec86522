"""Foundation figures: `import lowbit` time, checkpoint load time, and evaluate() time of the shipped CNN.

Run: .venv/bin/python benchmarks/bench_foundation.py
Peers, measured back to back on the same machine: `import lowbit` vs `import torch` (the floor any lowbit import
pays), pretrained('cnn') vs a bare torch.load of the same file, and the CNN vs its BN-folded copy.
"""
from __future__ import annotations

import platform
import statistics
import subprocess
import sys
import time

import torch

from _timing import median_seconds

REPEATS = 5


def _run_seconds(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - started


def median_import_seconds(statements: list[str]) -> list[float]:
    """Median wall time of each ``python -c statement`` in fresh interpreters, minus an empty interpreter's
    start-up. The statements are run interleaved (round-robin) so background load hits all of them alike."""
    samples: dict[str, list[float]] = {code: [] for code in ["pass", *statements]}
    for _ in range(REPEATS):
        for code in samples:
            samples[code].append(_run_seconds(code))
    baseline = statistics.median(samples["pass"])
    return [statistics.median(samples[code]) - baseline for code in statements]


def main() -> None:
    from lowbit import data, models
    from lowbit.train import evaluate

    torch.set_num_threads(1)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, python {platform.python_version()}")

    import_torch, import_lowbit = median_import_seconds(["import torch", "import lowbit"])
    print(f"import torch            : {import_torch * 1e3:8.1f} ms (fresh interpreter, median of {REPEATS})")
    print(f"import lowbit           : {import_lowbit * 1e3:8.1f} ms (ratio to import torch: "
          f"{import_lowbit / import_torch:.2f})")

    checkpoint = models.CHECKPOINT_DIR / "cnn.pt"
    load_raw = median_seconds(lambda: torch.load(checkpoint, map_location="cpu", weights_only=True), REPEATS)
    load_pretrained = median_seconds(lambda: models.pretrained("cnn"), REPEATS)
    print(f"torch.load(cnn.pt)      : {load_raw * 1e3:8.2f} ms")
    print(f"pretrained('cnn')       : {load_pretrained * 1e3:8.2f} ms (ratio to torch.load: "
          f"{load_pretrained / load_raw:.2f})")

    data.load_fashion_mnist("test")  # warm the cache: time the model, not the npz decoding
    _, test_loader = data.loaders(batch_size=500)
    model = models.pretrained("cnn")
    folded = models.fold_batchnorm(model)
    accuracy = evaluate(model, test_loader, device="cpu")
    accuracy_folded = evaluate(folded, test_loader, device="cpu")
    eval_cnn = median_seconds(lambda: evaluate(model, test_loader, device="cpu"), REPEATS)
    eval_folded = median_seconds(lambda: evaluate(folded, test_loader, device="cpu"), REPEATS)
    n = len(test_loader.dataset)
    print(f"evaluate(cnn), {n} imgs : {eval_cnn * 1e3:8.1f} ms ({n / eval_cnn:,.0f} img/s), "
          f"accuracy {accuracy:.4f}")
    print(f"evaluate(folded cnn)    : {eval_folded * 1e3:8.1f} ms ({n / eval_folded:,.0f} img/s), "
          f"accuracy {accuracy_folded:.4f}, speed-up vs unfolded {eval_cnn / eval_folded:.2f}x")
    cold = subprocess.run([sys.executable, "-c", "import time; t=time.perf_counter(); import lowbit.data as d; "
                           "d.load_fashion_mnist('train'); d.load_fashion_mnist('test'); "
                           "print(time.perf_counter()-t)"], check=True, capture_output=True, text=True)
    print(f"embedded subset decode  : {float(cold.stdout) * 1e3:8.1f} ms (cold, fresh interpreter, "
          f"both splits, incl. importing lowbit.data)")


if __name__ == "__main__":
    main()
