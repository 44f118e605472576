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
from worktree_swarm.report.notes import (
    MAX_SHOWN_BYTES,
    added_since,
    findings_instructions,
    merge_in,
    prepare,
    read_notes,
    start_copy,
)

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


def start_notes(path: Path, count: int) -> list[subprocess.Popen[bytes]]:
    """Start *count* real `swarm note` processes at once, each with a long multi-line note."""
    procs = []
    for n in range(count):
        task = f"task-{n:02d}"
        body = [f"{task} line {k:02d} " + "x" * 100 for k in range(LINES_PER_NOTE)]
        text = "\n".join([f"finding of {task}", *body])
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "worktree_swarm.cli", "note", text],
                cwd=path.parent,
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
    return procs


def assert_whole(path: Path, count: int) -> None:
    """The file has its header once, first, then every note of :func:`start_notes` whole."""
    text = path.read_text()
    assert text.startswith(f"# Findings of run {path.parent.name}\n")
    assert text.count("# Findings of run") == 1
    found = entries(text)
    assert len(found) == count
    tags = []
    for header, body in found:
        match = ENTRY_RE.fullmatch(header)
        assert match is not None, header
        tag = match["tag"]
        tags.append(tag)
        assert match["first"] == f"finding of {tag}"
        assert body == [f"{tag} line {k:02d} " + "x" * 100 for k in range(LINES_PER_NOTE)]
    assert sorted(tags) == [f"task-{n:02d}" for n in range(count)]


@pytest.mark.slow  # long: runs in `scripts/check --slow` (CI runs both)
def test_fifty_concurrent_writers_never_tear_or_lose_an_entry(tmp_path: Path) -> None:
    path = tmp_path / "state" / "runs" / "run-1" / "findings.md"
    path.parent.mkdir(parents=True)  # no file yet: the first writers race to create it

    start_notes(path, 50)

    assert_whole(path, 50)


# Locks findings.md.lock (which `swarm note` once took around each append) and the findings
# file itself, both ways a lock can be taken, and keeps them until its stdin closes.
HOLD_LOCKS = """
import fcntl, sys
held = []
for name in sys.argv[1:]:
    for take in (fcntl.flock, fcntl.lockf):
        fh = open(name, "a")
        take(fh, fcntl.LOCK_EX)
        held.append(fh)
print("held", flush=True)
sys.stdin.read()
"""


def test_a_process_holding_a_lock_silences_no_note(tmp_path: Path) -> None:
    # An agent (sandboxed or not) that took findings.md.lock for good had every other agent's
    # `swarm note` fail after 30 s: one agent silenced all the others' findings.
    path = tmp_path / "runs" / "run-1" / "findings.md"
    prepare(path)  # as the run does before its agents start
    with subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCKS, f"{path}.lock", str(path)],
        stdin=subprocess.PIPE,  # closed as the block ends: the holder then exits
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"

        start_notes(path, 8)  # each must succeed while the locks are held

        assert holder.poll() is None
    assert_whole(path, 8)


@pytest.mark.parametrize("kind", ["symlink", "dangling symlink", "fifo", "directory"])
def test_note_and_notes_refuse_what_is_not_a_regular_file(tmp_path: Path, kind: str) -> None:
    # Without --sandbox an agent can write its run's directory: a symlink there had notes
    # appended to the file it names, a FIFO blocked both commands for good.
    path = tmp_path / "runs" / "r" / "findings.md"
    path.parent.mkdir(parents=True)
    outside = tmp_path / "bashrc"
    if kind == "symlink":
        outside.write_text("mine\n")
        path.symlink_to(outside)
    elif kind == "dangling symlink":
        path.symlink_to(outside)
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "worktree_swarm.cli", *args],
            cwd=tmp_path,
            env=note_env(path, "a"),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )

    note = run("note", "a finding")
    shown = run("notes")

    what = {"symlink": "a symbolic link", "dangling symlink": "a symbolic link"}.get(
        kind, f"a {kind.replace('fifo', 'FIFO')}"
    )
    said = (
        f"swarm: {path} is {what}: swarm reads and appends to a regular file only;"
        " remove it (a note then makes a new one)\n"
    )
    assert (note.returncode, note.stdout, note.stderr) == (1, "", said)
    assert (shown.returncode, shown.stdout, shown.stderr) == (1, "", said)
    if kind == "symlink":
        assert outside.read_text() == "mine\n"
    else:
        assert not outside.exists()
    assert sorted(p.name for p in path.parent.iterdir()) == ["findings.md"]  # no temp file left


def test_a_note_cut_short_by_a_full_disk_is_reported_never_finished(small_disk: Path) -> None:
    # The rest of an entry cut short, written again, could land inside another writer's entry.
    path = small_disk / "runs" / "r" / "findings.md"
    prepare(path)
    info = os.statvfs(small_disk)
    if info.f_frsize > 4096:
        pytest.skip("a block larger than any note: the note is never cut")
    with (small_disk / "filler").open("wb") as fh:  # the disk full: room in the file's block
        fh.write(b"\0" * info.f_bavail * info.f_frsize)
    size = path.stat().st_size
    body = ["y" * 1000 for _ in range(7)]  # an entry longer than a block

    note = subprocess.run(
        [sys.executable, "-m", "worktree_swarm.cli", "note", "\n".join(body)],
        cwd=small_disk,
        env=note_env(path, "a"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )

    written = path.stat().st_size - size
    entry = append_entry_bytes(body)
    assert 0 < written < len(entry)
    assert note.returncode == 1
    assert note.stderr == (
        f"swarm: {path}: only {written} of {len(entry)} bytes of the note"
        " were written (is the disk full?); the file ends in a cut entry\n"
    )


def append_entry_bytes(lines: list[str]) -> bytes:
    """The bytes `swarm note` writes for *lines*, but its stamp (of the same length)."""
    return (
        "\n".join(
            [f"- 2000-01-01 00:00:00Z [a] {lines[0]}", *(f"  {x}" for x in lines[1:])]
        ).encode()
        + b"\n"
    )


def test_agents_find_the_findings_file_with_its_header_from_the_start(
    repo: Path, write_agent: Callable[[str], list[str]]
) -> None:
    agent = write_agent(
        "import os, sys\n"
        "text = open(os.environ['SWARM_CONTEXT']).read()\n"
        "open('out.txt', 'w').write('done')\n"
        "sys.exit(0 if text.startswith('# Findings of run ') else 3)\n"
    )
    ran = swarm(repo, "run", "--agent", " ".join(agent), "-t", "first=look")

    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert swarm(repo, "notes").stdout == ""  # the header alone: no findings yet


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
    assert result.stderr == "swarm: unknown run 'nope'; `swarm runs` lists the recorded runs\n"


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


def test_a_note_over_8000_characters_is_refused_and_8000_go_in_whole(tmp_path: Path) -> None:
    # docs/plan.md: "notes are limited to 8,000 characters". At the limit, the widest entry
    # (a 4-byte character a line, each continuation line indented) is still one append.
    path = tmp_path / "runs" / "r" / "findings.md"
    prepare(path)
    before = path.read_bytes()

    def note(text: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "worktree_swarm.cli", "note", text],
            cwd=tmp_path,
            env=note_env(path, "a"),
            capture_output=True,
            text=True,
            check=False,
        )

    over = note("x" * 8001)
    assert over.returncode == 2
    assert over.stderr == (
        "swarm: the note is longer than 8000 characters; keep notes to short facts\n"
    )
    assert path.read_bytes() == before
    widest = "\n".join(["\U0001f600"] * 8000)
    assert note(widest).returncode == 0
    ((header, body),) = entries(path.read_text())
    assert header.endswith("[a] \U0001f600")
    assert body == ["\U0001f600"] * 7999


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


def test_a_note_after_a_line_written_without_its_newline_starts_a_line_of_its_own(
    tmp_path: Path,
) -> None:
    # An agent that writes the file directly may leave its last line open: the next note
    # was joined to it, and read as part of that line, not as an entry.
    path = tmp_path / "runs" / "r" / "findings.md"
    prepare(path)
    with path.open("a") as fh:
        fh.write("an agent's line, no newline")
    for text in ("first", "second"):
        note = subprocess.run(
            [sys.executable, "-m", "worktree_swarm.cli", "note", text],
            cwd=tmp_path,
            env=note_env(path, "a"),
            capture_output=True,
            text=True,
            check=False,
        )
        assert note.returncode == 0, note.stderr
    lines = path.read_text().splitlines()
    assert lines[-3] == "an agent's line, no newline"
    assert [ENTRY_RE.fullmatch(line)["first"] for line in lines[-2:]] == ["first", "second"]  # type: ignore[index]


def test_a_copy_on_another_machine_starts_from_the_runs_notes_and_gives_back_only_its_own(
    tmp_path: Path,
) -> None:
    # The Ray executor's agents note into a copy on their node; what they add, and only
    # that, goes back into the run's file, once, whatever they wrote straight into the copy.
    run = tmp_path / "runs" / "r" / "findings.md"
    prepare(run)
    note(run, "known before", "a")
    copy = tmp_path / "node" / "findings.md"
    start = start_copy(copy, read_notes(run), run_id="r")
    assert copy.read_text() == run.read_text()
    note(copy, "found on the node", "b")
    with copy.open("a") as fh:
        fh.write("\x1b]0;title\x07 a line of its own, left open")
    added, end = added_since(copy, start)
    assert (added_since(copy, end), end) == (("", end), copy.stat().st_size)
    merge_in(run, added)
    merge_in(run, "")
    found = entries(run.read_text())
    assert [(ENTRY_RE.fullmatch(h)["tag"], ENTRY_RE.fullmatch(h)["first"]) for h, _ in found] == [  # type: ignore[index]
        ("a", "known before"),
        ("b", "found on the node"),
    ]
    assert run.read_text().endswith("found on the node\n a line of its own, left open\n")
    # A header alone starts the copy with its header; a copy the agent made a symlink
    # (to a file of the node's) gives nothing back.
    empty = start_copy(tmp_path / "other" / "findings.md", "", run_id="r")
    assert (tmp_path / "other" / "findings.md").read_text().startswith("# Findings of run r")
    secret = tmp_path / "secret"
    secret.write_text("- the node's secret\n" * 10)
    (tmp_path / "other" / "findings.md").unlink()
    (tmp_path / "other" / "findings.md").symlink_to(secret)
    assert added_since(tmp_path / "other" / "findings.md", empty) == ("", empty)


def note(path: Path, text: str, task: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "worktree_swarm.cli", "note", text],
        cwd=path.parent,
        env=note_env(path, task),
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr


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
    # A task's own secret (its `env`) too, as while its agent runs, before the end's scrub.
    with findings.open("a") as fh:
        fh.write(f"- later: {key}\n- later, the task's: {deploy}\n")
    shown = swarm(repo, "notes")
    assert shown.returncode == 0, shown.stderr
    assert key not in shown.stdout
    assert deploy not in shown.stdout
    assert "- later: [REDACTED]" in shown.stdout
    assert "- later, the task's: [REDACTED]" in shown.stdout


def test_notes_show_the_end_of_a_findings_file_an_agent_made_huge(repo: Path) -> None:
    # Agents can write the file directly: `swarm notes` read all of it into memory and printed
    # it, however big.
    swarm(repo, "run", "--agent", "scripted", "-t", "a=say hi")
    path = Path(swarm(repo, "notes").stderr.split("(", 1)[1].split(")", 1)[0])
    with path.open("ab") as fh:
        for i in range(40_000):
            fh.write(f"- filler line {i:05d} ".encode() + b"x" * 60 + b"\n")
    assert path.stat().st_size > 2 * MAX_SHOWN_BYTES
    assert swarm(repo, "note", "the last word").returncode == 0

    shown = swarm(repo, "notes")

    assert shown.returncode == 0, shown.stderr
    first, *rest = shown.stdout.splitlines()
    assert first.startswith("[")
    assert first.endswith(f"not shown: the whole file is {path}]")
    skipped = int(first[1:].split(" ", 1)[0])
    assert len(shown.stdout.encode()) <= MAX_SHOWN_BYTES + len(first) + 1
    assert skipped + len("\n".join(rest).encode()) + 1 == path.stat().st_size
    assert rest[0].startswith("- filler line ")  # from a whole line
    assert rest[-1].endswith("the last word")


@pytest.mark.parametrize("umask", [0o077, 0o022], ids=["077", "022"])
def test_the_findings_file_gets_the_umasks_mode(tmp_path: Path, umask: int) -> None:
    # It was made 0644 whatever the umask: readable by all where everything else of a run's
    # is its owner's alone (umask 077).
    path = tmp_path / "findings.md"
    code = (
        f"import os, pathlib; os.umask({umask}); from worktree_swarm.report.notes import prepare;"
        f" prepare(pathlib.Path({str(path)!r}), run_id='r')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
