"""Crash trials: the manager SIGKILLed at seeded random moments, then `swarm resume`.

python benchmarks/bench_crash.py [--trials 20] [--first-seed 0] [--steps 3] [--workdir DIR]

Each trial: a fresh repository, 8 tasks (fake Claude Code agents that log every write they
make), `swarm run --jobs 4` in its own process group, which is SIGKILLed (with the git and
check processes it runs) after a seeded number of recorded events (0-33 of about 34)
plus up to 0.3 s; then `swarm status`, `swarm resume`, and the
count of tasks done, logged writes missing from their branch, agents launched twice and
processes left in the repository or its worktrees. A baseline run without a kill is timed
first, so the trial times read as a ratio of an undisturbed run.
"""

from __future__ import annotations

import argparse
import collections
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.crashkit import TASKS, run_trial


def _where(killed_in: list[str]) -> str:
    """Name the kill moment from what the manager's group ran then."""
    if not killed_in:
        return "run loop / agents"
    if any(k in {"git worktree", "git read-tree"} for k in killed_in):
        return "worktree creation"
    if any(k in {"git add", "git commit", "git diff"} for k in killed_in):
        return "checkpoint"
    if "sleep" in killed_in:
        return "checks"
    return "other git"


def main() -> int:
    """Run the trials and print one line per trial, the totals and the baseline ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=3, help="writes per agent")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="swarm-crash-", dir=args.workdir))
    git_version = subprocess.run(
        ["git", "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    print(
        f"{platform.node()} {platform.platform()} python {platform.python_version()} {git_version}"
    )

    start = time.monotonic()
    base = run_trial(workdir / "baseline", -1, steps=args.steps, kill=False)
    baseline = time.monotonic() - start
    print(f"baseline (no kill): {baseline:.1f}s, {base.done}/{TASKS} done")

    totals: collections.Counter[str] = collections.Counter()
    moments: collections.Counter[str] = collections.Counter()
    ratios = []
    for seed in range(args.first_seed, args.first_seed + args.trials):
        start = time.monotonic()
        trial = run_trial(workdir / f"trial{seed}", seed, steps=args.steps)
        took = time.monotonic() - start
        ratios.append(took / baseline)
        where = _where(trial.killed_in) if trial.saw_manager_gone else "after the run ended"
        if not trial.run_recorded:
            where = "before the run was recorded"
        moments[where] += 1
        totals.update(
            trials=1,
            tasks=TASKS,
            done=trial.done,
            lost=trial.lost_writes,
            double=trial.double_runs,
            survivors=trial.survivors,
            resume_failed=int(trial.resume_code != 0),
        )
        print(
            f"seed {seed:3d} kill {trial.kill_at:4.2f}s in {where:<28} done {trial.done}/{TASKS} "
            f"lost {trial.lost_writes} double {trial.double_runs} survivors {trial.survivors} "
            f"{took:5.1f}s" + (f" NOT DONE {trial.not_done}" if trial.not_done else "")
        )
    print(
        f"trials {totals['trials']}, tasks {totals['tasks']}, done {totals['done']}, "
        f"lost writes {totals['lost']}, double runs {totals['double']}, "
        f"survivors {totals['survivors']}, resume failures {totals['resume_failed']}"
    )
    print("kill moments: " + ", ".join(f"{k} {n}" for k, n in moments.most_common()))
    print(
        f"trial time / baseline: mean {statistics.mean(ratios):.2f}, "
        f"max {max(ratios):.2f} (kill + status + resume vs one undisturbed run)"
    )
    ok = totals["done"] == totals["tasks"] and not (
        totals["lost"] or totals["double"] or totals["survivors"] or totals["resume_failed"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
