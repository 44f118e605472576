"""Writes outside a worktree by ways no event tells of are caught.

Real runs of the real CLI: an agent writes your checkout through a hard link it made in its own
worktree (no inotify event names your checkout). It is blamed on its agent and put back.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.conftest import git
from tests.test_guard import events
from tests.test_run import status_json, swarm

AgentFactory = Callable[[str], list[str]]

# Links your checkout's README.md into its worktree, and writes your file through that name.
HARD_LINKER = """
import os, pathlib, sys
os.link(pathlib.Path(sys.argv[1]) / 'README.md', 'mine.txt')
with open('mine.txt', 'a') as f:
    f.write('written through a hard link\\n')
"""


def test_a_write_into_your_checkout_through_a_hard_link_fails_its_agent_and_is_undone(
    repo: Path, write_agent: AgentFactory
) -> None:
    agent = " ".join([*write_agent(HARD_LINKER), str(repo)])
    out = swarm(repo, "run", "--agent", agent, "-t", "bad=p")
    assert out.returncode == 1, out.stdout + out.stderr
    row = status_json(repo)["bad"]
    assert row["state"] == "failed", row  # it was taken for your own edit: the task done
    assert str(row["reason"]).startswith(
        "wrote outside its worktree: files README.md in the main checkout; restored"
    ), row
    assert [(w["where"], w["suspects"]) for w in events(repo, "outside_write")] == [
        ("main checkout", ["bad"])
    ]
    assert (repo / "README.md").read_text() == "hello\n"
    assert git(repo, "status", "--porcelain") == ""
    linked = repo.parent / "repo.swarm" / "bad" / "mine.txt"
    assert (repo / "README.md").stat().st_ino != linked.stat().st_ino  # no longer one file
    assert git(repo, "show", "swarm/bad:mine.txt") == "hello\nwritten through a hard link"
