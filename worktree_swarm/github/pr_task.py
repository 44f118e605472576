"""One task's pull request: its branch checked and pushed, the pull request opened or updated.

A pull request merged or closed on GitHub is kept as it is (neither pushed again nor opened
anew), and GitHub's replies are read into a :class:`PullRequest`, each field one printable line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus

from worktree_swarm.core.errors import CommandError, SwarmError
from worktree_swarm.core.task import BRANCH_PREFIX, is_valid_task_id
from worktree_swarm.core.text import one_line
from worktree_swarm.git import committed_secrets, leaks, local_files
from worktree_swarm.git import repo as git
from worktree_swarm.git.remotes import strip_userinfo, tracking_ref
from worktree_swarm.github import pr_conflicts
from worktree_swarm.github.client import MAX_NUMBER, Client
from worktree_swarm.github.errors import GitHubError
from worktree_swarm.github.pr_text import texts
from worktree_swarm.guard import ref_moves
from worktree_swarm.infra import redact
from worktree_swarm.infra.store import Store
from worktree_swarm.infra.store_rows import TaskRow, task_from_json

KEPT = "kept"


@dataclass(frozen=True, slots=True, kw_only=True)
class PullRequest:
    """A pull request swarm created or updated for a task."""

    task_id: str
    branch: str
    number: int
    url: str
    action: str  # "created", "updated", or "kept" (merged or closed on GitHub: left as it is)
    state: str = "open"
    retargeted: str = ""  # the base an updated pull request was moved onto (`--base`)


def pull_request_for(
    repo: git.Repo,
    client: Client,
    row: TaskRow,
    *,
    store: Store,
    base: str,
    retarget: bool,
    remote: str,
    draft: bool,
    fallback: str | None,
    clashes: Sequence[pr_conflicts.Clash] = (),
    taken_by: str | None = None,
    numbers: Mapping[str, int] | None = None,
) -> PullRequest:
    """Open or update the pull request of the task of *row* (of the run *store* holds)."""
    branch = _checked_branch(row)
    if taken_by is not None:  # a later run's work, and maybe its pull request: never touched
        raise SwarmError(f"branch {branch} is run {taken_by}'s now (it reused the task id)")
    if (ended := _ended_pull(client, row, branch)) is not None:
        return ended  # someone merged or closed it: neither pushed again nor opened anew
    task = task_from_json(row.spec_json)
    tip = git.rev_parse(repo, f"refs/heads/{branch}^{{commit}}")
    if tip is None:
        raise SwarmError(f"branch {branch} of task {row.task_id} is gone; nothing to push")
    _refuse_leak(repo, store, row, branch, base=fallback or row.base_commit, tip=tip)
    # Asked before the push: a rate limit GitHub already told stops here, with nothing pushed.
    existing = client.find_pull(branch)
    if existing is None:
        closed = client.find_closed_pull(branch, tip)
        if closed is not None:  # opened for this very tip, unrecorded (killed), closed since
            return _kept(row, branch, closed)
    push_branch(repo, remote, branch, redact=client.token.redact)
    title, body = texts(
        repo, row, task, tip=tip, fallback=fallback, clashes=clashes, numbers=numbers or {}
    )
    if existing is None:
        try:
            created = client.create_pull(
                title=title, head=branch, base=base, body=body, draft=draft
            )
        except GitHubError as exc:
            existing = _opened_meanwhile(client, branch, exc)
        else:
            state = _field(created, "state") or "open"
            return _pull_request(row, branch, created, action="created", state=state)
    into = existing.get("base")  # an object with its `ref`, from GitHub
    now = into.get("ref") if isinstance(into, dict) else None
    onto = base if retarget and now != base else None
    reply = client.update_pull(_number(existing), title=title, body=body, base=onto)
    state = _field(reply, "state") or _field(existing, "state") or "open"
    return _pull_request(row, branch, reply, action="updated", state=state, retargeted=onto)


def _refuse_leak(
    repo: git.Repo, store: Store, row: TaskRow, branch: str, *, base: str | None, tip: str
) -> None:
    """SwarmError when the commits a push of *branch* sends (*base*..*tip*) hold a leak.

    From the run's base: a dependency's commits go too. Also a commit the run's manager
    recorded holding a secret of its environment, which this shell may lack.
    """
    task = task_from_json(row.spec_json)
    leak = leaks.find_leak(
        repo,
        base=base,
        tip=tip,
        copy_globs=task.copy,
        local_secrets=local_files.copied_secrets(repo.root, task.copy),
    ) or committed_secrets.recorded_leak(repo, store, row.run_id, base=base, tip=tip)
    if leak is not None:
        raise SwarmError(f"not pushing {branch}: {leak}; remove it from the branch's history")


def _opened_meanwhile(client: Client, branch: str, refused: GitHubError) -> dict[str, object]:
    """The pull request of *branch* opened since swarm asked (GitHub *refused* a second one).

    A killed `swarm pr`'s request GitHub carried out after all, another `swarm pr` at once, a
    person: that one is updated instead. Any other refusal is raised.
    """
    found = client.find_pull(branch) if refused.status == HTTPStatus.UNPROCESSABLE_ENTITY else None
    if found is None:
        raise refused
    return found


def _pull_request(
    row: TaskRow,
    branch: str,
    reply: Mapping[str, object],
    *,
    action: str,
    state: str,
    retargeted: str | None = None,
) -> PullRequest:
    return PullRequest(
        task_id=row.task_id,
        branch=branch,
        number=_number(reply),
        url=_field(reply, "html_url"),
        action=action,
        state=state,
        retargeted=retargeted or "",
    )


def _number(pull: Mapping[str, object]) -> int:
    """The number of the pull request in one of GitHub's replies (a reply without one fails)."""
    number = pull.get("number")
    if isinstance(number, bool) or not isinstance(number, int) or number <= 0:
        # Its keys, not its values: a reply may echo what was sent (the token among it).
        keys = printable_line(", ".join(sorted(map(str, pull))), limit=120)
        raise SwarmError(f"GitHub replied with no pull request number (keys: {keys})")
    if number >= MAX_NUMBER:  # 2**70 fits in no store; 4,000 digits in no line
        digits = len(str(number))
        raise SwarmError(
            f"GitHub replied with a pull request number of {digits} digits, past any it gives"
        )
    return number


def _field(reply: Mapping[str, object], key: str) -> str:
    """A text field of one of GitHub's replies, as stored and shown ('' when it is no text)."""
    value = reply.get(key)
    return printable_line(redact.redact(value), limit=500) if isinstance(value, str) else ""


def printable_line(text: str, *, limit: int | None = None) -> str:
    """*text* of GitHub's as one printable line: no escape of its reaches your terminal."""
    valid = text.encode("utf-8", "replace").decode("utf-8")  # a lone surrogate: stored as `?`
    return one_line(valid, limit=limit, controls=True)


def _ended_pull(client: Client, row: TaskRow, branch: str) -> PullRequest | None:
    """The task's recorded pull request when it was merged or closed since, else None.

    Only one whose head is the task's branch: the number may be another repository's (the
    same run pushed to another remote or API) and name someone else's pull request there.
    """
    if row.pr_number is None:
        return None
    pull = client.get_pull(row.pr_number)
    if pull is None or pull.get("state") != "closed" or not client.owns_pull(pull, branch):
        return None
    return _kept(row, branch, pull, number=row.pr_number)


def _kept(
    row: TaskRow, branch: str, pull: Mapping[str, object], *, number: int | None = None
) -> PullRequest:
    """A merged or closed pull request of the task's, left as it is."""
    return PullRequest(
        task_id=row.task_id,
        branch=branch,
        number=_number(pull) if number is None else number,
        url=_field(pull, "html_url"),
        action=KEPT,
        state="merged" if pull.get("merged_at") else "closed",
    )


def _checked_branch(row: TaskRow) -> str:
    # The store is ours, but a ref name handed to git push is validated anyway.
    task_id = row.branch.removeprefix(BRANCH_PREFIX)
    if not row.branch.startswith(BRANCH_PREFIX) or not is_valid_task_id(task_id):
        raise SwarmError(f"task {row.task_id} has an unexpected branch name {row.branch!r}")
    return row.branch


def push_branch(
    repo: git.Repo, remote: str, branch: str, *, redact: Callable[[str], str] = str
) -> None:
    """Push ``refs/heads/<branch>`` to the same name on *remote* (no force, no upstream).

    The push also moves the remote-tracking ref of a named remote (``origin/swarm/<id>``):
    announced to the guard of a run going on meanwhile, which would put it back otherwise.
    """
    ref = f"refs/heads/{branch}"
    tracking = tracking_ref(repo, remote, ref)
    try:
        with ref_moves.moving_refs(repo, [tracking] if tracking else []) as moves:
            try:
                git.git(repo.root, "push", "--quiet", "--", remote, f"{ref}:{ref}")
            finally:
                if tracking:
                    moves.moved(tracking, git.rev_parse(repo, tracking))
    except CommandError as exc:
        # Git's advice (`hint:` lines) comes last and would push out what was refused, and why.
        said = [line for line in exc.output.strip().splitlines() if not line.startswith("hint:")]
        tail = " | ".join(said[-3:])
        raise SwarmError(
            f"pushing {branch} to {strip_userinfo(remote)} failed: {redact(strip_userinfo(tail))}; "
            "fix the remote (access, diverged branch) and run `swarm pr` again"
        ) from None
