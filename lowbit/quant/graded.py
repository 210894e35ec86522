"""Graded functions passed to a pipeline: ``functions`` mappings and lazily resolved references.

A lab's pipeline (``lowbit.quant.adaround.adaround_model``, ``equalize.equalize_model``, ...) calls the
functions the lab grades through a ``functions`` mapping — the student's callables in the lab — and falls back
on the course's reference for a missing name. The reference is found **by dotted name when it is first needed**
(``importlib``), never imported at the top of the pipeline's module: the grader's sandbox
(``autograder/student_build.py``) strips every reference and what it reaches, *except* what the lab's setup
cell imports and everything that reaches by static imports and calls. A static ``from lowbit.quant.x import
ref`` in a pipeline the setup cell imports would hand the reference to the sandbox; a name in a string does not.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping

__all__ = ["LAB5_REFERENCES", "LAB6_REFERENCES", "check_functions", "resolve_function"]

#: Lab 5's graded functions → the module of each reference. Every Lab 5 pipeline accepts any of these names
#: (one ``functions`` dict of the student's answers fits ``equalize_model``, ``correct_biases`` and
#: ``adaround_model`` alike) and uses those it needs.
LAB5_REFERENCES = {
    "equalization_scales": "lowbit.quant.equalize", "equalize_pair": "lowbit.quant.equalize",
    "expected_relu_input": "lowbit.quant.bias_correction", "corrected_bias": "lowbit.quant.bias_correction",
    "rectified_sigmoid": "lowbit.quant.adaround", "init_v": "lowbit.quant.adaround",
    "rounding_regularizer": "lowbit.quant.adaround", "beta_schedule": "lowbit.quant.adaround",
    "adaround_layer": "lowbit.quant.adaround",
}

#: Lab 6's graded functions → the module of each reference (all in ``lowbit.quant.mixed``); every Lab 6 pipeline
#: (``mixed.quantize_products``, the sweeps, ``hessian_traces``, ...) accepts any of these names.
LAB6_REFERENCES = {name: "lowbit.quant.mixed" for name in (
    "quantize_operand", "zero_point_matmul", "dynamic_quantized_matmul", "multiply_count", "sensitivity_ranking",
    "products_within_budget", "allocate_bits")}


def check_functions(functions: Mapping[str, Callable] | None, known: Mapping[str, str]) -> dict[str, Callable]:
    """``functions`` as a dict after checking it (None → ``{}``: every reference). ``known`` maps each graded
    name the pipeline uses to the module holding its reference; any other name is a ValueError (a typo would
    otherwise silently grade the reference), a non-callable value a TypeError."""
    if functions is None:
        return {}
    if not isinstance(functions, Mapping):
        raise TypeError(f"functions must be a mapping from function names to callables, got "
                        f"{type(functions).__name__}")
    unknown = sorted(set(functions) - set(known))
    if unknown:
        raise ValueError(f"functions names {unknown}, which this pipeline does not use; known names: "
                         f"{', '.join(known)}")
    for name, fn in functions.items():
        if not callable(fn):
            raise TypeError(f"functions[{name!r}] must be callable, got {type(fn).__name__}")
    return dict(functions)


def resolve_function(functions: Mapping[str, Callable] | None, name: str, known: Mapping[str, str]) -> Callable:
    """``functions[name]`` when given, else ``getattr(import_module(known[name]), name)`` imported now (see the
    module docstring for why not earlier). ``known``: graded name → dotted module of its reference."""
    if name not in known:
        raise ValueError(f"{name!r} is not a graded function of this pipeline; known names: {', '.join(known)}")
    chosen = check_functions(functions, known)
    if name in chosen:
        return chosen[name]
    return getattr(importlib.import_module(known[name]), name)
