"""Find processes by where they run or by the shim that marked them; kill the marked ones.

The store knows the agents a manager started; these look through the process table for
what it does not know: processes inside a worktree, and the trees a killed manager's shims
left running.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from worktree_swarm.core.errors import SwarmError
from worktree_swarm.core.models import ProcessIdentity
from worktree_swarm.infra import shim, starts
from worktree_swarm.infra.proctree import found_identity, is_alive, is_shim_of, kill_tree, running
from worktree_swarm.infra.shim_record import ShimRecord, read_record

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

_PROC_CWD = Path("/proc/self/cwd")  # Linux: every process's cwd is a link to read


def processes_in(directory: Path, *, cwds: Mapping[int, str] | None = None) -> list[psutil.Process]:
    """Return processes (other than this one) whose cwd is *directory* or inside it.

    *cwds* is a snapshot from :func:`working_directories` to look in, for many directories
    at once; a process found there is checked to be inside still.
    """
    root = Path(os.path.realpath(directory))
    if cwds is None:
        cwds = working_directories()
    if cwds is not None:
        return _inside(root, cwds)
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            cwd = Path(proc.cwd())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if cwd.is_relative_to(root):
            found.append(proc)
    return found


def working_directories() -> dict[int, str] | None:
    """Every other process's working directory by PID, from ``/proc`` (None without it)."""
    if not _PROC_CWD.is_dir():
        return None
    me = os.getpid()
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to look at
            found[int(entry.name)] = os.readlink(f"/proc/{entry.name}/cwd")  # noqa: PTH115
    return found


def _inside(root: Path, cwds: Mapping[int, str]) -> list[psutil.Process]:
    top = str(root)
    inside = top.rstrip("/") + "/"

    def within(cwd: str) -> bool:
        return cwd == top or cwd.startswith(inside)

    found = []
    for pid, cwd in cwds.items():
        if not within(cwd):
            continue
        try:
            # Read again: since the snapshot the process may have moved, or its PID be reused.
            if within(os.readlink(f"/proc/{pid}/cwd")):  # noqa: PTH115
                found.append(psutil.Process(pid))
        except (OSError, psutil.Error):
            continue
    return found


def marked_processes(root: Path) -> list[tuple[psutil.Process, Path]]:
    """Processes started under a shim whose record lies in *root*, oldest first.

    Found by the ``SWARM_SHIM`` variable every process of a shim's tree inherits, whatever
    became of the shim and wherever the process moved (``chdir("/")``, a new session).
    """
    base = Path(os.path.realpath(root))
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            marker = proc.environ().get(shim.ENV_VAR)
            create_time = starts.of(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
        if marker and Path(os.path.realpath(marker)).is_relative_to(base) and running(proc):
            found.append((create_time, proc, Path(marker)))
    found.sort(key=lambda item: item[0])
    return [(proc, record) for _, proc, record in found]


def kill_marked(
    root: Path, *, grace: float, only: Callable[[Path], bool] | None = None, strict: bool = False
) -> None:
    """Kill, tree and all, each process marked with a shim record in *root*.

    *only*: the records to act on. Oldest first, so a shim goes before its descendants and
    kills them itself. One that survives SIGKILL raises SwarmError with *strict*, else is left.
    """
    for process, record in marked_processes(root):
        # As found: one that ended while an older one was killed may have left its PID to
        # another process by now, which is not to be killed.
        identity = found_identity(process)
        if identity is None or (only is not None and not only(record)):
            continue
        try:
            kill_tree(identity, grace=grace)
        except SwarmError:
            if strict:
                raise


def kill_left_by(
    record: Path, *, grace: float, within: Sequence[Path] = (), strict: bool = False
) -> None:
    """Kill what the shim that writes *record* left running, when it did not kill it itself.

    Nothing when the shim recorded that it did (``cleaned``). Else every process marked with
    *record*, tree and all, then its shim's group (:func:`kill_shim_group`). *strict*: as for
    :func:`kill_marked`.
    """
    recorded = read_record(record)
    if recorded is not None and recorded.cleaned:
        return
    mine = os.path.realpath(record)

    def only(marker: Path) -> bool:
        return os.path.realpath(marker) == mine

    kill_marked(record.parent, grace=grace, only=only, strict=strict)
    kill_shim_group(record, grace=grace, within=within, strict=strict)


def kill_shim_group(
    record: Path, *, grace: float, within: Sequence[Path] = (), strict: bool = False
) -> None:
    """Kill the tree and process group of the shim that writes *record*, unless it cleaned up.

    As :func:`kill_tree` takes them: the shim gone, its group is its own while a member carries
    its mark or (its environment wiped, ``env -i``) works in *within* (the task's worktree) in
    the shim's session. One that survives SIGKILL raises SwarmError with *strict*, else is left.
    A live process the record names that is not that shim is left alone: the record is only a
    file in the task's logs, which its agent can write.
    """
    recorded = read_record(record)
    if recorded is None or recorded.cleaned:
        return
    identity = _shim_identity(recorded)
    if is_alive(identity) and not is_shim_of(identity, record):
        return
    try:
        kill_tree(identity, grace=grace, within=within)
    except SwarmError:
        if strict:
            raise


def kill_left_in(
    root: Path,
    *,
    grace: float,
    within: Sequence[Path] = (),
    only: Callable[[Path], bool] | None = None,
    strict: bool = False,
) -> None:
    """Kill what runs under the shims whose records are in *root*, or what they left.

    :func:`kill_marked`, then the group of each shim recorded in *root* (those *only* takes)
    that did not clean up (:func:`kill_shim_group`: *within*, the task's worktree, finds a
    member started with its environment wiped).
    """
    kill_marked(root, grace=grace, only=only, strict=strict)
    for record in sorted(root.glob("*.exit.json")):
        if only is None or only(record):
            kill_shim_group(record, grace=grace, within=within, strict=strict)


def _shim_identity(recorded: ShimRecord) -> ProcessIdentity:
    """The identity of the shim that wrote *recorded*: it led a session and group of its own."""
    if recorded.start_ticks is not None:
        create_time = starts.at_ticks(recorded.start_ticks)
    else:  # the wall clock's, stamped as the shim started
        create_time = recorded.started_at
    return ProcessIdentity(pid=recorded.shim_pid, create_time=create_time, pgid=recorded.shim_pid)


def kill_merge_programs(logs: Path, *, grace: float) -> None:
    """Kill the checks (and resolvers) a killed `swarm merge` left running (*logs*: its folder).

    For a command holding the merge lock: no merge runs, so any of them still running is
    left by one that was killed, and would run beside the next merge, or keep its worktree.
    Not an agent's (``attempt-N``): a run from before task ids were kept off this folder's
    name may have a live task called ``merge``.
    """
    kill_marked(logs, grace=grace, only=lambda r: not r.name.startswith("attempt-"))
