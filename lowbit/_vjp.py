"""Gradients of a function at given inputs as vector-Jacobian products: the one implementation behind
``lowbit.testing.gradients_of`` (visible tests, the grader's trusted checks) and the sandbox worker's "grad"
request.

For ``fn(*args, **kwargs)`` and the inputs named in ``wrt`` (positional indices ``int`` and keyword names ``str``,
each a floating-point tensor), :func:`differentiate` calls ``fn`` with fresh leaf copies of those inputs
(``requires_grad=True``), then returns the result (detached) and, for each ``wrt`` entry,
d⟨upstream, result⟩/d input: a tensor of that input's shape and dtype, zeros where the input does not reach the
result (or when the result is detached from it). ``upstream=None`` asks for the gradient of a single-element
result; otherwise ``upstream`` is a float tensor of the result's shape, or, for a result that is a tuple/list, a
tuple/list of the same length whose items are such tensors or None (no contribution from that item).

Standard library and torch only, and no import of the rest of the package: the grader binds this file into the
sandbox next to its worker (as it binds ``wire``); the worker imports it before the first answer cell runs when
the lab's setup cells have imported torch (else at the first gradient request). The torch entry points used below
are looked up once, at import, so a student cell that later replaces ``torch.autograd.grad`` or
``Tensor.backward`` does not change what the worker computes. (That is convenience,
not the defence: the trusted side compares the returned gradients with the reference's VJP against an upstream
drawn from the course secret; see the instructor guide's trust model.)
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

_autograd_grad = torch.autograd.grad
_enable_grad = torch.enable_grad
_zeros_like = torch.zeros_like
_ones_like = torch.ones_like
_Tensor = torch.Tensor
_detach = torch.Tensor.detach
_clone = torch.Tensor.clone
_requires_grad_ = torch.Tensor.requires_grad_
_is_floating_point = torch.Tensor.is_floating_point
_to = torch.Tensor.to


class UnusableResult(ValueError):
    """The function's result cannot be differentiated as asked (not a float tensor, or shaped unlike the upstream);
    the message says what came back and what was needed."""


def _kind(value: Any) -> str:
    if isinstance(value, _Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def _named(position: int | str) -> str:
    return f"argument {position}" if isinstance(position, int) else f"keyword argument {position!r}"


def check_wrt(args: Sequence[Any], kwargs: dict[str, Any], wrt: Any) -> list[int | str]:
    """``wrt`` as a list after checking it names distinct floating-point tensor arguments of the call.

    Raises TypeError (not a list of positions, or a named argument that is not a float tensor) or ValueError
    (empty, out of range, unknown keyword, repeated)."""
    if isinstance(wrt, (str, bytes)) or not isinstance(wrt, (list, tuple)):
        raise TypeError(f"wrt must be a list of argument positions (int) and/or keyword names (str), e.g. wrt=[0], "
                        f"got {wrt!r}")
    if not wrt:
        raise ValueError("wrt is empty: name at least one tensor argument to take the gradient with respect to")
    positions = list(wrt)
    for position in positions:
        if type(position) is int:
            if not 0 <= position < len(args):
                raise ValueError(f"wrt names argument {position}, but the call has {len(args)} positional "
                                 f"argument(s) (positions 0..{len(args) - 1})")
            value = args[position]
        elif type(position) is str:
            if position not in kwargs:
                raise ValueError(f"wrt names keyword argument {position!r}, which the call does not pass "
                                 f"(keywords: {sorted(kwargs)})")
            value = kwargs[position]
        else:
            raise TypeError(f"wrt entries must be int positions or str keyword names, got {position!r}")
        if not isinstance(value, _Tensor) or not _is_floating_point(value):
            raise TypeError(f"wrt names {_named(position)}, which is {_kind(value)}; gradients are taken only with "
                            "respect to floating-point tensors")
    if len(set(positions)) != len(positions):
        raise ValueError(f"wrt names an argument more than once: {positions!r}")
    return positions


def check_upstream(upstream: Any) -> None:
    """Refuse an ``upstream`` that is not None, a float tensor, or a non-empty tuple/list of those / None."""
    items = upstream if isinstance(upstream, (tuple, list)) else [upstream]
    if isinstance(upstream, (tuple, list)) and not upstream:
        raise TypeError("upstream is an empty sequence: give one upstream gradient (or None) per result item")
    for item in items:
        if item is None and not isinstance(upstream, (tuple, list)):
            continue
        if item is not None and not (isinstance(item, _Tensor) and _is_floating_point(item)):
            raise TypeError(f"upstream must be None, a floating-point tensor, or a tuple/list of those and None; "
                            f"got {_kind(item)}")


def _pairs(result: Any, upstream: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(output, upstream gradient) pairs of the result items that take part, after checking their shapes."""
    if isinstance(result, _Tensor):
        if isinstance(upstream, (tuple, list)):
            raise UnusableResult(f"the function returned one tensor (shape {tuple(result.shape)}), but the check gives "
                             f"{len(upstream)} upstream gradients (one per item of a tuple result)")
        return [(result, _upstream_for(result, upstream, "the result"))]
    if not isinstance(result, (tuple, list)):
        raise UnusableResult(f"the function returned {_kind(result)}; gradients need a tensor result "
                        "(or a tuple/list of tensors)")
    if not isinstance(upstream, (tuple, list)) or len(upstream) != len(result):
        given = f"{len(upstream)} upstream gradients" if isinstance(upstream, (tuple, list)) else "one upstream"
        raise UnusableResult(f"the function returned a {type(result).__name__} of {len(result)} items, but the check "
                         f"gives {given}; expected one per item")
    return [(item, _upstream_for(item, u, f"result item {i}"))
            for i, (item, u) in enumerate(zip(result, upstream)) if u is not None]


def _upstream_for(output: Any, upstream: torch.Tensor | None, what: str) -> torch.Tensor:
    if not isinstance(output, _Tensor):
        raise UnusableResult(f"{what} is {_kind(output)}; a gradient needs a tensor there")
    if not _is_floating_point(output):
        raise UnusableResult(f"{what} is {_kind(output)}; gradients flow only through floating-point results")
    if upstream is None:
        if output.numel() != 1:
            raise UnusableResult(f"{what} has shape {tuple(output.shape)}; without an upstream gradient only a "
                             "single-element result can be differentiated")
        return _ones_like(output)
    if tuple(upstream.shape) != tuple(output.shape):
        raise UnusableResult(f"{what} has shape {tuple(output.shape)}, but the upstream gradient has shape "
                         f"{tuple(upstream.shape)}")
    return _to(upstream, output.dtype)


def _detached(result: Any) -> Any:
    if isinstance(result, _Tensor):
        return _detach(result)
    if isinstance(result, tuple) and hasattr(type(result), "_fields"):
        return type(result)(*(_detached(item) for item in result))
    if isinstance(result, (tuple, list)):
        return type(result)(_detached(item) for item in result)
    return result


def differentiate(fn: Callable, args: Sequence[Any], kwargs: dict[str, Any], wrt: Any, upstream: Any = None
                  ) -> tuple[Any, list[torch.Tensor], tuple[list[Any], dict[str, Any]]]:
    """(detached result, one gradient per ``wrt`` entry, (the args, the kwargs) ``fn`` was called with).

    The third item holds the leaf copies ``fn`` saw, so a caller can check them for in-place edits afterwards.
    """
    positions = check_wrt(args, kwargs, wrt)
    check_upstream(upstream)
    args, kwargs = list(args), dict(kwargs)
    leaves = []
    for position in positions:
        container = args if isinstance(position, int) else kwargs
        leaf = _requires_grad_(_clone(_detach(container[position])), True)
        container[position] = leaf
        leaves.append(leaf)
    with _enable_grad():
        result = fn(*args, **kwargs)
        pairs = [(out, up) for out, up in _pairs(result, upstream) if out.requires_grad]
        grads: Sequence[torch.Tensor | None] = [None] * len(leaves)
        if pairs:
            grads = _autograd_grad([out for out, _ in pairs], leaves, [up for _, up in pairs], allow_unused=True)
    gradients = [_zeros_like(leaf, requires_grad=False) if g is None else _detach(g) for leaf, g in zip(leaves, grads)]
    return _detached(result), gradients, (args, kwargs)


def gradients_of(fn: Callable, *args: Any, wrt: Sequence[int | str], upstream: Any = None,
                 **kwargs: Any) -> tuple[Any, list[torch.Tensor]]:
    """``(value, gradients)`` of ``fn(*args, **kwargs)``: the detached result and, for each entry of ``wrt``,
    d⟨upstream, result⟩/d input (a tensor of that input's shape and dtype). See the module docstring.

    Raises TypeError / ValueError for a bad ``wrt`` or ``upstream`` (the caller's mistake), :class:`UnusableResult`
    for a result that cannot be differentiated as asked, and whatever ``fn`` itself raises.

    A callable whose class defines ``call_with_gradients`` (the grader's proxy for a student's function, whose
    code runs in a sandbox and cannot be differentiated here) is asked through that method instead, with the same
    arguments, so visible tests and hidden checks written with this function grade a proxy the same way."""
    remote = getattr(type(fn), "call_with_gradients", None)
    if remote is not None:
        return remote(fn, *args, wrt=wrt, upstream=upstream, **kwargs)
    value, gradients, _ = differentiate(fn, args, kwargs, wrt, upstream)
    return value, gradients
