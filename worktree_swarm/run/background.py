"""`swarm run --detach`: the manager in its own session, so a run outlives the terminal."""

from __future__ import annotations

import itertools
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from worktree_swarm.core.errors import ExitCode, ManagerLockedError, SwarmError
from worktree_swarm.core.paths import store_path
from worktree_swarm.git import repo as git
from worktree_swarm.infra import lock, starts
from worktree_swarm.infra.logtail import last_line
from worktree_swarm.infra.proc import clean_env
from worktree_swarm.infra.store import Store

START_TIMEOUT = 60.0


def detach(repo: git.Repo, argv: Sequence[str]) -> tuple[int, Path]:
    """Start ``swarm <argv>`` detached and wait until its store records it as a run's manager.

    Returns (pid, log path). Input was validated by the caller, so a child that dies before
    taking the lock is reported with its last log line.
    """
    if lock.manager_alive(repo.state_dir):
        raise ManagerLockedError(
            f"another swarm manager {lock.describe_holder(repo.state_dir)} holds this "
            "repository; wait for it or stop it with `swarm stop`"
        )
    repo.state_dir.mkdir(parents=True, exist_ok=True)
    log, out = _new_log(repo.state_dir)
    started = time.time()
    with out:
        child = subprocess.Popen(
            [sys.executable, "-m", "worktree_swarm.cli", *argv],
            cwd=Path.cwd(),
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        code = child.poll()
        # The run recorded as its: a command asking before would find no run, or take the
        # store for deleted under a live manager.
        if _manages_a_run(repo, child.pid, since=started):
            # Reaped when it ends: a long-lived caller (swarm watch's retry) would otherwise
            # keep a zombie per manager it started. (The thread holds the Popen object too,
            # so Python never warns that a child is "still running".)
            threading.Thread(target=child.wait, name="swarm-reaper", daemon=True).start()
            return child.pid, log
        if code == ExitCode.LOCKED:  # another manager took the lock since the check above
            said = last_line(log).removeprefix("swarm: ")
            log.unlink(missing_ok=True)  # it holds that line alone: no manager's log
            raise ManagerLockedError(said)
        if code is not None:
            raise SwarmError(f"the background manager exited {code}: {last_line(log)} ({log})")
        time.sleep(0.05)
    raise SwarmError(f"the background manager did not start within {START_TIMEOUT:g}s ({log})")


def _manages_a_run(repo: git.Repo, pid: int, *, since: float) -> bool:
    """Whether the store records a run managed by the process *pid* started after *since*."""
    path = store_path(repo)
    if not path.exists():
        return False
    try:
        with Store(path, last_written=True) as store:
            runs = store.runs()
    except (SwarmError, sqlite3.Error):  # being made or brought up to date by the manager
        return False
    # The start time too (to the clock's tick): an old run's manager may have had this pid.
    return any(
        run.manager_pid == pid and starts.as_wall(run.manager_create_time or 0.0) >= since - 1.0
        for run in runs
    )


def _new_log(state_dir: Path) -> tuple[Path, BinaryIO]:
    """A log file of its own: two `--detach` in the same second must not share one."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in itertools.count(1):
        log = state_dir / (f"manager-{stamp}.log" if n == 1 else f"manager-{stamp}-{n}.log")
        try:
            return log, log.open("xb")
        except FileExistsError:
            continue
    raise AssertionError("unreachable")  # pragma: no cover
