"""Lab 5 reference accuracy table: CLE, bias correction and AdaRound on the course CNN, lowbit's reference code.

    .venv/bin/python benchmarks/bench_lab5_accuracy.py [--write] [--full-test] [--quick] [--threads 1]

The lab's pipeline, weights only (activations float), symmetric per output channel on the BatchNorm-folded
pretrained CNN: rounding to nearest (``ptq.quantize_weights``), cross-layer equalization first
(``equalize.equalize_model``), empirical bias correction on 256 embedded training images and the analytic
(data-free) one from the BatchNorm statistics (``bias_correction.correct_biases``), AdaRound
(``adaround.adaround_model`` with its tuned defaults: ``ITERATIONS`` Adam steps per layer on
``CALIBRATION_IMAGES`` embedded training images) and all of them (CLE, then AdaRound, then empirical bias
correction), at W4, W3 and W2 with every layer at that width and with the first and last layer kept at 8 bits
(Lab 3's layout). Then CLE's effect on per-tensor W8 / W4 with per-channel beside it, the seconds of every
method and of AdaRound per layer, and accuracy against AdaRound's iterations at W3 and W2 (where it stops
improving). "gap recovered" = (method − nearest) / (FP32 − nearest). Accuracy on the embedded test subset
(3,000 images, what the lab shows); ``--full-test`` adds the full 10,000-image test set (Debian package
dataset-fashion-mnist). Goal (issue 15): AdaRound recovers >= 80 % of the nearest → FP32 gap at W3 and W2.
``--quick``: 100 iterations and a short sweep (a smoke run; ``--write`` refuses it). ``--write`` puts the
tables into benchmarks/RESULTS.md ("Lab 5 accuracy"). Seeded and single-threaded: the same figures every run.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn
from tqdm import tqdm

import _accuracy
import lowbit
from _accuracy import Evaluators
from _results import write_section
from lowbit.models import fold_batchnorm
from lowbit.quant import adaround as A
from lowbit.quant.bias_correction import correct_biases
from lowbit.quant.equalize import equalize_model
from lowbit.quant.modules import Policy
from lowbit.quant.ptq import quantize_weights

BITS = (4, 3, 2)
SWEEP = (50, 100, 250, 500, 1000, 2000)
QUICK_SWEEP = (25, 100)
GOAL = 0.8                                    # share of the nearest → FP32 gap AdaRound recovers at W3 and W2
BC_IMAGES = 256
METHODS = ("nearest", "CLE", "BC (empirical)", "BC (analytic)", "CLE + BC", "AdaRound", "CLE + AdaRound",
           "CLE + AdaRound + BC")


class Study:
    """The folded model, its equalized copy, calibration sets, evaluators and the seconds of every step."""

    def __init__(self, evaluators: Evaluators, iterations: int, progress: bool) -> None:
        self.evaluators, self.iterations, self.progress = evaluators, iterations, progress
        self.bn_model = lowbit.models.pretrained("cnn")
        self.model = fold_batchnorm(self.bn_model)
        self.seconds: dict[str, list[float]] = {}
        self.equalized = self.timed("CLE", equalize_model, self.model)
        self.calib, _ = lowbit.data.calibration_batch(A.CALIBRATION_IMAGES, seed=0)
        self.bc_images, _ = lowbit.data.calibration_batch(BC_IMAGES, seed=0)
        self.layer_seconds: dict[tuple[int, bool], dict[str, float]] = {}

    def timed(self, label: str, fn: Callable, *args: object, **kwargs: object) -> nn.Module:
        started = time.perf_counter()
        result = fn(*args, **kwargs)
        self.seconds.setdefault(label, []).append(time.perf_counter() - started)
        return result

    def scores(self, model: nn.Module) -> dict[str, float]:
        return {name: 100 * fn(model) for name, fn in self.evaluators.items()}

    def nearest(self, model: nn.Module, bits: int, keep_ends: bool, granularity: str = "channel") -> nn.Module:
        rules = [("conv1", {"w_bits": 8}), ("fc", {"w_bits": 8})] if keep_ends else []
        policy = Policy({"w_bits": bits, "granularity": granularity}, rules)
        return self.timed("nearest", quantize_weights, model, policy=policy)

    def adaround(self, model: nn.Module, bits: int, keep_ends: bool, iterations: int | None = None) -> nn.Module:
        rounded = self.timed("AdaRound (whole model)", A.adaround_model, model, bits, self.calib,
                             iterations=iterations or self.iterations, first_last_bits=8 if keep_ends else None,
                             progress=self.progress)
        return rounded

    def methods(self, bits: int, keep_ends: bool) -> dict[str, dict[str, float]]:
        """Accuracy of every method of ``METHODS`` at ``bits``."""
        nearest = self.nearest(self.model, bits, keep_ends)
        cle = self.nearest(self.equalized, bits, keep_ends)
        rounded = self.adaround(self.model, bits, keep_ends)
        self.layer_seconds[(bits, keep_ends)] = getattr(rounded, A.SECONDS_ATTRIBUTE)
        everything = self.adaround(self.equalized, bits, keep_ends)
        models = {
            "nearest": nearest, "CLE": cle,
            "BC (empirical)": self.timed("BC (empirical)", correct_biases, self.model, nearest, self.bc_images),
            "BC (analytic)": self.timed("BC (analytic)", correct_biases, self.model, nearest, bn_model=self.bn_model),
            "CLE + BC": correct_biases(self.equalized, cle, self.bc_images),
            "AdaRound": rounded, "CLE + AdaRound": everything,
            "CLE + AdaRound + BC": correct_biases(self.equalized, everything, self.bc_images),
        }
        return {name: self.scores(m) for name, m in models.items()}


def gap(value: float, nearest: float, fp32: float) -> float:
    return 100 * (value - nearest) / (fp32 - nearest) if fp32 != nearest else float("nan")


def method_table(results: dict[tuple[int, bool], dict[str, dict[str, float]]], fp32: dict[str, float],
                 test_set: str) -> str:
    head = "| weights | " + " | ".join(METHODS) + " | AdaRound: gap recovered |\n|---|" + "---|" * (len(METHODS) + 1)
    lines = [head]
    for (bits, keep_ends), scores in results.items():
        cells = [f"{scores[m][test_set]:.2f}" for m in METHODS]
        recovered = gap(scores["AdaRound"][test_set], scores["nearest"][test_set], fp32[test_set])
        label = f"W{bits}" + (" (first/last 8)" if keep_ends else " (every layer)")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {recovered:.0f} % |")
    return "\n".join(lines)


def goal_lines(results: dict[tuple[int, bool], dict[str, dict[str, float]]], fp32: dict[str, float],
               test_set: str) -> list[str]:
    lines = []
    for bits in (3, 2):
        scores = results[(bits, False)]
        recovered = gap(scores["AdaRound"][test_set], scores["nearest"][test_set], fp32[test_set])
        lines.append(f"- W{bits} (every layer): AdaRound recovers {recovered:.0f} % of the nearest → FP32 gap "
                     f"({scores['nearest'][test_set]:.2f} → {scores['AdaRound'][test_set]:.2f} % vs "
                     f"{fp32[test_set]:.2f} %), goal >= {100 * GOAL:.0f} % — {'met' if recovered >= 100 * GOAL else 'NOT met'}")
    return lines


def granularity_table(study: Study, test_set: str, rows: dict[str, dict[str, float]]) -> str:
    lines = ["| weights | per tensor | per tensor after CLE | per channel | per channel after CLE |",
             "|---|---|---|---|---|"]
    for bits in (8, 4):
        cells = [rows[f"{g}{' CLE' if cle else ''} W{bits}"][test_set] for g in ("tensor", "channel")
                 for cle in (False, True)]
        lines.append(f"| W{bits} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    return "\n".join(lines)


def sweep_table(sweep: dict[int, dict[int, tuple[dict[str, float], float]]], nearest: dict[int, dict[str, float]],
                test_set: str) -> str:
    iterations = sorted(next(iter(sweep.values())))
    lines = ["| iterations per layer | " + " | ".join(f"W{b} accuracy | W{b} seconds" for b in sweep) + " |",
             "|---|" + "---|---|" * len(sweep)]
    lines.append("| 0 (nearest) | " + " | ".join(f"{nearest[b][test_set]:.2f} | 0" for b in sweep) + " |")
    for count in iterations:
        lines.append(f"| {count} | " + " | ".join(f"{sweep[b][count][0][test_set]:.2f} | {sweep[b][count][1]:.0f}"
                                                  for b in sweep) + " |")
    return "\n".join(lines)


def main() -> None:
    options = _accuracy.parser(__doc__)
    options.add_argument("--quick", action="store_true", help="100 iterations per layer, a two-point sweep")
    args = options.parse_args()
    if args.write and args.quick:
        raise SystemExit("--write records the tuned settings' figures only: drop --quick")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    evaluators = _accuracy.evaluators(args.full_test)
    iterations = 100 if args.quick else A.ITERATIONS
    study = Study(evaluators, iterations, not args.no_progress)
    fp32 = study.scores(study.model)
    results = {}
    for keep_ends in (False, True):
        for bits in tqdm(BITS, desc="methods", disable=args.no_progress):
            results[(bits, keep_ends)] = study.methods(bits, keep_ends)
    layouts = {}
    for granularity in ("tensor", "channel"):
        for bits in (8, 4):
            layouts[f"{granularity} W{bits}"] = study.scores(study.nearest(study.model, bits, False, granularity))
            layouts[f"{granularity} CLE W{bits}"] = study.scores(study.nearest(study.equalized, bits, False,
                                                                              granularity))
    sweep: dict[int, dict[int, tuple[dict[str, float], float]]] = {}
    for bits in (3, 2):
        sweep[bits] = {}
        for count in tqdm(QUICK_SWEEP if args.quick else SWEEP, desc=f"iterations W{bits}",
                          disable=args.no_progress):
            begun = time.perf_counter()
            rounded = A.adaround_model(study.model, bits, study.calib, iterations=count, progress=False)
            sweep[bits][count] = (study.scores(rounded), time.perf_counter() - begun)
    nearest = {bits: results[(bits, False)]["nearest"] for bits in (3, 2)}
    sections = []
    for test_set, label in _accuracy.TEST_SETS:
        if test_set not in evaluators:
            continue
        sections.append(f"**{label}**: FP32 {fp32[test_set]:.2f} %; weights only, per channel, activations float; "
                        f"AdaRound {iterations} iterations per layer on {A.CALIBRATION_IMAGES} images\n\n"
                        f"{method_table(results, fp32, test_set)}\n\n" + "\n".join(goal_lines(results, fp32, test_set)))
        sections.append(f"**{label}**, CLE and the scale layout (nearest rounding, every layer)\n\n"
                        f"{granularity_table(study, test_set, layouts)}")
        sections.append(f"**{label}**, AdaRound accuracy against iterations per layer (every layer at the width; "
                        f"seconds for the whole model)\n\n{sweep_table(sweep, nearest, test_set)}")
    per_layer = "\n".join(f"- W{bits} {'first/last 8' if keep else 'every layer'}: " +
                          ", ".join(f"{name} {s:.1f} s" for name, s in layer.items())
                          for (bits, keep), layer in study.layer_seconds.items())
    cost = ", ".join(f"{label} {sum(values) / len(values):.2f} s" for label, values in study.seconds.items())
    text = "\n\n".join(sections) + f"\n\nAdaRound seconds per layer ({args.threads} thread, {iterations} iterations, " \
        f"batch {A.BATCH_SIZE} rows, lr {A.LR}):\n{per_layer}\n\nSeconds per method (mean per call): {cost}; " \
        f"whole benchmark {time.perf_counter() - started:.0f} s."
    print(text)
    if args.write:
        write_section("Lab 5 accuracy", "`benchmarks/bench_lab5_accuracy.py --write --full-test`: the lab's "
                      "pipeline on the BN-folded pretrained CNN, weights only (symmetric per output channel), "
                      "activations float: nearest, CLE (`equalize_model`), bias correction (`correct_biases`: "
                      f"empirical on {BC_IMAGES} embedded training images, analytic from the BN statistics), "
                      f"AdaRound (`adaround_model`, {A.ITERATIONS} Adam steps per layer, lr {A.LR}, batches of "
                      f"{A.BATCH_SIZE} rows, {A.CALIBRATION_IMAGES} embedded training images) and all of them.\n\n"
                      + text)


if __name__ == "__main__":
    main()
