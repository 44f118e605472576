"""Sparse worktrees: a task that declares its ``files`` can get only their directories.

git's cone mode: the files at the top of the repository, the files directly inside each
directory on the way down, and everything beneath the directories the globs name. The
patterns go to the worktree's own ``info/sparse-checkout`` (in its admin dir), never to the
repository's config: swarm's git commands switch sparse checkout on with ``-c`` wherever that
file exists (:mod:`worktree_swarm.git.config_overrides`), the agent's git through its task config.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from worktree_swarm.core.scheduler import pattern_segments
from worktree_swarm.core.task import Task

# Only names git reads the same way as a cone pattern and as a path; anything else (a
# backslash, `!` or `#` at the start, spaces) gets the whole tree.
_PLAIN = re.compile(r"[A-Za-z0-9_.+@=,~%-]+")
_WILDCARDS = frozenset("*?[")

# What switches sparse checkout on for one git command, or in a task's git config.
SETTINGS: tuple[tuple[str, str], ...] = (
    ("core.sparseCheckout", "true"),
    ("core.sparseCheckoutCone", "true"),
)


@dataclass(frozen=True, slots=True)
class Cone:
    """Directories checked out whole (*recursive*) and for their own files (*shallow*)."""

    recursive: frozenset[str]
    shallow: frozenset[str]


def cone(globs: Sequence[str]) -> Cone | None:
    """The cone that holds every path *globs* can match; None when it is the whole tree."""
    recursive: set[str] = set()
    shallow: set[str] = set()
    for glob in globs:
        parts = pattern_segments(glob)
        wild = next((i for i, p in enumerate(parts) if not _WILDCARDS.isdisjoint(p)), None)
        if wild is None:  # a literal file: its directory's own files
            shallow.add("/".join(parts[:-1]))
        elif parts[wild] == "**" or wild < len(parts) - 1:
            if wild == 0:
                return None
            recursive.add("/".join(parts[:wild]))
        else:  # a wildcard in the file name only
            shallow.add("/".join(parts[:wild]))
    shallow.discard("")  # the top level's files are always there
    names = recursive | shallow
    if any(not _PLAIN.fullmatch(p) for name in names for p in name.split("/")):
        return None
    recursive = {d for d in recursive if not any(_within(d, o) for o in recursive if o != d)}
    shallow = {d for d in shallow if not any(_within(d, r) or d == r for r in recursive)}
    return Cone(recursive=frozenset(recursive), shallow=frozenset(shallow))


def _within(path: str, directory: str) -> bool:
    return path.startswith(directory + "/")


def patterns(c: Cone) -> str:
    """The ``info/sparse-checkout`` text of *c*, as ``git sparse-checkout set --cone`` writes it."""
    parents = set(c.shallow)
    for name in c.recursive | c.shallow:
        parts = name.split("/")
        parents.update("/".join(parts[:i]) for i in range(1, len(parts)))
    parents -= c.recursive
    lines = ["/*", "!/*/"]
    for name in sorted(parents):
        lines += [f"/{name}/", f"!/{name}/*/"]
    lines += [f"/{name}/" for name in sorted(c.recursive)]
    return "\n".join(lines) + "\n"


def pattern_file(admin: Path) -> Path:
    """Where a worktree whose admin dir is *admin* keeps its sparse patterns."""
    return admin / "info" / "sparse-checkout"


def read(admin: Path) -> Cone | None:
    """The cone :func:`write` gave the worktree of *admin*.

    None when it has no patterns, or patterns other than :func:`patterns` writes (by hand).
    """
    try:
        text = pattern_file(admin).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    lines = text.splitlines()
    named = {line[1:-1] for line in lines[2:] if line.startswith("/") and line.endswith("/")}
    parents = {line[2:-3] for line in lines[2:] if line.startswith("!/") and line.endswith("/*/")}
    c = Cone(recursive=frozenset(named - parents), shallow=frozenset(parents))
    return c if patterns(c) == text else None


def write(admin: Path, c: Cone) -> None:
    """Make the worktree of *admin* sparse to *c* (its next checkout applies it)."""
    target = pattern_file(admin)
    target.parent.mkdir(exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(patterns(c), encoding="utf-8")
    tmp.replace(target)


def of_task(task: Task) -> Cone | None:
    """The cone of *task*'s worktree; None for a full checkout (not ``sparse``, no ``files``)."""
    return cone(task.files) if task.sparse and task.files else None


def holds(c: Cone | None, path: str) -> bool:
    """Whether a checkout sparse to *c* (None: a full one) has the file *path*."""
    if c is None:
        return True
    parent = path.rpartition("/")[0]
    if not parent or parent in c.shallow:
        return True
    if any(parent == d or _within(parent, d) for d in c.recursive):
        return True
    return any(_within(d, parent) for d in c.recursive | c.shallow)
