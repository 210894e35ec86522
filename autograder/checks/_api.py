"""The small API hidden checks are written with (trusted side only).

    suite = CheckSuite("linear_quantize")
    with suite.check("rounds ties to even", hint="torch.round rounds half to even"):
        expect_exact(f(x, 8), reference(x, 8), inputs={"x": x, "bits": 8})
    suite.finish()   # AssertionError listing every failed named check

Every named check runs (a failure does not hide the next ones) and its outcome is recorded in
:data:`RECORDER`, which the grader turns into per-student feedback (name, message, hint — never the code).
Messages say input / expected / got. Exceptions raised by the student's function (they arrive as
``StudentError`` subclasses of the matching builtin type) count as a failed check with their message.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterator

import torch

#: Outcomes of every named check since the grader last cleared it: dicts suite/name/passed/message/hint.
RECORDER: list[dict] = []
MAX_REPR = 300


class CheckSuite:
    """Named checks for one graded function; :meth:`finish` fails if any of them failed."""

    def __init__(self, function: str) -> None:
        self.function = function
        self.failures: list[str] = []
        self.count = 0

    @contextlib.contextmanager
    def check(self, name: str, hint: str = "") -> Iterator[None]:
        """Run the block as one named check; failures (AssertionError or any Exception) are recorded."""
        self.count += 1
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - a student's function may raise anything
            message = str(exc) if isinstance(exc, AssertionError) else f"{type(exc).__name__}: {exc}"
            self.failures.append(f"{name}: {message}" + (f" (hint: {hint})" if hint else ""))
            RECORDER.append({"suite": self.function, "name": name, "passed": False,
                             "message": message.strip() or "check failed", "hint": hint})
        else:
            RECORDER.append({"suite": self.function, "name": name, "passed": True, "message": "", "hint": ""})

    def finish(self) -> None:
        """Raise AssertionError naming every failed check (call once, after all checks)."""
        if self.failures:
            listing = "\n".join(f"  - {failure}" for failure in self.failures)
            raise AssertionError(f"{self.function}: {len(self.failures)} of {self.count} hidden checks "
                                 f"failed:\n{listing}")


def describe(value: Any) -> str:
    """Short human-readable form of a value for messages (tensors: dtype, shape and values)."""
    if isinstance(value, torch.Tensor):
        with _short_printing():
            body = repr(value.detach())
        text = f"{body} (dtype {str(value.dtype).removeprefix('torch.')}, shape {tuple(value.shape)})"
    else:
        text = repr(value)
    return text if len(text) <= MAX_REPR else text[: MAX_REPR - 3] + "..."


@contextlib.contextmanager
def _short_printing() -> Iterator[None]:
    old = torch._tensor_str.PRINT_OPTS.__dict__.copy()
    torch.set_printoptions(threshold=12, edgeitems=3, precision=5)
    try:
        yield
    finally:
        torch.set_printoptions(**{k: old[k] for k in ("threshold", "edgeitems", "precision", "linewidth")})


def _context(inputs: dict | None) -> str:
    if not inputs:
        return ""
    return "input: " + ", ".join(f"{k}={describe(v)}" for k, v in inputs.items()) + "\n"


def expect_tensor(got: Any, what: str = "result") -> torch.Tensor:
    """Assert ``got`` is a torch.Tensor; returns it."""
    if not isinstance(got, torch.Tensor):
        raise AssertionError(f"expected {what} to be a torch.Tensor, got {type(got).__name__}: {describe(got)}")
    return got


def expect_dtype(got: Any, dtype: torch.dtype, what: str = "result", inputs: dict | None = None) -> None:
    """Assert ``got`` is a tensor of exactly ``dtype``."""
    expect_tensor(got, what)
    if got.dtype != dtype:
        raise AssertionError(f"{_context(inputs)}expected {what} dtype {dtype}, got {got.dtype}")


def expect_shape(got: Any, shape: tuple[int, ...] | torch.Size, what: str = "result",
                 inputs: dict | None = None) -> None:
    """Assert ``got`` is a tensor of exactly ``shape``."""
    expect_tensor(got, what)
    if tuple(got.shape) != tuple(shape):
        raise AssertionError(f"{_context(inputs)}expected {what} shape {tuple(shape)}, got {tuple(got.shape)}")


def expect_exact(got: Any, expected: torch.Tensor, inputs: dict | None = None, what: str = "result") -> None:
    """Exact comparison (integer codes, masks): same dtype, same shape, every element equal."""
    expect_dtype(got, expected.dtype, what, inputs)
    expect_shape(got, expected.shape, what, inputs)
    if not torch.equal(got, expected):
        wrong = (got != expected).nonzero()
        first = tuple(wrong[0].tolist()) if len(wrong) else ()
        raise AssertionError(f"{_context(inputs)}expected {describe(expected)}\ngot      {describe(got)}\n"
                             f"{len(wrong)} of {expected.numel()} elements differ (first at index {first})")


def expect_close(got: Any, expected: torch.Tensor, atol: float, rtol: float = 0.0, inputs: dict | None = None,
                 what: str = "result", check_dtype: bool = True) -> None:
    """Float comparison with a stated tolerance |got - expected| <= atol + rtol * |expected|."""
    if check_dtype:
        expect_dtype(got, expected.dtype, what, inputs)
    else:
        expect_tensor(got, what)
    expect_shape(got, expected.shape, what, inputs)
    g, e = got.to(torch.float64), expected.to(torch.float64)
    if not torch.allclose(g, e, atol=atol, rtol=rtol, equal_nan=True):
        diff = (g - e).abs().nan_to_num(math.inf).max().item()
        raise AssertionError(f"{_context(inputs)}expected {describe(expected)}\ngot      {describe(got)}\n"
                             f"max |difference| = {diff:.3g} exceeds tolerance atol={atol:g}, rtol={rtol:g}")


def expect_raises(exc_type: type[BaseException] | tuple[type[BaseException], ...], fn: Callable, *args: Any,
                  what: str = "", **kwargs: Any) -> BaseException:
    """Assert ``fn(*args, **kwargs)`` raises ``exc_type`` (e.g. ValueError for bad input)."""
    names = exc_type.__name__ if isinstance(exc_type, type) else " or ".join(t.__name__ for t in exc_type)
    try:
        result = fn(*args, **kwargs)
    except exc_type as exc:
        return exc
    except Exception as exc:  # noqa: BLE001
        raise AssertionError(f"{_context(kwargs or {'args': args})}expected {names}{what}, "
                             f"got {type(exc).__name__}: {exc}") from None
    raise AssertionError(f"{_context(kwargs or {'args': args})}expected {names}{what}, but the call returned "
                         f"{describe(result)}")
