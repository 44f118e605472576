"""Starting one git process and collecting what it says: the layer under the git runner.

The environment every git gets (no prompt, English messages, no replace refs), git located
once per PATH, a start refused for want of a process retried, each command watched for a
named pipe it waits on, and a failure made a CommandError (noting a full disk). No
hardening here: the runner (:mod:`worktree_swarm.git.runner`) adds it before calling these.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from worktree_swarm.core.errors import BadInputError, CommandError, GitError, GitStartError
from worktree_swarm.infra import fs, pipes, proctree
from worktree_swarm.infra.proc import clean_env, ended_with_me, system_limit

# On every command: never prompt, messages in English (some are matched), and the objects as
# they are: a replace ref (`git replace`, `refs/replace/`) would show swarm a harmless blob
# in place of the one a push sends, restores put back or a merge takes.
_GIT_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "LANGUAGE": "C",
    "LC_ALL": "C",
    "GIT_NO_REPLACE_OBJECTS": "1",
}
# Your environment's settings that change what swarm's pathspecs (``:(literal,top)name``,
# ``:(exclude)``) and attributes mean: a checkpoint then failed, or its size cap matched nothing.
_GIT_ENV_DROPPED = (
    "GIT_LITERAL_PATHSPECS",
    "GIT_GLOB_PATHSPECS",
    "GIT_NOGLOB_PATHSPECS",
    "GIT_ICASE_PATHSPECS",
    "GIT_ATTR_SOURCE",
)


def execute(
    cwd: Path,
    args: Sequence[str],
    *,
    check: bool,
    env: Mapping[str, str] | None = None,
    input_bytes: bytes | None = None,
    shown_from: int = 0,
    stop: threading.Event | None = None,
    tied: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run the git command line *args* in *cwd*: its output as text (*stop*, *tied*: below)."""
    raw = execute_bytes(
        cwd,
        args,
        check=check,
        env=env,
        input_bytes=input_bytes,
        shown_from=shown_from,
        stop=stop,
        tied=tied,
    )
    return subprocess.CompletedProcess(
        raw.args,
        raw.returncode,
        raw.stdout.decode("utf-8", errors="replace"),
        raw.stderr.decode("utf-8", errors="replace"),
    )


def execute_bytes(
    cwd: Path,
    args: Sequence[str],
    *,
    check: bool,
    env: Mapping[str, str] | None = None,
    input_bytes: bytes | None = None,
    shown_from: int = 0,
    stdout: IO[bytes] | None = None,
    stop: threading.Event | None = None,
    tied: bool = False,
) -> subprocess.CompletedProcess[bytes]:
    """Run the git command line *args* in *cwd*: its output as bytes (or into *stdout*).

    Once *stop* is set the command is ended (StoppedError): SIGTERM, on which git removes
    what it was making (a clone's directory), then SIGKILL after a grace. *tied*: git gets
    the same SIGTERM if this process dies (:func:`.proc.ended_with_me`).
    """
    shown = ["git", *args[shown_from:]]
    stdin = subprocess.DEVNULL if input_bytes is None else subprocess.PIPE
    proc = start(cwd, args, env=env, stdin=stdin, stderr=subprocess.PIPE, stdout=stdout, tied=tied)
    # Git never waits on a named pipe of its own: one it waits on was planted where it reads
    # (an agent's `.gitignore` or loose ref), and would hold it, and whatever waits for it,
    # for ever. The watch stops it; the command fails and says where the pipe is.
    with proc, pipes.watching(proc) as watched:
        try:
            out, err, stopped = _communicate(proc, input_bytes, stop)
        except BaseException:
            proc.kill()
            raise
    if watched.pipe is not None:
        raise StuckOnPipeError(shown, watched.pipe)
    if stopped:
        raise StoppedError(shown)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out or b"", err)
    if check and done.returncode != 0:
        text = (done.stdout + done.stderr).decode("utf-8", errors="replace")
        raise CommandError(shown, done.returncode, text, full=_out_of_space(cwd, text))
    return done


# How often a command given a stop looks at it; how long it and what it started have to
# end on SIGTERM, and what still holds its pipes is then waited for.
_STOP_POLL = 0.2
_STOP_GRACE = 5.0


def _communicate(
    proc: subprocess.Popen[bytes], input_bytes: bytes | None, stop: threading.Event | None
) -> tuple[bytes | None, bytes | None, bool]:
    """What *proc* wrote to its pipes, once it ended; whether *stop* ended it.

    Stopped, git and what it started (a transport, a pack, a helper: it may hold the pipes
    after git is gone) are ended as an agent's tree is (:func:`proctree.kill_tree`); a
    process still holding them a grace later (escaped from the tree) is not waited for.
    """
    if stop is None:
        out, err = proc.communicate(input_bytes)
        return out, err, False
    if input_bytes is not None:  # `communicate` sends input on its first call only: a thread
        pipe, proc.stdin = proc.stdin, None
        threading.Thread(target=_feed, args=(pipe, input_bytes), daemon=True).start()
    ended: float | None = None
    while True:
        try:
            out, err = proc.communicate(timeout=_STOP_POLL)
        except subprocess.TimeoutExpired:
            if not stop.is_set():
                continue
            if ended is None:
                identity = proctree.identity_of(proc.pid)
                if identity is not None:
                    proctree.kill_tree(identity, grace=_STOP_GRACE)
                ended = time.monotonic()
            elif time.monotonic() > ended + _STOP_GRACE:
                proc.kill()
                proc.wait()
                return None, None, True
        else:
            return out, err, ended is not None


def _feed(pipe: IO[bytes] | None, data: bytes) -> None:
    """Write *data* to *pipe*, git's stdin, and close it; git that ended first reads no more."""
    if pipe is not None:
        with contextlib.suppress(OSError), pipe:
            pipe.write(data)


# Waits between starts of git refused for want of a process (EAGAIN): 1.5 s in all.
_START_BACKOFF = (0.1, 0.2, 0.4, 0.8)


def start(
    cwd: Path,
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None,
    stdin: int,
    stderr: int,
    stdout: IO[bytes] | None = None,
    tied: bool = False,
) -> subprocess.Popen[bytes]:
    """Start ``git *args`` (already hardened) in *cwd*, its output piped (or into *stdout*).

    *tied*: ended with this process. GitError when *cwd* is not a directory, BadInputError
    when git is missing.
    """
    if not cwd.is_dir():
        raise GitError(f"directory {cwd} does not exist")
    full_env = clean_env({**_GIT_ENV, **(env or {})})
    for name in _GIT_ENV_DROPPED:
        full_env.pop(name, None)
    argv = [_program(full_env.get("PATH")), *[str(a) for a in args]]
    if tied:
        argv = ended_with_me(argv)
    delays = iter(_START_BACKOFF)
    while True:
        try:
            return subprocess.Popen(
                argv,
                cwd=cwd,
                env=full_env,
                stdin=stdin,
                stdout=subprocess.PIPE if stdout is None else stdout,
                stderr=stderr,
            )
        except FileNotFoundError as exc:
            if not cwd.is_dir():  # removed since the check above
                raise GitError(f"directory {cwd} does not exist") from exc
            msg = "git is not installed or not on PATH; install git >= 2.38"
            raise BadInputError(msg) from exc
        except OSError as exc:
            limit = system_limit(exc.errno)
            if limit is None:
                raise
            # EAGAIN (`ulimit -u`) passes as other processes of the user's end.
            delay = next(delays, None) if exc.errno == errno.EAGAIN else None
            if delay is None:
                raise GitStartError(
                    f"git could not start ({exc.strerror}): the system refused ({limit})"
                ) from exc
            time.sleep(delay)


class StuckOnPipeError(GitError):
    """A git command stopped because it waited on a named pipe where git reads a file."""

    def __init__(self, shown: Sequence[str], pipe: str) -> None:
        """*shown*: the command as asked; *pipe*: the FIFO's path, or ``a named pipe``."""
        self.pipe = pipe
        at = subcommand(shown[1:])
        command = "git" if at is None else f"git {shown[1 + at]}"
        what = f"the named pipe {pipe}" if pipe.startswith("/") else pipe
        super().__init__(
            f"`{command}` was stopped: it waited on {what}, where git reads a file "
            "(remove it, then try again)"
        )


class StoppedError(GitError):
    """A git command ended because its caller was stopped meanwhile."""

    def __init__(self, shown: Sequence[str]) -> None:
        """*shown*: the command as asked."""
        at = subcommand(shown[1:])
        super().__init__(f"`{'git' if at is None else f'git {shown[1 + at]}'}` was stopped")


# What git says when a write fails; of a full disk it says so only sometimes (a checkout
# says "error: unable to write file PATH", nothing more).
_WRITE_FAILED = ("unable to write", "could not write", "write error", "unable to create")


def _out_of_space(cwd: Path, text: str) -> bool:
    """Whether git, failing with *text* in *cwd*, failed to write for want of space there."""
    low = text.lower()
    return any(words in low for words in _WRITE_FAILED) and fs.nearly_full(cwd)


@functools.lru_cache(maxsize=8)
def _program(path: str | None) -> str:
    """Where git is on *path* (a PATH value), looked up once per value.

    Given ``git``, every start would try each directory of PATH before git's (an ``execve``
    that fails in each). Not found: ``git``, and starting it says git is missing.
    """
    return shutil.which("git", path=os.defpath if path is None else path) or "git"


def subcommand(args: Sequence[str]) -> int | None:
    """Where git's command is in *args* (after options such as ``-c KEY=VALUE``)."""
    i = 0
    while i < len(args):
        if args[i] in {"-c", "-C"}:
            i += 2
        elif args[i].startswith("-"):
            i += 1
        else:
            return i
    return None
