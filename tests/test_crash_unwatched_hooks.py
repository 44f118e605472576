"""Your linked worktrees' hooks directories, judged after a manager was killed.

A relative ``core.hooksPath`` (husky 9's ``.husky/_``) names a directory in each of your
checkouts, watched with them. `swarm resume` and `swarm stop` judge what changed there while no
manager watched: the hooks of a worktree you removed meanwhile with `git worktree remove` went
with it (nobody's write), a moved one's are looked at where it is now, and a hook an agent
planted is put back, and said so, whatever git did to your worktrees meanwhile.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import git
from tests.test_crash import WAITS_UNWATCHED, _agent_ends_unwatched
from tests.test_run import status_json, swarm
from tests.test_trust import husky_hooks

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
@pytest.mark.parametrize("how", ["remove", "move"])
def test_your_worktree_removed_or_moved_while_no_manager_watched_takes_its_hooks_unblamed(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]], how: str, end: str
) -> None:
    mine, moved = tmp_path / "mine", tmp_path / "moved"
    git(repo, "worktree", "add", "-q", "-b", "mine", str(mine))
    husky_hooks(repo, mine)
    gate = tmp_path / "gate"
    agent = [*write_agent(WAITS_UNWATCHED), str(gate)]
    started = (repo.parent / "repo.swarm" / "a" / "a.txt").exists

    def meanwhile() -> None:  # yours, while the agent works on unwatched
        git(repo, "worktree", how, str(mine), *([str(moved)] if how == "move" else []))

    _agent_ends_unwatched(repo, agent, gate, started=started, meanwhile=meanwhile)
    out = swarm(repo, end)

    assert out.returncode == 0, out.stdout + out.stderr
    assert "git's own files" not in out.stdout + out.stderr
    assert status_json(repo)["a"]["state"] == "done"
    assert not os.path.lexists(mine)  # its hooks not made again in a folder of their own
    assert str(mine) not in git(repo, "worktree", "list")
    if how == "move":
        assert (moved / ".husky" / "_" / "pre-commit").read_text() == "#!/bin/sh\n"
        assert git(moved, "rev-parse", "--abbrev-ref", "HEAD").strip() == "mine"


@pytest.mark.parametrize("end", ["resume", "stop"])
@pytest.mark.parametrize("how", ["remove", "move"])
def test_a_hook_planted_in_your_worktree_while_no_manager_watched_is_put_back(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]], how: str, end: str
) -> None:
    # Beside a worktree of yours removed meanwhile (whose hooks go unjudged), or in yours moved
    # meanwhile, where it is now.
    mine, other = tmp_path / "mine", tmp_path / "other"
    git(repo, "worktree", "add", "-q", "-b", "mine", str(mine))
    git(repo, "worktree", "add", "-q", "-b", "other", str(other))
    husky_hooks(repo, mine, other)
    moved = tmp_path / "moved"
    there = moved if how == "move" else mine
    gate, ran = tmp_path / "gate", tmp_path / "planted-hook-ran"
    hook = there / ".husky" / "_" / "post-commit"
    agent = [*write_agent(PLANTS_HOOK), str(gate), str(hook), str(ran)]
    started = (repo.parent / "repo.swarm" / "a" / "a.txt").exists

    def meanwhile() -> None:  # yours, while the agent works on unwatched
        if how == "move":
            git(repo, "worktree", "move", str(mine), str(moved))
        else:
            git(repo, "worktree", "remove", str(other))

    _agent_ends_unwatched(repo, agent, gate, started=started, meanwhile=meanwhile)
    out = swarm(repo, end)

    assert out.returncode == (1 if end == "resume" else 0), out.stdout + out.stderr
    row = status_json(repo)["a"]
    assert row["state"] == "failed", row
    assert f"git's own files {hook}; restored" in str(row["reason"]), row["reason"]
    assert not hook.exists()
    assert (there / ".husky" / "_" / "pre-commit").read_text() == "#!/bin/sh\n"
    assert not os.path.lexists(other if how == "remove" else mine)  # not made again
    git(there, "commit", "-q", "--allow-empty", "-m", "yours")  # the post-commit hook's turn
    assert not ran.exists()
    assert git(repo, "show", "swarm/a:a.txt") == "work"  # its work kept on its branch


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
