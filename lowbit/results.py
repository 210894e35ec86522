"""Results tables: rows of (configuration, accuracy[, weight bits][, size]) → Markdown or aligned text.

One helper for the labs' summary tables and the benchmarks' README / RESULTS.md tables, so a lab's table and
its reference table are printed the same way and can be compared line by line::

    rows = [Row("FP32", 0.9267, bits=32), Row("W8A8 static, min-max", 0.9260, bits=8)]
    print(table(rows))                     # aligned text; table(rows, "markdown") for a README

The first row is the baseline of the "vs FP32" column unless ``baseline`` names another. Accuracies are
fractions in [0, 1], printed as percentages with two decimals; differences in points. ``size_bits`` adds a
"size vs FP32" column (baseline size / row size, e.g. ``7.6×``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

__all__ = ["Row", "table", "parse_table"]


@dataclass(frozen=True)
class Row:
    """One configuration: ``name``, ``accuracy`` in [0, 1], optional weight ``bits`` and model ``size_bits``."""

    name: str
    accuracy: float
    bits: float | None = None
    size_bits: int | None = None


def _cells(rows: Sequence[Row], baseline: Row, vs: str) -> tuple[list[str], list[list[str]]]:
    show_bits = any(r.bits is not None for r in rows)
    show_size = any(r.size_bits is not None for r in rows)
    header = ["configuration"] + (["weight bits"] if show_bits else []) + ["accuracy", f"vs {vs}"]
    header += [f"size vs {vs}"] if show_size else []
    body = []
    for row in rows:
        cells = [row.name]
        if show_bits:
            cells.append("" if row.bits is None else f"{row.bits:g}")
        cells += [f"{100 * row.accuracy:.2f} %", f"{100 * (row.accuracy - baseline.accuracy):+.2f} pt"]
        if show_size:
            ratio = None if row.size_bits is None or baseline.size_bits is None else baseline.size_bits / row.size_bits
            cells.append("" if ratio is None else f"{ratio:.1f}×")
        body.append(cells)
    return header, body


def table(rows: Sequence[Row], fmt: str = "text", baseline: str | None = None) -> str:
    """The rows as ``fmt`` ``"text"`` (columns aligned to the longest entry) or ``"markdown"``.

    ``baseline``: the name of the row the "vs" columns compare with (default: the first row; its name is
    the column label, e.g. "vs FP32"). Raises ValueError for no rows, an unknown baseline or format.
    """
    if not rows:
        raise ValueError("table() needs at least one row")
    if fmt not in ("text", "markdown"):
        raise ValueError(f"fmt must be 'text' or 'markdown', got {fmt!r}")
    base = rows[0] if baseline is None else next((r for r in rows if r.name == baseline), None)
    if base is None:
        raise ValueError(f"baseline {baseline!r} is not a row name; rows: {[r.name for r in rows]}")
    header, body = _cells(rows, base, base.name)
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in body])
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(header)] + [line(cells) for cells in body])


def parse_table(text: str) -> dict[str, str]:
    """``{configuration: accuracy cell}`` (e.g. ``"92.67 %"``) of a table printed by ``table`` in either format,
    to compare two tables (columns of the text format are separated by two or more spaces)."""
    parsed = {}
    for raw in text.strip().splitlines()[1:]:
        if raw.startswith("|---"):
            continue
        cells = [c.strip() for c in raw.strip().strip("|").split("|")] if raw.startswith("|") \
            else re.split(r"\s{2,}", raw.strip())
        parsed[cells[0]] = next(c for c in cells[1:] if re.fullmatch(r"-?\d+\.\d+ %", c))
    return parsed
