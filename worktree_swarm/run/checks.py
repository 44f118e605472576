"""Checks that decide whether an agent's work counts: built-in ones and the user's commands."""

from __future__ import annotations

import os
import re
import shlex
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from worktree_swarm.core.errors import SwarmError
from worktree_swarm.core.models import ProcessIdentity
from worktree_swarm.core.task import STEP_TIMEOUT, Task
from worktree_swarm.core.text import path_text, without_escapes
from worktree_swarm.core.units import format_size
from worktree_swarm.git import repo as git
from worktree_swarm.infra import fs, proc_scan, supervisor
from worktree_swarm.infra.logtail import from_word_start

TAIL_LINES = 15
_TAIL_BYTES = 64 * 1024

# Markers of unfinished work an agent may leave while looking successful. Only lines the
# agent *added* are scanned, so placeholders that were already in the code never count.
PLACEHOLDER_RE = re.compile(
    r"\b(?:TODO|FIXME|XXX)\b|\bplaceholder\b|NotImplementedError|\bimplement (?:me|this)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckFailure:
    """Why a task's work does not count: one line of summary plus the output tail."""

    summary: str
    detail: str = ""
    stopped: bool = False
    final: bool = False  # no repair round mends it (its checks moved or replaced its worktree)

    def __str__(self) -> str:
        return self.summary + (f":\n{self.detail}" if self.detail else "")


def placeholder_lines(worktree: Path, base: str) -> list[str]:
    """Added lines (``path: text``) in HEAD vs *base* that look like unfinished work.

    A ``+++`` line is a file's header only before its first hunk: an added line ``++ x``
    reads ``+++ x`` in a hunk.
    """
    diff = git.git(
        worktree,
        *("diff", "--unified=0", "--no-color", "--no-ext-diff", "--no-textconv"),
        *("--src-prefix=a/", "--dst-prefix=b/", base, "HEAD"),
    )
    found, path, header = [], "", False
    for line in diff.split("\n"):
        if line.startswith("diff --git "):
            header = True
        elif line.startswith("@@"):
            header = False
        elif header and line.startswith("+++ "):
            path = path_text(_unquoted(line[4:]).removeprefix("b/"))
        elif not header and line.startswith("+") and PLACEHOLDER_RE.search(line):
            found.append(f"{path}: {line[1:].strip()}")
    return found


_ESCAPED = {"a": 7, "b": 8, "t": 9, "n": 10, "v": 11, "f": 12, "r": 13, '"': 34, "\\": 92}


def _unquoted(name: str) -> str:
    """A file name of a diff header as it is: git quotes one with odd bytes C-style.

    An unquoted one with a space ends in a tab (for patch(1)).
    """
    if not (len(name) > 1 and name[0] == name[-1] == '"'):
        return name.removesuffix("\t")
    out, i, body = bytearray(), 0, name[1:-1]
    while i < len(body):
        char = body[i]
        if char != "\\" or i + 1 == len(body):
            out += char.encode("utf-8", "surrogateescape")
            i += 1
        elif body[i + 1] in _ESCAPED:
            out.append(_ESCAPED[body[i + 1]])
            i += 2
        else:  # three octal digits: one byte
            out.append(int(body[i + 1 : i + 4], 8) & 0xFF)
            i += 4
    return os.fsdecode(bytes(out))


def run_checks(
    task: Task,
    *,
    worktree: Path,
    base: str,
    env: dict[str, str],
    log: Path,
    stop: threading.Event | None = None,
    grace: float = 5.0,
    on_start: Callable[[ProcessIdentity], None] | None = None,
    max_log: int | None = None,
) -> CheckFailure | None:
    """Run the built-in checks the task asks for, then its commands; None when all pass."""
    missing = [name for name in task.expect_files if not (worktree / name).exists()]
    if missing:
        return CheckFailure(summary=f"expected files missing: {', '.join(missing)}")
    if task.no_placeholders:
        found = placeholder_lines(worktree, base)
        if found:
            return CheckFailure(
                summary=f"{len(found)} placeholder line(s) added",
                detail="\n".join(found[:TAIL_LINES]),
            )
    return run_steps(
        task.checks,
        cwd=worktree,
        env=env,
        log=log,
        what="check",
        timeout=task.check_timeout,
        stop=stop,
        grace=grace,
        on_start=on_start,
        max_log=max_log,
    )


def run_steps(
    steps: tuple[tuple[str, ...], ...],
    *,
    cwd: Path,
    env: dict[str, str],
    log: Path,
    what: str,
    timeout: float | None = None,
    stop: threading.Event | None = None,
    grace: float = 5.0,
    on_start: Callable[[ProcessIdentity], None] | None = None,
    max_log: int | None = None,
) -> CheckFailure | None:
    """Run argv steps in order, appending their output to *log*; the first failure or None.

    Each step runs under the shim (its whole tree dies with it) and is killed when it runs
    longer than *timeout* (default ``STEP_TIMEOUT``: overnight, a check that hangs must not
    hold its task and a check slot until morning), prints more than *max_log* bytes, or when
    *stop* is set. *on_start* is handed each step's process identity as it
    starts.
    """
    limit = STEP_TIMEOUT if timeout is None else timeout
    log.parent.mkdir(parents=True, exist_ok=True)
    for number, argv in enumerate(steps, start=1):
        shown = shlex.join(argv)  # as the user would type it again, quoting kept
        with fs.open_append(log) as out:
            out.write(f"$ {shown}\n")
        start = log.stat().st_size
        try:
            ended = supervisor.run_to_end(
                argv,
                cwd=cwd,
                env=env,
                log_path=log,
                timeout=limit,
                stop=stop,
                grace=grace,
                record=log.with_name(f"{log.stem}-{number}.exit.json"),
                on_start=on_start,
                max_log=max_log,
            )
        except SwarmError as exc:
            with fs.open_append(log) as out:
                out.write(f"{exc}\n")
            why = "not found or not executable"
            return CheckFailure(summary=f"{what} `{shown}` could not start: {why}")
        # What it left running if its shim died before killing it (a check that SIGKILLed
        # its own shim): marked with the shim's record, or in its group working in *cwd*.
        record = log.with_name(f"{log.stem}-{number}.exit.json")
        proc_scan.kill_left_by(record, grace=grace, within=(cwd,))
        tail = _tail(log, start)
        if ended.cut is supervisor.Cut.STOPPED:
            return CheckFailure(summary=f"stopped during {what} `{shown}`", stopped=True)
        if ended.cut is supervisor.Cut.TIMED_OUT:
            return CheckFailure(summary=f"{what} `{shown}` timed out after {limit:g}s", detail=tail)
        if ended.cut is supervisor.Cut.PAST_MAX_LOG and max_log is not None:
            cap = format_size(max_log)
            return CheckFailure(
                summary=f"{what} `{shown}` printed more than max_log ({cap}): stopped, as it "
                "would fill the disk",
                detail=tail,
            )
        if ended.code != 0:
            return CheckFailure(summary=f"{what} `{shown}` exited {ended.code}", detail=tail)
    return None


def _tail(log: Path, start: int) -> str:
    """The last lines *log* gained after byte *start*."""
    try:
        with fs.open_file(log) as f:
            size = f.seek(0, 2)
            at = max(start, size - _TAIL_BYTES)
            f.seek(at - (at > start))  # and the byte before, if it is the check's
            # Not the end of a word the window starts inside: it could be a secret's.
            text = from_word_start(f.read(), cut=at > start).decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(without_escapes(text).strip().splitlines()[-TAIL_LINES:])
