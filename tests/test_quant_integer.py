"""lowbit.quant.integer: exact integer matmul, quantized linear/conv, and the integer-only FashionCNN."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowbit.quant.integer import (IntegerCNN, fake_quant_cnn, integerize, quantize_bias, quantize_multiplier,
                                  quantized_conv2d, quantized_linear, quantized_matmul, requantize)
from lowbit.quant.linear import affine_qparams, linear_dequantize, linear_quantize


def gen(seed):
    return torch.Generator().manual_seed(seed)


def reference_matmul(q_a, z_a, q_b, z_b):
    return (q_a.long() - torch.as_tensor(z_a).long().reshape(-1, 1)) @ \
        (q_b.long() - torch.as_tensor(z_b).long().reshape(1, -1))


@pytest.mark.parametrize("m, k, n", [(1, 1, 1), (7, 33, 5), (64, 576, 10)])
def test_quantized_matmul_exact_on_random_uint8_int8(m, k, n):
    q_a = torch.randint(0, 256, (m, k), generator=gen(k), dtype=torch.uint8)
    q_b = torch.randint(-127, 128, (k, n), generator=gen(n), dtype=torch.int8)
    out = quantized_matmul(q_a, 131, q_b, 0)
    assert out.dtype == torch.int32
    assert torch.equal(out.long(), reference_matmul(q_a, 131, q_b, 0))


def test_quantized_matmul_extreme_values_and_vector_zero_points():
    q_a = torch.full((3, 1000), 255, dtype=torch.uint8)
    q_a[1] = 0
    q_b = torch.full((1000, 4), -128, dtype=torch.int8)
    q_b[:, 1] = 127
    z_a = torch.tensor([0, 255, 17])
    z_b = torch.tensor([127, -128, 0, 5])
    out = quantized_matmul(q_a, z_a, q_b, z_b)
    assert torch.equal(out.long(), reference_matmul(q_a, z_a, q_b, z_b))
    assert int(out.abs().max()) == 255 * 255 * 1000


def test_quantized_matmul_uses_int64_fallback_for_wide_operands_and_checks_overflow():
    q_a = torch.randint(-2 ** 20, 2 ** 20, (4, 8), generator=gen(1), dtype=torch.int32)
    q_b = torch.randint(-2 ** 8, 2 ** 8, (8, 3), generator=gen(2), dtype=torch.int32)
    assert torch.equal(quantized_matmul(q_a, 3, q_b, -2).long(), reference_matmul(q_a, 3, q_b, -2))
    big = torch.full((1, 4), 2 ** 20, dtype=torch.int32)
    with pytest.raises(OverflowError, match="int32"):
        quantized_matmul(big, 0, big.t(), 0)


def test_quantized_matmul_errors():
    with pytest.raises(TypeError, match="integers"):
        quantized_matmul(torch.ones(2, 2), 0, torch.ones(2, 2, dtype=torch.int8), 0)
    with pytest.raises(ValueError, match=r"\[M, K\]"):
        quantized_matmul(torch.ones(2, 3, dtype=torch.int8), 0, torch.ones(2, 2, dtype=torch.int8), 0)
    with pytest.raises(ValueError, match="entries"):
        quantized_matmul(torch.ones(2, 2, dtype=torch.int8), torch.tensor([1, 2, 3]),
                         torch.ones(2, 2, dtype=torch.int8), 0)


def test_quantize_bias_and_multiplier():
    q = quantize_bias(torch.tensor([0.5, -0.25]), 0.1, torch.tensor([0.5, 0.25]))
    assert q.dtype == torch.int32 and q.tolist() == [10, -10]
    with pytest.raises(OverflowError):
        quantize_bias(torch.tensor([1e6]), 1e-6, 1e-6)
    m = torch.tensor([0.3, 1e-4, 0.999999, 2.5])
    m0, shift = quantize_multiplier(m)
    assert torch.all((m0 >= 2 ** 30) & (m0 < 2 ** 31))
    assert torch.allclose(m0.double() * 2.0 ** (-shift.double()), m.double(), rtol=2 ** -30)


def test_requantize_float_and_fixed_agree_within_one():
    acc = torch.randint(-2 ** 20, 2 ** 20, (1000, 3), generator=gen(3), dtype=torch.int32)
    m = torch.tensor([1e-4, 3.7e-5, 2.2e-3])
    a = requantize(acc, m, 128, 8)
    b = requantize(acc, m, 128, 8, mode="fixed")
    expected = torch.clamp(torch.round(acc.double() * m.double()) + 128, 0, 255)
    assert torch.equal(a.double(), expected) and a.dtype == torch.uint8
    assert int((a.int() - b.int()).abs().max()) <= 1 and (a != b).float().mean() < 0.01


def _random_linear_problem(seed, n=32, d_in=64, d_out=16):
    g = gen(seed)
    x = torch.relu(torch.randn(n, d_in, generator=g))
    w = torch.randn(d_out, d_in, generator=g) / 8
    b = torch.randn(d_out, generator=g) / 4
    x_scale, x_zp = affine_qparams(float(x.min()), float(x.max()), 8, signed=False)
    w_scale = w.abs().amax(dim=1) / 127
    q_x = linear_quantize(x, x_scale, x_zp, 8, signed=False)
    q_w = linear_quantize(w, w_scale.reshape(-1, 1), 0, 8)
    y_ref = linear_dequantize(q_x, x_scale, x_zp) @ linear_dequantize(q_w, w_scale.reshape(-1, 1), 0).t() + b
    y_scale, y_zp = affine_qparams(float(y_ref.min()), float(y_ref.max()), 8, signed=False)
    return q_x, x_scale, x_zp, q_w, w_scale, b, y_ref, y_scale, y_zp


@pytest.mark.parametrize("multiplier", ["float", "fixed"])
def test_quantized_linear_within_one_step_of_float_reference(multiplier):
    q_x, x_scale, x_zp, q_w, w_scale, b, y_ref, y_scale, y_zp = _random_linear_problem(0)
    q_bias = quantize_bias(b, x_scale, w_scale)
    q_y = quantized_linear(q_x, x_scale, x_zp, q_w, w_scale, q_bias, y_scale, y_zp, multiplier=multiplier)
    assert q_y.dtype == torch.uint8 and q_y.shape == y_ref.shape
    y = linear_dequantize(q_y, y_scale, y_zp)
    # rounding the output (half a step) plus the bias rounding: within one output step everywhere
    assert float((y - y_ref).abs().max()) <= y_scale * 1.0001
    assert float((y - y_ref).abs().mean()) < y_scale / 2


def test_quantized_linear_input_validation():
    q_x, x_scale, x_zp, q_w, w_scale, b, _, y_scale, y_zp = _random_linear_problem(1)
    with pytest.raises(ValueError, match="q_bias"):
        quantized_linear(q_x, x_scale, x_zp, q_w, w_scale, torch.zeros(3, dtype=torch.int32), y_scale, y_zp)
    with pytest.raises(ValueError, match="w_scale"):
        quantized_linear(q_x, x_scale, x_zp, q_w, torch.ones(5), None, y_scale, y_zp)
    with pytest.raises(TypeError, match="integers"):
        quantized_linear(q_x.float(), x_scale, x_zp, q_w, w_scale, None, y_scale, y_zp)


def test_quantized_conv2d_pads_with_the_zero_point():
    g = gen(4)
    x = torch.rand(2, 3, 9, 9, generator=g) * 2 - 0.5
    w = torch.randn(5, 3, 3, 3, generator=g) / 4
    x_scale, x_zp = affine_qparams(float(x.min()), float(x.max()), 8, signed=False)
    w_scale = w.abs().amax(dim=(1, 2, 3)) / 127
    q_x = linear_quantize(x, x_scale, x_zp, 8, signed=False)
    q_w = linear_quantize(w, w_scale.reshape(-1, 1, 1, 1), 0, 8)
    for stride, padding in [(1, 1), (2, 0), (1, 2)]:
        y_ref = F.conv2d(linear_dequantize(q_x, x_scale, x_zp), linear_dequantize(q_w, w_scale.reshape(-1, 1, 1, 1), 0),
                         stride=stride, padding=padding)
        y_scale, y_zp = affine_qparams(float(y_ref.min()), float(y_ref.max()), 8, signed=False)
        q_y = quantized_conv2d(q_x, x_scale, x_zp, q_w, w_scale, None, y_scale, y_zp, stride, padding)
        assert q_y.shape == y_ref.shape
        assert float((linear_dequantize(q_y, y_scale, y_zp) - y_ref).abs().max()) <= y_scale * 0.5001


def _cnn_for_test():
    """The pretrained FashionCNN when its checkpoint exists, else a random one with calibrated BN stats."""
    from lowbit import models
    try:
        model = models.pretrained("cnn")
    except FileNotFoundError:
        torch.manual_seed(0)
        model = models.FashionCNN()
        model.train()
        with torch.no_grad():
            for _ in range(5):
                model(torch.randn(64, 1, 28, 28))
        model.eval()
    return models.fold_batchnorm(model)


@pytest.fixture(scope="module")
def cnn_and_images():
    from lowbit.data import calibration_batch
    images, _ = calibration_batch(160, seed=0)
    return _cnn_for_test(), images[:96], images[96:]


def test_integer_cnn_matches_fake_quant_simulation(cnn_and_images):
    model, calib, test = cnn_and_images
    state = {k: v.clone() for k, v in model.state_dict().items()}
    integer_model = integerize(model, calib, bits=8)
    assert isinstance(integer_model, IntegerCNN)
    q_int = integer_model.forward_int(test)
    assert q_int.dtype == torch.uint8 and q_int.shape == (64, 10)
    scale, zp = integer_model.output_qparams
    for dtype, exact_fraction in [(torch.float32, 0.99), (torch.float64, 0.999)]:
        simulated = integer_model.simulate(test, dtype)
        q_sim = torch.clamp(torch.round(simulated.double() / scale) + zp, 0, 255).long()
        difference = (q_int.long() - q_sim).abs()
        assert int(difference.max()) <= 1, dtype
        assert float((difference == 0).float().mean()) >= exact_fraction, dtype
    # the integer network is a good approximation of the float one
    with torch.no_grad():
        float_logits = model(test)
    integer_logits = integer_model(test)
    assert float((integer_logits - float_logits).abs().mean()) < 0.05 * float(float_logits.abs().mean())
    assert float((integer_logits.argmax(1) == float_logits.argmax(1)).float().mean()) >= 0.9
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert torch.equal(fake_quant_cnn(model, calib)(test), integer_model.simulate(test))


def test_integer_cnn_fixed_point_multiplier_agrees(cnn_and_images):
    model, calib, test = cnn_and_images
    a = integerize(model, calib).forward_int(test[:16])
    b = integerize(model, calib, multiplier="fixed").forward_int(test[:16])
    assert int((a.int() - b.int()).abs().max()) <= 1


def test_integerize_rejects_unfolded_bn_and_non_sequential_models():
    from lowbit.models import FashionCNN
    with pytest.raises(ValueError, match="fold"):
        integerize(FashionCNN().eval(), torch.randn(4, 1, 28, 28))

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, padding=1)
            self.flatten = nn.Flatten()

        def forward(self, x):
            return self.flatten(self.conv(x) + x)

    with pytest.raises(ValueError, match="in order"):
        integerize(Residual().eval(), torch.randn(4, 1, 5, 5))
    with pytest.raises(ValueError, match="non-empty"):
        integerize(nn.Sequential(nn.Linear(3, 2)), torch.empty(0, 3))


def test_integerize_sequential_mlp():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.randn(50, 1, 4, 4)
    integer_model = integerize(model, x)
    scale, _ = integer_model.output_qparams
    with torch.no_grad():
        assert float((integer_model(x) - model(x)).abs().max()) < 4 * scale


def test_integerize_runs_student_functions_and_lab_helpers(cnn_and_images):
    model, calib, test = cnn_and_images
    calls = {"matmul": 0, "linear": 0}

    def student_matmul(q_a, z_a, q_b, z_b):
        calls["matmul"] += 1
        return quantized_matmul(q_a, z_a, q_b, z_b)

    def student_linear(*args):
        calls["linear"] += 1
        return quantized_linear(*args)

    reference = integerize(model, calib)
    student = integerize(model, calib, matmul_fn=student_matmul, linear_fn=student_linear)
    assert torch.equal(student.forward_integer(test[:8]), reference.forward_int(test[:8]))
    assert calls == {"matmul": 3, "linear": 1}
    codes = reference.forward_fake_quant(test)
    assert codes.dtype == torch.uint8
    assert int((codes.int() - reference.forward_int(test).int()).abs().max()) <= 1
    labels = reference.forward_int(test).argmax(1)
    loader = [(test[:40], labels[:40]), (test[40:], labels[40:])]
    assert reference.evaluate(loader) == 1.0
    assert reference.evaluate(loader, max_batches=1) == 1.0
    wrong = [(test, (labels + 1) % 10)]
    assert reference.evaluate(wrong) == 0.0


def test_time_int8_linear_returns_positive_times_restores_settings_and_is_quiet(capfd):
    from lowbit.quant.integer import time_int8_linear
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)             # as lowbit.seed_everything does
    try:
        timing = time_int8_linear(8, 32, repeats=2, threads=1)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    assert timing["fp32_ms"] > 0 and timing["int8_ms"] > 0 and isinstance(timing["engine"], str)
    assert torch.get_num_threads() == threads
    assert capfd.readouterr().err == ""
    with pytest.raises(ValueError):
        time_int8_linear(0, 32)


def test_integer_functions_do_not_modify_inputs():
    q_x, x_scale, x_zp, q_w, w_scale, b, _, y_scale, y_zp = _random_linear_problem(5)
    q_bias = quantize_bias(b, x_scale, w_scale)
    inputs = [q_x, q_w, w_scale, q_bias, b]
    copies = [t.clone() for t in inputs]
    quantized_matmul(q_x, x_zp, q_w.t(), 0)
    quantized_linear(q_x, x_scale, x_zp, q_w, w_scale, q_bias, y_scale, y_zp, multiplier="fixed")
    quantize_bias(b, x_scale, w_scale)
    requantize(q_bias.reshape(1, -1), w_scale, 3)
    assert all(torch.equal(t, c) for t, c in zip(inputs, copies))
