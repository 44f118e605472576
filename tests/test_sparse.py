"""Sparse worktrees: a task with `files` and `sparse` gets only their directories, loses nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import git, make_repo
from tests.test_run import AgentFactory, argv_toml, manifest, state_db, status_json, swarm
from worktree_swarm.git import checkpoints, sparse, status, worktrees
from worktree_swarm.git import repo as gitrepo
from worktree_swarm.run import provision
from worktree_swarm.run.disk_budget import checkout_size

FILES = {
    "README.md": "top\n",
    "src/util.py": "util\n",
    "src/auth/login.py": "login\n",
    "src/auth/deep/token.py": "token\n",
    "src/deep/x.py": "x\n",
    "docs/guide.md": "guide\n",
    "docs/api/ref.md": "ref\n",
}


def _listing(root: Path) -> set[str]:
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and ".git" not in p.relative_to(root).parts
    }


@pytest.mark.parametrize(
    ("globs", "recursive", "shallow"),
    [
        (["src/auth/**"], {"src/auth"}, set()),
        (["src/auth"], {"src/auth"}, set()),  # a plain name reads as a directory
        (["src/auth/login.py"], set(), {"src/auth"}),
        (["src/*.py", "docs/api/**"], {"docs/api"}, {"src"}),
        (["src/**", "src/auth/login.py", "src/deep/**"], {"src"}, set()),
        (["*.md"], set(), set()),  # the top level's own files only
        (["src/*/login.py"], {"src"}, set()),
    ],
)
def test_the_cone_covers_every_path_the_globs_can_match(
    globs: list[str], recursive: set[str], shallow: set[str]
) -> None:
    assert sparse.cone(globs) == sparse.Cone(frozenset(recursive), frozenset(shallow))


@pytest.mark.parametrize("globs", [["**/*.py"], ["*/x.py"], [""], ["src/a b/**"], ["\\x/**"]])
def test_globs_a_cone_cannot_hold_get_the_whole_tree(globs: list[str]) -> None:
    assert sparse.cone(globs) is None


def test_patterns_are_what_git_writes_for_the_same_cone(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", FILES)
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    git(clone, "sparse-checkout", "set", "--cone", "src/auth/deep", "docs", "a/b/c")
    written = (clone / ".git" / "info" / "sparse-checkout").read_text()
    cone = sparse.cone(["src/auth/deep/**", "docs/**", "a/b/c/"])
    assert cone is not None
    assert sparse.patterns(cone) == written


def test_a_sparse_worktree_holds_the_cone_and_stays_sparse_when_restored(tmp_path: Path) -> None:
    repo = gitrepo.open_repo(make_repo(tmp_path / "repo", FILES))
    cone = sparse.cone(["src/auth/**"])
    path = tmp_path / "wt" / "a"
    worktrees.create_worktree(repo, path=path, branch="swarm/a", start="HEAD", cone=cone)
    seen = {"README.md", "src/util.py", "src/auth/login.py", "src/auth/deep/token.py"}
    assert _listing(path) == seen
    assert status.status_porcelain(path) == ""  # nothing outside the cone reads as deleted
    # The repository's own config was not touched (git's `sparse-checkout` would have).
    assert "sparse" not in git(repo.root, "config", "--list", "--show-scope").lower()
    assert not (repo.common_dir / "info" / "sparse-checkout").exists()
    start = git(repo.root, "rev-parse", "HEAD")

    # Removed (for disk room, or by hand): added again on its branch, sparse as before.
    shutil.rmtree(path)
    assert provision.restore(repo, path=path, branch="swarm/a", start=start, unlock=True, cone=cone)
    assert _listing(path) == seen
    # A checkout a crash left without its index is repopulated sparse too.
    (gitrepo.git_dir(path) / "index").unlink()
    for name in seen:
        (path / name).unlink()
    assert provision.restore(repo, path=path, branch="swarm/a", start=start, unlock=True, cone=cone)
    assert _listing(path) == seen
    assert status.status_porcelain(path) == ""


@pytest.mark.parametrize(
    "globs", [["src/auth/**"], ["src/auth/login.py", "docs/api/**"], ["*.md"], ["src/*/x.py"]]
)
def test_the_disk_estimate_counts_exactly_the_files_git_checks_out(
    tmp_path: Path, globs: list[str]
) -> None:
    repo = gitrepo.open_repo(make_repo(tmp_path / "repo", FILES))
    cone = sparse.cone(globs)
    path = tmp_path / "wt" / "a"
    worktrees.create_worktree(repo, path=path, branch="swarm/a", start="HEAD", cone=cone)
    names = git(repo.root, "ls-tree", "-r", "--name-only", "HEAD").splitlines()
    assert {name for name in names if sparse.holds(cone, name)} == _listing(path)
    full = checkout_size(repo, "HEAD")
    assert checkout_size(repo, "HEAD", cone=cone) < full


# Records what it sees, then works inside and outside its cone: edits a file there, adds one
# in a directory that was not checked out, writes a skipped file anew, and asks git.
SPARSE_AGENT = """
import json, pathlib, subprocess
root = pathlib.Path('.')
seen = sorted(p.as_posix() for p in root.rglob('*') if p.is_file() and '.git' not in p.parts)
pathlib.Path('src/auth/login.py').write_text('login, changed\\n')
pathlib.Path('docs').mkdir(exist_ok=True)
pathlib.Path('docs/new.md').write_text('new\\n')
pathlib.Path('docs/guide.md').write_text('guide, rewritten\\n')
status = subprocess.run(['git', 'status', '--porcelain'], capture_output=True, text=True,
                        check=True).stdout
pathlib.Path('../seen.json').write_text(json.dumps({'seen': seen, 'status': status}))
"""


@pytest.mark.long
def test_a_sparse_task_sees_its_cone_and_keeps_its_work_outside_it(
    tmp_path: Path, write_agent: AgentFactory
) -> None:
    repo = make_repo(tmp_path / "repo", FILES)
    agent = argv_toml(write_agent(SPARSE_AGENT))
    path = manifest(
        repo,
        f"[defaults]\nagent = {agent}\nsparse = true\n"
        '[[task]]\nid = "a"\nprompt = "one"\nfiles = ["src/auth/**"]\n',
    )
    out = swarm(repo, "run", path)
    assert out.returncode == 0, out.stderr
    assert status_json(repo)["a"]["state"] == "done"
    report = json.loads((tmp_path / "repo.swarm" / "seen.json").read_text())
    assert report["seen"] == [
        "README.md", "src/auth/deep/token.py", "src/auth/login.py", "src/util.py"
    ]  # fmt: skip
    # The agent's own git sees its work outside the cone, the rewritten skipped file too.
    assert set(report["status"].splitlines()) == {
        " M docs/guide.md", " M src/auth/login.py", "?? docs/new.md"
    }  # fmt: skip
    # On the branch: every change; the files never checked out are there, unchanged.
    assert git(repo, "show", "swarm/a:src/auth/login.py") == "login, changed"
    assert git(repo, "show", "swarm/a:docs/new.md") == "new"
    assert git(repo, "show", "swarm/a:docs/guide.md") == "guide, rewritten"
    changed = git(repo, "diff", "--name-status", "main", "swarm/a").splitlines()
    assert sorted(changed) == ["A\tdocs/new.md", "M\tdocs/guide.md", "M\tsrc/auth/login.py"]
    events = state_db(repo).execute("SELECT kind FROM events").fetchall()
    assert ("outside_write",) not in events
    # Nothing in the user's repository config or checkout says sparse.
    assert "sparse" not in git(repo, "config", "--list").lower()
    assert _listing(repo) == set(FILES)
    clean = swarm(repo, "clean", "--all", "--yes")
    assert clean.returncode == 0, clean.stderr
    assert not (tmp_path / "repo.swarm" / "a").exists()


def test_the_sparse_flag_without_files_checks_out_everything(
    tmp_path: Path, write_agent: AgentFactory
) -> None:
    repo = make_repo(tmp_path / "repo", FILES)
    agent = " ".join(write_agent(SPARSE_AGENT))
    out = swarm(repo, "run", "--sparse", "--agent", agent, "-t", "a=one")
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "repo.swarm" / "seen.json").read_text())
    assert set(report["seen"]) == set(FILES)


@pytest.mark.long
def test_max_disk_counts_a_sparse_worktree_at_its_sparse_size_before_the_run(
    tmp_path: Path, write_agent: AgentFactory
) -> None:
    big = {f"data/blob{i}.bin": "x" * 200_000 for i in range(5)}  # ~1 MB outside the cone
    repo = make_repo(tmp_path / "repo", {**FILES, **big})
    agent = argv_toml(
        write_agent("import pathlib\npathlib.Path('src/auth/new.py').write_text('n')\n")
    )
    text = (
        f'[defaults]\nagent = {agent}\nmax_disk = "300K"\nsparse = true\n'
        '[[task]]\nid = "a"\nprompt = "x"\nfiles = ["src/auth/"]\n'
    )
    sparse_run = swarm(repo, "run", manifest(repo, text))
    full_run = swarm(repo, "run", manifest(repo, text.replace('id = "a"', 'id = "b"')
                                         .replace("sparse = true", "sparse = false")))  # fmt: skip
    assert sparse_run.returncode == 0, sparse_run.stderr
    assert full_run.returncode == 2  # the full checkout does not fit: refused before the run
    assert "smaller than one worktree of task b" in full_run.stderr


@pytest.mark.long
def test_the_ray_executor_refuses_sparse_before_anything_is_made(
    tmp_path: Path, write_agent: AgentFactory
) -> None:
    pytest.importorskip("ray")
    repo = make_repo(tmp_path / "repo", FILES)
    agent = argv_toml(write_agent("pass\n"))
    path = manifest(
        repo,
        f'[defaults]\nagent = {agent}\nsparse = true\nexecutor = "ray"\n'
        '[[task]]\nid = "a"\nprompt = "one"\nfiles = ["src/**"]\n',
    )
    out = swarm(repo, "run", path)
    assert out.returncode == 2
    assert "`sparse` is not supported with executor `ray`" in out.stderr
    assert not (repo / ".git" / "swarm" / "state.db").exists()
    assert "swarm/a" not in git(repo, "branch", "--list")


def test_swarm_s_git_sees_a_skipped_file_an_agent_wrote(tmp_path: Path) -> None:
    repo = gitrepo.open_repo(make_repo(tmp_path / "repo", FILES))
    path = tmp_path / "wt" / "a"
    cone = sparse.cone(["src/auth/**"])
    worktrees.create_worktree(repo, path=path, branch="swarm/a", start="HEAD", cone=cone)
    (path / "docs").mkdir()
    (path / "docs" / "guide.md").write_text("rewritten\n")
    # Plain git (no sparse setting) does not see it: the index says "skipped".
    plain = subprocess.run(
        ["git", "status", "--porcelain"], cwd=path, capture_output=True, text=True, check=True
    )
    assert plain.stdout == ""
    assert status.status_porcelain(path) == " M docs/guide.md\0"
    head = checkpoints.checkpoint(path, message="cp", author="A <a@example.com>")
    assert head is not None
    assert git(repo.root, "show", f"{head}:docs/guide.md") == "rewritten"


# Deletes its worktree's index (an agent of the task, run again there).
DELETES_INDEX = """
import os, subprocess
admin = subprocess.run(['git', 'rev-parse', '--absolute-git-dir'], capture_output=True,
                       text=True, check=True).stdout.strip()
os.remove(os.path.join(admin, 'index'))
"""


def test_clean_counts_no_file_outside_a_sparse_cone_as_deleted_when_the_index_is_gone(
    tmp_path: Path, write_agent: AgentFactory
) -> None:
    # A sparse worktree lacks every file outside its cone: its agent deleted its index, the
    # repair's `sparse-checkout reapply` commits none of them as deleted, and the dry run
    # may not count them as work either.
    repo = make_repo(tmp_path / "repo", FILES)
    agent = argv_toml(
        write_agent("import pathlib\npathlib.Path('src/auth/n.py').write_text('n')\n")
    )
    text = (
        f"[defaults]\nagent = {agent}\nsparse = true\n"
        '[[task]]\nid = "a"\nprompt = "x"\nfiles = ["src/auth/**"]\n'
    )
    out = swarm(repo, "run", manifest(repo, text))
    assert out.returncode == 0, out.stdout + out.stderr
    worktree = tmp_path / "repo.swarm" / "a"
    assert not (worktree / "docs").exists()
    subprocess.run(write_agent(DELETES_INDEX), cwd=worktree, check=True)
    dry = swarm(repo, "clean")
    assert "would: remove it" in dry.stdout, dry.stdout
    out = swarm(repo, "clean", "--yes")
    assert out.returncode == 0, out.stdout + out.stderr
    said = "its index was missing (made again from HEAD, its files were as HEAD has them)"
    assert f"done: {said}, removed" in out.stdout, out.stdout
    assert git(repo, "diff", "--name-status", "main", "swarm/a") == "A\tsrc/auth/n.py"


def test_sparse_patterns_read_back_as_the_cone_written(tmp_path: Path) -> None:
    cone = sparse.cone(["src/app/**", "docs/*.md", "lib/x/y.py"])
    assert cone is not None
    sparse.write(tmp_path, cone)
    read = sparse.read(tmp_path)
    assert read is not None
    assert sparse.patterns(read) == sparse.patterns(cone)
    paths = ["a", "src/b", "src/app/c/d", "docs/e.md", "docs/f/g", "lib/h", "lib/x/y.py", "z/i"]
    assert [sparse.holds(read, p) for p in paths] == [sparse.holds(cone, p) for p in paths]
    sparse.pattern_file(tmp_path).write_text("/*\n!/*/\n/docs/*.md\n")  # not a cone of swarm's
    assert sparse.read(tmp_path) is None
