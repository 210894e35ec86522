"""Realistic wrong answers for Lab 5, each with the hidden check that must catch it.

A mutant is a textual edit of the solution cell (``old`` → ``new``, applied once to the cell's source); the grader
must take the cell's points away and name ``check`` in the feedback. ``adaround_layer`` is graded on outcomes, so
its mutants are the mistakes an outcome shows (a wrong loss, a wrong final rounding, no clamp, no gradient reaching
V); the schedule's mistakes (annealed the wrong way, the warm start ignored) are graded in ``beta_schedule``.
"""
from __future__ import annotations

from autograder.mutants import Mutant

_ES_R1 = "r1 = w1.detach().float().abs().reshape(channels, -1).amax(dim=1)"
_ES_R2 = "r2 = w2.detach().float().abs().transpose(0, 1).reshape(channels, -1).amax(dim=1)"
_ES_S = "s = torch.sqrt(r1 * r2) / torch.where(both, r2, ones)"
_ES_RETURN = "return torch.where(both, s, ones)"
_EP_S2 = "s2 = s.reshape([1, channels] + [1] * (w2.ndim - 2))"
_EP_W1 = "w1_new = (w1.detach().float() / s1).to(w1.dtype)"
_EP_B1 = "b1_new = None if b1 is None else (b1.detach().float() / s).to(b1.dtype)"
_EP_W2 = "w2_new = (w2.detach().float() * s2).to(w2.dtype)"
_EP_S = "s = equalization_scales(w1, w2) if scales is None else check_float_tensor(scales, \"scales\").detach().float()"
_ER_SIGMA = "b, sigma = beta.detach().float(), gamma.detach().float().abs()"
_ER_MEAN = "mean = b * (1 - cdf) + safe_sigma * pdf"
_ER_RETURN = "return torch.where(positive, mean, b.clamp(min=0)).to(beta.dtype)"
_ER_Z = "z = -b / safe_sigma"
_CB_EPS = "eps = w_q.detach().float() - w.detach().float()"
_CB_SUM = "eps = eps.sum(dim=tuple(range(2, eps.ndim)))"
_CB_RETURN = "return (b - eps @ expected_input.detach().float()).to(dtype)"
_CB_NONE = "b, dtype = torch.zeros(w.shape[0]), w.dtype"
_RS_STRETCH = "stretched = torch.sigmoid(v.float()) * (zeta - gamma) + gamma"
_RS_RETURN = "return torch.clamp(stretched, 0.0, 1.0).to(v.dtype)"
_IV_REST = "rest = (ratio - torch.floor(ratio)).clamp(0.0, 1.0)"
_IV_RETURN = "return -torch.log((zeta - gamma) / (rest - gamma) - 1)"
_IV_VIEW = "s = s.reshape([-1] + [1] * (w.ndim - 1))"
_IV_POSITIVE = "if not bool((s > 0).all()):"
_RR_RETURN = "return (1 - (2 * h - 1).abs() ** beta).sum().to(v.dtype)"
_RR_H = "h = rectified_sigmoid(v.float(), zeta, gamma)"
_BS_WARM = "if step < warm:"
_BS_PROGRESS = "progress = (step - warm) / (total - warm)"
_BS_RETURN = "return float(end + (start - end) * max(0.0, 1.0 - progress))"
_BS_CHECK = "if total < 1 or not 0 <= step <= total:"
_AL_RELU = "out = torch.relu(out)                         # reconstruct after the activation"
_AL_SOFT = "w_soft = s * torch.clamp(base + rectified_sigmoid(v), q_min, q_max)"
_AL_RETURN = "return torch.clamp(base + (v.detach() >= 0).float(), q_min, q_max).to(torch.int64)"
_AL_BASE = "base = torch.floor(w / s)"
_AL_REG = "loss = loss + reg_weight * rounding_regularizer(v, beta_schedule(step, iterations))"
_AL_INIT = "v = init_v(w, s.reshape(-1) if s.ndim else s).requires_grad_(True)"

MUTANTS = [
    # equalization_scales
    Mutant("equalization_scales", "s inverted (r2 / √(r1 r2))", _ES_S,
           "s = torch.where(both, r2, ones) / torch.sqrt(r1 * r2)",
           "s = √(r1 · r2) / r2 per channel (linear pair w1 [C, K], w2 [D, C])"),
    Mutant("equalization_scales", "√(r1 / r2) written as r1 / r2 (no square root)", _ES_S,
           "s = r1 / torch.where(both, r2, ones)", "w1 / s and w2 · s then share each channel's range √(r1 · r2)"),
    Mutant("equalization_scales", "w2's range across the wrong axis (flattened without moving axis 1 first)",
           _ES_R2, "r2 = w2.detach().float().abs().reshape(channels, -1).amax(dim=1)",
           "s = √(r1 · r2) / r2 per channel (linear pair w1 [C, K], w2 [D, C])"),
    Mutant("equalization_scales", "w1's range over axis 1 only (a linear layer's formula)", _ES_R1,
           "r1 = w1.detach().float().abs().amax(dim=1)",
           "conv pairs: ranges over every axis but 0 of w1 and every axis but 1 of w2 (w1 [C, C_in, k, k], "
           "w2 [D, C, k, k] or [D, C, h·w])"),
    Mutant("equalization_scales", "range is max w, not max |w|", _ES_R1,
           "r1 = w1.detach().float().reshape(channels, -1).amax(dim=1).clamp(min=0)",
           "ranges are max |w|: channels with only negative weights"),
    Mutant("equalization_scales", "zero ranges not handled (NaN / inf)", _ES_RETURN, "return s",
           "s = 1 where a range is 0 (a zero channel in w1, in w2, or in both), never NaN or inf"),
    Mutant("equalization_scales", "s in the weights' dtype", _ES_RETURN,
           "return torch.where(both, s, ones).to(w1.dtype)",
           "float32 result for float16, bfloat16 and float64 weights"),
    # equalize_pair
    Mutant("equalize_pair", "w1 multiplied by s instead of divided", _EP_W1,
           "w1_new = (w1.detach().float() * s1).to(w1.dtype)",
           "w1 / s along axis 0, b1 / s, w2 · s along axis 1 (given scales; linear pair)"),
    Mutant("equalize_pair", "bias not rescaled", _EP_B1, "b1_new = None if b1 is None else b1.detach().clone()",
           "the pair's function is unchanged across a ReLU: w2' relu(w1' x + b1') = w2 relu(w1 x + b1)"),
    Mutant("equalize_pair", "s along w2's axis 0 (its output channels)", _EP_S2,
           "s2 = s.reshape([channels] + [1] * (w2.ndim - 1))",
           "w1 / s along axis 0, b1 / s, w2 · s along axis 1 (given scales; linear pair)"),
    Mutant("equalize_pair", "s viewed as [1, C] for every w2 (a linear layer's broadcast)", _EP_S2,
           "s2 = s.reshape(1, channels)",
           "conv pairs: s broadcast along w1's axis 0 and w2's axis 1 (4-D, and [D, C, h·w])"),
    Mutant("equalize_pair", "scales argument ignored", _EP_S,
           "s = equalization_scales(w1, w2)\n    check_float_tensor(s, \"scales\")",
           "w1 / s along axis 0, b1 / s, w2 · s along axis 1 (given scales; linear pair)"),
    Mutant("equalize_pair", "b1 = None crashes", _EP_B1, "b1_new = (b1.detach().float() / s).to(b1.dtype)",
           "b1 = None gives b1' = None"),
    Mutant("equalize_pair", "results always float32", _EP_W2, "w2_new = w2.detach().float() * s2\n"
           "    w1_new = w1_new.float()",
           "each result in its input's dtype and shape (float16, bfloat16, float64)"),
    Mutant("equalize_pair", "divides w1 in place", _EP_W1, "w1_new = w1.div_(s1.to(w1.dtype))",
           "leaves its inputs unchanged"),
    # expected_relu_input
    Mutant("expected_relu_input", "γ instead of |γ|", _ER_SIGMA,
           "b, sigma = beta.detach().float(), gamma.detach().float()",
           "σ = |γ|: a negative BatchNorm weight gives the same mean as its absolute value"),
    Mutant("expected_relu_input", "Φ(−β/σ) instead of 1 − Φ(−β/σ)", _ER_MEAN, "mean = b * cdf + safe_sigma * pdf",
           "β·(1 − Φ(−β/σ)) + σ·φ(−β/σ) with σ = γ > 0"),
    Mutant("expected_relu_input", "the φ term with the variance γ²", _ER_MEAN,
           "mean = b * (1 - cdf) + safe_sigma ** 2 * pdf", "β·(1 − Φ(−β/σ)) + σ·φ(−β/σ) with σ = γ > 0"),
    Mutant("expected_relu_input", "σ = 0 not handled (NaN)", _ER_RETURN, "return (b * (1 - torch.special.ndtr("
           "-b / sigma)) + sigma * torch.exp(-0.5 * (b / sigma) ** 2) / math.sqrt(2 * math.pi)).to(beta.dtype)",
           "γ = 0: E = max(β, 0), never NaN"),
    Mutant("expected_relu_input", "σ = 0 gives β (ReLU forgotten)", _ER_RETURN,
           "return torch.where(positive, mean, b).to(beta.dtype)", "γ = 0: E = max(β, 0), never NaN"),
    Mutant("expected_relu_input", "z = β / σ (sign of the argument)", _ER_Z, "z = b / safe_sigma",
           "β·(1 − Φ(−β/σ)) + σ·φ(−β/σ) with σ = γ > 0"),
    Mutant("expected_relu_input", "mean through the truncated normal's mean (0 / 0 for β ≪ 0)", _ER_MEAN,
           "mean = (b + safe_sigma * pdf / (1 - cdf)) * (1 - cdf)",
           "an all-negative pre-activation (β ≪ 0) gives E ≈ 0, a large positive β gives E ≈ β"),
    Mutant("expected_relu_input", "always float32", _ER_RETURN, "return torch.where(positive, mean, b.clamp(min=0))",
           "the result is [C] in β's dtype (float16, bfloat16, float64)"),
    # corrected_bias
    Mutant("corrected_bias", "bias correction sign flipped (bias + ε E[x])", _CB_RETURN,
           "return (b + eps @ expected_input.detach().float()).to(dtype)",
           "subtracts the shift: a weight error that raises the output lowers the bias"),
    Mutant("corrected_bias", "ε = w − w_q", _CB_EPS, "eps = w.detach().float() - w_q.detach().float()",
           "subtracts the shift: a weight error that raises the output lowers the bias"),
    Mutant("corrected_bias", "spatial axes averaged, not summed", _CB_SUM,
           "eps = eps.mean(dim=tuple(range(2, eps.ndim)))",
           "conv layers: ε summed over the kernel's spatial axes (dims ≥ 2) before @ E[x]"),
    Mutant("corrected_bias", "spatial axes not summed (only the first tap)", _CB_SUM,
           "eps = eps.reshape(eps.shape[0], eps.shape[1], -1)[:, :, 0]",
           "conv layers: ε summed over the kernel's spatial axes (dims ≥ 2) before @ E[x]"),
    Mutant("corrected_bias", "w_q used instead of the error", _CB_EPS, "eps = w_q.detach().float()",
           "bias − (w_q − w) @ E[x] (linear layer)"),
    Mutant("corrected_bias", "bias = None returned as float32", _CB_NONE, "b, dtype = torch.zeros(w.shape[0]), "
           "torch.float32", "bias = None: the correction of a zero bias, in w's dtype"),
    Mutant("corrected_bias", "result in w's dtype, not bias's", _CB_RETURN,
           "return (b - eps @ expected_input.detach().float()).to(w.dtype)",
           "the result in bias's dtype (float16, bfloat16, float64 bias and weights)"),
    # rectified_sigmoid
    Mutant("rectified_sigmoid", "ζ/γ swapped", _RS_STRETCH,
           "stretched = torch.sigmoid(v.float()) * (gamma - zeta) + zeta",
           "h = clamp(σ(v)·(ζ − γ) + γ, 0, 1) with the defaults ζ = 1.1, γ = −0.1"),
    Mutant("rectified_sigmoid", "no clamp to [0, 1]", _RS_RETURN, "return stretched.to(v.dtype)",
           "h is exactly 0 and 1 beyond the clip points (|v| large)"),
    Mutant("rectified_sigmoid", "defaults hard-coded (ζ, γ ignored)", _RS_STRETCH,
           "stretched = torch.sigmoid(v.float()) * 1.2 - 0.1", "ζ and γ are the arguments given (not the defaults, "
           "not swapped)"),
    Mutant("rectified_sigmoid", "h detached (no gradient)", _RS_RETURN,
           "return torch.clamp(stretched, 0.0, 1.0).detach().to(v.dtype)",
           "gradient σ'(v)·(ζ − γ) inside (0, 1), 0 where clipped"),
    Mutant("rectified_sigmoid", "clamp without its gradient's zeros (straight-through clamp)", _RS_RETURN,
           "return (stretched + (torch.clamp(stretched, 0.0, 1.0) - stretched).detach()).to(v.dtype)",
           "gradient σ'(v)·(ζ − γ) inside (0, 1), 0 where clipped"),
    Mutant("rectified_sigmoid", "always float32", _RS_RETURN, "return torch.clamp(stretched, 0.0, 1.0)",
           "h in v's dtype and shape (float16, bfloat16, float64; 0-dim, 3-D)"),
    # init_v
    Mutant("init_v", "V init of rest without the γ shift (logit of rest)", _IV_RETURN,
           "return -torch.log(1 / rest.clamp(min=1e-6) - 1)",
           "h(V) = rest: V = −log((ζ − γ) / (rest − γ) − 1), rest = w/scale − floor(w/scale) (per-channel scale [C])"),
    Mutant("init_v", "rest from trunc (negative weights)", _IV_REST,
           "rest = (ratio - torch.trunc(ratio)).clamp(0.0, 1.0)",
           "negative weights: rest from floor, in [0, 1) (not trunc, not round)"),
    Mutant("init_v", "rest from round (in [-1/2, 1/2))", _IV_REST,
           "rest = (ratio - torch.round(ratio)).clamp(0.0, 1.0)",
           "h(V) = rest: V = −log((ζ − γ) / (rest − γ) − 1), rest = w/scale − floor(w/scale) (per-channel scale [C])"),
    Mutant("init_v", "per-channel scale along the last axis", _IV_VIEW,
           "s = s.reshape([1] * (w.ndim - 1) + [-1]) if w.shape[-1] == s.shape[0] else "
           "s.reshape([-1] + [1] * (w.ndim - 1))",
           "conv weights [C, C_in, k, k]: the per-channel scale along axis 0"),
    Mutant("init_v", "sign error: V = log(...)", _IV_RETURN, "return torch.log((zeta - gamma) / (rest - gamma) - 1)",
           "h(V) = rest: V = −log((ζ − γ) / (rest − γ) − 1), rest = w/scale − floor(w/scale) (per-channel scale [C])"),
    Mutant("init_v", "ζ and γ hard-coded", _IV_RETURN, "return -torch.log(1.2 / (rest + 0.1) - 1)",
           "ζ and γ are the arguments given"),
    Mutant("init_v", "V in w's dtype", _IV_RETURN,
           "return (-torch.log((zeta - gamma) / (rest - gamma) - 1)).to(w.dtype)",
           "float32 V for float16, bfloat16 and float64 weights"),
    Mutant("init_v", "scale 0 accepted", _IV_POSITIVE, "if not bool((s >= 0).all()):",
           "rejects a scale <= 0 (ValueError)"),
    # rounding_regularizer
    Mutant("rounding_regularizer", "the regularizer without the absolute value", _RR_RETURN,
           "return (1 - (2 * h - 1) ** beta).sum().to(v.dtype)",
           "|2h − 1|: h below 1/2 counts like h above (the absolute value)"),
    Mutant("rounding_regularizer", "mean instead of sum", _RR_RETURN,
           "return (1 - (2 * h - 1).abs() ** beta).mean().to(v.dtype)",
           "a sum over every element, not a mean: 0 when every h is 0 or 1"),
    Mutant("rounding_regularizer", "|h − 1/2| instead of |2h − 1|", _RR_RETURN,
           "return (1 - (h - 0.5).abs() ** beta).sum().to(v.dtype)",
           "Σ (1 − |2·h(V) − 1|^β) over every element (non-integer β)"),
    Mutant("rounding_regularizer", "|2h − 1|^β without the 1 −", _RR_RETURN,
           "return ((2 * h - 1).abs() ** beta).sum().to(v.dtype)",
           "a sum over every element, not a mean: 0 when every h is 0 or 1"),
    Mutant("rounding_regularizer", "β fixed at 2", _RR_RETURN, "return (1 - (2 * h - 1).abs() ** 2).sum().to(v.dtype)",
           "β, ζ and γ are the arguments given"),
    Mutant("rounding_regularizer", "ζ, γ not passed on (defaults used)", _RR_H, "h = rectified_sigmoid(v.float())",
           "β, ζ and γ are the arguments given"),
    Mutant("rounding_regularizer", "computed on detached h (no gradient)", _RR_H,
           "h = rectified_sigmoid(v.detach().float(), zeta, gamma)",
           "gradient: ∂/∂V of Σ 1 − |2h − 1|^β (0 where h is clipped)"),
    Mutant("rounding_regularizer", "returned as a Python float", _RR_RETURN,
           "return float((1 - (2 * h - 1).abs() ** beta).sum())",
           "a 0-dim result in v's dtype (float16, bfloat16, float64)"),
    # beta_schedule
    Mutant("beta_schedule", "β annealed the wrong way (end to start)", _BS_RETURN,
           "return float(start + (end - start) * max(0.0, 1.0 - progress))",
           "linear from start down to end after the warm start; β = end at step = total"),
    Mutant("beta_schedule", "the warm start ignored (annealing from step 0)", _BS_PROGRESS,
           "progress = step / total", "the warm start's end: β = start at step = warm_start · total, then it "
           "decreases"),
    Mutant("beta_schedule", "no warm start: annealing over the whole run but β = start held", _BS_WARM,
           "if step < warm and False:", "β = start during the warm start (step < warm_start · total)"),
    Mutant("beta_schedule", "progress over total, not total − warm", _BS_PROGRESS, "progress = (step - warm) / total",
           "linear from start down to end after the warm start; β = end at step = total"),
    Mutant("beta_schedule", "defaults hard-coded (start, end ignored)", _BS_RETURN,
           "return float(2.0 + 18.0 * max(0.0, 1.0 - progress))",
           "warm_start, start and end are the arguments given"),
    Mutant("beta_schedule", "warm start rounded down to a whole step", "warm = warm_start * total",
           "warm = int(warm_start * total)", "linear from start down to end after the warm start; β = end at step = "
           "total"),
    Mutant("beta_schedule", "β = 0 during the warm start", "return float(start)", "return 0.0",
           "β = start during the warm start (step < warm_start · total)"),
    Mutant("beta_schedule", "no range check", _BS_CHECK, "if total < 1:",
           "rejects step outside [0, total] and total < 1 (ValueError)"),
    # adaround_layer
    Mutant("adaround_layer", "hard rounding V > 0.5 instead of V ≥ 0", _AL_RETURN,
           "return torch.clamp(base + (v.detach() > 0.5).float(), q_min, q_max).to(torch.int64)",
           "iterations = 0: V = init_v, so the hard rounding floor + (V >= 0) is rounding to nearest (half up)"),
    Mutant("adaround_layer", "no clamp to the range", _AL_RETURN,
           "return (base + (v.detach() >= 0).float()).to(torch.int64)",
           "int64 [C_out, K]: each value floor(w / s) or floor(w / s) + 1, clamped to [−2^(b−1), 2^(b−1) − 1]"),
    Mutant("adaround_layer", "reconstruction before the activation", _AL_RELU, "pass",
           "decisions agree with the reference's for ≥ 95 % of the weights (ReLU layer, loss after the activation)"),
    Mutant("adaround_layer", "hard rounding inside the loop (no gradient reaches V)", _AL_SOFT,
           "w_soft = s * torch.clamp(base + (v >= 0).float(), q_min, q_max)",
           "the output error after the ReLU is below rounding to nearest's"),
    Mutant("adaround_layer", "base from round, not floor", _AL_BASE, "base = torch.round(w / s)",
           "iterations = 0: V = init_v, so the hard rounding floor + (V >= 0) is rounding to nearest (half up)"),
    Mutant("adaround_layer", "regularizer subtracted (pushes h to 1/2)", _AL_REG,
           "loss = loss - reg_weight * rounding_regularizer(v, beta_schedule(step, iterations))",
           "decisions agree with the reference's for ≥ 95 % of the weights (ReLU layer, loss after the activation)"),
    Mutant("adaround_layer", "V starts at 0 (every h at 1/2)", _AL_INIT,
           "v = torch.zeros_like(w).requires_grad_(True)",
           "iterations = 0: V = init_v, so the hard rounding floor + (V >= 0) is rounding to nearest (half up)"),
    Mutant("adaround_layer", "returns the dequantized weights", _AL_RETURN,
           "return s * torch.clamp(base + (v.detach() >= 0).float(), q_min, q_max)",
           "int64 [C_out, K]: each value floor(w / s) or floor(w / s) + 1, clamped to [−2^(b−1), 2^(b−1) − 1]"),
]
