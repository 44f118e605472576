"""The programs a `swarm merge` runs in its merge worktree: checks, and a task's setup.

Watched by the merge's guard (a resolver too), given the environment they had in the run,
and what they wrote in the worktree undone after them, or by the next merge when this one
was killed while they ran (the worktree's untracked files are put on record first).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from worktree_swarm.core.errors import SwarmError
from worktree_swarm.core.models import ProcessIdentity
from worktree_swarm.core.task import Task
from worktree_swarm.git import local_files, runner, status
from worktree_swarm.infra import fs, proc, redact, scrub
from worktree_swarm.merge.session import Candidate, Session
from worktree_swarm.merge.target import checks_record
from worktree_swarm.run.checks import CheckFailure, run_steps


@contextlib.contextmanager
def watched(s: Session, who: str) -> Iterator[Callable[[ProcessIdentity], None] | None]:
    """While inside, a program started for *who* is watched (the callback registers it)."""
    if s.guard is None:
        yield None
        return
    with s.guard.program(who) as started:
        yield started


def wrote_outside(s: Session, who: str) -> str:
    """Why the program that just ended fails its merge: what it wrote outside ('' if nothing)."""
    if s.guard is None:
        return ""
    found = s.guard.outside()
    for line in s.guard.notes():
        s.progress.note(line)
    if found and s.allow_outside_writes:  # recorded, left as it is: `swarm report` lists it
        s.progress.note(f"{who} wrote outside the merge worktree (allowed): {found}")
        return ""
    return f"{who} wrote outside the merge worktree: {found}" if found else ""


def run_checks(
    s: Session,
    steps: tuple[tuple[str, ...], ...],
    env: dict[str, str],
    *,
    who: str,
    task: Task | None = None,
) -> CheckFailure | None:
    """Run *steps* in the merge worktree (watched, for *who*), then undo what they wrote there.

    With *task*, its checks get what they had in its run first: its `copy` files, its `link`
    directories and its `setup` steps (`npm ci`). What a check (or setup) writes
    (``__pycache__``, build output, a formatter's edits) would read as uncommitted changes to
    the next merge, which refuses them, or be swept into a resolver's commit: the untracked
    files they added are removed and tracked files they changed are put back as committed.
    Files untracked before the checks ran, and ignored ones but for the copy files and
    link symlinks, are left alone.
    """
    before = status.untracked_files(s.target.worktree)
    placed = () if task is None else _placed(s, task)
    # On record first: a merge killed during the checks has the next one undo what they wrote.
    _note_untracked(s, before, placed)
    try:
        with watched(s, who) as started:
            failure = None if task is None else _prepare(s, task, env, started)
            if failure is None:
                failure = run_steps(
                    steps, cwd=s.target.worktree, env=env, log=s.log, what="check",
                    timeout=None if task is None else task.check_timeout, on_start=started,
                )  # fmt: skip
        outside = wrote_outside(s, "the checks")
        return CheckFailure(summary=outside) if outside else failure
    finally:
        scrub.scrub_file(s.log)  # as a run's checks log: a secret a check printed is gone
        _clean_after_checks(s, before, placed)
        _note_untracked(s, before)  # what was placed is gone; the record is the merge's again


def _placed(s: Session, task: Task) -> list[str]:
    """What *task*'s `copy` and `link` will add to the merge worktree: removed after its checks.

    Ignored ones too (a ``.env``): left there, a copy cut off by a killed merge, or one older
    than yours, would be what every later merge's checks get (a copy skips what exists).
    """
    try:
        names = [rel.as_posix() for _, rel in local_files.copy_sources(s.repo.root, task.copy)]
    except SwarmError:  # the copy itself fails the checks, saying why
        names = []
    worktree = s.target.worktree
    # A link goes where nothing is, or in place of what an earlier task's setup installed.
    return sorted({*(n for n in names if not os.path.lexists(worktree / n)), *task.link})


def _prepare(
    s: Session,
    task: Task,
    env: dict[str, str],
    started: Callable[[ProcessIdentity], None] | None,
) -> CheckFailure | None:
    """Give the merge worktree *task*'s copy files, links and setup."""
    worktree = s.target.worktree
    try:
        if task.copy:
            local_files.copy_into(s.repo.root, worktree, task.copy)
        for name in task.link:  # not in the way: what an earlier task's setup installed there
            _remove_ignored_dir(worktree, name)
        local_files.link_into(s.repo.root, worktree, task.link)
    except SwarmError as exc:
        return CheckFailure(summary=str(exc))
    return run_steps(
        task.setup, cwd=worktree, env=env, log=s.log, what="setup",
        timeout=task.setup_timeout, on_start=started,
    )  # fmt: skip


def _remove_ignored_dir(worktree: Path, name: str) -> None:
    """Remove the directory *name* of *worktree* when git ignores it (setup output)."""
    path = worktree / name
    if path.is_symlink() or not path.is_dir():
        return
    if not Path(os.path.realpath(path)).is_relative_to(os.path.realpath(worktree)):
        return  # through a symlink on the way: not the worktree's (link_into refuses it)
    ignored = runner.run(worktree, "check-ignore", "-q", "--", name, check=False)
    if ignored.returncode == 0:
        fs.remove_tree(path)


def _note_untracked(s: Session, before: set[str], placed: Sequence[str] = ()) -> None:
    """Put *before* (the merge worktree's untracked files) and *placed* on record."""
    record = _untracked_record(s)
    partial = record.with_suffix(".part")
    text = json.dumps({"untracked": sorted(before), "placed": list(placed)})
    partial.write_text(text, encoding="utf-8")
    partial.replace(record)


@contextlib.contextmanager
def untracked_noted(s: Session) -> Iterator[None]:
    """While inside, the merge worktree's untracked files are on record for the next merge.

    It cleans up after what ended inside half-way (see :func:`clean_after_cut_off_checks`):
    so the record goes on a normal exit only, not when an exception (a full disk) leaves.
    """
    _note_untracked(s, status.untracked_files(s.target.worktree))
    yield
    _untracked_record(s).unlink(missing_ok=True)


def _untracked_record(s: Session) -> Path:
    record = checks_record(s.target.worktree)
    if record is None:
        raise SwarmError(f"the merge worktree {s.target.worktree} is no longer a checkout")
    return record


def _clean_after_checks(s: Session, before: set[str], placed: Sequence[str] = ()) -> None:
    status.remove_new(
        s.target.worktree, (status.untracked_files(s.target.worktree) - before) | set(placed)
    )
    status.reset_hard(s.target.worktree, env=s.identity)


def clean_after_cut_off_checks(s: Session) -> None:
    """Undo what a killed `swarm merge` (its git, checks, resolver) wrote in the merge worktree.

    Files untracked then are kept; tracked files go back to HEAD.
    """
    record = _untracked_record(s)
    try:
        data = json.loads(fs.read_file(record))
        if isinstance(data, list):  # written by an older swarm: the untracked files alone
            data = {"untracked": data}
        before, placed = set(data["untracked"]), [str(n) for n in data.get("placed", ())]
    except FileNotFoundError:
        return
    except (OSError, ValueError, TypeError, KeyError, AttributeError):  # not ours to read
        before = None  # nothing is removed
    if before is not None:
        _clean_after_checks(s, before, placed)
    record.unlink(missing_ok=True)


def check_env(s: Session) -> dict[str, str]:
    """What checks and resolvers get: as in a run, no git config handed over in the environment."""
    return proc.task_env(
        {
            "SWARM_RUN_ID": s.run_id,
            "SWARM_WORKTREE": str(s.target.worktree),
            "SWARM_BRANCH": s.target.branch,
        }
    )


def task_env(s: Session, c: Candidate) -> dict[str, str]:
    """What a task's checks and resolver get: its own ``env`` too, as in its run."""
    redact.add_env(c.task.env)  # a secret-named value is redacted from their logs
    # And, as in its run, the secrets of its `copy` files, which its checks get first.
    redact.add_env(local_files.copied_secrets(s.repo.root, c.task.copy))
    return {**check_env(s), "SWARM_TASK_ID": c.task_id, **dict(c.task.env)}
