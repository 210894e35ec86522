"""Lab 1 reference accuracy table: the course CNN under linear quantization, with lowbit's reference code.

    .venv/bin/python benchmarks/bench_lab1_accuracy.py [--write]

Accuracy on the embedded Fashion-MNIST test subset (3,000 images, the set the labs use), BatchNorm folded,
calibration on ``lowbit.data.calibration_batch(256, seed=0)``. Deterministic: the same figures every run.
Goals from the course plan: W8A8 within 0.3 pt of FP32; W4 per-channel weights with MSE clipping within
2 pt; per-tensor min-max W4 shown for contrast. ``--write`` puts the table into benchmarks/RESULTS.md
("Lab 1 accuracy") and prints the Markdown for the README.
"""
from __future__ import annotations

import argparse

import torch

import lowbit
from _results import write_section
from lowbit.models import fold_batchnorm
from lowbit.quant import integer, ptq
from lowbit.train import evaluate


def table() -> list[tuple[str, float]]:
    lowbit.seed_everything(0)
    torch.set_num_threads(2)
    model = fold_batchnorm(lowbit.models.pretrained("cnn"))
    _, test_loader = lowbit.data.loaders(batch_size=500)
    calib, _ = lowbit.data.calibration_batch(256, seed=0)
    rows = [("FP32", evaluate(model, test_loader))]
    for observer in ("minmax", "ema", "percentile", "mse", "kl"):
        rows.append((f"W8A8, per-channel weights, {observer} activations",
                     evaluate(ptq.ptq(model, calib, 8, 8, observer=observer, progress=False), test_loader)))
    rows.append(("W8A8 integer-only (min-max)", integer.integerize(model, calib, bits=8).evaluate(test_loader)))
    for observer in ("minmax", "mse"):
        rows.append((f"W4A8, per-channel MSE-clipped weights, {observer} activations",
                     evaluate(ptq.ptq(model, calib, 4, 8, observer=observer, clip="mse", progress=False), test_loader)))
    for label, granularity, clip in (("per-tensor, min-max", "tensor", "minmax"),
                                     ("per-channel, min-max", "channel", "minmax"),
                                     ("per-channel, MSE clipping", "channel", "mse"),
                                     ("per-group of 16, min-max", "group", "minmax")):
        weights = ptq.quantize_weights(model, 4, granularity=granularity, group_size=16, clip=clip)
        rows.append((f"W4 weights only, {label}", evaluate(weights, test_loader)))
    return rows


def markdown(rows: list[tuple[str, float]]) -> str:
    fp32 = rows[0][1]
    lines = ["| configuration | accuracy | vs FP32 |", "|---|---|---|"]
    lines += [f"| {name} | {100 * acc:.2f} % | {100 * (acc - fp32):+.2f} pt |" for name, acc in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    text = markdown(table())
    print(text)
    if args.write:
        write_section("Lab 1 accuracy", "Course CNN on the embedded test subset (3,000 images), BN folded, calibrated on "
                      "256 training images; `benchmarks/bench_lab1_accuracy.py --write`.\n\n" + text)

if __name__ == "__main__":
    main()
