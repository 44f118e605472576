"""Stop signals during a run loop: raised at its looks, never inside a step; a second at once."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator

import pytest

from worktree_swarm.guard.lock import TurnLock
from worktree_swarm.infra import interrupts


@pytest.fixture
def handled() -> Iterator[None]:
    """SIGTERM handled as the CLI handles it (:func:`interrupts.on_signal`), for this test."""
    previous = signal.signal(signal.SIGTERM, lambda *_: interrupts.on_signal())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.usefixtures("handled")
def test_a_stop_signal_inside_a_step_is_raised_at_the_loops_next_look() -> None:
    # Raised inside the lock's block (its `__exit__` say), the lock stayed held for ever.
    lock = TurnLock()
    with interrupts.deferred():
        with lock:
            signal.raise_signal(signal.SIGTERM)  # its handler runs here, in this thread
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
    assert lock._owner is None


@pytest.mark.usefixtures("handled")
def test_a_second_stop_signal_is_raised_at_once() -> None:
    # The stop under way (its agents' grace, its checkpoints) can still be cut short.
    with interrupts.deferred():
        signal.raise_signal(signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGTERM)


@pytest.mark.usefixtures("handled")
def test_a_stop_signal_outside_a_run_loop_is_raised_at_once() -> None:
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGTERM)


def test_a_wait_of_the_run_loop_ends_at_a_stop_signal_and_only_there() -> None:
    never = threading.Event()
    with interrupts.deferred():
        assert interrupts.wait(never, 0.05) is False  # its time out, no signal
        done = threading.Event()
        done.set()
        assert interrupts.wait(done, 60) is True
        asking = threading.Timer(0.05, interrupts.on_signal)  # as a handler does, meanwhile
        asking.start()
        with pytest.raises(KeyboardInterrupt):
            interrupts.wait(never, 600)  # a full disk's pause, waited out until stopped
        asking.join()
    assert interrupts.wait(never, 0) is False  # no loop defers: a plain wait


@pytest.mark.usefixtures("handled")
def test_the_stop_a_signal_started_goes_on_through_its_own_waits() -> None:
    # Raised again at every look, the stop's own pause (its state written on a full disk)
    # ended it at once: an outcome lost, the run never marked ended.
    never = threading.Event()
    with interrupts.deferred():
        signal.raise_signal(signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
        interrupts.check()  # raised once
        assert interrupts.wait(never, 0.05) is False  # the stop's pause waits its time
        with pytest.raises(KeyboardInterrupt):  # a second signal cuts the stop short
            signal.raise_signal(signal.SIGTERM)
