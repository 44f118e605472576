"""Process start times that a step of the clock does not move (the boot time kept per boot)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest

from worktree_swarm.infra import fs, starts

pytestmark = pytest.mark.skipif(
    not Path("/proc/sys/kernel/random/boot_id").exists(), reason="Linux's boot id"
)


@pytest.fixture
def kept_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the boot time is kept: the test's folder; read afresh by each test."""
    monkeypatch.setattr(fs, "_kept_in", lambda: tmp_path)
    monkeypatch.setattr(starts, "_boot", None)
    return tmp_path / f"worktree-swarm-{os.getuid()}"


def _file(folder: Path) -> Path:
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return folder / f"boot-{boot_id}"


def test_the_first_reading_of_the_boot_is_kept_for_every_later_process(kept_in: Path) -> None:
    first = starts.boot_time()
    assert first == psutil.boot_time()
    assert float(_file(kept_in).read_text()) == first
    assert kept_in.stat().st_mode & 0o777 == 0o700
    assert _file(kept_in).stat().st_mode & 0o777 == 0o600
    assert not list(kept_in.glob("*.tmp"))


def test_a_kept_boot_time_is_what_start_times_add_to_the_kernels_ticks(
    kept_in: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As after a step of the clock: the kernel's boot time moved, the kept one did not.
    kept_in.mkdir(mode=0o700)
    _file(kept_in).write_text(repr(psutil.boot_time() - 3600.0))
    me = psutil.Process()
    assert starts.start_time(me.pid) == pytest.approx(me.create_time() - 3600.0, abs=0.02)
    assert starts.of(me) == starts.start_time(me.pid)
    assert starts.start_time(2**22 + 12345) is None  # no such process


@pytest.mark.parametrize("mode", [0o777, 0o720])
def test_a_folder_others_can_write_is_not_believed(kept_in: Path, mode: int) -> None:
    # Whoever can write there could give a boot time of their choosing.
    kept_in.mkdir()
    kept_in.chmod(mode)
    _file(kept_in).write_text("12345.0")
    assert starts.boot_time() == psutil.boot_time()


def test_a_garbled_kept_file_is_not_believed(kept_in: Path) -> None:
    kept_in.mkdir(mode=0o700)
    _file(kept_in).write_text("not a time")
    assert starts.boot_time() == psutil.boot_time()
    assert _file(kept_in).read_text() == "not a time"  # another process's: left to it


def test_a_kept_boot_time_in_the_future_is_not_believed(kept_in: Path) -> None:
    # Written over by hand, or by an agent outside --sandbox (it runs as you).
    kept_in.mkdir(mode=0o700)
    _file(kept_in).write_text(repr(time.time() + 86400.0))
    assert starts.boot_time() == psutil.boot_time()
