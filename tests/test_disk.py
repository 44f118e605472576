"""Disk: measuring worktrees, max_disk (wait, remove finished worktrees), copy_mode and link."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import GIT_SUBCOMMAND, as_owner_only, git, git_first_on_path, make_repo
from tests.test_run import (
    AgentFactory,
    argv_toml,
    manifest,
    state_db,
    status_json,
    swarm,
    swarm_bg,
    wait_for,
)
from tests.test_sandbox import needs_bwrap
from worktree_swarm.core.units import format_size
from worktree_swarm.git import local_files
from worktree_swarm.infra.disk import DiskUsage, combine, scan, usage

MIB = 2**20

# Records how many worktrees exist (directories under the worktree root) when it starts and
# when it ends, appending under a lock to a shared log; between the two it waits for the test
# to create the go file, so the test decides when the first agents may finish.
COUNTING_AGENT = """
import fcntl, os, pathlib, sys, time
log, go = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
root = pathlib.Path(os.environ['SWARM_WORKTREE']).parent
tid = os.environ['SWARM_TASK_ID']
def record(what):
    count = sum(1 for p in root.iterdir() if p.is_dir())
    with log.open('a') as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(f'{tid} {what} {count}\\n')
record('start')
while not go.exists():
    time.sleep(0.02)
pathlib.Path(tid + '.txt').write_text(tid + '\\n')
record('end')
"""


def _big_repo(tmp_path: Path) -> Path:
    """A repository whose checkout is dominated by one tracked 1 MiB file."""
    repo = make_repo(tmp_path / "repo", {"README.md": "big\n"})
    (repo / "blob.bin").write_bytes(os.urandom(MIB))
    git(repo, "add", "blob.bin")
    git(repo, "commit", "-q", "-m", "a 1 MiB file")
    return repo


def _records(log: Path) -> list[tuple[str, str, int]]:
    if not log.exists():
        return []
    rows = [line.split() for line in log.read_text().splitlines()]
    return [(tid, what, int(count)) for tid, what, count in rows]


def _events(repo: Path, kind: str) -> list[tuple[str, dict[str, object]]]:
    with state_db(repo) as db:
        rows = db.execute(
            "SELECT task_id, data FROM events WHERE kind = ? ORDER BY id", (kind,)
        ).fetchall()
    return [(task_id, json.loads(data)) for task_id, data in rows]


# -- measuring ----------------------------------------------------------------------------


def test_usage_counts_hard_links_once_never_follows_symlinks_and_sees_holes(
    tmp_path: Path,
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "huge.bin").write_bytes(b"x" * 4 * MIB)
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "data.bin").write_bytes(os.urandom(MIB))
    os.link(tree / "data.bin", tree / "same.bin")
    (tree / "shared").symlink_to(outside, target_is_directory=True)
    with (tree / "sparse.bin").open("wb") as fh:
        fh.truncate(64 * MIB)
        fh.write(b"x")

    used = usage(tree)

    # The sparse file's size counts, its holes do not; the hard link and the symlink's
    # 4 MiB target count zero times.
    assert 65 * MIB <= used.apparent < 66 * MIB
    assert MIB <= used.actual < 2 * MIB
    assert usage(tmp_path / "missing") == DiskUsage(0, 0)


def test_scans_combined_count_a_file_linked_into_both_once(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    (one / "data.bin").write_bytes(os.urandom(MIB))
    os.link(one / "data.bin", two / "data.bin")
    a, b = scan(one), scan(two)
    assert a.usage.actual >= MIB
    assert b.usage.actual >= MIB
    assert combine([a, b]).actual < a.usage.actual + b.usage.actual - MIB // 2


def test_format_size() -> None:
    assert format_size(None) == "-"
    assert format_size(512) == "512B"
    assert format_size(1536) == "1.5K"
    assert format_size(int(3.5 * MIB)) == "3.5M"
    assert format_size(20 * 2**30) == "20G"


# -- max_disk -----------------------------------------------------------------------------


def test_max_disk_of_three_worktrees_runs_six_tasks_three_at_a_time(
    tmp_path: Path, write_agent: AgentFactory
) -> None:
    repo = _big_repo(tmp_path)
    log, go = tmp_path / "counts.log", tmp_path / "go"
    agent = argv_toml([*write_agent(COUNTING_AGENT), str(log), str(go)])
    tasks = "".join(f'[[task]]\nid = "t{i}"\nprompt = "task {i}"\n' for i in range(1, 7))
    # Each worktree takes a little over 1 MiB: three fit under 3.5 MiB, four do not.
    path = manifest(repo, f'[defaults]\nagent = {agent}\njobs = 6\nmax_disk = "3.5M"\n{tasks}')
    proc = swarm_bg(repo, "run", path)
    try:
        wait_for(
            lambda: len(_records(log)) == 3, timeout=120, what="the first three agents to start"
        )

        def three_waiting() -> bool:
            rows = status_json(repo).values()
            return sum(str(r["reason"]).startswith("waiting for disk") for r in rows) == 3

        wait_for(three_waiting, what="three tasks waiting for disk")
        rows = status_json(repo)
        waiting = [r for r in rows.values() if r["reason"]]
        assert all(r["state"] == "pending" for r in waiting)
        assert "of 3.5M used" in str(waiting[0]["reason"])
        table = swarm(repo, "status").stdout
        assert "waiting for disk" in table
    finally:
        go.touch()
        code = proc.wait(timeout=120)
    assert code == 0, (repo.parent / "bg.log").read_text()

    records = _records(log)
    assert len(records) == 12
    assert max(count for _, _, count in records) == 3
    rows = status_json(repo)
    assert {r["state"] for r in rows.values()} == {"done"}
    for tid in rows:
        assert git(repo, "show", f"swarm/{tid}:{tid}.txt") == tid
    # Three finished worktrees made room for the last three; their branches keep the work.
    removed = _events(repo, "worktree_removed")
    assert len(removed) == 3
    assert all("max_disk 3.5M" in str(data["reason"]) for _, data in removed)
    gone = {tid for tid, row in rows.items() if not row["worktree_present"]}
    assert gone == {tid for tid, _ in removed}
    assert not any(Path(str(rows[tid]["worktree"])).exists() for tid in gone)
    assert all(git(repo, "rev-parse", "--verify", f"swarm/{tid}") for tid in gone)


# Waits for its own go file, so the test releases the agents one by one.
ONE_BY_ONE_AGENT = """
import os, pathlib, sys, time
gate = pathlib.Path(sys.argv[1])
tid = os.environ['SWARM_TASK_ID']
(gate / ('started-' + tid)).touch()
while not (gate / ('go-' + tid)).exists():
    time.sleep(0.02)
pathlib.Path(tid + '.txt').write_text(tid + '\\n')
"""


def test_room_is_never_made_by_removing_a_worktree_of_an_earlier_run(
    tmp_path: Path, write_agent: AgentFactory
) -> None:
    repo = _big_repo(tmp_path)
    agent = argv_toml(
        write_agent("import os\nopen(os.environ['SWARM_TASK_ID'] + '.txt', 'w').write('x')\n")
    )
    first = manifest(repo, f'[defaults]\nagent = {agent}\n[[task]]\nid = "old"\nprompt = "o"\n')
    assert swarm(repo, "run", first).returncode == 0
    old = repo.parent / "repo.swarm" / "old"
    assert old.is_dir()
    # Beside the earlier run's worktree there is room for one more, not two: b waits for a.
    tasks = '[[task]]\nid = "a"\nprompt = "a"\n[[task]]\nid = "b"\nprompt = "b"\n'
    second = manifest(repo, f'[defaults]\nagent = {agent}\njobs = 2\nmax_disk = "2.5M"\n{tasks}')

    out = swarm(repo, "run", second)

    assert out.returncode == 0, out.stdout + out.stderr
    assert "waiting for disk" in out.stdout
    assert old.is_dir()  # `swarm clean --all` is for that
    assert git(old, "status", "--porcelain") == ""
    removed = [tid for tid, _ in _events(repo, "worktree_removed")]
    assert len(removed) == 1
    assert removed[0] in {"a", "b"}
    assert {r["state"] for r in status_json(repo).values()} == {"done"}


def test_removing_a_worktree_for_room_keeps_leftovers_and_blames_no_agent(
    tmp_path: Path, write_agent: AgentFactory
) -> None:
    repo = _big_repo(tmp_path)
    gate = tmp_path / "gate"
    gate.mkdir()
    agent = argv_toml([*write_agent(ONE_BY_ONE_AGENT), str(gate)])
    # The check leaves an ignored file behind, after the task's last checkpoint (what else
    # checks write there is undone once they end).
    (repo / ".gitignore").write_text("check.txt\n")
    git(repo, "add", ".gitignore")
    git(repo, "commit", "-qm", "ignore")
    check = argv_toml(["python3", "-c", "open('check.txt', 'w').write('left by the check')"])
    tasks = "".join(f'[[task]]\nid = "{t}"\nprompt = "{t}"\n' for t in ("a", "b", "c"))
    path = manifest(
        repo,
        f'[defaults]\nagent = {agent}\njobs = 3\nmax_disk = "2.5M"\nchecks = [{check}]\n' + tasks,
    )
    proc = swarm_bg(repo, "run", path)

    def started() -> list[str]:
        return sorted(p.name.removeprefix("started-") for p in gate.glob("started-*"))

    try:
        wait_for(lambda: len(started()) == 2, timeout=120, what="two agents")
        first = started()[0]
        (gate / f"go-{first}").touch()
        # The third task gets the first one's room while the second task's agent still runs.
        wait_for(lambda: len(started()) == 3, timeout=120, what="the third agent")
    finally:
        for tid in ("a", "b", "c"):
            (gate / f"go-{tid}").touch()
        code = proc.wait(timeout=120)
    assert code == 0, (repo.parent / "bg.log").read_text()
    assert {r["state"] for r in status_json(repo).values()} == {"done"}
    assert _events(repo, "outside_write") == []
    assert [tid for tid, _ in _events(repo, "worktree_removed")] == [first]
    assert not (repo.parent / "repo.swarm" / first).exists()


def test_status_reports_disk_use_per_worktree_and_in_total(
    tmp_path: Path, write_agent: AgentFactory
) -> None:
    repo = _big_repo(tmp_path)
    agent = " ".join(write_agent("open('out.txt', 'w').write('x')\n"))
    out = swarm(repo, "run", "--agent", agent, "-t", "a=one", "-t", "b=two")
    assert out.returncode == 0, out.stderr
    payload = json.loads(swarm(repo, "status", "--json").stdout)
    tasks = {t["task_id"]: t for t in payload["tasks"]}
    for row in tasks.values():
        assert row["worktree_present"] is True
        assert MIB <= row["disk_apparent"] < 2 * MIB
        assert MIB <= row["disk_actual"] < 2 * MIB
    totals = payload["totals"]
    assert totals["disk_actual"] == sum(t["disk_actual"] for t in tasks.values())
    assert totals["disk_apparent"] == sum(t["disk_apparent"] for t in tasks.values())

    git(repo, "worktree", "remove", "--force", str(tasks["a"]["worktree"]))
    payload = json.loads(swarm(repo, "status", "--json").stdout)
    after = {t["task_id"]: t for t in payload["tasks"]}
    assert after["a"]["worktree_present"] is False
    assert after["a"]["disk_actual"] == tasks["a"]["disk_actual"]  # as recorded at its end
    assert payload["totals"]["disk_actual"] == tasks["b"]["disk_actual"]
    table = swarm(repo, "status").stdout
    a_line = next(line for line in table.splitlines() if line.startswith("a "))
    assert "removed" in a_line
    assert "disk: " in table
    assert "1 removed" in table

    report = json.loads(swarm(repo, "report", "--json").stdout)
    by_id = {t["task_id"]: t for t in report["tasks"]}
    assert by_id["a"]["disk_actual"] == tasks["a"]["disk_actual"]
    assert by_id["a"]["worktree_present"] is False
    assert report["totals"]["disk_actual"] == sum(t["disk_actual"] for t in tasks.values())
    assert report["totals"]["worktrees_removed"] == 1
    text = swarm(repo, "report").stdout
    assert "disk " in text
    assert "1 removed since" in text


def test_max_disk_below_one_worktree_is_bad_input_and_creates_nothing(
    tmp_path: Path, write_agent: AgentFactory
) -> None:
    repo = _big_repo(tmp_path)
    agent = " ".join(write_agent("pass\n"))
    out = swarm(repo, "run", "--agent", agent, "--max-disk", "512K", "-t", "a=one")
    assert out.returncode == 2
    assert "max_disk 512K (524,288 bytes) is smaller than one worktree of task a" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert git(repo, "branch", "--list", "swarm/*") == ""
    assert not (repo.parent / "repo.swarm").exists()
    assert not (repo / ".git" / "swarm" / "state.db").exists()


def test_max_disk_taken_by_earlier_worktrees_is_bad_input(
    tmp_path: Path, write_agent: AgentFactory
) -> None:
    repo = _big_repo(tmp_path)
    stale = repo.parent / "repo.swarm" / "old-task"
    stale.mkdir(parents=True)
    (stale / "junk.bin").write_bytes(os.urandom(2 * MIB))
    agent = " ".join(write_agent("pass\n"))
    out = swarm(repo, "run", "--agent", agent, "--max-disk", "2.5M", "-t", "a=one")
    assert out.returncode == 2
    assert "already holds" in out.stderr
    assert "swarm clean --all" in out.stderr


def test_a_task_waiting_for_disk_can_be_stopped(tmp_path: Path, write_agent: AgentFactory) -> None:
    repo = _big_repo(tmp_path)
    log, go = tmp_path / "counts.log", tmp_path / "go"
    agent = argv_toml([*write_agent(COUNTING_AGENT), str(log), str(go)])
    path = manifest(
        repo,
        f'[defaults]\nagent = {agent}\njobs = 2\nmax_disk = "1.5M"\n'
        '[[task]]\nid = "first"\nprompt = "1"\n[[task]]\nid = "second"\nprompt = "2"\n',
    )
    proc = swarm_bg(repo, "run", path)
    try:
        wait_for(lambda: len(_records(log)) == 1, timeout=120, what="the first agent")
        waiting = next(tid for tid in ("first", "second") if tid != _records(log)[0][0])
        wait_for(
            lambda: str(status_json(repo)[waiting]["reason"]).startswith("waiting for disk"),
            what="the other task to wait for disk",
        )
        assert swarm(repo, "stop", waiting).returncode == 0
        row = status_json(repo)[waiting]
        assert row["state"] == "stopped"
        assert row["reason"] == "stopped while waiting for disk"
    finally:
        go.touch()
        code = proc.wait(timeout=120)
    assert code == 1  # one task stopped
    assert not (repo.parent / "repo.swarm" / waiting).exists()


def test_no_room_left_by_others_fails_the_task_with_next_steps(
    tmp_path: Path, write_agent: AgentFactory
) -> None:
    repo = _big_repo(tmp_path)
    log, go = tmp_path / "counts.log", tmp_path / "go"
    agent = argv_toml([*write_agent(COUNTING_AGENT), str(log), str(go)])
    path = manifest(
        repo,
        f'[defaults]\nagent = {agent}\njobs = 1\nmax_disk = "3M"\n'
        '[[task]]\nid = "first"\nprompt = "1"\n'
        '[[task]]\nid = "second"\nprompt = "2"\ndepends_on = ["first"]\n',
    )
    proc = swarm_bg(repo, "run", path)
    try:
        wait_for(lambda: len(_records(log)) == 1, timeout=120, what="the first agent")
        # Something other than this run fills the worktree root while the first task runs.
        junk = repo.parent / "repo.swarm" / "junk"
        junk.mkdir()
        (junk / "junk.bin").write_bytes(os.urandom(2 * MIB + MIB // 2))
    finally:
        go.touch()
        code = proc.wait(timeout=120)
    assert code == 1
    rows = status_json(repo)
    assert rows["first"]["state"] == "done"
    assert rows["second"]["state"] == "failed"
    reason = str(rows["second"]["reason"])
    assert reason.startswith("max_disk 3.0M: a new worktree needs")
    assert "swarm clean --all" in reason
    # The finished worktree was removed first to make room (its branch keeps the work).
    assert [tid for tid, _ in _events(repo, "worktree_removed")] == ["first"]
    assert git(repo, "show", "swarm/first:first.txt") == "first"


# -- copy_mode and link -------------------------------------------------------------------


def test_copy_mode_hardlink_shares_the_inode_and_copy_does_not(
    tmp_path: Path, write_agent: AgentFactory
) -> None:
    repo = make_repo(tmp_path / "repo", {".gitignore": ".env\n"})
    (repo / ".env").write_text("SECRET_PLACE=1\n")
    agent = argv_toml(write_agent("open('out.txt', 'w').write('x')\n"))
    path = manifest(
        repo,
        f'[defaults]\nagent = {agent}\ncopy = [".env"]\ncopy_mode = "hardlink"\n'
        '[[task]]\nid = "a"\nprompt = "one"\n',
    )
    out = swarm(repo, "run", path)
    assert out.returncode == 0, out.stderr
    copied = repo.parent / "repo.swarm" / "a" / ".env"
    assert copied.stat().st_ino == (repo / ".env").stat().st_ino

    for mode in ("copy", "auto"):  # auto: a clone where the file system can, else a copy
        plain = tmp_path / mode
        plain.mkdir()
        assert local_files.copy_into(repo, plain, [".env"], mode=mode) == [".env"]
        assert (plain / ".env").stat().st_ino != (repo / ".env").stat().st_ino
        assert (plain / ".env").read_text() == "SECRET_PLACE=1\n"


# Uses the linked directory, then commits everything itself, the symlink included.
LINK_AGENT = """
import pathlib, subprocess
link = pathlib.Path('node_modules')
assert link.is_symlink(), 'node_modules is not a symlink'
pathlib.Path('out.txt').write_text('used ' + (link / 'pkg' / 'index.js').read_text())
subprocess.run(['git', 'add', '-A'], check=True)
identity = ['-c', 'user.name=Agent', '-c', 'user.email=agent@example.com']
subprocess.run(['git', *identity, 'commit', '-q', '-m', 'agent commit'], check=True)
"""


def test_link_shares_the_main_checkouts_directory_and_never_commits_it(
    tmp_path: Path, write_agent: AgentFactory
) -> None:
    # `node_modules/` (with the slash) does not match a symlink: only the checkpoint's
    # exclusion keeps the link out of the branch.
    repo = make_repo(tmp_path / "repo", {".gitignore": "node_modules/\n"})
    (repo / "node_modules" / "pkg").mkdir(parents=True)
    (repo / "node_modules" / "pkg" / "index.js").write_text("module.exports = 1\n")
    agent = argv_toml(write_agent(LINK_AGENT))
    path = manifest(
        repo,
        f'[defaults]\nagent = {agent}\nlink = ["node_modules"]\n'
        '[[task]]\nid = "a"\nprompt = "one"\n',
    )
    out = swarm(repo, "run", path)
    assert out.returncode == 0, out.stderr
    assert git(repo, "show", "swarm/a:out.txt") == "used module.exports = 1"
    # The agent's own commit took the symlink; the checkpoint took it out of the branch again.
    assert "node_modules" in git(repo, "show", "--name-only", "--format=", "swarm/a~1")
    assert "node_modules" not in git(repo, "ls-tree", "-r", "--name-only", "swarm/a")
    worktree = repo.parent / "repo.swarm" / "a"
    # Unshared when the task ended, so `swarm clean` and git see a clean worktree.
    assert not os.path.lexists(worktree / "node_modules")
    assert git(worktree, "status", "--porcelain") == ""
    assert (repo / "node_modules" / "pkg" / "index.js").read_text() == "module.exports = 1\n"


# A setup step that builds something, says so, then waits for the test's go file.
SLOW_SETUP = """
import pathlib, sys, time
pathlib.Path('built.txt').write_text('built')
pathlib.Path(sys.argv[1]).write_text('ready')
while not pathlib.Path(sys.argv[2]).exists():
    time.sleep(0.05)
"""


def test_stop_after_manager_died_in_setup_unshares_links_and_keeps_the_work(
    tmp_path: Path, write_agent: AgentFactory
) -> None:
    # Until its agent starts a task is `pending` in the store, worktree and links already there.
    repo = make_repo(tmp_path / "repo", {".gitignore": "node_modules/\n"})
    (repo / "node_modules").mkdir()
    ready, go = tmp_path / "ready", tmp_path / "go"
    setup = tmp_path / "setup.py"
    setup.write_text(SLOW_SETUP)
    step = argv_toml([sys.executable, str(setup), str(ready), str(go)])
    path = manifest(
        repo,
        f'[defaults]\nagent = {argv_toml(write_agent("pass"))}\nlink = ["node_modules"]\n'
        f'setup = [{step}]\n[[task]]\nid = "a"\nprompt = "one"\n',
    )
    manager = swarm_bg(repo, "run", path)
    try:
        wait_for(ready.exists, what="the setup step")
        assert status_json(repo)["a"]["state"] == "pending"
        manager.send_signal(signal.SIGKILL)
        manager.wait(timeout=30)

        out = swarm(repo, "stop")

        assert out.returncode == 0, out.stderr
        assert status_json(repo)["a"]["state"] == "stopped"
        worktree = repo.parent / "repo.swarm" / "a"
        assert not os.path.lexists(worktree / "node_modules")
        assert git(repo, "show", "swarm/a:built.txt") == "built"
        assert "node_modules" not in git(repo, "ls-tree", "-r", "--name-only", "swarm/a")
    finally:
        go.write_text("go")  # lets the orphaned setup step end


# Reads the linked directory and tries to write into it.
LINK_WRITER_AGENT = """
import pathlib
link = pathlib.Path('node_modules')
seen = (link / 'pkg' / 'index.js').read_text()
try:
    (link / 'pkg' / 'added.js').write_text('written through the link')
    outcome = 'written'
except OSError as exc:
    outcome = 'refused ' + type(exc).__name__
pathlib.Path('out.txt').write_text(outcome + ' after reading ' + seen)
"""


@needs_bwrap
def test_with_sandbox_a_linked_directory_is_read_only(
    tmp_path: Path, write_agent: AgentFactory
) -> None:
    repo = make_repo(tmp_path / "repo", {".gitignore": "node_modules/\n"})
    (repo / "node_modules" / "pkg").mkdir(parents=True)
    (repo / "node_modules" / "pkg" / "index.js").write_text("module.exports = 1\n")
    agent = argv_toml(write_agent(LINK_WRITER_AGENT))
    path = manifest(
        repo,
        f'[defaults]\nagent = {agent}\nlink = ["node_modules"]\n'
        '[[task]]\nid = "a"\nprompt = "one"\n',
    )
    out = swarm(repo, "run", path, "--sandbox")
    assert out.returncode == 0, out.stderr
    assert git(repo, "show", "swarm/a:out.txt").startswith("refused ")
    assert git(repo, "show", "swarm/a:out.txt").endswith("after reading module.exports = 1")
    assert sorted(p.name for p in (repo / "node_modules" / "pkg").iterdir()) == ["index.js"]


def _linking_run(tmp_path: Path, write_agent: AgentFactory, files: dict[str, str]) -> Path:
    repo = make_repo(tmp_path / "repo", files)
    agent = argv_toml(write_agent("open('out.txt', 'w').write('x')\n"))
    return manifest(
        repo,
        f'[defaults]\nagent = {agent}\nlink = ["node_modules"]\n'
        '[[task]]\nid = "a"\nprompt = "one"\n',
    )


def test_link_to_a_missing_directory_is_refused_before_the_run(
    tmp_path: Path, write_agent: AgentFactory
) -> None:
    path = _linking_run(tmp_path, write_agent, {"README.md": "x\n"})
    repo = tmp_path / "repo"
    out = swarm(repo, "run", path)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1
    assert "link 'node_modules'" in out.stderr
    assert "is missing or not a directory" in out.stderr
    assert not (repo / ".git" / "swarm").exists()  # nothing created
    assert git(repo, "branch", "--list", "swarm/*") == ""


def test_link_over_a_tracked_path_fails_the_task(tmp_path: Path, write_agent: AgentFactory) -> None:
    files = {"README.md": "x\n", "node_modules/kept.js": "tracked\n"}
    path = _linking_run(tmp_path, write_agent, files)
    repo = tmp_path / "repo"
    out = swarm(repo, "run", path)
    assert out.returncode == 1
    row = status_json(repo)["a"]
    assert row["state"] == "failed"
    assert "the worktree already has node_modules" in str(row["reason"])


def test_store_migrates_to_disk_columns(tmp_path: Path) -> None:
    from worktree_swarm.infra.store import Store  # noqa: PLC0415

    with Store(tmp_path / "state.db"):
        pass
    with sqlite3.connect(tmp_path / "state.db") as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(tasks)")}
    assert {"disk_apparent", "disk_actual", "worktree_removed_at"} <= columns


def test_a_linked_directory_gone_when_a_task_starts_fails_it_before_its_agent(
    tmp_path: Path, write_agent: AgentFactory
) -> None:
    repo = make_repo(tmp_path / "repo", {".gitignore": "node_modules/\n"})
    (repo / "node_modules" / "pkg").mkdir(parents=True)
    started, gate, ran = tmp_path / "started", tmp_path / "gate", tmp_path / "b-ran"
    first = argv_toml(
        write_agent(
            "import pathlib, time\n"
            f"pathlib.Path({str(started)!r}).touch()\n"
            f"while not pathlib.Path({str(gate)!r}).exists():\n    time.sleep(0.02)\n"
            "pathlib.Path('a.txt').write_text('a')\n"
        )
    )
    second = argv_toml(write_agent(f"import pathlib\npathlib.Path({str(ran)!r}).touch()\n"))
    path = manifest(
        repo,
        f'[[task]]\nid = "a"\nprompt = "a"\nagent = {first}\nlink = ["node_modules"]\n'
        f'[[task]]\nid = "b"\nprompt = "b"\nagent = {second}\nlink = ["node_modules"]\n'
        'depends_on = ["a"]\n',
    )
    proc = swarm_bg(repo, "run", path)
    try:
        wait_for(started.exists, what="task a's agent")
        shutil.rmtree(repo / "node_modules")  # you cleaned up meanwhile
    finally:
        gate.touch()
        code = proc.wait(timeout=120)

    assert code == 1, (repo.parent / "bg.log").read_text()
    rows = status_json(repo)
    assert rows["a"]["state"] == "done"
    assert rows["b"]["state"] == "failed"
    assert "link 'node_modules'" in str(rows["b"]["reason"])
    assert "is missing or not a directory" in str(rows["b"]["reason"])
    assert not ran.exists()  # its agent never started


def test_a_worktree_that_grew_past_the_cap_does_not_stop_the_tasks_after_it(
    tmp_path: Path, write_agent: AgentFactory
) -> None:
    repo = _big_repo(tmp_path)
    (repo / ".gitignore").write_text("build.bin\n")  # build output: never on a branch
    git(repo, "add", ".gitignore")
    git(repo, "commit", "-q", "-m", "ignore the build")
    # a's build grows its worktree to ~4 MiB: every later worktree is expected to grow as much,
    # which never fits under 3M; alone, each one's checkout still does.
    grows = argv_toml(
        write_agent(
            "import os\nopen('build.bin', 'wb').write(os.urandom(3 * 2**20))\n"
            "open('a.txt', 'w').write('a')\n"
        )
    )
    small = argv_toml(write_agent("open('b.txt', 'w').write('b')\n"))
    path = manifest(
        repo,
        f'[defaults]\nmax_disk = "3M"\n[[task]]\nid = "a"\nprompt = "a"\nagent = {grows}\n'
        f'[[task]]\nid = "b"\nprompt = "b"\nagent = {small}\ndepends_on = ["a"]\n',
    )

    out = swarm(repo, "run", path)

    assert out.returncode == 0, out.stdout + out.stderr
    rows = status_json(repo)
    assert {t: r["state"] for t, r in rows.items()} == {"a": "done", "b": "done"}
    assert [tid for tid, _ in _events(repo, "worktree_removed")] == ["a"]  # room first
    assert git(repo, "show", "swarm/b:b.txt") == "b"


# Points its worktree's `.git` at your git dir (argv[1]) and writes its work.
REPOINTS = """
import pathlib, sys
pathlib.Path('.git').write_text('gitdir: ' + sys.argv[1] + '\\n')
pathlib.Path('work.txt').write_text('work\\n')
"""


def test_a_worktree_whose_git_file_points_elsewhere_is_never_checkpointed_for_room(
    tmp_path: Path, write_agent: AgentFactory
) -> None:
    # The commit before the removal ran git in a's worktree whatever its `.git` named: a's
    # work landed on your checked-out branch, in your git dir and index.
    repo = _big_repo(tmp_path)
    base = git(repo, "rev-parse", "HEAD")
    repoints = argv_toml([*write_agent(REPOINTS), str(repo / ".git")])
    writes = argv_toml(write_agent("open('b.txt', 'w').write('b')\n"))
    path = manifest(
        repo,
        # `files` overlapping: b is not started before a has ended.
        f'[defaults]\nmax_disk = "1.5M"\n'
        f'[[task]]\nid = "a"\nprompt = "a"\nagent = {repoints}\nfiles = ["*.txt"]\n'
        f'[[task]]\nid = "b"\nprompt = "b"\nagent = {writes}\nfiles = ["*.txt"]\n',
    )

    out = swarm(repo, "run", path)

    assert out.returncode == 1, out.stdout + out.stderr
    assert git(repo, "rev-parse", "HEAD") == base  # nothing committed in your checkout
    assert git(repo, "status", "--porcelain") == ""
    worktree = repo.parent / "repo.swarm" / "a"
    assert (worktree / "work.txt").read_text() == "work\n"  # kept, with its work
    rows = status_json(repo)
    assert _events(repo, "worktree_removed") == []
    assert rows["a"]["state"] == "failed"
    assert str(rows["a"]["reason"]).endswith(
        "its work since the last checkpoint is left there, uncommitted"
    )
    assert rows["b"]["state"] == "failed"  # no room: a's worktree stays
    assert "; task a's is kept, holding work no commit has)" in str(rows["b"]["reason"])


# a: switches its worktree to `main`, writes its work and makes the worktree unreadable (the
# task fails before the guard would put its HEAD back). b: fails until argv[1] exists.
SWITCHES_OR_FAILS = """
import os, pathlib, subprocess, sys
tid = os.environ['SWARM_TASK_ID']
if tid == 'a':
    subprocess.run(['git', 'checkout', '-q', 'main'], check=True)
    pathlib.Path('work.txt').write_text('work\\n')
    os.chmod('.', 0)
    sys.exit(0)
pathlib.Path(tid + '.txt').write_text(tid + '\\n')
sys.exit(3 if tid == 'b' and not pathlib.Path(sys.argv[1]).exists() else 0)
"""


def test_a_worktree_left_switched_is_put_back_on_its_branch_before_its_commit_for_room(
    tmp_path: Path, write_agent: AgentFactory
) -> None:
    # The commit before removing a's worktree for room landed on the branch it was left on:
    # your `main` moved, with a's work on it, and swarm/a went without it.
    repo = _big_repo(tmp_path)
    git(repo, "checkout", "-q", "-b", "feature")  # `main` free to be checked out elsewhere
    tips = {b: git(repo, "rev-parse", b) for b in ("main", "feature")}
    again = tmp_path / "again"
    agent = argv_toml([*write_agent(SWITCHES_OR_FAILS), str(again)])
    path = manifest(
        repo,
        f'[defaults]\nagent = {agent}\njobs = 2\nmax_disk = "2.5M"\n'  # two worktrees, not three
        '[[task]]\nid = "a"\nprompt = "a"\n[[task]]\nid = "b"\nprompt = "b"\n'
        '[[task]]\nid = "c"\nprompt = "c"\ndepends_on = ["b"]\n',
    )
    worktree = repo.parent / "repo.swarm" / "a"
    try:
        first = subprocess.run(
            [*as_owner_only(), sys.executable, "-m", "worktree_swarm.cli", "run", path],
            cwd=repo, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
            timeout=120,
        )  # fmt: skip
        assert first.returncode == 1, first.stdout + first.stderr
        assert "cannot be read" in str(status_json(repo)["a"]["reason"])
    finally:
        worktree.chmod(0o755)  # as its reason says: `chmod u+rwx` gives it back
    assert git(worktree, "symbolic-ref", "--short", "HEAD") == "main"
    again.touch()

    # b done, c needs the room of a's worktree, the oldest finished one.
    out = swarm(repo, "retry", "b")

    assert out.returncode == 1, out.stdout + out.stderr  # a failed, b and c done
    assert {t: r["state"] for t, r in status_json(repo).items()} == {
        "a": "failed", "b": "done", "c": "done"
    }  # fmt: skip
    assert not worktree.exists()
    assert {b: git(repo, "rev-parse", b) for b in tips} == tips
    assert git(repo, "show", "swarm/a:work.txt") == "work"
    [(task_id, removed)] = _events(repo, "worktree_removed")
    assert task_id == "a"
    assert removed["put_back_from"] == "main"
    assert "its worktree was on main: put back on swarm/a first" in str(removed["reason"])


def test_a_worktree_git_cannot_put_back_is_kept_and_told_once_and_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_agent: AgentFactory
) -> None:
    # a's worktree could not be put back on its branch (another git held its HEAD): that git
    # error failed c, the task waiting for the room, with a's error.
    repo = _big_repo(tmp_path)
    git(repo, "checkout", "-q", "-b", "feature")  # `main` free to be checked out elsewhere
    tips = {b: git(repo, "rev-parse", b) for b in ("main", "feature")}
    again = tmp_path / "again"
    agent = argv_toml([*write_agent(SWITCHES_OR_FAILS), str(again)])
    path = manifest(
        repo,
        f'[defaults]\nagent = {agent}\njobs = 2\nmax_disk = "2.5M"\n'  # two worktrees, not three
        '[[task]]\nid = "a"\nprompt = "a"\n[[task]]\nid = "b"\nprompt = "b"\n'
        '[[task]]\nid = "c"\nprompt = "c"\ndepends_on = ["b"]\n',
    )
    worktree = repo.parent / "repo.swarm" / "a"
    try:
        first = subprocess.run(
            [*as_owner_only(), sys.executable, "-m", "worktree_swarm.cli", "run", path],
            cwd=repo, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
            timeout=120,
        )  # fmt: skip
        assert first.returncode == 1, first.stdout + first.stderr
    finally:
        worktree.chmod(0o755)
    assert git(worktree, "symbolic-ref", "--short", "HEAD") == "main"
    # Another git holds a's HEAD.lock while the put-back runs, and lets go of it after.
    lock = shlex.quote(str(repo / ".git" / "worktrees" / "a" / "HEAD.lock"))
    git_first_on_path(tmp_path, monkeypatch, lambda real: (
        GIT_SUBCOMMAND
        + 'if [ "$sub" = symbolic-ref ]; then case "$*" in *"swarm: put back"*)\n'
        f'  : > {lock}; {real} "$@"; rc=$?; rm -f {lock}; exit $rc;;\n'
        "esac; fi\n"
        f'exec {real} "$@"\n'
    ))  # fmt: skip
    again.touch()

    # b done, c needs room: a's worktree, the oldest finished one, cannot go; b's can.
    out = swarm(repo, "retry", "b")

    assert {t: r["state"] for t, r in status_json(repo).items()} == {
        "a": "failed", "b": "done", "c": "done"
    }, out.stdout + out.stderr  # fmt: skip
    assert out.returncode == 1, out.stdout + out.stderr  # a failed
    assert (worktree / "work.txt").read_text() == "work\n"
    assert git(worktree, "symbolic-ref", "--short", "HEAD") == "main"
    assert {b: git(repo, "rev-parse", b) for b in tips} == tips
    [(task_id, kept)] = _events(repo, "worktree_kept")
    assert task_id == "a"
    assert "HEAD.lock" in str(kept["reason"]), kept
    assert out.stdout.count("a: worktree kept, not removed for max_disk - ") == 1, out.stdout
    assert [t for t, _ in _events(repo, "worktree_removed")] == ["b"]
    assert not (repo.parent / "repo.swarm" / "b").exists()
