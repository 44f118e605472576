"""The local files a task's worktree gets from your checkout, and what they hold.

``copy`` files are copied in (cloned, hard-linked or copied byte by byte, made aside and
renamed in), ``link`` directories symlinked; a checkpoint keeps both off the branch, and the
secrets the ``copy`` files hold are given to the redactor and the leak scan.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import sys
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from worktree_swarm.core.errors import BadInputError, SwarmError
from worktree_swarm.core.paths import real_path
from worktree_swarm.core.run_settings import CopyMode
from worktree_swarm.git import runner
from worktree_swarm.git.repo import in_batches
from worktree_swarm.infra import fs, redact


def copy_into(
    src_root: Path, dst_root: Path, globs: Sequence[str], *, mode: CopyMode = CopyMode.AUTO
) -> list[str]:
    """Copy files matching *globs* from *src_root* into *dst_root*, keeping relative paths.

    Meant for untracked or ignored local files (``.env``, ``config/*.local``): a file that
    already exists in *dst_root* (e.g. a tracked one) is left alone. A matched directory is
    copied recursively. A symlink that stays inside *dst_root* is copied as a symlink; one that
    would lead out of it (``.env`` -> ``/home/me/app/private/.env``) as the file it points to
    (an agent writing through it would write your file), or not at all when that is no regular
    file. Named pipes, sockets and devices are not copied. Modes are kept. *mode* (``copy_mode``):
    ``auto`` clones (reflink) where the file system allows and copies bytes otherwise,
    ``hardlink`` hard-links (the worktree and *src_root* then share one file: an in-place edit
    in either changes both) and falls back to ``auto`` across file systems, ``copy`` always
    copies bytes. Raises BadInputError for a pattern or a destination that escapes its root.
    Returns the copied relative paths (POSIX style, sorted).
    """
    src_root = src_root.absolute()
    dst_real = real_path(dst_root)
    copied: set[str] = set()
    for src, rel in copy_sources(src_root, globs):
        dst = dst_root / rel
        if not real_path(dst.parent).is_relative_to(dst_real):
            raise BadInputError(f"{rel} would be copied outside {dst_root}")
        if os.path.lexists(dst):
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if _copy_file(src, dst, mode=mode, inside=dst_real):
            copied.add(rel.as_posix())
    return sorted(copied)


def check_copy(root: Path, globs: Sequence[str]) -> None:
    """Refuse `copy` files *globs* name below *root* that lead out of it or cannot be read.

    Each task would copy them into its worktree: one you cannot read (a `.env` of mode 0)
    failed every task as an internal error.
    """
    for src, rel in copy_sources(root, globs):
        if src.is_symlink():
            continue  # one inside the repository: copied as the link it is
        try:
            fs.open_file(src).close()
        except PermissionError as exc:
            raise BadInputError(
                f"copy: cannot read {rel} ({exc.strerror}); give yourself read permission or"
                " leave it out of copy"
            ) from exc


def copy_sources(
    root: Path, globs: Sequence[str], *, strict: bool = True
) -> list[tuple[Path, PurePosixPath]]:
    """The files (and symlinks, not followed) that *globs* name below *root*, with relative paths.

    Nothing under ``.git``, and no named pipe, socket or device (opening a pipe waits for a
    writer). Raises BadInputError for a pattern that leaves *root* and, when *strict*, for a
    file reached through a symlinked directory that leads out of it (``cfg/*`` with ``cfg`` a
    link to ``~/.ssh`` would otherwise copy a private key into the worktree), or a symlink
    that does (``cfg/key`` -> ``~/.ssh/id_rsa``: the agent could write through it); without
    *strict* the former are skipped, the latter kept.
    """
    root_real = real_path(root)
    found: dict[PurePosixPath, Path] = {}
    for pattern in globs:
        pure = PurePosixPath(pattern)
        if not pattern or pure.is_absolute() or ".." in pure.parts or "\\" in pattern:
            raise BadInputError(f"copy pattern {pattern!r} must stay inside the repository")
        for match in sorted(root.glob(pattern)):
            for src in _files_under(match):
                rel = PurePosixPath(src.relative_to(root).as_posix())
                if ".git" in rel.parts or not _file_or_link(src):
                    continue
                if not real_path(src.parent).is_relative_to(root_real):
                    if not strict:
                        continue
                    raise BadInputError(
                        f"copy {pattern!r}: {rel} is reached through a symlink that leads "
                        f"outside {root}; copy never follows one out of the repository"
                    )
                if strict and src.is_symlink() and not real_path(src).is_relative_to(root_real):
                    raise BadInputError(
                        f"copy {pattern!r}: {rel} is a symlink that leads outside {root}; copy "
                        "never follows one out of the repository, nor gives an agent one"
                    )
                found.setdefault(rel, src)
    return [(src, rel) for rel, src in sorted(found.items())]


# What copied_secrets reads: a settings file is small; a bigger one is skipped, and so is the
# rest once this much was read (`copy = ["node_modules"]` is a copy, not settings).
_SETTINGS_FILE_LIMIT = 1 << 20
_SETTINGS_TOTAL_LIMIT = 16 << 20


def copied_secrets(root: Path, globs: Sequence[str]) -> list[tuple[str, str]]:
    """The secrets the ``copy`` files *globs* name below *root* hold, as ``(name, value)``.

    Each name says where the value is (``STRIPE_KEY in .env``). An agent can put these values
    on its branch under another file name (``cp .env .env.example``): the redactor and
    ``swarm pr`` look for them wherever they are.
    """
    found: list[tuple[str, str]] = []
    budget = _SETTINGS_TOTAL_LIMIT
    for src, rel in copy_sources(root, globs, strict=False):
        try:  # through a symlink in the repository too: it is copied as what it points to
            info = src.stat()
            if not stat.S_ISREG(info.st_mode) or info.st_size > min(_SETTINGS_FILE_LIMIT, budget):
                continue
            with fs.open_file(src) as fh:
                data = fh.read(_SETTINGS_FILE_LIMIT)
        except OSError:
            continue
        budget -= len(data)
        if b"\0" in data[:8192]:  # binary: not a settings file
            continue
        text = data.decode("utf-8", errors="replace")
        found += [(f"{name} in {rel}", value) for name, value in redact.file_secrets(text)]
    return found


def local_paths(
    worktree: Path, *, link: Sequence[str], copy: Sequence[str], base: str | None
) -> tuple[str, ...]:
    """What a checkpoint of *worktree* keeps off the branch: ``link`` symlinks, ``copy`` files."""
    return (*link, *(copied_paths(worktree, copy, base=base) if base else ()))


def copied_paths(worktree: Path, globs: Sequence[str], *, base: str) -> list[str]:
    """The paths in *worktree* that *globs* match and the commit *base* does not track.

    What ``copy`` brought (or an agent made under those names): the checkpoint keeps them
    out of the branch, like the ``link`` symlinks.
    """
    if not globs:
        return []
    candidates = [rel.as_posix() for _, rel in copy_sources(worktree, globs, strict=False)]
    tracked: set[str] = set()
    for chunk in in_batches(candidates):
        args = ("ls-tree", "-r", "-z", "--name-only", "--full-tree", base, "--", *chunk)
        tracked.update(runner.run_names(worktree, *args).stdout.split("\0"))
    return [c for c in candidates if c not in tracked]


def _file_or_link(path: Path) -> bool:
    try:
        mode = path.lstat().st_mode
    except OSError:
        return False
    return stat.S_ISREG(mode) or stat.S_ISLNK(mode)


def _files_under(path: Path) -> list[Path]:
    """Return *path* itself, or the files and symlinks below it when it is a real directory."""
    if path.is_symlink() or not path.is_dir():
        return [path]
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(path):
        # os.walk lists symlinks to directories as dirnames and does not follow them.
        links = [d for d in dirnames if (Path(dirpath) / d).is_symlink()]
        found += [Path(dirpath) / name for name in sorted(filenames + links)]
    return found


_FICLONE = 0x40049409  # linux/fs.h: share the source's extents (btrfs, XFS, ...).


_PART = ".swarm-copy-"  # a copy being made beside its file, renamed in once whole


def _copy_file(src: Path, dst: Path, *, mode: CopyMode, inside: Path) -> bool:
    """Copy *src* to *dst* (see :func:`copy_into`); False when it is not copied."""
    if src.is_symlink():
        target = src.readlink()
        if not target.is_absolute() and real_path(dst.parent / target).is_relative_to(inside):
            dst.symlink_to(target)
            return True
        src = real_path(src)  # in the repository (copy_sources): copied as what it is
        if not src.is_file():
            return False
    if mode == CopyMode.HARDLINK:
        try:
            os.link(src, dst)
        except OSError:
            pass  # another file system, or links not allowed: fall back to a clone or copy
        else:
            return True
    # Made aside, then renamed in: a copy cut short (the disk full) never stands as the file,
    # and the copy made again once there is room does not skip it.
    # Named after the file (fixed length: any name fits): a killed copy's is replaced by the
    # next copy of that file, not left for an agent's `git add -A`.
    digest = hashlib.sha256(os.fsencode(dst.name)).hexdigest()[:16]
    part = dst.with_name(f"{_PART}{digest}")
    part.unlink(missing_ok=True)
    try:
        if mode == CopyMode.COPY or not _clone(src, part):
            # A byte copy through Python (shutil.copy2 may use copy_file_range, which clones).
            with fs.open_file(src) as fsrc, part.open("xb") as fdst:
                shutil.copyfileobj(fsrc, fdst)
        shutil.copystat(src, part)
        part.rename(dst)
    except fs.NotAFileError:  # a pipe by now, say: never waited on
        part.unlink(missing_ok=True)
        return False
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return True


def _clone(src: Path, dst: Path) -> bool:
    """Make *dst* a copy-on-write clone of *src* where the file system can; False otherwise."""
    if sys.platform == "darwin":
        # APFS: clonefile(2). shutil.copy2 does not clone on macOS (fcopyfile ignores
        # COPYFILE_CLONE), so ask libSystem directly.
        import ctypes  # noqa: PLC0415 - macOS only

        try:
            clonefile = ctypes.CDLL(None, use_errno=True).clonefile
        except (OSError, AttributeError):
            return False
        clonefile.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint32]
        clonefile.restype = ctypes.c_int
        return bool(clonefile(os.fsencode(src), os.fsencode(dst), 0) == 0)
    if sys.platform != "linux":
        return False
    import fcntl  # noqa: PLC0415 - POSIX only

    with fs.open_file(src) as fsrc, dst.open("xb") as fdst:
        try:
            fcntl.ioctl(fdst.fileno(), _FICLONE, fsrc.fileno())
        except OSError:
            pass
        else:
            return True
    dst.unlink()
    return False


def link_into(src_root: Path, dst_root: Path, names: Sequence[str]) -> None:
    """Make ``dst_root/NAME`` a symlink to the directory ``src_root/NAME`` for each name.

    Shares, for example, the main checkout's ``node_modules`` instead of installing it again.
    A symlink already pointing there (a resumed task) is kept. Raises SwarmError (the task
    fails) when the source is missing or not a directory, or when the worktree already has
    something at that path (tracked or copied).
    """
    for name in names:
        src = src_root.absolute() / name
        dst = dst_root / name
        if dst.is_symlink() and dst.readlink() == src:
            continue
        if not src.is_dir():
            raise SwarmError(f"link {name!r}: {src} is missing or not a directory")
        if not real_path(dst.parent).is_relative_to(real_path(dst_root)):
            raise SwarmError(f"link {name!r}: {dst.parent} leads outside the worktree")
        if os.path.lexists(dst):
            raise SwarmError(
                f"link {name!r}: the worktree already has {name} (tracked or copied); "
                "remove it from `link` or from the repository"
            )
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(src, target_is_directory=True)


def unlink_links(src_root: Path, dst_root: Path, names: Sequence[str]) -> None:
    """Remove the symlinks :func:`link_into` made (anything else at those paths stays)."""
    for name in names:
        dst = dst_root / name
        if dst.is_symlink() and dst.readlink() == src_root.absolute() / name:
            dst.unlink()
