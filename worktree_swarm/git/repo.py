"""Typed git operations on plain `git` (porcelain / -z output) and the repository lock."""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import stat
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, ClassVar

import filelock

from worktree_swarm.core.errors import BadInputError, CommandError, GitError, SwarmError
from worktree_swarm.core.identity import parse_author
from worktree_swarm.core.models import DEFAULT_MAX_FILE
from worktree_swarm.core.paths import Repo as Repo  # noqa: PLC0414 - re-exported: the git domain names it git.Repo
from worktree_swarm.core.paths import real_path
from worktree_swarm.core.text import is_utf8, one_line, path_text, paths_text
from worktree_swarm.core.units import format_size
from worktree_swarm.git import runner
from worktree_swarm.git.runner import git_dir as git_dir  # noqa: PLC0414 - re-exported: git.git_dir
from worktree_swarm.infra import fs, redact

if TYPE_CHECKING:
    import subprocess

MIN_GIT_VERSION = (2, 38)
# Up to the last `@` before the path, as URL parsers read it (a password may hold a raw `@`).
_USERINFO_RE = re.compile(r"(?<=://)[^/\s]*@")
_VERSION_RE = re.compile(r"git version (\d+)\.(\d+)(?:\.(\d+))?")


@dataclass(frozen=True, slots=True, kw_only=True)
class DiffStat:
    """Files changed and lines added/removed between two commits."""

    files: int
    insertions: int
    deletions: int
    # What the changed files hold and their names (blob ids, paths): it differs when an edit
    # leaves the counts as they were (a line rewritten again, a binary file, a rename).
    content: str = dataclasses.field(default="", compare=False)
    # Each file added or changed: its path and its new blob.
    blobs: tuple[tuple[str, str], ...] = dataclasses.field(default=(), compare=False)


class MergeConflictError(GitError):
    """Merging commits would conflict; ``files`` names the conflicted paths."""

    def __init__(self, message: str, *, files: Sequence[str]) -> None:
        super().__init__(message)
        self.files = tuple(files)

    def __reduce__(self) -> tuple[Callable[..., MergeConflictError], tuple[str, tuple[str, ...]]]:
        return _merge_conflict, (str(self), self.files)


def _merge_conflict(message: str, files: tuple[str, ...]) -> MergeConflictError:
    return MergeConflictError(message, files=files)


def _run(
    cwd: Path, args: Sequence[str], *, check: bool = True, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
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
    return _run(cwd, args, check=check).stdout


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


def open_repo(path: Path) -> Repo:
    """Open the repository containing *path* (a subdirectory or a linked worktree works too).

    ``root`` is always the main worktree. Raises BadInputError for a path outside any
    repository, a bare repository, or a repository without commits.
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
    elif common_dir.name == ".git":
        root = common_dir.parent
    else:
        raise BadInputError(
            f"cannot locate the main checkout of {common_dir} from {path}; run swarm there"
        )
    if rev_parse_in(root, "HEAD^{commit}") is None and not git(
        root, "for-each-ref", "--count=1", "--format=%(refname)"
    ):  # on a branch with no commits yet (`checkout --orphan`), earlier runs are still there
        raise BadInputError(f"repository {root} has no commits yet; make a first commit")
    if _case_blind(root, common_dir):
        raise BadInputError(
            f"core.ignoreCase is true in {root}, but its file system tells upper and lower case"
            " apart (a repository copied from macOS or Windows?): git would take A.txt and a.txt"
            " for one file, and an agent's work could be left off its branch; set it false"
            f" (`git -C {shlex.quote(str(root))} config core.ignoreCase false`) and run swarm"
            " again"
        )
    return Repo(root=root, common_dir=common_dir)


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


def _recordable(path: Path | None) -> None:
    """BadInputError when *path* is not UTF-8: swarm records paths as text (store, logs)."""
    if path is not None and not is_utf8(str(path)):
        raise BadInputError(
            f"{path_text(str(path))}: the repository's path is not UTF-8, and swarm records "
            "paths as text; rename its directories to UTF-8 names, then run swarm again"
        )


_thread_locks: dict[Path, threading.RLock] = {}
_thread_locks_guard = threading.Lock()


@contextmanager
def repo_lock(repo: Repo) -> Iterator[None]:
    """Hold the lock that serialises git metadata changes (worktrees, branches) in *repo*.

    Threads of this process queue on an in-process lock first, so a release wakes the next
    thread at once; only the thread at the head polls the cross-process file lock (whose
    polling between threads of one process would otherwise cap worktree creation at ~14/s).
    """
    repo.state_dir.mkdir(parents=True, exist_ok=True)
    # The lock file is never deleted: deleting it would let a waiter and a newcomer hold
    # different inodes at the same time.
    path = repo.state_dir / "repo.lock"
    with _thread_locks_guard:
        local = _thread_locks.setdefault(path, threading.RLock())
    with local:
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
        try:
            yield
        finally:
            lock.release()


REPO_LOCK_QUIET = 15.0  # seconds waited for the repository lock before saying so
REPO_LOCK_WAIT = 1800.0  # and then at most


def checkout_root(path: Path) -> Path:
    """The top of the checkout (main or linked worktree) that *path* is in."""
    res = _run(path, ["rev-parse", "--show-toplevel"], check=False)
    if res.returncode != 0:  # inside the git directory itself
        raise BadInputError(
            f"{path.absolute()} is in no checkout; run swarm in the checkout, not its .git"
        )
    return Path(res.stdout.strip())


def rev_parse_in(cwd: Path, rev: str) -> str | None:
    """Return the object name *rev* resolves to when run in *cwd*, or None."""
    res = _run(cwd, ["rev-parse", "--verify", "--quiet", "--end-of-options", rev], check=False)
    return res.stdout.strip() if res.returncode == 0 else None


def rev_parse(repo: Repo, rev: str) -> str | None:
    """Return the full object name *rev* resolves to, or None when it names nothing."""
    return rev_parse_in(repo.root, rev)


def tracking_ref(repo: Repo, remote: str, ref: str) -> str | None:
    """The remote-tracking ref a push of *ref* to the remote named *remote* updates, if any.

    git maps it through the remote's fetch refspecs (``refs/heads/*:refs/remotes/origin/*``);
    a URL, or a remote without such a refspec, has none.
    """
    specs = git(repo.root, "config", "--get-all", f"remote.{remote}.fetch", check=False)
    for spec in specs.splitlines():
        src, _, dst = spec.strip().removeprefix("+").partition(":")
        head, star, tail = src.partition("*")
        if not star:
            if src == ref and dst:
                return dst
        elif ref.startswith(head) and ref.endswith(tail) and len(ref) >= len(head + tail):
            return dst.replace("*", ref[len(head) : len(ref) - len(tail)], 1)
    return None


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


def current_branch(repo: Repo, checkout: Path | None = None) -> str | None:
    """The short name of the branch of *checkout* (the main worktree's by default).

    None when its HEAD is detached.
    """
    res = _run(checkout or repo.root, ["symbolic-ref", "--quiet", "--short", "HEAD"], check=False)
    if res.returncode != 0:
        return None
    return res.stdout.strip() or None


def branch_exists(repo: Repo, branch: str) -> bool:
    """Return whether ``refs/heads/<branch>`` exists."""
    res = _run(repo.root, ["show-ref", "--verify", "--quiet", f"refs/heads/{branch}"], check=False)
    return res.returncode == 0


def is_branch_name(repo: Repo, name: str) -> bool:
    """Whether *name* is a valid short branch name as given (not ``@{-1}``, not an option).

    Not ``@`` either, which `check-ref-format --branch` lets through and git refuses to make.
    """
    if not name or name.startswith("-") or name == "@":
        return False
    checked = git(repo.root, "check-ref-format", "--branch", name, check=False).strip()
    return checked == name


def branch_tips(repo: Repo) -> dict[str, str]:
    """Every branch's short name and tip (one git process, however many branches)."""
    out = git(repo.root, "for-each-ref", "--format=%(objectname) %(refname)", "refs/heads/")
    tips = {}
    for line in out.splitlines():
        sha, _, ref = line.partition(" ")
        tips[ref.removeprefix("refs/heads/")] = sha
    return tips


def strip_userinfo(url: str) -> str:
    """*url* without ``user:password@``, as git shows a remote's URL (the user can be a token)."""
    return _USERINFO_RE.sub("", url)


def remote_location(repo: Repo, remote: str) -> str:
    """What *remote* (a remote's name, else a URL or a path) fetches from, as the nodes see it.

    A path is made absolute (relative ones are to the repository root); nothing is contacted.
    """
    out = git(repo.root, "remote", "get-url", "--", remote, check=False).strip()
    url = out or remote
    if "://" not in url and ":" not in url.split("/", 1)[0]:
        url = str((repo.root / url).resolve())
    return url


def remote_tips(repo: Repo, url: str, branches: Sequence[str]) -> dict[str, str]:
    """The tips *url* has of *branches* (those it does not have are left out).

    Raises CommandError when it cannot be reached.
    """
    wanted = {f"refs/heads/{branch}": branch for branch in branches}
    out = git(repo.root, "ls-remote", "--heads", "--", url, *wanted)
    tips = {}
    for line in out.splitlines():
        sha, _, ref = line.partition("\t")
        if ref in wanted:  # a pattern matches any ref ending in it: only the exact ones
            tips[wanted[ref]] = sha
    return tips


def delete_remote_branches(repo: Repo, url: str, leases: Mapping[str, str]) -> dict[str, str]:
    """Delete each branch of *leases* on *url* that is still at its commit there.

    *leases* maps a branch to the commit it is expected at: one push with a
    ``--force-with-lease`` per branch, so a branch someone moved meanwhile stays. Returns
    ``{branch: ""}`` for each one deleted and ``{branch: why not}`` for the others (git's own
    words: a push the remote refused, or one that could not reach it).
    """
    refs = {f"refs/heads/{branch}": branch for branch in leases}
    res = runner.run(
        repo.root,
        "push", "--porcelain", "--no-verify",
        *(f"--force-with-lease=refs/heads/{branch}:{sha}" for branch, sha in leases.items()),
        "--", url, *(f":{ref}" for ref in refs),
        check=False,
    )  # fmt: skip
    done: dict[str, str] = {}
    for line in res.stdout.splitlines():
        flag, _, rest = line.partition("\t")
        spec, _, summary = rest.partition("\t")
        branch = refs.get(spec.removeprefix(":"))
        if branch is not None:
            done[branch] = "" if flag == "-" else summary.strip() or "refused"
    errors = [line for line in res.stderr.splitlines() if line.strip()]
    failed = next((line for line in errors if line.startswith(("fatal:", "error:"))), "")
    why = (failed or (errors[0] if errors else f"git push exited {res.returncode}")).strip()
    return {branch: done.get(branch, why) for branch in leases}


def merged_tips(repo: Repo, target: str) -> set[str]:
    """The tips of the branches whose history *target* contains (none if it names nothing)."""
    res = _run(
        repo.root,
        ["for-each-ref", f"--merged={target}", "--format=%(objectname)", "refs/heads/"],
        check=False,
    )
    return set(res.stdout.split()) if res.returncode == 0 else set()


def contained(repo: Repo, tip: str, commits: Sequence[str]) -> set[str]:
    """Those of *commits* that *tip* contains (itself or an ancestor); a missing one is not.

    One git process when *tip* contains them all (the usual case), else one per commit; none
    for an answer git gave before (a commit's ancestry never changes: `swarm watch` asks
    every second).
    """
    found: set[str] = set()
    for commit in commits:
        key = (repo.root, tip, commit)
        with _ancestry_lock:
            known = _ancestry.get(key)
        if known is None:
            return _contained(repo, tip, commits)
        if known:
            found.add(commit)
    return found


def _contained(repo: Repo, tip: str, commits: Sequence[str]) -> set[str]:
    """:func:`contained` asked of git; its definite answers kept (a git that failed is not one)."""
    if not commits:
        return set()
    res = _run(repo.root, ["merge-base", "--independent", tip, *commits], check=False)
    if res.returncode == 0 and res.stdout.split() == [tip]:
        codes = dict.fromkeys(commits, 0)
    else:  # --is-ancestor: 0 it is, 1 it is not, anything else git failed
        codes = {
            c: _run(repo.root, ["merge-base", "--is-ancestor", c, tip], check=False).returncode
            for c in commits
        }
    with _ancestry_lock:
        if len(_ancestry) > _ANCESTRY_LIMIT:
            _ancestry.clear()
        _ancestry.update(
            {(repo.root, tip, c): code == 0 for c, code in codes.items() if code in {0, 1}}
        )
    return {c for c, code in codes.items() if code == 0}


_ANCESTRY_LIMIT = 65536  # answers kept, a bound on memory
_ancestry: dict[tuple[Path, str, str], bool] = {}  # (repository, tip, commit) -> contained
_ancestry_lock = threading.Lock()


def branches(repo: Repo) -> set[str]:
    """The short names of every branch (one git process, however many branches)."""
    out = git(repo.root, "for-each-ref", "--format=%(refname)", "refs/heads/")
    return {line.removeprefix("refs/heads/") for line in out.splitlines() if line}


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


def config_values(root: Path, keys: Collection[str]) -> dict[str, str]:
    """What git config says of each of *keys* (lower-case, no subsection) in *root*, if set.

    The last value set wins, as with ``git config --get``; one git process for all of them.
    """
    out = git(root, "config", "--list", "-z", check=False)
    found = {}
    for entry in out.split("\0"):
        name, _, value = entry.partition("\n")
        if name.lower() in keys:
            found[name.lower()] = value
    return found


def config_path(root: Path, key: str, value: str) -> str:
    """*value*, the path setting *key*'s, expanded as ``git config --path`` does (``~``)."""
    if value.startswith("%("):  # relative to git's own prefix: git knows where it is
        return git(root, "config", "--path", "--get", key, check=False).strip()
    return str(Path(value).expanduser()) if value.startswith("~") else value


def user_identity(root: Path) -> str | None:
    """The user's ``Name <email>`` as git config resolves it in *root*, or None when unset.

    An agent CLI that commits itself uses this identity, so swarm's checkpoints do too.
    """
    found = config_values(root, {"user.name", "user.email"})
    name, email = found.get("user.name", "").strip(), found.get("user.email", "").strip()
    author = f"{name} <{email}>"
    if not name or not email or parse_author(author) is None:
        return None
    return author


def trailers(task_id: str, attempt: int | None, agent: str) -> str:
    """Commit-message trailers naming the task, attempt and agent of a checkpoint."""
    lines = [f"Swarm-Task: {task_id}"]
    if attempt is not None:
        lines.append(f"Swarm-Attempt: {attempt}")
    lines.append(f"Swarm-Agent: {agent}")
    return "\n\n" + "\n".join(lines)


def identity_env(author: str) -> dict[str, str]:
    """Environment making *author* (``Name <email>``) both author and committer."""
    identity = parse_author(author.strip())
    if identity is None:
        raise BadInputError(f"author {author!r} is not of the form `Name <email>`")
    name, email = identity.name, identity.email
    # Environment variables beat -c user.name: a user's GIT_AUTHOR_* must not leak in.
    return {
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": name,
        "GIT_COMMITTER_EMAIL": email,
    }


def merge_commits(repo: Repo, commits: Sequence[str], *, message: str, author: str) -> str:
    """Return a new merge commit whose parents are *commits*, touching no checkout.

    The trees are merged pairwise in order with ``git merge-tree --write-tree``; the result is
    one commit with every input as a parent (a single input is returned as is).
    Raises MergeConflictError naming the conflicted files.
    """
    if not commits:
        raise BadInputError("merge_commits needs at least one commit")
    env = identity_env(author)
    shas: list[str] = []
    for rev in commits:
        sha = rev_parse(repo, f"{rev}^{{commit}}")
        if sha is None:
            raise GitError(f"{rev!r} is not a commit in {repo.root}")
        shas.append(sha)
    if len(shas) == 1:
        return shas[0]
    acc = shas[0]
    tree = ""
    for i, other in enumerate(shas[1:], start=1):
        res = _run(
            repo.root, ["merge-tree", "--write-tree", "--name-only", "-z", acc, other], check=False
        )
        if res.returncode not in (0, 1):
            raise CommandError(["git", "merge-tree", acc, other], res.returncode, res.stderr)
        tree, conflicted = merge_tree_result(res.stdout)
        if res.returncode == 1:
            names = paths_text(conflicted) or "(unknown files)"
            raise MergeConflictError(
                f"merging {commits[i]} into {', '.join(commits[:i])} conflicts in {names}",
                files=conflicted,
            )
        if i < len(shas) - 1:
            # merge-tree (git < 2.40) merges commits, not trees: the running result needs a
            # commit of its own to be merged with the next input. It stays unreferenced.
            acc = _commit_tree(repo, tree, shas[: i + 1], message=message, env=env)
    return _commit_tree(repo, tree, shas, message=message, env=env)


def merge_tree_result(out: str) -> tuple[str, tuple[str, ...]]:
    """The tree and the conflicted paths of ``merge-tree --write-tree --name-only -z`` *out*.

    The paths are the unmerged ones; when there are none (a conflict git records in no
    index entry: a file in the way of an implicit directory rename), those its conflict
    messages name.
    """
    tree, *fields = out.split("\0")
    end = fields.index("") if "" in fields else len(fields)
    unmerged = tuple(dict.fromkeys(fields[:end]))
    if unmerged:
        return tree, unmerged
    named: list[str] = []
    messages = iter(fields[end + 1 :])
    # Each message: the number of paths, the paths, its type ("CONFLICT (...)"), its text.
    for count in messages:
        if not count.isdigit():
            break
        paths = [next(messages, "") for _ in range(int(count))]
        if next(messages, "").startswith("CONFLICT ("):
            named += paths
        next(messages, "")
    return tree, tuple(dict.fromkeys(p for p in named if p))


def _commit_tree(
    repo: Repo, tree: str, parents: Sequence[str], *, message: str, env: Mapping[str, str]
) -> str:
    args = ["commit-tree", "--no-gpg-sign", "-m", message]
    for parent in parents:
        args += ["-p", parent]
    return _run(repo.root, [*args, tree], env=env).stdout.strip()


# --sparse: in a sparse worktree, files an agent wrote outside the cone are its work too.
# --ignore-errors: a path git refuses (`.GIT/x`, `git~1`) or cannot read no longer stops the
# whole `add`; the rest is staged and those are named (RefusedPathsError).
_ADD = ["add", "--all", "--sparse", "--verbose", "--ignore-errors"]
_GITLINK = re.compile(r"(?:^|\0)160000 ([0-9a-f]+) 0\t([^\0]+)")


def populated_gitlinks(path: Path, env: Mapping[str, str] | None = None) -> list[str]:
    """The gitlinks of *path*'s index (*env*: another index file) checked out as repositories.

    `git add` looks inside each such directory for changes by starting git there, under that
    repository's own config and attributes (its filters run): a submodule's, or one an agent
    made. swarm's `add` leaves them out and records where their HEAD is instead
    (:func:`stage_gitlinks`).
    """
    index = (env or {}).get("GIT_INDEX_FILE")
    if _no_gitlinks(path / index if index else runner.git_dir(path) / "index"):
        return []  # the usual case, told without starting git
    out = _run(path, ["ls-files", "-z", "--stage"], env=env).stdout
    return [p for _, p in _GITLINK.findall(out) if (path / p / ".git").exists()]


_GITLINK_MODE = (0o160000).to_bytes(4, "big")
_INDEX_VERSIONS = {(v).to_bytes(4, "big") for v in (2, 3, 4)}


def _no_gitlinks(index: Path) -> bool:
    """Whether the index file *index* surely has no gitlink entry, read without git.

    Index versions 2 to 4 store every entry's mode as four bytes: a file without the gitlink's
    four anywhere has none. A split index (its ``link`` extension) keeps entries in another
    file, so then git is asked, as it is for a file of another format.
    """
    try:
        data = fs.read_file(index)
    except FileNotFoundError:
        return True  # no index yet: no entries
    except OSError:
        return False
    if data[:4] != b"DIRC" or data[4:8] not in _INDEX_VERSIONS:
        return False
    return _GITLINK_MODE not in data and b"link" not in data


def unhide_edits(worktree: Path) -> list[str]:
    """Clear the index flags that hide edits in *worktree* from `add`; the paths cleared.

    ``assume-unchanged`` has git take a file as unchanged whatever it holds, ``skip-worktree``
    too for a file that is there (one a sparse checkout left out is not): an agent's edit
    under either was never committed, its task said it changed nothing, and `swarm clean`
    removed the edit with its worktree.
    """
    assumed, skipped = _hiding(worktree)
    for option, paths in (("--no-assume-unchanged", assumed), ("--no-skip-worktree", skipped)):
        if paths:
            listed = "".join(f"{path}\0" for path in paths)
            runner.run_bytes(worktree, "update-index", option, "-z", "--stdin", check=False,
                             input_bytes=os.fsencode(listed))  # fmt: skip
    return sorted({*assumed, *skipped})


def hides_edits(worktree: Path) -> bool:
    """Whether index flags in *worktree* hide files from `git status` (see :func:`unhide_edits`).

    Its status can be empty while such a file holds an edit: not a worktree with nothing to
    keep until a checkpoint has cleared the flags.
    """
    assumed, skipped = _hiding(worktree)
    return bool(assumed or skipped)


def _hiding(worktree: Path) -> tuple[list[str], list[str]]:
    """The assume-unchanged paths, and the skip-worktree ones that are there, of *worktree*."""
    flagged = _flagged_entries(runner.git_dir(worktree) / "index")
    if flagged is None:  # an index this reader does not know: git lists the flags
        flagged = _flagged_by_git(worktree)
    assumed = [path for path, kind in flagged if kind == "assume"]
    skipped = [p for p, kind in flagged if kind == "skip" and os.path.lexists(worktree / p)]
    return assumed, skipped


_ASSUME_VALID, _EXTENDED, _SKIP_WORKTREE, _NAME_LENGTH = 0x8000, 0x4000, 0x4000, 0xFFF


def _flagged_entries(index: Path) -> list[tuple[str, str]] | None:
    """The assume-unchanged and skip-worktree entries of *index*, read without git.

    None for what this reader does not know: index version 4 (its names are compressed), a
    split index (its ``link`` extension), or entries that do not parse with a SHA-1 or SHA-256
    object id.
    """
    parsed = _parsed_index(index)
    return None if parsed is None else parsed[0]


def index_extras(index: Path) -> bytes | None:
    """What the index file *index* holds that `ls-files --stage -v` does not show, as bytes.

    Its cache-tree (the ``TREE`` extension: `git commit` takes a directory's tree from it, not
    from the entries, so a forged one puts files nobody staged into your next commit) and its
    intent-to-add entries (a commit leaves them out). None for an index this reader does not
    know (:func:`_flagged_entries`).
    """
    parsed = _parsed_index(index)
    if parsed is None:
        return None
    flagged, tree = parsed
    added = b"".join(os.fsencode(name) + b"\0" for name, kind in flagged if kind == "added")
    return added + b"TREE\0" + tree


def _parsed_index(index: Path) -> tuple[list[tuple[str, str]], bytes] | None:
    """The flagged entries of *index* and its cache-tree's bytes, or None (see above)."""
    try:
        data = fs.read_file(index)
    except FileNotFoundError:
        return [], b""
    except OSError:
        return None
    if data[:4] != b"DIRC" or data[4:8] not in _INDEX_VERSIONS - {_INDEX_V4}:
        return None
    count = int.from_bytes(data[8:12], "big")
    for id_length in (20, 32):
        found = _parse_entries(data, count, id_length)
        if found is not None:
            return found
    return None


_INDEX_V4 = (4).to_bytes(4, "big")
_INTENT_TO_ADD = 0x2000


def _parse_entries(
    data: bytes, count: int, id_length: int
) -> tuple[list[tuple[str, str]], bytes] | None:
    """The flagged entries of an index of version 2 or 3 and its cache-tree, or None."""
    found: list[tuple[str, str]] = []
    at = 12
    for _ in range(count):
        name_at = at + 40 + id_length + 2
        flags = int.from_bytes(data[name_at - 2 : name_at], "big")
        extended = 0
        if flags & _EXTENDED:
            extended = int.from_bytes(data[name_at : name_at + 2], "big")
            name_at += 2
        end = data.find(b"\0", name_at)
        length = flags & _NAME_LENGTH
        if end < 0 or (length < _NAME_LENGTH and end - name_at != length):
            return None
        name = os.fsdecode(data[name_at:end])
        if flags & _ASSUME_VALID:
            found.append((name, "assume"))
        if extended & _SKIP_WORKTREE and not name.endswith("/"):  # not a sparse directory
            found.append((name, "skip"))
        if extended & _INTENT_TO_ADD:
            found.append((name, "added"))
        at += (end - at + 8) & ~7
    end = len(data) - id_length  # the extensions, then the file's checksum
    tree = b""
    while at + 8 <= end:
        signature, size = data[at : at + 4], int.from_bytes(data[at + 4 : at + 8], "big")
        if signature == b"link":
            return None
        if signature == b"TREE":
            tree = data[at + 8 : at + 8 + size]
        at += 8 + size
    return (found, tree) if at == end else None


def _flagged_by_git(worktree: Path) -> list[tuple[str, str]]:
    """:func:`_flagged_entries` as `ls-files -v` tells them (a lower-case tag: assumed)."""
    found: list[tuple[str, str]] = []
    for record in runner.run_bytes(worktree, "ls-files", "-v", "-z").stdout.split(b"\0"):
        if record:
            tag, name = chr(record[0]), os.fsdecode(record[2:])
            if tag.islower():
                found.append((name, "assume"))
            if tag.upper() == "S":
                found.append((name, "skip"))
    return found


def stage_gitlinks(path: Path, links: Sequence[str], env: Mapping[str, str] | None = None) -> None:
    """Point each gitlink of *links* in *path*'s index at its repository's HEAD, as `add` would.

    Asked of that repository with `rev-parse`, which reads no file of its checkout and so runs
    none of its filters; one without a commit keeps its entry.
    """
    for link in links:
        head = rev_parse_in(path / link, "HEAD")
        if head is not None:
            _run(path, ["update-index", "--cacheinfo", f"160000,{head},{link}"], env=env)


def checkpoint(
    worktree: Path,
    *,
    message: str,
    author: str,
    exclude: Sequence[str] = (),
    droppings: Sequence[str] = (),
    report_secrets: bool = False,
    max_file: int | None = DEFAULT_MAX_FILE,
) -> str | None:
    """Commit everything in *worktree* (edits and untracked files, minus ignored ones).

    Paths in *exclude* (relative to the worktree root, taken literally) stay out of the
    branch: never added, and taken out of the index (not the disk) when an agent added or
    committed them itself. They are the ``link`` symlinks, which an ignore rule like
    ``node_modules/`` does not match because a symlink is not a directory to git.
    *droppings* are glob patterns (from the worktree root) of an agent tool's own files, such
    as aider's chat history: never added, without touching the user's ignore files. Returns
    the new HEAD, or None when there was nothing to commit; GitError, committing nothing, while
    a merge (cherry-pick, revert, rebase) waits with unresolved conflicts. Hooks are skipped
    (``--no-verify``) and *author* (``Name <email>``) is also the committer. A checkout that
    was never populated (see :func:`checkout_incomplete`) is repaired first instead of
    committing its missing files as deletions. A file holding the value of a secret
    environment variable is left out (staged as it was); with *report_secrets* that raises
    SecretLeftOutError once the rest is committed. So is a file over *max_file* bytes (None:
    no cap), raising TooBigError: git hashes it once, it is never committed; and a file whose
    filter swarm's git does not run (:func:`unstage_filtered`), raising FilteredError.
    """
    env = identity_env(author)
    repair_checkout(worktree)
    restore_deleted_branch(worktree)
    if _operation_in_progress(worktree) and _run(worktree, ["ls-files", "-z", "-u"]).stdout:
        # `add --all` would take the conflict markers as the resolution, and the commit
        # would conclude the merge with them.
        raise GitError(
            f"{worktree}: a merge with unresolved conflicts is in progress; resolve it or abort "
            "it (`git merge --abort`) there first"
        )
    exclude = _unstaged(worktree, exclude)
    unhide_edits(worktree)
    # A gitlink checked out here is not looked into: a submodule's new HEAD is staged, one an
    # agent made and committed itself is an embedded repository like one it only made.
    links = populated_gitlinks(worktree)
    declared = _submodule_paths(worktree) if links else set()
    stage_gitlinks(worktree, [link for link in links if link in declared])
    added, unborn, refused = _add(worktree, [*exclude, *links], droppings)
    linked = [*_embedded(worktree, added), *(link for link in links if link not in declared)]
    if linked:  # a commit would hold a commit id nobody else has, not their files
        for literal in in_batches(f":(literal,top){path}" for path in linked):
            _run(worktree, ["rm", "-r", "-q", "-f", "--cached", "--ignore-unmatch", "--", *literal])
    embedded = [*unborn, *linked]
    filtered = unstage_filtered(worktree)
    secret = unstage_secrets(worktree)
    big = unstage_over(worktree, added, max_file)
    head = _commit(worktree, message, env, added=added.strip() != "")
    if embedded:
        raise EmbeddedRepositoryError(worktree, embedded, head)
    if refused:
        raise RefusedPathsError(worktree, refused, head)
    if filtered:
        raise FilteredError(worktree, filtered, head)
    if secret and report_secrets:
        raise SecretLeftOutError(worktree, secret, head)
    if big and max_file is not None:
        raise TooBigError(worktree, big, head, max_file)
    return head


def unstage_over(
    worktree: Path, added: str, limit: int | None, *, env: Mapping[str, str] | None = None
) -> list[str]:
    """Unstage the files `add --verbose` staged (its output *added*) whose blobs pass *limit*.

    Each goes back into the index (*env*: another index file) as HEAD has it. Returns them,
    each with its size. The files `add` names are lstat'ed first: no git runs unless one is
    bigger, or a name could not be read back (a newline in it, bytes not UTF-8); then the
    staged blobs are sized (a clean filter's blob may be smaller than its file).
    """
    if limit is None:
        return []
    big, unsure = _big_added(worktree, added, limit)
    if not (big or unsure):
        return []  # the usual case
    staged = [
        (p, blob)
        for p, mode, blob in staged_entries(worktree, env=env)
        if _has_blob(mode, blob) and (unsure or p in big)
    ]
    sizes = blob_sizes(worktree, [blob for _, blob in staged])
    over = [(p, size) for (p, _), size in zip(staged, sizes, strict=True) if size > limit]
    for literal in in_batches(f":(literal,top){path}" for path, _ in over):
        runner.run(worktree, "reset", "-q", "HEAD", "--", *literal, env=env)
    return [f"{path_text(path)} ({format_size(size)})" for path, size in over]


def unstage_filtered(worktree: Path, *, env: Mapping[str, str] | None = None) -> list[str]:
    """Unstage the changed files whose ``filter`` attribute names a driver git does not run.

    swarm's git switches off the filters the repository's own config defines (an agent can
    write that config): staged without its clean filter, a git-crypt file would be committed
    in the clear. Each goes back into the index (*env*: another index file) as HEAD has it;
    returns them, each with its filter. No git runs unless the config defines a filter.
    """
    drivers = runner.neutral_filters(worktree)
    if not drivers:
        return []
    staged = [p for p, mode, blob in staged_entries(worktree, env=env) if _has_blob(mode, blob)]
    if not staged:
        return []
    names = b"".join(os.fsencode(p) + b"\0" for p in staged)
    fields = runner.run_bytes(
        worktree, "check-attr", "-z", "--stdin", "filter", input_bytes=names, env=env
    ).stdout.split(b"\0")
    over = []
    for name, _, value in zip(fields[0::3], fields[1::3], fields[2::3], strict=False):
        driver = os.fsdecode(value)
        if driver in drivers:
            over.append((os.fsdecode(name), driver))
    for literal in in_batches(f":(literal,top){path}" for path, _ in over):
        runner.run(worktree, "reset", "-q", "HEAD", "--", *literal, env=env)
    return [f"{path_text(path)} (filter {driver})" for path, driver in over]


def _big_added(worktree: Path, added: str, limit: int) -> tuple[set[str], bool]:
    """The files *added* names bigger than *limit* on disk; whether a name could not be read."""
    big: set[str] = set()
    for line in added.splitlines():
        if line.startswith("remove '") and line.endswith("'"):
            continue
        if not (line.startswith("add '") and line.endswith("'")):
            return big, True  # part of a name with a newline
        try:
            info = (worktree / line[5:-1]).lstat()
        except OSError:
            return big, True  # not as printed: bytes not UTF-8
        if stat.S_ISREG(info.st_mode) and info.st_size > limit:
            big.add(line[5:-1])
    return big, False


def staged_entries(
    worktree: Path, *, env: Mapping[str, str] | None = None
) -> list[tuple[str, str, str]]:
    """(path, mode, blob) of each path *worktree*'s index holds changed from HEAD, not deleted.

    Listed by git NUL-separated (a name is as it is, bytes included); *env*: another index.
    """
    staged = runner.run_bytes(
        worktree, "diff", "--cached", "--raw", "--no-abbrev", "-z", "--no-renames",
        "--diff-filter=d", env=env,
    ).stdout.split(b"\0")  # fmt: skip
    entries = []
    for meta, name in zip(staged[0::2], staged[1::2], strict=False):
        _, mode, _, blob, _ = meta.decode("ascii").split()  # ":mode mode id id status"
        entries.append((os.fsdecode(name), mode, blob))
    return entries


def _has_blob(mode: str, blob: str) -> bool:
    """Whether an index entry holds a blob: not a gitlink (a commit id), nor unmerged (zeros)."""
    return mode != "160000" and bool(blob.strip("0"))


def blob_sizes(cwd: Path, blobs: Sequence[str]) -> list[int]:
    """The size of each of *blobs* (object ids) in the repository of *cwd*; 0 for one missing."""
    if not blobs:
        return []
    out = runner.run(
        cwd, "cat-file", "--batch-check=%(objectsize)", input_text="".join(f"{b}\n" for b in blobs)
    ).stdout
    return [int(line) if line.isdigit() else 0 for line in out.splitlines()]


_SECRET_SCAN_LIMIT = 8 * 2**20  # a file's first bytes: what holds a key is small


def unstage_secrets(worktree: Path, *, env: Mapping[str, str] | None = None) -> list[str]:
    """Put the files :func:`holding_secrets` finds back as HEAD has them in the index; them.

    Never in one of swarm's commits, nor in a push (*env*: as for :func:`holding_secrets`).
    """
    secret = holding_secrets(worktree, env=env)
    for literal in in_batches(f":(literal,top){path}" for path in secret):
        runner.run(worktree, "reset", "-q", "HEAD", "--", *literal, env=env)
    return secret


def holding_secrets(worktree: Path, *, env: Mapping[str, str] | None = None) -> list[str]:
    """The files staged in *worktree* whose content or name holds a secret value swarm knows.

    *env*: git's environment (``GIT_INDEX_FILE`` for an index of the caller's own).

    The values the redactor knows: of secret environment variables (an agent that dumped its
    environment into a file) and of the task's ``copy`` files. Every file the index holds
    changed from HEAD: what the checkpoint staged and what the agent staged itself, read as
    staged (the blob a commit would hold: a link's target, a file as a `working-tree-encoding`
    converted it), and listed by git NUL-separated (`add --verbose` prints a name as it is,
    and a newline in one made it two lines, neither read).
    """
    # Only values that look made up: a secret-named setting of a word (DB_PASSWORD=postgres,
    # PIP_KEYRING_PROVIDER=subprocess) is in half the files of a repository.
    values = [
        v.encode("utf-8", "surrogateescape") for v in redact.current().values if redact.made_up(v)
    ]
    if not values:
        return []
    found = []
    with runner.ObjectReader(worktree) as objects:
        # What the commit would hold (a link's target, a file as git converted it), not what
        # the worktree shows.
        for path, mode, blob in staged_entries(worktree, env=env):
            # A gitlink holds a commit id; an unmerged entry no blob of its own (all zeros).
            unread = not _has_blob(mode, blob)
            head = b"" if unread else objects.read(blob, limit=_SECRET_SCAN_LIMIT)
            held = [value for value in values if value in head]
            named = any(value in os.fsencode(path) for value in values)
            if (held and not _committed_with(worktree, path, held)) or (
                named and not _committed_with(worktree, path, [])
            ):
                found.append(path)
    return found


def _committed_with(worktree: Path, path: str, values: Sequence[bytes]) -> bool:
    """Whether *path* was last committed, holding every one of *values* (not the agent's)."""
    shown = runner.run_bytes(worktree, "cat-file", "blob", f"HEAD:{path}", check=False)
    return shown.returncode == 0 and all(value in shown.stdout for value in values)


class LeftOutError(GitError):
    """A checkpoint left some paths of an agent's out (the rest committed), saying why."""

    # Says why, naming the {paths} and the {worktree} they stay in.
    template: ClassVar[str] = "left out {paths}; they stay in {worktree}"

    def __init__(self, worktree: Path, paths: Sequence[str], head: str | None) -> None:
        """Name *paths* (in *worktree*); *head*: the checkpoint's commit of everything else."""
        self.worktree = worktree
        self.paths = tuple(paths)
        self.head = head
        super().__init__(self.template.format(paths=", ".join(self.paths), worktree=worktree))

    def __reduce__(self) -> tuple[type[LeftOutError], tuple[Path, tuple[str, ...], str | None]]:
        return type(self), (self.worktree, self.paths, self.head)


class EmbeddedRepositoryError(LeftOutError):
    """A checkpoint found repositories an agent made inside its worktree (the rest committed)."""

    template = (
        "made a git repository inside its worktree ({paths}): a commit would hold only its "
        "commit id, not its files; they stay in {worktree}"
    )


class RefusedPathsError(LeftOutError):
    """A checkpoint left out paths git refused to stage (the rest committed)."""

    template = (
        "wrote paths git refuses to store or could not read ({paths}): left out of its commit, "
        "they stay in {worktree}; the rest is committed"
    )


class TooBigError(LeftOutError):
    """A checkpoint left out files over its size cap (the rest committed)."""

    template = (
        "wrote files over max_file ({paths}): left out of its commit (GitHub refuses a file "
        "over 100 MiB), they stay in {worktree}; the rest is committed"
    )

    def __init__(self, worktree: Path, paths: Sequence[str], head: str | None, limit: int) -> None:
        """As LeftOutError; *limit* is the cap, in bytes."""
        self.limit = limit
        shown = [f"{format_size(limit)}: {paths[0]}", *paths[1:]] if paths else []
        super().__init__(worktree, shown, head)
        self.paths = tuple(paths)

    def __reduce__(self) -> tuple[type[TooBigError], tuple[Path, tuple[str, ...], str | None, int]]:  # type: ignore[override]
        return type(self), (self.worktree, self.paths, self.head, self.limit)


class FilteredError(LeftOutError):
    """A checkpoint left out files whose filter swarm's git does not run (the rest committed)."""

    template = (
        "changed files whose filter comes from the repository's own config, which swarm's git "
        "never runs ({paths}): left out of its commit (it would hold them unfiltered, a "
        "git-crypt file in the clear), they stay in {worktree}; the rest is committed"
    )


class SecretLeftOutError(LeftOutError):
    """A checkpoint left out files holding a secret value (the rest committed)."""

    template = (
        "wrote the value of a secret into {paths}: left out of its commit, it stays in "
        "{worktree}; the rest is committed"
    )


_UNBORN = re.compile(r"^error: '(.+)/' does not have a commit checked out$", re.MULTILINE)


def unborn_repositories(add_errors: str) -> list[str]:
    """The repositories without a commit that an `add`'s *add_errors* say stopped it."""
    return _UNBORN.findall(add_errors)


def refused_paths(add_errors: str) -> list[str]:
    """The paths an `add --ignore-errors`'s *add_errors* say it could not stage."""
    return [a or b for a, b in _REFUSED.findall(add_errors)]


_REFUSED = re.compile(r"^error: unable to (?:add '(.+)' to index|index file '(.+)')$", re.MULTILINE)


def _unstaged(worktree: Path, exclude: Sequence[str]) -> list[str]:
    """Take *exclude* out of *worktree*'s index; those of them `add` must be told to skip.

    `add` fails on a pathspec naming an ignored file, even an exclude; it skips those anyway.
    """
    ignored: set[str] = set()
    for literal in in_batches(f":(literal,top){path}" for path in exclude):
        _run(worktree, ["rm", "-r", "-q", "--cached", "--sparse", "--ignore-unmatch", "--",
                        *literal])  # fmt: skip
        listed = ("ls-files", "-z", "--others", "--ignored", "--exclude-standard", "--directory")
        out = runner.run_bytes(worktree, *listed, "--", *literal).stdout
        # As bytes: a name that is not UTF-8 must match its excluded self (surrogates).
        ignored |= {os.fsdecode(p).rstrip("/") for p in out.split(b"\0") if p}
    # `--directory` names a wholly ignored directory, not the files in it.
    return [
        path
        for path in exclude
        if not {path.rstrip("/"), *map(str, PurePosixPath(path).parents)} & ignored
    ]


def _add(
    worktree: Path, exclude: Sequence[str], droppings: Sequence[str]
) -> tuple[str, list[str], list[str]]:
    """`add --all` but *exclude* and *droppings*: its output, unborn repositories, refused paths.

    git refuses to add a repository an agent made but never committed in (`npm init` and the
    like make one), and a path it refuses or cannot read; with ``--ignore-errors`` it stages
    the rest, and those are left out and named. So are the directories it cannot look into
    (an agent's ``chmod 0``), which git only warns about: their files would be left out
    unseen. One it can list but not enter stops the whole `add`: it is left out and `add` runs
    again.
    """
    sealed: list[str] = []
    for _ in range(_SEALED_MAX + 1):
        res = _add_once(worktree, [*exclude, *sealed], droppings)
        stuck = _CANNOT_STAT.search(res.stderr)
        if res.returncode == 0 or stuck is None or len(sealed) == _SEALED_MAX:
            break
        parent = PurePosixPath(stuck[1]).parent
        if not _inside(parent) or str(parent) in sealed:
            break
        sealed.append(str(parent))
    unborn, refused = unborn_repositories(res.stderr), refused_paths(res.stderr)
    if res.returncode != 0 and not (unborn or refused):
        raise CommandError(["git", *_ADD], res.returncode, res.stdout + res.stderr)
    return res.stdout, unborn, [*unseen_paths(res.stderr, [f"{s}/" for s in sealed]), *refused]


def _add_once(
    worktree: Path, exclude: Sequence[str], droppings: Sequence[str]
) -> subprocess.CompletedProcess[str]:
    if not (exclude or droppings):
        return _run(worktree, _ADD, check=False)
    pathspec = [
        ":(top)",
        *(f":(exclude,literal,top){path}" for path in exclude),
        *(f":(exclude,glob,top){pattern}" for pattern in droppings),
    ]
    # On its input, NUL-separated: a `copy` glob may leave thousands of files out.
    return runner.run(
        worktree,
        *_ADD,
        "--pathspec-from-file=-",
        "--pathspec-file-nul",
        check=False,
        input_text="\0".join(pathspec) + "\0",
    )


# Directories without search permission that one checkpoint leaves out, each costing an `add`.
_SEALED_MAX = 32
# git stops at an untracked file it cannot stat (in a directory it can list but not enter).
_CANNOT_STAT = re.compile(r"^fatal: unable to stat '(.+)': Permission denied$", re.MULTILINE)
# It warns about a directory it cannot list, and perror()s a tracked file it cannot stat.
_UNSEEN_DIR = re.compile(
    r"^warning: could not open directory '(.+)': Permission denied$", re.MULTILINE
)
_UNSEEN_FILE = re.compile(r"^(?!warning: |error: |fatal: )(.+): Permission denied$", re.MULTILINE)


def unseen_paths(add_errors: str, sealed: Sequence[str] = ()) -> list[str]:
    """The directories (``name/``) and tracked files an `add`'s *add_errors* say it could not see.

    *sealed*: directories already left out. A file inside a directory named is not named again.
    """
    folders = [*sealed, *_UNSEEN_DIR.findall(add_errors)]
    files = [
        name
        for name in _UNSEEN_FILE.findall(add_errors)
        if not any(name.startswith(folder) for folder in folders)
    ]
    return sorted({*folders, *files})


def _embedded(worktree: Path, added: str) -> list[str]:
    """The paths `add --verbose` said it added that are repositories of their own."""
    paths = [
        line[5:-1].rstrip("/")
        for line in added.splitlines()
        if line.startswith("add '") and line[-1] == "'"
    ]
    # A symlink to a checkout is stored as a link, not looked into.
    found = [
        p for p in paths if (worktree / p / ".git").exists() and not (worktree / p).is_symlink()
    ]
    if found:  # submodules are not embedded ones
        submodules = _submodule_paths(worktree)
        found = [p for p in found if p not in submodules]
    return found


def _submodule_paths(worktree: Path) -> set[str]:
    """The paths inside *worktree* that ``.gitmodules`` declares submodules at.

    Anyone can commit a ``.gitmodules``: a path that leaves the worktree (``../up``, ``/x``)
    is no submodule git would make, and git refuses to list it (every checkpoint failed).
    """
    return set(_submodule_names(worktree))


def _inside(path: PurePosixPath) -> bool:
    """Whether the relative *path* names something below the directory it is relative to."""
    return bool(path.parts) and not path.is_absolute() and ".." not in path.parts


def _commit(worktree: Path, message: str, env: Mapping[str, str], *, added: bool) -> str | None:
    """Commit the index of *worktree*: its new HEAD, or None when it held nothing new."""
    # --no-gpg-sign: a user's commit.gpgSign would otherwise ask for a passphrase nobody types.
    commit = ["commit", "--quiet", "--no-verify", "--no-gpg-sign", "-m", message]
    if not added or _operation_in_progress(worktree):
        # Nothing new staged (an agent may have staged its work itself), or a merge or
        # cherry-pick an agent left, which a commit would conclude even with no change: ask
        # whether the index differs from HEAD first.
        if _run(worktree, ["diff", "--cached", "--quiet"], check=False).returncode == 0:
            return None
        res = past_stale_lock(worktree, commit, env=env)
        if res.returncode != 0:
            raise CommandError(["git", *commit], res.returncode, res.stdout + res.stderr)
    else:
        # `add` staged something: commit first and ask whether the index differs from HEAD
        # only when the commit fails (one git process less per checkpoint that has work).
        res = past_stale_lock(worktree, commit, env=env)
        if res.returncode != 0:
            if _run(worktree, ["diff", "--cached", "--quiet"], check=False).returncode == 0:
                return None
            raise CommandError(["git", *commit], res.returncode, res.stdout + res.stderr)
    head = head_in(worktree)
    if head is None:
        raise GitError(f"checkpoint in {worktree} left no HEAD")
    return head


_LOCK_EXISTS = re.compile(r"Unable to create '([^'\n]+\.lock)': File exists")
# Git holds a lock file for the moment it writes what it locks: one older than this was left
# (a git killed half-way) or planted (an agent, also under --sandbox: the top of the git dir and
# refs/ are writable there), and would fail every later write of that ref or file.
STALE_LOCK_SECONDS = 2.0


def past_stale_lock(
    cwd: Path, args: Sequence[str], *, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``git *args`` in *cwd*, unchecked, and once more past a stale lock file.

    Run again only when it failed on one that :func:`removed_stale_lock` removed.
    """
    res = _run(cwd, args, check=False, env=env)
    if res.returncode != 0 and removed_stale_lock(cwd, res.stdout + res.stderr):
        res = _run(cwd, args, check=False, env=env)
    return res


def removed_stale_lock(cwd: Path, said: str) -> bool:
    """Remove a stale lock file git *said* it could not create in *cwd*'s repository.

    Whether one was removed (stale: :data:`STALE_LOCK_SECONDS`). Only a file named ``*.lock``
    under that repository's common dir (its worktrees' admin dirs too): git's message names
    the path, which is not trusted further.
    """
    match = _LOCK_EXISTS.search(said)
    if match is None:
        return False
    found = _run(cwd, ["rev-parse", "--git-common-dir"], check=False)
    if found.returncode != 0:
        return False
    common = Path(os.path.realpath(cwd / found.stdout.strip()))
    lock = Path(match[1])
    try:
        inside = Path(os.path.realpath(lock.parent)).is_relative_to(common)
        stale = time.time() - lock.lstat().st_mtime > STALE_LOCK_SECONDS
    except OSError:
        return False
    if not inside or not stale or not lock.name.endswith(".lock"):
        return False
    with suppress(FileNotFoundError):
        lock.unlink()
    return True


# Files git keeps while a merge, cherry-pick, revert or rebase waits for a commit.
_OBJECT_NAME = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")
_REF_FILE = re.compile(rb"[0-9a-f]{40}(?:[0-9a-f]{24})?|ref: refs/\S+")


def is_object_name(text: str) -> bool:
    """Whether *text* is a full object name (SHA-1 or SHA-256, lowercase hex)."""
    return _OBJECT_NAME.fullmatch(text) is not None


def broken_ref_file(path: Path) -> bool:
    """Whether *path* is a regular file git cannot read as a ref (garbage written into it).

    Not a symlink, directory or missing file: those are no loose ref of garbage to mend.
    """
    try:
        if not stat.S_ISREG(path.lstat().st_mode):
            return False
        data = path.read_bytes().strip()
    except OSError:
        return False
    return _REF_FILE.fullmatch(data) is None


_OPERATIONS = {
    "MERGE_HEAD": "a merge",
    "CHERRY_PICK_HEAD": "a cherry-pick",
    "REVERT_HEAD": "a revert",
    "rebase-merge": "a rebase",
    "rebase-apply": "a rebase",
    "BISECT_LOG": "a bisect",
}
# What a commit would land inside (a bisect does not take one).
_IN_PROGRESS = tuple(name for name in _OPERATIONS if name != "BISECT_LOG")


def operation_in_progress(worktree: Path) -> str | None:
    """The git operation under way in *worktree* (``a rebase``, ...), or None.

    One a user left half done there (a conflict resolved and staged, not continued): a
    commit of swarm's would land inside it.
    """
    try:
        admin = git_dir(worktree)
    except GitError:
        return None
    return next((what for name, what in _OPERATIONS.items() if (admin / name).exists()), None)


def _operation_in_progress(worktree: Path) -> bool:
    try:
        admin = git_dir(worktree)
    except GitError:
        return True  # unknown: take the careful path
    return any(os.path.lexists(admin / name) for name in _IN_PROGRESS)


def head_in(worktree: Path) -> str | None:
    """The commit HEAD of *worktree* points at, read from git's files where they are plain.

    A checkpoint's commit has just written the branch as a loose ref, so reading ``HEAD`` and
    that file answers without a git process; anything else (packed refs, a ref backend
    without loose files, a symlinked HEAD) asks ``git rev-parse``.
    """
    try:
        admin = git_dir(worktree)
        head = _plain(admin / "HEAD")
        if head.startswith("ref: refs/heads/"):
            common = admin
            commondir = admin / "commondir"
            if commondir.is_file():
                common = admin / os.fsdecode(fs.read_file(commondir)).strip()
            ref = head.removeprefix("ref: ")
            if ".." not in ref.split("/"):
                head = _plain(common / ref)
    except (OSError, GitError):
        head = ""
    if _OBJECT_NAME.fullmatch(head):
        return head
    return rev_parse_in(worktree, "HEAD")


def _plain(path: Path) -> str:
    """The text of one of git's small files (HEAD, a loose ref), stripped."""
    return fs.read_file(path).decode("utf-8", errors="replace").strip()


def restore_deleted_branch(worktree: Path) -> str | None:
    """Put back the branch *worktree* is on if it is gone, at HEAD's last commit; that commit.

    An agent that deleted its own branch (`git update-ref -d`, `git branch -D` from elsewhere)
    had its checkpoint start a history of its own: a root commit of every file, sharing no
    base with anything (no diff, no merge, every retry the same). HEAD's reflog in the
    worktree's admin dir still names the commit it was last at (before the deletion's line).
    """
    if head_in(worktree) is not None:
        return None
    try:
        admin = git_dir(worktree)
        head = _plain(admin / "HEAD")
        logged = os.fsdecode(fs.read_file(admin / "logs" / "HEAD")).splitlines()
    except (OSError, GitError):
        return None
    # The newest value that is a commit: the deletion itself is logged, to zeros.
    values = [line.split(" ")[1:2] for line in reversed(logged)]  # "old new who when\tmsg"
    last = next(
        (v[0] for v in values if v and _OBJECT_NAME.fullmatch(v[0]) and v[0].strip("0")), ""
    )
    if not head.startswith("ref: refs/heads/") or not last:
        return None
    if _run(worktree, ["cat-file", "-e", f"{last}^{{commit}}"], check=False).returncode != 0:
        return None
    ref = head.removeprefix("ref: ")
    done = _run(worktree, ["update-ref", "-m", "swarm: put back", ref, last, ""], check=False)
    return last if done.returncode == 0 else None


def checkout_incomplete(worktree: Path) -> bool:
    """Whether *worktree* was never populated: it has no index while its HEAD has files.

    ``git worktree add --no-checkout`` makes a worktree without an index, and ``read-tree
    -u`` writes the index only once every file is written; a process killed in between leaves
    files missing that ``git add --all`` would record as deleted.
    """
    try:
        index = git_dir(worktree) / "index"
    except GitError:
        return False
    if index.exists():
        return False
    res = _run(worktree, ["ls-tree", "--name-only", "HEAD"], check=False)
    return res.returncode == 0 and bool(res.stdout.strip())


def repair_checkout(worktree: Path) -> bool:
    """Populate a checkout that was never populated (files and index from HEAD).

    Returns whether a repair was needed. Only an unpopulated checkout is touched: swarm
    populates a worktree before any agent runs in it, so such a checkout holds no work.
    """
    if not checkout_incomplete(worktree):
        return False
    _run(worktree, ["read-tree", "--reset", "-u", "HEAD"])
    return True


def diff_stat(repo: Repo, base: str, tip: str) -> DiffStat:
    """Count files, inserted and deleted lines *tip* changed since *base* (binary files count).

    From their merge base, as `swarm diff` shows and a merge takes: a branch reset behind its
    base changed nothing (it showed the base's own changes undone, and the task was done).
    """
    if base == tip:  # an attempt that committed nothing on an untouched branch
        return DiffStat(files=0, insertions=0, deletions=0)
    out = git(
        repo.root,
        *("diff", "--raw", "--no-abbrev", "--numstat", "-z"),
        *("--end-of-options", f"{base}...{tip}", "--"),
    )
    fields = out.split("\0")
    files = insertions = deletions = 0
    content: list[str] = []
    blobs: dict[str, str] = {}  # each changed path's new blob
    changed: list[tuple[str, str]] = []
    i = 0
    while i < len(fields):
        field = fields[i]
        i += 1
        if not field:
            continue
        if field.startswith(":"):  # raw: ":modes ids status" then the path (two for R and C)
            meta = field.split()
            named = 2 if meta[4][:1] in {"R", "C"} else 1
            content.append("\0".join([meta[3], *fields[i : i + named]]))  # a rename changes it
            blobs[fields[i + named - 1]] = meta[3]
            i += named
            continue
        added, deleted, path = field.split("\t", 2)
        if not path:
            # A rename/copy: the stat line is followed by two NUL-terminated paths.
            path = fields[i + 1]
            i += 2
        files += 1
        # Binary files show "-" instead of line counts.
        insertions += int(added) if added != "-" else 0
        deletions += int(deleted) if deleted != "-" else 0
        if blobs.get(path, "0").strip("0"):  # not a deletion
            changed.append((path, blobs[path]))
    return DiffStat(
        files=files,
        insertions=insertions,
        deletions=deletions,
        content=" ".join(content),
        blobs=tuple(changed),
    )


def over_size(repo: Repo, diff: DiffStat, limit: int) -> list[tuple[str, int]]:
    """The files *diff* added or changed whose new content is over *limit* bytes, sized.

    Every one is sized (one git process): a `diff` attribute makes a file text to the diff,
    however big.
    """
    sizes = blob_sizes(repo.root, [blob for _, blob in diff.blobs])
    return [(path, size) for (path, _), size in zip(diff.blobs, sizes, strict=True) if size > limit]


def over_size_reason(over: Sequence[tuple[str, int]], limit: int) -> str:
    """Why a task whose branch holds the files *over* (path, size) its cap *limit* failed."""
    named = ", ".join(f"{path} ({format_size(size)})" for path, size in over)
    return (
        f"its branch holds files over max_file ({format_size(limit)}) its agent committed or "
        f"staged itself: {named}; GitHub refuses a push holding a file over 100 MiB"
    )


def changed_paths(repo: Repo, base: str, tip: str) -> list[str]:
    """The paths that differ from *base* to *tip* (new names of renames)."""
    out = git(repo.root, "diff", "--name-only", "-z", "--end-of-options", base, tip, "--")
    return [p for p in out.split("\0") if p]


# --no-optional-locks: a look never writes the index (a plain status refreshes it: on a full
# disk that fails, and in your checkout it can take the lock from your own git command).
_STATUS = ["--no-optional-locks", "status", "--porcelain=v1", "-z", "--untracked-files=all"]
# What git says, and still exits 0, when it cannot look inside part of a checkout.
_UNSEEN = ("could not open directory", "Permission denied")


def untracked_files(worktree: Path) -> set[str]:
    """The untracked files of *worktree* that are not ignored (read as bytes: any name).

    A directory git cannot look into (a check's or an agent's ``chmod 0``) is opened to its
    owner first, so that its files are listed rather than hidden.
    """
    listed = ("ls-files", "--others", "--exclude-standard", "-z")
    res = runner.run_bytes(worktree, *listed)
    if any(words.encode() in res.stderr for words in _UNSEEN):
        fs.make_removable(worktree)
        res = runner.run_bytes(worktree, *listed)
    return {os.fsdecode(name) for name in res.stdout.split(b"\0") if name}


def remove_new(worktree: Path, names: Collection[str]) -> None:
    """Delete *names* (files, symlinks) and the directories they leave empty.

    Never through a symlinked directory that leads out of *worktree* (one a check made). The
    directories of *worktree* are opened to their owner when one is read-only (a test suite's
    ``chmod -R a-w .``).
    """
    inside = real_path(worktree)
    for name in names:
        path = worktree / name
        if real_path(path.parent).is_relative_to(inside):
            with suppress(FileNotFoundError, IsADirectoryError):
                try:
                    path.unlink()
                except PermissionError:
                    fs.make_removable(worktree)
                    path.unlink()
    parents = {parent for name in names for parent in PurePosixPath(name).parents}
    for parent in sorted(parents, key=lambda p: len(p.parts), reverse=True):
        if parent.parts:
            with suppress(OSError):  # not empty: something else is in it
                (worktree / parent).rmdir()


def reset_hard(worktree: Path, *, env: Mapping[str, str] | None = None) -> None:
    """Put *worktree*'s tracked files and index back as HEAD has them (``reset --hard``).

    When git may not write a directory (a check's ``chmod -R a-w .``), the directories of
    *worktree* are opened to their owner and it runs again.
    """
    args = ["reset", "--quiet", "--hard", "HEAD"]
    res = _run(worktree, args, check=False, env=env)
    if res.returncode == 0:
        return
    if "Permission denied" in res.stderr:
        fs.make_removable(worktree)
    _run(worktree, args, env=env)  # raising as git.git does (a full disk told apart)


def status_porcelain(path: Path) -> str:
    """Return ``git status --porcelain=v1 -z --untracked-files=all`` of *path*, raw."""
    return git(path, *_STATUS)


def status_paths(path: Path) -> list[str]:
    """The paths :func:`status_porcelain` lists (a rename's or copy's new path, not its source)."""
    fields = iter(status_porcelain(path).split("\0"))
    found = []
    for field in fields:
        if field:
            found.append(field[3:])  # porcelain v1: `XY path`
        if field[:1] in {"R", "C"}:  # the source follows
            next(fields, None)
    return found


def full_status(path: Path) -> str | None:
    """:func:`status_porcelain` of *path*, or None when git could not see all of it.

    A directory without read or search permission hides its files from git, which only warns:
    an empty status would then be a checkout that looks clean and is not.
    """
    res = _run(path, _STATUS)
    return None if any(words in res.stderr for words in _UNSEEN) else res.stdout


def submodule_work(worktree: Path) -> list[str]:
    """The submodule paths of *worktree* that hold work no commit of its branch can record.

    A commit records a submodule as one commit id. Files written into a submodule directory
    that was never populated (swarm leaves them empty, as `git worktree add` does) are seen
    by no `git status`, and edits inside a populated submodule are that repository's to
    commit: removing the worktree would lose both. Only looked for when a ``.gitmodules``
    names submodules (a gitlink without one is not a submodule git can populate either).
    """
    paths = sorted(_submodule_paths(worktree))
    if not paths:
        return []
    staged = _run(worktree, ["ls-files", "-z", "--stage", "--",
                             *(f":(literal){p}" for p in paths)]).stdout  # fmt: skip
    links = [
        entry.partition("\t")[2] for entry in staged.split("\0") if entry.startswith("160000 ")
    ]
    found: list[str] = []
    populated: list[str] = []
    for link in links:
        directory = worktree / link
        if (directory / ".git").exists():
            populated.append(link)
        elif directory.is_dir() and _holds_anything(directory):
            found.append(link)
    # Asked in the submodule itself, hardened against its own config like any checkout (git
    # recursing into it from here would run it under that config).
    found += (link for link in populated if _run(worktree / link, _STATUS, check=False).stdout)
    return sorted(found)


def submodule_commits_only_here(repo: Repo, worktree: Path) -> list[str]:
    """Submodules of *worktree* whose checked-out commit is in no repository but its own.

    An agent that commits inside a submodule it populated makes a commit that lives in the
    worktree's own clone of it (under the worktree's admin dir): the branch records its id,
    and removing the worktree deletes the commit. Kept elsewhere means: in your submodule's
    repository (``.git/modules/<name>``), or on a ref of the submodule's remote as its clone
    fetched them. Each entry is ``path (commit)``.
    """
    names = _submodule_names(worktree)
    found: list[str] = []
    for link, name in sorted(names.items()):
        directory = worktree / link
        if not (directory / ".git").exists():
            continue
        head = _run(directory, ["rev-parse", "--verify", "-q", "HEAD^{commit}"], check=False)
        commit = head.stdout.strip()
        if head.returncode != 0 or not commit:
            continue
        # The commit your checkout pins: the agent only checked it out.
        if rev_parse_in(repo.root, f"HEAD:{link}") == commit:
            continue
        if _held(directory, commit, "refs/remotes", "refs/tags"):  # as its clone fetched them
            continue
        yours = repo.common_dir / "modules" / name
        if _inside(PurePosixPath(name)) and yours.is_dir() and _held(yours, commit):
            continue
        found.append(f"{link} ({commit[:12]})")
    return found


def _held(git_dir: Path, commit: str, *patterns: str) -> bool:
    """Whether a ref of the repository at *git_dir* (under *patterns*) holds *commit*.

    A commit that is only there (fetched by its id, left for a `git gc` to come) is not held.
    """
    said = _run(git_dir, ["for-each-ref", "--count=1", "--format=%(refname)",
                          "--contains", commit, *patterns], check=False)  # fmt: skip
    return said.returncode == 0 and bool(said.stdout.strip())


def _submodule_names(worktree: Path) -> dict[str, str]:
    """Path to name of each submodule *worktree*'s ``.gitmodules`` declares inside it."""
    if not (worktree / ".gitmodules").is_file():
        return {}
    named = _run(worktree, ["config", "--file", ".gitmodules", "--null", "--get-regexp",
                            r"^submodule\..*\.path$"], check=False).stdout  # fmt: skip
    names: dict[str, str] = {}
    for entry in named.split("\0"):
        key, _, path = entry.partition("\n")
        if entry and _inside(PurePosixPath(path)):
            names[path] = key.removeprefix("submodule.").removesuffix(".path")
    return names


def _holds_anything(directory: Path) -> bool:
    try:
        with os.scandir(directory) as entries:
            return next(entries, None) is not None
    except OSError:
        return True  # what cannot be read may hold work


def write_config_file(path: Path, items: Mapping[str, str]) -> None:
    """Write a git config file of ``section[.subsection].name = value`` items, without git.

    One file per task would otherwise cost a `git config` process per key. Values are always
    quoted and escaped, so no value can start a section or a comment.
    """
    sections: dict[tuple[str, str | None], list[str]] = {}
    for key, value in items.items():
        section, _, rest = key.partition(".")
        sub, _, name = rest.rpartition(".")
        if not section or not name or "\n" in key:
            raise ValueError(f"not a git config key: {key!r}")
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        sections.setdefault((section, sub or None), []).append(f'\t{name} = "{escaped}"')
    text = ""
    for (section, subsection), rows in sections.items():
        head = f"[{section}]"
        if subsection is not None:
            head = f'[{section} "{_escape_sub(subsection)}"]'
        text += head + "\n" + "\n".join(rows) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _escape_sub(sub: str) -> str:
    return sub.replace("\\", "\\\\").replace('"', '\\"')
