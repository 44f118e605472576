"""`swarm clean`'s dry run says what `swarm clean --yes` then does, worktree and branch alike."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import git, make_repo
from tests.test_run import swarm


def test_a_copy_file_still_as_copied_is_no_work_to_the_dry_run_nor_to_a_merged_branch(
    tmp_path: Path,
) -> None:
    # The `.env` a task's `copy` brought (not ignored) is never committed: the removal left
    # it, but the plan counted it as work, saying "commit ..., then remove it" and keeping
    # the merged branch as "not merged".
    repo = make_repo(tmp_path / "repo")
    (repo / ".env").write_text("PORT=1\n")
    (repo / "swarm.toml").write_text('copy = [".env"]\n')
    git(repo, "add", "swarm.toml")
    git(repo, "commit", "-q", "-m", "copy .env")
    out = swarm(repo, "run", "--agent", "scripted", "-t", "a=write a.txt: 1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp_path / "repo.swarm" / "a" / ".env").read_text() == "PORT=1\n"
    git(repo, "merge", "-q", "--ff-only", "swarm/a")
    dry = swarm(repo, "clean")
    said = [line.strip() for line in dry.stdout.splitlines() if line.startswith("    ")]
    assert said == ["would: remove it", "would: delete it"], dry.stdout
    assert "swarm/a: task a is done; merged into main" in dry.stdout
    out = swarm(repo, "clean", "--yes")
    assert out.returncode == 0, out.stdout + out.stderr
    said = [line.strip() for line in out.stdout.splitlines() if line.startswith("    ")]
    assert said == ["done: removed", f"done: deleted (was {git(repo, 'rev-parse', 'main')[:12]})"]
    assert not (tmp_path / "repo.swarm").exists()
    assert "swarm/a" not in git(repo, "branch", "--list")


def test_dry_run_is_the_default_said_explicitly_and_refused_with_yes(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    out = swarm(repo, "run", "--agent", "scripted", "-t", "a=write a.txt: 1")
    assert out.returncode == 0, out.stdout + out.stderr
    for command in ("clean", "doctor"):
        default = swarm(repo, command)
        explicit = swarm(repo, command, "--dry-run")
        assert (explicit.returncode, explicit.stdout) == (default.returncode, default.stdout)
        both = swarm(repo, command, "--dry-run", "--yes")
        assert both.returncode == 2
        assert both.stderr == "swarm: --dry-run and --yes exclude each other; give one of them\n"
    assert "would: remove it" in swarm(repo, "clean", "--dry-run").stdout
    assert (tmp_path / "repo.swarm" / "a").is_dir()  # nothing was removed
