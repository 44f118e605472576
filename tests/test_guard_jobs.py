"""A bug in one part of the guard's scan: told as that part's failure, the rest goes on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import make_repo
from worktree_swarm.git.repo import open_repo
from worktree_swarm.guard import setuid
from worktree_swarm.guard.model import REPOSITORY
from worktree_swarm.guard.watcher import Guard
from worktree_swarm.infra.proctree import identity_of


def test_a_bug_in_one_part_of_a_scan_is_told_and_the_rest_is_still_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It raised out of the scan: the background scans ended for the rest of the run, and a
    # write into your checkout went unput back until the run's end.
    repo = make_repo(tmp_path / "repo", {"README.md": "hello\n"})
    guard = Guard(open_repo(repo), work_dir=tmp_path / "guard", restore=True)
    guard.start()
    try:
        identity = identity_of(os.getpid())
        assert identity is not None
        guard.agent_started("rogue", identity)

        def broken(common: Path) -> dict[str, int]:
            raise KeyError(str(common))  # a bug (the only way to have one here: injected)

        monkeypatch.setattr(setuid, "setuid_files", broken)
        (repo / "README.md").write_text("the agent's\n")
        found = guard.scan(deep=True)
        assert [v.paths for v in found] == [("README.md",)]
        assert (repo / "README.md").read_text() == "hello\n"  # put back all the same
        failures = guard.drain_failures()
        assert [f.job for f in failures] == [REPOSITORY]
        assert failures[0].reason.startswith("internal error: KeyError")
        assert "Traceback" in (tmp_path / "guard" / "guard.log").read_text()
        monkeypatch.undo()
        assert guard.scan(deep=True) == []
        assert "scanned again" in (tmp_path / "guard" / "guard.log").read_text()
    finally:
        guard.close()
