"""The git files' baseline of a run's guard, kept for the manager that resumes the run.

A manager killed while agents run leaves them writing on unwatched: a `core.fsmonitor` or a
hook one planted then would be the resumed guard's baseline, and run with your next `git
status`. The resumed guard compares git's files with this record instead
(:meth:`~worktree_swarm.guard.unwatched_checks.UnwatchedChecks.judge_unwatched_surface`).
Written beside and renamed over (whole or not at all), readable by its owner only: it holds
the bytes of your config. Dropped with the guard's other baselines (``drop_baselines``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from pathlib import Path

from worktree_swarm.guard.snapshot import SURFACE_KEPT as KEPT
from worktree_swarm.guard.surface_entry import Entry, Surface
from worktree_swarm.infra import fs


def save(guard_dir: Path, found: Surface) -> None:
    """Record *found* as the run's git files' baseline (not recorded: the previous stays)."""
    data = {
        label: [entry.kind, base64.b64encode(entry.data).decode("ascii"), entry.bits]
        for label, entry in found.items()
    }
    aside = guard_dir / (KEPT + ".tmp")
    with contextlib.suppress(OSError):
        aside.unlink(missing_ok=True)
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(data, out)
        aside.replace(guard_dir / KEPT)


def load(guard_dir: Path) -> Surface | None:
    """The baseline :func:`save` recorded last, None when there is none (or it is torn)."""
    try:
        data = json.loads(fs.read_text(guard_dir / KEPT))
        return {
            str(label): Entry(kind=str(kind), data=base64.b64decode(text), bits=int(bits))
            for label, (kind, text, bits) in data.items()
        }
    except (OSError, ValueError, TypeError, AttributeError):
        return None
