"""End to end: `swarm run` through the real CLI, real git, real agent processes."""

from __future__ import annotations

import json
import os
import pty
import re
import resource
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import psutil
import pytest

from tests.conftest import (
    as_owner_only,
    git,
    git_first_on_path,
    make_repo,
    reads_only,
    swarm_here,
)
from worktree_swarm.infra.lock import ManagerLock
from worktree_swarm.run.checks import placeholder_lines

AgentFactory = Callable[[str], list[str]]


def swarm(repo: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in *repo* and wait for it (a command that only reads: in this process)."""
    if reads_only(args):
        return swarm_here(repo, *args)
    return subprocess.run(
        [sys.executable, "-m", "worktree_swarm.cli", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


# The last background swarm and its log: told when a wait for what it should do times out.
_LAST_BG: list[tuple[subprocess.Popen[bytes], Path]] = []


def swarm_bg(
    repo: Path, *args: str, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start the real CLI in *repo* in the background; its output goes to repo.parent/bg.log."""
    path = repo.parent / "bg.log"
    with path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worktree_swarm.cli", *args],
            cwd=repo,
            env=env,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
    _LAST_BG[:] = [(proc, path)]
    return proc


def _last_bg() -> str:
    """How the last background swarm is doing, with the end of its output."""
    if not _LAST_BG:
        return ""
    proc, path = _LAST_BG[0]
    code = proc.poll()
    state = "still running" if code is None else f"exited with {code}"
    try:
        tail = path.read_text(errors="replace").splitlines()[-15:]
    except OSError:
        tail = []
    return f"; the last background swarm ({path}) {state}:\n" + "\n".join(tail)


def wait_for(
    predicate: Callable[[], bool], *, timeout: float = 60, what: str = "condition"
) -> None:
    """Poll *predicate* until true or fail after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}{_last_bg()}")


def written(path: Path, *, timeout: float = 60, what: str = "condition") -> str:
    """The text of *path* once another process has written some (not just made the file)."""
    wait_for(lambda: path.exists() and path.read_text() != "", timeout=timeout, what=what)
    return path.read_text()


def manifest(repo: Path, text: str) -> str:
    path = repo.parent / "tasks.toml"
    path.write_text(text)
    return str(path)


def argv_toml(argv: list[str]) -> str:
    return json.dumps(argv)


def state_db(repo: Path) -> sqlite3.Connection:
    return sqlite3.connect(repo / ".git" / "swarm" / "state.db")


def status_json(repo: Path, *args: str) -> dict[str, dict[str, object]]:
    out = swarm(repo, "status", "--json", *args)
    assert out.returncode == 0, out.stderr
    return {t["task_id"]: t for t in json.loads(out.stdout)["tasks"]}


def branch_file(repo: Path, branch: str, path: str) -> str:
    return git(repo, "show", f"{branch}:{path}")


def checkout_snapshot(repo: Path) -> tuple[str, str, str]:
    return (
        git(repo, "rev-parse", "HEAD"),
        git(repo, "symbolic-ref", "HEAD"),
        git(repo, "status", "--porcelain", "--untracked-files=all"),
    )


def pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# A fake agent that records which task files it saw, writes its own, and exits 0.
RECORDING_AGENT = """
import os, pathlib, sys
seen = sorted(p.name for p in pathlib.Path('.').glob('*.out'))
tid = os.environ['SWARM_TASK_ID']
pathlib.Path(tid + '.out').write_text(','.join(seen) + '\\n')
print('agent', tid, 'saw', seen)
"""


def test_inline_tasks_land_on_their_branches_and_checkout_is_untouched(
    repo: Path, write_agent: AgentFactory
) -> None:
    before = checkout_snapshot(repo)
    agent = " ".join(write_agent(RECORDING_AGENT))
    out = swarm(repo, "run", "--agent", agent, "-t", "one=first", "-t", "two=second")
    assert out.returncode == 0, out.stderr
    assert "one.out" in git(repo, "ls-tree", "--name-only", "swarm/one")
    assert "two.out" in git(repo, "ls-tree", "--name-only", "swarm/two")
    assert checkout_snapshot(repo) == before
    wt_root = repo.parent / "repo.swarm"
    assert (wt_root / "one" / "one.out").is_file()
    rows = status_json(repo)
    assert rows["one"]["state"] == "done"
    assert rows["one"]["files_changed"] == 1
    assert rows["one"]["branch"] == "swarm/one"
    assert rows["one"]["alive"] is False
    # Branches are created without upstream tracking.
    config = subprocess.run(
        ["git", "config", "--get-regexp", "^branch[.]swarm/"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    )
    assert config.stdout == ""


# Records what the agent's own git makes of your global config.
GIT_CONFIG_AGENT = """
import pathlib, subprocess
def ask(*args):
    done = subprocess.run(['git', *args], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else '-'
seen = [ask('config', 'user.name'), ask('config', 'user.email'),
        ask('check-ignore', 'notes.scratch'), ask('config', 'alias.hello'),
        ask('config', 'alias.passed'), ask('config', 'alias.counted')]
pathlib.Path('notes.scratch').write_text('scratch')
pathlib.Path('seen.txt').write_text('|'.join(seen) + '\\n')
"""


def test_an_agents_git_has_your_identity_and_ignore_file_and_no_more_of_your_config(
    repo: Path, write_agent: AgentFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a `git -c` alias that starts swarm passes on, in both of git's ways.
    monkeypatch.delenv("GIT_AUTHOR_NAME")  # the identity from your config alone
    monkeypatch.delenv("GIT_AUTHOR_EMAIL")
    monkeypatch.setenv("GIT_CONFIG_PARAMETERS", "'alias.passed'='!echo passed'")
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "alias.counted")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "!echo counted")
    home = Path(os.environ["HOME"])
    (home / "ignored-everywhere").write_text("*.scratch\n")
    (home / ".gitconfig").write_text(
        "[user]\n\tname = Ann Example\n\temail = ann@example.com\n"
        "[core]\n\texcludesFile = ~/ignored-everywhere\n[alias]\n\thello = !echo hi\n"
    )
    agent = " ".join(write_agent(GIT_CONFIG_AGENT))
    out = swarm(repo, "run", "--agent", agent, "-t", "one=look")
    assert out.returncode == 0, out.stderr
    assert branch_file(repo, "swarm/one", "seen.txt") == (
        "Ann Example|ann@example.com|notes.scratch|-|-|-"
    )
    assert "notes.scratch" not in git(repo, "ls-tree", "--name-only", "swarm/one")
    assert git(repo, "log", "-1", "--format=%an <%ae>", "swarm/one") == (
        "Ann Example <ann@example.com>"
    )


# Writes what it was given (argv, then swarm's variables) into its worktree, for the branch.
TOLD_AGENT = """
import json, os, pathlib, sys
names = ('RUN_ID', 'TASK_ID', 'WORKTREE', 'BRANCH', 'BASE', 'CONTEXT')
env = {n: os.environ.get('SWARM_' + n) for n in names}
told = {'argv': sys.argv[1:], 'env': env, 'cwd': os.getcwd(),
        'prompt': pathlib.Path(sys.argv[4]).read_text()}
pathlib.Path('told.json').write_text(json.dumps(told))
"""


def test_an_agent_gets_its_placeholders_and_swarm_variables_as_the_readme_names_them(
    repo: Path, write_agent: AgentFactory
) -> None:
    agent = [*write_agent(TOLD_AGENT), "{task_id}", "{worktree}", "{branch}", "{prompt_file}"]
    text = f"[defaults]\nagent = {argv_toml(agent)}\n"
    text += '[[task]]\nid = "a"\nprompt = "first"\n'
    text += '[[task]]\nid = "b"\nprompt = "second"\ndepends_on = ["a"]\n'
    out = swarm(repo, "run", manifest(repo, text))
    assert out.returncode == 0, out.stdout + out.stderr
    run_id = json.loads(swarm(repo, "status", "--json").stdout)["run_id"]
    diff = json.loads(swarm(repo, "diff", "--json").stdout)
    bases = {t["task_id"]: t["base"] for t in diff["tasks"]}
    assert bases["a"] == git(repo, "rev-parse", "main")
    assert bases["b"] == git(repo, "rev-parse", "swarm/a")  # its dependency's work
    for task, prompt in (("a", "first"), ("b", "second")):
        told = json.loads(branch_file(repo, f"swarm/{task}", "told.json"))
        worktree = repo.parent / "repo.swarm" / task
        task_id, where, branch, prompt_file = told["argv"]
        assert (task_id, where, branch) == (task, str(worktree), f"swarm/{task}")
        assert Path(told["cwd"]) == worktree
        assert told["prompt"].startswith(prompt), told["prompt"]
        assert Path(prompt_file).read_text() == told["prompt"]
        env = told["env"]
        assert env["RUN_ID"] == run_id
        assert (env["TASK_ID"], env["WORKTREE"], env["BRANCH"]) == (task, where, branch)
        assert env["BASE"] == bases[task]
        assert env["CONTEXT"] is not None
        assert Path(env["CONTEXT"]).name in told["prompt"]  # the prompt tells of that file


@pytest.mark.slow  # long: runs in `scripts/check --slow` (CI runs both)
def test_jobs_limit_is_never_exceeded(repo: Path, write_agent: AgentFactory) -> None:
    agent = write_agent(
        "import os, time, pathlib\n"
        "pathlib.Path(os.environ['SWARM_TASK_ID'] + '.txt').write_text('x')\n"
        "time.sleep(0.3)\n"
    )
    tasks = "\n".join(f'[[task]]\nid = "t{i:02d}"\nprompt = "p"\n' for i in range(20))
    path = manifest(repo, f"[defaults]\nagent = {argv_toml(agent)}\njobs = 4\n{tasks}")
    proc = swarm_bg(repo, "run", path)
    peak_psutil = 0
    script = agent[-1]
    while proc.poll() is None:
        # The agent itself, not its shim (whose command line ends with the agent's).
        procs = psutil.process_iter(["cmdline"])
        live = [p for p in procs if (p.info["cmdline"] or [])[1:2] == [script]]
        peak_psutil = max(peak_psutil, len(live))
        time.sleep(0.02)
    assert proc.returncode == 0, (repo.parent / "bg.log").read_text()
    with state_db(repo) as db:
        spans = db.execute("SELECT started_at, ended_at FROM attempts").fetchall()
    assert len(spans) == 20
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    peak_store = running = 0
    for _, delta in events:
        running += delta
        peak_store = max(peak_store, running)
    assert 2 <= peak_store <= 4
    assert peak_psutil <= 4


def _slow_checkout_of(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow: str, *, after: str
) -> None:
    """A `git` whose checkout of the worktrees of *slow* (space-separated task ids) ends only
    once every task of *after* (space-separated) is set up and about to ask for a slot: its
    prompt written. Better-ranked tasks are set up last, as a slower checkout would make them.
    """
    runs = shlex.quote(str(repo / ".git" / "swarm" / "runs"))
    ready = " && ".join(f"ls {runs}/*/{t}/prompt-1.md" for t in after.split())
    checkouts = "|".join(f'*/repo.swarm/{t}" "*read-tree*' for t in slow.split())
    git_first_on_path(tmp_path, monkeypatch, lambda real: (
        "#!/bin/sh\n"
        f'case "$PWD $*" in {checkouts})\n'
        "  i=0\n"
        f'  until {{ {ready}; }} >/dev/null 2>&1 || [ $i -ge 1200 ]; do'
        " sleep 0.05; i=$((i + 1)); done;;\n"
        "esac\n"
        f'exec {real} "$@"\n'
    ))  # fmt: skip


def _agents_started(repo: Path) -> list[str]:
    with state_db(repo) as db:
        rows = db.execute("SELECT task_id FROM events WHERE kind = 'agent_started' ORDER BY id")
        return [row[0] for row in rows]


def test_a_priority_task_last_in_the_manifest_starts_first_however_quick_others_checkouts(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_agent: AgentFactory
) -> None:
    # jobs = 1: hi and lo are set up together, lo first; the slot waits for hi all the same.
    _slow_checkout_of(repo, tmp_path, monkeypatch, "hi", after="lo")
    agent = write_agent("import os, pathlib\npathlib.Path(os.environ['SWARM_TASK_ID']).touch()\n")
    text = f"[defaults]\nagent = {argv_toml(agent)}\njobs = 1\n"
    for task in ("lo", "mid"):
        text += f'[[task]]\nid = "{task}"\nprompt = "p"\n'
    text += '[[task]]\nid = "hi"\nprompt = "p"\npriority = 10\n'
    out = swarm(repo, "run", manifest(repo, text))
    assert out.returncode == 0, out.stdout + out.stderr
    assert _agents_started(repo) == ["hi", "lo", "mid"]


# Marks that its agent started, and which others had; ends once two have started.
MARKING_AGENT = """
import os, pathlib, sys, time
marks = pathlib.Path(sys.argv[1])
seen = sorted(p.name for p in marks.iterdir())
(marks / os.environ['SWARM_TASK_ID']).touch()
pathlib.Path('seen.txt').write_text(' '.join(seen) + '\\n')
deadline = time.monotonic() + 60
while len(list(marks.iterdir())) < 2 and time.monotonic() < deadline:
    time.sleep(0.05)
"""


def test_agents_start_in_rank_order_with_several_jobs_however_quick_others_checkouts(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_agent: AgentFactory
) -> None:
    # jobs = 2, four tasks set up at once, the two best-ranked (by priority) last: those two
    # start first, and t1 and t2 only once a slot of theirs is free.
    _slow_checkout_of(repo, tmp_path, monkeypatch, "t3 t4", after="t1 t2")
    marks = tmp_path / "marks"
    marks.mkdir()
    agent = argv_toml([*write_agent(MARKING_AGENT), str(marks)])
    text = f"[defaults]\nagent = {agent}\njobs = 2\n"
    for number, priority in ((1, 0), (2, 0), (3, 1), (4, 2)):
        text += f'[[task]]\nid = "t{number}"\nprompt = "p"\npriority = {priority}\n'
    out = swarm(repo, "run", manifest(repo, text))
    assert out.returncode == 0, out.stdout + out.stderr
    # What each agent found started before it (its agent_started events of the first two
    # could come in either order: their agents start together).
    saw = {
        t: set(branch_file(repo, f"swarm/{t}", "seen.txt").split())
        for t in ("t1", "t2", "t3", "t4")
    }
    assert saw["t1"] >= {"t3", "t4"}, saw
    assert saw["t2"] >= {"t3", "t4"}, saw
    assert saw["t3"] | saw["t4"] <= {"t3", "t4"}, saw


def test_a_task_set_up_goes_first_while_a_better_ranked_ones_setup_still_runs(
    repo: Path, write_agent: AgentFactory
) -> None:
    # jobs = 1: hi's setup lasts until lo's agent has started (at most 60 s): the slot is not
    # held for hi meanwhile.
    started = repo.parent / "lo-started"
    agent = write_agent("import os, pathlib\npathlib.Path(os.environ['SWARM_TASK_ID']).touch()\n")
    lo = write_agent(
        f"import pathlib\npathlib.Path('lo').touch()\npathlib.Path({str(started)!r}).touch()\n"
    )
    setup = write_agent(
        "import pathlib, time\ndeadline = time.monotonic() + 60\n"
        f"while not pathlib.Path({str(started)!r}).exists() and time.monotonic() < deadline:\n"
        "    time.sleep(0.05)\n"
    )
    text = f"[defaults]\nagent = {argv_toml(agent)}\njobs = 1\n"
    text += f'[[task]]\nid = "lo"\nprompt = "p"\nagent = {argv_toml(lo)}\n'
    text += f'[[task]]\nid = "hi"\nprompt = "p"\npriority = 10\nsetup = [{argv_toml(setup)}]\n'
    out = swarm(repo, "run", manifest(repo, text))
    assert out.returncode == 0, out.stdout + out.stderr
    assert _agents_started(repo) == ["lo", "hi"]


def test_dag_runs_in_order_and_dependents_see_dependency_files(
    repo: Path, write_agent: AgentFactory
) -> None:
    agent = argv_toml(write_agent(RECORDING_AGENT))
    path = manifest(
        repo,
        f"""
[defaults]
agent = {agent}
[[task]]
id = "a"
prompt = "first"
[[task]]
id = "b"
prompt = "second"
[[task]]
id = "c"
prompt = "needs both"
depends_on = ["a", "b"]
[[task]]
id = "d"
prompt = "needs c"
depends_on = ["c"]
""",
    )
    out = swarm(repo, "run", path)
    assert out.returncode == 0, out.stderr
    assert branch_file(repo, "swarm/c", "c.out") == "a.out,b.out"
    assert branch_file(repo, "swarm/d", "d.out") == "a.out,b.out,c.out"
    # c starts from a merge of a and b made without touching any checkout.
    parents = git(repo, "rev-list", "--parents", "-n", "1", "swarm/c~1").split()
    assert len(parents) == 3


# Writes <task>.out, or fails while the file named by FAILING holds the task's id.
FAILS_WHILE_TOLD = """
import os, pathlib, sys
tid = os.environ['SWARM_TASK_ID']
told = pathlib.Path(FAILING)
if told.exists() and tid in told.read_text().split():
    sys.exit('told to fail')
pathlib.Path(tid + '.out').write_text(tid + '\\n')
"""


def _told(write_agent: AgentFactory, failing: Path) -> str:
    return argv_toml(write_agent(f"FAILING = {str(failing)!r}\n" + FAILS_WHILE_TOLD))


def test_a_dependent_of_a_task_landed_and_cleaned_runs_on_its_work(
    repo: Path, write_agent: AgentFactory, tmp_path: Path
) -> None:
    # a landed by hand and its branch deleted by `swarm clean`: retrying x left d blocked for
    # good, "branch of a is missing".
    failing = tmp_path / "failing"
    failing.write_text("x")
    agent = _told(write_agent, failing)
    text = f"[defaults]\nagent = {agent}\n"
    text += '[[task]]\nid = "a"\nprompt = "p"\n[[task]]\nid = "x"\nprompt = "p"\n'
    text += '[[task]]\nid = "d"\nprompt = "p"\ndepends_on = ["a", "x"]\n'
    assert swarm(repo, "run", manifest(repo, text)).returncode == 1
    rows = status_json(repo)
    assert rows["d"]["state"] == "blocked"
    # d never had a branch: status does not name one, a did and does.
    assert (rows["d"]["branch_made"], rows["a"]["branch_made"]) == (False, True)
    shown = {line.split()[0]: line for line in swarm(repo, "status").stdout.splitlines()[2:]}
    assert "swarm/d" not in shown["d"], shown
    assert "swarm/a" in shown["a"], shown
    git(repo, "merge", "-q", "--ff-only", "swarm/a")
    swarm(repo, "clean", "--yes")
    assert git(repo, "branch", "--list", "swarm/a") == ""
    failing.write_text("")
    out = swarm(repo, "retry", "x")
    assert out.returncode == 0, out.stdout + out.stderr
    rows = status_json(repo)
    assert (rows["d"]["state"], rows["d"]["branch_made"]) == ("done", True)
    # d never had a branch: retried as it would have started, not "from the base" for one
    # "deleted".
    with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as db:
        (data,) = db.execute(
            "SELECT data FROM events WHERE kind = 'retry' AND task_id = 'd'"
        ).fetchone()
    assert json.loads(data)["fresh"] is False
    files = git(repo, "ls-tree", "--name-only", "swarm/d").split()
    assert {"a.out", "x.out", "d.out"} <= set(files)


@pytest.mark.long
def test_a_retried_dependent_never_builds_on_a_later_runs_branch_of_its_dependency(
    repo: Path, write_agent: AgentFactory, tmp_path: Path
) -> None:
    # A later run reused the id b: `swarm retry c` of the first run built c on that run's
    # swarm/b, and `swarm merge` then landed the later run's work in the first run's branch.
    failing = tmp_path / "failing"
    failing.write_text("c")
    agent = _told(write_agent, failing)
    text = f"[defaults]\nagent = {agent}\n"
    text += '[[task]]\nid = "a"\nprompt = "p"\n[[task]]\nid = "b"\nprompt = "p"\n'
    text += 'depends_on = ["a"]\n[[task]]\nid = "c"\nprompt = "p"\ndepends_on = ["b"]\n'
    assert swarm(repo, "run", manifest(repo, text)).returncode == 1
    first = status_json(repo)["c"]
    first_run = json.loads(swarm(repo, "status", "--json").stdout)["run_id"]
    assert first["state"] == "failed"
    swarm(repo, "clean", "--yes", "--force")
    later = f'[defaults]\nagent = {agent}\n[[task]]\nid = "b"\nprompt = "later"\n'
    assert swarm(repo, "run", manifest(repo, later)).returncode == 0
    failing.write_text("")
    out = swarm(repo, "retry", "c", "--run", first_run)
    assert out.returncode == 0, out.stdout + out.stderr
    files = git(repo, "ls-tree", "--name-only", "swarm/c").split()
    assert {"a.out", "b.out", "c.out"} <= set(files)
    # Not the later run's b: its commit is not in c's history.
    later_b = subprocess.run(
        ["git", "merge-base", "--is-ancestor", "swarm/b", "swarm/c"], cwd=repo, check=False
    )
    assert later_b.returncode == 1


@pytest.mark.long
@pytest.mark.parametrize("yours", ["branch", "directory"])
def test_what_is_in_the_way_of_a_retried_tasks_worktree_says_to_retry_it_not_to_resume(
    repo: Path, write_agent: AgentFactory, tmp_path: Path, yours: str
) -> None:
    # Said by `swarm retry`, "run `swarm resume` to continue that run" was no way on: the
    # run was being continued already, and once the task failed there was nothing to resume.
    failing = tmp_path / "failing"
    failing.write_text("a")
    agent = _told(write_agent, failing)
    text = f"[defaults]\nagent = {agent}\n"
    text += '[[task]]\nid = "a"\nprompt = "p"\n[[task]]\nid = "b"\nprompt = "p"\n'
    text += 'depends_on = ["a"]\n'
    assert swarm(repo, "run", manifest(repo, text)).returncode == 1
    run_id = json.loads(swarm(repo, "status", "--json").stdout)["run_id"]
    path = repo.parent / "repo.swarm" / "b"
    if yours == "branch":  # made while b was blocked
        git(repo, "branch", "swarm/b")
        clear = "if it holds nothing you need, delete it (`git branch -D swarm/b`)"
        what = "branch swarm/b"
    else:
        path.mkdir()
        clear, what = "move it aside", str(path)
    failing.write_text("")

    out = swarm(repo, "retry", "a")

    assert out.returncode == 1, out.stdout + out.stderr
    reason = status_json(repo)["b"]["reason"]
    assert reason == f"{what} already exists; {clear}, then run `swarm retry b --run {run_id}`"
    if yours == "branch":  # as it says
        git(repo, "branch", "-D", "swarm/b")
    else:
        path.rmdir()
    again = swarm(repo, "retry", "b", "--run", run_id)
    assert again.returncode == 0, again.stdout + again.stderr
    assert status_json(repo)["b"]["state"] == "done"


def test_failed_task_blocks_only_its_dependents(repo: Path, write_agent: AgentFactory) -> None:
    ok = argv_toml(write_agent(RECORDING_AGENT))
    bad = argv_toml(write_agent("import sys; print('cannot do it'); sys.exit(3)"))
    path = manifest(
        repo,
        f"""
[[task]]
id = "broken"
prompt = "x"
agent = {bad}
[[task]]
id = "after-broken"
prompt = "x"
agent = {ok}
depends_on = ["broken"]
[[task]]
id = "after-after"
prompt = "x"
agent = {ok}
depends_on = ["after-broken"]
[[task]]
id = "independent"
prompt = "x"
agent = {ok}
""",
    )
    out = swarm(repo, "run", path)
    assert out.returncode == 1
    rows = status_json(repo)
    assert rows["broken"]["state"] == "failed"
    assert "exited 3" in str(rows["broken"]["reason"])
    assert "cannot do it" in str(rows["broken"]["reason"])
    assert rows["after-broken"]["state"] == "blocked"
    assert "broken" in str(rows["after-broken"]["reason"])
    assert rows["after-after"]["state"] == "blocked"
    assert rows["independent"]["state"] == "done"
    assert not git(repo, "branch", "--list", "swarm/after-broken")


HANGING_TREE_AGENT = """
import os, pathlib, signal, subprocess, sys, time
pathlib.Path('partial.txt').write_text('half done\\n')
child = subprocess.Popen([sys.executable, '-c', '''
import os, signal, time, pathlib, sys
os.setsid()
signal.signal(signal.SIGTERM, signal.SIG_IGN)
pathlib.Path(sys.argv[1]).write_text(str(os.getpid()))
while True:
    time.sleep(1)
''', os.environ['PIDS'] + '/grandchild'])
signal.signal(signal.SIGTERM, signal.SIG_IGN)
pathlib.Path(os.environ['PIDS'] + '/agent').write_text(str(os.getpid()))
while True:
    time.sleep(1)
"""


def _hanging_manifest(repo: Path, agent: list[str], pids: Path, extra: str = "") -> str:
    return manifest(
        repo,
        f"""
[defaults]
agent = {argv_toml(agent)}
kill_grace = "1s"
{extra}
[[task]]
id = "hang"
prompt = "never ends"
env = {{ PIDS = {json.dumps(str(pids))} }}
""",
    )


@pytest.mark.long
def test_timeout_kills_the_whole_tree_and_keeps_partial_work(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    path = _hanging_manifest(repo, write_agent(HANGING_TREE_AGENT), pids, 'timeout = "6s"')
    out = swarm(repo, "run", path)
    assert out.returncode == 1
    assert status_json(repo)["hang"]["state"] == "timed_out"
    for name in ("agent", "grandchild"):
        assert not pid_alive(int((pids / name).read_text()))
    assert branch_file(repo, "swarm/hang", "partial.txt") == "half done"
    assert "checkpoint hang" in git(repo, "log", "-1", "--format=%s", "swarm/hang")


def test_an_agent_printing_past_max_log_is_stopped_before_it_fills_the_disk(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    # An agent printing in a loop wrote 6 GB of log in 20 s, with no timeout by default.
    agent = write_agent(
        "import os, pathlib, time\n"
        "pathlib.Path('work.txt').write_text('half done')\n"
        f"pathlib.Path({str(tmp_path / 'pid')!r}).write_text(str(os.getpid()))\n"
        "for _ in range(300_000):\n"  # 270 MB, then quiet: never the whole disk
        "    print('progress ' * 100, flush=True)\n"
        "time.sleep(600)\n"
    )
    text = f'[defaults]\nagent = {argv_toml(agent)}\nmax_log = "1M"\n'
    out = swarm(repo, "run", manifest(repo, text + '[[task]]\nid = "loud"\nprompt = "x"\n'))
    assert out.returncode == 1, out.stdout + out.stderr
    row = status_json(repo)["loud"]
    assert row["state"] == "failed"
    assert "printed more than max_log (1.0M): stopped" in str(row["reason"])
    assert not pid_alive(int((tmp_path / "pid").read_text()))
    assert branch_file(repo, "swarm/loud", "work.txt") == "half done"
    (log,) = (repo / ".git" / "swarm" / "runs").glob("*/loud/attempt-1.log")
    assert log.stat().st_size < 200 << 20  # stopped at the next look (4 a second)


@pytest.mark.parametrize("step", ["setup", "checks"])
def test_a_setup_or_check_step_printing_past_max_log_is_stopped_and_fails_its_task(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, step: str
) -> None:
    # `max_log` held for agents only: a looping check wrote 50 MB (and on, to its timeout).
    loud = write_agent(
        "import os, pathlib, time\n"
        f"pathlib.Path({str(tmp_path / 'pid')!r}).write_text(str(os.getpid()))\n"
        "for i in range(300_000):\n"  # 270 MB at up to ~18 MB/s, then quiet: never the disk
        "    print('progress ' * 100, flush=True)\n"
        "    time.sleep(0.05 if i % 1000 == 0 else 0)\n"
        "time.sleep(600)\n"
    )
    work = write_agent("import pathlib\npathlib.Path('work.txt').write_text('done')\n")
    text = f'[defaults]\nagent = {argv_toml(work)}\nmax_log = "1M"\n{step} = [{argv_toml(loud)}]\n'
    out = swarm(repo, "run", manifest(repo, text + '[[task]]\nid = "loud"\nprompt = "x"\n'))
    assert out.returncode == 1, out.stdout + out.stderr
    row = status_json(repo)["loud"]
    assert row["state"] == "failed"
    assert "printed more than max_log (1.0M): stopped" in str(row["reason"]), row
    assert not pid_alive(int((tmp_path / "pid").read_text()))
    (log,) = (repo / ".git" / "swarm" / "runs").glob(f"*/loud/{step}.log")
    assert log.stat().st_size < 100 << 20  # stopped at one of the next looks, not at its end


@pytest.mark.parametrize("step", ["agent", "setup", "checks"])
def test_printing_past_max_log_fails_the_task_also_when_it_ends_between_two_looks(
    repo: Path, write_agent: AgentFactory, step: str
) -> None:
    # 2 MB printed at once and gone before the next look: done, its 1M cap never applied.
    loud = write_agent(
        "import pathlib, sys\n"
        "pathlib.Path('work.txt').write_text('done')\n"
        "sys.stdout.write('x' * (2 << 20))\n"
    )
    work = write_agent("import pathlib\npathlib.Path('work.txt').write_text('done')\n")
    agent = loud if step == "agent" else work
    text = f'[defaults]\nagent = {argv_toml(agent)}\nmax_log = "1M"\n'
    if step != "agent":
        text += f"{step} = [{argv_toml(loud)}]\n"
    swarm(repo, "run", manifest(repo, text + '[[task]]\nid = "loud"\nprompt = "x"\n'))
    row = status_json(repo)["loud"]
    assert row["state"] == "failed", row
    assert "printed more than max_log (1.0M)" in str(row["reason"]), row


def test_a_check_that_kills_its_own_shim_leaves_no_daemon_behind(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    # The shim kills a step's tree when it ends; a check that SIGKILLed its shim first left
    # its double-forked daemon running after the run.
    pid_file = tmp_path / "daemon.pid"
    check = write_agent(
        "import os, signal, sys, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "        time.sleep(600)\n"
        "    os._exit(0)\n"
        f"while not os.path.exists({str(pid_file)!r}): time.sleep(0.01)\n"
        "os.kill(os.getppid(), signal.SIGKILL)\n"
    )
    work = write_agent("import pathlib\npathlib.Path('work.txt').write_text('done')\n")
    text = f"[defaults]\nagent = {argv_toml(work)}\nchecks = [{argv_toml(check)}]\n"
    swarm(repo, "run", manifest(repo, text + '[[task]]\nid = "a"\nprompt = "x"\n'))
    assert status_json(repo)["a"]["state"] == "failed"
    daemon = int(pid_file.read_text())
    wait_for(lambda: not pid_alive(daemon), what="the daemon to be killed", timeout=10)


def test_directories_the_agent_made_unreadable_are_named_and_the_task_fails(
    tmp_path: Path, write_agent: AgentFactory
) -> None:
    # git only warns that it cannot look inside them: the task ended `done`, its branch
    # without the edits there, and `swarm merge` merged it incomplete.
    repo = make_repo(tmp_path / "repo", {"README.md": "hello\n", "src/a.py": "print(1)\n",
                                         "lib/b.py": "print(1)\n"})  # fmt: skip
    agent = write_agent(
        "import os, pathlib\n"
        "pathlib.Path('k.txt').write_text('keep')\n"
        "pathlib.Path('src/a.py').write_text('print(2)')\n"
        "os.chmod('src', 0)\n"  # a tracked file's directory: unreadable
        "os.mkdir('d'); pathlib.Path('d/f').write_text('in'); os.chmod('d', 0)\n"
        "pathlib.Path('lib/b.py').write_text('print(2)')\n"  # readable, not searchable
        "pathlib.Path('lib/new.py').write_text('new')\n"
        "os.chmod('lib', 0o600)\n"
    )
    out = subprocess.run(
        [*as_owner_only(), sys.executable, "-m", "worktree_swarm.cli", "run", "--agent",
         shlex.join(agent), "-t", "t=x"],
        cwd=repo, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
        timeout=120,
    )  # fmt: skip
    assert out.returncode == 1, out.stdout + out.stderr
    row = status_json(repo)["t"]
    worktree = repo.parent / "repo.swarm" / "t"
    assert (row["state"], row["reason"]) == (
        "failed",
        (
            "wrote paths git refuses to store or could not read (d/, lib/, src/): left out of"
            f" its commit, they stay in {worktree}; the rest is committed"
        ),
    )
    assert (
        git(repo, "ls-tree", "-r", "--name-only", "swarm/t")
        == "README.md\nk.txt\nlib/b.py\nsrc/a.py"
    )
    assert branch_file(repo, "swarm/t", "src/a.py") == "print(1)"  # not taken for deleted
    # Removing the worktree opens them to their owner: their files are committed, not lost.
    out = subprocess.run(
        [*as_owner_only(), sys.executable, "-m", "worktree_swarm.cli", "clean", "--yes"],
        cwd=repo, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
        timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert not worktree.exists()
    assert [branch_file(repo, "swarm/t", name) for name in ("src/a.py", "d/f", "lib/new.py")] == [
        "print(2)", "in", "new"]  # fmt: skip


def test_a_copy_file_you_cannot_read_is_bad_input_before_anything_is_created(
    repo: Path, write_agent: AgentFactory
) -> None:
    # Each task's copy of it failed as an internal error (PermissionError).
    (repo / ".gitignore").write_text(".env\n")
    git(repo, "add", ".gitignore")
    git(repo, "commit", "-q", "-m", "ignore env")
    env = repo / ".env"
    env.write_text("KEY=value\n")
    env.chmod(0)
    agent = argv_toml(write_agent("print('never run')\n"))
    path = manifest(
        repo, f'[defaults]\ncopy = [".env"]\n[[task]]\nid = "t"\nprompt = "p"\nagent = {agent}\n'
    )
    out = subprocess.run(
        [*as_owner_only(), sys.executable, "-m", "worktree_swarm.cli", "run", path],
        cwd=repo, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
        timeout=120,
    )  # fmt: skip
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr == (
        "swarm: copy: cannot read .env (Permission denied); give yourself read permission or"
        " leave it out of copy\n"
    )
    assert not (repo / ".git" / "swarm" / "runs").exists()
    assert not (repo.parent / "repo.swarm").exists()


def test_checks_that_make_the_worktree_read_only_are_undone_and_the_task_is_done(
    repo: Path, write_agent: AgentFactory
) -> None:
    # As a test suite does (`chmod -R a-w .`): the task failed with an internal error, and
    # what the checks wrote stayed for `swarm clean` to commit onto its branch.
    agent = write_agent("import pathlib\npathlib.Path('work.txt').write_text('work')\n")
    check = (
        "sh -c 'mkdir -p out sealed; echo x > out/y; echo s > sealed/s; echo edit >> README.md;"
        " chmod -R a-w .; chmod 0 sealed'"
    )
    text = f'[[task]]\nid = "t"\nprompt = "x"\nagent = {argv_toml(agent)}\n'
    text += f"checks = [{json.dumps(check)}]\n"

    def as_owner(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*as_owner_only(), sys.executable, "-m", "worktree_swarm.cli", *args],
            cwd=repo, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
            timeout=120,
        )  # fmt: skip

    out = as_owner("run", manifest(repo, text))
    assert out.returncode == 0, out.stdout + out.stderr
    assert status_json(repo)["t"]["state"] == "done"
    worktree = repo.parent / "repo.swarm" / "t"
    assert git(worktree, "status", "--porcelain", "--ignored") == ""
    out = as_owner("clean", "--yes")
    assert out.returncode == 0, out.stdout + out.stderr
    assert git(repo, "ls-tree", "-r", "--name-only", "swarm/t") == "README.md\nwork.txt"
    assert branch_file(repo, "swarm/t", "README.md") == "hello"


def test_an_agent_that_makes_its_worktree_unreadable_fails_alone_and_clean_names_it(
    repo: Path, write_agent: AgentFactory
) -> None:
    # Taken for a worktree removed: its sibling was blamed for it (and failed), and `swarm
    # clean` and `swarm doctor` stopped on it with exit 2 for the whole repository.
    sealed = repo.parent / "repo.swarm" / "sealed"
    agent = write_agent(
        "import os, pathlib, time\n"
        "if os.environ['SWARM_TASK_ID'] == 'sealed':\n"
        "    pathlib.Path('k.txt').write_text('keep')\n"
        "    os.chmod('.', 0)\n"
        "else:  # at work while its sibling's worktree is unreadable\n"
        "    deadline = time.monotonic() + 60\n"
        f"    while os.access({str(sealed)!r}, os.R_OK) and time.monotonic() < deadline:\n"
        "        time.sleep(0.01)\n"
        "    pathlib.Path('i.txt').write_text('mine')\n"
    )
    text = f"[defaults]\njobs = 2\nagent = {argv_toml(agent)}\n"
    text += '[[task]]\nid = "sealed"\nprompt = "seal"\n[[task]]\nid = "other"\nprompt = "x"\n'

    def as_owner(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*as_owner_only(), sys.executable, "-m", "worktree_swarm.cli", *args],
            cwd=repo, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
            timeout=120,
        )  # fmt: skip

    try:
        out = as_owner("run", manifest(repo, text))
        rows = status_json(repo)
        assert (rows["other"]["state"], rows["sealed"]["state"]) == ("done", "failed"), out.stdout
        assert rows["sealed"]["reason"] == (
            f"its worktree {sealed} cannot be read (its agent's `chmod`?): its work since the "
            f"last checkpoint is left there, uncommitted; `chmod u+rwx {sealed}` gives it back"
        )
        kept = f"  {sealed}: task sealed is failed; its directory cannot be read\n"
        shutil.rmtree(repo.parent / "repo.swarm" / "other")  # gone: clean prunes it
        for command in (["clean"], ["clean", "--yes"]):
            out = as_owner(*command)
            assert out.returncode in {0, 1}, out.stderr
            assert kept in out.stdout, out.stdout
        assert not (repo.parent / "repo.swarm" / "other").exists()  # the rest goes on
        listed = git(repo, "worktree", "list", "--porcelain")
        assert f"worktree {sealed}\n" in listed  # still registered: no prune took it
        out = as_owner("doctor")
        assert (out.returncode, out.stderr) == (1, ""), out.stdout  # named, left
        assert f"  {sealed}: its directory cannot be read\n" in out.stdout
    finally:
        sealed.chmod(0o755)
    assert (sealed / "k.txt").read_text() == "keep"


def test_a_file_over_max_file_is_left_out_of_the_checkpoint_and_the_task_fails(
    repo: Path, write_agent: AgentFactory
) -> None:
    # An agent's 800 MB file was committed silently (a push to GitHub refuses it), and a
    # 20 GiB sparse one hashed for minutes into the branch.
    agent = write_agent(
        "import pathlib\n"
        "pathlib.Path('work.txt').write_text('work')\n"
        "pathlib.Path('edge.bin').write_bytes(b'\\0' * 2048)\n"  # at the cap: committed
        "pathlib.Path('big.bin').write_bytes(b'\\0' * 2049)\n"
        "pathlib.Path('README.md').write_text('line\\n' * 500)\n"  # a tracked file, grown
    )
    # Names `add --verbose` prints as no name can be read back from: a newline, not UTF-8.
    odd = write_agent(
        "import pathlib\n"
        "pathlib.Path('work.txt').write_text('work')\n"
        "pathlib.Path('new\\nline.bin').write_bytes(b'\\0' * 4096)\n"
        "open(b'caf\\xe9.bin', 'wb').write(b'\\0' * 4096)\n"
    )
    text = f'[defaults]\nagent = {argv_toml(agent)}\nmax_file = "2K"\n'
    out = swarm(repo, "run", manifest(repo, text + '[[task]]\nid = "t"\nprompt = "x"\n'))
    assert out.returncode == 1, out.stdout + out.stderr
    row = status_json(repo)["t"]
    assert row["state"] == "failed"
    worktree = repo.parent / "repo.swarm" / "t"
    assert row["reason"] == (
        "wrote files over max_file (2.0K: README.md (2.4K), big.bin (2.0K)): left out of its "
        f"commit (GitHub refuses a file over 100 MiB), they stay in {worktree}; the rest is "
        "committed"
    )
    assert git(repo, "ls-tree", "-r", "--name-only", "swarm/t") == "README.md\nedge.bin\nwork.txt"
    assert branch_file(repo, "swarm/t", "README.md") == "hello"
    assert (worktree / "big.bin").stat().st_size == 2049  # not lost
    assert (worktree / "README.md").stat().st_size == 2500
    assert row["files_changed"] == 2  # what was committed: edge.bin and work.txt
    out = swarm(repo, "clean", "--yes")
    assert worktree.is_dir(), out.stdout + out.stderr  # no commit holds them: kept
    assert (worktree / "big.bin").stat().st_size == 2049
    assert "wrote files over max_file (2.0K: README.md (2.4K), big.bin" in out.stdout
    assert git(repo, "ls-tree", "-r", "--name-only", "swarm/t") == "README.md\nedge.bin\nwork.txt"
    # A fresh start deletes the worktree: not with what no commit may hold in it, nor does
    # its commit of the rest take the run's cap for another.
    out = swarm(repo, "retry", "t", "--fresh")
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stderr.startswith(
        "swarm: not retrying t afresh, which deletes its worktree: its agent wrote files over "
        "max_file (2.0K: "
    )
    assert (worktree / "big.bin").stat().st_size == 2049
    assert git(repo, "ls-tree", "-r", "--name-only", "swarm/t") == "README.md\nedge.bin\nwork.txt"
    text = f'[defaults]\nagent = {argv_toml(odd)}\nmax_file = "2K"\n'
    out = swarm(repo, "run", manifest(repo, text + '[[task]]\nid = "odd"\nprompt = "x"\n'))
    assert out.returncode == 1, out.stdout + out.stderr
    assert "wrote files over max_file (2.0K: " in str(status_json(repo)["odd"]["reason"])
    assert git(repo, "ls-tree", "-r", "--name-only", "swarm/odd") == "README.md\nwork.txt"


def test_a_file_over_max_file_the_agent_committed_itself_fails_its_task(
    repo: Path, write_agent: AgentFactory
) -> None:
    # Text or binary: a diff counts no lines of a binary file, and of none past 16 MiB.
    agent = write_agent(
        "import pathlib, subprocess\n"
        "pathlib.Path('notes.txt').write_text('note\\n' * 1000)\n"
        "pathlib.Path('data.bin').write_bytes(bytes(range(256)) * 20)\n"
        "subprocess.run(['git', 'add', '-A'], check=True)\n"
        "subprocess.run(['git', 'commit', '-qm', 'data'], check=True)\n"
    )
    text = f'[defaults]\nagent = {argv_toml(agent)}\nmax_file = "4K"\n'
    out = swarm(repo, "run", manifest(repo, text + '[[task]]\nid = "t"\nprompt = "x"\n'))
    assert out.returncode == 1, out.stdout + out.stderr
    row = status_json(repo)["t"]
    assert (row["state"], row["reason"]) == (
        "failed",
        (
            "its branch holds files over max_file (4.0K) its agent committed or staged itself: "
            "data.bin (5.0K), notes.txt (4.9K); GitHub refuses a push holding a file over 100 MiB"
        ),
    )
    assert branch_file(repo, "swarm/t", "notes.txt") == "note\n" * 999 + "note"  # kept


# Ends its helper the way shell scripts do (`kill 0`: its process group), then its work.
KILLS_ITS_GROUP = """
import os, pathlib, signal, subprocess, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
helper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'],
                          preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
os.killpg(0, signal.SIGTERM)
helper.wait()
pathlib.Path('work.txt').write_text('work\\n')
sys.exit(int(sys.argv[1]))
"""


def test_an_agent_that_signals_its_own_process_group_is_not_taken_for_stopped(
    repo: Path, write_agent: AgentFactory
) -> None:
    # Its group is its shim's: the shim took the signal for a stop, and a task that failed
    # was "stopped", nobody having asked.
    agent = " ".join(write_agent(KILLS_ITS_GROUP))
    out = swarm(repo, "run", "-t", "a=go", "--agent", f"{agent} 0")
    assert out.returncode == 0, out.stdout + out.stderr
    out = swarm(repo, "run", "-t", "b=go", "--agent", f"{agent} 3")
    assert out.returncode == 1, out.stdout + out.stderr
    assert {t: row["state"] for t, row in status_json(repo).items()} == {"b": "failed"}
    for task in ("a", "b"):
        assert branch_file(repo, f"swarm/{task}", "work.txt") == "work"


def _start_hanging_run(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, *, terminal: int | None = None
) -> tuple[subprocess.Popen[bytes], Path]:
    """`swarm run` of a task whose agent tree hangs; its output to *terminal* (a pty) if given."""
    pids = tmp_path / "pids"
    pids.mkdir()
    path = _hanging_manifest(repo, write_agent(HANGING_TREE_AGENT), pids)
    if terminal is None:
        proc = swarm_bg(repo, "run", path)
    else:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worktree_swarm.cli", "run", path],
            cwd=repo, stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal,
        )  # fmt: skip
    wait_for(
        lambda: (pids / "agent").exists() and (pids / "grandchild").exists(),
        what="the agent tree to start",
    )
    return proc, pids


def _stopped_with_its_work_kept(repo: Path, pids: Path) -> None:
    for name in ("agent", "grandchild"):
        assert not pid_alive(int((pids / name).read_text()))
    assert status_json(repo)["hang"]["state"] == "stopped"
    assert branch_file(repo, "swarm/hang", "partial.txt") == "half done"


@pytest.mark.long
def test_stop_kills_the_tree_and_keeps_work(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    proc, pids = _start_hanging_run(repo, tmp_path, write_agent)
    try:
        out = swarm(repo, "stop", "hang")
        assert out.returncode == 0, out.stderr
        assert proc.wait(timeout=60) == 1
    finally:
        proc.kill()
    _stopped_with_its_work_kept(repo, pids)
    # The run ended by `swarm stop`, as one whose manager was gone would say.
    assert json.loads(swarm(repo, "status", "--json").stdout)["run_state"] == "stopped"


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
def test_interrupt_stops_agents_and_exits_130(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, how: str
) -> None:
    proc, pids = _start_hanging_run(repo, tmp_path, write_agent)
    try:
        proc.send_signal(getattr(signal, how))
        assert proc.wait(timeout=60) == 130
    finally:
        proc.kill()
    _stopped_with_its_work_kept(repo, pids)


def test_sigterm_interrupts_a_stop_as_ctrl_c_does_and_exits_130(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    # Only `run`, `resume`, `retry` and `merge` took SIGTERM for an interrupt: a `swarm stop`
    # (or `clean`, `pr`) died of it, exit 143.
    # Told to stop, it says so and ends only when the test lets it: the stop waits for it
    # (within its grace) until then, whatever the machine's load.
    agent = write_agent(
        "import os, pathlib, signal, sys, time\n"
        "here = pathlib.Path(sys.argv[1])\n"
        "signal.signal(signal.SIGTERM, lambda *_: (here / 'termed').touch())\n"
        "(here / 'agent').write_text(str(os.getpid()))\n"
        "while not (here / 'release').exists():\n    time.sleep(0.05)\n"
    )
    text = f'[defaults]\nagent = {argv_toml([*agent, str(tmp_path)])}\nkill_grace = "5m"\n'
    manager = swarm_bg(repo, "run", manifest(repo, text + '[[task]]\nid = "t"\nprompt = "p"\n'))
    stop = None
    try:
        wait_for((tmp_path / "agent").exists, what="the agent")
        manager.kill()  # no manager: `swarm stop` stops the agent itself, given its grace
        manager.wait(timeout=60)
        stop = subprocess.Popen(
            [sys.executable, "-m", "worktree_swarm.cli", "stop"], cwd=repo,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        wait_for((tmp_path / "termed").exists, what="the stop's SIGTERM to the agent")
        stop.send_signal(signal.SIGTERM)
        (tmp_path / "release").touch()  # the agent ends; the stop was interrupted before
        _, err = stop.communicate(timeout=60)
        assert stop.returncode == 130, err
        assert err.endswith("swarm: interrupted\n"), err
    finally:
        for proc in (manager, stop):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        (tmp_path / "release").touch()
    assert swarm(repo, "stop").returncode == 0  # the next one finishes the job
    assert status_json(repo)["t"]["state"] == "stopped"


# `swarm run` whose run loop is interrupted (as by Ctrl-C) just after it took the first
# task's outcome off its queue: where a stop signal's KeyboardInterrupt may land.
_CUT_OFF_RUN = """
import queue, sys, types
from worktree_swarm.cli import main
from worktree_swarm.run import run_state

taken = []

class CutOff:
    def get(self, block=True, timeout=None):
        item = super().get(block, timeout)
        if not taken:
            taken.append(item)
            raise KeyboardInterrupt
        return item

class Simple(CutOff, queue.SimpleQueue): pass
class Plain(CutOff, queue.Queue): pass

run_state.queue = types.SimpleNamespace(SimpleQueue=Simple, Queue=Plain)
sys.argv = ["swarm", "run", sys.argv[1]]
sys.exit(main())
"""


def test_a_stop_signal_as_the_run_loop_takes_an_outcome_neither_loses_it_nor_hangs(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    # The outcome was off the queue and in no variable: the stop waited for it for ever.
    agent = write_agent(
        "import os, pathlib, sys, time\n"
        "pathlib.Path('work.txt').write_text(os.environ['SWARM_TASK_ID'])\n"
        "while os.environ['SWARM_TASK_ID'] == 'slow':\n    time.sleep(0.05)\n"
    )
    tasks = "".join(f'[[task]]\nid = "{t}"\nprompt = "p"\n' for t in ("quick", "slow"))
    path = manifest(repo, f"[defaults]\nagent = {argv_toml(agent)}\njobs = 2\n{tasks}")
    proc = subprocess.run(
        [sys.executable, "-c", _CUT_OFF_RUN, path], cwd=repo, capture_output=True, text=True,
        stdin=subprocess.DEVNULL, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 130, proc.stderr
    states = {task: row["state"] for task, row in status_json(repo).items()}
    assert states == {"quick": "done", "slow": "stopped"}
    assert git(repo, "show", "swarm/quick:work.txt") == "quick"


# `swarm run` that gets a stop signal (as by Ctrl-C) as its last guard scan ends.
_SIGNALLED_AT_THE_LAST_SCAN = """
import sys
from worktree_swarm.cli import main
from worktree_swarm.guard.watcher import Guard
from worktree_swarm.infra import interrupts

looked_last = Guard.looked_last

def signalled(self):
    interrupts.on_signal()  # what the handler does, at this moment
    looked_last(self)

Guard.looked_last = signalled
sys.argv = ["swarm", "run", sys.argv[1]]
sys.exit(main())
"""


def test_a_stop_signal_during_the_runs_last_scan_ends_it_interrupted(
    repo: Path, write_agent: AgentFactory
) -> None:
    # Dropped, it ended the run `finished`, exit 0: `timeout 8h swarm run && swarm merge`
    # merged. Its tasks are done all the same.
    agent = write_agent("open('work.txt', 'w').write('work')")
    path = manifest(
        repo, f'[defaults]\nagent = {argv_toml(agent)}\n[[task]]\nid = "t"\nprompt = "p"\n'
    )
    proc = subprocess.run(
        [sys.executable, "-c", _SIGNALLED_AT_THE_LAST_SCAN, path], cwd=repo,
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 130, proc.stderr
    assert status_json(repo)["t"]["state"] == "done"
    runs = json.loads(swarm(repo, "runs", "--json").stdout)["runs"]
    assert [r["state"] for r in runs] == ["interrupted"]


def test_a_closed_terminal_stops_the_run_as_ctrl_c_does(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    # A foreground run whose terminal goes away (a dropped ssh session): SIGHUP, and every
    # later write to the terminal fails.
    controller, terminal = pty.openpty()
    try:
        proc, pids = _start_hanging_run(repo, tmp_path, write_agent, terminal=terminal)
    finally:
        os.close(terminal)
    try:
        os.close(controller)  # hung up: writes to the terminal fail from now on
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(timeout=60) == 130
    finally:
        proc.kill()
        proc.wait(timeout=30)
        swarm(repo, "stop")  # a manager that died on the signal left its agents: not them too
    _stopped_with_its_work_kept(repo, pids)


def test_a_run_under_nohup_carries_on_when_its_terminal_closes(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    go = tmp_path / "go"
    agent = write_agent(
        "import pathlib, sys, time\n"
        "pathlib.Path(sys.argv[1] + '.started').touch()\n"
        "while not pathlib.Path(sys.argv[1]).exists():\n"
        "    time.sleep(0.05)\n"
        "pathlib.Path('work.txt').write_text('finished\\n')\n"
    )
    with (repo.parent / "bg.log").open("ab") as log:
        proc = subprocess.Popen(
            ["nohup", sys.executable, "-m", "worktree_swarm.cli", "run",
             "--agent", " ".join([*agent, str(go)]), "-t", "night=work"],
            cwd=repo, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        )  # fmt: skip
    try:
        wait_for((tmp_path / "go.started").exists, what="the agent to start")
        proc.send_signal(signal.SIGHUP)  # the terminal closed: ignored, as nohup asked
        go.touch()
        assert proc.wait(timeout=60) == 0, (repo.parent / "bg.log").read_text()
    finally:
        go.touch()
        proc.kill()
        proc.wait(timeout=30)
    assert status_json(repo)["night"]["state"] == "done"
    assert branch_file(repo, "swarm/night", "work.txt") == "finished"


@pytest.mark.slow  # long: runs in `scripts/check --slow` (CI runs both)
def test_second_manager_is_refused_with_exit_3(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    proc, _ = _start_hanging_run(repo, tmp_path, write_agent)
    try:
        out = swarm(repo, "run", "--agent", "scripted", "-t", "other=hi")
        assert out.returncode == 3
        assert f"pid {proc.pid}" in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
        assert not git(repo, "branch", "--list", "swarm/other")
        # The same tasks again: the manager that holds them is named (exit 3), not their
        # branches as in the way (exit 2).
        again = swarm(repo, "run", "--agent", "scripted", "-t", "hang=hi")
        assert again.returncode == 3, again.stderr
        assert f"pid {proc.pid}" in again.stderr
    finally:
        swarm(repo, "stop")
        proc.wait(timeout=60)


UNKNOWN_USER = '[defaults]\nagent = "scripted"\n{}\n[[task]]\nid = "a"\nprompt = "x"\n'


def _no_trace(repo: Path) -> None:
    assert not git(repo, "branch", "--list", "swarm/*")
    assert not (repo / ".git" / "swarm").exists()
    assert not (repo.parent / "repo.swarm").exists()
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[[task]]\nid = "a"\nprompt = "x"\npromt = "y"\n', "promt"),
        ('[[task]]\nid = "a"\nprompt = "x"\n[[task]]\nid = "a"\nprompt = "y"\n', "duplicate"),
        ('[[task]]\nid = "Bad_ID"\nprompt = "x"\n', "Bad_ID"),
        ('[[task]]\nid = "a"\nprompt = "x"\ndepends_on = ["ghost"]\n', "ghost"),
        (
            (
                '[[task]]\nid = "a"\nprompt = "x"\ndepends_on = ["b"]\n'
                '[[task]]\nid = "b"\nprompt = "y"\ndepends_on = ["a"]\n'
            ),
            "cycle",
        ),
        ('[[task]]\nid = "a"\nprompt = "   "\n', "prompt"),
        ('[[task]]\nid = "a"\nprompt = "x"\nagent = ["no-such-agent-xyz"]\n', "no-such-agent-xyz"),
        ('[[task]]\nid = "a"\nprompt = "x"\nagent = "martian"\n', "martian"),
        ("[[task]\n", "tasks.toml"),
        pytest.param(
            '[[task]]\nid = "a"\nprompt = "x"\nx = ' + "[" * 2000 + "]" * 2000,
            "nested",
            id="nested-too-deep",
        ),
        (UNKNOWN_USER.format('worktree_root = "~nosuchuser-xyz/wt"'), "'~nosuchuser-xyz/wt' names"),
        (UNKNOWN_USER.format('sandbox_writable = ["~nosuchuser-xyz/c"]'), "user unknown here"),
        (
            '[[task]]\nid = "a"\nprompt = "x"\nagent = ["./agent.sh"]\n',
            "not committed as an executable",
        ),
    ],
)
def test_bad_manifest_exits_2_and_creates_nothing(repo: Path, text: str, needle: str) -> None:
    text = text if "agent" in text else '[defaults]\nagent = "scripted"\n' + text
    (repo / "agent.sh").write_text("#!/bin/sh\n")  # not executable
    out = swarm(repo, "run", manifest(repo, text))
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert needle in lines[0]
    assert "Traceback" not in out.stderr
    _no_trace(repo)


def test_a_sandbox_writable_path_out_of_your_reach_is_bad_input(repo: Path, tmp_path: Path) -> None:
    # Not missing (those are skipped): every task failed with bwrap's "Can't find source path
    # ...: Permission denied" once the run had started.
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    os.chown(closed, 65534, 65534)  # another user's, of mode 700
    text = (
        f'[defaults]\nagent = "scripted"\nsandbox_writable = ["{closed}/cache"]\n'
        '[[task]]\nid = "a"\nprompt = "x"\n'
    )
    out = subprocess.run(
        [*as_owner_only(), sys.executable, "-m", "worktree_swarm.cli", "run", manifest(repo, text)],
        cwd=repo, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
        timeout=120,
    )  # fmt: skip
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr == (
        f"swarm: {repo.parent / 'tasks.toml'}: [defaults]: sandbox_writable[0]: cannot reach "
        f"{closed}/cache (Permission denied); name a path you can use\n"
    )
    _no_trace(repo)


def test_arguments_that_are_not_utf8_exit_2_and_create_nothing(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Said by where it is: the argument's text is not shown (a key in it, cut, is no value
    # the redactor knows).
    key = "Zq8xV3mP9tL2wR7kJ4nB"
    monkeypatch.setenv("MY_API_KEY", key)
    for args, offset in (
        ([b"-t", b"a=fix \xff" + key.encode()], 6),
        ([b"--check", b"echo \xff", b"-t", b"a=x"], 5),
    ):
        place = f"argument 5 is not valid UTF-8 (byte 0xff at offset {offset})"
        out = subprocess.run(
            [sys.executable, "-m", "worktree_swarm.cli", "run", "--agent", "scripted", *args],
            cwd=repo, capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert (out.returncode, out.stderr.count("\n")) == (2, 1), out.stderr
        assert out.stderr == f"swarm: {place}; pass text\n"
        _no_trace(repo)


def test_an_option_s_value_or_an_unknown_option_holding_a_secret_is_redacted(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "Zq8xV3mP9tL2wR7kJ4nB"
    monkeypatch.setenv("MY_API_KEY", key)
    for args in (["run", "-t", "a=x", "--jobs", key], ["runs", f"--{key}"], [key]):
        out = subprocess.run(
            [sys.executable, "-m", "worktree_swarm.cli", *args],
            cwd=repo, capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert (out.returncode, out.stderr.count("\n")) == (2, 1), out.stderr
        assert key not in out.stderr
        assert "[REDACTED]" in out.stderr
        _no_trace(repo)


def test_an_agent_script_named_from_the_repository_must_be_committed_executable(
    repo: Path,
) -> None:
    tool = repo / "tools" / "ag.sh"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\necho hi > out.txt\n")
    tool.chmod(0o755)  # executable, but untracked: no worktree would hold it
    untracked = swarm(repo, "run", "--agent", "tools/ag.sh", "-t", "a=x")
    git(repo, "add", "tools/ag.sh")
    git(repo, "commit", "-qm", "the agent script")
    committed = swarm(repo, "run", "--agent", "tools/ag.sh", "-t", "b=x")
    assert (untracked.returncode, untracked.stderr.count("\n")) == (2, 1), untracked.stderr
    assert "'tools/ag.sh' is not committed as an executable file" in untracked.stderr
    assert committed.returncode == 0, committed.stdout + committed.stderr
    assert git(repo, "show", "swarm/b:out.txt") == "hi"


def test_a_worktree_root_behind_a_dangling_symlink_exits_2(repo: Path) -> None:
    (repo.parent / "repo.swarm").symlink_to(repo.parent / "gone")
    out = swarm(repo, "run", "--agent", "scripted", "-t", "a=x")
    assert (out.returncode, out.stderr.count("\n")) == (2, 1), out.stderr
    assert "is a symlink to" in out.stderr
    assert "which does not exist" in out.stderr
    assert not (repo / ".git" / "swarm").exists()


def test_a_checkout_on_a_branch_with_no_commits_yet(repo: Path) -> None:
    assert swarm(repo, "run", "--agent", "scripted", "-t", "a=x").returncode == 0
    git(repo, "checkout", "-q", "--orphan", "fresh")  # the earlier run is still there
    assert status_json(repo)["a"]["state"] == "done"
    out = swarm(repo, "run", "--agent", "scripted", "-t", "b=x")
    assert (out.returncode, out.stderr.count("\n")) == (2, 1), out.stderr
    assert "is on a branch with no commits yet" in out.stderr
    assert not git(repo, "branch", "--list", "swarm/b")


def test_run_from_inside_the_git_directory_exits_2(repo: Path) -> None:
    out = swarm(repo / ".git", "run", "--agent", "scripted", "-t", "a=x")
    assert (out.returncode, out.stderr) == (
        2, f"swarm: {repo / '.git'} is in no checkout; run swarm in the checkout, not its .git\n"
    )  # fmt: skip
    _no_trace(repo)


def test_debug_is_an_option_before_the_command_and_keeps_the_exit_code(repo: Path) -> None:
    as_value = swarm(repo, "status", "--run", "--debug")  # a run id, however odd
    debugged = swarm(repo, "--debug", "status", "--run", "nope")
    assert (as_value.returncode, as_value.stderr.count("\n")) == (2, 1), as_value.stderr
    assert debugged.returncode == 2
    assert "Traceback" in debugged.stderr
    assert debugged.stderr.splitlines()[-1].startswith("swarm: ")


def test_a_state_dir_made_read_only_is_read_and_never_written(repo: Path) -> None:
    assert swarm(repo, "run", "--agent", "scripted", "-t", "a=x").returncode == 0
    state = repo / ".git" / "swarm"
    for path in state.rglob("*"):
        path.chmod(0o555 if path.is_dir() else 0o444)
    state.chmod(0o555)

    def as_owner(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*as_owner_only(), sys.executable, "-m", "worktree_swarm.cli", *args],
            cwd=repo, capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip

    try:
        status = as_owner("status", "--json")
        run = as_owner("run", "--agent", "scripted", "-t", "b=x")
    finally:
        for path in [state, *state.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    assert status.returncode == 0, status.stderr
    assert [t["task_id"] for t in json.loads(status.stdout)["tasks"]] == ["a"]
    assert (run.returncode, run.stderr.count("\n")) == (2, 1), run.stderr
    assert run.stderr.startswith(f"swarm: cannot write {state}"), run.stderr


def test_not_a_repository_exits_2(tmp_path: Path) -> None:
    out = swarm(tmp_path, "run", "--agent", "scripted", "-t", "a=x")
    assert out.returncode == 2
    assert "not inside a git repository" in out.stderr


def test_a_repository_git_will_not_open_says_gits_reason_not_git_init(repo: Path) -> None:
    # An extension of a newer git (reftable), or another user's repository ("dubious
    # ownership"): "not inside a git repository; run `git init`" sent the user astray.
    git(repo, "config", "core.repositoryformatversion", "1")
    git(repo, "config", "extensions.fromTheFuture", "yes")
    out = swarm(repo, "run", "--agent", "scripted", "-t", "a=x")
    assert (out.returncode, out.stderr.count("\n")) == (2, 1), out.stderr
    assert out.stderr == (
        f"swarm: git cannot open the repository at {repo}: unknown repository extension found: "
        "fromthefuture\n"
    )


def test_ignore_case_on_a_file_system_that_tells_case_apart_is_refused(
    repo: Path, write_agent: AgentFactory
) -> None:
    # A repository copied from macOS: git took Docs/x.md for docs/x.md and left A.txt off
    # the branch, and each `swarm clean` committed another flip of the same file.
    git(repo, "config", "core.ignoreCase", "true")
    agent = write_agent("import pathlib\npathlib.Path('A.txt').write_text('A')\n")
    text = f'[defaults]\nagent = {argv_toml(agent)}\n[[task]]\nid = "a"\nprompt = "p"\n'
    out = swarm(repo, "run", manifest(repo, text))
    assert (out.returncode, out.stderr.count("\n")) == (2, 1), out.stderr
    assert out.stderr.startswith(f"swarm: core.ignoreCase is true in {repo}, but its file")
    assert git(repo, "branch", "--list", "swarm/*") == ""
    git(repo, "config", "core.ignoreCase", "false")  # as the message says
    out = swarm(repo, "run", manifest(repo, text))
    assert out.returncode == 0, out.stdout + out.stderr
    assert git(repo, "show", "swarm/a:A.txt") == "A"


def test_a_dry_run_shows_every_setting_as_resolved_and_creates_nothing(repo: Path) -> None:
    (repo / "swarm.toml").write_text('timeout = "1h"\ncheck_timeout = "3m"\nretries = 1\n')
    git(repo, "add", "swarm.toml")
    git(repo, "commit", "-q", "-m", "config")
    text = '[defaults]\nagent = "scripted"\ntimeout = "45m"\n'
    text += 'env = { API_TOKEN = "tok-9f8e7d6c5b4a" }\nchecks = ["true --token tok-9f8e7d6c5b4a"]\n'
    text += '[[task]]\nid = "a"\nprompt = "p"\ntimeout = "10m"\n'
    text += '[[task]]\nid = "b"\nprompt = "p"\ndepends_on = ["a"]\n'
    path = manifest(repo, text)
    out = swarm(repo, "run", path, "--dry-run", "--retries", "2")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "tok-9f8e7d6c5b4a" not in out.stdout  # the env value, and where a check repeats it
    assert '"--token", "[REDACTED' in out.stdout
    a, b = out.stdout.split("[[task]]")[1:]
    # The task's own key, then the flag, then [defaults], then swarm.toml.
    assert 'timeout = "10m"' in a
    assert 'timeout = "45m"' in b
    assert "retries = 2" in a
    assert 'check_timeout = "3m"' in b
    # limits left at their built-in default show as the run applies them
    assert 'setup_timeout = "30m"' in a
    assert 'resolve_timeout = "10m"' in a  # its timeout
    assert 'API_TOKEN = "[not shown]"' in b
    assert f"# branch swarm/b, worktree {repo.parent / 'repo.swarm' / 'b'}" in out.stdout
    assert not (repo / ".git" / "swarm").exists()
    assert git(repo, "branch", "--list", "swarm/*") == ""
    assert not (repo.parent / "repo.swarm").exists()
    shown = json.loads(swarm(repo, "run", path, "--dry-run", "--json").stdout)
    assert [(t["id"], t["timeout"], t["retries"]) for t in shown["tasks"]] == [
        ("a", "10m", 1), ("b", "45m", 1)
    ]  # fmt: skip
    assert shown["base"] == git(repo, "rev-parse", "HEAD")
    for combined in ("--detach", "--force"):
        out = swarm(repo, "run", path, "--dry-run", combined)
        assert (out.returncode, out.stderr.count("\n")) == (2, 1), out.stderr
    # Bad input is refused as by a run.
    (repo.parent / "tasks.toml").write_text(text.replace('"10m"', '"-10m"'))
    assert swarm(repo, "run", path, "--dry-run").returncode == 2


@pytest.mark.parametrize("grace", ["1.7976931348623157e308", "9007199254740993.0", "5400"])
def test_a_dry_runs_manifest_reads_back_as_the_same_run(repo: Path, grace: str) -> None:
    # A duration past 2**53 seconds was written as hours, minutes and seconds of its integer,
    # which read back as another float.
    text = (
        f'[defaults]\nagent = "scripted"\nkill_grace = {grace}\n[[task]]\nid = "a"\nprompt = "p"\n'
    )
    first = swarm(repo, "run", manifest(repo, text), "--dry-run")
    assert first.returncode == 0, first.stderr
    again = swarm(repo, "run", manifest(repo, first.stdout), "--dry-run")
    assert again.stdout == first.stdout


def test_existing_branch_from_another_run_is_refused(repo: Path) -> None:
    git(repo, "branch", "swarm/a")
    out = swarm(repo, "run", "--agent", "scripted", "-t", "a=x")
    assert out.returncode == 2
    assert "swarm/a" in out.stderr
    assert "`git branch -D swarm/a`" in out.stderr  # no run records it: the suggestion works
    assert not (repo / ".git" / "swarm").exists()
    git(repo, "branch", "-D", "swarm/a")
    assert swarm(repo, "run", "--agent", "scripted", "-t", "a=x").returncode == 0


def test_a_branch_your_checkout_is_on_is_refused_with_steps_git_accepts(repo: Path) -> None:
    # `git branch -D swarm/b` alone: git refuses to delete the branch a checkout is on.
    git(repo, "switch", "-q", "-c", "swarm/b")
    out = swarm(repo, "run", "--agent", "scripted", "-t", "b=x")
    assert (out.returncode, out.stderr.count("\n")) == (2, 1), out.stderr
    assert f"the checkout {repo} is on it; switch that checkout to another branch" in out.stderr
    git(repo, "switch", "-q", "main")
    git(repo, "branch", "-D", "swarm/b")  # then it works
    assert swarm(repo, "run", "--agent", "scripted", "-t", "b=x").returncode == 0
    # One of your own linked worktrees on it: the same.
    mine = repo.parent / "mine"
    git(repo, "worktree", "add", "-q", "-b", "swarm/c", str(mine))
    out = swarm(repo, "run", "--agent", "scripted", "-t", "c=x")
    assert (out.returncode, out.stderr.count("\n")) == (2, 1), out.stderr
    assert f"the checkout {mine} is on it" in out.stderr


def test_untrusted_prompt_reaches_the_agent_byte_for_byte(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    prompt = (
        "fix it $(touch pwned) `touch pwned2` 'single' \"double\" ; rm -rf / {task_id} \\n $HOME"
    )
    agent = write_agent(
        "import os, sys, pathlib\n"
        "pathlib.Path('argv.txt').write_text(sys.argv[1])\n"
        "pathlib.Path('file.txt').write_text(pathlib.Path(sys.argv[2]).read_text())\n"
    )
    out = swarm(
        repo,
        "run",
        "--agent",
        " ".join([*agent, "{prompt}", "{prompt_file}"]),
        "-t",
        f"quote={prompt}",
    )
    assert out.returncode == 0, out.stderr
    # The prompt arrives whole and first, followed only by the shared-findings paragraph.
    for name in ("argv.txt", "file.txt"):
        received = branch_file(repo, "swarm/quote", name)
        assert received.startswith(prompt + "\n\n## Shared findings\n")
        assert "$(touch pwned)" not in received.removeprefix(prompt)
    for root in (repo, repo.parent / "repo.swarm", tmp_path, Path.cwd()):
        assert not list(root.rglob("pwned*"))


def test_checks_decide_done_or_failed_and_no_changes(repo: Path, write_agent: AgentFactory) -> None:
    writer = argv_toml(write_agent(RECORDING_AGENT))
    idle = argv_toml(write_agent("print('nothing to do')"))
    py = json.dumps(sys.executable)
    path = manifest(
        repo,
        f"""
[defaults]
agent = {writer}
[[task]]
id = "passes"
prompt = "x"
checks = [[{py}, "-c", "import pathlib; assert pathlib.Path('passes.out').exists()"]]
[[task]]
id = "fails-check"
prompt = "x"
checks = [[{py}, "-c", "print('assertion: wrong answer\\\\nidle: done'); raise SystemExit(1)"]]
[[task]]
id = "idle"
prompt = "x"
agent = {idle}
""",
    )
    out = swarm(repo, "run", path)
    assert out.returncode == 1
    rows = status_json(repo)
    assert rows["passes"]["state"] == "done"
    assert rows["fails-check"]["state"] == "failed"
    assert "wrong answer" in str(rows["fails-check"]["reason"])
    assert rows["idle"]["state"] == "no_changes"
    # The check's output is the reason's later lines, indented: no line of swarm's forged.
    assert "idle: done" not in out.stdout.splitlines()
    assert "    idle: done" in out.stdout.splitlines()


HIDING_AGENT = r"""
import os, pathlib, subprocess
flag = "--" + os.environ["SWARM_TASK_ID"]
subprocess.run(["git", "update-index", flag, "README.md"], check=True)
pathlib.Path("README.md").write_text("an edit git was told not to look at\n")
"""


def test_an_edit_hidden_by_an_index_flag_is_committed_not_cleaned_away(
    repo: Path, write_agent: AgentFactory
) -> None:
    """Before, the task "changed nothing" and `swarm clean --yes` removed the edit."""
    agent = argv_toml(write_agent(HIDING_AGENT))
    tasks = "".join(
        f'[[task]]\nid = "{flag}"\nprompt = "x"\nagent = {agent}\n'
        for flag in ("assume-unchanged", "skip-worktree")
    )
    out = swarm(repo, "run", manifest(repo, tasks))
    assert out.returncode == 0, out.stdout + out.stderr
    assert swarm(repo, "clean", "--yes").returncode == 0
    for task in ("assume-unchanged", "skip-worktree"):
        assert branch_file(repo, f"swarm/{task}", "README.md") == (
            "an edit git was told not to look at"
        )


RESETTING_AGENT = r"""
import pathlib, subprocess
pathlib.Path("work.txt").write_text("work\n")
subprocess.run(["git", "add", "work.txt"], check=True)
subprocess.run(["git", "commit", "-q", "-m", "the agent's commit"], check=True)
subprocess.run(["git", "reset", "-q", "--hard", "HEAD~2"], check=True)
"""


def test_a_branch_reset_behind_its_base_changed_nothing(
    repo: Path, write_agent: AgentFactory
) -> None:
    """It was `done`, with a diff stat of the base's own commit undone, that `swarm diff` and
    `swarm merge` did not have (nothing to merge)."""
    (repo / "second.txt").write_text("second\n")
    git(repo, "add", "second.txt")
    git(repo, "commit", "-q", "-m", "second")
    agent = argv_toml(write_agent(RESETTING_AGENT))
    out = swarm(repo, "run", manifest(repo, f'[[task]]\nid = "r"\nprompt = "x"\nagent = {agent}\n'))
    assert out.returncode == 1, out.stdout + out.stderr
    row = status_json(repo)["r"]
    assert (row["state"], row["reason"]) == ("no_changes", "the agent changed nothing")
    assert (row["files_changed"], row["insertions"], row["deletions"]) == (0, 0, 0)


BRANCH_DELETING_AGENT = r"""
import os, pathlib, subprocess
pathlib.Path("work.txt").write_text("work\n")
subprocess.run(["git", "add", "work.txt"], check=True)
subprocess.run(["git", "commit", "-q", "-m", "the agent's commit"], check=True)
subprocess.run(["git", "update-ref", "-d", "refs/heads/" + os.environ["SWARM_BRANCH"]], check=True)
pathlib.Path("more.txt").write_text("more\n")
"""


def test_a_branch_its_agent_deleted_is_put_back_and_the_work_lands_on_it(
    repo: Path, write_agent: AgentFactory
) -> None:
    """The checkpoint started a history of its own (a root commit): "no merge base" for the
    task, `swarm diff` and `swarm merge`, and the same at every retry."""
    agent = argv_toml(write_agent(BRANCH_DELETING_AGENT))
    out = swarm(repo, "run", manifest(repo, f'[[task]]\nid = "d"\nprompt = "x"\nagent = {agent}\n'))
    assert out.returncode == 0, out.stdout + out.stderr
    row = status_json(repo)["d"]
    assert (row["state"], row["files_changed"]) == ("done", 2)
    log = git(repo, "log", "--format=%s", "main..swarm/d").splitlines()
    assert log[1] == "the agent's commit"
    assert git(repo, "merge-base", "main", "swarm/d") == git(repo, "rev-parse", "main")
    assert branch_file(repo, "swarm/d", "more.txt") == "more"


PORTS_AGENT = """
import os, pathlib, sys, time
seen = pathlib.Path(sys.argv[1])
(seen / os.environ['SWARM_RUN_ID']).write_text(os.environ['SWARM_PORT'])
while not (seen / 'go').exists():
    time.sleep(0.05)
pathlib.Path('work.txt').write_text('work')
"""


def test_runs_on_two_repositories_at_once_hand_out_different_port_blocks(
    tmp_path: Path, write_agent: AgentFactory
) -> None:
    # Slots kept blocks apart within a run only: two runs on two repositories each gave
    # their first task port_base, and the second dev server failed to bind.
    seen = tmp_path / "seen"
    seen.mkdir()
    agent = argv_toml([*write_agent(PORTS_AGENT), str(seen)])
    base = 40000 + os.getpid() % 2000 * 10  # a range no other test's runs use
    text = f'[defaults]\nport_base = {base}\n[[task]]\nid = "t"\nprompt = "p"\nagent = {agent}\n'
    repos = [make_repo(tmp_path / name / "repo") for name in ("one", "two", "three")]
    managers = [swarm_bg(r, "run", manifest(r, text)) for r in repos[:2]]
    try:
        wait_for(lambda: len(list(seen.iterdir())) == 2, what="both runs' agents")
        first = {p.name: int(p.read_text()) for p in seen.iterdir()}
        ports = sorted(first.values())
        assert ports[0] == base
        assert ports[1] >= base + 10, ports  # a block of its own
    finally:
        (seen / "go").touch()
    assert [m.wait(timeout=120) for m in managers] == [0, 0]
    # Their blocks went with their runs: the next run has the first again.
    out = swarm(repos[2], "run", manifest(repos[2], text))
    assert out.returncode == 0, out.stdout + out.stderr
    (third,) = (p for p in seen.iterdir() if p.name not in {*first, "go"})
    assert int(third.read_text()) == base


def test_copy_and_setup_prepare_the_worktree(repo: Path, write_agent: AgentFactory) -> None:
    (repo / ".env").write_text("SECRET_URL=local\n")
    # A copied file named in bytes that are not UTF-8 failed every checkpoint: its name, read
    # back as text, no longer matched itself, and `git add` was told to skip an ignored file.
    (repo / os.fsdecode(b"odd\xff.env")).write_text("A=1\n")
    # So did one in a wholly ignored directory: git names the directory, not the file.
    (repo / "run").mkdir()
    (repo / "run" / "conf").write_text("K=v\n")
    (repo / ".gitignore").write_text("*.env\nrun/\n")
    git(repo, "add", ".gitignore")
    git(repo, "commit", "-q", "-m", "ignore env")
    agent = argv_toml(
        write_agent(
            "import os, pathlib\n"
            "env = pathlib.Path('.env').read_text()\n"
            "made = pathlib.Path('made-by-setup').read_text()\n"
            "pathlib.Path('seen.txt').write_text(env + made + os.environ['SWARM_PORT'])\n"
        )
    )
    py = json.dumps(sys.executable)
    path = manifest(
        repo,
        f"""
[defaults]
agent = {agent}
copy = [".env", "odd*.env", "run/*"]
setup = [[{py}, "-c", "open('made-by-setup', 'w').write('setup ran\\\\n')"]]
[[task]]
id = "uses-env"
prompt = "x"
[[task]]
id = "bad-setup"
prompt = "x"
setup = [[{py}, "-c", "print('npm ERR! missing'); raise SystemExit(2)"]]
""",
    )
    out = swarm(repo, "run", path)
    assert out.returncode == 1
    seen = branch_file(repo, "swarm/uses-env", "seen.txt")
    assert seen.startswith("SECRET_URL=local\nsetup ran\n")
    assert int(seen.splitlines()[-1]) >= 20000
    rows = status_json(repo)
    assert rows["uses-env"]["state"] == "done", rows["uses-env"]
    assert rows["bad-setup"]["state"] == "failed"
    assert "npm ERR! missing" in str(rows["bad-setup"]["reason"])


def test_conflicting_dependencies_block_the_dependent(
    repo: Path, write_agent: AgentFactory
) -> None:
    agent = argv_toml(
        write_agent(
            "import os, pathlib\n"
            "pathlib.Path('README.md').write_text(os.environ['SWARM_TASK_ID'] + '\\n')\n"
        )
    )
    path = manifest(
        repo,
        f"""
[defaults]
agent = {agent}
[[task]]
id = "left"
prompt = "x"
[[task]]
id = "right"
prompt = "x"
[[task]]
id = "both"
prompt = "x"
depends_on = ["left", "right"]
""",
    )
    out = swarm(repo, "run", path)
    assert out.returncode == 1
    rows = status_json(repo)
    assert rows["left"]["state"] == rows["right"]["state"] == "done"
    assert rows["both"]["state"] == "blocked"
    assert "README.md" in str(rows["both"]["reason"])


def test_logs_show_agent_output(repo: Path, write_agent: AgentFactory) -> None:
    agent = " ".join(
        write_agent(
            "import sys; print('to stdout'); print('to stderr', file=sys.stderr); open('f','w')"
        )
    )
    assert swarm(repo, "run", "--agent", agent, "-t", "talk=x").returncode == 0
    out = swarm(repo, "logs", "talk")
    assert out.returncode == 0
    assert "to stdout" in out.stdout
    assert "to stderr" in out.stdout


def test_logs_print_what_a_tasks_checks_and_setup_printed(
    repo: Path, write_agent: AgentFactory
) -> None:
    # A failed check's reason shows its first line; the rest was in `status --json` and the
    # HTML report only. A task whose setup failed had no log to show at all.
    agent = write_agent("open('f', 'w').write('x')")
    check = f"{sys.executable} -c \"print('first'); print('second detail'); raise SystemExit(1)\""
    setup = f"{sys.executable} -c \"print('npm ERR! boom'); raise SystemExit(4)\""
    text = (
        f"[defaults]\nagent = {argv_toml(agent)}\n"
        f'[[task]]\nid = "checked"\nprompt = "p"\nchecks = [{json.dumps(check)}]\n'
        f'[[task]]\nid = "set"\nprompt = "p"\nsetup = [{json.dumps(setup)}]\n'
        f'[[task]]\nid = "plain"\nprompt = "p"\n'
    )
    assert swarm(repo, "run", manifest(repo, text)).returncode == 1
    out = swarm(repo, "logs", "checked", "--checks")
    assert out.returncode == 0, out.stderr
    assert "second detail" in out.stdout
    assert swarm(repo, "logs", "checked", "--checks", "-f").stdout == out.stdout  # task ended
    out = swarm(repo, "logs", "set")
    assert out.returncode == 1
    assert "`swarm logs set --setup` shows what its setup printed" in out.stderr
    out = swarm(repo, "logs", "set", "--setup")
    assert out.returncode == 0, out.stderr
    assert "npm ERR! boom" in out.stdout
    out = swarm(repo, "logs", "set", "--checks", "--setup")
    assert (out.returncode, out.stderr) == (2, "swarm: --checks and --setup: one at a time\n")
    out = swarm(repo, "logs", "plain", "--checks")
    assert (out.returncode, out.stderr) == (
        1,
        "swarm: task 'plain' has no checks output: none ran (done)\n",
    )


def test_logs_reach_your_terminal_without_an_agents_escapes(
    repo: Path, write_agent: AgentFactory
) -> None:
    agent = write_agent(
        "import sys\n"
        "sys.stdout.write('\\x1b]0;pwned\\x07title \\x1b[2Jclear \\x1b]52;c;ZWNobyBoaQ==\\x07clip'"
        " ' \\u202eevil\\n50%\\r100%\\n')\n"
        "open('f', 'w')\n"
    )
    assert swarm(repo, "run", "--agent", " ".join(agent), "-t", "talk=x").returncode == 0
    cli = [sys.executable, "-m", "worktree_swarm.cli", "logs", "talk"]
    out = subprocess.run(cli, cwd=repo, capture_output=True, check=True).stdout.decode()
    assert all(word in out for word in ("title", "clear", "clip", "evil"))
    assert not any(char in out for char in "\x1b\x07\u202e")
    assert "[2J" not in out  # nor what was left of a sequence
    assert "52;c;" not in out
    assert "50%\r100%\n" in out  # a progress bar still redraws its line


def test_an_unterminated_title_sequence_hides_no_later_line_nor_the_failure(
    repo: Path, write_agent: AgentFactory
) -> None:
    # A stray ESC ] (binary output, a cut progress sequence) once swallowed every later line:
    # the log shown, the watch pane and the failure's reason ended at it.
    agent = write_agent(
        "import sys\n"
        "print('before')\n"
        "print('half: \\x1b]0;unterminated title')\n"
        "print('IMPORTANT: deleted your database')\n"
        "print('error: something failed badly')\n"
        "sys.exit(2)\n"
    )
    assert swarm(repo, "run", "--agent", " ".join(agent), "-t", "osc=x").returncode == 1
    cli = [sys.executable, "-m", "worktree_swarm.cli", "logs", "osc"]
    out = subprocess.run(cli, cwd=repo, capture_output=True, check=True).stdout.decode()
    assert "IMPORTANT: deleted your database\n" in out
    assert out.endswith("error: something failed badly\n")
    assert "\x1b" not in out
    reason = status_json(repo)["osc"]["reason"]
    assert "error: something failed badly" in reason


@pytest.mark.parametrize("python_env", [{}, {"PYTHONSAFEPATH": "1", "PYTHONOPTIMIZE": "2"}])
def test_demo_runs_end_to_end_and_cleans_up(tmp_path: Path, python_env: dict[str, str]) -> None:
    # A user's PYTHONSAFEPATH reached the demo's check (its script's folder off sys.path: the
    # check failed); PYTHONOPTIMIZE would strip an assert, and the check pass untested.
    env = {**os.environ, "TMPDIR": str(tmp_path), **python_env}
    out = subprocess.run(
        [sys.executable, "-m", "worktree_swarm.cli", "demo"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    # Four tasks (two independent, one on one of them, one on both), each done on its branch.
    for task in ("greeting", "farewell", "greeting-tests", "docs"):
        row = rf"^{task} +done +\+\d+ -\d+ +swarm/{task}$"
        assert re.search(row, out.stdout, re.MULTILINE), task
    assert "your checkout stayed on main, untouched" in out.stdout
    assert list(tmp_path.iterdir()) == []


def test_demo_keep_leaves_its_repository_with_the_agents_branches(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    cli = [sys.executable, "-m", "worktree_swarm.cli", "demo", "--keep"]
    out = subprocess.run(cli, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    kept = Path(out.stdout.strip().splitlines()[-1].removeprefix("kept: "))
    assert kept.parent == tmp_path
    (repo,) = [p for p in kept.iterdir() if (p / ".git").is_dir()]
    branches = git(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/swarm/")
    assert sorted(branches.splitlines()) == [
        "swarm/docs", "swarm/farewell", "swarm/greeting", "swarm/greeting-tests"
    ]  # fmt: skip
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "main"


@pytest.mark.parametrize("command", [["run", "--agent", "true", "-t", "a=p"], ["doctor"]])
def test_a_repository_swarm_cannot_write_is_one_clear_line(repo: Path, command: list[str]) -> None:
    git_dir = repo / ".git"
    git_dir.chmod(0o555)
    try:
        out = subprocess.run(
            [*as_owner_only(), sys.executable, "-m", "worktree_swarm.cli", *command],
            cwd=repo, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    finally:
        git_dir.chmod(0o755)
    if command == ["doctor"]:  # a look writes nothing, so a read-only repository is no obstacle
        assert (out.returncode, out.stdout, out.stderr) == (0, "nothing to clean\n", "")
    else:
        assert out.returncode == 2
        assert out.stderr == (
            f"swarm: cannot write {git_dir}/swarm: Permission denied; "
            "swarm keeps its state in .git/swarm\n"
        )
    assert not (git_dir / "swarm").exists()


def test_output_to_a_file_in_a_directory_swarm_cannot_enter_is_written(
    repo: Path, tmp_path: Path
) -> None:
    # As `sudo -u you swarm run ... > /root/out.log`: the descriptor is writable, its name
    # cannot be looked at, and swarm refused to run ("cannot write /root/out.log").
    closed = tmp_path / "closed"
    closed.mkdir()
    log = closed / "out.log"
    with log.open("w") as out_file:
        closed.chmod(0)
        try:
            out = subprocess.run(
                [*as_owner_only(), sys.executable, "-m", "worktree_swarm.cli", "run", "--agent",
                 "scripted", "-t", "a=x"],
                cwd=repo, stdout=out_file, stderr=subprocess.PIPE, text=True, check=False,
                stdin=subprocess.DEVNULL, timeout=120,
            )  # fmt: skip
        finally:
            closed.chmod(0o755)
    assert (out.returncode, out.stderr) == (0, "")
    assert "run finished" in log.read_text()


def test_a_file_where_swarms_state_belongs_is_one_line_not_an_internal_error(repo: Path) -> None:
    state = repo / ".git" / "swarm"
    state.write_text("x\n")
    out = swarm(repo, "run", "--agent", "scripted", "-t", "a=x")
    assert out.returncode == 2, out.stderr
    assert (
        out.stderr
        == f"swarm: cannot write {state}: File exists; swarm keeps its state in .git/swarm\n"
    )
    assert state.read_text() == "x\n"
    assert not git(repo, "branch", "--list", "swarm/*")


def test_dash_c_reads_relative_paths_from_that_directory(repo: Path, tmp_path: Path) -> None:
    # As git's -C: `swarm -C repo run tasks.toml` read tasks.toml from where it was started.
    (repo / "tasks.toml").write_text('[[task]]\nid = "a"\nprompt = "x"\nagent = "scripted"\n')
    out = subprocess.run(
        [sys.executable, "-m", "worktree_swarm.cli", "-C", repo.name, "run", "tasks.toml"],
        cwd=repo.parent, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert git(repo, "branch", "--list", "swarm/a")
    out = swarm(tmp_path, "-C", "no-such-dir", "status")
    assert (out.returncode, out.stderr) == (
        2,
        "swarm: -C 'no-such-dir': No such file or directory\n",
    )


def test_a_spec_file_no_detached_run_wrote_is_refused_and_kept(repo: Path) -> None:
    spec = repo.parent / "f.json"
    spec.write_text('{"a": 1}')
    out = swarm(repo, "run", "--from-spec", str(spec))
    assert out.returncode == 2
    assert out.stderr.startswith("swarm: --from-spec: not a run `swarm run --detach` wrote")
    assert spec.read_text() == '{"a": 1}'
    _no_trace(repo)


def test_a_path_with_a_line_break_in_an_error_stays_on_one_line(repo: Path) -> None:
    out = swarm(repo, "run", "no\nsuch.toml")
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1, out.stderr
    assert "no\\nsuch.toml" in out.stderr
    _no_trace(repo)


@pytest.mark.parametrize(
    "command", [("status",), ("diff",), ("merge",), ("merge", "--dry-run"), ("logs", "a")]
)
def test_a_look_or_a_merge_before_any_run_is_a_clear_error_and_makes_nothing(
    repo: Path, command: tuple[str, ...]
) -> None:
    out = swarm(repo, *command)
    assert out.returncode == 2
    assert out.stderr == f"swarm: no swarm runs in {repo} yet; start one with `swarm run`\n"
    assert not (repo / ".git" / "swarm").exists()
    assert git(repo, "branch", "--list", "swarm/*") == ""
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1


def test_a_task_that_leaves_an_expected_file_unwritten_fails_or_is_told_to_write_it(
    repo: Path, write_agent: AgentFactory
) -> None:
    # Exits 0 having written something else; writes the expected file once told it is missing.
    agent = write_agent(
        "import pathlib, sys\n"
        "if 'expected files missing: out.txt' in pathlib.Path(sys.argv[1]).read_text():\n"
        "    pathlib.Path('out.txt').write_text('made')\n"
        "pathlib.Path('other.txt').write_text('other')\n"
    )
    text = f"[defaults]\nagent = {argv_toml([*agent, '{prompt_file}'])}\n"
    expect = 'expect_files = ["out.txt"]\n'
    text += f'[[task]]\nid = "once"\nprompt = "p"\n{expect}'
    text += f'[[task]]\nid = "told"\nprompt = "p"\nrepair = 1\n{expect}'
    out = swarm(repo, "run", manifest(repo, text))
    assert out.returncode == 1, out.stdout + out.stderr
    rows = status_json(repo)
    assert rows["once"]["state"] == "failed"
    assert str(rows["once"]["reason"]).startswith("expected files missing: out.txt")
    assert branch_file(repo, "swarm/once", "other.txt") == "other"  # its work kept
    assert rows["told"]["state"] == "done"
    assert branch_file(repo, "swarm/told", "out.txt") == "made"


def test_task_branches_never_track_though_git_config_asks_for_it(
    repo: Path, write_agent: AgentFactory
) -> None:
    git(repo, "config", "branch.autoSetupMerge", "always")
    git(repo, "config", "branch.autoSetupRebase", "always")
    agent = argv_toml(write_agent("open('a.txt', 'w').write('a')\n"))
    path = manifest(repo, f'[defaults]\nagent = {agent}\n[[task]]\nid = "a"\nprompt = "p"\n')
    assert swarm(repo, "run", path).returncode == 0
    assert swarm(repo, "merge").returncode == 0
    assert [line for line in git(repo, "config", "--list").splitlines() if "swarm/" in line] == []


@pytest.mark.long
@pytest.mark.parametrize("given", ["manifest", "flag"])
def test_idle_agent_is_timed_out_and_its_work_kept(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, given: str
) -> None:
    # It says a line, then waits on nothing without exiting: silent, not finished.
    agent = write_agent(
        "import pathlib, threading\n"
        "pathlib.Path('early.txt').write_text('early\\n')\n"
        "print('working', flush=True)\n"
        "threading.Event().wait()\n"
    )
    if given == "manifest":
        text = f'[defaults]\nagent = {argv_toml(agent)}\nidle_timeout = "3s"\nkill_grace = "1s"\n'
        out = swarm(repo, "run", manifest(repo, text + '[[task]]\nid = "quiet"\nprompt = "x"\n'))
    else:  # as the README gives it: `swarm run --idle-timeout D`, no file
        agent_line = " ".join(agent)
        out = swarm(repo, "run", "--agent", agent_line, "--idle-timeout", "3s", "-t", "quiet=x")
    assert out.returncode == 1, out.stderr
    row = status_json(repo)["quiet"]
    assert row["state"] == "timed_out"
    assert "no output for 3s" in str(row["reason"])
    assert swarm(repo, "logs", "quiet").stdout.startswith("working")
    assert branch_file(repo, "swarm/quiet", "early.txt") == "early"


def _talking_run(
    repo: Path, go: Path, write_agent: AgentFactory, *, last: str
) -> subprocess.Popen[bytes]:
    """A run of task `talk`, whose agent says its first line, waits for *go*, runs *last*."""
    agent = write_agent(
        "import pathlib, sys, time\n"
        "print('first line', flush=True)\n"
        f"while not pathlib.Path({str(go)!r}).exists():\n"
        "    time.sleep(0.05)\n"
        f"{last}"
        "pathlib.Path('f.txt').write_text('x')\n"
    )
    run = swarm_bg(repo, "run", "--agent", " ".join(agent), "-t", "talk=x")
    try:
        wait_for(lambda: swarm(repo, "logs", "talk").stdout.startswith("first line"),
                 what="the agent's first line")  # fmt: skip
    except BaseException:
        run.kill()
        raise
    return run


def test_logs_follow_streams_until_the_agent_ends(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    go = tmp_path / "go"
    run = _talking_run(repo, go, write_agent, last="print('last line', flush=True)\n")
    try:
        follow = subprocess.Popen(
            [sys.executable, "-m", "worktree_swarm.cli", "logs", "-f", "talk"],
            cwd=repo, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        go.touch()
        output, _ = follow.communicate(timeout=60)
        assert follow.returncode == 0
        assert output.splitlines() == ["first line", "last line"]
        assert run.wait(timeout=60) == 0
    finally:
        run.kill()


def test_logs_follow_ends_when_its_reader_goes_away_while_the_agent_is_quiet(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    # `swarm logs -f t | head -1`: the follower kept on until the agent ended (an hour, or the
    # night), its output going nowhere.
    go = tmp_path / "go"
    run = _talking_run(repo, go, write_agent, last="")
    try:
        follow = subprocess.Popen(
            [sys.executable, "-m", "worktree_swarm.cli", "logs", "-f", "talk"],
            cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert follow.stdout is not None
        assert follow.stdout.readline() == b"first line\n"
        follow.stdout.close()  # as `head -1` does; the agent says nothing more
        assert follow.wait(timeout=60) == 0
        assert follow.stderr is not None
        with follow.stderr:
            assert follow.stderr.read() == b""
        assert not go.exists()  # it ended while the agent still ran
        go.touch()
        assert run.wait(timeout=60) == 0
    finally:
        go.touch()
        run.kill()


@pytest.mark.long
def test_tasks_with_overlapping_files_never_run_together(
    repo: Path, write_agent: AgentFactory
) -> None:
    agent = argv_toml(
        write_agent(
            "import os, pathlib, time\n"
            "time.sleep(1.5)\n"  # long enough to overlap a task started beside it on a busy CI
            "pathlib.Path(os.environ['SWARM_TASK_ID'] + '.txt').write_text('x')\n"
        )
    )
    path = manifest(
        repo,
        f"[defaults]\nagent = {agent}\njobs = 3\n"
        '[[task]]\nid = "auth-a"\nprompt = "x"\nfiles = ["src/auth/**"]\n'
        '[[task]]\nid = "auth-b"\nprompt = "x"\nfiles = ["src/auth/login.py"]\n'
        '[[task]]\nid = "docs"\nprompt = "x"\nfiles = ["docs/**"]\n',
    )
    assert swarm(repo, "run", path).returncode == 0
    with state_db(repo) as db:
        spans = {
            task: (start, end)
            for task, start, end in db.execute("SELECT task_id, started_at, ended_at FROM attempts")
        }
    (a_start, a_end), (b_start, b_end) = spans["auth-a"], spans["auth-b"]
    assert a_end <= b_start or b_end <= a_start  # serialised
    d_start, d_end = spans["docs"]
    # docs overlaps neither, so it ran alongside them.
    assert d_start < max(a_end, b_end)
    assert d_end > min(a_start, b_start)


def test_a_run_started_with_few_open_files_allowed_finishes_every_task(
    repo: Path, write_agent: AgentFactory
) -> None:
    """A manager holds a few files per task (git's pipes, logs, the guard's watches): under a
    low soft limit (macOS's is 256) the guard's reads failed and every task with them. The
    manager raises its soft limit as far as the hard one lets it."""
    agent = " ".join(write_agent("open('out.txt', 'w').write('x')\n"))
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    tasks = [arg for i in range(16) for arg in ("-t", f"t{i}=x")]
    argv = [sys.executable, "-m", "worktree_swarm.cli", "run", "--agent", agent, "-j", "8", *tasks]
    out = subprocess.run(
        argv, cwd=repo, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
        check=False, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (40, hard)),
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    rows = json.loads(swarm(repo, "status", "--json").stdout)["tasks"]
    assert {r["state"] for r in rows} == {"done"}, rows


def test_a_run_whose_output_no_one_reads_any_more_finishes_every_task(
    repo: Path, write_agent: AgentFactory
) -> None:
    """`swarm run ... | head -1`: the next line's broken pipe killed the manager, its agents
    left running unwatched, one task failed with an internal error."""
    agent = " ".join(write_agent("import time\ntime.sleep(0.3)\nopen('out.txt', 'w').write('x')\n"))
    tasks = [arg for i in range(6) for arg in ("-t", f"t{i}=x")]
    errors = repo.parent / "stderr.txt"
    with errors.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worktree_swarm.cli", "run", "--agent", agent, *tasks],
            cwd=repo, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith(b"run ")
    proc.stdout.close()  # as `head -1` does
    assert proc.wait(timeout=120) == 0, errors.read_text()
    rows = json.loads(swarm(repo, "status", "--json").stdout)["tasks"]
    assert {r["state"] for r in rows} == {"done"}, rows


@pytest.mark.parametrize("command", [("logs", "t0"), ("runs",), ("status",), ("clean", "--yes")])
def test_a_command_whose_reader_went_away_goes_on_quietly(
    repo: Path, write_agent: AgentFactory, command: tuple[str, ...]
) -> None:
    """`swarm logs t0 | head -1`: the broken pipe read as the log's failure ("not read"),
    `swarm runs | head -1` exited 1 (some task failed), a clean stopped midway."""
    agent = " ".join(write_agent("for i in range(3000):\n    print('line', i)\nopen('o', 'w')\n"))
    tasks = [arg for i in range(3) for arg in ("-t", f"t{i}=x")]
    assert swarm(repo, "run", "--agent", agent, *tasks).returncode == 0
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line: every write is a broken pipe
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "worktree_swarm.cli", *command],
            cwd=repo, stdout=write, stderr=subprocess.PIPE, check=False, timeout=120,
        )  # fmt: skip
    finally:
        os.close(write)
    assert (proc.returncode, proc.stderr) == (0, b"")
    if command[0] == "clean":  # it went on to the end: every worktree removed, work kept
        assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
        assert len(git(repo, "branch", "--list", "swarm/*").split()) == 3


def test_a_run_that_made_the_same_branches_while_this_one_waited_for_the_lock_is_left_alone(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two `swarm run`s of the same task started together: both found no swarm/a, one took the
    # lock and finished within the second the other waits for it. That other one then recorded
    # a run of its own that took swarm/a over (failed), and `swarm clean` deleted its work.
    agent = tmp_path / "agent.py"
    agent.write_text("import pathlib\npathlib.Path('a.txt').write_text('the winner\\n')\n")
    command = ["run", "-t", "a=x", "--agent", f"{sys.executable} {agent}"]
    real = ManagerLock.acquire
    raced: list[subprocess.CompletedProcess[str]] = []

    def other_run_first(self: ManagerLock, **kwargs: str | None) -> None:
        if not raced:  # after this run's checks, before its lock: the other run, whole
            raced.append(swarm(repo, *command))
        real(self, **kwargs)

    monkeypatch.setattr(ManagerLock, "acquire", other_run_first)
    out = swarm_here(repo, *command)
    monkeypatch.undo()

    assert raced[0].returncode == 0, raced[0].stderr
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.startswith("swarm: branch swarm/a ")
    runs = json.loads(swarm(repo, "runs", "--json").stdout)["runs"]
    assert len(runs) == 1  # none recorded for the one refused
    assert status_json(repo)["a"]["state"] == "done"
    assert git(repo, "show", "swarm/a:a.txt") == "the winner"


ENV_AND_HISTORY = r"""
import json, os, pathlib, subprocess, sys
me = os.environ["SWARM_TASK_ID"]
seen = {"git_vars": sorted(k for k in os.environ if k.startswith("GIT_") and k in (
    "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY")),
    "stdin": os.readlink("/proc/self/fd/0")}
pathlib.Path(sys.argv[1], me + ".json").write_text(json.dumps(seen))
def git(*args):
    subprocess.run(["git", "-c", "user.name=a", "-c", "user.email=a@b", *args], check=True)
if me == "revert":  # a commit, then its revert: nothing to merge
    pathlib.Path("x.txt").write_text("x\n")
    git("add", "x.txt")
    git("commit", "-qm", "add x")
    git("revert", "--no-edit", "HEAD")
elif me == "empty":
    git("commit", "-q", "--allow-empty", "-m", "nothing")
"""


def test_an_agent_sees_no_git_location_and_no_stdin_and_undone_work_is_no_changes(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Your shell's GIT_DIR (a bare-repo dotfiles alias, say) would send the agent's git into
    # another repository; stdin is closed, so an agent that asks a question ends instead of
    # waiting. A branch whose commits undo each other, or that holds only an empty commit,
    # has nothing to merge.
    seen = tmp_path / "seen"
    seen.mkdir()
    agent = write_agent(ENV_AND_HISTORY)
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "elsewhere.git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(tmp_path))
    out = swarm(repo, "run", "--agent", shlex.join([*agent, str(seen)]),
                "-t", "revert=x", "-t", "empty=x")  # fmt: skip
    monkeypatch.delenv("GIT_DIR")
    monkeypatch.delenv("GIT_WORK_TREE")
    assert out.returncode == 1, out.stdout + out.stderr  # no task did what was asked
    for task in ("revert", "empty"):
        told = json.loads((seen / f"{task}.json").read_text())
        assert told == {"git_vars": [], "stdin": "/dev/null"}
        assert status_json(repo)[task]["state"] == "no_changes"
    assert not (tmp_path / "elsewhere.git").exists()


def test_a_task_whose_dependencies_conflict_is_blocked_naming_them_and_its_sibling_runs(
    repo: Path, tmp_path: Path
) -> None:
    # d1 and d2 write the same file differently: a task on both cannot start from a merge of
    # them, and says where they clash; one on d1 and d3 (which touch different files) runs.
    agent = tmp_path / "agent.py"
    agent.write_text(
        "import os, pathlib\n"
        "me = os.environ['SWARM_TASK_ID']\n"
        "name = {'d1': 'a.txt', 'd2': 'a.txt', 'd3': 'b.txt'}.get(me, me + '.txt')\n"
        "pathlib.Path(name).write_text(me + '\\n')\n"
    )
    text = (
        f"[defaults]\nagent = {argv_toml([sys.executable, str(agent)])}\n"
        + "".join(f'[[task]]\nid = "{t}"\nprompt = "x"\n' for t in ("d1", "d2", "d3"))
        + '[[task]]\nid = "both"\nprompt = "x"\ndepends_on = ["d1", "d2"]\n'
        + '[[task]]\nid = "fine"\nprompt = "x"\ndepends_on = ["d1", "d3"]\n'
    )
    out = swarm(repo, "run", manifest(repo, text))
    assert out.returncode == 1, out.stdout + out.stderr
    rows = status_json(repo)
    assert rows["both"]["state"] == "blocked"
    assert rows["both"]["reason"] == "dependencies d1, d2 conflict in a.txt"
    assert rows["fine"]["state"] == "done"
    assert branch_file(repo, "swarm/fine", "b.txt") == "d3"
    assert branch_file(repo, "swarm/fine", "fine.txt") == "fine"


def test_no_placeholders_finds_every_added_marker_and_names_its_file_as_git_would(
    repo: Path,
) -> None:
    # An added line `++ TODO` reads `+++ TODO` in a hunk: it was taken for a file's header
    # (missed, and later lines put under a file named `TODO`), and quoted names kept git's
    # quotes and `b/`.
    base = git(repo, "rev-parse", "HEAD")
    (repo / "sp ace.py").write_text("++ TODO finish this\nok = 1\n")
    (repo / os.fsdecode(b"bad\xff.py")).write_text("# FIXME\n")
    (repo / "nl\n.py").write_text("raise NotImplementedError\n")
    (repo / "plain.py").write_text("x = 1  # TODO\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "work")

    assert placeholder_lines(repo, base) == [
        '"bad\\377.py": # FIXME',
        '"nl\\n.py": raise NotImplementedError',
        "plain.py: x = 1  # TODO",
        "sp ace.py: ++ TODO finish this",
    ]
