"""``autograder export canvas|moodle grades.csv --out import.csv``: the class CSV as an LMS gradebook import.

Canvas (Grades > Import): the identity columns ``Student, ID, SIS User ID, SIS Login ID, Section`` (Canvas
matches a row to a student by them), then one column per assignment, headed ``Name (assignment id)`` for an
existing assignment or a new name to create one; an optional second row ``Points Possible`` gives the maximum.
Moodle (Grades > Import > CSV file): a header row, a column identifying the user and one column per grade item;
at import time the teacher maps the identifying column to a user field ("Email address" to useremail, "ID
number" to useridnumber, or username) and the grade column to the grade item.

Students are matched by autograder's ``student_id`` (the submission folder's name). Without ``roster`` that id
is written into the ``match`` column as is; with ``roster`` (the LMS's own gradebook export) each graded student
is looked up in the roster's ``match`` column and the row takes the roster's identity columns. The exported
score is ``score`` of grades.csv: the autograded points (written answers are graded by hand, in the LMS).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from .grade import atomic_write

CANVAS_IDENTITY = ["Student", "ID", "SIS User ID", "SIS Login ID", "Section"]
CANVAS_POINTS_ROW = "    Points Possible"  # how Canvas's own export labels its second row
MOODLE_IDENTITY = ["First name", "Last name", "Username", "ID number", "Institution", "Department",
                   "Email address"]
DEFAULT_MATCH = {"canvas": "SIS Login ID", "moodle": "Email address"}
_UNQUOTE = ("'=", "'+", "'-", "'@", "'\t", "'\r")


class ExportProblem(ValueError):
    """The export cannot be written as asked; the message says what is wrong and what to do."""


def _read_csv(path: Path, what: str) -> list[dict[str, str]]:
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # Excel's and the LMSs' exports may carry a BOM
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportProblem(f"cannot read {what} {path}: {exc}") from None
    return list(csv.DictReader(io.StringIO(text)))


def read_grades(path: Path) -> tuple[str, list[tuple[str, str, str]]]:
    """(lab, [(student_id, score, max_score)]) of a grades.csv written by ``autograder grade``."""
    rows = _read_csv(path, "grades")
    if not rows or not {"student_id", "lab", "score", "max_score"} <= set(rows[0]):
        raise ExportProblem(f"{path} is not a grades.csv of `autograder grade` (needs student_id, lab, score, "
                            "max_score columns and at least one student)")
    labs = sorted({r["lab"] for r in rows})
    if len(labs) != 1:
        raise ExportProblem(f"{path} mixes labs ({', '.join(labs)}); export one lab's grades.csv at a time")
    # grades.csv neutralizes ids that a spreadsheet would run as a formula ('+1 ...); the LMS needs the real id
    ids = [r["student_id"][1:] if r["student_id"].startswith(_UNQUOTE) else r["student_id"] for r in rows]
    return labs[0], [(sid, r["score"], r["max_score"]) for sid, r in zip(ids, rows)]


def _roster(path: Path, match: str, identity: list[str], lms: str) -> tuple[list[str], dict[str, dict]]:
    rows = _read_csv(path, "roster")
    columns = list(rows[0]) if rows else []
    if match not in columns:
        raise ExportProblem(f"the roster {path} has no column {match!r} (it has: {', '.join(columns) or 'none'}); "
                            f"pass --match with the column that holds the students' ids")
    keep = [c for c in identity if c in columns]
    by_id: dict[str, dict] = {}
    for row in rows:
        if lms == "canvas" and row.get("Student", "").strip() == CANVAS_POINTS_ROW.strip():
            continue
        key = row[match].strip()
        if key in by_id:
            raise ExportProblem(f"the roster {path} lists {match} {key!r} twice; which row is the student's?")
        if key:
            by_id[key] = row
    return keep, by_id


def export_rows(lms: str, grades: Path, assignment: str | None = None, roster: Path | None = None,
                match: str | None = None) -> list[list[str]]:
    """The import CSV's rows (header first) for ``lms`` ("canvas" or "moodle")."""
    if lms not in DEFAULT_MATCH:
        raise ExportProblem(f"unknown LMS {lms!r}: canvas or moodle")
    lab, graded = read_grades(grades)
    identity = CANVAS_IDENTITY if lms == "canvas" else MOODLE_IDENTITY
    match = match or DEFAULT_MATCH[lms]
    column = assignment or lab
    if roster is None:
        columns = CANVAS_IDENTITY if lms == "canvas" else [match]
        if match not in columns:
            raise ExportProblem(f"--match {match!r} is not one of Canvas's identity columns "
                                f"({', '.join(CANVAS_IDENTITY)})")
        rows = [[sid if c == match else "" for c in columns] + [score] for sid, score, _ in graded]
    else:
        columns, by_id = _roster(roster, match, identity, lms)
        unknown = [sid for sid, _, _ in graded if sid not in by_id]
        if unknown:
            raise ExportProblem(f"{len(unknown)} graded student(s) not in the roster's {match!r} column: "
                                f"{', '.join(unknown[:10])}{' ...' if len(unknown) > 10 else ''}; fix the ids "
                                "(submission folder names) or pass --match with the column that holds them")
        rows = [[by_id[sid].get(c, "") for c in columns] + [score] for sid, score, _ in graded]
    maxima = sorted({m for _, _, m in graded})
    header = [columns + [column]]
    if lms == "canvas":
        header.append([CANVAS_POINTS_ROW if c == "Student" else "" for c in columns] + [maxima[-1]])
    return header + rows


def export(lms: str, grades: Path, out: Path, assignment: str | None = None, roster: Path | None = None,
           match: str | None = None) -> int:
    """Write the import CSV to ``out`` (UTF-8, comma-separated, CRLF as both LMSs' own exports); returns the
    number of students written."""
    rows = export_rows(lms, grades, assignment, roster, match)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    atomic_write(Path(out), buffer.getvalue().encode("utf-8"))
    return len(rows) - (2 if lms == "canvas" else 1)
