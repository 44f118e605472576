"""swarm diff, merge and pr: see the tasks' branches, merge them, open their pull requests.

Each command imports what only it needs when it runs (see ``cli/__init__.py``).
"""

from __future__ import annotations

import json

import click

from worktree_swarm.cli.context import context_repo, say_wait, store_to_read, your_checkout
from worktree_swarm.cli.options import example, exclusive, needs
from worktree_swarm.core.errors import ExitCode
from worktree_swarm.core.text import lone_returns_shown, path_text, printable, without_escapes
from worktree_swarm.infra.redact import redact, redact_data
from worktree_swarm.report import run_info


@click.command("diff", epilog=example("swarm diff --stat", "swarm diff fix-login"))
@click.argument("task_ids", nargs=-1, metavar="[TASK]...")
@click.option("--run", "run_id", help="A run id (default: the latest run).")
@click.option("--stat", is_flag=True, help="A diffstat per task instead of patches.")
@click.option("--name-only", is_flag=True, help="Changed files per task.")
@click.option("--json", "as_json", is_flag=True, help="Stable JSON (see docs/merge.md).")
@click.pass_context
def diff_cmd(
    ctx: click.Context,
    task_ids: tuple[str, ...],
    run_id: str | None,
    stat: bool,
    name_only: bool,
    as_json: bool,
) -> int:
    """Each task's branch against its own base (three-dot), with the task's outcome."""
    from worktree_swarm.merge import diff

    exclusive(stat=stat, name_only=name_only, json=as_json)
    repo = context_repo(ctx, empty_ok=True)
    with store_to_read(repo) as store:
        run_id = run_info.resolve_run(store, run_id)
        diffs = diff.task_diffs(repo, store, run_id, task_ids)
        for d in diffs:  # the secrets of their `env` and `copy` files are redacted too
            run_info.know_task_secrets(repo, store, run_id, d.task_id)
    if as_json:
        # A file's name can be a key as well as what it holds.
        shown = redact_data({"run_id": run_id, "tasks": [d.to_json() for d in diffs]})
        click.echo(json.dumps(shown, indent=2))
        return ExitCode.OK
    if name_only:
        for d in diffs:
            click.echo(diff.format_header(d))
            click.echo("".join(f"  {redact(path_text(f.path))}\n" for f in d.files), nl=False)
        return ExitCode.OK
    for d, text in diff.patches(repo, diffs, stat=stat):
        click.echo(diff.format_header(d))
        # A key on the branch is shown where it is, not what; an escape sequence in a file
        # (a clipboard write, a cleared screen) never reaches your terminal, nor a carriage
        # return that would draw one part of a line over another.
        shown = lone_returns_shown(redact(without_escapes(text)))
        click.echo(printable(shown, keep="\n\t\r"), nl=False)
    return ExitCode.OK


@click.command(
    "merge",
    epilog=example(
        "swarm merge --dry-run",
        "swarm merge --check 'pytest -q'",
        "swarm merge --into release fix-login login-tests",
    ),
)
@click.argument("task_ids", nargs=-1, metavar="[TASK]...")
@click.option("--run", "run_id", help="A run id (default: the latest run).")
@click.option("--into", metavar="BRANCH", help="Merge into this branch (not checked out anywhere).")
@click.option(
    "--strategy",
    type=click.Choice(["merge", "squash"]),
    default="merge",
    show_default=True,
    help="merge: a merge commit per task; squash: one squashed commit per task.",
)
@click.option("--check", "checks", multiple=True, metavar="CMD", help="Run after each merge.")
@click.option("--dry-run", is_flag=True, help="Only predict conflicts and the order.")
@click.option("--resolve", is_flag=True, help="Hand conflicts to the task's agent, then check.")
@click.option(
    "--allow-outside-writes",
    is_flag=True,
    help="Record what resolvers and checks write outside the merge, but keep it and merge on.",
)
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
    allow_outside_writes: bool,
    as_json: bool,
) -> int:
    """Predict conflicts, merge done task branches in a safe order, check after each merge."""
    from worktree_swarm.merge import merge
    from worktree_swarm.ui import merge_text

    # A dry run only predicts: it would neither check nor resolve, whatever was asked.
    needs("--check", "a merge (not --dry-run)", given=bool(checks), present=not dry_run)
    needs("--resolve", "a merge (not --dry-run)", given=resolve, present=not dry_run)
    needs(
        "--allow-outside-writes",
        "a merge (not --dry-run)",
        given=allow_outside_writes,
        present=not dry_run,
    )
    repo = context_repo(ctx, empty_ok=True)
    # SIGTERM is Ctrl-C (main): a resolver or check being waited for is killed with its tree.
    with run_info.open_store(repo) as store:
        report = merge.merge(
            repo,
            store,
            run_info.resolve_run(store, run_id),
            task_ids=task_ids,
            into=into,
            strategy=merge.Strategy(strategy),
            checks=checks,
            dry_run=dry_run,
            resolve=resolve,
            allow_outside_writes=allow_outside_writes,
            progress=None if as_json else merge_text.MergeEcho(_shown_line),
            checkout=your_checkout(ctx, repo),
        )
    if as_json:
        click.echo(json.dumps(redact_data(report.to_json()), indent=2))
    else:
        for line in merge_text.merge_summary(report):
            _shown_line(line)
    return ExitCode.OK if report.ok else ExitCode.TASK_FAILED


def _shown_line(line: str) -> None:
    """Echo one line of a command's that can quote a branch's files or a program's output.

    Redacted, printable only, one line: a file name or a check's output can hold a secret, an
    escape sequence or a newline that would forge a line of its own.
    """
    click.echo(printable(redact(without_escapes(line)), keep=""))


@click.command("pr", epilog=example("swarm pr", "swarm pr fix-login --draft"))
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
    from worktree_swarm.github import pr

    repo = context_repo(ctx, empty_ok=True)
    with run_info.open_store(repo) as store:
        report = pr.push_and_open(
            repo,
            store,
            run_info.resolve_run(store, run_id),
            task_ids=task_ids,
            remote=remote,
            base=base,
            draft=draft,
            github_repo=github_repo,
            api_url=api_url,
            echo=click.echo,
            on_wait=say_wait,
            checkout=your_checkout(ctx, repo),
        )
    return ExitCode.OK if report.ok else ExitCode.TASK_FAILED
