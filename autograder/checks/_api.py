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


def _label(what: str, inputs: dict | None) -> str:
    text = what
    if inputs:
        text += " with input " + ", ".join(f"{k}={describe(v)}" for k, v in inputs.items())
    return text


def expect_tensor(got: Any, what: str = "result") -> torch.Tensor:
    """Assert ``got`` is a torch.Tensor; returns it."""
    if not isinstance(got, torch.Tensor):
        raise AssertionError(f"{what}: expected a torch.Tensor, got {type(got).__name__}: {describe(got)}")
    return got


def expect_dtype(got: Any, dtype: torch.dtype, what: str = "result", inputs: dict | None = None) -> None:
    """Assert ``got`` is a tensor of exactly ``dtype``."""
    expect_tensor(got, _label(what, inputs))
    if got.dtype != dtype:
        raise AssertionError(f"{_label(what, inputs)}: expected dtype {dtype}, got {got.dtype}")


def expect_shape(got: Any, shape: tuple[int, ...] | torch.Size, what: str = "result",
                 inputs: dict | None = None) -> None:
    """Assert ``got`` is a tensor of exactly ``shape``."""
    expect_tensor(got, _label(what, inputs))
    if tuple(got.shape) != tuple(shape):
        raise AssertionError(f"{_label(what, inputs)}: expected shape {tuple(shape)}, got {tuple(got.shape)}")


def expect_equal(got: Any, expected: Any, what: str = "result", inputs: dict | None = None) -> None:
    """Exact comparison. Tensors (integer codes, masks): same dtype, same shape, every element equal.
    Python values: equal, element by element for tuples/lists."""
    label = _label(what, inputs)
    if isinstance(expected, torch.Tensor):
        expect_dtype(got, expected.dtype, what, inputs)
        expect_shape(got, expected.shape, what, inputs)
        if not torch.equal(got, expected):
            wrong = (got != expected).nonzero()
            first = tuple(wrong[0].tolist()) if len(wrong) else ()
            raise AssertionError(f"{label}:\n  expected {describe(expected)}\n  got      {describe(got)}\n"
                                 f"  {len(wrong)} of {expected.numel()} elements differ (first at index {first})")
        return
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            raise AssertionError(f"{label}:\n  expected {describe(expected)}\n  got      {describe(got)}")
        for index, (g, e) in enumerate(zip(got, expected)):
            expect_equal(g, e, f"{what}[{index}]", inputs)
        return
    if isinstance(got, torch.Tensor) or got != expected:
        raise AssertionError(f"{label}:\n  expected {describe(expected)}\n  got      {describe(got)}")


#: Kept for readability in checks of integer codes.
expect_exact = expect_equal


def expect_close(got: Any, expected: Any, what: str = "result", atol: float = 0.0, rtol: float = 0.0,
                 inputs: dict | None = None) -> None:
    """Float comparison with a stated tolerance: |got - expected| <= atol + rtol * |expected|, elementwise.

    Tensors must have the expected shape (check the dtype separately with :func:`expect_dtype`); numbers and
    tuples/lists of numbers are compared element by element. NaN matches NaN.
    """
    label = _label(what, inputs)
    if isinstance(expected, (tuple, list)) and not isinstance(got, torch.Tensor):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            raise AssertionError(f"{label}:\n  expected {describe(expected)}\n  got      {describe(got)}")
        for index, (g, e) in enumerate(zip(got, expected)):
            expect_close(g, e, f"{what}[{index}]", atol, rtol, inputs)
        return
    if isinstance(expected, torch.Tensor):
        expect_tensor(got, label)
        expect_shape(got, expected.shape, what, inputs)
        g, e = got.detach().to(torch.float64), expected.detach().to(torch.float64)
    else:
        if isinstance(got, bool) or not isinstance(got, (int, float)) and not \
                (isinstance(got, torch.Tensor) and got.numel() == 1):
            raise AssertionError(f"{label}: expected a number close to {expected!r}, got {describe(got)}")
        g, e = torch.tensor(float(got), dtype=torch.float64), torch.tensor(float(expected), dtype=torch.float64)
    if not torch.allclose(g, e, atol=atol, rtol=rtol, equal_nan=True):
        diff = (g - e).abs().nan_to_num(math.inf).max().item() if g.numel() else 0.0
        raise AssertionError(f"{label}:\n  expected {describe(expected)}\n  got      {describe(got)}\n"
                             f"  max |difference| = {diff:.3g} exceeds the tolerance atol={atol:g}, rtol={rtol:g}")


def expect_raises(exc_type: type[BaseException] | tuple[type[BaseException], ...], fn: Callable, *args: Any,
                  what: str = "", **kwargs: Any) -> BaseException:
    """Assert ``fn(*args, **kwargs)`` raises ``exc_type`` (e.g. ValueError for bad input)."""
    names = exc_type.__name__ if isinstance(exc_type, type) else " or ".join(t.__name__ for t in exc_type)
    label = what or f"call with {describe(args)}"
    try:
        result = fn(*args, **kwargs)
    except exc_type as exc:
        return exc
    except Exception as exc:  # noqa: BLE001
        raise AssertionError(f"{label}: expected {names}, got {type(exc).__name__}: {exc}") from None
    raise AssertionError(f"{label}: expected {names}, but the call returned {describe(result)}")


def _tensors_in(values: Any) -> list[torch.Tensor]:
    """Every tensor among ``values``, looking inside tuples and lists (e.g. a NamedTuple codebook), in order."""
    found: list[torch.Tensor] = []
    for value in values:
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, (tuple, list)):
            found.extend(_tensors_in(value))
    return found


def expect_unchanged(fn: Callable, *args: Any, what: str, **kwargs: Any) -> Any:
    """Call ``fn(*args, **kwargs)`` and assert it modified none of the tensors in ``args`` in place.

    Tensors are numbered in argument order (inside tuples too) in the message. Returns what ``fn`` returned.
    """
    inputs = _tensors_in(args)
    before = [tensor.clone() for tensor in inputs]
    result = fn(*args, **kwargs)
    for index, (kept, now) in enumerate(zip(before, inputs)):
        if not torch.equal(kept, now):
            raise AssertionError(f"{what} modified its input {index} in place; work on a copy instead")
    return result


# ------------------------------------------------------------------------------------ test data makers
def generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed``: every random input of a check comes from one."""
    return torch.Generator().manual_seed(seed)


def heavy_tailed(n: int, seed: int) -> torch.Tensor:
    """Laplace-like weights with a few outliers, like a real layer (float32 [n], deterministic)."""
    g = generator(seed)
    x = torch.randn(n, generator=g) * torch.rand(n, generator=g).pow(2) * 0.2
    x[:: max(n // 50, 1)] *= 4
    return x
