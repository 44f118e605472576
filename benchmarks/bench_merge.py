"""Conflict prediction and merge order against the naive merge loop, in the same run.

    python benchmarks/bench_merge.py [--branches 30] [--repeat 3]

Generates a repository with 200 files and N task branches of varied size (each adds its own
file and edits a hunk of a shared one). A known set of pairs edit the same lines: every third
branch conflicts with its neighbour, and "hub" branches conflict with two others each. Measures:

- prediction: ``conflicts.predict`` of the full pairwise matrix plus each branch against the
  target (no checkout touched);
- naive: check out the target in a scratch worktree, ``git merge`` each branch in index order,
  ``git merge --abort`` on conflict; its merge pass is timed, and what landed counted;
- swarm: the real ``merge.merge`` (prediction, order, a merge per branch in its own worktree).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from worktree_swarm.core.models import TaskState
from worktree_swarm.core.paths import store_path
from worktree_swarm.core.task import Task
from worktree_swarm.git.repo import open_repo
from worktree_swarm.infra.store import Store
from worktree_swarm.merge import conflicts, merge, merge_report

RUN_ID = "20240101-000000-beef"
IDENT = ["-c", "user.name=bench", "-c", "user.email=bench@localhost"]


def git(cwd: Path, *args: str, check: bool = True) -> str:
    res = subprocess.run(
        ["git", *IDENT, *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    if check and res.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {res.stderr}")
    return res.stdout.strip()


def lines(n: int, tag: str) -> str:
    return "".join(f"{tag} line {i}\n" for i in range(n))


def conflict_plan(n: int) -> set[tuple[int, int]]:
    """Pairs of branch indexes that edit the same lines."""
    pairs = {(i, i + 1) for i in range(0, n - 1, 3) if i % 6 == 0}
    # Hubs: branch h conflicts with h+1 and h+2 (which do not conflict with each other).
    for hub in range(3, n - 2, 9):
        pairs |= {(hub, hub + 1), (hub, hub + 2)}
    return pairs


def make_repo(root: Path, n: int) -> tuple[str, dict[int, str], set[tuple[int, int]]]:
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    for f in range(200):
        (root / f"src/mod{f:03}.py").parent.mkdir(parents=True, exist_ok=True)
        (root / f"src/mod{f:03}.py").write_text(lines(60, f"mod{f}"))
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "init")
    base = git(root, "rev-parse", "HEAD")
    pairs = conflict_plan(n)
    hot: dict[int, list[tuple[int, int]]] = {i: [] for i in range(n)}
    for k, (a, b) in enumerate(sorted(pairs)):
        # Pair k shares file k's line 10+k: both sides rewrite it differently.
        hot[a].append((k, 1))
        hot[b].append((k, 2))
    scratch = root.parent / "scratch"
    git(root, "worktree", "add", "-q", "--detach", str(scratch), base)
    for i in range(n):
        git(scratch, "checkout", "-q", "--detach", "--force", base)
        (scratch / f"feature{i:02}.py").write_text(lines(20 + 37 * (i % 7), f"feature {i}"))
        shared = scratch / f"src/mod{100 + i:03}.py"
        text = shared.read_text().splitlines(keepends=True)
        text[30] = f"edited by branch {i}\n"
        for k, side in hot[i]:
            target = scratch / f"src/mod{k:03}.py"
            rows = target.read_text().splitlines(keepends=True)
            rows[10] = f"pair {k} side {side}\n"
            target.write_text("".join(rows))
        shared.write_text("".join(text))
        git(scratch, "add", "-A")
        git(scratch, "commit", "-q", "-m", f"branch {i}")
        git(root, "branch", f"swarm/t{i:02}", git(scratch, "rev-parse", "HEAD"))
    git(root, "worktree", "remove", "--force", str(scratch))
    tips = {i: git(root, "rev-parse", f"swarm/t{i:02}") for i in range(n)}
    return base, tips, pairs


def record_run(repo_root: Path, base: str, n: int) -> None:
    repo = open_repo(repo_root)
    settings = {"worktree_root": str(repo_root.parent / "wt"), "commit_author": "b <b@b>"}
    with Store(store_path(repo)) as store:
        store.create_run(
            run_id=RUN_ID,
            base_commit=base,
            repo_root=str(repo_root),
            jobs=1,
            manager=None,
            spec_json=json.dumps(settings),
        )
        rows = [(Task(id=f"t{i:02}", prompt="x"), f"swarm/t{i:02}", "") for i in range(n)]
        store.add_tasks(RUN_ID, rows)
        for i in range(n):
            store.update_task(RUN_ID, f"t{i:02}", state=TaskState.DONE, base_commit=base)


def naive(repo: Path, base: str, n: int, where: Path) -> tuple[float, float, int]:
    """(checkout seconds, merge pass seconds, landed)."""
    t0 = time.perf_counter()
    git(repo, "worktree", "add", "-q", "--detach", str(where), base)
    t1 = time.perf_counter()
    landed = 0
    for i in range(n):
        res = subprocess.run(
            ["git", *IDENT, "merge", "--no-edit", "-q", f"swarm/t{i:02}"],
            cwd=where,
            capture_output=True,
            check=False,
        )
        if res.returncode == 0:
            landed += 1
        else:
            git(where, "merge", "--abort")
    t2 = time.perf_counter()
    git(repo, "worktree", "remove", "--force", str(where))
    return t1 - t0, t2 - t1, landed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--branches", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n = args.branches

    predict_s: list[float] = []
    naive_s: list[float] = []
    checkout_s: list[float] = []
    swarm_s: list[float] = []
    for attempt in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="swarm-bench-merge-") as tmp:
            root = Path(tmp) / "repo"
            base, tips, pairs = make_repo(root, n)
            repo = open_repo(root)
            branches = [conflicts.Branch(name=f"t{i:02}", tip=tips[i], base=base) for i in range(n)]
            t0 = time.perf_counter()
            prediction = conflicts.predict(repo, branches, target=base)
            predict_s.append(time.perf_counter() - t0)
            expected = {(f"t{a:02}", f"t{b:02}") for a, b in pairs}
            if set(prediction.pairs) != expected:
                raise SystemExit(f"prediction {sorted(prediction.pairs)} != {sorted(expected)}")

            checkout, merge_pass, naive_landed = naive(root, base, n, Path(tmp) / "naive")
            checkout_s.append(checkout)
            naive_s.append(merge_pass)

            record_run(root, base, n)
            with Store(store_path(repo)) as store:
                t0 = time.perf_counter()
                report = merge.merge(repo, store, RUN_ID)
                swarm_s.append(time.perf_counter() - t0)
            swarm_landed = len(report.by_outcome(merge_report.MergeOutcome.MERGED))
            if attempt == 0:
                print(f"{n} branches, {len(pairs)} conflicting pairs; prediction ran"
                      f" {prediction.merge_trees} merge-tree processes for"
                      f" {n * (n - 1) // 2} pairs + {n} against the target")  # fmt: skip
                print(f"landed: swarm {swarm_landed}, naive {naive_landed}")

    p, nv = statistics.median(predict_s), statistics.median(naive_s)
    sw, co = statistics.median(swarm_s), statistics.median(checkout_s)
    print(f"machine: {platform.node()} {platform.system()} {platform.release()},"
          f" python {platform.python_version()}, {git(Path('/'), '--version')}")  # fmt: skip
    print(f"prediction (full matrix)       {p * 1000:8.1f} ms")
    print(f"naive merge pass               {nv * 1000:8.1f} ms  (+ checkout {co * 1000:.1f} ms)")
    print(f"swarm merge (predict + merge)  {sw * 1000:8.1f} ms")
    print(f"ratio naive pass / prediction  {nv / p:8.2f}x  (target >= 3)")
    print(f"ratio swarm merge / naive pass {sw / nv:8.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
