"""Push done task branches and open (or update) one pull request per branch."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

from worktree_swarm.core.errors import BadInputError, CommandError, SwarmError
from worktree_swarm.core.models import TaskState
from worktree_swarm.core.task import BRANCH_PREFIX, Task, is_valid_task_id
from worktree_swarm.core.text import Echo, as_shown, one_line
from worktree_swarm.git import diffs, leaks, local_files
from worktree_swarm.git import repo as git
from worktree_swarm.github import pr_conflicts
from worktree_swarm.github.access import remote_url
from worktree_swarm.github.client import MAX_NUMBER, Client, OnWait, connect, strip_userinfo
from worktree_swarm.github.errors import GitHubError, RateLimitError, UnreachableError
from worktree_swarm.guard import ref_moves
from worktree_swarm.infra import redact
from worktree_swarm.infra.store import Store
from worktree_swarm.infra.store_rows import TaskRow, task_from_json

PROMPT_LIMIT = 4000
TITLE_LIMIT = 200
GITHUB_BODY_LIMIT = 65_536  # GitHub refuses a longer body (422)
BODY_LIMIT = GITHUB_BODY_LIMIT - 1_000
_ISSUE_TASK_RE = re.compile(r"issue-([1-9][0-9]{0,9})")
_BACKTICKS_RE = re.compile(r"`+")


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
            raise BadInputError(f"no task {task_id!r} in run {run_id}; `swarm status` lists them")
        if row.state is not TaskState.DONE:
            raise BadInputError(
                f"task {task_id!r} is {row.state.value}, not done; only done tasks get a pull"
                " request"
            )
        selected.append(row)
    return selected


def default_base(repo: git.Repo, checkout: Path | None = None) -> str:
    """The branch the user's *checkout* is on (the default PR base; the main one by default)."""
    branch = git.current_branch(repo, checkout)
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
    if base is not None and not git.is_branch_name(repo, base):
        raise BadInputError(f"--base {base!r} is not a valid branch name")
    client = connect(repo, remote=remote, github_repo=github_repo, api_url=api_url, on_wait=on_wait)
    client.check_access()
    return open_pull_requests(
        repo,
        store,
        run_id,
        client,
        rows,
        base=base or default_base(repo, checkout),
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
            pull = _one(
                repo,
                client,
                row,
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
            reason = _said(redact.redact(client.token.redact(str(exc))))
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
    title, body = _texts(
        repo, row, task, tip=tip, fallback=fallback, clashes=clashes, numbers=numbers
    )
    try:
        client.update_pull(pull.number, title=title, body=body)
    except (RateLimitError, UnreachableError):
        raise
    except (GitHubError, SwarmError) as exc:  # the pull request is open all the same
        if echo is not None:
            reason = _said(redact.redact(client.token.redact(str(exc))))
            echo(f"{pull.task_id}  note  #{pull.number} lacks its predicted conflicts: {reason}")


def _texts(
    repo: git.Repo,
    row: TaskRow,
    task: Task,
    *,
    tip: str,
    fallback: str | None,
    clashes: Sequence[pr_conflicts.Clash],
    numbers: Mapping[str, int],
) -> tuple[str, str]:
    """A pull request's title and body, redacted.

    The prompt may quote a key (a pasted log, an issue body); GitHub must never see it.
    """
    body = pr_body(
        repo, row, task, tip=tip, fallback_base=fallback, clashes=clashes, numbers=numbers
    )
    return redact.redact(pr_title(task)), redact.redact(body)


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


def _one(
    repo: git.Repo,
    client: Client,
    row: TaskRow,
    *,
    base: str,
    retarget: bool,
    remote: str,
    draft: bool,
    fallback: str | None,
    clashes: Sequence[pr_conflicts.Clash] = (),
    taken_by: str | None = None,
    numbers: Mapping[str, int] | None = None,
) -> PullRequest:
    branch = _checked_branch(row)
    if taken_by is not None:  # a later run's work, and maybe its pull request: never touched
        raise SwarmError(f"branch {branch} is run {taken_by}'s now (it reused the task id)")
    if (ended := _ended_pull(client, row, branch)) is not None:
        return ended  # someone merged or closed it: neither pushed again nor opened anew
    task = task_from_json(row.spec_json)
    tip = git.rev_parse(repo, f"refs/heads/{branch}^{{commit}}")
    if tip is None:
        raise SwarmError(f"branch {branch} of task {row.task_id} is gone; nothing to push")
    # Every commit the push sends, from the run's base: a dependency's commits go too.
    leak = leaks.find_leak(
        repo,
        base=fallback or row.base_commit,
        tip=tip,
        copy_globs=task.copy,
        local_secrets=local_files.copied_secrets(repo.root, task.copy),
    )
    if leak is not None:
        raise SwarmError(f"not pushing {branch}: {leak}; remove it from the branch's history")
    # Asked before the push: a rate limit GitHub already told stops here, with nothing pushed.
    existing = client.find_pull(branch)
    if existing is None:
        closed = client.find_closed_pull(branch, tip)
        if closed is not None:  # opened for this very tip, unrecorded (killed), closed since
            return _kept(row, branch, closed)
    push_branch(repo, remote, branch, redact=client.token.redact)
    title, body = _texts(
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
        keys = _said(", ".join(sorted(map(str, pull))), limit=120)
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
    return _said(redact.redact(value), limit=500) if isinstance(value, str) else ""


def _said(text: str, *, limit: int | None = None) -> str:
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
    tracking = git.tracking_ref(repo, remote, ref)
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


def pr_title(task: Task) -> str:
    """The task's title, else the first line of its prompt."""
    text = task.title or next((ln for ln in task.prompt.splitlines() if ln.strip()), task.id)
    title = one_line(redact.redact(text), controls=True)  # redacted before it is cut: no half key
    if len(title) > TITLE_LIMIT:
        title = title[: TITLE_LIMIT - 1].rstrip() + "…"
    return title or task.id


def pr_body(
    repo: git.Repo,
    row: TaskRow,
    task: Task,
    *,
    tip: str,
    fallback_base: str | None = None,
    clashes: Sequence[pr_conflicts.Clash] = (),
    numbers: Mapping[str, int] | None = None,
) -> str:
    """Prompt, diff stat, dependencies, checks, conflicts with other open swarm PRs, cost.

    And ``Closes #N`` for an issue's task. The diff is counted from the run's base (*fallback_base*,
    else the task's own): what the pull request carries, a dependency's commits included.
    *numbers*: the open pull requests of the run's tasks (task id -> number).
    """
    lines = [f"Task `{row.task_id}` of worktree-swarm run `{row.run_id}`.", ""]
    # As an issue's text: no control character, no invisible one hiding or reordering words.
    lines += ["**Prompt**", "", *_fenced(_trimmed(as_shown(redact.redact(task.prompt)))), ""]
    base = fallback_base or row.base_commit
    if base is not None:
        stat = diffs.diff_stat(repo, base, tip)
        lines.append(
            f"**Diff:** {_plural(stat.files, 'file')} changed, +{stat.insertions}"
            f" -{stat.deletions} (against `{base[:12]}`)"
        )
    lines.append("")
    if depends := _dependencies(repo, task, tip=tip, numbers=numbers or {}):
        lines += [*depends, ""]
    if task.checks:
        # Only done tasks get a pull request, and done means every check passed.
        result = "passed" if row.state is TaskState.DONE else "failed"
        lines.append(f"**Checks:** {result}")
        lines += [f"- `{_code(shlex.join(argv))}`: {result}" for argv in task.checks]
    else:
        lines.append("**Checks:** none configured")
    if clashes:
        lines += ["", *pr_conflicts.section(clashes)]
    if row.cost_usd is not None:
        lines += ["", f"**Cost:** ${row.cost_usd:.2f}"]
    match = _ISSUE_TASK_RE.fullmatch(row.task_id)
    if match is not None:
        lines += ["", f"Closes #{match[1]}"]
    return _bounded("\n".join(lines).rstrip() + "\n")


def _dependencies(repo: git.Repo, task: Task, *, tip: str, numbers: Mapping[str, int]) -> list[str]:
    """The body's lines naming the tasks whose work the branch carries (it started on theirs).

    Its dependencies, and theirs in turn (any task of the run with a pull request open):
    every such task's branch that *tip* contains (one `for-each-ref --merged`).
    """
    if not task.depends_on:  # a branch started from the base carries no task's work
        return []
    carried = git.git(
        repo.root, "for-each-ref", "--merged", tip, "--format=%(refname)",
        f"refs/heads/{BRANCH_PREFIX}",
    ).split()  # fmt: skip
    held = {ref.removeprefix(f"refs/heads/{BRANCH_PREFIX}") for ref in carried}
    wanted = [*task.depends_on, *sorted(set(numbers) - set(task.depends_on) - {task.id})]
    found = []
    for dep in wanted:
        if dep not in held:
            continue
        number = numbers.get(dep)
        named = f"#{number} (task `{dep}`)" if number else f"task `{dep}` (no pull request yet)"
        found.append(f"- {named}")
    if not found:
        return []
    heading = "**Builds on** (their commits are in this pull request too: merge them first)"
    return [heading, "", *found]


def _bounded(body: str) -> str:
    """*body* within GitHub's 65,536 characters (the parts are bounded; this is the last stop)."""
    if len(body) <= BODY_LIMIT:
        return body
    cut = body[:BODY_LIMIT].rpartition("\n")[0]
    return f"{cut}\n\n… (cut: GitHub takes at most {GITHUB_BODY_LIMIT:,} characters)\n"


def _trimmed(prompt: str) -> str:
    text = prompt.strip()
    if len(text) <= PROMPT_LIMIT:
        return text
    return text[:PROMPT_LIMIT].rstrip() + f"\n… ({len(text) - PROMPT_LIMIT} more characters)"


def _fenced(text: str) -> list[str]:
    # A fence longer than any backtick run inside: the prompt (maybe issue text) renders
    # verbatim, and GitHub does not act on "Closes #N" or @mentions inside code blocks.
    longest = max((len(m) for m in _BACKTICKS_RE.findall(text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}text", text, fence]


def _code(text: str) -> str:
    # On one line, without backticks: the code span it goes in cannot end early.
    return one_line(text, controls=True).replace("`", "'")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
