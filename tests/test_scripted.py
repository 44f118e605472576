"""The bundled scripted agent's directives (README), through the real CLI, git and agents."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import git, make_repo
from tests.test_bad_input import assert_refused, snapshot
from tests.test_run import argv_toml, branch_file, manifest, status_json, swarm, swarm_bg, wait_for


def scripted(repo: Path, *tasks: str) -> subprocess.CompletedProcess[str]:
    """``swarm run --agent scripted -t TASK...``."""
    return swarm(repo, "run", "--agent", "scripted", *(f"-t{task}" for task in tasks))


def files(repo: Path, branch: str) -> set[str]:
    return set(git(repo, "ls-tree", "-r", "--name-only", branch).split())


def test_write_append_and_say_do_what_they_say(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"README.md": "hello\n", "sub/keep.txt": "keep\n"})
    out = scripted(
        repo,
        "w=Some prose first.\nwrite sub/deep/f.txt: first\n  write sub/deep/f.txt:  second: x  ",
        "a=append README.md: one\nappend README.md: two\nappend new.txt: n",
        "s=say hello there\nwrite said.txt: yes",
    )
    assert out.returncode == 0, out.stderr
    # write makes the directories, replaces the file; the text is all after the first colon.
    assert branch_file(repo, "swarm/w", "sub/deep/f.txt") == "second: x"
    # append adds a line to a file there, makes one that is not.
    assert branch_file(repo, "swarm/a", "README.md") == "hello\none\ntwo"
    assert branch_file(repo, "swarm/a", "new.txt") == "n"
    # say prints to the agent's log; a prompt with a write line writes no <task id>.txt.
    assert "hello there" in swarm(repo, "logs", "s").stdout.splitlines()
    for task in ("w", "a", "s"):
        assert f"{task}.txt" not in files(repo, f"swarm/{task}")


def test_a_prompt_with_no_write_line_writes_the_prompt_to_its_task_id_file(repo: Path) -> None:
    # It held the shared-findings paragraph swarm appends too, with the repository's path.
    prompt = "Just prose here.\nsay hi\nsleep 0"
    assert scripted(repo, f"note={prompt}").returncode == 0
    assert branch_file(repo, "swarm/note", "note.txt") == prompt
    assert swarm(repo, "logs", "note").stdout.splitlines()[:2] == ["hi", "wrote note.txt"]


def test_exit_ends_the_agent_with_its_code_and_nothing_after_it_runs(repo: Path) -> None:
    out = scripted(
        repo,
        "fails=write before.txt: b\nexit 3\nwrite after.txt: a",
        "quits=exit 0\nwrite after.txt: a",
        "bare=exit 0",
    )
    assert out.returncode == 1, out.stderr
    rows = status_json(repo)
    assert rows["fails"]["state"] == "failed"
    assert "3" in str(rows["fails"]["reason"])
    assert "before.txt" in files(repo, "swarm/fails")
    assert "after.txt" not in files(repo, "swarm/fails")
    assert rows["quits"]["state"] == rows["bare"]["state"] == "no_changes"
    # No write ran, and exit ended it before the prompt would be written to <task id>.txt.
    assert files(repo, "swarm/quits") == files(repo, "swarm/bare") == {"README.md"}


def test_sleep_pauses_the_agent_until_it_is_stopped(repo: Path) -> None:
    proc = swarm_bg(
        repo, "run", "--agent", "scripted", "-t", "nap=say awake\nsleep 3600\nwrite late.txt: x"
    )
    try:
        log = repo / ".git" / "swarm"
        wait_for(
            lambda: any("awake" in p.read_text() for p in log.rglob("nap/attempt-1.log")),
            what="the agent's first line",
        )
        assert status_json(repo)["nap"]["alive"] is True
        assert swarm(repo, "stop", "nap").returncode == 0
        assert proc.wait(timeout=60) == 1
    finally:
        proc.kill()
        proc.wait()
    assert status_json(repo)["nap"]["state"] == "stopped"
    assert "late.txt" not in files(repo, "swarm/nap")


def test_a_symlink_out_of_the_worktree_is_not_written_through(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    repo = make_repo(tmp_path / "repo")
    (repo / "out").symlink_to(outside)
    git(repo, "add", "out")
    git(repo, "commit", "-qm", "a link out")
    out = scripted(repo, "esc=write ok.txt: fine\nwrite out/f.txt: x")
    assert out.returncode == 1
    row = status_json(repo)["esc"]
    assert row["state"] == "failed"
    assert list(outside.iterdir()) == []
    log = swarm(repo, "logs", "esc").stdout
    assert "scripted agent: refusing to write outside the worktree: out/f.txt" in log
    assert "Traceback" not in log


def test_a_symlink_into_git_s_own_files_is_not_written_through(tmp_path: Path) -> None:
    # `.git` in a path is refused as written; a tracked link to it is refused once resolved.
    repo = make_repo(tmp_path / "repo")
    (repo / "link").symlink_to(".git")
    git(repo, "add", "link")
    git(repo, "commit", "-qm", "a link to .git")
    out = scripted(repo, "lnk=write ok.txt: fine\nwrite link: gitdir: /elsewhere")
    assert out.returncode == 1
    assert status_json(repo)["lnk"]["state"] == "failed"
    worktree = repo.parent / "repo.swarm" / "lnk"
    assert (worktree / ".git").read_text().startswith("gitdir: ")
    assert "/elsewhere" not in (worktree / ".git").read_text()
    log = swarm(repo, "logs", "lnk").stdout
    assert "scripted agent: refusing to write git's own file: link" in log


BAD = [
    (
        "sleep soon",
        "line 1 ('sleep soon'): 'soon' is not a number of seconds; expected `sleep SECONDS`",
    ),
    ("sleep -1", "'-1' is not a number of seconds"),
    ("sleep inf", "'inf' is not a number of seconds"),
    ("sleep nan", "'nan' is not a number of seconds"),
    ("exit soon", "'soon' is not an exit code from 0 to 255; expected `exit CODE`"),
    ("exit 256", "'256' is not an exit code from 0 to 255"),
    ("exit -1", "'-1' is not an exit code from 0 to 255"),
    (
        "write f.txt hello",
        "line 1 ('write f.txt hello'): no ':' after the path; expected `write PATH: TEXT`",
    ),
    ("append : x", "no path; expected `append PATH: TEXT`"),
    ("write ../escape.txt: x", "../escape.txt is outside the worktree"),
    ("write a/../../escape.txt: x", "a/../../escape.txt is outside the worktree"),
    ("write /tmp/escape.txt: x", "/tmp/escape.txt is absolute, not in the worktree"),
    ("write .git: x", ".git is git's own, not a file of the worktree"),
    ("append sub/.git/config: x", "sub/.git/config is git's own"),
    ("write sub/: x", "sub/ names a directory, not a file"),
]


@pytest.mark.parametrize(("line", "said"), BAD, ids=[line for line, _ in BAD])
def test_a_bad_directive_is_refused_before_anything_is_made(
    repo: Path, line: str, said: str
) -> None:
    before = snapshot(repo)
    out = scripted(repo, f"bad={line}")
    assert_refused(out, said)
    assert out.stderr.startswith(f'swarm: -t "bad": prompt: line 1 ({line!r}): ')
    assert snapshot(repo) == before


def test_a_bad_directive_is_refused_for_a_task_scripted_takes_over(
    repo: Path, write_agent: Callable[[str], list[str]]
) -> None:
    agent = argv_toml(write_agent("open('done.txt', 'w').write('ok')"))
    text = (
        f'[[task]]\nid = "t"\nprompt = "prose\\nexit now"\nagent = {agent}\n'
        'fallback = ["scripted"]\n'
    )
    path = manifest(repo, text)
    before = snapshot(repo)
    out = swarm(repo, "run", path)
    assert_refused(out, "prompt: line 2 ('exit now'): 'now' is not an exit code from 0 to 255")
    assert snapshot(repo) == before


def test_prose_starting_with_a_directive_word_is_fine_for_another_agent(
    repo: Path, write_agent: Callable[[str], list[str]]
) -> None:
    agent = " ".join(write_agent("open('done.txt', 'w').write('ok')"))
    out = swarm(repo, "run", "--agent", agent, "-t", "t=exit when done\nsleep on it")
    assert out.returncode == 0, out.stderr
