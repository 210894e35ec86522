"""lowbit.testing: messages students read, the ✓ line, and failures for wrong answers."""
from __future__ import annotations

import pytest
import torch

from lowbit.testing import assert_close, assert_dtype, assert_equal_int, assert_not_modified, assert_shape


def test_equal_int_passes_with_check_line(capsys):
    assert_equal_int(torch.tensor([0, 2, 2], dtype=torch.int8), torch.tensor([0, 2, 2]), "ties round to even")
    out = capsys.readouterr()
    assert out.out == "✓ ties round to even\n" and out.err == ""


def test_equal_int_failure_message_names_input_expected_got_and_hint(capsys):
    with pytest.raises(AssertionError) as info:
        assert_equal_int(torch.tensor([1, 2, 3], dtype=torch.int8), torch.tensor([0, 2, 2]), "ties",
                         inputs={"r": torch.tensor([0.5, 1.5, 2.5]), "scale": 1.0}, hint="use torch.round")
    message = str(info.value)
    for piece in ("✗ ties", "input:", "r=tensor([0.5, 1.5, 2.5]", "scale=1.0", "expected: tensor([0, 2, 2]",
                  "got:      tensor([1, 2, 3]", "mismatches: 2 of 3", "index (0,): expected 0, got 1",
                  "likely mistake: use torch.round"):
        assert piece in message, piece
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("got, reason", [(torch.tensor([0.0, 2.0]), "integer dtype"),
                                         (torch.tensor([0, 2, 2]), "shape"),
                                         (None, "forget `return`"),
                                         ("0, 2", "str")])
def test_equal_int_rejects_floats_shapes_and_none(got, reason):
    with pytest.raises(AssertionError, match=reason):
        assert_equal_int(got, torch.tensor([0, 2]), "codes")


def test_equal_int_python_ints():
    assert_equal_int(-128, -128, "q_min")
    with pytest.raises(AssertionError, match="expected -128, got -127"):
        assert_equal_int(-127, -128, "q_min")
    with pytest.raises(AssertionError, match="integer dtype"):
        assert_equal_int(-128.0, -128, "q_min")


def test_assert_close_reports_errors_and_tolerance():
    assert_close(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0 + 1e-7]), "close")
    with pytest.raises(AssertionError) as info:
        assert_close(torch.tensor([1.0, 2.5]), torch.tensor([1.0, 2.0]), "scale", rtol=1e-3, atol=0.0,
                     hint="divide by q_max - q_min")
    message = str(info.value)
    assert "max abs error: 0.5" in message and "max relative error: 0.25" in message
    assert "tolerance: atol=0 + rtol=0.001" in message and "divide by q_max - q_min" in message
    with pytest.raises(AssertionError, match="NaN"):
        assert_close(torch.tensor([float("nan")]), torch.tensor([1.0]), "nan")
    assert_close(float("inf"), float("inf"), "inf equals inf")
    assert_close(0.1 + 0.2, 0.3, "python floats")
    with pytest.raises(AssertionError, match="shape"):
        assert_close(torch.ones(2), torch.ones(3), "shape")


def test_dtype_and_shape():
    assert_dtype(torch.zeros(2, dtype=torch.uint8), torch.uint8, "uint8")
    with pytest.raises(AssertionError, match="torch.int8"):
        assert_dtype(torch.zeros(2, dtype=torch.int32), torch.int8, "int8 codes", hint="cast with .to(torch.int8)")
    assert_shape(torch.zeros(4, 1, 1, 1), (4, 1, 1, 1), "keepdim")
    with pytest.raises(AssertionError, match=r"shape \(4, 1, 1, 1\)"):
        assert_shape(torch.zeros(4), (4, 1, 1, 1), "keepdim")


def test_not_modified_detects_in_place_changes_and_returns_nothing(capsys):
    x = torch.tensor([1.0, 2.0])
    calls = []
    result = assert_not_modified(lambda t, s: calls.append(t / s), x, 2.0, what="pure")
    assert result is None, "a test cell ending with the check must display nothing"
    assert len(calls) == 1 and torch.equal(calls[0], torch.tensor([0.5, 1.0])) and torch.equal(x, torch.tensor([1.0, 2.0]))

    def mutating(t, s):
        t /= s
        return t

    with pytest.raises(AssertionError, match="modified in place: argument 0"):
        assert_not_modified(mutating, x, 2.0)
    model = torch.nn.Linear(2, 2)

    def mutate_model(m):
        with torch.no_grad():
            m.weight.zero_()

    with pytest.raises(AssertionError, match="argument 0"):
        assert_not_modified(mutate_model, model)
    with pytest.raises(AssertionError, match="argument t="):
        assert_not_modified(mutating, t=torch.ones(2), s=2.0)
    assert capsys.readouterr().err == ""
