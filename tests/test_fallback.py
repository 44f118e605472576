"""Fallback and budget agents end to end: fake `claude`, `codex` and `gemini` programs on PATH
print each CLI's real limit messages; the task carries on with the next agent in its worktree.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import (
    checkpoint_lines,
    git,
    retried_tip,
    script_interpreter,
    unrecord_launch,
)
from tests.test_run import (
    AgentFactory,
    argv_toml,
    branch_file,
    manifest,
    status_json,
    swarm,
    swarm_bg,
    wait_for,
)
from worktree_swarm.infra import shim_record

# One program installed under three names; what it does comes from $FAKE_DIR/<name>-<task>.plan
# (one step per call, then "finish"). The limit messages are the CLIs' own.
FAKE_AGENT = r"""#!PYTHON
import json, os, pathlib, sys, time
name = pathlib.Path(sys.argv[0]).name
args = sys.argv[1:]
task = os.environ["SWARM_TASK_ID"]
fake = pathlib.Path(os.environ["FAKE_DIR"])
calls = fake / f"{name}-{task}.calls"
with calls.open("a") as fh:
    fh.write(json.dumps({"argv": args, "cwd": os.getcwd()}) + "\n")
n = len(calls.read_text().splitlines())
planned = fake / f"{name}-{task}.plan"
steps = planned.read_text().split() if planned.exists() else []
step = steps[n - 1] if n <= len(steps) else "finish"
reset = int(time.time() + float(os.environ.get("FAKE_RESET", "18000")))
session = f"{name}-{task}-session"
if os.environ.get("FAKE_HOLD_CALL") == f"{name}-{task}-{n}":  # this call waits until told
    while not (fake / "go").exists():
        time.sleep(0.02)
def emit(obj):
    print(json.dumps(obj), flush=True)
if step != "quota":  # a quota refuses at once: nothing done (a storm's 429s get further)
    with open(f"{name}.txt", "a") as fh:
        fh.write(f"{name} call {n}: {step}\n")
if name == "claude":
    if os.environ.get("FAKE_DROPPING"):  # the file Claude Code writes for itself
        pathlib.Path(".claude").mkdir(exist_ok=True)
        pathlib.Path(".claude/settings.local.json").write_text("{}\n")
    emit({"type": "system", "subtype": "init", "session_id": session})
    if step in {"overage", "served"}:  # rejected, yet the request is answered
        info = {"status": "rejected", "resetsAt": reset, "rateLimitType": "five_hour"}
        if step == "overage":
            info.update(overageStatus="allowed", isUsingOverage=True)
        emit({"type": "rate_limit_event", "session_id": session, "rate_limit_info": info})
    emit({"type": "assistant", "message": {"id": f"msg-{n}"}, "session_id": session})
    if step == "window":
        emit({"type": "rate_limit_event", "session_id": session,
              "rate_limit_info": {"status": "rejected", "resetsAt": reset}})
        emit({"type": "result", "subtype": "success", "is_error": True, "session_id": session,
              "result": f"Claude AI usage limit reached|{reset}", "total_cost_usd": 0.01})
        if os.environ.get("FAKE_HOLD"):  # stay alive until told: a window seen live
            while not (fake / "go").exists():
                time.sleep(0.05)
        sys.exit(1)
    emit({"type": "result", "subtype": "success", "is_error": False, "session_id": session,
          "result": "done", "total_cost_usd": float(os.environ.get("FAKE_COST", "0.01")),
          "usage": {"input_tokens": 100, "output_tokens": 20}})
    sys.exit(0)
if name == "codex":
    emit({"type": "thread.started", "thread_id": session})
    emit({"type": "turn.started"})
    if step == "window":
        message = ('unexpected status 429 Too Many Requests: {"error":{"type":'
                   '"usage_limit_reached","message":"The usage limit has been reached",'
                   f'"plan_type":"plus","resets_at":{reset}}}}}')
        emit({"type": "error", "message": message})
        emit({"type": "turn.failed", "error": {"message": message}})
        sys.exit(1)
    emit({"type": "turn.completed",
          "usage": {"input_tokens": 100, "cached_input_tokens": 0, "output_tokens": 20}})
    sys.exit(0)
# gemini --output-format json: one pretty-printed object at the end
if step == "quota":
    error = {"type": "Error", "code": 1, "message": "[API Error: Quota exceeded for quota "
             "metric 'Gemini 2.5 Pro Requests' (RESOURCE_EXHAUSTED)]"}
    print(json.dumps({"session_id": session, "error": error}, indent=2), flush=True)
    sys.exit(1)
print(json.dumps({"session_id": session, "response": "done", "stats": {}}, indent=2))
"""


@pytest.fixture
def fake_agents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`claude`, `codex` and `gemini` first on PATH; returns the directory that scripts them."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("claude", "codex", "gemini"):
        exe = bin_dir / name
        exe.write_text(FAKE_AGENT.replace("#!PYTHON", script_interpreter(), 1))
        exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    fake = tmp_path / "fake"
    fake.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DIR", str(fake))
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-fake")  # swarm checks claude is signed in
    return fake


def plan(fake: Path, agent: str, task: str, *steps: str) -> None:
    (fake / f"{agent}-{task}.plan").write_text(" ".join(steps))


def calls(fake: Path, agent: str, task: str) -> list[list[str]]:
    path = fake / f"{agent}-{task}.calls"
    if not path.exists():
        return []
    return [json.loads(line)["argv"] for line in path.read_text().splitlines()]


def agents_of(repo: Path, task: str) -> list[str]:
    with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as db:
        rows = db.execute(
            "SELECT agent FROM attempts WHERE task_id = ? ORDER BY number", (task,)
        ).fetchall()
    return [r[0] for r in rows]


def tasks(ids: list[str], defaults: str) -> str:
    body = "".join(f'[[task]]\nid = "{i}"\nprompt = "write the {i} module"\n' for i in ids)
    return f"[defaults]\n{defaults}\n{body}"


def test_usage_window_hands_every_task_to_the_fallback(repo: Path, fake_agents: Path) -> None:
    ids = ["a", "b", "c"]
    for i in ids:
        plan(fake_agents, "claude", i, "window")
    text = tasks(ids, 'agent = "claude"\nfallback = ["codex"]\njobs = 1')
    out = swarm(repo, "run", manifest(repo, text))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "anthropic: launches held - usage limit" in out.stdout.splitlines()
    assert "usage limit; codex takes over" in out.stdout
    rows = status_json(repo)
    assert {i: rows[i]["state"] for i in ids} == dict.fromkeys(ids, "done")
    chains = sorted(agents_of(repo, i) for i in ids)
    # The first task meets the window, the second confirms it; nobody launches claude after.
    assert chains == [["claude", "codex"], ["claude", "codex"], ["codex"]]
    first = next(i for i in ids if agents_of(repo, i)[0] == "claude")
    # Same worktree and branch: claude's half-done work and codex's finish, both kept.
    assert branch_file(repo, f"swarm/{first}", "claude.txt") == "claude call 1: window"
    assert branch_file(repo, f"swarm/{first}", "codex.txt") == "codex call 1: finish"
    # Each checkpoint names the agent that did its work (newest first).
    trailers = "--format=%(trailers:key=Swarm-Agent,valueonly)"
    assert git(repo, "log", trailers, f"swarm/{first}", "^main").split() == ["codex", "claude"]
    handover = calls(fake_agents, "codex", first)[0][-1]
    assert "Another coding agent (claude)" in handover
    assert "usage limit" in handover
    assert "1 files changed, +1 -0: claude.txt" in handover
    assert handover.startswith("Another coding agent (claude)")  # the hand-over first
    assert handover.count(f"write the {first} module") == 1  # then the task, once
    assert handover.count("findings") >= 1
    assert handover.count("swarm note") == 1  # the findings paragraph, once
    assert rows[first]["agent"] == "codex"
    # status names the provider's window and why.
    plain = swarm(repo, "status")
    assert "anthropic: " in plain.stdout
    assert "launches wait until" in plain.stdout
    assert "usage limit" in plain.stdout
    report = swarm(repo, "report")
    assert report.returncode == 0, report.stderr
    assert "claude>codex" in report.stdout  # the task's chain of agents
    assert "provider   anthropic: 6/6 agents" not in report.stdout  # jobs = 1
    assert "provider   anthropic: 1/1 agents" in report.stdout


def test_out_of_retries_hands_over_to_the_next_agent(repo: Path, fake_agents: Path) -> None:
    plan(fake_agents, "gemini", "a", "quota", "quota")
    text = tasks(
        ["a"], 'agent = "gemini"\nfallback = ["codex"]\nretries = 1\nrate_limit_backoff = "0.2s"'
    )
    out = swarm(repo, "run", manifest(repo, text))
    assert out.returncode == 0, out.stdout + out.stderr
    assert agents_of(repo, "a") == ["gemini", "gemini", "codex"]
    second = calls(fake_agents, "gemini", "a")[1]
    assert second[-2:] == ["--resume", "gemini-a-session"]  # the retry resumed its session
    codex = calls(fake_agents, "codex", "a")[0]
    assert "resume" not in codex  # a fresh codex session, told what was done
    assert "out of rate-limit retries" in codex[-1]
    assert status_json(repo)["a"]["state"] == "done"


def test_a_window_past_max_wait_without_fallback_fails_keeping_work(
    repo: Path, fake_agents: Path
) -> None:
    plan(fake_agents, "claude", "a", "window")
    out = swarm(repo, "run", manifest(repo, tasks(["a"], 'agent = "claude"\nmax_wait = "1h"')))
    assert out.returncode == 1
    row = status_json(repo)["a"]
    assert row["state"] == "failed"
    assert str(row["reason"]).startswith("usage limit of anthropic resets at ")
    assert "past max_wait (3600s); work kept on swarm/a" in str(row["reason"])
    assert branch_file(repo, "swarm/a", "claude.txt") == "claude call 1: window"


def test_the_reset_survives_resume(repo: Path, fake_agents: Path) -> None:
    plan(fake_agents, "claude", "a", "window")
    text = tasks(["a"], 'agent = "claude"\nmax_wait = "6h"')
    proc = swarm_bg(repo, "run", manifest(repo, text))
    try:
        wait_for(
            lambda: (
                _retry_at(repo) is not None and status_json(repo)["a"]["state"] == "rate_limited"
            ),
            what="the wait to be recorded",
        )
        before = status_json(repo)["a"]
        recorded = _retry_at(repo)
        assert recorded is not None
        assert recorded > time.time() + 4 * 3600  # the stated reset, five hours on
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        resumed = swarm_bg(repo, "resume")
        wait_for(lambda: _events(repo, "agent_started") == 1 and _resumed(repo), what="resume")
        # The resumed manager waits for the same reset, and launches nothing meanwhile.
        assert _retry_at(repo) == recorded
        assert status_json(repo)["a"]["reason"] == before["reason"]
        assert len(calls(fake_agents, "claude", "a")) == 1
        _stopped_while_waiting(repo, resumed)
    finally:
        proc.kill()


def test_tasks_waiting_out_one_providers_window_let_another_providers_run(
    repo: Path, fake_agents: Path
) -> None:
    # Two claude tasks waiting for claude's window filled every place in flight (twice
    # `jobs`): the codex task never started, for as long as they waited (up to max_wait).
    for i in ("a", "b"):
        plan(fake_agents, "claude", i, "window")
    text = tasks(["a", "b"], 'agent = "claude"\njobs = 1\nmax_wait = "6h"\npriority = 5')
    text += '[[task]]\nid = "c"\nprompt = "write the c module"\nagent = "codex"\n'
    proc = swarm_bg(repo, "run", manifest(repo, text))
    try:
        wait_for(lambda: _state_of(repo, "c") == "done", what="the codex task")
        rows = status_json(repo)
        assert (rows["a"]["state"], rows["b"]["state"]) == ("rate_limited", "rate_limited")
        assert [len(calls(fake_agents, "claude", i)) for i in ("a", "b")] == [1, 1]
        assert swarm(repo, "stop").returncode == 0
        assert proc.wait(timeout=120) == 1
    finally:
        proc.kill()
    assert branch_file(repo, "swarm/c", "codex.txt") == "codex call 1: finish"


def test_a_window_is_seen_while_the_agent_still_runs(
    repo: Path, fake_agents: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # claude prints its usage limit and stays alive: the gate knows before claude exits (as
    # one task's word only: no other task met a limit).
    monkeypatch.setenv("FAKE_HOLD", "1")
    plan(fake_agents, "claude", "a", "window")
    text = tasks(["a"], 'agent = "claude"\nfallback = ["codex"]')
    proc = swarm_bg(repo, "run", manifest(repo, text))
    try:
        unconfirmed = "agents (usage limit, one task only: unconfirmed)"
        wait_for(lambda: unconfirmed in swarm(repo, "status").stdout, what="the claim")
        row = status_json(repo)["a"]
        assert (row["state"], row["alive"], row["agent"]) == ("running", True, "claude")
        (fake_agents / "go").touch()
        assert proc.wait(timeout=120) == 0
    finally:
        proc.kill()
    assert agents_of(repo, "a") == ["claude", "codex"]


@pytest.mark.parametrize("step", ["overage", "served"])
def test_a_rejected_request_that_is_answered_holds_no_one(
    repo: Path, fake_agents: Path, step: str
) -> None:
    # a's stream says "rejected" (five hours), then its request is answered: b, which waits
    # at most an hour for a window, starts at once instead of failing.
    plan(fake_agents, "claude", "a", step)
    text = tasks(["a", "b"], 'agent = "claude"\nmax_wait = "1h"')
    text = text.replace('id = "b"', 'id = "b"\ndepends_on = ["a"]')
    out = swarm(repo, "run", manifest(repo, text))
    assert out.returncode == 0, out.stdout + out.stderr
    assert [r["state"] for r in status_json(repo).values()] == ["done", "done"]
    assert "launches wait" not in swarm(repo, "status").stdout


def test_budget_agent_takes_over_past_the_budget_share(
    repo: Path, fake_agents: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = tasks(
        ["a", "b"],
        'agent = "claude"\nbudget_agent = "codex"\nbudget_share = 0.5\nmax_cost_usd = 1.0\n'
        "jobs = 1",
    )
    text = text.replace('id = "b"', 'id = "b"\ndepends_on = ["a"]')
    monkeypatch.setenv("FAKE_COST", "0.6")
    out = swarm(repo, "run", manifest(repo, text))
    assert out.returncode == 0, out.stdout + out.stderr
    assert agents_of(repo, "a") == ["claude"]
    assert agents_of(repo, "b") == ["codex"]  # $0.60 spent of $1.00: past 50%
    rows = status_json(repo)
    assert rows["b"]["state"] == "done"
    report = swarm(repo, "report", "--json")
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    agents = {t["task_id"]: [a["agent"] for a in t["attempts"]] for t in data["tasks"]}
    assert agents == {"a": ["claude"], "b": ["codex"]}


def _retry_at(repo: Path) -> float | None:
    if not (repo / ".git" / "swarm" / "state.db").exists():
        return None
    try:
        with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as db:
            row = db.execute("SELECT retry_at FROM attempts ORDER BY id DESC LIMIT 1").fetchone()
    except sqlite3.OperationalError:  # the manager is still creating the store
        return None
    return None if row is None else row[0]


def _stopped_while_waiting(repo: Path, manager: subprocess.Popen[str]) -> None:
    """`swarm stop a` while *manager* waits out a's limit: it ends, and a is stopped."""
    out = swarm(repo, "stop", "a")
    assert out.returncode == 0, out.stderr
    assert manager.wait(timeout=60) in {0, 1}
    assert status_json(repo)["a"]["state"] == "stopped"


def _state_of(repo: Path, task: str) -> str | None:
    """*task*'s state once the run has recorded it (None before; nothing made meanwhile)."""
    path = repo / ".git" / "swarm" / "state.db"
    if not path.exists():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT state FROM tasks WHERE task_id = ?", (task,)).fetchone()
    except sqlite3.Error:
        return None
    return None if row is None else str(row[0])


def _state(repo: Path) -> object:
    return status_json(repo)["a"]["state"]


def _events(repo: Path, kind: str) -> int:
    with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as db:
        return int(db.execute("SELECT count(*) FROM events WHERE kind = ?", (kind,)).fetchone()[0])


def _resumed(repo: Path) -> bool:
    with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as db:
        starts = db.execute("SELECT count(*) FROM events WHERE kind = 'run_started'").fetchone()
        states = db.execute(
            "SELECT count(*) FROM events WHERE kind = 'state' AND data LIKE '%resuming after%'"
        ).fetchone()
    return bool(starts[0] >= 2 and states[0] >= 2)


def _killed_while_handing_over(
    repo: Path, fake_agents: Path, tmp_path: Path, *, defaults: str, task_a: str, setup: str
) -> None:
    """Run a (*task_a*, priority 10) and b, jobs 1: a hands over to codex, whose attempt
    waits for the only slot b holds (b's *setup* waits for a's agent); kill the manager then.

    a's held call (``FAKE_HOLD_CALL``) ends once b waits for the slot, so b takes it first.
    """
    holds = "import pathlib, sys, time\npathlib.Path('b.txt').write_text('b')\n"
    holds += "pathlib.Path(sys.argv[1], 'b.started').touch()\n"
    holds += "while not pathlib.Path(sys.argv[1], 'go').exists():\n    time.sleep(0.05)\n"
    hold = json.dumps([sys.executable, "-c", holds, str(tmp_path)])
    text = f"[defaults]\njobs = 1\n{defaults}"
    text += f'[[task]]\nid = "a"\nprompt = "do a"\n{task_a}priority = 10\n'
    text += f'[[task]]\nid = "b"\nprompt = "do b"\nagent = {hold}\nsetup = [{json.dumps(setup)}]\n'
    proc = subprocess.Popen(
        [sys.executable, "-m", "worktree_swarm.cli", "run", manifest(repo, text)],
        cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    runs = repo / ".git" / "swarm" / "runs"
    try:
        wait_for(lambda: any(runs.glob("*/b/prompt-1.md")), what="b to wait for the slot")
    finally:
        (fake_agents / "go").touch()

    def handing_over() -> bool:
        try:
            return "codex takes over" in str(status_json(repo)["a"]["reason"])
        except (AssertionError, KeyError, ValueError):
            return False

    try:
        wait_for(lambda: (tmp_path / "b.started").exists() and handing_over(), what="a's hand-over")
    finally:  # killed as planned, or nothing left waiting if the test failed
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        (tmp_path / "go").touch()


def test_a_hand_over_a_crash_cut_goes_to_the_fallback_after_resume(
    repo: Path, fake_agents: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a: claude meets a usage window and hands over to codex.
    plan(fake_agents, "claude", "a", "window")
    waits = f"while not pathlib.Path({str(fake_agents / 'claude-a.calls')!r}).exists():"
    setup = shlex.join([sys.executable, "-c", f"import pathlib, time\n{waits}\n time.sleep(0.02)"])
    monkeypatch.setenv("FAKE_HOLD_CALL", "claude-a-1")
    _killed_while_handing_over(
        repo, fake_agents, tmp_path, defaults="",
        task_a='agent = "claude"\nfallback = ["codex"]\n', setup=setup,
    )  # fmt: skip
    assert swarm(repo, "resume").returncode == 0
    assert agents_of(repo, "a") == ["claude", "codex"]  # claude not asked again in its window
    assert len(calls(fake_agents, "claude", "a")) == 1
    assert status_json(repo)["a"]["state"] == "done"


def test_a_hand_over_out_of_retries_a_crash_cut_goes_to_the_fallback_after_resume(
    repo: Path, fake_agents: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # gemini: throttled twice with retries = 1, so out of retries: codex takes over.
    plan(fake_agents, "gemini", "a", "quota", "quota", "quota")
    gemini_calls = fake_agents / "gemini-a.calls"
    waits = f"calls = pathlib.Path({str(gemini_calls)!r})\n"
    waits += "while not calls.exists() or len(calls.read_text().splitlines()) < 2:\n"
    waits += "    time.sleep(0.02)"
    setup = shlex.join([sys.executable, "-c", f"import pathlib, time\n{waits}"])
    monkeypatch.setenv("FAKE_HOLD_CALL", "gemini-a-2")
    _killed_while_handing_over(
        repo, fake_agents, tmp_path, defaults='rate_limit_backoff = "0.2s"\n',
        task_a='agent = "gemini"\nfallback = ["codex"]\nretries = 1\n', setup=setup,
    )  # fmt: skip
    swarm(repo, "resume")
    assert len(calls(fake_agents, "gemini", "a")) == 2  # not asked a third time
    assert agents_of(repo, "a") == ["gemini", "gemini", "codex"]


def _failed_after_a_hand_over(repo: Path, fake_agents: Path) -> Path:
    """Run a: claude meets a usage window, codex takes over and meets one too (a fails).

    Returns a's worktree, with a file written there since.
    """
    plan(fake_agents, "claude", "a", "window")
    plan(fake_agents, "codex", "a", "window")
    out = swarm(repo, "run", manifest(repo, tasks(["a"], 'agent = "claude"\nfallback = ["codex"]')))
    assert out.returncode == 1, out.stdout + out.stderr
    assert agents_of(repo, "a") == ["claude", "codex"]
    worktree = repo.parent / "repo.swarm" / "a"
    (worktree / "later.txt").write_text("written after the run\n")
    return worktree


def test_what_clean_commits_after_a_hand_over_names_the_fallback(
    repo: Path, fake_agents: Path
) -> None:
    # codex ran the last attempt: its trailer named claude, the task's own agent.
    worktree = _failed_after_a_hand_over(repo, fake_agents)
    out = swarm(repo, "clean", "--yes")
    assert out.returncode == 0, out.stdout + out.stderr
    assert not worktree.exists()
    assert branch_file(repo, "swarm/a", "later.txt") == "written after the run"
    assert checkpoint_lines(repo, "swarm/a") == _second_attempts("clean", "codex")


def test_what_a_fresh_retry_commits_after_a_hand_over_names_the_fallback(
    repo: Path, fake_agents: Path
) -> None:
    _failed_after_a_hand_over(repo, fake_agents)
    swarm(repo, "retry", "a", "--fresh")
    previous = retried_tip(repo)
    assert git(repo, "show", f"{previous}:later.txt") == "written after the run"
    assert _agent_named(repo, previous) == "codex"


def test_what_stop_commits_after_a_hand_over_names_the_fallback(
    repo: Path, fake_agents: Path
) -> None:
    # codex runs when the manager is killed: `swarm stop` stops it and commits its worktree.
    plan(fake_agents, "claude", "a", "window")
    _killed_while_held(repo, fake_agents, HANDED_OVER, ["claude", "codex"])
    out = _stopped_half_done(repo, fake_agents)
    assert out.returncode == 0, out.stdout + out.stderr
    assert branch_file(repo, "swarm/a", "half.txt") == "half done"
    assert checkpoint_lines(repo, "swarm/a") == _second_attempts("stopped", "codex")


def _agents_if_any(repo: Path) -> list[str]:
    """The agents of a's attempts so far ([] while the manager is still creating the store)."""
    path = repo / ".git" / "swarm" / "state.db"
    if not path.exists():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            rows = db.execute("SELECT agent FROM attempts WHERE task_id = 'a' ORDER BY number")
            return [r[0] for r in rows.fetchall()]
    except sqlite3.Error:
        return []


HANDED_OVER = tasks(["a"], 'agent = "claude"\nfallback = ["codex"]')  # codex after claude


def _killed_while_held(repo: Path, fake_agents: Path, text: str, attempts: list[str]) -> None:
    """Run *text*; SIGKILL its manager (its process group) once a's *attempts* are recorded.

    The last of them (its agent's first call) waits, with no manager, until ``go`` is made.
    """
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FAKE_HOLD_CALL", f"{attempts[-1]}-a-1")
        proc = subprocess.Popen(
            [sys.executable, "-m", "worktree_swarm.cli", "run", manifest(repo, text)],
            cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    try:
        wait_for(lambda: _agents_if_any(repo) == attempts, what=f"{attempts[-1]}'s attempt")
        wait_for((fake_agents / f"{attempts[-1]}-a.calls").exists, what="it to run")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _ended_unwatched(repo: Path, number: int) -> shim_record.ShimRecord:
    """The shim's record of a's attempt *number*, once its agent exited 1 with no manager."""
    runs = repo / ".git" / "swarm" / "runs"

    def ended() -> shim_record.ShimRecord | None:
        for path in runs.glob(f"*/a/attempt-{number}.exit.json"):
            record = shim_record.read_record(path)
            if record is not None and record.exit_code == 1:
                return record
        return None

    wait_for(lambda: ended() is not None, what="the agent to end")
    record = ended()
    assert record is not None
    return record


def _stopped_half_done(repo: Path, fake_agents: Path) -> subprocess.CompletedProcess[str]:
    """`swarm stop`, a's held agent having written half.txt; the agent is let go after it."""
    (repo.parent / "repo.swarm" / "a" / "half.txt").write_text("half done\n")
    try:
        return swarm(repo, "stop")
    finally:  # nothing left waiting if the stop failed
        (fake_agents / "go").touch()


def _second_attempts(why: str, agent: str) -> list[str]:
    """What :func:`checkpoint_lines` reads of a checkpoint of a's 2nd attempt (*agent*'s)."""
    return [
        f"swarm: checkpoint a ({why})",
        "Swarm-Task: a",
        "Swarm-Attempt: 2",
        f"Swarm-Agent: {agent}",
    ]


def _agent_named(repo: Path, ref: str) -> str:
    """The Swarm-Agent trailer of *ref*'s commit."""
    return git(repo, "log", "-1", "--format=%(trailers:key=Swarm-Agent,valueonly)", ref).strip()


# Writes its task's file; b fails until the file named by its argument exists.
_B_FAILS_FIRST = """
import os, pathlib, sys
tid = os.environ['SWARM_TASK_ID']
pathlib.Path(tid + '.txt').write_text(tid + '\\n')
sys.exit(3 if tid == 'b' and not pathlib.Path(sys.argv[1]).exists() else 0)
"""


def test_what_max_disk_commits_before_removing_a_worktree_names_the_fallback(
    repo: Path, fake_agents: Path, write_agent: AgentFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its trailer named codex, the task's own agent, and it committed claude's own file.
    (repo / "blob.bin").write_bytes(os.urandom(2**20))  # a worktree takes over 1 MiB
    git(repo, "add", "blob.bin")
    git(repo, "commit", "-qm", "a 1 MiB file")
    plan(fake_agents, "codex", "a", "window")
    monkeypatch.setenv("FAKE_DROPPING", "1")
    again = fake_agents / "again"
    other = argv_toml([*write_agent(_B_FAILS_FIRST), str(again)])
    text = (
        '[defaults]\njobs = 2\nmax_disk = "2.5M"\n'  # room for two worktrees, not three
        '[[task]]\nid = "a"\nprompt = "a"\nagent = "codex"\nfallback = ["claude"]\n'
        f'[[task]]\nid = "b"\nprompt = "b"\nagent = {other}\n'
        f'[[task]]\nid = "c"\nprompt = "c"\nagent = {other}\ndepends_on = ["b"]\n'
    )
    out = swarm(repo, "run", manifest(repo, text))
    assert out.returncode == 1, out.stdout + out.stderr
    assert agents_of(repo, "a") == ["codex", "claude"]
    worktree = repo.parent / "repo.swarm" / "a"
    (worktree / "later.txt").write_text("written after the run\n")
    again.touch()
    # b done, c needs the room of a's worktree, the oldest finished one.
    out = swarm(repo, "retry", "b")
    assert out.returncode == 0, out.stdout + out.stderr
    assert not worktree.exists()
    assert branch_file(repo, "swarm/a", "later.txt") == "written after the run"
    why = "before removing its worktree for max_disk"
    assert checkpoint_lines(repo, "swarm/a") == _second_attempts(why, "claude")
    files = git(repo, "ls-tree", "-r", "--name-only", "swarm/a").split()
    assert ".claude/settings.local.json" not in files


def test_a_stopped_launch_no_attempt_records_is_the_fallbacks(
    repo: Path, fake_agents: Path
) -> None:
    # The manager is killed once codex took over, between its launch and its attempt's record:
    # `swarm stop` recorded that attempt as claude's, and its checkpoint named claude.
    plan(fake_agents, "claude", "a", "window")
    _killed_while_held(repo, fake_agents, HANDED_OVER, ["claude", "codex"])
    unrecord_launch(repo, "a", 2)
    out = _stopped_half_done(repo, fake_agents)
    assert out.returncode == 0, out.stdout + out.stderr
    assert agents_of(repo, "a") == ["claude", "codex"]
    assert _agent_named(repo, "swarm/a") == "codex"


def test_a_fallbacks_checkpoints_leave_out_the_files_of_the_agent_before_it(
    repo: Path, fake_agents: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # claude leaves its own file and hands over: codex's checkpoint committed it.
    plan(fake_agents, "claude", "a", "window")
    monkeypatch.setenv("FAKE_DROPPING", "1")
    text = tasks(["a"], 'agent = "claude"\nfallback = ["codex"]')
    out = swarm(repo, "run", manifest(repo, text))
    assert out.returncode == 0, out.stdout + out.stderr
    assert agents_of(repo, "a") == ["claude", "codex"]
    assert branch_file(repo, "swarm/a", "codex.txt") == "codex call 1: finish"
    files = git(repo, "ls-tree", "-r", "--name-only", "swarm/a").split()
    assert ".claude/settings.local.json" not in files
    assert (repo.parent / "repo.swarm" / "a" / ".claude" / "settings.local.json").exists()


def test_resume_reads_a_launch_no_attempt_records_as_the_fallbacks(
    repo: Path, fake_agents: Path
) -> None:
    # The manager is killed once codex took over, between its launch and its attempt's record,
    # and codex then meets a usage window: `swarm resume` recorded that attempt as no agent's
    # and read codex's output as claude's ("claude exited 1": the task failed).
    plan(fake_agents, "claude", "a", "window")
    plan(fake_agents, "codex", "a", "window")
    text = tasks(["a"], 'agent = "claude"\nfallback = ["codex", "gemini"]')
    _killed_while_held(repo, fake_agents, text, ["claude", "codex"])
    (fake_agents / "go").touch()
    unrecord_launch(repo, "a", 2)
    _ended_unwatched(repo, 2)
    out = swarm(repo, "resume")
    assert out.returncode == 0, out.stdout + out.stderr
    with contextlib.closing(sqlite3.connect(repo / ".git" / "swarm" / "state.db")) as db:
        row = db.execute(
            "SELECT agent, outcome, reason, session_id FROM attempts WHERE number = 2"
        ).fetchone()
    assert row[:2] == ("codex", "rate_limited")
    assert row[2].startswith("codex rate limited: unexpected status 429")
    assert row[3] == "codex-a-session"
    assert status_json(repo)["a"]["state"] == "done"


def _killed_before_the_wait_is_decided(repo: Path, fake_agents: Path, text: str, cut: str) -> None:
    """Run a (*text*): claude meets a usage window with no manager to decide its wait.

    The manager is killed while claude runs, and the store left as a kill at *cut* leaves
    it: ``unrecorded`` between the launch and the attempt's record, ``undecided`` between
    the attempt's end on record and its wait.
    """
    plan(fake_agents, "claude", "a", "window")
    _killed_while_held(repo, fake_agents, text, ["claude"])
    (fake_agents / "go").touch()
    record = _ended_unwatched(repo, 1)
    if cut == "unrecorded":
        unrecord_launch(repo, "a", 1)
        return
    with contextlib.closing(sqlite3.connect(repo / ".git" / "swarm" / "state.db")) as db, db:
        db.execute(
            "UPDATE attempts SET ended_at = ?, exit_code = 1, outcome = 'rate_limited',"
            " reason = 'claude usage limit' WHERE task_id = 'a' AND number = 1",
            (record.ended_at,),
        )


def _wait_of(repo: Path, number: int) -> tuple[float | None, int]:
    """The recorded wait after a's attempt *number*: until when, and whether a window's."""
    with contextlib.closing(sqlite3.connect(repo / ".git" / "swarm" / "state.db")) as db:
        row = db.execute(
            "SELECT retry_at, usage_window FROM attempts WHERE task_id = 'a' AND number = ?",
            (number,),
        ).fetchone()
    return (None, 0) if row is None else (row[0], row[1])


@pytest.mark.parametrize("cut", ["unrecorded", "undecided"])
def test_resume_hands_a_window_no_manager_decided_to_the_fallback(
    repo: Path, fake_agents: Path, cut: str
) -> None:
    # No reset on record: the replay saw no window and asked claude again at once.
    text = tasks(["a"], 'agent = "claude"\nfallback = ["codex"]')
    _killed_before_the_wait_is_decided(repo, fake_agents, text, cut)
    out = swarm(repo, "resume")
    assert out.returncode == 0, out.stdout + out.stderr
    assert agents_of(repo, "a") == ["claude", "codex"]
    assert len(calls(fake_agents, "claude", "a")) == 1
    assert "usage limit" in calls(fake_agents, "codex", "a")[0][-1]  # the hand-over says why
    reset, window = _wait_of(repo, 1)
    assert reset is not None
    assert reset > time.time() + 4 * 3600  # the stated reset, five hours on
    assert window == 1
    assert status_json(repo)["a"]["state"] == "done"


def test_resume_waits_for_a_window_no_manager_decided(repo: Path, fake_agents: Path) -> None:
    # Without a fallback the task waits for the stated reset; it backed off and asked again.
    text = tasks(["a"], 'agent = "claude"\nmax_wait = "6h"')
    _killed_before_the_wait_is_decided(repo, fake_agents, text, "undecided")
    resumed = swarm_bg(repo, "resume")
    try:
        wait_for(lambda: _wait_of(repo, 1)[0] is not None, what="the wait to be decided")
        reset, window = _wait_of(repo, 1)
        assert reset is not None
        assert reset > time.time() + 4 * 3600
        assert window == 1
        wait_for(lambda: _state_of(repo, "a") == "rate_limited", what="the task to wait")
        row = status_json(repo)["a"]
        assert row["state"] == "rate_limited"
        assert str(row["reason"]).startswith("resuming after ")
        assert len(calls(fake_agents, "claude", "a")) == 1
        _stopped_while_waiting(repo, resumed)
    finally:
        resumed.kill()
