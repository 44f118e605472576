"""Shim servers: a process that forks the shim of each command a manager starts.

Forking a warm interpreter costs a few milliseconds where starting one costs a dozen; the
server's own side is in :mod:`worktree_swarm.infra.shim_server_mode`. One server per grace
period, on a socket pair only this manager holds, every request carrying its token.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import select
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from worktree_swarm.core.errors import SwarmError
from worktree_swarm.infra import shim, shim_record
from worktree_swarm.infra.proc import system_limit
from worktree_swarm.infra.proctree import CREATE_TIME_TOLERANCE, KILL_TIMEOUT
from worktree_swarm.infra.shim_record import read_record

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence


@dataclass(frozen=True, slots=True)
class Forked:
    """A shim forked by a :class:`ShimServer`: its PID and kernel start time."""

    server: ShimServer
    grace: float
    pid: int
    ticks: int | None

    def exit_code(self) -> int | None:
        """The shim's own exit code as its server reaped it; None if unknown or running."""
        return self.server.exit_code(self)


class ShimServer:
    """Shim servers (see :mod:`worktree_swarm.infra.shim`) for the commands one manager starts.

    A server forks the shim of each command instead of starting an interpreter for it. One
    per grace period, since a shim's grace is on its command line, where
    :func:`~worktree_swarm.infra.proctree.kill_tree` reads it. Started on first use,
    thread-safe; :meth:`close` ends them (the shims they forked carry on). Where a server
    cannot start or has ended, :meth:`start` returns None and the caller starts the shim itself.
    """

    def __init__(self, *, reply_timeout: float = 30.0) -> None:
        self._lock = threading.Lock()
        self._servers: dict[float, subprocess.Popen[bytes]] = {}
        self._channels: dict[float, socket.socket] = {}
        self._tokens: dict[float, str] = {}
        self._restarts = 0
        self._closed = False
        # A server that has not answered by then (stopped, or wedged) is taken as lost.
        self._reply_timeout = reply_timeout

    def start(
        self,
        argv: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        log_path: Path,
        record: Path,
        grace: float,
    ) -> Forked | None:
        """A forked shim running *argv*; None when no server can fork it.

        Raises SwarmError, as Popen would, when the command cannot start in *cwd*, and for
        an empty *argv*, before any server is started.
        """
        if not argv:
            raise SwarmError("agent command is empty: set `agent` to a command array")
        fields = [
            "start", str(cwd), str(log_path), str(record), str(len(argv)), *argv,
            *(f"{name}={value}" for name, value in env.items()),
        ]  # fmt: skip
        asked = time.time()
        reply = self._ask(float(grace), fields, start=True)
        if reply is None:
            return self._lost(float(grace), record, asked)
        if reply.startswith("!"):  # "! ERRNO WHY" from the shim, "! bad request: ..." else
            code, _, why = reply[1:].strip().partition(" ")
            if not code.isdigit():
                code, why = "0", reply[1:].strip()
            raise not_started(argv[0], cwd, int(code), why)
        pid, ticks = reply.split()
        return Forked(self, float(grace), int(pid), None if ticks == "None" else int(ticks))

    def exit_code(self, shim: Forked) -> int | None:
        """*shim*'s own exit code, once its server reaped it; None if unknown or running."""
        reply = self._ask(shim.grace, ["exit", str(shim.pid), str(shim.ticks)], start=False)
        return None if reply is None or not reply.lstrip("-").isdigit() else int(reply)

    def _ask(self, grace: float, fields: Sequence[str], *, start: bool) -> str | None:
        """The server's one-line reply; None if it ended, is stuck, or (*start* off) is not up.

        A server that did not answer in time is killed. A request is its fields joined by
        NUL, after its length and a newline. Raises ValueError, as Popen does, for a NUL byte
        in an argument or the environment.
        """
        encoded = [os.fsencode(field) for field in fields]
        if any(b"\0" in field for field in encoded):
            raise ValueError("embedded null byte")
        with self._lock:
            server = self._server(grace) if start else self._servers.get(grace)
            if server is None:
                return None
            payload = b"\0".join([self._tokens[grace].encode(), *encoded])
            request = b"%d\n%s" % (len(payload), payload)
            deadline = time.monotonic() + self._reply_timeout
            reply = _exchange(self._channels[grace].fileno(), request, deadline)
            if not reply.endswith(b"\n"):
                if not self._end(grace) and start:
                    # A shim it forked may not have written its record yet: starting the
                    # command again could run it twice in one worktree.
                    raise SwarmError(
                        "the shim server stopped answering while starting the command, and may"
                        " have started it: not started a second time (`swarm retry` runs it)"
                    )
                return None
        return reply.decode("utf-8", errors="replace").strip()

    def _server(self, grace: float) -> subprocess.Popen[bytes] | None:
        server = self._servers.get(grace)
        if server is not None and server.poll() is None:
            return server
        if server is not None:  # it ended: another one, a few times at most
            _close_server(server, self._channels.pop(grace))
            self._restarts += 1
        if self._restarts > _SERVER_RESTARTS or self._closed:
            return None
        argv = [
            sys.executable, *shim_record.SHIM_FLAGS, "-c", shim_record.SHIM_LAUNCH,
            shim.MARKER, "--grace", repr(grace), shim.SERVE,
        ]  # fmt: skip
        # Its stdin and stdout: one end of a socket pair. Unlike a pipe, a socket cannot be
        # opened again through `/proc/PID/fd/N`, so no other process of the user (an agent)
        # can read the requests (the token, other tasks' environments), write a reply of its
        # own, or hold the channel open.
        try:
            channel, theirs = socket.socketpair()
        except OSError:
            self._restarts = _SERVER_RESTARTS + 1
            return None
        try:
            # Its own session, so a Ctrl-C meant for the manager leaves it alone; in "/", so
            # it is never a process inside a worktree.
            with theirs:
                server = subprocess.Popen(
                    argv,
                    cwd="/",
                    stdin=theirs.fileno(),
                    stdout=theirs.fileno(),
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
        except OSError:
            channel.close()
            self._restarts = _SERVER_RESTARTS + 1
            return None
        # Its first line: the token every request carries, which only this manager knows.
        token = secrets.token_hex(16)
        try:
            channel.sendall(token.encode() + b"\n")
        except OSError:
            _close_server(server, channel)
            self._restarts += 1
            return None
        self._servers[grace] = server
        self._channels[grace] = channel
        self._tokens[grace] = token
        return server

    def _end(self, grace: float) -> bool:
        """Stop the server that did not answer; whether its channel ended (in a while).

        The channel ends only once a shim it forked has let go of it, after writing its
        record: then the record tells whether that shim was forked.
        """
        server = self._servers.pop(grace)  # the one just asked, under the same lock
        channel = self._channels.pop(grace)
        self._restarts += 1
        with contextlib.suppress(OSError):
            server.kill()
        deadline = time.monotonic() + self._reply_timeout
        ended = False
        try:
            while not ended and _ready(channel.fileno(), deadline, write=False):
                ended = not channel.recv(1 << 16)
        except ConnectionResetError:  # its end closed with a request unread: ended too
            ended = True
        except OSError:
            pass
        _close_server(server, channel)
        return ended

    def _lost(self, grace: float, record: Path, asked: float) -> Forked | None:
        """The shim a server forked before it ended, if it did, by its record; or None."""
        recorded = read_record(record)
        if recorded is None or recorded.started_at < asked - CREATE_TIME_TOLERANCE:
            return None
        return Forked(self, grace, recorded.shim_pid, recorded.start_ticks)

    def close(self) -> None:
        """End the servers (the end of their stdin); the shims they forked carry on.

        Commands started after this get a shim of their own, as without a server.
        """
        with self._lock:
            servers = [(s, self._channels[grace]) for grace, s in self._servers.items()]
            self._servers, self._channels = {}, {}
            self._closed = True
        for server, channel in servers:
            _close_server(server, channel)


_SERVER_RESTARTS = 3


def not_started(program: str, cwd: Path, code: int | None, why: str) -> SwarmError:
    """The error for a command that could not start in *cwd* (*code*: its errno)."""
    if code == errno.E2BIG:
        hint = "shorten its arguments or environment (long prompts: use {prompt_file})"
    elif (limit := system_limit(code)) is not None:  # not the program's doing
        hint = f"the system refused it ({limit}); `swarm retry` runs it"
    else:
        hint = "check that it is installed and on PATH"
    return SwarmError(f"cannot start agent {program!r} in {cwd}: {why}; {hint}")


def _exchange(channel: int, request: bytes, deadline: float) -> bytes:
    """Write *request* to the socket *channel*, then read one line back, both by *deadline*.

    The reply so far, without its newline when the other end did not finish it in time,
    ended, or failed.
    """
    sent = 0
    reply = b""
    try:
        while sent < len(request):
            if not _ready(channel, deadline, write=True):
                return b""
            sent += os.write(channel, request[sent : sent + select.PIPE_BUF])
        while not reply.endswith(b"\n"):
            if not _ready(channel, deadline, write=False):
                return reply
            chunk = os.read(channel, 4096)
            if not chunk:
                return reply
            reply += chunk
    except OSError:
        return b""
    return reply


def _ready(fd: int, deadline: float, *, write: bool) -> bool:
    # Past the deadline it still looks once: a manager stopped (SIGSTOP, a suspended VM) in
    # the middle of an exchange finds the reply there when it goes on. poll, not select: a
    # manager with many files open has descriptors past select's 1024.
    left = max(0.0, deadline - time.monotonic())
    poller = select.poll()
    poller.register(fd, select.POLLOUT if write else select.POLLIN)
    return bool(poller.poll(left * 1000))


def _close_server(server: subprocess.Popen[bytes], channel: socket.socket) -> None:
    channel.close()  # the end of the server's input: it ends
    try:
        server.wait(KILL_TIMEOUT)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
