"""Guard rails: notice when an agent writes outside its own worktree, and undo it.

One module per job: :mod:`.snapshot` (what a checkout and the refs look like),
:mod:`.surface` (git's own files that run code), :mod:`.integrity` (refs resolve to complete
commits), :mod:`.attribution` (which agents may have done it), :mod:`.restore` (putting it
back), :mod:`.channel` (swarm's own commands naming the refs they move), :mod:`.changes`
(which checkouts may have changed, without running git) and :mod:`.watcher` (the guard that
ties them together).
"""

from __future__ import annotations

from worktree_swarm.guard.channel import RefMoves, moving_refs, worktree_key
from worktree_swarm.guard.model import (
    MAIN,
    REPOSITORY,
    RefMove,
    ScanFailure,
    Snapshot,
    Violation,
    suspect_reason,
)
from worktree_swarm.guard.watcher import Guard

__all__ = [
    "MAIN",
    "REPOSITORY",
    "Guard",
    "RefMove",
    "RefMoves",
    "ScanFailure",
    "Snapshot",
    "Violation",
    "moving_refs",
    "suspect_reason",
    "worktree_key",
]
