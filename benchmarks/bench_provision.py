"""Provisioning benchmark: N worktrees swarm's way vs a naive sequential `git worktree add` loop.

python benchmarks/bench_provision.py [--n 16] [--rounds 5] [--files 20000] [--size-mb 80]
                                     [--jobs JOBS] [--workdir DIR] [--whole-run [--sparse]]

With `--whole-run` swarm's side is a whole `swarm run` of N one-file tasks (a no-op agent that
writes one file in a module directory) at `--jobs`: worktrees, guard, checkpoints and store
included. With `--sparse` each task declares its module directory in `files` and runs with
`sparse = true`, so its worktree holds that directory and not the whole tree.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worktree_swarm.git.repo import open_repo
from worktree_swarm.git.status import status_porcelain
from worktree_swarm.git.worktrees import create_worktree
from worktree_swarm.infra import proc


def sh(cwd: Path, *args: str) -> str:
    return proc.run(["git", *args], cwd=cwd).stdout


def generate(root: Path, files: int, size_mb: int) -> Path:
    repo = root / "repo"
    repo.mkdir()
    sh(repo, "init", "-q", "-b", "main")
    rng = random.Random(42)
    words = [
        "".join(rng.choices("abcdefghijklmnopqrstuvwxyz_", k=rng.randint(2, 10)))
        for _ in range(4000)
    ]
    mean = size_mb * 1_000_000 // files
    for i in range(files):
        d = repo / f"pkg{i % 40:02d}" / f"mod{(i // 40) % 25:02d}"
        d.mkdir(parents=True, exist_ok=True)
        target = rng.randint(mean // 2, mean * 3 // 2)
        lines, size = [], 0
        while size < target:
            line = " ".join(rng.choices(words, k=12)) + "\n"
            lines.append(line)
            size += len(line)
        (d / f"file{i:05d}.txt").write_text("".join(lines))
    sh(repo, "add", "-A")
    env = proc.clean_env(
        {
            "GIT_AUTHOR_NAME": "b",
            "GIT_AUTHOR_EMAIL": "b@b",
            "GIT_COMMITTER_NAME": "b",
            "GIT_COMMITTER_EMAIL": "b@b",
        }
    )
    # No automatic gc: detached, it would repack (and write info/refs) during the first round.
    proc.run(["git", "-c", "gc.auto=0", "commit", "-q", "-m", "generated"], cwd=repo, env=env)
    return repo


def clean(repo: Path, wt_root: Path) -> None:
    shutil.rmtree(wt_root, ignore_errors=True)
    sh(repo, "worktree", "prune")
    branches = sh(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/bench/",
                  "refs/heads/swarm/").split()  # fmt: skip
    if branches:
        sh(repo, "branch", "-q", "-D", *branches)
    wt_root.mkdir(parents=True)
    # Flush dirty pages so one phase's writeback is not billed to the next.
    os.sync()


def run_swarm(repo: Path, wt_root: Path, n: int, jobs: int) -> tuple[float, int]:
    r = open_repo(repo)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [
            pool.submit(
                create_worktree, r, path=wt_root / f"s{i}", branch=f"bench/s{i}", start="HEAD"
            )
            for i in range(n)
        ]
        failures = 0
        for f in futures:
            try:
                f.result()
            except Exception as exc:
                failures += 1
                print(f"  swarm failure: {exc}")
    return time.perf_counter() - t0, failures


def run_whole(
    repo: Path, wt_root: Path, n: int, jobs: int, *, sparse: bool = False
) -> tuple[float, int]:
    """`swarm run` of *n* one-file tasks with worktrees under *wt_root*; (wall, failures)."""
    agent = ["sh", "-c", 'mkdir -p "$MODULE" && echo done > "$MODULE/$SWARM_TASK_ID.txt"']
    lines = [
        f"[defaults]\nagent = {json.dumps(agent)}\njobs = {jobs}\nsparse = {str(sparse).lower()}\n"
    ]
    lines.append(f"worktree_root = {json.dumps(str(wt_root))}\n")
    for i in range(n):
        module = f"pkg{i % 40:02d}/mod{i % 25:02d}"
        lines.append(
            f'[[task]]\nid = "s{i}"\nprompt = "work"\nfiles = ["{module}/**"]\n'
            f'env = {{ MODULE = "{module}" }}\n'
        )
    manifest = wt_root.parent / "tasks.toml"
    manifest.write_text("\n".join(lines))
    t0 = time.perf_counter()
    res = proc.run([sys.executable, "-m", "worktree_swarm.cli", "run", str(manifest)], cwd=repo,
                   check=False)  # fmt: skip
    wall = time.perf_counter() - t0
    if res.returncode:
        print(f"  swarm run failed ({res.returncode}): {(res.stdout + res.stderr)[-500:]}")
        return wall, n
    missing = 0
    for i in range(n):  # each branch holds its agent's file, and only that change
        changed = sh(repo, "diff", "--name-only", "HEAD", f"swarm/s{i}").split()
        if changed != [f"pkg{i % 40:02d}/mod{i % 25:02d}/s{i}.txt"]:
            print(f"  swarm/s{i} changed {changed[:3]}")
            missing += 1
    return wall, missing


def clean_whole(repo: Path) -> None:
    """Forget the whole run's state (its worktrees and branches go with :func:`clean`)."""
    shutil.rmtree(repo / ".git" / "swarm", ignore_errors=True)


def run_naive(repo: Path, wt_root: Path, n: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    failures = 0
    for i in range(n):
        res = proc.run(
            ["git", "worktree", "add", "-q", "-b", f"bench/n{i}", str(wt_root / f"n{i}"), "HEAD"],
            cwd=repo,
            check=False,
        )
        if res.returncode:
            failures += 1
            print(f"  naive failure: {res.stderr.strip()}")
    return time.perf_counter() - t0, failures


def verify(wt_root: Path, prefix: str, n: int) -> int:
    bad = 0
    for i in range(n):
        path = wt_root / f"{prefix}{i}"
        try:
            dirty = status_porcelain(path)
        except Exception as exc:
            print(f"  {path.name}: {exc}")
            bad += 1
            continue
        if dirty:
            print(f"  {path.name} is not clean: {dirty[:200]!r}")
            bad += 1
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=16, help="worktrees per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--size-mb", type=int, default=80)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="swarm thread pool size")
    ap.add_argument("--workdir", type=Path, default=None, help="where to put the temp repo")
    ap.add_argument("--whole-run", action="store_true", help="a whole `swarm run` per round")
    ap.add_argument("--sparse", action="store_true", help="with --whole-run: sparse worktrees")
    args = ap.parse_args()

    git_version = sh(Path.cwd(), "--version").strip()
    print(
        f"machine: nproc={os.cpu_count()} {platform.system()} {platform.release()}; {git_version}"
    )
    print(
        f"repo: {args.files} files, ~{args.size_mb} MB; N={args.n}; jobs={args.jobs};"
        f" rounds={args.rounds}{'; whole run' if args.whole_run else ''}"
        f"{', sparse' if args.sparse else ''}"
    )
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="bench_provision_") as tmp:
        t0 = time.perf_counter()
        repo = generate(Path(tmp), args.files, args.size_mb)
        print(f"generated in {time.perf_counter() - t0:.1f}s")
        wt_root = Path(tmp) / "worktrees"
        ratios, failures = [], 0
        for rnd in range(args.rounds):
            # Alternate the order so neither side always runs on a cache the other warmed.
            order = ("swarm", "naive") if rnd % 2 == 0 else ("naive", "swarm")
            times: dict[str, float] = {}
            for which in order:
                clean(repo, wt_root)
                if which == "swarm" and args.whole_run:
                    clean_whole(repo)
                    times[which], f = run_whole(
                        repo, wt_root, args.n, args.jobs, sparse=args.sparse
                    )
                elif which == "swarm":
                    times[which], f = run_swarm(repo, wt_root, args.n, args.jobs)
                    f += verify(wt_root, "s", args.n)
                else:
                    times[which], f = run_naive(repo, wt_root, args.n)
                    f += verify(wt_root, "n", args.n)
                failures += f
            ratio = times["swarm"] / times["naive"]
            ratios.append(ratio)
            print(
                f"round {rnd + 1}: swarm {times['swarm']:.1f}s  naive {times['naive']:.1f}s"
                f"  ratio {ratio:.2f}"
            )
            sys.stdout.flush()
        clean(repo, wt_root)
    print(
        f"mean ratio swarm/naive: {statistics.mean(ratios):.2f}"
        f" (min {min(ratios):.2f}, max {max(ratios):.2f}); failures: {failures}"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
