"""Post-training quantization (PTQ) helpers for the lab experiments. Input models are never modified.

- ``quantize_weights``: a copy of the model whose quantizable layers' weights (``lowbit.quant.modules``) are
  fake-quantized (symmetric, restricted, signed) per tensor, per output channel or per group, with min-max or
  MSE-optimal clipping — uniformly, or per layer by a ``Policy`` (mixed precision). Biases stay float32.
- ``ptq``: static PTQ — weights as above, plus activation fake-quant (unsigned affine, one scale and zero
  point per tensor, as ``lowbit.quant.integer``) on the network input and after every ``nn.ReLU`` module,
  with ranges from an observer (``ObserverQuantizer``) run over calibration data. ``static_ptq``: the same
  driven by plain functions (a student's).
- Lab 1's experiments, shared with ``benchmarks/bench_lab1_accuracy.py`` so the lab's table and the reference
  table are one code path: ``calibrators`` (range functions by name), ``weight_schemes`` (weight
  fake-quantizers by name), ``weight_only`` (weights quantized after folding BatchNorm).
"""
from __future__ import annotations

import copy
from typing import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from lowbit.quant.calibration import OBSERVERS, Observer, SampleObserver, make_observer
from lowbit.quant.granularity import CLIPS, GRANULARITIES, fake_quantize_weight, mse_symmetric_scale
from lowbit.quant.linear import linear_dequantize, linear_quantize
from lowbit.quant.modules import Policy, capture, image_batches, insert_after, quantizable_layers
from lowbit.quant.quantizer import ObserverQuantizer
from lowbit.quant.validate import check_bits

__all__ = ["GRANULARITIES", "CLIPS", "mse_symmetric_scale", "fake_quantize_weight", "quantize_weights",
           "weight_policy", "map_weights", "collect_activations", "ActivationFakeQuant", "PTQModel",
           "RangeFunctionObserver", "ptq", "static_ptq", "CALIBRATORS", "calibrators", "WEIGHT_SCHEMES",
           "weight_schemes", "weight_only"]


def weight_policy(bits: int | None, granularity: str = "channel", group_size: int = 32, clip: str = "minmax",
                  policy: Policy | None = None) -> Policy:
    """The policy ``quantize_weights`` applies: ``policy`` itself, or every quantizable layer at ``bits`` with
    the given layout (``options``: ``group_size``, ``clip``)."""
    return Policy.of(policy, w_bits=bits, granularity=granularity,
                     options={"group_size": group_size, "clip": clip})


def quantize_weights(model: nn.Module, bits: int | None = 8, granularity: str = "channel", group_size: int = 32,
                     clip: str = "minmax", policy: Policy | None = None) -> nn.Module:
    """A deep copy of ``model`` with every quantizable layer's weight (``lowbit.quant.modules``) fake-quantized
    by ``fake_quantize_weight`` — uniformly at ``bits`` / ``granularity`` / ``group_size`` / ``clip``, or per
    layer as ``policy`` says (its ``options`` may set ``group_size`` and ``clip``; ``w_bits=None`` keeps a
    layer float). Biases, BatchNorm parameters and ``model`` itself are unchanged."""
    quantized = copy.deepcopy(model)
    configs = weight_policy(bits, granularity, group_size, clip, policy).resolve(quantized)
    layers = quantizable_layers(quantized, list(configs))
    with torch.no_grad():
        for name, config in configs.items():
            if config.w_bits is None:
                continue
            weight = layers[name].weight
            options = {"group_size": 32, "clip": "minmax", **config.options}
            weight.copy_(fake_quantize_weight(weight, config.w_bits, config.granularity, options["group_size"],
                                              options["clip"]))
    return quantized


def map_weights(model: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor],
                layers: Iterable[str] | None = None) -> nn.Module:
    """A deep copy of ``model`` with every quantizable layer's weight (or those named in ``layers``) replaced
    by ``fn(weight)`` (e.g. a fake-quantizer built from the student's functions). ``fn`` gets a detached copy
    and must return a float tensor of the same shape. ``model`` is not modified."""
    mapped = copy.deepcopy(model)
    with torch.no_grad():
        for name, module in quantizable_layers(mapped, layers).items():
            new = fn(module.weight.detach().clone())
            if not isinstance(new, torch.Tensor) or new.shape != module.weight.shape:
                got = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
                raise ValueError(f"map_weights: fn returned {got} for {name}.weight of shape "
                                 f"{tuple(module.weight.shape)}; it must return a tensor of the same shape")
            module.weight.copy_(new.to(module.weight.dtype))
    return mapped


def collect_activations(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """The input of every quantizable layer over ``images`` [N, C, H, W]: name → float32 tensor [N, ...]
    (e.g. ``"conv2"`` → [N, 32, 14, 14] for FashionCNN). Runs in eval mode; ``model`` is unchanged.
    (Inputs and outputs together: ``lowbit.quant.modules.capture``.)"""
    if not isinstance(images, torch.Tensor) or images.numel() == 0:
        raise ValueError("images must be a non-empty tensor [N, C, H, W]")
    return {name: seen.inputs for name, seen in capture(model, images, outputs=False, batch_size=batch_size).items()
            if seen.inputs is not None}


class ActivationFakeQuant(ObserverQuantizer):
    """Observes its input while ``calibrating``; after ``freeze()`` fake-quantizes it (unsigned affine, ``bits``).
    PTQ's activation quantizer: an ``ObserverQuantizer`` (``lowbit.quant.quantizer``)."""

    def __init__(self, observer: Observer, bits: int) -> None:
        super().__init__(observer, bits, signed=False)


class PTQModel(nn.Module):
    """``model`` with fake-quantized input: forward(x) = model(input_quant(x))."""

    def __init__(self, model: nn.Module, input_quant: nn.Module) -> None:
        super().__init__()
        self.input_quant, self.model = input_quant, model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.input_quant(x))

    def activation_quantizers(self) -> list[ActivationFakeQuant]:
        return [m for m in self.modules() if isinstance(m, ActivationFakeQuant)]


class RangeFunctionObserver(SampleObserver, register=False):
    """Keeps every observed value and returns ``range_fn(all values)`` — for calibrators written as plain
    functions x → (lo, hi) (e.g. a student's ``mse_clip_range`` with the bits fixed)."""

    name = "function"

    def __init__(self, range_fn: Callable[[torch.Tensor], tuple[float, float]]) -> None:
        super().__init__(max_per_batch=2 ** 62)
        self.range_fn = range_fn

    def _range(self) -> tuple[float, float]:
        lo, hi = self.range_fn(self.values())
        return float(lo), float(hi)


@torch.no_grad()
def ptq(model: nn.Module, calib: torch.Tensor | Iterable, w_bits: int | None = 8, a_bits: int | None = 8,
        observer: str | Callable[[], Observer] = "minmax", granularity: str = "channel", group_size: int = 32,
        clip: str = "minmax", max_batches: int | None = None, progress: bool = True,
        weight_fn: Callable[[torch.Tensor], torch.Tensor] | None = None, policy: Policy | None = None) -> PTQModel:
    """Static post-training quantization → a fake-quant ``PTQModel`` (eval mode); ``model`` is untouched.

    Args:
        model: float model (fold BatchNorm first for realistic results: ``lowbit.models.fold_batchnorm``).
        calib: images float32 [N, C, H, W] (split into batches of 256) or a loader yielding images or
            (images, labels).
        w_bits / a_bits: weight / activation bits, or None to leave them in float.
        observer: "minmax", "ema", "percentile", "mse" or "kl" (``lowbit.quant.calibration``) for the
            activations, or a callable returning a fresh ``Observer``.
        granularity, group_size, clip: for the weights (``quantize_weights``).
        weight_fn: instead of those, a function weight → fake-quantized weight (``map_weights``).
        policy: per-layer weight settings instead of ``w_bits`` / ``granularity`` / ... (``quantize_weights``).
        max_batches: use only the first calibration batches. progress: show a tqdm bar.

    Weights are fake-quantized first, so activation ranges are calibrated on the quantized-weight network.
    Activations are quantized on the input and after every ``nn.ReLU`` module (functional ReLUs inside a
    forward() are not seen).
    """
    if isinstance(observer, str) and observer not in OBSERVERS:
        raise ValueError(f"unknown observer {observer!r}; choose one of {', '.join(OBSERVERS)}")
    if weight_fn is not None:
        quantized = map_weights(model, weight_fn)
    elif w_bits is not None or policy is not None:
        quantized = quantize_weights(model, w_bits, granularity, group_size, clip, policy)
    else:
        quantized = copy.deepcopy(model)
    if a_bits is None:
        return PTQModel(quantized, nn.Identity()).eval()
    a_bits = check_bits(a_bits, low=2, high=16, name="a_bits")
    new_observer = (lambda: make_observer(observer, a_bits)) if isinstance(observer, str) else observer
    make = lambda: ActivationFakeQuant(new_observer(), a_bits)   # noqa: E731
    insert_after(quantized, nn.ReLU, make)
    wrapped = PTQModel(quantized, make()).eval()
    batches = image_batches(calib)[:max_batches]
    label = observer if isinstance(observer, str) else "custom"
    for images in tqdm(batches, desc=f"calibrating ({label})", disable=not progress, leave=False):
        wrapped(images)
    for quantizer in wrapped.activation_quantizers():
        quantizer.freeze()
    return wrapped


def static_ptq(model: nn.Module, calib_images: torch.Tensor, w_bits: int = 8, a_bits: int = 8,
               weight_scale_fn: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
               range_fn: Callable[[torch.Tensor], tuple[float, float]] | None = None, fold_bn: bool = True,
               progress: bool = False) -> PTQModel:
    """Static PTQ driven by plain functions (the lab's experiment plugs in the student's):

    - weights: symmetric per-channel, scale = ``weight_scale_fn(w, w_bits)`` (signature and shape of
      ``per_channel_qparams``; default lowbit's), values ``linear_dequantize(linear_quantize(w, scale, 0,
      w_bits), scale, 0)``;
    - activations (input and after every ReLU): unsigned affine at ``a_bits`` over
      ``range_fn(all calibration values at that point)`` → (lo, hi) (default min-max), calibrated in one
      pass over ``calib_images`` [N, C, H, W] (in batches of 256; each function sees the whole set).

    BatchNorm is folded into the convolutions first (``fold_bn``), as deployment would. ``model`` is unchanged.
    """
    from lowbit.models import fold_batchnorm
    from lowbit.quant.calibration import minmax
    from lowbit.quant.granularity import per_channel_qparams

    scale_fn = weight_scale_fn or per_channel_qparams
    w_bits = check_bits(w_bits, low=2, name="w_bits")

    def weight_fn(w: torch.Tensor) -> torch.Tensor:
        scale = scale_fn(w, w_bits)
        return linear_dequantize(linear_quantize(w, scale, 0, w_bits), scale, 0)

    source = fold_batchnorm(model) if fold_bn else model
    ranges = range_fn or minmax
    return ptq(source, calib_images, w_bits, a_bits, observer=lambda: RangeFunctionObserver(ranges),
               weight_fn=weight_fn, progress=progress)


# ------------------------------------------------------------------------------ the Lab 1 experiments
#: The calibrators Lab 1's static-PTQ experiment compares (and its reference table reports), in order.
CALIBRATORS = ("min-max", "EMA (m=0.1)", "percentile 99.99", "MSE", "KL (512 bins)")
#: The weight-quantization schemes of Lab 1's granularity experiment, in order.
WEIGHT_SCHEMES = ("per-tensor", "per-channel", "per-group (16)", "two-level (16, 4-bit scales)")


def calibrators(a_bits: int, ema_minmax: Callable | None = None, mse_clip_range: Callable | None = None,
                kl_clip_threshold: Callable | None = None, sample_size: int = 2 ** 16,
                kl_bins: int = 512) -> dict[str, Callable[[torch.Tensor], tuple[float, float]]]:
    """Range functions ``x [N, ...] -> (lo, hi)`` by name (``CALIBRATORS``), as ``static_ptq(range_fn=...)``
    takes them: min-max; EMA of min/max (momentum 0.1) over batches of 32; the 99.99th percentile; the
    MSE-optimal clip at ``a_bits`` on a strided sample of ``sample_size`` values; TensorRT's KL threshold on
    a ``kl_bins``-bin histogram of |x|. ``ema_minmax`` / ``mse_clip_range`` / ``kl_clip_threshold`` default
    to lowbit's (``lowbit.quant.calibration``; Lab 1 passes the student's). The network input (normalized
    pixels, signed) always keeps its exact min-max range: the calibrator under study sets the range of every
    ReLU output."""
    from lowbit.quant import calibration as ref

    ema = ema_minmax or ref.ema_minmax
    mse = mse_clip_range or ref.mse_clip_range
    kl = kl_clip_threshold or ref.kl_clip_threshold
    functions = {
        "min-max": lambda x: (min(x.min().item(), 0.0), x.max().item()),
        "EMA (m=0.1)": lambda x: ema(x.split(32), momentum=0.1),
        "percentile 99.99": lambda x: ref.percentile_range(x, 99.99),
        "MSE": lambda x: mse(ref.strided_subsample(x, sample_size), a_bits),
        "KL (512 bins)": lambda x: (0.0, kl(*ref.abs_histogram(x, kl_bins), a_bits)),
    }

    def on_relu_outputs(range_fn: Callable) -> Callable:
        return lambda x: (x.min().item(), x.max().item()) if x.min() < 0 else range_fn(x)

    return {name: on_relu_outputs(fn) for name, fn in functions.items()}


def weight_schemes(symmetric_qparams: Callable | None = None, per_channel_qparams: Callable | None = None,
                   fake_quantize_per_group: Callable | None = None, linear_quantize: Callable | None = None,
                   linear_dequantize: Callable | None = None) -> dict[str, Callable[[torch.Tensor, int], torch.Tensor]]:
    """Weight fake-quantizers ``(w, bits) -> w_hat`` by name (``WEIGHT_SCHEMES``), built from the given Lab 1
    functions (default lowbit's): symmetric per tensor and per channel (``symmetric_qparams`` /
    ``per_channel_qparams``, then ``linear_quantize`` / ``linear_dequantize``), per group of 16
    (``fake_quantize_per_group``) and two-level (lowbit's ``fake_quantize_two_level``, 4-bit scales per 16)."""
    from lowbit.quant import granularity, linear

    symmetric = symmetric_qparams or linear.symmetric_qparams
    per_channel = per_channel_qparams or granularity.per_channel_qparams
    per_group = fake_quantize_per_group or granularity.fake_quantize_per_group
    quantize = linear_quantize or linear.linear_quantize
    dequantize = linear_dequantize or linear.linear_dequantize

    def symmetric_per_tensor(w: torch.Tensor, bits: int) -> torch.Tensor:
        scale = symmetric(w.abs().max().item(), bits)
        return dequantize(quantize(w, scale, 0, bits), scale, 0)

    def symmetric_per_channel(w: torch.Tensor, bits: int) -> torch.Tensor:
        scale = per_channel(w, bits, axis=0)
        return dequantize(quantize(w, scale, 0, bits), scale, 0)

    return {"per-tensor": symmetric_per_tensor, "per-channel": symmetric_per_channel,
            "per-group (16)": lambda w, bits: per_group(w, bits, 16)[0],
            "two-level (16, 4-bit scales)": lambda w, bits: granularity.fake_quantize_two_level(w, bits, 16, 4)[0]}


def weight_only(model: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor], fold_bn: bool = True) -> nn.Module:
    """``map_weights`` of the BatchNorm-folded model (``fold_bn``, as deployed and as ``static_ptq`` and
    ``integer.integerize`` see it): weights quantized by ``fn``, activations float. ``model`` is unchanged.

    Folding first matters: BatchNorm scales each output channel by γ/σ, so the folded weights' channel
    ranges differ far more than the raw ones and one scale per tensor loses far more."""
    from lowbit.models import fold_batchnorm

    return map_weights(fold_batchnorm(model) if fold_bn else model, fn)
