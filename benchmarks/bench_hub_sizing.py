"""Sizing a course hub: memory and CPU one active student's lab kernel needs (course/instructor-guide.md §4).

    .venv/bin/python benchmarks/bench_hub_sizing.py [LAB ...]      # default: lab1_linear

Runs each lab's worked notebook (``solutions/<lab>/<lab>.ipynb``: every cell, answers filled in — a student who
has finished the lab and presses Restart & Run All, the heaviest thing a student does) in a fresh kernel
started the way a hub user's server starts it (OMP_NUM_THREADS=1, as course/hub/jupyterhub_config.py sets),
and samples the kernel's process tree twice a second: peak proportional set size (PSS: shared libraries
counted once per process sharing them, what a machine full of students adds up to), peak RSS, CPU seconds and
wall time. The user's JupyterLab server itself (idle: about 140 MiB PSS) is measured by
tests/test_hub_end_to_end.py, which prints it. Peer: none — these are the figures to size a machine or a
Kubernetes pod request/limit with, not a speed comparison.
"""
from __future__ import annotations

import argparse
import os
import platform
import threading
import time
from pathlib import Path

import nbformat
import psutil
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]


def tree_usage(pid: int) -> tuple[float, float, float]:
    """(PSS bytes, RSS bytes, CPU seconds) of ``pid`` and its children."""
    pss = rss = cpu = 0.0
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0, 0.0, 0.0
    for proc in processes:
        try:
            info = proc.memory_full_info()
            times = proc.cpu_times()
        except psutil.Error:
            continue
        pss, rss = pss + getattr(info, "pss", info.rss), rss + info.rss
        cpu += times.user + times.system + times.children_user + times.children_system
    return pss, rss, cpu


def measure(lab: str) -> dict:
    """Run the lab's worked notebook once; the kernel's peak memory, its CPU seconds, the wall time."""
    notebook = nbformat.read(REPO / "solutions" / lab / f"{lab}.ipynb", as_version=4)
    os.environ.pop("NBGRADER_EXECUTION", None)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    client = NotebookClient(notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(REPO)}})
    peak = {"pss": 0.0, "rss": 0.0, "cpu": 0.0}
    done = threading.Event()

    def sample(pid: int) -> None:
        while not done.is_set():
            pss, rss, cpu = tree_usage(pid)
            peak["pss"], peak["rss"] = max(peak["pss"], pss), max(peak["rss"], rss)
            peak["cpu"] = max(peak["cpu"], cpu)
            done.wait(0.5)

    started = time.monotonic()
    with client.setup_kernel():
        pid = client.km.provisioner.process.pid
        sampler = threading.Thread(target=sample, args=(pid,), daemon=True)
        sampler.start()
        idle_pss = tree_usage(pid)[0]
        for index, cell in enumerate(notebook.cells):
            client.execute_cell(cell, index)
        peak["cpu"] = max(peak["cpu"], tree_usage(pid)[2])
        done.set()
        sampler.join()
    return {"lab": lab, "kernel idle PSS MiB": idle_pss / 2**20, "peak PSS MiB": peak["pss"] / 2**20,
            "peak RSS MiB": peak["rss"] / 2**20, "CPU s": peak["cpu"], "wall s": time.monotonic() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("labs", nargs="*", default=["lab1_linear"])
    args = parser.parse_args()
    print(f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    for lab in args.labs:
        row = measure(lab)
        print(" | ".join(f"{key}: {value:.1f}" if isinstance(value, float) else f"{key}: {value}"
                         for key, value in row.items()))


if __name__ == "__main__":
    main()
