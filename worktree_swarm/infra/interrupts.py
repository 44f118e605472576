"""Stop signals as KeyboardInterrupt, raised where the run loop can take them safely.

A signal's handler runs in the main thread between any two steps of its Python code, and one
that raises lands wherever that is: in a lock's ``__exit__`` before it lets go, between taking
a task's outcome off a queue and keeping it. The manager's run loop then waited for ever for a
lock nobody would release, or an outcome nobody held. While a run loop goes on
(:func:`deferred`), a stop signal (Ctrl-C, SIGTERM, a closed terminal's SIGHUP) is only noted,
and raised as KeyboardInterrupt at the loop's next look (:func:`check`, :func:`wait`: a
quarter of a second at most), once: the stop it starts (its writes waiting out a full disk
included) goes on; a second one, the stop already asked for, is raised at once (a stop that
itself hangs can still be cut short). What runs before the loop (a guard's start, which may
walk a repository's whole history) looks too, and hands :func:`noted` to its long git commands.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

_LOOK = 0.1  # seconds between looks of a deferred wait

_asked: threading.Event | None = None  # while a run loop defers stop signals
_raised = False  # the one noted was raised (by :func:`check`)


def on_signal() -> None:
    """What a stop signal's handler does: KeyboardInterrupt, or noted while a loop defers it."""
    asked = _asked
    if asked is None or asked.is_set():
        raise KeyboardInterrupt
    asked.set()


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Defer stop signals to :func:`check` and :func:`wait` while the block runs.

    In the main thread only (where signal handlers run); one noted and not yet raised when
    the block ends is dropped: what the block did is done.
    """
    global _asked, _raised
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous, _asked, _raised = (_asked, _raised), threading.Event(), False
    try:
        yield
    finally:
        _asked, _raised = previous


def check() -> None:
    """Raise KeyboardInterrupt in the main thread where a deferred stop signal came (once)."""
    global _raised  # noqa: PLW0603 - the main thread's alone
    asked = _asked
    main = threading.current_thread() is threading.main_thread()
    if main and asked is not None and asked.is_set() and not _raised:
        _raised = True
        raise KeyboardInterrupt


def noted() -> threading.Event | None:
    """Set once a stop signal is noted, for a step it may cut short (a git command's ``stop``).

    The main thread's, while a loop defers stop signals and none was raised yet; else None:
    the stop a raised one started is not cut short by it.
    """
    if _asked is None or _raised or threading.current_thread() is not threading.main_thread():
        return None
    return _asked


def wait(event: threading.Event, timeout: float) -> bool:
    """``event.wait(timeout)``, cut short by a deferred stop signal (:func:`check`)."""
    if _asked is None or _raised or threading.current_thread() is not threading.main_thread():
        return event.wait(timeout)
    end = time.monotonic() + timeout
    while True:
        check()
        left = end - time.monotonic()
        if event.wait(max(0.0, min(_LOOK, left))):
            return True
        if left <= _LOOK:
            check()
            return False
