"""Realistic wrong answers for Lab 6, each with the hidden check that must catch it.

A mutant is a textual edit of the solution cell (``old`` → ``new``, applied once to the cell's source); the grader
must take the cell's points away and name ``check`` in the feedback. The issue's mistakes are all here: zero-point
terms with swapped row / column sums, K forgotten, operations counted instead of multiplications, greedy instead of
optimal allocation, the ranking ascending instead of descending; the rest are the slips of each formula (rounding,
the range widened to contain 0, a constant operand, the batch dims, ≥ against >, a relative budget, ...).

Order matters: the mutant test grades round r with the r-th mutant of every function at once, and
``dynamic_quantized_matmul`` calls the submission's own ``quantize_operand`` and ``zero_point_matmul``. Two swaps of
the zero points in the same round cancel (the caller passes them swapped, the callee swaps them back), so the swap in
``dynamic_quantized_matmul`` sits beside ``zero_point_matmul``'s "K forgotten", never beside a swap.
"""
from __future__ import annotations

from autograder.mutants import Mutant

_QO_RANGE = ("r_min = torch.clamp(r.min(), max=0.0)                          # the range always contains 0\n"
             "    r_max = torch.clamp(r.max(), min=0.0)")
_QO_SCALE = "scale = torch.where(width > 0, (width / q_max).clamp(min=MIN_SCALE), torch.ones_like(width))"
_QO_ZERO = "zero_point = torch.clamp(torch.round(-r_min / scale), 0, q_max)"
_QO_Q = "q = torch.clamp(torch.round(r / scale) + zero_point, 0, q_max)"
_QO_RETURN = "return q.to(torch.int64), scale, zero_point.to(torch.int64)"
_QO_FLOAT = "r = x.detach().to(torch.float32)"
_ZP_SUMS = ("row_sums = a.sum(dim=-1, keepdim=True)                        # [..., M, 1]\n"
            "    col_sums = b.sum(dim=-2, keepdim=True)                        # [..., 1, N]")
_ZP_ROW = "row_sums = a.sum(dim=-1, keepdim=True)"
_ZP_PRODUCT = "product = a @ b - zb * row_sums - za * col_sums + k * za * zb"
_ZP_FLOAT = "a, b = q_a.to(torch.float64), q_b.to(torch.float64)"
_ZP_RETURN = "return product.to(torch.int64)"
_DQ_QUANTIZE = "q_a, s_a, z_a = quantize_operand(a, bits)\n    q_b, s_b, z_b = quantize_operand(b, bits)"
_DQ_INTEGER = "integer = zero_point_matmul(q_a, z_a, q_b, z_b)"
_DQ_RETURN = "return (s_a.double() * s_b.double() * integer.double()).to(torch.float32)"
_MC_RETURN = "return math.prod(batch) * m * k * n"
_MC_K = "if k != k_b:"
_SR_RETURN = "return torch.sort(acc, descending=True, stable=True).indices.tolist()"
_SR_NAN = "if bool(torch.isnan(acc).any()):"
_PB_WITHIN = "within = torch.nonzero(values >= float(baseline) - float(budget)).flatten()"
_PB_RETURN = "return int(within.max()) if within.numel() else 0"
_PB_NEGATIVE = "if not float(budget) >= 0:"
_AB_MIN = "best, picks[p] = candidates.min(dim=0)"
_AB_CAPACITY = "capacity = min(budget, sum(max(row) for row in weights)) // g"
_AB_APPEND = "bits.append(widths[c])"
_AB_BACK = "w -= weights[p][c] // g"
_AB_WEIGHTS = "weights = [[c * b for b in widths] for c in n]"
_AB_INFEASIBLE = "if budget < minimum:\n        raise ValueError("
_AB_MESSAGE = ('raise ValueError(f"budget {budget} is infeasible: even every product at {min(widths)} bits needs "\n'
               '                         f"sum(costs) * {min(widths)} = {minimum}; give a budget of at least '
               '{minimum}")')
#: The dynamic program, from the table to the backtrack: replaced by a greedy allocation in one mutant.
_AB_DP = "    best = torch.zeros(capacity + 1, dtype=torch.float64)"
_AB_GREEDY = """    order = sorted(range(len(widths)), key=lambda c: -widths[c])       # widest first
    current = [order[0]] * len(n)
    spent = sum(c * widths[order[0]] for c in n)
    while spent > budget:                       # lower the cheapest step in sensitivity per saved multiply
        step = None
        for p in range(len(n)):
            rank = order.index(current[p])
            if rank + 1 < len(order):
                lower = order[rank + 1]
                saved = n[p] * (widths[current[p]] - widths[lower])
                ratio = float(s[p, lower] - s[p, current[p]]) / saved
                if step is None or ratio < step[0]:
                    step = (ratio, p, lower, saved)
        _, p, lower, saved = step
        current[p] = lower
        spent -= saved
    return [widths[c] for c in current]
    best = torch.zeros(capacity + 1, dtype=torch.float64)"""

#: Names of hidden checks that several mutants must fail.
_C_QO_BASIC = ("S = (r_max − r_min) / (2^b − 1), Z = round(−r_min / S), q = clamp(round(x / S) + Z, 0, "
               "2^b − 1) for operands of both signs")
_C_ZP_SUMS = ("Z_B multiplies the row sums of Q_A [M, 1], Z_A the column sums of Q_B [1, N] (M ≠ N, one zero point "
              "at a time)")
_C_MC_BASIC = ("M·K·N multiplications for a [M, K] @ b [K, N] (not M·N outputs, not 2·M·K·N FLOPs, not one "
               "operation per product)")
_C_AB_OPTIMAL = ("optimal: the least summed sensitivity within the budget (brute force over every allocation of "
                 "small problems)")
_C_AB_INFEASIBLE = ("refuses an infeasible budget (below Σ costs·min(choices), and 0) with a ValueError that states "
                    "the minimum budget")

MUTANTS = [
    # quantize_operand
    Mutant("quantize_operand", "range not widened to contain 0", _QO_RANGE, "r_min = r.min()\n    r_max = r.max()",
           "the range is widened to contain 0: an all-positive operand (after a ReLU or softmax) has Z = 0, an "
           "all-negative one Z = 2^b − 1"),
    Mutant("quantize_operand", "round half away from zero", _QO_Q,
           "q = torch.clamp(torch.floor(r / scale + 0.5) + zero_point, 0, q_max)",
           "rounds half to even, and adds Z after rounding (x / S on exact halves, odd Z)"),
    Mutant("quantize_operand", "zero point added before rounding", _QO_Q,
           "q = torch.clamp(torch.round(r / scale + zero_point), 0, q_max)",
           "rounds half to even, and adds Z after rounding (x / S on exact halves, odd Z)"),
    Mutant("quantize_operand", "2^b levels (scale divided by 2^b)", _QO_SCALE,
           "scale = torch.where(width > 0, (width / 2 ** bits).clamp(min=MIN_SCALE), torch.ones_like(width))",
           _C_QO_BASIC),
    Mutant("quantize_operand", "an all-zero operand gets the floor scale, not 1", _QO_SCALE,
           "scale = (width / q_max).clamp(min=MIN_SCALE)",
           "a constant operand: all-zero gives S = 1, Z = 0; one value c everywhere the range [min(c, 0), max(c, 0)]"),
    Mutant("quantize_operand", "scale not floored at MIN_SCALE", _QO_SCALE,
           "scale = torch.where(width > 0, width / q_max, torch.ones_like(width))",
           "the scale is floored at lowbit.quant.linear.MIN_SCALE (an operand of subnormal floats)"),
    Mutant("quantize_operand", "zero point with the wrong sign (round(r_min / S))", _QO_ZERO,
           "zero_point = torch.clamp(torch.round(r_min / scale), 0, q_max)",
           _C_QO_BASIC),
    Mutant("quantize_operand", "bits limited to 1..8", "bits = check_bits(bits, low=1, high=16)",
           "bits = check_bits(bits, low=1, high=8)", "every bit width from 1 to 16"),
    Mutant("quantize_operand", "computed in the input's dtype", _QO_FLOAT, "r = x.detach()",
           "float16, bfloat16 and float64 operands are computed in float32 (int64 q and Z, float32 S)"),
    Mutant("quantize_operand", "codes and zero point returned as floats", _QO_RETURN, "return q, scale, zero_point",
           "float16, bfloat16 and float64 operands are computed in float32 (int64 q and Z, float32 S)"),
    Mutant("quantize_operand", "quantizes x in place", _QO_Q,
           "q = r.div_(scale).round_().add_(zero_point).clamp_(0, q_max)", "leaves its input unchanged"),
    # zero_point_matmul
    Mutant("zero_point_matmul", "row and column sums swapped (Z_B·colsum(Q_B), Z_A·rowsum(Q_A))", _ZP_SUMS,
           "row_sums = b.sum(dim=-2, keepdim=True)                        # [..., M, 1]\n"
           "    col_sums = a.sum(dim=-1, keepdim=True)                        # [..., 1, N]",
           _C_ZP_SUMS),
    Mutant("zero_point_matmul", "zero points swapped (Z_A with the row sums of Q_A)", _ZP_PRODUCT,
           "product = a @ b - za * row_sums - zb * col_sums + k * za * zb",
           _C_ZP_SUMS),
    Mutant("zero_point_matmul", "K forgotten in the constant term", _ZP_PRODUCT,
           "product = a @ b - zb * row_sums - za * col_sums + za * zb",
           "the constant term is K·Z_A·Z_B (K = the shared inner dimension)"),
    Mutant("zero_point_matmul", "K taken as M (q_a.shape[-2])", _ZP_PRODUCT,
           "product = a @ b - zb * row_sums - za * col_sums + q_a.shape[-2] * za * zb",
           "the constant term is K·Z_A·Z_B (K = the shared inner dimension)"),
    Mutant("zero_point_matmul", "constant term subtracted", _ZP_PRODUCT,
           "product = a @ b - zb * row_sums - za * col_sums - k * za * zb",
           "the constant term is K·Z_A·Z_B (K = the shared inner dimension)"),
    Mutant("zero_point_matmul", "row sums over axis 1 (a 2-D formula)", _ZP_ROW,
           "row_sums = a.sum(dim=1, keepdim=True)",
           "batched 4-D attention codes [N, H, T, d] @ [N, H, d, T] (sums over the last two axes)"),
    Mutant("zero_point_matmul", "codes multiplied in float32", _ZP_FLOAT,
           "a, b = q_a.to(torch.float32), q_b.to(torch.float32)",
           "exact for long rows of 8-bit codes and for 16-bit codes (float32 products would round)"),
    Mutant("zero_point_matmul", "codes multiplied in their own dtype (uint8 wraps around)", _ZP_FLOAT,
           "a, b = q_a, q_b", "uint8 and int32 codes give the exact int64 result (no uint8 wrap-around)"),
    Mutant("zero_point_matmul", "returns float64", _ZP_RETURN, "return product",
           "(Q_A − Z_A)(Q_B − Z_B) exactly, both zero points non-zero (int64 [M, N])"),
    # dynamic_quantized_matmul
    Mutant("dynamic_quantized_matmul", "S_A · S_A (a's scale twice)", _DQ_RETURN,
           "return (s_a.double() * s_a.double() * integer.double()).to(torch.float32)",
           "S_A·S_B·(Q_A − Z_A)(Q_B − Z_B) = fake(a) @ fake(b), both operands of both signs"),
    Mutant("dynamic_quantized_matmul", "zero points ignored (Q_A Q_B)", _DQ_INTEGER,
           "integer = zero_point_matmul(q_a, 0, q_b, 0)",
           "S_A·S_B·(Q_A − Z_A)(Q_B − Z_B) = fake(a) @ fake(b), both operands of both signs"),
    Mutant("dynamic_quantized_matmul", "zero points swapped between the operands", _DQ_INTEGER,
           "integer = zero_point_matmul(q_a, z_b, q_b, z_a)",
           "activations after a ReLU (Z_A = 0) times weights of both signs, and the reverse"),
    Mutant("dynamic_quantized_matmul", "only one scale applied", _DQ_RETURN,
           "return (s_a.double() * integer.double()).to(torch.float32)",
           "S_A·S_B·(Q_A − Z_A)(Q_B − Z_B) = fake(a) @ fake(b), both operands of both signs"),
    Mutant("dynamic_quantized_matmul", "bits ignored (always 8)", _DQ_QUANTIZE,
           "q_a, s_a, z_a = quantize_operand(a, 8)\n    q_b, s_b, z_b = quantize_operand(b, 8)",
           "bits is used: every width from 1 to 16 on the same operands"),
    Mutant("dynamic_quantized_matmul", "result in the operands' dtype", _DQ_RETURN,
           "return (s_a.double() * s_b.double() * integer.double()).to(a.dtype)",
           "a float32 result for float16, bfloat16 and float64 operands"),
    Mutant("dynamic_quantized_matmul", "a flattened to [rows, K] (a linear layer's reshape)", _DQ_QUANTIZE,
           "q_a, s_a, z_a = quantize_operand(a.reshape(-1, a.shape[-1]), bits)\n"
           "    q_b, s_b, z_b = quantize_operand(b, bits)",
           "batched 4-D attention [N, H, T, d] @ [N, H, d, T] and softmax(·) @ v, one scale per tensor"),
    # multiply_count
    Mutant("multiply_count", "K forgotten (M·N outputs)", _MC_RETURN, "return math.prod(batch) * m * n",
           _C_MC_BASIC),
    Mutant("multiply_count", "multiply-adds counted as 2 FLOPs", _MC_RETURN,
           "return 2 * math.prod(batch) * m * k * n",
           _C_MC_BASIC),
    Mutant("multiply_count", "operations counted instead of multiplications (one per product)", _MC_RETURN,
           "return 1",
           _C_MC_BASIC),
    Mutant("multiply_count", "batch dims ignored", _MC_RETURN, "return m * k * n",
           "batched 4-D attention [N, H, T, d] @ [N, H, d, T]: the batch dims multiply"),
    Mutant("multiply_count", "only a's batch dims", _MC_RETURN, "return math.prod(batch_a) * m * k * n",
           "batch dims broadcast as in torch.matmul ([T, K] @ [H, K, N], [N, 1, T, d] @ [H, d, T])"),
    Mutant("multiply_count", "both operands' batch dims multiplied", _MC_RETURN,
           "return math.prod(batch_a) * math.prod(batch_b) * m * k * n",
           "batched 4-D attention [N, H, T, d] @ [N, H, d, T]: the batch dims multiply"),
    Mutant("multiply_count", "mismatched K accepted", _MC_K, "if False:",
           "rejects mismatched K, shapes with fewer than 2 dims and batch dims that do not broadcast (ValueError)"),
    # sensitivity_ranking
    Mutant("sensitivity_ranking", "ranking ascending instead of descending", _SR_RETURN,
           "return torch.sort(acc, descending=False, stable=True).indices.tolist()",
           "indices from the highest accuracy (least sensitive) to the lowest"),
    Mutant("sensitivity_ranking", "ties: higher index first (an ascending sort reversed)", _SR_RETURN,
           "return torch.sort(acc, stable=True).indices.flip(0).tolist()", "ties: the lower index first"),
    Mutant("sensitivity_ranking", "ranks instead of indices", _SR_RETURN,
           "return torch.sort(acc, descending=True, stable=True).indices.argsort().tolist()",
           "indices from the highest accuracy (least sensitive) to the lowest"),
    Mutant("sensitivity_ranking", "the sorted accuracies instead of indices", _SR_RETURN,
           "return torch.sort(acc, descending=True, stable=True).values.tolist()",
           "indices from the highest accuracy (least sensitive) to the lowest"),
    Mutant("sensitivity_ranking", "a tensor instead of a list of ints", _SR_RETURN,
           "return torch.sort(acc, descending=True, stable=True).indices",
           "indices from the highest accuracy (least sensitive) to the lowest"),
    Mutant("sensitivity_ranking", "1-based indices", _SR_RETURN,
           "return (torch.sort(acc, descending=True, stable=True).indices + 1).tolist()",
           "indices from the highest accuracy (least sensitive) to the lowest"),
    Mutant("sensitivity_ranking", "NaN accepted", _SR_NAN, "if False:",
           "rejects empty accuracies and NaN (ValueError)"),
    # products_within_budget
    Mutant("products_within_budget", "stops at the first dip", _PB_RETURN,
           "below = (values < float(baseline) - float(budget)).nonzero().flatten()\n"
           "    return max(int(below.min()) - 1, 0) if below.numel() else len(values) - 1",
           "the largest k with curve[k] ≥ baseline − budget, past dips below it (the curve is not monotone)"),
    Mutant("products_within_budget", "> instead of ≥", _PB_WITHIN,
           "within = torch.nonzero(values > float(baseline) - float(budget)).flatten()",
           "a point exactly at baseline − budget is within the budget (≥, not >)"),
    Mutant("products_within_budget", "relative budget baseline · (1 − budget)", _PB_WITHIN,
           "within = torch.nonzero(values >= float(baseline) * (1 - float(budget))).flatten()",
           "budget is an absolute drop in accuracy (a fraction: 0.02 = 2 points), not a relative one"),
    Mutant("products_within_budget", "budget read as percentage points (budget / 100)", _PB_WITHIN,
           "within = torch.nonzero(values >= float(baseline) - float(budget) / 100).flatten()",
           "budget is an absolute drop in accuracy (a fraction: 0.02 = 2 points), not a relative one"),
    Mutant("products_within_budget", "counts the points within the budget", _PB_RETURN,
           "return int(within.numel())",
           "the largest k with curve[k] ≥ baseline − budget, past dips below it (the curve is not monotone)"),
    Mutant("products_within_budget", "index into curve[1:] (one too few)", _PB_RETURN,
           "return max(int(within.max()) - 1, 0) if within.numel() else 0",
           "the largest k with curve[k] ≥ baseline − budget, past dips below it (the curve is not monotone)"),
    Mutant("products_within_budget", "negative budget accepted", _PB_NEGATIVE, "if False:",
           "rejects an empty curve, NaN and a negative budget (ValueError)"),
    # allocate_bits
    Mutant("allocate_bits", "greedy instead of optimal allocation", _AB_DP, _AB_GREEDY,
           "beats greedy: one wide product against many narrow ones"),
    Mutant("allocate_bits", "maximizes the summed sensitivity", _AB_MIN,
           "best, picks[p] = torch.where(candidates.isinf(), -math.inf, candidates).max(dim=0)",
           _C_AB_OPTIMAL),
    Mutant("allocate_bits", "budget exclusive (Σ costs·bits < budget)", _AB_CAPACITY,
           "capacity = min(budget - 1, sum(max(row) for row in weights)) // g",
           "exactly the minimum budget Σ costs·min(choices): every product at the lowest bits"),
    Mutant("allocate_bits", "choices fixed at (8, 4, 2)", _AB_APPEND, "bits.append((8, 4, 2)[c])",
           "other choices, in any order: (4, 8), (2, 3, 4, 6), (16, 8, 4, 2)"),
    Mutant("allocate_bits", "returns choice indices instead of bits", _AB_APPEND, "bits.append(c)",
           _C_AB_OPTIMAL),
    Mutant("allocate_bits", "backtrack forgets the gcd", _AB_BACK, "w -= weights[p][c]",
           _C_AB_OPTIMAL),
    Mutant("allocate_bits", "costs ignored (a budget on bits per product)", _AB_WEIGHTS,
           "weights = [[b for b in widths] for c in n]",
           _C_AB_OPTIMAL),
    Mutant("allocate_bits", "infeasible budget answered with every product at the lowest bits", _AB_INFEASIBLE,
           "if budget < minimum:\n        return [min(widths)] * len(n)\n        raise ValueError(",
           _C_AB_INFEASIBLE),
    Mutant("allocate_bits", "infeasible budget refused without saying the minimum", _AB_MESSAGE,
           'raise ValueError("the budget is too small")',
           _C_AB_INFEASIBLE),
]
