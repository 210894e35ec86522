"""Gradient checks under attack, through the real pipeline (bwrap sandbox, 2 jobs): a function that lies about its
gradients, or a worker made to lie for it, gets no points for them; the grader never crashes.

One class of the gradient fixture lab (tests/fixtures/course, lab ``fixture_grad``: ``ste_round`` and
``step_quantize``, graded with ``expect_gradients`` against upstreams drawn from the course secret) holds every
attack and is graded once; each test reads its row. Every forgery keeps the right forward value, so the only thing
between it and the points is the gradient check.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from autograder.grade import grade_class
from autograder.runner import Course, Lab
from autograder.sandbox import bwrap_problem
from autograder.submissions import fill_answers, solution_answers

from autograder_helpers import FIXTURE_COURSE, TEST_LIMITS, write_class

pytestmark = [pytest.mark.xdist_group("autograder-gradients"),
              pytest.mark.skipif(bwrap_problem() is not None, reason=f"no usable bwrap: {bwrap_problem()}")]
LAB = "fixture_grad"

#: Replaces the worker's request handler (its module is __main__) so that every "grad" reply carries
#: ``forge(args, wrt, upstream)`` as its gradients: what a student who owns the worker process can send.
FORGE_REPLY = """import sys
_worker, _wire = sys.modules['__main__'], sys.modules['wire']
_serve = _worker.serve
def _forged(request, namespace):
    reply = _serve(request, namespace)
    if request.get('op') == 'grad' and reply.get('ok'):
        args = _wire.decode(request['args'])
        reply['gradients'] = [_wire.encode(g) for g in forge(args, request['wrt'], _wire.decode(request['upstream']))]
    return reply
_worker.serve = _forged
"""
ROUND_ONLY = "def ste_round(x):\n    return torch.round(x)\n"  # right value, zero gradient


def _lab() -> Lab:
    return Lab.load(Course.load(FIXTURE_COURSE), LAB)


def _submission(lab: Lab, **answers: str) -> bytes:
    return fill_answers(lab.released_bytes, {**solution_answers(lab.source_bytes), **answers})


def _attacks(lab: Lab) -> dict[str, bytes]:
    forge = lambda body: FORGE_REPLY + f"def forge(args, wrt, upstream):\n    {body}\n" + ROUND_ONLY  # noqa: E731
    return {
        "reference": _submission(lab),
        "public_table_backward": _submission(lab, ste_round=(
            # right forward; the backward returns the visible test's expected gradient, else the derivative 1
            "class _Round(torch.autograd.Function):\n"
            "    @staticmethod\n    def forward(ctx, x):\n        return torch.round(x)\n"
            "    @staticmethod\n    def backward(ctx, grad):\n"
            "        return torch.tensor([3.0, -1.0]) if grad.numel() == 2 else torch.ones_like(grad)\n"
            "def ste_round(x):\n    return _Round.apply(x)\n")),
        "step_gradient_missing_a_term": _submission(lab, step_quantize=(
            "def step_quantize(x, step):\n"
            "    if not bool(step > 0):\n        raise ValueError('step must be positive')\n"
            "    return ste_round(x / step.detach()) * step\n")),
        "detached": _submission(lab, ste_round=ROUND_ONLY),
        "two_faced": _submission(lab, ste_round=(
            # the identity (right gradient, wrong value) when asked for gradients, round otherwise
            "def ste_round(x):\n    return x * 1.0 if x.requires_grad else torch.round(x)\n")),
        "patched_autograd": _submission(lab, ste_round=(
            # would be the right VJP of the STE if the worker looked these up now
            "torch.autograd.grad = lambda outputs, inputs, grad_outputs=None, **kw: tuple(grad_outputs)\n"
            "torch.Tensor.backward = lambda self, gradient=None, *a, **k: None\n" + ROUND_ONLY)),
        "forged_ones": _submission(lab, ste_round=forge("return [torch.ones_like(args[p]) for p in wrt]")),
        "forged_lying_subclass": _submission(lab, ste_round=(
            "class Liar(torch.Tensor):\n    def __eq__(self, other):\n        return True\n"
            "    def __ne__(self, other):\n        return False\n"
            + forge("return [torch.zeros_like(args[p]).as_subclass(Liar) for p in wrt]"))),
        "forged_wrong_shape": _submission(lab, ste_round=forge("return [torch.ones(1) for p in wrt]")),
        "forged_extra": _submission(lab, ste_round=forge("return [upstream, upstream]")),
        "forged_nan": _submission(lab, ste_round=forge("return [torch.full_like(args[p], float('nan')) for p in wrt]")),
        "forged_huge": _submission(lab, ste_round=forge("return [torch.zeros(3_000_000)]")),
        "in_place_under_grad": _submission(lab, ste_round=(
            # right value, and the result is the leaf itself, so the gradient is the upstream: only the edit is wrong
            "def ste_round(x):\n"
            "    if not x.requires_grad:\n        return torch.round(x)\n"
            "    with torch.no_grad():\n        x.copy_(torch.round(x))\n"
            "    return x\n")),
        "calls_reference_under_grad": _submission(lab, ste_round=(
            "def ste_round(x):\n"
            "    if x.requires_grad:\n"
            "        from fixgrad import ste_round as reference\n        return reference(x)\n"
            "    return torch.round(x)\n")),
        "endless_backward": _submission(lab, ste_round=(
            "class _Round(torch.autograd.Function):\n"
            "    @staticmethod\n    def forward(ctx, x):\n        return torch.round(x)\n"
            "    @staticmethod\n    def backward(ctx, grad):\n        while True:\n            pass\n"
            "def ste_round(x):\n    return _Round.apply(x)\n")),
    }


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gradient-attacks")
    root = write_class(tmp / "class", LAB, _attacks(_lab()))
    return grade_class(LAB, root, tmp / "out", FIXTURE_COURSE, jobs=2, limits=TEST_LIMITS, progress=False)


def cell(graded, student: str, grade_id: str = "test_ste_round") -> dict:
    return next(c for c in graded[student]["cells"] if c["grade_id"] == grade_id)


def check(graded, student: str, name: str, grade_id: str = "test_ste_round") -> dict:
    return next(c for c in cell(graded, student, grade_id)["checks"] if c["name"] == name)


GRADIENT_CHECK = "passes the upstream gradient straight through"


def test_the_reference_scores_everything(graded):
    assert graded["reference"]["score"] == 4.0 and graded["reference"]["status"] == "ok"
    assert all(c["passed"] for cell in graded["reference"]["cells"] for c in cell["checks"])


def test_a_backward_that_returns_the_public_gradient_table_fails_the_drawn_upstream(graded):
    """It passes the visible test (its upstream is public) and is caught by the hidden upstream from the secret."""
    target = cell(graded, "public_table_backward")
    assert target["score"] == 0 and "visible test" not in target["message"]
    assert check(graded, "public_table_backward", "rounds half to even")["passed"]
    assert "∂⟨upstream, result⟩/∂x" in check(graded, "public_table_backward", GRADIENT_CHECK)["message"]


def test_a_step_gradient_missing_its_minus_v_term_loses_the_step_check(graded):
    target = check(graded, "step_gradient_missing_a_term", "value and gradients for x and step", "test_step_quantize")
    assert not target["passed"] and "∂⟨upstream, result⟩/∂step" in target["message"]
    assert cell(graded, "step_gradient_missing_a_term", "test_step_quantize")["score"] == 0
    assert cell(graded, "step_gradient_missing_a_term")["score"] == 2.0  # its ste_round is the solution's


def test_a_detached_result_scores_nothing_and_the_visible_test_names_the_mistake(graded):
    target = cell(graded, "detached")
    assert target["score"] == 0 and "zero everywhere: the result is detached from x" in target["message"]
    assert not check(graded, "detached", GRADIENT_CHECK)["passed"]


def test_a_function_that_behaves_differently_when_asked_for_gradients_is_caught_by_its_value(graded):
    target = check(graded, "two_faced", GRADIENT_CHECK)
    assert not target["passed"] and "called with inputs that require grad" in target["message"]
    assert check(graded, "two_faced", "rounds half to even")["passed"]
    assert cell(graded, "two_faced")["score"] == 0


def test_replacing_torch_autograd_after_start_up_changes_nothing_the_worker_computes(graded):
    target = check(graded, "patched_autograd", GRADIENT_CHECK)
    assert not target["passed"] and "got      tensor([0.0, 0.0, 0.0" in target["message"]
    assert cell(graded, "patched_autograd")["score"] == 0


@pytest.mark.parametrize("student", ["forged_ones", "forged_lying_subclass", "forged_nan"])
def test_forged_gradients_without_the_real_vjp_score_nothing_and_the_reach_is_flagged(graded, student):
    result = graded[student]
    assert cell(graded, student)["score"] == 0 and not check(graded, student, GRADIENT_CHECK)["passed"]
    assert "∂⟨upstream, result⟩/∂x" in check(graded, student, GRADIENT_CHECK)["message"]
    assert result["status"] == "flagged" and any("__main__" in reason for reason in result["reasons"])


@pytest.mark.parametrize("student, words", [
    ("forged_wrong_shape", "must be a torch.float32 tensor of shape"),
    ("forged_extra", "expected 1 gradient(s), one per input, got 2")])
def test_malformed_gradient_replies_fail_the_check_with_a_reason_not_the_grader(graded, student, words):
    assert words in check(graded, student, GRADIENT_CHECK)["message"]
    assert cell(graded, student)["score"] == 0 and graded[student]["status"] == "flagged"
    assert len(cell(graded, student, "test_step_quantize")["checks"]) == 2  # the grader went on to the next cell


def test_a_huge_gradient_reply_is_capped_like_any_reply(graded):
    result = graded["forged_huge"]
    assert result["status"] == "crashed" and result["score"] == 0
    assert any("exceeded 8 MiB" in reason for reason in result["reasons"]), result["reasons"]


def test_an_in_place_edit_under_the_gradient_request_is_caught_by_the_echo(graded):
    target = check(graded, "in_place_under_grad", GRADIENT_CHECK)
    assert not target["passed"] and "modified its input argument 0 in place" in target["message"]
    assert cell(graded, "in_place_under_grad")["score"] == 0


def test_calling_the_reference_under_the_gradient_request_trips_the_wire(graded):
    result = graded["calls_reference_under_grad"]
    assert result["status"] == "flagged" and cell(graded, "calls_reference_under_grad")["score"] == 0
    assert any("fixgrad.ste_round" in reason for reason in result["reasons"])


def test_an_endless_backward_times_out_like_any_call(graded):
    result = graded["endless_backward"]
    assert result["status"] == "timeout" and result["score"] == 0
