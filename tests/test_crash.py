"""The manager killed or starved: provisioning is finished or rolled back, checkpoints never
commit an unpopulated checkout, a dead manager is visible, runs can be listed and retried,
a full disk pauses the manager, and a bug in a worker thread leaves its traceback."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import queue
import re
import resource
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import filelock
import psutil
import pytest

from tests.conftest import (
    add_submodule,
    as_owner_only,
    checkpoint_lines,
    git,
    git_first_on_path,
    hang_git_at,
    make_repo,
    retried_tip,
    tmpfs,
    unrecord_launch,
)
from tests.crashkit import TASKS, install_fake_claude, run_trial
from tests.test_resilience import calls, fake_claude, plan  # noqa: F401 - fixture import
from tests.test_run import (
    argv_toml,
    manifest,
    pid_alive,
    state_db,
    status_json,
    swarm,
    wait_for,
    written,
)
from worktree_swarm import cli
from worktree_swarm.core.errors import CommandError
from worktree_swarm.git import checkpoints, gitfiles, local_files
from worktree_swarm.git import process as g_process
from worktree_swarm.infra import fs
from worktree_swarm.infra.store import Store
from worktree_swarm.run import agent_watch
from worktree_swarm.run.runner import Runner

NOTE = "manager not running — run `swarm resume`"


def _manager(repo: Path, *args: str, log_dir: Path | None = None) -> subprocess.Popen[bytes]:
    """`swarm run` in a session of its own, so killing its group takes its git children."""
    with ((log_dir or repo.parent) / "bg.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "worktree_swarm.cli", *args],
            cwd=repo,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _writer(write_agent: object) -> str:
    agent = write_agent(  # type: ignore[operator]
        "import os, pathlib\n"
        "pathlib.Path(os.environ['SWARM_TASK_ID'] + '.txt').write_text('work\\n')\n"
    )
    return f"[defaults]\nagent = {argv_toml(agent)}\n"


def _killed_in_read_tree(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_agent: object
) -> str:
    """A run of t1 whose manager is killed inside `git read-tree`; returns its run id."""
    hung = hang_git_at(tmp_path, monkeypatch, "read-tree")
    text = _writer(write_agent) + '[[task]]\nid = "t1"\nprompt = "x"\n'
    proc = _manager(repo, "run", manifest(repo, text))
    wait_for(hung.exists, timeout=120, what="the checkout to start")
    _kill_group(proc)
    worktree = repo.parent / "repo.swarm" / "t1"
    assert [p.name for p in worktree.iterdir()] == [".git"]  # the issue's half-made worktree
    assert gitfiles.checkout_incomplete(worktree)
    out = json.loads(swarm(repo, "status", "--json").stdout)
    return str(out["run_id"])


def test_checkpoint_repairs_a_checkout_that_was_never_populated(repo: Path) -> None:
    for i in range(5):
        (repo / f"f{i}.txt").write_text(f"{i}\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "files")
    head = git(repo, "rev-parse", "HEAD")
    worktree = repo.parent / "wt"
    git(repo, "worktree", "add", "-q", "--no-checkout", "-b", "swarm/x", str(worktree), head)
    (worktree / "f0.txt").write_text("0\n")  # a checkout killed after its first file
    assert gitfiles.checkout_incomplete(worktree)
    assert (
        checkpoints.checkpoint(worktree, message="checkpoint", author="a <a@example.com>") is None
    )
    assert git(repo, "rev-parse", "swarm/x") == head
    assert sorted(p.name for p in worktree.glob("f*.txt")) == [f"f{i}.txt" for i in range(5)]
    assert not gitfiles.checkout_incomplete(worktree)


@pytest.mark.long
def test_kill_inside_checkout_then_resume_runs_the_task(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_agent: object
) -> None:
    base = git(repo, "rev-parse", "HEAD")
    run_id = _killed_in_read_tree(repo, tmp_path, monkeypatch, write_agent)
    # The dead manager is visible, and a new run is refused until this one is settled.
    out = swarm(repo, "status")
    assert NOTE in out.stdout
    data = json.loads(swarm(repo, "status", "--json").stdout)
    assert (data["run_state"], data["manager_running"]) == ("manager_gone", False)
    out = swarm(repo, "run", "--agent", "scripted", "-t", "other=x")
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1
    assert f"run {run_id} is unfinished" in out.stderr
    assert "`swarm resume`" in out.stderr
    runs = json.loads(swarm(repo, "runs", "--json").stdout)["runs"]
    assert [(r["run_id"], r["state"]) for r in runs] == [(run_id, "manager_gone")]

    out = swarm(repo, "resume")
    assert out.returncode == 0, out.stdout + out.stderr
    assert status_json(repo)["t1"]["state"] == "done"
    changed = git(repo, "diff", "--name-status", base, "swarm/t1")
    assert changed == "A\tt1.txt"  # the agent's file, and no file of the base deleted
    assert NOTE not in swarm(repo, "status").stdout


@pytest.mark.long
def test_a_branch_moved_under_a_half_made_worktree_says_to_retry_the_task_not_to_resume(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_agent: object
) -> None:
    # A half-made task branch moved while no manager ran is not swarm's to delete: said by
    # `swarm resume`, "run `swarm resume` to continue that run" sent you round in a circle.
    run_id = _killed_in_read_tree(repo, tmp_path, monkeypatch, write_agent)
    mine = git(repo, "commit-tree", "HEAD^{tree}", "-p", "HEAD", "-m", "mine")
    git(repo, "update-ref", "refs/heads/swarm/t1", mine)

    out = swarm(repo, "resume")

    assert out.returncode == 1, out.stdout + out.stderr
    reason = status_json(repo)["t1"]["reason"]
    assert reason == (
        "branch swarm/t1 already exists; if it holds nothing you need, delete it (`git branch"
        f" -D swarm/t1`), then run `swarm retry t1 --run {run_id}`"
    )
    assert git(repo, "rev-parse", "swarm/t1") == mine  # left alone
    git(repo, "branch", "-D", "swarm/t1")  # as it says
    again = swarm(repo, "retry", "t1", "--run", run_id)
    assert again.returncode == 0, again.stdout + again.stderr
    assert git(repo, "show", "swarm/t1:t1.txt") == "work"


@pytest.mark.long
def test_a_manager_killed_alone_in_a_checkout_whose_git_writes_on_is_resumed(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_agent: object
) -> None:
    # SIGKILL of the manager alone (not its group): its `git read-tree -u` writes on, as a
    # checkout of a big repository does, while `swarm resume` rolls the worktree back.
    write_on = 'i=0; while :; do i=$((i+1)); echo x > "stray-$i" 2>/dev/null; done'
    flag = hang_git_at(tmp_path, monkeypatch, "read-tree", then=write_on)
    text = _writer(write_agent) + '[[task]]\nid = "t1"\nprompt = "x"\n'
    proc = _manager(repo, "run", manifest(repo, text))
    wait_for(flag.exists, timeout=120, what="the checkout to start")
    worktree = repo.parent / "repo.swarm" / "t1"
    writer = next(p for p in psutil.process_iter(["cwd"]) if p.info["cwd"] == str(worktree))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    try:
        assert writer.is_running()
        out = swarm(repo, "resume")
        assert out.returncode == 0, out.stdout + out.stderr
        assert not writer.is_running()
    finally:
        with contextlib.suppress(psutil.Error):
            writer.kill()
    assert status_json(repo)["t1"]["state"] == "done"
    assert git(repo, "show", "swarm/t1:t1.txt") == "work"
    assert not list(worktree.glob("stray-*"))


# A manager whose interpreter SIGKILLs itself the moment it has created (empty) a file of the
# git layout it writes for a new worktree, before writing anything into it: as a kill lands
# between a file's open and its write. The file's name (a temporary one beside it counts).
_KILLED_AT_CREATE = """
import os, signal, sys
target, fired = sys.argv.pop(1), []
def killed_at_create(event, args):
    if fired or event != "open" or not isinstance(args[0], str) or not args[2] & os.O_CREAT:
        return
    path = args[0]
    if "/.git/worktrees/" in path or "/repo.swarm/" in path:
        if os.path.basename(path) in (target, target + ".new"):
            fired.append(path)  # the open below is audited too
            os.close(os.open(path, args[2], 0o666))
            os.kill(os.getpid(), signal.SIGKILL)
sys.addaudithook(killed_at_create)
from worktree_swarm.cli import main
sys.exit(main())
"""


def _killed_at_create(repo: Path, write_agent: object, layout_file: str) -> None:
    """`swarm run` of t1, its manager killed as it creates *layout_file* (empty, unwritten)."""
    text = _writer(write_agent) + '[[task]]\nid = "t1"\nprompt = "x"\n'
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_AT_CREATE, layout_file, "run", manifest(repo, text)],
        cwd=repo,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr


@pytest.mark.long
@pytest.mark.parametrize("layout_file", ["locked", "gitdir", ".git", "commondir", "HEAD"])
def test_a_manager_killed_as_it_writes_a_worktrees_git_layout_is_resumed(
    repo: Path, write_agent: object, layout_file: str
) -> None:
    # Killed with the file made and nothing in it, an empty `commondir` made every git that
    # lists worktrees die (`failed to read .../commondir`): `swarm resume` failed for ever,
    # and the user's own `git worktree list` with it.
    _killed_at_create(repo, write_agent, layout_file)
    listed = subprocess.run(
        ["git", "worktree", "list", "--porcelain"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    out = swarm(repo, "resume")
    assert out.returncode == 0, out.stdout + out.stderr
    assert status_json(repo)["t1"]["state"] == "done"
    assert git(repo, "show", "swarm/t1:t1.txt") == "work"
    assert git(repo, "ls-tree", "-r", "--name-only", "swarm/t1").split() == ["README.md", "t1.txt"]
    out = swarm(repo, "clean", "--yes", "--force")
    assert out.returncode == 0, out.stdout + out.stderr
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    out = swarm(repo, "doctor")
    assert (out.returncode, out.stdout.strip()) == (0, "nothing to clean"), out.stderr


# A manager whose interpreter SIGKILLs itself as it opens attempt 1's log: the first thing
# it does to start the agent, once the launch's intent (with the task's `running`) is on
# record, as a kill lands between that transaction and the agent's start.
_KILLED_AT_LAUNCH = """
import os, signal, sys
def killed_at_launch(event, args):
    if event == "open" and isinstance(args[0], str) and args[0].endswith("/attempt-1.log"):
        os.kill(os.getpid(), signal.SIGKILL)
sys.addaudithook(killed_at_launch)
from worktree_swarm.cli import main
sys.exit(main())
"""

# Writes its pid (one line per launch), then its work.
_COUNTED = """
import os, pathlib, sys
with open(sys.argv[1], "a") as launches:
    launches.write(f"{os.getpid()}\\n")
pathlib.Path("t1.txt").write_text("work\\n")
"""


def test_a_manager_killed_between_a_launchs_intent_and_its_agent_is_resumed(
    repo: Path, write_agent: Callable[[str], list[str]], tmp_path: Path
) -> None:
    launches = tmp_path / "launches"
    agent = [*write_agent(_COUNTED), str(launches)]
    text = f'[[task]]\nid = "t1"\nprompt = "x"\nagent = {argv_toml(agent)}\n'
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_AT_LAUNCH, "run", manifest(repo, text)],
        cwd=repo,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    with contextlib.closing(state_db(repo)) as db:
        row = db.execute("SELECT state, launching, attempts FROM tasks").fetchone()
    assert row == ("running", 1, 0)  # the intent on record, with its state
    assert not launches.exists()
    out = swarm(repo, "resume")
    assert out.returncode == 0, out.stdout + out.stderr
    assert status_json(repo)["t1"]["state"] == "done"
    assert len(launches.read_text().split()) == 1  # launched once, as attempt 1
    with contextlib.closing(state_db(repo)) as db:
        assert db.execute("SELECT number FROM attempts").fetchall() == [(1,)]
        assert db.execute("SELECT launching, attempts FROM tasks").fetchone() == (None, 1)
    assert git(repo, "show", "swarm/t1:t1.txt") == "work"


# A manager whose interpreter SIGKILLs itself at its first statement after committing an
# attempt's end: as a kill lands right after that transaction, before whatever follows it.
_KILLED_AFTER_AN_END = """
import os, signal, sqlite3, sys
connect = sqlite3.connect
def traced(*args, **kwargs):
    conn, seen = connect(*args, **kwargs), []
    def trace(sql):
        if seen == ["end", "COMMIT"]:
            os.kill(os.getpid(), signal.SIGKILL)
        if sql.startswith("UPDATE attempts SET exit_code"):
            seen[:] = ["end"]
        elif seen == ["end"] and sql.startswith("COMMIT"):
            seen.append("COMMIT")
    conn.set_trace_callback(trace)
    return conn
sqlite3.connect = traced
from worktree_swarm.cli import main
sys.exit(main())
"""


def test_an_attempts_cost_is_counted_once_by_a_manager_killed_as_its_end_is_recorded(
    repo: Path,
    fake_claude: Path,  # noqa: F811 - the fixture imported above
) -> None:
    # The end was a commit of its own, the task's totals the next: killed in between, the
    # resumed manager took the ended attempt as counted and the task lost its cost.
    text = '[defaults]\nagent = "claude"\n[[task]]\nid = "t1"\nprompt = "x"\n'
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_AFTER_AN_END, "run", manifest(repo, text)],
        cwd=repo,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    with contextlib.closing(state_db(repo)) as db:
        ended = db.execute("SELECT outcome, cost_usd FROM attempts").fetchall()
    assert ended == [("succeeded", 0.5)]
    out = swarm(repo, "resume")
    assert out.returncode == 0, out.stdout + out.stderr
    row = status_json(repo)["t1"]
    assert (row["state"], row["cost_usd"], row["tokens_in"]) == ("done", 0.5, 100)
    assert len(calls(fake_claude, "t1")) == 1  # its agent ran once
    with contextlib.closing(state_db(repo)) as db:
        assert db.execute("SELECT cost_usd, cache_read_tokens FROM tasks").fetchone() == (0.5, 50)


def _left_as_an_older_swarm(repo: Path, write_agent: object) -> Path:
    """A run of t1 whose manager was killed as the swarm before whole-file writes left it.

    That swarm wrote `commondir` in place: killed between its open and its write, it left
    the worktree's admin dir locked ``initializing``, `commondir` empty and no `HEAD`, and
    the worktree's directory holding only its ``.git`` file. Returns the admin dir.
    """
    _killed_at_create(repo, write_agent, "commondir")
    (admin,) = (repo / ".git" / "worktrees").iterdir()
    (admin / "commondir.new").rename(admin / "commondir")
    assert (admin / "commondir").read_bytes() == b""
    assert (admin / "locked").read_text() == "initializing\n"
    assert not (admin / "HEAD").exists()
    listed = subprocess.run(
        ["git", "worktree", "list"], cwd=repo, capture_output=True, text=True, check=False
    )
    assert "commondir" in listed.stderr, listed
    return admin


@pytest.mark.long
def test_resume_removes_an_older_swarms_half_made_registration_and_makes_it_again(
    repo: Path, write_agent: object
) -> None:
    # git dies on an empty `commondir` (`failed to read .../commondir`) in every command that
    # lists worktrees: `swarm resume` failed for ever on what an older swarm left.
    _left_as_an_older_swarm(repo, write_agent)
    out = swarm(repo, "resume")
    assert out.returncode == 0, out.stdout + out.stderr
    assert status_json(repo)["t1"]["state"] == "done"
    assert git(repo, "show", "swarm/t1:t1.txt") == "work"
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 2


@pytest.mark.long
def test_doctor_names_an_older_swarms_half_made_registration_and_yes_removes_it(
    repo: Path, write_agent: object
) -> None:
    admin = _left_as_an_older_swarm(repo, write_agent)
    worktree = repo.parent / f"{repo.name}.swarm" / "t1"
    out = swarm(repo, "doctor")
    assert out.returncode == 1, out.stdout + out.stderr  # something to fix
    assert f"{worktree}: half-made registration by a swarm killed" in out.stdout, out.stdout
    assert (admin / "commondir").read_bytes() == b""  # a look changes nothing
    out = swarm(repo, "doctor", "--yes")
    assert out.returncode == 0, out.stdout + out.stderr
    assert not admin.exists()
    assert not worktree.exists()
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    out = swarm(repo, "resume")
    assert out.returncode == 0, out.stdout + out.stderr
    assert git(repo, "show", "swarm/t1:t1.txt") == "work"


@pytest.mark.long
@pytest.mark.parametrize("changed", ["a file beside .git", "HEAD", "locked", "no .git"])
def test_a_half_made_registration_swarm_cannot_prove_its_own_is_left_alone(
    repo: Path, write_agent: object, changed: str
) -> None:
    # What holds a file, names a commit, was locked for another reason or is not the
    # directory's registration may be yours (or a live git's): never removed.
    admin = _left_as_an_older_swarm(repo, write_agent)
    worktree = repo.parent / f"{repo.name}.swarm" / "t1"
    if changed == "a file beside .git":
        (worktree / "notes.txt").write_text("mine\n")
    elif changed == "HEAD":
        (admin / "HEAD").write_text("ref: refs/heads/swarm/t1\n")
    elif changed == "locked":
        (admin / "locked").write_text("initializing\nby hand\n")
    else:
        (worktree / ".git").unlink()
    before = sorted((p.name, p.read_bytes()) for p in admin.iterdir())
    for args in (("doctor", "--yes"), ("resume",)):
        out = swarm(repo, *args)
        assert out.returncode != 0, out.stdout
        assert "commondir" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
    assert sorted((p.name, p.read_bytes()) for p in admin.iterdir()) == before
    assert worktree.is_dir()


def _objects(repo: Path) -> set[str]:
    out = git(repo, "cat-file", "--batch-all-objects", "--batch-check=%(objectname)")
    return set(out.split())


@pytest.mark.long
@pytest.mark.parametrize("settle", ["resume", "stop"])
def test_a_manager_killed_once_the_guard_holds_the_objects_before_its_first_scan(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_agent: object, settle: str
) -> None:
    # The guard has linked every object file of the store under its run's `held`, and has
    # not yet read the refs it will watch: the first git after that hangs, and the manager's
    # group is killed there. Resumed or stopped, then cleaned: nothing is left, nothing lost.
    (repo / "mine.txt").write_text("the user's, untracked\n")
    before = (git(repo, "rev-parse", "HEAD"), git(repo, "status", "--porcelain"), _objects(repo))
    runs = repo / ".git" / "swarm" / "runs"
    flag, taken = tmp_path / "hung", tmp_path / "taken"
    git_first_on_path(tmp_path, monkeypatch, lambda real: (
        "#!/bin/sh\n"
        f"for held in {shlex.quote(str(runs))}/*/guard/held; do\n"
        f'  if [ -d "$held" ] && mkdir {shlex.quote(str(taken))} 2>/dev/null; then\n'
        f"    touch {shlex.quote(str(flag))}; exec sleep 600\n"
        "  fi\n"
        "done\n"
        f'exec {real} "$@"\n'
    ))  # fmt: skip
    text = _writer(write_agent) + "".join(
        f'[[task]]\nid = "{t}"\nprompt = "x"\n' for t in ("t1", "t2")
    )
    proc = _manager(repo, "run", manifest(repo, text))
    wait_for(flag.exists, timeout=120, what="the guard's first git after holding the objects")
    _kill_group(proc)
    assert list(runs.glob("*/guard/held/*"))  # the links the dead manager made
    assert NOTE in swarm(repo, "status").stdout

    out = swarm(repo, settle)
    assert out.returncode == 0, out.stdout + out.stderr
    states = {t: r["state"] for t, r in status_json(repo).items()}
    if settle == "resume":
        assert states == {"t1": "done", "t2": "done"}
        for task in ("t1", "t2"):
            assert git(repo, "show", f"swarm/{task}:{task}.txt") == "work"
    else:
        assert states == {"t1": "stopped", "t2": "stopped"}
    assert NOTE not in swarm(repo, "status").stdout
    # Let go: the dead guard's links would keep files a `git gc` of the user's frees.
    assert not list(runs.glob("*/guard/held"))
    assert not list(runs.glob("*/guard/*index"))  # its copies of the checkouts' indexes too
    clean = swarm(repo, "clean", "--yes", "--force")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert not (repo.parent / "repo.swarm").exists()
    assert git(repo, "branch", "--list", "swarm/*") == ""
    after = (git(repo, "rev-parse", "HEAD"), git(repo, "status", "--porcelain"), _objects(repo))
    assert after[:2] == before[:2]  # the user's checkout as it was
    assert before[2] <= after[2]  # and every object of theirs
    assert (repo / "mine.txt").read_text() == "the user's, untracked\n"
    assert git(repo, "fsck", "--no-dangling") == ""


def _gated_run(repo: Path, tmp_path: Path, write_agent: object) -> Path:
    """`swarm run` of t1 whose agent waits for the returned gate; killed once it holds objects.

    Killed with its agent, once the agent runs (the guard's hold is made before any agent).
    """
    gate, started = tmp_path / "go", tmp_path / "started"
    agent = write_agent(  # type: ignore[operator]
        "import pathlib, time\n"
        f"pathlib.Path({str(started)!r}).touch()\n"
        f"while not pathlib.Path({str(gate)!r}).exists(): time.sleep(0.05)\n"
        "pathlib.Path('t1.txt').write_text('work\\n')\n"
    )
    text = f'[defaults]\nagent = {argv_toml(agent)}\n[[task]]\nid = "t1"\nprompt = "x"\n'
    proc = _manager(repo, "run", manifest(repo, text))
    wait_for(started.exists, timeout=120, what="the agent")
    _kill_group(proc)
    gate.touch()
    return gate


@pytest.mark.long
def test_an_object_you_prune_while_no_manager_runs_stays_gone_after_the_resumed_run(
    repo: Path, tmp_path: Path, write_agent: object
) -> None:
    # The killed manager's guard held every object file of the store, this unreachable blob
    # of the user's too. Pruned by the user while no manager ran, it must not come back when
    # the resumed run ends: the resumed guard holds the store as it finds it.
    (tmp_path / "secret.txt").write_text("a secret the user purges\n")
    blob = git(repo, "hash-object", "-w", str(tmp_path / "secret.txt"))
    _gated_run(repo, tmp_path, write_agent)
    runs = repo / ".git" / "swarm" / "runs"
    assert list(runs.glob(f"*/guard/held/{blob[:2]}/{blob[2:]}"))  # the dead manager's hold
    git(repo, "prune", "--expire=now")
    assert blob not in _objects(repo)
    out = swarm(repo, "resume")
    assert out.returncode == 0, out.stdout + out.stderr
    assert ": resumed\n" in out.stdout.splitlines(keepends=True)[0]  # not "started"
    assert status_json(repo)["t1"]["state"] == "done"
    assert blob not in _objects(repo)
    assert not (repo / ".git" / "objects" / blob[:2] / blob[2:]).exists()


@pytest.mark.long
def test_your_tip_deleted_while_no_manager_runs_is_put_back_by_the_resumed_run(
    repo: Path, tmp_path: Path, write_agent: object
) -> None:
    # The resumed guard lets the dead manager's hold go, but first puts back from it what a
    # ref broken while no manager watched misses (an agent of the run outliving it, say).
    tip = git(repo, "rev-parse", "main")
    loose = repo / ".git" / "objects" / tip[:2] / tip[2:]
    assert loose.is_file()
    _gated_run(repo, tmp_path, write_agent)
    loose.unlink()
    out = swarm(repo, "resume")
    assert out.returncode == 0, out.stdout + out.stderr
    assert status_json(repo)["t1"]["state"] == "done"
    assert git(repo, "rev-parse", "main") == tip
    assert git(repo, "cat-file", "-t", tip) == "commit"
    assert git(repo, "fsck", "--no-dangling") == ""


def _deep_in_history(repo: Path) -> str:
    """A blob of *repo*'s history that is neither a tip's file nor in a checkout: its id."""
    (repo / "old.txt").write_text("as it was\n")
    git(repo, "add", "old.txt")
    git(repo, "commit", "-q", "-m", "old")
    blob = git(repo, "rev-parse", "main:old.txt")
    (repo / "old.txt").write_text("as it is\n")
    git(repo, "commit", "-q", "-am", "new")
    return blob


@pytest.mark.long
def test_a_file_deep_in_your_history_deleted_while_no_manager_runs_is_put_back_on_resume(
    repo: Path, tmp_path: Path, write_agent: object
) -> None:
    # Neither a tip nor a root tree, nor in any checkout: only a walk of the whole history
    # finds it missing, and the dead manager's hold is its only copy.
    blob = _deep_in_history(repo)
    loose = repo / ".git" / "objects" / blob[:2] / blob[2:]
    assert loose.is_file()
    _gated_run(repo, tmp_path, write_agent)
    loose.unlink()
    out = swarm(repo, "resume")
    assert out.returncode == 0, out.stdout + out.stderr
    assert status_json(repo)["t1"]["state"] == "done"
    assert git(repo, "cat-file", "-t", blob) == "blob"
    assert git(repo, "fsck", "--no-dangling") == ""


@pytest.mark.long
def test_a_file_lost_while_no_manager_ran_comes_back_though_the_resumed_guard_cannot_look(
    repo: Path, tmp_path: Path, write_agent: object
) -> None:
    # A file deep in your history deleted while no manager ran, and a directory of the
    # object store made unsearchable: the resumed guard's look at the dead manager's hold
    # fails (EACCES). Not knowing what that hold keeps, it keeps it: the file's only copy.
    blob = _deep_in_history(repo)
    objects = repo / ".git" / "objects"
    # An unreachable blob of yours, alone in a directory that sorts after the deleted file's.
    stray = tmp_path / "stray.txt"
    for i in range(10_000):
        stray.write_text(f"stray {i}\n")
        name = git(repo, "hash-object", str(stray))
        if name[:2] > blob[:2] and not (objects / name[:2]).exists():
            break
    git(repo, "hash-object", "-w", str(stray))
    _gated_run(repo, tmp_path, write_agent)
    (objects / blob[:2] / blob[2:]).unlink()
    hidden = objects / name[:2]
    hidden.chmod(0)
    try:
        out = subprocess.run(
            [*as_owner_only(), sys.executable, "-m", "worktree_swarm.cli", "resume"],
            cwd=repo, capture_output=True, text=True, check=False, timeout=300,
        )  # fmt: skip
    finally:
        hidden.chmod(0o755)
    assert status_json(repo)["t1"]["state"] == "done", out.stdout + out.stderr
    assert git(repo, "cat-file", "-t", blob) == "blob"
    assert git(repo, "show", blob) == "as it was"


@pytest.mark.long
def test_resume_clears_the_locks_a_killed_git_leaves(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_agent: object
) -> None:
    run_id = _killed_in_read_tree(repo, tmp_path, monkeypatch, write_agent)
    # What git killed mid-write leaves: the lock of the branch `worktree add -b` was making,
    # the worktree's index lock (read-tree) and the guard's scratch index lock.
    state = repo / ".git"
    (state / "refs" / "heads" / "swarm" / "t1.lock").write_text("")
    admin = next((state / "worktrees").iterdir())
    (admin / "index.lock").write_text("")
    (state / "swarm" / "runs" / run_id / "guard" / "main.scratch-index.lock").write_text("")
    out = swarm(repo, "resume")
    assert out.returncode == 0, out.stdout + out.stderr
    assert status_json(repo)["t1"]["state"] == "done"
    assert git(repo, "show", "swarm/t1:t1.txt") == "work"


@pytest.mark.long
def test_a_manager_killed_between_unstaging_a_big_file_and_its_commit_is_resumed_without_it(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_agent: object
) -> None:
    # The checkpoint has put the file over max_file back out of the index, and is killed in
    # the commit that follows: the next checkpoint (swarm resume) leaves it out again.
    agent = write_agent(  # type: ignore[operator]
        "import pathlib\n"
        "pathlib.Path('work.txt').write_text('work')\n"
        "pathlib.Path('big.bin').write_bytes(b'\\0' * 4096)\n"
    )
    hung = hang_git_at(tmp_path, monkeypatch, "commit")
    text = f'[defaults]\nagent = {argv_toml(agent)}\nmax_file = "2K"\n'
    proc = _manager(repo, "run", manifest(repo, text + '[[task]]\nid = "t"\nprompt = "x"\n'))
    wait_for(hung.exists, timeout=120, what="the checkpoint's commit")
    _kill_group(proc)
    worktree = repo.parent / "repo.swarm" / "t"
    assert "big.bin" not in git(worktree, "diff", "--cached", "--name-only", "HEAD")
    out = swarm(repo, "resume")
    assert out.returncode == 1, out.stdout + out.stderr
    row = status_json(repo)["t"]
    assert row["state"] == "failed"
    assert str(row["reason"]).startswith("wrote files over max_file (2.0K: big.bin (4.0K)): ")
    assert git(repo, "ls-tree", "-r", "--name-only", "swarm/t") == "README.md\nwork.txt"
    assert (worktree / "big.bin").stat().st_size == 4096  # kept, not committed


@pytest.mark.long
def test_abandoned_half_made_worktree_is_cleaned_without_deleting_files(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_agent: object
) -> None:
    base = git(repo, "rev-parse", "HEAD")
    run_id = _killed_in_read_tree(repo, tmp_path, monkeypatch, write_agent)
    out = swarm(repo, "run", "--force", "--agent", "scripted", "-t", "other=x")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"abandoned run {run_id}" in out.stderr
    runs = {r["run_id"]: r for r in json.loads(swarm(repo, "runs", "--json").stdout)["runs"]}
    assert runs[run_id]["state"] == "abandoned"
    assert runs[run_id]["counts"] == {"stopped": 1}
    # `--force` stopped the task, whose checkpoint repaired the checkout instead of committing
    # its missing files as deletions: nothing was committed on the branch.
    assert git(repo, "rev-parse", "swarm/t1") == base
    out = swarm(repo, "clean", "--run", run_id, "--yes")
    assert out.returncode == 0, out.stdout + out.stderr
    assert not (repo.parent / "repo.swarm" / "t1").exists()


@pytest.mark.slow  # long: runs in `scripts/check --slow` (CI runs both)
def test_rerunning_a_task_id_suggests_commands_that_work(
    repo: Path, tmp_path: Path, write_agent: object
) -> None:
    flag = tmp_path / "succeed"
    agent = write_agent(
        "import os, pathlib, sys\n"
        "tid = os.environ['SWARM_TASK_ID']\n"
        "with open(tid + '.txt', 'a') as fh: fh.write('attempt\\n')\n"
        f"sys.exit(0 if pathlib.Path({str(flag)!r}).exists() else 3)\n"
    )
    assert swarm(repo, "run", "--agent", shlex.join(agent), "-t", "a=x").returncode == 1
    run_id = json.loads(swarm(repo, "status", "--json").stdout)["run_id"]
    runs = json.loads(swarm(repo, "runs", "--json").stdout)["runs"]
    assert [(r["run_id"], r["state"], r["counts"]) for r in runs] == [
        (run_id, "finished", {"failed": 1})
    ]
    # Running the same id again names the run and a retry that really works.
    out = swarm(repo, "run", "--agent", shlex.join(agent), "-t", "a=x")
    assert out.returncode == 2
    suggested = out.stderr.split("`")[1]
    assert suggested == f"swarm retry a --run {run_id}"
    flag.touch()
    out = swarm(repo, *shlex.split(suggested)[1:])
    assert out.returncode == 0, out.stdout + out.stderr
    assert status_json(repo)["a"]["state"] == "done"
    assert git(repo, "show", "swarm/a:a.txt") == "attempt\nattempt"  # kept worktree, continued
    # Now done: the message offers a clean that really deletes it, and then the id is free.
    out = swarm(repo, "run", "--agent", shlex.join(agent), "-t", "a=x")
    assert out.returncode == 2
    suggested = out.stderr.split("`")[-2]
    assert suggested == f"swarm clean --run {run_id} --force --yes"
    assert swarm(repo, *shlex.split(suggested)[1:]).returncode == 0
    assert swarm(repo, "run", "--agent", shlex.join(agent), "-t", "a=x").returncode == 0


def stray_at_failed_task(repo: Path, tmp_path: Path, write_agent: object, text: str) -> Path:
    """Failed task a, its worktree cleaned away; at its path what a failed creation leaves."""
    failed_until(repo, tmp_path / "succeed", write_agent)
    assert swarm(repo, "clean", "--force", "--yes").returncode == 0
    stray = repo.parent / "repo.swarm" / "a"
    (stray / "src").mkdir(parents=True)  # part of a checkout
    (stray / "src" / "f.txt").write_text(text)
    return stray


def failed_until(repo: Path, flag: Path, write_agent: object) -> Path:
    """A run of task a whose agent adds a line to a.txt and fails until *flag* exists."""
    agent = write_agent(  # type: ignore[operator]
        "import os, pathlib, sys\n"
        "with open('a.txt', 'a') as fh: fh.write('attempt\\n')\n"
        f"sys.exit(0 if pathlib.Path({str(flag)!r}).exists() else 3)\n"
    )
    text = f'[defaults]\nagent = {argv_toml(agent)}\n[[task]]\nid = "a"\nprompt = "x"\n'
    assert swarm(repo, "run", manifest(repo, text)).returncode == 1
    return flag


@pytest.mark.long
def test_retry_fresh_starts_over_from_the_base(
    repo: Path, tmp_path: Path, write_agent: object
) -> None:
    flag = failed_until(repo, tmp_path / "succeed", write_agent)
    out = swarm(repo, "retry", "b")
    assert (out.returncode, out.stderr.count("\n")) == (2, 1)
    assert "no task 'b'" in out.stderr
    flag.touch()
    out = swarm(repo, "retry", "--fresh")
    assert out.returncode == 0, out.stdout + out.stderr
    assert git(repo, "show", "swarm/a:a.txt") == "attempt"
    out = swarm(repo, "retry")
    assert out.returncode == 2
    assert "nothing to retry" in out.stderr


@pytest.mark.long
def test_retry_with_nothing_to_retry_in_a_run_its_manager_left_open_says_resume_ends_it(
    repo: Path, tmp_path: Path, write_agent: object
) -> None:
    # A `swarm retry` killed once its retried tasks were final, before it ended the run: run
    # again, it said only "nothing to retry" (exit 2), and the run stayed open.
    failed_until(repo, tmp_path / "succeed", write_agent).touch()
    assert swarm(repo, "retry").returncode == 0
    run_id = json.loads(swarm(repo, "status", "--json").stdout)["run_id"]
    store = Store(repo / ".git" / "swarm" / "state.db")
    try:
        store.reopen_run(run_id)  # as the killed retry left it: every task final
    finally:
        store.close()
    out = swarm(repo, "retry")
    assert out.returncode == 2
    assert out.stderr == (
        f"swarm: nothing to retry in run {run_id}: no task failed, stopped, timed out or was"
        " blocked; its manager stopped before it ended the run: `swarm resume` ends it\n"
    )
    assert swarm(repo, "resume").returncode == 0
    assert "nothing to retry" in swarm(repo, "retry").stderr
    assert "swarm resume" not in swarm(repo, "retry").stderr


@pytest.mark.long
def test_retry_takes_no_changes_tasks_only_by_name_and_never_a_done_one_whose_merge_conflicted(
    repo: Path, tmp_path: Path, write_agent: object
) -> None:
    launches = tmp_path / "launches"
    agent = write_agent(  # type: ignore[operator]
        "import os, pathlib, sys\n"
        "tid = os.environ['SWARM_TASK_ID']\n"
        f"with open({str(launches)!r}, 'a') as fh: fh.write(tid + '\\n')\n"
        "if tid != 'idle':\n"
        "    pathlib.Path('same.txt').write_text(tid + '\\n')\n"
        "sys.exit(3 if tid == 'bad' else 0)\n"
    )
    tasks = ("-t", "one=x", "-t", "two=x", "-t", "idle=x", "-t", "bad=x")
    assert swarm(repo, "run", "--agent", shlex.join(agent), *tasks).returncode == 1
    swarm(repo, "merge")  # one and two wrote the same file: the second to merge conflicts
    rows = status_json(repo)
    (conflicted,) = [t for t in ("one", "two") if rows[t]["merge_result"] == "conflicted"]
    assert rows[conflicted]["state"] == "done"

    def launched(*args: str) -> list[str]:
        launches.unlink()
        swarm(repo, "retry", *args)
        return launches.read_text().split()

    assert launched() == ["bad"]  # not the done tasks, nor the one that changed nothing
    assert launched("idle") == ["idle"]  # named, it runs again
    launches.write_text("")
    out = swarm(repo, "retry", conflicted)
    assert out.returncode == 2
    assert f"task {conflicted} of run" in out.stderr
    assert "is done" in out.stderr
    assert launches.read_text() == ""
    assert status_json(repo)[conflicted]["merge_result"] == "conflicted"


@pytest.mark.long
def test_a_retry_while_a_merge_runs_is_refused_and_changes_nothing(
    repo: Path, tmp_path: Path, write_agent: object
) -> None:
    # A merge in its checks holds its tasks' results as `checking`; a retry reset under it
    # left the retried work recorded as merged when the merge ended, and never merged again.
    failed_until(repo, tmp_path / "succeed", write_agent)
    before = status_json(repo)["a"]
    with filelock.FileLock(repo / ".git" / "swarm" / "merge.lock", thread_local=False):
        out = swarm(repo, "retry", "a")
    assert (out.returncode, out.stderr.count("\n")) == (3, 1), out.stdout + out.stderr
    assert "a `swarm merge` is running in " in out.stderr
    assert status_json(repo)["a"] == before
    (tmp_path / "succeed").touch()
    assert swarm(repo, "retry", "a").returncode == 0  # once the merge has finished


@pytest.mark.long
def test_a_retry_with_a_directory_in_the_way_of_the_worktree_says_so_and_changes_nothing(
    repo: Path, tmp_path: Path, write_agent: object
) -> None:
    stray = stray_at_failed_task(repo, tmp_path, write_agent, "x\n")
    out = swarm(repo, "retry", "a")
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1
    assert f"{stray} is in the way of task a's worktree and is not one" in out.stderr
    assert status_json(repo)["a"]["state"] == "failed"


@pytest.mark.long
def test_a_retry_of_an_unknown_task_says_so_and_writes_nothing(
    repo: Path, tmp_path: Path, write_agent: object
) -> None:
    failed_until(repo, tmp_path / "succeed", write_agent)
    state = repo / ".git" / "swarm"
    before = {p: p.stat().st_mtime_ns for p in state.glob("*") if p.is_file()}
    out = swarm(repo, "retry", "nosuch")
    assert (out.returncode, out.stderr.count("\n")) == (2, 1), out.stdout + out.stderr
    assert "no task 'nosuch' in run " in out.stderr
    assert {p: p.stat().st_mtime_ns for p in state.glob("*") if p.is_file()} == before


@pytest.mark.long
@pytest.mark.parametrize("fresh", [False, True], ids=["resumed", "fresh"])
def test_a_retry_of_a_task_whose_branch_you_checked_out_says_so_and_changes_nothing(
    repo: Path, tmp_path: Path, write_agent: object, fresh: bool
) -> None:
    # Checked out in your checkout to fix it by hand: the retry failed on git's own words
    # (`already checked out`, or with --fresh `Cannot delete branch`), exit 1.
    failed_until(repo, tmp_path / "succeed", write_agent)
    assert swarm(repo, "clean", "--yes").returncode == 0
    git(repo, "switch", "-q", "swarm/a")
    out = swarm(repo, "retry", "a", *(["--fresh"] if fresh else []))
    assert (out.returncode, out.stderr.count("\n")) == (2, 1), out.stdout + out.stderr
    assert f"branch swarm/a of task a is checked out in {repo}" in out.stderr
    assert status_json(repo)["a"]["state"] == "failed"
    assert git(repo, "branch", "--show-current") == "swarm/a"


@pytest.mark.long
def test_retrying_a_task_by_name_runs_the_tasks_it_blocked(
    repo: Path, tmp_path: Path, write_agent: object
) -> None:
    flag = tmp_path / "succeed"
    flaky = write_agent(  # type: ignore[operator]
        f"import pathlib, sys\npathlib.Path('a.txt').write_text('a\\n')\n"
        f"sys.exit(0 if pathlib.Path({str(flag)!r}).exists() else 3)\n"
    )
    ok = write_agent(  # type: ignore[operator]
        "import os, pathlib\npathlib.Path(os.environ['SWARM_TASK_ID']).write_text('x\\n')\n"
    )
    tasks = [("a", []), ("b", ["a"]), ("c", ["b"]), ("other", [])]
    text = "".join(
        f'[[task]]\nid = "{t}"\nprompt = "x"\nagent = {argv_toml(flaky if t == "a" else ok)}\n'
        f"depends_on = {json.dumps(deps)}\n"
        for t, deps in tasks
    )
    assert swarm(repo, "run", manifest(repo, text)).returncode == 1
    assert status_json(repo)["c"]["state"] == "blocked"
    flag.touch()

    out = swarm(repo, "retry", "a")

    assert out.returncode == 0, out.stdout + out.stderr
    rows = status_json(repo)
    assert {t: rows[t]["state"] for t, _ in tasks} == dict.fromkeys(rows, "done")
    assert git(repo, "show", "swarm/c:a.txt") == "a"  # c built on b, built on a's new work


PORT_AGENT = """
import os, pathlib, sys, time
out = pathlib.Path(sys.argv[1])
(out / os.environ['SWARM_TASK_ID']).write_text(os.environ['SWARM_PORT'])
pathlib.Path(os.environ['SWARM_TASK_ID'] + '.txt').write_text('work')
gate = out / ('gate-' + os.environ['SWARM_TASK_ID'])
while sys.argv[2] == 'wait' and not gate.exists():
    time.sleep(0.05)
"""


def test_an_agent_adopted_after_a_crash_keeps_its_port_block_to_itself(
    repo: Path, tmp_path: Path, write_agent: object
) -> None:
    out = tmp_path / "ports"
    out.mkdir()
    agent = write_agent(PORT_AGENT)  # type: ignore[operator]
    quick, waits = argv_toml([*agent, str(out), "go"]), argv_toml([*agent, str(out), "wait"])
    # Launched y, z, b (blocks 0, 1, 2); adopted in manifest order b, z, y. Once y ends, c
    # starts: the block it gets must not be one an adopted agent still holds.
    text = (
        "[defaults]\njobs = 3\n"
        f'[[task]]\nid = "b"\nprompt = "p"\nagent = {waits}\npriority = 1\n'
        f'[[task]]\nid = "z"\nprompt = "p"\nagent = {waits}\npriority = 2\n'
        f'[[task]]\nid = "y"\nprompt = "p"\nagent = {waits}\npriority = 3\n'
        f'[[task]]\nid = "c"\nprompt = "p"\nagent = {quick}\ndepends_on = ["y"]\n'
    )
    proc = _manager(repo, "run", manifest(repo, text))
    wait_for(lambda: {"b", "z", "y"} <= {p.name for p in out.iterdir()}, what="three agents")
    _kill_group(proc)  # their agents run on, under their shims
    resumed = _manager(repo, "resume")
    (out / "gate-y").touch()  # y ends: c starts, while b and z still hold their blocks
    wait_for((out / "c").exists, what="c to start")
    for task in ("b", "z"):
        (out / f"gate-{task}").touch()
    resumed.wait(timeout=120)
    ports = {t: (out / t).read_text() for t in ("b", "z", "y", "c")}
    assert ports["c"] not in {ports["b"], ports["z"]}, ports
    assert [status_json(repo)[t]["attempt"] for t in ("b", "z")] == [1, 1]  # adopted
    assert resumed.returncode == 0


@pytest.mark.long
def test_a_retried_task_merged_before_is_merged_again_with_its_new_work(
    repo: Path, tmp_path: Path, write_agent: object
) -> None:
    # Its failed attempt's work merged by name, then a retry that succeeds: the old merge
    # result used to make `swarm merge` skip it while status said "merged".
    flag = failed_until(repo, tmp_path / "succeed", write_agent)
    assert swarm(repo, "merge", "a").returncode == 0
    flag.touch()
    assert swarm(repo, "retry", "a").returncode == 0
    assert status_json(repo)["a"]["merge_result"] is None  # not merged: this work never was
    out = swarm(repo, "merge")
    assert out.returncode == 0, out.stdout + out.stderr
    (integration,) = git(repo, "for-each-ref", "--format=%(refname:short)",
                         "refs/heads/swarm/integration-*").split()  # fmt: skip
    assert git(repo, "show", f"{integration}:a.txt") == "attempt\nattempt"
    assert status_json(repo)["a"]["merge_result"] == "merged"


def test_a_fresh_retry_killed_once_the_branch_is_gone_has_its_old_tip_on_record(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_agent: object
) -> None:
    agent = write_agent(  # type: ignore[operator]
        "import pathlib, sys\npathlib.Path('a.txt').write_text('work\\n')\nsys.exit(3)\n"
    )
    text = f'[defaults]\nagent = {argv_toml(agent)}\n[[task]]\nid = "a"\nprompt = "x"\n'
    assert swarm(repo, "run", manifest(repo, text)).returncode == 1
    tip = git(repo, "rev-parse", "swarm/a")
    deleted = tmp_path / "deleted"
    git_first_on_path(tmp_path, monkeypatch, lambda real: (  # `branch -D`, then hang there
        "#!/bin/sh\n"
        'case " $* " in *" branch -D "*)\n'
        f'  {real} "$@"; touch {shlex.quote(str(deleted))}; exec sleep 600;;\nesac\n'
        f'exec {real} "$@"\n'
    ))  # fmt: skip
    proc = _manager(repo, "retry", "a", "--fresh")
    wait_for(deleted.exists, timeout=120, what="the branch deletion")
    _kill_group(proc)
    assert not git(repo, "branch", "--list", "swarm/a")
    with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as db:
        rows = db.execute("SELECT data FROM events WHERE kind = 'retry'").fetchall()
    assert [json.loads(r[0])["previous_tip"] for r in rows] == [tip]


@pytest.mark.long
def test_a_fresh_retry_first_commits_what_the_user_left_in_the_worktree(
    repo: Path, write_agent: object
) -> None:
    # The task failed; the user fixed something by hand in its kept worktree, then asked for
    # a fresh start. That edit must be in the previous tip the retry records, not lost.
    agent = write_agent(  # type: ignore[operator]
        "import pathlib, sys\npathlib.Path('a.txt').write_text('work\\n')\nsys.exit(3)\n"
    )
    text = f'[defaults]\nagent = {argv_toml(agent)}\n[[task]]\nid = "a"\nprompt = "x"\n'
    assert swarm(repo, "run", manifest(repo, text)).returncode == 1
    (repo.parent / "repo.swarm" / "a" / "userfix.txt").write_text("my manual fix\n")
    swarm(repo, "retry", "a", "--fresh")
    previous = retried_tip(repo)
    assert git(repo, "show", f"{previous}:userfix.txt") == "my manual fix"
    # Named as every checkpoint is: the task, its attempt so far and its agent.
    assert checkpoint_lines(repo, previous) == [
        "swarm: checkpoint a (retry --fresh)",
        "Swarm-Task: a",
        "Swarm-Attempt: 1",
        "Swarm-Agent: command",
    ]


def _half_then_sleeps(write_agent: object, pid_file: Path) -> list[str]:
    """An agent that writes half.txt, publishes its pid in *pid_file*, then sleeps on."""
    return write_agent(  # type: ignore[operator, no-any-return]
        "import os, pathlib, time\n"
        "pathlib.Path('half.txt').write_text('half\\n')\n"
        f"pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid()))\n"
        "time.sleep(600)\n"
    )


@pytest.mark.long
def test_force_abandons_a_run_whose_manager_died_and_keeps_its_work(
    repo: Path, tmp_path: Path, write_agent: object
) -> None:
    pid_file = tmp_path / "agent.pid"
    agent = _half_then_sleeps(write_agent, pid_file)
    text = f'[defaults]\nagent = {argv_toml(agent)}\n[[task]]\nid = "slow"\nprompt = "x"\n'
    proc = _manager(repo, "run", manifest(repo, text))
    agent_pid = int(written(pid_file, timeout=120, what="the agent"))
    _kill_group(proc)
    assert pid_alive(agent_pid)
    out = swarm(repo, "run", "--force", "--agent", "scripted", "-t", "next=x")
    assert out.returncode == 0, out.stdout + out.stderr
    assert not pid_alive(agent_pid)
    assert git(repo, "show", "swarm/slow:half.txt") == "half"
    states = [r["state"] for r in json.loads(swarm(repo, "runs", "--json").stdout)["runs"]]
    assert states == ["abandoned", "finished"]


@pytest.mark.long
def test_an_attempt_that_ended_while_its_manager_was_stopped_ends_when_its_agent_did(
    repo: Path, tmp_path: Path, write_agent: object
) -> None:
    # Its end was when the manager noticed: a Ctrl-Z of minutes made an attempt longer than
    # its own timeout in status and report.
    pid_file, go = tmp_path / "agent.pid", tmp_path / "go"
    agent = write_agent(  # type: ignore[operator]
        "import os, pathlib, time\n"
        f"pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid()))\n"
        f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.02)\n"
        "pathlib.Path('work.txt').write_text('work')\n"
    )
    text = f'[defaults]\nagent = {argv_toml(agent)}\n[[task]]\nid = "a"\nprompt = "x"\n'
    proc = _manager(repo, "run", manifest(repo, text))
    try:
        agent_pid = int(written(pid_file, timeout=120, what="the agent"))
        proc.send_signal(signal.SIGSTOP)
        go.touch()
        wait_for(lambda: not pid_alive(agent_pid), what="the agent to end")
        ended = time.time()
        time.sleep(3)  # the pause being measured, not a wait for an event
        proc.send_signal(signal.SIGCONT)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            _kill_group(proc)
    with state_db(repo) as conn:
        ((recorded,),) = conn.execute("SELECT ended_at FROM attempts").fetchall()
    assert recorded <= ended + 1  # not when the manager went on, 3 s later


@pytest.mark.long
def test_an_agent_gone_with_its_shim_in_a_reboot_ends_when_it_died_not_at_the_resume(
    repo: Path, tmp_path: Path, write_agent: object
) -> None:
    # A reboot takes the manager, the shim and the agent: the shim's record has no end, and
    # the resume recorded its own time, so the night's downtime counted as agent time.
    pid_file = tmp_path / "agent.pid"
    agent = write_agent(  # type: ignore[operator]
        "import os, pathlib, time\n"
        "pathlib.Path('half.txt').write_text('half')\n"
        f"pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid()))\n"
        "time.sleep(600)\n"
    )
    text = f'[defaults]\nagent = {argv_toml(agent)}\n[[task]]\nid = "a"\nprompt = "x"\n'
    proc = _manager(repo, "run", manifest(repo, text))
    try:
        agent = psutil.Process(int(written(pid_file, timeout=120, what="the agent")))
        shim = agent.parent()
        assert shim is not None
        _kill_group(proc)
        for gone in (shim, agent):  # as a power cut would: no one writes anything down
            gone.kill()
        psutil.wait_procs([shim, agent], timeout=30)
        died = time.time()
    finally:
        if proc.poll() is None:
            _kill_group(proc)
    time.sleep(3)  # the downtime being measured, not a wait for an event
    swarm(repo, "resume")
    with state_db(repo) as conn:
        ((recorded,),) = conn.execute("SELECT ended_at FROM attempts").fetchall()
    assert recorded <= died + 1  # not when `swarm resume` came, 3 s later


def test_a_stop_with_no_manager_blocks_the_tasks_waiting_on_what_it_stopped(
    repo: Path, tmp_path: Path, write_agent: object
) -> None:
    # c stayed `pending` ("waits for b") after b was stopped with no manager alive: the run
    # looked unfinished, where a manager would have blocked c.
    pid_file = tmp_path / "agent.pid"
    agent = write_agent(  # type: ignore[operator]
        "import os, pathlib, time\n"
        "tid = os.environ['SWARM_TASK_ID']\n"
        "pathlib.Path(tid + '.txt').write_text(tid)\n"
        "if tid == 'b':\n"
        f"    pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid()))\n"
        "    time.sleep(600)\n"
    )
    text = f"[defaults]\nagent = {argv_toml(agent)}\n"
    text += '[[task]]\nid = "a"\nprompt = "x"\n[[task]]\nid = "b"\nprompt = "x"\n'
    text += 'depends_on = ["a"]\n[[task]]\nid = "c"\nprompt = "x"\ndepends_on = ["b"]\n'
    proc = _manager(repo, "run", manifest(repo, text))
    agent_pid = int(written(pid_file, timeout=120, what="b's agent"))
    _kill_group(proc)
    out = swarm(repo, "stop", "b")
    assert out.returncode == 0, out.stdout + out.stderr
    assert not pid_alive(agent_pid)
    rows = status_json(repo)
    assert [rows[t]["state"] for t in "abc"] == ["done", "stopped", "blocked"]
    assert rows["c"]["reason"] == "dependency b is stopped"
    runs = json.loads(swarm(repo, "runs", "--json").stdout)["runs"]
    assert [r["state"] for r in runs] == ["stopped"]  # nothing left to resume


def test_an_exception_in_a_worker_is_logged_with_its_traceback(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An OSError swarm does not expect where a task is set up (a `copy` of a unix socket
    # raised one once).
    def copy_into(*_args: object, **_kwargs: object) -> list[str]:
        raise OSError(errno.ENXIO, "No such device or address")

    monkeypatch.setattr(local_files, "copy_into", copy_into)
    monkeypatch.chdir(repo)
    (repo / "local.env").write_text("A=1\n")
    text = '[defaults]\nagent = "scripted"\n[[task]]\nid = "a"\nprompt = "x"\n'
    assert cli.main(["run", manifest(repo, text + 'copy = ["local.env"]\n')]) == 1
    row = status_json(repo)["a"]
    assert row["state"] == "failed"
    reason = str(row["reason"])
    assert reason.startswith("internal error: OSError(")
    log = Path(reason.split("traceback in ")[1].rstrip(")"))
    text = log.read_text()
    assert "internal error in swarm-a" in text
    assert "Traceback (most recent call last)" in text
    assert "copy_into" in text
    assert "internal error" in swarm(repo, "status").stdout


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (RuntimeError("injected fault"), "internal error: RuntimeError('injected fault')"),
        # Out of file descriptors is the system's limit, not a bug: said so, and what to do.
        (
            OSError(errno.EMFILE, "Too many open files"),
            (
                "the manager met a system limit (Too many open files: `ulimit -n`); its work is "
                "kept, `swarm retry` runs it again"
            ),
        ),
    ],
)
def test_an_internal_error_while_an_agent_runs_stops_it_and_fails_its_attempt(
    repo: Path,
    tmp_path: Path,
    write_agent: Callable[[str], list[str]],
    monkeypatch: pytest.MonkeyPatch,
    fault: Exception,
    reason: str,
) -> None:
    # A fault injected where the manager watches a running agent (reading its stream): the
    # agent must not run on unwatched, writing in its worktree after its task failed.
    pid_file = tmp_path / "agent.pid"
    agent = _half_then_sleeps(write_agent, pid_file)
    watched = agent_watch.LogTail.poll

    def poll(tail: agent_watch.LogTail, *, now: float) -> list[object]:
        if pid_file.exists() and pid_file.read_text():
            raise fault
        return watched(tail, now=now)  # type: ignore[return-value]

    monkeypatch.setattr(agent_watch.LogTail, "poll", poll)
    monkeypatch.chdir(repo)
    text = f'[defaults]\nagent = {argv_toml(agent)}\nkill_grace = "1s"\n'
    assert cli.main(["run", manifest(repo, text + '[[task]]\nid = "a"\nprompt = "x"\n')]) == 1
    assert not pid_alive(int(pid_file.read_text()))
    row = status_json(repo)["a"]
    assert row["state"] == "failed"
    assert str(row["reason"]).startswith(reason)
    with state_db(repo) as conn:
        ended = conn.execute("SELECT outcome, ended_at IS NOT NULL FROM attempts").fetchall()
    assert ended == [("failed", 1)]
    assert (Path(str(row["worktree"])) / "half.txt").read_text() == "half\n"  # its work kept


def _paused(repo: Path) -> bool:
    """Whether `swarm status` says the run waits for room on a full disk."""
    out = swarm(repo, "status")
    return out.returncode == 0 and "paused: the disk is full" in out.stdout


def _filler(write_agent: object, *, wrote: Path, full: Path, go: Path) -> list[str]:
    """An agent that fills the disk once *wrote* exists, says so in *full*, frees it on *go*."""
    return write_agent(  # type: ignore[operator, no-any-return]
        "import pathlib, time\n"
        f"while not pathlib.Path({str(wrote)!r}).exists(): time.sleep(0.05)\n"
        # Unbuffered: a buffered file would raise ENOSPC again from close(), past the except.
        "with open('filler.bin', 'wb', buffering=0) as fh:\n"
        "    try:\n"
        "        while True:\n"
        "            fh.write(b'x' * 65536); fh.flush()\n"
        "    except OSError:\n"
        "        pass\n"
        f"pathlib.Path({str(full)!r}).touch()\n"
        f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.05)\n"
        "pathlib.Path('filler.bin').unlink()\n"
        "pathlib.Path('filled.txt').write_text('done\\n')\n"
    )


def test_too_few_open_files_for_a_manager_is_refused_before_anything(repo: Path) -> None:
    # With `ulimit -n 16` a manager recorded its run and died starting git: every task pending.
    def low() -> None:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (16, hard))

    for args in (["run", "-t", "a=x", "--agent", "scripted"], ["resume"]):
        out = subprocess.run(
            [sys.executable, "-m", "worktree_swarm.cli", *args],
            cwd=repo, capture_output=True, text=True, check=False, preexec_fn=low,
        )  # fmt: skip
        assert out.returncode == 2, out.stdout + out.stderr
        assert out.stderr == (
            "swarm: the open-file limit (`ulimit -n`) is 16, too few for swarm's manager (it "
            "needs 32, and more with many jobs); raise it: `ulimit -n 1024`\n"
        )
    assert not (repo / ".git" / "swarm").exists()
    assert git(repo, "branch", "--list", "swarm/*") == ""


def test_a_checkpoint_whose_git_cannot_start_keeps_the_agents_reason_and_names_the_work(
    repo: Path, monkeypatch: pytest.MonkeyPatch, write_agent: object
) -> None:
    # Under `ulimit -u` (a uid's processes, which tests running as root cannot hit) the
    # checkpoint's `git add` could not start: the task's reason was that alone, the agent's
    # own failure gone and nothing saying that its work is uncommitted in its worktree.
    real, worktree = subprocess.Popen, repo.parent / "repo.swarm" / "t1"

    def popen(argv: list[str], *args: object, **kwargs: object) -> object:
        words = [a for a in argv[1:] if not a.startswith("-") and "=" not in a]
        # The checkpoint's `git add` (the guard's own has no --sparse), once the agent worked.
        ended = (worktree / "work.txt").exists()
        if ended and Path(argv[0]).name == "git" and words[:1] == ["add"] and "--sparse" in argv:
            raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        return real(argv, *args, **kwargs)  # type: ignore[call-overload]

    agent = write_agent(  # type: ignore[operator]
        "import pathlib, sys\n"
        "pathlib.Path('work.txt').write_text('work\\n')\n"
        "sys.exit('I give up')\n"
    )
    text = f'[[task]]\nid = "t1"\nprompt = "x"\nagent = {argv_toml(agent)}\n'
    path = manifest(repo, text)
    base = git(repo, "rev-parse", "HEAD")
    monkeypatch.setattr(g_process.subprocess, "Popen", popen)
    monkeypatch.chdir(repo)
    assert cli.main(["run", path]) == 1
    monkeypatch.undo()
    reason = str(status_json(repo)["t1"]["reason"])
    assert reason.startswith(
        "agent exited 1: I give up; its checkpoint failed (git could not start"
    ), reason
    assert reason.endswith(
        f"its work is left uncommitted in {worktree}; `swarm retry` commits it"
    ), reason
    assert git(repo, "rev-parse", "swarm/t1") == base
    assert (worktree / "work.txt").read_text() == "work\n"


def test_a_task_whose_thread_cannot_start_waits_and_runs_once_one_can(
    repo: Path, monkeypatch: pytest.MonkeyPatch, write_agent: object
) -> None:
    # Under `ulimit -u` (threads count; tests running as root cannot hit it) starting a task's
    # thread raised `can't start new thread`: the manager died, its agents left unwatched.
    real, refused = threading.Thread.start, []

    def start(thread: threading.Thread) -> None:
        if thread.name == "swarm-t1" and not refused:
            refused.append(thread.name)
            raise RuntimeError("can't start new thread")
        real(thread)

    agent = write_agent("import pathlib\npathlib.Path('work.txt').write_text('work\\n')\n")  # type: ignore[operator]
    path = manifest(repo, f'[[task]]\nid = "t1"\nprompt = "x"\nagent = {argv_toml(agent)}\n')
    monkeypatch.setattr(threading.Thread, "start", start)
    monkeypatch.chdir(repo)
    assert cli.main(["run", path]) == 0
    monkeypatch.undo()
    assert refused == ["swarm-t1"]
    assert status_json(repo)["t1"]["state"] == "done"
    assert git(repo, "show", "swarm/t1:work.txt") == "work"
    (log,) = (repo / ".git" / "swarm" / "runs").glob("*/manager.log")
    assert "no thread can start for t1 now; it waits" in log.read_text()


def test_full_disk_pauses_the_manager_then_it_finishes(
    small_disk: Path, tmp_path: Path, write_agent: object
) -> None:
    repo = make_repo(small_disk / "repo")
    go, full, wrote = tmp_path / "go", tmp_path / "full", tmp_path / "wrote"
    filler = _filler(write_agent, wrote=wrote, full=full, go=go)
    quick = write_agent(  # writes its work, ends once the disk is full
        "import pathlib, time\n"
        "pathlib.Path('quick.txt').write_text('work\\n')\n"
        f"pathlib.Path({str(wrote)!r}).touch()\n"
        f"while not pathlib.Path({str(full)!r}).exists(): time.sleep(0.05)\n"
    )
    text = (
        '[[task]]\nid = "filler"\nprompt = "x"\n'
        f"agent = {argv_toml(filler)}\n"
        '[[task]]\nid = "quick"\nprompt = "x"\n'
        f"agent = {argv_toml(quick)}\n"
    )
    proc = _manager(repo, "run", manifest(repo, text), log_dir=tmp_path)
    try:
        wait_for(full.exists, timeout=120, what="the disk to fill")

        wait_for(lambda: _paused(repo), timeout=120, what="the manager to pause")
        assert proc.poll() is None  # paused, not dead
        go.touch()
        code = proc.wait(timeout=180)
        assert code == 0, (tmp_path / "bg.log").read_text() + swarm(repo, "status").stdout
    finally:
        if proc.poll() is None:
            _kill_group(proc)
    rows = status_json(repo)
    assert rows["quick"]["state"] == rows["filler"]["state"] == "done"
    assert git(repo, "show", "swarm/quick:quick.txt") == "work"
    assert "paused" not in swarm(repo, "status").stdout


@pytest.mark.long
def test_clean_and_merge_on_a_full_disk_say_it_is_full(small_disk: Path) -> None:
    # SQLite says only "disk I/O error" when it cannot make its shared-memory file.
    repo = make_repo(small_disk / "repo")
    assert swarm(repo, "run", "--agent", "scripted", "-t", "a=x").returncode == 0
    with contextlib.suppress(OSError), (small_disk / "filler").open("wb") as filler:
        while True:  # the test's own 24 MB file system
            filler.write(b"x" * (1 << 16))
    db = repo / ".git" / "swarm" / "state.db"
    for command in ("clean", "merge"):
        out = swarm(repo, command, *(["--yes"] if command == "clean" else []))
        assert (out.returncode, out.stdout) == (1, ""), out.stderr
        assert out.stderr == (
            f"swarm: cannot write the state database {db}: No space left on device (SQLite: "
            f"disk I/O error); free some space, then run `swarm {command}` again\n"
        )


def _attempt_outcomes(repo: Path, task_id: str) -> list[str]:
    with contextlib.closing(state_db(repo)) as db:
        rows = db.execute(
            "SELECT outcome FROM attempts WHERE task_id = ? ORDER BY number", (task_id,)
        ).fetchall()
    return [row[0] for row in rows]


def test_an_agent_that_dies_printing_to_a_full_disk_goes_on_once_there_is_room(
    small_disk: Path, tmp_path: Path, write_agent: object
) -> None:
    # Its output goes to its log on the disk that filled: printing raises ENOSPC, it exits 1.
    # The task failed for the disk, not for its work: it goes on once there is room.
    repo = make_repo(small_disk / "repo")
    go, full, wrote = tmp_path / "go", tmp_path / "full", tmp_path / "wrote"
    filler = _filler(write_agent, wrote=wrote, full=full, go=go)
    printer = write_agent(  # once more, with room: it finds its work there and ends
        "import pathlib, sys, time\n"
        "if pathlib.Path('work.txt').exists():\n"
        "    pathlib.Path('more.txt').write_text(sys.argv[1])\n"
        "    sys.exit(0)\n"
        "pathlib.Path('work.txt').write_text('work\\n')\n"
        f"pathlib.Path({str(wrote)!r}).touch()\n"
        "while True:\n"
        "    print('progress ' * 20, flush=True)\n"
        "    time.sleep(0.01)\n"
    )
    text = (
        '[[task]]\nid = "filler"\nprompt = "x"\n'
        f"agent = {argv_toml(filler)}\n"
        '[[task]]\nid = "printer"\nprompt = "x"\n'
        f"agent = {argv_toml([*printer, '{prompt_file}'])}\n"
    )
    proc = _manager(repo, "run", manifest(repo, text), log_dir=tmp_path)
    try:
        wait_for(full.exists, timeout=120, what="the disk to fill")
        wait_for(lambda: _paused(repo), timeout=120, what="the manager to pause")
        go.touch()
        code = proc.wait(timeout=180)
        assert code == 0, (tmp_path / "bg.log").read_text() + swarm(repo, "status").stdout
    finally:
        if proc.poll() is None:
            _kill_group(proc)
    rows = status_json(repo)
    assert rows["printer"]["state"] == rows["filler"]["state"] == "done"
    assert git(repo, "show", "swarm/printer:work.txt") == "work"
    assert _attempt_outcomes(repo, "printer") == ["disk_full", "succeeded"]
    # Told why it starts again (a command agent has no session to resume).
    prompt = Path(git(repo, "show", "swarm/printer:more.txt")).read_text()
    assert "the disk was full" in prompt


def test_an_agent_whose_own_output_filled_the_disk_fails_and_the_run_ends(
    small_disk: Path, tmp_path: Path, write_agent: object
) -> None:
    # Its log took all the room: the run (its state on the same disk) waited for room that
    # its own agent's log held, for ever. The log is cut to its end, the task fails.
    repo = make_repo(small_disk / "repo")
    agent = write_agent(
        "import pathlib\n"
        "pathlib.Path('work.txt').write_text('half done')\n"
        "while True:\n"
        "    print('progress ' * 100, flush=True)\n"
    )
    text = f'[[task]]\nid = "loud"\nprompt = "x"\nagent = {argv_toml(agent)}\n'
    out = swarm(repo, "run", manifest(repo, text))
    assert out.returncode == 1, out.stdout + out.stderr
    row = status_json(repo)["loud"]
    assert row["state"] == "failed"
    assert "its output filled the disk" in str(row["reason"])
    assert git(repo, "show", "swarm/loud:work.txt") == "half done"
    (log,) = (repo / ".git" / "swarm" / "runs").glob("*/loud/attempt-1.log")
    assert 0 < log.stat().st_size <= 1 << 20
    # Its end is kept: whole lines, then what the last write (cut by the full disk) left.
    *lines, last = log.read_text().split("\n")
    line = "progress " * 100
    assert set(lines[1:]) == {line}
    assert line.startswith(last)


def test_an_agent_failing_on_a_disk_a_siblings_log_filled_goes_on_after_that_log_is_cut(
    small_disk: Path, tmp_path: Path, write_agent: object
) -> None:
    # The loud sibling's log filled the disk and was cut to its end, which freed it: the
    # quiet agent, failing for the full disk but looked at after that cut, was failed for good.
    repo = make_repo(small_disk / "repo")
    started = tmp_path / "started"
    loud = write_agent(  # fills the disk with its log once the quiet one runs
        "import os, pathlib, sys, time\n"
        f"while not pathlib.Path({str(started)!r}).exists(): time.sleep(0.05)\n"
        "try:\n"
        "    while True:\n"
        "        os.write(1, b'y' * 65536)\n"
        "except OSError:\n"
        "    sys.exit(1)\n"
    )
    quiet = write_agent(  # fails on the full disk once it has room again; with room, works
        "import os, pathlib, sys, time\n"
        "if pathlib.Path('work.txt').exists():\n"
        "    pathlib.Path('more.txt').write_text('more\\n')\n"
        "    sys.exit(0)\n"
        "pathlib.Path('work.txt').write_text('work\\n')\n"
        f"pathlib.Path({str(started)!r}).touch()\n"
        "try:\n"
        "    while True:\n"
        "        os.write(1, b'tick' * 1024); time.sleep(0.005)\n"  # a new page each write
        "except OSError:\n"
        "    pass\n"
        "while os.statvfs('.').f_bavail * os.statvfs('.').f_frsize < 12 << 20:\n"
        "    time.sleep(0.05)\n"  # the loud log is cut: the manager looks at it after
        "sys.exit(1)\n"
    )
    text = (
        '[[task]]\nid = "loud"\nprompt = "x"\n'
        f"agent = {argv_toml(loud)}\n"
        '[[task]]\nid = "quiet"\nprompt = "x"\n'
        f"agent = {argv_toml(quiet)}\n"
    )
    out = swarm(repo, "run", manifest(repo, text))
    assert out.returncode == 1, out.stdout + out.stderr
    rows = status_json(repo)
    assert rows["loud"]["state"] == "failed"
    assert "its output filled the disk" in str(rows["loud"]["reason"])
    assert rows["quiet"]["state"] == "done", rows["quiet"]
    assert _attempt_outcomes(repo, "quiet") == ["disk_full", "succeeded"]
    assert git(repo, "show", "swarm/quiet:more.txt") == "more"


@pytest.mark.parametrize("killed", [False, True], ids=["watched", "manager-killed"])
def test_a_task_whose_agent_fails_while_the_disk_is_nearly_full_waits_for_room(
    small_disk: Path, tmp_path: Path, write_agent: object, killed: bool
) -> None:
    # Under 16 MiB free (a quarter of this 24 MiB disk) counts as full (git, too, fails then
    # without saying why), although the state database can still be written: the task waits,
    # paused, until there is room.
    # A manager killed while it waits: the resumed one goes on with the task the same way.
    repo = make_repo(small_disk / "repo")
    go, filled = tmp_path / "go", tmp_path / "filled"
    filler = write_agent(  # leaves about 4 MiB free, frees it all when told
        "import os, pathlib, time\n"
        "with open('filler.bin', 'wb') as fh:\n"
        "    while True:\n"
        "        st = os.statvfs('.')\n"
        "        if st.f_bavail * st.f_frsize < 4 << 20:\n"
        "            break\n"
        "        fh.write(b'x' * 65536); fh.flush()\n"
        f"pathlib.Path({str(filled)!r}).touch()\n"
        f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.05)\n"
        "pathlib.Path('filler.bin').unlink()\n"
        "pathlib.Path('filled.txt').write_text('done\\n')\n"
    )
    failing = write_agent(  # fails while the disk is nearly full, does its work with room
        "import os, pathlib, sys, time\n"
        f"while not pathlib.Path({str(filled)!r}).exists(): time.sleep(0.05)\n"
        "st = os.statvfs('.')\n"
        "if st.f_bavail * st.f_frsize < 16 << 20:\n"
        "    sys.exit('no room for my build')\n"
        "pathlib.Path('work.txt').write_text('work\\n')\n"
    )
    text = (
        '[[task]]\nid = "filler"\nprompt = "x"\n'
        f"agent = {argv_toml(filler)}\n"
        '[[task]]\nid = "failing"\nprompt = "x"\n'
        f"agent = {argv_toml(failing)}\n"
    )
    proc = _manager(repo, "run", manifest(repo, text), log_dir=tmp_path)
    try:
        wait_for(lambda: _paused(repo), timeout=120, what="the task to wait for room")
        assert proc.poll() is None
        row = status_json(repo)["failing"]
        assert row["state"] == "pending"
        assert "once there is room" in str(row["reason"])
        if killed:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        go.touch()
        if killed:
            out = swarm(repo, "resume")
            assert out.returncode == 0, out.stdout + out.stderr
        else:
            code = proc.wait(timeout=180)
            assert code == 0, (tmp_path / "bg.log").read_text() + swarm(repo, "status").stdout
    finally:
        if proc.poll() is None:
            _kill_group(proc)
    rows = status_json(repo)
    assert rows["failing"]["state"] == rows["filler"]["state"] == "done"
    assert git(repo, "show", "swarm/failing:work.txt") == "work"
    assert _attempt_outcomes(repo, "failing") == ["disk_full", "succeeded"]
    assert "paused" not in swarm(repo, "status").stdout


def test_a_task_waiting_for_room_on_a_small_logs_disk_goes_on_with_worktrees_elsewhere(
    small_disk: Path, tmp_path: Path, write_agent: object
) -> None:
    # The state and logs on a 24 MiB disk, the worktrees on a big one: the room waited for was
    # the worktrees' disk's (64 MiB), looked for on the logs' disk, which never has that much.
    repo = make_repo(small_disk / "repo")
    go, filled, filler_file = tmp_path / "go", tmp_path / "filled", small_disk / "filler.bin"
    filler = write_agent(  # leaves about 4 MiB free on the small disk, frees it when told
        "import os, pathlib, time\n"
        f"with open({str(filler_file)!r}, 'wb') as fh:\n"
        "    while True:\n"
        f"        st = os.statvfs({str(small_disk)!r})\n"
        "        if st.f_bavail * st.f_frsize < 4 << 20:\n"
        "            break\n"
        "        fh.write(b'x' * 65536); fh.flush()\n"
        f"pathlib.Path({str(filled)!r}).touch()\n"
        f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.05)\n"
        f"pathlib.Path({str(filler_file)!r}).unlink()\n"
        "pathlib.Path('filled.txt').write_text('done\\n')\n"
    )
    failing = write_agent(  # fails while the small disk is nearly full, works with room
        "import os, pathlib, sys, time\n"
        f"while not pathlib.Path({str(filled)!r}).exists(): time.sleep(0.05)\n"
        f"st = os.statvfs({str(small_disk)!r})\n"
        "if st.f_bavail * st.f_frsize < 6 << 20:\n"
        "    sys.exit('no room for my build')\n"
        "pathlib.Path('work.txt').write_text('work\\n')\n"
    )
    trees = tmp_path / "trees"
    text = (
        f"[defaults]\nworktree_root = {str(trees)!r}\n"
        '[[task]]\nid = "filler"\nprompt = "x"\n'
        f"agent = {argv_toml(filler)}\n"
        '[[task]]\nid = "failing"\nprompt = "x"\n'
        f"agent = {argv_toml(failing)}\n"
    )
    proc = _manager(repo, "run", manifest(repo, text), log_dir=tmp_path)
    try:
        wait_for(lambda: _paused(repo), timeout=120, what="the task to wait for room")
        go.touch()
        code = proc.wait(timeout=120)
        assert code == 0, (tmp_path / "bg.log").read_text() + swarm(repo, "status").stdout
    finally:
        if proc.poll() is None:
            _kill_group(proc)
    rows = status_json(repo)
    assert rows["failing"]["state"] == rows["filler"]["state"] == "done"
    assert git(repo, "show", "swarm/failing:work.txt") == "work"
    assert _attempt_outcomes(repo, "failing") == ["disk_full", "succeeded"]


def test_a_disk_under_16_mib_is_full_only_when_a_quarter_of_it_is_left(tmp_path: Path) -> None:
    # 16 MiB free was needed on every disk: one of 12 MiB was full when empty.
    with tmpfs(tmp_path, "12m") as disk:
        assert not fs.nearly_full(disk)
        with (disk / "filler.bin").open("wb") as fh:
            fh.write(b"x" * (10 << 20))
        assert fs.nearly_full(disk)


def test_a_failing_agent_on_a_disk_under_16_mib_fails_and_the_run_ends(
    tmp_path: Path, write_agent: object
) -> None:
    # Every failing agent was taken for one that ended on a full disk, and its task waited for
    # ever for 17 MiB free on a disk that has not that much.
    with tmpfs(tmp_path, "12m") as disk:
        repo = make_repo(disk / "repo")
        agent = write_agent("import sys\nsys.exit('my build failed')\n")  # type: ignore[operator]
        text = f'[[task]]\nid = "t1"\nprompt = "x"\nagent = {argv_toml(agent)}\n'
        out = swarm(repo, "run", manifest(repo, text), timeout=60)
        assert out.returncode == 1, out.stdout + out.stderr
        row = status_json(repo)["t1"]
        assert row["state"] == "failed"
        assert "my build failed" in str(row["reason"])
        assert _attempt_outcomes(repo, "t1") == ["failed"]


# A check that leaves 3 MB of its own in the worktree, then fills the disk.
JUNK_THEN_FULL = """
import contextlib, os, pathlib, sys
pathlib.Path('junk.bin').write_bytes(os.urandom(3 << 20))
filler = pathlib.Path(sys.argv[1])
with filler.open('wb', buffering=0) as fh, contextlib.suppress(OSError):
    while True:
        fh.write(b'x' * 65536)
"""


def test_a_worktree_removed_for_max_disk_on_a_full_disk_waits_for_room_not_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Removing a finished task's worktree for max_disk commits what is left there first: on
    # a full disk that commit failed the task waiting for the room (and its dependents). The
    # disk is full for that commit alone here (once), as when what is left is big. (Left by
    # its check: ignored, since what else checks write there is undone once they end.)
    repo = make_repo(tmp_path / "repo", {"README.md": "big\n", ".gitignore": "left.bin\n"})
    (repo / "blob.bin").write_bytes(os.urandom(1 << 20))
    git(repo, "add", "blob.bin")
    git(repo, "commit", "-qm", "a 1 MiB file")
    real = checkpoints.checkpoint
    full: list[str] = []

    def checkpoint(path: Path, *, message: str, **kwargs: object) -> str | None:
        if "for max_disk" in message and not full:
            full.append(message)
            raise CommandError(["git", "add"], 128, "fatal: No space left on device")
        return real(path, message=message, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(checkpoints, "checkpoint", checkpoint)
    monkeypatch.chdir(repo)
    leave = "import os; open('left.bin', 'wb').write(os.urandom(2 << 20))"  # past max_disk
    check = argv_toml([sys.executable, "-c", leave])
    text = (
        f'[defaults]\nagent = "scripted"\njobs = 1\nmax_disk = "2.5M"\nchecks = [{check}]\n'
        '[[task]]\nid = "t0"\nprompt = "x"\n'
        '[[task]]\nid = "t1"\nprompt = "x"\ndepends_on = ["t0"]\n'
    )
    assert cli.main(["run", manifest(repo, text)]) == 0
    assert full  # the removal met the full disk, and waited
    rows = status_json(repo)
    assert rows["t0"]["state"] == rows["t1"]["state"] == "done"
    assert not (repo.parent / "repo.swarm" / "t0").exists()  # removed once there was room


@pytest.mark.timeout(120)  # the manager waited for ever
def test_an_interrupt_as_a_finished_tasks_outcome_is_taken_loses_no_outcome(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ctrl-C (or SIGTERM) while the manager recorded what the guard found, after it took a
    # task's outcome (a full disk makes that wait long): the outcome was dropped, and the
    # stop then waited for it for ever.
    class Watched(queue.Queue[tuple[str, object]]):
        taken = False

        def get(self, block: bool = True, timeout: float | None = None) -> tuple[str, object]:
            item = super().get(block, timeout)
            self.taken = True
            return item

    real_init, real_apply = Runner.__init__, Runner._apply_guard
    fired: list[bool] = []

    def init(self: Runner, *args: object, **kwargs: object) -> None:
        real_init(self, *args, **kwargs)  # type: ignore[arg-type]
        self._done = Watched()  # type: ignore[assignment]

    def apply(self: Runner) -> None:
        if getattr(self._done, "taken", False) and not fired:
            fired.append(True)
            raise KeyboardInterrupt
        real_apply(self)

    monkeypatch.setattr(Runner, "__init__", init)
    monkeypatch.setattr(Runner, "_apply_guard", apply)
    monkeypatch.chdir(repo)
    text = '[[task]]\nid = "a"\nprompt = "x"\nagent = "scripted"\n'
    assert cli.main(["run", manifest(repo, text)]) == 130
    assert fired
    assert status_json(repo)["a"]["state"] == "done"


def test_a_run_interrupted_while_paused_on_a_full_disk_ends_once_there_is_room(
    small_disk: Path, tmp_path: Path
) -> None:
    # Interrupted while it waited for room to record what a task's end told the guard, the
    # manager dropped that task's outcome, then waited for it for ever (room or not).
    # Ignored: what checks write there is undone once they end, but for ignored files.
    repo = make_repo(small_disk / "repo", {".gitignore": "junk.bin\n"})
    filler = small_disk / "filler.bin"
    check = tmp_path / "check.py"
    check.write_text(JUNK_THEN_FULL)
    checks = argv_toml([sys.executable, str(check), str(filler)])
    text = f'[[task]]\nid = "t0"\nprompt = "x"\nagent = "scripted"\nchecks = [{checks}]\n'
    proc = _manager(repo, "run", manifest(repo, text), log_dir=tmp_path)
    try:
        wait_for(lambda: _paused(repo), timeout=120, what="the manager to pause")
        proc.send_signal(signal.SIGTERM)
        filler.unlink()
        assert proc.wait(timeout=120) == 130, (tmp_path / "bg.log").read_text()
    finally:
        if proc.poll() is None:
            _kill_group(proc)


def _paused_until_there_is_room(repo: Path, tmp_path: Path, text: str, disk: Path) -> None:
    """Run the manifest *text* with 2 MB left on *disk*; once it pauses, free it: it ends 0."""
    filler = disk / "filler.bin"
    with filler.open("wb", buffering=0) as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"x" * 65536)
    with filler.open("r+b") as fh:
        fh.truncate(filler.stat().st_size - (2 << 20))
    proc = _manager(repo, "run", manifest(repo, text), log_dir=tmp_path)
    try:
        wait_for(lambda: _paused(repo), timeout=120, what="the manager to pause")
        assert proc.poll() is None
        filler.unlink()
        assert proc.wait(timeout=180) == 0, (tmp_path / "bg.log").read_text()
    finally:
        if proc.poll() is None:
            _kill_group(proc)


def test_a_checkout_that_fills_the_disk_pauses_the_run_until_there_is_room(
    small_disk: Path, tmp_path: Path, write_agent: object
) -> None:
    # Git's checkout says only "unable to write file" when the disk is full.
    repo = make_repo(small_disk / "repo")
    for n in range(4):
        (repo / f"data{n}.bin").write_bytes(os.urandom(1 << 20))  # 4 MB to check out
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "data")
    # 2 MB left: the state fits, the checkout does not.
    text = _writer(write_agent) + '[[task]]\nid = "t1"\nprompt = "x"\n'
    _paused_until_there_is_room(repo, tmp_path, text, small_disk)
    assert status_json(repo)["t1"]["state"] == "done"
    assert git(repo, "show", "swarm/t1:t1.txt") == "work"


def test_a_copy_file_that_fills_the_disk_pauses_the_run_and_is_copied_whole_after(
    small_disk: Path, tmp_path: Path, write_agent: object
) -> None:
    # It failed the task (an internal error) and left a copy cut short, which a retry kept.
    repo = make_repo(small_disk / "repo")
    (repo / ".gitignore").write_text("big.env\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "ignore")
    data = os.urandom(4 << 20)
    (repo / "big.env").write_bytes(data)
    # 2 MB left: the state and the checkout fit, the copy does not.
    text = _writer(write_agent) + 'copy = ["big.env"]\ncopy_mode = "copy"\n'
    text += '[[task]]\nid = "t1"\nprompt = "x"\n'
    _paused_until_there_is_room(repo, tmp_path, text, small_disk)
    assert status_json(repo)["t1"]["state"] == "done"
    worktree = repo.parent / "repo.swarm" / "t1"
    assert (worktree / "big.env").read_bytes() == data
    assert not list(worktree.glob(".swarm-copy-*"))


@pytest.mark.slow  # long: runs in `scripts/check --slow` (CI runs both)
def test_a_guard_scan_failing_for_a_full_disk_is_told_once(
    small_disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_agent: object
) -> None:
    # git names its temporary pack at random: each failed scan said another name.
    repo = make_repo(small_disk / "repo")
    go, full, packs = tmp_path / "go", tmp_path / "full", tmp_path / "packs"
    # The guard packs the agent's commits once the disk is full, and counts its tries.
    git_first_on_path(tmp_path, monkeypatch, lambda real: (
        "#!/bin/sh\n"
        'case " $* " in *" pack-objects "*)\n'
        f"  while [ ! -e {shlex.quote(str(full))} ]; do sleep 0.05; done\n"
        f'  {real} "$@"; code=$?; echo $code >> {shlex.quote(str(packs))}; exit $code;;\n'
        "esac\n"
        f'exec {real} "$@"\n'
    ))  # fmt: skip
    agent = write_agent(
        "import pathlib, subprocess, time\n"
        "pathlib.Path('work.txt').write_text('work\\n')\n"
        "subprocess.run(['git', 'add', 'work.txt'], check=True)\n"
        "subprocess.run(['git', 'commit', '-qm', 'work'], check=True)\n"
        "with open('filler.bin', 'wb', buffering=0) as fh:\n"
        "    try:\n"
        "        while True:\n"
        "            fh.write(b'x' * 65536)\n"
        "    except OSError:\n"
        "        pass\n"
        f"pathlib.Path({str(full)!r}).touch()\n"
        f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.05)\n"
        "pathlib.Path('filler.bin').unlink()\n"
    )
    text = f'[defaults]\nagent = {argv_toml(agent)}\n[[task]]\nid = "t1"\nprompt = "x"\n'
    proc = _manager(repo, "run", manifest(repo, text), log_dir=tmp_path)
    try:

        def failed_three_times() -> bool:
            tries = packs.read_text().split() if packs.exists() else []
            return tries.count("128") >= 3

        wait_for(failed_three_times, timeout=120, what="three scans to fail")
        go.touch()
        assert proc.wait(timeout=180) == 0, (tmp_path / "bg.log").read_text()
    finally:
        if proc.poll() is None:
            _kill_group(proc)
    assert git(repo, "show", "swarm/t1:work.txt") == "work"
    told = [line for line in swarm(repo, "status").stdout.splitlines() if "guard:" in line]
    assert len(told) == 1, told
    assert told[0].startswith("guard: objects scan failed: `git pack-objects")
    # When it began (and how many times, had a scan gone well between the failures).
    assert re.search(
        r"tmp_pack_XXXXXX' write error\. Out of diskspace \((\d+ times )?since ", told[0]
    )
    errors = json.loads(swarm(repo, "status", "--json").stdout)["guard_errors"]
    assert [e["job"] for e in errors] == ["objects"]
    assert errors[0]["ts"] <= errors[0]["last_ts"]
    output = (tmp_path / "bg.log").read_text()  # the run's own output, too
    assert output.count("guard: objects scan failed") == 1, output
    report = swarm(repo, "report").stdout
    assert "guard scans that failed (1):" in report


def test_a_state_directory_deleted_on_a_full_disk_is_written_back_once_there_is_room(
    small_disk: Path, tmp_path: Path, write_agent: object
) -> None:
    repo = make_repo(small_disk / "repo")
    go, started = tmp_path / "go", tmp_path / "started"
    agent = write_agent(
        "import pathlib, time\n"
        f"pathlib.Path({str(started)!r}).touch()\n"
        f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.05)\n"
        "pathlib.Path('work.txt').write_text('work\\n')\n"
    )
    text = f'[defaults]\nagent = {argv_toml(agent)}\n[[task]]\nid = "t1"\nprompt = "x"\n'
    proc = _manager(repo, "run", manifest(repo, text), log_dir=tmp_path)
    log = tmp_path / "bg.log"
    filler = small_disk / "filler.bin"
    try:
        wait_for(started.exists, timeout=120, what="the agent")
        with filler.open("wb", buffering=0) as fh, contextlib.suppress(OSError):
            while True:
                fh.write(b"x" * 65536)
        # Gone from its path, as deleted, but its files still hold their room (deleted, they
        # would free the guard's small files: room enough to write the store back).
        (repo / ".git" / "swarm").rename(repo / ".git" / "swarm-deleted")

        def told() -> bool:
            return "cannot be written back" in log.read_text()

        wait_for(lambda: told() or proc.poll() is not None, timeout=120, what="the manager")
        assert proc.poll() is None, log.read_text()  # waiting, not dead
        assert not (repo / ".git" / "swarm" / "state.db").exists()  # nothing half-written
        shutil.rmtree(repo / ".git" / "swarm-deleted")
        filler.unlink()
        go.touch()
        assert proc.wait(timeout=180) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            _kill_group(proc)
    out = log.read_text()
    assert out.count("was deleted during the run and cannot be written back") == 1, out
    assert "the run waits until there is room: free some space" in out
    assert "was deleted during the run and is written back" in out
    assert "Traceback" not in out
    assert status_json(repo)["t1"]["state"] == "done"  # the morning finds the run
    assert git(repo, "show", "swarm/t1:work.txt") == "work"


@pytest.mark.long
def test_resume_on_a_full_disk_says_so_in_one_line(
    small_disk: Path, tmp_path: Path, write_agent: object
) -> None:
    repo = make_repo(small_disk / "repo")
    pid_file = tmp_path / "agent.pid"
    agent = write_agent(
        "import os, pathlib, time\n"
        f"pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid()))\n"
        "time.sleep(600)\n"
    )
    text = f'[defaults]\nagent = {argv_toml(agent)}\n[[task]]\nid = "a"\nprompt = "x"\n'
    proc = _manager(repo, "run", manifest(repo, text))
    agent_pid = int(written(pid_file, timeout=120, what="the agent"))
    _kill_group(proc)
    # Unbuffered: a buffered file keeps what the full disk refused, and fails again at close.
    with (small_disk / "filler.bin").open("wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"x" * 65536)
        except OSError:
            pass
    try:
        out = swarm(repo, "resume")
        assert out.returncode == 1
        assert out.stderr.count("\n") == 1
        assert "No space left on device" in out.stderr
        assert "free some space, then run `swarm resume`" in out.stderr
        assert "Traceback" not in out.stderr
    finally:
        (small_disk / "filler.bin").unlink()
        swarm(repo, "stop")
    assert not pid_alive(agent_pid)


def _running(repo: Path) -> bool:
    """Whether task `a` is recorded running (False before the run is)."""
    out = swarm(repo, "status", "--json")
    return out.returncode == 0 and json.loads(out.stdout)["tasks"][0]["state"] == "running"


@pytest.mark.slow  # long: SQLite's 30-second busy timeout passes first
def test_a_write_lock_another_program_holds_on_the_state_pauses_the_run_and_loses_nothing(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # A `sqlite3` shell left in a transaction while an agent ends: its work must still land.
    go = tmp_path / "go"
    agent = write_agent(
        "import pathlib, sys, time\n"
        "pathlib.Path('work.txt').write_text('work')\n"
        "while not pathlib.Path(sys.argv[1]).exists():\n    time.sleep(0.05)\n"
    )
    text = f'[[task]]\nid = "a"\nprompt = "x"\nagent = {argv_toml([*agent, str(go)])}\n'
    proc = _manager(repo, "run", manifest(repo, text))
    try:
        wait_for(lambda: _running(repo), what="the agent")
        shell = sqlite3.connect(repo / ".git" / "swarm" / "state.db", isolation_level=None)
        shell.execute("BEGIN EXCLUSIVE")
        try:
            go.touch()  # the agent ends: the manager cannot record it
            held = "paused: another program holds the state database's write lock; retrying"
            wait_for(lambda: held in swarm(repo, "status").stdout, timeout=120, what="pause")
            out = swarm(repo, "stop")  # any command that writes: one line, exit 1
            assert out.returncode == 1, out.stdout + out.stderr
            assert out.stderr.count("\n") == 1, out.stderr
            assert "is locked by another program" in out.stderr
        finally:
            shell.execute("ROLLBACK")
            shell.close()
        assert proc.wait(timeout=120) == 0
    finally:
        proc.kill()
    row = status_json(repo)["a"]
    assert row["state"] == "done", row
    assert git(repo, "show", "swarm/a:work.txt") == "work"


@pytest.mark.long
def test_a_first_run_on_a_full_disk_says_to_run_it_again_and_leaves_no_half_store(
    small_disk: Path,
) -> None:
    # It said `swarm resume`, which then found no run, and left a store with no schema that
    # `swarm status` refused until the disk had room.
    repo = make_repo(small_disk / "repo")
    filler = small_disk / "filler.bin"
    with filler.open("wb", buffering=0) as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"x" * 4096)
    out = swarm(repo, "run", "--agent", "scripted", "-t", "a=p")
    filler.unlink()
    assert (out.returncode, out.stderr.count("\n")) == (1, 1), out.stdout + out.stderr
    assert out.stderr.endswith("free some space, then run the same command again\n"), out.stderr
    assert not list((repo / ".git" / "swarm").glob("state.db*"))
    again = swarm(repo, "run", "--agent", "scripted", "-t", "a=p")
    assert again.returncode == 0, again.stdout + again.stderr


@pytest.mark.long
def test_a_look_at_the_runs_works_while_the_disk_is_full(small_disk: Path) -> None:
    # The morning after a run filled the disk: SQLite cannot open the state to write (it
    # cannot create its shared-memory file), and a plain `git status` cannot refresh an index.
    repo = make_repo(small_disk / "repo")
    assert swarm(repo, "run", "--agent", "scripted", "-t", "a=p").returncode == 0
    with (small_disk / "filler.bin").open("wb", buffering=0) as fh:  # nothing kept to fail
        try:
            while True:
                fh.write(b"x" * 65536)
        except OSError:
            pass
    note = f"note: the disk is full; showing {repo}/.git/swarm/state.db as last written\n"
    try:
        for args in (["status", "--json"], ["runs"], ["report"], ["logs", "a"], ["diff"]):
            out = swarm(repo, *args)
            assert (out.returncode, out.stderr) == (0, note), (args, out.stderr)
        assert json.loads(swarm(repo, "status", "--json").stdout)["tasks"][0]["state"] == "done"
        assert swarm(repo, "notes").returncode == 0  # a look too: it wrote nothing
        # A report written to that disk: no bad input of yours (exit 2), nothing half-written.
        html = swarm(repo, "report", "--html", str(small_disk / "night.html"))
        assert html.returncode == 1, html.stderr
        assert html.stderr.endswith("free some space, then run `swarm report` again\n")
        assert not [p for p in small_disk.iterdir() if "night.html" in p.name]
        planned = swarm(repo, "clean")  # a dry run: it looks
        assert (planned.stderr, planned.stdout.splitlines()[-1]) == (
            "",
            "1 to fix, 1 kept; run again with --yes to fix them",
        )
        assert swarm(repo, "doctor").stdout == "nothing to clean\n"
        cleaning = swarm(repo, "clean", "--yes")  # it must record what it does: not now
        assert cleaning.returncode == 1
        assert cleaning.stderr.count("\n") == 1
        assert "free some space" in cleaning.stderr
    finally:
        (small_disk / "filler.bin").unlink()
    assert swarm(repo, "status").stderr == ""  # writable again: no note


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_manager_killed_at_random_moments_loses_nothing(tmp_path: Path) -> None:
    trials = [run_trial(tmp_path / f"trial{seed}", seed) for seed in range(20)]
    report = "\n".join(str(t) for t in trials)
    assert all(t.resume_code == 0 for t in trials), report
    assert sum(t.done for t in trials) == TASKS * len(trials), report
    assert sum(t.lost_writes for t in trials) == 0, report
    assert sum(t.double_runs for t in trials) == 0, report
    assert sum(t.survivors for t in trials) == 0, report
    assert sum(t.saw_manager_gone for t in trials) >= 10, report  # most kills land mid-run


def _unrecorded_launch(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, writes: int = 40
) -> tuple[Path, int]:
    """A dead manager whose agent runs but no attempt records it; (fake dir, agent pid).

    The agent makes *writes* writes 0.05 s apart (40: about two seconds), then ends.
    """
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "settings.json").write_text(json.dumps([writes, 0.05]))
    for key, value in install_fake_claude(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("CRASH_FAKE_DIR", str(fake))
    text = '[defaults]\nagent = "claude"\n[[task]]\nid = "a"\nprompt = "x"\n'
    proc = _manager(repo, "run", manifest(repo, text))
    launches = fake / "a.launches"
    agent = int(written(launches, timeout=120, what="the agent"))
    _kill_group(proc)
    unrecord_launch(repo, "a", 1)
    return fake, agent


@pytest.mark.long
@pytest.mark.parametrize("agent_ends_first", [False, True])
def test_agent_launched_but_not_recorded_is_adopted_not_run_twice(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, agent_ends_first: bool
) -> None:
    fake, agent = _unrecorded_launch(repo, tmp_path, monkeypatch)
    launches = fake / "a.launches"
    if agent_ends_first:
        wait_for(lambda: not pid_alive(agent), timeout=120, what="the agent to end")
    else:
        assert pid_alive(agent)
    out = swarm(repo, "resume")
    assert out.returncode == 0, out.stdout + out.stderr
    assert launches.read_text().split() == [str(agent)]  # never launched twice
    assert status_json(repo)["a"]["state"] == "done"
    logged = (fake / "a.writes").read_text().splitlines()
    assert git(repo, "show", "swarm/a:a.txt").splitlines() == logged
    assert len(logged) == 40


# Says nothing: its log stays empty. Writes its pid (one line per launch), its work, waits for
# the gate, then ends.
SILENT = """
import os, pathlib, sys, time
launches, gate = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
with launches.open('a') as out:
    out.write(f'{os.getpid()}\\n')
pathlib.Path('a.txt').write_text('work\\n')
while not gate.exists():
    time.sleep(0.02)
"""


@pytest.mark.parametrize("end", ["resume", "stop"])
def test_a_silent_agent_that_ended_unrecorded_is_not_launched_again(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]], end: str
) -> None:
    # `swarm stop` recorded such an attempt stopped (its task too), not as it went.
    launches, gate = tmp_path / "launches", tmp_path / "gate"
    agent = [*write_agent(SILENT), str(launches), str(gate)]
    proc = _manager(
        repo,
        "run",
        manifest(repo, f'[[task]]\nid = "a"\nprompt = "x"\nagent = {argv_toml(agent)}\n'),
    )
    pid = int(written(launches, timeout=120, what="the agent"))
    _kill_group(proc)
    gate.touch()
    wait_for(lambda: not pid_alive(pid), timeout=120, what="the agent to end")
    unrecord_launch(repo, "a", 1)
    assert not next((repo / ".git" / "swarm" / "runs").rglob("attempt-1.log")).read_text()
    out = swarm(repo, end)
    assert out.returncode == 0, out.stdout + out.stderr
    assert launches.read_text().split() == [str(pid)]  # its shim's record proves the launch
    assert status_json(repo)["a"]["state"] == "done"  # the exit code the shim recorded
    assert git(repo, "show", "swarm/a:a.txt") == "work"


# Writes its pid, then waits for the gate before writing late work.
LINGERING = """
import os, pathlib, sys, time
pathlib.Path(sys.argv[1]).write_text(str(os.getpid()))
while not pathlib.Path(sys.argv[2]).exists():
    time.sleep(0.02)
pathlib.Path('late.txt').write_text('late\\n')
"""


def _lingering_run(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]]
) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """A run of task `a` whose agent lingers: the manager, its agent's pid file and its gate."""
    pid_file, gate = tmp_path / "pid", tmp_path / "gate"
    agent = [*write_agent(LINGERING), str(pid_file), str(gate)]
    task = f'[[task]]\nid = "a"\nprompt = "x"\nagent = {argv_toml(agent)}\n'
    return _manager(repo, "run", manifest(repo, task)), pid_file, gate


def _agent_pid(pid_file: Path) -> int:
    """The pid the lingering agent wrote, once it has."""
    return int(written(pid_file, what="the agent"))


def test_an_agent_whose_shim_is_killed_does_not_outlive_its_task(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]]
) -> None:
    proc, pid_file, gate = _lingering_run(repo, tmp_path, write_agent)
    try:
        pid = _agent_pid(pid_file)
        shim = psutil.Process(pid).ppid()
        os.kill(shim, signal.SIGKILL)  # as the OOM killer would
        assert proc.wait(timeout=120) == 1
        assert status_json(repo)["a"]["state"] == "failed"
        # Killed with its shim's tree, not left to write work nobody checkpoints.
        assert not pid_alive(pid)
    finally:
        gate.touch()  # whatever happened, nothing of the test's waits on
    assert not (repo.parent / "repo.swarm" / "a" / "late.txt").exists()


# Waits for the gate (argv[1]), then ends with its work done, or failed when argv[2] says so.
GATED = """
import os, pathlib, sys, time
while not pathlib.Path(sys.argv[1]).exists():
    time.sleep(0.02)
pathlib.Path(os.environ['SWARM_TASK_ID'] + '.txt').write_text('work\\n')
sys.exit(int(sys.argv[2]))
"""


@pytest.mark.long
@pytest.mark.parametrize("how", ["stop", "force"])
def test_an_agent_that_ended_while_no_manager_watched_is_not_taken_for_stopped(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]], how: str
) -> None:
    # `swarm stop` and `swarm run --force` of a dead manager's run marked every open task
    # stopped: finished work went unmerged (merge skips stopped tasks), failed ones hid.
    gate = tmp_path / "gate"
    agent = write_agent(GATED)
    text = "".join(
        f'[[task]]\nid = "{t}"\nprompt = "x"\nagent = {argv_toml([*agent, str(gate), code])}\n'
        for t, code in (("ok", "0"), ("bad", "3"))
    )
    proc = _manager(repo, "run", manifest(repo, text))
    runs = repo / ".git" / "swarm" / "runs"
    db = repo / ".git" / "swarm" / "state.db"

    def recorded() -> bool:  # both agents started, and their attempts recorded
        try:
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
                count = conn.execute("SELECT COUNT(*) FROM attempts").fetchone()[0]
        except sqlite3.Error:  # the store is being made
            return False
        return bool(count == 2)

    wait_for(lambda: db.exists() and recorded(), what="both agents")
    _kill_group(proc)  # the agents, in their shims' sessions, go on
    gate.touch()

    def ended() -> bool:
        records = [json.loads(p.read_text()) for p in runs.rglob("attempt-1.exit.json")]
        return len(records) == 2 and all(r.get("ended_at") and r.get("cleaned") for r in records)

    wait_for(ended, what="both agents to end unwatched")
    (run_id,) = [p.name for p in runs.iterdir()]
    if how == "stop":
        out = swarm(repo, "stop")
    else:
        out = swarm(repo, "run", "--force", "--agent", " ".join(agent), "-t", "zz=x")
    assert out.returncode in {0, 1}, out.stdout + out.stderr
    rows = {
        t["task_id"]: t
        for t in json.loads(swarm(repo, "status", "--json", "--run", run_id).stdout)["tasks"]
    }
    assert (rows["ok"]["state"], rows["bad"]["state"]) == ("done", "failed")
    assert git(repo, "show", "swarm/ok:ok.txt") == "work"
    if how == "stop":  # nor said to be stopped ("stopped: ok, bad")
        assert out.stdout == "nothing to stop\n", out.stdout


# Does its work, waits for the gate (argv[1]), then plants a `core.fsmonitor` and a hook
# that touch argv[2] in the repository's own git files, and ends.
PLANTS_UNWATCHED = """
import pathlib, subprocess, sys, time
gate, ran = pathlib.Path(sys.argv[1]), sys.argv[2]
pathlib.Path('a.txt').write_text('work\\n')
while not gate.exists():
    time.sleep(0.02)
common = pathlib.Path(subprocess.run(['git', 'rev-parse', '--git-common-dir'],
                      capture_output=True, text=True, check=True).stdout.strip()).resolve()
subprocess.run(['git', 'config', '--file', str(common / 'config'), 'core.fsmonitor',
                f'touch {ran}'], check=True)
hook = common / 'hooks' / 'post-commit'
hook.parent.mkdir(exist_ok=True)
hook.write_text(f'#!/bin/sh\\ntouch {ran}\\n')
hook.chmod(0o755)
"""


def _agent_ends_unwatched(
    repo: Path,
    agent: list[str],
    gate: Path,
    *,
    started: Callable[[], bool],
    meanwhile: Callable[[], None] | None = None,
) -> Path:
    """Run task `a` with *agent* and kill its manager once *started* (the agent goes on, in
    its shim's session); do *meanwhile*, open *gate*, wait until the agent ended unwatched.

    Returns the runs' directory.
    """
    text = f'[[task]]\nid = "a"\nprompt = "x"\nagent = {argv_toml(agent)}\n'
    proc = _manager(repo, "run", manifest(repo, text))
    runs = repo / ".git" / "swarm" / "runs"
    wait_for(started, what="the agent")
    _kill_group(proc)
    if meanwhile is not None:
        meanwhile()
    gate.touch()

    def ended() -> bool:
        return any(json.loads(p.read_text()).get("ended_at") for p in runs.rglob("*.exit.json"))

    wait_for(ended, what="the agent to end unwatched")
    return runs


def test_git_files_an_agent_changed_while_no_manager_watched_are_put_back_by_resume(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # The resumed guard took git's files as it found them for its baseline: a `core.fsmonitor`
    # an agent planted while no manager ran stayed, to run with your next `git status`.
    gate, ran = tmp_path / "gate", tmp_path / "ran"
    agent = [*write_agent(PLANTS_UNWATCHED), str(gate), str(ran)]
    started = (repo.parent / "repo.swarm" / "a" / "a.txt").exists
    _agent_ends_unwatched(repo, agent, gate, started=started)
    out = swarm(repo, "resume")
    assert out.returncode == 1, out.stdout + out.stderr
    row = status_json(repo)["a"]
    assert row["state"] == "failed"
    assert "git's own files config, hooks/post-commit; restored" in str(row["reason"])
    planted = subprocess.run(
        ["git", "config", "--get-all", "core.fsmonitor"], cwd=repo, check=False
    )
    assert planted.returncode == 1  # none
    assert not (repo / ".git" / "hooks" / "post-commit").exists()
    git(repo, "status")
    assert not ran.exists()
    assert git(repo, "show", "swarm/a:a.txt") == "work"  # its work kept on its branch


# Waits for the gate (argv[1]), then commits its work: with rerere on, git makes `rr-cache`.
COMMITS_UNWATCHED = """
import pathlib, subprocess, sys, time
while not pathlib.Path(sys.argv[1]).exists():
    time.sleep(0.02)
pathlib.Path('a.txt').write_text('work\\n')
subprocess.run(['git', 'add', 'a.txt'], check=True)
subprocess.run(['git', 'commit', '-q', '-m', 'work'], check=True)
"""


def test_the_rerere_cache_a_commit_made_while_no_manager_watched_is_no_outside_write(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]]
) -> None:
    git(repo, "config", "rerere.enabled", "true")
    gate = tmp_path / "gate"
    agent = [*write_agent(COMMITS_UNWATCHED), str(gate)]
    runs = repo / ".git" / "swarm" / "runs"
    _agent_ends_unwatched(repo, agent, gate, started=lambda: any(runs.rglob("attempt-1.exit.json")))
    assert (repo / ".git" / "rr-cache").is_dir()
    out = swarm(repo, "resume")
    assert out.returncode == 0, out.stdout + out.stderr
    assert status_json(repo)["a"]["state"] == "done"


def test_doctor_names_a_run_whose_manager_died_after_its_agents_ended(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # With no agent left alive nothing of the run was an orphan: `swarm doctor --yes` said
    # "nothing to clean" and left its tasks unfinished, their work uncommitted.
    gate = tmp_path / "gate"
    agent = [*write_agent(GATED), str(gate), "0"]
    runs = repo / ".git" / "swarm" / "runs"
    _agent_ends_unwatched(repo, agent, gate, started=lambda: any(runs.rglob("attempt-1.exit.json")))
    (run_id,) = [p.name for p in runs.iterdir()]
    note = (
        f"run {run_id}: 1 task not final, their work in their worktrees: `swarm resume`"
        " carries it on (`swarm stop` ends it)"
    )
    for args in (["doctor"], ["doctor", "--yes"]):
        out = swarm(repo, *args)
        assert (out.returncode, out.stdout.splitlines()[0]) == (0, note), out.stdout
    assert swarm(repo, "resume").returncode == 0
    assert swarm(repo, "doctor").stdout == "nothing to clean\n"
    assert git(repo, "show", "swarm/a:a.txt") == "work"


# Does its work, waits for the gate (argv[1]), then checks out the submodule `lib` in its
# worktree (git makes its git dir in the worktree's admin dir) and ends.
POPULATES_UNWATCHED = """
import pathlib, subprocess, sys, time
pathlib.Path('a.txt').write_text('work\\n')
while not pathlib.Path(sys.argv[1]).exists():
    time.sleep(0.02)
subprocess.run(['git', '-c', 'protocol.file.allow=always', 'submodule', 'update', '--init',
                'lib'], check=True, capture_output=True)
"""


def test_a_submodule_an_agent_checked_out_while_no_manager_watched_is_its_own_work(
    tmp_path: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # Its git dir, made in the task's own admin dir, is the task's: a resumed guard that
    # judged it as a change of git's files failed the task and deleted the git dir.
    repo = make_repo(tmp_path / "repo")
    add_submodule(repo, tmp_path / "lib-origin")
    gate = tmp_path / "gate"
    agent = [*write_agent(POPULATES_UNWATCHED), str(gate)]
    worktree = repo.parent / "repo.swarm" / "a"
    _agent_ends_unwatched(repo, agent, gate, started=(worktree / "a.txt").exists)
    out = swarm(repo, "resume")
    assert out.returncode == 0, out.stdout + out.stderr
    assert status_json(repo)["a"]["state"] == "done"
    assert (worktree / "lib" / "README.md").read_text() == "lib\n"
    assert git(worktree / "lib", "rev-parse", "--is-inside-work-tree").strip() == "true"


# Checks out the submodule `lib` in its worktree (git makes its git dir in the worktree's
# admin dir) and ends.
POPULATES = """
import pathlib, subprocess
subprocess.run(['git', '-c', 'protocol.file.allow=always', 'submodule', 'update', '--init',
                'lib'], check=True, capture_output=True)
pathlib.Path('a.txt').write_text('work\\n')
"""


def test_a_submodule_a_task_checked_out_watched_is_kept_by_the_run_resumed_after(
    tmp_path: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # The live guard took its git dir into its baseline but never saved that: the resumed
    # run took it for the adopted task b's outside write, failed b and deleted a's config.
    repo = make_repo(tmp_path / "repo")
    add_submodule(repo, tmp_path / "lib-origin")
    gate = tmp_path / "gate"
    populates = argv_toml(write_agent(POPULATES))
    waits = argv_toml([*write_agent(WAITS_UNWATCHED), str(gate)])
    text = (
        f'[[task]]\nid = "a"\nprompt = "x"\nagent = {populates}\n'
        f'[[task]]\nid = "b"\nprompt = "x"\nagent = {waits}\n'
    )
    proc = _manager(repo, "run", manifest(repo, text))
    wait_for((repo.parent / "repo.swarm" / "b" / "a.txt").exists, what="agent b")
    wait_for(lambda: status_json(repo).get("a", {}).get("state") == "done", what="task a")
    _kill_group(proc)  # agent b, in its shim's session, goes on
    (config,) = (repo / ".git" / "worktrees").glob("*/modules/lib/config")
    before = config.read_bytes()
    gate.touch()
    runs = repo / ".git" / "swarm" / "runs"

    def ended() -> bool:
        exits = runs.glob("*/b/*.exit.json")
        return any(json.loads(p.read_text()).get("ended_at") for p in exits)

    wait_for(ended, what="agent b to end unwatched")
    out = swarm(repo, "resume")

    assert out.returncode == 0, out.stdout + out.stderr
    rows = status_json(repo)
    assert rows["a"]["state"] == rows["b"]["state"] == "done", rows
    assert config.read_bytes() == before
    worktree = repo.parent / "repo.swarm" / "a"
    assert git(worktree / "lib", "rev-parse", "--is-inside-work-tree").strip() == "true"


# Does its work, waits for the gate (argv[1]), then ends.
WAITS_UNWATCHED = """
import pathlib, sys, time
pathlib.Path('a.txt').write_text('work\\n')
while not pathlib.Path(sys.argv[1]).exists():
    time.sleep(0.02)
"""


def test_your_worktree_moved_while_no_manager_watched_is_followed_not_put_back(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # git rewrote its ties (its admin dir's `gitdir`): written back, they would name the old
    # place, and your worktree would be broken.
    git(repo, "worktree", "add", "-q", "-b", "mine", str(tmp_path / "mine"))
    gate = tmp_path / "gate"
    agent = [*write_agent(WAITS_UNWATCHED), str(gate)]

    def move() -> None:
        git(repo, "worktree", "move", str(tmp_path / "mine"), str(tmp_path / "moved"))

    started = (repo.parent / "repo.swarm" / "a" / "a.txt").exists
    _agent_ends_unwatched(repo, agent, gate, started=started, meanwhile=move)
    out = swarm(repo, "resume")
    assert out.returncode == 0, out.stdout + out.stderr
    assert status_json(repo)["a"]["state"] == "done"
    assert git(tmp_path / "moved", "rev-parse", "--abbrev-ref", "HEAD").strip() == "mine"
    assert str(tmp_path / "moved") in git(repo, "worktree", "list")


def test_your_worktrees_git_file_deleted_while_no_manager_watched_is_put_back(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # Taken for git's move or removal (its admin dir still named it): left deleted, and your
    # worktree was no checkout at all (`git status` there read the repository above, if any).
    mine = tmp_path / "mine"
    git(repo, "worktree", "add", "-q", "-b", "mine", str(mine))
    before = (mine / ".git").read_bytes()
    gate = tmp_path / "gate"
    agent = [*write_agent(WAITS_UNWATCHED), str(gate)]
    started = (repo.parent / "repo.swarm" / "a" / "a.txt").exists
    delete = (mine / ".git").unlink  # as the agent, going on unwatched, does
    _agent_ends_unwatched(repo, agent, gate, started=started, meanwhile=delete)
    out = swarm(repo, "resume")

    assert out.returncode == 1, out.stdout + out.stderr
    row = status_json(repo)["a"]
    assert row["state"] == "failed", row
    assert f"{mine}/.git" in str(row["reason"]), row
    assert (mine / ".git").read_bytes() == before
    assert git(mine, "rev-parse", "--abbrev-ref", "HEAD").strip() == "mine"
    git(mine, "status")


def test_your_worktree_deleted_while_no_manager_watched_is_not_made_again_nor_blamed(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # Its folder deleted by hand (no `git worktree prune`): the resumed guard wrote its `.git`
    # back into a new folder of that one file and failed the agent that ran unwatched for it.
    mine = tmp_path / "mine"
    git(repo, "worktree", "add", "-q", "-b", "mine", str(mine))
    gate = tmp_path / "gate"
    agent = [*write_agent(WAITS_UNWATCHED), str(gate)]
    started = (repo.parent / "repo.swarm" / "a" / "a.txt").exists
    runs = _agent_ends_unwatched(
        repo, agent, gate, started=started, meanwhile=lambda: shutil.rmtree(mine)
    )
    out = swarm(repo, "resume")

    assert out.returncode == 0, out.stdout + out.stderr
    assert status_json(repo)["a"]["state"] == "done"
    assert "git's own files" not in out.stdout + out.stderr
    assert not os.path.lexists(mine)  # not made again
    (log,) = runs.glob("*/guard/guard.log")
    assert f"your worktree {mine} was deleted: no longer watched" in log.read_text()
    # What git keeps of it goes with your next prune, as after any folder deleted by hand.
    assert "prunable" in git(repo, "worktree", "list", "--porcelain")
    git(repo, "worktree", "prune")
    assert str(mine) not in git(repo, "worktree", "list")


def test_your_worktrees_commondir_pointed_at_a_copy_while_no_manager_watched_is_put_back(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # Every tie changed unwatched was taken as git's move: pointed at a copy of .git with a
    # core.fsmonitor, your `git status` in that worktree ran it after a resume said done.
    mine = tmp_path / "mine"
    git(repo, "worktree", "add", "-q", "-b", "mine", str(mine))
    commondir = repo / ".git" / "worktrees" / "mine" / "commondir"
    before = commondir.read_bytes()
    gate = tmp_path / "gate"
    agent = [*write_agent(WAITS_UNWATCHED), str(gate)]
    copy, marker = tmp_path / "copy", tmp_path / "planted-program-ran"

    def plant() -> None:  # as the agent, going on unwatched, does
        shutil.copytree(repo / ".git", copy, symlinks=True, ignore=shutil.ignore_patterns("swarm"))
        config = str(copy / "config")
        git(repo, "config", "--file", config, "core.fsmonitor", f"touch {marker}; false #")
        commondir.write_text(f"{copy}\n")

    started = (repo.parent / "repo.swarm" / "a" / "a.txt").exists
    _agent_ends_unwatched(repo, agent, gate, started=started, meanwhile=plant)
    out = swarm(repo, "resume")

    assert out.returncode == 1, out.stdout + out.stderr
    row = status_json(repo)["a"]
    assert row["state"] == "failed", row
    assert "worktrees/mine/commondir" in str(row["reason"]), row
    assert commondir.read_bytes() == before
    subprocess.run(["git", "status"], cwd=mine, check=True, capture_output=True)
    assert not marker.exists()


# Leaves a daemon that ignores SIGTERM (its pid in argv[1]), then ends with its work done.
DAEMON_LEFT = """
import os, pathlib, signal, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        pathlib.Path(sys.argv[1]).write_text(str(os.getpid()))
        while True:
            time.sleep(0.2)
    os._exit(0)
while not pathlib.Path(sys.argv[1]).exists():
    time.sleep(0.02)
pathlib.Path('work.txt').write_text('work\\n')
"""


def test_a_daemon_left_by_an_agent_whose_shim_is_killed_in_its_grace_is_killed(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # The shim records the agent's end, then gives what it left running its grace: killed
    # then (the OOM killer), it left the daemon running after the run, taken for ended.
    daemon_file = tmp_path / "daemon"
    agent = [*write_agent(DAEMON_LEFT), str(daemon_file)]
    task = '[defaults]\nkill_grace = "3s"\n[[task]]\nid = "a"\nprompt = "x"\n'
    task += f"agent = {argv_toml(agent)}\n"
    proc = _manager(repo, "run", manifest(repo, task))
    daemon = 0
    try:
        daemon = int(written(daemon_file, what="daemon"))
        runs = repo / ".git" / "swarm" / "runs"

        def ended() -> dict[str, object] | None:
            found = list(runs.rglob("attempt-1.exit.json"))
            record = json.loads(found[0].read_text()) if found else {}
            return record if record.get("ended_at") else None

        wait_for(ended, what="the agent's end recorded")
        os.kill(int(ended()["pid"]), signal.SIGKILL)  # in its grace, as the OOM killer would
        assert proc.wait(timeout=120) == 0
        assert status_json(repo)["a"]["state"] == "done"
        assert not pid_alive(daemon)
    finally:
        if daemon and pid_alive(daemon):
            os.kill(daemon, signal.SIGKILL)


# Leaves a daemon with no SWARM_* in its environment that ignores SIGTERM (its pid in argv[1]),
# then SIGKILLs its own shim: nothing marks the daemon as the task's any more.
DAEMON_KILLS_ITS_SHIM = """
import os, pathlib, signal, sys, time
shim = os.getppid()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        env = {k: v for k, v in os.environ.items() if not k.startswith('SWARM')}
        code = ('import os, pathlib, signal, sys, time\\n'
                'signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n'
                'pathlib.Path(sys.argv[1]).write_text(str(os.getpid()))\\n'
                'while True: time.sleep(0.2)\\n')
        os.execve(sys.executable, [sys.executable, '-c', code, sys.argv[1]], env)
    os._exit(0)
while not pathlib.Path(sys.argv[1]).exists() or not pathlib.Path(sys.argv[1]).read_text():
    time.sleep(0.02)
os.kill(shim, signal.SIGKILL)
time.sleep(60)
"""


def test_a_daemon_whose_agent_wiped_its_mark_and_killed_its_shim_does_not_outlive_the_run(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # Outside --sandbox an agent can SIGKILL its own shim after clearing SWARM_SHIM from its
    # daemon's environment: the daemon, re-parented to init, lived on after the run.
    daemon_file = tmp_path / "daemon"
    agent = [*write_agent(DAEMON_KILLS_ITS_SHIM), str(daemon_file)]
    task = f'[[task]]\nid = "a"\nprompt = "x"\nagent = {argv_toml(agent)}\n'
    proc = _manager(repo, "run", manifest(repo, task))
    daemon = 0
    try:
        daemon = int(written(daemon_file, what="daemon"))
        assert proc.wait(timeout=120) == 1
        assert status_json(repo)["a"]["state"] == "failed"
        assert not pid_alive(daemon)
    finally:
        if daemon and pid_alive(daemon):
            os.kill(daemon, signal.SIGKILL)


def test_a_stop_whose_manager_dies_before_acting_on_it_stops_the_task_itself(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]]
) -> None:
    proc, pid_file, gate = _lingering_run(repo, tmp_path, write_agent)
    pid = _agent_pid(pid_file)
    os.kill(proc.pid, signal.SIGSTOP)  # alive, holding its lock, acting on nothing
    stop = subprocess.Popen(
        [sys.executable, "-m", "worktree_swarm.cli", "stop", "a"], cwd=repo,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    def asked() -> bool:
        with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as db:
            return bool(db.execute("SELECT stop_requested FROM tasks").fetchone()[0])

    try:
        wait_for(asked, what="the stop request")
        _kill_group(proc)  # the manager dies before it acts on the request
        out, err = stop.communicate(timeout=120)
        assert (stop.returncode, out) == (0, "stopped: a\n"), err
        assert status_json(repo)["a"]["state"] == "stopped"
        assert not pid_alive(pid)
    finally:
        gate.touch()  # whatever happened, nothing of the test's waits on


@pytest.mark.long
def test_a_stop_a_live_manager_does_not_act_on_fails_naming_the_task_and_is_acted_on_later(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # A manager alive (its lock held) but frozen: `swarm stop` must not say `stopped` of a
    # task that is not, nor stop it behind the manager's back; it fails and says why.
    proc, pid_file, gate = _lingering_run(repo, tmp_path, write_agent)
    try:
        pid = _agent_pid(pid_file)
        os.kill(proc.pid, signal.SIGSTOP)
        wait_for(
            lambda: psutil.Process(proc.pid).status() == psutil.STATUS_STOPPED,
            what="the manager to stop",
        )
        # Named as what it is, by status and by the stop (it said only "not stopped yet").
        frozen = f"manager (pid {proc.pid}) is stopped (Ctrl-Z or SIGSTOP)"
        assert frozen in swarm(repo, "status").stdout
        out = swarm(repo, "stop", "a", timeout=120)  # said once it stayed stopped for a grace
        assert (out.returncode, out.stdout) == (1, ""), out.stderr
        said = (
            f"swarm: {frozen}: it watches, launches and stops nothing until it goes on (`kill"
            f" -CONT {proc.pid}`, or `fg`); it stops a then"
        )
        assert out.stderr.strip().splitlines() == [said]
        assert pid_alive(pid)  # the manager's to stop: nothing was done behind its back
        os.kill(proc.pid, signal.SIGCONT)  # it comes back and acts on the request
        assert proc.wait(timeout=120) == 1
        assert status_json(repo)["a"]["state"] == "stopped"
        assert not pid_alive(pid)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
        gate.touch()  # whatever happened, nothing of the test's waits on


# Says when it runs and when SIGTERM reached it (which it ignores).
STUBBORN = """
import pathlib, signal, sys, time
started, termed = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
signal.signal(signal.SIGTERM, lambda *_: termed.touch())
started.touch()
while True:
    time.sleep(0.05)
"""


@pytest.mark.slow  # long: runs in `scripts/check --slow` (CI runs both)
def test_a_stop_its_manager_died_during_is_recorded_as_stopped(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]]
) -> None:
    started, termed = tmp_path / "started", tmp_path / "termed"
    agent = [*write_agent(STUBBORN), str(started), str(termed)]
    text = '[defaults]\nkill_grace = "2s"\n[[task]]\nid = "a"\nprompt = "x"\n'
    text += f"agent = {argv_toml(agent)}\n"
    proc = _manager(repo, "run", manifest(repo, text))
    wait_for(started.exists, timeout=120, what="the agent")
    stop = subprocess.Popen(
        [sys.executable, "-m", "worktree_swarm.cli", "stop", "a"], cwd=repo,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_for(termed.exists, timeout=120, what="the stop to reach the agent")
    stop.kill()  # the user's `swarm stop` gone too (Ctrl-C): only `swarm resume` is left
    stop.wait(timeout=30)
    _kill_group(proc)  # during kill_grace: the shim kills the agent at its deadline
    record = next((repo / ".git" / "swarm" / "runs").rglob("attempt-1.exit.json"))
    wait_for(lambda: json.loads(record.read_text())["ended_at"] is not None, what="its end")
    swarm(repo, "resume")
    assert status_json(repo)["a"]["state"] == "stopped"


@pytest.mark.long
@pytest.mark.parametrize("step", ["checks", "setup"])
def test_a_check_or_setup_a_dead_manager_left_running_is_killed_before_it_runs_again(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]], step: str
) -> None:
    starts, gate = tmp_path / "starts", tmp_path / "gate"
    check = write_agent(
        "import os, pathlib, time\n"
        f"with open({str(starts)!r}, 'a') as out:\n    out.write(f'{{os.getpid()}}\\n')\n"
        f"while not pathlib.Path({str(gate)!r}).exists():\n    time.sleep(0.02)\n"
    )
    text = _writer(write_agent) + '[[task]]\nid = "a"\nprompt = "x"\n'
    text += f"{step} = [{json.dumps(shlex.join(check))}]\n"
    proc = _manager(repo, "run", manifest(repo, text))
    first = int(written(starts, timeout=120, what=f"the {step} step"))
    _kill_group(proc)  # its check runs on, in a session of its own
    assert pid_alive(first)
    resume = _manager(repo, "resume")
    try:
        wait_for(lambda: len(starts.read_text().split()) == 2, timeout=120, what="it again")
        assert not pid_alive(first)  # never two checks (or setups) at once in one worktree
    finally:
        gate.touch()  # whatever happened, nothing of the test's waits on
    assert resume.wait(timeout=120) == 0
    assert status_json(repo)["a"]["state"] == "done"


def launches_of(fake: Path) -> str:
    """The pids the fake Claude Code wrote for task `a`, a line per launch."""
    return (fake / "a.launches").read_text()


@pytest.mark.long
def test_stop_after_a_crash_also_stops_an_agent_no_attempt_records(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Writing for minutes: it still runs when stopped, however slow the machine (with two
    # seconds of writes, a loaded machine saw it end by itself first).
    fake, agent = _unrecorded_launch(repo, tmp_path, monkeypatch, writes=4000)
    assert pid_alive(agent)
    out = swarm(repo, "stop")
    assert out.returncode == 0, out.stderr
    assert not pid_alive(agent)
    assert status_json(repo)["a"]["state"] == "stopped"
    assert "a write 0" in git(repo, "show", "swarm/a:a.txt")  # its work checkpointed
    # The stopped launch is its first attempt: a retry runs the agent again (it took the
    # stop's own SIGTERM for how that attempt failed, and failed the task without running it).
    (fake / "settings.json").write_text(json.dumps([40, 0.05]))  # this one ends by itself
    retried = swarm(repo, "retry")
    assert retried.returncode == 0, retried.stdout + retried.stderr
    row = status_json(repo)["a"]
    assert (row["state"], row["attempt"]) == ("done", 2), row
    assert launches_of(fake).count("\n") == 2


def _failed_in_its_session(repo: Path, fake: Path) -> None:
    """A run of claude task `a` (*fake*: the fake CLI's directory) that fails half done."""
    # A rate limit after some work (no retry used), then one with nothing done: no retries left.
    plan(fake, "a", "limit", "stall", "finish")
    text = '[defaults]\nagent = "claude"\nretries = 0\n[[task]]\nid = "a"\nprompt = "do a"\n'
    assert swarm(repo, "run", manifest(repo, text)).returncode == 1


@pytest.mark.long
def test_retry_resumes_the_agents_session_on_its_branch(
    repo: Path,
    fake_claude: Path,  # noqa: F811 - the fixture imported above
) -> None:
    _failed_in_its_session(repo, fake_claude)
    assert status_json(repo)["a"]["state"] == "failed"
    out = swarm(repo, "retry", "a")
    assert out.returncode == 0, out.stdout + out.stderr
    first, _, retried = calls(fake_claude, "a")
    assert "--resume" not in first["argv"]
    assert retried["argv"][retried["argv"].index("--resume") + 1] == "sess-a-1"
    assert first["cwd"] == retried["cwd"]  # the kept worktree
    assert git(repo, "show", "swarm/a:a.txt") == "half done\nfinished in session sess-a-1"


@pytest.mark.long
def test_a_retry_after_clean_deleted_the_branch_starts_afresh_from_the_base(
    repo: Path,
    fake_claude: Path,  # noqa: F811 - the fixture imported above
) -> None:
    _failed_in_its_session(repo, fake_claude)
    assert swarm(repo, "clean", "--force", "--yes").returncode == 0  # its half-done work gone
    out = swarm(repo, "retry", "a")
    assert out.returncode == 0, out.stdout + out.stderr
    retried = calls(fake_claude, "a")[-1]
    assert "--resume" not in retried["argv"]  # not told to go on with work that is gone
    assert swarm(repo, "clean", "--force", "--yes").returncode == 0
    out = swarm(repo, "retry", "a")
    assert out.returncode == 2
    assert "is done; its branch swarm/a was deleted since" in out.stderr, out.stderr


def _store_says(repo: Path, query: str) -> bool:
    """The first value *query* reads from the run's store (read-only), as a truth; False while
    the store, its tables or the row are not there yet."""
    db = repo / ".git" / "swarm" / "state.db"
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            row = conn.execute(query).fetchone()
    except sqlite3.OperationalError:
        return False
    return row is not None and bool(row[0])


OUTSIDE_THEN_WAIT = """
import os, pathlib, sys, time
root, checkout = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
task = os.environ['SWARM_TASK_ID']
pathlib.Path(task + '.txt').write_text('work\\n')
(root / (task + '.started')).touch()
if task == 'a':  # while b runs too: two suspects, neither is stopped at once
    while not (root / 'b.started').exists():
        time.sleep(0.02)
    (checkout / 'evil.txt').write_text('outside\\n')
while not (root / 'go').exists():
    time.sleep(0.05)
"""


@pytest.mark.long
@pytest.mark.parametrize("then", ["resume", "stop"])
def test_a_guard_verdict_outlives_the_manager_that_reached_it(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]], then: str
) -> None:
    agent = [*write_agent(OUTSIDE_THEN_WAIT), str(tmp_path), str(repo)]
    text = f"[defaults]\njobs = 2\nagent = {argv_toml(agent)}\n"
    text += '[[task]]\nid = "a"\nprompt = "x"\n[[task]]\nid = "b"\nprompt = "x"\n'
    proc = _manager(repo, "run", manifest(repo, text))

    def judged() -> bool:
        return _store_says(repo, "SELECT count(*) FROM events WHERE kind = 'outside_write'")

    try:
        wait_for(judged, timeout=120, what="the guard's verdict")
        _kill_group(proc)  # both suspects still run: neither had ended, so neither was failed
        if then == "resume":
            (tmp_path / "go").touch()
            assert swarm(repo, "resume").returncode == 1
        else:  # stopped by hand instead: still failed, as the verdict says
            assert swarm(repo, "stop").returncode == 0
    finally:  # nothing left waiting, whatever failed
        (tmp_path / "go").touch()
        if proc.poll() is None:
            _kill_group(proc)
    rows = status_json(repo)
    for task, other in (("a", "b"), ("b", "a")):
        assert rows[task]["state"] == "failed", rows[task]
        assert str(rows[task]["reason"]).startswith(
            f"wrote outside its worktree (or one of {other}, running at the same time):"
            " files evil.txt in the main checkout; restored"
        )
    assert not (repo / "evil.txt").exists()


ENDS_UNWATCHED_THEN_OUTSIDE = """
import os, pathlib, sys, time
root, checkout = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
task = os.environ['SWARM_TASK_ID']
pathlib.Path(task + '.txt').write_text('work\\n')
if task == 'a':  # ends on its own while no manager runs
    (root / 'a.pid').write_text(str(os.getpid()))
    while not (root / 'go').exists():
        time.sleep(0.05)
else:  # b, started by the resumed manager: writes outside at once
    (checkout / 'evil.txt').write_text('outside\\n')
"""


@pytest.mark.long
def test_an_agent_that_ended_while_no_manager_ran_is_no_suspect_of_a_later_write(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # The resumed manager's guard counted it as running from the resume on: it failed, done,
    # for what the agent started after it wrote outside its worktree.
    agent = [*write_agent(ENDS_UNWATCHED_THEN_OUTSIDE), str(tmp_path), str(repo)]
    text = f"[defaults]\njobs = 1\nagent = {argv_toml(agent)}\n"
    text += '[[task]]\nid = "a"\nprompt = "x"\n[[task]]\nid = "b"\nprompt = "x"\n'
    text += 'depends_on = ["a"]\n'
    proc = _manager(repo, "run", manifest(repo, text))
    try:
        pid = int(written(tmp_path / "a.pid", timeout=120, what="a's agent"))
        _kill_group(proc)
        (tmp_path / "go").touch()
        wait_for(lambda: not pid_alive(pid), what="a's agent to end")
        assert swarm(repo, "resume").returncode == 1
    finally:
        (tmp_path / "go").touch()
        if proc.poll() is None:
            _kill_group(proc)
    rows = status_json(repo)
    assert rows["a"]["state"] == "done", rows["a"]
    assert rows["b"]["state"] == "failed"
    assert str(rows["b"]["reason"]).startswith(
        "wrote outside its worktree: files evil.txt in the main checkout; restored"
    ), rows["b"]["reason"]
    assert not (repo / "evil.txt").exists()


def test_a_resume_tells_what_changed_in_your_checkout_while_no_manager_watched(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # Whoever wrote it (you, or an agent just before its manager was killed, faster than the
    # guard's next look), the resumed guard takes the checkout as it finds it: it says so.
    pid_file = tmp_path / "agent.pid"
    agent = write_agent(
        "import os, pathlib, time\n"
        "pathlib.Path('w.txt').write_text('work\\n')\n"
        f"pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid()))\n"
        f"while not pathlib.Path({str(tmp_path / 'go')!r}).exists():\n"
        "    time.sleep(0.05)\n"
    )
    text = f'[defaults]\nagent = {argv_toml(agent)}\n[[task]]\nid = "a"\nprompt = "x"\n'
    proc = _manager(repo, "run", manifest(repo, text))
    try:
        written(pid_file, timeout=120, what="the agent")
        _kill_group(proc)
        (repo / "README.md").write_text("changed unwatched\n")
        (tmp_path / "go").touch()
        out = swarm(repo, "resume")
    finally:
        (tmp_path / "go").touch()
        if proc.poll() is None:
            _kill_group(proc)
    assert out.returncode == 0, out.stdout + out.stderr
    line = next(ln for ln in out.stdout.splitlines() if "while no manager watched" in ln)
    assert line.startswith(
        "guard: your checkout changed while no manager watched it: README.md; kept as it is"
    ), line
    patch = line.rsplit("git apply -R ", 1)[1].split("`")[0]
    assert (repo / "README.md").read_text() == "changed unwatched\n"  # yours, kept
    git(repo, "apply", "-R", patch)  # and undone by the command it names
    assert git(repo, "status", "--porcelain") == ""
    assert status_json(repo)["a"]["state"] == "done"


def test_the_patch_of_what_changed_unwatched_keeps_no_secret(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    key = "Zq8xV3mP9tL2wR7kJ4nB"
    monkeypatch.setenv("MY_API_KEY", key)
    pid_file = tmp_path / "agent.pid"
    agent = write_agent(
        "import os, pathlib, time\n"
        f"pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid()))\n"
        f"while not pathlib.Path({str(tmp_path / 'go')!r}).exists():\n"
        "    time.sleep(0.05)\n"
        "pathlib.Path('w.txt').write_text('work\\n')\n"
    )
    text = f'[defaults]\nagent = {argv_toml(agent)}\n[[task]]\nid = "a"\nprompt = "x"\n'
    proc = _manager(repo, "run", manifest(repo, text))
    try:
        written(pid_file, timeout=120, what="the agent")
        _kill_group(proc)
        (repo / "notes.txt").write_text(f"key={key}\n")
        (tmp_path / "go").touch()
        out = swarm(repo, "resume")
    finally:
        (tmp_path / "go").touch()
        if proc.poll() is None:
            _kill_group(proc)
    assert out.returncode == 0, out.stdout + out.stderr
    line = next(ln for ln in out.stdout.splitlines() if "while no manager watched" in ln)
    patch = Path(line.rsplit("git apply -R ", 1)[1].split("`")[0])
    assert "notes.txt" in patch.read_text()
    assert key not in patch.read_text()


@pytest.mark.long
def test_a_retry_after_a_stop_without_its_manager_tells_what_changed_unwatched(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # `swarm stop` ends the run its killed manager left, dropping the guard's baselines; the
    # tree of your checkout's last one, kept for the next manager, lived only in the guard's
    # store, which went with them: the retry's guard compared with nothing, and said nothing.
    pid_file = tmp_path / "agent.pid"
    go = tmp_path / "go"
    agent = write_agent(
        "import os, pathlib, time\n"
        f"pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid()))\n"
        f"while not pathlib.Path({str(go)!r}).exists():\n"
        "    time.sleep(0.05)\n"
        "pathlib.Path('w.txt').write_text('work\\n')\n"
    )
    text = f'[defaults]\nagent = {argv_toml(agent)}\n[[task]]\nid = "a"\nprompt = "x"\n'
    (repo / "notes.txt").write_text("my uncommitted notes\n")  # the baseline: a tree of its own
    proc = _manager(repo, "run", manifest(repo, text))
    try:
        written(pid_file, timeout=120, what="the agent")
        _kill_group(proc)
    finally:
        if proc.poll() is None:
            _kill_group(proc)
    (repo / "README.md").write_text("changed unwatched\n")
    out = swarm(repo, "stop", "a")
    assert out.returncode == 0, out.stdout + out.stderr
    go.touch()  # the retry's agent works and ends
    out = swarm(repo, "retry", "a")
    line = next((ln for ln in out.stdout.splitlines() if "while no manager watched" in ln), "")
    assert line.startswith(
        "guard: your checkout changed while no manager watched it: README.md; kept as it is"
    ), out.stdout + out.stderr
    assert (repo / "README.md").read_text() == "changed unwatched\n"  # yours, kept


@pytest.mark.long
def test_a_retry_after_a_run_that_ended_takes_changes_in_your_checkout_as_yours(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # Its manager looked last as the run ended: nothing of an agent's can hide in the
    # checkout since, and no line suggests one.
    failed_until(repo, tmp_path / "succeed", write_agent)
    (repo / "README.md").write_text("edited after the run\n")
    (tmp_path / "succeed").touch()
    out = swarm(repo, "retry", "a")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "while no manager watched" not in out.stdout
    assert (repo / "README.md").read_text() == "edited after the run\n"


SWITCH_BRANCH = """
import pathlib, subprocess, sys
git = sys.argv[1]  # the real one: swarm's own git hangs in this test
pathlib.Path('a.txt').write_text('work\\n')
subprocess.run([git, 'checkout', '-q', '-b', 'other'], check=True)
subprocess.run([git, 'add', '-A'], check=True)
subprocess.run([git, 'commit', '-q', '-m', 'work on another branch'], check=True)
"""


@pytest.mark.long
def test_a_verdict_on_an_ended_attempt_is_on_record_before_its_checkpoint(
    repo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    write_agent: Callable[[str], list[str]],
) -> None:
    agent = [*write_agent(SWITCH_BRANCH), str(shutil.which("git"))]
    text = f'[[task]]\nid = "a"\nprompt = "x"\nagent = {argv_toml(agent)}\n'
    path = os.environ["PATH"]
    hung = hang_git_at(tmp_path, monkeypatch, "commit")  # the checkpoint after the attempt
    proc = _manager(repo, "run", manifest(repo, text))
    wait_for(hung.exists, timeout=120, what="the checkpoint")
    _kill_group(proc)  # at once: the run loop had no turn to take the verdict
    monkeypatch.setenv("PATH", path)
    swarm(repo, "resume")
    row = status_json(repo)["a"]
    assert row["state"] == "failed", row
    assert row["reason"] == (
        "wrote outside its worktree: its agent switched its worktree from swarm/a to other;"
        " restored"
    )


@pytest.mark.slow  # long: runs in `scripts/check --slow` (CI runs both)
def test_a_timeout_whose_checkpoint_a_crash_cut_stays_a_timeout(
    repo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    write_agent: Callable[[str], list[str]],
) -> None:
    endless = "import pathlib, time\npathlib.Path('work.txt').write_text('work\\n')\n"
    endless += "while True:\n    time.sleep(0.1)\n"
    text = '[defaults]\nkill_grace = "1s"\n[[task]]\nid = "a"\nprompt = "x"\ntimeout = "6s"\n'
    text += f"agent = {argv_toml(write_agent(endless))}\n"
    path = os.environ["PATH"]
    hung = hang_git_at(tmp_path, monkeypatch, "commit")  # the checkpoint after the timeout
    proc = _manager(repo, "run", manifest(repo, text))
    wait_for(hung.exists, timeout=120, what="the checkpoint")
    _kill_group(proc)
    monkeypatch.setenv("PATH", path)
    swarm(repo, "resume")
    row = status_json(repo)["a"]
    assert (row["state"], row["reason"]) == ("timed_out", "timed out after 6s")
    assert git(repo, "show", "swarm/a:work.txt") == "work"


# a: its first attempt waits until b is queued for the only agent slot, so that the repair it
# is then handed waits for that slot; its repair attempt writes what the check wants.
# b: holds the slot until the go file.
REPAIR_BEHIND_B = """
import os, pathlib, sys, time
root, prompt = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]).read_text()
task = os.environ['SWARM_TASK_ID']
with open(root / (task + '.calls'), 'a') as calls:
    calls.write('call\\n')
pathlib.Path(task + '.txt').write_text('work\\n')
(root / (task + '.started')).touch()
if task == 'a' and 'checks on your work failed' in prompt:
    pathlib.Path('fixed.txt').write_text('fixed\\n')
elif task == 'a':
    while not list((root / 'repo' / '.git' / 'swarm' / 'runs').glob('*/b/prompt-1.md')):
        time.sleep(0.02)
else:
    while not (root / 'go').exists():
        time.sleep(0.05)
"""


@pytest.mark.long
def test_a_repair_handed_back_before_a_crash_is_still_given(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]]
) -> None:
    agent = [*write_agent(REPAIR_BEHIND_B), str(tmp_path), "{prompt_file}"]
    waits = (
        f"import pathlib, time\nwhile not pathlib.Path({str(tmp_path / 'a.started')!r}).exists():"
    )
    waits += "\n    time.sleep(0.02)"
    setup = shlex.join([sys.executable, "-c", waits])  # b starts after a's first attempt
    text = f"[defaults]\njobs = 1\nagent = {argv_toml(agent)}\n"
    text += (
        '[[task]]\nid = "a"\nprompt = "do a"\nrepair = 1\nchecks = [["test", "-f", "fixed.txt"]]\n'
    )
    text += f'[[task]]\nid = "b"\nprompt = "do b"\nsetup = [{json.dumps(setup)}]\n'
    proc = _manager(repo, "run", manifest(repo, text))

    def handed_back() -> bool:
        return _store_says(repo, "SELECT instruction IS NOT NULL FROM tasks WHERE task_id = 'a'")

    try:
        wait_for(lambda: (tmp_path / "b.started").exists() and handed_back(), what="a's repair")
        _kill_group(proc)  # the repair waits for b's slot: not started
    finally:
        (tmp_path / "go").touch()
        if proc.poll() is None:
            _kill_group(proc)
    swarm(repo, "resume")
    assert status_json(repo)["a"]["state"] == "done"
    assert len((tmp_path / "a.calls").read_text().split()) == 2  # asked to repair, once
    assert git(repo, "show", "swarm/a:fixed.txt") == "fixed"


@pytest.mark.long
@pytest.mark.parametrize("settle", ["stop", "run --force"])
def test_a_run_whose_manager_was_killed_alone_in_a_checkout_is_stopped_without_its_git(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_agent: object, settle: str
) -> None:
    # As above, but settled by `swarm stop` (or abandoned by `swarm run --force`) instead of
    # resumed. The dead manager's checkout holds the worktree's index lock, as git does, and
    # writes on: it is ended, and its lock goes with it.
    base = git(repo, "rev-parse", "HEAD")
    write_on = (
        'admin=$(sed "s/^gitdir: //" .git); : > "$admin/index.lock"; '
        "while :; do echo hello > README.md; done"
    )
    flag = hang_git_at(tmp_path, monkeypatch, "read-tree", then=write_on)
    text = _writer(write_agent) + '[[task]]\nid = "t1"\nprompt = "x"\n'
    proc = _manager(repo, "run", manifest(repo, text))
    wait_for(flag.exists, timeout=120, what="the checkout to start")
    worktree = repo.parent / "repo.swarm" / "t1"
    writer = next(p for p in psutil.process_iter(["cwd"]) if p.info["cwd"] == str(worktree))
    run_id = json.loads(swarm(repo, "status", "--json").stdout)["run_id"]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    try:
        if settle == "stop":
            out = swarm(repo, "stop")
        else:
            out = swarm(repo, "run", "--force", "--agent", "scripted", "-t", "next=x")
        assert out.returncode == 0, out.stdout + out.stderr
        assert not writer.is_running()
    finally:
        with contextlib.suppress(psutil.Error):
            writer.kill()
    (row,) = json.loads(swarm(repo, "status", "--run", run_id, "--json").stdout)["tasks"]
    assert row["state"] == "stopped"
    assert git(repo, "rev-parse", "swarm/t1") == base  # its checkout was no work
    out = swarm(repo, "clean", "--run", run_id, "--yes")
    assert out.returncode == 0, out.stdout + out.stderr
    assert not worktree.exists()


@pytest.mark.parametrize("settle", ["stop", "run --force"])
def test_a_run_whose_manager_was_killed_in_a_checkpoint_is_stopped_with_its_work(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_agent: object, settle: str
) -> None:
    # The manager's group killed while its checkpoint's `git add` held the worktree's index
    # lock: `swarm stop` (or `swarm run --force`) deletes that lock, as `swarm resume` does,
    # and commits the agent's work; its agent had succeeded (on record): done, as a resume ends it.
    flag, taken = tmp_path / "adding", tmp_path / "taken"
    git_first_on_path(tmp_path, monkeypatch, lambda real: (
        "#!/bin/sh\n"
        'case " $* " in *" add --all --sparse "*)\n'
        f"  if [ -f .git ] && mkdir {shlex.quote(str(taken))} 2>/dev/null; then\n"
        '    admin=$(sed "s/^gitdir: //" .git); : > "$admin/index.lock"\n'
        f"    touch {shlex.quote(str(flag))}; exec sleep 600\n"
        "  fi;;\n"
        "esac\n"
        f'exec {real} "$@"\n'
    ))  # fmt: skip
    text = _writer(write_agent) + '[[task]]\nid = "t1"\nprompt = "x"\n'
    proc = _manager(repo, "run", manifest(repo, text))
    wait_for(flag.exists, timeout=120, what="the checkpoint")
    run_id = json.loads(swarm(repo, "status", "--json").stdout)["run_id"]
    _kill_group(proc)
    if settle == "stop":
        out = swarm(repo, "stop")
    else:
        out = swarm(repo, "run", "--force", "--agent", "scripted", "-t", "next=x")
    assert out.returncode == 0, out.stdout + out.stderr
    (row,) = json.loads(swarm(repo, "status", "--run", run_id, "--json").stdout)["tasks"]
    assert row["state"] == "done"
    assert git(repo, "show", "swarm/t1:t1.txt") == "work"
