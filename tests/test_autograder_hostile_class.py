"""Issue 11's hostile class, all at once, through the real sandboxed pipeline (bwrap, 2 jobs, as CI runs it):
every attack that used to stop, hang or corrupt a class's grading sits beside honest and blank students.
The run must finish in bounded time, every honest grade intact, every hostile entry reported in its own row.
"""
from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from pathlib import Path

import pytest

from autograder.grade import grade_class
from autograder.sandbox import Limits, TimeBudget, bwrap_problem

from autograder_helpers import (FIXTURE_COURSE, FIXTURE_LAB, STALL_REQUEST_PIPE, fixture_lab, submission,
                                write_class)

pytestmark = [pytest.mark.xdist_group("autograder-hostile"),
              pytest.mark.skipif(bwrap_problem() is not None, reason=f"no usable bwrap: {bwrap_problem()}")]

REPO = Path(__file__).resolve().parents[1]
#: ceilings; the applied limits follow from the reference's timing with this (test-sized) budget
LIMITS = Limits(wall_seconds=90, call_seconds=10, cpu_seconds=90)
BUDGET = TimeBudget(factor=10, floor_seconds=6, total_factor=5, total_floor_seconds=30, slow_factor=2)
HONEST = ("honest", "alice_b", "+1+1", "surrogate_answer")
CORRECT_QUANTIZE = """    q_min, q_max = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return torch.clamp(torch.round(x / scale), q_min, q_max).to(torch.int8)"""
WRONG_QUANTIZE = "    return torch.zeros_like(x, dtype=torch.int8)"


def _rewarded_if(condition_code: str, lab) -> bytes:
    """A submission whose quantize_symmetric is correct only if ``condition_code`` (run in the sandbox at
    start-up, setting ``_escaped``) managed the escape: its test cell scoring 0 proves the attack failed."""
    return submission(lab, quantize_symmetric=(
        "_escaped = False\n" + condition_code + "\n"
        "def quantize_symmetric(x, scale, bits):\n"
        "    if _escaped:\n" + CORRECT_QUANTIZE.replace("    ", "        ", 2) + "\n" + WRONG_QUANTIZE + "\n"))


STALL_PIPE = STALL_REQUEST_PIPE + """def symmetric_scale(x, bits):
    return x.abs().max().to(torch.float32) / (2 ** (bits - 1) - 1)
"""
SHARED_MEMORY = """import mmap, os
_gib = 1 << 30
for _attempt in ("mmap", "memfd", "shm", "tmp"):
    try:
        if _attempt == "mmap":
            _m = mmap.mmap(-1, 4 * _gib)
            _m[::4096] = b"x" * (4 * _gib // 4096)
            _escaped = True
        elif _attempt == "memfd":
            _fd = os.memfd_create("hoard")
            os.ftruncate(_fd, 4 * _gib)
            _escaped = True
        else:
            _path = "/dev/shm/hoard" if _attempt == "shm" else "/tmp/hoard"
            with open(_path, "wb") as _f:
                for _ in range(1024 + 1):
                    _f.write(b"x" * (1 << 20))
            _escaped = True
    except (OSError, ValueError, MemoryError):
        pass
"""
NAMESPACES_AND_PTRACE = """import ctypes, os
_libc = ctypes.CDLL(None, use_errno=True)
for _flag in (0x10000000, 0x40000000, 0x00020000):  # CLONE_NEWUSER, CLONE_NEWNET, CLONE_NEWNS
    if _libc.unshare(_flag) == 0:
        _escaped = True
if _libc.ptrace(0, 0, None, None) == 0:  # PTRACE_TRACEME
    _escaped = True
"""


def _host_paths_visible() -> str:
    paths = [str(Path(sys.base_prefix).resolve()), str(Path(sys.prefix)), str(REPO), str(REPO / "lowbit")]
    return (f"import os, sys\n_escaped = any(os.path.exists(p) for p in {paths!r}) or "
            f"any(p in sys.executable or p in ' '.join(sys.path) for p in {paths!r})\n")


def _hostile_class(lab, root: Path) -> Path:
    good = submission(lab)
    sleeps = "import time\ndef symmetric_scale(x, bits):\n    time.sleep({})\n" \
             "    if x.abs().max() == 0:\n        raise ValueError('all zeros')\n" \
             "    return x.abs().max().to(torch.float32) / (2 ** (bits - 1) - 1)\n"
    notebooks = {
        "honest": good, "alice_b": good, "alice b": submission(lab, symmetric_scale=""), "+1+1": good,
        "@A1": submission(lab, symmetric_scale="", quantize_symmetric="", dequantize=""), "-2+3": good,
        "blank": fill_blank(lab),
        "stall_pipe": submission(lab, symmetric_scale=STALL_PIPE),
        "sleeps_near_call_limit": submission(lab, symmetric_scale=sleeps.format(5)),
        "slow_but_finishes": submission(lab, symmetric_scale=sleeps.format(2.5)),
        "loop_in_answer_cell": submission(lab, dequantize="while True:\n    pass\n"),
        "reply_too_large": submission(lab, dequantize="def dequantize(q, scale):\n    return 'x' * (12 << 20)\n"),
        "reply_too_many_items": submission(lab, dequantize="def dequantize(q, scale):\n    return [0] * 1_200_000\n"),
        "shared_memory": _rewarded_if(SHARED_MEMORY, lab),
        "namespaces_ptrace": _rewarded_if(NAMESPACES_AND_PTRACE, lab),
        "host_paths": _rewarded_if(_host_paths_visible(), lab),
    }
    write_class(root, FIXTURE_LAB, notebooks)
    (root / "surrogate_answer").mkdir()
    (root / "surrogate_answer" / f"{FIXTURE_LAB}.ipynb").write_bytes(
        submission(lab, explain_error="my answer SURROGATE").replace(b"SURROGATE", b"\\ud800"))
    for name in ("folder_named_notebook", "dangling_link", "fifo", "link_to_solution", "bad_file_name"):
        (root / name).mkdir()
    (root / "folder_named_notebook" / f"{FIXTURE_LAB}.ipynb").mkdir()
    (root / "dangling_link" / f"{FIXTURE_LAB}.ipynb").symlink_to(root / "nowhere.ipynb")
    os.mkfifo(root / "fifo" / f"{FIXTURE_LAB}.ipynb")
    (root / "link_to_solution" / f"{FIXTURE_LAB}.ipynb").symlink_to(
        FIXTURE_COURSE / "solutions" / FIXTURE_LAB / f"{FIXTURE_LAB}.ipynb")
    (root / "bad_file_name" / os.fsdecode(b"fixture\xff.ipynb")).write_bytes(good)
    return root


def fill_blank(lab) -> bytes:
    return lab.released_bytes


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    root = _hostile_class(fixture_lab(), tmp / "class")
    start = time.monotonic()
    results = grade_class(FIXTURE_LAB, root, tmp / "out", FIXTURE_COURSE, jobs=2, limits=LIMITS, progress=False,
                          time_budget=BUDGET)
    seconds = time.monotonic() - start
    return {"results": results, "seconds": seconds, "out": tmp / "out", "root": root}


def row(graded, student):
    return graded["results"][student]


def score(graded, student, grade_id):
    return next(c["score"] for c in row(graded, student)["cells"] if c["grade_id"] == grade_id)


def test_the_class_finishes_in_bounded_time(graded):
    # the slowest entries are bounded by the lab's budget (30 s floor), not by the 90 s ceiling or 600 s
    assert graded["seconds"] < 240, graded["seconds"]
    reference = json.loads((graded["out"] / "reference.json").read_text())
    assert reference["score"] == reference["max_score"] == 6.0


def test_every_honest_grade_is_intact(graded):
    for student in HONEST:
        assert row(graded, student)["score"] == 6.0, (student, row(graded, student)["reasons"])
        assert row(graded, student)["status"] == "ok", (student, row(graded, student)["reasons"])
    assert row(graded, "bad_file_name")["score"] == 6.0
    assert row(graded, "blank")["score"] == 0 and row(graded, "@A1")["score"] == 0


def test_id_collision_is_refused_loudly_and_the_victim_keeps_their_grade(graded):
    impostor = [s for s in graded["results"] if s.startswith("alice_b~")]
    assert len(impostor) == 1
    assert row(graded, impostor[0])["status"] == "invalid-notebook"
    assert any("collision" in r for r in row(graded, impostor[0])["reasons"])
    assert any("collision" in r for r in row(graded, "alice_b")["reasons"])


@pytest.mark.parametrize("student, words", [
    ("folder_named_notebook", "is a folder"), ("dangling_link", "symbolic link"), ("fifo", "FIFO"),
    ("link_to_solution", "symbolic link")])
def test_non_regular_notebooks_are_invalid_rows(graded, student, words):
    result = row(graded, student)
    assert result["status"] == "invalid-notebook" and result["score"] == 0
    assert any(words in r for r in result["reasons"]), result["reasons"]


def test_a_link_to_the_solutions_never_shows_the_solution(graded):
    html = (graded["out"] / "feedback" / "link_to_solution" / f"{FIXTURE_LAB}.html").read_text()
    assert "BEGIN SOLUTION" not in html and "max_abs" not in html


def test_csv_neutralizes_formula_ids_and_every_student_has_feedback(graded):
    rows = list(csv.DictReader(io.StringIO((graded["out"] / "grades.csv").read_text(encoding="utf-8"))))
    ids = {r["student_id"] for r in rows}
    assert {"'+1+1", "'-2+3", "'@A1"} <= ids
    assert not [i for i in ids if i[0] in "=+-@\t\r"]
    for student in graded["results"]:
        assert (graded["out"] / "feedback" / student / f"{FIXTURE_LAB}.html").is_file(), student


@pytest.mark.parametrize("student", ["stall_pipe", "sleeps_near_call_limit", "loop_in_answer_cell"])
def test_stalls_sleeps_and_loops_end_as_timeouts(graded, student):
    result = row(graded, student)
    assert result["status"] == "timeout", result["reasons"]
    assert result["score"] < 6.0


def test_a_far_slower_submission_is_flagged_slow_and_keeps_its_score(graded):
    result = row(graded, "slow_but_finishes")
    assert result["status"] == "slow", result["reasons"]
    assert result["score"] == 6.0


@pytest.mark.parametrize("student, words", [("reply_too_large", "exceeded"), ("reply_too_many_items", "values")])
def test_oversized_replies_are_refused_before_parsing(graded, student, words):
    result = row(graded, student)
    assert result["status"] == "crashed" and any(words in r for r in result["reasons"]), result["reasons"]
    assert score(graded, student, "test_dequantize") == 0


@pytest.mark.parametrize("student", ["shared_memory", "namespaces_ptrace", "host_paths"])
def test_sandbox_escapes_fail(graded, student):
    assert score(graded, student, "test_quantize_symmetric") == 0, row(graded, student)["reasons"]
    assert score(graded, student, "test_dequantize") == 1.0  # the rest of the notebook was graded


def test_a_rerun_reuses_every_result_and_writes_the_same_csv(graded, tmp_path):
    before = (graded["out"] / "grades.csv").read_bytes()
    start = time.monotonic()
    again = grade_class(FIXTURE_LAB, graded["root"], graded["out"], FIXTURE_COURSE, jobs=2, limits=LIMITS,
                        progress=False, time_budget=BUDGET)
    assert time.monotonic() - start < 60
    assert again == graded["results"]
    assert (graded["out"] / "grades.csv").read_bytes() == before
