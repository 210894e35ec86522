"""The exception a failed visible-test helper raises: an AssertionError whose notebook traceback stops at the
test cell's line, without the frames of ``lowbit.testing`` above the message.

IPython renders an exception with a ``_render_traceback_`` method through that method (its documented hook,
also used by ipyparallel). ``__tracebackhide__`` alone is not enough: IPython always shows the innermost frame.
"""
from __future__ import annotations

import traceback
from pathlib import Path
from types import TracebackType

_HELPER_FILES = {str(Path(__file__).with_name("testing.py")), __file__}


def _without_helpers(tb: TracebackType | None) -> TracebackType | None:
    """The same traceback chain minus the frames of the test helpers (a fresh chain; ``tb`` is unchanged)."""
    kept = []
    while tb is not None:
        if tb.tb_frame.f_code.co_filename not in _HELPER_FILES:
            kept.append(tb)
        tb = tb.tb_next
    chain = None
    for entry in reversed(kept):
        chain = TracebackType(chain, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
    return chain


class CheckFailure(AssertionError):
    """A visible test's check failed; the message says what went in, what was expected and what came back."""

    def _render_traceback_(self) -> list[str]:
        tb = _without_helpers(self.__traceback__)
        try:
            from IPython import get_ipython
            shell = get_ipython()
        except ImportError:
            shell = None
        if shell is not None and tb is not None:
            # the first entry is IPython's own run_code frame; skip it as IPython does
            return shell.InteractiveTB.structured_traceback(type(self), self, tb, tb_offset=1)
        return traceback.format_exception(type(self), self, tb)
