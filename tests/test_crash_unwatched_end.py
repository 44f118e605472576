"""A run whose manager died, ended without a resume (`swarm stop`, `swarm run --force`): git's
own files an agent changed while no manager watched are put back and the agent's task failed,
and an attempt whose end the manager recorded before it died is recorded as it ended, as a
resume does."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.conftest import git, hang_git_at, unrecord_launch
from tests.test_crash import PLANTS_UNWATCHED, _kill_group, _manager
from tests.test_resilience import fake_claude, plan  # noqa: F401 - its fixture
from tests.test_run import argv_toml, manifest, status_json, swarm, wait_for

# As PLANTS_UNWATCHED, but it stays running once it planted them (until it is killed).
PLANTS_AND_STAYS = PLANTS_UNWATCHED + "\nwhile True:\n    time.sleep(1)\n"
REASON = "git's own files config, hooks/post-commit; restored"
PLANTED = "config, hooks/post-commit"


def _killed_with_planting_agent(
    repo: Path, tmp_path: Path, source: str, write_agent: Callable[[str], list[str]]
) -> Path:
    """Run task a with the agent *source*, SIGKILL its manager, let the agent plant; `ran`."""
    gate, ran = tmp_path / "gate", tmp_path / "ran"
    agent = [*write_agent(source), str(gate), str(ran)]
    text = f'[[task]]\nid = "a"\nprompt = "x"\nagent = {argv_toml(agent)}\n'
    proc = _manager(repo, "run", manifest(repo, text))
    wait_for((repo.parent / "repo.swarm" / "a" / "a.txt").exists, what="the agent")
    _kill_group(proc)  # the agent, in its shim's session, goes on
    gate.touch()
    return ran


def _shim_recorded_end(repo: Path) -> None:
    """Wait until an agent's shim recorded its end (with no manager to watch it)."""
    runs = repo / ".git" / "swarm" / "runs"

    def ended() -> bool:
        return any(json.loads(p.read_text()).get("ended_at") for p in runs.rglob("*.exit.json"))

    wait_for(ended, what="the agent to end unwatched")


def _ended_unwatched(repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]]) -> Path:
    """Task a's agent plants git's files and ends while no manager watches; `ran`."""
    ran = _killed_with_planting_agent(repo, tmp_path, PLANTS_UNWATCHED, write_agent)
    _shim_recorded_end(repo)
    return ran


def _planted_nothing_runs(repo: Path, ran: Path) -> None:
    """No `core.fsmonitor` or hook left of the agent's: your `git status` runs none."""
    planted = subprocess.run(
        ["git", "config", "--get-all", "core.fsmonitor"], cwd=repo, check=False
    )
    assert planted.returncode == 1  # none
    assert not (repo / ".git" / "hooks" / "post-commit").exists()
    git(repo, "status")
    git(repo, "commit", "-q", "--allow-empty", "-m", "yours")  # the post-commit hook's turn
    assert not ran.exists()


def test_swarm_stop_puts_back_git_files_an_agent_changed_while_no_manager_watched(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # `swarm stop` ended the run and left a `core.fsmonitor` the agent planted once its manager
    # was killed: your next `git status` ran it.
    ran = _killed_with_planting_agent(repo, tmp_path, PLANTS_AND_STAYS, write_agent)
    hook = repo / ".git" / "hooks" / "post-commit"
    wait_for(hook.exists, what="the agent to plant its hook")
    wait_for(lambda: "touch" in hook.read_text(), what="the hook's command")
    out = swarm(repo, "stop")
    assert out.returncode == 0, out.stdout + out.stderr
    # Its agent stopped here, though its task fails: not "nothing to stop".
    assert out.stdout == f"stopped: a; put back git's own files {PLANTED}\n", out.stdout
    said = [line for line in out.stderr.splitlines() if "git's own files" in line]
    assert len(said) == 1, out.stderr
    assert "config, hooks/post-commit changed while no manager watched: put back" in said[0]
    assert "an outside write of a" in said[0]
    row = status_json(repo)["a"]
    assert row["state"] == "failed"
    assert REASON in str(row["reason"])
    _planted_nothing_runs(repo, ran)
    assert git(repo, "show", "swarm/a:a.txt") == "work"  # its work kept on its branch
    # The record of git's files (your config's bytes) goes with the run's end.
    assert not list((repo / ".git" / "swarm" / "runs").glob("*/guard/surface.json"))


def test_swarm_stop_of_agents_that_ended_says_what_it_put_back_not_nothing_to_stop(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # Its agent had ended by itself: `swarm stop` printed "nothing to stop" beside the line
    # saying what it put back.
    ran = _ended_unwatched(repo, tmp_path, write_agent)
    out = swarm(repo, "stop")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout == f"no agent was left to stop; put back git's own files {PLANTED}\n"
    (said,) = out.stderr.splitlines()
    assert f"{PLANTED} changed while no manager watched: put back" in said, said
    assert status_json(repo)["a"]["state"] == "failed"
    _planted_nothing_runs(repo, ran)
    assert swarm(repo, "stop").stdout == "nothing to stop\n"  # and then nothing is left


def test_swarm_run_force_puts_back_git_files_an_agent_changed_while_no_manager_watched(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # `swarm run --force` abandoned the run and left the agent's `core.fsmonitor` in place.
    ran = _ended_unwatched(repo, tmp_path, write_agent)
    runs = repo / ".git" / "swarm" / "runs"
    (old,) = [p.name for p in runs.iterdir()]
    writer = write_agent("import pathlib\npathlib.Path('b.txt').write_text('b\\n')\n")
    text = f'[[task]]\nid = "b"\nprompt = "x"\nagent = {argv_toml(writer)}\n'
    out = swarm(repo, "run", "--force", manifest(repo, text))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"abandoned run {old}" in out.stderr
    said = [line for line in out.stderr.splitlines() if "git's own files" in line]
    assert len(said) == 1, out.stderr
    assert f"run {old}: git's own files config, hooks/post-commit changed" in said[0]
    row = status_json(repo, "--run", old)["a"]
    assert row["state"] == "failed"
    assert REASON in str(row["reason"])
    assert status_json(repo)["b"]["state"] == "done"  # the new run's guard blamed it nothing
    _planted_nothing_runs(repo, ran)
    assert git(repo, "show", "swarm/a:a.txt") == "work"  # its work kept on its branch
    # The record of git's files (your config's bytes) goes with the abandoned run.
    assert not list(runs.glob("*/guard/surface.json"))


@pytest.mark.parametrize("unrecorded", [False, True])
@pytest.mark.parametrize("end", ["stop", "resume"])
def test_what_an_agent_that_ended_while_no_manager_watched_cost_is_counted(
    repo: Path, request: pytest.FixtureRequest, end: str, unrecorded: bool
) -> None:
    # `swarm stop` recorded the end of an agent that finished after its manager was killed
    # (its launch recorded or not) without what it reported it used: its task showed no cost,
    # and no budget counted it.
    fake: Path = request.getfixturevalue("fake_claude")
    plan(fake, "a", "wait")  # its result line: $0.50, 100 tokens in, 20 out
    text = '[[task]]\nid = "a"\nprompt = "x"\nagent = "claude"\n'
    proc = _manager(repo, "run", manifest(repo, text))
    wait_for((fake / "a.pid").exists, what="the agent")
    _kill_group(proc)  # the agent, in its shim's session, goes on
    (fake / "go").touch()
    _shim_recorded_end(repo)
    if unrecorded:
        unrecord_launch(repo, "a", 1)
    out = swarm(repo, end)
    assert out.returncode == 0, out.stdout + out.stderr
    row = status_json(repo)["a"]
    assert row["state"] == "done", row
    assert (row["cost_usd"], row["tokens_in"], row["tokens_out"]) == (0.5, 100, 20), row
    with contextlib.closing(sqlite3.connect(repo / ".git" / "swarm" / "state.db")) as db:
        costs = db.execute("SELECT cost_usd FROM attempts WHERE task_id = 'a'").fetchall()
    assert costs == [(0.5,)]  # the attempt's own, as the budget (`max_cost_usd`) counts it


@pytest.mark.parametrize("end", ["resume", "stop"])
def test_an_agent_whose_launch_went_unrecorded_is_a_suspect_of_git_files_changed_unwatched(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]], end: str
) -> None:
    # A manager killed between an agent's launch and its attempt's record: the agent, no
    # suspect, planted a `core.fsmonitor` and a hook that became the resume's baseline.
    ran = _ended_unwatched(repo, tmp_path, write_agent)
    unrecord_launch(repo, "a", 1)
    out = swarm(repo, end)
    assert out.returncode == (1 if end == "resume" else 0), out.stdout + out.stderr  # a failed
    row = status_json(repo)["a"]
    assert row["state"] == "failed"
    assert REASON in str(row["reason"])
    _planted_nothing_runs(repo, ran)
    assert git(repo, "show", "swarm/a:a.txt") == "work"  # its work kept on its branch


WRITES = "import os, pathlib, signal, sys, time\npathlib.Path('a.txt').write_text('work\\n')\n"


@dataclass(frozen=True, slots=True, kw_only=True)
class End:
    """How task a's attempt ends, and how `swarm stop` and `swarm resume` then record the task."""

    source: str  # the agent; its first argument is a file of the test's own
    toml: str = ""  # the task's settings
    defaults: str = ""  # the run's
    stop: tuple[str, str]  # (state, a part of its reason) after `swarm stop`
    resume: tuple[str, str]  # and after `swarm resume`
    work: bool = True  # its work is on its branch
    step: str = "commit"  # the checkpoint's git the manager is killed in
    claude: str = ""  # the fake `claude`'s step instead (tests/test_resilience.py)


# A rate-limited attempt that a resume would follow with another is `stopped` by a stop, which
# decides nothing about the limit: `swarm retry` runs it again.
ENDS = {
    "done": End(source=WRITES, stop=("done", ""), resume=("done", "")),
    "failed": End(
        source=WRITES + "sys.exit(1)\n",
        stop=("failed", "exited 1"),
        resume=("failed", "exited 1"),
    ),
    "killed_by_signal": End(
        source=WRITES + "os.kill(os.getpid(), signal.SIGKILL)\n",
        stop=("failed", "killed by signal 9"),
        resume=("failed", "killed by signal 9"),
    ),
    "timed_out": End(
        source=WRITES + "time.sleep(600)\n",
        toml='timeout = "3s"\n',
        stop=("timed_out", "timed out after 3s"),
        resume=("timed_out", "timed out after 3s"),
    ),
    "max_log": End(
        source=WRITES + "print('x' * 8192)\n",
        defaults='max_log = "1K"\n',
        stop=("failed", "printed more than max_log"),
        resume=("failed", "printed more than max_log"),
    ),
    "rate_limited": End(  # its retry, after the recorded wait, succeeds
        source=WRITES.replace(
            "pathlib.Path('a",
            "if pathlib.Path(sys.argv[1]).exists():\n"
            "    sys.exit(0)\npathlib.Path(sys.argv[1]).touch()\npathlib.Path('a",
        )
        + "print('Error: 429 Too Many Requests')\nsys.exit(1)\n",
        stop=("stopped", "stopped"),
        resume=("done", ""),
    ),
    "out_of_retries": End(  # no work done: it used a retry, and it had none
        source="import sys\nprint('Error: 429 Too Many Requests')\nsys.exit(1)\n",
        toml="retries = 0\n",
        stop=("stopped", "stopped"),
        resume=("failed", "rate limited and out of retries"),
        work=False,
        step="add",  # nothing to commit
    ),
    "budget": End(  # its cost spent the budget: a resume starts no next attempt
        source="",
        claude="limit",
        defaults="max_cost_usd = 0.05\n",
        stop=("stopped", "stopped"),
        resume=("stopped", "budget reached ($0.10 of $0.05) before attempt 2 started"),
    ),
}


@pytest.mark.parametrize("end", ["stop", "resume"])
@pytest.mark.parametrize("how", list(ENDS))
def test_an_attempt_whose_end_was_recorded_before_its_manager_died_in_its_checkpoint(
    repo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    write_agent: Callable[[str], list[str]],
    request: pytest.FixtureRequest,
    how: str,
    end: str,
) -> None:
    # The manager recorded how the attempt ended, then was killed in its checkpoint: `swarm
    # stop` records the task as it ended, as a resume does (it said "stopped: a" and recorded
    # a timed-out task stopped), and both keep its work.
    case = ENDS[how]
    if case.claude:
        plan(request.getfixturevalue("fake_claude"), "a", case.claude)
        agent = '"claude"'
    else:
        agent = argv_toml([*write_agent(case.source), str(tmp_path / "limited")])
    path = os.environ["PATH"]
    hung = hang_git_at(tmp_path, monkeypatch, case.step)  # the checkpoint after the attempt
    task = f'[[task]]\nid = "a"\nprompt = "x"\nagent = {agent}\n{case.toml}'
    text = f"[defaults]\n{case.defaults}{task}"
    proc = _manager(repo, "run", manifest(repo, text))
    wait_for(hung.exists, timeout=120, what="the checkpoint")
    _kill_group(proc)
    monkeypatch.setenv("PATH", path)
    out = swarm(repo, end)
    state, why = case.stop if end == "stop" else case.resume
    code = 0 if end == "stop" or state == "done" else 1
    assert out.returncode == code, out.stdout + out.stderr
    if end == "stop":  # "stopped: a" only where the stop ended its course
        said = "stopped: a\n" if state == "stopped" else "nothing to stop\n"
        assert out.stdout == said, out.stdout
    row = status_json(repo)["a"]
    assert row["state"] == state, row
    assert why in str(row["reason"]) if why else row["reason"] == "", row
    if case.work:
        assert git(repo, "show", "swarm/a:a.txt") == ("half done" if case.claude else "work")


# Switches its worktree away from its branch, writes its work, and stays running.
SWITCHES_AND_STAYS = """
import pathlib, subprocess, sys, time
subprocess.run(['git', 'checkout', '-q', *sys.argv[2:]], check=True)
pathlib.Path('work.txt').write_text('work\\n')
pathlib.Path(sys.argv[1]).touch()
while True:
    time.sleep(1)
"""


@pytest.mark.parametrize(("how", "to"), [(["--orphan", "x"], "x"), (["main"], "main")])
def test_swarm_stop_puts_a_worktree_its_agent_switched_back_on_its_branch_with_its_work(
    repo: Path,
    tmp_path: Path,
    write_agent: Callable[[str], list[str]],
    how: list[str],
    to: str,
) -> None:
    # The stop's checkpoint committed onto the branch the agent had switched to while no
    # manager watched: your `main`, or a branch of no commit yet (`checkout --orphan`): a root
    # commit of every file there failed the stop ("no merge base"), and after a checkpoint
    # that branch was made at the task's tip, as if the task's branch had been deleted.
    git(repo, "checkout", "-q", "-b", "feature")  # `main` free to be checked out elsewhere
    base = git(repo, "rev-parse", "HEAD")
    wrote = tmp_path / "wrote"
    agent = [*write_agent(SWITCHES_AND_STAYS), str(wrote), *how]
    text = f'[[task]]\nid = "a"\nprompt = "x"\nagent = {argv_toml(agent)}\n'
    proc = _manager(repo, "run", manifest(repo, text))
    wait_for(wrote.exists, what="the agent to switch its worktree and write")
    _kill_group(proc)  # the agent, in its shim's session, goes on
    out = swarm(repo, "stop")
    assert out.returncode == 0, out.stdout + out.stderr
    row = status_json(repo)["a"]
    assert row["state"] == "failed"
    assert row["reason"] == f"its agent switched its worktree from swarm/a to {to}; put back"
    worktree = repo.parent / "repo.swarm" / "a"
    assert git(worktree, "symbolic-ref", "HEAD") == "refs/heads/swarm/a"
    assert git(repo, "rev-parse", "swarm/a^") == base  # its work on top of where it was
    assert git(repo, "show", "swarm/a:work.txt") == "work"
    assert git(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/") == (
        "feature\nmain\nswarm/a"  # no branch made for the orphan; `main` as it was
    )
    assert git(repo, "rev-parse", "main") == base


# Writes its work and stays running (until it is killed).
WRITES_AND_STAYS = """
import pathlib, sys, time
pathlib.Path('work.txt').write_text('work\\n')
pathlib.Path(sys.argv[1]).touch()
while True:
    time.sleep(1)
"""


@pytest.mark.long
def test_swarm_stop_of_a_worktree_switched_to_main_as_its_checkpoint_stages_leaves_main(
    repo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    write_agent: Callable[[str], list[str]],
) -> None:
    # Switched after the stop's look at its HEAD (its put-back), before its checkpoint's
    # commit: `git commit` committed the work onto wherever HEAD was by then, your `main`.
    git(repo, "checkout", "-q", "-b", "feature")  # `main` free to be checked out elsewhere
    wrote = tmp_path / "wrote"
    agent = [*write_agent(WRITES_AND_STAYS), str(wrote)]
    text = f'[[task]]\nid = "a"\nprompt = "x"\nagent = {argv_toml(agent)}\n'
    proc = _manager(repo, "run", manifest(repo, text))
    wait_for(wrote.exists, what="the agent to write")
    _kill_group(proc)  # the agent, in its shim's session, goes on
    tips = {b: git(repo, "rev-parse", b) for b in ("main", "feature", "swarm/a")}
    worktree = repo.parent / "repo.swarm" / "a"
    # The checkpoint's `add` comes after that look: the worktree goes to `main` right then.
    real = shlex.quote(str(shutil.which("git")))
    switch = f"{real} -C {shlex.quote(str(worktree))} switch -q main"
    switched = hang_git_at(tmp_path, monkeypatch, "add", then=f'{switch}; exec {real} "$@"')

    out = swarm(repo, "stop")

    assert switched.exists()
    assert out.returncode == 0, out.stdout + out.stderr
    assert {b: git(repo, "rev-parse", b) for b in tips} == tips
    said = f"{worktree} is on main now, not swarm/a: nothing committed there, its work stays in it"
    assert f"swarm: task a: {said}\n" in out.stderr, out.stderr
    row = status_json(repo)["a"]
    assert row["state"] == "stopped", row
    assert said in str(row["reason"]), row
    assert (worktree / "work.txt").read_text() == "work\n"
    assert git(worktree, "symbolic-ref", "--short", "HEAD") == "main"


# Points its worktree's `.git` at your git dir (argv[2]), writes its work, and stays running.
REPOINTS_AND_STAYS = """
import pathlib, sys, time
pathlib.Path('.git').write_text('gitdir: ' + sys.argv[2] + '\\n')
pathlib.Path('work.txt').write_text('work\\n')
pathlib.Path(sys.argv[1]).touch()
while True:
    time.sleep(1)
"""


def test_swarm_stop_commits_nothing_where_an_agent_pointed_its_worktrees_git_file(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # The stop's checkpoint ran git in the worktree whatever its `.git` named: the agent's work
    # was committed onto your checked-out branch, in your checkout's git dir and index.
    base = git(repo, "rev-parse", "HEAD")
    wrote = tmp_path / "wrote"
    agent = [*write_agent(REPOINTS_AND_STAYS), str(wrote), str(repo / ".git")]
    text = f'[[task]]\nid = "a"\nprompt = "x"\nagent = {argv_toml(agent)}\n'
    proc = _manager(repo, "run", manifest(repo, text))
    wait_for(wrote.exists, what="the agent to point its .git elsewhere and write")
    _kill_group(proc)  # the agent, in its shim's session, goes on
    out = swarm(repo, "stop")
    assert out.returncode == 0, out.stdout + out.stderr
    assert git(repo, "rev-parse", "HEAD") == base  # nothing committed in your checkout
    worktree = repo.parent / "repo.swarm" / "a"
    row = status_json(repo)["a"]
    assert row["state"] == "failed"
    assert row["reason"] == (
        f"{worktree}/.git no longer names its registration in {repo / '.git' / 'worktrees'}: "
        "its work since the last checkpoint is left there, uncommitted"
    )
    assert (worktree / "work.txt").read_text() == "work\n"  # left in place
    assert git(repo, "rev-parse", "swarm/a") == base


# Once its manager is dead, swaps its admin dir's `logs/HEAD` for a link to a file of yours.
PLANTS_REFLOG_LINK_AND_STAYS = """
import os, pathlib, subprocess, sys, time
go, victim, planted = map(pathlib.Path, sys.argv[1:4])
pathlib.Path('work.txt').write_text('work\\n')
while not go.exists():
    time.sleep(0.02)
admin = pathlib.Path(subprocess.run(
    ['git', 'rev-parse', '--absolute-git-dir'], capture_output=True, text=True, check=True
).stdout.strip())
(admin / 'logs').mkdir(exist_ok=True)
(admin / 'logs' / 'HEAD').unlink(missing_ok=True)
os.symlink(victim, admin / 'logs' / 'HEAD')
planted.touch()
while True:
    time.sleep(1)
"""


def test_swarm_stop_writes_through_no_link_an_agent_planted_in_its_worktrees_admin_dir(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # The stop's put-back of HEAD and its checkpoint appended their reflog lines to whatever
    # file the agent's link named: any file you can write.
    victim = tmp_path / "victim.txt"
    victim.write_text("yours\n")
    go, planted = tmp_path / "go", tmp_path / "planted"
    agent = [*write_agent(PLANTS_REFLOG_LINK_AND_STAYS), str(go), str(victim), str(planted)]
    text = f'[[task]]\nid = "a"\nprompt = "x"\nagent = {argv_toml(agent)}\n'
    proc = _manager(repo, "run", manifest(repo, text))
    wait_for((repo.parent / "repo.swarm" / "a" / "work.txt").exists, what="the agent to work")
    _kill_group(proc)  # the agent, in its shim's session, goes on: no guard sees the link
    go.touch()
    wait_for(planted.exists, what="the agent to plant its link")
    out = swarm(repo, "stop")
    assert out.returncode == 0, out.stdout + out.stderr
    assert victim.read_text() == "yours\n"
    assert git(repo, "show", "swarm/a:work.txt") == "work"  # its work kept on its branch
    row = status_json(repo)["a"]
    assert (row["state"], row["reason"]) == (
        "failed",
        "planted links where git writes (worktrees/a/logs/HEAD); removed first",
    )


# Once its manager is killed, it plants a filter in your global config (its task's files
# select it) and ends.
PLANTS_A_GLOBAL_FILTER = """
import os, pathlib, subprocess, sys, time
gate, ran = pathlib.Path(sys.argv[1]), sys.argv[2]
pathlib.Path('a.txt').write_text('work\\n')
while not gate.exists():
    time.sleep(0.02)
mine = pathlib.Path(os.environ['HOME']) / '.gitconfig'
subprocess.run(['git', 'config', '--file', str(mine), 'filter.x.clean', f'touch {ran}; cat'],
               check=True)
"""


@pytest.mark.parametrize("end", ["stop", "force"])
def test_a_filter_planted_in_your_global_config_while_no_manager_watched_is_the_agents(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]], end: str
) -> None:
    # `swarm stop` (or `swarm run --force`) ending a run whose manager died never looked at
    # your global config: a filter planted there meanwhile went unreported, and the next run
    # trusted it, so its checkpoint ran it.
    (repo / ".gitattributes").write_text("*.txt filter=x\n")
    git(repo, "add", ".gitattributes")
    git(repo, "commit", "-q", "-m", "attributes")
    ran = _killed_with_planting_agent(repo, tmp_path, PLANTS_A_GLOBAL_FILTER, write_agent)
    _shim_recorded_end(repo)
    (old,) = [p.name for p in (repo / ".git" / "swarm" / "runs").iterdir()]
    writer = write_agent("import pathlib\npathlib.Path('b.txt').write_text('b\\n')\n")
    text = f'[[task]]\nid = "b"\nprompt = "x"\nagent = {argv_toml(writer)}\n'
    if end == "stop":
        out = swarm(repo, "stop")
        assert out.returncode == 0, out.stdout + out.stderr
        swarm(repo, "run", manifest(repo, text))
    else:
        out = swarm(repo, "run", "--force", manifest(repo, text))
    said = [line for line in out.stderr.splitlines() if ".gitconfig: filter.x.clean" in line]
    assert len(said) == 1, out.stderr
    assert "changed while no manager watched" in said[0]
    assert "an outside write of a" in said[0]
    row = status_json(repo, "--run", old)["a"]
    assert row["state"] == "failed"
    assert ".gitconfig: filter.x.clean" in str(row["reason"])
    reason = str(status_json(repo)["b"]["reason"])  # the next run: switched off, b.txt left out
    assert reason.startswith("changed files whose filter comes from your global"), reason
    assert not Path(ran).exists()


# It works, says who it is (its shim and group), then stays until killed: it plants nothing.
WORKS_AND_STAYS = """
import os, pathlib, sys, time
pathlib.Path('a.txt').write_text('work\\n')
pathlib.Path(sys.argv[1]).write_text(f'{os.getppid()} {os.getpgid(0)}')
while True:
    time.sleep(1)
"""


@pytest.mark.parametrize("end", ["stop", "resume"])
def test_your_global_filter_added_once_no_agent_outlived_the_manager_is_yours(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]], end: str
) -> None:
    # Its manager killed, then its agent and shim (as a reboot does), then you add a filter to
    # your global config (as `git lfs install` does): `swarm stop` blamed the agent for it,
    # and every later run left your filtered files out of its checkpoints; `swarm resume`
    # left them out of the task's own checkpoint before its guard took the filter as yours.
    (repo / ".gitattributes").write_text("*.txt filter=x\n")
    git(repo, "add", ".gitattributes")
    git(repo, "commit", "-q", "-m", "attributes")
    who = tmp_path / "who"
    agent = [*write_agent(WORKS_AND_STAYS), str(who)]
    text = f'[[task]]\nid = "a"\nprompt = "x"\nagent = {argv_toml(agent)}\n'
    manager = _manager(repo, "run", manifest(repo, text))
    wait_for(lambda: who.exists() and " " in who.read_text(), what="the agent")
    _kill_group(manager)  # the agent, in its shim's session, goes on
    shim, group = (int(n) for n in who.read_text().split())
    with contextlib.suppress(ProcessLookupError):
        os.kill(shim, signal.SIGKILL)  # before the agent: it records no end
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)
    wait_for(lambda: not _running(shim) and not _running(group), what="the agent's end")
    git(repo, "config", "--global", "filter.x.clean", "tr a-z A-Z")
    out = swarm(repo, end)
    assert "Traceback" not in out.stderr, out.stderr
    assert "filter.x.clean" not in out.stdout + out.stderr
    (old,) = [p.name for p in (repo / ".git" / "swarm" / "runs").iterdir()]
    assert "filter.x.clean" not in str(status_json(repo, "--run", old)["a"]["reason"])
    assert git(repo, "show", "swarm/a:a.txt") == "WORK"  # its checkpoint ran your filter
    writer = write_agent("import pathlib\npathlib.Path('b.txt').write_text('b\\n')\n")
    text = f'[[task]]\nid = "b"\nprompt = "x"\nagent = {argv_toml(writer)}\n'
    said = swarm(repo, "run", manifest(repo, text))
    assert status_json(repo)["b"]["state"] == "done", said.stdout + said.stderr
    assert git(repo, "show", "swarm/b:b.txt") == "B"  # your filter ran in its checkpoint


def _running(pid: int) -> bool:
    """Whether process *pid* runs (a zombie does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_filter_planted_in_your_global_config_while_no_manager_watched_fails_its_resume(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # Its agent outlived the manager and planted it: judged before the resume's checkpoint.
    (repo / ".gitattributes").write_text("*.txt filter=x\n")
    git(repo, "add", ".gitattributes")
    git(repo, "commit", "-q", "-m", "attributes")
    ran = _killed_with_planting_agent(repo, tmp_path, PLANTS_A_GLOBAL_FILTER, write_agent)
    _shim_recorded_end(repo)
    out = swarm(repo, "resume")
    assert "Traceback" not in out.stderr, out.stderr
    row = status_json(repo)["a"]
    assert row["state"] == "failed", out.stdout + out.stderr
    assert not ran.exists()
    record = json.loads((repo / ".git" / "swarm" / "user-config.json").read_text())
    assert record["planted"], out.stdout + out.stderr  # blamed: untrusted by later runs
