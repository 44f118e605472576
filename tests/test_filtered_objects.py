"""A file under a filter swarm's git never runs: its decrypted bytes in no object of yours.

git-crypt's filter lives in the repository's config, which swarm's git switches off: a `git
add` of your checkout's decrypted (smudged) file hashes the plaintext into `.git/objects`, a
loose object there until `git gc` prunes it, whatever commit leaves it out.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import git, make_repo
from tests.test_clean import edits_done, report
from tests.test_guard import events
from tests.test_run import status_json, swarm, swarm_bg, wait_for

AgentFactory = Callable[[str], list[str]]
PLAIN = "PlaintextSecretValue"  # what the checkout holds; the store holds it rot13'ed
ROT13 = "tr A-Za-z N-ZA-Mn-za-m"


def stored_bytes(repo: Path) -> bytes:
    """Every object of *repo*'s store (loose or packed, reachable or not), concatenated."""
    return subprocess.run(
        ["git", "cat-file", "--batch-all-objects", "--batch", "--unordered"],
        cwd=repo, capture_output=True, check=True,
    ).stdout  # fmt: skip


def crypt_repo(path: Path) -> Path:
    """A repository whose secret.txt goes through a rot13 filter its own config defines."""
    repo = make_repo(path, {"README.md": "hello\n"})
    git(repo, "config", "filter.crypt.clean", ROT13)
    git(repo, "config", "filter.crypt.smudge", ROT13)
    (repo / ".gitattributes").write_text("secret.txt filter=crypt\n**/secret.txt filter=crypt\n")
    (repo / "secret.txt").write_text(f"{PLAIN}\n")
    git(repo, "add", ".gitattributes", "secret.txt")
    git(repo, "commit", "-q", "-m", "encrypted")
    assert PLAIN.encode() not in stored_bytes(repo)
    return repo


def test_the_guard_hashes_your_decrypted_file_into_no_object_of_yours(
    tmp_path: Path, write_agent: AgentFactory
) -> None:
    # Your uncommitted edit of the decrypted file: the guard's baseline of your checkout
    # hashed it (its stat no longer the index's), and hashed the agent's write over it.
    repo = crypt_repo(tmp_path / "repo")
    mine = f"{PLAIN}\nmy edit {PLAIN}2\n"
    (repo / "secret.txt").write_text(mine)
    agent = write_agent(
        "import pathlib, sys\n"
        f"pathlib.Path(sys.argv[1], 'secret.txt').write_text('agent {PLAIN}3\\n')\n"
        "pathlib.Path('work.txt').write_text('work\\n')\n"
    )
    out = swarm(repo, "run", "--agent", " ".join([*agent, str(repo)]), "-t", "t=x")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "wrote outside its worktree" in str(status_json(repo)["t"]["reason"])
    (write,) = events(repo, "outside_write")
    assert write["paths"] == ["secret.txt"]
    assert write["restored"] is True
    assert (repo / "secret.txt").read_text() == mine  # put back from the guard's own store
    assert f"+agent {PLAIN}3" in Path(str(write["patch"])).read_text()
    assert git(repo, "show", "swarm/t:work.txt") == "work"
    assert PLAIN.encode() not in stored_bytes(repo)
    assert not list((repo / ".git" / "swarm" / "runs").glob("*/guard/snapshot-objects"))


def test_a_rescue_saves_a_filtered_file_your_head_holds_as_it_is_hashing_nothing_new(
    tmp_path: Path, write_agent: AgentFactory
) -> None:
    # Left out of the rescue's `add`, the file is hashed (never stored) and found as HEAD
    # holds it: saved as HEAD has it, the directory deleted. Its decrypted copy beside it is
    # left out, named, and stored nowhere.
    repo = crypt_repo(tmp_path / "repo")
    root = edits_done(repo, write_agent).parent
    stray = root / "stray"
    stray.mkdir()
    (stray / ".gitattributes").write_text("*.txt filter=crypt\n")
    stored = subprocess.run(
        ["git", "cat-file", "blob", "HEAD:secret.txt"], cwd=repo, capture_output=True, check=True
    ).stdout
    (stray / "secret.txt").write_bytes(stored)
    (stray / "notes.md").write_text("notes nobody committed\n")
    found = report(repo, "doctor", "--yes", code=0)
    assert found[str(stray)]["fixed"], found[str(stray)]
    assert not stray.exists()
    (rescued,) = git(repo, "for-each-ref", "--format=%(refname)", "refs/swarm/rescued/").split()
    assert git(repo, "rev-parse", f"{rescued}:secret.txt") == git(
        repo, "rev-parse", "HEAD:secret.txt"
    )
    assert git(repo, "show", f"{rescued}:notes.md") == "notes nobody committed"

    stray.mkdir()
    (stray / ".gitattributes").write_text("*.txt filter=crypt\n")
    (stray / "secret.txt").write_text(f"{PLAIN}\n")
    (stray / "notes.md").write_text("more notes\n")
    found = report(repo, "doctor", "--yes", code=1)
    assert "left out secret.txt (filter crypt)" in str(found[str(stray)]["result"])
    assert (stray / "secret.txt").read_text() == f"{PLAIN}\n"
    assert PLAIN.encode() not in stored_bytes(repo)


def test_a_checkpoint_hashes_no_changed_filtered_file_only_names_it(
    tmp_path: Path, write_agent: AgentFactory
) -> None:
    # The checkpoint added the agent's filtered files, then took them back out of its
    # commit: their bytes were loose objects all the same.
    repo = crypt_repo(tmp_path / "repo")
    agent = write_agent(
        "import pathlib\n"
        f"pathlib.Path('secret.txt').write_text('{PLAIN}4\\n')\n"
        "pathlib.Path('sub').mkdir()\n"
        f"pathlib.Path('sub', 'secret.txt').write_text('{PLAIN}5\\n')\n"
        "pathlib.Path('work.txt').write_text('work\\n')\n"
    )
    assert swarm(repo, "run", "--agent", " ".join(agent), "-t", "t=x").returncode == 1
    reason = str(status_json(repo)["t"]["reason"])
    assert "(secret.txt (filter crypt), sub/secret.txt (filter crypt))" in reason, reason
    assert git(repo, "ls-tree", "-r", "--name-only", "swarm/t") == (
        ".gitattributes\nREADME.md\nsecret.txt\nwork.txt"
    )
    assert git(repo, "rev-parse", "swarm/t:secret.txt") == git(repo, "rev-parse", "HEAD:secret.txt")
    worktree = repo.parent / "repo.swarm" / "t"
    assert (worktree / "sub" / "secret.txt").read_text() == f"{PLAIN}5\n"  # not lost
    assert PLAIN.encode() not in stored_bytes(repo)


def test_without_a_filter_too_the_guard_hashes_into_a_store_of_the_runs_own(
    tmp_path: Path, write_agent: AgentFactory
) -> None:
    # No filter in the config: your edit, and an agent's file, were hashed into your store by
    # the guard's captures (an agent's dump of its environment holding a key among them). The
    # agent looks for the guard's own store while the guard watches.
    repo = make_repo(tmp_path / "repo", {"README.md": "hello\n"})
    (repo / "README.md").write_text("my uncommitted edit\n")
    agent = write_agent(
        "import pathlib, sys\n"
        "runs = pathlib.Path(sys.argv[1], '.git', 'swarm', 'runs')\n"
        "made = sorted(runs.glob('*/guard/snapshot-objects'))\n"
        "pathlib.Path('found.txt').write_text(f'{len(made)} stores\\n')\n"
        "pathlib.Path('notes.txt').write_text('AgentsOwnNote\\n')\n"
    )
    out = swarm(repo, "run", "--agent", " ".join([*agent, str(repo)]), "-t", "t=x")
    assert out.returncode == 0, out.stdout + out.stderr
    assert git(repo, "show", "swarm/t:found.txt") == "1 stores"
    assert b"my uncommitted edit" not in stored_bytes(repo)  # in no object of yours
    assert git(repo, "show", "swarm/t:notes.txt") == "AgentsOwnNote"  # committed, as ever
    assert not list((repo / ".git" / "swarm" / "runs").glob("*/guard/snapshot-objects"))


def holding(root: Path, text: str) -> list[Path]:
    """The files under *root* whose bytes (or, a loose object's, inflated) hold *text*."""
    found = []
    for path in (p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        data = path.read_bytes()
        with contextlib.suppress(zlib.error):
            data += zlib.decompress(data)
        if text.encode() in data:
            found.append(path)
    return found


# A merge check that says it runs, then waits for a writer of the FIFO beside the flag.
BLOCKING_CHECK = """
import pathlib, sys
ctrl = pathlib.Path(sys.argv[1])
(ctrl / 'checking').touch()
with open(ctrl / 'fifo') as wait:
    wait.read()
"""


@pytest.mark.parametrize("command", ["clean", "doctor"])
def test_a_killed_merge_leaves_no_decrypted_file_once_cleaned(
    tmp_path: Path, write_agent: AgentFactory, command: str
) -> None:
    # The merge's guard captured your edit of the decrypted file into its own store, then the
    # merge was killed with its check: only a merge's normal end deleted that store.
    repo = crypt_repo(tmp_path / "repo")
    agent = write_agent("import pathlib\npathlib.Path('work.txt').write_text('work\\n')\n")
    assert swarm(repo, "run", "--agent", " ".join(agent), "-t", "t=x").returncode == 0
    (repo / "secret.txt").write_text(f"{PLAIN}\nmy edit {PLAIN}2\n")
    ctrl = tmp_path / "ctrl"
    ctrl.mkdir()
    os.mkfifo(ctrl / "fifo")
    (tmp_path / "check.py").write_text(BLOCKING_CHECK)
    check = f"{sys.executable} {tmp_path / 'check.py'} {ctrl}"
    merging = subprocess.Popen(
        [sys.executable, "-m", "worktree_swarm.cli", "merge", "--check", check],
        cwd=repo, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for((ctrl / "checking").exists, what="the merge's check")
        swarm_dir = repo / ".git" / "swarm"
        assert list(swarm_dir.glob("runs/*/merge/guard/snapshot-objects")), "no store to leave"
        assert list(swarm_dir.glob("runs/*/merge/guard/held/*")), "no held objects to leave"
        os.killpg(merging.pid, signal.SIGKILL)
        merging.wait()
    finally:
        if merging.poll() is None:
            os.killpg(merging.pid, signal.SIGKILL)
            merging.wait()
        with contextlib.suppress(OSError):  # the check, if still waiting, reads EOF and ends
            os.close(os.open(ctrl / "fifo", os.O_WRONLY | os.O_NONBLOCK))
    out = swarm(repo, command, "--yes")
    assert out.returncode in {0, 1}, out.stdout + out.stderr
    assert holding(swarm_dir, PLAIN) == []
    assert PLAIN.encode() not in stored_bytes(repo)
    # Nor its links to your object files, which kept what a `git gc` freed on disk.
    assert list(swarm_dir.glob("runs/*/merge/guard/held")) == []


# Deletes the guard's own store (no --sandbox: it can), then, once told, writes into your
# checkout. Renamed away first: a guard writing into the store meanwhile would make a plain
# `rmtree` fail (the agent ended before its write).
STORE_DELETER = """
import pathlib, shutil, sys, time
repo, flags = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
(store,) = repo.glob('.git/swarm/runs/*/guard/snapshot-objects')
gone = store.with_name('gone')
store.rename(gone)
shutil.rmtree(gone, ignore_errors=True)
while not (flags / 'go').exists():
    time.sleep(0.05)
(repo / 'README.md').write_text('agent\\n')
pathlib.Path('work.txt').write_text('work\\n')
"""


def test_the_guards_store_deleted_is_told_and_later_writes_are_put_back(
    tmp_path: Path, write_agent: AgentFactory
) -> None:
    # Every comparison after the deletion failed (its baselines named objects that were gone):
    # the agent's later write into your checkout stayed, the task only "not vouched for".
    repo = crypt_repo(tmp_path / "repo")
    mine = f"{PLAIN}\nmy edit {PLAIN}2\n"
    (repo / "secret.txt").write_text(mine)
    written = _store_deleted_under_a_run(repo, tmp_path, write_agent, STORE_DELETER)
    assert written["restored"] is True
    assert (repo / "README.md").read_text() == "hello\n"
    assert (repo / "secret.txt").read_text() == mine
    assert git(repo, "show", "swarm/t:work.txt") == "work"
    assert PLAIN.encode() not in stored_bytes(repo)


# Deletes the guard's whole directory, its store with it (no --sandbox: it can), not the
# state directory `.git/swarm`, which the manager writes back.
GUARD_DIR_DELETER = STORE_DELETER.replace(
    "gone = store.with_name('gone')\nstore.rename(gone)",
    "gone = store.parent.with_name('gone')\nstore.parent.rename(gone)",
)


def test_the_guards_directory_deleted_by_an_agent_is_its_outside_write(
    tmp_path: Path, write_agent: AgentFactory
) -> None:
    # Told apart from the whole state directory by the guard's own directory, the loss was
    # taken for `rm -rf .git/swarm` (logged: "the run's directory was deleted with it") and
    # the agent that deleted it was named nowhere.
    repo = make_repo(tmp_path / "repo", {"README.md": "hello\n"})
    (repo / "notes.txt").write_text("my uncommitted notes\n")
    _store_deleted_under_a_run(repo, tmp_path, write_agent, GUARD_DIR_DELETER)
    assert (repo / "README.md").read_text() == "hello\n"


def _store_deleted_under_a_run(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, deleter: str
) -> dict[str, object]:
    """Run the agent *deleter* (it deletes the guard's store, then writes your README): the
    outside write of the deletion checked, the write's event returned."""
    flags = tmp_path / "flags"
    flags.mkdir()
    agent = " ".join([*write_agent(deleter), str(repo), str(flags)])
    running = swarm_bg(repo, "run", "--agent", agent, "-t", "t=x")
    try:

        def told() -> bool:
            logs = (repo / ".git" / "swarm" / "runs").glob("*/guard/guard.log")
            return any("store of your checkout's baseline" in log.read_text() for log in logs)

        wait_for(told, what="the guard to tell its store was deleted")
        (flags / "go").touch()
        assert running.wait(timeout=120) == 1, (repo.parent / "bg.log").read_text()
    finally:
        (flags / "go").touch()
        if running.poll() is None:
            running.kill()
    deleted, written = events(repo, "outside_write")
    assert deleted["where"] == "repository", deleted
    assert deleted["suspects"] == ["t"]
    assert "cannot be put back" in str(deleted["lost"])
    assert written["paths"] == ["README.md"], written
    return written
