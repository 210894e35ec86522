"""Shared helpers for the autograder tests: the fixture course and building submissions."""
from __future__ import annotations

import json
from pathlib import Path

from autograder.runner import Course, Lab
from autograder.sandbox import Limits
from autograder.submissions import fill_answers, solution_answers

REPO = Path(__file__).resolve().parents[1]
FIXTURE_COURSE = REPO / "tests" / "fixtures" / "course"
FIXTURE_LAB = "fixture_lab"
#: Short limits so timeouts are quick in tests (the defaults are for real classes).
TEST_LIMITS = Limits(wall_seconds=60, call_seconds=6, cpu_seconds=60)


def fixture_lab() -> Lab:
    return Lab.load(Course.load(FIXTURE_COURSE), FIXTURE_LAB)


def submission(lab: Lab, **answers: str) -> bytes:
    """The solution submission with some answer cells replaced."""
    return fill_answers(lab.released_bytes, {**solution_answers(lab.source_bytes), **answers})


def edit_cells(data: bytes, edit) -> bytes:
    """Apply ``edit(cells) -> cells`` to a notebook's JSON cell list."""
    notebook = json.loads(data)
    notebook["cells"] = edit(notebook["cells"])
    return json.dumps(notebook).encode()


def write_class(root: Path, lab: str, notebooks: dict[str, bytes]) -> Path:
    """An LMS-style folder ``<root>/<student>/<lab>.ipynb``."""
    for student, data in notebooks.items():
        (root / student).mkdir(parents=True, exist_ok=True)
        (root / student / f"{lab}.ipynb").write_bytes(data)
    return root


#: Student code that stalls the grader's request pipe: shrinks it to 4 KiB, keeps a reader open (so the
#: grader's writes do not fail) and points the worker's own end at a pipe nobody writes (so it never reads).
STALL_REQUEST_PIPE = """import fcntl, os, stat
for fd in range(3, 64):
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode) and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            fcntl.fcntl(fd, 1031, 4096)  # F_SETPIPE_SZ
            _kept = os.dup(fd)
            _dead_r, _dead_w = os.pipe()
            os.dup2(_dead_r, fd)
    except OSError:
        pass
"""


def real_lab(name: str = "lab1_linear") -> Lab:
    """A lab of the course itself (this repository), loaded as grading loads it."""
    return Lab.load(Course.load(REPO), name)


def honest_blank_mutants(lab: Lab, mutants: int = 1) -> dict[str, bytes]:
    """A small class: the solution ("honest"), the released notebook ("blank") and the first ``mutants``
    mutants of the lab's catalogue (tests/mutants/<lab>.py), ids ``mutant0``, ``mutant1``, ..."""
    from autograder.mutants import load_catalogue, mutant_submission
    catalogue = load_catalogue(REPO / "tests" / "mutants" / f"{lab.name}.py")
    notebooks = {"honest": submission(lab), "blank": lab.released_bytes}
    notebooks.update({f"mutant{i}": mutant_submission(lab.source_bytes, lab.released_bytes, m)
                      for i, m in enumerate(catalogue[:mutants])})
    return notebooks
