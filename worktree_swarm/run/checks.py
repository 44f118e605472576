"""Checks that decide whether an agent's work counts: built-in ones and the user's commands."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from worktree_swarm.core.models import Task
from worktree_swarm.git import repo as git
from worktree_swarm.infra.proc import run as run_cmd

TAIL_LINES = 15

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

    def __str__(self) -> str:
        return self.summary + (f":\n{self.detail}" if self.detail else "")


def placeholder_lines(worktree: Path, base: str) -> list[str]:
    """Added lines (``path: text``) in HEAD vs *base* that look like unfinished work."""
    diff = git.git(worktree, "diff", "--unified=0", "--no-color", "--no-ext-diff", base, "HEAD")
    found, path = [], ""
    for line in diff.splitlines():
        if line.startswith("+++ "):
            path = line[6:] if line.startswith("+++ b/") else line[4:]
        elif line.startswith("+") and PLACEHOLDER_RE.search(line):
            found.append(f"{path}: {line[1:].strip()}")
    return found


def run_checks(
    task: Task, *, worktree: Path, base: str, env: dict[str, str], log: Path
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
    return run_steps(task.checks, cwd=worktree, env=env, log=log, what="check")


def run_steps(
    steps: tuple[tuple[str, ...], ...], *, cwd: Path, env: dict[str, str], log: Path, what: str
) -> CheckFailure | None:
    """Run argv steps in order, appending their output to *log*; the first failure or None."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as out:
        for argv in steps:
            shown = shlex.join(argv)  # as the user would type it again, quoting kept
            out.write(f"$ {shown}\n")
            out.flush()
            try:
                proc = run_cmd(argv, cwd=cwd, env=env, check=False)
            except OSError as exc:
                out.write(f"{exc}\n")
                return CheckFailure(summary=f"{what} `{shown}` could not start: {exc.strerror}")
            output = (proc.stdout or "") + (proc.stderr or "")
            out.write(output)
            if proc.returncode != 0:
                tail = "\n".join(output.strip().splitlines()[-TAIL_LINES:])
                return CheckFailure(
                    summary=f"{what} `{shown}` exited {proc.returncode}", detail=tail
                )
    return None
