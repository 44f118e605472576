"""The agent shim: the parent of every agent, setup step, check and merge resolver.

Run by :func:`worktree_swarm.infra.supervisor.spawn` as ``python -I -S -c LAUNCH --swarm-shim
--record FILE --grace SECONDS -- ARGV...``, where LAUNCH imports this file by its directory
and calls :func:`run` (standard library only, so it starts in tens of milliseconds and
whatever PYTHONPATH a task sets cannot break it; imported, not run as a script, so Python
loads its cached bytecode instead of compiling it on every start). On Linux it makes
itself a child subreaper (``PR_SET_CHILD_SUBREAPER``), so every descendant of the command —
a double-forked daemon, one that left for ``/`` — is re-parented to the shim instead of
init, and stays findable as its descendant.

- When the command exits, its status and end time are written to FILE (JSON, temp file +
  a rename), then whatever it left running is killed and the shim exits.
- SIGTERM, SIGINT or SIGHUP to the shim kill the whole tree: SIGTERM to every descendant
  (re-scanned, so processes forked meanwhile get it too), SIGKILL to all that remain at the
  one grace deadline, re-scanning until no descendant is left. The status is then recorded
  with ``"stopped": true``.
- With ``--parent PID`` the shim does the same once PID is no longer its parent (PID died:
  a Ray node's actor that started it, gone with its node's raylet). Without it the shim
  outlives its parent, as a killed manager's agents do until `swarm resume` adopts them.

FILE is first written at start (``exit_code`` null) so a reader can tell a shim that never
started from one whose command still runs. Every process of the command's tree carries
``SWARM_SHIM=FILE`` in its environment, which is how `swarm doctor` finds leftovers even when
the shim itself was killed.

With ``--swarm-shim --grace SECONDS --serve`` it is the shim server instead, which forks the
shim of each command a manager asks for (:mod:`worktree_swarm.infra.shim_server_mode`).
"""

# Only what starting a process needs: json, contextlib and pathlib would double the
# shim's start-up time (they pull in re, collections, urllib), which every agent, setup
# step and check pays; `signal` too (its enums cost more than the interpreter's own start):
# its C module has the same functions and numbers. Likewise `_ctypes` for one call to
# prctl: `ctypes`' Python layer (its types, `struct`) costs ~3 ms at every start; and
# `posix` for `os`, which `-S` leaves unimported and which pulls in `_collections_abc`
# and `posixpath` (~1 ms). No `from __future__` import either: the annotations here are
# valid at run time.
import _ctypes
import posix
import sys
import time

signal = __import__("_signal")
TYPE_CHECKING = False  # typing's costs start-up time; mypy takes any TYPE_CHECKING as true

MARKER = "--swarm-shim"
SERVE = "--serve"
ENV_VAR = "SWARM_SHIM"
_PR_SET_CHILD_SUBREAPER = 36
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# Every signal as the command would find it started from a login shell: none ignored. An
# ignored signal outlives exec: Python ignores SIGPIPE and SIGXFSZ, and a manager started
# with SIGQUIT or SIGUSR1 ignored (`nohup`, a service manager) passed that on to every agent.
_DEFAULTED = tuple(s for s in signal.valid_signals() if s not in {signal.SIGKILL, signal.SIGSTOP})
RESCAN = 0.02
_USAGE = 2
NOT_STARTED = 127
_PARENT_CHECK = 1.0  # seconds between checks that a ``--parent`` is still there


def main(argv: list[str]) -> int:
    """Run the command in *argv* (after ``--``) under this shim; return the shim's exit code."""
    try:
        record, grace, parent, command = _parse(argv)
    except ValueError as exc:
        sys.stderr.write(f"swarm shim: {exc}\n")
        return _USAGE
    if record is None:
        return _serve(grace)
    waited, base = prepare(record)
    return supervise(record, grace, command, posix.environ, waited, base, parent=parent)


def _serve(grace: float) -> int:
    """Run the shim server: a module of its own, which no shim of one command loads."""
    # Imported as the shim was: by its directory when launched, from the package otherwise
    # (and for type checks, which take TYPE_CHECKING as true).
    if TYPE_CHECKING or __package__:
        from worktree_swarm.infra import shim_server_mode  # noqa: PLC0415
    else:
        import shim_server_mode  # noqa: PLC0415
    return shim_server_mode.serve(grace)


def prepare(record: str) -> tuple[set[int], dict[str, object]]:
    """Become a subreaper, block the signals waited for, write the first record."""
    if not become_subreaper():
        sys.stderr.write("swarm shim: no child subreaper on this platform\n")
    waited = {signal.SIGCHLD, *_STOP_SIGNALS}
    # Blocked and taken with sigtimedwait: no handler runs in the middle of a record write.
    signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    base: dict[str, object] = {
        "version": 1,
        "pid": posix.getpid(),
        "start_ticks": start_ticks(posix.getpid()),
        "started_at": time.time(),
    }
    write_record(record, {**base, "exit_code": None, "ended_at": None})
    return waited, base


def supervise(
    record: str,
    grace: float,
    command: list[str] | list[bytes],
    env: dict[bytes, bytes],
    waited: set[int],
    base: dict[str, object],
    ready: int | None = None,
    parent: int | None = None,
) -> int:
    """Start *command*, wait for it, record how it ended, kill what it left; the exit code.

    *ready* (a socket to the server) is closed once the command has started or failed to; the
    command is stopped when process *parent* is no longer the shim's parent.
    """
    try:
        child = posix.posix_spawnp(
            command[0],
            command,
            env,
            setsigmask=(),
            setsigdef=_DEFAULTED,
        )
    except OSError as exc:
        write_record(record, {**base, "exit_code": NOT_STARTED, "ended_at": time.time()})
        if ready is not None:  # the server's manager raises the error, as Popen would
            tell(ready, failure(exc))
            return NOT_STARTED
        name = command[0] if isinstance(command[0], str) else fsdecode(command[0])
        sys.stderr.write(f"swarm shim: cannot start {name!r}: {exc.strerror or exc}\n")
        return NOT_STARTED
    tell(ready, b"started")
    status = _wait_for(child, waited, parent)
    if status is None:  # asked to stop
        status = _kill_all(child, grace)
        write_record(record, {**_ended(base, status, stopped=True), "cleaned": True})
    elif not _has_children():  # nothing left running: nothing to kill
        write_record(record, {**_ended(base, status, stopped=False), "cleaned": True})
    else:
        # Written before the leftovers are killed: this is what the command itself did; then
        # again once they are, so that a shim killed in its grace leaves them to the manager.
        ended = _ended(base, status, stopped=False)
        write_record(record, ended)
        _kill_all(child, grace)
        write_record(record, {**ended, "cleaned": True})
    code = exit_code(status)
    return code if code >= 0 else 128 - code


def failure(exc: OSError) -> bytes:
    """Why a command did not start, for the server's reply: errno, then its text."""
    return f"{exc.errno or 0} {exc.strerror or exc}".encode()


def tell(ready: int | None, what: bytes) -> None:
    """Tell the server (if any) how the start went, and let go of its socket."""
    if ready is None:
        return
    try:  # noqa: SIM105 - contextlib costs start-up time
        posix.write(ready, what)
    except OSError:
        pass  # the server is gone: the manager reads the record
    posix.close(ready)


def fsdecode(name: bytes) -> str:
    """*name* as the str that os.fsdecode would give."""
    return name.decode(sys.getfilesystemencoding(), sys.getfilesystemencodeerrors())


def _wait_for(child: int, waited: set[int], parent: int | None) -> int | None:
    """*child*'s wait status once it exits, or None when a stop signal comes first.

    Or when *parent* (if given) is no longer the shim's parent: it died, the shim was
    re-parented.
    """
    while True:
        if parent is None:
            info = signal.sigwaitinfo(waited)
        else:
            info = signal.sigtimedwait(waited, _PARENT_CHECK)
        if info is not None and info.si_signo != signal.SIGCHLD:
            if _in_tree(info.si_pid):  # the command's own `kill 0` (`trap 'kill 0' EXIT`)
                continue
            return None
        status = None if info is None else _reap(child)
        if status is not None:
            return status
        if parent is not None and posix.getppid() != parent:
            return None


def _in_tree(pid: int) -> bool:
    """Whether *pid* is one of the shim's descendants (a signal from it is no stop request).

    A process of the command's that signals its process group (the shim's) reaches the shim
    too. The command itself is still there to look at: the shim has not reaped it yet.
    """
    me = posix.getpid()
    for _ in range(MAX_DEPTH):
        fields = stat_fields(pid) if pid > 1 else None
        if fields is None:
            return False
        pid = int(fields[1])  # the parent
        if pid == me:
            return True
    return False


MAX_DEPTH = 256  # an ancestry walk's bound (a loop is impossible; a fork bomb is not)


def _parse(argv: list[str]) -> tuple[str | None, float, int | None, list[str]]:
    """The record, grace, parent and command; no record and no command for the server."""
    if [*argv[:2], *argv[3:]] == [MARKER, "--grace", SERVE]:
        return None, float(argv[2]), None, []
    usage = "usage: shim.py --swarm-shim --record FILE --grace SECONDS [--parent PID] -- ARGV..."
    if "--" not in argv:
        raise ValueError(usage)
    split = argv.index("--")
    opts, command = argv[:split], argv[split + 1 :]
    values = dict(zip(opts[1::2], opts[2::2], strict=False)) if opts[:1] == [MARKER] else {}
    if not command or "--record" not in values or "--grace" not in values:
        raise ValueError(usage)
    parent = int(values["--parent"]) if "--parent" in values else None
    return values["--record"], float(values["--grace"]), parent, command


def become_subreaper() -> bool:
    """Make this process a child subreaper (Linux); whether it is one."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        # dlopen(NULL): the program and its libraries, libc's prctl among them.
        prctl = _ctypes.dlsym(_ctypes.dlopen(None), "prctl")  # type: ignore[arg-type]
        # Python ints go as C ints, as through ctypes.CDLL.
        return bool(_ctypes.call_function(prctl, (_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0)
    except (OSError, AttributeError):
        return False


def _reap(child: int) -> int | None:
    """Reap every exited child; the wait status of *child* if it was among them."""
    found = None
    while True:
        try:
            pid, status = posix.waitpid(-1, posix.WNOHANG)
        except ChildProcessError:
            return found
        if pid == 0:
            return found
        if pid == child:
            found = status


def _has_children() -> bool:
    """Whether any process is the shim's child (a subreaper's: every descendant's ancestor)."""
    try:
        posix.waitid(posix.P_ALL, 0, posix.WEXITED | posix.WNOHANG | posix.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def _kill_all(child: int, grace: float) -> int:
    """Kill every descendant (grace, then SIGKILL) until none is left; *child*'s status."""
    deadline = time.monotonic() + grace
    signalled: set[tuple[int, int]] = set()
    status = 0
    child_status: int | None = None
    while True:
        while True:  # reap whatever ended, remembering the command's own status
            try:
                pid, status = posix.waitpid(-1, posix.WNOHANG)
            except ChildProcessError:
                return status if child_status is None else child_status
            if pid == 0:
                break
            if pid == child:
                child_status = status
        late = time.monotonic() >= deadline
        for key in _descendants():
            if late or key not in signalled:
                try:  # noqa: SIM105 - contextlib costs start-up time
                    posix.kill(key[0], signal.SIGKILL if late else signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    pass  # it ended meanwhile
                signalled.add(key)
        signal.sigtimedwait({signal.SIGCHLD}, RESCAN)


def start_ticks(pid: int) -> int | None:
    """The kernel's start time of *pid* (clock ticks since boot): exact, unlike wall time."""
    fields = stat_fields(pid)
    return None if fields is None else int(fields[19])


def stat_fields(pid: int | str) -> list[bytes] | None:
    """Fields of /proc/PID/stat from the state on (index 0), or None if unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:  # noqa: PTH123 - pathlib costs start-up
            stat = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    return fields if len(fields) >= 20 else None  # noqa: PLR2004 - start time is field 22


def _descendants() -> list[tuple[int, int]]:
    """(pid, start time) of every live descendant of this process, from /proc."""
    children: dict[int, list[tuple[int, int]]] = {}
    try:
        names = posix.listdir("/proc")
    except OSError:
        names = []
    for name in names:
        fields = stat_fields(name) if name.isdigit() else None
        if fields is None or fields[0] == b"Z":
            continue
        children.setdefault(int(fields[1]), []).append((int(name), int(fields[19])))
    found: list[tuple[int, int]] = []
    todo = [posix.getpid()]
    while todo:
        for key in children.get(todo.pop(), []):
            found.append(key)
            todo.append(key[0])
    return found


def _ended(base: dict[str, object], status: int, *, stopped: bool) -> dict[str, object]:
    code = exit_code(status)
    return {**base, "exit_code": code, "ended_at": time.time(), "stopped": stopped}


def exit_code(status: int) -> int:
    """Like Popen.returncode: the exit code, or minus the signal that killed it."""
    return posix.waitstatus_to_exitcode(status)


def write_record(path: str, data: dict[str, object]) -> None:
    """Replace the record at *path* with *data*; on failure, say so on stderr and go on."""
    tmp = f"{path}.{posix.getpid()}.tmp"
    try:
        # Made anew, never opened through what is there: a link an agent planted under this
        # name would have the shim write its record into a file outside.
        flags = posix.O_WRONLY | posix.O_CREAT | posix.O_EXCL | posix.O_NOFOLLOW | posix.O_CLOEXEC
        try:
            fd = posix.open(tmp, flags, 0o644)
        except FileExistsError:
            posix.unlink(tmp)  # the link itself, not what it names
            fd = posix.open(tmp, flags, 0o644)
        with open(fd, "w", encoding="utf-8") as f:  # noqa: PTH123
            f.write(_json(data))
        # No fsync: the record has to outlive the manager, not the machine (after a power
        # loss no agent is left running to account for), and fsync would add tens of ms.
        posix.replace(tmp, path)  # a reader sees the old record or the new one
    except OSError as exc:  # a full disk must not stop the shim from cleaning up
        try:  # noqa: SIM105 - the shim imports as little as it can
            posix.unlink(tmp)  # no half-written record left beside the last whole one
        except OSError:
            pass
        try:
            sys.stderr.write(f"swarm shim: cannot write {path}: {exc}\n")
            sys.stderr.flush()
        except OSError:
            pass  # stderr is the log, on that same full disk


def _json(data: dict[str, object]) -> str:
    """JSON for a flat record of numbers, booleans and nulls (keys are plain words)."""
    words = {True: "true", False: "false", None: "null"}
    items = []
    for key, value in data.items():
        # bool before numbers: True == 1, so look booleans and None up by identity.
        text = next((w for v, w in words.items() if value is v), None)
        items.append(f'"{key}": {text if text is not None else repr(value)}')
    return "{" + ", ".join(items) + "}"


def exit_with(code: int) -> None:
    """Exit with the agent's code even when the log can no longer be flushed (a full disk).

    Python itself would exit 120 when flushing stderr fails, and the manager, reading the
    shim's status when the record is missing, would take that for the agent's.
    """
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        pass
    # os._exit where os is loaded anyway (a tool such as coverage patches it to save its data
    # first), else the same function from posix.
    getattr(sys.modules.get("os"), "_exit", posix._exit)(code)  # noqa: SLF001


def run() -> None:
    """Run the shim on this process's arguments and exit with the command's code."""
    exit_with(main(sys.argv[1:]))


if __name__ == "__main__":
    run()
