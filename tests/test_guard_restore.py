"""Putting a repository back: the executable git surface and a checkout, byte for byte.

These call the guard's library directly on real repositories, with the edits an agent could
make: hooks, config, aliases in ``core.hooksPath``, symlinks, binary and huge files, a file
where a directory was, a ref moved again while being restored, a git holding the index lock.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import git, make_repo
from worktree_swarm.guard import (
    hooks_dir,
    known_bytes,
    surface,
    surface_diff,
    surface_entry,
    surface_restore,
)
from worktree_swarm.guard.restore import put_files, put_index, restore_checkout, restore_ref
from worktree_swarm.guard.snapshot import Objects, capture, changed_paths, index_path


def git_unchecked(cwd: Path, *args: str) -> str:
    """git's stdout in *cwd*, whatever its exit code."""
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    return out.stdout.strip()


def test_a_hook_rewritten_in_place_with_its_size_and_time_kept_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each scan reads the surface; a file unchanged since it was read is not read again. What
    # tells it changed must be what no agent can set back: its ctime.
    monkeypatch.setattr(known_bytes, "RACY_NS", 0)  # every read kept at once (no waiting here)
    repo = make_repo(tmp_path / "repo")
    common = repo / ".git"
    hook = common / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\nexit 0\n")
    hook.chmod(0o755)
    before = surface.read(common, ())
    info = hook.stat()
    hook.write_text("#!/bin/sh\ncurl x\n")  # as many bytes
    os.utime(hook, ns=(info.st_atime_ns, info.st_mtime_ns))  # and its old time
    assert hook.stat().st_size == info.st_size
    after = surface.read(common, ())
    assert surface_diff.changed(before, after) == ["hooks/pre-commit"]
    assert after["hooks/pre-commit"].data == b"#!/bin/sh\ncurl x\n"
    assert surface.read(common, ()) == after


def test_every_kind_of_surface_change_is_shown_and_undone(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    common = repo / ".git"
    (common / "hooks" / "keep").mkdir()
    (common / "hooks" / "keep" / "old").write_text("old\n")
    (common / "hooks" / "shown").symlink_to("pre-commit.sample")
    (common / "info" / "gone").write_text("was here\n")
    os.mkfifo(common / "info" / "fifo")
    before = surface.read(common, ())
    assert before["info/fifo"].kind == "other"
    assert before["hooks/keep"].kind == "dir"

    # What an agent could do to the repository's git files.
    with (common / "config").open("a") as config:
        config.write('[alias]\n\tst = "!sh -c evil"\n')
    hook = common / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\ncurl evil\n")
    hook.chmod(0o755)
    (common / "hooks" / "keep").chmod(0o700)
    (common / "hooks" / "shown").unlink()
    (common / "hooks" / "shown").symlink_to("/bin/sh")
    (common / "hooks" / "new" / "deep").mkdir(parents=True)
    (common / "hooks" / "new" / "deep" / "x").write_text("x")
    (common / "info" / "binary").write_bytes(b"\x00\xff\xfe binary")
    (common / "info" / "huge").write_text("y\n" * (1 << 20))
    (common / "info" / "gone").unlink()
    (common / "info" / "gone").mkdir()
    (common / "info" / "fifo").unlink()
    (common / "info" / "fifo").write_text("now a file\n")

    after = surface.read(common, ())
    labels = surface_diff.changed(before, after)
    assert labels == [
        "config", "hooks/keep", "hooks/new", "hooks/new/deep", "hooks/new/deep/x",
        "hooks/pre-commit", "hooks/shown", "info/binary", "info/fifo", "info/gone",
        "info/huge",
    ]  # fmt: skip
    text = surface_diff.patch(common, before, after, labels)
    assert text.startswith(f"# git files changed in {common}\n")
    assert '+\tst = "!sh -c evil"\n' in text  # text is diffed
    assert "# hooks/pre-commit: (absent) -> file 755, 20 bytes\n--- a/hooks/pre-commit\n" in text
    assert "+#!/bin/sh\n+curl evil\n" in text
    assert "# hooks/shown: symlink to pre-commit.sample -> symlink to /bin/sh\n" in text
    assert "# hooks/keep: dir -> dir\n" in text
    assert "# info/gone: file 644, 9 bytes -> dir\n" in text
    assert "-was here\n" in text
    assert (
        "# info/fifo: not a file (a named pipe, a device or a socket) -> file 644, 11 bytes\n"
        in text
    )
    # Binary and huge files are named, not dumped into the patch.
    assert "# info/binary: (absent) -> file 644, 10 bytes\n# info/fifo" in text
    assert text.endswith("# info/huge: (absent) -> file 644, 2097152 bytes\n")
    assert "y\n" * 3 not in text

    surface_restore.put_back(common, before, labels)
    # A fifo cannot be made again: it is the only entry left different.
    assert surface_diff.changed(before, surface.read(common, ())) == ["info/fifo"]
    assert not (common / "hooks" / "new").exists()
    assert not hook.exists()
    assert (common / "hooks" / "shown").readlink() == Path("pre-commit.sample")
    assert (common / "info" / "gone").read_text() == "was here\n"
    assert stat.S_IMODE((common / "hooks" / "keep").stat().st_mode) == before["hooks/keep"].bits
    assert "evil" not in (common / "config").read_text()
    assert git(repo, "status", "--short") == ""


def test_a_git_file_named_with_a_newline_or_an_escape_is_shown_quoted(tmp_path: Path) -> None:
    """A hook's name (or a link's target) from an agent adds no line to the patch."""
    repo = make_repo(tmp_path / "repo")
    common = repo / ".git"
    before = surface.read(common, ())
    (common / "hooks" / "x\n# config: forged").write_text("evil\n")
    (common / "hooks" / "y\x1b[31m").symlink_to("t\nu")
    after = surface.read(common, ())
    labels = surface_diff.changed(before, after)
    text = surface_diff.patch(common, before, after, labels)
    assert '# "hooks/x\\n# config: forged": (absent) -> file 644, 5 bytes\n' in text
    assert '--- "a/hooks/x\\n# config: forged"\n' in text
    assert '# "hooks/y\\033[31m": (absent) -> symlink to "t\\nu"\n' in text
    assert "\x1b" not in text
    assert [line for line in text.splitlines() if line.startswith("# config")] == []


def test_a_directory_the_baseline_had_comes_back_in_place_of_a_file_or_link(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path / "repo")
    common = repo / ".git"
    before = surface.read(common, ())
    hooks = common / "hooks"
    sample = (hooks / "pre-push.sample").read_bytes()
    hooks.rename(common / "hooks-moved")
    hooks.symlink_to(tmp_path)  # the agent points hooks/ somewhere it controls
    labels = surface_diff.changed(before, surface.read(common, ()))
    surface_restore.put_back(common, before, labels)
    assert hooks.is_dir()
    assert not hooks.is_symlink()
    assert (hooks / "pre-push.sample").read_bytes() == sample
    assert surface_diff.changed(before, surface.read(common, ())) == []
    # The same with a plain file where the directory was.
    (common / "info" / "exclude").unlink()
    (common / "info").rmdir()
    (common / "info").write_text("not a dir")
    surface_restore.put_back(common, before, surface_diff.changed(before, surface.read(common, ())))
    assert surface_diff.changed(before, surface.read(common, ())) == []


def test_hooks_outside_the_git_dir_are_watched_at_their_top_level(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    common = repo / ".git"
    assert hooks_dir.hooks_paths(repo) == ()
    git(repo, "config", "core.hooksPath", "githooks")
    (hooks,) = hooks_dir.hooks_paths(repo)
    assert hooks == repo / "githooks"
    hooks.mkdir()
    (hooks / "pre-commit").write_text("#!/bin/sh\n")
    (hooks / "lib").mkdir()
    (hooks / "lib" / "helper.sh").write_text("not run by git\n")
    (hooks / "linked").symlink_to(hooks / "lib")
    before = surface.read(common, [hooks])
    label = str(hooks / "pre-commit")
    assert label in before
    assert str(hooks / "linked") in before  # a link, even to a directory, could run
    assert str(hooks / "lib") not in before
    assert str(hooks / "lib" / "helper.sh") not in before
    (hooks / "pre-commit").write_text("#!/bin/sh\nrm -rf ~\n")
    (hooks / "post-merge").write_text("#!/bin/sh\n")
    after = surface.read(common, [hooks])
    labels = surface_diff.changed(before, after)
    assert labels == [str(hooks / "post-merge"), label]
    assert f"+++ b/{label}\n" in surface_diff.patch(common, before, after, labels)
    surface_restore.put_back(common, before, labels)
    assert (hooks / "pre-commit").read_text() == "#!/bin/sh\n"
    assert not (hooks / "post-merge").exists()
    # core.hooksPath naming the git dir's own hooks: not read twice under two labels.
    inside = surface.read(common, [common / "hooks"])
    assert not any(Path(k).is_absolute() for k, v in inside.items() if v.kind != surface_entry.MODE)


def test_a_worktrees_own_config_is_on_the_surface(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    git(repo, "config", "extensions.worktreeConfig", "true")
    git(repo, "worktree", "add", "-q", "-b", "feature", str(tmp_path / "wt"))
    common = repo / ".git"
    before = surface.read(common, ())
    git(tmp_path / "wt", "config", "--worktree", "core.fsmonitor", "/tmp/evil")
    after = surface.read(common, ())
    assert surface_diff.changed(before, after) == ["worktrees/wt/config.worktree"]
    surface_restore.put_back(common, before, ["worktrees/wt/config.worktree"])
    assert not (common / "worktrees" / "wt" / "config.worktree").exists()
    assert git_unchecked(tmp_path / "wt", "config", "--get", "core.fsmonitor") == ""


def test_a_worktrees_submodule_git_dir_goes_with_its_admin_dir_as_gits_doing(
    tmp_path: Path,
) -> None:
    # Its files gone with the whole admin dir (`git worktree remove`): git's; gone alone, not.
    repo = make_repo(tmp_path / "repo")
    git(repo, "worktree", "add", "-q", "-b", "feature", str(tmp_path / "wt"))
    common = repo / ".git"
    lib = common / "worktrees" / "wt" / "modules" / "lib"
    (lib / "hooks").mkdir(parents=True)
    (lib / "HEAD").write_text("ref: refs/heads/main\n")
    (lib / "config").write_text("[core]\n\tbare = false\n")
    before = surface.read(common, ())
    label = "worktrees/wt/modules/lib/config"
    assert label in before
    (lib / "config").unlink()
    after = surface.read(common, ())
    assert not surface_diff.worktree_made(common, before, after, label)
    git(repo, "worktree", "remove", "--force", "--force", str(tmp_path / "wt"))
    after = surface.read(common, ())
    assert label in surface_diff.changed(before, after)
    assert surface_diff.worktree_made(common, before, after, label)


def test_a_ref_is_swapped_back_only_from_the_value_that_was_seen(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    first = git(repo, "rev-parse", "HEAD")
    git(repo, "commit", "-q", "--allow-empty", "-m", "second")
    second = git(repo, "rev-parse", "HEAD")
    git(repo, "branch", "made-by-agent", second)
    # A ref the baseline lacked is deleted; one that moved goes back.
    assert restore_ref(repo, "refs/heads/made-by-agent", None, second)
    assert git(repo, "branch", "--list", "made-by-agent") == ""
    assert restore_ref(repo, "refs/heads/main", first, second)
    assert git(repo, "rev-parse", "main") == first
    # Moved again since it was seen: left alone, and the caller hears so.
    git(repo, "branch", "busy", first)
    assert not restore_ref(repo, "refs/heads/busy", second, second)
    assert git(repo, "rev-parse", "busy") == first
    assert not restore_ref(repo, "refs/heads/busy", None, second)
    assert git(repo, "rev-parse", "busy") == first
    # A ref the agent deleted comes back.
    git(repo, "branch", "-D", "busy")
    assert restore_ref(repo, "refs/heads/busy", first, None)
    assert git(repo, "rev-parse", "busy") == first


def test_the_index_is_not_written_while_a_git_holds_its_lock(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    saved = tmp_path / "saved-index"
    saved.write_bytes(index_path(repo).read_bytes())
    (repo / "new.txt").write_text("staged by the agent\n")
    git(repo, "add", "new.txt")
    lock = index_path(repo).with_name("index.lock")
    lock.write_bytes(b"a running git's")
    assert not put_index(repo, saved)
    assert lock.read_bytes() == b"a running git's"
    assert "new.txt" in git(repo, "ls-files")
    lock.unlink()
    assert put_index(repo, saved)
    assert "new.txt" not in git(repo, "ls-files")
    assert not lock.exists()
    # A baseline without an index (nothing was ever staged): the index goes too.
    assert put_index(repo, tmp_path / "no-index")
    assert not index_path(repo).exists()
    assert not lock.exists()


def test_files_come_back_as_the_baseline_tree_had_them(tmp_path: Path) -> None:
    repo = make_repo(
        tmp_path / "repo",
        {"run.sh": "#!/bin/sh\n", "plain.txt": "plain\n", "dir/a.txt": "a\n", "keep.txt": "k\n"},
    )
    (repo / "run.sh").chmod(0o755)
    (repo / "link").symlink_to("plain.txt")
    # A submodule entry: its commit is recorded, its checkout is not the guard's to restore.
    sub = git(repo, "rev-parse", "HEAD")
    git(repo, "update-index", "--add", "--cacheinfo", f"160000,{sub},vendor/lib")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "more")
    scratch = tmp_path / "scratch-index"
    store = own_store(tmp_path, repo)
    base = capture(repo, scratch, store)

    (repo / "run.sh").write_text("#!/bin/sh\nrm -rf /\n")
    (repo / "run.sh").chmod(0o644)
    (repo / "plain.txt").unlink()
    (repo / "plain.txt").mkdir()
    (repo / "plain.txt" / "inner").write_text("x")
    (repo / "link").unlink()
    (repo / "link").write_text("not a link")
    (repo / "dir" / "a.txt").unlink()
    (repo / "dir").rmdir()
    (repo / "dir").write_text("a file where a directory was")
    (repo / "new" / "deeper").mkdir(parents=True)
    (repo / "new" / "deeper" / "file").write_text("made by the agent")
    now = capture(repo, scratch, store)
    paths = changed_paths(repo, base.tree, now.tree, store.reading())
    put_files(repo, base.tree, paths, store.reading())

    assert (repo / "run.sh").read_text() == "#!/bin/sh\n"
    assert os.access(repo / "run.sh", os.X_OK)
    assert (repo / "plain.txt").read_text() == "plain\n"
    assert (repo / "link").readlink() == Path("plain.txt")
    assert (repo / "dir" / "a.txt").read_text() == "a\n"
    assert not (repo / "new").exists()  # emptied directories are pruned
    assert capture(repo, scratch, store) == base
    assert not list(repo.rglob(".*.swarm-restore"))
    put_files(repo, base.tree, [])  # nothing to do


def own_store(tmp_path: Path, repo: Path) -> Objects:
    """A guard's own store for the captures of *repo*, beside the repository's."""
    return Objects(tmp_path / "objects", repo / ".git" / "objects")


def test_a_checkout_comes_back_to_its_branch_or_its_detached_commit(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    scratch = tmp_path / "scratch-index"
    saved = tmp_path / "saved-index"
    saved.write_bytes(index_path(repo).read_bytes())
    store = own_store(tmp_path, repo)
    base = capture(repo, scratch, store)
    # The agent switches the main checkout to a branch of its own and stages a file.
    git(repo, "switch", "-q", "-c", "agent")
    (repo / "README.md").write_text("changed\n")
    git(repo, "add", "README.md")
    git(repo, "commit", "-q", "-m", "agent's")
    (repo / "stray.txt").write_text("x")
    git(repo, "add", "stray.txt")
    now = capture(repo, scratch, store)
    assert restore_checkout(
        repo, base=base, now=now, saved_index=saved, scratch=scratch, objects=store, exclude=()
    )
    assert git(repo, "symbolic-ref", "HEAD") == "refs/heads/main"
    assert (repo / "README.md").read_text() == "hello\n"
    assert not (repo / "stray.txt").exists()
    assert git(repo, "status", "--short") == ""

    # A detached baseline: HEAD goes back to the commit itself.
    first = git(repo, "rev-parse", "HEAD")
    git(repo, "switch", "-q", "--detach", first)
    detached = capture(repo, scratch, store)
    git(repo, "switch", "-q", "agent")
    now = capture(repo, scratch, store)
    assert restore_checkout(
        repo, base=detached, now=now, saved_index=saved, scratch=scratch, objects=store, exclude=()
    )
    assert git(repo, "rev-parse", "HEAD") == first
    assert git_unchecked(repo, "symbolic-ref", "-q", "HEAD") == ""


def test_a_checkout_that_cannot_be_restored_now_says_so(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    scratch = tmp_path / "scratch-index"
    saved = tmp_path / "saved-index"
    saved.write_bytes(index_path(repo).read_bytes())
    store = own_store(tmp_path, repo)
    base = capture(repo, scratch, store)
    (repo / "new.txt").write_text("x")
    git(repo, "add", "new.txt")
    now = capture(repo, scratch, store)
    lock = index_path(repo).with_name("index.lock")
    lock.write_text("")  # a git command is running there
    assert not restore_checkout(
        repo, base=base, now=now, saved_index=saved, scratch=scratch, objects=store, exclude=()
    )
    lock.unlink()
    # A baseline commit that is gone: git refuses, the restore reports failure.
    gone = base.__class__(head_ref=None, head="0" * 40, index=base.index, tree=base.tree)
    assert not restore_checkout(
        repo, base=gone, now=now, saved_index=saved, scratch=scratch, objects=store, exclude=()
    )


def test_a_ref_is_put_back_past_a_lock_file_planted_beside_it_but_not_past_a_live_one(
    tmp_path: Path,
) -> None:
    # Under --sandbox too an agent can write refs/: it moved main, then planted main.lock so
    # that the guard's put-back failed ("left as found") and your main stayed moved.
    repo = make_repo(tmp_path / "repo")
    before = git(repo, "rev-parse", "main")
    git(repo, "commit", "-q", "--allow-empty", "-m", "the agent's")
    after = git(repo, "rev-parse", "main")
    lock = repo / ".git" / "refs" / "heads" / "main.lock"
    lock.write_text("")
    assert not restore_ref(repo, "refs/heads/main", before, after)  # a git's, at work now
    assert lock.exists()
    old = lock.stat().st_mtime - 60
    os.utime(lock, (old, old))  # left there: no git holds a ref's lock for a minute
    assert restore_ref(repo, "refs/heads/main", before, after)
    assert git(repo, "rev-parse", "main") == before
    assert not lock.exists()
