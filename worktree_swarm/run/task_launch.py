"""Starting tasks: adopted ones first, then the ready ones, each on a thread with a port block.

:class:`TaskLaunch` picks what the scheduler says is ready within twice ``jobs`` in flight
(a task waiting out its provider's rate limit is not counted), gives each a block of
``SWARM_PORT`` free in this run and not held by another manager, and starts its worker thread
(:meth:`TaskLaunch._work`, which always reports an outcome back). An adopted agent keeps the
block it was started with (:func:`port_slot`, read from its process's environment).
"""

from __future__ import annotations

import errno
import threading

import psutil

from worktree_swarm.agents import provider_of
from worktree_swarm.core.errors import SwarmError
from worktree_swarm.core.models import ProcessIdentity, TaskState
from worktree_swarm.core.run_settings import Executor, RunSpec
from worktree_swarm.core.task import Task
from worktree_swarm.infra import faults, interrupts, proc, proctree
from worktree_swarm.infra.store_rows import AttemptRow
from worktree_swarm.run.run_worker import Live, TaskOutcome
from worktree_swarm.run.task_ends import TaskEnds

STARVED_WAIT = 1.0  # seconds between tries to start a task's thread when none could start

# What the catch-all of a task's worker says is the system's limit, not an internal error.
_FILE_LIMITS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})


class TaskLaunch(TaskEnds):
    """Tasks started: adopted ones, ready ones, each on its worker thread with its ports."""

    def _start_adopted(self) -> None:
        # Adopted tasks start first and regardless of `jobs`: their agents may already run.
        # Each takes its slot before any new agent may: a task launched meanwhile would run
        # beside it over `jobs`, and past a budget whose last attempt it has not counted yet.
        open_ones = [
            live for live in self._adopt.values()
            if live.resume_from is not None and live.resume_from.ended_at is None
        ]  # fmt: skip
        for live in self._adopt.values():
            while not self._launch(live):
                interrupts.wait(self._stopping, STARVED_WAIT)
            self._states[live.task.id] = TaskState.RUNNING
        self._adopt.clear()
        for live in open_ones:
            while not interrupts.wait(live.adopted, 0.25):
                self._poll_stop_requests()
                self._apply_guard()

    def _launch_ready(self) -> None:
        # Twice `jobs` in flight: `jobs` running agents, up to `jobs` provisioning or checking.
        # A task waiting out its provider's rate limit is not among them (the gate bounds the
        # agents): it kept other providers' tasks from starting for as long as it waited. No
        # task starts while its own provider is held: it would only wait too.
        resting = self._resting()
        slots = 2 * self.spec.jobs - (len(self._live) - resting)
        holds: list[float] = []  # when the holds that kept a task back end

        def waits(task: Task) -> bool:
            if resting == 0:
                return False
            until = self.gate.waiting_until(provider_of(task.agent))
            if until is not None:
                holds.append(until)
            return until is not None

        picked = self._scheduler.pick(
            states=self._states, running=self._live.keys(), slots=slots, waits=waits
        )
        # Looked at again once the first hold ends, whatever else happens meanwhile: a task
        # held by its provider's pacing waited for the next event, maybe another task's reset
        # minutes away.
        self._wake_at = min(holds, default=None)
        for task_id in picked:
            if not self._launch(Live(task=self._tasks[task_id], port_slot=None)):
                break  # no thread for it now: pending, picked again later
            # In flight for the scheduler; the store says `running` once the agent starts.
            self._states[task_id] = TaskState.RUNNING

    def _resting(self) -> int:
        """How many tasks in flight wait out a rate limit of their provider."""
        return sum(1 for live in self._live.values() if live.waiting)

    def _launch(self, live: Live) -> bool:
        """Start *live*'s worker thread; False when no thread can start now (it is not live).

        Under a limit of processes (``ulimit -u``: threads count) the manager died of
        `can't start new thread`, its agents left running unwatched.
        """
        live.rank = self._scheduler.rank(live.task.id)
        if live.port_slot is None:
            held = [*self._live.values(), *self._adopt.values()]  # adopted ones start first
            used = {other.port_slot for other in held if other.port_slot is not None}
            live.port_slot = self._free_slot(used)
        else:  # an adopted agent's own block, held again (another run may have taken it)
            self._ports.take(*self._ports_of(live.port_slot))
        self._live[live.task.id] = live
        if live.resume_from is None and self.spec.executor is not Executor.RAY:
            # Launched in the scheduler's order, it keeps its place while its worktree is made
            # (here, before its thread can ask): a task whose checkout was quicker waits.
            self.gate.expect(live.rank, provider_of(live.task.agent))
        live.thread = threading.Thread(
            target=self._work, args=(live,), name=f"swarm-{live.task.id}", daemon=True
        )
        try:
            live.thread.start()
        except RuntimeError:
            self.gate.forget(live.rank)
            del self._live[live.task.id]
            self._ports.give_back(*self._ports_of(live.port_slot))
            live.thread = None
            faults.note(self.manager_log, f"no thread can start for {live.task.id} now; it waits")
            self._starved = True
            return False
        return True

    def _work(self, live: Live) -> None:
        """Run *live*'s task and report its outcome, whatever way its worker ends."""
        try:
            outcome = self._outcome(live)
        except BaseException as exc:  # SystemExit, KeyboardInterrupt: still told, then let go
            outcome = TaskOutcome(
                state=TaskState.FAILED, reason=f"internal error: its worker was ended by {exc!r}"
            )
            raise
        finally:
            self.gate.forget(live.rank)  # ended before it asked for a slot, maybe
            try:
                if outcome.state.is_final:
                    # The guard's verdict on the task's last moments first (its next scan may
                    # be a second away): a write of its own fails it before any final state is
                    # announced, and before its dependents start on its branch.
                    self.guard.look_now()
            finally:
                live.adopted.set()  # whichever way it went
                live.outcome = outcome
                self._done.put((live.task.id, outcome))

    def _outcome(self, live: Live) -> TaskOutcome:
        """What running *live*'s task came to; an exception is its failure."""
        try:
            return self._worker.run(live)
        except SwarmError as exc:
            return TaskOutcome(state=TaskState.FAILED, reason=str(exc))
        except Exception as exc:  # noqa: BLE001 - a worker must always report back
            kept = faults.record_exception(self.manager_log, threading.current_thread().name)
            where = f"traceback in {self.manager_log}" if kept else "its traceback not written"
            reason = f"internal error: {exc!r} ({where})"
            # Not EAGAIN: a lock taken without waiting says so too (a fork's is caught where
            # it starts a process).
            if isinstance(exc, OSError) and exc.errno in _FILE_LIMITS:
                limit = proc.system_limit(exc.errno)
                # Out of file descriptors (or memory): the system's, not a bug of swarm's.
                reason = (
                    f"the manager met a system limit ({exc.strerror}: {limit}); its work is"
                    " kept, `swarm retry` runs it again"
                )
            return TaskOutcome(state=TaskState.FAILED, reason=reason)

    def _free_slot(self, used: set[int]) -> int:
        """The lowest slot free in this run whose ports no other manager of yours holds.

        When every block up to the last port is held elsewhere: the lowest free in this run.
        """
        base, block = self.spec.port_base, self.spec.port_block
        for slot in range((_LAST_PORT + 1 - base) // block):
            if slot not in used and self._ports.take(*self._ports_of(slot)):
                return slot
        return next(i for i in range(len(used) + 1) if i not in used)


_LAST_PORT = 65535


def port_slot(attempt: AttemptRow, spec: RunSpec) -> int | None:
    """The port block an adopted attempt's agent was started with (None: unknown, or gone).

    Read from the environment of its process, which the kernel keeps: a new task must never be
    given the block an agent still running holds.
    """
    identity = ProcessIdentity(pid=attempt.pid, create_time=attempt.create_time, pgid=attempt.pgid)
    if attempt.ended_at is not None or not proctree.is_alive(identity):
        return None
    try:
        top = psutil.Process(attempt.pid)  # its shim: the agent below it has the variable
        found = (p.environ().get("SWARM_PORT") for p in [top, *top.children(recursive=True)])
        port = int(next((value for value in found if value), ""))
    except (psutil.Error, ValueError):
        return None
    slot, offset = divmod(port - spec.port_base, spec.port_block)
    return slot if slot >= 0 and offset == 0 else None
