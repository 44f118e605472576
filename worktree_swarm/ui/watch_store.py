"""The state database `swarm watch` reads: written back, deleted or locked under the screen.

A manager writes its store back when its state directory was deleted: the screen then reads
the new file. What keeps it from reading (a file not there yet, another run's, a lock another
process holds) is said once, and the screen shows what it read last meanwhile. The screen
reads off its own thread (its keys stay live); a read meeting a lock waits for it in short
slices, the store's own wait in all, so that a screen closing does not wait for it.
"""

from __future__ import annotations

import sqlite3
import time
from typing import TYPE_CHECKING, TypeVar

from worktree_swarm.core.errors import SwarmError
from worktree_swarm.infra import faults, store_file
from worktree_swarm.report import run_info

if TYPE_CHECKING:
    from collections.abc import Callable

    from worktree_swarm.git import repo as git
    from worktree_swarm.infra.store import Store

# How long one read of the screen's waits for another process's lock before it looks whether
# the screen is closing; it tries again until the store's own wait (BUSY_SECONDS) is over.
LOCK_SLICE_S = 0.2

_T = TypeVar("_T")


class ShownStore:
    """The store the screen reads now, and what it said of the others (each once)."""

    def __init__(
        self, repo: git.Repo, store: Store, run_id: str, say: Callable[[str], None]
    ) -> None:
        self.repo = repo
        self.store = self._first = store  # the first is closed by whoever opened it
        store.wait_for_locks(LOCK_SLICE_S)
        self.run_id = run_id
        self._say = say  # an error line for the screen
        self._unread = False  # the store at its path could not be opened just now
        self._deleted = False  # the store's file is not at its path
        self._locked = False  # the last read met the store locked
        self.waiting = False  # the read under way met the store locked: it waits for the lock

    def look(self) -> None:
        """Read a store written back at the path from now on; say if the file was deleted."""
        if self.store.replaced():  # written back by its manager: the file open is no more
            self._reopen()
        self._say_if_deleted()

    def read(
        self, read: Callable[[Store], _T], *, closing: Callable[[], bool] = lambda: False
    ) -> _T | None:
        """*read* of the store; None while another process locks it past the store's wait.

        A manager writing it back holds it so: the screen keeps what it read last, and says
        so once a lock. *closing*: the screen is closing (None at once, nothing said).
        """
        try:
            return self._read(read, closing)
        finally:
            self.waiting = False

    def _read(self, read: Callable[[Store], _T], closing: Callable[[], bool]) -> _T | None:
        deadline = time.monotonic() + store_file.BUSY_SECONDS
        while True:
            try:
                found = read(self.store)
                break
            except sqlite3.OperationalError as exc:
                if not faults.is_locked(exc):
                    raise
                self.waiting = True
            if closing():
                return None
            if time.monotonic() < deadline:
                continue
            if not self._locked:
                self._say(
                    f"the state database {self.store.path} is locked by another process; "
                    "the rows are shown as last read until it lets go"
                )
            self._locked = True
            return None
        self._locked = False
        return found

    def _say_if_deleted(self) -> None:
        """Say once that the store's file is gone: the run shown is the deleted file's.

        A manager alive writes it back (:meth:`_reopen` reads it then); with none, nothing
        will, and the screen showed the run as if nothing had happened.
        """
        gone = not self.store.path.exists()
        if gone and not self._deleted:
            self._say(
                f"the state database {self.store.path} was deleted; run {self.run_id} is shown "
                "as it was last read"
            )
        self._deleted = gone

    def _reopen(self) -> None:
        """Read the store at its path from now on."""
        try:
            # Not the store's own 30 s wait for a lock: the next refresh tries again.
            store = run_info.open_store(
                self.repo, to_read=True, busy_seconds=LOCK_SLICE_S, run_id=self.run_id
            )
        except SwarmError as exc:  # not there yet, locked, or refused: the file open is read
            self._unread_once(f"the state database was replaced; cannot read it yet: {exc}")
            return
        try:
            run = store.get_run(self.run_id)
        except sqlite3.OperationalError as exc:  # locked since it was opened
            store.close()
            if not faults.is_locked(exc):
                raise
            self._unread_once(f"the state database was replaced; cannot read it yet: {exc}")
            return
        if run is None:  # another run's store now: this one's is kept
            store.close()
            self._unread_once(
                f"the state database was replaced by one without run {self.run_id}; "
                "showing it as it was"
            )
            return
        self._unread = False
        if self.store is not self._first:
            self.store.close()
        self.store = store

    def _unread_once(self, message: str) -> None:
        if not self._unread:  # said once, not every second
            self._say(message)
        self._unread = True
