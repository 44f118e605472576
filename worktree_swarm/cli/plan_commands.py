"""swarm plan, note and notes: a manifest planned from a goal; the run's shared findings.

Each command imports what only it needs when it runs (see ``cli/__init__.py``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from worktree_swarm.cli.context import context_repo
from worktree_swarm.cli.options import NonEmptyPath, WholeNumber, example, paths_given
from worktree_swarm.core.errors import ExitCode, SwarmError
from worktree_swarm.plan.defaults import DEFAULT_MAX_TASKS, DEFAULT_MODEL, MAX_TASKS
from worktree_swarm.report import run_info


@click.command("plan", epilog=example("swarm plan 'Add OAuth login' --out tasks.toml"))
@click.argument("goal")
@click.option(
    "--out",
    type=NonEmptyPath(dir_okay=False, path_type=Path),
    default=Path("tasks.toml"),
    show_default=True,
    help="Where to write the manifest.",
)
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
@click.option(
    "--max-tasks",
    type=WholeNumber(1, MAX_TASKS),
    default=DEFAULT_MAX_TASKS,
    show_default=True,
    help="The most tasks the plan may have.",
)
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="Anthropic model.")
@click.option("-j", "--jobs", type=WholeNumber(1), help="Jobs the speedup estimate assumes.")
@click.option(
    "--api-url", help="Anthropic API base URL; else $ANTHROPIC_BASE_URL, else the SDK's own."
)
@click.pass_context
def plan_cmd(
    ctx: click.Context,
    goal: str,
    out: Path,
    force: bool,
    max_tasks: int,
    model: str,
    jobs: int | None,
    api_url: str | None,
) -> int:
    """Break GOAL into a task manifest to review (Anthropic API, key in $ANTHROPIC_API_KEY)."""
    from worktree_swarm.plan import planner as plan
    from worktree_swarm.plan.api import api_settings
    from worktree_swarm.plan.out_file import check_output, write_manifest

    repo = context_repo(ctx)
    settings = api_settings(api_url=api_url)
    with paths_given():
        check_output(out, force=force)
    result = plan.make_plan(
        repo_root=repo.root,
        goal=goal,
        settings=settings,
        model=model,
        max_tasks=max_tasks,
        jobs=jobs,
    )
    write_manifest(out, result.manifest_text, force=force)
    for line in plan.describe(result, out=str(out)):
        click.echo(line)
    return ExitCode.OK


@click.command("note", epilog=example("swarm note 'tests need REDIS_URL=redis://localhost'"))
@click.argument("text")
@click.pass_context
def note_cmd(ctx: click.Context, text: str) -> int:
    """Append TEXT to the run's shared findings file ($SWARM_CONTEXT inside an agent)."""
    from worktree_swarm.report import notes

    path, tag = notes.resolve_target(repo_dir=Path(ctx.obj["dir"]))
    notes.append_note(path, text, tag=tag)
    return ExitCode.OK


@click.command("notes", epilog=example("swarm notes"))
@click.option("--run", "run_id", help="A run id (default: $SWARM_CONTEXT, else the latest run).")
@click.pass_context
def notes_cmd(ctx: click.Context, run_id: str | None) -> int:
    """Print the run's shared findings file."""
    from worktree_swarm.report import notes

    path = notes.notes_path(run_id=run_id, repo_dir=Path(ctx.obj["dir"]))
    # An agent may write a secret of its task's (`env`, `copy` files) into the file itself:
    # redacted when shown, as in `swarm logs` (the run's tasks made known first).
    with contextlib.suppress(SwarmError, OSError):
        repo = context_repo(ctx, empty_ok=True)
        with run_info.open_store(repo, to_read=True) as store:
            for row in store.tasks(path.parent.name):
                run_info.know_task_secrets(repo, store, row.run_id, row.task_id)
    text = notes.read_notes(path)
    if text:
        click.echo(text, nl=not text.endswith("\n"))
    else:
        click.echo(f"no findings yet ({path})", err=True)
    return ExitCode.OK
