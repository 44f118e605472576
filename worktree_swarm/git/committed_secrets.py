"""Secrets an agent committed itself: found when its attempt ends, refused from any shell.

swarm's checkpoints leave out a file holding the value of a secret of the run's environment
(:mod:`staged`); an agent's own `git commit` is no checkpoint. When an attempt ends with
commits of the agent's own on the task's branch, the manager (which has the environment
`swarm run` had) looks through them for those values, and records each commit holding one
as an event: the commit, the file, the variable's name, never the value. `swarm pr` and
`swarm merge`, from any shell (one without the variable too), refuse a branch whose history
still holds a recorded commit.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from worktree_swarm.core.errors import CommandError
from worktree_swarm.core.task import Task
from worktree_swarm.git import branches as git_branches
from worktree_swarm.git import repo as git
from worktree_swarm.git.leaks import Leak, value_leaks
from worktree_swarm.infra import redact
from worktree_swarm.infra.store import Store
from worktree_swarm.infra.store_rows import TaskRow

EVENT = "secret_committed"  # a commit of an agent's own holding a secret: one per commit
_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # a commit's id, as a node names it


def environment_secrets(env: Mapping[str, str]) -> dict[str, str]:
    """Value -> its variable's name, of *env*'s secret variables (as checkpoints look for).

    Only values that look made up: ``DB_PASSWORD=postgres`` is in half the files of a
    repository. A value without the blanks around it, as the program that reads it uses it.
    """
    settings = redact.secret_settings(sorted(env.items()))
    return {value: name for value, name in settings.items() if redact.made_up(value)}


def own_commit_leaks(repo: git.Repo, *, since: str, tip: str, env: Mapping[str, str]) -> list[Leak]:
    """The commits of ``since..tip`` holding the value of one of *env*'s secret variables.

    One :class:`Leak` per commit, its first file (or its message, its headers) holding one;
    its ``why`` names the variable, never the value.
    """
    secrets = {value: _why(name) for value, name in environment_secrets(env).items()}
    return value_leaks(repo, base=since, tip=tip, secrets=secrets)


def new_leaks(
    repo: git.Repo,
    store: Store,
    run_id: str,
    *,
    since: str,
    base: str,
    tip: str,
    env: Mapping[str, str],
) -> list[Leak]:
    """:func:`own_leaks_since` not recorded yet."""
    found = own_leaks_since(repo, since=since, base=base, tip=tip, env=env)
    return unrecorded(store, run_id, found)


def own_leaks_since(
    repo: git.Repo, *, since: str, base: str, tip: str, env: Mapping[str, str]
) -> list[Leak]:
    """:func:`own_commit_leaks` of ``since..tip``.

    Of ``base..tip`` when *since* is no commit any more (or not in *repo*): all the branch
    brings.
    """
    try:
        return own_commit_leaks(repo, since=since, tip=tip, env=env)
    except CommandError:
        return own_commit_leaks(repo, since=base, tip=tip, env=env)


def unrecorded(store: Store, run_id: str, found: list[Leak]) -> list[Leak]:
    """Those of *found* whose commit the run has not recorded yet. No store read for none."""
    recorded = _recorded(store, run_id) if found else {}
    return [leak for leak in found if leak.commit not in recorded]


def handed_back(found: Iterable[Mapping[str, object]]) -> list[Leak]:
    """The leaks a Ray node found in an agent's own commits, as it handed them back.

    Each a ``commit``, ``path`` and ``why`` (the node's look, ``NodeAgent.own_commits``);
    one that names no commit is none.
    """
    return [
        Leak(commit=str(f["commit"]), path=str(f.get("path", "")), why=str(f.get("why", "")))
        for f in found
        if _COMMIT.fullmatch(str(f.get("commit", "")))
    ]


def record_unlooked(
    repo: git.Repo,
    store: Store,
    row: TaskRow,
    task: Task,
    head: str | None,
    *,
    env: Mapping[str, str],
) -> None:
    """Record the agent's own commits up to *head* no manager looked through, holding a secret.

    As a manager does when an attempt ends (with *env* and the task's ``env``), for `swarm
    stop` ending an attempt with no manager alive: its checkpoint moves the branch's recorded
    tip past them, and no later look starts before it.
    """
    since = row.tip_commit or row.base_commit
    if head is None or not since or head == since:
        return  # no commit of the agent's own: the usual case
    found = own_leaks_since(
        repo,
        since=since,
        base=row.base_commit or since,
        tip=head,
        env={**env, **dict(task.env)},
    )
    record(store, row.run_id, row.task_id, found)


def record(store: Store, run_id: str, task_id: str, found: list[Leak]) -> None:
    """Record those of *found*, commits of *task_id*'s agent, not recorded yet (one event each)."""
    for leak in unrecorded(store, run_id, found):
        store.add_event(run_id, EVENT, task_id=task_id, data=event_data(leak))


def _why(name: str) -> str:
    return f"the value of {name} (a secret of the run's environment)"


def event_data(leak: Leak) -> dict[str, object]:
    """What the store keeps of *leak* (redacted there: a file's name can be the value)."""
    return {"commit": leak.commit, "path": leak.path, "why": leak.why}


def recorded_leak(
    repo: git.Repo, store: Store, run_id: str, *, base: str | None, tip: str
) -> Leak | None:
    """A commit of ``base..tip`` recorded (:data:`EVENT`) as holding a secret, or None.

    Recorded by the run's manager, which knew the value: found from a shell that does not.
    A task built on another one carries that one's commits, so every task's record counts.
    No git runs unless the run recorded one.
    """
    recorded = _recorded(store, run_id)
    if not recorded:
        return None
    span = f"{base}..{tip}" if base else tip
    listed = git.git(repo.root, "rev-list", "--reverse", "--end-of-options", span, "--").split()
    commit = next((c for c in listed if c in recorded), None)
    return None if commit is None else _leak(commit, recorded[commit])


def held(
    repo: git.Repo | None, store: Store, run_id: str, branches: Mapping[str, str]
) -> dict[str, Leak]:
    """Task id -> a recorded commit its branch still holds, of *branches* (task id -> branch).

    Without *repo*, each task's own first record, its branch not looked at. No git runs
    unless the run recorded one.
    """
    recorded = _recorded(store, run_id)
    if not recorded:
        return {}
    if repo is None:
        found: dict[str, Leak] = {}
        for commit, data in recorded.items():
            task_id = str(data.get("task_id", ""))
            if task_id in branches:
                found.setdefault(task_id, _leak(commit, data))
        return found
    found = {}
    for task_id, branch in branches.items():
        tip = git.rev_parse(repo, f"refs/heads/{branch}^{{commit}}")
        there = git_branches.contained(repo, tip, list(recorded)) if tip else set()
        first = next((c for c in recorded if c in there), None)  # the first recorded
        if first is not None:
            found[task_id] = _leak(first, recorded[first])
    return found


def told(data: Mapping[str, object]) -> str:
    """One line of what an event of :data:`EVENT` (its *data*) records."""
    return str(_leak(str(data.get("commit", "")), data))


def _recorded(store: Store, run_id: str) -> dict[str, dict[str, object]]:
    """Commit -> what was recorded of it (its task's id too), oldest first."""
    return {
        str(e.data.get("commit")): {**e.data, "task_id": e.task_id}
        for e in store.events(run_id, kind=EVENT)
    }


def _leak(commit: str, data: Mapping[str, object]) -> Leak:
    return Leak(path=str(data.get("path", "")), commit=commit, why=str(data.get("why", "")))
