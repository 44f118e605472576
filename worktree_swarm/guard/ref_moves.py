"""The writer's side of the channel (:mod:`.channel`): swarm's commands announce the refs they move.

A command announces its refs in ``.git/swarm/ref-moves`` (:func:`moving_refs`), writes where
they went, then waits for a running guard's verdict and for each guard listening to hear it.
What a killed command or guard left there is found and removed (:func:`abandoned`).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import secrets
import stat
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import psutil

from worktree_swarm.git import repo as git
from worktree_swarm.infra import fs, lock, starts

DIR = "ref-moves"
# A task worktree is named in an announcement like a ref: its key is this and its real path,
# its value the name of its admin dir under `.git/worktrees/` (None: removed).
WORKTREE = "worktree "
_VERDICT = ".verdict"
LISTENING = ".listening"
HEARD = ".heard-"
ASIDE = ".tmp"  # a file being written, before it is renamed over its name
# The files a writer makes itself, each naming it: pid and start time.
_WRITERS = (".json", LISTENING, ".json" + ASIDE, LISTENING + ASIDE)
_WAIT = 30.0  # how long a writer waits for a running guard's verdict
_POLL = 0.05
SAME_START = 0.01  # seconds: psutil's create_time is rounded
_LATER = 1.0  # seconds a process must start after a file's last write not to be its writer


def worktree_key(path: Path) -> str:
    """The name by which swarm announces that it removes the worktree *path*."""
    return WORKTREE + os.path.realpath(path)


class RefMoves:
    """The refs one command is moving: call :meth:`moved` for each move it makes."""

    def __init__(self, repo: git.Repo, path: Path, old: dict[str, str | None]) -> None:
        self.repo = repo
        self.path = path
        self._fd: int | None = None
        self._old = old
        self._new: dict[str, str | None] = {}
        self._lock = threading.Lock()  # `swarm clean` removes worktrees from several threads
        me = psutil.Process()
        self._writer = f'"pid": {me.pid}, "started": {json.dumps(starts.of(me))}'
        # Each announced ref's entry, encoded once: `swarm clean` announces every worktree it
        # removes, and each announcement writes them all again.
        self._encoded = {ref: _entry(ref, at) for ref, at in old.items()}

    @property
    def refs(self) -> tuple[str, ...]:
        """The refs announced so far."""
        return tuple(self._old)

    def announce(self, ref: str, *, at: str | None = None) -> str | None:
        """Add *ref*, at its current value, to the refs about to move (before moving it).

        *at*: that value, when the caller has just read it (else git is asked). Returns the
        value recorded.
        """
        with self._lock:
            if ref not in self._old:
                self._old[ref] = at if at is not None else git.rev_parse(self.repo, ref)
                self._encoded[ref] = _entry(ref, self._old[ref])
                self._write(done=False)
            return self._old[ref]

    def announce_all(self, values: dict[str, str]) -> None:
        """:meth:`announce` each ref of *values* at the value given, with one write."""
        with self._lock:
            fresh = {ref: at for ref, at in values.items() if ref not in self._old}
            if fresh:
                self._old.update(fresh)
                self._encoded.update((ref, _entry(ref, at)) for ref, at in fresh.items())
                self._write(done=False)

    def moved(self, ref: str, new: str | None) -> None:
        """*ref* now names *new* (None: deleted) because of this command."""
        with self._lock:
            if ref not in self._old:
                raise ValueError(f"{ref} was not announced")
            self._new[ref] = new

    def _write(self, *, done: bool) -> None:
        moves: Iterable[str] = self._encoded.values()
        if done:
            moves = (
                json.dumps({"ref": r, "old": o, "new": self._new[r]})
                for r, o in self._old.items()
                if r in self._new
            )
        data = f'{{{self._writer}, "moves": [{", ".join(moves)}], "done": {json.dumps(done)}}}'
        # Written aside and renamed over, so that a reader never sees half of it; the writer
        # then holds the new file open, which is what the guard checks.
        aside = self.path.with_name(self.path.name + ASIDE)
        fd = os.open(aside, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            write_all(fd, data.encode())
            aside.replace(self.path)
        except BaseException:
            os.close(fd)
            aside.unlink(missing_ok=True)
            raise
        if self._fd is not None:
            os.close(self._fd)
        self._fd = fd

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of *data* to *fd*: a write cut short (a disk filling) is carried on.

    OSError when the rest cannot be written: half an announcement, read, is taken for nobody's.
    """
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _entry(ref: str, old: str | None) -> str:
    """One announced ref, as the announcement lists it before the moves are done."""
    return json.dumps({"ref": ref, "old": old})


@contextlib.contextmanager
def moving_refs(repo: git.Repo, refs: Sequence[str]) -> Iterator[RefMoves]:
    """Announce that this process moves *refs*; on leaving, tell the guard where they went."""
    where = repo.state_dir / DIR
    where.mkdir(parents=True, exist_ok=True)
    old = {ref: git.rev_parse(repo, ref) for ref in dict.fromkeys(refs)}
    moves = RefMoves(repo, where / f"{os.getpid()}-{secrets.token_hex(4)}.json", old)
    path = moves.path
    failed = False
    try:
        moves._write(done=False)  # noqa: SLF001 - the file's one writer
        yield moves
    except BaseException:
        failed = True
        raise
    finally:
        try:
            told = True
            try:
                moves._write(done=True)  # noqa: SLF001
            except OSError:
                if not failed:
                    raise
                # What failed first is what to tell (a full disk fails both); the note goes
                # below, unfinished, as a killed command's would.
                told = False
            if told and moves.refs and lock.guard_alive(repo.state_dir):
                _await_verdict(path, repo.state_dir)
            if told and moves.refs:
                _await_listeners(path)
        finally:
            moves._close()  # noqa: SLF001
            forget(path)
            _forget_the_killed(repo.state_dir)


def _forget_the_killed(state_dir: Path) -> None:
    """Remove what killed commands left here, unless a run's guard is there to tell of it.

    Done once this command's own moves are told (a merge's guard has read, and told of, what
    it found by then): run again, a killed `swarm merge` or `swarm pr` that starts no guard
    would else leave its note for `swarm doctor` to find.
    """
    if lock.guard_alive(state_dir):
        return  # it reads each one and removes it itself, once told of
    for path in abandoned(state_dir):
        with contextlib.suppress(OSError):
            forget_abandoned(path)


def abandoned(state_dir: Path) -> list[Path]:
    """The announcements and listening marks left by a process that is gone.

    A killed `swarm merge` or `swarm clean` (or a merge's guard) leaves its files here until a
    run's guard reads them, or the next command that announced moves ends while no run's
    guard runs; `swarm doctor` removes them with :func:`forget_abandoned`. Each is
    named by its main file (``.json`` or ``.listening``; else the first file of its name). A
    directory made at such a name is nobody's note: never found, never removed.
    """
    groups: dict[str, list[Path]] = {}
    with contextlib.suppress(FileNotFoundError):
        for path in sorted((state_dir / DIR).iterdir()):
            if not _directory(path):
                groups.setdefault(path.name.split(".", 1)[0], []).append(path)
    found = []
    for stem, files in groups.items():
        if not _writer_alive(stem, files):
            main = [p for p in files if p.name.endswith((".json", LISTENING))]
            found.append((main or files)[0])
    return found


def forget_abandoned(path: Path) -> bool:
    """Remove *path* (from :func:`abandoned`) and every file of its name, if its writer is gone.

    OSError when *path* itself cannot be removed. What else cannot be (a directory made at
    one of those names) is left as it is.
    """
    stem = path.name.split(".", 1)[0]
    files = sorted(path.parent.glob(f"{glob.escape(stem)}.*"))
    if _writer_alive(stem, files):
        return False
    path.unlink(missing_ok=True)
    for each in files:
        with contextlib.suppress(OSError):
            each.unlink(missing_ok=True)
    return True


def _directory(path: Path) -> bool:
    """Whether *path* is a directory (not a symlink to one); False once it is gone."""
    try:
        return stat.S_ISDIR(path.lstat().st_mode)
    except OSError:
        return False


def _writer_alive(stem: str, files: Sequence[Path]) -> bool:
    """Whether the process that named its files *stem* (``<pid>-<token>``) still lives."""
    pid_text = stem.split("-", 1)[0]
    if not pid_text.isdigit():
        return True  # not swarm's: left alone
    pid = int(pid_text)
    for path in sorted(files, key=lambda p: p.name.endswith(ASIDE)):  # renamed ones first
        if not path.name.endswith(_WRITERS):
            continue
        try:
            started = float(json.loads(fs.read_file(path))["started"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        return still_running(pid, started)
    return _started_by_then(pid, files)  # only half-written files: no start time in them


def _started_by_then(pid: int, files: Sequence[Path]) -> bool:
    """Whether process *pid* runs and started before *files* were last written (by it, then).

    One started after (by a second: clocks are coarse) is another that was given the pid.
    """
    started = starts.start_time(pid)
    if started is None:
        return False
    written = []
    for path in files:
        with contextlib.suppress(OSError):
            written.append(path.lstat().st_mtime)
    return not written or starts.as_wall(started) <= max(written) + _LATER


def forget(path: Path) -> None:
    """Remove the announcement *path*, a copy left aside, its verdict and the guards' marks.

    What cannot be removed (a directory made at one of their names) is left as it is.
    """
    heard = path.parent.glob(f"{glob.escape(path.name)}{HEARD}*")
    for each in (path, path.with_name(path.name + ASIDE), verdict_path(path), *heard):
        with contextlib.suppress(OSError):
            each.unlink(missing_ok=True)


def _await_verdict(path: Path, state_dir: Path) -> None:
    # Not past the run's end: a manager whose guard has made its last scan gives none.
    deadline = time.monotonic() + _WAIT
    # Only a file is a verdict: a directory made at its name is none (the guard's write fails).
    while time.monotonic() < deadline and not verdict_path(path).is_file():
        if not lock.manager_alive(state_dir):
            return
        time.sleep(_POLL)


def verdict_path(path: Path) -> Path:
    """Where the verdict on the announcement *path* is written."""
    return path.with_name(path.name + _VERDICT)


def _await_listeners(path: Path) -> None:
    """Wait until each guard listening (alive, not this process) has read *path*."""
    deadline = time.monotonic() + _WAIT
    for listener in sorted(path.parent.glob(f"*{LISTENING}")):
        heard = path.with_name(f"{path.name}{HEARD}{listener.name.removesuffix(LISTENING)}")
        # Only a file is a mark: a directory made at its name is none (the guard's write fails).
        while time.monotonic() < deadline and not heard.is_file():
            if not _listening(listener):
                break
            time.sleep(_POLL)


def _listening(listener: Path) -> bool:
    """Whether the guard that made *listener* still listens (removed if it is gone).

    It must be another process, alive, holding the file open as a merge's guard does: a file
    planted by anyone else is not waited for.
    """
    try:
        data = json.loads(fs.read_file(listener))
        pid, started = int(data["pid"]), float(data["started"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if pid == os.getpid():
        return False
    try:
        process = psutil.Process(pid)
        alive = abs(starts.of(process) - started) <= SAME_START
        real = os.path.realpath(listener)
        if alive:
            return any(os.path.realpath(f.path) == real for f in process.open_files())
    except psutil.NoSuchProcess:
        pass
    except psutil.Error:
        return False
    listener.unlink(missing_ok=True)  # a guard that was killed: nobody listens there
    return False


def still_running(pid: int, started: float) -> bool:
    """Whether the process *pid* that started at *started* still runs."""
    try:
        return abs(starts.of(psutil.Process(pid)) - started) <= SAME_START
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True
