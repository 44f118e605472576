"""The guard's cost: on a big checkout while agents idle, and with many finished worktrees.

    python benchmarks/bench_guard_scan.py [--files 100000] [--scans 10] [--idle 60]
        [--worktrees 0 100 500] [--run 500] [--jobs 32] [--before REV]

1. Generates a repository of N small files (one commit), starts the guard on it as `swarm run`
   does, then runs the periodic scan of an unchanged checkout and refs `--scans` times. Prints
   wall and CPU seconds (this process plus every git process it started) for the baseline and
   per scan; then lets the guard's own thread scan at its own pace for `--idle` seconds and
   prints the CPU it used as a share of one core.
2. On a 100-file repository with 500 task worktrees, hands the first 0, 100, 500 of them over
   to a fresh guard (as tasks that have ended), then prints one periodic scan's wall time, the
   gap between two checks of the user's checkout (the guard's pause plus a scan) and the last
   scan (with its deep checks).
3. With `--run N`: a real `swarm run` of N tasks of a no-op agent at `--jobs` on a 100-file
   repository, with the guard's scans timed from inside the manager: the longest and the 99th
   percentile pause between the starts of two scans (each checks the refs and the user's
   checkout; the first pause starts with the baselines, the last ends with the last scan),
   and that last scan.

With `--before REV`, the same measurements run against the package as it was at REV (a
temporary worktree of this repository) on the same generated repositories, and the ratios are
printed.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the package under test is imported where it is used (it may be --before's)
    from worktree_swarm.core.paths import Repo
    from worktree_swarm.guard.model import Violation
    from worktree_swarm.guard.watcher import Guard

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


def make_worktrees(repo: Path, count: int) -> list[Path]:
    """*count* task worktrees of *repo*, each on a branch of its own."""
    paths = []
    for i in range(count):
        path = repo.parent / "wts" / f"t{i}"
        subprocess.run(
            ["git", "worktree", "add", "-q", "-b", f"swarm/t{i}", str(path)], cwd=repo, check=True
        )
        paths.append(path)
    return paths


def open_any(repo_root: Path) -> Repo:
    """The package's repository handle, as it is or as it was before the layers."""
    git_module = importlib.import_module("worktree_swarm.git")
    if not hasattr(git_module, "open_repo"):
        git_module = importlib.import_module("worktree_swarm.git.repo")
    open_repo: Callable[[Path], Repo] = git_module.open_repo
    return open_repo(repo_root)


def measure_count(repo_root: Path, counts: list[int], scans: int) -> dict[str, float]:
    """Scan latency with 0, 100, 500... finished task worktrees (the package under test)."""
    from worktree_swarm.guard.watcher import Guard  # noqa: PLC0415 - the package under test

    wts = repo_root.parent / "wts"
    worktrees = sorted(
        wts.iterdir() if wts.is_dir() else [], key=lambda p: int(p.name.removeprefix("t"))
    )
    out: dict[str, float] = {}
    for count in counts:
        with tempfile.TemporaryDirectory() as work:
            guard = Guard(open_any(repo_root), work_dir=Path(work), restore=True, exclude=[])
            guard.start()
            w0 = time.perf_counter()
            for path in worktrees[:count]:
                with guard.busy(path.name, path):
                    pass
            out[f"settle_ms_{count}"] = (time.perf_counter() - w0) * 1000 / max(count, 1)
            guard.scan()  # the first scan after the hand-overs
            w0 = time.perf_counter()
            for _ in range(scans):
                if guard.scan():
                    raise SystemExit("untouched worktrees gave violations")
            scan = (time.perf_counter() - w0) / scans
            out[f"scan_ms_{count}"] = scan * 1000
            out[f"gap_s_{count}"] = guard._interval + scan  # noqa: SLF001 - its pace
            guard.close()
            w0 = time.perf_counter()
            guard.scan(deep=True)
            out[f"final_ms_{count}"] = (time.perf_counter() - w0) * 1000
    return out


def measure_run(manifest: Path) -> dict[str, float]:
    """`swarm run` in this process, the guard's scans timed (the package under test)."""
    from worktree_swarm import cli  # noqa: PLC0415 - the package under test
    from worktree_swarm.guard.watcher import Guard  # noqa: PLC0415

    starts: list[tuple[float, float, bool]] = []
    scan, start = Guard.scan, Guard.start

    def started(self: Guard) -> None:
        start(self)
        starts.append((time.monotonic(), 0.0, False))  # the baselines: checked from here

    def timed(self: Guard, *, deep: bool = False) -> list[Violation]:
        began = time.monotonic()
        try:
            return scan(self, deep=deep)
        finally:
            starts.append((began, time.monotonic() - began, deep))

    # Wrapping the real methods in place: mypy forbids assigning to a method, but still checks
    # (as [assignment]) that each wrapper's signature fits.
    Guard.scan = timed  # type: ignore[method-assign]
    Guard.start = started  # type: ignore[method-assign]
    w0 = time.monotonic()
    code = cli.main(["run", str(manifest)])
    wall = time.monotonic() - w0
    # From the baselines to the last scan, which starts once every task has ended.
    periodic = [b for b, _, _ in starts]
    gaps = sorted(b - a for a, b in itertools.pairwise(periodic)) or [0.0]
    return {
        "exit": float(code),
        "run_wall_s": wall,
        "scans": float(len(periodic) - 2),
        "max_gap_s": gaps[-1],
        "p99_gap_s": gaps[int(0.99 * (len(gaps) - 1))],
        "last_scan_ms": 1000 * next((d for _, d, deep in reversed(starts) if deep), 0.0),
        "max_scan_ms": 1000 * max((d for _, d, deep in starts if not deep), default=0.0),
    }


def run_manifest(repo: Path, tasks: int, jobs: int) -> Path:
    agent = ["sh", "-c", 'echo done > "$SWARM_TASK_ID.txt"']
    lines = [f"[defaults]\nagent = {json.dumps(agent)}\njobs = {jobs}\n"]
    lines += [f'[[task]]\nid = "t{i}"\nprompt = "work"\n' for i in range(tasks)]
    manifest = repo.parent / "tasks.toml"
    manifest.write_text("\n".join(lines))
    return manifest


def measure(repo_root: Path, scans: int, idle: float) -> dict[str, float]:
    """Run in the process whose sys.path has the package under test."""
    from worktree_swarm.guard.watcher import Guard  # noqa: PLC0415 - the package under test

    repo = open_any(repo_root)
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
        # The guard at its own pace, as during a run whose agents sleep.
        c0, w0 = cpu(), time.perf_counter()
        guard.watch_in_background()
        time.sleep(idle)
        guard.close()
        idle_share = (cpu() - c0) / (time.perf_counter() - w0)
    return {
        "baseline_wall_s": base_wall,
        "baseline_cpu_s": base_cpu,
        "scan_wall_s": scan_wall,
        "scan_cpu_s": scan_cpu,
        "idle_core_share": idle_share,
    }


def run_child(package_root: Path, repo_root: Path, args: list[str]) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(package_root)}
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(repo_root), *args],
        env=env,
        cwd=package_root,
        capture_output=True,
        text=True,
        check=True,
    )
    measured: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return measured


def show(name: str, m: dict[str, float]) -> None:
    print(
        f"{name:>7}: baseline {m['baseline_wall_s']:.2f} s wall / {m['baseline_cpu_s']:.2f} s CPU; "
        f"scan {m['scan_wall_s'] * 1000:.0f} ms wall / {m['scan_cpu_s'] * 1000:.0f} ms CPU; "
        f"idle {m['idle_core_share'] * 100:.2f}% of a core"
    )


def show_count(name: str, m: dict[str, float], counts: list[int]) -> None:
    for count in counts:
        print(
            f"{name:>7}: {count:4d} finished worktrees: hand-over {m[f'settle_ms_{count}']:.0f} "
            f"ms each; scan {m[f'scan_ms_{count}']:.0f} ms; user's checkout checked every "
            f"{m[f'gap_s_{count}']:.2f} s; last scan {m[f'final_ms_{count}']:.0f} ms"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--scans", type=int, default=10)
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of idle watching")
    parser.add_argument("--worktrees", type=int, nargs="*", default=[0, 100, 500])
    parser.add_argument("--run", type=int, default=0, help="tasks of a real swarm run (0: none)")
    parser.add_argument("--jobs", type=int, default=32)
    parser.add_argument("--before", help="a commit of this repository to compare with")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--count", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--manifest", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child and args.manifest:
        os.chdir(args.child)
        print(json.dumps(measure_run(Path(args.manifest))))
        return 0
    if args.child and args.count:
        print(json.dumps(measure_count(Path(args.child), args.worktrees, args.scans)))
        return 0
    if args.child:
        print(json.dumps(measure(Path(args.child), args.scans, args.idle)))
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
        small = Path(tmp) / "small" / "repo"
        make_repo(small, 100)
        make_worktrees(small, max(args.worktrees, default=0))
        packages = [("now", HERE)]
        old = Path(tmp) / "old"
        if args.before:
            subprocess.run(
                ["git", "worktree", "add", "-q", "--detach", str(old), args.before],
                cwd=HERE,
                check=True,
            )
            packages.append(("before", old))
        results = {}
        try:
            for name, root in packages:
                big = run_child(root, repo, ["--scans", str(args.scans), "--idle", str(args.idle)])
                counts = [str(c) for c in args.worktrees]
                many = run_child(
                    root, small, ["--count", "--scans", str(args.scans), "--worktrees", *counts]
                )
                results[name] = {**big, **many}
                show(name, big)
                show_count(name, many, args.worktrees)
                if args.run:
                    run_repo = Path(tmp) / f"run-{name}" / "repo"
                    make_repo(run_repo, 100)
                    manifest = run_manifest(run_repo, args.run, args.jobs)
                    ran = run_child(root, run_repo, ["--manifest", str(manifest)])
                    results[name].update(ran)
                    print(
                        f"{name:>7}: swarm run of {args.run} tasks at --jobs {args.jobs}: "
                        f"{ran['run_wall_s']:.1f} s (exit {ran['exit']:.0f}), "
                        f"{ran['scans']:.0f} scans, pause between scans max "
                        f"{ran['max_gap_s']:.2f} s, p99 {ran['p99_gap_s']:.2f} s; longest scan "
                        f"{ran['max_scan_ms']:.0f} ms; last scan {ran['last_scan_ms']:.0f} ms"
                    )
        finally:
            if args.before:
                subprocess.run(
                    ["git", "worktree", "remove", "--force", str(old)], cwd=HERE, check=False
                )
        if args.before:
            now, before = results["now"], results["before"]
            for key in sorted(now):
                if before.get(key):
                    print(
                        f"{key}: {now[key]:.4g} now, {before[key]:.4g} before: "
                        f"{now[key] / before[key]:.2f}x"
                    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
