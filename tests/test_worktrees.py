from __future__ import annotations

import errno
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import worktree_swarm
from tests.conftest import git, git_first_on_path, make_repo
from tests.test_run import wait_for
from worktree_swarm.core import paths
from worktree_swarm.core.errors import BadInputError, CommandError, GitError, SwarmError
from worktree_swarm.core.run_settings import CopyMode
from worktree_swarm.git import branches as git_branches
from worktree_swarm.git import checkpoints, local_files, removal, status
from worktree_swarm.git import repo as g
from worktree_swarm.git import worktrees as wt

N = 16
ROUNDS = 5
PACKAGE_ROOT = Path(worktree_swarm.__file__).resolve().parents[1]

CHILD = """
import sys
from pathlib import Path
from worktree_swarm.git.repo import open_repo
from worktree_swarm.git.worktrees import create_worktree
repo_dir, path, branch, start = sys.argv[1:]
repo = open_repo(Path(repo_dir))
sys.stdin.read()  # start gate: all children are released together
create_worktree(repo, path=Path(path), branch=branch, start=start)
"""


@pytest.fixture
def big_repo(tmp_path: Path) -> Path:
    files = {f"pkg{i % 7}/mod{i}.py": f"value = {i}\n" * 20 for i in range(150)}
    files[".gitignore"] = "*.log\n"
    files["run.sh"] = "#!/bin/sh\necho hi\n"
    path = make_repo(tmp_path / "big", files)
    (path / "run.sh").chmod(0o755)
    git(path, "commit", "-q", "-a", "-m", "exec bit")
    (path / "local.log").write_text("ignored file in the user's checkout\n")
    return path


def snapshot(repo: Path) -> tuple[str, str, str]:
    return (
        git(repo, "rev-parse", "HEAD"),
        git(repo, "symbolic-ref", "HEAD"),
        status.status_porcelain(repo),
    )


def assert_worktree_ok(repo: g.Repo, path: Path, branch: str, start: str) -> None:
    assert status.status_porcelain(path) == ""
    assert git(path, "symbolic-ref", "--short", "HEAD") == branch
    assert git(path, "rev-parse", "HEAD") == start
    assert (path / "run.sh").stat().st_mode & 0o111
    assert (path / "pkg3" / "mod3.py").read_text() == "value = 3\n" * 20
    # --no-track: no upstream configured for the branch.
    pattern = rf"^branch\.{re.escape(branch)}\."
    assert g.git(repo.root, "config", "--get-regexp", pattern, check=False) == ""


def test_default_worktree_root(repo: Path) -> None:
    r = g.open_repo(repo)
    assert paths.default_worktree_root(r.root) == repo.resolve().parent / "repo.swarm"


def test_a_submodules_worktrees_go_beside_its_outermost_superproject(tmp_path: Path) -> None:
    """Beside the submodule they were inside the superproject's checkout: untracked files
    there, and its tools (a test runner's discovery, `git add -A`) descended into them."""
    lib, inner = make_repo(tmp_path / "lib"), make_repo(tmp_path / "inner")
    outer = make_repo(tmp_path / "work" / "super")
    allow = ["-c", "protocol.file.allow=always"]
    git(outer, *allow, "submodule", "add", "-q", str(lib), "vendor/lib")
    git(outer / "vendor" / "lib", *allow, "submodule", "add", "-q", str(inner), "deep")
    git(outer / "vendor" / "lib", "commit", "-qam", "deep")
    git(outer, "commit", "-qam", "vendor/lib")
    submodule = g.open_repo(outer / "vendor" / "lib").root
    assert paths.default_worktree_root(submodule) == tmp_path / "work" / "super.vendor.lib.swarm"
    nested = g.open_repo(submodule / "deep").root
    assert paths.default_worktree_root(nested) == tmp_path / "work" / "super.vendor.lib.deep.swarm"
    manifest = tmp_path / "tasks.toml"
    manifest.write_text('[[task]]\nid = "a"\nprompt = "p"\nagent = ["touch", "new.txt"]\n')
    done = subprocess.run(
        [sys.executable, "-m", "worktree_swarm.cli", "run", str(manifest)],
        cwd=submodule, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "work" / "super.vendor.lib.swarm" / "a" / "new.txt").is_file()
    assert git(outer, "status", "--porcelain", "--ignore-submodules=none") == ""


def test_a_submodule_with_its_own_git_directory_is_told_by_gitmodules(tmp_path: Path) -> None:
    """One cloned in place and then added keeps its `.git` directory: no `.git/modules/` path to
    tell it by, so the enclosing checkout's `.gitmodules` does; a repository merely inside
    another checkout (a home directory kept in git) keeps its root beside itself."""
    lib = make_repo(tmp_path / "lib")
    outer = make_repo(tmp_path / "work" / "super")
    git(tmp_path, "clone", "-q", str(lib), str(outer / "vendor" / "lib"))
    git(outer, "submodule", "add", "-q", str(lib), "vendor/lib")
    git(outer, "commit", "-qm", "vendor/lib")
    assert (outer / "vendor" / "lib" / ".git").is_dir()
    submodule = g.open_repo(outer / "vendor" / "lib").root
    assert paths.default_worktree_root(submodule) == tmp_path / "work" / "super.vendor.lib.swarm"
    loose = make_repo(outer / "scratch" / "mine")
    assert paths.default_worktree_root(loose) == outer / "scratch" / "mine.swarm"


def test_create_list_remove(big_repo: Path) -> None:
    r = g.open_repo(big_repo)
    before = snapshot(big_repo)
    start = g.head_commit(r)
    path = paths.default_worktree_root(r.root) / "t1"
    wt.create_worktree(r, path=path, branch="swarm/t1", start="main")
    assert_worktree_ok(r, path, "swarm/t1", start)
    assert not (path / "local.log").exists()

    infos = wt.list_worktrees(r)
    assert [i.is_main for i in infos] == [True, False]
    assert infos[0].path == r.root
    assert infos[0].branch == "main"
    assert infos[1] == wt.WorktreeInfo(
        path=path, head=start, branch="swarm/t1", locked=None, prunable=None, is_main=False
    )
    git(big_repo, "worktree", "lock", "--reason", "agent busy", str(path))
    assert wt.list_worktrees(r)[1].locked == "agent busy"
    git(big_repo, "worktree", "unlock", str(path))

    (path / "scratch.txt").write_text("untracked\n")
    with pytest.raises(CommandError):
        removal.remove_worktree(r, path)
    assert path.exists()
    removal.remove_worktree(r, path, force=True)
    assert not path.exists()
    assert len(wt.list_worktrees(r)) == 1
    assert git_branches.branch_exists(r, "swarm/t1")
    removal.delete_branch(r, "swarm/t1")
    assert not git_branches.branch_exists(r, "swarm/t1")
    assert snapshot(big_repo) == before


@pytest.mark.parametrize("swarm_registers", [True, False])
def test_a_directory_made_by_someone_else_while_swarm_registers_is_never_removed(
    repo: Path, monkeypatch: pytest.MonkeyPatch, swarm_registers: bool
) -> None:
    # Seen free under the lock, then made by another program before swarm made it: the
    # clean-up of the failed creation removed that program's directory with its files.
    r = g.open_repo(repo)
    path = paths.default_worktree_root(r.root) / "t1"
    real = wt._register

    def someone_else_first(repo_: g.Repo, path_: Path, branch: str) -> bool:
        path_.mkdir(parents=True)
        (path_ / "theirs.txt").write_text("not swarm's\n")
        return real(repo_, path_, branch) if swarm_registers else False  # False: git adds it

    monkeypatch.setattr(wt, "_register", someone_else_first)
    with pytest.raises(BadInputError, match="t1"):
        wt.create_worktree(r, path=path, branch="swarm/t1", start="main")
    assert (path / "theirs.txt").read_text() == "not swarm's\n"
    assert not git_branches.branch_exists(r, "swarm/t1")
    assert not (r.common_dir / "worktrees").exists() or not any(
        (r.common_dir / "worktrees").iterdir()
    )


def test_delete_unmerged_branch_needs_force(repo: Path, tmp_path: Path) -> None:
    r = g.open_repo(repo)
    path = tmp_path / "w"
    wt.create_worktree(r, path=path, branch="swarm/x", start="HEAD")
    (path / "new.txt").write_text("work\n")
    assert checkpoints.checkpoint(path, message="work", author="A <a@b.c>") is not None
    removal.remove_worktree(r, path)
    with pytest.raises(CommandError, match="not fully merged"):
        removal.delete_branch(r, "swarm/x")
    removal.delete_branch(r, "swarm/x", force=True)
    assert not git_branches.branch_exists(r, "swarm/x")


def test_prune_and_remove_missing_directory(repo: Path, tmp_path: Path) -> None:
    r = g.open_repo(repo)
    for name in ("a", "b"):
        wt.create_worktree(r, path=tmp_path / name, branch=f"swarm/{name}", start="HEAD")
    shutil.rmtree(tmp_path / "a")
    shutil.rmtree(tmp_path / "b")
    assert wt.list_worktrees(r)[1].prunable is not None
    removal.remove_worktree(r, tmp_path / "a")
    assert [i.path for i in wt.list_worktrees(r)] == [r.root, tmp_path / "b"]
    removal.prune(r)
    assert [i.path for i in wt.list_worktrees(r)] == [r.root]


def test_prune_takes_off_the_hold_a_killed_prune_left_and_no_lock_of_yours(
    repo: Path, tmp_path: Path
) -> None:
    # A prune killed while it held an unreadable worktree leaves git's `locked` file behind:
    # the next prune takes it off (the worktree is readable again); your own lock stays.
    r = g.open_repo(repo)
    for name in ("held", "yours"):
        wt.create_worktree(r, path=tmp_path / name, branch=f"swarm/{name}", start="HEAD")
    admins = {Path(i.path).name: wt.admin_of(r, i.path) for i in wt.list_worktrees(r)[1:]}
    Path(str(admins["held"]), "locked").write_text(removal._HELD)
    git(repo, "worktree", "lock", "--reason", "mine", str(tmp_path / "yours"))
    shutil.rmtree(tmp_path / "held")
    removal.prune(r)
    assert [(i.path, i.locked) for i in wt.list_worktrees(r)] == [
        (r.root, None),
        (tmp_path / "yours", "mine"),
    ]


@pytest.mark.slow  # long: runs in `scripts/check --slow` (CI runs both)
def test_create_from_threads_many_rounds(big_repo: Path, tmp_path: Path) -> None:
    r = g.open_repo(big_repo)
    before = snapshot(big_repo)
    start = g.head_commit(r)
    for rnd in range(ROUNDS):
        items = [(f"swarm/r{rnd}-t{i}", tmp_path / "wt" / f"r{rnd}-t{i}") for i in range(N)]
        wt.preflight(r, items)
        with ThreadPoolExecutor(max_workers=N) as pool:
            futures = [
                pool.submit(wt.create_worktree, r, path=p, branch=b, start=start) for b, p in items
            ]
            for f in futures:
                f.result()
        for b, p in items:
            assert_worktree_ok(r, p, b, start)
        assert len(wt.list_worktrees(r)) == N + 1
        for b, p in items:
            removal.remove_worktree(r, p)
            removal.delete_branch(r, b)
        assert snapshot(big_repo) == before


@pytest.mark.slow  # long: runs in `scripts/check --slow` (CI runs both)
def test_create_from_processes_many_rounds(big_repo: Path, tmp_path: Path) -> None:
    r = g.open_repo(big_repo)
    before = snapshot(big_repo)
    start = g.head_commit(r)
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)}
    for rnd in range(ROUNDS):
        items = [(f"swarm/p{rnd}-t{i}", tmp_path / "wt" / f"p{rnd}-t{i}") for i in range(N)]
        children = [
            subprocess.Popen(
                [sys.executable, "-c", CHILD, str(big_repo), str(p), b, start],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
            )
            for b, p in items
        ]
        for child in children:
            assert child.stdin is not None
            child.stdin.close()
        outputs = []
        for child in children:
            assert child.stdout is not None
            with child.stdout:
                outputs.append(child.stdout.read())
            child.wait()
        failures = [out for child, out in zip(children, outputs, strict=True) if child.returncode]
        assert failures == []
        for b, p in items:
            assert_worktree_ok(r, p, b, start)
        for b, p in items:
            removal.remove_worktree(r, p)
            removal.delete_branch(r, b)
        assert snapshot(big_repo) == before


def assert_nothing_left(r: g.Repo, path: Path, branch: str) -> None:
    assert not git_branches.branch_exists(r, branch)
    assert not os.path.lexists(path)
    admin = r.common_dir / "worktrees"
    assert not admin.exists() or list(admin.iterdir()) == []
    assert len(wt.list_worktrees(r)) == 1


def test_failed_creation_bad_start(repo: Path, tmp_path: Path) -> None:
    r = g.open_repo(repo)
    before = snapshot(repo)
    path = tmp_path / "wt" / "x"
    with pytest.raises(GitError, match="'no-such-commit' is not a commit"):
        wt.create_worktree(r, path=path, branch="swarm/x", start="no-such-commit")
    assert_nothing_left(r, path, "swarm/x")
    assert snapshot(repo) == before


def test_failed_creation_unwritable_path(repo: Path, tmp_path: Path) -> None:
    r = g.open_repo(repo)
    before = snapshot(repo)
    (tmp_path / "blocker").write_text("a file where a directory should be\n")
    path = tmp_path / "blocker" / "x"
    with pytest.raises(GitError, match=f"cannot create worktree {path}: "):
        wt.create_worktree(r, path=path, branch="swarm/x", start="HEAD")
    assert_nothing_left(r, path, "swarm/x")
    assert snapshot(repo) == before


def test_failed_creation_invalid_branch(repo: Path, tmp_path: Path) -> None:
    r = g.open_repo(repo)
    before = snapshot(repo)
    path = tmp_path / "wt" / "x"
    with pytest.raises(CommandError, match=r"bad name|not a valid branch name"):
        wt.create_worktree(r, path=path, branch="bad..name", start="HEAD")
    assert_nothing_left(r, path, "bad..name")
    assert snapshot(repo) == before


def test_failed_checkout_is_rolled_back(repo: Path, tmp_path: Path) -> None:
    r = g.open_repo(repo)
    # A checkout filter that fails makes the populate step (outside the lock) fail after git
    # already made the branch and the admin dir. It is the user's own (global) filter: swarm
    # honours those, while it switches off filters that the repository's config defines.
    (repo / ".gitattributes").write_text("*.txt filter=broken\n")
    (repo / "a.txt").write_text("x\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "filtered")
    git(repo, "config", "--global", "filter.broken.clean", "cat")
    git(repo, "config", "--global", "filter.broken.smudge", "false")
    git(repo, "config", "--global", "filter.broken.required", "true")
    before = snapshot(repo)
    path = tmp_path / "wt" / "x"
    with pytest.raises(CommandError, match="read-tree"):
        wt.create_worktree(r, path=path, branch="swarm/x", start="HEAD")
    assert_nothing_left(r, path, "swarm/x")
    assert snapshot(repo) == before


def test_create_refuses_existing_branch_and_path(repo: Path, tmp_path: Path) -> None:
    r = g.open_repo(repo)
    git(repo, "branch", "taken")
    head = git(repo, "rev-parse", "HEAD")
    with pytest.raises(BadInputError, match="branch taken already exists"):
        wt.create_worktree(r, path=tmp_path / "new", branch="taken", start="HEAD")
    assert git(repo, "rev-parse", "taken") == head
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "keep.txt").write_text("mine\n")
    with pytest.raises(BadInputError, match="already exists"):
        wt.create_worktree(r, path=tmp_path / "exists", branch="fresh", start="HEAD")
    assert (tmp_path / "exists" / "keep.txt").read_text() == "mine\n"
    assert not git_branches.branch_exists(r, "fresh")
    # A link planted there is named as one: `swarm clean`, which a plain "already exists"
    # advises, never removes it.
    (tmp_path / "link").symlink_to(tmp_path / "exists")
    with pytest.raises(BadInputError) as info:
        wt.create_worktree(r, path=tmp_path / "link", branch="fresh", start="HEAD")
    assert str(info.value) == (
        f"{tmp_path / 'link'} is a symbolic link, which swarm never makes there and `swarm"
        " clean` leaves alone: remove it yourself, then run again"
    )
    assert not git_branches.branch_exists(r, "fresh")


def test_preflight(repo: Path, tmp_path: Path) -> None:
    r = g.open_repo(repo)
    wt.preflight(r, [("swarm/a", tmp_path / "a"), ("swarm/b", tmp_path / "b")])
    git(repo, "branch", "swarm/a")
    with pytest.raises(BadInputError) as info:
        wt.preflight(r, [("swarm/b", tmp_path / "b"), ("swarm/a", tmp_path / "a")])
    assert str(info.value) == (
        "branch swarm/a already exists: no swarm run records it; delete it with "
        "`git branch -D swarm/a` (or give the task another id)"
    )
    owned = "task a of run R is failed; run it again with `swarm retry a --run R`"
    with pytest.raises(BadInputError) as info:
        wt.preflight(r, [("swarm/a", tmp_path / "a")], next_step=lambda _: owned)
    expected = f"branch swarm/a already exists: {owned} (or give the task another id)"
    assert str(info.value) == expected
    (tmp_path / "b").mkdir()
    with pytest.raises(BadInputError, match=r"b already exists: no swarm run records it; move it"):
        wt.preflight(r, [("swarm/b", tmp_path / "b")])
    with pytest.raises(BadInputError, match="requested twice"):
        wt.preflight(r, [("swarm/c", tmp_path / "c"), ("swarm/c", tmp_path / "d")])
    with pytest.raises(BadInputError, match="requested twice"):
        wt.preflight(r, [("swarm/c", tmp_path / "c"), ("swarm/d", tmp_path / "c")])


@pytest.mark.parametrize(("existing", "blocked"), [("swarm", "swarm/a"), ("swarm/a/x", "swarm/a")])
def test_a_branch_whose_name_has_no_room_is_bad_input_before_the_run(
    repo: Path, existing: str, blocked: str
) -> None:
    # git keeps `swarm` as a file: `swarm/a` would need it to be a folder, and the other way.
    git(repo, "branch", existing)
    out = subprocess.run(
        [sys.executable, "-m", "worktree_swarm.cli", "run", "--agent", "true", "-t", "a=p"],
        cwd=repo, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr == (
        f"swarm: branch {blocked} cannot be made while branch {existing} exists (git keeps a "
        f"branch name as a file path); rename it with `git branch -m {existing} NEW-NAME`\n"
    )
    assert not (repo / ".git" / "swarm").exists()


def test_preflight_registered_but_missing(repo: Path, tmp_path: Path) -> None:
    r = g.open_repo(repo)
    wt.create_worktree(r, path=tmp_path / "gone", branch="swarm/gone", start="HEAD")
    git(repo, "branch", "-m", "swarm/gone", "renamed")
    shutil.rmtree(tmp_path / "gone")
    with pytest.raises(BadInputError, match="still registered as a worktree"):
        wt.preflight(r, [("swarm/gone", tmp_path / "gone")])


def test_create_on_a_registered_but_missing_path_leaves_that_registration(
    repo: Path, tmp_path: Path
) -> None:
    r = g.open_repo(repo)
    wt.create_worktree(r, path=tmp_path / "gone", branch="swarm/gone", start="HEAD")
    git(repo, "branch", "-m", "swarm/gone", "renamed")
    shutil.rmtree(tmp_path / "gone")
    with pytest.raises(BadInputError, match="still registered as a worktree"):
        wt.create_worktree(r, path=tmp_path / "gone", branch="swarm/new", start="HEAD")
    assert not git_branches.branch_exists(r, "swarm/new")  # the branch git made first is gone again
    listed = git(repo, "worktree", "list", "--porcelain")
    assert str(tmp_path / "gone") in listed  # the user's registration is untouched


def test_copy_into(repo: Path, tmp_path: Path) -> None:
    r = g.open_repo(repo)
    (repo / ".gitignore").write_text(".env\nconfig/*.local\n")
    (repo / "config").mkdir()
    (repo / "config" / "app.local").write_text("local\n")
    (repo / "config" / "app.toml").write_text("tracked\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "config")
    (repo / ".env").write_text("SECRET=1\n")
    (repo / ".env").chmod(0o600)
    (repo / "config" / "app.toml").write_text("locally modified tracked file\n")
    (repo / "config" / "db.local").write_text("db\n")
    before = snapshot(repo)
    dst = tmp_path / "w"
    wt.create_worktree(r, path=dst, branch="swarm/w", start="HEAD")

    copied = local_files.copy_into(
        repo, dst, [".env", "config/*.local", "config/*.toml", "nothing*"]
    )

    assert copied == [".env", "config/app.local", "config/db.local"]
    assert (dst / ".env").read_text() == "SECRET=1\n"
    assert (dst / ".env").stat().st_mode & 0o777 == 0o600
    assert (dst / "config" / "app.toml").read_text() == "tracked\n"
    assert status.status_porcelain(dst) == ""  # all copies are ignored files
    assert snapshot(repo) == before
    assert local_files.copy_into(repo, dst, [".env"]) == []


def test_copy_into_directory_and_symlink(repo: Path, tmp_path: Path) -> None:
    (repo / "fixtures" / "deep").mkdir(parents=True)
    (repo / "fixtures" / "deep" / "a.json").write_text("{}")
    (repo / "fixtures" / "link").symlink_to("deep/a.json")
    dst = tmp_path / "dst"
    dst.mkdir()
    assert local_files.copy_into(repo, dst, ["fixtures"]) == [
        "fixtures/deep/a.json",
        "fixtures/link",
    ]
    assert (dst / "fixtures" / "link").readlink() == Path("deep/a.json")


def test_copy_gives_an_agent_no_link_out_of_its_worktree_and_never_opens_a_pipe(
    repo: Path, tmp_path: Path
) -> None:
    # `.env` an absolute link to a file of your checkout: copied as a link, the agent wrote
    # your file through it. A named pipe matched: the copy waited on it for ever.
    real = repo / "private" / "real.env"
    real.parent.mkdir()
    real.write_text("K=v\n")
    (repo / ".env").symlink_to(real)
    (repo / "run").mkdir()
    os.mkfifo(repo / "run" / "ctl")
    (repo / "run" / "conf").write_text("c\n")
    (repo / "run" / "to-conf").symlink_to("conf")  # stays inside: a link still
    (repo / "run" / "to-pipe").symlink_to(repo / "run" / "ctl")
    dst = tmp_path / "dst"
    dst.mkdir()

    copied = local_files.copy_into(repo, dst, [".env", "run/*"])

    assert copied == [".env", "run/conf", "run/to-conf"]
    assert not (dst / ".env").is_symlink()
    (dst / ".env").write_text("the agent's\n")
    assert real.read_text() == "K=v\n"
    assert (dst / "run" / "to-conf").readlink() == Path("conf")
    assert not os.path.lexists(dst / "run" / "ctl")
    assert not os.path.lexists(dst / "run" / "to-pipe")
    # A link out of the repository is never followed, nor handed over.
    (tmp_path / "id_rsa").write_text("key\n")
    (repo / "key").symlink_to(tmp_path / "id_rsa")
    with pytest.raises(BadInputError, match="key is a symlink that leads outside"):
        local_files.copy_into(repo, dst, ["key"])


def test_copy_into_refuses_escapes(repo: Path, tmp_path: Path) -> None:
    (tmp_path / "x").write_text("outside\n")
    dst = tmp_path / "dst"
    dst.mkdir()
    for pattern in ("../x", "a/../../x", "/etc/passwd", ""):
        with pytest.raises(BadInputError, match="must stay inside the repository"):
            local_files.copy_into(repo, dst, [pattern])
    # A symlinked directory in the destination must not redirect the copy outside it.
    (repo / "conf").mkdir()
    (repo / "conf" / "a.local").write_text("a\n")
    (tmp_path / "elsewhere").mkdir()
    (dst / "conf").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(BadInputError, match="outside"):
        local_files.copy_into(repo, dst, ["conf/*.local"])
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_copied_secrets_reads_settings_files_in_the_repository_only(
    repo: Path, tmp_path: Path
) -> None:
    # What the redactor is given: the values of the `copy` files an agent gets, not those of
    # files reached through a link out of the repository (never copied), a binary file's, or
    # a link to nothing's (no failure either).
    (repo / ".env").write_text("API_TOKEN=q8Zr4vW2nK7pL1xT\n")
    (repo / "model.bin").write_bytes(b"\0\x01\nAPI_TOKEN=binaryZr4vW2nK7pL1\n")
    (repo / "dangling.env").symlink_to("nothing.env")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "x.env").write_text("HOME_TOKEN=outsideZr4vW2nK7p\n")
    (repo / "cfg").symlink_to(tmp_path / "home")
    globs = [".env", "model.bin", "dangling.*", "cfg/*"]

    assert local_files.copied_secrets(repo, globs) == [("API_TOKEN in .env", "q8Zr4vW2nK7pL1xT")]


def test_link_into_keeps_its_own_link_and_never_links_through_one_out_of_the_worktree(
    repo: Path, tmp_path: Path
) -> None:
    (repo / "node_modules").mkdir()
    (repo / "sub" / "cache").mkdir(parents=True)
    dst = tmp_path / "dst"
    dst.mkdir()
    local_files.link_into(repo, dst, ["node_modules"])
    local_files.link_into(repo, dst, ["node_modules"])  # a resumed task: kept as it is
    assert (dst / "node_modules").readlink() == repo / "node_modules"
    (tmp_path / "elsewhere").mkdir()
    (dst / "sub").symlink_to(tmp_path / "elsewhere")  # an agent's link out of its worktree
    with pytest.raises(SwarmError, match=r"link 'sub/cache': .* leads outside the worktree"):
        local_files.link_into(repo, dst, ["sub/cache"])
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_a_hard_linked_copy_across_file_systems_is_a_copy(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on a file system of its own")
    src = Path(tempfile.mkdtemp(dir=shm))
    try:
        (src / ".env").write_text("K=v\n")
        dst = tmp_path / "dst"
        dst.mkdir()
        assert local_files.copy_into(src, dst, [".env"], mode=CopyMode.HARDLINK) == [".env"]
        assert (dst / ".env").read_text() == "K=v\n"
        assert (dst / ".env").stat().st_nlink == 1
    finally:
        shutil.rmtree(src)


def test_a_file_that_became_a_pipe_before_its_copy_is_not_copied(tmp_path: Path) -> None:
    # copy_sources skipped pipes; one swapped in since is refused without being waited on.
    # The copy of one file is called directly: the swap is a race, between walk and copy.
    os.mkfifo(tmp_path / "was-a-file")
    (tmp_path / "dst").mkdir()
    for mode in (CopyMode.AUTO, CopyMode.COPY):
        dst = tmp_path / "dst" / "copy"
        assert not local_files._copy_file(
            tmp_path / "was-a-file", dst, mode=mode, inside=dst.parent
        )
        assert list(dst.parent.iterdir()) == []


def test_a_registration_read_from_its_admin_dir_agrees_with_gits_listing(
    repo: Path, tmp_path: Path
) -> None:
    r = g.open_repo(repo)
    on_branch, detached, locked = (tmp_path / "wt" / n for n in ("b", "d", "l"))
    wt.create_worktree(r, path=on_branch, branch="swarm/b", start="HEAD")
    wt.create_worktree(r, path=locked, branch="swarm/l", start="HEAD")
    git(repo, "worktree", "add", "-q", "--detach", str(detached), "HEAD")
    git(repo, "worktree", "lock", "--reason", "on a USB disk", str(locked))
    admin = g.git_dir(on_branch)
    listed = {info.path: info for info in wt.list_worktrees(r)}
    with g.repo_lock(r):
        for path in (on_branch, detached, locked, repo):
            found = wt.registration_locked(r, path)
            assert found is not None
            want = listed[path]
            assert (found.branch, found.locked, found.is_main) == (
                want.branch,
                want.locked,
                want.is_main,
            )
            assert found.head in {None, want.head}
        assert wt.registration_locked(r, tmp_path / "wt" / "never") is None
        # A worktree whose admin dir names another checkout is not taken on its word.
        (admin / "gitdir").write_text(str(detached / ".git") + "\n")
        assert wt.registration_locked(r, on_branch) is None


def _admin_files(repo: Path, name: str) -> dict[str, str]:
    admin = repo / ".git" / "worktrees" / name
    return {p.name: p.read_text(errors="replace") for p in sorted(admin.iterdir()) if p.is_file()}


def test_a_worktree_is_registered_exactly_as_git_worktree_add_does_it(
    repo: Path, tmp_path: Path
) -> None:
    r = g.open_repo(repo)
    ours, theirs = tmp_path / "a" / "same", tmp_path / "b" / "same"
    git(repo, "branch", "theirs")
    git(repo, "worktree", "add", "-q", "--no-checkout", str(theirs), "theirs")
    wt.create_worktree(r, path=ours, branch="swarm/ours", start="HEAD")
    # git named its admin dir after the directory; ours took the next name, as git would.
    assert sorted(p.name for p in (repo / ".git" / "worktrees").iterdir()) == ["same", "same1"]
    mine, git_s = _admin_files(repo, "same1"), _admin_files(repo, "same")
    # Same files, same contents but for the names (ours has the index of its checkout; git's
    # has a `logs/` dir: the HEAD reflog's creation entry, which nothing reads).
    assert set(mine) == set(git_s) | {"index"}
    assert mine["commondir"] == git_s["commondir"]
    assert mine["HEAD"] == "ref: refs/heads/swarm/ours\n"
    assert git_s["HEAD"] == "ref: refs/heads/theirs\n"
    assert mine["gitdir"] == git_s["gitdir"].replace(str(theirs), str(ours))
    git_file = (theirs / ".git").read_text().replace("/same\n", "/same1\n")
    assert (ours / ".git").read_text() == git_file
    # git reads it as its own: listed, worked in, moved, removed.
    listed = git(repo, "worktree", "list", "--porcelain")
    assert (
        f"worktree {ours}\nHEAD {git(repo, 'rev-parse', 'HEAD')}\nbranch refs/heads/swarm/ours"
        in listed
    )
    git(repo, "worktree", "prune")
    assert (repo / ".git" / "worktrees" / "same1").is_dir()
    (ours / "new.txt").write_text("x\n")
    assert git(ours, "status", "--porcelain") == "?? new.txt"
    (ours / "new.txt").unlink()
    git(repo, "worktree", "move", str(ours), str(tmp_path / "moved"))
    git(repo, "worktree", "remove", str(tmp_path / "moved"))
    assert not (repo / ".git" / "worktrees" / "same1").exists()


@pytest.mark.parametrize("setting", ["extensions.worktreeConfig=true", "include.path=other.cfg"])
def test_config_that_changes_the_layout_leaves_registration_to_git(
    repo: Path, tmp_path: Path, setting: str
) -> None:
    key, value = setting.split("=")
    if key.startswith("extensions"):
        git(repo, "config", "core.repositoryformatversion", "1")
    git(repo, "config", key, value)
    r = g.open_repo(repo)
    path = tmp_path / "w"
    env = {**os.environ, "GIT_TRACE2_EVENT": str(tmp_path / "trace.json")}
    code = (
        "import sys\nfrom pathlib import Path\nfrom worktree_swarm.git.repo import open_repo\n"
        "from worktree_swarm.git.worktrees import create_worktree\n"
        "create_worktree(open_repo(Path(sys.argv[1])), path=Path(sys.argv[2]), "
        "branch='swarm/w', start='HEAD')\n"
    )
    subprocess.run([sys.executable, "-c", code, str(repo), str(path)], env=env, check=True)
    assert '"worktree","add"' in (tmp_path / "trace.json").read_text()
    assert status.status_porcelain(path) == ""
    assert wt.registration_locked(r, path) is not None


@pytest.mark.parametrize("failing", ["locked", "gitdir", ".git", "commondir", "HEAD"])
def test_a_registration_that_fails_half_way_leaves_nothing(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    # The disk fills at one of the registration's writes.
    real_write = Path.write_text

    def full_at(self: Path, *args: object, **kwargs: object) -> int:
        if self.name.removesuffix(".new") == failing:  # each is written beside, then renamed
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "write_text", full_at)
    r = g.open_repo(repo)
    path = tmp_path / "wt" / "a"
    with pytest.raises(GitError, match="No space left"):
        wt.create_worktree(r, path=path, branch="swarm/a", start="HEAD")
    monkeypatch.undo()
    assert not path.exists()
    assert list((repo / ".git" / "worktrees").iterdir()) == []
    assert not git_branches.branch_exists(r, "swarm/a")
    # Nothing is in the way of making it again.
    wt.create_worktree(r, path=path, branch="swarm/a", start="HEAD")
    assert status.status_porcelain(path) == ""


def test_a_clean_worktree_is_deleted_as_git_worktree_remove_does_it(
    repo: Path, tmp_path: Path
) -> None:
    r = g.open_repo(repo)
    path = tmp_path / "wt" / "a"
    wt.create_worktree(r, path=path, branch="swarm/a", start="HEAD")
    (path / "build.log").write_text("ignored or not, a worktree's files all go\n")
    tip = git(repo, "rev-parse", "swarm/a")
    with g.repo_lock(r):
        assert removal.delete_locked(r, path) is True
    assert not path.exists()
    assert list((repo / ".git" / "worktrees").iterdir()) == []
    # git agrees nothing is left: no listing, nothing to prune; the branch stays.
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    assert git(repo, "worktree", "prune", "--dry-run", "--verbose") == ""
    assert git(repo, "rev-parse", "swarm/a") == tip
    git(repo, "worktree", "add", "-q", str(path), "swarm/a")
    assert (path / "README.md").read_text() == "hello\n"


@pytest.mark.parametrize("case", ["locked", "submodules", "symlink", "another worktree's .git"])
def test_a_worktree_git_must_remove_is_left_to_git(repo: Path, tmp_path: Path, case: str) -> None:
    r = g.open_repo(repo)
    path = tmp_path / "wt" / "a"
    wt.create_worktree(r, path=path, branch="swarm/a", start="HEAD")
    admin = g.git_dir(path)
    target = path
    if case == "locked":
        git(repo, "worktree", "lock", "--reason", "on a USB disk", str(path))
    elif case == "submodules":
        (admin / "modules").mkdir()
    elif case == "symlink":
        target = tmp_path / "link"
        target.symlink_to(path)
    else:
        other = tmp_path / "wt" / "b"
        wt.create_worktree(r, path=other, branch="swarm/b", start="HEAD")
        (path / ".git").write_text((other / ".git").read_text())
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with g.repo_lock(r):
        assert removal.delete_locked(r, target) is False
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert (admin / "index").exists()


# A `git` first on PATH whose first `worktree remove` stands for git reading every
# registration: it notes them, says so, and waits to be let go; one of them deleted meanwhile
# makes it die as git does. Every other command is the real git.
_READING_GIT = """#!/bin/sh
case " $* " in
*" worktree remove "*)
  if mkdir {d}/first 2>/dev/null; then
    ls {admin} > {d}/listed
    touch {d}/reading
    i=0
    while [ ! -e {d}/release ] && [ $i -lt 6000 ]; do sleep 0.01; i=$((i + 1)); done
    for name in $(cat {d}/listed); do
      [ -e {admin}/"$name" ] || {{
        echo "fatal: Invalid path '{admin}/$name': No such file or directory" >&2; exit 128; }}
    done
  fi;;
esac
exec {real} "$@"
"""


@pytest.mark.parametrize("other", ["deleted by swarm", "removed by git"])
def test_no_registration_goes_while_git_reads_them_all(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, other: str
) -> None:
    """`swarm clean` removes worktrees from several threads; git reads every registration
    and dies on one deleted meanwhile, so none goes while such a git runs."""
    r = g.open_repo(repo)
    a, b = tmp_path / "wt" / "a", tmp_path / "wt" / "b"
    for path in (a, b):
        wt.create_worktree(r, path=path, branch=f"swarm/{path.name}", start="HEAD")
    (a / "kept.txt").write_text("untracked: git must remove it (--force)\n")
    flags = tmp_path / "flags"
    flags.mkdir()
    admin = shlex.quote(str(repo / ".git" / "worktrees"))
    git_first_on_path(tmp_path, monkeypatch, lambda real: _READING_GIT.format(
        d=shlex.quote(str(flags)), admin=admin, real=real
    ))  # fmt: skip
    errors: list[BaseException] = []

    def thread(action: Callable[[], object]) -> threading.Thread:
        def body() -> None:
            try:
                action()
            except BaseException as exc:  # reported by the assertion below
                errors.append(exc)

        started = threading.Thread(target=body)
        started.start()
        return started

    with g.repo_lock(r):
        first = thread(lambda: removal.git_remove_locked(r, a, force=True))
        wait_for((flags / "reading").exists, what="git to read the registrations")
        if other == "deleted by swarm":
            second = thread(lambda: removal.delete_locked(r, b))
            # Its files go first; its registration is next.
            wait_for(lambda: not b.exists(), what="b's files to go")
        else:
            second = thread(lambda: removal.git_remove_locked(r, b, force=False))
        # Nothing may happen to b's registration while git reads: this is the time it has.
        second.join(0.5)
        (flags / "release").touch()
        first.join(60)
        second.join(60)
    assert errors == []
    assert not a.exists()
    assert not b.exists()
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    assert git(repo, "worktree", "prune", "--dry-run", "--verbose") == ""
