"""`swarm clean` killed while git's own `worktree remove` deletes a worktree's files.

A locked worktree, or one whose submodules are checked out, is removed by git, which deletes
the files before the admin dir and its index: the next clean finishes that removal and never
commits the files it had deleted. Files you deleted yourself are still committed.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import GIT_SUBCOMMAND, add_submodule, git, git_first_on_path, make_repo
from tests.test_run import swarm, wait_for
from worktree_swarm.cleanup.findings import Action, Finding, Kind
from worktree_swarm.cleanup.fixes import apply
from worktree_swarm.git import removing
from worktree_swarm.git.repo import open_repo

FILES = {f"d/f{i}.txt": f"{i}\n" for i in range(5)}
FINISHED = "finished the removal a killed swarm began (nothing in it committed), removed"
GONE = ("one.txt", "d/f0.txt")  # what git deleted before it was killed, or you did


def finished_task(tmp_path: Path, *, submodule: bool = False) -> tuple[Path, Path, str]:
    """A repository whose run's task `one` is done; its worktree and its branch's tip.

    With *submodule*, the repository has the submodule `lib`, checked out in the worktree.
    """
    repo = make_repo(tmp_path / "repo", FILES)
    if submodule:
        add_submodule(repo, tmp_path / "lib-origin")
    out = swarm(repo, "run", "--agent", "scripted", "-t", "one=write one.txt: 1")
    assert out.returncode == 0, out.stdout + out.stderr
    path = repo.parent / "repo.swarm" / "one"
    if submodule:
        git(path, "-c", "protocol.file.allow=always", "submodule", "update", "-q", "--init")
        assert (path / "lib" / "README.md").is_file()
    return repo, path, git(repo, "rev-parse", "swarm/one")


def killed_in_git_remove(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    repo: Path,
    *args: str,
    gone: tuple[str, ...] = GONE,
) -> None:
    """`swarm *args*` in *repo*, SIGKILLed with its git once `git worktree remove` deleted *gone*.

    A `git` first on PATH deletes those files of the worktree it is given (git's removal cut
    short), says so, and waits to be killed; the real git runs everything else.
    """
    deleted = tmp_path / "deleted"
    names = " ".join(f'"$last"/{name}' for name in gone)
    git_first_on_path(tmp_path, monkeypatch, lambda real: (
        GIT_SUBCOMMAND
        + 'case " $* " in *" worktree remove "*) removing=1;; *) removing=0;; esac\n'
        + 'if [ "$sub" = worktree ] && [ $removing = 1 ]; then\n'
        + f"  for last; do :; done; rm -f {names}; touch {shlex.quote(str(deleted))}\n"
        + "  exec sleep 600\nfi\n"
        + f'exec {real} "$@"\n'
    ))  # fmt: skip
    argv = [sys.executable, "-m", "worktree_swarm.cli", *args]
    proc = subprocess.Popen(
        argv, cwd=repo, start_new_session=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: deleted.exists() or proc.poll() is not None, what="git's removal")
        assert proc.poll() is None, f"{args} ended before its `git worktree remove`"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    (tmp_path / "gitbin" / "git").unlink()


def worktrees(repo: Path) -> list[str]:
    """The paths `git worktree list` names."""
    listed = git(repo, "worktree", "list", "--porcelain").splitlines()
    return [line.removeprefix("worktree ") for line in listed if line.startswith("worktree ")]


@pytest.mark.parametrize(
    ("kind", "first", "again"),
    [
        ("locked", ("--force",), ()),
        ("locked", ("--force",), ("--force",)),
        ("submodules", (), ()),
    ],
)
def test_a_clean_killed_in_gits_own_removal_is_finished_without_committing_deletions(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    first: tuple[str, ...],
    again: tuple[str, ...],
) -> None:
    repo, path, tip = finished_task(tmp_path, submodule=kind == "submodules")
    if kind == "locked":
        git(repo, "worktree", "lock", "--reason", "on a USB disk", str(path))
    killed_in_git_remove(tmp_path, monkeypatch, repo, "clean", "--yes", "--keep-branches", *first)
    # Killed half-way: files gone that the index of the registered worktree still lists.
    assert not any((path / name).exists() for name in GONE)
    assert (path / "d" / "f1.txt").is_file()
    assert sorted(git(path, "ls-files", "--deleted").split()) == sorted(GONE)

    out = swarm(repo, "clean", "--yes", "--keep-branches", *again)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"done: {FINISHED}" in out.stdout, out.stdout
    assert git(repo, "rev-parse", "swarm/one") == tip  # nothing committed, deletions least
    assert not path.exists()
    assert worktrees(repo) == [str(repo)]
    assert not (repo / ".git" / "worktrees" / "one").exists()
    assert git(repo, "worktree", "prune", "--dry-run", "--verbose") == ""
    assert list((repo / ".git" / "swarm" / "removing").iterdir()) == []
    doctor = swarm(repo, "doctor")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr


@pytest.mark.parametrize("before", ["nothing", "a killed clean"])
def test_files_you_deleted_in_a_locked_worktree_are_still_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, before: str
) -> None:
    repo, path, tip = finished_task(tmp_path)
    if before == "a killed clean":
        # Its record stays: you finished that removal yourself, and made the worktree again.
        git(repo, "worktree", "lock", str(path))
        killed_in_git_remove(tmp_path, monkeypatch, repo, "clean", "--yes", "--force")
        git(repo, "worktree", "remove", "--force", "--force", str(path))
        git(repo, "worktree", "add", "-q", str(path), "swarm/one")
    git(repo, "worktree", "lock", "--reason", "mine", str(path))
    for name in GONE:
        (path / name).unlink()

    out = swarm(repo, "clean", "--yes", "--force", "--keep-branches")
    assert out.returncode == 0, out.stdout + out.stderr
    assert FINISHED not in out.stdout
    checkpoint = git(repo, "rev-parse", "swarm/one")
    assert git(repo, "log", "-1", "--format=%s", checkpoint) == "swarm: checkpoint one (clean)"
    assert git(repo, "diff", "--name-status", tip, checkpoint).splitlines() == [
        f"D\t{name}" for name in sorted(GONE)
    ]
    assert not path.exists()
    assert worktrees(repo) == [str(repo)]


@pytest.mark.parametrize("kind", ["locked", "unlocked"])
def test_a_removal_killed_after_git_deleted_the_git_file_is_finished_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    # git deletes in the order it reads the directory: its `.git` file may go first.
    repo, path, tip = finished_task(tmp_path, submodule=kind == "unlocked")
    if kind == "locked":
        git(repo, "worktree", "lock", str(path))
    args = ("clean", "--yes", "--keep-branches", *(["--force"] if kind == "locked" else []))
    killed_in_git_remove(tmp_path, monkeypatch, repo, *args, gone=(".git", "one.txt"))
    assert not (path / ".git").exists()
    assert (path / "d" / "f1.txt").is_file()

    out = swarm(repo, "clean", "--yes", "--keep-branches")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"done: {FINISHED}" in out.stdout, out.stdout
    assert git(repo, "rev-parse", "swarm/one") == tip
    assert not path.exists()
    assert worktrees(repo) == [str(repo)]
    assert git(repo, "for-each-ref", "refs/swarm/rescued/") == ""  # nothing left to rescue
    doctor = swarm(repo, "doctor")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr


@pytest.mark.parametrize("then", ["removed", "made again"])
def test_doctor_deletes_a_record_that_names_no_removal_any_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, then: str
) -> None:
    # A swarm killed once git was done left its record; nothing deleted it.
    repo, path, _ = finished_task(tmp_path)
    git(repo, "worktree", "lock", str(path))
    killed_in_git_remove(tmp_path, monkeypatch, repo, "clean", "--yes", "--force")
    records = repo / ".git" / "swarm" / "removing"
    assert [p.name for p in records.iterdir()] == ["one"]
    git(repo, "worktree", "remove", "--force", "--force", str(path))  # git's removal, done
    if then == "made again":  # under the same name: an admin dir without the token
        git(repo, "worktree", "add", "-q", str(path), "swarm/one")
        git(repo, "worktree", "lock", str(path))  # yours: doctor leaves it
        (repo / ".git" / "worktrees" / "one" / "swarm-removing").write_text("another token")
    assert [p.name for p in records.iterdir()] == ["one"]
    swarm(repo, "doctor")  # a dry run changes nothing
    assert [p.name for p in records.iterdir()] == ["one"]

    out = swarm(repo, "doctor", "--yes")
    assert out.returncode == 0, out.stdout + out.stderr
    assert list(records.iterdir()) == []
    if then == "made again":
        assert (path / "one.txt").is_file()
        assert worktrees(repo) == [str(repo), str(path)]
        assert not (repo / ".git" / "worktrees" / "one" / "swarm-removing").exists()


def killed_doctor_removing_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, gone: tuple[str, ...]
) -> tuple[Path, Path]:
    """A worktree no task owns, `extra`, whose removal by `swarm doctor --yes` was killed.

    It has a submodule checked out, so git removes it; git had deleted *gone*. The repository
    and the worktree's path.
    """
    repo, _, _ = finished_task(tmp_path, submodule=True)
    path = repo.parent / "repo.swarm" / "extra"
    git(repo, "worktree", "add", "-q", "-b", "extra", str(path))
    git(path, "-c", "protocol.file.allow=always", "submodule", "update", "-q", "--init")
    killed_in_git_remove(tmp_path, monkeypatch, repo, "doctor", "--yes", gone=gone)
    assert not (path / ".git").exists()
    assert (path / "d" / "f1.txt").is_file()
    return repo, path


def test_doctor_finishes_a_removal_of_a_worktree_no_task_owns_after_git_deleted_its_git_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # git takes it for prunable: pruned, its files were left for a rescue to save.
    repo, path = killed_doctor_removing_extra(tmp_path, monkeypatch, gone=(".git", "d/f0.txt"))
    assert "prunable" in git(repo, "worktree", "list", "--porcelain")

    look = swarm(repo, "doctor")
    assert f"{path}: prunable" in look.stdout, look.stdout
    assert "would: finish removing it (nothing in it is committed)" in look.stdout, look.stdout
    out = swarm(repo, "doctor", "--yes")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"done: {FINISHED}" in out.stdout, out.stdout
    assert not path.exists()
    assert str(path) not in worktrees(repo)
    assert git(repo, "for-each-ref", "refs/swarm/rescued/") == ""  # nothing left to rescue
    assert list((repo / ".git" / "swarm" / "removing").iterdir()) == []


def test_a_prune_planned_for_a_worktree_a_killed_swarm_was_removing_finishes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Planned before the record was looked at (as an older plan was): its files not rescued.
    repo, path = killed_doctor_removing_extra(tmp_path, monkeypatch, gone=(".git",))
    planned = Finding(
        kind=Kind.WORKTREE, target=str(path), reason="prunable", action=Action.PRUNE,
        fix="prune it from git's worktree list",
    )  # fmt: skip
    [result] = apply(open_repo(repo), [planned], store=None, force=False)
    assert (result.fixed, result.detail) == (True, FINISHED)
    assert not path.exists()
    assert str(path) not in worktrees(repo)
    assert list((repo / ".git" / "swarm" / "removing").iterdir()) == []


def test_doctor_finishes_a_removal_of_a_locked_worktree_whose_directory_git_had_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Locked, git never calls it prunable: it was kept as on a drive that may be unmounted.
    repo, _, _ = finished_task(tmp_path)
    path = repo.parent / "repo.swarm" / "extra"
    git(repo, "worktree", "add", "-q", "-b", "extra", str(path))
    git(repo, "worktree", "lock", str(path))
    killed_in_git_remove(tmp_path, monkeypatch, repo, "doctor", "--yes", "--force")
    shutil.rmtree(path)  # the rest of git's removal: all its files, then the directory

    look = swarm(repo, "doctor")
    assert f"{path}: its directory is missing; a killed swarm was removing it" in look.stdout
    out = swarm(repo, "doctor", "--yes")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"done: {FINISHED}" in out.stdout, out.stdout
    assert str(path) not in worktrees(repo)
    assert list((repo / ".git" / "swarm" / "removing").iterdir()) == []


def test_a_removal_is_recorded_for_its_own_worktree_and_forgotten_after(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    r = open_repo(repo)
    records = repo / ".git" / "swarm" / "removing"
    removing.sweep(r)  # none made yet: nothing to sweep, nothing made
    with removing.recorded(r, tmp_path / "never-added"):  # git has no files of it to delete
        assert not records.exists()
    a, b = tmp_path / "a", tmp_path / "b"
    for path in (a, b):
        git(repo, "worktree", "add", "-q", "--detach", str(path))

    with removing.recorded(r, a):
        assert removing.interrupted(r, a) == repo / ".git" / "worktrees" / "a"
        assert removing.interrupted(r, b) is None  # a record names one worktree

    assert removing.interrupted(r, a) is None
    assert list(records.iterdir()) == []
    assert not (repo / ".git" / "worktrees" / "a" / removing.TOKEN).exists()


def test_sweep_deletes_garbage_records_and_keeps_what_it_cannot_read(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    r = open_repo(repo)
    git(repo, "worktree", "add", "-q", "--detach", str(tmp_path / "held"))
    admin = repo / ".git" / "worktrees" / "held"
    (admin / removing.TOKEN).mkdir()  # no token file git's removal could have left
    records = repo / ".git" / "swarm" / "removing"
    records.mkdir(parents=True)
    (records / "garbage").write_text("{not json")
    (records / "no-token").write_text('{"path": "/x", "token": 7}')
    (records / "a-directory").mkdir()
    (records / "held").write_text('{"path": "/x", "token": "t"}')

    removing.sweep(r)

    assert sorted(p.name for p in records.iterdir()) == ["a-directory", "held"]
    # Swarm's own write of a record for it fails whole: no file left half-made beside it.
    with pytest.raises(IsADirectoryError), removing.recorded(r, tmp_path / "held"):
        pytest.fail("the removal ran without its record")
    assert sorted(p.name for p in admin.iterdir() if p.name.startswith(removing.TOKEN)) == [
        removing.TOKEN
    ]


def test_sweep_goes_on_past_a_leftover_it_cannot_remove(tmp_path: Path) -> None:
    # One leftover that would not go (a directory under a token's name) stopped the sweep of
    # every admin dir after it, and of the rest of its own.
    repo = make_repo(tmp_path / "repo")
    r = open_repo(repo)
    for name in ("a", "b", "c"):
        git(repo, "worktree", "add", "-q", "--detach", str(tmp_path / name))
        admin = repo / ".git" / "worktrees" / name
        (admin / f"{removing.TOKEN}.stuck").mkdir()
        (admin / f"{removing.TOKEN}.tmp").write_text("a write killed before its rename")
    removing.sweep(r)
    for name in ("a", "b", "c"):
        admin = repo / ".git" / "worktrees" / name
        left = sorted(p.name for p in admin.iterdir() if p.name.startswith(removing.TOKEN))
        assert left == [f"{removing.TOKEN}.stuck"], name
