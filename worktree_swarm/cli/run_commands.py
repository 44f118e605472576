"""swarm run, retry, resume, stop and demo: a run validated and started, carried on, stopped.

How a run's manager then runs, here or in the background, is in ``manager.py``. Each command
imports what only it needs when it runs (see ``cli/__init__.py``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from worktree_swarm.cli.context import context_repo, say_wait
from worktree_swarm.cli.manager import detached, detached_spec, execute, run_spec, start
from worktree_swarm.cli.options import (
    NonEmptyPath,
    WholeNumber,
    example,
    exclusive,
    needs,
    overrides,
    paths_given,
    setting_options,
)
from worktree_swarm.core.errors import BadInputError, ExitCode, ManagerLockedError
from worktree_swarm.core.models import TaskState
from worktree_swarm.core.run_settings import Executor
from worktree_swarm.git import repo as git
from worktree_swarm.infra import proc
from worktree_swarm.infra.redact import redact
from worktree_swarm.report import run_info

if TYPE_CHECKING:
    from worktree_swarm.core.run_settings import RunSpec


@click.command(
    epilog=example(
        "swarm run tasks.toml --jobs 4",
        "swarm run -t fix-login='Fix the login redirect loop' --check 'pytest -q'",
        "swarm run --issues 12,15 --agent claude --detach",
    )
)
@click.argument("manifest", required=False, type=NonEmptyPath(path_type=Path))
@click.option("-t", "--task", "inline", multiple=True, metavar="ID=PROMPT", help="An inline task.")
@click.option(
    "--prompt-file", multiple=True, metavar="ID=FILE", help="A task whose prompt is a file."
)
@setting_options
@click.option("--issues", "issue_numbers", metavar="N,N,...", help="GitHub issues as tasks.")
@click.option("--issues-label", metavar="LABEL", help="Open GitHub issues with this label.")
@click.option("--limit", type=WholeNumber(1), help="At most this many issues.")
@click.option("--github-repo", metavar="OWNER/NAME", help="When the remote URL does not say.")
@click.option("--api-url", metavar="URL", help="GitHub API URL (Enterprise).")
@click.option("--detach", is_flag=True, help="Run the manager in the background.")
@click.option(
    "--force", is_flag=True, help="Abandon an unfinished run no manager runs (checkpointed)."
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Validate, print every task's settings as resolved (a manifest), create nothing.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON event per line.")
@click.option("--from-spec", type=NonEmptyPath(path_type=Path), hidden=True)
@click.pass_context
def run(
    ctx: click.Context,
    /,
    manifest: Path | None,
    inline: tuple[str, ...],
    prompt_file: tuple[str, ...],
    issue_numbers: str | None,
    issues_label: str | None,
    limit: int | None,
    github_repo: str | None,
    api_url: str | None,
    detach: bool,
    force: bool,
    dry_run: bool,
    as_json: bool,
    from_spec: Path | None,
    **flags: object,
) -> int:
    """Create a worktree per task, run the agents, checkpoint and check their work."""
    from worktree_swarm.agents import claude_auth
    from worktree_swarm.git import worktrees
    from worktree_swarm.guard.sandbox import check_available as require_sandbox
    from worktree_swarm.infra.lock import refuse_while_managed
    from worktree_swarm.run import disk_budget
    from worktree_swarm.run.run_worker import worktree_path

    exclusive(dry_run=dry_run, detach=detach)
    exclusive(dry_run=dry_run, force=force)  # --force abandons a run: a change
    repo = context_repo(ctx)
    if from_spec is not None:  # a detached manager: the task list its parent validated
        spec, checkout, base = detached_spec(from_spec)
        return run_spec(repo, spec, as_json=as_json, checkout=checkout, base=base)
    # An empty value is asked too (and refused below), not ignored.
    asked = issue_numbers is not None or issues_label is not None  # the options below shape it
    exclusive(issues=issue_numbers is not None, issues_label=issues_label is not None)
    for option, value in (("--limit", limit), ("--github-repo", github_repo)):
        needs(option, "--issues or --issues-label", given=value is not None, present=asked)
    needs("--api-url", "--issues or --issues-label", given=api_url is not None, present=asked)
    numbers: tuple[int, ...] = ()
    client = None
    if asked:
        from worktree_swarm.github import client as github
        from worktree_swarm.github import issues

        numbers = () if issue_numbers is None else issues.parse_issue_numbers(issue_numbers)
        issues.check_label(issues_label)

        if github_repo is None and not git.git(repo.root, "remote").split().count("origin"):
            raise BadInputError(
                "--issues reads the issues of remote origin's repository, and there is no"
                " remote origin here: add it (`git remote add origin URL`) or pass"
                " --github-repo OWNER/NAME"
            )
        client = github.connect(  # no request yet
            repo, remote="origin", github_repo=github_repo, api_url=api_url, on_wait=say_wait
        )
    with paths_given():
        # From a linked worktree of the user's, its HEAD is the base, not the main checkout's.
        checkout = git.checkout_root(Path(ctx.obj["dir"]))
        base = git.checkout_head(checkout)
    sources = _Sources(manifest=manifest, inline=inline, prompt_files=prompt_file, flags=flags)
    # All but the issues' text is checked before GitHub is asked: numbered issues stand in
    # as placeholder tasks under their ids; a label's are not known yet.
    placeholders = [(f"issue-{n}", f"GitHub issue #{n}", "") for n in dict.fromkeys(numbers)]
    spec = sources.checked(repo, checkout, placeholders, issues_to_come=issues_label is not None)
    if client is not None:
        from worktree_swarm.github import issues

        extra = issues.fetch_issue_tasks(client, numbers=numbers, label=issues_label, limit=limit)
        spec = sources.checked(repo, checkout, extra)
    if spec.executor is Executor.RAY:
        from worktree_swarm.run import ray_preflight

        ray_preflight.preflight(repo, spec)
    elif spec.sandbox:
        require_sandbox()
    claude_auth.require_signed_in(((t.agent, dict(t.env)) for t in spec.tasks), os.environ)
    proc.require_open_files()
    next_step = _settle_orphaned_runs(repo, force=force)
    refuse_while_managed(repo.state_dir)  # exit 3 naming it, before its tasks' branches
    items = [(t.branch, worktree_path(spec, t)) for t in spec.tasks]
    worktrees.preflight(repo, items, next_step=next_step)
    disk_budget.preflight(repo, spec, base)
    if dry_run:
        worktrees_of = {t.id: worktree_path(spec, t) for t in spec.tasks}
        return _dry_run(repo, spec, worktrees_of, base=base, checkout=checkout, as_json=as_json)
    return start(ctx, repo, spec, detach=detach, as_json=as_json, checkout=checkout, base=base)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Sources:
    """Where `swarm run` takes its tasks and settings from, besides GitHub's issues."""

    manifest: Path | None
    inline: tuple[str, ...]
    prompt_files: tuple[str, ...]
    flags: Mapping[str, object]

    def checked(
        self,
        repo: git.Repo,
        checkout: Path,
        extra: Sequence[tuple[str, str, str]],
        *,
        issues_to_come: bool = False,
    ) -> RunSpec:
        """The run with the *extra* tasks, validated as far as it can be before it starts."""
        from worktree_swarm.config.manifest import build_run_spec
        from worktree_swarm.git import local_files, worktree_root

        with paths_given():
            spec = build_run_spec(
                repo_root=repo.root,
                manifest=self.manifest,
                inline=self.inline,
                prompt_files=self.prompt_files,
                overrides=overrides(self.flags),
                extra_tasks=extra,
                issues_to_come=issues_to_come,
            )
            if spec.worktree_root is not None:
                worktree_root.check_worktree_root(repo, spec.worktree_root, checkout=checkout)
            for task in spec.tasks:
                local_files.check_copy(repo.root, task.copy)  # no symlink out of it, all readable
        return spec


def _dry_run(
    repo: git.Repo,
    spec: RunSpec,
    worktrees: dict[str, Path],
    *,
    base: str,
    checkout: Path,
    as_json: bool,
) -> int:
    """Print the run `swarm run` would start (validated: nothing was created)."""
    from worktree_swarm.config import resolved

    run_info.know_secrets_of(repo.root, spec.tasks)  # one repeated in a check or a prompt
    if as_json:
        settings = resolved.run_settings(spec)
        tasks = [
            {**resolved.task_settings(t), "branch": t.branch, "worktree": str(worktrees[t.id])}
            for t in spec.tasks
        ]
        payload = {"base": base, "checkout": str(checkout), "settings": settings, "tasks": tasks}
        click.echo(redact(json.dumps(payload, indent=2)))
        return ExitCode.OK
    header = (
        f"swarm run --dry-run: {len(spec.tasks)} task(s) from {checkout} at {base[:12]}, every"
        " setting as the run would start with it (environment values not shown); nothing was"
        " created"
    )
    click.echo(redact(resolved.as_manifest(spec, worktrees=worktrees, header=header)), nl=False)
    return ExitCode.OK


def _err(line: str) -> None:
    click.echo(line, err=True)


def _settle_orphaned_runs(repo: git.Repo, *, force: bool) -> Callable[[str], str | None]:
    from worktree_swarm.run import runs

    abandoned, next_step = runs.settle_before_run(repo, force=force, tell=_err)
    for run_id in abandoned:
        click.echo(f"abandoned run {run_id} (its work checkpointed)", err=True)
    return next_step


@click.command(
    "retry",
    epilog=example(
        "swarm retry", "swarm retry fix-login --fresh", "swarm retry --run 20260101-020304-ab12"
    ),
)
@click.argument("task_ids", nargs=-1, metavar="[TASK]...")
@click.option("--run", "run_id", help="A run id (default: the latest run).")
@click.option("--fresh", is_flag=True, help="Start over from the base instead of the branch.")
@click.option("--json", "as_json", is_flag=True, help="One JSON event per line.")
@click.pass_context
def retry_cmd(
    ctx: click.Context, task_ids: tuple[str, ...], run_id: str | None, fresh: bool, as_json: bool
) -> int:
    """Run a run's failed, stopped or timed-out tasks again, in their kept worktrees."""
    from worktree_swarm.infra.lock import (
        ManagerLock,
        manager_alive,
        merge_lock_if_free,
        merge_running,
    )
    from worktree_swarm.run import retry
    from worktree_swarm.run.runner import Runner

    repo = context_repo(ctx, empty_ok=True)
    proc.require_open_files()
    with run_info.open_store(repo) as store, ManagerLock(repo.state_dir) as lock:
        run_id = run_info.resolve_run(store, run_id)
        retry.check_known(store, run_id, task_ids)  # before the lock writes its record
        # Refused before the lock too (its record rewritten, nor a merge lock file left) while
        # no manager or merge can change what is decided; under it again, as they may start.
        if not manager_alive(repo.state_dir) and not merge_running(repo.state_dir):
            retry.check_retryable(repo, store, run_id, task_ids, fresh=fresh)
        lock.acquire(run_id=run_id)
        if not merge_running(repo.state_dir):  # refused here, no merge lock file is left
            retry.check_retryable(repo, store, run_id, task_ids, fresh=fresh)
        # A merge in its checks holds a task's result as `checking` (a killed one's is undone
        # by the next merge): reset under it, its record would call the retried work merged.
        with merge_lock_if_free(repo.state_dir) as free:
            if not free:
                raise ManagerLockedError(
                    f"a `swarm merge` is running in {repo.root}; retry once it has finished"
                )
            picked = retry.prepare(repo, store, run_id, task_ids, fresh=fresh)
        if picked:
            click.echo(f"retrying {', '.join(picked)} in run {run_id}", err=True)
        return execute(
            store,
            lambda observer: Runner.resume(
                repo=repo, store=store, run_id=str(run_id), observer=observer
            ),
            as_json=as_json,
        )


@click.command("resume", epilog=example("swarm resume", "swarm resume --run 20260101-020304-ab12"))
@click.option("--run", "run_id", help="A run id (default: the latest run).")
@click.option("--json", "as_json", is_flag=True, help="One JSON event per line.")
@click.option("--detach", is_flag=True, help="Run the resumed manager in the background.")
@click.pass_context
def resume_cmd(ctx: click.Context, run_id: str | None, as_json: bool, detach: bool) -> int:
    """After the manager died: adopt live agents, recover dead ones, carry on."""
    from worktree_swarm.infra.lock import ManagerLock
    from worktree_swarm.run import background, control
    from worktree_swarm.run.runner import Runner

    repo = context_repo(ctx, empty_ok=True)
    proc.require_open_files()
    with run_info.open_store(repo) as store, ManagerLock(repo.state_dir) as lock:
        run_id = run_info.resolve_run(store, run_id)
        lock.acquire(run_id=run_id)
        # Its manager died after the last task ended (or `swarm doctor` stopped them all):
        # the run ends here, so that a new `swarm run` is not refused for it.
        if control.end_if_final(repo, store, run_id):
            click.echo(f"run {run_id} has finished; nothing to resume (`swarm status` shows it)")
            ok = all(row.state is TaskState.DONE for row in store.tasks(run_id))
            return ExitCode.OK if ok else ExitCode.TASK_FAILED
        if detach:  # checked here, resumed by a manager of its own session (the lock let go)
            lock.release()
            argv = ["--debug"] if ctx.obj["debug"] else []
            argv += ["-C", str(repo.root), "resume", "--run", str(run_id)]
            pid, log = background.detach(repo, [*argv, *(["--json"] if as_json else [])])
            return detached(pid, log, as_json=as_json)
        return execute(
            store,
            lambda observer: Runner.resume(
                repo=repo, store=store, run_id=str(run_id), observer=observer
            ),
            as_json=as_json,
        )


@click.command(
    epilog=example("swarm stop fix-login", "swarm stop   # every task of the latest run")
)
@click.argument("task_ids", nargs=-1, metavar="[TASK]...")
@click.option("--run", "run_id", help="A run id (default: the latest run).")
@click.pass_context
def stop(ctx: click.Context, task_ids: tuple[str, ...], run_id: str | None) -> int:
    """Stop agents (whole process trees) and keep their work on their branches."""
    from worktree_swarm.run import control

    repo = context_repo(ctx, empty_ok=True)
    with run_info.open_store(repo) as store:
        run_id = run_info.resolve_run(store, run_id)
        done = control.stop(repo, store, run_id, task_ids, tell=_err)
    said = [f"stopped: {', '.join(done.tasks)}"] if done.tasks else []
    if done.put_back:  # changed while no manager watched (its line on stderr says by whom)
        said = said or ["no agent was left to stop"]
        said.append(f"put back git's own files {', '.join(done.put_back)}")
    click.echo("; ".join(said) or "nothing to stop")
    return ExitCode.OK


@click.command("demo", epilog=example("swarm demo --keep"))
@click.option("--keep", is_flag=True, help="Keep the throwaway repository and print its path.")
@click.option("-j", "--jobs", type=WholeNumber(1), default=2, show_default=True)
def demo_cmd(keep: bool, jobs: int) -> int:
    """Run a few scripted tasks in a throwaway repository (no API key needed)."""
    from worktree_swarm import demo

    git.require_git()
    result = demo.run_demo(jobs=jobs, keep=keep, echo=click.echo)
    return ExitCode.OK if result.ok else ExitCode.TASK_FAILED
