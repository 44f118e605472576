"""``max_disk`` per node for the Ray executor: no new clone on a node while it would not fit.

The coordinator's side of disk accounting on a cluster. Each node is budgeted on its own: what
its ``$SWARM_NODE_DIR/runs`` holds besides the clones of this run's tasks in flight there
(clones left by lost attempts, other runs), plus, for each task in flight on it, the larger of
what its clone uses (the actor measures it) and the estimate of one clone (as locally: the
start commit's checkout, or the largest clone of this run measured so far). An attempt is
placed by Ray first; before it clones, it waits (its task ``pending``, with the node and the
numbers as the reason) until its clone fits on that node. A node keeps nothing of an attempt
that ended, so room appears as the tasks in flight there end. When nothing of this run is in
flight on the node, a clone whose checkout alone fits starts anyway (the run makes progress);
otherwise the task fails, naming what takes the space, as locally.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from worktree_swarm.core.run_settings import RunSpec
from worktree_swarm.core.task import Task
from worktree_swarm.core.units import format_size
from worktree_swarm.git import repo as git
from worktree_swarm.infra.disk import DiskUsage
from worktree_swarm.infra.store import Store
from worktree_swarm.run.disk_budget import (
    REMEASURE_SECONDS,
    WAIT_SLICE,
    DiskFullError,
    checkout_size,
)

# What a node holds under its runs dir besides the given tasks' clones of this run (bytes).
Held = Callable[[tuple[str, ...]], int]


class NodeDisk:
    """Admits clones under ``spec.max_disk`` per node; records each task's disk use.

    Shared by the worker threads of a Ray run. Without ``max_disk`` nothing waits, but the disk
    use the actors report is still recorded.
    """

    def __init__(self, *, repo: git.Repo, spec: RunSpec, store: Store, run_id: str) -> None:
        self.repo = repo
        self.spec = spec
        self.store = store
        self.run_id = run_id
        self._cond = threading.Condition()
        self._active: dict[str, dict[str, int]] = {}  # node -> task id -> its clone's bytes
        self._held: dict[str, tuple[int, float]] = {}  # node -> (bytes, when measured)
        self._checkouts: dict[str, int] = {}
        self._largest = 0

    def admit(
        self,
        node: str,
        task: Task,
        *,
        start: str,
        held: Held,
        stop: threading.Event,
        waiting: Callable[[str], None],
    ) -> bool:
        """Wait until *task*'s clone fits on *node*; False when *stop* was set meanwhile.

        *held* measures the node's other use (a call to the actor placed there). *waiting*
        is called with the reason to show while the task waits, and with ``""`` once it may
        go on. Raises DiskFullError when it cannot fit and nothing will make room.
        """
        cap = self.spec.max_disk
        if cap is None:
            self.adopted(node, task.id)
            return True
        checkout = self._checkout(start)
        shown = ""
        while not stop.is_set():
            with self._cond:
                others = tuple(self._active.get(node, {}))
                cached = self._held.get(node)
            if cached is None or time.monotonic() - cached[1] > REMEASURE_SECONDS:
                cached = (held((*others, task.id)), time.monotonic())
            with self._cond:
                self._held[node] = cached
                on_node = self._active.setdefault(node, {})
                need = max(checkout, self._largest)
                used = cached[0] + sum(max(need, size) for size in on_node.values())
                if used + need <= cap or (not on_node and cached[0] + checkout <= cap):
                    # Alone on its node it fits: a clone that grew past the cap is no reason.
                    on_node[task.id] = 0
                    break
                if not on_node:
                    raise DiskFullError(self._full_message(node, cached[0], checkout))
                reason = (
                    f"waiting for disk on node {node}: {format_size(used)} of "
                    f"{format_size(cap)} used, needs ~{format_size(need)}"
                )
                if reason != shown:
                    waiting(reason)
                    shown = reason
                self._cond.wait(WAIT_SLICE)
        else:
            return False
        if shown:
            waiting("")
        return True

    def adopted(self, node: str, task_id: str) -> None:
        """A clone in flight on *node* that was not admitted here (a resumed run's actor)."""
        with self._cond:
            self._active.setdefault(node, {}).setdefault(task_id, 0)

    def measured(self, node: str, task_id: str, used: DiskUsage) -> None:
        """What *task_id*'s clone on *node* uses now, as its actor measured it: recorded."""
        with self._cond:
            on_node = self._active.get(node, {})
            if task_id in on_node:
                on_node[task_id] = used.actual
            self._largest = max(self._largest, used.actual)
            self._cond.notify_all()
        # Shown by `swarm status` (the clone is not on this machine) and kept when it ends.
        self.store.update_task(
            self.run_id, task_id, disk_apparent=used.apparent, disk_actual=used.actual
        )

    def released(self, node: str, task_id: str) -> None:
        """*task_id*'s attempt on *node* is over: its clone is gone from there."""
        with self._cond:
            self._active.get(node, {}).pop(task_id, None)
            self._held.pop(node, None)  # measured again: a lost clone may be gone too
            self._cond.notify_all()

    def _checkout(self, start: str) -> int:
        with self._cond:
            if start in self._checkouts:
                return self._checkouts[start]
        size = checkout_size(self.repo, start)
        with self._cond:
            self._checkouts[start] = size
        return size

    def _full_message(self, node: str, held: int, checkout: int) -> str:
        cap = format_size(self.spec.max_disk)
        return (
            f"max_disk {cap}: a new clone needs ~{format_size(checkout)} but {format_size(held)} "
            f"under $SWARM_NODE_DIR/runs on node {node} belongs to no task of this run in flight "
            "(clones of lost attempts or earlier runs?); remove them or raise max_disk"
        )
