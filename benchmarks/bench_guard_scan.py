"""The guard's cost on a big checkout: its baseline, and each periodic scan while agents idle.

    python benchmarks/bench_guard_scan.py [--files 100000] [--scans 10] [--before REV]

Generates a repository of N small files (one commit), starts the guard on it as `swarm run`
does, then runs the periodic scan of an unchanged checkout and refs `--scans` times. Prints
wall and CPU seconds (this process plus every git process it started) for the baseline and per
scan, and the idle cost as a share of one core at the guard's pace (one scan a second at most,
the next after 10x the last one's duration). With `--before REV`, the same measurement runs
against the package as it was at REV (a temporary worktree of this repository) on the same
generated repository, and the ratios are printed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def make_repo(root: Path, files: int) -> None:
    root.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=root, check=True)
    for i in range(files):
        d = root / f"d{i // 1000:03d}"
        if i % 1000 == 0:
            d.mkdir()
        (d / f"f{i}.txt").write_text(f"file {i}\n")
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(
        ["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "-m", "files"],
        cwd=root,
        check=True,
    )


def measure(repo_root: Path, scans: int) -> dict[str, float]:
    """Run in the process whose sys.path has the package under test."""
    from worktree_swarm.guard import Guard  # noqa: PLC0415 - the package under test

    # The package as it is, or as it was before the layers (worktree_swarm.git a module).
    git_module = importlib.import_module("worktree_swarm.git")
    if not hasattr(git_module, "open_repo"):
        git_module = importlib.import_module("worktree_swarm.git.repo")
    open_repo = git_module.open_repo

    repo = open_repo(repo_root)
    with tempfile.TemporaryDirectory() as work:
        guard = Guard(repo, work_dir=Path(work), restore=True, exclude=[])
        c0, w0 = cpu(), time.perf_counter()
        guard.start()
        base_cpu, base_wall = cpu() - c0, time.perf_counter() - w0
        c0, w0 = cpu(), time.perf_counter()
        for _ in range(scans):
            violations = guard.scan()
            if violations:
                raise SystemExit(f"an unchanged checkout gave violations: {violations}")
        scan_cpu, scan_wall = (cpu() - c0) / scans, (time.perf_counter() - w0) / scans
        guard.close()
    interval = max(1.0, 10 * scan_wall)
    return {
        "baseline_wall_s": base_wall,
        "baseline_cpu_s": base_cpu,
        "scan_wall_s": scan_wall,
        "scan_cpu_s": scan_cpu,
        "idle_core_share": scan_cpu / (interval + scan_wall),
    }


def run_child(package_root: Path, repo_root: Path, scans: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(package_root)}
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(repo_root), "--scans", str(scans)],
        env=env,
        cwd=package_root,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def show(name: str, m: dict[str, float]) -> None:
    print(
        f"{name:>7}: baseline {m['baseline_wall_s']:.2f} s wall / {m['baseline_cpu_s']:.2f} s CPU; "
        f"scan {m['scan_wall_s'] * 1000:.0f} ms wall / {m['scan_cpu_s'] * 1000:.0f} ms CPU; "
        f"idle {m['idle_core_share'] * 100:.1f}% of a core"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--scans", type=int, default=10)
    parser.add_argument("--before", help="a commit of this repository to compare with")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(Path(args.child), args.scans)))
        return 0
    # ignore_cleanup_errors: git may still be pruning the temporary worktree's admin files.
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        repo = Path(tmp) / "big"
        started = time.perf_counter()
        make_repo(repo, args.files)
        print(
            f"machine: {platform.platform()}, {os.cpu_count()} cores, {platform.python_version()}"
        )
        print(f"repository: {args.files} files (made in {time.perf_counter() - started:.0f} s)")
        now = run_child(HERE, repo, args.scans)
        show("now", now)
        if args.before:
            old = Path(tmp) / "old"
            subprocess.run(
                ["git", "worktree", "add", "-q", "--detach", str(old), args.before],
                cwd=HERE,
                check=True,
            )
            try:
                before = run_child(old, repo, args.scans)
            finally:
                subprocess.run(
                    ["git", "worktree", "remove", "--force", str(old)], cwd=HERE, check=False
                )
            show("before", before)
            for key in ("baseline_cpu_s", "scan_cpu_s", "scan_wall_s"):
                print(f"{key}: {now[key] / before[key]:.2f}x of before")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
