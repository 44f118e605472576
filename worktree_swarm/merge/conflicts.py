"""Predict merge conflicts without touching any checkout: the pairwise matrix of branches.

Every prediction is ``git merge-tree --write-tree`` (git's own merge machinery, so it says what a
real merge would). Most pairs of agent branches touch unrelated files, though, and a pair that
cannot conflict is decided from the paths each branch changed, without a git process: running
merge-tree for all n*(n-1)/2 pairs would cost more than merging everything for real.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TypeVar

from worktree_swarm.core.errors import CommandError
from worktree_swarm.git import repo as git
from worktree_swarm.git import runner

_T = TypeVar("_T")
_R = TypeVar("_R")


@dataclass(frozen=True, slots=True, kw_only=True)
class Changes:
    """What a branch changed since its base: paths, whether any was deleted, lines touched."""

    paths: frozenset[str]
    dirs: frozenset[str]
    deletes: bool
    lines: int

    @classmethod
    def of(cls, entries: Iterable[tuple[str, str, int]]) -> Changes:
        """Build from ``(status letter, path, lines)`` entries."""
        paths: set[str] = set()
        dirs: set[str] = set()
        deletes = False
        lines = 0
        for status, path, count in entries:
            paths.add(path)
            dirs.update(str(p) for p in PurePosixPath(path).parents if str(p) != ".")
            deletes = deletes or status == "D"
            lines += count
        return cls(paths=frozenset(paths), dirs=frozenset(dirs), deletes=deletes, lines=lines)


@dataclass(frozen=True, slots=True, kw_only=True)
class Branch:
    """A branch to predict: a name for the report, its tip commit and the commit it started at."""

    name: str
    tip: str
    base: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Prediction:
    """The conflict matrix: conflicting pairs and branches that conflict with the target.

    ``pairs`` maps ``(a, b)`` (in the order the branches were given) to the conflicted files;
    ``target`` maps a branch name to the files it conflicts on with the target. Pairs absent
    from both merge cleanly. ``merge_trees`` counts the git processes the prediction needed.
    """

    names: tuple[str, ...]
    target_commit: str
    pairs: dict[tuple[str, str], tuple[str, ...]]
    target: dict[str, tuple[str, ...]]
    changes: dict[str, Changes]
    merge_trees: int

    def conflicts_of(self, name: str) -> set[str]:
        """The other branches *name* conflicts with."""
        return {b if a == name else a for a, b in self.pairs if name in (a, b)}

    @property
    def clean(self) -> bool:
        """Whether no pair and no branch conflicts."""
        return not self.pairs and not self.target


def changes(repo: git.Repo, base: str, tip: str) -> Changes:
    """What *tip* changed since *base* (renames count as a delete plus an add)."""
    out = git.git(
        repo.root, "diff", "--raw", "--numstat", "-z", "--no-renames", "--no-ext-diff",
        "--end-of-options", base, tip, "--",
    )  # fmt: skip
    status: dict[str, str] = {}
    lines: dict[str, int] = {}
    fields = iter(out.split("\0"))
    for field in fields:
        if field.startswith(":"):
            # --raw: ":<modes> <shas> <letter>" then the path in its own field.
            status[next(fields)] = field.rsplit(" ", 1)[-1][:1]
        elif field:
            added, deleted, path = field.split("\t", 2)
            lines[path] = _count(added) + _count(deleted)
    return Changes.of((letter, path, lines.get(path, 0)) for path, letter in status.items())


def _count(text: str) -> int:
    return int(text) if text.isdigit() else 1  # "-" for binary files


def merge_tree(repo: git.Repo, ours: str, theirs: str) -> tuple[str, ...] | None:
    """The files merging *theirs* into *ours* would conflict on, or None when it is clean."""
    args = ["merge-tree", "--write-tree", "--name-only", "-z", "--no-messages", ours, theirs]
    res = runner.run(repo.root, *args, check=False)
    if res.returncode not in (0, 1):
        raise CommandError(["git", *args], res.returncode, res.stderr)
    if res.returncode == 0:
        return None
    _tree, *files = (f for f in res.stdout.split("\0") if f)
    names = (conflict_path(f, labels=(ours, theirs)) for f in files)
    return tuple(dict.fromkeys(names)) or ("(unknown files)",)


def conflict_path(name: str, *, labels: Sequence[str]) -> str:
    """The path a conflict is about, without the label of a file/directory clash.

    Git parks one side of such a clash at ``<path>~<label>``: a commit id in merge-tree,
    ``HEAD`` or the branch name in a real merge.
    """
    for label in labels:
        if name.endswith(f"~{label}"):
            return name.removesuffix(f"~{label}")
    return name


def may_conflict(a: Changes, b: Changes) -> bool:
    """Whether two change sets from the same base could conflict; False is a proof.

    With no deletion on either side there is no rename (so no directory-rename detection), and
    then only a path both touched, or a file on one side where the other has a directory, can
    conflict.
    """
    if a.deletes or b.deletes:
        return bool(a.paths) and bool(b.paths)
    return not a.paths.isdisjoint(b.paths) or not (
        a.paths.isdisjoint(b.dirs) and b.paths.isdisjoint(a.dirs)
    )


def predict(
    repo: git.Repo, branches: Sequence[Branch], *, target: str, jobs: int | None = None
) -> Prediction:
    """Predict every pair of *branches* and each branch against the *target* commit.

    Touches no checkout and no ref (merge-tree only writes unreferenced objects).
    """
    jobs = jobs or min(4, os.cpu_count() or 1)
    names = tuple(b.name for b in branches)
    by_name = {b.name: b for b in branches}
    bases = sorted({b.base for b in branches})
    below = [
        base
        for base, ok in zip(
            bases,
            _parallel(jobs, lambda base: _is_ancestor(repo, base, target), bases),
            strict=True,
        )
        if ok
    ]
    # What the target changed since each base it descends from (empty when it did not move).
    moved = _parallel(jobs, lambda base: changes(repo, base, target), below)
    target_changes = dict(zip(below, moved, strict=True))
    found = dict(
        zip(names, _parallel(jobs, lambda b: changes(repo, b.base, b.tip), branches), strict=True)
    )

    # (branch, other branch), or (branch, "") for the target.
    to_check = [
        (b.name, "")
        for b in branches
        if b.base not in target_changes or may_conflict(found[b.name], target_changes[b.base])
    ]
    for a, b in itertools.combinations(names, 2):
        if by_name[a].base != by_name[b].base or may_conflict(found[a], found[b]):
            to_check.append((a, b))

    def run_one(item: tuple[str, str]) -> tuple[str, ...] | None:
        a, other = item
        ours = by_name[a].tip if other else target
        return merge_tree(repo, ours, by_name[other or a].tip)

    results = _parallel(jobs, run_one, to_check)
    pairs: dict[tuple[str, str], tuple[str, ...]] = {}
    against: dict[str, tuple[str, ...]] = {}
    for (a, other), files in zip(to_check, results, strict=True):
        if files is not None and other:
            pairs[a, other] = files
        elif files is not None:
            against[a] = files
    return Prediction(
        names=names,
        target_commit=target,
        pairs=pairs,
        target=against,
        changes=found,
        merge_trees=len(to_check),
    )


def _is_ancestor(repo: git.Repo, ancestor: str, rev: str) -> bool:
    if ancestor == rev:
        return True
    args = ["merge-base", "--is-ancestor", ancestor, rev]
    res = runner.run(repo.root, *args, check=False)
    if res.returncode not in (0, 1):
        raise CommandError(["git", *args], res.returncode, res.stderr)
    return res.returncode == 0


def _parallel(jobs: int, fn: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]:
    if jobs <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(fn, items))
