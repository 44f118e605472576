"""What a branch changed since its base: diff stats, changed paths, files over a size cap."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from worktree_swarm.core.paths import Repo
from worktree_swarm.core.text import path_text
from worktree_swarm.core.units import format_size
from worktree_swarm.git import loose, runner
from worktree_swarm.git.repo import blob_sizes


@dataclass(frozen=True, slots=True, kw_only=True)
class DiffStat:
    """Files changed and lines added/removed between two commits."""

    files: int
    insertions: int
    deletions: int
    # What the changed files hold and their names (blob ids, paths): it differs when an edit
    # leaves the counts as they were (a line rewritten again, a binary file, a rename).
    content: str = dataclasses.field(default="", compare=False)
    # Each file added or changed: its path and its new blob.
    blobs: tuple[tuple[str, str], ...] = dataclasses.field(default=(), compare=False)


def diff_stat(repo: Repo, base: str, tip: str) -> DiffStat:
    """Count files, inserted and deleted lines *tip* changed since *base* (binary files count).

    From their merge base, as `swarm diff` shows and a merge takes: a branch reset behind its
    base changed nothing (it showed the base's own changes undone, and the task was done).
    """
    if base == tip:  # an attempt that committed nothing on an untouched branch
        return DiffStat(files=0, insertions=0, deletions=0)
    out = runner.run_names(  # its paths as file names: they are looked at on disk
        repo.root,
        *("diff", "--raw", "--no-abbrev", "--numstat", "-z"),
        *("--end-of-options", f"{base}...{tip}", "--"),
    ).stdout
    fields = out.split("\0")
    files = insertions = deletions = 0
    content: list[str] = []
    blobs: dict[str, str] = {}  # each changed path's new blob
    changed: list[tuple[str, str]] = []
    i = 0
    while i < len(fields):
        field = fields[i]
        i += 1
        if not field:
            continue
        if field.startswith(":"):  # raw: ":modes ids status" then the path (two for R and C)
            meta = field.split()
            named = 2 if meta[4][:1] in {"R", "C"} else 1
            content.append("\0".join([meta[3], *fields[i : i + named]]))  # a rename changes it
            blobs[fields[i + named - 1]] = meta[3]
            i += named
            continue
        added, deleted, path = field.split("\t", 2)
        if not path:
            # A rename/copy: the stat line is followed by two NUL-terminated paths.
            path = fields[i + 1]
            i += 2
        files += 1
        # Binary files show "-" instead of line counts.
        insertions += int(added) if added != "-" else 0
        deletions += int(deleted) if deleted != "-" else 0
        if blobs.get(path, "0").strip("0"):  # not a deletion
            changed.append((path, blobs[path]))
    return DiffStat(
        files=files,
        insertions=insertions,
        deletions=deletions,
        content=" ".join(content),
        blobs=tuple(changed),
    )


def over_size(repo: Repo, diff: DiffStat, limit: int) -> list[tuple[str, int]]:
    """The files *diff* added or changed whose new content is over *limit* bytes, sized.

    Every one is sized: a `diff` attribute makes a file text to the diff, however big. A
    loose blob (a checkpoint's new files) is read and hashed, no git process; git sizes the
    rest (packed, or too big to hash here), in one process.
    """
    names = [blob for _, blob in diff.blobs]
    known = loose.sizes(repo.common_dir / "objects", names, max_size=_HASHED_MAX)
    asked = [blob for blob in dict.fromkeys(names) if blob not in known]
    known.update(zip(asked, blob_sizes(repo.root, asked), strict=True))
    return [(path, known[blob]) for path, blob in diff.blobs if known[blob] > limit]


# The biggest loose blob sized by reading and hashing it here: past it, git reads its size
# from its header alone.
_HASHED_MAX = 1 << 20


def over_size_reason(over: Sequence[tuple[str, int]], limit: int) -> str:
    """Why a task whose branch holds the files *over* (path, size) its cap *limit* failed."""
    named = ", ".join(f"{path_text(path)} ({format_size(size)})" for path, size in over)
    return (
        f"its branch holds files over max_file ({format_size(limit)}) its agent committed or "
        f"staged itself: {named}; GitHub refuses a push holding a file over 100 MiB"
    )


def changed_paths(repo: Repo, base: str, tip: str) -> list[str]:
    """The paths that differ from *base* to *tip* (new names of renames), as file names."""
    args = ("diff", "--name-only", "-z", "--end-of-options", base, tip, "--")
    return [p for p in runner.run_names(repo.root, *args).stdout.split("\0") if p]
