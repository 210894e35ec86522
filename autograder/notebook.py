"""Reading submissions defensively and lining them up with the source notebook (cells matched by grade_id)."""
from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbgrader.utils import compute_checksum

from .scan import whole_job_uses, worker_reaches
from .text import printable

MAX_NOTEBOOK_BYTES = 50 << 20
MAX_CELL_SOURCE = 200_000
HIDDEN_BEGIN = "### BEGIN HIDDEN TESTS"


class InvalidNotebook(ValueError):
    """The file is not a usable Python notebook; the message says what is wrong."""


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    if isinstance(source, list):
        if not all(isinstance(part, str) for part in source):
            raise InvalidNotebook("a cell's source is not text")
        source = "".join(source)
    if not isinstance(source, str):
        raise InvalidNotebook("a cell's source is not text")
    if len(source) > MAX_CELL_SOURCE:
        raise InvalidNotebook(f"a cell's source is longer than {MAX_CELL_SOURCE} characters")
    return printable(source)


def parse_notebook(data: bytes) -> nbformat.NotebookNode:
    """Parse and structurally check notebook bytes; outputs are dropped. Raises InvalidNotebook."""
    if not data.strip():
        raise InvalidNotebook("the file is empty")
    if len(data) > MAX_NOTEBOOK_BYTES:
        raise InvalidNotebook(f"the file is larger than {MAX_NOTEBOOK_BYTES >> 20} MiB (clear outputs and resubmit)")
    try:
        raw = json.loads(data.decode("utf-8", "replace"))  # stray non-UTF-8 bytes become U+FFFD
    except json.JSONDecodeError as exc:
        raise InvalidNotebook(f"not a notebook: the file is not valid JSON ({exc.__class__.__name__})") from None
    if not isinstance(raw, dict):
        raise InvalidNotebook("not a notebook: the JSON is not an object")
    if raw.get("nbformat") != 4:
        raise InvalidNotebook(f"unsupported notebook format nbformat={raw.get('nbformat')!r} (expected 4)")
    if not isinstance(raw.get("cells"), list):
        raise InvalidNotebook("not a notebook: no list of cells")
    metadata = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    kernel = metadata.get("kernelspec") if isinstance(metadata.get("kernelspec"), dict) else {}
    language = str(kernel.get("language", "python")).lower()
    name = str(kernel.get("name", "python3")).lower()
    if language != "python" or not name.startswith("python"):
        raise InvalidNotebook(f"wrong kernel {kernel.get('name')!r} ({language}); the lab needs a Python 3 kernel")
    cells = []
    for cell in raw["cells"]:
        if not isinstance(cell, dict) or cell.get("cell_type") not in ("code", "markdown", "raw"):
            raise InvalidNotebook("a cell is malformed (no valid cell_type)")
        meta = cell.get("metadata") if isinstance(cell.get("metadata"), dict) else {}
        nbg = meta.get("nbgrader") if isinstance(meta.get("nbgrader"), dict) else None
        clean_meta = {"nbgrader": nbg} if nbg is not None else {}
        cells.append(nbformat.from_dict({"cell_type": cell["cell_type"], "source": _source(cell),
                                         "metadata": clean_meta}))
    return nbformat.from_dict({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


def nbgrader_meta(cell: dict) -> dict:
    meta = cell.get("metadata", {}).get("nbgrader")
    return meta if isinstance(meta, dict) else {}


def grade_id(cell: dict) -> str | None:
    value = nbgrader_meta(cell).get("grade_id")
    return value if isinstance(value, str) else None


def safe_checksum(cell: dict) -> str | None:
    try:
        return compute_checksum(cell)
    except (KeyError, TypeError, ValueError):
        return None


def visible_part(source: str) -> str:
    """A test cell's source without its hidden block (what students see)."""
    return re.sub(r"### BEGIN HIDDEN TESTS.*?### END HIDDEN TESTS\n?", "", source, flags=re.S).rstrip()


@dataclass
class TestCell:
    grade_id: str
    points: float
    source: str            # from the SOURCE notebook (with hidden tests), run on the trusted side
    visible: str           # what students see: safe for feedback
    missing_reason: str = ""


@dataclass
class Plan:
    """What to run for one submission, built from the source notebook and the submission."""

    worker_cells: list[dict] = field(default_factory=list)   # {"key", "source", "student"}
    setup_sources: list[str] = field(default_factory=list)   # trusted side runs these itself
    tests: list[TestCell] = field(default_factory=list)
    manual: list[tuple[str, float]] = field(default_factory=list)
    answers: list[tuple[str, str, str]] = field(default_factory=list)  # (grade_id, cell_type, student source)
    notes: list[str] = field(default_factory=list)
    tampered: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    answer_names: set[str] = field(default_factory=set)      # names the lab's answer cells define


def cell_role(cell: dict) -> str:
    """setup | solution | test | manual | other, from nbgrader metadata.

    setup: a locked (read-only) code cell whose grade_id starts with ``setup`` — imports, data, models;
    solution: a code answer cell; test: an autograded code cell; manual: a hand-graded markdown answer;
    other: everything else (markdown, experiment and widget cells) — never run at grading time.
    """
    meta = nbgrader_meta(cell)
    if meta.get("solution"):
        return "manual" if meta.get("grade") and cell["cell_type"] == "markdown" else \
            "solution" if cell["cell_type"] == "code" else "other"
    if meta.get("grade") and cell["cell_type"] == "code":
        return "test"
    if meta.get("locked") and cell["cell_type"] == "code" and str(meta.get("grade_id", "")).startswith("setup"):
        return "setup"   # locked code cells named setup* run at grading; other locked cells are experiments
    return "other"


def build_plan(source_nb: dict, released_nb: dict, submission: dict) -> Plan:
    """Line up a submission with the source: setup/test cells from the source, answers from the submission."""
    plan = Plan()
    by_id: dict[str, dict] = {}
    for cell in submission["cells"]:
        gid = grade_id(cell)
        if gid is None:
            continue
        if gid in by_id:
            if gid not in plan.duplicated:
                plan.duplicated.append(gid)
            continue
        by_id[gid] = cell
    released = {grade_id(c): c for c in released_nb["cells"] if grade_id(c)}
    for cell in source_nb["cells"]:
        role, gid = cell_role(cell), grade_id(cell)
        sub = by_id.get(gid) if gid else None
        if role in ("setup", "test") and gid in released:
            _check_locked(gid, released[gid], sub, plan)
        if role == "setup":
            plan.worker_cells.append({"key": gid or f"setup-{len(plan.worker_cells)}", "source": cell["source"],
                                      "student": False})
            plan.setup_sources.append(cell["source"])
        elif role == "solution":
            plan.answer_names |= bound_names(cell["source"])
            if sub is None or sub["cell_type"] != "code":
                plan.notes.append(f"answer cell {gid} is missing from the submission")
                plan.answers.append((gid, "code", ""))
                continue
            plan.worker_cells.append({"key": gid, "source": sub["source"], "student": True})
            plan.answers.append((gid, "code", sub["source"]))
        elif role == "test":
            points = float(nbgrader_meta(cell).get("points", 0))
            visible = visible_part(released[gid]["source"]) if gid in released else visible_part(cell["source"])
            missing = "" if sub is not None else f"graded cell {gid} was deleted from the submission"
            if missing:
                plan.notes.append(missing)
            plan.tests.append(TestCell(gid, points, cell["source"], visible, missing))
        elif role == "manual":
            plan.manual.append((gid, float(nbgrader_meta(cell).get("points", 0))))
            plan.answers.append((gid, "markdown", sub["source"] if sub is not None else ""))
    return plan


def _check_locked(gid: str, released_cell: dict, sub: dict | None, plan: Plan) -> None:
    if sub is None:
        plan.tampered.append(f"{gid} (deleted)")
    elif safe_checksum(sub) != safe_checksum(released_cell):
        plan.tampered.append(gid)


def bound_names(source: str) -> set[str]:
    """Top-level names a cell binds (defs, classes, assignments, imports)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


_IMPORT_TAMPERING = {"importlib", "__import__", "reload", "modules", "__builtins__", "builtins"}


def scan_answers(answers: list[tuple[str, str, str]], protected: list[str], contract=None,
                 setup_sources: list[str] = ()) -> list[str]:
    """Static scan of answer cells -> reasons: uses of protected reference functions or import machinery, library
    calls that do a graded function's whole job (from the lab's contract), reaches into the worker's module."""
    reasons: list[str] = []
    targets = {dotted.rsplit(".", 1)[1]: dotted for dotted in protected}
    modules = {dotted.rsplit(".", 1)[0] for dotted in protected}
    for gid, kind, source in answers:
        if kind != "code" or not source.strip():
            continue
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        found: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    if full in protected or (node.module in modules and alias.name == "*") or full in modules:
                        found.add(f"imports {full}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in modules:
                        found.add(f"imports {alias.name}")
            elif isinstance(node, ast.Attribute) and node.attr in targets:
                found.add(f"uses .{node.attr} ({targets[node.attr]})")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in targets:
                found.add(f"names {node.value!r} in a string")
            elif isinstance(node, ast.Name) and node.id in ("__import__", "importlib"):
                found.add(f"uses {node.id}")
            elif isinstance(node, ast.Attribute) and node.attr in ("modules", "reload") and \
                    isinstance(node.value, ast.Name) and node.value.id in ("sys", "importlib"):
                found.add(f"uses {node.value.id}.{node.attr}")
        reasons.extend(f"cell {gid} {what}" for what in sorted(found))
    return reasons + whole_job_uses(answers, contract, setup_sources) + worker_reaches(answers)
