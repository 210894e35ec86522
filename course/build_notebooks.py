"""Worked solutions for reading: execute each solution notebook and save it, outputs included, in course/notebooks/.

    make notebooks                                   # every lab
    .venv/bin/python course/build_notebooks.py lab2_kmeans

Self-learners read these on the web or open them in JupyterLab: the solution code with every table, figure and
visible-test line it produced. The copy drops what only the grader needs — the hidden-test blocks and the
solution markers — and keeps everything else cell for cell. Widgets are saved as their static figure
(``LOWBIT_STATIC_WIDGETS=1``; an interactive view would need the kernel) and tqdm bars are left out. The
figures match ``benchmarks/RESULTS.md``; timings printed inside the labs are from the machine that built them.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "course" / "notebooks"
HIDDEN_TESTS = re.compile(r"^[ \t]*### BEGIN HIDDEN TESTS\n.*?^[ \t]*### END HIDDEN TESTS[ \t]*(\n|\Z)", re.M | re.S)
SOLUTION_MARKER = re.compile(r"^[ \t]*### (BEGIN|END) SOLUTION[ \t]*(\n|\Z)", re.M)
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def reader_source(source: str) -> str:
    """A solution cell's source as a reader sees it: no hidden-test block, no solution markers."""
    return SOLUTION_MARKER.sub("", HIDDEN_TESTS.sub("", source)).rstrip("\n")


def reader_notebook(solution: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The solution notebook with reader sources and no outputs (not executed yet)."""
    page = nbformat.v4.new_notebook(metadata=solution.metadata)
    for cell in solution.cells:
        copy = nbformat.from_dict({k: v for k, v in cell.items() if k not in ("outputs", "execution_count")})
        copy.source = reader_source(cell.source) if cell.cell_type == "code" else cell.source
        copy.metadata = {key: value for key, value in cell.metadata.items() if key != "nbgrader"}
        if cell.cell_type == "code":
            copy.outputs, copy.execution_count = [], None
        page.cells.append(copy)
    return page


def is_progress_bar(output: nbformat.NotebookNode) -> bool:
    """A tqdm.auto bar or any other live-widget view: meaningless without a kernel."""
    return output.get("output_type") == "display_data" and WIDGET_VIEW in output.get("data", {})


def execute(page: nbformat.NotebookNode, workdir: Path) -> float:
    """Run every cell in ``workdir`` like a student would (grading flag off, static widgets); seconds taken."""
    from nbclient import NotebookClient
    os.environ.pop("NBGRADER_EXECUTION", None)
    os.environ["LOWBIT_STATIC_WIDGETS"] = "1"
    start = time.perf_counter()
    NotebookClient(page, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}).execute()
    for cell in page.cells:
        if cell.cell_type == "code":
            cell.outputs = [output for output in cell.outputs if not is_progress_bar(output)]
    page.metadata.pop("widgets", None)
    return time.perf_counter() - start


def build(lab: str) -> Path:
    source = REPO / "solutions" / lab / f"{lab}.ipynb"
    if not source.exists():
        raise SystemExit(f"no solution notebook {source.relative_to(REPO)}: run `make release` first, or check the lab name")
    page = reader_notebook(nbformat.read(source, as_version=4))
    seconds = execute(page, source.parent)
    OUT.mkdir(exist_ok=True)
    target = OUT / f"{lab}.ipynb"
    nbformat.write(page, target)
    print(f"{lab}: executed in {seconds:.0f} s -> {target.relative_to(REPO)}", flush=True)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("labs", nargs="*", help="lab names (default: every lab in solutions/)")
    args = parser.parse_args(argv)
    labs = args.labs or sorted(p.name for p in (REPO / "solutions").iterdir() if (p / f"{p.name}.ipynb").exists())
    for lab in labs:
        build(lab)


if __name__ == "__main__":
    sys.exit(main())
