"""benchmarks/run_all.py (``make bench``) runs every benchmark script there is, and only scripts that exist."""
from __future__ import annotations

import importlib.util
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_run_all():
    spec = importlib.util.spec_from_file_location("run_all", BENCHMARKS / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_run_all_lists_every_benchmark_script_and_nothing_else():
    run_all = load_run_all()
    on_disk = {path.name for path in BENCHMARKS.glob("bench_*.py")}
    assert set(run_all.SCRIPTS) == on_disk, "add new bench_*.py scripts to RUNS in benchmarks/run_all.py"


def test_make_bench_runs_run_all():
    makefile = (BENCHMARKS.parent / "Makefile").read_text()
    assert "benchmarks/run_all.py" in makefile and (BENCHMARKS / "run_all.py").exists()
