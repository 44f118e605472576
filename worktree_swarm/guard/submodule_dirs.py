"""What in a worktree's own submodule git dirs makes git run a program: judged all the same.

A task's submodules' git dirs (``worktrees/<task>/modules/``, made by `git submodule update
--init` in its worktree) and a merge worktree's are their programs' to fill: config, sample
hooks, ``info/exclude``, taken as found. But your `git status` in that worktree later looks
inside a checked-out submodule under its git dir's config, hooks and attributes: a setting
that runs a program there (config_overrides' list, ``include.path``), a hook that is not a
sample, ``info/attributes``, a ``commondir`` (git would read another git dir's config) or a
symlink is judged as any other change of git's files.

A config so judged is put back by its program-running settings only: the agent's other
changes (``submodule.<x>.active``, ``core.worktree``, a remote's fetch refspecs, written by
its `git submodule update`) are kept. Where swarm's git cannot give it exactly the settings
it had (a key with no value, an ``include.path`` whose place among the rest counts), it goes
back whole.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from worktree_swarm.git.config_overrides import lfs_runs, runs_program
from worktree_swarm.git.process import execute, execute_bytes
from worktree_swarm.guard.surface_entry import MODE, Entry

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

    *old*, but for a config: *new* with the program-running settings *old* had (none for one
    new, as `git submodule update --init` made it), when swarm's git can write exactly those;
    else *old* whole. A key that now runs a program gets *old*'s values whatever they were
    (``user.note`` with a second line git-lfs reads as an extension: its value before).
    """
    if new is None or new.kind != "file" or _tail(label)[1] not in _CONFIGS:
        return old
    if old is not None and old.kind != "file":
        return old
    was, now = _settings(root, old), _settings(root, new)
    if was is None or now is None:  # not a config git reads: as it was is better
        return old
    changed = {n for n, _ in (*was, *now) if _values(was, n) != _values(now, n)}
    before = _settings(root, old, every=True) or ()
    back = [(n, v) for n, v in before if n in changed]
    # Written back at its section's end: an include's place decides what it overrides.
    if any(v is None or n.startswith("include") for n, v in back):
        return old
    with tempfile.TemporaryDirectory(prefix="swarm-config-") as aside:
        path = Path(aside) / "config"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(new.data)
        for name in sorted(changed):
            execute(root, ["config", "--file", str(path), "--unset-all", name], check=False)
        for name, value in back:
            execute(root, ["config", "--file", str(path), "--add", name, str(value)], check=False)
        data = path.read_bytes()
    ended = _settings(root, Entry(kind="file", data=data))
    if ended is None or any(_values(ended, n) != _values(was, n) for n, _ in (*was, *ended)):
        return old
    return Entry(kind="file", data=data, bits=(old or new).bits)


def _tail(label: str) -> tuple[str, str]:
    parent, _, leaf = label.rpartition("/")
    return parent.rpartition("/")[2], leaf


def _programs(root: Path, entry: Entry | None) -> frozenset[tuple[str, str | None]] | None:
    """The program-running settings in the config *entry*; None when git cannot read it."""
    found = _settings(root, entry)
    return None if found is None else frozenset(found)


def _settings(
    root: Path, entry: Entry | None, *, every: bool = False
) -> tuple[tuple[str, str | None], ...] | None:
    """The program-running settings in the config *entry*, in order; None if git cannot read it.

    A key with no value (``[filter "x"] required``, true) has the value None. A setting counts
    as git-lfs reads it too (:func:`lfs_runs`): ``user.note`` holding a second line
    ``lfs.extension.x.clean=prog`` is an extension to git-lfs. With *every*, all its settings.
    """
    if entry is None or entry.kind != "file":
        return ()
    out = execute_bytes(
        root, ["config", "--file", "-", "--list", "-z"], check=False, input_bytes=entry.data
    )
    if out.returncode != 0:
        return None
    found = []
    for item in out.stdout.split(b"\0"):
        name, newline, given = os.fsdecode(item).partition("\n")
        value = given if newline else None
        if name and (every or runs_program(name) or lfs_runs(name, value)):
            found.append((name, value))
    return tuple(found)


def _values(settings: tuple[tuple[str, str | None], ...], name: str) -> list[str | None]:
    """The values of *name* in *settings*, in order."""
    return [value for key, value in settings if key == name]
