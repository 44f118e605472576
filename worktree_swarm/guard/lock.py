"""The guard's lock: re-entrant, and the periodic scan takes it before any waiting worker.

A plain lock hands itself to whichever waiting thread the scheduler wakes first: with dozens
of workers settling tasks and checking after attempts, the scan thread could wait for tens of
seconds, and the user's checkout and the refs went unchecked that long. Here a thread that
asks with :meth:`TurnLock.first` is served as soon as the current holder lets go.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class TurnLock:
    """A re-entrant lock with a way in ahead of the queue (for the scan thread).

    A release wakes one waiter, the one whose turn it is (a ``first`` one if any waits, else
    the longest waiting): waking them all cost every one of dozens of workers a wake-up and a
    look per hand-over, to find the lock taken.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)  # threads waiting by ``with``
        self._first_turn = threading.Condition(self._mutex)  # by :meth:`first`
        self._owner: int | None = None
        self._depth = 0
        self._first = 0  # threads waiting by :meth:`first`

    def acquire(self, *, first: bool = False) -> None:
        """Take the lock (again, if this thread holds it); *first*: ahead of other waiters."""
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._depth += 1
                return
            turn = self._first_turn if first else self._cond
            if first:
                self._first += 1
            try:
                while self._owner is not None or (self._first and not first):
                    turn.wait()
            except BaseException:
                # Interrupted as it was woken, it may have taken the one wake-up of a release:
                # passed on, or the next in turn would wait for ever with the lock free.
                if first:
                    self._first -= 1
                if self._owner is None:
                    self._wake()
                raise
            if first:
                self._first -= 1
            self._owner, self._depth = me, 1

    def release(self) -> None:
        """Let go once; the last release hands the lock on."""
        with self._cond:
            if self._owner != threading.get_ident():
                msg = "release of a lock this thread does not hold"
                raise RuntimeError(msg)
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._wake()

    def _wake(self) -> None:
        """Wake the waiter whose turn it is (the caller holds the mutex, the lock is free)."""
        (self._first_turn if self._first else self._cond).notify()

    def __enter__(self) -> None:
        self._take(first=False)

    def __exit__(self, *_exc: object) -> None:
        self.release()

    @contextlib.contextmanager
    def first(self) -> Iterator[None]:
        """Hold the lock, taken ahead of every thread waiting by ``with``."""
        self._take(first=True)
        try:
            yield
        finally:
            self.release()

    def _take(self, *, first: bool) -> None:
        """:meth:`acquire` for a block, given back if it ends in an exception once taken.

        A stop signal's KeyboardInterrupt (Ctrl-C, SIGTERM, SIGHUP: raised in the main thread
        wherever it is) landing just after the lock was taken, before the block holds it,
        would leave it held by nobody's block: every other thread waiting for ever, the
        run's stop among them.
        """
        me = threading.get_ident()
        held = self._depth if self._owner == me else 0  # only this thread makes itself owner
        try:
            self.acquire(first=first)
        except BaseException:
            with self._cond:
                if self._owner == me and self._depth > held:
                    self._depth = held
                    if not held:
                        self._owner = None
                        self._wake()
            raise
