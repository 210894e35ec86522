"""Building submissions programmatically (tests, benchmarks, mutant catalogues) and finding them on disk."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

import nbformat

from .notebook import MAX_NOTEBOOK_BYTES, cell_role, grade_id
from .text import printable

_STUDENT_ID = re.compile(r"[A-Za-z0-9_.@+-]{1,128}")
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
    path: Path | None       # None: nothing gradable found (``problem`` says why)
    problem: str = ""
    refused: bool = False   # True: not graded at all (``problem`` says why), e.g. a student id collision


class UnreadableSubmission(ValueError):
    """The notebook file cannot be read safely; the message says why (shown in that student's row)."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def read_notebook_file(path: Path, max_bytes: int = MAX_NOTEBOOK_BYTES) -> bytes:
    """The bytes of a submitted notebook: a regular file (never followed through a symlink), size-checked
    before reading. Raises :class:`UnreadableSubmission` saying what is wrong."""
    name = printable(path.name)
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise UnreadableSubmission(f"{name} cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise UnreadableSubmission(f"{name} is {_kind(info.st_mode)}, not a notebook file; submit the .ipynb itself")
    if info.st_size > max_bytes:
        raise UnreadableSubmission(f"{name} is larger than {max_bytes >> 20} MiB (clear outputs and resubmit)")
    try:  # O_NOFOLLOW | O_NONBLOCK: a file swapped for a symlink or FIFO since lstat neither follows nor blocks
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise UnreadableSubmission(f"{name} cannot be read ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as source:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnreadableSubmission(f"{name} is not a regular file")
        data = source.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UnreadableSubmission(f"{name} is larger than {max_bytes >> 20} MiB (clear outputs and resubmit)")
    return data


def student_id_for(folder_name: str) -> str:
    """The student id a folder name stands for: itself when it is a valid id, else a cleaned-up copy."""
    if _STUDENT_ID.fullmatch(folder_name):
        return folder_name
    cleaned = re.sub(r"[^A-Za-z0-9_.@+-]", "_", folder_name)[:128].lstrip(".")
    return cleaned or "_"


def _refused_id(student_id: str, folder_name: str) -> str:
    digest = hashlib.sha256(folder_name.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{student_id}~{digest}"


def discover(root: Path, lab: str) -> list[Submission]:
    """Submissions under ``root``: ``<student>/<lab>.ipynb`` (LMS) or ``[submitted/]<student>/<lab>/<lab>.ipynb``.

    One entry per student folder, never an exception for what a folder holds. Ids: a folder name that is a
    valid id is used as is; any other name is cleaned up, and if that collides with another folder's id,
    the cleaned-up folder is refused under a distinct ``<id>~<hash>`` row and the other one is told.
    """
    root = Path(root)
    if _is_real_dir(root / "submitted"):
        root = root / "submitted"
    folders = sorted((e for e in os.scandir(root) if not e.name.startswith(".")), key=lambda e: e.name)
    by_id: dict[str, list[os.DirEntry]] = {}
    for entry in folders:
        if entry.is_dir(follow_symlinks=False) or entry.is_symlink():
            by_id.setdefault(student_id_for(entry.name), []).append(entry)
    found = []
    for student, entries in sorted(by_id.items()):
        exact = [e for e in entries if e.name == student]
        for entry in entries:
            if len(entries) > 1 and entry not in exact:
                others = ", ".join(repr(printable(e.name)) for e in entries if e is not entry)
                found.append(Submission(_refused_id(student, entry.name), None, refused=True, problem=(
                    f"student id collision: folder {printable(entry.name)!r} is not a valid id and maps to "
                    f"{student!r}, like folder(s) {others}; not graded — rename the folder and regrade")))
                continue
            sub = _find_notebook(Path(entry.path), student, lab)
            if entry.name != student:
                sub = Submission(student, sub.path, _join(f"folder {printable(entry.name)!r} graded as student "
                                                          f"id {student!r}", sub.problem), sub.refused)
            if len(entries) > 1:
                others = ", ".join(repr(printable(e.name)) for e in entries if e is not entry)
                sub = Submission(student, sub.path, _join(sub.problem, f"student id collision: folder(s) {others} "
                                                          "map to the same id and were refused"), sub.refused)
            found.append(sub)
    return found


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def _is_real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _find_notebook(folder: Path, student: str, lab: str) -> Submission:
    """The notebook in one student's folder, or a Submission with ``path=None`` and the reason."""
    if not _is_real_dir(folder):
        return Submission(student, None, "the student's folder is a symbolic link; links are not followed")
    for candidate in (folder / lab / f"{lab}.ipynb", folder / f"{lab}.ipynb"):
        try:
            mode = os.lstat(candidate).st_mode
        except OSError:
            continue
        if stat.S_ISREG(mode):
            return Submission(student, candidate)
        where = printable(str(candidate.relative_to(folder)))
        return Submission(student, None, f"{where} is {_kind(mode)}, not a notebook file; submit the .ipynb itself")
    notebooks = _regular_notebooks(folder)
    if len(notebooks) == 1:
        return Submission(student, notebooks[0], f"graded {printable(notebooks[0].name)} (expected {lab}.ipynb)")
    listing = ", ".join(printable(n.name) for n in notebooks[:5]) or "no notebook"
    return Submission(student, None, f"missing {lab}.ipynb in the student's folder (found: {listing})")


def _regular_notebooks(folder: Path, limit: int = 10_000) -> list[Path]:
    """Regular ``*.ipynb`` files below ``folder`` (no symlinks followed, checkpoints skipped)."""
    found, seen = [], 0
    for parent, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if d != ".ipynb_checkpoints")
        for name in sorted(files):
            seen += 1
            path = Path(parent) / name
            if name.endswith(".ipynb") and _is_regular(path):
                found.append(path)
        if seen > limit:
            break
    return found


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def unpack_zip(archive: Path, into: Path) -> tuple[Path, list[tuple[str, str]]]:
    """Safely extract an LMS zip (no absolute paths, no '..', no links, size-capped).

    Returns the submissions root and the entries that could not be extracted (e.g. a file and a folder of
    the same name), each with the reason; one bad entry never stops the others.
    """
    skipped = []
    into.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as bundle:
        total = sum(info.file_size for info in bundle.infolist())
        if total > MAX_ZIP_BYTES:
            raise ValueError(f"{archive} unpacks to {total >> 20} MiB, more than {MAX_ZIP_BYTES >> 20} MiB")
        base = into.resolve()
        for info in bundle.infolist():
            target = (into / info.filename).resolve()
            if not target.is_relative_to(base) or target == base or info.is_dir():
                continue
            try:
                _extract(bundle, info, target, base)
            except OSError as exc:
                skipped.append((info.filename, exc.strerror or str(exc)))
    entries = [p for p in into.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    if len(entries) == 1 and _is_real_dir(entries[0]) and entries[0].name != "submitted" \
            and all(_is_real_dir(p) for p in entries[0].iterdir()) \
            and any(_regular_notebooks(p) for p in entries[0].iterdir()):
        return entries[0], skipped  # one wrapping folder around the student folders
    return into, skipped


def _extract(bundle: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, base: Path) -> None:
    for parent in reversed(target.parents):
        if parent.is_relative_to(base) and parent != base and not _is_real_dir(parent):
            os.mkdir(parent)  # fails (not silently) when a file already holds that name
    if os.path.lexists(target):
        raise FileExistsError(17, "another entry already holds this name")
    with bundle.open(info) as source, open(target, "xb") as sink:
        shutil.copyfileobj(source, sink)
