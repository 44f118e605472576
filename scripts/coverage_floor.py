"""Fail when any module of the package is less covered than the floor.

coverage.py enforces one total (``fail_under``); this reads its JSON report
(``coverage json`` or pytest's ``--cov-report=json:FILE``) and holds every module to the floor:

    python3 scripts/coverage_floor.py FILE [PERCENT]

One line per module under the floor, exit 1; otherwise one summary line, exit 0.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

FLOOR = 85.0
# Run only by the slow tests (a real Ray cluster: `scripts/check --slow`), and in part inside
# Ray's worker processes, which coverage does not follow: not held to the floor, named instead.
NOT_HELD = {
    "worktree_swarm/run/ray_exec.py": "the Ray executor: slow tests only",
    "worktree_swarm/run/ray_attempt.py": "the Ray executor's hold on its actors: slow tests only",
    "worktree_swarm/run/ray_attempt_run.py": "the Ray executor's one attempt: slow tests only",
    "worktree_swarm/run/ray_resume.py": "the Ray executor resumed after a crash: slow tests only",
    "worktree_swarm/run/ray_cluster.py": "the Ray executor's cluster and head: slow tests mostly",
    "worktree_swarm/run/ray_actors.py": "the Ray executor's actors: slow tests only",
    "worktree_swarm/run/ray_preflight.py": "the Ray executor's checks of a run: slow tests mostly",
    "worktree_swarm/run/ray_stop.py": "the Ray executor's stop without a manager: slow tests only",
    "worktree_swarm/run/ray_node.py": "the Ray executor's node side: inside Ray workers",
    "worktree_swarm/run/ray_node_clone.py": "the node side's clone and pushes: inside Ray workers",
    "worktree_swarm/run/ray_node_host.py": "the node itself, its dirs: inside Ray workers",
    "worktree_swarm/run/ray_leftovers.py": "asks every node of a live Ray cluster: slow tests only",
    "worktree_swarm/cleanup/orphan_nodes.py": "doctor's look at Ray nodes: slow tests only",
}


def main(argv: list[str]) -> int:
    """Check the report named in *argv*; the exit code."""
    if not 1 <= len(argv) <= 2:  # noqa: PLR2004 - FILE and an optional floor
        sys.stderr.write("usage: coverage_floor.py COVERAGE_JSON [PERCENT]\n")
        return 2
    floor = float(argv[1]) if len(argv) == 2 else FLOOR  # noqa: PLR2004
    try:
        report = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
        files = {name: data["summary"]["percent_covered"] for name, data in report["files"].items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        sys.stderr.write(f"coverage_floor: cannot read a coverage JSON report {argv[0]}: {exc}\n")
        return 2
    low = sorted((pct, name) for name, pct in files.items() if pct < floor and name not in NOT_HELD)
    for pct, name in low:
        print(f"{name}: {pct:.1f}% covered, under the {floor:g}% floor")
    if low:
        return 1
    total = report["totals"]["percent_covered"]
    held = len(set(files) - set(NOT_HELD))
    print(f"coverage {total:.0f}% in total, every one of {held} modules at {floor:g}% or more")
    for name in sorted(set(files) & set(NOT_HELD)):
        print(f"  not held: {name} ({files[name]:.0f}%): {NOT_HELD[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
