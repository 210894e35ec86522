"""Sandbox worker: runs a student's setup + solution cells, then answers calls from the trusted grader.

Runs INSIDE the sandbox (bubblewrap) as a standalone script; only the standard library, numpy, torch, the
course package, ``wire`` and ``_vjp`` (both bound next to this file) are importable. Nothing this process says is
trusted: the grader decodes every reply with ``wire.decode`` and decides all points itself.

Protocol (JSON lines): the grader writes requests to our stdin and reads replies from the stdout we had at
start (fd 1 is re-pointed to /dev/null before student code runs, so ``print`` cannot reach the grader).
  init  {"cells": [{"key", "source"}], "protected": [dotted names], "sys_path": [...]}
        -> {"event": "cell", "key"} before each cell (the grader's per-cell clock), then
           {"event": "ready", "cells": [{"key", "ok", "error"}], "names": {name: "callable"|"value"}}
  call  {"id", "op": "call", "name", "args", "kwargs"} -> {"id", "ok", "value"|"error", "echo"}
        "echo": {"args", "kwargs"}: every argument encoded again after the call; the grader compares it with
        what it sent (in-place edits are judged on the trusted side; an argument that no longer encodes is null)
  grad  {"id", "op": "grad", "name", "args", "kwargs", "wrt", "upstream"} -> {"id", "ok", "value"|"error",
        "gradients", "echo"}: the call made with fresh leaf copies (requires_grad) of the inputs named in "wrt"
        (positions / keyword names), and d<upstream, result>/d input for each, computed here by ``_vjp`` (the
        implementation behind ``lowbit.testing.gradients_of``); the echo holds the copies the function saw
  get   {"id", "op": "get", "name"} -> {"id", "ok", "value"|"error"}
  exit  {"op": "exit"}
Every reply carries "tripwire": protected references called since the previous reply.
"""
from __future__ import annotations

import builtins
import importlib
import io
import linecache
import os
import re
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wire  # noqa: E402

_HERE = os.path.dirname(os.path.abspath(__file__))
_vjp = None  # the gradient module (see load_gradients)


def load_gradients(only_if_torch_loaded: bool = False):
    """Import ``_vjp`` once (it looks up torch's autograd entry points as it loads). Called before the first answer
    cell runs when the setup cells have imported torch (every lab that grades gradients does; a worker that never
    needs torch does not pay its import), else at the first gradient request."""
    global _vjp
    if _vjp is None and (not only_if_torch_loaded or "torch" in sys.modules):
        _vjp = importlib.import_module("_vjp")
    return _vjp

TRIPWIRE_HITS: list[str] = []
_MAGIC_LINE = re.compile(r"^(\s*)[%!]")
_MEMORY_ERROR = ("can't allocate memory", "out of memory", "DefaultCPUAllocator")


class BoundedText(io.TextIOBase):
    """A stdout/stderr replacement that keeps at most ``limit`` characters (the rest is dropped)."""

    def __init__(self, limit: int = 20_000) -> None:
        self.parts: list[str] = []
        self.size = 0
        self.limit = limit

    def write(self, text: str) -> int:
        if self.size < self.limit:
            self.parts.append(str(text)[: self.limit - self.size])
            self.size += len(self.parts[-1])
        return len(text)

    def writable(self) -> bool:
        return True


def strip_magics(source: str) -> str:
    """Replace IPython line magics / shell escapes with ``pass``; drop cell magics (``%%``) entirely."""
    if source.lstrip().startswith("%%"):
        return ""
    return "\n".join(_MAGIC_LINE.sub(r"\1pass  # ", line) if _MAGIC_LINE.match(line) else line
                     for line in source.splitlines())


def make_tripwire(dotted: str):
    def reference_unavailable(*args, **kwargs):
        TRIPWIRE_HITS.append(dotted)
        raise RuntimeError(f"{dotted} is the course's reference implementation of a function this lab asks "
                           "you to write; it is unavailable during grading. Write your own implementation.")
    reference_unavailable.__name__ = dotted.rsplit(".", 1)[-1]
    return reference_unavailable


def install_tripwires(protected: list[str]) -> None:
    """Replace each protected reference, wherever its package's loaded modules hold it, by a tripwire."""
    for dotted in protected:
        module_name, _, attr = dotted.rpartition(".")
        try:
            module = importlib.import_module(module_name)
            original = getattr(module, attr)
        except (ImportError, AttributeError):
            continue
        wire_fn = make_tripwire(dotted)
        top = module_name.split(".")[0]
        for name, loaded in list(sys.modules.items()):
            if loaded is None or not (name == top or name.startswith(top + ".")):
                continue
            for key, value in list(vars(loaded).items()):
                if value is original:
                    setattr(loaded, key, wire_fn)


def describe_error(exc: BaseException) -> dict:
    tb = exc.__traceback__
    while tb is not None and os.path.dirname(os.path.abspath(tb.tb_frame.f_code.co_filename)) == _HERE:
        # hide the frames of the worker and of _vjp (its files sit side by side)
        tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    message = str(exc)
    is_builtin = isinstance(getattr(builtins, type(exc).__name__, None), type) and \
        issubclass(getattr(builtins, type(exc).__name__), BaseException)
    return {"type": type(exc).__name__, "builtin": is_builtin, "message": message[:4000],
            "traceback": text[-6000:],
            "memory": isinstance(exc, MemoryError) or any(m in message for m in _MEMORY_ERROR)}


def run_cells(cells: list[dict], namespace: dict, starting=lambda key: None,
              before_answers=lambda: None) -> tuple[list[dict], dict[str, str]]:
    """Execute cells in order, calling ``starting(key)`` before each (the grader times every cell) and
    ``before_answers()`` before the first answer cell; returns per-cell outcome and the names the cells (re)bound."""
    results, defined = [], {}
    answers_started = False
    for cell in cells:
        starting(cell["key"])
        if cell.get("student") and not answers_started:
            answers_started = True
            before_answers()
        filename = f"<cell {cell['key']}>"
        source = strip_magics(cell["source"])
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        before = {k: id(v) for k, v in namespace.items()}
        try:
            exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - this IS the sandbox
            results.append({"key": cell["key"], "ok": True})
        except BaseException as exc:  # noqa: BLE001 - student code may raise anything, even SystemExit
            results.append({"key": cell["key"], "ok": False, "error": describe_error(exc)})
        if cell.get("student"):
            for name, value in namespace.items():
                if not name.startswith("__") and before.get(name) != id(value):
                    defined[name] = "callable" if callable(value) else "value"
    return results, {k: v for k, v in defined.items() if k in namespace}


def echo(value):
    """``value`` encoded again after the call (None if it no longer can be), for the grader's in-place check."""
    try:
        return wire.encode(value)
    except Exception:  # noqa: BLE001 - the student's code may have put anything into a list argument
        return None


def serve(request: dict, namespace: dict) -> dict:
    op, name = request.get("op"), request.get("name")
    if name not in namespace:
        return {"ok": False, "error": {"type": "NameError", "builtin": True, "message": f"name {name!r} is not "
                                       "defined in your notebook", "traceback": "", "memory": False}}
    try:
        if op == "get":
            return {"ok": True, "value": wire.encode(namespace[name])}
        args = wire.decode(request.get("args", []))
        kwargs = wire.decode(request.get("kwargs", {}))
        extra = {}
        if op == "grad":
            value, gradients, (args, kwargs) = load_gradients().differentiate(
                namespace[name], args, kwargs, wire.decode(request.get("wrt")), wire.decode(request.get("upstream")))
            extra["gradients"] = [wire.encode(g) for g in gradients]
        else:
            value = namespace[name](*args, **kwargs)
        echoed = {"args": [echo(a) for a in args], "kwargs": {k: echo(v) for k, v in kwargs.items()}}
        try:
            encoded = wire.encode(value)
        except wire.WireError as exc:
            return {"ok": False, "error": {"type": "TypeError", "builtin": True, "traceback": "", "memory": False,
                                           "message": f"{name} returned a value the grader cannot accept: {exc}"}}
        return {"ok": True, "value": encoded, "echo": echoed, **extra}
    except BaseException as exc:  # noqa: BLE001
        return {"ok": False, "error": describe_error(exc)}


def main() -> None:
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb", buffering=0)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    sys.stdin = io.StringIO("")

    def reply(message: dict) -> None:
        message["tripwire"] = TRIPWIRE_HITS[:]
        TRIPWIRE_HITS.clear()
        proto_out.write(wire.dumps(message))

    init = wire.loads(proto_in.readline())
    sys.path[:0] = init.get("sys_path", [])
    install_tripwires(init.get("protected", []))
    namespace: dict = {"__name__": "__main__", "__builtins__": builtins}
    sys.stdout = BoundedText()
    cells, names = run_cells(init["cells"], namespace, lambda key: reply({"event": "cell", "key": key}),
                             lambda: load_gradients(only_if_torch_loaded=True))
    reply({"event": "ready", "cells": cells, "names": names})
    for line in proto_in:
        request = wire.loads(line)
        if request.get("op") == "exit":
            break
        sys.stdout = BoundedText()
        response = serve(request, namespace)
        response["id"] = request.get("id")
        reply(response)
    proto_out.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
