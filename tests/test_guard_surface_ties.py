"""Which worktree ties, changed while no manager watched, are git's own writing.

`git worktree move`, `repair` and `remove` rewrite a linked worktree's ``.git`` file and its
admin dir's ``gitdir`` and ``commondir``: a resumed guard follows them (put back, they would
name the old place). A tie pointed anywhere else (a copy of the repository whose config your
git there would read) is not git's. Real repositories, real `git worktree` commands.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import git, make_repo
from worktree_swarm.guard import surface
from worktree_swarm.guard.surface_entry import Entry
from worktree_swarm.guard.surface_ties import gone_whole, moved_by_git


def _linked(tmp_path: Path) -> tuple[Path, Path]:
    """A repository's git dir and a linked worktree ``mine`` of it."""
    repo = make_repo(tmp_path / "repo")
    git(repo, "worktree", "add", "-q", "-b", "mine", str(tmp_path / "mine"))
    return repo / ".git", tmp_path / "mine"


def _entry(path: Path) -> Entry | None:
    return Entry(kind="file", data=path.read_bytes()) if path.exists() else None


def test_every_tie_git_worktree_move_writes_is_gits(tmp_path: Path) -> None:
    common, mine = _linked(tmp_path)
    was = _entry(mine / ".git")
    moved = tmp_path / "moved"
    git(common.parent, "worktree", "move", str(mine), str(moved))
    for label in (f"{moved}/.git", "worktrees/mine/gitdir"):
        path = Path(label) if label.startswith("/") else common / label
        assert moved_by_git(common, label, _entry(path)), label
    for old in (was, None):  # the `.git` it moved away: known from what it held, or not
        assert moved_by_git(common, f"{mine}/.git", None, old)


def test_the_ties_git_worktree_repair_writes_after_a_hand_move_are_gits(tmp_path: Path) -> None:
    common, mine = _linked(tmp_path)
    moved = tmp_path / "moved"
    mine.rename(moved)
    git(moved, "worktree", "repair")
    assert moved_by_git(common, "worktrees/mine/gitdir", _entry(common / "worktrees/mine/gitdir"))
    assert moved_by_git(common, f"{moved}/.git", _entry(moved / ".git"))
    was = _entry(moved / ".git")
    assert moved_by_git(common, f"{mine}/.git", None, was)  # where it was: gone with it


def test_an_admin_dir_git_worktree_remove_took_away_is_gits(tmp_path: Path) -> None:
    common, mine = _linked(tmp_path)
    was = _entry(mine / ".git")
    git(common.parent, "worktree", "remove", str(mine))
    for tie in ("gitdir", "commondir"):
        assert moved_by_git(common, f"worktrees/mine/{tie}", None), tie
    for old in (was, None):
        assert moved_by_git(common, f"{mine}/.git", None, old)


def test_a_worktree_git_file_deleted_while_its_admin_dir_names_it_is_not_gits(
    tmp_path: Path,
) -> None:
    # Taken for git's move or removal: left deleted, your worktree no checkout at all.
    common, mine = _linked(tmp_path)
    was = _entry(mine / ".git")
    (mine / ".git").unlink()
    for old in (was, None, Entry(kind="file", data=b"gitdir: /not/an/admin/dir\n")):
        assert not moved_by_git(common, f"{mine}/.git", None, old), old


def test_a_worktree_git_file_deleted_with_its_gitdir_pointed_elsewhere_is_not_gits(
    tmp_path: Path,
) -> None:
    # Not a move: the `.git` the admin dir names now does not name it back.
    common, mine = _linked(tmp_path)
    was = _entry(mine / ".git")
    other = tmp_path / "other"
    other.mkdir()
    (other / ".git").write_text(f"gitdir: {tmp_path}/elsewhere\n")
    (common / "worktrees/mine/gitdir").write_text(f"{other}/.git\n")
    (mine / ".git").unlink()
    assert not moved_by_git(common, f"{mine}/.git", None, was)


def test_a_tie_deleted_from_an_admin_dir_left_in_place_is_not_gits(tmp_path: Path) -> None:
    common, _ = _linked(tmp_path)
    (common / "worktrees/mine/gitdir").unlink()
    assert not moved_by_git(common, "worktrees/mine/gitdir", None)


def test_a_commondir_naming_a_copy_of_the_repository_is_not_gits(tmp_path: Path) -> None:
    common, _ = _linked(tmp_path)
    label = "worktrees/mine/commondir"
    assert moved_by_git(common, label, _entry(common / label))  # as git wrote it
    copy = tmp_path / "copy"
    shutil.copytree(common, copy, symlinks=True)
    assert not moved_by_git(common, label, Entry(kind="file", data=f"{copy}\n".encode()))


def test_a_worktree_git_file_naming_a_copys_admin_dir_is_not_gits(tmp_path: Path) -> None:
    common, mine = _linked(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(common, copy, symlinks=True)  # its worktrees/mine/gitdir names mine/.git
    planted = Entry(kind="file", data=f"gitdir: {copy}/worktrees/mine\n".encode())
    assert not moved_by_git(common, f"{mine}/.git", planted)


def test_a_gitdir_naming_a_git_file_that_does_not_name_it_back_is_not_gits(
    tmp_path: Path,
) -> None:
    common, _ = _linked(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / ".git").write_text(f"gitdir: {tmp_path}/elsewhere\n")
    label = "worktrees/mine/gitdir"
    assert not moved_by_git(common, label, Entry(kind="file", data=f"{other}/.git\n".encode()))
    nowhere = Entry(kind="file", data=f"{tmp_path}/absent/.git\n".encode())
    assert not moved_by_git(common, label, nowhere)
    not_a_git_file = Entry(kind="file", data=f"{other}/config\n".encode())
    assert not moved_by_git(common, label, not_a_git_file)


@pytest.mark.parametrize(
    "entry",
    [
        Entry(kind="file", data=b"ref: not a gitdir line\n"),
        Entry(kind="file", data=b"gitdir: \xff\xfe\n"),
        Entry(kind="file", data=b"gitdir: one\ngitdir: two\n"),
        Entry(kind="file", data=b"gitdir:   \n"),
        Entry(kind="link", data=b"/somewhere/else"),
        Entry(kind="dir", bits=0o755),
    ],
    ids=["no-prefix", "not-utf8", "two-lines", "empty", "symlink", "directory"],
)
def test_a_worktree_git_file_git_would_not_write_is_not_gits(tmp_path: Path, entry: Entry) -> None:
    common, mine = _linked(tmp_path)
    assert not moved_by_git(common, f"{mine}/.git", entry)


def test_your_linked_worktrees_operation_is_gits_only_gone_with_its_admin_dir(
    tmp_path: Path,
) -> None:
    common, mine = _linked(tmp_path)
    todo = Entry(kind="file", data=b"exec touch pwned\n")
    for label in ("worktrees/mine/MERGE_HEAD", "worktrees/mine/rebase-merge/git-rebase-todo"):
        assert not moved_by_git(common, label, todo), label  # planted
        assert not moved_by_git(common, label, None), label  # taken away, the worktree there
    git(common.parent, "worktree", "remove", str(mine))
    assert moved_by_git(common, "worktrees/mine/rebase-merge/git-rebase-todo", None)


def _baseline(common: Path, mine: Path) -> dict[str, Entry]:
    """The guard's read of git's files, *mine* a linked worktree of yours."""
    return surface.read(common, (), {mine: common / "worktrees" / "mine"})


def test_your_worktree_whose_folder_is_gone_goes_with_all_that_ties_it(tmp_path: Path) -> None:
    common, mine = _linked(tmp_path)
    (common / "worktrees/mine/MERGE_HEAD").write_text("0" * 40 + "\n")
    last = _baseline(common, mine)
    held = [f"{mine}/.git", "worktrees/mine/gitdir", "worktrees/mine/commondir"]
    labels = [*held, "worktrees/mine/MERGE_HEAD", f"{mine}/.husky/_/pre-commit", "config"]
    assert all(label in last for label in labels[:4])
    shutil.rmtree(mine)
    assert gone_whole(common, last, labels) == {mine: set(labels[:5])}


def test_a_worktree_left_its_folder_or_named_elsewhere_is_not_gone_whole(tmp_path: Path) -> None:
    common, mine = _linked(tmp_path)
    last = _baseline(common, mine)
    labels = [f"{mine}/.git", "worktrees/mine/gitdir"]
    (mine / ".git").unlink()  # the folder is still there: judged as ever
    assert gone_whole(common, last, labels) == {}
    shutil.rmtree(mine)
    (common / "worktrees/mine/gitdir").write_text(f"{tmp_path}/elsewhere/.git\n")
    assert gone_whole(common, last, labels) == {}  # its admin dir names another place


def test_a_worktree_git_moved_is_not_gone_whole(tmp_path: Path) -> None:
    common, mine = _linked(tmp_path)
    last = _baseline(common, mine)
    git(common.parent, "worktree", "move", str(mine), str(tmp_path / "moved"))
    assert gone_whole(common, last, [f"{mine}/.git", "worktrees/mine/gitdir"]) == {}
