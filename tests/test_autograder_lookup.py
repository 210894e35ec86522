"""The lookup attack and learning from feedback, through the real pipeline, for every lab.

A student who wants the points without the work records every call the public grader makes (visible tests and
hidden checks, with the public practice inputs) against a correct implementation, and submits answer cells that
only look calls up in that table. Before the course secret this scored 86 / 86 on labs 1 and 2. Now the hidden
checks draw their inputs from the secret and the submission's content, so the table misses them: graded with a
secret the lookup submission keeps at most 10 % of the auto-graded points, while the honest solution keeps all.
"""
from __future__ import annotations

import base64
import json
import re
import zlib
from pathlib import Path

import pytest
import torch

from autograder import secret as course_secret
from autograder.checks import _api
from autograder.grade import grade_class
from autograder.notebook import build_plan, parse_notebook
from autograder.release import find_labs
from autograder.runner import Course, Lab, _run_test, run_setup
from autograder.sandbox import Limits, bwrap_problem
from autograder.submissions import fill_answers, solution_answers

from autograder_helpers import FIXTURE_COURSE, FIXTURE_LAB, TEST_LIMITS

REPO = Path(__file__).resolve().parents[1]
MODE = "bwrap" if bwrap_problem() is None else "unsafe"
COURSES = [(REPO, lab) for lab in find_labs(REPO)] + [(FIXTURE_COURSE, FIXTURE_LAB)]
SECRET = b"a-course-secret-nobody-has-seen-0001"

pytestmark = pytest.mark.xdist_group("autograder-lookup")

#: The attacker's helpers, shared by the recording (here) and the submission (in the sandbox).
LOOKUP_HELPERS = r'''
import base64 as _base64
import builtins as _builtins
import hashlib as _hashlib
import json as _json
import zlib as _zlib

import torch as _torch


def _lookup_key(value):
    digest = _hashlib.sha256()

    def walk(v):
        if isinstance(v, _torch.Tensor):
            digest.update(f"T{v.dtype}{tuple(v.shape)}{v.detach().reshape(-1).tolist()!r}".encode())
        elif isinstance(v, (list, tuple)):
            digest.update(f"L{len(v)}".encode())
            for item in v:
                walk(item)
        elif isinstance(v, dict):
            for k in sorted(v):
                digest.update(k.encode())
                walk(v[k])
        else:
            digest.update(f"{type(v).__name__}{v!r}".encode())

    walk(value)
    return digest.hexdigest()


def _lookup_encode(v):
    if isinstance(v, _torch.Tensor):
        return {"tensor": str(v.dtype).removeprefix("torch."), "shape": list(v.shape),
                "data": v.detach().reshape(-1).tolist()}
    if isinstance(v, tuple):
        return {"tuple": [_lookup_encode(x) for x in v], "name": type(v).__name__}
    if isinstance(v, list):
        return [_lookup_encode(x) for x in v]
    if isinstance(v, float) and v != v or v in (float("inf"), float("-inf")):
        return {"float": repr(v)}
    return v


def _lookup_decode(v, namespace):
    if isinstance(v, dict) and "tensor" in v:
        return _torch.tensor(v["data"], dtype=getattr(_torch, v["tensor"])).reshape(v["shape"])
    if isinstance(v, dict) and "tuple" in v:
        items = [_lookup_decode(x, namespace) for x in v["tuple"]]
        kind = namespace.get(v["name"])
        named = isinstance(kind, type) and issubclass(kind, tuple) and kind is not tuple
        return kind(*items) if named else tuple(items)
    if isinstance(v, dict) and "float" in v:
        return float(v["float"])
    if isinstance(v, list):
        return [_lookup_decode(x, namespace) for x in v]
    return v


def _materialized(args):
    """Iterator arguments (a stream of batches) as lists, so they can be keyed; the flags say which were."""
    flags = [hasattr(a, "__next__") for a in args]
    return [list(a) if flag else a for a, flag in zip(args, flags)], flags


def _tensor_args(args, kwargs):
    return [a for a in [*args, *kwargs.values()] if isinstance(a, _torch.Tensor)]


class _Replay(_torch.autograd.Function):
    """A recorded value whose backward pass answers with the gradients recorded for that upstream gradient."""

    @staticmethod
    def forward(ctx, table, key, value, *tensors):
        ctx.table, ctx.key = table, key
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        hit = ctx.table.get(_lookup_key([ctx.key, grad]))
        if hit is None:
            raise NotImplementedError("this upstream gradient is not in my table")
        return (None, None, None, *[None if g is None or not needed else _lookup_decode(g, {})
                                    for g, needed in zip(hit, ctx.needs_input_grad[3:])])


def _lookup(table, args, kwargs, namespace):
    args, _ = _materialized(args)
    key = _lookup_key((list(args), dict(kwargs)))
    hit = table.get(key)
    if hit is None:
        raise NotImplementedError("this input is not in my table")
    if "raise" in hit:
        raise getattr(_builtins, hit["raise"], RuntimeError)(hit["message"])
    value = _lookup_decode(hit["value"], namespace)
    tensors = _tensor_args(args, kwargs)
    if isinstance(value, _torch.Tensor) and any(t.requires_grad for t in tensors):
        return _Replay.apply(table, key, value, *tensors)   # a gradient request: replay the recorded gradients
    return value
'''


def _helpers() -> dict:
    namespace: dict = {}
    exec(LOOKUP_HELPERS, namespace)  # noqa: S102 - the test's own code
    return namespace


def _plan(lab: Lab, submission: bytes):
    return build_plan(parse_notebook(lab.source_bytes), parse_notebook(lab.released_bytes), parse_notebook(submission))


def record_public_calls(lab: Lab) -> dict[str, dict]:
    """Run every test cell (visible + hidden, practice inputs) on the trusted side against the solution's
    functions; return, per graded function, key -> recorded result (or raised exception)."""
    helpers = _helpers()
    honest = fill_answers(lab.released_bytes, solution_answers(lab.source_bytes))
    plan = _plan(lab, honest)
    namespace = run_setup(plan.setup_sources)
    answers = solution_answers(lab.source_bytes)
    tables: dict[str, dict] = {name: {} for name in lab.contract.graded}
    for name in lab.contract.graded:
        exec(answers[name], namespace)  # noqa: S102 - the course's own solution
    # A graded function that calls another (Lab 5's adaround_layer calls rectified_sigmoid every iteration) makes
    # calls no test makes: the lookup submission's functions never call each other, so those are not recorded.
    active: list[str] = []

    def record(name, fn, args, kwargs):
        args, iterators = helpers["_materialized"](args)
        key = helpers["_lookup_key"]((list(args), dict(kwargs)))
        try:
            value = fn(*[iter(a) if flag else a for a, flag in zip(args, iterators)], **kwargs)
        except Exception as exc:
            tables[name][key] = {"raise": type(exc).__name__, "message": str(exc)}
            raise
        tables[name][key] = {"value": helpers["_lookup_encode"](value)}
        return _recording_gradients(tables[name], key, value, helpers["_tensor_args"](args, kwargs))

    for name in lab.contract.graded:
        def recorder(*args, _name=name, _fn=namespace[name], **kwargs):
            if active:
                return _fn(*args, **kwargs)
            active.append(_name)
            try:
                return record(_name, _fn, args, kwargs)
            finally:
                active.pop()
        namespace[name] = recorder
    _api.use_draw_key(course_secret.PRACTICE_KEY)
    for test in plan.tests:
        _run_test(test, namespace)
    return tables


def _recording_gradients(table: dict, key: str, value, tensors: list[torch.Tensor]):
    """``value`` itself, or (for a gradient request) a copy whose backward pass also records, per upstream
    gradient, the true gradients of every tensor argument: what a lookup needs to answer gradient checks."""
    if not (isinstance(value, torch.Tensor) and value.requires_grad):
        return value
    helpers, needed = _helpers(), [t for t in tensors if t.requires_grad]

    class Record(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *inputs):
            return value.detach().clone()

        @staticmethod
        def backward(ctx, grad):
            found = iter(torch.autograd.grad(value, needed, grad, allow_unused=True, retain_graph=True))
            grads = [next(found) if t.requires_grad else None for t in tensors]
            slot = helpers["_lookup_key"]([key, grad])   # calls differing only in wrt share it: keep every gradient
            known = table.get(slot, [None] * len(grads))
            table[slot] = [old if g is None else helpers["_lookup_encode"](g) for old, g in zip(known, grads)]
            return tuple(grads)

    return Record.apply(*tensors)


def lookup_submission(lab: Lab, tables: dict[str, dict]) -> bytes:
    answers = dict(solution_answers(lab.source_bytes))
    for index, name in enumerate(lab.contract.graded):
        table = base64.b85encode(zlib.compress(json.dumps(tables[name], separators=(",", ":")).encode(), 9)).decode()
        answers[name] = (LOOKUP_HELPERS if index == 0 else "") + (   # compressed: a cell holds at most 200,000 chars
            f"\n_TABLE_{name} = _json.loads(_zlib.decompress(_base64.b85decode({table!r})))\n\n"
            f"def {name}(*args, **kwargs):\n"
            f"    return _lookup(_TABLE_{name}, args, kwargs, globals())\n")
    return fill_answers(lab.released_bytes, answers)


def _practice_score(lab: Lab, submission: bytes) -> tuple[float, float]:
    """Score of ``submission``'s answers run on the trusted side with the public inputs (the attack's control)."""
    plan = _plan(lab, submission)
    namespace = run_setup(plan.setup_sources)
    for gid, kind, source in plan.answers:
        if kind == "code":
            exec(source, namespace)  # noqa: S102 - the test's own lookup code
    _api.use_draw_key(course_secret.PRACTICE_KEY)
    cells = [_run_test(test, namespace) for test in plan.tests]
    return sum(c["score"] for c in cells), sum(c["max_score"] for c in cells)


@pytest.mark.parametrize("course, lab_name", COURSES)
def test_lookup_table_of_the_public_calls_scores_almost_nothing_with_a_secret(course, lab_name, tmp_path):
    lab = Lab.load(Course.load(course), lab_name)
    tables = record_public_calls(lab)
    attack = lookup_submission(lab, tables)
    score, total = _practice_score(lab, attack)
    assert score == total, "control: with the public inputs the lookup table answers every call"
    honest = fill_answers(lab.released_bytes, solution_answers(lab.source_bytes))
    root = tmp_path / "class"
    for student, data in (("lookup", attack), ("honest", honest), ("blank", lab.released_bytes)):
        (root / student).mkdir(parents=True)
        (root / student / f"{lab_name}.ipynb").write_bytes(data)
    results = grade_class(lab_name, root, tmp_path / "out", course, jobs=2, progress=False, unsafe=MODE == "unsafe",
                          secret=SECRET, limits=TEST_LIMITS if course == FIXTURE_COURSE else Limits())
    assert results["honest"]["score"] == results["honest"]["max_score"] == total
    assert results["honest"]["status"] == "ok" and results["blank"]["score"] == 0
    assert results["lookup"]["score"] <= 0.10 * total, (
        f"lookup scored {results['lookup']['score']} / {total}: "
        + ", ".join(c["grade_id"] for c in results["lookup"]["cells"] if c["passed"]))


# ------------------------------------------------------------------------------------ learning from feedback
_SHOWN = re.compile(r"bits=(\d+)\) with input x=tensor\(\[([^\]…]*)\], dtype=torch\.float32, shape=\((\d+),\)\), "
                    r"scale=tensor\(\[([^\]]*)\][^)]*\)\):\n  expected tensor\(\[([^\]…]*)\], dtype=torch\.int8")


def learned_pairs(result: dict) -> dict[tuple, list[int]]:
    """What a failed check's feedback reveals: each shown input (x, scale, bits) with its expected codes."""
    pairs = {}
    for cell in result["cells"]:
        for check in cell["checks"]:
            for bits, x, _, scale, expected in _SHOWN.findall(check["message"]):
                key = (tuple(round(float(v), 4) for v in x.split(", ")), round(float(scale), 4), int(bits))
                pairs[key] = [int(v) for v in expected.split(", ")]
    return pairs


def learner_submission(lab: Lab, table: dict[tuple, list[int]]) -> bytes:
    known = {json.dumps([list(x), s, bits]): codes for (x, s, bits), codes in table.items()}
    source = (f"import json\n_KNOWN = {known!r}\n\n"
              "def quantize_symmetric(x, scale, bits):\n"
              "    key = json.dumps([[round(v, 4) for v in x.reshape(-1).tolist()], round(float(scale), 4), bits])\n"
              "    if key in _KNOWN:\n"
              "        return torch.tensor(_KNOWN[key], dtype=torch.int8).reshape(x.shape)\n"
              "    return torch.zeros_like(x, dtype=torch.int8)\n")
    return fill_answers(lab.released_bytes, {**solution_answers(lab.source_bytes), "quantize_symmetric": source})


def test_learning_from_feedback_over_five_rounds_gains_nothing(tmp_path):
    """Each round the student adds what the last feedback showed (inputs in full, expected codes) to a table and
    resubmits; the feedback is truthful (the pairs are the reference's), but the new submission meets new
    inputs, so the cell's score and its failed checks never improve."""
    lab = Lab.load(Course.load(FIXTURE_COURSE), FIXTURE_LAB)
    quantize_symmetric = lab.contract.reference("quantize_symmetric")
    table: dict[tuple, list[int]] = {}
    failed_per_round, scores = [], []
    for round_number in range(5):
        root = tmp_path / f"round{round_number}"
        (root / "student").mkdir(parents=True)
        (root / "student" / f"{FIXTURE_LAB}.ipynb").write_bytes(learner_submission(lab, table))
        result = grade_class(FIXTURE_LAB, root, tmp_path / "out", FIXTURE_COURSE, jobs=1, progress=False,
                             unsafe=MODE == "unsafe", secret=SECRET, limits=TEST_LIMITS)["student"]
        cell = next(c for c in result["cells"] if c["grade_id"] == "test_quantize_symmetric")
        scores.append(cell["score"])
        failed_per_round.append(sum(not c["passed"] for c in cell["checks"]))
        new = learned_pairs(result)
        for (x, scale, bits), codes in new.items():  # what the feedback shows is the real answer for that input
            assert quantize_symmetric(torch.tensor(x), torch.tensor(scale), bits).tolist() == codes
        table.update(new)
    assert len(table) >= 3, "the feedback showed inputs and expected values the student could learn"
    assert scores == [0.0] * 5
    assert failed_per_round == [failed_per_round[0]] * 5 and failed_per_round[0] >= 2
