"""The generic adapter: any argv template, judged by exit code and known messages."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from worktree_swarm.agents.base import (
    AgentResult,
    interpret_by_exit,
    render_argv,
    resume_text,
)


class CommandAdapter:
    """Any command: exit 0 is success; otherwise a known rate-limit message means rate limited.

    It cannot resume a session: a second attempt runs the template again, with ``{prompt}``
    standing for the resume prompt when one is given.
    """

    name = "command"
    supports_resume = False
    droppings: tuple[str, ...] = ()

    def argv(
        self,
        template: Sequence[str],
        *,
        values: Mapping[str, str],
        session_id: str | None,  # noqa: ARG002 - no sessions to resume
        resume_prompt: str | None,
    ) -> list[str]:
        """Render *template*; a resume prompt replaces ``{prompt}``."""
        if resume_prompt is not None:
            values = {**values, "prompt": resume_text(resume_prompt)}
        return render_argv(template, values)

    def env(
        self,
        *,
        base: Mapping[str, str],
        task_id: str,  # noqa: ARG002 - nothing per task
        config_dir: Path,  # noqa: ARG002 - no config to isolate
    ) -> dict[str, str]:
        """The base environment, unchanged."""
        return dict(base)

    def interpret(self, *, exit_code: int | None, log_text: str, now: float) -> AgentResult:
        """Exit code, then rate-limit messages in the last lines of the log."""
        return interpret_by_exit(exit_code=exit_code, log_text=log_text, now=now)
