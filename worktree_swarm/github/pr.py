"""Push done task branches and open (or update) one pull request per branch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from worktree_swarm.core.errors import BadInputError, SwarmError, unknown_task
from worktree_swarm.core.models import TaskState
from worktree_swarm.core.text import Echo
from worktree_swarm.git import branches as git_branches
from worktree_swarm.git import local_files
from worktree_swarm.git import repo as git
from worktree_swarm.github import pr_conflicts
from worktree_swarm.github.access import remote_url
from worktree_swarm.github.client import Client, connect
from worktree_swarm.github.errors import GitHubError, RateLimitError, UnreachableError
from worktree_swarm.github.pr_task import KEPT, PullRequest, printable_line, pull_request_for
from worktree_swarm.github.pr_text import texts
from worktree_swarm.github.session import OnWait
from worktree_swarm.infra import redact
from worktree_swarm.infra.store import Store
from worktree_swarm.infra.store_rows import TaskRow, task_from_json


@dataclass(frozen=True, slots=True, kw_only=True)
class PrFailure:
    """A task whose push or pull request failed, and why."""

    task_id: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PrReport:
    """What `swarm pr` did."""

    pulls: tuple[PullRequest, ...]
    failures: tuple[PrFailure, ...]

    @property
    def ok(self) -> bool:
        """Whether every task got its pull request."""
        return not self.failures


def select_tasks(store: Store, run_id: str, task_ids: Sequence[str] = ()) -> list[TaskRow]:
    """The tasks to open pull requests for: *task_ids* (each must be done) or every done task."""
    rows = store.tasks(run_id)
    if not task_ids:
        done = [row for row in rows if row.state is TaskState.DONE]
        if not done:
            raise SwarmError(f"no task of run {run_id} is done; nothing to push")
        return done
    by_id = {row.task_id: row for row in rows}
    selected = []
    for task_id in dict.fromkeys(task_ids):
        row = by_id.get(task_id)
        if row is None:
            raise unknown_task(task_id, run_id)
        if row.state is not TaskState.DONE:
            raise BadInputError(
                f"task {task_id!r} is {row.state.value}, not done; only done tasks get a pull"
                " request"
            )
        selected.append(row)
    return selected


def default_base(repo: git.Repo, checkout: Path | None = None) -> str:
    """The branch the user's *checkout* is on (the default PR base; the main one by default)."""
    branch = git_branches.current_branch(repo, checkout)
    if branch is None:
        raise BadInputError(f"HEAD of {checkout or repo.root} is detached; pass --base BRANCH")
    return branch


def push_and_open(
    repo: git.Repo,
    store: Store,
    run_id: str,
    *,
    task_ids: Sequence[str] = (),
    remote: str = "origin",
    base: str | None = None,
    draft: bool = False,
    github_repo: str | None = None,
    api_url: str | None = None,
    echo: Echo | None = None,
    on_wait: OnWait | None = None,
    checkout: Path | None = None,
) -> PrReport:
    """`swarm pr`: validate everything (tasks, remote, base, API URL, token), then push and open.

    Without *base*, the branch of *checkout* (yours that swarm runs in; the main one by
    default). Bad input raises BadInputError before anything is pushed or sent.
    """
    rows = select_tasks(store, run_id, task_ids)
    remote_url(repo, remote)
    if base is not None and not git_branches.is_branch_name(repo, base):
        raise BadInputError(f"--base {base!r} is not a valid branch name")
    into = base or default_base(repo, checkout)  # a detached HEAD is bad input, asked nothing
    client = connect(repo, remote=remote, github_repo=github_repo, api_url=api_url, on_wait=on_wait)
    client.check_access()
    return open_pull_requests(
        repo,
        store,
        run_id,
        client,
        rows,
        base=into,
        retarget=base is not None,
        remote=remote,
        draft=draft,
        echo=echo,
    )


def open_pull_requests(
    repo: git.Repo,
    store: Store,
    run_id: str,
    client: Client,
    rows: Sequence[TaskRow],
    *,
    base: str,
    retarget: bool = False,
    remote: str = "origin",
    draft: bool = False,
    echo: Echo | None = None,
) -> PrReport:
    """Push each task's branch to *remote*, then create or update its pull request into *base*.

    With *retarget* (a base the user named) an open pull request into another base is moved
    onto *base*. A task whose push or API call fails is reported and the rest carry on; a
    rate-limit wait longer than the client allows (RateLimitError), or an API that stopped
    answering (UnreachableError), stops everything.
    """
    # The run's secrets, as its manager had them: each task's `env` too, before any text is
    # written or branch scanned (a prompt may quote another task's).
    tasks = [task_from_json(row.spec_json) for row in store.tasks(run_id)]
    redact.add_env(pair for task in tasks for pair in task.env)
    for task in tasks:  # and what their `copy` files hold: a title or prompt may quote it
        redact.add_env(local_files.copied_secrets(repo.root, task.copy))
    run = store.get_run(run_id)
    run_base = run.base_commit if run is not None else None
    pairs = _predicted_pairs(repo, store, run_id, base=base, fallback=run_base)
    known = pr_conflicts.open_pulls(store.tasks(run_id))
    taken = store.taken_over(run_id)
    sent: dict[str, tuple[pr_conflicts.Clash, ...]] = {}
    pulls: list[PullRequest] = []
    failures: list[PrFailure] = []
    for row in rows:
        sent[row.task_id] = pr_conflicts.clashes(row.task_id, pairs, known)
        try:
            pull = pull_request_for(
                repo,
                client,
                row,
                store=store,
                base=base,
                retarget=retarget,
                remote=remote,
                draft=draft,
                fallback=run_base,
                clashes=sent[row.task_id],
                taken_by=taken.get(row.task_id),
                numbers=known,
            )
        except (RateLimitError, UnreachableError):  # every later request would wait as long
            raise
        except (GitHubError, SwarmError) as exc:
            reason = printable_line(redact.redact(client.token.redact(str(exc))))
            failures.append(PrFailure(task_id=row.task_id, reason=reason))
            if echo is not None:
                echo(f"{row.task_id}  failed  {reason}")
            continue
        pulls.append(pull)
        if pull.action != KEPT:
            known[row.task_id] = pull.number
        store.update_task(
            run_id, row.task_id, pr_number=pull.number, pr_url=pull.url, pr_state=pull.state
        )
        store.add_event(
            run_id,
            "pull_request",
            task_id=row.task_id,
            data={"action": pull.action, "number": pull.number, "url": pull.url},
        )
        if echo is not None:
            moved = f"  base now {pull.retargeted}" if pull.retargeted else ""
            echo(f"{pull.task_id}  {pull.action}  #{pull.number}  {pull.url}{moved}")
    # A pull request opened before a conflicting one of the same batch did not know its number.
    by_id = {row.task_id: row for row in rows}
    for pull in (p for p in pulls if p.action != KEPT):
        now = pr_conflicts.clashes(pull.task_id, pairs, known)
        if now != sent[pull.task_id]:
            _add_clashes(repo, client, by_id[pull.task_id], pull, run_base, now, known, echo)
    return PrReport(pulls=tuple(pulls), failures=tuple(failures))


def _add_clashes(
    repo: git.Repo,
    client: Client,
    row: TaskRow,
    pull: PullRequest,
    fallback: str | None,
    clashes: Sequence[pr_conflicts.Clash],
    numbers: Mapping[str, int],
    echo: Echo | None,
) -> None:
    """Update *pull* to name pull requests of its batch opened after it that it conflicts with."""
    task = task_from_json(row.spec_json)
    tip = git.rev_parse(repo, f"refs/heads/{pull.branch}^{{commit}}") or ""
    title, body = texts(
        repo, row, task, tip=tip, fallback=fallback, clashes=clashes, numbers=numbers
    )
    try:
        client.update_pull(pull.number, title=title, body=body)
    except (RateLimitError, UnreachableError):
        raise
    except (GitHubError, SwarmError) as exc:  # the pull request is open all the same
        if echo is not None:
            reason = printable_line(redact.redact(client.token.redact(str(exc))))
            echo(f"{pull.task_id}  note  #{pull.number} lacks its predicted conflicts: {reason}")


def _predicted_pairs(
    repo: git.Repo, store: Store, run_id: str, *, base: str, fallback: str | None
) -> dict[str, dict[str, tuple[str, ...]]]:
    target = git.rev_parse(repo, f"refs/heads/{base}^{{commit}}") or fallback
    if target is None:
        return {}
    try:
        return pr_conflicts.predict_pairs(repo, store, run_id, target=target)
    except SwarmError:  # a prediction is a courtesy to reviewers; never a reason not to open
        return {}
