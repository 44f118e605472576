from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest

from tests.conftest import GIT_SUBCOMMAND, git, git_first_on_path, make_repo
from worktree_swarm.core.errors import BadInputError, CommandError, GitError, SwarmError
from worktree_swarm.core.paths import real_path
from worktree_swarm.core.run_settings import DEFAULT_MAX_FILE
from worktree_swarm.git import branches as git_branches
from worktree_swarm.git import checkpoints, diffs, gitconfig, gitfiles, merge_tree, status
from worktree_swarm.git import index as git_index
from worktree_swarm.git import repo as g
from worktree_swarm.git.checkpoints import EmbeddedRepositoryError
from worktree_swarm.git.merge_tree import MergeConflictError

AUTHOR = "Swarm Bot <bot@example.com>"


def commit_file(repo: Path, name: str, text: str, message: str = "change") -> str:
    (repo / name).parent.mkdir(parents=True, exist_ok=True)
    (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def test_require_git_ok() -> None:
    g.require_git()


def test_require_git_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BadInputError, match="git is not installed"):
        g.require_git()


def test_require_git_too_old(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "git"
    fake.write_text("#!/bin/sh\necho 'git version 2.37.1'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BadInputError, match=r"git version 2\.37\.1 found; .*>= 2\.38"):
        g.require_git()


def test_open_repo_from_root_and_subdir(repo: Path) -> None:
    (repo / "sub" / "deeper").mkdir(parents=True)
    for start in (repo, repo / "sub" / "deeper"):
        r = g.open_repo(start)
        assert r.root == repo.resolve()
        assert r.common_dir == (repo / ".git").resolve()
        assert r.state_dir == r.common_dir / "swarm"
        assert not r.state_dir.exists()


def test_open_repo_from_linked_worktree(repo: Path, tmp_path: Path) -> None:
    git(repo, "worktree", "add", "-q", "-b", "other", str(tmp_path / "linked"))
    (tmp_path / "linked" / "d").mkdir()
    r = g.open_repo(tmp_path / "linked" / "d")
    assert r.root == repo.resolve()
    assert r.common_dir == (repo / ".git").resolve()


def test_a_worktrees_git_dir_is_resolved_as_realpath_does_without_an_lstat_per_component(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Resolved several times a task: by the name of a descriptor open on it, where there is one.
    (tmp_path / "real").mkdir()
    (tmp_path / "via").symlink_to(tmp_path / "real")
    git(repo, "worktree", "add", "-q", "-b", "other", str(tmp_path / "via" / "linked"))
    linked = tmp_path / "via" / "linked"
    (linked / "dangling").symlink_to(tmp_path / "nowhere")
    (linked / "loop").symlink_to(linked / "loop")
    cases = [linked / ".git", linked / "dangling", linked / "loop", tmp_path / "no" / "such"]
    assert [real_path(p) for p in cases] == [Path(os.path.realpath(p)) for p in cases]
    expected = Path(os.path.realpath(repo / ".git" / "worktrees" / "linked"))
    looked: list[str] = []
    real_lstat = os.lstat

    def spied(path: str | Path, **kwargs: object) -> os.stat_result:
        looked.append(os.fspath(path))
        return real_lstat(path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "lstat", spied)
    assert g.git_dir(linked) == expected
    assert looked == []
    assert real_path(linked / "README.md") == tmp_path / "real" / "linked" / "README.md"
    assert looked == []


def test_open_repo_separate_git_dir(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q", "-b", "main", "--separate-git-dir", "meta.git", "checkout")
    git(tmp_path / "checkout", "commit", "-q", "--allow-empty", "-m", "x")
    (tmp_path / "checkout" / "sub").mkdir()
    r = g.open_repo(tmp_path / "checkout" / "sub")
    assert r.root == (tmp_path / "checkout").resolve()
    assert r.common_dir == (tmp_path / "meta.git").resolve()


@pytest.mark.parametrize("name", ["meta.git", "elsewhere/.git"])
def test_open_repo_separate_git_dir_named_anything(tmp_path: Path, name: str) -> None:
    # A git dir named `.git` beside no checkout of its own: the checkout is where it is used.
    (tmp_path / name).parent.mkdir(exist_ok=True)
    git(tmp_path, "init", "-q", "-b", "main", "--separate-git-dir", name, "checkout")
    git(tmp_path / "checkout", "commit", "-q", "--allow-empty", "-m", "x")
    r = g.open_repo(tmp_path / "checkout")
    assert r.root == (tmp_path / "checkout").resolve()
    assert r.common_dir == (tmp_path / name).resolve()


def test_open_repo_whose_path_holds_a_newline(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "two\nlines")
    (repo / "sub").mkdir()
    r = g.open_repo(repo / "sub")
    assert r.root == repo.resolve()
    assert r.common_dir == (repo / ".git").resolve()


def test_a_repository_whose_path_is_not_utf8_is_refused_in_one_line(tmp_path: Path) -> None:
    """swarm records paths as text: it said "directory … does not exist" after git ran."""
    odd = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9"))
    repo = make_repo(odd / "repo")
    manifest = tmp_path / "tasks.toml"
    manifest.write_text('[[task]]\nid = "a"\nprompt = "p"\nagent = ["true"]\n')
    for args in (["run", str(manifest)], ["status"]):
        out = subprocess.run(
            [sys.executable, "-m", "worktree_swarm.cli", *args],
            cwd=repo, capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert out.returncode == 2, out.stderr
        assert out.stderr == (
            f'swarm: "{tmp_path}/caf\\351/repo": the repository\'s path is not UTF-8, and swarm'
            " records paths as text; rename its directories to UTF-8 names, then run swarm again\n"
        )
    assert not (repo / ".git" / "swarm").exists()
    # A checkout of a UTF-8 name whose git dir is elsewhere, under a name that is not.
    git(tmp_path, "init", "-q", "-b", "main", f"--separate-git-dir={odd}/sep.git", "plain")
    with pytest.raises(BadInputError, match=r"sep\.git.*not UTF-8"):
        g.open_repo(tmp_path / "plain")


def test_open_repo_not_a_repo(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    with pytest.raises(BadInputError, match="is not inside a git repository"):
        g.open_repo(tmp_path / "plain")
    with pytest.raises(BadInputError, match="is not a directory"):
        g.open_repo(tmp_path / "missing")


def test_open_repo_bare(repo: Path, tmp_path: Path) -> None:
    git(tmp_path, "clone", "-q", "--bare", str(repo), "bare.git")
    with pytest.raises(BadInputError, match="is a bare repository"):
        g.open_repo(tmp_path / "bare.git")
    # A linked worktree of a bare repository has no main checkout to run in.
    git(tmp_path / "bare.git", "worktree", "add", "-q", str(tmp_path / "linked"), "main")
    with pytest.raises(
        BadInputError, match=r"linked is a linked worktree of the bare repository .*bare\.git; "
    ):
        g.open_repo(tmp_path / "linked")
    # A checkout whose config says core.bare: git finds no working tree in it.
    git(repo, "config", "core.bare", "true")
    with pytest.raises(BadInputError, match="is a bare repository"):
        g.open_repo(repo)


def test_open_repo_no_commits(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    git(tmp_path / "empty", "init", "-q", "-b", "main")
    with pytest.raises(BadInputError, match="has no commits yet"):
        g.open_repo(tmp_path / "empty")


def test_git_helper_errors(repo: Path) -> None:
    assert g.git(repo, "rev-parse", "--is-inside-work-tree").strip() == "true"
    with pytest.raises(CommandError):
        g.git(repo, "rev-parse", "--verify", "nope")
    assert g.git(repo, "rev-parse", "--verify", "-q", "nope", check=False) == ""


def test_git_helper_ignores_leaked_git_dir(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = make_repo(tmp_path / "other", {"x": "y\n"})
    head = git(repo, "rev-parse", "HEAD")
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))
    r = g.open_repo(repo)
    assert r.root == repo.resolve()
    assert g.head_commit(r) == head


def test_rev_parse_head_branch(repo: Path) -> None:
    r = g.open_repo(repo)
    head = git(repo, "rev-parse", "HEAD")
    assert g.head_commit(r) == head
    assert g.rev_parse(r, "main") == head
    assert g.rev_parse(r, "no-such-rev") is None
    assert g.rev_parse(r, "--all") is None
    assert git_branches.current_branch(r) == "main"
    assert git_branches.branch_exists(r, "main")
    assert not git_branches.branch_exists(r, "feature")
    git(repo, "checkout", "-q", "--detach")
    assert git_branches.current_branch(r) is None


def test_repo_lock_creates_state_dir(repo: Path) -> None:
    r = g.open_repo(repo)
    lock = g.repo_lock(r)
    with lock:
        assert (r.state_dir / "repo.lock").exists()
    assert (r.state_dir / "repo.lock").exists()


def test_merge_commits_clean(repo: Path) -> None:
    r = g.open_repo(repo)
    base = git(repo, "rev-parse", "HEAD")
    tips = []
    for name in ("a", "b", "c"):
        git(repo, "checkout", "-q", "-b", name, base)
        tips.append(commit_file(repo, f"{name}.txt", f"{name}\n"))
    git(repo, "checkout", "-q", "main")
    status_before = status.status_porcelain(repo)

    merged = merge_tree.merge_commits(r, ["a", "b", "c"], message="merge abc", author=AUTHOR)

    assert git(repo, "rev-parse", f"{merged}^@").split() == tips
    assert git(repo, "ls-tree", "--name-only", merged).split() == [
        "README.md",
        "a.txt",
        "b.txt",
        "c.txt",
    ]
    assert git(repo, "log", "-1", "--format=%an <%ae>|%cn <%ce>|%s", merged) == (
        f"{AUTHOR}|{AUTHOR}|merge abc"
    )
    # Nothing checked out changed.
    assert git(repo, "rev-parse", "HEAD") == base
    assert status.status_porcelain(repo) == status_before == ""
    assert merge_tree.merge_commits(r, ["a"], message="m", author=AUTHOR) == tips[0]


def test_merge_commits_conflict_names_files(repo: Path) -> None:
    r = g.open_repo(repo)
    base = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "-b", "x", base)
    commit_file(repo, "README.md", "from x\n")
    commit_file(repo, "src/shared.py", "x = 1\n")
    git(repo, "checkout", "-q", "-b", "y", base)
    commit_file(repo, "README.md", "from y\n")
    commit_file(repo, "src/shared.py", "y = 2\n")
    commit_file(repo, "y_only.txt", "fine\n")
    git(repo, "checkout", "-q", "main")

    with pytest.raises(merge_tree.MergeConflictError) as info:
        merge_tree.merge_commits(r, ["x", "y"], message="m", author=AUTHOR)
    assert sorted(info.value.files) == ["README.md", "src/shared.py"]
    assert "README.md" in str(info.value)
    assert status.status_porcelain(repo) == ""


def test_merge_commits_bad_input(repo: Path) -> None:
    r = g.open_repo(repo)
    with pytest.raises(BadInputError, match="Name <email>"):
        merge_tree.merge_commits(r, ["main", "main"], message="m", author="nobody")
    with pytest.raises(GitError, match="is not a commit"):
        merge_tree.merge_commits(r, ["main", "nope"], message="m", author=AUTHOR)


def test_checkpoint_commits_edits_and_untracked(repo: Path) -> None:
    (repo / ".gitignore").write_text("*.log\nbuild/\n")
    git(repo, "add", ".gitignore")
    git(repo, "commit", "-q", "-m", "ignore")
    before = git(repo, "rev-parse", "HEAD")
    (repo / "README.md").write_text("edited\n")
    (repo / "new dir").mkdir()
    (repo / "new dir" / "new file.txt").write_text("new\n")
    (repo / "debug.log").write_text("ignored\n")
    (repo / "build").mkdir()
    (repo / "build" / "out.bin").write_text("ignored\n")

    sha = checkpoints.checkpoint(repo, message="swarm: checkpoint", author=AUTHOR)

    assert sha == git(repo, "rev-parse", "HEAD")
    assert git(repo, "rev-parse", "HEAD^") == before
    changed = git(repo, "diff-tree", "--no-commit-id", "--name-only", "-r", "HEAD").splitlines()
    assert changed == ["README.md", "new dir/new file.txt"]
    assert git(repo, "log", "-1", "--format=%an <%ae>|%cn <%ce>|%s") == (
        f"{AUTHOR}|{AUTHOR}|swarm: checkpoint"
    )
    assert (repo / "debug.log").exists()
    assert status.status_porcelain(repo) == ""
    assert checkpoints.checkpoint(repo, message="again", author=AUTHOR) is None
    assert git(repo, "rev-parse", "HEAD") == sha


@pytest.mark.parametrize("flag", ["--assume-unchanged", "--skip-worktree"])
def test_checkpoint_commits_edits_an_index_flag_hid(repo: Path, flag: str) -> None:
    """`git status` and `add` take such a file as unchanged: the edit was never committed, the
    task "changed nothing", and `swarm clean` removed the edit with its worktree."""
    (repo / "kept.txt").write_text("kept\n")
    git(repo, "add", "kept.txt")
    git(repo, "commit", "-q", "-m", "kept")
    git(repo, "update-index", flag, "README.md", "kept.txt")
    (repo / "README.md").write_text("the agent's edit\n")

    sha = checkpoints.checkpoint(repo, message="swarm: checkpoint", author=AUTHOR)

    assert sha is not None
    assert git(repo, "show", "HEAD:README.md") == "the agent's edit"
    assert git(repo, "show", "HEAD:kept.txt") == "kept"
    assert git_index.unhide_edits(repo) == []  # the flags are gone


@pytest.mark.parametrize(
    ("version", "object_format"),
    [("2", "sha1"), ("3", "sha1"), ("4", "sha1"), ("3", "sha256"), ("split", "sha1")],
)
def test_the_index_flags_read_without_git_are_gits(
    tmp_path: Path, version: str, object_format: str
) -> None:
    """Told from the index file itself for versions 2 and 3 (either object id), by git for 4
    and a split index (whose entries are in another file)."""
    path = tmp_path / "r"
    path.mkdir()
    git(path, "init", "-q", f"--object-format={object_format}")
    for name in ["a.txt", "sub/b c.txt", "\u00e9t\u00e9.txt", "unlink.c", "z/last"]:
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(name)
    git(path, "add", "-A")
    # A name longer than an entry's length field holds (no file needed in the index).
    long = "/".join(["d" * 200] * 25)
    blob = git(path, "hash-object", "-w", "a.txt")
    git(path, "update-index", "--add", "--cacheinfo", f"100644,{blob},{long}")
    git(path, "update-index", "--assume-unchanged", "sub/b c.txt", long)
    git(path, "update-index", "--skip-worktree", "\u00e9t\u00e9.txt", "sub/b c.txt")
    if version == "split":
        git(path, "update-index", "--split-index")
    else:
        git(path, "update-index", f"--index-version={version}")
    index = path / ".git" / "index"
    wanted = [
        ("sub/b c.txt", "assume"),
        ("sub/b c.txt", "skip"),
        (long, "assume"),
        ("\u00e9t\u00e9.txt", "skip"),
    ]
    read = git_index._flagged_entries(index)
    known = version in {"2", "3"}
    assert read == (sorted(wanted, key=lambda e: e[0].encode()) if known else None)
    assert sorted(git_index._flagged_by_git(path)) == sorted(wanted)
    assert git_index.unhide_edits(path) == sorted({"sub/b c.txt", long, "\u00e9t\u00e9.txt"})
    assert git_index._flagged_by_git(path) == []


def test_paths_git_refuses_are_left_out_and_named_and_the_rest_is_committed(repo: Path) -> None:
    """`.GIT/x` (or `git~1`, an NTFS short name of `.git`) stopped the whole `add`: none of
    the agent's other edits were committed."""
    (repo / "README.md").write_text("edited\n")
    (repo / "new.txt").write_text("new\n")
    for bad in (".GIT/x", "GIT~1/y"):
        (repo / bad).parent.mkdir()
        (repo / bad).write_text("refused\n")

    with pytest.raises(checkpoints.RefusedPathsError) as caught:
        checkpoints.checkpoint(repo, message="swarm: checkpoint", author=AUTHOR)

    assert caught.value.paths == (".GIT/x", "GIT~1/y")
    assert caught.value.head == git(repo, "rev-parse", "HEAD")
    assert "wrote paths git refuses to store" in str(caught.value)
    assert git(repo, "show", "HEAD:README.md") == "edited"
    assert git(repo, "show", "HEAD:new.txt") == "new"
    assert (repo / ".GIT" / "x").read_text() == "refused\n"  # they stay


def test_a_symlink_to_another_checkout_is_committed_as_a_link(repo: Path, tmp_path: Path) -> None:
    """It was taken for a repository the agent made inside its worktree: the task failed."""
    other = make_repo(tmp_path / "other")
    (repo / "other-link").symlink_to(other)
    (repo / "new.txt").write_text("new\n")

    checkpoints.checkpoint(repo, message="swarm: checkpoint", author=AUTHOR)

    assert git(repo, "ls-tree", "HEAD", "other-link").startswith("120000 blob ")
    assert git(repo, "show", "HEAD:other-link") == str(other)


def test_checkpoint_leaves_agent_droppings_out_without_touching_gitignore(repo: Path) -> None:
    (repo / ".gitignore").write_text("*.log\n")
    git(repo, "add", ".gitignore")
    git(repo, "commit", "-q", "-m", "ignore logs")
    (repo / ".aider.chat.history.md").write_text("# the prompt\n")
    cache = repo / ".aider.tags.cache.v4"
    cache.mkdir()
    (cache / "cache.db").write_bytes(b"\0" * 64)
    (repo / "sub").mkdir()
    (repo / "sub" / ".aider.chat.history.md").write_text("a file of the project\n")
    (repo / "hello.txt").write_text("hello\n")

    checkpoints.checkpoint(
        repo,
        message="m",
        author=AUTHOR,
        droppings=(".aider.chat.history.md", ".aider.tags.cache.v*/**"),
    )

    tree = git(repo, "ls-tree", "-r", "--name-only", "HEAD").splitlines()
    assert tree == [".gitignore", "README.md", "hello.txt", "sub/.aider.chat.history.md"]
    assert (repo / ".gitignore").read_text() == "*.log\n"
    assert (repo / ".aider.chat.history.md").exists()  # still there for the agent
    assert (cache / "cache.db").exists()


def test_checkpoint_skips_hooks(repo: Path) -> None:
    hook = repo / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\nexit 1\n")
    hook.chmod(0o755)
    (repo / "f.txt").write_text("x\n")
    assert checkpoints.checkpoint(repo, message="m", author=AUTHOR) is not None


def test_checkpoint_never_concludes_a_merge_with_its_conflicts(repo: Path) -> None:
    git(repo, "checkout", "-q", "-b", "theirs")
    (repo / "README.md").write_text("theirs\n")
    git(repo, "commit", "-qam", "theirs")
    git(repo, "checkout", "-q", "main")
    (repo / "README.md").write_text("ours\n")
    git(repo, "commit", "-qam", "ours")
    head = git(repo, "rev-parse", "HEAD")
    subprocess.run(["git", "merge", "-q", "theirs"], cwd=repo, capture_output=True, check=False)
    assert "<<<<<<<" in (repo / "README.md").read_text()
    with pytest.raises(GitError, match="a merge with unresolved conflicts is in progress"):
        checkpoints.checkpoint(repo, message="m", author=AUTHOR)
    assert git(repo, "rev-parse", "HEAD") == head
    assert git(repo, "ls-files", "-u")  # still unresolved, as the user or agent left it


@pytest.mark.parametrize("committed", [False, True], ids=["unborn", "with-a-commit"])
def test_a_repository_an_agent_made_is_left_out_of_the_checkpoint_and_named(
    repo: Path, committed: bool
) -> None:
    web = repo / "web"
    web.mkdir()
    git(web, "init", "-q")
    (web / "app.js").write_text("app\n")
    if committed:
        git(web, "add", "app.js")
        git(web, "-c", "user.name=a", "-c", "user.email=a@b", "commit", "-qm", "app")
    (repo / "top.txt").write_text("top\n")
    with pytest.raises(checkpoints.EmbeddedRepositoryError) as info:
        checkpoints.checkpoint(repo, message="m", author=AUTHOR)
    assert info.value.paths == ("web",)
    assert info.value.head == git(repo, "rev-parse", "HEAD")
    # The rest is committed; no gitlink naming a commit only web/ has.
    assert git(repo, "ls-tree", "-r", "--name-only", "HEAD").split() == ["README.md", "top.txt"]
    assert (web / "app.js").read_text() == "app\n"


@pytest.mark.parametrize("index", [[], ["--index-version", "4"], ["--split-index"]],
                         ids=["v2", "v4", "split"])  # fmt: skip
def test_a_repository_the_agent_staged_itself_is_never_looked_into(
    repo: Path, tmp_path: Path, index: list[str]
) -> None:
    web = repo / "web"
    web.mkdir()
    git(web, "init", "-q")
    (web / "app.js").write_text("app\n")
    git(web, "add", "app.js")
    git(web, "-c", "user.name=a", "-c", "user.email=a@b", "commit", "-qm", "app")
    marker = tmp_path / "ran"
    git(web, "config", "core.fsmonitor", f"touch {marker} #")  # run by git started in web/
    git(repo, "-c", "core.fsmonitor=false", "add", "web")  # a gitlink in the index
    if index:
        git(repo, "update-index", *index)
    (web / "app.js").write_text("changed\n")
    with pytest.raises(checkpoints.EmbeddedRepositoryError) as info:
        checkpoints.checkpoint(repo, message="m", author=AUTHOR)
    assert info.value.paths == ("web",)
    assert not marker.exists()


def test_checkpoint_deletion(repo: Path) -> None:
    (repo / "README.md").unlink()
    assert checkpoints.checkpoint(repo, message="rm", author=AUTHOR) is not None
    assert git(repo, "ls-files") == ""


def test_checkpoint_commits_what_the_agent_staged_itself(repo: Path, tmp_path: Path) -> None:
    # `add --all` then stages nothing new: the checkpoint still finds the index ahead of HEAD.
    (repo / "staged.txt").write_text("staged by the agent\n")
    git(repo, "add", "staged.txt")
    sha = checkpoints.checkpoint(repo, message="m", author=AUTHOR)
    assert sha is not None
    assert git(repo, "ls-tree", "--name-only", "HEAD", "staged.txt") == "staged.txt"
    # In a linked worktree (HEAD read from its admin dir and the loose branch ref), and with
    # the branch packed, the checkpoint names the commit git has.
    wt = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", "-b", "side", str(wt))
    git(repo, "pack-refs", "--all")
    assert gitfiles.head_in(wt) == git(wt, "rev-parse", "HEAD")
    (wt / "side.txt").write_text("side\n")
    tip = checkpoints.checkpoint(wt, message="side", author=AUTHOR)
    assert tip == git(wt, "rev-parse", "HEAD") == git(repo, "rev-parse", "refs/heads/side")
    git(wt, "checkout", "-q", "--detach")
    assert gitfiles.head_in(wt) == tip


def test_checkpoint_never_concludes_a_merge_that_changes_nothing(repo: Path) -> None:
    base = git(repo, "rev-parse", "HEAD")
    commit_file(repo, "same.txt", "same\n")
    git(repo, "checkout", "-q", "-b", "twin", base)
    commit_file(repo, "same.txt", "same\n", "twin")  # another commit, the very same tree
    git(repo, "checkout", "-q", "main")
    head = git(repo, "rev-parse", "HEAD")
    git(repo, "merge", "-q", "--no-ff", "--no-commit", "twin")
    assert (repo / ".git" / "MERGE_HEAD").exists()
    git(repo, "rm", "-q", "--cached", "README.md")  # `add --all` stages it back: index == HEAD
    assert checkpoints.checkpoint(repo, message="m", author=AUTHOR) is None
    assert git(repo, "rev-parse", "HEAD") == head
    # With a change it is committed, as the merge the agent started.
    (repo / "more.txt").write_text("more\n")
    sha = checkpoints.checkpoint(repo, message="m", author=AUTHOR)
    assert sha is not None
    assert len(git(repo, "rev-list", "--parents", "-1", "HEAD").split()) == 3


def test_checkpoint_that_cannot_commit_raises(repo: Path) -> None:
    (repo / "f.txt").write_text("x\n")
    (repo / ".git" / "index.lock").write_text("")  # another git holds the index
    with pytest.raises(GitError, match=r"index\.lock': File exists"):
        checkpoints.checkpoint(repo, message="m", author=AUTHOR)
    assert git(repo, "status", "--porcelain") == "?? f.txt"  # nothing staged, nothing lost


def test_diff_stat(repo: Path) -> None:
    r = g.open_repo(repo)
    base = commit_file(repo, "keep.txt", "".join(f"line {i}\n" for i in range(20)))
    (repo / "keep.txt").write_text(
        "".join(f"line {i}\n" for i in range(20) if i not in (3, 4, 5)) + "tail\n"
    )
    (repo / "new.txt").write_text("a\nb\n")
    (repo / "image.bin").write_bytes(bytes(range(256)) * 4)
    (repo / "README.md").unlink()
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "edit")
    stat = diffs.diff_stat(r, base, "HEAD")
    # keep.txt +1 -3, new.txt +2, image.bin binary, README.md -1
    assert stat == diffs.DiffStat(files=4, insertions=3, deletions=4)
    assert diffs.diff_stat(r, "HEAD", "HEAD") == diffs.DiffStat(files=0, insertions=0, deletions=0)


def test_diff_stat_content_tells_edits_that_keep_the_counts(repo: Path) -> None:
    # An agent that rewrites the line it wrote, or a binary file again, changed the work
    # (progress, for a rate-limited attempt's backoff) though the counts stay the same.
    r = g.open_repo(repo)
    base = g.rev_parse(r, "HEAD")
    assert base is not None
    stats = []
    for text, data in (("one\n", b"\0\1"), ("two\n", b"\0\2"), ("two\n", b"\0\2")):
        (repo / "line.txt").write_text(text)
        (repo / "image.bin").write_bytes(data)
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "--allow-empty", "-m", "edit")
        stats.append(diffs.diff_stat(r, base, "HEAD"))
    assert stats[0] == stats[1] == diffs.DiffStat(files=2, insertions=1, deletions=0)
    assert stats[0].content != stats[1].content
    assert stats[1].content == stats[2].content  # an attempt that changed nothing
    git(repo, "mv", "line.txt", "moved.txt")  # a rename of its own file: the same counts
    git(repo, "commit", "-q", "-m", "rename")
    renamed = diffs.diff_stat(r, base, "HEAD")
    assert renamed == stats[2]
    assert renamed.content != stats[2].content


def test_diff_stat_counts_a_rename_once(repo: Path) -> None:
    r = g.open_repo(repo)
    base = commit_file(repo, "old name.txt", "".join(f"line {i}\n" for i in range(30)))
    git(repo, "mv", "old name.txt", "new name.txt")
    with (repo / "new name.txt").open("a") as f:
        f.write("one more\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "rename")
    assert diffs.diff_stat(r, base, "HEAD") == diffs.DiffStat(files=1, insertions=1, deletions=0)


def test_over_size_finds_big_files_a_branch_renamed_or_changed_not_deleted_ones(
    repo: Path,
) -> None:
    r = g.open_repo(repo)
    blob = bytes(range(256)) * 8  # 2 KiB, binary
    (repo / "gone.bin").write_bytes(blob)
    (repo / "old.bin").write_bytes(blob + b"\1")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "binaries")
    base = g.rev_parse(r, "HEAD")
    assert base is not None
    git(repo, "mv", "old.bin", "new name.bin")  # a rename: its new name, its new content
    (repo / "gone.bin").unlink()
    (repo / "notes.txt").write_text("note\n" * 500)  # 2.4 KiB of text
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "edit")
    stat = diffs.diff_stat(r, base, "HEAD")
    assert diffs.over_size(r, stat, 2048) == [("new name.bin", 2049), ("notes.txt", 2500)]
    assert diffs.over_size(r, stat, 2049) == [("notes.txt", 2500)]
    assert diffs.over_size(r, stat, DEFAULT_MAX_FILE) == []
    # A `diff` attribute makes a file text to the diff however big: each one is sized.
    (repo / ".gitattributes").write_text("*.bin diff\n")
    (repo / "huge.bin").write_bytes(b"x" * ((16 << 20) + 1))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "huge")
    stat = diffs.diff_stat(r, base, "HEAD")
    assert diffs.over_size(r, stat, 16 << 20) == [("huge.bin", (16 << 20) + 1)]


def test_over_size_reads_loose_blobs_itself_and_asks_git_for_the_rest(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = g.open_repo(repo)
    base = g.rev_parse(r, "HEAD")
    assert base is not None
    (repo / "notes.txt").write_text("note\n" * 600)  # 3000 bytes, a loose blob
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "notes")
    stat = diffs.diff_stat(r, base, "HEAD")
    blob = git(repo, "rev-parse", "HEAD:notes.txt")
    loose = repo / ".git" / "objects" / blob[:2] / blob[2:]
    assert loose.is_file()
    asked = tmp_path / "asked.log"
    git_first_on_path(tmp_path, monkeypatch, lambda real: (
        GIT_SUBCOMMAND + f'echo "$sub" >> {asked}\nexec {real} "$@"\n'
    ))  # fmt: skip

    def cat_files() -> int:
        return asked.read_text().split().count("cat-file") if asked.exists() else 0

    # The checkpoint's own new blob: read and hashed, no git process.
    assert diffs.over_size(r, stat, 2048) == [("notes.txt", 3000)]
    assert cat_files() == 0
    # Packed, not loose: git sizes it.
    git(repo, "repack", "-a", "-d", "-q")
    assert not loose.exists()
    assert diffs.over_size(r, stat, 2048) == [("notes.txt", 3000)]
    assert cat_files() == 1
    # A loose file under its name that is not it (a small header): not believed, git asked.
    loose.parent.mkdir(exist_ok=True)
    loose.write_bytes(zlib.compress(b"blob 1\0x"))
    assert diffs.over_size(r, stat, 2048) == [("notes.txt", 3000)]
    assert cat_files() == 2


def test_status_porcelain_raw(repo: Path) -> None:
    (repo / "a b").mkdir()
    (repo / "a b" / "c.txt").write_text("x")
    (repo / "README.md").write_text("changed\n")
    assert status.status_porcelain(repo) == " M README.md\0?? a b/c.txt\0"


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_version_regex_accepts_vendor_suffixes() -> None:
    for text in (
        "git version 2.39.5",
        "git version 2.39.3 (Apple Git-146)",
        "git version 2.45.1.windows.1",
    ):
        assert g._VERSION_RE.match(text)
    out = subprocess.run(["git", "--version"], capture_output=True, text=True, check=True).stdout
    assert g._VERSION_RE.match(out)


def _lock_taken_elsewhere(r: g.Repo) -> bool:
    """Whether another process can take *r*'s repository lock now (taken and let go)."""
    probe = (
        "import filelock, sys\n"
        "try:\n"
        "    filelock.FileLock(sys.argv[1], timeout=0).acquire()\n"
        "except filelock.Timeout:\n"
        "    sys.exit(3)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe, str(r.state_dir / "repo.lock")], check=False)
    assert out.returncode in {0, 3}
    return out.returncode == 0


def test_repo_lock_excludes_threads_and_other_processes(repo: Path) -> None:
    r = g.open_repo(repo)
    order: list[str] = []
    entered = threading.Event()

    def second() -> None:
        entered.set()
        with g.repo_lock(r):
            order.append("thread")

    with g.repo_lock(r):
        worker = threading.Thread(target=second)
        worker.start()
        entered.wait(5)
        # another process cannot take it while a thread holds it
        assert not _lock_taken_elsewhere(r)
        order.append("main")
    worker.join(10)
    assert order == ["main", "thread"]


def test_repo_lock_taken_again_by_its_holder_is_held_until_the_outer_hold_ends(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A guard's look at the worktrees inside `swarm doctor`'s fixes takes the lock its thread
    # holds: a second file lock of the process waited on the first for ever.
    monkeypatch.setattr(g, "REPO_LOCK_QUIET", 0.05)  # a wait on itself fails, not hangs
    monkeypatch.setattr(g, "REPO_LOCK_WAIT", 0.2)
    r = g.open_repo(repo)
    order: list[str] = []
    waiting = threading.Event()

    def other() -> None:
        waiting.set()
        with g.repo_lock(r):
            order.append("thread")

    worker = threading.Thread(target=other)
    with g.repo_lock(r):
        with g.repo_lock(r):  # the same thread: at once
            worker.start()
            waiting.wait(5)
            with g.repo_lock(r):
                order.append("deeper")
            assert not _lock_taken_elsewhere(r)
            order.append("inner")
        # The inner holds let go, the outer still holds: for other threads and processes.
        assert not _lock_taken_elsewhere(r)
        order.append("outer")
    worker.join(10)
    assert order == ["deeper", "inner", "outer", "thread"]
    assert _lock_taken_elsewhere(r)  # all let go


def test_write_config_file_reads_back_through_git(tmp_path: Path) -> None:
    path = tmp_path / "gitconfig"
    values = {
        "user.name": 'Ann "the tester" \\ O\'Neil ; # not a comment',
        "user.email": "ann@example.com",
        "core.excludesFile": "/home/ann/.gitignore global",
        "url.https://example.com/.insteadOf": "ex:",
    }
    gitconfig.write_config_file(path, values)
    for key, value in values.items():
        assert git(tmp_path, "config", "--file", str(path), "--get", key) == value
    with pytest.raises(ValueError, match="not a git config key"):
        gitconfig.write_config_file(path, {"nodot": "x"})


def test_swarms_errors_cross_a_process_boundary_whole(tmp_path: Path) -> None:
    # A Ray node's git failing reaches the coordinator pickled: each comes back as it was.
    for error in (
        CommandError(["git", "push", "origin"], 1, "remote: refused\n"),
        EmbeddedRepositoryError(tmp_path, ["sub"], "a" * 40),
        MergeConflictError("conflict in a.txt", files=["a.txt"]),
    ):
        back = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
        assert (type(back), str(back), vars(back)) == (type(error), str(error), vars(error))


def test_config_values_answer_as_git_config_get_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The run reads your identity and ignore file in one git process: the same answers as
    # `git config --get` (the last value set wins, included files count, `~` expands).
    repo = make_repo(tmp_path / "r")
    monkeypatch.delenv("GIT_AUTHOR_NAME")  # git config's answer alone (they would beat it)
    monkeypatch.delenv("GIT_AUTHOR_EMAIL")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    (home / ".gitconfig").write_text("[user]\n\tname = Global Name\n\temail = g@example.com\n")
    included = tmp_path / "more.gitconfig"
    included.write_text("[user]\n\tname = Included Name\n[core]\n\texcludesFile = ~/ignore-me\n")
    git(repo, "config", "include.path", str(included))
    keys = {"user.name", "user.email", "core.excludesfile"}
    found = gitconfig.config_values(repo, keys)
    for key in keys:
        expected = git(repo, "config", "--get", key)
        assert found[key] == expected
    assert found["user.name"] == "Included Name"
    path = gitconfig.config_path(repo, "core.excludesFile", found["core.excludesfile"])
    assert path == git(repo, "config", "--path", "--get", "core.excludesFile")
    assert path == str(home / "ignore-me")
    assert gitconfig.user_identity(repo) == "Included Name <g@example.com>"
    git(repo, "config", "--unset", "include.path")
    git(repo, "config", "user.email", "")
    assert gitconfig.config_values(repo, keys) == {"user.name": "Global Name", "user.email": ""}
    assert gitconfig.user_identity(repo) is None


def test_contained_answers_what_a_tip_holds_and_asks_git_again_only_what_it_never_told(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `swarm watch` asks every second which recorded merges their target still holds.
    r = g.open_repo(repo)
    first = commit_file(repo, "a.txt", "a\n")
    second = commit_file(repo, "b.txt", "b\n")
    git(repo, "switch", "-q", "-c", "side", first)
    aside = commit_file(repo, "c.txt", "c\n")
    missing = "0123456789abcdef" * 2 + "01234567"
    assert git_branches.contained(r, second, [first, second]) == {first, second}
    assert git_branches.contained(r, second, [first, aside, missing]) == {first}
    assert git_branches.contained(r, aside, [first, second]) == {first}
    traced = repo.parent / "trace"
    monkeypatch.setenv("GIT_TRACE", str(traced))
    assert git_branches.contained(r, second, [first, aside]) == {first}  # both told before
    assert not traced.exists()
    assert git_branches.contained(r, second, [missing]) == set()  # git failed on it: asked again
    assert traced.exists()


def test_a_repository_lock_held_by_another_program_is_said_then_given_up_on(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # An agent outside --sandbox (or a program of yours) holding .git/swarm/repo.lock made
    # `swarm doctor`, `clean` and `run` wait for ever, saying nothing.
    r = g.open_repo(repo)
    r.state_dir.mkdir(parents=True, exist_ok=True)
    path = r.state_dir / "repo.lock"
    held = tmp_path / "held"
    holder = subprocess.Popen(  # its group: the sleep holds the lock it inherits
        ["flock", "-x", str(path), "sh", "-c", f"touch {held}; exec sleep 60"],
        start_new_session=True,
    )
    try:
        while not held.exists():
            assert holder.poll() is None
            time.sleep(0.01)
        monkeypatch.setattr(g, "REPO_LOCK_QUIET", 0.05)
        monkeypatch.setattr(g, "REPO_LOCK_WAIT", 0.2)
        with (
            pytest.raises(SwarmError, match=r"repo\.lock has been held for 0 minutes"),
            g.repo_lock(r),
        ):
            pass
        assert capsys.readouterr().err == (
            f"swarm: waiting for {path} (another swarm command is changing worktrees or "
            "branches, or some program holds it)\n"
        )
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    with g.repo_lock(r):  # let go: taken at once
        pass


def test_a_checkpoint_goes_past_a_stale_lock_another_task_planted_on_its_branch(
    repo: Path, tmp_path: Path
) -> None:
    # Task a planted refs/heads/swarm/b.lock: b's checkpoint failed and b was failed for it.
    worktree = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", "-b", "swarm/b", str(worktree))
    lock = repo / ".git" / "refs" / "heads" / "swarm" / "b.lock"
    lock.write_text("")
    old = lock.stat().st_mtime - 60
    os.utime(lock, (old, old))
    (worktree / "work.txt").write_text("b's work\n")
    tip = checkpoints.checkpoint(worktree, message="swarm: checkpoint b", author="A <a@b>")
    assert tip is not None
    assert git(repo, "show", "swarm/b:work.txt") == "b's work"
    assert not lock.exists()


def test_only_a_stale_lock_in_the_repository_git_names_is_removed(
    repo: Path, tmp_path: Path
) -> None:
    def said(lock: Path) -> str:
        return f"fatal: Unable to create '{lock}': File exists.\n"

    def aged(lock: Path) -> Path:
        lock.write_text("")
        old = lock.stat().st_mtime - 60
        os.utime(lock, (old, old))
        return lock

    fresh = repo / ".git" / "refs" / "heads" / "fresh.lock"
    fresh.write_text("")  # a git writing it right now
    outside = aged(tmp_path / "outside.lock")  # named by an agent's message, not git's dir
    plain = tmp_path / "plain"
    plain.mkdir()
    for cwd, lock in ((repo, fresh), (repo, outside), (repo, repo / ".git" / "gone.lock")):
        assert not gitfiles.removed_stale_lock(cwd, said(lock))
    assert not gitfiles.removed_stale_lock(plain, said(aged(plain / "x.lock")))  # no repository
    assert fresh.exists()
    assert outside.exists()
    assert (plain / "x.lock").exists()
    stale = aged(repo / ".git" / "index.lock")
    assert gitfiles.removed_stale_lock(repo, said(stale))
    assert not stale.exists()


def test_a_worktree_is_put_back_on_its_branch_past_a_stale_head_lock(
    repo: Path, tmp_path: Path
) -> None:
    # A HEAD.lock a killed git left blocked the put-back for good: every stop, retry and
    # removal for room after it failed there.
    worktree = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", "-b", "swarm/a", str(worktree))
    git(worktree, "checkout", "-q", "--detach")
    lock = repo / ".git" / "worktrees" / "wt" / "HEAD.lock"
    lock.write_text("")
    old = lock.stat().st_mtime - 60  # its git killed a minute ago
    os.utime(lock, (old, old))
    tip = git(worktree, "rev-parse", "HEAD")
    assert gitfiles.put_back_on(worktree, "swarm/a") == f"a detached HEAD at {tip[:12]}"
    assert git(worktree, "symbolic-ref", "HEAD") == "refs/heads/swarm/a"
    assert not lock.exists()


def test_a_broken_ref_file_is_a_regular_file_of_garbage(repo: Path) -> None:
    heads = repo / ".git" / "refs" / "heads"
    (heads / "garbage").write_bytes(b"\0\0 not a ref\n")
    (heads / "linked").symlink_to("main")
    (heads / "dir").mkdir()
    (heads / "dir" / "x").write_text(git(repo, "rev-parse", "HEAD") + "\n")
    assert gitfiles.broken_ref_file(heads / "garbage")
    for path in ("main", "linked", "dir", "dir/x", "missing"):
        assert not gitfiles.broken_ref_file(heads / path), path


def test_no_operation_is_told_under_way_where_no_checkout_is(tmp_path: Path) -> None:
    # Nothing to tell: no operation to name, and a commit is taken as landing inside one.
    assert gitfiles.operation_in_progress(tmp_path) is None
    assert gitfiles.mid_operation(tmp_path)


def test_only_a_branch_deleted_at_a_commit_still_there_is_put_back(repo: Path) -> None:
    tip = git(repo, "rev-parse", "HEAD")
    git(repo, "update-ref", "-d", "refs/heads/main")
    assert gitfiles.restore_deleted_branch(repo) == tip
    assert git(repo, "rev-parse", "refs/heads/main") == tip
    # HEAD at a ref outside refs/heads: no branch of the worktree's to put back.
    git(repo, "symbolic-ref", "HEAD", "refs/tags/none")
    assert gitfiles.restore_deleted_branch(repo) is None
    assert git(repo, "tag") == ""
    # The commit HEAD's reflog names is gone too (an agent's gc): nothing to put back at.
    git(repo, "symbolic-ref", "HEAD", "refs/heads/lost")
    logged = repo / ".git" / "logs" / "HEAD"
    with logged.open("a") as log:
        log.write(f"{tip} {'1' * 40} A <a@b> 1 +0000\tcommit: gone\n")
    assert gitfiles.restore_deleted_branch(repo) is None
    logged.unlink()  # no reflog (core.logAllRefUpdates off): nothing to go by
    assert gitfiles.restore_deleted_branch(repo) is None
    assert git(repo, "for-each-ref", "--format=%(refname)", "refs/heads/") == "refs/heads/main"


def test_a_branch_of_no_commit_yet_is_no_deleted_branch_of_the_task(repo: Path) -> None:
    # `git checkout --orphan x` was taken for the task's branch deleted: x made at its tip.
    tip = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "--orphan", "x")
    assert gitfiles.restore_deleted_branch(repo, "main") is None
    assert git(repo, "for-each-ref", "--format=%(refname)", "refs/heads/") == "refs/heads/main"
    assert gitfiles.put_back_on(repo, "main") == "x"  # its files and index stay
    assert git(repo, "rev-parse", "HEAD") == tip
    assert git(repo, "status", "--porcelain") == ""
    assert gitfiles.put_back_on(repo, "main") is None
    git(repo, "checkout", "-q", "--detach")
    assert gitfiles.put_back_on(repo, "main") == f"a detached HEAD at {tip[:12]}"
    git(repo, "update-ref", "-d", "refs/heads/main")  # the task's own branch deleted: put back
    assert gitfiles.restore_deleted_branch(repo, "main") == tip
