"""The repository: opened and checked, its lock, git run plainly, revisions resolved.

HEAD, commits and object sizes, on plain `git`; branches are :mod:`worktree_swarm.git.branches`,
remotes :mod:`worktree_swarm.git.remotes`.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import filelock

from worktree_swarm.core.errors import BadInputError, SwarmError
from worktree_swarm.core.paths import Repo as Repo  # noqa: PLC0414 - re-exported: the git domain names it git.Repo
from worktree_swarm.core.paths import store_path
from worktree_swarm.core.text import is_utf8, one_line, path_text
from worktree_swarm.git import runner
from worktree_swarm.git.config_files import git_dir as git_dir  # noqa: PLC0414 - re-exported: git.git_dir

if TYPE_CHECKING:
    import subprocess

MIN_GIT_VERSION = (2, 38)
_VERSION_RE = re.compile(r"git version (\d+)\.(\d+)(?:\.(\d+))?")


def run(
    cwd: Path, args: Sequence[str], *, check: bool = True, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run git with *args* in *cwd* (raising on failure when *check*)."""
    return runner.run(cwd, *args, check=check, env=env)


# Bytes of paths on one git command line: far below the kernel's limit on a command line
# (a codemod's thousands of long names at once failed with E2BIG).
ARGS_BYTES = 1 << 17


def in_batches(paths: Iterable[str], limit: int | None = None) -> Iterator[list[str]]:
    """*paths* in consecutive batches of at most *limit* bytes of names (one name at least).

    *limit* defaults to :data:`ARGS_BYTES`.
    """
    limit = limit or ARGS_BYTES
    batch: list[str] = []
    size = 0
    for path in paths:
        length = len(os.fsencode(path)) + 1
        if batch and size + length > limit:
            yield batch
            batch, size = [], 0
        batch.append(path)
        size += length
    if batch:
        yield batch


def git(cwd: Path, *args: str, check: bool = True) -> str:
    """Run ``git *args`` in *cwd* with a clean environment and return its stdout.

    Raises CommandError when *check* and git exits non-zero, GitError when *cwd* is unusable.
    """
    return run(cwd, args, check=check).stdout


def require_git() -> None:
    """Raise BadInputError unless a git >= 2.38 is on PATH."""
    out = git(Path.cwd() if Path.cwd().is_dir() else Path("/"), "--version").strip()
    match = _VERSION_RE.match(out)
    if match is None:
        raise BadInputError(f"cannot parse the output of `git --version`: {out!r}")
    found = (int(match[1]), int(match[2]))
    if found < MIN_GIT_VERSION:
        raise BadInputError(
            f"{out} found; worktree-swarm needs git >= 2.38 (for `git merge-tree --write-tree`);"
            " upgrade git"
        )


def open_repo(path: Path, *, empty_ok: bool = False) -> Repo:
    """Open the repository containing *path* (a subdirectory or a linked worktree works too).

    ``root`` is always the main worktree. Raises BadInputError for a path outside any
    repository, a bare repository, or a repository without commits. With *empty_ok* (a
    command that reads runs) one without commits is opened unless swarm's store is there:
    no run can have happened in it, and the command finds none.
    """
    path = path.absolute()
    if not path.is_dir():
        raise BadInputError(f"{path} is not a directory; run swarm inside a git repository")
    common_dir, git_dir, top = _locate(path)
    for where in (path, common_dir, git_dir, top):
        _recordable(where)
    in_main = git_dir == common_dir and top is not None
    # In the main checkout the repository has a working tree (git finds no top in a bare
    # one). Elsewhere the repository is asked: from a linked worktree --is-bare-repository
    # describes that worktree; from the common dir it describes the repository.
    if not in_main and git(common_dir, "rev-parse", "--is-bare-repository").strip() == "true":
        if top is not None:  # a linked worktree of a bare repository (`clone --bare` + `add`)
            raise BadInputError(
                f"{top} is a linked worktree of the bare repository {common_dir}; swarm needs a"
                " repository with a main checkout (clone it without --bare and run swarm there)"
            )
        raise BadInputError(
            f"{common_dir} is a bare repository; run swarm inside a checkout with a working tree"
        )
    # Not `git worktree list`: it races with a concurrent `worktree add` (it may see an admin
    # dir before its commondir file is written), and it misnames --separate-git-dir checkouts.
    if in_main and top is not None:  # in the main checkout (wherever its git dir)
        root = top
        # core.worktree names it: git there would find no repository, or another one (its
        # own .git), and every command would fail or work on that one.
        if top != git_dir.parent and not _finds(top, common_dir):
            raise BadInputError(
                f"{top}, the working tree core.worktree names in {git_dir}/config, has no .git "
                "leading back to it, so git there finds no repository or another one; unset it "
                f"(`git --git-dir={shlex.quote(str(git_dir))} config --unset core.worktree`) or "
                "run swarm in a checkout with its own .git"
            )
    elif common_dir.name == ".git":
        root = common_dir.parent
    else:
        raise BadInputError(
            f"cannot locate the main checkout of {common_dir} from {path}; run swarm there"
        )
    repo = Repo(root=root, common_dir=common_dir)
    if not empty_ok or store_path(repo).exists():
        _refuse_without_commits(root)
    if _case_blind(root, common_dir):
        raise BadInputError(
            f"core.ignoreCase is true in {root}, but its file system tells upper and lower case"
            " apart (a repository copied from macOS or Windows?): git would take A.txt and a.txt"
            " for one file, and an agent's work could be left off its branch; set it false"
            f" (`git -C {shlex.quote(str(root))} config core.ignoreCase false`) and run swarm"
            " again"
        )
    return repo


def _refuse_without_commits(root: Path) -> None:
    """BadInputError where *root* has no commit at all."""
    if rev_parse_in(root, "HEAD^{commit}") is None and not git(
        root, "for-each-ref", "--count=1", "--format=%(refname)"
    ):  # on a branch with no commits yet (`checkout --orphan`), earlier runs are still there
        raise BadInputError(f"repository {root} has no commits yet; make a first commit")


def _case_blind(root: Path, common_dir: Path) -> bool:
    """Whether git is told to ignore case where the file system does not (`HEAD` vs `hEAD`)."""
    said = git(root, "config", "--type=bool", "--get", "core.ignoreCase", check=False)
    return said.strip() == "true" and not (common_dir / "hEAD").exists()


def _locate(path: Path) -> tuple[Path, Path, Path | None]:
    """The common dir, git dir and checkout top of *path* (no top inside a git dir)."""
    asked = ["--git-common-dir", "--git-dir", "--show-toplevel"]
    probe = runner.run_bytes(path, "rev-parse", "--path-format=absolute", *asked, check=False)
    if probe.returncode != 0:  # no working tree here (inside a git dir)
        asked = asked[:2]
        probe = runner.run_bytes(path, "rev-parse", "--path-format=absolute", *asked, check=False)
    if probe.returncode != 0:
        said = os.fsdecode(probe.stderr).strip()
        if not said or "not a git repository" in said:
            raise BadInputError(f"{path} is not inside a git repository; run `git init` first")
        # A repository git will not open (another user's: "dubious ownership"; an extension
        # of a newer git): git's own words say why and what to do.
        why = one_line(said.removeprefix("fatal: "), limit=300, controls=True)
        raise BadInputError(f"git cannot open the repository at {path}: {why}")
    # Paths as the file system has them (a name that is not UTF-8 keeps its bytes).
    lines = os.fsdecode(probe.stdout).removesuffix("\n").split("\n")
    if len(lines) != len(asked):  # a path with a newline in it: one question at a time
        lines = [
            os.fsdecode(
                runner.run_bytes(path, "rev-parse", "--path-format=absolute", a).stdout
            ).removesuffix("\n")
            for a in asked
        ]
    found = [Path(line) for line in lines]
    return found[0], found[1], found[2] if len(found) > 2 else None  # noqa: PLR2004


def _finds(path: Path, common_dir: Path) -> bool:
    """Whether git run in *path* finds the repository of *common_dir*."""
    probe = runner.run_bytes(
        path, "rev-parse", "--path-format=absolute", "--git-common-dir", check=False
    )
    found = os.fsdecode(probe.stdout).removesuffix("\n")
    return probe.returncode == 0 and Path(found).samefile(common_dir)


def _recordable(path: Path | None) -> None:
    """BadInputError when *path* is not UTF-8: swarm records paths as text (store, logs)."""
    if path is not None and not is_utf8(str(path)):
        raise BadInputError(
            f"{path_text(str(path))}: the repository's path is not UTF-8, and swarm records "
            "paths as text; rename its directories to UTF-8 names, then run swarm again"
        )


_thread_locks: dict[Path, threading.RLock] = {}
_thread_locks_guard = threading.Lock()
_depth: dict[Path, int] = {}  # how many times the thread holding a path's lock took it


@contextmanager
def repo_lock(repo: Repo) -> Iterator[None]:
    """Hold the lock that serialises git metadata changes (worktrees, branches) in *repo*.

    Threads of this process queue on an in-process lock first, so a release wakes the next
    thread at once; only the thread at the head polls the cross-process file lock (whose
    polling between threads of one process would otherwise cap worktree creation at ~14/s).
    Taken again by the thread that holds it (a guard's look at the worktrees inside `swarm
    doctor`'s fixes), it is held already: a second file lock of the process would wait on the
    first for ever.
    """
    repo.state_dir.mkdir(parents=True, exist_ok=True)
    # The lock file is never deleted: deleting it would let a waiter and a newcomer hold
    # different inodes at the same time.
    path = repo.state_dir / "repo.lock"
    with _thread_locks_guard:
        local = _thread_locks.setdefault(path, threading.RLock())
    with local:
        if _depth.get(path):  # held by this thread: only its holder gets past `local`
            _depth[path] += 1
            try:
                yield
            finally:
                _depth[path] -= 1
            return
        lock = filelock.FileLock(path, poll_interval=0.005)
        try:
            lock.acquire(timeout=REPO_LOCK_QUIET)
        except filelock.Timeout:
            # Held past what swarm's own steps take (a `swarm clean --yes` may hold it for
            # minutes): said once, then waited for, but not for ever (a program of yours, or
            # an agent outside --sandbox, may hold it and never let go).
            sys.stderr.write(
                f"swarm: waiting for {path} (another swarm command is changing worktrees or "
                "branches, or some program holds it)\n"
            )
            try:
                lock.acquire(timeout=REPO_LOCK_WAIT)
            except filelock.Timeout:
                raise SwarmError(
                    f"{path} has been held for {REPO_LOCK_WAIT / 60:.0f} minutes; find what holds"
                    f" it (`fuser {path}`) and try again"
                ) from None
        _depth[path] = 1
        try:
            yield
        finally:
            _depth[path] = 0
            lock.release()


REPO_LOCK_QUIET = 15.0  # seconds waited for the repository lock before saying so
REPO_LOCK_WAIT = 1800.0  # and then at most


def checkout_root(path: Path) -> Path:
    """The top of the checkout (main or linked worktree) that *path* is in."""
    res = run(path, ["rev-parse", "--show-toplevel"], check=False)
    if res.returncode != 0:  # inside the git directory itself
        raise BadInputError(
            f"{path.absolute()} is in no checkout; run swarm in the checkout, not its .git"
        )
    return Path(res.stdout.strip())


def rev_parse_in(cwd: Path, rev: str) -> str | None:
    """Return the object name *rev* resolves to when run in *cwd*, or None."""
    res = run(cwd, ["rev-parse", "--verify", "--quiet", "--end-of-options", rev], check=False)
    return res.stdout.strip() if res.returncode == 0 else None


def rev_parse(repo: Repo, rev: str) -> str | None:
    """Return the full object name *rev* resolves to, or None when it names nothing."""
    return rev_parse_in(repo.root, rev)


def head_commit(repo: Repo) -> str:
    """Return the commit checked out in the main worktree."""
    return checkout_head(repo.root)


def checkout_head(checkout: Path) -> str:
    """The commit checked out in *checkout*; BadInputError on a branch with no commits yet."""
    sha = rev_parse_in(checkout, "HEAD^{commit}")
    if sha is None:
        raise BadInputError(
            f"{checkout} is on a branch with no commits yet; commit there first, or check out"
            " a branch that has commits"
        )
    return sha


_known_commits: set[tuple[Path, str]] = set()
_known_commits_lock = threading.Lock()


def commit_of(repo: Repo, rev: str) -> str | None:
    """The commit *rev* names (``rev^{commit}``), or None; a full name seen once is not asked again.

    A run creates every worktree at one of a few commits; an object's type never changes, so
    only *rev* given as a full object name that already resolved here skips git.
    """
    key = (repo.common_dir, rev)
    with _known_commits_lock:
        if key in _known_commits:
            return rev
    sha = rev_parse(repo, f"{rev}^{{commit}}")
    if sha is not None and sha == rev:
        with _known_commits_lock:
            _known_commits.add(key)
    return sha


def blob_sizes(
    cwd: Path, blobs: Sequence[str], *, env: Mapping[str, str] | None = None
) -> list[int]:
    """The size of each of *blobs* (object ids) in the repository of *cwd*; 0 for one missing.

    *env*: git's environment (a checkpoint's own object store).
    """
    if not blobs:
        return []
    listed = "".join(f"{b}\n" for b in blobs)
    out = runner.run(
        cwd, "cat-file", "--batch-check=%(objectsize)", input_text=listed, env=env
    ).stdout
    return [int(line) if line.isdigit() else 0 for line in out.splitlines()]
