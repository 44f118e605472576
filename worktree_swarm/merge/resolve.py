"""`swarm merge --resolve`: hand a conflicted merge to the task's agent in the merge worktree."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

from worktree_swarm.agents import adapter_for
from worktree_swarm.agents.base import prompt_argument
from worktree_swarm.core.models import STEP_TIMEOUT, ProcessIdentity, Task
from worktree_swarm.core.text import path_text, paths_text
from worktree_swarm.git import runner
from worktree_swarm.infra import fs, redact, supervisor

_MARKER_RE = re.compile(r"^(?:<{7}|={7}|>{7})(?: |$)", re.MULTILINE)
KILL_GRACE = 5.0


def resolve_prompt(task: Task, *, target: str, files: Sequence[str]) -> str:
    """The prompt that asks an agent to finish a conflicted merge (file names are data).

    Each name is shown as git shows it: quoted with C escapes when it holds a control
    character or bytes that are not UTF-8 (which the prompt file could not hold).
    """
    listed = "\n".join(f"- {path_text(name)}" for name in files)
    return (
        f"You are in a git worktree where the work of task `{task.id}` is being merged into"
        f" `{target}`, and the merge stopped on conflicts in these files:\n\n{listed}\n\n"
        "Edit them so that both sides' intent is kept, remove every conflict marker"
        " (<<<<<<<, =======, >>>>>>>), make sure the code still works, and stop."
        " Do not commit, do not run `git merge --abort`, `git reset` or `git checkout`.\n\n"
        f"The task's original prompt, for context:\n\n{task.prompt}\n"
    )


def run_resolver(
    task: Task,
    *,
    worktree: Path,
    target: str,
    files: Sequence[str],
    logs: Path,
    env: dict[str, str],
    on_start: Callable[[ProcessIdentity], None] | None = None,
) -> str | None:
    """Run the task's agent on the conflicts and stage its result; None when resolved.

    Otherwise returns why not (the caller undoes the merge). Waits at most the task's
    ``resolve_timeout`` (else its ``timeout``, else 30 minutes). *on_start* is handed the
    agent's process identity as it starts.
    """
    if not task.agent_argv:
        return f"task {task.id} has no agent command recorded; resolve it by hand"
    logs.mkdir(parents=True, exist_ok=True)
    text = resolve_prompt(task, target=target, files=files)
    prompt_file = logs / f"resolve-{task.id}.md"
    prompt_file.write_text(text, encoding="utf-8")
    values = {
        # As a run hands it over: a long one (the task's own prompt is in it) as a pointer.
        "prompt": prompt_argument(text, prompt_file),
        "prompt_file": str(prompt_file),
        "task_id": task.id,
        "worktree": str(worktree),
        "branch": target,
    }
    adapter = adapter_for(task.agent)
    argv = adapter.argv(task.agent_argv, values=values, session_id=None, resume_prompt=None)
    agent_env = adapter.env(base=env, task_id=task.id, config_dir=logs / "agent-config")
    log_path = logs / f"resolve-{task.id}.log"
    limit = task.resolve_timeout or task.timeout or STEP_TIMEOUT
    # Under the shim: a timeout or Ctrl-C kills the resolver's whole tree.
    try:
        ended = supervisor.run_to_end(
            argv,
            cwd=worktree,
            env=agent_env,
            log_path=log_path,
            timeout=limit,
            grace=KILL_GRACE,
            on_start=on_start,
        )
    finally:
        redact.scrub_file(log_path)  # as an agent's log in a run, once nothing appends
    if ended.cut is not None:
        return f"the agent did not finish resolving within {limit:.0f}s"
    if ended.code != 0:
        return f"the agent exited {ended.code} while resolving (log {log_path})"
    left = [name for name in files if _has_markers(worktree / name)]
    if left:
        return f"conflict markers left in {paths_text(left)}"
    runner.run(worktree, "add", "--all")
    return None


def _has_markers(path: Path) -> bool:
    try:
        text = fs.read_file(path).decode("utf-8", errors="replace")
    except OSError:  # gone, a directory, a named pipe: no markers to resolve
        return False
    return _MARKER_RE.search(text) is not None
