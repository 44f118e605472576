"""`swarm doctor --yes` on a worktree whose ``.git`` file names no git dir: saved, then gone.

Git keeps such a worktree registered and never prunes it (its admin dir still names that
``.git`` file), and every git command there fails, a checkpoint's too. Its files are saved as
a commit under a rescue ref, a child of its HEAD commit, like a stray directory's; the
directory is deleted and the registration pruned, the removal named to a running guard (a
finished task's worktree during a run: no live agent is blamed). Its branch is left to the
usual rules; a locked one (``git worktree lock``) is left alone.
"""

from __future__ import annotations

from pathlib import Path

from worktree_swarm.cleanup.findings import Finding
from worktree_swarm.cleanup.processes import describe, processes_using
from worktree_swarm.cleanup.worktree_removal import registered_locked, save_files
from worktree_swarm.core.errors import SwarmError
from worktree_swarm.core.paths import real_path
from worktree_swarm.git import removal, staged, tampering, worktrees
from worktree_swarm.git import repo as git
from worktree_swarm.guard import ref_moves
from worktree_swarm.infra import fs


def rescue_worktree(
    repo: git.Repo, f: Finding, *, moves: ref_moves.RefMoves
) -> tuple[str, str | None]:
    """Save the files of the cut-off worktree *f* names, delete it, prune it (told to *moves*)."""
    path = Path(f.target)
    info = registered_locked(repo).get(real_path(path))
    if info is None:
        return "already gone", None
    if tampering.cut_off(path) is None:
        raise SwarmError(f"{path} is no longer cut off from its git dir; left alone")
    real, root = real_path(path), real_path(repo.root)
    if root.is_relative_to(real) or real.is_relative_to(root):
        raise SwarmError(f"{path} is inside the main checkout; never removed")
    if info.locked is not None:  # git's "never prune it": its directory may come back
        reason = info.locked or "no reason given"
        raise SwarmError(f"{path} is locked ({reason}); `git worktree unlock {path}` first")
    users = processes_using(path)
    if users:
        raise SwarmError(f"{describe(users[0])} is using {path}; stop it first")
    message = f"swarm: files of worktree {path}, whose .git file named no git dir"
    admin = worktrees.admin_of(repo, path)
    # What its checkpoints left out for a secret: this shell may not know the value.
    note = Path(admin) / staged.SECRETS_LEFT_OUT if admin is not None else None
    saved, sha = save_files(repo, path, message=message, parent=info.head or None, note=note)
    key = ref_moves.worktree_key(path)
    if admin is not None:  # named as the guard knows it: git's admin dir, not its `.git` file
        moves.announce(key, at=Path(admin).name)
    fs.remove_tree(path)
    if admin is not None:
        moves.moved(key, None)
    removal.prune_gone(repo)
    if real_path(path) in registered_locked(repo):
        raise SwarmError(f"git did not prune {path}; see `git worktree list --porcelain`")
    return f"{saved or 'it held no files'}, removed, pruned", sha
