"""Interactive explorers (ipywidgets + matplotlib). Each takes the function it visualizes, the student's,
with lowbit's reference as the default. Without a widget front end they render one static figure.
"""
from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    try:
        module = importlib.import_module(f"lowbit.viz.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"lowbit.viz.{name}":
            raise AttributeError(f"lowbit.viz has no module {name!r}") from None
        raise
    globals()[name] = module
    return module
