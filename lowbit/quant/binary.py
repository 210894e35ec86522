"""Binary and ternary weights (Lab 4): sign, stochastic sign, the sign STE, BWN / XNOR-Net scales, TWN, TTQ,
and a packed XNOR–popcount matrix product.

- **BinaryConnect** (Courbariaux, Bengio & David 2015, "BinaryConnect: Training Deep Neural Networks with binary
  weights during propagations"): weights binarized to ±1 in the forward pass, deterministically (``binarize``)
  or stochastically with the hard sigmoid p = clip((w + 1) / 2, 0, 1) (``binarize_stochastic``); the float
  "latent" weights are what the optimizer updates (clipped to [−1, 1] after each step, in the training recipe).
- **BNN** (Hubara, Courbariaux, Soudry, El-Yaniv & Bengio 2016, "Binarized Neural Networks"): the
  straight-through estimator of sign cancels the gradient where |x| > 1 (``sign_ste``; inclusive at ±1), for
  weights and for activations.
- **BWN / XNOR-Net** (Rastegari, Ordonez, Redmon & Farhadi 2016, "XNOR-Net: ImageNet Classification Using
  Binary Convolutional Neural Networks"): W ≈ α · sign(W) with α = mean |W| per output channel, the
  least-squares optimum of ||W − α·B||² over α for B = sign(W) (``bwn_scale``, ``binarize_weights``); with
  binary activations too, a dot product of ±1 vectors packed 64 to a word is ``n − 2·popcount(a XOR b)``
  (``pack_signs``, ``xnor_matmul``).
- **TWN** (Li, Zhang & Liu 2016, "Ternary Weight Networks"): t = sign(w) · 1{|w| > Δ} with Δ = 0.7 · mean |w|
  and α = mean of |w| over {|w| > Δ} (``twn_threshold``, ``twn_quantize``). The paper takes one Δ and α per
  layer; here they are per output channel, as everywhere in the course.
- **TTQ** (Zhu, Han, Mao & Dally 2017, "Trained Ternary Quantization"): two learned scales per layer, value
  W_p above Δ = t · max|w|, −W_n below −Δ, 0 between; the scales get the sums of their regions' gradients and
  the latent weights a gradient scaled by W_p / 1 / W_n in the three regions (``ttq_quantize``).

Conventions, everywhere: **sign(0) = +1** (``+1 where w >= 0``, so −0.0 gives +1 too; NaN is not ``>= 0`` and
gives −1); "per channel" means along axis 0 (output channels), a 1-D ``w`` of shape ``[C]`` being C channels of
one weight each; per-channel results have shape ``[C]`` (``per_channel`` broadcasts them back); float inputs
(float16, bfloat16, float32, float64) give results of the input's dtype and shape, computed in that dtype;
thresholds are strict (|w| == Δ is 0).

``popcount``, ``per_channel`` and ``unpack_signs`` are provided helpers (the lab imports them; they are not
graded), the ten other public functions the references of Lab 4's graded cells.
"""
from __future__ import annotations

import math
import sys
from numbers import Real

import torch
from torch import Tensor

from lowbit.quant.validate import check_float_tensor, check_int, check_int_tensor

__all__ = ["BINARY_METHODS", "binarize", "binarize_stochastic", "sign_ste", "bwn_scale", "binarize_weights",
           "twn_threshold", "twn_quantize", "ttq_quantize", "pack_signs", "xnor_matmul", "popcount",
           "per_channel", "unpack_signs", "WORD_BITS"]

#: The training methods of Lab 4 (``lowbit.quant.binary_train``): BinaryConnect deterministic and stochastic,
#: BWN (α · sign(W)), TWN, TTQ, and XNOR (W1A1: BWN weights and sign activations).
BINARY_METHODS = ("binaryconnect", "binaryconnect_stochastic", "bwn", "twn", "ttq", "xnor")

#: Signs packed per int64 word by ``pack_signs``.
WORD_BITS = 64

#: TWN's threshold factor (Li et al. 2016, eq. 10: Δ ≈ 0.7 · E|W| for uniform or normal weights).
TWN_FACTOR = 0.7


# ------------------------------------------------------------------------------------------ checks
def _check_weight(w: object, name: str = "w") -> Tensor:
    """``w`` if it is a float tensor with a channel axis (ndim >= 1) and at least one element per channel."""
    w = check_float_tensor(w, name)
    if w.ndim == 0:
        raise ValueError(f"{name} must have a channel axis (ndim >= 1), got a 0-dim tensor; "
                         f"for a single weight use {name}.reshape(1)")
    if w.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(w.shape)}): a channel needs at least one weight")
    return w


def per_channel(v: Tensor, like: Tensor) -> Tensor:
    """``v`` of shape ``[C]`` reshaped to ``[C, 1, ..., 1]`` so it broadcasts against ``like`` (``[C, ...]``).

    A view of ``v`` (same dtype, gradient kept). ValueError unless ``v`` is 1-D with ``like.shape[0]`` entries.
    """
    if not isinstance(v, Tensor) or not isinstance(like, Tensor):
        raise TypeError(f"per_channel takes two tensors, got {type(v).__name__} and {type(like).__name__}")
    if like.ndim == 0 or v.ndim != 1 or v.shape[0] != like.shape[0]:
        raise ValueError(f"per_channel needs v of shape [C] and like of shape [C, ...]; got v {tuple(v.shape)} and "
                         f"like {tuple(like.shape)}")
    return v.reshape(v.shape[0], *([1] * (like.ndim - 1)))


# ------------------------------------------------------------------------------------------ binary
def _signs(positive: Tensor, dtype: torch.dtype) -> Tensor:
    """+1 where ``positive`` (a bool tensor) else −1, in ``dtype``."""
    return positive.to(dtype) * 2 - 1


def binarize(w: Tensor) -> Tensor:
    """Deterministic binarization: ``+1 where w >= 0 else -1`` (sign(0) = +1).

    ``w``: float tensor of any shape (0-dim and empty included); returns ±1 of ``w``'s shape and dtype. No
    useful gradient (it is 0 almost everywhere): training uses ``sign_ste``.
    """
    w = check_float_tensor(w, "w")
    return _signs(w >= 0, w.dtype)


def binarize_stochastic(w: Tensor, seed: int) -> Tensor:
    """BinaryConnect's stochastic binarization: +1 with probability p = clip((w + 1) / 2, 0, 1), else −1.

    The draw is exactly ``u = torch.rand(w.shape, generator=torch.Generator().manual_seed(seed))`` (float32,
    CPU; moved to ``w``'s device), the result ``+1 where u < p else -1``, p computed in ``w``'s dtype (the
    comparison promotes it to float32 for half inputs). The global RNG is never touched; the same seed gives the
    same result. Unbiased: E[result] = 2p − 1 = clip(w, −1, 1). ``w``: float tensor of any shape; ``seed``: an
    int >= 0. Returns ±1 of ``w``'s shape and dtype.
    """
    w = check_float_tensor(w, "w")
    seed = check_int(seed, "seed", low=0)
    p = ((w + 1) / 2).clamp(0, 1)
    u = torch.rand(w.shape, generator=torch.Generator().manual_seed(seed)).to(w.device)
    return _signs(u < p, w.dtype)


class _SignSTE(torch.autograd.Function):
    """binarize(x) forward; grad · 1{|x| <= 1} backward (Hubara et al. 2016)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return _signs(x >= 0, x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1)


def sign_ste(x: Tensor) -> Tensor:
    """``binarize(x)`` with the straight-through estimator of BNN (Hubara et al. 2016).

    Forward ±1 (sign(0) = +1); backward ``grad · 1{|x| <= 1}``: the gradient passes unchanged where |x| <= 1
    (inclusive at ±1) and is cancelled beyond, so a weight (BinaryConnect) or an activation (W1A1) far outside
    [−1, 1] stops moving. ``x``: float tensor of any shape; returns ``x``'s shape and dtype.
    """
    return _SignSTE.apply(check_float_tensor(x, "x"))


def bwn_scale(w: Tensor) -> Tensor:
    """BWN's scale per output channel: α_c = mean |w| over every axis but 0 (Rastegari et al. 2016).

    α_c minimizes ||w_c − α·sign(w_c)||² (the optimum of the least squares: α = <|w_c|, 1> / n). ``w``: float
    tensor ``[C, ...]`` (a 1-D ``[C]`` gives α = |w|); returns ``[C]`` in ``w``'s dtype, differentiable (α is a
    function of w). An all-zero channel gives 0. 0-dim or empty ``w`` → ValueError.
    """
    w = _check_weight(w)
    return w.abs().reshape(w.shape[0], -1).mean(dim=1)


def binarize_weights(w: Tensor) -> Tensor:
    """BWN / XNOR-Net weights ``α_c · sign(w)``: ``per_channel(bwn_scale(w), w) * sign_ste(w)``.

    Value α_c · (±1) per output channel; the gradient w.r.t. ``w`` is the one autograd gives for that
    composition (α stays in the graph): ∂L/∂w_i = α_c · g_i · 1{|w_i| <= 1} + sgn(w_i) / n · Σ_j g_j · sign(w_j),
    XNOR-Net's ∂C/∂W with its 1/n term (sgn(0) = 0 there: the derivative of |w| torch uses, n = weights per
    channel). ``w``: float tensor ``[C, ...]``; returns ``w``'s shape and dtype.
    """
    w = _check_weight(w)
    return per_channel(bwn_scale(w), w) * sign_ste(w)


# ------------------------------------------------------------------------------------------ ternary
def twn_threshold(w: Tensor) -> Tensor:
    """TWN's threshold per output channel: Δ_c = 0.7 · mean |w_c| (Li et al. 2016, per channel here).

    ``w``: float tensor ``[C, ...]``; returns ``[C]`` in ``w``'s dtype (detached: a threshold gets no gradient).
    0-dim or empty ``w`` → ValueError.
    """
    return TWN_FACTOR * bwn_scale(w).detach()


def _delta_per_channel(delta: object, w: Tensor) -> Tensor | float:
    """``delta`` checked (finite, >= 0) as a Python float, a 0-dim tensor, or ``[C]`` reshaped to ``[C, 1]``."""
    if isinstance(delta, Real) and not isinstance(delta, bool):
        if not math.isfinite(float(delta)) or float(delta) < 0:
            raise ValueError(f"delta must be a finite threshold >= 0, got {delta!r}")
        return float(delta)
    if not isinstance(delta, Tensor):
        raise TypeError(f"delta must be None, a float, a 0-dim tensor or a tensor of shape [C], got "
                        f"{type(delta).__name__}")
    if delta.dtype == torch.bool or delta.is_complex():
        raise TypeError(f"delta must hold real numbers, got dtype {delta.dtype}")
    if delta.ndim != 0 and tuple(delta.shape) != (w.shape[0],):
        raise ValueError(f"delta must be a float, a 0-dim tensor or a tensor of shape [{w.shape[0]}] (one threshold "
                         f"per output channel of w {tuple(w.shape)}), got shape {tuple(delta.shape)}")
    d = delta.detach().to(w.device)
    if not bool(torch.isfinite(d).all()) or bool((d < 0).any()):
        raise ValueError(f"delta must be finite and >= 0 everywhere, got {d.reshape(-1)[:8].tolist()}")
    return d.reshape(-1, 1) if d.ndim == 1 else d


def twn_quantize(w: Tensor, delta: float | Tensor | None = None) -> Tensor:
    """TWN ternary weights ``α_c · t`` with t = sign(w) · 1{|w| > Δ_c} (Li et al. 2016, per channel).

    The threshold is strict (|w| == Δ gives 0). α_c = mean of |w| over {|w| > Δ_c} in channel c, 0 when that
    set is empty (never NaN). ``delta``: None → ``twn_threshold(w)``; a float or a 0-dim tensor (one Δ for all
    channels); or a tensor ``[C]``; negative → ValueError. The comparison |w| > Δ follows torch's type
    promotion (a float or 0-dim Δ is compared in ``w``'s dtype). ``w``: float tensor ``[C, ...]``; returns
    ``w``'s shape and dtype (values in {−α_c, 0, α_c}). No gradient requirement: training wraps it in an STE.
    """
    w = _check_weight(w)
    d = twn_threshold(w).reshape(-1, 1) if delta is None else _delta_per_channel(delta, w)
    magnitude = w.abs().reshape(w.shape[0], -1)                      # [C, weights per channel]
    kept = magnitude > d
    alpha = (magnitude * kept).sum(dim=1) / kept.sum(dim=1).clamp(min=1).to(w.dtype)
    return per_channel(alpha, w) * binarize(w) * kept.reshape(w.shape)


class _TTQ(torch.autograd.Function):
    """TTQ's value and gradients (Zhu et al. 2017, eqs. 6–8) for a precomputed threshold Δ."""

    @staticmethod
    def forward(ctx, w: Tensor, w_p: Tensor, w_n: Tensor, delta: Tensor) -> Tensor:  # type: ignore[override]
        positive, negative = w > delta, w < -delta
        ctx.save_for_backward(positive, negative, w_p, w_n)
        zero = torch.zeros((), dtype=w.dtype, device=w.device)
        return torch.where(positive, w_p.detach().to(w.dtype), torch.where(negative, -w_n.detach().to(w.dtype), zero))

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        positive, negative, w_p, w_n = ctx.saved_tensors
        grad_w = grad_p = grad_n = None
        if ctx.needs_input_grad[0]:
            one = torch.ones((), dtype=grad.dtype, device=grad.device)
            factor = torch.where(positive, w_p.detach().to(grad.dtype),
                                 torch.where(negative, w_n.detach().to(grad.dtype), one))
            grad_w = grad * factor
        if ctx.needs_input_grad[1]:
            grad_p = grad.to(w_p.dtype).masked_fill(~positive, 0).sum()
        if ctx.needs_input_grad[2]:
            grad_n = -grad.to(w_n.dtype).masked_fill(~negative, 0).sum()
        return grad_w, grad_p, grad_n, None


def _check_scale(value: object, name: str) -> Tensor:
    if not isinstance(value, Tensor) or not value.is_floating_point() or value.ndim != 0:
        shown = f"shape {tuple(value.shape)}, dtype {value.dtype}" if isinstance(value, Tensor) else \
            type(value).__name__
        raise TypeError(f"{name} must be a 0-dim float tensor (e.g. nn.Parameter(torch.tensor(1.0))), got {shown}")
    return value


def ttq_quantize(w: Tensor, w_p: Tensor, w_n: Tensor, t: float = 0.05) -> Tensor:
    """TTQ ternary weights (Zhu et al. 2017): ``w_p`` where w > Δ, ``−w_n`` where w < −Δ, 0 between.

    Δ = t · max|w| over the whole tensor (per layer; no gradient through Δ); both thresholds strict (w == ±Δ
    gives 0). Gradients, for an upstream gradient g: ∂L/∂w_p = Σ_{w>Δ} g; ∂L/∂w_n = −Σ_{w<−Δ} g (the value is
    −w_n); ∂L/∂w = w_p·g where w > Δ, g where |w| <= Δ, w_n·g where w < −Δ (the scaled STE, w_p and w_n taken
    as constants there). ``w``: non-empty float tensor of any shape; ``w_p``, ``w_n``: 0-dim float tensors
    (positive in practice, not checked), usually ``nn.Parameter``s; ``t``: a float in [0, 1). Returns ``w``'s
    shape and dtype; the scales' gradients come back in their own dtypes.
    """
    w = check_float_tensor(w, "w", nonempty=True)
    w_p, w_n = _check_scale(w_p, "w_p"), _check_scale(w_n, "w_n")
    if isinstance(t, bool) or not isinstance(t, Real) or not 0 <= float(t) < 1:
        raise ValueError(f"t must be a float in [0, 1) (the threshold is t · max|w|; TTQ uses 0.05), got {t!r}")
    delta = t * w.detach().abs().max()                               # 0-dim, w's dtype
    return _TTQ.apply(w, w_p, w_n, delta)


# ------------------------------------------------------------------------------------------ packed signs
_BIT_POSITIONS = torch.arange(WORD_BITS, dtype=torch.int64)
#: SWAR masks (binary 0101…, 0011…, 00001111…) and the byte-summing multiplier of ``popcount``.
_M1, _M2, _M4, _H01 = 0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F, 0x0101010101010101


def _words(n: int) -> int:
    return -(-n // WORD_BITS)


def pack_signs(x: Tensor) -> Tensor:
    """Signs of ``x`` packed 64 to an int64 word along the last axis.

    ``x``: float ``[..., n]`` (n >= 1); returns int64 ``[..., ceil(n / 64)]`` where bit j of word k (j = 0 the
    least significant) is 1 iff ``x[..., 64k + j] >= 0`` (sign +1, the same convention as ``binarize``); the
    padding bits of the last word are 0. A word with bit 63 set is a negative int64: it is a bit pattern.
    """
    x = check_float_tensor(x, "x")
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError(f"pack_signs needs x of shape [..., n] with n >= 1, got shape {tuple(x.shape)}")
    n, words = x.shape[-1], _words(x.shape[-1])
    bits = torch.nn.functional.pad((x >= 0).to(torch.uint8), (0, words * WORD_BITS - n))
    bits = bits.reshape(*x.shape[:-1], words * 8, 8)               # [..., bytes, bit of the byte]
    packed = bits[..., 0].clone()
    for j in range(1, 8):                                          # 8 bit positions, each a whole-tensor op
        packed |= bits[..., j] << j
    if sys.byteorder == "big":                                     # byte 0 must be the least significant one
        packed = packed.reshape(*x.shape[:-1], words, 8).flip(-1).reshape(*x.shape[:-1], words * 8)
    return packed.contiguous().view(torch.int64)


def unpack_signs(words: Tensor, n: int) -> Tensor:
    """The inverse of ``pack_signs``: int64 ``[..., ceil(n / 64)]`` → float32 ±1 ``[..., n]`` (bit 1 → +1)."""
    words = check_int_tensor(words, "words")
    n = check_int(n, "n", low=1)
    if words.dtype != torch.int64:
        raise TypeError(f"words must be int64 (from pack_signs), got {words.dtype}")
    if words.ndim == 0 or words.shape[-1] != _words(n):
        raise ValueError(f"words must have shape [..., ceil(n / 64)] = [..., {_words(n)}] for n = {n}, got "
                         f"{tuple(words.shape)}")
    bits = words[..., None].bitwise_right_shift(_BIT_POSITIONS.to(words.device)) & 1
    return _signs(bits.reshape(*words.shape[:-1], -1)[..., :n] == 1, torch.float32)


def popcount(x: Tensor) -> Tensor:
    """Number of set bits of each int64 of ``x`` (any shape), as int64 of the same shape (0..64); ``x`` untouched.

    Vectorized SWAR ("SIMD within a register", Hacker's Delight §5-1): count the bits of every 2-bit field,
    then of every 4-bit field, then of every byte, with shifts and masks on the whole tensor; multiplying the
    byte counts by 0x0101010101010101 adds all eight into the top byte (the product wraps modulo 2^64, only
    that byte is kept). ``benchmarks/bench_xnor.py`` measures it against a byte-table lookup on
    ``x.view(torch.uint8)`` and other formulations.
    """
    x = check_int_tensor(x, "x")
    if x.dtype != torch.int64:
        raise TypeError(f"popcount takes int64 words (from pack_signs), got {x.dtype}")
    counts = x >> 1
    counts &= _M1
    torch.sub(x, counts, out=counts)                 # each 2-bit field: how many of its 2 bits are set
    upper = counts >> 2
    upper &= _M2
    counts &= _M2
    counts += upper                                  # each 4-bit field: 0..4
    torch.bitwise_right_shift(counts, 4, out=upper)
    counts += upper
    counts &= _M4                                    # each byte: 0..8
    counts *= _H01                                   # top byte = sum of the eight bytes
    return counts.bitwise_right_shift_(56)


#: Elements of the ``[block, N, W]`` XOR temporary of ``xnor_matmul``: 2^18 int64 = 2 MB, about one core's L2
#: cache, so the SWAR passes of ``popcount`` mostly hit it (``benchmarks/bench_xnor.py`` compares 2^14..2^22:
#: 2^17..2^19 are within the noise of each other, 2^22 is 1.2–3× slower).
_BLOCK_ELEMENTS = 1 << 18


def xnor_matmul(a: Tensor, b: Tensor, n: int) -> Tensor:
    """``binarize(A) @ binarize(B).T`` from packed signs: ``n − 2 · Σ_words popcount(a ⊕ b)``.

    ``a``: int64 ``[M, W]`` = ``pack_signs(A)`` of a float ``[M, n]``; ``b``: int64 ``[N, W]`` =
    ``pack_signs(B)`` of ``[N, n]``; ``W`` must be ceil(n / 64). Returns int64 ``[M, N]``, exactly the ±1 dot
    products (matching signs count +1, differing ones −1; the zero padding bits agree and cancel out). Works in
    blocks of rows of ``a`` so the ``[block, N, W]`` temporary stays near 2^18 elements (2 MB).
    """
    a, b = check_int_tensor(a, "a"), check_int_tensor(b, "b")
    n = check_int(n, "n", low=1)
    if a.dtype != torch.int64 or b.dtype != torch.int64:
        raise TypeError(f"a and b must be int64 words from pack_signs, got {a.dtype} and {b.dtype}")
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"a [M, W] and b [N, W] must be 2-D with the same number of words W, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[1] != _words(n):
        raise ValueError(f"n = {n} signs take ceil(n / 64) = {_words(n)} words, but a and b have {a.shape[1]}; "
                         "pass the n the tensors were packed from")
    rows, cols, words = a.shape[0], b.shape[0], a.shape[1]
    out = torch.empty(rows, cols, dtype=torch.int64, device=a.device)
    block = max(1, _BLOCK_ELEMENTS // max(1, cols * words))
    for start in range(0, rows, block):                              # row blocks only: memory stays bounded
        rows_out = out[start:start + block]
        torch.sum(popcount(a[start:start + block, None, :] ^ b[None, :, :]), dim=2, out=rows_out)
        rows_out.mul_(-2).add_(n)                                     # n − 2 · (differing signs)
    return out
