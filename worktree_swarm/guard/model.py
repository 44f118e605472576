"""What the guard reports: violations, the snapshots it compares and the names of places."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from worktree_swarm.core.text import paths_text

MAIN = "main checkout"
REPOSITORY = "repository"  # the git dir's executable surface: config, hooks, info
WORKTREE_PREFIX = "worktree "  # + path: one of the user's other linked worktrees
_SHOWN = 5  # paths named in a one-line summary
# git names its temporary files with six random characters (`tmp_pack_uOZemM`, `tmp_obj_...`):
# a scan failing to write one (a full disk) fails with another name each time.
_GIT_TEMP = re.compile(r"\b(tmp_[a-z]+_)[A-Za-z0-9]{6}\b")

RefMove = tuple[str, str | None, str | None]  # (ref, before, after); None: absent


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """The observable state of one checkout."""

    head_ref: str | None  # refs/heads/x, or None when HEAD is detached
    head: str | None
    index: str  # digest of the staged entries (mode, object, stage, path, skip-worktree...)
    tree: str  # the files git would see, as a tree object


@dataclass(frozen=True, slots=True, kw_only=True)
class Violation:
    """One write outside an agent's own worktree, and what was done about it."""

    number: int
    where: str  # MAIN, REPOSITORY, WORKTREE_PREFIX + path, or a task id
    paths: tuple[str, ...] = ()
    refs: tuple[RefMove, ...] = ()  # (ref, before, after)
    head: str = ""  # how HEAD moved, when it did
    index_changed: bool = False
    # What became of a task's worktree itself: "was removed", "was moved to <path>".
    worktree: str = ""
    # The worktree root, when the worktree went with it (unmounted, or removed whole).
    root_gone: str = ""
    git_files: tuple[str, ...] = ()  # files of the git dir (config, hooks/..., info/...)
    broken: tuple[str, ...] = ()  # refs that no longer resolve to a complete commit
    kept: tuple[str, ...] = ()  # where the last good tips of *broken* are kept
    set_back: tuple[str, ...] = ()  # broken refs put back on their last complete tip ("x at sha")
    # New directories holding a repository, taken out of a checkout whole: where they are now.
    set_aside: tuple[str, ...] = ()
    suspects: tuple[str, ...] = ()
    patch: str = ""
    # Whether the place is known to be as it was again: put back by the guard that found it,
    # or, for a verdict cut short (below), by the next command, which finishes the put-back.
    restored: bool = False
    # The manager was killed between the guard's finding and the record: the next command
    # (resume, stop, an abandoning run) recorded it from the guard's note.
    cut_short: bool = False
    # The run's last scan could not compare the place (why): what its suspects did there is
    # unknown, and a task is vouched for only when it is known.
    unchecked: str = ""
    # A file of the guard's own deleted, and what was lost with it (worded whole).
    lost: str = ""

    @property
    def task(self) -> str | None:
        """The task whose worktree or branch was touched, if it was a task's."""
        if self.where in {MAIN, REPOSITORY} or self.where.startswith(WORKTREE_PREFIX):
            return None
        return self.where

    def summary(self) -> str:
        """One line naming the place and what changed in it."""
        if self.where == MAIN:
            place = "the main checkout"
        elif self.where.startswith(WORKTREE_PREFIX):
            place = f"your worktree {self.where.removeprefix(WORKTREE_PREFIX)}"
        else:
            place = f"task {self.where}'s worktree"
        if self.unchecked:
            return f"{place} could not be checked at the end ({self.unchecked})"
        parts = []
        if self.paths:
            parts.append(f"files {_shown(self.paths)}")
        if self.head:
            parts.append(self.head)
        if self.index_changed:
            parts.append("its staged changes")
        where = f" in {place}" if self.paths or self.index_changed else ""
        what = "; ".join(parts)
        others = self._others(place)
        return "; ".join(p for p in (what + where, *others) if p) or "its state"

    def _others(self, place: str) -> list[str]:
        """The parts of :meth:`summary` beside the files: worktree, git's files, refs."""
        others = [f"{place} {self.worktree}"] if self.worktree else []
        if self.git_files:
            others.append(f"git's own files {_shown(self.git_files)}")
        others += [f"{short_ref(r)} moved" for r, _, _ in self.refs]
        if self.broken:
            kept = f", last good tip kept as {_shown(self.kept)}" if self.kept else ""
            if self.set_back:
                kept += f", set back to its last complete tip ({_shown(self.set_back)})"
            others.append(
                f"{_shown(tuple(short_ref(r) for r in self.broken))} no longer resolves to a"
                f" complete commit (objects deleted){kept}"
            )
        if self.set_aside:
            others.append(f"the repositories made there moved whole to {_shown(self.set_aside)}")
        if self.lost:
            others.append(self.lost)
        return others

    def reason(self, task_id: str) -> str:
        """The failure reason recorded on a suspect task."""
        return suspect_reason(self.as_dict(), task_id)

    def as_dict(self) -> dict[str, object]:
        """The JSON form recorded as an ``outside_write`` event."""
        return {
            "number": self.number,
            "where": self.where,
            "paths": list(self.paths),
            "refs": [{"ref": r, "before": b, "after": a} for r, b, a in self.refs],
            "head": self.head,
            "index_changed": self.index_changed,
            "worktree": self.worktree,
            "git_files": list(self.git_files),
            "broken": list(self.broken),
            "kept": list(self.kept),
            "set_back": list(self.set_back),
            "set_aside": list(self.set_aside),
            "suspects": list(self.suspects),
            "patch": self.patch,
            "restored": self.restored,
            "cut_short": self.cut_short,
            "unchecked": self.unchecked,
            "lost": self.lost,
            "summary": self.summary(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Violation:
        """The violation recorded as :meth:`as_dict` (its summary is computed again)."""

        def strings(key: str) -> tuple[str, ...]:
            value = data.get(key)
            return tuple(str(v) for v in value) if isinstance(value, list) else ()

        def text(value: object) -> str | None:
            return None if value is None else str(value)

        moves = data.get("refs")
        refs = tuple(
            (str(m.get("ref")), text(m.get("before")), text(m.get("after")))
            for m in (moves if isinstance(moves, list) else [])
            if isinstance(m, dict)
        )
        number = data.get("number")
        return cls(
            number=number if isinstance(number, int) else 0,
            where=str(data.get("where", MAIN)),
            paths=strings("paths"),
            refs=refs,
            head=str(data.get("head", "")),
            index_changed=data.get("index_changed") is True,
            worktree=str(data.get("worktree", "")),
            git_files=strings("git_files"),
            broken=strings("broken"),
            kept=strings("kept"),
            set_back=strings("set_back"),
            set_aside=strings("set_aside"),
            suspects=strings("suspects"),
            patch=str(data.get("patch", "")),
            restored=data.get("restored") is True,
            cut_short=data.get("cut_short") is True,
            unchecked=str(data.get("unchecked", "")),
            lost=str(data.get("lost", "")),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ScanFailure:
    """A scan (or part of one) that could not be completed, and why."""

    job: str  # what failed: "refs", "objects", "repository files", a place
    reason: str  # as :func:`steady_reason` words it
    count: int = 1  # the how-manieth time this job began failing for this reason

    def as_dict(self) -> dict[str, object]:
        """The JSON form recorded as a ``guard_error`` event."""
        return {"job": self.job, "reason": self.reason, "count": self.count}


def steady_reason(reason: str) -> str:
    """*reason* on one line, git's random temporary file names masked (``tmp_pack_XXXXXX``)."""
    return _GIT_TEMP.sub(r"\1XXXXXX", " ".join(reason.split()))


def group_failures(failures: Iterable[Mapping[str, object]]) -> list[dict[str, object]]:
    """Recorded scan failures (``ts``, ``job``, ``reason``), oldest first, one per job and reason.

    Each: ``job``, ``reason``, ``count`` (how many times it began), ``ts`` (the first time) and
    ``last_ts`` (the last time it began).
    """
    first: dict[tuple[str, str], Mapping[str, object]] = {}
    count: Counter[tuple[str, str]] = Counter()
    last: dict[tuple[str, str], object] = {}
    for failure in failures:
        key = (str(failure.get("job")), steady_reason(str(failure.get("reason", ""))))
        first.setdefault(key, failure)
        count[key] += 1
        last[key] = failure.get("ts")
    return [
        {**seen, "reason": key[1], "count": count[key], "last_ts": last[key]}
        for key, seen in first.items()
    ]


_WROTE_OUTSIDE = "wrote outside its worktree"


def blamed(reason: str) -> bool:
    """Whether a task's *reason* already says it wrote outside (a suspect is failed once)."""
    return reason.startswith(_WROTE_OUTSIDE)


def suspect_reason(recorded: Mapping[str, object], task_id: str) -> str:
    """The failure reason of suspect *task_id* of a violation recorded as :meth:`as_dict`."""
    suspects = recorded.get("suspects")
    others = [str(s) for s in suspects if s != task_id] if isinstance(suspects, list) else []
    who = f" (or one of {', '.join(others)}, running at the same time)" if others else ""
    if recorded.get("unchecked"):  # failed to be safe: nothing says it wrote there, or not
        return f"not vouched for{who}: {recorded.get('summary')} while it ran"
    patch = f", patch {recorded['patch']}" if recorded.get("patch") else ""
    return f"{_WROTE_OUTSIDE}{who}: {recorded.get('summary')}; {fate(recorded)}{patch}"


def fate(recorded: Mapping[str, object]) -> str:
    """What became of the place of a violation recorded as :meth:`Violation.as_dict`."""
    if recorded.get("restored"):
        return "restored"
    if recorded.get("cut_short"):  # the put-back may have been done in part, or not at all
        return "its put-back cut short by the manager's end"
    return "left as found"


def short_ref(ref: str) -> str:
    """*ref* as a user names it: ``main`` for refs/heads/main, ``stash`` for refs/stash."""
    return ref.removeprefix("refs/heads/").removeprefix("refs/")


def _shown(paths: tuple[str, ...]) -> str:
    # Quoted as git quotes them: a name an agent chose can hold a newline or an escape.
    return paths_text(paths[:_SHOWN]) + (" ..." if len(paths) > _SHOWN else "")
