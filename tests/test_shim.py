"""The agent shim: exit status records, and no process of an agent's tree escapes.

Every test launches real processes. Agents here are written to escape: they double-fork
daemons, leave for ``/``, fork from their SIGTERM handler, or keep forking while being
killed. Each process of a test carries ESCAPE_MARK in its environment, so survivors are
found by scanning every process on the machine, whether or not they wrote a pid file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import git
from tests.test_run import (
    argv_toml,
    branch_file,
    manifest,
    pid_alive,
    state_db,
    status_json,
    swarm,
    swarm_bg,
    wait_for,
    written,
)
from worktree_swarm.infra import shim_record, shim_server, supervisor
from worktree_swarm.infra.proc import clean_env

AgentFactory = Callable[[str], list[str]]

pytestmark = pytest.mark.skipif(
    not supervisor.SHIM_AVAILABLE, reason="the shim needs a child subreaper (Linux)"
)

# Shared by every escaping agent: publish a pid file; become a daemon (fork, setsid, fork).
PRELUDE = """
import os, pathlib, signal, sys, time
PIDS = pathlib.Path(os.environ["PIDS"])

def publish(name):
    tmp = PIDS / f"{name}.{os.getpid()}.tmp"  # a forked copy may publish the same name
    tmp.write_text(str(os.getpid()))
    tmp.replace(PIDS / name)

def daemon(name, *, root=False):
    if os.fork():
        return
    os.setsid()
    if os.fork():
        os._exit(0)
    if root:
        os.chdir("/")
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    publish(name)
    while True:
        time.sleep(1)
"""

PATTERNS = {
    # The classic daemon: fork, setsid, fork; it ignores SIGTERM.
    "double_fork": """
daemon("daemon")
publish("ready")
while True:
    time.sleep(1)
""",
    # A daemon that leaves the worktree, so no cwd scan finds it.
    "chdir_root": """
daemon("daemon", root=True)
publish("ready")
while True:
    time.sleep(1)
""",
    # The agent's SIGTERM handler starts a daemon, then the agent exits 0.
    "term_handler": """
def on_term(*_):
    daemon("late_daemon", root=True)
    os._exit(0)
signal.signal(signal.SIGTERM, on_term)
publish("ready")
while True:
    time.sleep(1)
""",
    # Killed, the agent keeps forking new children (each in a new session) until SIGKILL.
    "grace_forker": """
forks = [0]
def on_term(*_):
    while True:
        forks[0] += 1
        daemon(f"grace_{forks[0]}")
        time.sleep(0.05)
signal.signal(signal.SIGTERM, on_term)
publish("ready")
while True:
    time.sleep(1)
""",
}


def recorded_end(record: Path) -> float | None:
    """When the shim's record *record* says its command ended (None: not yet)."""
    try:
        ended = json.loads(record.read_text())["ended_at"]
    except (OSError, ValueError, KeyError):
        return None
    return None if ended is None else float(ended)


def marked(mark: str) -> list[psutil.Process]:
    """Live (non-zombie) processes whose environment carries ESCAPE_MARK=*mark*."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("ESCAPE_MARK") == mark and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


@pytest.fixture
def mark(tmp_path: Path) -> Iterator[str]:
    """A marker unique to this test; whatever still carries it at teardown is killed."""
    value = f"escape-{os.getpid()}-{tmp_path.name}"
    yield value
    for proc in marked(value):
        proc.kill()


def escape_manifest(repo: Path, agent: list[str], pids: Path, mark: str, extra: str = "") -> str:
    env = f"{{ PIDS = {json.dumps(str(pids))}, ESCAPE_MARK = {json.dumps(mark)} }}"
    return manifest(
        repo,
        f"""
[defaults]
agent = {argv_toml(agent)}
kill_grace = "1s"
{extra}
[[task]]
id = "esc"
prompt = "escape"
env = {env}
""",
    )


@pytest.mark.slow  # twelve runs of several seconds: in `scripts/check --slow` (CI runs both)
@pytest.mark.parametrize("how", ["stop", "timeout", "interrupt"])
@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_no_process_escapes(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, mark: str, pattern: str, how: str
) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    agent = write_agent(PRELUDE + PATTERNS[pattern])
    extra = 'timeout = "4s"' if how == "timeout" else ""
    proc = swarm_bg(repo, "run", escape_manifest(repo, agent, pids, mark, extra))
    try:
        wait_for((pids / "ready").exists, what="the agent")
        if pattern in {"double_fork", "chdir_root"}:
            wait_for((pids / "daemon").exists, what="the daemon")
        assert marked(mark), "the agent's processes carry the mark"
        if how == "stop":
            out = swarm(repo, "stop", "esc")
            assert out.returncode == 0, out.stderr
        elif how == "interrupt":
            proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=90)
    finally:
        proc.kill()
    assert code == (130 if how == "interrupt" else 1)
    state = status_json(repo)["esc"]["state"]
    assert state == ("timed_out" if how == "timeout" else "stopped")
    assert marked(mark) == []
    # Every process that got as far as writing its pid is gone too.
    published = [p for p in pids.iterdir() if not p.name.endswith(".tmp")]
    assert all(not pid_alive(int(p.read_text())) for p in published)
    if pattern == "grace_forker":
        assert any(p.name.startswith("grace_") for p in published), "it forked while killed"


# Publishes its pid whole (by rename), then hangs.
HANGING_CHECK = """
import os, pathlib, time
tmp = pathlib.Path(os.environ["PIDS"], "check.tmp")
tmp.write_text(str(os.getpid()))
tmp.replace(tmp.with_name("check"))
time.sleep(300)
"""


@pytest.mark.long
@pytest.mark.parametrize("how", ["stop", "sigterm", "timeout"])
def test_hanging_check_is_ended(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, mark: str, how: str
) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    agent = write_agent("import pathlib\npathlib.Path('a.txt').write_text('work\\n')\n")
    check = write_agent(HANGING_CHECK)
    extra = f"checks = [{argv_toml(check)}]\n"
    extra += 'check_timeout = "5s"\n' if how == "timeout" else ""
    proc = swarm_bg(repo, "run", escape_manifest(repo, agent, pids, mark, extra))
    try:
        wait_for((pids / "check").exists, what="the check")
        if how != "timeout":  # (with a 5 s limit the check may already have timed out)
            assert status_json(repo)["esc"]["state"] == "checking"
        if how == "stop":  # a check its manager supervises is nobody's leftover
            assert "started by swarm" not in swarm(repo, "doctor").stdout
            out = swarm(repo, "stop", "esc")
            assert out.returncode == 0, out.stderr
        elif how == "sigterm":
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=90)
    finally:
        proc.kill()
    assert not pid_alive(int((pids / "check").read_text()))
    assert marked(mark) == []
    row = status_json(repo)["esc"]
    if how == "timeout":
        assert code == 1
        assert row["state"] == "failed"
        assert str(row["reason"]).startswith(f"check `{' '.join(check)}` timed out after 5s")
    else:
        assert code == (130 if how == "sigterm" else 1)
        assert row["state"] == "stopped"
        assert str(row["reason"]).startswith("stopped during check")
    assert branch_file(repo, "swarm/esc", "a.txt") == "work"  # checkpointed before the check


@pytest.mark.long
def test_stop_after_manager_died_ends_a_running_check(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, mark: str
) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    agent = write_agent("import pathlib\npathlib.Path('a.txt').write_text('work\\n')\n")
    extra = f"checks = [{argv_toml(write_agent(HANGING_CHECK))}]\n"
    proc = swarm_bg(repo, "run", escape_manifest(repo, agent, pids, mark, extra))
    wait_for((pids / "check").exists, what="the check")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert pid_alive(int((pids / "check").read_text()))
    out = swarm(repo, "stop")
    assert out.returncode == 0, out.stderr
    assert marked(mark) == []
    assert status_json(repo)["esc"]["state"] == "stopped"


@pytest.mark.long
def test_hanging_setup_is_timed_out(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, mark: str
) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    agent = write_agent("print('never started')\n")
    setup = write_agent(HANGING_CHECK)
    extra = f'setup = [{argv_toml(setup)}]\nsetup_timeout = "3s"\n'
    out = swarm(repo, "run", escape_manifest(repo, agent, pids, mark, extra))
    assert out.returncode == 1, out.stdout + out.stderr
    row = status_json(repo)["esc"]
    assert row["state"] == "failed"
    assert str(row["reason"]).startswith(f"setup `{' '.join(setup)}` timed out after 3s")
    if (pids / "check").exists():  # (an interpreter slower than the limit never wrote it)
        assert not pid_alive(int((pids / "check").read_text()))
    assert marked(mark) == []


@pytest.mark.long
@pytest.mark.parametrize("how", ["stop", "sigint"])
def test_a_hanging_setup_is_ended_at_once_by_stop_or_ctrl_c(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, mark: str, how: str
) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    agent = write_agent("import pathlib\npathlib.Path('ran').write_text('never')\n")
    setup = write_agent(HANGING_CHECK)
    extra = f"setup = [{argv_toml(setup)}]\n"  # the default setup_timeout: 30 minutes
    proc = swarm_bg(repo, "run", escape_manifest(repo, agent, pids, mark, extra))
    try:
        wait_for((pids / "check").exists, what="the setup step")
        if how == "stop":
            out = swarm(repo, "stop", "esc")
            assert out.returncode == 0, out.stderr
        else:
            proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=90)
    finally:
        proc.kill()
    assert code == (130 if how == "sigint" else 1)
    assert not pid_alive(int((pids / "check").read_text()))
    assert marked(mark) == []
    row = status_json(repo)["esc"]
    assert row["state"] == "stopped", row
    assert str(row["reason"]).startswith(f"stopped during setup `{' '.join(setup)}`"), row
    assert not (repo.parent / "repo.swarm" / "esc" / "ran").exists()  # no agent after it


FINISH_ON_GO = """
import os, pathlib, time
pathlib.Path("a.txt").write_text("hello\\n")
pids = pathlib.Path(os.environ["PIDS"])
tmp = pids / "agent.tmp"
tmp.write_text(str(os.getpid()))
tmp.replace(pids / "agent")
while not (pids / "go").exists():
    time.sleep(0.05)
with open("a.txt", "a") as f:
    f.write("world\\n")
"""


@pytest.mark.long
@pytest.mark.parametrize("when", ["ended", "alive"])
def test_agent_exiting_0_while_manager_dead_ends_done(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, mark: str, when: str
) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    agent = write_agent(FINISH_ON_GO)
    proc = swarm_bg(repo, "run", escape_manifest(repo, agent, pids, mark))
    wait_for((pids / "agent").exists, what="the agent")
    agent_pid = int((pids / "agent").read_text())
    (server,) = [
        p for p in psutil.Process(proc.pid).children() if supervisor.shim.SERVE in p.cmdline()
    ]  # the manager's shim server, which forked the agent's shim
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    # It ends with the manager (the end of its stdin); the shim it forked carries on.
    wait_for(lambda: not pid_alive(server.pid), what="the shim server to end")
    assert pid_alive(agent_pid)
    if when == "ended":  # it ends unwatched; its shim records the exit status
        (pids / "go").touch()
        wait_for(lambda: not pid_alive(agent_pid), what="the agent to finish")
        wait_for(lambda: marked(mark) == [], what="its tree to end")
        # The shim (forked by the server, so unmarked) writes the end down when it has reaped
        # the agent: a moment after the agent is gone.
        (record,) = (repo / ".git" / "swarm" / "runs").glob("*/esc/attempt-1.exit.json")
        wait_for(lambda: recorded_end(record) is not None, what="its shim to record it")
        before_resume = time.time()
        resumed = swarm(repo, "resume")
    else:  # resume adopts the live shim, then the agent ends
        bg = swarm_bg(repo, "resume")
        try:
            wait_for(lambda: status_json(repo)["esc"]["alive"] is True, what="adoption")
            (pids / "go").touch()
            code = bg.wait(timeout=60)
        finally:
            bg.kill()
        assert code == 0
        resumed = None
    assert resumed is None or resumed.returncode == 0, resumed.stdout + resumed.stderr
    row = status_json(repo)["esc"]
    assert row["state"] == "done", row
    assert branch_file(repo, "swarm/esc", "a.txt") == "hello\nworld"
    with state_db(repo) as db:
        ((code, ended_at),) = db.execute("SELECT exit_code, ended_at FROM attempts").fetchall()
    assert code == 0
    if when == "ended":  # when the agent ended, as its shim recorded: not when resume ran
        assert ended_at < before_resume
    assert marked(mark) == []


@pytest.mark.slow  # long: runs in `scripts/check --slow` (CI runs both)
def test_doctor_finds_daemons_of_a_killed_shim_by_their_record(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, mark: str
) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    agent = write_agent(PRELUDE + PATTERNS["chdir_root"])
    proc = swarm_bg(repo, "run", escape_manifest(repo, agent, pids, mark))
    wait_for((pids / "daemon").exists, what="the daemon")
    daemon = int((pids / "daemon").read_text())
    assert psutil.Process(daemon).cwd() == "/"
    # A crash that takes the manager and the shim: the daemon goes to init (or our
    # subreaper, if the test runner has one), outside every worktree.
    # The shim, by its record (forked by the manager's shim server, it has the server's
    # environment, not the agent's).
    (record,) = (repo / ".git" / "swarm" / "runs").glob("*/esc/attempt-1.exit.json")
    written = shim_record.read_record(record)
    assert written is not None
    shim = psutil.Process(written.shim_pid)
    assert supervisor.shim.MARKER in shim.cmdline()
    assert daemon in [p.pid for p in shim.children(recursive=True)]
    server = psutil.Process(shim.ppid())  # the manager's shim server, which forked it
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    # The server ends with the manager; while it lives, what a killed shim leaves goes to it
    # (a child subreaper), which kills it: gone first, as after a crash that took all three.
    wait_for(lambda: not pid_alive(server.pid), what="the shim server to end")
    shim.kill()
    wait_for(lambda: not pid_alive(shim.pid), what="the shim to die")
    assert pid_alive(daemon)
    out = swarm(repo, "doctor")
    assert out.returncode == 1, out.stdout + out.stderr  # findings, nothing fixed yet
    line = next(x for x in out.stdout.splitlines() if f"(pid {daemon})" in x)
    assert "was started by swarm (shim record " in line
    assert line.endswith("/esc/attempt-1.exit.json) and its shim is gone")
    out = swarm(repo, "doctor", "--yes")
    assert out.returncode == 0, out.stdout + out.stderr
    assert marked(mark) == []


def spawn_escaping(
    tmp_path: Path,
    write_agent: AgentFactory,
    mark: str,
    body: str,
    shims: shim_server.ShimServer | None = None,
) -> tuple[supervisor.AgentProcess, Path, Path]:
    """Spawn PRELUDE + *body* (grace 0.5 s) in *tmp_path*; the agent, its pid dir and its log."""
    pids = tmp_path / "pids"
    pids.mkdir()
    log = tmp_path / "logs" / "attempt-1.log"
    env = clean_env({"PIDS": str(pids), "ESCAPE_MARK": mark})
    argv = write_agent(PRELUDE + body)
    agent = supervisor.spawn(argv, cwd=tmp_path, env=env, log_path=log, grace=0.5, shims=shims)
    return agent, pids, log


# Asks the manager's shim server (its shim's parent) to fork a command of its own, as the
# manager does: the command would run outside the task's tree and outlive the run.
ASK_THE_SERVER = r"""
import os, pathlib, sys, time
marker = pathlib.Path(sys.argv[1])
def parent(pid):
    return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
server = parent(parent(os.getpid()))
assert b"--serve" in open(f"/proc/{server}/cmdline", "rb").read(), "no shim server above"
command = [b"touch", str(marker).encode()]
body = b"\0".join([b"start", b"/", str(marker) .encode() + b".log", str(marker).encode()
                    + b".rec", str(len(command)).encode(), *command, b"PATH=/usr/bin:/bin"])
try:  # a pipe can be opened again through /proc; the server's socket cannot
    fd = os.open(f"/proc/{server}/fd/0", os.O_WRONLY)
except OSError:
    pass
else:  # and without the manager's token a request forks nothing
    os.write(fd, str(len(body)).encode() + b"\n" + body)
    os.close(fd)
deadline = time.monotonic() + 5  # forked, it runs at once
while not marker.exists() and time.monotonic() < deadline:
    time.sleep(0.05)
pathlib.Path(os.environ["SWARM_TASK_ID"] + ".txt").write_text(
    "escaped\n" if marker.exists() else "held\n")
"""


@pytest.mark.slow  # long: runs in `scripts/check --slow` (CI runs both)
def test_an_agent_cannot_have_the_shim_server_fork_a_command_for_it(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    marker = tmp_path / "forked-for-the-agent"
    agent = argv_toml([*write_agent(ASK_THE_SERVER), str(marker)])
    text = f"[defaults]\nagent = {agent}\njobs = 1\n"
    text += '[[task]]\nid = "a"\nprompt = "p"\n[[task]]\nid = "b"\nprompt = "p"\n'
    out = swarm(repo, "run", manifest(repo, text))
    assert out.returncode == 0, out.stdout + out.stderr  # b started after a: the server serves
    assert not marker.exists()
    assert git(repo, "show", "swarm/a:a.txt") == "held"
    assert git(repo, "show", "swarm/b:b.txt") == "held"


def test_shim_records_exit_status_and_kills_leftovers(
    tmp_path: Path, write_agent: AgentFactory, mark: str
) -> None:
    # It ends once its daemon has said it is up (else the daemon may be killed before it does).
    body = 'daemon("daemon")\nwhile not (PIDS / "daemon").exists():\n    time.sleep(0.01)\n'
    body += 'publish("ready")\nsys.exit(3)\n'
    agent, pids, log = spawn_escaping(tmp_path, write_agent, mark, body)
    assert agent.wait(timeout=60) == 3
    record = json.loads(shim_record.record_path(log).read_text())
    assert record["exit_code"] == 3
    assert record["stopped"] is False
    assert record["pid"] == agent.identity.pid
    assert record["started_at"] <= record["ended_at"]
    assert not pid_alive(int((pids / "daemon").read_text()))  # a leftover, killed at exit
    assert marked(mark) == []
    assert not list(log.parent.glob("*.tmp"))


def run_shim(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The shim started as spawn starts it, with *args* after the interpreter's."""
    return subprocess.run(
        [sys.executable, *shim_record.SHIM_FLAGS, "-c", shim_record.SHIM_LAUNCH, *args],
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_the_shim_loads_its_cached_bytecode_instead_of_compiling(tmp_path: Path) -> None:
    # A script run by path is compiled on every start; the shim is imported, so from the
    # second start on Python loads the bytecode it cached (in the package's __pycache__).
    args = [supervisor.shim.MARKER, "--record", str(tmp_path / "r.json"), "--grace", "1"]
    argv = [sys.executable, "-I", "-S", "-v", "-c", shim_record.SHIM_LAUNCH, *args, "--", "true"]
    for _ in range(2):
        out = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=tmp_path)
    cached = Path(shim_record.SHIM_PATH.parent, "__pycache__")
    assert f"# code object from '{cached}/shim." in out.stderr


def test_the_shim_refuses_arguments_it_does_not_know_in_one_line(tmp_path: Path) -> None:
    record = tmp_path / "rec.json"
    for args in (
        [supervisor.shim.MARKER, "--record", str(record), "--grace", "1", "true"],  # no --
        [supervisor.shim.MARKER, "--grace", "1", "--", "true"],  # no record
        [supervisor.shim.MARKER, "--record", str(record), "--grace", "1", "--"],  # no command
        ["--record", str(record), "--grace", "1", "--", "true"],  # not marked
    ):
        out = run_shim(tmp_path, *args)
        assert out.returncode == 2, args
        assert out.stderr.startswith("swarm shim: usage: ")
        assert out.stderr.count("\n") == 1
    assert not record.exists()


def test_a_command_that_cannot_start_is_recorded_as_not_started(tmp_path: Path) -> None:
    record = tmp_path / "rec.json"
    missing = str(tmp_path / "gone")  # checked by spawn, then deleted before the shim ran it
    out = run_shim(
        tmp_path, supervisor.shim.MARKER, "--record", str(record), "--grace", "1", "--", missing
    )
    assert out.returncode == 127
    assert out.stderr.startswith(f"swarm shim: cannot start {missing!r}: ")
    written = json.loads(record.read_text())
    assert written["exit_code"] == 127
    assert written["ended_at"] >= written["started_at"]


def test_a_record_the_shim_cannot_write_does_not_stop_the_command(tmp_path: Path) -> None:
    record = tmp_path / "no-such-dir" / "rec.json"
    out = run_shim(
        tmp_path, supervisor.shim.MARKER, "--record", str(record), "--grace", "1", "--",
        "sh", "-c", "echo ran > out.txt; exit 4",
    )  # fmt: skip
    assert out.returncode == 4
    assert (tmp_path / "out.txt").read_text() == "ran\n"
    assert f"swarm shim: cannot write {record}" in out.stderr
    assert not record.parent.exists()


def test_stopped_command_records_its_signal(tmp_path: Path, write_agent: AgentFactory) -> None:
    argv = write_agent("import time\nprint('up', flush=True)\ntime.sleep(300)\n")
    log = tmp_path / "agent.log"
    agent = supervisor.spawn(argv, cwd=tmp_path, env=clean_env(), log_path=log, grace=5)
    wait_for(lambda: "up" in log.read_text(), what="the agent")
    assert agent.stop(grace=5) == -signal.SIGTERM
    record = shim_record.read_record(shim_record.record_path(log))
    assert record is not None
    assert record.exit_code == -signal.SIGTERM
    assert record.stopped


def test_shim_starts_whatever_pythonpath_the_task_sets(
    tmp_path: Path, write_agent: AgentFactory
) -> None:
    argv = write_agent("print('ran')\n")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "json.py").write_text("raise SystemExit('shadowed stdlib')\n")
    env = clean_env({"PYTHONPATH": str(broken), "PYTHONSTARTUP": str(broken / "json.py")})
    log = tmp_path / "agent.log"
    agent = supervisor.spawn(argv, cwd=tmp_path, env=env, log_path=log)
    assert agent.wait(timeout=60) == 0
    assert log.read_text() == "ran\n"


def test_resolve_style_wait_is_interruptible(tmp_path: Path, write_agent: AgentFactory) -> None:
    """Ctrl-C while waiting for a step kills its tree before the interrupt propagates."""
    pids = tmp_path / "pids"
    pids.mkdir()
    code = (
        "import os, signal, sys, threading\n"
        "from pathlib import Path\n"
        "from worktree_swarm.infra import supervisor\n"
        "from worktree_swarm.infra.proc import clean_env\n"
        f"argv = {write_agent(PRELUDE + PATTERNS['double_fork'])!r}\n"
        f"pids = Path({str(pids)!r})\n"
        "def interrupt():\n"
        "    while not ((pids / 'ready').exists() and (pids / 'daemon').exists()):\n"
        "        threading.Event().wait(0.02)\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "threading.Thread(target=interrupt, daemon=True).start()\n"
        "try:\n"
        "    supervisor.run_to_end(argv, cwd=pids, env=clean_env({'PIDS': str(pids)}),\n"
        "        log_path=pids / 'step.log', timeout=300, grace=0.5)\n"
        "except KeyboardInterrupt:\n"
        "    sys.exit(42)\n"
    )
    package_root = Path(supervisor.__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=clean_env({"PYTHONPATH": str(package_root)}),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 42, done.stderr
    for name in ("ready", "daemon"):
        assert not pid_alive(int((pids / name).read_text()))


def test_logs_have_no_shim_noise(repo: Path, write_agent: AgentFactory) -> None:
    agent = write_agent("import pathlib\npathlib.Path('x.txt').write_text('x')\nprint('done')\n")
    text = f'[defaults]\nagent = {argv_toml(agent)}\n[[task]]\nid = "q"\nprompt = "p"\n'
    out = swarm(repo, "run", manifest(repo, text))
    assert out.returncode == 0, out.stdout + out.stderr
    logs = swarm(repo, "logs", "q")
    assert "swarm shim" not in logs.stdout + logs.stderr
    assert git(repo, "show", "swarm/q:x.txt") == "x"


def test_the_shim_starts_with_only_what_starting_a_process_needs(tmp_path: Path) -> None:
    # Every agent, setup step and check pays the shim's start: modules that pull in enum,
    # re or typing would cost more than the interpreter's own start-up.
    record = tmp_path / "rec.json"
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-X", "importtime", str(shim_record.SHIM_PATH),
         supervisor.shim.MARKER, "--record", str(record), "--grace", "1", "--", "true"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    imported = {
        line.split("|")[-1].strip()
        for line in out.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert {"_ctypes", "posix"} <= imported
    assert not imported & {
        "enum", "re", "typing", "contextlib", "json", "pathlib", "signal", "ctypes", "struct",
        "os", "__future__",
    }  # fmt: skip
    assert json.loads(record.read_text())["exit_code"] == 0


# A process that starts an agent under a shim told to watch it, then waits to be killed: as
# a Ray node's actor does, which dies with its node's raylet.
STARTER = """
import os, pathlib, sys, time
from worktree_swarm.infra import supervisor
from worktree_swarm.infra.proc import clean_env
where = pathlib.Path(sys.argv[1])
env = clean_env({"PIDS": str(where / "pids"), "ESCAPE_MARK": sys.argv[2]})
agent = supervisor.spawn(sys.argv[3:], cwd=where, env=env, log_path=where / "agent.log",
                         grace=1, parent=os.getpid())
(where / "shim").write_text(str(agent.identity.pid))
time.sleep(600)
"""


@pytest.mark.slow  # long: runs in `scripts/check --slow` (CI runs both)
def test_a_shim_told_its_parent_stops_the_whole_tree_once_that_parent_dies(
    tmp_path: Path, write_agent: AgentFactory, mark: str
) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    agent = write_agent(PRELUDE + PATTERNS["double_fork"])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    starter = subprocess.Popen(
        [sys.executable, "-c", STARTER, str(tmp_path), mark, *agent], env=env
    )
    try:
        wait_for(lambda: (pids / "ready").exists() and (pids / "daemon").exists(), what="agent")
        shim = psutil.Process(int(written(tmp_path / "shim", what="the shim")))
        assert len(marked(mark)) == 3  # the shim, the agent, its daemon (it ignores SIGTERM)
        starter.kill()  # the starter dies; the shim, in a session of its own, is re-parented
        starter.wait(timeout=30)
        psutil.wait_procs([shim], timeout=60)
    finally:
        if starter.poll() is None:
            starter.kill()
    assert not shim.is_running()
    assert marked(mark) == []
    record = shim_record.read_record(shim_record.record_path(tmp_path / "agent.log"))
    assert record is not None
    assert record.stopped


def test_a_link_planted_where_the_shim_writes_its_record_is_never_written_through(
    tmp_path: Path, write_agent: AgentFactory
) -> None:
    # The agent knows its shim's record path (SWARM_SHIM) and pid (its parent): a link at the
    # record's temporary name had the shim truncate and write a file outside the run.
    outside = tmp_path / "yours.txt"
    outside.write_text("your file\n")
    agent = write_agent(
        "import os\n"
        f"os.symlink({str(outside)!r}, f\"{{os.environ['SWARM_SHIM']}}.{{os.getppid()}}.tmp\")\n"
    )
    log = tmp_path / "run" / "attempt-1.log"
    log.parent.mkdir()
    spawned = supervisor.spawn(agent, cwd=tmp_path, env=clean_env(), log_path=log, grace=5)
    assert spawned.wait(timeout=60) == 0
    assert outside.read_text() == "your file\n"
    assert json.loads(shim_record.record_path(log).read_text())["exit_code"] == 0
    assert not shim_record.record_path(log).is_symlink()
