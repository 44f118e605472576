"""Work an agent leaves in a submodule: no commit of the task's branch can hold it.

A task worktree gets each submodule as an empty directory (as `git worktree add` does); files
written there are seen by no `git status`, and edits inside a submodule the agent populated
are that repository's to commit. Either way the task must not end as done, and `swarm clean`
must not delete the work with the worktree.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import git, make_repo
from tests.test_run import argv_toml, manifest, status_json, swarm

AgentFactory = Callable[[str], list[str]]

# Writes its own file, then does *action* to the submodule `lib`.
AGENT = """
import pathlib, subprocess, sys
pathlib.Path('own.txt').write_text('own work\\n')
def git(*args):
    subprocess.run(['git', '-c', 'protocol.file.allow=always', *args], check=True,
                   capture_output=True)
action = sys.argv[1]
if action == 'write-into-empty':
    pathlib.Path('lib/NOTES.md').write_text('agent notes\\n')
if action in ('populate', 'populate-and-edit'):
    git('submodule', 'update', '--init', 'lib')
if action == 'populate-and-edit':
    pathlib.Path('lib/README.md').write_text('edited inside the submodule\\n')
"""


@pytest.fixture
def super_repo(tmp_path: Path) -> Path:
    """A repository with the submodule `lib` (a local repository)."""
    lib = make_repo(tmp_path / "lib-origin", {"README.md": "lib\n"})
    repo = make_repo(tmp_path / "repo")
    git(repo, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(lib), "lib")
    git(repo, "commit", "-q", "-m", "add lib")
    return repo


def run_agent(
    repo: Path, write_agent: AgentFactory, action: str
) -> subprocess.CompletedProcess[str]:
    agent = argv_toml([*write_agent(AGENT), action])
    return swarm(
        repo, "run", manifest(repo, f'[[task]]\nid = "t"\nprompt = "p"\nagent = {agent}\n')
    )


@pytest.mark.parametrize("action", ["write-into-empty", "populate-and-edit"])
def test_work_left_in_a_submodule_fails_the_task_and_clean_keeps_it(
    super_repo: Path, write_agent: AgentFactory, action: str
) -> None:
    assert run_agent(super_repo, write_agent, action).returncode == 1
    row = status_json(super_repo)["t"]
    assert row["state"] == "failed"
    assert "left work in submodule lib" in str(row["reason"])
    assert git(super_repo, "show", "swarm/t:own.txt") == "own work"  # the rest is committed
    worktree = super_repo.parent / "repo.swarm" / "t"
    left = worktree / "lib" / ("NOTES.md" if action == "write-into-empty" else "README.md")
    before = left.read_text()
    out = swarm(super_repo, "clean", "--yes")
    assert "submodule lib holds work no commit records" in out.stdout
    assert left.read_text() == before
    # Told to, clean removes it (the user saved what mattered, or does not want it).
    assert swarm(super_repo, "clean", "--yes", "--force").returncode == 0
    assert not worktree.exists()


def test_a_submodule_populated_and_left_as_it_was_is_no_work_left(
    super_repo: Path, write_agent: AgentFactory
) -> None:
    assert run_agent(super_repo, write_agent, "populate").returncode == 0
    assert status_json(super_repo)["t"]["state"] == "done"
