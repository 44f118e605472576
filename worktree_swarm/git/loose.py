"""Loose objects read without git: what one file holds, checked against the name it is under.

git reads a loose object by its name without checking its content. Read here, a file is
inflated a piece at a time, no further than its header says, and hashed: it is the object it
is named for, or it is not. An object that is what it is named for is the same object however
git finds it (a pack holding it too holds the same bytes), so its type and size are git's.
"""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path
from typing import BinaryIO, NamedTuple

from worktree_swarm.infra import fs

_HEX = frozenset("0123456789abcdef")
_PIECE = 1 << 20  # read and inflated at most this much at a time
_HEADER_MAX = 64  # "<type> <size>\0"
_NO_HEADER = -2


class Object(NamedTuple):
    """A loose object's type and size (of its content, header excluded), as git gives them."""

    kind: str
    size: int


def loose_name(fan_out: str, name: str) -> bool:
    """Whether ``objects/<fan_out>/<name>`` is named as a loose object (SHA-1 or SHA-256)."""
    oid = fan_out + name
    return len(fan_out) == 2 and len(oid) in {40, 64} and set(oid) <= _HEX  # noqa: PLR2004


def verified(path: Path, name: str, *, max_size: int | None = None) -> Object | bool | None:
    """What the loose object file *path* holds when it is the object named *name*.

    False when it holds anything else, or is a named pipe or a device (git would wait on
    it, never find an object there). None when it could not be read (gone, out of file
    descriptors, an I/O error: that tells nothing of the object), or when its header names
    more than *max_size* bytes (not read further). An agent's few kilobytes that inflate to
    gigabytes cost no more memory than a piece.
    """
    try:
        with fs.open_file(path) as data:
            return _inflated(data, name, max_size)
    except fs.NotAFileError:
        return False
    except OSError:
        return None
    except zlib.error:
        return False


def _inflated(data: BinaryIO, name: str, max_size: int | None) -> Object | bool | None:
    """What the loose object file *data* holds when it is *name* (see :func:`verified`)."""
    # git's own object names: SHA-256 in a repository made so, SHA-1 otherwise.
    digest = hashlib.sha256() if len(name) == 64 else hashlib.sha1()  # noqa: PLR2004, S324
    inflate = zlib.decompressobj()
    head, total, seen = b"", -1, 0
    while chunk := data.read(_PIECE):
        while True:
            piece = inflate.decompress(chunk, _PIECE)
            digest.update(piece)
            seen += len(piece)
            if total < 0:
                head += piece[:_HEADER_MAX]
                total = _object_length(head)
                if total == _NO_HEADER or (total < 0 and len(head) >= _HEADER_MAX):
                    return False
                if max_size is not None and total - head.index(b"\0") - 1 > max_size:
                    return None
            if 0 <= total < seen:
                return False  # more than its header says: not what git wrote
            chunk = inflate.unconsumed_tail
            if not chunk and len(piece) < _PIECE:
                break
    digest.update(inflate.flush(_PIECE))
    if not (inflate.eof and not inflate.unused_data and digest.hexdigest() == name):
        return False
    kind, _, size = head[: head.index(b"\0")].partition(b" ")
    return Object(kind=kind.decode("ascii", "replace"), size=int(size))


def _object_length(head: bytes) -> int:
    """The length of the object whose inflated bytes begin with *head*, header included.

    -1 while the header is not whole yet, ``_NO_HEADER`` when it is none.
    """
    end = head.find(b"\0")
    if end < 0:
        return -1
    _, _, size = head[:end].partition(b" ")
    return end + 1 + int(size) if size.isdigit() else _NO_HEADER


def sizes(objects: Path, names: list[str], *, max_size: int) -> dict[str, int]:
    """The sizes of those of *names* that are loose in *objects*, each read and hashed.

    Left out: one not loose there (packed, in another store, no object), not what it is
    named for, or over *max_size* bytes (not inflated and hashed here: git is asked).
    """
    found: dict[str, int] = {}
    for name in dict.fromkeys(names):
        if not loose_name(name[:2], name[2:]):
            continue
        got = verified(objects / name[:2] / name[2:], name, max_size=max_size)
        if isinstance(got, Object):
            found[name] = got.size
    return found
