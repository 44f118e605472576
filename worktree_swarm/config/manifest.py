"""User input to a validated RunSpec: manifest TOML, inline tasks, config file, CLI flags.

All bad-input validation lives here and raises BadInputError with one line naming the
file, field or task at fault. Nothing is created on disk.

Precedence for a per-task setting: the task's own key, then CLI flags, then the manifest's
``[defaults]``, then the config file, then the built-in default. Run-wide settings follow the
same order without the task level. ``env`` tables merge variable by variable in that order.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import stat
import sys
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worktree_swarm.agents import profile_of, resolve_agent, scripted
from worktree_swarm.config import programs, settings, values
from worktree_swarm.config.settings import Overrides
from worktree_swarm.config.values import AgentRef, string, type_name
from worktree_swarm.core import paths, units
from worktree_swarm.core.errors import BadInputError
from worktree_swarm.core.run_settings import CopyMode, Executor, RunSettings, RunSpec
from worktree_swarm.core.scheduler import dependency_cycle
from worktree_swarm.core.settings import Kind, Scope
from worktree_swarm.core.task import DEFAULT_AGENT, TASK_ID_RE, Task, is_valid_task_id
from worktree_swarm.core.text import not_utf8
from worktree_swarm.git import gitconfig

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from worktree_swarm.config.settings import Layer

__all__ = [
    "CONFIG_FILE",
    "DEFAULTS_KEYS",
    "DEFAULT_JOBS",
    "RUN_KEYS",
    "SETTING_KEYS",
    "TASK_KEYS",
    "Overrides",
    "build_run_spec",
    "configured",
    "load_config",
]

DEFAULT_JOBS = RunSettings().jobs
CONFIG_FILE = "swarm.toml"

SETTING_KEYS = settings.PER_TASK_KEYS
RUN_KEYS = settings.RUN_KEYS
TASK_KEYS = settings.TASK_ONLY_KEYS | SETTING_KEYS
DEFAULTS_KEYS = SETTING_KEYS | RUN_KEYS
MANIFEST_KEYS = frozenset({"defaults", "task"})

_ID_RULE = (
    f"must match {TASK_ID_RE.pattern} (no '..', not ending in '.' or '.lock', not starting "
    "with 'integration-': swarm merge's branches are named so)"
)
# A prompt file is a prompt, not a data set; /dev/zero or a FIFO must not be read without end.
PROMPT_FILE_LIMIT = 2**20
# The manifest and the config file: far above any real one, still a bound.
TOML_FILE_LIMIT = 16 * 2**20
_MAX_PORT = 65535
_NO_OVERRIDES = Overrides()
# The id of a task made from a GitHub issue.
_ISSUE_TASK_RE = re.compile(r"issue-[1-9][0-9]*")


def build_run_spec(
    *,
    repo_root: Path,
    manifest: Path | None,
    inline: Sequence[str] = (),
    prompt_files: Sequence[str] = (),
    overrides: Overrides = _NO_OVERRIDES,
    extra_tasks: Sequence[tuple[str, str, str]] = (),
    issues_to_come: bool = False,
    look_for_programs: bool = True,
) -> RunSpec:
    """Combine the config file, a manifest, inline tasks and CLI flags into a RunSpec.

    *inline* holds ``ID=PROMPT`` strings, *prompt_files* ``ID=PATH`` strings (PATH relative
    to the current directory), *extra_tasks* ``(id, prompt, title)`` triples made elsewhere
    (GitHub issues). Tasks keep their order: manifest, inline, prompt files, extra tasks.
    With *issues_to_come* (issues of a label, not fetched yet) no task is no error, and a
    dependency on an ``issue-<n>`` task is left for the build that has them.
    With *look_for_programs* (the default) a local run's setup and check programs and `link`
    directories must be found on this machine (:func:`programs.check_task`).
    """
    config_where, config = _load_config(repo_root)
    _check_keys(config, DEFAULTS_KEYS, where=config_where, config=True)
    layer: Layer = settings.read_layer(config, where=config_where)
    set_by = dict.fromkeys(layer, config_where)  # where each inherited setting was set

    drafts: list[tuple[str, Mapping[str, object]]] = []
    if manifest is not None:
        defaults, manifest_tasks = _read_manifest(manifest)
        layer = settings.over(defaults, layer)
        set_by.update(dict.fromkeys(defaults, f"{manifest}: [defaults]"))
        drafts.extend(manifest_tasks)
    drafts.extend(_inline_tasks(inline))
    drafts.extend(_prompt_file_tasks(prompt_files))
    drafts.extend(
        (f'issue task "{task_id}"', {"id": task_id, "prompt": prompt, "title": title})
        for task_id, prompt, title in extra_tasks
    )
    if not drafts and not issues_to_come:
        raise BadInputError("no tasks: give a manifest, -t ID=PROMPT or --prompt-file ID=FILE")

    flags = settings.read_flags(overrides)
    layer = settings.over(flags, layer)
    set_by.update({key: _flag_name(key) for key in flags})
    _check_ray_flags(overrides, layer)
    agent = layer.get("agent")
    if isinstance(agent, AgentRef):
        resolve_agent(agent.spec, where=agent.where, repo_root=repo_root)

    tasks: list[Task] = []
    where_of: dict[str, str] = {}
    local = look_for_programs and layer.get("executor", Executor.LOCAL) is not Executor.RAY
    for where, table in drafts:
        task = _build_task(table, where=where, layer=layer, repo_root=repo_root)
        if task.id in where_of:
            raise BadInputError(f"{where}: duplicate id {task.id!r} (also {where_of[task.id]})")
        if local:  # a Ray task runs its commands on a node, whose programs are its own
            programs.check_task(task, where=_key_where(where, table, set_by), repo_root=repo_root)
        if "scripted" in {task.agent, task.budget_agent, *task.fallback}:  # checked now
            try:
                scripted.directives(task.prompt)
            except scripted.DirectiveError as exc:
                raise BadInputError(f"{where}: prompt: {exc}") from None
        where_of[task.id] = where
        tasks.append(task)
    _check_dependencies(tasks, where_of, issues_to_come=issues_to_come)
    return _run_spec(tuple(tasks), layer, repo_root=repo_root)


def _flag_name(key: str) -> str:
    flag = settings.BY_KEY[key].flag
    return key if flag is None else flag.name


def _key_where(
    where: str, table: Mapping[str, object], set_by: Mapping[str, str]
) -> Callable[[str, str], str]:
    """Name *key* of the task at *where*, shown as *item*: its own, or the level it came from."""

    def named(key: str, item: str) -> str:
        if table.get(key) is not None or key not in set_by:
            return f"{where}: {item}"
        return f"{set_by[key]}: {item} (inherited by {where})"

    return named


# Flags that only the Ray executor reads: given for a local run, they would do nothing.
RAY_FLAGS = ("ray_address", "remote")


def _check_ray_flags(overrides: Overrides, layer: Layer) -> None:
    if layer.get("executor", Executor.LOCAL) is Executor.RAY:
        return
    for key in RAY_FLAGS:
        flag = settings.BY_KEY[key].flag
        if key in overrides.given and flag is not None:
            raise BadInputError(
                f"{flag.name} is for the Ray executor; add --executor ray "
                '(or executor = "ray" in swarm.toml)'
            )


def load_config(repo_root: Path) -> dict[str, object]:
    """Return ``swarm.toml`` at *repo_root*, else ``[tool.swarm]`` of pyproject.toml, else {}."""
    return _load_config(repo_root)[1]


def configured(repo_root: Path, key: str) -> object | None:
    """The config file's value of the run setting *key*, read and checked; None when unset.

    Raises BadInputError, naming the file and key, when the file or that value is invalid.
    Relative paths are resolved against *repo_root*, as ``swarm run`` does.
    """
    where, config = _load_config(repo_root)
    raw = config.get(key)
    if raw is None:
        return None
    value = settings.read_layer({key: raw}, where=where)[key]
    if settings.BY_KEY[key].kind is Kind.PATH:
        expanded = paths.user_path(str(value), where=f"{where}: {key}")
        return Path(os.path.normpath(repo_root.absolute() / expanded))
    return value


# --- sources ---------------------------------------------------------------------------------


def _load_config(repo_root: Path) -> tuple[str, dict[str, object]]:
    swarm_toml = repo_root / CONFIG_FILE
    if os.path.lexists(swarm_toml):  # a directory or a dangling link is refused, not skipped
        return _display(swarm_toml), _read_toml(swarm_toml, where=_display(swarm_toml))
    pyproject = repo_root / "pyproject.toml"
    if not pyproject.is_file():
        return CONFIG_FILE, {}
    where = f"{_display(pyproject)} [tool.swarm]"
    try:
        data = _read_toml(pyproject, where=_display(pyproject))
    except BadInputError:
        # A broken pyproject.toml that has no swarm section is not ours to reject: fixing it
        # may well be the task the user wants to run.
        if b"tool.swarm" in _read_bytes(pyproject, where=where):
            raise
        return where, {}
    tool = data.get("tool")
    section = tool.get("swarm") if isinstance(tool, dict) else None
    if section is None:
        return where, {}
    if not isinstance(section, dict):
        raise BadInputError(f"{where}: expected a table, got {type_name(section)}")
    return where, section


def _read_manifest(
    path: Path,
) -> tuple[Layer, list[tuple[str, Mapping[str, object]]]]:
    source = str(path)
    data = _read_toml(path, where=source)
    _check_keys(data, MANIFEST_KEYS, where=source)
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise BadInputError(f"{source}: defaults: expected a table, got {type_name(defaults)}")
    _check_keys(defaults, DEFAULTS_KEYS, where=f"{source}: [defaults]")
    layer = settings.read_layer(defaults, where=f"{source}: [defaults]")

    raw_tasks = data.get("task", [])
    if not isinstance(raw_tasks, list):
        raise BadInputError(f"{source}: task: write each task as a [[task]] table")
    drafts: list[tuple[str, Mapping[str, object]]] = []
    for index, table in enumerate(raw_tasks, start=1):
        index_where = f"{source}: task[{index}]"
        if not isinstance(table, dict):
            raise BadInputError(f"{index_where}: expected a table, got {type_name(table)}")
        task_id = _task_id(table.get("id"), where=index_where)
        drafts.append((f'{source}: task "{task_id}"', table))
    return layer, drafts


def _inline_tasks(items: Sequence[str]) -> list[tuple[str, Mapping[str, object]]]:
    drafts: list[tuple[str, Mapping[str, object]]] = []
    for item in items:
        task_id, sep, prompt = item.partition("=")
        if not sep:
            raise BadInputError(f"-t {_short(item)}: expected ID=PROMPT")
        where = f"-t {_quote(task_id)}"
        _task_id(task_id, where=where)
        drafts.append((where, {"id": task_id, "prompt": prompt}))
    return drafts


def _prompt_file_tasks(items: Sequence[str]) -> list[tuple[str, Mapping[str, object]]]:
    drafts: list[tuple[str, Mapping[str, object]]] = []
    for item in items:
        task_id, sep, file_name = item.partition("=")
        if not sep or not file_name:
            raise BadInputError(f"--prompt-file {_short(item)}: expected ID=FILE")
        where = f"--prompt-file {_quote(task_id)}"
        _task_id(task_id, where=where)
        data = _read_bytes(Path(file_name), where=f"{where}: {file_name}", limit=PROMPT_FILE_LIMIT)
        try:
            prompt = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadInputError(f"{where}: {file_name}: {not_utf8(exc)}") from exc
        drafts.append((where, {"id": task_id, "prompt": prompt}))
    return drafts


# --- tasks -----------------------------------------------------------------------------------


def _task_id(value: object, *, where: str) -> str:
    if value is None:
        raise BadInputError(f"{where}: missing key 'id'")
    if not isinstance(value, str):
        raise BadInputError(f"{where}: id: expected a string, got {type_name(value)}")
    if not is_valid_task_id(value):
        raise BadInputError(f"{where}: id {value!r} {_ID_RULE}")
    if value in paths.RUN_DIR_NAMES:
        raise BadInputError(
            f"{where}: id {value!r} is reserved (swarm keeps its own files of a run under"
            " that name); choose another"
        )
    return value


def _build_task(table: Mapping[str, object], *, where: str, layer: Layer, repo_root: Path) -> Task:
    _check_keys(table, TASK_KEYS, where=where)
    if "prompt" not in table:
        raise BadInputError(f"{where}: missing key 'prompt'")
    prompt = string(table["prompt"], f"{where}: prompt")
    if not prompt.strip():
        raise BadInputError(f"{where}: prompt is empty")
    # Typed by their Setting's kind (checked in the settings table's tests).
    own: dict[str, Any] = {
        entry.key: values.read(entry, table[entry.key], f"{where}: {entry.key}")
        for entry in settings.SETTINGS
        if entry.scope is Scope.TASK_ONLY
        and entry.key not in {"id", "prompt"}
        and table.get(entry.key) is not None
    }

    merged = settings.over(settings.read_layer(table, where=where), layer)
    agent = merged.get("agent")
    if not isinstance(agent, AgentRef):
        try:
            argv = resolve_agent(DEFAULT_AGENT, where="default agent", repo_root=repo_root)
        except BadInputError as exc:
            raise BadInputError(
                f"{exc}; set agent in {CONFIG_FILE} or the manifest, or pass --agent"
            ) from exc
        agent = AgentRef(spec=DEFAULT_AGENT, where="default agent")
    else:
        argv = resolve_agent(agent.spec, where=agent.where, repo_root=repo_root)
    chosen: dict[str, Any] = {
        entry.key: _agents_named(entry.kind, merged[entry.key], repo_root=repo_root)
        if entry.key in merged
        else entry.default
        for entry in settings.SETTINGS
        if entry.scope is Scope.PER_TASK and entry.key != "agent"
    }
    return Task(
        id=str(table["id"]),
        prompt=prompt,
        # An argv list running a known CLI (e.g. claude with other flags) keeps its adapter.
        agent=agent.spec if isinstance(agent.spec, str) else profile_of(argv),
        agent_argv=argv,
        **own,
        **chosen,
    )


def _agents_named(kind: Kind, value: object, *, repo_root: Path) -> object:
    """Profile names for an agent-name setting (their programs must exist), else *value*."""
    if kind is Kind.AGENT_NAMES and isinstance(value, tuple):
        return _profiles(value, repo_root=repo_root)
    if kind is Kind.AGENT_NAME and isinstance(value, AgentRef):
        return _profiles((value,), repo_root=repo_root)[0]
    return value


def _check_dependencies(
    tasks: Sequence[Task], where_of: Mapping[str, str], *, issues_to_come: bool
) -> None:
    for task in tasks:
        for dep in task.depends_on:
            if dep == task.id:
                raise BadInputError(f"{where_of[task.id]}: depends on itself")
            if issues_to_come and _ISSUE_TASK_RE.fullmatch(dep):
                continue
            if dep not in where_of:
                raise BadInputError(
                    f"{where_of[task.id]}: depends_on {dep!r} is not a task of this run"
                )
    cycle = dependency_cycle({task.id: task.depends_on for task in tasks})
    if cycle is not None:
        raise BadInputError(f"dependency cycle: {' -> '.join(cycle)}")


def _run_spec(tasks: tuple[Task, ...], layer: Layer, *, repo_root: Path) -> RunSpec:
    root = repo_root.absolute()
    run: dict[str, Any] = {}  # typed by their Setting's kind
    for entry in settings.SETTINGS:
        if entry.scope is Scope.RUN and entry.key in layer:
            value = layer[entry.key]
            if entry.kind is Kind.PATH:
                expanded = paths.user_path(str(value), where=entry.key)
                value = Path(os.path.normpath(root / expanded))
            run[entry.key] = value
    run.setdefault("worktree_root", paths.default_worktree_root(root))
    spec = RunSpec(tasks=tasks, **run)
    # Up to twice `jobs` tasks are in flight (agents running, others setting up or checking),
    # each with a block of its own.
    if spec.port_base + spec.port_block * 2 * spec.jobs - 1 > _MAX_PORT:
        raise BadInputError(
            f"port_base {spec.port_base} + port_block {spec.port_block} x 2 x jobs"
            f" {units.shown(spec.jobs)}"
            f" (the tasks in flight) goes past port {_MAX_PORT}; lower port_base, port_block"
            " or jobs"
        )
    if spec.sandbox and spec.copy_mode is CopyMode.HARDLINK and any(t.copy for t in tasks):
        raise BadInputError(
            'copy_mode = "hardlink" with sandbox: a hard-linked `copy` file is your checkout\'s '
            "own file, which the sandboxed agent could write through the link; use "
            'copy_mode = "auto" or "copy"'
        )
    if "commit_author" not in run:
        spec = replace(spec, commit_author=gitconfig.user_identity(repo_root) or spec.commit_author)
    return spec


# --- agents ---------------------------------------------------------------------------------


def _profiles(agents: Sequence[AgentRef], *, repo_root: Path) -> tuple[str, ...]:
    """Profile names whose programs exist (checked now, not when a fallback is needed)."""
    names = []
    for agent in agents:
        resolve_agent(agent.spec, where=agent.where, repo_root=repo_root)
        names.append(str(agent.spec))
    return tuple(names)


# --- small helpers ---------------------------------------------------------------------------


def _check_keys(
    table: Mapping[str, object], allowed: frozenset[str], *, where: str, config: bool = False
) -> None:
    """Refuse a key *table* may not hold, saying where it goes (*config*: swarm.toml's)."""
    for key in table:
        if key in allowed:
            continue
        if allowed is MANIFEST_KEYS and key in DEFAULTS_KEYS:
            raise BadInputError(f"{where}: key {key!r} belongs in [defaults]")
        if allowed is DEFAULTS_KEYS and key in MANIFEST_KEYS:  # a manifest's shape
            raise BadInputError(
                f"{where}: [{key}] is a manifest's table; here the settings go at the top level "
                "(tasks in a manifest: `swarm run tasks.toml`)"
            )
        if key in TASK_KEYS and allowed is not TASK_KEYS:
            manifest = " of a manifest (`swarm run tasks.toml`)" if config else ""
            raise BadInputError(f"{where}: key {key!r} belongs in a [[task]]{manifest}")
        if key in RUN_KEYS and allowed is TASK_KEYS:
            raise BadInputError(
                f"{where}: key {key!r} is run-wide: put it in [defaults] or {CONFIG_FILE}"
            )
        close = difflib.get_close_matches(key, sorted(allowed), n=1)
        hint = f"did you mean {close[0]!r}?" if close else "allowed: " + ", ".join(sorted(allowed))
        raise BadInputError(f"{where}: unknown key {key!r} ({hint})")


def _read_bytes(path: Path, *, where: str, limit: int = TOML_FILE_LIMIT) -> bytes:
    """The bytes of the regular file *path*, at most *limit* of them (else BadInputError)."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer before the check below.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise BadInputError(f"{where}: cannot read: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BadInputError(f"{where}: not a regular file")
    with os.fdopen(fd, "rb") as fh:
        try:
            data = fh.read(limit + 1)
        except OSError as exc:
            raise BadInputError(f"{where}: cannot read: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise BadInputError(f"{where}: larger than {limit // 2**20} MiB")
    return data


def _read_toml(path: Path, *, where: str) -> dict[str, object]:
    data = _read_bytes(path, where=where)
    try:
        return tomllib.loads(data.decode("utf-8-sig"))  # a byte-order mark (Windows editors)
    except UnicodeDecodeError as exc:
        raise BadInputError(f"{where}: {not_utf8(exc)}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise BadInputError(f"{where}: invalid TOML: {' '.join(str(exc).split())}") from exc
    except ValueError:  # int() of an integer past Python's limit on digits, in tomllib
        limit = sys.get_int_max_str_digits()
        raise BadInputError(
            f"{where}: invalid TOML: an integer of more than {limit} digits"
        ) from None
    except RecursionError:
        raise BadInputError(f"{where}: nested too deeply to read") from None


def _display(path: Path) -> str:
    try:
        return str(path.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _quote(text: str) -> str:
    # JSON quoting keeps untrusted text on one line in error messages.
    return json.dumps(text, ensure_ascii=False)


def _short(text: str, limit: int = 40) -> str:
    return _quote(text if len(text) <= limit else text[:limit] + "...")
