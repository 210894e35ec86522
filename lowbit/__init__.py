"""lowbit — the reference package of the lowbit quantization course.

Submodules (imported lazily, so ``import lowbit`` stays fast):

- ``lowbit.data``     Fashion-MNIST: the embedded subset, the full set when present, loaders.
- ``lowbit.models``   ``FashionCNN``, ``TinyMLP``, ``pretrained()``, size/MAC counts, BN folding.
- ``lowbit.train``    ``train()``, ``evaluate()`` and the ``python -m lowbit.train`` recipe.
- ``lowbit.quant``    one module per quantization idea (reference implementations).
- ``lowbit.viz``      ipywidgets explorers that take the student's functions.
- ``lowbit.results``  results tables (rows → Markdown / aligned text, "vs FP32" and size columns).

``lowbit.GRADING`` is true while nbgrader (or the lowbit autograder) executes a notebook;
labs use it to shrink heavy experiments.
"""
from __future__ import annotations

import importlib
from typing import Any

from lowbit.utils import GRADING, device, seed_everything

__version__ = "0.1.0"
__all__ = ["GRADING", "device", "seed_everything", "data", "models", "train", "quant", "viz", "results"]

_SUBMODULES = {"data", "models", "train", "quant", "viz", "results"}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        module = importlib.import_module(f"lowbit.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'lowbit' has no attribute {name!r}")
