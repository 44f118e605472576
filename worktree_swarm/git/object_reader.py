"""Object reads through one persistent ``git cat-file --batch``, hardened and watched."""

from __future__ import annotations

import contextlib
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Self

from worktree_swarm.core.errors import GitError
from worktree_swarm.git.process import StuckOnPipeError, start
from worktree_swarm.git.runner import hardened
from worktree_swarm.infra import pipes


class ObjectReader:
    """Reads objects through one persistent ``git cat-file --batch``, thread-safe.

    Started like every command (hardened, git's location variables dropped) and watched like
    one while a read waits: an object planted as a named pipe stops the reader and raises
    StuckOnPipeError (the next read starts it again) instead of holding its caller for ever.
    """

    def __init__(self, cwd: Path, *, env: Mapping[str, str] | None = None) -> None:
        if not cwd.is_dir():
            raise GitError(f"directory {cwd} does not exist")
        self._cwd = cwd
        self._env = env
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def read(self, rev: str, *, limit: int | None = None) -> bytes:
        """The raw content of object *rev* (its first *limit* bytes); GitError when missing.

        The rest of a bigger object is read and dropped as it comes, never held.
        """
        if not rev or "\n" in rev:
            raise GitError(f"object {rev!r} is missing")
        with self._lock:
            proc = self._proc or self._start()
            with pipes.watching(proc) as watched:
                answered, data = _batch_read(proc, rev, limit)
            if watched.pipe is not None or not answered:
                self._stop()
                if watched.pipe is not None:
                    raise StuckOnPipeError(["git", "cat-file"], watched.pipe)
                raise GitError(f"`git cat-file` ended while reading object {rev} in {self._cwd}")
        if data is None:
            raise GitError(f"object {rev} is missing")
        return data

    def _start(self) -> subprocess.Popen[bytes]:
        argv, _, env = hardened(self._cwd, ["cat-file", "--batch"], self._env)
        self._proc = start(
            self._cwd, argv, env=env, stdin=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        return self._proc

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with proc:  # closes its pipes
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()  # cat-file ends at the end of its input
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        """Stop the persistent process."""
        with self._lock:
            self._stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


_DROP_CHUNK = 1 << 20  # what of an object past its limit is read at once, to be dropped


def _batch_read(
    proc: subprocess.Popen[bytes], rev: str, limit: int | None = None
) -> tuple[bool, bytes | None]:
    """Ask ``cat-file --batch`` *proc* for *rev*: whether it answered, and the object.

    At most its first *limit* bytes are kept. The object is None when missing; there is no
    answer when the process ended (stopped, or it failed) first.
    """
    if proc.stdin is None or proc.stdout is None:  # never: it is started with both
        return False, None
    try:
        proc.stdin.write(rev.encode() + b"\n")
        proc.stdin.flush()
        header = proc.stdout.readline()
        size_text = header.rstrip(b"\n").rpartition(b" ")[2]  # "<name> <type> <size>"
        if not header or not size_text.isdigit():  # "<rev> missing", "<rev> ambiguous"
            return bool(header), None
        size = int(size_text)
        keep = size if limit is None else min(size, limit)
        data = proc.stdout.read(keep)
        left = size + 1 - keep  # the rest of the object, then a newline
        while left > 0 and len(data) == keep:
            dropped = len(proc.stdout.read(min(left, _DROP_CHUNK)))
            if not dropped:
                return False, None
            left -= dropped
    except OSError:  # its input closed: it ended
        return False, None
    if len(data) != keep:
        return False, None
    return True, data
