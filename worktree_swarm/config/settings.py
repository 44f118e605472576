"""Settings as users write them: keys of ``[[task]]``, ``[defaults]``, swarm.toml, and flags.

The table itself is the fields of Task and RunSettings (declared with
``core.settings.setting``). This module reads one level of it (the config file, a manifest's
``[defaults]``, a task, the command line) into a Layer and lays layers over each other.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING

from worktree_swarm.config import values
from worktree_swarm.core.run_settings import RunSettings
from worktree_swarm.core.settings import Kind, Scope, Setting, settings_of
from worktree_swarm.core.task import Task

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import TypeAlias

    # One level of settings: key -> typed value; a key that is absent is not set at this level.
    Layer: TypeAlias = Mapping[str, object]

SETTINGS: tuple[Setting, ...] = settings_of(Task) + settings_of(RunSettings)
BY_KEY: Mapping[str, Setting] = MappingProxyType({entry.key: entry for entry in SETTINGS})
TASK_ONLY_KEYS = frozenset(e.key for e in SETTINGS if e.scope is Scope.TASK_ONLY)
PER_TASK_KEYS = frozenset(e.key for e in SETTINGS if e.scope is Scope.PER_TASK)
RUN_KEYS = frozenset(e.key for e in SETTINGS if e.scope is Scope.RUN)
FLAGGED: tuple[Setting, ...] = tuple(e for e in SETTINGS if e.flag is not None)


class Overrides:
    """Command-line flags that override the manifest defaults and the config file.

    One keyword per setting that has a flag, named like the setting (``jobs=8``,
    ``checks=("make test",)``), valued as the flag gives it (``timeout="45m"``); None = not
    given. ``agent`` is a profile name or a command line (split with shlex, never run by a
    shell).
    """

    __slots__ = ("given",)

    def __init__(self, **flags: object) -> None:
        unknown = sorted(set(flags) - {entry.key for entry in FLAGGED})
        if unknown:
            raise TypeError(f"no command-line flag sets {', '.join(unknown)}")
        self.given: Mapping[str, object] = MappingProxyType(
            {key: value for key, value in flags.items() if value is not None}
        )


def read_layer(table: Mapping[str, object], *, where: str) -> dict[str, object]:
    """Read the per-task and run-wide keys present in *table*; other keys are not looked at."""
    return {
        entry.key: values.read(entry, table[entry.key], f"{where}: {entry.key}")
        for entry in SETTINGS
        if entry.scope is not Scope.TASK_ONLY and table.get(entry.key) is not None
    }


def read_flags(overrides: Overrides) -> dict[str, object]:
    """Read the flags given in *overrides*, each named by its flag in errors."""
    layer: dict[str, object] = {}
    for entry in FLAGGED:
        value = overrides.given.get(entry.key)
        if value is None or entry.flag is None:
            continue
        if entry.kind.is_list and isinstance(value, tuple | list):
            value = list(value)
        layer[entry.key] = values.read_flag(entry, value, entry.flag.name)
    return layer


def over(top: Layer, base: Layer) -> dict[str, object]:
    """*base* with every setting of *top* winning; ``env``-like tables merge per variable."""
    merged = {**base, **top}
    for key, value in top.items():
        if BY_KEY[key].kind is Kind.ENV and key in base:
            merged[key] = tuple({**dict(_pairs(base[key])), **dict(_pairs(value))}.items())
    return merged


def _pairs(value: object) -> tuple[tuple[str, str], ...]:
    return value if isinstance(value, tuple) else ()
