"""A task's own submodule config that makes git run a program: put back by those settings only.

`git submodule update` in a task worktree writes that submodule's config in the worktree's
admin dir (``submodule.<x>.active``, ``core.worktree``, fetch refspecs), and the agent may
change it further: a planted program-running setting there is put back, the rest kept.
Real repositories, real `git submodule` and `git config` commands.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import add_submodule, git, make_repo
from worktree_swarm.guard.submodule_dirs import kept, runs_code
from worktree_swarm.guard.surface_entry import Entry

LABEL = "worktrees/t/modules/lib/config"


def _own_submodule(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A repository, its task-like worktree ``t`` with lib checked out, and lib's config."""
    repo = make_repo(tmp_path / "repo")
    add_submodule(repo, tmp_path / "lib-origin")
    worktree = tmp_path / "t"
    git(repo, "worktree", "add", "-q", "-b", "t", str(worktree))
    git(worktree, "-c", "protocol.file.allow=always", "submodule", "update", "--init", "-q")
    return repo, worktree, repo / ".git" / LABEL


def _entry(path: Path) -> Entry:
    return Entry(kind="file", data=path.read_bytes(), bits=0o644)


def _get(config: Path, name: str) -> list[str]:
    out = subprocess.run(
        ["git", "config", "--file", str(config), "--get-all", name],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return out.stdout.splitlines()


def _put_back(repo: Path, config: Path, old: Entry) -> Entry | None:
    """What the guard puts *config* back to, having taken *old* for its baseline."""
    new = _entry(config)
    assert runs_code(repo, LABEL, old, new)
    back = kept(repo, LABEL, old, new)
    assert back is not None
    config.write_bytes(back.data)
    return back


def test_a_program_planted_in_a_known_submodule_config_goes_the_agents_other_changes_stay(
    tmp_path: Path,
) -> None:
    # The whole config went back to the baseline: what the agent's git wrote there with it
    # (its fetch refspec, a submodule of lib's made active) was lost too.
    repo, worktree, config = _own_submodule(tmp_path)
    old = _entry(config)
    marker = tmp_path / "planted-program-ran"
    lib = worktree / "lib"
    git(lib, "config", "core.fsmonitor", f"touch {marker}; false #")
    git(lib, "config", "remote.origin.tagOpt", "--no-tags")
    git(lib, "config", "--add", "remote.origin.fetch", "+refs/tags/*:refs/tags/*")
    git(lib, "config", "submodule.inner.active", "true")

    _put_back(repo, config, old)

    assert _get(config, "core.fsmonitor") == []
    assert _get(config, "remote.origin.tagOpt") == ["--no-tags"]
    assert _get(config, "remote.origin.fetch")[-1] == "+refs/tags/*:refs/tags/*"
    assert _get(config, "submodule.inner.active") == ["true"]
    git(lib, "status")
    assert not marker.exists()


def test_a_program_setting_the_baseline_had_is_put_back_to_its_values(tmp_path: Path) -> None:
    repo, worktree, config = _own_submodule(tmp_path)
    lib = worktree / "lib"
    git(lib, "config", "core.sshCommand", "ssh -v")
    git(lib, "config", "--add", "credential.helper", "store")
    git(lib, "config", "--add", "credential.helper", "cache")
    old = _entry(config)
    git(lib, "config", "core.sshCommand", "touch planted")
    git(lib, "config", "--unset-all", "credential.helper")
    git(lib, "config", "credential.helper", "!touch planted")
    git(lib, "config", "remote.origin.tagOpt", "--no-tags")

    back = _put_back(repo, config, old)

    assert _get(config, "core.sshCommand") == ["ssh -v"]
    assert _get(config, "credential.helper") == ["store", "cache"]  # in their order
    assert _get(config, "remote.origin.tagOpt") == ["--no-tags"]
    assert back.bits == old.bits


def test_a_config_whose_includes_changed_goes_back_whole(tmp_path: Path) -> None:
    # An include written back at its section's end would override what it did not before.
    repo, worktree, config = _own_submodule(tmp_path)
    lib = worktree / "lib"
    git(lib, "config", "include.path", str(tmp_path / "yours.inc"))
    old = _entry(config)
    git(lib, "config", "--add", "include.path", str(tmp_path / "planted.inc"))
    git(lib, "config", "remote.origin.tagOpt", "--no-tags")

    assert _put_back(repo, config, old) == old


def test_a_config_with_a_program_key_of_no_value_goes_back_whole(tmp_path: Path) -> None:
    # swarm's git writes a value for every key it adds: `required` alone (true) would not be
    # what it was.
    repo, worktree, config = _own_submodule(tmp_path)
    with config.open("a") as out:
        out.write('[filter "x"]\n\trequired\n')
    old = _entry(config)
    git(worktree / "lib", "config", "filter.x.required", "false")
    git(worktree / "lib", "config", "remote.origin.tagOpt", "--no-tags")

    assert _put_back(repo, config, old) == old


def test_a_setting_turned_into_a_git_lfs_extension_gets_its_value_before(tmp_path: Path) -> None:
    # Judged as git-lfs reads it (a value's second line is a key of its own), the note was
    # taken away with the plant: the value it had before, no program, was lost.
    repo, worktree, config = _own_submodule(tmp_path)
    lib = worktree / "lib"
    git(lib, "config", "user.note", "yours")
    old = _entry(config)
    git(lib, "config", "user.note", "x\nlfs.extension.nl.clean=touch planted")
    git(lib, "config", "remote.origin.tagOpt", "--no-tags")

    _put_back(repo, config, old)

    assert _get(config, "user.note") == ["yours"]
    assert _get(config, "remote.origin.tagOpt") == ["--no-tags"]
