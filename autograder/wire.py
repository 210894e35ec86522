"""Wire format between the trusted grader and the sandboxed worker: JSON values with tagged tensors. No pickle.

Allowed values: None, bool, int, float (incl. nan/inf), str, list, tuple, dict with str keys, namedtuple
(decoded as a plain named tuple), builtin iterators (materialized, arrive as a list iterator), ``torch.Tensor`` and ``numpy.ndarray`` (dtype + shape + base64 bytes).
:func:`decode` is the trusted side's gate: it type-checks every node and rebuilds *genuine* tensors, so a
tensor subclass with a lying ``__eq__`` arrives as a plain ``torch.Tensor``.

This module is also bound read-only into the sandbox (the worker imports it as ``wire``), so it must only
import the standard library, numpy and torch.
"""
from __future__ import annotations

import base64
import collections
import collections.abc
import itertools
import json
import math
import re
from typing import Any

TAG = "__t__"
MAX_DEPTH = 32
MAX_ITEMS = 100_000
MAX_MESSAGE_ITEMS = 1_000_000  # values in one protocol line (json.loads of a line of 8 MiB of "[]," costs ~1 GiB)
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
TORCH_DTYPES = ("float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8",
                "bool", "complex64", "complex128")
NUMPY_DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
                "uint32", "uint64", "bool", "complex64", "complex128")


class WireError(TypeError):
    """A value cannot cross the wire (wrong type, malformed payload, too deep or too large)."""


def _is_namedtuple(value: Any) -> bool:
    return isinstance(value, tuple) and hasattr(type(value), "_fields")


def encode(value: Any, depth: int = 0) -> Any:
    """Turn ``value`` into JSON-compatible data; raise :class:`WireError` for anything not allowed."""
    if depth > MAX_DEPTH:
        raise WireError(f"value nested deeper than {MAX_DEPTH} levels")
    if value is None or type(value) in (bool, str):
        return value
    if type(value) is int:
        return value
    if type(value) is float:
        return value if math.isfinite(value) else {TAG: "float", "repr": repr(value)}
    if _is_namedtuple(value):
        return {TAG: "namedtuple", "name": type(value).__name__, "fields": list(type(value)._fields),
                "items": [encode(v, depth + 1) for v in value]}
    if isinstance(value, (list, tuple)):
        items = [encode(v, depth + 1) for v in value]
        return items if isinstance(value, list) else {TAG: "tuple", "items": items}
    if isinstance(value, dict):
        if not all(type(k) is str for k in value):
            raise WireError("dict keys must be str")
        return {TAG: "dict", "items": {k: encode(v, depth + 1) for k, v in value.items()}}
    if isinstance(value, collections.abc.Iterator) and type(value).__module__ == "builtins":
        items = list(itertools.islice(value, MAX_ITEMS + 1))  # consumes it: iterators are one-shot anyway
        if len(items) > MAX_ITEMS:
            raise WireError(f"iterator longer than {MAX_ITEMS} items")
        return {TAG: "iterator", "items": [encode(v, depth + 1) for v in items]}
    kind = type(value).__module__.split(".")[0]
    if kind == "torch":
        import torch
        if isinstance(value, torch.Tensor):
            return _encode_tensor(value)
    if kind == "numpy":
        import numpy as np
        if isinstance(value, np.ndarray):
            return _encode_ndarray(value)
        if isinstance(value, np.generic):
            return encode(value.item(), depth + 1)
    import torch
    if isinstance(value, torch.Tensor):  # subclasses defined elsewhere: send the plain data
        return _encode_tensor(value)
    if isinstance(value, (torch.dtype,)):
        return {TAG: "torch_dtype", "name": str(value).removeprefix("torch.")}
    raise WireError(f"cannot send a value of type {type(value).__module__}.{type(value).__qualname__}; "
                    "graded functions must take and return None/bool/int/float/str, lists, tuples, "
                    "dicts with str keys, tensors or numpy arrays")


def _encode_tensor(value: Any) -> dict:
    import torch
    plain = torch.Tensor._make_subclass(torch.Tensor, value.detach()) if type(value) is not torch.Tensor \
        else value.detach()
    plain = plain.cpu().contiguous()
    dtype = str(plain.dtype).removeprefix("torch.")
    if dtype not in TORCH_DTYPES:
        raise WireError(f"tensor dtype {dtype} cannot be sent")
    raw = plain.reshape(-1).view(torch.uint8).numpy().tobytes() if plain.numel() else b""
    return {TAG: "tensor", "dtype": dtype, "shape": list(plain.shape), "data": base64.b64encode(raw).decode()}


def _encode_ndarray(value: Any) -> dict:
    import numpy as np
    dtype = str(value.dtype)
    if dtype not in NUMPY_DTYPES:
        raise WireError(f"numpy dtype {dtype} cannot be sent")
    raw = np.ascontiguousarray(value).tobytes()
    return {TAG: "ndarray", "dtype": dtype, "shape": list(value.shape), "data": base64.b64encode(raw).decode()}


def decode(data: Any, depth: int = 0) -> Any:
    """Rebuild a value from :func:`encode` output, type-checking every node (the trusted side's gate)."""
    if depth > MAX_DEPTH:
        raise WireError(f"value nested deeper than {MAX_DEPTH} levels")
    if data is None or type(data) in (bool, int, float, str):
        return data
    if type(data) is list:
        _check_len(data)
        return [decode(v, depth + 1) for v in data]
    if type(data) is not dict or type(data.get(TAG)) is not str:
        raise WireError(f"malformed value of JSON type {type(data).__name__}")
    tag = data[TAG]
    if tag == "float":
        if data.get("repr") not in ("nan", "inf", "-inf"):
            raise WireError("malformed special float")
        return float(data["repr"])
    if tag == "tuple":
        return tuple(decode(v, depth + 1) for v in _list(data, "items"))
    if tag == "iterator":
        return iter([decode(v, depth + 1) for v in _list(data, "items")])
    if tag == "namedtuple":
        return _decode_namedtuple(data, depth)
    if tag == "dict":
        items = data.get("items")
        if type(items) is not dict:
            raise WireError("malformed dict")
        _check_len(items)
        return {str(k): decode(v, depth + 1) for k, v in items.items()}
    if tag == "tensor":
        return _decode_tensor(data)
    if tag == "ndarray":
        return _decode_ndarray(data)
    if tag == "torch_dtype":
        import torch
        if data.get("name") not in TORCH_DTYPES:
            raise WireError("unknown torch dtype")
        return getattr(torch, data["name"])
    raise WireError(f"unknown value tag {tag!r}")


def _list(data: dict, key: str) -> list:
    value = data.get(key)
    if type(value) is not list:
        raise WireError(f"malformed {data.get(TAG)}: {key} is not a list")
    _check_len(value)
    return value


def _check_len(value: Any) -> None:
    if len(value) > MAX_ITEMS:
        raise WireError(f"more than {MAX_ITEMS} items")


def _decode_namedtuple(data: dict, depth: int) -> tuple:
    fields, items, name = _list(data, "fields"), _list(data, "items"), data.get("name")
    if type(name) is not str or not _IDENT.match(name) or len(fields) != len(items) \
            or not all(type(f) is str and _IDENT.match(f) and not f.startswith("_") for f in fields) \
            or len(set(fields)) != len(fields):
        raise WireError("malformed namedtuple")
    cls = collections.namedtuple(name, fields)
    return cls(*(decode(v, depth + 1) for v in items))


def _payload(data: dict, allowed: tuple[str, ...]) -> tuple[str, list[int], bytes]:
    dtype, shape, b64 = data.get("dtype"), data.get("shape"), data.get("data")
    if dtype not in allowed or type(shape) is not list or type(b64) is not str:
        raise WireError(f"malformed {data[TAG]}")
    if len(shape) > 16 or not all(type(d) is int and d >= 0 for d in shape):
        raise WireError(f"malformed {data[TAG]} shape {shape!r}")
    try:
        raw = base64.b64decode(b64, validate=True)
    except ValueError as exc:
        raise WireError(f"malformed {data[TAG]} bytes") from exc
    return dtype, shape, raw


def _decode_tensor(data: dict) -> Any:
    import torch
    dtype_name, shape, raw = _payload(data, TORCH_DTYPES)
    dtype = getattr(torch, dtype_name)
    numel = math.prod(shape)
    itemsize = torch.empty((), dtype=dtype).element_size()
    if len(raw) != numel * itemsize:
        raise WireError(f"tensor payload has {len(raw)} bytes, expected {numel * itemsize}")
    if numel == 0:
        return torch.empty(shape, dtype=dtype)
    flat = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype)
    return flat.reshape(shape).clone()


def _decode_ndarray(data: dict) -> Any:
    import numpy as np
    dtype_name, shape, raw = _payload(data, NUMPY_DTYPES)
    dtype = np.dtype(dtype_name)
    if len(raw) != math.prod(shape) * dtype.itemsize:
        raise WireError("ndarray payload size does not match its shape")
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


def dumps(message: dict) -> bytes:
    """One protocol line (compact JSON + newline)."""
    return (json.dumps(message, separators=(",", ":"), allow_nan=False) + "\n").encode()


def count_items(line: bytes | bytearray) -> int:
    """An upper bound on the JSON values in ``line`` (separators and openers), counted before parsing."""
    return line.count(b",") + line.count(b"[") + line.count(b"{") + line.count(b":")


def loads(line: bytes | bytearray, max_items: int = MAX_MESSAGE_ITEMS) -> dict:
    """Parse one protocol line; it must be a JSON object of at most ``max_items`` values."""
    if count_items(line) > max_items:
        raise WireError(f"message holds more than {max_items} values")
    message = json.loads(line)
    if type(message) is not dict:
        raise WireError("protocol message is not a JSON object")
    return message


class LineReader:
    """The trusted side's buffer for replies: a ``bytearray`` (appends are amortized O(1)), each new chunk
    scanned once for the newline, and a line cap checked as bytes arrive, before any parsing."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.buffer = bytearray()
        self._scanned = 0

    def feed(self, chunk: bytes) -> None:
        self.buffer += chunk

    def line(self) -> bytearray | None:
        """The next complete line (without its newline), or None; raises WireError past the cap."""
        end = self.buffer.find(b"\n", self._scanned)
        if end < 0:
            self._scanned = len(self.buffer)
            if len(self.buffer) > self.max_bytes:
                raise WireError(f"a reply exceeded {self.max_bytes >> 20} MiB")
            return None
        if end > self.max_bytes:
            raise WireError(f"a reply exceeded {self.max_bytes >> 20} MiB")
        line = self.buffer[:end]
        del self.buffer[:end + 1]
        self._scanned = 0
        return line
