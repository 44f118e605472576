"""Whether a linked worktree's tie, changed while no manager watched, is as git writes it.

`git worktree move` and `repair` write the worktree's ``.git`` file and its admin dir's
``gitdir`` so that each names the other, and leave ``commondir`` naming the repository; `git
worktree remove` takes them away with the admin dir. Any other tie (a ``commondir`` or a
``.git`` naming a copy of the repository an agent made, whose config your git there would
read) is judged by the resumed guard (surface_checks), and so is a ``.git`` deleted while
its admin dir still names it (git deletes one only as it moves or removes the worktree).
A worktree whose folder is gone whole (deleted by hand) goes with what ties it
(:func:`gone_whole`); one git removed or moved takes what is watched in it, its hooks directory
(:func:`as_git_left`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from worktree_swarm.guard import in_progress
from worktree_swarm.guard.recovery import moved_to
from worktree_swarm.guard.surface import TIES, ties
from worktree_swarm.guard.surface_entry import Entry, path_of
from worktree_swarm.infra import fs

_PREFIX = "gitdir:"


def followed(label: str) -> bool:
    """Whether *label* is a linked worktree's tie, or its operation in progress."""
    parts = label.split("/")
    tie = len(parts) == 3 and parts[0] == "worktrees" and parts[2] in TIES  # noqa: PLR2004
    return label.endswith("/.git") or tie or in_progress.linked_admin(label) is not None


def gone_whole(
    common: Path, last: Mapping[str, Entry], labels: Sequence[str]
) -> dict[Path, set[str]]:
    """Your linked worktrees in *last* (the baseline) whose folder is gone, with their *labels*.

    Deleted by hand, without `git worktree remove`: only its ``.git`` could be put back, into
    a new folder of that one file, and its admin dir is left for your next `git worktree
    prune` to drop. What goes with it, as with a worktree removed whole under a live guard:
    its ``.git`` and its admin dir's ties (no longer read), its operation in progress, the
    hooks directory inside it. Only while its admin dir still names it there; a folder that
    cannot be looked at is not gone.
    """
    admins = Path(os.path.realpath(common)) / "worktrees"
    gone = {}
    for label, entry in last.items():
        if not (label.endswith("/.git") and Path(label).is_absolute()):
            continue
        checkout = Path(label).parent
        named = _named(checkout, entry, prefix=True)
        if named is None or Path(named).parent != admins or not _folder_gone(checkout):
            continue
        admin = common / "worktrees" / Path(named).name
        if not _names(admin, "gitdir", os.path.realpath(checkout / ".git"), prefix=False):
            continue  # moved elsewhere, or its ties changed: judged as ever
        gone[checkout] = ties(common, checkout, admin, held=labels) & set(labels)
    return gone


def as_git_left(
    common: Path, last: Mapping[str, Entry]
) -> tuple[dict[str, Entry], dict[Path, Path | None]]:
    """*last* (the baseline) as `git worktree remove` and `move` left your linked worktrees.

    One whose ``.git`` is gone with the admin dir it named (removed) takes all that ties it,
    its admin dir's files and what is watched in it (its hooks directory); one whose admin dir
    names its new place, whose ``.git`` names it back (moved), has what was watched in it
    looked for there (a hook planted since is a change). What a live guard does with each
    (worktree_checks' ``_follow_linked``). Returns the baseline and each checkout so followed,
    with its new place (None: removed).
    """
    admins = Path(os.path.realpath(common)) / "worktrees"
    left = dict(last)
    followed: dict[Path, Path | None] = {}
    for label, entry in last.items():
        if not (label.endswith("/.git") and Path(label).is_absolute()):
            continue
        checkout = Path(label).parent
        named = _named(checkout, entry, prefix=True)
        if named is None or Path(named).parent != admins or os.path.lexists(checkout / ".git"):
            continue
        admin = common / "worktrees" / Path(named).name
        if not os.path.lexists(admin):
            for gone in ties(common, checkout, admin, held=last):
                left.pop(gone, None)
            followed[checkout] = None
        elif (moved := moved_to(admin, checkout)) is not None:
            inside = f"{checkout}/"
            for name in [x for x in left if x.startswith(inside)]:
                left[f"{moved}/{name[len(inside) :]}"] = left.pop(name)
            followed[checkout] = moved
    return left, followed


def _folder_gone(path: Path) -> bool:
    """Whether nothing is at *path* (not: something is there that cannot be looked at)."""
    try:
        path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False
    return False


def moved_by_git(common: Path, label: str, new: Entry | None, old: Entry | None = None) -> bool:
    """Whether the tie *label* of the git dir *common*, now *new* (*old* before), is git's.

    A linked worktree's operation in progress is git's only gone with its admin dir.
    """
    admin_label = in_progress.linked_admin(label)
    if admin_label is not None:
        return new is None and not os.path.lexists(common / admin_label)
    real_common = os.path.realpath(common)
    parts = label.split("/")
    if parts[0] != "worktrees" or len(parts) != 3:  # noqa: PLR2004 - a worktree's `.git`
        checkout = path_of(common, label)
        if new is None:
            return _taken_by_git(common, checkout, old)
        named = _named(checkout.parent, new, prefix=True)
        if named is None or Path(named).parent != Path(real_common) / "worktrees":
            return False
        return _names(Path(named), "gitdir", os.path.realpath(checkout), prefix=False)
    admin = common / "worktrees" / parts[1]
    if new is None:  # the admin dir removed whole: a worktree removed or pruned
        return not os.path.lexists(admin)
    if parts[2] == "commondir":
        return _named(admin, new, prefix=False) == real_common
    dotgit = _named(admin, new, prefix=False)
    if dotgit is None or os.path.basename(dotgit) != ".git":  # noqa: PTH119
        return False
    return _names(Path(dotgit).parent, ".git", os.path.realpath(admin), prefix=True)


def _taken_by_git(common: Path, dotgit: Path, old: Entry | None) -> bool:
    """Whether git took away the linked worktree's ``.git`` file *dotgit* (*old* before).

    With its admin dir (`git worktree remove`, or a prune), or moving it (the admin dir names
    a ``.git`` elsewhere that names it back). Its admin dir: the one *old* named, else the one
    whose ``gitdir`` names *dotgit*; with neither, nothing of git's names it.
    """
    admins = Path(os.path.realpath(common)) / "worktrees"
    named = _named(dotgit.parent, old, prefix=True) if old is not None else None
    if named is None or Path(named).parent != admins:
        real = os.path.realpath(dotgit)
        with contextlib.suppress(OSError):
            named = next(
                (str(a) for a in admins.iterdir() if _names(a, "gitdir", real, prefix=False)),
                None,
            )
        if named is None or Path(named).parent != admins:
            return True
    if not os.path.lexists(named):
        return True
    return _ties_back(Path(named))


def _ties_back(admin: Path) -> bool:
    """Whether the admin dir *admin*'s ``gitdir`` names a ``.git`` file that names it back."""
    try:
        entry = Entry(kind="file", data=fs.read_file(admin / "gitdir"))
    except OSError:
        return False
    dotgit = _named(admin, entry, prefix=False)
    if dotgit is None or os.path.basename(dotgit) != ".git":  # noqa: PTH119
        return False
    return _names(Path(dotgit).parent, ".git", os.path.realpath(admin), prefix=True)


def _names(where: Path, name: str, target: str, *, prefix: bool) -> bool:
    """Whether the file *where*/*name* names *target* (a real path)."""
    path = where / name
    try:
        entry = Entry(kind="file", data=fs.read_file(path)) if path.is_file() else None
    except OSError:
        return False
    return entry is not None and _named(where, entry, prefix=prefix) == target


def _named(where: Path, entry: Entry, *, prefix: bool) -> str | None:
    """The real path the tie *entry* in the directory *where* names; None if none."""
    if entry.kind != "file":
        return None
    try:
        text = entry.data.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    if prefix:
        if not text.startswith(_PREFIX):
            return None
        text = text[len(_PREFIX) :].strip()
    if not text or "\n" in text:
        return None
    return os.path.realpath(where / text)
