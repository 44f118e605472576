"""Snapshots of a checkout and of the refs: what the guard compares with its baseline."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from worktree_swarm.core.errors import CommandError
from worktree_swarm.core.text import path_text
from worktree_swarm.git import checkpoints, runner
from worktree_swarm.git import index as git_index
from worktree_swarm.git import repo as git
from worktree_swarm.git.process import StoppedError, StuckOnPipeError
from worktree_swarm.git.quarantine import alternate, keeping_shared_indexes
from worktree_swarm.guard import held_files
from worktree_swarm.guard.model import Snapshot, short_ref

# Refs the guard watches: branches, tags, the stash, its own kept tips, and replace refs (your
# git reads the object a replace ref names for the one it replaces: `git reset --hard` would
# check out an agent's tree for your commit; swarm's own git ignores them).
REF_PATTERNS = (
    "refs/heads/",
    "refs/tags/",
    "refs/stash",
    "refs/swarm/keep/",
    "refs/swarm/undone/",  # what a put-back took off your refs (restore.py)
    "refs/replace/",
)
# git's full stat check, whatever the repository's config says: a file rewritten with its size
# and mtime kept still differs in ctime (which no unprivileged process can set back).
STAT_CHECK = ("-c", "core.trustctime=true", "-c", "core.checkStat=default")
# What a gitlink of a repository without a commit points at in a capture (hashed, not stored).
UNBORN = "swarm: a repository without a commit\n"
OWN_OBJECTS = "snapshot-objects"  # under the guard's directory: the objects its captures write
MAIN_TREE = "main.tree"  # the tree of your checkout's baseline, for a manager that resumes
SURFACE_KEPT = "surface.json"  # git's own files as last taken, for the same (surface_kept)


@dataclass(frozen=True)
class Objects:
    """The guard's own object store (*own*) beside the repository's (*yours*, its ``objects``).

    A capture hashes each file whose stat its scratch index does not match: in your store, a
    file an agent wrote holding a secret's value, or a decrypted git-crypt file of your
    checkout (swarm's git runs no filter of the repository's config), would lie in the clear
    until `git gc` prunes it. So a capture writes into the guard's own store (yours its
    alternate: nothing already there is written again), and whatever reads a captured tree
    reads both (:meth:`reading`).
    """

    own: Path
    yours: Path

    def writing(self) -> dict[str, str]:
        """The environment of a git that captures a checkout: hashing into the guard's store."""
        self.own.mkdir(parents=True, exist_ok=True)
        return {"GIT_OBJECT_DIRECTORY": str(self.own), **alternate(self.yours)}

    def reading(self) -> dict[str, str]:
        """The environment of a git that reads captured trees: yours, and the guard's store."""
        return alternate(self.own) if self.own.is_dir() else {}


def capture(
    path: Path,
    scratch: Path,
    objects: Objects,
    exclude: Sequence[str] = (),
    *,
    stop: threading.Event | None = None,
) -> Snapshot:
    """HEAD, staged entries and every file git would see in *path* (via the *scratch* index).

    A checked-out submodule counts by the commit it has checked out: `add` would start git
    inside it, under its own config and attributes, which an agent can write. A repository
    without a commit (which `add` refuses, adding nothing at all) counts as a gitlink to
    ``UNBORN``: left out, it would hide the checkout from every scan. What it hashes goes
    into the guard's own store (*objects*). Once *stop* is set, its `git add` (minutes in a
    huge checkout) is ended: StoppedError.
    """
    # Its scratch index written (under `core.splitIndex`), git would delete the shared index
    # your own index names, were it older than `splitIndex.sharedIndexExpire`.
    env = {"GIT_INDEX_FILE": str(scratch), **objects.writing(), **keeping_shared_indexes()}
    try:
        return _capture(path, env, exclude, stop)
    except (StuckOnPipeError, StoppedError):
        # Stopped, git left its lock on the scratch index (the guard's own file): no later
        # capture could take it.
        scratch.with_name(scratch.name + ".lock").unlink(missing_ok=True)
        raise


def _capture(
    path: Path, env: dict[str, str], exclude: Sequence[str], stop: threading.Event | None
) -> Snapshot:
    links = git_index.populated_gitlinks(path, env)
    git_index.stage_gitlinks(path, links, env)
    skip = [f":(exclude,literal,top){link}" for link in links]
    unborn: list[str] = []
    while True:
        left_out = [f":(exclude,literal,top){p}" for p in unborn]
        args = (*STAT_CHECK, "add", "--all", "--ignore-errors", "--", ".", *exclude, *skip)
        done = runner.run_names(path, *args, *left_out, env=env, check=False, stop=stop)
        found = [p for p in checkpoints.unborn_repositories(done.stderr) if p not in unborn]
        if done.returncode == 0 or not found:
            if done.returncode != 0:
                raise CommandError(["git", "add"], done.returncode, done.stdout + done.stderr)
            break
        unborn += found
    if unborn:
        mark = git_env(path, env, "hash-object", "--stdin", input_text=UNBORN).strip()
        entries = [arg for p in unborn for arg in ("--cacheinfo", f"160000,{mark},{p}")]
        git_env(path, env, "update-index", "--add", *entries)
    tree = git_env(path, env, "write-tree").strip()
    return Snapshot(
        head_ref=symbolic_head(path),
        head=git.rev_parse_in(path, "HEAD"),
        index=staged_digest(path),
        tree=tree,
    )


def staged_digest(path: Path, env: dict[str, str] | None = None) -> str:
    """A digest of the staged entries of *path*'s index (*env*: another index file).

    With their flags (``-v``): skip-worktree and assume-unchanged hide edits from `git status`;
    and with what the file holds besides (:func:`git_index.index_extras`): a forged cache-tree or an
    intent-to-add flag changes your next commit, not what git lists.
    """
    staged = git_env(path, env or {}, "ls-files", "--stage", "-v", "-z")
    index = Path(env["GIT_INDEX_FILE"]) if env and "GIT_INDEX_FILE" in env else index_path(path)
    extras = git_index.index_extras(index) or b""
    return hashlib.sha256(staged.encode() + b"\0" + extras).hexdigest()


def status(path: Path) -> str:
    """`git status` of *path* with its branch and commit: a cheap test for any change."""
    return git.git(
        path,
        "--no-optional-locks",
        *STAT_CHECK,
        "status",
        "--porcelain=v2",
        "--branch",
        "-z",
        "--untracked-files=all",
    )


def is_clean(status_out: str) -> bool:
    """Whether a ``status --porcelain=v2 --branch -z`` output lists no change at all."""
    return all(record.startswith("# ") for record in status_out.split("\0") if record)


def status_field(status_out: str, name: str) -> str:
    """A ``# branch.<name>`` header of a ``status --porcelain=v2 --branch -z`` output."""
    prefix = f"# branch.{name} "
    return next((r[len(prefix) :] for r in status_out.split("\0") if r.startswith(prefix)), "")


def git_env(cwd: Path, env: dict[str, str], *args: str, input_text: str | None = None) -> str:
    """``git *args`` in *cwd* with *env* added to a clean environment."""
    return runner.run(cwd, *args, env=env, input_text=input_text).stdout


def index_path(path: Path) -> Path:
    """The index file of the checkout *path*."""
    return git.git_dir(path) / "index"


def drop_baselines(guard_dir: Path, *, keep_base: bool = False) -> None:
    """Delete the copies of checkouts' indexes a guard compares against, once it looks no more.

    One per task and per checkout of yours, each the size of its index: megabytes a task in a
    big repository, which a finished run has no use for. Its held object files go too: they
    keep on disk what a `git gc` freed since. So does its store, but with *keep_base* while
    the tree of your checkout's last baseline is kept (``MAIN_TREE``, a run whose manager was
    killed): the next manager of the run compares your checkout with it, and it lies there.
    The record of git's own files (``SURFACE_KEPT``, your config's bytes among them) goes in
    any case: only a resume that adopts agents still running uses it, and the run has ended.
    """
    for pattern in ("*.index", "*.scratch-index", "*.scratch-index.lock"):
        for copy in guard_dir.glob(pattern):
            with contextlib.suppress(OSError):
                copy.unlink()
    with contextlib.suppress(OSError):
        (guard_dir / SURFACE_KEPT).unlink(missing_ok=True)
    if not (keep_base and (guard_dir / MAIN_TREE).exists()):
        shutil.rmtree(guard_dir / OWN_OBJECTS, ignore_errors=True)  # what its captures hashed
    held_files.let_go(guard_dir / held_files.HELD)


def symbolic_head(path: Path) -> str | None:
    """The ref HEAD of *path* is on, None when detached."""
    out = git.git(path, "symbolic-ref", "-q", "HEAD", check=False).strip()
    return out or None


SYMBOLIC = "ref: "  # the value read for a ref made a symbolic ref: what it points to follows


def read_refs(root: Path, *, also: Sequence[str] = ()) -> dict[str, str]:
    """Every watched ref and the object it names (``ref: <target>`` for a symbolic ref).

    A branch of yours made a symbolic ref to an agent's branch looks unmoved by its object
    while the two hold the same commit, yet your checkout is then on the agent's branch.
    *also*: more ref patterns read in the same git process.
    """
    out = git.git(
        root, "for-each-ref", "--format=%(refname) %(objectname) %(symref)", *REF_PATTERNS, *also
    )
    refs: dict[str, str] = {}
    twice = set()
    for line in out.splitlines():
        name, sha, target = [*line.split(" ", 2), "", ""][:3]
        if name in refs:
            twice.add(name)
        refs[name] = f"{SYMBOLIC}{target}" if target else sha
    # A name `packed-refs` lists twice (an agent's forged line before the real one): git finds
    # a packed ref by a binary search, which may land on either; what git finds is its value.
    for name in twice:
        found = runner.run(root, "rev-parse", "--verify", "-q", name, check=False).stdout.strip()
        refs[name] = found or refs[name]
    return refs


def changed_paths(
    path: Path, before: str, after: str, env: Mapping[str, str] | None = None
) -> list[str]:
    """The paths that differ between two trees, as file names (:func:`os.fsdecode`).

    *env*: :meth:`Objects.reading`, for a captured tree.

    A name that is not UTF-8 keeps its bytes (as surrogates): it can be put back or removed,
    and is shown quoted as git quotes it (:func:`core.text.path_text`).
    """
    args = ("diff", "--name-only", "-z", "--no-renames", before, after, "--")
    out = runner.run_bytes(path, *args, env=env).stdout
    return [os.fsdecode(p) for p in out.split(b"\0") if p]


def files_patch(
    path: Path,
    before: str,
    after: str,
    paths: Sequence[str],
    env: Mapping[str, str] | None = None,
) -> str:
    """A `git apply`-able patch from tree *before* to tree *after* ('' when nothing changed).

    *env*: :meth:`Objects.reading`, for a captured tree.
    """
    if not paths:
        return ""
    header = f"# files changed in {path_text(str(path))}: git apply this to get them back\n"
    args = ("diff", "--binary", "--no-renames", before, after, "--")
    return header + runner.run(path, *args, env=env).stdout


def ref_patch(root: Path, ref: str, before: str | None, after: str | None) -> str:
    """The move of *ref*: its old and new values, the commits and their diff."""
    header = f"# {ref}: {before or '(none)'} -> {after or '(deleted)'}\n"
    if before is None or after is None:
        return header
    log = git.git(root, "log", "--format=# commit %H %s", f"{before}..{after}", check=False)
    diff = git.git(root, "diff", "--binary", before, after, "--", check=False)
    return header + log + diff


def describe_head(snap: Snapshot) -> str:
    """HEAD as a user reads it: a branch name or ``detached <commit>``."""
    if snap.head_ref:
        return short_ref(snap.head_ref)
    return f"detached {(snap.head or '?')[:12]}"


def ref_owner(ref: str) -> str | None:
    """The task whose branch *ref* is, if it is one."""
    prefix = "refs/heads/swarm/"
    return ref.removeprefix(prefix) if ref.startswith(prefix) else None
