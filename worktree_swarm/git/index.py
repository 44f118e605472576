"""The index file read without git where it is plain, and the index flags and gitlinks.

Entry flags that hide edits from `add` (assume-unchanged, skip-worktree), the cache-tree, and
gitlinks: those checked out as repositories, and staging them at their HEAD as `add` would.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from worktree_swarm.git import runner
from worktree_swarm.git.config_files import git_dir
from worktree_swarm.git.repo import rev_parse_in, run
from worktree_swarm.infra import fs

_GITLINK = re.compile(r"(?:^|\0)160000 ([0-9a-f]+) 0\t([^\0]+)")


def populated_gitlinks(path: Path, env: Mapping[str, str] | None = None) -> list[str]:
    """The gitlinks of *path*'s index (*env*: another index file) checked out as repositories.

    `git add` looks inside each such directory for changes by starting git there, under that
    repository's own config and attributes (its filters run): a submodule's, or one an agent
    made. swarm's `add` leaves them out and records where their HEAD is instead
    (:func:`stage_gitlinks`).
    """
    index = (env or {}).get("GIT_INDEX_FILE")
    if _no_gitlinks(path / index if index else git_dir(path) / "index"):
        return []  # the usual case, told without starting git
    out = runner.run_names(path, "ls-files", "-z", "--stage", env=env).stdout
    return [p for _, p in _GITLINK.findall(out) if (path / p / ".git").exists()]


_GITLINK_MODE = (0o160000).to_bytes(4, "big")
_INDEX_VERSIONS = {(v).to_bytes(4, "big") for v in (2, 3, 4)}


def _no_gitlinks(index: Path) -> bool:
    """Whether the index file *index* surely has no gitlink entry, read without git.

    Index versions 2 to 4 store every entry's mode as four bytes: a file without the gitlink's
    four anywhere has none. A split index (its ``link`` extension) keeps entries in another
    file, so then git is asked, as it is for a file of another format.
    """
    try:
        data = fs.read_file(index)
    except FileNotFoundError:
        return True  # no index yet: no entries
    except OSError:
        return False
    if data[:4] != b"DIRC" or data[4:8] not in _INDEX_VERSIONS:
        return False
    return _GITLINK_MODE not in data and b"link" not in data


def unhide_edits(worktree: Path) -> list[str]:
    """Clear the index flags that hide edits in *worktree* from `add`; the paths cleared.

    ``assume-unchanged`` has git take a file as unchanged whatever it holds, ``skip-worktree``
    too for a file that is there (one a sparse checkout left out is not): an agent's edit
    under either was never committed, its task said it changed nothing, and `swarm clean`
    removed the edit with its worktree.
    """
    assumed, skipped = _hiding(worktree)
    for option, paths in (("--no-assume-unchanged", assumed), ("--no-skip-worktree", skipped)):
        if paths:
            listed = "".join(f"{path}\0" for path in paths)
            runner.run_bytes(worktree, "update-index", option, "-z", "--stdin", check=False,
                             input_bytes=os.fsencode(listed))  # fmt: skip
    return sorted({*assumed, *skipped})


def hides_edits(worktree: Path) -> bool:
    """Whether index flags in *worktree* hide files from `git status` (see :func:`unhide_edits`).

    Its status can be empty while such a file holds an edit: not a worktree with nothing to
    keep until a checkpoint has cleared the flags.
    """
    assumed, skipped = _hiding(worktree)
    return bool(assumed or skipped)


def _hiding(worktree: Path) -> tuple[list[str], list[str]]:
    """The assume-unchanged paths, and the skip-worktree ones that are there, of *worktree*."""
    flagged = _flagged_entries(git_dir(worktree) / "index")
    if flagged is None:  # an index this reader does not know: git lists the flags
        flagged = _flagged_by_git(worktree)
    assumed = [path for path, kind in flagged if kind == "assume"]
    skipped = [p for p, kind in flagged if kind == "skip" and os.path.lexists(worktree / p)]
    return assumed, skipped


_ASSUME_VALID, _EXTENDED, _SKIP_WORKTREE, _NAME_LENGTH = 0x8000, 0x4000, 0x4000, 0xFFF


def _flagged_entries(index: Path) -> list[tuple[str, str]] | None:
    """The assume-unchanged and skip-worktree entries of *index*, read without git.

    None for what this reader does not know: index version 4 (its names are compressed), a
    split index (its ``link`` extension), or entries that do not parse with a SHA-1 or SHA-256
    object id.
    """
    parsed = _parsed_index(index)
    return None if parsed is None else parsed[0]


def index_extras(index: Path) -> bytes | None:
    """What the index file *index* holds that `ls-files --stage -v` does not show, as bytes.

    Its cache-tree (the ``TREE`` extension: `git commit` takes a directory's tree from it, not
    from the entries, so a forged one puts files nobody staged into your next commit) and its
    intent-to-add entries (a commit leaves them out). None for an index this reader does not
    know (:func:`_flagged_entries`).
    """
    parsed = _parsed_index(index)
    if parsed is None:
        return None
    flagged, tree = parsed
    added = b"".join(os.fsencode(name) + b"\0" for name, kind in flagged if kind == "added")
    return added + b"TREE\0" + tree


def _parsed_index(index: Path) -> tuple[list[tuple[str, str]], bytes] | None:
    """The flagged entries of *index* and its cache-tree's bytes, or None (see above)."""
    try:
        data = fs.read_file(index)
    except FileNotFoundError:
        return [], b""
    except OSError:
        return None
    if data[:4] != b"DIRC" or data[4:8] not in _INDEX_VERSIONS - {_INDEX_V4}:
        return None
    count = int.from_bytes(data[8:12], "big")
    for id_length in (20, 32):
        found = _parse_entries(data, count, id_length)
        if found is not None:
            return found
    return None


_INDEX_V4 = (4).to_bytes(4, "big")
_INTENT_TO_ADD = 0x2000


def _parse_entries(
    data: bytes, count: int, id_length: int
) -> tuple[list[tuple[str, str]], bytes] | None:
    """The flagged entries of an index of version 2 or 3 and its cache-tree, or None."""
    found: list[tuple[str, str]] = []
    at = 12
    for _ in range(count):
        name_at = at + 40 + id_length + 2
        flags = int.from_bytes(data[name_at - 2 : name_at], "big")
        extended = 0
        if flags & _EXTENDED:
            extended = int.from_bytes(data[name_at : name_at + 2], "big")
            name_at += 2
        end = data.find(b"\0", name_at)
        length = flags & _NAME_LENGTH
        if end < 0 or (length < _NAME_LENGTH and end - name_at != length):
            return None
        name = os.fsdecode(data[name_at:end])
        if flags & _ASSUME_VALID:
            found.append((name, "assume"))
        if extended & _SKIP_WORKTREE and not name.endswith("/"):  # not a sparse directory
            found.append((name, "skip"))
        if extended & _INTENT_TO_ADD:
            found.append((name, "added"))
        at += (end - at + 8) & ~7
    end = len(data) - id_length  # the extensions, then the file's checksum
    tree = b""
    while at + 8 <= end:
        signature, size = data[at : at + 4], int.from_bytes(data[at + 4 : at + 8], "big")
        if signature == b"link":
            return None
        if signature == b"TREE":
            tree = data[at + 8 : at + 8 + size]
        at += 8 + size
    return (found, tree) if at == end else None


def _flagged_by_git(worktree: Path) -> list[tuple[str, str]]:
    """:func:`_flagged_entries` as `ls-files -v` tells them (a lower-case tag: assumed)."""
    found: list[tuple[str, str]] = []
    for record in runner.run_bytes(worktree, "ls-files", "-v", "-z").stdout.split(b"\0"):
        if record:
            tag, name = chr(record[0]), os.fsdecode(record[2:])
            if tag.islower():
                found.append((name, "assume"))
            if tag.upper() == "S":
                found.append((name, "skip"))
    return found


def stage_gitlinks(path: Path, links: Sequence[str], env: Mapping[str, str] | None = None) -> None:
    """Point each gitlink of *links* in *path*'s index at its repository's HEAD, as `add` would.

    Asked of that repository with `rev-parse`, which reads no file of its checkout and so runs
    none of its filters; one without a commit keeps its entry.
    """
    for link in links:
        head = rev_parse_in(path / link, "HEAD")
        if head is not None:
            run(path, ["update-index", "--cacheinfo", f"160000,{head},{link}"], env=env)
