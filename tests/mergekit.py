"""Builders for merge tests and the merge benchmark: task branches and a recorded run."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.conftest import agent_python, git
from worktree_swarm.core.models import TaskState
from worktree_swarm.core.paths import store_path
from worktree_swarm.core.task import Task
from worktree_swarm.git.repo import open_repo
from worktree_swarm.infra.store import Store
from worktree_swarm.merge.conflicts import conflict_path

RUN_ID = "20240101-000000-abcd"
LINES = "".join(f"line {i}\n" for i in range(1, 11))


def edit(line: int, text: str) -> str:
    """:data:`LINES` with line *line* (1-based) replaced by *text*."""
    rows = LINES.splitlines(keepends=True)
    rows[line - 1] = text + "\n"
    return "".join(rows)


class Brancher:
    """Commit branches from any start without touching the repository's checkout."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self.scratch = repo.parent / "scratch"
        if not self.scratch.exists():
            git(repo, "worktree", "add", "-q", "--detach", str(self.scratch), "HEAD")

    def branch(
        self,
        name: str,
        start: str,
        changes: Mapping[str, str | None],
        *,
        renames: Sequence[tuple[str, str]] = (),
    ) -> str:
        """Create *name* at a commit on *start*: files set (None deletes), then renames."""
        git(self.scratch, "checkout", "-q", "--detach", "--force", start)
        for path, text in changes.items():
            target = self.scratch / path
            if text is None:
                git(self.scratch, "rm", "-q", "--", path)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        for old, new in renames:
            (self.scratch / new).parent.mkdir(parents=True, exist_ok=True)
            git(self.scratch, "mv", "--", old, new)
        git(self.scratch, "add", "-A")
        git(self.scratch, "commit", "-q", "--allow-empty", "-m", f"work on {name}")
        sha = git(self.scratch, "rev-parse", "HEAD")
        git(self.repo, "branch", "-f", name, sha)
        return sha

    def close(self) -> None:
        """Remove the scratch worktree."""
        git(self.repo, "worktree", "remove", "--force", str(self.scratch))


def record_run(
    repo: Path,
    tasks: Sequence[tuple[str, str]],
    *,
    base: str,
    depends: Mapping[str, Sequence[str]] | None = None,
    checks: Mapping[str, Sequence[Sequence[str]]] | None = None,
    state: TaskState = TaskState.DONE,
    agent: Sequence[str] = (),
    resolve_timeout: float | None = None,
    profile: str = "command",
    titles: Mapping[str, str] | None = None,
    max_file: int | None = None,
) -> str:
    """Record a finished run whose tasks ``(id, base commit)`` have branches ``swarm/<id>``.

    Their agent runs *agent* with the adapter of *profile*; *titles* are their titles;
    *max_file*: the run's cap on one file (None: the default).
    """
    depends = depends or {}
    titles = titles or {}
    checks = checks or {}
    root = repo.parent / f"{repo.name}.swarm"
    settings: dict[str, object] = {
        "worktree_root": str(root), "commit_author": "swarm test <swarm@test>",
    }  # fmt: skip
    if max_file is not None:
        settings["max_file"] = max_file
    with Store(store_path(open_repo(repo))) as store:
        store.create_run(
            run_id=RUN_ID,
            base_commit=base,
            repo_root=str(repo),
            jobs=1,
            manager=None,
            spec_json=json.dumps(settings),
        )
        rows = [
            (
                Task(
                    id=task_id,
                    prompt=f"do {task_id}",
                    title=titles.get(task_id, ""),
                    depends_on=tuple(depends.get(task_id, ())),
                    checks=tuple(tuple(a) for a in checks.get(task_id, ())),
                    agent=profile,
                    agent_argv=tuple(agent),
                    resolve_timeout=resolve_timeout,
                ),
                f"swarm/{task_id}",
                str(root / task_id),
            )
            for task_id, _ in tasks
        ]
        store.add_tasks(RUN_ID, rows)
        for task_id, task_base in tasks:
            store.update_task(RUN_ID, task_id, state=state, base_commit=task_base)
    return RUN_ID


def conflicting(
    repo: Path,
    brancher: Brancher,
    resolver: Path,
    *,
    second: Mapping[str, str] | None = None,
    resolve_timeout: float | None = None,
    profile: str = "command",
    max_file: int | None = None,
) -> str:
    """Tasks first and second of a recorded run, which conflict on line 5 of f.txt; the base.

    Their agent is the Python program *resolver*, given the prompt file (as `--resolve` runs
    it), run as *profile*'s; *second* adds files to task second's commit; *max_file*: the
    run's cap on one file.
    """
    base = git(repo, "rev-parse", "HEAD")
    brancher.branch("swarm/first", base, {"f.txt": edit(5, "five first")})
    brancher.branch("swarm/second", base, {"f.txt": edit(5, "five second"), **(second or {})})
    record_run(
        repo,
        [("first", base), ("second", base)],
        base=base,
        agent=[*agent_python(), str(resolver), "{prompt_file}"],
        resolve_timeout=resolve_timeout,
        profile=profile,
        max_file=max_file,
    )
    return base


def states(repo: Path) -> dict[str, str]:
    """task id -> state of the recorded run."""
    with Store(store_path(open_repo(repo))) as store:
        return {row.task_id: row.state.value for row in store.tasks(RUN_ID)}


def merge_results(repo: Path) -> dict[str, str | None]:
    """task id -> merge result (merged, conflicted, failed or None) of the recorded run."""
    with Store(store_path(open_repo(repo))) as store:
        return {row.task_id: row.merge_result for row in store.tasks(RUN_ID)}


def real_merge(repo: Path, ours: str, theirs: str) -> tuple[str, ...] | None:
    """Merge for real in a scratch worktree: None when clean, else the conflicted files."""
    wt = repo.parent / "real-merge"
    if not wt.exists():
        git(repo, "worktree", "add", "-q", "--detach", str(wt), ours)
    git(wt, "checkout", "-q", "--detach", "--force", ours)
    res = subprocess.run(
        ["git", "merge", "--no-edit", "-q", theirs],
        cwd=wt,
        capture_output=True,
        text=True,
        check=False,
    )
    files = git(wt, "diff", "--name-only", "--diff-filter=U", "-z").split("\0")
    git(wt, "reset", "-q", "--hard", ours)
    if res.returncode == 0:
        return None
    labels = ("HEAD", theirs)
    return tuple(sorted({conflict_path(f, labels=labels) for f in files if f}))
