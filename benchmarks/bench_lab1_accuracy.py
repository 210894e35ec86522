"""Lab 1 reference accuracy table: the course CNN under linear quantization, with lowbit's reference code.

    .venv/bin/python benchmarks/bench_lab1_accuracy.py [--write]

The same experiments as Lab 1's Part 5 table, through the same lowbit functions (``ptq.static_ptq`` with
``ptq.calibrators``, ``ptq.weight_only`` with ``ptq.weight_schemes``, ``integer.integerize``), here with
lowbit's reference implementations where the lab passes the student's: a correct lab reproduces this table
to the last digit (``tests/test_course_notebooks.py`` compares it with the executed worked solution).
Accuracy on the embedded Fashion-MNIST test subset (3,000 images, the set the labs use), BatchNorm folded
(every function above folds it, as deployment does), calibration on ``lowbit.data.calibration_batch(256,
seed=0)``. Deterministic: the same figures every run. Goals from the course plan: W8A8 within 0.3 pt of
FP32, W4A8 within 2 pt; per-tensor W4 shown for contrast. ``--write`` puts the table into
benchmarks/RESULTS.md ("Lab 1 accuracy") and prints the Markdown for the README.
"""
from __future__ import annotations

import argparse

import torch

import lowbit
from _results import write_section
from lowbit.quant import integer, ptq
from lowbit.results import Row, table
from lowbit.train import evaluate


def rows() -> list[Row]:
    lowbit.seed_everything(0)
    torch.set_num_threads(2)
    model = lowbit.models.pretrained("cnn")
    _, test_loader = lowbit.data.loaders(batch_size=500)
    calib, _ = lowbit.data.calibration_batch(256, seed=0)
    result = [Row("FP32", evaluate(model, test_loader), 32)]
    calibrators = ptq.calibrators(8)
    for w_bits in (8, 4):
        for name in ptq.CALIBRATORS:
            quantized = ptq.static_ptq(model, calib, w_bits, 8, range_fn=calibrators[name])
            result.append(Row(f"W{w_bits}A8 static, {name}", evaluate(quantized, test_loader), w_bits))
    schemes = ptq.weight_schemes()
    for name in ptq.WEIGHT_SCHEMES:
        quantized = ptq.weight_only(model, lambda w: schemes[name](w, 4))
        result.append(Row(f"W4 weights only, {name}", evaluate(quantized, test_loader), 4))
    folded = lowbit.models.fold_batchnorm(model)
    result.append(Row("W8A8 integer-only", integer.integerize(folded, calib, bits=8).evaluate(test_loader), 8))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    text = table(rows(), "markdown")
    print(text)
    if args.write:
        write_section("Lab 1 accuracy", "Course CNN on the embedded test subset (3,000 images), BN folded, "
                      "calibrated on 256 training images; the rows of Lab 1's Part 5 table, computed by the same functions; "
                      "`benchmarks/bench_lab1_accuracy.py --write`.\n\n" + text)


if __name__ == "__main__":
    main()
