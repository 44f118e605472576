"""How `swarm run`, retry and resume run a manager: here, or in the background.

Here, its tasks show in a live table (or one JSON event per line), then their summary, and the
exit code says whether every task is done. In the background (``--detach``), `swarm run` hands
its manager the run it validated in a file (``--from-spec``), read back and removed. Each
function imports what only it needs when it runs (see ``cli/__init__.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import click

from worktree_swarm.cli import streams
from worktree_swarm.core.errors import BadInputError, ExitCode
from worktree_swarm.core.models import TaskState
from worktree_swarm.core.paths import store_path
from worktree_swarm.git import repo as git
from worktree_swarm.git import status as git_status
from worktree_swarm.infra import proc
from worktree_swarm.report import status
from worktree_swarm.ui import status_text

if TYPE_CHECKING:
    from worktree_swarm.core.run_settings import RunSpec
    from worktree_swarm.infra.store import Store
    from worktree_swarm.run.run_state import Observer
    from worktree_swarm.run.runner import Runner


def start(
    ctx: click.Context,
    repo: git.Repo,
    spec: RunSpec,
    *,
    detach: bool,
    as_json: bool,
    checkout: Path,
    base: str,
) -> int:
    """Run the validated *spec* here, or (*detach*) with a manager in the background."""
    if detach:
        return _detach(ctx, repo, spec, as_json=as_json, checkout=checkout, base=base)
    return run_spec(repo, spec, as_json=as_json, checkout=checkout, base=base)


def detached_spec(path: Path) -> tuple[RunSpec, Path, str]:
    """The run `swarm run --detach` wrote to *path* for its manager, which is then removed."""
    from worktree_swarm.run.runner import spec_from_json

    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        spec = spec_from_json(json.dumps(saved["spec"]))
        checkout, base = Path(saved["checkout"]), str(saved["base"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BadInputError(f"--from-spec: not a run `swarm run --detach` wrote: {exc}") from None
    path.unlink()
    return spec, checkout, base


def _detach(
    ctx: click.Context, repo: git.Repo, spec: RunSpec, *, as_json: bool, checkout: Path, base: str
) -> int:
    """Start the manager of a validated run in the background (`swarm run --detach`)."""
    from worktree_swarm.run import background
    from worktree_swarm.run.runner import spec_to_json

    # The issues were fetched and everything validated once, here: the manager gets
    # exactly this task list instead of reading manifests and GitHub again.
    repo.state_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="detached-", suffix=".json", dir=repo.state_dir)
    argv = ["--debug"] if ctx.obj["debug"] else []
    argv += ["-C", str(repo.root), "run", "--from-spec", name]
    argv += ["--json"] if as_json else []
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:  # a full disk: not left half written
            saved = {"spec": json.loads(spec_to_json(spec)), "checkout": str(checkout)}
            fh.write(json.dumps({**saved, "base": base}))
        pid, log = background.detach(repo, argv)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return detached(pid, log, as_json=as_json)


def detached(pid: int, log: Path, *, as_json: bool) -> int:
    """Say where the manager started in the background runs and logs."""
    if as_json:  # its events go to its log: here, one object saying where
        event = {"ts": time.time(), "event": "detached", "pid": pid, "log": str(log)}
        click.echo(json.dumps(event))
        return ExitCode.OK
    click.echo(
        f"swarm: manager running in the background (pid {pid}, log {log}); "
        "watch it with `swarm status` or `swarm logs TASK -f`"
    )
    return ExitCode.OK


def run_spec(repo: git.Repo, spec: RunSpec, *, as_json: bool, checkout: Path, base: str) -> int:
    """Run the validated *spec* here, under the manager lock: the exit code its tasks make."""
    from worktree_swarm.git import worktree_root, worktrees
    from worktree_swarm.infra.lock import ManagerLock
    from worktree_swarm.infra.store import Store
    from worktree_swarm.run import runs
    from worktree_swarm.run.run_worker import worktree_path
    from worktree_swarm.run.runner import Runner

    with ManagerLock(repo.state_dir) as lock:
        # Locked before the store is opened: beside a manager whose `.git/swarm` was deleted,
        # a store made here would be what that manager finds at its path when it writes back.
        lock.acquire()
        # Opened at once: a command beside a live manager whose store is missing takes it for
        # deleted under it (the first run of a repository, while it checked its branches).
        with Store(store_path(repo)) as store:
            # Checked again, now that no other manager can start: one started at the same
            # instant (that finished while this one waited for the lock) may have made these
            # branches and worktrees since; a run recorded here would take them over as its
            # own, failed. (Refused here, the store is most likely that other run's.)
            items = [(t.branch, worktree_path(spec, t)) for t in spec.tasks]
            worktrees.preflight(repo, items, next_step=runs.next_step_for(repo))
            if _uncommitted(checkout):
                click.echo(
                    "note: uncommitted changes in your checkout are not part of the base",
                    err=True,
                )
            if spec.worktree_root is not None and (
                outer := worktree_root.seen_by_another_checkout(repo, spec.worktree_root)
            ):
                click.echo(
                    f"note: the worktrees go in {spec.worktree_root}, inside the checkout of"
                    f" {outer}, which does not ignore it: a swarm run there at the same time"
                    " would take them for its agents' writes (ignore it there, or set"
                    " worktree_root)",
                    err=True,
                )
            return execute(
                store,
                lambda observer: Runner.create(
                    repo=repo, spec=spec, store=store, observer=observer, base=base
                ),
                as_json=as_json,
            )


def _uncommitted(checkout: Path) -> bool:
    """Whether *checkout* has changes besides the file this run's output goes to."""
    own = {path.resolve() for path in proc.output_files()}
    return any((checkout / path).resolve() not in own for path in git_status.status_paths(checkout))


def execute(store: Store, make: Callable[[Observer], Runner], *, as_json: bool) -> int:
    """Run the runner *make* builds, its tasks shown as they go, then their summary: exit code."""
    from worktree_swarm.ui.live import output_gone

    with _observer(store, as_json=as_json) as observer:
        runner = make(_told_of_stop(observer))
        states = runner.execute()  # SIGTERM interrupts it as Ctrl-C does (main)
    if not as_json:
        try:
            _print_summary(store, runner.run_id)
        except OSError:  # no one reads it any more: how the tasks ended decides the exit code
            output_gone(sys.stdout)
    ok = all(s is TaskState.DONE for s in states.values())
    return ExitCode.OK if ok else ExitCode.TASK_FAILED


def _told_of_stop(observer: Observer) -> Observer:
    """*observer*, and a line on stderr as a stop signal starts the run's stop.

    Said once the run loop took the signal, not in its handler (printing there, as the main
    thread prints, fails); not after a hangup: no one is there to read it.
    """
    from worktree_swarm.run.runner import STOPPING_EVENT

    def observe(kind: str, task_id: str | None, data: Mapping[str, object]) -> None:
        if kind == STOPPING_EVENT and not streams.hung_up():
            tasks = data.get("tasks")
            with contextlib.suppress(OSError):
                click.echo(_stopping_line(tasks if isinstance(tasks, int) else 0), err=True)
        observer(kind, task_id, data)

    return observe


def _stopping_line(tasks: int) -> str:
    """What a run says as a stop signal starts its stop of *tasks* tasks in flight."""
    if not tasks:
        return "swarm: stopping the run; Ctrl-C again quits at once"
    what = (
        "1 task under way (its work is kept)"
        if tasks == 1
        else f"{tasks} tasks under way (their work is kept)"
    )
    return (
        f"swarm: stopping {what}; Ctrl-C again quits at once, leaving any agent not stopped"
        " yet to `swarm stop`"
    )


@contextlib.contextmanager
def _observer(store: Store, *, as_json: bool) -> Iterator[Observer]:
    from worktree_swarm.ui.live import LiveTable, PlainObserver

    if as_json or not sys.stdout.isatty():
        yield PlainObserver(as_json=as_json)
        return
    with LiveTable(store) as table:
        yield table


def _print_summary(store: Store, run_id: str) -> None:
    click.echo(status_text.run_summary(run_id, status.task_status(store, run_id)))
