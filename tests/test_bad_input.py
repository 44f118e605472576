"""Bad input found by fuzzing the real CLI: one line on stderr, exit 2, nothing created."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import git
from tests.test_run import swarm
from tests.test_runs import finished_run
from worktree_swarm.core.paths import Repo, store_path
from worktree_swarm.infra.store import Store

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


NO_RUNS = "no swarm runs in {repo} yet; start one with `swarm run`"
NOTHING = "no swarm runs here yet\nnothing to clean\n"


WITHOUT_A_COMMIT = [
    (("runs",), 0, "no runs recorded yet; start one with `swarm run`\n"),
    (("doctor",), 0, "nothing to clean\n"),
    (("clean",), 0, NOTHING),
    (("clean", "--yes"), 0, NOTHING),
    (("status",), 2, NO_RUNS),
    (("report",), 2, NO_RUNS),
    (("logs", "a"), 2, NO_RUNS),
    (("watch",), 2, NO_RUNS),
    (("diff",), 2, NO_RUNS),
    (("notes",), 2, NO_RUNS),
    (("run", "--agent", "scripted", "-t", "a=x"), 2, "repository {repo} has no commits yet"),
]


@pytest.mark.parametrize(
    ("args", "code", "said"), WITHOUT_A_COMMIT, ids=[" ".join(a) for a, _, _ in WITHOUT_A_COMMIT]
)
def test_a_repository_without_a_commit_has_no_runs(
    tmp_path: Path, args: tuple[str, ...], code: int, said: str
) -> None:
    # `git init` and nothing more: every command said "has no commits yet" (exit 2), where
    # one with commits and no runs finds nothing (exit 0) or no run to read.
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    before = snapshot(repo)
    out = _swarm_with_a_terminal(repo, args)
    said = said.format(repo=repo)
    if code == 0:
        assert (out.returncode, out.stdout, out.stderr) == (0, said, ""), out
    else:
        assert_refused(out, said)
    assert snapshot(repo) == before


def test_a_repository_without_a_commit_but_with_runs_recorded_is_refused(tmp_path: Path) -> None:
    # Its branches deleted after a run: what the store says cannot be checked against them.
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    path = store_path(Repo(root=repo, common_dir=repo / ".git"))
    path.parent.mkdir()
    Store(path).close()
    out = _swarm_with_a_terminal(repo, ("runs",))
    assert_refused(out, f"repository {repo} has no commits yet; make a first commit")


def _swarm_with_a_terminal(repo: Path, args: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    """Run swarm in *repo*, stdin and stdout a terminal for `swarm watch` (it needs one)."""
    if args[:1] != ("watch",):
        return subprocess.run(
            [sys.executable, "-m", "worktree_swarm.cli", *args],
            cwd=repo,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    controller, terminal = pty.openpty()
    try:
        out = subprocess.run(
            [sys.executable, "-m", "worktree_swarm.cli", *args],
            cwd=repo,
            stdin=terminal,
            stdout=terminal,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
        os.set_blocking(controller, False)
        try:  # what it wrote to the terminal, all there once it has exited
            out.stdout = os.read(controller, 1 << 16).decode()
        except BlockingIOError:
            out.stdout = ""
        return out
    finally:
        os.close(terminal)
        os.close(controller)


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_a_core_worktree_naming_another_repositorys_checkout_is_bad_input(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    # Its .git leads git there to the other repository: swarm's git worked on that one
    # (`run` made other.swarm beside it and failed on git's "Not a valid object name HEAD").
    repo, other = tmp_path / "repo", tmp_path / "other"
    for where in (repo, other):
        where.mkdir()
        git(where, "init", "-q", "-b", "main")
        (where / f"{where.name}.txt").write_text("x\n")
        git(where, "add", "-A")
        git(where, "commit", "-q", "-m", "initial")
    git(repo, "config", "core.worktree", str(other))
    before = snapshot(repo), snapshot(other)
    out = subprocess.run(
        [sys.executable, "-m", "worktree_swarm.cli", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert_refused(out, f"{other}, the working tree core.worktree names")
    assert "config --unset core.worktree" in out.stderr
    assert (snapshot(repo), snapshot(other)) == before


def _switch_to_bad(repo: Path) -> None:
    """Task bad's worktree removed, its branch checked out in your checkout (to fix by hand)."""
    git(repo, "worktree", "remove", "--force", str(repo.parent / "repo.swarm" / "bad"))
    git(repo, "switch", "-q", "swarm/bad")


def _stray_at_bad(repo: Path) -> None:
    """Task bad's worktree removed; at its path what a worktree creation cut short leaves."""
    stray = repo.parent / "repo.swarm" / "bad"
    git(repo, "worktree", "remove", "--force", str(stray))
    (stray / "src").mkdir(parents=True)
    (stray / "src" / "f.txt").write_text("x\n")


def _as_left(repo: Path) -> None:
    """The finished run as it is."""


def _row(args: tuple[str, ...], setup: object, said: str, *marks: pytest.MarkDecorator) -> object:
    return pytest.param(args, setup, said, marks=marks, id=" ".join(args))


# Refused after a run (task ok done, bad failed): (args, what is done first, what is said).
AFTER_A_RUN = [
    _row(("retry", "ok"), _as_left, "task ok of run {run} is done; its work is on swarm/ok"),
    _row(
        ("retry", "nosuch"), _as_left, "no task 'nosuch' in run {run}; `swarm status --run {run}`"
    ),
    _row(("retry", "--run", "nosuch"), _as_left, "unknown run 'nosuch'; `swarm runs` lists the"),
    _row(("retry", "bad"), _stray_at_bad, "{wt} is in the way of task bad's worktree"),
    _row(
        ("retry", "bad", "--fresh"), _switch_to_bad, "branch swarm/bad of task bad is checked out"
    ),
    # The other commands, each with an unknown run or task or a bad value: seconds each.
    *(
        _row(args, _as_left, said, pytest.mark.long)
        for args, said in [
            (("status", "--run", "nosuch"), "unknown run 'nosuch'"),
            (("watch", "--run", "nosuch"), "unknown run 'nosuch'"),
            (("report", "--run", "nosuch"), "unknown run 'nosuch'"),
            (("notes", "--run", "nosuch"), "unknown run 'nosuch'"),
            (("clean", "--run", "nosuch", "--yes"), "unknown run 'nosuch'"),
            (("resume", "--run", "nosuch"), "unknown run 'nosuch'"),
            (("logs", "nosuch"), "no task 'nosuch' in run {run}; `swarm status --run {run}`"),
            (("stop", "nosuch"), "no task 'nosuch' in run {run}; `swarm status --run {run}`"),
            (("diff", "nosuch"), "no task 'nosuch' in run {run}; `swarm status --run {run}`"),
            (("pr", "nosuch"), "no task 'nosuch' in run {run}; `swarm status --run {run}`"),
            (("merge", "--into", "nosuch"), "--into branch nosuch does not exist"),
            (("clean", "--orphans", "--all"), "--orphans and --all exclude each other"),
            (("run", "--agent", "scripted", "-t", "ok=again"), "branch swarm/ok already exists"),
            (("run", "--agent", "scripted", "-t", "c=x", "-j", "0"), "--jobs: must be >= 1, got 0"),
        ]
    ),
]


def _tree(repo: Path) -> dict[str, object]:
    """Every file of .git and of the task worktrees (size, mtime), each ref and worktree.

    Indexes are left out, git refreshes its own cache of file stats when it likes; and the
    times of directories, where the store's log comes and goes while it is open.
    """
    found: dict[str, object] = {
        str(p.relative_to(repo.parent)): "dir" if p.is_dir() else (info.st_size, info.st_mtime_ns)
        for top in (repo / ".git", repo.parent / "repo.swarm")
        for p in top.rglob("*")
        if p.name != "index" and (info := p.lstat())
    }
    found["refs"] = git(repo, "for-each-ref")
    found["worktrees"] = git(repo, "worktree", "list", "--porcelain")
    return found


@pytest.mark.parametrize(("args", "setup", "said"), AFTER_A_RUN)
def test_a_refusal_after_a_run_changes_nothing(
    repo: Path,
    write_agent: Callable[[str], list[str]],
    args: tuple[str, ...],
    setup: Callable[[Path], None],
    said: str,
) -> None:
    # A refused `swarm retry` took the manager lock first, naming itself in manager.json, and
    # one refused for a path in the way of a worktree left an empty merge.lock too.
    run_id, _ = finished_run(repo, write_agent)
    setup(repo)
    before = _tree(repo)
    out = _swarm_with_a_terminal(repo, args) if args[0] == "watch" else swarm(repo, *args)
    wt = repo.parent / "repo.swarm" / "bad"
    assert_refused(out, said.format(run=run_id, wt=wt))
    after = _tree(repo)
    assert {
        k: after.get(k) for k in before.keys() | after.keys() if before.get(k) != after.get(k)
    } == {}


def test_a_dirty_detached_checkout_is_no_bad_input_to_run_or_merge_and_stays_as_it_was(
    repo: Path,
) -> None:
    # The guarantee refuses a dirty or detached repository only where that matters (`swarm
    # pr` without --base, `swarm merge --into` a checked-out branch): a run and a merge start
    # from the detached HEAD's commit, your edits left out and left alone.
    (repo / "README.md").write_text("committed\n")
    git(repo, "commit", "-qam", "second")
    git(repo, "switch", "-q", "--detach")
    (repo / "README.md").write_text("your edit\n")
    (repo / "yours.txt").write_text("untracked\n")
    head = git(repo, "rev-parse", "HEAD")
    before = (git(repo, "status", "--porcelain", "--untracked-files=all"), head, "HEAD")

    out = swarm(repo, "run", "--agent", "scripted", "-t", "a=write a.txt: work")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "note: uncommitted changes in your checkout are not part of the base" in out.stderr
    assert git(repo, "rev-parse", "swarm/a^") == head
    assert git(repo, "show", "swarm/a:README.md") == "committed"
    merged = swarm(repo, "merge")
    assert merged.returncode == 0, merged.stdout + merged.stderr
    (integration,) = git(
        repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/swarm/integration-*"
    ).split()
    assert git(repo, "merge-base", "--is-ancestor", head, integration) == ""
    assert git(repo, "show", f"{integration}:a.txt") == "work"

    after = (
        git(repo, "status", "--porcelain", "--untracked-files=all"),
        git(repo, "rev-parse", "HEAD"),
        git(repo, "rev-parse", "--abbrev-ref", "HEAD"),  # HEAD: still detached
    )
    assert after == before
    assert (repo / "README.md").read_text() == "your edit\n"
