"""Putting a watched place back to its baseline: refs, HEAD, the index and files."""

from __future__ import annotations

import functools
import operator
import os
import shutil
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path

from worktree_swarm.core.errors import SwarmError
from worktree_swarm.git import gitfiles, runner
from worktree_swarm.git import repo as git
from worktree_swarm.git.object_reader import ObjectReader
from worktree_swarm.guard.model import Snapshot
from worktree_swarm.guard.snapshot import SYMBOLIC, Objects, capture, changed_paths, index_path
from worktree_swarm.infra import fs

# The reflog line of a ref the guard put back (`git reflog` shows why it moved).
PUT_BACK = "swarm guard: put back"
STASH = "refs/stash"
UNDONE_PREFIX = "refs/swarm/undone/"  # what a put-back took off a ref, kept reachable


def restore_ref(root: Path, ref: str, before: str | None, after: str | None) -> bool:
    """Compare-and-swap *ref* from *after* back to *before*; False when it moved again.

    Past a stale lock file of the ref (an agent may plant `refs/heads/main.lock` right after
    it moved main, also under --sandbox): removed, and the ref put back. ``refs/stash`` is
    the stash list (its reflog): a stash pushed on top of *before* is popped off it, one
    dropped is pushed back with its message, so that the list reads as it did.
    """
    if (
        ref == STASH
        and before is not None
        and after is not None
        and _pop_stash(root, before, after)
    ):
        return True
    message = _stash_message(root, before) if ref == STASH and before else PUT_BACK
    if after is not None and after.startswith(SYMBOLIC):  # the ref itself, not its target
        if before is None:
            args = ["update-ref", "--no-deref", "-d", ref]
        else:
            args = ["update-ref", "-m", message, "--no-deref", ref, before]
    elif before is None:
        args = ["update-ref", "-d", ref, after or ""]
    else:
        args = ["update-ref", "-m", message, ref, before, *([after] if after else [])]
    res = gitfiles.past_stale_lock(root, args)
    if res.returncode != 0 and "reference broken" in res.stderr and _drop_broken(root, ref):
        res = gitfiles.past_stale_lock(root, args)
    return res.returncode == 0


def _pop_stash(root: Path, before: str, after: str) -> bool:
    """Take the stashes pushed on *before* (*after* the newest) off the list; whether done."""
    if after.startswith(SYMBOLIC) or before.startswith(SYMBOLIC):
        return False
    pushed = stash_pushed(root, before)
    if not pushed or pushed[0] != after:
        return False
    for _ in pushed:
        popped = ["reflog", "delete", "--updateref", "--rewrite", f"{STASH}@{{0}}"]
        if gitfiles.past_stale_lock(root, popped).returncode != 0:
            return False
    return git.rev_parse_in(root, STASH) == before


# How far down the stash list the stash a put-back goes back to is looked for.
_STASH_DEPTH = 32


def stash_pushed(root: Path, before: str | None) -> list[str] | None:
    """The stashes on the list above *before*, newest first (all of them when it is None).

    None when *before* is not among the last :data:`_STASH_DEPTH` entries (dropped, cleared).
    """
    said = runner.run(
        root, "reflog", "show", "--format=%H", "-n", str(_STASH_DEPTH + 1), STASH, check=False
    )
    entries = said.stdout.split() if said.returncode == 0 else []
    if before is None:
        return entries
    return entries[: entries.index(before)] if before in entries else None


def _stash_message(root: Path, stash: str) -> str:
    """The line `git stash list` shows for *stash* (its commit's subject, as git wrote it)."""
    said = runner.run(root, "log", "-1", "--format=%s", stash, "--", check=False).stdout.strip()
    return said or PUT_BACK


def undone_commits(root: Path, moves: Sequence[tuple[str, str | None, str | None]]) -> list[str]:
    """What putting *moves* back takes off them and keeps nowhere: read before the put-back.

    A ref made meanwhile loses its reflog with it, and a stash is an entry of the stash
    list: those commits, `git gc` would delete them. A branch moved back keeps its commit in
    its own reflog.
    """
    found: list[str] = []
    for ref, before, after in moves:
        if after is None or after.startswith(SYMBOLIC) or after == before:
            continue
        if ref == STASH:
            found += stash_pushed(root, before) or [after]
        elif before is None:
            found.append(after)
    return list(dict.fromkeys(found))


def keep_undone(root: Path, commits: Sequence[str]) -> list[tuple[str, str]]:
    """Keep each of *commits* reachable under :data:`UNDONE_PREFIX`; ``(ref, commit)`` made.

    Named by the commit: keeping one twice (a put-back a killed manager's guard began and
    the next command finishes) writes the same ref with the same value.
    """
    kept = []
    for commit in commits:
        name = f"{UNDONE_PREFIX}{commit}"
        if runner.run(root, "update-ref", name, commit, check=False).returncode == 0:
            kept.append((name, commit))
    return kept


def _drop_broken(root: Path, ref: str) -> bool:
    """Remove *ref*'s loose file when it holds neither an object name nor ``ref: ...``.

    An agent wrote garbage into it (also under --sandbox: `refs/` stays writable there): git
    then takes the branch for broken, refuses to update it, and fails in your checkout. Only a
    regular file under the common dir's ``refs/``; whether one was removed.
    """
    said = runner.run(root, "rev-parse", "--git-common-dir", check=False)
    if said.returncode != 0:
        return False
    common = Path(os.path.realpath(root / said.stdout.strip()))
    path = common / ref
    inside = Path(os.path.realpath(path)).is_relative_to(os.path.realpath(common / "refs"))
    if not inside or not gitfiles.broken_ref_file(path):
        return False  # not a broken one of git's: left alone
    path.unlink()
    return True


def restore_checkout(
    root: Path,
    *,
    base: Snapshot,
    now: Snapshot,
    saved_index: Path,
    scratch: Path,
    objects: Objects,
    exclude: Sequence[str],
) -> bool:
    """Make the checkout *root* its baseline *base* again; whether it now is.

    *objects*: where the captures' objects are (the baselines' and the comparisons').
    """
    reading = objects.reading()
    try:
        if (now.head_ref, now.head) != (base.head_ref, base.head):
            if base.head_ref is not None:
                git.git(root, "symbolic-ref", "HEAD", base.head_ref)
            elif base.head is not None:
                git.git(root, "update-ref", "--no-deref", "HEAD", base.head)
        if now.index != base.index and not put_index(root, saved_index):
            return False
        paths = changed_paths(root, base.tree, now.tree, reading)
        for _ in range(_NESTING):
            made = _new_repositories(root, base.tree, now.tree, paths, reading)
            if not made:
                break
            # Only the repository's git dir goes (a planted config's fsmonitor would run in
            # your next git there); what it hid is then seen, and put back, like any file.
            for rel in made:
                remove(root / rel / ".git")
            now = capture(root, scratch, objects, exclude)
            paths = changed_paths(root, base.tree, now.tree, reading)
        put_files(root, base.tree, paths, reading)
        restored = capture(root, scratch, objects, exclude)
    except (SwarmError, OSError):
        return False
    return restored == base


_NESTING = 8  # repositories made inside repositories made: undone a level at a time


def _new_repositories(
    root: Path, base: str, now: str, paths: Sequence[str], env: Mapping[str, str]
) -> list[str]:
    """The *paths* that are a repository (a gitlink) in tree *now* but not in tree *base*."""
    made = _tree_entries(root, now, paths, env)
    had = _tree_entries(root, base, paths, env)
    return [
        rel for rel, (mode, _) in made.items()
        if mode == "160000" and had.get(rel, ("",))[0] != "160000"
        and os.path.lexists(root / rel / ".git")
    ]  # fmt: skip


def new_repository_dirs(
    root: Path, base: str, now: str, paths: Sequence[str], env: Mapping[str, str]
) -> list[str]:
    """Those of :func:`_new_repositories` that are new directories: nothing of *base* in them.

    *env*: git's, to read the trees (:meth:`.snapshot.Objects.reading`); so below.
    """
    made = _new_repositories(root, base, now, paths, env)
    had = list(_tree_entries(root, base, made, env))
    return [rel for rel in made if not any(h == rel or h.startswith(f"{rel}/") for h in had)]


def move_aside(source: Path, target: Path) -> bool:
    """Move the directory *source* to *target* (made new), copied where it cannot be renamed.

    Whether *target* now holds it all; a copy leaves *source* for its caller to delete.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        source.rename(target)
    except OSError:  # another file system
        try:
            shutil.copytree(source, target, symlinks=True)
        except (OSError, shutil.Error):
            return False
    return True


def put_index(root: Path, saved: Path) -> bool:
    """Write *saved* as *root*'s index, taking git's own ``index.lock`` while doing it."""
    real = index_path(root)
    lock = real.with_name(real.name + ".lock")
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False  # a git command is running there; the next scan tries again
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(fs.read_file(saved) if saved.is_file() else b"")
        if saved.is_file():
            lock.replace(real)
        else:
            lock.unlink()
            real.unlink(missing_ok=True)
    except BaseException:
        lock.unlink(missing_ok=True)
        raise
    return True


def put_files(
    root: Path, tree: str, paths: Sequence[str], env: Mapping[str, str] | None = None
) -> None:
    """Make each of *paths* under *root* what it is in *tree* (absent paths are deleted).

    A file is replaced atomically (written aside, then renamed over), so a reader never
    finds it missing or half-written.
    """
    entries = _tree_entries(root, tree, paths, env)
    dirs: set[Path] = set()
    # One `cat-file --batch` for every blob restored, not a process per file.
    with ObjectReader(root, env=env) as objects:
        for rel in paths:
            target = root / rel
            entry = entries.get(rel)
            if entry is None or (target.is_dir() and not target.is_symlink()):
                remove(target)
            if entry is None:
                dirs.add(target.parent)
            elif entry[0] != "160000":  # a submodule's commit is not ours to check out
                target.parent.mkdir(parents=True, exist_ok=True)
                put_file(target, mode=entry[0], data=objects.read(entry[1]))
    for directory in sorted(dirs, key=lambda d: len(d.parts), reverse=True):
        prune_empty(directory, root)


def open_up(root: Path, tree: str, env: Mapping[str, str] | None = None) -> list[str]:
    """Give the owner back what they need of each path of *tree* under *root*: the paths.

    A file or directory an agent made unreadable to you (`chmod 000`) fails every git
    command of yours there, and the guard's comparison too. git records no permission bit
    but a file's executable one, so those the owner lost are given back (read and write, and
    search for a directory); what group and others lost is not known, and not given.
    """
    args = ("ls-tree", "-r", "-t", "-z", "--full-tree", "--name-only", tree)
    listed = runner.run_bytes(root, *args, env=env)
    top = Path(os.path.realpath(root))
    opened = []
    for name in listed.stdout.split(b"\0"):  # a directory before what it holds
        path = root / os.fsdecode(name)
        try:
            mode = path.lstat().st_mode
        except OSError:  # gone, or inside a directory still closed
            continue
        need = _DIR_OWNER if stat.S_ISDIR(mode) else _FILE_OWNER
        if not need & ~mode or not Path(os.path.realpath(path.parent)).is_relative_to(top):
            continue  # as it should be, or reached through a link out of the checkout
        if fs.set_mode(path, functools.partial(operator.or_, need), dirs=True):
            opened.append(os.fsdecode(name))
    return opened


_FILE_OWNER = stat.S_IRUSR | stat.S_IWUSR
_DIR_OWNER = stat.S_IRWXU


def remove(target: Path) -> None:
    """Delete *target*, a file, a symlink or a whole directory."""
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif os.path.lexists(target):
        target.unlink()


def put_file(target: Path, *, mode: str, data: bytes, bits: int | None = None) -> None:
    """Write *data* to *target* atomically as a git *mode* (or with exact permission *bits*)."""
    aside = target.with_name(f".{target.name}.swarm-restore")
    remove(aside)
    if mode == "120000":
        aside.symlink_to(os.fsdecode(data))
    else:
        # A file rewritten in place keeps its permission bits; a new one gets the umask's.
        kept = bits
        if kept is None and target.is_file() and not target.is_symlink():
            kept = stat.S_IMODE(target.stat().st_mode)
        aside.write_bytes(data)
        if bits is None:
            bits = stat.S_IMODE(aside.stat().st_mode) if kept is None else kept
            bits = bits | (bits & 0o444) >> 2 if mode == "100755" else bits & ~0o111
        aside.chmod(bits)
    aside.replace(target)


def prune_empty(directory: Path, root: Path) -> None:
    """Remove *directory* and its parents up to *root* while they are empty."""
    while directory != root and directory.is_relative_to(root):
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent


def _tree_entries(
    root: Path, tree: str, paths: Sequence[str], env: Mapping[str, str] | None = None
) -> dict[str, tuple[str, str]]:
    if not paths:
        return {}
    literal = (f":(literal){path}" for path in paths)  # a name may hold `*` or `?`
    records = b"".join(
        runner.run_bytes(
            root, "ls-tree", "-r", "-z", "--full-tree", tree, "--", *batch, env=env
        ).stdout
        for batch in git.in_batches(literal)
    )
    entries = {}
    for record in records.split(b"\0"):
        if not record:
            continue
        meta, _, rel = record.partition(b"\t")
        mode, _kind, sha = meta.decode().split(" ")
        entries[os.fsdecode(rel)] = (mode, sha)
    return entries
