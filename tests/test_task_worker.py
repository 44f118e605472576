"""The per-task pipeline's pieces that a full run cannot hit deterministically."""

from __future__ import annotations

import sys
from pathlib import Path

from worktree_swarm.infra import supervisor
from worktree_swarm.infra.proc import clean_env
from worktree_swarm.run.task_worker import exit_status


class _LateExit(supervisor.AgentProcess):
    """A real agent whose first wait times out just before it exits (the race)."""

    waited = False

    def wait(self, timeout: float | None = None) -> int | None:
        if not self.waited:
            self.waited = True
            self.popen.wait()  # it exits while we are "timing out"
            return None
        return super().wait(timeout)


def test_exit_between_wait_and_liveness_check_keeps_the_exit_code(tmp_path: Path) -> None:
    spawned = supervisor.spawn(
        [sys.executable, "-c", "raise SystemExit(0)"],
        cwd=tmp_path,
        env=clean_env(),
        log_path=tmp_path / "agent.log",
    )
    agent = _LateExit(
        identity=spawned.identity,
        popen=spawned.popen,
        log_path=spawned.log_path,
        started_at=spawned.started_at,
    )
    assert exit_status(agent, timeout=0.05) == (True, 0)


def test_running_agent_has_not_ended(tmp_path: Path) -> None:
    agent = supervisor.spawn(
        [sys.executable, "-c", "import time; time.sleep(30)"],
        cwd=tmp_path,
        env=clean_env(),
        log_path=tmp_path / "agent.log",
    )
    try:
        assert exit_status(agent, timeout=0.01) == (False, None)
    finally:
        agent.stop(grace=1)
