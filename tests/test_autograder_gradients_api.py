"""The gradient API for plain (local) functions: lowbit.testing.gradients_of, autograder.checks._api.call_with_gradients
and the visible-test helper assert_gradient_close. The sandboxed path: test_autograder_gradients_sandbox.py."""
from __future__ import annotations

import collections

import pytest
import torch

from autograder.checks._api import CheckSuite, call_with_gradients, expect_gradients
from lowbit.testing import assert_gradient_close, gradients_of
from lowbit._vjp import UnusableResult


class RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


def fake_quant(x, scale, zero_point=0):
    return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, -128, 127)


def test_gradient_of_a_scalar_result_without_upstream():
    x = torch.tensor([1.0, -2.0, 3.0])
    value, (grad,) = gradients_of(lambda t: (t ** 2).sum(), x, wrt=[0])
    assert value.item() == 14.0 and not value.requires_grad
    assert torch.equal(grad, torch.tensor([2.0, -4.0, 6.0]))
    assert not x.requires_grad and x.grad is None  # the caller's tensor is untouched: fn saw a fresh leaf copy


def test_upstream_weights_each_output_element_and_matches_torch_fake_quant_clipped_ste():
    x = torch.tensor([-20.0, -12.8, -1.26, 0.0, 0.04, 12.7, 12.75, 30.0])
    upstream = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    value, (grad,) = gradients_of(fake_quant, x, 0.1, wrt=[0], upstream=upstream)
    assert torch.equal(value, fake_quant(x, 0.1))
    inside = (torch.round(x / 0.1) >= -128) & (torch.round(x / 0.1) <= 127)
    assert torch.equal(grad, torch.where(inside, upstream, torch.zeros(())))
    assert grad[0] == 0 and grad[-1] == 0 and grad[1] == 2.0  # the clip boundary -12.8 = -128 * 0.1 is inside


def test_keyword_and_positional_inputs_in_the_order_of_wrt():
    def f(x, scale, *, offset):
        return x * scale + offset ** 2

    x, scale, offset = torch.tensor([1.0, 2.0]), torch.tensor(3.0), torch.tensor([0.5, -1.0])
    upstream = torch.tensor([1.0, 10.0])
    _, (g_offset, g_x, g_scale) = gradients_of(f, x, scale, offset=offset, wrt=["offset", 0, 1], upstream=upstream)
    assert torch.equal(g_offset, 2 * offset * upstream)
    assert torch.equal(g_x, scale * upstream)
    assert g_scale.shape == () and g_scale.item() == pytest.approx(float((x * upstream).sum()))


def test_zero_gradient_for_a_detached_result_and_for_an_unused_input():
    x, y = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])
    _, (g,) = gradients_of(lambda t: t.detach() * 2, x, wrt=[0], upstream=torch.ones(2))
    assert torch.equal(g, torch.zeros(2))
    _, (g_round,) = gradients_of(torch.round, x, wrt=[0], upstream=torch.ones(2))  # round: zero derivative
    assert torch.equal(g_round, torch.zeros(2))
    _, (g_x, g_y) = gradients_of(lambda a, b: a * 3, x, y, wrt=[0, 1], upstream=torch.ones(2))
    assert torch.equal(g_x, torch.full((2,), 3.0)) and torch.equal(g_y, torch.zeros(2))


def test_custom_autograd_function_and_identity_result():
    x, upstream = torch.tensor([0.4, 1.6, -2.5]), torch.tensor([2.0, -1.0, 0.5])
    value, (grad,) = gradients_of(RoundSTE.apply, x, wrt=[0], upstream=upstream)
    assert torch.equal(value, torch.round(x)) and torch.equal(grad, upstream)
    _, (same,) = gradients_of(lambda t: t, x, wrt=[0], upstream=upstream)  # the result is the leaf itself
    assert torch.equal(same, upstream)


def test_tuple_results_take_one_upstream_per_item_none_for_no_contribution():
    Pair = collections.namedtuple("Pair", "weight bias")
    x = torch.tensor([1.0, 2.0, 3.0])

    def f(t):
        return Pair(t * 2, t.sum() * 5)

    value, (grad,) = gradients_of(f, x, wrt=[0], upstream=(torch.ones(3), None))
    assert isinstance(value, Pair) and torch.equal(value.weight, x * 2) and not value.bias.requires_grad
    assert torch.equal(grad, torch.full((3,), 2.0))
    _, (both,) = gradients_of(f, x, wrt=[0], upstream=[torch.ones(3), torch.tensor(2.0)])
    assert torch.equal(both, torch.full((3,), 12.0))


def test_half_precision_input_gets_a_half_precision_gradient():
    x = torch.tensor([0.5, 1.5, 300.0], dtype=torch.float16)
    value, (grad,) = gradients_of(lambda t: (t * 2).sum(), x, wrt=[0])
    assert value.dtype == torch.float16 and grad.dtype == torch.float16 and grad.tolist() == [2.0, 2.0, 2.0]


def test_works_inside_a_no_grad_block_of_the_caller():
    with torch.no_grad():
        _, (grad,) = gradients_of(lambda t: (t * 3).sum(), torch.ones(2), wrt=[0])
    assert torch.equal(grad, torch.full((2,), 3.0))


@pytest.mark.parametrize("fn, upstream, words", [
    (lambda t: 3, None, "returned a int"),
    (lambda t: None, None, "returned a NoneType"),
    (lambda t: t * 2, None, "only a single-element result"),
    (lambda t: t * 2, torch.ones(3), "upstream gradient has shape (3,)"),
    (lambda t: t * 2, [torch.ones(2)], "returned one tensor"),
    (lambda t: (t, t), torch.ones(2), "tuple of 2 items"),
    (lambda t: (t, 3), (None, torch.ones(())), "result item 1 is a int"),
    (lambda t: t.to(torch.int64), torch.ones(2), "only through floating-point results"),
])
def test_results_that_cannot_be_differentiated_as_asked_say_why(fn, upstream, words):
    with pytest.raises(UnusableResult, match=words.replace("(", r"\(").replace(")", r"\)")):
        gradients_of(fn, torch.ones(2), wrt=[0], upstream=upstream)


@pytest.mark.parametrize("args, kwargs, wrt, upstream, error, words", [
    ((torch.ones(2),), {}, 0, None, TypeError, "wrt must be a list"),
    ((torch.ones(2),), {}, "x", None, TypeError, "wrt must be a list"),
    ((torch.ones(2),), {}, [], None, ValueError, "wrt is empty"),
    ((torch.ones(2),), {}, [1], None, ValueError, "call has 1 positional"),
    ((torch.ones(2),), {}, [-1], None, ValueError, "call has 1 positional"),
    ((torch.ones(2),), {}, ["scale"], None, ValueError, "does not pass"),
    ((torch.ones(2),), {}, [0, 0], None, ValueError, "more than once"),
    ((torch.ones(2),), {}, [True], None, TypeError, "int positions or str"),
    ((torch.ones(2, dtype=torch.int64),), {}, [0], None, TypeError, "int64 tensor"),
    ((1.5,), {}, [0], None, TypeError, "which is a float"),
    ((torch.ones(2),), {}, [0], [], TypeError, "empty sequence"),
    ((torch.ones(2),), {}, [0], 1.0, TypeError, "upstream must be"),
    ((torch.ones(2),), {}, [0], torch.ones(2, dtype=torch.int32), TypeError, "upstream must be"),
])
def test_bad_requests_are_refused_before_the_call(args, kwargs, wrt, upstream, error, words):
    calls = []
    with pytest.raises(error, match=words):
        gradients_of(lambda *a, **k: calls.append(1) or a[0], *args, wrt=wrt, upstream=upstream, **kwargs)
    assert calls == []


def test_call_with_gradients_on_a_plain_function_is_gradients_of():
    x, upstream = torch.tensor([0.3, -1.7]), torch.tensor([2.0, 3.0])
    got = call_with_gradients(fake_quant, x, 0.5, wrt=[0], upstream=upstream)
    want = gradients_of(fake_quant, x, 0.5, wrt=[0], upstream=upstream)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1][0], want[1][0])
    with pytest.raises(TypeError, match="int64 tensor"):
        call_with_gradients(fake_quant, torch.ones(2, dtype=torch.int64), 0.5, wrt=[0])


def test_function_errors_propagate_unchanged():
    def refuses(x):
        raise ValueError("step must be positive")

    with pytest.raises(ValueError, match="step must be positive"):
        gradients_of(refuses, torch.ones(2), wrt=[0])


# -- the visible-test helper -------------------------------------------------------------------------------
def ste_round(x):
    return RoundSTE.apply(x)


def test_assert_gradient_close_passes_with_one_line(capsys):
    x = torch.tensor([0.4, 1.6])
    assert_gradient_close(ste_round, x, wrt=[0], expected=[torch.tensor([2.0, -1.0])],
                          upstream=torch.tensor([2.0, -1.0]), what="ste_round passes the gradient through")
    assert capsys.readouterr().out == "✓ ste_round passes the gradient through\n"


def test_assert_gradient_close_failure_shows_input_expected_got_position_and_hint():
    def scaled_wrong(x, scale):
        return x * scale * 2

    x = torch.tensor([0.5, -1.0, 2.0])
    with pytest.raises(AssertionError) as info:
        assert_gradient_close(scaled_wrong, x, torch.tensor(0.5), wrt=[0], expected=[torch.full((3,), 0.5)],
                              upstream=torch.ones(3), what="gradient of x * scale", hint="d(x*s)/dx = s")
    text = str(info.value)
    assert "✗ gradient of x * scale: gradient with respect to x" in text
    assert "input:    x=tensor([0.5, -1.0, 2.0]" in text and "upstream=tensor([1.0, 1.0, 1.0]" in text
    assert "expected: tensor([0.5, 0.5, 0.5]" in text and "got:      tensor([1.0, 1.0, 1.0]" in text
    assert "first at index (0,): expected 0.5, got 1.0" in text
    assert "likely mistake: d(x*s)/dx = s" in text and "detached" not in text


def test_assert_gradient_close_names_a_detached_result_when_the_gradient_is_all_zero():
    def plain_round(x):
        return torch.round(x)

    with pytest.raises(AssertionError, match="zero everywhere: the result is detached from x"):
        assert_gradient_close(plain_round, torch.tensor([0.4, 1.6]), wrt=[0], expected=[torch.ones(2)],
                              upstream=torch.ones(2), what="ste_round")
    with pytest.raises(AssertionError, match="with respect to argument 0"):  # no signature: named by position
        assert_gradient_close(torch.round, torch.tensor([0.4, 1.6]), wrt=[0], expected=[torch.ones(2)],
                              upstream=torch.ones(2), what="ste_round")


def test_assert_gradient_close_reports_a_missing_return_and_refuses_a_bad_expected_list():
    def forgot(x):
        x * 2

    with pytest.raises(AssertionError, match="forget `return`"):
        assert_gradient_close(forgot, torch.ones(2), wrt=[0], expected=[torch.ones(2)], upstream=torch.ones(2),
                              what="f")
    with pytest.raises(TypeError, match="one gradient per wrt entry"):
        assert_gradient_close(ste_round, torch.ones(2), wrt=[0], expected=torch.ones(2), what="f")


# -- expect_gradients: the hidden checks' comparison of value and gradients -----------------------------------------
def clipped_scale(x, scale):
    """A clipped STE of x · scale: the x gradient is scale · 1{|x| <= 1}, the scale gradient Σ upstream · x."""
    inside = (x.abs() <= 1).to(x.dtype)
    return x.detach() * scale + (x - x.detach()) * scale * inside


def test_expect_gradients_names_the_gradient_and_grades_only_the_entries_asked_for():
    x, scale, upstream = torch.tensor([0.5, -2.0, 1.0]), torch.tensor(3.0), torch.tensor([1.0, 2.0, -1.0])

    def wrong_scale_gradient(x, scale):                       # right value and x gradient, scale gradient doubled
        return clipped_scale(x, scale) + (scale - scale.detach()) * x.detach()

    with pytest.raises(AssertionError, match="∂⟨upstream, result⟩/∂scale"):
        expect_gradients(wrong_scale_gradient, clipped_scale, x, scale, wrt=[0, 1], upstream=upstream,
                         what="f(x, scale)", names=["x", "scale"])
    grads = expect_gradients(wrong_scale_gradient, clipped_scale, x, scale, wrt=[0, 1], upstream=upstream,
                             what="f(x, scale)", names=["x", "scale"], only=[0])
    assert torch.equal(grads[0], torch.tensor([3.0, 0.0, -3.0])) and len(grads) == 2


def test_expect_gradients_per_gradient_tolerances_and_the_value_tolerance():
    x, scale, upstream = torch.tensor([0.5, -0.25]), torch.tensor(2.0), torch.tensor([1.0, 1.0])

    def slightly_off(x, scale):                               # value off by 1e-3, scale gradient off by 1e-3
        return clipped_scale(x, scale) + 1e-3 + (scale - scale.detach()) * 5e-4

    common = dict(wrt=[0, 1], upstream=upstream, what="f(x, scale)", names=["x", "scale"])
    with pytest.raises(AssertionError, match=r"called with inputs that require grad"):
        expect_gradients(slightly_off, clipped_scale, x, scale, tolerances=[{}, {"atol": 1e-2}], **common)
    with pytest.raises(AssertionError, match="∂scale"):
        expect_gradients(slightly_off, clipped_scale, x, scale, value_tolerance={"atol": 1e-2},
                         tolerances=[{}, {"atol": 1e-4}], **common)
    expect_gradients(slightly_off, clipped_scale, x, scale, value_tolerance={"atol": 1e-2},
                     tolerances=[{}, {"atol": 1e-2}], **common)
    expect_gradients(slightly_off, clipped_scale, x, scale, check_value=False, tolerances=[{}, {"atol": 1e-2}],
                     **common)
    with pytest.raises(AssertionError, match="expected a torch.Tensor"):        # skipped value: still a tensor
        expect_gradients(lambda x, scale: [clipped_scale(x, scale)], None, x, scale, wrt=[0, 1], upstream=[upstream],
                         check_value=False, expected=(clipped_scale(x, scale), [torch.zeros(2), torch.zeros(())]))


def test_expect_gradients_compares_with_given_expected_values_instead_of_a_reference():
    x, upstream = torch.tensor([0.4, 1.6, -2.5]), torch.tensor([2.0, -1.0, 0.5])
    expect_gradients(ste_round, None, x, wrt=[0], upstream=upstream, expected=(torch.round(x), [upstream]))
    with pytest.raises(AssertionError, match="∂⟨upstream, result⟩/∂argument 0"):
        expect_gradients(ste_round, None, x, wrt=[0], upstream=upstream, expected=(torch.round(x), [-upstream]))
    with pytest.raises(TypeError, match="exactly one of"):
        expect_gradients(ste_round, ste_round, x, wrt=[0], upstream=upstream, expected=(x, [upstream]))
    with pytest.raises(TypeError, match="exactly one of"):
        expect_gradients(ste_round, None, x, wrt=[0], upstream=upstream)


def test_expect_gradients_labels_the_call_from_the_suite_and_passes_keywords_on():
    suite = CheckSuite("clipped_scale")
    suite.parameters = ["x", "scale"]
    x, scale, upstream = torch.tensor([0.5, 3.0]), torch.tensor(2.0), torch.tensor([1.0, 1.0])
    with pytest.raises(AssertionError) as info:
        expect_gradients(lambda x, scale: x * scale, clipped_scale, x, scale=scale, wrt=[0], upstream=upstream,
                         suite=suite)
    text = str(info.value)
    assert "clipped_scale(x, scale): gradient ∂⟨upstream, result⟩/∂x" in text
    assert "upstream=tensor([1.0, 1.0]" in text


@pytest.mark.parametrize("options, error, words", [
    ({"tolerances": [{}]}, ValueError, "one per entry"),
    ({"only": [2]}, ValueError, "not in wrt"),
    ({"expected": (torch.ones(2), [torch.ones(2)]), "reference": None}, ValueError, "1 gradients for 2"),
])
def test_expect_gradients_refuses_inconsistent_options(options, error, words):
    reference = options.pop("reference", clipped_scale)
    with pytest.raises(error, match=words):
        expect_gradients(clipped_scale, reference, torch.ones(2), torch.tensor(1.0), wrt=[0, 1],
                         upstream=torch.ones(2), **options)
