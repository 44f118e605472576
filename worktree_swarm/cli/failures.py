"""How a failure reaches you: one line and its exit code, or an internal error's traceback file."""

from __future__ import annotations

import errno
import getpass
import os
import pwd
import sqlite3
import stat
import tempfile
import traceback
from pathlib import Path

import click

from worktree_swarm.core.errors import CommandError, ExitCode, SwarmError
from worktree_swarm.core.text import printable, without_escapes
from worktree_swarm.infra import faults, fs
from worktree_swarm.infra.redact import redact

_NOT_WRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})  # a read-only repository
_IN_THE_WAY = frozenset({errno.ENOTDIR, errno.EEXIST})


def swarm_error(exc: SwarmError, command: str | None, *, debug: bool) -> int:
    """One line for *exc* (its traceback first with ``--debug``); its exit code."""
    if debug:  # the traceback, and the exit code all the same
        click.echo(redact("".join(traceback.format_exception(exc))), err=True, nl=False)
    text = str(exc)
    if isinstance(exc, faults.DiskFullError):
        text = faults.retry_with(text, command)
    elif isinstance(exc, CommandError) and faults.is_full(exc):  # git writing, the disk full
        text = faults.retry_with(faults.full_message("the repository", exc), command)
    # An API's message, a path you typed: no escape sequence of theirs reaches your terminal.
    click.echo(f"swarm: {one_line(without_escapes(text))}", err=True)
    return int(exc.exit_code)


def one_line(text: str) -> str:
    """*text* redacted and printable on one line: a path you typed can hold a line break."""
    return printable(redact(text).replace("\r", "\\r").replace("\n", "\\n"), keep="\t")


def _full_where(exc: BaseException) -> str:
    """What a full disk refused, for an error that names no file.

    A write to swarm's stdout failing so names none: it was taken for swarm's state. Stdout
    that takes no byte (``>/dev/full``) is named; a file on a full disk may be either.
    """
    if isinstance(exc, sqlite3.Error):
        return "swarm's state"
    try:
        if stat.S_ISREG(os.fstat(1).st_mode):
            full = fs.nearly_full("/dev/fd/1")
            return "swarm's state or its output (stdout)" if full else "swarm's state"
        os.write(1, b"")  # refused only where no byte fits (/dev/full)
    except OSError as refused:
        if refused.errno == errno.ENOSPC:
            return "its output (stdout)"
    return "swarm's state"


def _owned_by_another(filename: object) -> str:
    """Why a file (or its folder) you cannot write is another user's: ``sudo swarm ...`` made it."""
    if not isinstance(filename, (str, bytes, os.PathLike)):
        return ""
    path = Path(os.fsdecode(filename))
    for each in (path, path.parent):
        try:
            owner = each.lstat().st_uid
        except OSError:
            continue
        if owner == os.geteuid():
            return ""
        try:
            name = pwd.getpwuid(owner).pw_name
        except KeyError:
            name = f"user {owner}"
        return (
            f"; {each} belongs to {name} (a swarm command run as {name} made it): give it back"
            f" to you (`sudo chown -R {getpass.getuser()} {each}`) or run swarm as {name}"
        )
    return ""


def unexpected(exc: Exception, command: str | None, *, debug: bool = False) -> int:
    """One line for an error no command caught: the user's to fix, or a bug's traceback file.

    With *debug* its traceback first, redacted as the file's is: its message can hold a key.
    """
    if debug:
        click.echo(redact("".join(traceback.format_exception(exc))), err=True, nl=False)
    if faults.is_full(exc):  # a full disk is the user's to fix, not a bug: one line
        where = getattr(exc, "filename", None) or _full_where(exc)
        text = faults.retry_with(faults.full_message(where, exc), command)
        click.echo(f"swarm: {one_line(text)}", err=True)
        return ExitCode.TASK_FAILED
    # A file where swarm's state directory (or one in it) belongs is in the way, as read-only.
    if isinstance(exc, OSError) and (
        exc.errno in _NOT_WRITABLE
        or (exc.errno in _IN_THE_WAY and f"{os.sep}.git{os.sep}swarm" in str(exc.filename))
    ):
        where = exc.filename or "swarm's state"
        from worktree_swarm.guard.sandbox import IN_BOX_VAR

        hint = "; swarm keeps its state in .git/swarm" if ".git" in str(where) else ""
        if os.environ.get(IN_BOX_VAR) == "1":
            hint = (
                "; under --sandbox swarm's state is out of an agent's reach "
                "(only `swarm note` and `swarm notes` work there)"
            )
        else:
            hint = _owned_by_another(exc.filename) or hint
        text = f"cannot write {where}: {exc.strerror}{hint}"
        click.echo(f"swarm: {one_line(text)}", err=True)
        return ExitCode.BAD_INPUT
    with tempfile.NamedTemporaryFile("w", prefix="swarm-crash-", suffix=".log", delete=False) as fh:
        fh.write(redact("".join(traceback.format_exception(exc))))  # its values: a key too
    click.echo(f"swarm: internal error; traceback written to {fh.name}", err=True)
    return ExitCode.TASK_FAILED
