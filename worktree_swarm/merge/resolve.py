"""`swarm merge --resolve`: hand a conflicted merge to the task's agent in the merge worktree."""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from worktree_swarm.agents import adapter_for, claude_auth
from worktree_swarm.agents.base import prompt_argument
from worktree_swarm.core.models import ProcessIdentity
from worktree_swarm.core.run_settings import DEFAULT_MAX_FILE
from worktree_swarm.core.task import STEP_TIMEOUT, Task
from worktree_swarm.core.text import path_text, paths_text
from worktree_swarm.git import index_copy, runner, staged
from worktree_swarm.git import repo as git
from worktree_swarm.git.config_overrides import neutral_filters
from worktree_swarm.infra import fs, scrub, supervisor

KILL_GRACE = 5.0
DEFAULT_MARKER_SIZE = 7  # git's, unless a file's `conflict-marker-size` attribute says otherwise
Index = dict[str, bytes]  # path -> its `git ls-files --stage` entry (mode, object, stage)


@dataclass(frozen=True, slots=True, kw_only=True)
class Resolution:
    """How a resolver ended: *why* the merge is not resolved (None when it is).

    *also* names what it changed besides the conflicted paths (committed with the merge).
    """

    why: str | None
    also: tuple[str, ...] = ()


def resolve_prompt(task: Task, *, target: str, files: Sequence[str]) -> str:
    """The prompt that asks an agent to finish a conflicted merge (file names are data).

    Each name is shown as git shows it: quoted with C escapes when it holds a control
    character or bytes that are not UTF-8 (which the prompt file could not hold).
    """
    listed = "\n".join(f"- {path_text(name)}" for name in files)
    return (
        f"You are in a git worktree where the work of task `{task.id}` is being merged into"
        f" `{target}`, and the merge stopped on conflicts in these files:\n\n{listed}\n\n"
        "Edit them so that both sides' intent is kept, remove every conflict marker"
        " (<<<<<<<, =======, >>>>>>>), make sure the code still works, and stop."
        " A conflict without markers (a binary file, a file deleted on one side, a file where"
        " the other side has a directory or a symlink) is resolved by what you leave and stage:"
        " to keep one side as it is, run `git checkout --ours -- FILE` (or `--theirs`) and"
        " `git add -- FILE`, or `git rm -- FILE` to delete it; a file you leave as the merge"
        " stopped and do not stage is taken as not resolved."
        " Do not commit, do not run `git merge --abort`, `git reset`, or `git checkout` of a"
        " branch or commit.\n\n"
        f"The task's original prompt, for context:\n\n{task.prompt}\n"
    )


def run_resolver(
    task: Task,
    *,
    worktree: Path,
    target: str,
    files: Sequence[str],
    logs: Path,
    env: dict[str, str],
    on_start: Callable[[ProcessIdentity], None] | None = None,
    max_file: int | None = DEFAULT_MAX_FILE,
) -> Resolution:
    """Run the task's agent on the conflicts and stage its result.

    When it is not resolved the :class:`Resolution` says why (the caller undoes the merge):
    the agent failed, left conflict markers, left a conflicted path as the merge stopped
    (unmerged, unchanged), changed a file under a filter swarm's git does not run, or wrote a
    file holding a secret's value or over *max_file* (the run's; None: no cap). Waits at most
    the task's ``resolve_timeout`` (else its ``timeout``, else 30 minutes). *on_start* is
    handed the agent's process identity as it starts.
    """
    if not task.agent_argv:
        return Resolution(why=f"task {task.id} has no agent command recorded; resolve it by hand")
    stopped = _Stopped.of(worktree, files)
    logs.mkdir(parents=True, exist_ok=True)
    text = resolve_prompt(task, target=target, files=files)
    prompt_file = logs / f"resolve-{task.id}.md"
    prompt_file.write_text(text, encoding="utf-8")
    values = {
        # As a run hands it over: a long one (the task's own prompt is in it) as a pointer.
        "prompt": prompt_argument(text, prompt_file),
        "prompt_file": str(prompt_file),
        "task_id": task.id,
        "worktree": str(worktree),
        "branch": target,
    }
    adapter = adapter_for(task.agent)
    argv = adapter.argv(task.agent_argv, values=values, session_id=None, resume_prompt=None)
    log_path = logs / f"resolve-{task.id}.log"
    limit = task.resolve_timeout or task.timeout or STEP_TIMEOUT
    config_dir = logs / "agent-config"
    # Under the shim: a timeout or Ctrl-C kills the resolver's whole tree.
    try:
        # A copy of your Claude sign-in for it, taken out once it ended, as in a run.
        agent_env = adapter.env(base=env, task_id=task.id, config_dir=config_dir)
        ended = supervisor.run_to_end(
            argv,
            cwd=worktree,
            env=agent_env,
            log_path=log_path,
            timeout=limit,
            grace=KILL_GRACE,
            on_start=on_start,
        )
    finally:
        claude_auth.release(config_dir)
        scrub.scrub_file(log_path)  # as an agent's log in a run, once nothing appends
    if ended.cut is not None:
        return Resolution(why=f"the agent did not finish resolving within {limit:.0f}s")
    if ended.code != 0:
        return Resolution(why=f"the agent exited {ended.code} while resolving (log {log_path})")
    return stopped.staged(worktree, max_file)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Stopped:
    """The merge worktree as the merge stopped, to tell what a resolver did to it."""

    files: tuple[str, ...]
    unmerged: dict[str, tuple[object, ...]]  # index path -> its working tree state then
    index: Index  # as the merge stopped
    marker_sizes: dict[str, int]

    @classmethod
    def of(cls, worktree: Path, files: Sequence[str]) -> _Stopped:
        # Read before the agent runs: its edits to `.gitattributes` change no marker size.
        return cls(
            files=tuple(files),
            unmerged={p: _state(worktree / p) for p in _unmerged(worktree)},
            index=_index(worktree),
            marker_sizes=_marker_sizes(worktree, files),
        )

    def staged(self, worktree: Path, max_file: int | None = DEFAULT_MAX_FILE) -> Resolution:
        """Check what the resolver left, stage it all, and name what it changed besides.

        Nothing lands of one that changed a file under a filter swarm's git does not run, or
        wrote one holding a secret's value or over *max_file*.
        """
        marked = [
            name
            for name in self.files
            if _has_markers(worktree / name, self.marker_sizes.get(name, DEFAULT_MARKER_SIZE))
        ]
        if marked:
            return Resolution(why=f"conflict markers left in {paths_text(marked)}")
        left = sorted(
            {
                self._conflict(p)
                for p in _unmerged(worktree)
                if p in self.unmerged and _state(worktree / p) == self.unmerged[p]
            }
        )
        if left:
            return Resolution(
                why=f"the agent left {paths_text(left)} as the merge stopped (neither changed"
                " nor staged)"
            )
        # Staged apart: a file holding a secret's value is in no object of yours, nor merged.
        why = index_copy.staged_afresh(
            worktree, lambda made: _stage(worktree, made, max_file, before=self.index)
        )
        if why is not None:
            return Resolution(why=why)
        now = _index(worktree)
        conflicted = {*self.unmerged, *self.files}
        also = sorted(
            p for p in {*self.index, *now} - conflicted if self.index.get(p) != now.get(p)
        )
        return Resolution(why=None, also=tuple(also))

    def _conflict(self, path: str) -> str:
        """The conflicted file *path* is about (a file/directory clash parks one at ``f~HEAD``)."""
        return next((f for f in self.files if path.startswith(f"{f}~")), path)


def _stage(
    worktree: Path, staging: index_copy.Staging, max_file: int | None, *, before: Index
) -> str | None:
    """Stage what the resolver left into *staging* and settle it; else why nothing lands.

    *before*: the index as the merge stopped.
    """
    added = runner.run_names(worktree, "add", "--all", "--verbose", env=staging.env)
    filtered = _filtered(worktree, staging.env, before)
    if filtered:
        return (
            f"its agent changed files under a filter swarm's git does not run"
            f" ({', '.join(filtered)}): staged without it, they would land in the clear;"
            " nothing of its resolution lands"
        )
    secret = staged.holding_secrets(worktree, env=staging.env)
    if secret:
        return (
            f"its agent wrote the value of a secret into {paths_text(secret)}; nothing of its"
            " resolution lands"
        )
    big = staged.unstage_over(worktree, added.stdout, max_file, env=staging.env)
    if big:
        return (
            f"its agent wrote files over max_file ({', '.join(big)}); nothing of its resolution"
            " lands"
        )
    staging.settle()
    return None


def _filtered(worktree: Path, env: Mapping[str, str], before: Index) -> list[str]:
    """The files staged (index *env*) unlike *before* under a filter swarm's git never runs.

    Each named with its filter: a git-crypt file written in the clear would be merged so (a
    branch's own change of one, in the index as the merge stopped, is not the resolver's). No
    git runs unless the repository's config defines a filter.
    """
    drivers = neutral_filters(worktree)
    if not drivers:
        return []
    changed = sorted(p for p, entry in _index(worktree, env=env).items() if before.get(p) != entry)
    over = staged.filtered(worktree, changed, drivers, env=env)
    return [f"{path_text(path)} (filter {driver})" for path, driver in over]


def _unmerged(worktree: Path) -> set[str]:
    """The paths *worktree*'s index holds in a conflict stage (unmerged)."""
    out = runner.run_bytes(worktree, "ls-files", "--unmerged", "-z").stdout
    return {os.fsdecode(line.partition(b"\t")[2]) for line in out.split(b"\0") if line}


def _index(worktree: Path, *, env: Mapping[str, str] | None = None) -> Index:
    """Path -> its index entry (mode, object, stage) in *worktree* (*env*: another index)."""
    out = runner.run_bytes(worktree, "ls-files", "--stage", "-z", env=env).stdout
    return {
        os.fsdecode(name): entry
        for entry, _, name in (line.partition(b"\t") for line in out.split(b"\0") if line)
    }


def _state(path: Path) -> tuple[object, ...]:
    """What is at *path* in the working tree: its type, and a file's mode and content."""
    try:
        info = path.lstat()
    except OSError:
        return ("missing",)
    if stat.S_ISLNK(info.st_mode):
        return ("symlink", str(path.readlink()))
    if not stat.S_ISREG(info.st_mode):
        return ("other", stat.S_IFMT(info.st_mode))
    try:
        digest = hashlib.sha256(fs.read_file(path)).hexdigest()
    except OSError:
        digest = ""
    return ("file", info.st_mode & 0o111, digest)


def _marker_sizes(worktree: Path, files: Sequence[str]) -> dict[str, int]:
    """The length of the conflict markers git wrote in each of *files*.

    A file's ``conflict-marker-size`` attribute, else 7 (git's ``atoi`` reading of it: a
    value that is no positive number counts as unset).
    """
    sizes: dict[str, int] = {}
    for batch in git.in_batches(files):
        args = ("check-attr", "-z", "conflict-marker-size", "--", *batch)
        fields = runner.run_bytes(worktree, *args, check=False).stdout.split(b"\0")
        for i in range(0, len(fields) - 2, 3):
            digits = re.match(rb"\s*\+?(\d+)", fields[i + 2])
            size = _as_c_int(int(digits[1])) if digits else 0
            sizes[os.fsdecode(fields[i])] = size if size > 0 else DEFAULT_MARKER_SIZE
    return sizes


def _as_c_int(value: int) -> int:
    """*value* as git's ``atoi`` gives it on a 64-bit machine: ``strtol``'s long, cut to an int.

    A branch's `.gitattributes` may set any number: one past Python's pattern limits made
    `swarm merge --resolve` an internal error, one past an int made markers go unseen.
    """
    value = min(value, 2**63 - 1)
    return (value + 2**31) % 2**32 - 2**31


def _marker_re(size: int) -> re.Pattern[str]:
    """Conflict marker lines of *size*: git's, or longer (a nested conflict's).

    A separator is one of exactly *size* (a Markdown heading's underline of another length
    is no marker); the lines that open, show the base of, or close a conflict may be longer.
    """
    return re.compile(
        rf"^(?:={{{size}}}|(?:<{{{size},}}|\|{{{size},}}|>{{{size},}}))(?:[ \r]|$)",
        re.MULTILINE,
    )


def _has_markers(path: Path, size: int) -> bool:
    try:
        text = fs.read_file(path).decode("utf-8", errors="replace")
    except OSError:  # gone, a directory, a named pipe: no markers to resolve
        return False
    return _marker_re(size).search(text) is not None
