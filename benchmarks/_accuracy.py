"""What the accuracy benchmarks share: their command line and the test sets they evaluate on.

``parser(doc)``: ``--write``, ``--full-test``, ``--threads`` (default 1), ``--no-progress``; ``evaluators(full)``:
``{"embedded": model → top-1 accuracy in [0, 1] on the embedded 3,000-image test subset}`` plus ``"full"`` (the
10,000-image test set, Debian package dataset-fashion-mnist) when ``full``; ``TEST_SETS``: their labels.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable

from torch import nn

import lowbit
from lowbit.train import evaluate

Evaluators = dict[str, Callable[[nn.Module], float]]
TEST_SETS = (("embedded", "Embedded test subset (3,000 images)"), ("full", "Full test set (10,000 images)"))


def parser(doc: str | None) -> argparse.ArgumentParser:
    """The accuracy benchmarks' common options (add a script's own to the returned parser)."""
    made = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    made.add_argument("--write", action="store_true", help="record the tables in benchmarks/RESULTS.md")
    made.add_argument("--full-test", action="store_true", help="also evaluate on the full 10,000-image test set")
    made.add_argument("--threads", type=int, default=1)
    made.add_argument("--no-progress", action="store_true")
    return made


def evaluators(full_test: bool) -> Evaluators:
    """Accuracy functions by test set name: the embedded subset, and the full test set when ``full_test``."""
    _, embedded_test = lowbit.data.loaders(batch_size=500)
    found: Evaluators = {"embedded": lambda m: evaluate(m, embedded_test, device="cpu")}
    if full_test:
        _, full_test_loader = lowbit.data.loaders(batch_size=1000, source="full")
        found["full"] = lambda m: evaluate(m, full_test_loader, device="cpu")
    return found
