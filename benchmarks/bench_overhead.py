"""swarm's own cost per task against the git floor, measured in the same run.

    python benchmarks/bench_overhead.py [--tasks 50 200] [--jobs 8 32] [--files 100]
                                        [--repo PATH] [--profile]

For each size, a throwaway repository (N generated files, or a copy of `--repo`) and N tasks of
a no-op agent (writes one file and exits). Three measurements:

- swarm: `swarm run` of the N tasks at `--jobs`, then `swarm clean --all --yes` (worktrees and
  branches removed, as the floor does); CPU of the manager and every process it waited for;
- agents: the agent command run N times by itself (its CPU is subtracted from swarm's);
- floor: the minimal git a task needs (`worktree add` with checkout, one commit, `worktree
  remove`, branch delete), back to back, and in parallel at the same concurrency (metadata steps
  under one lock, as git needs).

Prints swarm's CPU and wall per task beside the floor's and their ratios. `--profile` runs the
manager under cProfile and prints its top functions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

AGENT = ["sh", "-c", 'echo done > "$SWARM_TASK_ID.txt"']
IDENT = ["-c", "user.name=bench", "-c", "user.email=bench@localhost"]


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *IDENT, *args], cwd=cwd, check=True, capture_output=True)


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def make_repo(root: Path, files: int, source: Path | None) -> None:
    if source is not None:
        subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(source), str(root)], check=True)
        return
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    for i in range(files):
        d = root / f"d{i // 1000}"
        d.mkdir(exist_ok=True)
        (d / f"f{i}.txt").write_text(f"file {i}\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "files")


def measured(argv: list[str], cwd: Path) -> tuple[float, float]:
    """Run *argv*; (wall, CPU of it and everything it waited for)."""
    c0, w0 = children_cpu(), time.perf_counter()
    subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - w0, children_cpu() - c0


def swarm_run(repo: Path, tasks: int, jobs: int, *, profile: Path | None) -> tuple[float, float]:
    lines = [f"[defaults]\nagent = {json.dumps(AGENT)}\njobs = {jobs}\n"]
    lines += [f'[[task]]\nid = "t{i}"\nprompt = "work"\n' for i in range(tasks)]
    manifest = repo.parent / "tasks.toml"
    manifest.write_text("\n".join(lines))
    prefix = [sys.executable]
    if profile is not None:
        prefix += ["-m", "cProfile", "-o", str(profile)]
    wall, cpu = measured([*prefix, "-m", "worktree_swarm.cli", "run", str(manifest)], repo)
    w2, c2 = measured([sys.executable, "-m", "worktree_swarm.cli", "clean", "--all", "--yes"], repo)
    return wall + w2, cpu + c2


def agents_alone(repo: Path, tasks: int) -> float:
    c0 = children_cpu()
    for i in range(tasks):
        env = {**os.environ, "SWARM_TASK_ID": f"a{i}"}
        subprocess.run(AGENT, cwd=repo, env=env, check=True)
    for i in range(tasks):
        (repo / f"a{i}.txt").unlink()
    return children_cpu() - c0


def floor(repo: Path, tasks: int, jobs: int) -> tuple[float, float]:
    lock = threading.Lock()
    where = repo.parent / "floor"
    where.mkdir(exist_ok=True)

    def one(i: int) -> None:
        path = where / f"t{i}"
        with lock:
            git(repo, "worktree", "add", "-q", "--no-track", "-b", f"floor/t{i}", str(path), "HEAD")
        (path / f"t{i}.txt").write_text("done\n")
        git(path, "add", "-A")
        git(path, "commit", "-q", "-m", "work")
        with lock:
            git(repo, "worktree", "remove", "--force", str(path))
            git(repo, "branch", "-D", f"floor/t{i}")

    c0, w0 = children_cpu(), time.perf_counter()
    if jobs <= 1:
        for i in range(tasks):
            one(i)
    else:
        with ThreadPoolExecutor(jobs) as pool:
            list(pool.map(one, range(tasks)))
    return time.perf_counter() - w0, children_cpu() - c0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[50])
    parser.add_argument("--jobs", type=int, nargs="+", default=[8])
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--repo", type=Path, help="clone this repository instead of generating")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, {platform.python_version()}")
    what = args.repo or f"{args.files} generated files"
    print(f"repository: {what}")
    print("tasks jobs | swarm cpu/task wall/task | floor cpu/task (seq) wall/task (par) | ratios")
    for tasks in args.tasks:
        for jobs in args.jobs:
            with tempfile.TemporaryDirectory(prefix="swarm-overhead-") as tmp:
                repo = Path(tmp) / "repo"
                make_repo(repo, args.files, args.repo)
                agent_cpu = agents_alone(repo, tasks)
                prof = Path(tmp) / "manager.prof" if args.profile else None
                s_wall, s_cpu = swarm_run(repo, tasks, jobs, profile=prof)
                _, f_seq_cpu = floor(repo, tasks, 1)
                f_par_wall, _ = floor(repo, tasks, jobs)
                own = max(s_cpu - agent_cpu, 0.0) / tasks
                print(
                    f"{tasks:>5} {jobs:>4} | {own * 1000:>8.0f} ms {s_wall / tasks * 1000:>8.0f} ms"
                    f" | {f_seq_cpu / tasks * 1000:>8.0f} ms {f_par_wall / tasks * 1000:>8.0f} ms"
                    f" | cpu {own / (f_seq_cpu / tasks):.2f}x, wall {s_wall / f_par_wall:.2f}x"
                )
                if prof is not None:
                    import pstats  # noqa: PLC0415 - only with --profile

                    pstats.Stats(str(prof)).sort_stats("cumulative").print_stats(25)
                shutil.rmtree(repo.parent / "floor", ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
