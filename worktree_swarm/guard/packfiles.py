"""The store's packs, their reverse indexes and the multi-pack-index: found lying, set aside.

git reads a packed object by what the pack's index, its ``.rev`` or the multi-pack-index says,
without checking it: an agent's file there could have your git read another object's bytes
for one of yours. Each is compared with what git itself would write; a lying pack is moved
under the guard's directory (kept, not deleted), a lying multi-pack-index removed.
"""

from __future__ import annotations

import array
import contextlib
import os
import shutil
import stat
import sys
from pathlib import Path

from worktree_swarm.git import runner
from worktree_swarm.guard import graph
from worktree_swarm.infra import fs

DROPPED = "dropped-packs"  # under the guard's directory: the packs found lying, moved there


def packs(common: Path) -> frozenset[str]:
    """The names of the pack indexes in *common*'s object store."""
    try:
        names = os.listdir(common / "objects" / "pack")  # noqa: PTH208 - names only
    except (FileNotFoundError, NotADirectoryError):
        return frozenset()
    return frozenset(name for name in names if name.startswith("pack-") and name.endswith(".idx"))


def replaced_held(idx: Path, held: Path) -> bool:
    """Whether the pack index *idx*, or its pack, is held (*held*) but another file now.

    :func:`.held_files.written_over` compares those with the held files and puts them back.
    """
    for suffix in (".idx", ".pack"):
        with contextlib.suppress(FileNotFoundError):
            if not held.with_suffix(suffix).samefile(idx.with_suffix(suffix)):
                return True
    return False


def lying_pack(root: Path, idx: Path) -> str | None:
    """What is wrong with the pack *idx* indexes ("" if nothing, or if it is gone meanwhile).

    git looks for an object in the packs before the loose files, and reads a packed object
    by what the index says without checking it: an index that names an object of yours for
    bytes of another's has your git read those. ``git verify-pack`` indexes the pack afresh
    and compares (as costly as git's own ``index-pack`` of it). None when it was killed (the
    OOM killer, on a big pack): that tells nothing of the pack. A file of the pack that is not
    a file (a named pipe would hold every git reading it) is wrong without asking git.
    """
    odd = _not_files(idx)
    if odd:
        return f"{', '.join(odd)}: not a file (a named pipe, a device or a socket)"
    done = runner.run(root, "verify-pack", str(idx), check=False)
    # Gone meanwhile (git removes a pack's .pack before its .idx): git no longer reads it.
    if done.returncode == 0 or not idx.exists() or not idx.with_suffix(".pack").exists():
        return ""
    # By a signal (a shell says 128+n), or its `index-pack` was, which git tells.
    if done.returncode < 0 or done.returncode > _SIGNALLED or "died of signal" in done.stderr:
        return None
    return (done.stderr or done.stdout).strip() or f"exit code {done.returncode}"


# The files of a pack that git opens to read it (a `.keep` or `.promisor` is only looked for).
_PACK_READ = (".idx", ".pack", ".rev", ".bitmap", ".mtimes")


def _not_files(idx: Path) -> list[str]:
    """The names of the files of *idx*'s pack that are there but not regular files."""
    odd = []
    for suffix in _PACK_READ:
        with contextlib.suppress(OSError):  # absent (or gone meanwhile): nothing to read
            if not stat.S_ISREG(os.stat(idx.with_suffix(suffix)).st_mode):  # noqa: PTH116
                odd.append(idx.with_suffix(suffix).name)
    return odd


_IDX_V2 = b"\xfftOc\x00\x00\x00\x02"
_HASH_SIZES = {1: 20, 2: 32}  # a reverse index's hash id: SHA-1, SHA-256


def lying_rev(idx: Path) -> str:
    """What is wrong with the reverse index (``.rev``) of the pack *idx* ("": nothing, none).

    git reads the objects of a pack in the order its ``.rev`` gives, without checking it,
    to find where each ends (`git gc`, a push, serving a fetch): entries out of order make
    those fail, calling the pack corrupt. It lists the index's objects by their offsets in
    the pack, so it can only be right one way: read once per pack made or changed.
    """
    try:
        rev, index = fs.read_file(idx.with_suffix(".rev")), fs.read_file(idx)
    except FileNotFoundError:
        return ""
    except fs.NotAFileError:  # a named pipe would hold every git reading it
        return "not a file (a named pipe, a device or a socket)"
    if index[:8] != _IDX_V2:
        return ""  # a version 1 index: git makes none
    count = int.from_bytes(index[8 + 255 * 4 : 8 + 256 * 4], "big")
    size = _HASH_SIZES.get(int.from_bytes(rev[8:12], "big"), 0)
    if rev[:8] != b"RIDX\x00\x00\x00\x01" or len(rev) != 12 + 4 * count + 2 * size:
        return "not a reverse index of this pack"
    start = 8 + 1024 + count * (size + 4)
    if len(index) < start + 4 * count:  # cut short since git read it: a write to the index,
        return ""  # which the check of packs written to judges (not the reverse index's fault)
    offsets = array.array("I", index[start : start + 4 * count])
    order = array.array("I", rev[12 : 12 + 4 * count])
    if sys.byteorder == "little":
        offsets.byteswap()
        order.byteswap()
    large = index[start + 4 * count :]
    if not _in_offset_order(order, offsets, large, count):
        return "its entries are not the pack's objects in the order of their offsets"
    return ""


def _in_offset_order(
    order: array.array[int], offsets: array.array[int], large: bytes, count: int
) -> bool:
    """Whether *order* lists the positions of the *count* objects by rising pack offset."""

    def offset(position: int) -> int:
        small = offsets[position]
        if small < 1 << 31:
            return small
        at = 8 * (small & 0x7FFFFFFF)
        return int.from_bytes(large[at : at + 8], "big")

    last = -1
    for position in order:
        if position >= count or (now := offset(position)) <= last:
            return False
        last = now
    return True


_SIGNALLED = 128  # git's own failures exit 128 at most


# A multi-pack-index (and the chain of an incremental one): where git looks an object up
# before the packs' own indexes.
MIDX = "objects/pack/multi-pack-index"
_MIDX_CHAIN = "objects/pack/multi-pack-index.d"

# The multi-pack-index files as found: (name, inode, size, modification time) of each.
MidxPrint = graph.Fingerprint


def midx_print(common: Path) -> MidxPrint:
    """The multi-pack-index files of *common*, as their stat data tells them apart."""
    return graph.fingerprint(common, MIDX, _MIDX_CHAIN)


def lying_midx(root: Path) -> str:
    """What ``git multi-pack-index verify`` finds wrong with the multi-pack-index ("": none).

    It compares where the index puts each object with where the packs' own indexes do: one an
    agent wrote could name an object of yours at the offset of another object.
    """
    done = runner.run(root, "multi-pack-index", "verify", check=False)
    if done.returncode == 0:
        return ""
    return (done.stderr or done.stdout).strip() or f"exit code {done.returncode}"


def drop_midx(common: Path) -> None:
    """Remove the multi-pack-index of *common*: git looks objects up in each pack instead."""
    (common / MIDX).unlink(missing_ok=True)
    chain = common / _MIDX_CHAIN
    if chain.is_symlink() or chain.is_file():
        chain.unlink()
    elif chain.is_dir():
        shutil.rmtree(chain)


def drop_pack(idx: Path, aside: Path) -> None:
    """Move the pack of *idx* into *aside*: the index first (git no longer sees it), the rest.

    Kept, not deleted: a `git verify-pack` that failed for want of memory or file descriptors
    says so in no way the guard can trust, and a pack of your own would be lost with it.
    """
    aside.mkdir(parents=True, exist_ok=True)
    for suffix in (".idx", ".pack", ".rev", ".bitmap", ".mtimes", ".keep", ".promisor"):
        with contextlib.suppress(FileNotFoundError):
            shutil.move(idx.with_suffix(suffix), aside / idx.with_suffix(suffix).name)
