"""End to end: rate limits resumed in the same session, budget, repair, crash resume.

A fake `claude` on PATH speaks Claude Code's `-p --output-format json` interface: it prints one
JSON result object, honours `--resume <session>`, and is scripted per task through files.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shlex
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import filelock
import psutil
import pytest

from tests.conftest import git, script_interpreter
from tests.test_run import (
    AgentFactory,
    argv_toml,
    branch_file,
    manifest,
    pid_alive,
    status_json,
    swarm,
    swarm_bg,
    wait_for,
)
from tests.test_watch import open_app, run_async
from worktree_swarm.core.errors import ManagerLockedError, SwarmError
from worktree_swarm.core.models import TaskState
from worktree_swarm.git.repo import open_repo
from worktree_swarm.guard import ref_moves
from worktree_swarm.infra import lock
from worktree_swarm.infra.lock import ManagerLock
from worktree_swarm.infra.store import Store
from worktree_swarm.report import run_info, status
from worktree_swarm.run import background, control

FAKE_CLAUDE = r'''#!PYTHON
"""Fake Claude Code: scripted by $FAKE_DIR/<task>.plan (one behaviour per call)."""
import json, os, pathlib, sys, time
args = sys.argv[1:]
prompt = args[args.index("-p") + 1]
resume = args[args.index("--resume") + 1] if "--resume" in args else None
task = os.environ["SWARM_TASK_ID"]
fake = pathlib.Path(os.environ["FAKE_DIR"])
calls = fake / f"{task}.calls"
with calls.open("a") as fh:
    fh.write(json.dumps({"argv": args, "cwd": os.getcwd(), "pid": os.getpid()}) + "\n")
n = len(calls.read_text().splitlines())
plan = (fake / f"{task}.plan").read_text().split() if (fake / f"{task}.plan").exists() else []
step = plan[n - 1] if n <= len(plan) else "finish"
session = resume or f"sess-{task}-{n}"
def result(is_error=False, status=None, text="ok", cost=0.5, tokens=100):
    out = {"type": "result", "subtype": "success", "is_error": is_error, "duration_ms": 12,
           "num_turns": 2, "result": text, "session_id": session, "total_cost_usd": cost,
           "usage": {"input_tokens": tokens, "output_tokens": 20, "cache_read_input_tokens": 50,
                     "cache_creation_input_tokens": 0}}
    if status:
        out["api_error_status"] = status
    print(json.dumps(out), flush=True)
if step == "wait-third":  # the third task to start waits (one job slot: in start order)
    with (fake / "order").open("a") as fh:
        fh.write(task + "\n")
    step = "wait" if len((fake / "order").read_text().split()) == 3 else "finish"
if step == "wait":  # for the crash test: its work begun, signal readiness, wait for go
    pathlib.Path(f"{task}.txt").write_text("started\n")
    # Whole or not at all: the test reads it as soon as it exists.
    (fake / f"{task}.pid.part").write_text(str(os.getpid()))
    (fake / f"{task}.pid.part").replace(fake / f"{task}.pid")
    while not (fake / "go").exists():
        time.sleep(0.05)
    pathlib.Path(f"{task}.txt").write_text("finished\n")
    result(); sys.exit(0)
if step == "stall":  # refused at once: nothing done
    result(is_error=True, status=429, text="API Error: 429 rate_limit_error", cost=0.0)
    sys.exit(1)
if step == "limit":
    pathlib.Path(f"{task}.txt").write_text("half done\n")
    result(is_error=True, status=429, text="API Error: 429 rate_limit_error", cost=0.1)
    sys.exit(1)
if step == "window":  # refused: your 5-hour window is spent, for two hours more
    result(is_error=True, status=429, cost=0.1,
           text=f"Claude AI usage limit reached|{int(time.time()) + 7200}")
    sys.exit(1)
if step == "further":  # a storm's 429 after a few more turns of work each time
    with open(f"{task}.txt", "a") as fh:
        fh.write(f"turn {n}\n")
    result(is_error=True, status=429, text="API Error: 429 rate_limit_error", cost=0.1)
    sys.exit(1)
if step == "huge":  # usage no attempt could have had
    with open(f"{task}.txt", "a") as fh:
        fh.write(f"part {n}\n")
    result(is_error=True, status=429, text="API Error: 429", cost=-5000.0, tokens=2**63 - 1)
    sys.exit(1)
if step in ("retry-wait", "retry-hang"):  # a 429 whose retry-after it waits out, silent
    pathlib.Path(f"{task}.txt").write_text("before the wait\n")
    delay = 60_000 if step == "retry-wait" else 1500
    print(json.dumps({"type": "system", "subtype": "api_retry", "attempt": 1, "max_retries": 1,
                      "retry_delay_ms": delay, "error_status": 429, "error": "rate_limit",
                      "session_id": session}), flush=True)
    time.sleep(3 if step == "retry-wait" else 600)
    pathlib.Path(f"{task}.txt").write_text("after the wait\n")
    result(); sys.exit(0)
if step == "long-reply":  # its final reply, quoted in its result line, is 9 MiB long
    pathlib.Path(f"{task}.txt").write_text("done\n")
    result(text="word " * (9 * 2**20 // 5), cost=0.25)
    sys.exit(0)
if step == "todo":
    pathlib.Path(f"{task}.py").write_text("def answer():\n    raise NotImplementedError  # TODO\n")
    result(); sys.exit(0)
if step == "settings":  # what Claude Code keeps in the repository for itself, and a file
    pathlib.Path(".claude", "commands").mkdir(parents=True)
    pathlib.Path(".claude", "settings.local.json").write_text('{"permissions": {}}\n')
    pathlib.Path(".claude", "commands", "review.md").write_text("Review the diff.\n")
    result(); sys.exit(0)
if step == "fix":
    assert "placeholder" in prompt, prompt
    pathlib.Path(f"{task}.py").write_text("def answer():\n    return 42\n")
    result(); sys.exit(0)
with open(f"{task}.txt", "a") as fh:
    fh.write(f"finished in session {session}\n")
result(); sys.exit(0)
'''


@pytest.fixture
def fake_claude(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Put the fake `claude` first on PATH; yields the directory that scripts it.

    On leaving, the agents still waiting for the go file are let go: a test that failed half
    way leaves no agent waiting for ever (an agent outlives its killed manager, as it should).
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "claude"
    exe.write_text(FAKE_CLAUDE.replace("#!PYTHON", script_interpreter(), 1))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    fake = tmp_path / "fake"
    fake.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DIR", str(fake))
    monkeypatch.setenv("ANTHROPIC_API_KEY", "fake-key")  # signed in, as far as swarm checks
    yield fake
    (fake / "go").touch()


def plan(fake: Path, task: str, *steps: str) -> None:
    (fake / f"{task}.plan").write_text(" ".join(steps))


def calls(fake: Path, task: str) -> list[dict[str, object]]:
    path = fake / f"{task}.calls"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def attempts(repo: Path, task: str) -> list[tuple[int, str, float, float]]:
    with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as db:
        return db.execute(
            "SELECT number, outcome, started_at, ended_at FROM attempts WHERE task_id = ?"
            " ORDER BY number",
            (task,),
        ).fetchall()


HEADER = '[defaults]\nagent = "claude"\nrate_limit_backoff = "0.3s"\nretries = 3\n'


def tasks_toml(ids: list[str], extra: str = "") -> str:
    return HEADER + extra + "".join(f'[[task]]\nid = "{i}"\nprompt = "do {i}"\n' for i in ids)


def gone(state: Path) -> None:
    """`rm -rf` *state* at once: renamed away first, since the manager writes it back."""
    moved = state.with_name(state.name + "-deleted")
    state.rename(moved)
    shutil.rmtree(moved)


def run_waiting(repo: Path, fake_claude: Path, extra: str = "") -> subprocess.Popen[bytes]:
    """`swarm run` of task `a` in the background, its agent waiting for the go file."""
    plan(fake_claude, "a", "wait")
    return swarm_bg(repo, "run", manifest(repo, tasks_toml(["a"], extra)))


@pytest.mark.slow  # long: runs in `scripts/check --slow` (CI runs both)
def test_rate_limited_task_resumes_in_same_session_and_worktree(
    repo: Path, fake_claude: Path
) -> None:
    plan(fake_claude, "a", "limit", "finish")
    out = swarm(repo, "run", manifest(repo, tasks_toml(["a"])))
    assert out.returncode == 0, out.stdout + out.stderr
    first, second = calls(fake_claude, "a")
    assert "--resume" not in first["argv"]
    assert second["argv"][second["argv"].index("--resume") + 1] == "sess-a-1"
    assert first["cwd"] == second["cwd"]
    assert [a[1] for a in attempts(repo, "a")] == ["rate_limited", "succeeded"]
    assert "finished in session sess-a-1" in branch_file(repo, "swarm/a", "a.txt")
    row = status_json(repo)["a"]
    assert row["state"] == "done"
    assert row["attempt"] == 2
    assert row["cost_usd"] == pytest.approx(0.6)
    assert row["tokens_in"] == 200
    totals = json.loads(swarm(repo, "status", "--json").stdout)["totals"]
    usage = {k: totals[k] for k in ("attempts", "cost_usd", "tokens_in", "tokens_out")}
    assert usage == {"attempts": 2, "cost_usd": 0.6, "tokens_in": 200, "tokens_out": 40}
    # The run is over: the throttled gate it ended with is no line of status (the JSON keeps
    # it, and the report tells how the run ended).
    assert [g["provider"] for g in providers(repo)] == ["anthropic"]
    assert "anthropic: " not in swarm(repo, "status").stdout
    assert "total: 2 attempts, $0.60" in swarm(repo, "status").stdout


def test_every_task_rate_limited_once_all_done_nothing_lost(repo: Path, fake_claude: Path) -> None:
    ids = [f"t{i}" for i in range(6)]
    for i in ids:
        plan(fake_claude, i, "limit", "finish")
    out = swarm(repo, "run", "--jobs", "3", manifest(repo, tasks_toml(ids)))
    assert out.returncode == 0, out.stdout + out.stderr
    for i in ids:
        text = branch_file(repo, f"swarm/{i}", f"{i}.txt")
        assert text.startswith("half done\nfinished in session")
        # The half-done state of the rate-limited attempt was checkpointed too.
        log = git(repo, "log", "--format=%s", f"swarm/{i}")
        assert f"checkpoint {i} attempt 1 (rate_limited)" in log


def test_retries_exhausted_fails_with_work_kept(repo: Path, fake_claude: Path) -> None:
    # The first attempt got work done before its limit (no retry used); the next two did not.
    plan(fake_claude, "a", "limit", "limit", "limit")
    text = tasks_toml(["a"]).replace("retries = 3", "retries = 1")
    out = swarm(repo, "run", manifest(repo, text))
    assert out.returncode == 1
    row = status_json(repo)["a"]
    assert row["state"] == "failed"
    assert "rate limited" in str(row["reason"])
    assert len(calls(fake_claude, "a")) == 3
    assert branch_file(repo, "swarm/a", "a.txt") == "half done"


def test_after_a_retry_work_already_on_the_branch_is_no_progress_of_the_next_attempt(
    repo: Path, fake_claude: Path
) -> None:
    # Retried, the first throttled attempt was judged against nothing: the branch's half-done
    # work counted as its own progress, and it used no retry for writing the same again.
    plan(fake_claude, "a", "limit", "stall", "stall", "limit", "stall", "finish")
    text = tasks_toml(["a"]).replace("retries = 3", "retries = 1")
    assert swarm(repo, "run", manifest(repo, text)).returncode == 1
    assert len(calls(fake_claude, "a")) == 3  # got work done (no retry), then two refusals
    out = swarm(repo, "retry", "a")
    assert out.returncode == 1, out.stdout + out.stderr
    assert status_json(repo)["a"]["state"] == "failed"
    assert len(calls(fake_claude, "a")) == 5  # the same work again used its one retry


@pytest.mark.parametrize("resumed", [False, True], ids=["watched", "manager-killed"])
def test_a_storm_that_ends_an_agent_a_few_turns_further_each_time_uses_no_retries(
    repo: Path, fake_claude: Path, resumed: bool
) -> None:
    # Each attempt got work done, then met a 429: its retries went in a minute of a storm
    # that lasted longer (the task failed while it was getting somewhere). Neither counts
    # them, nor a manager that resumes the run: its one retry is left for a refusal with
    # nothing done.
    plan(fake_claude, "a", "further", "further", "further", "stall", "finish")
    text = tasks_toml(["a"]).replace("retries = 3", "retries = 1")
    if resumed:
        proc = swarm_bg(repo, "run", manifest(repo, text))
        wait_for(lambda: len(calls(fake_claude, "a")) >= 3, what="three attempts")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        out = swarm(repo, "resume")
    else:
        out = swarm(repo, "run", manifest(repo, text))
    assert out.returncode == 0, out.stdout + out.stderr
    assert status_json(repo)["a"]["state"] == "done"
    assert len(calls(fake_claude, "a")) == 5
    assert branch_file(repo, "swarm/a", "a.txt").startswith("turn 1\nturn 2\nturn 3\nfinished")


def waits(repo: Path, task: str) -> list[tuple[float, float | None, float]]:
    """(ended_at, retry_at, next attempt's started_at) of each attempt *task* resumed after."""
    with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as db:
        rows = db.execute(
            "SELECT started_at, ended_at, retry_at FROM attempts WHERE task_id = ? ORDER BY number",
            (task,),
        ).fetchall()
    return [(ended, retry, after[0]) for (_, ended, retry), after in itertools.pairwise(rows)]


@pytest.mark.slow  # long: runs in `scripts/check --slow` (CI runs both)
def test_a_lone_throttled_task_backs_off_exponentially(repo: Path, fake_claude: Path) -> None:
    # One agent's 429s never make its provider's share of throttles large enough for a cut:
    # the task's own backoff (0.3 s base here) spaces its retries, doubling each time.
    plan(fake_claude, "a", "stall", "stall", "stall", "finish")
    out = swarm(repo, "run", manifest(repo, tasks_toml(["a"])))
    assert out.returncode == 0, out.stdout + out.stderr
    spans = waits(repo, "a")
    assert len(spans) == 3
    for n, (ended, retry_at, next_start) in enumerate(spans, start=1):
        assert retry_at is not None
        assert retry_at - ended >= 0.3 * 2 ** (n - 1) / 2  # jitter keeps at least half
        assert next_start >= retry_at


def test_an_attempt_that_got_work_done_before_its_429_goes_on_without_a_backoff(
    repo: Path, fake_claude: Path
) -> None:
    # An agent that ends on every 429 of a storm (each attempt a few turns further): backing
    # off after each would make the storm cost minutes per task, not its answered requests.
    plan(fake_claude, "a", "limit", "finish")
    text = tasks_toml(["a"]).replace('rate_limit_backoff = "0.3s"', 'rate_limit_backoff = "1h"')
    assert 'rate_limit_backoff = "1h"' in text
    out = swarm(repo, "run", manifest(repo, text))
    assert out.returncode == 0, out.stdout + out.stderr
    ((ended, retry_at, next_start),) = waits(repo, "a")
    assert retry_at is not None
    assert retry_at - ended < 60  # the gate's pacing at most, not the task's backoff of 30 min
    assert next_start >= retry_at


def test_with_defaults_a_throttled_task_waits_and_says_until_when(
    repo: Path, fake_claude: Path
) -> None:
    plan(fake_claude, "a", "stall", "finish")
    text = '[defaults]\nagent = "claude"\n[[task]]\nid = "a"\nprompt = "do a"\n'
    proc = swarm_bg(repo, "run", manifest(repo, text))
    try:
        wait_for(
            lambda: (
                first_wait(repo) is not None and status_json(repo)["a"]["state"] == "rate_limited"
            ),
            what="the wait to be recorded",
        )
        ended, retry_at = first_wait(repo) or (0.0, 0.0)
        assert retry_at - ended >= 15  # half of rate_limit_backoff's 30 s at least
        when = time.strftime("%H:%M:%S", time.localtime(retry_at))
        assert status_json(repo)["a"]["reason"] == f"resuming after {when}"
        assert len(calls(fake_claude, "a")) == 1
        assert swarm(repo, "stop", "a").returncode == 0
        assert proc.wait(timeout=60) == 1
    finally:
        proc.kill()


def first_wait(repo: Path) -> tuple[float, float] | None:
    """The first attempt's (ended_at, retry_at), once both are recorded."""
    if not (repo / ".git" / "swarm" / "state.db").exists():
        return None
    try:
        with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as db:
            row = db.execute("SELECT ended_at, retry_at FROM attempts WHERE number = 1").fetchone()
    except sqlite3.OperationalError:  # the manager is still creating the store
        return None
    return None if row is None or None in row else (row[0], row[1])


WINDOW_THEN_THROTTLE = r"""
import os, pathlib, subprocess, sys, time
marks = pathlib.Path(MARKS)
def until(condition):
    deadline = time.monotonic() + 60
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
if sys.argv[1:] == ["setup"]:  # b and c: once a's agent holds a slot, ask for one
    until((marks / "a").exists)
    sys.exit(0)
task = os.environ["SWARM_TASK_ID"]
pathlib.Path(f"{task}.txt").write_text("partial\n")
if task == "a":  # once another runs, a usage window 400 s away: past max_wait, a fails
    (marks / "a").touch()
    until((marks / "other").exists)
    print(f"Claude AI usage limit reached|{int(time.time()) + 400}")
    sys.exit(1)
# Once swarm has checkpointed a's attempt (it reported the window first), a plain 429.
(marks / "other").write_text(task)
until(lambda: "checkpoint a attempt 1" in subprocess.run(
    ["git", "log", "--format=%s", "swarm/a"], capture_output=True, text=True, check=False
).stdout)
print("Error: 429 Too Many Requests")
sys.exit(1)
"""


def test_max_wait_bounds_a_wait_for_a_window_another_task_reported(
    repo: Path, write_agent: AgentFactory
) -> None:
    # a's window is reported while one of b and c runs (jobs = 2) and the other waits for a
    # slot: the one running gets a 429 and does not wait 400 s, the other never starts.
    marks = repo.parent / "marks"
    marks.mkdir()
    agent = write_agent(f"MARKS = {str(marks)!r}\n" + WINDOW_THEN_THROTTLE)
    text = f'[defaults]\nagent = {argv_toml(agent)}\nmax_wait = "10s"\njobs = 2\n'
    text += 'rate_limit_backoff = "0.2s"\n[[task]]\nid = "a"\nprompt = "do a"\n'
    for task in "bc":
        text += f'[[task]]\nid = "{task}"\nprompt = "do {task}"\n'
        text += f"setup = [{argv_toml([*agent, 'setup'])}]\n"
    out = swarm(repo, "run", manifest(repo, text))
    assert out.returncode == 1, out.stdout + out.stderr
    rows = status_json(repo)
    for task in ("a", "b", "c"):
        assert rows[task]["state"] == "failed"
        assert str(rows[task]["reason"]).startswith("usage limit of other resets at ")
        assert f"past max_wait (10s); work kept on swarm/{task}" in str(rows[task]["reason"])
    throttled = (marks / "other").read_text()
    assert [a[1] for a in attempts(repo, throttled)] == ["rate_limited"]
    assert branch_file(repo, f"swarm/{throttled}", f"{throttled}.txt") == "partial"
    held = ({"b", "c"} - {throttled}).pop()
    assert attempts(repo, held) == []


def test_a_429_inside_a_window_another_task_reported_waits_for_it_without_a_retry(
    repo: Path, write_agent: AgentFactory
) -> None:
    # a reports a usage window (400 s away, within max_wait); b's plain 429 meanwhile is that
    # window too: b waits for its reset, with no retry spent (it has none), not failed.
    marks = repo.parent / "marks"
    marks.mkdir()
    agent = write_agent(f"MARKS = {str(marks)!r}\n" + WINDOW_THEN_THROTTLE)
    text = f"[defaults]\nagent = {argv_toml(agent)}\njobs = 2\nretries = 0\n"
    text += '[[task]]\nid = "a"\nprompt = "do a"\n[[task]]\nid = "b"\nprompt = "do b"\n'
    text += f"setup = [{argv_toml([*agent, 'setup'])}]\n"
    proc = swarm_bg(repo, "run", manifest(repo, text))
    try:
        wait_for(
            lambda: (
                limits(repo, "b") and status_json(repo)["b"]["state"] in {"rate_limited", "failed"}
            ),
            what="b's 429 to be decided",
        )
        row = status_json(repo)["b"]
        assert row["state"] == "rate_limited", row
        ((_, a_reset),) = [(o, r) for _, o, r in limits(repo, "a")]
        ((_, b_until),) = [(o, r) for _, o, r in limits(repo, "b")]
        assert a_reset is not None
        assert b_until == a_reset
        assert swarm(repo, "stop").returncode == 0
        assert proc.wait(timeout=60) == 1
    finally:
        proc.kill()
    assert branch_file(repo, "swarm/b", "b.txt") == "partial"


FAKE_WINDOW = r"""
import os, pathlib, subprocess, sys, time
task = os.environ["SWARM_TASK_ID"]
if sys.argv[1:] == ["setup"]:  # b and c: not before swarm has taken in a's attempt
    deadline = time.monotonic() + 60
    while "checkpoint a attempt 1" not in subprocess.run(
        ["git", "log", "--format=%s", "swarm/a"], capture_output=True, text=True, check=False
    ).stdout and time.monotonic() < deadline:
        time.sleep(0.05)
    sys.exit(0)
pathlib.Path(f"{task}.txt").write_text(f"{task}\n")
if task == "a":  # a usage window five hours away, made up: no other task is limited
    print(f"Claude AI usage limit reached|{int(time.time()) + 5 * 3600}")
    sys.exit(1)
"""


def test_a_usage_window_one_task_alone_reports_holds_only_that_task(
    repo: Path, write_agent: AgentFactory
) -> None:
    # a's agent states a five-hour window (any agent can print the line); b and c start once
    # swarm has taken it in. Only a fails past its max_wait: b and c run at once and finish.
    agent = write_agent(FAKE_WINDOW)
    text = f'[defaults]\nagent = {argv_toml(agent)}\nmax_wait = "10m"\n'
    text += 'rate_limit_backoff = "0.2s"\n[[task]]\nid = "a"\nprompt = "do a"\n'
    for task in "bc":
        text += f'[[task]]\nid = "{task}"\nprompt = "do {task}"\n'
        text += f"setup = [{argv_toml([*agent, 'setup'])}]\n"
    out = swarm(repo, "run", manifest(repo, text))
    assert out.returncode == 1, out.stdout + out.stderr
    rows = status_json(repo)
    assert rows["a"]["state"] == "failed"
    assert str(rows["a"]["reason"]).startswith("usage limit of other resets at ")
    assert (rows["b"]["state"], rows["c"]["state"]) == ("done", "done"), rows
    assert [a[1] for a in attempts(repo, "b")] == ["succeeded"]


def run_killed_once(repo: Path, text: str, condition: Callable[[], bool], *, what: str) -> None:
    """`swarm run` of the manifest *text*, its manager SIGKILLed once *condition* holds."""
    proc = swarm_bg(repo, "run", manifest(repo, text))
    try:
        wait_for(condition, what=what)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)


def limits(repo: Path, task: str) -> list[tuple[int, str, float | None]]:
    """(number, outcome, retry_at) of each attempt of *task* (none before the store is made)."""
    if not (repo / ".git" / "swarm" / "state.db").exists():
        return []
    try:
        with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as db:
            return db.execute(
                "SELECT number, outcome, retry_at FROM attempts WHERE task_id = ? ORDER BY number",
                (task,),
            ).fetchall()
    except sqlite3.OperationalError:  # the manager is still creating the store
        return []


REPAIR_THEN_THROTTLE = r"""
import pathlib, sys
prompt = pathlib.Path(sys.argv[1]).read_text()
calls = pathlib.Path(CALLS)
n = len(calls.read_text().splitlines()) if calls.exists() else 0
with calls.open("a") as fh:
    fh.write(f"{n}\n")
pathlib.Path("work.txt").write_text(f"attempt {n}\n")
if "checks on your work failed" in prompt:  # told to fix it: the first try meets a 429
    if n == 1:
        print("Error: 429 Too Many Requests")
        sys.exit(1)
    pathlib.Path("fixed.txt").write_text("fixed\n")
"""


def test_a_rate_limited_repair_is_resumed_as_a_repair(
    repo: Path, write_agent: AgentFactory
) -> None:
    # An agent without sessions is given its whole prompt again on each attempt: the one
    # after the rate limit must still say which check failed.
    calls_file = repo.parent / "calls"
    agent = write_agent(f"CALLS = {str(calls_file)!r}\n" + REPAIR_THEN_THROTTLE)
    text = (
        f"[defaults]\nagent = {argv_toml([*agent, '{prompt_file}'])}\n"
        'rate_limit_backoff = "0.2s"\n[[task]]\nid = "a"\nprompt = "do a"\nrepair = 1\n'
        'checks = [["test", "-f", "fixed.txt"]]\n'
    )
    out = swarm(repo, "run", manifest(repo, text))
    assert out.returncode == 0, out.stdout + out.stderr
    assert [a[1] for a in attempts(repo, "a")] == ["succeeded", "rate_limited", "succeeded"]
    runs = next((repo / ".git" / "swarm" / "runs").iterdir())
    third = (runs / "a" / "prompt-3.md").read_text()
    assert third.startswith("do a")
    assert "You were interrupted" in third
    assert "The checks on your work failed" in third
    assert "test -f fixed.txt" in third
    assert branch_file(repo, "swarm/a", "fixed.txt") == "fixed"


REPAIR_THEN_LIMIT = r"""
import pathlib, sys, time
prompt = pathlib.Path(sys.argv[1]).read_text()
calls = pathlib.Path(CALLS)
n = len(calls.read_text().splitlines()) if calls.exists() else 0
with calls.open("a") as fh:
    fh.write(f"{n}\n")
pathlib.Path("work.txt").write_text(f"attempt {n}\n")
if "checks on your work failed" in prompt:
    if n == 1:  # the repair meets a limit that resets in 15 s
        print(f"Claude AI usage limit reached|{int(time.time()) + 15}")
        sys.exit(1)
    pathlib.Path("fixed.txt").write_text("fixed\n")
"""


@pytest.mark.slow  # a crash trial that waits out a 15 s limit
def test_a_repair_cut_by_a_limit_is_asked_again_after_the_manager_is_killed(
    repo: Path, write_agent: AgentFactory
) -> None:
    # What the agent was asked (the failing checks) is in the store, not only in the killed
    # manager's memory: the attempt the resumed manager starts is still told to repair.
    calls_file = repo.parent / "calls"
    agent = write_agent(f"CALLS = {str(calls_file)!r}\n" + REPAIR_THEN_LIMIT)
    text = (
        f"[defaults]\nagent = {argv_toml([*agent, '{prompt_file}'])}\n"
        '[[task]]\nid = "a"\nprompt = "do a"\nrepair = 1\n'
        'checks = [["test", "-f", "fixed.txt"]]\n'
    )
    run_killed_once(
        repo,
        text,
        lambda: any(o == "rate_limited" and r for _, o, r in limits(repo, "a")),
        what="the repair's limit to be recorded",
    )
    assert calls_file.read_text().split() == ["0", "1"]  # killed before the next attempt
    out = swarm(repo, "resume")
    assert out.returncode == 0, out.stdout + out.stderr
    assert [a[1] for a in attempts(repo, "a")] == ["succeeded", "rate_limited", "succeeded"]
    runs = next((repo / ".git" / "swarm" / "runs").iterdir())
    third = (runs / "a" / "prompt-3.md").read_text()
    assert "You were interrupted" in third
    assert "The checks on your work failed" in third
    assert branch_file(repo, "swarm/a", "fixed.txt") == "fixed"


THROTTLED_ONCE = r"""
import pathlib, sys
calls = pathlib.Path(CALLS)
n = len(calls.read_text().splitlines()) if calls.exists() else 0
with calls.open("a") as fh:
    fh.write(f"{n}\n")
if n == 0:  # refused at once, nothing done, no reset stated
    print("HTTP 429 Too Many Requests")
    sys.exit(1)
pathlib.Path("work.txt").write_text("done\n")
"""


@pytest.mark.slow  # a crash trial
def test_a_long_backoff_resumed_after_a_crash_is_still_a_throttle_not_a_usage_window(
    repo: Path, write_agent: AgentFactory
) -> None:
    # The task's own backoff (here 400-800 s) is recorded as the attempt's wait. A resumed
    # manager must not take that far-off time for a usage window's reset: past max_wait it
    # would fail the task, and it would hold the whole provider.
    calls_file = repo.parent / "calls"
    agent = write_agent(f"CALLS = {str(calls_file)!r}\n" + THROTTLED_ONCE)
    text = (
        f"[defaults]\nagent = {argv_toml(agent)}\n"
        'rate_limit_backoff = "800s"\nmax_wait = "6m"\nretries = 3\n'
        '[[task]]\nid = "a"\nprompt = "do a"\n'
    )
    run_killed_once(repo, text, lambda: any(r for _, _, r in limits(repo, "a")), what="the backoff")
    ((_, _, until),) = limits(repo, "a")
    assert until is not None
    resumed = swarm_bg(repo, "resume")
    try:
        wait_for(
            lambda: (
                len(rate_limited_states(repo, "a")) == 2
                or status_json(repo)["a"]["state"] == "failed"
            ),
            what="the resumed manager's decision",
        )
        row = status_json(repo)["a"]
        assert row["state"] == "rate_limited", row
        assert row["reason"] == f"resuming after {time.strftime('%H:%M:%S', time.localtime(until))}"
        # The provider is not held until then, as it would be for a usage window.
        assert all(float(str(g["waiting_until"] or 0)) < until - 1 for g in providers(repo))
        assert swarm(repo, "stop").returncode == 0
        assert resumed.wait(timeout=60) == 1
    finally:
        resumed.kill()
    assert calls_file.read_text().split() == ["0"]


WINDOW_OR_WORK = r"""
import os, pathlib, sys, time
me = os.environ["SWARM_TASK_ID"]
if me == "w":  # a usage window just past the 300 s that make one: unconfirmed, one task's
    reset = int(time.time()) + 302
    pathlib.Path(RESET).write_text(str(reset))
    print(f"Claude AI usage limit reached|{reset}")
    sys.exit(1)
pathlib.Path(me + ".txt").write_text("done\n")
if me == "b1":  # runs through the crash, ends when told
    pathlib.Path(GO + ".running").write_text("")
    while not pathlib.Path(GO).exists():
        time.sleep(0.05)
"""


@pytest.mark.slow  # a crash trial
def test_a_usage_window_resumed_near_its_end_holds_only_its_own_task(
    repo: Path, write_agent: AgentFactory
) -> None:
    # One task's word alone delays only that task. A resumed manager took the recorded window,
    # with under 300 s left, for a throttle with that reset: every task of the provider waited.
    reset_file, go = repo.parent / "reset", repo.parent / "go"
    agent = write_agent(f"RESET = {str(reset_file)!r}\nGO = {str(go)!r}\n" + WINDOW_OR_WORK)
    text = (
        f'[defaults]\nagent = {argv_toml(agent)}\njobs = 2\nmax_wait = "1h"\n'
        '[[task]]\nid = "w"\nprompt = "w"\n'
        '[[task]]\nid = "b1"\nprompt = "b1"\n'
        '[[task]]\nid = "b2"\nprompt = "b2"\ndepends_on = ["b1"]\n'  # startable after b1
    )
    run_killed_once(
        repo,
        text,
        # Its reset on record: an attempt's row alone is there before its agent ran.
        lambda: Path(f"{go}.running").exists() and any(r[2] for r in limits(repo, "w")),
        what="w's window recorded and b1 running",
    )
    reset = int(reset_file.read_text())
    wait_for(lambda: reset - time.time() < 299, what="the window's end under 300 s away")
    resumed = swarm_bg(repo, "resume")
    try:
        go.touch()
        # b1 ends, and b2 starts: not held until w's reset, minutes away.
        wait_for(lambda: status_json(repo)["b2"]["state"] == "done", what="b2 done")
        assert time.time() < reset - 200
        assert status_json(repo)["w"]["state"] == "rate_limited"
        assert swarm(repo, "stop").returncode == 0
        resumed.wait(timeout=60)
    finally:
        resumed.kill()


def rate_limited_states(repo: Path, task: str) -> list[str]:
    """The `rate_limited` state events of *task*, oldest first."""
    with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as db:
        rows = db.execute(
            "SELECT data FROM events WHERE kind = 'state' AND task_id = ?", (task,)
        ).fetchall()
    return [d for (d,) in rows if json.loads(d).get("state") == "rate_limited"]


def providers(repo: Path) -> list[dict[str, object]]:
    """The providers' gates as `swarm status --json` shows them."""
    out = swarm(repo, "status", "--json")
    assert out.returncode == 0, out.stderr
    return list(json.loads(out.stdout)["providers"])


ALWAYS_BAD = r"""
import pathlib, sys, time
calls, go = pathlib.Path(CALLS), pathlib.Path(GO)
n = len(calls.read_text().splitlines()) if calls.exists() else 0
with calls.open("a") as fh:
    fh.write(f"{n}\n")
pathlib.Path("work.txt").write_text(f"attempt {n}\n")  # never what the check wants
if n == 1:  # the repair: waits to be told to end (its manager is killed meanwhile)
    pathlib.Path(CALLS + ".repairing").write_text("")
    while not go.exists():
        time.sleep(0.05)
"""


@pytest.mark.slow  # a crash trial
def test_repairs_used_before_a_crash_stay_used(repo: Path, write_agent: AgentFactory) -> None:
    # repair = 1: the manager is killed while the one repair runs. Resumed, it must not hand
    # the failing checks back a second time.
    calls_file, go = repo.parent / "calls", repo.parent / "go"
    agent = write_agent(f"CALLS = {str(calls_file)!r}\nGO = {str(go)!r}\n" + ALWAYS_BAD)
    text = (
        f"[defaults]\nagent = {argv_toml(agent)}\n"
        '[[task]]\nid = "a"\nprompt = "do a"\nrepair = 1\n'
        'checks = [["test", "-f", "fixed.txt"]]\n'
    )
    run_killed_once(repo, text, lambda: Path(f"{calls_file}.repairing").exists(), what="the repair")
    resumed = swarm_bg(repo, "resume")
    go.touch()
    try:
        assert resumed.wait(timeout=120) == 1
    finally:
        resumed.kill()
    assert calls_file.read_text().split() == ["0", "1"]
    row = status_json(repo)["a"]
    assert row["state"] == "failed", row
    assert "test -f fixed.txt" in str(row["reason"]), row


def test_usage_no_attempt_could_have_is_none_and_loses_no_work(
    repo: Path, fake_claude: Path
) -> None:
    """Two attempts stating 2**63 - 1 input tokens overflowed the task's total: internal error,
    the second attempt's work never committed; a negative cost took from what was spent."""
    plan(fake_claude, "a", "huge", "huge", "finish")
    out = swarm(repo, "run", manifest(repo, tasks_toml(["a"])))
    assert out.returncode == 0, out.stdout + out.stderr
    assert branch_file(repo, "swarm/a", "a.txt").startswith("part 1\npart 2\nfinished")
    row = status_json(repo)["a"]
    assert (row["state"], row["tokens_in"], row["cost_usd"]) == ("done", 100, 0.5), row


@pytest.mark.long
def test_an_agent_waiting_out_the_retry_delay_it_announced_is_not_idle(
    repo: Path, fake_claude: Path
) -> None:
    # Claude Code's last line says it waits 60 s before it asks again (a server's retry-after):
    # silent past its idle_timeout meanwhile, it is waiting, not hung.
    plan(fake_claude, "a", "retry-wait")
    extra = 'idle_timeout = "1s"\nkill_grace = "1s"\n'
    out = swarm(repo, "run", manifest(repo, tasks_toml(["a"], extra)))
    assert out.returncode == 0, out.stdout + out.stderr
    assert status_json(repo)["a"]["state"] == "done"
    assert branch_file(repo, "swarm/a", "a.txt") == "after the wait"


@pytest.mark.long
def test_an_agent_silent_past_the_retry_delay_it_announced_is_idle(
    repo: Path, fake_claude: Path
) -> None:
    plan(fake_claude, "a", "retry-hang")
    extra = 'idle_timeout = "1s"\nkill_grace = "1s"\n'
    out = swarm(repo, "run", manifest(repo, tasks_toml(["a"], extra)))
    assert out.returncode == 1
    row = status_json(repo)["a"]
    assert row["state"] == "timed_out"
    assert row["reason"] == "no output for 1s after the 1.5s retry delay it announced"
    assert branch_file(repo, "swarm/a", "a.txt") == "before the wait"


@pytest.mark.long
def test_a_result_line_longer_than_the_log_window_still_counts_its_cost(
    repo: Path, fake_claude: Path
) -> None:
    plan(fake_claude, "a", "long-reply")
    out = swarm(repo, "run", manifest(repo, tasks_toml(["a"])))
    assert out.returncode == 0, out.stdout + out.stderr
    row = status_json(repo)["a"]
    assert (row["state"], row["cost_usd"], row["tokens_in"]) == ("done", 0.25, 100)
    with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as db:
        assert db.execute("SELECT session_id FROM attempts").fetchall() == [("sess-a-1",)]


def test_budget_stops_new_attempts(repo: Path, fake_claude: Path) -> None:
    ids = [f"t{i}" for i in range(5)]
    out = swarm(
        repo, "run", "--jobs", "1", "--max-cost-usd", "1.2", manifest(repo, tasks_toml(ids))
    )
    assert out.returncode == 1
    rows = status_json(repo)
    states = [rows[i]["state"] for i in ids]
    assert states == ["done", "done", "done", "stopped", "stopped"]
    assert "budget" in str(rows["t3"]["reason"])


def sign_in(home: Path) -> Path:
    """What `claude` + `/login` leaves on Linux: a file with your access and refresh token."""
    path = home / ".claude" / ".credentials.json"
    path.parent.mkdir(exist_ok=True)
    oauth = {"accessToken": "at-of-the-user", "refreshToken": "rt-of-the-user"}
    path.write_text(json.dumps({"claudeAiOauth": oauth | {"expiresAt": 4102444800000}}))
    return path


def sign_in_copies(repo: Path) -> list[Path]:
    return list((repo / ".git" / "swarm").rglob(".credentials.json"))


def limited_once(repo: Path) -> bool:
    """Whether task `a`'s first attempt ended rate limited (its wait began)."""
    if not (repo / ".git" / "swarm" / "state.db").exists():
        return False
    with contextlib.suppress(sqlite3.Error):
        return [a[1] for a in attempts(repo, "a")] == ["rate_limited"]
    return False


@pytest.fixture
def signed_in(fake_claude: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fake `claude`, authenticated by your sign-in only (no key in the environment)."""
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    return sign_in(Path(os.environ["HOME"]))


def test_no_copy_of_your_sign_in_waits_out_a_usage_window_or_a_stop(
    repo: Path, fake_claude: Path, signed_in: Path
) -> None:
    # The next attempt's copy was made before its wait for the window began: it sat under
    # .git/swarm for two hours, and was still there after `swarm stop`.
    plan(fake_claude, "a", "window")
    proc = swarm_bg(repo, "run", manifest(repo, tasks_toml(["a"])))
    try:
        wait_for(lambda: limited_once(repo), what="the wait for the usage window")
        assert sign_in_copies(repo) == []
        assert swarm(repo, "stop").returncode == 0
        assert proc.wait(timeout=60) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert status_json(repo)["a"]["state"] == "stopped"
    assert sign_in_copies(repo) == []
    assert signed_in.exists()


def test_no_copy_of_your_sign_in_stays_for_an_attempt_the_budget_refused(
    repo: Path, fake_claude: Path, signed_in: Path
) -> None:
    plan(fake_claude, "a", "limit", "finish")  # $0.10 spent, past the budget
    text = manifest(repo, tasks_toml(["a"]))
    out = swarm(repo, "run", "--max-cost-usd", "0.05", text)
    assert out.returncode == 1, out.stdout + out.stderr
    row = status_json(repo)["a"]
    assert row["state"] == "stopped"
    assert str(row["reason"]).endswith("before attempt 2 started"), row
    assert sign_in_copies(repo) == []
    assert signed_in.exists()


def test_a_key_in_the_tasks_env_signs_its_claude_in(
    repo: Path, fake_claude: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Refused with "claude is not signed in", though every task had a key in its `env`.
    monkeypatch.delenv("ANTHROPIC_API_KEY")  # no key in the shell, no sign-in
    keyed = 'env = { ANTHROPIC_API_KEY = "sk-ant-api03-of-the-manifest" }\n'
    text = HEADER + keyed + '[[task]]\nid = "a"\nprompt = "x"\n'
    out = swarm(repo, "run", "--dry-run", manifest(repo, text))
    assert out.returncode == 0, out.stderr
    # Per task: one without a key is refused, before anything is made.
    text += '[[task]]\nid = "b"\nprompt = "x"\nenv = { OTHER = "1" }\n'
    text = text.replace(keyed, "").replace('prompt = "x"\n', f'prompt = "x"\n{keyed}', 1)
    out = swarm(repo, "run", manifest(repo, text))
    assert out.returncode == 2
    assert out.stderr.startswith("swarm: claude is not signed in: run `claude` and `/login`")
    assert len(out.stderr.splitlines()) == 1
    assert not (repo / ".git" / "swarm").exists()


def test_work_is_said_to_be_kept_only_when_its_branch_holds_some(
    repo: Path, fake_claude: Path
) -> None:
    # "...; work kept on swarm/a" for a branch at the base commit: nothing was done.
    plan(fake_claude, "a", "stall")  # refused at once: nothing done
    plan(fake_claude, "b", "limit", "limit")  # half done, then refused with nothing more
    text = tasks_toml(["a", "b"]).replace("retries = 3", "retries = 0")
    assert swarm(repo, "run", manifest(repo, text)).returncode == 1
    rows = status_json(repo)
    assert git(repo, "rev-parse", "swarm/a") == git(repo, "rev-parse", "main")
    limited = "rate limited and out of retries (claude rate limited (HTTP 429): API Error: 429"
    assert rows["a"]["reason"] == f"{limited} rate_limit_error)"
    assert rows["b"]["reason"] == f"{limited} rate_limit_error); work kept on swarm/b"
    assert branch_file(repo, "swarm/b", "b.txt") == "half done"


def test_a_task_running_again_after_a_wait_no_longer_says_it_waits(
    repo: Path, fake_claude: Path
) -> None:
    plan(fake_claude, "a", "limit", "wait")
    proc = swarm_bg(repo, "run", manifest(repo, tasks_toml(["a"])))
    try:
        wait_for((fake_claude / "a.pid").exists, what="the attempt after the wait")
        row = status_json(repo)["a"]
        assert (row["state"], row["reason"]) == ("running", "")  # not "resuming after ..."
    finally:
        (fake_claude / "go").touch()
        proc.wait(timeout=60)
    assert status_json(repo)["a"]["state"] == "done"


def test_a_tasks_elapsed_time_counts_from_its_first_attempt(repo: Path, fake_claude: Path) -> None:
    plan(fake_claude, "a", "stall", "stall")  # refused twice with nothing done: two backoffs
    assert swarm(repo, "run", manifest(repo, tasks_toml(["a"]))).returncode == 0
    with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as db:
        (first,) = db.execute("SELECT min(started_at) FROM attempts").fetchone()
        started, ended = db.execute("SELECT started_at, ended_at FROM tasks").fetchone()
    row = status_json(repo)["a"]
    assert row["attempt"] == 3
    # From the task's start (its worktree made, then the first attempt) to its end: the waits
    # between attempts included.
    assert started <= first
    assert row["elapsed_s"] == pytest.approx(ended - started, abs=0.001)


@pytest.mark.long
def test_the_budget_counts_what_was_spent_before_a_crash(repo: Path, fake_claude: Path) -> None:
    ids = [f"t{i}" for i in range(5)]
    # Whichever task starts third waits (one job slot; a worktree made ahead may take it
    # before the task listed third).
    for i in ids:
        plan(fake_claude, i, "wait-third")
    text = manifest(repo, tasks_toml(ids))
    proc = swarm_bg(repo, "run", "--jobs", "1", "--max-cost-usd", "1.2", text)
    try:
        wait_for(
            lambda: any((fake_claude / f"{i}.pid").exists() for i in ids),
            what="the third task's agent",
        )
    finally:
        proc.kill()  # $1.00 spent by the two done
        proc.wait(timeout=30)
        (fake_claude / "go").touch()
    assert swarm(repo, "resume").returncode == 1
    rows = status_json(repo)
    assert sorted(rows[i]["state"] for i in ids) == ["done"] * 3 + ["stopped"] * 2
    stopped = [i for i in ids if rows[i]["state"] == "stopped"]
    assert all(str(rows[i]["reason"]).startswith("budget reached") for i in stopped)
    # `swarm retry` starts the count again, as it does a task's retries and repairs.
    assert swarm(repo, "retry", stopped[0]).returncode == 1  # the other stays stopped
    assert status_json(repo)[stopped[0]]["state"] == "done"


def test_placeholder_caught_then_repaired(repo: Path, fake_claude: Path) -> None:
    plan(fake_claude, "a", "todo", "fix")
    plan(fake_claude, "b", "todo")
    text = (
        HEADER
        + "no_placeholders = true\n"
        + '[[task]]\nid = "a"\nprompt = "x"\nrepair = 1\n'
        + '[[task]]\nid = "b"\nprompt = "x"\n'
    )
    out = swarm(repo, "run", manifest(repo, text))
    assert out.returncode == 1
    rows = status_json(repo)
    assert rows["a"]["state"] == "done"
    assert "return 42" in branch_file(repo, "swarm/a", "a.py")
    assert rows["b"]["state"] == "failed"
    assert "placeholder" in str(rows["b"]["reason"])
    assert "NotImplementedError" in str(rows["b"]["reason"])


def test_manager_killed_then_resume_finishes_everything(repo: Path, fake_claude: Path) -> None:
    ids = [f"t{i}" for i in range(6)]
    for i in ids:
        plan(fake_claude, i, "wait")
    proc = swarm_bg(repo, "run", "--jobs", "6", manifest(repo, tasks_toml(ids)))
    try:
        wait_for(lambda: all((fake_claude / f"{i}.pid").exists() for i in ids), what="6 agents")
        agents = {i: int((fake_claude / f"{i}.pid").read_text()) for i in ids}
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert all(pid_alive(pid) for pid in agents.values())
    # Half the agents finish while no manager watches them; the rest are still alive.
    (fake_claude / "go").touch()
    wait_for(lambda: not any(pid_alive(p) for p in agents.values()), what="agents to finish")
    out = swarm(repo, "resume")
    assert out.returncode == 0, out.stdout + out.stderr
    rows = status_json(repo)
    for i in ids:
        assert rows[i]["state"] == "done"
        assert branch_file(repo, f"swarm/{i}", f"{i}.txt") == "finished"
        assert len(calls(fake_claude, i)) == 1  # never launched twice
        assert len(attempts(repo, i)) == 1
    assert not any(pid_alive(p) for p in agents.values())


def test_resume_adopts_live_agents_without_launching_them_again(
    repo: Path, fake_claude: Path
) -> None:
    ids = ["a", "b", "c"]
    for i in ids:
        plan(fake_claude, i, "wait")
    proc = swarm_bg(repo, "run", "--jobs", "3", manifest(repo, tasks_toml(ids)))
    wait_for(lambda: all((fake_claude / f"{i}.pid").exists() for i in ids), what="3 agents")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    resumed = swarm_bg(repo, "resume")
    try:
        wait_for(lambda: all(s["alive"] for s in status_json(repo).values()), what="adoption")
        (fake_claude / "go").touch()
        assert resumed.wait(timeout=60) == 0
    finally:
        resumed.kill()
    for i in ids:
        assert len(calls(fake_claude, i)) == 1
        assert branch_file(repo, f"swarm/{i}", f"{i}.txt") == "finished"


# Counts the agents at work as it starts (its mark among theirs), then works until GO.
COUNTING_AGENT = """
import os, pathlib, sys, time
running, go = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
mine = running / os.environ['SWARM_TASK_ID']
mine.touch()
with open(running.parent / 'seen', 'a') as seen:
    seen.write(f'{len(list(running.iterdir()))}\\n')
while not go.exists():
    time.sleep(0.02)
pathlib.Path('out.txt').write_text('done')
mine.unlink()
"""


def test_a_resumed_run_never_runs_more_than_jobs_agents_at_once(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]]
) -> None:
    running, go = tmp_path / "running", tmp_path / "go"
    running.mkdir()
    agent = argv_toml([*write_agent(COUNTING_AGENT), str(running), str(go)])
    ids = [f"t{i}" for i in range(5)]
    text = f"[defaults]\nagent = {agent}\njobs = 2\n"
    text += "".join(f'[[task]]\nid = "{i}"\nprompt = "p"\n' for i in ids)
    proc = swarm_bg(repo, "run", manifest(repo, text))
    wait_for(lambda: len(list(running.iterdir())) == 2, what="two agents at work")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    resumed = swarm_bg(repo, "resume")
    try:
        # The two it adopts hold both places: it starts no third beside them.
        wait_for(
            lambda: sum(1 for s in status_json(repo).values() if s["alive"]) == 2,
            what="the two agents adopted",
        )
        go.touch()
        assert resumed.wait(timeout=120) == 0
    finally:
        resumed.kill()
    assert all(status_json(repo)[i]["state"] == "done" for i in ids)
    seen = [int(n) for n in (tmp_path / "seen").read_text().split()]
    assert len(seen) == len(ids)  # each agent started once
    assert max(seen) <= 2, seen


@pytest.mark.slow  # long: runs in `scripts/check --slow` (CI runs both)
def test_an_agent_that_died_with_its_manager_ran_until_its_last_sign_of_life(
    repo: Path, fake_claude: Path
) -> None:
    # The machine went down (OOM, power): the manager, the shim and the agent at once.
    proc = run_waiting(repo, fake_claude)
    try:
        wait_for((fake_claude / "a.pid").exists, what="the agent")
        manager = psutil.Process(proc.pid)
        everything = [*manager.children(recursive=True), manager]
        for process in everything:
            process.kill()
        psutil.wait_procs(everything, timeout=30)
    finally:
        (fake_claude / "go").touch()
        proc.kill()
    log = next((repo / ".git" / "swarm" / "runs").glob("*/a/attempt-1.log"))
    r = open_repo(repo)
    with run_info.open_store(r) as store:
        run_id = run_info.resolve_run(store, None)
        (task,) = store.tasks(run_id)
        started = task.started_at
        assert started is not None
        os.utime(log, (started + 3, started + 3))  # its last line, 3 s into the task
        rows = [status.task_status(store, run_id, now=started + at)[0] for at in (60, 600)]
    assert [row.elapsed_s for row in rows] == pytest.approx([3.0, 3.0], abs=0.01)  # no clock
    app, store = open_app(repo)

    async def look() -> None:
        async with app.run_test(size=(140, 40)) as pilot:
            await pilot.pause()
            assert "manager not running" in app.sub_title  # as `swarm status` says

    try:
        run_async(look)
    finally:
        store.close()
    assert swarm(repo, "resume").returncode == 1  # it failed: no exit status, no result
    ((_number, outcome, _started, ended),) = attempts(repo, "a")
    assert outcome == "failed"
    assert ended == pytest.approx(started + 3)  # not the moment resume found it gone


def test_an_agent_that_ended_after_its_manager_died_ran_until_its_shim_says(
    repo: Path, fake_claude: Path
) -> None:
    # The manager alone died (its terminal, a SIGKILL); the agent ran on, quiet, and ended.
    proc = run_waiting(repo, fake_claude)
    try:
        wait_for((fake_claude / "a.pid").exists, what="the agent")
        proc.kill()
        proc.wait(timeout=30)
    finally:
        (fake_claude / "go").touch()
    log = next((repo / ".git" / "swarm" / "runs").glob("*/a/attempt-1.log"))
    record = log.with_name("attempt-1.exit.json")

    def ended_at() -> float | None:
        with contextlib.suppress(OSError, ValueError):
            return json.loads(record.read_text())["ended_at"]  # type: ignore[no-any-return]
        return None

    wait_for(lambda: ended_at() is not None, what="the shim's record of the agent's end")
    ((_number, _outcome, started, _ended),) = attempts(repo, "a")
    os.utime(log, (started, started))  # nothing written after its start
    with run_info.open_store(open_repo(repo)) as store:
        run_id = run_info.resolve_run(store, None)
        (row,) = status.task_status(store, run_id, now=time.time() + 3600)  # an hour on
        (task,) = store.tasks(run_id)
    assert row.elapsed_s is not None
    assert task.started_at is not None
    assert row.elapsed_s > 0
    # The task's clock (from its start, setup included) stopped when the shim saw the agent end.
    assert row.elapsed_s == pytest.approx(ended_at() - task.started_at, abs=0.001)


def test_detach_runs_in_background(repo: Path, fake_claude: Path) -> None:
    out = swarm(repo, "run", "--detach", manifest(repo, tasks_toml(["a", "b"])))
    assert out.returncode == 0, out.stderr
    assert "background" in out.stdout
    # Back with the run's store made: a look at once finds the run (it said, exit 3, that
    # the state directory had been deleted under a live manager).
    look = swarm(repo, "status")
    assert look.returncode == 0, look.stdout + look.stderr
    pid = int(out.stdout.split("pid ")[1].split(",")[0])
    log = Path(out.stdout.split("log ")[1].split(")")[0])
    wait_for(lambda: not pid_alive(pid), what="the detached manager to finish")
    rows = status_json(repo)
    assert rows["a"]["state"] == rows["b"]["state"] == "done"
    assert "a: done" in log.read_text()  # the manager's own output went to its log


def test_resume_detach_carries_the_run_on_in_the_background(repo: Path, fake_claude: Path) -> None:
    # A run resumed from a terminal ended with that terminal: `resume` had no --detach.
    proc = run_waiting(repo, fake_claude)
    wait_for((fake_claude / "a.pid").exists, what="the agent")
    proc.kill()  # the manager dies; its agent waits on
    proc.wait(timeout=30)
    try:
        out = swarm(repo, "resume", "--detach")
        assert out.returncode == 0, out.stdout + out.stderr
        assert "manager running in the background" in out.stdout
        pid = int(out.stdout.split("pid ")[1].split(",")[0])
        assert "manager not running" not in swarm(repo, "status").stdout  # adopted already
        again = swarm(repo, "resume", "--detach")  # the run has its manager
        assert again.returncode == 3, again.stdout + again.stderr
    finally:
        (fake_claude / "go").touch()
    wait_for(lambda: not pid_alive(pid), what="the resumed manager to finish")
    assert status_json(repo)["a"]["state"] == "done"
    assert len(calls(fake_claude, "a")) == 1  # adopted, not started again


def test_detach_with_json_says_where_in_json_and_the_events_go_to_its_log(
    repo: Path, fake_claude: Path
) -> None:
    # A script that asked for JSON got the plain sentence, and no word of where events went.
    out = swarm(repo, "run", "--detach", "--json", manifest(repo, tasks_toml(["a"])))
    assert out.returncode == 0, out.stderr
    (line,) = out.stdout.splitlines()
    said = json.loads(line)
    assert said["event"] == "detached"
    log = Path(said["log"])
    wait_for(lambda: not pid_alive(said["pid"]), what="the detached manager to finish")
    events = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    assert events[0]["event"] == "run_started"
    assert events[-1]["event"] == "run_finished"
    assert status_json(repo)["a"]["state"] == "done"


@pytest.mark.slow  # 20,000 files checked out
def test_detach_returns_once_the_run_is_recorded(repo: Path, fake_claude: Path) -> None:
    # 20,000 files whose stat data git no longer trusts: the manager's look at your checkout
    # (git status), between making its store and recording the run, reads every one.
    files = [repo / "many" / f"d{n // 200}" / f"f{n}" for n in range(20_000)]
    for path in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(path.name)
    git(repo, "add", "many")
    git(repo, "commit", "-qm", "many files")
    later = time.time() + 60
    for path in files:
        os.utime(path, (later, later))
    out = swarm(repo, "run", "--detach", manifest(repo, tasks_toml(["a"])))
    assert out.returncode == 0, out.stderr
    look = swarm(repo, "status")  # at once: it said no swarm runs were recorded yet (exit 2)
    assert look.returncode == 0, look.stdout + look.stderr
    assert "a" in status_json(repo)
    pid = int(out.stdout.split("pid ")[1].split(",")[0])
    wait_for(lambda: not pid_alive(pid), what="the detached manager to finish")


def test_a_detach_that_loses_the_race_for_the_lock_exits_3(
    repo: Path, fake_claude: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan(fake_claude, "a", "wait")
    first = swarm(repo, "run", "--detach", manifest(repo, tasks_toml(["a"])))
    assert first.returncode == 0, first.stderr
    # The second `--detach` checked the lock just before the first one's manager took it.
    real, checked = background.lock.manager_alive, []

    def alive(state_dir: Path) -> bool:
        checked.append(state_dir)
        return len(checked) > 1 and real(state_dir)

    monkeypatch.setattr(background.lock, "manager_alive", alive)
    monkeypatch.chdir(repo)  # the background manager runs where `swarm` was started
    second = repo.parent / "second.toml"
    second.write_text(tasks_toml(["b"]))
    try:
        with pytest.raises(ManagerLockedError, match=r"^another swarm manager \(pid \d+.*\) holds"):
            background.detach(open_repo(repo), ["run", str(second)])
        # the refused one's log said only that: gone, as a refused `run --detach` leaves none
        assert len(list((repo / ".git" / "swarm").glob("manager-*.log"))) == 1
    finally:  # the first run's agent ends either way
        (fake_claude / "go").touch()
    pid = int(first.stdout.split("pid ")[1].split(",")[0])
    wait_for(lambda: not pid_alive(pid), what="the detached manager to finish")
    assert status_json(repo)["a"]["state"] == "done"


@pytest.mark.long
def test_a_state_directory_deleted_under_a_run_admits_no_second_manager_and_is_written_back(
    repo: Path, fake_claude: Path
) -> None:
    proc = run_waiting(repo, fake_claude)
    try:
        wait_for((fake_claude / "a.pid").exists, what="the agent")
        gone(repo / ".git" / "swarm")
        # A second run would watch the first one's branch as an outside write, and undo it.
        second = swarm(repo, "run", manifest(repo, tasks_toml(["b"])))
        assert second.returncode == 3, second.stdout + second.stderr
        assert "another swarm manager holds this repository" in second.stderr
        assert "b" not in git(repo, "branch", "--list", "swarm/b")
        for command in ("resume", "retry"):  # nor one that would carry a run on beside it
            other = swarm(repo, command)
            assert other.returncode == 3, command + other.stdout + other.stderr
            deleted = f"though {repo / '.git' / 'swarm'} was deleted under it"
            assert deleted in other.stderr, other.stderr
        (fake_claude / "go").touch()
        code = proc.wait(timeout=60)
    finally:
        (fake_claude / "go").touch()
        proc.kill()
    out = (repo.parent / "bg.log").read_text()
    assert code == 0, out
    assert "was deleted during the run and is written back" in out
    assert status_json(repo)["a"]["state"] == "done"  # the morning finds the run
    assert branch_file(repo, "swarm/a", "a.txt") == "finished"


@pytest.mark.parametrize("how", ["garbage", "another database", "log deleted"])
def test_a_state_database_replaced_by_garbage_or_its_log_deleted_under_a_run_is_written_back(
    repo: Path, fake_claude: Path, how: str
) -> None:
    """Garbage moved onto it (what an agent without --sandbox can do to stop the guard): the
    manager's look opened it with the store's own write-ahead log, which SQLite then wrote
    into the garbage and dropped; the manager died of `no such table`. Its log deleted: every
    other command read a store with no tables (`swarm stop` failed) until the run ended."""
    proc = run_waiting(repo, fake_claude)
    try:
        wait_for((fake_claude / "a.pid").exists, what="the agent")
        state = repo / ".git" / "swarm" / "state.db"
        if how == "garbage":
            garbage = repo.parent / "garbage"
            garbage.write_bytes(bytes(range(256)) * 32)
            garbage.replace(state)
        elif how == "another database":  # a backup moved back, say: no run of this one in it
            other = repo.parent / "other.db"
            with contextlib.closing(sqlite3.connect(other)) as db:
                db.execute("CREATE TABLE notes (x)")
                db.commit()
            other.replace(state)
        else:
            state.with_name("state.db-wal").unlink()

            def readable() -> bool:
                out = swarm(repo, "status", "--json")
                return out.returncode == 0 and '"state": "running"' in out.stdout

            wait_for(readable, what="the store written back, read by another command")
        (fake_claude / "go").touch()
        code = proc.wait(timeout=60)
    finally:
        (fake_claude / "go").touch()
        proc.kill()
    out = (repo.parent / "bg.log").read_text()
    assert code == 0, out
    assert "is written back" in out
    assert status_json(repo)["a"]["state"] == "done"
    assert branch_file(repo, "swarm/a", "a.txt") == "finished"


@pytest.mark.long
@pytest.mark.parametrize("command", ["status", "logs", "resume"])
def test_a_look_at_a_state_directory_deleted_under_a_live_manager_says_so(
    repo: Path, fake_claude: Path, command: str
) -> None:
    # The manager (here this process, holding the lock as one does) writes it back once it
    # notices; until then "no swarm runs in ... yet" was all a command said.
    out = swarm(repo, "run", manifest(repo, tasks_toml(["a"])))
    assert out.returncode == 0, out.stderr
    state = repo / ".git" / "swarm"
    with ManagerLock(state) as lock:
        lock.acquire()
        shutil.rmtree(state)
        looked = swarm(repo, command, *(["a"] if command == "logs" else []))
    assert looked.returncode == 3, looked.stdout + looked.stderr
    assert looked.stderr == (
        f"swarm: another swarm manager holds this repository, though {state} was deleted"
        " under it; wait for it to end (it writes its state back there)\n"
    )
    assert not state.exists()  # and it made nothing there
    shutil.rmtree(repo / ".git" / "swarm", ignore_errors=True)
    assert "no swarm runs" in swarm(repo, "status").stderr  # no manager: as ever


def test_a_manager_a_long_lived_command_started_in_the_background_leaves_no_zombie(
    repo: Path, fake_claude: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As `swarm watch` does for a retry: the manager it starts is its child until it ends.
    monkeypatch.chdir(repo)  # the background manager runs where `swarm` was started
    path = manifest(repo, tasks_toml(["a"]))
    pid, _log = background.detach(open_repo(repo), ["run", path])
    wait_for(lambda: not psutil.pid_exists(pid), what="the manager to end and be reaped")
    assert status_json(repo)["a"]["state"] == "done"


def test_claude_codes_own_settings_file_is_never_checkpointed_and_gitignore_left_alone(
    repo: Path, fake_claude: Path
) -> None:
    plan(fake_claude, "a", "settings")
    out = swarm(repo, "run", manifest(repo, tasks_toml(["a"])))
    assert out.returncode == 0, out.stdout + out.stderr
    assert git(repo, "ls-tree", "-r", "--name-only", "swarm/a").split() == [
        ".claude/commands/review.md",  # a file of the project, as a task may add
        "README.md",
    ]
    worktree = repo.parent / "repo.swarm" / "a"
    assert (worktree / ".claude" / "settings.local.json").exists()  # still there for it
    assert not (worktree / ".gitignore").exists()


def test_claude_argv_with_own_flags_keeps_the_claude_adapter(repo: Path, fake_claude: Path) -> None:
    plan(fake_claude, "a", "limit", "finish")
    text = (
        '[defaults]\nagent = ["claude", "-p", "{prompt}", "--output-format", "json",'
        ' "--permission-mode", "plan"]\nrate_limit_backoff = "0.2s"\nretries = 1\n'
        '[[task]]\nid = "a"\nprompt = "x"\n'
    )
    out = swarm(repo, "run", manifest(repo, text))
    assert out.returncode == 0, out.stdout + out.stderr
    first, second = calls(fake_claude, "a")
    assert first["argv"][first["argv"].index("--permission-mode") + 1] == "plan"
    assert "--resume" in second["argv"]  # classified as a rate limit and resumed


def test_stop_after_manager_died_kills_agent_and_checkpoints_as_configured_author(
    repo: Path, fake_claude: Path
) -> None:
    proc = run_waiting(repo, fake_claude, 'commit_author = "Night Shift <night@example.com>"\n')
    wait_for((fake_claude / "a.pid").exists, what="the agent")
    agent = int((fake_claude / "a.pid").read_text())
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    out = swarm(repo, "stop")
    assert out.returncode == 0, out.stderr
    assert not pid_alive(agent)
    row = status_json(repo)["a"]
    assert row["state"] == "stopped"
    assert branch_file(repo, "swarm/a", "a.txt") == "started"
    assert (row["files_changed"], row["insertions"]) == (1, 1)  # what the branch holds
    assert git(repo, "log", "-1", "--format=%an <%ae>", "swarm/a") == (
        "Night Shift <night@example.com>"
    )
    # Every task is final: the run is over, nothing to resume, and a new run may start.
    shown = json.loads(swarm(repo, "status", "--json").stdout)
    assert (shown["run_state"], shown["manager_note"]) == ("stopped", None)
    assert swarm(repo, "run", manifest(repo, tasks_toml(["b"]))).returncode == 0


def test_stop_after_manager_died_keeps_a_file_over_max_file_and_stops_every_task(
    repo: Path, fake_claude: Path
) -> None:
    # The stop's checkpoint of the first task left a file out and raised: the stop ended there,
    # the other task's agent still running, its task never marked.
    plan(fake_claude, "a", "wait")
    plan(fake_claude, "b", "wait")
    text = tasks_toml(["a", "b"], 'max_file = "1K"\n')
    proc = swarm_bg(repo, "run", manifest(repo, text))
    wait_for(lambda: (fake_claude / "a.pid").exists() and (fake_claude / "b.pid").exists())
    agents = [int((fake_claude / f"{t}.pid").read_text()) for t in ("a", "b")]
    worktree = repo.parent / "repo.swarm" / "a"
    (worktree / "big.bin").write_bytes(b"\0" * 2048)  # as its agent would
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    out = swarm(repo, "stop")
    assert out.returncode == 0, out.stdout + out.stderr
    assert not any(pid_alive(pid) for pid in agents)
    rows = status_json(repo)
    assert {t: row["state"] for t, row in rows.items()} == {"a": "stopped", "b": "stopped"}
    assert str(rows["a"]["reason"]).startswith("stopped; wrote files over max_file (1.0K: ")
    assert branch_file(repo, "swarm/a", "a.txt") == "started"  # the rest is committed
    assert "big.bin" not in git(repo, "ls-tree", "-r", "--name-only", "swarm/a")
    assert (worktree / "big.bin").stat().st_size == 2048  # kept where it was


@pytest.mark.long
def test_doctor_and_clean_beside_a_live_manager_whose_state_was_deleted_touch_nothing(
    repo: Path, fake_claude: Path
) -> None:
    # With no store, the manager's agents and worktrees looked like orphans: `swarm doctor
    # --yes` killed an agent at work in its worktree; `swarm clean` said there was no run.
    out = swarm(repo, "run", manifest(repo, tasks_toml(["a"])))
    assert out.returncode == 0, out.stderr
    worktree = repo.parent / "repo.swarm" / "a"
    state = repo / ".git" / "swarm"
    agent = subprocess.Popen(["sleep", "300"], cwd=worktree)  # at work in the task's worktree
    try:
        with ManagerLock(state) as lock:  # the manager (here this process) writes it back
            lock.acquire()
            shutil.rmtree(state)
            looked = [swarm(repo, *args) for args in (("doctor", "--yes", "--force"),
                                                      ("clean", "--yes"), ("notes",))]  # fmt: skip
        assert pid_alive(agent.pid)
    finally:
        agent.kill()
        agent.wait()
    for out in looked:
        assert out.returncode == 3, [*out.args, out.stdout, out.stderr]
        assert f"though {state} was deleted under it" in out.stderr
    assert worktree.is_dir()
    assert git(repo, "branch", "--list", "swarm/a")


def test_a_store_a_manager_makes_as_a_command_looks_is_not_taken_for_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first run of a repository took its lock, then checked its branches before it made
    # its store: a `swarm status` (or a second `swarm run`) meanwhile said exit 3, "though
    # .git/swarm was deleted under it".
    state = tmp_path / "swarm"
    state.mkdir()
    path = state / "state.db"
    made: list[Store] = []
    alive = lock.manager_alive

    def manager_alive(state_dir: Path) -> bool:
        if not made:  # the manager makes its store just as the command looks
            made.append(Store(path))
        return alive(state_dir)

    with ManagerLock(state) as held:
        held.acquire()
        monkeypatch.setattr(lock, "manager_alive", manager_alive)
        try:
            lock.refuse_while_state_is_gone(state, path)
        finally:
            for store in made:
                store.close()


WAIT_OR_FAIL = r"""
import os, pathlib, sys, time
me, here = os.environ["SWARM_TASK_ID"], pathlib.Path(DIR)
pathlib.Path(me + ".txt").write_text("started\n")
(here / f"{me}.pid").write_text(str(os.getpid()))
if me == "z" and not (here / "z.ok").exists():
    sys.exit(3)  # fails the first time
while not (here / f"{me}.go").exists():
    time.sleep(0.05)
"""


@pytest.mark.long
def test_a_run_without_a_manager_is_stopped_while_another_runs_manager_is_alive(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    # `swarm stop --run R1` asked "a manager" (the other run's, busy with a retry) to stop R1's
    # tasks, waited 40 s and failed, its agents left running.
    agent = write_agent(f"DIR = {str(tmp_path)!r}\n" + WAIT_OR_FAIL)
    command = ["--agent", shlex.join(agent)]
    assert swarm(repo, "run", *command, "-t", "z=x").returncode == 1
    orphaned = swarm_bg(repo, "run", *command, "-t", "w=x")
    wait_for((tmp_path / "w.pid").exists, what="w's agent")
    orphaned.send_signal(signal.SIGKILL)
    orphaned.wait(timeout=30)
    first, second = (r["run_id"] for r in json.loads(swarm(repo, "runs", "--json").stdout)["runs"])
    (tmp_path / "z.pid").unlink()
    (tmp_path / "z.ok").touch()
    retried = swarm_bg(repo, "retry", "z", "--run", first)  # the other run's manager, alive
    try:
        wait_for((tmp_path / "z.pid").exists, what="z's retried agent")
        out = swarm(repo, "stop", "--run", second, timeout=30)
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout == "stopped: w\n"
        assert not pid_alive(int((tmp_path / "w.pid").read_text()))
        assert status_json(repo, "--run", second)["w"]["state"] == "stopped"
        assert branch_file(repo, "swarm/w", "w.txt") == "started"
        (tmp_path / "z.go").touch()
        assert retried.wait(timeout=60) == 0
    finally:
        retried.kill()
    assert status_json(repo, "--run", first)["z"]["state"] == "done"


PACED = r"""
import os, pathlib, sys, time
me, here = os.environ["SWARM_TASK_ID"], pathlib.Path(DIR)
if me == "a":  # a usage window of one task's word: the provider is paced, not held
    (here / "a.said").write_text("")
    print(f"Claude AI usage limit reached|{int(time.time()) + 900}")
    sys.exit(1)
if me == "b":  # ends right after a's limit, while the provider's launches are paced
    while not (here / "a.said").exists():
        time.sleep(0.02)
pathlib.Path(me + ".txt").write_text("done\n")
"""


@pytest.mark.slow  # waits out a pacing of seconds
def test_a_task_held_by_its_providers_pacing_starts_when_the_pacing_ends(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    # c became ready (b done) while the provider was paced after a's limit: held, it was
    # looked at again only at the next event, a's reset fifteen minutes away.
    agent = write_agent(f"DIR = {str(tmp_path)!r}\n" + PACED)
    text = (
        f'[defaults]\nagent = {argv_toml(agent)}\njobs = 2\nmax_wait = "1h"\n'
        'rate_limit_backoff = "6s"\n'
        '[[task]]\nid = "a"\nprompt = "a"\n'
        '[[task]]\nid = "b"\nprompt = "b"\n'
        '[[task]]\nid = "c"\nprompt = "c"\ndepends_on = ["b"]\n'
    )
    proc = swarm_bg(repo, "run", manifest(repo, text))
    try:
        wait_for(lambda: task_state(repo, "c") == "done", what="c done")
        assert status_json(repo)["a"]["state"] == "rate_limited"
        assert swarm(repo, "stop").returncode == 0
        proc.wait(timeout=60)
    finally:
        proc.kill()


def task_state(repo: Path, task: str) -> str | None:
    """*task*'s state in the store (None before the store or the task is there)."""
    if not (repo / ".git" / "swarm" / "state.db").exists():
        return None
    try:
        with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as db:
            row = db.execute("SELECT state FROM tasks WHERE task_id = ?", (task,)).fetchone()
    except sqlite3.OperationalError:  # the manager is still creating the store
        return None
    return None if row is None else str(row[0])


def orphan_waiting_agent(repo: Path, tmp_path: Path, write_agent: AgentFactory) -> None:
    """A run of task w whose agent waits for w.go, its manager SIGKILLed (the agent lives on)."""
    agent = write_agent(f"DIR = {str(tmp_path)!r}\n" + WAIT_OR_FAIL)
    orphaned = swarm_bg(repo, "run", "--agent", shlex.join(agent), "-t", "w=x")
    wait_for((tmp_path / "w.pid").exists, what="w's agent")
    orphaned.send_signal(signal.SIGKILL)
    orphaned.wait(timeout=30)


def test_following_a_log_ends_when_its_agent_ends_with_no_manager_to_record_it(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    # With the manager killed nothing records the attempt's end: `swarm logs -f` followed an
    # ended agent's log for ever.
    orphan_waiting_agent(repo, tmp_path, write_agent)
    follower = subprocess.Popen(
        [sys.executable, "-m", "worktree_swarm.cli", "logs", "w", "-f"],
        cwd=repo,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert pid_alive(int((tmp_path / "w.pid").read_text()))
        (tmp_path / "w.go").touch()
        assert follower.wait(timeout=30) == 0
    finally:
        follower.kill()
        follower.wait()


def test_a_stop_beside_another_runs_stop_waits_for_no_guard(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two crashed runs stopped at once: the stop of one holds the manager lock, with no guard.
    # The other's took it for a live manager and announced its checkpoint to a guard nobody
    # runs, waiting 30 s per task for a verdict never given.
    orphan_waiting_agent(repo, tmp_path, write_agent)
    git_repo = open_repo(repo)
    with run_info.open_store(git_repo) as store, ManagerLock(git_repo.state_dir) as other:
        run_id = run_info.resolve_run(store, None)
        other.acquire(run_id="20260101-000000-0000", guarded=False)

        def no_verdict(*_: object) -> None:
            raise AssertionError("waited for a guard's verdict beside a stop")

        monkeypatch.setattr(ref_moves, "_await_verdict", no_verdict)
        assert control.stop(git_repo, store, run_id, ["w"], grace=5).tasks == ("w",)
        assert store.task(run_id, "w").state is TaskState.STOPPED
    assert not pid_alive(int((tmp_path / "w.pid").read_text()))


def test_a_stop_lock_held_past_any_stop_is_given_up_with_one_line(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # stop.lock held longer than a stop takes (by an agent outside --sandbox): `swarm stop`
    # must not wait for ever, and changes nothing.
    orphan_waiting_agent(repo, tmp_path, write_agent)
    git_repo = open_repo(repo)
    monkeypatch.setattr(control, "STOP_WAIT", 0.3)
    held = filelock.FileLock(git_repo.state_dir / control.STOP_LOCK, thread_local=False)
    with held, run_info.open_store(git_repo) as store:
        run_id = run_info.resolve_run(store, None)
        with pytest.raises(SwarmError, match=r"stop\.lock has been held for 0s .*; try again"):
            control.stop_unmanaged(git_repo, store, run_id, ["w"])
        assert store.task(run_id, "w").state is TaskState.RUNNING
    assert pid_alive(int((tmp_path / "w.pid").read_text()))
    assert swarm(repo, "stop").returncode == 0
    assert not pid_alive(int((tmp_path / "w.pid").read_text()))


def test_a_guard_is_alive_only_beside_a_manager_that_runs_one(tmp_path: Path) -> None:
    # What `swarm merge`, `clean` and a stop announce their ref moves to: a run's manager,
    # not a stop of a run with no manager (or `run --force` abandoning one) holding the lock.
    state = tmp_path / "state"
    assert not lock.guard_alive(state)
    for guarded in (True, False):
        with ManagerLock(state) as held:
            held.acquire(run_id="r1", guarded=guarded)
            assert lock.manager_alive(state)
            assert lock.guard_alive(state) is guarded
    assert not lock.guard_alive(state)


@pytest.mark.long
def test_a_manager_lock_taken_by_another_program_once_the_manager_died_is_no_manager(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    # An agent outside --sandbox took manager.lock once its manager was killed: every later
    # command took it for a live manager (and for one whose state was deleted under it), and
    # nothing could stop the agent.
    orphan_waiting_agent(repo, tmp_path, write_agent)
    held = tmp_path / "held"
    squatter = subprocess.Popen(  # its group: the sleep holds the lock it inherits
        ["flock", "-x", str(repo / ".git" / "swarm" / "manager.lock"),
         "sh", "-c", f"touch {held}; exec sleep 120"],
        start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(held.exists, what="the lock taken")
        for _ in range(2):  # the first read lets SQLite remove the write-ahead log
            shown = json.loads(swarm(repo, "status", "--json").stdout)
            assert shown["run_state"] == "manager_gone"
        out = swarm(repo, "stop")
        assert out.returncode == 0, out.stdout + out.stderr
        assert status_json(repo)["w"]["state"] == "stopped"
        assert not pid_alive(int((tmp_path / "w.pid").read_text()))
    finally:
        os.killpg(squatter.pid, signal.SIGKILL)
        squatter.wait()
