"""What changed in the repository's executable surface, and a readable patch of it.

Two readings of the surface (``surface.read``) compared: the labels whose entry differs
(a watched directory's bits only when they let in another local user or shut out the owner),
the changes git makes itself (an empty ``rr-cache``, a linked worktree's ``config.worktree``),
and a unified diff of each change for the record.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from worktree_swarm.core.text import path_text
from worktree_swarm.git import repo as git
from worktree_swarm.guard.surface import RERERE
from worktree_swarm.guard.surface_entry import (
    HARD_LINK,
    LOOSER,
    MODE,
    SHARED_WRITE,
    UNREACHED,
    UNREADABLE,
    Entry,
    Surface,
)

_TEXT_LIMIT = 1 << 20  # larger files are named in the patch, not diffed
_OWNERS = 0o700  # the owner's own bits: without them your git cannot read or write there


def rerere_made(root: Path, before: Surface, after: Surface) -> bool:
    """Whether ``rr-cache`` appeared empty while ``rerere.enabled`` is true for *root*.

    git makes it so on any commit there (a commit runs rerere), an agent's or a resolver's
    as much as yours: your merges record and reuse resolutions already, and it holds none.
    A resolution in it is still a change.
    """
    entry = after.get(RERERE)
    if RERERE in before or entry is None or entry.kind != "dir":
        return False
    if any(label.startswith(f"{RERERE}/") for label in after):
        return False
    out = git.git(root, "config", "--bool", "--get", "rerere.enabled", check=False)
    return out.strip() == "true"


def worktree_made(common: Path, before: Surface, after: Surface, label: str) -> bool:
    """Whether *label* is a linked worktree's ``config.worktree`` that git made or removed.

    `git worktree add` copies the repository's own ``config.worktree`` (your sparse checkout's
    settings) into the admin dir it makes; `git worktree remove` and `prune` delete the admin
    dir with it, and with the git dirs of its submodules (under its ``modules/``). Any other
    appearance, content or removal is not git's doing.
    """
    parts = label.split("/")
    if len(parts) > 3 and parts[0] == "worktrees" and parts[2] == "modules":  # noqa: PLR2004
        return label not in after and not os.path.lexists(common / "worktrees" / parts[1])
    if len(parts) != 3 or parts[0] != "worktrees" or parts[2] != "config.worktree":  # noqa: PLR2004
        return False
    old, new = before.get(label), after.get(label)
    if old is None and new is not None:  # a copy of yours as it was, not as it may be now
        own = before.get("config.worktree")
        return own is not None and own.kind == new.kind == "file" and own.data == new.data
    if new is None and old is not None:
        return not os.path.lexists(common / "worktrees" / parts[1])
    return False


def changed(before: Surface, after: Surface) -> list[str]:
    """The labels whose entry differs, appeared or disappeared.

    Not a hard link of the baseline that git replaced with a file of its own, nor what could
    not be looked at (behind a directory made unsearchable: not known, never taken for gone).
    """
    unlisted = [k for k, v in after.items() if v.kind in {UNREADABLE, UNREACHED}]
    return sorted(
        k
        for k in set(before) | set(after)
        if before.get(k) != after.get(k)
        and UNREACHED not in {_kind(before.get(k)), _kind(after.get(k))}
        and not _unlinked(before.get(k), after.get(k))
        and _differs(before.get(k), after.get(k))
        and not (k not in after and any(k.startswith(f"{u}/") for u in unlisted))
    )


def _differs(old: Entry | None, new: Entry | None) -> bool:
    """Whether a change from *old* to *new* (not equal) counts; a directory's bits: below.

    A watched directory counts when it allows group or other writes it did not (or, new,
    that its parent does not), or denies its owner what it allowed: nothing else of its
    bits matters, and its coming and going are git's.
    """
    if (old is None or old.kind != MODE) and (new is None or new.kind != MODE):
        return True
    if old is None or new is None:
        return new is not None and new.data == LOOSER
    if old.kind != new.kind:
        return True
    return bool(new.bits & ~old.bits & SHARED_WRITE or old.bits & ~new.bits & _OWNERS)


def _kind(entry: Entry | None) -> str | None:
    return None if entry is None else entry.kind


def _unlinked(old: Entry | None, new: Entry | None) -> bool:
    return old is not None and old.kind == HARD_LINK and new is None


def patch(common: Path, before: Surface, after: Surface, labels: list[str]) -> str:
    """A readable record of each change: a unified diff for text, a note for binary data."""
    out = [f"# git files changed in {path_text(str(common))}\n"]
    for label in labels:
        old, new = before.get(label), after.get(label)
        out.append(f"# {path_text(label)}: {_describe(old)} -> {_describe(new)}\n")
        a = _text(old)
        b = _text(new)
        if a is not None and b is not None:
            out += difflib.unified_diff(
                a.splitlines(keepends=True),
                b.splitlines(keepends=True),
                fromfile=path_text(f"a/{label}"),
                tofile=path_text(f"b/{label}"),
            )
            if out and not out[-1].endswith("\n"):
                out.append("\n")
    return "".join(out)


def _describe(entry: Entry | None) -> str:
    if entry is None:
        return "(absent)"
    if entry.kind == "file":
        return f"file {entry.bits:o}, {len(entry.data)} bytes"
    if entry.kind == "link":
        return f"symlink to {path_text(os.fsdecode(entry.data))}"
    if entry.kind == HARD_LINK:
        return "file with another name too (a hard link)"
    if entry.kind == MODE:
        return f"directory {entry.bits:o}"
    if entry.kind == UNREADABLE:
        return f"unreadable, {entry.bits:o}"
    if entry.kind == "other":
        return "not a file (a named pipe, a device or a socket)"
    return entry.kind


def _text(entry: Entry | None) -> str | None:
    if entry is None or entry.kind in {"dir", MODE}:
        return ""
    if entry.kind != "file" or len(entry.data) > _TEXT_LIMIT:
        return None
    try:
        return entry.data.decode()
    except UnicodeDecodeError:
        return None
