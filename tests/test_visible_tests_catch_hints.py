"""A visible test that names a mistake (in a hint or its message) must also catch it.

For each lab, ``NAMED`` lists the mutants of the lab's catalogue (tests/mutants/<lab>.py) that a visible test
names, with the words in the visible test that name it. The test runs the released notebook's visible test
cells in-process, as a student's "Run" would, against the worked solution with that one mutant applied, and
requires the visible test to fail. Every ``hint=`` of a visible test must be claimed by an entry, so a new
hint cannot be added without saying which mistake it names and proving that the test catches it.
"""
from __future__ import annotations

import contextlib
import io
import re
import warnings
from pathlib import Path

import pytest

import lowbit
from autograder.mutants import load_catalogue
from autograder.notebook import cell_role, grade_id, parse_notebook, visible_part
from autograder.release import find_labs
from autograder.runner import strip_magics

REPO = Path(__file__).resolve().parents[1]

# (function, mutant mistake, words of the visible test that name the mistake)
NAMED = {
    "lab1_linear": [
        ("linear_quantize", "round half away from zero", "round half to even"),
        ("linear_quantize", "floor instead of round", "round half to even"),
        ("linear_quantize", "zero point added before rounding", "add the zero point after rounding"),
        ("linear_quantize", "missing clamp", "round, then clamp to [0, 7]"),
        ("linear_quantize", "off-by-one quantized range", "2.0 must clamp to 127"),
        ("linear_quantize", "always int8", "signed=False) output"),
        ("linear_dequantize", "uint8 wrap-around", "(uint8 wraps around)"),
        ("linear_dequantize", "forgets the zero point", "subtracting the zero point"),
        ("affine_qparams", "zero point truncated instead of rounded", "round, do not truncate"),
        ("affine_qparams", "sign error in the zero point", "Z = round(q_min - r_min / S)"),
        ("affine_qparams", "range not widened to contain zero", "the range must be widened to contain 0"),
        ("affine_qparams", "zero scale for a constant range", "positive finite scale"),
        ("symmetric_qparams", "restricted and full swapped", "restricted=False"),
        ("symmetric_qparams", "zero scale for zero abs_max", "must not return a zero scale"),
        ("per_channel_qparams", "reduces over the channel axis", "one scale per row"),
        ("per_channel_qparams", "max instead of absolute max", "max |w| over the other axes"),
        ("per_channel_qparams", "zero scale for an all-zero channel", "an all-zero row gets 1.0"),
        ("per_channel_qparams", "full range (divides by 2^(b-1))", "/ 127"),
        ("per_channel_qparams", "ignores the axis argument", "axis=1"),
        ("fake_quantize_per_group", "groups across rows", "groups stay inside a row"),
        ("fake_quantize_per_group", "tail padded with a large value", "tail group has one element"),
        ("fake_quantize_per_group", "full range (divides by 2^(b-1))", "S_g = max|w_g| / 7"),
        ("fake_quantize_per_group", "scales not counted", "one fp32 scale per 2 weights"),
        ("ema_minmax", "initialized at zero", "the first batch initializes"),
        ("ema_minmax", "momentum applied to the old value", "then (-2, 3)"),
        ("ema_minmax", "running min/max instead of a moving average", "then (-2, 3); then (-1, 2)"),
        ("mse_clip_range", "largest error instead of smallest", "it pays to clip the outlier"),
        ("mse_clip_range", "signed levels (2^(b-1) - 1)", "alpha = 0.69"),
        ("mse_clip_range", "error measured without clipping", "it pays to clip the outlier"),
        ("mse_clip_range", "candidate grid off by one", "clipping does not pay off"),
        ("kl_clip_threshold", "never clips", "the outlier is clipped"),
        ("quantized_matmul", "int8 products overflow", "widen to int32/int64 before multiplying"),
        ("quantized_matmul", "forgets the Z_B row-sum term", "subtract both zero points"),
        ("quantized_matmul", "zero points swapped", "subtract both zero points"),
        ("quantized_linear", "per-tensor weight scale", "per output channel"),
        ("quantized_linear", "floor instead of round", "vs the float layer"),
    ],
    "lab2_kmeans": [
        ("linear_init", "max left out (k + 1 points, last dropped)", "both included"),
        ("linear_init", "step (max - min) / k instead of / (k - 1)", "evenly spaced from min to max"),
        ("linear_init", "symmetric range ±max|w|", "evenly spaced from min to max"),
        ("linear_init", "returns float64", "linear_init of a float16 tensor"),
        ("kmeans_1d", "NaN on an empty cluster", "keeps 2.5 (no NaN)"),
        ("kmeans_1d", "empty cluster reset to 0", "keeps 2.5 (no NaN)"),
        ("kmeans_1d", "stops after the first update", "repeat until the labels stop changing"),
        ("kmeans_1d", "labels not updated in the loop (stale labels)", "(nearest final centroid)"),
        ("kmeans_1d", "sorts the weights in place", "leaves an unsorted w unchanged"),
        ("kmeans_1d", "float32 centroids returned as float64", "kmeans_1d centroids"),
        ("kmeans_quantize", "b clusters instead of 2^b", "k = 2^1 = 2 centroids"),
        ("kmeans_quantize", "2^b - 1 clusters", "k = 2^1 = 2 centroids"),
        ("kmeans_quantize", "returns a plain tuple", "must return Codebook(centroids, labels)"),
        ("decode", "returns the indices", "centroids[labels]"),
        ("decode", "no reshape", "then reshape"),
        ("decode", "no size check (reshape error instead of ValueError)", "must raise ValueError"),
        ("compressed_bits", "codebook forgotten", "16 centroids * 32 bits"),
        ("compressed_bits", "float result", "must return a Python int"),
        ("centroid_gradients", "mean instead of sum", "sum (not mean) per cluster"),
        ("centroid_gradients", "bincount without minlength", "its gradient is 0"),
        ("centroid_gradients", "clears grad_w after reading it", "assert_not_modified(centroid_gradients"),
        ("centroid_gradients", "always float32", "of a float64 grad_w"),
        ("update_centroids_mean", "NaN on an empty cluster", "(0 / 0 would be NaN)"),
        ("update_centroids_mean", "empty cluster reset to 0", "keeps its old value 7.0"),
        ("update_centroids_mean", "updates old_centroids in place", "assert_not_modified(update_centroids_mean"),
        ("update_centroids_mean", "returns float64", "result for float32 old_centroids"),
    ],
    "lab3_qat": [
        ("ste_round", "round half away from zero", "torch.round, not floor(x + 0.5)"),
        ("ste_round", "plain round (no straight-through gradient)", "torch.round alone has gradient 0"),
        ("ste_round", "detach on the wrong term (gradient -1)", "keep `+ x` outside"),
        ("fake_quantize_ste", "zero point added before rounding", "then add Z = 1: add the zero"),
        ("fake_quantize_ste", "unclipped STE (gradient passes everywhere)",
         "clipped STE: 0 where round(x/S) + Z was clamped"),
        ("fake_quantize_ste", "inside decided on x / S + Z before rounding", "decide on the rounded"),
        ("fake_quantize_ste", "clip bounds excluded from the inside", "round onto the range's ends 0 and 7"),
        ("lsq_grad_scale", "missing square root", "the square root of the product"),
        ("lsq_grad_scale", "Q_P outside the square root", "the square root of the product"),
        ("lsq_grad_scale", "Q_N instead of Q_P", "Q_P = 2^(4-1) - 1 = 7"),
        ("lsq_grad_scale", "signed ignored (always 2^(b-1) - 1)", "unsigned 4-bit: Q_P = 2^4 - 1 = 15"),
        ("lsq_grad_scale", "signed 1-bit accepted (Q_P = 0)", "signed 1-bit has Q_P = 0"),
        ("lsq_init_step", "mean instead of mean |x|", "(of the absolute values)"),
        ("lsq_init_step", "factor 2 forgotten", "2 · mean(|x|) / sqrt(Q_P)"),
        ("lsq_init_step", "Q_N instead of Q_P", "Q_P = 7"),
        ("lsq_init_step", "signed ignored (always 2^(b-1) - 1)", "unsigned: Q_P = 2^4 - 1 = 15"),
        ("lsq_init_step", "all-zero x not refused", "a zero step divides by zero"),
        ("lsq_fake_quantize", "torch.clamp (gradient 0 on the bounds)", "ends included"),
        ("lsq_fake_quantize", "inside decided on round(x / s) (torch's learnable op)", "not on round(v)"),
        ("lsq_fake_quantize", "∂y/∂s sign flipped at the lower clip (+Q_N instead of -Q_N)", "-Q_N = -4 (negative)"),
        ("lsq_fake_quantize", "gradient scale squared", "(not squared, not missing)"),
        ("lsq_fake_quantize", "gradient scale missing", "(not squared, not missing)"),
        ("lsq_fake_quantize", "Q_N instead of Q_P in the gradient scale", "1 / sqrt(6 · 3)"),
        ("lsq_fake_quantize", "N = x.numel() for per-channel steps", "N counts the values sharing one step"),
        ("lsq_plus_fake_quantize", "z not rounded in the forward pass", "round the zero point in the forward pass"),
        ("lsq_plus_fake_quantize", "z̃ · s treated as a constant (step gradient misses -z̃)",
         "below the range ∂y/∂s = 0 - z = -1"),
        ("lsq_plus_fake_quantize", "z rounded without the STE (no zero-point gradient)",
         "the STE passes it through the"),
        ("lsq_plus_fake_quantize", "zero point's gradient not scaled", "both gradients times g"),
        ("lsq_plus_fake_quantize", "gradient scale missing on the step", "both gradients times g"),
        ("lsq_plus_fake_quantize", "signed Q_P in the gradient scale", "Q_P = 2^2 - 1"),
        ("pact_quantize", "step α / 2^b", "2 / (2^2 - 1) = 2/3"),
        ("pact_quantize", "torch.clamp with a tensor α (gradient split in half at the bounds)",
         "0 for x <= 0, 1 at x = alpha"),
        ("pact_quantize", "α gradient counted where x < α", "not x < alpha"),
        ("pact_quantize", "x = α counted as clipped (x >= α)", "not x = alpha"),
        ("pact_quantize", "α's gradient through the step (step not detached)", "no rounding term"),
        ("fold_batchnorm", "factor broadcast over the last axis", "i.e. axis 0"),
        ("fold_batchnorm", "mean not subtracted from the bias", "subtract the mean from the bias"),
        ("fold_batchnorm", "bias None not handled", "bias None means b = 0"),
        ("fold_batchnorm", "eps ignored", "add eps = 1e-5 to the variance before the square root"),
        ("fold_batchnorm", "eps outside the square root", "before the square root"),
        ("bn_fold_statistics", "running statistics in training mode", "not the running ones"),
        ("bn_fold_statistics", "unbiased variance", "unbiased=False"),
        ("bn_fold_statistics", "batch statistics in eval mode", "folds with the running statistics"),
        ("bn_fold_statistics", "reduces over N only", "per channel over N, H and W"),
    ],
    "lab4_binary": [
        ("binarize", "torch.sign (sign(0) = 0)", "torch.sign(0) is 0"),
        ("binarize", "zero counted as negative (w > 0)", "w > 0 sends 0 to -1"),
        ("binarize", "-0.0 read as negative (signbit)", "torch.signbit(-0.0) is True"),
        ("binarize", "always float32", "build ±1 with w's dtype"),
        ("binarize_stochastic", "u drawn in w's layout: torch.rand_like (global RNG, w's dtype)",
         "u = torch.rand(w.shape, generator=torch.Generator().manual_seed(seed))"),
        ("binarize_stochastic", "probability not clipped (torch.bernoulli on an unclipped p)",
         "p = clip((w + 1) / 2, 0, 1), -1 elsewhere"),
        ("binarize_stochastic", "torch.sigmoid instead of the hard sigmoid",
         "needs the hard sigmoid p = clip((w + 1) / 2, 0, 1)"),
        ("binarize_stochastic", "+1 where u > p (probability 1 - p)", "u > p flips the probability"),
        ("binarize_stochastic", "seed ignored: draws from the global RNG", "not torch.rand(w.shape)"),
        ("binarize_stochastic", "u drawn in w's dtype", "whatever w's dtype"),
        ("binarize_stochastic", "torch.bernoulli on a float64 p (draws doubles, not the stated float32 u)",
         "whatever w's dtype"),
        ("binarize_stochastic", "u <= p (a tie u == p gives +1)", "a tie u == p gives -1"),
        ("sign_ste", "forward torch.sign (sign(0) = 0)", "the value is binarize(x): sign(0) = +1"),
        ("sign_ste", "STE without the |x| <= 1 cancel", "a plain STE without the cancel"),
        ("sign_ste", "cancel exclusive at ±1 (|x| < 1)", "(x = ±1 included)"),
        ("sign_ste", "torch.clamp STE (gradient 0 at exactly ±1)", "(x = ±1 included)"),
        ("bwn_scale", "α over the whole tensor", "not the whole tensor's mean"),
        ("bwn_scale", "α over the whole tensor", "C channels of one weight each"),
        ("bwn_scale", "max |w| instead of the mean", "not max |w|"),
        ("bwn_scale", "mean of w, not |w|", "(not mean w)"),
        ("bwn_scale", "keepdim result [C, 1]", "without keepdim"),
        ("bwn_scale", "reduces the last axis only", "average over axes 1, 2 and 3"),
        ("binarize_weights", "α over the whole tensor", "whole tensor would be 0.625"),
        ("binarize_weights", "torch.sign (a zero weight is dropped)", "times sign(w) with sign(0) = +1"),
        ("binarize_weights", "α detached (XNOR-Net's 1/n term missing)",
         "keep alpha in the graph (no .detach())"),
        ("binarize_weights", "plain straight-through sign (no |w| <= 1 cancel)", "which is cancelled at w = -1.5"),
        ("binarize_weights", "α broadcast along the last axis", "so it scales axis 0, not the last axis"),
        ("twn_threshold", "Δ from max |w| instead of the mean", "not max |w|"),
        ("twn_threshold", "mean of w, not |w|", "absolute values; per row"),
        ("twn_threshold", "Δ over the whole tensor", "not one Delta for the whole tensor"),
        ("twn_threshold", "factor 0.7 forgotten", "Delta_c = 0.7 · mean |w_c|"),
        ("twn_quantize", "inclusive threshold (|w| >= Δ)", "strict threshold: |w| == Delta"),
        ("twn_quantize", "α = mean |w| over the whole channel", "not of all weights"),
        ("twn_quantize", "one α for the whole tensor", "alpha_c from row c only"),
        ("twn_quantize", "NaN for a channel with nothing above Δ (0 / 0)", "0 / 0 is NaN"),
        ("ttq_quantize", "inclusive at +Δ (w >= Δ)", "strict: w = ±0.1 gives 0"),
        ("ttq_quantize", "Δ from mean |w| instead of max", "Delta = t · max|w| = 0.1"),
        ("ttq_quantize", "w_p detached (no gradient for w_p)", "d/dw_p = Σ upstream over w > Delta"),
        ("ttq_quantize", "W_n's gradient with the wrong sign (+Σ g)", "so d/dw_n = -Σ upstream there (= -1)"),
        ("ttq_quantize", "plain STE for the latent weights (gradient g everywhere)", "not 1 everywhere"),
        ("ttq_quantize", "w_p and w_n swapped in the latent gradient", "w_n · g below (0.5 · 1)"),
        ("ttq_quantize", "-w_n in the latent gradient", "w_n · g below (0.5 · 1)"),
        ("ttq_quantize", "no gradient in the middle region", "g in between (ties included)"),
        ("ttq_quantize", "Δ per channel instead of per layer", "not per row"),
        ("ttq_quantize", "value in the scales' dtype", "does not promote the result"),
        ("pack_signs", "bit order reversed (most significant bit first)", "not the highest"),
        ("pack_signs", "sign(0) = 0 (x > 0)", "0 packs as 1"),
        ("pack_signs", "float64 sum of powers of two (bits beyond 2^53 lost, 2^63 overflows)",
         "bit 63 is the sign bit"),
        ("pack_signs", "padding bits set", "padding bits 0"),
        ("pack_signs", "n // 64 words (a partial last word dropped)", "needs ceil(67 / 64) = 2 words"),
        ("xnor_matmul", "n taken as 64 · W", "(not 64 · W)"),
        ("xnor_matmul", "factor 2 missing (n - popcount)", "out = n - 2 · popcount(a XOR b)"),
        ("xnor_matmul", "AND instead of XOR", "popcount(a XOR b)"),
        ("xnor_matmul", "popcounts summed over the wrong axis", "sum over the words (axis -1)"),
    ],
    "lab5_adaround": [
        ("equalization_scales", "w2's range across the wrong axis (flattened without moving axis 1 first)",
         "r2 the range of w2's input channel i"),
        ("equalization_scales", "zero ranges not handled (NaN / inf)", "without NaN or inf from 0 / 0"),
        ("equalization_scales", "s inverted (r2 / √(r1 r2))", "s = sqrt(r1 r2) / r2 (not / r1)"),
        ("equalization_scales", "w1's range over axis 1 only (a linear layer's formula)",
         "every axis of w1 but 0"),
        ("equalization_scales", "s in the weights' dtype", "return float32 scales"),
        ("equalize_pair", "w1 multiplied by s instead of divided", "multiplying w1 and"),
        ("equalize_pair", "bias not rescaled", "ReLU(w1 x / s + b1 / s)"),
        ("equalize_pair", "s along w2's axis 0 (its output channels)", "(column i, axis 1)"),
        ("equalize_pair", "s viewed as [1, C] for every w2 (a linear layer's broadcast)",
         "w1 and b1 divided by s per output channel (axis 0)"),
        ("equalize_pair", "scales argument ignored", "scales=None means s = equalization_scales(w1, w2)"),
        ("equalize_pair", "results always float32", "cast each result back to its input's dtype"),
        ("expected_relu_input", "γ instead of |γ|", "with sigma = |gamma|"),
        ("expected_relu_input", "Φ(−β/σ) instead of 1 − Φ(−β/σ)", "E = beta (1 - Phi(-beta / sigma))"),
        ("expected_relu_input", "the φ term with the variance γ²", "phi its pdf"),
        ("expected_relu_input", "σ = 0 not handled (NaN)", "avoid 0 / 0 (torch.where)"),
        ("expected_relu_input", "σ = 0 gives β (ReLU forgotten)", "E[ReLU(x)] = max(beta, 0)"),
        ("expected_relu_input", "mean through the truncated normal's mean (0 / 0 for β ≪ 0)",
         "no NaN or inf for large |beta / sigma|"),
        ("expected_relu_input", "always float32", "return beta's dtype"),
        ("corrected_bias", "ε = w − w_q", "w - w_q flips the sign"),
        ("corrected_bias", "bias correction sign flipped (bias + ε E[x])", "subtract it"),
        ("corrected_bias", "w_q used instead of the error", "makes E[w_q x + b'] = E[w x + b] exactly"),
        ("corrected_bias", "spatial axes averaged, not summed", "sum eps over the spatial axes"),
        ("corrected_bias", "spatial axes not summed (only the first tap)", "sum eps over the spatial axes"),
        ("corrected_bias", "result in w's dtype, not bias's", "return the bias's dtype"),
        ("rectified_sigmoid", "ζ/γ swapped", "swapping them"),
        ("rectified_sigmoid", "no clamp to [0, 1]", "forgetting the clamp"),
        ("rectified_sigmoid", "defaults hard-coded (ζ, γ ignored)", "not the constants 1.1 and -0.1"),
        ("rectified_sigmoid", "clamp without its gradient's zeros (straight-through clamp)",
         "and 0 where h is clipped"),
        ("rectified_sigmoid", "h detached (no gradient)", "no .detach()"),
        ("rectified_sigmoid", "always float32", "return v's dtype"),
        ("init_v", "rest from round (in [-1/2, 1/2))", "not w - round(w)"),
        ("init_v", "rest from trunc (negative weights)", "also for negative w"),
        ("init_v", "V init of rest without the γ shift (logit of rest)", "init_v inverts h = sigmoid(V) · 1.2 - 0.1"),
        ("init_v", "per-channel scale along the last axis", "not along the last axis"),
        ("init_v", "V in w's dtype", "V is float32 whatever w's dtype"),
        ("init_v", "scale 0 accepted", "a scale must be > 0"),
        ("rounding_regularizer", "the regularizer without the absolute value", "without the absolute value"),
        ("rounding_regularizer", "mean instead of sum", "summed over all 6 elements"),
        ("rounding_regularizer", "computed on detached h (no gradient)", "so that autograd reaches v"),
        ("rounding_regularizer", "|2h − 1|^β without the 1 −", "not |2h - 1| ** beta"),
        ("beta_schedule", "β = 0 during the warm start", "20 during the warm start (step < 0.2 · total)"),
        ("beta_schedule", "β annealed the wrong way (end to start)", "not from 2 to 20"),
        ("beta_schedule", "the warm start ignored (annealing from step 0)", "measured from the end of the warm start"),
        ("beta_schedule", "defaults hard-coded (start, end ignored)", "use the warm_start, start and end arguments"),
        ("beta_schedule", "no range check", "must raise ValueError (0 <= step <= total, total >= 1)"),
        ("adaround_layer", "returns the dequantized weights", "return integers: .to(torch.int64)"),
        ("adaround_layer", "V starts at 0 (every h at 1/2)", "V starts at init_v(weight, scale)"),
    ],
    "lab6_mixed": [
        ("quantize_operand", "zero point added before rounding", "zero point after rounding"),
        ("quantize_operand", "round half away from zero", "round half to even: 0.5 / 1 rounds to 0"),
        ("quantize_operand", "round half away from zero", "torch.round, not floor(x + 0.5)"),
        ("quantize_operand", "2^b levels (scale divided by 2^b)", "not / 2^b"),
        ("quantize_operand", "zero point with the wrong sign (round(r_min / S))", "Z = round(-r_min / S) = 1"),
        ("quantize_operand", "range not widened to contain 0", "the range must be widened to contain 0"),
        ("quantize_operand", "range not widened to contain 0", "r_max = max(max x, 0) = 0"),
        ("quantize_operand", "an all-zero operand gets the floor scale, not 1", "the scale must be 1.0"),
        ("quantize_operand", "codes and zero point returned as floats", "return q.to(torch.int64)"),
        ("quantize_operand", "computed in the input's dtype", "compute in float32"),
        ("quantize_operand", "quantizes x in place", "assert_not_modified(quantize_operand"),
        ("zero_point_matmul", "row and column sums swapped (Z_B·colsum(Q_B), Z_A·rowsum(Q_A))",
         "subtract Z_B times the row sums of Q_A"),
        ("zero_point_matmul", "zero points swapped (Z_A with the row sums of Q_A)",
         "subtract Z_B times the row sums of Q_A"),
        ("zero_point_matmul", "K forgotten in the constant term", "(not Z_A · Z_B alone)"),
        ("zero_point_matmul", "K taken as M (q_a.shape[-2])", "with K = 3"),
        ("zero_point_matmul", "constant term subtracted", "then add K · Z_A · Z_B"),
        ("zero_point_matmul", "row sums over axis 1 (a 2-D formula)", "row sums along the last axis of q_a"),
        ("zero_point_matmul", "codes multiplied in their own dtype (uint8 wraps around)", "overflow uint8 and int16"),
        ("zero_point_matmul", "codes multiplied in float32", "float32 holds integers exactly only up to 2^24"),
        ("zero_point_matmul", "returns float64", "return the product .to(torch.int64)"),
        ("dynamic_quantized_matmul", "S_A · S_A (a's scale twice)", "each operand with its own scale and zero point"),
        ("dynamic_quantized_matmul", "zero points swapped between the operands",
         "each operand with its own scale and zero point"),
        ("dynamic_quantized_matmul", "zero points ignored (Q_A Q_B)", "values on the grid are exact"),
        ("dynamic_quantized_matmul", "only one scale applied", "S_A · S_B (once each)"),
        ("dynamic_quantized_matmul", "bits ignored (always 8)", "quantize both operands at `bits` (here 4)"),
        ("dynamic_quantized_matmul", "result in the operands' dtype", "return float32 whatever the operands' dtype"),
        ("dynamic_quantized_matmul", "a flattened to [rows, K] (a linear layer's reshape)",
         "(no reshape to [rows, K])"),
        ("multiply_count", "operations counted instead of multiplications (one per product)",
         "not one operation per product"),
        ("multiply_count", "multiply-adds counted as 2 FLOPs", "count multiplications"),
        ("multiply_count", "K forgotten (M·N outputs)", "K = 64 is a factor too"),
        ("multiply_count", "batch dims ignored", "is a matrix product of its own"),
        ("multiply_count", "both operands' batch dims multiplied", "(not 4 · 4 from multiplying both operands'"),
        ("multiply_count", "only a's batch dims", "the batch dims of both operands broadcast"),
        ("multiply_count", "mismatched K accepted", "a K mismatch"),
        ("sensitivity_ranking", "ranking ascending instead of descending", "(descending, not ascending)"),
        ("sensitivity_ranking", "ties: higher index first (an ascending sort reversed)",
         "keeps the lower index first"),
        ("sensitivity_ranking", "ties: higher index first (an ascending sort reversed)",
         "equal accuracies keep their order"),
        ("sensitivity_ranking", "ranks instead of indices", "accuracies or each product's rank"),
        ("sensitivity_ranking", "the sorted accuracies instead of indices",
         "return the 0-based indices p, not the sorted"),
        ("sensitivity_ranking", "1-based indices", "return the 0-based indices p"),
        ("sensitivity_ranking", "a tensor instead of a list of ints", "must return a list of Python ints"),
        ("sensitivity_ranking", "NaN accepted", "a NaN accuracy"),
        ("products_within_budget", "stops at the first dip", "the curve is not monotone"),
        ("products_within_budget", "index into curve[1:] (one too few)", "k indexes curve itself"),
        ("products_within_budget", "budget read as percentage points (budget / 100)",
         "budget is a fraction (0.125 = 12.5 points)"),
        ("products_within_budget", "> instead of ≥", "(>=, not >)"),
        ("products_within_budget", "relative budget baseline · (1 − budget)", "not baseline · (1 - budget)"),
        ("products_within_budget", "counts the points within the budget", "not how many points are above"),
        ("products_within_budget", "negative budget accepted", "a negative budget"),
        ("allocate_bits", "greedy instead of optimal allocation", "(greedy) ends at"),
        ("allocate_bits", "returns choice indices instead of bits", "the optimum [4, 2, 2]"),
        ("allocate_bits", "maximizes the summed sensitivity", "minimize the sum of sensitivities"),
        ("allocate_bits", "costs ignored (a budget on bits per product)", "weighting each product by its cost"),
        ("allocate_bits", "backtrack forgets the gcd", "read the choices back in the same units"),
        ("allocate_bits", "budget exclusive (Σ costs·bits < budget)",
         "a budget equal to sum(costs) · min(choices) is feasible"),
        ("allocate_bits", "maximizes the summed sensitivity", "allows every product its least sensitive width"),
        ("allocate_bits", "maximizes the summed sensitivity", "sensitivities may be negative"),
        ("allocate_bits", "choices fixed at (8, 4, 2)", "use the choices argument"),
        ("allocate_bits", "infeasible budget answered with every product at the lowest bits", "below the minimum"),
        ("allocate_bits", "infeasible budget refused without saying the minimum", "the error must say the minimum"),
    ],
}
# Hints that only work the expected value out and name no mistake of the catalogue.
EXPLAINS_ONLY = {
    "lab1_linear": [],
    "lab2_kmeans": [("kmeans_1d", "the first cluster's mean is (0 + .1 + .2 + .9 + 1) / 5")],
    "lab3_qat": [("lsq_fake_quantize", "clamp to [-4, 3] first, then")],
    "lab4_binary": [("pack_signs", "each row is packed on its own along the last axis")],
    "lab5_adaround": [],
    "lab6_mixed": [],
}
HINT = re.compile(r"hint=\s*\(?\s*\"([^\"]*)\"")


def _lab_cells(lab: str) -> tuple[list[str], list[tuple[str, str]], dict[str, str]]:
    """(setup sources, (grade_id, solution source) in order, test grade_id -> visible source)."""
    source = parse_notebook((REPO / "solutions" / lab / f"{lab}.ipynb").read_bytes())
    released = parse_notebook((REPO / "labs" / lab / f"{lab}.ipynb").read_bytes())
    setup = [c.source for c in released.cells if cell_role(c) == "setup"]
    solutions = [(grade_id(c), c.source) for c in source.cells if cell_role(c) == "solution"]
    tests = {grade_id(c): visible_part(c.source) for c in released.cells if cell_role(c) == "test"}
    return setup, solutions, tests


@pytest.fixture(scope="module", params=sorted(lab for lab in NAMED if lab in find_labs(REPO)))
def lab(request):  # a lab whose solution is not in this checkout yet has nothing to run
    """The lab's cells and the namespace its setup cells leave (run once, with grading-sized data)."""
    setup, solutions, tests = _lab_cells(request.param)
    namespace: dict = {}
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(io.StringIO()):
        patch.setattr(lowbit, "GRADING", True)
        for cell in setup:
            exec(compile(strip_magics(cell), "<setup>", "exec"), namespace)  # noqa: S102 - the course's own cell
    return request.param, namespace, solutions, tests


def _visible_test_fails(namespace: dict, solutions: list[tuple[str, str]], test: str, mutant=None) -> str | None:
    """Run every answer cell (one edited by ``mutant``) and then the visible test; the failure, or None."""
    namespace = dict(namespace)
    for gid, cell in solutions:
        if mutant is not None and gid == mutant.function:
            assert cell.count(mutant.old) == 1, f"mutant {mutant.mistake!r} does not apply to {gid}"
            cell = cell.replace(mutant.old, mutant.new, 1)
        exec(compile(cell, f"<{gid}>", "exec"), namespace)  # noqa: S102 - the course's own cells
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            exec(compile(test, "<visible test>", "exec"), namespace)  # noqa: S102
    except Exception as exc:  # noqa: BLE001 - any failure of the visible test is what we want
        return f"{type(exc).__name__}: {exc}"
    return None


def test_solution_passes_every_visible_test(lab):
    name, namespace, solutions, tests = lab
    failures = {gid: _visible_test_fails(namespace, solutions, source) for gid, source in tests.items()}
    assert {gid: f for gid, f in failures.items() if f} == {}


def test_every_hint_is_claimed_and_named_words_are_in_the_visible_test(lab):
    name, _, _, tests = lab
    mutants = {(m.function, m.mistake) for m in load_catalogue(REPO / "tests" / "mutants" / f"{name}.py")}
    unknown = [(f, m) for f, m, _ in NAMED[name] if (f, m) not in mutants]
    assert unknown == [], f"entries naming no mutant of the catalogue: {unknown}"
    absent = [(f, words) for f, _, words in NAMED[name] if words not in tests[f"test_{f}"]]
    assert absent == [], f"named words missing from the visible test: {absent}"
    claimed = {(f, words) for f, _, words in NAMED[name]} | set(EXPLAINS_ONLY[name])
    unclaimed = [(gid, hint) for gid, source in tests.items() for hint in HINT.findall(source)
                 if not any(f == gid.removeprefix("test_") and words in hint for f, words in claimed)]
    assert unclaimed == [], f"hints that name no mutant in NAMED (add the mistake they name): {unclaimed}"


def test_every_named_mistake_fails_its_visible_test(lab):
    name, namespace, solutions, tests = lab
    catalogue = {(m.function, m.mistake): m for m in load_catalogue(REPO / "tests" / "mutants" / f"{name}.py")}
    blessed = [f"{function}: {mistake} (named by {words!r})" for function, mistake, words in NAMED[name]
               if _visible_test_fails(namespace, solutions, tests[f"test_{function}"],
                                      catalogue[function, mistake]) is None]
    assert blessed == [], "visible tests that name a mistake but pass it:\n" + "\n".join(blessed)
