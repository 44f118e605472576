"""An agent that deletes its worktree's index keeps its work: the checkpoint makes the index
alone again from HEAD where an agent ran, while a checkout swarm's own git left half-written
(no agent ran there since) is still checked out whole, never committed as work."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import git, hang_git_at, make_repo
from tests.test_crash import _agent_ends_unwatched, _kill_group, _manager
from tests.test_run import argv_toml, manifest, status_json, swarm, wait_for
from worktree_swarm.core.errors import CommandError
from worktree_swarm.git import gitfiles

WriteAgent = Callable[[str], list[str]]

# Edits a tracked file, deletes another, writes a new one, deletes its worktree's index; with
# an argument, waits for that file to exist first.
DELETES_INDEX = """
import os, pathlib, subprocess, sys, time
while len(sys.argv) > 1 and not pathlib.Path(sys.argv[1]).exists():
    time.sleep(0.02)
pathlib.Path('README.md').write_text('edited\\n')
pathlib.Path('gone.txt').unlink()
pathlib.Path('new.txt').write_text('new\\n')
admin = subprocess.run(['git', 'rev-parse', '--absolute-git-dir'], capture_output=True,
                       text=True, check=True).stdout.strip()
os.remove(os.path.join(admin, 'index'))
"""


@pytest.fixture
def files_repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", {"README.md": "hello\n", "gone.txt": "g\n", "k.txt": "k\n"})


def _has_the_agents_work(repo: Path) -> None:
    files = git(repo, "ls-tree", "-r", "--name-only", "swarm/a").split("\n")
    assert sorted(files) == ["README.md", "k.txt", "new.txt"]  # gone.txt deleted, k.txt kept
    assert git(repo, "show", "swarm/a:README.md") == "edited"
    assert git(repo, "show", "swarm/a:new.txt") == "new"


def test_an_agent_that_deletes_its_index_has_its_edits_committed(
    files_repo: Path, write_agent: WriteAgent
) -> None:
    agent = argv_toml(write_agent(DELETES_INDEX))
    text = f'[[task]]\nid = "a"\nprompt = "x"\nagent = {agent}\n'
    out = swarm(files_repo, "run", manifest(files_repo, text))
    assert out.returncode == 0, out.stdout + out.stderr
    assert status_json(files_repo)["a"]["state"] == "done"
    _has_the_agents_work(files_repo)
    worktree = files_repo.parent / "repo.swarm" / "a"
    assert (worktree / "README.md").read_text() == "edited\n"
    assert git(worktree, "status", "--porcelain") == ""


@pytest.mark.long
@pytest.mark.parametrize("settle", ["resume", "stop"])
def test_an_index_deleted_while_no_manager_watched_keeps_the_agents_edits(
    files_repo: Path, tmp_path: Path, write_agent: WriteAgent, settle: str
) -> None:
    # The agent ends (its index deleted) after its manager was killed: `swarm resume` (or
    # `swarm stop`) repairs the checkout before committing it, from the store's attempt.
    gate = tmp_path / "gate"
    agent = [*write_agent(DELETES_INDEX), str(gate)]
    runs = files_repo / ".git" / "swarm" / "runs"
    started = lambda: any(runs.rglob("attempt-1.exit.json"))  # noqa: E731
    _agent_ends_unwatched(files_repo, agent, gate, started=started)
    worktree = files_repo.parent / "repo.swarm" / "a"
    assert gitfiles.checkout_incomplete(worktree)
    out = swarm(files_repo, settle)
    assert out.returncode == 0, out.stdout + out.stderr
    assert status_json(files_repo)["a"]["state"] == "done"
    _has_the_agents_work(files_repo)


@pytest.mark.long
def test_a_checkout_killed_as_a_retry_makes_a_removed_worktree_again_is_made_whole(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_agent: WriteAgent
) -> None:
    # An agent ran in that worktree before: its new checkout, killed half-way, is swarm's
    # own all the same, and none of its missing files is committed as a deletion.
    agent = write_agent(
        "import pathlib, sys\npathlib.Path('t1.txt').write_text('work')\nsys.exit(3)\n"
    )
    text = f'[[task]]\nid = "t1"\nprompt = "x"\nagent = {argv_toml(agent)}\n'
    out = swarm(repo, "run", manifest(repo, text))
    assert out.returncode == 1, out.stdout + out.stderr
    worktree = repo.parent / "repo.swarm" / "t1"
    shutil.rmtree(worktree)
    hung = hang_git_at(tmp_path, monkeypatch, "read-tree")
    run_id = json.loads(swarm(repo, "status", "--json").stdout)["run_id"]
    proc = _manager(repo, "retry", "t1", "--run", run_id)
    wait_for(hung.exists, timeout=120, what="the checkout to start")
    _kill_group(proc)
    assert gitfiles.checkout_incomplete(worktree)
    out = swarm(repo, "resume")
    assert out.returncode == 1, out.stdout + out.stderr
    assert status_json(repo)["t1"]["state"] == "failed"  # its agent's second attempt failed too
    files = git(repo, "ls-tree", "-r", "--name-only", "swarm/t1").split("\n")
    assert sorted(files) == ["README.md", "t1.txt"]
    assert (worktree / "README.md").read_text() == "hello\n"


def _worktree_on_t(tmp_path: Path, files: dict[str, str], *, checkout: bool = False) -> Path:
    """A new repository of *files* and its worktree on branch `t`, made with no checkout
    (only its `.git`) unless *checkout*."""
    repo = make_repo(tmp_path / "repo", files)
    worktree = tmp_path / "wt"
    options = [] if checkout else ["--no-checkout"]
    git(repo, "worktree", "add", "-q", *options, "-b", "t", str(worktree))
    return worktree


def test_a_checkout_mark_left_beside_a_whole_checkout_costs_no_agent_its_work(
    tmp_path: Path,
) -> None:
    # swarm killed once `read-tree -u` was done, before it took its mark away (a worktree a
    # resume made again): the mark stayed, and an index the agent later deleted had HEAD
    # checked out whole over its edits.
    worktree = _worktree_on_t(tmp_path, {"a.txt": "hello\n"})
    gitfiles.populate(worktree, None)
    admin = gitfiles.git_dir(worktree)
    (admin / gitfiles.POPULATING).touch()  # as the kill left it
    assert not gitfiles.repair_checkout(worktree)  # as the resume does before the agent runs
    (worktree / "a.txt").write_text("the agent's edit\n")
    (admin / "index").unlink()
    assert gitfiles.repair_checkout(worktree, agent_ran=True)
    assert (worktree / "a.txt").read_text() == "the agent's edit\n"
    assert git(worktree, "status", "--porcelain") == "M a.txt"


def test_a_worktree_made_again_and_never_checked_out_is_checked_out_whole(
    tmp_path: Path,
) -> None:
    # A worktree an agent had run in, made again (the guard putting back one a sibling
    # removed) and killed before its checkout began: no index, no mark, only `.git`. Its
    # index made alone from HEAD, `swarm clean` committed every file as deleted.
    worktree = _worktree_on_t(tmp_path, {"a.txt": "hello\n"})
    assert gitfiles.repair_checkout(worktree, agent_ran=True)
    assert (worktree / "a.txt").read_text() == "hello\n"
    assert git(worktree, "status", "--porcelain") == ""


def test_a_whole_checkout_cut_short_is_whole_again_where_an_agent_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The repair's own `read-tree -u` (a worktree made again, holding only `.git`) was not
    # marked: killed with part of the files written, the next repair made the index alone,
    # and the checkpoint committed every file not written yet as deleted.
    worktree = _worktree_on_t(tmp_path, {"a.txt": "a\n", "b.txt": "b\n"})
    hang_git_at(tmp_path, monkeypatch, "read-tree", then="echo a > a.txt; exit 137")
    with pytest.raises(CommandError):  # killed with one file of two written
        gitfiles.repair_checkout(worktree, agent_ran=True)
    assert sorted(p.name for p in worktree.iterdir()) == [".git", "a.txt"]
    assert gitfiles.repair_checkout(worktree, agent_ran=True)
    assert (worktree / "b.txt").read_text() == "b\n"
    assert git(worktree, "status", "--porcelain") == ""


def test_a_removals_mark_goes_with_the_whole_checkout_it_asked_for(tmp_path: Path) -> None:
    # A removal cut short (its index set aside, files gone) is checked out whole; its mark
    # stayed, and an index an agent deleted later had HEAD checked out over its edits.
    worktree = _worktree_on_t(tmp_path, {"a.txt": "hello\n", "b.txt": "b\n"}, checkout=True)
    admin = gitfiles.git_dir(worktree)
    (admin / "index").replace(admin / gitfiles.REMOVING_INDEX)
    (worktree / "b.txt").unlink()
    assert gitfiles.repair_checkout(worktree, agent_ran=True)
    assert (worktree / "b.txt").read_text() == "b\n"  # the removal's deletion is no work
    (worktree / "a.txt").write_text("the agent's edit\n")
    (admin / "index").unlink()
    assert gitfiles.repair_checkout(worktree, agent_ran=True)
    assert (worktree / "a.txt").read_text() == "the agent's edit\n"
    assert git(worktree, "status", "--porcelain") == "M a.txt"
