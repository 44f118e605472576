"""A Ray run whose cluster loses its head: on clusters of their own (each test kills a head).

The agents are those of test_ray.py: they record where they ran and wait for a release file.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import git
from tests.test_ray import (
    actor_processes,
    agents_started,
    gone,
    output,
    pushed,
    setup_repo,
    spawn_swarm,
    status,
    swarm,
    wait_for,
)

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'worktree-swarm[ray]')")

from tests import raykit  # noqa: E402 - only with ray installed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# A node's raylet gives up on a lost head after this (Ray's default is 60 s): the actors
# there end with it, sooner.
NODE_ENV = {"RAY_gcs_rpc_server_reconnect_timeout_s": "15"}


@contextlib.contextmanager
def a_cluster(base: Path, *, port: int | None = None) -> Iterator[raykit.Cluster]:
    """A head and a worker node, one agent slot each (a task on each)."""
    made = raykit.Cluster.start(base, workers=1, slots=1, port=port, env=NODE_ENV)
    try:
        yield made
    finally:
        made.shutdown()


def at_work(
    made: raykit.Cluster, tmp_path: Path, tasks: list[str]
) -> tuple[Path, Path, subprocess.Popen[bytes], psutil.Process]:
    """A run of *tasks* (``lost_after`` 5 s) with every agent at work and its work pushed.

    Returns the repository, the agents' control dir, the manager and the worker's agent.
    """
    repo, remote, ctl = setup_repo(tmp_path, tasks)
    manifest = tmp_path / "tasks.toml"
    manifest.write_text(
        manifest.read_text().replace("[defaults]\n", '[defaults]\nlost_after = "5s"\n')
    )
    manager = spawn_swarm(repo, "run", str(manifest), "--ray-address", made.address)
    started = wait_for("every agent", lambda: agents_started(ctl, len(tasks)))
    for task in tasks:
        wait_for(f"a checkpoint of {task}", lambda t=task: pushed(remote, f"swarm/{t}:{t}.txt"))
    [on_worker] = [p for p in started if p.read_text() == "w0"]  # type: ignore[union-attr]
    return repo, ctl, manager, psutil.Process(int(on_worker.name.rsplit(".", 1)[1]))


def agent_stops(made: raykit.Cluster, agent: psutil.Process) -> None:
    """Wait for the worker's agent to end with its node's raylet; else say where it hangs."""
    try:
        wait_for("the worker's agent to stop", lambda: gone(agent), timeout=180)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{made.diagnosis(agent)}") from None


def run_state(repo: Path) -> tuple[str, str | None]:
    out = swarm(repo, "status", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    return data["run_state"], data["manager_note"]


def run_id(repo: Path) -> str:
    with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as conn:
        return str(conn.execute("SELECT run_id FROM runs").fetchone()[0])


def test_a_lost_head_interrupts_the_run_and_resume_carries_it_on_at_its_address(
    tmp_path: Path,
) -> None:
    tasks = ["h1", "h2"]
    with a_cluster(tmp_path / "ray") as made:
        address, port = made.address, made.port
        repo, ctl, manager, agent = at_work(made, tmp_path, tasks)
        try:
            made.kill_node(made.nodes[0])  # the head: its GCS, raylet and agent
            # The manager does not wait for ever, nor does Ray end it: it ends the run.
            assert manager.wait(timeout=300) == 130, output(manager)
        finally:
            if manager.poll() is None:
                manager.kill()
        said = output(manager).strip().splitlines()[-1]
        assert said.startswith(
            f"swarm: the Ray cluster at {address} was lost: its head did not answer for 5.0s ("
        ), said
        assert said.endswith("run `swarm resume` once a cluster answers there"), said
        rows = status(repo)
        assert {t: r["state"] for t, r in rows.items()} == dict.fromkeys(tasks, "pending")
        for task, row in rows.items():
            assert str(row["reason"]).startswith(f"interrupted: the Ray cluster at {address}")
            assert str(row["reason"]).endswith(f"work is kept on swarm/{task} as last pushed")
            assert row["alive"] is False
            assert git(repo, "show", f"swarm/{task}:{task}.txt") == f"work of {task}"
        state, note = run_state(repo)
        assert state == "interrupted"
        rid = run_id(repo)
        assert note is not None
        assert note.startswith(
            f"interrupted: run {rid} runs on the Ray cluster at {address}, which does not answer"
        ), note
        # The worker's agent stops with its actor, which ends with its node's raylet.
        agent_stops(made, agent)
        wait_for("the actors to exit", lambda: not actor_processes(made), timeout=60)
        # No cluster yet: `swarm resume` says so, in one line, and changes nothing.
        out = swarm(repo, "resume")
        assert out.returncode == 2, out.stdout + out.stderr
        assert out.stderr.startswith(
            f"swarm: run {rid} runs on the Ray cluster at {address}, which does not answer ("
        ), out.stderr
        assert out.stderr.strip().endswith(
            "start a cluster there and run `swarm resume`, or end its tasks with `swarm stop`"
        )
        assert len(out.stderr.strip().splitlines()) == 1
        assert run_state(repo)[0] == "interrupted"
    # A new cluster at the same address: the run goes on from the last pushed checkpoints.
    with a_cluster(tmp_path / "ray2", port=port):
        (ctl / "release").write_text("")
        out = swarm(repo, "resume")
        assert out.returncode == 0, out.stdout + out.stderr
    rows = status(repo)
    assert {t: r["state"] for t, r in rows.items()} == dict.fromkeys(tasks, "done")
    assert {t: r["attempt"] for t, r in rows.items()} == dict.fromkeys(tasks, 2)
    assert run_state(repo) == ("finished", None)
    for task in tasks:
        history = git(repo, "log", "--format=%s", f"swarm/{task}").splitlines()
        assert any(s.startswith(f"swarm: checkpoint {task} attempt 1 (running") for s in history)
        assert git(repo, "show", f"swarm/{task}:{task}.done") in {"head", "w0"}


def test_with_the_manager_and_the_head_gone_stop_settles_the_tasks_without_the_cluster(
    tmp_path: Path,
) -> None:
    tasks = ["g1", "g2"]
    with a_cluster(tmp_path / "ray") as made:
        address = made.address
        repo, _ctl, manager, agent = at_work(made, tmp_path, tasks)
        manager.send_signal(signal.SIGKILL)
        manager.wait(timeout=30)
        made.kill_node(made.nodes[0])
        rid = run_id(repo)
        state, note = run_state(repo)
        assert state == "manager_gone"
        assert note is not None
        assert note.startswith(
            f"manager not running: run {rid} runs on the Ray cluster at {address}, which does "
            "not answer ("
        ), note
        out = swarm(repo, "resume")
        assert out.returncode == 2, out.stdout + out.stderr
        assert out.stderr.startswith(f"swarm: run {rid} runs on the Ray cluster at {address}")
        assert len(out.stderr.strip().splitlines()) == 1
        out = swarm(repo, "stop")
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.strip() == "stopped: g1, g2"
        rows = status(repo)
        assert {t: r["state"] for t, r in rows.items()} == dict.fromkeys(tasks, "stopped")
        for task, row in rows.items():
            assert str(row["reason"]).startswith(f"stopped without its Ray cluster (at {address}: ")
            assert row["alive"] is False
            assert row["files_changed"] == 1
            assert git(repo, "show", f"swarm/{task}:{task}.txt") == f"work of {task}"
        assert run_state(repo) == ("stopped", None)
        agent_stops(made, agent)
        wait_for("the actors to exit", lambda: not actor_processes(made), timeout=60)
