"""The object store's directory: moved aside and put back, planted links made real again.

Real repositories and real directories: the store moved the ways an agent moves it, and git
itself reading what was put back.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import as_owner_only, git, make_repo
from worktree_swarm.guard import store_dir


def blob(repo: Path, text: str) -> str:
    """Write *text* as a loose object of *repo* (wherever its ``objects`` now is)."""
    return subprocess.run(
        ["git", "hash-object", "-w", "--stdin"],
        cwd=repo, input=text, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


def as_owner(code: str) -> subprocess.CompletedProcess[str]:
    """Run *code* without root's power to ignore file permissions."""
    return subprocess.run(
        [*as_owner_only(), sys.executable, "-c", code],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


def inode(path: Path) -> tuple[int, int]:
    info = path.lstat()
    return info.st_dev, info.st_ino


def swap_store(repo: Path, moved_to: str) -> tuple[Path, store_dir.StoreId]:
    """Move *repo*'s store to *moved_to* (in the git dir) and make an empty one in its place."""
    common = repo / ".git"
    store = store_dir.store_id(common)
    assert store is not None
    (common / "objects").rename(common / moved_to)
    (common / "objects").mkdir()
    return common, store


def free_fanouts(*stores: Path) -> list[str]:
    """Fan-out names that none of *stores* has."""
    taken = {entry.name for store in stores for entry in store.iterdir()}
    return [name for name in (f"{i:02x}" for i in range(256)) if name not in taken]


def test_the_store_is_known_by_its_own_directory_not_a_link_there(tmp_path: Path) -> None:
    common = make_repo(tmp_path / "repo") / ".git"
    store = common / "objects"
    assert store_dir.store_id(common) == inode(store)
    store.rename(common / "objects.orig")
    assert store_dir.store_id(common) is None  # no store at all
    store.symlink_to(common / "objects.orig")
    assert store_dir.store_id(common) == inode(store) != inode(common / "objects.orig")


def test_a_moved_store_is_found_wherever_it_went_never_through_a_link(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    common, store = swap_store(repo, "refs/objects.orig")
    (common / "a-link").symlink_to(common / "refs" / "objects.orig")  # shallower, not followed
    assert store_dir.find_store(common, store) == common / "refs" / "objects.orig"


def test_a_store_no_longer_in_the_git_dir_is_not_found(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    common, store = swap_store(repo, "objects.orig")
    (common / "objects.orig").rename(tmp_path / "elsewhere")
    assert store_dir.find_store(common, store) is None
    assert (tmp_path / "elsewhere").is_dir()  # left as it is


def test_a_folder_that_cannot_be_listed_does_not_hide_the_store(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    common, store = swap_store(repo, "refs/objects.orig")
    sealed = common / "a-sealed"
    sealed.mkdir()
    sealed.chmod(0)
    try:
        out = as_owner(
            "from pathlib import Path; from worktree_swarm.guard import store_dir; "
            f"print(store_dir.find_store(Path({str(common)!r}), {store!r}))"
        )
    finally:
        sealed.chmod(0o755)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str(common / "refs" / "objects.orig")


def test_a_store_put_back_keeps_what_git_wrote_in_its_place(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"a.txt": "yours\n"})
    common, store = swap_store(repo, "objects.orig")
    written = blob(repo, "written while the store was away\n")  # into the agent's store
    aside = tmp_path / "guard" / "replaced"
    aside.parent.mkdir()
    found = store_dir.find_store(common, store)
    assert found == common / "objects.orig"
    store_dir.put_store_back(common, found, aside)
    assert store_dir.store_id(common) == store
    assert not found.exists()
    assert git(repo, "show", "main:a.txt") == "yours"
    assert git(repo, "cat-file", "-p", written) == "written while the store was away"
    kept = aside / written[:2] / written[2:]  # nothing deleted: a link of the same file
    assert inode(kept) == inode(common / "objects" / written[:2] / written[2:])


def test_odd_entries_in_either_store_are_neither_linked_nor_followed(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    common, store = swap_store(repo, "objects.orig")
    original, replacement = common / "objects.orig", common / "objects"
    not_dir, file_there, link_there = free_fanouts(original)[:3]
    (replacement / not_dir).write_text("a file with a fan-out's name\n")
    (replacement / "info").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (replacement / "info" / "alternates").write_text(f"{outside}\n")  # the agent's own
    (original / file_there).write_text("the store's own\n")
    (original / link_there).symlink_to(outside)
    for name in (file_there, link_there):
        (replacement / name).mkdir()
        (replacement / name / ("0" * 38)).write_text("an object\n")
    store_dir.put_store_back(common, original, tmp_path / "aside")
    objects = common / "objects"
    assert store_dir.store_id(common) == store
    assert not (objects / not_dir).exists()
    assert not (objects / "info" / "alternates").exists()  # the store's info stays its own
    assert (objects / file_there).read_text() == "the store's own\n"
    assert (objects / link_there).readlink() == outside
    assert list(outside.iterdir()) == []  # nothing written through the link
    assert (tmp_path / "aside" / not_dir).read_text() == "a file with a fan-out's name\n"


def test_a_store_that_cannot_be_put_back_leaves_both_where_they_were(tmp_path: Path) -> None:
    """Its folder read-only: the store stays there, what was in its place goes back too."""
    repo = make_repo(tmp_path / "repo", {"a.txt": "yours\n"})
    common, store = swap_store(repo, "refs/objects.orig")
    replacement = store_dir.store_id(common)
    aside = tmp_path / "aside"
    (common / "refs").chmod(0o555)
    try:
        out = as_owner(
            "from pathlib import Path\nfrom worktree_swarm.guard import store_dir\n"
            f"common, aside = Path({str(common)!r}), Path({str(aside)!r})\n"
            "try:\n"
            "    store_dir.put_store_back(common, common / 'refs/objects.orig', aside)\n"
            "except PermissionError as exc:\n"
            "    print('refused:', exc.strerror)\n"
        )
    finally:
        (common / "refs").chmod(0o755)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "refused: Permission denied"
    assert store_dir.store_id(common) == replacement
    assert not os.path.lexists(aside)
    assert store_dir.find_store(common, store) == common / "refs" / "objects.orig"


def test_links_planted_where_git_keeps_objects_are_found(tmp_path: Path) -> None:
    common = make_repo(tmp_path / "repo") / ".git"
    objects = common / "objects"
    outside = tmp_path / "outside"
    outside.mkdir()
    assert store_dir.planted_links(common) == []  # git makes none
    (objects / "pack").rename(outside / "pack")
    # A fan-out directory the repository's own objects do not use (their names vary with time).
    fan_out = next(objects / f"{n:02x}" for n in range(256) if not (objects / f"{n:02x}").exists())
    fan_out.symlink_to(outside)
    assert store_dir.planted_links(common) == [fan_out]  # no pack directory: no more
    (objects / "pack").mkdir()
    (objects / "pack" / "pack-1.pack").symlink_to(outside / "pack-1.pack")
    (objects / "pack" / "pack-1.idx").write_text("a real file\n")
    assert store_dir.planted_links(common) == [fan_out, objects / "pack" / "pack-1.pack"]
    objects.rename(outside / "objects")
    objects.symlink_to(outside / "objects")
    assert store_dir.planted_links(common) == [objects]  # the store itself: only it


def test_a_linked_pack_directory_becomes_the_stores_own(tmp_path: Path) -> None:
    """Its packs copied: the worktree it was moved into can go, your commits stay."""
    repo = make_repo(tmp_path / "repo", {"a.txt": "yours\n"})
    git(repo, "repack", "-adq")
    pack = repo / ".git" / "objects" / "pack"
    worktree = tmp_path / "worktree"
    worktree.mkdir()
    pack.rename(worktree / "pack")
    pack.symlink_to(worktree / "pack")
    stale = pack.with_name(".pack.swarm-unplanted")  # from an unplant killed midway
    stale.mkdir()
    (stale / "half-copied.pack").write_text("x")
    store_dir.unplant(pack)
    assert not pack.is_symlink()
    assert pack.is_dir()
    assert not os.path.lexists(stale)
    names = sorted(p.name for p in (worktree / "pack").iterdir())
    assert sorted(p.name for p in pack.iterdir()) == names
    for name in names:
        assert (pack / name).read_bytes() == (worktree / "pack" / name).read_bytes()
    for entry in (worktree / "pack").iterdir():
        entry.unlink()
    (worktree / "pack").rmdir()
    assert git(repo, "show", "main:a.txt") == "yours"


def test_a_linked_pack_file_becomes_a_read_only_copy(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"a.txt": "yours\n"})
    git(repo, "repack", "-adq")
    (pack,) = (repo / ".git" / "objects" / "pack").glob("*.pack")
    moved = tmp_path / "worktree.pack"
    pack.rename(moved)
    pack.symlink_to(moved)
    stale = pack.with_name(f".{pack.name}.swarm-unplanted")
    stale.write_text("half a copy")
    store_dir.unplant(pack)
    assert not pack.is_symlink()
    assert pack.read_bytes() == moved.read_bytes()
    assert pack.stat().st_mode & 0o777 == 0o444
    assert not os.path.lexists(stale)
    moved.unlink()
    assert git(repo, "show", "main:a.txt") == "yours"


def test_a_link_to_nothing_is_removed(tmp_path: Path) -> None:
    common = make_repo(tmp_path / "repo") / ".git"
    link = common / "objects" / "pack" / "pack-gone.idx"
    link.symlink_to(tmp_path / "gone")
    store_dir.unplant(link)
    assert not os.path.lexists(link)
    assert not os.path.lexists(tmp_path / "gone")  # nothing made through it
