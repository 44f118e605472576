"""A pull request's title and body, as `swarm pr` sends them, redacted and within GitHub's limits.

The body carries the prompt (fenced, as data), the diff stat, the tasks the branch builds on,
the checks, the predicted conflicts, the cost and ``Closes #N`` for an issue's task.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence

from worktree_swarm.core.models import TaskState
from worktree_swarm.core.task import BRANCH_PREFIX, Task
from worktree_swarm.core.text import as_shown, one_line
from worktree_swarm.git import diffs
from worktree_swarm.git import repo as git
from worktree_swarm.github import pr_conflicts
from worktree_swarm.infra import redact
from worktree_swarm.infra.store_rows import TaskRow

PROMPT_LIMIT = 4000
TITLE_LIMIT = 200
GITHUB_BODY_LIMIT = 65_536  # GitHub refuses a longer body (422)
BODY_LIMIT = GITHUB_BODY_LIMIT - 1_000
_ISSUE_TASK_RE = re.compile(r"issue-([1-9][0-9]{0,9})")
_BACKTICKS_RE = re.compile(r"`+")


def texts(
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
