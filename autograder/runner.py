"""Grade one submission: sandboxed student code, trusted test cells talking to it through proxies.

The trusted side never executes student code and never reads a test cell from the submission: test and
setup cells come from the source notebook; the student's functions are :class:`Proxy` objects whose calls
cross the wire as plain data (see :mod:`autograder.wire`).
"""
from __future__ import annotations

import ast
import builtins
import contextlib
import io
import hashlib
import inspect
import json
import random
import re
import sys
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from lowbit import _vjp

from . import secret as course_secret
from . import student_build
from . import wire
from .checks import _api, add_checks_path, load_check_module
from .contract import Contract, load_contract
from .feedback import not_attempted
from .notebook import InvalidNotebook, Plan, TestCell, build_plan, parse_notebook, scan_answers
from .sandbox import BREACHES, WORKER_FILES, Breach, Limits, Sandbox, TimeBudget, course_package_dirs

GRADER_VERSION = "2"
STATUS_ORDER = ("invalid-notebook", "timeout", "memory", "crashed", "flagged", "tampered", "slow", "ok")
_MAGIC_LINE = re.compile(r"^(\s*)[%!]")
STARTUP = "<start-up>"  # timing key of the sandbox's start-up (interpreter, imports) before the first cell


def budget(limits: Limits, timing: dict, plan: TimeBudget = TimeBudget(), load: float = 1.0) -> Limits:
    """``limits`` with the time limits derived from the reference's ``timing`` (the "timing" of its graded
    result: seconds per sandbox cell, per test cell and in total), never above the ceilings in ``limits``.
    ``load``: concurrent sandboxes per core (> 1 scales every budget up)."""
    scale = max(1.0, load)

    def scaled(seconds: float, factor: float, floor: float, ceiling: float) -> float:
        return round(min(ceiling, max(floor, factor * seconds * scale)), 1)

    cells = tuple(sorted((str(key), scaled(seconds, plan.factor, plan.floor_seconds, limits.cell_seconds))
                         for key, seconds in timing["cells"].items()))
    slowest_test = max(timing["tests"].values(), default=0.0)
    total = float(timing["total"])
    return replace(limits, cell_budgets=cells,
                   call_seconds=scaled(slowest_test, plan.factor, plan.floor_seconds, limits.call_seconds),
                   wall_seconds=scaled(total, plan.total_factor, plan.total_floor_seconds, limits.wall_seconds),
                   slow_seconds=round(max(plan.slow_factor * total * scale, total + plan.floor_seconds), 1))


@dataclass(frozen=True)
class Course:
    """Where a course's notebooks, checks and sandbox-visible packages live."""

    root: Path
    checks_paths: tuple[Path, ...] = ()
    sandbox_paths: tuple[Path, ...] = ()

    @classmethod
    def load(cls, root: str | Path) -> "Course":
        """Read optional ``<root>/autograder.json`` {"checks_path": str, "sandbox_paths": [str]}."""
        root = Path(root).resolve()
        config_file = root / "autograder.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        checks = (root / config["checks_path"],) if config.get("checks_path") else ()
        return cls(root, checks, tuple(root / p for p in config.get("sandbox_paths", [])))

    def source_notebook(self, lab: str) -> Path:
        return self.root / "solutions" / lab / f"{lab}.ipynb"

    def released_notebook(self, lab: str) -> Path:
        return self.root / "labs" / lab / f"{lab}.ipynb"

    def activate(self) -> None:
        """Make checks and course packages importable in this (trusted) process."""
        for path in self.checks_paths:
            add_checks_path(path)
        for path in self.sandbox_paths:
            if str(path) not in sys.path:
                sys.path.insert(0, str(path))


@dataclass
class Lab:
    """A lab ready to grade: its notebooks (bytes and parsed) and its check module."""

    name: str
    source_bytes: bytes
    released_bytes: bytes
    checks_bytes: bytes
    protected: list[str] = field(default_factory=list)
    contract: Contract | None = None
    #: The course secret keying the hidden checks' inputs (None: the public practice inputs).
    secret: bytes | None = field(default=None, repr=False)
    #: Say in every result that the public inputs were used (``autograder grade --practice``).
    practice: bool = False

    @classmethod
    def load(cls, course: Course, name: str, secret: bytes | None = None, practice: bool = False) -> "Lab":
        course.activate()
        source, released = course.source_notebook(name), course.released_notebook(name)
        for path in (source, released):
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing; run `python -m autograder release {name}` first")
        checks_bytes = load_check_module(name)   # the check module's bytes and its contract's
        contract = load_contract(name) if checks_bytes is not None else None
        return cls(name, source.read_bytes(), released.read_bytes(), checks_bytes or b"",
                   contract.protected if contract else [], contract, secret, practice)

    def fingerprint(self) -> str:
        """Hash of everything besides the submission that decides a grade."""
        digest = hashlib.sha256()
        for part in (self.source_bytes, self.released_bytes, self.checks_bytes, _grader_source_bytes(),
                     course_secret.fingerprint(self.secret), b"practice" if self.practice else b""):
            digest.update(hashlib.sha256(part).digest())
        return digest.hexdigest()


def _grader_source_bytes() -> bytes:
    here = Path(__file__).resolve().parent
    files = sorted({*here.glob("*.py"), *WORKER_FILES}) + sorted((here / "checks").glob("_*.py"))
    return GRADER_VERSION.encode() + b"".join(p.read_bytes() for p in files)


def strip_magics(source: str) -> str:
    if source.lstrip().startswith("%%"):
        return ""
    return "\n".join(_MAGIC_LINE.sub(r"\1pass  # ", line) if _MAGIC_LINE.match(line) else line
                     for line in source.splitlines())


# -- proxies ------------------------------------------------------------------------------------------
class StudentError(Exception):
    """Base of exceptions re-raised on the trusted side for errors inside the student's code."""

    student_traceback = ""


_ERROR_CLASSES: dict[str, type] = {}


def student_exception(error: dict) -> BaseException:
    """An exception mirroring the student's: a subclass of the same builtin type when there is one."""
    name = str(error.get("type", "Exception"))[:100]
    base = getattr(builtins, name, None)
    if not (error.get("builtin") and isinstance(base, type) and issubclass(base, Exception)):
        base = RuntimeError
    if name not in _ERROR_CLASSES or _ERROR_CLASSES[name].__bases__[0] is not base:
        _ERROR_CLASSES[name] = type(name, (base, StudentError), {"__module__": "student"})
    exc = _ERROR_CLASSES[name](str(error.get("message", ""))[:4000])
    exc.student_traceback = str(error.get("traceback", ""))[-6000:]
    return exc


class Proxy:
    """Stands for a student's function on the trusted side; every call runs in the sandbox."""

    def __init__(self, name: str, sandbox: Sandbox, events: list[str], parameters: Sequence[str] = ()) -> None:
        self._name, self._sandbox, self._events = name, sandbox, events
        self.__name__ = name
        #: The student's parameter names (from the lab's contract), so test helpers that name inputs by
        #: ``inspect.signature`` (e.g. ``assert_gradient_close``) say "x", not "argument 0".
        self.__signature__ = inspect.Signature(
            [inspect.Parameter(p, inspect.Parameter.POSITIONAL_OR_KEYWORD) for p in parameters]) if parameters \
            else None

    def __repr__(self) -> str:
        return f"<student function {self._name}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        payload = self._payload(args, kwargs)
        reply = self._request("call", payload)
        value = self._value(reply)
        self._check_echo(payload, reply)
        return value

    def call_with_gradients(self, *args: Any, wrt: Sequence[int | str], upstream: Any = None,
                            **kwargs: Any) -> tuple[Any, list[torch.Tensor]]:
        """``(value, gradients)`` of the student's function, both computed in the sandbox (one "grad" request):
        the contract of :func:`lowbit.testing.gradients_of`. The request is checked here first (``wrt`` names float
        tensor arguments, ``upstream`` is None / float tensors: TypeError or ValueError otherwise), and so is the
        reply: the value and the gradients decode through :func:`wire.decode`, there is one genuine tensor of the
        input's exact shape and dtype per ``wrt`` entry, and no input was modified in place; anything else is an
        AssertionError that fails the check. Only plain data crosses, never a graph."""
        positions = _vjp.check_wrt(args, kwargs, wrt)
        _vjp.check_upstream(upstream)
        payload = self._payload(args, kwargs)
        try:
            payload["upstream"] = wire.encode(upstream)
        except wire.WireError as exc:
            raise TypeError(f"test passes an upstream gradient that cannot be sent to the sandbox: {exc}") from None
        reply = self._request("grad", {**payload, "wrt": list(positions)})
        value = self._value(reply)
        self._check_echo(payload, reply)
        inputs = [args[p] if isinstance(p, int) else kwargs[p] for p in positions]
        return value, self._gradients(reply.get("gradients"), positions, inputs)

    def _payload(self, args: tuple, kwargs: dict) -> dict:
        try:
            return {"args": wire.encode(list(args)), "kwargs": wire.encode(dict(kwargs))}
        except wire.WireError as exc:
            raise TypeError(f"test passes an argument that cannot be sent to the sandbox: {exc}") from None

    def _request(self, op: str, payload: dict) -> dict:
        """The worker's reply to one request; a failure inside the student's code is raised as a StudentError."""
        reply = self._sandbox.request(op, name=self._name, **payload)
        if not reply.get("ok"):
            error = reply.get("error") if isinstance(reply.get("error"), dict) else {}
            if error.get("memory"):
                self._events.append("memory")
            raise student_exception(error)
        return reply

    def _value(self, reply: dict) -> Any:
        try:
            return wire.decode(reply.get("value"))
        except wire.WireError as exc:
            raise AssertionError(f"{self._name} returned a value the grader cannot accept: {exc}") from None

    def _check_echo(self, payload: dict, reply: dict) -> None:
        mutated = modified_arguments(payload, reply.get("echo"))
        if mutated:
            which = ", ".join(f"argument {m}" if isinstance(m, int) else f"argument {m!r}" for m in mutated[:5])
            raise AssertionError(f"{self._name} modified its input {which} in place; work on a copy instead")

    def _gradients(self, data: Any, positions: list[int | str], inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """The reply's gradients, each checked against the input it belongs to (the worker is not trusted)."""
        what = f"{self._name}'s gradients (computed in the sandbox)"
        if type(data) is not list or len(data) != len(positions):
            count = len(data) if type(data) is list else f"no list ({type(data).__name__})"
            raise AssertionError(f"{what}: expected {len(positions)} gradient(s), one per input, got {count}")
        gradients = []
        for position, item, given in zip(positions, data, inputs):
            name = f"argument {position}" if isinstance(position, int) else f"argument {position!r}"
            try:
                grad = wire.decode(item)
            except wire.WireError as exc:
                raise AssertionError(f"{what}: the gradient for {name} cannot be accepted: {exc}") from None
            if type(grad) is not torch.Tensor or grad.dtype != given.dtype or grad.shape != given.shape:
                got = f"a {grad.dtype} tensor of shape {tuple(grad.shape)}" if isinstance(grad, torch.Tensor) \
                    else f"a {type(grad).__name__}"
                raise AssertionError(f"{what}: the gradient for {name} must be a {given.dtype} tensor of shape "
                                     f"{tuple(given.shape)} (the input's), got {got}")
            gradients.append(grad)
        return gradients


def modified_arguments(sent: dict, echo: Any) -> list[int | str]:
    """Positions / names of the arguments whose echo from the sandbox differs from what the grader sent.

    The comparison happens here, on the trusted side, on the wire encoding (exact bytes of every tensor), so
    replacing anything inside the worker cannot hide an in-place edit; only forging the echo itself can (see the
    instructor guide's trust model). Iterators are consumed by design and not compared. A missing or malformed
    echo counts every argument as modified.
    """
    args, kwargs = sent["args"], sent["kwargs"]["items"]
    if not isinstance(echo, dict) or not isinstance(echo.get("args"), list) or len(echo["args"]) != len(args) \
            or not isinstance(echo.get("kwargs"), dict):
        return [*range(len(args)), *kwargs]
    changed: list[int | str] = [i for i, (a, e) in enumerate(zip(args, echo["args"], strict=True))
                                if not _is_iterator(a) and a != e]
    changed += [k for k, v in kwargs.items() if not _is_iterator(v) and echo["kwargs"].get(k) != v]
    return changed


def _is_iterator(encoded: Any) -> bool:
    return isinstance(encoded, dict) and encoded.get(wire.TAG) == "iterator"


# -- grading one submission ---------------------------------------------------------------------------
def referenced_names(sources: list[str]) -> set[str]:
    names: set[str] = set()
    for source in sources:
        try:
            tree = ast.parse(strip_magics(source))
        except SyntaxError:
            continue
        names.update(node.id for node in ast.walk(tree) if isinstance(node, ast.Name))
    return names


def seed_all(seed: int = 0) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_setup(setup_sources: list[str]) -> dict:
    """Run the source notebook's setup cells on the trusted side; returns the namespace."""
    namespace: dict = {"__name__": "__main__", "__builtins__": builtins}
    seed_all()
    with contextlib.redirect_stdout(io.StringIO()):
        for index, source in enumerate(setup_sources):
            exec(compile(strip_magics(source), f"<setup {index}>", "exec"), namespace)  # noqa: S102 - trusted
    return namespace


def explain_failure(exc: BaseException, test: TestCell) -> str:
    """Feedback text for a failed test cell — never hidden test code, never trusted tracebacks."""
    filename = f"<test {test.grade_id}>"
    line_no = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename == filename:
            line_no = lineno
    lines = test.source.splitlines()
    hidden_start = next((i for i, l in enumerate(lines) if "### BEGIN HIDDEN TESTS" in l), len(lines))
    where = ""
    if line_no is not None and line_no - 1 < hidden_start:
        where = f"visible test line {line_no}: {lines[line_no - 1].strip()}\n"
    elif line_no is not None:
        where = "in the hidden checks\n"
    if isinstance(exc, StudentError):
        text = f"{where}your code raised {type(exc).__name__}: {exc}"
        if exc.student_traceback:
            text += f"\n{exc.student_traceback.rstrip()}"
        return text
    if isinstance(exc, AssertionError):
        return f"{where}{exc}".strip() or "assertion failed"
    return f"{where}{type(exc).__name__}: {exc}"


def grade_submission(lab: Lab, data: bytes, mode: str, limits: Limits,
                     sandbox_paths: tuple[Path, ...] = ()) -> dict:
    """Grade one submission's bytes. Never raises for anything the submission does."""
    source_nb = parse_notebook(lab.source_bytes)
    released_nb = parse_notebook(lab.released_bytes)
    result: dict = {"lab": lab.name, "sandbox": mode, "status": "ok", "reasons": [], "cells": [], "answers": [],
                    "manual": []}
    try:
        submission = parse_notebook(data)
    except InvalidNotebook as exc:
        return _invalid(result, released_nb, str(exc))
    plan = build_plan(source_nb, released_nb, submission)
    result["answers"] = [{"grade_id": g, "type": t, "source": s} for g, t, s in plan.answers]
    result["manual"] = [{"grade_id": g, "max_score": p} for g, p in plan.manual]
    statuses: list[str] = []
    reasons: list[str] = list(plan.notes)
    if plan.duplicated:
        statuses.append("flagged")
        reasons.append("duplicated graded cells (first one used): " + ", ".join(plan.duplicated))
    if plan.tampered:
        statuses.append("tampered")
        reasons.append("edited locked/test cells (restored from the source): " + ", ".join(plan.tampered))
    _api.use_draw_key(course_secret.draw_key(lab.secret, lab.name, plan.answers))
    if lab.practice:
        reasons.append(course_secret.PRACTICE_NOTE)
    scan = scan_answers(plan.answers, lab.protected, lab.contract, plan.setup_sources)
    if scan:
        statuses.append("flagged")
        reasons.extend(scan)
    cells, breach, events, hits, uid, timing = _run_tests(plan, lab, mode, limits, sandbox_paths)
    result["sandbox_uid"] = uid
    result["timing"] = timing  # informational (never in the CSV); the reference's sets the lab's budget
    if hits:
        statuses.append("flagged")
        reasons.append("called protected reference implementation(s): " + ", ".join(sorted(set(hits))))
    if breach is not None:
        statuses.append(breach.status)
        reasons.append(breach.reason)
    reasons.extend(e for e in events if e.startswith("setup cell"))
    if "memory" in events:
        statuses.append("memory")
        reasons.append(f"the student's code ran out of memory (limit {limits.memory_bytes >> 20} MiB)")
    if cells and all(not_attempted(cell) for cell in cells):
        reasons.append("no graded function attempted: every answer cell still raises NotImplementedError")
    result["cells"] = cells
    result["status"] = min(statuses or ["ok"], key=STATUS_ORDER.index)
    result["reasons"] = list(dict.fromkeys(reasons))
    result["score"] = sum(c["score"] for c in cells)
    result["max_score"] = sum(c["max_score"] for c in cells)
    flag_slow(result, limits)
    return result


def flag_slow(result: dict, limits: Limits) -> None:
    """Mark a grading that finished but took more than ``limits.slow_seconds`` as ``slow`` (score kept)."""
    total = result.get("timing", {}).get("total", 0.0)
    if not limits.slow_seconds or total <= limits.slow_seconds or result["status"] in BREACHES:
        return
    result["status"] = min([result["status"], "slow"], key=STATUS_ORDER.index)
    result["reasons"] = [*result["reasons"], f"graded in {total:.0f} s, far slower than the reference solution "
                                             f"(flagged beyond {limits.slow_seconds:.0f} s); the score stands"]


def within_budget(result: dict, limits: Limits) -> bool:
    """True when a result graded under looser limits never came near breaching ``limits``: grading under
    ``limits`` gives the same result (bar the ``slow`` flag, see :func:`flag_slow`)."""
    timing = result.get("timing")
    if not timing or result["status"] in BREACHES:
        return False
    budgets = dict(limits.cell_budgets)
    return all(seconds <= budgets.get(key, limits.cell_seconds) for key, seconds in timing["cells"].items()) \
        and all(seconds <= limits.call_seconds for seconds in timing["tests"].values()) \
        and timing["total"] <= limits.wall_seconds


def _invalid(result: dict, released_nb: dict, reason: str) -> dict:
    plan = build_plan(released_nb, released_nb, {"cells": []})
    result.update(status="invalid-notebook", reasons=[reason], score=0.0,
                  cells=[_cell(t, 0.0, False, "not graded: " + reason, []) for t in plan.tests],
                  manual=[{"grade_id": g, "max_score": p} for g, p in plan.manual])
    result["max_score"] = sum(t.points for t in plan.tests)
    return result


def _cell(test: TestCell, score: float, passed: bool, message: str, checks: list[dict]) -> dict:
    return {"grade_id": test.grade_id, "score": score, "max_score": test.points, "passed": passed,
            "message": message, "checks": checks, "visible_source": test.visible}


def _await_ready(sandbox: Sandbox, plan: Plan, limits: Limits, timing: dict) -> dict:
    """Start-up and the worker's cells, each under its own clock: the worker announces every cell before
    running it; a cell that does not finish within its budget ends the submission as ``timeout``."""
    budgets = dict(limits.cell_budgets)
    start = time.monotonic()
    message = sandbox.receive(budgets.get(STARTUP, limits.cell_seconds), "the notebook's start-up")
    key, began = STARTUP, start
    for _ in range(len(plan.worker_cells) + 1):
        if message.get("event") != "cell":
            break
        now = time.monotonic()
        timing["cells"][key] = round(now - began, 3)
        key, began = str(message.get("key"))[:200], now
        message = sandbox.receive(budgets.get(key, limits.cell_seconds), f"cell {key}")
    if message.get("event") != "ready":
        sandbox.kill()
        raise Breach("crashed", "the notebook's process broke the grading protocol (unexpected start-up message)")
    timing["cells"][key] = round(time.monotonic() - began, 3)
    return message


def _run_tests(plan: Plan, lab: Lab, mode: str, limits: Limits, sandbox_paths: tuple[Path, ...]):
    cells: list[dict] = []
    events: list[str] = []
    breach: Breach | None = None
    view = student_build.package_view(tuple(lab.protected), tuple(student_build.provided_names(plan.setup_sources)))
    for path in [*course_package_dirs(), *sandbox_paths]:  # build before the submission's clock starts
        view(Path(path).resolve())
    timing: dict = {"cells": {}, "tests": {}}
    sandbox = Sandbox(mode, limits, list(sandbox_paths), package_view=view)
    try:
        sandbox.send({"cells": plan.worker_cells, "protected": lab.protected, "sys_path": sandbox.sys_path()})
        ready = _await_ready(sandbox, plan, limits, timing)
        cell_errors = {c.get("key"): c.get("error") for c in ready.get("cells", []) if isinstance(c, dict)
                       and not c.get("ok")}
        if any(isinstance(e, dict) and e.get("memory") for e in cell_errors.values()):
            events.append("memory")
        student_keys = {c["key"] for c in plan.worker_cells if c["student"]}
        for key, error in cell_errors.items():
            if key not in student_keys and isinstance(error, dict):
                events.append(f"setup cell {key} failed in the sandbox: {error.get('type')}: "
                              f"{str(error.get('message'))[:300]}")
        namespace = run_setup(plan.setup_sources)
        setup_names = set(namespace)
        student_names = ready.get("names") if isinstance(ready.get("names"), dict) else {}
        wanted = referenced_names([t.source for t in plan.tests])
        for name, kind in sorted(student_names.items()):
            if not isinstance(name, str) or name not in wanted or name in setup_names \
                    or name not in plan.answer_names:  # only names the lab asks students to define
                continue
            if kind == "callable":
                graded = lab.contract.graded.get(name) if lab.contract is not None else None
                namespace[name] = Proxy(name, sandbox, events, graded.parameters if graded else ())
            else:
                reply = sandbox.request("get", name=name)
                if reply.get("ok"):
                    try:
                        namespace[name] = wire.decode(reply.get("value"))
                    except wire.WireError:
                        pass
        for test in plan.tests:
            if breach is not None:
                cells.append(_cell(test, 0.0, False, f"not graded: {breach.status} earlier ({breach.reason})", []))
                continue
            try:
                cells.append(_run_test(test, namespace))
            except Breach as exc:
                breach = exc
                cells.append(_cell(test, 0.0, False, f"{exc.status}: {exc.reason}", list(_api.RECORDER)))
        if cell_errors:
            for key, error in cell_errors.items():
                if isinstance(error, dict):
                    for cell in cells:
                        if not cell["passed"] and "not defined" in cell["message"]:
                            cell["message"] += f"\n(cell {key} failed: {error.get('type')}: {error.get('message')})"
    except Breach as exc:
        breach = exc
        cells = [_cell(t, 0.0, False, f"not graded: {exc.status} ({exc.reason})", []) for t in plan.tests]
    finally:
        if breach is None and sandbox.proc.poll() is None and sandbox.finish():
            breach = Breach("crashed", "the notebook's process broke the grading protocol (unexpected output)")
        hits = list(sandbox.tripwire_hits)
        timing["total"] = round(time.monotonic() - sandbox.started, 3)
        sandbox.close()
    timing["tests"] = {c["grade_id"]: c["seconds"] for c in cells if "seconds" in c}
    return cells, breach, events, hits, sandbox.uid, timing


def split_hidden(source: str) -> tuple[str, str]:
    """(visible part, hidden part) of a test cell; line numbers are kept by padding the hidden part."""
    lines = source.splitlines()
    start = next((i for i, l in enumerate(lines) if "### BEGIN HIDDEN TESTS" in l), len(lines))
    return "\n".join(lines[:start]), "\n" * start + "\n".join(lines[start:])


def _run_test(test: TestCell, namespace: dict) -> dict:
    """Run one test cell on the trusted side. The hidden part runs even when a visible assert failed, so
    the feedback still names every hidden check; the cell scores only if both parts pass."""
    if test.missing_reason:
        return _cell(test, 0.0, False, test.missing_reason, [])
    _api.RECORDER.clear()
    seed_all()
    start = time.perf_counter()
    failure: BaseException | None = None
    for part in split_hidden(strip_magics(test.source)):
        if not part.strip():
            continue
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # test helpers may print progress
                exec(compile(part, f"<test {test.grade_id}>", "exec"), namespace)  # noqa: S102 - trusted source
        except Breach:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of a test cell is a failed cell
            failure = failure or exc
    if failure is not None:
        cell = _cell(test, 0.0, False, explain_failure(failure, test), list(_api.RECORDER))
    else:
        cell = _cell(test, test.points, True, "", list(_api.RECORDER))
    cell["seconds"] = round(time.perf_counter() - start, 3)  # informational; never in the CSV
    return cell
