"""The per-task pipeline's pieces that a full run cannot hit deterministically."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from tests.test_course import add_run
from worktree_swarm.core.models import ProcessIdentity
from worktree_swarm.core.task import Task
from worktree_swarm.infra import supervisor
from worktree_swarm.infra.proc import clean_env
from worktree_swarm.infra.store import Store
from worktree_swarm.infra.store_rows import AttemptUsage
from worktree_swarm.report.status import TaskStatus, run_totals
from worktree_swarm.run.agent_watch import exit_status


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


def test_usage_an_agent_never_reported_stays_unknown_not_zero(tmp_path: Path) -> None:
    # Gemini reports tokens and no cost: its tasks showed `$0.00`, and `status --json` a run
    # of plain commands (which report neither) a total cost and tokens of 0.
    task = Task(id="a", prompt="do a")
    ident = ProcessIdentity(pid=1, create_time=1.0, pgid=1)
    seen = []
    with Store(tmp_path / "state.db") as store:
        add_run(store, task)
        for number, usage in enumerate([AttemptUsage(tokens_in=5), AttemptUsage(cost_usd=0.5)]):
            attempt = store.record_attempt("r1", "a", number=number, identity=ident, log_path="l")
            store.record_end(attempt, exit_code=0, outcome="succeeded", usage=usage)
            row = store.task("r1", "a")
            assert row is not None
            seen.append((row.cost_usd, row.tokens_in, row.tokens_out))
    assert seen == [(None, 5, None), (0.5, 5, None)]
    rows = [status_row("a", cost_usd=None, tokens_in=None), status_row("b", cost_usd=None)]
    totals = run_totals(rows)
    assert (totals["cost_usd"], totals["tokens_in"], totals["tokens_out"]) == (None, None, None)
    totals = run_totals([*rows, status_row("c", cost_usd=0.25, tokens_in=10)])
    assert (totals["cost_usd"], totals["tokens_in"], totals["tokens_out"]) == (0.25, 10, None)


def status_row(task_id: str, **usage: float | None) -> TaskStatus:
    """A row of `swarm status` with only the usage that matters here."""
    row = TaskStatus(
        task_id=task_id, state="done", reason="", attempt=1, pid=None, alive=False,
        elapsed_s=None, cost_usd=None, tokens_in=None, tokens_out=None, files_changed=0,
        insertions=0, deletions=0, branch=f"swarm/{task_id}", worktree="/wt",
    )  # fmt: skip
    return dataclasses.replace(row, **usage)
