"""Deleting a directory tree, including the parts a tool made read-only; breaking a hard link.

Go's module cache, a ``chmod -R a-w`` in a test suite, an unpacked archive: a directory
without write (or read, or search) permission for its owner makes a plain ``rm -r`` fail
for anyone but root, and a worktree that cannot be deleted is left behind by every
``swarm clean``. Symlinks are removed, never followed.
"""

from __future__ import annotations

import contextlib
import errno
import filecmp
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO, TextIO

_OWNER_ALL = stat.S_IRWXU


def user_folder() -> Path | None:
    """The folder of this user's that every swarm process of this boot shares; None if unusable.

    Another user's folder (or a link to one) is refused: what it holds could be of that user's
    choosing.
    """
    folder = _kept_in() / f"worktree-swarm-{os.getuid()}"
    with contextlib.suppress(OSError):
        folder.mkdir(mode=0o700)
    try:
        info = folder.lstat()
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        return None
    return folder


def _kept_in() -> Path:
    """Memory that lasts until the machine stops (/dev/shm), else the temporary folder.

    Not /tmp where there is /dev/shm: cleaners delete files there by age (systemd-tmpfiles:
    10 days), and a boot time kept anew after a step of the clock would differ from the one a
    running manager read.
    """
    shm = Path("/dev/shm")  # noqa: S108 - a folder of our own in it, checked by user_folder
    return shm if shm.is_dir() else Path(tempfile.gettempdir())


def remove_tree(path: Path | str) -> None:
    """Delete the directory *path* and everything under it; raise OSError when that fails."""
    try:
        shutil.rmtree(path)
    except PermissionError:
        make_removable(path)
        shutil.rmtree(path)


def make_removable(top: Path | str) -> None:
    """Give the owner read, write and search permission on every directory under *top*.

    *top* included; symlinks are left as they are. Only what lacks a permission is changed.
    """
    if not _open_up(Path(top)):
        return
    for dirpath, dirnames, _ in os.walk(top):
        for name in list(dirnames):
            if not _open_up(Path(dirpath, name)):
                dirnames.remove(name)  # a symlink: what it points at is not ours


def umask() -> int:
    """The umask of this process, read without changing it where Linux tells it (``/proc``).

    Setting it to read it back would give files another thread creates meanwhile the wrong
    mode; that is the fallback elsewhere.
    """
    with contextlib.suppress(OSError, ValueError):
        for line in read_text(Path("/proc/self/status")).splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def set_mode(path: Path | str, change: Callable[[int], int], *, dirs: bool = False) -> bool:
    """Set the permission bits of the file (*dirs*: or directory) *path* to ``change(bits)``.

    Never through a symbolic link, and only on what was looked at: the name is opened once
    (``O_PATH | O_NOFOLLOW``), its type checked on that descriptor, and the bits set through
    it, so one swapped for a link meanwhile (to a key of yours) is not changed. False when
    *path* is no such file (or gone).
    """
    try:
        fd = os.open(path, _NAME_ONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return _chmod_named(fd, change, dirs=dirs)
    except OSError:
        return False
    finally:
        os.close(fd)


def _chmod_named(fd: int, change: Callable[[int], int], *, dirs: bool = False) -> bool:
    """Set the bits of the file (*dirs*: or directory) *fd* names to ``change(bits)``.

    False, unchanged, for anything else. Through the descriptor, never a name: a name can be
    swapped for a link meanwhile.
    """
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISREG(mode) or (dirs and stat.S_ISDIR(mode))):
        return False
    bits = change(stat.S_IMODE(mode))
    if _NAME_ONLY == os.O_RDONLY | os.O_NONBLOCK:
        os.fchmod(fd, bits)
    else:  # the file the descriptor names, not a link: the kernel's own link to it
        Path(f"/proc/self/fd/{fd}").chmod(bits)
    return True


def sealed(path: Path | str) -> bool:
    """Whether *path* is a directory this process may not list or enter (a ``chmod 0``).

    Also when a directory above it keeps it from being looked at: it is there, unreadable.
    """
    try:
        info = Path(path).stat()
    except PermissionError:
        return True
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and not os.access(path, os.R_OK | os.X_OK)


def _open_up(path: Path) -> bool:
    """Open the directory *path* to its owner; False when it is not one (or a symlink)."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(info.st_mode):
        return False
    if info.st_mode & _OWNER_ALL != _OWNER_ALL:
        path.chmod(stat.S_IMODE(info.st_mode) | _OWNER_ALL)
    return True


def break_link(path: Path) -> None:
    """Give the file *path* an inode of its own, with the same bytes and permission bits.

    What git writes in place through *path* then no longer reaches its other names (an object
    file an agent linked it to), and nothing of yours is lost (a backup made with `cp -al`
    links every file of a repository). Written aside in the same directory and renamed over.
    """
    info = path.lstat()
    fd, aside = tempfile.mkstemp(dir=path.parent, prefix=".swarm-unlink-", suffix=".lock")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(path.read_bytes())
        os.chmod(aside, stat.S_IMODE(info.st_mode))  # noqa: PTH101 - a str path from mkstemp
        os.replace(aside, path)  # noqa: PTH105
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(aside)  # noqa: PTH108
        raise


class NotAFileError(OSError):
    """A path read as a file holds something else: a named pipe, a device, a socket."""


def open_file(path: Path | str, *, follow: bool = True) -> BinaryIO:
    """Open *path* for reading bytes; NotAFileError unless it is a regular file.

    Opening a named pipe waits until something opens its other end: one planted where swarm
    reads (a worktree's ``.git``, a loose object) would stop swarm for ever. The open does not
    wait (``O_NONBLOCK``), and what it opened is checked before anything is read. Without
    *follow* a symlink is refused too (``ELOOP``): swarm's own files an agent could swap.
    """
    return os.fdopen(_open_regular(path, os.O_RDONLY if follow else _OWN), "rb")


def read_file(path: Path | str) -> bytes:
    """The bytes of the regular file *path* (see :func:`open_file`)."""
    with open_file(path) as fh:
        return fh.read()


def size_of(path: Path | str) -> int:
    """The size of the file at *path*, -1 when it cannot be looked at (missing)."""
    try:
        return os.stat(path).st_size  # noqa: PTH116 - a str or a Path, per poll
    except OSError:
        return -1


NEARLY_FULL = 16 << 20  # free bytes under which a disk is taken for full (see full_margin)


def space(path: Path | str) -> tuple[int, int] | None:
    """The bytes free on the file system of *path* and its size; None when *path* is gone.

    Free for swarm's own user: root may use the reserve.
    """
    try:
        fs = os.statvfs(path)
    except OSError:
        return None
    free = fs.f_bfree if os.geteuid() == 0 else fs.f_bavail
    return free * fs.f_frsize, fs.f_blocks * fs.f_frsize


def full_margin(size: int) -> int:
    """The free bytes under which a disk of *size* bytes is taken for full.

    16 MiB, or a quarter of a disk under 64 MiB: a disk under 16 MiB would be full when empty.
    """
    return min(NEARLY_FULL, size // 4)


def nearly_full(path: Path | str) -> bool:
    """Whether the file system holding *path* has less than its :func:`full_margin` free.

    Unknown: no.
    """
    found = space(path)
    return found is not None and found[0] < full_margin(found[1])


def keep_end(path: Path | str, size: int) -> None:
    """Cut the regular file at *path* to its last *size* bytes, in place.

    No new block is needed: it works on a full disk. Never through a link; a file that cannot
    be opened so is left as it is.
    """
    try:
        with open_rewrite(path, follow=False) as fh:
            total = os.fstat(fh.fileno()).st_size
            if total <= size:
                return
            fh.seek(total - size)
            end = fh.read(size)
            fh.seek(0)
            fh.write(end)
            fh.truncate()
    except OSError:
        return


def read_text(path: Path | str) -> str:
    """:func:`read_file` of *path* decoded as UTF-8 (ValueError when it is not)."""
    return read_file(path).decode("utf-8")


def open_append(path: Path | str) -> TextIO:
    """Open *path* to append UTF-8 text, made if missing; NotAFileError unless a regular file.

    Opening a named pipe to write waits for a reader as opening one to read waits for a
    writer: swarm's logs live where an agent can reach them. Never through a symlink either
    (``ELOOP``): one an agent planted in a log's place would have swarm write outside.
    """
    # A name that is not UTF-8 (os.fsdecode keeps its bytes as surrogates) is written escaped.
    return os.fdopen(_open_regular(path, _APPEND), "a", encoding="utf-8", errors="backslashreplace")


def open_append_bytes(path: Path | str) -> BinaryIO:
    """:func:`open_append` for bytes (a log an agent's output goes to)."""
    return os.fdopen(_open_regular(path, _APPEND), "ab")


def open_rewrite(path: Path | str, *, follow: bool = True) -> BinaryIO:
    """Open the regular file *path* to read and write in place (see :func:`open_file`)."""
    return os.fdopen(_open_regular(path, os.O_RDWR | (0 if follow else os.O_NOFOLLOW)), "r+b")


_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
_OWN = os.O_RDONLY | os.O_NOFOLLOW


def _open_regular(path: Path | str, flags: int) -> int:
    """A descriptor of *path* opened with *flags*, without waiting; NotAFileError unless regular."""
    try:
        fd = os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a named pipe nobody reads: refused rather than waited on
            raise NotAFileError(errno.ENXIO, "not a regular file", os.fspath(path)) from exc
        raise
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode):
            os.set_blocking(fd, True)
            return fd
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
    raise NotAFileError(errno.EINVAL, kind, os.fspath(path))


def identity(path: Path | str) -> tuple[int, int] | None:
    """The (device, inode) of *path*, None when it is missing: what tells a replaced one."""
    try:
        found = Path(path).stat()
    except OSError:
        return None
    return (found.st_dev, found.st_ino)


def same_file(a: Path, b: Path) -> bool:
    """Whether *a* and *b* hold the same: regular files of the same bytes, or symlinks alike.

    Neither is followed. False when either cannot be read.
    """
    try:
        sa, sb = a.lstat(), b.lstat()
        if stat.S_ISLNK(sa.st_mode) and stat.S_ISLNK(sb.st_mode):
            return a.readlink() == b.readlink()
        if not (stat.S_ISREG(sa.st_mode) and stat.S_ISREG(sb.st_mode)):
            return False
        return sa.st_size == sb.st_size and filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False


SETUID_BITS = stat.S_ISUID | stat.S_ISGID
# Linux: a descriptor that names a file without opening it (no read permission needed, a
# named pipe not opened); elsewhere the file is opened to read.
_NAME_ONLY = getattr(os, "O_PATH", os.O_RDONLY | os.O_NONBLOCK)


def drop_setuid(top: Path, rel: str) -> bool:
    """Take the setuid and setgid bits off the regular file *rel* (``a/b``) below *top*.

    Whether it had one. No symlink is followed on the way, in *rel*'s directories neither:
    one could lead out of *top*, to a program of the system's. OSError when it cannot be
    reached so.
    """
    *dirs, name = rel.split("/")
    parent = _open_beneath(top, dirs)
    try:
        fd = os.open(name, _NAME_ONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    finally:
        os.close(parent)
    try:
        if not os.fstat(fd).st_mode & SETUID_BITS:
            return False
        return _chmod_named(fd, lambda bits: bits & ~SETUID_BITS)
    finally:
        os.close(fd)


def special(mode: int) -> bool:
    """Whether *mode* is a named pipe's or a device node's: opening one may wait for ever."""
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode)


def remove_special(top: Path, rel: str, inode: int) -> bool:
    """Remove the named pipe or device node *rel* (``a/b``) below *top*, if still inode *inode*.

    Whether it did. Looked at and removed in its directory, reached with no symlink followed:
    a directory on the way swapped for a link (out of *top*), or the node for another file,
    is left alone. OSError when it cannot be reached so.
    """
    *dirs, name = rel.split("/")
    parent = _open_beneath(top, dirs)
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        if st.st_ino != inode or not special(st.st_mode):
            return False
        os.unlink(name, dir_fd=parent)
        return True
    finally:
        os.close(parent)


def _open_beneath(top: Path, dirs: Sequence[str]) -> int:
    """A descriptor of the directory *dirs* name below *top*, reached without following links."""
    fd = os.open(top, _NAME_ONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in dirs:
            step = os.open(
                part, _NAME_ONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
            )
            os.close(fd)
            fd = step
    except BaseException:
        os.close(fd)
        raise
    return fd
