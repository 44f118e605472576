"""Findings and fixes of the repository's own files that a killed process or an agent broke.

A worktree registration a swarm killed half-way left (git lists no worktree then),
git's lock files left by a killed git, loose refs holding garbage (mended where their reflog
last left them), swarm's notes of the refs a killed `swarm merge`/`clean` was moving, and the
object stores of swarm's checkpoints and rescues killed half-way.
"""

from __future__ import annotations

import re
from pathlib import Path

from worktree_swarm.cleanup.findings import Action, Finding, Kind
from worktree_swarm.cleanup.processes import describe, git_users, repo_paths
from worktree_swarm.core.errors import SwarmError
from worktree_swarm.git import gitfiles, half_made, quarantine, runner
from worktree_swarm.git import repo as git
from worktree_swarm.guard import ref_moves
from worktree_swarm.infra.store import Store


def half_made_registrations(repo: git.Repo, store: Store | None) -> list[Finding]:
    """Worktrees of swarm's (a task's, a merge's) it left half-made, killed registering them."""
    return [
        Finding(
            kind=Kind.WORKTREE,
            target=str(half.path),
            reason="half-made registration by a swarm killed as it wrote it (its `commondir`"
            " empty): git lists no worktree until it goes",
            action=Action.REMOVE_HALF_MADE,
            fix="delete its admin dir and its directory (which holds only its .git file)",
            admin_dir=str(half.admin),
        )
        for half in half_made.find(repo, store)
    ]


def remove_half_made(repo: git.Repo, f: Finding) -> str:
    """Remove finding *f*'s half-made registration, unless it is no longer exactly so."""
    del repo
    if f.admin_dir is None:
        raise SwarmError(f"{f.target}: no admin dir named")
    half = half_made.HalfMade(admin=Path(f.admin_dir), path=Path(f.target))
    if not half_made.remove_locked(half):
        raise SwarmError(f"{f.target} is no longer as a killed swarm left it; left alone")
    return "removed"


def ref_move_notes(repo: git.Repo) -> list[Finding]:
    """What a killed `swarm merge`/`clean` left in ``.git/swarm/ref-moves`` (docs/guard.md)."""
    return [
        Finding(
            kind=Kind.LOCK,
            target=str(path),
            reason="swarm's note of the refs a killed swarm merge, clean or pr was moving"
            " (its process is gone)",
            action=Action.FORGET_REF_MOVES,
            fix="delete it",
        )
        for path in ref_moves.abandoned(repo.state_dir)
    ]


def staging_leftovers(repo: git.Repo) -> list[Finding]:
    """The stores a checkpoint or rescue killed half-way left in the git dirs, none holding them.

    ``swarm-staging-*``, ``swarm-apart-*`` (docs/secrets.md). Each may hold what that
    checkpoint left out of its commit (a secret's value): the next checkpoint of its worktree,
    or the next rescue, removes it; one of a worktree kept for you (a failed task's) stays
    until then.
    """
    found = []
    for path in quarantine.leftovers(repo.common_dir):
        by = "a rescue" if path.name.startswith(quarantine.APART_PREFIX) else "a checkpoint"
        if path.is_symlink() or not path.is_dir():
            reason = f"no directory, by the name of the object store of {by} (planted?)"
            fix = "delete it (itself, never what it points to)"
        else:
            reason = (
                f"object store {by} killed half-way left (no process holds it); it may hold"
                " what was left out of a commit (a secret's value)"
            )
            fix = "delete it"
        found.append(
            Finding(
                kind=Kind.STAGING,
                target=str(path),
                reason=reason,
                action=Action.REMOVE_STAGING,
                fix=fix,
            )
        )
    return found


def remove_staging(repo: git.Repo, f: Finding) -> str:
    """Remove the store of finding *f*, unless a process holds it again (a live one's name)."""
    del repo
    path = Path(f.target)
    if not path.exists() and not path.is_symlink():
        return "already gone"
    if not quarantine.remove_unheld(path):
        raise SwarmError(f"{path}: a process holds it now (in use); left")
    return "removed"


def stale_git_locks(repo: git.Repo) -> list[Finding]:
    """Git's lock files in *repo* while no git process works there: a killed git's, or planted.

    Left, your next `git commit` (``index.lock``) or a branch's move (``refs/heads/x.lock``)
    fails as if another git were at work.
    """
    common = repo.common_dir
    candidates = [
        *common.glob("*.lock"),
        *common.glob("worktrees/*/*.lock"),
        *(common / "refs").rglob("*.lock"),
    ]
    # swarm's own locks (<common>/swarm/*.lock) are flock()s: free when their holder dies.
    if not candidates or git_users(repo_paths(repo)):
        return []
    return [
        Finding(
            kind=Kind.LOCK,
            target=str(path),
            reason="git lock file whose writer is gone (no git process works in this repository)",
            action=Action.UNLINK_LOCK,
            fix="delete it",
        )
        for path in sorted(candidates)
    ]


def unlink_lock(repo: git.Repo, f: Finding) -> str:
    """Remove the stale lock file of finding *f*, unless a git process works in *repo*."""
    path = Path(f.target)
    if not path.exists():
        return "already gone"
    users = git_users(repo_paths(repo))
    if users:
        raise SwarmError(f"{describe(users[0])} is working in this repository; try again later")
    gitfiles.remove_lock(path)  # a directory planted so too: git never makes one
    return "removed"


def broken_refs(repo: git.Repo) -> list[Finding]:
    """Loose refs git cannot read (`warning: ignoring broken ref`): garbage an agent wrote.

    Git skips them when it lists refs, and fails on them when it is asked for one (your branch
    "No commits yet", `git log --all` a fatal error). Each is written again where its reflog
    last left it, or its file removed.
    """
    said = runner.run(repo.root, "for-each-ref", "--format=", check=False).stderr
    names = re.findall(r"^warning: ignoring broken ref (refs/\S+)$", said, re.MULTILINE)
    found = []
    for name in names:
        if not gitfiles.broken_ref_file(repo.common_dir / name):
            continue  # not a loose file of garbage (a dangling symbolic ref): git's to tell
        was = _last_logged(repo, name)
        fix = f"write it again at {was[:12]} (its reflog's last)" if was else "delete its file"
        found.append(
            Finding(
                kind=Kind.REF,
                target=name,
                reason="ref file holding no commit (garbage written into it): git skips it",
                action=Action.MEND_REF,
                fix=fix,
            )
        )
    return found


def mend_ref(repo: git.Repo, f: Finding) -> str:
    """Write a broken ref again where its reflog last left it, or remove its file of garbage."""
    name = f.target
    path = repo.common_dir / name
    if _last_logged(repo, name) is None and not gitfiles.broken_ref_file(path):
        return "no longer broken"
    users = git_users(repo_paths(repo))
    if users:
        raise SwarmError(f"{describe(users[0])} is working in this repository; try again later")
    was = _last_logged(repo, name)
    path.unlink(missing_ok=True)
    if was is None:
        return "removed (its file held no commit)"
    git.git(repo.root, "update-ref", "-m", "swarm doctor: mended", name, was)
    return f"put back at {was[:12]}, as its reflog last left it"


def _last_logged(repo: git.Repo, name: str) -> str | None:
    """The commit *name*'s reflog last moved it to, when that commit is there."""
    try:
        lines = (repo.common_dir / "logs" / name).read_bytes().splitlines()
    except OSError:
        return None
    last = lines[-1].split(b" ") if lines else []
    sha = last[1].decode("ascii", "replace") if len(last) > 1 else ""
    if not gitfiles.is_object_name(sha) or set(sha) == {"0"}:
        return None
    res = runner.run(repo.root, "cat-file", "-e", f"{sha}^{{commit}}", check=False)
    return sha if res.returncode == 0 else None
