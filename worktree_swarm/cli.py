"""The `swarm` command: parse flags, call the library, map outcomes to exit codes."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

import click

from worktree_swarm import control, demo, git, status, worktrees
from worktree_swarm.display import LiveTable, PlainObserver
from worktree_swarm.errors import ExitCode, SwarmError
from worktree_swarm.lock import ManagerLock
from worktree_swarm.manifest import Overrides, build_run_spec
from worktree_swarm.models import TaskState
from worktree_swarm.runner import Observer, Runner, store_path, worktree_path
from worktree_swarm.store import Store


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-C",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=".",
    help="Run as if started in this directory.",
)
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="worktree-swarm")
@click.pass_context
def cli(ctx: click.Context, directory: Path, debug: bool) -> None:
    """Run coding agents in parallel, each in its own git worktree and branch."""
    ctx.obj = {"dir": directory, "debug": debug}


def _repo(ctx: click.Context) -> git.Repo:
    git.require_git()
    return git.open_repo(Path(ctx.obj["dir"]))


@cli.command()
@click.argument("manifest", required=False, type=click.Path(path_type=Path))
@click.option("-t", "--task", "inline", multiple=True, metavar="ID=PROMPT", help="An inline task.")
@click.option(
    "--prompt-file", multiple=True, metavar="ID=FILE", help="A task whose prompt is a file."
)
@click.option(
    "--agent", help="Agent profile (claude, codex, aider, gemini, scripted) or a command line."
)
@click.option("-j", "--jobs", type=click.IntRange(min=1), help="Agents running at once.")
@click.option("--timeout", help="Wall time limit per task, e.g. 45m.")
@click.option("--idle-timeout", help="Stop an agent silent for this long, e.g. 10m.")
@click.option(
    "--check", "checks", multiple=True, metavar="CMD", help="A check run after the agent."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON event per line.")
@click.pass_context
def run(
    ctx: click.Context,
    manifest: Path | None,
    inline: tuple[str, ...],
    prompt_file: tuple[str, ...],
    agent: str | None,
    jobs: int | None,
    timeout: str | None,
    idle_timeout: str | None,
    checks: tuple[str, ...],
    as_json: bool,
) -> int:
    """Create a worktree per task, run the agents, checkpoint and check their work."""
    repo = _repo(ctx)
    overrides = Overrides(
        agent=agent,
        jobs=jobs,
        timeout=timeout,
        idle_timeout=idle_timeout,
        checks=checks or None,
    )
    spec = build_run_spec(
        repo_root=repo.root,
        manifest=manifest,
        inline=inline,
        prompt_files=prompt_file,
        overrides=overrides,
    )
    worktrees.preflight(repo, [(t.branch, worktree_path(spec, t)) for t in spec.tasks])
    with ManagerLock(repo.state_dir) as lock, Store(store_path(repo)) as store:
        lock.acquire()
        if git.status_porcelain(repo.root):
            click.echo(
                "note: uncommitted changes in your checkout are not part of the base", err=True
            )
        with _observer(store, as_json=as_json) as observer:
            runner = Runner.create(repo=repo, spec=spec, store=store, observer=observer)
            with _sigterm_as_interrupt():
                states = runner.execute()
        if not as_json:
            _print_summary(store, runner.run_id)
    return (
        ExitCode.OK if all(s is TaskState.DONE for s in states.values()) else ExitCode.TASK_FAILED
    )


@contextlib.contextmanager
def _observer(store: Store, *, as_json: bool) -> Iterator[Observer]:
    if as_json or not sys.stdout.isatty():
        yield PlainObserver(as_json=as_json)
        return
    with LiveTable(store) as table:
        yield table


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def handler(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _print_summary(store: Store, run_id: str) -> None:
    rows = status.task_status(store, run_id)
    width = max((len(r.task_id) for r in rows), default=4)
    for row in rows:
        stat = f"+{row.insertions} -{row.deletions}" if row.files_changed else ""
        reason = f"  {row.reason.splitlines()[0]}" if row.reason else ""
        click.echo(f"{row.task_id:<{width}}  {row.state:<10} {stat:<12} {row.branch}{reason}")
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.state] = counts.get(row.state, 0) + 1
    click.echo(f"run {run_id}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))


@cli.command("status")
@click.option("--run", "run_id", help="A run id (default: the latest run).")
@click.option("--json", "as_json", is_flag=True, help="Stable JSON (see README).")
@click.pass_context
def status_cmd(ctx: click.Context, run_id: str | None, as_json: bool) -> int:
    """One row per task: state, attempt, pid, alive, elapsed, diff stat, branch, worktree."""
    repo = _repo(ctx)
    with status.open_store(repo) as store:
        run_id = status.resolve_run(store, run_id)
        rows = status.task_status(store, run_id)
    if as_json:
        click.echo(json.dumps({"run_id": run_id, "tasks": [r.to_json() for r in rows]}, indent=2))
        return ExitCode.OK
    click.echo(f"run {run_id}")
    header = f"{'task':<20} {'state':<12} {'att':>3} {'pid':>7} {'alive':<5} {'elapsed':>8}  diff"
    click.echo(header)
    for r in rows:
        elapsed = f"{r.elapsed_s:.1f}s" if r.elapsed_s is not None else "-"
        diff = f"{r.files_changed} files +{r.insertions} -{r.deletions}" if r.files_changed else "-"
        click.echo(
            f"{r.task_id:<20} {r.state:<12} {r.attempt:>3} {r.pid or '-':>7} "
            f"{'yes' if r.alive else 'no':<5} {elapsed:>8}  {diff}  {r.branch}"
        )
    return ExitCode.OK


@cli.command()
@click.argument("task_id", metavar="TASK")
@click.option("-f", "--follow", is_flag=True, help="Keep printing while the agent runs.")
@click.option("--run", "run_id", help="A run id (default: the latest run).")
@click.pass_context
def logs(ctx: click.Context, task_id: str, follow: bool, run_id: str | None) -> int:
    """Print the agent's output (newest attempt)."""
    repo = _repo(ctx)
    with status.open_store(repo) as store:
        run_id = status.resolve_run(store, run_id)
        path, attempt = status.log_path(store, run_id, task_id)
        with path.open("rb") as fh:
            while True:
                chunk = fh.read(65536)
                if chunk:
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.buffer.flush()
                    continue
                if not follow or _attempt_ended(store, run_id, attempt.id):
                    if follow:  # the writer may have flushed after our last read
                        sys.stdout.buffer.write(fh.read())
                    break
                time.sleep(0.2)
    return ExitCode.OK


def _attempt_ended(store: Store, run_id: str, attempt_id: int) -> bool:
    return any(a.id == attempt_id and a.ended_at is not None for a in store.attempts(run_id))


@cli.command()
@click.argument("task_ids", nargs=-1, metavar="[TASK]...")
@click.option("--run", "run_id", help="A run id (default: the latest run).")
@click.pass_context
def stop(ctx: click.Context, task_ids: tuple[str, ...], run_id: str | None) -> int:
    """Stop agents (whole process trees) and keep their work on their branches."""
    repo = _repo(ctx)
    with status.open_store(repo) as store:
        run_id = status.resolve_run(store, run_id)
        stopped = control.stop(repo, store, run_id, task_ids)
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing to stop")
    return ExitCode.OK


@cli.command("demo")
@click.option("--keep", is_flag=True, help="Keep the throwaway repository and print its path.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=2, show_default=True)
def demo_cmd(keep: bool, jobs: int) -> int:
    """Run a few scripted tasks in a throwaway repository (no API key needed)."""
    git.require_git()
    result = demo.run_demo(jobs=jobs, keep=keep, echo=click.echo)
    return ExitCode.OK if result.ok else ExitCode.TASK_FAILED


# -- diff / merge commands (issue #4) --

# -- pr command (issue #4) --

# -- clean / doctor commands (issue #5) --

# -- report command (issue #6) --

# -- plan / note / notes commands (issue #7) --


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (SPEC.md) instead of exiting."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        code = cli.main(args=args, prog_name="swarm", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"swarm: {exc.format_message()}", err=True)
        return ExitCode.BAD_INPUT
    except click.exceptions.Abort:
        return ExitCode.INTERRUPTED
    except KeyboardInterrupt:
        click.echo("swarm: interrupted; agents stopped, work checkpointed", err=True)
        return ExitCode.INTERRUPTED
    except SwarmError as exc:
        if debug:
            raise
        click.echo(f"swarm: {exc}", err=True)
        return int(exc.exit_code)
    except Exception:
        if debug:
            raise
        with tempfile.NamedTemporaryFile(
            "w", prefix="swarm-crash-", suffix=".log", delete=False
        ) as fh:
            traceback.print_exc(file=fh)
        click.echo(f"swarm: internal error; traceback written to {fh.name}", err=True)
        return ExitCode.TASK_FAILED
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
