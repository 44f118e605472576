"""The ends of logs: what the report, the live view and failure reasons quote from them.

Logs can be large and still growing, so files are read from their end, and a log that is
missing or unreadable reads as empty: quoting it must never fail the caller. A Ray attempt's
local copy of its node's log notes beside it how far that log was read.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from worktree_swarm.core.text import printable, without_escapes
from worktree_swarm.infra import fs
from worktree_swarm.infra.redact import redact, redact_bytes
from worktree_swarm.infra.scrub import RedactingWriter, token_safe_end

TAIL_BYTES = 64 * 1024
TAIL_LINES = 40


def read_end(path: Path, max_bytes: int = TAIL_BYTES) -> str:
    """The whole words among the last *max_bytes* of *path* as text; '' when unreadable.

    Undecodable bytes are replaced. A word the window starts inside is left out: its end
    alone could be the end of a secret, which the redactor would no longer know.
    """
    try:
        with fs.open_file(path) as fh:
            size = fh.seek(0, os.SEEK_END)
            start = max(0, size - max_bytes)
            fh.seek(max(0, start - 1))  # the byte before: does the window start a word?
            data = fh.read(max_bytes + (start > 0))
    except OSError:
        return ""
    return from_word_start(data, cut=start > 0).decode("utf-8", errors="replace")


_BLANKS = re.compile(rb"\s")
_BLOCK = 1 << 20  # read at a time where a line is longer than the window
LONG_STRING = 64 * 1024  # a JSON string longer than this, in a line read whole, is left out
# A JSON string's bytes up to its closing quote (or a line break), escapes whole: matched by
# the pattern engine, not a step of Python per escape (a reply of many MiB is full of them).
_STRING_BODY = re.compile(rb'(?:[^"\\\n]+|\\.)*', re.DOTALL)


def read_log_end(path: Path, max_bytes: int) -> str:
    """The last *max_bytes* of *path* as :func:`read_end` reads them, but whole lines.

    The line the window starts inside is read whole from its start, its JSON strings longer
    than :data:`LONG_STRING` left out: an agent's last line may be longer than any window
    (Claude Code's ``result`` quoting a reply of many MiB) and still name its session, cost
    and tokens. Memory stays about twice *max_bytes*, however long the line; one that is
    still longer so shortened (not JSON) is cut as :func:`read_end` cuts it.
    """
    try:
        with fs.open_file(path) as fh:
            size = fh.seek(0, os.SEEK_END)
            start = max(0, size - max_bytes)
            fh.seek(max(0, start - 1))
            data = fh.read(max_bytes + (start > 0))
            if start == 0 or data[:1] == b"\n":
                return data[start > 0 :].decode("utf-8", errors="replace")
            newline = data.find(b"\n")
            rest = b"" if newline < 0 else data[newline + 1 :]
            begins = _line_start(fh, start)
            fh.seek(begins)
            head = _shortened(fh, size - begins - len(rest), cap=max_bytes)
    except OSError:
        return ""
    if head is None:
        return from_word_start(data, cut=True).decode("utf-8", errors="replace")
    return (head + rest).decode("utf-8", errors="replace")


def _line_start(fh: BinaryIO, offset: int) -> int:
    """Where the line that holds *offset* in *fh* starts, read backwards a block at a time."""
    end = offset
    while end > 0:
        begin = max(0, end - _BLOCK)
        fh.seek(begin)
        newline = fh.read(end - begin).rfind(b"\n")
        if newline >= 0:
            return begin + newline + 1
        end = begin
    return 0


def _shortened(fh: BinaryIO, length: int, *, cap: int) -> bytes | None:
    """The next *length* bytes of *fh* (one line), JSON strings over LONG_STRING left out.

    None once that passes *cap* (a line of no JSON).
    """
    shortener = _Shortener()
    while length > 0 and (chunk := fh.read(min(_BLOCK, length))):
        length -= len(chunk)
        shortener.feed(chunk)
        if len(shortener.out) > cap:
            return None
    shortener.close()  # the line ends inside a string: no JSON
    return None if len(shortener.out) > cap else bytes(shortener.out)


@dataclass(slots=True)
class _Shortener:
    """Copies a line of JSON, each string over LONG_STRING as ``"(N bytes not read)"``.

    The JSON stays whole, and no part of a secret in such a string is kept.
    """

    out: bytearray = field(default_factory=bytearray)
    string: bytearray | None = None  # inside a string: what it holds so far
    dropped: int = 0  # inside a string too long: its length so far (its bytes not kept)
    escaped: bool = False  # the string's last byte was an escaping backslash

    def feed(self, chunk: bytes) -> None:
        """Copy the next *chunk* of the line."""
        i = 0
        while i < len(chunk):
            i = self._outside(chunk, i) if self.string is None else self._inside(chunk, i)

    def close(self) -> None:
        """End the string being read, if any (at its closing quote, or at the line's end)."""
        if self.string is not None:
            kept = f"({self.dropped} bytes not read)".encode() if self.dropped else self.string
            self.out += kept
            self.string = None

    def _outside(self, chunk: bytes, i: int) -> int:
        quote = chunk.find(b'"', i)
        if quote < 0:
            self.out += chunk[i:]
            return len(chunk)
        self.out += chunk[i : quote + 1]
        self.string, self.dropped = bytearray(), 0
        return quote + 1

    def _inside(self, chunk: bytes, i: int) -> int:
        if self.escaped:  # the byte an escape at the end of the last chunk escapes
            self._take(chunk, i, i + 1)
            self.escaped = False
            return i + 1
        end = _STRING_BODY.match(chunk, i).end()  # type: ignore[union-attr]  # matches ''
        self._take(chunk, i, end)
        if end == len(chunk):
            return end
        if chunk[end] == ord("\\"):  # an escape whose byte is in the next chunk
            self._take(chunk, end, end + 1)
            self.escaped = True
            return end + 1
        self.close()  # its closing quote, or a line break no JSON string holds
        self.out += chunk[end : end + 1]
        return end + 1

    def _take(self, chunk: bytes, i: int, end: int) -> None:
        """Add ``chunk[i:end]`` to the string being read, or count it once it is too long."""
        if self.dropped:
            self.dropped += end - i
        elif self.string is not None:
            self.string += chunk[i:end]
            if len(self.string) > LONG_STRING:
                self.dropped, self.string = len(self.string), bytearray()


def from_word_start(data: bytes, *, cut: bool) -> bytes:
    """*data* from its first whole word on when it was *cut* out of a longer text.

    Read with the byte before the window's start: a word that starts there is whole. Nothing
    when no blank or line break follows (one word, cut).
    """
    if not cut:
        return data
    blank = _BLANKS.search(data)
    return b"" if blank is None else data[blank.end() :]


def tail(path: Path, *, lines: int = TAIL_LINES) -> str:
    """The last *lines* lines of *path* ('' when it does not exist)."""
    return "\n".join(read_end(path).rstrip("\n").splitlines()[-lines:])


def last_line(path: Path, *, max_bytes: int = TAIL_BYTES) -> str:
    """The last non-empty line among the final *max_bytes* of *path* ('' if none)."""
    for line in reversed(read_end(path, max_bytes).splitlines()):
        if line.strip():
            return line.rstrip()
    return ""


def last_lines(text: str, lines: int = TAIL_LINES) -> list[str]:
    """The last *lines* non-empty lines of *text*, stripped, without escape sequences.

    Whole sequences go (a reason kept ``]0;title`` where only its ESC was dropped later).
    """
    kept = [line.strip() for line in without_escapes(text).splitlines() if line.strip()]
    return kept[-lines:]


_HOLD = 1 << 12  # what a line that never ends keeps back (no token cut), when it has no blank
_MARK = 64  # bytes before the read position checked again: a rewritten log reads anew


@dataclass(slots=True)
class Follower:
    """What a growing log adds, as whole lines, redacted and printable: for a live view.

    The view starts at the last *limit* bytes and reads at most that much at a time: a burst
    of output skips ahead (and says so) instead of stalling the view. A log rewritten under it
    (shorter, or redacted in place once its attempt ends) is read again from its end.
    """

    path: Path
    limit: int = TAIL_BYTES
    _offset: int = -1
    _pending: bytes = b""
    _mark: bytes = b""
    _refused: bool = False  # said once that the log is not read
    _mid_word: bool = False  # reading from inside a word (its start skipped)

    def read(self, *, ended: bool = False) -> tuple[bool, str]:
        """``(restart, text)``: the text to append, once the view is cleared when *restart*.

        Once its writer has *ended*, a last line without a newline is shown too.
        """
        try:
            # Never through a symlink or a pipe an agent left in the log's place (as `swarm
            # logs`): the view would show a file outside the run's.
            fh = fs.open_file(self.path, follow=False)
        except FileNotFoundError:
            return False, ""  # not there yet
        except OSError as exc:
            if self._refused:
                return False, ""
            self._refused = True
            return False, f"(log not read: {exc.strerror or exc}; it is no file of swarm's)\n"
        with fh:
            size = os.fstat(fh.fileno()).st_size
            restart = self._offset >= 0 and not self._still_there(fh, size)
            if self._offset < 0 or restart:
                self._offset, self._pending, self._mark = max(0, size - self.limit), b"", b""
                self._mid_word = _inside_a_word(fh, self._offset)
            skipped = max(0, size - self._offset - self.limit)
            if skipped:
                self._offset, self._pending, self._mark = size - self.limit, b"", b""
                self._mid_word = _inside_a_word(fh, self._offset)
            fh.seek(self._offset)
            chunk = fh.read(self.limit)
        self._offset += len(chunk)
        self._mark = (self._mark + chunk)[-_MARK:]
        data = self._pending + chunk
        if self._mid_word:  # the end of a word the view starts inside: not shown (a secret's)
            blank = _BLANKS.search(data)
            data, self._mid_word = (b"", True) if blank is None else (data[blank.end() :], False)
        head, newline, rest = data.rpartition(b"\n")
        if ended:
            head, newline, rest = head + newline + rest, b"", b""
        elif len(rest) > self.limit:  # a line that never ends is shown as it comes, uncut
            cut = token_safe_end(rest) or max(0, len(rest) - _HOLD)
            head, newline, rest = head + newline + rest[:cut], b"", rest[cut:]
        self._pending = rest
        text = (head + newline).decode("utf-8", errors="replace")
        note = f"... ({skipped} bytes skipped)\n" if skipped else ""
        return restart, note + printable(redact(without_escapes(text)))

    def _still_there(self, fh: BinaryIO, size: int) -> bool:
        if size < self._offset:
            return False
        fh.seek(self._offset - len(self._mark))
        return fh.read(len(self._mark)) == self._mark


def _inside_a_word(fh: BinaryIO, offset: int) -> bool:
    """Whether *offset* in *fh* is inside a word (not after a blank or a line break)."""
    if offset == 0:
        return False
    fh.seek(offset - 1)
    return not fh.read(1).isspace()


def copy_log(path: Path, out: RedactingWriter, *, ended: Callable[[], bool] | None = None) -> None:
    """Write the log *path* to *out*; with *ended*, what it adds too, until *ended* says so.

    Never through a symlink or a pipe planted in its place (OSError). A log rewritten under
    it (redacted in place once its attempt ends: other bytes where it was reading) is read
    again after the lines already written, never from the old byte offset.
    """
    fh = fs.open_file(path, follow=False)
    lines, offset, mark = 0, 0, b""
    try:
        while True:
            if mark and not _still_there(fh, offset, mark):
                fh.close()
                out.drop_partial()
                fh, offset, mark = _after_lines(path, lines)
            chunk = fh.read(65536)
            if chunk:
                out.write(chunk)
                lines += chunk.count(b"\n")
                offset += len(chunk)
                mark = (mark + chunk)[-_MARK:]
                continue
            if ended is None:
                break
            if ended():  # one pass more: what came after the last read, or the log rewritten
                ended = None
                continue
            out.flush_quiet()
            time.sleep(0.2)
    finally:
        fh.close()
    out.close()


def _still_there(fh: BinaryIO, offset: int, mark: bytes) -> bool:
    """Whether the bytes before *offset* are still *mark* (the log was not rewritten)."""
    if os.fstat(fh.fileno()).st_size < offset:
        return False
    fh.seek(offset - len(mark))
    return fh.read(len(mark)) == mark


def _after_lines(path: Path, lines: int) -> tuple[BinaryIO, int, bytes]:
    """*path* opened again after its first *lines* lines: the file, that offset, the bytes before.

    Read a block at a time: a log may be large.
    """
    fh = fs.open_file(path, follow=False)
    at, seen, mark = 0, 0, b""
    while seen < lines and (chunk := fh.read(65536)):
        count = chunk.count(b"\n")
        if seen + count >= lines:
            end = -1
            for _ in range(lines - seen):
                end = chunk.index(b"\n", end + 1)
            chunk, count = chunk[: end + 1], lines - seen
        at, seen, mark = at + len(chunk), seen + count, (mark + chunk)[-_MARK:]
    fh.seek(at)
    return fh, at, mark


def _read_to(log_path: Path) -> Path:
    """The file beside an attempt's local log that says how far its node's log was read."""
    return log_path.with_name(log_path.name + ".read")


def note_read(log_path: Path, read_to: int, size: int) -> None:
    """Record that the node's log was read to *read_to* when the copy held *size* bytes."""
    part = log_path.with_name(log_path.name + ".read.part")
    part.write_text(f"{read_to} {size}\n")
    part.replace(_read_to(log_path))


def append_copy(log_path: Path, read_to: int, chunk: bytes) -> None:
    """Append *chunk* of a node's log, read to *read_to* there, to its copy *log_path*, redacted.

    How far it was read, and the copy's size then, are noted beside the copy (:func:`mirrored`).
    """
    with fs.open_append_bytes(log_path) as fh:
        fh.write(redact_bytes(chunk))
        size = fh.tell()
    note_read(log_path, read_to, size)


def copy_anew(log_path: Path, read: Callable[[int], tuple[int, bytes]]) -> int:
    """Copy a node's log whole to *log_path*, redacted; how far it was read.

    *read* (an offset there) gives how far it read and what: the same offset at its end. The
    copy is made beside it and put in its place only once whole: a read that fails (its node
    lost, a call timed out, this process killed) leaves the copy as it was, and raises.
    """
    part = log_path.with_name(log_path.name + ".whole.part")
    part.unlink(missing_ok=True)
    offset = 0
    try:
        with os.fdopen(os.open(part, _NEW, 0o644), "wb") as fh:
            while True:
                read_to, chunk = read(offset)
                if read_to == offset:
                    break
                fh.write(redact_bytes(chunk))
                offset = read_to
            size = fh.tell()
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    note_read(log_path, 0, 0)  # killed before the next note: copied anew, never cut short
    part.replace(log_path)
    note_read(log_path, offset, size)
    return offset


_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def mirrored(log_path: Path) -> int:
    """How far the node's log of the copy *log_path* was read; the copy cut back to match.

    A coordinator killed after appending a chunk and before noting it leaves the copy longer
    than noted: cut, the chunk is copied again, not twice. Nothing noted: copied from the start.
    """
    try:
        read_to, size = map(int, _read_to(log_path).read_text().split())
    except (OSError, ValueError):
        read_to = size = 0
    with contextlib.suppress(OSError), log_path.open("r+b") as fh:
        fh.truncate(min(size, os.fstat(fh.fileno()).st_size))
    return read_to
