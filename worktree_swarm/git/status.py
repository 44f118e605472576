"""What a checkout holds beyond its commits, and putting it back as HEAD has it.

Its status, untracked files, and the work in submodules that no commit of its branch records.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Collection, Mapping
from contextlib import suppress
from pathlib import Path, PurePosixPath

from worktree_swarm.core.paths import Repo, real_path
from worktree_swarm.git import runner, sparse
from worktree_swarm.git.config_files import git_dir
from worktree_swarm.git.repo import git, rev_parse_in, run
from worktree_swarm.infra import fs


def submodule_paths(worktree: Path) -> set[str]:
    """The paths inside *worktree* that ``.gitmodules`` declares submodules at.

    Anyone can commit a ``.gitmodules``: a path that leaves the worktree (``../up``, ``/x``)
    is no submodule git would make, and git refuses to list it (every checkpoint failed).
    """
    return set(_submodule_names(worktree))


def is_below(path: PurePosixPath) -> bool:
    """Whether the relative *path* names something below the directory it is relative to."""
    return bool(path.parts) and not path.is_absolute() and ".." not in path.parts


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
    res = run(worktree, args, check=False, env=env)
    if res.returncode == 0:
        return
    if "Permission denied" in res.stderr:
        fs.make_removable(worktree)
    run(worktree, args, env=env)  # raising as git.git does (a full disk told apart)


def status_porcelain(path: Path) -> str:
    """Return ``git status --porcelain=v1 -z --untracked-files=all`` of *path*, raw."""
    return git(path, *_STATUS)


def status_paths(path: Path) -> list[str]:
    """The paths :func:`status_porcelain` lists (a rename's or copy's new path, not its source).

    Read as file names (:func:`runner.run_names`): each names its file in any locale.
    """
    fields = iter(runner.run_names(path, *_STATUS).stdout.split("\0"))
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
    res = run(path, _STATUS)
    return None if any(words in res.stderr for words in _UNSEEN) else res.stdout


def status_from_head(worktree: Path) -> str | None:
    """:func:`full_status` of *worktree*, which has no index, as if its index were HEAD's.

    What its checkpoint commits once its index alone is made again from HEAD (an agent
    deleted it): edits, deletions and new files. Read through an index of its own, in a
    temporary directory: the worktree is only looked at. In a sparse checkout a file
    outside its cone is no deletion, as the repair's ``sparse-checkout reapply`` has it
    (every missing file counts where the cone is not one swarm wrote).
    """
    with tempfile.TemporaryDirectory(prefix="swarm-look-") as scratch:
        env = {"GIT_INDEX_FILE": str(Path(scratch) / "index")}
        run(worktree, ["-c", "core.splitIndex=false", "read-tree", "HEAD"], env=env)
        res = run(worktree, _STATUS, env=env)
    if any(words in res.stderr for words in _UNSEEN):
        return None
    entries = [entry for entry in res.stdout.split("\0") if entry]
    sparse_on = run(worktree, ["config", "--bool", "core.sparseCheckout"], check=False)
    cone = sparse.read(git_dir(worktree)) if sparse_on.stdout.strip() == "true" else None
    if cone is not None:
        entries = [e for e in entries if e[:3] != " D " or sparse.holds(cone, e[3:])]
    return "".join(f"{entry}\0" for entry in entries)


def submodule_work(worktree: Path) -> list[str]:
    """The submodule paths of *worktree* that hold work no commit of its branch can record.

    A commit records a submodule as one commit id. Files written into a submodule directory
    that was never populated (swarm leaves them empty, as `git worktree add` does) are seen
    by no `git status`, and edits inside a populated submodule are that repository's to
    commit: removing the worktree would lose both. Only looked for when a ``.gitmodules``
    names submodules (a gitlink without one is not a submodule git can populate either).
    """
    paths = sorted(submodule_paths(worktree))
    if not paths:
        return []
    staged = runner.run_names(worktree, "ls-files", "-z", "--stage", "--",
                              *(f":(literal){p}" for p in paths)).stdout  # fmt: skip
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
    found += (link for link in populated if run(worktree / link, _STATUS, check=False).stdout)
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
        head = run(directory, ["rev-parse", "--verify", "-q", "HEAD^{commit}"], check=False)
        commit = head.stdout.strip()
        if head.returncode != 0 or not commit:
            continue
        # The commit your checkout pins: the agent only checked it out.
        if rev_parse_in(repo.root, f"HEAD:{link}") == commit:
            continue
        if _held(directory, commit, "refs/remotes", "refs/tags"):  # as its clone fetched them
            continue
        yours = repo.common_dir / "modules" / name
        if is_below(PurePosixPath(name)) and yours.is_dir() and _held(yours, commit):
            continue
        found.append(f"{link} ({commit[:12]})")
    return found


def _held(git_dir: Path, commit: str, *patterns: str) -> bool:
    """Whether a ref of the repository at *git_dir* (under *patterns*) holds *commit*.

    A commit that is only there (fetched by its id, left for a `git gc` to come) is not held.
    """
    said = run(git_dir, ["for-each-ref", "--count=1", "--format=%(refname)",
                          "--contains", commit, *patterns], check=False)  # fmt: skip
    return said.returncode == 0 and bool(said.stdout.strip())


def _submodule_names(worktree: Path) -> dict[str, str]:
    """Path to name of each submodule *worktree*'s ``.gitmodules`` declares inside it."""
    if not (worktree / ".gitmodules").is_file():
        return {}
    # Read as file names are (each keeps its bytes): compared with git's listings of them.
    args = ["config", "--file", ".gitmodules", "--null", "--get-regexp", r"^submodule\..*\.path$"]
    named = runner.run_names(worktree, *args, check=False).stdout
    names: dict[str, str] = {}
    for entry in named.split("\0"):
        key, _, path = entry.partition("\n")
        if entry and is_below(PurePosixPath(path)):
            names[path] = key.removeprefix("submodule.").removesuffix(".path")
    return names


def _holds_anything(directory: Path) -> bool:
    try:
        with os.scandir(directory) as entries:
            return next(entries, None) is not None
    except OSError:
        return True  # what cannot be read may hold work
