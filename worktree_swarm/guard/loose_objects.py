"""Loose objects judged by their bytes: does the file hash to the object it is named for.

git reads a loose object by its name without checking its content, and never writes an object
it finds it has: a file planted under an object's name is what your git reads for it. Each
file is inflated a piece at a time, no further than its header says, so an agent's small file
that inflates to gigabytes costs no more memory than a piece.
"""

from __future__ import annotations

import os
from collections.abc import Set as AbstractSet
from pathlib import Path

from worktree_swarm.git import loose
from worktree_swarm.git.loose import loose_name as loose_name  # noqa: PLC0414 - re-exported


def forged_loose(
    common: Path,
    seen: set[str],
    *,
    held: AbstractSet[str],
    named: AbstractSet[str] = frozenset(),
    listing: bool = False,
    unlisted: list[str] | None = None,
) -> tuple[list[Path], set[str]]:
    """The loose objects made since the hold whose bytes do not hash to their name.

    Read: those of *named* (the store's change test saw their file made, renamed onto or
    written since last time: read even if in *seen*, for another file may hold a known name
    now) and, with *listing*, every loose object not in *seen*. *seen*: the names known good,
    each one found good added (an object is read once while its file stays); *held*: the held
    names, never read here (:func:`.held_files.written_over` compares those). git never
    writes an object it finds it has: one planted under the name of an object you have not
    made yet (the empty blob) would be what your next commit of that content records. Returns
    the forged ones and the names that could not be read now (to read next time); a
    directory that cannot be listed now is added to *unlisted* (if given), the others read.
    """
    objects = common / "objects"
    wanted = set(named) | (_listed(objects, seen, unlisted) if listing else set())
    found, unread = [], set()
    for oid in sorted(wanted - held):
        path = objects / oid[:2] / oid[2:]
        good = hashes_to(path, oid)
        if good:
            seen.add(oid)
        elif good is False:
            found.append(path)
        elif not _gone(path):  # unreadable now (out of fds, its directory unsearchable)
            unread.add(oid)
    return found, unread


def _listed(objects: Path, seen: set[str], unlisted: list[str] | None) -> set[str]:
    """The loose objects of *objects* not in *seen*.

    A directory that cannot be listed now is added to *unlisted*, the others listed.
    """
    found: set[str] = set()
    for directory in os.scandir(objects):
        if len(directory.name) != 2 or not directory.is_dir(follow_symlinks=False):  # noqa: PLR2004
            continue
        try:
            names = os.listdir(directory.path)  # noqa: PTH208 - names only
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as error:
            if unlisted is not None:
                unlisted.append(f"objects/{directory.name} ({error.strerror or error})")
            continue
        found.update(
            directory.name + name
            for name in names
            if directory.name + name not in seen and loose_name(directory.name, name)
        )
    return found


def _gone(path: Path) -> bool:
    """Whether *path* is known to be gone (not merely out of reach now)."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False
    return False


def hashes_to(path: Path, name: str) -> bool | None:
    """Whether the loose object file *path* holds the object named *name*.

    Read and inflated a piece at a time, and no further than the size its header gives: an
    agent's few kilobytes that inflate to gigabytes cost no more memory than a piece. None
    when it could not be read (gone, out of file descriptors, an I/O error): that tells
    nothing of the object, which is looked at again next time. False for a named pipe or a
    device: git would wait on it (or read it without end), never find an object there.
    """
    found = loose.verified(path, name)
    return found if found is None or found is False else True
