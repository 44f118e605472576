"""`swarm merge`, `pr`, `retry --fresh` and `clean --yes` SIGKILLed at each git step they run.

Each test pauses the command at one of its writing git steps (before it runs, or once it
has), SIGKILLs the command's whole session there, then runs it again (or the recovery its
message names) and checks the promise of docs/recovery.md: the work is all on its branch (or
on record), a target branch moved once or not at all, and no lock, ref-move note, scratch
worktree or half-removed worktree is left behind.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.conftest import agent_command, git, hang_git_at, make_repo
from tests.github_server import TOKEN, FakeGitHub, serve
from tests.mergekit import LINES, RUN_ID, Brancher, conflicting, record_run
from tests.test_pr import AGENT as PR_AGENT
from tests.test_run import checkout_snapshot, status_json, swarm, wait_for

pytestmark = pytest.mark.long


class Step(NamedTuple):
    """A git step to kill a command at: the *nth* ``git SUB`` (with *word*), or once it ran."""

    sub: str
    nth: int = 1
    word: str | None = None
    after: bool = False

    def __str__(self) -> str:
        what = f"{self.sub} {self.word}" if self.word else self.sub
        return f"{what}#{self.nth}{'-done' if self.after else ''}"


def killed_at(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, repo: Path, step: Step, *args: str
) -> None:
    """Run ``swarm ARGS`` in *repo*, in a session of its own; SIGKILL it all at *step*."""
    hung = hang_git_at(
        tmp_path, monkeypatch, step.sub, nth=step.nth, word=step.word, after=step.after
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "worktree_swarm.cli", *args], cwd=repo, start_new_session=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: hung.exists() or proc.poll() is not None, what=f"git {step}")
        assert proc.poll() is None, f"swarm {' '.join(args)} ended before its git {step}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    (tmp_path / "gitbin" / "git").unlink()  # the real git from here on


def left_behind(repo: Path) -> list[str]:
    """What a command finished (or undone) must not leave: locks, notes, stray worktrees."""
    gitdir = repo / ".git"
    bad = [
        f"lock {p.relative_to(gitdir)}"
        for p in gitdir.rglob("*.lock")
        if p.parent != gitdir / "swarm"  # swarm's own flock files: never stale
    ]
    for notes in ("ref-moves", "removing"):
        folder = gitdir / "swarm" / notes
        bad += [f"{notes}/{p.name}" for p in folder.iterdir()] if folder.is_dir() else []
    listing = git(repo, "worktree", "list", "--porcelain")
    bad += [line for line in listing.splitlines() if line.startswith(("prunable", "locked"))]
    registered = {line[9:] for line in listing.splitlines() if line.startswith("worktree ")}
    root = repo.parent / f"{repo.name}.swarm"
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        if str(entry) not in registered or entry.name.startswith("_merge-"):
            bad.append(f"stray directory {entry.name}")
    return bad


def first_parents(repo: Path, start: str, ref: str) -> list[str]:
    """Subjects of *ref*'s first-parent commits since *start*."""
    return git(repo, "log", "--first-parent", "--format=%s", f"{start}..{ref}").splitlines()


def holds(repo: Path, commit: str, ref: str) -> bool:
    """Whether *commit* is in *ref*'s history."""
    return subprocess.run(
        ["git", "merge-base", "--is-ancestor", commit, ref], cwd=repo, check=False
    ).returncode == 0  # fmt: skip


# --- swarm merge -----------------------------------------------------------------------

INTEGRATION = f"swarm/integration-{RUN_ID}"
MERGE_STEPS = [
    Step("update-ref"),  # the integration branch made
    Step("worktree", word="add"),
    Step("read-tree"),  # its checkout
    Step("merge"),
    Step("merge", after=True),  # the first task's merge made, not recorded
    Step("merge", nth=2, after=True),
]
INTO_STEPS = [
    Step("worktree", word="add"),  # the scratch worktree
    Step("merge", nth=2),
    Step("update-ref"),  # the target moved, once
    Step("update-ref", after=True),
]


@pytest.fixture
def two_tasks(tmp_path: Path) -> tuple[Path, str, dict[str, str]]:
    """A recorded run of tasks one and two, each adding a file; the repo, base and tips."""
    repo = make_repo(tmp_path / "repo", {"f.txt": LINES})
    base = git(repo, "rev-parse", "HEAD")
    brancher = Brancher(repo)
    tips = {t: brancher.branch(f"swarm/{t}", base, {f"{t}.txt": f"{t}\n"}) for t in ("one", "two")}
    brancher.close()
    git(repo, "worktree", "prune")
    record_run(repo, [("one", base), ("two", base)], base=base)
    git(repo, "branch", "rel", base)
    return repo, base, tips


def _merged_once(repo: Path, base: str, tips: dict[str, str], target: str) -> None:
    """Both tasks merged into *target*, each once, on record so; nothing left behind."""
    assert len(first_parents(repo, base, target)) == 2, first_parents(repo, base, target)
    assert all(holds(repo, tip, target) for tip in tips.values())
    rows = status_json(repo)
    results = {t: (rows[t]["merge_result"], rows[t]["merge_target"]) for t in tips}
    assert results == dict.fromkeys(tips, ("merged", target))
    assert left_behind(repo) == []


@pytest.mark.parametrize("step", MERGE_STEPS, ids=str)
def test_a_merge_killed_at_a_git_step_is_finished_by_the_next_merge(
    two_tasks: tuple[Path, str, dict[str, str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    step: Step,
) -> None:
    repo, base, tips = two_tasks
    before = checkout_snapshot(repo)
    killed_at(tmp_path, monkeypatch, repo, step, "merge")

    out = swarm(repo, "merge")

    assert out.returncode == 0, out.stdout + out.stderr
    _merged_once(repo, base, tips, INTEGRATION)
    worktree = repo.parent / "repo.swarm" / f"_integration-{RUN_ID}"
    assert git(worktree, "status", "--porcelain", "--untracked-files=all") == ""
    assert git(worktree, "rev-parse", "HEAD") == git(repo, "rev-parse", INTEGRATION)
    assert checkout_snapshot(repo) == before


@pytest.mark.parametrize("step", INTO_STEPS, ids=str)
def test_a_merge_into_a_branch_killed_at_a_git_step_moves_it_once_or_not_at_all(
    two_tasks: tuple[Path, str, dict[str, str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    step: Step,
) -> None:
    repo, base, tips = two_tasks
    before = checkout_snapshot(repo)
    killed_at(tmp_path, monkeypatch, repo, step, "merge", "--into", "rel")
    moved = first_parents(repo, base, "rel")
    assert len(moved) == (2 if step.after else 0), moved

    out = swarm(repo, "merge", "--into", "rel")

    assert out.returncode == 0, out.stdout + out.stderr
    _merged_once(repo, base, tips, "rel")
    assert git(repo, "branch", "--list", "swarm/integration-*") == ""
    assert checkout_snapshot(repo) == before


SQUASH_STEPS = [
    Step("merge"),  # the first task's squash
    Step("commit"),  # squashed, not committed
    Step("commit", after=True),  # committed, its checks not run
    Step("reset", nth=2),  # its checks failed: the undo
    Step("reset", nth=2, after=True),  # undone, not recorded
    Step("commit", nth=2, after=True),
]
# Fails with task one's work alone on the target: its merge is undone, two's kept.
ONE_FAILS = "import pathlib, sys\nsys.exit(pathlib.Path('one.txt').exists())\n"


@pytest.mark.parametrize("step", SQUASH_STEPS, ids=str)
def test_a_squash_merge_killed_at_a_git_step_undoes_a_failed_task_once_run_again(
    two_tasks: tuple[Path, str, dict[str, str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    step: Step,
) -> None:
    repo, base, _ = two_tasks
    check = tmp_path / "check.py"
    check.write_text(ONE_FAILS)
    argv = ("merge", "--strategy", "squash", "--check", f"{agent_command()} {check}")
    killed_at(tmp_path, monkeypatch, repo, step, *argv)
    told = status_json(repo)["one"]["merge_result"] == "failed"  # by the killed merge

    out = swarm(repo, *argv)

    assert out.returncode == (0 if told else 1), out.stdout + out.stderr  # 1: a task failed
    rows = status_json(repo)
    assert (rows["one"]["merge_result"], rows["two"]["merge_result"]) == ("failed", "merged")
    assert first_parents(repo, base, INTEGRATION) == ["swarm: two (task two, squashed)"]
    files = git(repo, "ls-tree", "--name-only", INTEGRATION).split()
    assert "two.txt" in files
    assert "one.txt" not in files
    worktree = repo.parent / "repo.swarm" / f"_integration-{RUN_ID}"
    assert git(worktree, "status", "--porcelain", "--untracked-files=all") == ""
    assert left_behind(repo) == []


RESOLVE_STEPS = [
    Step("merge", nth=2, after=True),  # conflicted, its resolver not started
    Step("add", word="--pathspec-from-file=-"),  # what the resolver did, staged
    Step("commit"),
    Step("commit", after=True),  # resolved and committed, not recorded
]
# Keeps both sides of each conflict and stages them, leaving the commit to swarm.
RESOLVER = """
import pathlib, subprocess
names = subprocess.run(["git", "diff", "--name-only", "--diff-filter=U"],
                       capture_output=True, text=True, check=True).stdout.split()
for name in names:
    p = pathlib.Path(name)
    rows = p.read_text().splitlines(keepends=True)
    p.write_text("".join(r for r in rows if not r.startswith(("<<<<<<<", "=======", ">>>>>>>"))))
    subprocess.run(["git", "add", "--", name], check=True)
"""


@pytest.mark.parametrize("step", RESOLVE_STEPS, ids=str)
def test_a_resolving_merge_killed_at_a_git_step_is_finished_by_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: Step
) -> None:
    repo = make_repo(tmp_path / "repo", {"f.txt": LINES})
    resolver = tmp_path / "resolver.py"
    resolver.write_text(RESOLVER)
    brancher = Brancher(repo)
    base = conflicting(repo, brancher, resolver)
    brancher.close()
    git(repo, "worktree", "prune")
    tips = {t: git(repo, "rev-parse", f"swarm/{t}") for t in ("first", "second")}
    killed_at(tmp_path, monkeypatch, repo, step, "merge", "--resolve")

    out = swarm(repo, "merge", "--resolve")

    assert out.returncode == 0, out.stdout + out.stderr
    _merged_once(repo, base, tips, INTEGRATION)
    text = git(repo, "show", f"{INTEGRATION}:f.txt")
    assert "five first" in text
    assert "five second" in text
    assert "<<<<<<<" not in text
    worktree = repo.parent / "repo.swarm" / f"_integration-{RUN_ID}"
    assert git(worktree, "status", "--porcelain", "--untracked-files=all") == ""


# --- swarm pr --------------------------------------------------------------------------

PR_STEPS = [Step("push"), Step("push", after=True), Step("push", nth=2, after=True)]


@pytest.fixture
def fake_github() -> Iterator[FakeGitHub]:
    with serve() as fake:
        yield fake


@pytest.mark.parametrize("step", PR_STEPS, ids=str)
def test_a_pr_killed_at_a_push_opens_each_pull_request_once_when_run_again(
    repo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    write_agent: Callable[[str], list[str]],
    fake_github: FakeGitHub,
    step: Step,
) -> None:
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", str(origin))
    git(repo, "remote", "add", "origin", str(origin))
    git(repo, "push", "-q", "origin", "main")
    out = swarm(
        repo, "run", "--agent", " ".join(write_agent(PR_AGENT)), "-t", "one=x", "-t", "two=y"
    )
    assert out.returncode == 0, out.stdout + out.stderr
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    fake_github.bare = origin
    pr = ("pr", "--github-repo", "acme/widgets", "--api-url", fake_github.url)
    killed_at(tmp_path, monkeypatch, repo, step, *pr)

    again = swarm(repo, *pr)

    assert again.returncode == 0, again.stdout + again.stderr
    heads = sorted(p["head"]["ref"] for p in fake_github.pulls.values())
    assert heads == ["swarm/one", "swarm/two"]  # one each, none twice
    numbers = {p["head"]["ref"]: n for n, p in fake_github.pulls.items()}
    rows = status_json(repo)
    for task in ("one", "two"):
        assert git(origin, "rev-parse", f"swarm/{task}") == git(repo, "rev-parse", f"swarm/{task}")
        assert rows[task]["pr_number"] == numbers[f"swarm/{task}"]
    assert left_behind(repo) == []


# --- swarm retry --fresh ---------------------------------------------------------------

FAILS_FIRST = """
import pathlib, sys
pathlib.Path('w.txt').write_text('work\\n')
flag = pathlib.Path(sys.argv[1])
if not flag.exists():
    flag.touch()
    sys.exit(1)
"""
RETRY_STEPS = [
    Step("add"),  # the commit of what the worktree holds
    Step("commit"),
    Step("commit", after=True),
    Step("worktree", word="prune"),  # the worktree deleted
    Step("branch"),  # its -D
    Step("branch", after=True),
    Step("update-ref"),  # the branch made again
    Step("read-tree"),  # the worktree checked out again
]


def _retried(repo: Path) -> list[object]:
    with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as db:
        rows = db.execute("SELECT data FROM events WHERE kind = 'retry'").fetchall()
    return [json.loads(row[0]).get("previous_tip") for row in rows]


@pytest.mark.parametrize("step", RETRY_STEPS, ids=str)
def test_a_fresh_retry_killed_at_a_git_step_is_finished_by_retry_or_resume(
    repo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    write_agent: Callable[[str], list[str]],
    step: Step,
) -> None:
    agent = [*write_agent(FAILS_FIRST), str(tmp_path / "failed")]
    assert swarm(repo, "run", "--agent", " ".join(agent), "-t", "a=x").returncode == 1
    worktree = repo.parent / "repo.swarm" / "a"
    (worktree / "hand.txt").write_text("by hand\n")  # to keep before the worktree goes
    base = git(repo, "rev-parse", "HEAD")
    killed_at(tmp_path, monkeypatch, repo, step, "retry", "--fresh", "a")

    out = swarm(repo, "retry", "--fresh", "a")
    if out.returncode == 2:  # begun: the run is carried on by a resume, as it says
        assert "`swarm resume` carries it on" in out.stderr, out.stderr
        out = swarm(repo, "resume")

    assert out.returncode == 0, out.stdout + out.stderr
    assert status_json(repo)["a"]["state"] == "done"
    kept = [tip for tip in _retried(repo) if tip is not None]
    assert kept, "the old tip is on record"
    assert git(repo, "show", f"{kept[0]}:hand.txt") == "by hand"
    assert git(repo, "show", f"{kept[0]}:w.txt") == "work"
    tip = git(repo, "rev-parse", "swarm/a")
    assert not holds(repo, kept[0], tip)  # started over
    assert git(repo, "merge-base", base, tip) == base
    assert git(worktree, "rev-parse", "HEAD") == tip
    assert git(worktree, "status", "--porcelain", "--untracked-files=all") == ""
    assert left_behind(repo) == []


# --- swarm clean --yes -----------------------------------------------------------------

CLEAN_STEPS = [
    Step("add"),  # the checkpoint of task one's uncommitted work
    Step("commit-tree"),
    Step("commit-tree", after=True),
    Step("update-ref"),  # the checkpoint's branch moved from the tip it was made on
    Step("update-ref", after=True),
    Step("status", nth=3),  # between the worktrees' removals
    Step("update-ref", nth=2),  # the branches' deletion
    Step("update-ref", nth=2, after=True),
]


@pytest.mark.parametrize("step", CLEAN_STEPS, ids=str)
def test_a_clean_killed_at_a_git_step_is_finished_by_the_next_clean(
    repo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    write_agent: Callable[[str], list[str]],
    step: Step,
) -> None:
    agent = " ".join(write_agent(PR_AGENT))
    assert swarm(repo, "run", "--agent", agent, "-t", "one=x", "-t", "two=y").returncode == 0
    assert swarm(repo, "merge").returncode == 0
    git(repo, "merge", "-q", "--ff-only", f"swarm/integration-{status_run(repo)}")
    root = repo.parent / "repo.swarm"
    (root / "one" / "left.txt").write_text("uncommitted\n")
    before = checkout_snapshot(repo)
    killed_at(tmp_path, monkeypatch, repo, step, "clean", "--yes")

    out = swarm(repo, "clean", "--yes")

    assert out.returncode == 0, out.stdout + out.stderr
    assert git(repo, "show", "swarm/one:left.txt") == "uncommitted"
    assert (
        git(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/") == "main\nswarm/one"
    )
    assert not root.exists() or list(root.iterdir()) == []
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    assert left_behind(repo) == []
    assert checkout_snapshot(repo) == before
    doctor = swarm(repo, "doctor")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr


def status_run(repo: Path) -> str:
    out = swarm(repo, "status", "--json")
    return str(json.loads(out.stdout)["run_id"])
