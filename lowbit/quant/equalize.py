"""Cross-layer equalization (CLE): rescale consecutive layers so their per-channel weight ranges match.

Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and Bias Correction" (ICCV), §4.1.
For two layers with a positively homogeneous function f between them (ReLU, max pooling: f(x / s) = f(x) / s
for s > 0), dividing output channel i of the first layer (its weights and bias) by s_i and multiplying input
channel i of the second by s_i leaves the pair's function unchanged. With r1_i = max |w1[i]| and
r2_i = max |w2[:, i]|, the choice s_i = √(r1_i · r2_i) / r2_i gives both rescaled channels the range
√(r1_i · r2_i), so one scale per tensor fits every channel far better (after BatchNorm folding the ranges of
the first layer's channels differ by orders of magnitude).

- ``equalization_scales(w1, w2)`` → s ``[C]`` float32; ``equalize_pair(w1, b1, w2, scales=None)`` →
  ``(w1 / s, b1 / s, w2 · s)`` (the graded functions of Lab 5);
- ``equalize_model(model, functions=None)``: a copy of a BatchNorm-folded chain of layers (the course CNN:
  conv1 → conv2 → conv3 → fc) with every consecutive pair equalized, sweeping until the scales settle.

Shapes: a layer's weight is ``[C_out, C_in, ...]`` (Linear ``[C_out, C_in]``, Conv2d ``[C_out, C_in, kh, kw]``);
the pair's shared channels are axis 0 of ``w1`` and axis 1 of ``w2``. A conv followed by flatten + linear:
reshape the linear weight ``[D, C·h·w]`` to ``[D, C, h·w]`` (flatten keeps each channel's h·w values together).
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from lowbit.quant.graded import LAB5_REFERENCES, check_functions, resolve_function
from lowbit.quant.modules import quantizable_layers
from lowbit.quant.validate import check_float_tensor, check_positive_int

__all__ = ["equalization_scales", "equalize_pair", "equalize_model", "channel_ranges", "layer_chain",
           "check_folded", "MAX_SWEEPS", "TOLERANCE", "SCALES_ATTRIBUTE"]

#: ``equalize_model`` repeats its sweep over the pairs until every scale of a sweep is within ``TOLERANCE`` of 1
#: (a middle layer belongs to two pairs, so equalizing one disturbs the other), at most ``MAX_SWEEPS`` times.
MAX_SWEEPS = 50
TOLERANCE = 1e-4
#: ``equalize_model`` records on the model it returns, under this attribute, ``{layer name: s}``: the product
#: of the scales that divided each layer's output channels (``correct_biases`` rescales BN statistics by it).
SCALES_ATTRIBUTE = "equalization_scales"


def _weight(w: object, name: str, min_dims: int) -> Tensor:
    w = check_float_tensor(w, name, nonempty=True, finite=True)
    if w.ndim < min_dims:
        raise ValueError(f"{name} must have at least {min_dims} dims ([C_out, C_in, ...]), got shape {tuple(w.shape)}")
    return w.detach()


def channel_ranges(w: Tensor, axis: int) -> Tensor:
    """max |w| over every axis but ``axis`` → float32 ``[w.shape[axis]]`` (a channel's weight range)."""
    moved = w.detach().to(torch.float32).abs().movedim(axis, 0)
    return moved.reshape(moved.shape[0], -1).amax(dim=1)


def _pair_shapes(w1: Tensor, w2: Tensor) -> int:
    channels = w1.shape[0]
    if w2.shape[1] != channels:
        raise ValueError(f"w1 has {channels} output channels (axis 0) but w2 has {w2.shape[1]} input channels "
                         f"(axis 1), shapes {tuple(w1.shape)} and {tuple(w2.shape)}; for a conv followed by "
                         f"flatten + linear, reshape the linear weight [D, C*h*w] to [D, C, h*w]")
    return channels


def equalization_scales(w1: Tensor, w2: Tensor) -> Tensor:
    """CLE's scales for the pair (w1 then w2), Nagel et al. 2019, eq. 10.

    Args:
        w1: float ``[C, ...]``, the first layer's weight (output channel i = ``w1[i]``).
        w2: float ``[D, C, ...]``, the second layer's weight (input channel i = ``w2[:, i]``).
    Returns:
        float32 ``[C]``: s_i = √(r1_i · r2_i) / r2_i with r1_i = max |w1[i]|, r2_i = max |w2[:, i]|; s_i = 1
        where either range is 0 (nothing to balance: a dead channel stays as it is).
    Raises TypeError for non-float tensors, ValueError for empty / non-finite weights or mismatched channels.
    """
    w1, w2 = _weight(w1, "w1", 1), _weight(w2, "w2", 2)
    _pair_shapes(w1, w2)
    r1, r2 = channel_ranges(w1, 0), channel_ranges(w2, 1)
    both = (r1 > 0) & (r2 > 0)
    safe_r2 = torch.where(both, r2, torch.ones_like(r2))
    return torch.where(both, torch.sqrt(r1 * r2) / safe_r2, torch.ones_like(r1))


def _channel_view(s: Tensor, ndim: int, axis: int) -> Tensor:
    shape = [1] * ndim
    shape[axis] = -1
    return s.reshape(shape)


def equalize_pair(w1: Tensor, b1: Tensor | None, w2: Tensor, scales: Tensor | None = None
                  ) -> tuple[Tensor, Tensor | None, Tensor]:
    """Equalize one pair: ``(w1 / s, b1 / s, w2 · s)``, the pair's function unchanged across a ReLU.

    Args:
        w1: float ``[C, ...]``; b1: float ``[C]`` or None; w2: float ``[D, C, ...]``.
        scales: float ``[C]``, finite and > 0; None → ``equalization_scales(w1, w2)``.
    Returns:
        ``w1'`` (w1 divided by s_i along axis 0), ``b1'`` (b1 / s, or None), ``w2'`` (w2 multiplied by s_i
        along axis 1), each computed in float32 and returned in its input's dtype and shape.
    """
    w1, w2 = _weight(w1, "w1", 1), _weight(w2, "w2", 2)
    channels = _pair_shapes(w1, w2)
    if b1 is not None:
        b1 = check_float_tensor(b1, "b1").detach()
        if tuple(b1.shape) != (channels,):
            raise ValueError(f"b1 must have shape [{channels}] (one bias per output channel of w1), got "
                             f"{tuple(b1.shape)}")
    if scales is None:
        s = equalization_scales(w1, w2)
    else:
        s = check_float_tensor(scales, "scales", finite=True).detach().to(torch.float32)
        if tuple(s.shape) != (channels,):
            raise ValueError(f"scales must have shape [{channels}] (one per shared channel), got {tuple(s.shape)}")
        if not bool((s > 0).all()):
            raise ValueError(f"scales must be > 0 everywhere (ReLU(x / s) = ReLU(x) / s only for s > 0), got min "
                             f"{float(s.min())}")
    w1_new = (w1.to(torch.float32) / _channel_view(s, w1.ndim, 0)).to(w1.dtype)
    b1_new = None if b1 is None else (b1.to(torch.float32) / s).to(b1.dtype)
    w2_new = (w2.to(torch.float32) * _channel_view(s, w2.ndim, 1)).to(w2.dtype)
    return w1_new, b1_new, w2_new


# ------------------------------------------------------------------------------------------ the pipeline
def check_folded(model: nn.Module, what: str) -> None:
    """ValueError unless ``model`` has no BatchNorm left (``lowbit.models.fold_batchnorm`` first): rescaling a
    conv's output channels in front of a BatchNorm would be undone by it."""
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ValueError(f"{what} needs a BatchNorm-folded model: fold it first with "
                         f"lowbit.models.fold_batchnorm(model)")


def layer_chain(model: nn.Module) -> dict[str, nn.Module]:
    """The quantizable layers of ``model`` in module order (``quantizable_layers``), read as a chain: each
    layer's input is the previous one's output after positively homogeneous operations only (ReLU, max
    pooling, flatten), as in the course CNN (conv1 → conv2 → conv3 → fc). Conv layers must have groups = 1."""
    layers = quantizable_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Conv / Linear layer")
    for name, layer in layers.items():
        if getattr(layer, "groups", 1) != 1:
            raise ValueError(f"layer {name!r} is a grouped conv (groups={layer.groups}); only groups=1 is supported")
    return layers


def _second_weight(first: nn.Module, second: nn.Module, names: tuple[str, str]) -> Tensor:
    """The second layer's weight with its input channels on axis 1 matching the first's outputs (a linear
    layer after flatten: ``[D, C·h·w]`` → ``[D, C, h·w]``)."""
    channels, w2 = first.weight.shape[0], second.weight.detach()
    if w2.shape[1] == channels:
        return w2
    if w2.ndim == 2 and w2.shape[1] % channels == 0:
        return w2.reshape(w2.shape[0], channels, -1)
    raise ValueError(f"{names[1]!r} takes {w2.shape[1]} inputs, not a multiple of the {channels} output channels of "
                     f"{names[0]!r}: the layers do not form a chain")


def equalize_model(model: nn.Module, functions: Mapping[str, Callable] | None = None,
                   max_sweeps: int = MAX_SWEEPS, tolerance: float = TOLERANCE) -> nn.Module:
    """Cross-layer equalization of every consecutive pair of a BatchNorm-folded chain (``layer_chain``).

    Each sweep equalizes the pairs in order (layer k → k + 1) with ``equalize_pair(w1, b1, w2,
    equalization_scales(w1, w2))``; a middle layer belongs to two pairs, so the sweep repeats until every
    scale is within ``tolerance`` of 1 or ``max_sweeps`` sweeps ran (Nagel et al. 2019 iterate the same way).
    The returned copy computes the same function (up to float rounding) and records, as the attribute
    ``equalization_scales`` (``SCALES_ATTRIBUTE``), each layer's total scale ``{name: float32 [C_out]}`` (its
    output channels were divided by it). ``functions``: the student's ``equalization_scales`` /
    ``equalize_pair`` (any Lab 5 name, ``lowbit.quant.graded``); missing → the references. ``model`` is
    unchanged.
    """
    check_folded(model, "equalize_model")
    chosen = check_functions(functions, LAB5_REFERENCES)
    scales_fn = resolve_function(chosen, "equalization_scales", LAB5_REFERENCES)
    pair_fn = resolve_function(chosen, "equalize_pair", LAB5_REFERENCES)
    max_sweeps = check_positive_int(max_sweeps, "max_sweeps")
    equalized = copy.deepcopy(model).eval()
    layers = layer_chain(equalized)
    names = list(layers)
    totals = {name: torch.ones(layer.weight.shape[0]) for name, layer in layers.items()}
    with torch.no_grad():
        for _ in range(max_sweeps):
            largest = 0.0
            for first_name, second_name in zip(names, names[1:]):
                first, second = layers[first_name], layers[second_name]
                w1, w2 = first.weight.detach(), _second_weight(first, second, (first_name, second_name))
                b1 = None if first.bias is None else first.bias.detach()
                s = torch.as_tensor(scales_fn(w1, w2), dtype=torch.float32)
                w1_new, b1_new, w2_new = pair_fn(w1, b1, w2, s)
                first.weight.copy_(w1_new)
                if b1 is not None:
                    first.bias.copy_(b1_new)
                second.weight.copy_(w2_new.reshape(second.weight.shape))
                totals[first_name] = totals[first_name] * s
                largest = max(largest, float((s - 1).abs().max()))
            if largest < tolerance:
                break
    setattr(equalized, SCALES_ATTRIBUTE, totals)
    return equalized
