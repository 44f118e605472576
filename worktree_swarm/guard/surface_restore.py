"""The repository's executable surface put back: each changed label as it was, byte for byte.

A file, symlink or directory of the baseline made again with its bits; what appeared
removed (a hard link where git writes cut instead, its file kept); a watched directory's
bits put back, what it holds left alone.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from worktree_swarm.guard import in_progress
from worktree_swarm.guard.restore import prune_empty, put_file, remove
from worktree_swarm.guard.surface import UMASK, add_hard_link, mode_bits
from worktree_swarm.guard.surface_entry import (
    HARD_LINK,
    MODE,
    SHARED_WRITE,
    UNREADABLE,
    Entry,
    Surface,
    path_of,
)
from worktree_swarm.infra import fs


def _unlink_other(common: Path, label: str, entry: Entry) -> None:
    """Remove what is at *label* unless it is the hard link *entry* or a file of one name.

    A hard link of yours from before the run has nothing to write back: git makes the file
    again where another link, a symlink or a directory was.
    """
    target = path_of(common, label)
    now: Surface = {}
    add_hard_link(now, common, target)
    if target.is_symlink() or target.is_dir():
        remove(target)
    elif now.get(label, entry) != entry:
        if _keeps_state(label):
            fs.break_link(target)
        else:
            remove(target)


# Files at the top of a git dir that are watched for their bytes (their own entries).
_BY_CONTENT = frozenset({"config", "config.worktree", "commondir", "gitdir", *in_progress.FILES})


def _keeps_state(label: str) -> bool:
    """Whether *label* is where hard links are looked for (and cut, not removed).

    The top of a git dir (but the files watched for their bytes), ``logs/`` and ``refs/``, in
    the common dir or an admin dir. A link found there is cut, the file kept (HEAD, the index,
    a ref, a reflog: a backup made with `cp -al` links every file of a repository); cut, a
    planted one harms nothing. Of an admin dir only ``config.worktree`` is watched for its
    bytes: its ``gitdir`` and ``commondir``, deleted, would leave your worktree no checkout.
    """
    parts = label.split("/")
    by_content = _BY_CONTENT
    if parts[0] == "worktrees" and len(parts) > 2:  # noqa: PLR2004 - worktrees/<name>/...
        parts, by_content = parts[2:], frozenset({"config.worktree"})
    return parts[0] in {"refs", "logs"} or (len(parts) == 1 and parts[0] not in by_content)


def _hard_linked(path: Path) -> bool:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_nlink > 1


def put_back(common: Path, before: Surface, labels: list[str], now: Surface | None = None) -> None:
    """Make each of *labels* what it was in *before*: byte for byte, with its bits.

    A watched directory gets its bits back (one new in *now*, as found, loses the writes
    neither its parent nor the umask allows); what it holds stays.
    """
    now = now or {}
    new_dirs = []
    for label in sorted(labels, key=len):
        target = path_of(common, label)
        entry = before.get(label)
        if _put_bits(target, entry, now.get(label)):
            continue
        if entry is None:
            if target.is_dir() and not target.is_symlink():
                new_dirs.append(target)
            else:
                _remove_new(target, label)
        elif entry.kind == HARD_LINK:
            _unlink_other(common, label, entry)
        else:
            _put_entry(target, entry)
    for directory in sorted(new_dirs, key=lambda d: len(d.parts), reverse=True):
        remove(directory)  # a directory the baseline lacked: all of it is new
        prune_empty(directory.parent, common)


def _put_entry(target: Path, entry: Entry) -> None:
    """Make *target* the directory, symlink or file *entry*."""
    if entry.kind == "dir":
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            remove(target)
        target.mkdir(parents=True, exist_ok=True)
        target.chmod(entry.bits)
        return
    if target.is_dir() and not target.is_symlink():
        remove(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if entry.kind == "link":
        put_file(target, mode="120000", data=entry.data)
    else:
        put_file(target, mode="100644", data=entry.data, bits=entry.bits)


def _put_bits(target: Path, entry: Entry | None, new: Entry | None) -> bool:
    """Put back a watched directory's bits, or an unreadable file's; False: not one of those."""
    if entry is None and new is not None and new.kind == MODE:  # new: as git would make it
        loose = SHARED_WRITE & ~mode_bits(target.parent) & UMASK
        fs.set_mode(target, lambda bits: bits & ~loose, dirs=True)
        return True
    if entry is None or entry.kind not in {MODE, UNREADABLE}:
        return False
    if target.is_symlink() or (entry.kind == MODE and target.is_file()):
        remove(target)  # a directory swapped for a link or file: made again, as git would
    if entry.kind == MODE and not os.path.lexists(target):
        target.mkdir(parents=True)
    fs.set_mode(target, lambda _: entry.bits, dirs=True)  # yours that was unreadable: its bits
    return True


def _remove_new(target: Path, label: str) -> None:
    """Remove what appeared at *label*; a hard link where git writes is cut, not removed."""
    if _keeps_state(label) and _hard_linked(target):
        fs.break_link(target)
    else:
        remove(target)
