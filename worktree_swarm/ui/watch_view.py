"""What `swarm watch` draws: the task table's cells, the details line, the panes' text and log.

The log pane's widget and which file it follows are here too. Text that comes from agents or
the store (reasons, paths, a diff) is made one plain, printable, redacted string: its escape
sequences dropped, never read as markup.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from rich.text import Text
from textual import events
from textual.geometry import Size
from textual.widgets import Log

from worktree_swarm.core.models import TaskState
from worktree_swarm.core.text import one_line, printable, without_escapes
from worktree_swarm.core.units import format_duration as duration
from worktree_swarm.infra.logtail import Follower
from worktree_swarm.infra.redact import redact
from worktree_swarm.report.status import TaskStatus

PANE_LINES = 20_000  # a diff or prediction longer than that is cut: the screen stays live
COLUMNS = ("", "task", "state", "agent", "att", "elapsed", "cost", "diff", "why / after")
_STYLE = {
    "done": "green",
    "failed": "red",
    "timed_out": "red",
    "blocked": "yellow",
    "stopped": "yellow",
    "no_changes": "yellow",
    "running": "cyan",
    "checking": "cyan",
    "rate_limited": "magenta",
}
ID_CELL = 32  # characters of a task id the table shows


def cells(row: TaskStatus, *, marked: bool, managed: bool) -> tuple[Text, ...]:
    """One table row: every cell a Text, so `[agent]` in a reason shows as typed.

    *managed*: the run's manager is alive (it records what its agents did).
    """
    diffstat = (
        f"{row.files_changed}f +{row.insertions} -{row.deletions}" if row.files_changed else "-"
    )
    ended = "" if managed else _ended_unrecorded(row)
    why = "; ".join(part for part in (ended, row.why, row.after) if part)
    return (
        Text("*" if marked else ""),
        # A long id would push the state off a narrow screen; the details line has it whole.
        Text(one_line(row.task_id, limit=ID_CELL)),
        Text(row.state, style=_STYLE.get(row.state, "")),
        Text(row.agent),
        Text(str(row.attempt)),
        Text(duration(row.elapsed_s) if row.elapsed_s is not None else "-"),
        Text(f"${row.cost_usd:.2f}" if row.cost_usd is not None else "-"),
        Text(diffstat),
        plain(why[:80]),
    )


def _ended_unrecorded(row: TaskStatus) -> str:
    """That a task of a run whose manager is gone still reads running, its agent ended.

    A manager that is gone (killed) never records that, and the row read "running" for good
    (`swarm status` says "alive no"). Not asked while a manager lives: it is at work after
    its agent ended (the checkpoint, the guard's look), or about to start the next attempt.
    """
    if row.state != "running" or row.alive or not row.pid or row.pid <= 0:  # Ray: no local pid
        return ""
    return f"its agent (pid {row.pid}) has ended"


LOG_LINES = 5000  # the log pane's last lines


class TailLog(Log):
    """Textual's log, its view at its last line also once its oldest lines are dropped.

    Textual 8 sizes the view before it drops lines past ``max_lines``: past 5,000 lines the
    view was scrolled beyond them, and the pane stayed blank.
    """

    def write(self, data: str, scroll_end: bool | None = None) -> Self:
        """Append *data*; the view follows the end as Textual's does (``auto_scroll``)."""
        follow = self.auto_scroll if scroll_end is None else scroll_end
        super().write(data, scroll_end=False)
        self.virtual_size = Size(self.virtual_size.width, self.line_count)
        if follow:
            self.scroll_end(animate=False, immediate=True, x_axis=False)
        return self

    def show(self, read: LogRead) -> None:
        """What a refresh read of the log: the pane cleared first, or added to."""
        if read.clear:
            self.clear()
        if read.line is not None:
            self.write_line(read.line)
        if read.text:
            self.write(read.text)

    def on_resize(self, _event: events.Resize) -> None:
        """A pane that follows the end still ends at the log's last line once it shrank.

        The details line above it grows to two lines when a merge or a long path lengthens it.
        """
        if self.auto_scroll:
            self.call_after_refresh(self.scroll_end, animate=False, x_axis=False)


def plain(text: str) -> Text:
    """*text* from outside (an agent's words, a rate limit's message) as one printable line.

    Rich drops a BEL but not an ESC: an escape sequence in a wait's reason reached the
    terminal (OSC 52 writes the clipboard).
    """
    return Text(printable(redact(without_escapes(text)), keep=""))


def gone_note(row: TaskStatus) -> str:
    """Why the task's worktree is not its own any more ("" while it is)."""
    if row.taken_by:
        return f" (run {row.taken_by}'s now: it reused the task id)"
    return "" if row.worktree_present else " (removed)"


def worktree_note(row: TaskStatus, branch_there: Callable[[], bool]) -> str:
    """What the `w` key says beside the worktree's path: where the task's work is now.

    *branch_there*: whether its branch exists, asked only of a removed worktree's task (a
    git process when the key is pressed, not one per row at every refresh).
    """
    if row.taken_by or row.worktree_present:
        return gone_note(row)
    if not row.branch_made:
        return " (not made: the task never started)"
    if branch_there():
        return " (removed; the branch keeps the work)"
    merged = f"; merged into {row.merge_target}" if row.merge_result == "merged" else ""
    # Deleted by `swarm clean` (--force for an unmerged one): what `swarm diff` says then.
    return (
        f" (removed, and its branch {row.branch} deleted: `swarm diff {row.task_id}` says"
        f' "no branch {row.branch}"{merged})'
    )


def details(row: TaskStatus) -> Text:
    """The line under the table: branch, worktree, merge and PR facts of the selected task."""
    if not row.branch_made:  # pending, or blocked before it started
        parts = [f"{row.branch}: not made"]
    else:
        parts = [row.branch, f"{row.worktree}{gone_note(row)}"]
    if row.merge_result:
        parts.append(row.merge_detail or f"{row.merge_result} ({row.merge_target})")
    if row.pr_number is not None:
        parts.append(f"PR #{row.pr_number} {row.pr_state or 'open'} {row.pr_url or ''}".strip())
    return plain("  ·  ".join(parts))


LOG_TAIL_BYTES = 256 * 1024  # the log pane starts at a log's last bytes, and reads that a tick


@dataclass(frozen=True, slots=True, kw_only=True)
class LogRead:
    """What one refresh read of the selected task's log: the pane cleared or not, then text."""

    clear: bool
    text: str = ""
    line: str | None = None  # a line said in its place: no agent has started


@dataclass(slots=True)
class Follow:
    """Which log file the log pane shows, and what reads it."""

    task_id: str | None = None
    path: Path | None = None
    follower: Follower | None = None

    def read_on(
        self, task_id: str | None, path: Path | None, *, ended: bool
    ) -> tuple[Follow, LogRead]:
        """What follows *task_id*'s log at *path* now (self, or a new Follow), and what it read.

        *ended*: its attempt has ended (its log is rewritten redacted then).
        """
        follow, clear = self, False
        if (task_id, path) != (self.task_id, self.path):
            if path is None or task_id is None:
                said = "(no agent started yet)" if task_id else ""
                return Follow(task_id=task_id), LogRead(clear=True, line=said)
            follower = Follower(path, limit=LOG_TAIL_BYTES)
            follow, clear = Follow(task_id=task_id, path=path, follower=follower), True
        if follow.follower is None:
            return follow, LogRead(clear=clear)
        restart, text = follow.follower.read(ended=ended)  # at most LOG_TAIL_BYTES a tick
        return follow, LogRead(clear=clear or restart, text=text)


def shown(text: str, rest: str) -> str:
    """*text* for a pane: redacted, printable, cut at ``PANE_LINES`` lines (*rest*: the rest)."""
    lines = text.splitlines()
    if len(lines) > PANE_LINES:
        more = len(lines) - PANE_LINES
        text = "\n".join(lines[:PANE_LINES]) + f"\n... {more} more lines: {rest}\n"
    return printable(redact(without_escapes(text)))


def no_changes(row: TaskStatus | None) -> str:
    """What the diff pane says of a task whose branch holds no changes (*row*: its status).

    "yet" while it is in play; a state this swarm does not know is named as it is.
    """
    if row is None:
        return "no changes yet"
    try:
        active = TaskState(row.state).is_active
    except ValueError:
        return f"no changes ({row.state})"
    return "no changes yet" if active else "no changes"
