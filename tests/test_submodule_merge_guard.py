"""Submodules checked out by a merge's resolver or checks, or by a task's own steps.

Their git dirs go in the admin dir of the worktree they are checked out in: the merge
worktree's are the merge's to fill (a task's are its own, its setup and checks included),
while a setting planted in another worktree's is undone.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import add_submodule, git, make_repo
from tests.mergekit import LINES, RUN_ID, Brancher, conflicting, merge_results
from tests.test_run import manifest, status_json, swarm

BRANCH = "swarm/integration-" + RUN_ID
POPULATE = "git -c protocol.file.allow=always submodule update --init -q"

# Resolves the conflict by keeping both sides, checks out the submodule where it works.
RESOLVER = """
import pathlib, re, subprocess, sys
for path in pathlib.Path('.').glob('*.txt'):
    text = path.read_text()
    if '<<<<<<<' in text:
        path.write_text(re.sub(r'^(<<<<<<<|=======|>>>>>>>).*\\n', '', text, flags=re.M))
subprocess.run(['git', '-c', 'protocol.file.allow=always', 'submodule', 'update', '--init',
                '-q'], check=True)
"""

# ... and plants a program in the submodule's git dir of your linked worktree `scratch`.
PLANT = """
common = pathlib.Path(subprocess.run(['git', 'rev-parse', '--path-format=absolute',
                                      '--git-common-dir'], capture_output=True, text=True,
                                     check=True).stdout.strip())
config = common / 'worktrees' / 'scratch' / 'modules' / 'lib' / 'config'
config.write_text(config.read_text() + '[core]\\n\\tfsmonitor = touch MARKER; false #\\n')
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository with the submodule `lib` (a local repository) and f.txt to conflict on."""
    made = make_repo(tmp_path / "repo", {"f.txt": LINES, "README.md": "mine\n"})
    add_submodule(made, tmp_path / "lib-origin")
    return made


@pytest.fixture
def brancher(repo: Path) -> Iterator[Brancher]:
    b = Brancher(repo)
    yield b
    b.close()


@pytest.mark.long
@pytest.mark.parametrize("into", [False, True])
def test_a_resolver_and_checks_checking_out_submodules_in_the_merge_worktree_merge(
    repo: Path, brancher: Brancher, tmp_path: Path, into: bool
) -> None:
    # Each was taken for an outside write, put back (the submodule's git dir deleted under
    # its checkout) and the merge undone.
    agent = tmp_path / "resolver.py"
    agent.write_text(RESOLVER)
    base = conflicting(repo, brancher, agent)
    git(repo, "branch", "release", base)

    out = swarm(repo, "merge", "--resolve", "--check", POPULATE,
                *(["--into", "release"] if into else []), "--json")  # fmt: skip

    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["merged"] == ["first", "second"]
    target = "release" if into else BRANCH
    assert git(repo, "show", f"{target}:f.txt").splitlines()[4:6] == ["five first", "five second"]
    if not into:  # the integration worktree stays: its submodule works
        worktree = repo.parent / "repo.swarm" / f"_integration-{RUN_ID}"
        assert git(worktree / "lib", "rev-parse", "HEAD") == git(repo, "rev-parse", "HEAD:lib")


@pytest.mark.long
def test_a_resolver_planting_in_another_worktrees_submodule_git_dir_is_caught(
    repo: Path, brancher: Brancher, tmp_path: Path
) -> None:
    # Your linked worktree `scratch` has lib checked out; the resolver, checking out its own,
    # plants a core.fsmonitor in scratch's: that alone is reported, and undone.
    git(brancher.scratch, "-c", "protocol.file.allow=always", "submodule", "update", "--init",
        "-q")  # fmt: skip
    config = repo / ".git" / "worktrees" / "scratch" / "modules" / "lib" / "config"
    marker = tmp_path / "planted-program-ran"
    agent = tmp_path / "resolver.py"
    agent.write_text(RESOLVER + PLANT.replace("MARKER", str(marker)))
    conflicting(repo, brancher, agent)
    before = config.read_bytes()

    out = swarm(repo, "merge", "--resolve", "--json")

    assert out.returncode == 1, out.stdout + out.stderr
    second = json.loads(out.stdout)["results"][1]
    assert second["outcome"] == "failed"
    assert second["reason"] == (
        "the agent resolving its conflicts wrote outside the merge worktree: git's own files"
        " worktrees/scratch/modules/lib/config (put back); merge undone"
    )
    assert merge_results(repo) == {"first": "merged", "second": "failed"}
    assert config.read_bytes() == before
    subprocess.run(["git", "status"], cwd=brancher.scratch / "lib", check=True,
                   capture_output=True)  # fmt: skip
    assert not marker.exists()


@pytest.mark.parametrize("step", ["setup", "checks"])
def test_a_tasks_setup_or_checks_checking_out_submodules_is_no_outside_write(
    repo: Path, write_agent: Callable[[str], list[str]], step: str
) -> None:
    # They count as its agent: the git dirs they make in its admin dir are the task's.
    agent = json.dumps(write_agent("import pathlib\npathlib.Path('own.txt').write_text('x\\n')\n"))
    text = f'[[task]]\nid = "t"\nprompt = "p"\nagent = {agent}\n{step} = [{json.dumps(POPULATE)}]\n'

    out = swarm(repo, "run", manifest(repo, text))

    assert out.returncode == 0, out.stdout + out.stderr
    assert status_json(repo)["t"]["state"] == "done"
    worktree = repo.parent / "repo.swarm" / "t"
    assert git(worktree / "lib", "rev-parse", "HEAD") == git(repo, "rev-parse", "HEAD:lib")
