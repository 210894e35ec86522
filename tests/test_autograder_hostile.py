"""Hostile class entries that used to stop, hang or corrupt a whole run (issue 11), each reproduced here.

Fast tests: discovery, ids, CSV, decoding, per-student outputs, the trusted reader and the seccomp filter,
without grading. The whole hostile class through the sandboxed pipeline: test_autograder_hostile_class.py.
"""
from __future__ import annotations

import csv
import io
import os
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
import torch

from autograder import seccomp, wire
from autograder.cgroups import memory_cgroups
from autograder.grade import write_outputs
from autograder.notebook import MAX_NOTEBOOK_BYTES, parse_notebook
from autograder.runner import Course, budget, flag_slow, within_budget
from autograder.sandbox import Breach, Limits, Sandbox, TimeBudget, bwrap_problem
from autograder.submissions import UnreadableSubmission, discover, read_notebook_file, unpack_zip
from autograder.text import csv_cell, printable

from autograder_helpers import FIXTURE_COURSE, STALL_REQUEST_PIPE, fixture_lab, submission

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


# -- the trusted reader ---------------------------------------------------------------------------------
def test_reader_refuses_a_line_past_the_cap_as_it_arrives():
    reader = wire.LineReader(max_bytes=1 << 20)
    chunk = b"[]," * 100_000
    with pytest.raises(wire.WireError, match="exceeded 1 MiB"):
        for _ in range(100):  # 30 MB would arrive; refused once past 1 MiB, before any parsing
            reader.feed(chunk)
            assert reader.line() is None
    assert len(reader.buffer) < (1 << 20) + len(chunk)


def test_reader_splits_lines_and_counts_items_before_parsing():
    reader = wire.LineReader(max_bytes=1 << 20)
    reader.feed(b'{"a": 1}\n{"b"')
    assert wire.loads(reader.line()) == {"a": 1}
    assert reader.line() is None
    reader.feed(b': 2}\n')
    assert wire.loads(reader.line()) == {"b": 2}
    with pytest.raises(wire.WireError, match="more than 1000 values"):
        wire.loads(b'{"v": [' + b"[]," * 1000 + b"[]]}", max_items=1000)


# -- the sandbox itself ------------------------------------------------------------------------------------
needs_bwrap = pytest.mark.skipif(bwrap_problem() is not None, reason=f"no usable bwrap: {bwrap_problem()}")
STALL = STALL_REQUEST_PIPE + "def f(x):\n    return 0\n"


def _started(sandbox: Sandbox, source: str) -> dict:
    sandbox.send({"cells": [{"key": "answer", "source": source, "student": True}], "protected": [],
                  "sys_path": sandbox.sys_path()})
    while True:
        message = sandbox.receive(30)
        if message.get("event") == "ready":
            return message


def _in_thread(fn, seconds: float):
    outcome: list = []

    def run():
        try:
            outcome.append(fn())
        except BaseException as exc:  # noqa: BLE001
            outcome.append(exc)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still blocked after {seconds} s"
    return outcome[0]


@needs_bwrap
def test_a_worker_that_stops_reading_cannot_block_the_graders_write():
    sandbox = Sandbox("bwrap", Limits(wall_seconds=60, call_seconds=3))
    try:
        _started(sandbox, STALL)
        big = wire.encode([torch.zeros(1 << 20)])  # a 5 MiB request into a 4 KiB pipe nobody reads
        outcome = _in_thread(lambda: sandbox.request("call", name="f", args=big, kwargs=wire.encode({})), 20)
        assert isinstance(outcome, Breach) and outcome.status == "timeout", outcome
        assert "one call (3 s)" in outcome.reason
    finally:
        sandbox.close()


@needs_bwrap
def test_the_watchdog_kills_at_the_wall_limit_while_nothing_is_exchanged():
    sandbox = Sandbox("bwrap", Limits(wall_seconds=4))
    try:
        _started(sandbox, "x = 1")
        deadline = time.monotonic() + 30
        while sandbox.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sandbox.expired and sandbox.proc.poll() is not None
        outcome = _in_thread(lambda: sandbox.request("get", name="x"), 10)
        assert isinstance(outcome, Breach) and outcome.status == "timeout", outcome
    finally:
        sandbox.close()


@needs_bwrap
@pytest.mark.skipif(memory_cgroups().startswith("RLIMIT"), reason="no writable memory cgroup on this machine")
def test_memory_in_tmpfs_files_counts_against_the_sandbox_and_is_reported_as_memory():
    hoard = ("for i in range(40):\n"
             "    with open(f'/tmp/hoard{i}', 'wb') as f:\n"
             "        for _ in range(30):\n"
             "            f.write(b'x' * (1 << 20))\n")
    limits = Limits(wall_seconds=60, memory_bytes=512 << 20, tmp_bytes=2 << 30)
    sandbox = Sandbox("bwrap", limits)
    try:
        outcome = _in_thread(lambda: _started(sandbox, hoard), 60)
        assert isinstance(outcome, Breach) and outcome.status == "memory", outcome
    finally:
        sandbox.close()


@needs_bwrap
def test_a_sigkill_the_grader_did_not_send_is_crashed_not_memory():
    sandbox = Sandbox("bwrap", Limits(wall_seconds=60))
    try:
        _started(sandbox, "import os, signal\ndef f():\n    os.kill(os.getpid(), signal.SIGKILL)\n")
        outcome = _in_thread(lambda: sandbox.request("call", name="f", args=[], kwargs=wire.encode({})), 20)
        assert isinstance(outcome, Breach) and outcome.status == "crashed", outcome
        assert "SIGKILL" in outcome.reason
    finally:
        sandbox.close()


PROBE = """import ctypes, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)
def checked(fn, *args):
    if fn(*args) != 0:
        raise OSError(ctypes.get_errno(), "refused")
def errno_of(call):
    try:
        call()
        return 0
    except OSError as exc:
        return exc.errno
def fork_and_wait():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
probe = {
    "unshare_user": errno_of(lambda: checked(libc.unshare, 0x10000000)),
    "ptrace": errno_of(lambda: checked(libc.ptrace, 0, 0, None, None)),
    "memfd": errno_of(lambda: os.memfd_create("x")),
    "shared_anon_mmap": errno_of(lambda: mmap.mmap(-1, 1 << 20)),
    "private_mmap": errno_of(lambda: mmap.mmap(-1, 1 << 20, flags=mmap.MAP_PRIVATE)),
    "fork": errno_of(fork_and_wait),
    "executable": sys.executable, "path": " ".join(sys.path),
}
"""


@needs_bwrap
@pytest.mark.skipif(seccomp.filter_program() is None, reason="the seccomp filter is built for x86-64 only")
def test_seccomp_refuses_namespaces_ptrace_and_uncounted_memory_and_host_paths_are_hidden():
    sandbox = Sandbox("bwrap", Limits(wall_seconds=60))
    try:
        _started(sandbox, PROBE)
        probe = wire.decode(sandbox.request("get", name="probe")["value"])
    finally:
        sandbox.close()
    assert probe["unshare_user"] == probe["ptrace"] == probe["memfd"] == probe["shared_anon_mmap"] == 1  # EPERM
    assert probe["private_mmap"] == 0 and probe["fork"] == 0
    for host in (sys.base_prefix, sys.prefix, str(Path(__file__).resolve().parents[1])):
        assert host not in probe["executable"] and host not in probe["path"], (host, probe)


def test_time_budgets_follow_the_reference_with_factor_floor_ceiling_and_load():
    timing = {"cells": {"<start-up>": 3.0, "answer": 0.01}, "tests": {"t1": 0.2, "t2": 2.5}, "total": 20.0}
    ceilings = Limits(wall_seconds=600, call_seconds=60, cell_seconds=25)
    applied = budget(ceilings, timing, TimeBudget(factor=10, floor_seconds=10, total_factor=5,
                                                   total_floor_seconds=60, slow_factor=3))
    assert dict(applied.cell_budgets) == {"<start-up>": 25.0, "answer": 10.0}  # capped at 25; floor 10
    assert applied.call_seconds == 25.0 and applied.wall_seconds == 100.0 and applied.slow_seconds == 60.0
    loaded = budget(ceilings, timing, TimeBudget(), load=4.0)  # 8 jobs on 2 cores
    assert loaded.wall_seconds == 400.0 and loaded.call_seconds == 60.0
    assert budget(Limits(wall_seconds=30), timing).wall_seconds == 30.0  # never above the ceiling


def test_a_result_graded_before_the_budget_is_kept_only_if_it_fits_the_budget():
    applied = Limits(wall_seconds=60, call_seconds=10, cell_budgets=(("<start-up>", 20.0),), cell_seconds=10,
                     slow_seconds=30)
    fits = {"status": "ok", "reasons": [], "timing": {"cells": {"<start-up>": 15.0, "answer": 2.0},
                                                      "tests": {"t": 9.0}, "total": 35.0}}
    assert within_budget(fits, applied)
    for key, value in (("cells", {"<start-up>": 21.0}), ("tests", {"t": 11.0}), ("total", 61.0)):
        assert not within_budget({**fits, "timing": {**fits["timing"], key: value}}, applied), key
    assert not within_budget({**fits, "status": "timeout"}, applied)
    flag_slow(fits, applied)  # 35 s > 30 s: slow, and says so
    assert fits["status"] == "slow" and "slower than the reference" in fits["reasons"][-1]
