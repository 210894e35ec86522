"""Integer-only inference: quantized matmul, quantized linear layers and an integer FashionCNN.

Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference": with r = S (q − Z), a product of real matrices becomes

    (Q_A − Z_A)(Q_B − Z_B) = Q_A Q_B − Z_B·rowsum(Q_A) − Z_A·colsum(Q_B) + K·Z_A·Z_B      (int32)

and the float output scale S_A·S_B/S_Y is applied once per output ("requantization").

Conventions of this module:

- Activations are **unsigned** b-bit integers with a zero point (uint8 at 8 bits, as torch's quint8): the
  range [0, 2^b − 1]. Weights are **signed symmetric per-output-channel** (restricted range
  [−(2^(b−1) − 1), 2^(b−1) − 1], zero point 0; int8 at 8 bits). Biases are int32 with scale
  S_bias = S_x·S_w (per channel), zero point 0.
- Exact integer products on CPU: torch has no int32 matmul kernel, and its int64 matmul is unvectorized.
  ``quantized_matmul`` multiplies in float64 through BLAS whenever K·max|Q_A|·max|Q_B| < 2^53 (every
  partial sum is then an integer below 2^53, so float64 represents it exactly — always the case for
  ≤ 16-bit operands with K < 2^21), and falls back to int64 ``torch.matmul`` otherwise. The result is
  checked to fit int32 (OverflowError otherwise) and returned as int32.
- Requantization multiplies the int32 accumulator by M = S_x·S_w/S_y, computed in float64, rounds half to
  even and adds Z_y (``multiplier="float"``), or uses the integer form M = M0·2^−n with a 31-bit M0 and
  a rounding right shift (round half up; ``multiplier="fixed"``, as in gemmlowp/TFLite).
"""
from __future__ import annotations

import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.quant import fakequant
from lowbit.quant.calibration import Observer, make_observer
from lowbit.quant.granularity import per_channel_qparams
from lowbit.quant.linear import affine_qparams, fake_quantize, linear_dequantize, linear_quantize, storage_dtype
from lowbit.quant.validate import check_bits, check_int_tensor, quantized_range

__all__ = ["quantized_matmul", "quantize_bias", "quantize_multiplier", "requantize", "quantized_linear",
           "quantized_conv2d", "IntegerCNN", "integerize", "fake_quant_cnn", "time_int8_linear"]

_INT32 = torch.iinfo(torch.int32)
_EXACT_FLOAT64 = 2 ** 53


def _zero_point_vector(z: object, length: int, name: str) -> torch.Tensor:
    """An int64 tensor of shape [] or [length]."""
    if isinstance(z, torch.Tensor):
        if z.is_floating_point() and not bool((z == torch.round(z)).all()):
            raise ValueError(f"{name} must hold integers, got {z}")
        z = z.detach().to(torch.int64).reshape(-1) if z.numel() != 1 else z.detach().to(torch.int64).reshape(())
    elif isinstance(z, int) and not isinstance(z, bool):
        z = torch.tensor(z, dtype=torch.int64)
    else:
        raise TypeError(f"{name} must be an int or an integer tensor, got {type(z).__name__}")
    if z.ndim == 1 and z.numel() != length:
        raise ValueError(f"{name} must be a scalar or have {length} entries, got {z.numel()}")
    return z


def _max_abs(t: torch.Tensor) -> int:
    lo, hi = torch.aminmax(t)
    return max(abs(int(lo)), abs(int(hi)))


def _exact_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [..., M, K] @ b [..., K, N] of integer tensors (batch dims broadcast as in ``torch.matmul``), exact, as
    int64 (float64 BLAS when that is exact)."""
    bound = a.shape[-1] * _max_abs(a) * _max_abs(b) if a.numel() and b.numel() else 0
    if bound < _EXACT_FLOAT64:
        return torch.matmul(a.to(torch.float64), b.to(torch.float64)).to(torch.int64)
    return torch.matmul(a.to(torch.int64), b.to(torch.int64))


def _to_int32(acc: torch.Tensor, what: str) -> torch.Tensor:
    if acc.numel():
        lo, hi = (int(v) for v in torch.aminmax(acc))
        if lo < _INT32.min or hi > _INT32.max:
            raise OverflowError(f"{what} does not fit in int32 (range [{lo}, {hi}]); "
                                "use fewer bits or a shorter reduction")
    return acc.to(torch.int32)


def quantized_matmul(q_a: torch.Tensor, z_a: int | torch.Tensor, q_b: torch.Tensor,
                     z_b: int | torch.Tensor) -> torch.Tensor:
    """(Q_A − Z_A)(Q_B − Z_B) with integer arithmetic only, via the zero-point expansion.

    Args:
        q_a: integer tensor [M, K]; z_a: int, or integer tensor [] or [M] (one zero point per row).
        q_b: integer tensor [K, N]; z_b: int, or integer tensor [] or [N] (one per column).
    Returns:
        int32 tensor [M, N], exactly equal to (q_a − z_a)(q_b − z_b). Raises OverflowError if it does not fit.
    """
    q_a, q_b = check_int_tensor(q_a, "q_a"), check_int_tensor(q_b, "q_b")
    if q_a.ndim != 2 or q_b.ndim != 2 or q_a.shape[1] != q_b.shape[0]:
        raise ValueError(f"expected q_a [M, K] and q_b [K, N], got {tuple(q_a.shape)} and {tuple(q_b.shape)}")
    m, k = q_a.shape
    n = q_b.shape[1]
    z_a = _zero_point_vector(z_a, m, "z_a").reshape(-1, 1)
    z_b = _zero_point_vector(z_b, n, "z_b").reshape(1, -1)
    product = _exact_matmul(q_a, q_b)                                        # Q_A Q_B
    row_sums = q_a.sum(dim=1, keepdim=True, dtype=torch.int64)               # [M, 1]
    col_sums = q_b.sum(dim=0, keepdim=True, dtype=torch.int64)               # [1, N]
    acc = product - z_b * row_sums - z_a * col_sums + k * z_a * z_b
    return _to_int32(acc, "the accumulator (Q_A − Z_A)(Q_B − Z_B)")


def quantize_bias(bias: torch.Tensor, x_scale: float | torch.Tensor, w_scale: float | torch.Tensor) -> torch.Tensor:
    """int32 bias on the accumulator's grid: round(bias / (x_scale·w_scale)), computed in float64.

    Args:
        bias: float tensor [out]; x_scale: float; w_scale: float or float tensor [out] (per channel).
    """
    if not isinstance(bias, torch.Tensor) or not bias.is_floating_point():
        raise TypeError("bias must be a floating-point tensor [out]")
    scale = torch.as_tensor(x_scale, dtype=torch.float64) * torch.as_tensor(w_scale, dtype=torch.float64).reshape(-1)
    if not bool((scale > 0).all()) or not bool(torch.isfinite(scale).all()):
        raise ValueError("x_scale and w_scale must be finite and > 0")
    q = torch.round(bias.detach().to(torch.float64) / scale)
    if bool((q.abs() > _INT32.max).any()):
        raise OverflowError("the quantized bias does not fit in int32: x_scale·w_scale is too small for it")
    return q.to(torch.int32)


def quantize_multiplier(multiplier: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """M = M0 · 2^−n with integer M0 in [2^30, 2^31) and integer n ≥ 1 (elementwise). Needs 0 < M < 2^30."""
    m = torch.as_tensor(multiplier, dtype=torch.float64)
    if not bool(((m > 0) & (m < 2 ** 30)).all()):
        raise ValueError("requantization multipliers must be in (0, 2^30)")
    mantissa, exponent = torch.frexp(m)                                   # m = mantissa · 2^exponent
    m0 = torch.round(mantissa * 2 ** 31).to(torch.int64)
    shift = (31 - exponent).to(torch.int64)
    carry = m0 == 2 ** 31
    return torch.where(carry, m0 // 2, m0), torch.where(carry, shift - 1, shift)


def requantize(acc: torch.Tensor, multiplier: torch.Tensor | float, zero_point: int, bits: int = 8,
               signed: bool = False, mode: str = "float") -> torch.Tensor:
    """q_y = clamp(round(M·acc) + Z_y, q_min, q_max) for an int32 accumulator.

    Args:
        acc: int32 [..., C]; multiplier: float or float tensor [C] (per output channel, last dim).
        mode: "float" (float64 product, round half to even) or "fixed" (M0·2^−n, round half up).
    Returns:
        integer tensor of ``acc``'s shape, dtype ``storage_dtype(bits, signed)``.
    """
    q_min, q_max = quantized_range(bits, signed)
    m = torch.as_tensor(multiplier, dtype=torch.float64)
    if mode == "float":
        scaled = torch.round(acc.to(torch.float64) * m).to(torch.int64)
    elif mode == "fixed":
        m0, shift = quantize_multiplier(m)
        product = acc.to(torch.int64) * m0                                   # |acc|·M0 < 2^62
        scaled = torch.bitwise_right_shift(product + (torch.ones_like(shift) << (shift - 1)), shift)
    else:
        raise ValueError(f"mode must be 'float' or 'fixed', got {mode!r}")
    return torch.clamp(scaled + zero_point, q_min, q_max).to(storage_dtype(bits, signed))


def _scale_vector(scale: float | torch.Tensor, length: int, name: str) -> torch.Tensor:
    s = torch.as_tensor(scale, dtype=torch.float32).reshape(-1)
    if s.numel() not in (1, length):
        raise ValueError(f"{name} must be a float or have {length} entries, got {s.numel()}")
    if not bool((s > 0).all()) or not bool(torch.isfinite(s).all()):
        raise ValueError(f"{name} must be finite and > 0")
    return s.expand(length)


def quantized_linear(q_x: torch.Tensor, x_scale: float, x_zero_point: int, q_w: torch.Tensor,
                     w_scale: float | torch.Tensor, q_bias: torch.Tensor | None, y_scale: float,
                     y_zero_point: int, bits: int = 8, multiplier: str = "float") -> torch.Tensor:
    """Integer-only y = x W^T + b on quantized tensors.

    Args:
        q_x: [N, in] unsigned activations (uint8 at 8 bits) with (x_scale, x_zero_point).
        q_w: [out, in] signed symmetric weights (int8), w_scale float or [out] (per channel), zero point 0.
        q_bias: int32 [out] with scale x_scale·w_scale (``quantize_bias``), or None.
        y_scale, y_zero_point: output qparams (unsigned ``bits``-bit).
        multiplier: "float" or "fixed" requantization (see ``requantize``).
    Returns:
        [N, out] unsigned codes, dtype ``storage_dtype(bits, signed=False)`` (uint8 at 8 bits).
    """
    check_bits(bits)
    q_x, q_w = check_int_tensor(q_x, "q_x"), check_int_tensor(q_w, "q_w")
    if q_x.ndim != 2 or q_w.ndim != 2 or q_x.shape[1] != q_w.shape[1]:
        raise ValueError(f"expected q_x [N, in] and q_w [out, in], got {tuple(q_x.shape)} and {tuple(q_w.shape)}")
    out_features = q_w.shape[0]
    w_scale = _scale_vector(w_scale, out_features, "w_scale")
    x_scale_t = _scale_vector(x_scale, 1, "x_scale")
    y_scale_t = _scale_vector(y_scale, 1, "y_scale")
    acc = quantized_matmul(q_x, x_zero_point, q_w.t(), 0).to(torch.int64)
    if q_bias is not None:
        q_bias = check_int_tensor(q_bias, "q_bias")
        if q_bias.shape != (out_features,):
            raise ValueError(f"q_bias must have shape [{out_features}], got {tuple(q_bias.shape)}")
        acc = acc + q_bias.to(torch.int64)
    acc = _to_int32(acc, "accumulator + bias")
    m = x_scale_t.double() * w_scale.double() / y_scale_t.double()          # float32 scales, float64 product
    return requantize(acc, m, int(y_zero_point), bits, signed=False, mode=multiplier)


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def quantized_conv2d(q_x: torch.Tensor, x_scale: float, x_zero_point: int, q_w: torch.Tensor,
                     w_scale: torch.Tensor, q_bias: torch.Tensor | None, y_scale: float, y_zero_point: int,
                     stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0, bits: int = 8,
                     multiplier: str = "float", matmul_fn: Callable | None = None) -> torch.Tensor:
    """Integer-only 2-d convolution by im2col + ``quantized_matmul``.

    The input is padded with its zero point x_zero_point (the integer that represents real 0), unfolded into
    columns and multiplied with the flattened weights. Shapes: q_x [N, C, H, W] unsigned, q_w
    [out, C, kh, kw] signed symmetric, w_scale [out]; returns [N, out, H', W'] unsigned codes.
    ``matmul_fn`` (default ``quantized_matmul``) computes the int32 accumulator (a student's version can be
    plugged in); bias and requantization follow as in ``quantized_linear``.
    """
    q_x, q_w = check_int_tensor(q_x, "q_x"), check_int_tensor(q_w, "q_w")
    if q_x.ndim != 4 or q_w.ndim != 4 or q_x.shape[1] != q_w.shape[1]:
        raise ValueError(f"expected q_x [N, C, H, W] and q_w [out, C, kh, kw], got {tuple(q_x.shape)} "
                         f"and {tuple(q_w.shape)}")
    n, _, height, width = q_x.shape
    out_channels, _, kh, kw = q_w.shape
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    # float32 holds every integer below 2^24 exactly: padding and unfolding only move values
    padded = F.pad(q_x.to(torch.float32), (pw, pw, ph, ph), value=float(x_zero_point))
    columns = F.unfold(padded, (kh, kw), stride=(sh, sw))                    # [N, C·kh·kw, L]
    out_h, out_w = (height + 2 * ph - kh) // sh + 1, (width + 2 * pw - kw) // sw + 1
    rows = columns.transpose(1, 2).reshape(-1, columns.shape[1]).to(torch.int32)
    if matmul_fn is None:
        q_y = quantized_linear(rows, x_scale, x_zero_point, q_w.reshape(out_channels, -1), w_scale, q_bias,
                               y_scale, y_zero_point, bits, multiplier)
    else:
        acc = matmul_fn(rows, x_zero_point, q_w.reshape(out_channels, -1).t(), 0).to(torch.int64)
        if q_bias is not None:
            acc = acc + q_bias.to(torch.int64)
        m = (torch.tensor(float(x_scale), dtype=torch.float32).double()
             * _scale_vector(w_scale, out_channels, "w_scale").double()
             / torch.tensor(float(y_scale), dtype=torch.float32).double())
        q_y = requantize(_to_int32(acc, "accumulator + bias"), m, int(y_zero_point), bits, False, multiplier)
    return q_y.reshape(n, out_h, out_w, out_channels).permute(0, 3, 1, 2).contiguous()


# ------------------------------------------------------------------------------------ integer FashionCNN
@dataclass
class QuantizedLayer:
    """One conv or linear layer in integer form. Scales float32, zero points Python ints."""

    name: str
    kind: str                       # "conv" or "linear"
    q_weight: torch.Tensor          # int8 [out, in(, kh, kw)]
    w_scale: torch.Tensor           # float32 [out]
    q_bias: torch.Tensor            # int32 [out]
    in_scale: float
    in_zero_point: int
    out_scale: float
    out_zero_point: int
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)


@dataclass
class Step:
    kind: str                       # "conv", "linear", "relu", "maxpool", "flatten"
    name: str
    layer: QuantizedLayer | None = None
    options: dict = field(default_factory=dict)


_SKIPPED = (nn.Identity, nn.Dropout)
_SUPPORTED = (nn.Conv2d, nn.Linear, nn.ReLU, nn.MaxPool2d, nn.Flatten) + _SKIPPED


def _sequence_of(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's children, checked to be supported and to reproduce ``model(x)`` when run in order."""
    children = [(name, module) for name, module in model.named_children() if not isinstance(module, _SKIPPED)]
    for name, module in children:
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise ValueError(f"{name} is a BatchNorm layer: fold it first with lowbit.models.fold_batchnorm(model)")
        if not isinstance(module, _SUPPORTED):
            raise ValueError(f"integerize supports Conv2d, Linear, ReLU, MaxPool2d, Flatten (and Identity/Dropout); "
                             f"{name} is a {type(module).__name__}")
        if isinstance(module, nn.Conv2d) and (module.groups != 1 or _pair(module.dilation) != (1, 1)
                                              or module.padding_mode != "zeros" or isinstance(module.padding, str)):
            raise ValueError(f"{name}: only groups=1, dilation=1, zero padding given as ints is supported")
    if not children:
        raise ValueError("the model has no layers to integerize")
    return children


def _run_float(children: list[tuple[str, nn.Module]], x: torch.Tensor) -> list[torch.Tensor]:
    """Outputs of each child when run in order (float)."""
    outputs = []
    for _, module in children:
        x = module(x)
        outputs.append(x)
    return outputs


def _next_is_relu(children: list[tuple[str, nn.Module]], index: int) -> bool:
    return index + 1 < len(children) and isinstance(children[index + 1][1], nn.ReLU)


class IntegerCNN:
    """An integer-only runner of a BN-folded sequential CNN (built by ``integerize``).

    ``forward_int(images)`` → unsigned integer logits codes [N, classes] (uint8 at 8 bits);
    ``__call__(images)`` → their float32 dequantization S_y (q − Z_y);
    ``simulate(images)`` → the same network in float32 fake-quant (the reference the integer path matches).
    The only float operations on the integer path are the input quantization and the per-channel
    requantization multiplier (``multiplier="fixed"`` makes that integer too).
    """

    def __init__(self, steps: list[Step], input_qparams: tuple[float, int], bits: int,
                 multiplier: str = "float", matmul_fn: Callable | None = None,
                 linear_fn: Callable | None = None) -> None:
        self.steps, self.input_qparams, self.bits, self.multiplier = steps, input_qparams, bits, multiplier
        self.matmul_fn, self.linear_fn = matmul_fn, linear_fn
        last = [s.layer for s in steps if s.layer is not None][-1]
        self.output_qparams: tuple[float, int] = (last.out_scale, last.out_zero_point)

    # integer path -----------------------------------------------------------------------------
    @torch.no_grad()
    def forward_int(self, images: torch.Tensor) -> torch.Tensor:
        scale, zero_point = self.input_qparams
        q = linear_quantize(images, scale, zero_point, self.bits, signed=False)
        for step in self.steps:
            q, zero_point = self._integer_step(step, q, zero_point)
        return q

    def _integer_step(self, step: Step, q: torch.Tensor, zero_point: int) -> tuple[torch.Tensor, int]:
        layer = step.layer
        if step.kind == "conv":
            return quantized_conv2d(q, layer.in_scale, layer.in_zero_point, layer.q_weight, layer.w_scale,
                                    layer.q_bias, layer.out_scale, layer.out_zero_point, layer.stride,
                                    layer.padding, self.bits, self.multiplier, self.matmul_fn), layer.out_zero_point
        if step.kind == "linear":
            if self.linear_fn is not None:       # a student's quantized_linear: the course signature
                return self.linear_fn(q, layer.in_scale, layer.in_zero_point, layer.q_weight, layer.w_scale,
                                      layer.q_bias, layer.out_scale, layer.out_zero_point, self.bits), \
                    layer.out_zero_point
            return quantized_linear(q, layer.in_scale, layer.in_zero_point, layer.q_weight, layer.w_scale,
                                    layer.q_bias, layer.out_scale, layer.out_zero_point, self.bits,
                                    self.multiplier), layer.out_zero_point
        if step.kind == "relu":
            return torch.clamp(q, min=zero_point), zero_point
        if step.kind == "maxpool":                      # max commutes with the monotone map r = S(q − Z)
            pooled = F.max_pool2d(q.to(torch.float32), **step.options)          # exact for < 2^24
            return pooled.to(q.dtype), zero_point
        if step.kind == "flatten":
            return q.flatten(step.options["start_dim"], step.options["end_dim"]), zero_point
        raise AssertionError(f"unknown step {step.kind}")

    forward_integer = forward_int

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        scale, zero_point = self.output_qparams
        return linear_dequantize(self.forward_int(images), scale, zero_point)

    def forward_fake_quant(self, images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The output codes of the fake-quant simulation (``simulate``), same dtype as ``forward_int``:
        compare them with ``forward_int(images)`` integer to integer."""
        scale, zero_point = self.output_qparams
        q_min, q_max = quantized_range(self.bits, signed=False)
        codes = fakequant.quantize(self.simulate(images, dtype), torch.tensor(scale, dtype=torch.float64),
                                   zero_point, q_min, q_max, dtype=torch.float64)
        return codes.to(storage_dtype(self.bits, signed=False))

    def evaluate(self, loader: Iterable, max_batches: int | None = None) -> float:
        """Top-1 accuracy of the integer path over (images, labels) batches, as a fraction in [0, 1]."""
        correct, seen = 0, 0
        for index, (images, labels) in enumerate(loader):
            if max_batches is not None and index >= max_batches:
                break
            correct += int((self.forward_int(images).argmax(dim=1) == labels).sum())
            seen += labels.numel()
        if seen == 0:
            raise ValueError("evaluate() got an empty loader")
        return correct / seen

    # fake-quant simulation --------------------------------------------------------------------
    @torch.no_grad()
    def simulate(self, images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Fake-quant forward pass with the same qparams: every tensor the integer path holds as integers is
        here the real value it represents, and every layer computes in ``dtype``.

        float32 (default) is the usual fake-quant simulation: its convolutions round, so an output lying
        within float32 error of a rounding tie can land one step away from the integer path. float64 makes
        the simulation agree with the integer path except at exact ties. Returns logits [N, classes] in
        ``dtype``.
        """
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        scale, zero_point = self.input_qparams
        x = self._fake_quantize(images.to(dtype), scale, zero_point)
        for step in self.steps:
            x = self._float_step(step, x)
        return x

    def _fake_quantize(self, y: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
        if y.dtype == torch.float32:
            return fake_quantize(y, scale, zero_point, self.bits, signed=False)
        q_min, q_max = quantized_range(self.bits, signed=False)
        return fakequant.fake_quantize(y, torch.tensor(scale, dtype=torch.float64), zero_point, q_min, q_max,
                                       dtype=y.dtype)

    def _float_step(self, step: Step, x: torch.Tensor) -> torch.Tensor:
        layer = step.layer
        if step.kind in ("conv", "linear"):
            shape = (-1,) + (1,) * (layer.q_weight.ndim - 1)
            w_hat = (layer.q_weight.double() * layer.w_scale.double().reshape(shape)).to(x.dtype)
            b_hat = (layer.q_bias.double() * layer.in_scale * layer.w_scale.double()).to(x.dtype)
            y = F.conv2d(x, w_hat, b_hat, layer.stride, layer.padding) if step.kind == "conv" \
                else F.linear(x, w_hat, b_hat)
            return self._fake_quantize(y, layer.out_scale, layer.out_zero_point)
        if step.kind == "relu":
            return torch.relu(x)
        if step.kind == "maxpool":
            return F.max_pool2d(x, **step.options)
        if step.kind == "flatten":
            return x.flatten(step.options["start_dim"], step.options["end_dim"])
        raise AssertionError(f"unknown step {step.kind}")

    def __repr__(self) -> str:
        return f"IntegerCNN(bits={self.bits}, steps={[s.name for s in self.steps]})"


def _quantized_layer(name: str, module: nn.Conv2d | nn.Linear, bits: int, in_qparams: tuple[float, int],
                     out_qparams: tuple[float, int]) -> QuantizedLayer:
    weight = module.weight.detach().to(torch.float32)
    scale = per_channel_qparams(weight, bits, axis=0)                      # [out, 1, ...]
    q_weight = linear_quantize(weight, scale, 0, bits, signed=True)
    w_scale = scale.reshape(-1)
    bias = module.bias.detach() if module.bias is not None else torch.zeros(weight.shape[0])
    conv = isinstance(module, nn.Conv2d)
    return QuantizedLayer(name=name, kind="conv" if conv else "linear", q_weight=q_weight, w_scale=w_scale,
                          q_bias=quantize_bias(bias.float(), in_qparams[0], w_scale),
                          in_scale=in_qparams[0], in_zero_point=in_qparams[1],
                          out_scale=out_qparams[0], out_zero_point=out_qparams[1],
                          stride=_pair(module.stride) if conv else (1, 1),
                          padding=_pair(module.padding) if conv else (0, 0))


def _observed_qparams(observer_name: str, bits: int, tensor: torch.Tensor) -> tuple[float, int]:
    observer: Observer = make_observer(observer_name, bits)
    return observer.update(tensor).qparams(bits, signed=False)


@torch.no_grad()
def integerize(model_folded: nn.Module, calib_images: torch.Tensor, bits: int = 8, observer: str = "minmax",
               multiplier: str = "float", matmul_fn: Callable | None = None,
               linear_fn: Callable | None = None) -> IntegerCNN:
    """Build an ``IntegerCNN`` from a BN-folded model whose forward is its children in order (FashionCNN,
    nn.Sequential) made of Conv2d, Linear, ReLU, MaxPool2d, Flatten (Identity/Dropout skipped).

    Calibration runs the float model once on ``calib_images`` [N, C, H, W] float32: the input range, and
    the output range of every conv/linear — taken after the ReLU that follows it, if one does (ReLU fused
    into the requantization, as torch.ao and Jacob et al. do; the explicit ReLU step is then a no-op clamp
    at the zero point). Activations are unsigned ``bits``-bit, weights signed per-channel symmetric.
    ``matmul_fn`` (the convolutions' integer matmul, signature of ``quantized_matmul``) and ``linear_fn``
    (the linear layers, signature of ``quantized_linear``) default to lowbit's; pass a student's to run
    the network on their code. ``model_folded`` is not modified.
    """
    bits = check_bits(bits, low=2, high=16)
    if not isinstance(calib_images, torch.Tensor) or not calib_images.is_floating_point() or calib_images.numel() == 0:
        raise ValueError("calib_images must be a non-empty float tensor [N, C, H, W]")
    was_training = model_folded.training
    model_folded.eval()
    try:
        children = _sequence_of(model_folded)
        outputs = _run_float(children, calib_images.float())
        reference = model_folded(calib_images.float())
    finally:
        model_folded.train(was_training)
    if outputs[-1].shape != reference.shape or not torch.allclose(outputs[-1], reference, rtol=1e-4, atol=1e-4):
        raise ValueError("the model's forward() is not its children applied in order; integerize needs a "
                         "sequential model (e.g. FashionCNN or nn.Sequential)")
    input_qparams = _observed_qparams(observer, bits, calib_images.float())
    steps, current = [], input_qparams
    for index, (name, module) in enumerate(children):
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            observed = outputs[index + 1] if _next_is_relu(children, index) else outputs[index]
            out_qparams = _observed_qparams(observer, bits, observed)
            layer = _quantized_layer(name, module, bits, current, out_qparams)
            steps.append(Step("conv" if isinstance(module, nn.Conv2d) else "linear", name, layer))
            current = out_qparams
        elif isinstance(module, nn.ReLU):
            steps.append(Step("relu", name))
        elif isinstance(module, nn.MaxPool2d):
            if module.dilation not in (1, (1, 1)) or module.return_indices:
                raise ValueError(f"{name}: only dilation-1 max pooling without indices is supported")
            steps.append(Step("maxpool", name, options=dict(kernel_size=module.kernel_size, stride=module.stride,
                                                            padding=module.padding, ceil_mode=module.ceil_mode)))
        elif isinstance(module, nn.Flatten):
            steps.append(Step("flatten", name, options=dict(start_dim=module.start_dim, end_dim=module.end_dim)))
    if not any(step.layer is not None for step in steps):
        raise ValueError("the model has no Conv2d or Linear layer")
    return IntegerCNN(steps, input_qparams, bits, multiplier, matmul_fn, linear_fn)


def fake_quant_cnn(model_folded: nn.Module, calib_images: torch.Tensor, bits: int = 8,
                   observer: str = "minmax") -> Callable[[torch.Tensor], torch.Tensor]:
    """The float32 fake-quant simulation of ``integerize(model_folded, calib_images, bits)``:
    a callable images [N, C, H, W] → logits float32 [N, classes] on the same integer grid."""
    return integerize(model_folded, calib_images, bits, observer).simulate


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()                                                                       # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


@torch.no_grad()
def time_int8_linear(rows: int, features: int, repeats: int = 20, seed: int = 0,
                     threads: int | None = 1) -> dict[str, float]:
    """Median milliseconds of [rows, features] @ [features, features]^T + bias with fp32 ``nn.Linear`` and
    with PyTorch's int8 CPU kernel (``torch.ao.nn.quantized.Linear``: quint8 activations, per-channel qint8
    weights, default quantized engine — fbgemm/x86 or qnnpack), input already quantized.

    Returns {"fp32_ms", "int8_ms", "engine"}. Run back to back in this process; for a fuller comparison see
    ``benchmarks/bench_quant_linear.py``. PyTorch's deprecation warnings for quantized tensors are silenced.
    Both run on ``threads`` intra-op threads (default 1: on a shared or busy CPU, multi-threaded timings
    are dominated by scheduler waits). Deterministic-algorithm mode is switched off while timing (the int8
    kernel would print a warning per call to stderr); both settings are restored afterwards.
    """
    if repeats < 1 or rows < 1 or features < 1:
        raise ValueError("rows, features and repeats must be >= 1")
    previous_threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    if threads is not None:
        torch.set_num_threads(threads)
    # quantized kernels resize their outputs, which deterministic mode reports on stderr at every call
    torch.use_deterministic_algorithms(False)
    try:
        return _time_int8_linear(rows, features, repeats, seed)
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def _time_int8_linear(rows: int, features: int, repeats: int, seed: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(seed)
    x = torch.relu(torch.randn(rows, features, generator=g))
    layer = nn.Linear(features, features).eval()
    y = layer(x)
    x_scale, x_zp = affine_qparams(float(x.min()), float(x.max()), 8, signed=False)
    y_scale, y_zp = affine_qparams(float(y.min()), float(y.max()), 8, signed=False)
    w_scale = per_channel_qparams(layer.weight.detach(), 8).reshape(-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        int8_layer = torch.ao.nn.quantized.Linear(features, features)
        q_weight = torch.quantize_per_channel(layer.weight.detach(), w_scale.double(),
                                              torch.zeros(features, dtype=torch.int64), 0, torch.qint8)
        int8_layer.set_weight_bias(q_weight, layer.bias.detach())
        int8_layer.scale, int8_layer.zero_point = y_scale, y_zp
        q_x = torch.quantize_per_tensor(x, x_scale, x_zp, torch.quint8)
        int8_ms = _median_ms(lambda: int8_layer(q_x), repeats)
    return {"fp32_ms": _median_ms(lambda: layer(x), repeats), "int8_ms": int8_ms,
            "engine": torch.backends.quantized.engine}
