"""Readers of setting values: one per Kind, from TOML values and from command-line flags.

Each reader takes the raw value and *where* (the file, task and key, or the flag) and returns
the typed value or raises BadInputError with one line that starts with *where*.
"""

from __future__ import annotations

import math
import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from worktree_swarm.agents import PROFILES
from worktree_swarm.core import units
from worktree_swarm.core.errors import BadInputError
from worktree_swarm.core.identity import parse_author
from worktree_swarm.core.paths import user_path
from worktree_swarm.core.settings import Kind, Setting
from worktree_swarm.core.units import parse_duration, parse_size
from worktree_swarm.git.remotes import holds_credentials, strip_userinfo

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INT_RE = re.compile(r"[+-]?[0-9]+")
_NUMBER_RE = re.compile(
    r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?(?:nan|inf)", re.IGNORECASE
)
_FLAG_DIGITS = 400
# Linux starts a program with no argument, and no NAME=value of its environment, longer than
# 128 KiB (MAX_ARG_STRLEN, the NUL counted): past it, exec fails with E2BIG after the run began.
# Other systems have no such per-string limit (only the total), so it applies on Linux only.
_ARG_LIMIT = 128 * 2**10 - 1
# Variables that point git at another repository, index, object store or config (or make it
# run code): set by swarm for every agent, never by a task's `env`.
GIT_REPOSITORY_VARIABLES = frozenset(
    {
        "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
        "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_COMMON_DIR", "GIT_NAMESPACE", "GIT_PREFIX",
        "GIT_CEILING_DIRECTORIES", "GIT_DISCOVERY_ACROSS_FILESYSTEM", "GIT_EXEC_PATH",
        "GIT_TEMPLATE_DIR", "GIT_REPLACE_REF_BASE", "GIT_GRAFT_FILE", "GIT_SHALLOW_FILE",
        "GIT_NO_REPLACE_OBJECTS", "GIT_QUARANTINE_PATH",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentRef:
    """An agent as written (a profile name or an argv), and where, for later errors."""

    spec: str | tuple[str, ...]
    where: str


def read(entry: Setting, value: object, where: str) -> object:
    """The typed value of *entry* written as *value* in a TOML file."""
    if entry.kind is Kind.INT:
        return _bounded(value, where, entry.minimum, entry.maximum)
    if entry.kind is Kind.CHOICE:
        return _choice(value, where, entry)
    return _READERS[entry.kind](value, where)


def read_flag(entry: Setting, value: object, where: str) -> object:
    """The typed value of *entry* given on the command line (a list for a repeated flag)."""
    if entry.kind is Kind.AGENT:
        return AgentRef(spec=_cli_agent(_string(value, where)), where=where)
    if isinstance(value, str) and entry.kind in {Kind.INT, Kind.NUMBER, Kind.SHARE}:
        value = _flag_number(value, where, whole=entry.kind is Kind.INT)
    return read(entry, value, where)


def flag_int(text: str, where: str, minimum: int | None, maximum: int | None = None) -> int:
    """A whole number given on the command line: ASCII digits, as a setting's, in its range."""
    return _bounded(_flag_number(text, where, whole=True), where, minimum, maximum)


def _flag_number(text: str, where: str, *, whole: bool) -> int | float:
    # ASCII digits only, as in durations: int() and float() take any script's (`-j ٣` was 3).
    # At most 400 digits: int() refuses more than 4300 with an error of its own.
    if len(text) <= _FLAG_DIGITS and (_INT_RE if whole else _NUMBER_RE).fullmatch(text.strip()):
        return int(text) if whole else float(text)
    what = "an integer" if whole else "a number"
    raise BadInputError(f"{where}: expected {what}, got {units.shown(text)}")


# --- readers by kind ---------------------------------------------------------------------------


def _agent(value: object, where: str) -> AgentRef:
    if isinstance(value, str):  # checked where it is written: a later layer may override it
        if value not in PROFILES:
            known = ", ".join(sorted(PROFILES))
            raise BadInputError(
                f"{where}: unknown agent {value!r} (known: {known}, or an argv list)"
            )
        return AgentRef(spec=value, where=where)
    if isinstance(value, list):
        return AgentRef(spec=_argv(value, where), where=where)
    raise BadInputError(
        f"{where}: expected a profile name or an argv array, got {type_name(value)}"
    )


def _agent_name(value: object, where: str) -> AgentRef:
    name = _string(value, where)
    if name not in PROFILES:
        known = ", ".join(sorted(PROFILES))
        raise BadInputError(f"{where}: unknown agent {name!r} (known: {known})")
    return AgentRef(spec=name, where=where)


def _agent_names(value: object, where: str) -> tuple[AgentRef, ...]:
    if not isinstance(value, list):
        raise BadInputError(f"{where}: expected a list of agent names, got {type_name(value)}")
    return tuple(_agent_name(item, f"{where}[{i}]") for i, item in enumerate(value))


def _cli_agent(text: str) -> str | tuple[str, ...]:
    if text in PROFILES:
        return text
    argv = _split(text, where="--agent")
    if len(argv) == 1 and "/" not in argv[0] and shutil.which(argv[0]) is None:
        known = ", ".join(sorted(PROFILES))
        raise BadInputError(f"--agent: unknown agent {text!r} (known: {known}, or a command line)")
    return argv


def _share(value: object, where: str) -> float:
    number = _positive_number(value, where)
    if number > 1:
        raise BadInputError(f"{where}: must be a share between 0 and 1, got {number:g}")
    return number


def _string(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise BadInputError(f"{where}: expected a string, got {type_name(value)}")
    if "\0" in value:
        raise BadInputError(f"{where}: contains a NUL character")
    return value


def _non_empty(value: object, where: str) -> str:
    text = _string(value, where)
    if not text.strip():
        raise BadInputError(f"{where}: must not be empty")
    return text


def _remote(value: object, where: str) -> str:
    text = _non_empty(value, where)
    if holds_credentials(text):  # kept in the run's record as given
        raise BadInputError(
            f"{where}: {strip_userinfo(text)!r} is given with credentials in its URL, which the"
            " run would store; add it as a remote (`git remote add NAME URL`) and give NAME,"
            " or let a git credential helper log in"
        )
    return text


def _integer(value: object, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadInputError(f"{where}: expected an integer, got {type_name(value)}")
    return value


def _bounded(value: object, where: str, minimum: int | None, maximum: int | None) -> int:
    number = _integer(value, where)
    if minimum is not None and maximum is not None:
        if not minimum <= number <= maximum:
            raise BadInputError(
                f"{where}: must be between {minimum} and {maximum}, got {units.shown(number)}"
            )
    elif minimum is not None and number < minimum:
        raise BadInputError(f"{where}: must be >= {minimum}, got {units.shown(number)}")
    elif maximum is not None and number > maximum:
        raise BadInputError(f"{where}: must be <= {maximum}, got {units.shown(number)}")
    return number


def _boolean(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise BadInputError(f"{where}: expected true or false, got {type_name(value)}")
    return value


def _positive_number(value: object, where: str) -> float:
    # Not nan (no comparison holds: a cap of nan caps nothing), not inf.
    number = value if isinstance(value, float) else None
    if isinstance(value, int) and not isinstance(value, bool):
        number = units.as_float(value)
    if number is None or not math.isfinite(number) or number <= 0:
        raise BadInputError(f"{where}: expected a positive number, got {units.shown(value)}")
    return number


def _author(value: object, where: str) -> str:
    text = _string(value, where)
    if parse_author(text) is None:
        raise BadInputError(f"{where}: expected 'Name <email>', got {text!r}")
    return text


def _list(value: object, where: str, what: str) -> list[object]:
    if not isinstance(value, list):
        raise BadInputError(f"{where}: expected an array of {what}, got {type_name(value)}")
    return value


def _strings(value: object, where: str) -> tuple[str, ...]:
    items = _list(value, where, "strings")
    return tuple(_non_empty(item, f"{where}[{i}]") for i, item in enumerate(items))


def _ids(value: object, where: str) -> tuple[str, ...]:
    ids = _strings(value, where)
    for i, one in enumerate(ids):
        if one in ids[:i]:  # a typo for another id, likely: never dropped silently
            raise BadInputError(f"{where}: {one!r} is given twice; list it once")
    return ids


def _globs(value: object, where: str) -> tuple[str, ...]:
    patterns = _strings(value, where)
    for i, pattern in enumerate(patterns):
        path = PurePosixPath(pattern)
        # Patterns name files inside the repository; they must never reach outside it.
        if path.is_absolute() or ".." in path.parts or "\\" in pattern:
            raise BadInputError(
                f"{where}[{i}]: {pattern!r} must be a relative path pattern inside the repository"
            )
    return patterns


def _local_globs(value: object, where: str) -> tuple[str, ...]:
    """``copy``/``link`` entries: inside the checkout, not the checkout itself, never ``.git``."""
    patterns = _globs(value, where)
    for i, pattern in enumerate(patterns):
        parts = PurePosixPath(pattern).parts
        if not parts:
            raise BadInputError(f"{where}[{i}]: {pattern!r} names the checkout itself")
        if ".git" in parts:
            raise BadInputError(f"{where}[{i}]: {pattern!r} reaches into .git")
    return patterns


def _link_dirs(value: object, where: str) -> tuple[str, ...]:
    dirs = _local_globs(value, where)
    for i, name in enumerate(dirs):
        if any(ch in name for ch in "*?["):
            raise BadInputError(f"{where}[{i}]: {name!r} must name a directory, not a pattern")
    return tuple(PurePosixPath(name).as_posix() for name in dirs)


def _choice(value: object, where: str, entry: Setting) -> object:
    text = _string(value, where)
    choices = {choice.value: choice for choice in entry.choices or ()}
    if text not in choices:
        raise BadInputError(f"{where}: {text!r} is not one of {', '.join(choices)}")
    return choices[text]


def _abs_paths(value: object, where: str) -> tuple[str, ...]:
    paths = tuple(str(user_path(p, where=where)) for p in _strings(value, where))
    for i, path in enumerate(paths):
        if not Path(path).is_absolute():
            raise BadInputError(f"{where}[{i}]: {path!r} must be an absolute path (or ~/...)")
        try:
            Path(path).stat()
        except PermissionError as exc:  # not missing (skipped): out of your reach
            raise BadInputError(
                f"{where}[{i}]: cannot reach {path} ({exc.strerror}); name a path you can use"
            ) from exc
        except OSError:
            pass  # missing: skipped where it is used
    return paths


def _argv(value: list[object], where: str) -> tuple[str, ...]:
    if not value:
        raise BadInputError(f"{where}: empty command")
    # An empty argument is one (`test -z ""`); an empty program is none.
    return _fits(
        (
            _non_empty(value[0], f"{where}[0]"),
            *(_string(item, f"{where}[{i}]") for i, item in enumerate(value[1:], start=1)),
        ),
        where,
    )


def _fits(argv: tuple[str, ...], where: str) -> tuple[str, ...]:
    """*argv*, each argument within _ARG_LIMIT (else BadInputError naming it)."""
    for i, arg in enumerate(argv):
        _within_limit(arg, f"{where}[{i}]")
    return argv


def _within_limit(text: str, where: str) -> None:
    if not sys.platform.startswith("linux"):
        return
    size = len(text.encode("utf-8", "surrogateescape"))
    if size > _ARG_LIMIT:
        raise BadInputError(
            f"{where}: {units.format_size(size)} long, over the {(_ARG_LIMIT + 1) // 2**10} KiB "
            "one argument or variable of a program may be; put it in a file in the repository"
        )


def _commands(value: object, where: str) -> tuple[tuple[str, ...], ...]:
    """Parse command strings (split with shlex, never run by a shell) or argv arrays."""
    items = _list(value, where, "command strings or argv arrays")
    commands: list[tuple[str, ...]] = []
    for i, item in enumerate(items):
        item_where = f"{where}[{i}]"
        if isinstance(item, str):
            commands.append(_split(item, where=item_where))
        elif isinstance(item, list):
            commands.append(_argv(item, item_where))
        else:
            raise BadInputError(
                f"{item_where}: expected a command string or an argv array, got {type_name(item)}"
            )
    return tuple(commands)


def _split(text: str, *, where: str) -> tuple[str, ...]:
    """A command line split into words like a POSIX shell would (never run by one)."""
    try:
        argv = tuple(shlex.split(_string(text, where)))
    except ValueError as exc:
        raise BadInputError(f"{where}: cannot split {text!r}: {exc}") from exc
    if not argv:
        raise BadInputError(f"{where}: empty command")
    return _fits(argv, where)


def _env(value: object, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise BadInputError(f"{where}: expected a table of strings, got {type_name(value)}")
    pairs: list[tuple[str, str]] = []
    for name, text in value.items():
        if _ENV_NAME_RE.fullmatch(name) is None:
            raise BadInputError(f"{where}: {name!r} is not a valid environment variable name")
        if name.upper().startswith("SWARM_"):
            raise BadInputError(
                f"{where}: {name} is swarm's to set (SWARM_TASK_ID, SWARM_PORT... are each "
                "task's own); pick another name"
            )
        if name.upper() in GIT_REPOSITORY_VARIABLES or name.upper().startswith("GIT_CONFIG"):
            raise BadInputError(
                f"{where}: {name} points git elsewhere; swarm sets git's repository variables "
                "for every agent, a task cannot"
            )
        # Not `env.NAME: ...`: a secret's name before a colon reads as a setting to redact.
        pairs.append((name, _string(text, f"{where}: {name}'s value")))
        _within_limit(f"{name}={text}", f"{where}: {name}'s value")
    return tuple(pairs)


_READERS: Mapping[Kind, Callable[[object, str], object]] = {
    Kind.TEXT: _string,
    Kind.ADDRESS: _non_empty,
    Kind.REMOTE: _remote,
    Kind.IDS: _ids,
    Kind.PATH: _non_empty,
    Kind.PATHS: _abs_paths,
    Kind.NUMBER: _positive_number,
    Kind.SHARE: _share,
    Kind.DURATION: parse_duration,
    Kind.SIZE: parse_size,
    Kind.BOOL: _boolean,
    Kind.AUTHOR: _author,
    Kind.GLOBS: _globs,
    Kind.LOCAL_GLOBS: _local_globs,
    Kind.DIRS: _link_dirs,
    Kind.COMMANDS: _commands,
    Kind.ENV: _env,
    Kind.AGENT: _agent,
    Kind.AGENT_NAME: _agent_name,
    Kind.AGENT_NAMES: _agent_names,
}


# --- shared with the manifest reader -----------------------------------------------------------


def string(value: object, where: str) -> str:
    """*value* as a string without NUL characters."""
    return _string(value, where)


def type_name(value: object) -> str:
    """How an error message names the TOML type of *value*."""
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
    names |= {list: "an array", dict: "a table"}
    return names.get(type(value), type(value).__name__)
