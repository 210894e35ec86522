"""``autograder check`` finds the lab from wherever JupyterLab's terminal starts (repo root or labs/)."""
from __future__ import annotations

from pathlib import Path

from autograder.check import find_notebook
from autograder.runner import Course

from autograder_helpers import FIXTURE_COURSE, FIXTURE_LAB


def test_find_notebook_from_any_folder(tmp_path, monkeypatch):
    course = Course.load(FIXTURE_COURSE)
    released = course.released_notebook(FIXTURE_LAB)
    monkeypatch.chdir(tmp_path)                                       # neither the repo root nor labs/
    assert find_notebook(Path(FIXTURE_LAB), course) == released       # a bare lab name
    assert find_notebook(Path(f"labs/{FIXTURE_LAB}/{FIXTURE_LAB}.ipynb"), course) == released  # the README's path
    assert find_notebook(Path(f"{FIXTURE_LAB}.ipynb"), course) == released
    own = tmp_path / f"{FIXTURE_LAB}.ipynb"
    own.write_text("{}")
    assert find_notebook(Path(f"{FIXTURE_LAB}.ipynb"), course) == Path(f"{FIXTURE_LAB}.ipynb")  # yours comes first
    assert find_notebook(Path("nope/missing.ipynb"), course) == Path("nope/missing.ipynb")
