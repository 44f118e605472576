"""Agent profiles: how a named agent becomes an argv template.

An adapter builds argv/env for an attempt and interprets the outcome. Issue #3 adds full
adapters for claude/codex/aider/gemini (resume, rate limits, cost); this module is the seam.
"""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from worktree_swarm.errors import BadInputError

PLACEHOLDERS = ("prompt", "prompt_file", "task_id", "worktree", "branch")

PROFILES: dict[str, tuple[str, ...]] = {
    # The bundled scripted agent: used by `swarm demo` and the tests; needs no API key.
    "scripted": (sys.executable, "-m", "worktree_swarm.agents.scripted", "{prompt_file}"),
    "claude": (
        "claude",
        "-p",
        "{prompt}",
        "--output-format",
        "json",
        "--permission-mode",
        "acceptEdits",
    ),
    "codex": ("codex", "exec", "--json", "--full-auto", "{prompt}"),
    "aider": ("aider", "--yes-always", "--message-file", "{prompt_file}"),
    "gemini": ("gemini", "--yolo", "--prompt", "{prompt}"),
}


def resolve_agent(spec: str | Sequence[str], *, where: str, repo_root: Path) -> tuple[str, ...]:
    """Turn a profile name or an argv list into an argv template whose program exists.

    *where* names the manifest location for the error message.
    """
    if isinstance(spec, str):
        if spec not in PROFILES:
            known = ", ".join(sorted(PROFILES))
            raise BadInputError(
                f"{where}: unknown agent {spec!r} (known: {known}, or an argv list)"
            )
        argv = PROFILES[spec]
    else:
        argv = tuple(spec)
        if not argv or not all(isinstance(a, str) and a for a in argv):
            raise BadInputError(
                f"{where}: agent must be a profile name or a non-empty list of strings"
            )
    program = argv[0]
    if not _program_exists(program, repo_root):
        raise BadInputError(f"{where}: agent program {program!r} not found on PATH")
    return argv


def _program_exists(program: str, repo_root: Path) -> bool:
    if "/" in program:
        path = Path(program)
        if not path.is_absolute():
            path = repo_root / path
        return path.is_file()
    return shutil.which(program) is not None


def render_argv(template: Sequence[str], values: dict[str, str]) -> list[str]:
    """Substitute ``{name}`` placeholders inside each argument; nothing else is interpreted.

    One pass per argument, so a placeholder spelled inside task text is never expanded.
    """
    return [_PLACEHOLDER_RE.sub(lambda m: values.get(m.group(1), ""), arg) for arg in template]


_PLACEHOLDER_RE = re.compile("\\{(" + "|".join(PLACEHOLDERS) + ")\\}")
