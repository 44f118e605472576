"""The one table of settings: the fields of Task and RunSettings, each carrying a Setting.

A field declared with :func:`setting` is a key users can write. Its Setting says what the value
is (its Kind), where it may be written (its Scope), its command-line flag if it has one, and the
line the docs show for it. Everything else is driven from these fields: the manifest's and the
config file's keys and their validation (``config/settings.py``), the options of ``swarm run``
(``cli/options.py``), the stored run settings (``RunSettings.to_json``) and the key tables of
``docs/manifest.md`` (``config/doc_table.py``). Adding a setting is adding one field.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, TypeVar, overload

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_T = TypeVar("_T")
_METADATA_KEY = "worktree_swarm.setting"


class Kind(enum.Enum):
    """What a setting's value is; ``config/values.py`` has the reader of each kind."""

    TEXT = enum.auto()
    ADDRESS = enum.auto()  # text, not empty: unset is the default (a Ray cluster's address)
    REMOTE = enum.auto()  # a remote's name, or a URL without credentials in it
    IDS = enum.auto()  # non-empty strings, each once
    PATH = enum.auto()  # non-empty; relative to the repository root
    PATHS = enum.auto()  # absolute or ~/...
    INT = enum.auto()  # bounded by Setting.minimum / maximum
    NUMBER = enum.auto()  # > 0
    SHARE = enum.auto()  # 0 < share <= 1
    DURATION = enum.auto()
    SIZE = enum.auto()
    BOOL = enum.auto()
    AUTHOR = enum.auto()  # "Name <email>"
    CHOICE = enum.auto()  # a value of Setting.choices
    GLOBS = enum.auto()  # relative, inside the repository
    LOCAL_GLOBS = enum.auto()  # GLOBS, and neither the checkout itself nor .git
    DIRS = enum.auto()  # LOCAL_GLOBS that name directories, no patterns
    COMMANDS = enum.auto()  # command strings (split, never run by a shell) or argv arrays
    ENV = enum.auto()
    AGENT = enum.auto()  # a profile name or an argv array (a command line on the CLI)
    AGENT_NAME = enum.auto()
    AGENT_NAMES = enum.auto()

    @property
    def label(self) -> str:
        """How the docs name the kind."""
        return _LABELS[self]

    @property
    def is_list(self) -> bool:
        """Whether a value is a list (a repeatable flag on the command line)."""
        return self in _LISTS


_LABELS = {
    Kind.TEXT: "string", Kind.ADDRESS: "string", Kind.REMOTE: "remote name or URL",
    Kind.IDS: "array of ids", Kind.PATH: "path",
    Kind.PATHS: "array of paths", Kind.INT: "integer", Kind.NUMBER: "number > 0",
    Kind.SHARE: "share (0 < share <= 1)", Kind.DURATION: "duration", Kind.SIZE: "size",
    Kind.BOOL: "boolean", Kind.AUTHOR: "`Name <email>`", Kind.CHOICE: "choice",
    Kind.GLOBS: "array of globs", Kind.LOCAL_GLOBS: "array of globs",
    Kind.DIRS: "array of paths", Kind.COMMANDS: "array of commands", Kind.ENV: "table of strings",
    Kind.AGENT: "string or array", Kind.AGENT_NAME: "profile name",
    Kind.AGENT_NAMES: "array of profile names",
}  # fmt: skip
_LISTS = frozenset(
    {
        Kind.IDS, Kind.PATHS, Kind.GLOBS, Kind.LOCAL_GLOBS, Kind.DIRS, Kind.COMMANDS,
        Kind.AGENT_NAMES,
    }
)  # fmt: skip


class Scope(enum.Enum):
    """Where a key may be written."""

    TASK_ONLY = "task"  # only in a [[task]] table
    PER_TASK = "per task"  # a [[task]], [defaults], the config file, a flag
    RUN = "run"  # run-wide: [defaults], the config file, a flag


@dataclass(frozen=True, slots=True, kw_only=True)
class Flag:
    """The `swarm run` option that sets a setting for the whole run."""

    name: str  # "--jobs"
    help: str
    short: str = ""  # "-j"
    metavar: str = ""
    negatable: bool = False  # a boolean with a --no- form ("--sandbox/--no-sandbox")


class _Missing(enum.Enum):
    MISSING = enum.auto()


_MISSING = _Missing.MISSING


@dataclass(frozen=True, slots=True, kw_only=True)
class Setting:
    """One key users can write, and everything about it but its value."""

    key: str = ""  # the field's name (filled in by settings_of)
    kind: Kind
    scope: Scope
    doc: str  # the meaning column of docs/manifest.md (Markdown, one line)
    flag: Flag | None  # None: only in files (the manifest, swarm.toml)
    default: object = None  # what a user gets without the key (may differ from the field's)
    default_doc: str = ""  # the docs' default column, when the value alone does not say it
    type_doc: str = ""  # the docs' type column, when the kind alone does not say it
    minimum: int | None = None  # Kind.INT bounds
    maximum: int | None = None
    choices: type[enum.StrEnum] | None = None  # Kind.CHOICE: the Enum the value is one of

    @property
    def required(self) -> bool:
        """Whether every task must have the key (it has no default)."""
        return self.default is _MISSING


@overload
def setting(
    default: _T,
    *,
    kind: Kind,
    scope: Scope,
    doc: str,
    flag: Flag | None,
    user_default: object = ...,
    default_doc: str = "",
    type_doc: str = "",
    minimum: int | None = None,
    maximum: int | None = None,
) -> _T: ...
@overload
def setting(
    *,
    kind: Kind,
    scope: Scope,
    doc: str,
    flag: Flag | None,
    user_default: object = ...,
    default_doc: str = "",
    type_doc: str = "",
    minimum: int | None = None,
    maximum: int | None = None,
) -> Any: ...  # noqa: ANN401 - a required field: its annotation gives the type
def setting(
    default: object = _MISSING,
    *,
    kind: Kind,
    scope: Scope,
    doc: str,
    flag: Flag | None,
    user_default: object = _MISSING,
    default_doc: str = "",
    type_doc: str = "",
    minimum: int | None = None,
    maximum: int | None = None,
) -> object:
    """A dataclass field (with *default*, if given) that users set under the field's name.

    *flag* is required so that leaving a setting off the command line is a decision: None for
    a key only files set. *user_default* is what a user gets without the key, when that differs
    from the field's default (a Task made in code retries nothing; a task of a manifest does).
    """
    entry = Setting(
        kind=kind,
        scope=scope,
        doc=doc,
        flag=flag,
        default=default if user_default is _MISSING else user_default,
        default_doc=default_doc,
        type_doc=type_doc,
        minimum=minimum,
        maximum=maximum,
        choices=type(default) if isinstance(default, enum.StrEnum) else None,
    )
    metadata = {_METADATA_KEY: entry}
    if default is _MISSING:
        return field(metadata=metadata)
    # Every default is immutable (tuples, not lists), so no field needs a default factory.
    return field(default=default, metadata=metadata)


@functools.cache
def settings_of(cls: type[DataclassInstance]) -> tuple[Setting, ...]:
    """The settings among *cls*'s fields, in field order."""
    return tuple(
        replace(f.metadata[_METADATA_KEY], key=f.name)
        for f in fields(cls)
        if _METADATA_KEY in f.metadata
    )
