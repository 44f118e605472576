"""Swarm's record of a worktree removal it leaves to `git worktree remove`, for a crash.

git deletes the files first and the admin dir last: a swarm killed in between leaves a
registered worktree whose index still lists files that are gone, which a checkpoint would
commit as deletions. Before git starts, swarm writes a random token into the worktree's admin
dir and the same token, with the worktree's path, under its own state dir
(``.git/swarm/removing/<admin dir name>``, out of a sandboxed agent's sight); both go once git
is done. A worktree both name alike is one a killed swarm was removing: its missing files are
swarm's deletions, never work (:func:`interrupted`). A record without its token in the admin
dir (a worktree made again under that name since) names nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from worktree_swarm.git.repo import Repo
from worktree_swarm.git.worktrees import admin_of
from worktree_swarm.infra import fs

DIR = "removing"  # under the state dir: one record per admin dir name
TOKEN = "swarm-removing"  # noqa: S105 - a file in the admin dir, naming the record


def interrupted(repo: Repo, path: Path) -> Path | None:
    """The admin dir of the worktree *path* when a killed swarm was removing it, else None.

    Its record names *path* and a token its admin dir (registered at *path*) holds too.
    """
    records = repo.state_dir / DIR
    try:
        names = [entry.name for entry in records.iterdir()]
    except OSError:
        return None  # the usual case: no removal was ever cut short
    real = os.path.realpath(path)
    for name in names:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            record = json.loads(_read(records / name))
            if record["path"] != real:
                continue
            admin = repo.common_dir / "worktrees" / name
            gitdir = os.fsdecode(fs.read_file(admin / "gitdir")).strip()
            token = _read(admin / TOKEN).decode()
            same = os.path.realpath(Path(gitdir).parent) == real
            if same and secrets.compare_digest(token, record["token"]):
                return admin
    return None


@contextlib.contextmanager
def recorded(repo: Repo, path: Path) -> Iterator[None]:
    """Record, while the block runs, that swarm removes the registered worktree *path*.

    A record a killed swarm left for it is kept as it is (a block killed in turn is finished
    just the same). Forgotten after the block, but not when it fails on such a record's
    worktree, still registered: git refuses before it deletes anything, a removal begun before
    has deleted files already.
    """
    found = interrupted(repo, path)
    named = admin_of(repo, path)
    admin = found or (Path(named) if named is not None else None)
    if admin is None:  # not registered: git has no files of a worktree to delete
        yield
        return
    record = record_of(repo, admin)
    if found is None:
        token = secrets.token_hex(16)
        record.parent.mkdir(parents=True, exist_ok=True)
        _write_new(admin / TOKEN, token)  # first: a token alone names nothing
        _write_new(record, json.dumps({"path": os.path.realpath(path), "token": token}))
    try:
        yield
    except BaseException:
        if found is None or not admin.exists():
            forget(record, admin)
        raise
    forget(record, admin)


def sweep(repo: Repo) -> None:
    """Delete the records that name no removal any more.

    A swarm killed after git's removal was done leaves its record with no admin dir; one
    whose worktree was made again since (by you, under that name) with an admin dir that holds
    another token or none. A token no record names, and a write killed before its rename, go
    too. For a caller holding the repository lock, which every removal is recorded under.
    """
    records = repo.state_dir / DIR
    try:
        paths = list(records.iterdir())
    except FileNotFoundError:  # none made: the admin dirs' tokens name nothing
        paths = []
    except OSError:  # not to be read: which tokens name a record is not known
        return
    for path in paths:
        if path.name.endswith(".tmp") or _names_nothing(repo, path):
            with contextlib.suppress(OSError):  # one that cannot go keeps no other
                path.unlink(missing_ok=True)
    try:
        admins = list((repo.common_dir / "worktrees").iterdir())
    except OSError:
        admins = []
    for admin in admins:
        for left in admin.glob(f"{TOKEN}*"):
            if left.name != TOKEN or not record_of(repo, admin).exists():
                with contextlib.suppress(OSError):
                    left.unlink(missing_ok=True)


def _names_nothing(repo: Repo, record: Path) -> bool:
    """Whether *record* names no removal: garbage, or its admin dir lacks its token."""
    try:
        token = json.loads(_read(record))["token"]
        if not isinstance(token, str):
            return True
    except (ValueError, KeyError, TypeError):
        return True
    except OSError:
        return False  # unreadable here: left as it is
    try:
        held = _read(repo.common_dir / "worktrees" / record.name / TOKEN).decode()
    except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
        return True
    except OSError:
        return False
    return held != token


def forget(record: Path, admin: Path) -> None:
    """Delete the *record* of a removal, then its token in *admin* (if that is still there)."""
    record.unlink(missing_ok=True)
    (admin / TOKEN).unlink(missing_ok=True)


def record_of(repo: Repo, admin: Path) -> Path:
    """Where the record of a removal of the worktree whose admin dir is *admin* is kept."""
    return repo.state_dir / DIR / admin.name


def _read(path: Path) -> bytes:
    """The bytes of the regular file *path*, never read through a symlink."""
    with fs.open_file(path, follow=False) as fh:
        return fh.read()


def _write_new(path: Path, text: str) -> None:
    """Write *text* as the file *path*: aside, then renamed over (never through a symlink)."""
    aside = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        aside.replace(path)
    except BaseException:
        aside.unlink(missing_ok=True)
        raise
