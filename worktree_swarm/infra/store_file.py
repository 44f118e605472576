"""The SQLite file under the Store: opened as last written, checked, written in transactions."""

from __future__ import annotations

import contextlib
import sqlite3
from typing import TYPE_CHECKING

from worktree_swarm.core.errors import SwarmError
from worktree_swarm.infra import fs
from worktree_swarm.infra.faults import DiskFullError, full_message
from worktree_swarm.infra.store_schema import SCHEMA_VERSION

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

_HEADER = b"SQLite format 3\x00"


def _is_database(path: Path) -> bool:
    """Whether *path* starts as an SQLite database does (an empty file does not)."""
    try:
        with fs.open_file(path) as fh:
            return fh.read(len(_HEADER)) == _HEADER
    except OSError:
        return False


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
            raise SwarmError(
                f"{path} has schema version {version}, not {SCHEMA_VERSION}; it can be read "
                "once it can be written (free some space)"
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
