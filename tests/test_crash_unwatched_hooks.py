"""Hooks planted while no manager watched, beside your linked worktrees moved meanwhile.

`swarm resume` and `swarm stop` judge what changed while the killed manager did not watch: a
hook an agent planted is put back, and said so, whatever git did to your worktrees meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import git
from tests.test_crash import _agent_ends_unwatched
from tests.test_run import status_json, swarm

# Does its work, waits for the gate (argv[1]), plants a hook at argv[2] that touches argv[3].
PLANTS_HOOK = """
import pathlib, sys, time
pathlib.Path('a.txt').write_text('work\\n')
while not pathlib.Path(sys.argv[1]).exists():
    time.sleep(0.02)
hook = pathlib.Path(sys.argv[2])
hook.write_text(f'#!/bin/sh\\ntouch {sys.argv[3]}\\n')
hook.chmod(0o755)
"""


@pytest.mark.parametrize("end", ["resume", "stop"])
def test_a_plant_put_back_beside_your_worktree_moved_while_unwatched_is_said_restored(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]], end: str
) -> None:
    # The put-back was checked against the killed manager's baseline whole: your worktree's
    # ties, at the place it was moved to, differed from it, and the plant put back was said
    # "left as found".
    mine = tmp_path / "mine"
    git(repo, "worktree", "add", "-q", "-b", "mine", str(mine))
    gate, ran = tmp_path / "gate", tmp_path / "planted-hook-ran"
    hook = repo / ".git" / "hooks" / "post-commit"
    agent = [*write_agent(PLANTS_HOOK), str(gate), str(hook), str(ran)]
    started = (repo.parent / "repo.swarm" / "a" / "a.txt").exists

    def move() -> None:
        git(repo, "worktree", "move", str(mine), str(tmp_path / "moved"))

    _agent_ends_unwatched(repo, agent, gate, started=started, meanwhile=move)
    out = swarm(repo, end)

    assert out.returncode == (1 if end == "resume" else 0), out.stdout + out.stderr
    row = status_json(repo)["a"]
    assert "git's own files hooks/post-commit; restored" in str(row["reason"]), row["reason"]
    assert not hook.exists()
    assert git(tmp_path / "moved", "rev-parse", "--abbrev-ref", "HEAD").strip() == "mine"
