"""The model's answer to `swarm plan`: validated into manifest TOML, or sent back once.

The tool call's tasks are written as manifest TOML (the goal as a comment, secrets redacted) and
validated by :func:`worktree_swarm.config.manifest.build_run_spec`, exactly like a manifest
written by hand. What is wrong with an invalid answer is what the model is told when asked again.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from worktree_swarm.config import tomlwrite
from worktree_swarm.config.manifest import Overrides, build_run_spec
from worktree_swarm.core.errors import BadInputError
from worktree_swarm.core.task import Task
from worktree_swarm.infra import redact
from worktree_swarm.plan.prompt import TOOL_NAME

if TYPE_CHECKING:  # the SDK takes a second or more to import: only once a request is made
    from anthropic.types import ContentBlockParam, Message, MessageParam, ToolUseBlock

_TASK_KEYS = ("id", "title", "prompt", "depends_on", "files", "checks")


class InvalidPlanError(Exception):
    """The model's answer is not a valid manifest; the message is shown to the model."""


def validate(
    response: Message, *, goal: str, model: str, max_tasks: int
) -> tuple[str, tuple[Task, ...]]:
    """Return the manifest text and its validated tasks, or raise InvalidPlanError."""
    if response.stop_reason == "max_tokens":
        raise InvalidPlanError("the answer was cut off at the token limit; use fewer words")
    calls = [b for b in response.content or [] if b.type == "tool_use" and b.name == TOOL_NAME]
    if len(calls) != 1:
        raise InvalidPlanError(f"call {TOOL_NAME} exactly once, with every task")
    answer = calls[0].input
    if not isinstance(answer, dict):
        raise InvalidPlanError("the tool's input must be an object with 'tasks'")
    tasks = answer.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise InvalidPlanError("'tasks' must be a non-empty array of task objects")
    if len(tasks) > max_tasks:
        raise InvalidPlanError(f"{len(tasks)} tasks, but at most {max_tasks} are allowed")
    tables: list[dict[str, object]] = []
    for index, task in enumerate(tasks, start=1):
        if not isinstance(task, dict):
            raise InvalidPlanError(f"tasks[{index}] must be an object")
        # Empty lists and titles are left out so the manifest reads like a hand-written one.
        tables.append({k: task[k] for k in _TASK_KEYS if task.get(k) not in (None, "", [])})
    try:
        text = manifest_text(tables, goal=goal, model=model)
    except (TypeError, ValueError, RecursionError) as exc:  # null, NaN, nested too deep
        raise InvalidPlanError(
            f"a value that is not text, a number or a list of them: {exc}"
        ) from None
    with tempfile.TemporaryDirectory(prefix="swarm-plan-") as tmp:
        path = Path(tmp) / "plan.toml"
        path.write_text(text, encoding="utf-8")
        try:
            # A throwaway root and the bundled agent: the plan is judged on its own, not on
            # which agent CLIs or check programs happen to be installed or on the repository's
            # swarm.toml (`swarm run` of the plan looks for them).
            spec = build_run_spec(
                repo_root=Path(tmp),
                manifest=path,
                overrides=Overrides(agent="scripted"),
                look_for_programs=False,
            )
        except BadInputError as exc:
            raise InvalidPlanError(str(exc).replace(str(path), "plan")) from None
    return text, spec.tasks


def manifest_text(tables: Sequence[Mapping[str, object]], *, goal: str, model: str) -> str:
    """Return the manifest TOML for *tables*, headed by the goal as a comment."""
    header = tomlwrite.comment(  # the goal as you typed it, a key in it redacted
        f"Planned by `swarm plan` (model {model}) for the goal:\n{redact.redact(goal)}\n\n"
        "Review every prompt, dependency and check before `swarm run`."
    )
    # What the model wrote may quote a secret (one of your environment's, a key's shape): not
    # in the file. Ids are names, checked already (one may look like a key).
    shown = [
        {key: value if key in _NAMES else redact.redact_data(value) for key, value in t.items()}
        for t in tables
    ]
    return f"{header}\n\n{tomlwrite.table_array('task', shown)}\n"


_NAMES = frozenset({"id", "depends_on"})


def ask_again(response: Message, error: str) -> list[MessageParam]:
    """Return the assistant turn and a reply carrying the validation error."""
    said: list[ContentBlockParam] = []
    for block in response.content or []:
        if block.type == "text" and block.text.strip():
            said.append({"type": "text", "text": block.text})
        elif block.type == "tool_use":
            said.append(
                {"type": "tool_use", "id": block.id, "name": block.name, "input": _sendable(block)}
            )
    request = f"The plan is invalid: {error}. Fix it and call {TOOL_NAME} again with every task."
    # Every tool call is answered (the API requires it), each with the same request.
    reply: list[ContentBlockParam] = [
        {"type": "tool_result", "tool_use_id": b.id, "content": request, "is_error": True}
        for b in response.content or []
        if b.type == "tool_use"
    ] or [{"type": "text", "text": request}]
    if not said:
        said = [{"type": "text", "text": "(no answer)"}]
    return [{"role": "assistant", "content": said}, {"role": "user", "content": reply}]


def _sendable(block: ToolUseBlock) -> dict[str, object]:
    """The tool call's input as it can be sent back (NaN or nesting JSON refuses: none)."""
    try:
        json.dumps(block.input, allow_nan=False)
    except (ValueError, TypeError, RecursionError):
        return {}
    return dict(block.input) if isinstance(block.input, dict) else {}
