"""`swarm status` and the summary after `swarm run`, as tables."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from worktree_swarm.core.text import printable
from worktree_swarm.core.units import format_count, format_size
from worktree_swarm.core.words import plural
from worktree_swarm.guard import remotes
from worktree_swarm.report.status import TaskStatus
from worktree_swarm.run.gate_model import GateView
from worktree_swarm.ui.tables import Column, render, table

_REASON_CHARS = 80


_SUMMARY_COLUMNS = (
    Column(header="task"),
    Column(header="state", states=True),
    Column(header="diff"),
    Column(header="branch"),
    Column(header="reason"),
)


def run_summary(run_id: str, rows: list[TaskStatus], *, styled: bool | None = None) -> str:
    """After a run: one row per task, then how many ended in each state."""
    cells = [
        [
            r.task_id,
            r.state,
            f"+{r.insertions} -{r.deletions}" if r.files_changed else "",
            r.branch if r.branch_made else "-",
            _why(r),
        ]
        for r in rows
    ]
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.state] = counts.get(row.state, 0) + 1
    total = f"run {run_id}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    return render(table(_SUMMARY_COLUMNS, cells), total, styled=styled)


_STATUS_COLUMNS = (
    Column(header="task"),
    Column(header="state", states=True),
    Column(header="agent"),
    Column(header="att", align="right"),
    Column(header="pid", align="right"),
    Column(header="alive"),
    Column(header="elapsed", align="right"),
    Column(header="cost", align="right"),
    Column(header="tokens", align="right"),
    Column(header="disk", align="right"),
    Column(header="diff"),
    Column(header="branch"),
    Column(header="worktree"),
    Column(header="reason"),
)


def status_text(
    run_id: str,
    rows: list[TaskStatus],
    totals: dict[str, float | int | None],
    *,
    gates: Sequence[GateView] = (),
    notes: Sequence[str] = (),
    styled: bool | None = None,
) -> str:
    """`swarm status`: the run, one row per task, then attempts, money, tokens and disk."""
    cells = [
        [
            r.task_id,
            r.state,
            r.agent,
            str(r.attempt),
            f"@{r.node}" if r.node else str(r.pid or "-"),  # a cluster task: its node
            "yes" if r.alive else "no",
            f"{r.elapsed_s:.1f}s" if r.elapsed_s is not None else "-",
            f"${r.cost_usd:.2f}" if r.cost_usd is not None else "-",
            _tokens_cell(r),
            _disk_cell(r),
            f"{plural(r.files_changed, 'file')} +{r.insertions} -{r.deletions}"
            if r.files_changed
            else "-",
            r.branch if r.branch_made else "-",
            r.worktree if r.worktree_present else "-",
            _why(r)[:_REASON_CHARS],
        ]
        for r in rows
    ]
    present = sum(r.worktree_present for r in rows)
    removed = sum(not r.worktree_present and r.disk_actual is not None and not r.node for r in rows)
    # As in the rows: `-` where no agent reported any (plain commands report neither).
    spent, read, wrote = totals["cost_usd"], totals["tokens_in"], totals["tokens_out"]
    cost = "cost -" if spent is None else f"${spent:.2f}"
    tokens = (
        "tokens -" if read is None and wrote is None else f"{read or 0} tokens in, {wrote or 0} out"
    )
    money_line = f"total: {plural(int(totals['attempts'] or 0), 'attempt')}, {cost}, {tokens}"
    disk_line = (
        f"disk: {format_size(int(totals['disk_actual'] or 0))} used "
        f"({format_size(int(totals['disk_apparent'] or 0))} apparent) by "
        f"{plural(present, 'worktree')}" + (f", {removed} removed" if removed else "")
    )
    now = time.time()
    gate_lines = [gate.describe(now=now) for gate in gates]
    return render(
        f"run {run_id}" + "".join(f"  {note}" for note in notes),
        table(_STATUS_COLUMNS, cells),
        money_line,
        *gate_lines,
        disk_line,
        styled=styled,
    )


def guard_error_line(failed: Mapping[str, object]) -> str:
    """``guard: JOB scan failed: REASON (N times since HH:MM:SS)`` for a grouped scan failure."""
    # A reason may quote a file's name from the repository: no escape, no bidi override.
    reason = printable(str(failed.get("reason")), keep="")
    return f"guard: {failed.get('job')} scan failed: {reason}{failure_when(failed)}"


def remote_refs_line(refs: Sequence[str]) -> str:
    """The remote-tracking refs the guard put back (no one's fault: an agent's fetch, maybe)."""
    return printable(remotes.note_line(refs), keep="")  # a ref's name is the repository's


def failure_when(failed: Mapping[str, object]) -> str:
    """`` (since HH:MM:SS)``, with how many times it began when more than once."""
    ts = failed.get("ts")
    if not isinstance(ts, int | float):
        return ""
    count = failed.get("count")
    times = f"{count} times " if isinstance(count, int) and count > 1 else ""
    return f" ({times}since {time.strftime('%H:%M:%S', time.localtime(ts))})"


def _tokens_cell(r: TaskStatus) -> str:
    """Tokens in/out, as the money line counts them (``-`` when the agent reports none)."""
    if r.tokens_in is None and r.tokens_out is None:
        return "-"
    return f"{format_count(r.tokens_in or 0)}/{format_count(r.tokens_out or 0)}"


def _disk_cell(row: TaskStatus) -> str:
    if row.node:  # a clone on a cluster node: as last measured there (gone once it ended)
        return format_size(row.disk_actual)
    if not row.worktree_present:
        return "removed" if row.disk_actual is not None else "-"
    return format_size(row.disk_actual)


def _why(row: TaskStatus) -> str:
    """What a task waits for, why it ended, and what happened to its branch since."""
    return "; ".join(_first_line(part) for part in (row.why, row.after) if part)


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else ""
