"""Crash trials of `swarm merge` and `swarm clean --yes`, killed at seeded random moments.

python benchmarks/bench_merge_crash.py {merge,into,clean} [--trials 25] [--first-seed 0]

One real `swarm run` of five tasks (one conflict its agent resolves, checks, one check that
fails in the merge) is made once and copied back for every trial; the command runs in a
session of its own and the whole group is SIGKILLed half the time at a uniform moment of its
measured duration, half just after one of its git processes starts; then the command runs
again and the invariants of tests/mergecrashkit.py are checked. One line per trial: the kill
moment, the git steps it cut, the second command's exit code and any violation.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.mergecrashkit import Template, clean_trial, measure, merge_trial, prepare_clean


def main() -> int:
    """Run the trials; exit 1 when any found a violation."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["merge", "into", "clean"])
    parser.add_argument("--trials", type=int, default=25)
    parser.add_argument("--first-seed", type=int, default=0)
    args = parser.parse_args()
    t = Template(Path(tempfile.mkdtemp(prefix="swarm-merge-crash-")))
    t.build()
    if args.command == "clean":
        prepare_clean(t)
        argv = ["clean", "--yes"]
    else:
        argv = ["merge", "--resolve", *(["--into", "release"] if args.command == "into" else [])]
    duration = measure(t, argv)
    print(f"{' '.join(argv)}: {duration[0]:.2f}s, {duration[1]} git processes undisturbed")
    bad = 0
    for seed in range(args.first_seed, args.first_seed + args.trials):
        if args.command == "clean":
            trial = clean_trial(t, seed, duration)
        else:
            trial = merge_trial(t, seed, duration, into=args.command == "into")
        where = "after it ended" if trial.ended_first else ", ".join(trial.killed_in) or "Python"
        print(f"seed {seed:3d} kill {trial.kill_at:5.2f}s in {where}; again: exit "
              f"{trial.second_code}")  # fmt: skip
        for line in trial.violations:
            print(f"    VIOLATION {line}")
        bad += bool(trial.violations)
    print(f"{args.trials} trials, {bad} with violations")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
