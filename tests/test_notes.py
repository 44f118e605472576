"""The shared findings file: `swarm note` from agents and users, `swarm notes`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.test_run import swarm
from worktree_swarm.report.notes import findings_instructions

ENTRY_RE = re.compile(r"- \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ \[(?P<tag>[^\]]+)\] (?P<first>.*)")
LINES_PER_NOTE = 40


def note_env(path: Path, task_id: str | None = None) -> dict[str, str]:
    env = dict(os.environ, SWARM_CONTEXT=str(path))
    if task_id is not None:
        env["SWARM_TASK_ID"] = task_id
    return env


def entries(text: str) -> list[tuple[str, list[str]]]:
    """Split a findings file into (header line, continuation lines) per entry."""
    found: list[tuple[str, list[str]]] = []
    for line in text.split("\n"):
        if line.startswith("- "):
            found.append((line, []))
        elif line.startswith("  "):
            found[-1][1].append(line[2:])
    return found


@pytest.mark.slow  # long: runs in `scripts/check --slow` (CI runs both)
def test_fifty_concurrent_writers_never_tear_or_lose_an_entry(tmp_path: Path) -> None:
    path = tmp_path / "state" / "runs" / "run-1" / "findings.md"
    path.parent.mkdir(parents=True)
    procs = []
    for n in range(50):
        task = f"task-{n:02d}"
        body = [f"{task} line {k:02d} " + "x" * 100 for k in range(LINES_PER_NOTE)]
        text = "\n".join([f"finding of {task}", *body])
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "worktree_swarm.cli", "note", text],
                cwd=tmp_path,
                env=note_env(path, task),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err.decode()
        assert out == b""

    text = path.read_text()
    assert text.startswith("# Findings of run run-1\n")
    assert text.count("# Findings of run") == 1
    found = entries(text)
    assert len(found) == 50
    tags = []
    for header, body in found:
        match = ENTRY_RE.fullmatch(header)
        assert match is not None, header
        tag = match["tag"]
        tags.append(tag)
        assert match["first"] == f"finding of {tag}"
        assert body == [f"{tag} line {k:02d} " + "x" * 100 for k in range(LINES_PER_NOTE)]
    assert sorted(tags) == [f"task-{n:02d}" for n in range(50)]


def test_agent_notes_land_in_its_runs_findings_file(
    repo: Path, write_agent: Callable[[str], list[str]]
) -> None:
    agent = write_agent(
        "import subprocess, sys\n"
        "subprocess.run([sys.executable, '-m', 'worktree_swarm.cli', 'note',"
        " 'tests need FOO=1\\nsee conftest.py'], check=True)\n"
        "open('out.txt', 'w').write('done')\n"
    )
    ran = swarm(repo, "run", "--agent", " ".join(agent), "-t", "probe=find things")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    run_id = ran.stdout.strip().splitlines()[-1].split()[1].rstrip(":")
    findings = repo / ".git" / "swarm" / "runs" / run_id / "findings.md"

    shown = swarm(repo, "notes")

    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == findings.read_text()
    [(header, body)] = entries(shown.stdout)
    match = ENTRY_RE.fullmatch(header)
    assert match is not None
    assert (match["tag"], match["first"], body) == (
        "probe",
        "tests need FOO=1",
        ["see conftest.py"],
    )
    assert swarm(repo, "notes", "--run", run_id).stdout == shown.stdout


def test_user_note_goes_to_the_latest_run(repo: Path) -> None:
    ran = swarm(repo, "run", "--agent", "scripted", "-t", "a=say hi")
    assert ran.returncode in {0, 1}, ran.stderr

    wrote = swarm(repo, "note", "the CI image lacks libfoo")

    assert wrote.returncode == 0, wrote.stderr
    [(header, body)] = entries(swarm(repo, "notes").stdout)
    match = ENTRY_RE.fullmatch(header)
    assert match is not None
    assert (match["tag"], match["first"], body) == ("(user)", "the CI image lacks libfoo", [])


def test_notes_of_a_run_without_findings(repo: Path) -> None:
    swarm(repo, "run", "--agent", "scripted", "-t", "a=say hi")

    shown = swarm(repo, "notes")

    assert shown.returncode == 0
    assert shown.stdout == ""
    assert shown.stderr.startswith("no findings yet (")


def test_note_without_any_run_is_bad_input(repo: Path) -> None:
    result = swarm(repo, "note", "hello")

    assert result.returncode == 2
    assert result.stderr == (f"swarm: no swarm runs in {repo} yet; start one with `swarm run`\n")
    assert not (repo / ".git" / "swarm").exists()


def test_unknown_run_is_bad_input(repo: Path) -> None:
    swarm(repo, "run", "--agent", "scripted", "-t", "a=say hi")

    result = swarm(repo, "notes", "--run", "nope")

    assert result.returncode == 2
    assert result.stderr == "swarm: unknown run 'nope'; `swarm status` shows the latest run\n"


def test_empty_note_and_bad_task_id_are_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "r" / "findings.md"
    path.parent.mkdir(parents=True)

    def note(text: str, task_id: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "worktree_swarm.cli", "note", text],
            cwd=tmp_path,
            env=note_env(path, task_id),
            capture_output=True,
            text=True,
            check=False,
        )

    empty = note("  \n ", "a")
    bad_id = note("x", "../../etc")

    assert (empty.returncode, bad_id.returncode) == (2, 2)
    assert empty.stderr.startswith("swarm: the note is empty;")
    assert bad_id.stderr == "swarm: SWARM_TASK_ID: '../../etc' is not a valid task id\n"
    assert not path.exists()


def test_a_stale_context_of_a_run_that_is_gone_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / ".git" / "swarm" / "runs" / "gone" / "findings.md"

    note = subprocess.run(
        [sys.executable, "-m", "worktree_swarm.cli", "note", "a finding"],
        cwd=tmp_path,
        env=note_env(path, "a"),
        capture_output=True,
        text=True,
        check=False,
    )

    assert note.returncode == 2
    assert note.stderr == (
        f"swarm: SWARM_CONTEXT: {path.parent} does not exist; is that run gone?\n"
    )
    assert not (tmp_path / ".git").exists()


def test_control_characters_never_reach_the_file_or_the_terminal(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "r" / "findings.md"
    path.parent.mkdir(parents=True)
    env = note_env(path, "a")
    note = subprocess.run(
        [sys.executable, "-m", "worktree_swarm.cli", "note", "\x1b[2Jred\rfake\x07"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert note.returncode == 0, note.stderr
    with path.open("a") as fh:  # an agent writing the file directly
        fh.write("\x1b]0;title\x07 \x9b31m \u202egnp.exe\n")  # C1 CSI, a bidi override

    shown = subprocess.run(
        [sys.executable, "-m", "worktree_swarm.cli", "notes"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )

    assert "\x1b[2J" not in path.read_text()
    assert "[a]  [2Jred" in shown.stdout
    assert "fake" in shown.stdout
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202e]", shown.stdout)


def test_findings_instructions_name_the_file_and_the_command() -> None:
    text = findings_instructions("/repo/.git/swarm/runs/r1/findings.md")

    assert "/repo/.git/swarm/runs/r1/findings.md" in text
    assert "$SWARM_CONTEXT" in text
    assert 'swarm note "' in text


def test_secrets_never_stay_in_the_findings_however_they_got_there(
    repo: Path, write_agent: Callable[[str], list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "sk-ant-api03-" + "n" * 30
    deploy = "deploy-token-of-the-task-5e1d"
    monkeypatch.setenv("ANTHROPIC_API_KEY", key)
    agent = write_agent(
        "import os, subprocess, sys\n"
        "key, deploy = os.environ['ANTHROPIC_API_KEY'], os.environ['DEPLOY_TOKEN']\n"
        "subprocess.run([sys.executable, '-m', 'worktree_swarm.cli', 'note',"
        " f'use {key} and {deploy}'], check=True)\n"
        "with open(os.environ['SWARM_CONTEXT'], 'a') as fh:  # straight into the file\n"
        "    fh.write(f'- raw: {key} {deploy}\\n')\n"
        "open('out.txt', 'w').write('done')\n"
    )
    (repo.parent / "tasks.toml").write_text(
        f'[[task]]\nid = "t"\nprompt = "p"\nagent = {json.dumps(agent)}\n'
        f'env = {{ DEPLOY_TOKEN = "{deploy}" }}\n'
    )
    ran = swarm(repo, "run", str(repo.parent / "tasks.toml"))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    (findings,) = (repo / ".git" / "swarm" / "runs").glob("*/findings.md")

    text = findings.read_text()  # the end of the run scrubbed what was written directly
    assert key not in text
    assert deploy not in text
    assert text.count("[REDACTED]") == 4
    # Written after the run (by an agent of yours, by hand): redacted when shown.
    with findings.open("a") as fh:
        fh.write(f"- later: {key}\n")
    shown = swarm(repo, "notes")
    assert shown.returncode == 0, shown.stderr
    assert key not in shown.stdout
    assert "- later: [REDACTED]" in shown.stdout
