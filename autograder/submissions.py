"""Building submissions programmatically (tests, benchmarks, mutant catalogues) and finding them on disk."""
from __future__ import annotations

import json
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import nbformat

from .notebook import cell_role, grade_id

_STUDENT_ID = re.compile(r"^[A-Za-z0-9_.@+-]{1,128}$")
MAX_ZIP_BYTES = 2 << 30


def solution_answers(source_bytes: bytes) -> dict[str, str]:
    """grade_id -> full solution source of every answer cell (code and manually graded markdown)."""
    notebook = nbformat.reads(source_bytes.decode(), as_version=4)
    return {grade_id(c): c.source for c in notebook.cells if cell_role(c) in ("solution", "manual")}


def fill_answers(released_bytes: bytes, answers: dict[str, str]) -> bytes:
    """The student notebook with the given answer cells replaced — what a student would submit."""
    notebook = nbformat.reads(released_bytes.decode(), as_version=4)
    for cell in notebook.cells:
        gid = grade_id(cell)
        if gid in answers:
            cell.source = answers[gid]
    return nbformat.writes(notebook).encode()


@dataclass(frozen=True)
class Submission:
    student_id: str
    path: Path | None       # None: no notebook found (reason says why)
    problem: str = ""


def discover(root: Path, lab: str) -> list[Submission]:
    """Submissions under ``root``: ``<student>/<lab>.ipynb`` (LMS) or ``[submitted/]<student>/<lab>/<lab>.ipynb``."""
    root = Path(root)
    if (root / "submitted").is_dir():
        root = root / "submitted"
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        student = folder.name
        if not _STUDENT_ID.match(student):
            student = re.sub(r"[^A-Za-z0-9_.@+-]", "_", student)[:128]
        candidates = [folder / lab / f"{lab}.ipynb", folder / f"{lab}.ipynb"]
        path = next((c for c in candidates if c.is_file()), None)
        if path is not None:
            found.append(Submission(student, path))
            continue
        notebooks = sorted(folder.rglob("*.ipynb"))
        notebooks = [n for n in notebooks if ".ipynb_checkpoints" not in n.parts]
        if len(notebooks) == 1:
            found.append(Submission(student, notebooks[0], f"graded {notebooks[0].name} (expected {lab}.ipynb)"))
        else:
            listing = ", ".join(n.name for n in notebooks[:5]) or "no notebook"
            found.append(Submission(student, None, f"missing {lab}.ipynb in the student's folder (found: {listing})"))
    return found


def unpack_zip(archive: Path, into: Path) -> Path:
    """Safely extract an LMS zip (no absolute paths, no '..', size-capped); returns the submissions root."""
    with zipfile.ZipFile(archive) as bundle:
        total = sum(info.file_size for info in bundle.infolist())
        if total > MAX_ZIP_BYTES:
            raise ValueError(f"{archive} unpacks to {total >> 20} MiB, more than {MAX_ZIP_BYTES >> 20} MiB")
        for info in bundle.infolist():
            target = (into / info.filename).resolve()
            if not str(target).startswith(str(into.resolve())) or info.is_dir():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with bundle.open(info) as source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink)
    entries = [p for p in into.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    if len(entries) == 1 and entries[0].is_dir() and not any(p.suffix == ".ipynb" for p in entries[0].iterdir()) \
            and all(p.is_dir() for p in entries[0].iterdir()) and entries[0].name != "submitted":
        # one wrapping folder around the student folders
        inner = entries[0]
        if any(any(q.suffix == ".ipynb" for q in p.rglob("*")) for p in inner.iterdir()):
            return inner
    return into
