"""The manager killed while its guard puts something back: a sibling's worktree an agent
removed or moved, a branch of yours an agent moved, and the remote-tracking refs an agent moved.

Each trial stops the guard's own git step there (a `git` first on PATH that waits, once armed,
at that step), checks it got there, SIGKILLs the manager (its whole group, or it alone while the
git step then runs on), and settles with `swarm resume` and `swarm clean --yes`: nothing of the
tasks' work is lost, nothing is left behind half-made, and the agent that wrote outside fails
for it, on record once, as with no crash.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.conftest import GIT_SUBCOMMAND, git, git_first_on_path, make_repo
from tests.mergekit import record_run
from tests.test_guard_remotes import push_upstream
from tests.test_guard_worktrees import FIND_VICTIM, VICTIM
from tests.test_run import argv_toml, manifest, status_json, swarm, wait_for
from worktree_swarm.core.models import TaskState
from worktree_swarm.core.paths import guard_dir, store_path
from worktree_swarm.git.repo import open_repo
from worktree_swarm.guard import remotes
from worktree_swarm.guard.model import MAIN, Violation
from worktree_swarm.guard.watcher import Guard
from worktree_swarm.infra.store import Store
from worktree_swarm.run.retry import OUTSIDE_WRITE, check_retryable, prepare, settle_guard

AgentFactory = Callable[[str], list[str]]


class Hook:
    """A `git` first on PATH: once *armed* exists, the first *step* that *matches* waits.

    It writes its directory and arguments to *hung* (whole once it exists), waits for
    *release* (never given to a group killed meanwhile), then runs the real git step and
    touches *finished*.
    """

    def __init__(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str, matches: str
    ) -> None:
        self.armed = tmp_path / "armed"
        self.hung = tmp_path / "hung"
        self.release = tmp_path / "release"
        self.finished = tmp_path / "finished"
        q = {name: shlex.quote(str(tmp_path / name)) for name in
             ("armed", "hung", "release", "finished", "taken")}  # fmt: skip
        git_first_on_path(tmp_path, monkeypatch, lambda real: (
            GIT_SUBCOMMAND
            + f'if [ -e {q["armed"]} ] && [ "$sub" = {shlex.quote(step)} ] && {matches}'
            f' && mkdir {q["taken"]} 2>/dev/null; then\n'
            f'  echo "$PWD $*" > {q["hung"]}.part && mv {q["hung"]}.part {q["hung"]}\n'
            f'  while [ ! -e {q["release"]} ]; do sleep 0.05; done\n'
            f'  {real} "$@"; code=$?; touch {q["finished"]}; exit $code\n'
            "fi\n"
            f'exec {real} "$@"\n'
        ))  # fmt: skip


def start_manager(repo: Path, *args: str) -> subprocess.Popen[bytes]:
    """`swarm ARGS` in a session of its own: killing its group takes its git children."""
    with (repo.parent / "bg.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "worktree_swarm.cli", *args],
            cwd=repo,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def kill(manager: subprocess.Popen[bytes], hook: Hook, *, alone: bool) -> None:
    """SIGKILL the manager's group; or it alone, its hung git step then running to its end."""
    if alone:
        manager.send_signal(signal.SIGKILL)
        manager.wait(timeout=30)
        hook.release.touch()
        wait_for(hook.finished.exists, timeout=60, what="the orphaned git step to end")
    else:
        os.killpg(manager.pid, signal.SIGKILL)
        manager.wait(timeout=30)


def killed_in_the_put_back(
    repo: Path, text: str, hook: Hook, *, jobs: int, alone: bool
) -> tuple[str, str]:
    """Run the manifest *text*, kill the manager once its guard's git step hangs at *hook*.

    Returns where that step ran and its arguments.
    """
    manager = start_manager(repo, "run", manifest(repo, text), "--jobs", str(jobs))
    try:
        wait_for(hook.hung.exists, timeout=120, what="the guard's put-back to start")
    except BaseException:
        os.killpg(manager.pid, signal.SIGKILL)
        raise
    kill(manager, hook, alone=alone)
    where, _, argv = hook.hung.read_text().partition(" ")
    return where, argv


def nothing_left(repo: Path, tmp_path: Path) -> None:
    """No process of the test's, no worktree but yours, no admin dir or git lock; git is clean."""
    here = str(tmp_path.resolve())
    mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    left = []
    for proc in psutil.process_iter():
        try:
            if proc.pid not in mine and (
                proc.cwd().startswith(here) or any(here in a for a in proc.cmdline())
            ):
                left.append(proc.cmdline())
        except psutil.Error:
            continue
    assert left == []
    listed = git(repo, "worktree", "list", "--porcelain")
    assert [line for line in listed.splitlines() if line.startswith("worktree ")] == [
        f"worktree {repo}"
    ], listed
    assert "prunable" not in listed
    common = repo / ".git"
    assert list((common / "worktrees").glob("*")) == []  # no admin dir left
    assert [p for p in common.rglob("*.lock") if "swarm" not in p.relative_to(common).parts] == []
    assert not (repo.parent / "repo.swarm").exists() or not any(
        (repo.parent / "repo.swarm").iterdir()
    )
    fsck = subprocess.run(
        ["git", "fsck", "--full", "--strict"], cwd=repo, capture_output=True, text=True, check=False
    )
    assert fsck.returncode == 0, fsck.stderr
    assert "error" not in fsck.stderr, fsck.stderr
    git(repo, "for-each-ref")


# The wrecker arms the hook, then removes, deletes or moves the finished victim's worktree.
WRECK = {
    "git-worktree-remove": "git('worktree', 'remove', '--force', victim)",
    "rm-rf": "import shutil; shutil.rmtree(victim)",
    "git-worktree-move": "git('worktree', 'move', victim, sys.argv[2])",
}


def wrecker(kind: str) -> str:
    return FIND_VICTIM + (
        "wait_done()\n"
        "victim = victim_path()\n"
        "pathlib.Path(sys.argv[1]).touch()\n" + WRECK[kind] + "\n"
    )


# (how the worktree goes, the guard's git step stopped there, a shell test of that step)
PUT_BACK = {
    "removed-made-again": ("git-worktree-remove", "worktree", '[ "${*#* add }" != "$*" ]'),
    "deleted-checked-out": ("rm-rf", "read-tree", '[ "${PWD%/repo.swarm/victim}" != "$PWD" ]'),
    "moved-back": ("git-worktree-move", "worktree", '[ "${*#* move --force --force }" != "$*" ]'),
}


# A task still at work when the manager dies: `swarm resume` starts a guard of its own then.
LATER = """
import pathlib, sys, time
while not pathlib.Path(sys.argv[1]).exists():
    time.sleep(0.05)
pathlib.Path('later.txt').write_text('l\\n')
"""


@pytest.mark.long
@pytest.mark.parametrize("alone", [False, True], ids=["group", "alone"])
@pytest.mark.parametrize("case", sorted(PUT_BACK))
def test_a_manager_killed_while_its_guard_puts_a_siblings_worktree_back_loses_nothing(
    repo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    write_agent: AgentFactory,
    case: str,
    alone: bool,
) -> None:
    trial(repo, tmp_path, monkeypatch, write_agent, case, alone=alone, pending=False)


@pytest.mark.long
def test_a_worktree_move_back_cut_short_is_finished_by_the_resumed_runs_guard(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_agent: AgentFactory
) -> None:
    trial(repo, tmp_path, monkeypatch, write_agent, "moved-back", alone=False, pending=True)


@pytest.mark.long
def test_a_worktree_move_back_cut_short_is_finished_when_a_new_run_abandons_the_run(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_agent: AgentFactory
) -> None:
    trial(
        repo, tmp_path, monkeypatch, write_agent, "moved-back", alone=False, pending=True,
        settle=("run", "--force", "--agent", " ".join(write_agent(VICTIM)), "-t", "next=p"),
    )  # fmt: skip


def verdict_applied(
    repo: Path, run_id: str, suspects: set[str], summary: str, *, restored: bool = True
) -> dict[str, dict[str, object]]:
    """The outside write (*summary* in it) on record once, each of *suspects* failed for it.

    Returns the run's tasks as `swarm status --json` shows them.
    """
    out = swarm(repo, "status", "--json", "--run", run_id)
    assert out.returncode == 0, out.stderr
    rows = {t["task_id"]: t for t in json.loads(out.stdout)["tasks"]}
    with Store(store_path(open_repo(repo))) as store:
        found = [e.data for e in store.events(run_id, kind=OUTSIDE_WRITE)]
    assert len(found) == 1, found
    assert set(found[0]["suspects"]) == suspects, found  # type: ignore[call-overload]
    assert summary in str(found[0]["summary"]), found
    assert found[0]["restored"] is restored, found
    for task_id in suspects:
        assert rows[task_id]["state"] == "failed", rows[task_id]
        reason = str(rows[task_id]["reason"])
        assert reason.startswith("wrote outside its worktree"), reason
        assert summary in reason, reason
    assert not list((guard_dir(open_repo(repo), run_id) / "verdicts").glob("*"))
    return rows


def trial(
    repo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    write_agent: AgentFactory,
    case: str,
    *,
    alone: bool,
    pending: bool,
    settle: tuple[str, ...] = ("resume",),
) -> None:
    kind, step, matches = PUT_BACK[case]
    hook = Hook(tmp_path, monkeypatch, step, matches)
    victim = write_agent(VICTIM)
    wreck = [*write_agent(wrecker(kind)), str(hook.armed), str(tmp_path / "away")]
    later = [*write_agent(LATER), str(tmp_path / "go")]
    text = (
        f'[[task]]\nid = "victim"\nprompt = "p"\nagent = {argv_toml(victim)}\n'
        f'[[task]]\nid = "wrecker"\nprompt = "p"\nagent = {argv_toml(wreck)}\n'
    )
    if pending:
        text += f'[[task]]\nid = "later"\nprompt = "p"\nagent = {argv_toml(later)}\n'
    where, argv = killed_in_the_put_back(repo, text, hook, jobs=3, alone=alone)
    assert "victim" in where + argv, (where, argv)  # the guard's step, not the agent's
    assert git(repo, "show", "swarm/victim:victim.txt") == "v"
    if pending:
        assert status_json(repo)["later"]["state"] == "running"
        (tmp_path / "go").touch()

    run_id = json.loads(swarm(repo, "status", "--json").stdout)["run_id"]
    out = swarm(repo, *settle, timeout=300)
    assert "Traceback" not in out.stdout + out.stderr, out.stdout + out.stderr
    # A move cut short is finished: the worktree is where swarm made it, not where it was moved.
    assert not (tmp_path / "away").exists()
    # The wrecker fails for it, as with no crash (and the task alive beside it too); the
    # victim's work is whole.
    suspects = {"wrecker", "later"} if pending else {"wrecker"}
    # Put back whole only if the next command could finish it: a move, or a checkout done.
    back = kind == "git-worktree-move" or (kind == "rm-rf" and alone)
    rows = verdict_applied(repo, run_id, suspects, "task victim's worktree was ", restored=back)
    assert rows["victim"]["state"] == "done", rows["victim"]
    assert git(repo, "show", "swarm/victim:victim.txt") == "v"
    listed = git(repo, "worktree", "list", "--porcelain")
    assert "prunable" not in listed, listed
    git(repo, "fsck")

    out = swarm(repo, "clean", "--all", "--yes", timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    nothing_left(repo, tmp_path)
    assert set(git(repo, "branch", "--list", "swarm/*").split()) <= {
        "swarm/victim",
        "swarm/wrecker",
        "swarm/later",
        "swarm/next",
    }
    assert git(repo, "show", "swarm/victim:victim.txt") == "v"
    out = swarm(repo, "doctor")
    assert out.returncode == 0, out.stdout + out.stderr


# What both forging agents do first: commit their own work in their worktree.
COMMITS = """
import os, pathlib, subprocess, sys, time
def git(*a):
    return subprocess.run(['git', *a], check=True, capture_output=True, text=True).stdout.strip()
pathlib.Path('own.txt').write_text('own\\n')
git('add', 'own.txt')
git('commit', '-qm', 'agent commit')
"""


# The agent moves four remote-tracking refs: origin/a (packed) forged, origin/b (packed)
# deleted, origin/main (loose) forged with a line added to its reflog, origin/new made; then
# arms the hook. The guard puts them back in that order (a, b, main, new) once it ends.
FORGE_REMOTES = (
    COMMITS
    + """
mine = git('rev-parse', 'HEAD')
common = git('rev-parse', '--path-format=absolute', '--git-common-dir')
old = git('rev-parse', 'refs/remotes/origin/main')
log = os.path.join(common, 'logs', 'refs', 'remotes', 'origin', 'main')
with open(log, 'a') as out:
    out.write(f'{old} {mine} A <a@b> {int(time.time())} +0000\\tfetch: fast-forward\\n')
git('update-ref', 'refs/remotes/origin/a', mine)
git('update-ref', '-d', 'refs/remotes/origin/b')
git('update-ref', 'refs/remotes/origin/main', mine)
git('update-ref', 'refs/remotes/origin/new', mine)
pathlib.Path(sys.argv[1]).touch()
"""
)


def remotes_as_they_are(repo: Path) -> tuple[str, dict[str, bytes]]:
    """The remote-tracking refs and every reflog under logs/refs/remotes."""
    refs = git(repo, "for-each-ref", "--format=%(refname) %(objectname) %(symref)", "refs/remotes/")
    logs = repo / ".git" / "logs" / "refs" / "remotes"
    return refs, {p.relative_to(logs).as_posix(): p.read_bytes() for p in logs.rglob("*")
                  if p.is_file()}  # fmt: skip


@pytest.mark.long
@pytest.mark.parametrize(
    ("alone", "pending"), [(False, False), (True, False), (False, True)],
    ids=["group", "alone", "group-resumed-guard"],
)  # fmt: skip
def test_a_manager_killed_while_its_guard_puts_remote_refs_back_has_them_put_back_whole(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    write_agent: AgentFactory,
    alone: bool,
    pending: bool,
) -> None:
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    git(upstream, "init", "-q", "-b", "main")
    git(upstream, "commit", "-q", "--allow-empty", "-m", "initial")
    for name in ("a", "b"):
        git(upstream, "branch", name)
    git(tmp_path, "clone", "-q", "--bare", str(upstream), "origin.git")
    git(tmp_path, "clone", "-q", str(tmp_path / "origin.git"), "repo")
    repo = tmp_path / "repo"
    git(repo, "pack-refs", "--all")  # origin/a and origin/b packed
    push_upstream(tmp_path, "base.txt")
    git(repo, "fetch", "-q", "origin")  # origin/main loose, with a reflog
    assert "refs/remotes/origin/a" in (repo / ".git" / "packed-refs").read_text()
    assert (repo / ".git" / "refs" / "remotes" / "origin" / "main").is_file()
    before = remotes_as_they_are(repo)

    hook = Hook(tmp_path, monkeypatch, "update-ref", '[ "${*#*refs/remotes/origin/main}" != "$*" ]')
    agent = [*write_agent(FORGE_REMOTES), str(hook.armed)]
    text = f'[[task]]\nid = "forger"\nprompt = "p"\nagent = {argv_toml(agent)}\n'
    if pending:  # still at work when the manager dies: `swarm resume` starts a guard
        later = [*write_agent(LATER), str(tmp_path / "go")]
        text += f'[[task]]\nid = "later"\nprompt = "p"\nagent = {argv_toml(later)}\n'
    where, argv = killed_in_the_put_back(repo, text, hook, jobs=2, alone=alone)
    assert where == str(repo), where
    assert "update-ref --no-deref refs/remotes/origin/main " in argv, argv  # the third of four
    # Half-way: a and b put back, new not yet, main only by a manager killed alone.
    mine = git(repo, "rev-parse", "swarm/forger")
    out = git(
        repo,
        "for-each-ref",
        "--format=%(refname:short) %(objectname)",
        "refs/remotes/origin/[abmn]*",
    )
    forged = {line.split()[0] for line in out.splitlines() if line.endswith(mine)}
    assert forged == {"origin/new"} | ({"origin/main"} if not alone else set()), out
    assert "origin/b " in out
    if pending:
        assert status_json(repo)["later"]["state"] == "running"
        (tmp_path / "go").touch()

    out = swarm(repo, "resume", timeout=300)
    assert "Traceback" not in out.stdout + out.stderr, out.stdout + out.stderr
    out = swarm(repo, "clean", "--yes", timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    nothing_left(repo, tmp_path)
    assert remotes_as_they_are(repo) == before


def test_a_put_back_finished_by_the_next_guard_leaves_a_ref_moved_since(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    first = git(repo, "rev-parse", "HEAD")
    git(repo, "commit", "-q", "--allow-empty", "-m", "second")
    second = git(repo, "rev-parse", "HEAD")
    for name in ("main", "other"):
        git(
            repo,
            "update-ref",
            "--create-reflog",
            "-m",
            "fetch",
            f"refs/remotes/origin/{name}",
            first,
        )
    common = repo / ".git"
    base = remotes.read(repo, common, data=True)
    git(repo, "update-ref", "-m", "forged", "refs/remotes/origin/main", second)
    git(repo, "update-ref", "-m", "forged", "refs/remotes/origin/other", second)
    found = remotes.read(repo, common, data=True)
    note = tmp_path / "note.json"
    remotes.note_put_back(
        note, base, found, ["refs/remotes/origin/main", "refs/remotes/origin/other"]
    )
    git(repo, "commit", "-q", "--allow-empty", "-m", "third")
    git(repo, "update-ref", "-m", "your fetch", "refs/remotes/origin/other", "HEAD")  # since
    yours = (common / "logs" / "refs" / "remotes" / "origin" / "other").read_bytes()

    assert remotes.finish(repo, common, note) == ["refs/remotes/origin/main"]
    now = remotes.read(repo, common, data=True)
    assert now.refs["refs/remotes/origin/main"] == first
    assert now.data is not None
    assert base.data is not None
    assert now.data["refs/remotes/origin/main"] == base.data["refs/remotes/origin/main"]
    assert now.data["refs/remotes/origin/other"] == yours  # left as your fetch made it
    assert not note.exists()
    assert remotes.finish(repo, common, note) == []  # nothing noted: nothing done


# The agent commits in its worktree and moves your branch `feature` onto its commit, then arms
# the hook: the guard's compare-and-swap of `feature` back is the step stopped.
FORGE_BRANCH = (
    COMMITS
    + """
git('update-ref', 'refs/heads/feature', git('rev-parse', 'HEAD'))
pathlib.Path(sys.argv[1]).touch()
"""
)


# Stashes work in the user's checkout, then says so (the hook waits for it).
STASH_IN_CHECKOUT = """
import pathlib, subprocess, sys
repo = sys.argv[1]
pathlib.Path(repo, 'README.md').write_text('work in progress\\n')
subprocess.run(['git', '-C', repo, 'stash', 'push', '-q', '-m', 'wip'], check=True)
pathlib.Path(sys.argv[2]).touch()
"""


def test_a_manager_killed_while_it_pops_a_stash_off_the_list_loses_none(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_agent: AgentFactory
) -> None:
    # The stash a put-back pops was kept after the pop: a manager killed in between lost it.
    (repo / "README.md").write_text("older work\n")
    git(repo, "stash", "push", "-q", "-m", "older")
    listed = git(repo, "stash", "list")
    hook = Hook(tmp_path, monkeypatch, "reflog", '[ "${*#*reflog delete}" != "$*" ]')
    agent = [*write_agent(STASH_IN_CHECKOUT), str(repo), str(hook.armed)]
    text = f'[[task]]\nid = "stasher"\nprompt = "p"\nagent = {argv_toml(agent)}\n'
    _, argv = killed_in_the_put_back(repo, text, hook, jobs=1, alone=False)
    assert "reflog delete" in argv, argv
    stash = git(repo, "rev-parse", "refs/stash")  # still on the list: the pop was cut
    assert git(repo, "rev-parse", f"refs/swarm/undone/{stash}") == stash
    out = swarm(repo, "resume", timeout=300)
    assert "Traceback" not in out.stdout + out.stderr, out.stdout + out.stderr
    assert git(repo, "stash", "list") == listed  # the pop finished by the next command
    assert git(repo, "show", f"refs/swarm/undone/{stash}:README.md") == "work in progress"


@pytest.mark.parametrize("alone", [False, True], ids=["group", "alone"])
def test_a_manager_killed_while_its_guard_sets_a_forged_branch_back_still_fails_the_agent(
    repo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    write_agent: AgentFactory,
    alone: bool,
) -> None:
    git(repo, "branch", "feature")
    before = git(repo, "rev-parse", "feature")
    hook = Hook(tmp_path, monkeypatch, "update-ref", '[ "${*#*refs/heads/feature}" != "$*" ]')
    agent = [*write_agent(FORGE_BRANCH), str(hook.armed)]
    text = f'[[task]]\nid = "forger"\nprompt = "p"\nagent = {argv_toml(agent)}\n'
    where, argv = killed_in_the_put_back(repo, text, hook, jobs=1, alone=alone)
    assert where == str(repo), where
    # The guard's, not the agent's:
    assert f"update-ref -m swarm guard: put back refs/heads/feature {before} " in argv, argv
    assert git(repo, "rev-parse", "feature") == (
        before if alone else git(repo, "rev-parse", "swarm/forger")
    )
    run_id = json.loads(swarm(repo, "status", "--json").stdout)["run_id"]

    out = swarm(repo, "resume", timeout=300)
    assert "Traceback" not in out.stdout + out.stderr, out.stdout + out.stderr
    # Failed as with no crash; the put-back finished (not taken as the next guard's baseline).
    verdict_applied(repo, run_id, {"forger"}, "feature moved", restored=True)
    assert git(repo, "rev-parse", "feature") == before
    out = swarm(repo, "clean", "--all", "--yes", timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    nothing_left(repo, tmp_path)


def test_a_verdict_a_killed_manager_did_not_apply_is_applied_once(repo: Path) -> None:
    base = git(repo, "rev-parse", "HEAD")
    run_id = record_run(repo, [("a", base), ("b", base), ("c", base)], base=base)
    where = open_repo(repo)
    with Store(store_path(where)) as store:

        def recorded(violation: Violation) -> None:
            store.add_event(run_id, OUTSIDE_WRITE, task_id=None, data=violation.as_dict())

        # On record, the manager killed before its loop failed the suspect; refused by the
        # store (the run loop records it later), the manager killed before that.
        work = guard_dir(where, run_id)
        guard = Guard(where, work_dir=work, restore=True, on_record=recorded)
        guard.report(Violation(number=0, where=MAIN, paths=("x",), suspects=("a",), restored=True))
        guard = Guard(where, work_dir=work, restore=True, on_record=lambda _: None)
        guard.report(Violation(number=0, where=MAIN, paths=("y",), suspects=("b",)))

        settle_guard(where, store, run_id)
        settle_guard(where, store, run_id)  # nothing left to do
        found = [(e.data["summary"], e.data["restored"]) for e in store.events(run_id)
                 if e.kind == OUTSIDE_WRITE]  # fmt: skip
        # Each says which final state it withdraws: the run had announced them done.
        said = [(e.task_id, e.data.get("replaces")) for e in store.events(run_id, kind="state")]
        rows = {row.task_id: row for row in store.tasks(run_id)}
    assert said == [("a", "done"), ("b", "done")], said
    assert found == [
        ("files x in the main checkout", True),
        ("files y in the main checkout", False),
    ]
    assert rows["a"].state is TaskState.FAILED, rows["a"]
    assert rows["a"].reason.startswith("wrote outside its worktree: files x"), rows["a"].reason
    assert rows["b"].state is TaskState.FAILED, rows["b"]
    assert rows["b"].reason.endswith("files y in the main checkout; left as found"), rows[
        "b"
    ].reason
    assert rows["c"].state is TaskState.DONE, rows["c"]
    assert not list((guard_dir(where, run_id) / "verdicts").glob("*"))


def test_a_retry_after_a_killed_manager_retries_the_task_its_guard_caught_first(
    repo: Path,
) -> None:
    # The manager was killed after its guard caught b but before the run failed it: `swarm
    # retry` (which runs no guard of the killed run) must take in that verdict before it picks
    # what to retry, not after (b's new attempt would then be failed for the old verdict).
    base = git(repo, "rev-parse", "HEAD")
    run_id = record_run(repo, [("a", base), ("b", base)], base=base)
    where = open_repo(repo)
    with Store(store_path(where)) as store:
        guard = Guard(where, work_dir=guard_dir(where, run_id), restore=True, on_record=print)
        guard.report(Violation(number=0, where=MAIN, paths=("y",), suspects=("b",)))

        # Not refused ahead: the verdict fails b.
        check_retryable(where, store, run_id, [], fresh=False)
        picked = prepare(where, store, run_id, [], fresh=False)

        kinds = [e.kind for e in store.events(run_id)]
        rows = {row.task_id: row for row in store.tasks(run_id)}
    assert picked == ["b"]
    assert kinds.count(OUTSIDE_WRITE) == 1, kinds
    assert rows["a"].state is TaskState.DONE, rows["a"]
    assert rows["b"].state is TaskState.PENDING, rows["b"]
    assert not list((guard_dir(where, run_id) / "verdicts").glob("*"))
