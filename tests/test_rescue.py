"""Rescues: files saved under refs/swarm/rescued/ before swarm deletes or resets them."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import git, make_repo
from tests.mergekit import RUN_ID, Brancher, record_run
from tests.test_clean import edits_done, report, worktree_paths
from tests.test_filtered_objects import stored_bytes
from tests.test_run import swarm
from worktree_swarm.git import quarantine

AgentFactory = Callable[[str], list[str]]
MARKER = b"plaintext-secret-4f2a9c"


def _reachable_bytes(repo: Path, ref: str) -> bytes:
    """Every object reachable from *ref*, its content as git stores it, concatenated."""
    listed = git(repo, "rev-list", "--objects", ref).split("\n")
    names = "".join(line.split(" ", 1)[0] + "\n" for line in listed if line)
    out = subprocess.run(
        ["git", "cat-file", "--batch"], cwd=repo, input=names.encode(), capture_output=True,
        check=True,
    )  # fmt: skip
    return out.stdout


def _rescued(repo: Path) -> list[str]:
    return git(repo, "for-each-ref", "--format=%(refname)", "refs/swarm/rescued/").split()


def test_a_rescue_leaves_out_a_file_whose_filter_swarms_git_never_runs(
    repo: Path, write_agent: AgentFactory
) -> None:
    # git-crypt's clean filter, from the repository's config: swarm's git never runs it, so
    # the file on disk (decrypted) would be saved in the clear.
    root = edits_done(repo, write_agent).parent
    git(repo, "config", "filter.crypt.clean", "rev")
    stray = root / "stray"
    stray.mkdir()
    (stray / ".gitattributes").write_text("secret.txt filter=crypt\n")
    (stray / "secret.txt").write_bytes(b"password " + MARKER + b"\n")
    (stray / "notes.txt").write_text("notes nobody committed\n")

    found = report(repo, "doctor", "--yes", code=1)

    result = str(found[str(stray)]["result"])
    assert not found[str(stray)]["fixed"]
    assert "left out secret.txt (filter crypt)" in result, result
    assert (stray / "secret.txt").read_bytes() == b"password " + MARKER + b"\n"  # kept
    (rescued,) = _rescued(repo)
    assert f"saved as {rescued}" in result
    assert git(repo, "show", f"{rescued}:notes.txt") == "notes nobody committed"
    assert MARKER not in _reachable_bytes(repo, rescued)
    assert MARKER not in stored_bytes(repo)  # hashed into no object, not even a loose one

    (stray / "secret.txt").rename(repo.parent / "secret.txt")  # moved out, as it says
    found = report(repo, "doctor", "--yes", code=0)
    assert found[str(stray)]["fixed"]
    assert not stray.exists()
    assert _rescued(repo) == [rescued]  # the same files: saved under the same ref
    assert git(repo, "show", f"{rescued}:notes.txt") == "notes nobody committed"


@pytest.mark.long
def test_a_rescue_saves_the_other_files_past_more_filtered_files_than_a_command_line_holds(
    repo: Path, write_agent: AgentFactory
) -> None:
    # `git lfs install --local` puts a filter in the repository's config: a big LFS checkout
    # left behind has tens of thousands of files under it, each left out by name.
    root = edits_done(repo, write_agent).parent
    git(repo, "config", "filter.crypt.clean", "rev")
    stray = root / "stray"
    (stray / "lfs").mkdir(parents=True)
    (stray / ".gitattributes").write_text("*.bin filter=crypt\n")
    pad = "-asset" * 36  # long names: enough of them to pass ARG_MAX are few, git is quick
    for i in range(os.sysconf("SC_ARG_MAX") // 200):  # each exclusion takes over 200 bytes
        (stray / "lfs" / f"{i:05}{pad}.bin").write_bytes(b"x")
    (stray / "notes.txt").write_text("notes nobody committed\n")

    found = report(repo, "doctor", "--yes", code=1)

    result = str(found[str(stray)]["result"])
    assert "Argument list too long" not in result
    assert f"left out lfs/00000{pad}.bin (filter crypt)" in result
    (rescued,) = _rescued(repo)
    assert f"saved as {rescued}" in result
    assert git(repo, "show", f"{rescued}:notes.txt") == "notes nobody committed"
    assert git(repo, "ls-tree", "--name-only", rescued) == ".gitattributes\nnotes.txt"


@pytest.mark.parametrize("by", ["clean", "merge"])
def test_undoing_a_merge_keeps_a_changed_file_whose_filter_swarms_git_never_runs(
    tmp_path: Path, by: str
) -> None:
    # An integration worktree whose branch is gone: `swarm clean` and `swarm merge` save what
    # it holds aside, then remove it. Its secret.txt, decrypted there, is neither saved nor lost.
    repo = make_repo(tmp_path / "repo", {".gitattributes": "secret.txt filter=crypt\n",
                                         "secret.txt": "ciphertext\n"})  # fmt: skip
    git(repo, "config", "filter.crypt.clean", "rev")
    base = git(repo, "rev-parse", "HEAD")
    brancher = Brancher(repo)
    try:
        brancher.branch("swarm/one", base, {"one.txt": "1\n"})
    finally:
        brancher.close()
    record_run(repo, [("one", base)], base=base)
    assert swarm(repo, "merge", "one").returncode == 0
    (worktree,) = repo.parent.glob("repo.swarm/_integration-*")
    (worktree / "secret.txt").write_bytes(MARKER + b"\n")
    (worktree / "notes.txt").write_text("my notes\n")
    git(repo, "update-ref", "-d", f"refs/heads/swarm/integration-{RUN_ID}")

    if by == "clean":
        found = report(repo, "clean", "--yes", code=1)
        assert not found[str(worktree)]["fixed"]
        said = str(found[str(worktree)]["result"])
    else:
        out = swarm(repo, "merge", "one")
        assert out.returncode != 0, out.stdout
        said = out.stdout + out.stderr

    assert "left out secret.txt (filter crypt)" in said, said
    assert (worktree / "secret.txt").read_bytes() == MARKER + b"\n"
    (rescued,) = _rescued(repo)
    assert f"the rest is saved as {rescued}" in said
    assert git(repo, "show", f"{rescued}:notes.txt") == "my notes"
    # Without a parent (clean: the branch is gone) it is not in the commit; with one
    # (merge: the run's base), as that one holds it.
    kept = git(repo, "ls-tree", "--name-only", rescued, "secret.txt")
    assert kept == ("secret.txt" if by == "merge" else "")
    assert MARKER not in _reachable_bytes(repo, rescued)
    assert MARKER not in stored_bytes(repo)  # hashed into no object, not even a loose one


@pytest.mark.parametrize("dotgit", ["naming nothing", "not git's"])
def test_doctor_saves_and_removes_a_task_worktree_whose_git_file_names_no_git_dir(
    repo: Path, write_agent: AgentFactory, dotgit: str
) -> None:
    # Git keeps it registered (its admin dir still names that .git file), never prunes it,
    # and every git command there fails: checkpoints of it, and `swarm clean`, too.
    path = edits_done(repo, write_agent)
    tip = git(repo, "rev-parse", "swarm/edits")
    (path / "later.txt").write_text("typed after the run\n")
    gone = f"gitdir: {repo / '.git' / 'worktrees' / 'none'}\n"
    (path / ".git").write_text(gone if dotgit == "naming nothing" else "garbage\n")

    kept = report(repo, "clean", "--yes", code=1)[str(path)]
    assert "`swarm doctor --yes` saves its files" in str(kept["fix"])
    plan = report(repo, "doctor", code=1)
    assert plan[str(path)]["action"] == "rescue_worktree"
    assert "git cannot work in it" in str(plan[str(path)]["reason"])
    assert (path / "later.txt").exists()

    found = report(repo, "doctor", "--yes", code=0)

    assert found[str(path)]["fixed"], found[str(path)]
    assert not path.exists()
    assert worktree_paths(repo) == [str(repo)]
    (rescued,) = _rescued(repo)
    assert git(repo, "show", f"{rescued}:later.txt") == "typed after the run"
    assert git(repo, "rev-parse", f"{rescued}^") == tip  # `git diff ref^ ref`: what it changed
    assert git(repo, "diff", "--name-only", f"{rescued}^", rescued) == "later.txt"
    assert git(repo, "rev-parse", "swarm/edits") == tip  # the branch: as for other leftovers
    assert swarm(repo, "doctor").stdout.strip() == "nothing to clean"


def test_doctor_keeps_a_locked_task_worktree_whose_git_file_names_no_git_dir(
    repo: Path, write_agent: AgentFactory
) -> None:
    # Locked: git never prunes it (its drive may be unmounted, its .git file the old
    # mount's). Rescued, its directory was deleted, then the prune refused.
    path = edits_done(repo, write_agent)
    git(repo, "worktree", "lock", "--reason", "on a USB drive", str(path))
    (path / ".git").write_text(f"gitdir: {repo / '.git' / 'worktrees' / 'none'}\n")

    found = report(repo, "doctor", "--yes", code=1)[str(path)]

    assert found["action"] == "keep", found
    unlock = f"kept: it is locked (on a USB drive); `git worktree unlock {path}`"
    assert found["fix"] == unlock, found
    assert (path / "README.md").exists()
    assert str(path) in worktree_paths(repo)
    assert _rescued(repo) == []


def test_a_rescue_keeps_a_repository_inside_the_directory_with_its_commits(
    repo: Path, write_agent: AgentFactory
) -> None:
    # Saved, it would be a gitlink: its commit's id, its objects in no repository of yours.
    root = edits_done(repo, write_agent).parent
    stray = root / "stray"
    nested = stray / "nested"
    nested.mkdir(parents=True)
    git(nested, "init", "-q")
    (nested / "work.txt").write_text("only in the nested repository\n")
    git(nested, "add", "work.txt")
    git(nested, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "nested work")
    commit = git(nested, "rev-parse", "HEAD")
    (stray / "notes.txt").write_text("notes nobody committed\n")

    found = report(repo, "doctor", "--yes", code=1)

    result = str(found[str(stray)]["result"])
    assert not found[str(stray)]["fixed"]
    assert "left out nested: each a repository of its own" in result, result
    assert git(nested, "cat-file", "-t", commit) == "commit"
    assert (nested / "work.txt").read_text() == "only in the nested repository\n"
    (rescued,) = _rescued(repo)
    assert git(repo, "ls-tree", "--name-only", rescued) == "notes.txt"

    nested.rename(repo.parent / "nested")  # moved out, as it says
    found = report(repo, "doctor", "--yes", code=0)
    assert found[str(stray)]["fixed"]
    assert not stray.exists()
    assert git(repo.parent / "nested", "cat-file", "-t", commit) == "commit"


KEY = "sk-ant-api03-" + "q" * 30  # made up: a secret environment variable's value


@pytest.mark.parametrize("place", ["stray directory", "packed", "cut-off worktree"])
def test_a_rescue_leaves_a_file_holding_a_secrets_value_out_of_every_object(
    repo: Path, write_agent: AgentFactory, monkeypatch: pytest.MonkeyPatch, place: str
) -> None:
    # An agent dumped its environment into a file: `swarm doctor --yes` saves the rest of the
    # directory, never that file (not even as an object no commit holds), and keeps it there.
    path = edits_done(repo, write_agent)
    tip = git(repo, "rev-parse", "swarm/edits")
    pad = ""
    if place == "cut-off worktree":  # git cannot work in it: saved as a child of its HEAD
        (path / ".git").write_text(f"gitdir: {repo / '.git' / 'worktrees' / 'none'}\n")
    else:
        path = path.parent / "stray"
        path.mkdir()
    if place == "packed":  # `add` streams both files into one pack: the kept one packed anew
        git(repo, "config", "core.bigFileThreshold", "1k")
        pad = "pad " * 600
    (path / "env.txt").write_text(f"{pad}ANTHROPIC_API_KEY={KEY}\n")
    (path / "notes.txt").write_text(f"{pad}notes nobody committed\n")
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)  # the environment of the swarm it starts

    found = report(repo, "doctor", "--yes", code=1)

    result = str(found[str(path)]["result"])
    assert not found[str(path)]["fixed"]
    assert "left out env.txt: each holds the value of a secret" in result, result
    assert KEY not in result
    assert (path / "env.txt").read_text() == f"{pad}ANTHROPIC_API_KEY={KEY}\n"  # kept
    (rescued,) = _rescued(repo)
    assert f"saved as {rescued}" in result
    assert git(repo, "show", f"{rescued}:notes.txt") == f"{pad}notes nobody committed"
    assert "env.txt" not in git(repo, "ls-tree", "-r", "--name-only", rescued).split()
    if place == "cut-off worktree":
        assert git(repo, "rev-parse", f"{rescued}^") == tip
    assert KEY.encode() not in stored_bytes(repo)  # hashed into no object, not even a loose one
    assert not list((repo / ".git").glob(f"{quarantine.APART_PREFIX}*"))  # gone with it
    git(repo, "fsck", "--no-dangling")

    (path / "env.txt").rename(repo.parent / "env.txt")  # moved out, as it says
    found = report(repo, "doctor", "--yes", code=0)
    assert found[str(path)]["fixed"]
    assert not path.exists()
    assert _rescued(repo) == [rescued]  # the same files: saved under the same ref


def test_a_rescue_knows_the_secrets_of_the_tasks_in_the_store(
    repo: Path, write_agent: AgentFactory
) -> None:
    # The value is a task's own (its `env`), not in the environment of `swarm doctor`: a
    # stray directory holding it (a killed run's worktree, its files written by hand) is
    # saved without it all the same.
    value = "sk-ant-api03-" + "w" * 30
    agent = write_agent("open('work.txt', 'w').write('work')\n")
    text = (
        f'[[task]]\nid = "s"\nprompt = "x"\nagent = {agent!r}\nenv = {{ API_TOKEN = "{value}" }}\n'
    )
    (repo.parent / "swarm.toml").write_text(text.replace("'", '"'))
    assert swarm(repo, "run", str(repo.parent / "swarm.toml")).returncode == 0
    stray = repo.parent / "repo.swarm" / "stray"
    stray.mkdir()
    (stray / "env.txt").write_text(f"API_TOKEN={value}\n")
    (stray / "notes.txt").write_text("notes\n")
    found = report(repo, "doctor", "--yes", code=1)
    assert "left out env.txt: each holds the value of a secret" in str(found[str(stray)]["result"])
    assert value.encode() not in stored_bytes(repo)
    assert (stray / "env.txt").exists()
