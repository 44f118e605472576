"""`swarm watch`: a full-screen terminal view of a run, read from the state store.

The screen is a reader: it polls the store (as `swarm status` does) off its own thread, one
read at a time, follows the selected task's newest log file, and acts through watch_actions
(the same library calls as `swarm stop`, `swarm pr`, `swarm merge`), so it never competes
with the run's manager. Everything it draws from agents (log lines, reasons, file names) is
plain text, never markup.
"""

from __future__ import annotations

import functools
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.css.query import NoMatches
from textual.widgets import DataTable, Footer, Header, Log, Static, TabbedContent, TabPane
from textual.worker import Worker, WorkerFailed, get_current_worker

from worktree_swarm.core.models import TaskState
from worktree_swarm.core.text import printable, without_escapes
from worktree_swarm.git import branches as git_branches
from worktree_swarm.git import repo as git
from worktree_swarm.infra.redact import redact
from worktree_swarm.infra.store import Store
from worktree_swarm.merge import diff
from worktree_swarm.report import run_info, status
from worktree_swarm.report.status import TaskStatus
from worktree_swarm.ui import watch_actions
from worktree_swarm.ui.merge_text import merge_prediction_lines
from worktree_swarm.ui.watch_store import ShownStore
from worktree_swarm.ui.watch_view import (
    COLUMNS,
    LOG_LINES,
    Follow,
    LogRead,
    TailLog,
    cells,
    details,
    no_changes,
    plain,
    shown,
    worktree_note,
)

REFRESH_S = 1.0
RETRY_ASKED_SECONDS = 30.0
BUSY = "state database busy, waiting for it"  # the header's, while a read waits for a lock
_Read = tuple[list[TaskStatus], run_info.ManagerStatus, Path | None, bool]


class WatchApp(App[None]):
    """The run's task table, the selected task's live log, its diff and predicted conflicts."""

    CSS_PATH = "watch.tcss"
    TITLE = "swarm watch"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("s", "stop", "Stop"),
        Binding("r", "retry", "Retry"),
        Binding("p", "pull_request", "PR"),
        Binding("space", "mark", "Mark"),
        Binding("m", "merge", "Merge"),
        Binding("w", "worktree", "Path"),
        Binding("l", "pane('log')", "Log"),
        Binding("d", "pane('diff')", "Diff"),
        Binding("c", "pane('conflicts')", "Conflicts"),
        Binding("q", "quit", "Quit"),
        # As in any terminal program (Textual's own asks for ctrl+q): the same as `q`. Not
        # ahead of the screen's: with text selected, ctrl+c copies it.
        Binding("ctrl+c", "quit", "Quit", show=False),
    ]

    def __init__(
        self, repo: git.Repo, store: Store, run_id: str, *, checkout: Path | None = None
    ) -> None:
        super().__init__()
        self.repo = repo
        self.checkout = checkout  # yours that swarm runs in: a merge builds on its HEAD
        # The one read now: a store written back is read once it can be (see ShownStore).
        self._stores = ShownStore(repo, store, run_id, self._say_read)
        self.run_id = run_id
        self.rows: dict[str, TaskStatus] = {}
        self.marked: set[str] = set()
        self.messages: list[str] = []  # every action's result, newest last (tests read it)
        self._follow = Follow()
        self._reading: Worker[None] | None = None  # the refresh under way, one at a time
        self._again = False  # one more once it has ended: the selection changed meanwhile
        self._gates = status.GateReader()  # read anew from a store written back
        self._busy: list[str] = []  # the actions under way, by name
        self._quit_when_done = False
        self._quit_asked = 0  # messages said before quitting was asked, while one was under way
        self._managed = True  # the run's manager was alive at the last refresh
        # task -> its attempt when `r` asked for a retry, and until when a second `r` waits
        self._retried: dict[str, tuple[int, float]] = {}
        self.crashed: Exception | None = None  # what ended the screen, raised by watch()

    def compose(self) -> ComposeResult:
        """Header, task table, details line, the panes, key bar."""
        yield Header()
        yield DataTable(id="tasks", cursor_type="row", zebra_stripes=True)
        yield Static(id="details")
        with TabbedContent(id="panes", initial="log"):
            with TabPane("Log", id="log"):
                yield TailLog(id="log-view", max_lines=LOG_LINES)
            with TabPane("Diff", id="diff"):
                yield Log(id="diff-view")
            with TabPane("Conflicts", id="conflicts"):
                yield Log(id="conflicts-view")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        """Fill the table and start polling the store."""
        table = self.query_one("#tasks", DataTable)
        for column in COLUMNS:
            table.add_column(column, key=column or "mark")
        self.refresh_rows()
        self.set_interval(REFRESH_S, self._tick)

    # -- reading ---------------------------------------------------------------------------

    @property
    def store(self) -> Store:
        """The store read now."""
        return self._stores.store

    @property
    def selected(self) -> str | None:
        """The task under the cursor."""
        table = self.query_one("#tasks", DataTable)
        if not self.rows or table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        return None if key.value is None else str(key.value)

    def _tick(self) -> None:
        """The clock's refresh; while a read waits for a lock, the header says so instead.

        Only a read that met the lock: a read that is only slow (a big store) is no wait.
        """
        if self._reading is None:
            self.refresh_rows()
        elif self._stores.waiting and not self.sub_title.endswith(BUSY):
            self.sub_title = f"{self.sub_title} · {BUSY}"

    def refresh_rows(self) -> Worker[None] | None:
        """Re-read the store off the screen's thread: rows, details line, new log output.

        The read of a store another process locks waits for it (30 s) while the keys stay
        live. None while a read is under way: one more follows it.
        """
        try:
            self.query_one("#tasks", DataTable)
        except NoMatches:  # a timer that fired while the screen closed: nothing to refresh
            return None
        if self._reading is not None:
            self._again = True
            return None
        read = functools.partial(self._refresh, self.selected, self._follow)
        self._reading = self.run_worker(read, thread=True, group="refresh")
        return self._reading

    def _refresh(self, task_id: str | None, follow: Follow) -> None:
        """Read the store and *task_id*'s log on from *follow* (a worker's thread)."""
        worker = get_current_worker()
        self._stores.look()
        read = self._stores.read(
            functools.partial(self._read, task_id=task_id, follow=follow),
            closing=lambda: worker.is_cancelled,
        )
        log = None if read is None else follow.read_on(task_id, read[2], ended=read[3])
        if not worker.is_cancelled:  # the screen closing has no table to fill
            self.call_from_thread(self._refreshed, read, task_id, follow, log)

    def _read(self, store: Store, *, task_id: str | None, follow: Follow) -> _Read:
        # With the repository: a merge undone on its target since reads as such, as in status.
        read = status.task_status(store, self.run_id, repo=self.repo, gates=self._gates)
        # As `swarm status` says beside the run id: a manager that is gone, a paused one.
        manager = run_info.manager_status(self.repo, store, self.run_id)
        attempts = store.attempts(self.run_id, task_id) if task_id else []
        path = Path(attempts[-1].log_path) if attempts else None
        if task_id is not None and path is not None and path != follow.path:
            # While the agent runs its log is raw: its task's secrets are known to the redactor.
            run_info.know_task_secrets(self.repo, store, self.run_id, task_id)
        return read, manager, path, bool(attempts) and attempts[-1].ended_at is not None

    def _refreshed(
        self,
        read: _Read | None,
        task_id: str | None,
        follow: Follow,
        log: tuple[Follow, LogRead] | None,
    ) -> None:
        """Show what a refresh read (None: the store locked past its wait, the rows stay)."""
        self._reading = None
        try:
            table = self.query_one("#tasks", DataTable)
        except NoMatches:  # closed meanwhile
            return
        if read is not None:
            self._show_rows(table, read)
        if log is not None and task_id == self.selected and follow is self._follow:
            self._follow = log[0]
            self.query_one("#log-view", TailLog).show(log[1])
        elif log is not None:  # read for a task selected before: the one selected now's next
            self._again = True
        if self._again:
            self._again = False
            self.refresh_rows()

    def _show_rows(self, table: DataTable[Text], read: _Read) -> None:
        rows = {r.task_id: r for r in read[0]}
        manager = read[1]
        # A pause's reason is an error's text (a file name in it): no escape of it is sent.
        self.sub_title = plain(" · ".join([f"run {self.run_id}", *manager.lines()])).plain
        managed, self._managed = self._managed, manager.manager_running
        if list(rows) != list(self.rows):
            keep = self.selected
            table.clear()
            for task_id, row in rows.items():
                table.add_row(*self._cells(task_id, row), key=task_id)
            if keep in rows:
                table.move_cursor(row=list(rows).index(keep))
        else:
            for task_id, row in rows.items():
                # A manager that died since: a row unchanged may read otherwise now.
                if row != self.rows[task_id] or managed != self._managed:
                    self._redraw(task_id, row)
        self.rows = rows
        self._show_details()

    def _say_read(self, said: str) -> None:
        """What the refresh's thread has to say of the store, said on the screen."""
        if not get_current_worker().is_cancelled:
            self.call_from_thread(self._say, said, ok=False)

    def _redraw(self, task_id: str, row: TaskStatus) -> None:
        table = self.query_one("#tasks", DataTable)
        for column, value in zip(COLUMNS, self._cells(task_id, row), strict=True):
            # Widened to fit: a state, cost or reason longer than the first one shown stays whole.
            table.update_cell(task_id, column or "mark", value, update_width=True)

    def _cells(self, task_id: str, row: TaskStatus) -> tuple[Text, ...]:
        return cells(row, marked=task_id in self.marked, managed=self._managed)

    def _show_details(self) -> None:
        row = self.rows.get(self.selected or "")
        self.query_one("#details", Static).update(details(row) if row else Text(""))

    def on_data_table_row_highlighted(self, _event: DataTable.RowHighlighted) -> None:
        """A new selection: its details, log, and the open pane."""
        self._show_details()
        if self.selected != self._follow.task_id:  # its log once the store is read
            self.query_one("#log-view", Log).clear()
            if self._follow.task_id is not None:  # what a read under way follows is no more
                self._follow = Follow()
            if self._reading is None:  # else the read under way is followed by this one's
                self.refresh_rows()
        # The diff is the task's own; the conflicts pane predicts the whole run: not again.
        if self.query_one("#panes", TabbedContent).active == "diff":
            self.action_pane("diff")

    # -- panes -----------------------------------------------------------------------------

    def action_pane(self, pane: str) -> None:
        """Show a pane (diff and conflicts are computed when shown)."""
        self.query_one("#panes", TabbedContent).active = pane
        if pane == "diff" and self.selected:
            self._load_diff(self.selected)
        elif pane == "conflicts":
            self._load_conflicts()

    @work(thread=True, exclusive=True, group="diff")
    def _load_diff(self, task_id: str) -> None:
        try:
            found = diff.task_diffs(self.repo, self.store, self.run_id, [task_id])
            text = diff.patch(self.repo, found[0]) if found else ""
            row = self.rows.get(task_id)
            if found and found[0].files_changed is None and (row is None or row.branch_made):
                # Its branch deleted (`swarm clean --force`), another run's, or with no base:
                # what `swarm diff` says of it, not "no changes".
                text = diff.format_header(found[0])
            text = shown(text, f"`swarm diff {task_id}` prints all of it")
        except Exception as exc:  # noqa: BLE001 - any failure is said in the pane
            text = shown(f"{task_id}: its diff cannot be shown: {exc}", "")
        text = text or f"{task_id}: {no_changes(self.rows.get(task_id))}"
        self.call_from_thread(self._fill, "#diff-view", text, task_id=task_id)

    @work(thread=True, exclusive=True, group="conflicts")
    def _load_conflicts(self) -> None:
        from worktree_swarm.merge import merge  # noqa: PLC0415 - kept at this anchor

        try:
            report = merge.merge(
                self.repo, self.store, self.run_id, dry_run=True, checkout=self.checkout
            )
            text = shown("\n".join(merge_prediction_lines(report)), "`swarm merge --dry-run`")
        except Exception as exc:  # noqa: BLE001 - any failure is said in the pane
            text = shown(f"no prediction: {exc}", "")
        self.call_from_thread(self._fill, "#conflicts-view", text)

    def _fill(self, selector: str, text: str, *, task_id: str | None = None) -> None:
        """Show *text* in the pane; a task's, only while that task is the one selected.

        A thread cannot be stopped: a slow diff of a task selected before would overwrite
        the pane of the task selected since, unnamed.
        """
        if task_id is not None and task_id != self.selected:
            return
        view = self.query_one(selector, Log)
        view.clear()
        view.write(text)

    def _fatal_error(self) -> None:
        """End the screen after an error of swarm's own, without Textual's traceback.

        Textual prints one with every local variable's value (a task's ``env``, its secret
        values in it): the error is raised by :func:`watch` instead, as any command's is.
        """
        self.bell()
        self._close_messages_no_wait()

    def _handle_exception(self, error: Exception) -> None:
        # A refresh's thread failed: its own error, as if raised on the screen's thread.
        inner = error.error if isinstance(error, WorkerFailed) else error
        self.crashed = self.crashed or (inner if isinstance(inner, Exception) else error)
        super()._handle_exception(error)

    # -- actions ---------------------------------------------------------------------------

    def action_mark(self) -> None:
        """Mark or unmark the selected task for a merge."""
        task_id = self.selected
        if task_id is None:
            return
        self.marked ^= {task_id}
        self._redraw(task_id, self.rows[task_id])

    def action_worktree(self) -> None:
        """Show the selected task's worktree path and copy it (OSC 52 reaches SSH clients)."""
        row = self.rows.get(self.selected or "")
        if row is None:
            return
        self.copy_to_clipboard(row.worktree)
        note = worktree_note(row, lambda: git_branches.branch_exists(self.repo, row.branch))
        self._say(f"worktree {row.worktree}{note} (copied)", ok=True)

    def action_stop(self) -> None:
        """Stop the selected task's agent."""
        self._act("stop", watch_actions.stop)

    def action_retry(self) -> None:
        """Run the selected (finished, not done) task again; once until its new attempt shows.

        A second `r` before the detached retry's manager has its lock (or after a quick
        attempt has ended) would retry the task again.
        """
        task_id = self.selected
        row = self.rows.get(task_id) if task_id is not None else None
        if task_id is None or row is None:
            return
        asked = self._retried.get(task_id)
        if asked is not None and asked[0] == row.attempt and time.monotonic() < asked[1]:
            self._say(f"{task_id}: its retry is asked for; it shows here once it starts", ok=False)
            return
        # Until its new attempt shows, or a while: the retry started may refuse or die.
        self._retried[task_id] = (row.attempt, time.monotonic() + RETRY_ASKED_SECONDS)

        def retry(
            repo: git.Repo, store: Store, run_id: str, task: str
        ) -> watch_actions.ActionResult:
            result = watch_actions.ActionResult(ok=False, message="")
            try:
                result = watch_actions.retry(repo, store, run_id, task)
                return result
            finally:
                if not result.ok:  # refused or failed: `r` asks again
                    self.call_from_thread(lambda: self._retried.pop(task, None))

        self._act("retry", retry)

    def action_pull_request(self) -> None:
        """Open or update the selected done task's pull request."""
        self._act("pr", functools.partial(watch_actions.pull_request, checkout=self.checkout))

    def action_merge(self) -> None:
        """Merge the marked tasks (or the selected one) into the integration branch."""
        row = self.rows.get(self.selected) if self.selected and not self.marked else None
        if row is not None and row.state != TaskState.DONE.value:  # one key, no question asked
            self._say(
                f"{row.task_id} is {row.state}: `m` merges a done task; mark it (space) to "
                "merge it anyway",
                ok=False,
            )
            return
        chosen = sorted(self.marked) or ([self.selected] if self.selected else [])
        taken, self.marked = self.marked, set()  # the next `m` merges what is chosen then
        for task_id in taken & set(self.rows):
            self._redraw(task_id, self.rows[task_id])
        if chosen:
            self._run_action(
                "merge",
                lambda store: watch_actions.merge(
                    self.repo, store, self.run_id, chosen, checkout=self.checkout
                ),
            )

    def _act(
        self, name: str, fn: Callable[[git.Repo, Store, str, str], watch_actions.ActionResult]
    ) -> None:
        task_id = self.selected
        if task_id is not None:
            self._run_action(name, lambda store: fn(self.repo, store, self.run_id, task_id))

    @work(thread=True, group="actions")
    def _run_action(self, name: str, call: Callable[[Store], watch_actions.ActionResult]) -> None:
        """Run *call* with a store of its own.

        While it waits to write (another process writing) it holds that store's lock: the
        screen's reads must not wait behind it.
        """
        self.call_from_thread(self._began, name)
        try:
            # Not made where it is missing (a deleted state directory, no manager to write
            # it back): an empty store there would be taken for the run's.
            with run_info.open_store(self.repo, run_id=self.run_id) as store:
                result = call(store)
        except Exception as exc:  # noqa: BLE001 - any failure is shown, the screen stays up
            result = watch_actions.ActionResult(ok=False, message=f"{name} failed: {exc}")
        self.call_from_thread(self._say, result.message, ok=result.ok)
        self.call_from_thread(self._ended, name)

    def _began(self, name: str) -> None:
        self._busy.append(name)
        self._say(f"{name}: working…", ok=True)

    def _ended(self, name: str) -> None:
        self._busy.remove(name)
        if self._quit_when_done and not self._busy:
            self.exit()
        else:
            self.refresh_rows()

    async def action_quit(self) -> None:
        """Quit; while an action is under way (a merge's checks), once it has ended."""
        if not self._busy:
            self.exit()
            return
        self._quit_when_done = True
        self._say(f"quitting once {', '.join(self._busy)} ends", ok=True)
        self._quit_asked = len(self.messages)

    def said_after_quit(self) -> list[str]:
        """What the actions under way when quitting was asked said at their end.

        The screen closes then: printed after it, the outcome of a merge is not lost with it.
        """
        return self.messages[self._quit_asked :] if self._quit_when_done else []

    def _say(self, message: str, *, ok: bool) -> None:
        message = printable(redact(without_escapes(message)), keep="\n")
        self.messages.append(message)
        # markup=False: task ids, paths and git output are shown as they are.
        self.notify(message, severity="information" if ok else "error", markup=False)


def watch(repo: git.Repo, run_id: str | None, *, checkout: Path | None = None) -> None:
    """Open the store, pick the run and show the screen until the user quits.

    *checkout*: yours that swarm runs in (a linked worktree's merges build on its HEAD).
    """
    with run_info.open_store(repo, to_read=True) as store:
        chosen = run_info.resolve_run(store, run_id)
        # Over SSH without a terminfo entry Textual still works; only a missing TERM is fatal.
        os.environ.setdefault("TERM", "xterm-256color")
        app = WatchApp(repo, store, chosen, checkout=checkout)
        # Killed politely, the screen still closes: the terminal gets its modes back.
        previous = signal.signal(signal.SIGTERM, lambda *_: app.exit())
        try:
            app.run()
        finally:
            signal.signal(signal.SIGTERM, previous)
        for said in app.said_after_quit():
            print(said)  # noqa: T201 - the terminal is the screen's again
        if app.store is not store:
            app.store.close()
        if app.crashed is not None:
            raise app.crashed
