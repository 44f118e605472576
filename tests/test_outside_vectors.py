"""Writes outside a worktree by ways no event tells of, or that break git there, are caught.

Real runs of the real CLI: an agent writes your checkout through a hard link it made in its own
worktree (no inotify event names your checkout), or writes garbage over a finished sibling's
index (every git command there, the guard's and `swarm clean`'s, fails on it). Each is blamed
on its agent and put back.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from tests.conftest import git
from tests.test_guard import events, run_victim_then_bad
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


# Writes garbage over the index of the finished task "victim".
INDEX_BREAKER = """
import pathlib, subprocess
common = subprocess.run(['git', 'rev-parse', '--git-common-dir'], capture_output=True,
                        text=True, check=True).stdout.strip()
(pathlib.Path(common) / 'worktrees' / 'victim' / 'index').write_bytes(b'DIRC not an index')
pathlib.Path('own.txt').write_text('own\\n')
"""


def test_a_finished_siblings_index_made_unreadable_is_put_back_and_blamed(
    repo: Path, write_agent: AgentFactory
) -> None:
    victim = write_agent("import pathlib\npathlib.Path('victim.txt').write_text('work\\n')\n")
    out = run_victim_then_bad(repo, victim, write_agent(INDEX_BREAKER))
    assert out.returncode == 1, out.stdout + out.stderr
    rows = status_json(repo)
    assert rows["victim"]["state"] == "done"
    assert rows["bad"]["state"] == "failed", rows["bad"]  # it ended done, nobody blamed
    assert rows["bad"]["reason"] == (
        "wrote outside its worktree: its staged changes in task victim's worktree; restored"
    )
    assert [(w["where"], w["suspects"]) for w in events(repo, "outside_write")] == [
        ("victim", ["bad"])
    ]
    worktree = repo.parent / "repo.swarm" / "victim"
    assert git(worktree, "status", "--porcelain") == ""  # git reads its index again
    cleaned = swarm(repo, "clean", "--yes")
    assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
    assert not os.path.lexists(worktree)
    assert git(repo, "show", "swarm/victim:victim.txt") == "work"


# Names git quotes or a command line could take for options, and links out of the worktree.
ODD_NAMES = """
import os
t = os.environ['SWARM_TASK_ID'].encode()
for name in (b'new\\nline', b'tab\\tname', b'-rf', b'--stat', b'odd\\xff\\xfe'):
    with open(name + b'-' + t, 'wb') as f:
        f.write(b'content\\n')
os.symlink('/', b'root-' + t)
os.symlink(os.path.expanduser('~'), b'home-' + t)
"""


def test_odd_names_and_links_out_are_one_line_each_and_merge_and_clean_follow_no_link(
    repo: Path, write_agent: AgentFactory
) -> None:
    home = Path(os.environ["HOME"])
    (home / ".bashrc").write_text("yours\n")
    agent = " ".join(write_agent(ODD_NAMES))
    out = swarm(repo, "run", "--agent", agent, "-t", "a=p", "-t", "b=p")
    assert out.returncode == 0, out.stdout + out.stderr
    names = swarm(repo, "diff", "a", "--name-only")
    assert names.returncode == 0, names.stderr
    listed = [line.strip() for line in names.stdout.splitlines()[1:]]
    assert listed == [
        "--stat-a", "-rf-a", "home-a", '"new\\nline-a"', '"odd\\377\\376-a"', "root-a",
        '"tab\\tname-a"',
    ]  # fmt: skip
    assert status_json(repo)["a"]["files_changed"] == 7
    merged = swarm(repo, "merge")
    assert merged.returncode == 0, merged.stdout + merged.stderr
    assert "2 merged, 0 conflicted" in merged.stdout
    cleaned = swarm(repo, "clean", "--yes", "--force")
    assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
    assert not (repo.parent / "repo.swarm").exists()
    assert (home / ".bashrc").read_text() == "yours\n"
