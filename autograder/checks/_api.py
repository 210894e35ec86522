"""The small API hidden checks are written with (trusted side only).

    suite = CheckSuite("linear_quantize")
    x = suite.draw.normal(suite.draw.integer(50, 150))       # inputs drawn from the course secret
    with suite.check("rounds ties to even", hint="torch.round rounds half to even"):
        x = suite.draw.mix(torch.tensor([-2.5, 0.5, 1.5]), x)  # hand-picked edge values among drawn ones
        expect_equal(f(x, 1.0, 0, 8), reference(x, 1.0, 0, 8), "linear_quantize", inputs={"r": x, "bits": 8})
    suite.finish()   # AssertionError listing every failed named check

Every named check runs (a failure does not hide the next ones) and its outcome is recorded in
:data:`RECORDER`, which the grader turns into per-student feedback (name, message, hint — never the code).
Messages show the input (small tensors in full, large ones summarised), the expected and the returned values
at the first differing positions, and the hint; ``what`` and the keys of ``inputs`` must be names the student
sees (the parameter names of their own function), never the check's local variables.

**Inputs the student cannot know in advance.** ``suite.draw`` is the one source of randomness a check may
use: a :class:`Draws` keyed by the submission's draw key (HMAC of the course secret and the submission's
answer cells, set by the grader through :func:`use_draw_key` before the test cells run; the public practice
key otherwise) and the suite's name. The same submission always meets the same inputs; an edited one meets
new ones. Exceptions raised by the student's function (they arrive as ``StudentError`` subclasses of the
matching builtin type) count as a failed check with their message.

Comparison vocabulary shared with :mod:`lowbit.testing`: ``(got, expected, what, *, rtol, atol, inputs)``
with the tolerances keyword-only, and one :func:`describe`.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import math
from typing import Any, Callable, Iterator, Sequence

import torch

from autograder.secret import PRACTICE_KEY
from lowbit.testing import describe, gradients_of

#: Outcomes of every named check since the grader last cleared it: dicts suite/name/passed/message/hint.
RECORDER: list[dict] = []
#: How many differing positions a failure message lists.
SHOWN_DIFFERENCES = 3
_DRAW_KEY: list[bytes] = [PRACTICE_KEY]


def use_draw_key(key: bytes) -> None:
    """Key every :class:`Draws` created from now on (the grader calls this once per submission)."""
    if not isinstance(key, bytes) or len(key) < 16:
        raise ValueError("the draw key must be at least 16 bytes (see autograder.secret.draw_key)")
    _DRAW_KEY[0] = key


def current_draw_key() -> bytes:
    return _DRAW_KEY[0]


class Draws:
    """Every random input of one suite: one ``torch.Generator`` keyed by the draw key and the suite's name.

    Each method advances the same generator, so a check's inputs depend on the key and on the order of
    draws only. Methods return plain Python values or float32 tensors unless told otherwise. Nothing else may
    seed a check's inputs: a generator of a check's own (even seeded from one of these draws) is only for
    reproducing a draw the graded function itself is specified to make (e.g. a seeded stochastic rounding).
    """

    def __init__(self, label: str) -> None:
        seed = int.from_bytes(hmac.new(current_draw_key(), label.encode(), hashlib.sha256).digest()[:8], "big")
        self.generator = torch.Generator().manual_seed(seed >> 1)

    def integer(self, low: int, high: int) -> int:
        """A uniform integer in [low, high] (both included)."""
        if high < low:
            raise ValueError(f"empty integer range [{low}, {high}]")
        return int(torch.randint(low, high + 1, (1,), generator=self.generator))

    def uniform(self, low: float, high: float) -> float:
        """A uniform float in [low, high)."""
        return low + (high - low) * float(torch.rand((), generator=self.generator, dtype=torch.float64))

    def choice(self, options: Sequence) -> Any:
        """One of ``options``."""
        return options[self.integer(0, len(options) - 1)]

    def sample(self, options: Sequence, k: int) -> list:
        """``k`` distinct items of ``options``, in drawn order."""
        order = torch.randperm(len(options), generator=self.generator)[:k]
        return [options[int(i)] for i in order]

    def normal(self, *shape: int, std: float = 1.0, mean: float = 0.0) -> torch.Tensor:
        """float32 tensor of ``shape`` with N(mean, std^2) elements."""
        return torch.randn(*shape, generator=self.generator) * std + mean

    def rand(self, *shape: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        """float32 tensor of ``shape``, uniform in [low, high)."""
        return torch.rand(*shape, generator=self.generator) * (high - low) + low

    def randint(self, low: int, high: int, shape: tuple[int, ...], dtype: torch.dtype = torch.int64) -> torch.Tensor:
        """Integer tensor of ``shape`` uniform in [low, high) cast to ``dtype``."""
        return torch.randint(low, high, shape, generator=self.generator).to(dtype)

    def size(self, n: int) -> int:
        """A size near ``n`` (up to 20 % more): a check's shapes are not fixed numbers either."""
        return n + self.integer(0, n // 5)

    def power_of_two(self, low: int, high: int) -> float:
        """2^-k for an integer k in [low, high]: products and divisions by it are exact (ties stay ties)."""
        return 2.0 ** -self.integer(low, high)

    def positive(self, *shape: int) -> torch.Tensor:
        """float32 tensor of ``shape`` uniform in [0.5, 1.5): an upstream gradient whose terms cannot cancel in a
        summed gradient (so a mistake in a few terms, or a flipped sign, always shows)."""
        return self.rand(*shape, low=0.5, high=1.5)

    def heavy_tailed(self, n: int) -> torch.Tensor:
        """Laplace-like weights with a few outliers, like a real layer (float32 [n])."""
        x = torch.randn(n, generator=self.generator) * torch.rand(n, generator=self.generator).pow(2) * 0.2
        x[self.integer(0, max(n // 50, 1) - 1):: max(n // 50, 1)] *= 4
        return x

    def permutation(self, n: int) -> torch.Tensor:
        return torch.randperm(n, generator=self.generator)

    def mix(self, edge: torch.Tensor, drawn: torch.Tensor) -> torch.Tensor:
        """The hand-picked ``edge`` values and the ``drawn`` ones (both 1-D), shuffled together.

        Edge cases keep their values (ties, constants, limits) but no longer make up the whole input, so a table
        of the public cases does not cover a check.
        """
        both = torch.cat([edge.reshape(-1).to(drawn.dtype), drawn.reshape(-1)])
        return both[self.permutation(both.numel())]


class CheckSuite:
    """Named checks for one graded function; :meth:`finish` fails if any of them failed."""

    def __init__(self, function: str, contract: Any = None) -> None:
        self.function = function
        #: The lab's contract (None for a suite without one): ``expect_reference`` finds the reference there.
        self.contract = contract
        #: The student's parameter names (from the lab's contract), used to label inputs in messages.
        self.parameters: list[str] = contract.graded[function].parameters if contract is not None else []
        self.failures: list[str] = []
        self.count = 0
        #: This suite's random inputs (see :class:`Draws`).
        self.draw = Draws(function)

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

    def label(self, *args: Any, **kwargs: Any) -> tuple[str, dict]:
        """("f(r, scale=0.05, bits=8)", {"r": tensor}): a call as the student wrote their signature.

        Tensor (and list) arguments are named in the call and shown as inputs (in full when small, summarised
        when large); other arguments are written inline.
        """
        names = [self.parameters[i] if i < len(self.parameters) else f"argument {i}" for i in range(len(args))]
        parts, inputs = [], {}
        for name, value in [*zip(names, args), *kwargs.items()]:
            if isinstance(value, (torch.Tensor, list, tuple)) and not isinstance(value, str):
                parts.append(name)
                inputs[name] = value
            else:
                parts.append(f"{name}={value!r}")
        return f"{self.function}({', '.join(parts)})", inputs

    def finish(self) -> None:
        """Raise AssertionError naming every failed check (call once, after all checks)."""
        if self.failures:
            listing = "\n".join(f"  - {failure}" for failure in self.failures)
            raise AssertionError(f"{self.function}: {len(self.failures)} of {self.count} hidden checks "
                                 f"failed:\n{listing}")


def summed_tolerance(mass: float, rtol: float = 1e-5) -> dict:
    """Tolerance of a gradient that sums many terms (a shared scale's, a per-channel mean's): ``rtol`` of the terms'
    total size ``mass`` (Σ |term|), for float32 summation in any order."""
    return {"rtol": rtol, "atol": rtol * mass + 1e-8}


def _label(what: str, inputs: dict | None) -> str:
    text = what
    if inputs:
        text += " with input " + ", ".join(f"{k}={describe(v)}" for k, v in inputs.items())
    return text


def _mismatch(label: str, expected: Any, got: Any, extra: str = "") -> AssertionError:
    return AssertionError(f"{label}:\n  expected {describe(expected)}\n  got      {describe(got)}" +
                          (f"\n  {extra}" if extra else ""))


def _differences(bad: torch.Tensor, got: torch.Tensor, expected: torch.Tensor, inputs: dict | None) -> str:
    """The first differing positions: index, each same-shaped input's value there, expected, got."""
    where = bad.nonzero()
    lines = [f"{len(where)} of {expected.numel()} elements differ; first at:"]
    aligned = {k: v for k, v in (inputs or {}).items() if isinstance(v, torch.Tensor) and v.shape == expected.shape}
    for row in where[:SHOWN_DIFFERENCES].tolist():
        index = tuple(row)
        at = "".join(f"{k}={v[index].item():.7g}, " for k, v in aligned.items())
        lines.append(f"    index {index}: {at}expected {expected[index].item():.7g}, got {got[index].item():.7g}")
    return "\n".join(lines)


def _is_sequence(value: Any) -> bool:
    return isinstance(value, (tuple, list))


def expect_tensor(got: Any, what: str = "result") -> torch.Tensor:
    """Assert ``got`` is a torch.Tensor; returns it."""
    if not isinstance(got, torch.Tensor):
        raise AssertionError(f"{what}: expected a torch.Tensor, got {type(got).__name__}: {describe(got)}")
    return got


def expect_dtype(got: Any, dtype: torch.dtype, what: str = "result", *, inputs: dict | None = None) -> None:
    """Assert ``got`` is a tensor of exactly ``dtype``."""
    expect_tensor(got, _label(what, inputs))
    if got.dtype != dtype:
        raise AssertionError(f"{_label(what, inputs)}: expected dtype {dtype}, got {got.dtype}")


def expect_shape(got: Any, shape: tuple[int, ...] | torch.Size, what: str = "result", *,
                 inputs: dict | None = None) -> None:
    """Assert ``got`` is a tensor of exactly ``shape``."""
    expect_tensor(got, _label(what, inputs))
    if tuple(got.shape) != tuple(shape):
        raise AssertionError(f"{_label(what, inputs)}: expected shape {tuple(shape)}, got {tuple(got.shape)}")


def expect_length(got: Any, length: int, what: str = "result", *, inputs: dict | None = None) -> None:
    """Assert ``got`` is a tuple or list of exactly ``length`` items (never compare sequences by ``zip``)."""
    if not _is_sequence(got) or len(got) != length:
        raise AssertionError(f"{_label(what, inputs)}:\n  expected a tuple of {length} values\n"
                             f"  got      {describe(got)}")


def expect_equal(got: Any, expected: Any, what: str = "result", *, inputs: dict | None = None) -> None:
    """Exact comparison. Tensors (integer codes, masks): same dtype, same shape, every element equal.
    Python values: equal and of the same kind (a bool is not an int); tuples/lists: same length, item by item."""
    label = _label(what, inputs)
    if isinstance(expected, torch.Tensor):
        expect_dtype(got, expected.dtype, what, inputs=inputs)
        expect_shape(got, expected.shape, what, inputs=inputs)
        if not torch.equal(got, expected):
            raise _mismatch(label, expected, got, _differences(got != expected, got, expected, inputs))
        return
    if _is_sequence(expected):
        expect_length(got, len(expected), what, inputs=inputs)
        for index, (g, e) in enumerate(zip(got, expected, strict=True)):
            expect_equal(g, e, f"{what}[{index}]", inputs=inputs)
        return
    if isinstance(got, torch.Tensor) or isinstance(got, bool) != isinstance(expected, bool) or got != expected:
        raise _mismatch(label, expected, got)


#: Kept for readability in checks of integer codes.
expect_exact = expect_equal


def expect_close(got: Any, expected: Any, what: str = "result", *, rtol: float = 0.0, atol: float = 0.0,
                 inputs: dict | None = None) -> None:
    """Float comparison with a stated tolerance: |got - expected| <= atol + rtol * |expected|, elementwise.

    Tensors must have the expected shape (check the dtype separately with :func:`expect_dtype`); numbers and
    tuples/lists of numbers are compared item by item after their lengths. NaN matches NaN.
    """
    label = _label(what, inputs)
    if _is_sequence(expected) and not isinstance(got, torch.Tensor):
        expect_length(got, len(expected), what, inputs=inputs)
        for index, (g, e) in enumerate(zip(got, expected, strict=True)):
            expect_close(g, e, f"{what}[{index}]", rtol=rtol, atol=atol, inputs=inputs)
        return
    if isinstance(expected, torch.Tensor):
        expect_tensor(got, label)
        expect_shape(got, expected.shape, what, inputs=inputs)
        g, e = got.detach().to(torch.float64), expected.detach().to(torch.float64)
    else:
        if isinstance(got, bool) or not isinstance(got, (int, float)) and not \
                (isinstance(got, torch.Tensor) and got.numel() == 1):
            raise AssertionError(f"{label}: expected a number close to {expected!r}, got {describe(got)}")
        g, e = torch.tensor(float(got), dtype=torch.float64), torch.tensor(float(expected), dtype=torch.float64)
    close = torch.isclose(g, e, atol=atol, rtol=rtol, equal_nan=True)
    if not bool(close.all()):
        diff = (g - e).abs().nan_to_num(math.inf).max().item()
        detail = f"max |difference| = {diff:.3g} exceeds the tolerance atol={atol:g}, rtol={rtol:g}"
        if g.ndim:
            detail += "\n  " + _differences(~close, g, e, inputs)
        raise _mismatch(label, expected, got, detail)


def expect_reference(suite: "CheckSuite", fn: Callable, *args: Any, tolerance: dict | None = None,
                     **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` returns the tensor the contract's reference of ``suite.function`` returns: the same
    dtype and shape, values exact (or within ``tolerance``: ``rtol`` / ``atol`` as :func:`expect_close`), the call
    labelled as the student wrote it. Returns what ``fn`` returned."""
    what, inputs = suite.label(*args, **kwargs)
    got = fn(*args, **kwargs)
    expected = suite.contract.reference(suite.function)(*args, **kwargs)
    if tolerance is None:
        expect_equal(got, expected, what, inputs=inputs)
    else:
        expect_dtype(got, expected.dtype, what, inputs=inputs)
        expect_close(got, expected, what, inputs=inputs, **tolerance)
    return got


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
    for index, (kept, now) in enumerate(zip(before, inputs, strict=True)):
        if not torch.equal(kept, now):
            raise AssertionError(f"{what} modified its input {index} in place; work on a copy instead")
    return result


def call_with_gradients(fn: Callable, *args: Any, wrt: Sequence[int | str], upstream: Any = None,
                        **kwargs: Any) -> tuple[Any, list[torch.Tensor]]:
    """``(value, gradients)`` of ``fn(*args, **kwargs)``, with the contract of :func:`lowbit.testing.gradients_of`:
    the detached result and, for each ``wrt`` entry (a position or keyword name of a float tensor argument),
    d⟨upstream, result⟩/d input, a tensor of that input's shape and dtype.

    For a student's function (a sandbox proxy) one request goes to the sandbox, which computes both there; the
    reply is checked here (one genuine float tensor of the input's shape and dtype per ``wrt`` entry, no in-place
    edit of the inputs), and a failure inside the student's code arrives as a ``StudentError``, as for a call.
    Compare the returned value with the reference too: a function may behave differently when its inputs require
    grad. Draw ``upstream`` from ``suite.draw`` (e.g. ``suite.draw.normal(*shape)``) so a fixed table of
    gradients cannot match it. For any other callable (a reference) the gradients are computed here.

    The one implementation is :func:`lowbit.testing.gradients_of`, which hands a proxy (any callable whose class
    defines ``call_with_gradients``: :class:`autograder.runner.Proxy`) to that method; this name says at the call
    site of a check that the student's side of it crosses the sandbox.
    """
    return gradients_of(fn, *args, wrt=wrt, upstream=upstream, **kwargs)


def expect_gradients(fn: Callable, reference: Callable | None, *args: Any, wrt: Sequence[int | str], upstream: Any,
                     what: str | None = None, inputs: dict | None = None, names: Sequence[str] = (),
                     suite: CheckSuite | None = None, rtol: float = 0.0, atol: float = 0.0,
                     tolerances: Sequence[dict] | None = None, value_tolerance: dict | None = None,
                     check_value: bool = True, only: Sequence[int | str] | None = None,
                     expected: tuple[Any, Sequence[torch.Tensor]] | None = None, **kwargs: Any) -> list[torch.Tensor]:
    """Assert the student's ``fn`` has the expected value *and* gradients at ``(*args, **kwargs)``.

    The student's come from one :func:`call_with_gradients` (computed in the sandbox); the expected ones from the
    same computation on ``reference`` here, or are given as ``expected=(value, [gradient per wrt entry])`` (e.g.
    from a library op, or the identity of a plain STE) with ``reference=None``. The value of the gradient request
    is compared too (a function may behave differently when its inputs require grad), then each gradient, named
    "∂⟨upstream, result⟩/∂<name>" after ``names`` (the student's parameter names) or the keyword.

    ``suite``: label the call from it (``what``, ``inputs`` and ``names`` default to ``suite.label(*args,
    **kwargs)`` and ``suite.parameters``). Tolerances as :func:`expect_close`: ``rtol`` / ``atol`` for everything,
    or ``value_tolerance`` (a dict of ``rtol`` / ``atol``) for the value and ``tolerances`` (one dict per ``wrt``
    entry) for the gradients. ``check_value=False`` grades the gradients only (the value must still be a
    tensor). ``only``: the ``wrt`` entries whose gradients this check grades (default: all; the others are still
    requested, so the request is the same). Every other keyword goes to ``fn``. Returns the student's gradients.
    """
    if (reference is None) == (expected is None):
        raise TypeError("expect_gradients needs exactly one of a reference function and expected=(value, gradients)")
    if tolerances is not None and len(tolerances) != len(wrt):
        raise ValueError(f"tolerances has {len(tolerances)} entries for {len(wrt)} wrt entries: give one per entry")
    if only is not None and not set(only) <= set(wrt):
        raise ValueError(f"only={list(only)} names entries that are not in wrt={list(wrt)}")
    if suite is not None:
        label, labelled = suite.label(*args, **kwargs)
        what = label if what is None else what
        inputs = labelled if inputs is None else inputs
        names = names or suite.parameters
    what = "result" if what is None else what
    if expected is None:
        expected = gradients_of(reference, *args, wrt=wrt, upstream=upstream, **kwargs)
    want_value, want_grads = expected
    if len(want_grads) != len(wrt):
        raise ValueError(f"expected has {len(want_grads)} gradients for {len(wrt)} wrt entries")
    got_value, got_grads = call_with_gradients(fn, *args, wrt=wrt, upstream=upstream, **kwargs)
    shown = {**(inputs or {}), **({"upstream": upstream} if upstream is not None else {})}
    value_label = f"{what} (called with inputs that require grad)"
    if check_value:
        expect_close(got_value, want_value, value_label, inputs=inputs,
                     **(value_tolerance if value_tolerance is not None else {"rtol": rtol, "atol": atol}))
    elif isinstance(want_value, torch.Tensor):
        expect_tensor(got_value, _label(value_label, inputs))
    for index, (position, got, want) in enumerate(zip(wrt, got_grads, want_grads, strict=True)):
        if only is not None and position not in only:
            continue
        name = position if isinstance(position, str) else \
            names[position] if position < len(names) else f"argument {position}"
        tolerance = tolerances[index] if tolerances is not None else {"rtol": rtol, "atol": atol}
        expect_close(got, want, f"{what}: gradient ∂⟨upstream, result⟩/∂{name}", inputs=shown, **tolerance)
    return got_grads
