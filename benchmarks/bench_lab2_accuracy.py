"""Lab 2 reference accuracy table: the course CNN under k-means quantization, with lowbit's reference code.

    .venv/bin/python benchmarks/bench_lab2_accuracy.py [--write] [--full-test]

The lab's recipe, step for step: a codebook per Conv/Linear weight from Lloyd's algorithm (linear init,
<= 100 iterations), either for every layer or with the first convolution kept fp32; then
``finetune_codebooks`` for 2 epochs over the 6,000 embedded training images (batches of 256, seed-0 loader),
Adam with lr 1e-3 decayed to 0 along a cosine, labels fixed, the remaining float parameters trained too,
BatchNorm statistics re-estimated. Accuracy on the embedded test subset (3,000 images, what the lab shows);
``--full-test`` adds the full 10,000-image test set (needs the Debian package dataset-fashion-mnist).
Goals from the course plan: 8-bit drop <= 0.2 pt; 4-bit after <= 2 epochs of fine-tuning within 0.5 pt of
FP32; 2-bit after fine-tuning within 2 pt. ``--write`` puts the tables into benchmarks/RESULTS.md
("Lab 2 accuracy"). Deterministic: the same figures every run.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable

import torch
from torch import nn
from tqdm import tqdm

import lowbit
from _accuracy import test_evaluators
from _results import write_section
from lowbit.models import model_size_bits
from lowbit.quant.kmeans import Codebook, finetune_codebooks, model_bits, quantize_model_kmeans

BITS = (8, 4, 3, 2)
FINETUNE_BITS = (4, 3, 2)
EPOCHS = 2
GOALS = {8: ("k-means", 0.2), 4: ("gradient", 0.5), 2: ("gradient", 2.0)}  # bits: (column, max drop in pt)


def quantize(model: nn.Module, bits: int, keep_float: Iterable[str]) -> tuple[nn.Module, dict[str, Codebook]]:
    return quantize_model_kmeans(model, bits, exclude=keep_float, method="lloyd", iters=100, init="linear")


def finetune(quantized: nn.Module, codebooks: dict[str, Codebook], rule: str) -> nn.Module:
    train_loader, _ = lowbit.data.loaders(batch_size=256, seed=0)
    return finetune_codebooks(quantized, codebooks, train_loader, epochs=EPOCHS, lr=1e-3, rule=rule,
                              optimizer="adam", schedule="cosine", train_others=True, progress=False).model


def size_ratio(model: nn.Module, codebooks: dict[str, Codebook], bits: int) -> float:
    """FP32 size over k-means size: ``bits`` per quantized weight, an fp32 codebook per layer, 32 bits otherwise."""
    return model_size_bits(model) / model_bits(model, codebooks, bits)


def table(evaluators: dict[str, Callable[[nn.Module], float]]) -> list[dict[str, object]]:
    """One row per (layers, bits): accuracies per test set for before / after FT with each rule."""
    lowbit.seed_everything(0)
    torch.set_num_threads(1)
    model = lowbit.models.pretrained("cnn")
    rows = [{"layers": "FP32", "bits": 32, "size": 1.0,
             "k-means": {name: fn(model) for name, fn in evaluators.items()}}]
    jobs = [(keep, bits) for keep in ((), ("conv1",)) for bits in BITS]
    for keep_float, bits in tqdm(jobs, desc="k-means + fine-tuning"):
        quantized, codebooks = quantize(model, bits, keep_float)
        row = {"layers": "conv1 fp32" if keep_float else "all", "bits": bits,
               "size": size_ratio(model, codebooks, bits),
               "k-means": {name: fn(quantized) for name, fn in evaluators.items()}}
        if bits in FINETUNE_BITS:
            for rule in ("gradient", "mean"):
                tuned = finetune(quantized, codebooks, rule)
                row[rule] = {name: fn(tuned) for name, fn in evaluators.items()}
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, object]], test_set: str) -> str:
    fp32 = rows[0]["k-means"][test_set]

    def cell(row: dict, column: str) -> str:
        if column not in row:
            return "—"
        accuracy = row[column][test_set]
        return f"{100 * accuracy:.2f} % ({100 * (accuracy - fp32):+.2f})".replace("-", "−")

    lines = ["| layers | bits | k-means | after FT, gradient rule | after FT, mean rule | size vs FP32 |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {row['layers']} | {row['bits']} | {cell(row, 'k-means')} | {cell(row, 'gradient')} | "
              f"{cell(row, 'mean')} | {row['size']:.1f}× |" for row in rows]
    return "\n".join(lines)


def goal_lines(rows: list[dict[str, object]], test_set: str) -> list[str]:
    fp32 = rows[0]["k-means"][test_set]
    lines = []
    for bits, (column, max_drop) in GOALS.items():
        row = next(r for r in rows if r["bits"] == bits and r["layers"] == ("all" if bits == 8 else "conv1 fp32"))
        change = 100 * (row[column][test_set] - fp32)
        met = "met" if -change <= max_drop else "NOT met"
        lines.append(f"- {bits}-bit ({row['layers']}, {column}): {change:+.2f} pt vs FP32, goal: a drop of at most "
                     f"{max_drop} pt — {met}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--full-test", action="store_true", help="also evaluate on the full 10,000-image test set")
    args = parser.parse_args()
    evaluators = test_evaluators(args.full_test)
    rows = table(evaluators)
    sections = []
    for test_set, label in (("embedded", "Embedded test subset (3,000 images)"), ("full", "Full test set (10,000 images)")):
        if test_set in evaluators:
            sections.append(f"**{label}**, accuracy (pt vs FP32)\n\n{markdown(rows, test_set)}\n\n"
                            + "\n".join(goal_lines(rows, test_set)))
    text = "\n\n".join(sections)
    print(text)
    if args.write:
        write_section("Lab 2 accuracy", "`benchmarks/bench_lab2_accuracy.py --write --full-test`: the lab's recipe "
                      "with lowbit's reference code — Lloyd (linear init, ≤ 100 iterations), one codebook per layer; "
                      f"fine-tuning {EPOCHS} epochs over the 6,000 embedded training images, Adam lr 1e-3 with a "
                      "cosine decay, labels fixed, other float parameters trained, BN statistics re-estimated. "
                      "Size counts indices + fp32 codebooks + 32 bits per other parameter.\n\n" + text)


if __name__ == "__main__":
    main()
