"""Named pipes and device nodes in a checkout: what git never lists, yet may open and wait on.

git neither lists nor compares them, but opens a FIFO where it reads a file (a `.gitignore`,
a `.gitattributes`, the `HEAD` of what may be a nested repository) and waits on it for ever,
as does a `grep -r` there. The guard finds those made in your checkout while agents ran by
walking it as its change test watches it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Collection
from pathlib import Path

from worktree_swarm.infra import fs

_HEX = frozenset("0123456789abcdef")
_HEX_ID = 40  # a SHA-1 object id in hex: what git takes for a detached HEAD (or starts one)


def special_files(root: Path, skip: Collection[Path] = ()) -> dict[str, int]:
    """The FIFOs and device nodes under *root*: path relative to it -> inode.

    Not in a repository of its own (nor its `.git`) as git tells one, nor under one of *skip*
    (real paths: directories git ignores as a whole, roots a place leaves out); symlinks are
    not followed.
    """
    top = os.path.realpath(root)
    skipped = {os.fspath(p) for p in skip}
    found: dict[str, int] = {}
    stack = [top]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as listing:
                entries = list(listing)
        except OSError:
            continue  # gone, or unreadable: git cannot look there either
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    if entry.path in skipped:
                        continue
                    where = Path(entry.path)
                    if not (git_directory if entry.name == ".git" else repository)(where):
                        stack.append(entry.path)
                elif not entry.is_file(follow_symlinks=False) and not entry.is_symlink():
                    st = entry.stat(follow_symlinks=False)
                    if fs.special(st.st_mode):
                        found[os.path.relpath(entry.path, top)] = st.st_ino
            except OSError:
                continue  # gone meanwhile
    return found


def repository(directory: Path) -> bool:
    """Whether git takes *directory* for a repository of its own, and does not look inside.

    As git does: its `.git` is a git directory, or a file `gitdir: <one>`. A `.git` git
    ignores (garbage, naming nothing) leaves *directory* one git walks into.
    """
    dot_git = directory / ".git"
    try:
        if stat.S_ISDIR(dot_git.stat().st_mode):
            return git_directory(dot_git)
        with fs.open_file(dot_git) as fh:
            text = fh.read(1 << 20).decode()
    except (OSError, ValueError):
        return False
    named = text.removeprefix("gitdir: ").rstrip("\r\n")
    return text.startswith("gitdir: ") and bool(named) and git_directory(directory / named)


def git_directory(path: Path) -> bool:
    """Whether git takes *path* for a git directory, told without waiting on a file there.

    A valid `HEAD`, or a `refs` and an `objects` directory (in its `commondir`, if it names
    one). False where git would open a named pipe to tell (a `HEAD`, a `commondir`): a
    directory walked, where that pipe is found.
    """
    head = path / "HEAD"
    try:
        mode = head.lstat().st_mode
    except OSError:
        mode = 0
    try:
        if stat.S_ISLNK(mode) and str(head.readlink()).startswith("refs/"):
            return True
        if stat.S_ISREG(mode):
            with fs.open_file(head, follow=False) as fh:
                if _valid_head(fh.read(255)):
                    return True
    except OSError:
        return False  # swapped meanwhile (for a pipe, say): looked into
    if fs.special(mode):
        return False  # git would open and wait on it
    common = path
    listed = path / "commondir"
    if os.path.lexists(listed):
        try:
            common = path / fs.read_file(listed).decode().strip()
        except (OSError, ValueError):
            return False
    return all(os.access(common / d, os.X_OK) for d in ("objects", "refs"))


def _valid_head(data: bytes) -> bool:
    """Whether *data* is what git accepts in a `HEAD`: a symbolic ref, or an object id."""
    if data.startswith(b"ref:"):
        return data[4:].lstrip().startswith(b"refs/")
    head = data[:_HEX_ID].decode("ascii", "replace").lower()
    return len(head) == _HEX_ID and set(head) <= _HEX
