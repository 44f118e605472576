"""`swarm diff`: each task's branch against its own base (three-dot), with its outcome."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass

from worktree_swarm.core.errors import CommandError, SwarmError, unknown_task
from worktree_swarm.core.task import BRANCH_PREFIX, is_valid_task_id
from worktree_swarm.core.words import plural
from worktree_swarm.git import repo as git
from worktree_swarm.git import runner
from worktree_swarm.infra import parallel
from worktree_swarm.infra.store import Store
from worktree_swarm.infra.store_rows import TaskRow

# Each task's diff is a git process of its own: several run at once, the output keeps its order.
_WORKERS = parallel.CORES


@dataclass(frozen=True, slots=True, kw_only=True)
class FileChange:
    """One changed file: git's status letter (A, M, D, R, C, T), path, lines added/removed."""

    path: str
    status: str
    insertions: int
    deletions: int
    old_path: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskDiff:
    """One task's branch against its base (the ``--json`` fields, see docs/merge.md)."""

    task_id: str
    state: str
    reason: str
    branch: str
    base: str | None
    tip: str | None
    files_changed: int | None  # None: no branch (or base) to compare, not "nothing changed"
    insertions: int | None
    deletions: int | None
    files: tuple[FileChange, ...]
    taken_by: str | None = None  # the later run that reused the task id (its branch now)

    def to_json(self) -> dict[str, object]:
        """Plain dict for JSON output."""
        return asdict(self)


def task_branch(row: TaskRow) -> str:
    """The task's branch, validated before it reaches git as a ref name."""
    task_id = row.branch.removeprefix(BRANCH_PREFIX)
    if not row.branch.startswith(BRANCH_PREFIX) or not is_valid_task_id(task_id):
        raise SwarmError(f"task {row.task_id} has an unexpected branch name {row.branch!r}")
    return row.branch


def task_base(store: Store, row: TaskRow) -> str | None:
    """The commit the task's worktree started from (the run's base when not recorded)."""
    if row.base_commit:
        return row.base_commit
    run = store.get_run(row.run_id)
    return run.base_commit if run is not None else None


def branch_tip(repo: git.Repo, branch: str) -> str | None:
    """The commit ``refs/heads/<branch>`` points to, or None when the branch is gone."""
    return git.rev_parse(repo, f"refs/heads/{branch}^{{commit}}")


def work_tip(
    repo: git.Repo,
    row: TaskRow,
    *,
    taken: Mapping[str, str],
    tips: Callable[[str], str | None] | None = None,
) -> str | None:
    """Where *row*'s work is: its branch's tip, else its tip as last recorded, if still there.

    Its branch is not its own when a later run reused its id (*taken*: id to that run), and
    may be gone (landed, then cleaned): the commit of its last checkpoint stays while anything
    holds it (the branch it was landed on). *tips*: a :class:`BranchTips` to ask.
    """
    if row.task_id not in taken:
        tip = (tips or functools.partial(branch_tip, repo))(task_branch(row))
        if tip is not None:
            return tip
    if row.tip_commit is None:
        return None
    return git.rev_parse(repo, f"{row.tip_commit}^{{commit}}")


class BranchTips:
    """:func:`branch_tip` for many task branches: one git process reads every tip when asked first.

    A branch that is not listed is gone; one whose tip is no commit, or every one when the
    listing fails (an object missing), is asked alone, as :func:`branch_tip` asks.
    """

    def __init__(self, repo: git.Repo) -> None:
        self.repo = repo

    @functools.cached_property
    def _listed(self) -> dict[str, str | None] | None:
        return _listed_tips(self.repo)

    def __call__(self, branch: str) -> str | None:
        """The commit ``refs/heads/<branch>`` points to, or None when the branch is gone."""
        listed = self._listed
        if listed is None or (branch in listed and listed[branch] is None):
            return branch_tip(self.repo, branch)
        return listed.get(branch)


def _listed_tips(repo: git.Repo) -> dict[str, str | None] | None:
    try:
        out = git.git(
            repo.root, "for-each-ref", "--format=%(objecttype) %(objectname) %(refname)",
            f"refs/heads/{BRANCH_PREFIX}",
        )  # fmt: skip
    except SwarmError:
        return None
    listed: dict[str, str | None] = {}
    for line in out.splitlines():
        kind, sha, ref = line.split(" ", 2)
        listed[ref.removeprefix("refs/heads/")] = sha if kind == "commit" else None
    return listed


def named_rows(store: Store, run_id: str, task_ids: Sequence[str]) -> list[TaskRow]:
    """The rows of *task_ids* (in the order given, each once); unknown ids are bad input."""
    by_id = {row.task_id: row for row in store.tasks(run_id)}
    rows = []
    for task_id in dict.fromkeys(task_ids):
        row = by_id.get(task_id)
        if row is None:
            raise unknown_task(task_id, run_id)
        rows.append(row)
    return rows


def task_diffs(
    repo: git.Repo, store: Store, run_id: str, task_ids: Sequence[str] = ()
) -> list[TaskDiff]:
    """Diffs of *task_ids*, or of every task of the run that has a branch."""
    rows = named_rows(store, run_id, task_ids) if task_ids else store.tasks(run_id)
    taken = store.taken_over(run_id)  # a later run's branch now: never shown as this run's
    tips = BranchTips(repo)
    found = []
    for row in rows:
        # Nor one its creation found there (it made none): not its work.
        tip = None if row.task_id in taken or not row.made else tips(task_branch(row))
        if tip is not None or task_ids:
            found.append((row, task_base(store, row), tip))

    def one(item: tuple[TaskRow, str | None, str | None]) -> TaskDiff:
        row, base, tip = item
        later = taken.get(row.task_id)
        known = bool(base and tip)
        try:
            files = file_changes(repo, base, tip) if base and tip else ()
        except CommandError as exc:  # an agent's reset to a root commit of its own
            if "no merge base" not in exc.output:
                raise
            files, known = (), False
        return TaskDiff(
            task_id=row.task_id,
            state=row.state.value,
            reason=row.reason,
            branch=row.branch,
            base=base,
            tip=tip,
            files_changed=len(files) if known else None,
            insertions=sum(f.insertions for f in files) if known else None,
            deletions=sum(f.deletions for f in files) if known else None,
            files=files,
            taken_by=later,
        )

    return list(parallel.in_order(one, found, workers=_WORKERS))


def file_changes(repo: git.Repo, base: str, tip: str) -> tuple[FileChange, ...]:
    """Files *tip* changed since its merge base with *base* (renames detected)."""
    out = runner.run_bytes(
        repo.root, "diff", "--raw", "--numstat", "-z", "-M", "--no-ext-diff",
        "--end-of-options", f"{base}...{tip}", "--",
    ).stdout  # fmt: skip
    # A name that is not UTF-8 keeps its bytes (as surrogates): shown quoted, never garbled.
    fields = iter(os.fsdecode(out).split("\0"))
    statuses: list[tuple[str, str, str | None]] = []  # (letter, path, old path)
    counts: dict[str, tuple[int, int]] = {}
    for field in fields:
        if field.startswith(":"):
            letter = field.rsplit(" ", 1)[-1][:1]
            first = next(fields)
            if letter in {"R", "C"}:
                statuses.append((letter, next(fields), first))
            else:
                statuses.append((letter, first, None))
        elif field:
            added, deleted, path = field.split("\t", 2)
            if not path:  # a rename: old and new path follow in fields of their own
                next(fields)
                path = next(fields)
            counts[path] = (_lines(added), _lines(deleted))
    return tuple(
        FileChange(
            path=path,
            status=letter,
            insertions=counts.get(path, (0, 0))[0],
            deletions=counts.get(path, (0, 0))[1],
            old_path=old,
        )
        for letter, path, old in statuses
    )


def _lines(text: str) -> int:
    return int(text) if text.isdigit() else 0  # "-" for binary files


def patch(repo: git.Repo, diff: TaskDiff, *, stat: bool = False) -> str:
    """The task's patch (or ``--stat`` summary) as git prints it, without colour."""
    if diff.base is None or diff.tip is None or diff.files_changed is None:
        return ""
    mode = ["--stat"] if stat else ["--patch", "-M"]
    return git.git(
        repo.root, "diff", "--no-color", "--no-ext-diff", *mode,
        "--end-of-options", f"{diff.base}...{diff.tip}", "--",
    )  # fmt: skip


def patches(
    repo: git.Repo, diffs: Sequence[TaskDiff], *, stat: bool = False
) -> Iterator[tuple[TaskDiff, str]]:
    """Each of *diffs* with its :func:`patch`, in order, as soon as it and those before are."""
    texts = parallel.in_order(lambda d: patch(repo, d, stat=stat), diffs, workers=_WORKERS)
    yield from zip(diffs, texts, strict=True)


def format_header(diff: TaskDiff) -> str:
    """One line per task: id, outcome, counts, branch (and why, when it did not succeed)."""
    if diff.taken_by is not None:
        return (
            f"{diff.task_id}  {diff.state}  ({diff.branch} is run {diff.taken_by}'s now: it"
            " reused the task id)"
        )
    if diff.tip is None:
        return f"{diff.task_id}  {diff.state}  (no branch {diff.branch})"
    if diff.files_changed is None:
        why = "shares no history with its" if diff.base else "has no recorded"
        return f"{diff.task_id}  {diff.state}  {diff.branch} {why} base"
    counts = f"{plural(diff.files_changed, 'file')} +{diff.insertions} -{diff.deletions}"
    reason = f"  {diff.reason.splitlines()[0]}" if diff.reason and diff.state != "done" else ""
    return f"{diff.task_id}  {diff.state}  {counts}  {diff.branch}{reason}"
