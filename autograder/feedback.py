"""Per-student HTML feedback: a summary first, then each graded cell (failed first), the student's code folded.

Layout: the score, notes from grading, and one row per graded cell (points, passed / failed / not attempted,
the failed checks named); then the failed cells (visible-test failure, failed checks with message and hint,
passed checks as one line: no empty boxes), the not-attempted cells in one short list, the passed cells; the
visible test and the student's answer folded away in ``<details>``; written answers last, folded.

Built only from the result record, whose test sources are the *visible* parts (hidden test code never
enters a result), so the feedback cannot leak hidden checks.
"""
from __future__ import annotations

from html import escape

_STYLE = """body{font-family:system-ui,sans-serif;max-width:62em;margin:2em auto;padding:0 1em;line-height:1.4}
pre{background:#f6f8fa;padding:.6em;overflow-x:auto;white-space:pre-wrap;margin:.3em 0}
.pass{color:#116611}.fail{color:#aa1111}.todo{color:#8a5a00}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:.25em .7em;border-bottom:1px solid #ddd;
text-align:left;vertical-align:top}td.num{text-align:right;white-space:nowrap}
details{margin:.4em 0}summary{cursor:pointer;color:#444}section{border-top:2px solid #eee;margin-top:1.2em}
.hint{font-style:italic}"""

NOT_ATTEMPTED = "not attempted"


def _points(value: float) -> str:
    return f"{value:g}"


def not_attempted(cell: dict) -> bool:
    """True when a graded cell failed only because the student's function still raises NotImplementedError
    (the released notebook's placeholder): its visible test and every check it ran stopped there."""
    if cell.get("passed"):
        return False
    message = str(cell.get("message", ""))
    failed = [c for c in cell.get("checks", []) if not c.get("passed")]
    return ("raised NotImplementedError" in message
            and all("NotImplementedError" in str(c.get("message", "")) for c in failed))


def _state(cell: dict) -> tuple[str, str]:
    """(css class, label) of a graded cell."""
    if cell["passed"]:
        return "pass", "passed"
    if not_attempted(cell):
        return "todo", NOT_ATTEMPTED
    return "fail", "failed"


def _function(cell: dict) -> str:
    return cell["grade_id"].removeprefix("test_")


def _summary(result: dict) -> str:
    rows = []
    for cell in result.get("cells", []):
        css, label = _state(cell)
        failed = [c["name"] for c in cell["checks"] if not c["passed"]]
        named = "" if css == "todo" else ", ".join(escape(n) for n in failed)
        if css == "fail" and not cell["checks"]:
            named = "the visible test" if cell["message"].startswith("visible test") else escape(cell["message"][:200])
        rows.append(f"<tr><td><a href='#{escape(cell['grade_id'])}'>{escape(_function(cell))}</a></td>"
                    f"<td class='num'>{_points(cell['score'])} / {_points(cell['max_score'])}</td>"
                    f"<td class='{css}'>{label}</td><td>{named}</td></tr>")
    return ("<table><tr><th>graded cell</th><th>points</th><th>result</th><th>failed checks</th></tr>"
            + "".join(rows) + "</table>")


def _folded(label: str, text: str) -> str:
    return f"<details><summary>{escape(label)}</summary><pre>{escape(text or '(empty)')}</pre></details>"


def _cell_section(cell: dict, answer: str | None) -> str:
    css, label = _state(cell)
    parts = [f"<section id='{escape(cell['grade_id'])}'><h3 class='{css}'>{escape(_function(cell))}: "
             f"{_points(cell['score'])} / {_points(cell['max_score'])} — {label}</h3>"]
    if cell["message"] and not cell["message"].startswith("in the hidden checks"):
        # the visible test's failure (or why the cell was not graded); hidden failures are listed below
        what = "Visible test failed" if cell["message"].startswith("visible test") else "Not graded"
        parts.append(f"<p>{what}:</p><pre>{escape(cell['message'])}</pre>")
    failed = [c for c in cell["checks"] if not c["passed"]]
    if failed:
        rows = "".join(
            f"<tr><td class='fail'>FAILED</td><td>{escape(c['name'])}</td><td>"
            + (f"<pre>{escape(c['message'])}</pre>" if c.get("message", "").strip() else "")
            + (f"<div class='hint'>hint: {escape(c['hint'])}</div>" if c.get("hint") else "") + "</td></tr>"
            for c in failed)
        parts.append(f"<table><tr><th></th><th>hidden check</th><th>message</th></tr>{rows}</table>")
    passed = [c["name"] for c in cell["checks"] if c["passed"]]
    if passed:
        parts.append(f"<p class='pass'>{len(passed)} hidden check{'s' if len(passed) != 1 else ''} passed: "
                     + " · ".join(escape(name) for name in passed) + "</p>")
    if cell.get("visible_source"):
        parts.append(_folded("Visible test", cell["visible_source"]))
    if answer is not None:
        parts.append(_folded("Your code", answer))
    parts.append("</section>")
    return "".join(parts)


def _not_attempted_section(cells: list[dict], answers: dict[str, str]) -> str:
    items = "".join(f"<li id='{escape(c['grade_id'])}'><b>{escape(_function(c))}</b> (0 / {_points(c['max_score'])})"
                    + (_folded("Your code", answers[_function(c)]) if _function(c) in answers else "") + "</li>"
                    for c in cells)
    return (f"<section><h3 class='todo'>Not attempted: {len(cells)} cell{'s' if len(cells) != 1 else ''}</h3>"
            "<p>These functions still raise <code>NotImplementedError</code> (the placeholder of the released "
            f"notebook): replace that line with your code.</p><ul>{items}</ul></section>")


def render(student_id: str, result: dict) -> str:
    """The feedback page for one student's result on one lab."""
    manual = result.get("manual", [])
    hand_points = sum(float(m.get("max_score", 0)) for m in manual)
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{escape(result['lab'])} — "
             f"{escape(student_id)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>{escape(result['lab'])}: {_points(result['score'])} / {_points(result['max_score'])}</h1>",
             f"<p>Student: <b>{escape(student_id)}</b> · status: <b>{escape(result['status'])}</b>"
             + (f" · plus up to {_points(hand_points)} points for written answers, graded by hand" if manual else "")
             + "</p>"]
    if result.get("reasons"):
        parts.append("<ul>" + "".join(f"<li>{escape(r)}</li>" for r in result["reasons"]) + "</ul>")
    cells = result.get("cells", [])
    if cells:
        parts.append(_summary(result))
    answers = {a["grade_id"]: a["source"] for a in result.get("answers", [])}
    if cells:
        parts.append("<h2>Graded cells</h2>")
    states = [_state(cell)[0] for cell in cells]
    parts.extend(_cell_section(c, answers.get(_function(c))) for c, s in zip(cells, states) if s == "fail")
    todo = [c for c, s in zip(cells, states) if s == "todo"]
    if todo:
        parts.append(_not_attempted_section(todo, answers))
    parts.extend(_cell_section(c, answers.get(_function(c))) for c, s in zip(cells, states) if s == "pass")
    if manual:
        parts.append("<h2>Written answers (graded by hand)</h2>")
        for item in manual:
            parts.append(f"<details><summary>{escape(item['grade_id'])} ({_points(item['max_score'])} points)"
                         f"</summary><pre>{escape(answers.get(item['grade_id']) or '(empty)')}</pre></details>")
    shown = {_function(c) for c in cells} | {m["grade_id"] for m in manual}
    others = [(gid, source) for gid, source in answers.items() if gid not in shown]
    if others:
        parts.append("<h2>Your other answer cells</h2>")
        parts.extend(f"<details><summary>{escape(gid)}</summary><pre>{escape(source or '(empty)')}</pre></details>"
                     for gid, source in others)
    parts.append("</body></html>\n")
    return "\n".join(parts)
