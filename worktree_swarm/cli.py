"""The `swarm` command: parse flags, call the library, map outcomes to exit codes."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType

import click

from worktree_swarm import background, control, demo, disk_budget, git, status, worktrees
from worktree_swarm.disk import format_size
from worktree_swarm.display import LiveTable, PlainObserver
from worktree_swarm.errors import ExitCode, SwarmError
from worktree_swarm.lock import ManagerLock
from worktree_swarm.manifest import Overrides, build_run_spec
from worktree_swarm.models import TaskState
from worktree_swarm.runner import Observer, Runner, store_path, worktree_path
from worktree_swarm.sandbox import check_available as require_sandbox
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
    ctx.ensure_object(dict)
    ctx.obj.update({"dir": directory, "debug": debug})


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
@click.option("--max-cost-usd", type=float, help="Start no new attempt once the run cost this.")
@click.option("--max-disk", metavar="SIZE", help="Cap on the worktrees' disk use, e.g. 20G.")
@click.option(
    "--sandbox/--no-sandbox",
    default=None,
    help="Run agents under bubblewrap, writable only in their worktree (Linux).",
)
@click.option(
    "--allow-outside-writes",
    is_flag=True,
    default=None,
    help="Report writes outside a task's worktree but do not fail it or restore.",
)
@click.option("--issues", "issue_numbers", metavar="N,N,...", help="GitHub issues as tasks.")
@click.option("--issues-label", metavar="LABEL", help="Open GitHub issues with this label.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many issues.")
@click.option("--github-repo", metavar="OWNER/NAME", help="When the remote URL does not say.")
@click.option("--api-url", metavar="URL", help="GitHub API URL (Enterprise).")
@click.option("--detach", is_flag=True, help="Run the manager in the background.")
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
    max_cost_usd: float | None,
    max_disk: str | None,
    sandbox: bool | None,
    allow_outside_writes: bool | None,
    issue_numbers: str | None,
    issues_label: str | None,
    limit: int | None,
    github_repo: str | None,
    api_url: str | None,
    detach: bool,
    as_json: bool,
) -> int:
    """Create a worktree per task, run the agents, checkpoint and check their work."""
    repo = _repo(ctx)
    extra: list[tuple[str, str, str]] = []
    if issue_numbers or issues_label:
        from worktree_swarm import github, issues  # noqa: PLC0415 - only --issues needs them

        client = github.connect(repo, remote="origin", github_repo=github_repo, api_url=api_url)
        numbers = issues.parse_issue_numbers(issue_numbers) if issue_numbers else ()
        extra = issues.fetch_issue_tasks(client, numbers=numbers, label=issues_label, limit=limit)
    overrides = Overrides(
        agent=agent,
        jobs=jobs,
        timeout=timeout,
        idle_timeout=idle_timeout,
        checks=checks or None,
        max_cost_usd=max_cost_usd,
        max_disk=max_disk,
        sandbox=sandbox,
        allow_outside_writes=allow_outside_writes or None,
    )
    spec = build_run_spec(
        repo_root=repo.root,
        manifest=manifest,
        inline=inline,
        prompt_files=prompt_file,
        overrides=overrides,
        extra_tasks=extra,
    )
    if spec.sandbox:
        require_sandbox()
    worktrees.preflight(repo, [(t.branch, worktree_path(spec, t)) for t in spec.tasks])
    disk_budget.preflight(repo, spec, git.head_commit(repo))
    if detach:
        argv = [a for a in ctx.obj["argv"] if a != "--detach"]
        pid, log = background.detach(repo, argv)
        click.echo(
            f"swarm: manager running in the background (pid {pid}, log {log}); "
            "watch it with `swarm status` or `swarm logs TASK -f`"
        )
        return ExitCode.OK
    with ManagerLock(repo.state_dir) as lock, Store(store_path(repo)) as store:
        lock.acquire()
        if git.status_porcelain(repo.root):
            click.echo(
                "note: uncommitted changes in your checkout are not part of the base", err=True
            )
        return _execute(
            store,
            lambda observer: Runner.create(repo=repo, spec=spec, store=store, observer=observer),
            as_json=as_json,
        )


@cli.command("resume")
@click.option("--run", "run_id", help="A run id (default: the latest run).")
@click.option("--json", "as_json", is_flag=True, help="One JSON event per line.")
@click.pass_context
def resume_cmd(ctx: click.Context, run_id: str | None, as_json: bool) -> int:
    """After the manager died: adopt live agents, recover dead ones, carry on."""
    repo = _repo(ctx)
    with status.open_store(repo) as store, ManagerLock(repo.state_dir) as lock:
        run_id = status.resolve_run(store, run_id)
        lock.acquire(run_id=run_id)
        return _execute(
            store,
            lambda observer: Runner.resume(
                repo=repo, store=store, run_id=str(run_id), observer=observer
            ),
            as_json=as_json,
        )


def _execute(store: Store, make: Callable[[Observer], Runner], *, as_json: bool) -> int:
    with _observer(store, as_json=as_json) as observer:
        runner = make(observer)
        with _sigterm_as_interrupt():
            states = runner.execute()
    if not as_json:
        _print_summary(store, runner.run_id)
    ok = all(s is TaskState.DONE for s in states.values())
    return ExitCode.OK if ok else ExitCode.TASK_FAILED


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
        rows = status.task_status(store, run_id, disk=True)
    totals = status.run_totals(rows, disk=True)
    if as_json:
        payload = {"run_id": run_id, "totals": totals, "tasks": [r.to_json() for r in rows]}
        click.echo(json.dumps(payload, indent=2))
        return ExitCode.OK
    click.echo(f"run {run_id}")
    header = f"{'task':<20} {'state':<12} {'att':>3} {'pid':>7} {'alive':<5} {'elapsed':>8}"
    click.echo(f"{header} {'cost':>8} {'disk':>7}  diff")
    for r in rows:
        elapsed = f"{r.elapsed_s:.1f}s" if r.elapsed_s is not None else "-"
        cost = f"${r.cost_usd:.2f}" if r.cost_usd is not None else "-"
        diff = f"{r.files_changed} files +{r.insertions} -{r.deletions}" if r.files_changed else "-"
        click.echo(
            f"{r.task_id:<20} {r.state:<12} {r.attempt:>3} {r.pid or '-':>7} "
            f"{'yes' if r.alive else 'no':<5} {elapsed:>8} {cost:>8} {_disk_cell(r):>7}  "
            f"{diff}  {r.branch}" + (f"  {r.reason.splitlines()[0][:80]}" if r.reason else "")
        )
    click.echo(
        f"total: {totals['attempts']} attempts, ${totals['cost_usd']:.2f}, "
        f"{totals['tokens_in']} tokens in, {totals['tokens_out']} out"
    )
    present = sum(r.worktree_present for r in rows)
    removed = sum(not r.worktree_present and r.disk_actual is not None for r in rows)
    click.echo(
        f"disk: {format_size(int(totals['disk_actual']))} used "
        f"({format_size(int(totals['disk_apparent']))} apparent) by {present} worktrees"
        + (f", {removed} removed" if removed else "")
    )
    return ExitCode.OK


def _disk_cell(row: status.TaskStatus) -> str:
    if not row.worktree_present:
        return "removed" if row.disk_actual is not None else "-"
    return format_size(row.disk_actual)


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


@cli.command("diff")
@click.argument("task_ids", nargs=-1, metavar="[TASK]...")
@click.option("--run", "run_id", help="A run id (default: the latest run).")
@click.option("--stat", "mode", flag_value="stat", help="A diffstat per task instead of patches.")
@click.option("--name-only", "mode", flag_value="name-only", help="Changed files per task.")
@click.option("--json", "mode", flag_value="json", help="Stable JSON (see docs/merge.md).")
@click.pass_context
def diff_cmd(ctx: click.Context, task_ids: tuple[str, ...], run_id: str | None, mode: str) -> int:
    """Each task's branch against its own base (three-dot), with the task's outcome."""
    from worktree_swarm import diff  # noqa: PLC0415 - kept at this command's anchor

    repo = _repo(ctx)
    with status.open_store(repo) as store:
        run_id = status.resolve_run(store, run_id)
        diffs = diff.task_diffs(repo, store, run_id, task_ids)
    if mode == "json":
        click.echo(json.dumps({"run_id": run_id, "tasks": [d.to_json() for d in diffs]}, indent=2))
        return ExitCode.OK
    for d in diffs:
        click.echo(diff.format_header(d))
        if mode == "name-only":
            click.echo("".join(f"  {f.path}\n" for f in d.files), nl=False)
        else:
            click.echo(diff.patch(repo, d, stat=mode == "stat"), nl=False)
    return ExitCode.OK


@cli.command("merge")
@click.argument("task_ids", nargs=-1, metavar="[TASK]...")
@click.option("--run", "run_id", help="A run id (default: the latest run).")
@click.option("--into", metavar="BRANCH", help="Merge into this branch (not checked out anywhere).")
@click.option("--strategy", type=click.Choice(["merge", "squash"]), default="merge")
@click.option("--check", "checks", multiple=True, metavar="CMD", help="Run after each merge.")
@click.option("--dry-run", is_flag=True, help="Only predict conflicts and the order.")
@click.option("--resolve", is_flag=True, help="Hand conflicts to the task's agent, then check.")
@click.option("--json", "as_json", is_flag=True, help="Stable JSON (see docs/merge.md).")
@click.pass_context
def merge_cmd(
    ctx: click.Context,
    task_ids: tuple[str, ...],
    run_id: str | None,
    into: str | None,
    strategy: str,
    checks: tuple[str, ...],
    dry_run: bool,
    resolve: bool,
    as_json: bool,
) -> int:
    """Predict conflicts, merge done task branches in a safe order, check after each merge."""
    from worktree_swarm import merge, merge_report  # noqa: PLC0415 - kept at this anchor

    repo = _repo(ctx)
    # SIGTERM like Ctrl-C: a resolver or check being waited for is killed with its tree.
    with status.open_store(repo) as store, _sigterm_as_interrupt():
        report = merge.merge(
            repo,
            store,
            status.resolve_run(store, run_id),
            task_ids=task_ids,
            into=into,
            strategy=merge.Strategy(strategy),
            checks=checks,
            dry_run=dry_run,
            resolve=resolve,
            echo=None if as_json else click.echo,
        )
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        for line in merge_report.format_summary(report):
            click.echo(line)
    return ExitCode.OK if report.ok else ExitCode.TASK_FAILED


# -- pr command (issue #4) --


@cli.command("pr")
@click.argument("task_ids", nargs=-1, metavar="[TASK]...")
@click.option("--run", "run_id", help="A run id (default: the latest run).")
@click.option("--remote", default="origin", show_default=True, help="The remote to push to.")
@click.option("--base", help="Branch to merge into (default: the branch your checkout is on).")
@click.option("--draft", is_flag=True, help="Open new pull requests as drafts.")
@click.option("--github-repo", metavar="OWNER/NAME", help="When the remote URL does not say.")
@click.option("--api-url", help="GitHub API base URL (default: $SWARM_GITHUB_API_URL or github).")
@click.pass_context
def pr_cmd(
    ctx: click.Context,
    task_ids: tuple[str, ...],
    run_id: str | None,
    remote: str,
    base: str | None,
    draft: bool,
    github_repo: str | None,
    api_url: str | None,
) -> int:
    """Push done task branches and open (or update) their pull requests."""
    from worktree_swarm import pr  # noqa: PLC0415 - only `swarm pr` needs the GitHub client

    repo = _repo(ctx)
    with status.open_store(repo) as store:
        report = pr.push_and_open(
            repo,
            store,
            status.resolve_run(store, run_id),
            task_ids=task_ids,
            remote=remote,
            base=base,
            draft=draft,
            github_repo=github_repo,
            api_url=api_url,
            echo=click.echo,
            on_wait=lambda s, why: click.echo(f"waiting {s:.0f}s: {why}", err=True),
        )
    return ExitCode.OK if report.ok else ExitCode.TASK_FAILED


# -- clean / doctor commands (issue #5) --


def _orphan_options(f: Callable[..., int]) -> Callable[..., int]:
    f = click.option("--idle", default="7d", show_default=True, help="Age for --foreign.")(f)
    return click.option("--foreign", is_flag=True, help="Remove other tools' idle worktrees.")(f)


@cli.command("clean")
@click.option("--run", "run_id", help="A run id (default: the latest run).")
@click.option("--all", "all_runs", is_flag=True, help="Every recorded run.")
@click.option("--orphans", is_flag=True, help="Find and fix orphans instead (= swarm doctor).")
@click.option("--keep-branches", is_flag=True, help="Never delete branches.")
@_orphan_options
@click.option("--yes", is_flag=True, help="Do it (the default is a dry run).")
@click.option("--force", is_flag=True, help="Also delete unmerged branches and kept worktrees.")
@click.option("--json", "as_json", is_flag=True, help="Stable JSON (see docs/clean.md).")
@click.pass_context
def clean_cmd(
    ctx: click.Context,
    run_id: str | None,
    all_runs: bool,
    orphans: bool,
    keep_branches: bool,
    foreign: bool,
    idle: str,
    yes: bool,
    force: bool,
    as_json: bool,
) -> int:
    """Remove finished tasks' worktrees and merged branches (a dry run unless --yes)."""
    from worktree_swarm import clean  # noqa: PLC0415 - only `swarm clean` needs these
    from worktree_swarm import orphans as scan  # noqa: PLC0415

    repo = _repo(ctx)
    if orphans:
        age = scan.parse_age(idle)
        report = scan.doctor(repo, yes=yes, force=force, foreign=foreign, idle=age)
    else:
        report = clean.clean(
            repo,
            run_id=run_id,
            all_runs=all_runs,
            keep_branches=keep_branches,
            force=force,
            yes=yes,
        )
    click.echo(json.dumps(report.to_json(), indent=2) if as_json else clean.format_report(report))
    return report.exit_code


@cli.command("doctor")
@_orphan_options
@click.option("--yes", is_flag=True, help="Fix what was found (the default is a dry run).")
@click.option("--force", is_flag=True, help="Also delete unmerged orphan branches.")
@click.option("--json", "as_json", is_flag=True, help="Stable JSON (see docs/clean.md).")
@click.pass_context
def doctor_cmd(
    ctx: click.Context, foreign: bool, idle: str, yes: bool, force: bool, as_json: bool
) -> int:
    """Find orphaned worktrees, branches, processes and locks (= swarm clean --orphans)."""
    return int(
        ctx.invoke(
            clean_cmd,
            orphans=True,
            foreign=foreign,
            idle=idle,
            yes=yes,
            force=force,
            as_json=as_json,
        )
    )


# -- report command (issue #6) --


@cli.command("report")
@click.option("--run", "run_id", help="A run id (default: the latest run).")
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write a self-contained HTML report (timeline, table, details) to FILE.",
)
@click.option("--json", "as_json", is_flag=True, help="Stable JSON (see docs/report.md).")
@click.pass_context
def report_cmd(
    ctx: click.Context, run_id: str | None, html_path: Path | None, as_json: bool
) -> int:
    """What happened: per-task outcome, time, cost, diff; speedup and totals."""
    from worktree_swarm import report, report_html  # noqa: PLC0415 - only `swarm report` needs them
    from worktree_swarm.runner import run_dir  # noqa: PLC0415

    repo = _repo(ctx)
    with status.open_store(repo) as store:
        run_id = status.resolve_run(store, run_id)
        result = report.build_report(store, run_id, logs_dir=run_dir(repo, run_id))
    if html_path is not None:
        report_html.write_html(result, html_path)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        click.echo(report.format_text(result))
    if html_path is not None:
        click.echo(f"wrote {html_path}", err=as_json)
    return ExitCode.OK


# -- plan / note / notes commands (issue #7) --


@cli.command("plan")
@click.argument("goal")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("tasks.toml"),
    show_default=True,
    help="Where to write the manifest.",
)
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
@click.option("--max-tasks", type=click.IntRange(1, 50), default=8, show_default=True)
@click.option("--model", help="Anthropic model (default: claude-sonnet-4-5).")
@click.option("-j", "--jobs", type=click.IntRange(min=1), help="Jobs the speedup estimate assumes.")
@click.option("--api-url", help="Anthropic API base URL (default: $ANTHROPIC_BASE_URL).")
@click.pass_context
def plan_cmd(
    ctx: click.Context,
    goal: str,
    out: Path,
    force: bool,
    max_tasks: int,
    model: str | None,
    jobs: int | None,
    api_url: str | None,
) -> int:
    """Break GOAL into a task manifest to review (Anthropic API, key in $ANTHROPIC_API_KEY)."""
    from worktree_swarm import plan  # noqa: PLC0415 - the anthropic SDK takes seconds to import

    repo = _repo(ctx)
    settings = plan.api_settings(api_url=api_url)
    plan.check_output(out, force=force)
    result = plan.make_plan(
        repo_root=repo.root,
        goal=goal,
        settings=settings,
        model=model,
        max_tasks=max_tasks,
        jobs=jobs,
    )
    plan.write_manifest(out, result.manifest_text)
    for line in plan.describe(result, out=str(out)):
        click.echo(line)
    return ExitCode.OK


@cli.command("note")
@click.argument("text")
@click.pass_context
def note_cmd(ctx: click.Context, text: str) -> int:
    """Append TEXT to the run's shared findings file ($SWARM_CONTEXT inside an agent)."""
    from worktree_swarm import notes  # noqa: PLC0415 - kept at this command's anchor

    path, tag = notes.resolve_target(repo_dir=Path(ctx.obj["dir"]))
    notes.append_note(path, text, tag=tag)
    return ExitCode.OK


@cli.command("notes")
@click.option("--run", "run_id", help="A run id (default: $SWARM_CONTEXT, else the latest run).")
@click.pass_context
def notes_cmd(ctx: click.Context, run_id: str | None) -> int:
    """Print the run's shared findings file."""
    from worktree_swarm import notes  # noqa: PLC0415 - kept at this command's anchor

    path = notes.notes_path(run_id=run_id, repo_dir=Path(ctx.obj["dir"]))
    text = notes.read_notes(path)
    if text:
        click.echo(text, nl=not text.endswith("\n"))
    else:
        click.echo(f"no findings yet ({path})", err=True)
    return ExitCode.OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (SPEC.md) instead of exiting."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        code = cli.main(args=args, prog_name="swarm", standalone_mode=False, obj={"argv": args})
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
