"""swarm runs, status, logs, watch and report: what a run is doing, or did.

Each command imports what only it needs when it runs (see ``cli/__init__.py``).
"""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from worktree_swarm.cli import streams
from worktree_swarm.cli.context import context_repo, store_to_read, your_checkout
from worktree_swarm.cli.options import NonEmptyPath, example, paths_given
from worktree_swarm.core.errors import BadInputError, ExitCode, SwarmError
from worktree_swarm.core.paths import run_dir
from worktree_swarm.infra import logtail, proctree
from worktree_swarm.infra.scrub import RedactingWriter
from worktree_swarm.report import run_info, status
from worktree_swarm.ui import status_text

if TYPE_CHECKING:
    from collections.abc import Callable

    from worktree_swarm.infra.store import Store


@click.command("runs", epilog=example("swarm runs", "swarm runs --json"))
@click.option("--json", "as_json", is_flag=True, help="Stable JSON (see README).")
@click.pass_context
def runs_cmd(ctx: click.Context, as_json: bool) -> int:
    """List the recorded runs: id, start, state, task counts."""
    from worktree_swarm.run import runs

    repo = context_repo(ctx, empty_ok=True)
    summaries: list[runs.RunSummary] = []
    if run_info.has_store(repo):  # none yet: an empty list, as after `clean --all`
        with store_to_read(repo) as store:
            summaries = runs.list_runs(store)
    if as_json:
        click.echo(json.dumps({"runs": [s.to_json() for s in summaries]}, indent=2))
    else:
        for line in runs.format_runs(summaries):
            click.echo(line)
    return ExitCode.OK


@click.command(
    "status", epilog=example("swarm status", 'swarm status --json | jq ".tasks[].state"')
)
@click.option("--run", "run_id", help="A run id (default: the latest run).")
@click.option("--json", "as_json", is_flag=True, help="Stable JSON (see README).")
@click.pass_context
def status_cmd(ctx: click.Context, run_id: str | None, as_json: bool) -> int:
    """One row per task: state, attempt, pid, alive, elapsed, diff stat, branch, worktree."""
    repo = context_repo(ctx, empty_ok=True)
    with store_to_read(repo) as store:
        run_id = run_info.resolve_run(store, run_id)
        rows = status.task_status(store, run_id, disk=True, repo=repo)
        failed_scans = run_info.guard_errors(store, run_id)
        put_back = run_info.remote_refs_put_back(store, run_id)
        gates = status.provider_gates(store, run_id)
        manager = run_info.manager_status(repo, store, run_id)
    totals = status.run_totals(rows, disk=True)
    if as_json:
        payload = {
            "run_id": run_id,
            **manager.to_json(),
            "totals": totals,
            "tasks": [r.to_json() for r in rows],
            "guard_errors": failed_scans,
            "remote_refs_put_back": put_back,
            "providers": [g.to_json() for g in gates],
        }
        click.echo(json.dumps(payload, indent=2))
        return ExitCode.OK
    if not manager.manager_running:  # its concurrency was the manager's; a wait still counts
        gates = [g for g in gates if g.waiting_until is not None and g.waiting_until > time.time()]
    click.echo(status_text.status_text(run_id, rows, totals, gates=gates, notes=manager.lines()))
    for failed in failed_scans:  # while a scan fails, that part of the run is unwatched
        click.echo(status_text.guard_error_line(failed))
    if put_back:
        click.echo(status_text.remote_refs_line(put_back))
    return ExitCode.OK


@click.command(epilog=example("swarm logs fix-login -f", "swarm logs fix-login --checks"))
@click.argument("task_id", metavar="TASK")
@click.option("-f", "--follow", is_flag=True, help="Keep printing while the agent runs.")
@click.option("--run", "run_id", help="A run id (default: the latest run).")
@click.option("--checks", is_flag=True, help="Print what its checks printed instead.")
@click.option("--setup", is_flag=True, help="Print what its setup commands printed instead.")
@click.pass_context
def logs(
    ctx: click.Context,
    task_id: str,
    follow: bool,
    run_id: str | None,
    checks: bool,
    setup: bool,
) -> int:
    """Print the agent's output (newest attempt), or its checks' or setup's."""
    if checks and setup:
        raise BadInputError("--checks and --setup: one at a time")
    step = "checks" if checks else "setup" if setup else None
    repo = context_repo(ctx, empty_ok=True)
    with store_to_read(repo) as store:
        run_id = run_info.resolve_run(store, run_id)
        ended: Callable[[], bool] | None
        if step is None:
            path, attempt = run_info.log_path(repo, store, run_id, task_id)
            ended = functools.partial(_ended, store, run_id, attempt.id) if follow else None
        else:
            path = run_info.step_log_path(repo, store, run_id, task_id, step)
            ended = functools.partial(_task_ended, store, run_id, task_id) if follow else None
        run_info.know_task_secrets(repo, store, run_id, task_id)  # while it runs the log is raw
        # Whole lines through the redactor, so a secret is never split across two writes.
        out = RedactingWriter(sys.stdout.buffer)
        try:
            logtail.copy_log(path, out, ended=ended)
        except OSError as exc:  # a pipe or a link an agent left in its place
            raise SwarmError(f"{path}: not read ({exc.strerror or exc})") from None
    return ExitCode.OK


def _ended(store: Store, run_id: str, attempt_id: int) -> bool:
    """Whether a follower is done: its reader went away (``| head -1``), or the attempt ended."""
    return streams.reader_gone() or _attempt_ended(store, run_id, attempt_id)


def _task_ended(store: Store, run_id: str, task_id: str) -> bool:
    """Whether a follower of a task's checks or setup is done.

    Its reader went away, the task is in a final state, or no manager runs its run.
    """
    if streams.reader_gone():
        return True
    row = store.task(run_id, task_id)
    run = store.get_run(run_id)
    return row is None or row.state.is_final or run is None or not run_info.manager_running(run)


def _attempt_ended(store: Store, run_id: str, attempt_id: int) -> bool:
    """Whether the attempt followed has ended: recorded so, or its agent gone unwatched.

    With no manager of the run alive nothing records its end until a `swarm resume` or
    `swarm stop`: a follower stops once the agent's process is gone.
    """
    from worktree_swarm.core.models import ProcessIdentity

    attempt = next((a for a in store.attempts(run_id) if a.id == attempt_id), None)
    if attempt is None or attempt.ended_at is not None:
        return True
    run = store.get_run(run_id)
    if run is None or run_info.manager_running(run):
        return False
    agent = ProcessIdentity(pid=attempt.pid, create_time=attempt.create_time, pgid=attempt.pgid)
    return not proctree.is_alive(agent)


@click.command("watch", epilog=example("swarm watch", "swarm watch --run 20260101-020304-ab12"))
@click.option("--run", "run_id", help="A run id (default: the latest run).")
@click.pass_context
def watch_cmd(ctx: click.Context, run_id: str | None) -> int:
    """Full-screen view of a run: tasks, live log, diff, conflicts; stop, retry, PR, merge.

    Keys: s stop, r retry, p open/update PR, space mark, m merge marked, w worktree path
    (copied), l/d/c log/diff/conflicts, q quit. Works in any terminal, also over SSH.
    """
    from worktree_swarm.ui import watch

    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise BadInputError("swarm watch needs a terminal; without one, `swarm status` shows it")
    repo = context_repo(ctx, empty_ok=True)
    watch.watch(repo, run_id, checkout=your_checkout(ctx, repo))
    return ExitCode.OK


@click.command("report", epilog=example("swarm report", "swarm report --html night.html"))
@click.option("--run", "run_id", help="A run id (default: the latest run).")
@click.option(
    "--html",
    "html_path",
    type=NonEmptyPath(dir_okay=False, path_type=Path),
    help="Also write a self-contained HTML report (timeline, table, details) to FILE.",
)
@click.option("--json", "as_json", is_flag=True, help="Stable JSON (see docs/report.md).")
@click.pass_context
def report_cmd(
    ctx: click.Context, run_id: str | None, html_path: Path | None, as_json: bool
) -> int:
    """What happened: per-task outcome, time, cost, diff; speedup and totals."""
    from worktree_swarm.report import report
    from worktree_swarm.ui import html_report as report_html
    from worktree_swarm.ui import report_text

    repo = context_repo(ctx, empty_ok=True)
    if html_path is not None:
        with paths_given():
            report_html.check_output(html_path)
    with store_to_read(repo) as store:
        run_id = run_info.resolve_run(store, run_id)
        result = report.build_report(store, run_id, logs_dir=run_dir(repo, run_id), repo=repo)
    if html_path is not None:
        report_html.write_html(result, html_path)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        click.echo(report_text.report_text(result))
    if html_path is not None:
        click.echo(f"wrote {html_path}", err=as_json)
    return ExitCode.OK
