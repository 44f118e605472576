"""A Ray attempt ended by its coordinator (its cluster or node lost), a resume or a stop.

A real store, and a real repository for the stop; no cluster: what they do when none answers.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import pytest

from tests.conftest import git, make_repo
from tests.raykit import free_port
from tests.test_store import new_run, with_tasks
from worktree_swarm.agents.base import AgentOutcome, AgentResult
from worktree_swarm.core.errors import SwarmError
from worktree_swarm.core.models import ProcessIdentity, TaskState
from worktree_swarm.core.run_settings import RunSettings
from worktree_swarm.core.task import Task
from worktree_swarm.git.repo import open_repo
from worktree_swarm.infra.logtail import copy_anew, mirrored
from worktree_swarm.infra.store import Store
from worktree_swarm.run import ray_stop
from worktree_swarm.run.attempt_record import attempt_usage
from worktree_swarm.run.ray_attempt import Handle
from worktree_swarm.run.ray_attempt_run import end_failed
from worktree_swarm.run.ray_exec import RayTaskWorker
from worktree_swarm.run.ray_node import Progress
from worktree_swarm.run.ray_resume import RayResume
from worktree_swarm.run.run_worker import Live

USED = AgentResult(
    outcome=AgentOutcome.SUCCESS, session_id="s1", cost_usd=0.5, tokens_in=7, tokens_out=3
)
LOST = "the Ray cluster at 127.0.0.1:6379 was lost"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "state.db") as s:
        new_run(s)
        with_tasks(s, "a")
        yield s


def _handle(store: Store, tmp_path: Path) -> Handle:
    ident = ProcessIdentity(pid=1, create_time=1.0, pgid=1)
    log = tmp_path / "attempt-1.log"
    aid = store.record_attempt("r1", "a", number=1, identity=ident, log_path=str(log))
    return Handle(
        actor=None, task_id="a", number=1, attempt_id=aid, started_at=1.0, log_path=log, node="n"
    )


def _used(store: Store) -> tuple[tuple[object, ...], tuple[object, ...]]:
    """The attempt's (outcome, reason, cost, tokens) and its task's (cost, tokens) totals."""
    (attempt,) = store.attempts("r1", "a")
    row = store.task("r1", "a")
    assert row is not None
    return (
        (attempt.outcome, attempt.reason, attempt.cost_usd, attempt.tokens_in, attempt.tokens_out),
        (row.cost_usd, row.tokens_in, row.tokens_out),
    )


def test_a_lost_attempt_whose_usage_was_read_but_not_recorded_counts_it(
    store: Store, tmp_path: Path
) -> None:
    # The cluster lost between reading what the agent used and recording its end: the attempt
    # was ended with the loss as its reason only, its cost counted nowhere.
    handle = _handle(store, tmp_path)
    handle.used = USED
    end_failed(store, handle, LOST)
    assert handle.counted
    assert _used(store) == (("failed", LOST, 0.5, 7, 3), (0.5, 7, 3))


def test_a_lost_attempt_whose_end_was_recorded_keeps_that_end_and_its_usage_counted_once(
    store: Store, tmp_path: Path
) -> None:
    # The cluster lost in its checks, after its end was recorded: the attempt that had
    # succeeded was rewritten failed, its end moved to the time of the loss.
    handle = _handle(store, tmp_path)
    handle.used = USED
    usage = attempt_usage(USED, "")
    store.record_end(handle.attempt_id, exit_code=0, outcome="succeeded", usage=usage, ended_at=5.0)
    handle.counted = True
    end_failed(store, handle, LOST)
    assert _used(store) == (("succeeded", "", 0.5, 7, 3), (0.5, 7, 3))
    (attempt,) = store.attempts("r1", "a")
    assert (attempt.ended_at, attempt.exit_code) == (5.0, 0)


def test_a_lost_attempt_whose_agent_reported_nothing_ends_with_its_reason(
    store: Store, tmp_path: Path
) -> None:
    handle = _handle(store, tmp_path)
    end_failed(store, handle, LOST)
    assert handle.counted
    assert _used(store) == (("failed", LOST, None, None, None), (None, None, None))


# What Claude Code's last line says when it ends: read from the attempt's log copied here.
RESULT = json.dumps({
    "type": "result", "subtype": "success", "is_error": False, "result": "ok",
    "session_id": "s1", "total_cost_usd": 1.25,
    "usage": {"input_tokens": 300, "output_tokens": 40},
})  # fmt: skip


def _claude_attempt(store: Store, tmp_path: Path) -> int:
    """Task c, run by claude, with an open attempt whose log copy holds its result line."""
    store.add_tasks("r1", [(Task(id="c", prompt="p", agent="claude"), "swarm/c", "/wt/c")])
    log = tmp_path / "c" / "attempt-1.log"
    log.parent.mkdir()
    log.write_text(RESULT + "\n")
    ident = ProcessIdentity(pid=0, create_time=0.0, pgid=0)
    return store.record_attempt("r1", "c", number=1, identity=ident, log_path=str(log))


def _c_used(store: Store) -> tuple[tuple[object, ...], tuple[object, ...]]:
    """Task c's attempt's (outcome, reason, cost, tokens) and its task's (cost, tokens)."""
    (attempt,) = store.attempts("r1", "c")
    row = store.task("r1", "c")
    assert row is not None
    return (
        (attempt.outcome, attempt.reason, attempt.cost_usd, attempt.tokens_in, attempt.tokens_out),
        (row.cost_usd, row.tokens_in, row.tokens_out),
    )


class _AllGone:
    """The resumed coordinator's worker as its adoption reads it, every actor gone (no Ray)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _find(self, *_: object) -> None:
        return None


def test_an_attempt_whose_actor_is_gone_at_resume_counts_what_its_log_reports(
    store: Store, tmp_path: Path
) -> None:
    # Its agent had said what it cost (the coordinator copied that line, then was killed):
    # the resume ended the attempt with its reason only, its cost counted nowhere.
    _claude_attempt(store, tmp_path)
    (attempt,) = store.attempts("r1", "c")
    task = Task(id="c", prompt="p", agent="claude")
    assert RayResume._adopt(cast("RayResume", _AllGone(store)), task, attempt) is None
    gone = "its actor was gone when the run was resumed"
    assert _c_used(store) == (("failed", gone, 1.25, 300, 40), (1.25, 300, 40))


def test_a_stop_without_its_cluster_counts_what_an_attempts_log_reports(
    store: Store, tmp_path: Path
) -> None:
    # Its coordinator killed and its cluster gone, the attempt was recorded stopped with a
    # reason only: what its agent had said it cost was lost to the task and the budget.
    repo = make_repo(tmp_path / "repo")
    subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(tmp_path / "r.git")], check=True)
    git(repo, "remote", "add", "origin", str(tmp_path / "r.git"))
    _claude_attempt(store, tmp_path)
    spec = RunSettings(ray_address=f"127.0.0.1:{free_port()}", remote="origin")
    ray_stop.stop_unmanaged(open_repo(repo), store, "r1", ["c"], spec=spec)
    (attempt, task) = _c_used(store)
    assert attempt[0] == "stopped"
    assert str(attempt[1]).startswith("stopped without its Ray cluster (at 127.0.0.1:")
    assert (attempt[2:], task) == ((1.25, 300, 40), (1.25, 300, 40))
    row = store.task("r1", "c")
    assert row is not None
    assert row.state is TaskState.STOPPED


class _Killed(BaseException):
    """The stop killed (Ctrl-C, SIGKILL) in the middle of a call."""


class _Call:
    """One actor method: ``.remote()`` notes its name and answers with *fn* once got."""

    def __init__(self, calls: list[str], name: str, fn: Callable[..., object]) -> None:
        self.calls, self.name, self.fn = calls, name, fn

    def remote(self, *args: object, **kwargs: object) -> Callable[[], object]:
        self.calls.append(self.name)
        return lambda: self.fn(*args, **kwargs)


class _Node:
    """The smallest stand-in for an attempt's actor and Ray: its agent stopped, its log *log*."""

    def __init__(self, log: bytes, **failing: Callable[..., object]) -> None:
        self.calls: list[str] = []
        answers: dict[str, Callable[..., object]] = {
            "poll": lambda: Progress(ended=False, exit_code=None),
            "stop": lambda: None,
            "scrub_log": lambda: None,
            "tail": lambda offset: (len(log), log[offset:]),
            "finish": lambda **_: None,
            "own_commits": lambda **_: [],
            "discard": lambda: None,
        }
        for name, fn in {**answers, **failing}.items():
            setattr(self, name, _Call(self.calls, name, fn))

    def get(self, ref: Callable[[], object], timeout: float | None = None) -> object:
        del timeout  # each answers at once
        return ref()

    def get_actor(self, *_: object, **__: object) -> _Node:
        return self

    def kill(self, _: object) -> None:
        self.calls.append("kill")


def _stop_on(node: _Node, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`swarm stop` of task c, its cluster answering as *node*."""
    repo = tmp_path / "repo"
    remote = tmp_path / "r.git"
    if not remote.exists():
        make_repo(repo)
        subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(remote)], check=True)
        git(repo, "remote", "add", "origin", str(remote))
        store.update_task("r1", "c", base_commit=git(repo, "rev-parse", "HEAD").strip())
    monkeypatch.setattr(ray_stop, "ray_module", lambda: node)
    monkeypatch.setattr(ray_stop, "head_problem", lambda _: None)
    monkeypatch.setattr(ray_stop, "connect", lambda *_, **__: None)
    monkeypatch.setattr(ray_stop, "remote_url", lambda *_: str(remote))
    spec = RunSettings(ray_address="127.0.0.1:1", remote="origin")
    ray_stop.stop_unmanaged(open_repo(repo), store, "r1", ["c"], spec=spec)


def test_a_ray_stop_killed_as_it_checkpoints_leaves_the_next_stop_to_checkpoint(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The attempt's end was recorded before its checkpoint: a stop killed in between left it
    # ended, and the next one only took its actor down, its clone's unpushed work with it.
    _claude_attempt(store, tmp_path)

    def killed(**_: object) -> None:
        raise _Killed

    node = _Node((RESULT + "\n").encode(), finish=killed)
    with pytest.raises(_Killed):
        _stop_on(node, store, tmp_path, monkeypatch)
    (attempt,) = store.attempts("r1", "c")
    assert attempt.ended_at is None
    node = _Node((RESULT + "\n").encode())
    _stop_on(node, store, tmp_path, monkeypatch)
    assert node.calls.index("finish") < node.calls.index("own_commits") < node.calls.index("kill")
    assert _c_used(store)[1] == (1.25, 300, 40)


def test_a_ray_stop_whose_node_goes_as_the_log_is_copied_keeps_the_copy_here(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The copy here was emptied before the node's was read: its node lost then, the attempt
    # was recorded with nothing used, and the node's copy taken down.
    _claude_attempt(store, tmp_path)

    def lost(offset: int) -> tuple[int, bytes]:
        raise RuntimeError("RayActorError: the actor died")

    node = _Node(b"", tail=lost)
    _stop_on(node, store, tmp_path, monkeypatch)
    assert _c_used(store)[1] == (1.25, 300, 40)
    assert "discard" not in node.calls


def test_a_log_copied_anew_replaces_the_copy_only_once_whole(tmp_path: Path) -> None:
    log = tmp_path / "attempt-1.log"
    log.write_bytes(b"copied so far\n")
    node = b"line one\nline two\n"

    def cut_off(offset: int) -> tuple[int, bytes]:
        if offset:
            raise RuntimeError("node lost")
        return 9, node[:9]

    with pytest.raises(RuntimeError):
        copy_anew(log, cut_off)
    assert log.read_bytes() == b"copied so far\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["attempt-1.log"]
    assert copy_anew(log, lambda offset: (len(node), node[offset:])) == len(node)
    assert log.read_bytes() == node
    assert mirrored(log) == len(node)


def test_a_failed_node_side_secret_look_still_fetches_and_records_the_pushed_branch(
    store: Store, tmp_path: Path
) -> None:
    # The node's look at the agent's own commits failing (a git error in its clone) skipped
    # the fetch: the pushed work was not brought here, nor its tip and diff recorded.
    repo = make_repo(tmp_path / "repo")
    base = git(repo, "rev-parse", "HEAD")
    remote = tmp_path / "r.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(remote)], check=True)
    node = tmp_path / "node"
    subprocess.run(["git", "clone", "-q", str(remote), str(node)], check=True)
    (node / "work.txt").write_text("an hour's work\n")
    git(node, "add", "work.txt")
    git(node, "-c", "user.name=n", "-c", "user.email=n@x", "commit", "-qm", "checkpoint")
    git(node, "push", "-q", "origin", "HEAD:refs/heads/swarm/a")
    pushed = git(node, "rev-parse", "HEAD")
    store.update_task("r1", "a", base_commit=base)
    events: list[tuple[str, object]] = []

    def call(_actor: object, method: str, *_: object, **__: object) -> object:
        assert method == "own_commits"
        raise SwarmError("on its node: git rev-list: fatal: bad object")

    worker = object.__new__(RayTaskWorker)
    worker.store, worker.run_id, worker.repo = store, "r1", open_repo(repo)
    worker.url, worker._git_lock = str(remote), threading.Lock()
    worker._emit = lambda kind, _task, data: events.append((kind, data))  # type: ignore[method-assign]
    worker._call = call  # type: ignore[method-assign]
    handle = _handle(store, tmp_path)
    worker._keep_pushed(Task(id="a", prompt="do a"), (handle, cast("Live", None)))
    assert git(repo, "rev-parse", "swarm/a") == pushed
    row = store.task("r1", "a")
    assert row is not None
    assert (row.tip_commit, row.diff_files) == (pushed, 1)
    assert [kind for kind, _ in events] == ["node_look_failed"]
