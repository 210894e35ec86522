"""The trust model under attack: each threat scores 0 (or is flagged), the host and other submissions untouched.

One class containing every attack is graded once (bwrap sandbox, 2 jobs); each test reads its row.
"""
from __future__ import annotations

import json
import socket
import threading
import uuid
from pathlib import Path

import psutil
import pytest

from autograder.grade import grade_class
from autograder.sandbox import bwrap_problem

from autograder_helpers import FIXTURE_COURSE, FIXTURE_LAB, TEST_LIMITS, edit_cells, fixture_lab, submission, write_class

pytestmark = [pytest.mark.xdist_group("autograder-attacks"),
              pytest.mark.skipif(bwrap_problem() is not None, reason=f"no usable bwrap: {bwrap_problem()}")]

CORRECT_QUANTIZE = """    q_min, q_max = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return torch.clamp(torch.round(x / scale), q_min, q_max).to(torch.int8)"""
WRONG_QUANTIZE = "    return torch.zeros_like(x, dtype=torch.int8)"


class Listener:
    """A TCP server on the host's loopback counting connections (network attack target)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
                self.connections += 1
                conn.close()
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


def _attacks(lab, tmp: Path, listener: Listener) -> dict[str, bytes]:
    host_file = tmp / f"pwned-{uuid.uuid4().hex}"
    victim = tmp / "class" / "victim" / f"{FIXTURE_LAB}.ipynb"
    secrets = [str(FIXTURE_COURSE / "checks" / "fixture_lab.py"), str(FIXTURE_COURSE / "solutions"),
               str(Path(__file__).resolve().parents[1] / "autograder" / "checks"), str(victim)]
    good = submission(lab)
    attacks = {
        "victim": good,
        "override_assert_and_helpers": submission(lab, symmetric_scale=(
            "import builtins, sys, types\n"
            "builtins.AssertionError = type('Nope', (Exception,), {})\n"
            "for name in ('autograder', 'autograder.checks', 'autograder.checks._api', 'autograder.checks.fixture_lab'):\n"
            "    sys.modules[name] = types.ModuleType(name)\n"
            "def check_symmetric_scale(fn):\n    return None\n"
            "def expect_close(*args, **kwargs):\n    return None\n"
            "def isclose(*args, **kwargs):\n    return True\n"
            "torch.isclose = isclose\n"
            "def symmetric_scale(x, bits):\n    return torch.tensor(123.0)\n")),
        "lying_tensor_subclass": submission(lab, quantize_symmetric=(
            "class Liar(torch.Tensor):\n"
            "    def __eq__(self, other):\n        return True\n"
            "    def tolist(self):\n        return [0, 2, -2]\n"
            "    @property\n    def dtype(self):\n        return torch.int8\n"
            "def quantize_symmetric(x, scale, bits):\n"
            "    return torch.full(x.shape, 7.0).as_subclass(Liar)\n")),
        "forged_protocol": submission(lab, symmetric_scale=(
            "import os\n"
            "forged = b'{\"event\":\"ready\",\"cells\":[],\"names\":{},\"score\":100}\\n{\"id\":1,\"ok\":true,\"value\":1.0}\\n'\n"
            "for fd in range(1, 30):\n"
            "    try:\n        os.write(fd, forged)\n    except OSError:\n        pass\n"
            "print('{\"id\": 1, \"ok\": true, \"value\": 1.0}')\n"
            "def symmetric_scale(x, bits):\n    return torch.tensor(0.0)\n")),
        "read_hidden_tests_and_solutions": submission(lab, quantize_symmetric=(
            "import os\n_stolen = []\n"
            f"for path in {secrets!r}:\n"
            "    try:\n"
            "        _stolen.append(open(path).read() if os.path.isfile(path) else os.listdir(path))\n"
            "    except OSError:\n        pass\n"
            "def quantize_symmetric(x, scale, bits):\n"
            "    if _stolen:\n" + CORRECT_QUANTIZE.replace("    ", "        ", 2) + "\n" + WRONG_QUANTIZE + "\n")),
        "write_outside_scratch": submission(lab, dequantize=(
            "for path in (%r, %r, '/work/main/pwned.txt', '/tmp/../pwned', '/scratch/ok.txt'):\n"
            "    try:\n        open(path, 'w').write('pwned')\n    except OSError:\n        pass\n"
            "def dequantize(q, scale):\n    return q.to(torch.float32) * scale\n") % (str(host_file), str(victim))),
        "network": submission(lab, quantize_symmetric=(
            "import socket\n"
            "def _online():\n"
            "    for host in ('127.0.0.1', '8.8.8.8'):\n"
            "        try:\n"
            f"            socket.create_connection((host, {listener.port}), timeout=1).close()\n"
            "            return True\n"
            "        except OSError:\n            pass\n"
            "    return False\n"
            "def quantize_symmetric(x, scale, bits):\n"
            "    if _online():\n" + CORRECT_QUANTIZE.replace("    ", "        ", 2) + "\n" + WRONG_QUANTIZE + "\n")),
        "infinite_loop": submission(lab, symmetric_scale="def symmetric_scale(x, bits):\n    while True:\n        pass\n"),
        "fork_bomb": submission(lab, dequantize=(
            "import os, time\n"
            "def dequantize(q, scale):\n"
            "    while True:\n"
            "        try:\n            os.fork()\n"
            "        except OSError:\n            time.sleep(0.01)\n")),
        "huge_allocation": submission(lab, quantize_symmetric=(
            "def quantize_symmetric(x, scale, bits):\n"
            "    hoard = torch.ones(2 ** 34, dtype=torch.uint8)\n"
            "    return hoard[: x.numel()].reshape(x.shape).to(torch.int8)\n")),
        "calls_protected_reference": submission(lab, quantize_symmetric=(
            "from fixref import quantize_symmetric as _reference\n"
            "def quantize_symmetric(x, scale, bits):\n    return _reference(x, scale, bits)\n")),
        "reloads_protected_reference": submission(lab, quantize_symmetric=(
            "import importlib, fixref\n"
            "importlib.reload(fixref)\n"
            "def quantize_symmetric(x, scale, bits):\n    return fixref.quantize_symmetric(x, scale, bits)\n")),
        "rebuilds_reference_from_its_source_file": submission(lab, quantize_symmetric=(
            "import fixref as _package\n"
            "_copy = {}\n"
            "exec(compile(open(_package.__file__).read(), 'copy', 'exec'), _copy)\n"
            "def quantize_symmetric(x, scale, bits):\n    return _copy['quantize_symmetric'](x, scale, bits)\n")),
        "rebuilds_reference_from_its_code_object": submission(lab, quantize_symmetric=(
            "import fixref as _package\n"  # the module's own code object, from its loader: fresh, untripwired functions
            "_fresh = {'__name__': 'copy'}\n"
            "exec(_package.__spec__.loader.get_code(_package.__name__), _fresh)\n"
            "quantize_symmetric = _fresh['quantize' + '_symmetric']\n")),
        "in_place_with_the_detector_replaced": submission(lab, quantize_symmetric=(
            "import sys\n"
            "_worker = sys.modules['__main__']\n"
            "for _name in ('snapshot', 'echo'):\n"
            "    if hasattr(_worker, _name):\n"
            "        setattr(_worker, _name, lambda value: None)\n"
            "def quantize_symmetric(x, scale, bits):\n"
            "    q_min, q_max = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1\n"
            "    return torch.clamp(torch.round(x.div_(scale)), q_min, q_max).to(torch.int8)\n")),
        "whole_job_library_call": submission(lab, quantize_symmetric=(
            "def quantize_symmetric(x, scale, bits):\n"
            "    q = torch.quantize_per_tensor(x, float(scale), 0, torch.qint8).int_repr()\n"
            "    return q.clamp(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)\n")),
        "os_exit": submission(lab, dequantize="import os\ndef dequantize(q, scale):\n    os._exit(0)\n"),
        "segfault": submission(lab, dequantize="import ctypes\ndef dequantize(q, scale):\n    return ctypes.string_at(0)\n"),
        "malformed_json": b'{"cells": [ {"cell_type": "code"',
        "empty_file": b"",
        "not_a_notebook": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
        "wrong_kernel": json.dumps({**json.loads(good), "metadata": {"kernelspec": {"name": "ir", "language": "R",
                                                                                     "display_name": "R"}}}).encode(),
        "nbformat_3": json.dumps({"nbformat": 3, "nbformat_minor": 0, "worksheets": [], "metadata": {}}).encode(),
        "deleted_test_cell": edit_cells(good, lambda cells: [c for c in cells if c.get("id") != "test_dequantize"]),
        "duplicated_answer_cell": edit_cells(
            submission(lab, quantize_symmetric="def quantize_symmetric(x, scale, bits):\n" + CORRECT_QUANTIZE + "\n"),
            lambda cells: cells + [{**next(c for c in cells if c.get("id") == "quantize_symmetric"),
                                    "id": "dup", "source": "def quantize_symmetric(x, scale, bits):\n" + WRONG_QUANTIZE}]),
        "edited_test_cell": edit_cells(
            submission(lab, symmetric_scale="def symmetric_scale(x, bits):\n    return torch.tensor(1.0)\n"),
            lambda cells: [{**c, "source": "pass"} if c.get("id") == "test_symmetric_scale" else c for c in cells]),
        "changed_grade_id": edit_cells(good, lambda cells: [
            {**c, "metadata": {**c["metadata"], "nbgrader": {**c["metadata"]["nbgrader"], "grade_id": "mine"}}}
            if c.get("id") == "dequantize" else c for c in cells]),
        "giant_output": edit_cells(good, lambda cells: [
            {**c, "outputs": [{"output_type": "stream", "name": "stdout", "text": "x" * (60 << 20)}]}
            if c.get("id") == "setup" else c for c in cells]),
        "large_but_fine_output": edit_cells(good, lambda cells: [
            {**c, "outputs": [{"output_type": "stream", "name": "stdout", "text": "y" * (2 << 20)}]}
            if c.get("id") == "setup" else c for c in cells]),
    }
    return attacks, host_file, victim


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("attacks")
    listener = Listener()
    try:
        lab = fixture_lab()
        attacks, host_file, victim = _attacks(lab, tmp, listener)
        root = write_class(tmp / "class", FIXTURE_LAB, attacks)
        (root / "no_notebook").mkdir()
        (root / "no_notebook" / "readme.txt").write_text("forgot to attach")
        victim_bytes = victim.read_bytes()
        results = grade_class(FIXTURE_LAB, root, tmp / "out", FIXTURE_COURSE, jobs=2, limits=TEST_LIMITS,
                              progress=False)
    finally:
        listener.close()
    return {"results": results, "host_file": host_file, "victim": victim, "victim_bytes": victim_bytes,
            "listener": listener, "out": tmp / "out", "tmp": tmp}


def row(graded, student):
    return graded["results"][student]


def cell(graded, student, grade_id):
    return next(c for c in row(graded, student)["cells"] if c["grade_id"] == grade_id)


def test_reference_submission_in_the_attacked_class_is_unaffected(graded):
    assert row(graded, "victim")["score"] == 6.0
    assert row(graded, "victim")["status"] == "ok"


def test_overriding_assert_and_helpers_does_not_reach_the_grader(graded):
    assert cell(graded, "override_assert_and_helpers", "test_symmetric_scale")["score"] == 0


def test_lying_tensor_subclass_comes_back_as_a_plain_tensor(graded):
    assert cell(graded, "lying_tensor_subclass", "test_quantize_symmetric")["score"] == 0


def test_forged_protocol_messages_score_nothing(graded):
    result = row(graded, "forged_protocol")
    assert cell(graded, "forged_protocol", "test_symmetric_scale")["score"] == 0
    assert result["status"] == "crashed"
    assert any("protocol" in reason for reason in result["reasons"])


def test_hidden_tests_and_solutions_are_unreadable(graded):
    assert cell(graded, "read_hidden_tests_and_solutions", "test_quantize_symmetric")["score"] == 0


def test_writes_outside_scratch_do_not_land(graded):
    assert not graded["host_file"].exists()
    assert graded["victim"].read_bytes() == graded["victim_bytes"]
    assert not Path("/work/main/pwned.txt").exists()
    assert row(graded, "write_outside_scratch")["score"] == 6.0  # writing to its own scratch is allowed


def test_no_network(graded):
    assert cell(graded, "network", "test_quantize_symmetric")["score"] == 0
    assert graded["listener"].connections == 0


def test_infinite_loop_times_out(graded):
    result = row(graded, "infinite_loop")
    assert result["status"] == "timeout"
    assert cell(graded, "infinite_loop", "test_symmetric_scale")["score"] == 0


def test_fork_bomb_is_contained_and_leaves_no_process(graded):
    result = row(graded, "fork_bomb")
    assert result["status"] in ("timeout", "crashed")
    assert cell(graded, "fork_bomb", "test_dequantize")["score"] == 0
    uid = result["sandbox_uid"]
    assert uid is not None and uid >= 100_000
    survivors = [p.pid for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == uid]
    assert survivors == []


def test_huge_allocation_is_a_memory_breach(graded):
    result = row(graded, "huge_allocation")
    assert result["status"] == "memory"
    assert cell(graded, "huge_allocation", "test_quantize_symmetric")["score"] == 0


def test_calling_the_protected_reference_scores_nothing_and_is_flagged(graded):
    result = row(graded, "calls_protected_reference")
    assert result["status"] == "flagged"
    assert cell(graded, "calls_protected_reference", "test_quantize_symmetric")["score"] == 0
    assert any("fixref.quantize_symmetric" in reason for reason in result["reasons"])


def test_reloading_the_reference_is_flagged(graded):
    result = row(graded, "reloads_protected_reference")
    assert result["status"] == "flagged"
    assert any("importlib" in reason for reason in result["reasons"])


@pytest.mark.parametrize("student", ["rebuilds_reference_from_its_source_file",
                                     "rebuilds_reference_from_its_code_object"])
def test_the_reference_cannot_be_rebuilt_from_the_sandboxed_package(graded, student):
    """The sandbox's package has the answers removed: its source file and its code objects hold no reference."""
    assert cell(graded, student, "test_quantize_symmetric")["score"] == 0
    assert any("not available while grading" in check["message"]
               for check in cell(graded, student, "test_quantize_symmetric")["checks"])


def test_replacing_the_workers_in_place_detector_hides_nothing(graded):
    result = row(graded, "in_place_with_the_detector_replaced")
    target = cell(graded, "in_place_with_the_detector_replaced", "test_quantize_symmetric")
    assert target["score"] == 0 and "in place" in target["message"]
    assert result["status"] == "flagged" and any("__main__" in reason for reason in result["reasons"])


def test_library_call_doing_the_whole_job_is_flagged_with_its_line(graded):
    result = row(graded, "whole_job_library_call")
    assert result["status"] == "flagged"
    assert any("line 2 uses torch.quantize_per_tensor" in r and "quantize_symmetric" in r for r in result["reasons"])


@pytest.mark.parametrize("student", ["os_exit", "segfault"])
def test_dying_process_is_crashed(graded, student):
    assert row(graded, student)["status"] == "crashed"
    assert cell(graded, student, "test_dequantize")["score"] == 0


@pytest.mark.parametrize("student, words", [
    ("malformed_json", "not valid JSON"), ("empty_file", "empty"), ("not_a_notebook", "not valid JSON"),
    ("wrong_kernel", "wrong kernel"), ("nbformat_3", "nbformat=3"), ("giant_output", "larger than"),
    ("no_notebook", "missing fixture_lab.ipynb")])
def test_bad_files_are_invalid_notebooks_with_a_reason(graded, student, words):
    result = row(graded, student)
    assert result["status"] == "invalid-notebook"
    assert result["score"] == 0
    assert any(words in reason for reason in result["reasons"]), result["reasons"]


def test_large_outputs_below_the_cap_are_graded(graded):
    assert row(graded, "large_but_fine_output")["score"] == 6.0


def test_deleted_graded_cell_scores_zero_with_a_reason(graded):
    result = row(graded, "deleted_test_cell")
    assert cell(graded, "deleted_test_cell", "test_dequantize")["score"] == 0
    assert result["score"] == 5.0
    assert result["status"] == "tampered"
    assert any("test_dequantize" in reason and "deleted" in reason for reason in result["reasons"])


def test_duplicated_answer_cell_uses_the_first_and_is_flagged(graded):
    result = row(graded, "duplicated_answer_cell")
    assert result["status"] == "flagged"
    assert cell(graded, "duplicated_answer_cell", "test_quantize_symmetric")["score"] == 3.0


def test_edited_test_cell_is_restored_from_the_source(graded):
    result = row(graded, "edited_test_cell")
    assert result["status"] == "tampered"
    assert cell(graded, "edited_test_cell", "test_symmetric_scale")["score"] == 0


def test_changed_grade_id_means_a_missing_answer(graded):
    result = row(graded, "changed_grade_id")
    assert cell(graded, "changed_grade_id", "test_dequantize")["score"] == 0
    assert any("dequantize" in reason and "missing" in reason for reason in result["reasons"])


def test_every_row_has_a_known_status(graded):
    allowed = {"ok", "timeout", "memory", "crashed", "invalid-notebook", "tampered", "flagged"}
    assert {r["status"] for r in graded["results"].values()} <= allowed
    assert {r["sandbox"] for r in graded["results"].values()} == {"bwrap"}
    # the lab's own setup cell ran fine in every sandbox (attacks are not "passing" for a broken setup)
    assert not [r for r in graded["results"].values() for reason in r["reasons"] if "setup cell" in reason]
