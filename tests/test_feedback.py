"""The feedback page is scannable: summary first, failures before passes, code folded, no empty boxes."""
from __future__ import annotations

import re

from autograder.feedback import not_attempted, render

NIE = "visible test line 1: x = f(1)\nyour code raised NotImplementedError: \nTraceback ...\nNotImplementedError"


def _check(name: str, passed: bool, message: str = "", hint: str = "") -> dict:
    return {"suite": "s", "name": name, "passed": passed, "message": message, "hint": hint}


def _cell(grade_id: str, score: float, max_score: float, message: str, checks: list[dict]) -> dict:
    return {"grade_id": grade_id, "score": score, "max_score": max_score, "passed": score == max_score,
            "message": message, "checks": checks, "visible_source": f"assert {grade_id}_visible_line"}


RESULT = {
    "lab": "labX", "status": "ok", "reasons": [], "score": 4.0, "max_score": 14.0,
    "cells": [
        _cell("test_good", 4, 4, "", [_check("good check one", True), _check("good check two", True)]),
        _cell("test_bad", 0, 6, "in the hidden checks\n2 hidden checks failed: rounds half to even, ...",
              [_check("basic values", True), _check("rounds half to even", False, "expected 2, got 3", "use torch.round"),
               _check("other axes", False, "expected (1, 3), got (3, 1)")]),
        _cell("test_todo", 0, 4, NIE, [_check(f"todo check {i}", False, "NotImplementedError:") for i in range(5)]),
    ],
    "answers": [{"grade_id": "good", "type": "code", "source": "def good():\n    return 'GOOD_BODY'"},
                {"grade_id": "bad", "type": "code", "source": "def bad():\n    return 'BAD_BODY'"},
                {"grade_id": "todo", "type": "code", "source": "def todo():\n    raise NotImplementedError()"},
                {"grade_id": "q1", "type": "markdown", "source": "MY_WRITTEN_ANSWER"}],
    "manual": [{"grade_id": "q1", "max_score": 3.0}],
}


def test_summary_comes_first_with_a_row_per_cell_and_the_failed_checks_named():
    html = render("s01", RESULT)
    summary_end = html.index("</table>")
    summary = html[:summary_end]
    assert "labX: 4 / 14" in summary and "3 points for written answers, graded by hand" in summary
    for name, points, state in [("good", "4 / 4", "passed"), ("bad", "0 / 6", "failed"), ("todo", "0 / 4", "not attempted")]:
        row = re.search(rf"<tr><td><a href='#test_{name}'>{name}</a></td>(.*?)</tr>", summary).group(1)
        assert points in row and state in row
    assert "rounds half to even, other axes" in summary
    assert "GOOD_BODY" not in summary and "BAD_BODY" not in summary


def test_failed_before_not_attempted_before_passed_and_failed_checks_first():
    html = render("s01", RESULT)
    body = html[html.index("<h2>Graded cells</h2>"):]
    assert body.index("id='test_bad'") < body.index("id='test_todo'") < body.index("id='test_good'")
    bad = body[body.index("id='test_bad'"):body.index("id='test_todo'")]
    assert bad.index("rounds half to even") < bad.index("other axes") < bad.index("basic values")
    assert "hint: use torch.round" in bad


def test_code_is_folded_and_no_empty_boxes_or_repeated_summary():
    html = render("s01", RESULT)
    for body in ("GOOD_BODY", "BAD_BODY", "MY_WRITTEN_ANSWER"):
        start = html.index(body)
        assert html.rfind("<details>", 0, start) > html.rfind("</details>", 0, start), f"{body} is not folded"
    assert "<pre></pre>" not in html and "<pre>\n</pre>" not in html
    assert "2 hidden checks failed" not in html          # the hidden-part message repeats the table: not shown
    assert "What went wrong" not in html


def test_not_attempted_is_one_line_not_a_wall_of_errors():
    assert not_attempted(RESULT["cells"][2]) and not not_attempted(RESULT["cells"][1])
    assert not not_attempted(RESULT["cells"][0])
    html = render("s01", RESULT)
    assert html.count("NotImplementedError") <= 3
    assert "todo check 3" not in html


def test_visible_failure_is_shown_once_with_its_message():
    result = {**RESULT, "cells": [_cell("test_bad", 0, 6, "visible test line 2: assert_equal(...)\n✗ f(x)\n  got: 3",
                                        [_check("basic values", False, "expected 2, got 3")])]}
    html = render("s01", result)
    assert html.count("✗ f(x)") == 1 and "Visible test failed" in html
    assert not_attempted(result["cells"][0]) is False
