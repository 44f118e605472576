"""Crash-idempotent provisioning: finish or roll back what a killed manager half-made.

A task's start commit is recorded in the store before git is touched, and its base commit
once the worktree is populated. Whatever a crash left in between (a branch at the start
commit, an admin dir locked ``initializing``, a directory holding only ``.git`` or part of
the files) held no agent yet, so it is rolled back and made again. A worktree that was
populated once is only ever repaired: reattached to its branch when its directory is gone,
repopulated when its checkout is incomplete, freed of git lock files a killed git left.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

import psutil

from worktree_swarm.core.errors import GitError, SwarmError
from worktree_swarm.core.models import ProcessIdentity
from worktree_swarm.git import branches as git_branches
from worktree_swarm.git import gitfiles, removal, sparse, worktrees
from worktree_swarm.git import repo as git
from worktree_swarm.infra import fs, proc_scan, proctree

# Lock files a git command killed half-way leaves behind; git refuses to run while they exist.
_WORKTREE_LOCKS = ("index.lock", "HEAD.lock")


def roll_back(repo: git.Repo, *, path: Path, branch: str, start: str) -> None:
    """Remove what a killed creation of *path* on a new *branch* at *start* made.

    The branch is deleted only while it still points at *start* (nothing was committed on
    it); a branch that moved is left for :func:`worktrees.create_worktree` to refuse.
    BadInputError, with nothing touched, when something at *path* is no creation's of swarm.
    """
    path = path.absolute()
    with git.repo_lock(repo):
        if not _half_made(repo, path):
            raise worktrees.in_the_way(path)
        _end_stray_git(path)
        _discard_admin_dirs(repo, path)
        shutil.rmtree(path, ignore_errors=True)
        # `worktree add -b` killed while it made the branch leaves the ref's lock, and git
        # then refuses the branch ("Another git process seems to be running").
        gitfiles.remove_lock(repo.common_dir / "refs" / "heads" / f"{branch}.lock")
        git.git(repo.root, "update-ref", "-d", f"refs/heads/{branch}", start, check=False)
        removal.prune_gone(repo)


def _half_made(repo: git.Repo, path: Path) -> bool:
    """Whether *path* is absent or as a killed creation leaves it: empty, or a worktree of *repo*.

    git and swarm make the directory empty, then write its ``.git`` file naming an admin dir
    (swarm beside it first, as ``.git.new``)
    in *repo*'s ``worktrees/`` before anything else: a link, a file or a directory holding
    anything without that is someone else's (a store written before swarm let go of what its
    creation found there still records the intent).
    """
    if not os.path.lexists(path):
        return True
    if path.is_symlink() or not path.is_dir():
        return False
    try:
        if {entry.name for entry in path.iterdir()} <= {".git.new"}:  # killed writing `.git`
            return True
        text = os.fsdecode(fs.read_file(path / ".git")).strip()
    except OSError:
        return False
    admin = path / text.removeprefix("gitdir:").strip()  # relative: git 2.48's option
    return text.startswith("gitdir:") and _norm(admin.parent) == _norm(
        repo.common_dir / "worktrees"
    )


def _end_stray_git(path: Path) -> None:
    """End the git processes still at work in *path*: the checkout of a manager killed alone.

    Its `git read-tree -u` is its child, not the agent's shim's, and outlives it: writing on
    while *path* is removed, it would leave part of a checkout where the worktree is made
    again. No agent ran in a worktree being made, so only git can be at work there.
    """
    stray = []
    for process in proc_scan.processes_in(path):
        with contextlib.suppress(psutil.Error):
            if process.name() == "git":
                process.kill()
                stray.append(process)
    psutil.wait_procs(stray, timeout=10)


def free_worktree(repo: git.Repo, path: Path, branch: str, *, populated: bool) -> None:
    """Free *path* of what a dead manager's git left there, once no process of its task runs.

    The lock files a killed git leaves (every later git in the worktree fails on them) and,
    in a worktree never *populated*, the checkout still at work (a manager killed alone):
    no agent ran there yet, so only that git can be at work in it.
    """
    path = path.absolute()
    if not populated:
        _end_stray_git(path)
    if path.is_dir():
        _unlink_stale_locks(repo, path, branch)


def restore(
    repo: git.Repo,
    *,
    path: Path,
    branch: str,
    start: str,
    unlock: bool,
    cone: sparse.Cone | None = None,
    agent_ran: bool = False,
) -> bool:
    """Make *path* a complete checkout of *branch* again; returns whether anything was done.

    For a worktree that was populated once: its directory gone (removed for disk room, or by
    ``swarm clean``) means it is added again on its branch (made at *start* when the branch is
    gone too); an incomplete checkout is repopulated from HEAD. With *unlock* (no process of
    the task can be running), lock files a killed git left in it are removed. A worktree
    added again is sparse to *cone* when given, as it was made. Where an agent ran
    (*agent_ran*), a checkout without an index has its index alone made again
    (:func:`gitfiles.repair_checkout`).
    """
    path = path.absolute()
    changed = False
    if not (path / ".git").exists():
        if path.exists() and any(path.iterdir()):
            raise SwarmError(
                f"{path} exists but is not a git worktree; move it aside and run `swarm resume`"
            )
        _reattach(repo, path=path, branch=branch, start=start, cone=cone)
        changed = True
    if unlock:
        changed |= _unlink_stale_locks(repo, path, branch)
    return gitfiles.repair_checkout(path, agent_ran=agent_ran) is not None or changed


def _reattach(
    repo: git.Repo, *, path: Path, branch: str, start: str, cone: sparse.Cone | None
) -> None:
    with git.repo_lock(repo):
        _discard_admin_dirs(repo, path)
        with contextlib.suppress(OSError):
            path.rmdir()
        removal.prune_gone(repo)
        path.parent.mkdir(parents=True, exist_ok=True)
        if git_branches.branch_exists(repo, branch):
            args = ["--", str(path), branch]
        else:
            args = ["--no-track", "-b", branch, "--", str(path), start]
        git.git(repo.root, "worktree", "add", "--quiet", "--no-checkout", *args)
    gitfiles.populate(path, cone)


def _discard_admin_dirs(repo: git.Repo, path: Path) -> None:
    """Remove git's admin dirs for *path*, including one killed before it named its path."""
    admin_root = repo.common_dir / "worktrees"
    if not admin_root.is_dir():
        return
    own_name = re.compile(re.escape(path.name) + r"\d*")
    for admin in admin_root.iterdir():
        try:
            gitdir = os.fsdecode(fs.read_file(admin / "gitdir")).strip()
        except OSError:
            # `worktree add` writes gitdir right after making the dir; under the repository
            # lock nobody else is adding one, so a dir named after ours without it is debris.
            if own_name.fullmatch(admin.name):
                shutil.rmtree(admin, ignore_errors=True)
            continue
        if _norm(Path(gitdir).parent) == _norm(path):
            shutil.rmtree(admin, ignore_errors=True)


def _unlink_stale_locks(repo: git.Repo, path: Path, branch: str) -> bool:
    try:
        admin = git.git_dir(path)
    except GitError:
        return False
    stale = [admin / name for name in _WORKTREE_LOCKS]
    stale.append(repo.common_dir / "refs" / "heads" / f"{branch}.lock")
    removed = False
    for lock in stale:
        if not os.path.lexists(lock):
            continue
        try:  # a directory planted so goes too: it is never git's
            gitfiles.remove_lock(lock)
        except OSError:
            continue  # left: git's own error tells of it where it writes next
        removed = True
    return removed


def unrecorded_agent(run_id: str, task_id: str, worktree: Path) -> ProcessIdentity | None:
    """An agent of the task that runs in *worktree* but that no attempt records.

    A manager killed between launching an agent and recording the attempt leaves one; it is
    adopted instead of launched a second time. Found by its working directory and the
    ``SWARM_RUN_ID``/``SWARM_TASK_ID`` it was started with; the leader of its process group
    (agents start in a session of their own, under their shim where there is one) is the one
    recorded. A shim forked by a server has the server's environment, so the agent's is read.
    """
    inside = proc_scan.processes_in(worktree)
    groups: set[int] = set()
    for proc in inside:
        try:
            env = proc.environ()
            group = os.getpgid(proc.pid)
        except (psutil.Error, OSError):
            continue
        if env.get("SWARM_RUN_ID") == run_id and env.get("SWARM_TASK_ID") == task_id:
            groups.add(group)
    # The leader of such a group, itself in the worktree: the agent, or the shim it runs under.
    leaders = {proc.pid for proc in inside} & groups
    found = [
        identity
        for identity in map(proctree.identity_of, leaders)
        if identity is not None and identity.pgid == identity.pid
    ]
    return oldest(found)


def oldest(identities: Iterable[ProcessIdentity]) -> ProcessIdentity | None:
    """The process started first (None for none).

    Start times count in clock ticks: of two started in the same tick, the lower PID.
    """
    return min(identities, key=lambda i: (i.create_time, i.pid), default=None)


def _norm(path: Path) -> Path:
    return Path(os.path.realpath(path))


__all__ = ["free_worktree", "oldest", "restore", "roll_back", "unrecorded_agent"]
