"""When a process started, as a wall-clock time that a step of the clock does not move.

The kernel counts a process's start in clock ticks since boot; psutil adds the boot time, which
the kernel gives as "now minus uptime" and so moves by as much as the wall clock is stepped
(NTP's first sync, a VM restored from a snapshot, WSL's clock catching up with its host). Two
readings of one process then differ, and a process taken for another is taken for ended: its
agent killed as a leftover, a live manager taken for gone. Here the boot time is the one first
seen in this boot, kept in a file per user and boot (in /dev/shm), so that every swarm process
of the boot (a manager, `swarm stop`, a resumed manager) reads the same start for the same
process.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path

import psutil

from worktree_swarm.infra import fs

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

_boot: float | None = None


def boot_time() -> float:
    """The boot time this user's swarm processes agree on for this boot (see the module)."""
    global _boot  # noqa: PLW0603 - one reading per process, as psutil's own
    if _boot is None:
        _boot = _kept_boot_time() or psutil.boot_time()
    return _boot


def start_time(pid: int) -> float | None:
    """When process *pid* started (seconds since the epoch); None if there is none."""
    ticks = _start_ticks(pid)
    if ticks is not None:
        return boot_time() + ticks / _TICKS
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def of(process: psutil.Process) -> float:
    """When *process* started, as :func:`start_time`; raises psutil's errors as it would."""
    ticks = _start_ticks(process.pid)
    if ticks is None:
        return process.create_time()
    return boot_time() + ticks / _TICKS


def at_ticks(ticks: int) -> float:
    """A start the kernel counted as *ticks* since boot, as :func:`start_time` gives it."""
    return boot_time() + ticks / _TICKS


def age(pid: int) -> float | None:
    """Seconds since process *pid* started, by the kernel's boot clock; None if unknown.

    A step of the wall clock does not move it (time the machine slept counts).
    """
    ticks = _start_ticks(pid)
    if ticks is None or not hasattr(time, "CLOCK_BOOTTIME"):
        return None
    return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / _TICKS)


def as_wall(start: float) -> float:
    """*start* (one of this module's) as the wall clock reads it now.

    For a time to show, or to compare with ``time.time()``: moved by every step of the clock
    since the boot time was kept, as the kernel's boot time is.
    """
    return start - boot_time() + psutil.boot_time()


def _start_ticks(pid: int) -> int | None:
    """The kernel's start of *pid* in clock ticks since boot; None without `/proc` or process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
        return int(fields[19])  # the 22nd field; the first two were before ")"
    except (OSError, IndexError, ValueError):
        return None


def _kept_boot_time() -> float | None:
    """The boot time first read in this boot, from its file (written now if there is none)."""
    try:
        boot_id = _BOOT_ID.read_text(encoding="ascii").strip()
    except OSError:
        return None  # not Linux: psutil's, read once per process
    if not boot_id.replace("-", "").isalnum():
        return None
    folder = fs.user_folder()
    if folder is None:
        return None
    path = folder / f"boot-{boot_id}"
    kept = _read_float(path)
    if kept is not None:
        return kept
    now = psutil.boot_time()
    aside = folder / f"boot-{boot_id}.{os.getpid()}.tmp"
    try:
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(repr(now))
        os.link(aside, path)  # the first one's stays: every process reads the same
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            aside.unlink()
    return _read_float(path) or now


def _read_float(path: Path) -> float | None:
    try:
        value = float(path.read_text(encoding="ascii"))
    except (OSError, ValueError):
        return None
    # Not a boot still to come (a file written over by hand, or by an agent outside
    # --sandbox: it runs as you): then psutil's, read once per process.
    return value if math.isfinite(value) and 0 < value < time.time() else None
