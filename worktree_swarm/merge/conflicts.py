"""Predict merge conflicts without touching any checkout: the pairwise matrix of branches.

Every prediction is ``git merge-tree --write-tree`` (git's own merge machinery, so it says what a
real merge would). Most pairs of agent branches touch unrelated files, though, and a pair that
cannot conflict is decided from the paths each branch changed, without a git process: running
merge-tree for all n*(n-1)/2 pairs would cost more than merging everything for real.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from worktree_swarm.core.errors import CommandError
from worktree_swarm.git import merge_tree as git_merge_tree
from worktree_swarm.git import repo as git
from worktree_swarm.git import runner
from worktree_swarm.infra import parallel


@dataclass(frozen=True, slots=True, kw_only=True)
class Changes:
    """What a branch changed since its base: paths, whether any was deleted, lines touched."""

    paths: frozenset[str]
    dirs: frozenset[str]
    deletes: bool
    lines: int
    # Paths whose content changed as text with the mode kept: their hunks can decide a pair.
    edited: frozenset[str] = frozenset()

    @classmethod
    def of(cls, entries: Iterable[tuple[str, str, int]], *, edited: Iterable[str] = ()) -> Changes:
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
        return cls(
            paths=frozenset(paths),
            dirs=frozenset(dirs),
            deletes=deletes,
            lines=lines,
            edited=frozenset(edited) & frozenset(paths),
        )


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
    out = runner.run_names(  # file names: they go back to git (check-attr), and are shown
        repo.root, "diff", "--raw", "--numstat", "-z", "--no-renames", "--no-ext-diff",
        "--end-of-options", base, tip, "--",
    ).stdout  # fmt: skip
    return _parse_changes(out.split("\0"))


def many_changes(repo: git.Repo, pairs: Sequence[tuple[str, str]]) -> list[Changes]:
    """:func:`changes` of each ``(base, tip)`` pair, in one git process for distinct tips.

    ``git diff-tree --stdin`` diffs each tip against the base given as its parent and names
    the tip before its diff (nothing for an empty one). A tip asked again with another base,
    or a listing that fails or cannot be read back, is asked alone.
    """
    firsts: dict[str, str] = {}
    for base, tip in pairs:
        firsts.setdefault(tip, base)
    together = _changes_together(repo, firsts) if len(firsts) > 1 else {}
    return [
        together[tip] if tip in together and firsts[tip] == base else changes(repo, base, tip)
        for base, tip in pairs
    ]


def _changes_together(repo: git.Repo, bases: dict[str, str]) -> dict[str, Changes]:
    """{tip: its changes since bases[tip]}, or {} when git's answer cannot be used."""
    lines = "".join(f"{tip} {base}\n" for tip, base in bases.items())
    try:
        out = runner.run_names(
            repo.root, "diff-tree", "--stdin", "-r", "--raw", "--numstat", "-z", "--no-renames",
            input_text=lines,
        ).stdout  # fmt: skip
    except CommandError:
        return {}
    fields: dict[str, list[str]] = {tip: [] for tip in bases}
    current: list[str] | None = None
    parts = iter(out.split("\0"))
    for field in parts:
        if field.startswith(":") and current is not None:  # --raw: its path follows
            current += [field, next(parts, "")]
        elif "\t" in field and current is not None:  # --numstat
            current.append(field)
        elif field in fields and not fields[field]:  # the next tip's diff begins
            current = fields[field]
        elif field:
            return {}  # not what was asked for: every pair alone
    return {tip: _parse_changes(found) for tip, found in fields.items()}


def _parse_changes(fields: Iterable[str]) -> Changes:
    """Changes from ``--raw --numstat -z`` output split at NUL."""
    status: dict[str, str] = {}
    lines: dict[str, int] = {}
    same_mode: set[str] = set()
    binary: set[str] = set()
    parts = iter(fields)
    for field in parts:
        if field.startswith(":"):
            # --raw: ":<modes> <shas> <letter>" then the path in its own field.
            path = next(parts)
            status[path] = field.rsplit(" ", 1)[-1][:1]
            old_mode, new_mode = field[1:].split(" ", 2)[:2]
            if old_mode == new_mode:
                same_mode.add(path)
        elif field:
            added, deleted, path = field.split("\t", 2)
            lines[path] = _count(added) + _count(deleted)
            if added == "-":
                binary.add(path)
    edited = {p for p, letter in status.items() if letter == "M" and p in same_mode} - binary
    return Changes.of(
        ((letter, path, lines.get(path, 0)) for path, letter in status.items()), edited=edited
    )


# A hunk as a closed interval of the base file in doubled line numbers: line i is 2i, and an
# insertion after line i is the point 2i+1 between two lines.
Hunk = tuple[int, int]
_HUNK_RE = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+\d+(?:,\d+)? @@")


def hunks(repo: git.Repo, base: str, tip: str, paths: Iterable[str]) -> dict[str, list[Hunk]]:
    """The base-side hunks (no context) of *paths* between *base* and *tip*, per path.

    A path whose name git had to quote, or that is binary to it (past the runner's big-file
    threshold too), is left out: the caller then asks merge-tree.
    """
    found: dict[str, list[Hunk]] = {}
    for batch in git.in_batches(f":(literal){p}" for p in sorted(paths)):
        # Lined up as git's merge (ort) lines them up: histogram, hunks not slid by the indent
        # heuristic, whatever the user's `diff.algorithm` and `diff.indentHeuristic` say.
        out = git.git(
            repo.root, "diff", "-U0", "--diff-algorithm=histogram", "--no-indent-heuristic",
            "--no-color", "--no-renames", "--no-ext-diff", "--no-textconv",
            "--src-prefix=a/", "--dst-prefix=b/", "--end-of-options", base, tip, "--", *batch,
        )  # fmt: skip
        _read_hunks(out, found)
    return found


def _read_hunks(out: str, found: dict[str, list[Hunk]]) -> None:
    """Add the base-side hunks of the ``diff -U0`` *out* to *found*, per path."""
    current: list[Hunk] | None = None
    for line in out.splitlines():
        if line.startswith("diff --git "):
            current = None
        elif line.startswith("--- "):
            name = line[4:]
            current = found.setdefault(name[2:], []) if name.startswith("a/") else None
        elif current is not None and (match := _HUNK_RE.match(line)):
            start, count = int(match[1]), int(match[2] or "1")
            if count == 0:
                current.append((2 * start + 1, 2 * start + 1))
            else:
                current.append((2 * start, 2 * (start + count - 1)))


def hunks_apart(ours: Sequence[Hunk], theirs: Sequence[Hunk]) -> bool:
    """Whether an unchanged line separates every hunk of *ours* from every hunk of *theirs*.

    Then git's three-way merge of the file is clean: it conflicts only on changes that overlap
    or touch. False is not a proof of a conflict.
    """
    for a_lo, a_hi in ours:
        for b_lo, b_hi in theirs:
            lo, hi = (a_hi, b_lo) if a_hi < b_lo else (b_hi, a_lo)
            if lo >= hi:
                return False  # overlapping
            # The first whole line (even number) after `lo` must come before `hi`.
            if (lo + 1 if lo % 2 else lo + 2) >= hi:
                return False
    return True


def _count(text: str) -> int:
    return int(text) if text.isdigit() else 1  # "-" for binary files


def merge_tree(repo: git.Repo, ours: str, theirs: str) -> tuple[str, ...] | None:
    """The files merging *theirs* into *ours* would conflict on, or None when it is clean."""
    args = ["merge-tree", "--write-tree", "--name-only", "-z", ours, theirs]
    res = runner.run_bytes(repo.root, *args, check=False)
    if res.returncode not in (0, 1):
        raise CommandError(["git", *args], res.returncode, res.stderr.decode(errors="replace"))
    if res.returncode == 0:
        return None
    # A name that is not UTF-8 keeps its bytes (as surrogates): shown quoted, never garbled.
    _tree, files = git_merge_tree.merge_tree_result(os.fsdecode(res.stdout))
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
    under = parallel.in_order(lambda base: _is_ancestor(repo, base, target), bases, workers=jobs)
    below = [base for base, ok in zip(bases, under, strict=True) if ok]
    # What the target changed since each base it descends from (empty when it did not move).
    moved = parallel.in_order(lambda base: changes(repo, base, target), below, workers=jobs)
    target_changes = dict(zip(below, moved, strict=True))
    found = dict(zip(names, many_changes(repo, [(b.base, b.tip) for b in branches]), strict=True))

    # (branch, other branch), or (branch, "") for the target.
    to_check = [
        (b.name, "")
        for b in branches
        if b.base not in target_changes or may_conflict(found[b.name], target_changes[b.base])
    ]
    for a, b in itertools.combinations(names, 2):
        if by_name[a].base != by_name[b].base or may_conflict(found[a], found[b]):
            to_check.append((a, b))

    to_check = _decided_by_hunks(repo, to_check, by_name, found, target, target_changes, jobs)

    def run_one(item: tuple[str, str]) -> tuple[str, ...] | None:
        a, other = item
        ours = by_name[a].tip if other else target
        return merge_tree(repo, ours, by_name[other or a].tip)

    results = parallel.in_order(run_one, to_check, workers=jobs)
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


# One side of a pair for the hunk check: (base, tip, name); the target's name is "".
_Side = tuple[str, str, str]
_Candidate = tuple[tuple[str, str], _Side, _Side, frozenset[str]]


def _decided_by_hunks(
    repo: git.Repo,
    to_check: list[tuple[str, str]],
    by_name: dict[str, Branch],
    found: dict[str, Changes],
    target: str,
    target_changes: dict[str, Changes],
    jobs: int,
) -> list[tuple[str, str]]:
    """Drop the pairs whose shared files were edited in hunks an unchanged line apart.

    Many branches editing one common file (a changelog, an ``__init__.py``) would otherwise
    cost a merge-tree per pair; one hunk listing per branch decides most of them.
    """
    candidates: list[_Candidate] = []
    for item in to_check:
        a, other = item
        base = by_name[a].base
        left: _Side = (base, by_name[a].tip, a)
        if other and by_name[other].base == base:
            right: _Side = (base, by_name[other].tip, other)
            theirs = found[other]
        elif not other and base in target_changes:
            right, theirs = (base, target, ""), target_changes[base]
        else:
            continue
        shared = _editable_overlap(found[a], theirs)
        if shared:
            candidates.append((item, left, right, shared))
    if not candidates:
        return to_check
    plain = _without_merge_attributes(repo, set().union(*(c[3] for c in candidates)))
    wanted: dict[_Side, set[str]] = {}
    for _item, left, right, shared in candidates:
        wanted.setdefault(left, set()).update(shared & plain)
        wanted.setdefault(right, set()).update(shared & plain)
    keys = list(wanted)
    listed = parallel.in_order(lambda k: hunks(repo, k[0], k[1], wanted[k]), keys, workers=jobs)
    by_side = dict(zip(keys, listed, strict=True))
    decided = {
        item
        for item, left, right, shared in candidates
        if shared <= plain
        and all(
            p in by_side[left]
            and p in by_side[right]
            and hunks_apart(by_side[left][p], by_side[right][p])
            for p in shared
        )
    }
    return [item for item in to_check if item not in decided]


def _editable_overlap(ours: Changes, theirs: Changes) -> frozenset[str]:
    """The paths both edited in place, when that is all they share (else empty)."""
    clash = not (ours.paths.isdisjoint(theirs.dirs) and theirs.paths.isdisjoint(ours.dirs))
    shared = ours.paths & theirs.paths
    if ours.deletes or theirs.deletes or clash or not shared <= (ours.edited & theirs.edited):
        return frozenset()
    return shared


def _without_merge_attributes(repo: git.Repo, paths: set[str]) -> set[str]:
    """The *paths* with no ``merge`` attribute: git's own text merge applies to them."""
    special: set[str] = set()
    for batch in git.in_batches(sorted(paths)):
        args = ("check-attr", "-z", "merge", "--", *batch)
        fields = runner.run_names(repo.root, *args).stdout.split("\0")
        special |= {
            fields[i] for i in range(0, len(fields) - 2, 3) if fields[i + 2] != "unspecified"
        }
    return paths - special


def _is_ancestor(repo: git.Repo, ancestor: str, rev: str) -> bool:
    if ancestor == rev:
        return True
    args = ["merge-base", "--is-ancestor", ancestor, rev]
    res = runner.run(repo.root, *args, check=False)
    if res.returncode not in (0, 1):
        raise CommandError(["git", *args], res.returncode, res.stderr)
    return res.returncode == 0
