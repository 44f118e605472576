"""The shim server: forks the shim of each command its manager asks for.

Started as ``python -I -S -c LAUNCH --swarm-shim --grace SECONDS --serve``, LAUNCH that of the
shim (:mod:`worktree_swarm.infra.shim`), which hands over to :func:`serve`. A manager
that starts many commands keeps one, and the server forks the shim of each command instead of
starting an interpreter for it (~3 ms against ~12 ms of CPU per command). Its stdin and stdout
are one socket, the manager's channel (a pipe could be opened again through /proc by any
process of the user). A request on its stdin is its length, a newline, then NUL-separated
fields: the token the manager wrote as the server's first line, then the request's own (see
:func:`_answer`); the reply, one line on its stdout, is the forked shim's PID and start time
once the command started, or ``!``, the errno and why it could not. The forked shim does what
the shim of one command does, in a session of its own; its command line and environment are the
server's (the command's carries ``SWARM_SHIM``). The server ends at the end of its stdin; the
shims it forked carry on.
"""

# Loaded by the shim only in server mode, so no shim of one command pays for it; like the shim
# it imports as little as it can (`select` and `_socket` once serving, not `selectors`, `socket`).
import posix
import sys
import time

signal = __import__("_signal")
TYPE_CHECKING = False  # typing's costs start-up time; mypy takes any TYPE_CHECKING as true

# Imported as this module was: by the shim's directory when launched, else from the package.
if TYPE_CHECKING or __package__:
    from worktree_swarm.infra import shim
else:
    import shim

_KEPT_STATUSES = 4096


def serve(grace: float) -> int:
    """Fork the shim of each command asked for on stdin (see the module's docstring).

    The server is a child subreaper too: what a shim leaves when it is killed before it could
    kill its command's tree (SIGKILLed by the OOM killer, or by an agent that wiped
    ``SWARM_SHIM`` from its daemon's environment first) is re-parented to the server, which
    kills it (see :func:`_kill_adopted`), within :data:`_ADOPT_SCAN` seconds.
    """
    shim.become_subreaper()
    forked: dict[int, int | None] = {}  # PID -> start time of each shim not yet reaped
    exited: dict[tuple[int, int | None], int] = {}  # (PID, start time) -> wait status
    requests = _Requests(0, forked, exited)
    replies = sys.stdout.buffer
    token = requests.line().strip()  # the manager's first line; every request starts so
    while header := requests.line():
        _reap_exited(forked, exited)
        try:
            size = int(header)
            fields = requests.read(size).split(b"\0")
            if not token or fields[0] != token:
                continue  # not the manager's: no fork, and no reply it would take for its own
            reply = _answer(fields[1:], grace, forked, exited)
        except (ValueError, IndexError) as exc:
            reply = f"! bad request: {exc}"
        replies.write(reply.replace("\n", " ").encode("utf-8", "backslashreplace") + b"\n")
        replies.flush()
    requests.look_after()  # the shims that ended, and strays; the others carry on without us
    return 0


_ADOPT_SCAN = 1.0  # seconds between the server's looks for processes re-parented to it


class _Requests:
    """The server's stdin, read a line or a byte count at a time, looking after its children.

    Its children are looked after (:meth:`look_after`) at least every :data:`_ADOPT_SCAN`
    seconds, also while no request comes.
    """

    def __init__(
        self, fd: int, forked: dict[int, int | None], exited: dict[tuple[int, int | None], int]
    ) -> None:
        self._fd = fd
        self._forked = forked
        self._exited = exited
        self._data = b""
        self._looked = time.monotonic()
        self._select = __import__("select").select

    def look_after(self) -> None:
        """Reap the shims that ended; kill the strays re-parented to the server."""
        _reap_exited(self._forked, self._exited)
        _kill_adopted(self._forked, self._exited)
        self._looked = time.monotonic()

    def line(self) -> bytes:
        """The next line, its newline included (b"" at the end of the input)."""
        while (end := self._data.find(b"\n")) < 0 and self._fill():
            pass
        return self._take(len(self._data) if end < 0 else end + 1)

    def read(self, size: int) -> bytes:
        """The next *size* bytes (fewer at the end of the input)."""
        while len(self._data) < size and self._fill():
            pass
        return self._take(size)

    def _take(self, size: int) -> bytes:
        taken, self._data = self._data[:size], self._data[size:]
        return taken

    def _fill(self) -> bool:
        """Read what comes next; False at the end of the input."""
        while True:
            if time.monotonic() - self._looked >= _ADOPT_SCAN:
                self.look_after()
            if self._select([self._fd], [], [], _ADOPT_SCAN)[0]:
                break
        chunk = posix.read(self._fd, 1 << 16)
        self._data += chunk
        return bool(chunk)


def _answer(
    fields: list[bytes],
    grace: float,
    forked: dict[int, int | None],
    exited: dict[tuple[int, int | None], int],
) -> str:
    """The reply to one request: its fields, NUL-separated (no NUL can be in any of them).

    ``start CWD LOG RECORD N ARGV[0..N-1] NAME=VALUE...`` forks the shim of a command;
    ``exit PID TICKS`` asks for the exit code of a shim this server forked and reaped.
    """
    kind = fields[0]
    if kind == b"exit" and len(fields) == 3:  # noqa: PLR2004
        key = (int(fields[1]), None if fields[2] == b"None" else int(fields[2]))
        return str(shim.exit_code(exited.pop(key))) if key in exited else "?"
    if kind != b"start":
        raise ValueError("unknown request")
    cwd, log, record, count = fields[1:5]
    command = fields[5 : 5 + int(count)]
    if not command or len(command) != int(count):
        raise ValueError("no command")
    env = dict(item.split(b"=", 1) for item in fields[5 + int(count) :] if item)
    return _fork_shim(command, cwd=cwd, env=env, log=log, record=shim.fsdecode(record), grace=grace,
                      forked=forked)  # fmt: skip


def _reap_exited(forked: dict[int, int | None], exited: dict[tuple[int, int | None], int]) -> None:
    """Reap the forked shims that ended, keeping their statuses for the manager to ask.

    Until then a shim's PID stays its own, as a zombie. The manager reads a command's exit
    code from the shim's record; it asks the server only when the shim could not write it
    (a full disk) or was killed first.
    """
    while True:
        try:
            pid, status = posix.waitpid(-1, posix.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid in forked:  # else a stray re-parented to the server, killed
            exited[(pid, forked.pop(pid))] = status
        while len(exited) > _KEPT_STATUSES:  # asked for soon after the end, or never
            del exited[next(iter(exited))]


def _kill_adopted(forked: dict[int, int | None], exited: dict[tuple[int, int | None], int]) -> None:
    """SIGKILL every child of the server's that is not a shim it forked, until none is left.

    Such a child was re-parented to the server (a subreaper) when its shim died without
    killing it; its own children come next, as they are re-parented in turn. Not given a grace:
    its shim, whose grace it was, is gone.
    """
    killed: set[int] = set()
    for _ in range(shim.MAX_DEPTH):
        # Each once: one that does not die (in an uninterruptible sleep, or not ours to
        # signal) is looked at again at the next look, not waited for here.
        strays = [pid for pid in _children() if pid not in forked and pid not in killed]
        if not strays:
            return
        for pid in strays:
            killed.add(pid)
            try:  # noqa: SIM105 - contextlib costs start-up time
                posix.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(shim.RESCAN)  # for them to die, and their children to be re-parented
        _reap_exited(forked, exited)


def _children() -> list[int]:
    """The children of the calling process (zombies included), from /proc."""
    me = posix.getpid()
    try:  # one file, where the kernel keeps it (CONFIG_PROC_CHILDREN; single-threaded here)
        with open(f"/proc/{me}/task/{me}/children", "rb") as f:  # noqa: PTH123
            return [int(pid) for pid in f.read().split()]
    except OSError:
        pass
    try:
        names = posix.listdir("/proc")
    except OSError:
        return []
    found = []
    for name in names:
        fields = shim.stat_fields(name) if name.isdigit() else None
        if fields is not None and int(fields[1]) == me:
            found.append(int(name))
    return found


def _fork_shim(
    command: list[bytes],
    *,
    cwd: bytes,
    env: dict[bytes, bytes],
    log: bytes,
    record: str,
    grace: float,
    forked: dict[int, int | None],
) -> str:
    """Fork the shim of *command*; the reply: its PID and start time, or ``!`` and why not."""
    # A socket, not a pipe: a pipe could be opened again through /proc by an agent, to answer
    # for another task's shim, or to hold the server at its read.
    import _socket  # noqa: PLC0415 - the server's alone: a shim of its own never needs it

    ends = _socket.socketpair()
    ready_r, ready_w = ends[0].detach(), ends[1].detach()
    pid = posix.fork()
    if pid == 0:  # the shim of this command: never back into the server's loop
        code = shim.NOT_STARTED
        try:
            posix.close(ready_r)
            code = _forked(command, cwd=cwd, env=env, log=log, record=record, grace=grace,
                           ready=ready_w)  # fmt: skip
        finally:
            shim.exit_with(code)
    posix.close(ready_w)
    ticks = forked[pid] = shim.start_ticks(pid)  # ours until reaped: the PID cannot be reused
    said = b""
    while chunk := posix.read(ready_r, 512):
        said += chunk
    posix.close(ready_r)
    if said == b"started":
        return f"{pid} {ticks}"
    return "! " + (said.decode("utf-8", "backslashreplace") or "the shim ended before starting")


def _forked(
    command: list[bytes],
    *,
    cwd: bytes,
    env: dict[bytes, bytes],
    log: bytes,
    record: str,
    grace: float,
    ready: int,
) -> int:
    """In a child of the server: become the shim of *command* in its own session."""
    posix.setsid()
    # The record before the server's channel is let go: a manager that lost the server's
    # reply waits for the end of the channel, and then finds the record if a shim was forked.
    waited, base = shim.prepare(record)
    try:
        out = posix.open(log, posix.O_WRONLY | posix.O_APPEND | posix.O_CREAT, 0o666)
        null = posix.open("/dev/null", posix.O_RDONLY)
        posix.dup2(null, 0)
        posix.dup2(out, 1)
        posix.dup2(out, 2)
        posix.close(null)
        posix.close(out)
        posix.chdir(cwd)
    except OSError as exc:
        shim.write_record(record, {**base, "exit_code": shim.NOT_STARTED, "ended_at": time.time()})
        shim.tell(ready, shim.failure(exc))
        return shim.NOT_STARTED
    # posix_spawnp looks *command* up on this process's PATH: the command's.
    path = env.get(b"PATH")
    if path is None:
        posix.unsetenv(b"PATH")
    else:
        posix.putenv(b"PATH", path)
    return shim.supervise(record, grace, command, env, waited, base, ready)
