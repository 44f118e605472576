"""The surface read's bits of admin dirs and task worktrees, looked at again only where changed."""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import as_owner_only, git, make_repo
from tests.test_inotify import lose_events
from tests.test_run import status_json
from worktree_swarm.guard import file_stats, surface, surface_entry
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


def lstats_of(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths looked at unfollowed from now on (`os.lstat`, `Path.lstat`), in order.

    Each call is still made.
    """
    looked: list[str] = []
    real_lstat, real_stat = os.lstat, os.stat

    def lstat(path: str | Path, **kwargs: object) -> os.stat_result:
        looked.append(os.fspath(path))
        return real_lstat(path, **kwargs)  # type: ignore[arg-type]

    def stat(path: str | Path, **kwargs: object) -> os.stat_result:
        if kwargs.get("follow_symlinks") is False:
            looked.append(os.fspath(path))
        return real_stat(path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "lstat", lstat)
    monkeypatch.setattr(os, "stat", stat)
    return looked


def test_a_read_looks_again_only_at_entries_inotify_saw_change(
    layout: tuple[Path, list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    common, tops = layout
    modes = DirModes()
    first = surface.read(common, (), None, tops, modes)
    assert first == surface.read(common, (), None, tops)
    looked = lstats_of(monkeypatch)
    assert surface.read(common, (), None, tops, modes) == first
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
    changed = surface.read(common, (), None, tops, modes)
    assert set(looked) >= {f"{common}/worktrees/t3", os.fspath(tops[5]), os.fspath(fan_out)}
    assert changed["worktrees/t3"].data == surface_entry.LOOSER
    assert changed[f"objects/{fan_out.name}"].data == surface_entry.LOOSER
    assert changed[os.fspath(tops[5])].data == surface_entry.LOOSER
    assert changed == surface.read(common, (), None, tops)


def test_entries_of_a_parent_whose_own_bits_changed_are_judged_against_them(
    layout: tuple[Path, list[Path]],
) -> None:
    # The entries of a read where no mode changed are taken whole from the read before: a
    # parent made as open as its entry makes that entry no looser than its parent.
    common, tops = layout
    modes = DirModes()
    tops[5].chmod(0o777)
    (common / "worktrees" / "t3").chmod(0o777)
    before = surface.read(common, (), None, tops, modes)
    assert before[os.fspath(tops[5])].data == surface_entry.LOOSER
    assert before["worktrees/t3"].data == surface_entry.LOOSER
    tops[5].parent.chmod(0o777)
    (common / "worktrees").chmod(0o777)
    after = surface.read(common, (), None, tops, modes)
    assert after[os.fspath(tops[5])].data == b""
    assert after["worktrees/t3"].data == b""
    assert after == surface.read(common, (), None, tops)


def test_a_config_worktree_is_looked_for_again_only_where_one_may_have_come(
    layout: tuple[Path, list[Path]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(file_stats, "FULL_EVERY", 3600.0)  # no full pass within the test
    common, tops = layout
    worktrees = common / "worktrees"
    modes = DirModes()
    first = surface.read(common, (), None, tops, modes)
    looked = lstats_of(monkeypatch)
    assert surface.read(common, (), None, tops, modes) == first
    assert [p for p in looked if p.startswith(f"{worktrees}/")] == []
    planted = "[core]\n\tfsmonitor = touch planted\n"
    (worktrees / "t1" / "config.worktree").write_text(planted)  # made in place
    (worktrees / "t2" / "config.worktree").symlink_to(tmp_path / "elsewhere")
    (worktrees / "t3" / "aside").write_text(planted)
    (worktrees / "t3" / "aside").rename(worktrees / "t3" / "config.worktree")  # renamed in
    swapped = common / "t4.new"  # another admin dir swapped in, holding one
    swapped.mkdir()
    (swapped / "config.worktree").write_text(planted)
    (worktrees / "t4").rmdir()
    swapped.rename(worktrees / "t4")
    now = surface.read(common, (), None, tops, modes)
    assert now == surface.read(common, (), None, tops)
    configs = {f"{worktrees}/t{i}/config.worktree" for i in (1, 2, 3, 4)}
    assert {f"{common}/{k}" for k in now if k.endswith("config.worktree")} == configs
    looked.clear()
    (worktrees / "t1" / "config.worktree").unlink()
    now = surface.read(common, (), None, tops, modes)
    link = f"{worktrees}/t2/config.worktree"  # a symlink: followed, so read every time
    assert {p for p in looked if p.startswith(f"{worktrees}/")} == {
        f"{worktrees}/t1/config.worktree",
        link,
    }
    assert now == surface.read(common, (), None, tops)
    looked.clear()
    assert surface.read(common, (), None, tops, modes) == now
    assert {p for p in looked if p.startswith(f"{worktrees}/")} == {link}
    # The whole directory of admin dirs swapped for another: each looked in again.
    worktrees.rename(common / "worktrees.old")
    (worktrees / "t0").mkdir(parents=True)
    (worktrees / "t0" / "config.worktree").write_text(planted)
    now = surface.read(common, (), None, tops, modes)
    assert now == surface.read(common, (), None, tops)
    assert "worktrees/t0/config.worktree" in now


def test_a_submodule_git_dir_made_in_a_known_empty_admin_dir_is_read(
    layout: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    # Admin dirs known to hold neither config.worktree nor modules/ are not looked in again
    # until inotify saw a name made there: a modules/ made in place or renamed in is one.
    common, tops = layout
    worktrees = common / "worktrees"
    modes = DirModes()
    first = surface.read(common, (), None, tops, modes)
    assert not [k for k in first if "/modules" in k]
    planted = "[core]\n\tfsmonitor = touch planted\n"
    for where, made_aside in (("t1", False), ("t2", True)):
        sub = (tmp_path / "aside" if made_aside else worktrees / where / "modules") / "sub"
        sub.mkdir(parents=True)
        (sub / "HEAD").write_text("ref: refs/heads/main\n")
        (sub / "config").write_text(planted)
        if made_aside:
            (tmp_path / "aside").rename(worktrees / where / "modules")
    now = surface.read(common, (), None, tops, modes)
    assert now == surface.read(common, (), None, tops)
    assert {"worktrees/t1/modules/sub/config", "worktrees/t2/modules/sub/config"} <= set(now)
    (worktrees / "t1" / "modules" / "sub" / "config").write_text("[core]\n")
    assert surface.read(common, (), None, tops, modes) == surface.read(common, (), None, tops)


def test_admin_dirs_holding_a_config_worktree_are_not_looked_in_again_while_unchanged(
    layout: tuple[Path, list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A sparse checkout's repository: `git worktree add` copies its config.worktree into every
    # admin dir. Each is read again only when its watch saw a change (or in a full pass), its
    # modules/ looked for only when made.
    monkeypatch.setattr(file_stats, "FULL_EVERY", 3600.0)  # no full pass within the test
    common, tops = layout
    worktrees = common / "worktrees"
    for i in range(TASKS):
        (worktrees / f"t{i}" / "config.worktree").write_text("[core]\n\tsparseCheckout = true\n")
    modes = DirModes()
    first = surface.read(common, (), None, tops, modes)
    looked = lstats_of(monkeypatch)
    assert surface.read(common, (), None, tops, modes) == first
    assert [p for p in looked if p.startswith(f"{worktrees}/t")] == []
    planted = "[core]\n\tfsmonitor = touch planted\n"
    (worktrees / "t1" / "config.worktree").write_text(planted)  # written in place
    sub = worktrees / "t2" / "modules" / "sub"
    sub.mkdir(parents=True)
    (sub / "HEAD").write_text("ref: refs/heads/main\n")
    (sub / "config").write_text(planted)
    (worktrees / "t3" / "config.worktree").unlink()
    now = surface.read(common, (), None, tops, modes)
    assert now == surface.read(common, (), None, tops)
    assert now["worktrees/t1/config.worktree"].data == planted.encode()
    assert now["worktrees/t2/modules/sub/config"].data == planted.encode()
    assert "worktrees/t3/config.worktree" not in now
    (worktrees / "t3" / "config.worktree").write_text(planted)  # made again
    (worktrees / "t4" / "config.worktree").chmod(0o600)
    os.utime(worktrees / "t5" / "config.worktree", ns=(0, 0))
    now = surface.read(common, (), None, tops, modes)
    assert now == surface.read(common, (), None, tops)
    assert now["worktrees/t3/config.worktree"].data == planted.encode()
    assert now["worktrees/t4/config.worktree"].bits == 0o600
    looked.clear()
    assert surface.read(common, (), None, tops, modes) == now
    # Only t2's, which holds modules/ (walked every time, as before).
    assert {
        Path(p).relative_to(worktrees).parts[0] for p in looked if p.startswith(f"{worktrees}/t")
    } == {"t2"}


def test_entries_made_removed_or_swapped_are_read_as_they_are_now(
    layout: tuple[Path, list[Path]],
) -> None:
    common, tops = layout
    modes = DirModes()

    def same() -> None:
        assert surface.read(common, (), None, tops, modes) == surface.read(common, (), None, tops)

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


def test_events_that_cannot_be_read_have_every_entry_and_admin_dir_looked_at_again(
    layout: tuple[Path, list[Path]],
) -> None:
    common, tops = layout
    modes = DirModes()
    first = surface.read(common, (), None, tops, modes)
    lose_events(modes._ino)
    lose_events(modes.configs._ino)
    (common / "worktrees" / "t3").chmod(0o777)  # their events lost
    tops[5].chmod(0o777)
    (common / "worktrees" / "t7" / "config.worktree").write_text("[core]\n\tbare = false\n")
    changed = surface.read(common, (), None, tops, modes)
    assert changed == surface.read(common, (), None, tops) != first
    assert changed["worktrees/t3"].data == surface.LOOSER
    assert "worktrees/t7/config.worktree" in changed


# As a user's manager (owner only): a parent made unsearchable, then searchable again.
OPENED_BEHIND_AN_UNSEARCHABLE_PARENT = """
import contextlib
import sys
from pathlib import Path
from worktree_swarm.guard import surface, surface_entry
from worktree_swarm.guard.dir_modes import DirModes

common, tops = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
fan_out = next(p for p in sorted((common / "objects").iterdir()) if len(p.name) == 2)
modes = DirModes()
surface.read(common, (), None, tops, modes)
for parent, child in ((fan_out.parent, fan_out), (common / "worktrees", common / "worktrees/t1")):
    child.chmod(0o777)
    parent.chmod(0o600)  # listed, not searched: each entry's lstat fails
with contextlib.suppress(PermissionError):  # objects/info/alternates cannot be looked at
    surface.read(common, (), None, tops, modes)
for parent in (common / "objects", common / "worktrees"):
    parent.chmod(0o755)  # no event names the entries in it
found = surface.read(common, (), None, tops, modes)
assert found[f"objects/{fan_out.name}"].data == surface_entry.LOOSER, found
assert found["worktrees/t1"].data == surface_entry.LOOSER, found
assert found == surface.read(common, (), None, tops)
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


# As a user's manager (owner only): directories of the git dir listed but not searched.
READ_BEHIND_UNSEARCHABLE_DIRECTORIES = """
import os
import sys
from pathlib import Path
from worktree_swarm.guard import surface, surface_diff, surface_entry

common = Path(sys.argv[1])
(common / "modules" / "sub" / "hooks").mkdir(parents=True)
(common / "modules" / "sub" / "HEAD").write_text("ref: refs/heads/main\\n")
(common / "modules" / "sub" / "config").write_text("[core]\\n")
before = surface.read(common, ())
shut = ["objects", "hooks", "refs/heads", "logs", "worktrees/t1", "modules"]
for name in shut:
    (common / name).chmod(0o600)
now = surface.read(common, ())  # raised PermissionError: no change was ever seen
hooks_path = Path(os.path.realpath(common.parent / "hooks-elsewhere"))  # `core.hooksPath`
hooks_path.mkdir()
(hooks_path / "post-checkout").write_text("#!/bin/sh\\n")
hooks_path.chmod(0o100)  # searched, not listed: git still runs the hook
elsewhere = surface.read(common, [hooks_path])
assert elsewhere[str(hooks_path)].kind == surface_entry.UNREADABLE, elsewhere
assert elsewhere[f"{hooks_path}/post-checkout"].data == b"#!/bin/sh\\n", elsewhere
assert now["objects/info/alternates"].kind == surface_entry.UNREACHED, now
assert now["worktrees/t1/config.worktree"].kind == surface_entry.UNREACHED, now
assert now["modules/sub"].kind == surface_entry.UNREACHED, now
# What it holds is not known: never taken for gone (put back blindly), only the bits count.
assert surface_diff.changed(before, now) == sorted(shut), surface_diff.changed(before, now)
"""


def test_a_read_goes_on_past_directories_made_unsearchable(
    layout: tuple[Path, list[Path]],
) -> None:
    """One watched file behind a directory listed but not searched stopped the whole read."""
    common, _ = layout
    out = subprocess.run(
        [*as_owner_only(), sys.executable, "-c", READ_BEHIND_UNSEARCHABLE_DIRECTORIES,
         str(common)],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]


# Plants a `core.fsmonitor`, a hook and an exclude line, then shuts directories of the git
# dir to their owner (name, mode): every read of the surface failed while one was listed but
# not searched, the end of the run included; what a refused listing hid was put back late.
SHUTS_AND_PLANTS = """
import os, subprocess, sys
common = subprocess.run(['git', 'rev-parse', '--path-format=absolute', '--git-common-dir'],
                        capture_output=True, text=True, check=True).stdout.strip()
with open(common + '/config', 'a') as f:
    f.write('[core]\\n\\tfsmonitor = touch planted\\n')
with open(common + '/hooks/post-checkout', 'w') as f:
    f.write('#!/bin/sh\\ntouch planted\\n')
os.chmod(common + '/hooks/post-checkout', 0o755)
with open(common + '/info/exclude', 'a') as f:
    f.write('hidden\\n')
for name, mode in zip(sys.argv[1::2], sys.argv[2::2]):
    os.chmod(common + '/' + name, int(mode, 8))
"""


@pytest.mark.parametrize(
    "modes",
    [["objects", "600", "hooks", "600", "info", "100"], ["hooks", "100", "info", "0"]],
    ids=["unsearchable", "unlisted"],
)
def test_git_files_behind_a_directory_made_unsearchable_are_put_back(
    tmp_path: Path, write_agent: Callable[[str], list[str]], modes: list[str]
) -> None:
    repo = make_repo(tmp_path / "repo", {"a.txt": "yours\n"})
    common = repo / ".git"
    config = (common / "config").read_text()
    exclude = (common / "info" / "exclude").read_text()
    out = subprocess.run(
        [*as_owner_only(), sys.executable, "-m", "worktree_swarm.cli", "run", "--agent",
         shlex.join([*write_agent(SHUTS_AND_PLANTS), *modes]), "-t", "t=x"],
        cwd=repo, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
        timeout=120,
    )  # fmt: skip
    assert out.returncode == 1, out.stdout + out.stderr
    assert stat.S_IMODE((common / "objects").stat().st_mode) == 0o755
    assert stat.S_IMODE((common / "hooks").stat().st_mode) == 0o755
    assert (common / "config").read_text() == config
    assert not (common / "hooks" / "post-checkout").exists()
    assert stat.S_IMODE((common / "info").stat().st_mode) == 0o755
    assert (common / "info" / "exclude").read_text() == exclude
    row = status_json(repo)["t"]
    assert row["state"] == "failed"
    # One report of all of it, put back (its list of names cut at five: the rest in the patch).
    files = "config, hooks, hooks/post-checkout, info, info/exclude"
    assert f"git's own files {files}{' ...' if 'objects' in modes else ''}; restored" in str(
        row["reason"]
    ), row["reason"]
    (patch,) = (common / "swarm" / "runs").glob("*/guard/outside-1-repository.patch")
    text = patch.read_text()
    assert ("# objects: directory 755 -> directory 600\n" in text) == ("objects" in modes), text
    assert "+#!/bin/sh\n" in text, text
    assert "+hidden\n" in text, text


# Plants a `core.fsmonitor` in a config (or a hook) and shuts a directory on its way to its
# owner (mode 0): paths relative to the git dir, or absolute.
PLANTS_AND_SHUTS = """
import os, subprocess, sys
common = subprocess.run(['git', 'rev-parse', '--path-format=absolute', '--git-common-dir'],
                        capture_output=True, text=True, check=True).stdout.strip()
planted, shut = (os.path.join(common, name) for name in sys.argv[1:])
with open(planted, 'a') as f:
    if os.path.basename(planted) == 'config':
        f.write('[core]\\n\\tfsmonitor = touch planted\\n')
    else:
        f.write('#!/bin/sh\\ntouch planted\\n')
os.chmod(shut, 0)
"""


@pytest.mark.parametrize("shut", ["modules/lib", "modules", "hooks path"])
def test_git_files_behind_a_submodule_or_hooks_dir_shut_to_its_owner_are_put_back(
    tmp_path: Path, write_agent: Callable[[str], list[str]], shut: str
) -> None:
    """The bits of ``.git/modules``, of a submodule's git dir and of the ``core.hooksPath``
    directory were not watched: shut (mode 0), they hid what was planted behind them (the
    guard's read failed on the shut git dir, or took what it held for not known)."""
    lib = make_repo(tmp_path / "lib")
    repo = make_repo(tmp_path / "repo", {"a.txt": "yours\n"})
    git(repo, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(lib), "lib")
    git(repo, "commit", "-qm", "lib")
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    git(repo, "config", "core.hooksPath", str(hooks))
    common = repo / ".git"
    config = (common / "modules" / "lib" / "config").read_text()
    planted = ["modules/lib/config", shut]
    if shut == "hooks path":
        planted = [str(hooks / "post-checkout"), str(hooks)]
    out = subprocess.run(
        [*as_owner_only(), sys.executable, "-m", "worktree_swarm.cli", "run", "--agent",
         shlex.join([*write_agent(PLANTS_AND_SHUTS), *planted]), "-t", "t=x"],
        cwd=repo, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
        timeout=120,
    )  # fmt: skip
    assert out.returncode == 1, out.stdout + out.stderr
    shut_dir = common / planted[1]
    assert stat.S_IMODE(shut_dir.stat().st_mode) == 0o755
    assert (common / "modules" / "lib" / "config").read_text() == config
    assert not (hooks / "post-checkout").exists()
    row = status_json(repo)["t"]
    assert row["state"] == "failed"
    label = planted[1] if shut == "hooks path" else shut  # absolute outside the git dir
    assert f"git's own files {label}, {planted[0]}; restored" in str(row["reason"]), row["reason"]
    (patch,) = (common / "swarm" / "runs").glob("*/guard/outside-1-repository.patch")
    text = patch.read_text()
    assert "directory 755 -> unreadable, 0\n" in text, text
    assert "+\tfsmonitor = touch planted\n" in text or "+touch planted\n" in text, text
