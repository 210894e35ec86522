"""Lab 4 reference accuracy table: binary and ternary training of the course CNN, with lowbit's reference code.

    .venv/bin/python benchmarks/bench_lab4_accuracy.py [--write] [--full-test] [--threads 1]

The lab's recipe, one function: ``lowbit.quant.binary_train.train_binary`` — the pretrained CNN, conv2 and conv3
binary or ternary, the first conv and the fc layer at 8 bits per channel (LSQ), BatchNorm kept (batch statistics
while training), 3 epochs over the 6,000 embedded training images (batches of 128, seed 0), Adam with the
method's tuned learning rate (``binary_train.DEFAULT_LR``) and a cosine decay. Methods: BinaryConnect
(deterministic; stochastic, tested with its real-valued weights as the paper does and with their signs), BWN,
TWN, TTQ and W1A1 (XNOR-style: BWN weights and sign activations into conv2 and conv3, the fc input at 8 bits).
Sizes: ``binary_train.binary_size_bits`` (1 bit per binary weight, 2 per ternary one, 8 for the first and last
layer, 32 for scales, BatchNorm's γ / β and biases; the stochastic model tested with real weights stores them in
fp32). Accuracy on the embedded test subset (3,000 images, what the lab shows); ``--full-test`` adds the full
10,000-image test set (Debian package dataset-fashion-mnist). Goals (issue 14): TTQ and TWN within 1.5 pt of FP32,
BWN within 3 pt. ``--write`` puts the table into benchmarks/RESULTS.md ("Lab 4 accuracy"). Seeded and
single-threaded: the same figures every run.
"""
from __future__ import annotations

import argparse
import math
import time

import torch
from tqdm import tqdm

import lowbit
from _accuracy import Evaluators, test_evaluators, training_options
from _results import write_section
from lowbit.models import model_size_bits
from lowbit.quant import binary_train as BT

EPOCHS = 3
GOALS = {"TTQ": 1.5, "TWN": 1.5, "BWN": 3.0}              # row label: largest drop vs FP32 in pt
#: (row label, method, stochastic test mode or None, weight bits of the binary layers as stored)
ROWS = [("BinaryConnect, deterministic", "binaryconnect", None, "1"),
        ("BinaryConnect, stochastic (real-valued test weights)", "binaryconnect_stochastic", "real",
         "32 (1 in training)"),
        ("BinaryConnect, stochastic (sign test weights)", "binaryconnect_stochastic", "sign", "1"),
        ("BWN", "bwn", None, "1"),
        ("TWN", "twn", None, "2 (ternary)"),
        ("TTQ", "ttq", None, "2 (ternary)"),
        ("W1A1 (XNOR: BWN weights, sign activations)", "xnor", None, "1")]


def epoch_losses(losses: list[float], epochs: int) -> str:
    """The mean training loss of each epoch, "a → b → c" (NaN kept)."""
    per = max(1, len(losses) // epochs)
    means = [sum(losses[i:i + per]) / len(losses[i:i + per]) for i in range(0, per * epochs, per)]
    return " → ".join("nan" if not math.isfinite(m) else f"{m:.3f}" for m in means)


def study(evaluators: Evaluators, epochs: int, fraction: float, progress: bool) -> list[dict]:
    """One dict per table row: name, bits, size (bits), accuracies per test set, seconds, loss summary."""
    model = lowbit.models.pretrained("cnn")
    rows = [{"name": "FP32", "bits": "32", "size": model_size_bits(model),
             "acc": {name: fn(model) for name, fn in evaluators.items()}, "seconds": None, "losses": ""}]
    runs: dict[str, lowbit.quant.qat.QATRun] = {}
    for label, method, mode, bits in tqdm(ROWS, desc="Lab 4 methods", disable=not progress):
        if method not in runs:
            runs[method] = BT.train_binary(model, method, epochs=epochs, fraction=fraction, progress=progress)
        run = runs[method]
        if mode is not None:
            BT.set_stochastic_test_mode(run.model, mode)
        rows.append({"name": label, "bits": bits, "size": BT.binary_size_bits(run.model),
                     "acc": {name: fn(run.model) for name, fn in evaluators.items()}, "seconds": run.seconds,
                     "losses": epoch_losses(run.losses, epochs), "lr": run.settings["lr"]})
    return rows


def markdown(rows: list[dict], test_sets: list[str]) -> str:
    fp32 = rows[0]
    header = ["configuration", "binary-layer weight bits"]
    for test_set in test_sets:
        header += [f"accuracy ({test_set})", f"vs FP32 ({test_set})"]
    header += ["size (KiB)", "size vs FP32", "training (s)", "mean loss per epoch"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["name"], row["bits"]]
        for test_set in test_sets:
            change = 100 * (row["acc"][test_set] - fp32["acc"][test_set])
            cells += [f"{100 * row['acc'][test_set]:.2f} %", f"{change:+.2f} pt"]
        cells += [f"{row['size'] / 8 / 1024:.1f}", f"{fp32['size'] / row['size']:.1f}×",
                  "—" if row["seconds"] is None else f"{row['seconds']:.0f}", row["losses"] or "—"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goal_lines(rows: list[dict], test_sets: list[str]) -> list[str]:
    by_name = {row["name"]: row for row in rows}
    lines = []
    for test_set in test_sets:
        fp32 = by_name["FP32"]["acc"][test_set]
        for label, max_drop in GOALS.items():
            change = 100 * (by_name[label]["acc"][test_set] - fp32)
            lines.append(f"- {label} ({test_set}): {change:+.2f} pt vs FP32, goal: a drop of at most {max_drop} pt — "
                         f"{'met' if -change <= max_drop else 'NOT met'}")
        order = " ≥ ".join(label for label in ("TTQ", "TWN", "BWN"))
        held = by_name["TTQ"]["acc"][test_set] >= by_name["TWN"]["acc"][test_set] >= by_name["BWN"]["acc"][test_set]
        lines.append(f"- ordering {order} of the ImageNet anchors ({test_set}): {'held' if held else 'NOT held'}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    training_options(parser, EPOCHS, "training epochs per method", "--epochs 1 --fraction 0.05")
    args = parser.parse_args()
    if args.write and (args.epochs, args.fraction) != (EPOCHS, 1.0):
        raise SystemExit("--write records the recipe's figures only: drop --epochs / --fraction")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    evaluators = test_evaluators(args.full_test)
    rows = study(evaluators, args.epochs, args.fraction, not args.no_progress)
    test_sets = list(evaluators)
    lrs = ", ".join(f"{method} {lr:g} (scales {BT.SCALE_LR[method]:g}×)" for method, lr in BT.DEFAULT_LR.items())
    text = (f"{args.epochs} epochs × {args.fraction:g} of the 6,000 embedded training images per method; Adam lr "
            f"({lrs}), cosine decay, seed 0. Test sets: embedded subset "
            f"(3,000 images){' and full (10,000)' if args.full_test else ''}.\n\n{markdown(rows, test_sets)}\n\n"
            + "\n".join(goal_lines(rows, test_sets))
            + f"\n\nTraining time is per run ({args.threads} thread; the two stochastic rows are one run tested two "
              f"ways); whole benchmark {time.perf_counter() - started:.0f} s.")
    print(text)
    if args.write:
        write_section("Lab 4 accuracy", "`benchmarks/bench_lab4_accuracy.py --write --full-test`: the lab's recipe "
                      "`lowbit.quant.binary_train.train_binary` (pretrained CNN, conv2 / conv3 binary or ternary, "
                      "conv1 and fc at 8 bits per channel, BatchNorm kept). Size: `binary_size_bits` (weights at "
                      "their bits, 32 bits per scale, BN γ / β and bias).\n\n" + text)


if __name__ == "__main__":
    main()
