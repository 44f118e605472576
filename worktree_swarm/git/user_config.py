"""Your global and system git config as a run found it: the part swarm's own git trusts.

What your user-level config runs (your git-lfs filter, your credential helper) is honoured by
swarm's git. A setting that appears or changes there during a run is not: an agent that is
not sandboxed could write it, and :mod:`worktree_swarm.git.config_overrides` neutralises it
as it does one of the repository's own config. A run's manager takes the snapshot when it
starts (:func:`begin_run`) and records it in the repository's state dir; every other command
trusts what the latest run recorded there (read again when the record changes: a stat per
call), all of it when no run was ever recorded. Only settings that run a program are recorded
(the caller says which), as digests: no value of yours is written, nor any digest of the rest
(your `user.email`, an `http.extraheader`). The manager keeps its record in memory, and its
guard writes it back where anyone else changed it (:func:`put_back`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

from worktree_swarm.git.process import execute
from worktree_swarm.infra import fs

USER_SCOPES = frozenset({"global", "system"})
RECORD = "user-config.json"  # in the state dir: {"run", "trusted", "planted"}


class _Own(NamedTuple):
    """The record as this process (a run's manager) wrote it: what it trusts, whatever the file."""

    run: str
    trusted: frozenset[str]
    planted: frozenset[str]
    data: bytes  # the file's bytes


@dataclasses.dataclass(slots=True)
class _State:
    """What this process knows: records read (by their stats), its own run's snapshot."""

    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    # state dir -> (the record's stats, its trusted digests; None: no record, all trusted)
    read: dict[str, tuple[object, frozenset[str] | None]] = dataclasses.field(default_factory=dict)
    own: dict[str, _Own] = dataclasses.field(default_factory=dict)  # a run's manager
    origins: frozenset[str] = frozenset()  # the files (includes too) entries came from


_state = _State()


class Entry(NamedTuple):
    """One setting as ``git config --list --show-scope --show-origin`` gives it."""

    scope: str
    origin: str  # a path, without git's ``file:`` prefix
    name: str
    value: str | None  # None: a key with no value


def digest(name: str, value: str | None) -> str:
    """What the record keeps of the setting *name* = *value*."""
    text = name if value is None else f"{name}\n{value}"
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def trusted(state_dir: Path, name: str, value: str | None) -> bool:
    """Whether swarm's git honours the user-level setting *name* = *value* (*state_dir*'s)."""
    known = _trusted(state_dir)[1]
    return known is None or digest(name, value) in known


def _trusted(state_dir: Path) -> tuple[object, frozenset[str] | None]:
    """A key that changes with the trusted set of *state_dir*, and that set."""
    own = _state.own.get(str(state_dir))
    if own is not None:
        return (("own", own.trusted), own.trusted)  # a frozenset keeps its hash: cheap as a key
    stats = _stats(state_dir / RECORD)
    known = _state.read.get(str(state_dir))
    if known is not None and known[0] == stats:
        return known
    record = _read(state_dir)
    found = (stats, None if record is None else frozenset(_strings(record, "trusted")))
    if stats is not None and _stats(state_dir / RECORD) == stats:  # not rewritten meanwhile
        with _state.lock:
            _state.read[str(state_dir)] = found
    return found


def parse(text: str) -> list[Entry]:
    """The entries of ``git config --list --show-scope --show-origin -z`` output *text*."""
    fields = text.split("\0")
    found = []
    # Each entry is "scope NUL origin NUL name NL value NUL" ("... name NUL": no value).
    for scope, origin, entry in zip(fields[0::3], fields[1::3], fields[2::3], strict=False):
        name, newline, value = entry.partition("\n")
        found.append(Entry(scope, origin.removeprefix("file:"), name, value if newline else None))
    return found


def note_origins(entries: Iterable[Entry]) -> None:
    """Remember the files *entries* of user-level scope came from (included files too)."""
    seen = {e.origin for e in entries if e.scope in USER_SCOPES and e.origin}
    if not seen <= _state.origins:
        with _state.lock:
            _state.origins |= seen


def files() -> list[Path]:
    """The user-level config files git reads, and those it was last seen to include."""
    env = os.environ
    home = Path(env.get("HOME", "~")).expanduser()
    if "GIT_CONFIG_GLOBAL" in env:
        found = [Path(env["GIT_CONFIG_GLOBAL"])]
    else:
        xdg = env.get("XDG_CONFIG_HOME") or str(home / ".config")
        found = [Path(xdg) / "git" / "config", home / ".gitconfig"]
    if env.get("GIT_CONFIG_NOSYSTEM", "").lower() not in {"1", "true", "yes", "on"}:
        found.append(Path(env.get("GIT_CONFIG_SYSTEM", "/etc/gitconfig")))
    return found + sorted(Path(o) for o in _state.origins)


def _stats(path: Path) -> object:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def files_key() -> tuple[object, ...]:
    """What changes when a user-level config file is written, replaced or removed (stats)."""
    return tuple(_stats(path) for path in files())


def state_key(state_dir: Path) -> tuple[object, ...]:
    """:func:`files_key` and *state_dir*'s trusted set: a cache key for what they decide."""
    return (_trusted(state_dir)[0], *files_key())


def user_entries(cwd: Path) -> list[Entry]:
    """The global and system settings git reads in *cwd* now (one `git config`, runs nothing)."""
    out = execute(cwd, ["config", "--list", "--show-scope", "--show-origin", "-z"], check=False)
    entries = [e for e in parse(out.stdout) if e.scope in USER_SCOPES]
    note_origins(entries)
    return entries


def _read(state_dir: Path) -> dict[str, object] | None:
    try:
        data = json.loads(fs.read_file(state_dir / RECORD))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _strings(record: dict[str, object] | None, key: str) -> set[str]:
    value = (record or {}).get(key)
    return {str(v) for v in value} if isinstance(value, list) else set()


def _write(state_dir: Path, run_id: str, trusted: set[str], planted: set[str]) -> None:
    """The record, whole or not at all; this process trusts it from now on, recorded or not."""
    data = {"run": run_id, "trusted": sorted(trusted), "planted": sorted(planted)}
    own = _Own(run_id, frozenset(trusted), frozenset(planted), json.dumps(data).encode())
    with _state.lock:
        _state.own[str(state_dir)] = own
    with contextlib.suppress(OSError):  # unrecorded: the other commands trust the last record
        _put(state_dir, own.data)


def _put(state_dir: Path, data: bytes) -> None:
    """Write *data* as the record: aside, then renamed over (a directory there removed)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    record = state_dir / RECORD
    if record.is_dir() and not record.is_symlink():  # planted: a rename cannot replace it
        shutil.rmtree(record)  # never follows a link inside
    aside = state_dir / f"{RECORD}.{os.getpid()}.tmp"
    aside.write_bytes(data)
    aside.replace(record)


def put_back(state_dir: Path) -> bool:
    """Write this process's record back where it is not as written; whether it was not.

    The record sits where an agent that is not sandboxed can write: deleted, every later
    command would trust all of your config; rewritten, what it names. A symlink there is not
    as written either. OSError when it cannot be written back.
    """
    own = _state.own.get(str(state_dir))
    if own is None:
        return False
    with contextlib.suppress(OSError), fs.open_file(state_dir / RECORD, follow=False) as fh:
        if fh.read() == own.data:
            return False
    _put(state_dir, own.data)
    return True


def begin_run(
    cwd: Path, state_dir: Path, run_id: str, *, kept: Callable[[str, str | None], bool]
) -> bool:
    """Trust the user-level settings found now; a resumed run keeps its own snapshot.

    Only those *kept* says run a program are recorded (the rest is never judged). Those a
    run's guard found planted (:func:`planted`) stay untrusted while they are there.
    This process trusts the snapshot from now on, recorded or not. Whether the files were
    read now (not for a resumed run).
    """
    record = _read(state_dir)
    resumed = record is not None and record.get("run") == run_id
    if resumed:
        trusted, planted = _strings(record, "trusted"), _strings(record, "planted")
    else:
        now = {digest(e.name, e.value) for e in user_entries(cwd) if kept(e.name, e.value)}
        planted = _strings(record, "planted") & now
        trusted = now - planted
    _write(state_dir, run_id, trusted, planted)
    return not resumed


def recorded_planted(state_dir: Path) -> frozenset[str]:
    """The digests *state_dir*'s record names as written by an agent (told already)."""
    own = _state.own.get(str(state_dir))
    return own.planted if own is not None else frozenset(_strings(_read(state_dir), "planted"))


def adopt(state_dir: Path, digests: Iterable[str]) -> None:
    """Trust *digests* from now on: settings you changed while no agent ran."""
    _change(state_dir, more=set(digests), planted=set())


def planted(state_dir: Path, digests: Iterable[str]) -> None:
    """Record *digests* as written by an agent: untrusted by later runs while they are there."""
    _change(state_dir, more=set(), planted=set(digests))


def _change(state_dir: Path, *, more: set[str], planted: set[str]) -> None:
    own = _state.own.get(str(state_dir))
    if own is None:  # not a run's manager: the record as it is
        record = _read(state_dir) or {}
        own = _Own(
            str(record.get("run", "")),
            frozenset(_strings(record, "trusted")),
            frozenset(_strings(record, "planted")),
            b"",
        )
    trusted = (set(own.trusted) | more) - planted
    _write(state_dir, own.run, trusted, set(own.planted) | planted)
