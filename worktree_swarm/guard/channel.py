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

This module is the guard's side (:class:`Channel`); the writer's is :mod:`.ref_moves`, and an
announcement read with its writer checked, :mod:`.announcements`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from worktree_swarm.guard.announcements import (
    holds,
    opened,
    parse_announcement,
    still_at,
    swarm_command,
)
from worktree_swarm.guard.attribution import Agents, task_program
from worktree_swarm.guard.model import RefMove
from worktree_swarm.guard.ref_moves import (
    ASIDE,
    DIR,
    HEARD,
    LISTENING,
    SAME_START,
    forget,
    still_running,
    verdict_path,
    write_all,
)
from worktree_swarm.infra import fs, starts

_REPLACED = "replaced"  # an announcement found written anew since it was read


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
        listener = self._dir / f"{me.pid}-{secrets.token_hex(4)}{LISTENING}"
        # Written aside and renamed over, then held open while it listens: what writers check.
        aside = listener.with_name(listener.name + ASIDE)
        fd = os.open(aside, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            write_all(fd, json.dumps({"pid": me.pid, "started": starts.of(me)}).encode())
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
            if held.new is not None and not still_running(held.pid, held.started):
                del self._refused[name]

    def _announcement(
        self, path: Path, refused: list[str]
    ) -> tuple[os.stat_result, tuple[int, float, list[RefMove], bool]] | None:
        """The file *path* as read, and what it says (None: nothing to take from it now)."""
        try:
            text, read = opened(path)
        except fs.NotAFileError:
            self._refuse(path, "it is not a regular file", refused)
            return None
        except OSError:
            return None  # removed meanwhile
        parsed = parse_announcement(text)
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
            forget(path)  # by any guard, or each merge's would tell of it again
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
            if not still_running(held.pid, held.started):
                forget(path)
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
            heard = f"{path.name}{HEARD}{self._listener.name.removesuffix(LISTENING)}"
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
        if read.st_nlink == 0 or not still_at(path, read):
            return _REPLACED, None
        if read.st_nlink > 1:
            return "it has another name (a hard link)", None
        try:
            process = psutil.Process(pid)
            if abs(starts.of(process) - started) > SAME_START:
                return f"its writer (pid {pid}) is gone", None
            if not holds(process, read):
                # Its writer may have written it anew, and let the file read go, since.
                if not still_at(path, read):
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
            return f"written from task {owner}'s agent", owner if swarm_command(process) else None
        program = task_program(pid, self._dir.parent)
        if program is not None:
            return f"its writer (pid {pid}) {program}", None
        return None, None


def _write_verdict(path: Path, text: str) -> None:
    with contextlib.suppress(OSError):
        verdict_path(path).write_text(text + "\n")
