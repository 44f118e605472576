"""Salted digests of the run's secret values: found again by a manager that lacks them.

The manager that starts (or resumes) a run keeps, in the run's directory (mode 0600), a line
per secret variable of its environment: its name, the value's length in bytes, the narrowest
of a few character classes that holds the value, and a salted SHA-256 of it; never the value.
A manager resumed from a shell without the variable looks for it in what an agent committed
by hashing each substring of that length made of that class (a long run of such characters
only: a word of code rarely is one), as :meth:`Digests.find`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from worktree_swarm.infra import fs

FILE_NAME = "secret-digests"
_LIMIT = 1 << 20  # what is read of the file: a line per secret variable
# Narrowest first: a value is kept under the first class all its bytes are in.
_CLASSES = {
    "hex": rb"[0-9A-Fa-f]",
    "word": rb"[0-9A-Za-z_\-]",
    "token": rb"[0-9A-Za-z_\-+/=.~:]",
    "graph": rb"[!-~]",
    "any": rb"[\x00-\xff]",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Kept:
    """One secret variable's value as kept: never the value itself."""

    name: str
    length: int
    kind: str  # a key of _CLASSES
    digest: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Digests:
    """The digests of a run's file, and its salt."""

    salt: bytes
    kept: tuple[Kept, ...]

    def digest(self, value: bytes) -> bytes:
        """The salted digest of *value*."""
        return hashlib.sha256(self.salt + value).digest()

    def unknown(self, values: Iterable[str]) -> Digests:
        """These digests less those of *values* (the secrets a manager knows itself)."""
        known = {self.digest(v.encode("utf-8", "surrogateescape")) for v in values}
        return Digests(salt=self.salt, kept=tuple(k for k in self.kept if k.digest not in known))

    def find(self, text: str) -> str | None:
        """The name of a variable whose value *text* holds, or None."""
        data = text.encode("utf-8", "surrogateescape")
        wanted: dict[tuple[str, int], dict[bytes, str]] = {}
        for kept in self.kept:
            wanted.setdefault((kept.kind, kept.length), {})[kept.digest] = kept.name
        salted = hashlib.sha256(self.salt)
        for (kind, length), names in wanted.items():
            for run in re.finditer(_CLASSES[kind] + b"{%d,}" % length, data):
                chunk = run.group()
                for at in range(len(chunk) - length + 1):
                    h = salted.copy()
                    h.update(chunk[at : at + length])
                    name = names.get(h.digest())
                    if name is not None:
                        return name
        return None


def load(path: Path) -> Digests | None:
    """The digests kept in *path*; None when there are none (or it is not a plain file)."""
    try:
        with fs.open_file(path, follow=False) as fh:
            lines = fh.read(_LIMIT).decode("ascii", "replace").splitlines()
    except OSError:
        return None
    salt: bytes | None = None
    kept: list[Kept] = []
    for line in lines:
        fields = line.split()
        with contextlib.suppress(ValueError):
            if len(fields) == 2 and fields[0] == "salt":  # noqa: PLR2004 - its two fields
                salt = bytes.fromhex(fields[1])
            elif len(fields) == 4 and fields[2] in _CLASSES:  # noqa: PLR2004 - its four
                name, length, kind, digest = fields
                kept.append(
                    Kept(name=name, length=int(length), kind=kind, digest=bytes.fromhex(digest))
                )
    return None if salt is None or not kept else Digests(salt=salt, kept=tuple(kept))


def keep(path: Path, values: Mapping[str, str]) -> None:
    """Add the digests of *values* (value -> its variable's name) to *path*, mode 0600.

    Written aside and renamed into place; what it held is kept (a manager resumed with other
    variables adds theirs). Nothing is written for no values; a file not written (a full
    disk) leaves a value to the managers that have it.
    """
    if not values:
        return
    old = load(path)
    salt = old.salt if old is not None else secrets.token_bytes(16)
    digests = Digests(salt=salt, kept=old.kept if old is not None else ())
    kept = {(k.name, k.digest): k for k in digests.kept}
    for value, name in values.items():
        if not re.fullmatch(r"[!-~]+", name):  # a line's field: no blank, no newline
            continue
        raw = value.encode("utf-8", "surrogateescape")
        kind = next(k for k, c in _CLASSES.items() if re.fullmatch(c + b"+", raw))
        new = Kept(name=name, length=len(raw), kind=kind, digest=digests.digest(raw))
        kept.setdefault((new.name, new.digest), new)
    if old is not None and len(kept) == len(old.kept):
        return
    lines = [f"salt {salt.hex()}"] + [
        f"{k.name} {k.length} {k.kind} {k.digest.hex()}" for k in kept.values()
    ]
    with contextlib.suppress(OSError):
        fd, aside = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="ascii") as fh:
                fh.write("".join(f"{line}\n" for line in lines))
            Path(aside).replace(path)
        except BaseException:
            Path(aside).unlink(missing_ok=True)
            raise
