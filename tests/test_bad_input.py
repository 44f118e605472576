"""Bad input found by fuzzing the real CLI: one line on stderr, exit 2, nothing created."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import git

COMMANDS = [
    ("run", "--agent", "scripted", "-t", "a=x"),
    ("run", "--agent", "scripted", "-t", "a=x", "--dry-run"),
    ("status",),
    ("runs",),
    ("doctor",),
    ("clean", "--yes"),
    ("logs", "a"),
    ("note", "x"),
]


def snapshot(repo: Path) -> dict[str, object]:
    """What a refused command must leave as it was: git's view, the .git dir, the repo's parent."""
    return {
        "status": git(repo, "status", "--porcelain", "--ignored"),
        "branches": git(repo, "branch", "--list"),
        "worktrees": git(repo, "worktree", "list"),
        "git_dir": sorted(str(p.relative_to(repo)) for p in (repo / ".git").rglob("*")),
        "beside": sorted(p.name for p in repo.parent.iterdir()),
    }


def assert_refused(out: subprocess.CompletedProcess[str], said: str) -> None:
    assert (out.returncode, out.stdout) == (2, ""), out
    assert out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("swarm: "), out.stderr
    assert said in out.stderr, out.stderr


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_a_deleted_current_directory_is_bad_input(repo: Path, args: tuple[str, ...]) -> None:
    # `rm -rf` of the directory a shell sits in: os.getcwd() fails, and every command wrote
    # a traceback file ("internal error", exit 1).
    gone = repo / "gone"
    gone.mkdir()
    before = snapshot(repo)
    out = subprocess.run(
        [sys.executable, "-m", "worktree_swarm.cli", *args],
        cwd=gone,
        preexec_fn=gone.rmdir,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert_refused(out, "the current directory is gone")
    assert snapshot(repo) == before


def test_with_a_deleted_current_directory_c_dir_still_works(repo: Path) -> None:
    gone = repo / "gone"
    gone.mkdir()
    out = subprocess.run(
        [sys.executable, "-m", "worktree_swarm.cli", "-C", str(repo), "runs"],
        cwd=gone,
        preexec_fn=gone.rmdir,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert (out.returncode, out.stderr) == (0, ""), out


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_a_core_worktree_git_cannot_find_the_repository_from_is_bad_input(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    # core.worktree naming a directory without a .git: git works from the repository's own
    # directory, but not from that working tree, where swarm runs it; each command said
    # git's "not a git repository" and exited 1.
    outer = tmp_path / "outer"
    repo = outer / "repo"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    (repo / "f.txt").write_text("x\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "initial")
    git(repo, "config", "core.worktree", str(outer))
    before = snapshot(repo)
    out = subprocess.run(
        [sys.executable, "-m", "worktree_swarm.cli", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert_refused(out, f"{outer}, the working tree core.worktree names")
    assert "config --unset core.worktree" in out.stderr
    assert snapshot(repo) == before


def test_a_core_worktree_git_finds_the_repository_from_is_used(repo: Path) -> None:
    # A working tree in a subdirectory: git there walks up to the repository's .git.
    (repo / "sub").mkdir()
    git(repo, "config", "core.worktree", str(repo / "sub"))
    out = subprocess.run(
        [sys.executable, "-m", "worktree_swarm.cli", "runs"],
        cwd=repo,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert (out.returncode, out.stderr) == (0, ""), out


# Saved in Latin-1: "é" is the byte 0xe9, on the third line, after `prompt = "caf`.
LATIN_1 = '[[task]]\nid = "a"\nprompt = "café"\n'.encode("latin-1")
NOT_UTF8 = "not UTF-8 text (byte 0xe9 at line 3, column 14); save it as UTF-8"


@pytest.mark.parametrize(
    ("name", "args", "said"),
    [
        ("tasks.toml", ("run", "../tasks.toml"), f"../tasks.toml: {NOT_UTF8}"),
        ("repo/swarm.toml", ("run", "-t", "a=x"), f"swarm.toml: {NOT_UTF8}"),
        (
            "prompt.md",
            ("run", "--prompt-file", "a=../prompt.md"),
            f'--prompt-file "a": ../prompt.md: {NOT_UTF8}',
        ),
    ],
    ids=["manifest", "swarm.toml", "prompt-file"],
)
def test_a_file_not_utf8_is_named_with_where_its_first_bad_byte_is(
    repo: Path, name: str, args: tuple[str, ...], said: str
) -> None:
    # It said only "not UTF-8 text": which byte of a long file was left to find.
    (repo.parent / name).write_bytes(LATIN_1.replace(b"[[task]]", b"jobs = 1"))
    before = snapshot(repo)
    out = subprocess.run(
        [sys.executable, "-m", "worktree_swarm.cli", *args, "--agent", "scripted"],
        cwd=repo,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert_refused(out, said)
    assert out.stderr == f"swarm: {said}\n"
    assert snapshot(repo) == before
