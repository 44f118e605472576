"""An agent that removes or moves another task's worktree, in a real run.

`git worktree remove --force` or `git worktree move` of a sibling's worktree writes outside the
agent's own (the sibling's files and its admin dir under ``.git/worktrees/``): the agent that
does it fails like any other outside write, the sibling's worktree is put back (re-made from
its branch, or moved back), and nothing of the sibling's is lost or deleted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from inotify_simple import INotify, flags

from tests.conftest import git, make_repo, tmpfs
from tests.test_guard_file_stats import stats_of
from tests.test_run import argv_toml, manifest, status_json, swarm, swarm_bg, wait_for
from tests.test_trust import AgentFactory, husky_hooks, outside_writes
from worktree_swarm.git.repo import open_repo
from worktree_swarm.guard import file_stats
from worktree_swarm.guard.watcher import Guard
from worktree_swarm.infra.proctree import identity_of

# The wrecker finds the victim's worktree as git lists it, once the victim's task is done.
FIND_VICTIM = """
import os, pathlib, sqlite3, subprocess, sys, time
def git(*args):
    return subprocess.run(['git', *args], capture_output=True, text=True, check=True).stdout
common = git('rev-parse', '--path-format=absolute', '--git-common-dir').strip()
def victim_path():
    records = git('worktree', 'list', '--porcelain').split('\\n\\n')
    for record in records:
        lines = dict(line.split(' ', 1) for line in record.splitlines() if ' ' in line)
        if lines.get('branch') == 'refs/heads/swarm/victim':
            return lines['worktree']
    raise SystemExit('no worktree of task victim')
def wait_done():
    db = sqlite3.connect(f'file:{common}/swarm/state.db?mode=ro', uri=True, timeout=30)
    query = "SELECT state FROM tasks WHERE task_id = 'victim' ORDER BY rowid DESC LIMIT 1"
    while db.execute(query).fetchone()[0] != 'done':
        time.sleep(0.05)
pathlib.Path('wrecker.txt').write_text('w\\n')
"""

REMOVE_DONE = (
    FIND_VICTIM
    + """
wait_done()
git('worktree', 'remove', '--force', victim_path())
"""
)

MOVE_DONE = (
    FIND_VICTIM
    + """
wait_done()
git('worktree', 'move', victim_path(), sys.argv[1])
"""
)

VICTIM = """
import pathlib
pathlib.Path('victim.txt').write_text('v\\n')
"""


def run_pair(repo: Path, victim: list[str], wrecker: list[str]) -> dict[str, dict[str, object]]:
    path = manifest(
        repo,
        f'[[task]]\nid = "victim"\nprompt = "p"\nagent = {argv_toml(victim)}\n'
        f'[[task]]\nid = "wrecker"\nprompt = "p"\nagent = {argv_toml(wrecker)}\n',
    )
    out = swarm(repo, "run", path, "--jobs", "2")
    assert "Traceback" not in out.stderr, out.stderr
    return status_json(repo)


def victim_worktree(repo: Path) -> Path:
    return repo.parent / "repo.swarm" / "victim"


def assert_victim_whole(repo: Path) -> None:
    """The victim's worktree is where swarm made it, registered, on its branch, its work there."""
    path = victim_worktree(repo)
    assert (path / "victim.txt").read_text() == "v\n"
    assert git(path, "symbolic-ref", "HEAD") == "refs/heads/swarm/victim"
    assert git(path, "status", "--porcelain") == ""
    assert git(repo, "show", "swarm/victim:victim.txt") == "v"


DELETE_DONE = (
    FIND_VICTIM
    + """
import shutil
wait_done()
shutil.rmtree(victim_path())  # git's registration of it stays
"""
)


@pytest.mark.parametrize("how", [REMOVE_DONE, DELETE_DONE], ids=["git-worktree-remove", "rm-rf"])
def test_an_agent_removing_a_finished_siblings_worktree_fails_and_the_worktree_comes_back(
    repo: Path, write_agent: AgentFactory, how: str
) -> None:
    rows = run_pair(repo, write_agent(VICTIM), write_agent(how))
    assert rows["victim"]["state"] == "done", rows["victim"]
    assert rows["wrecker"]["state"] == "failed", rows["wrecker"]
    reason = str(rows["wrecker"]["reason"])
    assert "wrote outside its worktree: task victim's worktree was removed" in reason, reason
    assert_victim_whole(repo)
    writes = outside_writes(repo)
    assert [(w["where"], w["suspects"], w["restored"]) for w in writes] == [
        ("victim", ["wrecker"], True)
    ], writes
    assert git(repo, "show", "swarm/wrecker:wrecker.txt") == "w"  # its own work is kept


def test_a_siblings_worktree_moved_into_your_checkout_is_moved_back_not_deleted(
    repo: Path, write_agent: AgentFactory
) -> None:
    before = sorted(p.name for p in repo.iterdir())
    rows = run_pair(repo, write_agent(VICTIM), [*write_agent(MOVE_DONE), str(repo / "moved")])
    assert rows["victim"]["state"] == "done", rows["victim"]
    assert rows["wrecker"]["state"] == "failed", rows["wrecker"]
    reason = str(rows["wrecker"]["reason"])
    assert f"task victim's worktree was moved to {repo / 'moved'}" in reason, reason
    assert_victim_whole(repo)
    assert sorted(p.name for p in repo.iterdir()) == before


def test_a_siblings_worktree_moved_elsewhere_is_moved_back(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    away = tmp_path / "away"
    rows = run_pair(repo, write_agent(VICTIM), [*write_agent(MOVE_DONE), str(away)])
    assert rows["wrecker"]["state"] == "failed", rows["wrecker"]
    assert "task victim's worktree was moved to" in str(rows["wrecker"]["reason"])
    assert rows["victim"]["state"] == "done", rows["victim"]
    assert_victim_whole(repo)
    assert not away.exists()


# The victim writes its work, then waits while the wrecker removes its worktree.
WORKING = """
import pathlib, sys, time
marks = pathlib.Path(sys.argv[1])
pathlib.Path('victim.txt').write_text('v\\n')
(marks / 'victim-working').touch()
while not (marks / 'removed').exists():
    time.sleep(0.02)
"""
REMOVE_RUNNING = (
    FIND_VICTIM
    + """
marks = pathlib.Path(sys.argv[1])
while not (marks / 'victim-working').exists():
    time.sleep(0.02)
git('worktree', 'remove', '--force', victim_path())
(marks / 'removed').touch()
"""
)


def test_a_task_whose_worktree_is_removed_while_its_agent_works_is_not_done(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    rows = run_pair(
        repo,
        [*write_agent(WORKING), str(marks)],
        [*write_agent(REMOVE_RUNNING), str(marks)],
    )
    assert rows["wrecker"]["state"] == "failed", rows["wrecker"]
    assert "task victim's worktree was removed" in str(rows["wrecker"]["reason"])
    # Its uncommitted work went with the files: it must not look done.
    victim = rows["victim"]
    assert victim["state"] == "failed", victim
    assert "its worktree was removed while its agent worked" in str(victim["reason"]), victim
    assert git(repo, "rev-parse", "--verify", "-q", "refs/heads/swarm/victim")  # kept
    assert (victim_worktree(repo) / ".git").is_file()  # made again from its branch
    writes = outside_writes(repo)
    assert [(w["where"], w["suspects"]) for w in writes] == [("victim", ["wrecker"])], writes


# Each task writes its work, then waits while the worktree root goes under all of them.
WAIT_FOR_ROOT = """
import os, pathlib, sys, time
marks = pathlib.Path(sys.argv[1])
task = os.environ['SWARM_TASK_ID']
pathlib.Path(task + '.txt').write_text(task + '\\n')
(marks / (task + '-working')).touch()
while not (marks / 'gone').exists():
    time.sleep(0.02)
"""


@pytest.mark.parametrize("how", ["removed", "unmounted"])
def test_a_worktree_root_gone_under_running_agents_is_named_and_no_sibling_blamed(
    tmp_path: Path, write_agent: AgentFactory, how: str
) -> None:
    # Every task said its worktree was removed by one of the others.
    repo = make_repo(tmp_path / "repo")
    marks = tmp_path / "marks"
    marks.mkdir()
    root = tmp_path / "trees"
    with contextlib.ExitStack() as stack:
        if how == "unmounted":
            root = stack.enter_context(tmpfs(tmp_path, "16m"))
        agent = [*write_agent(WAIT_FOR_ROOT), str(marks)]
        text = f"[defaults]\nworktree_root = {str(root)!r}\nagent = {argv_toml(agent)}\n"
        text += '[[task]]\nid = "a"\nprompt = "p"\n[[task]]\nid = "b"\nprompt = "p"\n'
        proc = swarm_bg(repo, "run", manifest(repo, text), "--jobs", "2")
        try:
            for task in ("a", "b"):
                wait_for((marks / f"{task}-working").exists, timeout=120, what=f"{task} to work")
            if how == "unmounted":
                subprocess.run(["umount", "-l", str(root)], check=True)
            else:
                shutil.rmtree(root)
            (marks / "gone").touch()
            assert proc.wait(timeout=120) == 1
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    rows = status_json(repo)
    for task in ("a", "b"):
        assert rows[task]["state"] == "failed", rows[task]
        assert str(rows[task]["reason"]).startswith(
            f"the worktree root {root} disappeared (unmounted or removed) while its agent "
            f"worked: the attempt's work since its last checkpoint went with it; swarm/{task} "
            "keeps what was committed"
        ), rows[task]


MOVE_AND_SQUAT = (
    MOVE_DONE
    + """
where = pathlib.Path(sys.argv[2])
where.mkdir()
(where / 'squat.txt').write_text('in the way\\n')
"""
)


def test_a_moved_worktree_that_cannot_go_back_is_left_where_it_is_even_in_your_checkout(
    repo: Path, write_agent: AgentFactory
) -> None:
    moved = repo / "moved"
    wrecker = [*write_agent(MOVE_AND_SQUAT), str(moved), str(victim_worktree(repo))]
    rows = run_pair(repo, write_agent(VICTIM), wrecker)
    assert rows["wrecker"]["state"] == "failed", rows["wrecker"]
    reason = str(rows["wrecker"]["reason"])
    assert f"task victim's worktree was moved to {moved}; left as found" in reason, reason
    # Nothing of the victim's is deleted: its worktree is whole where the agent moved it.
    assert (moved / "victim.txt").read_text() == "v\n"
    assert git(moved, "symbolic-ref", "HEAD") == "refs/heads/swarm/victim"
    assert git(repo, "show", "swarm/victim:victim.txt") == "v"


WAIT_FOR_GO = """
import pathlib, sys, time
flags = pathlib.Path(sys.argv[1])
(flags / 'started').touch()
while not (flags / 'go').exists():
    time.sleep(0.05)
pathlib.Path('work.txt').write_text('w\\n')
"""


@pytest.mark.parametrize("merging", [False, True], ids=["clean", "merging"])
def test_your_own_worktree_removed_during_a_run_is_watched_no_more_and_blames_nobody(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, merging: bool
) -> None:
    yours = tmp_path / "feature"
    git(repo, "worktree", "add", "-q", str(yours), "-b", "feature")
    if merging:  # its operation in progress and its hooks go with it, not put back
        git(repo, "commit", "-q", "--allow-empty", "-m", "to merge")
        git(yours, "merge", "-q", "--no-ff", "--no-commit", "main")
        husky_hooks(repo, yours)
    flags = tmp_path / "flags"
    flags.mkdir()
    agent = [*write_agent(WAIT_FOR_GO), str(flags)]
    path = manifest(repo, f'[[task]]\nid = "a"\nprompt = "p"\nagent = {argv_toml(agent)}\n')
    running = swarm_bg(repo, "run", path)
    try:
        wait_for((flags / "started").exists, what="the agent to start")
        # Done with it, while the agent works.
        git(repo, "worktree", "remove", *(["--force"] if merging else []), str(yours))
        (flags / "go").touch()
        assert running.wait(timeout=120) == 0, (repo.parent / "bg.log").read_text()
    finally:
        if running.poll() is None:
            running.kill()
    assert status_json(repo)["a"]["state"] == "done"
    assert outside_writes(repo) == []
    # Not made again as a worktree of one `.git` file.
    assert not yours.exists()
    assert str(yours) not in git(repo, "worktree", "list")
    assert not (repo / ".git" / "worktrees" / "feature").exists()


WAIT_THEN_WRITE_THERE = """
import pathlib, sys, time
flags = pathlib.Path(sys.argv[1])
(flags / 'started').touch()
while not (flags / 'go').exists():
    time.sleep(0.05)
pathlib.Path(sys.argv[2]).write_text('agent\\n')
"""


@pytest.mark.parametrize("written", ["mine.txt", ".husky/_/pre-commit"])
def test_your_own_worktree_moved_during_a_run_blames_nobody_and_is_watched_where_it_is(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, written: str
) -> None:
    yours = tmp_path / "feature"
    git(repo, "worktree", "add", "-q", str(yours), "-b", "feature")
    (yours / "mine.txt").write_text("mine\n")
    husky_hooks(repo, yours)  # its hooks directory (ignored) is watched where it is too
    moved = tmp_path / "feature2"
    flags = tmp_path / "flags"
    flags.mkdir()
    agent = [*write_agent(WAIT_THEN_WRITE_THERE), str(flags), str(moved / written)]
    path = manifest(repo, f'[[task]]\nid = "a"\nprompt = "p"\nagent = {argv_toml(agent)}\n')
    running = swarm_bg(repo, "run", path)
    try:
        wait_for((flags / "started").exists, what="the agent to start")
        git(repo, "worktree", "move", str(yours), str(moved))  # yours, while the agent works

        def followed() -> bool:
            logs = (repo / ".git" / "swarm" / "runs").glob("*/guard/guard.log")
            return any(f"was moved to {moved}" in log.read_text() for log in logs)

        wait_for(followed, what="the guard to watch it where it is now")
        (flags / "go").touch()
        assert running.wait(timeout=120) == 1, (repo.parent / "bg.log").read_text()
    finally:
        if running.poll() is None:
            running.kill()
    # Only the agent's write into it, at its new place: the move itself is nobody's fault.
    [event] = outside_writes(repo)
    if written == "mine.txt":
        assert event["where"] == f"worktree {moved}", event
        assert event["git_files"] == [], event
    else:
        assert event["git_files"] == [f"{moved}/{written}"], event
    assert (moved / "mine.txt").read_text() == "mine\n"  # put back there
    assert (moved / ".husky/_/pre-commit").read_text() == "#!/bin/sh\n"
    # Its ties not written back at the old place: no worktree of one `.git` file.
    assert not yours.exists()
    assert f"{moved} " in git(repo, "worktree", "list")
    assert git(moved, "status", "--short") == "?? mine.txt"


@pytest.mark.long
def test_your_own_worktree_half_way_through_its_git_worktree_remove_is_left_to_git(
    repo: Path, tmp_path: Path
) -> None:
    # git deletes a worktree's files one by one, its admin dir last: a big one takes seconds.
    yours = tmp_path / "feature"
    git(repo, "worktree", "add", "-q", str(yours), "-b", "feature")
    dirs = [yours / f"notes{d}" for d in range(20)]
    for directory in dirs:
        directory.mkdir()
        for f in range(500):  # (a window wide enough to stop it in on a busy CI)
            (directory / f"{f}.txt").write_text(f"{f}\n")  # untracked: watched as yours
    admin = repo / ".git" / "worktrees" / "feature"
    guard = Guard(open_repo(repo), work_dir=tmp_path / "g", restore=True)
    guard.start()
    guard.agent_started("busy", identity_of(os.getpid()))  # an agent at work meanwhile
    with INotify() as ino:
        for directory in [yours, *dirs]:
            ino.add_watch(directory, flags.DELETE)
        remover = subprocess.Popen(
            ["git", "worktree", "remove", "--force", str(yours)],
            cwd=repo, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            ino.read()  # its first deletion
            os.kill(remover.pid, signal.SIGSTOP)
            assert admin.is_dir()  # stopped half-way
            assert any(d.exists() for d in dirs)
            assert guard.scan() == []
            while (yours / ".git").exists():  # its `.git` gone too, the rest not yet
                os.kill(remover.pid, signal.SIGCONT)
                ino.read()
                os.kill(remover.pid, signal.SIGSTOP)
            if admin.is_dir():
                assert guard.scan() == []
        finally:
            os.kill(remover.pid, signal.SIGCONT)
            _, err = remover.communicate(timeout=60)
    assert remover.returncode == 0, err  # nothing written back in its way
    assert guard.scan() == []
    assert not yours.exists()
    assert str(yours) not in git(repo, "worktree", "list")


def _task_worktrees(tmp_path: Path, *task_ids: str) -> tuple[Path, dict[str, Path], Guard]:
    """A repository, each task's worktree on `swarm/<task>`, and a guard of them."""
    repo = make_repo(tmp_path / "repo")
    paths = {task_id: tmp_path / "wt" / task_id for task_id in task_ids}
    for task_id, path in paths.items():
        git(repo, "worktree", "add", "-q", "-b", f"swarm/{task_id}", str(path))
    return repo, paths, Guard(open_repo(repo), work_dir=tmp_path / "g", restore=True)


def _task_a(tmp_path: Path) -> tuple[Path, Path, Guard]:
    """A repository, task a's worktree on `swarm/a`, and a guard of it."""
    repo, paths, guard = _task_worktrees(tmp_path, "a")
    return repo, paths["a"], guard


def _handed_over(tmp_path: Path, *task_ids: str) -> tuple[Path, dict[str, Path], Guard]:
    """Task worktrees whose agents have run and ended, under a started guard past its first scan."""
    repo, paths, guard = _task_worktrees(tmp_path, *task_ids)
    guard.start()
    for task_id, path in paths.items():
        with guard.busy(task_id, path):
            pass
    assert guard.scan() == []
    return repo, paths, guard


def test_a_task_worktree_deleted_by_an_agent_that_ended_before_the_scan_is_blamed_on_it(
    tmp_path: Path,
) -> None:
    # Looked at once more on the next scan, it is judged from where the first look's window
    # began: the agent that deleted it is a suspect though it ended before either look.
    _, paths, guard = _handed_over(tmp_path, "a")
    path = paths["a"]
    guard.agent_started("y", identity_of(os.getpid()))
    shutil.rmtree(path)  # git's registration of it stays
    guard.agent_ended("y")
    assert guard.scan() == []  # looked at again
    [found] = guard.scan()
    assert (found.where, found.worktree, found.suspects, found.restored) == (
        "a", "was removed", ("y",), True,
    )  # fmt: skip
    assert (path / ".git").is_file()


def test_a_task_worktree_you_deleted_and_pruned_leaves_no_doubt_on_your_later_removals(
    tmp_path: Path,
) -> None:
    # Deleted (`rm -rf`), a worktree is looked at once more on the next scan; pruned by then,
    # it is judged yours. Its doubt stayed, and kept every later removal judged from before
    # it: an agent that had run and ended long before was blamed for your own `git worktree
    # remove` of another, and that worktree made again.
    repo, paths, guard = _handed_over(tmp_path, "a", "b")
    shutil.rmtree(paths["a"])
    assert guard.scan() == []  # git's registration still names it: looked at again
    git(repo, "worktree", "prune")
    assert guard.scan() == []  # nobody of ours ran: yours
    guard.agent_started("y", identity_of(os.getpid()))
    guard.agent_ended("y")
    assert guard.scan() == []
    git(repo, "worktree", "remove", "--force", str(paths["b"]))
    assert guard.scan() + guard.scan() == []
    assert not paths["b"].exists()
    assert "swarm/b" not in git(repo, "worktree", "list")


def test_a_tasks_branch_move_is_its_own_only_when_its_worktree_head_reflog_tells_it(
    tmp_path: Path,
) -> None:
    # A move of a running task's branch is its agent's when its worktree's HEAD reflog holds
    # the chain of moves to it; a move made from another worktree is not in that reflog. A
    # detached HEAD (its own `git branch -f`) tells nothing: taken as its own.
    repo, path, guard = _task_a(tmp_path)
    with guard.busy("a", path):
        start = git(path, "rev-parse", "HEAD")
        (path / "own.txt").write_text("own\n")
        git(path, "add", "own.txt")
        git(path, "commit", "-qm", "its own")
        own = git(path, "rev-parse", "HEAD")
        assert guard._moved_by_itself("a", start, own)
        tree = git(repo, "rev-parse", "HEAD^{tree}")
        other = git(repo, "commit-tree", tree, "-p", own, "-m", "a sibling's")
        git(repo, "update-ref", "refs/heads/swarm/a", other)  # from another worktree
        assert not guard._moved_by_itself("a", own, other)
        git(path, "checkout", "-q", "--detach")
        assert guard._moved_by_itself("a", own, other)  # no telling while detached


def test_a_tasks_own_move_stays_its_own_when_it_moved_again_before_the_reflog_was_read(
    tmp_path: Path,
) -> None:
    # The guard read the branch at B; before it read the reflog, the task moved on to C (its
    # next commit, or swarm's checkpoint commit after its agent ended). The chain ran past B,
    # and its own move was taken for an outside write: a task running beside it failed for
    # it (half the runs of eight tasks that each commit, under load).
    repo, path, guard = _task_a(tmp_path)
    with guard.busy("a", path):
        tips = [git(path, "rev-parse", "HEAD")]
        for n in range(2):
            (path / f"own-{n}.txt").write_text("own\n")
            git(path, "add", ".")
            git(path, "commit", "-qm", f"its own {n}")
            tips.append(git(path, "rev-parse", "HEAD"))
        start, read, later = tips
        assert guard._moved_by_itself("a", start, read)  # the tip read, then moved past it
        assert guard._moved_by_itself("a", start, later)
        tree = git(repo, "rev-parse", "HEAD^{tree}")
        other = git(repo, "commit-tree", tree, "-p", start, "-m", "a sibling's")
        assert not guard._moved_by_itself("a", start, other)  # never on its chain
        # A sibling setting it back to a commit of its chain, from its own worktree: that
        # move is in the branch's reflog, not in the task's HEAD reflog.
        git(repo, "update-ref", "refs/heads/swarm/a", read)
        assert not guard._moved_by_itself("a", start, read)


def test_a_run_whose_worktrees_go_in_another_checkout_says_so_unless_ignored_there(
    tmp_path: Path, write_agent: AgentFactory
) -> None:
    # A run there at the same time would take them for its agents' writes (guard.md, Limits).
    outer = make_repo(tmp_path / "outer")
    inner = make_repo(outer / "sub" / "inner")
    agent = " ".join(write_agent("import pathlib\npathlib.Path('a.txt').write_text('a')\n"))
    out = swarm(inner, "run", "--agent", agent, "-t", "a=p")
    assert out.returncode == 0, out.stdout + out.stderr
    assert (
        f"note: the worktrees go in {outer / 'sub' / 'inner.swarm'}, inside the checkout of"
        f" {outer}, which does not ignore it" in out.stderr
    )
    # A folder's pattern, the worktree root not made yet: no note either.
    assert swarm(inner, "clean", "--yes").returncode == 0
    assert not (outer / "sub" / "inner.swarm").exists()
    (outer / ".gitignore").write_text("/sub/inner.swarm/\n")
    out = swarm(inner, "run", "--agent", agent, "-t", "b=p")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "note: the worktrees go in" not in out.stderr


def test_a_task_worktree_caught_half_way_through_a_move_into_your_checkout_is_moved_back(
    tmp_path: Path,
) -> None:
    # git moves a worktree by renaming it, then noting its new place in its admin dir. Caught
    # in between, it is looked at once more on the next scan; moved into your checkout, the
    # comparison of your checkout (which looks for moved worktrees again) judged it at once,
    # in the same scan: taken for removed and made again, and the moved one deleted from your
    # checkout as new files (its uncommitted files with it).
    repo, path, guard = _task_a(tmp_path)
    guard.start()
    with guard.busy("a", path):
        (path / "work.txt").write_text("uncommitted\n")
    assert guard.scan() == []
    guard.agent_started("y", identity_of(os.getpid()))
    moved = repo / "moved"
    path.rename(moved)  # git's first step
    assert guard.scan() == []  # looked at again
    admin = Path(git(moved, "rev-parse", "--absolute-git-dir"))
    (admin / "gitdir").write_text(f"{moved / '.git'}\n")  # git's second step
    [found] = guard.scan()
    assert (found.where, found.worktree, found.suspects, found.restored) == (
        "a", f"was moved to {moved}", ("y",), True,
    )  # fmt: skip
    assert (path / "work.txt").read_text() == "uncommitted\n"
    assert not moved.exists()
    assert guard.scan() == []


@pytest.mark.parametrize("into", ["checkout", "root"])
def test_a_task_worktree_whose_move_stays_half_way_is_moved_back(tmp_path: Path, into: str) -> None:
    # git killed between its rename and its note of the new place in the admin dir: the
    # moved worktree's `.git` still names that admin dir. It was taken for removed and made
    # again, and, in your checkout, deleted as new files (its uncommitted files with it).
    repo, path, guard = _task_a(tmp_path)
    guard.start()
    with guard.busy("a", path):
        (path / "work.txt").write_text("uncommitted\n")
    assert guard.scan() == []
    guard.agent_started("y", identity_of(os.getpid()))
    moved = (repo if into == "checkout" else path.parent) / "moved"
    path.rename(moved)  # git's first step, and no second
    assert guard.scan() == []  # looked at again
    [found] = guard.scan()
    assert (found.where, found.worktree, found.suspects, found.restored) == (
        "a", f"was moved to {moved}", ("y",), True,
    )  # fmt: skip
    assert (path / "work.txt").read_text() == "uncommitted\n"
    assert not moved.exists()
    assert guard.scan() == []
    assert git(path, "status", "--porcelain") == "?? work.txt"


def test_untouched_task_worktrees_are_not_looked_at_again_and_a_removed_one_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each scan looked at every task worktree's `.git`: the scans of a run grew with the
    # square of its tasks. Only a watch's event (or a full look) has it looked at again.
    monkeypatch.setattr(file_stats, "FULL_EVERY", 3600.0)  # no full look within the test
    _, paths, guard = _handed_over(tmp_path, *(f"t{i}" for i in range(12)))
    looked = stats_of(monkeypatch)
    assert guard.scan() == []
    links = {f"{p}/.git" for p in paths.values()}
    assert not links & set(looked)
    guard.agent_started("y", identity_of(os.getpid()))
    (paths["t3"] / ".git").unlink()
    moved = tmp_path / "wt-moved"
    (tmp_path / "wt").rename(moved)  # every worktree gone from its path at once
    shutil.copytree(moved, tmp_path / "wt", symlinks=True)  # a copy there, but t3's .git
    guard.agent_ended("y")
    looked.clear()
    assert guard.scan() == []  # looked at again: once more on the next scan
    assert f"{paths['t3']}/.git" in looked
    assert len([p for p in looked if p in links]) >= len(links)  # each one looked at afresh
    [found] = guard.scan()
    assert (found.where, found.worktree, found.suspects) == ("t3", "was removed", ("y",))
