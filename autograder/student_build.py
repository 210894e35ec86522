"""The sandbox's copy of a course package without the lab's answers.

The hidden checks compare a student's functions with the course's references, and the sandbox needs the
course package (data, models, setup helpers, widgets) — but not the references. :func:`answer_free_copy` copies
a package tree and replaces the body of every protected reference **and of every internal it is built from**
by ``raise RuntimeError(...)``; nothing of the removed code survives in the copy (no source text, no bytecode
cache, no code objects), so it cannot be reached or rebuilt from the package's own files, loaders or pickles.

What is removed is computed from the lab's contract, not from a list of files: the closure of the references
over the package's call graph (names, ``module.attr`` chains and ``self.method`` calls resolved through each
module's imports and re-exports, with classes taking all their methods), minus what the lab *provides* — names
its setup cells import from the package and everything those reach, which the student may use. So a
restructured package (moved helpers, a new shared core) is handled without editing this module.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

BUILD_VERSION = b"answer-free v2"
#: Methods Python calls by itself while a class statement runs (kept: the package must still import).
CLASS_CREATION_HOOKS = ("__init_subclass__", "__set_name__", "__class_getitem__", "__prepare__")
MARKER = "ANSWER_FREE.json"
CACHE = Path(tempfile.gettempdir()) / "lowbit-answer-free"
_STUB = ("raise RuntimeError({name!r} ' is not available while grading: the sandbox has a copy of the course '\n"
         "                   'package without the lab\\'s answers. Write your own implementation.')")


@dataclass
class _Module:
    name: str
    path: Path
    tree: ast.Module
    is_package: bool
    defs: dict[str, ast.AST] = field(default_factory=dict)      # qualified name -> def node
    aliases: dict[str, str] = field(default_factory=dict)       # local name -> dotted target


def _module_names(root: Path) -> dict[str, Path]:
    prefix = [root.name] if (root / "__init__.py").is_file() else []
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if "__pycache__" in parts:
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        dotted = ".".join(prefix + parts)
        if dotted:
            modules[dotted] = path
    return modules


def _resolve_relative(module: _Module, level: int, target: str | None) -> str:
    base = module.name.split(".")
    if not module.is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([target] if target else []))


def _parse(root: Path) -> dict[str, _Module]:
    modules = {}
    for dotted, path in _module_names(root).items():
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        module = _Module(dotted, path, tree, path.name == "__init__.py")
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                module.defs[f"{dotted}.{node.name}"] = node
                if isinstance(node, ast.ClassDef):
                    for item in node.body:
                        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                            module.defs[f"{dotted}.{node.name}.{item.name}"] = item
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    local = alias.asname or alias.name.split(".")[0]
                    module.aliases[local] = alias.name if alias.asname else alias.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom):
                source = _resolve_relative(module, node.level, node.module) if node.level else node.module
                for alias in node.names:
                    if alias.name != "*" and source:
                        module.aliases[alias.asname or alias.name] = f"{source}.{alias.name}"
        modules[dotted] = module
    return modules


class _Graph:
    """Qualified names of a package's functions/classes and what each one's body refers to."""

    def __init__(self, modules: dict[str, _Module]) -> None:
        self.modules = modules
        self.defs = {q: (m, node) for m in modules.values() for q, node in m.defs.items()}

    def canonical(self, dotted: str, depth: int = 0) -> str | None:
        """Follow re-exports (``from .linear import f`` in a package) to the defining module's name."""
        if dotted in self.defs or dotted in self.modules:
            return dotted
        head, _, attr = dotted.rpartition(".")
        if depth > 20 or not head:
            return None
        owner = self.canonical(head, depth + 1)
        if owner in self.modules:
            target = self.modules[owner].aliases.get(attr)
            return self.canonical(target, depth + 1) if target else None
        if owner in self.defs:
            return f"{owner}.{attr}" if f"{owner}.{attr}" in self.defs else None
        return None

    def resolve(self, module: _Module, sub: ast.AST, enclosing: str | None = None) -> str | None:
        """The package def a ``Name`` / ``Attribute`` node of ``module`` refers to (``self.x`` inside class
        ``enclosing``), or None."""
        dotted = None
        if isinstance(sub, ast.Name):
            own = f"{module.name}.{sub.id}"
            dotted = own if own in self.defs else module.aliases.get(sub.id)
        elif isinstance(sub, ast.Attribute):
            chain, base = [sub.attr], sub.value
            while isinstance(base, ast.Attribute):
                chain.append(base.attr)
                base = base.value
            if isinstance(base, ast.Name):
                if base.id in ("self", "cls") and enclosing:
                    dotted = f"{enclosing}.{chain[-1]}"
                else:
                    head = f"{module.name}.{base.id}" if f"{module.name}.{base.id}" in self.defs else \
                        module.aliases.get(base.id)
                    dotted = ".".join([head, *reversed(chain)]) if head else None
        if not dotted:
            return None
        target = self.canonical(dotted)
        while target and target not in self.defs and "." in target:
            target = self.canonical(target.rsplit(".", 1)[0]) if target not in self.modules else None
        return target if target in self.defs else None

    def references(self, qualified: str) -> set[str]:
        module, node = self.defs[qualified]
        found: set[str] = set()
        if isinstance(node, ast.ClassDef):  # a class reaches all its methods
            found.update(q for q in self.defs if q.startswith(qualified + "."))
        enclosing = qualified.rsplit(".", 1)[0] if qualified.rsplit(".", 1)[0] in self.defs else None
        for sub in ast.walk(node):
            target = self.resolve(module, sub, enclosing)
            if target and target != qualified:
                found.add(target)
        return found

    def import_time(self) -> set[str]:
        """Defs that run while the package is imported, so the copy must keep them to import at all: what
        module-level code, class bodies, decorators and default values *call*, and the hooks Python itself
        calls when a class is created (``__init_subclass__``, ``__set_name__``, ...)."""
        found = {q for q, (_, node) in self.defs.items() if getattr(node, "name", "") in CLASS_CREATION_HOOKS}
        for module in self.modules.values():
            for expression in _evaluated_on_import(module.tree.body):
                for call in _calls_run_now(expression):
                    target = self.resolve(module, call.func)
                    if target:
                        found.add(target)
        return found

    def closure(self, roots: set[str], stop: set[str] = frozenset()) -> set[str]:
        seen, todo = set(), [r for r in roots if r in self.defs]
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            todo.extend(r for r in self.references(name) if r not in seen and r not in stop)
        return seen


def _evaluated_on_import(body: list[ast.stmt]) -> list[ast.AST]:
    """The parts of a module's (or class body's) statements that Python evaluates when it runs them: whole
    statements, except that of a def only its decorators and defaults, and of a class its decorators, bases,
    keywords and (recursively) its body. A decorator is returned as the call that applies it (``@tag`` calls
    ``tag``)."""
    parts: list[ast.AST] = []
    for stmt in body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            parts += [ast.Call(func=decorator, args=[], keywords=[]) for decorator in stmt.decorator_list]
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            parts += [*stmt.args.defaults, *(d for d in stmt.args.kw_defaults if d)]
        elif isinstance(stmt, ast.ClassDef):
            parts += [*stmt.bases, *(k.value for k in stmt.keywords)]
            parts += _evaluated_on_import(stmt.body)
        elif not _is_main_guard(stmt):
            parts.append(stmt)
    return parts


def _calls_run_now(node: ast.AST) -> list[ast.Call]:
    """Calls in ``node`` that run when it is evaluated (not those inside a lambda, which run later)."""
    if isinstance(node, ast.Lambda):
        return []
    calls = [node] if isinstance(node, ast.Call) else []
    for child in ast.iter_child_nodes(node):
        calls += _calls_run_now(child)
    return calls


def _is_main_guard(stmt: ast.stmt) -> bool:
    """``if __name__ == "__main__":`` (runs only as a script, never on import)."""
    test = getattr(stmt, "test", None)
    return isinstance(stmt, ast.If) and isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) \
        and test.left.id == "__name__" and any(isinstance(c, ast.Constant) and c.value == "__main__"
                                               for c in test.comparators)


def canonical_names(root: Path, names: list[str]) -> list[str]:
    """``names`` as :func:`removed_names` reports them: re-exports followed to the module that defines them."""
    graph = _Graph(_parse(Path(root)))
    return [graph.canonical(name) or name for name in names]


def removed_names(root: Path, protected: list[str], provided: list[str] = ()) -> list[str]:
    """Qualified names whose bodies :func:`answer_free_copy` removes (sorted)."""
    graph = _Graph(_parse(Path(root)))
    refs = {c for c in (graph.canonical(p) for p in protected) if c}
    keep_roots = {c for c in (graph.canonical(p) for p in provided) if c} - refs
    kept = graph.closure(keep_roots, stop=refs) | graph.closure(graph.import_time())
    return sorted(graph.closure(refs) - kept)


def _stub_body(node: ast.AST, name: str) -> list[ast.stmt]:
    body: list[ast.stmt] = []
    doc = ast.get_docstring(node, clean=False) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else None
    if doc:
        body.append(ast.Expr(ast.Constant(doc.strip().splitlines()[0])))
    body.extend(ast.parse(_STUB.format(name=name)).body)
    return body


def _rewrite(module: _Module, removed: set[str]) -> str | None:
    """The module's new source with the removed functions' bodies replaced, or None if nothing changes."""
    hit = False
    for qualified, node in module.defs.items():
        if qualified in removed and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            node.body = _stub_body(node, qualified)
            node.decorator_list = [d for d in node.decorator_list if not _is_cache_decorator(d)]
            hit = True
    if not hit:
        return None
    ast.fix_missing_locations(module.tree)
    return "# Generated for the grading sandbox: the lab's answers are removed (autograder.student_build).\n" + \
        ast.unparse(module.tree) + "\n"


def _is_cache_decorator(node: ast.AST) -> bool:
    text = ast.unparse(node)
    return "cache" in text


def _digest(root: Path, protected: list[str], provided: list[str]) -> str:
    digest = hashlib.sha256(BUILD_VERSION + Path(__file__).read_bytes())
    digest.update(json.dumps([str(root), sorted(protected), sorted(provided)]).encode())
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            stat = path.stat()
            digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
            if path.suffix == ".py":
                digest.update(path.read_bytes())
    return digest.hexdigest()[:24]


def answer_free_copy(root: Path, protected: list[str], provided: list[str] = (), cache: Path = CACHE) -> Path:
    """A copy of the package (or folder of packages) ``root`` with the removed names' bodies replaced.

    Built once per content and cached under ``cache``; returns the copy's root (same basename as ``root``),
    which holds ``ANSWER_FREE.json`` listing what was removed. No ``__pycache__`` is copied.
    """
    root = Path(root).resolve()
    target = Path(cache) / _digest(root, list(protected), list(provided)) / root.name
    if (target / MARKER).is_file():
        return target
    modules = _parse(root)
    removed = set(removed_names(root, list(protected), list(provided)))
    staging = Path(tempfile.mkdtemp(prefix="build-", dir=_ensure(Path(cache))))
    copy = staging / root.name
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
    for module in modules.values():
        new_source = _rewrite(module, removed)
        if new_source is not None:
            (copy / module.path.relative_to(root)).write_text(new_source, encoding="utf-8")
    (copy / MARKER).write_text(json.dumps({"removed": sorted(removed), "protected": sorted(protected)}, indent=1))
    for path in [copy, *copy.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(copy, target)
    except OSError:  # another grading process built it first
        if not (target / MARKER).is_file():
            raise
    shutil.rmtree(staging, ignore_errors=True)
    return target


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def provided_names(setup_sources: list[str]) -> list[str]:
    """Dotted names the lab's setup cells import (``from lowbit.quant.kmeans import Codebook`` -> that name)."""
    names = []
    for source in setup_sources:
        try:
            tree = ast.parse("\n".join(l for l in source.splitlines() if not l.lstrip().startswith(("%", "!"))))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.extend(f"{node.module}.{a.name}" for a in node.names if a.name != "*")
    return names


@functools.lru_cache(maxsize=32)
def package_view(protected: tuple[str, ...], provided: tuple[str, ...]):
    """``path -> answer-free copy of path`` for the sandbox's package mounts (cached per process)."""
    @functools.lru_cache(maxsize=None)
    def view(path: Path) -> Path:
        return answer_free_copy(Path(path), list(protected), list(provided))
    return view
