"""Where swarm keeps things: the repository's layout, state, run directories and worktrees.

Every path swarm derives from a repository is computed here, so that read-only commands
(`swarm status`, `swarm notes`) need nothing from the run loop to find a run's files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from worktree_swarm.core.errors import BadInputError
from worktree_swarm.core.task import INTEGRATION_DIR_PREFIX

STATE_DIR_NAME = "swarm"


@dataclass(frozen=True, slots=True, kw_only=True)
class Repo:
    """A non-bare repository with at least one commit: its checkout and git common dir."""

    root: Path
    common_dir: Path

    @property
    def state_dir(self) -> Path:
        """Where swarm keeps its state; shared by every worktree, never committed."""
        return self.common_dir / STATE_DIR_NAME


# Linux names the file a descriptor is open on, resolved, under /proc/self/fd: one open and one
# readlink instead of an lstat per component (a worktree's admin dir is resolved several times
# a task). Elsewhere, or for a path that cannot be opened (absent, a dangling link, a directory
# on the way unsearchable), `os.path.realpath` as before.
_O_PATH = getattr(os, "O_PATH", 0)
_BY_FD = "/proc/self/fd/"
_DELETED = " (deleted)"  # what the kernel adds to the name of a file removed since it was open


def real_path(path: Path | str) -> Path:
    """*path* absolute with every symlink resolved: the one form in which paths are compared."""
    if _O_PATH:
        try:
            fd = os.open(path, _O_PATH | os.O_CLOEXEC)
        except OSError:
            pass
        else:
            try:
                named = os.readlink(f"{_BY_FD}{fd}")  # noqa: PTH115 - no Path: called often
            except OSError:
                named = ""  # no /proc here
            finally:
                os.close(fd)
            if named.startswith("/") and not named.endswith(_DELETED):
                return Path(named)
    return Path(os.path.realpath(path))


def user_path(text: str | Path, *, where: str) -> Path:
    """*text* as a path, ``~`` and ``~user`` expanded; BadInputError for a user unknown here."""
    try:
        return Path(text).expanduser()
    except RuntimeError:  # "Could not determine home directory"
        raise BadInputError(f"{where}: {str(text)!r} names a user unknown here") from None


def store_path(repo: Repo) -> Path:
    """The state database of *repo*."""
    return repo.state_dir / "state.db"


# What swarm itself keeps in a run's directory, beside one directory per task: no task may be
# named so (a task `merge` had its logs where `swarm merge` ends the programs it left running).
RUN_DIR_NAMES = frozenset({"guard", "merge", "manager.log", "paused.json", "findings.md"})

# What the redaction of a run's directory at its end leaves alone (patterns, see
# `scrub.scrub_tree`): each task's agent config (sessions a resume needs) and tmp, and the
# guards' directories, the run's and a `swarm merge`'s: those hold hard links to your
# repository's object files while their command runs, which a rewrite in place would corrupt
# (a merge may still run as the run ends). TASK_SCRUB_SKIP: the same in a task's directory.
SCRUB_SKIP = ("*/agent-config", "*/tmp", "guard", "merge/guard")
TASK_SCRUB_SKIP = ("agent-config", "tmp")


def run_dir(repo: Repo, run_id: str) -> Path:
    """Where a run's prompts and logs live (inside the git common dir, never committed).

    One directory per task, named by its id, beside swarm's own :data:`RUN_DIR_NAMES`.
    """
    return repo.state_dir / "runs" / run_id


def guard_dir(repo: Repo, run_id: str) -> Path:
    """Where a run's guard keeps its log, patches, kept packs and held object files."""
    return run_dir(repo, run_id) / "guard"


def merge_guard_dir(repo: Repo, run_id: str) -> Path:
    """Where the guard of a run's `swarm merge` keeps its baselines, log and patches."""
    return run_dir(repo, run_id) / "merge" / "guard"


def integration_worktree(worktree_root: Path, run_id: str) -> Path:
    """Where a run's `swarm merge` keeps its integration worktree, under its worktree root."""
    return worktree_root / f"{INTEGRATION_DIR_PREFIX}{run_id}"


def default_worktree_root(checkout: Path) -> Path:
    """``<parent>/<name>.swarm`` next to *checkout* (outside it, so its tools never descend).

    A submodule's checkout lies inside its superproject's, where the worktrees would show as
    untracked files and its tools would descend into them: the root goes beside the outermost
    superproject instead, named after both (``<parent>/<super>.<path>.swarm``). Any other
    repository inside a checkout (a home directory kept in git) keeps ``<name>.swarm`` beside it.
    """
    top = checkout
    inner: list[str] = []  # the submodule's path in each superproject, outermost first
    while (outer := _superproject(top)) is not None:
        inner.insert(0, top.relative_to(outer).as_posix().replace("/", "."))
        top = outer
    return top.parent / ".".join([top.name, *inner, "swarm"])


_MODULES = f"{os.sep}.git{os.sep}modules{os.sep}"  # where git keeps its submodules' git dirs


def _superproject(checkout: Path) -> Path | None:
    """The superproject whose submodule *checkout* is, or None.

    Told without git: by the ``.git`` file of an absorbed submodule, which names a git dir under
    the superproject's ``.git/modules/``, else by the nearest enclosing checkout's
    ``.gitmodules`` naming *checkout*'s path (a submodule that keeps its own ``.git`` directory).
    """
    dotgit = checkout / ".git"
    if dotgit.is_file():
        text = _small_text(dotgit)
        if text is None or not text.startswith("gitdir:"):
            return None
        gitdir = os.path.normpath(checkout / text.removeprefix("gitdir:").strip())
        head, found, _ = gitdir.partition(_MODULES)
        outer = Path(head)
        if not found or outer == checkout or not checkout.is_relative_to(outer):
            return None
        return outer
    for outer in checkout.parents:
        if (outer / ".git").exists():
            listed = _small_text(outer / ".gitmodules") or ""
            wanted = checkout.relative_to(outer).as_posix()
            return outer if wanted in _gitmodules_paths(listed) else None
    return None


def _small_text(path: Path) -> str | None:
    """The UTF-8 text of the regular file at *path* (at most 1 MiB), or None."""
    if not path.is_file():  # never a pipe, which would wait for a writer
        return None
    try:
        with path.open("rb") as file:
            return file.read(1 << 20).decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _gitmodules_paths(text: str) -> set[str]:
    """The ``path`` values of a ``.gitmodules`` file's sections."""
    found = set()
    for line in text.splitlines():
        key, equals, value = line.partition("=")
        if equals and key.strip().lower() == "path":
            found.add(value.strip().removeprefix('"').removesuffix('"').rstrip("/"))
    return found


def worktree_path(worktree_root: Path, task_id: str) -> Path:
    """Where *task_id*'s worktree lives under *worktree_root*."""
    return worktree_root / task_id
