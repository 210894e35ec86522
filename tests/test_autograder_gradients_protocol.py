"""The trusted side of the "grad" request: Proxy.call_with_gradients checks the request before sending it and every
part of the reply after, so a malformed, missing, extra or forged gradient fails that check (AssertionError), never
the grader. The worker here is a stand-in that computes the honest reply the way the sandbox worker does (with
lowbit._vjp and the wire format) and then lets each test spoil it; the real sandbox under attack:
test_autograder_gradients_attacks.py."""
from __future__ import annotations

import pytest
import torch

from autograder import wire
from autograder.checks._api import call_with_gradients, expect_gradients
from autograder.runner import Proxy, StudentError
from lowbit import _vjp


def ste_round(x):
    return x + (torch.round(x) - x).detach()


class HonestWorker:
    """Answers "grad"/"call" requests as the sandbox worker does; ``spoil(reply)`` edits the reply afterwards."""

    def __init__(self, fn=ste_round, spoil=lambda reply: None) -> None:
        self.fn, self.spoil, self.requests = fn, spoil, []

    def request(self, op: str, **fields) -> dict:
        self.requests.append((op, fields))
        args, kwargs = wire.decode(fields["args"]), wire.decode(fields["kwargs"])
        if op == "grad":
            value, grads, (args, kwargs) = _vjp.differentiate(self.fn, args, kwargs, wire.decode(fields["wrt"]),
                                                              wire.decode(fields["upstream"]))
            extra = {"gradients": [wire.encode(g) for g in grads]}
        else:
            value, extra = self.fn(*args, **kwargs), {}
        echo = {"args": [wire.encode(a) for a in args], "kwargs": {k: wire.encode(v) for k, v in kwargs.items()}}
        reply = {"ok": True, "value": wire.encode(value), **extra, "echo": echo}
        self.spoil(reply)
        return reply


def proxy(worker: HonestWorker) -> Proxy:
    return Proxy("ste_round", worker, [])


X = torch.tensor([0.4, 1.6, -2.5])
UPSTREAM = torch.tensor([0.7, -1.3, 2.1])


def test_an_honest_reply_gives_the_value_and_the_gradient_computed_in_the_worker():
    worker = HonestWorker()
    value, (grad,) = call_with_gradients(proxy(worker), X, wrt=[0], upstream=UPSTREAM)
    assert torch.equal(value, torch.round(X)) and torch.equal(grad, UPSTREAM)
    (op, fields), = worker.requests
    assert op == "grad" and fields["wrt"] == [0] and torch.equal(wire.decode(fields["upstream"]), UPSTREAM)
    assert set(fields) == {"name", "args", "kwargs", "wrt", "upstream"}  # plain data only: no graph, no module


def _set(key, value):
    return lambda reply: reply.__setitem__(key, value)


TENSOR_OF_SHAPE_3 = wire.encode(torch.zeros(3))


@pytest.mark.parametrize("spoil, words", [
    (lambda reply: reply.pop("gradients"), "expected 1 gradient(s), one per input, got no list (NoneType)"),
    (_set("gradients", []), "expected 1 gradient(s), one per input, got 0"),
    (_set("gradients", [TENSOR_OF_SHAPE_3, TENSOR_OF_SHAPE_3]), "got 2"),
    (_set("gradients", {"0": TENSOR_OF_SHAPE_3}), "got no list (dict)"),
    (_set("gradients", [wire.encode(torch.zeros(2))]), "float32 tensor of shape (3,) (the input's), got a "
                                                        "torch.float32 tensor of shape (2,)"),
    (_set("gradients", [wire.encode(torch.zeros(3, 1))]), "got a torch.float32 tensor of shape (3, 1)"),
    (_set("gradients", [wire.encode(torch.zeros(3, dtype=torch.float64))]), "got a torch.float64 tensor"),
    (_set("gradients", [wire.encode(torch.zeros(3, dtype=torch.int64))]), "got a torch.int64 tensor"),
    (_set("gradients", [[0.7, -1.3, 2.1]]), "got a list"),
    (_set("gradients", [wire.encode(UPSTREAM.numpy())]), "got a ndarray"),
    (_set("gradients", [None]), "got a NoneType"),
    (_set("gradients", [{"__t__": "tensor", "dtype": "float32", "shape": [3], "data": "!!"}]), "cannot be accepted"),
    (_set("gradients", [{"__t__": "tensor", "dtype": "float32", "shape": [3], "data": ""}]), "payload has 0 bytes"),
    (_set("gradients", [{"__t__": "pickle", "data": ""}]), "unknown value tag"),
    (_set("gradients", [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[0]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]), "nested deeper"),
    (_set("value", {"__t__": "tensor", "dtype": "float32", "shape": [2]}), "returned a value the grader cannot accept"),
    (lambda reply: reply.pop("echo"), "modified its input argument 0 in place"),
    (_set("echo", {"args": [wire.encode(torch.zeros(3))], "kwargs": {}}), "modified its input argument 0 in place"),
])
def test_a_spoiled_reply_fails_the_check_with_a_clear_message(spoil, words):
    with pytest.raises(AssertionError) as info:
        call_with_gradients(proxy(HonestWorker(spoil=spoil)), X, wrt=[0], upstream=UPSTREAM)
    assert words in str(info.value)


def test_a_nan_or_lying_gradient_is_a_genuine_tensor_that_loses_the_comparison():
    nan = HonestWorker(spoil=_set("gradients", [wire.encode(torch.full((3,), float("nan")))]))
    with pytest.raises(AssertionError, match="3 of 3 elements differ"):
        expect_gradients(proxy(nan), ste_round, X, wrt=[0], upstream=UPSTREAM, what="ste_round(x)", names=["x"])

    class Liar(torch.Tensor):
        def __eq__(self, other):
            return True

    forged = wire.encode(torch.zeros(3).as_subclass(Liar))  # what a forging worker can send: the plain data
    (grad,) = call_with_gradients(proxy(HonestWorker(spoil=_set("gradients", [forged]))), X, wrt=[0],
                                  upstream=UPSTREAM)[1]
    assert type(grad) is torch.Tensor
    with pytest.raises(AssertionError, match="∂⟨upstream, result⟩/∂x"):
        expect_gradients(proxy(HonestWorker(spoil=_set("gradients", [forged]))), ste_round, X, wrt=[0],
                         upstream=UPSTREAM, what="ste_round(x)", names=["x"])


def test_a_failure_inside_the_students_code_arrives_as_a_student_error():
    def refuses(x):
        raise ValueError("step must be positive")

    with pytest.raises(StudentError) as info:
        call_with_gradients(proxy(_worker_answering(refuses)), X, wrt=[0], upstream=UPSTREAM)
    assert isinstance(info.value, ValueError) and "step must be positive" in str(info.value)


def _worker_answering(fn):
    """A worker whose reply to a failing call is the error, as the sandbox worker's describe_error sends it."""
    class Failing(HonestWorker):
        def request(self, op, **fields):
            try:
                return super().request(op, **fields)
            except Exception as exc:  # noqa: BLE001
                return {"ok": False, "error": {"type": type(exc).__name__, "builtin": True, "message": str(exc),
                                               "traceback": "", "memory": False}}
    return Failing(fn)


@pytest.mark.parametrize("args, kwargs, wrt, upstream, words", [
    ((torch.tensor([1, 2]),), {}, [0], None, "int64 tensor"),
    ((torch.tensor([True]),), {}, [0], None, "torch.bool tensor"),
    ((1.5,), {}, [0], None, "which is a float"),
    (([0.5, 1.5],), {}, [0], None, "which is a list"),
    ((X,), {}, [1], None, "call has 1 positional"),
    ((X,), {}, ["x"], None, "does not pass"),
    ((X,), {}, [0], [1.0, 2.0, 3.0], "upstream must be"),
])
def test_a_gradient_request_for_a_non_float_input_is_refused_on_the_trusted_side_before_sending(args, kwargs, wrt,
                                                                                              upstream, words):
    worker = HonestWorker()
    with pytest.raises((TypeError, ValueError), match=words):
        call_with_gradients(proxy(worker), *args, wrt=wrt, upstream=upstream, **kwargs)
    assert worker.requests == []


def test_keyword_inputs_travel_by_name_and_come_back_in_the_order_of_wrt():
    def scaled(x, *, step):
        return ste_round(x / step) * step

    step = torch.tensor(0.5)
    worker = HonestWorker(fn=scaled)
    value, (g_step, g_x) = call_with_gradients(proxy(worker), X, step=step, wrt=["step", 0], upstream=UPSTREAM)
    want_value, (w_step, w_x) = call_with_gradients(scaled, X, step=step, wrt=["step", 0], upstream=UPSTREAM)
    assert torch.equal(value, want_value) and torch.equal(g_step, w_step) and torch.equal(g_x, w_x)
    assert g_step.shape == () and worker.requests[0][1]["wrt"] == ["step", 0]


def test_why_the_upstream_is_drawn_a_forger_knowing_only_the_derivative_table_passes_a_ones_upstream_only():
    """A forged reply of the local derivatives (ones for the STE) is the VJP against an all-ones upstream, so a check
    using upstream=None / ones could be fooled; against a drawn upstream the forger needs the real VJP."""
    forger = HonestWorker(fn=torch.round, spoil=_set("gradients", [wire.encode(torch.ones(3))]))
    expect_gradients(proxy(forger), ste_round, X, wrt=[0], upstream=torch.ones(3), what="ste_round(x)")
    with pytest.raises(AssertionError, match="∂⟨upstream, result⟩/∂argument 0"):
        expect_gradients(proxy(forger), ste_round, X, wrt=[0], upstream=UPSTREAM, what="ste_round(x)")
