"""Deleting trees that tools made read-only, as their owner; reading only regular files."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import as_owner_only
from worktree_swarm.infra import fs


def read_only_tree(top: Path) -> Path:
    """A tree as Go's module cache leaves it: files 0444, directories 0555, one 0000."""
    deep = top / "mod" / "pkg@v1" / "sub"
    deep.mkdir(parents=True)
    (deep / "a.go").write_text("package a\n")
    (top / "mod" / "sealed").mkdir()
    (top / "mod" / "sealed" / "x").write_text("x")
    (deep / "a.go").chmod(0o444)
    (top / "mod" / "sealed").chmod(0)
    for d in (deep, deep.parent, top / "mod", top):
        d.chmod(0o555)
    return deep


def as_owner(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*as_owner_only(), sys.executable, "-c", code],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


def test_a_read_only_tree_is_removed_by_its_owner(tmp_path: Path) -> None:
    top = tmp_path / "work"
    read_only_tree(top)
    plain = as_owner(f"import shutil; shutil.rmtree({str(top)!r})")
    assert plain.returncode != 0  # what the owner meets without swarm's help
    assert "Permission denied" in plain.stderr
    out = as_owner(f"from worktree_swarm.infra import fs; fs.remove_tree({str(top)!r})")
    assert out.returncode == 0, out.stderr
    assert not top.exists()


def test_opening_up_never_follows_a_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "yours"
    outside.mkdir()
    outside.chmod(0o555)
    top = tmp_path / "work"
    (top / "d").mkdir(parents=True)
    (top / "d" / "link").symlink_to(outside)
    (top / "d").chmod(0o500)
    fs.make_removable(top / "d" / "link")  # a symlink itself: left alone
    fs.make_removable(top)
    assert stat.S_IMODE((top / "d").stat().st_mode) == 0o700
    assert stat.S_IMODE(outside.stat().st_mode) == 0o555
    fs.make_removable(tmp_path / "gone")  # nothing there: nothing to do
    fs.remove_tree(top)
    assert outside.is_dir()


def test_a_named_pipe_is_refused_at_once_where_a_file_is_read_or_appended_to(
    tmp_path: Path,
) -> None:
    """Opening a FIFO waits for its other end: swarm's reads and appends never do."""
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    with pytest.raises(fs.NotAFileError):
        fs.read_file(pipe)  # no writer: a plain open would wait for ever
    with pytest.raises(fs.NotAFileError):
        fs.open_append(pipe)  # no reader: refused by the kernel, not waited on
    reader = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(fs.NotAFileError):
            fs.open_append(pipe)  # a reader there: opened, and still refused
    finally:
        os.close(reader)
    with pytest.raises(fs.NotAFileError):
        fs.open_rewrite(pipe)  # read-write never waits on a pipe: refused as not a file
    with pytest.raises(fs.NotAFileError):
        fs.read_file(tmp_path)
    (tmp_path / "log").write_text("a\n")
    with fs.open_append(tmp_path / "log") as out:
        out.write("b\n")
    assert fs.read_file(tmp_path / "log") == b"a\nb\n"
    (tmp_path / "link").symlink_to(pipe)
    with pytest.raises(fs.NotAFileError):
        fs.open_file(tmp_path / "link")  # followed, and what it names checked


def test_a_log_swapped_for_a_link_is_never_appended_through(tmp_path: Path) -> None:
    outside = tmp_path / "yours.txt"
    outside.write_text("your file\n")
    log = tmp_path / "checks.log"
    log.symlink_to(outside)  # an agent's, outside --sandbox
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        fs.open_append(log)
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        fs.open_append_bytes(log)
    assert outside.read_text() == "your file\n"


def test_set_mode_changes_the_file_looked_at_never_a_links_target(tmp_path: Path) -> None:
    # The guard's put-backs chmod what an agent left: a name swapped for a link to a key of
    # yours must not have the key's bits changed.
    key = tmp_path / "id_rsa"
    key.write_text("secret\n")
    key.chmod(0o600)
    link = tmp_path / "link"
    link.symlink_to(key)
    assert not fs.set_mode(link, lambda bits: bits | 0o044)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    setuid = tmp_path / "tool"
    setuid.write_text("#!/bin/sh\n")
    setuid.chmod(0o4755)
    assert fs.set_mode(setuid, lambda bits: bits & ~stat.S_ISUID)
    assert stat.S_IMODE(setuid.stat().st_mode) == 0o755
    folder = tmp_path / "closed"
    folder.mkdir(mode=0o700)
    folder.chmod(0)
    assert not fs.set_mode(folder, lambda bits: bits | 0o700)  # a directory only if asked
    assert fs.set_mode(folder, lambda bits: bits | 0o700, dirs=True)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert not fs.set_mode(tmp_path / "gone", lambda bits: bits)
