"""`make lab`: the CPU-only PyTorch route, and a JupyterLab that can open both labs/ and course/notebooks/."""
from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _dry_run(tmp_path: Path, *variables: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-n", "lab", f"VENV={tmp_path / 'venv'}", *variables], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_cpu_route_installs_cpu_torch_before_the_package(tmp_path):
    done = _dry_run(tmp_path, "TORCH=cpu")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    cpu = next(i for i, l in enumerate(lines) if "--index-url https://download.pytorch.org/whl/cpu torch torchvision" in l)
    package = next(i for i, l in enumerate(lines) if '-e ".[course,dev]"' in l)
    assert cpu < package and "torch.version.cuda is None" in done.stdout     # and refuses a CUDA torch left over
    assert f"{tmp_path / 'venv'}/.installed-cpu" in done.stdout


def test_default_route_is_unchanged(tmp_path):
    done = _dry_run(tmp_path)
    assert done.returncode == 0, done.stderr
    assert "download.pytorch.org" not in done.stdout and '-e ".[course,dev]"' in done.stdout


def test_unknown_torch_flavour_is_refused(tmp_path):
    done = _dry_run(tmp_path, "TORCH=cuda")
    assert done.returncode != 0 and 'TORCH must be "cpu" or "default", got "cuda"' in done.stderr


def test_jupyterlab_serves_the_repository_and_opens_on_labs(tmp_path):
    done = _dry_run(tmp_path)
    serve = next(l for l in done.stdout.splitlines() if " lab " in f" {l} " and "jupyter" in l)
    assert "--notebook-dir=." in serve and "--ServerApp.default_url=/lab/tree/labs" in serve
    assert (REPO / "course" / "notebooks" / "lab1_linear.ipynb").is_file()   # reachable from the served root
