"""One contract per lab: its graded functions, their signatures, the protected references, and the library
calls that would do a graded function's whole job.

The contract lives next to the lab's hidden checks as ``autograder/checks/<lab>.contract.json``::

    {"lab": "lab1_linear",
     "graded": {"linear_quantize": {"signature": "(r, scale, zero_point, bits, signed=True)",
                                    "references": ["lowbit.quant.linear.linear_quantize"],
                                    "whole_job": ["torch.quantize_per_tensor", ...]}}}

``references``: qualified names of the course's implementations of this function; the first is the one the
hidden checks compare against. All of them are tripwired in the sandbox and stripped (with the internals they
are built from) from the sandbox's copy of the package. ``whole_job``: dotted prefixes of library calls
(``torch.ao.quantization`` covers everything under it) or ``.name`` for a method called on any object
(``.dequantize``); an answer cell using one is flagged for the instructor's review.

Read by: the hidden checks (:meth:`Contract.reference`, :meth:`Contract.call_text`), the mutant catalogue
test (every graded function has its mutants), the sandbox (tripwires, answer-free package) and the static
scan (protected names, whole-job calls).
"""
from __future__ import annotations

import functools
import importlib
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .checks import contract_file, find_check_module


class ContractError(ValueError):
    """A lab's contract file is missing a field or names something that does not exist."""


@dataclass(frozen=True)
class GradedFunction:
    """One function the students write."""

    name: str
    signature: str
    references: tuple[str, ...]
    whole_job: tuple[str, ...] = ()

    @property
    def parameters(self) -> list[str]:
        """Parameter names in order, from the signature (``"(r, scale, bits=8)"`` -> ``["r", "scale", "bits"]``)."""
        return list(_parse_signature(self.signature).parameters)


@functools.lru_cache(maxsize=None)
def _parse_signature(text: str) -> inspect.Signature:
    namespace: dict = {}
    try:
        exec(f"def _f{text}: pass", {}, namespace)  # noqa: S102 - the contract file is course material
    except SyntaxError as exc:
        raise ContractError(f"signature {text!r} is not a Python parameter list: {exc.msg}") from None
    return inspect.signature(namespace["_f"])


@dataclass(frozen=True)
class Contract:
    """A lab's contract (see the module docstring)."""

    lab: str
    graded: dict[str, GradedFunction]
    path: Path | None = None

    @property
    def protected(self) -> list[str]:
        """Every reference of every graded function, in contract order, without repeats."""
        return list(dict.fromkeys(ref for f in self.graded.values() for ref in f.references))

    def reference(self, function: str) -> Callable:
        """The course's implementation of ``function`` (trusted side: the real package is importable there)."""
        dotted = self.graded[function].references[0]
        module, _, attr = dotted.rpartition(".")
        return getattr(importlib.import_module(module), attr)

    def call_text(self, function: str, args: tuple = (), kwargs: dict | None = None,
                  describe: Callable[[Any], str] = repr) -> str:
        """``function(name=value, ...)`` with the parameter names students see in their own signature."""
        names = self.graded[function].parameters if function in self.graded else []
        parts = [f"{names[i]}={describe(a)}" if i < len(names) else describe(a) for i, a in enumerate(args)]
        parts += [f"{k}={describe(v)}" for k, v in (kwargs or {}).items()]
        return f"{function}({', '.join(parts)})"

    def to_json(self) -> dict:
        return {"lab": self.lab, "graded": {name: {"signature": f.signature, "references": list(f.references),
                                                   "whole_job": list(f.whole_job)}
                                            for name, f in self.graded.items()}}


def parse_contract(data: dict, path: Path | None = None) -> Contract:
    """Validate a contract's JSON form; ContractError says which field is wrong."""
    where = str(path) if path else "contract"
    if not isinstance(data, dict) or not isinstance(data.get("lab"), str) or not isinstance(data.get("graded"), dict):
        raise ContractError(f"{where}: expected {{\"lab\": str, \"graded\": {{function: {{...}}}}}}")
    graded = {}
    for name, entry in data["graded"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("signature"), str):
            raise ContractError(f"{where}: graded function {name!r} needs a \"signature\" string")
        references = entry.get("references", [])
        whole_job = entry.get("whole_job", [])
        if not (isinstance(references, list) and references and all(isinstance(r, str) and "." in r
                                                                      for r in references)):
            raise ContractError(f"{where}: {name!r} needs \"references\": a non-empty list of qualified names")
        if not (isinstance(whole_job, list) and all(isinstance(w, str) and w for w in whole_job)):
            raise ContractError(f"{where}: {name!r}: \"whole_job\" must be a list of dotted names")
        _parse_signature(entry["signature"])
        graded[name] = GradedFunction(name, entry["signature"], tuple(references), tuple(whole_job))
    return Contract(data["lab"], graded, path)


def contract_path(lab: str) -> Path | None:
    """``<lab>.contract.json`` next to the lab's check module, or None."""
    module = find_check_module(lab)
    if module is None:
        return None
    candidate = contract_file(module, lab)
    return candidate if candidate.is_file() else None


def load_contract(lab: str) -> Contract:
    """The contract of ``lab`` (ContractError if its file is missing or malformed)."""
    path = contract_path(lab)
    if path is None:
        raise ContractError(f"lab {lab!r} has no contract: add {lab}.contract.json next to its checks "
                            f"(autograder/checks/{lab}.py)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ContractError(f"{path}: not valid JSON ({exc})") from None
    contract = parse_contract(data, path)
    if contract.lab != lab:
        raise ContractError(f"{path}: says lab {contract.lab!r}, expected {lab!r}")
    return contract
