"""Lab 3 reference accuracy table: quantization-aware training of the course CNN, with lowbit's reference code.

    .venv/bin/python benchmarks/bench_lab3_accuracy.py [--write] [--full-test] [--threads 1]

The lab's recipe, one function: ``lowbit.quant.qat.train_qat`` — the pretrained CNN, BN folded into the
quantized convs (``QATConvBn2d``, batch statistics until BN is frozen after the first of the 3 epochs), per-channel
LSQ weights and per-tensor LSQ activations after every ReLU, the first and the last layer (weights, and the
last layer's input) at 8 bits, 3 epochs over the 6,000 embedded training images (batches of 128, seed 0),
Adam lr 1e-3 with a cosine decay. Compared at W8A8, W4A4, W3A3 and W2A2 with FP32 and with the best static
PTQ at the same layout (``qat.ptq_baselines``: Lab 1's pipeline, BN folded, activation observer min-max /
percentile / MSE × weight clip min-max / MSE, calibrated on 256 training images; "best" is picked on the test
set, which flatters PTQ). Then the seed study's 2-bit finding (QAT from a random init at W2A2 vs a gradual
8 → 4 → 2 path from the pretrained model, one epoch per stage) and the gradient estimators side by side at
W4A4 and W2A2 (plain STE and clipped STE with fixed ranges, LSQ, PACT). Sizes count the weights at their bits
plus an fp32 scale per output channel, 32 bits for every other parameter of the BN-folded model.
Accuracy on the embedded test subset (3,000 images, what the lab shows); ``--full-test`` adds the full
10,000-image test set (Debian package dataset-fashion-mnist). Goals (issue 13): W4A4 within 0.5 pt of FP32,
W2A2 within 4 pt, QAT above the best PTQ at every width <= 4 bits. ``--write`` puts the tables into
benchmarks/RESULTS.md ("Lab 3 accuracy"). Seeded and single-threaded: the same figures every run.
"""
from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn
from tqdm import tqdm

import lowbit
from _accuracy import Evaluators, test_evaluators, training_options
from _results import write_section
from lowbit.models import FashionCNN, fold_batchnorm, model_size_bits
from lowbit.quant import qat as Q
from lowbit.quant.modules import quantizable_layers
from lowbit.results import Row, table

BITS = (8, 4, 3, 2)
EPOCHS = 3
GOALS = {4: 0.5, 2: 4.0}                      # bits: largest drop vs FP32 in pt


def size_bits(model: nn.Module, bits: int | None) -> int:
    """Storage of the BN-folded ``model`` with its quantizable weights at ``bits`` (first and last layer at 8)
    plus one fp32 scale per output channel; ``bits=None``: FP32."""
    folded = fold_batchnorm(model)
    if bits is None:
        return model_size_bits(folded)
    layers = quantizable_layers(folded)
    names = list(layers)
    widths = {f"{name}.weight": 8 if name in (names[0], names[-1]) else bits for name in names}
    return model_size_bits(folded, widths) + 32 * sum(layer.weight.shape[0] for layer in layers.values())


class Study:
    """Runs the experiments once and keeps every accuracy (per test set) and training time."""

    def __init__(self, evaluators: Evaluators, progress: bool, epochs: int, fraction: float,
                 observers: tuple[str, ...] = Q.PTQ_OBSERVERS) -> None:
        self.evaluators, self.progress = evaluators, progress
        self.epochs, self.fraction, self.observers = epochs, fraction, observers
        self.model = lowbit.models.pretrained("cnn")
        self.calib, _ = lowbit.data.calibration_batch(256, seed=0)
        self.seconds: dict[str, float] = {}
        self.notes: dict[str, str] = {}

    def scores(self, model: nn.Module) -> dict[str, float]:
        return {name: fn(model) for name, fn in self.evaluators.items()}

    def qat(self, label: str, model: nn.Module, w_bits: int, a_bits: int, **kwargs: object) -> Q.QATRun:
        run = Q.train_qat(model, w_bits, a_bits, epochs=kwargs.pop("epochs", self.epochs), progress=self.progress,
                          fraction=self.fraction, **kwargs)
        self.seconds[label] = self.seconds.get(label, 0.0) + run.seconds
        finite = [loss for loss in run.losses if math.isfinite(loss)]
        self.notes[label] = (f"{sum(not math.isfinite(x) for x in run.losses)} of {len(run.losses)} losses NaN/inf"
                             if run.diverged else f"final loss {sum(finite[-10:]) / len(finite[-10:]):.3f}")
        return run

    def best_ptq(self, bits: int) -> tuple[str, dict[str, float]]:
        candidates = Q.ptq_baselines(self.model, bits, bits, self.calib, observers=self.observers)
        scored = {name: self.scores(model) for name, model in candidates.items()}
        best = max(scored, key=lambda name: scored[name]["embedded"])
        return best, scored[best]


def main_rows(study: Study) -> tuple[list[dict], list[dict]]:
    """(QAT vs PTQ per width, 2-bit study and estimators): dicts of name, bits, size, accuracies."""
    fp32 = {"name": "FP32", "bits": 32, "size": size_bits(study.model, None), "acc": study.scores(study.model)}
    widths = [fp32]
    for bits in tqdm(BITS, desc="QAT vs PTQ", disable=not study.progress):
        run = study.qat(f"QAT W{bits}A{bits}", study.model, bits, bits)
        ptq_name, ptq_acc = study.best_ptq(bits)
        size = size_bits(study.model, bits)
        widths.append({"name": f"QAT W{bits}A{bits} (LSQ)", "bits": bits, "size": size, "acc": study.scores(run.model),
                       "run": run})
        widths.append({"name": f"best PTQ W{bits}A{bits} ({ptq_name})", "bits": bits, "size": size, "acc": ptq_acc})
    extra = [fp32]
    torch.manual_seed(0)
    scratch = study.qat("W2A2 from scratch", FashionCNN(), 2, 2)
    extra.append({"name": f"W2A2 QAT from a random init ({study.epochs} epochs)", "bits": 2, "size": size_bits(study.model, 2),
                  "acc": study.scores(scratch.model), "note": study.notes["W2A2 from scratch"]})
    per_stage = max(1, study.epochs // 3)
    stage = study.qat("gradual 8 → 4 → 2", study.model, 8, 8, epochs=per_stage)
    for bits in (4, 2):
        Q.retarget_bits(stage.model, bits, bits)
        stage = study.qat("gradual 8 → 4 → 2", study.model, bits, bits, epochs=per_stage, prepared=stage.model)
    extra.append({"name": f"W2A2 gradual 8 → 4 → 2 from pretrained ({per_stage} epoch(s) each)", "bits": 2,
                  "size": size_bits(study.model, 2), "acc": study.scores(stage.model),
                  "note": study.notes["gradual 8 → 4 → 2"]})
    for bits in (4, 2):
        for method in Q.QAT_METHODS:
            if method == "lsq":
                run_row = next(r for r in widths if r["name"] == f"QAT W{bits}A{bits} (LSQ)")
                acc = run_row["acc"]
                note = study.notes[f"QAT W{bits}A{bits}"]
            else:
                label = f"W{bits}A{bits} {method}"
                acc = study.scores(study.qat(label, study.model, bits, bits, method=method).model)
                note = study.notes[label]
            extra.append({"name": f"W{bits}A{bits} {method.replace('_', ' ')}", "bits": bits,
                          "size": size_bits(study.model, bits), "acc": acc, "note": note})
    return widths, extra


def markdown(rows: list[dict], test_set: str) -> str:
    return table([Row(r["name"], r["acc"][test_set], r["bits"], r["size"]) for r in rows], "markdown")


def goal_lines(widths: list[dict], test_set: str) -> list[str]:
    fp32 = widths[0]["acc"][test_set]
    lines = []
    for bits, max_drop in GOALS.items():
        qat = next(r for r in widths if r["name"].startswith(f"QAT W{bits}A{bits}"))
        change = 100 * (qat["acc"][test_set] - fp32)
        lines.append(f"- W{bits}A{bits}: {change:+.2f} pt vs FP32, goal: a drop of at most {max_drop} pt — "
                     f"{'met' if -change <= max_drop else 'NOT met'}")
    for bits in (b for b in BITS if b <= 4):
        qat = next(r for r in widths if r["name"].startswith(f"QAT W{bits}A{bits}"))
        ptq = next(r for r in widths if r["name"].startswith(f"best PTQ W{bits}A{bits}"))
        gap = 100 * (qat["acc"][test_set] - ptq["acc"][test_set])
        lines.append(f"- W{bits}A{bits}: QAT {gap:+.2f} pt vs the best PTQ — {'met' if gap > 0 else 'NOT met'}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    training_options(parser, EPOCHS, "QAT epochs per run", "--epochs 1 --fraction 0.05 --quick-ptq")
    parser.add_argument("--quick-ptq", action="store_true", help="PTQ with the min-max observer only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    evaluators = test_evaluators(args.full_test)
    study = Study(evaluators, not args.no_progress, args.epochs, args.fraction,
                  ("minmax",) if args.quick_ptq else Q.PTQ_OBSERVERS)
    widths, extra = main_rows(study)
    sections = []
    for test_set, label in (("embedded", "Embedded test subset (3,000 images)"),
                            ("full", "Full test set (10,000 images)")):
        if test_set in evaluators:
            sections.append(f"**{label}**, QAT ({args.epochs} epochs × {args.fraction:g}) vs the best PTQ per width\n\n"
                            f"{markdown(widths, test_set)}\n\n" + "\n".join(goal_lines(widths, test_set)))
            sections.append(f"**{label}**, 2 bits from scratch vs gradually, and the gradient estimators\n\n"
                            f"{markdown(extra, test_set)}")
    notes = "\n".join(f"- {r['name']}: {r['note']}" for r in extra if "note" in r)
    timing = ", ".join(f"{label} {seconds:.0f} s" for label, seconds in study.seconds.items())
    text = "\n\n".join(sections) + f"\n\nTraining runs:\n{notes}\n\nTraining time ({args.threads} thread): {timing}; " \
        f"whole benchmark {time.perf_counter() - started:.0f} s."
    print(text)
    if args.write and (args.epochs, args.fraction, args.quick_ptq) != (EPOCHS, 1.0, False):
        raise SystemExit("--write records the recipe's figures only: drop --epochs / --fraction / --quick-ptq")
    if args.write:
        write_section("Lab 3 accuracy", "`benchmarks/bench_lab3_accuracy.py --write --full-test`: the lab's recipe "
                      "`lowbit.quant.qat.train_qat` (pretrained CNN, BN folded into the quantized convs and frozen "
                      "after 1 epoch, per-channel LSQ weights, LSQ activations, first/last layer at 8 bits, "
                      f"{EPOCHS} epochs over the 6,000 embedded training images, Adam 1e-3 cosine) against the best "
                      "static PTQ of Lab 1's pipeline in the same layout (picked on the test set). Size: weights "
                      "at their bits + an fp32 scale per channel + 32 bits per other parameter, BN folded.\n\n"
                      + text)


if __name__ == "__main__":
    main()
