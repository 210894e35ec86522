"""Static scan of answer cells for what a grade cannot be trusted with: library calls that do a graded
function's whole job (declared in the lab's contract) and reaches into the sandbox worker's own module.

Both are reported for the instructor's review (status ``flagged``), with the cell and line; neither changes
points. Names are resolved through the cells' imports and aliases (``import torch as t``, ``from torch import
quantize_per_tensor as q``, ``from sklearn import cluster``), and a string naming the call's last part (as for
``getattr(torch, "quantize_per_tensor")``) counts too.
"""
from __future__ import annotations

import ast

#: Names that only reach into the worker process itself (its ``__main__`` module, frames, the collector).
WORKER_REACHES = {
    "__main__": "the worker's own __main__ module",
    "sandbox_worker": "the sandbox worker module",
    "_getframe": "interpreter frames (sys._getframe)",
    "currentframe": "interpreter frames (inspect.currentframe)",
    "getouterframes": "interpreter frames (inspect.getouterframes)",
    "stack": None,  # inspect.stack: only as an attribute of inspect (see _reach)
    "f_back": "a calling frame (f_back)",
    "f_globals": "a frame's globals (f_globals)",
    "f_locals": "a frame's locals (f_locals)",
    "get_referrers": "the garbage collector (gc.get_referrers)",
    "get_objects": "the garbage collector (gc.get_objects)",
    "TRIPWIRE_HITS": "the worker's tripwire log",
}
#: Module names of the worker's own code (as strings, e.g. ``sys.modules["_vjp"]``).
WORKER_MODULES = {"__main__": WORKER_REACHES["__main__"], "sandbox_worker": WORKER_REACHES["sandbox_worker"],
                  "_vjp": "the worker's gradient module (_vjp)"}


def _parse(source: str) -> ast.Module | None:
    try:
        return ast.parse(source)
    except SyntaxError:
        return None


def _aliases(trees: list[ast.Module]) -> dict[str, str]:
    """Local name -> dotted name bound by the cells' imports (``import a.b as c`` -> {"c": "a.b"})."""
    names: dict[str, str] = {}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname:
                        names[alias.asname] = alias.name
                    else:
                        names[alias.name.split(".")[0]] = alias.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _strip_magics(source: str) -> str:
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    head = aliases.get(node.id, node.id)
    return ".".join([head, *reversed(parts)])


def _matches(dotted: str, entry: str) -> bool:
    return dotted == entry or dotted.startswith(entry + ".")


def whole_job_uses(answers: list[tuple[str, str, str]], contract, setup_sources: list[str] = ()) -> list[str]:
    """Reasons naming each answer-cell line that uses a library call declared to do a graded function's job.

    Names the setup cells import (``from lowbit.quant.kmeans import initial_centroids``) resolve too."""
    if contract is None:
        return []
    entries: dict[str, list[str]] = {}
    for function in contract.graded.values():
        for entry in function.whole_job:
            entries.setdefault(entry, []).append(function.name)
    if not entries:
        return []
    cells = [(gid, _parse(source)) for gid, kind, source in answers if kind == "code" and source.strip()]
    setup_trees = [t for t in (_parse(_strip_magics(source)) for source in setup_sources) if t is not None]
    aliases = {**_aliases(setup_trees), **_aliases([tree for _, tree in cells if tree is not None])}
    methods = {entry[1:]: entry for entry in entries if entry.startswith(".")}
    last_parts = {entry.rsplit(".", 1)[-1]: entry for entry in entries if not entry.startswith(".")}
    found: dict[tuple[str, int, str], None] = {}
    for gid, tree in cells:
        if tree is None:
            continue
        for node in ast.walk(tree):
            hit = None
            if isinstance(node, (ast.Attribute, ast.Name)):
                dotted = _dotted(node, aliases)
                if dotted:
                    hit = next((e for e in entries if not e.startswith(".") and _matches(dotted, e)), None)
                if hit is None and isinstance(node, ast.Attribute) and node.attr in methods:
                    hit = methods[node.attr]
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                module = node.module if isinstance(node, ast.ImportFrom) else None
                for alias in node.names:
                    dotted = f"{module}.{alias.name}" if module else alias.name
                    hit = hit or next((e for e in entries if not e.startswith(".") and
                                       (_matches(dotted, e) or (module and _matches(module, e)))), None)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in last_parts:
                hit = last_parts[node.value]
            # In another graded function's own cell the call is that function's business (kmeans_1d may call
            # initial_centroids, which does linear_init's job); anywhere else it is flagged.
            if hit is not None and (gid not in contract.graded or gid in entries[hit]):
                found[(gid, getattr(node, "lineno", 0), hit)] = None
    reasons = []
    for gid, line, entry in found:
        jobs = ", ".join(sorted(set(entries[entry])))
        reasons.append(f"cell {gid} line {line} uses {entry.lstrip('.')}, a library call that does the whole job "
                       f"of {jobs}: review by hand")
    return reasons


def _reach(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name) and node.id in WORKER_REACHES and WORKER_REACHES[node.id]:
        return WORKER_REACHES[node.id]
    if isinstance(node, ast.Attribute):
        if node.attr in WORKER_REACHES and WORKER_REACHES[node.attr]:
            return WORKER_REACHES[node.attr]
        if node.attr == "stack" and isinstance(node.value, ast.Name) and node.value.id == "inspect":
            return "interpreter frames (inspect.stack)"
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        names = [a.name for a in node.names]
        if isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
        for name in names:
            if name.split(".")[0] in ("__main__", "sandbox_worker", "wire", "_vjp"):
                return f"the worker's own module ({name})"
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in WORKER_MODULES:
        return WORKER_MODULES[node.value]
    return None


def _name_main_guard(tree: ast.Module) -> set[int]:
    """ids of the "__main__" constants in ``if __name__ == "__main__":`` guards (harmless)."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and isinstance(node.left, ast.Name) and node.left.id == "__name__":
            ids.update(id(c) for c in node.comparators if isinstance(c, ast.Constant))
    return ids


def worker_reaches(answers: list[tuple[str, str, str]]) -> list[str]:
    """Reasons naming each answer-cell line that reaches into the worker process (its module, frames, gc)."""
    reasons: dict[str, None] = {}
    for gid, kind, source in answers:
        tree = _parse(source) if kind == "code" and source.strip() else None
        if tree is None:
            continue
        guards = _name_main_guard(tree)
        for node in ast.walk(tree):
            if id(node) in guards:
                continue
            what = _reach(node)
            if what:
                reasons[f"cell {gid} line {getattr(node, 'lineno', 0)} reaches into {what}: review by hand"] = None
    return list(reasons)
