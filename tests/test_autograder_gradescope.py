"""``autograder gradescope``: the bundle's run_autograder, run on a temporary folder laid out as Gradescope's
/autograder/, grades an honest, a blank and a mutant Lab 1 submission into a results.json that satisfies
Gradescope's documented format (written below as a JSON Schema)."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import zipfile

import jsonschema
import pytest

from autograder.gradescope import BundleProblem, build_bundle
from autograder.mutants import load_catalogue
from autograder.notebook import build_plan, parse_notebook
from autograder.runner import split_hidden
from autograder.sandbox import bwrap_problem

from autograder_helpers import REPO, honest_blank_mutants, real_lab

pytestmark = [pytest.mark.xdist_group("autograder-gradescope"),
              pytest.mark.skipif(bwrap_problem() is not None, reason=f"no usable bwrap: {bwrap_problem()}")]
LAB = "lab1_linear"

# Gradescope's autograder specification ("Output format" of results.json), as a JSON Schema: every field the
# documentation lists, with its documented type or values; nothing else is allowed.
_FORMATS = {"enum": ["text", "html", "simple_format", "md", "ansi"]}
_VISIBILITY = {"enum": ["hidden", "after_due_date", "after_published", "visible"]}
GRADESCOPE_TEST = {
    "type": "object", "additionalProperties": False,
    "properties": {"score": {"type": "number"}, "max_score": {"type": "number"},
                   "status": {"enum": ["passed", "failed"]}, "name": {"type": "string"},
                   "name_format": _FORMATS, "number": {"type": "string"}, "output": {"type": "string"},
                   "output_format": _FORMATS, "tags": {"type": "array", "items": {"type": "string"}},
                   "visibility": _VISIBILITY, "extra_data": {"type": "object"}}}
GRADESCOPE_RESULTS = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object", "additionalProperties": False,
    "properties": {"score": {"type": "number"}, "execution_time": {"type": "number"}, "output": {"type": "string"},
                   "output_format": _FORMATS, "test_output_format": _FORMATS, "test_name_format": _FORMATS,
                   "visibility": _VISIBILITY, "stdout_visibility": _VISIBILITY, "extra_data": {"type": "object"},
                   "tests": {"type": "array", "items": GRADESCOPE_TEST},
                   "leaderboard": {"type": "array", "items": {
                       "type": "object", "required": ["name", "value"],
                       "properties": {"name": {"type": "string"}, "value": {"type": ["number", "string"]},
                                      "order": {"enum": ["asc", "desc"]}}}}},
    # "score: optional, but required if not on each test case"
    "anyOf": [{"required": ["score"]},
              {"required": ["tests"], "properties": {"tests": {"items": {"required": ["score"]}}}}]}


def test_schema_rejects_what_gradescope_would():
    validator = jsonschema.Draft202012Validator(GRADESCOPE_RESULTS)
    assert validator.is_valid({"score": 1.0, "tests": [{"name": "a", "score": 1, "max_score": 1}]})
    assert not validator.is_valid({"tests": [{"name": "a"}]})                      # no score anywhere
    assert not validator.is_valid({"score": 1, "visibility": "students"})          # not a visibility
    assert not validator.is_valid({"score": 1, "tests": [{"name": "a", "points": 1}]})  # not a test field


@pytest.fixture(scope="module")
def autograder_root(tmp_path_factory):
    """The bundle extracted as Gradescope does (into <root>/source), then the self-test setup.sh runs."""
    work = tmp_path_factory.mktemp("gradescope")
    bundle = build_bundle(LAB, work / "lab1_gradescope.zip", REPO)
    root = work / "autograder"
    with zipfile.ZipFile(bundle) as archive:
        names = archive.namelist()
        assert {"setup.sh", "run_autograder"} <= set(names)
        archive.extractall(root / "source")
        for info in archive.infolist():
            os.chmod(root / "source" / info.filename, (info.external_attr >> 16) & 0o777)
    assert os.stat(root / "source" / "run_autograder").st_mode & stat.S_IXUSR
    assert not [n for n in names if n.startswith("course/autograder/checks/lab") and LAB not in n]
    setup = (root / "source" / "setup.sh").read_text()
    assert "bubblewrap" in setup and "--self-test" in setup
    done = subprocess.run([sys.executable, "-m", "autograder", "gradescope-run", "--root", str(root), "--self-test"],
                          cwd=root, env=_env(root), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0 and "self-test passed" in done.stdout, done.stderr[-3000:]
    assert (root / "source" / "grading" / "reference.json").is_file()
    return root


def _env(root) -> dict[str, str]:
    """The bundle's own course first on the path: run_autograder must work from what the zip holds."""
    env = dict(os.environ, AUTOGRADER_ROOT=str(root), AUTOGRADER_PYTHON=sys.executable)
    env["PYTHONPATH"] = str(root / "source" / "course")
    return env


def _run_autograder(root, name: str, data: bytes) -> dict:
    submission = root / "submission"
    if submission.exists():
        for old in submission.iterdir():
            old.unlink()
    submission.mkdir(exist_ok=True)
    (submission / name).write_bytes(data)
    results = root / "results" / "results.json"
    results.unlink(missing_ok=True)
    done = subprocess.run(["bash", str(root / "source" / "run_autograder")], cwd=root, env=_env(root),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(results.read_text())
    jsonschema.validate(report, GRADESCOPE_RESULTS)
    return report


@pytest.fixture(scope="module")
def reports(autograder_root):
    lab = real_lab(LAB)
    notebooks = honest_blank_mutants(lab, mutants=1)
    # a student's upload keeps whatever file name they gave it
    return {student: _run_autograder(autograder_root, f"{student}-{LAB}.ipynb", data)
            for student, data in notebooks.items()}


def _graded_tests(report: dict) -> list[dict]:
    return [t for t in report["tests"] if "max_score" in t]


def test_one_visible_test_per_graded_cell_with_its_points(reports):
    lab = real_lab(LAB)
    source = parse_notebook(lab.source_bytes)
    plan = build_plan(source, parse_notebook(lab.released_bytes), source)
    expected = [(t.grade_id.removeprefix("test_"), float(t.points)) for t in plan.tests]
    for report in reports.values():
        graded = _graded_tests(report)
        assert [(t["name"], t["max_score"]) for t in graded] == expected
        assert all(t["visibility"] == "visible" for t in graded)
        assert report["score"] == sum(t["score"] for t in graded)
        assert all(t["visibility"] == "after_published" and "score" not in t
                   for t in report["tests"] if "max_score" not in t)


def test_honest_full_blank_zero_mutant_loses_the_cell_its_check_catches(reports):
    honest, blank, mutant = reports["honest"], reports["blank"], reports["mutant0"]
    total = sum(t["max_score"] for t in _graded_tests(honest))
    assert honest["score"] == total > 0 and all(t["status"] == "passed" for t in honest["tests"])
    assert blank["score"] == 0.0
    assert all("NotImplementedError" in t["output"] for t in _graded_tests(blank))
    caught = load_catalogue(REPO / "tests" / "mutants" / f"{LAB}.py")[0]
    failed = {t["name"]: t for t in mutant["tests"] if t["status"] == "failed"}
    assert {caught.function, f"{caught.function}: hidden checks"} <= set(failed)
    lost = [t for t in _graded_tests(mutant) if t["status"] == "failed"]
    assert all(t["score"] == 0 for t in lost) and len(lost) < len(_graded_tests(mutant))
    assert mutant["score"] == total - sum(t["max_score"] for t in lost)
    assert f"FAILED: {caught.check}" in failed[f"{caught.function}: hidden checks"]["output"]
    assert f"graded {'mutant0'}-{LAB}.ipynb (expected {LAB}.ipynb)" in mutant["output"]


def _strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def test_hidden_check_code_never_reaches_results(reports):
    lab = real_lab(LAB)
    source = parse_notebook(lab.source_bytes)
    plan = build_plan(source, parse_notebook(lab.released_bytes), source)
    hidden_lines = {line.strip() for t in plan.tests for line in split_hidden(t.source)[1].splitlines()
                    if len(line.strip()) > 25 and "BEGIN HIDDEN" not in line and "END HIDDEN" not in line}
    assert hidden_lines, "the lab has no hidden test code to look for"
    text = "\n".join(_strings(reports))
    assert not [line for line in hidden_lines if line in text]


def test_unsafe_bundle_needs_practice(tmp_path):
    with pytest.raises(BundleProblem, match="only with --practice"):
        build_bundle(LAB, tmp_path / "x.zip", REPO, unsafe=True)
