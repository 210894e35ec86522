"""``autograder grade``: grade a whole class, in parallel, resumable, with CSV, feedback and gradebook."""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, replace
from pathlib import Path
from typing import Iterator, Protocol

from tqdm import tqdm

from . import feedback
from .gradebook import write_gradebook
from .notebook import build_plan, parse_notebook
from .runner import Course, Lab, TimeBudget, budget, flag_slow, grade_submission, within_budget
from .sandbox import BREACHES, Limits, bwrap_problem, enforcement
from .secret import ENV_VAR, SecretProblem, find_secret
from .submissions import (Submission, UnreadableSubmission, discover, fill_answers, read_notebook_file,
                          solution_answers, student_id_for, unpack_zip)
from .text import csv_cell, printable

STATUSES = ("ok", "slow", "timeout", "memory", "crashed", "invalid-notebook", "tampered", "flagged")
# score / max_score count the autograded cells only; hand_graded_max is what the written answers add (nbgrader's
# export adds them too, so its max score is max_score + hand_graded_max).
FIXED_COLUMNS = ["student_id", "lab", "score", "max_score", "status", "reason", "sandbox", "hand_graded_max"]


class GradingRefused(RuntimeError):
    """The run cannot start (no sandbox and no --unsafe, missing lab files, ...)."""


class CourseMismatch(RuntimeError):
    """A Dask worker holds another version of the course than the client (or cannot sandbox); says what differs.
    (Here, not in :mod:`autograder.cluster`: a local run never imports dask.distributed.)"""


def prepare_grader_process() -> None:
    """Environment of a process that grades: nbgrader's autograde flag, a headless matplotlib, one torch thread."""
    os.environ["NBGRADER_EXECUTION"] = "autograde"
    os.environ.setdefault("MPLBACKEND", "Agg")
    import torch
    torch.set_num_threads(1)


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as sink:
        sink.write(data)
    os.replace(tmp, path)


def result_key(data: bytes, lab_fingerprint: str, mode: str, limits: Limits) -> str:
    digest = hashlib.sha256()
    for part in (data, lab_fingerprint.encode(), mode.encode(), json.dumps(asdict(limits), sort_keys=True).encode()):
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()


# -- pool side -----------------------------------------------------------------------------------------
_POOL_LAB: Lab | None = None
_POOL_COURSE: Course | None = None


def _pool_init(course_root: str, lab: str, secret: bytes | None = None, practice: bool = False) -> None:
    global _POOL_LAB, _POOL_COURSE
    prepare_grader_process()
    _POOL_COURSE = Course.load(course_root)
    _POOL_LAB = Lab.load(_POOL_COURSE, lab, secret, practice)


def grade_one(lab: Lab, course: Course, student_id: str, data: bytes, mode: str, limits: Limits) -> dict:
    """One submission's result; a grader bug becomes that student's ``crashed`` row, never a lost class."""
    try:
        return grade_submission(lab, data, mode, limits, course.sandbox_paths)
    except Exception as exc:  # noqa: BLE001 - a grader bug must not lose the whole class
        return {"lab": lab.name, "sandbox": mode, "status": "crashed", "score": 0.0, "max_score": 0.0,
                "reasons": [f"grader error {type(exc).__name__}: {exc}"], "cells": [], "answers": [], "manual": []}


def _pool_grade(student_id: str, data: bytes, mode: str, limits: Limits) -> tuple[str, dict]:
    return student_id, grade_one(_POOL_LAB, _POOL_COURSE, student_id, data, mode, limits)


class Grader(Protocol):
    """Where gradings run: the local pool (:class:`_LocalGrader`) or a Dask cluster (``cluster.DaskGrader``)."""
    slots: int     # gradings that can run at once
    load: float    # concurrent gradings per core on the busiest host

    def submit(self, student_id: str, data: bytes, mode: str, limits: Limits) -> Future: ...


class _LocalGrader:
    """The local process pool, behind the :class:`Grader` interface."""

    def __init__(self, pool: ProcessPoolExecutor, jobs: int) -> None:
        self.pool, self.slots, self.load = pool, jobs, jobs / (os.cpu_count() or 1)

    def submit(self, student_id: str, data: bytes, mode: str, limits: Limits) -> Future:
        return self.pool.submit(_pool_grade, student_id, data, mode, limits)


@contextlib.contextmanager
def _grader(lab: Lab, course: Course, mode: str, jobs: int, scheduler: str | None,
            worker_course: Path | None) -> Iterator[Grader]:
    """The local pool of ``jobs`` processes, or (``scheduler``) the Dask cluster after its course check."""
    if scheduler is None:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_pool_init,
                                 initargs=(str(course.root), lab.name, lab.secret, lab.practice)) as pool:
            yield _LocalGrader(pool, jobs)
        return
    try:
        from .cluster import dask_grader   # dask.distributed: only for --scheduler
        with dask_grader(scheduler, Path(worker_course or course.root), lab, course, mode) as grader:
            yield grader
    except CourseMismatch as exc:
        raise GradingRefused(str(exc)) from None


# -- main side -----------------------------------------------------------------------------------------
def _missing_result(lab: Lab, mode: str, problem: str) -> dict:
    released = parse_notebook(lab.released_bytes)
    plan = build_plan(released, released, {"cells": []})
    cells = [{"grade_id": t.grade_id, "score": 0.0, "max_score": t.points, "passed": False,
              "message": "not graded: " + problem, "checks": [], "visible_source": t.visible} for t in plan.tests]
    return {"lab": lab.name, "sandbox": mode, "status": "invalid-notebook", "reasons": [problem], "cells": cells,
            "answers": [], "manual": [{"grade_id": g, "max_score": p} for g, p in plan.manual],
            "score": 0.0, "max_score": sum(t.points for t in plan.tests)}


def choose_mode(unsafe: bool) -> str:
    problem = bwrap_problem()
    if problem is None:
        return "bwrap"
    if unsafe:
        print(f"WARNING: grading WITHOUT a sandbox (--unsafe): {problem}", file=sys.stderr)
        return "unsafe"
    raise GradingRefused(f"cannot sandbox student code: {problem}. Install bubblewrap, or pass --unsafe to run "
                         "student code unconfined (grades are then marked sandbox=unsafe).")


def course_secret_for(out: Path, secret: bytes | None, secret_file: Path | None) -> bytes:
    """The secret to grade with, or GradingRefused saying how to provide one (or to pass --practice)."""
    try:
        found = secret if secret is not None else find_secret(Path(out), secret_file)
    except SecretProblem as exc:
        raise GradingRefused(str(exc)) from None
    if found is None:
        raise GradingRefused(f"no course secret: the hidden checks would use the public inputs, which anyone can "
                             f"look up. Create one with `autograder secret --out {out}` (or set ${ENV_VAR}, or pass "
                             "--secret-file), or pass --practice to grade with the public inputs, not for credit.")
    return found


def grade_class(lab_name: str, submissions: Path, out: Path, course_root: Path, jobs: int | None = None,
                force: bool = False, unsafe: bool = False, limits: Limits = Limits(),
                progress: bool = True, secret: bytes | None = None, practice: bool = False,
                secret_file: Path | None = None, time_budget: TimeBudget = TimeBudget(),
                scheduler: str | None = None, worker_course: Path | None = None,
                class_files: bool = True) -> dict[str, dict]:
    """Grade every submission of ``lab_name`` under ``submissions`` into ``out``; returns student -> result.

    The hidden checks' inputs come from the course secret (``secret``, else :func:`autograder.secret.find_secret`);
    without one, grading is refused unless ``practice`` (public inputs, said in every result).
    ``limits`` are ceilings; the time limits actually applied follow from the reference solution's measured
    grading time (``time_budget``, measured once per lab and grader version, kept in ``out/reference.json``).
    ``scheduler``: grade on the Dask cluster at that address (one task per submission, see
    :mod:`autograder.cluster`; ``worker_course``: the course on the workers, default ``course_root``) instead of
    a local pool of ``jobs`` processes; results, CSV, feedback and gradebook are the same either way.
    ``class_files=False``: only ``results/`` (no CSV, feedback or gradebook: Gradescope's one-student runs).
    """
    secret = None if practice else course_secret_for(out, secret, secret_file)
    mode = choose_mode(unsafe)
    bin_dir = str(Path(sys.executable).parent)  # nbgrader's Gradebook runs `alembic` from PATH
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    course = Course.load(course_root)
    lab = Lab.load(course, lab_name, secret, practice)
    fingerprint = lab.fingerprint()
    out = Path(out)
    (out / "results").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lowbit-zip-") as unzip_dir:
        root, skipped = Path(submissions), []
        if root.is_file() and root.suffix == ".zip":
            root, skipped = unpack_zip(root, Path(unzip_dir))
        elif not root.is_dir():
            raise GradingRefused(f"{root} is neither a folder of submissions nor a .zip")
        found = _with_zip_problems(discover(root, lab_name), skipped, root, Path(unzip_dir))
        results, todo = _reuse_cached(found, lab, fingerprint, mode, limits, out, force)
        start = time.perf_counter()
        _grade_pending(todo, lab, course, fingerprint, mode, limits, out, jobs, progress, results, force,
                       time_budget, scheduler, worker_course)
        graded_seconds = time.perf_counter() - start
    start = time.perf_counter()
    if class_files:
        write_outputs(lab, course, out, results)
    enforced = enforcement(mode)
    print(f"{summary(results)}\nsandbox: {mode}; memory: {enforced['memory']}; seccomp: {enforced['seccomp']}"
          f"\n{len(todo)} graded now ({len(results) - len(todo)} reused) in {graded_seconds:.1f} s"
          + (f"; CSV, feedback and gradebook written in {time.perf_counter() - start:.1f} s" if class_files else ""),
          file=sys.stderr)
    return results


def _result_path(out: Path, student_id: str) -> Path:
    return out / "results" / f"{student_id}.json"


def _with_zip_problems(found: list[Submission], skipped: list[tuple[str, str]], root: Path,
                       unzip_dir: Path) -> list[Submission]:
    """Attach the zip entries that could not be extracted to the rows of the students they belong to."""
    if not skipped:
        return found
    inner = root.relative_to(unzip_dir).parts if root.is_relative_to(unzip_dir) else ()
    by_student: dict[str, list[str]] = {}
    for name, reason in skipped:
        parts = Path(name).parts[len(inner):]
        problem = f"zip entry {printable(name)!r} not extracted: {reason}"
        if len(parts) > 1:
            by_student.setdefault(student_id_for(parts[0]), []).append(problem)
        else:
            print(f"WARNING: {problem}", file=sys.stderr)
    found = [Submission(s.student_id, s.path, "; ".join(filter(None, [s.problem, *by_student.pop(s.student_id, [])])),
                        s.refused) for s in found]
    for student, problems in sorted(by_student.items()):
        print(f"WARNING: {'; '.join(problems)}", file=sys.stderr)
        found.append(Submission(student, None, "; ".join(problems)))
    return found


def _reuse_cached(found: list[Submission], lab: Lab, fingerprint: str, mode: str, limits: Limits, out: Path,
                  force: bool) -> tuple[dict[str, dict], list[tuple[Submission, str, bytes]]]:
    results: dict[str, dict] = {}
    todo = []
    duplicated = [s for s, n in Counter(sub.student_id for sub in found).items() if n > 1]
    if duplicated:  # discover() gives every folder its own id; anything else is a grader bug
        raise GradingRefused(f"two submissions share the student id(s) {', '.join(duplicated)}")
    for sub in found:
        data, problem = None, sub.problem
        if sub.path is not None and not sub.refused:
            try:
                data = read_notebook_file(sub.path)
            except UnreadableSubmission as exc:
                problem = "; ".join(filter(None, [problem, str(exc)]))
        key = result_key(data if data is not None else problem.encode("utf-8", "replace"), fingerprint, mode,
                         limits)
        if not force:
            cached = _load_cached(out, sub.student_id, key)
            if cached is not None:
                results[sub.student_id] = cached
                continue
        if data is None:
            result = _missing_result(lab, mode, problem)
            _save(out, sub.student_id, key, result)
            results[sub.student_id] = result
            continue
        todo.append((sub, key, data))
    return results, todo


_RESULT_FIELDS = {"lab": str, "sandbox": str, "status": str, "reasons": list, "cells": list, "score": float,
                  "max_score": float}


def _load_cached(out: Path, student_id: str, key: str) -> dict | None:
    """The cached result for this key, or None when there is none or it is unreadable or malformed."""
    try:
        record = json.loads(_result_path(out, student_id).read_bytes())
        result = record["result"]
        if record["key"] != key or not all(isinstance(result.get(k), (int, float) if t is float else t)
                                           for k, t in _RESULT_FIELDS.items()):
            return None
        return result
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _save(out: Path, student_id: str, key: str, result: dict) -> None:
    atomic_write(_result_path(out, student_id), json.dumps({"key": key, "result": result}, sort_keys=True,
                                                           indent=1).encode())


def _grade_pending(todo: list, lab: Lab, course: Course, fingerprint: str, mode: str, limits: Limits, out: Path,
                   jobs: int | None, progress: bool, results: dict[str, dict], force: bool = False,
                   time_budget: TimeBudget = TimeBudget(), scheduler: str | None = None,
                   worker_course: Path | None = None) -> None:
    """Grade ``todo`` in a pool (or on the Dask cluster at ``scheduler``) under the lab's time budget. While the
    reference solution is being timed (once per lab and grader version), the other workers already grade the
    first students under the budget's floors (no budget is lower); such a result is kept only if it stayed
    within the budget found, else it is graded again under that budget."""
    if not todo:
        return
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(todo)))
    with _grader(lab, course, mode, jobs, scheduler, worker_course) as grader:
        reference = _Reference(lab, fingerprint, mode, limits, out)
        timing = reference.cached(force)
        early = [] if timing is not None else todo[:max(0, min(grader.slots, len(todo)) - 1)]
        provisional = replace(limits, wall_seconds=min(limits.wall_seconds, time_budget.total_floor_seconds),
                              call_seconds=min(limits.call_seconds, time_budget.floor_seconds),
                              cell_seconds=min(limits.cell_seconds, time_budget.floor_seconds))  # <= any budget
        pending = {grader.submit(sub.student_id, data, mode, provisional): (sub, key, data, True)
                   for sub, key, data in early}
        if timing is None:
            timing = reference.measure(grader)
        applied = budget(limits, timing, time_budget, load=grader.load)
        pending.update({grader.submit(sub.student_id, data, mode, applied): (sub, key, data, False)
                        for sub, key, data in todo[len(early):]})
        bar = tqdm(total=len(todo), desc=f"grading {lab.name}", unit="nb", disable=not progress, file=sys.stderr)
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                sub, key, data, speculative = pending.pop(future)
                result = _task_result(future, sub.student_id)
                if speculative and not within_budget(result, applied):
                    pending[grader.submit(sub.student_id, data, mode, applied)] = (sub, key, data, False)
                    continue
                flag_slow(result, applied)
                if sub.problem:
                    result["reasons"] = [sub.problem, *result["reasons"]]
                _save(out, sub.student_id, key, result)
                results[sub.student_id] = result
                bar.update(1)
        bar.close()


def _task_result(future: Future, student_id: str) -> dict:
    """A finished grading's result. A worker refusing the course, or a task that killed a Dask worker at
    every try, stops the run (the results saved so far stay: the same command resumes)."""
    try:
        return future.result()[1]
    except CourseMismatch as exc:
        raise GradingRefused(str(exc)) from None
    except Exception as exc:
        if type(exc).__name__ != "KilledWorker":
            raise
        raise GradingRefused(f"grading {student_id} killed a Dask worker at every try ({exc}); the results "
                             "already saved are kept: run the same command again, or grade that student "
                             "locally") from None


class _Reference:
    """The reference solution's grading time per sandbox cell, per test cell and in total, measured in the
    pool like any submission and kept in ``out/reference.json``. A reference that breaches stops the run."""

    def __init__(self, lab: Lab, fingerprint: str, mode: str, limits: Limits, out: Path) -> None:
        self.lab, self.mode, self.limits, self.path = lab, mode, limits, out / "reference.json"
        self.data = fill_answers(lab.released_bytes, solution_answers(lab.source_bytes))
        self.key = result_key(self.data, fingerprint, mode, limits)

    def cached(self, force: bool) -> dict | None:
        try:
            record = json.loads(self.path.read_bytes())
            return record["timing"] if not force and record["key"] == self.key else None
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def measure(self, grader: Grader) -> dict:
        result = _task_result(grader.submit("reference", self.data, self.mode, self.limits), "the reference")
        if result["status"] in BREACHES or "timing" not in result:
            raise GradingRefused(f"the reference solution of {self.lab.name} does not grade cleanly "
                                 f"({result['status']}: {'; '.join(result['reasons'])}); fix the lab or raise "
                                 "the limits before grading")
        atomic_write(self.path, json.dumps({"key": self.key, "timing": result["timing"], "score": result["score"],
                                            "max_score": result["max_score"]}, indent=1, sort_keys=True).encode())
        return result["timing"]


def test_columns(lab: Lab) -> tuple[list[tuple[str, float]], list[tuple[str, float]], list[str]]:
    source = parse_notebook(lab.source_bytes)
    plan = build_plan(source, parse_notebook(lab.released_bytes), source)
    return [(t.grade_id, t.points) for t in plan.tests], plan.manual, [g for g, k, _ in plan.answers if k == "code"]


def _number(value: float) -> str:
    return f"{value:.2f}"


def grades_csv(lab: Lab, results: dict[str, dict]) -> bytes:
    """The class CSV: sorted rows, fixed float format, no timestamps — same inputs, same bytes. Text cells are
    valid UTF-8 and never start like a spreadsheet formula (see :func:`autograder.text.csv_cell`)."""
    tests, _, _ = test_columns(lab)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(FIXED_COLUMNS + [gid for gid, _ in tests])
    for student_id in sorted(results):
        result = results[student_id]
        scores = {c["grade_id"]: c["score"] for c in result["cells"]}
        writer.writerow([csv_cell(student_id), lab.name, _number(result["score"]), _number(result["max_score"]),
                         result["status"], csv_cell("; ".join(map(str, result["reasons"]))), result["sandbox"],
                         _number(sum(m["max_score"] for m in result.get("manual", [])))]
                        + [_number(scores.get(gid, 0.0)) for gid, _ in tests])
    return buffer.getvalue().encode()


def write_outputs(lab: Lab, course: Course, out: Path, results: dict[str, dict]) -> list[str]:
    """grades.csv, then each student's feedback and gradebook rows — each student on their own, so one
    student's result can only fail that student's files. Returns the failures (also printed)."""
    atomic_write(out / "grades.csv", grades_csv(lab, results))
    failures = []
    for student_id, result in results.items():
        try:
            html = printable(feedback.render(student_id, result))
            atomic_write(out / "feedback" / student_id / f"{lab.name}.html", html.encode())
        except Exception as exc:  # noqa: BLE001 - one student's bad result must not cost the others theirs
            failures.append(f"feedback for {student_id}: {type(exc).__name__}: {exc}")
    tests, manual, answers = test_columns(lab)
    failures += write_gradebook(out / "gradebook.db", lab.name, tests, manual, answers, results)
    for failure in failures:
        print(f"WARNING: could not write {printable(failure)}", file=sys.stderr)
    return failures


def summary(results: dict[str, dict]) -> str:
    counts = Counter(r["status"] for r in results.values())
    scores = [r["score"] for r in results.values()]
    mean = sum(scores) / len(scores) if scores else 0.0
    maximum = max((r["max_score"] for r in results.values()), default=0.0)
    parts = ", ".join(f"{status}: {counts[status]}" for status in STATUSES if counts[status])
    return f"{len(results)} submissions graded — {parts or 'none'}; mean score {mean:.2f} / {maximum:.2f}"
