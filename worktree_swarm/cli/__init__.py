"""The `swarm` command: parse flags, call the library, map outcomes to exit codes."""

from __future__ import annotations

import ast
import contextlib
import errno
import functools
import getpass
import io
import json
import os
import pwd
import signal
import stat
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from worktree_swarm.config.settings import FLAGGED
from worktree_swarm.core.errors import (
    BadInputError,
    CommandError,
    ExitCode,
    ManagerLockedError,
    SwarmError,
)
from worktree_swarm.core.models import BRANCH_PREFIX, Executor, TaskState
from worktree_swarm.core.paths import run_dir, store_path
from worktree_swarm.core.settings import Kind, Setting
from worktree_swarm.core.text import (
    is_utf8,
    lone_returns_shown,
    path_text,
    printable,
    without_escapes,
)
from worktree_swarm.git import repo as git
from worktree_swarm.infra import faults, logtail, proc
from worktree_swarm.infra.redact import RedactingWriter, redact, redact_data
from worktree_swarm.report import status
from worktree_swarm.ui import status_text

if TYPE_CHECKING:
    from worktree_swarm.config.manifest import Overrides
    from worktree_swarm.core.models import RunSpec
    from worktree_swarm.infra.store import Store
    from worktree_swarm.run.runner import Observer, Runner

# Each command imports what only it needs when it runs (the runner, the manifest reader,
# rich's live table, ...): this module imports in ~140 ms instead of ~330, which `swarm status`
# and the other quick commands feel, and so do the hundreds of `swarm` processes of the tests.


def _example(*lines: str) -> str:
    """A command's help epilog: example command lines, kept as typed (no rewrapping)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


def _setting_options(command: Callable[..., int]) -> Callable[..., int]:
    """One option per setting that has a flag (the settings table: ``core/settings.py``)."""
    for entry in reversed(FLAGGED):  # click lists options in the reverse order of decoration
        flag = entry.flag
        if flag is None:
            continue
        names = [name for name in (flag.short, flag.name) if name]
        options: dict[str, Any] = {"help": flag.help}
        if flag.metavar:
            options["metavar"] = flag.metavar
        # Every one may be given any number of times: once is a setting, twice bad input
        # (`-j 2 -j 3`, `--sandbox --no-sandbox`: never decided by which came last).
        options["multiple"], options["default"] = True, ()
        if entry.kind is Kind.BOOL:
            if flag.negatable:
                names[-1] = f"{flag.name}/--no-{flag.name.removeprefix('--')}"
            else:
                options["is_flag"] = True
        elif entry.kind is Kind.INT:
            options["type"] = click.IntRange(min=entry.minimum, max=entry.maximum)
        elif entry.kind in {Kind.NUMBER, Kind.SHARE}:
            options["type"] = float
        elif entry.kind is Kind.CHOICE and entry.choices is not None and not flag.metavar:
            options["metavar"] = f"[{'|'.join(choice.value for choice in entry.choices)}]"
        command = click.option(*names, entry.key, **options)(command)
    return command


def _overrides(flags: Mapping[str, object]) -> Overrides:
    """The settings given by the options of `_setting_options` (the others are not given)."""
    from worktree_swarm.config.manifest import Overrides

    return Overrides(**{entry.key: _given(entry, flags.get(entry.key)) for entry in FLAGGED})


def _given(entry: Setting, value: object) -> object:
    """A setting option's value, None when not given; BadInputError when given twice.

    A list setting's option is repeatable: its values, in order.
    """
    values = tuple(value) if isinstance(value, tuple | list) else ()
    if entry.kind.is_list:
        return values or None
    if len(values) > 1 and entry.flag is not None:
        name = entry.flag.name
        if entry.kind is Kind.BOOL:  # as typed: --sandbox, --no-sandbox
            said = dict.fromkeys(name if v else f"--no-{name.removeprefix('--')}" for v in values)
            if len(said) > 1:
                raise BadInputError(f"{' and '.join(said)} exclude each other; give one of them")
            raise BadInputError(f"{next(iter(said))} given {len(values)} times; give it once")
        shown = ", ".join(str(v) for v in values)
        raise BadInputError(f"{name} given {len(values)} times ({shown}); give it once")
    return values[0] if values else None


def _exclusive(**given: bool) -> None:
    """Refuse options that exclude each other; *given* maps each option's name to its use."""
    used = [f"--{name.replace('_', '-')}" for name, on in given.items() if on]
    if len(used) > 1:
        raise BadInputError(f"{' and '.join(used)} exclude each other; give one of them")


class _Path(click.Path):
    """A path argument that is not empty: ``""`` would be taken for ``.`` (named as such).

    Not ``-C``: ``-C ""`` is the directory you are in, as git has it.
    """

    def convert(  # click's own signature
        self,
        value: Any,  # noqa: ANN401
        param: click.Parameter | None,
        ctx: click.Context | None,
    ) -> Any:  # noqa: ANN401
        if value == "":
            self.fail("an empty path; name one", param, ctx)
        return super().convert(value, param, ctx)


@contextlib.contextmanager
def _paths_given() -> Iterator[None]:
    """A path you gave (a setting, a flag) with a name too long is bad input, not a crash.

    Python's ``is_dir()`` and ``is_file()`` say False for a missing file but raise this.
    """
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            raise
        name = exc.filename or "a path"
        raise BadInputError(f"{name}: {exc.strerror}; give a shorter path") from None


def _needs(option: str, needed: str, *, given: bool, present: bool) -> None:
    """Refuse *option*, when *given*, unless *needed* is *present* (it would do nothing)."""
    if given and not present:
        raise BadInputError(f"{option} works only with {needed}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, invoke_without_command=True)
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
    if ctx.invoked_subcommand is None:
        commands = ", ".join(cli.list_commands(ctx))
        raise BadInputError(f"no command given; one of: {commands} (`swarm --help` says more)")
    if directory != Path():  # as git's -C: relative paths (a manifest, --html) are read from it
        try:
            os.chdir(directory)
        except OSError as exc:
            raise BadInputError(f"-C {str(directory)!r}: {exc.strerror or exc}") from None
    ctx.ensure_object(dict)
    ctx.obj.update({"dir": Path(), "debug": debug})


def _store_to_read(repo: git.Repo) -> Store:
    """The store for a command that only looks; on a full disk, as last written (said once)."""
    store = status.open_store(repo, to_read=True)
    if store.read_only:
        click.echo(f"note: the disk is full; showing {store.path} as last written", err=True)
    return store


def _repo(ctx: click.Context) -> git.Repo:
    git.require_git()
    return git.open_repo(Path(ctx.obj["dir"]))


def _your_checkout(ctx: click.Context, repo: git.Repo) -> Path:
    """The checkout of yours swarm runs in: a linked worktree of yours, else the main one.

    Not one of swarm's (a task's worktree, the integration worktree, on a ``swarm/`` branch):
    a merge built on a task's work, or pull requests into a task's branch, are nobody's.
    """
    checkout = git.checkout_root(Path(ctx.obj["dir"]))
    branch = git.current_branch(repo, checkout) or ""
    return repo.root if branch.startswith(BRANCH_PREFIX) else checkout


@cli.command(
    epilog=_example(
        "swarm run tasks.toml --jobs 4",
        "swarm run -t fix-login='Fix the login redirect loop' --check 'pytest -q'",
        "swarm run --issues 12,15 --agent claude --detach",
    )
)
@click.argument("manifest", required=False, type=_Path(path_type=Path))
@click.option("-t", "--task", "inline", multiple=True, metavar="ID=PROMPT", help="An inline task.")
@click.option(
    "--prompt-file", multiple=True, metavar="ID=FILE", help="A task whose prompt is a file."
)
@_setting_options
@click.option("--issues", "issue_numbers", metavar="N,N,...", help="GitHub issues as tasks.")
@click.option("--issues-label", metavar="LABEL", help="Open GitHub issues with this label.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many issues.")
@click.option("--github-repo", metavar="OWNER/NAME", help="When the remote URL does not say.")
@click.option("--api-url", metavar="URL", help="GitHub API URL (Enterprise).")
@click.option("--detach", is_flag=True, help="Run the manager in the background.")
@click.option(
    "--force", is_flag=True, help="Abandon an unfinished run whose manager died (checkpointed)."
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Validate, print every task's settings as resolved (a manifest), create nothing.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON event per line.")
@click.option("--from-spec", type=_Path(path_type=Path), hidden=True)
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
    from worktree_swarm.config.manifest import build_run_spec
    from worktree_swarm.git import worktrees
    from worktree_swarm.guard.sandbox import check_available as require_sandbox
    from worktree_swarm.infra.lock import refuse_while_managed
    from worktree_swarm.run import disk_budget
    from worktree_swarm.run.run_worker import worktree_path

    _exclusive(dry_run=dry_run, detach=detach)
    _exclusive(dry_run=dry_run, force=force)  # --force abandons a run: a change
    repo = _repo(ctx)
    if from_spec is not None:  # a detached manager: the task list its parent validated
        spec, checkout, base = _detached_spec(from_spec)
        return _run_spec(repo, spec, as_json=as_json, checkout=checkout, base=base)
    # An empty value is asked too (and refused below), not ignored.
    asked = issue_numbers is not None or issues_label is not None  # the options below shape it
    for option, value in (("--limit", limit), ("--github-repo", github_repo)):
        _needs(option, "--issues or --issues-label", given=value is not None, present=asked)
    _needs("--api-url", "--issues or --issues-label", given=api_url is not None, present=asked)
    extra: list[tuple[str, str, str]] = []
    if asked:
        from worktree_swarm.github import client as github
        from worktree_swarm.github import issues

        numbers = () if issue_numbers is None else issues.parse_issue_numbers(issue_numbers)
        issues.check_label(issues_label)  # before anything is asked of GitHub

        if github_repo is None and not git.git(repo.root, "remote").split().count("origin"):
            raise BadInputError(
                "--issues reads the issues of remote origin's repository, and there is no"
                " remote origin here: add it (`git remote add origin URL`) or pass"
                " --github-repo OWNER/NAME"
            )
        client = github.connect(
            repo, remote="origin", github_repo=github_repo, api_url=api_url, on_wait=_say_wait
        )
        extra = issues.fetch_issue_tasks(client, numbers=numbers, label=issues_label, limit=limit)
    with _paths_given():
        spec = build_run_spec(
            repo_root=repo.root,
            manifest=manifest,
            inline=inline,
            prompt_files=prompt_file,
            overrides=_overrides(flags),
            extra_tasks=extra,
        )
        # From a linked worktree of the user's, its HEAD is the base, not the main checkout's.
        checkout = git.checkout_root(Path(ctx.obj["dir"]))
        base = git.checkout_head(checkout)
        if spec.worktree_root is not None:
            worktrees.check_worktree_root(repo, spec.worktree_root, checkout=checkout)
        for task in spec.tasks:
            worktrees.check_copy(repo.root, task.copy)  # no symlink out of it, all readable
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
    return _start(ctx, repo, spec, detach=detach, as_json=as_json, checkout=checkout, base=base)


def _start(
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
    return _run_spec(repo, spec, as_json=as_json, checkout=checkout, base=base)


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

    status.know_secrets_of(repo.root, spec.tasks)  # one repeated in a check or a prompt
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


def _detached_spec(path: Path) -> tuple[RunSpec, Path, str]:
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
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        saved = {"spec": json.loads(spec_to_json(spec)), "checkout": str(checkout), "base": base}
        fh.write(json.dumps(saved))
    argv = ["--debug"] if ctx.obj["debug"] else []
    argv += ["-C", str(repo.root), "run", "--from-spec", name]
    argv += ["--json"] if as_json else []
    try:
        pid, log = background.detach(repo, argv)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return _detached(pid, log, as_json=as_json)


def _detached(pid: int, log: Path, *, as_json: bool) -> int:
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


def _run_spec(repo: git.Repo, spec: RunSpec, *, as_json: bool, checkout: Path, base: str) -> int:
    from worktree_swarm.git import worktrees
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
                outer := worktrees.seen_by_another_checkout(repo, spec.worktree_root)
            ):
                click.echo(
                    f"note: the worktrees go in {spec.worktree_root}, inside the checkout of"
                    f" {outer}, which does not ignore it: a swarm run there at the same time"
                    " would take them for its agents' writes (ignore it there, or set"
                    " worktree_root)",
                    err=True,
                )
            return _execute(
                store,
                lambda observer: Runner.create(
                    repo=repo, spec=spec, store=store, observer=observer, base=base
                ),
                as_json=as_json,
            )


def _uncommitted(checkout: Path) -> bool:
    """Whether *checkout* has changes besides the file this run's output goes to."""
    own = {path.resolve() for path in proc.output_files()}
    return any((checkout / path).resolve() not in own for path in git.status_paths(checkout))


def _settle_orphaned_runs(repo: git.Repo, *, force: bool) -> Callable[[str], str | None]:
    from worktree_swarm.run import runs

    abandoned, next_step = runs.settle_before_run(repo, force=force)
    for run_id in abandoned:
        click.echo(f"abandoned run {run_id} (its work checkpointed)", err=True)
    return next_step


@cli.command("runs", epilog=_example("swarm runs", "swarm runs --json"))
@click.option("--json", "as_json", is_flag=True, help="Stable JSON (see README).")
@click.pass_context
def runs_cmd(ctx: click.Context, as_json: bool) -> int:
    """List the recorded runs: id, start, state, task counts."""
    from worktree_swarm.run import runs

    repo = _repo(ctx)
    summaries: list[runs.RunSummary] = []
    if status.has_store(repo):  # none yet: an empty list, as after `clean --all`
        with _store_to_read(repo) as store:
            summaries = runs.list_runs(store)
    if as_json:
        click.echo(json.dumps({"runs": [s.to_json() for s in summaries]}, indent=2))
    else:
        for line in runs.format_runs(summaries):
            click.echo(line)
    return ExitCode.OK


@cli.command(
    "retry",
    epilog=_example(
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
    from worktree_swarm.infra.lock import ManagerLock, merge_lock_if_free
    from worktree_swarm.run import retry
    from worktree_swarm.run.runner import Runner

    repo = _repo(ctx)
    proc.require_open_files()
    with status.open_store(repo) as store, ManagerLock(repo.state_dir) as lock:
        run_id = status.resolve_run(store, run_id)
        retry.check_known(store, run_id, task_ids)  # before the lock writes its record
        lock.acquire(run_id=run_id)
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
        return _execute(
            store,
            lambda observer: Runner.resume(
                repo=repo, store=store, run_id=str(run_id), observer=observer
            ),
            as_json=as_json,
        )


@cli.command("resume", epilog=_example("swarm resume", "swarm resume --run 20260101-020304-ab12"))
@click.option("--run", "run_id", help="A run id (default: the latest run).")
@click.option("--json", "as_json", is_flag=True, help="One JSON event per line.")
@click.option("--detach", is_flag=True, help="Run the resumed manager in the background.")
@click.pass_context
def resume_cmd(ctx: click.Context, run_id: str | None, as_json: bool, detach: bool) -> int:
    """After the manager died: adopt live agents, recover dead ones, carry on."""
    from worktree_swarm.infra.lock import ManagerLock
    from worktree_swarm.run import background, control
    from worktree_swarm.run.runner import Runner

    repo = _repo(ctx)
    proc.require_open_files()
    with status.open_store(repo) as store, ManagerLock(repo.state_dir) as lock:
        run_id = status.resolve_run(store, run_id)
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
            return _detached(pid, log, as_json=as_json)
        return _execute(
            store,
            lambda observer: Runner.resume(
                repo=repo, store=store, run_id=str(run_id), observer=observer
            ),
            as_json=as_json,
        )


def _execute(store: Store, make: Callable[[Observer], Runner], *, as_json: bool) -> int:
    from worktree_swarm.ui.live import output_gone

    with _observer(store, as_json=as_json) as observer:
        runner = make(observer)
        states = runner.execute()  # SIGTERM interrupts it as Ctrl-C does (main)
    if not as_json:
        try:
            _print_summary(store, runner.run_id)
        except OSError:  # no one reads it any more: how the tasks ended decides the exit code
            output_gone(sys.stdout)
    ok = all(s is TaskState.DONE for s in states.values())
    return ExitCode.OK if ok else ExitCode.TASK_FAILED


@contextlib.contextmanager
def _observer(store: Store, *, as_json: bool) -> Iterator[Observer]:
    from worktree_swarm.ui.live import LiveTable, PlainObserver

    if as_json or not sys.stdout.isatty():
        yield PlainObserver(as_json=as_json)
        return
    with LiveTable(store) as table:
        yield table


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM, and SIGHUP (the terminal closed), interrupt the command as Ctrl-C does.

    A SIGHUP that is ignored (``nohup``) stays ignored. After a hangup what is still said on
    the terminal goes nowhere: writing there fails, and would cut the stop short.
    """

    def handler(signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            _away_from_terminal()
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach the main thread only (a command called from a thread)
        return
    caught = [signal.SIGTERM]
    if signal.getsignal(signal.SIGHUP) is signal.SIG_DFL:
        caught.append(signal.SIGHUP)
    previous = {signum: signal.signal(signum, handler) for signum in caught}
    try:
        yield
    finally:
        for signum, action in previous.items():
            signal.signal(signum, action)


def _away_from_terminal() -> None:
    """Point stdout and stderr, where they are a terminal, at /dev/null.

    Told by the kind of file (a character device), not by asking the terminal, which may
    not answer once hung up.
    """
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in (1, 2):
            with contextlib.suppress(OSError):
                if stat.S_ISCHR(os.fstat(fd).st_mode):
                    os.dup2(null, fd)
    finally:
        os.close(null)


def _print_summary(store: Store, run_id: str) -> None:
    click.echo(status_text.run_summary(run_id, status.task_status(store, run_id)))


@cli.command("status", epilog=_example("swarm status", 'swarm status --json | jq ".tasks[].state"'))
@click.option("--run", "run_id", help="A run id (default: the latest run).")
@click.option("--json", "as_json", is_flag=True, help="Stable JSON (see README).")
@click.pass_context
def status_cmd(ctx: click.Context, run_id: str | None, as_json: bool) -> int:
    """One row per task: state, attempt, pid, alive, elapsed, diff stat, branch, worktree."""
    repo = _repo(ctx)
    with _store_to_read(repo) as store:
        run_id = status.resolve_run(store, run_id)
        rows = status.task_status(store, run_id, disk=True, repo=repo)
        failed_scans = status.guard_errors(store, run_id)
        put_back = status.remote_refs_put_back(store, run_id)
        gates = status.provider_gates(store, run_id)
        manager = status.manager_status(repo, store, run_id)
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


@cli.command(epilog=_example("swarm logs fix-login -f"))
@click.argument("task_id", metavar="TASK")
@click.option("-f", "--follow", is_flag=True, help="Keep printing while the agent runs.")
@click.option("--run", "run_id", help="A run id (default: the latest run).")
@click.pass_context
def logs(ctx: click.Context, task_id: str, follow: bool, run_id: str | None) -> int:
    """Print the agent's output (newest attempt)."""
    repo = _repo(ctx)
    with _store_to_read(repo) as store:
        run_id = status.resolve_run(store, run_id)
        path, attempt = status.log_path(store, run_id, task_id)
        status.know_task_secrets(repo, store, run_id, task_id)  # while it runs the log is raw
        # Whole lines through the redactor, so a secret is never split across two writes.
        out = RedactingWriter(sys.stdout.buffer)
        ended = functools.partial(_attempt_ended, store, run_id, attempt.id) if follow else None
        try:
            logtail.copy_log(path, out, ended=ended)
        except OSError as exc:  # a pipe or a link an agent left in its place
            raise SwarmError(f"{path}: not read ({exc.strerror or exc})") from None
    return ExitCode.OK


def _attempt_ended(store: Store, run_id: str, attempt_id: int) -> bool:
    """Whether the attempt followed has ended: recorded so, or its agent gone unwatched.

    With no manager of the run alive nothing records its end until a `swarm resume` or
    `swarm stop`: a follower stops once the agent's process is gone.
    """
    from worktree_swarm.core.models import ProcessIdentity
    from worktree_swarm.infra import supervisor

    attempt = next((a for a in store.attempts(run_id) if a.id == attempt_id), None)
    if attempt is None or attempt.ended_at is not None:
        return True
    run = store.get_run(run_id)
    if run is None or status.manager_running(run):
        return False
    agent = ProcessIdentity(pid=attempt.pid, create_time=attempt.create_time, pgid=attempt.pgid)
    return not supervisor.is_alive(agent)


@cli.command(epilog=_example("swarm stop fix-login", "swarm stop   # every task of the latest run"))
@click.argument("task_ids", nargs=-1, metavar="[TASK]...")
@click.option("--run", "run_id", help="A run id (default: the latest run).")
@click.pass_context
def stop(ctx: click.Context, task_ids: tuple[str, ...], run_id: str | None) -> int:
    """Stop agents (whole process trees) and keep their work on their branches."""
    from worktree_swarm.run import control

    repo = _repo(ctx)
    with status.open_store(repo) as store:
        run_id = status.resolve_run(store, run_id)
        stopped = control.stop(repo, store, run_id, task_ids)
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing to stop")
    return ExitCode.OK


@cli.command("watch", epilog=_example("swarm watch", "swarm watch --run 20260101-020304-ab12"))
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
    repo = _repo(ctx)
    watch.watch(repo, run_id, checkout=_your_checkout(ctx, repo))
    return ExitCode.OK


@cli.command("demo", epilog=_example("swarm demo --keep"))
@click.option("--keep", is_flag=True, help="Keep the throwaway repository and print its path.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=2, show_default=True)
def demo_cmd(keep: bool, jobs: int) -> int:
    """Run a few scripted tasks in a throwaway repository (no API key needed)."""
    from worktree_swarm import demo

    git.require_git()
    result = demo.run_demo(jobs=jobs, keep=keep, echo=click.echo)
    return ExitCode.OK if result.ok else ExitCode.TASK_FAILED


# -- diff / merge commands --


@cli.command("diff", epilog=_example("swarm diff --stat", "swarm diff fix-login"))
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

    _exclusive(stat=stat, name_only=name_only, json=as_json)
    repo = _repo(ctx)
    with _store_to_read(repo) as store:
        run_id = status.resolve_run(store, run_id)
        diffs = diff.task_diffs(repo, store, run_id, task_ids)
        for d in diffs:  # the secrets of their `env` and `copy` files are redacted too
            status.know_task_secrets(repo, store, run_id, d.task_id)
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


@cli.command(
    "merge",
    epilog=_example(
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
    _needs("--check", "a merge (not --dry-run)", given=bool(checks), present=not dry_run)
    _needs("--resolve", "a merge (not --dry-run)", given=resolve, present=not dry_run)
    _needs(
        "--allow-outside-writes",
        "a merge (not --dry-run)",
        given=allow_outside_writes,
        present=not dry_run,
    )
    repo = _repo(ctx)
    # SIGTERM is Ctrl-C (main): a resolver or check being waited for is killed with its tree.
    with status.open_store(repo) as store:
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
            allow_outside_writes=allow_outside_writes,
            progress=None if as_json else merge_text.MergeEcho(_shown_line),
            checkout=_your_checkout(ctx, repo),
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


# -- pr command --


@cli.command("pr", epilog=_example("swarm pr", "swarm pr fix-login --draft"))
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
            on_wait=_say_wait,
            checkout=_your_checkout(ctx, repo),
        )
    return ExitCode.OK if report.ok else ExitCode.TASK_FAILED


# -- clean / doctor commands --


def _orphan_options(f: Callable[..., int]) -> Callable[..., int]:
    f = click.option("--idle", help="Age for --foreign.  [default: 7d]")(f)
    return click.option("--foreign", is_flag=True, help="Remove other tools' idle worktrees.")(f)


@cli.command("clean", epilog=_example("swarm clean   # a dry run", "swarm clean --all --yes"))
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
    idle: str | None,
    yes: bool,
    force: bool,
    as_json: bool,
) -> int:
    """Remove finished tasks' worktrees and merged branches (a dry run unless --yes)."""
    from worktree_swarm.cleanup import clean
    from worktree_swarm.cleanup import orphans as scan
    from worktree_swarm.ui.clean_text import clean_text

    runs_options = {"run": run_id is not None, "all": all_runs, "keep_branches": keep_branches}
    for name, used in runs_options.items():  # what to clean of runs: not for orphans
        _exclusive(orphans=orphans, **{name: used})
    _needs("--foreign", "--orphans (or swarm doctor)", given=foreign, present=orphans)
    _needs("--idle", "--orphans (or swarm doctor)", given=idle is not None, present=orphans)
    repo = _repo(ctx)
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


@cli.command("doctor", epilog=_example("swarm doctor", "swarm doctor --yes"))
@_orphan_options
@click.option("--yes", is_flag=True, help="Fix what was found (the default is a dry run).")
@click.option("--force", is_flag=True, help="Also delete unmerged orphan branches.")
@click.option("--json", "as_json", is_flag=True, help="Stable JSON (see docs/clean.md).")
@click.pass_context
def doctor_cmd(
    ctx: click.Context, foreign: bool, idle: str | None, yes: bool, force: bool, as_json: bool
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


# -- report command --


@cli.command("report", epilog=_example("swarm report", "swarm report --html night.html"))
@click.option("--run", "run_id", help="A run id (default: the latest run).")
@click.option(
    "--html",
    "html_path",
    type=_Path(dir_okay=False, path_type=Path),
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

    repo = _repo(ctx)
    if html_path is not None:
        with _paths_given():
            report_html.check_output(html_path)
    with _store_to_read(repo) as store:
        run_id = status.resolve_run(store, run_id)
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


# -- plan / note / notes commands --


@cli.command("plan", epilog=_example("swarm plan 'Add OAuth login' --out tasks.toml"))
@click.argument("goal")
@click.option(
    "--out",
    type=_Path(dir_okay=False, path_type=Path),
    default=Path("tasks.toml"),
    show_default=True,
    help="Where to write the manifest.",
)
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
@click.option("--max-tasks", type=click.IntRange(1, 50), default=8, show_default=True)
@click.option("--model", help="Anthropic model (default: claude-sonnet-5-5).")
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
    from worktree_swarm.plan import planner as plan

    repo = _repo(ctx)
    settings = plan.api_settings(api_url=api_url)
    with _paths_given():
        plan.check_output(out, force=force)
    result = plan.make_plan(
        repo_root=repo.root,
        goal=goal,
        settings=settings,
        model=model,
        max_tasks=max_tasks,
        jobs=jobs,
    )
    plan.write_manifest(out, result.manifest_text, force=force)
    for line in plan.describe(result, out=str(out)):
        click.echo(line)
    return ExitCode.OK


@cli.command("note", epilog=_example("swarm note 'tests need REDIS_URL=redis://localhost'"))
@click.argument("text")
@click.pass_context
def note_cmd(ctx: click.Context, text: str) -> int:
    """Append TEXT to the run's shared findings file ($SWARM_CONTEXT inside an agent)."""
    from worktree_swarm.report import notes

    path, tag = notes.resolve_target(repo_dir=Path(ctx.obj["dir"]))
    notes.append_note(path, text, tag=tag)
    return ExitCode.OK


@cli.command("notes", epilog=_example("swarm notes"))
@click.option("--run", "run_id", help="A run id (default: $SWARM_CONTEXT, else the latest run).")
@click.pass_context
def notes_cmd(ctx: click.Context, run_id: str | None) -> int:
    """Print the run's shared findings file."""
    from worktree_swarm.report import notes

    path = notes.notes_path(run_id=run_id, repo_dir=Path(ctx.obj["dir"]))
    # An agent may write a secret of its task's (`env`, `copy` files) into the file itself:
    # redacted when shown, as in `swarm logs` (the run's tasks made known first).
    with contextlib.suppress(SwarmError, OSError):
        repo = _repo(ctx)
        with status.open_store(repo, to_read=True) as store:
            for row in store.tasks(path.parent.name):
                status.know_task_secrets(repo, store, row.run_id, row.task_id)
    text = notes.read_notes(path)
    if text:
        click.echo(text, nl=not text.endswith("\n"))
    else:
        click.echo(f"no findings yet ({path})", err=True)
    return ExitCode.OK


_NOT_WRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})  # a read-only repository
_IN_THE_WAY = frozenset({errno.ENOTDIR, errno.EEXIST})


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (docs/cli.md) instead of exiting."""
    args = list(sys.argv[1:] if argv is None else argv)
    if sys.flags.optimize >= 2:  # noqa: PLR2004 - `python -OO`, PYTHONOPTIMIZE=2
        _help_from_source()
    debug = _debug(args)
    _escape_undecodable_output()
    if undecodable := next((a for a in args if not is_utf8(a)), None):
        # Prompts, ids and commands go to agents, git, the store: all of them take UTF-8. Said
        # by where it is, not what it holds (a key in it, cut, would not be redacted).
        raw = os.fsencode(undecodable)
        at = _bad_at(raw)
        click.echo(
            f"swarm: argument {args.index(undecodable) + 1} is not valid UTF-8 (byte "
            f"{raw[at]:#04x} at offset {at}); pass text",
            err=True,
        )
        return ExitCode.BAD_INPUT
    # SIGTERM stops every command as Ctrl-C does (exit 130), not `swarm watch`: its screen
    # handles its own keys and signals.
    command = _command(args)
    interruptible = contextlib.nullcontext() if command == "watch" else _sigterm_as_interrupt()
    try:
        with interruptible:
            code = cli.main(args=args, prog_name="swarm", standalone_mode=False, obj={"argv": args})
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:  # it may quote what you typed: a key too
        click.echo(f"swarm: {_one_line(without_escapes(exc.format_message()))}", err=True)
        return ExitCode.BAD_INPUT
    except click.exceptions.Abort:  # click's word for Ctrl-C (and SIGTERM, SIGHUP) in a command
        click.echo("swarm: interrupted", err=True)
        return ExitCode.INTERRUPTED
    except KeyboardInterrupt:  # outside click's own handling: before or after the command
        click.echo("swarm: interrupted", err=True)
        return ExitCode.INTERRUPTED
    except SwarmError as exc:
        return _swarm_error(exc, command, debug=debug)
    except Exception as exc:
        if debug:
            raise
        return _unexpected(exc, command)
    return int(code or 0)


def _help_from_source() -> None:
    """Give the commands their help back where ``-OO`` stripped it (click reads docstrings)."""
    try:
        tree = ast.parse(Path(__file__).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return  # no source beside the bytecode: the help stays without its text
    docs = {
        node.name: ast.get_docstring(node)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef)
    }
    for command in (cli, *cli.commands.values()):
        if command.help is None and command.callback is not None:
            command.help = docs.get(command.callback.__name__)


def _bad_at(raw: bytes) -> int:
    """Where the first byte that is not UTF-8 is in *raw* (0 when it all is)."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start
    return 0


def _escape_undecodable_output() -> None:
    """Print a file name that is not UTF-8 (kept as surrogates) escaped, never crash on it."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and stream.errors == "strict":
            stream.reconfigure(errors="backslashreplace")


def _swarm_error(exc: SwarmError, command: str | None, *, debug: bool) -> int:
    """One line for *exc* (its traceback first with ``--debug``); its exit code."""
    if debug:  # the traceback, and the exit code all the same
        click.echo(redact("".join(traceback.format_exception(exc))), err=True, nl=False)
    text = str(exc)
    if isinstance(exc, faults.DiskFullError):
        text = faults.retry_with(text, command)
    elif isinstance(exc, CommandError) and faults.is_full(exc):  # git writing, the disk full
        text = faults.retry_with(faults.full_message("the repository", exc), command)
    # An API's message, a path you typed: no escape sequence of theirs reaches your terminal.
    click.echo(f"swarm: {_one_line(without_escapes(text))}", err=True)
    return int(exc.exit_code)


def _one_line(text: str) -> str:
    """*text* redacted and printable on one line: a path you typed can hold a line break."""
    return printable(redact(text).replace("\r", "\\r").replace("\n", "\\n"), keep="\t")


def _say_wait(seconds: float, why: str) -> None:
    click.echo(f"waiting {seconds:.0f}s: {why}", err=True)


def _debug(args: Sequence[str]) -> bool:
    """Whether ``--debug`` is among the options before the command (a value after it is not)."""
    i = 0
    while i < len(args) and args[i].startswith("-"):
        if args[i] == "--debug":
            return True
        i += 2 if args[i] == "-C" else 1
    return False


def _command(args: Sequence[str]) -> str | None:
    """The command *args* run (``merge``), after the options before it; None without one."""
    i = 0
    while i < len(args) and args[i].startswith("-"):
        i += 2 if args[i] == "-C" else 1
    return args[i] if i < len(args) else None


def _owned_by_another(filename: object) -> str:
    """Why a file (or its folder) you cannot write is another user's: ``sudo swarm ...`` made it."""
    if not isinstance(filename, (str, bytes, os.PathLike)):
        return ""
    path = Path(os.fsdecode(filename))
    for each in (path, path.parent):
        try:
            owner = each.lstat().st_uid
        except OSError:
            continue
        if owner == os.geteuid():
            return ""
        try:
            name = pwd.getpwuid(owner).pw_name
        except KeyError:
            name = f"user {owner}"
        return (
            f"; {each} belongs to {name} (a swarm command run as {name} made it): give it back"
            f" to you (`sudo chown -R {getpass.getuser()} {each}`) or run swarm as {name}"
        )
    return ""


def _unexpected(exc: Exception, command: str | None) -> int:
    """One line for an error no command caught: the user's to fix, or a bug's traceback file."""
    if faults.is_full(exc):  # a full disk is the user's to fix, not a bug: one line
        where = getattr(exc, "filename", None) or "swarm's state"
        text = faults.retry_with(faults.full_message(where, exc), command)
        click.echo(f"swarm: {_one_line(text)}", err=True)
        return ExitCode.TASK_FAILED
    # A file where swarm's state directory (or one in it) belongs is in the way, as read-only.
    if isinstance(exc, OSError) and (
        exc.errno in _NOT_WRITABLE
        or (exc.errno in _IN_THE_WAY and f"{os.sep}.git{os.sep}swarm" in str(exc.filename))
    ):
        where = exc.filename or "swarm's state"
        from worktree_swarm.guard.sandbox import IN_BOX_VAR

        hint = "; swarm keeps its state in .git/swarm" if ".git" in str(where) else ""
        if os.environ.get(IN_BOX_VAR) == "1":
            hint = (
                "; under --sandbox swarm's state is out of an agent's reach "
                "(only `swarm note` and `swarm notes` work there)"
            )
        else:
            hint = _owned_by_another(exc.filename) or hint
        text = f"cannot write {where}: {exc.strerror}{hint}"
        click.echo(f"swarm: {_one_line(text)}", err=True)
        return ExitCode.BAD_INPUT
    with tempfile.NamedTemporaryFile("w", prefix="swarm-crash-", suffix=".log", delete=False) as fh:
        fh.write(redact("".join(traceback.format_exception(exc))))  # its values: a key too
    click.echo(f"swarm: internal error; traceback written to {fh.name}", err=True)
    return ExitCode.TASK_FAILED
