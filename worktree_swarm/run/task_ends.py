"""A task's end in the run loop: its outcome taken, the guard's verdicts applied, stops.

:class:`TaskEnds` takes what a task's worker hands back (its port block given back, its final
state recorded, a guard's verdict first), applies each new outside write the guard found
(recorded, its suspects failed or stopped, a task already ended failed in place of what was
announced), runs the run's last guard scan, and passes `swarm stop` requests on (the state
database written back first if it was deleted under the run).
"""

from __future__ import annotations

import dataclasses
import queue
import time

from worktree_swarm.core.models import TaskState
from worktree_swarm.guard import remotes
from worktree_swarm.guard.model import Violation, blamed
from worktree_swarm.infra import faults
from worktree_swarm.infra.store_rows import TaskFields
from worktree_swarm.run.retry import OUTSIDE_WRITE
from worktree_swarm.run.run_state import RunState
from worktree_swarm.run.run_worker import TaskOutcome


class TaskEnds(RunState):
    """Outcomes taken, the guard's verdicts applied, `swarm stop` requests passed on."""

    def _finish(self, task_id: str, outcome: TaskOutcome) -> None:
        live = self._live.pop(task_id, None)
        if live is None:
            return  # finished already, from what its Live said (:meth:`_next_done`)
        self._ports.give_back(*self._ports_of(live.port_slot))
        if live.thread is not None:
            live.thread.join()
        if task_id in self._guard_reasons and outcome.state is not TaskState.FAILED:
            reason = self._guard_reasons[task_id]
            outcome = dataclasses.replace(outcome, state=TaskState.FAILED, reason=reason)
        # Its worktree's disk use, measured by its worker, with the state: one transaction.
        fields: TaskFields = {"reason": outcome.reason}
        if (used := outcome.disk) is not None:
            fields["disk_apparent"], fields["disk_actual"] = used.apparent, used.actual
        if outcome.state is not TaskState.PENDING:  # PENDING: interrupted (its cluster lost)
            fields["ended_at"] = time.time()
        self._set_state(task_id, outcome.state, **fields)
        self.disk.finished(task_id)

    def _next_done(self) -> tuple[str, TaskOutcome]:
        """The next task's end, waited for.

        Off the queue; or, where the queue is empty and a task's worker has ended, from its
        Live: a stop signal's KeyboardInterrupt, raised in the main thread wherever it is,
        may have cut short the loop that had just taken that outcome off the queue, and the
        stop would wait for it for ever.
        """
        while True:
            try:
                return self._done.get(timeout=0.25)
            except queue.Empty:
                for task_id, live in list(self._live.items()):
                    ended = live.thread is None or not live.thread.is_alive()
                    if live.outcome is not None and ended:
                        return task_id, live.outcome

    def _drain(self) -> None:
        while self._live:
            self._finish(*self._next_done())
        self._stop_pending("run stopped before it started")

    def _final_scan(self) -> None:
        self.guard.close()
        self.guard.scan(deep=True)
        self._apply_guard()
        self.guard.looked_last()

    def _apply_guard(self) -> None:
        """Record each new outside write and fail its suspects (unless outside writes are allowed).

        A sole suspect still running is stopped at once; with several, each is failed when it
        ends, since any of them may be the one.
        """
        for failure in self.guard.drain_failures():
            # A scan that failed is told, never swallowed: it is retried, but until it
            # succeeds that part is not watched.
            self._emit("guard_error", None, failure.as_dict())
        for note in self.guard.drain_notes():  # an agent's fetch, maybe: no one's fault
            self._emit(remotes.EVENT, None, note.as_dict())
        found = self.guard.drain()  # each recorded as it was found, or refused (below)
        with self._unrecorded_lock:
            late, self._unrecorded = self._unrecorded, []
        for violation in late:
            self._emit(OUTSIDE_WRITE, violation.task, violation.as_dict())
        for violation in found:
            if self.spec.allow_outside_writes:
                continue
            for task_id in violation.suspects:
                self._blame(task_id, violation)
        # On record and applied: a manager killed before this has the next command apply them.
        self.guard.settled(found)

    def _blame(self, task_id: str, violation: Violation) -> None:
        reason = violation.reason(task_id)
        if task_id in self._live:
            self._guard_reasons.setdefault(task_id, reason)
            if len(violation.suspects) == 1:
                self._live[task_id].stop.set()
        elif (announced := self._states.get(task_id, TaskState.PENDING)).is_final:
            # Found only later (a write no scan could see at its end): said as what it replaces.
            row = self.store.task(self.run_id, task_id)
            if row is None or not blamed(row.reason):
                withdrawn = announced if announced is not TaskState.FAILED else None
                self._set_state(task_id, TaskState.FAILED, replaces=withdrawn, reason=reason)

    def _poll_stop_requests(self) -> None:
        self._put_back_store()
        # Only the requested ids: reading every task on each poll made a run quadratic.
        for task_id in self.store.stop_requests(self.run_id):
            if task_id in self._live:
                self._live[task_id].stop.set()
            elif self._states[task_id] is TaskState.PENDING:
                self._set_state(task_id, TaskState.STOPPED, reason="stopped before it started")

    def _put_back_store(self) -> None:
        """Write the state database back if it was deleted under the run, waiting for room.

        The run cannot end before: its record would go with the open file. While the disk is
        full the store cannot record it either, so that is told on the output alone, once.
        """
        told = False
        pause = self.store.on_full

        def waiting(exc: Exception | None) -> None:
            nonlocal told
            if exc is not None and not told and self._observer is not None:
                told = True
                data = {"path": str(self.store.path), "reason": faults.why(exc)}
                self._observer("store_put_back_waiting", None, data)
            if pause is not None:
                pause(exc)

        if faults.retry_while_full(self.store.put_back, waiting if pause else None):
            self._emit("store_put_back", None, {"path": str(self.store.path)})
