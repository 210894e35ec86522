"""Shared pytest set-up: deterministic, single-threaded torch per worker, never in grading mode."""
from __future__ import annotations

import os

os.environ.pop("NBGRADER_EXECUTION", None)
os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

torch.set_num_threads(1)
