"""How swarm's own commands (merge, clean) tell a running guard which refs they move.

The writer, before moving anything, creates ``.git/swarm/ref-moves/<pid>-<token>.json``
naming the refs it is about to move and their current values, and keeps that file open. When
done, it writes each ref's new value into the same file and, while a run's manager is alive,
waits for the guard's verdict (``<name>.verdict``). The guard believes a file only if its
writer is alive (same process start time), holds the very file read open itself (by device
and inode; never read through a symlink, nor one with another name), and is not an agent of
the run or a descendant of one, nor any other program swarm started for a task or one such
left behind (:func:`~worktree_swarm.guard.attribution.task_program`); then it leaves the
named refs alone while the writer works and accepts exactly the named moves, ``old`` ->
``new``. Any other move of those refs, and any move named by a file it does not believe, is
judged like every other ref move. A file refused because an agent's process wrote it (its
`swarm merge` on your checkout) is still read until it is done: the moves it names, found once
it is done and exactly as it says, are blamed on that agent's task alone
(:meth:`Channel.blame`), not on every agent running meanwhile; a move of a ref it names found
while it works is that task's and everyone's (:meth:`Channel.named`).

A guard that only listens (a `swarm merge`'s, which scans only after each of its programs)
says so with ``<pid>-<token>.listening``, held open while it listens, reads the files while
it is there, and marks each finished one it read with ``<name>.heard-<pid>-<token>``: the
writer also waits for that before it goes, so that its moves are not taken for the merge's
programs'. A listening file whose process is gone is removed; one its process does not hold
open is not waited for.

Under ``--sandbox`` ``.git/swarm`` is read-only to agents, so they cannot write here at all.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import secrets
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from worktree_swarm.git import repo as git
from worktree_swarm.guard.attribution import Agents, task_program
from worktree_swarm.guard.model import RefMove
from worktree_swarm.infra import fs, lock, starts

DIR = "ref-moves"
# A task worktree is named in an announcement like a ref: its key is this and its real path,
# its value the name of its admin dir under `.git/worktrees/` (None: removed).
WORKTREE = "worktree "
_VERDICT = ".verdict"
_LISTENING = ".listening"
_HEARD = ".heard-"
_WAIT = 30.0  # how long a writer waits for a running guard's verdict
_POLL = 0.05
_SAME_START = 0.01  # seconds: psutil's create_time is rounded
_REPLACED = "replaced"  # an announcement found written anew since it was read


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
        aside = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(aside, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data.encode())
            aside.replace(self.path)
        except BaseException:
            os.close(fd)
            raise
        if self._fd is not None:
            os.close(self._fd)
        self._fd = fd

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


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
            _forget(path)


def abandoned(state_dir: Path) -> list[Path]:
    """The announcements and listening marks left by a process that is gone.

    A killed `swarm merge` or `swarm clean` (or a merge's guard) leaves its files here until a
    run's guard reads them; `swarm doctor` removes them with :func:`forget_abandoned`. Each is
    named by its main file (``.json`` or ``.listening``; else the first file of its name).
    """
    groups: dict[str, list[Path]] = {}
    with contextlib.suppress(FileNotFoundError):
        for path in sorted((state_dir / DIR).iterdir()):
            groups.setdefault(path.name.split(".", 1)[0], []).append(path)
    found = []
    for stem, files in groups.items():
        if not _writer_alive(stem, files):
            main = [p for p in files if p.name.endswith((".json", _LISTENING))]
            found.append((main or files)[0])
    return found


def forget_abandoned(path: Path) -> bool:
    """Remove *path* (from :func:`abandoned`) and every file of its name, if its writer is gone."""
    stem = path.name.split(".", 1)[0]
    files = sorted(path.parent.glob(f"{glob.escape(stem)}.*"))
    if _writer_alive(stem, files):
        return False
    for each in files:
        each.unlink(missing_ok=True)
    return True


def _writer_alive(stem: str, files: Sequence[Path]) -> bool:
    """Whether the process that named its files *stem* (``<pid>-<token>``) still lives."""
    pid_text = stem.split("-", 1)[0]
    if not pid_text.isdigit():
        return True  # not swarm's: left alone
    pid = int(pid_text)
    for path in files:
        if not path.name.endswith((".json", _LISTENING)):
            continue
        try:
            started = float(json.loads(fs.read_file(path))["started"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        try:
            return abs(starts.of(psutil.Process(pid)) - started) <= _SAME_START
        except psutil.NoSuchProcess:
            return False
        except psutil.Error:
            return True
    return psutil.pid_exists(pid)  # only half-written files: no start time to compare


def _forget(path: Path) -> None:
    """Remove the announcement *path* with its verdict and the marks of guards that heard it."""
    path.unlink(missing_ok=True)
    _verdict(path).unlink(missing_ok=True)
    for heard in path.parent.glob(f"{glob.escape(path.name)}{_HEARD}*"):
        heard.unlink(missing_ok=True)


def _await_verdict(path: Path, state_dir: Path) -> None:
    # Not past the run's end: a manager whose guard has made its last scan gives none.
    deadline = time.monotonic() + _WAIT
    while time.monotonic() < deadline and not _verdict(path).exists():
        if not lock.manager_alive(state_dir):
            return
        time.sleep(_POLL)


def _verdict(path: Path) -> Path:
    return path.with_name(path.name + _VERDICT)


def _await_listeners(path: Path) -> None:
    """Wait until each guard listening (alive, not this process) has read *path*."""
    deadline = time.monotonic() + _WAIT
    for listener in sorted(path.parent.glob(f"*{_LISTENING}")):
        heard = path.with_name(f"{path.name}{_HEARD}{listener.name.removesuffix(_LISTENING)}")
        while time.monotonic() < deadline and not heard.exists():
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
        alive = abs(starts.of(process) - started) <= _SAME_START
        real = os.path.realpath(listener)
        if alive:
            return any(os.path.realpath(f.path) == real for f in process.open_files())
    except psutil.NoSuchProcess:
        pass
    except psutil.Error:
        return False
    listener.unlink(missing_ok=True)  # a guard that was killed: nobody listens there
    return False


@dataclass(slots=True, kw_only=True)
class _Refused:
    """An announcement refused because a task's agent (or its descendant) wrote it."""

    owner: str  # that task
    why: str
    pid: int
    started: float
    # ref -> where its next covered move starts: the announced old value, then where the
    # last move blamed on it took the ref.
    at: dict[str, str | None] = field(default_factory=dict)
    new: dict[str, str | None] | None = None  # once done: where the writer says each went

    def take(self, moves: Sequence[RefMove], *, done: bool) -> None:
        """What the file names now: refs announced since, and (*done*) where each went."""
        for ref, old, _ in moves:
            self.at.setdefault(ref, old)
        if done:
            self.new = {ref: new for ref, _, new in moves}

    def covers(self, ref: str, before: str | None, after: str | None) -> bool:
        """Whether *ref*'s move is one the writer named, done: from where it said, to where it said.

        While it works, where a move it makes ends is not known: no move is covered yet.
        """
        if self.new is None or ref not in self.new or ref not in self.at:
            return False
        return self.at[ref] == before and self.new[ref] == after

    @property
    def used_up(self) -> bool:
        """Whether every move it named, done, was blamed (nothing more to cover)."""
        return self.new is not None and all(self.at.get(r) == n for r, n in self.new.items())


def _oid(value: object) -> str | None:
    """A ref's value as an announcement gives it (None: absent, or not a name)."""
    return value if isinstance(value, str) else None


class Channel:
    """The guard's side: which announced moves it believes, and which refs are in motion."""

    def __init__(self, state_dir: Path, agents: Agents, *, answers: bool = True) -> None:
        self._dir = state_dir / DIR
        self._agents = agents
        # A guard that only listens (a merge's, beside a run's) gives no verdicts: a writer
        # that took its verdict for the run's would go before the run's guard read its file.
        self._answers = answers
        self._accepted: dict[str, list[tuple[str | None, str | None]]] = {}
        self._done: set[str] = set()
        self._refused: dict[str, _Refused] = {}  # file name -> an agent's refused announcement
        # Announcements already there when the guard took its baseline: name -> that baseline.
        self._midway: dict[str, Mapping[str, str]] = {}
        self._listener: Path | None = None  # while it listens: the file that says so

    @contextlib.contextmanager
    def listening(self) -> Iterator[None]:
        """While inside, writers wait for this guard to read their finished files too.

        The caller reads them (:meth:`read`) often meanwhile; each one read is marked heard.
        """
        me = psutil.Process()
        self._dir.mkdir(parents=True, exist_ok=True)
        listener = self._dir / f"{me.pid}-{secrets.token_hex(4)}{_LISTENING}"
        # Written aside and renamed over, then held open while it listens: what writers check.
        aside = listener.with_name(listener.name + ".tmp")
        fd = os.open(aside, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps({"pid": me.pid, "started": starts.of(me)}).encode())
            aside.replace(listener)
            self._listener = listener
            yield
        finally:
            os.close(fd)
            aside.unlink(missing_ok=True)
            listener.unlink(missing_ok=True)
            self._listener = None

    def started(self, baseline: Mapping[str, str]) -> None:
        """The guard took *baseline* (call right after reading it): moves under way then.

        A command that had moved a ref before the baseline (a merge between two tasks)
        announced where it started, not where the guard first saw it: its moves are taken
        from the baseline's value instead, the steps before being its own.
        """
        with contextlib.suppress(FileNotFoundError):
            for path in self._dir.iterdir():
                if path.suffix == ".json":
                    self._midway[path.name] = baseline

    def read(self) -> tuple[set[str], list[str]]:
        """Take in the announcements: the refs being moved now, and why any was refused."""
        pending: set[str] = set()
        refused: list[str] = []
        try:
            names = sorted(p for p in self._dir.iterdir() if p.suffix == ".json")
        except FileNotFoundError:
            return pending, refused
        self._forget_answered()
        for path in names:
            if path.name in self._done:
                continue
            found = self._announcement(path, refused)
            if found is None:
                continue
            read, (pid, started, moves, done) = found
            believed, held = self._believed(path, read, pid, started, refused)
            if held is not None:
                self._follow_refused(path, held, read, (pid, started), moves, done=done)
            if not believed:
                continue
            if not done:
                pending |= {ref for ref, _, _ in moves}
                continue
            base = self._midway.pop(path.name, None)
            for ref, old, new in moves:
                start = old if base is None else base.get(ref)  # absent then: None
                self._accepted.setdefault(ref, []).append((start, new))
            self._done.add(path.name)
            self._answer(path, "accepted")
        return pending, refused

    def _forget_answered(self) -> None:
        """Forget the agents' announcements answered whose writers went since: judged by now.

        The writer goes once answered; its moves, made before it finished, were judged by the
        scan that read it finished. Kept, it would cover a move made anew from where it began.
        """
        for name, held in list(self._refused.items()):
            if held.new is not None and not _alive(held.pid, held.started):
                del self._refused[name]

    def _announcement(
        self, path: Path, refused: list[str]
    ) -> tuple[os.stat_result, tuple[int, float, list[RefMove], bool]] | None:
        """The file *path* as read, and what it says (None: nothing to take from it now)."""
        try:
            text, read = _opened(path)
        except fs.NotAFileError:
            self._refuse(path, "it is not a regular file", refused)
            return None
        except OSError:
            return None  # removed meanwhile
        parsed = _parsed(text)
        return None if parsed is None else (read, parsed)  # None: not swarm's

    def _believed(
        self, path: Path, read: os.stat_result, pid: int, started: float, refused: list[str]
    ) -> tuple[bool, _Refused | None]:
        """Whether *path* (the file *read*) is swarm's own; if not, and an agent's, its record.

        A refusal is added to *refused* when first found, and never taken back. A file found
        replaced since it was read (its writer wrote it anew) is neither: read again next time.
        """
        held = self._refused.get(path.name)
        if held is not None:
            return False, held
        why, owner = self._disbelief(path, read, pid, started)
        if why is None:
            return True, None
        if why == _REPLACED:
            return False, None
        if owner is not None:  # whose it is is known: the moves it covers are that task's
            refused.append(f"ignored {path}: {why}")
            held = self._refused[path.name] = _Refused(
                owner=owner, why=why, pid=pid, started=started
            )
            return False, held
        self._refuse(path, why, refused)
        return False, None

    def _refuse(self, path: Path, why: str, refused: list[str]) -> None:
        """Not believe *path* (for *why*), for good: recorded, and its writer answered."""
        refused.append(f"ignored {path}: {why}")
        self._done.add(path.name)
        if why.endswith(" is gone"):  # a command that was killed: nobody waits
            _forget(path)  # by any guard, or each merge's would tell of it again
        else:
            self._answer(path, f"refused: {why}")

    def _follow_refused(
        self,
        path: Path,
        held: _Refused,
        read: os.stat_result,
        writer: tuple[int, float],
        moves: Sequence[RefMove],
        *,
        done: bool,
    ) -> None:
        """Read an agent's refused announcement again: its refs, and where they went once done.

        Taken only from the file its writer holds open now (checked at each read, as at the
        first). Answered only once done, so that its writer stays (and the file with it) until
        this guard has read where its moves went. One whose writer is gone first is forgotten,
        as is one its writer no longer holds: what it moved is judged like any move.
        """
        why, owner = self._disbelief(path, read, held.pid, held.started)
        if why == _REPLACED:
            return  # its writer wrote it anew: read again next time
        if owner != held.owner:
            del self._refused[path.name]
            self._done.add(path.name)
            if not _alive(held.pid, held.started):
                _forget(path)
            return
        if writer == (held.pid, held.started):  # else rewritten by another: not its writer's
            held.take(moves, done=done)
        if done:
            self._done.add(path.name)
            self._answer(path, f"refused: {held.why}")

    def blame(self, moves: Sequence[RefMove]) -> tuple[str, ...]:
        """The tasks whose agents' refused announcements name every one of *moves* (else none).

        Each move must be one its finished announcement covers: from the value it named (or
        where the last move blamed on it went) to the value it says. The moves blamed are used
        up: the next move of those refs starts where they went; an announcement used up is
        forgotten.
        """
        found: list[tuple[str, str, str | None]] = []
        for ref, before, after in moves:
            name = next((n for n, h in self._refused.items() if h.covers(ref, before, after)), None)
            if name is None:
                return ()
            found.append((name, ref, after))
        owners = {self._refused[name].owner for name, _, _ in found}
        for name, ref, after in found:
            if name in self._refused:
                self._refused[name].at[ref] = after
                if self._refused[name].used_up:
                    del self._refused[name]
        return tuple(sorted(owners))

    def named(self, moves: Sequence[RefMove]) -> tuple[str, ...]:
        """The tasks whose agents' refused announcements name a ref of *moves* at all.

        Suspects of those moves beside everyone else: their command moves those refs.
        """
        refs = {ref for ref, _, _ in moves}
        return tuple(sorted({h.owner for h in self._refused.values() if refs & set(h.at)}))

    def _answer(self, path: Path, verdict: str) -> None:
        if self._answers:
            _write_verdict(path, verdict)
        elif self._listener is not None:
            heard = f"{path.name}{_HEARD}{self._listener.name.removesuffix(_LISTENING)}"
            with contextlib.suppress(OSError):
                path.with_name(heard).touch()

    def explains(self, ref: str, before: str | None, after: str | None) -> bool:
        """Whether announced moves take *ref* from *before* to *after*; uses them up if so."""
        return before != after and self._follow(ref, before, after) == after

    def advance(self, ref: str, before: str | None) -> str | None:
        """Where announced moves take *ref* from *before*, as far as they go; uses them up.

        For a ref found moved further than they explain: swarm's own moves happened (its
        commands say what they did), and whatever moved it after them, before the guard
        looked, is what to judge (and undo back to their end).
        """
        return self._follow(ref, before, None, to_end=True)

    def _follow(
        self, ref: str, before: str | None, after: str | None, *, to_end: bool = False
    ) -> str | None:
        """Follow the accepted moves of *ref* from *before* until *after* (or their end).

        Returns where it got: *after* when they reach it (or, *to_end*, the chain's end),
        using up the moves followed; else *before*, using up nothing.
        """
        moves = self._accepted.get(ref, [])
        used: list[int] = []
        at = before
        for _ in range(len(moves)):
            step = next(
                (i for i, (old, _) in enumerate(moves) if old == at and i not in used), None
            )
            if step is None:
                break
            used.append(step)
            at = moves[step][1]
            if at == after and not to_end:
                break
        if used and (to_end or at == after):
            self._accepted[ref] = [m for i, m in enumerate(moves) if i not in used]
            return at
        return before

    def _disbelief(
        self, path: Path, read: os.stat_result, pid: int, started: float
    ) -> tuple[str | None, str | None]:
        """Why the file's writer is not to be believed (None: it is swarm's own command).

        *read*: the file as read, which its writer must hold open itself: the same file (device
        and inode), not one of the same name or path, and under no other name (a hard link to
        a file another process holds). With it, the task whose agent the writer is or descends
        from, if it is an agent's. :data:`_REPLACED`: the file at *path* is another by now.
        """
        if read.st_nlink == 0 or not _still_at(path, read):
            return _REPLACED, None
        if read.st_nlink > 1:
            return "it has another name (a hard link)", None
        try:
            process = psutil.Process(pid)
            if abs(starts.of(process) - started) > _SAME_START:
                return f"its writer (pid {pid}) is gone", None
            if not _holds(process, read):
                # Its writer may have written it anew, and let the file read go, since.
                if not _still_at(path, read):
                    return _REPLACED, None
                return f"its writer (pid {pid}) does not hold it open", None
        except psutil.AccessDenied:
            return f"its writer (pid {pid}) cannot be inspected", None
        except psutil.Error:
            return f"its writer (pid {pid}) is gone", None
        owner = self._agents.owner_of(pid)
        if owner is not None:
            # Its task alone is blamed only for a swarm command's file: another file an agent
            # holds open (its log) can be renamed here and written in its name by a sibling.
            return f"written from task {owner}'s agent", owner if _swarm_command(process) else None
        program = task_program(pid, self._dir.parent)
        if program is not None:
            return f"its writer (pid {pid}) {program}", None
        return None, None


def _swarm_command(process: psutil.Process) -> bool:
    """Whether *process* runs swarm's command line (``swarm ...``, ``python -m worktree_swarm``).

    A script named ``swarm`` counts when it is swarm's entry point: not ``docker swarm``.
    """
    try:
        argv, cwd = process.cmdline(), process.cwd()
    except psutil.Error:
        return False
    if argv[1:3] in (["-m", "worktree_swarm.cli"], ["-m", "worktree_swarm"]):
        return True
    for arg in argv[:2]:
        if Path(arg).name != "swarm":
            continue
        try:  # the installed entry point imports swarm's CLI in its first lines
            with fs.open_file(Path(cwd, arg)) as script:
                if b"worktree_swarm" in script.read(_SCRIPT_HEAD):
                    return True
        except OSError:
            continue
    return False


# What of a script named `swarm` is read to tell swarm's entry point.
_SCRIPT_HEAD = 4096


def _opened(path: Path) -> tuple[bytes, os.stat_result]:
    """The bytes of the announcement *path*, and the file they were read from.

    Never through a symlink, never a named pipe or anything but a regular file
    (:class:`fs.NotAFileError`): what is judged is the file read, not what its name leads to.
    """
    try:
        fh = fs.open_file(path, follow=False)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symlink
            raise fs.NotAFileError(exc.errno, "a symlink", os.fspath(path)) from exc
        raise
    with fh:
        return fh.read(), os.fstat(fh.fileno())


def _still_at(path: Path, read: os.stat_result) -> bool:
    """Whether *path* still names the file *read*."""
    try:
        now = path.lstat()
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (read.st_dev, read.st_ino)


def _holds(process: psutil.Process, read: os.stat_result) -> bool:
    """Whether *process* holds the file *read* open (compared by device and inode).

    Linux: each of its descriptors, as ``/proc`` gives them; elsewhere the files psutil names.
    """
    key = (read.st_dev, read.st_ino)
    fds = Path(f"/proc/{process.pid}/fd")
    if Path("/proc/self/fd").is_dir():
        try:
            entries = os.listdir(fds)  # noqa: PTH208
        except PermissionError as exc:
            raise psutil.AccessDenied(process.pid) from exc
        except OSError as exc:
            raise psutil.NoSuchProcess(process.pid) from exc
        paths = [fds / entry for entry in entries]
    else:
        paths = [Path(f.path) for f in process.open_files()]
    for each in paths:
        with contextlib.suppress(OSError):
            held = each.stat()
            if (held.st_dev, held.st_ino) == key:
                return True
    return False


def _parsed(text: bytes) -> tuple[int, float, list[RefMove], bool] | None:
    """An announcement's writer's pid and start, its moves, whether it is done."""
    try:
        data = json.loads(text)
        pid, started = int(data["pid"]), float(data["started"])
        moves = [(str(m["ref"]), _oid(m.get("old")), _oid(m.get("new"))) for m in data["moves"]]
        return pid, started, moves, bool(data["done"])
    except (ValueError, KeyError, TypeError):
        return None  # not swarm's


def _alive(pid: int, started: float) -> bool:
    """Whether the process *pid* that started at *started* still runs."""
    try:
        return abs(starts.of(psutil.Process(pid)) - started) <= _SAME_START
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True


def _write_verdict(path: Path, text: str) -> None:
    with contextlib.suppress(OSError):
        _verdict(path).write_text(text + "\n")
