"""Shared pieces of the lab accuracy benchmarks (bench_lab2/3/4/5_accuracy.py): test-set evaluators and options.

``test_evaluators(full)`` (alias ``evaluators``): ``{"embedded": model → top-1 accuracy in [0, 1]}`` plus
``"full"`` when ``full``; ``TEST_SETS``: their labels; ``training_options`` / ``parser``: the command lines.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable

from torch import nn

import lowbit
from lowbit.train import evaluate

Evaluators = dict[str, Callable[[nn.Module], float]]
TEST_SETS = (("embedded", "Embedded test subset (3,000 images)"), ("full", "Full test set (10,000 images)"))


def test_evaluators(full_test: bool) -> Evaluators:
    """``{"embedded": accuracy on the 3,000-image embedded test subset}``, plus ``"full"`` (the 10,000-image
    Fashion-MNIST test set, Debian package dataset-fashion-mnist) when ``full_test``; each maps a model to a
    fraction in [0, 1], on the CPU."""
    _, embedded_test = lowbit.data.loaders(batch_size=500)
    evaluators: Evaluators = {"embedded": lambda m: evaluate(m, embedded_test, device="cpu")}
    if full_test:
        _, full_test_loader = lowbit.data.loaders(batch_size=1000, source="full")
        evaluators["full"] = lambda m: evaluate(m, full_test_loader, device="cpu")
    return evaluators


def training_options(parser: argparse.ArgumentParser, epochs: int, what: str, quick: str) -> None:
    """The options of a benchmark that trains: --write, --full-test, --threads, --no-progress, --epochs (default
    ``epochs``, ``what`` says per what) and --fraction (``quick``: the arguments of a quick check)."""
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--full-test", action="store_true", help="also evaluate on the full 10,000-image test set")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--epochs", type=int, default=epochs, help=f"{what} (the recipe: {epochs})")
    parser.add_argument("--fraction", type=float, default=1.0, help="fraction of each epoch's batches (a quick "
                        f"check: {quick})")


#: bench_lab5_accuracy's name for ``test_evaluators``.
evaluators = test_evaluators


def parser(doc: str | None) -> argparse.ArgumentParser:
    """The common options of a benchmark that does not train (add a script's own to the returned parser)."""
    made = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    made.add_argument("--write", action="store_true", help="record the tables in benchmarks/RESULTS.md")
    made.add_argument("--full-test", action="store_true", help="also evaluate on the full 10,000-image test set")
    made.add_argument("--threads", type=int, default=1)
    made.add_argument("--no-progress", action="store_true")
    return made
