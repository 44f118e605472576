"""Your own git settings and environment: swarm's work holds under them.

Each test sets what a user's ``~/.gitconfig`` or shell may hold (HOME is the test's own) and
runs the real CLI on a real repository.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import git
from tests.test_run import argv_toml, manifest, status_json, swarm
from tests.test_shim import AgentFactory

_EDITS = """
import pathlib
with open("README.md", "a") as readme:
    readme.write("more\\n")
pathlib.Path("new.txt").write_text("one\\ntwo\\n")
"""


def test_a_checkpoint_holds_under_autocrlf_with_safecrlf(
    repo: Path, write_agent: AgentFactory
) -> None:
    # The pair a Windows or WSL user sets: git refused every checkpoint ("LF would be
    # replaced by CRLF"), the task failed with its work off its branch, its guard blind.
    Path(os.environ["HOME"], ".gitconfig").write_text(
        "[core]\n\tautocrlf = true\n\tsafecrlf = true\n"
    )
    text = f"[defaults]\nagent = {argv_toml(write_agent(_EDITS))}\n"
    text += '[[task]]\nid = "a"\nprompt = "p"\n[[task]]\nid = "b"\nprompt = "p"\n'
    out = swarm(repo, "run", manifest(repo, text))
    assert out.returncode == 0, out.stdout + out.stderr
    for task in "ab":
        assert status_json(repo)[task]["state"] == "done"
        assert git(repo, "show", f"swarm/{task}:new.txt") == "one\ntwo"
        assert git(repo, "show", f"swarm/{task}:README.md") == "hello\nmore"


_BIG = """
import pathlib
pathlib.Path("ok.txt").write_text("small\\n")
pathlib.Path("big.bin").write_bytes(b"x" * 3000)
"""


@pytest.mark.parametrize(
    "variable",
    ["GIT_LITERAL_PATHSPECS", "GIT_GLOB_PATHSPECS", "GIT_ICASE_PATHSPECS", "GIT_NOGLOB_PATHSPECS"],
)
def test_gits_pathspec_variables_in_your_environment_change_nothing(
    repo: Path, write_agent: AgentFactory, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    # swarm's pathspecs (`:(literal,top)big.bin`, `:(exclude).env`) meant something else: the
    # checkpoint failed, or the size cap left out nothing while status said it had.
    (repo / ".env").write_text("SECRET=x\n")
    (repo / "node_modules").mkdir()
    (repo / "node_modules" / "dep.js").write_text("module.exports = 1\n")
    monkeypatch.setenv(variable, "1")
    text = f'[defaults]\nagent = {argv_toml(write_agent(_BIG))}\nmax_file = "1K"\n'
    text += 'copy = [".env"]\nlink = ["node_modules"]\n[[task]]\nid = "t"\nprompt = "p"\n'
    out = swarm(repo, "run", manifest(repo, text))
    assert out.returncode == 1, out.stdout + out.stderr  # over max_file: failed, work kept
    assert "wrote files over max_file (1.0K: big.bin (2.9K))" in str(
        status_json(repo)["t"]["reason"]
    )
    assert git(repo, "ls-tree", "-r", "--name-only", "swarm/t") == "README.md\nok.txt"
    assert (repo.parent / "repo.swarm" / "t" / "big.bin").stat().st_size == 3000
