"""lowbit.quant.qat modules: assembled from given quantize / fold functions, QATConvBn2d against nn.BatchNorm2d,
the LSQ+ quantizer, the freezing schedule and the pitfalls (step <= 0, empty calibration)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lowbit.quant import qat as Q
from lowbit.train import train


def data(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))
    for m in model:
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model


def tiny_loader(n: int = 32, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 1, 8, 8, generator=g)
    labels = (images.mean(dim=(1, 2, 3)) > 0).long() + (images[:, :, :4].mean(dim=(1, 2, 3)) > 0.3).long()
    return DataLoader(TensorDataset(images, labels), batch_size=8)


# ------------------------------------------------------------------------------------------ QATConvBn2d
def conv_bn(seed: int = 0) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    model = small_cnn(seed)
    return model[0], model[1]


def test_qat_conv_bn_without_quantization_is_conv_then_batchnorm_in_training_and_eval():
    conv, bn = conv_bn()
    reference_bn = copy.deepcopy(bn)
    module = Q.QATConvBn2d.of(copy.deepcopy(conv), bn, nn.Identity())
    x = data(5, 1, 6, 6, seed=1)
    module.train()
    reference_bn.train()
    for seed in range(3):                                            # running statistics follow BatchNorm's
        x = data(5, 1, 6, 6, seed=seed)
        expected = reference_bn(conv(x))
        assert torch.allclose(module(x), expected, atol=1e-5)
    assert torch.allclose(bn.running_mean, reference_bn.running_mean, atol=1e-6)
    assert torch.allclose(bn.running_var, reference_bn.running_var, atol=1e-6)
    assert int(bn.num_batches_tracked) == 3
    module.eval()
    reference_bn.eval()
    assert torch.allclose(module(x), reference_bn(conv(x)), atol=1e-5)


def test_qat_conv_bn_gradients_equal_batchnorm_training_gradients():
    conv, bn = conv_bn(seed=2)
    module = Q.QATConvBn2d.of(copy.deepcopy(conv), copy.deepcopy(bn), nn.Identity()).train()
    bn.train()
    x = data(4, 1, 6, 6, seed=3)
    upstream = data(4, 4, 6, 6, seed=4)
    theirs = torch.autograd.grad((bn(conv(x)) * upstream).sum(), [conv.weight, bn.weight, bn.bias])
    ours = torch.autograd.grad((module(x) * upstream).sum(), [module.weight, module.bn.weight, module.bn.bias])
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, atol=1e-4)


def test_freeze_bn_stats_folds_with_running_statistics_in_training_and_stops_updating_them():
    conv, bn = conv_bn()
    module = Q.QATConvBn2d.of(copy.deepcopy(conv), copy.deepcopy(bn), nn.Identity()).train()
    module.freeze_bn_stats()
    before = module.bn.running_mean.clone()
    x = data(5, 1, 6, 6)
    assert torch.allclose(module(x), bn.eval()(conv(x)), atol=1e-5)
    assert torch.equal(module.bn.running_mean, before)


def test_qat_conv_bn_assembles_from_the_given_fold_and_statistics_functions():
    conv, bn = conv_bn()
    calls = []

    def stats_fn(conv_out, running_mean, running_var, training):
        calls.append(("stats", tuple(conv_out.shape), training))
        return Q.bn_fold_statistics(conv_out, running_mean, running_var, training)

    def fold_fn(*args):
        calls.append(("fold",))
        w, b = Q.fold_batchnorm(*args)
        return 2 * w, b                                           # a wrong fold must show in the output

    module = Q.QATConvBn2d.of(conv, bn, nn.Identity(), fold_fn=fold_fn, stats_fn=stats_fn).train()
    x = data(2, 1, 5, 5)
    out = module(x)
    module.eval()
    module(x)
    assert calls == [("stats", (2, 4, 5, 5), True), ("fold",), ("stats", (1, 4), False), ("fold",)]
    reference = Q.QATConvBn2d.of(conv, copy.deepcopy(bn), nn.Identity()).train()
    assert not torch.allclose(out, reference(x))


def test_prepare_qat_fold_bn_replaces_pairs_and_freeze_qat_gives_plain_convs_with_the_same_outputs():
    model = small_cnn().eval()
    qat = Q.prepare_qat(model, 4, 4, fold_bn=True)
    assert isinstance(qat[0], Q.QATConvBn2d) and isinstance(qat[1], nn.Identity)
    assert isinstance(qat[3], Q.QATConvBn2d) and isinstance(qat[4], nn.Identity)
    assert isinstance(qat[8], Q.QATLinear) and isinstance(model[1], nn.BatchNorm2d)
    x = data(3, 1, 8, 8)
    qat.eval()
    expected = qat(x)
    frozen = Q.freeze_qat(qat)
    assert type(frozen[0]) is nn.Conv2d and frozen[0].bias is not None
    assert torch.allclose(frozen(x), expected, atol=1e-5)
    assert Q.freeze_bn_stats(qat) == 2


def test_qat_conv_bn_refuses_mismatched_or_statless_batchnorm():
    conv, _ = conv_bn()
    with pytest.raises(ValueError, match="features"):
        Q.QATConvBn2d.of(conv, nn.BatchNorm2d(5))
    with pytest.raises(ValueError, match="running statistics"):
        Q.QATConvBn2d.of(conv, nn.BatchNorm2d(4, track_running_stats=False))


# ------------------------------------------------------------------------------------------ quantize_fn
def test_prepare_qat_uses_the_given_weight_and_activation_quantize_functions():
    seen = {"w": 0, "a": 0}

    def weight_fn(x, step, bits, signed):
        seen["w"] += 1
        return Q.lsq_fake_quantize(x, step, bits, signed)

    def activation_fn(x, step, bits, signed):
        seen["a"] += 1
        return torch.zeros_like(x)                                # a wrong function changes the output

    model = small_cnn().eval()
    qat = Q.prepare_qat(model, 4, 4, weight_quantize_fn=weight_fn, activation_quantize_fn=activation_fn).eval()
    out = qat(data(2, 1, 8, 8))
    assert seen == {"w": 3, "a": 2}
    assert torch.allclose(out, out[0].expand_as(out)), "zeroed activations make every image's logits equal"


@pytest.mark.parametrize("activation,expected", [("pact", Q.PACTQuantizer), ("lsq+", Q.LSQPlusQuantizer)])
def test_prepare_qat_passes_activation_functions_to_pact_and_lsq_plus(activation, expected):
    calls = []

    def fn(*args):
        calls.append(len(args))
        return (Q.pact_quantize if activation == "pact" else Q.lsq_plus_fake_quantize)(*args)

    qat = Q.prepare_qat(small_cnn(), 4, 4, activation=activation, activation_quantize_fn=fn)
    assert sum(isinstance(m, expected) for m in qat.modules()) == 2
    qat(data(2, 1, 8, 8))
    assert calls == [3, 3] if activation == "pact" else calls == [4, 4]


# ------------------------------------------------------------------------------------------ LSQ+ quantizer
def test_lsq_plus_quantizer_initialises_min_max_and_learns_step_and_zero_point():
    q = Q.LSQPlusQuantizer(4)
    step, zero = q.step, q.zero_point
    x = data(100, 3) - 0.5                                           # negative values: a zero point pays
    y = q(x)
    assert q.step is step and q.zero_point is zero, "parameters are never replaced"
    lo, hi = float(x.min()), float(x.max())
    assert float(q.step) == pytest.approx((hi - lo) / 15, rel=1e-5)
    assert float(q.zero_point) == round(-lo / float(q.step))
    assert (y - x).abs().max() <= float(q.step) / 2 + 1e-6
    (y * data(100, 3, seed=5)).sum().backward()
    assert q.step.grad is not None and q.zero_point.grad is not None


def test_lsq_plus_quantizer_per_channel_state_dict_round_trip():
    w = data(4, 3, 3, 3)
    q = Q.LSQPlusQuantizer(4, channel_dim=0, example=w)
    assert q.step.shape == (4, 1, 1, 1) and q.zero_point.shape == (4, 1, 1, 1)
    fresh = Q.LSQPlusQuantizer(4, channel_dim=0)
    fresh.load_state_dict(q.state_dict())
    assert torch.equal(fresh(w), q(w))


def test_retarget_keeps_the_clipping_range_of_lsq_and_lsq_plus():
    lsq = Q.LSQQuantizer(8, signed=False, example=data(50).abs())
    clip = float(lsq.step) * 255
    lsq.retarget(4)
    assert lsq.bits == 4 and float(lsq.step) * 15 == pytest.approx(clip)
    plus = Q.LSQPlusQuantizer(8, example=data(50))
    low = -float(plus.zero_point) * float(plus.step)
    plus.retarget(2)
    assert -float(plus.zero_point) * float(plus.step) == pytest.approx(low, rel=1e-5)


# ------------------------------------------------------------------------------------------ pitfalls
def test_a_step_driven_below_zero_is_floored_in_forward_with_a_straight_through_gradient():
    q = Q.LSQQuantizer(4, example=data(20))
    x = data(20)
    with torch.no_grad():
        q.step.fill_(-0.05)                                          # what a too-large optimizer step does
    with pytest.raises(ValueError, match="step must be finite and > 0"):
        Q.lsq_fake_quantize(x, q.step, 4)                          # the bare function refuses it ...
    y = q(x)                                                          # ... the quantizer floors it
    assert torch.isfinite(y).all() and y.abs().max() <= 8 * Q.STEP_FLOOR * 1.001
    y.sum().backward()
    assert q.step.grad is not None and float(q.step.grad) != 0.0, "the step can still learn its way back"
    with torch.no_grad():
        q.step.fill_(float("nan"))
    with pytest.raises(ValueError, match="step"):
        q(x)


def test_training_with_a_huge_learning_rate_on_the_steps_keeps_finite_losses():
    qat = Q.prepare_qat(small_cnn(), 4, 4)
    qat(next(iter(tiny_loader()))[0])                                # initialise the activation steps
    steps = [p for n, p in qat.named_parameters() if n.endswith("step")]
    others = [p for n, p in qat.named_parameters() if not n.endswith("step")]
    optimizer = torch.optim.SGD([{"params": steps, "lr": 50.0}, {"params": others, "lr": 0.01}])
    losses = train(qat, tiny_loader(), epochs=2, optimizer=optimizer, progress=False, device="cpu")
    assert any(float(p.min()) <= 0 for p in steps), "the test must drive some step to <= 0"
    assert all(torch.isfinite(torch.tensor(losses)))


def test_an_empty_or_nan_first_batch_gives_a_clear_error_not_a_nan_range():
    with pytest.raises(ValueError, match="empty"):
        Q.LSQQuantizer(4, signed=False)(torch.empty(0, 3))
    with pytest.raises(ValueError, match="initial step"):
        Q.LSQQuantizer(4, signed=False)(torch.full((4,), float("nan")))
    with pytest.raises(ValueError, match="NaN"):
        Q.LSQPlusQuantizer(4)(torch.full((4,), float("nan")))
    with pytest.raises(ValueError, match="constant"):
        Q.LSQPlusQuantizer(4)(torch.zeros(4))


def test_train_refuses_parameters_created_after_the_optimizer_was_built():
    class Lazy(nn.Module):                                           # creates its scale in the first forward
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(64, 3)
            self.scale = None

        def forward(self, x):
            if self.scale is None:
                self.scale = nn.Parameter(torch.ones(()))
            return self.linear(x.flatten(1)) * self.scale

    with pytest.raises(RuntimeError, match="scale"):
        train(Lazy(), tiny_loader(), progress=False, device="cpu")
    subset = nn.Linear(64, 3)                                        # an optimizer over a subset stays allowed
    model = nn.Sequential(nn.Flatten(), subset)
    train(model, tiny_loader(), optimizer=torch.optim.SGD([subset.bias], lr=0.1), progress=False, device="cpu")


# ------------------------------------------------------------------------------------------ schedule
def test_freeze_schedule_freezes_bn_then_ranges_at_the_given_epochs():
    qat = Q.prepare_qat(small_cnn(), 4, 4, fold_bn=True)
    loader = tiny_loader()                                            # 4 batches per epoch
    seen = []

    def record(model, step, _loss):
        seen.append((step, bool(model[0].bn_frozen), model[0].weight_quantizer.step.requires_grad))

    hook = Q.freeze_schedule(len(loader), freeze_bn_after=0.5, freeze_ranges_after=1.0)
    train(qat, loader, epochs=2, after_step=[hook, record], progress=False, device="cpu")
    assert seen[0] == (0, False, True) and seen[1] == (1, True, True)
    assert seen[3] == (3, True, False) and seen[-1] == (7, True, False)
    frozen_step = qat[0].weight_quantizer.step
    assert frozen_step.grad is None


def test_freeze_ranges_counts_every_quantizer_parameter():
    qat = Q.prepare_qat(small_cnn(), 4, 4, activation="pact")
    assert Q.freeze_ranges(qat) == 3 + 2
    assert Q.freeze_ranges(qat, frozen=False) == 5
    assert all(p.requires_grad for p in qat.parameters())
    with pytest.raises(ValueError, match="steps_per_epoch"):
        Q.freeze_schedule(0)


# ------------------------------------------------------------------------------------------ the recipe
def test_first_last_policy_keeps_the_first_and_last_layer_at_eight_bits():
    configs = Q.first_last_policy(small_cnn(), 2).resolve(small_cnn())
    assert {name: c.w_bits for name, c in configs.items()} == {"0": 8, "3": 2, "8": 8}
    assert Q.first_last_policy(small_cnn(), 2, None).resolve(small_cnn())["0"].w_bits == 2


def test_prepare_recipe_puts_the_last_activation_at_first_last_bits_and_folds_bn():
    qat = Q.prepare_recipe(small_cnn(), 2, 3)
    activations = [m for m in qat.modules() if isinstance(m, Q.LSQQuantizer) and m.channel_dim is None]
    assert [q.bits for q in activations] == [3, 8]
    assert isinstance(qat[0], Q.QATConvBn2d) and qat[0].weight_quantizer.bits == 8 and qat[3].weight_quantizer.bits == 2
    assert qat[8].weight_quantizer.bits == 8


@pytest.mark.parametrize("method,outside_grad", [("ste", 1.0), ("clipped_ste", 0.0)])
def test_fixed_range_methods_do_not_learn_steps_and_apply_their_input_gradient(method, outside_grad):
    qat = Q.prepare_recipe(small_cnn(), 2, 2, method=method, fold_bn=False)
    quantizer = qat[3].weight_quantizer
    w = torch.tensor([[[[100.0]]]]).expand(6, 4, 3, 3).clone().requires_grad_()    # far outside the range
    quantizer(w).sum().backward()
    assert torch.all(w.grad == outside_grad)
    assert quantizer.step.grad is None, "the fixed-range baselines keep their initial step"


def test_train_qat_is_seeded_limits_batches_and_runs_the_freeze_schedule():
    runs = [Q.train_qat(small_cnn(), 4, 4, epochs=2, fraction=0.5, loader=tiny_loader(), freeze_bn_after=1.0,
                        progress=False) for _ in range(2)]
    assert len(runs[0].losses) == 2 * 2                                 # ceil(0.5 * 4 batches) per epoch
    assert runs[0].losses == runs[1].losses and not runs[0].diverged
    assert bool(runs[0].model[0].bn_frozen) and not runs[0].model.training
    assert runs[0].settings["fraction"] == 0.5 and runs[0].seconds > 0
    with pytest.raises(ValueError, match="fraction"):
        Q.train_qat(small_cnn(), 4, 4, fraction=0.0, loader=tiny_loader(), progress=False)
    with pytest.raises(TypeError, match="unexpected"):
        Q.train_qat(small_cnn(), 4, 4, loader=tiny_loader(), progress=False, weight_fn=None)


def test_train_qat_trains_the_students_functions_when_given():
    calls = {"fold": 0}

    def fold_fn(*args):
        calls["fold"] += 1
        return Q.fold_batchnorm(*args)

    Q.train_qat(small_cnn(), 4, 4, epochs=1, fraction=0.25, loader=tiny_loader(), progress=False, fold_fn=fold_fn)
    assert calls["fold"] >= 2                                           # both folded convs, every batch


def test_retarget_bits_moves_a_trained_model_down_keeping_first_and_last_at_eight():
    qat = Q.prepare_recipe(small_cnn(), 8, 8)
    qat(next(iter(tiny_loader()))[0])
    middle = qat[3].weight_quantizer
    clip = middle.step.detach() * 127
    Q.retarget_bits(qat, 2, 2)
    assert middle.bits == 2 and torch.allclose(middle.step.detach() * 1, clip)
    assert qat[0].weight_quantizer.bits == 8 and qat[8].weight_quantizer.bits == 8
    activations = [m for m in qat.modules() if isinstance(m, Q.LSQQuantizer) and m.channel_dim is None]
    assert [q.bits for q in activations] == [2, 8]


def test_ptq_baselines_use_the_same_layout_as_the_recipe():
    images = next(iter(tiny_loader()))[0]
    models = Q.ptq_baselines(small_cnn().eval(), 2, 2, images, observers=("minmax",), clips=("minmax", "mse"))
    assert list(models) == ["minmax, minmax weights", "minmax, mse weights"]
    bits = [q.bits for q in models["minmax, mse weights"].activation_quantizers()]
    assert bits == [8, 2, 8]
    assert models["minmax, minmax weights"](images).shape == (8, 3)


def test_qat_run_reports_divergence():
    run = Q.QATRun(nn.Linear(1, 1), [0.5, float("nan")], 1.0)
    assert run.diverged and not Q.QATRun(nn.Linear(1, 1), [0.5], 1.0).diverged
