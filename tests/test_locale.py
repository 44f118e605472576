"""swarm under a locale whose encoding is not UTF-8 (Python's UTF-8 mode off): file names
keep their bytes, and every output takes any text."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from tests.conftest import git

AgentFactory = Callable[[str], list[str]]

# A name Latin-1 cannot spell, and one whose bytes are no encoding's text.
CJK = "文档-☃.md".encode()
NOT_TEXT = b"bytes-\xff\xfe.txt"
WRITES_ODD_NAMES = f"""
open({CJK!r}, 'wb').write(b'# doc\\n')
open({NOT_TEXT!r}, 'wb').write(b'raw\\n')
open('notes.txt', 'w').write('plain\\n')
"""


@pytest.fixture(scope="session")
def latin1_locale(tmp_path_factory: pytest.TempPathFactory) -> Mapping[str, str]:
    """The variables of a Latin-1 locale (built with localedef), Python's UTF-8 mode off."""
    if shutil.which("localedef") is None:
        pytest.skip("localedef is missing: no Latin-1 locale to run under")
    where = tmp_path_factory.mktemp("locales")
    built = subprocess.run(
        ["localedef", "-i", "en_US", "-f", "ISO-8859-1", str(where / "en_US.ISO-8859-1")],
        capture_output=True,
        check=False,
    )
    env = {
        "LOCPATH": str(where),
        "LC_ALL": "en_US.ISO-8859-1",
        "PYTHONUTF8": "0",
        "PYTHONCOERCECLOCALE": "0",
    }
    asked = [sys.executable, "-c", "import sys; print(sys.getfilesystemencoding())"]
    found = subprocess.run(asked, env={**os.environ, **env}, capture_output=True, check=False)
    if built.returncode != 0 or found.stdout.strip() != b"iso8859-1":
        pytest.skip(f"no Latin-1 locale: localedef said {built.stderr!r}")
    return env


def swarm_under(
    locale: Mapping[str, str], repo: Path, *args: str
) -> subprocess.CompletedProcess[bytes]:
    """The real CLI run in *repo* under *locale*; its output as bytes."""
    return subprocess.run(
        [sys.executable, "-m", "worktree_swarm.cli", *args],
        cwd=repo,
        env={**os.environ, **locale},
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )


def committed(repo: Path, branch: str) -> set[bytes]:
    listed = subprocess.run(
        ["git", "ls-tree", "-r", "-z", "--name-only", branch],
        cwd=repo,
        capture_output=True,
        check=True,
    ).stdout
    return {name for name in listed.split(b"\0") if name}


def test_files_named_beyond_the_locale_are_committed_on_the_branch(
    repo: Path, write_agent: AgentFactory, latin1_locale: Mapping[str, str]
) -> None:
    # Read as UTF-8, 文档 named no file Latin-1 can spell: the checkpoint failed with an
    # internal error (UnicodeEncodeError), every file of the task staged only.
    agent = " ".join(write_agent(WRITES_ODD_NAMES))
    out = swarm_under(latin1_locale, repo, "run", "-t", "t=write", "--agent", agent)
    assert out.returncode == 0, out.stdout + out.stderr
    assert b"done" in out.stdout
    assert committed(repo, "swarm/t") == {b"README.md", b"notes.txt", CJK, NOT_TEXT}
    assert git(repo, "status", "--porcelain") == ""


def test_an_untracked_file_named_beyond_the_locale_in_your_checkout_lets_a_run_start(
    repo: Path, write_agent: AgentFactory, latin1_locale: Mapping[str, str]
) -> None:
    # Its name, read as UTF-8, could not be resolved: `swarm run` crashed before it started.
    (repo / os.fsdecode(CJK)).write_bytes(b"mine\n")
    agent = " ".join(write_agent("open('work.txt', 'w').write('work\\n')\n"))
    out = swarm_under(latin1_locale, repo, "run", "-t", "t=work", "--agent", agent)
    assert out.returncode == 0, out.stdout + out.stderr
    assert b"uncommitted changes in your checkout are not part of the base" in out.stderr
    assert committed(repo, "swarm/t") == {b"README.md", b"work.txt"}
    assert (repo / os.fsdecode(CJK)).read_bytes() == b"mine\n"


# The C locale, as a minimal container has it: Python's streams take ASCII and surrogates.
C_LOCALE = {"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0", "LANG": ""}


def test_an_agents_line_the_c_locale_cannot_spell_is_shown_escaped_and_the_run_goes_on(
    repo: Path, write_agent: AgentFactory
) -> None:
    # Its `é` killed the run's manager (UnicodeEncodeError printing the task's reason): the
    # run ended in an internal error, and status said its manager was not running.
    agent = " ".join(
        write_agent(
            "import sys\n"
            "sys.stdout.buffer.write('échec: la compilation a raté\\n'.encode())\n"
            "sys.exit(1)\n"
        )
    )
    out = swarm_under(C_LOCALE, repo, "run", "-t", "t=fail", "--agent", agent)
    assert out.returncode == 1, out.stdout + out.stderr  # a task failed
    assert b"t: failed - agent exited 1: \\xe9chec: la compilation a rat\\xe9\n" in out.stdout
    assert b"run finished" in out.stdout
    assert out.stderr == b""


def swarm_without_stdout(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI run in *repo* with its stdout closed (``swarm ARGS >&-``)."""
    return subprocess.run(
        ["sh", "-c", 'exec "$@" >&-', "sh", sys.executable, "-m", "worktree_swarm.cli", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )


def test_commands_whose_stdout_is_closed_work_and_say_nothing(
    repo: Path, write_agent: AgentFactory
) -> None:
    # Python leaves a closed stdout None: `run`, `status` and `clean` crashed on it.
    agent = " ".join(write_agent("open('work.txt', 'w').write('work\\n')\n"))
    ran = swarm_without_stdout(repo, "run", "-t", "t=work", "--agent", agent)
    assert (ran.returncode, ran.stderr) == (0, "")
    assert git(repo, "show", "swarm/t:work.txt") == "work"
    looked = swarm_without_stdout(repo, "status")
    assert (looked.returncode, looked.stderr) == (0, "")
    cleaned = swarm_without_stdout(repo, "clean", "--yes", "--force")
    assert (cleaned.returncode, cleaned.stderr) == (0, "")
    assert git(repo, "branch", "--list", "swarm/t") == ""


def test_a_full_stdout_is_named_as_what_could_not_be_written(
    repo: Path, write_agent: AgentFactory
) -> None:
    # It was named "swarm's state", which nothing had written.
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    agent = " ".join(write_agent("open('work.txt', 'w').write('work\\n')\n"))
    assert swarm_under({}, repo, "run", "-t", "t=work", "--agent", agent).returncode == 0
    with Path("/dev/full").open("wb") as full:
        out = subprocess.run(
            [sys.executable, "-m", "worktree_swarm.cli", "status"],
            cwd=repo,
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
        )
    assert out.returncode == 1
    assert out.stderr == (
        "swarm: cannot write its output (stdout): No space left on device; free some space, "
        "then run `swarm status` again\n"
    )


def test_names_beyond_the_locale_are_shown_as_git_quotes_them(
    repo: Path, write_agent: AgentFactory, latin1_locale: Mapping[str, str]
) -> None:
    # Read as Latin-1, each byte of 文档 was a character of its own: shown as the UTF-8 bytes
    # of those characters, a name no file has ("\302\226" for the byte 226).
    agent = " ".join(write_agent(WRITES_ODD_NAMES))
    assert (
        swarm_under(latin1_locale, repo, "run", "-t", "t=write", "--agent", agent).returncode == 0
    )
    out = swarm_under(latin1_locale, repo, "diff", "--name-only", "t")
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode("latin-1").splitlines()[1:] == [
        '  "bytes-\\377\\376.txt"',
        "  notes.txt",
        '  "\\346\\226\\207\\346\\241\\243-\\342\\230\\203.md"',
    ]
    assert git(repo, "diff", "--name-only", "main", "swarm/t").splitlines() == [
        line.strip() for line in out.stdout.decode("latin-1").splitlines()[1:]
    ]


def test_a_merge_of_tasks_that_both_edit_a_file_named_beyond_the_locale_reports_the_conflict(
    tmp_path: Path, write_agent: AgentFactory, latin1_locale: Mapping[str, str]
) -> None:
    # The prediction read their changes as UTF-8 text, which named no file to ask git about:
    # `swarm merge` ended in an internal error (UnicodeEncodeError).
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / os.fsdecode(CJK)).write_bytes(b"shared\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "initial")
    agent = " ".join(
        write_agent(f"import os\nopen({CJK!r}, 'ab').write(os.environ['SWARM_TASK_ID'].encode())\n")
    )
    ran = swarm_under(latin1_locale, repo, "run", "-t", "a=edit", "-t", "b=edit", "--agent", agent)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    merged = swarm_under(latin1_locale, repo, "merge")
    assert merged.stderr == b""
    assert merged.returncode == 1  # one conflicted
    quoted = b'"\\346\\226\\207\\346\\241\\243-\\342\\230\\203.md"'
    assert b"  conflict  a <-> b: " + quoted + b"\n" in merged.stdout
