"""Where quantization applies: which layers, with which settings, and the modules that carry quantizers.

- ``quantizable_layers(model, include, exclude)`` — the one answer to "which layers are quantizable":
  every ``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Linear`` not already quantized (``include`` may name any module
  with a weight, e.g. an embedding).
- ``Policy`` — per-layer settings (weight bits, activation bits, method, granularity, free-form options) from a
  default plus rules keyed by layer name (exact or glob, ``"features.*"``) or module type, with include /
  exclude lists. ``policy.resolve(model)`` → ``{layer name: LayerConfig}``. A mixed-precision assignment is a
  policy with one rule per layer.
- ``swap_modules(model, policy, make)`` — a copy of ``model`` where each layer the policy selects is replaced
  by ``make(name, layer, config)``; PTQ (``lowbit.quant.ptq``), QAT (``qat.prepare_qat``) and k-means
  (``kmeans.quantize_model_kmeans``) are such policies.
- ``QuantConv1d`` / ``QuantConv2d`` / ``QuantLinear`` — the one quantized-module wrapper: the float layer whose
  forward uses ``weight_quantizer(weight)`` (any module, e.g. a ``Quantizer``); ``quantized(layer, q)`` builds
  one, ``dequantized(layer)`` bakes the quantized weight back into a plain layer.
- ``insert_after(model, nn.ReLU, make)`` — "a quantizer after every ReLU".
- ``capture(model, images)`` — each layer's inputs **and** outputs on a calibration set (AdaRound and bias
  correction need both).
"""
from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Mapping, NamedTuple, Sequence, Union

import torch
from torch import Tensor, nn

__all__ = ["QUANTIZABLE", "quantizable_layers", "LayerConfig", "Policy", "swap_modules", "replace_children",
           "QuantConv1d", "QuantConv2d", "QuantLinear", "quantized", "dequantized", "insert_after", "Captured",
           "capture", "image_batches"]

#: Layer types quantized by default.
QUANTIZABLE: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Linear)


def _has_weight(module: nn.Module) -> bool:
    return isinstance(getattr(module, "weight", None), Tensor)


def _is_quantized(module: nn.Module) -> bool:
    return "weight_quantizer" in module._modules


def quantizable_layers(model: nn.Module, include: Iterable[str] | None = None, exclude: Iterable[str] = (),
                       exclude_label: str = "exclude") -> dict[str, nn.Module]:
    """Layers to quantize, by name, in module order.

    ``include=None``: every ``QUANTIZABLE`` layer not already quantized; else exactly the named modules, each
    of which must have a ``weight`` tensor. ``exclude``: names left out (each must be a module of ``model``;
    ``exclude_label`` names the argument in the error). Raises ValueError naming the layers that do exist.
    """
    modules = dict(model.named_modules())
    with_weights = [name for name, m in modules.items() if name and _has_weight(m)]
    if include is None:
        chosen = {name: m for name, m in modules.items() if isinstance(m, QUANTIZABLE) and not _is_quantized(m)}
    else:
        chosen = {}
        for name in include:
            module = modules.get(name)
            if module is None or not _has_weight(module):
                raise ValueError(f"layer {name!r} is not a module with a weight in this model; layers with "
                                 f"weights: {with_weights}")
            chosen[name] = module
    excluded = set(exclude)
    unknown = excluded - set(modules)
    if unknown:
        raise ValueError(f"{exclude_label} names {sorted(unknown)}, which are not modules of this model; "
                         f"layers with weights: {with_weights}")
    return {name: m for name, m in chosen.items() if name not in excluded}


# ---------------------------------------------------------------------------------------------- policy
@dataclass(frozen=True)
class LayerConfig:
    """What a policy says for one layer. ``None`` bits leave that tensor in float. ``method`` names the
    quantizer family ("linear", "lsq", "pact", "kmeans", ... — the caller of ``swap_modules`` interprets it);
    ``options`` carries method-specific settings (e.g. ``{"clip": "mse", "group_size": 16}``)."""

    w_bits: int | None = 8
    a_bits: int | None = None
    method: str = "linear"
    granularity: str = "channel"
    options: Mapping[str, object] = field(default_factory=dict)

    def merged(self, overrides: Mapping[str, object]) -> "LayerConfig":
        fields = dict(overrides)
        unknown = set(fields) - {"w_bits", "a_bits", "method", "granularity", "options"}
        if unknown:
            raise ValueError(f"policy rule sets unknown fields {sorted(unknown)}; a rule may set w_bits, a_bits, "
                             "method, granularity and options")
        if "options" in fields:
            fields["options"] = {**self.options, **fields["options"]}
        return replace(self, **fields)


Selector = Union[str, type]


class Policy:
    """Per-layer quantization settings.

    Args:
        default: the ``LayerConfig`` (or a dict of its fields) every selected layer starts from.
        rules: ``(selector, overrides)`` pairs applied in order, later ones winning; ``selector`` is a layer
            name, a glob over names (``"conv*"``) or a module type (``nn.Linear``); ``overrides`` a dict of
            ``LayerConfig`` fields, e.g. ``("fc", {"w_bits": 8})``. A mapping ``{selector: overrides}`` works too.
        include / exclude: layer names (see ``quantizable_layers``).
    """

    def __init__(self, default: LayerConfig | Mapping[str, object] | None = None,
                 rules: Sequence[tuple[Selector, Mapping[str, object]]] | Mapping[Selector, Mapping[str, object]] = (),
                 include: Iterable[str] | None = None, exclude: Iterable[str] = (),
                 exclude_label: str = "exclude") -> None:
        if default is None:
            default = LayerConfig()
        elif not isinstance(default, LayerConfig):
            default = LayerConfig().merged(default)
        self.default = default
        self.rules = list(rules.items()) if isinstance(rules, Mapping) else list(rules)
        for selector, overrides in self.rules:
            if not isinstance(selector, (str, type)):
                raise TypeError(f"a policy rule's selector must be a layer name, a glob or a module type, "
                                f"got {selector!r}")
            LayerConfig().merged(overrides)                    # reject unknown fields now, not per layer
        self.include = None if include is None else list(include)
        self.exclude = list(exclude)
        self.exclude_label = exclude_label

    @staticmethod
    def _matches(selector: Selector, name: str, module: nn.Module) -> bool:
        if isinstance(selector, type):
            return isinstance(module, selector)
        return name == selector or fnmatch.fnmatchcase(name, selector)

    def resolve(self, model: nn.Module) -> dict[str, LayerConfig]:
        """``{layer name: LayerConfig}`` for every selected layer of ``model``, in module order."""
        layers = quantizable_layers(model, self.include, self.exclude, self.exclude_label)
        resolved = {}
        for name, module in layers.items():
            config = self.default
            for selector, overrides in self.rules:
                if self._matches(selector, name, module):
                    config = config.merged(overrides)
            resolved[name] = config
        return resolved

    @classmethod
    def of(cls, policy: "Policy | None", **default: object) -> "Policy":
        """``policy`` itself, or a uniform policy with the given default fields."""
        return policy if policy is not None else cls(default)

    def __repr__(self) -> str:
        return f"Policy(default={self.default}, rules={self.rules}, include={self.include}, exclude={self.exclude})"


def replace_children(model: nn.Module, make: Callable[[str, nn.Module], nn.Module | None]) -> None:
    """In place: replace every module (at any depth) for which ``make(full name, module)`` returns a module."""
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}" if parent_name else name
            replacement = make(full, child)
            if replacement is not None:
                setattr(parent, name, replacement)


def swap_modules(model: nn.Module, policy: Policy, make: Callable[[str, nn.Module, LayerConfig], nn.Module | None],
                 inplace: bool = False) -> nn.Module:
    """A copy of ``model`` (or ``model`` itself with ``inplace``) where every layer ``policy`` selects is
    replaced by ``make(name, layer, config)`` (``None`` keeps it). Returns the new model."""
    target = model if inplace else copy.deepcopy(model)
    configs = policy.resolve(target)

    def swap(name: str, child: nn.Module) -> nn.Module | None:
        return make(name, child, configs[name]) if name in configs else None

    replace_children(target, swap)
    return target


# --------------------------------------------------------------------------------------------- wrappers
class _WeightQuantized:
    """Mixin: forward uses ``self.weight_quantizer(self.weight)``; ``weight`` stays the float latent weight
    (what an optimizer updates, as in ``torch.ao.nn.qat``)."""

    weight_quantizer: nn.Module

    def quantized_weight(self) -> Tensor:
        return self.weight_quantizer(self.weight)


class QuantConv1d(_WeightQuantized, nn.Conv1d):
    """``nn.Conv1d`` with a quantized weight in its forward pass."""

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.quantized_weight(), self.bias)


class QuantConv2d(_WeightQuantized, nn.Conv2d):
    """``nn.Conv2d`` with a quantized weight in its forward pass."""

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.quantized_weight(), self.bias)


class QuantLinear(_WeightQuantized, nn.Linear):
    """``nn.Linear`` with a quantized weight in its forward pass."""

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.quantized_weight(), self.bias)


_WRAPPERS = {nn.Conv1d: QuantConv1d, nn.Conv2d: QuantConv2d, nn.Linear: QuantLinear}


def _swap_class(module: nn.Module, new_class: type) -> nn.Module:
    """A copy of ``module`` as ``new_class`` (same parameters, buffers and settings; no hooks copied)."""
    swapped = new_class.__new__(new_class)
    swapped.__dict__ = copy.copy(module.__dict__)
    for store in ("_parameters", "_buffers", "_modules"):
        swapped.__dict__[store] = dict(module.__dict__[store])
    return swapped


def quantized(layer: nn.Module, weight_quantizer: nn.Module, wrapper: type | None = None) -> nn.Module:
    """``layer`` (Conv1d / Conv2d / Linear) as its ``Quant*`` wrapper sharing its parameters, quantizing its
    weight with ``weight_quantizer`` in every forward pass. ``wrapper``: a subclass of that wrapper to use
    instead (e.g. ``qat.QATConvBn2d``)."""
    base = next((b for b in _WRAPPERS if isinstance(layer, b)), None)
    if base is None:
        raise TypeError(f"no quantized wrapper for {type(layer).__name__}; supported: "
                        f"{', '.join(b.__name__ for b in _WRAPPERS)}")
    if wrapper is not None and not issubclass(wrapper, _WRAPPERS[base]):
        raise TypeError(f"wrapper {wrapper.__name__} is not a subclass of {_WRAPPERS[base].__name__}")
    swapped = _swap_class(layer, wrapper or _WRAPPERS[base])
    swapped.weight_quantizer = weight_quantizer
    return swapped


def dequantized(layer: nn.Module) -> nn.Module:
    """A plain float layer holding ``layer.quantized_weight()`` (the inverse of ``quantized``)."""
    with torch.no_grad():
        weight = layer.quantized_weight().detach().clone()
    base = next(b for b, w in _WRAPPERS.items() if isinstance(layer, w))
    plain = _swap_class(layer, base)
    del plain._modules["weight_quantizer"]
    plain.weight = nn.Parameter(weight)
    return plain


def insert_after(model: nn.Module, module_type: type[nn.Module], make: Callable[[], nn.Module]) -> int:
    """In place: every ``module_type`` child (at any depth) becomes ``nn.Sequential(child, make())``; returns
    how many. ``insert_after(model, nn.ReLU, lambda: quantizer)`` puts a quantizer after every ReLU module
    (functional ReLUs inside a forward() are not seen)."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, module_type):
                setattr(parent, name, nn.Sequential(child, make()))
                count += 1
    return count


# ---------------------------------------------------------------------------------------------- capture
class Captured(NamedTuple):
    """One layer's first input and its output over the calibration set, float32 ``[N, ...]`` (or None)."""

    inputs: Tensor | None
    outputs: Tensor | None


def image_batches(data: Tensor | Iterable, batch_size: int = 256) -> list[Tensor]:
    """Calibration data as a list of image batches: a tensor [N, ...] split in ``batch_size``, or a loader
    yielding images or (images, labels)."""
    if isinstance(data, Tensor):
        if data.numel() == 0:
            raise ValueError("the calibration tensor is empty")
        return list(data.split(batch_size))
    batches = [batch[0] if isinstance(batch, (tuple, list)) else batch for batch in data]
    if not batches:
        raise ValueError("the calibration loader yielded no batches")
    return batches


@torch.no_grad()
def capture(model: nn.Module, images: Tensor | Iterable, layers: Iterable[str] | None = None, inputs: bool = True,
            outputs: bool = True, batch_size: int = 256) -> dict[str, Captured]:
    """Each layer's inputs and outputs over ``images`` (a tensor [N, C, H, W] or a loader), eval mode.

    ``layers``: module names (default: ``quantizable_layers(model)``). Returns ``{name: Captured(inputs,
    outputs)}`` with float32 tensors concatenated over batches (``None`` for what was not asked). ``model``'s
    train/eval mode is restored and nothing else of it changes.
    """
    chosen = quantizable_layers(model, layers)
    seen_in: dict[str, list[Tensor]] = {name: [] for name in chosen}
    seen_out: dict[str, list[Tensor]] = {name: [] for name in chosen}

    def record(name: str):
        def hook(_module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            if inputs:
                seen_in[name].append(args[0].detach().to(torch.float32).clone())
            if outputs:
                seen_out[name].append(output.detach().to(torch.float32).clone())
        return hook

    batches = image_batches(images, batch_size)
    handles = [module.register_forward_hook(record(name)) for name, module in chosen.items()]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            model(batch)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return {name: Captured(torch.cat(seen_in[name]) if inputs and seen_in[name] else None,
                           torch.cat(seen_out[name]) if outputs and seen_out[name] else None) for name in chosen}
