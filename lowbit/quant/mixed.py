"""Mixed precision by sensitivity: every matrix product of a transformer quantized on its own, ranked, and bits
allocated under a multiply budget (Lab 6, the capstone).

A product C = A·B with both operands quantized per tensor (unsigned, min-max; r = S (Q − Z)) is

    C = S_A S_B (Q_A − Z_A)(Q_B − Z_B) = S_A S_B (Q_A Q_B − Z_B·rowsum(Q_A) − Z_A·colsum(Q_B) + K·Z_A Z_B)

(Jacob et al. 2018, eq. 7; ``lowbit.quant.integer`` for the 2-D int32 form of Lab 1). Quantizing one product at a
time measures how much accuracy each one costs; the ranking, a greedy switch-on curve and an exact bit allocation
(a multiple-choice knapsack over {8, 4, 2} bits per product, solved by dynamic programming) follow.

- ``quantize_operand``, ``zero_point_matmul``, ``dynamic_quantized_matmul``, ``multiply_count``,
  ``sensitivity_ranking``, ``products_within_budget``, ``allocate_bits``: the graded functions of Lab 6 (plain
  tensors and numbers in and out);
- the rest is the provided machinery the lab, the study and the grader build on (below the graded section); it
  calls a graded function only through a ``functions`` mapping resolved by dotted name
  (``lowbit.quant.graded.resolve_function``), never by a static reference.
"""
from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from functools import reduce
from numbers import Integral, Real
from typing import NamedTuple, Union

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from lowbit import models
from lowbit.models import MatMul, matmul_names
from lowbit.quant import kmeans
from lowbit.quant.graded import LAB6_REFERENCES, check_functions, resolve_function
from lowbit.quant.integer import _exact_matmul
from lowbit.quant import fakequant
from lowbit.quant.granularity import fake_quantize_weight
from lowbit.quant.linear import affine_qparams
from lowbit.quant.modules import quantizable_layers
from lowbit.quant.validate import check_bits, check_float_tensor, check_int_tensor
from lowbit.train import evaluate

__all__ = ["MAX_OPERAND_BITS", "CHOICES", "quantize_operand", "zero_point_matmul", "dynamic_quantized_matmul",
           "multiply_count", "sensitivity_ranking", "products_within_budget", "allocate_bits",
           "QuantizedProduct", "product_modules", "quantize_products", "set_product_bits", "product_bits",
           "product_costs", "BATCH_SIZE", "accuracy", "config_accuracy", "single_product_accuracies", "greedy_curve",
           "Fractions", "budget_fractions", "first_dip", "drop_table", "additive_prediction", "greedy_allocation",
           "centred_codes", "HESSIAN_SAMPLES", "HESSIAN_IMAGES", "hessian_traces", "hawq_scores", "spearman",
           "CNN_METHODS", "CNNPoint", "cnn_layer_weights", "cnn_policy_size", "cnn_policy_accuracy",
           "cnn_layer_sensitivities", "pareto_front", "cnn_pareto"]

#: ``quantize_operand`` accepts 1..16 bits (codes and K·q_max² stay exact in float64 for any realistic K).
MAX_OPERAND_BITS = 16
#: The bit widths of Lab 6's allocation, widest first.
CHOICES = (8, 4, 2)
#: ``allocate_bits`` refuses a dynamic-programming table larger than this (entries, products × capacity).
MAX_TABLE = 200_000_000


# =============================================================================================== graded
def quantize_operand(x: Tensor, bits: int) -> tuple[Tensor, Tensor, Tensor]:
    """Dynamic per-tensor unsigned min-max quantization of one operand (lowbit's Lab 1 convention).

    r_min = min(min x, 0), r_max = max(max x, 0); S = (r_max − r_min)/(2^b − 1) in float32, floored at
    ``linear.MIN_SCALE`` and 1.0 for an all-zero x; Z = clamp(round(−r_min/S), 0, 2^b − 1);
    q = clamp(round_half_even(x/S) + Z, 0, 2^b − 1) — the same numbers as ``linear.affine_qparams(x.min(),
    x.max(), bits, signed=False)`` and ``linear.linear_quantize``, through the one arithmetic core
    (``fakequant.quantize``) without their per-call re-validation.

    Args:
        x: float tensor (float16/bfloat16/float32/float64, computed in float32), any shape (0-dim too),
            non-empty, finite. Not modified.
        bits: int in 1..16.
    Returns:
        ``(q, scale, zero_point)``: q int64 of x's shape in [0, 2^b − 1], scale float32 0-dim, zero_point
        int64 0-dim.
    """
    x = check_float_tensor(x, "x", nonempty=True).detach().to(torch.float32)
    bits = check_bits(bits, 1, MAX_OPERAND_BITS)
    lo, hi = torch.aminmax(x)                                   # NaN or ±inf anywhere shows in one of the two
    if not bool(torch.isfinite(lo) & torch.isfinite(hi)):
        raise ValueError("x contains NaN or infinity; quantization needs finite values (check the operand that "
                         "produced it)")
    scale, zero_point = affine_qparams(lo, hi, bits, signed=False)
    q = fakequant.quantize(x, scale, zero_point, 0, 2 ** bits - 1)            # codes < 2^16: exact in float32
    return q.to(torch.int64), scale.reshape(()), zero_point.to(torch.int64).reshape(())


def _operand_shapes(a: Tensor, b: Tensor, what: str) -> torch.Size:
    """The broadcast batch shape of ``a [..., M, K] @ b [..., K, N]``, after checking both are ≥ 2-D with one K."""
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(f"{what} need matrices: a [..., M, K] and b [..., K, N] with at least 2 dims each, got "
                         f"shapes {tuple(a.shape)} and {tuple(b.shape)} (reshape a vector to [1, K] or [K, 1])")
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"{what}: inner dimensions differ, a is {tuple(a.shape)} (K = {a.shape[-1]}) and b is "
                         f"{tuple(b.shape)} (K = {b.shape[-2]}); a [..., M, K] @ b [..., K, N] needs one K")
    try:
        return torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except RuntimeError:
        raise ValueError(f"{what}: batch dims {tuple(a.shape[:-2])} and {tuple(b.shape[:-2])} do not broadcast "
                         f"(as in torch.matmul)") from None


def _scalar_zero_point(z: object, name: str) -> int:
    """A per-tensor zero point (Python int or 0-dim integer tensor) as an int."""
    if isinstance(z, torch.Tensor):
        check_int_tensor(z, name)
        if z.ndim != 0:
            raise ValueError(f"{name} must be one zero point per tensor (an int or a 0-dim tensor), got shape "
                             f"{tuple(z.shape)}")
        return int(z)
    if isinstance(z, bool) or not isinstance(z, Integral):
        raise TypeError(f"{name} must be an int or a 0-dim integer tensor, got {type(z).__name__}")
    return int(z)


def zero_point_matmul(q_a: Tensor, z_a: int | Tensor, q_b: Tensor, z_b: int | Tensor) -> Tensor:
    """(Q_A − Z_A)(Q_B − Z_B) by the zero-point expansion
    Q_A Q_B − Z_B·rowsum(Q_A) − Z_A·colsum(Q_B) + K·Z_A Z_B.

    Args:
        q_a: integer tensor [..., M, K]; q_b: integer tensor [..., K, N] (each ≥ 2-D, batch dims broadcast as
            in ``torch.matmul``). z_a, z_b: per-tensor zero points (Python int or 0-dim integer tensor).
    Returns:
        int64 [..., M, N], exact: Q_A Q_B is multiplied in float64 (exact while every partial sum is below
        2^53) or in int64; rowsum(Q_A) = Q_A.sum(-1) [..., M, 1], colsum(Q_B) = Q_B.sum(-2) [..., 1, N].
    """
    q_a, q_b = check_int_tensor(q_a, "q_a"), check_int_tensor(q_b, "q_b")
    _operand_shapes(q_a, q_b, "zero_point_matmul")
    za, zb = _scalar_zero_point(z_a, "z_a"), _scalar_zero_point(z_b, "z_b")
    k = q_a.shape[-1]
    product = _exact_matmul(q_a, q_b)                                    # Q_A Q_B            [..., M, N]
    row_sums = q_a.sum(dim=-1, keepdim=True, dtype=torch.int64)          # rowsum(Q_A)        [..., M, 1]
    col_sums = q_b.sum(dim=-2, keepdim=True, dtype=torch.int64)          # colsum(Q_B)        [..., 1, N]
    return product - zb * row_sums - za * col_sums + k * za * zb


def dynamic_quantized_matmul(a: Tensor, b: Tensor, bits: int) -> Tensor:
    """a @ b with both operands quantized per tensor at ``bits`` (``quantize_operand``), multiplied in integers.

    Args:
        a: float [..., M, K]; b: float [..., K, N] (≥ 2-D, batch dims broadcast), non-empty and finite.
        bits: int 1..16.
    Returns:
        float32 [..., M, N]: S_A·S_B·zero_point_matmul(Q_A, Z_A, Q_B, Z_B) (scaled in float64, one rounding to
        float32) — equal to fake(a) @ fake(b), fake(x) = S (Q − Z), up to float rounding.
    """
    a = check_float_tensor(a, "a", nonempty=True, finite=True)
    b = check_float_tensor(b, "b", nonempty=True, finite=True)
    _operand_shapes(a, b, "dynamic_quantized_matmul")
    q_a, s_a, z_a = quantize_operand(a, bits)
    q_b, s_b, z_b = quantize_operand(b, bits)
    acc = zero_point_matmul(q_a, z_a, q_b, z_b)
    return (acc.to(torch.float64) * (s_a.double() * s_b.double())).to(torch.float32)


def _shape(shape: object, name: str) -> tuple[int, ...]:
    if isinstance(shape, torch.Tensor) or not isinstance(shape, (tuple, list, torch.Size)):
        raise TypeError(f"{name} must be a shape (tuple, list or torch.Size of ints), got {type(shape).__name__}")
    dims = tuple(shape)
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, Integral):
            raise TypeError(f"{name} must hold ints, got {d!r} ({type(d).__name__}) in {shape!r}")
        if d < 0:
            raise ValueError(f"{name} must hold non-negative sizes, got {shape!r}")
    return tuple(int(d) for d in dims)


def multiply_count(a_shape: Sequence[int], b_shape: Sequence[int]) -> int:
    """Scalar multiplications of ``torch.matmul(a, b)``, a [..., M, K], b [..., K, N]:
    prod(broadcast batch dims) · M · K · N.

    Args:
        a_shape, b_shape: tuple / list / torch.Size of non-negative ints, each with ≥ 2 entries.
    Returns:
        a Python int. Raises ValueError for a K mismatch, fewer than 2 dims or batch dims that do not broadcast.
    """
    a, b = _shape(a_shape, "a_shape"), _shape(b_shape, "b_shape")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"multiply_count needs matrix shapes [..., M, K] and [..., K, N] (≥ 2 entries each), "
                         f"got {a} and {b}")
    if a[-1] != b[-2]:
        raise ValueError(f"multiply_count: inner dimensions differ, a_shape {a} has K = {a[-1]} and b_shape {b} "
                         f"has K = {b[-2]}")
    try:
        batch = torch.broadcast_shapes(a[:-2], b[:-2])
    except RuntimeError:
        raise ValueError(f"multiply_count: batch dims {a[:-2]} and {b[:-2]} do not broadcast") from None
    return math.prod(batch) * a[-2] * a[-1] * b[-1]


def _values(values: object, name: str, ndim: int) -> Tensor:
    """A float64 copy of a sequence or tensor with ``ndim`` dims, non-empty and without NaN."""
    if isinstance(values, torch.Tensor):
        if values.dtype == torch.bool or values.is_complex():
            raise TypeError(f"{name} must hold real numbers, got dtype {values.dtype}")
        t = values.detach().to(torch.float64)
    else:
        try:
            t = torch.as_tensor(values, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{name} must be a tensor or a sequence of numbers, got {type(values).__name__}") from None
    if t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dim(s), got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")
    if bool(torch.isnan(t).any()):
        raise ValueError(f"{name} contains NaN at index {torch.isnan(t).nonzero()[0].tolist()}: every entry must be "
                         f"a measured number")
    return t


def _real(value: object, name: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, Real) or math.isnan(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return float(value)


def sensitivity_ranking(accuracies: Sequence[float] | Tensor) -> list[int]:
    """Product indices from least sensitive (highest accuracy when quantized alone) to most sensitive.

    Args:
        accuracies: 1-D float tensor or sequence [P]; accuracies[p] = accuracy with only product p quantized.
    Returns:
        the P indices as Python ints, by descending accuracy; ties keep the lower index first (stable).
    """
    acc = _values(accuracies, "accuracies", 1)
    order = torch.sort(-acc, stable=True).indices           # ascending −acc = descending acc, stable
    return [int(i) for i in order]


def products_within_budget(curve: Sequence[float] | Tensor, baseline: float, budget: float) -> int:
    """How many products of the ranking can be quantized within an accuracy budget.

    Args:
        curve: 1-D [P + 1]; curve[k] = accuracy with the first k ranked products quantized (curve[0]: none).
        baseline: the float model's accuracy (a fraction). budget: the allowed absolute drop (fraction, ≥ 0).
    Returns:
        the largest k with curve[k] ≥ baseline − budget (compared in float64) — not the first dip, since the
        curve is not monotone — or 0 if there is none.
    """
    values = _values(curve, "curve", 1)
    baseline, budget = _real(baseline, "baseline"), _real(budget, "budget")
    if budget < 0:
        raise ValueError(f"budget must be >= 0 (an allowed accuracy drop, 0.02 = 2 points), got {budget}")
    within = (values >= baseline - budget).nonzero()
    return int(within[-1]) if within.numel() else 0


def _choices(choices: object) -> tuple[int, ...]:
    if isinstance(choices, (str, bytes)) or not isinstance(choices, Sequence):
        raise ValueError(f"choices must be a sequence of bit widths such as (8, 4, 2), got {choices!r}")
    picked = tuple(choices)
    if not picked:
        raise ValueError("choices is empty: give at least one bit width, e.g. (8, 4, 2)")
    if any(isinstance(c, bool) or not isinstance(c, Integral) or c <= 0 for c in picked):
        raise ValueError(f"choices must be positive ints (bit widths), got {choices!r}")
    if len(set(picked)) != len(picked):
        raise ValueError(f"choices has duplicates: {choices!r}; list each bit width once")
    return tuple(int(c) for c in picked)


def _costs(costs: object, length: int) -> list[int]:
    if isinstance(costs, torch.Tensor):
        if costs.is_floating_point() or costs.is_complex() or costs.dtype == torch.bool:
            raise ValueError(f"costs must be positive integers (multiplies per product), got dtype {costs.dtype}")
        costs = costs.reshape(-1).tolist() if costs.ndim == 1 else costs
    if isinstance(costs, torch.Tensor) or not isinstance(costs, Sequence):
        raise ValueError(f"costs must be a 1-D sequence or tensor of {length} positive ints, got "
                         f"{type(costs).__name__}")
    if len(costs) != length:
        raise ValueError(f"costs has {len(costs)} entries but sensitivities has {length} rows (one per product)")
    if any(isinstance(c, bool) or not isinstance(c, Integral) or c <= 0 for c in costs):
        raise ValueError(f"costs must be positive ints (multiplies per image of each product), got "
                         f"{list(costs)[:8]}{' …' if length > 8 else ''}")
    return [int(c) for c in costs]


def allocate_bits(sensitivities: Tensor | Sequence[Sequence[float]], costs: Sequence[int] | Tensor, budget: int,
                  choices: Sequence[int] = CHOICES) -> list[int]:
    """Bits per product minimizing the summed sensitivity under a multiply-weighted bit budget (exact).

    Minimizes Σ_p sensitivities[p, c_p] subject to Σ_p costs[p]·choices[c_p] ≤ budget: a multiple-choice
    knapsack, solved by dynamic programming over the capacity (the weights costs·bits divided by their gcd),
    vectorized over the capacity axis, then backtracked.

    Args:
        sensitivities: float [P, C] (tensor or nested sequence), C = len(choices); the accuracy drop of product
            p alone at choices[c] (may be negative). costs: [P] positive ints (multiplies per image).
        budget: int ≥ 0. choices: distinct positive bit widths (default (8, 4, 2)).
    Returns:
        P Python ints, each in ``choices``: an optimal allocation (ties: any optimum).
    Raises:
        ValueError when the budget is below Σ costs·min(choices) (the message gives that minimum), for
        mismatched shapes, non-positive or non-integer costs, bad choices or a negative budget.
    """
    picked = _choices(choices)
    sens = _values(sensitivities, "sensitivities", 2)
    if not bool(torch.isfinite(sens).all()):
        raise ValueError("sensitivities must be finite (accuracy drops); got an infinity")
    if sens.shape[1] != len(picked):
        raise ValueError(f"sensitivities has {sens.shape[1]} columns but there are {len(picked)} choices "
                         f"{picked}: one column per bit width")
    cost = _costs(costs, sens.shape[0])
    if isinstance(budget, bool) or not isinstance(budget, Integral):
        raise ValueError(f"budget must be an int (multiply-weighted bits, Σ costs·bits), got {budget!r}")
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    minimum = sum(cost) * min(picked)
    if budget < minimum:
        raise ValueError(f"budget {budget} is infeasible: even every product at {min(picked)} bits needs "
                         f"Σ costs·{min(picked)} = {minimum}; give a budget of at least {minimum}")
    weights = torch.tensor([[c * b for b in picked] for c in cost], dtype=torch.int64)       # [P, C]
    unit = reduce(math.gcd, weights.reshape(-1).tolist())
    weights = weights // unit
    capacity = min(int(budget) // unit, int(weights.max(dim=1).values.sum()))
    return [picked[c] for c in _knapsack(sens, weights, capacity)]


def _knapsack(sens: Tensor, weights: Tensor, capacity: int) -> list[int]:
    """Choice index per item minimizing Σ sens[p, c_p] with Σ weights[p, c_p] ≤ capacity (feasible by caller).

    best[w] = least cost of the items so far with total weight ≤ w (non-increasing in w); one vectorized
    min over the C shifted copies per item; ``taken[p, w]`` records the argmin for the backtrack."""
    items, options = sens.shape
    if items * (capacity + 1) > MAX_TABLE:
        raise ValueError(f"allocate_bits: the table would hold {items} × {capacity + 1} entries (> {MAX_TABLE:,}); "
                         f"express costs in a coarser unit (e.g. thousands of multiplies) so their gcd is larger")
    best = torch.zeros(capacity + 1, dtype=torch.float64)
    taken = torch.empty(items, capacity + 1, dtype=torch.int64)
    for p in range(items):
        candidates = torch.full((options, capacity + 1), math.inf, dtype=torch.float64)
        for c in range(options):
            w = int(weights[p, c])
            if w <= capacity:
                candidates[c, w:] = best[: capacity + 1 - w] + sens[p, c]
        best, taken[p] = candidates.min(dim=0)
    choice, left = [0] * items, capacity
    for p in range(items - 1, -1, -1):
        choice[p] = int(taken[p, left])
        left -= int(weights[p, choice[p]])
    return choice


# ============================================================================ provided (not graded): the model
# Nothing below refers to a graded function by name: each is resolved from ``functions`` (the student's) or by
# dotted name when first needed (``resolve_function``), so the grader's answer-free package keeps all of it.
class QuantizedProduct(nn.Module):
    """One matrix product of a model (an ``nn.Linear`` or a ``models.MatMul``) with both operands quantized per
    tensor at ``bits`` (None: the float product).

    Linear: operands x ``[..., in]`` and weight.T ``[in, out]``, the bias added in float afterwards; MatMul:
    a ``[..., M, K]`` and b ``[..., K, N]``. Each operand goes through ``quantize_operand`` (the ``functions``
    mapping's, else the reference) and the product S_A·S_B·(Q_A − Z_A)(Q_B − Z_B) of the fake-quantized operands
    is formed by a float matmul of the centred codes (``quantized_product``: exact integers, so bit for bit what
    ``dynamic_quantized_matmul``'s reference returns, and several times faster than its expansion);
    ``exact=True`` calls ``dynamic_quantized_matmul`` (the student's in the lab) instead. The range of an
    activation operand is taken over the whole batch tensor (dynamic per-tensor quantization), so results depend
    (slightly) on the batch size: the sweeps use ``BATCH_SIZE``.

    Attributes: ``product`` (the wrapped module, weights unchanged), ``bits`` (int 1..16 or None), ``exact``.
    """

    def __init__(self, product: nn.Module, bits: int | None = None, functions: Mapping[str, Callable] | None = None,
                 exact: bool = False) -> None:
        super().__init__()
        if not isinstance(product, (nn.Linear, MatMul)):
            raise TypeError(f"QuantizedProduct wraps an nn.Linear or a models.MatMul, got {type(product).__name__}")
        self.product = product
        self.functions = check_functions(functions, LAB6_REFERENCES)
        self.bits = _product_bits_value(bits, "bits")
        self.exact = bool(exact)

    def operands(self, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        """The two operands ``(a [..., M, K], b [K, N] or [..., K, N])`` of this product for ``inputs``."""
        if isinstance(self.product, nn.Linear):
            return inputs[0], self.product.weight.t()
        return inputs[0], inputs[1]

    def centred(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(Q − Z as float32, S)`` of one operand at ``self.bits`` (``centred_codes``); x's shape."""
        return centred_codes(x, self.bits, self.functions)

    def fake(self, x: Tensor) -> Tensor:
        """float32 S·(Q − Z) of one operand at ``self.bits``: the value the product sees instead of x."""
        centred, scale = self.centred(x)
        return centred.mul_(scale)

    def quantized_product(self, a: Tensor, b: Tensor) -> Tensor:
        """S_A·S_B·(Q_A − Z_A)(Q_B − Z_B) as float32: the centred codes multiplied in float32 when every partial
        sum is an integer below 2^24 (K·(2^b − 1)² < 2^24, so exact: the same integers as zero_point_matmul),
        else in float64; scaled in float64 with one rounding, as dynamic_quantized_matmul."""
        (ca, sa), (cb, sb) = self.centred(a), self.centred(b)
        if a.shape[-1] * (2 ** self.bits - 1) ** 2 >= 2 ** 24:
            ca, cb = ca.double(), cb.double()
        return (torch.matmul(ca, cb).double() * (sa.double() * sb.double())).to(torch.float32)

    def forward(self, *inputs: Tensor) -> Tensor:
        if self.bits is None:
            return self.product(*inputs)
        a, b = self.operands(*inputs)
        if self.exact:
            out = resolve_function(self.functions, "dynamic_quantized_matmul", LAB6_REFERENCES)(a, b, self.bits)
        else:
            out = self.quantized_product(a, b)
        bias = getattr(self.product, "bias", None)
        return out + bias if bias is not None else out

    def extra_repr(self) -> str:
        return f"bits={self.bits}" + (", exact=True" if self.exact else "")


Bits = Union[int, None, Mapping[str, Union[int, None]]]


def centred_codes(x: Tensor, bits: int, functions: Mapping[str, Callable] | None = None) -> tuple[Tensor, Tensor]:
    """``(Q − Z, S)`` of ``x`` quantized per tensor at ``bits`` by ``quantize_operand`` (``functions``' or the
    reference): float32 centred codes of x's shape (exact integers) and the float32 0-dim scale. S·(Q − Z) is
    the value a quantized product sees instead of x."""
    q, scale, zero_point = resolve_function(functions, "quantize_operand", LAB6_REFERENCES)(x, bits)
    if not isinstance(q, Tensor) or q.shape != x.shape:
        raise ValueError(f"quantize_operand returned codes of shape {getattr(q, 'shape', type(q).__name__)} for "
                         f"an operand of shape {tuple(x.shape)}; they must have the operand's shape")
    return q.detach().to(torch.float32).sub_(zero_point), torch.as_tensor(scale, dtype=torch.float32)


def _product_bits_value(bits: object, where: str) -> int | None:
    if bits is None:
        return None
    if isinstance(bits, bool) or not isinstance(bits, Integral) or not 1 <= bits <= MAX_OPERAND_BITS:
        raise ValueError(f"{where} must be None (float) or an int in 1..{MAX_OPERAND_BITS}, got {bits!r}")
    return int(bits)


def product_modules(qmodel: nn.Module) -> dict[str, QuantizedProduct]:
    """``{name: QuantizedProduct}`` of a model made by ``quantize_products``, in module (= TinyViT execution)
    order."""
    found = {name: m for name, m in qmodel.named_modules() if isinstance(m, QuantizedProduct)}
    if not found:
        raise ValueError(f"{type(qmodel).__name__} has no QuantizedProduct: wrap its products with "
                         "quantize_products(model) first")
    return found


def _bits_mapping(bits: Bits, names: Sequence[str]) -> dict[str, int | None]:
    """``bits`` (one value for all, or name → value with missing names None) as a full mapping over ``names``."""
    if isinstance(bits, Mapping):
        unknown = sorted(set(bits) - set(names))
        if unknown:
            raise ValueError(f"bits names {unknown[:5]}, which are not products of this model; products are "
                             f"{', '.join(names[:4])}, … (models.matmul_names)")
        return {name: _product_bits_value(bits.get(name), f"bits[{name!r}]") for name in names}
    value = _product_bits_value(bits, "bits")
    return {name: value for name in names}


def quantize_products(model: nn.Module, bits: Bits = None, functions: Mapping[str, Callable] | None = None,
                      exact: bool = False) -> nn.Module:
    """A deep copy of ``model`` (eval mode) with every matrix product (``models.matmul_names``) wrapped in a
    ``QuantizedProduct``; module names stay those of ``model`` (the weights move to ``<name>.product``).

    Args:
        bits: None (all float), one int for every product, or a mapping product name → int | None (missing
            names float). functions: Lab 6 answers by name (``quantize_operand``, ``dynamic_quantized_matmul``);
            missing → the references. exact: integer products (``dynamic_quantized_matmul``), slow.
    """
    qmodel = copy.deepcopy(model).eval()
    names = matmul_names(qmodel)
    chosen = _bits_mapping(bits, names)
    functions = check_functions(functions, LAB6_REFERENCES)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = qmodel.get_submodule(parent_name) if parent_name else qmodel
        setattr(parent, child, QuantizedProduct(getattr(parent, child), chosen[name], functions, exact))
    return qmodel


def set_product_bits(qmodel: nn.Module, bits: Bits) -> None:
    """In place: every product of ``qmodel`` (from ``quantize_products``) at ``bits`` (as in quantize_products:
    one value, or a mapping whose missing names become float)."""
    modules = product_modules(qmodel)
    for name, value in _bits_mapping(bits, list(modules)).items():
        modules[name].bits = value


def product_bits(qmodel: nn.Module) -> dict[str, int | None]:
    """``{product name: bits or None}`` of a model from ``quantize_products``."""
    return {name: module.bits for name, module in product_modules(qmodel).items()}


def _count_targets(model: nn.Module) -> dict[str, nn.Module]:
    """The product modules to hook: QuantizedProducts if any, else the Linear / MatMul modules."""
    wrapped = {name: m for name, m in model.named_modules() if isinstance(m, QuantizedProduct)}
    if wrapped:
        return wrapped
    return {name: model.get_submodule(name) for name in matmul_names(model)}


def product_costs(model: nn.Module, functions: Mapping[str, Callable] | None = None,
                  input_shape: tuple[int, ...] = (1, 1, 28, 28)) -> dict[str, int]:
    """Multiplications per image of every product of ``model`` (float, or from ``quantize_products``), in
    ``models.matmul_names`` order: one forward pass on zeros of ``input_shape`` with hooks recording each
    product's operand shapes, counted by ``multiply_count`` (``functions``' or the reference) and divided by
    the batch size. A Linear ``in → out`` on T tokens costs T·in·out, a MatMul ``(batch)·M·K·N``; biases are
    not multiplications. The model's train/eval mode is restored."""
    count = resolve_function(functions, "multiply_count", LAB6_REFERENCES)
    targets = _count_targets(model)
    shapes: dict[str, list[tuple[tuple[int, ...], tuple[int, ...]]]] = {name: [] for name in targets}

    def record(name: str):
        def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            if isinstance(module, QuantizedProduct):
                a, b = module.operands(*inputs)
            elif isinstance(module, nn.Linear):
                a, b = inputs[0], module.weight.t()
            else:
                a, b = inputs[0], inputs[1]
            shapes[name].append((tuple(a.shape), tuple(b.shape)))
        return hook

    handles = [module.register_forward_pre_hook(record(name)) for name, module in targets.items()]
    was_training = model.training
    first = next(model.parameters(), None)
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(input_shape, device=first.device if first is not None else "cpu"))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    batch = input_shape[0]
    return {name: sum(int(count(a, b)) for a, b in calls) // batch for name, calls in shapes.items()}


# ============================================================================ provided: sweeps and budgets
#: Images per forward pass of the sweeps (one thread: ~0.3 s per 1,000 images for the float TinyViT).
BATCH_SIZE = 1000


def accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = BATCH_SIZE) -> float:
    """Top-1 accuracy (fraction) of ``model`` on ``images [N, 1, 28, 28]`` / ``labels [N]``, in batches."""
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"images and labels must be non-empty and of the same length, got {len(images)} and "
                         f"{len(labels)}")
    return evaluate(model, zip(images.split(batch_size), labels.split(batch_size)), device="cpu")


def config_accuracy(qmodel: nn.Module, bits_mapping: Bits, images: Tensor, labels: Tensor,
                    batch_size: int = BATCH_SIZE) -> float:
    """Accuracy of ``qmodel`` with its products at ``bits_mapping`` (``set_product_bits``); the previous bits
    are restored afterwards."""
    before = product_bits(qmodel)
    try:
        set_product_bits(qmodel, bits_mapping)
        return accuracy(qmodel, images, labels, batch_size)
    finally:
        set_product_bits(qmodel, before)


class _Replay(nn.Module):
    """Stands in for the first blocks of a model: returns the recorded input of the next block, whatever it gets."""

    def __init__(self, recorded: Tensor) -> None:
        super().__init__()
        self.recorded = recorded

    def forward(self, x: Tensor) -> Tensor:
        return self.recorded


def _stages(qmodel: nn.Module, names: Sequence[str]) -> dict[str, int] | None:
    """For a model running ``qmodel.blocks`` (an ``nn.ModuleList``) in sequence, as TinyViT: the block each
    product sits in (``len(blocks)`` for products after the last block, -1 before the first); else None."""
    blocks = getattr(qmodel, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or not len(blocks):
        return None
    stages, seen_block = {}, False
    for name in names:
        parts = name.split(".")
        if parts[0] == "blocks" and len(parts) > 1 and parts[1].isdigit():
            stages[name], seen_block = int(parts[1]), True
        else:
            stages[name] = len(blocks) if seen_block else -1
    return stages


def _block_inputs(qmodel: nn.Module, images: Tensor) -> list[Tensor]:
    """The float inputs of ``qmodel.blocks[0 .. L-1]`` and the last block's output (L + 1 tensors) for one batch."""
    blocks, recorded = qmodel.blocks, []
    handles = [block.register_forward_pre_hook(lambda module, inputs: recorded.append(inputs[0])) for block in blocks]
    handles.append(blocks[-1].register_forward_hook(lambda module, inputs, output: recorded.append(output)))
    try:
        qmodel(images)
    finally:
        for handle in handles:
            handle.remove()
    return recorded


def _replayed_logits(qmodel: nn.Module, images: Tensor, stage: int, inputs: list[Tensor]) -> Tensor:
    """``qmodel(images)`` with blocks before ``stage`` replaced by their recorded float output (they are float)."""
    if stage <= 0:
        return qmodel(images)
    blocks = qmodel.blocks
    qmodel.blocks = nn.ModuleList([_Replay(inputs[stage]), *list(blocks)[stage:]])
    try:
        return qmodel(images)
    finally:
        qmodel.blocks = blocks


def single_product_accuracies(qmodel: nn.Module, images: Tensor, labels: Tensor, bits: int = 4,
                              batch_size: int = BATCH_SIZE, progress: bool = True) -> dict[str, float]:
    """``{product: accuracy with only that product at bits}`` for every product of ``qmodel`` (from
    ``quantize_products``), in order; the other products float, ``qmodel``'s bits restored afterwards.

    For a model whose ``blocks`` run in sequence (TinyViT), the float blocks before a product are run once per
    batch and replayed (the same numbers, about half the work); other models are evaluated whole."""
    names = list(product_modules(qmodel))
    stages = _stages(qmodel, names)
    if stages is None:
        return {name: config_accuracy(qmodel, {name: bits}, images, labels, batch_size)
                for name in tqdm(names, desc=f"one product at INT{bits}", disable=not progress)}
    accuracy(qmodel, images[:1], labels[:1])                        # the same argument checks as the sweeps
    before, correct = product_bits(qmodel), dict.fromkeys(names, 0)
    batches = list(zip(images.split(batch_size), labels.split(batch_size)))
    was_training = qmodel.training
    qmodel.eval()
    try:
        with torch.no_grad(), tqdm(total=len(batches) * len(names), desc=f"one product at INT{bits}",
                                   disable=not progress) as bar:
            for batch, batch_labels in batches:
                set_product_bits(qmodel, None)
                inputs = _block_inputs(qmodel, batch)
                for name in names:
                    set_product_bits(qmodel, {name: bits})
                    logits = _replayed_logits(qmodel, batch, stages[name], inputs)
                    correct[name] += int((logits.argmax(dim=1) == batch_labels).sum())
                    bar.update()
    finally:
        set_product_bits(qmodel, before)
        qmodel.train(was_training)
    return {name: correct[name] / len(labels) for name in names}


def greedy_curve(qmodel: nn.Module, order: Sequence[str], images: Tensor, labels: Tensor, bits: int = 4,
                 batch_size: int = BATCH_SIZE, progress: bool = True) -> list[float]:
    """Accuracies with the first k products of ``order`` at ``bits`` (the rest float), k = 0 .. len(order):
    a list of len(order) + 1 floats (curve[0]: nothing quantized)."""
    names = list(product_modules(qmodel))
    unknown = [name for name in order if name not in names]
    if unknown or len(set(order)) != len(order):
        raise ValueError(f"order must list distinct products of the model, got unknown {unknown[:3]} or "
                         f"duplicates; products are models.matmul_names(model)")
    return [config_accuracy(qmodel, {name: bits for name in order[:k]}, images, labels, batch_size)
            for k in tqdm(range(len(order) + 1), desc=f"greedy at INT{bits}", disable=not progress)]


class Fractions(NamedTuple):
    """Share of a quantized set: of the products (the study's count, operations) and of the multiplications."""

    products: float
    multiplies: float


def budget_fractions(order: Sequence[str], k: int, costs: Mapping[str, int]) -> Fractions:
    """The first ``k`` products of ``order`` as a fraction of all products in ``costs`` and of their
    multiplications (``costs``: ``product_costs``)."""
    if isinstance(k, bool) or not isinstance(k, Integral) or not 0 <= k <= len(order):
        raise ValueError(f"k must be an int in 0..{len(order)}, got {k!r}")
    missing = [name for name in order[:k] if name not in costs]
    if missing:
        raise ValueError(f"costs has no entry for {missing[:3]}; use product_costs(model)")
    total = sum(costs.values())
    return Fractions(k / len(costs), sum(costs[name] for name in order[:k]) / total)


def first_dip(curve: Sequence[float], baseline: float, budget: float) -> int:
    """Products before the greedy ``curve`` (``curve[k]``: accuracy with the first ``k`` at low precision) first
    falls below ``baseline - budget`` (−1 when ``curve[0]`` already does): what stopping at the first crossing
    reads, against ``products_within_budget``'s largest ``k``."""
    below = [k for k, accuracy in enumerate(curve) if accuracy < baseline - budget]
    return (below[0] - 1) if below else len(curve) - 1


def drop_table(accuracies_by_bits: Mapping[int, Mapping[str, float]], baseline: float, names: Sequence[str],
               choices: Sequence[int] = CHOICES) -> Tensor:
    """float64 ``[P, C]`` accuracy drops ``baseline − accuracies_by_bits[choices[c]][names[p]]``: the
    sensitivities ``allocate_bits`` takes (``accuracies_by_bits``: ``{bits: single_product_accuracies(...)}``)."""
    missing = [b for b in choices if b not in accuracies_by_bits]
    if missing:
        raise ValueError(f"accuracies_by_bits has no sweep at {missing} bits; run single_product_accuracies at "
                         f"each of {tuple(choices)}")
    return torch.tensor([[baseline - float(accuracies_by_bits[b][name]) for b in choices] for name in names],
                        dtype=torch.float64)


def additive_prediction(baseline: float, drops: Tensor, bits: Sequence[int], choices: Sequence[int] = CHOICES
                        ) -> float:
    """The additive model's accuracy for an allocation: baseline − Σ_p drops[p, index of bits[p] in choices]."""
    if len(bits) != drops.shape[0] or any(b not in choices for b in bits):
        raise ValueError(f"bits must give one of {tuple(choices)} for each of the {drops.shape[0]} products")
    return baseline - sum(float(drops[p, list(choices).index(b)]) for p, b in enumerate(bits))


def greedy_allocation(sensitivities: Tensor | Sequence[Sequence[float]], costs: Sequence[int], budget: int,
                      choices: Sequence[int] = CHOICES) -> list[int]:
    """The greedy baseline for ``allocate_bits``: every product at the widest choice, then, while over budget,
    the one step down (to the next narrower width) with the smallest sensitivity increase per multiply-bit
    saved (ties: lower index). Not optimal: a large cheap-looking step can overshoot while a smaller one fits.

    Args as ``allocate_bits`` (choices must be sorted widest first). Returns bits per product (Python ints).
    """
    widths = [int(c) for c in choices]
    if widths != sorted(set(widths), reverse=True) or not widths or widths[-1] <= 0:
        raise ValueError(f"choices must be distinct positive bit widths, widest first, got {tuple(choices)}")
    sens = torch.as_tensor(sensitivities, dtype=torch.float64)
    cost = [int(c) for c in costs]
    if sens.shape != (len(cost), len(widths)):
        raise ValueError(f"sensitivities must be [P, C] = [{len(cost)}, {len(widths)}], got {tuple(sens.shape)}")
    if budget < sum(cost) * widths[-1]:
        raise ValueError(f"budget {budget} is infeasible: the minimum is Σ costs·{widths[-1]} = "
                         f"{sum(cost) * widths[-1]}")
    level = torch.zeros(len(cost), dtype=torch.int64)
    cost_t, widths_t = torch.tensor(cost, dtype=torch.float64), torch.tensor(widths + [0], dtype=torch.float64)
    used = sum(cost) * widths[0]
    last = len(widths) - 1
    while used > budget:
        rows = torch.arange(len(cost))
        step = torch.clamp(level + 1, max=last)
        saved = cost_t * (widths_t[level] - widths_t[step])
        ratio = torch.where(level < last, (sens[rows, step] - sens[rows, level]) / saved, torch.inf)
        p = int(torch.argmin(ratio))
        used -= int(saved[p])
        level[p] += 1
    return [widths[int(i)] for i in level]


# ============================================================================ provided: the HAWQ proxy
#: Rademacher probes per Hutchinson estimate and images of the one batch the Hessian is taken on.
HESSIAN_SAMPLES = 32
HESSIAN_IMAGES = 256


def _rademacher(like: Tensor, generator: torch.Generator) -> Tensor:
    return torch.randint(0, 2, like.shape, generator=generator).to(like.dtype).mul_(2).sub_(1)


def _hessian_operands(model: nn.Module, images: Tensor, operands: dict[str, list[Tensor]]) -> Tensor:
    """Run ``model(images)`` recording, per product, the tensors its quantization perturbs: the weight of a
    Linear (a leaf) and both inputs of a MatMul (activations in the graph). Returns the logits."""
    targets = _count_targets(model)

    def record(name: str):
        def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            inner = module.product if isinstance(module, QuantizedProduct) else module
            operands[name] = [inner.weight] if isinstance(inner, nn.Linear) else [inputs[0], inputs[1]]
        return hook

    handles = [module.register_forward_pre_hook(record(name)) for name, module in targets.items()]
    try:
        return model(images)
    finally:
        for handle in handles:
            handle.remove()


def hessian_traces(model: nn.Module, images: Tensor, labels: Tensor, samples: int = HESSIAN_SAMPLES, seed: int = 0,
                   progress: bool = True) -> dict[str, float]:
    """Mean Hessian diagonal Tr(H)/n of the cross-entropy loss on one batch, per product (HAWQ's sensitivity).

    Hutchinson's estimator Tr(H) ≈ mean over Rademacher v of vᵀHv, with Hv by double backpropagation; one probe
    covers every product at once (independent entries of v cancel the cross blocks in expectation). The tensors
    are those a product's quantization perturbs: the weight of a Linear, both operands of a MatMul (activations,
    through hooks; n counts both). Dong et al. 2019/2020 (HAWQ, HAWQ-V2); Avron & Toledo 2011 for the estimator.

    Args:
        model: float TinyViT (or a ``quantize_products`` copy, its products float); not modified.
        images: float32 ``[N, 1, 28, 28]`` (one batch; ``HESSIAN_IMAGES`` is plenty), labels int64 ``[N]``.
        samples: probes (≥ 1); seed: their generator's seed (deterministic).
    Returns:
        ``{product: Tr(H)/n}`` in ``models.matmul_names`` order.
    """
    if isinstance(samples, bool) or not isinstance(samples, Integral) or samples < 1:
        raise ValueError(f"samples must be an int >= 1 (Rademacher probes), got {samples!r}")
    work = copy.deepcopy(model).eval()
    for parameter in work.parameters():
        parameter.requires_grad_(True)
    operands: dict[str, list[Tensor]] = {}
    with torch.enable_grad():
        loss = nn.functional.cross_entropy(_hessian_operands(work, images, operands), labels)
        names = list(operands)
        flat = [t for name in names for t in operands[name]]
        grads = torch.autograd.grad(loss, flat, create_graph=True)
        generator = torch.Generator().manual_seed(seed)
        totals = torch.zeros(len(flat), dtype=torch.float64)
        for _ in tqdm(range(samples), desc="Hutchinson probes", disable=not progress):
            probes = [_rademacher(t, generator) for t in flat]
            hv = torch.autograd.grad(grads, flat, grad_outputs=probes, retain_graph=True)
            totals += torch.stack([(v * h).sum().double() for v, h in zip(probes, hv)])
    traces, start = {}, 0
    for name in names:
        count = len(operands[name])
        numel = sum(t.numel() for t in operands[name])
        traces[name] = float(totals[start:start + count].sum()) / samples / numel
        start += count
    return traces


def hawq_scores(model: nn.Module, images: Tensor, labels: Tensor, bits: int = 4,
                traces: Mapping[str, float] | None = None, samples: int = HESSIAN_SAMPLES, seed: int = 0,
                functions: Mapping[str, Callable] | None = None, progress: bool = True) -> dict[str, float]:
    """HAWQ-V2's second-order sensitivity per product: Tr(H)/n · ‖Q(x) − x‖², the squared quantization error of
    the product's perturbed tensors (``hessian_traces``' choice: a Linear's weight, a MatMul's two operands on
    ``images``) at ``bits`` through ``quantize_operand`` (``functions``' or the reference). Larger = more
    sensitive. ``traces``: precomputed ``hessian_traces`` (else computed here with ``samples`` / ``seed``)."""
    traces = hessian_traces(model, images, labels, samples, seed, progress) if traces is None else traces
    operands: dict[str, list[Tensor]] = {}
    with torch.no_grad():
        _hessian_operands(model, images, operands)
        errors = {}
        for name, tensors in operands.items():
            total = 0.0
            for t in tensors:
                centred, scale = centred_codes(t.detach(), bits, functions)
                total += float((centred.mul_(scale) - t.detach()).double().pow(2).sum())
            errors[name] = total
    missing = [name for name in errors if name not in traces]
    if missing:
        raise ValueError(f"traces has no entry for {missing[:3]}; pass hessian_traces(model, ...) of this model")
    return {name: float(traces[name]) * errors[name] for name in errors}


def _average_ranks(values: Tensor) -> Tensor:
    """Ranks 1..n of ``values`` (float64 [n]), ties sharing their average rank."""
    unique, inverse, counts = torch.unique(values, sorted=True, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts
    return (first.double() + (counts.double() - 1) / 2 + 1)[inverse]


def spearman(x: Sequence[float] | Mapping[str, float] | Tensor, y: Sequence[float] | Mapping[str, float] | Tensor
             ) -> float:
    """Spearman's rank correlation of two equally long sequences (or two mappings, paired by key): the Pearson
    correlation of their average ranks, in [-1, 1]. Raises ValueError for fewer than 2 pairs, a length or key
    mismatch, NaN, or a constant input (undefined)."""
    if isinstance(x, Mapping) or isinstance(y, Mapping):
        if not (isinstance(x, Mapping) and isinstance(y, Mapping)) or set(x) != set(y):
            raise ValueError("spearman of mappings needs two mappings with the same keys")
        keys = list(x)
        x, y = [x[k] for k in keys], [y[k] for k in keys]
    a, b = torch.as_tensor(x, dtype=torch.float64).reshape(-1), torch.as_tensor(y, dtype=torch.float64).reshape(-1)
    if a.numel() != b.numel() or a.numel() < 2:
        raise ValueError(f"spearman needs two sequences of the same length >= 2, got {a.numel()} and {b.numel()}")
    if bool(torch.isnan(a).any() | torch.isnan(b).any()):
        raise ValueError("spearman: the values contain NaN")
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(ra.norm() * rb.norm())
    if denominator == 0:
        raise ValueError("spearman is undefined for a constant sequence (all ranks tie)")
    return float((ra * rb).sum()) / denominator


# ============================================================================ provided: Part 5, back to the CNN
#: Weight quantizers of Part 5: Lab 1's symmetric per-channel linear grid and Lab 2's k-means codebook.
CNN_METHODS = ("linear", "kmeans")
Option = tuple[str, int]                    # (method, bits)


class CNNPoint(NamedTuple):
    """One per-layer weight policy of the CNN: ``policy`` layer → (method, bits), its storage in bits (every
    other parameter float32; a k-means layer pays its float32 codebook), its accuracy, whether it is uniform."""

    policy: dict[str, Option]
    size_bits: int
    accuracy: float
    uniform: bool


def _options(bits: Sequence[int], methods: Sequence[str]) -> list[Option]:
    unknown = [m for m in methods if m not in CNN_METHODS]
    if unknown or not methods or not bits:
        raise ValueError(f"methods must be among {CNN_METHODS} and bits non-empty, got {methods!r}, {bits!r}")
    return [(method, int(b)) for method in methods for b in bits]


def cnn_layer_weights(model: nn.Module, bits: Sequence[int] = CHOICES, methods: Sequence[str] = CNN_METHODS
                      ) -> dict[Option, dict[str, Tensor]]:
    """Every quantizable layer's weight under every option, computed once: ``{(method, bits): {layer: float32
    weight}}`` — "linear": ``ptq.fake_quantize_weight`` (symmetric, per output channel, min-max), "kmeans":
    ``kmeans.kmeans_quantize`` (2^bits centroids) decoded."""
    layers = quantizable_layers(model)
    table: dict[Option, dict[str, Tensor]] = {}
    for method, b in _options(bits, methods):
        table[(method, b)] = {}
        for name, layer in layers.items():
            w = layer.weight.detach()
            table[(method, b)][name] = (fake_quantize_weight(w, b) if method == "linear"
                                        else kmeans.decode(kmeans.kmeans_quantize(w, b), w.shape))
    return table


def cnn_policy_size(model: nn.Module, policy: Mapping[str, Option]) -> int:
    """Storage in bits of ``model`` with the weights of ``policy``'s layers quantized: a linear layer costs
    numel·bits (its per-channel scales are negligible, as ``models.model_size_bits`` counts), a k-means layer
    ``kmeans.compressed_bits`` (indices + float32 codebook); everything else 32 bits."""
    layers = quantizable_layers(model, list(policy))
    size = models.model_size_bits(model, {f"{name}.weight": b for name, (method, b) in policy.items()
                                          if method == "linear"})
    for name, (method, b) in policy.items():
        if method == "kmeans":
            numel = layers[name].weight.numel()
            size += kmeans.compressed_bits(numel, b) - 32 * numel
    return size


def _with_weights(work: nn.Module, layers: dict[str, nn.Module], policy: Mapping[str, Option],
                  weights: Mapping[Option, Mapping[str, Tensor]], original: Mapping[str, Tensor]) -> None:
    with torch.no_grad():
        for name, layer in layers.items():
            layer.weight.copy_(weights[policy[name]][name] if name in policy else original[name])


def cnn_policy_accuracy(model: nn.Module, policy: Mapping[str, Option], images: Tensor, labels: Tensor,
                        weights: Mapping[Option, Mapping[str, Tensor]] | None = None,
                        batch_size: int = BATCH_SIZE) -> float:
    """Accuracy of ``model`` with ``policy``'s layers quantized (``weights``: ``cnn_layer_weights``, computed
    here if None); ``model`` is not modified."""
    weights = cnn_layer_weights(model, sorted({b for _, b in policy.values()}),
                                sorted({m for m, _ in policy.values()})) if weights is None else weights
    work = copy.deepcopy(model).eval()
    layers = quantizable_layers(work)
    _with_weights(work, layers, policy, weights, {n: l.weight.detach().clone() for n, l in layers.items()})
    return accuracy(work, images, labels, batch_size)


def cnn_layer_sensitivities(model: nn.Module, images: Tensor, labels: Tensor, bits: Sequence[int] = CHOICES,
                            methods: Sequence[str] = CNN_METHODS,
                            weights: Mapping[Option, Mapping[str, Tensor]] | None = None,
                            batch_size: int = BATCH_SIZE, progress: bool = True) -> dict[str, dict[Option, float]]:
    """``{layer: {(method, bits): accuracy with only that layer's weight quantized}}`` for every quantizable
    layer of ``model`` (the CNN; fold its BatchNorm first, ``models.fold_batchnorm``)."""
    options = _options(bits, methods)
    weights = cnn_layer_weights(model, bits, methods) if weights is None else weights
    layers = list(quantizable_layers(model))
    pairs = [(layer, option) for layer in layers for option in options]
    result: dict[str, dict[Option, float]] = {layer: {} for layer in layers}
    for layer, option in tqdm(pairs, desc="one CNN layer quantized", disable=not progress):
        result[layer][option] = cnn_policy_accuracy(model, {layer: option}, images, labels, weights, batch_size)
    return result


def pareto_front(points: Sequence[CNNPoint]) -> list[CNNPoint]:
    """The points no other point dominates (smaller or equal size and higher or equal accuracy, one strictly),
    by increasing size."""
    ordered = sorted(points, key=lambda p: (p.size_bits, -p.accuracy))
    front, best = [], -math.inf
    for point in ordered:
        if point.accuracy > best:
            front.append(point)
            best = point.accuracy
    return front


def cnn_pareto(model: nn.Module, images: Tensor, labels: Tensor, bits: Sequence[int] = CHOICES,
               methods: Sequence[str] = CNN_METHODS, exhaustive: bool = False, batch_size: int = BATCH_SIZE,
               progress: bool = True) -> list[CNNPoint]:
    """Per-layer mixed-precision weight policies of the CNN against storage: every uniform policy (one option for
    all layers) and the mixed ones, each evaluated for real.

    The mixed candidates: all options^layers policies (``exhaustive=True``), or (default) those on the Pareto
    front of the *additive* prediction baseline − Σ single-layer drops (``cnn_layer_sensitivities``), which
    costs a few dozen evaluations instead of 6^4 = 1,296 for the course CNN. Returns every evaluated point,
    uniform ones first; ``pareto_front(points)`` keeps the non-dominated ones.
    """
    options = _options(bits, methods)
    weights = cnn_layer_weights(model, bits, methods)
    layers = list(quantizable_layers(model))
    baseline = accuracy(model, images, labels, batch_size)
    policies = [dict.fromkeys(layers, option) for option in options]
    every = [dict(zip(layers, combo)) for combo in itertools.product(options, repeat=len(layers))]
    if exhaustive:
        mixed = every
    else:
        single = cnn_layer_sensitivities(model, images, labels, bits, methods, weights, batch_size, progress)
        predicted = [CNNPoint(p, cnn_policy_size(model, p),
                              baseline - sum(baseline - single[name][p[name]] for name in layers), False)
                     for p in every]
        mixed = [point.policy for point in pareto_front(predicted)]
    mixed = [p for p in mixed if len(set(p.values())) > 1]
    work = copy.deepcopy(model).eval()
    work_layers = quantizable_layers(work)
    original = {n: l.weight.detach().clone() for n, l in work_layers.items()}
    points = []
    for policy in tqdm(policies + mixed, desc="CNN policies", disable=not progress):
        _with_weights(work, work_layers, policy, weights, original)
        points.append(CNNPoint(policy, cnn_policy_size(model, policy), accuracy(work, images, labels, batch_size),
                               len(set(policy.values())) == 1))
    return points
