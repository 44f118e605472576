"""The manifest file `swarm plan` writes (``--out``): refused before the API is paid, then written.

It is written atomically (temp file + link or rename). An existing file is replaced only with
``--force``, and never one that is not a regular file; without it, a file that appeared while
the plan was made is kept.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from worktree_swarm.core.errors import BadInputError


def check_output(path: Path, *, force: bool) -> None:
    """Refuse to overwrite an existing manifest unless *force*: checked before any API call."""
    if path.is_dir():
        raise BadInputError(f"--out {path}: is a directory; name a file")
    if os.path.lexists(path) and not force:  # a dangling symlink too: it would be replaced
        raise BadInputError(f"--out {path}: already exists; pass --force or choose another --out")
    if os.path.lexists(path) and not stat.S_ISREG(path.lstat().st_mode):
        # A symlink (to `/dev/stdout`, anywhere), a named pipe, a device: replacing it with a
        # file is not what --force is for.
        raise BadInputError(f"--out {path}: is not a regular file; --force replaces only a file")
    folder = path.absolute().parent
    if not folder.is_dir():
        raise BadInputError(f"--out {path}: directory {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):  # found out before the API is paid
        raise BadInputError(f"--out {path}: directory {folder} is not writable")


def write_manifest(path: Path, text: str, *, force: bool = False) -> None:
    """Write *text* to *path* atomically (temp file + rename), with the umask's mode.

    Without *force* a file that appeared at *path* meanwhile (another `swarm plan`) is never
    replaced: BadInputError.
    """
    target = path.absolute()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # as a plain `open` would: not mkstemp's 0600
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        if force:
            Path(tmp).replace(target)
        else:
            os.link(tmp, target)  # fails if anything is there now
    except FileExistsError:
        raise BadInputError(
            f"--out {path}: appeared while the plan was made; pass --force or choose another --out"
        ) from None
    finally:
        Path(tmp).unlink(missing_ok=True)
