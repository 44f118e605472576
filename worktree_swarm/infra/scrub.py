"""Secrets redacted in files and byte streams, never a secret cut in two.

Logs are rewritten in place a few MiB of whole lines at a time (:func:`scrub_file`,
:func:`scrub_tree`); output shown as it comes goes through :class:`RedactingWriter` a line at
a time. A line too long to hold is cut only where no token is (:func:`token_safe_end`). What
counts as a secret, and the process-wide redactor, are :mod:`worktree_swarm.infra.redact`'s.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from worktree_swarm.core.text import printable, without_escapes
from worktree_swarm.infra import fs
from worktree_swarm.infra.redact import current, redact, redact_bytes

_SCRUB_PIECE = 4 << 20  # what a log is redacted in: whole lines, read a piece at a time
_SCRUB_HOLD_LIMIT = 16 << 20  # a line (or key block) longer than this is cut at a blank


def scrub_file(path: Path) -> None:
    """Rewrite *path* in place with its secrets redacted (nothing happens when it has none).

    Only a regular file of one name: never through a symlink, a pipe or a hard link an agent
    left in place of a log (the file it names, outside the repository maybe, is not the log).
    Read a few MiB at a time, whole lines (a private-key block whole): a log of gigabytes is
    never held in memory. Redacted, it goes through a temporary file beside it (on a full disk
    it stays as it is, for the next scrub).
    """
    try:
        fh = fs.open_rewrite(path, follow=False)
    except OSError:  # gone, a link or a pipe: not written through
        return
    with fh:
        if os.fstat(fh.fileno()).st_nlink != 1:
            return
        if all(redact_bytes(piece) == piece for piece in _pieces(fh)):
            return
        try:
            with tempfile.TemporaryFile(dir=path.parent) as clean:
                fh.seek(0)
                for piece in _pieces(fh):
                    clean.write(redact_bytes(piece))
                # In place, so the file keeps its inode, mode and any appending writer's
                # descriptor.
                clean.seek(0)
                fh.seek(0)
                shutil.copyfileobj(clean, fh, _SCRUB_PIECE)
                fh.truncate()
        except OSError:  # no room for the copy (a full disk): a small log is redone in memory
            _scrub_in_memory(fh)


def _scrub_in_memory(fh: BinaryIO) -> None:
    """Redact the log *fh* read whole, when it is small (:data:`_SCRUB_PIECE` at most)."""
    with contextlib.suppress(OSError):
        if os.fstat(fh.fileno()).st_size > _SCRUB_PIECE:
            return
        fh.seek(0)
        data = fh.read()
        clean = redact_bytes(data)
        fh.seek(0)
        fh.write(clean)  # "[REDACTED]" may be longer than a short secret: may need a block
        fh.truncate()


def _pieces(fh: BinaryIO) -> Iterator[bytes]:
    """*fh* from where it is, in pieces of whole lines: no secret is cut in two.

    A private-key block (``-----BEGIN`` to ``-----END``) stays in one piece; a line longer
    than :data:`_SCRUB_HOLD_LIMIT` is cut after a blank (:func:`token_safe_end`).
    """
    pending = b""
    while data := fh.read(_SCRUB_PIECE):
        pending += data
        cut = pending.rfind(b"\n") + 1
        begin = pending.rfind(b"-----BEGIN", 0, cut)
        if begin > pending.rfind(b"-----END", 0, cut):  # a key block goes on past the cut
            cut = pending.rfind(b"\n", 0, begin) + 1
        if cut == 0:
            if len(pending) < _SCRUB_HOLD_LIMIT:
                continue
            cut = token_safe_end(pending) or len(pending)
        yield pending[:cut]
        pending = pending[cut:]
    if pending:
        yield pending


def scrub_tree(root: Path, *, skip: Iterable[str] = ()) -> None:
    """:func:`scrub_file` every regular file below *root*, except below the directories *skip*.

    *skip* holds patterns (:func:`fnmatch.fnmatchcase`) of paths relative to *root*,
    ``/``-separated: ``*/tmp`` is a ``tmp`` below a directory, not one right below *root*.
    A file with more than one link is never rewritten: it is another file too (a guard's hold
    on an object file of your repository), which a rewrite in place would change.
    """
    skipped = tuple(skip)
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath).relative_to(root)
        dirnames[:] = [
            d
            for d in dirnames
            if not any(fnmatch.fnmatchcase((here / d).as_posix(), one) for one in skipped)
        ]
        for name in filenames:
            path = Path(dirpath) / name
            try:
                info = path.lstat()
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode) and info.st_nlink == 1:
                scrub_file(path)


_PARTIAL_LIMIT = 1 << 16
# What a partial line past _PARTIAL_LIMIT keeps back: it goes out up to a blank before its last
# _HOLD bytes, so that no token (a secret) is cut in two; one without a blank there waits, up to
# _HOLD_LIMIT.
_HOLD, _HOLD_LIMIT = 1 << 12, 1 << 20


def token_safe_end(data: bytes) -> int:
    """Where the long line *data* may be cut without cutting a token (a secret) in two.

    After its last blank before its last 4 KiB, and not inside a known secret value that holds
    a blank (`DB_PASSWORD='P@ss,w0rd! 9'`); 0 when there is none.
    """
    before = len(data) - _HOLD
    if before <= 0:
        return 0
    cut = max(data.rfind(b" ", 0, before), data.rfind(b"\t", 0, before)) + 1
    spaced = [v.encode() for v in current().values if " " in v or "\t" in v]
    moved = True
    while cut > 0 and moved:
        moved = False
        for value in spaced:
            # An occurrence of *value* that starts before the cut and goes on past it.
            at = data.find(value, max(0, cut - len(value) + 1))
            if 0 <= at < cut < at + len(value):
                cut, moved = at, True
    return cut


class RedactingWriter:
    """Bytes to *out* a line at a time through :func:`redact` (a secret is never split).

    Shown on a terminal, so made printable too: an agent's escapes reach no terminal (a
    carriage return stays, for progress bars).
    """

    def __init__(self, out: BinaryIO) -> None:
        """Write to *out* (flushed after each write)."""
        self._out = out
        self._pending = b""

    def write(self, data: bytes) -> None:
        """Write the complete lines of what has come so far; keep the last partial line."""
        head, newline, self._pending = (self._pending + data).rpartition(b"\n")
        if newline:
            self._emit(head + newline)

    def flush_partial(self) -> None:
        """Write a partial last line too (the writer has gone quiet)."""
        pending, self._pending = self._pending, b""
        if pending:
            self._emit(pending)

    def flush_quiet(self) -> None:
        """While the writer is quiet but not done: its partial line up to its last carriage return.

        A progress bar shows; the rest waits for its line to end, as a secret streamed in
        pieces must reach the redactor whole. A partial line past 64 KiB goes out anyway.
        """
        head, cr, rest = self._pending.rpartition(b"\r")
        if len(rest) > _PARTIAL_LIMIT:
            self._flush_long()
        elif cr:
            self._pending = rest
            self._emit(head + cr)

    def drop_partial(self) -> None:
        """Forget the partial last line (it is read again from its start)."""
        self._pending = b""

    def _flush_long(self) -> None:
        """Most of a long partial line: up to a blank before its last bytes (no token cut)."""
        cut = token_safe_end(self._pending)
        if cut <= 0:
            if len(self._pending) < _HOLD_LIMIT:
                return
            cut = len(self._pending) - _HOLD
        head, self._pending = self._pending[:cut], self._pending[cut:]
        self._emit(head)

    def close(self) -> None:
        """Write whatever is left."""
        self.flush_partial()

    def _emit(self, data: bytes) -> None:
        text = data.decode("utf-8", errors="surrogateescape")
        text = printable(without_escapes(text), keep="\n\t\r")
        self._out.write(redact(text).encode("utf-8", errors="surrogateescape"))
        self._out.flush()
