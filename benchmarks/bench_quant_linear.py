"""Int8 linear layer: PyTorch's quantized CPU kernel vs fp32 nn.Linear vs lowbit's quantized_linear.

    .venv/bin/python benchmarks/bench_quant_linear.py [--threads 1] [--append-results]

Peers, run back to back in one process on the same inputs:
- fp32 ``nn.Linear``;
- ``torch.ao.nn.quantized.Linear`` (quint8 activations, per-channel qint8 weights) on the default quantized
  engine (fbgemm/x86 on x86 CPUs, qnnpack elsewhere), input already quantized;
- ``lowbit.quant.integer.quantized_linear`` (exact float64-BLAS integer matmul + zero-point expansion +
  requantization; a teaching reference, not a kernel).
Prints the median time per call and ratios to fp32; also checks the three agree (max |error| in output steps).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import os
import time
import warnings
from datetime import date
from pathlib import Path

import torch
from torch import nn

from lowbit.quant.integer import quantize_bias, quantized_linear
from lowbit.quant.linear import affine_qparams, linear_dequantize, linear_quantize

SIZES = [(1, 512, 512), (64, 512, 512), (256, 1024, 1024), (1024, 576, 10)]
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def median_seconds(fn, min_time: float = 0.3, min_runs: int = 5) -> float:
    fn()                                                                 # warm-up
    times, start = [], time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(batch: int, d_in: int, d_out: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(batch, d_in, generator=g))
    layer = nn.Linear(d_in, d_out).eval()
    with torch.no_grad():
        y = layer(x)
    x_scale, x_zp = affine_qparams(float(x.min()), float(x.max()), 8, signed=False)
    y_scale, y_zp = affine_qparams(float(y.min()), float(y.max()), 8, signed=False)
    w = layer.weight.detach()
    w_scale = w.abs().amax(dim=1) / 127
    q_w = linear_quantize(w, w_scale.reshape(-1, 1), 0, 8)
    q_b = quantize_bias(layer.bias.detach(), x_scale, w_scale)
    q_x = linear_quantize(x, x_scale, x_zp, 8, signed=False)

    torch_q = torch.ao.nn.quantized.Linear(d_in, d_out)
    qweight = torch.quantize_per_channel(w, w_scale.double(), torch.zeros(d_out, dtype=torch.int64), 0, torch.qint8)
    torch_q.set_weight_bias(qweight, layer.bias.detach())
    torch_q.scale, torch_q.zero_point = y_scale, y_zp
    torch_qx = torch.quantize_per_tensor(x, x_scale, x_zp, torch.quint8)

    ours = quantized_linear(q_x, x_scale, x_zp, q_w, w_scale, q_b, y_scale, y_zp)
    theirs = torch_q(torch_qx).int_repr()
    float_steps = (linear_dequantize(ours, y_scale, y_zp) - y).abs().max() / y_scale
    with torch.no_grad():
        times = {
            "fp32 nn.Linear": median_seconds(lambda: layer(x)),
            "torch int8 (quantized.Linear)": median_seconds(lambda: torch_q(torch_qx)),
            "lowbit quantized_linear": median_seconds(
                lambda: quantized_linear(q_x, x_scale, x_zp, q_w, w_scale, q_b, y_scale, y_zp)),
        }
    times["max |lowbit − torch| (steps)"] = float((ours.int() - theirs.int()).abs().max())
    times["max |lowbit − fp32| (steps)"] = float(float_steps)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--append-results", action="store_true", help=f"append the table to {RESULTS}")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
    engine = torch.backends.quantized.engine
    header = (f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s), "
              f"torch {torch.__version__}, quantized engine {engine}, "
              f"load average {os.getloadavg()[0]:.1f} at start")
    print(header)
    lines = ["| batch × in → out | fp32 nn.Linear | torch int8 | lowbit quantized_linear | torch int8 / fp32 | "
             "lowbit / fp32 | max Δ lowbit vs torch (steps) |",
             "|---|---|---|---|---|---|---|"]
    for batch, d_in, d_out in SIZES:
        r = bench(batch, d_in, d_out)
        fp32, tq, lb = r["fp32 nn.Linear"], r["torch int8 (quantized.Linear)"], r["lowbit quantized_linear"]
        lines.append(f"| {batch} × {d_in} → {d_out} | {fp32 * 1e6:.0f} µs | {tq * 1e6:.0f} µs | {lb * 1e6:.0f} µs | "
                     f"{tq / fp32:.2f} | {lb / fp32:.1f} | {r['max |lowbit − torch| (steps)']:.0f} |")
        print(lines[-1])
    if args.append_results:
        text = (f"\n## Linear quantization\n\n`benchmarks/bench_quant_linear.py --threads {args.threads}` "
                f"({date.today().isoformat()}); {header}. Median time per call, input already quantized.\n\n"
                + "\n".join(lines) + "\n")
        with RESULTS.open("a", encoding="utf-8") as handle:
            handle.write(text)
        print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
