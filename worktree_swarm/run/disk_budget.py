"""``max_disk``: no new worktree while the worktrees would use more disk than the cap.

The total is what every directory under the worktree root uses now (this run's worktrees and
anything earlier runs left there), plus, for each task in flight, what its worktree is still
expected to grow to: the estimate of one worktree minus what it uses so far. The estimate is
the larger of the start commit's checkout (blob sizes rounded up to 4 KiB blocks, plus the
task's ``copy`` files) and the largest worktree of this run measured so far (which includes
what ``setup`` installed). The cap applies to actual (allocated) bytes.

A task whose worktree does not fit waits (``pending``, with the numbers as its reason) until
room appears: a task in flight ends and its worktree becomes removable, in which case the
oldest finished worktree of this run is removed (its branch keeps the work). Worktrees grow
while agents work, so the total is re-measured every few seconds while a task waits. When
nothing is in flight and nothing is removable the task still starts if its checkout alone
fits, so a run always makes progress; otherwise it fails, naming what takes the space.
"""

from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Callable
from pathlib import Path

from worktree_swarm.agents import adapter_for
from worktree_swarm.core.errors import BadInputError, CommandError, GitError, SwarmError
from worktree_swarm.core.models import Emit
from worktree_swarm.core.run_settings import Executor, RunSpec
from worktree_swarm.core.task import Task
from worktree_swarm.core.text import one_line
from worktree_swarm.core.units import format_size
from worktree_swarm.git import checkpoints, gitfiles, local_files, removal, sparse, tampering
from worktree_swarm.git import repo as git
from worktree_swarm.guard.watcher import Guard
from worktree_swarm.infra import disk, faults
from worktree_swarm.infra.store import Store
from worktree_swarm.run import task_checkpoint

REMEASURE_SECONDS = 5.0
WAIT_SLICE = 0.25  # how soon a waiting task notices its stop event
_BLOCK = 4096


class DiskFullError(SwarmError):
    """A worktree cannot fit under max_disk and nothing will make room."""


class _KeptError(SwarmError):
    """A finished worktree swarm must not touch: kept, its work uncommitted."""


class DiskBudget:
    """Admits worktree creations under ``spec.max_disk``; records each task's disk use.

    Shared by the worker threads (:meth:`admit`, :meth:`measure`) and the main thread
    (:meth:`finished`).
    Without ``max_disk`` nothing waits, but disk use is still recorded.
    """

    def __init__(
        self,
        *,
        repo: git.Repo,
        spec: RunSpec,
        store: Store,
        run_id: str,
        emit: Emit,
        guard: Guard,
    ) -> None:
        if spec.worktree_root is None:
            msg = "RunSpec.worktree_root must be set"
            raise ValueError(msg)
        self.repo = repo
        self.spec = spec
        self.store = store
        self.run_id = run_id
        self.root = spec.worktree_root
        self._emit = emit
        self.guard = guard
        self._tasks = {t.id: t for t in spec.tasks}
        self._cond = threading.Condition()
        self._scans: dict[str, tuple[disk.Scan, float]] = {}
        self._checkouts: dict[tuple[str, sparse.Cone | None], int] = {}
        self._largest = 0
        # A resumed run: tasks still going on in their worktrees are in flight; finished ones
        # whose worktree is still there can make room, oldest first.
        self._active: dict[str, int] = {}  # task id -> its checkout estimate
        self._removable: list[str] = []
        self._kept: dict[str, str] = {}  # finished, never removed: task id -> why
        rows = sorted(store.tasks(run_id), key=lambda r: r.ended_at or 0.0)
        for row in rows:
            if not (self.root / row.task_id).is_dir():
                continue
            if not row.state.is_final:
                self._active[row.task_id] = 0
            elif row.worktree_removed_at is None:
                self._removable.append(row.task_id)

    # -- worker threads -------------------------------------------------------------------

    def admit(
        self, task: Task, *, start: str, stop: threading.Event, waiting: Callable[[str], None]
    ) -> bool:
        """Wait until *task*'s worktree fits; False when *stop* was set meanwhile.

        *waiting* is called with the reason to show while the task waits, and with ``""``
        once it may go on. Raises DiskFullError when it cannot fit and nothing will make room.
        """
        cap = self.spec.max_disk
        if cap is None:
            return True
        checkout = self.checkout_estimate(task, start)
        shown = ""
        with self._cond:
            while not stop.is_set():
                used = self._used()
                need = max(checkout, self._largest)
                if used + need <= cap:
                    break
                if self._removable:
                    self._remove(self._removable.pop(0), used=used, need=need)
                    continue
                if not self._active:
                    if used + checkout <= cap:
                        break  # alone it fits: a worktree that grew past the cap is no reason
                    raise DiskFullError(self._full_message(used, checkout))
                reason = (
                    f"waiting for disk: {format_size(used)} of {format_size(cap)} used, "
                    f"needs ~{format_size(need)}"
                )
                if reason != shown:
                    waiting(reason)
                    shown = reason
                self._cond.wait(WAIT_SLICE)
            else:
                return False
            self._active[task.id] = checkout
        if shown:
            waiting("")
        return True

    def checkout_estimate(self, task: Task, start: str) -> int:
        """Actual bytes a fresh worktree of *task* at *start* takes: checkout plus copies."""
        cone = sparse.of_task(task)
        if (start, cone) not in self._checkouts:
            self._checkouts[start, cone] = checkout_size(self.repo, start, cone=cone)
        return self._checkouts[start, cone] + copy_size(self.repo, task)

    def measure(self, task_id: str) -> disk.DiskUsage | None:
        """The disk use of *task_id*'s worktree as its pipeline ends (None: it is not there).

        Called from the task's worker thread: a walk of a big worktree (``node_modules``)
        must not hold up the run loop. Its outcome carries it to the run loop, which records
        it with the task's final state.
        """
        path = self.root / task_id
        return disk.usage(path) if path.is_dir() else None

    def record(self, task_id: str, used: disk.DiskUsage | None) -> None:
        """Record *used* (:meth:`measure`) on its own: a pipeline that ended with no outcome."""
        if used is not None:
            self.store.update_task(
                self.run_id, task_id, disk_apparent=used.apparent, disk_actual=used.actual
            )

    # -- main thread ----------------------------------------------------------------------

    def finished(self, task_id: str) -> None:
        """A task reached its final state: its worktree may now be removed for room."""
        present = (self.root / task_id).is_dir()
        with self._cond:
            self._active.pop(task_id, None)
            self._scans.pop(task_id, None)
            if present and task_id not in self._removable:
                self._removable.append(task_id)
            self._cond.notify_all()

    # -- internals (the condition's lock is held) ----------------------------------------

    def _used(self) -> int:
        """Actual bytes under the root now, plus what tasks in flight are still expected to use."""
        now = time.monotonic()
        try:
            names = sorted(p.name for p in self.root.iterdir())
        except FileNotFoundError:
            names = []
        for gone in set(self._scans) - set(names):
            del self._scans[gone]
        for name in names:
            cached = self._scans.get(name)
            if cached is None or now - cached[1] > REMEASURE_SECONDS:
                self._scans[name] = (disk.scan(self.root / name), now)
        actual = {name: self._scans[name][0].usage.actual for name in names}
        ours = [actual[name] for name in names if name in self._tasks]
        self._largest = max([self._largest, *ours])
        expected = sum(
            max(0, max(estimate, self._largest) - actual.get(task_id, 0))
            for task_id, estimate in self._active.items()
        )
        return disk.combine(scan for scan, _ in self._scans.values()).actual + expected

    def _commit_before_removal(self, task_id: str, task: Task | None, path: Path) -> None:
        """Commit what *task_id*'s worktree holds uncommitted, as `swarm clean` would.

        Its trailers name the agent of the task's latest attempt (a fallback, maybe), and it
        leaves out what the run's checkpoints leave out (every agent's own files too). Onto
        the task's branch alone: a worktree switched meanwhile gets SwitchedError.
        """
        row = self.store.task(self.run_id, task_id)
        if task is not None and row is not None:
            trailers = task_checkpoint.trailers(self.store, row, task)
            kept = task_checkpoint.left_out(self.store, row, task, path)
        elif task is not None:  # not on record: as the spec says
            trailers = checkpoints.trailers(task_id, None, task.agent)
            local = local_files.local_paths(path, link=task.link, copy=task.copy, base=None)
            kept = task_checkpoint.LeftOut(
                exclude=local, droppings=adapter_for(task.agent).droppings
            )
        else:
            trailers = checkpoints.trailers(task_id, None, "unknown")
            kept = task_checkpoint.LeftOut(exclude=(), droppings=())
        branch = row.branch if row is not None else task.branch if task is not None else None
        checkpoints.checkpoint(
            path,
            message=f"swarm: checkpoint {task_id} (before removing its worktree for max_disk)"
            + trailers,
            author=self.spec.commit_author,
            exclude=kept.exclude,
            droppings=kept.droppings,
            max_file=self.spec.max_file,
            agent_ran=row is not None and row.agent_started,
            branch=branch,
            onto=branch,
        )

    def _remove(self, task_id: str, *, used: int, need: int) -> None:
        """Remove a finished task's worktree to make room; its branch keeps the work.

        One that must stay (its work in no commit, or git failing there) is kept and told
        once: the run goes on, another worktree may make the room.
        """
        path = self.root / task_id
        task = self._tasks.get(task_id)
        cap = format_size(self.spec.max_disk)
        reason = f"max_disk {cap}: {format_size(used)} used, another worktree needs ~"
        reason += format_size(need)
        branch = task.branch if task is not None else f"swarm/{task_id}"
        # Busy: the guard neither takes the removal (or the checkpoint's commit) for a
        # foreign write nor watches the worktree any longer.
        with self.guard.busy(task_id, path):
            try:
                switched = self._checkpoint_and_remove(task_id, task, path, branch)
            except (_KeptError, checkpoints.LeftOutError, checkpoints.SwitchedError) as exc:
                self._keep(task_id, path, str(exc), work=True)
                return  # what no commit holds stays, and its worktree with it
            except (GitError, CommandError) as exc:  # that worktree's, not the waiting task's
                self._keep(task_id, path, _first_words(exc), work=False)
                return
        self._scans.pop(task_id, None)
        self.store.update_task(self.run_id, task_id, worktree_removed_at=time.time())
        data: dict[str, object] = {"reason": reason, "path": str(path), "branch": branch}
        if switched is not None:
            data["reason"] = f"{reason}; its worktree was on {switched}: put back on {branch} first"
            data["put_back_from"] = switched
        self._emit("worktree_removed", task_id, data)

    def _checkpoint_and_remove(
        self, task_id: str, task: Task | None, path: Path, branch: str
    ) -> str | None:
        """:meth:`_remove`'s work: where its worktree was when not on *branch* (else None).

        _KeptError, LeftOutError, GitError or CommandError when it stays.
        """
        if not path.is_dir():
            return None
        changed = tampering.tampered(self.repo, path)
        if changed is not None:
            # Its agent pointed its `.git` elsewhere (your git dir): the commit below would
            # land there. Its work stays uncommitted, and its worktree with it.
            raise _KeptError(f"{changed} (swarm runs no git there)")
        # Left off its branch (an attempt that failed before the guard put it back): back on
        # it first, as `swarm stop` does, so that the commit lands there.
        tampering.unplant(self.repo, path, branch)  # nothing of git's writes through one
        switched = gitfiles.put_back_on(path, branch)
        # Every attempt ended with a checkpoint; this only keeps what a check or a setup step
        # left behind, as `swarm clean` does, so that nothing is lost. On a full disk (that
        # commit's objects need room too) it waits, as the run does.
        faults.retry_while_full(
            lambda: self._commit_before_removal(task_id, task, path), self.store.on_full
        )
        # Told to the guard as swarm's own: it expects the worktree gone from now on.
        with self.guard.provisioning(path):
            faults.retry_while_full(
                lambda: removal.remove_worktree(self.repo, path, force=True),
                self.store.on_full,
            )
        return switched

    def _keep(self, task_id: str, path: Path, why: str, *, work: bool) -> None:
        """Keep *task_id*'s worktree, never removed for room in this run; told once.

        *work*: it holds work no commit has (else git failed there).
        """
        self._kept[task_id] = "holding work no commit has" if work else "git failed there"
        self._emit("worktree_kept", task_id, {"reason": one_line(why), "path": str(path)})

    def _full_message(self, used: int, checkout: int) -> str:
        cap = format_size(self.spec.max_disk)
        kept = "".join(f"; task {t}'s is kept, {why}" for t, why in self._kept.items())
        return (
            f"max_disk {cap}: a new worktree needs ~{format_size(checkout)} but "
            f"{format_size(used)} under {self.root} belongs to no task of this run in flight "
            f"(worktrees of earlier runs?{kept}); run `swarm clean --all` or raise max_disk"
        )


def _first_words(exc: SwarmError) -> str:
    """What *exc* says, git's first line first: it names the thing at fault (a lock file)."""
    if isinstance(exc, CommandError):
        said = next((line for line in exc.output.splitlines() if line.strip()), "")
        return f"`{shlex.join(exc.argv[:4])}` exited {exc.returncode}: {said}"
    return str(exc)


def checkout_size(repo: git.Repo, commit: str, *, cone: sparse.Cone | None = None) -> int:
    """Actual bytes a checkout of *commit* takes: blobs and directories in 4 KiB blocks.

    Plus the worktree's ``.git`` file. The worktree's index lives in the git common dir and
    is not counted. With *cone*, only what a checkout sparse to it holds.
    """
    out = git.git(repo.root, "ls-tree", "-r", "-t", "-l", "-z", "--full-tree", commit)
    total = 2 * _BLOCK  # the worktree directory itself and its `.git` file
    for record in out.split("\0"):
        if not record:
            continue
        head, _, name = record.partition("\t")
        meta = head.split()
        kind, size = meta[1], meta[3]
        if kind == "tree":
            total += _BLOCK if sparse.holds(cone, f"{name}/-") else 0
        elif kind == "blob" and size.isdigit() and sparse.holds(cone, name):
            total += -(-int(size) // _BLOCK) * _BLOCK
    return total


def copy_size(repo: git.Repo, task: Task) -> int:
    """Actual bytes of what *task*'s ``copy`` globs match in the main checkout."""
    return sum(
        disk.usage(match).actual for pattern in task.copy for match in repo.root.glob(pattern)
    )


def preflight(repo: git.Repo, spec: RunSpec, commit: str) -> None:
    """Raise BadInputError when one worktree cannot fit under ``max_disk`` at all.

    That is, when the checkout of *commit* plus a task's ``copy`` files, added to what the
    worktree root already holds (earlier runs), exceeds the cap.
    """
    cap = spec.max_disk
    if cap is None or spec.worktree_root is None:
        return
    sizes: dict[sparse.Cone | None, int] = {}  # a sparse worktree at its sparse size
    # With executor `ray` the clones are on the nodes, each budgeted there (ray_disk.py).
    local = spec.executor is Executor.LOCAL and spec.worktree_root.is_dir()
    held = disk.usage(spec.worktree_root).actual if local else 0
    for task in spec.tasks:
        cone = sparse.of_task(task)
        if cone not in sizes:
            sizes[cone] = checkout_size(repo, commit, cone=cone)
        need = sizes[cone] + copy_size(repo, task)
        if need > cap:
            raise BadInputError(
                f"max_disk {format_size(cap)} ({cap:,} bytes) is smaller than one worktree of "
                f"task {task.id} (~{need:,} bytes: the checkout plus its `copy` files); "
                "raise max_disk"
            )
        if held + need > cap:
            raise BadInputError(
                f"max_disk {format_size(cap)}: {spec.worktree_root} already holds "
                f"{format_size(held)}, no room for a worktree of ~{format_size(need)}; "
                "run `swarm clean --all` or raise max_disk"
            )
