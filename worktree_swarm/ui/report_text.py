"""`swarm report` on a terminal, and the phrases the HTML report shares with it."""

from __future__ import annotations

from worktree_swarm.core.text import printable
from worktree_swarm.core.units import format_duration, format_size
from worktree_swarm.core.words import plural
from worktree_swarm.guard.model import fate
from worktree_swarm.report.report_model import RunReport, Totals
from worktree_swarm.ui.status_text import failure_when, remote_refs_line
from worktree_swarm.ui.tables import Column, render, table

_COLUMNS = (
    Column(header="task"),
    Column(header="outcome", states=True),
    Column(header="att", align="right"),
    Column(header="wall", align="right"),
    Column(header="cost", align="right"),
    Column(header="tokens in/out", align="right"),
    Column(header="disk", align="right"),
    Column(header="diff"),
    Column(header="merge/PR"),
    Column(header="agents"),
)


def report_text(report: RunReport, *, styled: bool | None = None) -> str:
    """The terminal report: one row per task, then the run totals."""
    rows = []
    for t in report.tasks:
        diff = f"{t.files_changed}f +{t.insertions} -{t.deletions}" if t.files_changed else "-"
        tokens = "-" if t.tokens_in is None else f"{t.tokens_in}/{t.tokens_out or 0}"
        merge = (
            ", ".join(
                part
                for part in (
                    t.merge_result or "",
                    f"#{t.pr_number}" if t.pr_number else "",
                    "refused: a secret its agent committed" if t.secret_commit else "",
                )
                if part
            )
            or "-"
        )
        rows.append(
            [
                t.task_id,
                t.state,
                str(len(t.attempts)),
                format_duration(t.wall_s),
                money(t.cost_usd),
                tokens,
                format_size(t.disk_actual),
                diff,
                merge,
                ">".join(dict.fromkeys(a.agent for a in t.attempts if a.agent)),
            ]
        )
    s = report.totals
    states = ", ".join(f"{n} {name}" for name, n in s.states.items())
    duration = format_duration
    head = f"run {report.run_id} ({report.status}) base {report.base_commit[:10]}"
    lines = [
        "",
        f"tasks      {s.tasks}: {states}",
        f"makespan   {duration(s.makespan_s)}{'  (live)' if report.live else ''}",
        f"agent time {duration(s.agent_time_s)} (sum over attempts)",
        (
            f"speedup    {ratio(s.achieved_speedup)} achieved, {ratio(s.ideal_speedup)} ideal "
            f"for this DAG at --jobs {report.jobs} (ideal makespan {duration(s.ideal_makespan_s)})"
        ),
        (
            f"waits      {duration(s.rate_limit_wait_s)} on rate limits; "
            f"{plural(s.resumes, 'resume')} after one, "
            f"{plural(s.retries, 'retry', 'retries')} after other ends (repairs...)"
        ),
        f"cost       {money(s.total_cost_usd)} total, {money(s.cost_per_done_usd)} per done task",
        f"overhead   {overhead_text(s)}",
        f"disk       {disk_text(report)}",
        *(f"provider   {v.describe(now=report.end)}" for v in report.providers),
        *outside_writes_text(report),
        *guard_errors_text(report),
        *(
            ["", remote_refs_line(report.remote_refs_put_back)]
            if report.remote_refs_put_back
            else []
        ),
    ]
    return render(f"{head}, jobs {report.jobs}", table(_COLUMNS, rows), *lines, styled=styled)


def guard_errors_text(report: RunReport) -> list[str]:
    """One line per job and reason a guard scan failed for: meanwhile that part went unwatched."""
    if not report.guard_errors:
        return []
    lines = ["", f"guard scans that failed ({len(report.guard_errors)}):"]
    lines += [
        printable(f"  {e.get('job')}: {e.get('reason')}{failure_when(e)}", keep="")
        for e in report.guard_errors
    ]  # a reason may quote a file's name from the repository
    return lines


def outside_writes_text(report: RunReport) -> list[str]:
    """One line per write an agent made outside its worktree (none: no lines)."""
    if not report.outside_writes:
        return []
    lines = ["", f"outside writes ({len(report.outside_writes)}):"]
    for event in report.outside_writes:
        suspects = event.get("suspects") or []
        who = ", ".join(str(s) for s in suspects) if isinstance(suspects, list) else "?"
        patch = f", patch {event['patch']}" if event.get("patch") else ""
        # Its names (a branch, a path it moved a worktree to) are the repository's: printable.
        lines.append(
            printable(f"  by {who}: {event.get('summary')} ({fate(event)}{patch})", keep="")
        )
    return lines


def disk_text(report: RunReport) -> str:
    """The disk line: what the worktrees used when their tasks ended, how many are gone."""
    s = report.totals
    measured = sum(t.disk_actual is not None for t in report.tasks)
    text = (
        f"{format_size(s.disk_actual)} ({format_size(s.disk_apparent)} apparent) "
        f"in {plural(measured, 'worktree')}"
    )
    if s.worktrees_removed:
        text += f", {s.worktrees_removed} removed since"
    if report.max_disk is not None:
        text += f"; max_disk {format_size(report.max_disk)}"
    return text


def overhead_text(totals: Totals) -> str:
    """The token-overhead line, or why it is not available."""
    if totals.token_overhead_tokens is None or totals.token_overhead_pct is None:
        return "n/a (agents reported no cache reads)"
    return (
        f"{totals.token_overhead_tokens} tokens ({totals.token_overhead_pct:.1f}% of input) "
        "of shared context re-read by separate agents"
    )


def money(value: float | None) -> str:
    """``-`` when not reported, else dollars."""
    return "-" if value is None else f"${value:.2f}"


def ratio(value: float | None) -> str:
    """``-`` or ``2.31x``."""
    return "-" if value is None else f"{value:.2f}x"
