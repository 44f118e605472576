"""Agent profiles: how a named agent becomes an argv template, and the adapter that runs it.

An adapter (one module each: claude, codex, aider, gemini, command) builds argv/env for a
first attempt or a resume and interprets the attempt's log; see docs/agents.md.
"""

from __future__ import annotations

import enum
import importlib
import os
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from worktree_swarm.agents.base import (
    PLACEHOLDERS,
    Adapter,
    AgentOutcome,
    AgentResult,
    backoff_delay,
    classify_rate_limit,
    render_argv,
)
from worktree_swarm.core.errors import BadInputError
from worktree_swarm.git import repo as git

__all__ = [
    "PLACEHOLDERS",
    "PROFILES",
    "PROVIDERS",
    "Adapter",
    "AgentOutcome",
    "AgentResult",
    "Provider",
    "adapter_for",
    "backoff_delay",
    "classify_rate_limit",
    "profile_of",
    "provider_of",
    "render_argv",
    "resolve_agent",
]

PROFILES: dict[str, tuple[str, ...]] = {
    # The bundled scripted agent: used by `swarm demo` and the tests; needs no API key.
    "scripted": (sys.executable, "-m", "worktree_swarm.agents.scripted", "{prompt_file}"),
    "claude": (
        "claude",
        "-p",
        "{prompt}",
        "--output-format",
        "stream-json",
        "--verbose",  # print mode needs it for stream-json
        "--permission-mode",
        "acceptEdits",
    ),
    # `--full-auto` is deprecated in codex exec (a warning); this is what it stood for.
    "codex": ("codex", "exec", "--json", "--sandbox", "workspace-write", "{prompt}"),
    "aider": ("aider", "--yes-always", "--message-file", "{prompt_file}"),
    # `--yolo` is deprecated in favour of this spelling; stream-json shows the session id
    # first, so a killed attempt can be resumed.
    "gemini": (
        "gemini",
        "--approval-mode",
        "yolo",
        "--output-format",
        "stream-json",
        "--prompt",
        "{prompt}",
    ),
}


class Provider(enum.StrEnum):
    """Who serves an agent's requests: the unit that rate limits apply to."""

    ANTHROPIC = "anthropic"
    OPENAI = "openai"
    GOOGLE = "google"
    OTHER = "other"


# Who serves each profile's requests: rate limits are per provider (docs/agents.md). Aider and
# command agents can talk to anyone; they share the "other" gate.
PROVIDERS: dict[str, Provider] = {
    "claude": Provider.ANTHROPIC,
    "codex": Provider.OPENAI,
    "gemini": Provider.GOOGLE,
    "aider": Provider.OTHER,
    "scripted": Provider.OTHER,
}


def provider_of(profile: str) -> Provider:
    """The provider a profile's agent talks to (``other`` when unknown)."""
    return PROVIDERS.get(profile, Provider.OTHER)


# `{name}` in an argument: a placeholder, a misspelt one, or the shell's or awk's own braces.
_BRACED = re.compile(r"(?<![$\\])\{([A-Za-z_-]+)\}")


def _check_placeholders(argv: Sequence[str], *, where: str) -> None:
    """Refuse a ``{name}`` that is nearly a placeholder (``{promt}``): it would stay as typed.

    Other braces are the program's own (``awk '{print}'``, ``${HOME}``) and are left alone.
    """
    for arg in argv:
        for name in _BRACED.findall(arg):
            if name in PLACEHOLDERS:
                continue
            meant = _nearly(name)
            if meant is not None:
                raise BadInputError(
                    f"{where}: argument {arg!r} has {{{name}}}, which is no placeholder"
                    f" (did you mean {{{meant}}}? known: "
                    + ", ".join("{" + p + "}" for p in PLACEHOLDERS)
                    + ")"
                )


def _nearly(name: str) -> str | None:
    """The placeholder *name* is a misspelling of, if any: one letter off, or case and marks.

    Not a word of the program's own that merely looks alike (`{root}`, `{bash}`, `{work}`).
    """
    plain = name.lower().replace("-", "").replace("_", "")
    for placeholder in PLACEHOLDERS:
        target = placeholder.replace("_", "")
        if plain == target or (len(plain) >= _TYPO_MIN and _one_off(plain, target)):
            return placeholder
    return None


_TYPO_MIN = 5  # a shorter word one letter off a placeholder is more likely a word of its own


def _one_off(a: str, b: str) -> bool:
    """Whether *a* and *b* differ by one letter changed, added, dropped or two swapped."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        if len(diff) == 1:
            return True
        first, *rest = diff
        return rest == [first + 1] and a[first : first + 2] == b[first : first + 2][::-1]
    short, long = (a, b) if len(a) < len(b) else (b, a)
    return any(long[:i] + long[i + 1 :] == short for i in range(len(long)))


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
        if not argv or not argv[0] or not all(isinstance(a, str) for a in argv):
            raise BadInputError(
                f"{where}: agent must be a profile name or a non-empty list of strings"
            )
        _check_placeholders(argv, where=where)
    program = argv[0]
    if "/" not in program:
        if shutil.which(program) is None:
            raise BadInputError(f"{where}: agent program {program!r} not found on PATH")
        return argv
    if not Path(program).is_absolute():
        # Run from the task's worktree: the file as committed, with its committed mode.
        if _committed_mode(repo_root, program) != "100755":
            raise BadInputError(
                f"{where}: agent program {program!r} is not committed as an executable file;"
                " worktrees hold what is committed: `chmod +x` and commit it, or name it by"
                " its absolute path"
            )
        return argv
    path = Path(program)
    if not path.is_file():
        raise BadInputError(f"{where}: agent program {program!r} not found")
    if not os.access(path, os.X_OK):
        raise BadInputError(f"{where}: agent program {program!r} is not executable")
    return argv


def _committed_mode(repo_root: Path, path: str) -> str | None:
    """The mode of *path* in the checkout's HEAD commit (None when it holds no such file)."""
    out = git.git(repo_root, "ls-tree", "HEAD", "--", path, check=False)
    return out.split(maxsplit=1)[0] if out.strip() else None


# Each profile's adapter, imported when first asked for: `swarm status` and the other quick
# commands need the profile table, not the adapters (claude's imports its credentials' locking).
_ADAPTERS: dict[str, tuple[str, str]] = {
    "claude": ("claude", "ClaudeAdapter"),
    "codex": ("codex", "CodexAdapter"),
    "aider": ("aider", "AiderAdapter"),
    "gemini": ("gemini", "GeminiAdapter"),
}
_made: dict[str, Adapter] = {}


def adapter_for(profile: str) -> Adapter:
    """The adapter of a profile name; "command", "scripted" or unknown: the generic one."""
    made = _made.get(profile)
    if made is None:
        module, cls = _ADAPTERS.get(profile, ("command", "CommandAdapter"))
        made = getattr(importlib.import_module(f"{__name__}.{module}"), cls)()
        _made[profile] = made
    return made


def profile_of(argv: Sequence[str]) -> str:
    """The built-in profile whose program *argv* runs (by file name), else ``command``."""
    program = Path(argv[0]).name if argv else ""
    return program if program in _ADAPTERS else "command"
