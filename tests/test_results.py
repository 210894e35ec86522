"""lowbit.results (the table helper) and the agreement of Lab 1's Part 5 table with the benchmark's table."""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from lowbit.results import Row, parse_table, table

REPO = Path(__file__).resolve().parents[1]


def test_text_table_aligns_every_row_and_computes_the_vs_and_size_columns():
    rows = [Row("FP32", 0.9267, 32, 1_000), Row("W4 weights only, two-level (16, 4-bit scales)", 0.9220, 4, 250),
            Row("W8A8", 0.93, 8)]
    lines = table(rows).splitlines()
    assert len({line.index("%") for line in lines[1:]}) == 1, "the accuracy column is aligned on every row"
    assert "-0.47 pt" in lines[2] and "4.0×" in lines[2] and "+0.33 pt" in lines[3]
    markdown = table(rows, "markdown").splitlines()
    assert markdown[0] == "| configuration | weight bits | accuracy | vs FP32 | size vs FP32 |"
    assert markdown[2] == "| FP32 | 32 | 92.67 % | +0.00 pt | 1.0× |"
    assert parse_table(table(rows)) == parse_table(table(rows, "markdown")) == {
        "FP32": "92.67 %", "W4 weights only, two-level (16, 4-bit scales)": "92.20 %", "W8A8": "93.00 %"}
    assert "vs W8A8" in table(rows, baseline="W8A8").splitlines()[0]
    with pytest.raises(ValueError, match="baseline"):
        table(rows, baseline="FP16")
    with pytest.raises(ValueError, match="at least one row"):
        table([])


def _section(markdown: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", markdown, flags=re.M | re.S)
    assert match, f"no '## {title}' section"
    return "\n".join(line for line in match.group(1).splitlines() if line.startswith("|"))


def test_lab1_part5_table_equals_the_benchmark_table_row_for_row():
    """Issue 12: the worked solution's Part 5 (executed in course/notebooks/) and the README / RESULTS.md table
    (bench_lab1_accuracy.py) come from the same functions and must agree to the last digit."""
    notebook = nbformat.read(REPO / "course" / "notebooks" / "lab1_linear.ipynb", as_version=4)
    cell = next(c for c in notebook.cells if c.cell_type == "code" and "lowbit.results.table(rows)" in c.source)
    printed = "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream")
    lab = parse_table(printed)
    bench = parse_table(_section((REPO / "benchmarks" / "RESULTS.md").read_text(), "Lab 1 accuracy"))
    assert len(lab) == 16 and lab == bench
    readme = parse_table(_section((REPO / "README.md").read_text(), "Reference results (Lab 1)"))
    assert readme == bench
