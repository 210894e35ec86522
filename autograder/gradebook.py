"""Write results into an nbgrader Gradebook so ``nbgrader export`` and nbgrader's tools see the grades."""
from __future__ import annotations

import warnings
from pathlib import Path

from sqlalchemy import exc as sqlalchemy_exc
from sqlalchemy import text

from nbgrader.api import Gradebook


def write_gradebook(db_path: Path, lab: str, tests: list[tuple[str, float]], manual: list[tuple[str, float]],
                    answers: list[str], results: dict[str, dict]) -> list[str]:
    """(Re)record ``lab`` in the gradebook at ``db_path``: cells, students, submissions and auto scores.

    ``tests``/``manual``: (grade_id, points) of autograded and hand-graded cells; ``answers``: grade_ids of
    answer (solution) cells; ``results``: student_id -> result record. Each student is committed on their
    own: a student whose rows cannot be written is rolled back and listed in the returned failures.
    """
    with warnings.catch_warnings():
        # nbgrader's add_submission triggers harmless SQLAlchemy autoflush warnings
        warnings.simplefilter("ignore", category=sqlalchemy_exc.SAWarning)
        return _write(db_path, lab, tests, manual, answers, results)


def _write(db_path: Path, lab: str, tests: list[tuple[str, float]], manual: list[tuple[str, float]],
           answers: list[str], results: dict[str, dict]) -> list[str]:
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
        gradebook.db.commit()
        failures = []
        for student_id in sorted(results):
            try:
                _write_student(gradebook, lab, tests, manual, student_id, results[student_id])
                gradebook.db.commit()
            except Exception as exc:  # noqa: BLE001 - one student's rows must not cost the others theirs
                gradebook.db.rollback()
                failures.append(f"gradebook rows of {student_id}: {type(exc).__name__}: {exc}")
    return failures


def _write_student(gradebook: Gradebook, lab: str, tests: list[tuple[str, float]], manual: list[tuple[str, float]],
                   student_id: str, result: dict) -> None:
    gradebook.update_or_create_student(student_id)
    gradebook.update_or_create_submission(lab, student_id)
    scores = {c["grade_id"]: float(c["score"]) for c in result["cells"]}
    for gid, _ in tests:
        grade = gradebook.find_grade(gid, lab, lab, student_id)
        grade.auto_score = scores.get(gid, 0.0)
        grade.needs_manual_grade = False
    for gid, _ in manual:
        grade = gradebook.find_grade(gid, lab, lab, student_id)
        grade.auto_score = None
        grade.needs_manual_grade = True
