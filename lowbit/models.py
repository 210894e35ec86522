"""The course models and tools to inspect them.

- ``FashionCNN``: three conv–BN–ReLU–maxpool blocks and one linear classifier (61,674 parameters).
- ``TinyMLP``: 784 → 64 → 10, for fast unit tests.
- ``TinyViT``: a 6-block Vision Transformer on 7×7 patches (the capstone's); ``matmul_names`` lists its 38
  matrix products, ``matmul_multiplies`` counts their multiplications.
- ``pretrained(name)``: a shipped checkpoint in eval mode.
- ``model_size_bits``, ``layer_stats``: storage and compute counts. ``fold_batchnorm``: conv+BN → conv.

All models take images float32 ``[N, 1, 28, 28]`` (normalized as in ``lowbit.data``) and return logits
float32 ``[N, 10]``.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

__all__ = ["FashionCNN", "TinyMLP", "ARCHITECTURES", "CHECKPOINT_DIR", "pretrained", "model_size_bits",
           "layer_stats", "fold_batchnorm", "conv_bn_pairs"]

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
NUM_CLASSES = 10


class FashionCNN(nn.Module):
    """``[N, 1, 28, 28]`` → logits ``[N, 10]``.

    Blocks ``conv{i}`` (3×3, pad 1, no bias) → ``bn{i}`` → ``relu{i}`` → ``pool{i}`` (2×2) with channels
    1 → 32 → 64 → 64 and spatial size 28 → 14 → 7 → 3, then ``flatten`` and ``fc`` (576 → 10).
    """

    def __init__(self, channels: tuple[int, int, int] = (32, 64, 64), num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.conv1 = nn.Conv2d(1, c1, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(c2, c3, kernel_size=3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c3)
        self.relu3 = nn.ReLU()
        self.pool3 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c3 * 3 * 3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool2(self.relu2(self.bn2(self.conv2(x))))
        x = self.pool3(self.relu3(self.bn3(self.conv3(x))))
        return self.fc(self.flatten(x))


class TinyMLP(nn.Module):
    """``[N, 1, 28, 28]`` (or ``[N, 784]``) → logits ``[N, 10]`` through ``fc1`` (784 → hidden), ``relu``,
    ``fc2`` (hidden → 10)."""

    def __init__(self, hidden: int = 64, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(28 * 28, hidden)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(self.flatten(x))))


#: Names accepted by ``pretrained`` and ``python -m lowbit.train --model``.
ARCHITECTURES: dict[str, type[nn.Module]] = {"cnn": FashionCNN, "mlp": TinyMLP}


def pretrained(name: str = "cnn") -> nn.Module:
    """The shipped model ``name`` (``"cnn"``, ``"mlp"`` or ``"vit"``) with its trained weights, in eval mode.

    Loads ``lowbit/checkpoints/<name>.pt`` (a state_dict) with ``torch.load(..., weights_only=True)``.
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(ARCHITECTURES))}")
    path = CHECKPOINT_DIR / f"{name}.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} is missing. Train it with "
            f"`python -m lowbit.train --model {name} --source full --out {path}` (or reinstall lowbit)."
        )
    model = ARCHITECTURES[name]()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def _bits_for(param_name: str, bits: Mapping[str, int]) -> int:
    """Bits of one parameter: its own entry, else its module's (``"conv1"`` for ``"conv1.weight"``), else 32."""
    if param_name in bits:
        return bits[param_name]
    module_name = param_name.rpartition(".")[0]
    return bits.get(module_name, 32)


def _check_bits(value: object, where: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"bits for {where} must be a positive int, got {value!r}")


def model_size_bits(model: nn.Module, bits_per_param: int | Mapping[str, int] = 32) -> int:
    """Storage of ``model``'s parameters in bits (buffers such as BN running stats are not counted).

    ``bits_per_param`` is one int for every parameter, or a dict mapping parameter names (``"fc.weight"``)
    or module names (``"fc"``) to bits; a parameter entry wins over its module's; unnamed ones use 32.
    """
    names = dict(model.named_parameters())
    if isinstance(bits_per_param, Mapping):
        module_names = {name.rpartition(".")[0] for name in names}
        unknown = sorted(set(bits_per_param) - set(names) - module_names)
        if unknown:
            raise ValueError(f"bits_per_param names {unknown} match no parameter or module of the model; "
                             f"parameters are {sorted(names)}")
        for key, value in bits_per_param.items():
            _check_bits(value, repr(key))
        return sum(p.numel() * _bits_for(name, bits_per_param) for name, p in names.items())
    _check_bits(bits_per_param, "every parameter")
    return sum(p.numel() for p in names.values()) * bits_per_param


def _macs(module: nn.Module, output: torch.Tensor) -> int:
    """Multiply-accumulates of one sample through a Conv2d or Linear layer, given its output."""
    per_sample_outputs = output[0].numel()
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return per_sample_outputs * (module.in_channels // module.groups) * kh * kw
    return per_sample_outputs * module.in_features


def layer_stats(model: nn.Module, input_shape: tuple[int, ...] = (1, 1, 28, 28)) -> list[dict]:
    """One dict per ``Conv2d``/``Linear`` layer, in execution order, from a forward pass on zeros.

    Keys: ``name`` (module name), ``type`` (class name), ``params`` (weights + bias), ``macs``
    (multiply-accumulates per sample), ``input_shape`` and ``output_shape`` (per sample, without batch).
    The model's train/eval mode is restored afterwards.
    """
    stats: list[dict] = []

    def record(name: str):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            stats.append({"name": name, "type": type(module).__name__,
                          "params": sum(p.numel() for p in module.parameters(recurse=False)),
                          "macs": _macs(module, output), "input_shape": tuple(inputs[0].shape[1:]),
                          "output_shape": tuple(output.shape[1:])})
        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in model.named_modules()
               if isinstance(module, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    first = next(model.parameters(), None)
    dev = first.device if first is not None else torch.device("cpu")
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(input_shape, device=dev))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return stats


def _fold_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold ``bn``'s eval-mode affine map into ``conv`` in place: w' = w·γ/σ, b' = (b − μ)·γ/σ + β."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm2d without running statistics (track_running_stats=False)")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"BatchNorm2d has {bn.num_features} features but the conv has "
                         f"{conv.out_channels} output channels")
    from lowbit.quant.qat import fold_batchnorm as fold_weights     # the one folding formula

    with torch.no_grad():
        gamma = bn.weight if bn.affine else torch.ones_like(bn.running_var)
        beta = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
        weight, bias = fold_weights(conv.weight, conv.bias, gamma, beta, bn.running_mean, bn.running_var, bn.eps)
        conv.weight.copy_(weight)
        conv.bias = nn.Parameter(bias.to(conv.weight.dtype))


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with every BatchNorm2d folded into the Conv2d before it.

    A pair is a ``Conv2d`` followed directly by a ``BatchNorm2d`` among the children of one parent (the
    registration order, as in ``FashionCNN`` or an ``nn.Sequential``). The conv gains a bias and the BN is
    replaced by ``nn.Identity``, so module names stay the same. Eval-mode outputs equal the input
    model's up to float rounding. ``model`` itself is not modified.
    """
    folded = copy.deepcopy(model).eval()
    for parent, conv_name, bn_name in conv_bn_pairs(folded):
        _fold_into_conv(getattr(parent, conv_name), getattr(parent, bn_name))
        setattr(parent, bn_name, nn.Identity())
    return folded


def conv_bn_pairs(model: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """``(parent, conv child name, BN child name)`` for every ``Conv2d`` followed directly by a ``BatchNorm2d``
    among the children of one parent (registration order), in module order: the pairs BN folding merges."""
    pairs = []
    for parent in model.modules():
        children = list(parent.named_children())
        for (first_name, first), (second_name, second) in zip(children, children[1:]):
            if isinstance(first, nn.Conv2d) and isinstance(second, nn.BatchNorm2d):
                pairs.append((parent, first_name, second_name))
    return pairs


# ---------------------------------------------------------------- TinyViT (the capstone's transformer)
class MatMul(nn.Module):
    """A named matrix product ``a @ b`` (``torch.matmul``), so that a quantized-module swap can wrap it like a
    ``Linear``. ``a`` float32 ``[..., M, K]``, ``b`` float32 ``[..., K, N]`` → ``[..., M, N]`` (batch dims
    broadcast)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.matmul(a, b)


class ViTAttention(nn.Module):
    """Multi-head self-attention ``[N, T, D]`` → ``[N, T, D]`` with its four products as modules:
    ``qkv`` (one ``Linear`` D → 3D), ``qk`` (``MatMul``: Q ``[N, H, T, d]`` @ Kᵀ ``[N, H, d, T]``),
    ``av`` (``MatMul``: softmax ``[N, H, T, T]`` @ V ``[N, H, T, d]``) and ``proj`` (``Linear`` D → D).
    The 1/√d scaling is applied to QKᵀ's output and the softmax runs in float, outside the products."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be a multiple of heads ({heads})")
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.qk = MatMul()
        self.av = MatMul()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)                                       # each [N, H, T, d]
        attention = torch.softmax(self.qk(q, k.transpose(-2, -1)) * self.scale, dim=-1)  # [N, H, T, T]
        out = self.av(attention, v)                                    # [N, H, T, d]
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class ViTMLP(nn.Module):
    """``fc1`` (D → hidden), GELU, ``fc2`` (hidden → D) on ``[N, T, D]``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ViTBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))`` (LayerNorm in float)."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ViTAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = ViTMLP(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """A small Vision Transformer: ``[N, 1, 28, 28]`` → logits ``[N, 10]``.

    7×7 patches → 16 tokens, ``patch_embed`` (``Linear`` 49 → dim), a learned class token and position
    embedding (17 tokens), ``depth`` pre-norm ``ViTBlock``s (``blocks.{i}``), a final ``norm`` and ``head``
    (``Linear`` dim → 10) on the class token. No dropout, so eval and train forward passes are the same
    function. Its 1 + 6·6 + 1 = 38 matrix products, in execution order, are ``matmul_names(model)``.
    """

    def __init__(self, dim: int = 64, depth: int = 6, heads: int = 4, mlp_ratio: int = 2, patch: int = 7,
                 num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        if 28 % patch:
            raise ValueError(f"patch ({patch}) must divide the image side 28")
        self.patch = patch
        tokens = (28 // patch) ** 2
        self.patch_embed = nn.Linear(patch * patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens + 1, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.blocks = nn.ModuleList(ViTBlock(dim, heads, dim * mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, 1, 28, 28]`` → ``[N, 16, 49]``: non-overlapping patches in row-major order, pixels row-major."""
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise ValueError(f"TinyViT expects images [N, 1, 28, 28], got shape {tuple(x.shape)}")
        side, p = 28 // self.patch, self.patch
        return x.reshape(x.shape[0], side, p, side, p).permute(0, 1, 3, 2, 4).reshape(x.shape[0], side * side, p * p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(self.patches(x))                                   # [N, 16, D]
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1) + self.pos_embed
        for block in self.blocks:
            tokens = block(tokens)
        return self.head(self.norm(tokens[:, 0]))


def matmul_names(model: nn.Module) -> list[str]:
    """Names of ``model``'s matrix-product modules (every ``nn.Linear`` and ``MatMul``) in registration order.

    For ``TinyViT`` this is also the execution order: ``patch_embed``, then for each block ``i``
    ``blocks.{i}.attn.qkv``, ``.attn.qk``, ``.attn.av``, ``.attn.proj``, ``.mlp.fc1``, ``.mlp.fc2``, and
    ``head`` (38 names).
    """
    names = [name for name, module in model.named_modules() if isinstance(module, (nn.Linear, MatMul))]
    if not names:
        raise ValueError(f"{type(model).__name__} has no nn.Linear or MatMul module: no matrix product to name")
    return names


def matmul_multiplies(model: nn.Module, input_shape: tuple[int, ...] = (1, 1, 28, 28)) -> dict[str, int]:
    """Multiplications per image of each product in ``matmul_names(model)``, in that order, from one forward
    pass on zeros of ``input_shape`` (``[N, ...]``; counts are per sample). A ``Linear`` of ``in → out`` on
    ``T`` tokens costs ``T·in·out``; a ``MatMul`` ``[..., M, K] @ [..., K, N]`` costs ``(batch)·M·K·N``.
    Bias additions are not multiplications. The model's train/eval mode is restored.

    The one implementation is ``lowbit.quant.mixed.product_costs`` (operand shapes from hooks, counted by
    Lab 6's ``multiply_count``); this is it with the reference count.
    """
    from lowbit.quant.mixed import product_costs

    return product_costs(model, input_shape=input_shape)


ARCHITECTURES["vit"] = TinyViT
__all__ += ["TinyViT", "MatMul", "ViTAttention", "ViTMLP", "ViTBlock", "matmul_names", "matmul_multiplies"]
