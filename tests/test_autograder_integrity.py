"""Grading integrity: the per-lab contract, drawn inputs keyed by the course secret, the answer-free sandbox
package, the trusted-side in-place check, and comparisons a wrong length, type or shape cannot satisfy.

The end-to-end attacks (lookup table, learning from feedback) are in ``test_autograder_lookup.py``.
"""
from __future__ import annotations

import ast
import importlib
import json
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from autograder import secret as course_secret
from autograder import student_build, wire
from autograder.checks import _api
from autograder.contract import ContractError, load_contract, parse_contract
from autograder.grade import GradingRefused, course_secret_for
from autograder.notebook import parse_notebook
from autograder.release import find_labs
from autograder.runner import Course, Lab, modified_arguments
from autograder.sandbox import Limits, Sandbox, bwrap_problem
from autograder.scan import whole_job_uses, worker_reaches
from autograder.submissions import solution_answers

from autograder_helpers import FIXTURE_COURSE, FIXTURE_LAB

REPO = Path(__file__).resolve().parents[1]
LABS = find_labs(REPO)
#: The course's labs with graded functions (each audited below: constant answers, scan, answer-free sandbox).
COURSE_LABS = [lab for lab in LABS if lab in ("lab1_linear", "lab2_kmeans", "lab3_qat", "lab4_binary",
                                                 "lab5_adaround", "lab6_mixed")]
LOWBIT = REPO / "lowbit"


def _setup_sources(lab: str, course: Path = REPO) -> list[str]:
    notebook = parse_notebook((course / "solutions" / lab / f"{lab}.ipynb").read_bytes())
    return ["".join(c["source"]) if isinstance(c["source"], list) else c["source"] for c in notebook["cells"]
            if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") == "setup"]


# ----------------------------------------------------------------------------------------------- contract
@pytest.mark.parametrize("lab", LABS)
def test_contract_matches_the_solution_and_the_package(lab):
    contract = load_contract(lab)
    answers = solution_answers((REPO / "solutions" / lab / f"{lab}.ipynb").read_bytes())
    for name, function in contract.graded.items():
        assert name in answers, f"{name} is graded by the contract but has no answer cell"
        definition = next(n for n in ast.parse(answers[name]).body if isinstance(n, ast.FunctionDef) and n.name == name)
        solution_parameters = [a.arg for a in definition.args.args]
        assert solution_parameters == function.parameters, f"{name}: contract signature != solution's"
        for dotted in function.references:
            module, _, attr = dotted.rpartition(".")
            assert callable(getattr(importlib.import_module(module), attr)), f"{dotted} does not exist"
        assert callable(contract.reference(name))
    checks = importlib.import_module(f"autograder.checks.{lab}")
    assert sorted(n.removeprefix("check_") for n in dir(checks) if n.startswith("check_")) == sorted(contract.graded)
    assert not hasattr(checks, "PROTECTED_REFERENCES"), "protected names live in the contract only"


def test_contract_errors_say_what_is_wrong():
    with pytest.raises(ContractError, match="signature"):
        parse_contract({"lab": "x", "graded": {"f": {"references": ["a.b"]}}})
    with pytest.raises(ContractError, match="references"):
        parse_contract({"lab": "x", "graded": {"f": {"signature": "(a)", "references": []}}})
    with pytest.raises(ContractError, match="not a Python parameter list"):
        parse_contract({"lab": "x", "graded": {"f": {"signature": "(a b)", "references": ["a.b"]}}})
    with pytest.raises(ContractError, match="has no contract"):
        load_contract("no_such_lab")


def test_lab_reads_protected_names_from_the_contract():
    lab = Lab.load(Course.load(REPO), "lab1_linear")
    assert lab.protected == load_contract("lab1_linear").protected
    assert "lowbit.quant.linear.linear_quantize" in lab.protected


# ------------------------------------------------------------------------------------- secret and draws
ANSWERS = [("f", "code", "def f(x):\n    return x\n"), ("q1", "markdown", "because")]


def test_draw_key_depends_on_secret_and_every_answer():
    key = course_secret.draw_key(b"s" * 32, "lab", ANSWERS)
    assert key == course_secret.draw_key(b"s" * 32, "lab", list(ANSWERS))            # regrading: same inputs
    assert key != course_secret.draw_key(b"t" * 32, "lab", ANSWERS)                   # another offering
    assert key != course_secret.draw_key(b"s" * 32, "lab", [ANSWERS[0], ("q1", "markdown", "because!")])
    assert key != course_secret.draw_key(b"s" * 32, "lab2", ANSWERS)
    assert course_secret.draw_key(None, "lab", ANSWERS) == course_secret.PRACTICE_KEY


def test_draws_follow_the_key_and_the_suite():
    def values(key: bytes, suite: str):
        _api.use_draw_key(key)
        d = _api.CheckSuite(suite).draw
        return d.integer(0, 10**9), d.normal(5).tolist(), d.choice("abcdefgh"), d.uniform(0, 1)

    try:
        assert values(b"k" * 32, "f") == values(b"k" * 32, "f")
        assert values(b"k" * 32, "f") != values(b"j" * 32, "f")
        assert values(b"k" * 32, "f") != values(b"k" * 32, "g")
        with pytest.raises(ValueError, match="at least 16 bytes"):
            _api.use_draw_key(b"short")
    finally:
        _api.use_draw_key(course_secret.PRACTICE_KEY)


def test_mix_keeps_every_edge_value_among_the_drawn_ones():
    d = _api.Draws("mix")
    edge = torch.tensor([0.5, 1.5, 2.5])
    mixed = d.mix(edge, d.normal(7))
    assert mixed.numel() == 10 and all(bool((mixed == v).any()) for v in edge)


def test_secret_sources_in_order_and_refusal(tmp_path, monkeypatch):
    monkeypatch.delenv(course_secret.ENV_VAR, raising=False)
    with pytest.raises(GradingRefused, match="--practice"):
        course_secret_for(tmp_path, None, None)
    path = course_secret.write_secret(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(course_secret.SecretProblem, match="already exists"):
        course_secret.write_secret(tmp_path)
    assert course_secret_for(tmp_path, None, None) == path.read_bytes().strip()
    monkeypatch.setenv(course_secret.ENV_VAR, "from-the-environment-0123")
    assert course_secret_for(tmp_path, None, None) == b"from-the-environment-0123"
    other = tmp_path / "other-secret"
    other.write_text("from-a-file-given-explicitly")
    assert course_secret_for(tmp_path, None, other) == b"from-a-file-given-explicitly"
    other.write_text("short")
    with pytest.raises(GradingRefused, match="at least 16"):
        course_secret_for(tmp_path, None, other)


def test_cache_fingerprint_changes_with_the_secret():
    course = Course.load(FIXTURE_COURSE)
    prints = {Lab.load(course, FIXTURE_LAB, secret, practice).fingerprint()
              for secret, practice in ((b"a" * 20, False), (b"b" * 20, False), (None, True), (None, False))}
    assert len(prints) == 4


def test_the_checks_graded_are_the_bytes_fingerprinted_whatever_was_loaded_before(tmp_path):
    """One process loads the fixture course, then a copy whose check module differs, then the copy again after an
    edit: each time the module that runs is the one whose bytes the lab's fingerprint was taken from."""
    import autograder.checks as checks_package
    copy = Path(shutil.copytree(FIXTURE_COURSE, tmp_path / "copy"))
    module_file = copy / "checks" / f"{FIXTURE_LAB}.py"
    original = Lab.load(Course.load(FIXTURE_COURSE), FIXTURE_LAB)
    for marker in ("first edit", "second edit"):
        module_file.write_text(module_file.read_text() + f"\nMARKER = {marker!r}\n")
        edited = Lab.load(Course.load(copy), FIXTURE_LAB)
        module = sys.modules[f"autograder.checks.{FIXTURE_LAB}"]
        assert (module.MARKER, module.__file__) == (marker, str(module_file.resolve()))
        assert getattr(checks_package, FIXTURE_LAB) is module
        assert edited.checks_bytes.startswith(module_file.read_bytes())
        assert edited.fingerprint() != original.fingerprint()
    again = Lab.load(Course.load(FIXTURE_COURSE), FIXTURE_LAB)
    assert not hasattr(sys.modules[f"autograder.checks.{FIXTURE_LAB}"], "MARKER")
    assert again.fingerprint() == original.fingerprint()


# ------------------------------------------------------------------------------------------ comparisons
@pytest.mark.parametrize("got", [(), [], (1.0,), (1.0, 2.0, 3.0), None, torch.tensor([1.0, 2.0]), True])
def test_sequence_comparisons_need_the_right_length_and_kind(got):
    with pytest.raises(AssertionError):
        _api.expect_close(got, (1.0, 2.0), "pair", atol=1e-3)
    with pytest.raises(AssertionError):
        _api.expect_equal(got, (1, 2), "pair")


def test_equal_numbers_of_another_kind_do_not_pass():
    with pytest.raises(AssertionError):
        _api.expect_equal(True, 1)
    with pytest.raises(AssertionError):
        _api.expect_close(True, 1.0)
    with pytest.raises(AssertionError):
        _api.expect_close(torch.zeros(0), torch.zeros(3))


def _check_outcomes(lab: str, function: str, fn) -> list[dict]:
    checks = importlib.import_module(f"autograder.checks.{lab}")
    _api.RECORDER.clear()
    try:
        getattr(checks, f"check_{function}")(fn)
    except AssertionError:
        pass
    return list(_api.RECORDER)


GARBAGE = [(), None, [], torch.zeros(0), (torch.zeros(0), torch.zeros(0)), 0.0, True]


@pytest.mark.parametrize("lab", COURSE_LABS)
def test_no_named_check_passes_a_constant_wrong_answer(lab):
    """Audit: a function returning an empty/None/zero-size/boolean constant fails every check of every suite
    (except those that only check it leaves its inputs alone, or only the result's type, where the constant
    has the right type)."""
    exempt = {"leaves its input unchanged", "leaves its inputs unchanged", "returns a Python int",
              "returns a Python float"}
    passing = {}
    for function in load_contract(lab).graded:
        for garbage in GARBAGE:
            passed = [r["name"] for r in _check_outcomes(lab, function, lambda *a, g=garbage, **k: g)
                      if r["passed"] and r["name"] not in exempt]
            if passed:
                passing[f"{function} returning {garbage!r}"] = passed
    assert passing == {}


def test_empty_tuple_from_mse_clip_range_fails_every_check():
    outcomes = _check_outcomes("lab1_linear", "mse_clip_range", lambda *a, **k: ())
    assert outcomes and not any(r["passed"] for r in outcomes)
    assert "expected a tuple of 2 values" in outcomes[0]["message"]


def test_failure_message_shows_input_expected_and_got_at_the_first_differences():
    outcomes = _check_outcomes("lab1_linear", "linear_quantize",
                               lambda r, scale, zero_point, bits, signed=True: torch.zeros_like(r, dtype=torch.int8))
    basic = next(r for r in outcomes if r["name"] == "basic signed 8-bit values")
    message = basic["message"]
    assert message.startswith("linear_quantize(r, scale=") and "with input r=tensor([" in message
    assert "values in [" in message and "elements differ; first at:" in message
    assert "index (" in message and "r=" in message.split("first at:")[1] and "expected" in message
    ties = next(r for r in outcomes if r["name"] == "rounds half to even")
    assert "ties" not in ties["message"] and ties["hint"]


# ------------------------------------------------------------------------------------------------- scan
def test_whole_job_library_calls_are_flagged_with_their_line():
    contract = load_contract("lab1_linear")
    source = textwrap.dedent("""\
        import torch as t
        from torch import fake_quantize_per_tensor_affine as fq
        def linear_quantize(r, scale, zero_point, bits, signed=True):
            return t.quantize_per_tensor(r, scale, zero_point, t.qint8).int_repr()
        """)
    reasons = whole_job_uses([("linear_quantize", "code", source)], contract)
    assert any("line 2 uses torch.fake_quantize_per_tensor_affine" in r for r in reasons)
    assert any("line 4 uses torch.quantize_per_tensor" in r and "linear_quantize" in r for r in reasons)
    assert any("line 4 uses int_repr" in r for r in reasons)
    by_string = whole_job_uses([("x", "code", "import torch\nq = getattr(torch, 'quantize_per_tensor')")], contract)
    assert by_string and "line 2" in by_string[-1]


def test_kmeans_libraries_are_flagged_but_provided_helpers_only_where_they_do_the_job():
    contract = load_contract("lab2_kmeans")
    assert whole_job_uses([("kmeans_1d", "code", "from sklearn.cluster import KMeans\nKMeans(4)")], contract)
    helper = "def f(w, k):\n    return initial_centroids(w, k, 'linear')\n"
    setup = ["%matplotlib widget\nfrom lowbit.quant.kmeans import Codebook, initial_centroids\n"]
    assert whole_job_uses([("linear_init", "code", helper)], contract, setup)
    assert whole_job_uses([("kmeans_1d", "code", helper)], contract, setup) == []


@pytest.mark.parametrize("lab", COURSE_LABS)
def test_the_solutions_are_not_flagged(lab):
    solution = (REPO / "solutions" / lab / f"{lab}.ipynb").read_bytes()
    answers = [(g, "code", s) for g, s in solution_answers(solution).items()]
    assert whole_job_uses(answers, load_contract(lab), _setup_sources(lab)) == [] and worker_reaches(answers) == []


@pytest.mark.parametrize("source, what", [
    ("import __main__\n__main__.echo = None", "__main__"),
    ("import sys\nw = sys.modules['__main__']", "__main__"),
    ("import sys\ng = sys._getframe(1).f_globals", "frame"),
    ("import gc\nobjs = gc.get_objects()", "garbage collector"),
    ("import wire", "wire"),
])
def test_reaches_into_the_worker_are_flagged(source, what):
    reasons = worker_reaches([("cell", "code", source)])
    assert reasons and any(what in r for r in reasons)


def test_main_guard_is_not_a_reach():
    assert worker_reaches([("cell", "code", "if __name__ == '__main__':\n    print(1)")]) == []


# ------------------------------------------------------------------------------------------- in place
def _sent(*args, **kwargs) -> dict:
    return {"args": wire.encode(list(args)), "kwargs": wire.encode(dict(kwargs))}


def test_in_place_edits_are_judged_from_the_echo_on_the_trusted_side():
    x, y = torch.arange(4.0), torch.ones(2)
    sent = _sent(x, 3, y=y)
    same = {"args": [wire.encode(x), 3], "kwargs": {"y": wire.encode(y)}}
    assert modified_arguments(sent, same) == []
    changed = {"args": [wire.encode(x * 2), 3], "kwargs": {"y": wire.encode(y + 1)}}
    assert modified_arguments(sent, changed) == [0, "y"]
    assert modified_arguments(sent, None) == [0, 1, "y"]                  # a worker that does not echo
    assert modified_arguments(sent, {"args": [wire.encode(x)], "kwargs": {}}) == [0, 1, "y"]
    iterator = _sent(iter([torch.ones(2)]))
    assert modified_arguments(iterator, {"args": [wire.encode(iter([]))], "kwargs": {}}) == []


# ------------------------------------------------------------------------------------ answer-free package
def _write_package(root: Path) -> Path:
    """A package shaped like a restructured lowbit: the arithmetic in a shared core, re-exported, a class."""
    pkg = root / "mypkg"
    (pkg / "quant").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from mypkg.util import helper_kept\n")
    (pkg / "util.py").write_text("def helper_kept(x):\n    return x + 1\n")
    (pkg / "quant" / "__init__.py").write_text("from .core import fake_round as fake_round\n")
    (pkg / "quant" / "core.py").write_text(textwrap.dedent("""\
        import torch

        def _clamp(q, lo, hi):
            return q.clamp(lo, hi)  # SECRET-CLAMP

        def fake_round(x, s):
            return _clamp(torch.round(x / s), -8, 7)  # SECRET-ROUND

        class Observer:
            def ranges(self, x):
                return self._span(x)

            def _span(self, x):
                return x.min(), x.max()  # SECRET-SPAN
        """))
    (pkg / "quant" / "method.py").write_text(textwrap.dedent("""\
        from mypkg import quant
        from mypkg.quant.core import Observer
        from mypkg.util import helper_kept

        def graded(x, s):
            return quant.fake_round(x, s) * s  # SECRET-GRADED

        def graded_observer(x):
            return Observer().ranges(x)

        def provided(x):
            return helper_kept(x)
        """))
    return pkg


def test_removal_follows_the_call_graph_not_file_lists(tmp_path):
    pkg = _write_package(tmp_path)
    removed = student_build.removed_names(pkg, ["mypkg.quant.method.graded", "mypkg.quant.method.graded_observer"],
                                          ["mypkg.quant.method.provided"])
    assert removed == ["mypkg.quant.core.Observer", "mypkg.quant.core.Observer._span",
                       "mypkg.quant.core.Observer.ranges", "mypkg.quant.core._clamp", "mypkg.quant.core.fake_round", "mypkg.quant.method.graded",
                       "mypkg.quant.method.graded_observer"]
    copy = student_build.answer_free_copy(pkg, ["mypkg.quant.method.graded", "mypkg.quant.method.graded_observer"],
                                          ["mypkg.quant.method.provided"], cache=tmp_path / "cache")
    text = "".join(p.read_text() for p in copy.rglob("*.py"))
    assert "SECRET" not in text and "helper_kept(x)" in text
    assert not list(copy.rglob("__pycache__")) and json.loads((copy / student_build.MARKER).read_text())["removed"]


def test_provided_helpers_keep_what_they_reach(tmp_path):
    pkg = _write_package(tmp_path)
    removed = student_build.removed_names(pkg, ["mypkg.quant.method.graded"], ["mypkg.quant.core.fake_round"])
    assert removed == ["mypkg.quant.method.graded"]


def test_what_runs_on_import_is_kept_so_the_copy_still_imports(tmp_path):
    """A registry hook called when a subclass is defined, a module-level registration call and a decorator run
    while the package imports: removing them (they are reached from the reference) would break the import."""
    pkg = tmp_path / "hookpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "core.py").write_text(textwrap.dedent("""\
        REGISTRY = {}

        def register(name, obj):
            REGISTRY[name] = obj  # KEPT-REGISTER
            return obj

        def tag(fn):
            fn.tagged = True  # KEPT-TAG
            return fn

        def answer(x):
            return x * 2 + 12345

        class Base:
            def __init_subclass__(cls, **kwargs):
                register(cls.__name__, cls)  # KEPT-HOOK

            def compute(self, x):
                return answer(x)

        class Child(Base):
            pass

        @tag
        def graded(x):
            return Child().compute(x) + len(REGISTRY)

        register("answer", answer)
        LATER = {"answer": lambda x: answer(x)}

        if __name__ == "__main__":
            answer(1)
        """))
    protected = ["hookpkg.core.graded"]
    removed = student_build.removed_names(pkg, protected)
    assert {"hookpkg.core.graded", "hookpkg.core.Base.compute"} <= set(removed)
    assert not {"hookpkg.core.Base.__init_subclass__", "hookpkg.core.register", "hookpkg.core.tag"} & set(removed)
    assert "hookpkg.core.answer" in removed, "called at import (register) only as a value, inside a lambda or a main guard"
    copy = student_build.answer_free_copy(pkg, protected, cache=tmp_path / "cache")
    code = subprocess.run([sys.executable, "-c", "import hookpkg.core as c; print(sorted(c.REGISTRY))"],
                          cwd=copy.parent, capture_output=True, text=True, timeout=60)
    assert code.returncode == 0, code.stderr
    assert code.stdout.strip() == "['Child', 'answer']"
    text = (copy / "core.py").read_text()
    assert "12345" not in text and "register(cls.__name__, cls)" in text


@pytest.mark.parametrize("lab", COURSE_LABS)
def test_lowbit_build_removes_every_reference_and_its_internals(lab):
    contract = load_contract(lab)
    provided = student_build.provided_names(_setup_sources(lab))
    removed = set(student_build.removed_names(LOWBIT, contract.protected, provided))
    assert set(student_build.canonical_names(LOWBIT, contract.protected)) <= removed
    private = {name for name in removed if name.rsplit(".", 1)[1].startswith("_")}
    assert private, "the internals the references are built from are removed too"
    kept = {name for name in provided if name.startswith("lowbit.")} - set(contract.protected)
    assert not (kept & removed), "what the lab's setup provides stays usable"


def _original_bodies(lab: str) -> dict[str, str]:
    """For every removed lowbit function (trusted side): one line of its body found nowhere else in the package."""
    contract = load_contract(lab)
    removed = student_build.removed_names(LOWBIT, contract.protected, student_build.provided_names(_setup_sources(lab)))
    files = {path: path.read_text() for path in LOWBIT.rglob("*.py")}
    everything = "\n".join(files.values())
    bodies = {}
    for path, text in files.items():
        module = ".".join(("lowbit", *path.relative_to(LOWBIT).with_suffix("").parts)).removesuffix(".__init__")
        lines = text.splitlines()
        tree = ast.parse(text)
        defs = (ast.FunctionDef, ast.AsyncFunctionDef)
        functions = [(f"{module}.{n.name}", n) for n in tree.body if isinstance(n, defs)]
        functions += [(f"{module}.{c.name}.{n.name}", n) for c in tree.body if isinstance(c, ast.ClassDef)
                      for n in c.body if isinstance(n, defs)]
        for qualified, node in functions:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or qualified not in removed:
                continue
            body = node.body[1:] if ast.get_docstring(node) else node.body
            candidates = [line.strip() for stmt in body for line in lines[stmt.lineno - 1: stmt.end_lineno]
                          if len(line.strip()) > 25 and not line.strip().startswith(("#", "raise"))]
            unique = [line for line in candidates if everything.count(line) == 1]
            if unique:
                bodies[qualified] = max(unique, key=len)
    return bodies


PROBE = r'''
import gc, importlib, inspect, json, os, pickle, pkgutil, sys, types
import lowbit
names = json.loads(NAMES)
found = {"calls": {}, "files": [], "code": [], "pickled": None, "foreign": []}
for module in pkgutil.walk_packages(lowbit.__path__, "lowbit."):
    try:
        importlib.import_module(module.name)
    except Exception:
        pass
for name, line in names.items():
    module_name, _, attr = name.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except Exception:
        owner, _, cls = module_name.rpartition(".")
        obj = getattr(getattr(importlib.import_module(owner), cls), attr)
    def dummy_args(fn):
        return [None] * sum(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                            for p in inspect.signature(fn).parameters.values())
    try:
        obj(*dummy_args(obj))
    except Exception as exc:
        found["calls"][name] = str(exc)[:200]
    code = getattr(obj, "__code__", None)
    if code is not None:
        rebuilt = types.FunctionType(code, obj.__globals__, None, obj.__defaults__, obj.__closure__)
        rebuilt.__kwdefaults__ = obj.__kwdefaults__
        try:
            rebuilt(*dummy_args(obj))
        except Exception as exc:
            found["calls"][name + " (rebuilt)"] = str(exc)[:200]
for entry in list(sys.path) + [os.path.dirname(p) for p in lowbit.__path__]:
    for base, dirs, files in os.walk(entry) if os.path.isdir(entry) else []:
        if "site-packages" in base and "lowbit" not in base and "editable" not in " ".join(files):
            continue
        for file in files:
            path = os.path.join(base, file)
            if file.endswith((".py", ".pyc", ".pth")) or "lowbit" in path:
                try:
                    text = open(path, "rb").read().decode("utf-8", "ignore")
                except OSError:
                    continue
                for name, line in names.items():
                    if line in text:
                        found["files"].append([path, name])
for obj in gc.get_objects():
    if isinstance(obj, types.CodeType):
        text = " ".join(map(str, obj.co_consts)) + " ".join(obj.co_names)
        for name, line in names.items():
            if line in text:
                found["code"].append(name)
first = next(iter(names))
module_name, _, attr = first.rpartition(".")
try:
    revived = pickle.loads(pickle.dumps(getattr(importlib.import_module(module_name), attr)))
    revived(*dummy_args(revived))
except Exception as exc:
    found["pickled"] = str(exc)[:200]
for finder in sys.meta_path:
    owner = finder.__module__ if isinstance(finder, type) else type(finder).__module__
    for target in getattr(sys.modules.get(owner), "MAPPING", {}).values():
        if os.path.exists(os.path.join(target, "quant")) and \
                not os.path.exists(os.path.join(target, "ANSWER_FREE.json")):
            found["foreign"].append(target)
out = json.dumps(found)
'''


@pytest.mark.skipif(bwrap_problem() is not None, reason=f"no usable bwrap: {bwrap_problem()}")
@pytest.mark.parametrize("lab", COURSE_LABS)
def test_sandbox_cannot_reach_or_rebuild_the_references(lab):
    """Inside the real sandbox: every removed function raises (also rebuilt from its code object and after a
    pickle round trip), no file on any import path and no loaded code object holds a line of its body, and the
    venv's editable finder points nowhere that has the original package."""
    bodies = _original_bodies(lab)
    assert len(bodies) >= 5
    contract = load_contract(lab)
    provided = tuple(student_build.provided_names(_setup_sources(lab)))
    view = student_build.package_view(tuple(contract.protected), provided)
    sandbox = Sandbox("bwrap", Limits(wall_seconds=300), [], package_view=view)
    try:
        source = f"NAMES = {json.dumps(json.dumps(bodies))}\n" + PROBE
        sandbox.send({"cells": [{"key": "probe", "source": source, "student": True}], "protected": [],
                      "sys_path": sandbox.sys_path()})
        ready = sandbox.receive(300)
        while ready.get("event") == "cell":  # the worker announces each cell before running it
            ready = sandbox.receive(300)
        assert ready["cells"][0]["ok"], ready["cells"][0]
        found = json.loads(wire.decode(sandbox.request("get", name="out")["value"]))
    finally:
        sandbox.close()
    unavailable = {name for name, message in found["calls"].items() if "not available while grading" in message}
    assert {n for n in bodies} <= unavailable
    assert {f"{n} (rebuilt)" for n in bodies} <= unavailable
    assert found["files"] == [] and found["code"] == [] and found["foreign"] == []
    assert "not available while grading" in found["pickled"]


# --------------------------------------------------------------------------------------- practice / CLI
def test_cli_refuses_to_grade_without_a_secret(tmp_path, monkeypatch, capsys):
    from autograder.__main__ import main
    monkeypatch.delenv(course_secret.ENV_VAR, raising=False)
    (tmp_path / "class").mkdir()
    assert main(["grade", FIXTURE_LAB, str(tmp_path / "class"), "--out", str(tmp_path / "out"),
                 "--course", str(FIXTURE_COURSE), "--quiet"]) == 2
    assert "--practice" in capsys.readouterr().err
    assert main(["secret", "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / course_secret.FILE_NAME).is_file()


def test_practice_grading_says_so_in_the_csv_and_feedback(tmp_path, monkeypatch):
    from autograder.grade import grade_class
    from autograder.submissions import fill_answers
    from autograder_helpers import TEST_LIMITS
    monkeypatch.delenv(course_secret.ENV_VAR, raising=False)
    lab = Lab.load(Course.load(FIXTURE_COURSE), FIXTURE_LAB)
    (tmp_path / "class" / "s1").mkdir(parents=True)
    (tmp_path / "class" / "s1" / f"{FIXTURE_LAB}.ipynb").write_bytes(
        fill_answers(lab.released_bytes, solution_answers(lab.source_bytes)))
    results = grade_class(FIXTURE_LAB, tmp_path / "class", tmp_path / "out", FIXTURE_COURSE, jobs=1, progress=False,
                          unsafe=bwrap_problem() is not None, practice=True, limits=TEST_LIMITS)
    assert results["s1"]["score"] == results["s1"]["max_score"]
    assert "practice grading" in (tmp_path / "out" / "grades.csv").read_text()
    assert "not for credit" in (tmp_path / "out" / "feedback" / "s1" / f"{FIXTURE_LAB}.html").read_text()
