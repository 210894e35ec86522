"""Hidden check modules, one per lab: ``autograder/checks/<lab>.py`` (see ``_api`` and the instructor guide).

They run only on the trusted side of the grader; the sandbox cannot import them. Extra folders (e.g. a test
fixture course's ``checks/``) are appended to this package's ``__path__`` by :func:`add_checks_path`.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path

__path__ = list(__path__)  # noqa: F821 - make the package path extendable
#: Extra check folders from the environment (os.pathsep-separated), e.g. for running nbgrader itself.
for _folder in filter(None, os.environ.get("AUTOGRADER_CHECKS_PATH", "").split(os.pathsep)):
    __path__.append(str(Path(_folder).resolve()))


def add_checks_path(folder: str | Path) -> None:
    """Let ``autograder.checks.<lab>`` resolve to ``<folder>/<lab>.py`` before any other folder's ``<lab>.py``:
    the course loaded last is the one graded (a process that loads two courses must not keep the first's)."""
    folder = str(Path(folder).resolve())
    if folder in __path__:
        __path__.remove(folder)
    __path__.insert(0, folder)


def find_check_module(lab: str) -> Path | None:
    """The file ``autograder.checks.<lab>`` resolves to, or None."""
    for folder in __path__:
        candidate = Path(folder) / f"{lab}.py"
        if candidate.is_file():
            return candidate
    return None


def contract_file(module: Path, lab: str) -> Path:
    """Where the contract of ``lab`` lives: ``<lab>.contract.json`` beside its check module."""
    return module.with_name(f"{lab}.contract.json")


def load_check_module(lab: str) -> bytes | None:
    """Import ``autograder.checks.<lab>`` from the file it resolves to now; return that file's bytes followed by
    its contract's, which are exactly what the grader then runs (the module reads the contract at import). A
    module already imported from another file, or from other bytes (an edited file, another course loaded earlier
    in this process), is replaced. None: no such lab."""
    path = find_check_module(lab)
    if path is None:
        return None
    source = path.read_bytes()
    contract = contract_file(path, lab)
    checks_bytes = source + (contract.read_bytes() if contract.is_file() else b"")
    digest = hashlib.sha256(checks_bytes).hexdigest()
    name = f"{__name__}.{lab}"
    cached = sys.modules.get(name)
    if cached is not None and getattr(cached, "__source_sha256__", None) == digest and cached.__file__ == str(path):
        return checks_bytes
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    module.__source_sha256__ = digest
    sys.modules[name] = module
    try:
        exec(compile(source, str(path), "exec"), module.__dict__)  # the bytes read above, not a second read
    except BaseException:
        sys.modules.pop(name, None)
        raise
    setattr(sys.modules[__name__], lab, module)
    return checks_bytes
