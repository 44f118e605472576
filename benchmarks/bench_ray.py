"""Per-task overhead of the Ray executor against the local one, measured in the same run.

`python benchmarks/bench_ray.py [--tasks 20] [--seconds 2] [--slots 2]`: N tasks of an agent
that writes a file and sleeps S seconds, run by `swarm run` with the local executor
(`jobs` = 2 x slots) and on a two-node Ray cluster on 127.0.0.1 (a head and a worker, `slots`
agent slots each, started and stopped here by PID). Overhead per task = (wall - the agents' own
time at that concurrency) / N. The cluster's start-up is reported apart, not counted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import raykit  # noqa: E402

AGENT = """
import os, pathlib, sys, time
pathlib.Path(os.environ["SWARM_TASK_ID"] + ".txt").write_text("work\\n")
time.sleep(float(sys.argv[1]))
"""


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def make_repo(base: Path, tasks: int, seconds: float, jobs: int, executor: str) -> Path:
    repo = base / f"repo-{executor}"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("bench\n")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "init")
    remote = base / f"remote-{executor}.git"
    git(base, "clone", "-q", "--bare", str(repo), str(remote))
    git(repo, "remote", "add", "origin", str(remote))
    script = base / "agent.py"
    script.write_text(AGENT)
    argv = [sys.executable, str(script), str(seconds)]
    body = "".join(f'[[task]]\nid = "t{i}"\nprompt = "p"\n\n' for i in range(tasks))
    (base / f"tasks-{executor}.toml").write_text(
        f'[defaults]\nagent = {json.dumps(argv)}\njobs = {jobs}\nexecutor = "{executor}"\n'
        'ray_memory = "64M"\n\n' + body
    )
    return repo


def timed_run(base: Path, repo: Path, executor: str, extra: list[str]) -> float:
    env = os.environ | {"PYTHONPATH": str(ROOT), "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b"}
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "worktree_swarm.cli", "run", str(base / f"tasks-{executor}.toml"),
         *extra],
        cwd=repo, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"{executor} run failed:\n{out.stdout}\n{out.stderr}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--slots", type=int, default=2)
    args = parser.parse_args()
    jobs = 2 * args.slots
    floor = math.ceil(args.tasks / jobs) * args.seconds
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        base = Path(tmp)
        local_repo = make_repo(base, args.tasks, args.seconds, jobs, "local")
        local = timed_run(base, local_repo, "local", [])
        t0 = time.perf_counter()
        cluster = raykit.Cluster.start(base / "cluster", workers=1, slots=args.slots)
        started = time.perf_counter() - t0
        try:
            ray_repo = make_repo(base, args.tasks, args.seconds, jobs, "ray")
            ray_wall = timed_run(base, ray_repo, "ray", ["--ray-address", cluster.address])
        finally:
            cluster.shutdown()
    load = os.getloadavg()[0]
    print(
        f"{args.tasks} tasks x {args.seconds:g}s agent, {jobs} at once; agents' floor {floor:.1f}s"
    )
    print(f"cluster start (head + 1 worker): {started:.1f}s (not counted)")
    for name, wall in (("local", local), ("ray", ray_wall)):
        per = (wall - floor) / args.tasks
        print(f"{name:5s}: wall {wall:6.1f}s  overhead/task {per:5.2f}s")
    ratio = (ray_wall - floor) / max(local - floor, 1e-9)
    print(f"ray/local overhead ratio: {ratio:.2f}x  (load average {load:.1f})")


if __name__ == "__main__":
    main()
