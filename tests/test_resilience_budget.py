"""End to end: `--max-cost-usd` passed while agents still run.

The README promises that once the run has cost that much "no new attempt starts and running
ones finish": the budget is never a reason to kill an agent at work or to lose what it did.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import git
from tests.test_resilience import HEADER, calls, fake_claude, plan  # noqa: F401 - its fixture
from tests.test_run import branch_file, manifest, status_json, swarm_bg, wait_for


def test_an_agent_running_when_the_budget_is_passed_finishes_and_its_work_lands(
    repo: Path,
    fake_claude: Path,  # noqa: F811 - the fixture imported above
) -> None:
    # Two slots: `a` (ranked first: `d` waits for it) works until told to go on; `b` and `c`
    # finish at once at $0.50 each, so the first of them to end passes the $0.40 budget while
    # `a` still works. `d` is stopped by the run's turn that sees the budget passed.
    plan(fake_claude, "a", "wait")
    text = (
        HEADER
        + "".join(f'[[task]]\nid = "{t}"\nprompt = "do {t}"\n' for t in ("a", "b", "c"))
        + '[[task]]\nid = "d"\nprompt = "do d"\ndepends_on = ["a"]\n'
    )
    proc = swarm_bg(repo, "run", "--jobs", "2", "--max-cost-usd", "0.4", manifest(repo, text))
    try:
        wait_for((fake_claude / "a.pid").exists, what="a's agent at work")

        def budget_acted_on() -> bool:
            return status_json(repo)["d"]["state"] == "stopped"

        wait_for(budget_acted_on, what="the budget passed and acted on")
        assert status_json(repo)["a"]["state"] == "running"
        assert (fake_claude / "a.pid").exists()  # still waiting for its go: at work
        (fake_claude / "go").touch()
        code = proc.wait(timeout=120)
    finally:
        (fake_claude / "go").touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert code == 1  # the task the budget kept from starting did not succeed
    rows = status_json(repo)
    # `a` ran to its end, once, and its last words are on its branch: not stopped for the budget.
    assert rows["a"]["state"] == "done", rows["a"]
    assert len(calls(fake_claude, "a")) == 1
    assert branch_file(repo, "swarm/a", "a.txt") == "finished"
    # Of `b` and `c`, the one that had not started never does, nor does `d`.
    assert sorted(str(rows[t]["state"]) for t in ("b", "c")) == ["done", "stopped"], rows
    (never,) = [t for t in ("b", "c") if rows[t]["state"] == "stopped"]
    assert str(rows[never]["reason"]).startswith("budget reached"), rows[never]
    assert calls(fake_claude, never) == []
    assert rows["d"]["reason"] == "budget reached before it started"
    assert calls(fake_claude, "d") == []
    assert not git(repo, "status", "--porcelain")  # and the checkout is as it was
