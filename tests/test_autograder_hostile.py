"""Hostile class entries that used to stop, hang or corrupt a whole run (issue 11), each reproduced here.

Fast tests: discovery, ids, CSV, decoding, per-student outputs, the trusted reader and the seccomp filter,
without grading. The whole hostile class through the sandboxed pipeline: test_autograder_hostile_class.py.
"""
from __future__ import annotations

import csv
import io
import json
import os
import threading
import zipfile
from pathlib import Path

import pytest

from autograder import grade as grade_module
from autograder.grade import grades_csv, write_outputs
from autograder.notebook import MAX_NOTEBOOK_BYTES, parse_notebook
from autograder.runner import Course
from autograder.submissions import UnreadableSubmission, discover, read_notebook_file, unpack_zip
from autograder.text import csv_cell, printable

from autograder_helpers import FIXTURE_COURSE, FIXTURE_LAB, fixture_lab, submission

LAB = "lab1_linear"


def _by_id(found):
    return {s.student_id: s for s in found}


def test_symlinks_fifos_and_folders_named_like_the_notebook_are_rows_not_aborts(tmp_path):
    solution = tmp_path / "solution.ipynb"
    solution.write_text("{}")
    for name in ("dangling", "to_solution", "fifo", "folder", "honest", "linked_folder", "device"):
        (tmp_path / name).mkdir()
    (tmp_path / "dangling" / f"{LAB}.ipynb").symlink_to(tmp_path / "nowhere.ipynb")
    (tmp_path / "to_solution" / f"{LAB}.ipynb").symlink_to(solution)
    os.mkfifo(tmp_path / "fifo" / f"{LAB}.ipynb")
    (tmp_path / "folder" / f"{LAB}.ipynb").mkdir()
    (tmp_path / "honest" / f"{LAB}.ipynb").write_text("{}")
    os.symlink("/dev/zero", tmp_path / "device" / f"{LAB}.ipynb")
    (tmp_path / "linked_folder").rmdir()
    (tmp_path / "linked_folder").symlink_to(tmp_path / "honest")
    found = _by_id(discover(tmp_path, LAB))
    assert found["honest"].path == tmp_path / "honest" / f"{LAB}.ipynb" and not found["honest"].problem
    for student, words in (("dangling", "symbolic link"), ("to_solution", "symbolic link"), ("fifo", "FIFO"),
                           ("folder", "a folder"), ("device", "symbolic link"), ("linked_folder", "symbolic link")):
        assert found[student].path is None, student
        assert words in found[student].problem, (student, found[student].problem)


def test_reading_refuses_non_regular_files_and_checks_size_before_reading(tmp_path):
    os.mkfifo(tmp_path / "fifo.ipynb")
    result: list = []
    reader = threading.Thread(target=lambda: result.append(pytest.raises(UnreadableSubmission, read_notebook_file,
                                                                          tmp_path / "fifo.ipynb")))
    reader.start()
    reader.join(5)
    assert not reader.is_alive(), "reading a FIFO blocked"
    assert "FIFO" in str(result[0].value)
    big = tmp_path / "big.ipynb"
    with open(big, "wb") as sink:
        sink.truncate(MAX_NOTEBOOK_BYTES + 1)  # sparse: reading it whole is what the size check prevents
    with pytest.raises(UnreadableSubmission, match="larger than"):
        read_notebook_file(big)


def test_student_ids_fullmatch_and_collisions_are_refused_loudly(tmp_path):
    for name in ("alice_b", "alice b", "bob\n", "carol?", "dave"):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{LAB}.ipynb").write_text("{}")
    found = _by_id(discover(tmp_path, LAB))
    victim = found["alice_b"]
    assert victim.path == tmp_path / "alice_b" / f"{LAB}.ipynb", "the victim keeps their own notebook"
    assert "collision" in victim.problem and "'alice b'" in victim.problem
    impostor = [s for s in found.values() if s.student_id.startswith("alice_b~")]
    assert len(impostor) == 1 and impostor[0].refused and impostor[0].path is None
    assert "collision" in impostor[0].problem
    assert "bob\n" not in found, "a trailing newline is not part of a valid id"
    assert found["bob_"].path is not None and "graded as student id 'bob_'" in found["bob_"].problem
    assert found["carol_"].path is not None and not found["dave"].problem


def test_non_utf8_folder_and_file_names_become_printable_reasons(tmp_path):
    folder = tmp_path / os.fsdecode(b"stud\xffent")
    folder.mkdir()
    (folder / os.fsdecode(b"lab\xfe.ipynb")).write_text("{}")
    (sub,) = discover(tmp_path, LAB)
    assert sub.student_id == "stud_ent" and sub.path is not None
    sub.problem.encode("utf-8")  # strict: no lone surrogates left
    assert "\ufffd" in sub.problem


def test_zip_with_a_file_and_a_folder_of_the_same_name_extracts_the_rest(tmp_path):
    archive = tmp_path / "class.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr(f"mallory/{LAB}.ipynb", "{}")
        bundle.writestr(f"mallory/{LAB}.ipynb/x.ipynb", "{}")
        bundle.writestr(f"eve/{LAB}.ipynb/inner.txt", "x")
        bundle.writestr(f"honest/{LAB}.ipynb", "{}")
    root, skipped = unpack_zip(archive, tmp_path / "out")
    assert [name for name, _ in skipped] == [f"mallory/{LAB}.ipynb/x.ipynb"]
    found = _by_id(discover(root, LAB))
    assert found["honest"].path is not None and found["mallory"].path is not None
    assert found["eve"].path is None and "a folder" in found["eve"].problem


def test_csv_cells_that_start_like_formulas_are_neutralized():
    for text in ("=1+1", "+1+1", "-2+3", "@A1", "\tx", "\rx"):
        assert csv_cell(text) == "'" + text
    assert csv_cell("alice") == "alice" and csv_cell("a=b") == "a=b"
    assert printable("x\ud800y") == "x\ufffd\ufffd\ufffdy" or "\ud800" not in printable("x\ud800y")


def _result(lab, reason: str, source: str = "") -> dict:
    return {"lab": lab.name, "sandbox": "bwrap", "status": "ok", "reasons": [reason], "score": 1.0, "max_score": 6.0,
            "cells": [], "manual": [], "answers": [{"grade_id": "explain_error", "type": "markdown", "source": source}]}


def test_one_students_bad_text_cannot_stop_the_others_outputs(tmp_path):
    lab = fixture_lab()
    results = {"+1+1": _result(lab, "=HYPERLINK(\"x\")"), "honest": _result(lab, "fine"),
               "surrogate": _result(lab, "name \udcff", source="answer \ud800")}
    failures = write_outputs(lab, Course.load(FIXTURE_COURSE), tmp_path, results)
    assert failures == []
    rows = list(csv.DictReader(io.StringIO((tmp_path / "grades.csv").read_text())))
    assert [r["student_id"] for r in rows] == ["'+1+1", "honest", "surrogate"]
    assert rows[0]["reason"].startswith("'=")
    for student in results:
        assert (tmp_path / "feedback" / student / f"{lab.name}.html").read_text(encoding="utf-8")


def lone_surrogate_answer(lab) -> bytes:
    """A notebook whose markdown answer holds a JSON-escaped lone surrogate (valid JSON, not valid Unicode)."""
    return submission(lab, explain_error="my answer SURROGATE and more").replace(b"SURROGATE", b"\\ud800")


def test_a_lone_surrogate_in_a_markdown_answer_is_replaced_when_read():
    lab = fixture_lab()
    data = lone_surrogate_answer(lab)
    cells = parse_notebook(data).cells
    text = next(c.source for c in cells if "my answer" in c.source)
    text.encode("utf-8")
    assert "\ufffd" in text and "and more" in text


def test_non_utf8_bytes_in_a_notebook_are_replaced_not_fatal():
    lab = fixture_lab()
    data = submission(lab, explain_error="caf\u00e9 ok").replace("caf\u00e9".encode(), b"caf\xe9")
    text = next(c.source for c in parse_notebook(data).cells if "ok" in c.source and "caf" in c.source)
    assert text.startswith("caf\ufffd")
