"""lowbit.utils: the GRADING flag and seed_everything."""
from __future__ import annotations

import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

import lowbit


def start_interpreter_printing_grading(value: str | None) -> subprocess.Popen:
    """A fresh Python (GRADING is read at import) with NBGRADER_EXECUTION set to ``value`` or unset."""
    env = {k: v for k, v in os.environ.items() if k != "NBGRADER_EXECUTION"}
    if value is not None:
        env["NBGRADER_EXECUTION"] = value
    return subprocess.Popen([sys.executable, "-c", "import lowbit; print(lowbit.GRADING)"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_grading_follows_nbgrader_execution():
    cases = {None: "False", "": "False", "autograde": "True", "validate": "True"}
    processes = {value: start_interpreter_printing_grading(value) for value in cases}  # run concurrently
    for value, process in processes.items():
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        assert out.strip() == cases[value], f"NBGRADER_EXECUTION={value!r}"


def draw() -> tuple:
    return random.random(), float(np.random.rand()), torch.rand(3)


def test_seed_everything_reproduces_every_generator():
    generator = lowbit.seed_everything(123)
    first = draw() + (torch.rand(2, generator=generator),)
    generator = lowbit.seed_everything(123)
    second = draw() + (torch.rand(2, generator=generator),)
    assert first[:2] == second[:2]
    assert torch.equal(first[2], second[2]) and torch.equal(first[3], second[3])
    lowbit.seed_everything(124)
    assert draw()[:2] != first[:2]


@pytest.mark.parametrize("seed", ["0", 1.5, True, None])
def test_seed_everything_rejects_non_int(seed):
    with pytest.raises(TypeError, match="seed must be an int"):
        lowbit.seed_everything(seed)


def test_device_is_a_torch_device():
    assert isinstance(lowbit.device(), torch.device)
