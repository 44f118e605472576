"""Crash trials: SIGKILL the manager (and the git/check processes it runs) at a seeded random
moment, then `swarm resume`, and count what survived.

Shared by tests/test_crash.py and benchmarks/bench_crash.py. Each trial is a real repository,
the real CLI and a fake `claude` on PATH that speaks Claude Code's JSON result, so a success is
read from its log even when it ended while no manager watched it.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.conftest import script_interpreter

# Appends each write to its file in the worktree and then to a log outside it, so every logged
# write must be on the task's branch in the end; each launch is logged to count double runs.
FAKE_CLAUDE = r"""#!PYTHON
import json, os, pathlib, random, sys, time
task = os.environ["SWARM_TASK_ID"]
fake = pathlib.Path(os.environ["CRASH_FAKE_DIR"])
with (fake / f"{task}.launches").open("a") as fh:
    fh.write(f"{os.getpid()}\n")
steps, pause = json.loads((fake / "settings.json").read_text())
rnd = random.Random(f"{task}-{os.getpid()}")
for i in range(steps):
    line = f"{task} write {i}"
    with open(f"{task}.txt", "a") as fh:
        fh.write(line + "\n")
    with (fake / f"{task}.writes").open("a") as fh:
        fh.write(line + "\n")
    time.sleep(rnd.uniform(0, pause))
print(json.dumps({"type": "result", "subtype": "success", "is_error": False, "result": "ok",
                  "session_id": f"s-{task}", "total_cost_usd": 0.0,
                  "usage": {"input_tokens": 1, "output_tokens": 1}}), flush=True)
"""

TASKS = 8


@dataclass(slots=True)
class TrialResult:
    """What one trial found after `swarm resume`."""

    seed: int
    kill_at: float
    killed_in: list[str] = field(default_factory=list)
    run_recorded: bool = True
    saw_manager_gone: bool = False
    resume_code: int | None = None
    resume_err: str = ""
    done: int = 0
    lost_writes: int = 0
    double_runs: int = 0
    survivors: int = 0
    not_done: dict[str, str] = field(default_factory=dict)


def install_fake_claude(root: Path) -> dict[str, str]:
    """Write the fake `claude`; returns the environment that puts it first on PATH."""
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    exe = bin_dir / "claude"
    exe.write_text(FAKE_CLAUDE.replace("#!PYTHON", script_interpreter(), 1))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    # A key makes swarm's sign-in check pass; the fake never calls any API.
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "ANTHROPIC_API_KEY": "sk-fake"}


def _git(cwd: Path, *args: str) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True)
    return out.stdout.strip()


def _make_repo(path: Path) -> None:
    path.mkdir(parents=True)
    _git(path, "init", "-q", "-b", "main")
    for i in range(20):  # enough files that a checkout takes a moment to be killed in
        (path / "src" / f"m{i}").mkdir(parents=True)
        (path / "src" / f"m{i}" / "code.py").write_text(f"VALUE = {i}\n" * 50)
    _git(path, "add", "-A")
    _git(
        path,
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@example.com",
        "commit",
        "-q",
        "-m",
        "initial",
    )


def _swarm(repo: Path, env: dict[str, str], *args: str, timeout: float = 300) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "worktree_swarm.cli", *args],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr


def _events(repo: Path) -> int:
    """How many events the run has recorded so far (0 before the store exists)."""
    path = repo / ".git" / "swarm" / "state.db"
    if not path.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return int(db.execute("SELECT count(*) FROM events").fetchone()[0])
    except sqlite3.Error:
        return 0


def _group_activity(pgid: int) -> list[str]:
    """What the manager's process group runs right now (git steps, checks)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if os.getpgid(proc.pid) != pgid or proc.pid == pgid:
                continue
        except OSError:
            continue
        argv = proc.info["cmdline"] or []
        if argv[:1] == ["git"] and len(argv) > 1:
            step = next((a for a in argv[1:] if not a.startswith("-")), "?")
            found.append(f"git {step}")
        elif argv:
            found.append(Path(argv[0]).name)
    return sorted(found)


def run_trial(
    root: Path, seed: int, *, steps: int = 3, pause: float = 0.2, kill: bool = True
) -> TrialResult:
    """One trial in *root*: run 8 tasks, SIGKILL the manager's group at a seeded moment,
    check `swarm status`, `swarm resume`, then count done tasks, lost writes, double runs and
    processes left."""
    rnd = random.Random(seed)
    repo = root / "repo"
    fake = root / "fake"
    fake.mkdir(parents=True)
    (fake / "settings.json").write_text(json.dumps([steps, pause]))
    _make_repo(repo)
    env = {**os.environ, **install_fake_claude(root), "CRASH_FAKE_DIR": str(fake)}
    ids = [f"t{i}" for i in range(TASKS)]
    manifest = root / "tasks.toml"
    manifest.write_text(
        '[defaults]\nagent = "claude"\nchecks = ["sleep 0.2"]\n'
        + "".join(f'[[task]]\nid = "{i}"\nprompt = "do {i}"\n' for i in ids)
    )
    # The kill moment in the run's own terms, whatever the machine's speed: after a random
    # number of recorded events (a run of 8 tasks records about 34), plus up to 0.3 s.
    kill_after_events, extra = rnd.randint(0, 33), rnd.uniform(0, 0.3)
    result = TrialResult(seed=seed, kill_at=0.0)
    started = time.monotonic()
    with (root / "manager.log").open("ab") as log:
        manager = subprocess.Popen(
            [sys.executable, "-m", "worktree_swarm.cli", "run", "--jobs", "4", str(manifest)],
            cwd=repo,
            env=env,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own group: the kill takes its git and check children
        )
    while kill and manager.poll() is None and _events(repo) < kill_after_events:
        time.sleep(0.01)
    deadline = time.monotonic() + extra if kill else float("inf")
    while time.monotonic() < deadline and manager.poll() is None:
        time.sleep(0.01)
    result.kill_at = round(time.monotonic() - started, 2)
    if manager.poll() is None:
        result.killed_in = _group_activity(manager.pid)
        os.killpg(manager.pid, signal.SIGKILL)
    manager.wait()
    if not kill:  # the baseline: an undisturbed run
        _tally(result, repo, env, fake, ids)
        return result
    code, text = _swarm(repo, env, "status")
    if code != 0:  # killed before the run was recorded: nothing was made, start it again
        result.run_recorded = False
        code, text = _swarm(repo, env, "run", "--jobs", "4", str(manifest))
    else:
        result.saw_manager_gone = "manager not running — run `swarm resume`" in text
        code, text = _swarm(repo, env, "resume")
    result.resume_code, result.resume_err = code, text if code else ""
    _tally(result, repo, env, fake, ids)
    return result


def _tally(
    result: TrialResult, repo: Path, env: dict[str, str], fake: Path, ids: list[str]
) -> None:
    code, text = _swarm(repo, env, "status", "--json")
    rows = {t["task_id"]: t for t in json.loads(text)["tasks"]} if code == 0 else {}
    for task in ids:
        state = str(rows.get(task, {}).get("state", "missing"))
        if state == "done":
            result.done += 1
        else:
            result.not_done[task] = f"{state}: {rows.get(task, {}).get('reason', '')}"
        writes_file = fake / f"{task}.writes"
        logged = writes_file.read_text().splitlines() if writes_file.exists() else []
        shown = subprocess.run(
            ["git", "show", f"swarm/{task}:{task}.txt"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.splitlines()
        result.lost_writes += sum(1 for line in set(logged) if line not in shown)
        launches = fake / f"{task}.launches"
        count = len(launches.read_text().splitlines()) if launches.exists() else 0
        result.double_runs += max(0, count - 1)
    worktree_root = repo.parent / "repo.swarm"
    for proc in psutil.process_iter():
        try:
            cwd = Path(proc.cwd())
        except (psutil.Error, OSError):
            continue
        if cwd.is_relative_to(worktree_root) or cwd.is_relative_to(repo):
            result.survivors += 1
