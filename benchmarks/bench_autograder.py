"""Autograder vs plain nbgrader: grade N submissions of a lab both ways, back to back, and compare.

    .venv/bin/python benchmarks/bench_autograder.py [--lab fixture_lab|lab1_linear] [--n 40] [--jobs 2]

Submissions mix correct answers and wrong ones from the lab's mutant catalogue (``tests/mutants/<lab>.py``).
Peer: sequential ``nbgrader autograde`` in a temporary course (generate_assignment, submitted/ tree), which
executes every cell of every notebook in a Jupyter kernel. Ours: ``autograder grade --jobs N`` (bwrap
sandbox; only setup + answer cells execute). Prints both wall times, the ratio and whether the per-cell
scores agree; ``--append`` adds the figures to benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from autograder.grade import grade_class  # noqa: E402
from autograder.mutants import load_catalogue, mutant_submission  # noqa: E402
from autograder.runner import Course, Lab  # noqa: E402
from autograder.sandbox import bwrap_problem  # noqa: E402
from autograder.submissions import fill_answers, solution_answers  # noqa: E402

FIXTURE_COURSE = REPO / "tests" / "fixtures" / "course"


def course_for(lab: str) -> Path:
    return FIXTURE_COURSE if (FIXTURE_COURSE / "solutions" / lab).is_dir() else REPO


def build_submissions(lab: Lab, n: int, catalogue: Path) -> dict[str, bytes]:
    """Every third submission is correct; the others cycle through the mutant catalogue."""
    mutants = load_catalogue(catalogue) if catalogue.is_file() else []
    correct = fill_answers(lab.released_bytes, solution_answers(lab.source_bytes))
    notebooks = {}
    for index in range(n):
        if index % 3 == 0 or not mutants:
            notebooks[f"student{index:03d}"] = correct
        else:
            mutant = mutants[(index * 7) % len(mutants)]
            notebooks[f"student{index:03d}"] = mutant_submission(lab.source_bytes, lab.released_bytes, mutant)
    return notebooks


def nbgrader_env(course: Course) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    extra = [str(p) for p in course.sandbox_paths]
    env["PYTHONPATH"] = os.pathsep.join(extra + [env.get("PYTHONPATH", "")]).strip(os.pathsep)
    env["AUTOGRADER_CHECKS_PATH"] = os.pathsep.join(str(p) for p in course.checks_paths)
    env["MPLBACKEND"] = "Agg"
    env.pop("NBGRADER_EXECUTION", None)  # nbgrader sets it itself while autograding
    return env


def run_nbgrader(course: Course, lab: str, notebooks: dict[str, bytes], work: Path) -> tuple[float, dict]:
    """Sequential ``nbgrader autograde`` of every submission; returns (seconds, student -> {grade_id: score})."""
    root = work / "nbgrader-course"
    shutil.copytree(course.root / "solutions" / lab, root / "source" / lab,
                    ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    (root / "nbgrader_config.py").write_text(
        "c = get_config()\n"
        f"c.CourseDirectory.root = {str(root)!r}\n"
        "c.ExecutePreprocessor.timeout = 600\n")
    env = nbgrader_env(course)
    subprocess.run([sys.executable, "-m", "nbgrader", "generate_assignment", lab, "--force", "--log-level=WARN"],
                   cwd=root, env=env, check=True, capture_output=True)
    for student, data in notebooks.items():
        target = root / "submitted" / student / lab / f"{lab}.ipynb"
        target.parent.mkdir(parents=True)
        target.write_bytes(data)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "nbgrader", "autograde", lab, "--force", "--log-level=WARN"],
                          cwd=root, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
    from nbgrader.api import Gradebook
    scores: dict[str, dict[str, float]] = {}
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gradebook:
        for student in notebooks:
            try:
                notebook = gradebook.find_submission_notebook(lab, lab, student)
            except Exception:  # noqa: BLE001 - a missing submission shows as a disagreement
                continue
            scores[student] = {g.name: float(g.auto_score or 0.0) for g in notebook.grades
                               if g.cell_type == "code"}
    return seconds, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lab", default="fixture_lab")
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--append", action="store_true", help="append the figures to benchmarks/RESULTS.md")
    args = parser.parse_args()
    course = Course.load(course_for(args.lab))
    lab = Lab.load(course, args.lab)
    os.environ["AUTOGRADER_CHECKS_PATH"] = os.pathsep.join(str(p) for p in course.checks_paths)
    notebooks = build_submissions(lab, args.n, REPO / "tests" / "mutants" / f"{args.lab}.py")
    mode = "bwrap" if bwrap_problem() is None else "unsafe"
    with tempfile.TemporaryDirectory(prefix="bench-autograder-") as tmp:
        work = Path(tmp)
        for student, data in notebooks.items():
            (work / "class" / student).mkdir(parents=True)
            (work / "class" / student / f"{args.lab}.ipynb").write_bytes(data)
        start = time.perf_counter()
        # --practice: the public inputs, the ones nbgrader's own run of the test cells uses, so scores compare.
        ours = grade_class(args.lab, work / "class", work / "out", course.root, jobs=args.jobs, force=True,
                           unsafe=mode == "unsafe", practice=True)
        ours_seconds = time.perf_counter() - start
        peer_seconds, peer = run_nbgrader(course, args.lab, notebooks, work)
    ours_cells = {s: {c["grade_id"]: c["score"] for c in r["cells"]} for s, r in ours.items()}
    disagree = sorted(s for s in notebooks if ours_cells.get(s) != peer.get(s))
    ratio = peer_seconds / ours_seconds
    lines = [
        f"lab {args.lab}, {args.n} submissions ({sum(1 for s in ours.values() if s['score'] == s['max_score'])} "
        f"full marks), {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, {platform.machine()}",
        f"autograder grade --jobs {args.jobs} ({mode}): {ours_seconds:.1f} s ({ours_seconds / args.n:.2f} s/notebook)",
        f"nbgrader autograde (sequential):  {peer_seconds:.1f} s ({peer_seconds / args.n:.2f} s/notebook)",
        f"speed-up: {ratio:.1f}x; per-cell scores agree for {args.n - len(disagree)} of {args.n} submissions"
        + (f" (differ: {', '.join(disagree[:5])})" if disagree else ""),
    ]
    print("\n".join(lines))
    if disagree:
        student = disagree[0]
        print(f"example {student}: ours {ours_cells.get(student)} / nbgrader {peer.get(student)}")
    if args.append:
        results = REPO / "benchmarks" / "RESULTS.md"
        text = results.read_text() if results.exists() else "# Benchmark results\n"
        if "## Autograder" not in text:
            text += "\n## Autograder\n\n`benchmarks/bench_autograder.py` — ours vs sequential `nbgrader autograde`.\n"
        text += "\n" + "\n".join(f"- {line}" for line in lines) + "\n"
        results.write_text(text)


if __name__ == "__main__":
    main()
