"""How a run shows itself: a live rich table on a terminal, plain lines or JSON otherwise."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self, TextIO

from rich.console import Console
from rich.live import Live
from rich.table import Table

from worktree_swarm.redact import redact, redact_data
from worktree_swarm.status import task_status
from worktree_swarm.store import Store
from worktree_swarm.supervisor import last_line

_STYLE = {
    "done": "green",
    "failed": "red",
    "timed_out": "red",
    "blocked": "yellow",
    "stopped": "yellow",
    "no_changes": "yellow",
    "running": "cyan",
    "checking": "cyan",
}


class PlainObserver:
    """One line per state change (non-terminals), or one JSON object per event."""

    def __init__(self, out: TextIO | None = None, *, as_json: bool = False) -> None:
        self._out = out or sys.stdout
        self._json = as_json
        self._lock = threading.Lock()

    def __call__(self, kind: str, task_id: str | None, data: Mapping[str, object]) -> None:
        """Print one event."""
        if self._json:
            line = json.dumps(
                redact_data(
                    {"ts": round(time.time(), 3), "event": kind, "task_id": task_id, **data}
                )
            )
        elif kind == "state":
            reason = f" - {data['reason']}" if data.get("reason") else ""
            line = f"{task_id}: {data['state']}{reason}"
        elif kind == "worktree_removed":
            line = f"{task_id}: worktree removed, branch kept - {data.get('reason', '')}"
        elif kind in {"run_started", "run_finished"}:
            line = f"run {data.get('run_id') or data.get('status')}: {kind.removeprefix('run_')}"
        else:
            return
        with self._lock:
            print(line if self._json else redact(line), file=self._out, flush=True)


class LiveTable:
    """A rich table of tasks, refreshed from the store while a run goes on."""

    def __init__(self, store: Store, console: Console | None = None) -> None:
        self._store = store
        self._console = console or Console()
        self._run_id: str | None = None
        self._live = Live(console=self._console, refresh_per_second=4, get_renderable=self._table)

    def __call__(self, kind: str, _task_id: str | None, data: Mapping[str, object]) -> None:
        """Note the run id; the table reads everything else from the store."""
        if kind == "run_started":
            self._run_id = str(data["run_id"])

    def _table(self) -> Table:
        table = Table(title=f"swarm run {self._run_id or ''}", expand=False)
        for column in ("task", "state", "elapsed", "last output / reason"):
            table.add_column(column)
        if self._run_id is None:
            return table
        logs = {a.task_id: a.log_path for a in self._store.attempts(self._run_id)}
        for row in task_status(self._store, self._run_id):
            elapsed = f"{row.elapsed_s:.0f}s" if row.elapsed_s is not None else ""
            if row.reason:
                detail = row.reason.splitlines()[0]
            elif row.alive and row.task_id in logs:
                detail = last_line(Path(logs[row.task_id]))
            else:
                detail = ""
            style = _STYLE.get(row.state, "")
            state = f"[{style}]{row.state}[/]" if style else row.state
            table.add_row(row.task_id, state, elapsed, redact(detail)[:70])
        return table

    def __enter__(self) -> Self:
        self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._live.__exit__(exc_type, exc, tb)
