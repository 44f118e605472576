"""A task's ``config.worktree`` written behind the guard's back, attacked end to end.

Real runs of the real CLI on a repository with a sparse checkout (git keeps its settings in
``config.worktree`` and copies it into each task's admin dir). The writes raise nothing the
guard's watches or stats can see: through a shared memory map into a page already written (no
inotify event, no new mtime), or while no manager runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import git
from tests.test_crash import _kill_group, _manager
from tests.test_run import argv_toml, manifest, status_json, swarm, wait_for
from tests.test_trust import outside_writes, sparse_repo

AgentFactory = Callable[[str], list[str]]

# Keeps the open files it is sent until its stdin ends: a process out of swarm's reach (your
# tmux server, any service started before the run) that an agent handed its open file to.
HOLDER = """
import socket, sys
server = socket.socket(socket.AF_UNIX)
server.bind('\\0' + sys.argv[1])
server.listen()
print('listening', flush=True)
held = []
while True:
    conn, _ = server.accept()
    _, fds, _, _ = socket.recv_fds(conn, 1, 4)
    held += fds
    conn.sendall(b'held')
    conn.close()
"""

# Maps its admin dir's config.worktree, hands the open file to the holder (so that its end
# is no close of the file: no IN_CLOSE_WRITE), dirties the page once (the one write through
# the map that stamps the file), lets the guard read it as it now is, then plants a
# `core.fsmonitor` into that dirty page (no event, no new mtime) and exits.
#
# The guard keeps what it reads by the file's stat only past git's racy window (2 s after the
# stamp). Past it, an open of the file tells the guard's watch of a change, and the guard reads
# it again: the agent waits, by an inotify watch of its own, for a read opened after its own
# open (nothing else reads the file while the agent runs: its worktree is the agent's alone),
# and plants once that read is closed. The bytes the guard keeps for that stat are then the
# old ones.
MAPPED = """
import ctypes, mmap, os, select, socket, struct, subprocess, sys, time
OPEN, CLOSE_WRITE, CLOSE_NOWRITE = 0x20, 0x08, 0x10
own = subprocess.run(['git', 'rev-parse', '--path-format=absolute', '--git-dir'],
    capture_output=True, text=True, check=True).stdout.strip()
config = os.path.join(own, 'config.worktree')
fd = os.open(config, os.O_RDWR)
with socket.socket(socket.AF_UNIX) as conn:
    conn.connect('\\0' + sys.argv[1])
    socket.send_fds(conn, [b'f'], [fd])
    assert conn.recv(4) == b'held'
mapped = mmap.mmap(fd, 0)
os.close(fd)
mapped[0:1] = mapped[0:1]
stamped = os.stat(config).st_ctime
time.sleep(max(0.0, stamped + 2.5 - time.time()))  # the clock past git's racy window
libc = ctypes.CDLL(None, use_errno=True)
ino = libc.inotify_init1(os.O_CLOEXEC)
watched = libc.inotify_add_watch(ino, config.encode(), OPEN | CLOSE_WRITE | CLOSE_NOWRITE)
assert ino >= 0 and watched >= 0
os.close(os.open(config, os.O_WRONLY))  # its own open: IN_OPEN, IN_CLOSE_WRITE
mine, opened = True, False
while True:
    if not select.select([ino], [], [], 600)[0]:
        sys.exit('the guard never read config.worktree again')
    data = os.read(ino, 4096)
    done = False
    while data:
        _, mask, _, size = struct.unpack_from('iIII', data)
        data = data[16 + size:]
        if mine:
            mine = not mask & CLOSE_WRITE  # its own events end with its close
        elif mask & OPEN:
            opened = True  # the guard's read, begun after the agent's open
        elif mask & CLOSE_NOWRITE and opened:
            done = True
    if done:
        break
planted = b'[core]\\n\\tfsmonitor = touch planted #'
mapped[:] = planted.ljust(len(mapped), b'#')
assert os.stat(config).st_ctime == stamped
"""


@pytest.fixture
def holder() -> Iterator[str]:
    """The name of a :data:`HOLDER`'s abstract socket, running until the test ends."""
    address = f"swarm-test-holder-{os.getpid()}"  # abstract: no file
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, address],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "listening\n"
        yield address
    finally:
        proc.kill()
        proc.communicate()


def test_a_fsmonitor_mapped_into_a_tasks_config_worktree_is_put_back_by_the_last_scan(
    tmp_path: Path, write_agent: AgentFactory, holder: str
) -> None:
    # Nothing tells of the write but the bytes: the run's last scan reads them afresh, and
    # blames the agent alive when the file last changed, although it ended before.
    repo = sparse_repo(tmp_path)
    theirs = (repo / ".git" / "config.worktree").read_bytes()
    agent = argv_toml([*write_agent(MAPPED), holder])
    out = swarm(
        repo, "run", manifest(repo, f'[[task]]\nid = "bad"\nprompt = "p"\nagent = {agent}\n')
    )
    assert out.returncode != 0, out.stdout + out.stderr
    copied = repo / ".git" / "worktrees" / "bad" / "config.worktree"
    assert copied.read_bytes() == theirs
    row = status_json(repo)["bad"]
    assert row["state"] == "failed", row
    assert "wrote outside its worktree" in str(row["reason"]), row
    writes = outside_writes(repo)
    assert [(w["git_files"], w["suspects"], w["restored"]) for w in writes] == [
        (["worktrees/bad/config.worktree"], ["bad"], True)
    ], writes
    # Found by its bytes under the same stat (not by a read after the plant).
    (log,) = (repo / ".git" / "swarm" / "runs").glob("*/guard/guard.log")
    said = "changed under the same stat (a write through a shared map): worktrees/bad/config"
    assert said in log.read_text()


# Ends once the guard saved its baseline with git's copy of the sparse settings in its own
# admin dir (the save that makes the next copy wait up to 10 s).
SAVED_FIRST = """
import json, pathlib, subprocess, time
common = pathlib.Path(subprocess.run(['git', 'rev-parse', '--path-format=absolute',
    '--git-common-dir'], capture_output=True, text=True, check=True).stdout.strip())
while True:
    for kept in (common / 'swarm' / 'runs').glob('*/guard/surface.json'):
        try:
            if 'worktrees/first/config.worktree' in json.loads(kept.read_text()):
                pathlib.Path('f.txt').write_text('f\\n')  # work: its dependent runs
                raise SystemExit(0)
        except ValueError:
            pass
    time.sleep(0.05)
"""

# Starts, waits for the gate (argv[1]), then plants a `core.fsmonitor` into its admin dir's
# config.worktree (git's copy of your sparse settings) and ends.
PLANTS_OWN_CONFIG = """
import pathlib, subprocess, sys, time
gate, ran = pathlib.Path(sys.argv[1]), sys.argv[2]
pathlib.Path('a.txt').write_text('work\\n')
while not gate.exists():
    time.sleep(0.02)
own = pathlib.Path(subprocess.run(['git', 'rev-parse', '--path-format=absolute', '--git-dir'],
    capture_output=True, text=True, check=True).stdout.strip())
with open(own / 'config.worktree', 'a') as out:
    out.write(f'[core]\\n\\tfsmonitor = touch {ran} #\\n')
"""


def test_a_tasks_config_worktree_planted_before_its_copy_was_saved_is_put_back_by_resume(
    tmp_path: Path, write_agent: AgentFactory
) -> None:
    # The guard saves git's copies of your sparse settings for a resume at most every 10 s:
    # its manager killed before that, the resumed guard judges the task's copy against a
    # baseline that lacks it. What the agent planted there meanwhile never runs.
    repo = sparse_repo(tmp_path)
    gate, ran = tmp_path / "gate", tmp_path / "ran"
    first = argv_toml(write_agent(SAVED_FIRST))
    bad = argv_toml([*write_agent(PLANTS_OWN_CONFIG), str(gate), str(ran)])
    text = (
        f'[[task]]\nid = "first"\nprompt = "p"\nagent = {first}\n'
        f'[[task]]\nid = "bad"\nprompt = "p"\nagent = {bad}\ndepends_on = ["first"]\n'
    )
    proc = _manager(repo, "run", manifest(repo, text), "--jobs", "1")
    runs = repo / ".git" / "swarm" / "runs"
    wait_for((repo.parent / "repo.swarm" / "bad" / "a.txt").exists, what="the agent of bad")
    _kill_group(proc)  # bad's agent, in its shim's session, goes on
    kept = json.loads(next(runs.glob("*/guard/surface.json")).read_text())
    assert "worktrees/first/config.worktree" in kept
    assert "worktrees/bad/config.worktree" not in kept  # killed within the 10 s: not saved
    gate.touch()

    def ended() -> bool:
        return any(
            json.loads(p.read_text()).get("ended_at") for p in runs.glob("*/bad/*.exit.json")
        )

    wait_for(ended, what="the agent to end unwatched")
    copied = repo / ".git" / "worktrees" / "bad" / "config.worktree"
    assert "fsmonitor" in copied.read_text()
    out = swarm(repo, "resume")
    assert out.returncode == 1, out.stdout + out.stderr
    row = status_json(repo)["bad"]
    assert row["state"] == "failed", row
    assert "git's own files worktrees/bad/config.worktree; restored" in str(row["reason"]), row
    assert not copied.exists()  # compared with none: removed whole, sparse settings too
    git(repo.parent / "repo.swarm" / "bad", "status")  # your git there runs nothing planted
    assert not ran.exists()
    assert git(repo, "show", "swarm/bad:a.txt") == "work"  # its work kept on its branch
