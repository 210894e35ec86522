"""Lab 6's provided machinery (lowbit.quant.mixed): the quantized-product wrapper on TinyViT, multiply counts, the
sweeps, budgets, the greedy allocation baseline — against plain torch computations on a few test images — and the
guarantee that none of it reaches a graded reference statically (the grader's sandbox strips those)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lowbit import data, models
from lowbit.quant import mixed as M

N_IMAGES = 96


@pytest.fixture(scope="module")
def vit():
    return models.pretrained("vit")


@pytest.fixture(scope="module")
def test_data():
    images, labels = data.load_fashion_mnist("test", "embedded")
    return images[:N_IMAGES], labels[:N_IMAGES]


@pytest.fixture(scope="module")
def qvit(vit):
    return M.quantize_products(vit)


def fake_by_numpy(x: torch.Tensor, bits: int) -> torch.Tensor:
    """S·(Q − Z) of the stated per-tensor unsigned min-max formula, in numpy float32."""
    v = x.detach().numpy().astype(np.float32)
    lo, hi = np.float32(min(v.min(), 0.0)), np.float32(max(v.max(), 0.0))
    s = np.float32(1.0) if hi == lo else np.float32(np.float32(hi - lo) / np.float32(2 ** bits - 1))
    z = np.clip(np.round(np.float32(-lo / s)), 0, 2 ** bits - 1)
    q = np.clip(np.round(v / s) + z, 0, 2 ** bits - 1)
    return torch.from_numpy(((q - z) * s).astype(np.float32))


# ------------------------------------------------------------------------------------- the wrapper
def test_quantize_products_wraps_the_38_products_of_a_copy(vit, test_data):
    images, _ = test_data
    qmodel = M.quantize_products(vit)
    assert list(M.product_modules(qmodel)) == models.matmul_names(vit)
    assert all(b is None for b in M.product_bits(qmodel).values())
    with torch.no_grad():
        assert torch.equal(qmodel(images), vit(images))                              # float: the same function
    assert not any(isinstance(m, M.QuantizedProduct) for m in vit.modules())         # the input is untouched
    mixed = M.quantize_products(vit, {"head": 2, "blocks.0.attn.qk": 8})
    assert M.product_bits(mixed)["head"] == 2 and M.product_bits(mixed)["blocks.0.attn.qk"] == 8
    assert sum(b is not None for b in M.product_bits(mixed).values()) == 2


def test_a_quantized_linear_is_the_product_of_fake_quantized_operands_plus_the_float_bias(vit):
    layer = vit.blocks[2].mlp.fc1
    x = torch.randn(3, 17, 64, generator=torch.Generator().manual_seed(0))
    wrapped = M.QuantizedProduct(layer, bits=4)
    expected = torch.matmul(fake_by_numpy(x, 4), fake_by_numpy(layer.weight.detach().t(), 4)) + layer.bias
    with torch.no_grad():
        assert torch.allclose(wrapped(x), expected, rtol=1e-5, atol=1e-5)
        wrapped.exact = True
        assert torch.allclose(wrapped(x), expected, rtol=1e-4, atol=1e-4)


def test_a_quantized_attention_matmul_quantizes_both_batched_operands():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 4, 17, 16, generator=g), torch.randn(2, 4, 16, 17, generator=g)
    wrapped = M.QuantizedProduct(models.MatMul(), bits=3)
    expected = torch.matmul(fake_by_numpy(q, 3), fake_by_numpy(k, 3))
    assert torch.allclose(wrapped(q, k), expected, rtol=1e-5, atol=1e-5)
    wrapped.bits = None
    assert torch.equal(wrapped(q, k), q @ k)


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_the_fast_product_is_bit_for_bit_the_integer_one_on_the_model(vit, test_data, bits):
    # any float rounding difference in one product would flip codes downstream: at INT4 about 5 % of the
    # predictions of a float32 matmul of the fake-quantized operands differ from the integer model's
    images = test_data[0][:16]
    with torch.no_grad():
        fast = M.quantize_products(vit, bits)(images)
        exact = M.quantize_products(vit, bits, exact=True)(images)
    assert torch.equal(fast, exact)


def test_the_given_quantize_operand_is_the_one_used(vit, test_data):
    calls = []

    def mine(x, bits):
        calls.append((tuple(x.shape), bits))
        return M.quantize_operand(x, bits)

    qmodel = M.quantize_products(vit, {"blocks.1.attn.av": 2}, functions={"quantize_operand": mine})
    with torch.no_grad():
        qmodel(test_data[0][:5])
    assert calls == [((5, 4, 17, 17), 2), ((5, 4, 17, 16), 2)]
    with pytest.raises(ValueError, match="does not use"):
        M.quantize_products(vit, functions={"quantise_operand": mine})
    broken = M.quantize_products(vit, 4, functions={"quantize_operand": lambda x, b: (x.reshape(-1), 1.0, 0)})
    with pytest.raises(ValueError, match="shape"):
        broken(test_data[0][:2])


def test_set_product_bits_in_place_and_errors(qvit):
    M.set_product_bits(qvit, 4)
    assert set(M.product_bits(qvit).values()) == {4}
    M.set_product_bits(qvit, {"head": 8})
    bits = M.product_bits(qvit)
    assert bits["head"] == 8 and sum(b is None for b in bits.values()) == 37
    with pytest.raises(ValueError, match="not products"):
        M.set_product_bits(qvit, {"blocks.9.attn.qk": 4})
    for bad in (0, 17, 4.0, True):
        with pytest.raises(ValueError, match="1..16"):
            M.set_product_bits(qvit, bad)
    with pytest.raises(ValueError, match="quantize_products"):
        M.product_bits(models.TinyViT())
    M.set_product_bits(qvit, None)


# ------------------------------------------------------------------------------------ multiply counts
def hand_counts() -> dict[str, int]:
    tokens, dim, heads, hidden = 17, 64, 4, 128
    block = {"attn.qkv": tokens * dim * 3 * dim, "attn.qk": heads * tokens * (dim // heads) * tokens,
             "attn.av": heads * tokens * tokens * (dim // heads), "attn.proj": tokens * dim * dim,
             "mlp.fc1": tokens * dim * hidden, "mlp.fc2": tokens * hidden * dim}
    return {"patch_embed": 16 * 49 * dim, **{f"blocks.{i}.{p}": n for i in range(6) for p, n in block.items()},
            "head": dim * 10}


def test_product_costs_are_the_hand_counted_multiplies(vit, qvit):
    expected = hand_counts()
    assert M.product_costs(vit) == expected and list(M.product_costs(vit)) == list(expected)
    assert M.product_costs(qvit) == expected                            # through the wrappers too
    assert M.product_costs(vit, input_shape=(3, 1, 28, 28)) == expected  # per image
    assert models.matmul_multiplies(vit) == expected                    # one implementation
    assert sum(expected.values()) == 3_615_104


def test_product_costs_counts_with_the_given_multiply_count(vit):
    seen = []

    def operations(a_shape, b_shape):
        seen.append((a_shape, b_shape))
        return 1

    costs = M.product_costs(vit, functions={"multiply_count": operations})
    assert set(costs.values()) == {1} and len(seen) == 38
    assert seen[0] == ((1, 16, 49), (49, 64)) and seen[2] == ((1, 4, 17, 16), (1, 4, 16, 17))


# -------------------------------------------------------------------------------------------- sweeps
def test_single_product_sweep_replays_float_blocks_without_changing_a_number(qvit, test_data):
    images, labels = test_data
    fresh = M.quantize_products(models.pretrained("vit"))
    before = {name: M.config_accuracy(fresh, {name: 2}, images, labels, batch_size=40)
              for name in M.product_bits(fresh)}
    swept = M.single_product_accuracies(qvit, images, labels, bits=2, batch_size=40, progress=False)
    assert swept == before and len(set(swept.values())) > 3                # INT2 products differ
    assert all(b is None for b in M.product_bits(qvit).values())          # bits restored
    assert len(qvit.blocks) == 6 and all(isinstance(b, models.ViTBlock) for b in qvit.blocks)   # no replay left
    assert M.config_accuracy(qvit, 2, images, labels) == M.config_accuracy(fresh, 2, images, labels)  # untouched


def test_single_product_sweep_of_a_model_without_blocks_evaluates_whole():
    torch.manual_seed(0)
    mlp = M.quantize_products(models.TinyMLP())
    images, labels = torch.randn(30, 1, 28, 28), torch.randint(0, 10, (30,))
    swept = M.single_product_accuracies(mlp, images, labels, bits=1, progress=False)
    assert swept == {name: M.config_accuracy(mlp, {name: 1}, images, labels) for name in ("fc1", "fc2")}


def test_greedy_curve_ends_are_float_and_all_quantized(qvit, test_data):
    images, labels = test_data
    order = list(reversed(list(M.product_modules(qvit))))[:5]
    curve = M.greedy_curve(qvit, order, images, labels, bits=2, progress=False)
    assert len(curve) == 6
    assert curve[0] == M.accuracy(qvit, images, labels)
    assert curve[3] == M.config_accuracy(qvit, dict.fromkeys(order[:3], 2), images, labels)
    assert curve[5] == M.config_accuracy(qvit, dict.fromkeys(order, 2), images, labels)
    with pytest.raises(ValueError, match="distinct"):
        M.greedy_curve(qvit, ["head", "head"], images, labels, progress=False)


def test_config_accuracy_restores_the_bits_and_checks_the_data(qvit, test_data):
    images, labels = test_data
    M.set_product_bits(qvit, {"head": 8})
    M.config_accuracy(qvit, 2, images, labels)
    assert M.product_bits(qvit)["head"] == 8 and M.product_bits(qvit)["patch_embed"] is None
    with pytest.raises(ValueError, match="same length"):
        M.config_accuracy(qvit, 2, images, labels[:-1])
    M.set_product_bits(qvit, None)


# ------------------------------------------------------------------------------------------- budgets
def test_budget_fractions_by_products_and_by_multiplies():
    costs = {"a": 10, "b": 30, "c": 60}
    assert M.budget_fractions(["c", "a", "b"], 2, costs) == (2 / 3, 0.7)
    assert M.budget_fractions(["c", "a", "b"], 0, costs) == (0.0, 0.0)
    with pytest.raises(ValueError):
        M.budget_fractions(["c", "a"], 3, costs)


def test_first_dip_stops_at_the_first_crossing_where_the_budget_reads_on():
    curve = [0.90, 0.895, 0.87, 0.89, 0.886, 0.80]          # dips below 0.88 at k = 2, comes back at k = 3, 4
    assert M.first_dip(curve, 0.90, 0.02) == 1
    assert M.products_within_budget(curve, 0.90, 0.02) == 4
    assert M.first_dip(curve, 0.90, 0.20) == len(curve) - 1  # never below the line
    assert M.first_dip(curve, 0.95, 0.01) == -1               # even curve[0] is below it


def test_drop_table_and_the_additive_prediction():
    sweeps = {8: {"a": 0.9, "b": 0.89}, 4: {"a": 0.88, "b": 0.91}, 2: {"a": 0.5, "b": 0.7}}
    drops = M.drop_table(sweeps, 0.9, ["a", "b"])
    assert torch.allclose(drops, torch.tensor([[0.0, 0.02, 0.4], [0.01, -0.01, 0.2]], dtype=torch.float64))
    assert M.additive_prediction(0.9, drops, [4, 2]) == pytest.approx(0.9 - 0.02 - 0.2)
    with pytest.raises(ValueError, match="sweep"):
        M.drop_table({8: {}, 4: {}}, 0.9, ["a"])
    with pytest.raises(ValueError):
        M.additive_prediction(0.9, drops, [4, 3])


def test_greedy_allocation_fits_the_budget_but_is_not_optimal():
    trap = torch.tensor([[0.0, 0.001, 0.5], [0.0, 0.1, 0.2]], dtype=torch.float64)
    greedy = M.greedy_allocation(trap, [10, 11], 124)
    assert greedy == [4, 4]                                                     # hand trace: 0 first, then 1
    exact = M.allocate_bits(trap, [10, 11], 124)
    assert exact == [8, 4]
    assert M.additive_prediction(0, trap, exact) > M.additive_prediction(0, trap, greedy)
    assert M.greedy_allocation(trap, [10, 11], 168) == [8, 8]
    assert M.greedy_allocation(trap, [10, 11], 42) == [2, 2]
    with pytest.raises(ValueError, match="42"):
        M.greedy_allocation(trap, [10, 11], 41)


# ----------------------------------------------------------------------------------------- sandbox
MACHINERY = ["QuantizedProduct", "product_modules", "quantize_products", "set_product_bits", "product_bits",
             "product_costs", "accuracy", "config_accuracy", "single_product_accuracies", "greedy_curve",
             "budget_fractions", "drop_table", "additive_prediction", "greedy_allocation", "centred_codes",
             "hessian_traces", "hawq_scores", "spearman"]


def test_the_machinery_survives_the_answer_free_package():
    # The grader's sandbox replaces the references and every internal they are built from by stubs, keeping
    # what the setup cell imports. The machinery resolves graded functions by dotted name, so it must reach no
    # reference statically and share no internal with them — then it works even if the setup imports none of it.
    from autograder import student_build
    from lowbit.quant.graded import LAB6_REFERENCES

    root = Path(__file__).resolve().parent.parent / "lowbit"
    graph = student_build._Graph(student_build._parse(root))
    protected = sorted(f"{module}.{name}" for name, module in LAB6_REFERENCES.items())
    machinery = {f"lowbit.quant.mixed.{name}" for name in MACHINERY} | {"lowbit.models.matmul_multiplies"}
    assert machinery <= set(graph.defs) and set(protected) <= set(graph.defs)
    reached = graph.closure(machinery)
    assert not reached & set(protected)
    removed = set(student_build.removed_names(root, protected, []))
    assert set(protected) <= removed and not removed & reached, sorted(removed & reached)


def test_part5_reaches_no_reference_and_is_kept_when_the_lab_imports_it():
    # Part 5 builds on Lab 1's and Lab 2's quantizers, which share internals (validate, fakequant) with the
    # Lab 6 references: kept in the sandbox when a setup cell imports these names (as Lab 5's pipeline).
    from autograder import student_build
    from lowbit.quant.graded import LAB6_REFERENCES

    root = Path(__file__).resolve().parent.parent / "lowbit"
    graph = student_build._Graph(student_build._parse(root))
    protected = sorted(f"{module}.{name}" for name, module in LAB6_REFERENCES.items())
    part5 = {f"lowbit.quant.mixed.{name}" for name in ("cnn_layer_weights", "cnn_policy_size", "cnn_policy_accuracy",
                                                         "cnn_layer_sensitivities", "pareto_front", "cnn_pareto")}
    assert part5 <= set(graph.defs) and not graph.closure(part5) & set(protected)
    removed = set(student_build.removed_names(root, protected, sorted(part5)))
    assert set(protected) <= removed and not removed & graph.closure(part5, stop=set(protected))


# ---------------------------------------------------------------------------------------------- HAWQ
@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = models.TinyViT(dim=8, depth=1, heads=2, mlp_ratio=1).eval()
    return model, torch.randn(3, 1, 28, 28), torch.tensor([1, 4, 7])


def _loss_with(model, images, labels, module, index, value):
    def hook(_, inputs):
        return tuple(value if i == index else x for i, x in enumerate(inputs))
    handle = module.register_forward_pre_hook(hook)
    try:
        return nn.functional.cross_entropy(model(images), labels)
    finally:
        handle.remove()


def exact_operand_trace(model, images, labels, module, index):
    """Tr of the full Hessian of the loss w.r.t. one input of ``module`` (torch.autograd.functional.hessian)."""
    captured = {}
    handle = module.register_forward_pre_hook(lambda _, inputs: captured.update(v=inputs[index].detach().clone()))
    model(images)
    handle.remove()
    v0 = captured["v"]
    h = torch.autograd.functional.hessian(lambda v: _loss_with(model, images, labels, module, index, v), v0)
    return float(h.reshape(v0.numel(), v0.numel()).diagonal().sum()), v0.numel()


def exact_weight_trace(model, images, labels, name):
    params = dict(model.named_parameters())
    w0 = params[f"{name}.weight"].detach().clone()
    loss = lambda w: nn.functional.cross_entropy(   # noqa: E731
        torch.func.functional_call(model, {**params, f"{name}.weight": w}, (images,)), labels)
    h = torch.autograd.functional.hessian(loss, w0)
    return float(h.reshape(w0.numel(), -1).diagonal().sum()) / w0.numel()


def test_hutchinson_traces_converge_to_the_exact_hessian_traces(tiny):
    model, images, labels = tiny
    estimate = M.hessian_traces(model, images, labels, samples=300, progress=False)
    assert list(estimate) == models.matmul_names(model)
    for name in ("head", "blocks.0.mlp.fc1"):              # seeded probes: deterministic, within 12 %
        exact = exact_weight_trace(model, images, labels, name)
        assert estimate[name] == pytest.approx(exact, rel=0.12), name
    av = model.blocks[0].attn.av
    (ta, na), (tb, nb) = (exact_operand_trace(model, images, labels, av, i) for i in (0, 1))
    # one probe covers every product, so a small block (attention operands) carries the variance of the cross
    # terms with the large ones: its estimate is right in sign and size, within 40 % at 300 probes
    assert estimate["blocks.0.attn.av"] == pytest.approx((ta + tb) / (na + nb), rel=0.4)
    again = M.hessian_traces(model, images, labels, samples=3, progress=False)
    assert again == M.hessian_traces(model, images, labels, samples=3, progress=False)        # seeded
    assert again != M.hessian_traces(model, images, labels, samples=3, seed=1, progress=False)


def test_hawq_scores_are_trace_times_the_squared_quantization_error(tiny):
    model, images, labels = tiny
    traces = {name: 2.0 for name in models.matmul_names(model)}
    scores = M.hawq_scores(model, images, labels, bits=3, traces=traces)
    w = model.head.weight.detach()
    assert scores["head"] == pytest.approx(2.0 * float((fake_by_numpy(w, 3) - w).double().pow(2).sum()), rel=1e-6)
    captured = {}
    handle = model.blocks[0].attn.qk.register_forward_pre_hook(lambda _, inputs: captured.update(a=inputs))
    with torch.no_grad():
        model(images)
    handle.remove()
    error = sum(float((fake_by_numpy(t, 3) - t).double().pow(2).sum()) for t in captured["a"])
    assert scores["blocks.0.attn.qk"] == pytest.approx(2.0 * error, rel=1e-6)
    assert M.hawq_scores(model, images, labels, bits=8, traces=traces)["head"] < scores["head"]
    with pytest.raises(ValueError, match="traces"):
        M.hawq_scores(model, images, labels, traces={"head": 1.0})


def test_spearman_against_the_rank_difference_formula_and_ties():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, generator=g), torch.randn(20, generator=g)
    d = (torch.argsort(torch.argsort(x)) - torch.argsort(torch.argsort(y))).double()
    assert M.spearman(x, y) == pytest.approx(1 - 6 * float((d ** 2).sum()) / (20 * (20 ** 2 - 1)))
    assert M.spearman([1, 2, 3, 4], [10, 20, 30, 1000]) == pytest.approx(1.0)
    assert M.spearman({"a": 1, "b": 2, "c": 3}, {"c": 0, "b": 1, "a": 2}) == pytest.approx(-1.0)
    # ties share the average rank: x ranks (1.5, 1.5, 3), y ranks (1, 2, 3) → Pearson = sqrt(3)/2
    assert M.spearman([5, 5, 7], [1, 2, 3]) == pytest.approx(3 ** 0.5 / 2)
    for a, b in (([1], [2]), ([1, 2], [1, 2, 3]), ([1, 1], [1, 2]), ([1, float("nan")], [1, 2])):
        with pytest.raises(ValueError):
            M.spearman(a, b)


# ------------------------------------------------------------------------------------ Part 5: the CNN
@pytest.fixture(scope="module")
def cnn_setup():
    images, labels = data.load_fashion_mnist("test", "embedded")
    return models.fold_batchnorm(models.pretrained("cnn")), images[:64], labels[:64]


def test_cnn_layer_weights_are_the_lab1_and_lab2_quantizers(cnn_setup):
    from lowbit.quant import kmeans, ptq

    cnn, _, _ = cnn_setup
    weights = M.cnn_layer_weights(cnn, bits=(4,), methods=("linear", "kmeans"))
    linear = ptq.quantize_weights(cnn, 4, granularity="channel")
    clustered, _ = kmeans.quantize_model_kmeans(cnn, 4)
    for name in ("conv1", "conv2", "conv3", "fc"):
        assert torch.equal(weights[("linear", 4)][name], linear.get_submodule(name).weight)
        assert torch.equal(weights[("kmeans", 4)][name], clustered.get_submodule(name).weight)
        assert len(torch.unique(weights[("kmeans", 4)][name])) <= 16


def test_cnn_policy_size_by_hand(cnn_setup):
    cnn, _, _ = cnn_setup
    numel = {name: cnn.get_submodule(name).weight.numel() for name in ("conv1", "conv2", "conv3", "fc")}
    total = sum(p.numel() for p in cnn.parameters())
    policy = {"conv1": ("linear", 8), "conv2": ("kmeans", 2), "fc": ("linear", 4)}
    expected = (32 * (total - numel["conv1"] - numel["conv2"] - numel["fc"]) + 8 * numel["conv1"]
                + 2 * numel["conv2"] + 4 * 32 + 4 * numel["fc"])
    assert M.cnn_policy_size(cnn, policy) == expected
    assert M.cnn_policy_size(cnn, {}) == 32 * total


def test_cnn_pareto_front_holds_the_uniform_points_and_is_not_dominated(cnn_setup):
    cnn, images, labels = cnn_setup
    points = M.cnn_pareto(cnn, images, labels, bits=(8, 2), methods=("linear", "kmeans"), progress=False)
    uniform = [p for p in points if p.uniform]
    assert len(uniform) == 4 and all(len(set(p.policy.values())) == 1 for p in uniform)
    for p in uniform:
        assert p.accuracy == M.cnn_policy_accuracy(cnn, p.policy, images, labels)
        assert p.size_bits == M.cnn_policy_size(cnn, p.policy)
    front = M.pareto_front(points)
    assert any(p.uniform for p in front) and any(not p.uniform for p in points)
    for p in front:
        assert not any(q.size_bits <= p.size_bits and q.accuracy >= p.accuracy and
                       (q.size_bits, q.accuracy) != (p.size_bits, p.accuracy) for q in points)
    for q in points:                                                     # every point is on or under the front
        assert any(p.size_bits <= q.size_bits and p.accuracy >= q.accuracy for p in front)
    assert [p.size_bits for p in front] == sorted(p.size_bits for p in front)


def test_cnn_sensitivities_quantize_one_layer_only(cnn_setup):
    from lowbit.quant import ptq

    cnn, images, labels = cnn_setup
    single = M.cnn_layer_sensitivities(cnn, images, labels, bits=(2,), methods=("linear",), progress=False)
    assert list(single) == ["conv1", "conv2", "conv3", "fc"]
    expected = M.accuracy(ptq.quantize_weights(cnn, policy=ptq.weight_policy(None, policy=None).__class__(
        {"w_bits": None}, rules=[("conv2", {"w_bits": 2})])), images, labels)
    assert single["conv2"][("linear", 2)] == expected
    with pytest.raises(ValueError, match="methods"):
        M.cnn_layer_sensitivities(cnn, images, labels, methods=("lsq",), progress=False)
