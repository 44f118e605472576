"""The guard's record of what it finds: violations, and the scans that failed.

Each violation is numbered, its patch written under the run's directory, and noted (before
its put-back, and until the run says it applied it: see recovery.py); the run takes them
with :meth:`Verdicts.drain`. A part of a scan that fails is recorded with its reason once per
streak (:meth:`Verdicts.drain_failures`) and logged to ``guard.log``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
import traceback
from collections.abc import Iterable, Iterator
from pathlib import Path

from worktree_swarm.core.errors import SwarmError
from worktree_swarm.guard import remotes
from worktree_swarm.guard.model import MAIN, WORKTREE_PREFIX, ScanFailure, Violation, steady_reason
from worktree_swarm.guard.recovery import VERDICTS
from worktree_swarm.guard.state import GuardState
from worktree_swarm.infra import fs
from worktree_swarm.infra.redact import redact

_DENIED = "Permission denied"  # a comparison that failed on a file you cannot read
_REASON_CHARS = 300


class Verdicts(GuardState):
    """Violations numbered, noted and handed over; failed scans recorded."""

    def report(self, violation: Violation) -> Violation:
        """Record an outside write found elsewhere (a Ray node's); handed over by :meth:`drain`."""
        return self._record(violation, patch_text=None)

    def drain(self) -> list[Violation]:
        """Violations found since the last call (for the run loop to record and apply)."""
        with self._new_lock:
            new, self._new = self._new, []
            return new

    def drain_notes(self) -> list[remotes.Note]:
        """Remote-tracking refs put back since the last call (no one's fault: a fetch)."""
        with self._new_lock:
            new, self._remotes.notes = self._remotes.notes, []
            return new

    def drain_failures(self) -> list[ScanFailure]:
        """Scans that failed since the last call (each streak of one reason once)."""
        with self._new_lock:
            new, self._failures = self._failures, []
            return new

    # -- failures ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _job(self, job: str) -> Iterator[None]:
        """Run one part of a scan; a failure is recorded with its reason, the rest goes on.

        One that failed in part (:meth:`_part_failed`) is recorded so too, and so is a bug
        (any other exception, its traceback logged): one part's bug ended the background scans
        for the rest of the run.
        """
        self._partly.pop(job, None)
        try:
            yield
        except (SwarmError, OSError) as exc:
            denied = isinstance(exc, PermissionError) or _DENIED in str(exc)  # before it is cut
            (self._denied.add if denied else self._denied.discard)(job)
            self._failed(job, str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug of swarm's own: told, scans go on
            self._log("".join(traceback.format_exception(exc)).rstrip("\n"))
            self._denied.discard(job)
            self._failed(job, f"internal error: {type(exc).__name__}: {exc}")
        else:
            if job in self._partly:
                self._failed(job, self._partly.pop(job))
                return
            self._denied.discard(job)
            if self._failing.pop(job, None) is not None:
                self._log(f"{job}: scanned again")

    def _part_failed(self, job: str, reason: str) -> None:
        """Part of *job* failed for *reason*, the rest was done: told as its failure."""
        self._partly.setdefault(job, reason)

    def _failed(self, job: str, reason: str) -> None:
        reason = steady_reason(reason)[:_REASON_CHARS]
        with self._new_lock:
            if self._failing.get(job) == reason:
                return  # the same failure again: told once per streak
            self._failing[job] = reason
            count = self._began[job, reason] = self._began.get((job, reason), 0) + 1
            again = f" again ({count} times)" if count > 1 else ""
            self._log(f"{job}: failed{again}: {reason}")
            self._failures.append(ScanFailure(job=job, reason=reason, count=count))

    def _log(self, line: str) -> None:
        with contextlib.suppress(OSError):
            self._dir.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            with fs.open_append(self._dir / "guard.log") as out:
                out.write(f"{stamp} {redact(line)}\n")  # a file's name can be a key

    def _intend(
        self, violation: Violation, patch_text: str | None, *, worktree: Path | None = None
    ) -> Violation:
        """*violation*, numbered and noted before its put-back (a task's *worktree* made again).

        A manager killed before it is recorded has the next command finish the put-back where
        it can, and record and apply it (:func:`cut_verdicts`).
        """
        with self._new_lock:
            found = self._numbered(violation, patch_text)
        self._note(found, recorded=False, worktree=worktree)
        return found

    def _record(self, violation: Violation, *, patch_text: str | None) -> Violation:
        with self._new_lock:  # numbered in the order drain() hands them over
            return self._number(violation, patch_text)

    def _number(self, violation: Violation, patch_text: str | None) -> Violation:
        done = violation if violation.number else self._numbered(violation, patch_text)
        self._log(f"violation {done.number}: {done.summary()}; suspects {list(done.suspects)}")
        self._new.append(done)
        self._note(done, recorded=True)  # before it is on record: applied, if not, next time
        if self._on_record is not None:
            self._on_record(done)
        return done

    def _note(self, violation: Violation, *, recorded: bool, worktree: Path | None = None) -> None:
        """Note *violation* (*recorded*: handed to the run) until the run settles it."""
        if self._on_record is None:
            return
        note = self._noted.get(violation.number)
        if note is None:
            note = self._dir / VERDICTS / f"{time.time_ns()}-{violation.number}.json"
            self._noted[violation.number] = note
        data = {"violation": violation.as_dict(), "recorded": recorded}
        if worktree is not None:
            data["worktree"] = str(worktree)
        with contextlib.suppress(OSError):  # not noted: applied as ever, unless killed
            # Whole or not at all: written aside, then renamed over.
            note.parent.mkdir(parents=True, exist_ok=True)
            aside = note.with_suffix(".tmp")
            aside.write_text(json.dumps(data), encoding="utf-8")
            aside.replace(note)

    def settled(self, violations: Iterable[Violation]) -> None:
        """The run recorded and applied *violations* (failed their suspects): notes dropped."""
        for violation in violations:
            note = self._noted.pop(violation.number, None)
            if note is not None:
                note.unlink(missing_ok=True)

    def _numbered(self, violation: Violation, patch_text: str | None) -> Violation:
        self._count += 1
        patch = ""
        if patch_text:
            if violation.where == MAIN:
                name = "main"
            elif violation.where.startswith(WORKTREE_PREFIX):
                name = "worktree"
            else:
                name = violation.where
            path = self._dir / f"outside-{self._count}-{name}.patch"
            # A credential of yours beside the changed line (a remote's URL) stays out of it.
            # A name that is not UTF-8 (kept as surrogates) is written back as its own bytes.
            path.write_text(redact(patch_text), encoding="utf-8", errors="surrogateescape")
            patch = str(path)
        return dataclasses.replace(violation, number=self._count, patch=patch)
