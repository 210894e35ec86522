"""AdaRound: learn whether each weight rounds up or down, layer by layer, from a little calibration data.

Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization" (ICML). Rounding to
nearest minimizes each weight's own error, not the layer's output error. AdaRound keeps the grid
(``floor(w / s)`` plus 0 or 1) and learns the choice: a continuous V per weight, the soft offset
h(V) = clip(σ(V)(ζ − γ) + γ, 0, 1) (a sigmoid stretched past [0, 1] then clipped, so it reaches 0 and 1
exactly), trained to reconstruct the float layer's output (after its activation) on inputs from the already
quantized layers before it, with a regularizer Σ 1 − |2h − 1|^β that pushes every h to 0 or 1 as β anneals
from 20 to 2 after a warm start. At the end each weight rounds up where V ≥ 0 (h ≥ 1/2).

Constants: AIMET's defaults (``aimet_torch`` AdaRound: ζ = 1.1, γ = −0.1, β from 20 to 2, a 20 % warm start,
regularization weight 0.01), the paper's too.

- ``rectified_sigmoid``, ``init_v``, ``rounding_regularizer``, ``beta_schedule``, ``adaround_layer``: the
  graded functions of Lab 5 (plain tensors in and out);
- ``adaround_model(model, w_bits, calib, ...)``: every layer of a BatchNorm-folded model AdaRounded in turn.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping
from numbers import Real

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from lowbit.quant.equalize import check_folded, layer_chain
from lowbit.quant.granularity import per_channel_qparams
from lowbit.quant.graded import LAB5_REFERENCES, check_functions, resolve_function
from lowbit.quant.modules import capture
from lowbit.quant.validate import (check_bits, check_choice, check_float_tensor, check_int, check_positive_int,
                                   quantized_range, scale_tensor)

__all__ = ["ZETA", "GAMMA", "BETA_RANGE", "WARM_START", "REG_WEIGHT", "ACTIVATIONS", "rectified_sigmoid", "init_v",
           "rounding_regularizer", "beta_schedule", "adaround_layer", "adaround_model", "layer_rows",
           "activation_after", "ITERATIONS", "LR", "BATCH_SIZE", "MAX_ROWS", "CALIBRATION_IMAGES",
           "SECONDS_ATTRIBUTE"]

ZETA = 1.1
GAMMA = -0.1
BETA_RANGE = (20.0, 2.0)
WARM_START = 0.2
REG_WEIGHT = 0.01
#: What follows a layer: its reconstruction target is measured after it.
ACTIVATIONS = ("relu", "none")
#: ``adaround_model``'s tuned defaults for the course CNN on one CPU thread: Adam steps per layer, learning rate,
#: rows per step, rows kept per layer (im2col patches drawn once, seeded) and the calibration images the lab
#: passes (embedded training set). Picked on the BN-folded CNN, weights per channel, 1,000 steps, accuracy
#: embedded / full test set at W3 (nearest 89.63 / 89.75 %, FP32 92.67 / 92.34 %) and W2 (nearest 16.87 / 17.21 %):
#: lr 1e-2 / 3e-2: W3 92.27 / 91.87 vs 91.93 / 91.93, W2 87.70 / 87.91 vs 88.33 / 88.17; batch 256 / 1024 rows:
#: W3 92.27 / 91.87 vs 91.90 / 91.77 (and 1.3× the time); 256 / 512 / 1,024 calibration images: W3 91.60 / 91.53,
#: 92.27 / 91.87, 92.40 / 91.97, W2 88.97 / 88.42, 87.70 / 87.91, 87.67 / 87.69. Iterations:
#: ``benchmarks/bench_lab5_accuracy.py`` (accuracy against iterations, seconds per layer; README "Lab 5").
ITERATIONS = 1000
LR = 1e-2
BATCH_SIZE = 256
MAX_ROWS = 65536
CALIBRATION_IMAGES = 1024
#: ``adaround_model`` records ``{layer name: seconds}`` on the model it returns under this attribute.
SECONDS_ATTRIBUTE = "adaround_seconds"


def _stretch(zeta: object, gamma: object) -> tuple[float, float]:
    """``(ζ, γ)`` as floats with γ < 0 < 1 < ζ (the stretch that lets h reach 0 and 1 exactly)."""
    for name, value in (("zeta", zeta), ("gamma", gamma)):
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not (gamma < 0 and zeta > 1):
        raise ValueError(f"the rectified sigmoid needs gamma < 0 and zeta > 1 (AIMET: zeta={ZETA}, gamma={GAMMA}); "
                         f"got zeta={zeta}, gamma={gamma}")
    return float(zeta), float(gamma)


def _soft(v: Tensor, zeta: float, gamma: float) -> Tensor:
    return torch.clamp(torch.sigmoid(v) * (zeta - gamma) + gamma, 0.0, 1.0)


def rectified_sigmoid(v: Tensor, zeta: float = ZETA, gamma: float = GAMMA) -> Tensor:
    """h(V) = clamp(σ(V)·(ζ − γ) + γ, 0, 1), AdaRound's soft rounding offset (Nagel et al. 2020, eq. 23).

    Args:
        v: float tensor, any shape (V, one per weight). zeta > 1, gamma < 0: the stretch.
    Returns:
        h in [0, 1], v's shape and dtype (computed in float32), differentiable in v (gradient
        σ'(V)(ζ − γ) inside (0, 1), 0 where clipped).
    """
    v = check_float_tensor(v, "v")
    zeta, gamma = _stretch(zeta, gamma)
    return _soft(v.to(torch.float32), zeta, gamma).to(v.dtype)


def _channel_scale(scale: object, w: Tensor) -> Tensor:
    """``scale`` (float, 0-dim or ``[C]`` along axis 0) as float32 broadcasting against ``w``."""
    s = scale_tensor(scale)
    if s.ndim == 0:
        return s
    if s.ndim != 1 or w.ndim == 0 or s.shape[0] != w.shape[0]:
        raise ValueError(f"scale must be a float, a 0-dim tensor or [C] with C = w.shape[0] (one per output "
                         f"channel), got shape {tuple(s.shape)} for w of shape {tuple(w.shape)}")
    return s.reshape([-1] + [1] * (w.ndim - 1))


def init_v(w: Tensor, scale: float | Tensor, zeta: float = ZETA, gamma: float = GAMMA) -> Tensor:
    """V with h(V) equal to each weight's fractional part on the grid: AdaRound starts from the float weight.

    Args:
        w: float tensor ``[C, ...]`` (a layer's weight). scale: float, 0-dim or ``[C]`` (per output channel),
            > 0 (else ValueError). zeta, gamma: the stretch of ``rectified_sigmoid``.
    Returns:
        float32, w's shape: V = −log((ζ − γ) / (rest − γ) − 1) with rest = w/scale − floor(w/scale) in [0, 1)
        (the inverse of h on (0, 1)); finite for every rest in [0, 1] since γ < 0 < 1 < ζ.
    """
    w = check_float_tensor(w, "w", finite=True).detach()
    zeta, gamma = _stretch(zeta, gamma)
    ratio = w.to(torch.float32) / _channel_scale(scale, w)
    rest = (ratio - torch.floor(ratio)).clamp(0.0, 1.0)      # float rounding can give exactly 1.0 for w/s → 0⁻
    return -torch.log((zeta - gamma) / (rest - gamma) - 1.0)


def rounding_regularizer(v: Tensor, beta: float, zeta: float = ZETA, gamma: float = GAMMA) -> Tensor:
    """Σ (1 − |2·h(V) − 1|^β) over every element: 0 when each h is 0 or 1, pushing h there (eq. 24).

    Args:
        v: float tensor, any shape. beta: > 0 (annealed from 20 to 2 by ``beta_schedule``; need not be an
            integer). zeta, gamma: as ``rectified_sigmoid``.
    Returns:
        0-dim tensor in v's dtype (summed in float32), differentiable in v.
    """
    v = check_float_tensor(v, "v")
    if isinstance(beta, bool) or not isinstance(beta, Real) or not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
    zeta, gamma = _stretch(zeta, gamma)
    h = _soft(v.to(torch.float32), zeta, gamma)
    return (1.0 - (2.0 * h - 1.0).abs().pow(float(beta))).sum().to(v.dtype)


def _fraction(value: object, name: str, low: float, high: float, open_high: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or not low <= value <= high \
            or (open_high and value == high):
        raise ValueError(f"{name} must be a number in [{low}, {high}{')' if open_high else ']'}, got {value!r}")
    return float(value)


def beta_schedule(step: int, total: int, warm_start: float = WARM_START, start: float = BETA_RANGE[0],
                  end: float = BETA_RANGE[1]) -> float:
    """The regularizer's exponent β at ``step`` of ``total`` (AIMET's linear annealing).

    ``start`` while step < warm_start·total (the regularizer is not applied then); after it linear from
    ``start`` down to ``end``: end + (start − end)·max(0, 1 − (step − warm_start·total) / (total −
    warm_start·total)), so β = start at the end of the warm start and β = end at step = total.
    step, total: ints with 0 ≤ step ≤ total and total ≥ 1; warm_start in [0, 1) (else ValueError).
    """
    total = check_int(total, "total", low=1)
    step = check_int(step, "step", low=0, high=total)
    warm_start = _fraction(warm_start, "warm_start", 0.0, 1.0, open_high=True)
    for name, value in (("start", start), ("end", end)):
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    warm = warm_start * total
    if step < warm:
        return float(start)
    return float(end + (start - end) * max(0.0, 1.0 - (step - warm) / (total - warm)))


def _rows(x: object, name: str, columns: int | None, what: str) -> Tensor:
    x = check_float_tensor(x, name, nonempty=True, finite=True).detach()
    if x.ndim != 2 or (columns is not None and x.shape[1] != columns):
        raise ValueError(f"{name} must be {what}, got shape {tuple(x.shape)}")
    return x.to(torch.float32)


def adaround_layer(weight: Tensor, scale: Tensor, inputs: Tensor, targets: Tensor, bits: int,
                   bias: Tensor | None = None, activation: str = "relu", iterations: int = 200, lr: float = 1e-2,
                   reg_weight: float = REG_WEIGHT, batch_size: int = 256, seed: int = 0) -> Tensor:
    """AdaRound one layer: the integer weights that reconstruct its float outputs best (Nagel et al. 2020).

    Args:
        weight: float ``[C_out, K]`` (a conv's weight flattened to ``[C_out, C_in·kh·kw]``).
        scale: float ``[C_out]`` > 0 (per-channel symmetric, ``granularity.per_channel_qparams``), or a float /
            0-dim tensor for one scale.
        inputs: float ``[N, K]``, the layer's inputs from the already-quantized layers before it (a conv's
            im2col patches). targets: float ``[N, C_out]``, the float layer's outputs after ``activation``.
        bits: 2..16; the integers are clamped to the signed range [−2^(b−1), 2^(b−1) − 1].
        bias: float ``[C_out]`` or None. activation: ``"relu"`` or ``"none"``.
        iterations: Adam steps (≥ 0; 0 gives rounding to nearest, half up). lr: Adam's learning rate on V.
        reg_weight: λ, the regularizer's weight (≥ 0). batch_size: rows drawn per step. seed: the draws'.
    Returns:
        int64 ``[C_out, K]``: floor(w / scale) + (V ≥ 0), clamped; dequantize as ``scale[:, None] · q``.

    Each step draws ``batch_size`` rows with ``torch.randint(N, (batch_size,), generator=g)``
    (``g = torch.Generator().manual_seed(seed)``), forms W̃ = scale·clamp(floor(w/scale) + h(V), q_min, q_max)
    and minimizes mean((act(x W̃ᵀ + b) − t)²) + λ·``rounding_regularizer``(V, β) with β =
    ``beta_schedule(i, iterations)``, the regularizer off during the warm start (i < 0.2·iterations).
    """
    w = _rows(weight, "weight", None, "[C_out, K] (flatten a conv weight to [C_out, C_in*kh*kw])")
    out_channels, k = w.shape
    x = _rows(inputs, "inputs", k, f"[N, {k}] (one row per sample or im2col patch)")
    t = _rows(targets, "targets", out_channels, f"[N, {out_channels}] (the float layer's outputs)")
    if t.shape[0] != x.shape[0]:
        raise ValueError(f"inputs and targets must have the same number of rows, got {x.shape[0]} and {t.shape[0]}")
    s = _channel_scale(scale, w)
    bits = check_bits(bits, low=2, high=16)
    check_choice("activation", activation, ACTIVATIONS)
    iterations = check_int(iterations, "iterations", low=0)
    batch_size = check_positive_int(batch_size, "batch_size")
    seed = check_int(seed, "seed")
    if isinstance(lr, bool) or not isinstance(lr, Real) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if isinstance(reg_weight, bool) or not isinstance(reg_weight, Real) or not math.isfinite(reg_weight) \
            or reg_weight < 0:
        raise ValueError(f"reg_weight must be a finite number >= 0, got {reg_weight!r}")
    b = None
    if bias is not None:
        b = check_float_tensor(bias, "bias", finite=True).detach().to(torch.float32)
        if tuple(b.shape) != (out_channels,):
            raise ValueError(f"bias must have shape [{out_channels}], got {tuple(b.shape)}")
    q_min, q_max = quantized_range(bits, signed=True)
    base = torch.floor(w / s)
    with torch.enable_grad():                          # also when called under torch.no_grad()
        v = init_v(w, s.reshape(-1) if s.ndim else s).requires_grad_(True)
        optimizer = torch.optim.Adam([v], lr=float(lr))
        generator = torch.Generator().manual_seed(seed)
        warm = WARM_START * iterations
        for step in range(iterations):
            rows = torch.randint(x.shape[0], (batch_size,), generator=generator)
            w_soft = s * torch.clamp(base + _soft(v, ZETA, GAMMA), q_min, q_max)
            out = torch.nn.functional.linear(x[rows], w_soft, b)
            if activation == "relu":
                out = torch.relu(out)
            loss = (out - t[rows]).pow(2).mean()
            if step >= warm and reg_weight > 0:
                loss = loss + reg_weight * rounding_regularizer(v, beta_schedule(step, iterations))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return torch.clamp(base + (v >= 0).to(torch.float32), q_min, q_max).to(torch.int64)


# ------------------------------------------------------------------------------------------ the pipeline
def activation_after(model: nn.Module, name: str) -> str:
    """``"relu"`` when the first module after layer ``name`` in registration order (identities — folded
    BatchNorms — skipped) is an ``nn.ReLU``, else ``"none"``: where the layer's reconstruction is measured."""
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    names = [n for n, _ in leaves]
    if name not in names:
        raise ValueError(f"{name!r} is not a layer of this model")
    for _, module in leaves[names.index(name) + 1:]:
        if isinstance(module, nn.Identity):
            continue
        return "relu" if isinstance(module, nn.ReLU) else "none"
    return "none"


def layer_rows(layer: nn.Module, inputs: Tensor, outputs: Tensor) -> tuple[Tensor, Tensor]:
    """A layer's inputs and outputs as the rows of one matrix product: ``([R, K], [R, C_out])``.

    Conv2d: im2col (``F.unfold`` with the layer's kernel, dilation, padding and stride): every output position
    of every image is a row, K = C_in·kh·kw in the order of ``weight.reshape(C_out, -1)``. Linear: every
    leading index is a row. Float32.
    """
    if isinstance(layer, nn.Conv2d):
        if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise ValueError("layer_rows supports Conv2d with numeric zero padding only")
        patches = nn.functional.unfold(inputs, layer.kernel_size, layer.dilation, layer.padding, layer.stride)
        x = patches.transpose(1, 2).reshape(-1, patches.shape[1])
        y = outputs.flatten(2).transpose(1, 2).reshape(-1, outputs.shape[1])
        return x, y
    if isinstance(layer, nn.Linear):
        return inputs.reshape(-1, inputs.shape[-1]), outputs.reshape(-1, outputs.shape[-1])
    raise TypeError(f"layer_rows supports Conv2d and Linear layers, got {type(layer).__name__}")


def adaround_model(model: nn.Module, w_bits: int, calib: Tensor, iterations: int = ITERATIONS,
                   functions: Mapping[str, Callable] | None = None, first_last_bits: int | None = None,
                   progress: bool = True, lr: float = LR, batch_size: int = BATCH_SIZE, reg_weight: float = REG_WEIGHT,
                   max_rows: int | None = MAX_ROWS, seed: int = 0) -> nn.Module:
    """AdaRound every layer of a BatchNorm-folded chain in turn (Nagel et al. 2020, §5), weights only.

    Args:
        model: BatchNorm-folded float model (the course CNN after ``fold_batchnorm``, possibly
            ``equalize_model``-ed), unchanged.
        w_bits: weight bits (2..16), symmetric per output channel (``per_channel_qparams``'s scales).
        calib: calibration images float32 ``[N, 1, 28, 28]`` (the lab: ``CALIBRATION_IMAGES`` from the
            embedded training set, ``lowbit.data.calibration_batch``).
        iterations, lr, batch_size, reg_weight: ``adaround_layer``'s, for every layer.
        functions: the student's ``adaround_layer`` (any Lab 5 name, ``lowbit.quant.graded``); missing → the
            reference.
        first_last_bits: None (every layer at ``w_bits``) or the bits of the first and last layer (8).
        max_rows: at most this many rows (im2col patches) per layer, drawn once with ``seed`` (None: all).
        progress: a tqdm bar over the layers. seed: for the row draws and every layer's ``adaround_layer``.
    Returns:
        a copy of ``model`` whose layers hold ``scale · q`` (dequantized float32), with
        ``adaround_seconds`` (``SECONDS_ATTRIBUTE``): ``{layer: seconds spent}``.

    Layer by layer, in order: the layer's inputs come from the copy, whose earlier layers are already
    AdaRounded (their rounding errors are what this layer must compensate); its targets are the float
    model's outputs after the layer's activation (``activation_after``: ReLU for the CNN's convs, none for
    ``fc``). Both are turned into rows of one product by ``layer_rows`` (im2col for convs).
    """
    check_folded(model, "adaround_model")
    w_bits = check_bits(w_bits, low=2, high=16, name="w_bits")
    if first_last_bits is not None:
        first_last_bits = check_bits(first_last_bits, low=2, high=16, name="first_last_bits")
    calib = check_float_tensor(calib, "calib", nonempty=True, finite=True).detach()
    if max_rows is not None:
        max_rows = check_positive_int(max_rows, "max_rows")
    chosen = check_functions(functions, LAB5_REFERENCES)
    layer_fn = resolve_function(chosen, "adaround_layer", LAB5_REFERENCES)
    float_model = copy.deepcopy(model).eval()
    rounded = copy.deepcopy(model).eval()
    layers = layer_chain(rounded)
    names = list(layers)
    seconds: dict[str, float] = {}
    for index, name in enumerate(tqdm(names, desc=f"AdaRound W{w_bits}", disable=not progress, leave=False)):
        started = time.perf_counter()
        layer = layers[name]
        bits = first_last_bits if first_last_bits is not None and index in (0, len(names) - 1) else w_bits
        inputs = capture(rounded, calib, layers=[name], outputs=False)[name].inputs
        outputs = capture(float_model, calib, layers=[name], inputs=False)[name].outputs
        activation = activation_after(model, name)
        x, y = layer_rows(layer, inputs, torch.relu(outputs) if activation == "relu" else outputs)
        if max_rows is not None and x.shape[0] > max_rows:
            keep = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:max_rows]
            x, y = x[keep], y[keep]
        weight = layer.weight.detach().reshape(layer.weight.shape[0], -1).to(torch.float32)
        scale = per_channel_qparams(weight, bits).reshape(-1)
        bias = None if layer.bias is None else layer.bias.detach()
        q = layer_fn(weight, scale, x, y, bits, bias=bias, activation=activation, iterations=iterations, lr=lr,
                     reg_weight=reg_weight, batch_size=batch_size, seed=seed)
        if not isinstance(q, Tensor) or tuple(q.shape) != tuple(weight.shape):
            got = tuple(q.shape) if isinstance(q, Tensor) else type(q).__name__
            raise ValueError(f"adaround_layer returned {got} for {name}; it must return the integer weights "
                             f"[C_out, K] = {tuple(weight.shape)}")
        with torch.no_grad():
            layer.weight.copy_((scale[:, None] * q.to(torch.float32)).reshape(layer.weight.shape))
        seconds[name] = time.perf_counter() - started
    setattr(rounded, SECONDS_ATTRIBUTE, seconds)
    return rounded
