"""Hidden check modules, one per lab: ``autograder/checks/<lab>.py`` (see ``_api`` and the instructor guide).

They run only on the trusted side of the grader; the sandbox cannot import them. Extra folders (e.g. a test
fixture course's ``checks/``) are appended to this package's ``__path__`` by :func:`add_checks_path`.
"""
from __future__ import annotations

import os
from pathlib import Path

__path__ = list(__path__)  # noqa: F821 - make the package path extendable
#: Extra check folders from the environment (os.pathsep-separated), e.g. for running nbgrader itself.
for _folder in filter(None, os.environ.get("AUTOGRADER_CHECKS_PATH", "").split(os.pathsep)):
    __path__.append(str(Path(_folder).resolve()))


def add_checks_path(folder: str | Path) -> None:
    """Let ``autograder.checks.<lab>`` also resolve to ``<folder>/<lab>.py``."""
    folder = str(Path(folder).resolve())
    if folder not in __path__:
        __path__.append(folder)


def find_check_module(lab: str) -> Path | None:
    """The file ``autograder.checks.<lab>`` resolves to, or None."""
    for folder in __path__:
        candidate = Path(folder) / f"{lab}.py"
        if candidate.is_file():
            return candidate
    return None
