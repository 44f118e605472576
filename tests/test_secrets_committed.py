"""A secret of the run's environment an agent commits itself is refused from any shell.

swarm's checkpoints leave such a file out; an agent's own `git commit` they cannot. The
manager, which has the value, records the commit when the attempt ends; `swarm merge` and
`swarm pr` run the next morning from a shell without the variable refuse the branch all the
same, naming the variable, never the value.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import git, hang_git_at
from tests.github_server import TOKEN, FakeGitHub, serve
from tests.test_run import AgentFactory, argv_toml, manifest, status_json, swarm, wait_for
from worktree_swarm.infra import redact

SECRET = "tok_4d3c2b1a0f9e8d7cXq"  # noqa: S105 - a made-up token, the test's own

# Commits the token itself (in a file, or in its message), then deletes the file again: the
# tip no longer has it, the history does. One file of honest work for the checkpoint.
OWN_COMMIT = (
    "import os, pathlib, subprocess\n"
    "value = os.environ.get('SERVICE_TOKEN')\n"
    "def git(*args): subprocess.run(['git', *args], check=True)\n"
    "if value and os.environ.get('WHERE') == 'message':\n"
    "    pathlib.Path('notes.txt').write_text('notes\\n')\n"
    "    git('add', 'notes.txt')\n"
    "    git('commit', '-q', '-m', f'wire the service with {value}')\n"
    "elif value:\n"
    "    pathlib.Path('config.txt').write_text(f'token = {value}\\n')\n"
    "    git('add', 'config.txt')\n"
    "    git('commit', '-q', '-m', 'configure the service')\n"
    "    git('rm', '-q', 'config.txt')\n"
    "    git('commit', '-q', '-m', 'drop the config')\n"
    "work = pathlib.Path('work.txt')\n"
    "work.write_text(work.read_text() + 'more\\n' if work.exists() else 'work\\n')\n"
)
# Then removes its own worktree.
GONE = "import shutil\nhere = os.getcwd()\nos.chdir('/')\nshutil.rmtree(here)\n"


@pytest.fixture
def fake_github() -> Iterator[FakeGitHub]:
    with serve() as fake:
        yield fake


def _nowhere_in_swarms_files(repo: Path, texts: list[str]) -> None:
    """*SECRET* is in none of *texts*, nor in a byte of what swarm keeps (store, logs)."""
    for text in texts:
        assert SECRET not in text, text[:2000]
    files = [p for p in (repo / ".git" / "swarm").rglob("*") if p.is_file() and not p.is_symlink()]
    assert any(p.name == "state.db" for p in files)
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path


@pytest.mark.long
@pytest.mark.parametrize(("where", "path"), [("file", "config.txt"), ("message", "its message")])
def test_an_agents_own_commit_of_an_environment_secret_is_refused_from_a_shell_without_it(
    repo: Path,
    write_agent: AgentFactory,
    tmp_path: Path,
    fake_github: FakeGitHub,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
    path: str,
) -> None:
    monkeypatch.setenv("SERVICE_TOKEN", SECRET)
    agent = write_agent(OWN_COMMIT)
    text = (
        f'[defaults]\nagent = {argv_toml(agent)}\n[[task]]\nid = "t"\nprompt = "x"\n'
        f'env = {{ WHERE = "{where}" }}\n'
    )
    run = swarm(repo, "run", manifest(repo, text))
    assert run.returncode == 0, run.stdout + run.stderr  # its state is its attempt's
    assert SECRET in git(repo, "log", "-p", "--format=%B", "swarm/t")  # the agent's own act
    refused = (
        "holds the value of SERVICE_TOKEN (a secret of the run's environment);"
        " remove it from the branch's history"
    )
    said = [line for line in run.stdout.splitlines() if line.startswith(f"t: {path} (commit ")]
    assert len(said) == 1, run.stdout
    assert said[0].endswith(
        "holds the value of SERVICE_TOKEN (a secret of the run's environment), committed by its"
        " agent itself: `swarm pr` and `swarm merge` refuse its branch while it holds that commit"
    )
    # The next morning, another shell: the variable is unset, nothing of its value is known.
    monkeypatch.delenv("SERVICE_TOKEN")
    redact._current = None
    row = status_json(repo)["t"]
    assert row["state"] == "done"
    shown = str(row["secret_commit"])
    assert shown.startswith(f"{path} (commit "), shown
    assert shown.endswith("holds the value of SERVICE_TOKEN (a secret of the run's environment)")
    status = swarm(repo, "status").stdout
    (line,) = [line for line in status.splitlines() if line.startswith("t ")]
    assert f"{shown.partition(') holds')[0]}) holds the value of SERVICE_TOKEN" in line, status
    merged = swarm(repo, "merge")
    assert merged.returncode == 1, merged.stdout + merged.stderr
    lines = [line for line in merged.stdout.splitlines() if " t " in f" {line} "]
    assert len(lines) == 1, merged.stdout
    assert f"not merging swarm/t: {path} (commit " in lines[0]
    assert lines[0].endswith(refused)
    assert SECRET not in git(repo, "log", "-p", "--format=%B", "--all", "--not", "swarm/t")
    bare = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    git(repo, "remote", "add", "origin", str(bare))
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    pr = swarm(repo, "pr", "--github-repo", "acme/widgets", "--api-url", fake_github.url)
    assert pr.returncode == 1, pr.stdout + pr.stderr
    line = pr.stdout.strip()
    assert line.startswith(f"t  failed  not pushing swarm/t: {path} (commit "), (
        pr.stdout + pr.stderr
    )
    assert line.endswith(refused)
    assert git(bare, "for-each-ref") == ""
    assert fake_github.pulls == {}
    outputs = [run.stdout, run.stderr, merged.stdout, merged.stderr, pr.stdout, pr.stderr]
    for args in (
        ("status",),
        ("status", "--json"),
        ("report",),
        ("report", "--json"),
        ("logs", "t"),
    ):
        out = swarm(repo, *args)
        assert out.returncode == 0, (args, out.stderr)
        outputs += [out.stdout, out.stderr]
    report = json.loads(swarm(repo, "report", "--json").stdout)
    (task,) = report["tasks"]
    assert task["secret_commit"] == shown
    assert "refused: a secret its agent committed" in swarm(repo, "report").stdout
    _nowhere_in_swarms_files(repo, outputs)


def _killed_before_it_looked(
    repo: Path, write_agent: AgentFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run whose agent committed the token, its manager killed as it starts to look.

    Killed at its first `git log` (of the agent's commits): the task is left running.
    """
    monkeypatch.setenv("SERVICE_TOKEN", SECRET)
    agent = write_agent(OWN_COMMIT)
    text = f'[defaults]\nagent = {argv_toml(agent)}\n[[task]]\nid = "t"\nprompt = "x"\n'
    path = manifest(repo, text)
    hung = hang_git_at(tmp_path, monkeypatch, "log")
    manager = subprocess.Popen(
        [sys.executable, "-m", "worktree_swarm.cli", "run", str(path)],
        cwd=repo, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(hung.exists, what="the manager's first git log")
    finally:
        os.killpg(manager.pid, signal.SIGKILL)
        manager.wait(timeout=30)
    (tmp_path / "gitbin" / "git").unlink()
    worktree = repo.parent / "repo.swarm" / "t"
    assert SECRET in git(worktree, "log", "-p", "--format=%B")  # committed, not yet looked at


@pytest.mark.long
@pytest.mark.parametrize("end", ["resume", "stop"])
def test_a_manager_killed_before_it_looked_leaves_it_to_the_command_that_ends_the_attempt(
    repo: Path,
    write_agent: AgentFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    end: str,
) -> None:
    # The agent committed the token; the manager is killed as it starts to look through its
    # commits (its first `git log`). `swarm resume` looks and records it; so does `swarm stop`,
    # whose checkpoint moved the branch's recorded tip past the commit unlooked: no later look
    # started before it, and the branch merged from a shell without the variable.
    _killed_before_it_looked(repo, write_agent, tmp_path, monkeypatch)
    resumed = swarm(repo, end)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    if end == "resume":
        said = [line for line in resumed.stdout.splitlines() if line.startswith("t: config.txt (")]
        assert len(said) == 1, resumed.stdout
    row = status_json(repo)["t"]
    assert row["state"] == "done", row
    assert str(row["secret_commit"]).endswith(
        "holds the value of SERVICE_TOKEN (a secret of the run's environment)"
    )
    monkeypatch.delenv("SERVICE_TOKEN")  # another shell
    redact._current = None
    merged = swarm(repo, "merge")
    assert merged.returncode == 1, merged.stdout + merged.stderr
    assert "not merging swarm/t: config.txt (commit " in merged.stdout, merged.stdout
    _nowhere_in_swarms_files(repo, [resumed.stdout, resumed.stderr, merged.stdout])


@pytest.mark.long
def test_a_clean_in_the_shell_that_has_the_value_records_a_dead_managers_unlooked_commit(
    repo: Path,
    write_agent: AgentFactory,
    tmp_path: Path,
    fake_github: FakeGitHub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The manager is killed before it looked; nobody stops or resumes the run. `swarm clean
    # --yes` in the shell that has the variable leaves the unfinished task alone, and records
    # its agent's commit: the `swarm stop` from another shell that ends the task (its
    # checkpoint moves the recorded tip past the commit), then `swarm merge` and `swarm pr`
    # from that shell, without the variable, refuse the branch all the same.
    _killed_before_it_looked(repo, write_agent, tmp_path, monkeypatch)
    cleaned = swarm(repo, "clean", "--yes")
    assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
    assert status_json(repo)["t"]["state"] == "running"  # left for `swarm resume` or `stop`
    monkeypatch.delenv("SERVICE_TOKEN")  # another shell
    redact._current = None
    stopped = swarm(repo, "stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    row = status_json(repo)["t"]
    assert row["state"] == "done", row
    assert str(row["secret_commit"]).startswith("config.txt (commit "), row
    merged = swarm(repo, "merge")
    assert merged.returncode == 1, merged.stdout + merged.stderr
    assert "not merging swarm/t: config.txt (commit " in merged.stdout, merged.stdout
    bare = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    git(repo, "remote", "add", "origin", str(bare))
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    pr = swarm(repo, "pr", "--github-repo", "acme/widgets", "--api-url", fake_github.url)
    assert pr.returncode == 1, pr.stdout + pr.stderr
    assert pr.stdout.strip().startswith("t  failed  not pushing swarm/t: config.txt (commit ")
    assert git(bare, "for-each-ref") == ""
    outputs = [cleaned.stdout, cleaned.stderr, stopped.stdout, stopped.stderr, merged.stdout]
    _nowhere_in_swarms_files(repo, [*outputs, merged.stderr, pr.stdout, pr.stderr])


@pytest.mark.long
def test_an_agent_that_commits_it_and_removes_its_worktree_has_its_commit_recorded(
    repo: Path, write_agent: AgentFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The attempt fails before its checkpoint (its worktree went while its agent worked); its
    # branch keeps the agent's commits, and `swarm merge t` takes a failed task by name.
    monkeypatch.setenv("SERVICE_TOKEN", SECRET)
    agent = write_agent(OWN_COMMIT + GONE)
    text = f'[defaults]\nagent = {argv_toml(agent)}\n[[task]]\nid = "t"\nprompt = "x"\n'
    run = swarm(repo, "run", manifest(repo, text))
    assert SECRET in git(repo, "log", "-p", "--format=%B", "swarm/t")
    row = status_json(repo)["t"]
    assert row["state"] == "failed", row
    assert "its worktree was removed while its agent worked" in str(row["reason"]), row
    monkeypatch.delenv("SERVICE_TOKEN")  # another shell
    redact._current = None
    merged = swarm(repo, "merge", "t")
    assert merged.returncode == 1, merged.stdout + merged.stderr
    assert "not merging swarm/t: config.txt (commit " in merged.stdout, merged.stdout
    _nowhere_in_swarms_files(repo, [run.stdout, run.stderr, merged.stdout, merged.stderr])


@pytest.mark.long
def test_a_stop_of_a_dead_run_records_the_commits_of_an_agent_that_removed_its_worktree(
    repo: Path, write_agent: AgentFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The agent commits the token; its manager is killed; then the agent removes its worktree.
    # `swarm stop` (no checkpoint: no worktree) looks through the branch's commits with its
    # shell's environment, and `swarm merge t` from a shell without the variable refuses.
    monkeypatch.setenv("SERVICE_TOKEN", SECRET)
    monkeypatch.setenv("FLAGS", str(tmp_path))
    wait = (
        "import time\nflags = pathlib.Path(os.environ['FLAGS'])\n(flags / 'committed').touch()\n"
        "while not (flags / 'go').exists():\n    time.sleep(0.02)\n"
    )
    agent = write_agent(OWN_COMMIT + wait + GONE)
    text = f'[defaults]\nagent = {argv_toml(agent)}\n[[task]]\nid = "t"\nprompt = "x"\n'
    manager = subprocess.Popen(
        [sys.executable, "-m", "worktree_swarm.cli", "run", str(manifest(repo, text))],
        cwd=repo, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for((tmp_path / "committed").exists, what="the agent's commits")
    finally:
        os.killpg(manager.pid, signal.SIGKILL)
        manager.wait(timeout=30)
    (tmp_path / "go").touch()
    worktree = repo.parent / "repo.swarm" / "t"
    wait_for(lambda: not worktree.exists(), what="the agent to remove its worktree")
    assert SECRET in git(repo, "log", "-p", "--format=%B", "swarm/t")  # committed, not looked at
    stopped = swarm(repo, "stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert str(status_json(repo)["t"]["secret_commit"]).startswith("config.txt (commit ")
    monkeypatch.delenv("SERVICE_TOKEN")  # another shell
    redact._current = None
    merged = swarm(repo, "merge", "t")
    assert merged.returncode == 1, merged.stdout + merged.stderr
    assert "not merging swarm/t: config.txt (commit " in merged.stdout, merged.stdout
    assert SECRET not in git(repo, "log", "-p", "--format=%B", "HEAD")
    _nowhere_in_swarms_files(repo, [stopped.stdout, stopped.stderr, merged.stdout, merged.stderr])


# Then points its worktree's `.git` at your git dir: no git of swarm's runs there any more.
ELSEWHERE = (
    "main = subprocess.run(['git', 'rev-parse', '--path-format=absolute', '--git-common-dir'],"
    " capture_output=True, text=True, check=True).stdout.strip()\n"
    "pathlib.Path('.git').write_text(f'gitdir: {main}\\n')\n"
)


@pytest.mark.long
def test_a_stop_of_a_dead_run_records_the_commits_of_an_agent_that_pointed_its_worktree_away(
    repo: Path, write_agent: AgentFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As above, but the agent points its worktree's `.git` at your git dir: `swarm stop` runs
    # no git there (no checkpoint) and looks through the branch's commits all the same.
    monkeypatch.setenv("SERVICE_TOKEN", SECRET)
    monkeypatch.setenv("FLAGS", str(tmp_path))
    wait = (
        "import time\nflags = pathlib.Path(os.environ['FLAGS'])\n(flags / 'committed').touch()\n"
        "while not (flags / 'go').exists():\n    time.sleep(0.02)\n"
    )
    moved = "(flags / 'moved').touch()\nwhile True:\n    time.sleep(1)\n"
    agent = write_agent(OWN_COMMIT + wait + ELSEWHERE + moved)
    text = f'[defaults]\nagent = {argv_toml(agent)}\n[[task]]\nid = "t"\nprompt = "x"\n'
    manager = subprocess.Popen(
        [sys.executable, "-m", "worktree_swarm.cli", "run", str(manifest(repo, text))],
        cwd=repo, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for((tmp_path / "committed").exists, what="the agent's commits")
    finally:
        os.killpg(manager.pid, signal.SIGKILL)
        manager.wait(timeout=30)
    (tmp_path / "go").touch()
    wait_for((tmp_path / "moved").exists, what="the agent to point its worktree away")
    assert SECRET in git(repo, "log", "-p", "--format=%B", "swarm/t")  # committed, not looked at
    stopped = swarm(repo, "stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    row = status_json(repo)["t"]
    assert "no longer names its registration" in str(row["reason"]), row
    assert str(row["secret_commit"]).startswith("config.txt (commit "), row
    monkeypatch.delenv("SERVICE_TOKEN")  # another shell
    redact._current = None
    merged = swarm(repo, "merge", "t")
    assert merged.returncode == 1, merged.stdout + merged.stderr
    assert "not merging swarm/t: config.txt (commit " in merged.stdout, merged.stdout
    assert SECRET not in git(repo, "log", "-p", "--format=%B", "HEAD")
    _nowhere_in_swarms_files(repo, [stopped.stdout, stopped.stderr, merged.stdout, merged.stderr])
