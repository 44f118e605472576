"""Remove worktrees and branches, forget worktrees that are gone, save files before removal.

A forced removal deletes a worktree swarm made without git where it can (its index aside
first, so one killed half-way is never read as deletions); one left to git is recorded first
(:mod:`.removing`), and finished by :func:`finish_interrupted`; ``prune_gone`` keeps a worktree
that is only unreadable; ``snapshot_files`` saves files as a commit before swarm removes or
resets them (not one whose filter swarm's git never runs, one holding a secret's value, nor a
repository inside).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from worktree_swarm.core.text import path_text
from worktree_swarm.git import quarantine, removing, runner
from worktree_swarm.git.checkpoints import embedded_repos
from worktree_swarm.git.gitfiles import REMOVING_INDEX
from worktree_swarm.git.repo import Repo, git, in_batches, repo_lock
from worktree_swarm.git.staged import (
    SECRETS_LEFT_OUT,
    disk_blobs,
    filtered_on_disk,
    holding_secrets,
    keep_note,
    named_blobs,
)
from worktree_swarm.git.worktrees import REGISTRATIONS, linked_admin
from worktree_swarm.infra import fs


def remove_worktree(repo: Repo, path: Path, *, force: bool = False) -> None:
    """Remove the worktree at *path* (its branch stays).

    Without *force*, git refuses when the worktree has uncommitted or untracked files.
    A worktree whose directory is already gone is just unregistered.
    """
    args = ["worktree", "remove", *(["--force"] if force else []), "--", str(path.absolute())]
    # A `git worktree remove` that fails half-way (a directory a tool made read-only) still
    # unregisters the worktree and leaves the rest of its files behind.
    fs.make_removable(path)
    with repo_lock(repo):
        # Forced, without git where it can: git deletes the files before the index, and a
        # removal killed in between left a checkout whose next checkpoint commits deletions.
        if not (force and delete_locked(repo, path)):
            with removing.recorded(repo, path):  # git deletes the files before the index
                git(repo.root, *args)


def delete_locked(repo: Repo, path: Path) -> bool:
    """Delete the linked worktree *path* and its registration, as `git worktree remove` does.

    Without git, whose `worktree remove` runs a `git status` of its own: for a worktree the
    caller found clean (or removes by force) under the repository lock. Nothing is touched,
    and the answer is False, when git must do it: *path* is a symlink, the worktree is locked,
    has submodules, or its files are not laid out as git writes them. The index goes aside
    first: a removal killed half-way then reads as a checkout never populated, which a
    checkpoint repopulates from HEAD instead of committing the missing files as deletions. A
    removal that fails having deleted none of them (a read-only file system) puts it back, so
    git sees them as they were. The files go next and the ``.git`` file after them (so that a
    half-deleted directory is still known as this worktree), the registration last (a crash
    before it leaves it prunable, as git would).
    """
    admin = None if path.is_symlink() else linked_admin(repo, path)
    if admin is None or (admin / "locked").exists() or (admin / "modules").exists():
        return False
    index, aside = admin / "index", admin / REMOVING_INDEX
    with contextlib.suppress(FileNotFoundError):
        index.replace(aside)
    try:
        try:
            _delete_files(path)
        except PermissionError:  # a directory a tool made read-only (not for root)
            fs.make_removable(path)
            _delete_files(path)
    except OSError:
        _index_back(path, index, aside)
        raise
    (path / ".git").unlink()
    path.rmdir()
    with REGISTRATIONS:
        fs.remove_tree(admin)
    return True


def git_remove_locked(repo: Repo, path: Path, *, force: bool, submodules: bool = False) -> None:
    """`git worktree remove` of *path* (twice ``--force`` with *force*: even a locked one).

    *submodules*: its checked-out submodules were found to hold nothing to keep; git removes
    a worktree with submodules only with ``--force`` (once: a locked one stays). For a caller
    that holds the repository lock, in any of its threads: git reads every registration, so
    it runs while no other thread deletes one. Recorded while git runs (:mod:`.removing`): git
    deletes the files first and the index last, with the admin dir.
    """
    fs.make_removable(path)
    flags = ["--force", "--force"] if force else ["--force"] if submodules else []
    with REGISTRATIONS, removing.recorded(repo, path):
        git(repo.root, "worktree", "remove", *flags, "--", str(path))


def finish_interrupted(repo: Repo, path: Path, admin: Path) -> None:
    """Delete the worktree *path* a killed swarm was removing, registered as *admin*.

    What :func:`removing.interrupted` found: none of its files is work, and none is looked at.
    As git would have gone on: its files, its ``.git`` file after them, the registration next
    and the record last, so that a finish killed in turn is finished the same way. For a
    caller holding the repository lock.
    """
    if path.is_dir() and not path.is_symlink():  # git may have deleted all of it
        fs.make_removable(path)
        _delete_files(path)
        (path / ".git").unlink(missing_ok=True)
        path.rmdir()
    with REGISTRATIONS:
        fs.remove_tree(admin)
    removing.forget(removing.record_of(repo, admin), admin)


def finish_if_interrupted(repo: Repo, path: Path) -> bool:
    """Finish the removal of the worktree *path* a killed swarm began; whether there was one.

    Its missing files are that removal's deletions, never work: nothing in it is committed
    or looked at (:func:`finish_interrupted`). Takes the repository lock.
    """
    if removing.interrupted(repo, path) is None:  # the usual case, without the lock
        return False
    with repo_lock(repo):
        admin = removing.interrupted(repo, path)
        if admin is None:
            return False
        finish_interrupted(repo, path, admin)
    return True


def _index_back(path: Path, index: Path, aside: Path) -> None:
    """Put the index *aside* back as *index* unless a file it tracks is gone from *path*."""
    with contextlib.suppress(FileNotFoundError):
        aside.replace(index)
        gone = runner.run(path, "ls-files", "--deleted", "-z", check=False)
        if gone.returncode != 0 or gone.stdout:
            index.replace(aside)


def _delete_files(path: Path) -> None:
    """Delete everything in the directory *path* but its ``.git`` file."""
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.name == ".git":
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                Path(entry.path).unlink()


def delete_branch(repo: Repo, branch: str, *, force: bool = False) -> None:
    """Delete *branch*; without *force*, git refuses when it is not merged into HEAD."""
    with repo_lock(repo):
        git(repo.root, "branch", "-D" if force else "-d", "--", branch)


def prune(repo: Repo) -> None:
    """Forget worktrees whose directories are gone."""
    with repo_lock(repo):
        prune_gone(repo)


# Where a pruned worktree's note of the files left out for a secret is kept (by its path).
KEPT_NOTES = "swarm/left-out"


def kept_note(repo: Repo, path: Path) -> Path:
    """Where :func:`prune_gone` keeps the note of the worktree that was at *path*."""
    key = hashlib.sha256(os.fsencode(os.path.realpath(path))).hexdigest()[:32]
    return repo.common_dir / KEPT_NOTES / key


# The reason in git's ``locked`` file of a worktree held over swarm's prune.
_HELD = "swarm: held over a prune (its directory cannot be read)"


def prune_gone(repo: Repo) -> None:
    """``git worktree prune``, keeping the registration of a worktree that is only unreadable.

    Git takes a worktree whose ``.git`` it may not look at (an agent's ``chmod 0 .``) for gone
    and forgets it; its files are there and may be work. Each such one is locked for the prune
    (git's ``locked`` file) and unlocked after; a lock a killed prune left is taken off first.
    One whose ``.git`` file alone is gone is pruned with its admin dir: the note there of the
    files its checkpoints left out for a secret is kept first (:func:`kept_note`), for the
    rescue of the files its directory still holds; held over the prune when it cannot be
    (a full disk). Call under the repository lock.
    """
    held: list[Path] = []
    admins = repo.common_dir / "worktrees"
    try:
        for admin in sorted(admins.iterdir()) if admins.is_dir() else []:
            lock = admin / "locked"
            with contextlib.suppress(OSError):
                if fs.read_file(lock).decode(errors="replace") == _HELD:
                    lock.unlink()
            with contextlib.suppress(OSError):
                top = Path(os.fsdecode(fs.read_file(admin / "gitdir")).strip()).parent
                sealed, kept = fs.sealed(top), True
                if not sealed and top.is_dir() and not os.path.lexists(top / ".git"):
                    kept = keep_note(admin / SECRETS_LEFT_OUT, kept_note(repo, top))
                if sealed or not kept:  # held: pruned once its note can be kept
                    with lock.open("x", encoding="utf-8") as out:
                        held.append(lock)  # made: taken off after, however its write ends
                        out.write(_HELD)
        git(repo.root, "worktree", "prune")
    finally:
        for lock in held:
            lock.unlink(missing_ok=True)


_UNSTAGE = ["rm", "-r", "-q", "-f", "--cached", "--ignore-unmatch", "--"]
RESCUE_PREFIX = "refs/swarm/rescued/"  # files saved before swarm removes or resets them


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A rescue's commit (None: nothing to save) and the paths it left out, by why."""

    sha: str | None
    filtered: tuple[str, ...] = ()  # each with its filter
    embedded: tuple[str, ...] = ()  # repositories of their own
    secret: tuple[str, ...] = ()  # holding a secret's value

    @property
    def left_out(self) -> tuple[str, ...]:
        """Every path left out: the directory holding them must be kept."""
        return (*self.filtered, *self.embedded, *self.secret)

    def left_out_text(self) -> str:
        """What the user is told of the paths left out ("" when none were)."""
        said = []
        if self.filtered:
            said.append(
                f"left out {', '.join(self.filtered)}: their filter comes from the "
                "repository's own config, which swarm's git never runs (saved, they would be "
                "unfiltered, a git-crypt file in the clear)"
            )
        if self.embedded:
            said.append(
                f"left out {', '.join(self.embedded)}: each a repository of its own (saved, "
                "it would be its commit's id alone, its files and commits in no repository "
                "of yours)"
            )
        if self.secret:
            said.append(
                f"left out {', '.join(self.secret)}: each holds the value of a secret, which "
                "swarm never commits"
            )
        return "; ".join(said)


def snapshot_files(
    repo: Repo, path: Path, *, message: str, parent: str | None = None, note: Path | None = None
) -> Snapshot:
    """Commit every non-ignored file under *path* into *repo* (no ref).

    Through an index of its own: *path*'s index (a worktree's, maybe half-merged) is not
    touched. With *parent*, the commit is its child (`git diff` shows what *path* changed).
    A file whose filter swarm's git never runs is saved only as *parent* (or, without one,
    the repository's HEAD) has it, else left out and named; so is a repository of its own
    inside *path* (not a declared submodule), whose commits a gitlink would not save, and a
    file holding the value of a secret (:func:`staged.holding_secrets`; also one *note* names,
    a worktree's record of what its checkpoints left out so). The `add` hashes into
    an object store of its own (:func:`quarantine.apart`): only what the commit holds moves
    into the repository's, a file left out is in no object of yours.
    """
    with quarantine.apart(repo.root, repo.common_dir) as store:
        committing = {
            "GIT_INDEX_FILE": str(store.index),  # gone with the store, even killed half-way
            "GIT_AUTHOR_NAME": "worktree-swarm", "GIT_AUTHOR_EMAIL": "swarm@localhost",
            "GIT_COMMITTER_NAME": "worktree-swarm", "GIT_COMMITTER_EMAIL": "swarm@localhost",
            # `write-tree` rewrites the index: none of your split index's shared ones deleted.
            **quarantine.keeping_shared_indexes(),
        }  # fmt: skip
        env = {**committing, **store.env}  # staging: hashed apart
        # Git reads the config of *repo* (--git-dir), so the runner's overrides are computed
        # there, never from what *path*'s own `.git` names (or, removed, from nothing).
        base = ["-C", str(path), f"--git-dir={repo.common_dir}", f"--work-tree={path}"]
        root = repo.root
        filtered = filtered_on_disk(root, path, base=base, env=env)
        # On its input, NUL-separated: an LFS checkout's thousands of files exceed ARG_MAX.
        specs = [".", *(f":(exclude,literal,top){name}" for name, _ in filtered)]
        args = ("add", "--all", "--verbose", "--pathspec-from-file=-", "--pathspec-file-nul")
        added = runner.run_names(root, *base, *args, env=env, input_text="\0".join(specs) + "\0")
        embedded = embedded_repos(path, added.stdout)
        for literal in in_batches(f":(literal,top){name}" for name in embedded):
            runner.run(root, *base, *_UNSTAGE, *literal, env=env)
        secret = _leave_out_secrets(root, base, env, parent, note)
        left = Snapshot(None, _put_filtered(repo, path, base, env, parent, filtered),
                        tuple(path_text(name) for name in embedded),
                        tuple(path_text(name) for name in secret))  # fmt: skip
        if not runner.run(root, *base, "ls-files", "-z", env=env).stdout:
            return left
        # What the index still names, when it left out something `add` hashed.
        store.move_in(named_blobs(root, env=env, base=base, against=parent) if secret else None)
        # Into the repository's store, now holding every object the index names.
        tree = runner.run(root, *base, "write-tree", env=committing).stdout.strip()
        parents = ["-p", parent] if parent else []
        sha = runner.run(
            root, *base, "commit-tree", "--no-gpg-sign", *parents, "-m", message, tree,
            env=committing,
        ).stdout.strip()  # fmt: skip
        return dataclasses.replace(left, sha=sha)


def _leave_out_secrets(
    root: Path, base: list[str], env: dict[str, str], parent: str | None, note: Path | None
) -> list[str]:
    """Unstage the files :func:`holding_secrets` finds (as *parent* has them, or wholly); them."""
    secret = holding_secrets(root, env=env, base=base, against=parent, note=note)
    for literal in in_batches(f":(literal,top){name}" for name in secret):
        undo = ["reset", "-q", parent, "--"] if parent else _UNSTAGE
        runner.run(root, *base, *undo, *literal, env=env)
    return secret


def _put_filtered(
    repo: Repo,
    path: Path,
    base: list[str],
    env: dict[str, str],
    parent: str | None,
    filtered: Sequence[tuple[str, str]],
) -> tuple[str, ...]:
    """Stage the *filtered* files (left out of the `add`) as *parent* has them; the changed ones.

    As checkpoints do: hashed as it is on disk, without its clean filter, a git-crypt file
    would be saved in the clear. With *parent*, each goes in as *parent* has it; without
    one, only one the repository's HEAD holds as it is on disk (hashed, never stored).
    Returns those *parent* (or HEAD) does not hold as they are, each with its filter.
    """
    if not filtered:
        return ()
    root = repo.root
    head = "" if parent else git(root, "rev-parse", "-q", "--verify", "HEAD^{commit}", check=False)
    against = parent or head.strip()
    held = _blobs(root, base, against, [name for name, _ in filtered])
    # A file hashed as `add` would (a name with a newline, or not a file: taken for changed).
    hashed = disk_blobs(root, path, [n for n, _ in filtered if n in held], base=base, env=env)
    same = {name for name, sha in hashed.items() if held[name] == sha}
    put = [name for name, _ in filtered] if parent else sorted(same)
    for literal in in_batches(f":(literal,top){name}" for name in put):
        runner.run(root, *base, "reset", "-q", against, "--", *literal, env=env)
    return tuple(f"{path_text(name)} (filter {driver})" for name, driver in filtered
                 if name not in same)  # fmt: skip


def _blobs(root: Path, base: list[str], commit: str, names: Sequence[str]) -> dict[str, str]:
    """The blob *commit* holds at each of *names* it has (none when *commit* is "")."""
    if not commit:
        return {}
    found: dict[str, str] = {}
    for batch in in_batches(f":(literal,top){name}" for name in names):
        args = ("ls-tree", "-z", "--full-tree", "-r", commit, "--", *batch)
        for record in runner.run_bytes(root, *base, *args).stdout.split(b"\0"):
            meta, _, name = record.partition(b"\t")
            fields = meta.split()  # mode type id
            if len(fields) == 3 and fields[1] == b"blob":  # noqa: PLR2004
                found[os.fsdecode(name)] = fields[2].decode()
    return found
