"""Worktrees and stray directories for `swarm clean` and `swarm doctor`: removed.

Removing a worktree checkpoints uncommitted work on its branch first. Also pruning a vanished
worktree, removing a half-made one (``initializing``), and saving a stray directory's files
under a rescue ref before deleting it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Callable, Collection
from pathlib import Path

from worktree_swarm.cleanup.findings import Finding
from worktree_swarm.cleanup.processes import (
    adding_process,
    describe,
    git_users,
    processes_using,
    repo_paths,
)
from worktree_swarm.cleanup.worktree_plan import (
    as_copied,
    holds_work,
    kept_commit,
    scratch,
    submodule_keep,
)
from worktree_swarm.core.errors import SwarmError
from worktree_swarm.core.paths import real_path
from worktree_swarm.core.run_settings import DEFAULT_COMMIT_AUTHOR, DEFAULT_MAX_FILE
from worktree_swarm.core.task import INTEGRATION_PREFIX, Task, is_valid_task_id
from worktree_swarm.git import branches as git_branches
from worktree_swarm.git import (
    checkpoints,
    gitfiles,
    local_files,
    removal,
    removing,
    tampering,
    worktrees,
)
from worktree_swarm.git import index as git_index
from worktree_swarm.git import repo as git
from worktree_swarm.git import status as git_status
from worktree_swarm.git.worktrees import WorktreeInfo
from worktree_swarm.guard import ref_moves
from worktree_swarm.infra import fs
from worktree_swarm.infra.store import Store
from worktree_swarm.infra.store_rows import TaskRow, task_from_json
from worktree_swarm.merge import target as merge_target
from worktree_swarm.report import run_info
from worktree_swarm.run import task_checkpoint

RESCUE_PREFIX = removal.RESCUE_PREFIX


def _unlock_index(repo: git.Repo, path: Path) -> None:
    """Delete the index lock a killed git left in the worktree *path*, if no git runs here.

    A `swarm clean` killed in its checkpoint's commit leaves one: the next clean would fail.
    """
    lock = git.git_dir(path) / "index.lock"
    if os.path.lexists(lock) and not git_users(repo_paths(repo)):
        gitfiles.remove_lock(lock)  # a directory planted so too


def _local_paths(store: Store | None, f: Finding, path: Path) -> tuple[str, ...]:
    """The task's ``link`` and ``copy`` paths, when the store still knows the task."""
    known = _task_of(store, f)
    if known is None or store is None:
        return ()
    row, task = known
    # Not its droppings: left in the worktree, they would keep it from being removed.
    return local_files.local_paths(path, link=task.link, copy=task.copy, base=row.base_commit)


def _as_copied(repo: git.Repo, store: Store | None, f: Finding, path: Path) -> frozenset[str]:
    """:func:`as_copied` of the finding's task, when the store still knows it."""
    known = _task_of(store, f)
    return as_copied(repo, None if known is None else known[0], path)


def _task_of(store: Store | None, f: Finding) -> tuple[TaskRow, Task] | None:
    """The store's row of the finding's task, with the task it ran; None when not known."""
    if store is None or not f.run_id or not f.task_id:
        return None
    row = store.task(f.run_id, f.task_id)
    return None if row is None else (row, task_from_json(row.spec_json))


def _author(store: Store | None, f: Finding) -> str:
    """Who commits what is left in the worktree: the author of its run's checkpoints (you)."""
    run = None if store is None or not f.run_id else store.get_run(f.run_id)
    return run.settings.commit_author if run is not None else DEFAULT_COMMIT_AUTHOR


def _trailers(store: Store | None, f: Finding) -> str:
    """The checkpoint trailers of the finding's task, as `swarm stop`'s; "" when not known."""
    known = _task_of(store, f)
    if known is None or store is None:
        return ""
    row, task = known
    return task_checkpoint.trailers(store, row, task)


def _max_file(store: Store | None, f: Finding) -> int:
    """The cap on one committed file of the run that made the worktree (git's default else)."""
    run = None if store is None or not f.run_id else store.get_run(f.run_id)
    return run.settings.max_file if run is not None else DEFAULT_MAX_FILE


def registered_locked(repo: git.Repo) -> dict[Path, WorktreeInfo]:
    """The worktrees git has registered, by real path; for a caller holding the repo lock.

    (:func:`worktrees.list_worktrees` would wait for that lock for ever.)
    """
    infos = worktrees.list_worktrees_locked(repo)
    return {real_path(w.path): w for w in infos}


def remove_worktree(
    repo: git.Repo,
    f: Finding,
    *,
    force: bool,
    moves: ref_moves.RefMoves,
    store: Store | None = None,
) -> tuple[str, str | None]:
    """Remove the worktree of finding *f*: what was done, and the commit of work saved (or None)."""
    path = Path(f.target)
    info = worktrees.registration_locked(repo, path)
    if info is None:
        return "already gone", None
    if info.is_main:
        raise SwarmError(f"{path} is the main checkout; never removed")
    begun = removing.interrupted(repo, path)
    if begun is not None:  # its missing files are swarm's deletions: nothing is committed
        return _finish_interrupted(repo, path, begun, moves=moves), None
    return _checkpoint_and_remove(repo, f, info, force=force, moves=moves, store=store)


def _checkpoint_and_remove(
    repo: git.Repo,
    f: Finding,
    info: WorktreeInfo,
    *,
    force: bool,
    moves: ref_moves.RefMoves,
    store: Store | None,
) -> tuple[str, str | None]:
    """:func:`remove_worktree` of the registered worktree *info*, its work checkpointed first."""
    path = Path(f.target)
    sha = saved = None
    repaired: gitfiles.Repair | None = None
    clean = True
    if path.is_dir():
        _refuse_when_not_ours_to_remove(repo, path, force=force)
        _refuse_when_switched(path, f, info)  # since the plan: no git of swarm's runs there
        tampering.unplant(repo, path, info.branch)  # nothing of git's below writes through one
        _unlock_index(repo, path)
        # A checkout killed half-way is populated from HEAD, never committed as deletions;
        # one whose index a task's agent deleted keeps its files, committed as they are.
        known = _task_of(store, f)
        ran = known is not None and known[0].agent_started
        repaired = gitfiles.repair_checkout(path, agent_ran=ran)
        # One `status` settles the usual case (a finished task's checkout holds nothing new):
        # no checkpoint, and the files go without `git worktree remove`, which runs its own.
        # Nothing of a killed `swarm merge --into` (what its checks wrote) is committed.
        as_copied = functools.partial(_as_copied, repo, store, f, path)
        clean = scratch(info) or _nothing_to_keep(path, as_copied)
        # Switched meanwhile, the checkpoint would commit onto that branch: asked right before.
        _refuse_when_switched(path, f, worktrees.registration_locked(repo, path))
        if not clean:
            clean, saved = _save_merge_left(repo, path, info.branch or "")
        if not clean:
            ref = f"refs/heads/{info.branch}" if info.branch else None
            tip = None if ref is None else moves.announce(ref, at=info.head)
            if known is not None:  # its own secrets too (`env`, `copy` files'): files stay out
                run_info.know_secrets_of(repo.root, [known[1]])
            try:  # onto its branch alone: switched by now, nothing is committed
                sha = checkpoints.checkpoint(
                    path,
                    message=f"swarm: checkpoint {path.name} (clean)" + _trailers(store, f),
                    author=_author(store, f),
                    exclude=_local_paths(store, f, path),
                    max_file=_max_file(store, f),
                    onto=info.branch,
                )
            except checkpoints.SwitchedError:
                _refuse_when_switched(path, f, worktrees.registration_locked(repo, path))
                raise
            if ref is not None:
                moves.moved(ref, sha or tip)
            # Switched since the commit: that checkout is someone's now, never removed.
            _refuse_when_switched(path, f, worktrees.registration_locked(repo, path), saved=sha)
            # Committed, it goes like a clean one: the index first (git's own removal deletes
            # the files first, and one killed in between left deletions to commit next time).
            clean = _nothing_to_keep(path, as_copied)
        # On a branch, its commit is that branch's; detached, it may be on none.
        head = None if info.branch is not None else git.rev_parse_in(path, "HEAD")
        fresh = dataclasses.replace(info, head=head)
        if not force and head and kept_commit(repo, fresh):
            raise SwarmError(f"its commit {head[:12]} is on no branch; kept (or use --force)")
    _remove_announced(repo, path, moves=moves, force=force, clean=clean)
    note = _repair_note(repaired, committed=sha is not None) + (saved or "")
    if sha:
        return f"{note}checkpointed {sha[:12]} on {info.branch or 'HEAD'}, removed", sha
    return f"{note}removed", None


def _repair_note(repaired: gitfiles.Repair | None, *, committed: bool) -> str:
    """What a checkout without an index was and what became of it, said before its removal.

    *committed*: a checkpoint followed.
    """
    if repaired is gitfiles.Repair.WHOLE:
        return (
            "checkout was incomplete (checked out again from HEAD, no missing file committed "
            "as deleted), "
        )
    if repaired is gitfiles.Repair.INDEX and committed:
        return (
            "its index was missing (made again from HEAD, its files committed as they were, "
            "deletions included), "
        )
    if repaired is gitfiles.Repair.INDEX:
        return "its index was missing (made again from HEAD, its files were as HEAD has them), "
    return ""


def _save_merge_left(repo: git.Repo, path: Path, branch: str) -> tuple[bool, str | None]:
    """Whether *path* is `swarm merge`'s worktree holding nothing to commit onto *branch*.

    And what it held, saved aside, as a note. So are a merge cut off there (its checks'
    files, a half-made merge) and one whose branch is gone: deleted by a run's guard that
    undid an agent's `swarm merge`, every file of that merge left staged, which a checkpoint
    would make anew.
    """
    if not branch.startswith(INTEGRATION_PREFIX):
        return False, None
    if merge_target.half_merged(path) or merge_target.checks_cut_off(path):
        what = "what a cut-off `swarm merge` left there"
    elif not git_branches.branch_exists(repo, branch):
        what = "what it held, its branch gone,"
    else:
        return False, None
    saved = merge_target.save_left(repo, path, branch)
    return True, f"{what} saved as {saved}, " if saved else None


def _remove_announced(
    repo: git.Repo, path: Path, *, moves: ref_moves.RefMoves, force: bool, clean: bool
) -> None:
    """Remove the worktree *path*, named to a running guard like a ref: swarm's own removal."""
    admin = tampering.own_admin(repo, path)
    key = ref_moves.worktree_key(path)
    if admin is not None:
        moves.announce(key, at=admin.name)
    if not ((clean or force) and removal.delete_locked(repo, path)):
        # Its submodules were looked at before (work in one is kept): nothing of theirs to lose.
        submodules = clean and admin is not None and (admin / "modules").exists()
        removal.git_remove_locked(repo, path, force=force, submodules=submodules)
    if admin is not None:
        moves.moved(key, None)


FINISHED = "finished the removal a killed swarm began (nothing in it committed), removed"


def _finish_interrupted(
    repo: git.Repo, path: Path, admin: Path, *, moves: ref_moves.RefMoves
) -> str:
    """Finish removing *path*, registered as *admin*, which a killed swarm left half deleted.

    Named to a running guard as every removal of swarm's is; kept while a process uses it.
    """
    if path.is_dir():
        _refuse_when_not_ours_to_remove(repo, path, force=True)
    key = ref_moves.worktree_key(path)
    moves.announce(key, at=admin.name)
    removal.finish_interrupted(repo, path, admin)
    moves.moved(key, None)
    return FINISHED


def _refuse_when_not_ours_to_remove(repo: git.Repo, path: Path, *, force: bool) -> None:
    """Raise when a process uses *path*, or (without *force*) a submodule there holds work.

    No checkpoint can commit work inside a submodule: removing the worktree would lose it.
    """
    changed = tampering.tampered(repo, path)
    if changed is not None:
        raise SwarmError(f"{changed}; kept (swarm runs no git there)")
    users = processes_using(path)
    if users:
        raise SwarmError(f"{describe(users[0])} is using {path}; stop it first")
    keep = "" if force else submodule_keep(repo, path)
    if keep:
        raise SwarmError(f"{keep}; kept")


def _refuse_when_switched(
    path: Path, f: Finding, now: WorktreeInfo | None, *, saved: str | None = None
) -> None:
    """Raise when the worktree *path* is no longer on the branch the plan *f* found it on.

    Switched since (by you, by an agent): a checkpoint would commit onto that branch, or onto
    no branch. Kept and named, as the plan keeps a worktree it finds so (*now*: as it is).
    *saved*: the checkpoint already made onto the plan's branch, named too.
    """
    if now is None:
        raise SwarmError(f"{path} is no longer a registered worktree; left alone")
    if now.branch == f.branch:
        return
    on = f"branch {now.branch}" if now.branch is not None else ""
    if not on:
        head = now.head or git.rev_parse_in(path, "HEAD") or "?"
        on = f"a detached HEAD at {head[:12]}"
    done = f" (its work checkpointed {saved[:12]} on {f.branch} before)" if saved else ""
    raise SwarmError(
        f"its worktree is on {on} now, not {f.branch or 'a detached HEAD'}{done}; kept: finish "
        "there, then remove it yourself (`git worktree remove`)"
    )


def _nothing_to_keep(path: Path, as_copied: Callable[[], Collection[str]] = frozenset) -> bool:
    """Whether git's status of the worktree *path* lists no work (:func:`holds_work`).

    Every directory of it seen: one git cannot read (an agent's ``chmod``) is opened to its
    owner first, since swarm removes the worktree anyway, and its files must be seen to be
    kept.
    """
    status = git_status.full_status(path)
    if status is None:
        fs.make_removable(path)
        status = git_status.full_status(path)
    return not holds_work(status, as_copied) and not git_index.hides_edits(path)


def remove_initializing(repo: git.Repo, f: Finding) -> str:
    """Remove the worktree of finding *f* that `git worktree add` left half made."""
    path = Path(f.target)
    info = registered_locked(repo).get(real_path(path))
    if info is None:
        return "already gone"
    if info.is_main or info.locked != "initializing" or f.admin_dir is None:
        raise SwarmError(f"{path} is no longer locked `initializing`; left alone")
    adder = adding_process(path)
    if adder is not None:
        raise SwarmError(f"{describe(adder)} is still creating it")
    if real_path(repo.root).is_relative_to(real_path(path)):
        raise SwarmError(f"{path} contains the main checkout; never removed")
    # The directory only holds git's partial checkout: `worktree add` never finished.
    (Path(f.admin_dir) / "locked").unlink(missing_ok=True)
    if path.is_dir() and not path.is_symlink():
        fs.remove_tree(path)
    removal.prune_gone(repo)
    return "unlocked, half-made checkout deleted, pruned"


def rescue_directory(repo: git.Repo, f: Finding) -> tuple[str, str | None]:
    """Save the files of the stray directory of finding *f*, then remove it."""
    path = Path(f.target)
    if not path.is_dir() or path.is_symlink():
        return "already gone", None
    if real_path(path) in registered_locked(repo):
        raise SwarmError(f"{path} is now a registered worktree; left alone")
    real, root = real_path(path), real_path(repo.root)
    if root.is_relative_to(real) or real.is_relative_to(root):
        raise SwarmError(f"{path} is inside the main checkout; never removed")
    # A worktree pruned without its `.git` file: what its checkpoints left out for a secret.
    note = removal.kept_note(repo, path)
    saved, sha = save_files(
        repo, path, message=f"swarm: files of stray directory {path}", note=note
    )
    fs.remove_tree(path)
    with contextlib.suppress(OSError):  # removed: a note left is read by no one
        note.unlink(missing_ok=True)
    return (f"{saved}, removed", sha) if saved else ("removed (it held no files)", None)


def save_files(
    repo: git.Repo,
    path: Path,
    *,
    message: str,
    parent: str | None = None,
    note: Path | None = None,
) -> tuple[str, str | None]:
    """Save *path*'s files as a commit under a rescue ref: what was saved ("" for no files), it.

    Raises when a file had to be left out (its filter is one swarm's git never runs, it holds
    a secret's value, or *note* names it: see :func:`removal.snapshot_files`; it is a
    repository of its own): it stays where it is, and so does *path*.
    """
    snap = removal.snapshot_files(repo, path, message=message, parent=parent, note=note)
    saved = ""
    if snap.sha is not None:
        ref = _rescue_ref(repo, path.name, snap.sha)
        git.git(repo.root, "update-ref", ref, snap.sha)
        saved = f"files saved as {ref} ({snap.sha[:12]})"
    if snap.left_out:
        raise SwarmError(
            f"{saved}{', but ' if saved else ''}{snap.left_out_text()}; kept: move them out of "
            f"{path}, then `swarm doctor --yes` saves the rest and removes it"
        )
    return saved, snap.sha


def _rescue_ref(repo: git.Repo, name: str, sha: str) -> str:
    """The ref to save the stray directory *name*'s commit *sha* as.

    One saving the same files already (an earlier rescue that kept the directory) is reused.
    """
    # The directory name is not trusted to be a valid ref component.
    stem = name.lower() if is_valid_task_id(name.lower()) else "dir"
    ref = RESCUE_PREFIX + stem
    if git.rev_parse(repo, ref) is None:
        return ref
    if git.rev_parse(repo, f"{ref}^{{tree}}") == git.rev_parse(repo, f"{sha}^{{tree}}"):
        return ref
    return f"{ref}-{sha[:12]}"


def prune(repo: git.Repo, f: Finding, *, moves: ref_moves.RefMoves) -> str:
    """Prune the registration of finding *f*'s vanished worktree.

    One a killed swarm was removing (git had deleted its ``.git`` file) is finished instead:
    what is left of its files is swarm's deletion to finish, not files to rescue.
    """
    path = Path(f.target)
    if real_path(path) not in registered_locked(repo):
        return "already gone"
    begun = removing.interrupted(repo, path)
    if begun is not None:
        return _finish_interrupted(repo, path, begun, moves=moves)
    if path.is_dir() and not path.is_symlink():
        with contextlib.suppress(OSError):
            path.rmdir()  # empty: a worktree's removal cut short after its `.git` file
    if os.path.lexists(path / ".git"):
        raise SwarmError(f"{path} is a checkout again; not pruned")
    if f.admin_dir is not None:
        # Planned only with --force: the user's lock on a vanished worktree is overridden.
        (Path(f.admin_dir) / "locked").unlink(missing_ok=True)
    removal.prune_gone(repo)
    if real_path(path) in registered_locked(repo):
        raise SwarmError(f"git did not prune {path}; see `git worktree list --porcelain`")
    if path.exists():
        return "pruned; its directory still holds files: `swarm doctor --yes` saves and removes it"
    return "pruned"
