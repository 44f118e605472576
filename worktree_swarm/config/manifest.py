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
import shlex
import shutil
import stat
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, TypeVar

from worktree_swarm.agents import PROFILES, profile_of, resolve_agent
from worktree_swarm.core import paths
from worktree_swarm.core.errors import BadInputError
from worktree_swarm.core.identity import parse_author
from worktree_swarm.core.models import (
    DEFAULT_MAX_WAIT,
    DEFAULT_RETRIES,
    TASK_ID_RE,
    CopyMode,
    Executor,
    RunSpec,
    Task,
    is_valid_task_id,
)
from worktree_swarm.core.units import parse_duration, parse_size
from worktree_swarm.git import repo as git

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

DEFAULT_AGENT = "claude"
DEFAULT_JOBS = 4
CONFIG_FILE = "swarm.toml"

SETTING_KEYS = frozenset(
    {
        "agent", "checks", "timeout", "idle_timeout", "retries", "priority", "copy", "setup",
        "env", "repair", "no_placeholders", "link", "fallback", "budget_agent", "max_wait",
        "setup_timeout", "check_timeout", "resolve_timeout",
    }
)  # fmt: skip
RUN_KEYS = frozenset(
    {
        "jobs", "worktree_root", "commit_author", "kill_grace", "port_base", "port_block",
        "max_cost_usd", "budget_share", "rate_limit_backoff", "max_disk", "copy_mode", "sandbox",
        "sandbox_writable", "allow_outside_writes", "executor", "ray_address", "remote",
        "ray_memory", "checkpoint_interval",
    }
)  # fmt: skip
TASK_KEYS = SETTING_KEYS | {"id", "prompt", "title", "depends_on", "files", "expect_files"}
DEFAULTS_KEYS = SETTING_KEYS | RUN_KEYS
MANIFEST_KEYS = frozenset({"defaults", "task"})

_ID_RULE = f"must match {TASK_ID_RE.pattern} (no '..', not ending in '.' or '.lock')"
COPY_MODES = tuple(mode.value for mode in CopyMode)
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A prompt file is a prompt, not a data set; /dev/zero or a FIFO must not be read without end.
PROMPT_FILE_LIMIT = 2**20
# The manifest and the config file: far above any real one, still a bound.
TOML_FILE_LIMIT = 16 * 2**20
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
_MAX_PORT = 65535
_MIN_PORT = 1024

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True, kw_only=True)
class Overrides:
    """CLI flags that override the manifest defaults and the config file; None = not given.

    ``agent`` is a profile name or a command line (split with shlex, never run by a shell).
    """

    agent: str | None = None
    jobs: int | None = None
    timeout: str | None = None
    idle_timeout: str | None = None
    checks: tuple[str, ...] | None = None
    max_cost_usd: float | None = None
    retries: int | None = None
    max_disk: str | None = None
    sandbox: bool | None = None
    allow_outside_writes: bool | None = None
    executor: str | None = None
    ray_address: str | None = None
    remote: str | None = None


_NO_OVERRIDES = Overrides()


@dataclass(frozen=True, slots=True, kw_only=True)
class _Agent:
    spec: str | tuple[str, ...]
    where: str


@dataclass(frozen=True, slots=True, kw_only=True)
class _Settings:
    """One layer of settings; None means "not set here"."""

    agent: _Agent | None = None
    checks: tuple[tuple[str, ...], ...] | None = None
    timeout: float | None = None
    idle_timeout: float | None = None
    retries: int | None = None
    priority: int | None = None
    copy: tuple[str, ...] | None = None
    setup: tuple[tuple[str, ...], ...] | None = None
    env: tuple[tuple[str, str], ...] | None = None
    repair: int | None = None
    no_placeholders: bool | None = None
    link: tuple[str, ...] | None = None
    fallback: tuple[_Agent, ...] | None = None
    budget_agent: _Agent | None = None
    max_wait: float | None = None
    setup_timeout: float | None = None
    check_timeout: float | None = None
    resolve_timeout: float | None = None
    max_cost_usd: float | None = None
    budget_share: float | None = None
    max_disk: int | None = None
    copy_mode: CopyMode | None = None
    sandbox: bool | None = None
    sandbox_writable: tuple[str, ...] | None = None
    allow_outside_writes: bool | None = None
    rate_limit_backoff: float | None = None
    jobs: int | None = None
    worktree_root: str | None = None
    commit_author: str | None = None
    kill_grace: float | None = None
    port_base: int | None = None
    port_block: int | None = None
    executor: Executor | None = None
    ray_address: str | None = None
    remote: str | None = None
    ray_memory: int | None = None
    checkpoint_interval: float | None = None

    def over(self, base: _Settings) -> _Settings:
        """Return *base* with every setting of this layer winning; env merges per variable."""
        changes = {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }
        if self.env is not None and base.env is not None:
            changes["env"] = tuple({**dict(base.env), **dict(self.env)}.items())
        return replace(base, **changes)


def build_run_spec(
    *,
    repo_root: Path,
    manifest: Path | None,
    inline: Sequence[str] = (),
    prompt_files: Sequence[str] = (),
    overrides: Overrides = _NO_OVERRIDES,
    extra_tasks: Sequence[tuple[str, str, str]] = (),
) -> RunSpec:
    """Combine the config file, a manifest, inline tasks and CLI flags into a RunSpec.

    *inline* holds ``ID=PROMPT`` strings, *prompt_files* ``ID=PATH`` strings (PATH relative
    to the current directory), *extra_tasks* ``(id, prompt, title)`` triples made elsewhere
    (GitHub issues). Tasks keep their order: manifest, inline, prompt files, extra tasks.
    """
    config_where, config = _load_config(repo_root)
    _check_keys(config, DEFAULTS_KEYS, where=config_where)
    layer = _parse_settings(config, where=config_where)

    drafts: list[tuple[str, Mapping[str, object]]] = []
    if manifest is not None:
        defaults, manifest_tasks = _read_manifest(manifest)
        layer = defaults.over(layer)
        drafts.extend(manifest_tasks)
    drafts.extend(_inline_tasks(inline))
    drafts.extend(_prompt_file_tasks(prompt_files))
    drafts.extend(
        (f'issue task "{task_id}"', {"id": task_id, "prompt": prompt, "title": title})
        for task_id, prompt, title in extra_tasks
    )
    if not drafts:
        raise BadInputError("no tasks: give a manifest, -t ID=PROMPT or --prompt-file ID=FILE")

    layer = _parse_overrides(overrides).over(layer)
    if layer.agent is not None:
        resolve_agent(layer.agent.spec, where=layer.agent.where, repo_root=repo_root)

    tasks: list[Task] = []
    where_of: dict[str, str] = {}
    for where, table in drafts:
        task = _build_task(table, where=where, layer=layer, repo_root=repo_root)
        if task.id in where_of:
            raise BadInputError(f"{where}: duplicate id {task.id!r} (also {where_of[task.id]})")
        where_of[task.id] = where
        tasks.append(task)
    _check_dependencies(tasks, where_of)
    return _run_spec(tuple(tasks), layer, repo_root=repo_root)


def load_config(repo_root: Path) -> dict[str, object]:
    """Return ``swarm.toml`` at *repo_root*, else ``[tool.swarm]`` of pyproject.toml, else {}."""
    return _load_config(repo_root)[1]


def dependency_cycle(deps: Mapping[str, Sequence[str]]) -> list[str] | None:
    """Return one dependency cycle as ``[a, b, c, a]`` (a depends on b ...), or None.

    Dependencies that are not keys of *deps* are ignored. Iterative, so long chains are fine.
    """
    done: set[str] = set()
    for root in deps:
        if root in done:
            continue
        path = [root]
        position = {root: 0}
        stack = [iter(deps[root])]
        while stack:
            for dep in stack[-1]:
                if dep not in deps or dep in done:
                    continue
                if dep in position:
                    return [*path[position[dep] :], dep]
                position[dep] = len(path)
                path.append(dep)
                stack.append(iter(deps[dep]))
                break
            else:
                stack.pop()
                node = path.pop()
                del position[node]
                done.add(node)
    return None


# --- sources ---------------------------------------------------------------------------------


def _load_config(repo_root: Path) -> tuple[str, dict[str, object]]:
    swarm_toml = repo_root / CONFIG_FILE
    if swarm_toml.is_file():
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
        raise BadInputError(f"{where}: expected a table, got {_type_name(section)}")
    return where, section


def _read_manifest(
    path: Path,
) -> tuple[_Settings, list[tuple[str, Mapping[str, object]]]]:
    source = str(path)
    data = _read_toml(path, where=source)
    _check_keys(data, MANIFEST_KEYS, where=source)
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise BadInputError(f"{source}: defaults: expected a table, got {_type_name(defaults)}")
    _check_keys(defaults, DEFAULTS_KEYS, where=f"{source}: [defaults]")
    settings = _parse_settings(defaults, where=f"{source}: [defaults]")

    raw_tasks = data.get("task", [])
    if not isinstance(raw_tasks, list):
        raise BadInputError(f"{source}: task: write each task as a [[task]] table")
    drafts: list[tuple[str, Mapping[str, object]]] = []
    for index, table in enumerate(raw_tasks, start=1):
        index_where = f"{source}: task[{index}]"
        if not isinstance(table, dict):
            raise BadInputError(f"{index_where}: expected a table, got {_type_name(table)}")
        task_id = _task_id(table.get("id"), where=index_where)
        drafts.append((f'{source}: task "{task_id}"', table))
    return settings, drafts


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
            raise BadInputError(f"{where}: {file_name}: not UTF-8 text") from exc
        drafts.append((where, {"id": task_id, "prompt": prompt}))
    return drafts


def _parse_overrides(overrides: Overrides) -> _Settings:
    agent: _Agent | None = None
    if overrides.agent is not None:
        agent = _Agent(spec=_cli_agent(overrides.agent), where="--agent")
    return _Settings(
        agent=agent,
        jobs=_opt(overrides.jobs, "--jobs", _at_least(1)),
        timeout=_opt(overrides.timeout, "--timeout", parse_duration),
        idle_timeout=_opt(overrides.idle_timeout, "--idle-timeout", parse_duration),
        checks=_opt(
            None if overrides.checks is None else list(overrides.checks), "--check", _commands
        ),
        max_cost_usd=_opt(overrides.max_cost_usd, "--max-cost-usd", _positive_number),
        retries=_opt(overrides.retries, "--retries", _at_least(0)),
        max_disk=_opt(overrides.max_disk, "--max-disk", parse_size),
        sandbox=overrides.sandbox,
        allow_outside_writes=overrides.allow_outside_writes,
        executor=_opt(overrides.executor, "--executor", _executor),
        ray_address=_opt(overrides.ray_address, "--ray-address", _non_empty),
        remote=_opt(overrides.remote, "--remote", _non_empty),
    )


def _cli_agent(text: str) -> str | tuple[str, ...]:
    if text in PROFILES:
        return text
    argv = _split(text, where="--agent")
    if len(argv) == 1 and "/" not in argv[0] and shutil.which(argv[0]) is None:
        known = ", ".join(sorted(PROFILES))
        raise BadInputError(f"--agent: unknown agent {text!r} (known: {known}, or a command line)")
    return argv


# --- tasks -----------------------------------------------------------------------------------


def _task_id(value: object, *, where: str) -> str:
    if value is None:
        raise BadInputError(f"{where}: missing key 'id'")
    if not isinstance(value, str):
        raise BadInputError(f"{where}: id: expected a string, got {_type_name(value)}")
    if not is_valid_task_id(value):
        raise BadInputError(f"{where}: id {value!r} {_ID_RULE}")
    return value


def _build_task(
    table: Mapping[str, object], *, where: str, layer: _Settings, repo_root: Path
) -> Task:
    _check_keys(table, TASK_KEYS, where=where)
    if "prompt" not in table:
        raise BadInputError(f"{where}: missing key 'prompt'")
    prompt = _string(table["prompt"], f"{where}: prompt")
    if not prompt.strip():
        raise BadInputError(f"{where}: prompt is empty")
    title = _string(table["title"], f"{where}: title") if "title" in table else ""
    depends_on = _opt(table.get("depends_on"), f"{where}: depends_on", _strings) or ()
    files = _opt(table.get("files"), f"{where}: files", _globs) or ()
    expect_files = _opt(table.get("expect_files"), f"{where}: expect_files", _globs) or ()

    merged = _parse_settings(table, where=where).over(layer)
    agent = merged.agent
    if agent is None:
        try:
            argv = resolve_agent(DEFAULT_AGENT, where="default agent", repo_root=repo_root)
        except BadInputError as exc:
            raise BadInputError(
                f"{exc}; set agent in {CONFIG_FILE} or the manifest, or pass --agent"
            ) from exc
        agent = _Agent(spec=DEFAULT_AGENT, where="default agent")
    else:
        argv = resolve_agent(agent.spec, where=agent.where, repo_root=repo_root)

    return Task(
        id=str(table["id"]),
        prompt=prompt,
        title=title,
        depends_on=tuple(dict.fromkeys(depends_on)),
        # An argv list running a known CLI (e.g. claude with other flags) keeps its adapter.
        agent=agent.spec if isinstance(agent.spec, str) else profile_of(argv),
        agent_argv=argv,
        checks=merged.checks or (),
        files=files,
        timeout=merged.timeout,
        idle_timeout=merged.idle_timeout,
        retries=DEFAULT_RETRIES if merged.retries is None else merged.retries,
        priority=merged.priority or 0,
        copy=merged.copy or (),
        setup=merged.setup or (),
        env=merged.env or (),
        expect_files=expect_files,
        repair=merged.repair or 0,
        no_placeholders=bool(merged.no_placeholders),
        link=merged.link or (),
        fallback=_profiles(merged.fallback or (), repo_root=repo_root),
        budget_agent=_profiles((merged.budget_agent,), repo_root=repo_root)[0]
        if merged.budget_agent
        else "",
        max_wait=DEFAULT_MAX_WAIT if merged.max_wait is None else merged.max_wait,
        setup_timeout=merged.setup_timeout,
        check_timeout=merged.check_timeout,
        resolve_timeout=merged.resolve_timeout,
    )


def _check_dependencies(tasks: Sequence[Task], where_of: Mapping[str, str]) -> None:
    for task in tasks:
        for dep in task.depends_on:
            if dep == task.id:
                raise BadInputError(f"{where_of[task.id]}: depends on itself")
            if dep not in where_of:
                raise BadInputError(
                    f"{where_of[task.id]}: depends_on {dep!r} is not a task of this run"
                )
    cycle = dependency_cycle({task.id: task.depends_on for task in tasks})
    if cycle is not None:
        raise BadInputError(f"dependency cycle: {' -> '.join(cycle)}")


def _run_spec(tasks: tuple[Task, ...], layer: _Settings, *, repo_root: Path) -> RunSpec:
    root = repo_root.absolute()
    if layer.worktree_root is None:
        worktree_root = paths.default_worktree_root(root)
    else:
        worktree_root = Path(os.path.normpath(root / Path(layer.worktree_root).expanduser()))
    jobs = layer.jobs or DEFAULT_JOBS
    spec = RunSpec(tasks=tasks, jobs=jobs, worktree_root=worktree_root)
    port_base = layer.port_base or spec.port_base
    port_block = layer.port_block or spec.port_block
    if port_base + port_block * jobs - 1 > _MAX_PORT:
        raise BadInputError(
            f"port_base {port_base} + port_block {port_block} x jobs {jobs} goes past port "
            f"{_MAX_PORT}; lower port_base, port_block or jobs"
        )
    return replace(
        spec,
        commit_author=layer.commit_author or git.user_identity(repo_root) or spec.commit_author,
        port_base=port_base,
        port_block=port_block,
        kill_grace=layer.kill_grace or spec.kill_grace,
        max_cost_usd=layer.max_cost_usd,
        budget_share=layer.budget_share or spec.budget_share,
        rate_limit_backoff=layer.rate_limit_backoff or spec.rate_limit_backoff,
        max_disk=layer.max_disk,
        copy_mode=layer.copy_mode or spec.copy_mode,
        sandbox=bool(layer.sandbox),
        sandbox_writable=layer.sandbox_writable or (),
        allow_outside_writes=bool(layer.allow_outside_writes),
        executor=layer.executor or spec.executor,
        ray_address=layer.ray_address or spec.ray_address,
        remote=layer.remote or spec.remote,
        ray_memory=layer.ray_memory or spec.ray_memory,
        checkpoint_interval=layer.checkpoint_interval or spec.checkpoint_interval,
    )


# --- settings and field parsers --------------------------------------------------------------


def _parse_settings(table: Mapping[str, object], *, where: str) -> _Settings:
    """Parse the setting and run-wide keys present in *table*; other keys are not looked at."""

    def get(key: str, parse: Callable[[object, str], _T]) -> _T | None:
        return _opt(table.get(key), f"{where}: {key}", parse)

    return _Settings(
        agent=get("agent", _agent),
        checks=get("checks", _commands),
        timeout=get("timeout", parse_duration),
        idle_timeout=get("idle_timeout", parse_duration),
        retries=get("retries", _at_least(0)),
        priority=get("priority", _integer),
        copy=get("copy", _local_globs),
        setup=get("setup", _commands),
        env=get("env", _env),
        repair=get("repair", _at_least(0)),
        no_placeholders=get("no_placeholders", _boolean),
        link=get("link", _link_dirs),
        fallback=get("fallback", _agent_names),
        budget_agent=get("budget_agent", _agent_name),
        max_wait=get("max_wait", parse_duration),
        setup_timeout=get("setup_timeout", parse_duration),
        check_timeout=get("check_timeout", parse_duration),
        resolve_timeout=get("resolve_timeout", parse_duration),
        max_cost_usd=get("max_cost_usd", _positive_number),
        budget_share=get("budget_share", _share),
        max_disk=get("max_disk", parse_size),
        copy_mode=get("copy_mode", _copy_mode),
        sandbox=get("sandbox", _boolean),
        sandbox_writable=get("sandbox_writable", _abs_paths),
        allow_outside_writes=get("allow_outside_writes", _boolean),
        rate_limit_backoff=get("rate_limit_backoff", parse_duration),
        jobs=get("jobs", _at_least(1)),
        worktree_root=get("worktree_root", _non_empty),
        commit_author=get("commit_author", _author),
        kill_grace=get("kill_grace", parse_duration),
        port_base=get("port_base", _port_base),
        port_block=get("port_block", _at_least(1)),
        executor=get("executor", _executor),
        ray_address=get("ray_address", _non_empty),
        remote=get("remote", _non_empty),
        ray_memory=get("ray_memory", parse_size),
        checkpoint_interval=get("checkpoint_interval", parse_duration),
    )


def _opt(value: object, where: str, parse: Callable[[object, str], _T]) -> _T | None:
    return None if value is None else parse(value, where)


def _agent(value: object, where: str) -> _Agent:
    if isinstance(value, str):
        return _Agent(spec=value, where=where)
    if isinstance(value, list):
        return _Agent(spec=_argv(value, where), where=where)
    raise BadInputError(
        f"{where}: expected a profile name or an argv array, got {_type_name(value)}"
    )


def _agent_name(value: object, where: str) -> _Agent:
    name = _string(value, where)
    if name not in PROFILES:
        known = ", ".join(sorted(PROFILES))
        raise BadInputError(f"{where}: unknown agent {name!r} (known: {known})")
    return _Agent(spec=name, where=where)


def _agent_names(value: object, where: str) -> tuple[_Agent, ...]:
    if not isinstance(value, list):
        raise BadInputError(f"{where}: expected a list of agent names, got {_type_name(value)}")
    return tuple(_agent_name(item, f"{where}[{i}]") for i, item in enumerate(value))


def _profiles(agents: Sequence[_Agent | None], *, repo_root: Path) -> tuple[str, ...]:
    """Profile names whose programs exist (checked now, not when a fallback is needed)."""
    names = []
    for agent in agents:
        if agent is not None:
            resolve_agent(agent.spec, where=agent.where, repo_root=repo_root)
            names.append(str(agent.spec))
    return tuple(names)


def _share(value: object, where: str) -> float:
    number = _positive_number(value, where)
    if number > 1:
        raise BadInputError(f"{where}: must be a share between 0 and 1, got {number:g}")
    return number


def _string(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise BadInputError(f"{where}: expected a string, got {_type_name(value)}")
    if "\0" in value:
        raise BadInputError(f"{where}: contains a NUL character")
    return value


def _non_empty(value: object, where: str) -> str:
    text = _string(value, where)
    if not text.strip():
        raise BadInputError(f"{where}: must not be empty")
    return text


def _integer(value: object, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadInputError(f"{where}: expected an integer, got {_type_name(value)}")
    return value


def _at_least(minimum: int) -> Callable[[object, str], int]:
    def parse(value: object, where: str) -> int:
        number = _integer(value, where)
        if number < minimum:
            raise BadInputError(f"{where}: must be >= {minimum}, got {number}")
        return number

    return parse


def _boolean(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise BadInputError(f"{where}: expected true or false, got {_type_name(value)}")
    return value


def _positive_number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise BadInputError(f"{where}: expected a positive number, got {value!r}")
    return float(value)


def _port_base(value: object, where: str) -> int:
    port = _integer(value, where)
    if not _MIN_PORT <= port <= _MAX_PORT:
        raise BadInputError(f"{where}: must be between {_MIN_PORT} and {_MAX_PORT}, got {port}")
    return port


def _author(value: object, where: str) -> str:
    text = _string(value, where)
    if parse_author(text) is None:
        raise BadInputError(f"{where}: expected 'Name <email>', got {text!r}")
    return text


def _list(value: object, where: str, what: str) -> list[object]:
    if not isinstance(value, list):
        raise BadInputError(f"{where}: expected an array of {what}, got {_type_name(value)}")
    return value


def _strings(value: object, where: str) -> tuple[str, ...]:
    items = _list(value, where, "strings")
    return tuple(_non_empty(item, f"{where}[{i}]") for i, item in enumerate(items))


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


def _executor(value: object, where: str) -> Executor:
    name = _string(value, where)
    names = [e.value for e in Executor]
    if name not in names:
        raise BadInputError(f"{where}: {name!r} is not one of {', '.join(names)}")
    return Executor(name)


def _copy_mode(value: object, where: str) -> CopyMode:
    mode = _string(value, where)
    if mode not in COPY_MODES:
        raise BadInputError(f"{where}: {mode!r} is not one of {', '.join(COPY_MODES)}")
    return CopyMode(mode)


def _abs_paths(value: object, where: str) -> tuple[str, ...]:
    paths = tuple(str(Path(p).expanduser()) for p in _strings(value, where))
    for i, path in enumerate(paths):
        if not Path(path).is_absolute():
            raise BadInputError(f"{where}[{i}]: {path!r} must be an absolute path (or ~/...)")
    return paths


def _argv(value: list[object], where: str) -> tuple[str, ...]:
    if not value:
        raise BadInputError(f"{where}: empty command")
    return tuple(_non_empty(item, f"{where}[{i}]") for i, item in enumerate(value))


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
                f"{item_where}: expected a command string or an argv array, got {_type_name(item)}"
            )
    return tuple(commands)


def _split(text: str, *, where: str) -> tuple[str, ...]:
    try:
        argv = tuple(shlex.split(_string(text, where)))
    except ValueError as exc:
        raise BadInputError(f"{where}: cannot split {text!r}: {exc}") from exc
    if not argv:
        raise BadInputError(f"{where}: empty command")
    return argv


def _env(value: object, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise BadInputError(f"{where}: expected a table of strings, got {_type_name(value)}")
    pairs: list[tuple[str, str]] = []
    for name, text in value.items():
        if _ENV_NAME_RE.fullmatch(name) is None:
            raise BadInputError(f"{where}: {name!r} is not a valid environment variable name")
        if name.upper() in GIT_REPOSITORY_VARIABLES or name.upper().startswith("GIT_CONFIG"):
            raise BadInputError(
                f"{where}: {name} points git elsewhere; swarm sets git's repository variables "
                "for every agent, a task cannot"
            )
        pairs.append((name, _string(text, f"{where}.{name}")))
    return tuple(pairs)


# --- small helpers ---------------------------------------------------------------------------


def _check_keys(table: Mapping[str, object], allowed: frozenset[str], *, where: str) -> None:
    for key in table:
        if key in allowed:
            continue
        if allowed is MANIFEST_KEYS and key in DEFAULTS_KEYS:
            raise BadInputError(f"{where}: key {key!r} belongs in [defaults]")
        if key in TASK_KEYS and allowed is not TASK_KEYS:
            raise BadInputError(f"{where}: key {key!r} belongs in a [[task]]")
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
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BadInputError(f"{where}: not UTF-8 text") from exc
    except tomllib.TOMLDecodeError as exc:
        raise BadInputError(f"{where}: invalid TOML: {' '.join(str(exc).split())}") from exc


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


def _type_name(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
    names |= {list: "an array", dict: "a table"}
    return names.get(type(value), type(value).__name__)
