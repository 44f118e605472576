"""How a run shows itself: a live table on a terminal, plain lines or JSON otherwise."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Self, TextIO, cast

from rich.console import Console
from rich.live import Live
from rich.table import Table

from worktree_swarm.core.text import one_line, paths_text, printable
from worktree_swarm.git import committed_secrets
from worktree_swarm.guard import remotes
from worktree_swarm.guard.watcher import UNWATCHED_EVENT
from worktree_swarm.infra.logtail import last_line
from worktree_swarm.infra.redact import redact, redact_data
from worktree_swarm.infra.store import Store
from worktree_swarm.report.status import GateReader, task_status
from worktree_swarm.ui.tables import Column, rich_table, table

_COLUMNS = (
    Column(header="task"),
    Column(header="state", states=True),
    Column(header="elapsed", align="right"),
    Column(header="last output / reason"),
)
_DETAIL_CHARS = 70


class PlainObserver:
    """One line per state change (non-terminals), or one JSON object per event."""

    def __init__(self, out: TextIO | None = None, *, as_json: bool = False) -> None:
        self._out = out or sys.stdout
        self._json = as_json
        self._lock = threading.Lock()

    def __call__(self, kind: str, task_id: str | None, data: Mapping[str, object]) -> None:
        """Print one event."""
        if self._json:
            body = cast(
                "dict[str, object]", redact_data({"event": kind, "task_id": task_id, **data})
            )
            with self._lock:  # stamped in the order printed, whichever thread comes first
                self._print(json.dumps({"ts": round(time.time(), 3), **body}))
            return
        if kind == "state":
            said = str(data.get("reason") or "")
            reason = f" - {said}" if said and said != data["state"] else ""
            # A final state withdrawn by a later guard verdict says so: `done` was not kept.
            replaces = f", replacing {data['replaces']}" if data.get("replaces") else ""
            line = f"{task_id}: {data['state']}{replaces}{reason}"
        elif kind == "gate" and data.get("waiting_until"):
            line = f"{data.get('provider')}: launches held - {data.get('why', '')}"
        elif (told := _task_line(kind, task_id, data) or _guard_line(kind, data)) is not None:
            line = told
        elif kind == "store_put_back":
            line = (
                f"swarm: {data.get('path')} was deleted during the run and is written back "
                "(the logs deleted with it are lost)"
            )
        elif kind == "store_put_back_waiting":
            line = (
                f"swarm: {data.get('path')} was deleted during the run and cannot be written "
                f"back ({data.get('reason')}); the run waits until there is room: free some space"
            )
        elif kind == "run_started":
            line = f"run {data.get('run_id')}: {'resumed' if data.get('resumed') else 'started'}"
        elif kind == "run_finished":  # how it ended: finished, interrupted, ...
            line = f"run {data.get('status')}"
        else:
            return
        shown = _shown(line, task_id)
        with self._lock:
            self._print(shown)

    def _print(self, line: str) -> None:
        """Print *line* (under the lock)."""
        try:
            print(line, file=self._out, flush=True)
        except OSError:  # its reader went away (`| head -1`), its terminal closed
            output_gone(self._out)


def _shown(line: str, task_id: str | None) -> str:
    """*line* of an event (of *task_id*) as printed: redacted, printable, its later lines indented.

    A task's id is the manifest's, never a secret: redacted with what follows, an id like
    `api-token` made `api-token: running` a setting (`[REDACTED]`). A reason's later lines (a
    failing check's output) are indented: none can pass for a line of swarm's own.
    """
    head = f"{task_id}: " if task_id and line.startswith(f"{task_id}: ") else ""
    return printable(head + redact(line[len(head) :])).replace("\n", "\n    ")


def output_gone(stream: IO[str]) -> None:
    """Point *stream*'s file at /dev/null: what is still said goes nowhere, the run goes on.

    A run whose output no one reads any more (`swarm run | head -1`, a closed terminal) was
    killed by the error of its next line, its agents left running unwatched.
    """
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, stream.fileno())
    except (OSError, ValueError):
        pass  # not a file of its own (a test's buffer): nothing is written there anyway
    finally:
        os.close(null)


_NAMED = 10  # files a line names before it counts the rest


def _task_line(kind: str, task_id: str | None, data: Mapping[str, object]) -> str | None:
    """The line of a task's event other than its state (None: not one)."""
    if kind == "worktree_removed":
        return f"{task_id}: worktree removed, branch kept - {data.get('reason', '')}"
    if kind == "worktree_kept":  # one that would have made room for max_disk
        return f"{task_id}: worktree kept, not removed for max_disk - {data.get('reason', '')}"
    if kind == committed_secrets.EVENT:
        return (
            f"{task_id}: {committed_secrets.told(data)}, committed by its agent itself: "
            "`swarm pr` and `swarm merge` refuse its branch while it holds that commit"
        )
    if kind == "checkpoint_push_failed":  # a Ray node's, the first of a streak
        return (
            f"{task_id}: node {data.get('node')} could not push a running checkpoint "
            f"({data.get('reason')}); tried again every checkpoint_interval"
        )
    return None


def _guard_line(kind: str, data: Mapping[str, object]) -> str | None:
    """The line of a guard's event that is not an outside write (None: not one, or not told)."""
    if kind == "guard_error" and data.get("count", 1) == 1:
        # While a scan fails, that part is not watched. Told the first time a job fails
        # for a reason; `swarm status` counts the times it began again.
        return f"guard: {data.get('job')} scan failed: {data.get('reason')}"
    if kind == remotes.EVENT and data.get("refs"):
        return remotes.note_line(cast("list[object]", data["refs"]))
    if kind == UNWATCHED_EVENT:
        paths = [str(p) for p in cast("list[object]", data.get("paths", []))]
        more = len(paths) - _NAMED
        shown = paths_text(paths[:_NAMED]) + (f" and {more} more" if more > 0 else "")
        return (
            f"guard: your checkout changed while no manager watched it: {shown}; kept as it is"
            f" (if you did not make these changes, an agent of this run did before its manager"
            f" was killed: `git apply -R {data.get('patch')}` undoes them)"
        )
    return None


class LiveTable:
    """A rich table of tasks, refreshed from the store while a run goes on."""

    def __init__(self, store: Store, console: Console | None = None) -> None:
        self._store = store
        self._console = console or Console()
        self._run_id: str | None = None
        self._gates = GateReader()  # the gates' events read since the last refresh only
        self._live = Live(console=self._console, refresh_per_second=4, get_renderable=self._table)

    def __call__(self, kind: str, _task_id: str | None, data: Mapping[str, object]) -> None:
        """Note the run id; the table reads everything else from the store."""
        if kind == "run_started":
            self._run_id = str(data["run_id"])

    def _table(self) -> Table:
        title = f"swarm run {self._run_id or ''}"
        if self._run_id is None:
            return rich_table(table(_COLUMNS, [], title=title))
        logs = {a.task_id: a.log_path for a in self._store.attempts(self._run_id)}
        rows = []
        for row in task_status(self._store, self._run_id, gates=self._gates):
            elapsed = f"{row.elapsed_s:.0f}s" if row.elapsed_s is not None else ""
            if row.why:
                detail = row.why
            elif row.alive and row.task_id in logs:
                detail = last_line(Path(logs[row.task_id]))
            else:
                detail = row.after
            shown = one_line(redact(detail), controls=True)  # an agent's line: no escapes
            rows.append([row.task_id, row.state, elapsed, shown[:_DETAIL_CHARS]])
        drawn = rich_table(table(_COLUMNS, rows, title=title))
        now = time.time()
        # Each provider's gate under the table: its concurrency, any wait and why.
        views = self._gates.views(self._store, self._run_id)
        drawn.caption = "\n".join(v.describe(now=now) for v in views) or None
        return drawn

    def __enter__(self) -> Self:
        self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._live.__exit__(exc_type, exc, tb)
        except OSError:  # its last drawing, on a terminal that closed
            output_gone(self._console.file)
