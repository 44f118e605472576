"""`swarm merge`: prediction equals real merges, safe order, checks, targets, your checkout."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import filelock
import pytest

from tests.conftest import (
    GIT_SUBCOMMAND,
    agent_command,
    agent_python,
    as_owner_only,
    git,
    git_first_on_path,
    hang_git_at,
    make_repo,
)
from tests.mergekit import (
    LINES,
    RUN_ID,
    Brancher,
    conflicting,
    edit,
    merge_results,
    real_merge,
    record_run,
    states,
)
from tests.test_run import checkout_snapshot, pid_alive, status_json, swarm, wait_for
from tests.test_shim import PRELUDE, marked
from worktree_swarm.core.errors import ExitCode
from worktree_swarm.core.models import TaskState
from worktree_swarm.core.paths import store_path
from worktree_swarm.core.task import Task
from worktree_swarm.git import repo as repo_module
from worktree_swarm.git.repo import open_repo
from worktree_swarm.infra import supervisor
from worktree_swarm.infra.store import Store
from worktree_swarm.merge import conflicts


@pytest.fixture
def base_repo(tmp_path: Path) -> Path:
    return make_repo(
        tmp_path / "repo",
        {"f.txt": LINES, "g.txt": "g\n" * 20, "d.txt": "d\n", "keep.txt": "k\n"},
    )


@pytest.fixture
def brancher(base_repo: Path) -> Iterator[Brancher]:
    b = Brancher(base_repo)
    yield b
    b.close()


def two_tasks(repo: Path, brancher: Brancher, base: str) -> None:
    """Tasks one and two of a recorded run, each adding its own file on *base*."""
    brancher.branch("swarm/one", base, {"one.txt": "1\n"})
    brancher.branch("swarm/two", base, {"two.txt": "2\n"})
    record_run(repo, [("one", base), ("two", base)], base=base)


def two_tasks_and_dev(repo: Path, brancher: Brancher) -> str:
    """:func:`two_tasks` on HEAD, and a branch `dev` of yours there; HEAD's commit."""
    base = git(repo, "rev-parse", "HEAD")
    two_tasks(repo, brancher, base)
    git(repo, "branch", "dev", base)
    return base


def one_merged(repo: Path, brancher: Brancher) -> Path:
    """Tasks one and two recorded, one merged: the run's integration worktree."""
    two_tasks(repo, brancher, git(repo, "rev-parse", "HEAD"))
    assert swarm(repo, "merge", "one").returncode == 0
    return next(repo.parent.glob("repo.swarm/_integration-*"))


# The issue's cases: (task, changes, renames).
CASES: list[tuple[str, dict[str, str | None], list[tuple[str, str]]]] = [
    ("hunk-top", {"f.txt": edit(1, "top")}, []),
    ("hunk-bottom", {"f.txt": edit(10, "bottom")}, []),
    ("same-a", {"f.txt": edit(5, "five a")}, []),
    ("same-b", {"f.txt": edit(5, "five b")}, []),
    ("rename", {}, [("g.txt", "moved/g2.txt")]),
    ("edit-g", {"g.txt": "g\n" * 19 + "changed\n"}, []),
    ("add-a", {"new.txt": "from a\n"}, []),
    ("add-b", {"new.txt": "from b\n"}, []),
    ("delete", {"d.txt": None}, []),
    ("modify", {"d.txt": "d changed\n"}, []),
    ("file-x", {"x": "a file\n"}, []),
    ("dir-x", {"x/y": "a file in a directory\n"}, []),
    ("other", {"other.txt": "unrelated\n"}, []),
]


def test_a_merge_leaves_a_live_agent_of_a_task_named_merge_alone(
    base_repo: Path, brancher: Brancher
) -> None:
    # No new task may be named `merge` (its logs would be in the merge's own folder), but a
    # run from before that was refused may have one running: a merge ended its agent (SIGTERM).
    two_tasks(base_repo, brancher, git(base_repo, "rev-parse", "HEAD"))
    logs = base_repo / ".git" / "swarm" / "runs" / RUN_ID / "merge"
    logs.mkdir(parents=True)
    marks = {"agent": logs / "attempt-1.exit.json", "check": logs / "checks.exit.json"}
    running = {
        what: subprocess.Popen(
            [*agent_python(), "-c", "import time; time.sleep(600)"],
            env={**os.environ, "SWARM_SHIM": str(record)},
            start_new_session=True,
        )
        for what, record in marks.items()
    }
    try:
        merged = swarm(base_repo, "merge", "one")
        assert merged.returncode == 0, merged.stdout + merged.stderr
        # A killed merge's check is ended: SIGTERM, or SIGKILL when a loaded machine did not
        # let it die within the half second of grace.
        assert running["check"].wait(timeout=30) in {-signal.SIGTERM, -signal.SIGKILL}
        assert running["agent"].poll() is None
    finally:
        for proc in running.values():
            proc.kill()
            proc.wait()


def make_cases(
    repo: Path,
    brancher: Brancher,
    cases: list[tuple[str, dict[str, str | None], list[tuple[str, str]]]] = CASES,
) -> str:
    base = git(repo, "rev-parse", "HEAD")
    for name, changes, renames in cases:
        brancher.branch(f"swarm/{name}", base, changes, renames=renames)
    record_run(repo, [(name, base) for name, _, _ in cases], base=base)
    return base


def kill_merge_once(repo: Path, argv: list[str], ready: Callable[[], bool], *, what: str) -> None:
    """Run `swarm merge` (*argv*) in a session of its own and SIGKILL all of it once *ready*."""
    merging = subprocess.Popen(argv, cwd=repo, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        wait_for(ready, what=what)
    finally:
        os.killpg(merging.pid, signal.SIGKILL)
        merging.wait(timeout=30)


def test_a_prediction_asked_in_batches_of_a_path_or_two_predicts_the_same(
    base_repo: Path, brancher: Brancher, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Thousands of long names at once (a codemod) passed git a command line past the
    # kernel's limit: the prediction failed with E2BIG.
    base = make_cases(base_repo, brancher)
    repo = open_repo(base_repo)
    names = [name for name, _, _ in CASES]
    branches = [
        conflicts.Branch(name=n, tip=git(base_repo, "rev-parse", f"swarm/{n}"), base=base)
        for n in names
    ]
    whole = conflicts.predict(repo, branches, target=base)
    monkeypatch.setattr(repo_module, "ARGS_BYTES", 24)
    assert [len(b) for b in repo_module.in_batches(["a" * 10, "b" * 10, "c" * 30, "d"])] == [
        2,
        1,
        1,
    ]
    batched = conflicts.predict(repo, branches, target=base)
    assert batched.pairs == whole.pairs
    assert batched.target == whole.target
    assert whole.pairs  # (the cases do conflict)


@pytest.mark.parametrize("target_moves", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_predicted_matrix_equals_real_merges(
    base_repo: Path, brancher: Brancher, *, target_moves: bool
) -> None:
    base = make_cases(base_repo, brancher)
    target = base
    if target_moves:
        target = brancher.branch("moved-target", base, {"f.txt": edit(1, "target top")})
    repo = open_repo(base_repo)
    tips = {name: git(base_repo, "rev-parse", f"swarm/{name}") for name, _, _ in CASES}
    branches = [conflicts.Branch(name=n, tip=t, base=base) for n, t in tips.items()]

    prediction = conflicts.predict(repo, branches, target=target)

    names = list(tips)
    real_pairs = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            files = real_merge(base_repo, tips[a], tips[b])
            if files is not None:
                real_pairs[a, b] = files
    real_target = {}
    for name in names:
        files = real_merge(base_repo, target, tips[name])
        if files is not None:
            real_target[name] = files
    predicted_pairs = {k: tuple(sorted(v)) for k, v in prediction.pairs.items()}
    predicted_target = {k: tuple(sorted(v)) for k, v in prediction.target.items()}
    assert predicted_pairs == real_pairs
    assert predicted_target == real_target
    # The cases conflict the way the issue expects.
    assert set(real_pairs) == {
        ("same-a", "same-b"),
        ("add-a", "add-b"),
        ("delete", "modify"),
        ("file-x", "dir-x"),
    }
    assert real_target == ({"hunk-top": ("f.txt",)} if target_moves else {})
    # Most pairs were decided without a git process.
    assert prediction.merge_trees < len(names) * (len(names) - 1) // 2


def test_merge_lands_every_non_conflicting_branch(base_repo: Path, brancher: Brancher) -> None:
    make_cases(base_repo, brancher)
    before = checkout_snapshot(base_repo)
    main_file = (base_repo / "f.txt").read_text()

    out = swarm(base_repo, "merge", "--json")

    assert out.returncode == 1, out.stderr  # some tasks conflict
    report = json.loads(out.stdout)
    conflicted = set(report["conflicted"])
    merged = set(report["merged"])
    # One side of each conflicting pair lands, the other is reported with its files.
    assert conflicted == {"same-b", "add-b", "modify", "dir-x"}
    assert merged == {name for name, _, _ in CASES} - conflicted
    files = {r["task_id"]: r["files"] for r in report["results"]}
    assert files["same-b"] == ["f.txt"]
    assert files["add-b"] == ["new.txt"]
    # Non-conflicting branches are merged before any conflicting one.
    order = report["order"]
    pairs = {p["a"] for p in report["prediction"]["pairs"]} | {
        p["b"] for p in report["prediction"]["pairs"]
    }
    first_conflicting = min(order.index(n) for n in pairs)
    assert all(order.index(n) < first_conflicting for n in set(order) - pairs)

    branch = "swarm/integration-20240101-000000-abcd"
    assert report["target"]["branch"] == branch
    assert report["target"]["commit"] == git(base_repo, "rev-parse", branch)
    tree = git(base_repo, "ls-tree", "-r", "--name-only", branch).split()
    assert {"moved/g2.txt", "new.txt", "x", "other.txt"} <= set(tree)
    assert "d.txt" not in tree
    assert git(base_repo, "show", f"{branch}:f.txt").splitlines()[0] == "top"
    # Merge results are facts beside the state: every task stays done (and can get a PR).
    assert set(states(base_repo).values()) == {"done"}
    results = merge_results(base_repo)
    assert {n for n, r in results.items() if r == "merged"} == merged
    assert {n for n, r in results.items() if r == "conflicted"} == conflicted
    # The user's checkout is untouched.
    assert checkout_snapshot(base_repo) == before
    assert (base_repo / "f.txt").read_text() == main_file
    worktree = Path(report["target"]["worktree"])
    assert worktree.parent == base_repo.parent / "repo.swarm"
    assert git(worktree, "status", "--porcelain") == ""

    # A second merge has nothing left that was not tried against this branch.
    again = swarm(base_repo, "merge")
    assert again.returncode == 0, again.stderr
    assert "prediction: 0 branches" in again.stdout


def test_a_branch_already_in_the_target_is_merged_as_it_is_and_each_result_names_its_commit(
    base_repo: Path, brancher: Brancher
) -> None:
    base = git(base_repo, "rev-parse", "HEAD")
    brancher.branch("swarm/landed", base, {"landed.txt": "by hand\n"})
    brancher.branch("swarm/fresh", base, {"fresh.txt": "new\n"})
    git(base_repo, "merge", "-q", "--no-ff", "--no-edit", "swarm/landed")  # the user landed it
    record_run(base_repo, [("landed", base), ("fresh", base)], base=base)
    start = git(base_repo, "rev-parse", "HEAD")

    out = swarm(base_repo, "merge", "--json")

    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    results = {r["task_id"]: r for r in report["results"]}
    assert report["order"] == ["landed", "fresh"]
    assert results["landed"]["outcome"] == "merged"
    assert results["landed"]["reason"] == "already in target"
    assert results["landed"]["commit"] == start  # nothing made: the target as it was
    branch = report["target"]["branch"]
    assert results["fresh"]["commit"] == git(base_repo, "rev-parse", branch)
    assert git(base_repo, "rev-parse", f"{branch}^1") == start
    assert git(base_repo, "log", "--format=%s", "-1", branch) == (
        "swarm: merge task fresh (swarm/fresh)"
    )


def test_failing_check_undoes_the_merge_and_the_rest_carry_on(
    base_repo: Path, brancher: Brancher, tmp_path: Path
) -> None:
    base = git(base_repo, "rev-parse", "HEAD")
    brancher.branch("swarm/good", base, {"good.txt": "ok\n"})
    brancher.branch("swarm/breaks", base, {"broken.txt": "oops\n"})
    brancher.branch("swarm/later", base, {"later.txt": "ok\n", "more.txt": "x\n" * 50})
    record_run(base_repo, [("good", base), ("breaks", base), ("later", base)], base=base)
    check = tmp_path / "check.py"
    check.write_text(
        "import pathlib, sys\nsys.exit(1 if pathlib.Path('broken.txt').exists() else 0)\n"
    )
    before = checkout_snapshot(base_repo)

    out = swarm(base_repo, "merge", "--check", f"{agent_command()} {check}")

    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert any(
        ln.startswith("failed      breaks  check `") and "merge undone" in ln for ln in lines
    )
    assert sum(ln.startswith("merged") and "checks passed" in ln for ln in lines) == 2
    assert lines[-1].startswith("2 merged, 0 conflicted, 1 failed, 0 skipped; swarm/integration-")
    tree = git(base_repo, "ls-tree", "-r", "--name-only", "swarm/integration-" + RUN_ID)
    assert "broken.txt" not in tree
    assert {"good.txt", "later.txt"} <= set(tree.split())
    assert merge_results(base_repo) == {"good": "merged", "breaks": "failed", "later": "merged"}
    assert set(states(base_repo).values()) == {"done"}
    assert checkout_snapshot(base_repo) == before


def test_dry_run_predicts_and_creates_nothing(base_repo: Path, brancher: Brancher) -> None:
    make_cases(base_repo, brancher, CASES[:4])
    refs = git(base_repo, "for-each-ref")
    worktrees = git(base_repo, "worktree", "list")

    out = swarm(base_repo, "merge", "--dry-run")

    assert out.returncode == 1
    assert "  conflict  same-a <-> same-b: f.txt" in out.stdout.splitlines()
    assert out.stdout.splitlines()[-1] == "dry run: nothing was merged"
    assert git(base_repo, "for-each-ref") == refs
    assert git(base_repo, "worktree", "list") == worktrees
    assert set(states(base_repo).values()) == {"done"}
    # No lock, and nothing under the run's directory: no merge log, no guard baseline.
    state = base_repo / ".git" / "swarm"
    assert not (state / "merge.lock").exists()
    assert not list(state.glob("runs/*/merge"))


def test_a_dry_run_names_twenty_conflicting_pairs_and_counts_the_rest(
    base_repo: Path, brancher: Brancher
) -> None:
    # 8 branches editing one file printed all 28 pairs (50 would print 1,225 lines).
    base = git(base_repo, "rev-parse", "HEAD")
    names = [f"t{i}" for i in range(8)]
    for name in names:
        brancher.branch(f"swarm/{name}", base, {"f.txt": f"{name}\n"})
    record_run(base_repo, [(name, base) for name in names], base=base)
    out = swarm(base_repo, "merge", "--dry-run")
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert sum(line.startswith("  conflict  ") for line in lines) == 20
    assert "  ... and 8 conflicting pairs more (`--json` lists each)" in lines
    shown = json.loads(swarm(base_repo, "merge", "--dry-run", "--json").stdout)
    assert len(shown["prediction"]["pairs"]) == 28


def test_into_a_branch_not_checked_out_moves_it(base_repo: Path, brancher: Brancher) -> None:
    base = git(base_repo, "rev-parse", "HEAD")
    git(base_repo, "branch", "release", base)
    two_tasks(base_repo, brancher, base)
    before = checkout_snapshot(base_repo)
    worktrees = git(base_repo, "worktree", "list", "--porcelain")

    out = swarm(base_repo, "merge", "--into", "release", "--strategy", "squash", "--json")

    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["target"]["commit"] == git(base_repo, "rev-parse", "release")
    assert report["target"]["worktree"] is None
    log = git(base_repo, "log", "--format=%P %s", f"{base}..release").splitlines()
    assert len(log) == 2
    assert all(len(line.split(" swarm: ")[0].split()) == 1 for line in log)  # squashed: 1 parent
    assert set(git(base_repo, "ls-tree", "--name-only", "release").split()) >= {
        "one.txt",
        "two.txt",
    }
    # The temporary worktree is gone, the checkout untouched, no integration branch.
    assert git(base_repo, "worktree", "list", "--porcelain") == worktrees
    assert checkout_snapshot(base_repo) == before
    assert git(base_repo, "branch", "--list", "swarm/integration-*") == ""


def test_a_merge_into_a_branch_killed_half_way_records_nothing_that_did_not_land(
    base_repo: Path, brancher: Brancher, tmp_path: Path
) -> None:
    base = git(base_repo, "rev-parse", "HEAD")
    git(base_repo, "branch", "release", base)
    two_tasks(base_repo, brancher, base)
    # The check of the second merge says it started, then waits to be killed there.
    check = tmp_path / "check.py"
    check.write_text(
        "import os, pathlib, sys, time\n"
        f"if pathlib.Path('two.txt').exists() and pathlib.Path('one.txt').exists():\n"
        f"    pathlib.Path({str(tmp_path / 'second')!r}).write_text(str(os.getpid()))\n"
        "    time.sleep(600)\n"
    )
    merging = subprocess.Popen(
        [sys.executable, "-m", "worktree_swarm.cli", "merge", "--into", "release", "--check",
         f"{agent_command()} {check}"],
        cwd=base_repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        second = tmp_path / "second"
        wait_for(lambda: second.exists() and second.read_text() != "", what="the second check")
        # One merge made and checked: recorded merged, it would claim a place on `release`.
        assert "merged" not in merge_results(base_repo).values()
        assert "checking" in {r["merge_result"] for r in status_json(base_repo).values()}
        # `swarm clean` keeps its branch for the merge at work, not for one "cut off"
        looked = swarm(base_repo, "clean").stdout
        assert "its merge into release is unchecked while a `swarm merge` runs" in looked, looked
    finally:
        os.killpg(merging.pid, signal.SIGKILL)
        merging.wait(timeout=30)
    assert git(base_repo, "rev-parse", "release") == base
    # No merge checks it any more: status and clean say so, and what to do.
    assert "cut off" in {r["merge_result"] for r in status_json(base_repo).values()}
    text = swarm(base_repo, "status").stdout
    assert (
        "merge into release cut off in its checks: run `swarm merge --into release` again" in text
    )
    looked = swarm(base_repo, "clean").stdout
    assert "was cut off; run `swarm merge --into release` again first" in looked, looked
    check_pid = int((tmp_path / "second").read_text())
    # The next merge lands both (and first ends the check the killed one left running).
    out = swarm(base_repo, "merge", "--into", "release")
    assert not pid_alive(check_pid)
    assert out.returncode == 0, out.stdout + out.stderr
    assert merge_results(base_repo) == {"one": "merged", "two": "merged"}
    assert {"one.txt", "two.txt"} <= set(
        git(base_repo, "ls-tree", "--name-only", "release").split()
    )


def test_a_check_that_edits_a_tracked_file_leaves_the_next_merge_free_to_go(
    base_repo: Path, brancher: Brancher, tmp_path: Path
) -> None:
    # A formatter-like check appends to a tracked file: its edit is not the merge's, and left
    # in the merge worktree it would make the next `swarm merge` refuse to start.
    base = git(base_repo, "rev-parse", "HEAD")
    brancher.branch("swarm/one", base, {"one.txt": "1\n"})
    brancher.branch("swarm/two", base, {"two.txt": "2\n", "f.txt": "changed by two\n"})
    record_run(base_repo, [("one", base), ("two", base)], base=base)
    check = tmp_path / "check.py"
    check.write_text(
        "import pathlib\np = pathlib.Path('f.txt')\np.write_text(p.read_text() + 'checked\\n')\n"
    )
    command = f"{agent_command()} {check}"
    first = swarm(base_repo, "merge", "--check", command, "one")
    assert first.returncode == 0, first.stdout + first.stderr
    second = swarm(base_repo, "merge", "--check", command)
    assert second.returncode == 0, second.stdout + second.stderr
    assert merge_results(base_repo) == {"one": "merged", "two": "merged"}
    integration = "swarm/integration-" + RUN_ID
    assert git(base_repo, "show", f"{integration}:f.txt") == "changed by two"
    worktree = base_repo.parent / f"{base_repo.name}.swarm" / f"_integration-{RUN_ID}"
    assert git(worktree, "status", "--porcelain") == ""


def test_clean_leaves_the_integration_worktree_to_a_merge_that_is_using_it(
    base_repo: Path, brancher: Brancher
) -> None:
    base = git(base_repo, "rev-parse", "HEAD")
    two_tasks(base_repo, brancher, base)
    assert swarm(base_repo, "merge").returncode == 0
    integration = "swarm/integration-" + RUN_ID
    worktree = base_repo.parent / f"{base_repo.name}.swarm" / f"_integration-{RUN_ID}"
    assert worktree.is_dir()
    merging = filelock.FileLock(base_repo / ".git" / "swarm" / "merge.lock")
    with merging:  # as `swarm merge` holds it while it works there
        out = swarm(base_repo, "clean", "--yes", "--force")
        assert out.returncode == 0, out.stdout + out.stderr
        assert "a `swarm merge` is using it" in out.stdout
        assert worktree.is_dir()
        assert git(base_repo, "rev-parse", "--verify", "-q", integration)
    out = swarm(base_repo, "clean", "--yes", "--force")
    assert out.returncode == 0, out.stdout + out.stderr
    assert not worktree.exists()


def test_a_second_merge_says_one_is_running_before_predicting_anything(
    base_repo: Path, brancher: Brancher
) -> None:
    base = git(base_repo, "rev-parse", "HEAD")
    two_tasks(base_repo, brancher, base)
    (base_repo / ".git" / "swarm").mkdir(exist_ok=True)
    merging = filelock.FileLock(base_repo / ".git" / "swarm" / "merge.lock")
    with merging:  # as a `swarm merge` at work holds it
        out = swarm(base_repo, "merge")
        dry = swarm(base_repo, "merge", "--dry-run")

    assert (out.returncode, out.stdout) == (ExitCode.LOCKED, ""), out.stdout + out.stderr
    assert out.stderr.startswith("swarm: another `swarm merge`")
    assert len(out.stderr.splitlines()) == 1
    assert dry.returncode == 0, dry.stdout + dry.stderr  # a dry run takes no lock
    assert dry.stdout.startswith("prediction: 2 branches")
    assert merge_results(base_repo) == {"one": None, "two": None}


def test_a_file_name_holding_the_list_separator_reads_as_one_name(
    base_repo: Path, brancher: Brancher
) -> None:
    # Unquoted, "a.txt, b.txt" and " c.txt" in a list of conflicts read as three other files.
    base = git(base_repo, "rev-parse", "HEAD")
    names = ("a.txt, b.txt", " c.txt")
    brancher.branch("swarm/one", base, dict.fromkeys(names, "one\n"))
    brancher.branch("swarm/two", base, dict.fromkeys(names, "two\n"))
    record_run(base_repo, [("one", base), ("two", base)], base=base)
    dry = swarm(base_repo, "merge", "--dry-run")
    assert dry.returncode == 1  # a predicted conflict, dry.stdout + dry.stderr
    assert 'conflict  one <-> two: " c.txt", "a.txt, b.txt"' in dry.stdout, dry.stdout
    out = swarm(base_repo, "merge")
    assert out.returncode == 1, out.stdout + out.stderr
    assert any(
        line.startswith("conflicted") and line.endswith('in " c.txt", "a.txt, b.txt"')
        for line in out.stdout.splitlines()
    ), out.stdout


def test_a_file_in_the_way_of_a_directory_rename_is_a_conflict_named_and_resolvable(
    tmp_path: Path,
) -> None:
    # Git stops on it without an unmerged index entry, naming it only in its messages.
    repo = make_repo(tmp_path / "repo", {"d/x.txt": "x\n", "d/y.txt": "y\n"})
    brancher = Brancher(repo)
    base = git(repo, "rev-parse", "HEAD")
    brancher.branch("swarm/a", base, {}, renames=[("d", "e")])
    brancher.branch("swarm/b", base, {"d/new.txt": "b\n"})
    brancher.branch("swarm/c", base, {"e/new.txt": "c\n"})
    brancher.close()
    resolver = tmp_path / "resolver.py"
    resolver.write_text("import sys\nsys.exit(0)\n")
    tasks = [("a", base), ("b", base), ("c", base)]
    record_run(repo, tasks, base=base, agent=[*agent_python(), str(resolver), "{prompt_file}"])
    assert swarm(repo, "merge", "b", "c").returncode == 0

    dry = json.loads(swarm(repo, "merge", "a", "--dry-run", "--json").stdout)
    out = swarm(repo, "merge", "a", "--json")
    resolved = swarm(repo, "merge", "a", "--resolve", "--json")

    files = ["e/new.txt", "d/new.txt"]
    assert dry["prediction"]["against_target"] == [{"task_id": "a", "files": files}]
    assert out.returncode == 1
    assert json.loads(out.stdout)["results"][0] | {"checks": None} == {
        "task_id": "a",
        "outcome": "conflicted",
        "reason": f"conflicts with swarm/integration-{RUN_ID} in e/new.txt, d/new.txt",
        "files": files,
        "commit": None,
        "checks": None,
    }
    assert resolved.returncode == 0, resolved.stderr
    result = json.loads(resolved.stdout)["results"][0]
    assert result["reason"] == "conflicts in e/new.txt, d/new.txt resolved by its agent"


def test_a_gitmodules_git_refuses_names_the_task_that_brought_it_in_the_merges_it_stops(
    tmp_path: Path,
) -> None:
    # Git refuses `update = !cmd` in .gitmodules (it runs nothing), and so every later merge
    # touching a gitlink: "fatal: invalid value for 'submodule.sub2.update'", naming no task.
    repo = make_repo(tmp_path / "repo")
    git(repo, "update-index", "--add", "--cacheinfo", f"160000,{'1' * 40},sub")
    git(repo, "commit", "-q", "-m", "a submodule")
    base = git(repo, "rev-parse", "HEAD")
    brancher = Brancher(repo)
    modules = '[submodule "sub2"]\n\tpath = sub2\n\turl = ../x\n\tupdate = !touch pwned\n'
    evil = brancher.branch("swarm/evil", base, {".gitmodules": modules})
    brancher.branch("swarm/bump", base, {})
    git(brancher.scratch, "update-index", "--cacheinfo", f"160000,{'2' * 40},sub")
    git(brancher.scratch, "commit", "-q", "--amend", "-m", "bump sub")
    git(repo, "branch", "-f", "swarm/bump", git(brancher.scratch, "rev-parse", "HEAD"))
    brancher.close()
    record_run(repo, [("evil", base), ("bump", base)], base=base)
    assert swarm(repo, "merge", "evil").returncode == 0
    merge = git(repo, "log", "-1", "--format=%h", "--abbrev=12", f"swarm/integration-{RUN_ID}")
    assert merge != evil[:12]

    out = swarm(repo, "merge", "bump", "--json")

    reason = json.loads(out.stdout)["results"][0]["reason"]
    assert out.returncode == 1
    assert reason.startswith("git merge: fatal: invalid value for 'submodule.sub2.update'")
    assert reason.endswith(
        f" (the .gitmodules on swarm/integration-{RUN_ID} came with task evil's merge {merge}:"
        " fix or revert it)"
    )
    assert not (repo.parent / "repo.swarm" / f"_integration-{RUN_ID}" / "pwned").exists()


@pytest.mark.parametrize(
    "title", ["merge task bump (tidy)", "merge task bump (swarm/bump)\n\nand its submodule"]
)
def test_a_gitmodules_squashed_in_by_a_task_titled_like_another_s_merge_names_its_own_task(
    tmp_path: Path, title: str
) -> None:
    # A squash commit's subject holds the task's title: one that reads like another task's
    # merge ("swarm: merge task bump (...") had the .gitmodules blamed on that task.
    repo = make_repo(tmp_path / "repo")
    git(repo, "update-index", "--add", "--cacheinfo", f"160000,{'1' * 40},sub")
    git(repo, "commit", "-q", "-m", "a submodule")
    base = git(repo, "rev-parse", "HEAD")
    brancher = Brancher(repo)
    modules = '[submodule "sub2"]\n\tpath = sub2\n\turl = ../x\n\tupdate = !touch pwned\n'
    brancher.branch("swarm/evil", base, {".gitmodules": modules})
    brancher.branch("swarm/bump", base, {})
    git(brancher.scratch, "update-index", "--cacheinfo", f"160000,{'2' * 40},sub")
    git(brancher.scratch, "commit", "-q", "--amend", "-m", "bump sub")
    git(repo, "branch", "-f", "swarm/bump", git(brancher.scratch, "rev-parse", "HEAD"))
    brancher.close()
    record_run(repo, [("evil", base), ("bump", base)], base=base, titles={"evil": title})
    assert swarm(repo, "merge", "evil", "--strategy", "squash").returncode == 0
    squash = git(repo, "log", "-1", "--format=%h", "--abbrev=12", f"swarm/integration-{RUN_ID}")

    out = swarm(repo, "merge", "bump", "--strategy", "squash", "--json")

    reason = json.loads(out.stdout)["results"][0]["reason"]
    assert out.returncode == 1
    assert reason.endswith(
        f" (the .gitmodules on swarm/integration-{RUN_ID} came with task evil's merge {squash}:"
        " fix or revert it)"
    ), reason


def test_conflicted_file_names_are_quoted_one_per_entry_in_merge_output(
    base_repo: Path, brancher: Brancher
) -> None:
    # A name with a newline printed raw would break the line, and cut the list where a
    # result keeps only its first line.
    base = git(base_repo, "rev-parse", "HEAD")
    odd = "-n\nx.txt"
    brancher.branch("swarm/one", base, {odd: "one\n", "f.txt": edit(2, "one")})
    brancher.branch("swarm/two", base, {odd: "two\n", "f.txt": edit(2, "two")})
    record_run(base_repo, [("one", base), ("two", base)], base=base)
    out = swarm(base_repo, "merge")
    assert out.returncode == 1, out.stdout + out.stderr
    quoted = '"-n\\nx.txt"'
    assert f"conflict  one <-> two: {quoted}, f.txt" in out.stdout, out.stdout
    assert any(
        line.startswith("conflicted") and line.endswith(f"in {quoted}, f.txt")
        for line in out.stdout.splitlines()
    ), out.stdout


@pytest.mark.parametrize("then", ["merged again", "branch deleted"])
def test_a_merge_killed_during_its_checks_is_checked_again_not_taken_as_landed(
    base_repo: Path, brancher: Brancher, tmp_path: Path, then: str
) -> None:
    base = git(base_repo, "rev-parse", "HEAD")
    brancher.branch("swarm/breaks", base, {"broken.txt": "oops\n"})
    record_run(base_repo, [("breaks", base)], base=base)
    started = tmp_path / "started"
    check = tmp_path / "check.py"
    check.write_text(  # fails on the merge; the first time it says so late: killed before
        "import os, pathlib, sys, time\n"
        f"started = pathlib.Path({str(started)!r})\n"
        "broken = pathlib.Path('broken.txt').exists()\n"
        "if broken and not started.exists():  # not the target's own check before merging\n"
        "    started.write_text(str(os.getpid()))\n"
        "    time.sleep(600)\n"
        "sys.exit(1 if broken else 0)\n"
    )
    argv = [
        sys.executable,
        "-m",
        "worktree_swarm.cli",
        "merge",
        "--check",
        f"{agent_command()} {check}",
    ]
    kill_merge_once(
        base_repo, argv, lambda: started.exists() and started.read_text() != "", what="its check"
    )
    integration = "swarm/integration-" + RUN_ID
    assert "broken.txt" in git(base_repo, "ls-tree", "--name-only", integration)  # unchecked

    check_pid = int(started.read_text())
    cleaned = swarm(base_repo, "clean", "--yes")  # the branch is not merged: it stays
    if then == "branch deleted":  # by hand: nothing to merge, the unchecked merge still goes
        git(base_repo, "branch", "-D", "swarm/breaks")
    out = subprocess.run(argv, cwd=base_repo, capture_output=True, text=True, check=False)

    assert "cut off" in cleaned.stdout, cleaned.stdout
    assert not pid_alive(check_pid)  # the killed merge's check, ended before the next one's
    assert "broken.txt" not in git(base_repo, "ls-tree", "--name-only", integration)
    if then == "merged again":
        assert out.returncode == 1, out.stdout + out.stderr
        assert merge_results(base_repo) == {"breaks": "failed"}
    else:
        assert merge_results(base_repo) == {"breaks": None}


@pytest.mark.parametrize("fixer", ["doctor", "clean"])
def test_doctor_removes_the_ref_moves_note_a_killed_merge_left_and_no_live_ones(
    base_repo: Path, brancher: Brancher, tmp_path: Path, fixer: str
) -> None:
    # A merge names the integration branch it moves to a running guard in a note under
    # .git/swarm/ref-moves; killed, it left the note there until some later run's guard read it.
    base = git(base_repo, "rev-parse", "HEAD")
    brancher.branch("swarm/slow", base, {"slow.txt": "s\n"})
    record_run(base_repo, [("slow", base)], base=base)
    started = tmp_path / "started"
    check = tmp_path / "check.py"
    check.write_text(  # hangs in the merge's check of the branch (not the target's own check)
        "import os, pathlib, time\n"
        f"started = pathlib.Path({str(started)!r})\n"
        "if pathlib.Path('slow.txt').exists() and not started.exists():\n"
        "    started.write_text(str(os.getpid()))\n"
        "    time.sleep(600)\n"
    )
    argv = [*MERGE, "merge", "--check", f"{agent_command()} {check}"]
    notes = base_repo / ".git" / "swarm" / "ref-moves"
    live = subprocess.Popen(argv, cwd=base_repo, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        wait_for(lambda: started.exists() and started.read_text() != "", what="its check")
        held = sorted(p.name for p in notes.iterdir())
        assert held, "the merge named no ref"
        found = doctor_findings(base_repo)  # a merge at work: its note is no leftover
        assert not [t for t in found if t.startswith(str(notes))], found
    finally:
        os.killpg(live.pid, signal.SIGKILL)
        live.wait(timeout=30)
    assert sorted(p.name for p in notes.iterdir()) == held  # left behind by the kill

    found = doctor_findings(base_repo)
    left = {t: f for t, f in found.items() if t.startswith(str(notes))}
    # The note of the branch it moved, and its guard's listening mark: one finding each.
    assert len(left) == len({name.split(".", 1)[0] for name in held}) == 2, left
    assert {(f["kind"], f["action"]) for f in left.values()} == {("lock", "forget_ref_moves")}
    # `swarm clean --yes` too: it said "0 problems left", and doctor then found the note.
    fixed = subprocess.run([*MERGE, fixer, "--yes"], cwd=base_repo, capture_output=True,
                           text=True, check=False)  # fmt: skip
    assert fixed.returncode in {0, 1}, fixed.stdout + fixed.stderr
    assert list(notes.iterdir()) == []


MERGE = [sys.executable, "-m", "worktree_swarm.cli"]


def doctor_findings(repo: Path) -> dict[str, dict[str, object]]:
    """`swarm doctor --json`'s findings, by target."""
    out = subprocess.run([*MERGE, "doctor", "--json"], cwd=repo, capture_output=True,
                         text=True, check=False)  # fmt: skip
    return {f["target"]: f for f in json.loads(out.stdout)["findings"]}


def test_a_merge_cut_off_in_its_checks_is_not_recorded_over_by_a_merge_into_another_branch(
    base_repo: Path, brancher: Brancher, tmp_path: Path
) -> None:
    base = git(base_repo, "rev-parse", "HEAD")
    breaks = brancher.branch("swarm/breaks", base, {"broken.txt": "oops\n"})
    brancher.branch("swarm/child", breaks, {"child.txt": "c\n"})
    started = tmp_path / "started"
    check = tmp_path / "check.py"
    check.write_text(  # the task's own check fails with its work; the first time it hangs
        "import os, pathlib, sys, time\n"
        f"started = pathlib.Path({str(started)!r})\n"
        "if not started.exists():\n"
        "    started.write_text(str(os.getpid()))\n"
        "    time.sleep(600)\n"
        "sys.exit(1)\n"
    )
    record_run(
        base_repo,
        [("breaks", base), ("child", breaks)],
        base=base,
        depends={"child": ["breaks"]},
        checks={"breaks": [[*agent_python(), str(check)]]},
    )
    git(base_repo, "branch", "rel", base)
    argv = [sys.executable, "-m", "worktree_swarm.cli", "merge", "breaks"]
    kill_merge_once(
        base_repo, argv, lambda: started.exists() and started.read_text() != "", what="its check"
    )
    integration = "swarm/integration-" + RUN_ID
    assert "broken.txt" in git(base_repo, "ls-tree", "--name-only", integration)  # unchecked

    into = swarm(base_repo, "merge", "--into", "rel")
    again = swarm(base_repo, "merge")

    assert into.returncode == 1, into.stdout + into.stderr
    assert (
        "skipped     breaks  its merge into swarm/integration-20240101-000000-abcd was cut off"
        " in its checks; run `swarm merge breaks` first (that merge is undone and checked again)"
    ) in into.stdout.splitlines(), into.stdout
    assert "skipped     child  depends on breaks, which did not merge into rel" in into.stdout
    assert git(base_repo, "rev-parse", "rel") == base
    assert again.returncode == 1, again.stdout + again.stderr
    assert "broken.txt" not in git(base_repo, "ls-tree", "--name-only", integration)
    assert merge_results(base_repo) == {"breaks": "failed", "child": None}


def test_a_merge_into_a_branch_cut_off_in_its_checks_keeps_no_task_from_merging_elsewhere(
    base_repo: Path, brancher: Brancher, tmp_path: Path
) -> None:
    # An `--into` merge moves its branch only at its end: killed in its checks, it leaves
    # nothing on any branch to undo, and its tasks merge elsewhere as if it never ran.
    base = two_tasks_and_dev(base_repo, brancher)
    git(base_repo, "branch", "rel", base)
    started, gate = tmp_path / "started", tmp_path / "gate"
    check = tmp_path / "check.py"
    check.write_text(  # after a merge (not on the target before any), says it started,
        # then waits for a gate opened only once swarm is killed
        "import os, pathlib, time\n"
        "if pathlib.Path('one.txt').exists() or pathlib.Path('two.txt').exists():\n"
        f"    pathlib.Path({str(started)!r}).write_text(str(os.getpid()))\n"
        f"    while not pathlib.Path({str(gate)!r}).exists():\n"
        "        time.sleep(0.05)\n"
    )
    argv = [sys.executable, "-m", "worktree_swarm.cli", "merge", "--into", "dev",
            "--check", f"{agent_command()} {check}"]  # fmt: skip
    try:
        kill_merge_once(
            base_repo, argv, lambda: started.exists() and started.read_text() != "",
            what="the check of the first merge",
        )  # fmt: skip
    finally:
        gate.touch()
    assert git(base_repo, "rev-parse", "dev") == base

    into = swarm(base_repo, "merge", "--into", "rel")
    assert into.returncode == 0, into.stdout + into.stderr
    assert merge_results(base_repo) == {"one": "merged", "two": "merged"}
    assert {"one.txt", "two.txt"} <= set(git(base_repo, "ls-tree", "--name-only", "rel").split())
    again = swarm(base_repo, "merge")  # and into the run's integration branch
    assert again.returncode == 0, again.stdout + again.stderr
    integration = "swarm/integration-" + RUN_ID
    assert {"one.txt", "two.txt"} <= set(
        git(base_repo, "ls-tree", "--name-only", integration).split()
    )
    assert git(base_repo, "rev-parse", "dev") == base


def test_what_the_checks_of_a_killed_merge_wrote_is_undone_by_the_next_merge(
    base_repo: Path, brancher: Brancher, tmp_path: Path
) -> None:
    base = git(base_repo, "rev-parse", "HEAD")
    brancher.branch("swarm/first", base, {"one.txt": "1\n"})
    brancher.branch("swarm/second", base, {"two.txt": "2\n"})
    record_run(base_repo, [("first", base), ("second", base)], base=base)
    assert swarm(base_repo, "merge", "first").returncode == 0
    worktree = next(base_repo.parent.glob("repo.swarm/_integration-*"))
    started = tmp_path / "started"
    check = tmp_path / "check.py"
    check.write_text(  # builds, edits a tracked file, and the first time hangs there: killed
        "import os, pathlib, time\n"
        "pathlib.Path('built').mkdir(exist_ok=True)\n"
        "pathlib.Path('built/out.txt').write_text('built\\n')\n"
        "pathlib.Path('keep.txt').write_text('formatted\\n')\n"
        f"started = pathlib.Path({str(started)!r})\n"
        "if pathlib.Path('two.txt').exists() and not started.exists():  # after the merge\n"
        "    started.write_text(str(os.getpid()))\n"
        "    time.sleep(600)\n"
    )
    argv = [sys.executable, "-m", "worktree_swarm.cli", "merge", "second", "--check",
            f"{agent_command()} {check}"]  # fmt: skip
    kill_merge_once(
        base_repo, argv, lambda: started.exists() and started.read_text() != "", what="its check"
    )
    assert (worktree / "built" / "out.txt").exists()

    out = subprocess.run(argv, cwd=base_repo, capture_output=True, text=True, check=False)

    assert out.returncode == 0, out.stdout + out.stderr
    assert merge_results(base_repo) == {"first": "merged", "second": "merged"}
    assert not (worktree / "built").exists()
    assert (worktree / "keep.txt").read_text() == "k\n"
    assert git(worktree, "status", "--porcelain") == ""


@pytest.mark.parametrize("strategy", ["merge", "squash"])
def test_a_merge_killed_once_committed_before_its_checks_is_checked_not_taken_as_landed(
    base_repo: Path, brancher: Brancher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    strategy: str,
) -> None:  # fmt: skip
    base = git(base_repo, "rev-parse", "HEAD")
    brancher.branch("swarm/breaks", base, {"broken.txt": "oops\n"})
    record_run(base_repo, [("breaks", base)], base=base)
    check = tmp_path / "check.py"
    check.write_text(
        "import pathlib, sys\nsys.exit(1 if pathlib.Path('broken.txt').exists() else 0)\n"
    )
    # git's first commit of the merge (`merge`, or `commit` after a squash) is made, then hangs.
    step = "merge" if strategy == "merge" else "commit"
    committed = hang_git_at(tmp_path, monkeypatch, step, after=True)
    argv = [sys.executable, "-m", "worktree_swarm.cli", "merge", "--strategy", strategy,
            "--check", f"{agent_command()} {check}"]  # fmt: skip
    kill_merge_once(base_repo, argv, committed.exists, what="the merge commit")
    integration = "swarm/integration-" + RUN_ID
    assert "broken.txt" in git(base_repo, "ls-tree", "--name-only", integration)  # unchecked

    out = subprocess.run(argv, cwd=base_repo, capture_output=True, text=True, check=False)

    assert out.returncode == 1, out.stdout + out.stderr
    assert merge_results(base_repo) == {"breaks": "failed"}
    assert "broken.txt" not in git(base_repo, "ls-tree", "--name-only", integration)


def test_your_commit_on_the_integration_branch_after_a_merge_killed_before_it_merged_is_kept(
    base_repo: Path, brancher: Brancher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Killed with its intent recorded but before its `git merge`: the next merge took your
    # commit on top (its parent the recorded start) for that merge, and reset it away.
    base = git(base_repo, "rev-parse", "HEAD")
    brancher.branch("swarm/task", base, {"task.txt": "t\n"})
    record_run(base_repo, [("task", base)], base=base)
    check = tmp_path / "check.py"
    check.write_text("")
    hung = hang_git_at(tmp_path, monkeypatch, "merge")
    argv = [sys.executable, "-m", "worktree_swarm.cli", "merge",
            "--check", f"{agent_command()} {check}"]  # fmt: skip
    kill_merge_once(base_repo, argv, hung.exists, what="the merge step")
    worktree = next(base_repo.parent.glob("repo.swarm/_integration-*"))
    (worktree / "fix.txt").write_text("my fix\n")
    git(worktree, "add", "fix.txt")
    git(worktree, "commit", "-qm", "my fix")
    mine = git(worktree, "rev-parse", "HEAD")

    out = subprocess.run(argv, cwd=base_repo, capture_output=True, text=True, check=False)

    assert out.returncode == 0, out.stdout + out.stderr
    integration = "swarm/integration-" + RUN_ID
    assert git(base_repo, "merge-base", "--is-ancestor", mine, integration) == ""
    assert "task.txt" in git(base_repo, "ls-tree", "--name-only", integration)


def test_your_commit_titled_like_the_killed_merge_s_task_is_not_taken_for_its_merge(
    base_repo: Path, brancher: Brancher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Killed before its `git merge`: your commit on top, another task's squash picked from
    # `rel`, was taken for that merge because the other task's title names it.
    base = git(base_repo, "rev-parse", "HEAD")
    brancher.branch("swarm/task", base, {"task.txt": "t\n"})
    brancher.branch("swarm/other", base, {"other.txt": "o\n"})
    titles = {"other": "merge task task (swarm/task) follow-up"}
    record_run(base_repo, [("task", base), ("other", base)], base=base, titles=titles)
    git(base_repo, "branch", "rel", base)
    squashed = swarm(base_repo, "merge", "--into", "rel", "--strategy", "squash", "other")
    assert squashed.returncode == 0, squashed.stdout + squashed.stderr
    check = tmp_path / "check.py"
    check.write_text("")
    hung = hang_git_at(tmp_path, monkeypatch, "merge")
    argv = [sys.executable, "-m", "worktree_swarm.cli", "merge",
            "--check", f"{agent_command()} {check}", "task"]  # fmt: skip
    kill_merge_once(base_repo, argv, hung.exists, what="the merge step")
    worktree = next(base_repo.parent.glob("repo.swarm/_integration-*"))
    git(worktree, "cherry-pick", "rel")
    mine = git(worktree, "rev-parse", "HEAD")
    assert git(worktree, "log", "-1", "--format=%s").startswith("swarm: merge task task (")

    out = subprocess.run(argv, cwd=base_repo, capture_output=True, text=True, check=False)

    assert out.returncode == 0, out.stdout + out.stderr
    integration = "swarm/integration-" + RUN_ID
    assert git(base_repo, "merge-base", "--is-ancestor", mine, integration) == ""
    assert "task.txt" in git(base_repo, "ls-tree", "--name-only", integration)


def test_a_task_the_target_holds_already_is_recorded_merged_only_once_its_checks_pass(
    base_repo: Path, brancher: Brancher, tmp_path: Path
) -> None:
    # Brought in by its dependent (merged alone first), it was recorded merged ("already in
    # target") with its own checks never run.
    base = git(base_repo, "rev-parse", "HEAD")
    parent = brancher.branch("swarm/parent", base, {"parent.txt": "p\n"})
    brancher.branch("swarm/child", parent, {"child.txt": "c\n"})
    record_run(base_repo, [("parent", base), ("child", parent)], base=base)
    git(base_repo, "branch", "dev", "swarm/child")  # holds both tasks' work
    check = tmp_path / "check.py"
    # Fails for that task alone: the target's own checks (before any merge) pass.
    check.write_text("import os, sys\nsys.exit(os.environ.get('SWARM_TASK_ID') == 'parent')\n")

    out = swarm(base_repo, "merge", "parent", "--into", "dev",
                "--check", f"{agent_command()} {check}")  # fmt: skip

    assert out.returncode == 1, out.stdout + out.stderr
    assert "which holds its work already" in out.stdout, out.stdout
    assert merge_results(base_repo)["parent"] == "failed"


def test_a_killed_merge_into_another_branch_never_touches_the_integration_worktree(
    base_repo: Path, brancher: Brancher, tmp_path: Path
) -> None:
    base = git(base_repo, "rev-parse", "HEAD")
    for name in ("first", "second", "third"):
        brancher.branch(f"swarm/{name}", base, {f"{name}.txt": f"{name}\n"})
    record_run(base_repo, [(n, base) for n in ("first", "second", "third")], base=base)
    git(base_repo, "branch", "dev", base)
    assert swarm(base_repo, "merge", "first").returncode == 0
    worktree = next(base_repo.parent.glob("repo.swarm/_integration-*"))
    (worktree / "keep.txt").write_text("the user's edit\n")  # uncommitted, the user's
    started = tmp_path / "started"
    check = tmp_path / "check.py"
    check.write_text(
        "import os, pathlib, time\n"
        f"started = pathlib.Path({str(started)!r})\n"
        "if pathlib.Path('second.txt').exists() and not started.exists():\n"
        "    started.write_text(str(os.getpid()))\n"
        "    time.sleep(600)\n"
    )
    argv = [sys.executable, "-m", "worktree_swarm.cli", "merge", "second", "--into", "dev",
            "--check", f"{agent_command()} {check}"]  # fmt: skip
    kill_merge_once(
        base_repo, argv, lambda: started.exists() and started.read_text() != "", what="its check"
    )
    scratch = [p for p in worktree_list(base_repo) if p.name.startswith("_merge-")]
    assert len(scratch) == 1  # the killed merge's temporary worktree

    plain = swarm(base_repo, "merge", "third")
    again = subprocess.run(argv, cwd=base_repo, capture_output=True, text=True, check=False)

    assert plain.returncode == 2, plain.stdout + plain.stderr
    assert "with uncommitted changes" in plain.stderr
    assert (worktree / "keep.txt").read_text() == "the user's edit\n"
    assert again.returncode == 0, again.stdout + again.stderr
    assert "second.txt" in git(base_repo, "ls-tree", "--name-only", "dev")
    assert not [p for p in worktree_list(base_repo) if p.name.startswith("_merge-")]


def worktree_list(repo: Path) -> list[Path]:
    listed = git(repo, "worktree", "list", "--porcelain").splitlines()
    return [Path(line.removeprefix("worktree ")) for line in listed if line.startswith("worktree ")]


def test_a_merge_killed_during_its_checks_is_undone_by_a_merge_of_another_task(
    base_repo: Path, brancher: Brancher, tmp_path: Path
) -> None:
    base = git(base_repo, "rev-parse", "HEAD")
    brancher.branch("swarm/breaks", base, {"broken.txt": "oops\n"})
    brancher.branch("swarm/other", base, {"other.txt": "fine\n"})
    record_run(base_repo, [("breaks", base), ("other", base)], base=base)
    started = tmp_path / "started"
    check = tmp_path / "check.py"
    check.write_text(  # fails on breaks' merge; the first time it hangs there: killed
        "import os, pathlib, sys, time\n"
        f"started = pathlib.Path({str(started)!r})\n"
        "broken = pathlib.Path('broken.txt').exists()\n"
        "if broken and not started.exists():\n"
        "    started.write_text(str(os.getpid()))\n"
        "    time.sleep(600)\n"
        "sys.exit(1 if broken else 0)\n"
    )
    command = f"{agent_command()} {check}"
    argv = [sys.executable, "-m", "worktree_swarm.cli", "merge", "breaks", "--check", command]
    kill_merge_once(
        base_repo, argv, lambda: started.exists() and started.read_text() != "", what="its check"
    )
    integration = "swarm/integration-" + RUN_ID

    out = swarm(base_repo, "merge", "other")  # breaks is not named

    assert out.returncode == 0, out.stdout + out.stderr
    tree = git(base_repo, "ls-tree", "--name-only", integration).split()
    assert "broken.txt" not in tree
    assert "other.txt" in tree
    assert merge_results(base_repo) == {"breaks": None, "other": "merged"}
    # Not left "checking": the next merge of done tasks merges and checks it anew.
    again = swarm(base_repo, "merge", "--check", command)
    assert again.returncode == 1, again.stdout + again.stderr
    assert merge_results(base_repo) == {"breaks": "failed", "other": "merged"}


def test_an_integration_worktree_a_killed_merge_left_unpopulated_is_repaired_not_refused(
    base_repo: Path, brancher: Brancher
) -> None:
    worktree = one_merged(base_repo, brancher)
    integration = "swarm/integration-" + RUN_ID
    files = git(base_repo, "ls-tree", "-r", "--name-only", integration)
    # What a merge killed while it checked the worktree out leaves: no index, files missing.
    (Path(git(worktree, "rev-parse", "--git-dir")) / "index").unlink()
    (worktree / "one.txt").unlink()
    out = swarm(base_repo, "merge", "two")
    assert out.returncode == 0, out.stdout + out.stderr
    after = set(git(base_repo, "ls-tree", "-r", "--name-only", integration).split())
    assert after == set(files.split()) | {"two.txt"}  # nothing committed as deleted
    assert git(worktree, "status", "--porcelain") == ""


@pytest.mark.parametrize("strategy", ["merge", "squash"])
def test_files_a_git_merge_killed_half_way_wrote_do_not_block_the_next_merge(
    base_repo: Path, brancher: Brancher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    strategy: str,
) -> None:  # fmt: skip
    worktree = one_merged(base_repo, brancher)
    # A git merge killed while it wrote the worktree: some of the task's files are there, its
    # index and commit (and MERGE_HEAD) are not. The next merge refused the worktree as holding
    # your uncommitted changes; so did every one after it (a full disk there did the same).
    written = worktree / "two.txt"
    hang_git_at(tmp_path, monkeypatch, "merge", then="printf '2\\n' > two.txt; exec sleep 600")
    argv = [sys.executable, "-m", "worktree_swarm.cli", "merge", "--strategy", strategy, "two"]
    kill_merge_once(base_repo, argv, written.exists, what="the half-written merge")
    monkeypatch.undo()  # the real git again

    out = swarm(base_repo, "merge", "--strategy", strategy, "two")

    assert out.returncode == 0, out.stdout + out.stderr
    assert merge_results(base_repo) == {"one": "merged", "two": "merged"}
    assert git(worktree, "status", "--porcelain") == ""


def test_a_merge_stopped_by_a_full_disk_says_to_merge_again_and_that_merge_lands_it(
    small_disk: Path,
) -> None:
    repo = make_repo(small_disk / "repo", {"f.txt": "f\n"})
    brancher = Brancher(repo)
    base = git(repo, "rev-parse", "HEAD")
    brancher.branch("swarm/one", base, {"one.txt": "1\n"})
    brancher.branch("swarm/two", base, {"two.bin": os.urandom(1 << 20).hex()})  # 2 MB
    brancher.close()
    record_run(repo, [("one", base), ("two", base)], base=base)
    assert swarm(repo, "merge", "one").returncode == 0
    free = shutil.disk_usage(small_disk).free
    filler = small_disk / "filler.bin"
    filler.write_bytes(b"x" * (free - (512 << 10)))  # room for the state, not for two's file

    full = swarm(repo, "merge")
    filler.unlink()
    again = swarm(repo, "merge")

    assert full.returncode == 1, full.stdout + full.stderr
    # What failed first, named: git writing the merge, not swarm's note of its ref moves.
    assert "swarm: cannot write the repository: `git " in full.stderr, full.stderr
    assert "No space left on device" in full.stderr
    # `swarm resume` carries on a run: after a merge it finds nothing to do.
    assert full.stderr.rstrip().endswith("free some space, then run `swarm merge` again")
    assert again.returncode == 0, again.stdout + again.stderr
    assert merge_results(repo) == {"one": "merged", "two": "merged"}


@pytest.mark.parametrize("into", [False, True])
def test_a_merge_worktree_a_killed_git_worktree_add_left_locked_is_unlocked_and_used(
    base_repo: Path, brancher: Brancher, *, into: bool
) -> None:
    # A `git worktree add` killed before its checkout finished leaves the worktree locked
    # `initializing`. A killed --into merge's one then failed every later merge --into (git
    # refuses to remove a locked worktree); the integration worktree stayed locked, so `swarm
    # clean` kept it and `swarm doctor` took it for half made and deleted it.
    base = two_tasks_and_dev(base_repo, brancher)
    root = base_repo.parent / "repo.swarm"
    path = root / (f"_merge-{RUN_ID}-abcdef" if into else f"_integration-{RUN_ID}")
    made = ["--detach", str(path), base] if into else ["-b", f"swarm/integration-{RUN_ID}",
                                                      str(path), base]  # fmt: skip
    git(base_repo, "worktree", "add", "-q", "--lock", "--reason", "initializing", *made)
    (Path(git(path, "rev-parse", "--git-dir")) / "index").unlink()  # its checkout cut off

    out = swarm(base_repo, "merge", *(["--into", "dev"] if into else []))

    assert out.returncode == 0, out.stdout + out.stderr
    assert merge_results(base_repo) == {"one": "merged", "two": "merged"}
    assert "locked" not in git(base_repo, "worktree", "list", "--porcelain")
    doctor = swarm(base_repo, "doctor")
    assert "initializing" not in doctor.stdout + doctor.stderr  # nothing taken for half made


def _killed_in_its_worktree_add(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> Path:
    """Run `swarm merge` (*argv*) and SIGKILL it all inside its `git worktree add`.

    At the moment a kill leaves most behind: git has opened `commondir` (O_TRUNC) and not yet
    written it. The `git` first on PATH writes what the real one has written by then (git's
    own files and order, in the C locale swarm runs it in), then hangs; the real git after.
    Returns the worktree directory being added.
    """
    flag = tmp_path / "adding"
    common = shlex.quote(str(repo / ".git"))
    git_first_on_path(tmp_path, monkeypatch, lambda real: (
        GIT_SUBCOMMAND
        + 'path=""; add=0; dashes=0\n'
        'for a in "$@"; do\n'
        '  if [ $dashes = 1 ]; then path="$a"; break; fi\n'
        '  case "$a" in add) add=1;; --) dashes=1;; esac\n'
        "done\n"
        'if [ "$sub" = worktree ] && [ $add = 1 ] && [ -n "$path" ]; then\n'
        f'  admin={common}/worktrees/$(basename "$path"); mkdir "$admin"\n'
        "  printf 'initializing\\n' > \"$admin/locked\"; mkdir -p \"$path\"\n"
        "  printf '%s/.git\\n' \"$(cd \"$path\" && pwd -P)\" > \"$admin/gitdir\"\n"
        "  printf 'gitdir: %s\\n' \"$(cd \"$admin\" && pwd -P)\" > \"$path/.git\"\n"
        f'  : > "$admin/commondir"; printf %s "$path" > {shlex.quote(str(flag))}\n'
        "  exec sleep 600\n"
        "fi\n"
        f'exec {real} "$@"\n'
    ))  # fmt: skip
    kill_merge_once(repo, argv, flag.exists, what="its git worktree add")
    (tmp_path / "gitbin" / "git").unlink()  # the real git from here on
    listed = subprocess.run(
        ["git", "worktree", "list"], cwd=repo, capture_output=True, text=True, check=False
    )
    assert "commondir" in listed.stderr, listed  # every git that lists worktrees dies
    return Path(flag.read_text())


@pytest.mark.long
@pytest.mark.parametrize("into", [False, True])
@pytest.mark.parametrize("then", ["merge", "doctor", "resume"])
def test_a_merge_worktree_a_merge_killed_in_its_git_worktree_add_left_half_made_is_removed(
    base_repo: Path, brancher: Brancher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    *, into: bool, then: str,
) -> None:  # fmt: skip
    # git writes `commondir` in place: a `swarm merge` killed in between left it empty, and
    # every later `swarm merge`, `swarm resume` and `swarm doctor --yes` failed on git's
    # `failed to read .../commondir`, as did your own `git worktree list`.
    two_tasks_and_dev(base_repo, brancher)
    if then == "resume":  # a task of the run left to do: what `swarm resume` is for
        agent = (*agent_python(), "-c", "open('three.txt', 'w').write('3')")
        three = Task(id="three", prompt="do three", agent="command", agent_argv=agent)
        with Store(store_path(open_repo(base_repo))) as store:
            store.add_tasks(RUN_ID, [(three, "swarm/three", str(tmp_path / "repo.swarm/three"))])
    target = ["--into", "dev"] if into else []
    if not into:  # its branch made, its worktree gone since: the next merge adds it again
        assert swarm(base_repo, "merge", "one").returncode == 0
        worktree = base_repo.parent / "repo.swarm" / f"_integration-{RUN_ID}"
        git(base_repo, "worktree", "remove", "--force", str(worktree))
    argv = [sys.executable, "-m", "worktree_swarm.cli", "merge", *target, "two"]
    added = _killed_in_its_worktree_add(base_repo, tmp_path, monkeypatch, argv)
    assert added.name.startswith(f"_merge-{RUN_ID}-" if into else f"_integration-{RUN_ID}")

    if then == "doctor":
        look = swarm(base_repo, "doctor")
        assert f"{added}: half-made registration" in look.stdout, look.stdout + look.stderr
        fixed = swarm(base_repo, "doctor", "--yes")
        assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    elif then == "resume":
        resumed = swarm(base_repo, "resume")
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert states(base_repo)["three"] == "done"
    if then != "merge":
        assert not added.exists()
        assert git(base_repo, "worktree", "list", "--porcelain")  # git lists them again
    out = swarm(base_repo, "merge", *target, "two")

    assert out.returncode == 0, out.stdout + out.stderr
    assert merge_results(base_repo)["two"] == "merged"
    merged = "dev" if into else f"swarm/integration-{RUN_ID}"
    assert "two.txt" in git(base_repo, "ls-tree", "--name-only", merged).split()
    listed = git(base_repo, "worktree", "list", "--porcelain")
    kept = not into  # the integration worktree stays; an `--into` merge's goes
    assert (f"worktree {added}\n" in listed) is kept


@pytest.mark.long
@pytest.mark.parametrize("into", [False, True])
def test_a_dry_run_names_the_half_made_merge_worktree_the_merge_would_remove_first(
    base_repo: Path, brancher: Brancher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    *, into: bool,
) -> None:  # fmt: skip
    # A dry run changes nothing, so it cannot remove it; it failed on git's `failed to read
    # .../commondir` instead of saying what the real merge would do first.
    two_tasks_and_dev(base_repo, brancher)
    target = ["--into", "dev"] if into else []
    argv = [sys.executable, "-m", "worktree_swarm.cli", "merge", *target, "two"]
    added = _killed_in_its_worktree_add(base_repo, tmp_path, monkeypatch, argv)
    admin = base_repo / ".git" / "worktrees" / added.name
    before = sorted((p.name, p.read_bytes()) for p in admin.iterdir())

    dry = swarm(base_repo, "merge", "--dry-run", *target, "two")
    assert dry.returncode == 2, dry.stdout + dry.stderr
    said = (
        f"swarm: a killed `swarm merge` left the worktree registration of {added} half-made"
        " (git lists no worktree while it is there); `swarm merge` removes it first, a dry run"
        " changes nothing: remove it with `swarm doctor --yes`, then run this again"
    )
    assert dry.stderr.splitlines() == [said]
    assert sorted((p.name, p.read_bytes()) for p in admin.iterdir()) == before  # untouched
    assert swarm(base_repo, "doctor", "--yes").returncode == 0
    again = swarm(base_repo, "merge", "--dry-run", *target, "two")
    assert again.returncode == 0, again.stdout + again.stderr


@pytest.mark.parametrize(
    "name",
    [
        "elsewhere/_integration-{run}",
        "repo.swarm/_integration-other",
        "repo.swarm/_merge-{run}-mine",
    ],
)
def test_a_half_made_registration_not_named_as_swarm_names_its_merge_worktrees_is_left_alone(
    base_repo: Path, brancher: Brancher, tmp_path: Path, name: str
) -> None:
    # Outside the run's worktree root, of no recorded run, or not named as swarm names an
    # `--into` merge's: maybe yours, or a live git's. git's error names it; nothing goes.
    two_tasks_and_dev(base_repo, brancher)
    path = tmp_path / name.format(run=RUN_ID)
    admin = base_repo / ".git" / "worktrees" / path.name
    admin.mkdir()
    (admin / "locked").write_text("initializing\n")
    path.mkdir(parents=True)
    (admin / "gitdir").write_text(f"{path.resolve()}/.git\n")
    (path / ".git").write_text(f"gitdir: {admin.resolve()}\n")
    (admin / "commondir").write_text("")
    before = sorted((p.name, p.read_bytes()) for p in admin.iterdir())

    for args in (("merge", "two"), ("doctor", "--yes")):
        out = swarm(base_repo, *args)
        assert out.returncode != 0, out.stdout
        assert "commondir" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr

    assert sorted((p.name, p.read_bytes()) for p in admin.iterdir()) == before
    assert (path / ".git").is_file()
    shutil.rmtree(admin)  # for the scratch worktree's removal


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_an_index_lock_a_killed_merge_left_in_the_integration_worktree_is_removed(
    base_repo: Path, brancher: Brancher, kind: str
) -> None:
    worktree = one_merged(base_repo, brancher)
    # What a git killed with its merge (a power loss, a killed process group) leaves; or a
    # directory of that name an agent planted (git never makes one): the merge crashed on it.
    lock = Path(git(worktree, "rev-parse", "--git-dir")) / "index.lock"
    if kind == "file":
        lock.touch()
    else:
        lock.mkdir()
        (lock / "inside").write_text("planted\n")
    out = swarm(base_repo, "merge", "two")
    assert out.returncode == 0, out.stdout + out.stderr
    assert merge_results(base_repo) == {"one": "merged", "two": "merged"}
    assert not os.path.lexists(lock)
    assert git(worktree, "status", "--porcelain") == ""


def test_files_checks_leave_in_the_integration_worktree_do_not_block_the_next_merge(
    base_repo: Path, brancher: Brancher, tmp_path: Path
) -> None:
    base = git(base_repo, "rev-parse", "HEAD")
    two_tasks(base_repo, brancher, base)
    check = tmp_path / "check.py"
    check.write_text(  # what an import (__pycache__) or a build leaves behind
        "import pathlib\n"
        "pathlib.Path('cache/deep').mkdir(parents=True, exist_ok=True)\n"
        "pathlib.Path('cache/deep/mod.pyc').write_text('x')\n"
        "pathlib.Path('stamp').write_text('x')\n"
        "open(b'odd\\xff', 'w').close()\n"  # named in bytes that are not UTF-8: kept before
    )

    first = swarm(base_repo, "merge", "one", "--check", f"{agent_command()} {check}")

    assert first.returncode == 0, first.stdout + first.stderr
    worktree = next(base_repo.parent.glob("repo.swarm/_integration-*"))
    assert git(worktree, "status", "--porcelain", "--ignored") == ""
    assert not (worktree / "cache").exists()
    second = swarm(base_repo, "merge", "two")
    assert second.returncode == 0, second.stdout + second.stderr
    assert merge_results(base_repo) == {"one": "merged", "two": "merged"}


def test_checks_that_make_the_integration_worktree_read_only_do_not_stop_the_merges(
    base_repo: Path, brancher: Brancher
) -> None:
    # As a test suite does (`chmod -R a-w .`): what they wrote could not be removed, and
    # every later merge stopped on it ("cannot write .../out/y: Permission denied").
    base = git(base_repo, "rev-parse", "HEAD")
    two_tasks(base_repo, brancher, base)
    check = "sh -c 'mkdir -p out; echo x > out/y; echo edit >> f.txt; chmod -R a-w .'"

    def merge_as_owner(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*as_owner_only(), sys.executable, "-m", "worktree_swarm.cli", "merge", *args],
            cwd=base_repo, capture_output=True, text=True, check=False, timeout=120,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip

    first = merge_as_owner("one", "--check", check)
    assert first.returncode == 0, first.stdout + first.stderr
    worktree = next(base_repo.parent.glob("repo.swarm/_integration-*"))
    assert git(worktree, "status", "--porcelain", "--ignored") == ""
    second = merge_as_owner("two", "--check", check)
    assert second.returncode == 0, second.stdout + second.stderr
    assert merge_results(base_repo) == {"one": "merged", "two": "merged"}
    assert git(worktree, "status", "--porcelain", "--ignored") == ""


def test_an_integration_worktree_deleted_by_the_user_is_made_anew(
    base_repo: Path, brancher: Brancher
) -> None:
    worktree = one_merged(base_repo, brancher)
    other = base_repo.parent / "other"
    git(base_repo, "worktree", "add", "-q", "--detach", str(other))
    shutil.rmtree(worktree)
    shutil.rmtree(other)  # another stale registration: not swarm's to prune

    out = swarm(base_repo, "merge", "two")

    assert out.returncode == 0, out.stdout + out.stderr
    tree = git(base_repo, "ls-tree", "--name-only", "swarm/integration-" + RUN_ID).split()
    assert {"one.txt", "two.txt"} <= set(tree)
    assert git(worktree, "status", "--porcelain") == ""
    listed = git(base_repo, "worktree", "list", "--porcelain")
    assert listed.count(f"worktree {worktree}\n") == 1
    assert f"worktree {other}\n" in listed


def test_an_integration_worktree_switched_to_another_branch_is_named_and_kept(
    base_repo: Path, brancher: Brancher
) -> None:
    worktree = one_merged(base_repo, brancher)
    git(worktree, "switch", "-q", "-c", "mywork")  # looking around in it, as invited
    (worktree / "mine.txt").write_text("the user's work\n")
    git(worktree, "add", "mine.txt")
    git(worktree, "commit", "-q", "-m", "mine")
    refs = git(base_repo, "for-each-ref")
    integration = "swarm/integration-" + RUN_ID

    out = swarm(base_repo, "merge")
    refs_after = git(base_repo, "for-each-ref")
    doctor = swarm(base_repo, "doctor", "--yes", "--json")  # may delete merged swarm/one

    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == (
        f"swarm: the integration worktree {worktree} is on branch mywork; switch it back to"
        f" {integration} (`git -C {worktree} switch {integration}`)\n"
    )
    assert refs_after == refs
    findings = {f["target"]: f for f in json.loads(doctor.stdout)["findings"]}
    assert findings[str(worktree)]["action"] == "keep", findings
    assert "integration worktree of run" in findings[str(worktree)]["reason"]
    assert "on branch mywork" in findings[str(worktree)]["reason"]
    assert (worktree / "mine.txt").exists()
    git(worktree, "switch", "-q", integration)
    assert swarm(base_repo, "merge").returncode == 0
    assert merge_results(base_repo) == {"one": "merged", "two": "merged"}


def test_squash_lands_a_chain_of_tasks_that_rewrite_the_same_line(
    base_repo: Path, brancher: Brancher
) -> None:
    base = git(base_repo, "rev-parse", "HEAD")
    first = brancher.branch("swarm/first", base, {"f.txt": edit(5, "five first")})
    second = brancher.branch("swarm/second", first, {"f.txt": edit(5, "five second")})
    brancher.branch("swarm/third", second, {"f.txt": edit(5, "five third"), "t.txt": "t\n"})
    brancher.branch("swarm/aside", base, {"f.txt": edit(1, "top")})
    record_run(
        base_repo,
        [("first", base), ("second", first), ("third", second), ("aside", base)],
        base=base,
        depends={"second": ["first"], "third": ["second"]},
    )

    dry = swarm(base_repo, "merge", "--strategy", "squash", "--dry-run")
    out = swarm(base_repo, "merge", "--strategy", "squash", "--json")

    assert dry.returncode == 0, dry.stdout + dry.stderr  # no conflict predicted, and none met
    assert out.returncode == 0, out.stdout + out.stderr
    assert sorted(json.loads(out.stdout)["merged"]) == ["aside", "first", "second", "third"]
    branch = "swarm/integration-" + RUN_ID
    merged = git(base_repo, "show", f"{branch}:f.txt").splitlines()
    assert (merged[0], merged[4]) == ("top", "five third")
    assert git(base_repo, "show", f"{branch}:t.txt") == "t"
    assert git(base_repo, "rev-list", "--min-parents=2", "--count", branch) == "0"
    worktree = next(base_repo.parent.glob("repo.swarm/_integration-*"))
    assert git(worktree, "status", "--porcelain") == ""
    assert not (Path(git(worktree, "rev-parse", "--git-dir")) / "SQUASH_MSG").exists()


@pytest.mark.long
@pytest.mark.parametrize("resolve", [False, True])
def test_a_squashed_chain_whose_own_changes_conflict_is_conflicted_or_resolved(
    base_repo: Path, brancher: Brancher, tmp_path: Path, resolve: bool
) -> None:
    base = git(base_repo, "rev-parse", "HEAD")
    first = brancher.branch("swarm/first", base, {"f.txt": edit(5, "five first")})
    both = edit(5, "five first").replace("line 9\n", "line 9 by second\n")
    brancher.branch("swarm/second", first, {"f.txt": both})
    brancher.branch("swarm/other", base, {"f.txt": edit(9, "nine other")})
    agent = tmp_path / "resolver.py"
    agent.write_text(RESOLVER)
    record_run(
        base_repo,
        [("first", base), ("second", first), ("other", base)],
        base=base,
        depends={"second": ["first"]},
        agent=[*agent_python(), str(agent), "{prompt_file}"],
    )
    landed = swarm(base_repo, "merge", "--strategy", "squash", "first", "other", "--json")
    assert json.loads(landed.stdout)["merged"] == ["first", "other"]
    branch = "swarm/integration-" + RUN_ID
    before = git(base_repo, "rev-parse", branch)

    out = swarm(base_repo, "merge", "--strategy", "squash", "second", "--json",
                *(["--resolve"] if resolve else []))  # fmt: skip

    report = json.loads(out.stdout)
    worktree = Path(report["target"]["worktree"])
    assert git(worktree, "status", "--porcelain") == ""
    assert not (Path(git(worktree, "rev-parse", "--git-dir")) / "SQUASH_MSG").exists()
    if resolve:  # only second's own change (line 9) met other's: both kept, first's once
        assert report["merged"] == ["second"]
        lines = git(base_repo, "show", f"{branch}:f.txt").splitlines()
        assert lines[4] == "five first"
        assert lines[8:10] == ["nine other", "line 9 by second"]
        assert git(base_repo, "rev-list", "--min-parents=2", "--count", branch) == "0"
    else:
        assert report["conflicted"] == ["second"]
        assert report["results"][0]["files"] == ["f.txt"]
        assert git(base_repo, "rev-parse", branch) == before


def test_into_a_checked_out_branch_is_refused(base_repo: Path, brancher: Brancher) -> None:
    base = git(base_repo, "rev-parse", "HEAD")
    brancher.branch("swarm/one", base, {"one.txt": "1\n"})
    record_run(base_repo, [("one", base)], base=base)
    refs = git(base_repo, "for-each-ref")

    clean = swarm(base_repo, "merge", "--into", "main")
    (base_repo / "keep.txt").write_text("edited\n")
    dirty = swarm(base_repo, "merge", "--into", "main")

    assert clean.returncode == 2
    assert clean.stderr.startswith(f"swarm: main is checked out in {base_repo}; swarm never moves")
    assert len(clean.stderr.splitlines()) == 1
    # Committing or stashing would not let it go on: the message says what would.
    assert (dirty.returncode, dirty.stderr) == (2, clean.stderr)
    assert git(base_repo, "for-each-ref") == refs
    assert states(base_repo) == {"one": "done"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["nope"],
            (
                "swarm: no task 'nope' in run 20240101-000000-abcd;"
                " `swarm status --run 20240101-000000-abcd` lists them\n"
            ),
        ),
        (
            ["--check", "pytest 'unclosed"],
            'swarm: --check "pytest \'unclosed" cannot be parsed: No closing quotation\n',
        ),
        (
            ["--into", "no-such-branch"],
            (
                "swarm: --into branch no-such-branch does not exist;"
                " create it first (`git branch no-such-branch`)\n"
            ),
        ),
        (["--into", "bad..name"], "swarm: --into 'bad..name' is not a valid branch name\n"),
        (["--into", ""], "swarm: --into '' is not a valid branch name\n"),
        (["--into", "@"], "swarm: --into '@' is not a valid branch name\n"),
        (
            ["--into", "refs/heads/release"],
            "swarm: --into names a branch by its short name: `release`, not refs/heads/release\n",
        ),
        (
            ["--into", "swarm/one"],
            (
                "swarm: --into swarm/one is task one's branch (run 20240101-000000-abcd);"
                " merge into a branch of yours, or without --into\n"
            ),
        ),
        (
            ["--dry-run", "--resolve"],
            "swarm: --resolve works only with a merge (not --dry-run)\n",
        ),
        (
            ["--dry-run", "--check", "true"],
            "swarm: --check works only with a merge (not --dry-run)\n",
        ),
        (
            ["--dry-run", "--allow-outside-writes"],
            "swarm: --allow-outside-writes works only with a merge (not --dry-run)\n",
        ),
    ],
)
def test_bad_input_is_one_line_and_creates_nothing(
    base_repo: Path, brancher: Brancher, args: list[str], message: str
) -> None:
    base = git(base_repo, "rev-parse", "HEAD")
    brancher.branch("swarm/one", base, {"one.txt": "1\n"})
    record_run(base_repo, [("one", base)], base=base)
    refs = git(base_repo, "for-each-ref")

    out = swarm(base_repo, "merge", *args)

    assert (out.returncode, out.stderr) == (2, message)
    assert git(base_repo, "for-each-ref") == refs


@pytest.mark.long
def test_dependencies_first_least_conflicting_next_and_failed_ones_skip_dependents(
    base_repo: Path, brancher: Brancher, tmp_path: Path
) -> None:
    base = git(base_repo, "rev-parse", "HEAD")
    # "big" is larger than "child", but "child" is built on it and must come after.
    big = brancher.branch("swarm/big", base, {"big.txt": "b\n" * 100})
    brancher.branch("swarm/child", big, {"child.txt": "c\n"})
    # "clash" conflicts with "rival" and with "on-rival" (built on rival): rival goes first,
    # since landing it (and on-rival) lands more than landing clash.
    brancher.branch("swarm/clash", base, {"f.txt": edit(3, "clash")})
    brancher.branch("swarm/rival", base, {"f.txt": edit(3, "rival"), "r.txt": "r\n" * 10})
    rival = git(base_repo, "rev-parse", "swarm/rival")
    brancher.branch("swarm/on-rival", rival, {"after.txt": "a\n"})
    record_run(
        base_repo,
        [("child", big), ("big", base), ("clash", base), ("rival", base), ("on-rival", rival)],
        base=base,
        depends={"child": ["big"], "on-rival": ["rival"]},
    )
    check = tmp_path / "check.py"
    check.write_text("import pathlib, sys\nsys.exit(1 if pathlib.Path('r.txt').exists() else 0)\n")

    out = swarm(base_repo, "merge", "--json", "--check", f"{agent_command()} {check}")

    report = json.loads(out.stdout)
    assert report["order"] == ["big", "child", "rival", "on-rival", "clash"]
    # rival fails its check and is undone, so on-rival is skipped and clash lands after all.
    assert report["merged"] == ["big", "child", "clash"]
    assert report["failed"] == ["rival"]
    assert report["skipped"] == ["on-rival"]
    skipped = next(r for r in report["results"] if r["task_id"] == "on-rival")
    assert skipped["reason"] == "depends on rival, which did not merge"
    assert states(base_repo)["on-rival"] == "done"
    assert out.returncode == 1


@pytest.mark.long
def test_a_task_built_on_one_an_earlier_merge_left_out_is_not_merged_later(
    base_repo: Path, brancher: Brancher, tmp_path: Path
) -> None:
    base = git(base_repo, "rev-parse", "HEAD")
    rival = brancher.branch("swarm/rival", base, {"r.txt": "r\n"})
    on_rival = brancher.branch("swarm/on-rival", rival, {"after.txt": "a\n"})
    brancher.branch("swarm/on-on-rival", on_rival, {"later.txt": "l\n"})
    brancher.branch("swarm/aside", base, {"aside.txt": "s\n"})
    record_run(
        base_repo,
        [("rival", base), ("on-rival", rival), ("on-on-rival", on_rival), ("aside", base)],
        base=base,
        depends={"on-rival": ["rival"], "on-on-rival": ["on-rival"]},
    )
    check = tmp_path / "check.py"
    check.write_text("import pathlib, sys\nsys.exit(1 if pathlib.Path('r.txt').exists() else 0)\n")
    first = swarm(base_repo, "merge", "rival", "--check", f"{agent_command()} {check}")

    later = swarm(base_repo, "merge", "--json")

    assert first.returncode == 1, first.stdout + first.stderr
    report = json.loads(later.stdout)
    assert report["merged"] == ["aside"]
    assert sorted(report["skipped"]) == ["on-on-rival", "on-rival"]
    reasons = {r["task_id"]: r["reason"] for r in report["results"]}
    target = "swarm/integration-" + RUN_ID
    assert reasons["on-rival"] == f"depends on rival, which did not merge into {target}"
    assert reasons["on-on-rival"] == f"depends on on-rival, which did not merge into {target}"
    tree = git(base_repo, "ls-tree", "--name-only", target).split()
    assert "r.txt" not in tree
    assert "aside.txt" in tree
    # Named again (without the check that failed it), the dependency is tried again first.
    again = swarm(base_repo, "merge", "--json", "on-rival", "rival")
    assert json.loads(again.stdout)["merged"] == ["rival", "on-rival"]


@pytest.mark.long
def test_merges_undone_by_hand_on_the_integration_branch_are_merged_again(
    base_repo: Path, brancher: Brancher
) -> None:
    base = git(base_repo, "rev-parse", "HEAD")
    brancher.branch("swarm/one", base, {"one.txt": "1\n"})
    brancher.branch("swarm/two", base, {"two.txt": "22\n"})  # larger: merged second
    record_run(base_repo, [("one", base), ("two", base)], base=base)
    target = "swarm/integration-" + RUN_ID
    assert json.loads(swarm(base_repo, "merge", "--json").stdout)["merged"] == ["one", "two"]
    worktree = next(base_repo.parent.glob("repo.swarm/_integration-*"))

    git(worktree, "reset", "-q", "--hard", "HEAD~1")  # the user drops the last merge
    reset = swarm(base_repo, "merge", "--json")
    git(base_repo, "worktree", "remove", "--force", str(worktree))
    git(base_repo, "branch", "-D", target)  # then the whole branch
    deleted = swarm(base_repo, "merge", "--json")

    assert json.loads(reset.stdout)["merged"] == ["two"]
    assert json.loads(deleted.stdout)["merged"] == ["one", "two"]
    assert set(git(base_repo, "ls-tree", "--name-only", target).split()) >= {"one.txt", "two.txt"}
    assert status_json(base_repo)["one"]["merge_result"] == "merged"


# Keeps both sides of every conflict: what a (very agreeable) agent would do.
RESOLVER = """
import pathlib, re, sys
for path in pathlib.Path('.').rglob('*.txt'):
    text = path.read_text()
    if '<<<<<<<' in text:
        path.write_text(re.sub(r'^(<<<<<<<|=======|>>>>>>>).*\\n', '', text, flags=re.M))
"""


@pytest.mark.long
@pytest.mark.parametrize("agent_exit", [0, 3])
def test_resolve_hands_conflicts_to_the_tasks_agent(
    base_repo: Path, brancher: Brancher, tmp_path: Path, agent_exit: int
) -> None:
    agent = tmp_path / "resolver.py"
    agent.write_text(RESOLVER + f"sys.exit({agent_exit})\n")
    conflicting(base_repo, brancher, agent, second={"s.txt": "s\n" * 9})
    before = checkout_snapshot(base_repo)

    out = swarm(base_repo, "merge", "--resolve", "--check", f"{sys.executable} -c pass", "--json")

    report = json.loads(out.stdout)
    branch = "swarm/integration-" + RUN_ID
    if agent_exit == 0:
        assert out.returncode == 0, out.stderr
        assert report["merged"] == ["first", "second"]
        second = report["results"][1]
        assert second["reason"] == "conflicts in f.txt resolved by its agent"
        assert second["checks"]["ok"] is True
        merged = git(base_repo, "show", f"{branch}:f.txt").splitlines()
        assert merged[4:6] == ["five first", "five second"]
        parents = git(base_repo, "log", "-1", "--format=%P", branch).split()
        assert len(parents) == 2
        assert merge_results(base_repo) == {"first": "merged", "second": "merged"}
    else:
        assert out.returncode == 1
        assert report["conflicted"] == ["second"]
        assert report["results"][1]["reason"].startswith(
            f"conflicts with {branch} in f.txt; the agent exited 3 while resolving (log "
        )
        assert "<<<<<<<" not in git(base_repo, "show", f"{branch}:f.txt")
        worktree = Path(report["target"]["worktree"])
        assert git(worktree, "status", "--porcelain") == ""
    prompt = (base_repo / ".git/swarm/runs" / RUN_ID / "merge/resolve-second.md").read_text()
    assert "- f.txt" in prompt
    assert checkout_snapshot(base_repo) == before


@pytest.mark.long
def test_a_resolver_is_told_of_a_conflicted_name_that_is_not_utf8_as_git_quotes_it(
    base_repo: Path, brancher: Brancher, tmp_path: Path
) -> None:
    base = git(base_repo, "rev-parse", "HEAD")
    name = os.fsdecode(b"\xff\xfe.txt")
    brancher.branch("swarm/first", base, {name: edit(5, "five first")})
    brancher.branch("swarm/second", base, {name: edit(5, "five second")})
    agent = tmp_path / "resolver.py"
    agent.write_text(RESOLVER)
    record_run(
        base_repo,
        [("first", base), ("second", base)],
        base=base,
        agent=[*agent_python(), str(agent), "{prompt_file}"],
    )

    out = swarm(base_repo, "merge", "--resolve", "--json")

    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["merged"] == ["first", "second"]
    quoted = '"\\377\\376.txt"'
    assert report["results"][1]["reason"] == f"conflicts in {quoted} resolved by its agent"
    prompt = (base_repo / ".git/swarm/runs" / RUN_ID / "merge/resolve-second.md").read_text()
    assert f"- {quoted}\n" in prompt


# What a resolver may do besides leaving the merge to swarm: (its extra code, the outcome).
RESOLVER_ENDINGS = {
    "commits": (
        "import subprocess\nsubprocess.run(['git', 'commit', '-qam', 'resolved'], check=True)\n",
        "merged",
    ),
    "aborts": (
        "import subprocess\nsubprocess.run(['git', 'merge', '--abort'], check=True)\n",
        "conflicted",
    ),
    "commits-something-else": (
        (
            "import subprocess\nsubprocess.run(['git', 'merge', '--abort'], check=True)\n"
            "subprocess.run(['git', 'commit', '-q', '--allow-empty', '-m', 'mine'], check=True)\n"
        ),
        "failed",
    ),
}


@pytest.mark.long
@pytest.mark.parametrize("ending", list(RESOLVER_ENDINGS))
def test_a_resolver_that_commits_or_abandons_the_merge_itself(
    base_repo: Path, brancher: Brancher, tmp_path: Path, ending: str
) -> None:
    base = git(base_repo, "rev-parse", "HEAD")
    for name in ("first", "second", "third"):  # each conflicts with the others: in this order
        brancher.branch(f"swarm/{name}", base, {"f.txt": edit(5, f"five {name}")})
    code, outcome = RESOLVER_ENDINGS[ending]
    agent = tmp_path / "resolver.py"
    agent.write_text(RESOLVER + code)
    record_run(
        base_repo,
        [("first", base), ("second", base), ("third", base)],
        base=base,
        agent=[*agent_python(), str(agent), "{prompt_file}"],
    )

    out = swarm(base_repo, "merge", "--resolve", "--check", f"{sys.executable} -c pass", "--json")

    assert out.returncode == (0 if outcome == "merged" else 1), out.stdout + out.stderr
    report = json.loads(out.stdout)
    # The later task is tried too, and every task has its result.
    assert merge_results(base_repo) == {"first": "merged", "second": outcome, "third": outcome}
    second = report["results"][1]
    branch = "swarm/integration-" + RUN_ID
    if outcome == "merged":  # the agent's own merge commit, checked like swarm's
        assert second["checks"]["ok"] is True
        assert second["reason"] == "conflicts in f.txt resolved by its agent"
        parents = git(base_repo, "log", "-1", "--format=%P", f"{second['commit']}").split()
        assert parents[1] == git(base_repo, "rev-parse", "swarm/second")
        assert git(base_repo, "merge-base", "--is-ancestor", second["commit"], branch) == ""
    elif outcome == "conflicted":
        assert second["reason"] == (
            f"conflicts with {branch} in f.txt;"
            " the agent abandoned the merge (none in progress when it exited)"
        )
    else:
        assert second["reason"].startswith("the agent resolving its conflicts committed ")
        assert second["reason"].endswith("; merge undone")
        assert "mine" not in git(base_repo, "log", "--format=%s", branch)
    if outcome != "merged":
        assert git(base_repo, "log", "-1", "--format=%s", branch) == (
            "swarm: merge task first (swarm/first)"
        )
    worktree = Path(report["target"]["worktree"])
    assert git(worktree, "status", "--porcelain") == ""


@pytest.mark.long
def test_a_resolver_that_switches_the_merge_worktree_to_another_branch_never_has_it_reset(
    base_repo: Path, brancher: Brancher, tmp_path: Path
) -> None:
    agent = tmp_path / "resolver.py"
    agent.write_text(
        "import subprocess\n"
        "subprocess.run(['git', 'merge', '--abort'], check=True)\n"
        "subprocess.run(['git', 'checkout', '-q', 'release'], check=True)\n"
    )  # a commit on release would be an outside write: test_guarded_merge.py
    base = conflicting(base_repo, brancher, agent)
    git(base_repo, "branch", "release", base)

    out = swarm(base_repo, "merge", "--resolve", "--json")

    assert out.returncode == 1, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["results"][1]["reason"] == (
        "the agent resolving its conflicts switched the merge worktree to release; merge undone"
    )
    assert git(base_repo, "rev-parse", "release") == base  # not reset to the merge's start
    branch = "swarm/integration-" + RUN_ID
    assert (
        git(base_repo, "log", "-1", "--format=%s", branch)
        == "swarm: merge task first (swarm/first)"
    )
    worktree = Path(report["target"]["worktree"])
    assert git(worktree, "symbolic-ref", "HEAD") == f"refs/heads/{branch}"
    assert git(worktree, "status", "--porcelain") == ""


@pytest.mark.long
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_merge_interrupted_while_its_resolver_runs_is_undone(
    base_repo: Path, brancher: Brancher, tmp_path: Path, sig: signal.Signals
) -> None:
    started = tmp_path / "started"
    agent = tmp_path / "resolver.py"
    # The first resolver hangs until it is killed; the next one resolves.
    agent.write_text(
        f"import os, pathlib, time\nmark = pathlib.Path({str(started)!r})\n"
        "if not mark.exists():\n    mark.write_text(str(os.getpid()))\n    time.sleep(300)\n"
        + RESOLVER
    )
    conflicting(base_repo, brancher, agent)
    argv = [sys.executable, "-m", "worktree_swarm.cli", "merge", "--resolve"]
    merging = subprocess.Popen(argv, cwd=base_repo, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # fmt: skip
    try:
        wait_for(lambda: started.exists() and started.read_text() != "", what="the resolver")
    finally:
        os.kill(merging.pid, sig)
        _, said = merging.communicate(timeout=60)
    worktree = next(base_repo.parent.glob("repo.swarm/_integration-*"))
    resolver = int(started.read_text())
    if sig == signal.SIGTERM:  # undone at once, the resolver ended
        assert merging.returncode == ExitCode.INTERRUPTED
        assert said.strip() == "swarm: interrupted"  # one line (it was an empty one)
        assert git(worktree, "status", "--porcelain") == ""
        assert not pid_alive(resolver)
    else:  # left half made, for the next merge to undo
        assert git(worktree, "status", "--porcelain").startswith("UU f.txt")

    out = swarm(base_repo, "merge", "--resolve", "--json")

    assert out.returncode == 0, out.stdout + out.stderr
    assert not pid_alive(resolver)
    assert json.loads(out.stdout)["merged"] == ["second"]
    assert merge_results(base_repo) == {"first": "merged", "second": "merged"}
    assert git(worktree, "status", "--porcelain") == ""


LONG = "".join(f"row {i}\n" for i in range(1, 21))


def long_edit(line: int, text: str, *, insert: bool = False) -> str:
    rows = LONG.splitlines(keepends=True)
    if insert:
        rows.insert(line, text + "\n")  # after `line`
    else:
        rows[line - 1] = text + "\n"
    return "".join(rows)


HUNK_CASES: list[tuple[str, dict[str, str | None], list[tuple[str, str]]]] = [
    ("l3", {"long.txt": long_edit(3, "three")}, []),
    ("l4", {"long.txt": long_edit(4, "four")}, []),  # touches l3: git conflicts
    ("l6", {"long.txt": long_edit(6, "six")}, []),  # one unchanged line from l4
    ("l6-again", {"long.txt": long_edit(6, "six again")}, []),
    ("ins-after-8", {"long.txt": long_edit(8, "inserted", insert=True)}, []),
    ("l9", {"long.txt": long_edit(9, "nine")}, []),
    ("l11", {"long.txt": long_edit(11, "eleven")}, []),
    ("l20", {"long.txt": long_edit(20, "twenty")}, []),
    ("many", {"long.txt": long_edit(15, "fifteen").replace("row 17\n", "seventeen\n")}, []),
]


@pytest.mark.long
def test_hunk_level_prediction_equals_real_merges(base_repo: Path, brancher: Brancher) -> None:
    (base_repo / "long.txt").write_text(LONG)
    git(base_repo, "add", "long.txt")
    git(base_repo, "commit", "-q", "-m", "a long file")
    base = make_cases(base_repo, brancher, HUNK_CASES)
    repo = open_repo(base_repo)
    names = [name for name, _, _ in HUNK_CASES]
    tips = {name: git(base_repo, "rev-parse", f"swarm/{name}") for name in names}
    branches = [conflicts.Branch(name=n, tip=t, base=base) for n, t in tips.items()]

    prediction = conflicts.predict(repo, branches, target=base)

    real_pairs = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            files = real_merge(base_repo, tips[a], tips[b])
            if files is not None:
                real_pairs[a, b] = files
    assert {k: tuple(sorted(v)) for k, v in prediction.pairs.items()} == real_pairs
    assert ("l3", "l4") in real_pairs
    assert ("l6", "l6-again") in real_pairs
    assert ("l4", "l6") not in real_pairs
    # Every branch touches long.txt, yet only pairs whose hunks touch needed git.
    assert prediction.merge_trees < len(real_pairs) + 6


# Edits whose hunks a diff with another algorithm (or sliding them by indentation, as
# `git diff` does) puts an unchanged line apart, where git's merge finds them touching:
# (base, one branch, the other), lines of f.txt.
LINED_UP = {
    "histogram": ("b a b a b a a a", "a b a b a a a", "b a a b a b a a a"),
    "indent": ("_b a a _b", "_b a _b", "_b a a"),  # _ is an indent of two spaces
}


@pytest.mark.parametrize("algorithm", [None, "myers", "patience"])
@pytest.mark.parametrize("case", list(LINED_UP))
def test_a_dry_run_lines_up_edits_as_the_merge_does(
    base_repo: Path, brancher: Brancher, case: str, algorithm: str | None
) -> None:
    def text(words: str) -> str:
        return "".join(word.replace("_", "  ") + "\n" for word in words.split())

    if algorithm:  # the user's choice for `git diff`, which git's merge does not follow
        git(base_repo, "config", "diff.algorithm", algorithm)
    base_text, one, other = LINED_UP[case]
    base = brancher.branch("start", "HEAD", {"f.txt": text(base_text)})
    brancher.branch("swarm/one", base, {"f.txt": text(one)})
    brancher.branch("swarm/other", base, {"f.txt": text(other)})
    record_run(base_repo, [("one", base), ("other", base)], base=base)
    git(base_repo, "merge", "-q", "--ff-only", base)

    dry = swarm(base_repo, "merge", "--dry-run", "--json")

    real = real_merge(base_repo, "swarm/one", "swarm/other")
    assert real == ("f.txt",)
    assert dry.returncode == 1, dry.stdout + dry.stderr
    pairs = json.loads(dry.stdout)["prediction"]["pairs"]
    assert pairs == [{"a": "one", "b": "other", "files": ["f.txt"]}]


def test_changes_read_together_equal_each_read_alone(
    base_repo: Path, brancher: Brancher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every branch's changes come from one git process; each must be what its own diff says.
    base = make_cases(base_repo, brancher)
    tips = [git(base_repo, "rev-parse", f"swarm/{name}") for name, _, _ in CASES]
    git(base_repo, "checkout", "-q", "-b", "modes", base)
    (base_repo / "keep.txt").chmod(0o755)
    (base_repo / "blob.bin").write_bytes(bytes(range(256)) * 4)
    git(base_repo, "add", "-A")
    git(base_repo, "commit", "-q", "-m", "a mode and a binary file")
    modes = git(base_repo, "rev-parse", "HEAD")
    git(base_repo, "checkout", "-q", "main")
    later = brancher.branch("later", base, {"f.txt": edit(3, "three")})
    pairs = [(base, tip) for tip in [*tips, modes]]
    pairs += [(base, base), (later, tips[0]), (tips[1], later)]  # empty; a tip asked twice
    repo = open_repo(base_repo)

    alone = [conflicts.changes(repo, b, t) for b, t in pairs]

    trace = tmp_path / "trace.json"
    with monkeypatch.context() as m:
        m.setenv("GIT_TRACE2_EVENT", str(trace))
        together = conflicts.many_changes(repo, pairs)
    assert together == alone
    # One process for every distinct tip, one more for the tip asked with a second base.
    assert trace.read_text().count('"event":"start"') == 2
    assert alone[len(tips)].edited == frozenset()  # the mode change and the binary file
    assert alone[len(tips)].paths == {"keep.txt", "blob.bin"}
    assert not alone[len(tips) + 1].paths


def test_hunks_apart_needs_a_whole_unchanged_line() -> None:
    line = lambda i: (2 * i, 2 * i)  # noqa: E731
    after = lambda i: (2 * i + 1, 2 * i + 1)  # noqa: E731
    assert conflicts.hunks_apart([line(3)], [line(5)])
    assert not conflicts.hunks_apart([line(3)], [line(4)])
    assert not conflicts.hunks_apart([line(3)], [line(3)])
    assert not conflicts.hunks_apart([after(3)], [line(4)])
    assert conflicts.hunks_apart([after(3)], [line(5)])
    assert conflicts.hunks_apart([(2, 6)], [line(5)])
    assert not conflicts.hunks_apart([(2, 6), line(9)], [line(8)])


@pytest.mark.slow  # long: runs in `scripts/check --slow` (CI runs both)
def test_resolver_over_its_timeout_is_killed_with_its_daemons(
    base_repo: Path, brancher: Brancher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not supervisor.SHIM_AVAILABLE:
        pytest.skip("daemons escape without the shim's child subreaper (Linux only)")
    pids = tmp_path / "pids"
    pids.mkdir()
    mark = f"resolver-{tmp_path.name}"
    monkeypatch.setenv("PIDS", str(pids))
    monkeypatch.setenv("ESCAPE_MARK", mark)  # inherited by the resolver and its daemon
    agent = tmp_path / "resolver.py"
    agent.write_text(PRELUDE + 'daemon("daemon", root=True)\npublish("ready")\ntime.sleep(300)\n')
    conflicting(base_repo, brancher, agent, resolve_timeout=10.0)

    out = swarm(base_repo, "merge", "--resolve", "--json")

    assert out.returncode == 1, out.stderr
    report = json.loads(out.stdout)
    assert report["conflicted"] == ["second"]
    assert report["results"][1]["reason"].endswith("the agent did not finish resolving within 10s")
    assert (pids / "daemon").exists()
    assert marked(mark) == []


@pytest.mark.long
def test_a_dry_run_that_predicts_a_skip_exits_as_the_merge_would(
    repo: Path, write_agent: Callable[[str], list[str]]
) -> None:
    agent = write_agent(
        "import os, pathlib, sys\ntask = os.environ['SWARM_TASK_ID']\n"
        "pathlib.Path(task + '.txt').write_text(task)\nsys.exit(task == 'f')\n"
    )
    text = f"[defaults]\nagent = {json.dumps(agent)}\n"
    text += '[[task]]\nid = "a"\nprompt = "p"\n[[task]]\nid = "f"\nprompt = "p"\n'
    text += '[[task]]\nid = "b"\nprompt = "p"\ndepends_on = ["f"]\n'
    (repo.parent / "tasks.toml").write_text(text)
    assert swarm(repo, "run", str(repo.parent / "tasks.toml")).returncode == 1
    git(repo, "worktree", "remove", "--force", str(repo.parent / "repo.swarm" / "a"))
    git(repo, "branch", "-D", "swarm/a")  # the user deleted it

    predicted = swarm(repo, "merge", "--dry-run", "a", "b")
    merged = swarm(repo, "merge", "a", "b")

    assert (predicted.returncode, merged.returncode) == (1, 1)  # `--dry-run && merge` holds
    for out in (predicted, merged):
        assert "branch swarm/a is gone" in out.stdout
        assert "it never ran (blocked): no branch swarm/b" in out.stdout  # not "gone"
    logs = swarm(repo, "logs", "b")  # no log, and there never will be: no bad input either
    assert (logs.returncode, logs.stderr) == (
        1,
        "swarm: task 'b' never started an agent (blocked: dependency f is failed)\n",
    )


def _run_writers(
    repo: Path, write_agent: Callable[[str], list[str]], tasks: dict[str, list[str]]
) -> None:
    """A run of *tasks* (id: its dependencies), each writing ``<id>.txt``; all done."""
    agent = write_agent(
        "import os, pathlib\npathlib.Path(os.environ['SWARM_TASK_ID'] + '.txt').write_text('x')\n"
    )
    text = f"[defaults]\nagent = {json.dumps(agent)}\n"
    for task_id, deps in tasks.items():
        text += f'[[task]]\nid = "{task_id}"\nprompt = "p"\ndepends_on = {json.dumps(deps)}\n'
    (repo.parent / "tasks.toml").write_text(text)
    assert swarm(repo, "run", str(repo.parent / "tasks.toml")).returncode == 0


@pytest.mark.long
def test_a_task_named_alone_is_not_merged_with_a_dependency_its_branch_carries(
    repo: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # b's branch starts from a's work: `swarm merge b` landed a along with it, unchecked and
    # recorded nowhere. Skipped instead, saying to name a too; named together, both land,
    # and so does b alone once a is merged (or already in the branch it starts from).
    _run_writers(repo, write_agent, {"a": [], "b": ["a"], "c": ["a"]})
    run_id = json.loads(swarm(repo, "status", "--json").stdout)["run_id"]
    integration = f"swarm/integration-{run_id}"

    predicted = swarm(repo, "merge", "--dry-run", "b")
    alone = swarm(repo, "merge", "b")

    assert (predicted.returncode, alone.returncode) == (1, 1)
    for out in (predicted, alone):
        assert "depends on a, not in" in out.stdout
        assert "name it too (`swarm merge a b`)" in out.stdout
    assert git(repo, "branch", "--list", integration) == ""  # nothing made for nothing
    both = swarm(repo, "merge", "a", "b")
    assert both.returncode == 0, both.stdout + both.stderr
    assert git(repo, "show", f"{integration}:b.txt") == "x"
    later = swarm(repo, "merge", "c")  # a is in the integration branch now
    assert later.returncode == 0, later.stdout + later.stderr
    rows = status_json(repo)
    assert {t: rows[t]["merge_result"] for t in "abc"} == dict.fromkeys("abc", "merged")


@pytest.mark.long
@pytest.mark.parametrize("target", ["--into", "integration branch"])
def test_a_target_without_the_runs_base_commit_takes_none_of_its_tasks(
    base_repo: Path, brancher: Brancher, target: str
) -> None:
    # The run started on `feature`, an unfinished commit of yours on it: every task branch
    # carries that commit, and a merge into a branch without it landed it unchecked.
    main = git(base_repo, "rev-parse", "HEAD")
    feature = brancher.branch("feature", main, {"feat.txt": "unfinished\n"})
    two_tasks(base_repo, brancher, feature)
    git(base_repo, "branch", "rel", main)
    args = ["--into", "rel"] if target == "--into" else []
    worktrees = git(base_repo, "worktree", "list", "--porcelain")

    dry = swarm(base_repo, "merge", *args, "--dry-run")
    out = swarm(base_repo, "merge", *args)

    if target == "--into":
        where = f"rel ({main[:12]})"
        then = f"merge {feature[:12]} into rel first"
    else:
        where = f"swarm/integration-{RUN_ID} would start at {main[:12]}, which"
        then = "run `swarm merge` in a checkout of a branch that contains it"
    line = (
        f"swarm: {where} does not contain the run's base commit {feature[:12]}, where its tasks"
        " started: their branches would bring it (and the commits before it) along, unchecked;"
        f" {then}, or merge into a branch that contains it (`--into BRANCH`)\n"
    )
    for res in (dry, out):
        assert (res.returncode, res.stdout, res.stderr) == (ExitCode.BAD_INPUT, "", line)
    assert git(base_repo, "rev-parse", "rel") == main
    assert git(base_repo, "branch", "--list", "swarm/integration-*") == ""
    assert git(base_repo, "worktree", "list", "--porcelain") == worktrees
    assert merge_results(base_repo) == {"one": None, "two": None}
    # You land your commit there: then they go.
    if target == "--into":
        git(base_repo, "branch", "-f", "rel", feature)
    else:
        git(base_repo, "merge", "-q", "--ff-only", feature)
    merged = swarm(base_repo, "merge", *args)
    assert merged.returncode == 0, merged.stdout + merged.stderr
    assert merge_results(base_repo) == {"one": "merged", "two": "merged"}


@pytest.mark.long
def test_a_dependent_whose_dependency_has_no_branch_left_is_not_merged_with_its_work(
    repo: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # a's branch deleted by hand: `swarm merge` skipped a, merged b and c, and landed a's
    # work with them, unchecked and unrecorded.
    _run_writers(repo, write_agent, {"a": [], "b": ["a"], "c": ["b"]})
    git(repo, "worktree", "remove", "--force", str(repo.parent / "repo.swarm" / "a"))
    git(repo, "branch", "-D", "swarm/a")
    out = swarm(repo, "merge")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "depends on a, not in swarm/integration-" in out.stdout
    assert "it has no branch of its own to merge" in out.stdout
    assert "depends on b, which did not merge into" in out.stdout
    rows = status_json(repo)
    assert [rows[t]["merge_result"] for t in "bc"] == [None, None]
    # Landed by you (its branch gone since), a's work is where the integration branch starts:
    # its last recorded tip is found there, and b and c merge.
    with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as db:
        (a_tip,) = db.execute("SELECT tip_commit FROM tasks WHERE task_id = 'a'").fetchone()
    git(repo, "merge", "-q", "--ff-only", a_tip)
    later = swarm(repo, "merge")
    # a's branch is gone but its work is there: already in target, not a skip (exit 1).
    assert later.returncode == 0, later.stdout + later.stderr
    assert "depends on" not in later.stdout
    rows = status_json(repo)
    assert [rows[t]["merge_result"] for t in "abc"] == ["merged", "merged", "merged"]


@pytest.mark.long
def test_a_merge_started_inside_a_task_worktree_builds_on_your_checkout_not_the_task(
    repo: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # `cd` into a task's worktree, then `swarm merge b`: the integration branch started at
    # a's tip, landing a's work unchecked and unrecorded.
    _run_writers(repo, write_agent, {"a": [], "b": []})
    inside = repo.parent / "repo.swarm" / "a"
    out = swarm(inside, "merge", "b")
    assert out.returncode == 0, out.stdout + out.stderr
    run_id = json.loads(swarm(repo, "status", "--json").stdout)["run_id"]
    files = git(repo, "ls-tree", "--name-only", f"swarm/integration-{run_id}").split()
    assert "b.txt" in files
    assert "a.txt" not in files


@pytest.mark.long
def test_status_says_a_merge_undone_by_hand_is_undone(
    repo: Path, write_agent: Callable[[str], list[str]]
) -> None:
    agent = write_agent(
        "import os, pathlib\npathlib.Path(os.environ['SWARM_TASK_ID'] + '.txt').write_text('x')\n"
    )
    text = f"[defaults]\nagent = {json.dumps(agent)}\n"
    text += '[[task]]\nid = "a"\nprompt = "p"\n[[task]]\nid = "b"\nprompt = "p"\n'
    (repo.parent / "tasks.toml").write_text(text)
    assert swarm(repo, "run", str(repo.parent / "tasks.toml")).returncode == 0
    assert swarm(repo, "merge").returncode == 0
    rows = status_json(repo)
    integration = str(rows["a"]["merge_target"])
    tip = git(repo, "rev-parse", integration)
    last = next(t for t in ("a", "b") if str(rows[t]["merge_detail"]).endswith(tip[:12]))
    first = "b" if last == "a" else "a"
    worktree = next((repo.parent / "repo.swarm").glob("_integration-*"))
    git(worktree, "reset", "-q", "--hard", "HEAD~1")  # the user drops the last merge

    rows = status_json(repo)

    assert (rows[first]["merge_result"], rows[last]["merge_result"]) == ("merged", "undone")
    assert f"merged into {integration}, since undone there" in swarm(repo, "status").stdout
    reported = json.loads(swarm(repo, "report", "--json").stdout)
    results = {t["task_id"]: t["merge_result"] for t in reported["tasks"]}
    assert (results[first], results[last]) == ("merged", "undone")


@pytest.mark.long
def test_a_named_task_still_running_is_bad_input_and_nothing_is_created(
    base_repo: Path, brancher: Brancher
) -> None:
    base = git(base_repo, "rev-parse", "HEAD")
    brancher.branch("swarm/one", base, {"one.txt": "1\n"})  # what its agent committed so far
    record_run(base_repo, [("one", base)], base=base, state=TaskState.RUNNING)
    refs = git(base_repo, "for-each-ref")

    named = swarm(base_repo, "merge", "one")
    unnamed = swarm(base_repo, "merge", "--json")  # takes only done tasks: nothing to do

    assert (named.returncode, named.stderr) == (
        2,
        "swarm: task 'one' is running; wait for it to finish (`swarm status`) before merging it\n",
    )
    assert unnamed.returncode == 0, unnamed.stdout + unnamed.stderr
    assert json.loads(unnamed.stdout)["merged"] == []
    assert git(base_repo, "for-each-ref") == refs
    assert not (base_repo.parent / "repo.swarm").exists()
    assert merge_results(base_repo) == {"one": None}


@pytest.mark.long
def test_checks_failing_on_the_target_before_any_merge_merge_nothing(
    base_repo: Path, brancher: Brancher, tmp_path: Path
) -> None:
    base = git(base_repo, "rev-parse", "HEAD")
    two_tasks(base_repo, brancher, base)
    check = tmp_path / "check.py"  # red on the target already; each task's merge turns it green
    check.write_text(
        "import pathlib, sys\n"
        "sys.exit(0 if pathlib.Path('one.txt').exists() or pathlib.Path('two.txt').exists()"
        " else 1)\n"
    )

    out = swarm(base_repo, "merge", "--json", "--check", f"{agent_command()} {check}")

    assert out.returncode == 1, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["baseline_checks"]["ok"] is False
    assert (report["merged"], report["conflicted"], report["failed"]) == ([], [], [])
    assert report["target"]["commit"] == base
    assert git(base_repo, "rev-parse", "swarm/integration-" + RUN_ID) == base
    assert merge_results(base_repo) == {"one": None, "two": None}  # not tried: merged later
    text = swarm(base_repo, "merge", "--check", f"{agent_command()} {check}")
    assert text.returncode == 1
    assert "checks fail on swarm/integration-" in text.stdout
    assert "before any merge" in text.stdout


def test_checks_failing_on_an_into_branch_before_any_merge_say_nothing_merged(
    base_repo: Path, brancher: Brancher
) -> None:
    # Two tasks were there to merge: the summary said "nothing to merge" of them.
    two_tasks_and_dev(base_repo, brancher)

    out = swarm(base_repo, "merge", "--into", "dev", "--check", "false")

    assert out.returncode == 1, out.stdout + out.stderr
    assert "checks fail on dev before any merge" in out.stdout
    assert (
        out.stdout.splitlines()[-1] == "0 merged, 0 conflicted, 0 failed, 0 skipped; nothing merged"
    )


@pytest.mark.parametrize("strategy", ["merge", "squash"])
def test_merges_are_made_as_the_runs_author_past_your_hooks_and_signing(
    base_repo: Path, brancher: Brancher, tmp_path: Path, strategy: str
) -> None:
    base = git(base_repo, "rev-parse", "HEAD")
    two_tasks(base_repo, brancher, base)
    # Your own repository's settings: every commit signed, hooks that refuse swarm's commits.
    marker = tmp_path / "ran"
    git(base_repo, "config", "commit.gpgSign", "true")
    git(base_repo, "config", "gpg.program", str(tmp_path / "no-such-gpg"))
    hooks = base_repo / ".git" / "hooks"
    hooks.mkdir(exist_ok=True)
    for name in ("pre-commit", "pre-merge-commit", "commit-msg", "prepare-commit-msg"):
        hook = hooks / name
        hook.write_text(f"#!/bin/sh\necho {name} >> {marker}\nexit 1\n")
        hook.chmod(0o755)
    git(base_repo, "config", "user.name", "You")
    git(base_repo, "config", "user.email", "you@example.com")

    out = swarm(base_repo, "merge", "--strategy", strategy)

    assert out.returncode == 0, out.stdout + out.stderr
    assert merge_results(base_repo) == {"one": "merged", "two": "merged"}
    made = git(
        base_repo, "log", "--first-parent", "--format=%an <%ae>|%cn <%ce>|%G?",
        f"{base}..swarm/integration-{RUN_ID}",
    ).splitlines()  # fmt: skip
    assert made == ["swarm test <swarm@test>|swarm test <swarm@test>|N"] * 2
    assert not marker.exists()


@pytest.mark.long
def test_doctor_removes_what_a_killed_merge_into_another_branch_left_and_keeps_nothing(
    base_repo: Path, brancher: Brancher, tmp_path: Path
) -> None:
    base = two_tasks_and_dev(base_repo, brancher)
    started = tmp_path / "started"
    check = tmp_path / "check.py"
    argv = [sys.executable, "-m", "worktree_swarm.cli", "merge", "--into", "dev",
            "--check", f"{agent_command()} {check}"]  # fmt: skip
    check.write_text(  # passes on dev, hangs once a task is merged: the merge is killed there
        "import os, pathlib, time\n"
        "if pathlib.Path('one.txt').exists() or pathlib.Path('two.txt').exists():\n"
        f"    pathlib.Path({str(started)!r}).write_text(str(os.getpid()))\n"
        "    time.sleep(600)\n"
    )
    kill_merge_once(
        base_repo, argv, lambda: started.exists() and started.read_text() != "", what="its check"
    )
    check_pid = int(started.read_text())
    (scratch,) = [p for p in worktree_list(base_repo) if p.name.startswith("_merge-")]
    merged = git(scratch, "rev-parse", "HEAD")  # a merge commit on no branch: dev never moved
    assert git(base_repo, "rev-parse", "dev") == base

    out = swarm(base_repo, "doctor", "--yes", "--json")

    found = {f["target"]: f for f in json.loads(out.stdout)["findings"]}
    assert found[str(scratch)]["action"] == "remove_worktree", found[str(scratch)]
    assert found[str(scratch)]["fixed"] is True
    assert not pid_alive(check_pid)  # the killed merge's check, ended first
    assert scratch not in worktree_list(base_repo)
    assert not scratch.exists()
    assert git(base_repo, "rev-parse", "dev") == base
    assert git(base_repo, "branch", "--contains", merged) == ""  # nothing kept for it
    again = swarm(base_repo, "merge", "--into", "dev")
    assert again.returncode == 0, again.stdout + again.stderr
    assert merge_results(base_repo) == {"one": "merged", "two": "merged"}
    assert {"one.txt", "two.txt"} <= set(git(base_repo, "ls-tree", "--name-only", "dev").split())


@pytest.mark.long
def test_clean_ends_the_checks_a_killed_merge_left_and_removes_its_worktree(
    base_repo: Path, brancher: Brancher, tmp_path: Path
) -> None:
    # The checks run in sessions of their own: a merge killed during them leaves them running
    # in the integration worktree, and `swarm clean` kept that worktree ("stop it first").
    two_tasks(base_repo, brancher, git(base_repo, "rev-parse", "HEAD"))
    started = tmp_path / "started"
    check = tmp_path / "check.py"
    check.write_text(
        "import os, pathlib, time\n"
        "if pathlib.Path('one.txt').exists() or pathlib.Path('two.txt').exists():\n"
        f"    pathlib.Path({str(started)!r}).write_text(str(os.getpid()))\n"
        "    time.sleep(600)\n"
    )
    argv = [sys.executable, "-m", "worktree_swarm.cli", "merge",
            "--check", f"{agent_command()} {check}"]  # fmt: skip
    kill_merge_once(
        base_repo, argv, lambda: started.exists() and started.read_text() != "", what="its check"
    )
    check_pid = int(started.read_text())
    worktree = next(base_repo.parent.glob("repo.swarm/_integration-*"))

    out = swarm(base_repo, "clean", "--yes")

    assert out.returncode == 0, out.stdout + out.stderr
    assert not pid_alive(check_pid)
    assert not worktree.exists()
    assert worktree not in worktree_list(base_repo)
    # The branch is kept, its tip a merge its checks never passed: not to be landed as it is.
    assert "the merge of one was cut off in its checks; run `swarm merge`" in out.stdout, out.stdout
    check.write_text("")  # passes now
    again = subprocess.run(argv, cwd=base_repo, capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stdout + again.stderr
    assert merge_results(base_repo) == {"one": "merged", "two": "merged"}


# Writes build output, edits a tracked file, and hangs the first time it sees a merge: killed.
HANGING_WRITER = """
import os, pathlib, time
pathlib.Path('built.txt').write_text('built')
pathlib.Path('keep.txt').write_text('formatted')
started = pathlib.Path({started!r})
if (pathlib.Path('one.txt').exists() or pathlib.Path('two.txt').exists()) and not started.exists():
    started.write_text(str(os.getpid()))
    time.sleep(600)
"""


def _killed_in_its_checks(base_repo: Path, brancher: Brancher, tmp_path: Path) -> list[str]:
    """Two tasks; a `swarm merge` killed in the checks of its first merge; the merge's argv."""
    two_tasks(base_repo, brancher, git(base_repo, "rev-parse", "HEAD"))
    started = tmp_path / "started"
    check = tmp_path / "check.py"
    check.write_text(HANGING_WRITER.format(started=str(started)))
    argv = [sys.executable, "-m", "worktree_swarm.cli", "merge",
            "--check", f"{agent_command()} {check}"]  # fmt: skip
    kill_merge_once(
        base_repo, argv, lambda: started.exists() and started.read_text() != "", what="its check"
    )
    return argv


def _saved_as(out: str) -> str:
    """The ref swarm says it saved what a cut-off merge's worktree held as."""
    found = re.search(r"saved as (refs/swarm/rescued/merge-[0-9a-f]{12})", out)
    assert found is not None, out
    return found[1]


@pytest.mark.long
def test_clean_commits_nothing_a_merge_cut_off_in_its_checks_left_and_saves_it_aside(
    base_repo: Path, brancher: Brancher, tmp_path: Path
) -> None:
    # `swarm clean --yes` checkpointed the killed checks' files onto the integration branch:
    # the next merge no longer saw its unchecked merge (not the tip) and took it as landed.
    argv = _killed_in_its_checks(base_repo, brancher, tmp_path)
    integration = "swarm/integration-" + RUN_ID
    tip = git(base_repo, "rev-parse", integration)

    out = swarm(base_repo, "clean", "--yes")

    assert out.returncode == 0, out.stdout + out.stderr
    assert git(base_repo, "rev-parse", integration) == tip  # nothing committed onto it
    saved = _saved_as(out.stdout)
    assert git(base_repo, "show", f"{saved}:built.txt") == "built"
    again = subprocess.run(argv, cwd=base_repo, capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "merged      one" in again.stdout  # merged again and checked, not "already in"
    assert merge_results(base_repo) == {"one": "merged", "two": "merged"}
    assert "built.txt" not in git(base_repo, "ls-tree", "--name-only", integration)


@pytest.mark.long
def test_clean_never_commits_an_integration_worktree_whose_branch_is_gone(
    base_repo: Path, brancher: Brancher
) -> None:
    # A run's guard deletes the integration branch an agent's `swarm merge` made, and the
    # worktree stays on it, every merged file staged: clean committed them, making the
    # rejected merge anew as the integration branch.
    worktree = one_merged(base_repo, brancher)
    integration = "swarm/integration-" + RUN_ID
    merged = git(base_repo, "rev-parse", f"{integration}^{{tree}}")
    git(base_repo, "update-ref", "-d", f"refs/heads/{integration}")

    plan = swarm(base_repo, "clean")
    out = swarm(base_repo, "clean", "--yes")

    assert "save what it holds aside (its branch is gone), then remove it" in plan.stdout
    assert out.returncode == 0, out.stdout + out.stderr
    assert not worktree.exists()
    assert git(base_repo, "branch", "--list", integration) == ""
    found = re.search(r"saved as (refs/swarm/rescued/merge-[0-9a-f]{12})", out.stdout)
    assert found is not None, out.stdout
    assert git(base_repo, "rev-parse", f"{found[1]}^{{tree}}") == merged


@pytest.mark.long
def test_a_merge_makes_an_integration_worktree_whose_branch_is_gone_anew(
    base_repo: Path, brancher: Brancher
) -> None:
    # It was refused as holding uncommitted changes, to commit there first: that commit made
    # the rejected merge anew as the integration branch.
    worktree = one_merged(base_repo, brancher)
    integration = "swarm/integration-" + RUN_ID
    git(base_repo, "update-ref", "-d", f"refs/heads/{integration}")

    out = swarm(base_repo, "merge", "two")

    assert out.returncode == 0, out.stdout + out.stderr
    saved = re.search(r"is saved as (refs/swarm/rescued/merge-[0-9a-f]{12})", out.stdout)
    assert saved is not None, out.stdout
    assert f"{worktree} was on {integration}, which is gone, so it is made anew" in out.stdout
    assert git(base_repo, "diff", "--name-only", f"{saved[1]}^", saved[1]) == "one.txt"
    assert git(base_repo, "ls-tree", "--name-only", integration, "one.txt", "two.txt") == "two.txt"
    assert git(worktree, "status", "--porcelain") == ""


@pytest.mark.long
def test_what_you_left_in_the_integration_worktree_after_a_killed_merge_is_saved_not_lost(
    base_repo: Path, brancher: Brancher, tmp_path: Path
) -> None:
    # The next merge undid the killed one with `reset --hard` and removed every new file:
    # your edits made there since went with no word (without a kill, they are refused).
    argv = _killed_in_its_checks(base_repo, brancher, tmp_path)
    worktree = next(base_repo.parent.glob("repo.swarm/_integration-*"))
    (worktree / "NOTES.txt").write_text("my notes\n")

    out = subprocess.run(argv, cwd=base_repo, capture_output=True, text=True, check=False)

    saved = _saved_as(out.stdout + out.stderr)
    assert git(base_repo, "show", f"{saved}:NOTES.txt") == "my notes"
    assert not (worktree / "NOTES.txt").exists()
    assert git(worktree, "status", "--porcelain") == ""


def test_doctor_commits_nothing_of_a_killed_merge_into_another_branch(
    base_repo: Path, brancher: Brancher, tmp_path: Path
) -> None:
    # What the killed merge's checks wrote in its temporary worktree (build output, a copy
    # file with a secret) was committed by doctor's checkpoint, on no branch: kept nowhere.
    two_tasks_and_dev(base_repo, brancher)
    started = tmp_path / "started"
    check = tmp_path / "check.py"
    check.write_text(
        "import os, pathlib, time\n"
        "pathlib.Path('built.txt').write_text('built')\n"
        "if pathlib.Path('one.txt').exists() or pathlib.Path('two.txt').exists():\n"
        f"    pathlib.Path({str(started)!r}).write_text(str(os.getpid()))\n"
        "    time.sleep(600)\n"
    )
    argv = [sys.executable, "-m", "worktree_swarm.cli", "merge", "--into", "dev",
            "--check", f"{agent_command()} {check}"]  # fmt: skip
    kill_merge_once(
        base_repo, argv, lambda: started.exists() and started.read_text() != "", what="its check"
    )
    (scratch,) = [p for p in worktree_list(base_repo) if p.name.startswith("_merge-")]
    assert (scratch / "built.txt").exists()
    objects = git(base_repo, "count-objects", "-v")

    out = swarm(base_repo, "doctor", "--yes", "--json")

    found = {f["target"]: f for f in json.loads(out.stdout)["findings"]}
    assert found[str(scratch)]["fixed"] is True, found[str(scratch)]
    assert found[str(scratch)]["checkpoint"] is None, found[str(scratch)]
    assert not scratch.exists()
    assert git(base_repo, "count-objects", "-v") == objects  # no commit, tree or blob made


@pytest.mark.long
def test_a_branch_moved_during_a_merge_into_it_is_not_overwritten(
    base_repo: Path, brancher: Brancher, tmp_path: Path
) -> None:
    base = two_tasks_and_dev(base_repo, brancher)
    yours = brancher.branch("yours", base, {"yours.txt": "your own commit\n"})
    check = tmp_path / "check.py"
    check.write_text(  # while the merge works: you move dev (a push you pulled, a commit)
        "import pathlib, subprocess\n"
        f"subprocess.run(['git', '-C', {str(base_repo)!r}, 'update-ref', 'refs/heads/dev',"
        f" {yours!r}], check=True)\n"
    )

    out = swarm(base_repo, "merge", "--into", "dev", "--check", f"{agent_command()} {check}")

    assert out.returncode == 1, out.stdout + out.stderr
    assert git(base_repo, "rev-parse", "dev") == yours  # your move stands
    line = out.stderr.strip()
    assert line.startswith("swarm: dev moved while swarm was merging; the merged result is commit ")
    result = line.split("the merged result is commit ")[1].split(":")[0]
    files = set(git(base_repo, "ls-tree", "--name-only", result).split())
    assert {"one.txt", "two.txt"} <= files  # the work, named to keep
    # Nothing recorded: no task reads as cut off in its checks (the next merge skipped them).
    assert set(merge_results(base_repo).values()) <= {None}
    git(base_repo, "branch", "-f", "dev", base)
    again = swarm(base_repo, "merge", "--into", "dev")  # nothing recorded: merged again
    assert again.returncode == 0, again.stdout + again.stderr
    assert merge_results(base_repo) == {"one": "merged", "two": "merged"}


@pytest.mark.long
def test_a_merge_s_guard_keeps_no_baseline_for_a_resume_of_its_own(
    base_repo: Path, brancher: Brancher, tmp_path: Path
) -> None:
    # Only a run is resumed: a merge's guard that kept its baseline of your checkout had the
    # next merge diff and patch all you changed in between, for no one.
    base = git(base_repo, "rev-parse", "HEAD")
    two_tasks(base_repo, brancher, base)
    check = f"{agent_command()} -c pass"
    assert swarm(base_repo, "merge", "--check", check, "one").returncode == 0
    (base_repo / "README.md").write_text("yours, between two merges\n")
    assert swarm(base_repo, "merge", "--check", check, "two").returncode == 0
    state = base_repo / ".git" / "swarm"
    assert not [p for p in state.rglob("*") if p.name == "main.tree" or "unwatched" in p.name]


@pytest.mark.long
@pytest.mark.parametrize(
    ("driver", "together"), [("union", False), ("ours", False), ("union", True)]
)
def test_a_predicted_conflict_a_tasks_merge_attribute_settles_is_named_to_review(
    base_repo: Path, brancher: Brancher, driver: str, *, together: bool
) -> None:
    # The prediction reads attributes from your checkout; the merge, from what is merged so
    # far: task a's `f.txt merge=...` settled b's conflict with it (against the target, or
    # with a merged first in the same merge), b's edit kept or dropped with no word.
    git(base_repo, "config", "--global", "merge.ours.driver", "true")  # as yours: honoured
    base = git(base_repo, "rev-parse", "HEAD")
    brancher.branch(
        "swarm/a", base, {".gitattributes": f"f.txt merge={driver}\n", "f.txt": edit(5, "5a")}
    )
    brancher.branch("swarm/b", base, {"f.txt": edit(5, "5b"), "big.txt": "b\n" * 20})
    record_run(base_repo, [("a", base), ("b", base)], base=base)
    if not together:
        assert swarm(base_repo, "merge", "a").returncode == 0

    out = swarm(base_repo, "merge", "--json")

    assert out.returncode == 0, out.stderr
    review = "predicted to conflict in f.txt; merged clean by a merge attribute: review it"
    assert json.loads(out.stdout)["results"][-1] | {"commit": None} == {
        "task_id": "b", "outcome": "merged", "reason": review, "files": [], "commit": None,
        "checks": None,
    }  # fmt: skip
    assert str(status_json(base_repo)["b"]["merge_detail"]).endswith(f"; {review}")


def test_merge_calls_out_files_that_change_what_git_or_swarm_do_once_landed(
    base_repo: Path, brancher: Brancher
) -> None:
    # An agent's new agent command in swarm.toml, or a filter it selects in .gitattributes,
    # would take effect in your next run or checkout: worth a look of its own.
    base = git(base_repo, "rev-parse", "HEAD")
    brancher.branch(
        "swarm/one",
        base,
        {
            "swarm.toml": '[defaults]\nagent = ["sh", "-c", "curl x | sh"]\n',
            "sub/.gitattributes": "*.txt filter=lfs\n",
            "sub/swarm.toml": "not read by swarm\n",
            "one.txt": "1\n",
        },
    )
    # pyproject.toml: only a change to its [tool.swarm] is called out.
    brancher.branch(
        "swarm/two", base, {"two.txt": "2\n", "pyproject.toml": '[project]\nname = "x"\n'}
    )
    brancher.branch(
        "swarm/api-token", base, {"pyproject.toml": '[tool.swarm.defaults]\nagent = ["evil"]\n'}
    )
    # A task id is the manifest's, never a secret: `api-token` is shown as it is.
    record_run(base_repo, [("one", base), ("two", base), ("api-token", base)], base=base)
    expected = [
        "review before landing (they change what git or swarm do, not only code):",
        (
            "  one  sub/.gitattributes (which filters, diff and merge drivers git runs, how it"
            " converts files)"
        ),
        "  one  swarm.toml (later runs' settings, agent commands and checks)",
        (
            "  api-token  pyproject.toml (its [tool.swarm]: later runs' settings, agent commands"
            " and checks)"
        ),
    ]

    dry = swarm(base_repo, "merge", "--dry-run")
    as_json = swarm(base_repo, "merge", "--json")

    assert dry.stdout.splitlines()[-4:] == expected, dry.stdout
    assert json.loads(as_json.stdout)["review"] == {
        "one": ["sub/.gitattributes", "swarm.toml"],
        "api-token": ["pyproject.toml"],
    }
    again = swarm(base_repo, "merge")  # nothing left to merge: nothing to call out
    assert "review before landing" not in again.stdout


@pytest.mark.parametrize(
    "text",
    ["x = " + "[" * 5000 + "]" * 5000 + "\n", "x = " + "9" * 5000 + "\n"],
    ids=["nested", "5000 digits"],
)
def test_a_pyproject_toml_tomllib_cannot_read_is_called_out_not_a_crash(
    base_repo: Path, brancher: Brancher, text: str
) -> None:
    # An agent's pyproject.toml nested too deeply, or with an integer past Python's 4300
    # digits: tomllib raised RecursionError or a plain ValueError, and `swarm merge` ended in
    # an internal error.
    base = git(base_repo, "rev-parse", "HEAD")
    brancher.branch("swarm/one", base, {"pyproject.toml": text})
    record_run(base_repo, [("one", base)], base=base)

    out = swarm(base_repo, "merge", "--json")

    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["review"] == {"one": ["pyproject.toml"]}


@pytest.mark.parametrize("where", ["worktree", "checkout"])
def test_the_integration_branch_checked_out_in_a_checkout_of_yours_is_never_merged_in(
    base_repo: Path, brancher: Brancher, tmp_path: Path, where: str
) -> None:
    # After `swarm clean` removed swarm's integration worktree (the branch is kept, to land),
    # you checked the branch out: the next merge merged, ran its checks and reset there.
    integration = one_merged(base_repo, brancher)
    branch = f"swarm/integration-{RUN_ID}"
    git(base_repo, "worktree", "remove", str(integration))
    if where == "worktree":
        yours = tmp_path / "review"
        git(base_repo, "worktree", "add", "-q", str(yours), branch)
    else:
        yours = base_repo
        git(base_repo, "switch", "-q", branch)
    head = git(yours, "rev-parse", "HEAD")

    out = swarm(base_repo, "merge", "two")

    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.startswith(
        f"swarm: {branch} is checked out in {yours}; swarm merges only in its own worktree "
    )
    assert git(yours, "rev-parse", "HEAD") == head
    assert git(yours, "status", "--porcelain") == ""
    assert merge_results(base_repo) == {"one": "merged", "two": None}


@pytest.mark.long
def test_into_a_symbolic_ref_or_a_branch_being_rebased_is_refused(
    base_repo: Path, brancher: Brancher, tmp_path: Path
) -> None:
    # Moving `alias` (-> main) moved main under your checkout; moving dev while a rebase of
    # it stopped at a conflict broke your `git rebase --continue`, and moving a branch that
    # rebase moves at its end (`--update-refs`) left it out of your restacked branches.
    base = git(base_repo, "rev-parse", "HEAD")
    two_tasks(base_repo, brancher, base)
    git(base_repo, "symbolic-ref", "refs/heads/alias", "refs/heads/main")
    git(base_repo, "branch", "dev", base)
    brancher.branch("other", base, {"keep.txt": "other\n"})
    rebasing = tmp_path / "rebasing"
    git(base_repo, "worktree", "add", "-q", str(rebasing), "dev")
    (rebasing / "keep.txt").write_text("dev\n")
    git(rebasing, "commit", "-qam", "dev")
    git(base_repo, "branch", "stacked", "dev")  # a branch `--update-refs` moves at its end
    subprocess.run(
        ["git", "rebase", "--update-refs", "other"], cwd=rebasing, capture_output=True, check=False
    )
    assert git(rebasing, "branch", "--show-current") == ""  # stopped, HEAD detached
    refs = git(base_repo, "for-each-ref")

    alias = swarm(base_repo, "merge", "--into", "alias")
    dev = swarm(base_repo, "merge", "--into", "dev")
    stacked = swarm(base_repo, "merge", "--into", "stacked")

    assert (alias.returncode, dev.returncode, stacked.returncode) == (2, 2, 2)
    assert stacked.stderr == (
        f"swarm: stacked is being rebased in {rebasing}; finish or abort that there first\n"
    )
    assert alias.stderr == (
        "swarm: --into alias is a symbolic ref; name the branch it points to, and swarm will"
        " move that one if nothing has it checked out\n"
    )
    assert dev.stderr == (
        f"swarm: dev is being rebased in {rebasing}; finish or abort that there first\n"
    )
    assert git(base_repo, "for-each-ref") == refs
    assert git(base_repo, "status", "--porcelain") == ""


def test_a_branch_checked_out_while_its_merge_checks_run_is_not_moved(
    base_repo: Path, brancher: Brancher, tmp_path: Path
) -> None:
    # Checked once at the start: a worktree you added on dev meanwhile showed every merged
    # change reversed.
    base = two_tasks_and_dev(base_repo, brancher)
    yours = tmp_path / "yours"
    check = tmp_path / "check.py"
    check.write_text(
        "import pathlib, subprocess\n"
        f"if not pathlib.Path({str(yours)!r}).exists():\n"
        f"    subprocess.run(['git', '-C', {str(base_repo)!r}, 'worktree', 'add', '-q',"
        f" {str(yours)!r}, 'dev'], check=True)\n"
    )

    out = swarm(base_repo, "merge", "--into", "dev", "--check", f"{agent_command()} {check}")

    assert out.returncode == 1, out.stdout + out.stderr
    line = out.stderr.strip()
    assert line.startswith(f"swarm: dev is checked out in {yours}; swarm never moves")
    assert "the merged result is commit " in line
    assert git(base_repo, "rev-parse", "dev") == base
    assert git(yours, "status", "--porcelain") == ""
    assert set(merge_results(base_repo).values()) <= {None}


def test_merges_land_where_your_config_asks_for_signed_commits(
    base_repo: Path, brancher: Brancher
) -> None:
    # swarm's own checkpoints are never signed: with merge.verifySignatures every merge of a
    # task's branch failed, though the dry run said it would merge.
    base = git(base_repo, "rev-parse", "HEAD")
    two_tasks(base_repo, brancher, base)
    git(base_repo, "config", "merge.verifySignatures", "true")

    out = swarm(base_repo, "merge")

    assert out.returncode == 0, out.stdout + out.stderr
    assert merge_results(base_repo) == {"one": "merged", "two": "merged"}


@pytest.mark.long
def test_an_index_lock_in_the_integration_worktree_is_left_while_you_work_there(
    base_repo: Path, brancher: Brancher
) -> None:
    worktree = one_merged(base_repo, brancher)
    lock = Path(git(worktree, "rev-parse", "--git-dir")) / "index.lock"
    lock.write_text("")  # yours: a git you run there may be writing the index
    you = subprocess.Popen(
        [*agent_python(), "-c", "import sys; sys.stdin.read()"],
        cwd=worktree, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        out = swarm(base_repo, "merge", "two")
    finally:
        assert you.stdin is not None
        you.stdin.close()
        you.wait(timeout=30)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Another git process seems to be running" in out.stderr
    assert len(out.stderr.splitlines()) == 1
    assert lock.exists()
    assert merge_results(base_repo) == {"one": "merged", "two": None}
    again = swarm(base_repo, "merge", "two")  # you left: the lock is stale now
    assert again.returncode == 0, again.stdout + again.stderr
    assert not lock.exists()
    assert merge_results(base_repo) == {"one": "merged", "two": "merged"}


@pytest.mark.parametrize(
    "lazy",
    [
        "",  # exits 0 and leaves the files as they are
        "subprocess.run(['git', 'add', '-A'], check=True)\n",
        "subprocess.run(['git', 'commit', '-qam', 'resolved'], check=True)\n",
    ],
    ids=["untouched", "staged", "committed"],
)
def test_a_resolver_that_exits_0_with_conflict_markers_left_lands_nothing(
    base_repo: Path, brancher: Brancher, tmp_path: Path, lazy: str
) -> None:
    agent = tmp_path / "resolver.py"
    agent.write_text("import subprocess\n" + lazy)
    conflicting(base_repo, brancher, agent, second={"s.txt": "s\n" * 9})

    out = swarm(base_repo, "merge", "--resolve", "--json")

    assert out.returncode == 1, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert (report["merged"], report["conflicted"]) == (["first"], ["second"])
    assert "conflict markers left in f.txt" in report["results"][1]["reason"]
    branch = "swarm/integration-" + RUN_ID
    assert "<<<<<<<" not in git(base_repo, "show", f"{branch}:f.txt")
    assert git(base_repo, "rev-parse", branch) == report["results"][0]["commit"]
    assert git(Path(report["target"]["worktree"]), "status", "--porcelain") == ""
    assert merge_results(base_repo) == {"first": "merged", "second": "conflicted"}


@pytest.mark.long
def test_a_task_merged_into_another_branch_after_the_integration_branch_shows_its_latest(
    base_repo: Path, brancher: Brancher
) -> None:
    two_tasks_and_dev(base_repo, brancher)
    integration = "swarm/integration-" + RUN_ID
    assert swarm(base_repo, "merge").returncode == 0
    tip = git(base_repo, "rev-parse", integration)

    into = swarm(base_repo, "merge", "one", "--into", "dev")

    assert into.returncode == 0, into.stdout + into.stderr
    rows = status_json(base_repo)
    assert (rows["one"]["merge_result"], rows["one"]["merge_target"]) == ("merged", "dev")
    assert str(rows["one"]["merge_detail"]).endswith(git(base_repo, "rev-parse", "dev")[:12])
    assert rows["two"]["merge_target"] == integration
    again = swarm(base_repo, "merge", "--json")  # into the integration branch: one is there
    assert again.returncode == 0, again.stdout + again.stderr
    (result,) = json.loads(again.stdout)["results"]
    assert (result["task_id"], result["outcome"], result["reason"]) == (
        "one",
        "merged",
        "already in target",
    )
    assert git(base_repo, "rev-parse", integration) == tip  # nothing merged twice
    rows = status_json(base_repo)
    assert rows["one"]["merge_target"] == integration
    assert str(rows["one"]["merge_detail"]).endswith(tip[:12])


# Edits line 5 of f.txt as its task; as a resolver, keeps both sides and says how the prompt came.
LONG_PROMPT_AGENT = """
import os, pathlib, re, sys
arg = sys.argv[1]
pointer = re.search(r"it is in the file (\\S+)\\. Read", arg)
text = pathlib.Path(pointer.group(1)).read_text() if pointer else arg
f = pathlib.Path('f.txt')
if '<<<<<<<' in f.read_text():
    f.write_text(re.sub(r'^(<<<<<<<|=======|>>>>>>>).*\\n', '', f.read_text(), flags=re.M))
    pathlib.Path('how.txt').write_text(('file' if pointer else 'argv') + f' {len(text)}')
else:  # the long task's the larger change: merged second, so resolved by its agent
    f.write_text(f.read_text().replace('line 5\\n', os.environ['SWARM_TASK_ID'] + '\\n'))
    if os.environ['SWARM_TASK_ID'] == 'long':
        pathlib.Path('more.txt').write_text('more\\n' * 9)
"""


@pytest.mark.long
def test_a_resolver_gets_the_prompt_of_a_task_with_a_long_one_through_its_file(
    base_repo: Path, tmp_path: Path
) -> None:
    # The resolver's prompt holds the task's own: over 128 KiB it went into {prompt} whole,
    # and `swarm merge --resolve` failed (Argument list too long) where the run had not.
    agent = tmp_path / "agent.py"
    agent.write_text(LONG_PROMPT_AGENT)
    long_file = tmp_path / "long.md"
    long_file.write_text("do this: " + "y" * 200_000)
    argv = " ".join([*agent_python(), str(agent), "{prompt}"])
    run = swarm(base_repo, "run", "--agent", argv, "-t", "short=do it",
                "--prompt-file", f"long={long_file}")  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr

    out = swarm(base_repo, "merge", "--resolve", "--json")

    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["merged"] == ["short", "long"]
    assert report["results"][1]["reason"] == (
        "conflicts in f.txt resolved by its agent; its agent also changed how.txt"
    )
    how, size = git(base_repo, "show", f"{report['target']['branch']}:how.txt").split()
    assert how == "file"
    assert int(size) > 200_000  # the task's whole prompt is in it


# As a task: edits line 5 of f.txt. As a resolver: keeps both sides, in the style its task's
# `env` names (it fails without it, as an agent whose key or endpoint is there would).
ENV_AGENT = """
import os, pathlib, re
f = pathlib.Path('f.txt')
if '<<<<<<<' in f.read_text():
    style = os.environ['RESOLVE_STYLE']
    f.write_text(re.sub(r'^(<<<<<<<|=======|>>>>>>>).*\\n', '', f.read_text(), flags=re.M))
    pathlib.Path('style.txt').write_text(style)
else:
    f.write_text(f.read_text().replace('line 5\\n', os.environ['SWARM_TASK_ID'] + '\\n'))
"""


# Appended to ENV_AGENT: a resolver records what its git makes of config in the environment.
LOOK_AGENT = """
import subprocess
if pathlib.Path('style.txt').exists():
    seen = [subprocess.run(['git', 'config', key], capture_output=True, text=True)
            for key in ('alias.passed', 'alias.counted')]
    pathlib.Path('seen.txt').write_text('|'.join(d.stdout.strip() or '-' for d in seen))
"""


@pytest.mark.long
def test_a_tasks_checks_and_resolver_get_its_env_in_a_merge_as_in_its_run(
    base_repo: Path, tmp_path: Path
) -> None:
    # The run gives a task's `env` to its agent and its checks; `swarm merge` gave it to
    # neither: a task done in its run failed its own checks at the merge, or its resolver.
    agent = tmp_path / "agent.py"
    agent.write_text(ENV_AGENT)
    check = [sys.executable, "-c", "import os, sys; sys.exit(os.environ.get('TEST_MODE') != 'ci')"]
    path = base_repo.parent / "tasks.toml"
    path.write_text(
        f"[defaults]\nagent = {json.dumps([*agent_python(), str(agent)])}\n"
        f"checks = [{json.dumps(check)}]\n"
        'env = { TEST_MODE = "ci", RESOLVE_STYLE = "both sides" }\n'
        '[[task]]\nid = "one"\nprompt = "edit"\n'
        '[[task]]\nid = "two"\nprompt = "edit"\n'
    )
    run = swarm(base_repo, "run", str(path))
    assert run.returncode == 0, run.stdout + run.stderr

    out = swarm(base_repo, "merge", "--resolve", "--json")

    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert sorted(report["merged"]) == ["one", "two"]
    assert all(r["checks"]["ok"] for r in report["results"])
    assert git(base_repo, "show", f"{report['target']['branch']}:style.txt") == "both sides"


# Fails when git there sees config handed over in the environment (a `git -c` alias that
# started swarm passes its settings on in GIT_CONFIG_PARAMETERS).
LOOKS_FOR_PASSED = (
    "import subprocess as s; exit(not s.run(['git', 'config', 'alias.passed']).returncode)"
)
NO_PASSED_CONFIG = [sys.executable, "-c", LOOKS_FOR_PASSED]


@pytest.mark.long
def test_a_merges_checks_and_resolver_get_no_git_config_from_the_environment(
    base_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As in the run, where a task's agent and checks never see it: the merge gave both to a
    # task's checks, its resolver and the target's checks.
    agent = tmp_path / "agent.py"
    agent.write_text(ENV_AGENT + LOOK_AGENT)
    path = base_repo.parent / "tasks.toml"
    path.write_text(
        f"[defaults]\nagent = {json.dumps([*agent_python(), str(agent)])}\n"
        f"checks = [{json.dumps(NO_PASSED_CONFIG)}]\n"
        'env = { RESOLVE_STYLE = "both sides" }\n'
        '[[task]]\nid = "one"\nprompt = "edit"\n'
        '[[task]]\nid = "two"\nprompt = "edit"\n'
    )
    run = swarm(base_repo, "run", str(path))
    assert run.returncode == 0, run.stdout + run.stderr
    monkeypatch.setenv("GIT_CONFIG_PARAMETERS", "'alias.passed'='!echo passed'")
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "alias.counted")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "!echo counted")

    out = swarm(base_repo, "merge", "--resolve", "--check", shlex.join(NO_PASSED_CONFIG), "--json")

    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert sorted(report["merged"]) == ["one", "two"]
    assert all(r["checks"]["ok"] for r in report["results"])
    assert git(base_repo, "show", f"{report['target']['branch']}:seen.txt") == "-|-"


def ignore(repo: Path, patterns: str) -> None:
    """Commit a .gitignore of *patterns* (one per line) in *repo*."""
    (repo / ".gitignore").write_text(patterns)
    git(repo, "add", ".gitignore")
    git(repo, "commit", "-q", "-m", "ignore")


def task_id_agent(tmp_path: Path) -> list[str]:
    """An agent that writes ``<task id>.txt`` in its worktree: each task adds its own file."""
    agent = tmp_path / "agent.py"
    agent.write_text(
        "import os, pathlib\npathlib.Path(os.environ['SWARM_TASK_ID'] + '.txt').write_text('x')\n"
    )
    return [*agent_python(), str(agent)]


def hang_once_armed(tmp_path: Path) -> tuple[list[str], Path, Path]:
    """A setup step that hangs once *armed* exists, first writing its pid to *started*.

    Returns its argv, *armed* and *started*: a run passes it, a merge armed after it is killed
    there.
    """
    armed, started = tmp_path / "armed", tmp_path / "started"
    hang = tmp_path / "hang.py"
    hang.write_text(
        "import os, pathlib, time\n"
        f"if pathlib.Path({str(armed)!r}).exists():\n"
        f"    pathlib.Path({str(started)!r}).write_text(str(os.getpid()))\n"
        "    time.sleep(600)\n"
    )
    return [sys.executable, str(hang)], armed, started


@pytest.mark.long
def test_a_tasks_own_checks_get_its_copy_link_and_setup_in_a_merge_as_in_its_run(
    base_repo: Path, tmp_path: Path
) -> None:
    # A task's checks need what its run gave its worktree first: a `setup` step's output
    # (`npm ci`), a `copy` file (`.env`), a `link` directory. The merge worktree had none of
    # them: a task done in its run failed its own checks at every `swarm merge`.
    ignore(base_repo, "deps/\n")  # what setup installs is not committed
    (base_repo / ".env").write_text("MODE=ci\n")
    (base_repo / "vendor").mkdir()
    install = "import os; os.makedirs('deps', exist_ok=True); open('deps/lib', 'w')"
    setup = [sys.executable, "-c", install]  # safe to run twice, as `npm ci` is
    needs = "os.path.isfile('deps/lib') and os.path.isfile('.env') and os.path.isdir('vendor')"
    check = [sys.executable, "-c", f"import os, sys; sys.exit(not ({needs}))"]
    path = tmp_path / "tasks.toml"
    path.write_text(
        f"[defaults]\nagent = {json.dumps(task_id_agent(tmp_path))}\n"
        f"setup = [{json.dumps(setup)}]\nchecks = [{json.dumps(check)}]\n"
        'copy = [".env"]\nlink = ["vendor"]\n'
        '[[task]]\nid = "one"\nprompt = "x"\n[[task]]\nid = "two"\nprompt = "x"\n'
    )
    run = swarm(base_repo, "run", str(path))
    assert run.returncode == 0, run.stdout + run.stderr

    out = swarm(base_repo, "merge", "--json")

    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["merged"] == ["one", "two"]
    assert all(r["checks"]["ok"] for r in report["results"])
    # The copy and the link are gone again with what the checks wrote (setup's ignored
    # output stays, as in a task's worktree); none of it is committed.
    worktree = Path(report["target"]["worktree"])
    assert sorted(p.name for p in worktree.iterdir()) == [
        ".git", ".gitignore", "d.txt", "deps", "f.txt", "g.txt", "keep.txt", "one.txt", "two.txt",
    ]  # fmt: skip
    branch = report["target"]["branch"]
    assert git(base_repo, "ls-tree", "--name-only", branch).split() == [
        ".gitignore", "d.txt", "f.txt", "g.txt", "keep.txt", "one.txt", "two.txt",
    ]  # fmt: skip


@pytest.mark.long
def test_a_tasks_check_timeout_holds_for_its_checks_in_a_merge(
    base_repo: Path, tmp_path: Path
) -> None:
    # A check that hangs only at the merge waited out the 30-minute default, not the task's
    # `check_timeout`.
    hang = tmp_path / "hang"
    check = [
        sys.executable,
        "-c",
        f"import os, time; os.path.exists({str(hang)!r}) and time.sleep(600)",
    ]
    path = tmp_path / "tasks.toml"
    path.write_text(
        f"[defaults]\nagent = {json.dumps(task_id_agent(tmp_path))}\n"
        f'checks = [{json.dumps(check)}]\ncheck_timeout = "2s"\n'
        '[[task]]\nid = "one"\nprompt = "x"\n'
    )
    run = swarm(base_repo, "run", str(path))
    assert run.returncode == 0, run.stdout + run.stderr
    hang.touch()

    out = swarm(base_repo, "merge", "--json", timeout=60)

    assert out.returncode == 1, out.stdout + out.stderr
    (result,) = json.loads(out.stdout)["results"]
    assert result["outcome"] == "failed", result
    assert "timed out after 2s" in result["reason"], result


@pytest.mark.long
def test_a_branch_ref_hard_linked_by_a_backup_is_kept_by_the_next_merge(
    base_repo: Path, tmp_path: Path
) -> None:
    # A backup made with `cp -al` (or a deduplicating tool) leaves each loose ref of yours with
    # a second name. git writes a ref aside and renames it over, so that link is harmless; the
    # next `swarm merge` took it for a planted one and deleted the integration branch.
    agent = task_id_agent(tmp_path)[-1]
    run = swarm(
        base_repo, "run", "--agent", f"{agent_command()} {agent}", "-t", "one=x", "-t", "two=x"
    )
    assert run.returncode == 0, run.stdout + run.stderr
    first = swarm(base_repo, "merge", "one", "--json")
    assert first.returncode == 0, first.stdout + first.stderr
    branch = json.loads(first.stdout)["target"]["branch"]
    ref = base_repo / ".git" / "refs" / "heads" / branch
    (tmp_path / "backup").mkdir()
    os.link(ref, tmp_path / "backup" / "ref")

    out = swarm(base_repo, "merge", "two", "--json")

    assert out.returncode == 0, out.stdout + out.stderr
    files = git(base_repo, "ls-tree", "--name-only", branch).split()
    assert {"one.txt", "two.txt"} <= set(files)


@pytest.mark.long
def test_a_tasks_link_and_copy_in_a_merge_are_not_left_to_the_next_tasks_checks(
    base_repo: Path, tmp_path: Path
) -> None:
    # Task one links `deps` (your installed dependencies) and copies `.env`, both ignored as
    # they usually are; task two installs its own `deps` in its setup. In their runs each had
    # its own worktree. At the merge, one's link and copy stayed in the merge worktree (ignored
    # output stays): two's setup then installed through that link into your checkout's `deps`
    # (an outside write: two failed its merge, your `deps` changed), and its checks saw one's
    # `.env`.
    ignore(base_repo, "deps\n.env\n")
    (base_repo / "deps").mkdir()
    (base_repo / ".env").write_text("MODE=one\n")
    install = "import os; os.makedirs('deps', exist_ok=True); open('deps/two-lib', 'w')"
    installs = [sys.executable, "-c", install]
    one = [sys.executable, "-c", "import os, sys; sys.exit(not os.path.isfile('.env'))"]
    two = [sys.executable, "-c", "import os, sys; sys.exit(os.path.exists('.env'))"]
    path = tmp_path / "tasks.toml"
    path.write_text(
        f"[defaults]\nagent = {json.dumps(task_id_agent(tmp_path))}\n"
        f'[[task]]\nid = "one"\nprompt = "x"\nlink = ["deps"]\ncopy = [".env"]\n'
        f"checks = [{json.dumps(one)}]\n"
        f'[[task]]\nid = "two"\nprompt = "x"\nsetup = [{json.dumps(installs)}]\n'
        f"checks = [{json.dumps(two)}]\n"
    )
    run = swarm(base_repo, "run", str(path))
    assert run.returncode == 0, run.stdout + run.stderr

    out = swarm(base_repo, "merge", "--json", "one", "two")

    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["merged"] == ["one", "two"], report["results"]
    assert list((base_repo / "deps").iterdir()) == []  # your checkout's is as it was
    worktree = Path(report["target"]["worktree"])
    assert not (worktree / ".env").exists()
    assert (worktree / "deps" / "two-lib").is_file()  # two's setup output stays, as ignored
    assert not (worktree / "deps").is_symlink()


@pytest.mark.long
def test_a_link_a_killed_merge_left_in_its_setup_is_gone_before_the_next_tasks_setup(
    base_repo: Path, tmp_path: Path
) -> None:
    # The same, the merge killed during one's setup: the next merge removes one's link (an
    # ignored file the checks' record does not name) before two's setup installs there.
    ignore(base_repo, "deps\n")
    (base_repo / "deps").mkdir()
    hang, armed, started = hang_once_armed(tmp_path)  # at the merge, not in the run
    install = "import os; os.makedirs('deps', exist_ok=True); open('deps/two-lib', 'w')"
    installs = [sys.executable, "-c", install]
    ok = [sys.executable, "-c", "pass"]
    path = tmp_path / "tasks.toml"
    path.write_text(
        f"[defaults]\nagent = {json.dumps(task_id_agent(tmp_path))}\n"
        f"checks = [{json.dumps(ok)}]\n"
        f'[[task]]\nid = "one"\nprompt = "x"\nlink = ["deps"]\n'
        f"setup = [{json.dumps(hang)}]\n"
        f'[[task]]\nid = "two"\nprompt = "x"\nsetup = [{json.dumps(installs)}]\n'
    )
    run = swarm(base_repo, "run", str(path))
    assert run.returncode == 0, run.stdout + run.stderr
    armed.touch()
    argv = [sys.executable, "-m", "worktree_swarm.cli", "merge", "one"]
    kill_merge_once(base_repo, argv, started.exists, what="one's setup")

    out = swarm(base_repo, "merge", "--json", "two")

    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["merged"] == ["two"]
    assert list((base_repo / "deps").iterdir()) == []  # your checkout's is as it was


@pytest.mark.long
def test_a_tasks_link_in_a_merge_takes_the_place_of_an_earlier_tasks_setup_output(
    base_repo: Path, tmp_path: Path
) -> None:
    # Task one installs `deps` in its setup; task two links yours instead. In their runs each
    # had its own worktree. At the merge, one's installed `deps` stayed in the merge worktree
    # (ignored output stays), and two's link was refused there ("the worktree already has
    # deps"): two failed its merge.
    ignore(base_repo, "deps\n")
    (base_repo / "deps").mkdir()
    (base_repo / "deps" / "yours").write_text("yours\n")
    install = "import os; os.makedirs('deps', exist_ok=True); open('deps/one-lib', 'w')"
    installs = [sys.executable, "-c", install]
    one = [sys.executable, "-c", "import os, sys; sys.exit(not os.path.isfile('deps/one-lib'))"]
    two = [sys.executable, "-c", "import os, sys; sys.exit(not os.path.isfile('deps/yours'))"]
    path = tmp_path / "tasks.toml"
    path.write_text(
        f"[defaults]\nagent = {json.dumps(task_id_agent(tmp_path))}\n"
        f'[[task]]\nid = "one"\nprompt = "x"\nsetup = [{json.dumps(installs)}]\n'
        f"checks = [{json.dumps(one)}]\n"
        f'[[task]]\nid = "two"\nprompt = "x"\nlink = ["deps"]\n'
        f"checks = [{json.dumps(two)}]\n"
    )
    run = swarm(base_repo, "run", str(path))
    assert run.returncode == 0, run.stdout + run.stderr

    out = swarm(base_repo, "merge", "--json", "one", "two")

    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["merged"] == ["one", "two"], report["results"]
    assert sorted(p.name for p in (base_repo / "deps").iterdir()) == ["yours"]


@pytest.mark.long
def test_a_copy_a_killed_merge_left_in_its_setup_is_gone_before_the_next_tasks_checks(
    base_repo: Path, tmp_path: Path
) -> None:
    # The same with one's `copy` of your ignored `.env`: the next merge removes it before two's
    # checks, which must not see a file of another task's.
    ignore(base_repo, ".env\n")
    (base_repo / ".env").write_text("MODE=one\n")
    hang, armed, started = hang_once_armed(tmp_path)  # at the merge, not in the run
    alone = [sys.executable, "-c", "import os, sys; sys.exit(os.path.exists('.env'))"]
    ok = [sys.executable, "-c", "pass"]
    path = tmp_path / "tasks.toml"
    path.write_text(
        f"[defaults]\nagent = {json.dumps(task_id_agent(tmp_path))}\n"
        f'[[task]]\nid = "one"\nprompt = "x"\ncopy = [".env"]\n'
        f"setup = [{json.dumps(hang)}]\nchecks = [{json.dumps(ok)}]\n"
        f'[[task]]\nid = "two"\nprompt = "x"\nchecks = [{json.dumps(alone)}]\n'
    )
    run = swarm(base_repo, "run", str(path))
    assert run.returncode == 0, run.stdout + run.stderr
    armed.touch()
    argv = [sys.executable, "-m", "worktree_swarm.cli", "merge", "one"]
    kill_merge_once(base_repo, argv, started.exists, what="one's setup")

    out = swarm(base_repo, "merge", "--json", "two")

    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["merged"] == ["two"]
    assert (base_repo / ".env").read_text() == "MODE=one\n"  # yours, as it was


@pytest.mark.long
def test_a_copy_file_a_killed_merge_left_half_written_is_copied_anew_by_the_next_merge(
    base_repo: Path, tmp_path: Path
) -> None:
    # `copy` files are mostly ignored ones (`.env`): a copy cut off by a killed merge stayed
    # in the integration worktree, and every later merge kept it (copy skips what exists), so
    # the task's checks failed there at every `swarm merge`.
    ignore(base_repo, ".env\n")
    (base_repo / ".env").write_text("MODE=ci\n")
    agent = tmp_path / "agent.py"
    agent.write_text(
        "import os, pathlib\npathlib.Path(os.environ['SWARM_TASK_ID']).write_text('x')\n"
    )
    check = [sys.executable, "-c", "import sys; sys.exit(open('.env').read() != 'MODE=ci\\n')"]
    path = tmp_path / "tasks.toml"
    path.write_text(
        f"[defaults]\nagent = {json.dumps([*agent_python(), str(agent)])}\n"
        f'checks = [{json.dumps(check)}]\ncopy = [".env"]\n'
        '[[task]]\nid = "zero"\nprompt = "x"\n[[task]]\nid = "one"\nprompt = "x"\n'
    )
    run = swarm(base_repo, "run", str(path))
    assert run.returncode == 0, run.stdout + run.stderr
    first = swarm(base_repo, "merge", "zero")
    assert first.returncode == 0, first.stdout + first.stderr
    # What a merge of `one` killed while it copied `.env` leaves: the copy's part beside it
    # (renamed in once whole), an older copy's half, and its record of what it placed.
    worktree = base_repo.parent / "repo.swarm" / f"_integration-{status_run(base_repo)}"
    (worktree / f".swarm-copy-{hashlib.sha256(b'.env').hexdigest()[:16]}").write_text("MODE=")
    (worktree / ".env").write_text("MODE=")
    record = Path(git(worktree, "rev-parse", "--absolute-git-dir")) / "swarm-checks-untracked.json"
    record.write_text(json.dumps({"untracked": [], "placed": [".env"]}))

    out = swarm(base_repo, "merge")

    assert out.returncode == 0, out.stdout + out.stderr
    assert status_json(base_repo)["one"]["merge_result"] == "merged"
    assert not (worktree / ".env").exists()  # what copy added goes after the checks
    assert not list(worktree.glob(".swarm-copy-*"))  # nor the killed copy's part


@pytest.mark.long
def test_removing_a_tasks_copy_files_never_follows_a_symlink_its_checks_made_out(
    base_repo: Path, tmp_path: Path
) -> None:
    # The copy of cfg/.env goes after the checks: through a `cfg` a check turned into a link
    # to another directory, that would delete a file of yours there.
    (base_repo / "cfg").mkdir()
    (base_repo / "cfg" / ".env").write_text("MODE=ci\n")
    yours = tmp_path / "yours"
    yours.mkdir()
    (yours / ".env").write_text("your own\n")
    agent = tmp_path / "agent.py"
    agent.write_text("import pathlib\npathlib.Path('one.txt').write_text('x')\n")
    swap = f"import shutil, os; shutil.rmtree('cfg'); os.symlink({str(yours)!r}, 'cfg')"
    path = tmp_path / "tasks.toml"
    path.write_text(
        f"[defaults]\nagent = {json.dumps([*agent_python(), str(agent)])}\n"
        f"checks = [{json.dumps([sys.executable, '-c', swap])}]\n"
        'copy = ["cfg/.env"]\n[[task]]\nid = "one"\nprompt = "x"\n'
    )
    run = swarm(base_repo, "run", str(path))
    assert run.returncode == 0, run.stdout + run.stderr

    out = swarm(base_repo, "merge", "--allow-outside-writes")

    assert out.returncode == 0, out.stdout + out.stderr
    assert (yours / ".env").read_text() == "your own\n"


def status_run(repo: Path) -> str:
    out = swarm(repo, "status", "--json")
    return str(json.loads(out.stdout)["run_id"])
