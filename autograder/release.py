"""Release: jupytext ``solutions/<lab>/<lab>.py`` -> source ``.ipynb`` -> nbgrader student version in ``labs/``.

Both steps are deterministic: cell ids come from the nbgrader ``grade_id`` (or the cell index), the notebook
metadata is reduced to the kernelspec and the kernel's language_info, and ``labs/`` is regenerated with ``--force``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jupytext
import nbformat

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_FILE = Path(__file__).resolve().parent / "nbgrader_config.py"
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
_VALID_CELL_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def find_labs(course_root: Path) -> list[str]:
    """Lab names with a jupytext source ``solutions/<lab>/<lab>.py`` under ``course_root``, sorted."""
    solutions = course_root / "solutions"
    return sorted(p.parent.name for p in solutions.glob("*/*.py") if p.stem == p.parent.name)


def deterministic_cell_id(cell: nbformat.NotebookNode, index: int, used: set[str]) -> str:
    """The cell's grade_id when it is a valid, unused cell id; else ``cell-<index>``."""
    grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id", "")
    candidate = grade_id if _VALID_CELL_ID.match(grade_id or "") and grade_id not in used else f"cell-{index:03d}"
    used.add(candidate)
    return candidate


def kernel_language_info() -> dict:
    """The ``language_info`` the course's ipykernel reports when a notebook connects to it.

    JupyterLab writes the kernel's ``language_info`` into the notebook's metadata on open; if it differs
    from what the file holds (even by one key), the notebook opens already "unsaved". Writing the same
    block (ipykernel's, for the Python running the release: the course environment's) keeps a freshly
    opened lab clean. A kernel on another Python version still reports its own ``version``.
    """
    from ipykernel.ipkernel import IPythonKernel
    return json.loads(json.dumps(IPythonKernel.language_info))  # a plain copy


def notebook_from_py(py_path: Path) -> nbformat.NotebookNode:
    """Read a jupytext percent ``.py`` into an nbformat 4.5 notebook with deterministic ids and metadata."""
    notebook = jupytext.read(py_path)
    clean = nbformat.v4.new_notebook()
    clean.metadata = nbformat.from_dict({"kernelspec": KERNELSPEC, "language_info": kernel_language_info()})
    used: set[str] = set()
    for index, cell in enumerate(notebook.cells):
        metadata = {"nbgrader": cell.metadata["nbgrader"]} if "nbgrader" in cell.metadata else {}
        if cell.cell_type == "code":
            new = nbformat.v4.new_code_cell(source=cell.source, metadata=metadata)
        elif cell.cell_type == "markdown":
            new = nbformat.v4.new_markdown_cell(source=cell.source, metadata=metadata)
        else:
            new = nbformat.v4.new_raw_cell(source=cell.source, metadata=metadata)
        new["id"] = deterministic_cell_id(cell, index, used)
        clean.cells.append(new)
    nbformat.validate(clean)
    return clean


def build_source_notebook(course_root: Path, lab: str) -> Path:
    """Write ``solutions/<lab>/<lab>.ipynb`` from its ``.py`` twin and return its path."""
    py_path = course_root / "solutions" / lab / f"{lab}.py"
    if not py_path.is_file():
        raise FileNotFoundError(f"no jupytext source {py_path}: every lab needs solutions/<lab>/<lab>.py")
    ipynb_path = py_path.with_suffix(".ipynb")
    nbformat.write(notebook_from_py(py_path), ipynb_path)
    return ipynb_path


def _nbgrader_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # nbgrader runs alembic
    env.pop("NBGRADER_EXECUTION", None)
    return env


def generate_assignment(course_root: Path, lab: str, release_dir: Path | None = None) -> Path:
    """Run ``nbgrader generate_assignment --force`` for ``lab``; returns the student notebook path.

    ``release_dir`` (default ``<course_root>/labs``) lets tests generate into a temporary folder.
    The gradebook nbgrader needs is a throw-away file in a temporary folder.
    """
    release_dir = Path(release_dir or course_root / "labs").resolve()
    with tempfile.TemporaryDirectory(prefix="lowbit-release-") as tmp:
        shutil.copy(CONFIG_FILE, Path(tmp) / "nbgrader_config.py")  # nbgrader reads its config from the cwd
        command = [
            sys.executable, "-m", "nbgrader", "generate_assignment", lab, "--force",
            f"--CourseDirectory.root={Path(course_root).resolve()}",
            f"--CourseDirectory.release_directory={release_dir}",
            f"--CourseDirectory.db_url=sqlite:///{Path(tmp) / 'gradebook.db'}",
            "--log-level=WARN",
        ]
        done = subprocess.run(command, cwd=tmp, env=_nbgrader_env(), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"nbgrader generate_assignment {lab} failed:\n{done.stdout}\n{done.stderr}")
    student = release_dir / lab / f"{lab}.ipynb"
    if not student.is_file():
        raise RuntimeError(f"nbgrader produced no {student}:\n{done.stdout}\n{done.stderr}")
    return student


def release(course_root: Path = REPO_ROOT, labs: list[str] | None = None) -> list[Path]:
    """Build every (or the named) lab's source notebook, then its student version in ``labs/``."""
    names = labs or find_labs(course_root)
    if not names:
        raise FileNotFoundError(f"no labs under {course_root / 'solutions'} (expected <lab>/<lab>.py)")
    outputs = []
    for lab in names:
        build_source_notebook(course_root, lab)
        target = course_root / "labs" / lab
        if target.exists():
            shutil.rmtree(target)
        outputs.append(generate_assignment(course_root, lab))
    return outputs
