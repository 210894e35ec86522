"""Realistic wrong answers for Lab 4, each with the hidden check that must catch it.

A mutant is a textual edit of the solution cell (``old`` → ``new``, applied once to the cell's source); the grader
must take the cell's points away and name ``check`` in the feedback. Some gradient mistakes (TTQ's ∂/∂w_n with the
wrong sign) are what a hand-written ``backward`` gets wrong; the solution cells use autograd, so those mutants add
a term whose value is 0 and whose gradient is the mistake, as in Lab 3's catalogue.
"""
from __future__ import annotations

from autograder.mutants import Mutant

_BIN_RETURN = "return torch.where(w >= 0, ones, -ones)"
_BIN_ONES = "    ones = torch.ones_like(w)\n    return torch.where(w >= 0, ones, -ones)"
_ST_P = "p = torch.clamp((w.detach() + 1) / 2, 0, 1)"
_ST_U = "u = torch.rand(w.shape, generator=torch.Generator().manual_seed(seed))\n"
_ST_RETURN = "return torch.where(u < p, ones, -ones)"
_ST_DRAW = _ST_U + "    ones = torch.ones_like(w)\n    " + _ST_RETURN
_STE_INSIDE = "inside = (x.detach().abs() <= 1).to(x.dtype)"
_STE_RETURN = "return binarize(x.detach()) + (x - x.detach()) * inside"
_BWN_RETURN = "return w.abs().reshape(w.shape[0], per_channel_count).mean(dim=1)"
_BW_ALPHA = "alpha = bwn_scale(w)  "
_BW_RETURN = "return per_channel(alpha, w) * sign_ste(w)"
_TWN_T = "return 0.7 * bwn_scale(w)"
_TQ_KEPT = "kept = flat.abs() > delta"
_TQ_ALPHA = "alpha = (flat.abs() * kept).sum(dim=1) / kept.sum(dim=1).clamp(min=1)"
_TQ_DELTA = "delta = twn_threshold(w) if delta is None else torch.as_tensor(delta)"
_TQ_NEGATIVE = '    if bool((delta < 0).any()):\n        raise ValueError(f"delta must be >= 0, got {delta}")\n'
_TTQ_DELTA = "delta = t * w.detach().abs().max()"
_TTQ_VALUE = "value = positive * w_p - negative * w_n"
_TTQ_SLOPE = "slope = positive * w_p.detach() + negative * w_n.detach() + (1 - positive - negative)"
_TTQ_RETURN = "return value + slope * (w - w.detach())"
_PACK_PLACE = "torch.bitwise_left_shift(torch.ones(64, dtype=torch.int64), torch.arange(64))"
_PACK_RETURN = "return (bits * place).sum(dim=-1)"
_PACK_RESHAPE = "bits = torch.cat([bits, padding], dim=-1).reshape(*x.shape[:-1], words, 64)"
_XNOR_OUT = "out[start:start + block] = n - 2 * differ"
_XNOR_DIFFER = "differ = popcount(a[start:start + block, None, :] ^ b[None, :, :]).sum(dim=-1)"
_XNOR_SHAPES = "if a.ndim != 2 or b.ndim != 2 or a.shape[1] != words or b.shape[1] != words:"

MUTANTS = [
    # binarize
    Mutant("binarize", "torch.sign (sign(0) = 0)", _BIN_RETURN, "return torch.sign(w)",
           "sign(0) = +1, also for -0.0"),
    Mutant("binarize", "zero counted as negative (w > 0)", _BIN_RETURN, "return torch.where(w > 0, ones, -ones)",
           "sign(0) = +1, also for -0.0"),
    Mutant("binarize", "-0.0 read as negative (signbit)", _BIN_RETURN,
           "return torch.where(torch.signbit(w), -ones, ones)", "sign(0) = +1, also for -0.0"),
    Mutant("binarize", "always float32", "ones = torch.ones_like(w)", "ones = torch.ones_like(w, dtype=torch.float32)",
           "keeps the dtype and shape (float16, bfloat16, float64; 0-dim, 1-D, 4-D)"),
    Mutant("binarize", "flattens the result", _BIN_RETURN, "return torch.where(w >= 0, ones, -ones).reshape(-1)",
           "keeps the dtype and shape (float16, bfloat16, float64; 0-dim, 1-D, 4-D)"),
    Mutant("binarize", "empty input refused", _BIN_ONES,
           '    if w.numel() == 0:\n        raise ValueError("w is empty")\n' + _BIN_ONES, "empty in, empty out"),
    Mutant("binarize", "binarizes in place", _BIN_ONES, "    ones = torch.ones_like(w)\n"
           "    return w.copy_(torch.where(w >= 0, ones, -ones))", "leaves its input unchanged"),
    # binarize_stochastic
    Mutant("binarize_stochastic", "torch.sigmoid instead of the hard sigmoid", _ST_P, "p = torch.sigmoid(w.detach())",
           "p = clip((w + 1) / 2, 0, 1): the hard sigmoid"),
    Mutant("binarize_stochastic", "probability not clipped (torch.bernoulli on an unclipped p)", _ST_P,
           "p = (w.detach() + 1) / 2\n    return torch.bernoulli(p.float(), generator=torch.Generator()"
           ".manual_seed(seed)).to(w.dtype) * 2 - 1  #",
           "deterministic where |w| >= 1: +1 for w >= 1, -1 for w <= -1"),
    Mutant("binarize_stochastic", "u <= p (a tie u == p gives +1)", _ST_RETURN,
           "return torch.where(u <= p, ones, -ones)", "+1 where u < p, strictly (u == p gives -1)"),
    Mutant("binarize_stochastic", "+1 where u > p (probability 1 - p)", _ST_RETURN,
           "return torch.where(u > p, ones, -ones)",
           "the mean over 8192 draws is clip(w, -1, 1) within 6 standard deviations"),
    Mutant("binarize_stochastic", "seed ignored: draws from the global RNG", _ST_U, "u = torch.rand(w.shape)\n",
           "same seed, same result; different seeds, different results"),
    Mutant("binarize_stochastic", "u drawn in w's dtype", _ST_U,
           "u = torch.rand(w.shape, generator=torch.Generator().manual_seed(seed), dtype=w.dtype)\n",
           "keeps the dtype and shape (float16, bfloat16, float64; 4-D)"),
    Mutant("binarize_stochastic", "torch.bernoulli on a float64 p (draws doubles, not the stated float32 u)",
           _ST_DRAW, "return torch.bernoulli(p, generator=torch.Generator().manual_seed(seed)) * 2 - 1",
           "keeps the dtype and shape (float16, bfloat16, float64; 4-D)"),
    Mutant("binarize_stochastic", "u drawn in w's layout: torch.rand_like (global RNG, w's dtype)", _ST_U,
           "u = torch.rand_like(w)\n",
           "reproduces the stated draw: u = torch.rand(w.shape, generator=torch.Generator().manual_seed(seed)), "
           "+1 where u < p"),
    # sign_ste
    Mutant("sign_ste", "STE without the |x| <= 1 cancel", _STE_RETURN, "return binarize(x.detach()) + (x - x.detach())",
           "gradient is cancelled where |x| > 1"),
    Mutant("sign_ste", "cancel exclusive at ±1 (|x| < 1)", _STE_INSIDE, "inside = (x.detach().abs() < 1).to(x.dtype)",
           "gradient passes where |x| <= 1, inclusive at ±1"),
    Mutant("sign_ste", "torch.clamp STE (gradient 0 at exactly ±1)", _STE_RETURN,
           "clipped = x.clamp(-1, 1)\n    return binarize(x.detach()) + clipped - clipped.detach()",
           "gradient passes where |x| <= 1, inclusive at ±1"),
    Mutant("sign_ste", "forward torch.sign (sign(0) = 0)", _STE_RETURN,
           "return torch.sign(x.detach()) + (x - x.detach()) * inside",
           "forward is binarize(x): ±1 with sign(0) = +1 (also -0.0)"),
    Mutant("sign_ste", "no straight-through gradient (plain binarize)", _STE_RETURN, "return binarize(x)",
           "gradient passes where |x| <= 1, inclusive at ±1"),
    Mutant("sign_ste", "gradient doubled (2 · the hard tanh's derivative)", _STE_RETURN,
           "return binarize(x.detach()) + 2 * (x - x.detach()) * inside",
           "the gradient is the upstream itself inside (not scaled)"),
    Mutant("sign_ste", "always float32", _STE_RETURN,
           "return (binarize(x.detach()) + (x - x.detach()) * inside).float()",
           "keeps the dtype and shape (float16, bfloat16, float64; 4-D)"),
    # bwn_scale
    Mutant("bwn_scale", "α over the whole tensor", _BWN_RETURN, "return w.abs().mean().expand(w.shape[0])",
           "one α per output channel: a [C] result, not one α for the tensor"),
    Mutant("bwn_scale", "mean of w, not |w|", _BWN_RETURN,
           "return w.reshape(w.shape[0], per_channel_count).mean(dim=1)",
           "mean of |w|, not of w (all-negative channels; an all-zero channel gives 0)"),
    Mutant("bwn_scale", "max |w| instead of the mean", _BWN_RETURN,
           "return w.abs().reshape(w.shape[0], per_channel_count).amax(dim=1)",
           "α = mean |w| over every axis but 0 (conv weights [C, C_in, k, k])"),
    Mutant("bwn_scale", "keepdim result [C, 1]", _BWN_RETURN,
           "return w.abs().reshape(w.shape[0], per_channel_count).mean(dim=1, keepdim=True)",
           "one α per output channel: a [C] result, not one α for the tensor"),
    Mutant("bwn_scale", "reduces the last axis only", _BWN_RETURN,
           "return w.abs().mean(dim=-1) if w.ndim > 1 else w.abs()",
           "α = mean |w| over every axis but 0 (conv weights [C, C_in, k, k])"),
    Mutant("bwn_scale", "root mean square instead of mean |w|", _BWN_RETURN,
           "return w.pow(2).reshape(w.shape[0], per_channel_count).mean(dim=1).sqrt()",
           "α = mean |w| over every axis but 0 (conv weights [C, C_in, k, k])"),
    Mutant("bwn_scale", "channels without elements not refused (NaN)", "if per_channel_count == 0:",
           "if per_channel_count < 0:", "rejects a 0-dim w and channels without elements (ValueError)"),
    # binarize_weights
    Mutant("binarize_weights", "α detached (XNOR-Net's 1/n term missing)", _BW_ALPHA,
           "alpha = bwn_scale(w).detach()  ",
           "gradient with an all-positive channel (the 1/n term does not cancel)"),
    Mutant("binarize_weights", "plain straight-through sign (no |w| <= 1 cancel)", _BW_RETURN,
           "return per_channel(alpha, w) * (binarize(w.detach()) + w - w.detach())",
           "gradient is cancelled where |w| > 1 (the sign's STE)"),
    Mutant("binarize_weights", "α over the whole tensor", _BW_RETURN, "return alpha.mean() * sign_ste(w)",
           "α per channel, not over the whole tensor"),
    Mutant("binarize_weights", "torch.sign (a zero weight is dropped)", _BW_RETURN,
           "return per_channel(alpha, w) * torch.sign(w)", "sign(0) = +1: a zero weight becomes +α"),
    Mutant("binarize_weights", "α broadcast along the last axis", _BW_RETURN, "return alpha * sign_ste(w)",
           "α per channel, not over the whole tensor"),
    Mutant("binarize_weights", "sign without a gradient (binarize)", _BW_RETURN,
           "return per_channel(alpha, w) * binarize(w)",
           "gradient: autograd of per_channel(bwn_scale(w), w) * sign_ste(w) (α in the graph)"),
    Mutant("binarize_weights", "always float32", _BW_RETURN, "return (per_channel(alpha, w) * sign_ste(w)).float()",
           "keeps the dtype and shape (float16, bfloat16, float64)"),
    # twn_threshold
    Mutant("twn_threshold", "Δ from max |w| instead of the mean", _TWN_T,
           "return 0.7 * w.abs().reshape(w.shape[0], -1).amax(dim=1)",
           "Δ = 0.7 · mean |w| per output channel (conv weights)"),
    Mutant("twn_threshold", "Δ over the whole tensor", _TWN_T, "return (0.7 * w.abs().mean()).expand(w.shape[0])",
           "one Δ per output channel: a [C] result, not one Δ for the tensor"),
    Mutant("twn_threshold", "mean of w, not |w|", _TWN_T, "return 0.7 * w.reshape(w.shape[0], -1).mean(dim=1)",
           "mean of |w|, not of w (all-negative channels; an all-zero channel gives 0)"),
    Mutant("twn_threshold", "factor 0.7 forgotten", _TWN_T, "return bwn_scale(w)",
           "Δ = 0.7 · mean |w| per output channel (conv weights)"),
    Mutant("twn_threshold", "keepdim result [C, 1]", _TWN_T, "return 0.7 * bwn_scale(w).reshape(-1, 1)",
           "one Δ per output channel: a [C] result, not one Δ for the tensor"),
    Mutant("twn_threshold", "always float32", _TWN_T, "return 0.7 * bwn_scale(w.float())",
           "keeps the dtype (float16, bfloat16, float64)"),
    # twn_quantize
    Mutant("twn_quantize", "inclusive threshold (|w| >= Δ)", _TQ_KEPT, "kept = flat.abs() >= delta",
           "strict threshold: |w| == Δ gives 0"),
    Mutant("twn_quantize", "α = mean |w| over the whole channel", _TQ_ALPHA, "alpha = flat.abs().mean(dim=1)",
           "α_c = mean of |w| over the kept weights only"),
    Mutant("twn_quantize", "NaN for a channel with nothing above Δ (0 / 0)", _TQ_ALPHA,
           "alpha = (flat.abs() * kept).sum(dim=1) / kept.sum(dim=1)",
           "a channel with nothing above Δ gives 0 (never NaN)"),
    Mutant("twn_quantize", "one α for the whole tensor", _TQ_ALPHA,
           "alpha = ((flat.abs() * kept).sum() / kept.sum().clamp(min=1)).expand(channels)",
           "default Δ = twn_threshold(w): values α_c · t with t ∈ {-1, 0, 1}"),
    Mutant("twn_quantize", "[C] delta broadcast along the last axis", "delta = delta.reshape(channels, 1)",
           "delta = delta", "per-channel thresholds: delta of shape [C]"),
    Mutant("twn_quantize", "negative delta not refused", _TQ_NEGATIVE, "", "rejects a negative delta (ValueError)"),
    Mutant("twn_quantize", "default Δ from max |w| instead of the mean", _TQ_DELTA,
           "delta = 0.7 * w.detach().abs().reshape(channels, -1).amax(dim=1) if delta is None else "
           "torch.as_tensor(delta)", "default Δ = twn_threshold(w): values α_c · t with t ∈ {-1, 0, 1}"),
    # ttq_quantize
    Mutant("ttq_quantize", "W_n's gradient with the wrong sign (+Σ g)", _TTQ_VALUE,
           "value = positive * w_p - negative * (2 * w_n.detach() - w_n)",
           "gradient w.r.t. w_n: minus the sum of the upstream over w < -Δ (negative for a positive upstream)"),
    Mutant("ttq_quantize", "Δ per channel instead of per layer", _TTQ_DELTA,
           "delta = t * w.detach().abs().reshape(w.shape[0], -1).amax(dim=1).reshape(-1, *([1] * (w.ndim - 1)))",
           "one Δ for the whole tensor (per layer: max |w| over every channel)"),
    Mutant("ttq_quantize", "Δ from mean |w| instead of max", _TTQ_DELTA, "delta = t * w.detach().abs().mean()",
           "value: w_p above Δ = t · max|w|, -w_n below -Δ, 0 between"),
    Mutant("ttq_quantize", "inclusive at +Δ (w >= Δ)", "positive = (w.detach() > delta)",
           "positive = (w.detach() >= delta)", "strict at ±Δ: w == ±Δ gives 0"),
    Mutant("ttq_quantize", "plain STE for the latent weights (gradient g everywhere)", _TTQ_RETURN,
           "return value + (w - w.detach())",
           "gradient w.r.t. w: w_p · g above Δ, g in [-Δ, Δ], w_n · g below -Δ (TTQ's scaled STE)"),
    Mutant("ttq_quantize", "w_p and w_n swapped in the latent gradient", _TTQ_SLOPE,
           "slope = positive * w_n.detach() + negative * w_p.detach() + (1 - positive - negative)",
           "gradient w.r.t. w: w_p · g above Δ, g in [-Δ, Δ], w_n · g below -Δ (TTQ's scaled STE)"),
    Mutant("ttq_quantize", "no gradient in the middle region", _TTQ_SLOPE,
           "slope = positive * w_p.detach() + negative * w_n.detach()",
           "gradient w.r.t. w: w_p · g above Δ, g in [-Δ, Δ], w_n · g below -Δ (TTQ's scaled STE)"),
    Mutant("ttq_quantize", "-w_n in the latent gradient", _TTQ_SLOPE,
           "slope = positive * w_p.detach() - negative * w_n.detach() + (1 - positive - negative)",
           "gradient w.r.t. w: w_p · g above Δ, g in [-Δ, Δ], w_n · g below -Δ (TTQ's scaled STE)"),
    Mutant("ttq_quantize", "w_p detached (no gradient for w_p)", _TTQ_VALUE,
           "value = positive * w_p.detach() - negative * w_n",
           "gradient w.r.t. w_p: the sum of the upstream over w > Δ"),
    Mutant("ttq_quantize", "t ignored (always 0.05)", _TTQ_DELTA, "delta = 0.05 * w.detach().abs().max()",
           "t is used (default 0.05)"),
    Mutant("ttq_quantize", "value in the scales' dtype", _TTQ_RETURN,
           "return (value + slope * (w - w.detach())).to(w_p.dtype)",
           "keeps the dtype and shape (float16 / bfloat16 / float64 w, float32 or w's dtype scales)"),
    Mutant("ttq_quantize", "t = 1 accepted", "if not 0 <= t < 1:", "if not 0 <= t <= 1:",
           "rejects t outside [0, 1) (ValueError)"),
    # pack_signs
    Mutant("pack_signs", "bit order reversed (most significant bit first)", _PACK_PLACE,
           "torch.bitwise_left_shift(torch.ones(64, dtype=torch.int64), torch.arange(63, -1, -1))",
           "bit j of word k is x[64k + j] >= 0, least significant bit first"),
    Mutant("pack_signs", "padding bits set", "padding = torch.zeros(", "padding = torch.ones(",
           "padding bits of the last word are 0"),
    Mutant("pack_signs", "sign(0) = 0 (x > 0)", "bits = (x >= 0).to(torch.int64)", "bits = (x > 0).to(torch.int64)",
           "sign(0) = +1: zeros and -0.0 set their bit"),
    Mutant("pack_signs", "n // 64 words (a partial last word dropped)", "words = -(-n // 64)",
           "words = max(1, n // 64)", "ceil(n / 64) int64 words (n = 1, 63, 64, 65, 128 and drawn)"),
    Mutant("pack_signs", "float64 sum of powers of two (bits beyond 2^53 lost, 2^63 overflows)", _PACK_RETURN,
           "return (bits * 2.0 ** torch.arange(64, dtype=torch.float64)).sum(dim=-1).to(torch.int64)",
           "bit 63 set: the word is a negative int64"),
    Mutant("pack_signs", "leading dimensions flattened", _PACK_RESHAPE,
           "bits = torch.cat([bits, padding], dim=-1).reshape(-1, words, 64)",
           "leading dimensions kept: [..., n] → [..., ceil(n / 64)]"),
    # xnor_matmul
    Mutant("xnor_matmul", "n taken as 64 · W", _XNOR_OUT, "out[start:start + block] = 64 * words - 2 * differ",
           "uses n, not 64 · W: the padding bits are not signs"),
    Mutant("xnor_matmul", "factor 2 missing (n - popcount)", _XNOR_OUT, "out[start:start + block] = n - differ",
           "equals binarize(A) @ binarize(B).T exactly (n not a multiple of 64)"),
    Mutant("xnor_matmul", "AND instead of XOR", _XNOR_DIFFER,
           "differ = popcount(a[start:start + block, None, :] & b[None, :, :]).sum(dim=-1)",
           "equals binarize(A) @ binarize(B).T exactly (n not a multiple of 64)"),
    Mutant("xnor_matmul", "popcounts summed over the wrong axis", _XNOR_DIFFER,
           "differ = popcount(a[start:start + block, None, :] ^ b[None, :, :]).sum(dim=1)",
           "equals binarize(A) @ binarize(B).T exactly (n not a multiple of 64)"),
    Mutant("xnor_matmul", "W != ceil(n / 64) not refused", _XNOR_SHAPES, "if a.ndim != 2 or b.ndim != 2:",
           "rejects mismatched shapes and W != ceil(n / 64) (ValueError)"),
    Mutant("xnor_matmul", "float32 result", "out = torch.empty(a.shape[0], b.shape[0], dtype=torch.int64)",
           "out = torch.empty(a.shape[0], b.shape[0], dtype=torch.float32)",
           "int64 result [M, N] (M ≠ N, one row, one column)"),
]
