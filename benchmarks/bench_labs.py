"""Lab budgets: Restart & Run All of each solution notebook, the slowest cell, and the grading run.

    .venv/bin/python benchmarks/bench_labs.py [LAB ...] [--write]

For each lab it measures, back to back on this machine:
  1. Restart & Run All of ``solutions/<lab>/<lab>.ipynb`` in a fresh kernel (what a student or self-learner
     runs; budget ≤ 180 s, the capstone ``lab6_mixed`` ≤ 360 s; no cell over 60 s);
  2. the same notebook with ``NBGRADER_EXECUTION=autograde`` (what plain ``nbgrader autograde`` executes,
     heavy experiments shrunk; budget ≤ 30 s);
  3. ``autograder grade`` of the solution as a one-student class (sandboxed, setup + answer cells only).
``--write`` replaces the "Labs" section of benchmarks/RESULTS.md with the figures.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from _results import RESULTS, write_section
from autograder.submissions import fill_answers, solution_answers

REPO = Path(__file__).resolve().parents[1]
BUDGET_RUN_ALL_S, BUDGET_CELL_S, BUDGET_GRADING_S = 180.0, 60.0, 30.0
#: Labs allowed a longer Restart & Run All (LAB_GUIDE "Budgets": the capstone may take up to 6 minutes).
RUN_ALL_BUDGETS_S = {"lab6_mixed": 360.0}


def run_all_budget(lab: str) -> float:
    """Seconds a Restart & Run All of ``lab`` may take."""
    return RUN_ALL_BUDGETS_S.get(lab, BUDGET_RUN_ALL_S)


def run_all(notebook: Path, grading: bool) -> tuple[float, float, str]:
    """Execute every cell in a fresh kernel; returns (total seconds, slowest cell seconds, its grade id)."""
    nb = nbformat.read(notebook, as_version=4)
    saved = os.environ.pop("NBGRADER_EXECUTION", None)
    if grading:
        os.environ["NBGRADER_EXECUTION"] = "autograde"
    cell_times: list[tuple[float, str]] = []
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(notebook.parent)}})

    async def timed_cell(cell, index, **kwargs):  # wraps nbclient's per-cell executor
        start = time.perf_counter()
        result = await original(cell, index, **kwargs)
        cell_times.append((time.perf_counter() - start, cell.metadata.get("nbgrader", {}).get("grade_id", str(index))))
        return result

    original = client.async_execute_cell
    client.async_execute_cell = timed_cell
    try:
        start = time.perf_counter()
        client.execute()
        total = time.perf_counter() - start
    finally:
        os.environ.pop("NBGRADER_EXECUTION", None)
        if saved is not None:
            os.environ["NBGRADER_EXECUTION"] = saved
    slowest, slowest_id = max(cell_times)
    return total, slowest, slowest_id


def grade_solution(lab: str, notebook: Path) -> float:
    """Seconds for ``autograder grade`` of the solution notebook as a one-student class."""
    with tempfile.TemporaryDirectory() as tmp:
        submissions = Path(tmp) / "submissions" / "reference"
        submissions.mkdir(parents=True)
        released = REPO / "labs" / lab / f"{lab}.ipynb"   # a student's copy with the solution's answers
        (submissions / f"{lab}.ipynb").write_bytes(fill_answers(released.read_bytes(),
                                                                solution_answers(notebook.read_bytes())))
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
        env.pop("AUTOGRADER_SECRET", None)
        out = Path(tmp) / "out"   # a fresh course secret there, as an instructor's first `autograder grade` needs
        subprocess.run([sys.executable, "-m", "autograder", "secret", "--out", str(out)], check=True, cwd=REPO, env=env,
                       stdout=subprocess.DEVNULL)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "autograder", "grade", lab, str(submissions.parent), "--out",
                        str(out), "--jobs", "1", "--quiet"], check=True, cwd=REPO, env=env)
        elapsed = time.perf_counter() - start
        grades = (Path(tmp) / "out" / "grades.csv").read_text().splitlines()
        print(f"  grades.csv: {grades[1] if len(grades) > 1 else '(empty)'}")
        return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("labs", nargs="*", help="lab names (default: every lab in solutions/)")
    parser.add_argument("--write", action="store_true", help="write the figures into benchmarks/RESULTS.md")
    args = parser.parse_args()
    labs = args.labs or sorted(p.name for p in (REPO / "solutions").iterdir() if (p / f"{p.name}.ipynb").exists())
    rows = []
    for lab in labs:
        notebook = REPO / "solutions" / lab / f"{lab}.ipynb"
        print(f"{lab}: Restart & Run All ...", flush=True)
        full, slowest, slowest_id = run_all(notebook, grading=False)
        print(f"  {full:.1f} s (budget {run_all_budget(lab):.0f} s); slowest cell {slowest_id} {slowest:.1f} s (budget {BUDGET_CELL_S:.0f} s)")
        print(f"{lab}: Run All with NBGRADER_EXECUTION=autograde ...", flush=True)
        shrunk, _, _ = run_all(notebook, grading=True)
        print(f"  {shrunk:.1f} s (budget {BUDGET_GRADING_S:.0f} s)")
        print(f"{lab}: autograder grade (one submission, sandboxed) ...", flush=True)
        graded = grade_solution(lab, notebook)
        print(f"  {graded:.1f} s (budget {BUDGET_GRADING_S:.0f} s)")
        rows.append((lab, full, slowest, slowest_id, shrunk, graded))
    if args.write:
        write_results(rows)


def write_results(rows: list[tuple]) -> None:
    lines = ["## Labs", "",
             f"Measured {dt.date.today().isoformat()} on {platform.machine()}, {os.cpu_count()} cores, "
             "`benchmarks/bench_labs.py --write`. Budgets: Restart & Run All ≤ 180 s (the capstone `lab6_mixed` "
             "≤ 360 s) with no cell over 60 s; a grading run ≤ 30 s.", "",
             "| lab | Restart & Run All | slowest cell | Run All, grading flag on | `autograder grade`, 1 submission |",
             "|---|---|---|---|---|"]
    table = earlier_rows({lab for lab, *_ in rows})
    for lab, full, slowest, slowest_id, shrunk, graded in rows:
        table[lab] = f"| `{lab}` | {full:.1f} s | {slowest:.1f} s (`{slowest_id}`) | {shrunk:.1f} s | {graded:.1f} s |"
    lines += [table[lab] for lab in sorted(table)]
    write_section("Labs", "\n".join(lines[2:]))


def earlier_rows(measured: set[str]) -> dict[str, str]:
    """Rows of the "Labs" table in RESULTS.md for labs not measured in this run (a run of one lab keeps the others)."""
    text = RESULTS.read_text() if RESULTS.exists() else ""
    section = re.search(r"^## Labs\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    rows = re.findall(r"^(\| `([\w-]+)` \|.*)$", section.group(1), flags=re.M) if section else []
    return {lab: line for line, lab in rows if lab not in measured}


if __name__ == "__main__":
    main()
