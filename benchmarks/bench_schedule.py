"""Scheduling overhead: N fake agents that each sleep, on a DAG, against the ideal makespan.

    python benchmarks/bench_schedule.py [--tasks 200] [--jobs 8] [--depth 5] [--sleep 0.5]
                                        [--repo PATH]

Runs the real `swarm run` (worktree creation, supervision, checkpoint commits, diff stats all
included) in a throwaway repository, samples the manager's RSS with psutil, and prints
makespan / ideal where ideal = max(critical path, total work / jobs), and the CPU the run used
(user and system apart, agents included) with the makespan it allows on this machine's cores.
`--repo` runs the tasks in a clone of that repository instead of a one-file one (e.g.
pallets/click).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

# A fake agent as small as possible: sleep, then leave one file for the checkpoint commit.
AGENT = 'sleep "$1" && echo done > "$SWARM_TASK_ID.txt"'


def make_repo(root: Path) -> None:
    root.mkdir()
    (root / "README.md").write_text("bench\n")
    ident = ["-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=root, check=True)
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", *ident, "commit", "-q", "-m", "init"], cwd=root, check=True)


def manifest(tasks: int, depth: int, agent: list[str], jobs: int) -> str:
    per_level = tasks // depth
    lines = [f"[defaults]\nagent = {json.dumps(agent)}\njobs = {jobs}\n"]
    for level in range(depth):
        for i in range(per_level):
            dep = f'\ndepends_on = ["l{level - 1}-{i}"]' if level else ""
            lines.append(f'[[task]]\nid = "l{level}-{i}"\nprompt = "work"{dep}\n')
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--sleep", type=float, default=0.5)
    parser.add_argument("--repo", type=Path, help="clone this repository instead of a new one")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="swarm-bench-") as tmp:
        base = Path(tmp)
        repo = base / "repo"
        if args.repo is None:
            make_repo(repo)
        else:
            clone = ["git", "clone", "-q", "--no-hardlinks", str(args.repo), str(repo)]
            subprocess.run(clone, check=True)
        agent = ["sh", "-c", AGENT, "agent", str(args.sleep)]
        (base / "tasks.toml").write_text(manifest(args.tasks, args.depth, agent, args.jobs))

        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        started_wall = time.time()
        proc = subprocess.Popen(
            [sys.executable, "-m", "worktree_swarm.cli", "run", str(base / "tasks.toml")],
            cwd=repo,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        manager = psutil.Process(proc.pid)
        peak_rss = 0
        while proc.poll() is None:
            try:
                peak_rss = max(peak_rss, manager.memory_info().rss)
            except psutil.NoSuchProcess:
                break
            time.sleep(0.05)
        makespan = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        user = after.ru_utime - before.ru_utime
        system = after.ru_stime - before.ru_stime
        err = proc.stderr.read() if proc.stderr else ""
        with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as db:
            states = dict(db.execute("SELECT state, count(*) FROM tasks GROUP BY state").fetchall())
            spans = db.execute("SELECT started_at, ended_at FROM attempts").fetchall()

    done = states.get("done", 0)
    agent_time = sum(end - begin for begin, end in spans)
    ideal = max(args.depth * args.sleep, args.tasks * args.sleep / args.jobs)
    ideal_measured = max(args.depth * agent_time / max(len(spans), 1), agent_time / args.jobs)
    print(
        f"machine: {platform.node()} {platform.system()} {platform.release()}, "
        f"{psutil.cpu_count()} cpus, python {platform.python_version()}"
    )
    print(f"repository: {args.repo or 'one file'}")
    print(f"tasks {args.tasks}, jobs {args.jobs}, depth {args.depth}, agent sleep {args.sleep}s")
    print(f"exit code {proc.returncode}; states {states}")
    print(f"makespan {makespan:.2f}s (swarm process wall time, worktree creation included)")
    print(
        f"ideal (nominal agent work) {ideal:.2f}s -> ratio {makespan / ideal:.3f} (target <= 1.15)"
    )
    print(
        f"ideal (measured agent time incl. interpreter start) {ideal_measured:.2f}s "
        f"-> ratio {makespan / ideal_measured:.3f}"
    )
    print(f"manager peak RSS {peak_rss / 2**20:.1f} MB (target < 150 MB)")
    if spans:
        # Where the wall time goes around the agents: before the first, after the last, and
        # how many of the jobs ran at once on average in between.
        first = min(begin for begin, _ in spans) - started_wall
        last = max(end for _, end in spans) - started_wall
        print(
            f"first agent at {first:.2f}s, last agent's end at {last:.2f}s, then "
            f"{makespan - last:.2f}s to the end; agents running at once between them "
            f"{agent_time / max(last - first, 1e-9):.1f} on average (jobs {args.jobs})"
        )
    # On 2 cores the makespan cannot be under the CPU the run used over the cores.
    cores = psutil.cpu_count() or 1
    print(
        f"CPU {user + system:.1f}s (user {user:.1f}, system {system:.1f}), agents included: "
        f"{(user + system) / args.tasks * 1000:.0f} ms per task; over {cores} cores at least "
        f"{(user + system) / cores:.1f}s, {(user + system) / cores / ideal_measured:.2f}x the ideal"
    )
    if proc.returncode != 0 or done != args.tasks:
        print(err[-2000:])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
