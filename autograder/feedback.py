"""Per-student HTML feedback: answers, visible tests, named hidden checks with messages, points per cell.

Built only from the result record, whose test sources are the *visible* parts (hidden test code never
enters a result), so the feedback cannot leak hidden checks.
"""
from __future__ import annotations

from html import escape

_STYLE = """body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;line-height:1.4}
pre{background:#f6f8fa;padding:.6em;overflow-x:auto;white-space:pre-wrap}
.pass{color:#116611}.fail{color:#aa1111}table{border-collapse:collapse}td,th{padding:.2em .6em;
border-bottom:1px solid #ddd;text-align:left;vertical-align:top}"""


def _points(value: float) -> str:
    return f"{value:g}"


def render(student_id: str, result: dict) -> str:
    """The feedback page for one student's result on one lab."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{escape(result['lab'])} — "
             f"{escape(student_id)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>{escape(result['lab'])}: {_points(result['score'])} / {_points(result['max_score'])}</h1>",
             f"<p>Student: <b>{escape(student_id)}</b> · status: <b>{escape(result['status'])}</b></p>"]
    if result.get("reasons"):
        parts.append("<ul>" + "".join(f"<li>{escape(r)}</li>" for r in result["reasons"]) + "</ul>")
    parts.append("<h2>Your answers</h2>")
    for answer in result.get("answers", []):
        parts.append(f"<h3>{escape(answer['grade_id'])}</h3><pre>{escape(answer['source'] or '(empty)')}</pre>")
    manual = result.get("manual", [])
    if manual:
        parts.append("<p>Written answers (" + ", ".join(escape(m["grade_id"]) for m in manual) +
                     ") are graded by hand.</p>")
    parts.append("<h2>Tests</h2>")
    for cell in result.get("cells", []):
        mark = "pass" if cell["passed"] else "fail"
        parts.append(f"<h3 class='{mark}'>{escape(cell['grade_id'])}: {_points(cell['score'])} / "
                     f"{_points(cell['max_score'])}</h3>")
        parts.append(f"<p>Visible test:</p><pre>{escape(cell['visible_source'])}</pre>")
        if cell["checks"]:
            rows = "".join(
                f"<tr><td class='{'pass' if c['passed'] else 'fail'}'>{'passed' if c['passed'] else 'FAILED'}</td>"
                f"<td>{escape(c['name'])}</td><td><pre>{escape(c['message'])}</pre>"
                f"{'<i>hint: ' + escape(c['hint']) + '</i>' if c.get('hint') and not c['passed'] else ''}</td></tr>"
                for c in cell["checks"])
            parts.append(f"<table><tr><th></th><th>hidden check</th><th>message</th></tr>{rows}</table>")
        if cell["message"]:
            parts.append(f"<p>What went wrong:</p><pre>{escape(cell['message'])}</pre>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
