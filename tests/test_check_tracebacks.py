"""A failed visible-test helper shows the test cell's line and the message, not lowbit/testing.py's frames."""
from __future__ import annotations

import IPython
import pytest
from IPython.testing.globalipapp import start_ipython
from IPython.utils.capture import capture_output

from lowbit.testing import assert_close, assert_equal_int


@pytest.mark.parametrize("call", ["assert_equal_int(x + 1, 3, 'x + 1')",
                                  "assert_close(torch.tensor([1.0]), torch.tensor([2.0]), 'x + 1', atol=0.1)",
                                  "assert_not_modified(lambda t: t.mul_(2), torch.ones(2), what='x + 1')"])
def test_notebook_traceback_ends_at_the_cell(call):
    shell = IPython.get_ipython() or start_ipython()
    shell.run_cell("import torch\nfrom lowbit.testing import assert_close, assert_equal_int, assert_not_modified")
    with capture_output() as captured:
        shell.run_cell(f"x = 1\n{call}")
    shown = captured.stdout
    assert "✗ x + 1" in shown and call in shown                       # the cell's line and the message
    assert "testing.py" not in shown and "_fail" not in shown and "raise CheckFailure" not in shown


def test_failures_are_still_assertion_errors_with_the_full_traceback():
    with pytest.raises(AssertionError, match="expected: 3") as info:
        assert_equal_int(2, 3, "two")
    assert any(entry.name == "_fail" for entry in info.traceback)     # plain Python keeps every frame
    with pytest.raises(AssertionError):
        assert_close(1.0, 2.0, "one", atol=0.1)
