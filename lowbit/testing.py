"""Checks for the visible tests in lab notebooks: students read their output.

Each ``assert_*`` raises ``AssertionError`` whose message says what was checked, on which input, what was
expected, what came back (for floats: the max absolute and relative error against the tolerance) and, when
given, the likely mistake. On success it prints one short ``✓`` line to stdout. Nothing is written to stderr.

    assert_equal_int(q, torch.tensor([0, 2, 2]), "linear_quantize rounds half to even",
                     inputs={"r": r, "scale": 1.0}, hint="use torch.round, not floor(x + 0.5)")
"""
from __future__ import annotations

import inspect
import math
from numbers import Real
from typing import Any, Callable, Mapping, Sequence

import torch

from lowbit._check_failure import CheckFailure
from lowbit._vjp import UnusableResult, check_upstream, check_wrt, gradients_of

__all__ = ["assert_equal_int", "assert_close", "assert_dtype", "assert_shape", "assert_not_modified",
           "assert_gradient_close", "gradients_of"]

_MAX_SHOWN = 12


def describe(value: Any) -> str:
    """A short, readable rendering of a value, shared by the visible tests and the grader's hidden checks.

    Tensors of at most 12 elements are shown in full; larger ones are summarised: first values, shape, dtype and
    the range of their values. Tuples/lists/mappings of tensors are described item by item.
    """
    if isinstance(value, torch.Tensor):
        flat = value.detach().reshape(-1)
        shown = flat[:_MAX_SHOWN].tolist()
        if value.is_floating_point():
            shown = [float(f"{v:.6g}") for v in shown]
        body = ", ".join(str(v) for v in shown)
        if flat.numel() <= _MAX_SHOWN:
            return f"tensor([{body}], dtype={value.dtype}, shape={tuple(value.shape)})"
        finite = flat[torch.isfinite(flat)] if value.is_floating_point() else flat
        span = f", values in [{float(finite.min()):.6g}, {float(finite.max()):.6g}]" if finite.numel() else ""
        return f"tensor([{body}, …], dtype={value.dtype}, shape={tuple(value.shape)}, {flat.numel()} values{span})"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={describe(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
        items = ", ".join(describe(v) for v in value)
        return f"({items})" if isinstance(value, tuple) else f"[{items}]"
    return repr(value)


def _fail(what: str, inputs: Any, expected: Any, got: Any, details: Sequence[str] = (),
          hint: str | None = None) -> None:
    lines = [f"✗ {what}"]
    if inputs is not None:
        lines.append(f"  input:    {describe(inputs)}")
    lines.append(f"  expected: {describe(expected)}")
    lines.append(f"  got:      {describe(got)}")
    lines.extend(f"  {line}" for line in details)
    if got is None:
        lines.append("  likely mistake: the function returned None — did you forget `return`?")
    if hint:
        lines.append(f"  likely mistake: {hint}")
    raise CheckFailure("\n".join(lines))  # an AssertionError; in a notebook the traceback ends at the cell


def _passed(what: str) -> None:
    print(f"✓ {what}")


def _as_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, bool):
        return None
    if isinstance(value, (Real, list, tuple)):
        try:
            return torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            return None
    return None


def _first_mismatch(mask: torch.Tensor, got: torch.Tensor, expected: torch.Tensor) -> str:
    index = tuple(int(i) for i in torch.nonzero(mask)[0])
    where = index if got.ndim else "()"
    return (f"mismatches: {int(mask.sum())} of {mask.numel()} elements; first at index {where}: "
            f"expected {expected[index].item()}, got {got[index].item()}")


def assert_equal_int(got: Any, expected: Any, what: str, *, inputs: Any = None, hint: str | None = None) -> None:
    """``got`` equals ``expected`` exactly: integers (Python ints, or integer tensors of the same shape).

    Also fails when ``got`` is a float tensor (codes must be integers) or a float Python number.
    """
    expected_t, got_t = _as_tensor(expected), _as_tensor(got)
    if expected_t is None:
        raise TypeError(f"assert_equal_int needs an int or integer tensor as expected, got {type(expected)}")
    if got_t is None:
        _fail(what, inputs, expected, got, [f"got a {type(got).__name__}, expected integers"], hint)
    if got_t.is_floating_point() or got_t.is_complex():
        _fail(what, inputs, expected, got, [f"got dtype {got_t.dtype}; integer codes must have an integer dtype "
                                            "(e.g. torch.int8 / torch.uint8)"], hint)
    if got_t.shape != expected_t.shape:
        _fail(what, inputs, expected, got, [f"shape: expected {tuple(expected_t.shape)}, got {tuple(got_t.shape)}"],
              hint)
    mask = got_t.to(torch.int64) != expected_t.to(torch.int64)
    if bool(mask.any()):
        _fail(what, inputs, expected, got, [_first_mismatch(mask, got_t, expected_t)], hint)
    _passed(what)


def assert_close(got: Any, expected: Any, what: str, *, rtol: float = 1e-5, atol: float = 1e-8, inputs: Any = None,
                 hint: str | None = None) -> None:
    """|got − expected| <= atol + rtol·|expected| elementwise (numbers or tensors of the same shape).

    The failure message reports the max absolute error, the max relative error and the tolerance.
    """
    expected_t, got_t = _as_tensor(expected), _as_tensor(got)
    if expected_t is None:
        raise TypeError(f"assert_close needs a number or tensor as expected, got {type(expected)}")
    if got_t is None:
        _fail(what, inputs, expected, got, [f"got a {type(got).__name__}, expected a number or tensor"], hint)
    if got_t.shape != expected_t.shape:
        _fail(what, inputs, expected, got, [f"shape: expected {tuple(expected_t.shape)}, got {tuple(got_t.shape)}"],
              hint)
    details = _close_failure(got_t, expected_t, rtol, atol)
    if details:
        _fail(what, inputs, expected, got, details, hint)
    _passed(what)


def _close_failure(got: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float) -> list[str]:
    """Why same-shaped ``got`` is not within atol + rtol·|expected| of ``expected`` (empty list: it is)."""
    g, e = got.to(torch.float64), expected.to(torch.float64)
    if g.numel() == 0:
        return []
    error = (g - e).abs()
    error = torch.where(torch.isnan(g) & torch.isnan(e), torch.zeros_like(error), error)
    error = torch.where(torch.isinf(g) & (g == e), torch.zeros_like(error), error)
    allowed = atol + rtol * e.abs()
    bad = ~(error <= allowed)                                            # NaN errors count as bad
    if not bool(bad.any()):
        return []
    max_abs = float(error.max()) if not bool(torch.isnan(error).any()) else math.nan
    relative = error / e.abs().clamp(min=1e-300)
    max_rel = float(relative.max()) if not bool(torch.isnan(relative).any()) else math.nan
    details = [f"max abs error: {max_abs:.3g}   max relative error: {max_rel:.3g}   "
               f"tolerance: atol={atol:g} + rtol={rtol:g}·|expected|",
               _first_mismatch(bad, g, e)]
    if bool(torch.isnan(g).any()):
        details.append("got contains NaN (a division by a zero scale?)")
    return details


def assert_dtype(got: Any, dtype: torch.dtype, what: str, hint: str | None = None) -> None:
    """``got`` is a tensor of exactly ``dtype``."""
    if not isinstance(got, torch.Tensor):
        _fail(what, None, f"a tensor of dtype {dtype}", got, [f"got a {type(got).__name__}"], hint)
    if got.dtype != dtype:
        _fail(what, None, f"dtype {dtype}", f"dtype {got.dtype}", [], hint)
    _passed(what)


def assert_shape(got: Any, shape: Sequence[int], what: str, hint: str | None = None) -> None:
    """``got`` is a tensor of exactly ``shape``."""
    if not isinstance(got, torch.Tensor):
        _fail(what, None, f"a tensor of shape {tuple(shape)}", got, [f"got a {type(got).__name__}"], hint)
    if tuple(got.shape) != tuple(shape):
        _fail(what, None, f"shape {tuple(shape)}", f"shape {tuple(got.shape)}", [], hint)
    _passed(what)


def _snapshot(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, torch.nn.Module):
        return {k: v.detach().clone() for k, v in value.state_dict().items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_snapshot(v) for v in value)
    if isinstance(value, dict):
        return {k: _snapshot(v) for k, v in value.items()}
    return None


def _same(before: Any, value: Any) -> bool:
    if before is None:
        return True
    if isinstance(value, torch.Tensor):
        return before.dtype == value.dtype and before.shape == value.shape and \
            bool(torch.equal(before, value.detach()) or
                 (before.is_floating_point() and torch.equal(before.isnan(), value.isnan()) and
                  torch.equal(before.nan_to_num(), value.detach().nan_to_num())))
    if isinstance(value, torch.nn.Module):
        now = value.state_dict()
        return before.keys() == now.keys() and all(_same(before[k], now[k]) for k in before)
    if isinstance(value, (list, tuple)):
        return len(before) == len(value) and all(_same(b, v) for b, v in zip(before, value))
    if isinstance(value, dict):
        return before.keys() == value.keys() and all(_same(before[k], value[k]) for k in before)
    return True


def assert_not_modified(fn: Callable, *args: Any, what: str | None = None, **kwargs: Any) -> None:
    """Call ``fn(*args, **kwargs)`` and check it changed none of its tensor / module arguments in place.

    Returns None, like every ``assert_*`` helper: a visible test cell that ends with it displays nothing
    (a student's copy has no hidden tests after it, and nbgrader reads a displayed number as partial credit).
    """
    name = what or f"{getattr(fn, '__name__', 'the function')} does not modify its inputs"
    before_args = [_snapshot(a) for a in args]
    before_kwargs = {k: _snapshot(v) for k, v in kwargs.items()}
    fn(*args, **kwargs)
    changed = [f"argument {i}" for i, (b, a) in enumerate(zip(before_args, args)) if not _same(b, a)]
    changed += [f"argument {k}=" for k, v in kwargs.items() if not _same(before_kwargs[k], v)]
    if changed:
        first = changed[0]
        index = int(first.split()[1]) if first.split()[1].isdigit() else None
        before = before_args[index] if index is not None else before_kwargs[first.split()[1].rstrip("=")]
        after = args[index] if index is not None else kwargs[first.split()[1].rstrip("=")]
        _fail(name, None, before, after, [f"modified in place: {', '.join(changed)}"],
              "an in-place operation on the input (x /= s, x.clamp_(), x[...] = ...): work on a copy, "
              "e.g. y = x / s")
    _passed(name)


def _parameter_names(fn: Callable, count: int) -> list[str]:
    """The names of ``fn``'s first ``count`` positional parameters ("argument i" where unknown)."""
    try:
        names = [p.name for p in inspect.signature(fn).parameters.values()
                 if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        names = []
    return [names[i] if i < len(names) else f"argument {i}" for i in range(count)]


def assert_gradient_close(fn: Callable, *args: Any, wrt: Sequence[int | str], expected: Sequence[Any], what: str,
                          upstream: Any = None, rtol: float = 1e-5, atol: float = 1e-8, inputs: Any = None,
                          hint: str | None = None, **kwargs: Any) -> None:
    """The gradients of ``fn(*args, **kwargs)`` with respect to the inputs in ``wrt`` match ``expected``.

    ``wrt``, ``upstream``: as :func:`gradients_of` (positions / keyword names of float tensor inputs; the upstream
    gradient, a tensor of the result's shape, or None for a single-element result). ``expected``: one expected
    gradient (tensor of that input's shape) per ``wrt`` entry. Compared as :func:`assert_close`; the message shows
    the inputs (by default the ``wrt`` inputs and the upstream), expected and got gradient, the first differing
    position and the hint, and names the likely mistake when the gradient is zero everywhere. The remaining
    keyword arguments go to ``fn`` (so ``fn`` cannot take keywords named like this helper's own).
    """
    positions = check_wrt(args, kwargs, wrt)
    check_upstream(upstream)
    if isinstance(expected, (str, bytes)) or not isinstance(expected, (list, tuple)) or len(expected) != len(wrt):
        raise TypeError(f"expected must be a list of one gradient per wrt entry ({len(positions)}), got {expected!r}")
    names = _parameter_names(fn, len(args))
    labels = [names[p] if isinstance(p, int) else p for p in positions]
    if inputs is None:
        inputs = {label: args[p] if isinstance(p, int) else kwargs[p] for label, p in zip(labels, positions)}
        if upstream is not None:
            inputs["upstream"] = upstream
    try:
        _, gradients = gradients_of(fn, *args, wrt=positions, upstream=upstream, **kwargs)
    except UnusableResult as exc:
        returned_none = "returned a NoneType" in str(exc)
        _fail(what, inputs, "a floating-point tensor result", None if returned_none else str(exc), [], hint)
    for label, got, want in zip(labels, gradients, expected):
        want_t = _as_tensor(want)
        if want_t is None:
            raise TypeError(f"expected gradient for {label} must be a number or tensor, got {type(want)}")
        title = f"{what}: gradient with respect to {label}"
        if tuple(got.shape) != tuple(want_t.shape):
            raise TypeError(f"expected gradient for {label} has shape {tuple(want_t.shape)}, but {label} has shape "
                            f"{tuple(got.shape)}")
        details = _close_failure(got, want_t, rtol, atol)
        if details:
            if not bool(got.any()) and bool(want_t.any()):
                details.append(f"likely mistake: the gradient is zero everywhere: the result is detached from {label} "
                               "(.detach(), .item(), torch.tensor(...) of a result) or rounds without a "
                               "straight-through gradient")
            _fail(title, inputs, want_t, got, details, hint)
    _passed(what)
