"""`swarm merge` guards the programs it runs (resolving agents, checks) as `swarm run` does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import agent_python, git, make_repo
from tests.mergekit import LINES, RUN_ID, Brancher, conflicting, merge_results, record_run
from tests.test_run import checkout_snapshot, swarm, swarm_bg, wait_for
from worktree_swarm.core.paths import store_path
from worktree_swarm.git.repo import open_repo
from worktree_swarm.infra.store import Store

BRANCH = "swarm/integration-" + RUN_ID

# Resolves every conflict by keeping both sides, then runs its extra code (the attack).
RESOLVER = """
import pathlib, re, subprocess, sys
for path in pathlib.Path('.').glob('*.txt'):
    text = path.read_text()
    if '<<<<<<<' in text:
        path.write_text(re.sub(r'^(<<<<<<<|=======|>>>>>>>).*\\n', '', text, flags=re.M))
common = pathlib.Path(subprocess.run(['git', 'rev-parse', '--path-format=absolute',
                                      '--git-common-dir'], capture_output=True, text=True,
                                     check=True).stdout.strip())
"""

# What a hostile resolver does outside the merge worktree: its code (MARKER: a file that
# must never appear, as the planted program would make it).
ATTACKS = {
    "fsmonitor": "subprocess.run(['git', 'config', '--file', str(common / 'config'),"
    " 'core.fsmonitor', 'touch MARKER #'], check=True)\n",
    "hook": "hook = common / 'hooks' / 'post-checkout'\n"
    "hook.write_text('#!/bin/sh\\ntouch MARKER\\n')\nhook.chmod(0o755)\n",
    "branch": "subprocess.run(['git', 'update-ref', 'refs/heads/main', 'HEAD'], check=True)\n",
}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", {"f.txt": LINES, "README.md": "mine\n"})


@pytest.fixture
def brancher(repo: Path) -> Iterator[Brancher]:
    b = Brancher(repo)
    yield b
    b.close()


def outside_writes(repo: Path) -> list[dict[str, object]]:
    with Store(store_path(open_repo(repo))) as store:
        return [e.data for e in store.events(RUN_ID, kind="outside_write")]


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_resolver_writing_outside_is_put_back_and_its_merge_undone(
    repo: Path, brancher: Brancher, tmp_path: Path, attack: str
) -> None:
    marker = tmp_path / "planted-program-ran"
    agent = tmp_path / "resolver.py"
    agent.write_text(RESOLVER + ATTACKS[attack].replace("MARKER", str(marker)))
    base = conflicting(repo, brancher, agent)
    before = checkout_snapshot(repo)
    config = (repo / ".git/config").read_text()

    out = swarm(repo, "merge", "--resolve", "--json")

    assert out.returncode == 1, out.stdout + out.stderr
    second = json.loads(out.stdout)["results"][1]
    assert second["outcome"] == "failed"
    assert second["reason"].startswith(
        "the agent resolving its conflicts wrote outside the merge worktree: "
    )
    assert second["reason"].endswith(" (put back); merge undone")
    assert merge_results(repo) == {"first": "merged", "second": "failed"}
    first = git(repo, "log", "-1", "--format=%s", BRANCH)
    assert first == "swarm: merge task first (swarm/first)"
    # Everything as it was: the user's next git commands run nothing of the agent's.
    assert git(repo, "rev-parse", "main") == base
    assert (repo / ".git/config").read_text() == config
    assert not (repo / ".git/hooks/post-checkout").exists()
    subprocess.run(["git", "status"], cwd=repo, check=True, capture_output=True)
    subprocess.run(["git", "checkout", "-q", "main"], cwd=repo, check=True)
    assert not marker.exists()
    assert checkout_snapshot(repo) == before
    (found,) = outside_writes(repo)
    assert found["suspects"] == ["second"]
    assert found["restored"] is True


@pytest.mark.long
@pytest.mark.parametrize("source", ["--check", "task checks"])
def test_a_check_writing_into_your_checkout_is_put_back_and_its_merge_undone(
    repo: Path, brancher: Brancher, tmp_path: Path, source: str
) -> None:
    base = git(repo, "rev-parse", "HEAD")
    brancher.branch("swarm/one", base, {"one.txt": "1\n"})
    brancher.branch("swarm/two", base, {"two.txt": "2\n"})
    check = tmp_path / "check.py"  # harmless until task two's code is there
    check.write_text(
        "import os, pathlib\n"
        f"if os.path.exists('two.txt'): pathlib.Path({str(repo / 'README.md')!r}).write_text('x')\n"
    )
    argv = [sys.executable, str(check)]
    own = {"one": [argv], "two": [argv]} if source == "task checks" else None
    record_run(repo, [("one", base), ("two", base)], base=base, checks=own)
    before = checkout_snapshot(repo)

    flags = ["--check", f"{sys.executable} {check}"] if source == "--check" else []
    out = swarm(repo, "merge", *flags, "--json")

    assert out.returncode == 1, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["merged"] == ["one"]
    two = report["results"][1]
    assert two["reason"] == (
        "the checks wrote outside the merge worktree: files README.md in the main checkout"
        f" (put back) after merging into {BRANCH}; merge undone"
    )
    assert checkout_snapshot(repo) == before
    assert (repo / "README.md").read_text() == "mine\n"
    assert git(repo, "ls-tree", "--name-only", BRANCH).split() == ["README.md", "f.txt", "one.txt"]
    (found,) = outside_writes(repo)
    assert found["suspects"] == ["two"]


def test_with_allow_outside_writes_your_own_work_during_a_check_is_kept_and_recorded(
    repo: Path, brancher: Brancher, tmp_path: Path
) -> None:
    # The guard cannot tell your hand from a check's: you edit README.md, commit to a branch
    # of yours, while the merge's check of task one runs.
    base = git(repo, "rev-parse", "HEAD")
    brancher.branch("swarm/one", base, {"one.txt": "1\n"})
    record_run(repo, [("one", base)], base=base)
    check = tmp_path / "check.py"
    check.write_text(
        "import os, pathlib, subprocess\n"
        "if os.path.exists('one.txt'):\n"
        f"    pathlib.Path({str(repo / 'README.md')!r}).write_text('my edit\\n')\n"
        f"    subprocess.run(['git', '-C', {str(repo)!r}, 'branch', 'mine'], check=True)\n"
    )

    out = swarm(repo, "merge", "--check", f"{sys.executable} {check}", "--allow-outside-writes")

    assert out.returncode == 0, out.stdout + out.stderr
    assert merge_results(repo) == {"one": "merged"}
    assert (repo / "README.md").read_text() == "my edit\n"
    assert git(repo, "rev-parse", "mine") == base
    assert (
        "the checks wrote outside the merge worktree (allowed): mine moved (kept);"
        " files README.md in the main checkout (kept)"
    ) in out.stdout
    found = outside_writes(repo)  # still there for `swarm report`, each with its patch
    assert [(f["summary"], f["suspects"], f["restored"]) for f in found] == [
        ("mine moved", ["one"], False),
        ("files README.md in the main checkout", ["one"], False),
    ]
    assert "my edit" in Path(str(found[1]["patch"])).read_text()


def test_with_allow_outside_writes_your_edit_while_a_resolver_works_is_kept_and_recorded(
    repo: Path, brancher: Brancher, tmp_path: Path
) -> None:
    # Your edit of README.md lands while the agent resolves task second's conflict (here the
    # resolver makes it, as your hand would): kept, recorded, and the resolved merge stands.
    agent = tmp_path / "resolver.py"
    agent.write_text(
        RESOLVER + f"pathlib.Path({str(repo / 'README.md')!r}).write_text('my edit\\n')\n"
    )
    conflicting(repo, brancher, agent)

    out = swarm(repo, "merge", "--resolve", "--allow-outside-writes", "--json")

    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["merged"] == ["first", "second"]
    assert git(repo, "show", f"{BRANCH}:f.txt").splitlines()[4:6] == [
        "five first",
        "five second",
    ]
    assert (repo / "README.md").read_text() == "my edit\n"
    # --json says so too: the lines the merge would have printed are its notes.
    assert report["notes"] == [
        (
            "the agent resolving its conflicts wrote outside the merge worktree (allowed): "
            "files README.md in the main checkout (kept)"
        )
    ]
    (found,) = outside_writes(repo)
    assert (found["suspects"], found["restored"]) == (["second"], False)
    assert "my edit" in Path(str(found["patch"])).read_text()


@pytest.mark.long
@pytest.mark.parametrize("into", [False, True])
def test_a_resolver_and_checks_that_stay_in_the_merge_worktree_merge_as_before(
    repo: Path, brancher: Brancher, tmp_path: Path, into: bool
) -> None:
    agent = tmp_path / "resolver.py"  # commits the merge itself, leaves build output behind
    agent.write_text(
        RESOLVER + "pathlib.Path('build.log').write_text('built')\n"
        "subprocess.run(['git', 'commit', '-qam', 'resolved'], check=True)\n"
    )
    base = conflicting(repo, brancher, agent)
    git(repo, "branch", "release", base)
    check = f"{sys.executable} -c \"open('out.txt', 'w').write('checked')\""
    before = checkout_snapshot(repo)

    out = swarm(repo, "merge", "--resolve", "--check", check,
                *(["--into", "release"] if into else []), "--json")  # fmt: skip

    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["merged"] == ["first", "second"]
    target = "release" if into else BRANCH
    merged = git(repo, "show", f"{target}:f.txt").splitlines()
    assert merged[4:6] == ["five first", "five second"]
    assert outside_writes(repo) == []
    assert checkout_snapshot(repo) == before
    guard = repo / ".git/swarm/runs" / RUN_ID / "merge/guard"
    assert not (guard / "held").exists()
    assert not list(guard.glob("*index"))  # its copies of your checkout's index


@pytest.mark.long
@pytest.mark.parametrize("plants", [False, True])
def test_with_rerere_on_a_resolver_may_commit_but_not_plant_a_resolution(
    repo: Path, brancher: Brancher, tmp_path: Path, plants: bool
) -> None:
    plant = (
        "entry = common / 'rr-cache' / ('ab' * 20)\nentry.mkdir(parents=True)\n"
        "(entry / 'postimage').write_text('the agent decides')\n"
    )
    agent = tmp_path / "resolver.py"
    agent.write_text(
        RESOLVER
        + "subprocess.run(['git', 'commit', '-qam', 'resolved'], check=True)\n"
        + (plant if plants else "")
    )
    conflicting(repo, brancher, agent)
    git(repo, "config", "rerere.enabled", "true")  # a commit makes .git/rr-cache, empty
    assert not (repo / ".git" / "rr-cache").exists()

    out = swarm(repo, "merge", "--resolve", "--json")

    report = json.loads(out.stdout)
    if plants:
        assert out.returncode == 1
        assert report["failed"] == ["second"]
        assert "rr-cache/abab" in report["results"][1]["reason"]
        assert not (repo / ".git" / "rr-cache" / ("ab" * 20)).exists()
    else:
        assert out.returncode == 0, out.stdout + out.stderr
        assert report["merged"] == ["first", "second"]
        assert outside_writes(repo) == []
        assert (repo / ".git" / "rr-cache").is_dir()


def test_a_check_program_not_on_path_is_bad_input_and_creates_nothing(
    repo: Path, brancher: Brancher
) -> None:
    base = git(repo, "rev-parse", "HEAD")
    brancher.branch("swarm/one", base, {"one.txt": "1\n"})
    record_run(repo, [("one", base)], base=base)

    out = swarm(repo, "merge", "--check", "pytets -q")

    assert out.returncode == 2
    assert out.stderr == (
        "swarm: --check 'pytets -q': program 'pytets' not found on PATH; install it or fix"
        " its name\n"
    )
    assert git(repo, "branch", "--list", "swarm/integration-*") == ""
    assert not (repo.parent / "repo.swarm").exists()


# -- beside a run of the same repository -------------------------------------------------------

# The run's agents: one that writes its file at once, one that writes its file then waits for
# the release file in the control dir named by its argument.
WRITE = (
    "import os, pathlib\npathlib.Path(os.environ['SWARM_TASK_ID'] + '.txt').write_text('w\\n')\n"
)
WAIT = WRITE + (
    "import sys, time\nctrl = pathlib.Path(sys.argv[1])\n(ctrl / 'running').touch()\n"
    "while not (ctrl / 'release').exists():\n    time.sleep(0.05)\n"
)
# The merge's check: the first one (the target before any merge) passes at once, the next
# says it runs and waits for the go file.
CHECK = (
    "import pathlib, sys, time\nctrl = pathlib.Path(sys.argv[1])\n"
    "if not (ctrl / 'first').exists():\n    (ctrl / 'first').touch()\n    sys.exit(0)\n"
    "(ctrl / 'checking').touch()\n"
    "while not (ctrl / 'go').exists():\n    time.sleep(0.05)\n"
)


def run_beside(repo: Path, tmp_path: Path, tasks: str) -> tuple[subprocess.Popen[bytes], Path]:
    """Start `swarm run` of *tasks* (`{wait}`, `{write}`: the agents' argv); its control dir."""
    ctrl = tmp_path / "ctrl"
    ctrl.mkdir()
    argv = {}
    for name, source in (("wait", WAIT), ("write", WRITE)):
        (tmp_path / f"{name}.py").write_text(source)
        argv[name] = json.dumps([*agent_python(), str(tmp_path / f"{name}.py"), str(ctrl)])
    manifest = tmp_path / "tasks.toml"
    manifest.write_text(tasks.format(**argv))
    return swarm_bg(repo, "run", str(manifest), "--jobs", "2"), ctrl


@pytest.mark.long
@pytest.mark.parametrize("sparse", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_a_task_of_a_run_that_ends_or_starts_during_a_merge_check_keeps_its_branch(
    repo: Path, tmp_path: Path, sparse: bool
) -> None:
    # While the merge checks task a, the run's task slow ends (its last checkpoint moves its
    # branch) and late, which starts from it, is made and ends: the run's moves, not the check's.
    # In a sparse checkout of yours, `git worktree add` copies its settings into each new admin
    # dir: the merge's worktree while slow runs, late's while the check runs.
    if sparse:
        git(repo, "sparse-checkout", "set", "--no-cone", "/*")
        assert (repo / ".git" / "config.worktree").is_file()
    running, ctrl = run_beside(
        repo,
        tmp_path,
        '[[task]]\nid = "a"\nprompt = "p"\nagent = {write}\n'
        '[[task]]\nid = "slow"\nprompt = "p"\nagent = {wait}\n'
        '[[task]]\nid = "late"\nprompt = "p"\nagent = {write}\ndepends_on = ["slow"]\n',
    )
    merging = None
    try:
        wait_for(lambda: (ctrl / "running").exists() and run_states(repo)["a"] == "done", what="a")
        (tmp_path / "check.py").write_text(CHECK)
        check = f"{sys.executable} {tmp_path / 'check.py'} {ctrl}"
        merging = swarm_bg(repo, "merge", "a", "--check", check)
        wait_for((ctrl / "checking").exists, what="the merge's check of a")
        (ctrl / "release").touch()
        assert running.wait(timeout=60) == 0
        (ctrl / "go").touch()
        assert merging.wait(timeout=60) == 0
    finally:
        (ctrl / "release").touch()
        (ctrl / "go").touch()
        for proc in (running, merging):
            if proc is not None and proc.poll() is None:
                proc.kill()
    assert git(repo, "show", "swarm/slow:slow.txt") == "w"
    assert git(repo, "show", "swarm/late:late.txt") == "w"
    assert git(repo, "show", f"swarm/integration-{run_id(repo)}:a.txt") == "w"
    with Store(store_path(open_repo(repo))) as store:
        assert store.events(run_id(repo), kind="outside_write") == []


@pytest.mark.long
def test_a_branch_swarm_clean_deletes_during_a_merge_check_stays_deleted(
    repo: Path, brancher: Brancher, tmp_path: Path
) -> None:
    # `swarm clean --force` deletes task two's branch, told and done while the merge's check
    # of task one runs: clean's move, not the check's.
    base = git(repo, "rev-parse", "HEAD")
    brancher.branch("swarm/one", base, {"one.txt": "1\n"})
    brancher.branch("swarm/two", base, {"two.txt": "2\n"})
    record_run(repo, [("one", base), ("two", base)], base=base)
    ctrl = tmp_path / "ctrl"
    ctrl.mkdir()
    (tmp_path / "check.py").write_text(CHECK)
    check = f"{sys.executable} {tmp_path / 'check.py'} {ctrl}"
    merging = swarm_bg(repo, "merge", "one", "--check", check)
    try:
        wait_for((ctrl / "checking").exists, what="the merge's check of one")
        cleaned = swarm(repo, "clean", "--yes", "--force")
        (ctrl / "go").touch()
        assert merging.wait(timeout=60) == 0
    finally:
        (ctrl / "go").touch()
        if merging.poll() is None:
            merging.kill()
    assert "swarm/two: task two is done; not merged (--force)" in cleaned.stdout, cleaned.stdout
    assert git(repo, "branch", "--list", "swarm/two") == ""
    assert merge_results(repo) == {"one": "merged", "two": None}
    assert outside_writes(repo) == []
    assert not list((repo / ".git" / "swarm" / "ref-moves").iterdir())


def run_id(repo: Path) -> str:
    with Store(store_path(open_repo(repo))) as store:
        (run,) = store.runs()
        return run.run_id


def run_states(repo: Path) -> dict[str, str]:
    with Store(store_path(open_repo(repo))) as store:
        return {row.task_id: row.state.value for row in store.tasks(run_id(repo))}


def test_checks_that_write_outside_before_any_merge_fail_the_baseline_and_merge_nothing(
    repo: Path, brancher: Brancher, tmp_path: Path
) -> None:
    base = git(repo, "rev-parse", "HEAD")
    brancher.branch("swarm/one", base, {"one.txt": "1\n"})
    record_run(repo, [("one", base)], base=base)
    check = tmp_path / "check.py"  # writes outside from its first run, on the target itself
    check.write_text(
        "import pathlib, subprocess\n"
        f"pathlib.Path({str(repo / 'README.md')!r}).write_text('x')\n"
        "subprocess.run(['git', 'tag', 'planted'], check=True)\n"
    )
    before = checkout_snapshot(repo)
    tags = git(repo, "tag", "--list")

    out = swarm(repo, "merge", "--check", f"{sys.executable} {check}", "--json")

    assert out.returncode == 1, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["baseline_checks"]["ok"] is False
    assert "wrote outside the merge worktree" in report["baseline_checks"]["summary"]
    assert report["merged"] == []
    assert git(repo, "rev-parse", BRANCH) == base
    assert checkout_snapshot(repo) == before
    assert (repo / "README.md").read_text() == "mine\n"
    assert git(repo, "tag", "--list") == tags  # a tag is not the target: put back too
    assert merge_results(repo) == {"one": None}
    found = outside_writes(repo)  # recorded: `swarm report` lists them
    assert {str(f["summary"]) for f in found} == {
        "tags/planted moved",
        "files README.md in the main checkout",
    }
    assert all(f["restored"] is True for f in found)


@pytest.mark.long
def test_what_a_killed_merge_announced_is_forgotten_by_the_next_merge_not_told_each_time(
    repo: Path, brancher: Brancher, tmp_path: Path
) -> None:
    # A `swarm merge` killed in its check leaves its announcement of the target: every later
    # merge's guard said it had ignored it (a scan that failed) and left a mark beside it.
    base = git(repo, "rev-parse", "HEAD")
    for name in ("one", "two", "three"):
        brancher.branch(f"swarm/{name}", base, {f"{name}.txt": "1\n"})
    record_run(repo, [("one", base), ("two", base), ("three", base)], base=base)
    started = tmp_path / "started"
    hang = tmp_path / "hang.py"
    hang.write_text(
        "import pathlib, sys, time\npathlib.Path(sys.argv[1]).touch()\ntime.sleep(600)\n"
    )
    merging = subprocess.Popen(
        [sys.executable, "-m", "worktree_swarm.cli", "merge", "one", "--check",
         f"{sys.executable} {hang} {started}"],
        cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(started.exists, what="the merge's check")
    finally:
        os.killpg(merging.pid, signal.SIGKILL)
        merging.wait(timeout=30)
    moves = repo / ".git" / "swarm" / "ref-moves"
    assert len(list(moves.glob("*.json"))) == 1
    check = f"{sys.executable} -c pass"

    first = swarm(repo, "merge", "one", "two", "--check", check, "--json")
    second = swarm(repo, "merge", "three", "--check", check, "--json")

    assert first.returncode == 0, first.stdout + first.stderr
    assert [n for n in json.loads(first.stdout)["notes"] if "is gone" in n]  # told once
    assert second.returncode == 0, second.stdout + second.stderr
    assert json.loads(second.stdout)["notes"] == []
    assert json.loads(second.stdout)["merged"] == ["three"]
    assert not list(moves.iterdir())
