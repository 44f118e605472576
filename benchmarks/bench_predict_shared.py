"""Conflict prediction when every branch edits the same file, against the all-pairs baseline.

    python benchmarks/bench_predict_shared.py [--branches 100]

Each of N branches edits its own line of one common file (lines three apart, so no pair
really conflicts), plus one pair that edits the same line. Baseline, in the same run: one
``git merge-tree`` per pair of branches that share a path (what prediction cost before hunks
were compared). Prints both times, their ratio and the merge-tree count.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import subprocess
import tempfile
import time
from pathlib import Path

from worktree_swarm.git.repo import open_repo
from worktree_swarm.infra import parallel
from worktree_swarm.merge import conflicts

IDENT = ["-c", "user.name=bench", "-c", "user.email=bench@localhost"]


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *IDENT, *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()


def make(root: Path, n: int) -> tuple[str, list[conflicts.Branch]]:
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    rows = [f"entry {i}\n" for i in range(3 * n + 3)]
    (root / "CHANGES.txt").write_text("".join(rows))
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "base")
    base = git(root, "rev-parse", "HEAD")
    branches = []
    for i in range(n):
        edited = list(rows)
        line = 3 * i + 1 if i != n - 1 else 1  # the last branch edits branch 0's line
        edited[line] = f"entry {line} changed by branch {i}\n"
        blob = subprocess.run(
            ["git", "hash-object", "-w", "--stdin"], cwd=root, input="".join(edited),
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        tree = subprocess.run(
            ["git", "mktree"], cwd=root, input=f"100644 blob {blob}\tCHANGES.txt\n",
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        tip = git(root, "commit-tree", tree, "-p", base, "-m", f"branch {i}")
        branches.append(conflicts.Branch(name=f"b{i}", tip=tip, base=base))
    return base, branches


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--branches", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "repo"
        base, branches = make(root, args.branches)
        repo = open_repo(root)
        start = time.perf_counter()
        prediction = conflicts.predict(repo, branches, target=base)
        swarm_s = time.perf_counter() - start
        start = time.perf_counter()
        pairs = list(itertools.combinations(branches, 2))
        found = list(  # the same thread pool as the prediction, for a fair baseline
            parallel.in_order(
                lambda p: conflicts.merge_tree(repo, p[0].tip, p[1].tip), pairs, workers=4
            )
        )
        baseline_s = time.perf_counter() - start
    real = sum(1 for f in found if f is not None)
    print(f"machine: {platform.platform()}, {platform.python_version()}")
    print(f"branches: {args.branches}, conflicting pairs: {len(prediction.pairs)} (real {real})")
    print(f"prediction: {swarm_s:.2f} s, {prediction.merge_trees} merge-trees")
    print(f"all-pairs baseline: {baseline_s:.2f} s, {len(pairs)} merge-trees")
    print(f"ratio: {swarm_s / baseline_s:.3f}x of the baseline")
    return 0 if len(prediction.pairs) == real else 1


if __name__ == "__main__":
    raise SystemExit(main())
