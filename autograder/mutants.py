"""Mutant catalogues: realistic wrong answers that the hidden checks must catch (a reusable harness).

A lab's catalogue lives in ``tests/mutants/<lab>.py`` as ``MUTANTS``: a list of objects with the fields
``function`` (the answer cell's grade_id), ``mistake`` (what the student got wrong), ``old``/``new`` (a
textual edit applied once to the solution cell) and ``check`` (the name of the hidden check that must fail).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import NamedTuple

from .submissions import fill_answers, solution_answers


class Mutant(NamedTuple):
    function: str   # the answer cell's grade_id
    mistake: str
    old: str
    new: str
    check: str      # name of the hidden check that must fail


def load_catalogue(path: Path) -> list:
    """The ``MUTANTS`` list of a catalogue file."""
    spec = importlib.util.spec_from_file_location(f"_mutants_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.MUTANTS)


def mutant_submission(source_bytes: bytes, released_bytes: bytes, mutant) -> bytes:
    """The solution submission with one answer cell edited as the mutant says (ValueError if it can't apply)."""
    return mutants_submission(source_bytes, released_bytes, [mutant])


def mutants_submission(source_bytes: bytes, released_bytes: bytes, mutants: list) -> bytes:
    """The solution submission with every mutant's edit applied, each once to its own answer cell.

    Answer cells are graded independently, so one submission can carry one mutant per cell (a "round").
    Raises ValueError if an edit does not apply exactly once.
    """
    answers = solution_answers(source_bytes)
    for mutant in mutants:
        if mutant.function not in answers:
            raise ValueError(f"mutant {mutant.mistake!r}: no answer cell {mutant.function!r}")
        cell = answers[mutant.function]
        if cell.count(mutant.old) != 1:
            raise ValueError(f"mutant {mutant.mistake!r}: {mutant.old!r} occurs {cell.count(mutant.old)} times "
                             f"in cell {mutant.function} (it must occur once)")
        answers[mutant.function] = cell.replace(mutant.old, mutant.new, 1)
    return fill_answers(released_bytes, answers)


def grade_mutants(course_root: Path, lab: str, mutants: list, out: Path, jobs: int | None = None,
                  unsafe: bool = False, limits=None) -> list[tuple]:
    """Grade every mutant of ``lab`` as one class; returns (mutant, result, caught) per mutant.

    ``caught`` means: the named check failed and the cell it failed in lost points. Lab authors call this
    from their tests, e.g. ``assert [m.mistake for m, _, caught in grade_mutants(...) if not caught] == []``.
    """
    from .grade import grade_class
    from .runner import Course, Lab
    from .sandbox import Limits

    loaded = Lab.load(Course.load(course_root), lab)
    root = Path(out) / "submissions"
    for index, mutant in enumerate(mutants):
        target = root / f"m{index:03d}" / f"{lab}.ipynb"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(mutant_submission(loaded.source_bytes, loaded.released_bytes, mutant))
    results = grade_class(lab, root, Path(out) / "graded", course_root, jobs=jobs, unsafe=unsafe,
                          limits=limits or Limits(), progress=False)
    report = []
    for index, mutant in enumerate(mutants):
        result = results[f"m{index:03d}"]
        caught = any(not check["passed"] and check["name"] == mutant.check and cell["score"] < cell["max_score"]
                     for cell in result["cells"] for check in cell["checks"])
        report.append((mutant, result, caught))
    return report
