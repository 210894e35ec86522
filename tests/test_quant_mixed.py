"""Lab 6's graded references (lowbit.quant.mixed), each against an independent computation: numpy float32 for the
quantization formula, the int64 product of the centred codes for the zero-point expansion, torch.matmul of the
fake-quantized operands, hand-counted multiplies, Python's stable sort, and brute force over every allocation of
small instances. Every check is a function of the implementation, run on the reference and on the wrong
implementations in ``WRONG`` (realistic mistakes), each of which must fail it."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from lowbit.quant import mixed as M
from lowbit.quant.linear import MIN_SCALE


def rand(*shape: int, seed: int = 0, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale + shift


# ------------------------------------------------------------------------------ independent computations
def codes_by_numpy(x: torch.Tensor, bits: int) -> tuple[np.ndarray, np.float32, int]:
    """The stated formula in numpy float32 (np.round is half to even)."""
    v = x.detach().double().numpy().astype(np.float32)
    lo, hi = np.float32(min(v.min(), 0.0)), np.float32(max(v.max(), 0.0))
    q_max = 2 ** bits - 1
    if hi == lo:
        s = np.float32(1.0)
    else:
        s = np.float32(max(np.float32(hi - lo) / np.float32(q_max), np.float32(MIN_SCALE)))
    z = int(np.clip(np.round(np.float32(-lo / s)), 0, q_max))
    q = np.clip(np.round(v / s) + z, 0, q_max).astype(np.int64)
    return q, s, z


def fake_by_numpy(x: torch.Tensor, bits: int) -> torch.Tensor:
    q, s, z = codes_by_numpy(x, bits)
    return torch.from_numpy((q - z).astype(np.float64) * np.float64(s))


def centred_product(q_a, z_a, q_b, z_b) -> torch.Tensor:
    """(Q_A − Z_A)(Q_B − Z_B) as an int64 matmul of the centred codes (no expansion)."""
    return torch.matmul(q_a.to(torch.int64) - int(z_a), q_b.to(torch.int64) - int(z_b))


def brute_force(sens: torch.Tensor, costs: list[int], budget: int, choices=(8, 4, 2)) -> float:
    best = math.inf
    for picks in itertools.product(range(len(choices)), repeat=len(costs)):
        if sum(c * choices[k] for c, k in zip(costs, picks)) <= budget:
            best = min(best, sum(float(sens[p, k]) for p, k in enumerate(picks)))
    return best


def objective(sens: torch.Tensor, bits: list[int], choices=(8, 4, 2)) -> float:
    return sum(float(sens[p, choices.index(b)]) for p, b in enumerate(bits))


# ------------------------------------------------------------------------------------------------ checks
OPERANDS = [  # (name, tensor, bits)
    ("mixed signs", rand(6, 9, seed=1), 4),
    ("positive only: Z = 0", rand(5, 7, seed=2).abs() + 0.5, 4),
    ("negative only: Z = q_max", -rand(5, 7, seed=3).abs() - 0.1, 4),
    ("all zero: scale 1", torch.zeros(4, 3), 4),
    ("constant", torch.full((3, 5), 2.5), 4),
    ("0-dim", torch.tensor(-1.25), 2),
    ("8 bits, 4-D attention", rand(2, 4, 17, 16, seed=4, scale=3.0), 8),
    ("1 bit", rand(20, seed=5), 1),
    ("16 bits", rand(30, seed=6, shift=0.3), 16),
    ("halves on the grid (S = 1): half to even", torch.tensor([0.0, 0.5, 1.5, 2.5, 3.0]), 2),
    ("float16", rand(7, 5, seed=7).half(), 4),
    ("float64", rand(7, 5, seed=8).double(), 2),
]


def check_quantize_operand(fn) -> None:
    for name, x, bits in OPERANDS:
        before = x.clone()
        q, s, z = fn(x, bits)
        expected_q, expected_s, expected_z = codes_by_numpy(x, bits)
        assert torch.equal(x, before), f"{name}: x was modified"
        assert q.dtype == torch.int64 and q.shape == x.shape, f"{name}: q {q.dtype} {tuple(q.shape)}"
        assert s.dtype == torch.float32 and s.ndim == 0 and z.dtype == torch.int64 and z.ndim == 0, name
        assert float(s) == float(expected_s), f"{name}: scale {float(s)} != {float(expected_s)}"
        assert int(z) == expected_z, f"{name}: zero point {int(z)} != {expected_z}"
        assert np.array_equal(q.numpy(), expected_q), f"{name}: codes differ"
    for bad, error in [(torch.arange(3), TypeError), ([1.0, 2.0], TypeError), (torch.empty(0), ValueError),
                       (torch.tensor([1.0, math.nan]), ValueError), (torch.tensor([math.inf]), ValueError)]:
        with pytest.raises(error):
            fn(bad, 4)
    for bits in (0, 17, 2.0):
        with pytest.raises(ValueError):
            fn(rand(3), bits)


CODES = [  # (name, q_a, z_a, q_b, z_b)
    ("2-D", torch.randint(0, 16, (5, 7), generator=torch.Generator().manual_seed(0)), 3,
     torch.randint(0, 16, (7, 4), generator=torch.Generator().manual_seed(1)), 9),
    ("4-D attention [N, H, T, d] @ [N, H, d, T]", torch.randint(0, 16, (2, 3, 5, 6)), torch.tensor(15),
     torch.randint(0, 16, (2, 3, 6, 5)), torch.tensor(2)),
    ("batch broadcast [3, M, K] @ [K, N]", torch.randint(0, 256, (3, 4, 6), dtype=torch.int64).to(torch.uint8), 128,
     torch.randint(0, 256, (6, 2)), 7),
    ("K = 1", torch.randint(0, 4, (4, 1)), 1, torch.randint(0, 4, (1, 3)), 3),
    ("zero zero points", torch.randint(0, 16, (3, 3)), 0, torch.randint(0, 16, (3, 3)), 0),
    ("16-bit codes", torch.randint(0, 2 ** 16, (3, 50)), 40000, torch.randint(0, 2 ** 16, (50, 2)), 12345),
]


def check_zero_point_matmul(fn) -> None:
    torch.manual_seed(0)
    for name, q_a, z_a, q_b, z_b in CODES:
        out = fn(q_a, z_a, q_b, z_b)
        expected = centred_product(q_a, z_a, q_b, z_b)
        assert out.dtype == torch.int64, f"{name}: dtype {out.dtype}"
        assert torch.equal(out, expected), f"{name}: max diff {(out - expected).abs().max()}"
    q = torch.randint(0, 16, (3, 4))
    with pytest.raises(ValueError):
        fn(q, 0, torch.randint(0, 16, (5, 2)), 0)                    # K mismatch
    with pytest.raises(ValueError):
        fn(torch.randint(0, 16, (4,)), 0, q, 0)                      # 1-D
    with pytest.raises(TypeError):
        fn(q.float(), 0, q.T.contiguous(), 0)                        # float codes


def matmul_cases():
    return [
        ("linear [T, in] @ [in, out]", rand(17, 64, seed=1), rand(64, 32, seed=2, scale=0.1), 4),
        ("attention 4-D", rand(2, 4, 17, 16, seed=3), rand(2, 4, 16, 17, seed=4), 4),
        ("softmax @ V", torch.softmax(rand(2, 4, 17, 17, seed=5), -1), rand(2, 4, 17, 16, seed=6), 2),
        ("constant operand", torch.full((5, 6), 0.75), rand(6, 3, seed=7), 4),
        ("all-zero operand", rand(5, 6, seed=8), torch.zeros(6, 3), 4),
        ("K = 1", rand(4, 1, seed=9), rand(1, 3, seed=10), 8),
        ("batch broadcast", rand(3, 4, 6, seed=11), rand(6, 2, seed=12), 8),
        ("float16", rand(4, 8, seed=13).half(), rand(8, 3, seed=14).half(), 4),
    ]


def check_dynamic_quantized_matmul(fn) -> None:
    for name, a, b, bits in matmul_cases():
        out = fn(a, b, bits)
        expected = torch.matmul(fake_by_numpy(a, bits), fake_by_numpy(b, bits))
        assert out.dtype == torch.float32 and out.shape == expected.shape, f"{name}: {out.dtype} {out.shape}"
        tol = 1e-5 * float(expected.abs().max()) + 1e-6
        assert float((out.double() - expected).abs().max()) <= tol, f"{name}: differs from fake(a) @ fake(b)"
    with pytest.raises(ValueError):
        fn(rand(3, 4), rand(5, 2), 4)
    with pytest.raises(ValueError):
        fn(rand(4), rand(4, 2), 4)
    with pytest.raises(TypeError):
        fn(torch.ones(3, 4, dtype=torch.int64), rand(4, 2), 4)


#: TinyViT (dim 64, 4 heads of 16, MLP 128, 16 patches + class token = 17 tokens), counted by hand.
VIT_SHAPES = {  # product: (a_shape, b_shape, multiplies)
    "patch_embed": ((16, 49), (49, 64), 16 * 49 * 64),
    "attn.qkv": ((17, 64), (64, 192), 17 * 64 * 192),
    "attn.qk": ((4, 17, 16), (4, 16, 17), 4 * 17 * 16 * 17),
    "attn.av": ((4, 17, 17), (4, 17, 16), 4 * 17 * 17 * 16),
    "attn.proj": ((17, 64), (64, 64), 17 * 64 * 64),
    "mlp.fc1": ((17, 64), (64, 128), 17 * 64 * 128),
    "mlp.fc2": ((17, 128), (128, 64), 17 * 128 * 64),
    "head": ((1, 64), (64, 10), 640),
}


def check_multiply_count(fn) -> None:
    for name, (a, b, expected) in VIT_SHAPES.items():
        assert fn(a, b) == expected, f"{name}: {fn(a, b)} != {expected}"
    assert fn(torch.Size([2, 1, 3, 5]), [4, 5, 7]) == 2 * 4 * 3 * 5 * 7           # batch dims broadcast
    assert fn([3, 1, 5], (1, 5, 2)) == 3 * 5 * 2
    assert fn((0, 4), (4, 3)) == 0 and type(fn((2, 4), (4, 3))) is int
    for a, b in [((3, 4), (5, 2)), ((4,), (4, 2)), ((2, 3, 4), (3, 4, 5))]:
        with pytest.raises(ValueError):
            fn(a, b)


def check_sensitivity_ranking(fn) -> None:
    assert fn([0.80, 0.88, 0.70, 0.88, 0.85]) == [1, 3, 4, 0, 2]                   # tie: lower index first
    values = rand(38, seed=3).tolist()
    assert fn(torch.tensor(values)) == sorted(range(38), key=lambda p: -values[p])
    assert fn(torch.tensor([0.5, 0.5, 0.5])) == [0, 1, 2]
    assert fn([0.1]) == [0] and all(type(i) is int for i in fn([0.2, 0.3]))
    for bad in ([], [0.5, math.nan]):
        with pytest.raises(ValueError):
            fn(bad)


def check_products_within_budget(fn) -> None:
    curve = [0.90, 0.895, 0.86, 0.885, 0.70, 0.875, 0.60]                          # not monotone
    assert fn(curve, 0.90, 0.02) == 3                                               # not the first dip (1)
    assert fn(curve, 0.90, 0.03) == 5
    assert fn(torch.tensor(curve, dtype=torch.float64), 0.90, 0.5) == 6            # everything
    assert fn(curve, 0.90, 0.0) == 0
    assert fn([0.5, 0.4], 0.9, 0.02) == 0                                           # none, not even curve[0]
    assert fn([0.88, 0.91, 0.89], 0.9, 0.0) == 1
    assert fn([0.875, 0.75, 0.5], 0.875, 0.125) == 1                                # exactly on the threshold
    for args in (([], 0.9, 0.02), ([0.9, math.nan], 0.9, 0.02), ([0.9, 0.8], 0.9, -0.01)):
        with pytest.raises(ValueError):
            fn(*args)


def allocation_instances(count: int = 40, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(count):
        products = int(torch.randint(1, 6, (1,), generator=g))
        sens = torch.rand(products, 3, generator=g) * torch.tensor([0.02, 0.1, 0.6]) - 0.01   # some negative
        costs = torch.randint(1, 40, (products,), generator=g).tolist()
        low, high = 2 * sum(costs), 8 * sum(costs)
        yield sens, costs, int(torch.randint(low, high + 1, (1,), generator=g))


def check_allocate_bits(fn) -> None:
    for sens, costs, budget in allocation_instances():
        bits = fn(sens, costs, budget)
        assert len(bits) == len(costs) and all(type(b) is int and b in (8, 4, 2) for b in bits), bits
        assert sum(c * b for c, b in zip(costs, bits)) <= budget, "over budget"
        assert objective(sens, bits) <= brute_force(sens, costs, budget) + 1e-12, "not optimal"
    sens = torch.tensor([[0.0, 0.1, 0.5], [0.0, 0.01, 0.2], [0.0, 0.3, 0.4]], dtype=torch.float64)
    assert fn(sens, [10, 20, 30], 2 * 60) == [2, 2, 2]                              # exactly the minimum
    assert fn(sens, [10, 20, 30], 8 * 60) == [8, 8, 8]                              # everything
    middle = fn(sens, torch.tensor([10, 20, 30]), 4 * 60)                          # costs as a tensor
    assert objective(sens, middle) == pytest.approx(brute_force(sens, [10, 20, 30], 240), abs=1e-12)
    # greedy by sensitivity per saved multiply first takes product 0 to INT4 (nearly free), still over budget,
    # then product 1 too (0.101); the optimum is product 1 alone at INT4 (0.1, exactly on budget)
    trap = torch.tensor([[0.0, 0.001, 0.5], [0.0, 0.1, 0.2]])
    assert fn(trap, [10, 11], 124) == [8, 4]
    assert fn([[0.3, 0.0], [0.1, 0.2]], [3, 5], 3 * 16 + 5 * 16, choices=(16, 1)) == [1, 16]    # other choices
    with pytest.raises(ValueError, match="120"):
        fn(sens, [10, 20, 30], 119)                                                 # infeasible: says the minimum
    for args in ((sens, [10, 20, 30], 0), (sens, [10, 20], 500), (sens, [10, 0, 30], 500),
                 (sens, [10, 2.5, 30], 500), (sens, [10, 20, 30], -1), (sens[:, :2], [10, 20, 30], 500)):
        with pytest.raises(ValueError):
            fn(*args)
    for choices in ((), (8, 8, 2), (8, 0, 2)):
        with pytest.raises(ValueError):
            fn(sens, [10, 20, 30], 500, choices=choices)


CHECKS = {"quantize_operand": check_quantize_operand, "zero_point_matmul": check_zero_point_matmul,
          "dynamic_quantized_matmul": check_dynamic_quantized_matmul, "multiply_count": check_multiply_count,
          "sensitivity_ranking": check_sensitivity_ranking, "products_within_budget": check_products_within_budget,
          "allocate_bits": check_allocate_bits}


@pytest.mark.parametrize("name", list(CHECKS))
def test_the_reference_passes_its_check(name):
    CHECKS[name](getattr(M, name))


# ---------------------------------------------------------------------------- wrong implementations
def _q_no_widening(x, bits):
    x = x.float()
    lo, hi = x.min(), x.max()
    s = (hi - lo) / (2 ** bits - 1) if hi > lo else torch.tensor(1.0)
    z = torch.round(-lo / s).clamp(0, 2 ** bits - 1)
    return (torch.round(x / s) + z).clamp(0, 2 ** bits - 1).long(), s.float().reshape(()), z.long().reshape(())


def _q_rounding_half_up(x, bits):
    q, s, z = M.quantize_operand(x, bits)
    return (torch.floor(x.float() / s + 0.5) + z).clamp(0, 2 ** bits - 1).long(), s, z


def _q_levels_not_minus_one(x, bits):
    x32 = x.float()
    lo, hi = torch.clamp(x32.min(), max=0), torch.clamp(x32.max(), min=0)
    s = torch.where(hi > lo, (hi - lo) / 2 ** bits, torch.tensor(1.0))
    z = torch.round(-lo / s).clamp(0, 2 ** bits - 1)
    return (torch.round(x32 / s) + z).clamp(0, 2 ** bits - 1).long(), s.reshape(()), z.long().reshape(())


def _q_zero_scale_for_zeros(x, bits):
    q, s, z = M.quantize_operand(x, bits)
    return q, (torch.tensor(0.0) if not bool(x.abs().max()) else s), z


def _q_signed(x, bits):
    x32 = x.float()
    lo, hi = torch.clamp(x32.min(), max=0), torch.clamp(x32.max(), min=0)
    s = torch.where(hi > lo, (hi - lo) / (2 ** bits - 1), torch.tensor(1.0))
    q_min = -(2 ** (bits - 1))
    z = torch.round(q_min - lo / s).clamp(q_min, -q_min - 1)
    return (torch.round(x32 / s) + z).clamp(q_min, -q_min - 1).long(), s.reshape(()), z.long().reshape(())


def _zp(q_a, z_a, q_b, z_b, swap=False, k_term=True, sign=1):
    z_a, z_b, k = int(z_a), int(z_b), q_a.shape[-1]
    rows, cols = q_a.long().sum(-1, keepdim=True), q_b.long().sum(-2, keepdim=True)
    first, second = (z_a * rows, z_b * cols) if swap else (z_b * rows, z_a * cols)
    out = torch.matmul(q_a.long(), q_b.long()) - first - second
    return out + sign * k * z_a * z_b if k_term else out + z_a * z_b


def _dqm(a, b, bits, same_scale=False, bits_a=None, no_zero=False):
    q_a, s_a, z_a = M.quantize_operand(a, bits_a or bits)
    q_b, s_b, z_b = M.quantize_operand(b, bits)
    if no_zero:
        z_a = z_b = 0
    acc = M.zero_point_matmul(q_a, z_a, q_b, z_b).double()
    return (acc * float(s_a) * float(s_a if same_scale else s_b)).float()


def _allocation_strict_budget(sens, costs, budget, choices=(8, 4, 2)):
    return M.allocate_bits(sens, costs, budget - 1, choices)


def _allocation_all_narrowest(sens, costs, budget, choices=(8, 4, 2)):
    M.allocate_bits(sens, costs, budget, choices)
    return [min(choices)] * len(costs)


def _allocation_maximizes(sens, costs, budget, choices=(8, 4, 2)):
    return M.allocate_bits(-torch.as_tensor(sens, dtype=torch.float64), costs, budget, choices)


def _within_first_dip(curve, baseline, budget):
    curve = [float(c) for c in curve]
    k = 0
    while k + 1 < len(curve) and curve[k + 1] >= baseline - budget:
        k += 1
    return k


#: name → {label: wrong implementation}; each must fail its check (test_every_wrong_implementation_is_caught).
WRONG = {
    "quantize_operand": {
        "range not widened to contain 0": _q_no_widening,
        "round half up instead of half to even": _q_rounding_half_up,
        "scale over 2^b instead of 2^b - 1": _q_levels_not_minus_one,
        "zero scale for an all-zero operand": _q_zero_scale_for_zeros,
        "signed range": _q_signed,
        "codes not int64": lambda x, bits: (lambda q, s, z: (q.to(torch.int32), s, z))(*M.quantize_operand(x, bits)),
    },
    "zero_point_matmul": {
        "row and column sums swapped": lambda *a: _zp(*a, swap=True),
        "K forgotten in the last term": lambda *a: _zp(*a, k_term=False),
        "last term subtracted": lambda *a: _zp(*a, sign=-1),
        "zero points ignored": lambda q_a, z_a, q_b, z_b: torch.matmul(q_a.long(), q_b.long()),
        "float result": lambda *a: M.zero_point_matmul(*a).double(),
        "no argument checks (float codes, torch errors)": centred_product,
    },
    "dynamic_quantized_matmul": {
        "one scale for both operands": lambda a, b, bits: _dqm(a, b, bits, same_scale=True),
        "a always at 8 bits": lambda a, b, bits: _dqm(a, b, bits, bits_a=8),
        "zero points dropped": lambda a, b, bits: _dqm(a, b, bits, no_zero=True),
        "float product, no quantization": lambda a, b, bits: torch.matmul(a.float(), b.float()),
        "float64 result": lambda a, b, bits: _dqm(a, b, bits).double(),
    },
    "multiply_count": {
        "operations counted (1 per product)": lambda a, b: (M.multiply_count(a, b), 1)[1],
        "K forgotten": lambda a, b: M.multiply_count(a, b) // max(a[-1], 1),
        "batch of a only": lambda a, b: math.prod(a[:-2]) * a[-2] * a[-1] * b[-1] if a[-1] == b[-2] else
        M.multiply_count(a, b),
        "no batch": lambda a, b: (M.multiply_count(a, b), a[-2] * a[-1] * b[-1])[1],
        "multiply-accumulates counted twice (FLOPs)": lambda a, b: 2 * M.multiply_count(a, b),
    },
    "sensitivity_ranking": {
        "ascending (most sensitive first)": lambda acc: list(reversed(M.sensitivity_ranking(acc))),
        "ties: higher index first": lambda acc: sorted(range(len(acc)), key=lambda p: (-float(acc[p]), -p)),
        "accuracies sorted instead of indices": lambda acc: sorted((float(a) for a in acc), reverse=True),
        "argsort of the accuracies (ascending)": lambda acc: [int(i) for i in torch.argsort(
            torch.as_tensor(acc, dtype=torch.float64), stable=True)],
        "NaN accepted": lambda acc: sorted(range(len(acc)), key=lambda p: -float(acc[p])),
    },
    "products_within_budget": {
        "first dip": _within_first_dip,
        "strict inequality": lambda curve, baseline, budget: max(
            [k for k, v in enumerate(curve) if float(v) > baseline - budget] or [0]),
        "count of points within": lambda curve, baseline, budget: sum(float(v) >= baseline - budget
                                                                      for v in curve[1:]),
        "budget relative to the baseline": lambda curve, baseline, budget: M.products_within_budget(
            curve, baseline, budget * baseline),
        "off by one (index + 1)": lambda curve, baseline, budget: min(
            M.products_within_budget(curve, baseline, budget) + 1, len(curve) - 1),
    },
    "allocate_bits": {
        "greedy by sensitivity per saved multiply": M.greedy_allocation,
        "budget taken as strict (<)": _allocation_strict_budget,
        "everything at the narrowest width": _allocation_all_narrowest,
        "maximizes the sensitivity": _allocation_maximizes,
        "operations instead of multiplies (costs ignored)": lambda sens, costs, budget, choices=(8, 4, 2):
        M.allocate_bits(sens, [1] * len(costs), max(budget * len(costs) // max(sum(costs), 1),
                                                    len(costs) * min(choices)), choices),
    },
}


@pytest.mark.parametrize("name, label", [(n, label) for n, wrong in WRONG.items() for label in wrong])
def test_every_wrong_implementation_is_caught(name, label):
    with pytest.raises((Exception, pytest.fail.Exception)):           # an assertion, an error, or a missed raise
        CHECKS[name](WRONG[name][label])


def test_every_graded_function_has_at_least_five_wrong_implementations():
    assert set(WRONG) == set(CHECKS) and all(len(w) >= 5 for w in WRONG.values())


# ------------------------------------------------------------------------------------------- extras
def test_dynamic_quantized_matmul_integer_core_is_exact_on_large_k():
    a, b = rand(3, 4096, seed=1), rand(4096, 2, seed=2)
    q_a, s_a, z_a = M.quantize_operand(a, 8)
    q_b, s_b, z_b = M.quantize_operand(b, 8)
    assert torch.equal(M.zero_point_matmul(q_a, z_a, q_b, z_b), centred_product(q_a, z_a, q_b, z_b))


def test_allocate_bits_on_a_realistic_instance_meets_the_budget_and_beats_random_search():
    g = torch.Generator().manual_seed(4)
    costs = [50176] + [208896, 18496, 18496, 69632, 139264, 139264] * 6 + [640]
    sens = torch.rand(38, 3, generator=g) * torch.tensor([0.001, 0.01, 0.1])
    budget = 4 * sum(costs)
    bits = M.allocate_bits(sens, costs, budget)
    assert sum(c * b for c, b in zip(costs, bits)) <= budget
    draws = [[(8, 4, 2)[int(k)] for k in torch.randint(0, 3, (38,), generator=g)] for _ in range(400)]
    best_random = min(objective(sens, d) for d in draws if sum(c * b for c, b in zip(costs, d)) <= budget)
    assert objective(sens, bits) <= objective(sens, [4] * 38) and objective(sens, bits) <= best_random


def test_allocate_bits_refuses_a_table_too_large_with_advice():
    with pytest.raises(ValueError, match="coarser unit"):
        M.allocate_bits([[0.0, 1.0], [0.0, 1.0]], [10 ** 9 + 7, 10 ** 9 + 9], 4 * 10 ** 9, choices=(2, 1))
