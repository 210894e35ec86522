"""Each solution notebook runs top to bottom as nbgrader would run it: no error, nothing on stderr.

Executed with ``NBGRADER_EXECUTION=autograde`` (``lowbit.GRADING`` true: experiments shrink, widgets render
one static figure), in a fresh kernel, exactly like ``nbgrader autograde`` or ``nbgrader validate``.
The full-size run (Restart & Run All) is timed by ``benchmarks/bench_labs.py``.
"""
from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from autograder.release import find_labs

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.xdist_group("notebook-execution")
@pytest.mark.parametrize("lab", find_labs(REPO))
def test_solution_notebook_runs_clean_in_grading_mode(lab, monkeypatch):
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    monkeypatch.setenv("PATH", f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    path = REPO / "solutions" / lab / f"{lab}.ipynb"
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=180, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    problems = []
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id", "?")
        for output in cell.outputs:
            if output.output_type == "error":
                problems.append(f"{grade_id}: {output.ename}: {output.evalue}")
            elif output.output_type == "stream" and output.name == "stderr":
                problems.append(f"{grade_id} wrote to stderr: {output.text[:300]!r}")
    assert problems == [], "\n".join(problems)
