"""Reference implementations of the course's quantization methods, one module per idea.

Import the module you need, e.g. ``from lowbit.quant import linear`` or
``from lowbit.quant.linear import linear_quantize``. Modules are loaded lazily.
"""
from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    try:
        module = importlib.import_module(f"lowbit.quant.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"lowbit.quant.{name}":
            raise AttributeError(f"lowbit.quant has no module {name!r}") from None
        raise
    globals()[name] = module
    return module
