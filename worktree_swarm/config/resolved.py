"""A run's tasks with every setting resolved, as `swarm run --dry-run` shows them.

What each task would start with, after the config file, the manifest's ``[defaults]``, the
task's own keys and the command-line flags were laid over each other: a manifest a reader (or
``swarm run``) can read back, every key written out. Environment values are never shown.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import TYPE_CHECKING

from worktree_swarm.config import tomlwrite
from worktree_swarm.config.settings import SETTINGS
from worktree_swarm.core.settings import Kind, Scope
from worktree_swarm.core.task import STEP_TIMEOUT

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from worktree_swarm.core.run_settings import RunSpec
    from worktree_swarm.core.task import Task

HIDDEN = "[not shown]"  # an environment value's place
_EXACT = 2.0**53  # every integer below it is a float of its own


def as_manifest(spec: RunSpec, *, worktrees: Mapping[str, Path], header: str) -> str:
    """*spec* as a manifest: ``[defaults]`` with the run-wide keys, a ``[[task]]`` per task.

    *worktrees*: each task's worktree, named in a comment; *header*: the comment on top.
    """
    run = run_settings(spec)
    lines = [tomlwrite.comment(header), "", "[defaults]"]
    lines += [f"{tomlwrite.key(k)} = {tomlwrite.value(v)}" for k, v in run.items() if v is not None]
    for task in spec.tasks:
        lines += ["", tomlwrite.comment(f"branch {task.branch}, worktree {worktrees[task.id]}")]
        lines.append(tomlwrite.table_array("task", [task_settings(task)]))
    return "\n".join(lines) + "\n"


def run_settings(spec: RunSpec) -> dict[str, object]:
    """*spec*'s run-wide keys as a manifest writes them (unset ones as None)."""
    return {e.key: _shown(e.kind, getattr(spec, e.key)) for e in SETTINGS if e.scope is Scope.RUN}


def task_settings(task: Task) -> dict[str, object]:
    """*task*'s keys as a manifest writes them (unset ones as None); its env values hidden."""
    shown: dict[str, object] = {}
    for entry in SETTINGS:
        if entry.scope is Scope.RUN:
            continue
        if entry.kind is Kind.AGENT:  # a profile by name, a command line as its argv
            shown[entry.key] = list(task.agent_argv) if task.agent == "command" else task.agent
        else:
            shown[entry.key] = _shown(entry.kind, getattr(task, entry.key))
    # The limits a run applies when none is set, as it will apply them.
    for key in ("setup_timeout", "check_timeout"):
        shown[key] = shown[key] or _duration(STEP_TIMEOUT)
    shown["resolve_timeout"] = (
        shown["resolve_timeout"] or shown["timeout"] or _duration(STEP_TIMEOUT)
    )
    return shown


def _shown(kind: Kind, value: object) -> object:
    """*value* as a manifest writes it: durations as text, tuples as lists, choices by name."""
    if value is None or (value == "" and kind is not Kind.TEXT):
        return None
    if kind is Kind.DURATION and isinstance(value, int | float):
        return _duration(float(value))
    if kind is Kind.ENV and isinstance(value, tuple):
        return {name: HIDDEN for name, _ in value}
    if kind is Kind.CHOICE:
        return str(getattr(value, "value", value))
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return _plain(value)


def _plain(value: object) -> object:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, PurePath) else value


def _duration(seconds: float) -> str | float:
    """``1h30m``, ``45m``, ``90s`` where that is exact; else the number of seconds."""
    if not seconds.is_integer() or seconds >= _EXACT:  # past 2**53 the float is what reads back
        return seconds
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if n]
    return "".join(parts) or "0s"
