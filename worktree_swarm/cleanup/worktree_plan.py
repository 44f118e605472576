"""Worktrees in `swarm clean`'s and `swarm doctor`'s plans: kept or removed, and why.

Planning decides what is kept (a locked worktree, one in use, one holding a commit on no ref
or a submodule's work, one whose directory cannot be read) and whether a worktree holds work
its removal must checkpoint first.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

from worktree_swarm.cleanup.branches import on_no_ref
from worktree_swarm.cleanup.findings import Action, Finding, Kind
from worktree_swarm.cleanup.processes import describe, processes_using
from worktree_swarm.core.errors import CommandError, GitError
from worktree_swarm.core.paths import real_path
from worktree_swarm.core.task import SCRATCH_PREFIX
from worktree_swarm.git import gitfiles, local_files, removing, runner, worktrees
from worktree_swarm.git import index as git_index
from worktree_swarm.git import repo as git
from worktree_swarm.git import status as git_status
from worktree_swarm.git.worktrees import WorktreeInfo
from worktree_swarm.infra import fs
from worktree_swarm.infra.store_rows import TaskRow, task_from_json


def locked_missing(
    repo: git.Repo, info: WorktreeInfo, *, force: bool, why: str = "", task: TaskRow | None = None
) -> Finding:
    """A worktree whose directory is missing but locked (its drive may be unmounted).

    Kept, as git keeps it; with *force*, unlocked and pruned. *why* starts the reason.
    """
    path = Path(info.path)
    locked = info.locked or "no reason given"
    return Finding(
        kind=Kind.WORKTREE,
        target=str(path),
        reason=f"{why}its directory is missing, and it is locked ({locked})",
        action=Action.PRUNE if force else Action.KEEP,
        fix="unlock it, prune it"
        if force
        else f"kept: its drive may be unmounted; `git worktree unlock {path}` or use --force",
        branch=info.branch,
        run_id=task.run_id if task is not None else None,
        task_id=task.task_id if task is not None else None,
        admin_dir=worktrees.admin_of(repo, path),
    )


def sealed_worktree(path: Path, *, why: str = "", task: TaskRow | None = None) -> Finding:
    """A worktree whose directory cannot be read (a ``chmod 0``): kept, whatever git says.

    git takes it for gone (prunable); its files are there, and may be work. *why* starts the
    reason.
    """
    return Finding(
        kind=Kind.WORKTREE,
        target=str(path),
        reason=f"{why}its directory cannot be read",
        action=Action.KEEP,
        fix=f"kept: `chmod u+rwx {path}` gives it back to you; then clean again",
        run_id=task.run_id if task is not None else None,
        task_id=task.task_id if task is not None else None,
    )


# Why a worktree whose submodule's commit exists nowhere else is kept.
_ONLY_HERE = (
    "has a commit in no repository but this worktree's (the branch records only its id); "
    "push it to the submodule's remote first"
)


def worktree_finding(
    repo: git.Repo,
    info: WorktreeInfo,
    *,
    kind: Kind,
    reason: str,
    force: bool,
    run_id: str | None = None,
    task_id: str | None = None,
    look: bool = True,
    cwds: Mapping[int, str] | None = None,
    known: bool | None = None,
    task: TaskRow | None = None,
) -> tuple[Finding, bool | None]:
    """Plan removing the registered worktree *info*; returns (finding, dirty).

    Uncommitted work is checkpointed on its branch first. A locked worktree, one still used by
    processes, or one whose HEAD commit is on no other ref is kept (and named) unless *force*.
    Without *look* its status is not taken (dirty is None): for a plan carried out at once,
    whose removal asks git again right before it deletes anything. *cwds*: as for
    :func:`processes_using`. *known*: what :func:`worktree_dirty` said of it (as the worktree
    of *task*), taken beforehand.
    """
    path = info.path
    if removing.interrupted(repo, path) is not None:
        finishing = finish_finding(info, kind=kind, reason=reason, force=force, cwds=cwds)
        return dataclasses.replace(finishing, run_id=run_id, task_id=task_id), False
    unseen = ""
    try:
        dirty = known if known is not None or not look else worktree_dirty(repo, path, task)
    except (GitError, CommandError) as exc:  # a corrupt index, a pipe planted where git reads
        dirty, unseen = None, str(exc)
    keep = _why_kept(repo, info, unseen, force=force, cwds=cwds)
    if unseen:
        action, fix = Action.KEEP, f"kept: {keep}"
    elif keep:
        action, fix = Action.KEEP, f"kept: {keep}, or use --force"
    elif dirty:
        on = f" on {info.branch}" if info.branch else ""
        action, fix = Action.REMOVE_WORKTREE, f"commit its uncommitted changes{on}, then remove it"
    else:
        action, fix = Action.REMOVE_WORKTREE, "remove it"
    finding = Finding(
        kind=kind, target=str(path), reason=reason, action=action, fix=fix,
        branch=info.branch, run_id=run_id, task_id=task_id,
    )  # fmt: skip
    return finding, dirty


def _why_kept(
    repo: git.Repo,
    info: WorktreeInfo,
    unseen: str,
    *,
    force: bool,
    cwds: Mapping[int, str] | None,
) -> str:
    """Why the worktree *info* is kept ("" when it is removed); *unseen*: why git cannot look."""
    path = info.path
    users = processes_using(path, cwds)
    if unseen:  # its work cannot be committed first, --force or not
        return f"git cannot look into it ({unseen})"
    if info.locked is not None and not force:
        return f"it is locked ({info.locked or 'no reason given'}); `git worktree unlock {path}`"
    if users and not force:
        return f"{describe(users[0])} is using it; stop it first"
    if not force and info.head and kept_commit(repo, info):
        return f"its commit {info.head[:12]} is on no branch; `git branch NAME {info.head[:12]}`"
    return "" if force else submodule_keep(repo, path)


def finish_finding(
    info: WorktreeInfo,
    *,
    kind: Kind,
    reason: str,
    force: bool,
    cwds: Mapping[int, str] | None = None,
) -> Finding:
    """Plan finishing the removal of *info* a killed swarm began (:func:`removing.interrupted`).

    Its missing files are swarm's deletions, none of it is work: nothing is committed, locked
    or not. Kept only while a process uses it (that swarm's git, working on), unless *force*.
    """
    path = Path(info.path)
    users = processes_using(path, cwds) if path.is_dir() else []
    if users and not force:
        action, fix = Action.KEEP, f"kept: {describe(users[0])} is using it; stop it first"
    else:
        action, fix = Action.REMOVE_WORKTREE, "finish removing it (nothing in it is committed)"
    return Finding(
        kind=kind, target=str(path), reason=f"{reason}; a killed swarm was removing it",
        action=action, fix=fix, branch=info.branch,
    )  # fmt: skip


def worktree_dirty(repo: git.Repo, path: Path, task: TaskRow | None = None) -> bool:
    """Whether the worktree *path* holds work that removing it would need to commit first.

    As its removal sees it: a checkout without an index is looked at as the removal repairs
    it (:func:`gitfiles.repair_due`, an agent of *task* having run or not), and the *task*'s
    ``link`` and ``copy`` files still as copied are none (:func:`as_copied`).
    """
    copied = functools.partial(as_copied, repo, task, path)
    ran = task is not None and task.agent_started
    due = gitfiles.repair_due(path, agent_ran=ran)
    if due is gitfiles.Repair.WHOLE:
        # Never populated, or a removal cut short (the index goes first): checked out from
        # HEAD again, so only a file HEAD lacks is work, not every file read as deleted.
        beyond = {os.fsdecode(name) for name in _beyond_head(path)}
        return bool(beyond) and not beyond <= set(copied())
    if due is gitfiles.Repair.INDEX:  # its agent deleted it: its edits and deletions are work
        return holds_work(git_status.status_from_head(path), copied)
    # A directory git cannot read may hide work, and so may an index flag.
    return holds_work(git_status.full_status(path), copied) or git_index.hides_edits(path)


def holds_work(status: str | None, copied: Callable[[], Collection[str]] = frozenset) -> bool:
    """Whether git's *status* of a worktree (None: git could not see all of it) lists work.

    Untracked paths *copied* names (:func:`as_copied`, asked only when nothing else is
    listed) are none.
    """
    if status is None:
        return True
    # Each untracked file by its name (`--untracked-files=all`): "?? name".
    entries = [entry for entry in status.split("\0") if entry]
    if not all(entry.startswith("?? ") for entry in entries):
        return True
    return bool(entries) and not {entry[3:] for entry in entries} <= set(copied())


def as_copied(repo: git.Repo, task: TaskRow | None, path: Path) -> frozenset[str]:
    """*task*'s ``link`` symlinks, and its ``copy`` files in *path* still as copied (unchanged).

    Removing the worktree loses nothing of those: a file an agent made under a ``copy``
    pattern, or a copy it changed, is work (no checkpoint commits it) and keeps the worktree.
    """
    if task is None:
        return frozenset()
    spec = task_from_json(task.spec_json)
    copied = local_files.copied_paths(path, spec.copy, base=task.base_commit or "HEAD")
    same = (
        rel for rel in copied if fs.same_file(_copied_from(repo.root / rel, path / rel), path / rel)
    )
    return frozenset([*spec.link, *same])


def _copied_from(src: Path, copy: Path) -> Path:
    """What *copy* was made from: *src*, or the file the symlink *src* names (copied as that)."""
    return real_path(src) if src.is_symlink() and not copy.is_symlink() else src


def _beyond_head(path: Path) -> set[bytes]:
    """The files (not ignored) of the unpopulated checkout *path* that its HEAD lacks."""
    there = runner.run_bytes(path, "ls-files", "-z", "--others", "--exclude-standard").stdout
    head = runner.run_bytes(path, "ls-tree", "-r", "-z", "--name-only", "HEAD").stdout
    return set(there.split(b"\0")) - set(head.split(b"\0")) - {b""}


def kept_commit(repo: git.Repo, info: WorktreeInfo) -> bool:
    """Whether the detached worktree *info* holds a commit on no ref, to be kept for you.

    Not in the temporary worktree of a killed `swarm merge --into`: its merges were for a
    branch that never moved, and the next merge makes them again.
    """
    if info.branch is not None or not info.head or scratch(info):
        return False
    return on_no_ref(repo, info.head)


def scratch(info: WorktreeInfo) -> bool:
    """Whether *info* is the temporary worktree of a killed `swarm merge --into`."""
    return info.branch is None and info.path.name.startswith(SCRATCH_PREFIX)


def submodule_keep(repo: git.Repo, path: Path) -> str:
    """Why the worktree *path* is kept for its submodules' sake ("" when it is not)."""
    left = git_status.submodule_work(path)
    if left:
        return f"submodule {', '.join(left)} holds work no commit records; save it first"
    only = git_status.submodule_commits_only_here(repo, path)
    if only:
        return f"submodule {', '.join(only)} {_ONLY_HERE}"
    return ""
