"""Every real lab in solutions/ through the grader: the solution scores full marks, the blank notebook 0."""
from __future__ import annotations

from pathlib import Path

import pytest

from autograder.grade import grade_class
from autograder.release import find_labs
from autograder.sandbox import bwrap_problem
from autograder.submissions import fill_answers, solution_answers

REPO = Path(__file__).resolve().parents[1]
LABS = find_labs(REPO)
MODE = "bwrap" if bwrap_problem() is None else "unsafe"

pytestmark = pytest.mark.xdist_group("autograder-labs")


@pytest.mark.parametrize("lab", LABS)
def test_solution_full_marks_blank_zero(lab, tmp_path):
    source = REPO / "solutions" / lab / f"{lab}.ipynb"
    released = REPO / "labs" / lab / f"{lab}.ipynb"
    assert source.is_file() and released.is_file(), f"{lab} is not released: run `make release`"
    for student, data in {"solution": fill_answers(released.read_bytes(), solution_answers(source.read_bytes())),
                          "blank": released.read_bytes()}.items():
        (tmp_path / "class" / student).mkdir(parents=True)
        (tmp_path / "class" / student / f"{lab}.ipynb").write_bytes(data)
    results = grade_class(lab, tmp_path / "class", tmp_path / "out", REPO, jobs=2, progress=False,
                          unsafe=MODE == "unsafe")
    solution, blank = results["solution"], results["blank"]
    failing = {c["grade_id"]: c["message"][:500] for c in solution["cells"] if not c["passed"]}
    assert failing == {}, failing
    assert (solution["status"], solution["score"]) == ("ok", solution["max_score"])
    assert solution["max_score"] > 0
    assert (blank["status"], blank["score"]) == ("ok", 0.0)
