"""course/notebooks/: the worked solutions for reading stay in step with solutions/ and ran cleanly.

They are built by ``make notebooks`` (course/build_notebooks.py); these tests only read them.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
LABS = sorted(p.name for p in (REPO / "solutions").iterdir() if (p / f"{p.name}.ipynb").exists())


def load_builder():
    spec = importlib.util.spec_from_file_location("build_notebooks", REPO / "course" / "build_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


builder = load_builder()


def test_reader_source_drops_hidden_tests_and_solution_markers_only():
    source = ("def f(x):\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION\n\n"
              "assert f(1) == 1\n### BEGIN HIDDEN TESTS\nfrom autograder.checks.lab import check_f\ncheck_f(f)\n"
              "### END HIDDEN TESTS\n")
    assert builder.reader_source(source) == "def f(x):\n    return x\n\nassert f(1) == 1"
    untouched = "x = 1  # BEGIN SOLUTION is only a marker on a line of its own\nprint(x)"
    assert builder.reader_source(untouched) == untouched


@pytest.mark.parametrize("lab", LABS)
def test_reading_copy_matches_the_solution_cell_for_cell(lab):
    page_path = REPO / "course" / "notebooks" / f"{lab}.ipynb"
    assert page_path.exists(), f"{page_path.relative_to(REPO)} is missing: run `make notebooks`"
    solution = nbformat.read(REPO / "solutions" / lab / f"{lab}.ipynb", as_version=4)
    page = nbformat.read(page_path, as_version=4)
    assert [c.cell_type for c in page.cells] == [c.cell_type for c in solution.cells]
    for index, (ours, theirs) in enumerate(zip(page.cells, solution.cells)):
        want = builder.reader_source(theirs.source) if theirs.cell_type == "code" else theirs.source
        assert ours.source == want, (f"cell {index} of {page_path.name} is stale (solution changed): "
                                     "run `make notebooks`")
    text = page_path.read_text()
    for marker in ("BEGIN HIDDEN TESTS", "### BEGIN SOLUTION", "autograder.checks"):
        assert marker not in text, f"{marker!r} left in the reading copy"


@pytest.mark.parametrize("lab", LABS)
def test_reading_copy_ran_top_to_bottom_without_errors_or_noise(lab):
    page = nbformat.read(REPO / "course" / "notebooks" / f"{lab}.ipynb", as_version=4)
    solution = nbformat.read(REPO / "solutions" / lab / f"{lab}.ipynb", as_version=4)
    code = [(c, s) for c, s in zip(page.cells, solution.cells) if c.cell_type == "code"]
    counts = [c.execution_count for c, _ in code]
    assert all(isinstance(n, int) for n in counts), "every code cell ran"
    assert counts == sorted(counts), "cells ran top to bottom"
    for cell, source_cell in code:
        kinds = [o.output_type for o in cell.outputs]
        assert "error" not in kinds, cell.source[:80]
        assert not [o for o in cell.outputs if o.get("name") == "stderr"], f"stderr in: {cell.source[:80]}"
        assert not [o for o in cell.outputs if builder.WIDGET_VIEW in o.get("data", {})], "live widget view saved"
        if source_cell.metadata.get("nbgrader", {}).get("grade"):
            assert "execute_result" not in kinds, (
                f"test cell {source_cell.metadata['nbgrader']['grade_id']} displays a value: nbgrader reads a "
                "displayed number as partial credit; end test cells with a statement")
    figures = sum("image/png" in o.get("data", {}) for c, _ in code for o in c.outputs)
    assert figures >= 1, "the widgets were saved as static figures"
