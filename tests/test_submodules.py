"""Work an agent leaves in a submodule: no commit of the task's branch can hold it.

A task worktree gets each submodule as an empty directory (as `git worktree add` does); files
written there are seen by no `git status`, and edits inside a submodule the agent populated
are that repository's to commit. Either way the task must not end as done, and `swarm clean`
must not delete the work with the worktree.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import add_submodule, git, make_repo
from tests.test_run import argv_toml, manifest, status_json, swarm

AgentFactory = Callable[[str], list[str]]

# Writes its own file, then does *action* to the submodule `lib`.
AGENT = """
import pathlib, subprocess, sys
pathlib.Path('own.txt').write_text('own work\\n')
def git(*args):
    subprocess.run(['git', '-c', 'protocol.file.allow=always', *args], check=True,
                   capture_output=True)
action = sys.argv[1]
if action == 'write-into-empty':
    pathlib.Path('lib/NOTES.md').write_text('agent notes\\n')
if action in ('populate', 'populate-and-edit', 'populate-and-commit'):
    git('submodule', 'update', '--init', 'lib')
if action == 'populate-and-edit':
    pathlib.Path('lib/README.md').write_text('edited inside the submodule\\n')
if action == 'populate-and-commit':  # a new commit of the submodule: its pointer moves
    pathlib.Path('lib/README.md').write_text('committed inside the submodule\\n')
    git('-C', 'lib', '-c', 'user.name=a', '-c', 'user.email=a@b', 'commit', '-qam', 'lib')
"""


@pytest.fixture
def super_repo(tmp_path: Path) -> Path:
    """A repository with the submodule `lib` (a local repository)."""
    repo = make_repo(tmp_path / "repo")
    add_submodule(repo, tmp_path / "lib-origin")
    return repo


def run_agent(
    repo: Path, write_agent: AgentFactory, action: str
) -> subprocess.CompletedProcess[str]:
    agent = argv_toml([*write_agent(AGENT), action])
    return swarm(
        repo, "run", manifest(repo, f'[[task]]\nid = "t"\nprompt = "p"\nagent = {agent}\n')
    )


@pytest.mark.long
@pytest.mark.parametrize("action", ["write-into-empty", "populate-and-edit"])
def test_work_left_in_a_submodule_fails_the_task_and_clean_keeps_it(
    super_repo: Path, write_agent: AgentFactory, action: str
) -> None:
    assert run_agent(super_repo, write_agent, action).returncode == 1
    row = status_json(super_repo)["t"]
    assert row["state"] == "failed"
    assert "left work in submodule lib" in str(row["reason"])
    assert git(super_repo, "show", "swarm/t:own.txt") == "own work"  # the rest is committed
    worktree = super_repo.parent / "repo.swarm" / "t"
    left = worktree / "lib" / ("NOTES.md" if action == "write-into-empty" else "README.md")
    before = left.read_text()
    out = swarm(super_repo, "clean", "--yes")
    assert "submodule lib holds work no commit records" in out.stdout
    assert left.read_text() == before
    # Told to, clean removes it (the user saved what mattered, or does not want it).
    assert swarm(super_repo, "clean", "--yes", "--force").returncode == 0
    assert not worktree.exists()


@pytest.mark.long
def test_a_submodule_s_new_commit_is_checkpointed_as_its_pointer(
    super_repo: Path, write_agent: AgentFactory
) -> None:
    # The checkpoint does not look inside the submodule (git would run its filters there): it
    # records the commit the submodule's HEAD names, as `git add` would have.
    assert run_agent(super_repo, write_agent, "populate-and-commit").returncode == 0
    assert status_json(super_repo)["t"]["state"] == "done"
    moved = git(super_repo.parent / "repo.swarm" / "t" / "lib", "rev-parse", "HEAD")
    assert moved != git(super_repo, "rev-parse", "HEAD:lib")
    assert git(super_repo, "rev-parse", "swarm/t:lib") == moved
    # That commit lives in the worktree's own clone of lib: clean keeps the worktree until
    # the commit is somewhere else (the branch records only its id).
    worktree = super_repo.parent / "repo.swarm" / "t"
    out = swarm(super_repo, "clean", "--yes")
    assert f"submodule lib ({moved[:12]}) has a commit in no repository but this" in out.stdout
    assert worktree.is_dir()
    assert git(worktree / "lib", "cat-file", "-t", moved) == "commit"
    # Once your clone of lib has it (a push, a fetch), the worktree goes.
    git(super_repo, "-c", "protocol.file.allow=always", "submodule", "update", "--init", "lib")
    git(super_repo / "lib", "fetch", "-q", str(worktree / "lib"), moved)
    out = swarm(super_repo, "clean", "--yes")  # fetched by its id only: on no ref, still kept
    assert worktree.is_dir(), out.stdout
    git(super_repo / "lib", "branch", "from-the-agent", moved)
    out = swarm(super_repo, "clean", "--yes")
    assert out.returncode == 0, out.stdout + out.stderr
    assert not worktree.exists()


@pytest.mark.long
def test_a_submodule_populated_and_left_as_it_was_is_no_work_left(
    super_repo: Path, write_agent: AgentFactory
) -> None:
    assert run_agent(super_repo, write_agent, "populate").returncode == 0
    assert status_json(super_repo)["t"]["state"] == "done"
    # Its commit is the one lib's remote has: nothing of the worktree's to keep.
    assert swarm(super_repo, "clean", "--yes").returncode == 0
    assert not (super_repo.parent / "repo.swarm" / "t").exists()


def test_a_submodule_at_a_path_of_any_bytes_populated_stays_on_the_branch(
    tmp_path: Path, write_agent: AgentFactory
) -> None:
    # Its name from `.gitmodules` read one way, from the index another: taken for a repository
    # the agent made, removed from the branch, and the task failed.
    lib = make_repo(tmp_path / "lib-origin", {"README.md": "lib\n"})
    repo = make_repo(tmp_path / "repo")
    subprocess.run(
        [b"git", b"-c", b"protocol.file.allow=always", b"submodule", b"add", b"-q",
         os.fsencode(lib), b"lib-\xff"],
        cwd=repo, check=True, capture_output=True,
    )  # fmt: skip
    git(repo, "commit", "-q", "-m", "add lib")
    agent = argv_toml(write_agent(
        "import pathlib, subprocess\n"
        "subprocess.run(['git', '-c', 'protocol.file.allow=always', 'submodule', 'update',\n"
        "                '--init'], check=True, capture_output=True)\n"
        "pathlib.Path('own.txt').write_text('own work\\n')\n"
    ))  # fmt: skip
    swarm(repo, "run", manifest(repo, f'[[task]]\nid = "t"\nprompt = "p"\nagent = {agent}\n'))
    row = status_json(repo)["t"]
    assert row["state"] == "done", row
    tree = subprocess.run(["git", "ls-tree", "-z", "swarm/t"], cwd=repo, capture_output=True,
                          check=True).stdout  # fmt: skip
    assert b"160000 commit " in tree
    assert b"\tlib-\xff\0" in tree


# Plants a filter in the git dir of the user's checked-out submodule `lib` (under the
# repository's `.git/modules/`), then rewrites one of its files at the same size: the user's
# next `git status`, or a `git add` of swarm's in the user's checkout, would run the filter.
PLANT = """
import pathlib, subprocess, sys
marker = sys.argv[1]
common = pathlib.Path(subprocess.run(['git', 'rev-parse', '--path-format=absolute',
    '--git-common-dir'], capture_output=True, text=True, check=True).stdout.strip())
lib = common / 'modules' / 'lib'
with (lib / 'config').open('a') as fh:
    fh.write(f'[filter "ev"]\\n\\tclean = touch {marker}; cat\\n')
(lib / 'info').mkdir(exist_ok=True)
(lib / 'info' / 'attributes').write_text('* filter=ev\\n')
checkout = common.parent / 'lib' / 'README.md'
checkout.write_text(checkout.read_text().upper())
pathlib.Path('own.txt').write_text('own work\\n')
"""


def test_a_filter_planted_in_a_submodules_git_dir_never_runs_and_is_undone(
    super_repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    marker = tmp_path / "submodule-filter-ran"
    config = super_repo / ".git" / "modules" / "lib" / "config"
    before = config.read_bytes()
    agent = argv_toml([*write_agent(PLANT), str(marker)])
    text = f'[[task]]\nid = "t"\nprompt = "p"\nagent = {agent}\n'
    assert swarm(super_repo, "run", manifest(super_repo, text)).returncode == 1
    assert not marker.exists()
    row = status_json(super_repo)["t"]
    assert row["state"] == "failed", row
    assert "modules/lib/config" in str(row["reason"]), row
    assert config.read_bytes() == before
    assert not (super_repo / ".git" / "modules" / "lib" / "info" / "attributes").exists()
    # The attack is real: with the filter back, git in the submodule runs it.
    config.write_bytes(before + f'[filter "ev"]\n\tclean = touch {marker}; cat\n'.encode())
    (config.parent / "info" / "attributes").write_text("* filter=ev\n")
    subprocess.run(["git", "status"], cwd=super_repo / "lib", check=True, capture_output=True)
    assert marker.exists()


# Makes a repository `lib` in its worktree, declared as a submodule, whose own config has a
# clean filter named `a=b` (one `-c` cannot name), and leaves a file of it out of date.
OWN_REPO_FILTER = """
import pathlib, subprocess, sys
marker = sys.argv[1]
def git(*args, cwd='lib'):
    subprocess.run(['git', '-c', 'user.name=a', '-c', 'user.email=a@b', *args], cwd=cwd,
                   check=True, capture_output=True)
pathlib.Path('lib').mkdir()
git('init', '-q', cwd='lib')
pathlib.Path('lib/f.txt').write_text('one\\n')
pathlib.Path('lib/.gitattributes').write_text('* filter=a=b\\n')
git('add', '-A')
git('commit', '-qm', 'lib')
git('config', 'filter.a=b.clean', f'touch {marker}; cat')
pathlib.Path('lib/f.txt').write_text('two\\n')
pathlib.Path('.gitmodules').write_text('[submodule "lib"]\\n\\tpath = lib\\n\\turl = ./lib\\n')
git('add', '.gitmodules', 'lib', cwd='.')
"""


@pytest.mark.long
def test_a_filter_of_a_repository_an_agent_made_never_runs_whatever_its_name(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    # swarm looks for work left in a submodule with `git status` in it, under its config: the
    # filter ran, outside any --sandbox, in the run and in every `swarm clean`.
    marker = tmp_path / "own-repo-filter-ran"
    agent = argv_toml([*write_agent(OWN_REPO_FILTER), str(marker)])
    text = f'[[task]]\nid = "t"\nprompt = "p"\nagent = {agent}\n'
    assert swarm(repo, "run", manifest(repo, text)).returncode == 1
    assert "left work in submodule lib" in str(status_json(repo)["t"]["reason"])
    assert "submodule lib holds work no commit records" in swarm(repo, "clean").stdout
    assert not marker.exists()
    lib = repo.parent / "repo.swarm" / "t" / "lib"
    subprocess.run(["git", "status"], cwd=lib, check=True, capture_output=True)
    assert marker.exists()  # the attack is real: git there runs it


@pytest.mark.long
@pytest.mark.parametrize("path", ["../up", "/abs", ".", "a/../../up"])
def test_a_gitmodules_naming_a_path_outside_the_worktree_fails_no_task_nor_clean(
    tmp_path: Path, write_agent: AgentFactory, path: str
) -> None:
    # Anyone can commit one (an agent's task landed, the file hidden from its own worktree):
    # git refuses to list such a path, which failed every later task and `swarm clean`.
    repo = make_repo(
        tmp_path / "repo", {".gitmodules": f'[submodule "up"]\n\tpath = {path}\n\turl = ./up\n'}
    )
    agent = argv_toml(write_agent("open('own.txt', 'w').write('own work')\n"))
    text = f'[defaults]\nagent = {agent}\n[[task]]\nid = "t"\nprompt = "p"\n'
    out = swarm(repo, "run", manifest(repo, text))
    assert out.returncode == 0, out.stdout + out.stderr
    assert status_json(repo)["t"]["state"] == "done"
    assert git(repo, "show", "swarm/t:own.txt") == "own work"
    out = swarm(repo, "clean", "--yes")
    assert out.returncode == 0, out.stdout + out.stderr
    assert not (repo.parent / "repo.swarm" / "t").exists()


# Declares a submodule whose path holds terminal escapes, and leaves a file in it.
ESCAPING_SUBMODULE = r"""
import os, subprocess
name = "m\x1b]0;PWNED\x07\x1b[2J\x1b[32mALL CLEAN\x1b[0m"
subprocess.run(["git", "update-index", "--add", "--cacheinfo", f"160000,{'a' * 40},{name}"],
               check=True)
with open(".gitmodules", "w") as f:
    f.write(f'[submodule "m"]\n\tpath = "{name}"\n\turl = ./m\n')
os.makedirs(name)
open(os.path.join(name, "left.txt"), "w").write("work\n")
"""


@pytest.mark.long
def test_clean_names_what_an_agent_made_without_its_terminal_escapes(
    repo: Path, write_agent: AgentFactory
) -> None:
    agent = argv_toml(write_agent(ESCAPING_SUBMODULE))
    swarm(repo, "run", manifest(repo, f'[[task]]\nid = "t"\nprompt = "p"\nagent = {agent}\n'))
    for args in (("clean",), ("clean", "--yes")):
        out = swarm(repo, *args)
        assert "holds work no commit records" in out.stdout, (args, out.stdout)
        assert not {"\x1b", "\x07"} & set(out.stdout + out.stderr), args


# Plants a `core.fsmonitor` and a hook in the git dir of submodule `lib` as checked out in a
# linked worktree: git keeps that one in the worktree's admin dir, under `modules/`. The
# admin dirs are found by glob: the user's `wt`, or an idle task's.
PLANT_IN_ADMIN_DIR = """
import pathlib, subprocess, sys
marker, admin = sys.argv[1:]
common = pathlib.Path(subprocess.run(['git', 'rev-parse', '--path-format=absolute',
    '--git-common-dir'], capture_output=True, text=True, check=True).stdout.strip())
for lib in common.glob(f'worktrees/{admin}/modules/lib'):
    with (lib / 'config').open('a') as fh:
        fh.write(f'[core]\\n\\tfsmonitor = touch {marker}; false #\\n')
    hook = lib / 'hooks' / 'post-checkout'
    hook.write_text(f'#!/bin/sh\\ntouch {marker}\\n')
    hook.chmod(0o755)
pathlib.Path('own.txt').write_text('own work\\n')
"""


def test_a_config_planted_in_a_linked_worktrees_submodule_git_dir_is_undone(
    super_repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    # Only `.git/modules/` was watched: your `git status` in your linked worktree ran it.
    linked = tmp_path / "wt"
    git(super_repo, "worktree", "add", "-q", str(linked))
    git(linked, "-c", "protocol.file.allow=always", "submodule", "update", "--init", "-q")
    lib = super_repo / ".git" / "worktrees" / "wt" / "modules" / "lib"
    config = lib / "config"
    before = config.read_bytes()
    marker = tmp_path / "planted-code-ran"
    agent = argv_toml([*write_agent(PLANT_IN_ADMIN_DIR), str(marker), "wt"])
    text = f'[[task]]\nid = "t"\nprompt = "p"\nagent = {agent}\n'
    assert swarm(super_repo, "run", manifest(super_repo, text)).returncode == 1
    row = status_json(super_repo)["t"]
    assert row["state"] == "failed", row
    assert "worktrees/wt/modules/lib/config" in str(row["reason"]), row
    assert config.read_bytes() == before
    assert not (lib / "hooks" / "post-checkout").exists()
    subprocess.run(["git", "status"], cwd=linked, check=True, capture_output=True)
    assert not marker.exists()
    # The attack is real: with the setting back, your git there runs it.
    config.write_bytes(before + f"[core]\n\tfsmonitor = touch {marker}; false #\n".encode())
    subprocess.run(["git", "status"], cwd=linked, check=True, capture_output=True)
    assert marker.exists()


@pytest.mark.long
def test_a_config_planted_in_an_idle_tasks_submodule_git_dir_is_undone_its_own_is_not(
    super_repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    # Task a populates lib (its git dir made in a's admin dir: its own work, no violation);
    # task b, run after it, plants a setting there.
    marker = tmp_path / "planted-code-ran"
    populate = argv_toml([*write_agent(AGENT), "populate"])
    plant = argv_toml([*write_agent(PLANT_IN_ADMIN_DIR), str(marker), "*"])
    text = (
        f'[[task]]\nid = "a"\nprompt = "p"\nagent = {populate}\n'
        f'[[task]]\nid = "b"\nprompt = "p"\nagent = {plant}\ndepends_on = ["a"]\n'
    )
    assert swarm(super_repo, "run", manifest(super_repo, text)).returncode == 1
    rows = status_json(super_repo)
    assert rows["a"]["state"] == "done", rows["a"]
    assert rows["b"]["state"] == "failed", rows["b"]
    assert "/modules/lib/config" in str(rows["b"]["reason"]), rows["b"]
    (config,) = (super_repo / ".git" / "worktrees").glob("*/modules/lib/config")
    assert "fsmonitor" not in config.read_text()
    assert not (config.parent / "hooks" / "post-checkout").exists()
    subprocess.run(["git", "status"], cwd=super_repo.parent / "repo.swarm" / "a", check=True,
                   capture_output=True)  # fmt: skip
    assert not marker.exists()
