"""Remote-tracking refs (``refs/remotes/``) and their reflogs: put back as they were.

Your git trusts them as what the remote has: a forged ``origin/main`` is what your
``git merge origin/main`` takes, and a line added to its reflog is what your
``git pull --rebase`` reads to tell which of your commits the remote already has (it drops
them). An agent's own ``git fetch`` moves them too, legitimately; neither can be told from the
other, so they are put back without blame once its attempt ends (git's next fetch brings them
where the remote has them). The guard makes no network call to tell.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from worktree_swarm.core.errors import CommandError
from worktree_swarm.git import repo as git
from worktree_swarm.guard.restore import prune_empty, put_file
from worktree_swarm.guard.snapshot import SYMBOLIC
from worktree_swarm.infra import fs

PREFIX = "refs/remotes/"
_LOGS = ("logs", "refs", "remotes")
EVENT = "remote_refs_put_back"  # the run's event recording a Note

_T = TypeVar("_T")
Signature = tuple[int, int, int, int]  # inode, size, mtime and ctime (ns) of a reflog


@dataclass(frozen=True, slots=True, kw_only=True)
class Remotes:
    """The remote-tracking refs and their reflogs at one time."""

    refs: dict[str, str]  # ref -> object, or ``ref: <target>`` for a symbolic ref
    logs: dict[str, Signature]  # ref whose reflog is there -> its stat signature
    data: dict[str, bytes] | None = None  # ref -> its reflog's bytes, when read


@dataclass(frozen=True, slots=True, kw_only=True)
class Note:
    """Remote-tracking refs an attempt left moved, put back without blame."""

    refs: tuple[str, ...]  # put back (the ref, its reflog, or both)
    left: tuple[str, ...] = ()  # moved again meanwhile: left as found, tried again later

    def as_dict(self) -> dict[str, object]:
        """The JSON form recorded as a ``remote_refs_put_back`` event."""
        return {"refs": list(self.refs), "left": list(self.left)}


def note_line(refs: Iterable[object]) -> str:
    """What a user reads about remote-tracking *refs* put back."""
    names = ", ".join(str(r).removeprefix(PREFIX) for r in refs)
    return (
        f"guard: remote-tracking refs {names} put back as they were when the run started"
        " (an agent moved them: a fetch, or a forgery); `git fetch` again to update them"
    )


def read(
    root: Path, common: Path, *, data: bool = False, refs: Mapping[str, str] | None = None
) -> Remotes:
    """The remote-tracking refs of the repository *root* (*data*: with their reflogs' bytes).

    *refs*: the remote-tracking refs as just read with the others (``snapshot.read_refs``),
    else read now.
    """
    if refs is None:
        out = git.git(root, "for-each-ref", "--format=%(refname) %(objectname) %(symref)", PREFIX)
        found = {}
        for line in out.splitlines():
            name, sha, target = [*line.split(" ", 2), "", ""][:3]
            found[name] = f"{SYMBOLIC}{target}" if target else sha
        refs = found
    logs: dict[str, Signature] = {}
    contents: dict[str, bytes] = {}
    for directory, _, files in os.walk(common.joinpath(*_LOGS)):
        for name in files:
            path = Path(directory) / name
            ref = path.relative_to(common / "logs").as_posix()
            try:
                logs[ref] = signature(path)
                if data:
                    contents[ref] = fs.read_file(path)
            except FileNotFoundError:
                logs.pop(ref, None)  # pruned by git as it was listed
    return Remotes(refs=dict(refs), logs=logs, data=contents if data else None)


def signature(path: Path) -> Signature:
    """What changes when *path* is written: its inode, size, mtime and ctime."""
    st = path.lstat()
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def moved(base: Remotes, now: Remotes) -> list[str]:
    """The refs whose value or reflog differ between *base* and *now*, sorted.

    The reflogs are compared by their bytes when *now* has them, else by their stat data.
    """
    names = set(base.refs) | set(now.refs) | set(base.logs) | set(now.logs)
    if now.data is not None and base.data is not None:
        old, new = base.data, now.data
        return sorted(
            r for r in names if base.refs.get(r) != now.refs.get(r) or old.get(r) != new.get(r)
        )
    return sorted(
        r for r in names
        if base.refs.get(r) != now.refs.get(r) or base.logs.get(r) != now.logs.get(r)
    )  # fmt: skip


def adopt(base: Remotes, now: Remotes, refs: Iterable[str]) -> Remotes:
    """*base* with each of *refs* (and its reflog) taken as it is in *now* (read with data)."""
    taken = set(refs)
    return Remotes(
        refs=_merged(base.refs, now.refs, taken),
        logs=_merged(base.logs, now.logs, taken),
        data=_merged(base.data or {}, now.data or {}, taken),
    )


def restamped(base: Remotes, now: Remotes) -> Remotes:
    """*base* with the stat data of each reflog *now* has with the same bytes (rewritten)."""
    same = {
        ref: sig for ref, sig in now.logs.items()
        if now.data is not None and base.data is not None
        and ref in base.data and now.data.get(ref) == base.data[ref]
    }  # fmt: skip
    return Remotes(refs=base.refs, logs={**base.logs, **same}, data=base.data)


def _merged(base: dict[str, _T], now: dict[str, _T], taken: set[str]) -> dict[str, _T]:
    return {
        **{r: v for r, v in base.items() if r not in taken},
        **{r: v for r, v in now.items() if r in taken},
    }


def put_back(root: Path, common: Path, base: Remotes, refs: Iterable[str]) -> list[str]:
    """Make each of *refs* and its reflog what it is in *base*; those left (moved again).

    Each ref is set back compare-and-swap (one that moved again since it was read is left,
    its reflog with it), then its reflog is written back byte for byte, or removed: setting a
    ref appends to its reflog, and deleting one deletes it.
    """
    now = read(root, common)
    left = []
    for ref in refs:
        log = common / "logs" / ref
        # Never through a directory swapped for a link (to one of your files elsewhere).
        inside = Path(os.path.realpath(common)) / "logs" / ref
        if os.path.realpath(log.parent) != str(inside.parent) or not _set_ref(
            root, ref, base.refs.get(ref), now.refs.get(ref)
        ):
            left.append(ref)
            continue
        kept = (base.data or {}).get(ref)
        if kept is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            if not log.is_file() or fs.read_file(log) != kept:
                put_file(log, mode="100644", data=kept)
        elif os.path.lexists(log) and not log.is_dir():
            log.unlink()
            prune_empty(log.parent, common.joinpath(*_LOGS))
    return left


def note_put_back(path: Path, base: Remotes, found: Remotes, refs: Iterable[str]) -> None:
    """Write to *path* what putting *refs* back from *found* to *base* is to make of them.

    A manager killed half-way has the next guard of its run finish it (:func:`finish`).
    """
    logs = base.data or {}
    entries = {
        ref: [
            base.refs.get(ref),
            found.refs.get(ref),
            None if logs.get(ref) is None else base64.b64encode(logs[ref]).decode(),
        ]
        for ref in refs
    }
    aside = path.with_name(f".{path.name}.tmp")
    aside.write_text(json.dumps(entries), encoding="utf-8")
    aside.replace(path)  # whole or not there: never half a note


def finish(root: Path, common: Path, path: Path) -> list[str]:
    """Finish the put-back noted in *path* by a killed manager; the refs put back.

    Only a ref still as that put-back found it, or already put back (its reflog perhaps not
    yet): one moved since (your fetch) is left.
    """
    try:
        entries = json.loads(fs.read_file(path))
    except FileNotFoundError:
        return []
    except (OSError, ValueError):
        path.unlink(missing_ok=True)
        return []
    now = read(root, common).refs
    base = Remotes(
        refs={ref: before for ref, (before, _, _) in entries.items() if before is not None},
        logs={},
        data={ref: base64.b64decode(log) for ref, (_, _, log) in entries.items() if log},
    )
    going = [
        ref for ref, (before, found, _) in entries.items()
        if ref.startswith(PREFIX) and now.get(ref) in (before, found)
    ]  # fmt: skip
    left = put_back(root, common, base, going)
    path.unlink()
    return [ref for ref in going if ref not in left]


def _set_ref(root: Path, ref: str, before: str | None, after: str | None) -> bool:
    """Set *ref* from *after* back to *before* (compare-and-swap); False when it moved again."""
    if before == after:
        return True  # only its reflog changed
    try:
        if before is not None and before.startswith(SYMBOLIC):
            git.git(root, "symbolic-ref", ref, before.removeprefix(SYMBOLIC))
        elif after is not None and after.startswith(SYMBOLIC):
            if before is None:
                git.git(root, "update-ref", "--no-deref", "-d", ref)
            else:
                git.git(root, "update-ref", "--no-deref", ref, before)
        elif before is None:
            git.git(root, "update-ref", "--no-deref", "-d", ref, after or "")
        else:
            git.git(root, "update-ref", "--no-deref", ref, before, after or "")
    except CommandError:
        return False
    return True
