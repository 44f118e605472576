"""Create and list worktrees.

Creation is two-phase: git's metadata step (branch, ``worktrees/<name>`` admin dir) runs under
the repository lock, because concurrent ``git worktree add`` on one repository races
(``failed to read .../commondir``, ``could not lock config file``); the expensive checkout then
runs in parallel outside the lock, since it only writes the new worktree and its own index.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from worktree_swarm.core.errors import BadInputError, CommandError, GitError
from worktree_swarm.core.paths import real_path
from worktree_swarm.core.text import one_line, without_escapes
from worktree_swarm.git import runner, sparse
from worktree_swarm.git.branches import branch_exists, branches
from worktree_swarm.git.gitfiles import populate
from worktree_swarm.git.repo import (
    Repo,
    commit_of,
    git,
    git_dir,
    repo_lock,
)
from worktree_swarm.infra import fs

# What a new run's worktree in the way most likely is: an earlier run's, killed or not cleaned.
_NEXT_STEP = "run `swarm resume` to continue that run or `swarm clean` to remove it"


class InTheWayError(BadInputError):
    """A branch or path a new worktree needs is there already.

    *what* names it; *fix* says how to clear it, for a caller (`swarm resume`, `swarm retry`)
    that words the rest: the message alone advises a new run.
    """

    def __init__(self, what: str, *, fix: str) -> None:
        super().__init__(f"{what}; {_NEXT_STEP}")
        self.what = what
        self.fix = fix


def _branch_exists(branch: str) -> InTheWayError:
    return InTheWayError(
        f"branch {branch} already exists",
        fix=f"if it holds nothing you need, delete it (`git branch -D {branch}`)",
    )


def _registered(path: Path) -> InTheWayError:
    return InTheWayError(
        f"{path} is still registered as a worktree",
        fix=f"remove that worktree (`git worktree remove --force {path}`, or `git worktree"
        " prune` once its directory is gone)",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class WorktreeInfo:
    """One entry of ``git worktree list``."""

    path: Path
    head: str | None
    branch: str | None
    locked: str | None  # the reason, as one printable line (anyone can write it)
    prunable: str | None
    is_main: bool


def _reason(text: str | None) -> str | None:
    """A lock's reason as one printable line: no terminal escape of an agent's reaches you."""
    if text is None:
        return None
    return one_line(without_escapes(text), controls=True, limit=_REASON_LIMIT)


_REASON_LIMIT = 200


def list_worktrees(repo: Repo) -> list[WorktreeInfo]:
    """Return every worktree of *repo*, the main one first."""
    # Unlocked, `worktree list` can catch a concurrent `worktree add` half-way and fail.
    if not repo.state_dir.is_dir():
        # No swarm ever worked here (the lock lives in its state dir): nothing to wait for,
        # and a look (`swarm doctor`, `swarm clean`) creates nothing.
        return list_worktrees_locked(repo)
    with repo_lock(repo):
        return list_worktrees_locked(repo)


def list_worktrees_locked(repo: Repo) -> list[WorktreeInfo]:
    """Like :func:`list_worktrees`, for a caller that already holds the repository lock."""
    with REGISTRATIONS:
        listed = runner.run_bytes(repo.root, "worktree", "list", "--porcelain", "-z").stdout
    out = os.fsdecode(listed)  # a path that is not UTF-8 keeps its bytes: it names the directory
    infos = []
    for index, record in enumerate(_parse_records(out)):
        branch = record.get("branch")
        infos.append(
            WorktreeInfo(
                path=Path(record["worktree"]),
                head=record.get("HEAD"),
                branch=branch.removeprefix("refs/heads/") if branch else None,
                locked=_reason(record.get("locked")),
                prunable=record.get("prunable"),
                is_main=index == 0,
            )
        )
    return infos


_ON_BRANCH = "ref: refs/heads/"  # a HEAD file on a branch

# Threads that remove worktrees side by side (each under the caller's repository lock) take
# this around what reads every registration or deletes one: git lists every admin dir and
# dies ("Invalid path") on one deleted while it reads them.
REGISTRATIONS = threading.Lock()


def registration_locked(repo: Repo, path: Path) -> WorktreeInfo | None:
    """*path*'s entry of :func:`list_worktrees_locked` (None: not registered).

    A linked worktree on a branch is read from its own admin dir (its ``.git`` file names it,
    its ``gitdir`` names the worktree back), without listing every worktree: removing each
    of N worktrees would otherwise list all N each time. ``head`` is then left unknown
    (None). Anything else (the main checkout, a detached HEAD, files git would not write) is
    looked up in git's full listing.
    """
    admin = linked_admin(repo, path)
    with contextlib.suppress(OSError, UnicodeDecodeError):
        head = "" if admin is None else fs.read_text(admin / "HEAD")
        if admin is not None and head.startswith(_ON_BRANCH):
            lock = admin / "locked"
            locked = _reason(fs.read_text(lock)) if lock.exists() else None
            branch = head.removeprefix(_ON_BRANCH).strip()
            return WorktreeInfo(
                path=path, head=None, branch=branch, locked=locked, prunable=None, is_main=False
            )
    real = real_path(path)
    infos = list_worktrees_locked(repo)
    found = next((w for w in infos if w.path == path), None)
    return found or next((w for w in infos if real_path(w.path) == real), None)


def admin_of(repo: Repo, path: Path) -> str | None:
    """``<common>/worktrees/<name>`` of the worktree registered at *path* (gone or not)."""
    admin = repo.common_dir / "worktrees"
    for entry in admin.iterdir() if admin.is_dir() else []:
        with contextlib.suppress(OSError):
            named = Path(os.fsdecode(fs.read_file(entry / "gitdir")).strip())
            if real_path(named.parent) == real_path(path):
                return str(entry)
    return None


def linked_admin(repo: Repo, path: Path) -> Path | None:
    """*path*'s admin dir when it is a linked worktree of *repo* laid out as git writes it.

    Its ``.git`` file names ``<common dir>/worktrees/<name>``, whose ``gitdir`` names that
    ``.git`` file back and whose ``commondir`` names *repo*'s. None otherwise (the main
    checkout, a missing or foreign ``.git``, a ``commondir`` pointed at another repository).
    """
    try:
        admin = git_dir(path)
        back = fs.read_text(admin / "gitdir").strip()
    except (OSError, GitError, UnicodeDecodeError):
        return None
    if admin.parent != worktrees_dir(repo.common_dir) or other_common(repo, admin):
        return None
    return admin if real_path(admin / back) == real_path(path / ".git") else None


def other_common(repo: Repo, admin: Path) -> bool:
    """Whether the admin dir *admin* (under *repo*'s ``worktrees/``) names another common dir.

    git writes ``../..``; rewritten, git in the worktree reads another repository's config
    and commits into it (a checkpoint onto a branch of a repository of yours).
    """
    try:
        named = fs.read_text(admin / "commondir").strip()
    except (OSError, UnicodeDecodeError):
        return True  # without it git takes the admin dir for a repository of its own
    return named != "../.." and real_path(admin / named) != real_path(repo.common_dir)


@functools.lru_cache(maxsize=8)
def worktrees_dir(common: Path) -> Path:
    """The directory of linked worktrees' admin dirs in *common*, resolved."""
    return real_path(common / "worktrees")


def _parse_records(out: str) -> list[dict[str, str]]:
    """Parse NUL-separated ``key value`` records split by an empty field (``-z`` porcelain)."""
    records: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for field in out.split("\0"):
        if not field:
            if current:
                records.append(current)
            current = {}
            continue
        key, _, value = field.partition(" ")
        current[key] = value
    if current:
        records.append(current)
    return records


def preflight(
    repo: Repo,
    items: Sequence[tuple[str, Path]],
    *,
    next_step: Callable[[str], str | None] | None = None,
) -> None:
    """Raise BadInputError unless every ``(branch, path)`` can be created without clobbering.

    *next_step* says, for a branch a recorded run owns, what to do about it.
    """
    # Without a state dir no swarm process has touched this repository, so the list needs no
    # lock; taking it would create files before validation has finished (bad input creates nothing).
    infos = list_worktrees(repo) if repo.state_dir.exists() else list_worktrees_locked(repo)
    registered = {real_path(info.path) for info in infos}
    existing = branches(repo)  # one listing, not a git process per task
    # git keeps a branch as a file: `swarm/a` cannot be made beside a branch `swarm` (or
    # `swarm/a/b`), whose name would need a folder (a file) of the same name.
    folders = {name.rsplit("/", i)[0] for name in existing for i in range(1, name.count("/") + 1)}
    seen_branches: set[str] = set()
    seen_paths: set[Path] = set()
    for branch, path in items:
        if branch in seen_branches:
            raise BadInputError(f"branch {branch} is requested twice")
        other = _clashing(branch, existing, folders)
        if other is not None:
            raise BadInputError(
                f"branch {branch} cannot be made while branch {other} exists (git keeps a "
                f"branch name as a file path); rename it with `git branch -m {other} NEW-NAME`"
            )
        if real_path(path) in seen_paths:
            raise BadInputError(f"worktree {path} is requested twice")
        seen_branches.add(branch)
        seen_paths.add(real_path(path))
        try:
            _check_free(repo, branch, path, registered, existing=existing)
        except BadInputError as exc:
            what = exc.what if isinstance(exc, InTheWayError) else str(exc)
            step = next_step(branch) if next_step is not None else None
            holder = next((i for i in infos if i.branch == branch), None)
            if step is None and what.startswith("branch") and holder is not None:
                # git refuses to delete the branch a checkout is on (yours, or a worktree).
                step = (
                    f"no swarm run records it, and the checkout {holder.path} is on it; switch"
                    " that checkout to another branch (or remove that worktree), then"
                    f" `git branch -D {branch}`"
                )
            elif step is None and what.startswith("branch"):
                step = f"no swarm run records it; delete it with `git branch -D {branch}`"
            step = step or "no swarm run records it; move it aside"
            step += " (or give the task another id)"
            raise BadInputError(f"{what}: {step}") from None


def _clashing(branch: str, existing: set[str], folders: set[str]) -> str | None:
    """The existing branch whose name leaves no room for *branch* (a folder of it, or in it)."""
    parts = branch.split("/")
    above = ("/".join(parts[:i]) for i in range(1, len(parts)))
    found = next((name for name in above if name in existing), None)
    if found is None and branch in folders:
        found = min(name for name in existing if name.startswith(branch + "/"))
    return found


def in_the_way(path: Path) -> BadInputError:
    """Why *path* cannot become a worktree: something is there (a link: not swarm's to remove)."""
    if path.is_symlink():
        return BadInputError(
            f"{path} is a symbolic link, which swarm never makes there and `swarm clean` leaves"
            " alone: remove it yourself, then run again"
        )
    return InTheWayError(f"{path} already exists", fix="move it aside")


def _check_free(
    repo: Repo, branch: str, path: Path, registered: set[Path], *, existing: set[str] | None = None
) -> None:
    if (branch in existing) if existing is not None else branch_exists(repo, branch):
        raise _branch_exists(branch)
    if os.path.lexists(path):
        raise in_the_way(path)
    if real_path(path) in registered:
        raise _registered(path)


def check_free(repo: Repo, branch: str) -> None:
    """InTheWayError when *branch* is there already (someone else's: never swarm's).

    Asked before a Ray creation's intent is recorded, so that what was found there is never
    taken for the task's own, half-made, by a manager that resumes it.
    """
    if branch_exists(repo, branch):
        raise _branch_exists(branch)


def check_path_free(path: Path) -> None:
    """InTheWayError (BadInputError) when something is at *path* already (no git run)."""
    if os.path.lexists(path):
        raise in_the_way(path)


def create_worktree(
    repo: Repo, *, path: Path, branch: str, start: str, cone: sparse.Cone | None = None
) -> None:
    """Create *path* checked out on a new *branch* at *start* (no upstream).

    Safe to call from many threads and processes at once. On any failure, whatever was
    half-made (branch, admin dir, directory) is removed before the error propagates.
    Raises BadInputError when *branch* or *path* already exists. With *cone* only its
    directories are checked out (:mod:`worktree_swarm.git.sparse`).
    """
    path = path.absolute()
    commit = commit_of(repo, start)
    if commit is None:
        raise GitError(f"cannot create worktree {path}: {start!r} is not a commit")
    if os.path.lexists(path):
        raise in_the_way(path)
    _new_branch(repo, branch, commit, start)
    with repo_lock(repo):
        if os.path.lexists(path):  # made meanwhile, by someone else: not ours to remove
            git(repo.root, "update-ref", "-d", f"refs/heads/{branch}", commit, check=False)
            raise in_the_way(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _add(repo, path, branch)
        except BadInputError:  # registered already, by someone else: the branch is ours
            git(repo.root, "update-ref", "-d", f"refs/heads/{branch}", commit, check=False)
            raise
        except BaseException as exc:
            _discard_locked(repo, path=path, branch=branch, commit=commit)
            if isinstance(exc, OSError):
                raise GitError(f"cannot create worktree {path}: {exc.strerror or exc}") from exc
            raise
    try:
        # Touches only the new worktree and its private index, so it runs outside the lock.
        # Unlike `reset --hard` it writes no ref, reflog or ORIG_HEAD.
        populate(path, cone)
    except BaseException:
        with repo_lock(repo):
            _discard_locked(repo, path=path, branch=branch, commit=commit)
        raise


def _add(repo: Repo, path: Path, branch: str) -> None:
    """Register *path* on *branch*, unpopulated; BadInputError when it is registered already."""
    if _register(repo, path, branch):
        return
    try:
        # --no-checkout keeps the lock short; the branch has no upstream (made before).
        git(repo.root, "worktree", "add", "--quiet", "--no-checkout", "--", str(path), branch)
    except CommandError as exc:
        if "already registered" in exc.output:
            raise _registered(path) from None
        if "already exists" in exc.output:  # made since it was seen free: not swarm's
            raise in_the_way(path) from None
        raise


_ADMIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*")
# Repository config that changes what `worktree add` writes: per-worktree config files,
# relative paths (git 2.48), or an include that could set either.
_OWN_LAYOUT = (b"worktreeconfig", b"relativeworktrees", b"include")


def named_after(admin: str, name: str) -> bool:
    """Whether git could have named the admin dir *admin* for the worktree directory *name*.

    The directory's name, then ``name1``, ``name2``... (no pattern compiled per worktree:
    the `re` module keeps each one it compiles).
    """
    rest = admin.removeprefix(name)
    return admin.startswith(name) and (not rest or (rest.isascii() and rest.isdigit()))


def _register(repo: Repo, path: Path, branch: str) -> bool:
    """Register *path* as a worktree on *branch* as `git worktree add --no-checkout` does.

    git's own layout (gitrepository-layout(5)): an admin dir ``worktrees/<name>`` holding
    ``gitdir``, ``commondir`` and ``HEAD``, and the worktree's ``.git`` file naming it, made
    under ``locked`` (so that no ``git worktree prune`` takes it half-made) in git's order.
    ``git worktree add`` reads every registered worktree first, so its time grows with their
    number (3.6 ms with none, 29 ms with 500): a batch made one at a time under the lock
    would be quadratic. The caller holds the repository lock, made the branch (so no
    worktree has it checked out) and saw *path* free. False, with nothing made, when the
    repository's config asks for another layout or the name is unusual: git does it then.
    Unlike git, it starts no reflog for the worktree's HEAD (its one entry says nothing).
    """
    try:
        config = fs.read_file(repo.common_dir / "config").lower()
    except OSError:
        return False
    if any(word in config for word in _OWN_LAYOUT) or not _ADMIN_NAME.fullmatch(path.name):
        return False
    root = repo.common_dir / "worktrees"
    root.mkdir(exist_ok=True)
    # A registration whose directory is gone: git refuses the path, and so does this. Only
    # admin dirs named after it are read (git names them so; `worktree move` keeps the old
    # name, which `preflight`'s full listing covers).
    target = real_path(path / ".git")
    with os.scandir(root) as entries:
        names = [entry.name for entry in entries if named_after(entry.name, path.name)]
    for known in names:
        try:
            gitdir = fs.read_text(root / known / "gitdir").strip()
        except (OSError, UnicodeDecodeError):
            continue
        if real_path(root / known / gitdir) == target:
            raise _registered(path)
    name, number = path.name, 0
    while True:  # git's naming: the directory's name, then name1, name2, ...
        try:
            (root / name).mkdir()
            break
        except FileExistsError:
            number += 1
            name = f"{path.name}{number}"
    admin = real_path(root / name)
    try:
        _write_whole(admin / "locked", "initializing\n")
        try:
            path.mkdir()
        except FileExistsError:  # made since it was seen free, not by swarm: never removed
            raise in_the_way(path) from None
        _write_whole(admin / "gitdir", f"{real_path(path)}/.git\n")
        _write_whole(path / ".git", f"gitdir: {admin}\n")
        _write_whole(admin / "commondir", "../..\n")
        _write_whole(admin / "HEAD", f"ref: refs/heads/{branch}\n")
    except BaseException:
        # Before `gitdir` names the path, the caller's clean-up cannot tell the dir is ours.
        shutil.rmtree(admin, ignore_errors=True)
        raise
    (admin / "locked").unlink()
    return True


def _write_whole(path: Path, text: str) -> None:
    """Write *path* whole: beside it, then renamed into place.

    A manager killed meanwhile leaves it whole or absent. An empty ``commondir`` made every
    git that lists worktrees die (``failed to read .../commondir``), `swarm resume` and your
    own `git worktree list` included.
    """
    new = path.with_name(f"{path.name}.new")
    new.write_text(text, encoding="utf-8")
    new.replace(path)


def _new_branch(repo: Repo, branch: str, commit: str, start: str) -> None:
    """Create *branch* at *commit*; BadInputError when it exists.

    Outside the repository lock: git's own ref lock makes the creation atomic, and the empty
    old value refuses a branch that exists. Only `worktree add` (the admin dir) is then
    serialised, so creations queue behind one git process instead of three.
    """
    message = f"branch: Created from {start}"
    try:
        git(repo.root, "update-ref", "--create-reflog", "-m", message, f"refs/heads/{branch}",
            commit, "")  # fmt: skip
    except CommandError:
        if branch_exists(repo, branch):
            raise _branch_exists(branch) from None
        raise


def _discard_locked(repo: Repo, *, path: Path, branch: str, commit: str) -> None:
    """Remove what a failed creation of *path* made; the caller holds the repository lock."""
    shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        for admin in (repo.common_dir / "worktrees").iterdir():
            try:
                gitdir = fs.read_text(admin / "gitdir").strip()
            except (OSError, UnicodeDecodeError):
                continue
            if real_path(Path(gitdir).parent) == real_path(path):
                shutil.rmtree(admin, ignore_errors=True)
    # Only delete the branch while it is still where we created it.
    git(repo.root, "update-ref", "-d", f"refs/heads/{branch}", commit, check=False)
