"""An overnight batch under mixed faults: the whole promise held in one run.

Eleven tasks in a real repository, `--jobs 4`, each with a small agent written here: some
commit their work, some fail, one leaves a double-forked daemon that ignores SIGTERM, two hit
a rate limit once (a fake `claude` printing Claude Code's 429 result: one after some work,
one refused at once, which backs off), one has a failing check, some are slow. The manager is
SIGKILLed (alone, or with its process group) two to four times at moments the seed picks: a
task reaching `running`, `checking` or `rate_limited`, an attempt log appearing, the run's
n-th event, the daemon up or its agent ended with the daemon in its grace; each kill is
followed by `swarm resume`. In the morning every task is `done` or `failed` with its work on
its branch, nothing ran twice, nothing is left running, the checkout and `main` are
untouched, and after `swarm clean --yes` only the unmerged task branches remain.

The seed: ``SWARM_CHAOS_SEED=N`` runs that one seed, else the fixed ones below.
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
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import agent_python, git, make_repo, script_interpreter
from tests.test_run import argv_toml, checkout_snapshot, status_json, swarm, wait_for

SEEDS = [int(os.environ["SWARM_CHAOS_SEED"])] if "SWARM_CHAOS_SEED" in os.environ else [1, 2, 3]

# Each kind once or twice; the seed shuffles their order (and so which start first).
KINDS = ["commit", "commit", "fail", "fail", "daemon", "limit", "stall", "checkfail",
         "slow", "slow", "commit"]  # fmt: skip
FINAL = {"done", "failed"}
EXPECTED = {"commit": "done", "fail": "failed", "daemon": "done", "limit": "done", "stall": "done",
            "checkfail": "failed", "slow": "done"}  # fmt: skip

# argv[1]: its kind; argv[2]: the test's folder for what it reports (launches, the daemon).
AGENT = r"""
import os, pathlib, signal, subprocess, sys, time
kind, fake = sys.argv[1], pathlib.Path(sys.argv[2])
task = os.environ["SWARM_TASK_ID"]
with (fake / f"{task}.launches").open("a") as fh:
    fh.write(f"{os.getpid()}\n")
work = pathlib.Path(f"{task}.txt")
if kind == "commit":
    work.write_text(f"{task}: committed by its agent\n")
    subprocess.run(["git", "add", work.name], check=True)
    subprocess.run(["git", "commit", "-q", "-m", f"work of {task}"], check=True)
elif kind == "fail":
    work.write_text(f"{task}: partial work\n")
    print("cannot finish this", flush=True)
    sys.exit(1)
elif kind == "daemon":
    pid_file = fake / f"{task}.daemon"
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            import psutil
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            me = psutil.Process()
            (fake / f"{task}.daemon.part").write_text(f"{me.pid} {me.create_time()}")
            (fake / f"{task}.daemon.part").replace(pid_file)
            while True:
                time.sleep(0.2)
        os._exit(0)
    while not pid_file.exists():
        time.sleep(0.02)
    work.write_text(f"{task}: done, a daemon left behind\n")
elif kind == "slow":
    for i in range(16):
        with work.open("a") as fh:
            fh.write(f"{task}: step {i}\n")
        time.sleep(0.3)
else:  # checkfail: the agent succeeds, its check does not
    work.write_text(f"{task}: done, but its check fails\n")
"""

# Claude Code's `-p --output-format json` result: its first call a 429 (after some work; a
# `stall-` task's refused at once, so it backs off), then a success in the same session.
FAKE_CLAUDE = r"""#!PYTHON
import json, os, pathlib, sys
task = os.environ["SWARM_TASK_ID"]
fake = pathlib.Path(os.environ["CHAOS_FAKE_DIR"])
with (fake / f"{task}.launches").open("a") as fh:
    fh.write(f"{os.getpid()}\n")
n = len((fake / f"{task}.launches").read_text().splitlines())
args = sys.argv[1:]
session = args[args.index("--resume") + 1] if "--resume" in args else f"sess-{task}"
def result(is_error, text, status=None):
    out = {"type": "result", "subtype": "success", "is_error": is_error, "result": text,
           "session_id": session, "total_cost_usd": 0.01, "num_turns": 1,
           "usage": {"input_tokens": 10, "output_tokens": 5}}
    if status:
        out["api_error_status"] = status
    print(json.dumps(out), flush=True)
if n > 1 or not task.startswith("stall"):
    with open(f"{task}.txt", "a") as fh:
        fh.write(f"{task}: call {n}\n")
if n == 1:
    result(True, "API Error: 429 rate_limit_error", 429)
    sys.exit(1)
with open(f"{task}.txt", "a") as fh:
    fh.write(f"{task}: finished\n")
result(False, "ok")
"""

# A check that takes a moment (a manager is killed in it at times), then passes on the work.
CHECK_PASSES = (
    "import glob, sys, time; time.sleep(0.5); sys.exit(0 if glob.glob('*.txt') else 'no work')"
)
CHECK_FAILS = "import sys; sys.exit('the check fails on purpose')"


@pytest.fixture
def chaos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The fake `claude` first on PATH; yields the folder the agents report into."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "claude"
    exe.write_text(FAKE_CLAUDE.replace("#!PYTHON", script_interpreter(), 1))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    fake = tmp_path / "fake"
    fake.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CHAOS_FAKE_DIR", str(fake))
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-fake")  # signed in, as far as swarm checks
    yield fake
    for daemon in fake.glob("*.daemon"):  # whatever the test found, no daemon outlives it
        if (proc := _alive(daemon)) is not None:
            proc.kill()


def _alive(pid_file: Path) -> psutil.Process | None:
    """The daemon *pid_file* names, if that very process (pid and create time) still lives."""
    pid, created = pid_file.read_text().split()
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(int(pid))
        if proc.create_time() == float(created) and proc.status() != psutil.STATUS_ZOMBIE:
            return proc
    return None


def _manifest(repo: Path, fake: Path, ids: dict[str, str]) -> Path:
    agent = [*agent_python(), str(fake.parent / "agent.py")]
    (fake.parent / "agent.py").write_text(AGENT)
    text = (
        '[defaults]\nrate_limit_backoff = "2s"\nretries = 3\nkill_grace = "1s"\n'
        f"checks = [{argv_toml([*agent_python(), '-c', CHECK_PASSES])}]\n"
    )
    for task, kind in ids.items():
        text += f'[[task]]\nid = "{task}"\nprompt = "do {task}"\n'
        if kind in ("limit", "stall"):
            text += 'agent = "claude"\n'
        else:
            text += f"agent = {argv_toml([*agent, kind, str(fake)])}\n"
        if kind == "checkfail":
            text += f"checks = [{argv_toml([*agent_python(), '-c', CHECK_FAILS])}]\n"
    path = repo.parent / "tasks.toml"
    path.write_text(text)
    return path


def _manager(repo: Path, *args: str) -> subprocess.Popen[bytes]:
    """A `swarm` manager in a session of its own (so its whole group can be killed)."""
    with (repo.parent / "bg.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "worktree_swarm.cli", *args],
            cwd=repo,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _attempt_logs(repo: Path) -> int:
    return len(list((repo / ".git" / "swarm" / "runs").glob("*/*/attempt-*.log")))


def _rows(repo: Path) -> dict[str, dict[str, object]]:
    """`swarm status --json`'s tasks; none before the run is recorded."""
    out = swarm(repo, "status", "--json")
    return {t["task_id"]: t for t in json.loads(out.stdout)["tasks"]} if out.returncode == 0 else {}


def _trigger(
    rnd: random.Random, repo: Path, fake: Path, ids: dict[str, str]
) -> tuple[str, Callable[[], bool]]:
    """A moment to kill the manager at, picked by *rnd* among those still to come: a task
    reaching a state (or passing it), the daemon up, the next attempt logs."""
    rows = _rows(repo)
    state = {t: str(rows.get(t, {}).get("state", "pending")) for t in ids}
    launches = {t: len(_lines(fake / f"{t}.launches")) for t in ids}
    later = {
        "running": {"running", "rate_limited", "checking", *FINAL},
        "checking": {"checking", *FINAL},
        "rate_limited": {"rate_limited", *FINAL},
    }
    moments: dict[str, list[str]] = {
        "running": [t for t in ids if state[t] == "pending" and not launches[t]],
        "checking": [t for t in ids if state[t] in ("pending", "running") and ids[t] != "fail"],
        "rate_limited": [t for t in ids if ids[t] in ("limit", "stall") and launches[t] < 2],
        "daemon": [t for t in ids if ids[t] == "daemon" and not (fake / f"{t}.daemon").exists()],
    }
    graced = [t for t in moments["daemon"] if not _exit_record(repo, t)]
    kind = rnd.choice(["log", "events", *(k for k, tasks in moments.items() if tasks)])
    kind = "grace" if kind == "daemon" and graced and rnd.random() < 0.5 else kind
    if kind == "events":  # 0: the resume killed as it starts
        count = _events(repo) + rnd.randint(0, 8)
        return f"event #{count}", lambda: _events(repo) >= count
    if kind == "grace":  # its agent ended, the daemon in its grace (kill_grace)
        task = graced[0]
        return f"{task}'s end, its daemon in its grace", lambda: _exit_record(repo, task)
    if kind == "log":
        count = _attempt_logs(repo) + rnd.randint(1, 3)
        return f"attempt log #{count}", lambda: _attempt_logs(repo) >= count
    task = rnd.choice(moments[kind])
    if kind == "daemon":
        return f"{task}'s daemon up", (fake / f"{task}.daemon").exists
    return f"{task} {kind}", lambda: _rows(repo).get(task, {}).get("state") in later[kind]


def _events(repo: Path) -> int:
    """How many events the run has recorded so far."""
    path = repo / ".git" / "swarm" / "state.db"
    with (
        contextlib.suppress(sqlite3.Error),
        contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db,
    ):
        return int(db.execute("SELECT count(*) FROM events").fetchone()[0])
    return 0


def _exit_record(repo: Path, task: str) -> bool:
    """Whether *task*'s first attempt's shim has recorded its agent's end."""
    return any((repo / ".git" / "swarm" / "runs").glob(f"*/{task}/attempt-1.exit.json"))


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _marked_processes(tmp_path: Path) -> list[str]:
    """Processes started from this test's folder (its PATH, swarm's shim mark): none may stay."""
    root = str(tmp_path)
    spared = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.pid in spared or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if any(root in value for value in proc.environ().values()):
                found.append(f"{proc.pid} {proc.cmdline()}")
    return found


@pytest.mark.slow  # long: runs in `scripts/check --slow` (CI runs both)
@pytest.mark.parametrize("seed", SEEDS)
def test_an_overnight_batch_under_mixed_faults_keeps_the_whole_promise(
    tmp_path: Path, chaos: Path, seed: int
) -> None:
    rnd = random.Random(seed)
    repo = make_repo(tmp_path / "repo", {"README.md": "hello\n", "src/app.py": "x = 1\n"})
    (repo / "notes.txt").write_text("my uncommitted notes\n")  # the user's own, untracked
    before, main_before = checkout_snapshot(repo), git(repo, "rev-parse", "main")
    kinds = KINDS[:]
    rnd.shuffle(kinds)
    ids = {f"{kind}-{i}": kind for i, kind in enumerate(kinds)}
    history = [f"seed {seed}: {ids}"]

    def told() -> str:
        return "\n".join(history)

    manager = _manager(repo, "run", "--jobs", "4", str(_manifest(repo, chaos, ids)))
    wait_for(lambda: manager.poll() is not None or bool(_rows(repo)), what=f"the run (seed {seed})")
    for _ in range(rnd.randint(2, 4)):
        what, moment = _trigger(rnd, repo, chaos, ids)
        ended = manager.poll
        wait_for(lambda: ended() is not None or moment(), timeout=120, what=f"{what}\n{told()}")  # noqa: B023
        lag = rnd.choice([0.0, 0.0, rnd.uniform(0, 0.5)])  # a moment later, by the seed
        with contextlib.suppress(subprocess.TimeoutExpired):
            manager.wait(timeout=lag)
        what += f" (+{lag:.2f}s)" if lag else ""
        if manager.poll() is not None:
            history.append(f"the manager ended ({manager.returncode}) before {what}")
            break
        whole_group = rnd.random() < 0.5
        if whole_group:
            os.killpg(manager.pid, signal.SIGKILL)
        else:
            os.kill(manager.pid, signal.SIGKILL)
        manager.wait(timeout=30)
        history.append(f"killed the manager{' and its group' * whole_group} at {what}")
        out = swarm(repo, "status")
        assert "manager not running — run `swarm resume`" in out.stdout, told() + out.stdout
        manager = _manager(repo, "resume")
    assert any(line.startswith("killed") for line in history), told()
    code = manager.wait(timeout=300)
    log = (repo.parent / "bg.log").read_text()
    history.append(f"the last manager exited {code}; its output:\n{log}")
    assert code == 1, told()  # some tasks failed, as they were made to
    assert "Traceback" not in log, told()

    whole = json.loads(swarm(repo, "status", "--json").stdout)
    assert whole["run_state"] == "finished", told() + str(whole)
    rows = status_json(repo)
    states = {task: rows[task]["state"] for task in ids}
    assert states == {task: EXPECTED[kind] for task, kind in ids.items()}, (
        told() + "\n" + json.dumps(rows, indent=1)
    )
    for task, kind in ids.items():
        branch = f"swarm/{task}"
        shown = git(repo, "show", f"{branch}:{task}.txt")
        launches = _lines(chaos / f"{task}.launches")
        assert len(launches) == (2 if kind in ("limit", "stall") else 1), (
            told() + f"\n{task}: {launches}"
        )
        if kind == "commit":
            assert f"work of {task}" in git(repo, "log", "--format=%s", branch), told()
        if kind == "slow":
            assert f"{task}: step 15" in shown, told()
        if kind in ("limit", "stall"):
            assert f"{task}: finished" in shown, told()
        if kind in ("fail", "checkfail"):
            assert task in shown, told()  # partial work kept on its branch
    # Nothing an agent did reached your checkout or main.
    assert checkout_snapshot(repo) == before, told()
    assert git(repo, "rev-parse", "main") == main_before, told()
    assert (repo / "notes.txt").read_text() == "my uncommitted notes\n"

    for daemon in chaos.glob("*.daemon"):
        assert _alive(daemon) is None, told() + f"\n{daemon.name} still alive"
    assert list(chaos.glob("*.daemon")), told()  # the daemon's agent did start one
    wait_for(lambda: not _marked_processes(tmp_path), timeout=60, what="no process left")

    out = swarm(repo, "clean", "--yes")
    assert out.returncode == 0, told() + out.stdout + out.stderr
    worktree_root = repo.parent / "repo.swarm"
    assert not worktree_root.exists() or not any(worktree_root.iterdir()), told()
    admin = repo / ".git" / "worktrees"
    assert not admin.exists() or not any(admin.iterdir()), told()
    branches = set(git(repo, "branch", "--format=%(refname:short)").split())
    # Unmerged task branches stay (clean.md: `kept: merge it`); nothing else is left.
    assert branches == {"main", *(f"swarm/{t}" for t in ids)}, told()
    doctor = swarm(repo, "doctor")
    assert doctor.returncode == 0, told() + doctor.stdout + doctor.stderr
    assert checkout_snapshot(repo) == before, told()
