"""No drift between the jupytext sources, the nbgrader source notebooks and the committed student labs."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from autograder.release import build_source_notebook, find_labs, generate_assignment, notebook_from_py

REPO = Path(__file__).resolve().parents[1]
FIXTURE_COURSE = REPO / "tests" / "fixtures" / "course"
COURSES = [(REPO, lab) for lab in find_labs(REPO)] + [(FIXTURE_COURSE, lab) for lab in find_labs(FIXTURE_COURSE)]
IDS = [f"{'fixture' if course == FIXTURE_COURSE else 'course'}-{lab}" for course, lab in COURSES]

pytestmark = pytest.mark.xdist_group("autograder-release")


def test_fixture_and_real_labs_are_found():
    assert (FIXTURE_COURSE, "fixture_lab") in COURSES


def _same_python(notebook: dict) -> dict:
    """The notebook with ``language_info.version`` (the releasing interpreter's patch version) blanked, so
    a lab released under Python 3.11.7 does not count as drifted when the tests run under 3.11.9."""
    notebook = json.loads(json.dumps(notebook))
    notebook.get("metadata", {}).get("language_info", {}).pop("version", None)
    return notebook


def test_released_metadata_is_what_the_kernel_reports():
    """JupyterLab copies the kernel's language_info into the notebook on open: a different block makes a
    freshly opened lab "unsaved" (seen in Chromium with language_info = {"name": "python"})."""
    from ipykernel.ipkernel import IPythonKernel
    for course, lab in COURSES:
        for folder in ("solutions", "labs"):
            metadata = json.loads((course / folder / lab / f"{lab}.ipynb").read_text())["metadata"]
            assert _same_python({"metadata": metadata})["metadata"]["language_info"] == \
                _same_python({"metadata": {"language_info": dict(IPythonKernel.language_info)}})["metadata"]["language_info"]


def _cells(notebook) -> list[tuple]:
    return [(c["cell_type"], c["source"], c.get("metadata", {}).get("nbgrader")) for c in notebook["cells"]]


@pytest.mark.parametrize("course, lab", COURSES, ids=IDS)
def test_py_and_source_notebook_agree(course, lab):
    ipynb = course / "solutions" / lab / f"{lab}.ipynb"
    assert ipynb.is_file(), f"{ipynb} missing: run `make release`"
    committed = json.loads(ipynb.read_text())
    rebuilt = json.loads(nbformat.writes(notebook_from_py(course / "solutions" / lab / f"{lab}.py")))
    assert _cells(committed) == _cells(rebuilt), f"{lab}.ipynb drifted from {lab}.py: run `make release`"
    assert _same_python(committed) == _same_python(rebuilt)


@pytest.mark.parametrize("course, lab", COURSES, ids=IDS)
def test_committed_lab_equals_fresh_generation(course, lab, tmp_path):
    committed_path = course / "labs" / lab / f"{lab}.ipynb"
    assert committed_path.is_file(), f"{committed_path} missing: run `make release`"
    fresh = json.loads(generate_assignment(course, lab, release_dir=tmp_path).read_text())
    assert _same_python(json.loads(committed_path.read_text())) == _same_python(fresh), \
        f"labs/{lab} drifted: run `make release`"
    assert sorted(p.name for p in (tmp_path / lab).iterdir()) == sorted(p.name for p in committed_path.parent.iterdir())


def test_student_version_hides_solutions_and_hidden_tests():
    student = (FIXTURE_COURSE / "labs" / "fixture_lab" / "fixture_lab.ipynb").read_text()
    assert "BEGIN HIDDEN TESTS" not in student and "check_quantize_symmetric" not in student
    assert "torch.clamp(torch.round" not in student and "raise NotImplementedError()" in student
    assert not list((FIXTURE_COURSE / "labs" / "fixture_lab").glob("*.py"))  # the solution .py is not copied


def test_source_notebook_build_is_deterministic(tmp_path):
    py = FIXTURE_COURSE / "solutions" / "fixture_lab" / "fixture_lab.py"
    course = tmp_path / "course"
    (course / "solutions" / "fixture_lab").mkdir(parents=True)
    (course / "solutions" / "fixture_lab" / "fixture_lab.py").write_text(py.read_text())
    first = build_source_notebook(course, "fixture_lab").read_bytes()
    second = build_source_notebook(course, "fixture_lab").read_bytes()
    assert first == second
    committed = (FIXTURE_COURSE / "solutions" / "fixture_lab" / "fixture_lab.ipynb").read_text()
    assert _same_python(json.loads(first)) == _same_python(json.loads(committed))
    ids = [c["id"] for c in json.loads(first)["cells"]]
    assert "test_quantize_symmetric" in ids and len(set(ids)) == len(ids)
