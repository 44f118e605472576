"""The SQLite file under the Store: opened, brought up to date, written back, read and written."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from typing import TYPE_CHECKING, Self

from worktree_swarm.core.errors import BadInputError, ManagerLockedError, SwarmError
from worktree_swarm.infra import fs, lock
from worktree_swarm.infra.faults import DiskFullError, full_message, is_full, is_locked
from worktree_swarm.infra.store_schema import MIGRATIONS, SCHEMA_VERSION

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from pathlib import Path
    from types import TracebackType

BUSY_SECONDS = 30.0  # how long a write waits for another connection's lock, then fails


class StoreNotWritableError(BadInputError):
    """The state database cannot be written: its directory or file is read-only."""


_HEADER = b"SQLite format 3\x00"


def _is_database(path: Path) -> bool:
    """Whether *path* starts as an SQLite database does (an empty file does not)."""
    try:
        with fs.open_file(path) as fh:
            return fh.read(len(_HEADER)) == _HEADER
    except OSError:
        return False


def _refuse_newer(path: Path, version: int) -> None:
    """Refuse a database a newer worktree-swarm wrote (its schema version above ours)."""
    if version > SCHEMA_VERSION:
        raise SwarmError(
            f"{path} has schema version {version}, newer than this worktree-swarm "
            f"understands ({SCHEMA_VERSION}); upgrade worktree-swarm"
        )


def _written_version(path: Path) -> int:
    """The schema version of *path* as its file holds it, read without writing (0: unread)."""
    with contextlib.suppress(sqlite3.Error):
        uri = f"{path.absolute().as_uri()}?mode=ro&immutable=1"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])
    return 0


def _open_last_written(path: Path) -> sqlite3.Connection:
    """*path* opened to read only: with the log of recent changes, else the file alone.

    Read-only first, which reads a live manager's write-ahead log too; when even that needs a
    file SQLite cannot create, the database file alone, as of its last checkpoint.
    """
    failure: sqlite3.Error = sqlite3.OperationalError("no way to open it")
    for query in ("mode=ro", "mode=ro&immutable=1"):
        conn = sqlite3.connect(
            f"{path.absolute().as_uri()}?{query}",
            uri=True,
            timeout=30,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            conn.row_factory = sqlite3.Row
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.Error as exc:
            conn.close()
            failure = exc
            continue
        if version != SCHEMA_VERSION:  # it cannot be brought up to date without writing
            conn.close()
            _refuse_newer(path, version)  # nor ever read by this swarm: no space would help
            how = "free some space" if os.access(path.parent, os.W_OK) else "make it writable"
            raise SwarmError(
                f"{path} has schema version {version}, not {SCHEMA_VERSION}; it can be read "
                f"once swarm can write {path.parent} to upgrade it ({how})"
            )
        return conn
    what = f"the state database {path}"
    raise DiskFullError(full_message(what, failure, path.parent)) from failure


def _is_damaged(exc: sqlite3.DatabaseError) -> bool:
    return getattr(exc, "sqlite_errorname", "") in {"SQLITE_CORRUPT", "SQLITE_NOTADB"}


def _unusable(path: Path, exc: sqlite3.DatabaseError) -> SwarmError:
    return SwarmError(
        f"{path} is not a usable worktree-swarm state database ({exc}); move it aside and run again"
    )


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on any exception."""
    # IMMEDIATE takes the write lock up front, so the busy timeout applies here instead of
    # a read-to-write upgrade failing with SQLITE_BUSY in the middle of the transaction.
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            # On a full disk SQLite may have rolled back already, or fail to; either way the
            # connection must leave the transaction for the retry to begin a new one.
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


class StoreFile:
    """The state database's file and connection, beneath the records :class:`Store` keeps."""

    #: Called with the error when a write finds the disk full (it waits, then the write is
    #: retried), and with None once a write succeeds again; None: such writes raise.
    on_full: Callable[[Exception | None], None] | None = None
    #: True for a store opened by :meth:`to_read` as last written.
    read_only = False

    def __init__(
        self, path: Path, *, last_written: bool = False, busy_seconds: float | None = None
    ) -> None:
        """Open (creating if needed) the database at *path* and bring its schema up to date.

        With *last_written*, only read it as it was last written (:meth:`to_read`).
        *busy_seconds*: how long to wait for another connection's lock (``BUSY_SECONDS``).
        """
        self.path = path
        self._lock = threading.Lock()
        self._file: tuple[int, int] | None = None  # (device, inode) it was opened at
        self._wal: tuple[int, int] | None = None  # and its write-ahead log's, once seen
        if last_written:
            self.read_only = True
            self._conn = _open_last_written(path)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        made = not path.exists()
        busy = BUSY_SECONDS if busy_seconds is None else busy_seconds
        self._conn = sqlite3.connect(
            path, timeout=busy, isolation_level=None, check_same_thread=False
        )
        try:
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.OperationalError as exc:
            self._conn.close()
            # Neither room nor write access would make a newer swarm's database ours to use.
            _refuse_newer(path, _written_version(path))
            if is_full(exc):
                if made:  # an empty file is no store: nothing to read, and none to put back over
                    with contextlib.suppress(OSError):
                        if path.stat().st_size == 0:
                            path.unlink()
                what = f"the state database {path}"
                raise DiskFullError(full_message(what, exc, path.parent)) from exc
            if not all(os.access(p, os.W_OK) for p in (path.parent, path) if p.exists()):
                raise StoreNotWritableError(
                    f"cannot write {path.parent}: read-only ({exc}); swarm keeps its state there"
                ) from exc
            raise SwarmError(
                f"cannot open the state database {path} ({exc}); "
                "check that no stuck swarm process holds it and that it is writable"
            ) from exc
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise _unusable(path, exc) from exc
        except BaseException:
            self._conn.close()
            raise
        self._file, self._wal = _identity(path), _identity(self._wal_path)

    @classmethod
    def to_read(cls, path: Path, *, busy_seconds: float | None = None) -> Self:
        """Open *path* for a command that only looks: on a full or read-only disk, as last written.

        SQLite cannot open a database to write while it cannot create its shared-memory
        file; a look at the state (``swarm status`` in the morning) must work all the same.
        Such a store has ``read_only`` set, and writes through it fail. *busy_seconds*: as
        for the constructor.
        """
        try:
            return cls(path, busy_seconds=busy_seconds)
        except (DiskFullError, StoreNotWritableError):
            if not path.exists():  # nothing was ever written there
                raise
            return cls(path, last_written=True)

    def _migrate(self) -> None:
        # In WAL mode NORMAL cannot corrupt the database; a power cut may lose the last
        # transactions, which `swarm resume` reconciles from git and the processes anyway.
        # FULL costs an fsync per state change, which showed up in the scheduling benchmark.
        self._conn.execute("PRAGMA synchronous = NORMAL")
        # Readers (`swarm status`) must not queue behind a writing manager, so only take the
        # write lock when the schema actually needs work.
        if self._user_version() == SCHEMA_VERSION:
            self._back_to_wal()
            return
        _refuse_newer(self.path, self._user_version())
        mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise SwarmError(f"cannot switch {self.path} to WAL mode (got {mode!r})")
        with self._write() as conn:
            # Re-read under the lock: another process may have migrated meanwhile.
            version = self._user_version()
            if version == SCHEMA_VERSION:  # made meanwhile (a run starting): nothing to do
                return
            _refuse_newer(self.path, version)
            self._refuse_under_a_manager(version)
            for statements in MIGRATIONS[version:]:
                for statement in statements:
                    conn.execute(statement)
            # PRAGMA takes no parameters; SCHEMA_VERSION is our own integer.
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")

    def _back_to_wal(self) -> None:
        """Put a store switched out of WAL by hand (``PRAGMA journal_mode=DELETE``) back in it.

        Out of it, a reader waits behind every write, and a writer behind every read (the
        screen of `swarm watch` froze). The switch needs no other connection reading or
        writing; one that is is not waited for (a reader must not queue behind a writer): the
        next open tries again. SQLite makes the switch atomic; other connections follow it.
        """
        if str(self._conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
            return
        (wait,) = self._conn.execute("PRAGMA busy_timeout").fetchone()
        self._conn.execute("PRAGMA busy_timeout = 0")
        try:
            self._conn.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError as exc:
            if not is_locked(exc):
                raise
        finally:
            self._conn.execute(f"PRAGMA busy_timeout = {int(wait):d}")

    def _user_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def _refuse_under_a_manager(self, version: int) -> None:
        """Refuse to bring an older database up to date while another manager runs on it.

        That manager is an older worktree-swarm (this one would have brought it up to date):
        its rows would get columns it does not know, and every task it still ran failed with
        an internal error at its next read (a `swarm status` after an upgrade did it).
        """
        holder = lock.other_manager(self.path.parent) if version > 0 else None
        if holder is not None:
            raise ManagerLockedError(
                f"{self.path} has schema version {version}, older than this worktree-swarm's"
                f" ({SCHEMA_VERSION}), and the manager running now {holder} is an older"
                " worktree-swarm: this one updates the database once that run has ended (use"
                " the older one meanwhile)"
            )

    def put_back(self) -> bool:
        """Write the database back to its path if it was deleted while open; whether it was.

        A manager's store deleted under it (``rm -rf .git/swarm``) goes on working on the open
        file, which vanishes with its last descriptor: the morning would find no run at all.
        The copy is written beside the path and renamed onto it once complete: a write that
        fails (a full disk) leaves nothing there, and the open store is used on.
        """
        if self.read_only or not self._gone():
            return False
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temp = self.path.with_name(f"{self.path.name}.put-back-{os.getpid()}")
            try:
                with contextlib.closing(
                    sqlite3.connect(temp, timeout=30, isolation_level=None)
                ) as copy:
                    self._conn.backup(copy)
                    copy.execute("PRAGMA journal_mode = WAL")
                # What is at the path is an empty store another command made: its write-ahead
                # log goes with it, or SQLite would replay that store's pages onto the copy.
                for log in ("-wal", "-shm"):
                    self.path.with_name(self.path.name + log).unlink(missing_ok=True)
                temp.replace(self.path)
            finally:
                for leftover in (temp, *(temp.with_name(temp.name + e) for e in ("-wal", "-shm"))):
                    leftover.unlink(missing_ok=True)
            self._conn.close()
            self._conn = sqlite3.connect(
                self.path, timeout=BUSY_SECONDS, isolation_level=None, check_same_thread=False
            )
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._file, self._wal = _identity(self.path), None
        return True

    @property
    def _wal_path(self) -> Path:
        return self.path.with_name(self.path.name + "-wal")

    def _gone(self) -> bool:
        """Whether the path no longer holds this store: missing, or a new one with no run.

        (Another command may have made an empty store there since, before it gave up.)
        """
        wal = _identity(self._wal_path)
        if self._wal is None:
            self._wal = wal  # made by the first write after opening
        elif wal != self._wal:
            # Deleted (or replaced) under this open store: what was written since the last
            # checkpoint is only in the log this connection still holds; other processes
            # read the file as of that checkpoint (a store with no tables, at first).
            return True
        now = _identity(self.path)
        if now == self._file:
            return False
        if now is None or not _is_database(self.path):
            # Another file moved there (an agent's garbage): never opened with SQLite, which
            # would take this store's write-ahead log, still at the path, for that file's.
            return True
        try:
            # Immutable: without any write-ahead log (this store's may still be at the path).
            uri = f"{self.path.absolute().as_uri()}?mode=ro&immutable=1"
            with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=30)) as other:
                return not other.execute("SELECT 1 FROM runs LIMIT 1").fetchall()
        except sqlite3.OperationalError as exc:  # empty: a store whose making failed (full)
            return "no such table" in str(exc)
        except sqlite3.Error:
            return False

    def replaced(self) -> bool:
        """Whether another file is at the path now than the one open (a store written back).

        A reader that stays open (`swarm watch`) reads the file it opened, which a manager
        replaces when it writes its store back after a deletion; a missing file is not that.
        """
        now = _identity(self.path)
        return now is not None and self._file is not None and now != self._file

    def wait_for_locks(self, seconds: float | None = None) -> None:
        """Wait up to *seconds* (``BUSY_SECONDS``) for another connection's lock from now on."""
        wait = BUSY_SECONDS if seconds is None else seconds
        with self._lock:
            self._conn.execute(f"PRAGMA busy_timeout = {round(wait * 1000)}")

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        try:
            with _transaction(self._conn) as conn:
                yield conn
        except sqlite3.DatabaseError as exc:
            if _is_damaged(exc):
                raise _unusable(self.path, exc) from exc
            raise

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.DatabaseError as exc:
                if _is_damaged(exc):  # found past the pages opening it read
                    raise _unusable(self.path, exc) from exc
                raise
