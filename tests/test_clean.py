"""`swarm clean` and `swarm doctor`: each broken state built for real, then found and fixed."""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import filelock
import psutil
import pytest

from tests.conftest import (
    agent_command,
    agent_python,
    as_owner_only,
    checkpoint_lines,
    git,
    git_first_on_path,
    hang_git_at,
    make_repo,
)
from tests.test_crash import stray_at_failed_task
from tests.test_retry_fresh_checkout import switched_and_sealed
from tests.test_run import (
    HANGING_TREE_AGENT,
    argv_toml,
    manifest,
    pid_alive,
    state_db,
    status_json,
    swarm,
    swarm_bg,
    wait_for,
    written,
)
from tests.test_trust import CHECK_THEN_WAIT, outside_writes
from worktree_swarm.cleanup import branches, findings, fixes, processes
from worktree_swarm.git import branches as git_branches
from worktree_swarm.git import repo as g
from worktree_swarm.git.gitfiles import REMOVING_INDEX
from worktree_swarm.infra.lock import ManagerLock
from worktree_swarm.report.run_info import open_store
from worktree_swarm.ui import watch_actions

AgentFactory = Callable[[str], list[str]]

# Behaves by task id: "edits" and "fails" write a file, "fails" then exits 1, others do nothing.
BY_ID_AGENT = """
import os, pathlib, sys
tid = os.environ['SWARM_TASK_ID']
if tid in ('edits', 'fails', 'gone'):
    pathlib.Path(tid + '.txt').write_text(tid + '\\n')
sys.exit(1 if tid == 'fails' else 0)
"""


def edits_done(repo: Path, write_agent: AgentFactory) -> Path:
    """A run of task `edits` (done, one file added); its worktree."""
    agent = " ".join(write_agent(BY_ID_AGENT))
    assert swarm(repo, "run", "--agent", agent, "-t", "edits=a").returncode == 0
    return repo.parent / "repo.swarm" / "edits"


def checkout_state(repo: Path) -> tuple[str, str, str]:
    """HEAD, `git status --porcelain`, and a hash of every tracked and untracked file."""
    names = git(repo, "ls-files", "-z", "--cached", "--others").split("\0")
    digest = hashlib.sha256()
    for name in sorted(n for n in names if n):
        digest.update(name.encode() + b"\0" + (repo / name).read_bytes() + b"\0")
    return (
        git(repo, "rev-parse", "HEAD"),
        git(repo, "status", "--porcelain", "--untracked-files=all"),
        digest.hexdigest(),
    )


def report(repo: Path, *args: str, code: int) -> dict[str, dict[str, object]]:
    """Run `swarm <args> --json`, check the exit code, return findings by target."""
    out = swarm(repo, *args, "--json")
    assert out.returncode == code, out.stdout + out.stderr
    return {f["target"]: f for f in json.loads(out.stdout)["findings"]}


def worktree_paths(repo: Path) -> list[str]:
    out = git(repo, "worktree", "list", "--porcelain")
    return [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("worktree ")]


Reaper = list[int | subprocess.Popen[bytes]]


@pytest.fixture
def reaper() -> Iterator[Reaper]:
    """Processes the test started (Popen or PID); whatever is left is killed and reaped."""
    started: Reaper = []
    yield started
    for item in started:
        pid = item if isinstance(item, int) else item.pid
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        if not isinstance(item, int):
            item.wait(timeout=30)


def sleeper(cwd: Path, reaper: Reaper) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        # A test program: without coverage's hook, whose SIGTERM handler would save data first.
        [*agent_python(), "-c", "import time\nwhile True: time.sleep(1)"],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    reaper.append(proc)
    return proc


def index_copies(repo: Path) -> list[Path]:
    """The guard's copies of checkouts' indexes in every run's directory."""
    guards = (repo / ".git" / "swarm" / "runs").glob("*/guard")
    return sorted(p for g in guards for p in g.iterdir() if p.name.endswith("index"))


def test_clean_removes_finished_worktrees_and_merged_branches_only(
    repo: Path, write_agent: AgentFactory
) -> None:
    agent = " ".join(write_agent(BY_ID_AGENT))
    out = swarm(repo, "run", "--agent", agent, "-t", "edits=a", "-t", "nothing=b", "-t", "fails=c")
    assert out.returncode == 1, out.stderr
    root = repo.parent / "repo.swarm"
    # The guard's copies of each checkout's index (the size of the index, per task) went
    # after its last scan; those an older swarm left go with `clean --yes`.
    (guard,) = (repo / ".git" / "swarm" / "runs").glob("*/guard")
    assert index_copies(repo) == []
    for name in ("task-edits.index", "main.scratch-index"):
        (guard / name).write_bytes(b"DIRC")
    (root / "edits" / "later.txt").write_text("typed by the user after the run\n")
    before = checkout_state(repo)

    found = report(repo, "clean", code=1)
    assert found[str(root / "edits")]["action"] == "remove_worktree"
    assert "uncommitted changes on swarm/edits" in str(found[str(root / "edits")]["fix"])
    assert found["swarm/nothing"]["action"] == "delete_branch"
    assert "merged into main" in str(found["swarm/nothing"]["reason"])
    assert found["swarm/edits"]["action"] == "keep"
    assert found["swarm/fails"]["action"] == "keep"
    assert "task fails is failed" in str(found["swarm/fails"]["reason"])
    # A dry run changes nothing.
    assert len(worktree_paths(repo)) == 4
    assert (root / "edits" / "later.txt").exists()

    out = swarm(repo, "clean", "--yes")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "done: checkpointed" in out.stdout
    assert index_copies(repo) == []
    assert worktree_paths(repo) == [str(repo)]
    assert not root.exists()
    assert git(repo, "branch", "--list", "swarm/*").split() == ["swarm/edits", "swarm/fails"]
    # Uncommitted work survives on the branch.
    assert git(repo, "show", "swarm/edits:later.txt") == "typed by the user after the run"
    assert git(repo, "show", "swarm/edits:edits.txt") == "edits"
    # History stays for `swarm report`.
    assert status_json(repo)["edits"]["state"] == "done"

    out = swarm(repo, "clean")
    assert out.returncode == 0
    # Not "nothing to clean" while those branches are there: named again, not listed again.
    assert out.stdout == (
        "kept as before, not merged: swarm/edits, swarm/fails (merge them, or delete them with "
        "--force)\nnothing else to clean\n"
    )
    shown = json.loads(swarm(repo, "clean", "--json").stdout)
    assert (shown["findings"], shown["kept_before"]) == ([], ["swarm/edits", "swarm/fails"])
    assert checkout_state(repo) == before
    git(repo, "branch", "-D", "swarm/fails")  # the user deleted one: the other is named alone
    assert swarm(repo, "clean").stdout == (
        "kept as before, not merged: swarm/edits (merge it, or delete it with --force)\n"
        "nothing else to clean\n"
    )

    found = report(repo, "clean", "--all", "--force", "--yes", code=0)
    assert {t for t, f in found.items() if f["fixed"]} == {"swarm/edits"}
    assert not git(repo, "branch", "--list", "swarm/*")
    assert checkout_state(repo) == before


def test_clean_leaves_the_guard_copies_of_an_ended_run_while_a_manager_holds_the_repository(
    repo: Path, write_agent: AgentFactory
) -> None:
    # A `swarm resume` of that run starting: its new guard's copies were deleted under it.
    edits_done(repo, write_agent)
    (guard,) = (repo / ".git" / "swarm" / "runs").glob("*/guard")
    copy, held = guard / "task-edits.index", guard / "held" / "pack"
    copy.write_bytes(b"DIRC")
    held.mkdir(parents=True)
    with ManagerLock(repo / ".git" / "swarm") as manager:
        manager.acquire()
        out = swarm(repo, "clean", "--yes")
        assert out.returncode == 0, out.stdout + out.stderr
        assert index_copies(repo) == [copy]
        assert held.is_dir()
    out = swarm(repo, "clean", "--yes")
    assert out.returncode == 0, out.stdout + out.stderr
    assert index_copies(repo) == []
    assert not held.parent.exists()


def test_a_branch_no_clean_named_yet_is_named_in_full_then_in_one_line(
    repo: Path, write_agent: AgentFactory
) -> None:
    # Kept silently by --keep-branches, it was taken for one an earlier clean had named.
    agent = " ".join(write_agent(BY_ID_AGENT))
    assert swarm(repo, "run", "--agent", agent, "-t", "edits=a").returncode == 0
    out = swarm(repo, "clean", "--yes", "--keep-branches")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "  swarm/edits:" not in out.stdout  # the worktree only
    found = report(repo, "clean", code=0)
    assert found["swarm/edits"]["action"] == "keep"
    assert "not merged into" in str(found["swarm/edits"]["reason"])
    # Not "0 to fix, 1 kept; run again with --yes to fix them": --yes keeps it too.
    assert swarm(repo, "clean").stdout.splitlines()[-1] == "nothing to fix, 1 kept"
    assert swarm(repo, "clean", "--yes").returncode == 0  # named now
    out = swarm(repo, "clean")
    assert out.stdout.startswith("kept as before, not merged: swarm/edits (")


def test_clean_deletes_a_copy_of_your_claude_sign_in_a_killed_manager_left(
    repo: Path, write_agent: AgentFactory
) -> None:
    # A manager takes the copy out when its agent ends; one SIGKILLed first left the tokens
    # under .git/swarm, and clean and doctor said nothing was left.
    agent = " ".join(write_agent(BY_ID_AGENT))
    assert swarm(repo, "run", "--agent", agent, "-t", "edits=a").returncode == 0
    (config,) = (repo / ".git" / "swarm" / "runs").glob("*/edits")
    left = config / "agent-config" / ".credentials.json"
    left.parent.mkdir(parents=True, exist_ok=True)
    left.write_text('{"claudeAiOauth": {"accessToken": "a", "refreshToken": "r"}}')
    (left.parent / ".claude.json").write_text("{}")
    assert swarm(repo, "clean").returncode in (0, 1)  # a look deletes nothing
    assert left.exists()
    assert swarm(repo, "clean", "--yes").returncode == 0
    assert not left.exists()
    assert (left.parent / ".claude.json").exists()  # no token in it: kept, as the session is


def test_clean_of_a_local_run_never_deletes_a_branch_on_a_remote(
    repo: Path, write_agent: AgentFactory, tmp_path: Path
) -> None:
    # Only a Ray run pushes its branches itself (docs/cluster.md); these were pushed by hand,
    # as `swarm pr` would: a pull request's branch, which clean leaves alone.
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    git(repo, "remote", "add", "origin", str(remote))
    agent = " ".join(write_agent(BY_ID_AGENT))
    out = swarm(repo, "run", "--agent", agent, "-t", "edits=a")
    assert out.returncode == 0, out.stderr
    git(repo, "push", "-q", "origin", "swarm/edits")
    found = report(repo, "clean", "--force", "--yes", code=0)
    assert found["swarm/edits"]["fixed"] is True
    assert not [f for f in found.values() if f["kind"] == "remote_branch"]
    assert not git(repo, "branch", "--list", "swarm/*")
    assert git(remote, "for-each-ref", "--format=%(refname)") == "refs/heads/swarm/edits"


@pytest.mark.slow  # long: runs in `scripts/check --slow` (CI runs both)
def test_clean_all_costs_no_git_process_per_run_that_left_nothing(
    repo: Path, write_agent: AgentFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The store keeps every run for `swarm report`: planning `clean --all` must not grow with
    # that history, only with what is left to clean.
    agent = " ".join(write_agent(BY_ID_AGENT))

    def run_and_clean(task: str) -> None:
        assert swarm(repo, "run", "--agent", agent, "-t", f"{task}=a").returncode == 0
        assert swarm(repo, "clean", "--all", "--force", "--yes").returncode == 0

    def git_started_by_a_plan() -> int:
        trace = tmp_path / "trace.json"
        trace.unlink(missing_ok=True)
        with monkeypatch.context() as m:
            m.setenv("GIT_TRACE2_EVENT", str(trace))
            out = swarm(repo, "clean", "--all")
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.strip() == "nothing to clean"
        return trace.read_text().count('"event":"start"')

    run_and_clean("edits")
    after_one = git_started_by_a_plan()
    for task in ("gone", "edits"):
        run_and_clean(task)
    assert len(json.loads(swarm(repo, "runs", "--json").stdout)["runs"]) == 3
    assert git_started_by_a_plan() == after_one


def _reused_task_id(repo: Path, write_agent: AgentFactory, task: str = "edits") -> tuple[str, str]:
    """Runs A and B of one task (nightly batches reuse task ids): A's is cleaned, then B's
    gets the same branch and worktree path. Their run ids."""
    agent = " ".join(write_agent(BY_ID_AGENT))
    code = 1 if task == "fails" else 0
    assert swarm(repo, "run", "--agent", agent, "-t", f"{task}=a").returncode == code
    assert swarm(repo, "clean", "--force", "--yes").returncode == 0
    assert swarm(repo, "run", "--agent", agent, "-t", f"{task}=a").returncode == code
    runs = json.loads(swarm(repo, "runs", "--json").stdout)["runs"]
    first, second = (r["run_id"] for r in runs)
    return first, second


def test_an_earlier_run_never_claims_the_worktree_and_branch_a_later_run_reused(
    repo: Path, write_agent: AgentFactory
) -> None:
    # Cleaning run A (even by force) must leave run B's branch and worktree alone.
    first, second = _reused_task_id(repo, write_agent)
    path = str(repo.parent / "repo.swarm" / "edits")
    tip = git(repo, "rev-parse", "swarm/edits")

    out = swarm(repo, "clean", "--run", first, "--force", "--yes", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["findings"] == []
    assert path in worktree_paths(repo)
    assert git(repo, "rev-parse", "swarm/edits") == tip

    # Cleaning every run plans the reused worktree and branch once, as run B's.
    out = swarm(repo, "clean", "--all", "--json")
    findings = json.loads(out.stdout)["findings"]
    assert sorted((f["target"], f["run_id"]) for f in findings) == [
        (path, second),
        ("swarm/edits", second),
    ]


@pytest.mark.slow  # long: runs in `scripts/check --slow` (CI runs both)
def test_merging_or_diffing_an_earlier_run_never_takes_the_branch_a_later_run_reused(
    repo: Path, write_agent: AgentFactory
) -> None:
    first, second = _reused_task_id(repo, write_agent)
    tip = git(repo, "rev-parse", "swarm/edits")

    out = swarm(repo, "merge", "--run", first, "--json")
    assert out.returncode == 1, out.stdout + out.stderr  # something asked was not merged
    merged = json.loads(out.stdout)
    assert (merged["merged"], merged["skipped"]) == ([], ["edits"])
    (result,) = merged["results"]
    assert result["reason"] == f"branch swarm/edits is run {second}'s now (it reused the task id)"
    (diff,) = json.loads(swarm(repo, "diff", "--run", first, "edits", "--json").stdout)["tasks"]
    assert diff["tip"] is None
    assert git(repo, "rev-parse", "swarm/edits") == tip
    # The later run's own merge takes it.
    out = swarm(repo, "merge", "--run", second, "--json")
    assert json.loads(out.stdout)["merged"] == ["edits"]


def test_an_earlier_run_never_retries_or_shows_as_its_own_a_task_a_later_run_reused(
    repo: Path, write_agent: AgentFactory
) -> None:
    # Retrying run A's task would put A's agent to work on run B's branch and worktree, and
    # `--fresh` would delete them: refused before anything changes, named or not.
    first, second = _reused_task_id(repo, write_agent, "fails")
    path = repo.parent / "repo.swarm" / "fails"
    tip = git(repo, "rev-parse", "swarm/fails")
    work = (path / "fails.txt").read_text()
    for args in (["fails"], ["fails", "--fresh"], []):
        out = swarm(repo, "retry", "--run", first, *args)
        assert out.returncode == 2, out.stdout + out.stderr
        assert second in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    with open_store(g.open_repo(repo)) as store:  # the same from `swarm watch`'s key
        result = watch_actions.retry(g.open_repo(repo), store, first, "fails")
    assert not result.ok
    assert f"run {second} reused its id" in result.message
    assert git(repo, "rev-parse", "swarm/fails") == tip
    assert (path / "fails.txt").read_text() == work
    assert str(path) in worktree_paths(repo)

    # Run A's status and report tell the worktree there is B's, not A's kept work.
    def status_of(run: str) -> dict[str, Any]:
        return dict(json.loads(swarm(repo, "status", "--run", run, "--json").stdout))

    earlier = status_of(first)
    assert earlier["run_state"] == "finished"
    (row,) = earlier["tasks"]
    assert (row["state"], row["worktree_present"], row["taken_by"]) == ("failed", False, second)
    (row,) = status_of(second)["tasks"]
    assert (row["worktree_present"], row["taken_by"]) == (True, None)
    text = swarm(repo, "status", "--run", first).stdout
    assert f"swarm/fails is run {second}'s now" in text
    (task,) = json.loads(swarm(repo, "report", "--run", first, "--json").stdout)["tasks"]
    assert task["worktree_present"] is False
    # And its diff names the run whose branch it is now, not "no branch".
    diff = swarm(repo, "diff", "--run", first, "fails", "--stat")
    assert f"fails  failed  (swarm/fails is run {second}'s now: it reused the task id)" in (
        diff.stdout
    )
    (shown,) = json.loads(swarm(repo, "diff", "--run", first, "fails", "--json").stdout)["tasks"]
    assert (shown["taken_by"], shown["tip"]) == (second, None)


def test_clean_yes_keeps_a_merged_branch_whose_worktree_holds_new_work(
    repo: Path, write_agent: AgentFactory
) -> None:
    # Carried out at once, the plan takes a worktree's status only where it decides something:
    # here whether a merged branch may go (a checkpoint of the new work will move it).
    agent = " ".join(write_agent(BY_ID_AGENT))
    out = swarm(repo, "run", "--agent", agent, "-t", "nothing=a", "-t", "idle=b")
    assert out.returncode == 1, out.stderr  # both changed nothing: `no_changes`
    root = repo.parent / "repo.swarm"
    (root / "nothing" / "later.txt").write_text("typed by the user after the run\n")

    found = report(repo, "clean", "--yes", code=0)
    assert found[str(root / "nothing")]["fixed"] is True
    assert found["swarm/nothing"]["action"] == "keep"
    assert found["swarm/idle"]["action"] == "delete_branch"
    assert found["swarm/idle"]["fixed"] is True
    assert worktree_paths(repo) == [str(repo)]
    assert git(repo, "branch", "--list", "swarm/*").split() == ["swarm/nothing"]
    assert git(repo, "show", "swarm/nothing:later.txt") == "typed by the user after the run"


def test_clean_removes_git_lock_files_whose_writer_is_gone(
    repo: Path, write_agent: AgentFactory
) -> None:
    # Left by a killed git, or planted by an agent: your `git commit` failed on index.lock,
    # and clean failed to delete a merged branch on its lock ("Another git process").
    agent = " ".join(write_agent(BY_ID_AGENT))
    assert swarm(repo, "run", "--agent", agent, "-t", "idle=b").returncode == 1
    locks = [repo / ".git" / "index.lock", repo / ".git" / "refs" / "heads" / "swarm" / "idle.lock"]
    for lock in locks:
        lock.write_text("")

    planned = report(repo, "clean", code=1)
    done = report(repo, "clean", "--yes", code=0)

    assert all(planned[str(lock)]["action"] == "unlink_lock" for lock in locks)
    assert all(done[str(lock)]["fixed"] for lock in locks)
    assert not any(lock.exists() for lock in locks)
    assert git(repo, "branch", "--list", "swarm/*") == ""


@pytest.mark.parametrize("flag", ["--skip-worktree", "--assume-unchanged"])
def test_clean_commits_an_edit_an_index_flag_hides_from_git_status(
    repo: Path, write_agent: AgentFactory, flag: str
) -> None:
    # `git status` shows no edit of a file so flagged: the worktree went as one with nothing
    # to keep, and the edit with it.
    agent = " ".join(write_agent(BY_ID_AGENT))
    assert swarm(repo, "run", "--agent", agent, "-t", "nothing=a").returncode == 1
    worktree = repo.parent / "repo.swarm" / "nothing"
    (worktree / "README.md").write_text("edited after the run\n")
    git(worktree, "update-index", flag, "README.md")
    assert git(worktree, "status", "--porcelain") == ""

    found = report(repo, "clean", "--yes", code=0)

    assert found[str(worktree)]["fixed"] is True
    assert "checkpointed" in str(found[str(worktree)]["result"])
    assert git(repo, "show", "swarm/nothing:README.md") == "edited after the run"


def _cleaned_after_a_failed_run(repo: Path, write_agent: AgentFactory) -> None:
    """Run task `nothing` (it fails), write later.txt in its worktree, then `swarm clean --yes`.

    The clean checkpoints that file onto swarm/nothing.
    """
    agent = " ".join(write_agent(BY_ID_AGENT))
    assert swarm(repo, "run", "--agent", agent, "-t", "nothing=a").returncode == 1
    worktree = repo.parent / "repo.swarm" / "nothing"
    (worktree / "later.txt").write_text("written after the run\n")

    found = report(repo, "clean", "--yes", code=0)

    assert "checkpointed" in str(found[str(worktree)]["result"])


def test_clean_commits_what_it_finds_as_you_as_the_runs_own_checkpoints(
    repo: Path, write_agent: AgentFactory
) -> None:
    # Its commit was always `worktree-swarm <swarm@localhost>`'s, whoever ran the run.
    you = git(repo, "var", "GIT_AUTHOR_IDENT").rsplit(" ", 2)[0]  # as git takes it
    _cleaned_after_a_failed_run(repo, write_agent)
    assert git(repo, "show", "swarm/nothing:later.txt") == "written after the run"
    made = git(repo, "log", "-1", "--format=%an <%ae>|%cn <%ce>", "swarm/nothing")
    assert made == f"{you}|{you}"
    assert "swarm@localhost" not in you


def test_clean_commits_what_it_finds_with_the_tasks_swarm_trailers(
    repo: Path, write_agent: AgentFactory
) -> None:
    # Its commit named no task, attempt or agent, as every other checkpoint does.
    _cleaned_after_a_failed_run(repo, write_agent)
    assert checkpoint_lines(repo, "swarm/nothing") == [
        "swarm: checkpoint nothing (clean)",
        "Swarm-Task: nothing",
        "Swarm-Attempt: 1",
        "Swarm-Agent: command",
    ]


def test_clean_keeps_a_worktree_in_use_unless_forced(
    repo: Path, write_agent: AgentFactory, reaper: Reaper
) -> None:
    path = edits_done(repo, write_agent)
    user = sleeper(path, reaper)

    out = swarm(repo, "clean", "--yes", "--keep-branches")
    assert out.returncode == 1
    assert f"(pid {user.pid}) is using it; stop it first, or use --force" in out.stdout
    assert path.is_dir()

    found = report(repo, "clean", "--yes", "--force", "--keep-branches", code=0)
    assert found[f"pid {user.pid}"]["fixed"] is True
    assert user.wait(timeout=30) == -signal.SIGTERM
    assert not path.exists()
    assert git(repo, "show", "swarm/edits:edits.txt") == "edits"


# Leaves its own `git merge` stopped on a conflict (add/add of f.txt), as a coding agent may.
CONFLICTED_MERGE_AGENT = """
import pathlib, subprocess
def git(*args):
    return subprocess.run(['git', *args], check=True, capture_output=True, text=True).stdout
def commit(text):
    pathlib.Path('f.txt').write_text(text)
    git('add', 'f.txt')
    git('commit', '-q', '-m', text.strip())
commit('theirs\\n')
theirs = git('rev-parse', 'HEAD').strip()
git('reset', '-q', '--hard', 'HEAD~1')
commit('ours\\n')
subprocess.run(['git', 'merge', '-q', theirs], check=False, capture_output=True)
"""


def test_a_merge_an_agent_left_with_its_conflicts_is_never_committed_and_clean_keeps_it(
    repo: Path, write_agent: AgentFactory
) -> None:
    # A checkpoint's `git add --all` would take the conflict markers for the resolution, and
    # its commit would conclude the merge with them.
    agent = " ".join(write_agent(CONFLICTED_MERGE_AGENT))
    out = swarm(repo, "run", "--agent", agent, "-t", "merger=merge")
    assert out.returncode == 1, out.stdout + out.stderr
    path = repo.parent / "repo.swarm" / "merger"
    ours = git(repo, "rev-parse", "swarm/merger")
    assert git(repo, "show", "swarm/merger:f.txt") == "ours"
    assert "<<<<<<<" in (path / "f.txt").read_text()
    assert git(path, "ls-files", "-u")  # the merge as the agent left it
    row = status_json(repo)["merger"]
    assert row["state"] == "failed", row
    assert "a merge with unresolved conflicts is in progress" in str(row["reason"]), row

    for _ in range(2):  # and so on, until you resolve or abort it
        out = swarm(repo, "clean", "--yes", "--force")
        assert out.returncode == 1, out.stdout + out.stderr
        assert "a merge is in progress in its worktree" in out.stdout, out.stdout
        assert "kept: finish there" in out.stdout, out.stdout
        assert path.is_dir()
        assert git(repo, "rev-parse", "swarm/merger") == ours
        assert git(path, "ls-files", "-u")
    git(path, "merge", "--abort")
    out = swarm(repo, "clean", "--yes")
    assert out.returncode == 0, out.stdout + out.stderr
    assert not path.exists()
    assert git(repo, "rev-parse", "swarm/merger") == ours


def test_a_lock_reason_an_agent_wrote_reaches_your_terminal_as_one_printable_line(
    repo: Path, write_agent: AgentFactory
) -> None:
    # Anyone who can write the worktree's admin dir writes its lock's reason, which `swarm
    # clean` shows: its terminal escapes retitled your window (OSC) or worse.
    agent = write_agent(
        "import pathlib, subprocess\n"
        "admin = subprocess.run(['git', 'rev-parse', '--absolute-git-dir'], capture_output=True,"
        " text=True, check=True).stdout.strip()\n"
        "reason = '\\x1b]0;retitled\\x07\\x1b[2Jkeep\\nme\\x1b]52;c;Y2xpcA==\\x07 '\n"
        "pathlib.Path(admin, 'locked').write_text(reason)\n"
        "pathlib.Path('work.txt').write_text('work')\n"
    )
    out = swarm(repo, "run", "--agent", " ".join(agent), "-t", "t=x")
    assert out.returncode == 0, out.stdout + out.stderr

    out = swarm(repo, "clean", "--yes", "--keep-branches")

    assert out.returncode == 1, out.stdout + out.stderr
    assert "it is locked (keep me);" in out.stdout
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", out.stdout + out.stderr)


def test_clean_keeps_a_locked_worktree_unless_forced_and_one_on_a_detached_head_always(
    repo: Path, write_agent: AgentFactory
) -> None:
    agent = " ".join(write_agent(BY_ID_AGENT))
    out = swarm(repo, "run", "--agent", agent, "-t", "edits=a", "-t", "gone=b")
    assert out.returncode == 0, out.stdout + out.stderr
    root = repo.parent / "repo.swarm"
    locked, detached = root / "edits", root / "gone"
    git(repo, "worktree", "lock", "--reason", "on a USB disk", str(locked))
    # Work of yours there that no branch holds: a commit on a detached HEAD.
    git(detached, "switch", "-q", "--detach")
    (detached / "mine.txt").write_text("only here\n")
    git(detached, "add", "mine.txt")
    git(detached, "commit", "-q", "-m", "mine")
    mine = git(detached, "rev-parse", "HEAD")

    out = swarm(repo, "clean", "--yes", "--keep-branches")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "it is locked (on a USB disk)" in out.stdout
    assert f"is on a detached HEAD at {mine[:12]} now, not swarm/gone" in out.stdout
    assert locked.is_dir()
    assert git(detached, "rev-parse", "HEAD") == mine
    assert (detached / "mine.txt").read_text() == "only here\n"

    # Forced, its commit on no branch would go with it: kept, as one on another branch is.
    found = report(repo, "clean", "--yes", "--force", "--keep-branches", code=1)
    assert found[str(locked)]["fixed"] is True
    assert found[str(detached)]["action"] == "keep"
    assert worktree_paths(repo) == [str(repo), str(detached)]
    assert git(detached, "rev-parse", "HEAD") == mine
    assert git(repo, "branch", "--list", "swarm/*").split() == ["swarm/edits", "swarm/gone"]


def test_clean_during_a_run_leaves_its_unfinished_tasks_and_the_branches_they_start_from(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, reaper: Reaper
) -> None:
    go = tmp_path / "go"
    agent = write_agent(
        "import os, pathlib, sys, time\n"
        "tid = os.environ['SWARM_TASK_ID']\n"
        f"go = pathlib.Path({str(go)!r})\n"
        "if tid == 'slow':\n"
        "    pathlib.Path(str(go) + '.waiting').touch()\n"
        "    while not go.exists():\n"
        "        time.sleep(0.05)\n"
        "if tid == 'last':  # starts from both: their work must be there\n"
        "    both = all(pathlib.Path(f).exists() for f in ('quick.txt', 'slow.txt'))\n"
        "    if not both:\n"
        "        sys.exit(5)\n"
        "pathlib.Path(tid + '.txt').write_text(tid + '\\n')\n"
    )
    path = manifest(
        repo,
        f"""
[defaults]
agent = {argv_toml(agent)}
jobs = 2
[[task]]
id = "quick"
prompt = "p"
[[task]]
id = "slow"
prompt = "p"
[[task]]
id = "last"
prompt = "p"
depends_on = ["quick", "slow"]
""",
    )
    manager = swarm_bg(repo, "run", path)
    reaper.append(manager)
    try:
        wait_for(Path(str(go) + ".waiting").exists, what="task slow's agent")
        wait_for(lambda: status_json(repo)["quick"]["state"] == "done", what="task quick")
        root = repo.parent / "repo.swarm"

        found = report(repo, "clean", "--yes", "--force", code=0)
        assert found[str(root / "quick")]["fixed"] is True  # a finished task's worktree goes
        kept = found["swarm/quick"]
        assert (kept["action"], kept["fix"]) == ("keep", "kept, also with --force")
        assert str(kept["reason"]).endswith("task last still starts from it")
        assert not {str(root / "slow"), "swarm/slow", "swarm/last"} & set(found)
        assert (root / "slow").is_dir()
        # The live run's copies of indexes are its guard's: clean leaves them; the guard drops
        # the one of the worktree clean removed.
        assert any(p.name == "main.index" for p in index_copies(repo))
        wait_for(
            lambda: not any(p.name.startswith("task-quick.") for p in index_copies(repo)),
            what="the guard to drop its copy of quick's index",
        )
    finally:  # its agent ends either way (it would outlive the manager the reaper kills)
        go.touch()
    assert manager.wait(timeout=60) == 0, (repo.parent / "bg.log").read_text()
    # The worktree clean removed while slow's agent ran is swarm's doing: nobody is blamed,
    # and it stays removed.
    assert outside_writes(repo) == []
    assert {row["state"] for row in status_json(repo).values()} == {"done"}
    assert not (root / "quick").exists()
    assert git(repo, "show", "swarm/last:quick.txt") == "quick"  # started from both
    assert git(repo, "show", "swarm/last:slow.txt") == "slow"
    assert index_copies(repo) == []


@pytest.mark.slow  # long: runs in `scripts/check --slow` (CI runs both)
def test_clean_waits_for_a_git_a_killed_swarm_left_in_a_worktree(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    path = edits_done(repo, write_agent)
    # What a SIGKILLed `swarm clean` leaves: its checkpoint's git, working on, its parent gone.
    stray = tmp_path / "bin" / "git"
    stray.parent.mkdir()
    done = tmp_path / "stray-done"
    stray.write_text(
        f"#!{sys.executable}\nimport pathlib, time\ntime.sleep(2)\n"
        f"pathlib.Path({str(done)!r}).touch()\n"
    )
    stray.chmod(0o755)
    subprocess.run(["sh", "-c", f"{shlex.quote(str(stray))} &"], cwd=path, check=True)
    wait_for(
        lambda: any(p.info["name"] == "git" and p.info["ppid"] == 1 and p.info["cwd"] == str(path)
                    for p in psutil.process_iter(["name", "ppid", "cwd"])),
        what="the orphaned git",
    )  # fmt: skip
    out = swarm(repo, "clean", "--yes", "--keep-branches")
    assert out.returncode == 0, out.stdout + out.stderr
    assert done.exists()  # it ended by itself: waited for, not killed
    assert not path.exists()


@pytest.mark.long
def test_doctor_finds_and_fixes_what_a_crash_left(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, reaper: Reaper
) -> None:
    git(repo, "commit", "-q", "--allow-empty", "-m", "second")
    git(repo, "branch", "swarm/old-merged", "HEAD~1")
    lone = git(repo, "commit-tree", "-p", "HEAD", "-m", "lone work", "HEAD^{tree}")
    git(repo, "branch", "swarm/old-unmerged", lone)
    pids = tmp_path / "pids"
    pids.mkdir()
    quick = argv_toml(write_agent(BY_ID_AGENT))
    path = manifest(
        repo,
        f"""
[defaults]
agent = {argv_toml(write_agent(HANGING_TREE_AGENT))}
kill_grace = "1s"
jobs = 2
[[task]]
id = "gone"
prompt = "quick"
agent = {quick}
[[task]]
id = "hang"
prompt = "never ends"
env = {{ PIDS = {json.dumps(str(pids))} }}
""",
    )
    manager = swarm_bg(repo, "run", path)
    reaper.append(manager)
    wait_for((pids / "grandchild").exists, what="the agent tree to start")
    wait_for(lambda: status_json(repo)["gone"]["state"] == "done", what="task gone to finish")
    manager.kill()  # the manager dies; its agent tree lives on
    manager.wait(timeout=30)
    agent_pid, grandchild_pid = (int(written(pids / n)) for n in ("agent", "grandchild"))
    reaper += [agent_pid, grandchild_pid]
    root = repo.parent / "repo.swarm"
    hang = root / "hang"
    stray_user = sleeper(hang, reaper)
    subprocess.run(["rm", "-rf", str(root / "gone")], check=True)  # deleted by hand
    (root / "stray").mkdir()
    (root / "stray" / "notes.txt").write_text("notes nobody committed\n")
    git(repo, "worktree", "add", "-q", "-b", "manual-fix", str(root / "manual"))
    (root / "manual" / "wip.txt").write_text("work in progress\n")
    before = checkout_state(repo)

    with state_db(repo) as db:  # the recorded process: the agent's shim, where there is one
        (recorded,) = db.execute("SELECT pid FROM attempts WHERE task_id = 'hang'").fetchone()
    found = report(repo, "doctor", code=1)
    expected = {
        f"pid {recorded}": ("process", "stop_task", "agent of task hang"),
        f"pid {stray_user.pid}": ("process", "kill", "under the worktree root"),
        str(root / "gone"): ("worktree", "prune", "prunable"),
        str(root / "manual"): ("worktree", "remove_worktree", "no swarm task owns it"),
        str(root / "stray"): ("directory", "rescue_directory", "not a registered worktree"),
        "swarm/old-merged": ("branch", "delete_branch", "merged into main"),
        "swarm/old-unmerged": ("branch", "keep", "not merged"),
    }
    assert set(found) == set(expected)
    for target, (kind, action, reason) in expected.items():
        assert (found[target]["kind"], found[target]["action"]) == (kind, action), target
        assert reason in str(found[target]["reason"]), target
    assert pid_alive(agent_pid)
    assert (root / "stray").is_dir()

    found = report(repo, "clean", "--orphans", "--yes", code=1)
    assert [t for t, f in found.items() if not f["fixed"]] == ["swarm/old-unmerged"]
    assert stray_user.wait(timeout=30) == -signal.SIGTERM
    for pid in (agent_pid, grandchild_pid):
        assert not pid_alive(pid)
    assert status_json(repo)["hang"]["state"] == "stopped"
    assert git(repo, "show", "swarm/hang:partial.txt") == "half done"
    assert git(repo, "show", "manual-fix:wip.txt") == "work in progress"
    rescued = "refs/swarm/rescued/stray"
    assert git(repo, "show", f"{rescued}:notes.txt") == "notes nobody committed"
    assert worktree_paths(repo) == [str(repo), str(hang)]  # a stopped task: `swarm clean`'s job
    assert not (root / "stray").exists()
    assert not git(repo, "branch", "--list", "swarm/old-merged")

    assert set(report(repo, "doctor", code=1)) == {"swarm/old-unmerged"}
    report(repo, "doctor", "--yes", "--force", code=0)
    out = swarm(repo, "doctor")
    assert (out.returncode, out.stdout.strip()) == (0, "nothing to clean")
    assert checkout_state(repo) == before


def _big_repo(path: Path, files: int) -> Path:
    make_repo(path)
    for i in range(files):
        folder = path / f"d{i % 50:02d}"
        folder.mkdir(exist_ok=True)
        (folder / f"f{i}.txt").write_text(f"file {i}\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "many files")
    return path


def test_doctor_never_signals_the_shell_it_was_started_from_though_its_cwd_is_under_the_root(
    repo: Path, write_agent: AgentFactory, reaper: Reaper
) -> None:
    edits_done(repo, write_agent)
    root = repo.parent / "repo.swarm"
    left = sleeper(root, reaper)  # a dev server an agent left: doctor's to kill
    code = repo.parent / "doctor.code"
    doctor = shlex.join([sys.executable, "-m", "worktree_swarm.cli", "doctor", "--yes", "--force"])
    # Your shell, cd'ed into the worktree root, runs doctor from the repository.
    line = f"(cd {shlex.quote(str(repo))} && {doctor}); echo $? > {shlex.quote(str(code))}"
    shell = subprocess.Popen(
        ["sh", "-c", line],
        cwd=root, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    reaper.append(shell)
    out, _ = shell.communicate(timeout=60)
    assert shell.returncode == 0  # not signalled
    assert code.read_text().strip() == "0", out
    assert f"pid {shell.pid}" not in out
    assert left.wait(timeout=30) == -signal.SIGTERM


@pytest.mark.parametrize("into", [None, "stable"], ids=["integration", "into"])
def test_doctor_leaves_a_merge_at_work_alone(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, into: str | None
) -> None:
    git(repo, "branch", "stable")
    path = manifest(
        repo, '[[task]]\nid = "edits"\nprompt = "p"\n[[task]]\nid = "gone"\nprompt = "p"\n'
    )
    assert swarm(repo, "run", path, "--agent", " ".join(write_agent(BY_ID_AGENT))).returncode == 0
    check = " ".join([*write_agent(CHECK_THEN_WAIT), str(tmp_path)])
    merging = swarm_bg(repo, "merge", "--check", check, *(["--into", into] if into else []))
    try:
        wait_for((tmp_path / "checking").exists, what="the merge's check after its first merge")
        doctor = swarm(repo, "doctor", "--yes")
        (tmp_path / "go").touch()
        assert merging.wait(timeout=120) == 0
    finally:
        if merging.poll() is None:
            merging.kill()
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "killed" not in doctor.stdout  # its git, checks and resolver are the merge's
    assert "no swarm task owns it" not in doctor.stdout  # nor is its `--into` worktree stray
    rows = status_json(repo)
    assert [rows[t]["merge_result"] for t in ("edits", "gone")] == ["merged", "merged"]


@pytest.mark.slow  # long: runs in `scripts/check --slow` (CI runs both)
def test_doctor_repairs_a_worktree_add_killed_mid_checkout(tmp_path: Path) -> None:
    repo = _big_repo(tmp_path / "repo", 3000)
    # The checkout of one file half-way through the list holds until the test kills it: a
    # smudge filter (swarm's own git commands switch filters off).
    held = tmp_path / "held"
    (repo / ".gitattributes").write_text("d25/f1525.txt filter=hold\n")
    git(repo, "add", ".gitattributes")
    git(repo, "commit", "-q", "-m", "hold one file")
    git(repo, "config", "filter.hold.smudge", f"touch {shlex.quote(str(held))}; exec sleep 600")
    before = checkout_state(repo)
    path = tmp_path / "repo.swarm" / "big"
    admin = repo / ".git" / "worktrees" / "big"
    adder = subprocess.Popen(
        ["git", "worktree", "add", "-q", "-b", "swarm/big", str(path), "HEAD"],
        cwd=repo,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_for(lambda: held.exists() or adder.poll() is not None, what="the checkout to hold")
    assert adder.poll() is None, "git worktree add finished before it could be killed"
    assert (admin / "index.lock").exists()
    os.killpg(adder.pid, signal.SIGKILL)
    adder.wait(timeout=30)
    assert (admin / "locked").read_text().strip() == "initializing"
    assert (path / "d24" / "f1524.txt").exists()  # checked out before the one held
    assert not (path / "d26" / "f1526.txt").exists()

    found = report(repo, "doctor", code=1)
    assert found[str(path)]["action"] == "remove_initializing"
    assert "locked `initializing`" in str(found[str(path)]["reason"])
    assert found[str(admin / "index.lock")]["kind"] == "lock"
    assert found["swarm/big"]["action"] == "delete_branch"

    found = report(repo, "doctor", "--yes", code=0)
    assert all(f["fixed"] for f in found.values())
    assert worktree_paths(repo) == [str(repo)]
    assert not path.exists()
    assert not admin.exists()
    assert not git(repo, "branch", "--list", "swarm/*")
    assert report(repo, "doctor", code=0) == {}
    assert checkout_state(repo) == before


def test_foreign_worktrees_are_reported_and_removed_only_when_asked(repo: Path) -> None:
    other = repo.parent / ".worktrees"
    git(repo, "worktree", "add", "-q", "-b", "feature", str(other / "feature"))
    git(repo, "worktree", "add", "-q", "-b", "fresh", str(other / "fresh"))
    admin = repo / ".git" / "worktrees" / "feature"
    old = time.time() - 10 * 86400
    for item in (other / "feature", admin / "HEAD", admin / "index", admin / "logs" / "HEAD"):
        os.utime(item, (old, old))
    before = checkout_state(repo)

    found = report(repo, "doctor", code=1)
    assert set(found) == {str(other / "feature")}
    assert found[str(other / "feature")]["kind"] == "foreign_worktree"
    assert "merged into main" in str(found[str(other / "feature")]["reason"])
    assert "--foreign" in str(found[str(other / "feature")]["fix"])
    assert report(repo, "doctor", "--idle", "30d", code=0) == {}

    report(repo, "doctor", "--yes", code=1)
    assert (other / "feature").is_dir()
    report(repo, "doctor", "--yes", "--foreign", code=0)
    assert not (other / "feature").exists()
    assert (other / "fresh").is_dir()
    assert git(repo, "branch", "--list", "feature")  # its branch stays
    assert checkout_state(repo) == before


def test_an_idle_foreign_worktree_that_is_dirty_unmerged_or_locked_survives_foreign(
    repo: Path,
) -> None:
    other = repo.parent / ".worktrees"
    for name in ("dirty", "unmerged", "locked"):
        git(repo, "worktree", "add", "-q", "-b", name, str(other / name))
    (other / "dirty" / "notes.txt").write_text("not committed anywhere\n")
    (other / "unmerged" / "new.txt").write_text("committed on its branch only\n")
    git(other / "unmerged", "add", "new.txt")
    git(other / "unmerged", "commit", "-qm", "unmerged work")
    git(repo, "worktree", "lock", "--reason", "on a drive", str(other / "locked"))
    old = time.time() - 10 * 86400
    for name in ("dirty", "unmerged", "locked"):
        admin = repo / ".git" / "worktrees" / name
        for item in (other / name, admin / "HEAD", admin / "index", admin / "logs" / "HEAD"):
            os.utime(item, (old, old))

    report(repo, "doctor", "--yes", "--foreign", "--idle", "1d", code=0)
    assert (other / "dirty" / "notes.txt").read_text() == "not committed anywhere\n"
    assert (other / "unmerged" / "new.txt").exists()
    assert (other / "locked").is_dir()
    assert len(worktree_paths(repo)) == 4


def test_a_repository_or_another_repositorys_worktree_under_the_worktree_root_is_never_removed(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    root = edits_done(repo, write_agent).parent
    own = make_repo(root / "notes", {"n.txt": "my notes\n"})  # a repository of its own
    (own / "draft.txt").write_text("uncommitted\n")
    other = make_repo(tmp_path / "other")
    git(other, "worktree", "add", "-q", "-b", "spike", str(root / "spike"))  # another's worktree
    (root / "spike" / "wip.txt").write_text("work in progress\n")
    head = git(own, "rev-parse", "HEAD")

    assert swarm(repo, "clean", "--all", "--yes", "--force").returncode == 0
    for args in (["doctor"], ["doctor", "--yes", "--force"], ["doctor", "--yes", "--foreign"]):
        found = report(repo, *args, code=1)
        assert found[str(own)]["action"] == "keep", args
        assert "a repository of its own" in str(found[str(own)]["fix"]), args
        assert found[str(root / "spike")]["action"] == "keep", args
        assert "a worktree of another repository" in str(found[str(root / "spike")]["fix"])
    assert git(own, "rev-parse", "HEAD") == head
    assert (own / "draft.txt").read_text() == "uncommitted\n"
    assert (root / "spike" / "wip.txt").read_text() == "work in progress\n"
    assert f"{root / 'spike'}  " in git(other, "worktree", "list")  # still registered there


@pytest.mark.parametrize("forced", [("doctor", "--yes", "--force"), ("clean", "--yes", "--force")])
def test_a_locked_worktree_whose_directory_is_missing_is_kept_unless_forced(
    repo: Path, write_agent: AgentFactory, forced: tuple[str, ...]
) -> None:
    # Its drive unmounted: git keeps a locked worktree's entry; so does swarm, unless told.
    path = edits_done(repo, write_agent)
    git(repo, "worktree", "lock", "--reason", "on a usb drive", str(path))
    shutil.rmtree(path)
    for args in (["doctor"], ["doctor", "--yes"], ["clean", "--all", "--yes"]):
        found = report(repo, *args, code=1)
        assert found[str(path)]["action"] == "keep", args
        assert str(found[str(path)]["reason"]).endswith(
            "its directory is missing, and it is locked (on a usb drive)"
        ), args
        assert "`git worktree unlock" in str(found[str(path)]["fix"])
        assert str(path) in worktree_paths(repo)
    found = report(repo, *forced, code=0)
    assert found[str(path)]["action"] == "prune"
    assert found[str(path)]["fixed"] is True
    assert worktree_paths(repo) == [str(repo)]
    assert not (repo / ".git" / "worktrees" / "edits").exists()


def test_stale_git_lock_is_removed_only_when_no_git_runs(repo: Path) -> None:
    stale = repo / ".git" / "index.lock"
    stale.write_text("")
    found = report(repo, "doctor", code=1)
    assert found[str(stale)]["kind"] == "lock"
    # A git process working in the repository may own it: then it is not reported.
    holder = subprocess.Popen(
        ["git", "hash-object", "--stdin"], cwd=repo, stdin=subprocess.PIPE, start_new_session=True
    )
    try:
        wait_for(lambda: psutil.Process(holder.pid).cwd() == str(repo), what="git to start")
        assert report(repo, "doctor", code=0) == {}
    finally:
        holder.communicate(b"x")
    report(repo, "doctor", "--yes", code=0)
    assert not stale.exists()
    assert git(repo, "status", "--porcelain") == ""


def test_a_directory_an_agent_planted_as_a_git_lock_is_removed_by_doctor(repo: Path) -> None:
    # Git never makes one, and it blocks git as a lock file does: removing it crashed doctor.
    planted = repo / ".git" / "refs" / "heads" / "main.lock"
    planted.mkdir()
    (planted / "inside").write_text("planted\n")
    found = report(repo, "doctor", "--yes", code=0)
    assert found[str(planted)]["fixed"] is True
    assert not planted.exists()
    git(repo, "commit", "-q", "--allow-empty", "-m", "moves main again")


def test_doctor_mends_a_ref_file_an_agent_filled_with_garbage(repo: Path) -> None:
    # Git skips such a ref when it lists refs (`warning: ignoring broken ref`) and fails on it
    # when asked (`git log --all`: fatal): nothing of swarm's told you, nothing mended it.
    tip = git(repo, "rev-parse", "HEAD")
    git(repo, "branch", "feature")
    heads = repo / ".git" / "refs" / "heads"
    (heads / "feature").write_text("garbage\n")
    (heads / "zzz").write_text("garbage\n")  # a new one: git skips it, a guard never sees it
    found = report(repo, "doctor", code=1)
    assert found["refs/heads/feature"]["kind"] == "ref"
    assert found["refs/heads/feature"]["fix"] == f"write it again at {tip[:12]} (its reflog's last)"
    assert found["refs/heads/zzz"]["fix"] == "delete its file"
    report(repo, "doctor", "--yes", code=0)
    assert git(repo, "rev-parse", "feature") == tip
    assert not (heads / "zzz").exists()
    assert git(repo, "log", "--all", "--oneline")  # git reads every ref again
    assert report(repo, "doctor", code=0) == {}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("clean", "--run", "nope"), "nope"),
        (("clean", "--run", "x", "--all"), "--run and --all"),
        (("doctor", "--idle", "soon"), "--idle"),
        (("doctor", "--idle", "infd"), "--idle: bad age 'infd'"),
        (("doctor", "--idle", ""), "--idle: bad duration ''"),
        (("clean", "--orphans", "--run", "x"), "--orphans and --run exclude each other"),
        (("clean", "--orphans", "--all"), "--orphans and --all exclude each other"),
        (("clean", "--orphans", "--keep-branches"), "--orphans and --keep-branches exclude"),
        (("clean", "--foreign"), "--foreign works only with --orphans (or swarm doctor)"),
        (("clean", "--idle", "3d"), "--idle works only with --orphans (or swarm doctor)"),
        (("clean", "--idle", "xyz", "--yes"), "--idle works only with --orphans"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(repo: Path, args: tuple[str, ...], needle: str) -> None:
    before = checkout_state(repo)
    out = swarm(repo, *args)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1
    assert needle in out.stderr
    assert not (repo / ".git" / "swarm").exists()
    assert checkout_state(repo) == before


@pytest.mark.parametrize(
    "args",
    [("doctor",), ("clean", "--orphans"), ("clean",), ("clean", "--all"), ("status",), ("runs",)],
)
def test_a_look_at_a_repository_swarm_never_ran_in_creates_nothing(
    repo: Path, args: tuple[str, ...]
) -> None:
    # A dry run of doctor used to make .git/swarm with its repository and merge lock files.
    before = checkout_state(repo)
    swarm(repo, *args)
    assert not (repo / ".git" / "swarm").exists()
    assert checkout_state(repo) == before


@pytest.mark.parametrize("commits", [True, False])
@pytest.mark.parametrize("args", [("doctor", "--yes"), ("clean", "--orphans", "--yes")])
def test_a_cleanup_finding_nothing_in_a_repository_swarm_never_ran_in_creates_nothing(
    tmp_path: Path, args: tuple[str, ...], commits: bool
) -> None:
    # With nothing to fix it took its locks anyway: .git/swarm/repo.lock and ref-moves/ stayed.
    repo = tmp_path / "repo"
    if commits:
        make_repo(repo)
    else:
        repo.mkdir()
        git(repo, "init", "-q", "-b", "main")
    out = swarm(repo, *args)
    assert out.returncode == 0, out.stdout + out.stderr
    assert not (repo / ".git" / "swarm").exists()


def merged_run(repo: Path, tmp_path: Path) -> None:
    """A run of one task (`aa`, writes aa.txt) merged into its integration branch."""
    agent = tmp_path / "agent.py"
    agent.write_text(
        "import os, pathlib\npathlib.Path(os.environ['SWARM_TASK_ID'] + '.txt').write_text('x')\n"
    )
    assert swarm(repo, "run", "--agent", f"{agent_command()} {agent}", "-t", "aa=a").returncode == 0
    assert swarm(repo, "merge").returncode == 0


def test_clean_removes_the_integration_worktree_and_its_branch_once_landed(
    repo: Path, tmp_path: Path
) -> None:
    merged_run(repo, tmp_path)
    integration = next(p for p in worktree_paths(repo) if "_integration-" in p)
    branch = git(integration, "branch", "--show-current")
    assert branch.startswith("swarm/integration-")

    # doctor names it (for `swarm clean`), as information, not a problem.
    found = report(repo, "doctor", code=0)
    assert found[integration]["action"] == "keep"
    assert "swarm clean --run" in found[integration]["fix"]

    # Not landed yet: the worktree goes, the branch stays (it holds the merged work).
    planned = report(repo, "clean", code=1)
    assert planned[integration]["action"] == "remove_worktree"
    assert planned[branch]["action"] == "keep"
    assert "not merged into main" in planned[branch]["reason"]
    assert swarm(repo, "clean", "--yes").returncode == 0
    assert integration not in worktree_paths(repo)
    assert not Path(integration).exists()
    assert git(repo, "branch", "--list", branch) != ""
    assert report(repo, "doctor", code=0) == {}

    # Once the user lands it, clean deletes the branch too.
    git(repo, "merge", "-q", "--ff-only", branch)
    done = report(repo, "clean", "--yes", code=0)
    assert done[branch]["fixed"] is True
    assert git(repo, "branch", "--list", "swarm/*") == ""


def test_tasks_merged_into_an_integration_branch_clean_deleted_once_landed_stay_merged(
    repo: Path, tmp_path: Path
) -> None:
    # The documented way back: merge, land with --ff-only, clean. Recorded as merged into a
    # branch that was gone, every task showed its merge undone, and `swarm merge` (and its
    # --dry-run) exited 1 asking for the task branches back, their work already on main.
    merged_run(repo, tmp_path)
    branch = git(repo, "branch", "--list", "swarm/integration-*", "--format=%(refname:short)")
    git(repo, "merge", "-q", "--ff-only", branch)
    assert swarm(repo, "clean", "--yes").returncode == 0
    assert git(repo, "branch", "--list", "swarm/*") == ""

    row = status_json(repo)["aa"]
    assert (row["merge_result"], row["merge_target"]) == ("merged", "main")
    assert "undone" not in swarm(repo, "status").stdout
    dry = swarm(repo, "merge", "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    again = swarm(repo, "merge")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "bring it back" not in again.stdout
    assert "nothing to merge" in again.stdout  # not "unchanged at" of a branch not there
    assert git(repo, "show", "main:aa.txt") == "x"


def test_a_merge_undone_after_clean_deleted_its_branch_is_kept_and_can_be_merged_again(
    repo: Path, tmp_path: Path
) -> None:
    merged_run(repo, tmp_path)
    branch = git(repo, "branch", "--list", "swarm/integration-*", "--format=%(refname:short)")
    assert swarm(repo, "clean", "--yes").returncode == 0  # swarm/aa goes: merged into it
    assert git(repo, "branch", "--list", "swarm/aa") == ""
    work = git(repo, "rev-parse", f"{branch}^2")
    git(repo, "branch", "-f", branch, "main")  # the merge undone by hand: `undone`

    # The next merge cannot merge it again by itself: it says how to bring the branch back.
    again = swarm(repo, "merge")
    assert again.returncode == 1
    assert f"bring it back with `git branch swarm/aa {work[:12]}`" in again.stdout
    # Its integration branch (now merged into main) holds the only record of that work, in
    # its reflog: clean keeps it.
    planned = report(repo, "clean", "--yes", code=0)
    assert planned[branch]["action"] == "keep"
    assert (
        "the merges of aa were undone on it and their branches are gone"
        in (planned[branch]["reason"])
    )
    assert git(repo, "branch", "--list", branch) != ""
    git(repo, "branch", "swarm/aa", work[:12])
    assert swarm(repo, "merge").returncode == 0
    assert git(repo, "show", f"{branch}:aa.txt") == "x"


def test_clean_yes_keeps_a_landed_integration_branch_whose_worktree_holds_new_work(
    repo: Path, tmp_path: Path
) -> None:
    agent = tmp_path / "agent.py"
    agent.write_text(
        "import os, pathlib\npathlib.Path(os.environ['SWARM_TASK_ID'] + '.txt').write_text('x')\n"
    )
    assert swarm(repo, "run", "--agent", f"{agent_command()} {agent}", "-t", "aa=a").returncode == 0
    assert swarm(repo, "merge").returncode == 0
    integration = next(p for p in worktree_paths(repo) if "_integration-" in p)
    branch = git(integration, "branch", "--show-current")
    git(repo, "merge", "-q", "--ff-only", branch)  # landed, its worktree still there
    (Path(integration) / "fixup.txt").write_text("typed after landing\n")

    done = report(repo, "clean", "--yes", code=0)
    assert done[integration]["fixed"] is True
    assert done[branch]["action"] == "keep"
    assert integration not in worktree_paths(repo)
    assert git(repo, "show", f"{branch}:fixup.txt") == "typed after landing"


def test_clean_force_deletes_an_unlanded_integration_branch(repo: Path, tmp_path: Path) -> None:
    agent = tmp_path / "agent.py"
    agent.write_text(
        "import os, pathlib\npathlib.Path(os.environ['SWARM_TASK_ID'] + '.txt').write_text('x')\n"
    )
    assert swarm(repo, "run", "--agent", f"{agent_command()} {agent}", "-t", "aa=a").returncode == 0
    assert swarm(repo, "merge").returncode == 0
    before = git(repo, "rev-parse", "HEAD")
    out = swarm(repo, "clean", "--all", "--yes", "--force")
    assert out.returncode == 0, out.stdout + out.stderr
    assert git(repo, "branch", "--list", "swarm/*") == ""
    assert not [p for p in worktree_paths(repo) if "_integration-" in p]
    assert git(repo, "rev-parse", "HEAD") == before


@pytest.mark.parametrize("where", ["main", "linked"])
def test_clean_keeps_an_integration_branch_checked_out_in_your_checkout_and_says_so(
    repo: Path, tmp_path: Path, where: str
) -> None:
    agent = tmp_path / "agent.py"
    agent.write_text(
        "import os, pathlib\npathlib.Path(os.environ['SWARM_TASK_ID'] + '.txt').write_text('x')\n"
    )
    assert swarm(repo, "run", "--agent", f"{agent_command()} {agent}", "-t", "aa=a").returncode == 0
    assert swarm(repo, "merge").returncode == 0
    (integration,) = [p for p in worktree_paths(repo) if "_integration-" in p]
    branch = git(Path(integration), "branch", "--show-current")
    git(repo, "worktree", "remove", integration)
    # The user takes the merged result into their checkout, or reviews it in a worktree of
    # theirs (which clean removed, committing their notes onto the branch).
    yours = repo if where == "main" else tmp_path / "review"
    if where == "main":
        git(repo, "checkout", "-q", branch)
    else:
        git(repo, "worktree", "add", "-q", str(yours), branch)
        (yours / "my-notes.txt").write_text("notes\n")

    planned = report(repo, "clean", "--all", "--force", code=1)
    done = report(repo, "clean", "--all", "--force", "--yes", code=0)

    for found in (planned, done):
        assert found[branch]["action"] == "keep"
        assert str(found[branch]["reason"]).endswith(f"checked out in {yours}")
        assert str(yours) not in found
    assert git(yours, "branch", "--show-current") == branch
    if where == "linked":
        assert (yours / "my-notes.txt").read_text() == "notes\n"
        assert git(repo, "log", "--format=%s", "-1", branch) == "swarm: merge task aa (swarm/aa)"


def test_clean_removes_many_worktrees_at_once_each_keeping_its_own_work(
    repo: Path, write_agent: AgentFactory
) -> None:
    agent = " ".join(write_agent(
        "import os, pathlib\n"
        "pathlib.Path(os.environ['SWARM_TASK_ID'] + '.txt').write_text('work\\n')\n"
    ))  # fmt: skip
    ids = [f"t{i}" for i in range(8)]
    out = swarm(repo, "run", "--agent", agent, "--jobs", "4",
                *[arg for t in ids for arg in ("-t", f"{t}=nothing to do")])  # fmt: skip
    assert out.returncode == 0, out.stderr
    root = repo.parent / "repo.swarm"
    tips = {t: git(repo, "rev-parse", f"swarm/{t}") for t in ids}
    typed = set(ids[::2])  # the user typed into every other worktree after the run
    for t in typed:
        (root / t / f"{t}-later.txt").write_text(f"{t}\n")

    found = report(repo, "clean", "--yes", "--keep-branches", code=0)
    assert all(f["fixed"] for f in found.values())
    assert worktree_paths(repo) == [str(repo)]
    assert not root.exists()
    assert git(repo, "worktree", "prune", "--dry-run", "--verbose") == ""
    for t in ids:
        if t in typed:  # its own file, on its own branch, in one checkpoint
            assert git(repo, "rev-parse", f"swarm/{t}^") == tips[t]
            assert git(repo, "diff", "--name-only", tips[t], f"swarm/{t}") == f"{t}-later.txt"
            assert "checkpointed" in str(found[str(root / t)]["result"])
        else:
            assert git(repo, "rev-parse", f"swarm/{t}") == tips[t]
            assert found[str(root / t)]["result"] == "removed"
        assert git(repo, "show", f"swarm/{t}:{t}.txt") == "work"


def _finished_big_task(
    tmp_path: Path, write_agent: AgentFactory, files: int = 3000
) -> tuple[Path, Path, str]:
    """A repository of *files* files and the worktree of one finished task; and its tip."""
    repo = _big_repo(tmp_path / "repo", files)
    return repo, edits_done(repo, write_agent), git(repo, "rev-parse", "swarm/edits")


def _cleaned_and_kept(repo: Path, path: Path, tip: str) -> None:
    found = report(repo, "clean", "--yes", "--keep-branches", code=0)
    assert all(f["fixed"] for f in found.values()), found
    assert worktree_paths(repo) == [str(repo)]
    assert git(repo, "worktree", "prune", "--dry-run", "--verbose") == ""
    assert not path.exists()
    # No file of the branch was committed as deleted: the tip is where the task left it.
    assert git(repo, "rev-parse", "swarm/edits") == tip


@pytest.mark.long
@pytest.mark.parametrize("left", ["the index", "half the folders", "every folder", "the .git file"])
def test_a_worktree_removal_cut_short_is_finished_without_committing_deletions(
    tmp_path: Path, write_agent: AgentFactory, left: str
) -> None:
    # What a kill after each step of a worktree's removal leaves behind: its index set aside
    # first (an index its agent deleted is another matter: the agent's deletions are work).
    repo, path, tip = _finished_big_task(tmp_path, write_agent, files=200)
    admin = g.git_dir(path)
    (admin / "index").replace(admin / REMOVING_INDEX)
    folders = sorted(p for p in path.iterdir() if p.is_dir())
    if left != "the index":
        for folder in folders if left != "half the folders" else folders[::2]:
            shutil.rmtree(folder)
    if left == "the .git file":
        for p in path.iterdir():
            p.unlink()
    _cleaned_and_kept(repo, path, tip)


# Loaded by the `swarm clean` the test kills (``sitecustomize`` on its PYTHONPATH): once the
# first folder of the worktree is deleted, it says so and waits to be killed there.
_PAUSE_HALF_WAY = """
import os, shutil, time
_inside, _paused = os.environ["SWARM_TEST_INSIDE"], os.environ["SWARM_TEST_PAUSED"]
_rmtree = shutil.rmtree
def rmtree(path, *args, **kwargs):
    _rmtree(path, *args, **kwargs)
    if os.fspath(path).startswith(_inside + os.sep):
        open(_paused, "w").close()
        time.sleep(600)
shutil.rmtree = rmtree
"""


@pytest.mark.long
@pytest.mark.parametrize("hand_edit", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_clean_killed_while_deleting_a_worktree_loses_nothing(
    tmp_path: Path, write_agent: AgentFactory, *, hand_edit: bool
) -> None:
    repo, path, tip = _finished_big_task(tmp_path, write_agent)
    if hand_edit:  # checkpointed first; then removed like a clean worktree, index first
        (path / "hand.txt").write_text("typed after the run\n")
    folders = sorted(p for p in path.iterdir() if p.is_dir())
    hook, paused = tmp_path / "hook", tmp_path / "paused"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_PAUSE_HALF_WAY)
    env = {**os.environ, "SWARM_TEST_INSIDE": str(path), "SWARM_TEST_PAUSED": str(paused)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook), env.get("PYTHONPATH")]))
    cleaner = subprocess.Popen(
        [sys.executable, "-m", "worktree_swarm.cli", "clean", "--yes", "--keep-branches"],
        cwd=repo,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_for(lambda: paused.exists() or cleaner.poll() is not None, what="a folder deleted")
    assert cleaner.poll() is None, "swarm clean finished without deleting a folder first"
    os.killpg(cleaner.pid, signal.SIGKILL)
    cleaner.wait(timeout=30)
    assert sum(folder.exists() for folder in folders) == len(folders) - 1  # killed half-way
    assert (path / ".git").is_file()
    if hand_edit:
        checkpoint = git(repo, "rev-parse", "swarm/edits")
        assert git(repo, "diff", "--name-status", tip, checkpoint) == "A\thand.txt"
        tip = checkpoint
    _cleaned_and_kept(repo, path, tip)


@pytest.mark.long
def test_a_clean_killed_while_deleting_a_merged_tasks_worktree_deletes_its_branch_next_time(
    tmp_path: Path, write_agent: AgentFactory
) -> None:
    # Its index goes first: the next clean took the checkout without one for uncommitted
    # work, so the branch you had landed read "not merged into main" and was kept.
    repo, path, tip = _finished_big_task(tmp_path, write_agent, files=200)
    git(repo, "merge", "-q", "--ff-only", "swarm/edits")  # landed
    hook, paused = tmp_path / "hook", tmp_path / "paused"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_PAUSE_HALF_WAY)
    env = {**os.environ, "SWARM_TEST_INSIDE": str(path), "SWARM_TEST_PAUSED": str(paused)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook), env.get("PYTHONPATH")]))
    cleaner = subprocess.Popen(
        [sys.executable, "-m", "worktree_swarm.cli", "clean", "--yes"], cwd=repo, env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    wait_for(lambda: paused.exists() or cleaner.poll() is not None, what="a folder deleted")
    assert cleaner.poll() is None, "swarm clean finished without deleting a folder first"
    os.killpg(cleaner.pid, signal.SIGKILL)
    cleaner.wait(timeout=30)
    assert git(repo, "rev-parse", "swarm/edits") == tip  # killed before the branch went

    found = report(repo, "clean", "--yes", code=0)
    assert found["swarm/edits"]["action"] == "delete_branch", found["swarm/edits"]
    assert found["swarm/edits"]["reason"] == "task edits is done; merged into main"
    assert found["swarm/edits"]["fixed"] is True
    assert worktree_paths(repo) == [str(repo)]
    assert git(repo, "branch", "--list", "swarm/*") == ""
    assert report(repo, "clean", "--yes", code=0) == {}  # nothing left for a third


def test_clean_finishes_what_a_clean_killed_in_its_checkpoint_left_locked(
    repo: Path, write_agent: AgentFactory
) -> None:
    path = edits_done(repo, write_agent)
    (path / "later.txt").write_text("typed after the run\n")
    (g.git_dir(path) / "index.lock").write_bytes(b"")  # what a git killed in its commit leaves

    found = report(repo, "clean", "--yes", "--keep-branches", code=0)

    assert all(f["fixed"] for f in found.values()), found
    assert not path.exists()
    assert git(repo, "show", "swarm/edits:later.txt") == "typed after the run"


@pytest.mark.long
def test_a_worktree_that_lost_its_git_file_is_pruned_and_its_files_rescued(
    repo: Path, write_agent: AgentFactory
) -> None:
    path = edits_done(repo, write_agent)
    (path / "later.txt").write_text("typed after the run\n")
    (path / ".git").unlink()  # no longer a checkout: git calls its registration prunable

    found = report(repo, "clean", "--yes", "--keep-branches", code=0)
    assert "its .git file is gone" in str(found[str(path)]["reason"])
    assert "still holds files: `swarm doctor --yes`" in str(found[str(path)]["result"])
    assert worktree_paths(repo) == [str(repo)]
    assert (path / "later.txt").exists()  # kept: nothing of it is on a branch

    found = report(repo, "doctor", "--yes", code=0)
    assert found[str(path)]["action"] == "rescue_directory"
    assert not path.exists()
    (rescued,) = git(repo, "for-each-ref", "--format=%(refname)", "refs/swarm/rescued/").split()
    assert git(repo, "show", f"{rescued}:later.txt") == "typed after the run"


@pytest.mark.long
def test_clean_names_a_directory_left_at_a_failed_tasks_worktree_path_and_keeps_it(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    stray = stray_at_failed_task(repo, tmp_path, write_agent, "maybe an agent's\n")

    for args in (["clean"], ["clean", "--yes"], ["clean", "--yes", "--force"]):
        found = report(repo, *args, code=1)  # left: `swarm retry a` refuses it
        assert found[str(stray)]["kind"] == "directory", args
        assert found[str(stray)]["action"] == "keep", args
        assert found[str(stray)]["reason"] == (
            "task a is failed; at its worktree path, but not a registered worktree"
        )
        assert "`swarm doctor --yes` saves its files" in str(found[str(stray)]["fix"])
        assert (stray / "src" / "f.txt").read_text() == "maybe an agent's\n"
    text = swarm(repo, "clean").stdout
    assert f"directory (1)\n  {stray}: task a is failed; at its worktree path" in text

    found = report(repo, "doctor", "--yes", code=0)
    assert found[str(stray)]["action"] == "rescue_directory"
    assert not stray.exists()
    assert git(repo, "show", "refs/swarm/rescued/a:src/f.txt") == "maybe an agent's"
    assert report(repo, "clean", code=0) == {}


@pytest.mark.long
def test_doctor_rescues_in_one_go_the_files_of_a_worktree_that_lost_its_git_file(
    repo: Path, write_agent: AgentFactory
) -> None:
    path = edits_done(repo, write_agent)
    (path / "later.txt").write_text("typed after the run\n")
    (path / ".git").unlink()

    out = swarm(repo, "doctor", "--yes")

    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.rstrip().endswith("0 problems left")
    assert not path.exists()
    (rescued,) = git(repo, "for-each-ref", "--format=%(refname)", "refs/swarm/rescued/").split()
    assert git(repo, "show", f"{rescued}:later.txt") == "typed after the run"
    assert swarm(repo, "doctor").stdout.strip() == "nothing to clean"


@pytest.mark.long
@pytest.mark.parametrize("dotgit", ["removed", "naming nothing"])
def test_rescuing_a_directory_cut_off_from_the_repository_never_runs_its_planted_config(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, dotgit: str
) -> None:
    # An agent plants a filter in the repository's config and selects it for its files, in a
    # directory cut off from the repository: its worktree with the .git file removed, or one
    # it made whose .git file names a git dir that is not there. Swarm's `git add` of the
    # rescue reads the repository's config (through --git-dir), whatever that .git file says.
    path = edits_done(repo, write_agent)
    if dotgit == "removed":
        (path / ".git").unlink()
    else:  # under the common dir, so taken for a worktree of this repository
        path = path.parent / "made"
        path.mkdir()
        (path / ".git").write_text(f"gitdir: {repo / '.git' / 'worktrees' / 'none'}\n")
    marker = tmp_path / "pwned"
    git(repo, "config", "filter.ev.clean", f"touch {shlex.quote(str(marker))}; cat")
    (path / ".gitattributes").write_text("planted.txt filter=ev\n")
    (path / "planted.txt").write_text("the filter's\n")
    (path / "later.txt").write_text("typed after the run\n")

    found = report(repo, "doctor", "--yes", code=1)

    assert found[str(path)]["action"] == "rescue_directory"
    assert not marker.exists()
    # Hashed without the filter it names: left out, kept where it is (and so its directory).
    assert "left out planted.txt (filter ev)" in str(found[str(path)]["result"])
    assert (path / "planted.txt").exists()
    (rescued,) = git(repo, "for-each-ref", "--format=%(refname)", "refs/swarm/rescued/").split()
    assert git(repo, "show", f"{rescued}:later.txt") == "typed after the run"


def test_a_stale_prune_never_touches_a_checkout_that_came_back(repo: Path, tmp_path: Path) -> None:
    # Planned while its drive was unmounted, applied once it is back: nothing is pruned.
    r = g.open_repo(repo)
    path = tmp_path / "wt" / "back"
    git(repo, "worktree", "add", "-q", "-b", "back", str(path))
    stale = findings.Finding(
        kind=findings.Kind.WORKTREE, target=str(path), reason="its directory is gone",
        action=findings.Action.PRUNE, fix="prune it from git's worktree list",
    )  # fmt: skip
    (result,) = fixes.apply(r, [stale], store=None, force=False)
    assert not result.fixed
    assert "is a checkout again; not pruned" in result.detail
    assert str(path) in worktree_paths(repo)
    assert (path / "README.md").exists()


def test_a_stale_plan_never_destroys_anything(repo: Path, tmp_path: Path) -> None:
    # Each finding was true when planned; by the time it is applied it no longer holds.
    r = g.open_repo(repo)
    live = tmp_path / "wt" / "live"
    git(repo, "worktree", "add", "-q", "-b", "live", str(live))
    me = psutil.Process()
    dead = subprocess.Popen([*agent_python(), "-c", "pass"])
    dead.wait(timeout=30)

    def finding(action: findings.Action, target: Path | str, **more: object) -> findings.Finding:
        return findings.Finding(
            kind=findings.Kind.WORKTREE, target=str(target), reason="planned earlier",
            action=action, fix="", **more,  # type: ignore[arg-type]
        )  # fmt: skip

    stale = {
        "the main checkout": finding(findings.Action.REMOVE_WORKTREE, repo),
        "no longer locked": finding(
            findings.Action.REMOVE_INITIALIZING, live, admin_dir=str(g.git_dir(live))
        ),
        "now a registered worktree": finding(findings.Action.RESCUE_DIRECTORY, live),
        "already gone": finding(findings.Action.RESCUE_DIRECTORY, tmp_path / "nothing"),
        "this process or its parent": finding(
            findings.Action.KILL,
            f"pid {me.pid}",
            pid=me.pid,
            create_time=me.create_time(),
            pgid=os.getpgid(me.pid),
        ),
        "no process identity": finding(findings.Action.KILL, "pid ?"),
        "no run recorded": finding(findings.Action.STOP_TASK, "task x", run_id="r", task_id="x"),
    }
    before = checkout_state(repo), checkout_state(live)
    results = fixes.apply(r, list(stale.values()), store=None, force=False)
    by_target = {(res.finding.action, res.finding.target): res for res in results}
    for words, f in stale.items():
        res = by_target[f.action, f.target]
        assert words in res.detail, (words, res.detail)
        assert not res.fixed or words == "already gone"
    assert (checkout_state(repo), checkout_state(live)) == before
    assert str(live) in worktree_paths(repo)
    # A process that ended is not looked for again under a PID someone else may have now.
    gone = finding(
        findings.Action.KILL, f"pid {dead.pid}", pid=dead.pid, create_time=1.0, pgid=dead.pid
    )
    (res,) = fixes.apply(r, [gone], store=None, force=False)
    assert res.detail == "already gone"


def test_a_stale_rescue_of_a_cut_off_worktree_never_deletes_it(repo: Path, tmp_path: Path) -> None:
    # Each was a worktree whose .git file named no git dir when planned; by the time it is
    # applied it is gone, repaired, in use, or locked (git's "never prune it"; its directory
    # was deleted, then the prune refused). One inside the main checkout is never removed.
    r = g.open_repo(repo)

    def cut_off(path: Path, *, lock: bool = False) -> Path:
        git(repo, "worktree", "add", "-q", "--detach", str(path))
        if lock:
            git(repo, "worktree", "lock", "--reason", "on a USB drive", str(path))
        (path / ".git").write_text("gitdir: /nonexistent\n")
        (path / "mine.txt").write_text("mine\n")
        return path

    repaired = tmp_path / "wt" / "repaired"
    git(repo, "worktree", "add", "-q", "--detach", str(repaired))
    used = cut_off(tmp_path / "wt" / "used")
    user = subprocess.Popen([*agent_python(), "-c", "import time; time.sleep(600)"], cwd=used)
    stale = {
        "already gone": tmp_path / "wt" / "never",
        "is no longer cut off": repaired,
        "is inside the main checkout": cut_off(repo / "inner"),
        f"(pid {user.pid}) is using": used,
        "is locked (on a USB drive); `git worktree unlock": cut_off(
            tmp_path / "wt" / "locked", lock=True
        ),
    }
    planned = [
        findings.Finding(
            kind=findings.Kind.WORKTREE,
            target=str(path),
            reason="planned earlier",
            action=findings.Action.RESCUE_WORKTREE,
            fix="",
        )
        for path in stale.values()
    ]
    try:
        results = fixes.apply(r, planned, store=None, force=False)
    finally:
        user.kill()
        user.wait()
    by_target = {res.finding.target: res for res in results}
    for words, path in stale.items():
        res = by_target[str(path)]
        assert words in res.detail, (words, res.detail)
        assert res.fixed == (words == "already gone"), res.detail
        assert path == stale["already gone"] or (path / "README.md").exists()
    assert git(repo, "for-each-ref", "refs/swarm/rescued/") == ""


def _branches(repo: Path) -> list[str]:
    return git(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/").split()


def _branch_findings(repo: Path, names: list[str], **more: object) -> list[findings.Finding]:
    return [
        findings.Finding(
            kind=findings.Kind.BRANCH, target=name, reason="planned earlier",
            action=findings.Action.DELETE_BRANCH, fix="delete it", branch=name,
            **more,  # type: ignore[arg-type]
        )
        for name in names
    ]  # fmt: skip


def test_many_branches_go_in_one_transaction_each_checked_as_if_alone(
    repo: Path, tmp_path: Path
) -> None:
    r = g.open_repo(repo)
    base = git(repo, "rev-parse", "HEAD")
    for name in ("a", "b", "c", "moved", "busy"):
        git(repo, "branch", name, base)
    git(repo, "worktree", "add", "-q", str(tmp_path / "busy"), "busy")
    # Planned as merged into main; since then "moved" got a commit of its own.
    git(repo, "checkout", "-q", "moved")
    git(repo, "commit", "-q", "--allow-empty", "-m", "new work")
    new_tip = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "main")
    names = ["a", "b", "c", "moved", "busy", "gone"]
    findings = _branch_findings(repo, names, merged_into=("refs/heads/main",))
    results = {res.finding.target: res for res in fixes.apply(r, findings, store=None, force=False)}
    assert {n: (results[n].fixed, results[n].detail.split(" (")[0]) for n in names} == {
        "a": (True, "deleted"),
        "b": (True, "deleted"),
        "c": (True, "deleted"),
        "moved": (False, "moved is no longer merged"),
        "busy": (False, f"busy is checked out in {tmp_path / 'busy'}; kept"),
        "gone": (True, "already gone"),
    }
    assert _branches(repo) == ["busy", "main", "moved"]
    assert git(repo, "rev-parse", "moved") == new_tip


def test_a_branch_deletion_the_transaction_cannot_make_leaves_the_others_to_go_alone(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = g.open_repo(repo)
    base = git(repo, "rev-parse", "HEAD")
    for name in ("a", "b", "locked", "raced"):
        git(repo, "branch", name, base)
    # A git process that crashed left its lock on "locked": no transaction with it can commit.
    lock_file = repo / ".git" / "refs" / "heads" / "locked.lock"
    lock_file.write_text(base + "\n")
    # "raced" moves between the read of every tip and the transaction (a writer in between).
    git(repo, "checkout", "-q", "raced")
    git(repo, "commit", "-q", "--allow-empty", "-m", "raced")
    raced = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "main")
    read = git_branches.branch_tips(r)
    monkeypatch.setattr(git_branches, "branch_tips", lambda _: {**read, "raced": base})
    findings = _branch_findings(repo, ["a", "b", "locked", "raced"])
    results = {res.finding.target: res for res in fixes.apply(r, findings, store=None, force=True)}
    assert results["a"].fixed
    assert results["b"].fixed
    assert not results["locked"].fixed
    assert "Another git process seems to be running" in results["locked"].detail
    assert results["raced"].detail == "raced moved while it was being deleted; kept"
    assert _branches(repo) == ["locked", "main", "raced"]
    assert git(repo, "rev-parse", "raced") == raced


def test_removing_a_worktree_never_follows_an_agents_symlinks_out_of_it(
    repo: Path, write_agent: AgentFactory, tmp_path: Path
) -> None:
    # A hostile agent links your files into its worktree; the run commits the links.
    outside = tmp_path / "yours"
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "keep.txt").write_text("yours\n")
    agent = " ".join(write_agent(
        "import os, pathlib\n"
        f"os.symlink({str(outside)!r}, 'escape')\n"
        "pathlib.Path('d').mkdir()\n"
        f"os.symlink({str(outside / 'deep')!r}, 'd/escape')\n"
        f"os.symlink({str(outside / 'deep' / 'keep.txt')!r}, 'd/file')\n"
    ))  # fmt: skip
    assert swarm(repo, "run", "--agent", agent, "-t", "links=a").returncode == 0
    path = repo.parent / "repo.swarm" / "links"
    assert git(repo, "ls-tree", "--name-only", "swarm/links") == "README.md\nd\nescape"

    found = report(repo, "clean", "--yes", "--keep-branches", code=0)
    # Nothing uncommitted: swarm deletes it itself, not `git worktree remove`.
    assert found[str(path)]["result"] == "removed"
    assert not path.exists()
    assert (outside / "deep" / "keep.txt").read_text() == "yours\n"


@pytest.mark.long
def test_clean_removes_a_worktree_whose_tools_made_directories_read_only(
    repo: Path, write_agent: AgentFactory, tmp_path: Path
) -> None:
    # Go's module cache: directories 0555, files 0444. Nobody but root may delete in them.
    agent = " ".join(write_agent(
        "import os, pathlib\n"
        "pkg = pathlib.Path('gomod/pkg@v1.2.3/sub')\n"
        "pkg.mkdir(parents=True)\n"
        "(pkg / 'a.go').write_text('package a\\n')\n"
        "pathlib.Path('.gitignore').write_text('gomod/\\n')\n"
        "for p in (pkg / 'a.go', pkg, pkg.parent, pkg.parent.parent):\n"
        "    p.chmod(0o444 if p.is_file() else 0o555)\n"
    ))  # fmt: skip
    out = swarm(repo, "run", "--agent", agent, "-t", "gocache=a", "-t", "typed=b", "-t", "sealed=c")
    assert out.returncode == 0, out.stdout + out.stderr
    path = repo.parent / "repo.swarm" / "gocache"
    assert (path / "gomod" / "pkg@v1.2.3" / "sub" / "a.go").exists()
    # Work typed after the run: checkpointed, then removed by `git worktree remove`.
    typed = repo.parent / "repo.swarm" / "typed"
    (typed / "later.txt").write_text("typed by the user\n")
    # Work in a directory nobody may read: git only warns that it cannot look inside.
    sealed = repo.parent / "repo.swarm" / "sealed"
    (sealed / "box").mkdir()
    (sealed / "box" / "work.txt").write_text("unseen work\n")
    # A link out of the worktree to a read-only directory of yours: never opened or entered.
    yours = tmp_path / "yours"
    yours.mkdir()
    (yours / "keep.txt").write_text("yours\n")
    yours.chmod(0o555)
    (sealed / "box" / "link").symlink_to(yours)
    (sealed / "box").chmod(0)

    def clean_as_owner(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*as_owner_only(), sys.executable, "-m", "worktree_swarm.cli", "clean", "--all", *args],
            cwd=repo, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
            check=False,
        )  # fmt: skip

    # The plan, as the owner sees it: what git cannot read counts as work to keep.
    out = clean_as_owner("--json")
    found = {f["target"]: f for f in json.loads(out.stdout)["findings"]}
    assert "uncommitted changes on swarm/sealed" in str(found[str(sealed)]["fix"])
    assert stat.S_IMODE((sealed / "box").stat().st_mode) == 0  # a dry run changes nothing

    out = clean_as_owner("--yes")
    assert out.returncode == 0, out.stdout + out.stderr
    assert not path.exists()
    assert not typed.exists()
    assert not sealed.exists()
    assert worktree_paths(repo) == [str(repo)]
    assert git(repo, "worktree", "prune", "--dry-run", "--verbose") == ""
    assert git(repo, "show", "swarm/typed:later.txt") == "typed by the user"
    assert git(repo, "show", "swarm/sealed:box/work.txt") == "unseen work"
    assert stat.S_IMODE(yours.stat().st_mode) == 0o555
    assert (yours / "keep.txt").read_text() == "yours\n"


# A `git` first on PATH whose `git status` of a worktree waits (up to 5 s) until another has
# started too, and fails when none did.
_MEETING_GIT = """#!/bin/sh
case " $* " in
*" status "*" --porcelain=v1 "*)
  mkdir {d}/$$
  i=0
  while [ "$(ls {d} | wc -l)" -lt 2 ] && [ $i -lt 500 ]; do sleep 0.01; i=$((i + 1)); done
  [ $i -lt 500 ] || {{ echo "fatal: no other status started meanwhile" >&2; exit 128; }};;
esac
exec {real} "$@"
"""


@pytest.mark.long
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: one status at a time")
def test_a_plan_looks_at_several_worktrees_at_once(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each worktree's `git status` is most of a plan's time over hundreds of them."""
    agent = " ".join(write_agent(
        "import os, pathlib\n"
        "pathlib.Path(os.environ['SWARM_TASK_ID'] + '.txt').write_text('work\\n')\n"
    ))  # fmt: skip
    ids = ("a", "b", "c")
    out = swarm(repo, "run", "--agent", agent, *[a for t in ids for a in ("-t", f"{t}=x")])
    assert out.returncode == 0, out.stderr
    met = tmp_path / "met"
    met.mkdir()
    git_first_on_path(
        tmp_path, monkeypatch, lambda real: _MEETING_GIT.format(d=shlex.quote(str(met)), real=real)
    )

    found = report(repo, "clean", code=1)

    root = repo.parent / "repo.swarm"
    assert [found[str(root / t)]["fix"] for t in ids] == ["remove it"] * 3
    assert len(list(met.iterdir())) == 3  # one status each, two of them at once at least


def test_remote_branches_are_deleted_only_where_they_were_left(repo: Path, tmp_path: Path) -> None:
    # What `swarm clean` does for a Ray run's task branches, here without a cluster: each is
    # deleted on the remote under a lease at the tip recorded for it.
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", str(remote))
    tip = git(repo, "rev-parse", "HEAD")
    for branch in ("swarm/a", "swarm/b", "swarm/c"):
        git(repo, "push", "-q", str(remote), f"HEAD:refs/heads/{branch}")
    (repo / "more.txt").write_text("more\n")
    git(repo, "add", "more.txt")
    git(repo, "commit", "-qm", "more")
    git(repo, "push", "-q", str(remote), "HEAD:refs/heads/swarm/b")  # moved there since
    r = g.open_repo(repo)
    moved = git(repo, "rev-parse", "HEAD")

    def finding(branch: str, url: str) -> findings.Finding:
        return branches.remote_branch_finding(
            branch=branch, remote="origin", url=url, tip=tip, reason="done",
            run_id="r1", task_id=branch.removeprefix("swarm/"),
        )  # fmt: skip

    plan = [finding(b, str(remote)) for b in ("swarm/a", "swarm/b", "swarm/c")]
    results = fixes.apply(r, plan, store=None, force=False)
    assert [(x.fixed, x.detail) for x in results] == [
        (True, f"deleted (was {tip[:12]})"),
        (False, f"there it is at {moved[:12]}, not at {tip[:12]}: moved since; kept"),
        (True, f"deleted (was {tip[:12]})"),
    ]
    assert git(remote, "for-each-ref", "--format=%(refname)") == "refs/heads/swarm/b"
    again = fixes.apply(r, [finding("swarm/a", str(remote))], store=None, force=False)
    assert [(x.fixed, x.detail) for x in again] == [(True, "already gone")]
    away = fixes.apply(r, [finding("swarm/b", str(tmp_path / "gone.git"))], store=None, force=False)
    assert not away[0].fixed
    assert away[0].detail.startswith(f"cannot reach {tmp_path / 'gone.git'} (fatal: ")


def test_a_token_in_a_remote_branchs_url_is_in_nothing_clean_says(repo: Path) -> None:
    # A Ray run's `--remote` a URL with a token as its user name: the finding's target, its
    # `--json` remote and the line saying the remote cannot be reached all showed the token.
    token = "0123456789abcdef0123456789abcdef01234567"  # noqa: S105 - a fake
    url = f"https://{token}@127.0.0.1:9/acme/w.git"
    found = branches.remote_branch_finding(
        branch="swarm/a", remote=url, url=url, tip="1" * 40, reason="done", run_id="r1",
        task_id="a",
    )  # fmt: skip
    (result,) = fixes.apply(g.open_repo(repo), [found], store=None, force=False)
    assert not result.fixed
    assert found.target == "swarm/a on https://127.0.0.1:9/acme/w.git"
    assert found.to_json()["remote"] == "https://127.0.0.1:9/acme/w.git"
    assert result.detail.startswith("cannot reach https://127.0.0.1:9/acme/w.git (fatal: ")
    assert token not in result.detail


@pytest.mark.long
def test_doctor_removes_in_one_go_a_worktree_it_freed_of_a_process(
    repo: Path, write_agent: AgentFactory
) -> None:
    # A worktree under the root that no task owns, still used by a process (a killed `swarm
    # merge --into`'s check): the process is ended, and the worktree, kept "in use" by it in
    # the first scan, goes in the same go.
    edits_done(repo, write_agent)
    stray = repo.parent / "repo.swarm" / "stray"
    git(repo, "worktree", "add", "-q", str(stray), "-b", "stray-branch")
    sleeper = subprocess.Popen(["sleep", "300"], cwd=stray, start_new_session=True)
    try:
        out = swarm(repo, "doctor", "--yes")
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.rstrip().endswith("0 problems left")
        assert sleeper.wait(timeout=30) is not None
        assert not stray.exists()
        assert swarm(repo, "doctor").stdout.strip() == "nothing to clean"
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.long
def test_doctor_during_a_run_rescues_a_cut_off_worktree_without_blaming_a_live_agent(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, reaper: Reaper
) -> None:
    # The removal is swarm's own, announced to the run's guard like `swarm clean`'s: task b,
    # whose agent is alive meanwhile, is not blamed, and a's worktree is not made again.
    go = tmp_path / "go"
    agent = write_agent(
        "import os, pathlib, time\n"
        f"go = pathlib.Path({str(go)!r})\n"
        "if os.environ['SWARM_TASK_ID'] == 'b':\n"
        "    pathlib.Path(str(go) + '.waiting').touch()\n"
        "    while not go.exists():\n"
        "        time.sleep(0.05)\n"
        "pathlib.Path('done.txt').write_text('done\\n')\n"
    )
    tasks = '[[task]]\nid = "a"\nprompt = "p"\n[[task]]\nid = "b"\nprompt = "p"\n'
    path = manifest(repo, f"[defaults]\nagent = {argv_toml(agent)}\njobs = 2\n{tasks}")
    manager = swarm_bg(repo, "run", path)
    reaper.append(manager)
    a = repo.parent / "repo.swarm" / "a"
    try:
        wait_for(Path(str(go) + ".waiting").exists, what="task b's agent")
        wait_for(lambda: status_json(repo)["a"]["state"] == "done", what="task a")
        (a / ".git").write_text("gitdir: /nonexistent\n")

        found = report(repo, "doctor", "--yes", code=0)

        assert found[str(a)]["fixed"], found[str(a)]
        assert not a.exists()
    finally:  # b's agent ends either way (it would outlive the manager the reaper kills)
        go.touch()
    assert manager.wait(timeout=60) == 0, (repo.parent / "bg.log").read_text()
    assert outside_writes(repo) == []
    assert {row["state"] for row in status_json(repo).values()} == {"done"}
    assert not a.exists()  # not made again
    (rescued,) = git(repo, "for-each-ref", "--format=%(refname)", "refs/swarm/rescued/").split()
    assert git(repo, "show", f"{rescued}:done.txt") == "done"


@pytest.mark.long
def test_clean_during_a_run_does_not_take_a_remote_tracking_ref_for_a_home_of_a_commit(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, reaper: Reaper
) -> None:
    # An agent can set refs/remotes/... to any commit, and the run's guard deletes that ref
    # at the end: a detached worktree's commit on it alone is still on no ref of yours.
    old = write_agent("import pathlib\npathlib.Path('old.txt').write_text('old\\n')\n")
    assert swarm(repo, "run", "--agent", " ".join(old), "-t", "old=p").returncode == 0
    wt = repo.parent / "repo.swarm" / "old"
    git(wt, "checkout", "-q", "--detach")
    (wt / "old.txt").write_text("only in this commit\n")
    git(wt, "commit", "-qam", "on no branch")
    lone = git(wt, "rev-parse", "HEAD")
    go = tmp_path / "go"
    waiter = write_agent(
        "import pathlib, subprocess, sys, time\n"
        f"go = pathlib.Path({str(go)!r})\n"
        "pathlib.Path('w.txt').write_text('w\\n')\n"
        "subprocess.run(['git', 'update-ref', 'refs/remotes/origin/forged',"
        f" {lone!r}], check=True)\n"
        "pathlib.Path(str(go) + '.waiting').touch()\n"
        "while not go.exists():\n"
        "    time.sleep(0.05)\n"
    )
    manager = swarm_bg(repo, "run", "--agent", " ".join(waiter), "-t", "waiter=p")
    reaper.append(manager)
    try:
        wait_for(Path(str(go) + ".waiting").exists, what="the forging agent")
        found = report(repo, "clean", "--all", "--yes", code=1)
        assert found[str(wt)]["action"] == "keep", found[str(wt)]
    finally:
        go.touch()
    assert manager.wait(timeout=60) == 0, (repo.parent / "bg.log").read_text()
    assert git(repo, "for-each-ref", "refs/remotes/") == ""  # put back: gone
    assert git(wt, "rev-parse", "HEAD") == lone


@pytest.mark.long
def test_clean_waits_for_the_guards_verdict_without_the_repository_lock(
    repo: Path, write_agent: AgentFactory
) -> None:
    agent = write_agent("import pathlib\npathlib.Path('a.txt').write_text('a\\n')\n")
    path = manifest(repo, f'[[task]]\nid = "a"\nprompt = "p"\nagent = {argv_toml(agent)}\n')
    assert swarm(repo, "run", path).returncode == 0
    state = repo / ".git" / "swarm"
    # A run's manager (this process), whose guard gives no verdict yet: it waits for the
    # repository lock itself, to make a task worktree an agent removed again.
    with ManagerLock(state) as manager:
        manager.acquire()
        cleaning = swarm_bg(repo, "clean", "--yes", "--force")

        def awaiting_verdict() -> bool:
            files = (state / "ref-moves").glob("*.json")
            return any(json.loads(f.read_bytes() or b"{}").get("done") for f in files)

        wait_for(awaiting_verdict, what="swarm clean to wait for the guard's verdict")
        with filelock.FileLock(state / "repo.lock").acquire(timeout=0):
            pass  # free: the guard gets it, and then says its verdict
    assert cleaning.wait(timeout=60) == 0, (repo.parent / "bg.log").read_text()
    assert "swarm/a" not in git(repo, "branch", "--list")


@pytest.mark.long
def test_a_task_worktree_you_switched_branch_in_or_left_mid_rebase_is_kept_as_it_is(
    repo: Path, write_agent: AgentFactory
) -> None:
    """`swarm clean --yes` committed your work in progress onto your own branch (switched to in
    a task's worktree), and committed inside a rebase you left with a conflict resolved."""
    agent = " ".join(write_agent(
        "import os, pathlib\ntid = os.environ['SWARM_TASK_ID']\n"
        "pathlib.Path(tid + '.txt').write_text(tid + '\\n')\n"
    ))  # fmt: skip
    out = swarm(repo, "run", "--agent", agent, "-t", "switched=a", "-t", "rebasing=b")
    assert out.returncode == 0, out.stderr
    root = repo.parent / "repo.swarm"
    git(repo, "branch", "feature")
    feature = git(repo, "rev-parse", "feature")
    git(root / "switched", "switch", "-q", "feature")
    (root / "switched" / "wip.txt").write_text("yours, half done\n")
    # A rebase of the task's branch onto a commit that changes its file: a conflict, resolved
    # and staged, not continued.
    work = root / "rebasing"
    git(repo, "commit", "-q", "--allow-empty", "-m", "base moves")
    (repo / "rebasing.txt").write_text("main's\n")
    git(repo, "add", "rebasing.txt")
    git(repo, "commit", "-q", "-m", "main's rebasing.txt")
    conflict = subprocess.run(["git", "rebase", "main"], cwd=work, capture_output=True, check=False)
    assert conflict.returncode != 0
    (work / "rebasing.txt").write_text("resolved\n")
    git(work, "add", "rebasing.txt")
    tips = {b: git(repo, "rev-parse", b) for b in ("feature", "swarm/switched", "swarm/rebasing")}

    out = swarm(repo, "clean", "--yes")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "its worktree is on branch feature now, not swarm/switched" in out.stdout
    assert "a rebase is in progress in its worktree" in out.stdout
    assert {b: git(repo, "rev-parse", b) for b in tips} == tips
    assert tips["feature"] == feature
    assert (root / "switched" / "wip.txt").read_text() == "yours, half done\n"
    assert (work / ".git").exists()
    assert git(work, "diff", "--cached", "--name-only") == "rebasing.txt"


@pytest.mark.long
def test_a_task_worktree_switched_between_the_plan_and_its_removal_is_kept_as_it_is(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_agent: AgentFactory
) -> None:
    """Switched once `swarm clean --yes` had planned its removal (on its branch then), its
    checkpoint committed the work there onto the branch it was on by the time of the commit."""
    agent = " ".join(write_agent("open('a.txt', 'w').write('a\\n')\n"))
    assert swarm(repo, "run", "--agent", agent, "-t", "a=a").returncode == 0
    worktree = repo.parent / "repo.swarm" / "a"
    git(repo, "branch", "feature")
    tips = {b: git(repo, "rev-parse", b) for b in ("main", "feature", "swarm/a")}
    (worktree / "wip.txt").write_text("yours, half done\n")
    # The removal's look at what the worktree holds (its `git status`) comes once the plan
    # is made: the worktree is switched right then, and that status sees it switched.
    real = shlex.quote(str(shutil.which("git")))
    switch = f"{real} -C {shlex.quote(str(worktree))} switch -q feature"
    switched = hang_git_at(tmp_path, monkeypatch, "status", then=switch)

    out = swarm(repo, "clean", "--yes")

    assert switched.exists()
    assert out.returncode == 1, out.stdout + out.stderr
    assert "its worktree is on branch feature now, not swarm/a" in out.stdout, out.stdout
    assert "kept: finish there" in out.stdout, out.stdout
    assert {b: git(repo, "rev-parse", b) for b in tips} == tips
    assert (worktree / "wip.txt").read_text() == "yours, half done\n"
    assert git(worktree, "symbolic-ref", "--short", "HEAD") == "feature"


@pytest.mark.long
def test_a_task_worktree_switched_to_main_as_its_checkpoint_stages_leaves_main_where_it_was(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_agent: AgentFactory
) -> None:
    """Switched after the removal's last look at its HEAD, before its checkpoint's commit:
    `git commit` committed the work onto wherever HEAD was by then, your `main`."""
    agent = " ".join(write_agent("open('a.txt', 'w').write('a\\n')\n"))
    assert swarm(repo, "run", "--agent", agent, "-t", "a=a").returncode == 0
    worktree = repo.parent / "repo.swarm" / "a"
    tips = {b: git(repo, "rev-parse", b) for b in ("main", "swarm/a")}
    (worktree / "wip.txt").write_text("yours, half done\n")
    # The checkpoint's `add` comes after that look: the worktree goes to `main` right then.
    real = shlex.quote(str(shutil.which("git")))
    switch = f"{real} -C {shlex.quote(str(worktree))} switch -q --ignore-other-worktrees main"
    switched = hang_git_at(tmp_path, monkeypatch, "add", then=f'{switch}; exec {real} "$@"')

    out = swarm(repo, "clean", "--yes")

    assert switched.exists()
    assert {b: git(repo, "rev-parse", b) for b in tips} == tips
    assert out.returncode == 1, out.stdout + out.stderr
    assert "its worktree is on branch main now, not swarm/a" in out.stdout, out.stdout
    assert "kept: finish there" in out.stdout, out.stdout
    assert (worktree / "wip.txt").read_text() == "yours, half done\n"
    assert git(worktree, "symbolic-ref", "--short", "HEAD") == "main"


@pytest.mark.long
def test_a_task_worktree_switched_as_its_checkpoint_commits_keeps_it_on_its_branch(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_agent: AgentFactory
) -> None:
    """Switched once its tree is written and HEAD was found on its branch: the commit goes
    onto that branch all the same, and the checkout, someone's now, stays."""
    agent = " ".join(write_agent("open('a.txt', 'w').write('a\\n')\n"))
    assert swarm(repo, "run", "--agent", agent, "-t", "a=a").returncode == 0
    worktree = repo.parent / "repo.swarm" / "a"
    main = git(repo, "rev-parse", "main")
    (worktree / "wip.txt").write_text("yours, half done\n")
    real = shlex.quote(str(shutil.which("git")))
    switch = f"{real} -C {shlex.quote(str(worktree))} switch -q --ignore-other-worktrees main"
    switched = hang_git_at(tmp_path, monkeypatch, "commit-tree", then=f'{switch}; exec {real} "$@"')

    out = swarm(repo, "clean", "--yes")

    assert switched.exists()
    assert git(repo, "rev-parse", "main") == main
    assert git(repo, "show", "swarm/a:wip.txt") == "yours, half done"
    assert out.returncode == 1, out.stdout + out.stderr
    tip = git(repo, "rev-parse", "swarm/a")
    said = f"its worktree is on branch main now, not swarm/a (its work checkpointed {tip[:12]}"
    assert said in out.stdout, out.stdout
    assert git(worktree, "symbolic-ref", "--short", "HEAD") == "main"


@pytest.mark.long
def test_a_task_worktree_its_agent_left_on_a_detached_head_is_kept_as_it_is(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    """Its checkpoint committed the agent's work onto no branch; `--force` then removed the
    worktree, and that commit with it was lost to you."""
    worktree = switched_and_sealed(repo, tmp_path, write_agent, ["--detach"])
    tip = git(repo, "rev-parse", "swarm/a")
    kept = f"its worktree is on a detached HEAD at {tip[:12]} now, not swarm/a"

    dry = swarm(repo, "clean", "--force")
    assert kept in dry.stdout, dry.stdout
    out = swarm(repo, "clean", "--yes", "--force")

    assert out.returncode == 1, out.stdout + out.stderr
    assert kept in out.stdout, out.stdout
    assert "kept: finish there" in out.stdout, out.stdout
    assert (worktree / "work.txt").read_text() == "work\n"  # uncommitted, as the agent left it
    assert git(worktree, "rev-parse", "HEAD") == tip
    assert git(repo, "rev-parse", "swarm/a") == tip


@pytest.mark.long
def test_a_task_worktree_whose_submodule_was_checked_out_is_removed(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    """The agent's work is a submodule's new commit: `swarm clean --yes` failed on it every
    time (git removes a worktree with submodules only with --force), only --force removed it,
    and with it every unmerged branch of the run."""
    lib = make_repo(tmp_path / "lib", {"l.txt": "1\n"})
    (lib / "l.txt").write_text("2\n")
    git(lib, "commit", "-qam", "l2")
    git(repo, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(lib), "lib")
    git(repo, "commit", "-qm", "lib")
    agent = write_agent(
        "import subprocess\n"
        "subprocess.run(['git', '-c', 'protocol.file.allow=always', 'submodule', 'update',"
        " '--init', '-q'], check=True)\n"
        "subprocess.run(['git', '-C', 'lib', 'checkout', '-q', 'HEAD~1'], check=True)\n"
    )
    assert swarm(repo, "run", "--agent", " ".join(agent), "-t", "sub=x").returncode == 0
    assert swarm(repo, "merge").returncode == 0
    out = swarm(repo, "clean", "--yes")
    assert out.returncode == 0, out.stdout + out.stderr
    assert worktree_paths(repo) == [str(repo)]


def test_a_lock_file_a_swarm_run_as_another_user_made_is_named_as_that_users(
    repo: Path, write_agent: AgentFactory
) -> None:
    # `sudo swarm clean` left root's merge.lock: every clean, merge and doctor of the owner's
    # then said "cannot write .../merge.lock: Permission denied", nothing more.
    agent = " ".join(write_agent(BY_ID_AGENT))
    assert swarm(repo, "run", "--agent", agent, "-t", "edits=a").returncode == 0
    lock = repo / ".git" / "swarm" / "merge.lock"
    lock.touch()
    os.chown(lock, 65534, 65534)
    out = subprocess.run(
        [*as_owner_only(), sys.executable, "-m", "worktree_swarm.cli", "clean", "--yes"],
        cwd=repo, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2, out.stdout + out.stderr
    name = pwd.getpwuid(65534).pw_name
    assert out.stderr == (
        f"swarm: cannot write {lock}: Permission denied; {lock} belongs to {name} (a swarm "
        f"command run as {name} made it): give it back to you (`sudo chown -R "
        f"{getpass.getuser()} {lock}`) or run swarm as {name}\n"
    )


def test_clean_on_a_read_only_worktree_root_leaves_each_worktree_as_git_knew_it(
    small_disk: Path, repo: Path, write_agent: AgentFactory
) -> None:
    # Its index went before its files, which the file system then kept: `git status` there
    # said every file deleted and untracked, and a commit made by hand recorded the deletions.
    agent = write_agent(BY_ID_AGENT)
    text = f'[defaults]\nagent = {argv_toml(agent)}\nworktree_root = "{small_disk}"\n'
    text += '[[task]]\nid = "nothing"\nprompt = "x"\n'
    assert swarm(repo, "run", manifest(repo, text)).returncode == 1  # no_changes
    worktree = small_disk / "nothing"
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    out = swarm(repo, "clean", "--yes")
    assert out.returncode != 0, out.stdout + out.stderr
    assert "Read-only file system" in out.stdout + out.stderr, out.stdout + out.stderr
    assert (worktree / "README.md").is_file()
    assert git(worktree, "status", "--porcelain") == ""
    assert worktree_paths(repo) == [str(repo), str(worktree)]


def test_the_process_still_adding_a_worktree_is_found_by_its_cwd_or_its_arguments(
    tmp_path: Path,
) -> None:
    # A half-made worktree is left alone while a `git worktree add` still makes it: found by
    # a process working inside it, or by a git naming it on its command line from elsewhere.
    made = tmp_path / "wt"
    made.mkdir()
    assert processes.adding_process(made) is None
    adder = tmp_path / "bin" / "git-adder"  # named like git: its command name is the script's
    adder.parent.mkdir()
    adder.write_text("#!/bin/sh\nread line\n")  # no child of its own left behind
    adder.chmod(0o755)
    procs = [
        subprocess.Popen(
            [str(adder), "worktree", "add", "wt"], cwd=tmp_path, stdin=subprocess.PIPE
        ),
        subprocess.Popen(["sleep", "120"], cwd=made),
    ]
    try:
        wait_for(lambda: psutil.Process(procs[0].pid).name() == "git-adder", what="the adder")
        found = processes.adding_process(made)
        assert found is not None
        assert found.pid == procs[1].pid  # working inside it: first
        procs[1].kill()
        procs[1].wait()
        found = processes.adding_process(made)
        assert found is not None
        assert found.pid == procs[0].pid
        assert processes.describe(found) == f"git-adder (pid {procs[0].pid})"
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
            if proc.stdin is not None:
                proc.stdin.close()
    assert processes.adding_process(made) is None
