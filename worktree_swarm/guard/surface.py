"""The repository's executable surface: the git files that make git run code.

``config`` (``core.fsmonitor``, ``core.pager``, ``filter.*``, aliases...), per-worktree
``config.worktree`` files, ``hooks/`` (and the directory ``core.hooksPath`` names) and
``info/`` (``attributes`` assigns filters and diff drivers; ``exclude`` hides files from the
checkout's scan). Each is kept byte for byte at the baseline, so a change can be shown as a
patch and undone exactly.

A file is read again only when its stat changed. Its change time is what tells: no write,
rename, chmod or ``utime`` can keep it, and only a file whose change time was already a
second old when it was read is taken from memory, so a second write within the same clock
tick (which can leave every stat field as it was) is never missed.
"""

from __future__ import annotations

import difflib
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from worktree_swarm.git import repo as git
from worktree_swarm.guard.restore import prune_empty, put_file, remove

_TEXT_LIMIT = 1 << 20  # larger files are named in the patch, not diffed


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """One file, symlink or directory of the surface."""

    kind: str  # "file", "link" or "dir"
    data: bytes = b""  # a file's bytes, a link's target
    bits: int = 0  # permission bits


Surface = dict[str, Entry]  # label (path under the common dir, or absolute) -> entry


def hooks_path(root: Path) -> Path | None:
    """The directory ``core.hooksPath`` names, when it is set (relative: to the checkout).

    The git runner passes ``-c core.hooksPath=/dev/null`` to every command, so the value
    asked for is the last one set in a config file, not on the command line.
    """
    out = git.git(root, "config", "--show-scope", "--get-all", "core.hooksPath", check=False)
    values = [
        value for scope, _, value in (line.partition("\t") for line in out.splitlines())
        if scope != "command"
    ]  # fmt: skip
    if not values or not values[-1]:
        return None
    return root / Path(values[-1]).expanduser()


def read(common: Path, extra_hooks: Path | None) -> Surface:
    """Every watched file of the git dir *common* (and of *extra_hooks*, its top level)."""
    found: Surface = {}
    for name in ("config", "config.worktree"):
        _add(found, common, common / name)
    worktrees = common / "worktrees"
    if worktrees.is_dir():
        for admin in sorted(worktrees.iterdir()):
            _add(found, common, admin / "config.worktree")
    for name in ("hooks", "info"):
        _add_tree(found, common, common / name)
    if extra_hooks is not None and extra_hooks.is_dir():
        real = Path(os.path.realpath(extra_hooks))
        if not real.is_relative_to(Path(os.path.realpath(common / "hooks"))):
            for child in sorted(real.iterdir()):
                if not child.is_dir() or child.is_symlink():  # git runs top-level hooks only
                    _add(found, common, child)
    return found


def changed(before: Surface, after: Surface) -> list[str]:
    """The labels whose entry differs, appeared or disappeared."""
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))


def patch(common: Path, before: Surface, after: Surface, labels: list[str]) -> str:
    """A readable record of each change: a unified diff for text, a note for binary data."""
    out = [f"# git files changed in {common}\n"]
    for label in labels:
        old, new = before.get(label), after.get(label)
        out.append(f"# {label}: {_describe(old)} -> {_describe(new)}\n")
        a = _text(old)
        b = _text(new)
        if a is not None and b is not None:
            out += difflib.unified_diff(
                a.splitlines(keepends=True),
                b.splitlines(keepends=True),
                fromfile=f"a/{label}",
                tofile=f"b/{label}",
            )
            if out and not out[-1].endswith("\n"):
                out.append("\n")
    return "".join(out)


def put_back(common: Path, before: Surface, labels: list[str]) -> None:
    """Make each of *labels* what it was in *before*: byte for byte, with its bits."""
    new_dirs = []
    for label in sorted(labels, key=len):
        target = _path(common, label)
        entry = before.get(label)
        if entry is None:
            if target.is_dir() and not target.is_symlink():
                new_dirs.append(target)
            else:
                remove(target)
            continue
        if entry.kind == "dir":
            if target.is_symlink() or (target.exists() and not target.is_dir()):
                remove(target)
            target.mkdir(parents=True, exist_ok=True)
            target.chmod(entry.bits)
            continue
        if target.is_dir() and not target.is_symlink():
            remove(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        if entry.kind == "link":
            put_file(target, mode="120000", data=entry.data)
        else:
            put_file(target, mode="100644", data=entry.data, bits=entry.bits)
    for directory in sorted(new_dirs, key=lambda d: len(d.parts), reverse=True):
        remove(directory)  # a directory the baseline lacked: all of it is new
        prune_empty(directory.parent, common)


def _path(common: Path, label: str) -> Path:
    return Path(label) if Path(label).is_absolute() else common / label


def _label(common: Path, path: Path) -> str:
    return path.relative_to(common).as_posix() if path.is_relative_to(common) else str(path)


# A file's stat when it was read -> its bytes (only files whose change time was old then).
_StatKey = tuple[int, int, int, int, int, int]
_read_before: dict[str, tuple[_StatKey, bytes]] = {}
_read_lock = threading.Lock()
_SETTLED_NS = 1_000_000_000  # a change time this much older than the read: no write since
_clock = time.time_ns
_MAX_REMEMBERED = 4096


def _add(found: Surface, common: Path, path: Path) -> None:
    began = _clock()
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    label = _label(common, path)
    if stat.S_ISLNK(info.st_mode):
        found[label] = Entry(kind="link", data=os.fsencode(path.readlink()))
    elif stat.S_ISDIR(info.st_mode):
        found[label] = Entry(kind="dir", bits=stat.S_IMODE(info.st_mode))
    elif stat.S_ISREG(info.st_mode):
        found[label] = Entry(kind="file", data=_file_bytes(str(path), info, began),
                             bits=stat.S_IMODE(info.st_mode))  # fmt: skip
    else:
        found[label] = Entry(kind="other", bits=stat.S_IMODE(info.st_mode))


def _file_bytes(path: str, info: os.stat_result, began: int) -> bytes:
    """The bytes of the regular file *path* (lstat'ed as *info* at *began*)."""
    key = (info.st_dev, info.st_ino, info.st_mode, info.st_size, info.st_mtime_ns,
           info.st_ctime_ns)  # fmt: skip
    with _read_lock:
        known = _read_before.get(path)
    if known is not None and known[0] == key:
        return known[1]
    with open(path, "rb") as f:  # noqa: PTH123 - no Path per file and scan
        data = f.read()
    if info.st_ctime_ns < began - _SETTLED_NS and os.lstat(path).st_ctime_ns == info.st_ctime_ns:
        with _read_lock:
            if len(_read_before) >= _MAX_REMEMBERED:
                _read_before.clear()
            _read_before[path] = (key, data)
    return data


def _add_tree(found: Surface, common: Path, top: Path) -> None:
    _add(found, common, top)
    if not top.is_dir() or top.is_symlink():
        return
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        for name in [*dirnames, *sorted(filenames)]:
            _add(found, common, Path(dirpath) / name)


def _describe(entry: Entry | None) -> str:
    if entry is None:
        return "(absent)"
    if entry.kind == "file":
        return f"file {entry.bits:o}, {len(entry.data)} bytes"
    if entry.kind == "link":
        return f"symlink to {os.fsdecode(entry.data)}"
    return entry.kind


def _text(entry: Entry | None) -> str | None:
    if entry is None or entry.kind == "dir":
        return ""
    if entry.kind != "file" or len(entry.data) > _TEXT_LIMIT:
        return None
    try:
        return entry.data.decode()
    except UnicodeDecodeError:
        return None
