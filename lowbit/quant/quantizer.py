"""One lifecycle for every tensor quantizer (weights and activations, PTQ and QAT).

As in ``torch.ao.quantization``, three roles are kept apart: an **observer** gathers statistics
(``lowbit.quant.calibration``), the **arithmetic** turns a scale and zero point into fake-quantized values
(``lowbit.quant.fakequant``), and a **quantizer** module — this file — owns the state in between and sits
where the tensor flows (``lowbit.quant.modules`` decides where).

Lifecycle of a ``Quantizer``::

    q = SomeQuantizer(bits, ...)         # parameters created here, with their final shape ...
    q.prepare(example)                   # ... or here, from an example tensor (per-channel shapes, data init)
    q.observe(); model(calibration)      # optional: statistics only, the input passes through unchanged
    q.freeze()                           # statistics -> qparams; from now on forward() fake-quantizes
    q.disable() / q.enable()             # identity while disabled (compare with the float model)

Learnable parameters (LSQ's step, PACT's alpha, LSQ+'s zero point, and later TTQ's two scales or
AdaRound's V) are ``nn.Parameter`` objects created in ``__init__`` or ``prepare`` and **never replaced**:
data-dependent initialisation writes their values in place, so an optimizer built at any time after
construction (``prepare`` for shapes that depend on the data) trains the very tensors forward() uses.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from lowbit.quant import fakequant
from lowbit.quant.calibration import Observer
from lowbit.quant.validate import check_bits, quantized_range

__all__ = ["Quantizer", "ObserverQuantizer", "quantizers"]


class Quantizer(nn.Module):
    """Base class: ``observing`` → frozen, ``enabled`` / disabled. Subclasses implement ``quantize(x)`` and, when
    they learn from statistics, ``_observe(x)`` and ``_freeze()``; data-dependent parameters go in ``prepare``."""

    def __init__(self, bits: int, signed: bool) -> None:
        super().__init__()
        self.bits, self.signed = check_bits(bits), bool(signed)
        self.enabled = True
        self.observing = False

    # lifecycle --------------------------------------------------------------------------------------
    def prepare(self, example: Tensor) -> "Quantizer":
        """Create or initialise data-dependent parameters from ``example`` (no-op by default); returns self."""
        return self

    def observe(self) -> "Quantizer":
        """Start collecting statistics: forward() records its input and returns it unchanged."""
        self.observing = True
        return self

    def freeze(self) -> "Quantizer":
        """Turn the statistics into quantization parameters and start fake-quantizing."""
        self._freeze()
        self.observing = False
        return self

    def enable(self, enabled: bool = True) -> "Quantizer":
        self.enabled = bool(enabled)
        return self

    def disable(self) -> "Quantizer":
        return self.enable(False)

    # subclass hooks ---------------------------------------------------------------------------------
    def _observe(self, x: Tensor) -> None:
        raise TypeError(f"{type(self).__name__} does not observe statistics; it needs no calibration")

    def _freeze(self) -> None:
        pass

    def quantize(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        if not self.enabled:
            return x
        if self.observing:
            self._observe(x.detach())
            return x
        return self.quantize(x)


class ObserverQuantizer(Quantizer):
    """Fake-quantizes with a scale and zero point an ``Observer`` measured (static PTQ of activations:
    unsigned affine by default). Starts observing; ``freeze()`` fixes ``scale`` / ``zero_point`` (Python
    numbers). ``rounding`` / ``gradient`` as in ``lowbit.quant.fakequant.fake_quantize``."""

    def __init__(self, observer: Observer, bits: int, signed: bool = False, rounding: fakequant.Rounding = "nearest",
                 gradient: str = "none") -> None:
        super().__init__(bits, signed)
        self.observer, self.rounding, self.gradient = observer, rounding, gradient
        self.scale: float | None = None
        self.zero_point: int | None = None
        self.observe()

    @property
    def calibrating(self) -> bool:
        """PTQ's name for ``observing``."""
        return self.observing

    def _observe(self, x: Tensor) -> None:
        self.observer.update(x)

    def _freeze(self) -> None:
        self.scale, self.zero_point = self.observer.qparams(self.bits, signed=self.signed)

    def quantize(self, x: Tensor) -> Tensor:
        if self.scale is None:
            raise RuntimeError(f"{type(self).__name__} has no qparams yet: run calibration data through it, "
                               "then call freeze()")
        q_min, q_max = quantized_range(self.bits, self.signed)
        scale = torch.tensor(self.scale, dtype=torch.float32, device=x.device)
        zero_point = torch.tensor(self.zero_point, dtype=torch.int64, device=x.device)
        return fakequant.fake_quantize(x, scale, zero_point, q_min, q_max, self.rounding,
                                       self.gradient).to(x.dtype)

    def extra_repr(self) -> str:
        state = "observing" if self.observing else f"scale={self.scale:.4g}, zero_point={self.zero_point}"
        return f"bits={self.bits}, observer={type(self.observer).__name__}, {state}"


def quantizers(model: nn.Module) -> list[Quantizer]:
    """Every ``Quantizer`` in ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, Quantizer)]
