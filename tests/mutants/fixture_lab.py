"""Realistic wrong answers for the autograder's fixture lab, each with the hidden check that must catch it."""
from __future__ import annotations

from autograder.mutants import Mutant

MUTANTS = [
    # symmetric_scale
    Mutant("symmetric_scale", "max instead of max |x|", "x.abs().max()", "x.max()",
           "uses the largest magnitude (negative values count)"),
    Mutant("symmetric_scale", "divides by 2^b - 1 (unsigned levels)", "(2 ** (bits - 1) - 1)", "(2 ** bits - 1)",
           "divides by 2^(b-1) - 1 for every bit width"),
    Mutant("symmetric_scale", "divides by 2^(b-1)", "(2 ** (bits - 1) - 1)", "(2 ** (bits - 1))",
           "divides by 2^(b-1) - 1 for every bit width"),
    Mutant("symmetric_scale", "returns a Python float", "return max_abs / (2 ** (bits - 1) - 1)",
           "return float(max_abs / (2 ** (bits - 1) - 1))", "returns a 0-dim float32 tensor"),
    Mutant("symmetric_scale", "no check for an all-zero input", 'raise ValueError("x is all zeros")', "pass",
           "all-zero input raises ValueError"),
    Mutant("symmetric_scale", "mean magnitude instead of max", "x.abs().max()", "x.abs().mean()",
           "uses the largest magnitude (negative values count)"),
    # quantize_symmetric
    Mutant("quantize_symmetric", "floor instead of round", "torch.round(x / scale)", "torch.floor(x / scale)",
           "rounds half to even"),
    Mutant("quantize_symmetric", "round half away from zero", "torch.round(x / scale)",
           "torch.sign(x / scale) * torch.floor((x / scale).abs() + 0.5)", "rounds half to even"),
    Mutant("quantize_symmetric", "no clamp", "torch.clamp(torch.round(x / scale), q_min, q_max)",
           "torch.round(x / scale)", "clamps to the signed range [-2^(b-1), 2^(b-1) - 1]"),
    Mutant("quantize_symmetric", "symmetric clamp loses -2^(b-1)", "q_min, q_max = -(2 ** (bits - 1)),",
           "q_min, q_max = -(2 ** (bits - 1)) + 1,", "clamps to the signed range [-2^(b-1), 2^(b-1) - 1]"),
    Mutant("quantize_symmetric", "returns float codes", ".to(torch.int8)", "", "returns int8 of the input's shape"),
    Mutant("quantize_symmetric", "multiplies by the scale", "x / scale", "x * scale",
           "matches the reference on random data"),
    Mutant("quantize_symmetric", "divides the input in place", "torch.round(x / scale)", "torch.round(x.div_(scale))",
           "returns int8 of the input's shape"),
    # dequantize
    Mutant("dequantize", "divides by the scale", "* scale", "/ scale", "multiplies by the scale"),
    Mutant("dequantize", "forgets the scale", "q.to(torch.float32) * scale", "q.to(torch.float32)",
           "multiplies by the scale"),
    Mutant("dequantize", "returns float64", "q.to(torch.float32) * scale", "q.to(torch.float64) * scale",
           "returns float32 of q's shape"),
    Mutant("dequantize", "stays in integers", "q.to(torch.float32) * scale", "(q * scale).to(torch.int8)",
           "returns float32 of q's shape"),
    Mutant("dequantize", "adds a zero point of 1", "q.to(torch.float32) * scale", "(q.to(torch.float32) + 1) * scale",
           "multiplies by the scale"),
    Mutant("dequantize", "float16 result", "q.to(torch.float32) * scale", "q.to(torch.float16) * scale.half()",
           "returns float32 of q's shape"),
]
