"""swarm clean and doctor: remove what runs left behind, find and fix orphans.

Each command imports what only it needs when it runs (see ``cli/__init__.py``).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import click

from worktree_swarm.cli.context import context_repo
from worktree_swarm.cli.options import example, exclusive, needs
from worktree_swarm.infra.redact import redact


def _orphan_options(f: Callable[..., int]) -> Callable[..., int]:
    f = click.option("--idle", help="Age for --foreign.  [default: 7d]")(f)
    return click.option("--foreign", is_flag=True, help="Remove other tools' idle worktrees.")(f)


@click.command("clean", epilog=example("swarm clean   # a dry run", "swarm clean --all --yes"))
@click.option("--run", "run_id", help="A run id (default: the latest run).")
@click.option("--all", "all_runs", is_flag=True, help="Every recorded run.")
@click.option("--orphans", is_flag=True, help="Find and fix orphans instead (= swarm doctor).")
@click.option("--keep-branches", is_flag=True, help="Never delete branches.")
@_orphan_options
@click.option("--yes", is_flag=True, help="Do it (the default is a dry run).")
@click.option("--dry-run", is_flag=True, help="Only say what --yes would do (the default).")
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
    idle: str | None,
    yes: bool,
    dry_run: bool,
    force: bool,
    as_json: bool,
) -> int:
    """Remove finished tasks' worktrees and merged branches (a dry run unless --yes)."""
    from worktree_swarm.cleanup import clean
    from worktree_swarm.cleanup import orphans as scan
    from worktree_swarm.ui.clean_text import clean_text

    exclusive(dry_run=dry_run, yes=yes)
    runs_options = {"run": run_id is not None, "all": all_runs, "keep_branches": keep_branches}
    for name, used in runs_options.items():  # what to clean of runs: not for orphans
        exclusive(orphans=orphans, **{name: used})
    needs("--foreign", "--orphans (or swarm doctor)", given=foreign, present=orphans)
    needs("--idle", "--orphans (or swarm doctor)", given=idle is not None, present=orphans)
    repo = context_repo(ctx, empty_ok=True)
    if orphans:
        age = scan.parse_age("7d" if idle is None else idle)
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
    # A remote's URL with a password in it (the remote branches of a Ray run) is shown without.
    click.echo(redact(json.dumps(report.to_json(), indent=2) if as_json else clean_text(report)))
    return report.exit_code


@click.command("doctor", epilog=example("swarm doctor", "swarm doctor --yes"))
@_orphan_options
@click.option("--yes", is_flag=True, help="Fix what was found (the default is a dry run).")
@click.option("--dry-run", is_flag=True, help="Only say what --yes would fix (the default).")
@click.option("--force", is_flag=True, help="Also delete unmerged orphan branches.")
@click.option("--json", "as_json", is_flag=True, help="Stable JSON (see docs/clean.md).")
@click.pass_context
def doctor_cmd(
    ctx: click.Context,
    foreign: bool,
    idle: str | None,
    yes: bool,
    dry_run: bool,
    force: bool,
    as_json: bool,
) -> int:
    """Find orphaned worktrees, branches, processes and locks (= swarm clean --orphans)."""
    return int(
        ctx.invoke(
            clean_cmd,
            orphans=True,
            foreign=foreign,
            idle=idle,
            yes=yes,
            dry_run=dry_run,
            force=force,
            as_json=as_json,
        )
    )
