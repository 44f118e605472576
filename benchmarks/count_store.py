"""Per task: the manager's state-database transactions and statements, and its git processes.

    python benchmarks/count_store.py [--tasks 50] [--jobs 8] [--depth 1] [--sleep 0.2] [--cost]

Runs the real `swarm run` (as bench_schedule.py does: sleeping fake agents, one file each; with
--cost, named `claude` and saying what they cost, as Claude Code does) in a throwaway
repository, with every SQLite connection the manager opens traced: transactions (``BEGIN``)
and write statements are counted by kind, and so are the wake-ups of threads waiting for the
guard's lock (`TurnLock`). Git processes are counted from a GIT_TRACE2 event
file, by command. Counts, not times: they do not move with the machine's load.
"""

from __future__ import annotations

import argparse
import atexit
import collections
import json
import os
import platform
import runpy
import sqlite3
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from bench_overhead import git_counts
from bench_schedule import AGENT, make_repo, manifest

from worktree_swarm.guard.lock import TurnLock

_OUT = "SWARM_COUNT_STORE_OUT"
# What Claude Code's last line says of an attempt's cost and tokens.
_PAID = (
    '{"type": "result", "subtype": "success", "is_error": false, "result": "ok",'
    ' "session_id": "s", "total_cost_usd": 0.01, "usage": {"input_tokens": 10,'
    ' "output_tokens": 2}}'
)


def _paying_agent(base: Path, sleep: float) -> list[str]:
    """A sleeping fake agent named `claude` (read as Claude Code) that says what it cost."""
    script = base / "bin" / "claude"
    script.parent.mkdir()
    script.write_text(f"#!/bin/sh\n{AGENT.replace('$1', str(sleep))}\necho '{_PAID}'\n")
    script.chmod(0o755)
    return [str(script), "-p", "{prompt}"]


def _child(swarm_args: list[str]) -> None:
    """Run swarm in this interpreter with every SQLite connection traced; counts to $_OUT."""
    counts: collections.Counter[str] = collections.Counter()
    connect = sqlite3.connect

    def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn: sqlite3.Connection = connect(*args, **kwargs)
        conn.set_trace_callback(lambda sql: counts.update([_kind(sql)]))
        return conn

    made = TurnLock.__init__

    def counted_lock(lock: TurnLock) -> None:
        """Each time a thread waiting for the guard's lock is woken, counted."""
        made(lock)
        for cond in [c for c in vars(lock).values() if isinstance(c, threading.Condition)]:

            def wait(*args: Any, _wait: Any = cond.wait) -> bool:
                woken: bool = _wait(*args)
                counts.update(["lock wake-up"])
                return woken

            cond.wait = wait  # type: ignore[method-assign, assignment]

    def write() -> None:
        Path(os.environ[_OUT]).write_text(json.dumps(counts))

    sqlite3.connect = traced  # type: ignore[assignment]
    TurnLock.__init__ = counted_lock  # type: ignore[method-assign, assignment]
    atexit.register(write)
    sys.argv = ["swarm", *swarm_args]
    runpy.run_module("worktree_swarm.cli", run_name="__main__")


def _kind(sql: str) -> str:
    words = sql.split()
    head = " ".join(words[:3]).upper() if words else "?"
    for kind in ("BEGIN", "COMMIT", "ROLLBACK"):
        if head.startswith(kind):
            return kind
    if head.startswith(("CREATE", "ALTER")):
        return "schema"
    if head.startswith(("UPDATE", "DELETE")):
        return " ".join(words[:2])
    if head.startswith("INSERT"):
        return " ".join(words[:3])
    return "read" if head.startswith(("SELECT", "PRAGMA")) else head


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--sleep", type=float, default=0.2)
    parser.add_argument("--cost", action="store_true", help="agents that say what they cost")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        _child(args.child)
        return 0

    with tempfile.TemporaryDirectory(prefix="swarm-count-") as tmp:
        base = Path(tmp)
        repo = base / "repo"
        make_repo(repo)
        agent = ["sh", "-c", AGENT, "agent", str(args.sleep)]
        if args.cost:
            agent = _paying_agent(base, args.sleep)
        (base / "tasks.toml").write_text(manifest(args.tasks, args.depth, agent, args.jobs))
        out, trace = base / "counts.json", base / "trace2.json"
        env = {**os.environ, _OUT: str(out), "GIT_TRACE2_EVENT": str(trace)}
        if args.cost:  # signed in, as far as swarm checks: the fake calls no API
            env["ANTHROPIC_API_KEY"] = "sk-ant-api03-not-used"
        command = [sys.executable, __file__, "--child", "run", str(base / "tasks.toml")]
        proc = subprocess.run(
            command, check=False, cwd=repo, env=env, capture_output=True, text=True
        )
        counts = collections.Counter(json.loads(out.read_text())) if out.exists() else None
        gits = git_counts(trace)
        with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as db:
            states = dict(db.execute("SELECT state, count(*) FROM tasks GROUP BY state").fetchall())

    print(f"machine: {platform.node()} {platform.system()} {platform.release()}")
    paying = ", agents saying what they cost" if args.cost else ""
    print(
        f"tasks {args.tasks}, jobs {args.jobs}, depth {args.depth}, agent sleep {args.sleep}s"
        + paying
    )
    print(f"exit code {proc.returncode}; states {states}")
    if counts is None:
        print(proc.stderr[-2000:])
        return 1
    per = args.tasks
    print(
        f"transactions per task: {counts['BEGIN'] / per:.2f} (commits {counts['COMMIT'] / per:.2f})"
    )
    apart = {"BEGIN", "COMMIT", "read", "lock wake-up"}
    writes = [(k, n) for k, n in counts.most_common() if k not in apart]
    print("writes per task: " + ", ".join(f"{k} {n / per:.2f}" for k, n in writes))
    print(f"reads per task: {counts['read'] / per:.2f}")
    print(f"guard lock: waiters woken per task {counts['lock wake-up'] / per:.2f}")
    total = sum(gits.values())
    rows = ", ".join(f"{name} {n / per:.2f}" for name, n in gits.most_common())
    print(f"git processes per task: {total / per:.2f} ({rows})")
    return 0 if proc.returncode == 0 and states.get("done") == args.tasks else 1


if __name__ == "__main__":
    sys.exit(main())
