"""A new directory holding a repository, made in your checkout: taken out whole, kept.

Its files git does not list (hidden behind its `.git`) and its history are in no patch: the
guard moves the directory under the run's `guard/set-aside/` and says where.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import git, make_repo
from tests.test_run import status_json
from tests.test_trust import AgentFactory, outside_writes, run_one

NESTED = """
import pathlib, subprocess, sys
pathlib.Path('work.txt').write_text('own work\\n')
nested = pathlib.Path(sys.argv[1], 'nested')
subprocess.run(['git', 'init', '-q', str(nested)], check=True)
if sys.argv[2] == 'committed':
    (nested / 'kept.txt').write_text('committed there\\n')
    subprocess.run(['git', '-C', str(nested), 'add', 'kept.txt'], check=True)
    subprocess.run(['git', '-C', str(nested), '-c', 'user.name=a', '-c', 'user.email=a@b',
                    'commit', '-q', '-m', 'nested work'], check=True)
(nested / 'notes.txt').write_text('only copy\\n')
"""


@pytest.mark.parametrize("kind", ["unborn", "committed"])
def test_a_new_repository_in_your_checkout_is_moved_aside_whole_not_deleted(
    tmp_path: Path, write_agent: AgentFactory, kind: str
) -> None:
    repo = make_repo(tmp_path / "repo", {"README.md": "hi\n"})
    run_one(repo, [*write_agent(NESTED), str(repo), kind], sandbox=False)
    row = status_json(repo)["bad"]
    assert row["state"] == "failed", row
    [write] = outside_writes(repo)
    assert write["restored"] is True, write
    assert not (repo / "nested").exists()
    [aside] = write["set_aside"]
    assert f"moved whole to {aside}" in str(write["summary"]), write
    assert f"moved whole to {aside}" in Path(str(write["patch"])).read_text()
    assert (Path(aside) / "notes.txt").read_text() == "only copy\n"
    if kind == "committed":
        shown = subprocess.run(["git", "-C", aside, "log", "--format=%s"], capture_output=True,
                               text=True, check=True)  # fmt: skip
        assert shown.stdout == "nested work\n"
    assert git(repo, "status", "--porcelain") == ""
