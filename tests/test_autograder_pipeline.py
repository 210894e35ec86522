"""The grading pipeline on the fixture lab: scores, mutants, determinism, resume, gradebook, feedback, check."""
from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from autograder.grade import GradingRefused, choose_mode, grade_class
from autograder.mutants import load_catalogue, mutant_submission
from autograder.sandbox import bwrap_problem

from autograder_helpers import FIXTURE_COURSE, FIXTURE_LAB, REPO, TEST_LIMITS, fixture_lab, submission, write_class

pytestmark = pytest.mark.xdist_group("autograder-pipeline")
needs_bwrap = pytest.mark.skipif(bwrap_problem() is not None, reason=f"no usable bwrap: {bwrap_problem()}")
MODE = "bwrap" if bwrap_problem() is None else "unsafe"


def _fixture_mutants():
    return load_catalogue(REPO / "tests" / "mutants" / f"{FIXTURE_LAB}.py")


IN_PLACE = "def dequantize(q, scale):\n    q.mul_(2)\n    return q.to(torch.float32) * scale / 2\n"


@pytest.fixture(scope="module")
def mutant_results(tmp_path_factory):
    """One class run (2 jobs): every fixture mutant (student id m<index>), the solution, the blank notebook
    and an answer that modifies its input in place."""
    lab = fixture_lab()
    notebooks = {f"m{i:03d}": mutant_submission(lab.source_bytes, lab.released_bytes, m)
                 for i, m in enumerate(_fixture_mutants())}
    notebooks.update(solution=submission(lab), blank=lab.released_bytes, in_place=submission(lab, dequantize=IN_PLACE))
    root = write_class(tmp_path_factory.mktemp("mutants"), FIXTURE_LAB, notebooks)
    return grade_class(FIXTURE_LAB, root, root.parent / "out", FIXTURE_COURSE, jobs=2, limits=TEST_LIMITS,
                       progress=False, unsafe=MODE == "unsafe")


def test_solution_scores_full_marks_and_blank_scores_zero(mutant_results):
    full, blank = mutant_results["solution"], mutant_results["blank"]
    assert (full["status"], full["score"], full["max_score"]) == ("ok", 6.0, 6.0)
    assert all(check["passed"] for cell in full["cells"] for check in cell["checks"])
    assert (blank["status"], blank["score"]) == ("ok", 0.0)
    assert all("NotImplementedError" in cell["message"] for cell in blank["cells"])
    assert "no graded function attempted" in " ".join(blank["reasons"])
    assert not any("attempted" in reason for reason in full["reasons"])


def test_fixture_catalogue_has_five_mutants_per_graded_function():
    per_function: dict[str, int] = {}
    for mutant in _fixture_mutants():
        per_function[mutant.function] = per_function.get(mutant.function, 0) + 1
    assert set(per_function) == {"symmetric_scale", "quantize_symmetric", "dequantize"}
    assert min(per_function.values()) >= 5


@pytest.mark.parametrize("index", range(len(_fixture_mutants())),
                         ids=[f"{m.function}-{m.mistake}" for m in _fixture_mutants()])
def test_fixture_mutant_loses_points_and_feedback_names_the_check(mutant_results, index):
    mutant = _fixture_mutants()[index]
    result = mutant_results[f"m{index:03d}"]
    failed = [(cell, check) for cell in result["cells"] for check in cell["checks"]
              if not check["passed"] and check["name"] == mutant.check]
    assert failed, f"no failed check named {mutant.check!r}: {[c['message'] for c in result['cells']]}"
    cell = failed[0][0]
    assert cell["score"] < cell["max_score"]
    assert result["score"] < result["max_score"]


def test_grade_mutants_harness_reports_each_mutant(tmp_path):
    from autograder.mutants import grade_mutants
    mutants = _fixture_mutants()[:2]
    report = grade_mutants(FIXTURE_COURSE, FIXTURE_LAB, mutants, tmp_path, jobs=2, unsafe=MODE == "unsafe",
                           limits=TEST_LIMITS)
    assert [m for m, _, _ in report] == mutants
    assert all(caught for _, _, caught in report)
    assert all(result["score"] < result["max_score"] for _, result, _ in report)


def test_input_mutation_is_named_in_the_message(mutant_results):
    cell = next(c for c in mutant_results["in_place"]["cells"] if c["grade_id"] == "test_dequantize")
    assert cell["score"] == 0
    assert "dequantize modified its input argument 0 in place" in cell["message"]


# -- class runs: determinism, parallelism, resume, outputs -------------------------------------------------
def _class_notebooks(lab) -> dict[str, bytes]:
    mutants = _fixture_mutants()
    return {"s01": submission(lab),
            "s03": mutant_submission(lab.source_bytes, lab.released_bytes, mutants[0]),
            "s04": mutant_submission(lab.source_bytes, lab.released_bytes, mutants[7]),
            "s05": b"not json"}


@pytest.fixture(scope="module")
def class_dir(tmp_path_factory):
    lab = fixture_lab()
    return write_class(tmp_path_factory.mktemp("class") / "submissions", FIXTURE_LAB, _class_notebooks(lab))


@pytest.fixture(scope="module")
def parallel_run(class_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("parallel")
    grade_class(FIXTURE_LAB, class_dir, out, FIXTURE_COURSE, jobs=2, limits=TEST_LIMITS, progress=False,
                unsafe=MODE == "unsafe")
    return out


def test_csv_columns_and_rows(parallel_run):
    rows = list(csv.DictReader(io.StringIO((parallel_run / "grades.csv").read_text())))
    assert list(rows[0])[:8] == ["student_id", "lab", "score", "max_score", "status", "reason", "sandbox",
                                 "hand_graded_max"]
    assert list(rows[0])[8:] == ["test_symmetric_scale", "test_quantize_symmetric", "test_dequantize"]
    assert {r["hand_graded_max"] for r in rows if r["status"] == "ok"} == {"1.00"}   # explain_error, by hand
    by_id = {r["student_id"]: r for r in rows}
    assert [r["student_id"] for r in rows] == sorted(by_id)
    assert by_id["s01"]["score"] == "6.00" and by_id["s04"]["score"] == "3.00"
    assert by_id["s03"]["test_symmetric_scale"] == "0.00" and by_id["s03"]["test_dequantize"] == "1.00"
    assert by_id["s05"]["status"] == "invalid-notebook"
    assert {r["sandbox"] for r in rows} == {MODE}


def test_sequential_equals_parallel_and_csv_is_byte_identical(class_dir, parallel_run, tmp_path):
    grade_class(FIXTURE_LAB, class_dir, tmp_path, FIXTURE_COURSE, jobs=1, limits=TEST_LIMITS, progress=False,
                unsafe=MODE == "unsafe")
    assert (tmp_path / "grades.csv").read_bytes() == (parallel_run / "grades.csv").read_bytes()


def test_interrupted_then_resumed_equals_uninterrupted(class_dir, parallel_run, tmp_path):
    partial = tmp_path / "partial"
    for student in ("s03",):
        (partial / student).mkdir(parents=True)
        (partial / student / f"{FIXTURE_LAB}.ipynb").write_bytes((class_dir / student / f"{FIXTURE_LAB}.ipynb").read_bytes())
    out = tmp_path / "out"
    grade_class(FIXTURE_LAB, partial, out, FIXTURE_COURSE, jobs=2, limits=TEST_LIMITS, progress=False,
                unsafe=MODE == "unsafe")
    first = {p.name: p.stat().st_mtime_ns for p in (out / "results").iterdir()}
    grade_class(FIXTURE_LAB, class_dir, out, FIXTURE_COURSE, jobs=2, limits=TEST_LIMITS, progress=False,
                unsafe=MODE == "unsafe")
    after = {p.name: p.stat().st_mtime_ns for p in (out / "results").iterdir()}
    assert {k: after[k] for k in first} == first            # finished results were reused, not regraded
    assert (out / "grades.csv").read_bytes() == (parallel_run / "grades.csv").read_bytes()
    grade_class(FIXTURE_LAB, class_dir, out, FIXTURE_COURSE, jobs=2, limits=TEST_LIMITS, progress=False,
                force=True, unsafe=MODE == "unsafe")
    forced = {p.name: p.stat().st_mtime_ns for p in (out / "results").iterdir()}
    assert all(forced[k] != after[k] for k in after)          # --force regrades everything
    assert (out / "grades.csv").read_bytes() == (parallel_run / "grades.csv").read_bytes()


def test_changed_submission_is_regraded(class_dir, tmp_path):
    lab = fixture_lab()
    root = write_class(tmp_path / "subs", FIXTURE_LAB, {"s01": b"{}"})
    out = tmp_path / "out"
    first = grade_class(FIXTURE_LAB, root, out, FIXTURE_COURSE, jobs=1, limits=TEST_LIMITS, progress=False,
                        unsafe=MODE == "unsafe")
    (root / "s01" / f"{FIXTURE_LAB}.ipynb").write_bytes(submission(lab))
    second = grade_class(FIXTURE_LAB, root, out, FIXTURE_COURSE, jobs=1, limits=TEST_LIMITS, progress=False,
                         unsafe=MODE == "unsafe")
    assert (first["s01"]["score"], second["s01"]["score"]) == (0.0, 6.0)


def test_zip_and_nbgrader_submitted_layouts(class_dir, parallel_run, tmp_path):
    """The same notebooks as a zipped LMS download and as an nbgrader submitted/ tree grade the same."""
    picked = [class_dir / s / f"{FIXTURE_LAB}.ipynb" for s in ("s04", "s05")]
    expected = [line for line in (parallel_run / "grades.csv").read_text().splitlines()
                if line.startswith(("student_id", "s04", "s05"))]
    archive = tmp_path / "download.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in picked:
            bundle.write(path, f"lms-export/{path.relative_to(class_dir)}")
    submitted = tmp_path / "course" / "submitted"
    for path in picked:
        target = submitted / path.parent.name / FIXTURE_LAB / path.name
        target.parent.mkdir(parents=True)
        target.write_bytes(path.read_bytes())
    for source, out in ((archive, tmp_path / "zip-out"), (tmp_path / "course", tmp_path / "nbg-out")):
        grade_class(FIXTURE_LAB, source, out, FIXTURE_COURSE, jobs=2, limits=TEST_LIMITS, progress=False,
                    unsafe=MODE == "unsafe")
        assert (out / "grades.csv").read_text().splitlines() == expected


def test_gradebook_works_with_nbgrader_export(parallel_run, tmp_path):
    from nbgrader.api import Gradebook
    with Gradebook(f"sqlite:///{parallel_run / 'gradebook.db'}") as gradebook:
        scores = {s.student_id: s.score for s in gradebook.assignment_submissions(FIXTURE_LAB)}
        cell = gradebook.find_grade("test_quantize_symmetric", FIXTURE_LAB, FIXTURE_LAB, "s01")
        assert cell.auto_score == 3.0
    assert scores == {"s01": 6.0, "s03": 4.0, "s04": 3.0, "s05": 0.0}
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run([sys.executable, "-m", "nbgrader", "export",
                           f"--CourseDirectory.root={tmp_path}",
                           f"--CourseDirectory.db_url=sqlite:///{parallel_run / 'gradebook.db'}",
                           f"--CsvExportPlugin.to={tmp_path / 'export.csv'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    exported = {r["student_id"]: float(r["raw_score"]) for r in csv.DictReader((tmp_path / "export.csv").open())}
    assert exported == scores


def test_feedback_names_checks_but_never_shows_hidden_code(parallel_run):
    html = (parallel_run / "feedback" / "s04" / f"{FIXTURE_LAB}.html").read_text()
    hidden_source = fixture_lab().source_bytes.decode()
    assert "rounds half to even" in html and "FAILED" in html          # the named check and its outcome
    assert "torch.floor" in html                                       # the student's own answer
    assert "assert q.dtype == torch.int8" in html                      # visible test source is public
    for secret in ("check_quantize_symmetric(quantize_symmetric)", "from autograder.checks", "HIDDEN TESTS",
                   'REF["quantize_symmetric"]', "fixref"):
        assert secret in hidden_source or secret in (FIXTURE_COURSE / "checks" / "fixture_lab.py").read_text()
        assert secret not in html


def test_unsafe_needs_opt_in_and_is_marked(monkeypatch):
    from autograder import grade as grade_module
    monkeypatch.setattr(grade_module, "bwrap_problem", lambda: "bubblewrap (bwrap) is not installed")
    with pytest.raises(GradingRefused, match="--unsafe"):
        choose_mode(unsafe=False)
    assert choose_mode(unsafe=True) == "unsafe"


def test_check_command_reports_visible_tests(tmp_path):
    lab = fixture_lab()
    notebook = tmp_path / f"{FIXTURE_LAB}.ipynb"
    notebook.write_bytes(submission(lab, dequantize="def dequantize(q, scale):\n    return q\n"))
    done = subprocess.run([sys.executable, "-m", "autograder", "check", str(notebook), "--course", str(FIXTURE_COURSE)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 1
    assert "[PASS] test_symmetric_scale" in done.stdout and "[FAIL] test_dequantize" in done.stdout
    assert "Left to do: test_dequantize" in done.stdout
    assert "experiment/widget cells are skipped" in done.stdout


def test_check_command_says_not_attempted_for_a_blank_notebook(tmp_path):
    notebook = tmp_path / f"{FIXTURE_LAB}.ipynb"
    notebook.write_bytes(fixture_lab().released_bytes)
    done = subprocess.run([sys.executable, "-m", "autograder", "check", str(notebook), "--course", str(FIXTURE_COURSE)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 1
    assert "[TODO] test_dequantize" in done.stdout and "not attempted yet" in done.stdout
    assert "Traceback" not in done.stdout


def test_check_command_never_claims_the_grade_is_known(tmp_path):
    from autograder.check import NOT_A_GRADE
    notebook = tmp_path / f"{FIXTURE_LAB}.ipynb"
    notebook.write_bytes(submission(fixture_lab()))
    done = subprocess.run([sys.executable, "-m", "autograder", "check", str(notebook), "--course", str(FIXTURE_COURSE)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "All done" not in done.stdout
    assert NOT_A_GRADE in done.stdout and "hidden checks decide" in NOT_A_GRADE


def test_cli_refuses_missing_lab(tmp_path):
    done = subprocess.run([sys.executable, "-m", "autograder", "grade", "no_such_lab", str(tmp_path), "--out",
                           str(tmp_path / "out"), "--course", str(FIXTURE_COURSE)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2
    assert "release" in done.stderr
