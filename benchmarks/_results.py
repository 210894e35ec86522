"""Write one "## Title" section of benchmarks/RESULTS.md, replacing that section if it is already there."""
from __future__ import annotations

import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def write_section(title: str, body: str) -> None:
    """Put ``## {title}`` followed by ``body`` into RESULTS.md (replacing an existing section of that title)."""
    section = f"## {title}\n\n{body.strip()}\n"
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    heading = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", flags=re.M | re.S)
    if heading.search(text):
        text = heading.sub(lambda _: section + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text)
    print(f"wrote the {title!r} section of {RESULTS}")
