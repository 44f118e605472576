"""Named pipes and devices an agent leaves in your checkout: reported, and removed.

git lists neither, but waits for ever on a pipe where it reads a file (a `.gitignore`): the
guard's comparison of your checkout would, and your own `git status` after the run.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.test_run import status_json
from tests.test_trust import AgentFactory, outside_writes, run_one
from worktree_swarm.git.process import StuckOnPipeError
from worktree_swarm.guard import snapshot
from worktree_swarm.guard.special_files import special_files
from worktree_swarm.infra import fs, pipes

PLANT = """
import os, pathlib, stat, sys
pathlib.Path('work.txt').write_text('own work\\n')
target = pathlib.Path(sys.argv[1], sys.argv[2])
target.parent.mkdir(parents=True, exist_ok=True)
if sys.argv[4]:  # the directory's .git, not one git takes for a repository
    target.with_name('.git').write_text(sys.argv[4])
if sys.argv[3] == 'pipe':
    os.mkfifo(target)
else:  # a character device: the one /dev/null is
    os.mknod(target, stat.S_IFCHR | 0o600, os.makedev(1, 3))
"""


def _can_make_devices(where: Path) -> bool:
    try:
        os.mknod(where, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except OSError:
        return False
    where.unlink()
    return True


@pytest.mark.parametrize(
    ("planted", "kind", "dot_git"),
    [
        pytest.param(".gitignore", "pipe", "", id="gitignore"),
        # In a directory it made: git looks into it, and reads its attributes for its files.
        pytest.param("new/.gitattributes", "pipe", "", id="nested"),
        pytest.param("null", "device", "", id="device"),
        # A `.git` git ignores (garbage, or naming nothing) is no repository: git walks in.
        pytest.param("sub/.gitignore", "pipe", "garbage\n", id="garbage-dot-git"),
        pytest.param("sub/.gitignore", "pipe", "gitdir: /nonexistent\n", id="gitdir-to-nowhere"),
        # git opens a `.git` directory's HEAD to tell whether it holds a repository.
        pytest.param("sub/.git/HEAD", "pipe", "", id="head-of-a-dot-git"),
    ],
)
def test_a_named_pipe_an_agent_leaves_in_your_checkout_fails_it_and_is_removed(
    repo: Path,
    tmp_path: Path,
    write_agent: AgentFactory,
    planted: str,
    kind: str,
    dot_git: str,
) -> None:
    if kind == "device" and not _can_make_devices(tmp_path / "probe"):
        pytest.skip("making a device node needs CAP_MKNOD")
    (repo / "new").mkdir()
    (repo / "new" / "notes.txt").write_text("untracked notes of yours\n")
    os.mkfifo(repo / "yours.fifo")  # the user's own, from before the run: left alone
    done = run_one(repo, [*write_agent(PLANT), str(repo), planted, kind, dot_git], sandbox=False)
    row = status_json(repo)["bad"]
    assert row["state"] == "failed", done.stdout + done.stderr
    assert str(row["reason"]).startswith(
        f"wrote outside its worktree: files {planted} in the main checkout; restored, patch "
    ), row
    assert "replacing" not in done.stdout  # failed before it was ever said to be done
    assert "scan failed" not in done.stdout  # the comparison went on
    found = [(w["summary"], w["suspects"], w["restored"]) for w in outside_writes(repo)]
    assert found == [(f"files {planted} in the main checkout", ["bad"], True)], found
    assert not os.path.lexists(repo / planted)
    assert stat.S_ISFIFO((repo / "yours.fifo").lstat().st_mode)
    shown = subprocess.run(
        ["git", "status", "--porcelain"], cwd=repo, check=True, timeout=30, capture_output=True
    )
    assert shown.stdout == b"?? new/\n"


def test_a_named_pipe_with_a_newline_and_an_escape_in_its_name_is_shown_quoted(
    repo: Path, write_agent: AgentFactory
) -> None:
    """The patch names it as git quotes it: its name cannot add a line nor colour a terminal."""
    name = "a\nb\x1b[31m.fifo"
    done = run_one(repo, [*write_agent(PLANT), str(repo), name, "pipe", ""], sandbox=False)
    writes = outside_writes(repo)
    assert [w["paths"] for w in writes] == [[name]], done.stdout + done.stderr
    patch = Path(str(writes[0]["patch"])).read_text()
    assert patch == (
        '# "a\\nb\\033[31m.fifo": a named pipe or device made in your checkout, removed\n'
    )
    assert not os.path.lexists(repo / name)


def test_a_capture_stopped_on_a_named_pipe_leaves_the_next_one_free_to_run(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """git, stopped while it held the lock of the guard's scratch index, left it there: every
    later comparison of the checkout failed ("Another git process seems to be running")."""
    monkeypatch.setattr(pipes, "LOOK_SECONDS", 0.05)
    scratch = tmp_path / "main.scratch-index"
    store = snapshot.Objects(tmp_path / "objects", repo / ".git" / "objects")
    before = snapshot.capture(repo, scratch, store)
    os.mkfifo(repo / ".gitignore")  # made between the guard's walk and its git
    with pytest.raises(StuckOnPipeError):
        snapshot.capture(repo, scratch, store)
    (repo / ".gitignore").unlink()
    assert snapshot.capture(repo, scratch, store) == before


def test_removing_a_pipe_follows_no_directory_swapped_for_a_link_nor_takes_another_file(
    tmp_path: Path,
) -> None:
    """The guard removes what its walk found: a directory on the way swapped for a symlink
    since (to a directory of yours outside the checkout), or the pipe for a file, is left."""
    checkout, outside = tmp_path / "checkout", tmp_path / "outside"
    (checkout / "d").mkdir(parents=True)
    outside.mkdir()
    os.mkfifo(checkout / "d" / "p")
    os.mkfifo(checkout / "q")
    found = special_files(checkout)
    assert set(found) == {"d/p", "q"}
    (checkout / "d").rename(outside / "d")  # the same pipe, now outside: same inode
    (checkout / "d").symlink_to(outside / "d")
    (checkout / "q").unlink()
    (checkout / "q").write_text("a file of the agent's, in the pipe's place\n")
    with pytest.raises(OSError, match=r"Too many levels of symbolic links|Not a directory"):
        fs.remove_special(checkout, "d/p", found["d/p"])
    assert not fs.remove_special(checkout, "q", found["q"])
    assert stat.S_ISFIFO((outside / "d" / "p").lstat().st_mode)
    assert (checkout / "q").read_text() == "a file of the agent's, in the pipe's place\n"
    os.mkfifo(checkout / "r")
    assert fs.remove_special(checkout, "r", special_files(checkout)["r"])
    assert not os.path.lexists(checkout / "r")


def test_pipes_are_looked_for_where_git_looks_not_in_what_it_takes_for_another_repository(
    repo: Path, tmp_path: Path
) -> None:
    git = ["git", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q", str(repo / "nested")], check=True, timeout=30)
    subprocess.run(
        ["git", "worktree", "add", "-q", "--detach", str(repo / "linked")],
        cwd=repo,
        check=True,
        timeout=30,
    )
    (repo / "garbage").mkdir()
    (repo / "garbage" / ".git").write_text("garbage\n")
    (repo / "nowhere").mkdir()
    (repo / "nowhere" / ".git").write_text(f"gitdir: {tmp_path / 'missing'}\n")
    (repo / "broken" / ".git").mkdir(parents=True)  # no HEAD, no objects: no repository
    for where in ("nested", "linked", "garbage", "nowhere", "broken/.git"):
        os.mkfifo(repo / where / ".gitignore")
    assert sorted(special_files(repo)) == [
        "broken/.git/.gitignore",
        "garbage/.gitignore",
        "nowhere/.gitignore",
    ]
    for rel in special_files(repo):
        (repo / rel).unlink()
    shown = subprocess.run(  # waits on no pipe left: those in the two repositories, it skips
        ["git", "status", "--porcelain"], cwd=repo, check=True, timeout=30, capture_output=True
    )
    assert shown.stdout == b"?? linked/\n?? nested/\n"


def test_a_git_dir_is_told_by_a_symlinked_head_or_the_common_dir_it_names(tmp_path: Path) -> None:
    # As git tells them: an old git's HEAD symlink into refs/, an admin dir's `commondir`
    # naming a dir with objects and refs (its HEAD unreadable as one). A `commondir` that is
    # no text git reads names no repository: walked, its pipe found.
    root = tmp_path / "checkout"
    linked_head = root / "old" / ".git"
    (linked_head / "refs" / "heads").mkdir(parents=True)
    (linked_head / "HEAD").symlink_to("refs/heads/main")
    common = root / "shared" / "common"
    for name in ("objects", "refs"):
        (common / name).mkdir(parents=True)
    for where, named in (("by-common", b"../../common\n"), ("bad-common", b"\xff\xfe\n")):
        admin = root / "shared" / where / ".git"
        admin.mkdir(parents=True)
        (admin / "HEAD").write_text("not a ref\n")
        (admin / "commondir").write_bytes(named)
    for where in ("old", "old/.git", "shared/by-common/.git", "shared/bad-common/.git"):
        os.mkfifo(root / where / "p")

    assert sorted(special_files(root)) == ["shared/bad-common/.git/p"]
