"""Named pipes and device nodes in a checkout: what git never lists, yet may open and wait on.

git neither lists nor compares them, but opens a FIFO where it reads a file (a `.gitignore`,
a `.gitattributes`) and waits on it for ever, as does a `grep -r` there. The guard finds those
made in your checkout while agents ran by walking it as its change test watches it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Collection
from pathlib import Path


def special_files(root: Path, skip: Collection[Path] = ()) -> dict[str, int]:
    """The FIFOs and device nodes under *root*: path relative to it -> inode.

    Not under a `.git`, a repository of its own, or one of *skip* (real paths: directories
    git ignores as a whole, roots a place leaves out); symlinks are not followed.
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
                    own_repo = entry.name == ".git" or os.path.lexists(entry.path + "/.git")
                    if entry.path not in skipped and not own_repo:
                        stack.append(entry.path)
                elif not entry.is_file(follow_symlinks=False) and not entry.is_symlink():
                    st = entry.stat(follow_symlinks=False)
                    mode = st.st_mode
                    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                        found[os.path.relpath(entry.path, top)] = st.st_ino
            except OSError:
                continue  # gone meanwhile
    return found
