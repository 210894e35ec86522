"""Write results into an nbgrader Gradebook so ``nbgrader export`` and nbgrader's tools see the grades."""
from __future__ import annotations

import warnings
from pathlib import Path

from sqlalchemy import exc as sqlalchemy_exc
from sqlalchemy import text

from nbgrader.api import Gradebook


def write_gradebook(db_path: Path, lab: str, tests: list[tuple[str, float]], manual: list[tuple[str, float]],
                    answers: list[str], results: dict[str, dict]) -> None:
    """(Re)record ``lab`` in the gradebook at ``db_path``: cells, students, submissions and auto scores.

    ``tests``/``manual``: (grade_id, points) of autograded and hand-graded cells; ``answers``: grade_ids of
    answer (solution) cells; ``results``: student_id -> result record.
    """
    with warnings.catch_warnings():
        # nbgrader's add_submission triggers harmless SQLAlchemy autoflush warnings
        warnings.simplefilter("ignore", category=sqlalchemy_exc.SAWarning)
        _write(db_path, lab, tests, manual, answers, results)


def _write(db_path: Path, lab: str, tests: list[tuple[str, float]], manual: list[tuple[str, float]],
           answers: list[str], results: dict[str, dict]) -> None:
    with Gradebook(f"sqlite:///{Path(db_path).resolve()}") as gradebook:
        # One fsync per commit makes a class of hundreds slow on busy disks; a crash mid-run only loses this
        # rewrite (the results/ cache rebuilds it), not grades already in the file.
        gradebook.db.execute(text("PRAGMA synchronous=OFF"))
        gradebook.update_or_create_assignment(lab)
        gradebook.update_or_create_notebook(lab, lab)
        for gid, points in tests:
            gradebook.update_or_create_grade_cell(gid, lab, lab, max_score=points, cell_type="code")
        for gid, points in manual:
            gradebook.update_or_create_grade_cell(gid, lab, lab, max_score=points, cell_type="markdown")
        for gid in answers:
            gradebook.update_or_create_solution_cell(gid, lab, lab)
        for student_id in sorted(results):
            result = results[student_id]
            gradebook.update_or_create_student(student_id)
            gradebook.update_or_create_submission(lab, student_id)
            scores = {c["grade_id"]: c["score"] for c in result["cells"]}
            for gid, _ in tests:
                grade = gradebook.find_grade(gid, lab, lab, student_id)
                grade.auto_score = scores.get(gid, 0.0)
                grade.needs_manual_grade = False
            for gid, _ in manual:
                grade = gradebook.find_grade(gid, lab, lab, student_id)
                grade.auto_score = None
                grade.needs_manual_grade = True
            gradebook.db.commit()
