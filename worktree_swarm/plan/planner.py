"""`swarm plan`: ask the Anthropic API to break a goal into a task manifest for review.

The request is a cacheable prefix (tool schema, instructions, a bounded picture of the
repository: :mod:`~worktree_swarm.plan.prompt`) followed by the goal. The answer comes back
through a tool-use schema, is written as manifest TOML and validated by
:func:`worktree_swarm.config.manifest.build_run_spec`, exactly like a manifest written by hand
(:mod:`~worktree_swarm.plan.answer`). An invalid answer is sent back once with the validation
error. Retries and backoff on 429/5xx are the SDK's own (``max_retries``). The answer is
streamed, so an endpoint that goes silent is noticed after ``timeout`` seconds, not after the
whole answer's worst-case time (:mod:`~worktree_swarm.plan.api`).
"""

from __future__ import annotations

import functools
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from worktree_swarm.config.manifest import DEFAULT_JOBS, configured
from worktree_swarm.core.errors import BadInputError, SwarmError
from worktree_swarm.core.scheduler import Scheduler
from worktree_swarm.infra import redact
from worktree_swarm.plan.answer import InvalidPlanError, ask_again, validate
from worktree_swarm.plan.api import (
    CONNECT_TIMEOUT,
    MAX_RETRY_WAIT,
    ApiSettings,
    Usage,
    add_usage,
    cap_retry_after,
    create,
)
from worktree_swarm.plan.defaults import DEFAULT_MAX_TASKS, DEFAULT_MODEL
from worktree_swarm.plan.prompt import INSTRUCTIONS, repository_picture

if TYPE_CHECKING:  # the SDK takes a second or more to import: only once a request is made
    from anthropic.types import MessageParam, TextBlockParam


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanResult:
    """A validated plan: the manifest text and what it means for a parallel run."""

    manifest_text: str
    task_ids: tuple[str, ...]
    levels: tuple[tuple[str, ...], ...]
    jobs: int
    speedup: float
    usage: Usage


def make_plan(
    *,
    repo_root: Path,
    goal: str,
    settings: ApiSettings,
    model: str | None = None,
    max_tasks: int = DEFAULT_MAX_TASKS,
    jobs: int | None = None,
) -> PlanResult:
    """Ask *model* (default DEFAULT_MODEL) for at most *max_tasks* tasks; validate the manifest.

    *jobs* (default: the config file's ``jobs``, else 4) is what the speedup estimate assumes.
    """
    if model is None:
        model = DEFAULT_MODEL
    elif not model or not model.isprintable() or any(c.isspace() for c in model):
        raise BadInputError(f"--model {model[:64]!r} is not a model name; e.g. {DEFAULT_MODEL}")
    goal = goal.strip()
    if not goal:
        raise BadInputError("GOAL is empty; describe what the tasks should achieve")
    if jobs is None:  # read before the API call: a broken swarm.toml must not waste one
        value = configured(repo_root, "jobs")
        jobs = value if isinstance(value, int) else DEFAULT_JOBS
    system: list[TextBlockParam] = [
        {"type": "text", "text": INSTRUCTIONS},
        # Everything up to this block (tool schema, instructions, repository) is the same for
        # every goal asked of one commit, so the API can serve it from its prompt cache.
        {
            "type": "text",
            "text": repository_picture(repo_root),
            "cache_control": {"type": "ephemeral"},
        },
    ]
    messages: list[MessageParam] = [
        {"role": "user", "content": f"Goal:\n{goal}\n\nUse at most {max_tasks} tasks."}
    ]
    import anthropic  # noqa: PLC0415 - slow to import; bad input is refused before it

    # Closed when done: its HTTP connections are not left for the garbage collector. A read
    # timeout on a stream bounds the silence between two events, not the whole answer.
    # The SDK waits as long as a `retry-after` says (days): cut to what silence is allowed.
    cap = functools.partial(cap_retry_after, limit=min(MAX_RETRY_WAIT, settings.timeout))
    with anthropic.Anthropic(
        api_key=settings.api_key,
        base_url=settings.base_url,
        http_client=anthropic.DefaultHttpxClient(event_hooks={"response": [cap]}),
        max_retries=settings.max_retries,
        timeout=anthropic.Timeout(settings.timeout, connect=min(settings.timeout, CONNECT_TIMEOUT)),
    ) as client:
        usage = Usage()
        for attempt in (1, 2):
            response = create(client, settings, model=model, system=system, messages=messages)
            usage = add_usage(usage, response)
            try:
                text, tasks = validate(response, goal=goal, model=model, max_tasks=max_tasks)
            except InvalidPlanError as exc:
                if attempt == 2:  # noqa: PLR2004
                    raise SwarmError(
                        f"the model's plan was invalid twice ({exc}); run `swarm plan` again,"
                        " or write the manifest by hand (docs/manifest.md)"
                    ) from exc
                messages.extend(ask_again(response, str(exc)))
                continue
            # An endpoint that echoes the key back never has it written into the manifest.
            text = text.replace(settings.api_key, redact.REDACTED)
            ids = tuple(t.id for t in tasks)
            scheduler = Scheduler(tasks)
            makespan = scheduler.ideal_makespan(dict.fromkeys(ids, 1.0), jobs)
            return PlanResult(
                manifest_text=text,
                task_ids=ids,
                levels=tuple(tuple(level) for level in scheduler.levels()),
                jobs=jobs,
                speedup=len(ids) / makespan if makespan else 1.0,
                usage=usage,
            )
    raise AssertionError("unreachable")  # pragma: no cover


def describe(result: PlanResult, *, out: str) -> list[str]:
    """Return the lines `swarm plan` prints: the DAG levels, the speedup, the tokens."""
    n = len(result.task_ids)
    lines = [f"wrote {out}: {n} task{'s' if n != 1 else ''} in {len(result.levels)} level(s)"]
    for number, level in enumerate(result.levels, start=1):
        lines.append(f"  level {number}: {', '.join(level)}")
    lines.append(
        f"estimated speedup with {result.jobs} jobs: {result.speedup:.1f}x"
        f" (critical path {len(result.levels)} of {n} tasks, equal task durations assumed)"
    )
    u = result.usage
    lines.append(
        f"API: {u.requests} request(s), {u.input_tokens} input tokens"
        f" ({u.cache_read_tokens} read from cache, {u.cache_write_tokens} written to cache),"
        f" {u.output_tokens} output tokens"
    )
    lines.append(f"review the prompts, then: swarm run {shlex.quote(out)}")
    return lines
