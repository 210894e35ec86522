"""Run every benchmark script, one after another (``make bench``), and say which ones failed.

    .venv/bin/python benchmarks/run_all.py [--write] [--only NAME ...]

Each script prints its own figures and ratios against its named peer. ``--write`` also records the figures of
the scripts that replace their own section of benchmarks/RESULTS.md. Expect about an hour on 2 cores: the autograder benchmark
alone grades 40 submissions twice (our grader, then plain nbgrader) for each of its two labs.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# (script, arguments always passed, arguments that record the figures in RESULTS.md). Only scripts that
# replace their own section get a record flag; the others print (their RESULTS.md sections are kept by hand).
RUNS: list[tuple[str, list[str], list[str]]] = [
    ("bench_foundation.py", [], []),
    ("bench_quant_linear.py", ["--threads", "1"], []),
    ("bench_kmeans.py", ["--threads", "1"], []),
    ("bench_qat.py", ["--threads", "1"], ["--write"]),
    ("bench_lab1_accuracy.py", [], ["--write"]),
    ("bench_lab2_accuracy.py", [], ["--write"]),
    ("bench_lab3_accuracy.py", ["--no-progress"], ["--write", "--full-test"]),
    ("bench_lab4_accuracy.py", ["--no-progress"], ["--write", "--full-test"]),
    ("bench_lab5_accuracy.py", ["--no-progress"], ["--write", "--full-test"]),
    ("bench_labs.py", [], ["--write"]),
    ("bench_xnor.py", ["--threads", "1"], ["--write"]),
    ("bench_lab6_study.py", ["--threads", "1"], ["--write"]),
    ("bench_autograder.py", ["--lab", "fixture_lab"], []),
    ("bench_autograder.py", ["--lab", "lab1_linear"], []),
    ("bench_grading_scale.py", ["--n", "4,2,2,2,2,2"], ["--write"]),
    ("bench_hub_sizing.py", ["lab1_linear", "lab3_qat"], []),
]
SCRIPTS = sorted({name for name, _, _ in RUNS})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="record the figures in benchmarks/RESULTS.md")
    parser.add_argument("--only", nargs="+", choices=SCRIPTS, metavar="NAME",
                        help=f"run only these scripts: {', '.join(SCRIPTS)}")
    args = parser.parse_args(argv)
    missing = [name for name in SCRIPTS if not (HERE / name).exists()]
    if missing:
        raise SystemExit(f"benchmark scripts listed in run_all.py are missing: {missing}")
    failed = []
    for name, always, record in RUNS:
        if args.only and name not in args.only:
            continue
        command = [sys.executable, str(HERE / name), *always, *(record if args.write else [])]
        print(f"=== {name} {' '.join(command[2:])}", flush=True)
        start = time.perf_counter()
        code = subprocess.run(command, cwd=HERE.parent).returncode
        print(f"=== {name}: {'ok' if code == 0 else f'FAILED (exit {code})'} in {time.perf_counter() - start:.0f} s",
              flush=True)
        if code:
            failed.append(" ".join([name, *always]))
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
