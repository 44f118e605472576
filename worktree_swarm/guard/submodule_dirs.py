"""What in a worktree's own submodule git dirs makes git run a program: judged all the same.

A task's submodules' git dirs (``worktrees/<task>/modules/``, made by `git submodule update
--init` in its worktree) and a merge worktree's are their programs' to fill: config, sample
hooks, ``info/exclude``, taken as found. But your `git status` in that worktree later looks
inside a checked-out submodule under its git dir's config, hooks and attributes: a setting
that runs a program there (config_overrides' list, ``include.path``), a hook that is not a
sample, ``info/attributes``, a ``commondir`` (git would read another git dir's config) or a
symlink is judged as any other change of git's files.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from worktree_swarm.git.config_overrides import runs_program
from worktree_swarm.git.process import execute, execute_bytes
from worktree_swarm.guard.surface import MODE, Entry

_CONFIGS = ("config", "config.worktree")
_TAKEN_KINDS = frozenset({"file", "dir", MODE})  # what git makes there itself
_SAMPLE = ".sample"


def runs_code(root: Path, label: str, old: Entry | None, new: Entry | None) -> bool:
    """Whether *label* changing from *old* to *new* can make git run a program.

    *root*: a checkout of the repository, where swarm's git reads the configs' bytes. What is
    taken away runs nothing; a config counts by its program-running settings only.
    """
    if new is None:
        return False
    if new.kind not in _TAKEN_KINDS:  # a symlink (to a config of anyone's), a pipe
        return True
    parent, leaf = _tail(label)
    if leaf == "commondir":  # never git's in a submodule's git dir: its config is another's
        return True
    if leaf in _CONFIGS and new.kind == "file":  # before hooks/: git runs no hook so named
        return _programs(root, old) != _programs(root, new)
    if new.kind != "file":
        return False
    if parent == "hooks":
        return not leaf.endswith(_SAMPLE)
    return parent == "info" and leaf == "attributes"


def kept(root: Path, label: str, old: Entry | None, new: Entry | None) -> Entry | None:
    """The baseline of *label*, whose change :func:`runs_code`, to be put back to.

    *old* when there was one; a config new with it (the submodule's, as `git submodule
    update --init` made it) is kept without its program-running settings.
    """
    if old is not None or new is None or new.kind != "file" or _tail(label)[1] not in _CONFIGS:
        return old
    programs = _programs(root, new)
    if programs is None:  # not a config git reads: none is better
        return old
    with tempfile.TemporaryDirectory(prefix="swarm-config-") as aside:
        path = Path(aside) / "config"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(new.data)
        for name in sorted({name for name, _ in programs}):
            execute(root, ["config", "--file", str(path), "--unset-all", name], check=False)
        return Entry(kind="file", data=path.read_bytes(), bits=new.bits)


def _tail(label: str) -> tuple[str, str]:
    parent, _, leaf = label.rpartition("/")
    return parent.rpartition("/")[2], leaf


def _programs(root: Path, entry: Entry | None) -> frozenset[tuple[str, str]] | None:
    """The program-running settings in the config *entry*; None when git cannot read it."""
    if entry is None or entry.kind != "file":
        return frozenset()
    out = execute_bytes(
        root, ["config", "--file", "-", "--list", "-z"], check=False, input_bytes=entry.data
    )
    if out.returncode != 0:
        return None
    found = set()
    for item in out.stdout.split(b"\0"):
        name, _, value = os.fsdecode(item).partition("\n")
        if name and runs_program(name):
            found.add((name, value))
    return frozenset(found)
