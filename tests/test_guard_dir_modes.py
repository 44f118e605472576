"""The surface read's bits of admin dirs and task worktrees, looked at again only where changed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import as_owner_only, make_repo
from worktree_swarm.guard import surface
from worktree_swarm.guard.dir_modes import DirModes

TASKS = 40


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, list[Path]]:
    """A git dir with an admin dir per task under ``worktrees/``, and the tasks' tops."""
    common = make_repo(tmp_path / "repo") / ".git"
    tops = []
    for i in range(TASKS):
        (common / "worktrees" / f"t{i}").mkdir(parents=True)
        tops.append(tmp_path / "repo.swarm" / f"t{i}")
        tops[-1].mkdir(parents=True)
    return common, tops


def test_a_read_looks_again_only_at_entries_inotify_saw_change(
    layout: tuple[Path, list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    common, tops = layout
    modes = DirModes()
    first = surface.read(common, None, None, tops, modes)
    assert first == surface.read(common, None, None, tops)
    looked: list[str] = []
    real_lstat = os.lstat

    def lstat(path: str | Path, **kwargs: object) -> os.stat_result:
        looked.append(os.fspath(path))
        return real_lstat(path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "lstat", lstat)
    assert surface.read(common, None, None, tops, modes) == first
    admins = [p for p in looked if p.startswith(f"{common}/worktrees/t") and p[-1].isdigit()]
    fan_outs = [p for p in looked if p.startswith(f"{common}/objects/") and len(Path(p).name) == 2]
    assert admins == []
    assert fan_outs == []
    assert not set(looked) & {os.fspath(t) for t in tops}
    (common / "worktrees" / "t3").chmod(0o777)
    tops[5].chmod(0o777)
    fan_out = next(p for p in sorted((common / "objects").iterdir()) if len(p.name) == 2)
    fan_out.chmod(0o777)
    looked.clear()
    changed = surface.read(common, None, None, tops, modes)
    assert set(looked) >= {f"{common}/worktrees/t3", os.fspath(tops[5]), os.fspath(fan_out)}
    assert changed["worktrees/t3"].data == surface.LOOSER
    assert changed[f"objects/{fan_out.name}"].data == surface.LOOSER
    assert changed[os.fspath(tops[5])].data == surface.LOOSER
    assert changed == surface.read(common, None, None, tops)


def test_entries_made_removed_or_swapped_are_read_as_they_are_now(
    layout: tuple[Path, list[Path]],
) -> None:
    common, tops = layout
    modes = DirModes()

    def same() -> None:
        assert surface.read(common, None, None, tops, modes) == surface.read(
            common, None, None, tops
        )

    same()
    (common / "worktrees" / "t0").rmdir()
    (common / "worktrees" / "new").mkdir(mode=0o777)
    (common / "worktrees" / "new").chmod(0o777)
    shutil.rmtree(tops[1])
    tops[1].write_text("a file now\n")
    same()
    # The whole admin directory swapped for another: its entries are those of the new one.
    (common / "worktrees").rename(common / "worktrees.old")
    (common / "worktrees").mkdir()
    (common / "worktrees" / "other").mkdir()
    (common / "worktrees" / "other").chmod(0o777)
    same()
    root = tops[0].parent
    root.rename(root.with_name("moved"))
    root.mkdir()
    for top in tops[:3]:
        top.mkdir()
    tops[2].chmod(0o777)
    same()
    modes.close()  # from now on every entry is looked at
    tops[0].chmod(0o777)
    same()


# As a user's manager (owner only): a parent made unsearchable, then searchable again.
OPENED_BEHIND_AN_UNSEARCHABLE_PARENT = """
import contextlib
import sys
from pathlib import Path
from worktree_swarm.guard import surface
from worktree_swarm.guard.dir_modes import DirModes

common, tops = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
fan_out = next(p for p in sorted((common / "objects").iterdir()) if len(p.name) == 2)
modes = DirModes()
surface.read(common, None, None, tops, modes)
for parent, child in ((fan_out.parent, fan_out), (common / "worktrees", common / "worktrees/t1")):
    child.chmod(0o777)
    parent.chmod(0o600)  # listed, not searched: each entry's lstat fails
with contextlib.suppress(PermissionError):  # objects/info/alternates cannot be looked at
    surface.read(common, None, None, tops, modes)
for parent in (common / "objects", common / "worktrees"):
    parent.chmod(0o755)  # no event names the entries in it
found = surface.read(common, None, None, tops, modes)
assert found[f"objects/{fan_out.name}"].data == surface.LOOSER, found
assert found["worktrees/t1"].data == surface.LOOSER, found
assert found == surface.read(common, None, None, tops)
"""


def test_entries_of_a_parent_made_unsearchable_are_read_once_it_is_searchable_again(
    layout: tuple[Path, list[Path]],
) -> None:
    common, tops = layout
    out = subprocess.run(
        [*as_owner_only(), sys.executable, "-c", OPENED_BEHIND_AN_UNSEARCHABLE_PARENT,
         str(common), *map(str, tops)],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
