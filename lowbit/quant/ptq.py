"""Post-training quantization (PTQ) helpers for the lab experiments. Input models are never modified.

- ``quantize_weights``: a copy of the model whose Conv2d/Linear weights are fake-quantized (symmetric,
  restricted, signed) per tensor, per output channel or per group, with min-max or MSE-optimal clipping.
  Biases stay float32.
- ``ptq``: static PTQ — weights as above, plus activation fake-quant (unsigned affine, one scale and zero
  point per tensor, as ``lowbit.quant.integer``) on the network input and after every ``nn.ReLU`` module,
  with ranges from an observer run over calibration data.
"""
from __future__ import annotations

import copy
from typing import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from lowbit.quant.calibration import OBSERVERS, Observer, _SampleObserver, make_observer
from lowbit.quant.granularity import _as_groups, _from_groups, _symmetric_fake_quantize
from lowbit.quant.linear import _check_bits, fake_quantize, linear_dequantize, linear_quantize, symmetric_qparams

__all__ = ["GRANULARITIES", "CLIPS", "mse_symmetric_scale", "fake_quantize_weight", "quantize_weights",
           "map_weights", "collect_activations", "ActivationFakeQuant", "PTQModel", "RangeFunctionObserver", "ptq",
           "static_ptq"]

GRANULARITIES = ("tensor", "channel", "group")
CLIPS = ("minmax", "mse")


def mse_symmetric_scale(rows: torch.Tensor, bits: int, num_candidates: int = 100) -> torch.Tensor:
    """Per-row symmetric scale α·max|row| / (2^(b-1) - 1) with α ∈ {k / num_candidates} minimizing the
    row's fake-quant squared error. rows: float32 [R, L] → scales float32 [R, 1]. Ties go to the largest α.
    Vectorized over candidates and rows (candidates in chunks to bound memory)."""
    abs_max = rows.abs().amax(dim=1, keepdim=True)                            # [R, 1]
    alphas = torch.arange(num_candidates, 0, -1, dtype=torch.float32) / num_candidates
    chunk = max(1, 2 ** 24 // max(rows.numel(), 1))
    errors = []
    for part in alphas.split(chunk):
        scales = symmetric_qparams(part.reshape(-1, 1, 1) * abs_max, bits)  # [A, R, 1]
        errors.append((_symmetric_fake_quantize(rows, scales, bits) - rows).pow(2).sum(dim=2))   # [A, R]
    best = torch.cat(errors).argmin(dim=0)                                   # [R]
    return symmetric_qparams(alphas[best].reshape(-1, 1) * abs_max, bits)


def fake_quantize_weight(weight: torch.Tensor, bits: int, granularity: str = "channel", group_size: int = 32,
                         clip: str = "minmax") -> torch.Tensor:
    """Symmetric restricted fake-quant of one weight tensor [out, ...] → float32 of the same shape.

    granularity: "tensor" (one scale), "channel" (one per output channel, axis 0) or "group" (``group_size``
    consecutive elements of each flattened output row, as ``fake_quantize_per_group``);
    clip: "minmax" (scale from max|w|) or "mse" (``mse_symmetric_scale`` per scale group).
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if clip not in CLIPS:
        raise ValueError(f"clip must be one of {CLIPS}, got {clip!r}")
    bits = _check_bits(bits, low=2)
    w = weight.detach().to(torch.float32)
    if granularity == "group":
        groups, length = _as_groups(w, group_size)
        rows = groups.reshape(-1, group_size)
    else:
        rows = w.reshape(1, -1) if granularity == "tensor" else w.reshape(w.shape[0], -1)
    if clip == "mse":
        scale = mse_symmetric_scale(rows, bits)
    else:
        scale = symmetric_qparams(rows.abs().amax(dim=1, keepdim=True), bits)
    rows_hat = _symmetric_fake_quantize(rows, scale, bits)
    if granularity == "group":
        return _from_groups(rows_hat.reshape(groups.shape), length, w)
    return rows_hat.reshape(w.shape)


def quantize_weights(model: nn.Module, bits: int, granularity: str = "channel", group_size: int = 32,
                     clip: str = "minmax") -> nn.Module:
    """A deep copy of ``model`` with every Conv2d / Linear weight fake-quantized (``fake_quantize_weight``).
    Biases, BatchNorm parameters and ``model`` itself are unchanged."""
    quantized = copy.deepcopy(model)
    with torch.no_grad():
        for module in quantized.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.copy_(fake_quantize_weight(module.weight, bits, granularity, group_size, clip))
    return quantized


def map_weights(model: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]) -> nn.Module:
    """A deep copy of ``model`` with every Conv2d / Linear weight replaced by ``fn(weight)`` (e.g. a
    fake-quantizer built from the student's functions). ``fn`` gets a detached copy and must return a float
    tensor of the same shape. ``model`` is not modified."""
    mapped = copy.deepcopy(model)
    with torch.no_grad():
        for name, module in mapped.named_modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                new = fn(module.weight.detach().clone())
                if not isinstance(new, torch.Tensor) or new.shape != module.weight.shape:
                    got = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
                    raise ValueError(f"map_weights: fn returned {got} for {name}.weight of shape "
                                     f"{tuple(module.weight.shape)}; it must return a tensor of the same shape")
                module.weight.copy_(new.to(module.weight.dtype))
    return mapped


@torch.no_grad()
def collect_activations(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """The input of every Conv2d / Linear layer over ``images`` [N, C, H, W]: name → float32 tensor
    [N, ...] (e.g. ``"conv2"`` → [N, 32, 14, 14] for FashionCNN). Runs in eval mode; ``model`` is unchanged."""
    if not isinstance(images, torch.Tensor) or images.numel() == 0:
        raise ValueError("images must be a non-empty tensor [N, C, H, W]")
    collected: dict[str, list[torch.Tensor]] = {}

    def record(name: str):
        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            collected.setdefault(name, []).append(inputs[0].detach().to(torch.float32).clone())
        return hook

    handles = [module.register_forward_pre_hook(record(name)) for name, module in model.named_modules()
               if isinstance(module, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        for batch in images.split(batch_size):
            model(batch)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return {name: torch.cat(parts) for name, parts in collected.items()}


class ActivationFakeQuant(nn.Module):
    """Observes its input while ``calibrating``; afterwards fake-quantizes it (unsigned affine, ``bits``)."""

    def __init__(self, observer: Observer, bits: int) -> None:
        super().__init__()
        self.observer, self.bits = observer, bits
        self.calibrating = True
        self.scale: float | None = None
        self.zero_point: int | None = None

    def freeze(self) -> None:
        self.scale, self.zero_point = self.observer.qparams(self.bits, signed=False)
        self.calibrating = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            self.observer.update(x.detach())
            return x
        return fake_quantize(x, self.scale, self.zero_point, self.bits, signed=False).to(x.dtype)

    def extra_repr(self) -> str:
        state = "calibrating" if self.calibrating else f"scale={self.scale:.4g}, zero_point={self.zero_point}"
        return f"bits={self.bits}, observer={type(self.observer).__name__}, {state}"


class PTQModel(nn.Module):
    """``model`` with fake-quantized input: forward(x) = model(input_quant(x))."""

    def __init__(self, model: nn.Module, input_quant: nn.Module) -> None:
        super().__init__()
        self.input_quant, self.model = input_quant, model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.input_quant(x))

    def activation_quantizers(self) -> list[ActivationFakeQuant]:
        return [m for m in self.modules() if isinstance(m, ActivationFakeQuant)]


class RangeFunctionObserver(_SampleObserver):
    """Keeps every observed value and returns ``range_fn(all values)`` — for calibrators written as plain
    functions x → (lo, hi) (e.g. a student's ``mse_clip_range`` with the bits fixed)."""

    name = "function"

    def __init__(self, range_fn: Callable[[torch.Tensor], tuple[float, float]]) -> None:
        super().__init__(max_per_batch=2 ** 62)
        self.range_fn = range_fn

    def _range(self) -> tuple[float, float]:
        lo, hi = self.range_fn(self.values())
        return float(lo), float(hi)


def _insert_after_relus(model: nn.Module, make_quantizer) -> int:
    """Replace every nn.ReLU child (at any depth) by nn.Sequential(ReLU, quantizer); returns the count."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(parent, name, nn.Sequential(child, make_quantizer()))
                count += 1
    return count


def _image_batches(data: torch.Tensor | Iterable, batch_size: int = 256) -> list[torch.Tensor]:
    if isinstance(data, torch.Tensor):
        if data.numel() == 0:
            raise ValueError("the calibration tensor is empty")
        return list(data.split(batch_size))
    batches = [batch[0] if isinstance(batch, (tuple, list)) else batch for batch in data]
    if not batches:
        raise ValueError("the calibration loader yielded no batches")
    return batches


@torch.no_grad()
def ptq(model: nn.Module, calib: torch.Tensor | Iterable, w_bits: int | None = 8, a_bits: int | None = 8,
        observer: str | Callable[[], Observer] = "minmax", granularity: str = "channel", group_size: int = 32,
        clip: str = "minmax", max_batches: int | None = None, progress: bool = True,
        weight_fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> PTQModel:
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
        max_batches: use only the first calibration batches. progress: show a tqdm bar.

    Weights are fake-quantized first, so activation ranges are calibrated on the quantized-weight network.
    Activations are quantized on the input and after every ``nn.ReLU`` module (functional ReLUs inside a
    forward() are not seen).
    """
    if isinstance(observer, str) and observer not in OBSERVERS:
        raise ValueError(f"unknown observer {observer!r}; choose one of {', '.join(OBSERVERS)}")
    if weight_fn is not None:
        quantized = map_weights(model, weight_fn)
    elif w_bits is not None:
        quantized = quantize_weights(model, w_bits, granularity, group_size, clip)
    else:
        quantized = copy.deepcopy(model)
    if a_bits is None:
        return PTQModel(quantized, nn.Identity()).eval()
    a_bits = _check_bits(a_bits, low=2, high=16)
    new_observer = (lambda: make_observer(observer, a_bits)) if isinstance(observer, str) else observer
    make = lambda: ActivationFakeQuant(new_observer(), a_bits)   # noqa: E731
    _insert_after_relus(quantized, make)
    wrapped = PTQModel(quantized, make()).eval()
    batches = _image_batches(calib)[:max_batches]
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
    w_bits = _check_bits(w_bits, low=2)

    def weight_fn(w: torch.Tensor) -> torch.Tensor:
        scale = scale_fn(w, w_bits)
        return linear_dequantize(linear_quantize(w, scale, 0, w_bits), scale, 0)

    source = fold_batchnorm(model) if fold_bn else model
    ranges = range_fn or minmax
    return ptq(source, calib_images, w_bits, a_bits, observer=lambda: RangeFunctionObserver(ranges),
               weight_fn=weight_fn, progress=progress)
