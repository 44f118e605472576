"""Putting back a hard link of yours where git writes, after an agent swapped it.

A file of the git dir that had another name before the run (a backup made with `cp -al`) is
in the baseline by its inode. Swapped for a symlink or a directory, what was planted goes (git
makes the file again); swapped for another hard link, the link is cut where git keeps state,
the file's bytes kept, and removed elsewhere. Real repositories, real links, the guard's own
scan, comparison and put-back.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tests.conftest import git, make_repo
from worktree_swarm.guard import surface, surface_diff, surface_entry, surface_restore


def linked_repo(tmp_path: Path, label: str) -> tuple[Path, Path]:
    """A repository's git dir whose *label* has a second name outside it (a backup of yours)."""
    common = make_repo(tmp_path / "repo") / ".git"
    backup = tmp_path / "backup"
    os.link(common / label, backup)
    return common, backup


def test_a_hard_link_swapped_for_a_symlink_loses_the_symlink_and_nothing_it_points_at(
    tmp_path: Path,
) -> None:
    common, backup = linked_repo(tmp_path, "COMMIT_EDITMSG")
    message = backup.read_bytes()
    victim = tmp_path / "victim"
    victim.write_bytes(b"a file of yours\n")
    before = surface.read(common, ())
    assert before["COMMIT_EDITMSG"].kind == surface_entry.HARD_LINK
    (common / "COMMIT_EDITMSG").unlink()
    (common / "COMMIT_EDITMSG").symlink_to(victim)  # your next commit would write through it
    labels = surface_diff.changed(before, surface.read(common, ()))
    assert labels == ["COMMIT_EDITMSG"]
    surface_restore.put_back(common, before, labels)
    assert not os.path.lexists(common / "COMMIT_EDITMSG")  # git writes it again on a commit
    assert victim.read_bytes() == b"a file of yours\n"
    assert backup.read_bytes() == message


def test_a_reflog_swapped_for_a_directory_holding_a_link_is_cleared_and_git_logs_again(
    tmp_path: Path,
) -> None:
    common, backup = linked_repo(tmp_path, "logs/HEAD")
    reflog = backup.read_bytes()
    victim = tmp_path / "victim"
    victim.write_bytes(b"a file of yours\n")
    before = surface.read(common, ())
    (common / "logs" / "HEAD").unlink()
    (common / "logs" / "HEAD").mkdir()
    os.link(victim, common / "logs" / "HEAD" / "planted")
    labels = surface_diff.changed(before, surface.read(common, ()))
    assert labels == ["logs/HEAD", "logs/HEAD/planted"]
    surface_restore.put_back(common, before, labels)  # the directory first, with what it held
    assert not os.path.lexists(common / "logs" / "HEAD")
    assert victim.read_bytes() == b"a file of yours\n"
    assert victim.stat().st_nlink == 1
    assert backup.read_bytes() == reflog
    git(common.parent, "commit", "-q", "--allow-empty", "-m", "after")
    assert (common / "logs" / "HEAD").read_text().endswith("commit: after\n")


def test_a_reflog_swapped_for_another_hard_link_is_cut_from_it_with_its_bytes_kept(
    tmp_path: Path,
) -> None:
    common, backup = linked_repo(tmp_path, "logs/HEAD")
    reflog = backup.read_bytes()
    target = common / "logs" / "HEAD"
    planted = tmp_path / "planted"  # an object file of yours in the agent's hands
    planted.write_bytes(b"an agent's reflog\n")
    planted.chmod(0o444)
    before = surface.read(common, ())
    target.unlink()
    os.link(planted, target)
    labels = surface_diff.changed(before, surface.read(common, ()))
    assert labels == ["logs/HEAD"]
    surface_restore.put_back(common, before, labels)
    assert target.read_bytes() == b"an agent's reflog\n"  # cut, not removed: a reflog is state
    assert target.stat().st_ino != planted.stat().st_ino
    assert target.stat().st_mode & 0o777 == 0o444
    assert planted.stat().st_nlink == 1
    git(common.parent, "commit", "-q", "--allow-empty", "-m", "after")
    assert planted.read_bytes() == b"an agent's reflog\n"  # git's append no longer reaches it
    assert backup.read_bytes() == reflog


def test_a_hard_link_swapped_for_another_where_git_keeps_no_state_is_removed(
    tmp_path: Path,
) -> None:
    # `gitdir` ties a linked worktree's admin dir; at the top of the repository's git dir git
    # never reads it, and it is watched for its bytes where it matters: nothing to keep here.
    common = make_repo(tmp_path / "repo") / ".git"
    (common / "gitdir").write_bytes(b"/somewhere/.git\n")
    backup = tmp_path / "backup"
    os.link(common / "gitdir", backup)
    planted = tmp_path / "planted"
    planted.write_bytes(b"planted\n")
    before = surface.read(common, ())
    assert before["gitdir"].kind == surface_entry.HARD_LINK
    (common / "gitdir").unlink()
    os.link(planted, common / "gitdir")
    labels = surface_diff.changed(before, surface.read(common, ()))
    assert labels == ["gitdir"]
    surface_restore.put_back(common, before, labels)
    assert not os.path.lexists(common / "gitdir")
    assert planted.read_bytes() == b"planted\n"
    assert planted.stat().st_nlink == 1
    assert backup.read_bytes() == b"/somewhere/.git\n"


def test_a_file_git_made_again_in_place_of_a_planted_link_is_kept(tmp_path: Path) -> None:
    # Between the scan that saw the symlink and the put-back, git replaced it (written aside
    # and renamed over, as git writes a reflog it rewrites): a file of one name is git's own.
    common, backup = linked_repo(tmp_path, "logs/HEAD")
    target = common / "logs" / "HEAD"
    before = surface.read(common, ())
    target.unlink()
    target.symlink_to(tmp_path / "victim")
    labels = surface_diff.changed(before, surface.read(common, ()))
    assert labels == ["logs/HEAD"]
    aside = target.with_name("HEAD.lock")
    aside.write_bytes(b"rewritten by git\n")
    aside.replace(target)
    surface_restore.put_back(common, before, labels)
    assert target.read_bytes() == b"rewritten by git\n"
    assert target.stat().st_nlink == 1
    assert backup.read_bytes() != b"rewritten by git\n"


def test_a_hard_link_planted_at_a_reflog_is_cut_with_its_bytes_kept(tmp_path: Path) -> None:
    common = make_repo(tmp_path / "repo") / ".git"
    target = common / "logs" / "HEAD"
    victim = tmp_path / "victim"  # a file of yours your next commit would append to
    victim.write_bytes(b"yours\n")
    before = surface.read(common, ())
    assert "logs/HEAD" not in before
    target.unlink()
    os.link(victim, target)
    labels = surface_diff.changed(before, surface.read(common, ()))
    assert labels == ["logs/HEAD"]
    surface_restore.put_back(common, before, labels)
    assert target.read_bytes() == b"yours\n"
    assert victim.stat().st_nlink == target.stat().st_nlink == 1
    git(common.parent, "commit", "-q", "--allow-empty", "-m", "after")
    assert victim.read_bytes() == b"yours\n"


def test_ref_directories_get_their_bits_back_and_a_swapped_one_is_made_again(
    tmp_path: Path,
) -> None:
    common = make_repo(tmp_path / "repo") / ".git"
    heads = common / "refs" / "heads"
    mode = stat.S_IMODE(heads.stat().st_mode)
    before = surface.read(common, ())
    heads.chmod(0o777)  # another local user could plant a branch of theirs
    new = common / "refs" / "tags" / "new"  # looser than git would make it under refs/tags
    new.mkdir()
    new.chmod(0o777)
    elsewhere = tmp_path / "elsewhere"
    (common / "logs" / "refs").rename(elsewhere)
    (common / "logs" / "refs").symlink_to(elsewhere)  # your reflogs written there
    after = surface.read(common, ())
    labels = surface_diff.changed(before, after)
    assert labels == ["logs/refs", "refs/heads", "refs/tags/new"]
    surface_restore.put_back(common, before, labels, after)
    assert stat.S_IMODE(heads.stat().st_mode) == mode
    assert stat.S_IMODE(new.stat().st_mode) & 0o002 == 0  # kept, closed to others
    assert (common / "logs" / "refs").is_dir()
    assert not (common / "logs" / "refs").is_symlink()
    assert (elsewhere / "heads" / "main").is_file()
    assert surface_diff.changed(before, surface.read(common, ())) == []
