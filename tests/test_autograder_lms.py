"""``autograder export canvas|moodle``: a small class's grades.csv as Canvas and Moodle gradebook imports."""
from __future__ import annotations

import csv
import io

import pytest

from autograder.__main__ import main
from autograder.grade import grade_class
from autograder.lms import CANVAS_IDENTITY, ExportProblem, export_rows
from autograder.sandbox import bwrap_problem

from autograder_helpers import FIXTURE_COURSE, FIXTURE_LAB, TEST_LIMITS, fixture_lab, submission, write_class

pytestmark = pytest.mark.xdist_group("autograder-lms")


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """A graded class of three: full marks, blank, and an id a spreadsheet would run as a formula."""
    lab = fixture_lab()
    wrong = "def dequantize(q, scale):\n    return q.to(torch.float32) * scale * 2\n"
    root = write_class(tmp_path_factory.mktemp("lms"), FIXTURE_LAB,
                       {"ada": submission(lab), "bob": lab.released_bytes, "+cy": submission(lab, dequantize=wrong)})
    out = root.parent / "out"
    results = grade_class(FIXTURE_LAB, root, out, FIXTURE_COURSE, jobs=2, limits=TEST_LIMITS, progress=False,
                          unsafe=bwrap_problem() is not None)
    assert (results["ada"]["score"], results["bob"]["score"]) == (6.0, 0.0)
    assert 0 < results["+cy"]["score"] < 6
    return out / "grades.csv", {sid: f"{r['score']:.2f}" for sid, r in results.items()}


def _read(path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(path.read_bytes().decode("utf-8"))))


def test_canvas_without_roster_puts_ids_in_sis_login_id(graded, tmp_path):
    grades, scores = graded
    assert main(["export", "canvas", str(grades), "--out", str(tmp_path / "canvas.csv")]) == 0
    rows = _read(tmp_path / "canvas.csv")
    assert rows[0] == CANVAS_IDENTITY + [FIXTURE_LAB]
    assert rows[1] == ["    Points Possible", "", "", "", "", "6.00"]
    by_login = {r[3]: r for r in rows[2:]}
    assert set(by_login) == set(scores)  # '+cy is written back as +cy: Canvas must see the real id
    assert all(by_login[sid][-1] == scores[sid] and by_login[sid][:3] == ["", "", ""] for sid in scores)


def _write_csv(path, rows):
    with path.open("w", newline="", encoding="utf-8-sig") as handle:
        csv.writer(handle).writerows(rows)
    return path


def test_canvas_with_roster_takes_identities_from_canvas_export(graded, tmp_path):
    grades, scores = graded
    roster = _write_csv(tmp_path / "export.csv", [
        CANVAS_IDENTITY + ["Lab 1 (901)", "Current Score"],
        ["    Points Possible", "", "", "", "", "6", "(read only)"],
        ["Lovelace, Ada", "11", "S11", "ada", "A", "", ""],
        ["Brown, Bob", "12", "S12", "bob", "A", "", ""],
        ["Young, Cy", "13", "S13", "+cy", "B", "", ""],
        ["Absent, Dee", "14", "S14", "dee", "B", "", ""]])
    rows = export_rows("canvas", grades, assignment="Lab 1 (901)", roster=roster)
    assert rows[0] == CANVAS_IDENTITY + ["Lab 1 (901)"]
    assert rows[2:] == [["Young, Cy", "13", "S13", "+cy", "B", scores["+cy"]],
                        ["Lovelace, Ada", "11", "S11", "ada", "A", scores["ada"]],
                        ["Brown, Bob", "12", "S12", "bob", "A", scores["bob"]]]


def test_moodle_with_roster_matched_by_username(graded, tmp_path):
    grades, scores = graded
    roster = _write_csv(tmp_path / "moodle.csv", [
        ["First name", "Last name", "Username", "ID number", "Email address", "Assignment: Lab 1 (Real)"],
        ["Ada", "Lovelace", "ada", "1001", "ada@uni.example", "-"],
        ["Bob", "Brown", "bob", "1002", "bob@uni.example", "-"],
        ["Cy", "Young", "+cy", "1003", "cy@uni.example", "-"]])
    rows = export_rows("moodle", grades, assignment="Lab 1", roster=roster, match="Username")
    assert rows[0] == ["First name", "Last name", "Username", "ID number", "Email address", "Lab 1"]
    assert sorted(rows[1:]) == sorted([["Ada", "Lovelace", "ada", "1001", "ada@uni.example", scores["ada"]],
                                       ["Bob", "Brown", "bob", "1002", "bob@uni.example", scores["bob"]],
                                       ["Cy", "Young", "+cy", "1003", "cy@uni.example", scores["+cy"]]])


def test_moodle_without_roster_is_id_and_grade(graded):
    grades, scores = graded
    rows = export_rows("moodle", grades, match="ID number")
    assert rows[0] == ["ID number", FIXTURE_LAB]
    assert dict(map(tuple, rows[1:])) == scores


def test_student_missing_from_roster_is_named(graded, tmp_path):
    grades, _ = graded
    roster = _write_csv(tmp_path / "short.csv", [CANVAS_IDENTITY, ["Lovelace, Ada", "11", "S11", "ada", "A"]])
    with pytest.raises(ExportProblem, match=r"2 graded student\(s\) not in the roster's 'SIS Login ID' column: "
                                            r"\+cy, bob"):
        export_rows("canvas", grades, roster=roster)
    with pytest.raises(ExportProblem, match="has no column 'Email'"):
        export_rows("canvas", grades, roster=roster, match="Email")
