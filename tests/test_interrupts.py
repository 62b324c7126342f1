"""A Ctrl-C that lands in an object's ``__del__`` is dropped by Python ("Exception ignored");
cl_bench.interrupts records it, and the run stops at its next check all the same."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from cl_bench import interrupts


class _CtrlCWhileCollected:
    """Sends SIGINT to this process while it is being collected: the KeyboardInterrupt is
    raised inside ``__del__``, where Python ignores it."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)  # the handler runs here, in __del__


@pytest.fixture(autouse=True)
def _python_sigint():
    """Python's own SIGINT handler during the test, as in a terminal (pytest started as a
    shell's background job inherits SIGINT ignored, and catch_sigint leaves that alone)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_ctrl_c_dropped_in_a_destructor_is_raised_at_the_next_check(monkeypatch):
    dropped = []  # what Python reports as "Exception ignored in ... __del__"
    monkeypatch.setattr(sys, "unraisablehook", lambda u: dropped.append(u.exc_type))
    with interrupts.catch_sigint():
        _CtrlCWhileCollected()  # collected at once: SIGINT inside __del__, dropped
        assert dropped == [KeyboardInterrupt]
        assert interrupts.requested()
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
    assert not interrupts.requested()  # cleared, and Python's own handler is back
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_without_a_ctrl_c_the_check_does_nothing():
    with interrupts.catch_sigint():
        interrupts.check()
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    interrupts.check()


def test_an_ignored_sigint_stays_ignored():
    """A run started with SIGINT ignored (``clbench ... &`` in a script) keeps it ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with interrupts.catch_sigint():
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
