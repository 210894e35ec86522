"""QAT cost: lowbit.quant.qat against PyTorch's own fake quantization, back to back in one process.

    .venv/bin/python benchmarks/bench_qat.py [--threads 1] [--repeats 15] [--write]

1. Operators, forward + backward on 1,000,000 float32 values (median of ``--repeats``, interleaved):
   ``fake_quantize_ste`` vs ``torch.fake_quantize_per_tensor_affine`` (both the clipped STE), and
   ``lsq_fake_quantize`` vs ``torch._fake_quantize_learnable_per_tensor_affine`` (both LSQ gradients).
2. One training step (forward, backward, SGD) of the course CNN on a batch of 128 images: float; lowbit
   ``prepare_qat`` W4A4 with LSQ activations (the default), with PACT, and with BN folded into the quantized
   convs (``fold_bn=True``: a second, float conv per layer for the batch statistics); torch.ao eager-mode QAT
   (``prepare_qat`` with the default x86 qconfig: per-channel weight fake-quant, fake-quant after every
   conv/linear). The models are timed in turn within each of ``--repeats`` rounds (interleaved), so the
   ratios hold under a varying load; the median per model is reported.
``--write`` records the tables in benchmarks/RESULTS.md ("QAT").
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
import warnings
from collections.abc import Callable

import torch

import lowbit
from _results import write_section
from _timing import interleaved_medians, median_seconds
from lowbit.quant import qat as Q


def median_ms(fn: Callable[[], None], repeats: int, warmup: int = 3) -> float:
    return 1000 * median_seconds(fn, repeats, warmup=warmup)


def operator_rows(repeats: int) -> list[tuple[str, float, float]]:
    x = torch.randn(1_000_000, generator=torch.Generator().manual_seed(0)).requires_grad_()
    grad = torch.randn(1_000_000, generator=torch.Generator().manual_seed(1))
    step = torch.tensor([0.125], requires_grad=True)
    zero = torch.zeros(1)

    def ours_ste() -> None:
        Q.fake_quantize_ste(x, 0.125, 0, 4).backward(grad)

    def torch_ste() -> None:
        torch.fake_quantize_per_tensor_affine(x, 0.125, 0, -8, 7).backward(grad)

    def ours_lsq() -> None:
        Q.lsq_fake_quantize(x, step, 4).backward(grad)

    def torch_lsq() -> None:
        torch._fake_quantize_learnable_per_tensor_affine(x, step, zero, -8, 7, 1.0).backward(grad)

    ms = interleaved_medians({"ours_ste": ours_ste, "torch_ste": torch_ste, "ours_lsq": ours_lsq,
                              "torch_lsq": torch_lsq}, repeats)
    return [("fake quantization, clipped STE (4 bits)", ms["ours_ste"], ms["torch_ste"]),
            ("LSQ, learned step (4 bits)", ms["ours_lsq"], ms["torch_lsq"])]


def torch_ao_qat(model: torch.nn.Module) -> torch.nn.Module:
    import torch.ao.quantization as tq
    prepared = copy.deepcopy(model).train()
    prepared.qconfig = tq.get_default_qat_qconfig("x86")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tq.prepare_qat(prepared, inplace=False)


def training_step_rows(repeats: int) -> list[tuple[str, float]]:
    """Median ms of one training step per model, the models timed in turn within each round (interleaved,
    so a change in the machine's load hits every row alike)."""
    lowbit.seed_everything(0)
    model = lowbit.models.pretrained("cnn").train()
    images, labels = next(iter(lowbit.data.loaders(batch_size=128, seed=0)[0]))
    models = {"float (no quantization)": model,
              "lowbit prepare_qat W4A4, LSQ activations (default)": Q.prepare_qat(model, 4, 4),
              "lowbit prepare_qat W4A4, PACT activations": Q.prepare_qat(model, 4, 4, activation="pact"),
              "lowbit prepare_qat W4A4, LSQ, BN folded (QATConvBn2d, batch statistics)":
                  Q.prepare_qat(model, 4, 4, fold_bn=True),
              "torch.ao eager prepare_qat, x86 qconfig (8-bit)": torch_ao_qat(model)}
    steps = {}
    for name, candidate in models.items():
        optimizer = torch.optim.SGD(candidate.parameters(), lr=1e-4)

        def step(candidate: torch.nn.Module = candidate, optimizer: torch.optim.Optimizer = optimizer) -> None:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(candidate(images), labels).backward()
            optimizer.step()

        steps[name] = step
    return list(interleaved_medians(steps, repeats).items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    operators = operator_rows(args.repeats)
    lines = ["| operator, forward + backward, 1 M values | lowbit (ms) | PyTorch (ms) | lowbit / PyTorch |",
             "|---|---|---|---|"]
    lines += [f"| {name} | {ours:.2f} | {theirs:.2f} | {ours / theirs:.2f}× |" for name, ours, theirs in operators]
    steps = training_step_rows(args.repeats)
    float_ms = steps[0][1]
    lines += ["", "| training step, course CNN, batch 128 | ms | vs float |", "|---|---|---|"]
    lines += [f"| {name} | {ms:.1f} | {ms / float_ms:.2f}× |" for name, ms in steps]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section("QAT", f"`benchmarks/bench_qat.py --threads {args.threads} --write` ({time.strftime('%Y-%m-%d')}), "
                      f"median of {args.repeats}, timed interleaved, 2-core x86_64 VM (load average "
                      f"{os.getloadavg()[0]:.1f} during the run: absolute times vary with the load, the ratios much less). "
                      "PyTorch's fused kernels are the peer: lowbit's operators are plain tensor code with a custom "
                      "backward. The default `prepare_qat` keeps BatchNorm after the quantized conv; `fold_bn=True` "
                      "(what `train_qat`, the Lab 3 recipe, uses, and what deployment computes) adds a float conv per "
                      "layer for the batch statistics (Jacob et al. 2018), hence its cost.\n\n" + text)


if __name__ == "__main__":
    main()
