"""`swarm runs`, and what `swarm run` says when a recorded run already owns a task's branch."""

from __future__ import annotations

import json
import shlex
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import git
from tests.test_run import swarm

# Done for "ok", failed for "bad": each writes its own file first.
AGENT = """
import os, pathlib, sys
task = os.environ["SWARM_TASK_ID"]
pathlib.Path(task + ".txt").write_text("work\\n")
sys.exit(1 if task == "bad" else 0)
"""


def finished_run(repo: Path, write_agent: Callable[[str], list[str]]) -> tuple[str, str]:
    """A run with one done and one failed task; its id and the agent command."""
    agent = " ".join(write_agent(AGENT))
    out = swarm(repo, "run", "--agent", agent, "-t", "ok=do it", "-t", "bad=fail")
    assert out.returncode == 1, out.stderr
    listed = json.loads(swarm(repo, "runs", "--json").stdout)["runs"]
    assert len(listed) == 1
    return listed[0]["run_id"], agent


def test_runs_lists_each_run_with_its_state_and_task_counts(
    repo: Path, write_agent: Callable[[str], list[str]]
) -> None:
    run_id, _ = finished_run(repo, write_agent)
    out = swarm(repo, "runs")
    assert out.returncode == 0, out.stderr
    header, row = out.stdout.splitlines()
    assert header.split() == ["run", "started", "state", "tasks"]
    assert row.startswith(f"{run_id} ")
    assert row.endswith(" finished      2 (1 done, 1 failed)"), row
    data = json.loads(swarm(repo, "runs", "--json").stdout)["runs"][0]
    assert data["state"] == "finished"
    assert data["counts"] == {"done": 1, "failed": 1}
    assert data["ended_at"] >= data["started_at"]


def test_runs_in_a_repository_without_runs_lists_none(repo: Path) -> None:
    # A script that lists runs got exit 2 (bad input) before the first run.
    out = swarm(repo, "runs", "--json")
    assert (out.returncode, json.loads(out.stdout)) == (0, {"runs": []}), out.stderr
    out = swarm(repo, "runs")
    assert (out.returncode, out.stdout) == (0, "no runs recorded yet; start one with `swarm run`\n")
    assert not (repo / ".git" / "swarm").exists()


def test_a_refused_retry_leaves_no_merge_lock_file_behind(
    repo: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # Refused inside the merge lock, it left an empty .git/swarm/merge.lock where no merge ran.
    run_id, _ = finished_run(repo, write_agent)
    assert not (repo / ".git" / "swarm" / "merge.lock").exists()
    out = swarm(repo, "retry", "ok")
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr == f"swarm: task ok of run {run_id} is done; its work is on swarm/ok\n"
    assert not (repo / ".git" / "swarm" / "merge.lock").exists()


@pytest.mark.long
def test_a_branch_a_recorded_run_owns_gets_its_next_step(
    repo: Path, write_agent: Callable[[str], list[str]]
) -> None:
    run_id, agent = finished_run(repo, write_agent)
    # While another task of the run has its branch, the delete named is this task's alone:
    # `swarm clean --run RUN --force` deleted the other one's unmerged work too.
    bad_worktree = repo.parent / "repo.swarm" / "bad"
    again = swarm(repo, "run", "--agent", agent, "-t", "ok=once more")
    assert again.returncode == 2
    assert again.stderr.strip() == (
        f"swarm: branch swarm/ok already exists: task ok of run {run_id} is done; merge it, "
        f"or delete it with `git worktree remove --force {bad_worktree.with_name('ok')}`, then"
        " `git branch -D swarm/ok` (or give the task another id)"
    )
    retry = swarm(repo, "run", "--agent", agent, "-t", "bad=once more")
    assert retry.returncode == 2
    assert retry.stderr.strip() == (
        f"swarm: branch swarm/bad already exists: task bad of run {run_id} is failed; run it "
        f"again with `swarm retry bad --run {run_id}`, or delete it with `git worktree remove"
        f" --force {bad_worktree}`, then `git branch -D swarm/bad` (or give the task another id)"
    )
    # Refused before anything was made: still one run, and the branches as they were.
    assert len(json.loads(swarm(repo, "runs", "--json").stdout)["runs"]) == 1
    for command in retry.stderr.split("`")[3:6:2]:  # as printed: bad's work alone goes
        subprocess.run(shlex.split(command), cwd=repo, check=True, capture_output=True)
    assert git(repo, "for-each-ref", "--format=%(refname)", "refs/heads/swarm/") == (
        "refs/heads/swarm/ok"
    )
    # The one task left: the clean of the run is named, and deletes it alone.
    last = swarm(repo, "run", "--agent", agent, "-t", "ok=once more")
    assert f"or delete it with `swarm clean --run {run_id} --force --yes`" in last.stderr


@pytest.mark.slow  # long: runs in `scripts/check --slow` (CI runs both)
def test_a_run_whose_manager_died_after_its_last_task_is_ended_by_resume(
    repo: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # The state a manager killed between its last task's end and the run's leaves (also
    # `swarm doctor --yes` stopping every task of a dead run): all tasks final, run "running".
    run_id, agent = finished_run(repo, write_agent)
    with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as db:
        db.execute(
            "UPDATE runs SET status = 'running', ended_at = NULL WHERE run_id = ?", (run_id,)
        )
    assert json.loads(swarm(repo, "runs", "--json").stdout)["runs"][0]["state"] == "manager_gone"
    refused = swarm(repo, "run", "--agent", agent, "-t", "new=x")
    assert refused.returncode == 2
    assert "swarm resume" in refused.stderr
    resumed = swarm(repo, "resume")
    assert resumed.returncode == 1  # one task failed, as before
    assert "has finished; nothing to resume" in resumed.stdout
    assert json.loads(swarm(repo, "runs", "--json").stdout)["runs"][0]["state"] == "finished"
    assert swarm(repo, "run", "--agent", agent, "-t", "new=x").returncode == 0
