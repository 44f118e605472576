"""The ends of logs: what the report, the live view and failure reasons quote from them.

Logs can be large and still growing, so files are read from their end, and a log that is
missing or unreadable reads as empty: quoting it must never fail the caller.
"""

from __future__ import annotations

import os
from pathlib import Path

TAIL_BYTES = 64 * 1024
TAIL_LINES = 40


def read_end(path: Path, max_bytes: int = TAIL_BYTES) -> str:
    """The last *max_bytes* of *path* as text (undecodable bytes replaced); '' when unreadable."""
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - max_bytes))
            data = fh.read(max_bytes)
    except OSError:
        return ""
    return data.decode("utf-8", errors="replace")


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
    """The last *lines* non-empty lines of *text*, stripped."""
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    return kept[-lines:]
