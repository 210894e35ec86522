"""Shared pytest set-up: deterministic, single-threaded torch per worker, never in grading mode, a test secret."""
from __future__ import annotations

import os

os.environ.pop("NBGRADER_EXECUTION", None)
os.environ.setdefault("MPLBACKEND", "Agg")
#: The course secret the tests grade with (a test that needs none, or another one, sets or removes it).
os.environ.setdefault("AUTOGRADER_SECRET", "lowbit-test-course-secret-0")

import torch  # noqa: E402

torch.set_num_threads(1)
