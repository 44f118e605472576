"""The branch a `swarm merge` merges into, and the worktree it merges in.

The integration worktree on ``swarm/integration-<run>`` is swarm's own: opening it repairs what a
killed merge left there (a half-made merge, an unpopulated checkout, its directory deleted).
With ``--into BRANCH`` the merge happens in a temporary detached worktree and BRANCH moves by a
compare-and-swap at the end. A branch checked out anywhere else is never touched.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from worktree_swarm.core import paths
from worktree_swarm.core.errors import BadInputError, SwarmError
from worktree_swarm.core.paths import real_path
from worktree_swarm.core.task import (
    BRANCH_PREFIX,
    INTEGRATION_PREFIX,
    SCRATCH_PREFIX,
    is_valid_task_id,
)
from worktree_swarm.git import branches as git_branches
from worktree_swarm.git import gitfiles, removal, runner, status, worktrees
from worktree_swarm.git import repo as git
from worktree_swarm.infra import fs, proc_scan
from worktree_swarm.infra.store import Store
from worktree_swarm.merge.diff import branch_tip


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """Where a merge lands: the branch, the worktree it is merged in, and whether that goes."""

    branch: str
    worktree: Path
    temporary: bool
    # What the user is told of its worktree: what it held, saved aside before a merge there.
    note: str = ""


def ref_safe_run(run_id: str) -> str:
    """*run_id*, checked: run ids are ours, but one read from the store becomes a ref and a path."""
    if not is_valid_task_id(run_id):
        raise SwarmError(f"run id {run_id!r} cannot be part of a branch name")
    return run_id


def validate(
    repo: git.Repo, store: Store, branch: str, *, own: Path | None, checkout: Path | None = None
) -> str:
    """The commit *branch* starts from; refuses what would touch a checkout. Creates nothing.

    *own* is swarm's integration worktree (None with ``--into``): a merge a killed `swarm
    merge` left half made there, or what the checks it was killed in wrote there, is not
    "uncommitted changes" but undone once the merge is under way. A branch that does not
    exist yet starts at the HEAD of *checkout* (yours that swarm runs in; by default the main
    one).
    """
    into = own is None
    if into:
        _validate_into(repo, store, branch)
    listed = worktrees.list_worktrees(repo)
    for info in listed:
        if _same_path(info.path, own) and info.branch != branch and info.path.is_dir():
            on = f"on branch {info.branch}" if info.branch else "on a detached HEAD"
            raise BadInputError(
                f"the integration worktree {info.path} is {on}; switch it back to {branch}"
                f" (`git -C {info.path} switch {branch}`)"
            )
        if info.branch != branch or info.prunable or into:
            continue  # an --into branch checked out anywhere is refused below, clean or not
        if not _same_path(info.path, own):
            raise _checked_out_elsewhere(branch, info.path, own)
        # A checkout a killed merge left unpopulated (no index) holds nothing: repaired when
        # opened, not "uncommitted changes" (committing its deletions would empty the branch).
        looked = info.path.is_dir() and not gitfiles.checkout_incomplete(info.path)
        left = half_merged(info.path) or checks_cut_off(info.path)
        left = left or not git_branches.branch_exists(repo, branch)  # saved aside, made anew
        looked = looked and not (_same_path(info.path, own) and left)
        dirty = bool(status.status_porcelain(info.path)) if looked else False
        if dirty:
            raise BadInputError(
                f"{branch} is checked out in {info.path} with uncommitted changes; commit or"
                " stash them there first"
            )
    if into:
        refuse_held(repo, branch, listed)
    tip = branch_tip(repo, branch)
    return tip if tip is not None else git.checkout_head(checkout or repo.root)


def refuse_held(
    repo: git.Repo, branch: str, listed: Sequence[worktrees.WorktreeInfo] | None = None
) -> None:
    """Refuse to move *branch* (``--into``) where git itself would not move it.

    Checked out in a checkout, being rebased or bisected in one (its HEAD is detached then,
    and the rebase puts the branch back at its end), or a symbolic ref (moving it moves the
    branch it names, maybe one checked out). *listed*: the worktrees, as just listed.
    """
    if runner.run(repo.root, "symbolic-ref", "-q", f"refs/heads/{branch}", check=False).stdout:
        raise BadInputError(
            f"--into {branch} is a symbolic ref; name the branch it points to, and swarm will"
            " move that one if nothing has it checked out"
        )
    for info in worktrees.list_worktrees(repo) if listed is None else listed:
        if info.prunable:
            continue
        if info.branch == branch:
            raise BadInputError(
                f"{branch} is checked out in {info.path}; swarm never moves a branch under a"
                f" checkout. Merge without --into (into {INTEGRATION_PREFIX}<run>) and then run"
                " `git merge --ff-only` on that branch there, or check out another branch"
            )
        what = _held_by_operation(info.path).get(branch)
        if what is not None:
            raise BadInputError(
                f"{branch} is being {what} in {info.path}; finish or abort that there first"
            )


def _held_by_operation(checkout: Path) -> dict[str, str]:
    """The branches a rebase or bisect in *checkout* holds, each with which of the two it is.

    A rebase holds the branch it rebases and, with ``--update-refs``, every branch it will
    move to its new commits at its end (git refuses to move those meanwhile).
    """
    try:
        admin = git.git_dir(checkout)
    except SwarmError:
        return {}
    held: dict[str, str] = {}
    for name, what in (
        ("rebase-merge/head-name", "rebased"),
        ("rebase-apply/head-name", "rebased"),
        ("BISECT_START", "bisected"),
        ("rebase-merge/update-refs", "rebased"),  # per ref: its name, then two commit ids
    ):
        try:
            lines = fs.read_file(admin / name).decode("utf-8", "replace").splitlines()
        except OSError:
            continue
        for ref in lines[::3] if name.endswith("update-refs") else lines[:1]:
            held.setdefault(ref.strip().removeprefix("refs/heads/"), what)
    return held


def _validate_into(repo: git.Repo, store: Store, branch: str) -> None:
    """Refuse an ``--into`` name that is no existing branch of the user's.

    A task's own branch is none: its diff and pull request would show the other tasks' work
    as its own.
    """
    owner = store.owners()[0].get(branch)
    if owner is not None:
        raise BadInputError(
            f"--into {branch} is task {branch.removeprefix(BRANCH_PREFIX)}'s branch (run"
            f" {owner}); merge into a branch of yours, or without --into"
        )
    if not git_branches.is_branch_name(repo, branch):
        raise BadInputError(f"--into {branch!r} is not a valid branch name")
    if branch.startswith("refs/"):
        short = branch.removeprefix("refs/heads/")
        raise BadInputError(f"--into names a branch by its short name: `{short}`, not {branch}")
    if not git_branches.branch_exists(repo, branch):
        raise BadInputError(
            f"--into branch {branch} does not exist; create it first (`git branch {branch}`)"
        )


def open_target(
    repo: git.Repo, store: Store, run_id: str, branch: str, *, start: str, own: Path | None
) -> Target:
    """The worktree to merge *branch* in: swarm's own (*own*, repaired or made), or temporary."""
    if own is None:
        root = _worktree_root(repo, store, run_id)
        path = root / f"{SCRATCH_PREFIX}{ref_safe_run(run_id)}-{secrets.token_hex(3)}"
        _add_worktree(repo, path, start, detach=True)
        return Target(branch=branch, worktree=path, temporary=True)
    saved = None
    for info in worktrees.list_worktrees(repo):
        if _same_path(info.path, own) and not info.path.is_dir():
            # Its directory was deleted: this registration alone goes, the worktree is made anew.
            removal.remove_worktree(repo, info.path, force=True)
        elif info.branch == branch and info.path.is_dir():
            if not _same_path(info.path, own):  # checked out meanwhile: never merged in
                raise _checked_out_elsewhere(branch, info.path, own)
            _unlock(info.path)
            _unlock_made(repo, info)
            if not git_branches.branch_exists(repo, branch):
                # Deleted under it (a run's guard undoing an agent's `swarm merge`, every file
                # of that merge left staged): what it holds is no one's to land; made anew.
                saved = save_left(repo, info.path, branch, parent=start)
                removal.remove_worktree(repo, info.path, force=True)
                break
            gitfiles.repair_checkout(info.path)  # a merge killed while it checked the target out
            cut_off = half_merged(info.path) or checks_cut_off(info.path)
            saved = save_left(repo, info.path, branch) if cut_off else None
            if half_merged(info.path):
                # A merge (or its resolver) killed midway; its leftover processes are ended.
                runner.run(info.path, "reset", "--quiet", "--hard", "HEAD")
            note = _saved_note(
                saved, f"a merge cut off in {info.path} is undone; what the worktree held"
                " uncommitted (its checks' files, edits since)",
            )  # fmt: skip
            return Target(branch=branch, worktree=info.path, temporary=False, note=note)
    path = own
    if git_branches.branch_exists(repo, branch):
        _add_worktree(repo, path, branch)
    else:
        worktrees.create_worktree(repo, path=path, branch=branch, start=start)
    note = _saved_note(
        saved, f"{path} was on {branch}, which is gone, so it is made anew; what it held"
    )
    return Target(branch=branch, worktree=path, temporary=False, note=note)


def _saved_note(saved: str | None, what: str) -> str:
    return f"{what} is saved as {saved} (`git diff {saved}^ {saved}`)" if saved else ""


def save_left(
    repo: git.Repo, worktree: Path, branch: str, *, parent: str | None = None
) -> str | None:
    """Save what the merge worktree holds uncommitted before a cut-off merge there is undone.

    What the killed merge, its checks or resolver wrote, and what you may have changed there
    since: undoing the merge removes it all (as removing a worktree whose branch is gone
    does). Saved as a child of *parent* (by default its HEAD commit, none on a branch that is
    gone). The ref it is saved as, or None (nothing there). SwarmError, nothing undone, when
    a file is left out (a changed one whose filter swarm's git never runs, one holding a
    secret's value, a repository of its own: the rest saved).
    """
    if not status.status_porcelain(worktree):
        return None
    head = parent or gitfiles.head_in(worktree)
    message = f"swarm: left uncommitted in the merge worktree of {branch}"
    snap = removal.snapshot_files(repo, worktree, message=message, parent=head)
    ref = None if snap.sha is None else f"{removal.RESCUE_PREFIX}merge-{snap.sha[:12]}"
    if ref is not None and snap.sha is not None:
        git.git(repo.root, "update-ref", ref, snap.sha)
    if snap.left_out:  # undoing the merge would lose them
        saved = f"the rest is saved as {ref}; " if ref else ""
        raise SwarmError(
            f"the merge worktree {worktree} holds files swarm cannot save: "
            f"{snap.left_out_text()}; {saved}kept: move them out of it (or undo them), then "
            "run again"
        )
    return ref


def _checked_out_elsewhere(branch: str, checkout: Path, own: Path | None) -> BadInputError:
    """The refusal to merge in a checkout of yours that has the integration *branch*."""
    return BadInputError(
        f"{branch} is checked out in {checkout}; swarm merges only in its own worktree "
        f"({own}), never in a checkout of yours: switch that one to another branch (or remove "
        "it), then run `swarm merge` again"
    )


def _unlock(worktree: Path) -> None:
    """Remove the index lock a git of a killed merge left in swarm's merge *worktree*.

    Under the merge lock, with the killed merge's checks ended: a lock is stale unless a
    process works in that worktree (you, looking around in it), which is left its lock.
    """
    lock = git.git_dir(worktree) / "index.lock"
    if os.path.lexists(lock) and not proc_scan.processes_in(worktree):
        gitfiles.remove_lock(lock)  # a directory planted so too


def _unlock_made(repo: git.Repo, info: worktrees.WorktreeInfo) -> None:
    """Unlock swarm's merge worktree *info* that a killed `git worktree add` left locked.

    Git locks a worktree it adds (``initializing``) until its checkout is done: so locked,
    git refuses to remove it, and it reads as half made (`swarm doctor` deletes it) after
    the merges made there since. Its checkout is repaired where it is used.
    """
    if info.locked == "initializing":
        with git.repo_lock(repo):
            git.git(repo.root, "worktree", "unlock", "--", str(info.path))


def remove_scratch(repo: git.Repo, store: Store, run_id: str) -> None:
    """Remove the temporary worktrees of this run's killed ``--into`` merges (under its lock).

    Each held a merge made there for a branch that never moved: nothing in it is kept.
    """
    root = real_path(_worktree_root(repo, store, run_id))
    mine = f"{SCRATCH_PREFIX}{ref_safe_run(run_id)}-"
    for info in worktrees.list_worktrees(repo):
        if info.path.name.startswith(mine) and real_path(info.path.parent) == root:
            _unlock_made(repo, info)
            removal.remove_worktree(repo, info.path, force=True)


def integration_path(repo: git.Repo, store: Store, run_id: str) -> Path:
    """Where swarm keeps the run's integration worktree."""
    return paths.integration_worktree(_worktree_root(repo, store, run_id), ref_safe_run(run_id))


def _same_path(path: Path, other: Path | None) -> bool:
    return other is not None and path.resolve() == other.resolve()


def checks_record(worktree: Path) -> Path | None:
    """Where the untracked files of *worktree* are listed while merge checks run in it.

    In its own admin dir: it goes with the worktree, and a temporary one's (``--into``) never
    speaks for the integration worktree. None when *worktree* is not a checkout.
    """
    try:
        return git.git_dir(worktree) / "swarm-checks-untracked.json"
    except SwarmError:
        return None


def checks_cut_off(worktree: Path) -> bool:
    """Whether merge checks were killed in *worktree* before undoing what they wrote."""
    record = checks_record(worktree)
    return record is not None and record.exists()


def half_merged(worktree: Path) -> bool:
    """Whether a merge (or squash) in *worktree* waits for its commit."""
    try:
        admin = git.git_dir(worktree)
    except SwarmError:
        return False
    return any((admin / name).exists() for name in ("MERGE_HEAD", "SQUASH_MSG"))


def _worktree_root(repo: git.Repo, store: Store, run_id: str) -> Path:
    run = store.get_run(run_id)
    root = run.settings.worktree_root if run is not None else None
    return root or paths.default_worktree_root(repo.root)


def _add_worktree(repo: git.Repo, path: Path, rev: str, *, detach: bool = False) -> None:
    with git.repo_lock(repo):
        if path.exists():
            raise SwarmError(f"{path} already exists; remove it or run `swarm clean --orphans`")
        path.parent.mkdir(parents=True, exist_ok=True)
        flags = ["--detach"] if detach else []
        git.git(repo.root, "worktree", "add", "--quiet", *flags, "--", str(path), rev)


def move_branch(repo: git.Repo, branch: str, *, new: str, old: str) -> None:
    """Move *branch* from *old* to *new* (``--into``), or refuse if someone moved it meanwhile.

    Or checked it out, or started a rebase of it, or made it a symbolic ref meanwhile (during
    the checks): looked at again right before it moves.
    """
    keep = f"the merged result is commit {new}: keep it with `git branch swarm-merge-result {new}`"
    try:
        refuse_held(repo, branch)
    except BadInputError as exc:
        raise SwarmError(f"{exc}; {keep} and merge again") from None
    res = runner.run(
        repo.root, "update-ref", "--no-deref", "-m", "swarm merge", f"refs/heads/{branch}", new,
        old, check=False,
    )  # fmt: skip
    if res.returncode != 0:
        raise SwarmError(f"{branch} moved while swarm was merging; {keep} and merge again")
