"""The commit graph: where git reads a commit's parents and root tree before the commit itself.

A graph written by hand (``objects/info/commit-graph``, or a split chain under
``objects/info/commit-graphs/``) shows your ``git log``, ``git show`` and ``git status`` a
commit with a tree or parents it does not have, and a ``git reset --hard`` checks that tree
out. Git writes the graph itself too (``git gc``, ``git commit-graph write``), so a new one is
not wrong in itself: when it changed, ``git commit-graph verify`` compares it with the commits
it describes, and one that does not match them is removed (git reads each commit instead).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from worktree_swarm.git import runner

LABEL = "objects/info/commit-graph"
_CHAIN = "objects/info/commit-graphs"

# The graph files as found: (name, inode, size, modification time) of each.
Fingerprint = tuple[tuple[str, int, int, int], ...]


def fingerprint(common: Path, label: str = LABEL, chain: str = _CHAIN) -> Fingerprint:
    """The files of *label* and its *chain* directory in the git dir *common*, as stat tells.

    By default the commit graph's; the multi-pack-index is laid out the same way.
    """
    names = [label]
    with contextlib.suppress(OSError):
        names += sorted(f"{chain}/{child.name}" for child in (common / chain).iterdir())
    found = []
    for name in names:
        try:
            st = os.lstat(common / name)
        except OSError:
            continue
        found.append((name, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(found)


def mismatch(root: Path) -> str:
    """What ``git commit-graph verify`` found wrong with the graph of *root* ("" if nothing)."""
    done = runner.run(root, "commit-graph", "verify", check=False)
    if done.returncode == 0:
        return ""
    return (done.stderr or done.stdout).strip() or f"exit code {done.returncode}"


def remove(common: Path) -> None:
    """Remove the commit graph of *common*: git reads every commit from its object instead."""
    with contextlib.suppress(FileNotFoundError):
        (common / LABEL).unlink()
    chain = common / _CHAIN
    if chain.is_symlink() or chain.is_file():
        chain.unlink()
    elif chain.is_dir():
        shutil.rmtree(chain)
