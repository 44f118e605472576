"""An announcement as the guard reads it (:mod:`.channel`): the file and its writer.

The file read (never through a symlink), what it says, and its writer: alive, holding that
very file open, running swarm's command line.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path

import psutil

from worktree_swarm.guard.model import RefMove
from worktree_swarm.infra import fs


def _oid(value: object) -> str | None:
    """A ref's value as an announcement gives it (None: absent, or not a name)."""
    return value if isinstance(value, str) else None


def swarm_command(process: psutil.Process) -> bool:
    """Whether *process* runs swarm's command line (``swarm ...``, ``python -m worktree_swarm``).

    A script named ``swarm`` counts when it is swarm's entry point: not ``docker swarm``.
    """
    try:
        argv, cwd = process.cmdline(), process.cwd()
    except psutil.Error:
        return False
    if argv[1:3] in (["-m", "worktree_swarm.cli"], ["-m", "worktree_swarm"]):
        return True
    for arg in argv[:2]:
        if Path(arg).name != "swarm":
            continue
        try:  # the installed entry point imports swarm's CLI in its first lines
            with fs.open_file(Path(cwd, arg)) as script:
                if b"worktree_swarm" in script.read(_SCRIPT_HEAD):
                    return True
        except OSError:
            continue
    return False


# What of a script named `swarm` is read to tell swarm's entry point.
_SCRIPT_HEAD = 4096


def opened(path: Path) -> tuple[bytes, os.stat_result]:
    """The bytes of the announcement *path*, and the file they were read from.

    Never through a symlink, never a named pipe or anything but a regular file
    (:class:`fs.NotAFileError`): what is judged is the file read, not what its name leads to.
    """
    try:
        fh = fs.open_file(path, follow=False)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symlink
            raise fs.NotAFileError(exc.errno, "a symlink", os.fspath(path)) from exc
        raise
    with fh:
        return fh.read(), os.fstat(fh.fileno())


def still_at(path: Path, read: os.stat_result) -> bool:
    """Whether *path* still names the file *read*."""
    try:
        now = path.lstat()
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (read.st_dev, read.st_ino)


def holds(process: psutil.Process, read: os.stat_result) -> bool:
    """Whether *process* holds the file *read* open (compared by device and inode).

    Linux: each of its descriptors, as ``/proc`` gives them; elsewhere the files psutil names.
    """
    key = (read.st_dev, read.st_ino)
    fds = Path(f"/proc/{process.pid}/fd")
    if Path("/proc/self/fd").is_dir():
        try:
            entries = os.listdir(fds)  # noqa: PTH208
        except PermissionError as exc:
            raise psutil.AccessDenied(process.pid) from exc
        except OSError as exc:
            raise psutil.NoSuchProcess(process.pid) from exc
        paths = [fds / entry for entry in entries]
    else:
        paths = [Path(f.path) for f in process.open_files()]
    for each in paths:
        with contextlib.suppress(OSError):
            held = each.stat()
            if (held.st_dev, held.st_ino) == key:
                return True
    return False


def parse_announcement(text: bytes) -> tuple[int, float, list[RefMove], bool] | None:
    """An announcement's writer's pid and start, its moves, whether it is done."""
    try:
        data = json.loads(text)
        pid, started = int(data["pid"]), float(data["started"])
        moves = [(str(m["ref"]), _oid(m.get("old")), _oid(m.get("new"))) for m in data["moves"]]
        return pid, started, moves, bool(data["done"])
    except (ValueError, KeyError, TypeError):
        return None  # not swarm's
