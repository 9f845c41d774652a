"""``InterruptGuard`` with real signals: held during bookkeeping, at once during evaluation, restored after."""

from __future__ import annotations

import os
import signal
import threading
import time

from ct_tune.workers import InterruptGuard

import pytest


def interrupt(sig: int = signal.SIGINT) -> None:
    """Send ``sig`` to this process and give Python the moment it needs to run the handler."""
    os.kill(os.getpid(), sig)
    time.sleep(0.05)  # the handler runs in the main thread as soon as the interpreter gets control back


def test_deferred_holds_the_interrupt_until_the_block_ends():
    guard = InterruptGuard()
    done = []
    with guard.installed():
        with pytest.raises(KeyboardInterrupt), guard.deferred():
            interrupt()
            done.append("bookkeeping finished")  # not cut short
        assert done == ["bookkeeping finished"]
        with guard.deferred():  # the held interrupt was spent: the next block runs undisturbed
            done.append("next")
    assert done == ["bookkeeping finished", "next"]


def test_nested_deferred_raises_once_at_the_outermost_end():
    guard = InterruptGuard()
    steps = []
    with guard.installed(), pytest.raises(KeyboardInterrupt), guard.deferred():
        with guard.deferred():
            interrupt()
            steps.append("inner")
        steps.append("outer")
    assert steps == ["inner", "outer"]


def test_interruptible_raises_at_once_even_inside_deferred():
    guard = InterruptGuard()
    steps = []
    with guard.installed(), guard.deferred():
        with pytest.raises(KeyboardInterrupt), guard.interruptible():
            interrupt()
            steps.append("never")
        steps.append("bookkeeping after the evaluation")
    assert steps == ["bookkeeping after the evaluation"]


def test_a_held_interrupt_is_raised_when_an_evaluation_starts():
    guard = InterruptGuard()
    with guard.installed(), guard.deferred():
        interrupt()  # held
        with pytest.raises(KeyboardInterrupt), guard.interruptible():
            pytest.fail("the evaluation must not start")
    # raised once: the deferred block's end raises nothing more


def test_a_second_interrupt_while_one_is_held_stops_at_once():
    guard = InterruptGuard()
    steps = []
    with guard.installed(), pytest.raises(KeyboardInterrupt), guard.deferred():
        interrupt()
        steps.append("first held")
        interrupt()
        steps.append("never")
    assert steps == ["first held"]


def test_sigterm_is_handled_like_ctrl_c_and_handlers_are_restored():
    guard = InterruptGuard()
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with guard.installed():
        assert signal.getsignal(signal.SIGINT) == guard._handler == signal.getsignal(signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt), guard.deferred():
            interrupt(signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt):
            interrupt(signal.SIGTERM)  # outside any block: at once
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_installed_outside_the_main_thread_is_a_no_op():
    guard = InterruptGuard()
    seen = []

    def worker() -> None:
        with guard.installed():
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [signal.default_int_handler]


def test_a_ctrl_c_inside_a_callback_python_cannot_raise_from_is_delivered_again_silently():
    """A SIGINT landing in a weakref callback (the import machinery has them) is not printed as "Exception
    ignored" and not lost: the noting handler's unraisable hook raises it again in the main thread."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import os, signal, time, weakref
        import ct_tune._ctrl_c as noting
        noting.note_ctrl_c()
        class A: pass
        def callback(ref):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)  # the handler runs here, inside the callback
        a = A(); ref = weakref.ref(a, callback)
        try:
            del a
            for _ in range(2000):
                time.sleep(0.001)
            print("lost")
        except KeyboardInterrupt:
            print("interrupted", len(noting.NOTED))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "interrupted 2" and done.stderr == ""
