"""Realistic wrong answers for Lab 3, each with the hidden check that must catch it.

A mutant is a textual edit of the solution cell (``old`` → ``new``, applied once to the cell's source); the
grader must take the cell's points away and name ``check`` in the feedback. Some gradient mistakes (a sign
flipped at the lower clip, PACT's α gradient counted below α) are what a hand-written ``backward`` gets wrong;
the solution cells use autograd, so those mutants add a term whose value is 0 and whose gradient is the mistake.
"""
from __future__ import annotations

from autograder.mutants import Mutant

_STE = "return torch.round(x) - x.detach() + x"
_FQ_INSIDE = "inside = (q >= q_min) & (q <= q_max)"
_FQ_Q = "q = torch.round(x.detach() / scale) + zero_point"
_FQ_RETURN = "return y + (x - x.detach()) * inside"
_GS_RETURN = "return 1.0 / math.sqrt(num_elements * q_max)"
_GS_QMAX = "q_max = quantized_range(bits, signed)[1]"
_INIT = "step = 2 * x.detach().float().abs().mean() / math.sqrt(q_max)"
_LSQ_S = "s = step.detach() + (step - step.detach()) * grad_scale      #"
_LSQ_CLAMP = "v = torch.where(v < q_min, q_min, torch.where(v > q_max, q_max, v))  # clamp"
_LSQ_RETURN = "return ste_round(v) * s"
_LSQ_N = "lsq_grad_scale(x.numel() // step.numel(), bits, signed)"
_PLUS_S = "s = step.detach() + (step - step.detach()) * grad_scale\n"
_PLUS_Z = "z = zero_point.detach() + (zero_point - zero_point.detach()) * grad_scale"
_PLUS_V = "v = x / s + z\n    v = torch.where(v < q_min, q_min, torch.where(v > q_max, q_max, v))"
_PACT_CLIP = "torch.where(x > alpha, alpha, torch.relu(x))"
_PACT_RETURN = "return ste_round(clipped / delta) * delta"
_FOLD_W = "weight_folded = weight.float() * factor.reshape(-1, *([1] * (weight.ndim - 1)))"
_BN_RETURN = "return x.mean(dim=dims), x.var(dim=dims, unbiased=False)"

MUTANTS = [
    # ste_round
    Mutant("ste_round", "plain round (no straight-through gradient)", _STE, "return torch.round(x)",
           "gradient passes through unchanged (straight-through)"),
    Mutant("ste_round", "detach on the wrong term (gradient -1)", _STE, "return torch.round(x) - x + x.detach()",
           "gradient passes through unchanged (straight-through)"),
    Mutant("ste_round", "round half away from zero", _STE,
           "return torch.sign(x) * torch.floor(x.abs() + 0.5) - x.detach() + x", "rounds half to even"),
    Mutant("ste_round", "floor instead of round", _STE, "return torch.floor(x) - x.detach() + x",
           "forward is round(x)"),
    Mutant("ste_round", "always float32", _STE, "return (torch.round(x) - x.detach() + x).float()",
           "keeps the dtype and shape (float16, bfloat16, float64)"),
    Mutant("ste_round", "no input validation", 'check_float_tensor(x, "x", nonempty=True)', "pass",
           "rejects bad input"),
    Mutant("ste_round", "rounds its input in place", _STE, "return x.detach().round_() - x.detach() + x",
           "leaves its input unchanged"),
    # fake_quantize_ste
    Mutant("fake_quantize_ste", "unclipped STE (gradient passes everywhere)", _FQ_RETURN, "return y + (x - x.detach())",
           "gradient is 0 where the value is clipped (clipped STE)"),
    Mutant("fake_quantize_ste", "inside decided on x / S + Z before rounding", _FQ_INSIDE,
           "inside = (x / scale + zero_point >= q_min) & (x / scale + zero_point <= q_max)",
           "x exactly on a clip boundary: both bounds are inside"),
    Mutant("fake_quantize_ste", "clip bounds excluded from the inside", _FQ_INSIDE,
           "inside = (q > q_min) & (q < q_max)", "x exactly on a clip boundary: both bounds are inside"),
    Mutant("fake_quantize_ste", "zero point added before rounding", _FQ_Q,
           "q = torch.round(x.detach() / scale + zero_point)", "adds the zero point after rounding"),
    Mutant("fake_quantize_ste", "missing clamp", "torch.clamp(q, q_min, q_max)", "q", "clamps to [q_min, q_max]"),
    Mutant("fake_quantize_ste", "gradient of x / S (scaled by 1 / S)", _FQ_RETURN,
           "return y + (x - x.detach()) / scale * inside", "gradient equals torch.fake_quantize_per_tensor_affine's"),
    Mutant("fake_quantize_ste", "keeps the input dtype", "    x = x.float()\n", "",
           "float32 output for float16, bfloat16 and float64 inputs"),
    Mutant("fake_quantize_ste", "floor instead of round", _FQ_Q, "q = torch.floor(x.detach() / scale) + zero_point",
           "basic signed 8-bit values"),
    # lsq_grad_scale
    Mutant("lsq_grad_scale", "Q_N instead of Q_P", _GS_QMAX,
           "q_max = -quantized_range(bits, signed)[0] if signed else quantized_range(bits, signed)[1]",
           "g = 1 / sqrt(N · Q_P), signed Q_P = 2^(b-1) - 1"),
    Mutant("lsq_grad_scale", "missing square root", _GS_RETURN, "return 1.0 / (num_elements * q_max)",
           "g = 1 / sqrt(N · Q_P), signed Q_P = 2^(b-1) - 1"),
    Mutant("lsq_grad_scale", "Q_P outside the square root", _GS_RETURN,
           "return 1.0 / (math.sqrt(num_elements) * q_max)", "g = 1 / sqrt(N · Q_P), signed Q_P = 2^(b-1) - 1"),
    Mutant("lsq_grad_scale", "signed ignored (always 2^(b-1) - 1)", _GS_QMAX, "q_max = quantized_range(bits, True)[1]",
           "unsigned: Q_P = 2^b - 1"),
    Mutant("lsq_grad_scale", "returns a tensor", _GS_RETURN,
           "return torch.tensor(1.0 / math.sqrt(num_elements * q_max))", "returns a Python float"),
    Mutant("lsq_grad_scale", "num_elements not validated",
           "if isinstance(num_elements, bool) or not isinstance(num_elements, int) or num_elements < 1:", "if False:",
           "rejects bad input"),
    Mutant("lsq_grad_scale", "signed 1-bit accepted (Q_P = 0)", "if q_max < 1:", "if q_max < 0:", "rejects bad input"),
    # lsq_init_step
    Mutant("lsq_init_step", "mean instead of mean |x|", ".abs().mean()", ".mean()", "2 · mean(|x|) / sqrt(Q_P)"),
    Mutant("lsq_init_step", "max |x| / Q_P (Lab 1's scale)", _INIT, "step = x.detach().float().abs().max() / q_max",
           "2 · mean(|x|) / sqrt(Q_P)"),
    Mutant("lsq_init_step", "factor 2 forgotten", _INIT, "step = x.detach().float().abs().mean() / math.sqrt(q_max)",
           "2 · mean(|x|) / sqrt(Q_P)"),
    Mutant("lsq_init_step", "divides by Q_P instead of sqrt(Q_P)", "math.sqrt(q_max)", "q_max",
           "2 · mean(|x|) / sqrt(Q_P)"),
    Mutant("lsq_init_step", "Q_N instead of Q_P", "q_max = quantized_range(bits, signed)[1]",
           "q_max = -quantized_range(bits, signed)[0] if signed else quantized_range(bits, signed)[1]",
           "2 · mean(|x|) / sqrt(Q_P)"),
    Mutant("lsq_init_step", "signed ignored (always 2^(b-1) - 1)", "quantized_range(bits, signed)[1]",
           "quantized_range(bits, True)[1]", "unsigned: Q_P = 2^b - 1"),
    Mutant("lsq_init_step", "keeps the input dtype", "x.detach().float().abs()", "x.detach().abs()",
           "returns a 0-d float32 tensor"),
    Mutant("lsq_init_step", "all-zero x not refused",
           'return check_positive_tensor(step, "the initial step (x is all zeros?)")', "return step",
           "rejects bad input"),
    # lsq_fake_quantize
    Mutant("lsq_fake_quantize", "∂y/∂s sign flipped at the lower clip (+Q_N instead of -Q_N)", _LSQ_RETURN,
           f"{_LSQ_RETURN} - 2 * q_min * (s - s.detach()) * (x / s.detach() < q_min)",
           "step gradient below the range is -Q_N, above it Q_P"),
    Mutant("lsq_fake_quantize", "gradient scale missing", _LSQ_S, "s = step  #",
           "default gradient scale g = 1 / sqrt(N · Q_P)"),
    Mutant("lsq_fake_quantize", "gradient scale squared", _LSQ_S,
           "s = step.detach() + (step - step.detach()) * grad_scale ** 2      #",
           "default gradient scale g = 1 / sqrt(N · Q_P)"),
    Mutant("lsq_fake_quantize", "Q_N instead of Q_P in the gradient scale", _LSQ_N,
           "1.0 / math.sqrt(x.numel() // step.numel() * (2 ** (bits - 1) if signed else q_max))",
           "default gradient scale g = 1 / sqrt(N · Q_P)"),
    Mutant("lsq_fake_quantize", "N = x.numel() for per-channel steps", _LSQ_N,
           "lsq_grad_scale(x.numel(), bits, signed)", "per-channel steps: N counts the values sharing one step"),
    Mutant("lsq_fake_quantize", "torch.clamp (gradient 0 on the bounds)", _LSQ_CLAMP,
           "v = torch.clamp(v, q_min, q_max)  # clamp",
           "x exactly on a clip boundary: both bounds are inside, decided on x / s"),
    Mutant("lsq_fake_quantize", "inside decided on round(x / s) (torch's learnable op)", "    v = x / s\n",
           "    v = ste_round(x / s)\n", "x exactly on a clip boundary: both bounds are inside, decided on x / s"),
    Mutant("lsq_fake_quantize", "step <= 0 not refused", 'check_positive_tensor(step.detach(), "step")', "pass",
           "rejects step <= 0"),
    # lsq_plus_fake_quantize
    Mutant("lsq_plus_fake_quantize", "z not rounded in the forward pass", "z = ste_round(z)", "z = z",
           "z is rounded in the forward pass (straight-through)"),
    Mutant("lsq_plus_fake_quantize", "z rounded without the STE (no zero-point gradient)", "z = ste_round(z)",
           "z = torch.round(z)", "zero_point gradient: 0 inside, -s outside"),
    Mutant("lsq_plus_fake_quantize", "zero point's gradient not scaled", _PLUS_Z, "z = zero_point",
           "grad_scale scales the zero point's gradient too"),
    Mutant("lsq_plus_fake_quantize", "gradient scale missing on the step", _PLUS_S, "s = step\n",
           "default gradient scale 1 / sqrt(N · (2^b - 1)) on the step and the zero point"),
    Mutant("lsq_plus_fake_quantize", "signed Q_P in the gradient scale",
           "grad_scale = lsq_grad_scale(x.numel() // step.numel(), bits, signed=False)",
           "grad_scale = lsq_grad_scale(x.numel() // step.numel(), bits, signed=True)",
           "default gradient scale 1 / sqrt(N · (2^b - 1)) on the step and the zero point"),
    Mutant("lsq_plus_fake_quantize", "clamps x / s before adding z", _PLUS_V,
           "v = x / s\n    v = torch.where(v < q_min, q_min, torch.where(v > q_max, q_max, v)) + z",
           "clips v = x / s + z̃ to [0, 2^b - 1]"),
    Mutant("lsq_plus_fake_quantize", "z̃ · s treated as a constant (step gradient misses -z̃)",
           "return (ste_round(v) - z) * s", "return ste_round(v) * s - z * s.detach()",
           "step gradient: round(v) - v inside, (0 - z̃) below, (2^b - 1 - z̃) above"),
    Mutant("lsq_plus_fake_quantize", "step <= 0 not refused", 'check_positive_tensor(step.detach(), "step")', "pass",
           "rejects step <= 0"),
    # pact_quantize
    Mutant("pact_quantize", "α gradient counted where x < α", _PACT_RETURN,
           f"{_PACT_RETURN} + (alpha - alpha.detach()) * ((x < alpha).float() - (x > alpha).float())",
           "alpha gradient: 1 where x > alpha, else 0"),
    Mutant("pact_quantize", "x = α counted as clipped (x >= α)", _PACT_CLIP,
           "torch.where(x >= alpha, alpha, torch.relu(x))", "alpha gradient: 1 where x > alpha, else 0"),
    Mutant("pact_quantize", "torch.clamp with a tensor α (gradient split in half at the bounds)", _PACT_CLIP,
           "torch.clamp(x, torch.zeros_like(alpha), alpha)",
           "x gradient: 1 on (0, alpha], 0 elsewhere (x = 0 gives 0, x = alpha gives 1)"),
    Mutant("pact_quantize", "step α / 2^b", "delta = alpha.detach() / (2**bits - 1)",
           "delta = alpha.detach() / 2**bits", "clips to [0, alpha] and quantizes with step alpha / (2^b - 1)"),
    Mutant("pact_quantize", "α's gradient through the step (step not detached)",
           "delta = alpha.detach() / (2**bits - 1)", "delta = alpha / (2**bits - 1)",
           "alpha gradient: 1 where x > alpha, else 0"),
    Mutant("pact_quantize", "no ReLU (negative inputs pass)", "torch.relu(x))", "x)",
           "negative inputs give 0 (PACT replaces the ReLU)"),
    Mutant("pact_quantize", "plain round (no STE)", "ste_round(clipped / delta)", "torch.round(clipped / delta)",
           "x gradient: 1 on (0, alpha], 0 elsewhere (x = 0 gives 0, x = alpha gives 1)"),
    Mutant("pact_quantize", "alpha <= 0 not refused", 'check_positive_tensor(alpha.detach(), "alpha")', "pass",
           "rejects alpha <= 0"),
    # fold_batchnorm
    Mutant("fold_batchnorm", "eps outside the square root", "torch.sqrt(var.float() + eps)",
           "(torch.sqrt(var.float()) + eps)", "eps inside the square root"),
    Mutant("fold_batchnorm", "divides by the variance, not the standard deviation", "torch.sqrt(var.float() + eps)",
           "(var.float() + eps)", "folds the weight: w · gamma / sqrt(var + eps) per output channel"),
    Mutant("fold_batchnorm", "mean not subtracted from the bias", "(b - mean.float())", "b",
           "folds the bias: beta + (b - mean) · gamma / sqrt(var + eps)"),
    Mutant("fold_batchnorm", "factor broadcast over the last axis", _FOLD_W, "weight_folded = weight.float() * factor",
           "linear weights [C, C_in], also square ones"),
    Mutant("fold_batchnorm", "bias None not handled", "b = torch.zeros(channels) if bias is None else bias.float()",
           "b = bias.float()", "bias None means a bias of 0"),
    Mutant("fold_batchnorm", "eps ignored", "torch.sqrt(var.float() + eps)", "torch.sqrt(var.float())",
           "eps is used (default 1e-5)"),
    Mutant("fold_batchnorm", "keeps the input dtype", _FOLD_W,
           "weight_folded = weight * factor.to(weight.dtype).reshape(-1, *([1] * (weight.ndim - 1)))",
           "float32 results of the weight's shape and [C]"),
    Mutant("fold_batchnorm", "scales the weight in place (float() of a float32 tensor is itself)", _FOLD_W,
           "weight_folded = weight.float().mul_(factor.reshape(-1, *([1] * (weight.ndim - 1))))",
           "leaves its inputs unchanged"),
    # bn_fold_statistics
    Mutant("bn_fold_statistics", "unbiased variance", "x.var(dim=dims, unbiased=False)", "x.var(dim=dims)",
           "training: the biased variance (divides by the count, like BatchNorm)"),
    Mutant("bn_fold_statistics", "running statistics in training mode", "    if training:\n", "    if False:\n",
           "training: uses the batch statistics, not the running ones"),
    Mutant("bn_fold_statistics", "batch statistics in eval mode", "    if training:\n", "    if True:\n",
           "eval: returns the running statistics"),
    Mutant("bn_fold_statistics", "reduces over N only", "dims = [d for d in range(conv_out.ndim) if d != 1]",
           "dims = [0]", "training: the batch's per-channel mean over N, H and W"),
    Mutant("bn_fold_statistics", "mean of the per-sample variances", "x.var(dim=dims, unbiased=False)",
           "x.var(dim=dims[1:] or dims, unbiased=False).reshape(-1, x.shape[1]).mean(dim=0)",
           "training: the biased variance (divides by the count, like BatchNorm)"),
    Mutant("bn_fold_statistics", "updates the running statistics in place (like BatchNorm)", _BN_RETURN,
           f"running_mean.mul_(0.9).add_(0.1 * x.mean(dim=dims).detach())\n        {_BN_RETURN}",
           "leaves its inputs unchanged"),
    Mutant("bn_fold_statistics", "keeps the input dtype", "x = conv_out.float()", "x = conv_out",
           "float32 [C] results"),
]
