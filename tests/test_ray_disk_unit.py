"""max_disk per Ray node (NodeDisk): a real repository, a real store and real worker threads."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import git
from worktree_swarm.core.run_settings import RunSpec
from worktree_swarm.core.task import Task
from worktree_swarm.git import repo as gitrepo
from worktree_swarm.infra.disk import DiskUsage
from worktree_swarm.infra.store import Store
from worktree_swarm.run.disk_budget import DiskFullError, checkout_size
from worktree_swarm.run.ray_disk import NodeDisk

TASKS = tuple(Task(id=f"t{i}", prompt=f"do {i}") for i in range(1, 5))
DEADLINE = 30.0  # generous: a wait that ends at all ends within a second


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "state.db") as s:
        s.create_run(
            run_id="r1",
            base_commit="abc123",
            repo_root=str(tmp_path / "repo"),
            jobs=4,
            manager=None,
            spec_json="{}",
            tasks=[(t, f"swarm/{t.id}", f"/node/{t.id}") for t in TASKS],
        )
        yield s


def node_disk(repo: Path, store: Store, max_disk: int | None) -> NodeDisk:
    spec = RunSpec(tasks=TASKS, max_disk=max_disk)
    return NodeDisk(repo=gitrepo.open_repo(repo), spec=spec, store=store, run_id="r1")


class Node:
    """What the actor on one node reports: bytes held besides the given clones; calls seen."""

    def __init__(self, held: int = 0) -> None:
        self.held = held
        self.asked: list[tuple[str, ...]] = []

    def __call__(self, tasks: tuple[str, ...]) -> int:
        self.asked.append(tasks)
        return self.held


def test_without_max_disk_admit_returns_at_once(repo: Path, store: Store) -> None:
    disk = node_disk(repo, store, None)
    node, stop, reasons = Node(), threading.Event(), list[str]()
    for task in TASKS:
        start = git(repo, "rev-parse", "HEAD")
        admitted = disk.admit("n1", task, start=start, held=node, stop=stop, waiting=reasons.append)
        assert admitted is True
    assert node.asked == []  # nothing measured on the node
    assert reasons == []


def test_a_third_clone_waits_for_room_until_one_is_released(repo: Path, store: Store) -> None:
    start = git(repo, "rev-parse", "HEAD")
    one = checkout_size(gitrepo.open_repo(repo), start)
    disk = node_disk(repo, store, 2 * one + one // 2)  # room for two clones, not three
    node, stop = Node(), threading.Event()
    t1, t2, t3, t4 = TASKS
    for task in (t1, t2):
        assert disk.admit("n1", task, start=start, held=node, stop=stop, waiting=pytest.fail)
    # Another node has its own budget.
    assert disk.admit("n2", t4, start=start, held=Node(), stop=stop, waiting=pytest.fail)
    reasons: list[str] = []
    waiting = threading.Event()

    def shown(reason: str) -> None:
        reasons.append(reason)
        waiting.set()

    result: list[bool] = []
    worker = threading.Thread(
        target=lambda: result.append(
            disk.admit("n1", t3, start=start, held=node, stop=stop, waiting=shown)
        )
    )
    worker.start()
    assert waiting.wait(DEADLINE)
    assert result == []  # still waiting
    assert reasons == [reasons[0]]
    assert reasons[0].startswith("waiting for disk on node n1: ")
    assert "used, needs ~" in reasons[0]
    assert node.asked == [("t1",)]  # measured once, kept for a few seconds

    disk.released("n1", "t1")

    worker.join(DEADLINE)
    assert not worker.is_alive()
    assert result == [True]
    assert reasons[-1] == ""  # the pending reason is cleared once it may go on
    # Measured again after the release, without the clones in flight (counted apart).
    assert node.asked[-1] == ("t2", "t3")


def test_stop_while_waiting_returns_false(repo: Path, store: Store) -> None:
    start = git(repo, "rev-parse", "HEAD")
    one = checkout_size(gitrepo.open_repo(repo), start)
    disk = node_disk(repo, store, one + one // 2)
    node, stop = Node(), threading.Event()
    assert disk.admit("n1", TASKS[0], start=start, held=node, stop=stop, waiting=pytest.fail)
    waiting = threading.Event()
    result: list[bool] = []
    worker = threading.Thread(
        target=lambda: result.append(
            disk.admit(
                "n1", TASKS[1], start=start, held=node, stop=stop, waiting=lambda _: waiting.set()
            )
        )
    )
    worker.start()
    assert waiting.wait(DEADLINE)

    stop.set()

    worker.join(DEADLINE)
    assert not worker.is_alive()
    assert result == [False]


def test_a_node_full_of_others_clones_fails_the_task_with_next_steps(
    repo: Path, store: Store
) -> None:
    start = git(repo, "rev-parse", "HEAD")
    disk = node_disk(repo, store, 10 * 2**20)
    leftovers = Node(held=11 * 2**20)

    with pytest.raises(DiskFullError) as raised:
        disk.admit(
            "n1", TASKS[0], start=start, held=leftovers, stop=threading.Event(), waiting=pytest.fail
        )

    assert str(raised.value) == (
        "max_disk 10M: a new clone needs ~12K but 11M under $SWARM_NODE_DIR/runs on node n1 "
        "belongs to no task of this run in flight (clones of lost attempts or earlier runs?); "
        "remove them or raise max_disk"
    )


def test_alone_on_its_node_a_clone_starts_even_if_an_earlier_one_grew_past_the_cap(
    repo: Path, store: Store
) -> None:
    start = git(repo, "rev-parse", "HEAD")
    one = checkout_size(gitrepo.open_repo(repo), start)
    disk = node_disk(repo, store, 2 * one)
    node, stop = Node(), threading.Event()
    assert disk.admit("n1", TASKS[0], start=start, held=node, stop=stop, waiting=pytest.fail)
    disk.measured("n1", "t1", DiskUsage(apparent=3 * one, actual=3 * one))  # setup grew it
    disk.released("n1", "t1")

    assert disk.admit("n1", TASKS[1], start=start, held=node, stop=stop, waiting=pytest.fail)


def test_measured_records_disk_use_in_the_store(repo: Path, store: Store) -> None:
    disk = node_disk(repo, store, None)
    disk.adopted("n1", "t2")  # a resumed run's actor
    disk.measured("n1", "t2", DiskUsage(apparent=1234, actual=8192))
    disk.measured("n9", "t3", DiskUsage(apparent=5, actual=4096))  # not in flight: still kept

    rows = {row.task_id: row for row in store.tasks("r1")}
    assert (rows["t2"].disk_apparent, rows["t2"].disk_actual) == (1234, 8192)
    assert (rows["t3"].disk_apparent, rows["t3"].disk_actual) == (5, 4096)
    assert rows["t1"].disk_actual is None
