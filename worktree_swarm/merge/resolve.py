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
    blobs: dict[str, frozenset[str]]  # path -> the objects of its entries then (each stage's)
    marker_sizes: dict[str, int]
    drivers: frozenset[str]  # the filters the repository's config defined then

    @classmethod
    def of(cls, worktree: Path, files: Sequence[str]) -> _Stopped:
        # Read before the agent runs: its edits to `.gitattributes` change no marker size, its
        # edits to the config drop no filter.
        listed = _listing(worktree)
        blobs: dict[str, set[str]] = {}
        for path, entry in listed:
            blobs.setdefault(path, set()).add(entry.split()[1].decode("ascii"))
        return cls(
            files=tuple(files),
            unmerged={p: _state(worktree / p) for p in _unmerged(worktree)},
            index=dict(listed),
            blobs={path: frozenset(oids) for path, oids in blobs.items()},
            marker_sizes=_marker_sizes(worktree, files),
            drivers=neutral_filters(worktree),
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
        drivers = self.drivers | neutral_filters(worktree)
        # Never hashed by swarm: a file under such a filter as the resolver's own git left it
        # on disk (smudged: in the clear) is not staged; only what that git staged counts.
        on_disk = staged.filtered_on_disk(worktree, worktree, drivers=drivers)
        hashed = staged.disk_blobs(worktree, worktree, [p for p, _ in on_disk])
        unsure = [(p, d) for p, d in on_disk if hashed.get(p) not in self.blobs.get(p, frozenset())]
        # Written but not staged by the resolver's git: the change would be in the clear or lost.
        entries = _index(worktree) if unsure else {}
        why = self._in_the_clear([(p, d) for p, d in unsure if entries.get(p) == self.index.get(p)])
        skip = [p for p, _ in unsure]
        # Staged apart: a file holding a secret's value is in no object of yours, nor merged.
        why = why or index_copy.afresh(lambda: self._stage(worktree, max_file, drivers, skip))
        if why is not None:
            return Resolution(why=why)
        now = _index(worktree)
        conflicted = {*self.unmerged, *self.files}
        also = sorted(
            p for p in {*self.index, *now} - conflicted if self.index.get(p) != now.get(p)
        )
        return Resolution(why=None, also=tuple(also))

    def _stage(
        self, worktree: Path, max_file: int | None, drivers: frozenset[str], skip: Sequence[str]
    ) -> str | None:
        """Stage what the resolver left apart and settle it; else why nothing lands.

        *skip*: files under a filter swarm's git does not run, left out of its `add`.
        """
        with index_copy.staging(worktree) as staging:
            env = staging.env
            specs = [".", *(f":(exclude,literal,top){path}" for path in skip)]
            args = ("add", "--all", "--verbose", "--pathspec-from-file=-", "--pathspec-file-nul")
            added = runner.run_names(worktree, *args, env=env, input_text="\0".join(specs) + "\0")
            # Only a file left out of `add --all` can still be unmerged.
            unmerged = _unmerged(worktree, env=env) if skip else set()
            unresolved = sorted({self._conflict(p) for p in unmerged})
            if unresolved:
                return (
                    f"its agent left {paths_text(unresolved)} unresolved: under a filter swarm's"
                    " git does not run, such a file counts as resolved once your git stages it"
                    " (`git add`); nothing of its resolution lands"
                )
            # Staged unlike the merge left it (by the resolver itself, or by this `add`).
            now = _index(worktree, env=env)
            changed = sorted(p for p, entry in now.items() if self.index.get(p) != entry)
            over = staged.filtered(worktree, changed, drivers, env=env) if drivers else []
            why = self._in_the_clear(over, {p: now[p].split()[1].decode() for p, _ in over})
            if why:
                return why
            secret = staged.holding_secrets(worktree, env=env)
            if secret:
                return (
                    f"its agent wrote the value of a secret into {paths_text(secret)}; nothing"
                    " of its resolution lands"
                )
            big = staged.unstage_over(worktree, added.stdout, max_file, env=env)
            if big:
                return (
                    f"its agent wrote files over max_file ({', '.join(big)}); nothing of its"
                    " resolution lands"
                )
            staging.settle()
        return None

    def _in_the_clear(
        self, found: Sequence[tuple[str, str]], oids: Mapping[str, str] | None = None
    ) -> str | None:
        """Why nothing lands where a file of *found* (path, filter) is not as a side had it.

        *oids*: each one's object id staged now (None: none). One of the merge's sides (an
        entry of the index as the merge stopped: `git checkout --ours`) is as your git wrote
        it through the filter; anything else was written without it, in the clear.
        """
        oids = oids or {}
        new = [
            f"{path_text(path)} (filter {driver})"
            for path, driver in found
            if oids.get(path) not in self.blobs.get(path, frozenset())
        ]
        if not new:
            return None
        return (
            f"its agent changed files under a filter swarm's git does not run ({', '.join(new)}):"
            " staged without it, they would land in the clear; nothing of its resolution lands"
        )

    def _conflict(self, path: str) -> str:
        """The conflicted file *path* is about (a file/directory clash parks one at ``f~HEAD``)."""
        return next((f for f in self.files if path.startswith(f"{f}~")), path)


def _unmerged(worktree: Path, *, env: Mapping[str, str] | None = None) -> set[str]:
    """The paths *worktree*'s index (*env*: another one) holds in a conflict stage."""
    out = runner.run_bytes(worktree, "ls-files", "--unmerged", "-z", env=env).stdout
    return {os.fsdecode(line.partition(b"\t")[2]) for line in out.split(b"\0") if line}


def _index(worktree: Path, *, env: Mapping[str, str] | None = None) -> Index:
    """Path -> its index entry (mode, object, stage) in *worktree* (*env*: another index)."""
    return dict(_listing(worktree, env=env))


def _listing(worktree: Path, *, env: Mapping[str, str] | None = None) -> list[tuple[str, bytes]]:
    """Each entry of *worktree*'s index (*env*: another index): path, (mode, object, stage)."""
    out = runner.run_bytes(worktree, "ls-files", "--stage", "-z", env=env).stdout
    return [
        (os.fsdecode(name), entry)
        for entry, _, name in (line.partition(b"\t") for line in out.split(b"\0") if line)
    ]


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
