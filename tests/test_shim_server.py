"""The shim server: a shim forked per command, and what a lost server leaves.

Real processes throughout: the server is the one a run uses (``shim_server.ShimServer``), the
commands are small programs, and escapes are looked for by the mark each one carries.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import psutil
import pytest

from tests import test_shim
from tests.test_run import pid_alive, wait_for
from tests.test_shim import AgentFactory, marked, spawn_escaping
from worktree_swarm.core.errors import SwarmError
from worktree_swarm.infra import (
    proc_scan,
    proctree,
    redact,
    shim,
    shim_record,
    shim_server,
    supervisor,
)
from worktree_swarm.infra.proc import clean_env
from worktree_swarm.run import provision

mark = test_shim.mark  # the fixture: a marker unique to the test, its carriers killed after

pytestmark = pytest.mark.skipif(
    not supervisor.SHIM_AVAILABLE, reason="the shim needs a child subreaper (Linux)"
)


@pytest.fixture
def shims() -> Iterator[shim_server.ShimServer]:
    server = shim_server.ShimServer()
    yield server
    server.close()


def _server_of(agent: supervisor.AgentProcess) -> psutil.Process:
    """The server that forked *agent*'s shim (the shim's parent)."""
    parent = psutil.Process(agent.identity.pid).parent()
    assert parent is not None
    return parent


def test_a_forked_shim_records_the_exit_status_and_kills_leftovers(
    tmp_path: Path, write_agent: AgentFactory, mark: str, shims: shim_server.ShimServer
) -> None:
    body = 'daemon("daemon")\npublish("ready")\n'
    # Ends once its daemon is up: ended before, the daemon may be killed before it says so.
    body += 'while not (PIDS / "daemon").exists():\n    time.sleep(0.01)\nsys.exit(3)\n'
    agent, pids, log = spawn_escaping(tmp_path, write_agent, mark, body, shims)
    assert agent.popen is None  # not our child: its shim's parent is the server
    server = _server_of(agent)
    assert server.cmdline()[-4:] == [shim.MARKER, "--grace", "0.5", shim.SERVE]
    assert server.cwd() == "/"  # never a process inside a worktree
    assert agent.identity.pgid == agent.identity.pid  # a session of its own
    assert agent.wait() == 3  # no timeout: until it ends (pytest-timeout ends a hang)
    written = shim_record.read_record(shim_record.record_path(log))
    assert written is not None
    assert (written.exit_code, written.stopped, written.shim_pid) == (3, False, agent.identity.pid)
    assert not pid_alive(int((pids / "daemon").read_text()))  # a leftover, killed at the end
    assert marked(mark) == []
    assert "swarm shim" not in log.read_text()
    assert not agent.alive()


def test_stopping_a_forked_shim_kills_the_daemons_of_its_command(
    tmp_path: Path, write_agent: AgentFactory, mark: str, shims: shim_server.ShimServer
) -> None:
    body = 'daemon("daemon", root=True)\npublish("ready")\ntime.sleep(600)\n'
    agent, pids, log = spawn_escaping(tmp_path, write_agent, mark, body, shims)
    wait_for((pids / "ready").exists, what="the agent")
    wait_for((pids / "daemon").exists, what="the daemon")
    daemon = psutil.Process(int((pids / "daemon").read_text()))
    assert daemon.cwd() == "/"  # left every worktree, and ignores SIGTERM
    assert agent.poll() is None
    assert agent.stop(grace=0.5) == -signal.SIGTERM
    written = shim_record.read_record(shim_record.record_path(log))
    assert written is not None
    assert written.stopped
    assert marked(mark) == []


def test_the_exit_code_comes_from_the_server_when_no_record_can_be_written(
    tmp_path: Path, shims: shim_server.ShimServer
) -> None:
    # A full disk, or a record the shim cannot write: the server reaped the shim and knows.
    record = tmp_path / "no-such-dir" / "rec.json"
    log = tmp_path / "logs" / "a.log"
    argv = ["sh", "-c", "echo ran > out.txt; exit 4"]
    agent = supervisor.spawn(
        argv, cwd=tmp_path, env=clean_env(), log_path=log, record=record, shims=shims
    )
    assert agent.wait(timeout=60) == 4
    assert (tmp_path / "out.txt").read_text() == "ran\n"
    assert not record.exists()
    assert "swarm shim: cannot write" in log.read_text()


def test_a_killed_forked_shim_ends_with_the_signal_that_killed_it(
    tmp_path: Path, shims: shim_server.ShimServer
) -> None:
    ready = tmp_path / "ready"
    argv = ["sh", "-c", f"touch {ready}; exec sleep 600"]
    agent = supervisor.spawn(
        argv, cwd=tmp_path, env=clean_env(), log_path=tmp_path / "a.log", shims=shims
    )
    wait_for(ready.exists, what="the command")
    sleeper = psutil.Process(agent.identity.pid).children()[0]
    os.kill(agent.identity.pid, signal.SIGKILL)
    try:
        # Its record still says running: the code is the shim's own, as its server reaped it.
        assert agent.wait(timeout=60) == -signal.SIGKILL
    finally:
        sleeper.kill()


def test_the_leftovers_of_a_task_stop_a_live_forked_shim_by_its_record(
    tmp_path: Path, shims: shim_server.ShimServer
) -> None:
    # A forked shim's command line is its server's, naming no record: it is told from another
    # process by its output, a log in its record's folder (a check step's, as checks name it).
    logs = tmp_path / "logs"
    ready = tmp_path / "ready"
    argv = ["sh", "-c", f"touch {ready}; exec sleep 600"]
    agent = supervisor.spawn(
        argv,
        cwd=tmp_path,
        env=clean_env(),
        log_path=logs / "checks.log",
        record=logs / "checks-1.exit.json",
        shims=shims,
    )
    wait_for(ready.exists, what="the command")
    sleeper = psutil.Process(agent.identity.pid).children()[0]
    proc_scan.kill_left_in(logs, grace=0.5, within=(tmp_path,))
    assert agent.wait(timeout=60) == -signal.SIGTERM
    assert not pid_alive(sleeper.pid)


def test_what_a_killed_forked_shim_left_running_is_killed_by_its_server(
    tmp_path: Path, shims: shim_server.ShimServer
) -> None:
    # The shim SIGKILLed before it could end its tree: its command, and the daemon the command
    # started (which ignores SIGTERM), are re-parented to the server, a subreaper, which kills
    # them, the daemon once it is re-parented in turn.
    ready = tmp_path / "ready"
    script = f"(trap '' TERM; exec sleep 600) & echo $! > {ready}.tmp; mv {ready}.tmp {ready}"
    agent = supervisor.spawn(
        ["sh", "-c", f"{script}; exec sleep 600"],
        cwd=tmp_path, env=clean_env(), log_path=tmp_path / "a.log", shims=shims,
    )  # fmt: skip
    wait_for(ready.exists, what="the command")
    command = psutil.Process(agent.identity.pid).children()[0]
    daemon = psutil.Process(int(ready.read_text()))
    os.kill(agent.identity.pid, signal.SIGKILL)
    try:
        assert agent.wait(timeout=60) == -signal.SIGKILL
        wait_for(lambda: not pid_alive(command.pid) and not pid_alive(daemon.pid),
                 what="the server to kill what the shim left")  # fmt: skip
    finally:
        for left in (command, daemon):
            with contextlib.suppress(psutil.NoSuchProcess):
                left.kill()


def test_a_command_that_cannot_start_where_asked_is_refused_as_popen_would(
    tmp_path: Path, shims: shim_server.ShimServer
) -> None:
    gone = tmp_path / "gone"
    log = tmp_path / "logs" / "a.log"
    with pytest.raises(SwarmError, match=r"cannot start agent 'true' in .*gone: No such file"):
        supervisor.spawn(["true"], cwd=gone, env=clean_env(), log_path=log, shims=shims)
    written = shim_record.read_record(shim_record.record_path(log))
    assert written is not None
    assert written.exit_code == 127
    # The server carries on.
    agent = supervisor.spawn(["true"], cwd=tmp_path, env=clean_env(), log_path=log, shims=shims)
    assert agent.wait(timeout=60) == 0


def test_a_nul_byte_in_the_command_is_refused_as_popen_would(
    tmp_path: Path, shims: shim_server.ShimServer
) -> None:
    with pytest.raises(ValueError, match="embedded null byte"):
        supervisor.spawn(
            ["echo", "a\0b"], cwd=tmp_path, env=clean_env(), log_path=tmp_path / "a.log",
            shims=shims,
        )  # fmt: skip


_PRYING = """
import os, sys
shim = os.getppid()
with open(f"/proc/{shim}/stat") as stat:
    server = int(stat.read().rsplit(")", 1)[1].split()[1])
seen = []
for n, mode, name in ((0, os.O_RDONLY, "read"), (0, os.O_WRONLY, "write"),
                      (1, os.O_RDONLY, "read"), (1, os.O_WRONLY, "write")):
    try:
        fd = os.open(f"/proc/{server}/fd/{n}", mode | os.O_NONBLOCK)
    except OSError:
        seen.append(f"fd {n} {name}: refused")
        continue
    seen.append(f"fd {n} {name}: opened")
    if (n, name) == (1, "write"):  # a reply of its own: the next command is "this process"
        os.write(fd, b"%d 0\\n" % os.getpid())
    os.close(fd)
with open(sys.argv[1], "w") as out:
    out.write("\\n".join(seen))
"""


def test_an_agent_cannot_open_its_shim_servers_channel(
    tmp_path: Path, shims: shim_server.ShimServer
) -> None:
    # Through `/proc/<server>/fd/N` a pipe can be opened again by any process of the user:
    # an agent read the requests (the token, other tasks' environments) and answered one
    # itself, naming a process of its choice, which the run then supervised and killed.
    seen = tmp_path / "seen.txt"
    prying = supervisor.spawn(
        [sys.executable, "-c", _PRYING, str(seen)], cwd=tmp_path, env=clean_env(),
        log_path=tmp_path / "p.log", shims=shims,
    )  # fmt: skip
    assert prying.wait(timeout=60) == 0, (tmp_path / "p.log").read_text()
    assert seen.read_text().splitlines() == [
        "fd 0 read: refused", "fd 0 write: refused", "fd 1 read: refused", "fd 1 write: refused"
    ]  # fmt: skip
    after = supervisor.spawn(
        ["sh", "-c", "exit 3"], cwd=tmp_path, env=clean_env(), log_path=tmp_path / "a.log",
        shims=shims,
    )  # fmt: skip
    assert after.identity.pid != prying.identity.pid
    assert after.wait(timeout=60) == 3
    assert after.popen is None  # forked by the same server


@pytest.mark.parametrize("forked", [True, False], ids=["forked", "own-interpreter"])
def test_a_command_starts_with_no_signal_ignored(tmp_path: Path, *, forked: bool) -> None:
    # A manager started with signals ignored (`nohup`, a service manager) passed them on: an
    # ignored signal outlives exec, and the agent never saw a SIGQUIT or SIGUSR1 meant for it.
    ignored = (signal.SIGUSR1, signal.SIGQUIT, signal.SIGPIPE)
    before = {s: signal.signal(s, signal.SIG_IGN) for s in ignored}
    shims = shim_server.ShimServer() if forked else None
    try:
        log = tmp_path / "status.log"
        agent = supervisor.spawn(
            ["cat", "/proc/self/status"], cwd=tmp_path, env=clean_env(), log_path=log,
            shims=shims,
        )  # fmt: skip
        assert agent.wait(timeout=60) == 0
        assert (agent.popen is None) == forked
    finally:
        for number, handler in before.items():
            signal.signal(number, handler)
        if shims is not None:
            shims.close()
    status = dict(line.split(":\t", 1) for line in log.read_text().splitlines())
    mask = int(status["SigIgn"], 16)
    assert [s.name for s in ignored if mask & (1 << (s - 1))] == [], status["SigIgn"]


def test_a_server_that_ended_is_replaced_and_its_shims_carry_on(
    tmp_path: Path, shims: shim_server.ShimServer
) -> None:
    ready = tmp_path / "ready"
    argv = ["sh", "-c", f"touch {ready}; sleep 600"]
    first = supervisor.spawn(
        argv, cwd=tmp_path, env=clean_env(), log_path=tmp_path / "a.log", grace=0.5, shims=shims
    )
    wait_for(ready.exists, what="the command")
    server = _server_of(first)
    server.kill()
    server.wait(timeout=30)
    assert first.alive()  # the shim carries on without its server
    second = supervisor.spawn(
        ["sh", "-c", "exit 5"], cwd=tmp_path, env=clean_env(), log_path=tmp_path / "b.log",
        grace=0.5, shims=shims,
    )  # fmt: skip
    assert second.wait(timeout=60) == 5
    assert second.popen is None  # forked by a new server
    assert _server_of(second).pid != server.pid
    assert first.stop(grace=0.5) == -signal.SIGTERM  # from its record: its server is gone


def test_a_shim_forked_just_before_its_server_died_is_found_by_its_record(
    tmp_path: Path, shims: shim_server.ShimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The log is a FIFO: the forked shim has written its record and blocks opening the log,
    # still holding the server's pipes. The server dies before it can reply.
    warm = supervisor.spawn(
        ["true"], cwd=tmp_path, env=clean_env(), log_path=tmp_path / "w.log", shims=shims
    )
    assert warm.wait(timeout=60) == 0
    (server,) = _running_servers()
    log = tmp_path / "fifo.log"
    made = supervisor.fs.open_append_bytes

    def then_a_pipe(path: Path) -> BinaryIO:
        # The manager makes the log a file; a pipe takes its place before the shim opens it.
        made(path).close()
        path.unlink()
        os.mkfifo(path)
        return io.BytesIO()

    monkeypatch.setattr(supervisor.fs, "open_append_bytes", then_a_pipe)
    runs = tmp_path / "runs.txt"
    started: list[supervisor.AgentProcess] = []
    spawning = threading.Thread(
        target=lambda: started.append(
            supervisor.spawn(
                ["sh", "-c", f"echo once >> {runs}"],
                cwd=tmp_path,
                env=clean_env(),
                log_path=log,
                shims=shims,
            )
        )
    )
    spawning.start()
    record = shim_record.record_path(log)
    wait_for(record.exists, what="the forked shim's record")
    # The server at its busiest (a start under way): nothing of it another process can open.
    held = [str(fd.readlink()) for fd in Path(f"/proc/{server.pid}/fd").iterdir()]
    assert not [name for name in held if name.startswith("pipe:")], held
    server.kill()
    server.wait(timeout=30)
    with log.open("rb") as reader:  # lets the shim go on: it lets go of the server's pipes
        spawning.join(timeout=60)
        assert not spawning.is_alive()
        (agent,) = started
        written = shim_record.read_record(record)
        assert written is not None
        assert agent.identity.pid == written.shim_pid
        assert agent.wait(timeout=60) == 0
        reader.read()
    assert runs.read_text() == "once\n"  # adopted, not started a second time


def test_a_server_that_stops_answering_is_replaced_and_the_command_still_starts(
    tmp_path: Path,
) -> None:
    shims = shim_server.ShimServer(reply_timeout=1.0)
    try:
        warm = supervisor.spawn(
            ["true"], cwd=tmp_path, env=clean_env(), log_path=tmp_path / "w.log", shims=shims
        )
        assert warm.wait(timeout=60) == 0
        (server,) = _running_servers()
        server.suspend()  # SIGSTOP: it reads no request and answers none
        agent = supervisor.spawn(
            ["sh", "-c", "exit 4"], cwd=tmp_path, env=clean_env(), log_path=tmp_path / "a.log",
            shims=shims,
        )  # fmt: skip
        assert agent.wait(timeout=60) == 4
        assert not pid_alive(server.pid)  # killed, not left stopped
        later = supervisor.spawn(
            ["sh", "-c", "exit 6"], cwd=tmp_path, env=clean_env(), log_path=tmp_path / "b.log",
            shims=shims,
        )  # fmt: skip
        assert later.wait(timeout=60) == 6
        assert later.popen is None  # forked by a new server
    finally:
        shims.close()


def _running_servers() -> list[psutil.Process]:
    """The shim servers among this process's children."""
    return [
        child
        for child in psutil.Process().children()
        if shim.SERVE in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE
    ]


def test_the_server_answers_what_it_cannot_read_in_one_line(tmp_path: Path) -> None:
    argv = [sys.executable, *shim_record.SHIM_FLAGS, "-c", shim_record.SHIM_LAUNCH,
            shim.MARKER, "--grace", "1", shim.SERVE]  # fmt: skip
    token = b"0123abcd"  # the manager's first line: every request of its own carries it
    record = str(tmp_path / "r").encode()
    requests = b"".join(
        b"%d\n%s" % (len(payload), payload)
        for payload in (
            token + b"\x00hello",  # no such request
            b"start\x00/\x00/dev/null\x00" + record + b"\x001\x00true",  # not the manager's
            token + b"\x00exit\x00123\x00None",  # a shim it never forked
            token + b"\x00start\x00/\x00/dev/null\x00" + record + b"\x000",  # no command
            token + b"\x00start\x00/\x00/dev/null\x00r\x00two",  # not a number
        )
    )
    out = subprocess.run(
        argv,
        input=token + b"\n" + requests + b"x\n",
        capture_output=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert out.returncode == 0  # the end of its stdin ends it
    # The request without the token got no reply at all (the manager reads one per request).
    assert out.stdout.decode().splitlines() == [
        "! bad request: unknown request",
        "?",
        "! bad request: no command",
        "! bad request: invalid literal for int() with base 10: b'two'",
        "! bad request: invalid literal for int() with base 10: b'x\\n'",
    ]
    assert not (tmp_path / "r").exists()


def test_an_unrecorded_agent_under_a_forked_shim_is_found_by_the_agents_environment(
    tmp_path: Path, shims: shim_server.ShimServer
) -> None:
    # The shim has the server's environment; the agent under it carries the run and task.
    worktree = tmp_path / "wt"
    worktree.mkdir()
    ready = tmp_path / "ready"
    env = clean_env({"SWARM_RUN_ID": "r1", "SWARM_TASK_ID": "t1"})
    agent = supervisor.spawn(
        ["sh", "-c", f"touch {ready}; sleep 600"], cwd=worktree, env=env,
        log_path=tmp_path / "a.log", grace=0.5, shims=shims,
    )  # fmt: skip
    try:
        wait_for(ready.exists, what="the agent")
        assert "SWARM_TASK_ID" not in psutil.Process(agent.identity.pid).environ()
        assert provision.unrecorded_agent("r1", "t1", worktree) == agent.identity
        assert provision.unrecorded_agent("r1", "t2", worktree) is None
    finally:
        agent.stop(grace=0.5)


def test_a_command_started_after_the_servers_ended_gets_a_shim_of_its_own(
    tmp_path: Path, shims: shim_server.ShimServer
) -> None:
    first = supervisor.spawn(
        ["true"], cwd=tmp_path, env=clean_env(), log_path=tmp_path / "a.log", shims=shims
    )
    assert first.wait(timeout=60) == 0
    assert first.popen is None
    shims.close()
    assert _running_servers() == []  # ended, and reaped
    late = supervisor.spawn(
        ["sh", "-c", "exit 6"], cwd=tmp_path, env=clean_env(), log_path=tmp_path / "b.log",
        shims=shims,
    )  # fmt: skip
    assert late.popen is not None  # our child: a shim started as its own interpreter
    assert late.wait(timeout=60) == 6
    assert _running_servers() == []


@pytest.mark.parametrize("served", [True, False], ids=["forked", "own interpreter"])
def test_an_argument_too_long_to_start_says_to_shorten_it(
    tmp_path: Path, shims: shim_server.ShimServer, served: bool
) -> None:
    # One argument over the kernel's limit for a single string (128 KiB): a prompt inlined.
    argv = ["echo", "x" * 200_000]
    log = tmp_path / "logs" / "a.log"
    with pytest.raises(SwarmError, match=r"Argument list too long; shorten its arguments"):
        supervisor.spawn(
            argv, cwd=tmp_path, env=clean_env(), log_path=log, shims=shims if served else None
        )
    if served:  # the shim was forked and recorded that its command never started
        written = shim_record.read_record(shim_record.record_path(log))
        assert written is not None
        assert written.exit_code == 127


def test_a_reply_already_there_is_taken_by_a_manager_stopped_past_its_deadline() -> None:
    # The manager was stopped (SIGSTOP, a suspended laptop) in the middle of asking its shim
    # server: when it goes on, its deadline has passed but the server's answer is there. It
    # took the server for lost (killed it; the agent's exit status came back unknown).
    manager, server = socket.socketpair()
    with manager, server:
        server.sendall(b"42 ok\n")  # the server answered while the manager was stopped
        past = time.monotonic() - 60
        assert shim_server._exchange(manager.fileno(), b"ask\n", past) == b"42 ok\n"
        assert server.recv(100) == b"ask\n"
        # Nothing there, past the deadline: given up at once, as before.
        assert shim_server._exchange(manager.fileno(), b"ask\n", past) == b""


@pytest.mark.parametrize("left", [0, 2], ids=["no channel", "no server process"])
def test_a_manager_out_of_files_starts_no_server_and_its_commands_start_their_own_shims(
    tmp_path: Path, left: int
) -> None:
    # `ulimit -n` met: with no descriptor left the channel cannot be made; with two left
    # the channel is, and the server's process cannot start. The caller starts the shim
    # itself (start: None), then and after: no server is tried again.
    shims = shim_server.ShimServer()
    record = tmp_path / "a.record"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest = os.dup(0)  # every descriptor from the lowest free one up: refused
    os.close(lowest)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest + left, hard))
        try:
            started = shims.start(
                ["true"], cwd=tmp_path, env={}, log_path=tmp_path / "a.log", record=record,
                grace=1.0,
            )  # fmt: skip
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert started is None
        assert not record.exists()  # nothing forked
        assert _running_servers() == []
        agent = supervisor.spawn(
            ["sh", "-c", "exit 5"], cwd=tmp_path, env=clean_env(), log_path=tmp_path / "b.log",
            shims=shims,
        )  # fmt: skip
        assert agent.popen is not None  # a shim of its own
        assert agent.wait(timeout=60) == 5
        assert _running_servers() == []
    finally:
        shims.close()


def test_a_command_the_system_refused_is_said_to_be_the_systems_doing() -> None:
    # fork or exec failed for a limit of the system's: `swarm retry` can start it later.
    refused = shim_server.not_started(
        "claude", Path("/w"), errno.EAGAIN, "Resource temporarily unavailable"
    )
    assert str(refused) == (
        "cannot start agent 'claude' in /w: Resource temporarily unavailable; the system "
        "refused it (`ulimit -u`); `swarm retry` runs it"
    )


def test_a_request_the_server_does_not_take_or_cannot_receive_gets_no_reply() -> None:
    # Past the deadline, a request the server does not read (its buffer full) is given up;
    # one to a server whose end is closed fails (EPIPE): no reply either way.
    manager, server = socket.socketpair()
    with manager, server:
        past = time.monotonic() - 60
        assert shim_server._exchange(manager.fileno(), b"x" * (1 << 24), past) == b""
    manager, server = socket.socketpair()
    with manager:
        server.close()
        later = time.monotonic() + 60
        assert shim_server._exchange(manager.fileno(), b"ask\n", later) == b""


def test_a_start_the_server_never_answered_is_not_made_again_while_its_shim_may_run_it(
    tmp_path: Path,
) -> None:
    # The log is a named pipe no one reads: the forked shim has written its record and waits
    # to open it, holding the server's channel, and the server waits for the shim. Past the
    # reply's deadline the server is killed; its shim may still start the command (it does,
    # once the log is read), so starting it again would run it twice in one worktree.
    shims = shim_server.ShimServer(reply_timeout=0.5)
    log, record, runs = tmp_path / "a.log", tmp_path / "a.record", tmp_path / "runs.txt"
    os.mkfifo(log)
    try:
        with pytest.raises(SwarmError, match="may have started it: not started a second time"):
            shims.start(
                ["sh", "-c", f"echo once >> {runs}"], cwd=tmp_path, env=clean_env(),
                log_path=log, record=record, grace=1.0,
            )  # fmt: skip
        assert _running_servers() == []  # killed, not left waiting
        with log.open("rb") as reader:  # the shim goes on
            reader.read()  # to the end: the shim and its command are done with the log
        assert runs.read_text() == "once\n"
    finally:
        shims.close()


def test_an_empty_command_is_refused_before_any_server_starts(
    tmp_path: Path, shims: shim_server.ShimServer
) -> None:
    log = tmp_path / "a.log"
    with pytest.raises(SwarmError, match=r"^agent command is empty: set `agent` to a command"):
        shims.start(
            [], cwd=tmp_path, env=clean_env(), log_path=log, record=tmp_path / "rec", grace=0.5
        )
    servers = [c for c in psutil.Process().children() if shim.SERVE in c.cmdline()]
    assert servers == []
    assert not log.exists()
    # The next command is served as usual.
    agent = supervisor.spawn(["true"], cwd=tmp_path, env=clean_env(), log_path=log, shims=shims)
    assert agent.popen is None  # forked by a server
    assert agent.wait(timeout=60) == 0


def test_secrets_are_learned_from_a_forked_shims_command_never_from_a_daemon_it_adopted(
    tmp_path: Path, shims: shim_server.ShimServer
) -> None:
    # A forked shim's environment is its server's: its command's is read for the secrets of
    # a manager now gone. Every child of the shim was read, an agent's double-forked daemon
    # too: a secret-named variable it chose had its text redacted from every output.
    secret = f"cmd_{os.getpid()}_{time.monotonic_ns()}Zq"
    ordinary = f"docs/plan-{time.monotonic_ns()}.md"
    ready = tmp_path / "ready"
    script = f"(MY_TOKEN='{ordinary}' setsid sh -c 'touch {ready}; exec sleep 600' &); sleep 600"
    env = {**clean_env(), "DEPLOY_TOKEN": secret}
    agent = supervisor.spawn(
        ["sh", "-c", script], cwd=tmp_path, env=env, log_path=tmp_path / "a.log", grace=0.5,
        shims=shims,
    )  # fmt: skip
    try:
        wait_for(ready.exists, what="the daemon")
        proctree.learn_secrets(agent.identity)
        assert redact.redact(f"{secret} {ordinary}") == f"{redact.REDACTED} {ordinary}"
    finally:
        agent.stop(grace=0.5)
