"""``autograder check NOTEBOOK``: a student's preview of grading, with the visible tests only.

Runs exactly like grading — only the setup (locked) cells and your answer cells execute, in a separate
process; experiment and widget cells are skipped — then the visible tests of each graded cell run against
your functions. Hidden checks are not available to you, so passing here is necessary, not sufficient.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from .feedback import not_attempted
from .runner import Course, Lab, grade_submission
from .sandbox import Limits, bwrap_problem

NOT_A_GRADE = ("Your grade is not known yet: hidden checks decide it, on more cases than the visible tests "
               "(other dtypes, shapes and axes, ties, edge ranges), and a function can pass every visible test "
               "and still lose points there. Written answers are graded by hand.")


def find_notebook(notebook: Path, course: Course) -> Path:
    """``notebook`` itself if it exists; else, for a bare lab name (``lab1_linear``) or a path relative to the
    course root (``labs/lab1_linear/lab1_linear.ipynb`` typed in a terminal that starts in ``labs/``), the
    notebook ``make lab`` opens, ``labs/<lab>/<lab>.ipynb`` of the course. Otherwise ``notebook`` unchanged."""
    if notebook.is_file() or notebook.is_absolute():
        return notebook
    candidates = [course.root / notebook]
    if len(notebook.parts) == 1:
        candidates.append(course.released_notebook(notebook.stem))
    return next((c for c in candidates if c.is_file()), notebook)


def check_notebook(notebook: Path, course_root: Path, lab_name: str | None = None, sandboxed: bool = False) -> int:
    """Print which visible tests pass; returns 0 when all pass, 1 otherwise, 2 on unusable input."""
    course = Course.load(course_root)
    notebook = find_notebook(Path(notebook), course)
    if not notebook.is_file():
        print(f"no such notebook: {notebook} (give the notebook's path, or a lab name such as lab1_linear for "
              f"the copy in {course.released_notebook('<lab>').parent.parent}/)", file=sys.stderr)
        return 2
    lab_name = lab_name or notebook.stem
    released = course.released_notebook(lab_name)
    if not released.is_file():
        print(f"unknown lab {lab_name!r}: {released} does not exist (pass --lab NAME)", file=sys.stderr)
        return 2
    course.activate()
    # The student's view: the released notebook is both the "source" (visible tests only) and the reference.
    lab = Lab(lab_name, released.read_bytes(), released.read_bytes(), b"", [])
    mode = "bwrap" if sandboxed and bwrap_problem() is None else "unsafe"
    print(f"Checking {notebook} like the grader does: only setup and answer cells run "
          "(experiment/widget cells are skipped); visible tests only — hidden tests run at grading time.")
    start = time.perf_counter()
    result = grade_submission(lab, notebook.read_bytes(), mode, Limits(), course.sandbox_paths)
    for reason in result["reasons"]:
        print(f"  note: {reason}")
    for cell in result["cells"]:
        if not_attempted(cell):
            print(f"  [TODO] {cell['grade_id']} ({cell['max_score']:g} pt): not attempted yet "
                  "(the function still raises NotImplementedError)")
            continue
        print(f"  [{'PASS' if cell['passed'] else 'FAIL'}] {cell['grade_id']} ({cell['max_score']:g} pt)")
        if not cell["passed"]:
            print("      " + cell["message"].strip().replace("\n", "\n      ")[:1500])
    left = [c["grade_id"] for c in result["cells"] if not c["passed"]]
    print(f"{len(result['cells']) - len(left)} of {len(result['cells'])} visible tests pass "
          f"({time.perf_counter() - start:.1f} s). " + (f"Left to do: {', '.join(left)}" if left else NOT_A_GRADE))
    return 0 if not left and result["status"] not in ("invalid-notebook",) else 1
