"""Whether a task worktree is still the one swarm made; traps an agent planted for swarm's git.

An agent can swap its worktree for a symlink, point its ``.git`` elsewhere, plant symlinks or
hard links where swarm's own git writes (its admin dir, its branch's ref and reflog), or leave
setuid programs git does not record: each is found, and cut or disarmed, before swarm runs git
there.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from worktree_swarm.core.errors import GitError
from worktree_swarm.core.text import path_text, paths_text
from worktree_swarm.git.diffs import changed_paths
from worktree_swarm.git.gitfiles import head_in
from worktree_swarm.git.repo import Repo, git_dir
from worktree_swarm.git.worktrees import linked_admin, other_common, worktrees_dir
from worktree_swarm.infra import fs


def tampered(repo: Repo, path: Path) -> str | None:
    """Why the task worktree *path* is no longer the one swarm made, or None when it is.

    An agent can replace its worktree with a symlink (to your checkout) or point its ``.git``
    file elsewhere (your git dir, another task's admin dir): git run there would then commit
    onto another branch, so swarm runs none there.
    """
    if path.is_symlink():
        return f"{path} was replaced by a symlink"
    if not os.path.lexists(path / ".git") or linked_admin(repo, path) is not None:
        return None  # gone (a removal cut short, pruned as such) or as swarm made it
    if (why := cut_off(path)) is not None:
        return f"{path}: {why}"
    with contextlib.suppress(OSError, GitError):
        admin = git_dir(path)
        if admin.parent == worktrees_dir(repo.common_dir) and other_common(repo, admin):
            return f"{admin}/commondir no longer names {repo.common_dir}"
    return f"{path}/.git no longer names its registration in {repo.common_dir / 'worktrees'}"


def left_uncommitted(changed: str) -> str:
    """Why a task fails whose worktree :func:`tampered` found *changed*: no git ran there."""
    return f"{changed}: its work since the last checkpoint is left there, uncommitted"


def cut_off(path: Path) -> str | None:
    """Why git cannot work in the directory *path* at all: its ``.git`` file names no git dir.

    Git keeps such a worktree registered (its admin dir still names that ``.git`` file) and
    never prunes it, and every command there fails. None when *path* is no such directory.
    """
    dotgit = path / ".git"
    if path.is_symlink() or dotgit.is_symlink() or not dotgit.is_file():
        return None
    try:
        text = os.fsdecode(fs.read_file(dotgit))
    except OSError:
        return None  # unreadable (a chmod): sealed, not cut off
    if not text.startswith("gitdir:"):
        return "git cannot work in it: its .git file is not a `gitdir:` line"
    named = text.removeprefix("gitdir:").strip()
    if os.path.lexists(path / named):
        return None
    return f"git cannot work in it: its .git file names {path_text(named)}, which does not exist"


def own_admin(repo: Repo, path: Path) -> Path | None:
    """The admin dir of the task worktree *path* when it is as swarm made it, else None."""
    return None if path.is_symlink() else linked_admin(repo, path)


def unplant(repo: Repo, path: Path, branch: str | None, *, admin: Path | None = None) -> list[str]:
    """Cut links an agent planted where swarm's own git in *path* writes; their names.

    A symlink is removed; a hard-linked file gets an inode of its own, its bytes kept (a
    backup made with `cp -al` links every file, the worktree's ``HEAD`` and index too).

    git follows a symlink it finds in place of ``COMMIT_EDITMSG`` or a reflog and writes
    through it, as swarm (outside any sandbox): a sandboxed agent could have any file of yours
    overwritten or appended to. A hard link is the same file under another name (an object
    file of yours: both are in the git dir, which the sandbox leaves writable). The worktree's
    admin dir holds no symlink of git's own, and no hard link where git writes (its top and
    ``logs/``; ``gitdir``, which git does not write, aside); nor do the paths of its branch's
    ref and reflog.
    """
    admin = admin or linked_admin(repo, path)
    if admin is None:
        return []
    found = []
    for top, dirs, files in os.walk(admin):
        found += [Path(top, name) for name in dirs if Path(top, name).is_symlink()]
        written = _written_by_git(admin, Path(top))
        found += [
            Path(top, name)
            for name in files
            if Path(top, name).is_symlink()
            or (written and name not in _NOT_WRITTEN and _linked(Path(top, name)))
        ]
    for link in found:
        _cut(link)
    planted = sorted(str(link.relative_to(repo.common_dir)) for link in found)
    return sorted([*planted, *unplant_ref(repo, branch)]) if branch else planted


def disarm_setuid(
    repo: Repo,
    path: Path,
    base: str,
    changed: Sequence[str] | None = None,
    *,
    also: Sequence[str] = (),
) -> list[str]:
    """Take the setuid and setgid bits off the files of worktree *path* its branch changed.

    Those that differ from *base* to the worktree's HEAD (after a checkpoint: what the agent
    left or committed; *changed* when the caller knows them), and *also* (files the checkpoint
    left out, which stay there). Returns the ones that had a bit. git records neither bit, so the
    branch looks clean while such a program stays in the worktree until `swarm clean`: one
    copied from a shell by an agent running as root gives root to any local user who reaches
    it. A look at the branch's changes, not a walk of the worktree: a tracked file whose
    content is unchanged and that only gained the bit is not seen, nor an ignored file.
    """
    found = []
    if changed is None:
        changed = changed_paths(repo, base, head_in(path) or base)
    for rel in dict.fromkeys([*changed, *also]):
        with contextlib.suppress(OSError):  # gone, or reached only through a symlink
            if fs.drop_setuid(path, rel):
                found.append(rel)
    return found


def setuid_reason(armed: Sequence[str]) -> str:
    """What a task whose agent left the setuid or setgid programs *armed* is told."""
    return (
        f"made setuid or setgid programs in its worktree ({paths_text(armed)}): "
        "their setuid and setgid bits are taken off"
    )


def unplant_ref(repo: Repo, branch: str) -> list[str]:
    """Cut links planted on the paths of *branch*'s ref and reflog; their names.

    git writes a branch's ref and appends to its reflog through a symlink it finds there (or
    on a directory on the way), even for a branch it is about to create, and appends to the
    reflog through a hard link too. (A ref it writes aside and renames over: a hard-linked
    ref, which a backup made with `cp -al` leaves everywhere, is harmless and kept.)
    """
    common = repo.common_dir
    found = []
    for tail in (f"logs/refs/heads/{branch}", f"refs/heads/{branch}"):
        parts = tail.split("/")
        found += [
            common.joinpath(*parts[:i])
            for i in range(1, len(parts) + 1)
            if common.joinpath(*parts[:i]).is_symlink()
        ]
        if tail.startswith("logs/") and _linked(common / tail) and common / tail not in found:
            found.append(common / tail)
    for link in found:
        _cut(link)
    return sorted(str(link.relative_to(common)) for link in found)


def _cut(link: Path) -> None:
    """Remove the symlink *link*; give a hard-linked file a name of its own (its data kept)."""
    with contextlib.suppress(FileNotFoundError):
        if link.is_symlink() or not link.is_file():
            link.unlink()
        else:
            fs.break_link(link)


# Files at the top of an admin dir git reads but does not write while it works there.
_NOT_WRITTEN = frozenset({"gitdir", "commondir", "config.worktree"})


def _written_by_git(admin: Path, directory: Path) -> bool:
    """Whether git writes the files of *directory* when it works in *admin*'s worktree.

    The top of the admin dir and its ``logs/``; not a submodule's git dir under ``modules/``,
    whose objects a local clone hard-links.
    """
    return directory == admin or directory.is_relative_to(admin / "logs")


def _linked(path: Path) -> bool:
    """Whether *path* is a symlink, or a file with another name too (a hard link)."""
    try:
        info = path.lstat()
    except OSError:
        return False
    return stat.S_ISLNK(info.st_mode) or (stat.S_ISREG(info.st_mode) and info.st_nlink > 1)
