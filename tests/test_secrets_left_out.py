"""A file a run's checkpoint left out for a secret is never committed by a later checkpoint.

The later ones (`swarm clean`, `swarm retry --fresh`) may run in a shell without the secret
variable the run had: they cannot find the value in the file, and must not need to.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import git, retried_tip
from tests.test_run import AgentFactory, argv_toml, manifest, status_json, swarm
from worktree_swarm.git import checkpoints, staged
from worktree_swarm.infra import redact

SECRET = "tok_9f8e7d6c5b4a3210Zq"  # noqa: S105 - a made-up token, the test's own

# Dumps the variable into a file, and names another after it; one file of honest work.
LEAKY = (
    "import os, pathlib\n"
    "value = os.environ['SERVICE_TOKEN']\n"
    "pathlib.Path('leak.txt').write_text(f'token={value}\\n')\n"
    "pathlib.Path(f'{value}.txt').write_text('named after it\\n')\n"
    "pathlib.Path('work.txt').write_text('work\\n')\n"
)


def in_objects(repo: Path, value: str) -> bool:
    """Whether any object of *repo* (a file, a name in a tree, a message) holds *value*."""
    every = subprocess.run(
        ["git", "cat-file", "--batch-all-objects", "--batch"],
        cwd=repo, capture_output=True, check=True,
    ).stdout  # fmt: skip
    return value.encode() in every


@pytest.mark.parametrize("later", [("clean", "--yes"), ("retry", "--fresh", "a")])
def test_a_later_checkpoint_without_the_secret_in_its_environment_leaves_the_files_out(
    repo: Path,
    write_agent: AgentFactory,
    monkeypatch: pytest.MonkeyPatch,
    later: tuple[str, ...],
) -> None:
    monkeypatch.setenv("SERVICE_TOKEN", SECRET)
    agent = write_agent(LEAKY)
    text = f'[defaults]\nagent = {argv_toml(agent)}\n[[task]]\nid = "a"\nprompt = "x"\n'
    out = swarm(repo, "run", manifest(repo, text))
    assert out.returncode == 1, out.stdout + out.stderr
    reason = str(status_json(repo)["a"]["reason"])
    assert reason.startswith("wrote the value of a secret into leak.txt"), reason
    assert not in_objects(repo, SECRET)
    worktree = repo.parent / "repo.swarm" / "a"
    # A new shell, without the variable: it knows nothing of the value.
    monkeypatch.delenv("SERVICE_TOKEN")
    swarm(repo, *later)
    assert not in_objects(repo, SECRET), git(repo, "log", "--all", "--stat")
    if later[0] == "clean":  # kept, as a clean that knows the value keeps it
        assert (worktree / "leak.txt").read_text() == f"token={SECRET}\n"
        assert "work.txt" in git(repo, "ls-tree", "--name-only", "swarm/a")
    else:  # the tip before the fresh start, kept for the retry, holds the work alone
        assert git(repo, "ls-tree", "--name-only", retried_tip(repo)).split() == [
            "README.md",
            "work.txt",
        ]


def test_a_link_an_agent_plants_as_the_note_is_never_written_through(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The note lives where an agent outside --sandbox can write: planted as a symlink to a
    # file of yours, swarm's checkpoint replaces the link and never writes your file.
    worktree = repo.parent / "repo.swarm" / "a"
    git(repo, "worktree", "add", "-q", "--no-track", "-b", "swarm/a", str(worktree))
    yours = repo.parent / "yours.txt"
    yours.write_text("your file\n")
    note = Path(git(worktree, "rev-parse", "--absolute-git-dir")) / staged.SECRETS_LEFT_OUT
    note.symlink_to(yours)
    monkeypatch.setenv("SERVICE_TOKEN", SECRET)
    redact._current = None  # the environment as it is now
    (worktree / "leak.txt").write_text(f"token={SECRET}\n")
    (worktree / "work.txt").write_text("work\n")
    checkpoints.checkpoint(worktree, message="checkpoint", author="A <a@example.com>")
    assert yours.read_text() == "your file\n"
    assert not note.is_symlink()
    assert git(repo, "ls-tree", "--name-only", "swarm/a").split() == ["README.md", "work.txt"]
    # And it does its work: the variable gone, the file is left out all the same.
    monkeypatch.delenv("SERVICE_TOKEN")
    redact._current = None
    (worktree / "more.txt").write_text("more\n")
    checkpoints.checkpoint(worktree, message="again", author="A <a@example.com>")
    assert git(repo, "ls-tree", "--name-only", "swarm/a").split() == [
        "README.md",
        "more.txt",
        "work.txt",
    ]
    assert not in_objects(repo, SECRET)


def test_doctor_rescuing_a_cut_off_worktree_without_the_secret_leaves_the_files_out(
    repo: Path, write_agent: AgentFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worktree's `.git` file names no git dir: `swarm doctor --yes` saves its files as a
    # commit, then deletes it. The note its checkpoint left is in its admin dir, still there.
    monkeypatch.setenv("SERVICE_TOKEN", SECRET)
    agent = write_agent(LEAKY)
    text = f'[defaults]\nagent = {argv_toml(agent)}\n[[task]]\nid = "a"\nprompt = "x"\n'
    assert swarm(repo, "run", manifest(repo, text)).returncode == 1
    worktree = repo.parent / "repo.swarm" / "a"
    (worktree / ".git").write_text("gitdir: /nonexistent\n")
    (worktree / "later.txt").write_text("typed after the run\n")
    monkeypatch.delenv("SERVICE_TOKEN")  # a new shell, without the variable
    out = swarm(repo, "doctor", "--yes")
    assert "left out leak.txt, " in out.stdout, out.stdout + out.stderr
    assert not in_objects(repo, SECRET), git(repo, "log", "--all", "--stat")
    assert (worktree / "leak.txt").read_text() == f"token={SECRET}\n"  # kept, with its worktree
    (rescued,) = git(repo, "for-each-ref", "--format=%(refname)", "refs/swarm/rescued/").split()
    assert git(repo, "show", f"{rescued}:later.txt") == "typed after the run"


@pytest.mark.parametrize("first", [(), ("clean", "--yes")])
def test_doctor_saving_a_worktree_whose_git_file_was_deleted_leaves_the_files_out(
    repo: Path,
    write_agent: AgentFactory,
    monkeypatch: pytest.MonkeyPatch,
    first: tuple[str, ...],
) -> None:
    # Its `.git` file deleted outright: git calls the worktree prunable, and a prune (doctor's,
    # or a clean's before it) deletes its admin dir, the note in it too; the directory's files
    # are saved later all the same, the note kept from before the prune.
    monkeypatch.setenv("SERVICE_TOKEN", SECRET)
    agent = write_agent(LEAKY)
    text = f'[defaults]\nagent = {argv_toml(agent)}\n[[task]]\nid = "a"\nprompt = "x"\n'
    assert swarm(repo, "run", manifest(repo, text)).returncode == 1
    worktree = repo.parent / "repo.swarm" / "a"
    (worktree / ".git").unlink()
    (worktree / "later.txt").write_text("typed after the run\n")
    monkeypatch.delenv("SERVICE_TOKEN")  # a new shell, without the variable
    if first:
        swarm(repo, *first)
        assert "repo.swarm" not in git(repo, "worktree", "list")  # pruned, its files kept
    out = swarm(repo, "doctor", "--yes")
    assert "left out leak.txt, " in out.stdout, out.stdout + out.stderr
    assert not in_objects(repo, SECRET), git(repo, "log", "--all", "--stat")
    assert (worktree / "leak.txt").read_text() == f"token={SECRET}\n"  # kept, where it was
    (rescued,) = git(repo, "for-each-ref", "--format=%(refname)", "refs/swarm/rescued/").split()
    assert git(repo, "show", f"{rescued}:later.txt") == "typed after the run"


def test_a_note_that_cannot_be_kept_holds_its_worktree_over_the_prune(
    repo: Path, write_agent: AgentFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where the note cannot be kept (a full disk: here a file where its folder goes), the
    # prune went on all the same, the note with it, and doctor's rescue committed the secret.
    monkeypatch.setenv("SERVICE_TOKEN", SECRET)
    agent = write_agent(LEAKY)
    text = f'[defaults]\nagent = {argv_toml(agent)}\n[[task]]\nid = "a"\nprompt = "x"\n'
    assert swarm(repo, "run", manifest(repo, text)).returncode == 1
    worktree = repo.parent / "repo.swarm" / "a"
    (worktree / ".git").unlink()
    monkeypatch.delenv("SERVICE_TOKEN")  # a new shell, without the variable
    (repo / ".git" / "swarm" / "left-out").write_text("in the way\n")
    swarm(repo, "doctor", "--yes")
    assert not in_objects(repo, SECRET), git(repo, "log", "--all", "--stat")
    assert (worktree / "leak.txt").read_text() == f"token={SECRET}\n"  # kept, where it was
    assert str(worktree) in git(repo, "worktree", "list")  # held over the prune
    assert not (repo / ".git" / "worktrees" / "a" / "locked").exists()  # the hold let go
    (repo / ".git" / "swarm" / "left-out").unlink()  # room again: pruned, files saved
    out = swarm(repo, "doctor", "--yes")
    assert "left out leak.txt, " in out.stdout, out.stdout + out.stderr
    assert not in_objects(repo, SECRET), git(repo, "log", "--all", "--stat")
