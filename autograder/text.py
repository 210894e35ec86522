"""Text that came from a submission, made safe for the files grading writes (JSON, CSV, HTML, SQLite)."""
from __future__ import annotations

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def printable(text: str) -> str:
    """``text`` (a file name, notebook text) as valid UTF-8 text: undecodable bytes and lone surrogates -> U+FFFD."""
    try:
        raw = text.encode("utf-8", "surrogateescape")  # names from the file system: the original bytes
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogatepass")    # lone surrogates from JSON ("\\ud800")
    return raw.decode("utf-8", "replace")


def csv_cell(text: str) -> str:
    """A CSV cell a spreadsheet shows as text: cells starting with = + - @ tab or CR get a leading apostrophe
    (OWASP's advice against CSV formula injection)."""
    text = printable(text)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text
