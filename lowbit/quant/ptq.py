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
from typing import Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from lowbit.quant.calibration import OBSERVERS, Observer, make_observer
from lowbit.quant.granularity import _as_groups, _from_groups, _symmetric_fake_quantize
from lowbit.quant.linear import _check_bits, fake_quantize, symmetric_qparams

__all__ = ["GRANULARITIES", "CLIPS", "mse_symmetric_scale", "fake_quantize_weight", "quantize_weights",
           "ActivationFakeQuant", "PTQModel", "ptq"]

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
        observer: str = "minmax", granularity: str = "channel", group_size: int = 32, clip: str = "minmax",
        max_batches: int | None = None, progress: bool = True) -> PTQModel:
    """Static post-training quantization → a fake-quant ``PTQModel`` (eval mode); ``model`` is untouched.

    Args:
        model: float model (fold BatchNorm first for realistic results: ``lowbit.models.fold_batchnorm``).
        calib: images float32 [N, C, H, W] (split into batches of 256) or a loader yielding images or
            (images, labels).
        w_bits / a_bits: weight / activation bits, or None to leave them in float.
        observer: "minmax", "ema", "percentile", "mse" or "kl" (``lowbit.quant.calibration``), for activations.
        granularity, group_size, clip: for the weights (``quantize_weights``).
        max_batches: use only the first calibration batches. progress: show a tqdm bar.

    Weights are fake-quantized first, so activation ranges are calibrated on the quantized-weight network.
    Activations are quantized on the input and after every ``nn.ReLU`` module (functional ReLUs inside a
    forward() are not seen).
    """
    if observer not in OBSERVERS:
        raise ValueError(f"unknown observer {observer!r}; choose one of {', '.join(OBSERVERS)}")
    quantized = quantize_weights(model, w_bits, granularity, group_size, clip) if w_bits is not None \
        else copy.deepcopy(model)
    if a_bits is None:
        return PTQModel(quantized, nn.Identity()).eval()
    a_bits = _check_bits(a_bits, low=2, high=16)
    make = lambda: ActivationFakeQuant(make_observer(observer, a_bits), a_bits)   # noqa: E731
    _insert_after_relus(quantized, make)
    wrapped = PTQModel(quantized, make()).eval()
    batches = _image_batches(calib)[:max_batches]
    for images in tqdm(batches, desc=f"calibrating ({observer})", disable=not progress, leave=False):
        wrapped(images)
    for quantizer in wrapped.activation_quantizers():
        quantizer.freeze()
    return wrapped
