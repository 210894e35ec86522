"""Every realistic wrong answer in a lab's mutant catalogue loses points on the check named for its mistake.

Mutants of different functions live in different answer cells, and each cell is graded on its own, so one
submission can carry one mutant of every function at once: round r holds the r-th mutant of each function.
A lab with 12 functions and 74 mutants is graded as 8 submissions instead of 74, through the real pipeline
(sandbox, proxies, hidden checks) — once under each of three course secrets, so every mutant is caught on three
independent draws of the hidden checks' inputs.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import nbformat
import pytest

from autograder.contract import load_contract
from autograder.grade import grade_class
from autograder.mutants import load_catalogue, mutants_submission
from autograder.release import find_labs
from autograder.sandbox import bwrap_problem

REPO = Path(__file__).resolve().parents[1]
LABS_WITH_MUTANTS = [lab for lab in find_labs(REPO) if (REPO / "tests" / "mutants" / f"{lab}.py").is_file()]
MODE = "bwrap" if bwrap_problem() is None else "unsafe"
#: Every mutant must be caught under each of these course secrets.
SECRETS = (b"mutant-secret-one-0123456789", b"mutant-secret-two-0123456789", b"mutant-secret-three-012345678")

pytestmark = pytest.mark.xdist_group("autograder-labs")


def mutant_rounds(mutants: list) -> list[list]:
    """Round r holds the r-th mutant of every function (at most one mutant per answer cell per round)."""
    by_function: dict[str, list] = defaultdict(list)
    for mutant in mutants:
        by_function[mutant.function].append(mutant)
    depth = max(len(group) for group in by_function.values())
    return [[group[r] for group in by_function.values() if r < len(group)] for r in range(depth)]


@pytest.mark.parametrize("lab", LABS_WITH_MUTANTS)
def test_catalogue_has_five_mutants_per_graded_function(lab):
    mutants = load_catalogue(REPO / "tests" / "mutants" / f"{lab}.py")
    notebook = nbformat.read(REPO / "solutions" / lab / f"{lab}.ipynb", as_version=4)
    tested = [cell.metadata["nbgrader"]["grade_id"].removeprefix("test_") for cell in notebook.cells
              if cell.metadata.get("nbgrader", {}).get("grade") and not cell.metadata["nbgrader"].get("solution")]
    assert tested, f"{lab} has no autograded test cells"
    counts = {function: sum(m.function == function for m in mutants) for function in tested}
    too_few = {f: n for f, n in counts.items() if n < 5}
    assert too_few == {}, f"graded functions with fewer than 5 mutants: {too_few}"
    contract = load_contract(lab)
    assert sorted(contract.graded) == sorted(tested), "the contract's graded functions are the lab's graded cells"
    assert {m.function for m in mutants} <= set(contract.graded), "mutants of functions the contract does not grade"


@pytest.mark.parametrize("lab", LABS_WITH_MUTANTS)
def test_every_mutant_fails_its_named_check(lab, tmp_path):
    mutants = load_catalogue(REPO / "tests" / "mutants" / f"{lab}.py")
    source = (REPO / "solutions" / lab / f"{lab}.ipynb").read_bytes()
    released = (REPO / "labs" / lab / f"{lab}.ipynb").read_bytes()
    rounds = mutant_rounds(mutants)
    for index, group in enumerate(rounds):
        folder = tmp_path / "class" / f"round{index:02d}"
        folder.mkdir(parents=True)
        (folder / f"{lab}.ipynb").write_bytes(mutants_submission(source, released, group))
    missed = []
    for number, secret in enumerate(SECRETS):
        results = grade_class(lab, tmp_path / "class", tmp_path / f"out{number}", REPO, jobs=2, progress=False,
                              unsafe=MODE == "unsafe", secret=secret)
        missed += [f"secret {number}: {line}" for line in _missed(rounds, results)]
    assert missed == [], "mutants not caught:\n" + "\n".join(missed)


def _missed(rounds: list[list], results: dict) -> list[str]:
    missed = []
    for index, group in enumerate(rounds):
        result = results[f"round{index:02d}"]
        assert result["status"] == "ok", f"round {index}: {result['status']} ({result.get('reasons')})"
        cells = {cell["grade_id"]: cell for cell in result["cells"]}
        for mutant in group:
            cell = cells[f"test_{mutant.function}"]
            failed = {check["name"] for check in cell["checks"] if not check["passed"]}
            if cell["score"] >= cell["max_score"] or mutant.check not in failed:
                missed.append(f"{mutant.function}: {mutant.mistake} (expected check {mutant.check!r}, "
                              f"failed: {sorted(failed)}, score {cell['score']}/{cell['max_score']})")
    return missed
