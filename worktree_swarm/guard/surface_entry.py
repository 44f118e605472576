"""One entry of the surface (see surface.py): what a path of git's is, by its label.

Its kind, bytes and permission bits, as read from one path (:func:`add`) or a whole directory
(:func:`add_tree`); the label is the path under the git dir, or the absolute path elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from worktree_swarm.guard import known_bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """One file, symlink or directory of the surface."""

    kind: str  # "file", "link" or "dir"
    data: bytes = b""  # a file's bytes, a link's target
    bits: int = 0  # permission bits


Surface = dict[str, Entry]  # label (path under the common dir, or absolute) -> entry
HARD_LINK = "hard link"  # a file of more than one name where git writes: its inode
# A directory watched for its permission bits only (what it holds is git's to change, and
# git removes empty ref directories itself). Its data is LOOSER when it allows group or other
# writes that neither its parent directory nor the umask does: git makes a directory with the
# umask's bits (agents' git has swarm's), or its parent's sharing (`core.sharedRepository`).
MODE = "mode"
LOOSER = b"looser than its parent"
# A file or directory the guard may not read (an agent's `chmod 000`): its bits only.
UNREADABLE = "unreadable"
# A path the guard cannot even look at now (a directory on its way made unsearchable): not
# known, so never a change by itself; its directory's bits are put back, then it is compared.
UNREACHED = "unreached"
SHARED_WRITE = 0o022  # group and other write: another local user's way in


def read_one(common: Path, label: str) -> Entry | None:
    """The entry of *label* as it is now (None when absent)."""
    found: Surface = {}
    add(found, common, path_of(common, label))
    return found.get(label)


def path_of(common: Path, label: str) -> Path:
    """The path that *label* names, relative to *common* unless absolute."""
    return Path(label) if Path(label).is_absolute() else common / label


def label_of(common: str | Path, path: str | Path) -> str:
    """*path* as a label: relative to *common* when under it."""
    # As `path.relative_to(common)` if under it, by string: called for every file of a scan.
    top, name = os.fspath(common), os.fspath(path)
    return name[len(top) + 1 :] if name.startswith(top + "/") else name


def add(found: Surface, common: Path, path: Path) -> None:
    """*path*'s entry into *found*, by its label; nothing when it is absent."""
    label = label_of(common, path)
    try:
        info = path.lstat()
    except (FileNotFoundError, NotADirectoryError):  # a file on its way: nothing there
        return
    except OSError:  # a directory on its way made unsearchable: not known now
        found[label] = Entry(kind=UNREACHED)
        return
    if stat.S_ISLNK(info.st_mode):
        found[label] = Entry(kind="link", data=os.fsencode(path.readlink()))
    elif stat.S_ISDIR(info.st_mode):
        found[label] = Entry(kind="dir", bits=stat.S_IMODE(info.st_mode))
    elif stat.S_ISREG(info.st_mode):
        try:
            data = known_bytes.read(path, info)
        except PermissionError:  # made unreadable: your git fails on it as the guard does
            found[label] = Entry(kind=UNREADABLE, bits=stat.S_IMODE(info.st_mode))
            return
        found[label] = Entry(kind="file", data=data, bits=stat.S_IMODE(info.st_mode))
    else:
        found[label] = Entry(kind="other", bits=stat.S_IMODE(info.st_mode))


# Written by git itself (`update-server-info`, which every repack runs: an agent's commit may
# start `gc --auto`) for clients fetching over dumb HTTP: a list of refs, no program runs from
# it, nor from the temporary file it writes beside it (``info/refs_XXXXXX``) and renames into
# place. (A symlink there is still watched.)
_GENERATED = frozenset({"info/refs"})
_GENERATED_TEMP = len("_XXXXXX")
_GENERATED_NAME = "refs"  # what the names of the files above begin with


def add_tree(found: Surface, common: Path, top: Path) -> None:
    """The directory *top* and all it holds (but git's generated files) into *found*."""
    add(found, common, top)
    if not top.is_dir() or top.is_symlink():
        return

    def unlisted(error: OSError) -> None:  # made unreadable: what it holds is not known
        if isinstance(error, PermissionError) and error.filename is not None:
            path = Path(error.filename)
            with contextlib.suppress(OSError):
                bits = stat.S_IMODE(path.lstat().st_mode)
                found[label_of(common, path)] = Entry(kind=UNREADABLE, bits=bits)

    above = len(os.fspath(top.parent)) + 1
    for dirpath, dirnames, filenames in os.walk(top, onerror=unlisted):
        dirnames.sort()
        here = Path(dirpath)
        for name in [*dirnames, *sorted(filenames)]:
            path = here / name
            # Only a name that starts so can be generated: no label made for the others.
            generated = name.startswith(_GENERATED_NAME) and _generated(f"{dirpath[above:]}/{name}")
            if not (generated and _is_file(path)):
                add(found, common, path)


def _generated(label: str) -> bool:
    """Whether *label* is a file git generates itself, or git's temporary file for one."""
    if label in _GENERATED:
        return True
    base, temp = label[:-_GENERATED_TEMP], label[-_GENERATED_TEMP:]
    return base in _GENERATED and temp.startswith("_") and temp[1:].isalnum()


def _is_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except FileNotFoundError:  # git's temporary file, renamed away since it was listed
        return True
