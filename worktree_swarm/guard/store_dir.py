"""Where git keeps its objects: the ``objects`` directory moved or replaced, links planted.

An agent can move the store aside and put another in its place, or leave symbolic links
where git keeps objects (``objects`` itself, its directories, its packs). The store is known
by its identity (device, inode), found again wherever it was moved, and put back; a planted
link becomes a directory or file of its own again.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

_FANOUT = re.compile(r"[0-9a-f]{2}")  # a loose object's directory in the store


StoreId = tuple[int, int]  # (device, inode) of the object store's directory


def store_id(common: Path) -> StoreId | None:
    """The identity of *common*'s ``objects`` itself (not followed); None if there is none."""
    try:
        info = (common / "objects").lstat()
    except OSError:
        return None
    return info.st_dev, info.st_ino


def find_store(common: Path, store: StoreId) -> Path | None:
    """The directory in *common* that is the object store *store*, if any.

    Where an agent moved it (``mv objects objects.orig``, or deeper: ``refs/objects.orig``) to
    put another in its place. Found by its inode, which no directory the agent made can claim
    while this one lives: the shallowest first, no symlink followed, nothing below the store
    looked into (a rare look, only once the store at ``objects`` is another).
    """
    level = [common]
    while level:
        below: list[Path] = []
        for folder in level:
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for entry in entries:
                with contextlib.suppress(OSError):
                    if not entry.is_dir(follow_symlinks=False):
                        continue
                    info = entry.stat(follow_symlinks=False)
                    if (info.st_dev, info.st_ino) == store:
                        return Path(entry.path)
                    below.append(Path(entry.path))
        level = below
    return None


def put_store_back(common: Path, store: Path, aside: Path) -> None:
    """Make *store* (found by :func:`find_store`) *common*'s ``objects`` again.

    What is in its place goes to *aside*, after the object files of a directory there (loose
    objects and packs: what git wrote there meanwhile) are hard-linked into *store* where it
    has none of that name. Nothing is deleted, no symlink followed; its ``info/``
    (``alternates``) stays with it.
    """
    objects = common / "objects"
    if objects.is_dir() and not objects.is_symlink():
        _link_objects(objects, store)
    if os.path.lexists(objects):
        objects.rename(aside)
    try:
        store.rename(objects)
    except OSError:
        if os.path.lexists(aside):
            aside.rename(objects)
        raise
    if aside.is_dir() and not aside.is_symlink():  # what git wrote there in between too
        _link_objects(aside, objects)


def _link_objects(source: Path, store: Path) -> None:
    """Hard-link the loose objects and packs of *source* into *store*, keeping its own."""
    for directory in os.scandir(source):
        if not (_FANOUT.fullmatch(directory.name) or directory.name == "pack"):
            continue
        if not directory.is_dir(follow_symlinks=False):
            continue
        target = store / directory.name
        with contextlib.suppress(FileExistsError):
            target.mkdir()
        if target.is_symlink() or not target.is_dir():
            continue  # the guard's check of links there puts it right
        for entry in os.scandir(directory.path):
            if entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileExistsError):
                    os.link(entry.path, target / entry.name, follow_symlinks=False)


def planted_links(common: Path) -> list[Path]:
    """Symbolic links where git keeps objects: ``objects`` itself, its directories, its packs.

    git makes none. An agent's (``objects/pack`` moved into its worktree, a link left in its
    place) has your objects live where `swarm clean` deletes them, and has swarm's own
    put-backs write through it, outside any sandbox.
    """
    objects = common / "objects"
    if objects.is_symlink():
        return [objects]
    found = []
    for top in (objects, objects / "pack"):
        try:
            entries = list(os.scandir(top))
        except OSError:  # none yet, or `objects/pack` itself among the links found
            continue
        found += [Path(entry.path) for entry in entries if entry.is_symlink()]
    return sorted(found)


def unplant(link: Path) -> None:
    """Make the planted *link* what git keeps there: a directory or file of its own again.

    With copies of what its target holds (your objects, and what git wrote through the link
    since): the target may be deleted with the worktree it lies in. A link to nothing goes
    (what it took is put back from the held files).
    """
    aside = link.with_name(f".{link.name}.swarm-unplanted")
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside)
    else:
        aside.unlink(missing_ok=True)
    if link.is_dir():  # follows the link: its target
        shutil.copytree(link, aside, symlinks=True)
        link.unlink()
        aside.rename(link)
    elif link.is_file():
        shutil.copyfile(link, aside)
        aside.chmod(0o444)
        aside.replace(link)
    else:
        link.unlink(missing_ok=True)
