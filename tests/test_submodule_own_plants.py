"""A program planted in a worktree's own submodule git dir: judged though the rest is taken.

A task's agent and a merge's resolver may check out submodules in their worktree (the git
dirs go in its admin dir's ``modules/``), but a setting or hook there that makes git run a
program would run with your own `git status` in that worktree later: it is reported and put
back, and the submodule stays checked out.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import add_submodule, git, make_repo
from tests.mergekit import LINES, RUN_ID, Brancher, conflicting
from tests.test_run import argv_toml, manifest, status_json, swarm, wait_for
from tests.test_submodule_merge_guard import RESOLVER as CHECKS_OUT_LIB

# Checks out lib, commits inside it, then plants argv[2] (fsmonitor, hook or nothing).
AGENT = """
import pathlib, shutil, subprocess, sys
marker, plant = sys.argv[1:]
def git(*args):
    return subprocess.run(['git', '-c', 'protocol.file.allow=always', *args], check=True,
                          capture_output=True, text=True).stdout.strip()
git('submodule', 'update', '--init', 'lib')
pathlib.Path('lib/README.md').write_text('committed inside the submodule\\n')
git('-C', 'lib', '-c', 'user.name=a', '-c', 'user.email=a@b', 'commit', '-qam', 'lib')
git('-C', 'lib', 'config', 'remote.origin.tagOpt', '--no-tags')  # ordinary: taken
gitdir = pathlib.Path(git('-C', 'lib', 'rev-parse', '--absolute-git-dir'))
if plant == 'fsmonitor':
    git('-C', 'lib', 'config', 'core.fsmonitor', f'touch {marker}; false #')
if plant == 'hook':
    hook = gitdir / 'hooks' / 'post-checkout'
    hook.write_text(f'#!/bin/sh\\ntouch {marker}\\n')
    hook.chmod(0o755)
if plant == 'update':  # run by your `git submodule update` of a submodule of lib's
    git('-C', 'lib', 'config', 'submodule.inner.update', f'!touch {marker}')
if plant == 'difftool':  # run by your `git difftool` in lib
    git('-C', 'lib', 'config', 'diff.tool', 'vimdiff')
    git('-C', 'lib', 'config', 'difftool.vimdiff.path', str(marker))
if plant == 'lfs':  # run by the git-lfs of your global config, on each file it filters
    git('-C', 'lib', 'config', 'lfs.extension.x.clean', f'touch {marker}; cat')
if plant == 'lfs-newline':  # git-lfs reads `git config -l` by lines: the value's second
    git('-C', 'lib', 'config', 'user.note', f'x\\nlfs.extension.nl.clean=touch {marker}')
if plant == 'lfs-subsection':  # ... and splits each at its first `=`: an extension's clean
    git('-C', 'lib', 'config', f'lfs.extension.eq.clean=touch {marker}.y', 'z')
if plant == 'attributes':
    git('-C', 'lib', 'config', 'core.attributesFile', str(gitdir.parent / 'planted-attributes'))
if plant == 'commondir':  # lib's git then reads a copy's config, with an fsmonitor
    copy = gitdir.parent / 'copy'
    shutil.copytree(gitdir, copy)
    git('config', '--file', str(copy / 'config'), 'core.fsmonitor', f'touch {marker}; false #')
    (gitdir / 'commondir').write_text(f'{copy}\\n')
pathlib.Path('own.txt').write_text('own work\\n')
"""


@pytest.fixture
def super_repo(tmp_path: Path) -> Path:
    """A repository with the submodule `lib` (a local repository) and f.txt to conflict on."""
    repo = make_repo(tmp_path / "repo", {"f.txt": LINES})
    add_submodule(repo, tmp_path / "lib-origin")
    return repo


@pytest.mark.parametrize(
    ("plant", "label"),
    [
        ("fsmonitor", "modules/lib/config"),
        ("hook", "hooks/post-checkout"),
        ("update", "modules/lib/config"),
        ("attributes", "modules/lib/config"),
        ("difftool", "modules/lib/config"),
        ("lfs", "modules/lib/config"),
        ("lfs-newline", "modules/lib/config"),
        ("lfs-subsection", "modules/lib/config"),
        ("commondir", "modules/lib/commondir"),
    ],
)
def test_a_program_planted_in_a_tasks_own_submodule_git_dir_is_put_back(
    super_repo: Path,
    tmp_path: Path,
    write_agent: Callable[[str], list[str]],
    plant: str,
    label: str,
) -> None:
    # Taken as found with the rest of the task's own submodule: your `git status` in its
    # worktree ran the fsmonitor.
    marker = tmp_path / "planted-program-ran"
    agent = argv_toml([*write_agent(AGENT), str(marker), plant])
    text = f'[[task]]\nid = "t"\nprompt = "p"\nagent = {agent}\n'

    assert swarm(super_repo, "run", manifest(super_repo, text)).returncode == 1

    row = status_json(super_repo)["t"]
    assert row["state"] == "failed", row
    assert label in str(row["reason"]), row
    (config,) = (super_repo / ".git" / "worktrees").glob("*/modules/lib/config")
    for planted in ("fsmonitor", "\tupdate = ", "attributesfile", "\tpath = ", "\tclean = "):
        assert planted not in config.read_text().lower()
    assert marker.name not in config.read_text()
    assert not (config.parent / "hooks" / "post-checkout").exists()
    assert not (config.parent / "commondir").exists()
    worktree = super_repo.parent / "repo.swarm" / "t"
    assert (worktree / "lib" / "README.md").read_text() == "committed inside the submodule\n"
    subprocess.run(["git", "status"], cwd=worktree, check=True, capture_output=True)
    subprocess.run(["git", "status"], cwd=worktree / "lib", check=True, capture_output=True)
    assert not marker.exists()


def test_a_task_checking_out_and_configuring_its_own_submodule_stays_done(
    super_repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]]
) -> None:
    agent = argv_toml([*write_agent(AGENT), str(tmp_path / "marker"), "nothing"])
    text = f'[[task]]\nid = "t"\nprompt = "p"\nagent = {agent}\n'

    out = swarm(super_repo, "run", manifest(super_repo, text))

    assert out.returncode == 0, out.stdout + out.stderr
    assert status_json(super_repo)["t"]["state"] == "done"
    (config,) = (super_repo / ".git" / "worktrees").glob("*/modules/lib/config")
    assert "tagOpt" in config.read_text()


# Resolves the conflict and checks out lib (as the merge tests' resolver), then plants an
# fsmonitor in lib's git dir (the merge worktree's own).
RESOLVER = (
    CHECKS_OUT_LIB
    + """
subprocess.run(['git', '-C', 'lib', 'config', 'core.fsmonitor', 'touch MARKER; false #'],
               check=True)
"""
)


@pytest.mark.long
def test_a_resolver_planting_in_the_merge_worktrees_own_submodule_git_dir_is_caught(
    super_repo: Path, tmp_path: Path
) -> None:
    brancher = Brancher(super_repo)
    try:
        marker = tmp_path / "planted-program-ran"
        agent = tmp_path / "resolver.py"
        agent.write_text(RESOLVER.replace("MARKER", str(marker)))
        conflicting(super_repo, brancher, agent)

        out = swarm(super_repo, "merge", "--resolve", "--json")
    finally:
        brancher.close()

    assert out.returncode == 1, out.stdout + out.stderr
    second = json.loads(out.stdout)["results"][1]
    assert second["outcome"] == "failed"
    assert "modules/lib/config (put back)" in second["reason"], second
    worktree = super_repo.parent / "repo.swarm" / f"_integration-{RUN_ID}"
    for config in (super_repo / ".git" / "worktrees").glob("*/modules/lib/config"):
        assert "fsmonitor" not in config.read_text()
    if (worktree / "lib").is_dir():
        subprocess.run(["git", "status"], cwd=worktree, check=True, capture_output=True)
    assert not marker.exists()


POPULATE = "git -c protocol.file.allow=always submodule update --init -q"
# Does its work, then waits for the gate (argv[1]).
WAITS = """
import pathlib, sys, time
pathlib.Path('b.txt').write_text('work\\n')
while not pathlib.Path(sys.argv[1]).exists():
    time.sleep(0.02)
"""


@pytest.mark.long
def test_a_merge_beside_a_live_run_checks_out_its_submodules_unblamed(
    super_repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # The run's guard never heard of the merge's worktree: the check's submodule git dir
    # was taken for the run's agent's outside write, and deleted.
    first = argv_toml(write_agent("import pathlib\npathlib.Path('m.txt').write_text('m\\n')\n"))
    text = f'[[task]]\nid = "m"\nprompt = "p"\nagent = {first}\n'
    assert swarm(super_repo, "run", manifest(super_repo, text)).returncode == 0
    (merged_run,) = (p.name for p in (super_repo / ".git" / "swarm" / "runs").iterdir())
    gate = tmp_path / "gate"
    waits = argv_toml([*write_agent(WAITS), str(gate)])
    text = f'[[task]]\nid = "b"\nprompt = "p"\nagent = {waits}\n'
    with (tmp_path / "run.log").open("wb") as log:
        live = subprocess.Popen(
            [sys.executable, "-m", "worktree_swarm.cli", "run", manifest(super_repo, text)],
            cwd=super_repo, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        wait_for((super_repo.parent / "repo.swarm" / "b" / "b.txt").exists, what="agent b")
        out = swarm(super_repo, "merge", "--run", merged_run, "--check", POPULATE, "--json")
        assert out.returncode == 0, out.stdout + out.stderr
    finally:
        gate.touch()
        live.wait()

    assert live.returncode == 0, (tmp_path / "run.log").read_text()
    assert status_json(super_repo)["b"]["state"] == "done"
    worktree = super_repo.parent / "repo.swarm" / f"_integration-{merged_run}"
    assert git(worktree / "lib", "rev-parse", "HEAD") == git(super_repo, "rev-parse", "HEAD:lib")
