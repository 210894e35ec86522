"""Small shared helpers: the grading flag, seeding and device choice."""
from __future__ import annotations

import importlib
import os
import random
from types import ModuleType
from typing import Callable

import numpy as np
import torch

#: Values of ``NBGRADER_EXECUTION`` that mean "a grader is running this notebook".
GRADING_MODES = ("autograde", "validate")


def is_grading() -> bool:
    """True when nbgrader or the lowbit autograder executes the notebook (``NBGRADER_EXECUTION`` set)."""
    return bool(os.environ.get("NBGRADER_EXECUTION"))


#: Read once at import. Labs write ``if lowbit.GRADING: ...`` to shrink heavy experiments.
GRADING: bool = is_grading()


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python, NumPy and PyTorch (CPU and CUDA) and return a ``torch.Generator`` seeded the same.

    Also asks PyTorch for deterministic algorithms where that is free (``warn_only=True``).
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def device() -> torch.device:
    """CUDA when a GPU is present, else CPU. The course never requires a GPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def lazy_submodules(package: str) -> Callable[[str], ModuleType]:
    """A module-level ``__getattr__`` for ``package`` that imports ``package.<name>`` on first access.

    An unknown name raises AttributeError; an import error inside an existing submodule propagates.
    """
    def load(name: str) -> ModuleType:
        try:
            module = importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{package}.{name}":
                raise AttributeError(f"{package} has no module {name!r}") from None
            raise
        setattr(importlib.import_module(package), name, module)
        return module
    return load
