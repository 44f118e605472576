"""The shim as the manager sees it: the command line that starts one, and the record it leaves.

The shim (:mod:`worktree_swarm.infra.shim`) runs each agent and writes its command's exit
status to a record next to the log; a manager that did not start the agent (or reaps only
the shim) learns how it ended from that record.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from worktree_swarm.infra import fs, shim

# Without a child subreaper (macOS, BSD) a shim could not hold on to double-forked daemons:
# agents there are spawned directly, as before the shim existed.
SHIM_AVAILABLE = sys.platform.startswith("linux")
SHIM_PATH = Path(shim.__file__).resolve()
# The shim is imported by a one-line program rather than run by path: a script is compiled on
# every start, an imported module loads its cached bytecode (~5 ms less CPU per attempt).
# Its directory goes last on sys.path, so it can shadow no standard module.
SHIM_LAUNCH = (
    f"import sys; sys.path.append({str(SHIM_PATH.parent)!r}); "
    f"import {SHIM_PATH.stem}; {SHIM_PATH.stem}.run()"
)
# Isolated (no PYTHONPATH, no user site, not the start directory) and without site: the shim
# starts in tens of milliseconds and nothing a task sets or plants can change what it runs.
SHIM_FLAGS: tuple[str, ...] = ("-I", "-S")


@dataclass(frozen=True, slots=True, kw_only=True)
class ShimRecord:
    """What a shim wrote about its command: the exit code once it ended."""

    shim_pid: int
    start_ticks: int | None
    started_at: float
    exit_code: int | None
    ended_at: float | None
    stopped: bool
    # Whether the shim also killed whatever its command left running (it records the end
    # first: a shim killed in between, in its grace, leaves them to the manager).
    cleaned: bool = False


def record_path(log_path: Path) -> Path:
    """Where the shim of the process logging to *log_path* records its exit status."""
    return log_path.with_name(log_path.stem + ".exit.json")


def read_record(path: Path) -> ShimRecord | None:
    """The shim record at *path*, or None if there is none (or it cannot be read)."""
    try:
        raw = json.loads(fs.read_file(path))
        code = raw["exit_code"]
        ended = raw["ended_at"]
        ticks = raw.get("start_ticks")
        return ShimRecord(
            shim_pid=int(raw["pid"]),
            start_ticks=None if ticks is None else int(ticks),
            started_at=float(raw["started_at"]),
            exit_code=None if code is None else int(code),
            ended_at=None if ended is None else float(ended),
            stopped=bool(raw.get("stopped", False)),
            cleaned=bool(raw.get("cleaned", False)),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
