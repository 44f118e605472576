"""`swarm merge` and `swarm clean --yes` SIGKILLed (with their git and check processes) at
seeded random moments, then run again: the promises of docs/merge.md and docs/clean.md hold.

See tests/mergecrashkit.py for the trial and its invariants; a longer series:
`python benchmarks/bench_merge_crash.py`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.mergecrashkit import Template, clean_trial, measure, merge_trial, prepare_clean


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("command", ["merge", "merge --into", "clean"])
def test_a_merge_or_clean_killed_at_random_moments_is_finished_by_the_next_one(
    tmp_path: Path, command: str
) -> None:
    t = Template(tmp_path)
    t.build()
    if command == "clean":
        prepare_clean(t)
        duration = measure(t, ["clean", "--yes"])
        trials = [clean_trial(t, seed, duration) for seed in range(6)]
    else:
        into = command.endswith("--into")
        argv = ["merge", "--resolve", *(["--into", "release"] if into else [])]
        duration = measure(t, argv)
        trials = [merge_trial(t, seed, duration, into=into) for seed in range(6)]
    assert not [(x.seed, x.violations) for x in trials if x.violations], trials
