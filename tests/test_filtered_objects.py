"""A file under a filter swarm's git never runs: its decrypted bytes in no object of yours.

git-crypt's filter lives in the repository's config, which swarm's git switches off: a `git
add` of your checkout's decrypted (smudged) file hashes the plaintext into `.git/objects`, a
loose object there until `git gc` prunes it, whatever commit leaves it out.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.conftest import git, make_repo
from tests.test_guard import events
from tests.test_run import status_json, swarm

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
    (repo / ".gitattributes").write_text("secret.txt filter=crypt\n")
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
