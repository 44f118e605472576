"""Your checkouts' operations in progress: what a planted one has your next git command do.

The main checkout's are at the top of the common dir, a linked worktree's in its admin dir
(``worktrees/<name>/``). Your next `git rebase --continue` there runs the `exec` lines of a
planted to-do list, `--abort` resets your branch to a planted ORIG_HEAD, a planted MERGE_HEAD
puts a commit into your next commit's history. `shallow` hides history.
"""

from __future__ import annotations

DIRS = ("rebase-merge", "rebase-apply", "sequencer")
FILES = (
    "MERGE_HEAD", "MERGE_MSG", "MERGE_MODE", "MERGE_AUTOSTASH", "AUTO_MERGE", "CHERRY_PICK_HEAD",
    "REVERT_HEAD", "BISECT_START", "BISECT_LOG", "BISECT_TERMS", "BISECT_NAMES",
    "BISECT_EXPECTED_REV", "BISECT_ANCESTORS_OK", "BISECT_HEAD", "shallow",
)  # fmt: skip
_NAMES = frozenset({*DIRS, *FILES})


def linked_admin(label: str) -> str | None:
    """The admin dir (``worktrees/<name>``) whose operation in progress *label* is, if one."""
    parts = label.split("/")
    if len(parts) > 2 and parts[0] == "worktrees" and parts[2] in _NAMES:  # noqa: PLR2004
        return "/".join(parts[:2])
    return None
