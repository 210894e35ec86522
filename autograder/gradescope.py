"""Gradescope: ``autograder gradescope LAB --out lab1_gradescope.zip`` builds an autograder bundle; inside
Gradescope's image its ``run_autograder`` calls ``autograder gradescope-run``, which grades the submission with
the same pipeline as ``autograder grade`` and writes ``results/results.json`` in Gradescope's format.

Bundle layout (the zip's root, extracted by Gradescope into ``/autograder/source``):

    setup.sh          run once, as root, when Gradescope builds the image: bubblewrap, a venv, the course, a self-test
    run_autograder    run for every submission: ``python -m autograder gradescope-run --root /autograder``
    lab.json          {"lab": ..., "practice": ..., "unsafe": ...}
    grading-secret    the course secret (absent with --practice); only the instructor can read a bundle
    course/           pyproject.toml, README.md, lowbit/, autograder/ (this lab's checks only),
                      solutions/<lab>/<lab>.ipynb, labs/<lab>/<lab>.ipynb

results.json: ``score`` (the autograded points), one test per graded cell with its points and the visible
test's message (visible), and per graded cell with hidden checks one more test without points listing each
check's name, outcome, message and hint, visible ``after_published``. Hidden check code never enters a result
(see :mod:`autograder.feedback`), so it cannot reach results.json either.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from .feedback import not_attempted
from .grade import GradingRefused, atomic_write, course_secret_for, grade_class
from .runner import Course, Lab
from .secret import FILE_NAME as SECRET_FILE
from .submissions import fill_answers, solution_answers

STUDENT = "submission"
#: PyTorch's CPU-only wheels (the Makefile's TORCH=cpu route): Gradescope's machines have no GPU.
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"

SETUP_SH = """#!/usr/bin/env bash
# Gradescope runs this once, as root, while it builds the autograder image (Ubuntu; /autograder/source holds
# the bundle). It installs bubblewrap (the sandbox) and the course, then grades the lab's own solution as a
# self-test: the build fails here, with the reason, rather than on the first student's submission.
set -euo pipefail
SOURCE=/autograder/source
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends bubblewrap python3 python3-venv python3-pip
python3 -m venv /autograder/venv
/autograder/venv/bin/pip install --upgrade pip
/autograder/venv/bin/pip install --index-url {torch_index} torch torchvision
/autograder/venv/bin/pip install "$SOURCE/course[course]"
/autograder/venv/bin/python -m autograder gradescope-run --root /autograder --self-test
"""

RUN_AUTOGRADER = """#!/usr/bin/env bash
# Gradescope runs this for every submission (/autograder/submission) and reads /autograder/results/results.json.
# AUTOGRADER_ROOT and AUTOGRADER_PYTHON point it elsewhere (the course's tests run it on a temporary folder).
set -euo pipefail
ROOT="${{AUTOGRADER_ROOT:-/autograder}}"
PYTHON="${{AUTOGRADER_PYTHON:-$ROOT/venv/bin/python}}"
exec "$PYTHON" -m autograder gradescope-run --root "$ROOT"
"""


class BundleProblem(ValueError):
    """The bundle cannot be built or run as asked; the message says why and what to do."""


# -- building the bundle ---------------------------------------------------------------------------------
def _course_files(course_root: Path, lab: str) -> list[tuple[Path, str]]:
    """(file on disk, path in the bundle's course/) of everything grading ``lab`` needs."""
    files = [(course_root / name, name) for name in ("pyproject.toml", "README.md")]
    for package in ("lowbit", "autograder"):
        for path in sorted((course_root / package).rglob("*")):
            rel = path.relative_to(course_root)
            if not path.is_file() or "__pycache__" in rel.parts:
                continue
            if rel.parts[:2] == ("autograder", "checks") and not path.name.startswith(("_", f"{lab}.")):
                continue  # other labs' hidden checks stay out
            files.append((path, str(rel)))
    for folder in ("solutions", "labs"):
        files.append((course_root / folder / lab / f"{lab}.ipynb", f"{folder}/{lab}/{lab}.ipynb"))
    missing = [str(p) for p, _ in files if not p.is_file()]
    if missing:
        raise BundleProblem(f"cannot build the bundle: missing {', '.join(missing)} "
                            f"(run `python -m autograder release {lab}` first)")
    return files


def _add(bundle: zipfile.ZipFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = zipfile.ZipInfo(name, date_time=(2000, 1, 1, 0, 0, 0))  # fixed date: same course, same bytes
    info.external_attr = (0o100000 | mode) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    bundle.writestr(info, data)


def build_bundle(lab: str, out: Path, course_root: Path, practice: bool = False, secret_file: Path | None = None,
                 unsafe: bool = False) -> Path:
    """Write the Gradescope autograder zip for ``lab`` of the course at ``course_root`` to ``out``.

    The secret comes from ``secret_file``, ``$AUTOGRADER_SECRET`` or ``<out's folder>/grading-secret`` (as for
    ``autograder grade``); ``practice``: none, public inputs. ``unsafe``: grade even where bubblewrap cannot run
    (student code then runs unconfined and could read the secret: only for practice runs)."""
    course_root = Path(course_root).resolve()
    if not (course_root / "autograder" / "checks" / f"{lab}.py").is_file():
        raise BundleProblem(f"{course_root} has no autograder/checks/{lab}.py: a bundle carries a lab of a course "
                            "whose checks live in its autograder package (like this repository's labs)")
    if unsafe and not practice:
        raise BundleProblem("--unsafe would let student code read the course secret in the bundle; "
                            "use it only with --practice")
    try:
        secret = None if practice else course_secret_for(Path(out).parent, None, secret_file)
    except GradingRefused as exc:
        raise BundleProblem(str(exc)) from None
    files = _course_files(course_root, lab)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with zipfile.ZipFile(tmp, "w") as bundle:
        _add(bundle, "setup.sh", SETUP_SH.format(torch_index=TORCH_CPU_INDEX).encode(), 0o755)
        _add(bundle, "run_autograder", RUN_AUTOGRADER.format().encode(), 0o755)
        _add(bundle, "lab.json", json.dumps({"lab": lab, "practice": practice, "unsafe": unsafe},
                                            indent=1, sort_keys=True).encode())
        if secret is not None:
            _add(bundle, SECRET_FILE, secret + b"\n", 0o600)
        for path, rel in files:
            _add(bundle, f"course/{rel}", path.read_bytes())
    os.replace(tmp, out)
    return out


# -- inside Gradescope -----------------------------------------------------------------------------------
def _config(root: Path) -> tuple[dict, Path, bytes | None]:
    source = root / "source"
    try:
        config = json.loads((source / "lab.json").read_text())
    except (OSError, ValueError) as exc:
        raise BundleProblem(f"{source / 'lab.json'} unreadable ({exc}); is {root} an autograder root "
                            "(source/ = the extracted bundle)?") from None
    secret_path = source / SECRET_FILE
    secret = secret_path.read_bytes().strip() if secret_path.is_file() else None
    if secret is None and not config.get("practice"):
        raise BundleProblem(f"{secret_path} is missing and the bundle is not a practice bundle")
    return config, source / "course", secret


def _stage_submission(submission_dir: Path, class_dir: Path) -> Path:
    """Copy the submitted notebooks (top level, links kept as links so grading refuses them) into the
    one-student class folder ``autograder grade`` reads."""
    student = class_dir / STUDENT
    student.mkdir(parents=True)
    if submission_dir.is_dir():
        for path in sorted(submission_dir.glob("*.ipynb")):
            shutil.copy2(path, student / path.name, follow_symlinks=False)
    return class_dir


def run(root: Path, self_test: bool = False) -> dict:
    """Grade ``root/submission/*.ipynb`` (or, ``self_test``, the lab's own solution) and write
    ``root/results/results.json``; returns what it wrote. The reference timing is kept in
    ``root/source/grading/`` (measured by the self-test at image build time, reused by every run)."""
    start = time.perf_counter()
    root = Path(root)
    config, course_root, secret = _config(root)
    lab_name = config["lab"]
    cache = root / "source" / "grading"
    with tempfile.TemporaryDirectory(prefix="lowbit-gradescope-") as work:
        work = Path(work)
        if self_test:
            lab = Lab.load(Course.load(course_root), lab_name, secret, bool(config.get("practice")))
            (work / "class" / STUDENT).mkdir(parents=True)
            (work / "class" / STUDENT / f"{lab_name}.ipynb").write_bytes(
                fill_answers(lab.released_bytes, solution_answers(lab.source_bytes)))
        else:
            _stage_submission(root / "submission", work / "class")
        out = work / "out"
        out.mkdir()
        if (cache / "reference.json").is_file():
            shutil.copy(cache / "reference.json", out / "reference.json")
        try:
            results = grade_class(lab_name, work / "class", out, course_root, jobs=1, progress=False,
                                  unsafe=bool(config.get("unsafe")), secret=secret,
                                  practice=bool(config.get("practice")), class_files=False)
        except (GradingRefused, FileNotFoundError) as exc:
            report = refusal(str(exc))
        else:
            report = results_json(results[STUDENT], time.perf_counter() - start)
            if (out / "reference.json").is_file():
                atomic_write(cache / "reference.json", (out / "reference.json").read_bytes())
    atomic_write(root / "results" / "results.json", json.dumps(report, indent=1, sort_keys=True).encode())
    if self_test:
        _check_self_test(report)
    return report


def _check_self_test(report: dict) -> None:
    total = sum(t.get("max_score", 0) for t in report["tests"])
    if not report["tests"] or report["score"] != total:
        raise BundleProblem(f"self-test failed: the lab's solution scored {report['score']} / {total} in this "
                            f"image:\n{report['output']}")
    print(f"self-test passed: the solution scored {report['score']:g} / {total:g}")


def refusal(problem: str) -> dict:
    """results.json when grading could not run at all (the student is told to contact the instructor)."""
    return {"score": 0.0, "output": f"Your notebook was not graded: {problem}\nThis is a problem of the "
            "autograder, not of your submission: tell your instructor.", "output_format": "text",
            "visibility": "visible", "stdout_visibility": "hidden", "tests": []}


def _hidden_report(cell: dict) -> str:
    lines = []
    for check in cell["checks"]:
        lines.append(f"{'passed' if check['passed'] else 'FAILED'}: {check['name']}")
        if not check["passed"]:
            lines += [f"    {line}" for line in str(check.get("message", "")).strip().splitlines()]
            if check.get("hint"):
                lines.append(f"    hint: {check['hint']}")
    return "\n".join(lines)


def results_json(result: dict, seconds: float) -> dict:
    """Gradescope's results.json for one graded submission (a result record of :mod:`autograder.runner`)."""
    tests = []
    for number, cell in enumerate(result["cells"], start=1):
        function = cell["grade_id"].removeprefix("test_")
        visible = cell["message"] if not cell["message"].startswith("in the hidden checks") else ""
        if not cell["passed"] and not visible:
            visible = "the visible test passed; hidden checks failed (named once grades are published)"
        tests.append({"name": function, "number": str(number), "score": float(cell["score"]),
                      "max_score": float(cell["max_score"]), "status": "passed" if cell["passed"] else "failed",
                      "output": ("not attempted: the function still raises NotImplementedError"
                                 if not_attempted(cell) else visible or "passed"),
                      "output_format": "text", "visibility": "visible"})
        if cell["checks"]:
            failed = any(not c["passed"] for c in cell["checks"])
            tests.append({"name": f"{function}: hidden checks", "number": f"{number}.1",
                          "status": "failed" if failed else "passed", "output": _hidden_report(cell),
                          "output_format": "text", "visibility": "after_published"})
    hand = sum(float(m.get("max_score", 0)) for m in result.get("manual", []))
    notes = [f"status: {result['status']}", *map(str, result.get("reasons", []))]
    if hand:
        notes.append(f"written answers: up to {hand:g} more points, graded by hand")
    return {"score": float(result["score"]), "execution_time": int(round(seconds)), "output": "\n".join(notes),
            "output_format": "text", "visibility": "visible", "stdout_visibility": "hidden", "tests": tests,
            "extra_data": {"lab": result["lab"], "status": result["status"], "sandbox": result["sandbox"],
                           "max_score": float(result["max_score"]), "hand_graded_max": hand}}


def main_run(root: Path, self_test: bool) -> int:
    """``autograder gradescope-run``: 0 when results.json was written (1 when the self-test fails)."""
    try:
        report = run(root, self_test)
    except BundleProblem as exc:
        print(f"autograder: {exc}", file=sys.stderr)
        return 1
    print(f"score {report['score']:g}; wrote {Path(root) / 'results' / 'results.json'}")
    return 0
