"""`swarm run --executor ray` on a real two-node Ray cluster on 127.0.0.1.

The cluster (a head and one worker node, each a `ray start --block` this module owns, two
agent slots each) is shared by the tests of this module; the shared remote is a bare
repository. Agents are small Python programs that record where they ran and wait for a
release file, so the tests synchronise on files, never on sleeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import psutil
import pytest

from tests.conftest import GIT_SUBCOMMAND, add_submodule, git, git_first_on_path, make_repo
from tests.test_leftovers import _bystander as leftovers_bystander
from tests.test_leftovers import _daemon as leftovers_daemon
from tests.test_leftovers import _gone as leftovers_gone
from tests.test_run import swarm as run_swarm

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'worktree-swarm[ray]')")

from tests import raykit  # noqa: E402 - only with ray installed
from tests.test_store import _committed, _traced_swarm, launch_transactions  # noqa: E402
from worktree_swarm.core.units import format_size  # noqa: E402
from worktree_swarm.infra.redact import REDACTED  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
NODE_SECRET = "node-deploy-value-3c9a7e"  # noqa: S105 - a made-up secret

AGENT = r"""
import os, pathlib, subprocess, sys, time
ctl = pathlib.Path(sys.argv[1])
task = os.environ["SWARM_TASK_ID"]
node = os.environ.get("SWARM_NODE_NAME", "?")
pathlib.Path(f"{task}.txt").write_text(f"work of {task}\n")
print(f"agent {task} on {node}", flush=True)
print("key=" + os.environ.get("NODE_DEPLOY_TOKEN", ""), flush=True)  # the node's secret
if len(sys.argv) > 2:  # a daemon of its own, in a session of its own
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                             start_new_session=True)
    (ctl / f"{task}.daemon.{child.pid}").write_text(node)
(ctl / f"{task}.agent.{os.getpid()}").write_text(node)
while not (ctl / "release").exists():
    time.sleep(0.05)
pathlib.Path(f"{task}.done").write_text(node + "\n")
print(f"agent {task} done", flush=True)
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[raykit.Cluster]:
    base = tmp_path_factory.mktemp("ray")
    # Each node holds a secret of its own (its API key, say), which the coordinator never sees.
    made = raykit.Cluster.start(base, workers=1, slots=2, env={"NODE_DEPLOY_TOKEN": NODE_SECRET})
    try:
        yield made
    finally:
        made.shutdown()


def swarm(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI, with time for a cluster on a loaded machine."""
    return run_swarm(repo, *args, timeout=300)


def spawn_swarm(
    repo: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start the CLI in the background; its output goes to manager-<pid>.log beside *repo*."""
    log = repo.parent / f"manager-{time.monotonic_ns()}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [sys.executable, "-m", "worktree_swarm.cli", *args],
            cwd=repo,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    popen.log = log  # type: ignore[attr-defined]
    return popen


def output(popen: subprocess.Popen[bytes]) -> str:
    return popen.log.read_text()  # type: ignore[attr-defined]


def wait_for(what: str, check: Callable[[], object], *, timeout: float = 180) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def setup_repo(
    tmp_path: Path, tasks: list[str], *, daemon: bool = False
) -> tuple[Path, Path, Path]:
    """A repository, its bare remote `origin`, the agents' control dir, and a manifest."""
    repo = make_repo(tmp_path / "repo")
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(remote)], check=True)
    git(repo, "remote", "add", "origin", str(remote))
    ctl = tmp_path / "ctl"
    ctl.mkdir()
    script = tmp_path / "agent.py"
    script.write_text(AGENT)
    argv = [sys.executable, str(script), str(ctl)] + (["daemon"] if daemon else [])
    body = "".join(f'[[task]]\nid = "{t}"\nprompt = "do {t}"\n\n' for t in tasks)
    (tmp_path / "tasks.toml").write_text(
        "[defaults]\n"
        f"agent = {json.dumps(argv)}\n"
        "jobs = 4\n"
        'executor = "ray"\n'
        'kill_grace = "2s"\n'
        'ray_memory = "64M"\n'
        'checkpoint_interval = "1s"\n\n' + body
    )
    return repo, remote, ctl


def status(repo: Path) -> dict[str, dict[str, object]]:
    out = swarm(repo, "status", "--json")
    assert out.returncode == 0, out.stderr
    return {t["task_id"]: t for t in json.loads(out.stdout)["tasks"]}


def status_if_any(repo: Path) -> dict[str, dict[str, object]]:
    """:func:`status`, or nothing while the run is not recorded yet."""
    out = swarm(repo, "status", "--json")
    if out.returncode == 2 and "no swarm runs" in out.stderr:
        return {}
    assert out.returncode == 0, out.stderr
    return {t["task_id"]: t for t in json.loads(out.stdout)["tasks"]}


def events(repo: Path, kind: str) -> list[tuple[str, dict[str, object]]]:
    with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as conn:
        rows = conn.execute("SELECT task_id, data FROM events WHERE kind = ?", (kind,)).fetchall()
    return [(task_id, json.loads(data)) for task_id, data in rows]


def agents_started(ctl: Path, count: int) -> list[Path]:
    found = sorted(ctl.glob("*.agent.*"))
    return found if len(found) >= count else []


def show(text: str, path: Path) -> str:
    return f"{text}\n{path.read_text()[-3000:] if path.exists() else ''}"


# Commits a value the coordinator's environment holds too (its node provisioned with the same
# key; here read from a file) and deletes it again in a second commit; one file of work.
COMMITTING_AGENT = r"""
import pathlib, subprocess, sys
value = (pathlib.Path(sys.argv[1]) / "value").read_text()
def git(*args): subprocess.run(["git", *args], check=True)
pathlib.Path("config.txt").write_text(f"token = {value}\n")
git("add", "config.txt")
git("commit", "-q", "-m", "configure the service")
git("rm", "-q", "config.txt")
git("commit", "-q", "-m", "drop the config")
pathlib.Path("work.txt").write_text("work\n")
"""
SERVICE_SECRET = "tok_5e4d3c2b1a0f9e8dRq"  # noqa: S105 - a made-up token, the test's own


def test_a_secret_an_agent_on_a_node_commits_itself_is_recorded_and_refused_from_any_shell(
    cluster: raykit.Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, _remote, ctl = setup_repo(tmp_path, ["s1"])
    (tmp_path / "agent.py").write_text(COMMITTING_AGENT)
    (ctl / "value").write_text(SERVICE_SECRET)
    monkeypatch.setenv("SERVICE_TOKEN", SERVICE_SECRET)  # the coordinator's environment
    out = swarm(repo, "run", str(tmp_path / "tasks.toml"), "--ray-address", cluster.address)
    assert out.returncode == 0, out.stdout + out.stderr
    assert SERVICE_SECRET in git(repo, "log", "-p", "swarm/s1")  # the agent's own act
    said = [line for line in out.stdout.splitlines() if line.startswith("s1: config.txt (commit ")]
    assert len(said) == 1, out.stdout
    # The next morning, another shell: the variable is unset, nothing of its value is known.
    monkeypatch.delenv("SERVICE_TOKEN")
    shown = str(status(repo)["s1"]["secret_commit"])
    assert shown.startswith("config.txt (commit "), shown
    assert shown.endswith("holds the value of SERVICE_TOKEN (a secret of the run's environment)")
    merged = swarm(repo, "merge")
    assert merged.returncode == 1, merged.stdout + merged.stderr
    assert "not merging swarm/s1: config.txt (commit " in merged.stdout, merged.stdout
    assert SERVICE_SECRET not in merged.stdout + merged.stderr + out.stdout + out.stderr


@pytest.mark.parametrize("left", [False, True])
def test_a_secret_only_its_node_holds_that_an_agent_commits_itself_is_recorded_there(
    cluster: raykit.Cluster, tmp_path: Path, left: bool
) -> None:
    # The value is the node's own (NODE_DEPLOY_TOKEN, set in the environment of each node's
    # `ray start`, never the coordinator's): the node looks through the agent's commits. Also
    # when the attempt fails on its node (*left*: a file holding the value, which its
    # checkpoint leaves out).
    repo, _remote, _ctl = setup_repo(tmp_path, ["n1"])
    leaves = "\npathlib.Path('leak.txt').write_text(value)\n" if left else ""
    (tmp_path / "agent.py").write_text(
        COMMITTING_AGENT.replace(
            'value = (pathlib.Path(sys.argv[1]) / "value").read_text()',
            'import os\nvalue = os.environ["NODE_DEPLOY_TOKEN"]',
        )
        + leaves
    )
    assert "NODE_DEPLOY_TOKEN" not in os.environ  # the coordinator's: never held
    out = swarm(repo, "run", str(tmp_path / "tasks.toml"), "--ray-address", cluster.address)
    assert out.returncode == (1 if left else 0), out.stdout + out.stderr
    row = status(repo)["n1"]
    assert row["state"] == ("failed" if left else "done"), row
    assert not left or "leak.txt" in str(row["reason"]), row
    assert NODE_SECRET in git(repo, "log", "-p", "swarm/n1")  # the agent's own act
    said = [line for line in out.stdout.splitlines() if line.startswith("n1: config.txt (commit ")]
    assert len(said) == 1, out.stdout
    shown = str(status(repo)["n1"]["secret_commit"])
    assert shown.startswith("config.txt (commit "), shown
    assert "holds the value of NODE_DEPLOY_TOKEN" in shown, shown
    merged = swarm(repo, "merge", "n1")  # a failed task by name
    assert merged.returncode == 1, merged.stdout + merged.stderr
    assert "not merging swarm/n1: config.txt (commit " in merged.stdout, merged.stdout
    assert NODE_SECRET not in git(repo, "log", "-p", "HEAD")
    texts = [out.stdout, out.stderr, merged.stdout, merged.stderr]
    for args in (("status",), ("status", "--json"), ("report", "--json"), ("logs", "n1")):
        shown_out = swarm(repo, *args)
        assert shown_out.returncode == 0, (args, shown_out.stderr)
        texts += [shown_out.stdout, shown_out.stderr]
    for text in texts:
        assert NODE_SECRET not in text, text[:2000]
    kept = [p for p in (repo / ".git" / "swarm").rglob("*") if p.is_file() and not p.is_symlink()]
    assert any(p.name == "state.db" for p in kept)
    for path in kept:
        assert NODE_SECRET.encode() not in path.read_bytes(), path


def test_tasks_spread_over_both_nodes_and_their_branches_are_pushed(
    cluster: raykit.Cluster, tmp_path: Path
) -> None:
    tasks = ["t1", "t2", "t3", "t4"]
    repo, remote, ctl = setup_repo(tmp_path, tasks)
    (ctl / "release").write_text("")
    out = swarm(repo, "run", str(tmp_path / "tasks.toml"), "--ray-address", cluster.address)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = status(repo)
    assert {t: r["state"] for t, r in rows.items()} == dict.fromkeys(tasks, "done")
    # Two slots per node and four tasks at once: both nodes ran agents, as the store says.
    assert {r["node"] for r in rows.values()} == {"head", "w0"}
    for task in tasks:
        node = rows[task]["node"]
        # On the remote (pushed from the node) and fetched back into the repository.
        for where in (remote, repo):
            assert git(where, "show", f"swarm/{task}:{task}.txt") == f"work of {task}"
            assert git(where, "show", f"swarm/{task}:{task}.done") == node
        assert git(repo, "rev-parse", f"swarm/{task}") == git(remote, "rev-parse", f"swarm/{task}")
        made = git(repo, "log", "-1", "--format=%(trailers:only,unfold)", f"swarm/{task}")
        assert made.splitlines() == [
            f"Swarm-Task: {task}",
            "Swarm-Attempt: 1",
            "Swarm-Agent: command",
        ]
    # Nothing of the run's actors is left on either node, nor a directory of its attempts.
    assert not actor_processes(cluster)
    run_id = json.loads(swarm(repo, "status", "--json").stdout)["run_id"]
    assert [n.name for n in cluster.nodes if (n.work_dir / "runs" / run_id).exists()] == []
    out = swarm(repo, "logs", "t1")
    assert out.returncode == 0
    assert out.stdout.splitlines()[0] in {"agent t1 on head", "agent t1 on w0"}


def test_a_prompt_that_starts_with_a_dash_reaches_the_agent_on_a_node_as_its_prompt(
    cluster: raykit.Cluster, tmp_path: Path
) -> None:
    # As on this machine: a CLI that parses options (commander, clap) refused it as one.
    repo, _remote, _ctl = setup_repo(tmp_path, [])
    script = tmp_path / "strict.py"
    script.write_text(
        "import pathlib, sys\nprompt = sys.argv[1]\nif prompt.startswith('-'):\n"
        "    sys.exit(f'error: unknown option {prompt!r}')\n"
        "pathlib.Path('prompt.txt').write_text(prompt)\n"
    )
    manifest = tmp_path / "dash.toml"
    manifest.write_text(
        f"[defaults]\nagent = {json.dumps([sys.executable, str(script), '{prompt}'])}\n"
        'executor = "ray"\nray_memory = "64M"\n\n[[task]]\nid = "d"\nprompt = "--help"\n'
    )
    out = swarm(repo, "run", str(manifest), "--ray-address", cluster.address)
    assert out.returncode == 0, out.stdout + out.stderr
    prompt = git(repo, "show", "swarm/d:prompt.txt").lstrip()
    assert prompt.partition("\n\n## Shared findings")[0] == "--help"


def test_an_agent_on_a_node_silent_for_its_idle_timeout_is_timed_out_and_its_work_kept(
    cluster: raykit.Cluster, tmp_path: Path
) -> None:
    # It talks for longer than its idle_timeout first: only the silence that follows counts.
    repo, _remote, _ctl = setup_repo(tmp_path, [])
    script = tmp_path / "quiet.py"
    script.write_text(
        "import pathlib, time\n"
        "for i in range(25):\n"
        "    print(f'tick {i}', flush=True)\n"
        "    time.sleep(0.2)\n"
        "pathlib.Path('early.txt').write_text('early\\n')\n"
        "print('now quiet', flush=True)\n"
        "time.sleep(600)\n"
    )
    manifest = tmp_path / "quiet.toml"
    manifest.write_text(
        f"[defaults]\nagent = {json.dumps([sys.executable, str(script)])}\n"
        'executor = "ray"\nray_memory = "64M"\nidle_timeout = "3s"\nkill_grace = "1s"\n\n'
        '[[task]]\nid = "q"\nprompt = "p"\n'
    )
    out = swarm(repo, "run", str(manifest), "--ray-address", cluster.address)
    assert out.returncode == 1, out.stdout + out.stderr
    row = status(repo)["q"]
    assert row["state"] == "timed_out"
    assert "no output for 3s" in str(row["reason"])
    assert git(repo, "show", "swarm/q:early.txt") == "early"
    assert "tick 24" in swarm(repo, "logs", "q").stdout
    assert not actor_processes(cluster)


def test_an_agent_on_a_node_printing_past_max_log_is_stopped_and_its_work_kept(
    cluster: raykit.Cluster, tmp_path: Path
) -> None:
    # Its log fills the node's disk, and the copy here this one's. The copy was made to the
    # log's end at each look: an agent printing faster held the watch there, never stopped.
    repo, _remote, _ctl = setup_repo(tmp_path, [])
    script = tmp_path / "loud.py"
    script.write_text(
        "import pathlib, time\n"
        "pathlib.Path('work.txt').write_text('half done')\n"
        "for i in range(300_000):\n"  # 270 MB at up to ~18 MB/s, then quiet: never the disk
        "    print('progress ' * 100, flush=True)\n"
        "    time.sleep(0.05 if i % 1000 == 0 else 0)\n"
        "time.sleep(600)\n"
    )
    manifest = tmp_path / "loud.toml"
    manifest.write_text(
        f"[defaults]\nagent = {json.dumps([sys.executable, str(script)])}\n"
        'executor = "ray"\nray_memory = "64M"\nmax_log = "1M"\nkill_grace = "1s"\n\n'
        '[[task]]\nid = "loud"\nprompt = "p"\n'
    )
    out = swarm(repo, "run", str(manifest), "--ray-address", cluster.address)
    assert out.returncode == 1, out.stdout + out.stderr
    row = status(repo)["loud"]
    assert row["state"] == "failed"
    assert "printed more than max_log (1.0M): stopped" in str(row["reason"])
    assert git(repo, "show", "swarm/loud:work.txt") == "half done"
    (log,) = (repo / ".git" / "swarm" / "runs").glob("*/loud/attempt-1.log")
    assert log.stat().st_size < 100 << 20  # stopped at one of the next looks (two a second)
    assert not actor_processes(cluster)


def test_max_log_on_a_node_holds_for_checks_and_for_an_agent_gone_between_two_looks(
    cluster: raykit.Cluster, tmp_path: Path
) -> None:
    # A check printing 2 MB (or an agent that did and ended before the next look) was done.
    repo, _remote, _ctl = setup_repo(tmp_path, [])
    script = tmp_path / "loud.py"
    script.write_text(
        "import pathlib, sys\n"
        "pathlib.Path('work.txt').write_text('done')\n"
        "sys.stdout.write('x' * (2 << 20))\n"
    )
    quiet = tmp_path / "quiet.py"
    quiet.write_text("import pathlib\npathlib.Path('work.txt').write_text('done')\n")
    loud, calm = json.dumps([sys.executable, str(script)]), json.dumps([sys.executable, str(quiet)])
    manifest = tmp_path / "loud.toml"
    manifest.write_text(
        f'[defaults]\nexecutor = "ray"\nray_memory = "64M"\nmax_log = "1M"\n\n'
        f'[[task]]\nid = "agent"\nprompt = "p"\nagent = {loud}\n'
        f'[[task]]\nid = "check"\nprompt = "p"\nagent = {calm}\nchecks = [{loud}]\n'
    )
    out = swarm(repo, "run", str(manifest), "--ray-address", cluster.address)
    assert out.returncode == 1, out.stdout + out.stderr
    rows = status(repo)
    for task in ("agent", "check"):
        assert rows[task]["state"] == "failed", rows[task]
        assert "printed more than max_log (1.0M)" in str(rows[task]["reason"]), rows[task]
    assert not actor_processes(cluster)


# Notes what it finds with `swarm note`, one line straight into the file too, and keeps what
# the findings file and its prompt said when it started.
NOTING_AGENT = r"""
import os, pathlib, subprocess, sys
task = os.environ["SWARM_TASK_ID"]
context = pathlib.Path(os.environ["SWARM_CONTEXT"])
pathlib.Path(f"{task}.seen").write_text(context.read_text())
pathlib.Path(f"{task}.prompt").write_text(sys.argv[1])
subprocess.run([sys.executable, "-m", "worktree_swarm.cli", "note", f"fact from {task}"],
               check=True)
with context.open("a") as fh:
    fh.write(f"- a line {task} wrote itself\n")
"""


def test_notes_of_agents_on_nodes_reach_the_runs_findings_and_the_agents_after_them(
    cluster: raykit.Cluster, tmp_path: Path
) -> None:
    # On a node an agent's notes went to a file of its attempt there, which the node deleted:
    # the run's findings never had them, and no agent after it saw them.
    repo, _remote, _ctl = setup_repo(tmp_path, [])
    script = tmp_path / "noting.py"
    script.write_text(NOTING_AGENT)
    manifest = tmp_path / "notes.toml"
    manifest.write_text(
        f"[defaults]\nagent = {json.dumps([sys.executable, str(script), '{prompt}'])}\n"
        'executor = "ray"\nray_memory = "64M"\n\n'
        '[[task]]\nid = "first"\nprompt = "p"\n\n'
        '[[task]]\nid = "second"\nprompt = "p"\ndepends_on = ["first"]\n'
    )
    out = swarm(repo, "run", str(manifest), "--ray-address", cluster.address)
    assert out.returncode == 0, out.stdout + out.stderr
    shown = swarm(repo, "notes")
    assert shown.returncode == 0, shown.stderr
    for task in ("first", "second"):
        assert shown.stdout.count(f"[{task}] fact from {task}") == 1, shown.stdout
        assert shown.stdout.count(f"- a line {task} wrote itself") == 1, shown.stdout
        prompt = git(repo, "show", f"swarm/{task}:{task}.prompt")
        assert "## Shared findings" in prompt
        assert "$SWARM_CONTEXT" in prompt
    assert "fact from first" not in git(repo, "show", "swarm/first:first.seen")
    seen = git(repo, "show", "swarm/second:second.seen")
    assert "[first] fact from first" in seen
    assert "- a line first wrote itself" in seen


# Records how each attempt got its prompt (argv or the file argv points to) in the control
# directory argv[1]; the first attempt's work fails the check, the repair's passes.
LONG_PROMPT_AGENT = r"""
import pathlib, re, sys
ctl, arg = pathlib.Path(sys.argv[1]), sys.argv[2]
pointer = re.search(r"it is in the file (\S+)\. Read", arg)
text = pathlib.Path(pointer.group(1)).read_text() if pointer else arg
n = len(list(ctl.glob("how-*")))
(ctl / f"how-{n}").write_text("file" if pointer else "argv")
(ctl / f"text-{n}").write_text(text)
pathlib.Path("x.txt").write_text("fixed" if n else "draft")
"""


def test_a_long_prompt_reaches_the_agent_on_a_node_through_its_file_also_in_a_repair(
    cluster: raykit.Cluster, tmp_path: Path
) -> None:
    # Linux caps one argument at 128 KiB: on a node the whole prompt went into argv and the
    # agent could not start (Argument list too long), as it once did on this machine.
    repo, _remote, ctl = setup_repo(tmp_path, [])
    script = tmp_path / "long.py"
    script.write_text(LONG_PROMPT_AGENT)
    long_file = tmp_path / "long.md"
    long_file.write_text("do this: " + "y" * 200_000)
    check = [sys.executable, "-c", "import sys; sys.exit(open('x.txt').read() != 'fixed')"]
    manifest = tmp_path / "long.toml"
    manifest.write_text(
        f"[defaults]\nagent = {json.dumps([sys.executable, str(script), str(ctl), '{prompt}'])}\n"
        f'executor = "ray"\nray_memory = "64M"\nrepair = 1\nchecks = [{json.dumps(check)}]\n'
    )
    out = swarm(
        repo,
        "run",
        str(manifest),
        "--prompt-file",
        f"long={long_file}",
        "--ray-address",
        cluster.address,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Argument list too long" not in out.stdout + out.stderr
    assert (status(repo)["long"]["state"], status(repo)["long"]["attempt"]) == ("done", 2)
    assert [(ctl / f"how-{n}").read_text() for n in (0, 1)] == ["file", "file"]
    first, repair = ((ctl / f"text-{n}").read_text() for n in (0, 1))
    assert first.startswith(long_file.read_text())
    # The repair, without a session, is told the whole task again, then what to do now.
    assert repair.startswith(long_file.read_text())
    assert "checks on your work failed" in repair


def actor_processes(cluster: raykit.Cluster) -> list[psutil.Process]:
    found = []
    for node in cluster.nodes:
        for proc in node.tree():
            try:
                if "NodeAgent" in " ".join(proc.cmdline()):
                    found.append(proc)
            except psutil.Error:
                continue
    return found


def test_stop_leaves_no_process_on_any_node(cluster: raykit.Cluster, tmp_path: Path) -> None:
    tasks = ["s1", "s2", "s3"]
    repo, remote, ctl = setup_repo(tmp_path, tasks, daemon=True)
    follow = None
    # A detached manager: the parent validates and joins the cluster, the child runs the tasks.
    out = swarm(
        repo, "run", str(tmp_path / "tasks.toml"), "--ray-address", cluster.address, "--detach"
    )
    assert out.returncode == 0, out.stdout + out.stderr
    manager = psutil.Process(int(out.stdout.split("(pid ", 1)[1].split(",", 1)[0]))
    try:
        wait_for("every agent to start", lambda: agents_started(ctl, len(tasks)))
        pids = [int(p.name.rsplit(".", 1)[1]) for p in ctl.glob("*.*.*")]
        assert len(pids) == 2 * len(tasks)  # an agent and its daemon per task
        assert all(psutil.pid_exists(pid) for pid in pids)
        # `swarm logs -f` follows the log the manager mirrors from the node, and ends with it.
        follow = spawn_swarm(repo, "logs", "s1", "-f")
        wait_for("the agent's line", lambda: "agent s1 on " in output(follow))
        out = swarm(repo, "stop")
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "stopped: s1, s2, s3"
        manager.wait(timeout=120)
        assert follow.wait(timeout=60) == 0
    finally:
        if manager.is_running():
            manager.kill()
        if follow is not None and follow.poll() is None:
            follow.kill()
    rows = status(repo)
    assert {t: r["state"] for t, r in rows.items()} == dict.fromkeys(tasks, "stopped")
    # The agents, their daemons and the actors are gone from every node.
    alive = [
        pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
    ]
    assert alive == []
    wait_for("the actors to exit", lambda: not actor_processes(cluster), timeout=60)
    # Their work is on their branches, on the remote and here.
    for task in tasks:
        assert git(remote, "show", f"swarm/{task}:{task}.txt") == f"work of {task}"
        assert git(repo, "show", f"swarm/{task}:{task}.txt") == f"work of {task}"


def test_sigterm_to_a_ray_coordinator_stops_its_run_as_locally(
    cluster: raykit.Cluster, tmp_path: Path
) -> None:
    # `ray.init` made SIGTERM a SystemExit raised wherever the coordinator's main thread was:
    # exit 15, its run left `running`, its agents left to `swarm stop`.
    repo, _remote, ctl = setup_repo(tmp_path, ["t1"])
    manager = spawn_swarm(
        repo, "run", str(tmp_path / "tasks.toml"), "--ray-address", cluster.address
    )
    try:
        wait_for("the agent to start", lambda: agents_started(ctl, 1))
        manager.send_signal(signal.SIGTERM)
        assert manager.wait(timeout=180) == 130
    finally:
        if manager.poll() is None:
            manager.kill()
            manager.wait(timeout=30)
    assert status(repo)["t1"]["state"] == "stopped"
    runs = json.loads(swarm(repo, "runs", "--json").stdout)["runs"]
    assert [r["state"] for r in runs] == ["interrupted"]


def test_coordinator_killed_then_resume_reattaches_to_live_actors(
    cluster: raykit.Cluster, tmp_path: Path
) -> None:
    tasks = ["c1", "c2"]
    repo, _remote, ctl = setup_repo(tmp_path, tasks)
    manager = spawn_swarm(
        repo, "run", str(tmp_path / "tasks.toml"), "--ray-address", cluster.address
    )
    runs, logs = repo / ".git" / "swarm" / "runs", {}
    try:
        wait_for("every agent to start", lambda: agents_started(ctl, len(tasks)))
        wait_for("the attempts to be recorded", lambda: all(
            r["attempt"] == 1 for r in status(repo).values()
        ))  # fmt: skip
        logs = {t: next(runs.rglob(f"{t}/attempt-1.log")) for t in tasks}
        # Mirrored while the agents work, the node's secret already redacted.
        wait_for("the logs mirrored", lambda: all("key=" in p.read_text() for p in logs.values()))
    finally:
        manager.send_signal(signal.SIGKILL)
        manager.wait(timeout=30)
    assert all(f"key={REDACTED}\n" in p.read_text() for p in logs.values())
    agents = sorted(ctl.glob("*.agent.*"))
    assert all(psutil.pid_exists(int(p.name.rsplit(".", 1)[1])) for p in agents)
    resumed = spawn_swarm(repo, "resume")
    try:
        wait_for("resume to adopt both actors", lambda: len(events(repo, "agent_adopted")) == 2)
        (ctl / "release").write_text("")
        resumed.wait(timeout=240)
    finally:
        if resumed.poll() is None:
            resumed.kill()
    assert resumed.returncode == 0, output(resumed)
    rows = status(repo)
    assert {t: r["state"] for t, r in rows.items()} == dict.fromkeys(tasks, "done")
    # The same agents finished: one attempt each, no second agent on a branch.
    assert {t: r["attempt"] for t, r in rows.items()} == dict.fromkeys(tasks, 1)
    assert sorted(ctl.glob("*.agent.*")) == agents
    for task in tasks:
        node = git(repo, "show", f"swarm/{task}:{task}.done")
        assert node in {"head", "w0"}
        # The adopted attempt's log goes on where the killed coordinator's copy ended.
        assert logs[task].read_text() == (
            f"agent {task} on {node}\nkey={REDACTED}\nagent {task} done\n"
        ), logs[task].read_text()


# A stand-in for Claude Code (by its file name) whose stream says its usage window is
# rejected for an hour, then stays at work until released.
WINDOW_AGENT = r"""
import json, pathlib, sys, time
ctl = pathlib.Path(sys.argv[sys.argv.index("--ctl") + 1])
reset = int(time.time()) + 3600
def emit(obj):
    print(json.dumps(obj), flush=True)
emit({"type": "system", "subtype": "init", "session_id": "s1"})
emit({"type": "assistant", "message": {"id": "m1"}, "session_id": "s1"})
emit({"type": "rate_limit_event", "session_id": "s1",
      "rate_limit_info": {"status": "rejected", "resetsAt": reset}})
emit({"type": "result", "subtype": "success", "is_error": True, "session_id": "s1",
      "result": f"Claude AI usage limit reached|{reset}"})
(ctl / "limited").write_text("")
while not (ctl / "release").exists():
    time.sleep(0.05)
sys.exit(1)
"""


def test_a_usage_window_in_the_stream_of_an_agent_on_a_node_reaches_the_gate_while_it_runs(
    cluster: raykit.Cluster, tmp_path: Path
) -> None:
    repo, _remote, ctl = setup_repo(tmp_path, [])
    claude = tmp_path / "bin" / "claude"
    claude.parent.mkdir()
    claude.write_text(f"#!{sys.executable}\n{WINDOW_AGENT}")
    claude.chmod(0o755)
    agent = json.dumps([str(claude), "-p", "{prompt}", "--ctl", str(ctl)])
    (tmp_path / "tasks.toml").write_text(
        f"[defaults]\nagent = {agent}\n"
        'executor = "ray"\nray_memory = "64M"\nmax_wait = "1m"\n\n'
        '[[task]]\nid = "u1"\nprompt = "p"\n'
    )
    env = os.environ | {"ANTHROPIC_API_KEY": "sk-ant-api03-coordinator-key-not-used"}
    manager = spawn_swarm(
        repo, "run", str(tmp_path / "tasks.toml"), "--ray-address", cluster.address, env=env
    )
    try:
        wait_for("the limit in the agent's stream", (ctl / "limited").exists)
        held = "usage limit, one task only: unconfirmed"
        wait_for("the gate to hold it", lambda: held in swarm(repo, "status").stdout)
        assert status(repo)["u1"]["state"] == "running"  # its agent still at work on the node
        (ctl / "release").write_text("")
        manager.wait(timeout=240)
    finally:
        if manager.poll() is None:
            manager.kill()
    row = status(repo)["u1"]
    assert row["state"] == "failed", row
    assert "usage limit" in str(row["reason"]), row


REPAIRING_AGENT = r"""
import pathlib, sys
fixing = "checks on your work failed" in sys.argv[1]
pathlib.Path("x.txt").write_text("fixed" if fixing else "first")
print("repairing" if fixing else "first try", flush=True)
"""


def test_setup_and_checks_run_on_the_node_and_a_failure_is_repaired(
    cluster: raykit.Cluster, tmp_path: Path
) -> None:
    repo, remote, _ctl = setup_repo(tmp_path, [])
    script = tmp_path / "repairing.py"
    script.write_text(REPAIRING_AGENT)
    check = [sys.executable, "-c", "import sys; sys.exit(open('x.txt').read() != 'fixed')"]
    setup_ok = [sys.executable, "-c", "open('setup.txt', 'w').write('set up')"]
    setup_bad = [sys.executable, "-c", "import sys; print('setup says no'); sys.exit(3)"]
    (tmp_path / "tasks.toml").write_text(
        f"[defaults]\nagent = {json.dumps([sys.executable, str(script), '{prompt}'])}\n"
        'executor = "ray"\nray_memory = "64M"\n\n'
        f'[[task]]\nid = "r1"\nprompt = "make x"\nrepair = 1\nchecks = [{json.dumps(check)}]\n'
        f'expect_files = ["x.txt"]\nsetup = [{json.dumps(setup_ok)}]\n\n'
        f'[[task]]\nid = "r2"\nprompt = "make x"\nsetup = [{json.dumps(setup_bad)}]\n'
    )
    out = swarm(repo, "run", str(tmp_path / "tasks.toml"), "--ray-address", cluster.address)
    assert out.returncode == 1, out.stdout + out.stderr
    rows = status(repo)
    row = rows["r1"]
    assert (row["state"], row["attempt"]) == ("done", 2)  # failed its check, then repaired
    # Setup ran in each attempt's clone on its node, before the agent.
    assert git(remote, "show", "swarm/r1:setup.txt") == "set up"
    assert (rows["r2"]["state"], rows["r2"]["attempt"]) == ("failed", 0)
    assert str(rows["r2"]["reason"]).startswith("setup `")
    assert (
        "setup says no"
        in next((repo / ".git" / "swarm" / "runs").glob("*/r2/setup.log")).read_text()
    )
    assert not actor_processes(cluster)
    assert git(remote, "show", "swarm/r1:x.txt") == "fixed"
    assert git(repo, "show", "swarm/r1:x.txt") == "fixed"
    # The check's output came back from the node into the run's directory.
    logs = list((repo / ".git" / "swarm" / "runs").glob("*/r1/checks.log"))
    assert len(logs) == 1
    # Both runs of the check, the failing one and the one after the repair.
    assert logs[0].read_text().count("sys.exit(open(") == 2


LIMITED_REPAIR_AGENT = r"""
import pathlib, sys
ctl, prompt = pathlib.Path(sys.argv[1]), sys.argv[2]
n = len(list(ctl.glob("prompt-*")))
(ctl / f"prompt-{n}").write_text(prompt)
if "checks on your work failed" not in prompt:
    pathlib.Path("work.txt").write_text("work")
elif n == 1:  # told to fix it, the first try is refused at once: nothing done
    print("HTTP 429 Too Many Requests", flush=True)
    sys.exit(1)
else:
    pathlib.Path("fixed.txt").write_text("fixed")
"""


def attempt_rows(repo: Path, task: str) -> list[tuple[str, float, float | None, float]]:
    """(outcome, started_at, retry_at, ended_at) of each attempt of *task*, in order."""
    with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as conn:
        return conn.execute(
            "SELECT outcome, started_at, retry_at, ended_at FROM attempts WHERE task_id = ?"
            " ORDER BY number",
            (task,),
        ).fetchall()


def test_a_rate_limited_repair_backs_off_and_resumes_as_a_repair(
    cluster: raykit.Cluster, tmp_path: Path
) -> None:
    # The repair meets a 429 having done nothing: the task backs off on its own (half of
    # rate_limit_backoff at least), and the attempt after it is still told what failed.
    repo, remote, ctl = setup_repo(tmp_path, [])
    script = tmp_path / "limited.py"
    script.write_text(LIMITED_REPAIR_AGENT)
    check = ["test", "-f", "fixed.txt"]
    (tmp_path / "tasks.toml").write_text(
        f"[defaults]\nagent = {json.dumps([sys.executable, str(script), str(ctl), '{prompt}'])}\n"
        'executor = "ray"\nray_memory = "64M"\nrate_limit_backoff = "2s"\nretries = 2\n\n'
        f'[[task]]\nid = "l1"\nprompt = "make it"\nrepair = 1\nchecks = [{json.dumps(check)}]\n'
    )
    out = swarm(repo, "run", str(tmp_path / "tasks.toml"), "--ray-address", cluster.address)
    assert out.returncode == 0, out.stdout + out.stderr
    assert status(repo)["l1"]["state"] == "done"
    rows = attempt_rows(repo, "l1")
    assert [r[0] for r in rows] == ["succeeded", "rate_limited", "succeeded"]
    (_, _, retry_at, ended), (_, next_start, _, _) = rows[1], rows[2]
    assert retry_at is not None
    assert retry_at - ended >= 1.0
    assert next_start >= retry_at
    states = [data["state"] for task, data in events(repo, "state") if task == "l1"]
    assert "rate_limited" in states
    third = (ctl / "prompt-2").read_text()
    assert "You were interrupted" in third
    assert "The checks on your work failed" in third
    assert "test -f fixed.txt" in third
    assert git(remote, "show", "swarm/l1:fixed.txt") == "fixed"


CRASH_AGENT = r"""
import os, pathlib, sys, time
ctl, task = pathlib.Path(sys.argv[1]), os.environ["SWARM_TASK_ID"]
n = len(list(ctl.glob(f"{task}.run.*")))
(ctl / f"{task}.run.{n}").write_text("")
pathlib.Path(f"{task}.txt").write_text(f"attempt {n}")
if task == "w" and n == 0:  # a limit that resets in 25 s
    print(f"Claude AI usage limit reached|{int(time.time()) + 25}", flush=True)
    sys.exit(1)
"""

CRASH_CHECK = r"""
import os, pathlib, sys, time
ctl = pathlib.Path(sys.argv[1])
n = len(list(ctl.glob("check.*")))
(ctl / f"check.{n}").write_text(str(os.getpid()))
while n == 0:  # the first run never ends by itself: its coordinator is killed meanwhile
    time.sleep(0.05)
(ctl / "checked").write_text("")
"""


def test_coordinator_killed_in_a_wait_or_a_check_then_resume_waits_and_checks_again(
    cluster: raykit.Cluster, tmp_path: Path
) -> None:
    repo, _remote, ctl = setup_repo(tmp_path, [])
    agent, check = tmp_path / "crash_agent.py", tmp_path / "crash_check.py"
    agent.write_text(CRASH_AGENT)
    check.write_text(CRASH_CHECK)
    checks = json.dumps([sys.executable, str(check), str(ctl)])
    (tmp_path / "tasks.toml").write_text(
        f"[defaults]\nagent = {json.dumps([sys.executable, str(agent), str(ctl)])}\n"
        'executor = "ray"\nray_memory = "64M"\nkill_grace = "2s"\n\n'
        '[[task]]\nid = "w"\nprompt = "do w"\n\n'
        f'[[task]]\nid = "k"\nprompt = "do k"\nchecks = [{checks}]\n'
    )
    manager = spawn_swarm(
        repo, "run", str(tmp_path / "tasks.toml"), "--ray-address", cluster.address
    )
    try:
        wait_for("w to wait for its window and k's check to start", lambda: (
            (ctl / "check.0").exists() and status(repo)["w"]["state"] == "rate_limited"
        ))  # fmt: skip
    finally:
        manager.send_signal(signal.SIGKILL)
        manager.wait(timeout=30)
    first_check = int((ctl / "check.0").read_text())
    resumed = spawn_swarm(repo, "resume")
    try:
        resumed.wait(timeout=240)
    finally:
        if resumed.poll() is None:
            resumed.kill()
    assert resumed.returncode == 0, output(resumed)
    rows = status(repo)
    assert (rows["w"]["state"], rows["k"]["state"]) == ("done", "done")
    # w waited out the limit it was in (not failed, not started early), then went on.
    (limited, _, retry_at, _), (succeeded, next_start, _, _) = attempt_rows(repo, "w")
    assert (limited, succeeded) == ("rate_limited", "succeeded")
    assert retry_at is not None
    assert next_start >= retry_at
    assert git(repo, "show", "swarm/w:w.txt") == "attempt 1"
    # k's check, cut off by the crash, ran again to its end; the one cut off is gone.
    assert (ctl / "checked").exists()
    assert len(list(ctl.glob("k.run.*"))) == 1  # checked again, not another agent
    assert not psutil.pid_exists(first_check)
    assert not actor_processes(cluster)


# The first run meets a usage window five hours away; later ones do the work.
WINDOW_THEN_WORK_AGENT = r"""
import pathlib, sys, time
ctl = pathlib.Path(sys.argv[1])
n = len(list(ctl.glob("run.*")))
(ctl / f"run.{n}").write_text("")
if n == 0:
    print(f"Claude AI usage limit reached|{int(time.time()) + 5 * 3600}", flush=True)
    sys.exit(1)
pathlib.Path("u.txt").write_text("work")
"""


def test_resume_waits_for_a_window_whose_wait_the_killed_coordinator_never_decided(
    cluster: raykit.Cluster, tmp_path: Path
) -> None:
    # Killed between recording the attempt's end and its wait: the reset is read again from
    # the attempt's log. Without it the task backed off briefly and asked the agent again.
    repo, _remote, ctl = setup_repo(tmp_path, [])
    agent = tmp_path / "window_agent.py"
    agent.write_text(WINDOW_THEN_WORK_AGENT)
    (tmp_path / "tasks.toml").write_text(
        f"[defaults]\nagent = {json.dumps([sys.executable, str(agent), str(ctl)])}\n"
        'executor = "ray"\nray_memory = "64M"\nrate_limit_backoff = "1s"\n'
        'max_wait = "6h"\n\n[[task]]\nid = "u"\nprompt = "do u"\n'
    )
    manager = spawn_swarm(
        repo, "run", str(tmp_path / "tasks.toml"), "--ray-address", cluster.address
    )
    try:
        wait_for(
            "u to wait", lambda: status_if_any(repo).get("u", {}).get("state") == "rate_limited"
        )
    finally:
        manager.send_signal(signal.SIGKILL)
        manager.wait(timeout=30)
    with contextlib.closing(sqlite3.connect(repo / ".git" / "swarm" / "state.db")) as db, db:
        db.execute("UPDATE attempts SET retry_at = NULL, usage_window = 0 WHERE task_id = 'u'")
    resumed = spawn_swarm(repo, "resume")
    try:
        decided = wait_for("the wait to be decided", lambda: attempt_rows(repo, "u")[0][2])
        assert isinstance(decided, float)
        assert decided > time.time() + 4 * 3600, output(resumed)  # the stated reset
        wait_for("u to wait", lambda: status(repo)["u"]["state"] == "rate_limited")
        assert str(status(repo)["u"]["reason"]).startswith("resuming after ")
        assert sorted(p.name for p in ctl.glob("run.*")) == ["run.0"]  # not asked again
        out = swarm(repo, "stop", "u")
        assert out.returncode == 0, out.stdout + out.stderr
        resumed.wait(timeout=120)
    finally:
        if resumed.poll() is None:
            resumed.kill()
    assert status(repo)["u"]["state"] == "stopped", output(resumed)
    with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as db:
        assert db.execute("SELECT usage_window FROM attempts WHERE task_id = 'u'").fetchall() == [
            (1,)
        ]
    assert not actor_processes(cluster)


def test_an_agent_that_ends_as_swarm_stop_comes_is_stopped_not_failed(
    cluster: raykit.Cluster, tmp_path: Path
) -> None:
    # It fails at once when it sees the stop asked (as one killed by it would), before the
    # coordinator, which polls, has stopped it: `swarm stop` stopped it all the same.
    repo, _remote, ctl = setup_repo(tmp_path, [])
    script = tmp_path / "quitter.py"
    script.write_text(
        "import pathlib, sqlite3, sys, time\n"
        "db, ctl = sys.argv[1], pathlib.Path(sys.argv[2])\n"
        "pathlib.Path('s.txt').write_text('partial\\n')\n"
        "(ctl / 'started').write_text('')\n"
        "while True:\n"
        "    with sqlite3.connect(f'file:{db}?mode=ro', uri=True, timeout=30) as conn:\n"
        "        row = conn.execute(\"SELECT stop_requested FROM tasks WHERE task_id = 's'\")\n"
        "        if row.fetchone()[0]:\n"
        "            sys.exit(1)\n"
        "    time.sleep(0.01)\n"
    )
    db = repo / ".git" / "swarm" / "state.db"
    manifest = tmp_path / "stop.toml"
    argv = [sys.executable, str(script), str(db), str(ctl)]
    manifest.write_text(
        f"[defaults]\nagent = {json.dumps(argv)}\n"
        'executor = "ray"\nray_memory = "64M"\nkill_grace = "2s"\n\n'
        '[[task]]\nid = "s"\nprompt = "p"\n'
    )
    manager = spawn_swarm(repo, "run", str(manifest), "--ray-address", cluster.address)
    try:
        wait_for("the agent to start", (ctl / "started").exists)
        out = swarm(repo, "stop", "s")
        assert out.returncode == 0, out.stdout + out.stderr
        manager.wait(timeout=120)
    finally:
        if manager.poll() is None:
            manager.kill()
    row = status(repo)["s"]
    assert (row["state"], row["reason"]) == ("stopped", "stopped"), output(manager)
    assert git(repo, "show", "swarm/s:s.txt") == "partial"
    assert [a[0] for a in attempt_rows(repo, "s")] == ["stopped"]
    assert not actor_processes(cluster)


def test_stop_without_a_manager_stops_the_agents_on_their_nodes(
    cluster: raykit.Cluster, tmp_path: Path
) -> None:
    tasks = ["m1", "m2"]
    repo, remote, ctl = setup_repo(tmp_path, tasks, daemon=True)
    manager = spawn_swarm(
        repo, "run", str(tmp_path / "tasks.toml"), "--ray-address", cluster.address
    )
    try:
        wait_for("every agent to start", lambda: agents_started(ctl, len(tasks)))
        wait_for("the attempts to be recorded", lambda: all(
            r["attempt"] == 1 for r in status(repo).values()
        ))  # fmt: skip
    finally:
        manager.send_signal(signal.SIGKILL)
        manager.wait(timeout=30)
    pids = [int(p.name.rsplit(".", 1)[1]) for p in ctl.glob("*.*.*")]
    assert len(pids) == 2 * len(tasks)
    assert all(psutil.pid_exists(pid) for pid in pids)  # the actors outlive their manager
    out = swarm(repo, "stop")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "stopped: m1, m2"
    alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert alive == []
    wait_for("the actors to exit", lambda: not actor_processes(cluster), timeout=60)
    rows = status(repo)
    assert {t: r["state"] for t, r in rows.items()} == dict.fromkeys(tasks, "stopped")
    for task in tasks:
        assert git(remote, "show", f"swarm/{task}:{task}.txt") == f"work of {task}"
        assert git(repo, "show", f"swarm/{task}:{task}.txt") == f"work of {task}"
        # Its checkpoint is named as every other: the task, the attempt and its agent.
        made = git(repo, "log", "-1", "--format=%s%n%(trailers:only,unfold)", f"swarm/{task}")
        assert made.splitlines() == [
            f"swarm: checkpoint {task} attempt 1 (stopped)",
            f"Swarm-Task: {task}",
            "Swarm-Attempt: 1",
            "Swarm-Agent: command",
        ]


# Writes its work, says so, then ends as argv[2] says.
ENDS_AGENT = r"""
import pathlib, sys, time
ctl, how = pathlib.Path(sys.argv[1]), sys.argv[2]
pathlib.Path("e.txt").write_text("work\n")
(ctl / "ended").write_text("")
if how == "failed":
    sys.exit(1)
if how == "timed_out":
    time.sleep(600)
"""


@pytest.mark.parametrize(
    ("how", "state", "why"),
    [("done", "done", ""), ("failed", "failed", "exited 1"), ("timed_out", "timed_out", "3s")],
)
def test_stop_without_a_manager_records_an_attempt_ended_on_record_as_it_ended(
    cluster: raykit.Cluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
    state: str,
    why: str,
) -> None:
    # Its coordinator recorded the attempt's end and died before the task's (in the diff of
    # its branch, here): the stop recorded it `stopped`, whatever it ended as, and left its
    # actor on the node.
    repo, _remote, ctl = setup_repo(tmp_path, [])
    hung = tmp_path / "hung"
    git_first_on_path(tmp_path, monkeypatch, lambda real: (
        GIT_SUBCOMMAND
        + f"if [ \"$sub\" = diff ] && [ -e {ctl / 'ended'} ] && mkdir {tmp_path / 'taken'}"
        " 2>/dev/null; then\n"
        f"  echo $$ > {hung}; exec sleep 600\nfi\n"
        f'exec {real} "$@"\n'
    ))  # fmt: skip
    script = tmp_path / "ends.py"
    script.write_text(ENDS_AGENT)
    manifest = tmp_path / "ends.toml"
    argv = [sys.executable, str(script), str(ctl), how]
    manifest.write_text(
        f"[defaults]\nagent = {json.dumps(argv)}\n"
        'executor = "ray"\nray_memory = "64M"\nkill_grace = "1s"\ntimeout = "3s"\n\n'
        '[[task]]\nid = "e"\nprompt = "p"\n'
    )
    manager = spawn_swarm(repo, "run", str(manifest), "--ray-address", cluster.address)
    try:
        wait_for("the coordinator in its diff", lambda: hung.exists() and hung.read_text())
    finally:
        manager.send_signal(signal.SIGKILL)
        manager.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError, ValueError, FileNotFoundError):
            os.kill(int(hung.read_text()), signal.SIGKILL)
    assert [a[0] for a in attempt_rows(repo, "e")] == [{"done": "succeeded"}.get(how, how)]

    out = swarm(repo, "stop")

    assert out.returncode == 0, out.stdout + out.stderr
    row = status(repo)["e"]
    assert row["state"] == state, row
    assert why in str(row["reason"]) if why else row["reason"] == "", row
    assert git(repo, "show", "swarm/e:e.txt") == "work"
    wait_for("the actor to exit", lambda: not actor_processes(cluster), timeout=60)


def test_max_disk_applies_per_node_and_tasks_on_one_node_sum_up(
    cluster: raykit.Cluster, tmp_path: Path
) -> None:
    tasks = ["d1", "d2", "d3", "d4"]
    repo, remote, ctl = setup_repo(tmp_path, tasks)
    # A checkout of ~1 MiB: one clone fits in 1.5M on a node, two do not.
    (repo / "big.bin").write_bytes(os.urandom(2**20))
    git(repo, "add", "big.bin")
    git(repo, "commit", "-qm", "big")
    git(repo, "push", "-q", "origin", "main")
    manager = spawn_swarm(
        repo,
        "run", str(tmp_path / "tasks.toml"), "--ray-address", cluster.address,
        "--max-disk", "1.5M",
    )  # fmt: skip
    try:
        # Four slots: every actor is placed at once, two per node; one clone per node fits.
        def waiting() -> list[str]:
            rows = status_if_any(repo).values()
            prefix = "waiting for disk on node "
            return [
                str(r["reason"])[len(prefix) :].split(":")[0]
                for r in rows
                if r["state"] == "pending" and str(r["reason"]).startswith(prefix)
            ]

        wait_for("a task to wait for disk on each node", lambda: len(waiting()) == 2)
        assert sorted(waiting()) == ["head", "w0"]
        started = wait_for("one agent per node", lambda: agents_started(ctl, 2))
        assert sorted(p.read_text() for p in started) == ["head", "w0"]  # type: ignore[attr-defined]

        # The running clones are measured on their nodes while their agents work.
        def measured() -> list[object]:
            return [r["disk_actual"] for r in status(repo).values() if r["state"] == "running"]

        wait_for("the running clones to be measured", lambda: len(measured()) == 2 and all(
            measured()
        ))  # fmt: skip
        (ctl / "release").write_text("")
        manager.wait(timeout=400)
    finally:
        if manager.poll() is None:
            manager.kill()
    assert manager.returncode == 0, output(manager)
    assert "waiting for disk on node " in output(manager)
    rows = status(repo)
    assert {t: r["state"] for t, r in rows.items()} == dict.fromkeys(tasks, "done")
    table = swarm(repo, "status").stdout
    for task in tasks:
        # `swarm status` shows what each clone used on its node as its attempt ended.
        cells = next(line.split() for line in table.splitlines() if line.startswith(f"{task} "))
        column = table.splitlines()[1].split().index("disk")
        assert cells[column] == format_size(int(rows[task]["disk_actual"])), table  # type: ignore[call-overload]
        # What each clone used on its node as its attempt ended: the checkout and more.
        assert 2**20 < int(rows[task]["disk_actual"]) < 3 * 2**20  # type: ignore[call-overload]
        assert git(remote, "show", f"swarm/{task}:{task}.done") == rows[task]["node"]
    assert table.splitlines()[-1] == "disk: 0B used (0B apparent) by 0 worktrees"  # here
    assert not actor_processes(cluster)


def test_max_disk_counts_what_a_node_holds_besides_this_run_s_clones(
    cluster: raykit.Cluster, tmp_path: Path
) -> None:
    repo, remote, ctl = setup_repo(tmp_path, ["f1"])
    (ctl / "release").write_text("")
    # What lost attempts of another run left on every node: 2 MiB each.
    leftovers = [node.work_dir / "runs" / "lost-run" for node in cluster.nodes]
    try:
        for where in leftovers:
            (where / "t" / "work").mkdir(parents=True)
            (where / "t" / "work" / "blob").write_bytes(os.urandom(2 * 2**20))
        out = swarm(
            repo,
            "run", str(tmp_path / "tasks.toml"), "--ray-address", cluster.address,
            "--max-disk", "1.5M",
        )  # fmt: skip
    finally:
        for where in leftovers:
            shutil.rmtree(where, ignore_errors=True)
    assert out.returncode == 1, out.stdout + out.stderr
    row = status(repo)["f1"]
    assert (row["state"], row["attempt"]) == ("failed", 0)
    reason = str(row["reason"])
    assert reason.startswith("max_disk 1.5M: a new clone needs ~"), reason
    assert "under $SWARM_NODE_DIR/runs on node " in reason
    assert reason.endswith(
        "(clones of lost attempts or earlier runs?); remove them or raise max_disk"
    )
    # Nothing was cloned for it, and no agent ran.
    assert not list(ctl.glob("*.agent.*"))
    assert git(remote, "rev-parse", "swarm/f1") == git(repo, "rev-parse", "main")
    assert not actor_processes(cluster)


SANDBOXED_AGENT = r"""
import json, os, pathlib, subprocess, sys, tempfile
ctl, outside = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
task = os.environ["SWARM_TASK_ID"]
node_dir = pathlib.Path(os.environ["SWARM_NODE_DIR"])
mirror = next((node_dir / "mirrors").glob("*.git"))
def tried(path, text="x"):
    try:
        pathlib.Path(path).write_text(text)
    except OSError as exc:
        return type(exc).__name__ + ": " + (exc.strerror or "")
    return "written"
pathlib.Path(f"{task}.txt").write_text(f"sandboxed work of {task}\n")
subprocess.run(["git", "add", f"{task}.txt"], check=True)
subprocess.run(["git", "commit", "-q", "-m", f"{task} by the agent"], check=True)
report = {
    "mirror": tried(mirror / "escaped"),
    "node_dir": tried(node_dir / "escaped"),
    "outside": tried(outside),
    "git_config": tried(".git/config", "[core]\n\tfsmonitor = touch /tmp/pwned\n"),
    "tmp": tried(pathlib.Path(tempfile.gettempdir()) / "scratch"),
    "note": subprocess.run([sys.executable, "-m", "worktree_swarm.cli", "note", "fact"]).returncode,
}
findings = pathlib.Path(os.environ["SWARM_CONTEXT"]).read_text().splitlines()
report["findings"] = [findings[0], findings[-1]]
(ctl / f"{task}.report").write_text(json.dumps(report))
"""


def test_a_sandboxed_agent_writes_only_its_clone_on_its_node(
    cluster: raykit.Cluster, tmp_path: Path
) -> None:
    repo, remote, ctl = setup_repo(tmp_path, [])
    script = tmp_path / "sandboxed.py"
    script.write_text(SANDBOXED_AGENT)
    outside = tmp_path / "outside.txt"
    argv = [sys.executable, str(script), str(ctl), str(outside)]
    (tmp_path / "tasks.toml").write_text(
        f'[defaults]\nagent = {json.dumps(argv)}\nexecutor = "ray"\nray_memory = "64M"\n'
        f"sandbox = true\nsandbox_writable = [{json.dumps(str(ctl))}]\n\n"
        '[[task]]\nid = "x1"\nprompt = "work"\n\n[[task]]\nid = "x2"\nprompt = "work"\n'
    )
    out = swarm(repo, "run", str(tmp_path / "tasks.toml"), "--ray-address", cluster.address)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = status(repo)
    assert {t: r["state"] for t, r in rows.items()} == {"x1": "done", "x2": "done"}
    (run_id,) = (p.name for p in (repo / ".git" / "swarm" / "runs").iterdir())
    for task in ("x1", "x2"):
        report = json.loads((ctl / f"{task}.report").read_text())
        # Its clone, its temp dir and `sandbox_writable` take writes; nothing else does.
        assert report["tmp"] == "written"
        # Its findings file (on the node) has its run's header from the start, and a note.
        assert report["note"] == 0
        assert report["findings"][0] == f"# Findings of run {run_id}"
        assert report["findings"][1].endswith(f" [{task}] fact")
        for where in ("outside", "git_config"):
            assert report[where] == "OSError: Read-only file system", (where, report)
        # The nodes' directories lie in /tmp here, of which the box has its own: written
        # there, never on the node (below).
        assert all(node.work_dir.is_relative_to("/tmp") for node in cluster.nodes)
        assert report["mirror"] == report["node_dir"] == "written"
        # The agent's own commit in its clone is pushed and fetched back.
        for where in (remote, repo):
            assert git(where, "show", f"swarm/{task}:{task}.txt") == f"sandboxed work of {task}"
        assert f"{task} by the agent" in git(repo, "log", "--format=%s", f"swarm/{task}")
    assert not outside.exists()
    for node in cluster.nodes:
        assert not (node.work_dir / "escaped").exists()
        assert not list((node.work_dir / "mirrors").glob("*.git/escaped"))
    assert not actor_processes(cluster)


PLANTING_AGENT = r"""
import os, pathlib, subprocess, sys
decoy = sys.argv[1]
task = os.environ["SWARM_TASK_ID"]
pathlib.Path(f"{task}.txt").write_text(f"work of {task}\n")
# Repository files are code: a push to anywhere else, and a hook that would run in swarm's git.
subprocess.run(["git", "config", f"url.{decoy}.pushInsteadOf", os.environ["REMOTE_HINT"]],
               check=True)
hook = pathlib.Path(".git/hooks/pre-push")
hook.write_text("#!/bin/sh\ntouch hook-ran\n")
hook.chmod(0o755)
"""


def test_git_files_an_agent_plants_in_its_clone_are_put_back_before_the_push_and_fail_it(
    cluster: raykit.Cluster, tmp_path: Path
) -> None:
    repo, remote, _ctl = setup_repo(tmp_path, [])
    decoy = tmp_path / "decoy.git"
    subprocess.run(["git", "init", "-q", "--bare", str(decoy)], check=True)
    script = tmp_path / "planting.py"
    script.write_text(PLANTING_AGENT)
    argv = [sys.executable, str(script), str(decoy)]
    (tmp_path / "tasks.toml").write_text(
        f'[defaults]\nagent = {json.dumps(argv)}\nexecutor = "ray"\nray_memory = "64M"\n'
        f"env = {{REMOTE_HINT = {json.dumps(str(remote))}}}\n\n"
        '[[task]]\nid = "p1"\nprompt = "work"\n'
    )
    out = swarm(repo, "run", str(tmp_path / "tasks.toml"), "--ray-address", cluster.address)
    assert out.returncode == 1, out.stdout + out.stderr
    row = status(repo)["p1"]
    assert row["state"] == "failed", row
    reason = str(row["reason"])
    assert "git's own files config" in reason
    assert "hooks/pre-push" in reason
    assert "its clone on node" in reason
    assert "restored" in reason
    # The checkpoint went to the run's remote, not where the planted config pointed, and the
    # planted hook never ran with swarm's push.
    assert git(remote, "show", "swarm/p1:p1.txt") == "work of p1"
    assert git(repo, "show", "swarm/p1:p1.txt") == "work of p1"
    assert git(decoy, "for-each-ref") == ""
    assert "hook-ran" not in git(remote, "ls-tree", "-r", "--name-only", "swarm/p1")
    found = events(repo, "outside_write")
    assert [(task, data["suspects"], data["restored"]) for task, data in found] == [
        ("p1", ["p1"], True)
    ]
    assert not actor_processes(cluster)


# Switches its clone to the remote's branch `other`, then writes its work.
SWITCHING_AGENT = r"""
import os, pathlib, subprocess
subprocess.run(["git", "checkout", "-q", "other"], check=True)
task = os.environ["SWARM_TASK_ID"]
pathlib.Path(f"{task}.txt").write_text(f"work of {task}\n")
"""


def test_a_clone_its_agent_switched_to_another_branch_pushes_its_work_on_the_task_branch(
    cluster: raykit.Cluster, tmp_path: Path
) -> None:
    # The node committed on whatever branch its agent left the clone on and force-pushed that
    # as the task's branch: `other`'s history became the task's work.
    repo, remote, _ctl = setup_repo(tmp_path, [])
    base = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "-b", "other")
    (repo / "other.txt").write_text("not the task's\n")
    git(repo, "add", "other.txt")
    git(repo, "commit", "-q", "-m", "other history")
    git(repo, "push", "-q", "origin", "other")
    git(repo, "checkout", "-q", "main")
    script = tmp_path / "switching.py"
    script.write_text(SWITCHING_AGENT)
    (tmp_path / "tasks.toml").write_text(
        f'[defaults]\nagent = {json.dumps([sys.executable, str(script)])}\nexecutor = "ray"\n'
        'ray_memory = "64M"\n\n[[task]]\nid = "p1"\nprompt = "work"\n'
    )
    out = swarm(repo, "run", str(tmp_path / "tasks.toml"), "--ray-address", cluster.address)
    assert out.returncode == 1, out.stdout + out.stderr
    for where in (remote, repo):
        assert git(where, "rev-parse", "swarm/p1^") == base  # on top of the task's branch
        assert git(where, "show", "swarm/p1:p1.txt") == "work of p1"
        assert "other history" not in git(where, "log", "--format=%s", "swarm/p1")
    row = status(repo)["p1"]
    assert row["state"] == "failed", row
    reason = str(row["reason"])  # (`checkout` wrote its tracking into the clone's config too)
    assert "its agent switched its worktree from swarm/p1 to other (its clone on node" in reason
    assert reason.endswith("; restored"), reason
    found = events(repo, "outside_write")
    assert [(task, data["suspects"], data["restored"]) for task, data in found] == [
        ("p1", ["p1"], True)
    ]
    assert not actor_processes(cluster)


def test_work_left_in_a_submodule_of_the_clone_fails_the_task(
    cluster: raykit.Cluster, tmp_path: Path
) -> None:
    # The node's clone has the submodule `lib` as an empty directory, as a local worktree
    # does: files written there are seen by no `git status` and go with the clone.
    repo = make_repo(tmp_path / "repo")
    add_submodule(repo, tmp_path / "lib-origin")
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(remote)], check=True)
    git(repo, "remote", "add", "origin", str(remote))
    script = tmp_path / "agent.py"
    script.write_text(
        "import pathlib, sys\n"
        "pathlib.Path('own.txt').write_text('own work\\n')\n"
        "pathlib.Path('lib/NOTES.md').write_text(sys.argv[1] + '\\n')\n"
    )
    argv = {  # u writes nothing into lib
        "t": [sys.executable, str(script), "notes"],
        "u": [sys.executable, "-c", "import pathlib; pathlib.Path('own.txt').write_text('u')"],
    }
    (tmp_path / "tasks.toml").write_text(
        '[defaults]\nexecutor = "ray"\nray_memory = "64M"\n\n'
        + "".join(
            f'[[task]]\nid = "{t}"\nprompt = "p"\nagent = {json.dumps(a)}\n'
            for t, a in argv.items()
        )
    )
    out = swarm(repo, "run", str(tmp_path / "tasks.toml"), "--ray-address", cluster.address)
    assert out.returncode == 1, out.stdout + out.stderr
    rows = status(repo)
    assert rows["t"]["state"] == "failed", rows["t"]
    assert "left work in submodule lib, which no commit of swarm/t can hold" in str(
        rows["t"]["reason"]
    )
    assert rows["u"]["state"] == "done", rows["u"]
    assert git(repo, "show", "swarm/t:own.txt") == "own work"  # the rest is committed
    assert not actor_processes(cluster)


def test_a_repository_an_agent_makes_in_its_clone_fails_the_task_and_keeps_the_rest(
    cluster: raykit.Cluster, tmp_path: Path
) -> None:
    repo, _, _ = setup_repo(tmp_path, [])
    # Named claude, it is read as Claude Code: what it says it cost counts though its attempt
    # fails after it ended (the checkpoint refuses the nested repository).
    script = tmp_path / "bin" / "claude"
    script.parent.mkdir()
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, pathlib, subprocess\n"
        "pathlib.Path('work.txt').write_text('own work\\n')\n"
        "pathlib.Path('sub').mkdir()\n"
        "pathlib.Path('sub/inner.txt').write_text('inner\\n')\n"
        "git = ['git', '-C', 'sub', '-c', 'user.name=a', '-c', 'user.email=a@b']\n"
        "subprocess.run([*git, 'init', '-q'], check=True)\n"
        "subprocess.run([*git, 'add', '-A'], check=True)\n"
        "subprocess.run([*git, 'commit', '-qm', 'inner'], check=True)\n"
        "print(json.dumps({'type': 'result', 'subtype': 'success', 'is_error': False,\n"
        "    'session_id': 's1', 'result': 'done', 'total_cost_usd': 1.25,\n"
        "    'usage': {'input_tokens': 300, 'output_tokens': 40}}), flush=True)\n"
    )
    script.chmod(0o755)
    (tmp_path / "tasks.toml").write_text(
        '[defaults]\nexecutor = "ray"\nray_memory = "64M"\n\n'
        f'[[task]]\nid = "e"\nprompt = "p"\nagent = {json.dumps([str(script), "-p", "{prompt}"])}\n'
    )
    env = os.environ | {"ANTHROPIC_API_KEY": "sk-ant-api03-coordinator-key-not-used"}
    manifest = str(tmp_path / "tasks.toml")
    manager = spawn_swarm(repo, "run", manifest, "--ray-address", cluster.address, env=env)
    assert manager.wait(timeout=300) == 1, output(manager)
    row = status(repo)["e"]
    assert row["state"] == "failed", row
    assert str(row["reason"]).startswith("made a git repository inside its worktree (sub)")
    assert git(repo, "show", "swarm/e:work.txt") == "own work"  # as a local worktree keeps it
    with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as conn:
        open_attempts = conn.execute("SELECT count(*) FROM attempts WHERE ended_at IS NULL")
        assert open_attempts.fetchone()[0] == 0
        used = conn.execute("SELECT cost_usd, tokens_in, tokens_out FROM attempts").fetchall()
        assert used == [(1.25, 300, 40)]
    assert row["cost_usd"] == 1.25
    assert not actor_processes(cluster)


# Named claude, read as Claude Code: notes its start in the SQL trace (as a line no
# connection wrote) and its pid, does its work, and says what it cost.
PAYING_AGENT = """#!{python}
import json, os, pathlib
with open({log!r}, "a") as log:
    log.write(json.dumps([-1, "the agent started"]) + "\\n")
with open({launches!r}, "a") as launches:
    launches.write(f"{{os.getpid()}}\\n")
pathlib.Path("work.txt").write_text("own work\\n")
print(json.dumps({{"type": "result", "subtype": "success", "is_error": False, "result": "ok",
    "session_id": "s1", "total_cost_usd": 1.25,
    "usage": {{"input_tokens": 300, "output_tokens": 40}}}}), flush=True)
"""


def paying_run(tmp_path: Path, log: Path) -> tuple[Path, str, Path]:
    """A repository, a manifest of one Ray task whose agent is PAYING_AGENT, its launches."""
    repo, _, _ = setup_repo(tmp_path, [])
    launches = tmp_path / "launches"
    script = tmp_path / "bin" / "claude"
    script.parent.mkdir()
    text = PAYING_AGENT.format(python=sys.executable, log=str(log), launches=str(launches))
    script.write_text(text)
    script.chmod(0o755)
    (tmp_path / "tasks.toml").write_text(
        '[defaults]\nexecutor = "ray"\nray_memory = "64M"\n\n'
        f'[[task]]\nid = "e"\nprompt = "p"\nagent = {json.dumps([str(script), "-p", "{prompt}"])}\n'
    )
    return repo, str(tmp_path / "tasks.toml"), launches


KEY = {"ANTHROPIC_API_KEY": "sk-ant-api03-coordinator-key-not-used"}


def test_a_ray_attempt_is_recorded_in_one_transaction_before_its_agent_one_after_one_at_its_end(
    cluster: raykit.Cluster, tmp_path: Path
) -> None:
    # Before its agent: the task running and the launch's intent (a resumed coordinator finds
    # the actor by its name), two commits; after: the attempt, the task's count and the
    # event, three; at its end: the attempt's end and the task's totals, two.
    log = tmp_path / "sql.jsonl"
    repo, manifest, _ = paying_run(tmp_path, log)
    address = cluster.address
    out = _traced_swarm(repo, log, "run", manifest, "--ray-address", address, env=KEY, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    ended = _committed(log)
    intent, _ = launch_transactions(ended)
    assert "launching_agent = 'claude', node = NULL" in intent[0]
    end = [t for t in ended if any(s.startswith("UPDATE attempts SET exit_code") for s in t)]
    assert [t for t in ended if any("cost_usd = " in s for s in t)] == end
    assert len(end) == 1, ended
    assert end[0][-1].startswith("UPDATE tasks SET cost_usd = 1.25"), end
    row = status(repo)["e"]
    assert (row["state"], row["cost_usd"], row["tokens_in"]) == ("done", 1.25, 300)
    assert not actor_processes(cluster)


def test_a_ray_launch_its_killed_coordinator_did_not_record_is_recorded_by_resume_at_once(
    cluster: raykit.Cluster, tmp_path: Path
) -> None:
    # Killed as it records the attempt its agent started: the resumed coordinator finds the
    # actor and records the attempt with its task's count, one commit (was two).
    log = tmp_path / "sql.jsonl"
    repo, manifest, launches = paying_run(tmp_path, log)
    kill = KEY | {"SQL_KILL_AT": "INSERT INTO attempts"}
    address = cluster.address
    killed = _traced_swarm(
        repo, log, "run", manifest, "--ray-address", address, env=kill, timeout=300
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as conn:
        assert conn.execute("SELECT count(*) FROM attempts").fetchone() == (0,)
        assert conn.execute("SELECT launching, launching_agent FROM tasks").fetchone() == (
            1,
            "claude",
        )
    resumed_log = tmp_path / "resumed.jsonl"
    resumed_from = time.time()
    out = _traced_swarm(repo, resumed_log, "resume", env=KEY, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    ended = _committed(resumed_log)
    launch = [t for t in ended if any(s.startswith("INSERT INTO attempts") for s in t)]
    assert len(launch) == 1, ended
    assert [t for t in ended if any("launching = NULL" in s for s in t)] == launch
    assert "attempts = 1, launching = NULL" in launch[0][1]
    assert len(launches.read_text().split()) == 1  # its agent ran once
    with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as conn:
        ((started_at,),) = conn.execute("SELECT started_at FROM attempts")
    assert started_at < resumed_from  # its start as its node saw it, not the resume's
    row = status(repo)["e"]
    assert (row["state"], row["attempt"], row["cost_usd"]) == ("done", 1, 1.25)
    assert not actor_processes(cluster)


def test_a_ray_launch_its_killed_coordinator_did_not_record_is_recorded_by_stop(
    cluster: raykit.Cluster, tmp_path: Path
) -> None:
    # Killed as it records the attempt its agent started (which then ended by itself): `swarm
    # stop` stopped its actor and recorded no attempt, its task `stopped` with nothing of
    # what its agent used, as a local stop records such a launch.
    log = tmp_path / "sql.jsonl"
    repo, manifest, launches = paying_run(tmp_path, log)
    kill = KEY | {"SQL_KILL_AT": "INSERT INTO attempts"}
    address = cluster.address
    killed = _traced_swarm(
        repo, log, "run", manifest, "--ray-address", address, env=kill, timeout=300
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    wait_for("its agent", lambda: launches.exists() and launches.read_text())

    out = swarm(repo, "stop")

    assert out.returncode == 0, out.stdout + out.stderr
    with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as conn:
        used = conn.execute("SELECT number, outcome, cost_usd, agent FROM attempts").fetchall()
        launching = conn.execute("SELECT launching FROM tasks").fetchall()
    assert used == [(1, "succeeded", 1.25, "claude")]
    assert launching == [(None,)]
    row = status(repo)["e"]
    assert (row["state"], row["attempt"], row["cost_usd"]) == ("done", 1, 1.25), row
    assert git(repo, "show", "swarm/e:work.txt") == "own work"
    assert len(launches.read_text().split()) == 1  # its agent ran once
    wait_for("the actor to exit", lambda: not actor_processes(cluster), timeout=60)


# Named claude: does its work, waits for a release file, then says what it cost and ends.
RELEASED_PAYER = """#!{python}
import json, os, pathlib, time
ctl = pathlib.Path({ctl!r})
pathlib.Path("work.txt").write_text("own work\\n")
(ctl / f"payer.{{os.getpid()}}").write_text("")
while not (ctl / "release").exists():
    time.sleep(0.05)
print(json.dumps({{"type": "result", "subtype": "success", "is_error": False, "result": "ok",
    "session_id": "s1", "total_cost_usd": 1.25,
    "usage": {{"input_tokens": 300, "output_tokens": 40}}}}), flush=True)
"""


def test_stop_without_a_manager_records_an_agent_that_ended_on_its_node_with_its_cost(
    cluster: raykit.Cluster, tmp_path: Path
) -> None:
    # Its coordinator killed, the agent finished on its node: `swarm stop` recorded its
    # attempt `stopped` with a reason only, and its task `stopped`, the cost its agent
    # reported counted nowhere (nor against `max_cost_usd`); then, its end as the stop's time.
    repo, remote, ctl = setup_repo(tmp_path, [])
    script = tmp_path / "bin" / "claude"
    script.parent.mkdir()
    script.write_text(RELEASED_PAYER.format(python=sys.executable, ctl=str(ctl)))
    script.chmod(0o755)
    manifest = tmp_path / "payer.toml"
    manifest.write_text(
        '[defaults]\nexecutor = "ray"\nray_memory = "64M"\nkill_grace = "2s"\n\n'
        f'[[task]]\nid = "e"\nprompt = "p"\nagent = {json.dumps([str(script), "-p", "{prompt}"])}\n'
    )
    env = os.environ | KEY
    manager = spawn_swarm(repo, "run", str(manifest), "--ray-address", cluster.address, env=env)
    try:
        started = wait_for("the agent", lambda: sorted(ctl.glob("payer.*")))
        wait_for("its attempt", lambda: status_if_any(repo).get("e", {}).get("attempt") == 1)
    finally:
        manager.send_signal(signal.SIGKILL)
        manager.wait(timeout=30)
    agent = psutil.Process(int(cast("list[Path]", started)[0].name.rsplit(".", 1)[1]))
    shim = agent.parent()  # it records when its agent ended, then exits
    assert shim is not None
    (ctl / "release").touch()
    wait_for("the agent to end by itself", lambda: gone(agent) and gone(shim))
    stopped_from = time.time()

    out = swarm(repo, "stop")

    assert out.returncode == 0, out.stdout + out.stderr
    row = status(repo)["e"]
    assert (row["state"], row["cost_usd"], row["tokens_in"], row["tokens_out"]) == (
        "done", 1.25, 300, 40,
    ), row  # fmt: skip
    with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as conn:
        used = conn.execute("SELECT outcome, cost_usd, tokens_in FROM attempts").fetchall()
        ((started_at, ended_at),) = conn.execute("SELECT started_at, ended_at FROM attempts")
    assert used == [("succeeded", 1.25, 300)]  # its own, as the budget counts it
    assert started_at < ended_at < stopped_from  # as it ended, not as the stop came
    assert git(repo, "show", "swarm/e:work.txt") == "own work"
    made = git(remote, "log", "-1", "--format=%s", "swarm/e")
    assert made == "swarm: checkpoint e attempt 1 (success)"
    wait_for("the actor to exit", lambda: not actor_processes(cluster), timeout=60)
    # Its tip recorded as a local stop records it (none was): landed by you and its branch
    # deleted, `swarm merge` finds its work in main, not a task with nothing to merge.
    with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as conn:
        ((tip,),) = conn.execute("SELECT tip_commit FROM tasks WHERE task_id = 'e'")
    assert tip == git(repo, "rev-parse", "swarm/e")
    git(repo, "merge", "-q", "--ff-only", "swarm/e")
    git(repo, "branch", "-D", "swarm/e")
    merged = swarm(repo, "merge")
    assert merged.returncode == 0, merged.stdout + merged.stderr
    assert status(repo)["e"]["merge_result"] == "merged"


# As COMMITTING_AGENT, of the node's own value (or, given a second argument, the one in a
# file); then it says so and works on until it is stopped.
WORKING_ON_AGENT = r"""
import os, pathlib, subprocess, sys, time
ctl = pathlib.Path(sys.argv[1])
value = (ctl / "value").read_text() if len(sys.argv) > 2 else os.environ["NODE_DEPLOY_TOKEN"]
def git(*args): subprocess.run(["git", *args], check=True)
pathlib.Path("config.txt").write_text(f"token = {value}\n")
git("add", "config.txt")
git("commit", "-q", "-m", "configure the service")
git("rm", "-q", "config.txt")
git("commit", "-q", "-m", "drop the config")
pathlib.Path("work.txt").write_text("work\n")
(ctl / "committed").write_text("")
while not (ctl / "release").exists():
    time.sleep(0.05)
"""


@pytest.mark.parametrize("whose", ["node", "shell"])
def test_stop_without_a_manager_records_a_secret_its_agent_committed_on_its_node(
    cluster: raykit.Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, whose: str
) -> None:
    # Its coordinator killed while its agent works on, after committing a secret's value: a
    # value only the node holds (NODE_DEPLOY_TOKEN), or one of the stopping shell's
    # environment. `swarm stop` recorded neither, and `swarm merge` took the branch.
    # The value in its file, as the second argument (which would be "daemon") says.
    repo, _remote, ctl = setup_repo(tmp_path, ["n1"], daemon=whose == "shell")
    (tmp_path / "agent.py").write_text(WORKING_ON_AGENT)
    (ctl / "value").write_text(SERVICE_SECRET)
    secret, variable = {
        "node": (NODE_SECRET, "NODE_DEPLOY_TOKEN"), "shell": (SERVICE_SECRET, "SERVICE_TOKEN"),
    }[whose]  # fmt: skip
    assert "NODE_DEPLOY_TOKEN" not in os.environ  # the coordinator's: never held
    manager = spawn_swarm(
        repo, "run", str(tmp_path / "tasks.toml"), "--ray-address", cluster.address
    )
    try:
        wait_for("the agent's commits", (ctl / "committed").exists)
        wait_for("its attempt", lambda: status_if_any(repo).get("n1", {}).get("attempt") == 1)
    finally:
        manager.send_signal(signal.SIGKILL)
        manager.wait(timeout=30)
    if whose == "shell":  # the stopping shell's: the dead coordinator's had it not
        monkeypatch.setenv("SERVICE_TOKEN", SERVICE_SECRET)

    out = swarm(repo, "stop")

    assert out.returncode == 0, out.stdout + out.stderr
    monkeypatch.delenv("SERVICE_TOKEN", raising=False)  # the next shell: none of the values
    row = status(repo)["n1"]
    assert row["state"] == "stopped", row
    assert secret in git(repo, "log", "-p", "swarm/n1")  # the agent's own act
    shown = str(row["secret_commit"])
    assert shown.startswith("config.txt (commit "), shown
    assert f"holds the value of {variable}" in shown, shown
    merged = swarm(repo, "merge", "n1")
    assert merged.returncode == 1, merged.stdout + merged.stderr
    assert "not merging swarm/n1: config.txt (commit " in merged.stdout, merged.stdout
    assert secret not in git(repo, "log", "-p", "HEAD")
    for text in (out.stdout, out.stderr, merged.stdout, merged.stderr):
        assert secret not in text, text[:2000]
    wait_for("the actor to exit", lambda: not actor_processes(cluster), timeout=60)


def test_a_push_the_remote_refuses_fails_the_task_and_leaves_no_actor(
    cluster: raykit.Cluster, tmp_path: Path
) -> None:
    repo, remote, _ = setup_repo(tmp_path, [])
    # From the agent's start on, the remote is gone (moved away, as a remote taken offline):
    # the node's checkpoint push fails. (A refusing hook of a remote on a path no longer runs:
    # swarm's push runs none of the receiving repository's programs.)
    code = "import os, pathlib, sys; pathlib.Path('w.txt').write_text('w')\n"
    code += "os.rename(sys.argv[1], sys.argv[2])"
    writer = [sys.executable, "-c", code, str(remote), str(tmp_path / "remote-gone.git")]
    (tmp_path / "tasks.toml").write_text(
        '[defaults]\nexecutor = "ray"\nray_memory = "64M"\n\n'
        f'[[task]]\nid = "p"\nprompt = "p"\nagent = {json.dumps(writer)}\n'
    )
    out = swarm(repo, "run", str(tmp_path / "tasks.toml"), "--ray-address", cluster.address)
    assert out.returncode == 1, out.stdout + out.stderr
    row = status(repo)["p"]
    assert row["state"] == "failed", row
    reason = str(row["reason"])
    assert "does not appear to be a git repository" in reason, reason  # git's own words
    assert "internal error" not in reason
    with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as conn:
        open_attempts = conn.execute("SELECT count(*) FROM attempts WHERE ended_at IS NULL")
        assert open_attempts.fetchone()[0] == 0
    assert not actor_processes(cluster)  # its slot is free for the next run


def test_running_checkpoints_a_node_cannot_push_are_told_once_and_the_task_goes_on(
    cluster: raykit.Cluster, tmp_path: Path
) -> None:
    repo, remote, _ = setup_repo(tmp_path, [])
    gone, back = tmp_path / "remote-gone.git", tmp_path / "back"
    # The agent writes its work and takes the remote away, then waits until it is back.
    code = (
        "import os, pathlib, sys, time\n"
        "pathlib.Path('w.txt').write_text('w')\n"
        "os.rename(sys.argv[1], sys.argv[2])\n"
        "while not pathlib.Path(sys.argv[3]).exists():\n"
        "    time.sleep(0.05)\n"
    )
    agent = [sys.executable, "-c", code, str(remote), str(gone), str(back)]
    (tmp_path / "tasks.toml").write_text(
        '[defaults]\nexecutor = "ray"\nray_memory = "64M"\ncheckpoint_interval = "1s"\n\n'
        f'[[task]]\nid = "p"\nprompt = "p"\nagent = {json.dumps(agent)}\n'
    )
    manager = spawn_swarm(
        repo, "run", str(tmp_path / "tasks.toml"), "--ray-address", cluster.address
    )
    state = repo / ".git" / "swarm" / "state.db"
    try:
        told = wait_for(
            "the failed push",
            lambda: state.exists() and events(repo, "checkpoint_push_failed"),
        )
        gone.rename(remote)
        back.touch()
        assert manager.wait(timeout=300) == 0, output(manager)
    finally:
        if manager.poll() is None:
            manager.kill()
    assert status(repo)["p"]["state"] == "done"
    # One streak (however many pushes failed in it): told once, with git's own words.
    assert told == events(repo, "checkpoint_push_failed")
    [(task, data)] = told
    assert task == "p"
    assert data["node"] in {"head", "w0"}
    assert "does not appear to be a git repository" in str(data["reason"])
    assert f"p: node {data['node']} could not push a running checkpoint (" in output(manager)
    assert git(repo, "show", "swarm/p:w.txt") == "w"


def test_sandbox_is_refused_when_a_node_cannot_sandbox(
    cluster: raykit.Cluster, tmp_path: Path
) -> None:
    repo, _remote, _ctl = setup_repo(tmp_path, ["q1"])
    # A third node whose PATH has Python and git but no bubblewrap.
    bare = tmp_path / "no-bwrap-bin"
    bare.mkdir()
    for tool in (sys.executable, shutil.which("git")):
        assert tool is not None
        (bare / Path(tool).name).symlink_to(tool)
    node = cluster.add("nobw", env={"PATH": str(bare)})
    try:
        out = swarm(
            repo,
            "run", str(tmp_path / "tasks.toml"), "--ray-address", cluster.address, "--sandbox",
        )  # fmt: skip
    finally:
        cluster.remove(node)
        cluster.wait_nodes(len(cluster.nodes))
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr == (
        "swarm: node nobw: --sandbox needs bubblewrap (`bwrap`) on PATH: install it "
        "(e.g. `apt install bubblewrap`) or run without --sandbox\n"
    )
    assert not (repo / ".git" / "swarm" / "state.db").exists()
    assert git(repo, "branch", "--list", "swarm/*") == ""


def test_a_sandboxed_run_needs_bubblewrap_on_the_nodes_only_also_when_resumed(
    cluster: raykit.Cluster, tmp_path: Path
) -> None:
    tasks = ["v1", "v2"]
    repo, remote, ctl = setup_repo(tmp_path, tasks)
    manifest = tmp_path / "tasks.toml"
    manifest.write_text(
        manifest.read_text().replace(
            "[defaults]\n",
            f"[defaults]\nsandbox = true\nsandbox_writable = [{json.dumps(str(ctl))}]\n",
        )
    )
    # The coordinator has no bubblewrap (Python and git only): the agents run on the nodes.
    bare = tmp_path / "no-bwrap-bin"
    bare.mkdir()
    for tool in (sys.executable, shutil.which("git")):
        assert tool is not None
        (bare / Path(tool).name).symlink_to(tool)
    env = os.environ | {"PATH": str(bare)}
    manager = spawn_swarm(repo, "run", str(manifest), "--ray-address", cluster.address, env=env)
    try:
        wait_for("every agent to start", lambda: agents_started(ctl, len(tasks)))
        wait_for("the attempts to be recorded", lambda: all(
            r["attempt"] == 1 for r in status(repo).values()
        ))  # fmt: skip
    finally:
        manager.send_signal(signal.SIGKILL)
        manager.wait(timeout=30)
    assert "bubblewrap" not in output(manager)
    resumed = spawn_swarm(repo, "resume", env=env)
    try:
        wait_for("resume to adopt both actors", lambda: len(events(repo, "agent_adopted")) == 2)
        (ctl / "release").write_text("")
        resumed.wait(timeout=240)
    finally:
        if resumed.poll() is None:
            resumed.kill()
    assert resumed.returncode == 0, output(resumed)
    rows = status(repo)
    assert {t: (r["state"], r["attempt"]) for t, r in rows.items()} == dict.fromkeys(
        tasks, ("done", 1)
    )
    for task in tasks:
        assert git(remote, "show", f"swarm/{task}:{task}.done") == rows[task]["node"]


def test_a_node_without_bubblewrap_fails_a_sandboxed_attempt_before_cloning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The node side as a node's actor runs it (a node that joined after the run's check).
    from worktree_swarm.core.errors import SwarmError  # noqa: PLC0415
    from worktree_swarm.core.task import Task  # noqa: PLC0415
    from worktree_swarm.run.ray_node import NodeAgent  # noqa: PLC0415
    from worktree_swarm.run.ray_node_clone import Assignment  # noqa: PLC0415

    monkeypatch.setenv("SWARM_NODE_DIR", str(tmp_path / "node"))
    monkeypatch.setenv("SWARM_NODE_NAME", "nobwrap")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assignment = Assignment(
        run_id="r",
        task=Task(id="t", prompt="p"),
        attempt=1,
        remote_url=str(tmp_path / "remote.git"),
        author="swarm <swarm@localhost>",
        identity=(),
        kill_grace=1.0,
        checkpoint_interval=0.0,
        sandbox=True,
    )
    with pytest.raises(SwarmError) as caught:
        NodeAgent(assignment).prepare()
    assert str(caught.value) == (
        "node nobwrap: --sandbox needs bubblewrap (`bwrap`) on PATH: install it "
        "(e.g. `apt install bubblewrap`) or run without --sandbox"
    )
    assert not (tmp_path / "node").exists()


def test_a_nodes_gitconfig_with_rerere_on_fails_no_agent_that_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With `rerere.enabled` in a node's system git config (/etc/gitconfig), any commit makes
    # `.git/rr-cache` in the clone: git's doing, empty, as locally; it was taken for a file the
    # agent planted in git's own files, and the task failed.
    from worktree_swarm.core.task import Task  # noqa: PLC0415
    from worktree_swarm.run.ray_node import NodeAgent  # noqa: PLC0415
    from worktree_swarm.run.ray_node_clone import Assignment  # noqa: PLC0415

    repo = make_repo(tmp_path / "repo")
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(remote)], check=True)
    git(remote, "branch", "swarm/t", "main")
    config = tmp_path / "node-gitconfig"
    config.write_text("[rerere]\n\tenabled = true\n")
    monkeypatch.delenv("GIT_CONFIG_NOSYSTEM", raising=False)
    monkeypatch.setenv("GIT_CONFIG_SYSTEM", str(config))
    monkeypatch.setenv("SWARM_NODE_DIR", str(tmp_path / "node"))
    monkeypatch.setenv("SWARM_NODE_NAME", "rerere")
    agent = tmp_path / "committer.py"
    agent.write_text(
        "import pathlib, subprocess\npathlib.Path('work.txt').write_text('work')\n"
        "subprocess.run(['git', 'add', 'work.txt'], check=True)\n"
        "subprocess.run(['git', 'commit', '-qm', 'work'], check=True)\n"
    )
    assignment = Assignment(
        run_id="r",
        task=Task(id="t", prompt="p", agent="custom", agent_argv=(sys.executable, str(agent))),
        attempt=1,
        remote_url=str(remote),
        author="swarm <swarm@localhost>",
        identity=(),
        kill_grace=1.0,
        checkpoint_interval=0.0,
    )
    node = NodeAgent(assignment)
    try:
        node.prepare()
        node.start(prompt="p", session=None, resume_prompt=None)
        wait_for("the agent", lambda: node.poll().ended or None)
        assert node.poll().exit_code == 0
        tip = node.finish(message="swarm: checkpoint t")
        assert (tmp_path / "node").is_dir()
        assert node.planted() == []
        assert git(remote, "show", f"{tip}:work.txt") == "work"
    finally:
        node.discard()


def test_doctor_finds_and_removes_what_a_lost_attempt_left_on_a_node(
    cluster: raykit.Cluster, tmp_path: Path
) -> None:
    tasks = ["o1", "o2"]
    repo, _remote, ctl = setup_repo(tmp_path, tasks)
    manager = spawn_swarm(
        repo, "run", str(tmp_path / "tasks.toml"), "--ray-address", cluster.address
    )
    try:
        wait_for("every agent to start", lambda: agents_started(ctl, len(tasks)))
        rows = wait_for("the attempts to be recorded", lambda: (
            (got := status(repo)) and all(r["attempt"] == 1 for r in got.values()) and got
        ))  # fmt: skip
        run_id = json.loads(swarm(repo, "status", "--json").stdout)["run_id"]
        where = {t: r["node"] for t, r in rows.items()}  # type: ignore[union-attr]
        # What an attempt of o1 lost with the other node left there (o1 runs on its own now).
        other = next(n for n in cluster.nodes if n.name != where["o1"])
        lost = other.work_dir / "runs" / run_id / "o1"
        (lost / "work").mkdir(parents=True)
        (lost / "work" / "half-done.txt").write_text("lost with its node\n")
        (lost / "logs-1").mkdir()
        live = {
            t: next(n for n in cluster.nodes if n.name == where[t]).work_dir / "runs" / run_id / t
            for t in tasks
        }
        assert all((path / "work").is_dir() for path in live.values())

        out = swarm(repo, "doctor", "--json")
        found = [f for f in json.loads(out.stdout)["findings"] if f["kind"] == "node_clone"]
        assert out.returncode == 1, out.stdout + out.stderr
        assert [(f["node"], f["task_id"], f["run_id"], f["target"]) for f in found] == [
            (other.name, "o1", run_id, f"{other.name}:{lost}")
        ]
        assert found[0]["action"] == "remove_node_clone"
        assert lost.is_dir()  # a dry run

        out = swarm(repo, "doctor", "--yes")
        assert f"{other.name}:{lost}: task o1 of run {run_id} has no live attempt" in out.stdout
        assert f"done: removed {lost} from node {other.name}" in out.stdout
        assert not lost.exists()
        # The live attempts' clones and agents are untouched.
        assert all((path / "work").is_dir() for path in live.values())
        pids = [int(p.name.rsplit(".", 1)[1]) for p in ctl.glob("*.agent.*")]
        assert all(psutil.pid_exists(pid) for pid in pids)
        (ctl / "release").write_text("")
        manager.wait(timeout=300)
    finally:
        if manager.poll() is None:
            manager.kill()
    assert manager.returncode == 0, output(manager)
    assert {t: r["state"] for t, r in status(repo).items()} == dict.fromkeys(tasks, "done")
    out = swarm(repo, "doctor", "--json")
    assert [f for f in json.loads(out.stdout)["findings"] if f["kind"] == "node_clone"] == []


def test_doctor_says_so_when_the_cluster_of_a_ray_run_is_gone(
    cluster: raykit.Cluster, tmp_path: Path
) -> None:
    repo, _remote, ctl = setup_repo(tmp_path, ["g1"])
    (ctl / "release").write_text("")
    out = swarm(repo, "run", str(tmp_path / "tasks.toml"), "--ray-address", cluster.address)
    assert out.returncode == 0, out.stdout + out.stderr
    # The run's cluster went away: nothing listens at its address any more.
    gone = f"127.0.0.1:{raykit.free_port()}"
    with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as conn:
        (spec,) = conn.execute("SELECT spec_json FROM runs").fetchone()
        settings = json.loads(spec)
        settings["ray_address"] = gone
        conn.execute("UPDATE runs SET spec_json = ?", (json.dumps(settings),))
    out = swarm(repo, "doctor", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    [found] = [f for f in json.loads(out.stdout)["findings"] if f["kind"] == "node_clone"]
    assert (found["target"], found["action"], found["problem"]) == ("ray cluster", "keep", False)
    assert found["reason"].startswith(f"not checked: cannot reach a Ray cluster at {gone}: ")
    # And a run at that address is refused at once, before anything is made.
    again = make_repo(tmp_path / "again")
    git(again, "remote", "add", "origin", str(tmp_path / "remote.git"))
    out = swarm(again, "run", str(tmp_path / "tasks.toml"), "--ray-address", gone)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.startswith(f"swarm: cannot reach a Ray cluster at {gone}: ")
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (again / ".git" / "swarm" / "state.db").exists()


# A stand-in for Claude Code (the `claude` profile by its file name): it files its session
# under $CLAUDE_CONFIG_DIR/projects/<cwd with non-alphanumerics as ->/<id>.jsonl, and
# `--resume <id>` finds it there only, as the real CLI does.
SESSION_AGENT = r"""
import json, os, pathlib, re, sys, time, uuid
args = sys.argv[1:]
ctl = pathlib.Path(args[args.index("--ctl") + 1])
task, node = os.environ["SWARM_TASK_ID"], os.environ["SWARM_NODE_NAME"]
config = pathlib.Path(os.environ["CLAUDE_CONFIG_DIR"])
project = config / "projects" / re.sub(r"[^a-zA-Z0-9]", "-", os.getcwd())
if "--resume" in args:
    sid = args[args.index("--resume") + 1]
    transcript = project / f"{sid}.jsonl"
    if not transcript.exists():
        print(json.dumps({"type": "result", "subtype": "error_during_execution",
                          "is_error": True, "session_id": sid,
                          "result": f"No conversation found with session ID: {sid}"}))
        sys.exit(1)
    earlier = [json.loads(line) for line in transcript.read_text().splitlines()]
else:
    sid, earlier = str(uuid.uuid4()), []
    project.mkdir(parents=True)
    transcript = project / f"{sid}.jsonl"
print(json.dumps({"type": "system", "subtype": "init", "session_id": sid}), flush=True)
turn = {"node": node, "cwd": os.getcwd(), "prompt": args[args.index("-p") + 1],
        "saw": "sk-ant-api03-" + "s3cr3t" * 8}
with transcript.open("a") as fh:
    fh.write(json.dumps(turn) + "\n")
(config / ".credentials.json").write_text('{"claudeAiOauth": {"accessToken": "node-only"}}')
if earlier:
    pathlib.Path(f"{task}.resumed").write_text(
        json.dumps({"session": sid, "earlier": earlier, "node": node, "cwd": os.getcwd()}))
else:
    pathlib.Path(f"{task}.txt").write_text(f"turn 1 of {task} on {node}\n")
    (ctl / f"{task}.agent.{os.getpid()}").write_text(node)
    while not (ctl / "release").exists():
        time.sleep(0.05)
print(json.dumps({"type": "result", "subtype": "success", "is_error": False,
                  "session_id": sid, "result": "done", "total_cost_usd": 0.0}), flush=True)
"""


def kept_turns(runs: Path, task: str) -> int:
    """How many turns the session kept for *task* in the run directory holds (0: none yet)."""
    for archive in runs.glob(f"*/{task}/session/session.tar.gz"):
        with tarfile.open(archive) as tar:
            return sum(
                len(tar.extractfile(m).read().splitlines())  # type: ignore[union-attr]
                for m in tar.getmembers()
                if m.name.endswith(".jsonl")
            )
    return 0


def test_a_lost_node_s_agent_resumes_its_session_on_another_node(
    cluster: raykit.Cluster, tmp_path: Path
) -> None:
    tasks = ["k1", "k2", "k3", "k4"]
    repo, remote, ctl = setup_repo(tmp_path, tasks)
    claude = tmp_path / "bin" / "claude"
    claude.parent.mkdir()
    claude.write_text(f"#!{sys.executable}\n{SESSION_AGENT}")
    claude.chmod(0o755)
    manifest = tmp_path / "tasks.toml"
    agent = json.dumps([str(claude), "-p", "{prompt}", "--ctl", str(ctl)])
    manifest.write_text(
        re.sub(r"(?m)^agent = .*$", lambda _m: f"agent = {agent}", manifest.read_text())
    )
    env = os.environ | {"ANTHROPIC_API_KEY": "sk-ant-api03-coordinator-key-not-used"}
    manager = spawn_swarm(repo, "run", str(manifest), "--ray-address", cluster.address, env=env)
    worker = next(n for n in cluster.nodes if n.name == "w0")
    try:
        wait_for("every agent to start", lambda: agents_started(ctl, len(tasks)))
        on_worker = sorted(t for t, r in status(repo).items() if r["node"] == "w0")
        assert on_worker  # four tasks, two slots per node
        runs = repo / ".git" / "swarm" / "runs"
        # The coordinator keeps each running agent's session files in the run's directory.
        for task in on_worker:
            wait_for(f"the session of {task}", lambda task=task: kept_turns(runs, task))
        raylet = worker.raylet()
        assert raylet is not None
        machine = worker.tree()
        raylet.kill()
        cluster.kill_node(worker, machine)
        (ctl / "release").write_text("")
        manager.wait(timeout=400)
    finally:
        if manager.poll() is None:
            manager.kill()
        cluster.restart(worker)  # for the tests after this one
    assert manager.returncode == 0, output(manager)
    rows = status(repo)
    assert {t: r["state"] for t, r in rows.items()} == dict.fromkeys(tasks, "done")
    assert sorted({task for task, _data in events(repo, "node_lost")}) == on_worker
    for task in on_worker:
        assert (rows[task]["node"], rows[task]["attempt"]) == ("head", 2)
        resumed = json.loads(git(repo, "show", f"swarm/{task}:{task}.resumed"))
        # The same session went on, on the other node, from the clone's new path: the turn
        # the lost node's agent had taken is in it, its path rewritten to this clone's.
        kept = json.loads(next(runs.glob(f"*/{task}/session/session.json")).read_text())
        assert resumed["session"] == kept["session_id"]
        assert resumed["node"] == "head"
        [before] = resumed["earlier"]
        assert before["node"] == "w0"
        assert before["cwd"] == resumed["cwd"]
        assert before["prompt"].startswith(f"do {task}")
        # Secrets of the node did not travel: the key it saw is redacted, sign-in left out.
        assert "s3cr3t" not in before["saw"]
        archive = next(runs.glob(f"*/{task}/session/session.tar.gz"))
        with tarfile.open(archive) as tar:
            names = tar.getnames()
            text = b"".join(tar.extractfile(m).read() for m in tar.getmembers())  # type: ignore[union-attr]
        assert any(name.endswith(f"{resumed['session']}.jsonl") for name in names)
        assert not [n for n in names if n.endswith(".credentials.json")]
        assert b"s3cr3t" not in text
        assert b"node-only" not in text
        with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as conn:
            sessions = conn.execute(
                "SELECT number, session_id FROM attempts WHERE task_id = ? ORDER BY number",
                (task,),
            ).fetchall()
        assert sessions[-1] == (2, resumed["session"])
        # Nothing of it reached a branch or the remote.
        assert "session" not in git(remote, "ls-tree", "-r", "--name-only", f"swarm/{task}")
    for task in sorted(set(tasks) - set(on_worker)):
        assert rows[task]["attempt"] == 1
        assert git(repo, "show", f"swarm/{task}:{task}.txt") == f"turn 1 of {task} on head"


STEP_ON_NODE = r"""
import os, pathlib, sys, time
ctl, step = pathlib.Path(sys.argv[1]), sys.argv[2]
task = os.environ["SWARM_TASK_ID"]
print(f"{step} of {task}", flush=True)
(ctl / f"{task}.{step}.{os.environ.get('SWARM_NODE_NAME', '?')}.{os.getpid()}").touch()
while not (ctl / "release").exists():
    time.sleep(0.05)
"""


# What `swarm logs T --STEP` says while the step runs on a node (its output comes back after).
STEP_RUNS_ON = {
    "checks": "its checks run on node {node}, and what they print is copied here when they end",
    "setup": "it is being set up on node {node}, and what its setup prints is copied here when"
    " it ends",
}


@pytest.mark.parametrize(("step", "said"), list(STEP_RUNS_ON.items()))
def test_logs_of_a_step_still_running_on_a_node_say_where_it_runs(
    cluster: raykit.Cluster, tmp_path: Path, step: str, said: str
) -> None:
    # The node hands a step's output back when it ends: "none ran" was untrue meanwhile.
    repo, _remote, ctl = setup_repo(tmp_path, [])
    program = tmp_path / "step.py"
    program.write_text(STEP_ON_NODE)
    argv = json.dumps([[sys.executable, str(program), str(ctl), step]])
    (tmp_path / "tasks.toml").write_text(
        f'[defaults]\nexecutor = "ray"\nray_memory = "64M"\nagent = "scripted"\n'
        f'{step} = {argv}\n\n[[task]]\nid = "t1"\nprompt = "p"\n'
    )
    manager = spawn_swarm(
        repo, "run", str(tmp_path / "tasks.toml"), "--ray-address", cluster.address
    )
    try:
        wait_for(f"its {step}", lambda: list(ctl.glob(f"t1.{step}.*")))
        node = status(repo)["t1"]["node"]
        for follow in ((), ("-f",)):
            out = swarm(repo, "logs", "t1", f"--{step}", *follow)
            assert out.returncode == 1, out.stdout + out.stderr
            told = said.format(node=node)
            assert out.stderr == f"swarm: task 't1' has no {step} output here yet: {told}\n"
        (ctl / "release").write_text("")
        assert manager.wait(timeout=300) in (0, 1), output(manager)
    finally:
        if manager.poll() is None:
            manager.kill()
    out = swarm(repo, "logs", "t1", f"--{step}")
    assert out.returncode == 0, out.stderr
    assert f"{step} of t1" in out.stdout


def test_a_node_lost_in_the_checks_checks_again_elsewhere_without_a_new_agent(
    tmp_path: Path,
) -> None:
    made = raykit.Cluster.start(tmp_path / "ray", workers=1, slots=1)  # it loses its worker
    try:
        repo, _remote, ctl = setup_repo(tmp_path, [])
        runs = tmp_path / "runs.py"
        runs.write_text(
            "import os, pathlib, sys\ntask = os.environ['SWARM_TASK_ID']\n"
            "pathlib.Path(task + '.txt').write_text('work of ' + task + '\\n')\n"
            "with open(pathlib.Path(sys.argv[1], task + '.runs'), 'a') as out:\n"
            "    out.write('run\\n')\n"
        )
        check = tmp_path / "check.py"
        check.write_text(STEP_ON_NODE)
        agent = json.dumps([sys.executable, str(runs), str(ctl)])
        checks = json.dumps([[sys.executable, str(check), str(ctl), "check"]])
        (tmp_path / "tasks.toml").write_text(
            f'[defaults]\nexecutor = "ray"\nray_memory = "64M"\nagent = {agent}\n'
            f"checks = {checks}\n\n"
            + "".join(f'[[task]]\nid = "{t}"\nprompt = "p"\n' for t in ("k1", "k2"))
        )
        manager = spawn_swarm(
            repo, "run", str(tmp_path / "tasks.toml"), "--ray-address", made.address
        )
        try:
            wait_for("both tasks' checks", lambda: len(list(ctl.glob("*.check.*"))) == 2)
            lost = next(t for t, r in status(repo).items() if r["node"] == "w0")
            worker = next(n for n in made.nodes if n.name == "w0")
            raylet = worker.raylet()
            assert raylet is not None
            machine = worker.tree()
            raylet.kill()
            made.kill_node(worker, machine)
            (ctl / "release").write_text("")  # the head's slot frees once its task is checked
            manager.wait(timeout=400)
        finally:
            if manager.poll() is None:
                manager.kill()
        assert manager.returncode == 0, output(manager)
        assert status(repo)[lost]["state"] == "done"
        assert (ctl / f"{lost}.runs").read_text() == "run\n"  # its agent ran once
        assert len(list(ctl.glob(f"{lost}.check.*"))) == 2  # its checks, again on the head
        with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as conn:
            rows = conn.execute(
                "SELECT number, outcome FROM attempts WHERE task_id = ?", (lost,)
            ).fetchall()
        assert rows == [(1, "succeeded")]  # as it ended, not rewritten as lost
    finally:
        made.shutdown()


def test_resume_while_an_actor_waits_for_a_slot_runs_the_task_once_and_frees_the_slot(
    tmp_path: Path,
) -> None:
    made = raykit.Cluster.start(tmp_path / "ray", workers=0, slots=1)  # one agent at a time
    try:
        repo, _remote, ctl = setup_repo(tmp_path, ["q1", "q2"])
        manager = spawn_swarm(
            repo, "run", str(tmp_path / "tasks.toml"), "--ray-address", made.address
        )
        db = repo / ".git" / "swarm" / "state.db"

        def launching() -> dict[str, int | None]:
            with sqlite3.connect(db) as conn:
                return dict(conn.execute("SELECT task_id, launching FROM tasks").fetchall())

        # One agent runs; the other task's actor is made and waits for the only slot.
        wait_for("one agent", lambda: agents_started(ctl, 1))
        wait_for("the other actor", lambda: any(n is not None for n in launching().values()))
        manager.send_signal(signal.SIGKILL)
        manager.wait(timeout=30)
        resumed = spawn_swarm(repo, "resume")
        try:
            # It found the waiting actor did not answer: it was killed, a new one is made.
            wait_for("the waiting actor given up", lambda: events(repo, "actor_gone"))
            (ctl / "release").write_text("")
            assert resumed.wait(timeout=300) == 0, output(resumed)
        finally:
            if resumed.poll() is None:
                resumed.kill()
        assert {t: r["state"] for t, r in status(repo).items()} == {"q1": "done", "q2": "done"}
        assert len(list(ctl.glob("*.agent.*"))) == 2  # each task's agent once
        assert not actor_processes(made)
    finally:
        made.shutdown()


def pushed(remote: Path, what: str) -> bool:
    """Whether *what* (``REV:PATH``) is on the bare repository *remote*."""
    found = subprocess.run(
        ["git", "-C", str(remote), "cat-file", "-e", what], capture_output=True, check=False
    )
    return found.returncode == 0


def gone(process: psutil.Process) -> bool:
    """Whether *process* has ended (a zombie has)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@dataclass
class Working:
    """A Ray run of one task, its agent at work under its shim, a child of its actor."""

    repo: Path
    ctl: Path
    manager: subprocess.Popen[bytes]
    first: Path  # the agent's start marker (it holds the node's name)
    agent: psutil.Process
    actor: psutil.Process
    others: list[subprocess.Popen[bytes]]  # more swarm commands the test starts


@contextlib.contextmanager
def an_agent_at_work(cluster: raykit.Cluster, tmp_path: Path, task: str) -> Iterator[Working]:
    """Run *task* (``lost_after`` 10 s) until its agent has pushed a checkpoint; afterwards
    wake and kill its actor and shim if still there, and every swarm command left running."""
    repo, remote, ctl = setup_repo(tmp_path, [task])
    manifest = tmp_path / "tasks.toml"
    manifest.write_text(
        # Short, yet past a healthy actor's slowest answer on a loaded 2-core machine (5 s
        # once took the next attempt's new actor for lost too).
        manifest.read_text().replace("[defaults]\n", '[defaults]\nlost_after = "10s"\n')
    )
    manager = spawn_swarm(repo, "run", str(manifest), "--ray-address", cluster.address)
    others: list[subprocess.Popen[bytes]] = []
    shim: psutil.Process | None = None
    actor: psutil.Process | None = None
    try:
        first = cast("list[Path]", wait_for("the agent", lambda: agents_started(ctl, 1)))[0]
        wait_for("a checkpoint of its work", lambda: pushed(remote, f"swarm/{task}:{task}.txt"))
        agent = psutil.Process(int(first.name.rsplit(".", 1)[1]))
        shim = agent.parent()
        actor = shim.parent() if shim is not None else None
        # The agent runs under its shim, a child of the attempt's actor (a Ray worker).
        assert actor is not None
        assert "NodeAgent" in " ".join(actor.cmdline())
        yield Working(
            repo=repo, ctl=ctl, manager=manager, first=first, agent=agent, actor=actor,
            others=others,
        )  # fmt: skip
    finally:
        if actor is not None and actor.is_running():  # is_running checks its create time
            with contextlib.suppress(psutil.Error):
                actor.send_signal(signal.SIGCONT)
                actor.kill()
        if shim is not None and shim.is_running():  # its SIGTERM ends the agent's whole tree
            with contextlib.suppress(psutil.Error):
                shim.terminate()
        for proc in (manager, *others):
            if proc.poll() is None:
                proc.kill()


def test_an_actor_that_stops_answering_is_a_lost_attempt_and_is_killed(
    cluster: raykit.Cluster, tmp_path: Path
) -> None:
    with an_agent_at_work(cluster, tmp_path, "u1") as work:
        repo, ctl = work.repo, work.ctl
        work.actor.send_signal(signal.SIGSTOP)  # alive to Ray, but it answers no call
        wait_for("the attempt counted lost", lambda: events(repo, "node_lost"), timeout=120)
        wait_for("a new attempt's agent", lambda: agents_started(ctl, 2))
        # Taken down before the task went on: the actor, and the agent it had started.
        assert gone(work.actor)
        assert gone(work.agent)
        # Its pushed work is here at once (a stop now, then `swarm clean`, lost it).
        assert git(repo, "show", "swarm/u1:u1.txt")
        assert status(repo)["u1"]["files_changed"], status(repo)["u1"]
        (ctl / "release").write_text("")
        assert work.manager.wait(timeout=300) == 0, output(work.manager)
    node = work.first.read_text()
    assert events(repo, "node_lost") == [("u1", {"attempt": 1, "node": node})]
    with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as conn:
        rows = conn.execute(
            "SELECT number, outcome, reason FROM attempts WHERE task_id = 'u1' ORDER BY number"
        ).fetchall()
    assert [(number, outcome) for number, outcome, _reason in rows] == [
        (1, "failed"),
        (2, "succeeded"),
    ]
    assert rows[0][2] == f"node {node} lost: its actor did not answer for 10.0s"
    assert status(repo)["u1"]["state"] == "done"
    # The new attempt went on from the frozen one's last pushed checkpoint.
    history = git(repo, "log", "--format=%s", "swarm/u1").splitlines()
    assert any(line.startswith("swarm: checkpoint u1 attempt 1 (running") for line in history)
    assert git(repo, "show", "swarm/u1:u1.done") in {"head", "w0"}
    wait_for("the actors to exit", lambda: not actor_processes(cluster), timeout=60)


def test_an_actor_that_stopped_answering_while_no_coordinator_ran_is_ended_by_resume(
    cluster: raykit.Cluster, tmp_path: Path
) -> None:
    with an_agent_at_work(cluster, tmp_path, "v1") as work:
        repo, ctl = work.repo, work.ctl
        work.manager.send_signal(signal.SIGKILL)  # the coordinator dies; its actor lives on
        work.manager.wait(timeout=30)
        work.actor.send_signal(signal.SIGSTOP)  # and then stops answering
        resumed = spawn_swarm(repo, "resume")
        work.others.append(resumed)
        wait_for("the silent actor given up", lambda: events(repo, "actor_gone"), timeout=120)
        wait_for("a new attempt's agent", lambda: agents_started(ctl, 2))
        # Ended on its node before the task went on: the actor, and the agent it had started.
        assert gone(work.actor)
        assert gone(work.agent)
        (ctl / "release").write_text("")
        assert resumed.wait(timeout=300) == 0, output(resumed)
    assert status(repo)["v1"]["state"] == "done"
    wait_for("the actors to exit", lambda: not actor_processes(cluster), timeout=60)


# Starts a daemon with its environment wiped (no shim's mark) in its clone, ignoring SIGTERM,
# its PID to argv[1]/daemon.pid, and works on; with argv[2] "ended", once argv[1]/go exists,
# SIGKILLs its own shim and exits. An attempt after that first one ends at once.
LEAVING_AGENT = r"""
import os, pathlib, signal, subprocess, sys, time
ctl, how = pathlib.Path(sys.argv[1]), sys.argv[2]
pid_file = ctl / "daemon.pid"
if pid_file.exists():
    sys.exit(0)
pathlib.Path("w.txt").write_text("work\n")
daemon = 'trap "" TERM; sleep 600 & echo $! > "$0"'
subprocess.run(["env", "-i", "sh", "-c", daemon, str(pid_file)], check=True)
while not (ctl / "go").exists():
    time.sleep(0.02)
if how == "ended":
    os.kill(os.getppid(), signal.SIGKILL)
    sys.exit(0)
time.sleep(600)
"""


@pytest.mark.parametrize("how", ["ended", "silent"])
def test_a_daemon_its_agent_left_in_its_clone_is_ended_on_its_node_when_its_shim_was_killed(
    cluster: raykit.Cluster, tmp_path: Path, how: str
) -> None:
    # The agent's shim SIGKILLed (by the agent itself as it ended, or by the OOM killer
    # while its actor stopped answering): its node ended the attempt killing only what
    # carried the shim's mark (or nothing at all), and the daemon worked on in the clone.
    repo, _remote, ctl = setup_repo(tmp_path, [])
    script = tmp_path / "leaving.py"
    script.write_text(LEAVING_AGENT)
    manifest = tmp_path / "leaving.toml"
    argv = [sys.executable, str(script), str(ctl), how]
    manifest.write_text(
        f"[defaults]\nagent = {json.dumps(argv)}\n"
        'executor = "ray"\nray_memory = "64M"\nkill_grace = "2s"\nlost_after = "10s"\n\n'
        '[[task]]\nid = "d"\nprompt = "p"\n'
    )
    manager = spawn_swarm(repo, "run", str(manifest), "--ray-address", cluster.address)
    left: list[psutil.Process] = []
    actor: psutil.Process | None = None
    try:
        daemon = leftovers_daemon(ctl / "daemon.pid")
        left.append(daemon)
        shim = psutil.Process(os.getpgid(daemon.pid))  # the agent's shim leads its group
        assert "--swarm-shim" in shim.cmdline()
        actor = shim.parent()
        assert actor is not None
        assert "NodeAgent" in " ".join(actor.cmdline())
        bystander = leftovers_bystander(Path(daemon.cwd()))  # in the clone, in its own session
        left.append(bystander)
        if how == "silent":
            actor.send_signal(signal.SIGSTOP)  # alive to Ray, but it answers no call
            shim.kill()
        (ctl / "go").touch()
        manager.wait(timeout=300)
        ended, spared = leftovers_gone(daemon), not leftovers_gone(bystander)
    finally:
        if actor is not None and actor.is_running():
            with contextlib.suppress(psutil.Error):
                actor.send_signal(signal.SIGCONT)
        if manager.poll() is None:
            manager.kill()
        for proc in left:
            with contextlib.suppress(psutil.Error):
                proc.kill()
            if isinstance(proc, psutil.Popen):
                proc.wait(timeout=60)
    assert ended, output(manager)
    assert spared
    if how == "silent":
        assert events(repo, "node_lost"), output(manager)
    wait_for("the actors to exit", lambda: not actor_processes(cluster), timeout=60)


RAY_KILL = """
import ray, sys
ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
ray.kill(ray.get_actor(sys.argv[2], namespace=sys.argv[3]), no_restart=True)
"""


# An attempt's actor made as the coordinator makes one, a `git` first on its PATH, asked to
# prepare its clone; once that clone's git runs, Ray kills the actor.
KILLED_IN_CLONE = """
import pathlib, sys, time
import ray
from worktree_swarm.core.task import Task
from worktree_swarm.run.ray_actors import actor_class
from worktree_swarm.run.ray_attempt import _ACTOR_ENV
from worktree_swarm.run.ray_node_clone import Assignment
address, remote, node_dir, path, pid_file = sys.argv[1:]
ray.init(address=address, log_to_driver=False, logging_level="ERROR")
task = Task(id="t", prompt="p", agent="custom", agent_argv=("true",))
assignment = Assignment(
    run_id="r", task=task, attempt=1, remote_url=remote, author="a <a@localhost>",
    identity=(), kill_grace=1.0, checkpoint_interval=0.0,
)
env = {**_ACTOR_ENV, "PATH": path, "SWARM_NODE_DIR": node_dir}
actor = actor_class().options(
    name="t-1", namespace="swarm-clone-killed", lifetime="detached", max_restarts=0,
    max_task_retries=0, max_concurrency=2, num_cpus=0, resources={"agent_slot": 1},
    runtime_env={"env_vars": env},
).remote(assignment)
preparing = actor.prepare.remote()
deadline = time.monotonic() + 180
while not pathlib.Path(pid_file).exists():
    assert time.monotonic() < deadline, "the clone's git never started"
    ray.wait([preparing], timeout=0.2)
ray.kill(actor, no_restart=True)
"""


def test_a_clone_s_git_ends_with_the_actor_ray_kills(tmp_path: Path) -> None:
    # A node of its own: one whose raylet does not kill a dead worker's process group (as
    # some Ray releases swarm runs with do not), where nothing but the git itself can end it.
    cluster = raykit.Cluster.start(
        tmp_path / "ray", workers=0, slots=1, env={"RAY_process_group_cleanup_enabled": "0"}
    )
    try:
        _clone_killed_with_its_actor(cluster, tmp_path)
    finally:
        cluster.shutdown()


def _clone_killed_with_its_actor(cluster: raykit.Cluster, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(remote)], check=True)
    git(remote, "branch", "swarm/t", "main")
    # The attempt's clone (from the mirror: `--reference`) hangs; the mirror's is git's.
    bin_dir, pid_file = tmp_path / "gitbin", tmp_path / "clone.pid"
    bin_dir.mkdir()
    real = shutil.which("git")
    assert real is not None
    (bin_dir / "git").write_text(
        "#!/bin/sh\n"
        'case " $* " in *" --reference "*)\n'
        f"  echo $$ > {pid_file}.tmp; mv {pid_file}.tmp {pid_file}; exec sleep 600;;\n"
        "esac\n"
        f'exec {real} "$@"\n'
    )
    (bin_dir / "git").chmod(0o755)
    path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    clone: psutil.Process | None = None
    try:
        killed = subprocess.run(
            [sys.executable, "-c", KILLED_IN_CLONE, cluster.address, str(remote),
             str(tmp_path / "node"), path, str(pid_file)],
            capture_output=True, text=True, timeout=300, check=False, cwd=raykit.ROOT,
        )  # fmt: skip
        assert killed.returncode == 0, killed.stderr
        clone = psutil.Process(int(pid_file.read_text()))
        ended = clone
        wait_for("the clone's git to end with its actor", lambda: gone(ended), timeout=60)
    finally:
        if clone is not None and clone.is_running():
            with contextlib.suppress(psutil.Error):
                clone.kill()
    wait_for("the actors to exit", lambda: not actor_processes(cluster), timeout=60)


def test_an_actor_that_ray_ends_takes_its_agent_with_it_with_no_coordinator_left(
    cluster: raykit.Cluster, tmp_path: Path
) -> None:
    with an_agent_at_work(cluster, tmp_path, "x1") as work:
        shim = work.agent.parent()
        assert shim is not None
        work.manager.send_signal(signal.SIGKILL)  # no coordinator to end the attempt
        work.manager.wait(timeout=30)
        # Ray ends the actor as when its node's raylet is lost: by default it SIGKILLs the
        # worker's children first, the agent's shim among them, and the agent, in the shim's
        # session, would work on with nothing left to stop it.
        run_id = json.loads(swarm(work.repo, "status", "--json").stdout)["run_id"]
        killed = subprocess.run(
            [sys.executable, "-c", RAY_KILL, cluster.address, "x1-1", f"swarm-{run_id}"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert killed.returncode == 0, killed.stderr
        wait_for("the actor to end", lambda: gone(work.actor), timeout=60)
        # The shim saw its actor gone and ended the agent's tree.
        wait_for("the agent to stop", lambda: gone(work.agent), timeout=60)
        assert gone(shim)
    wait_for("the actors to exit", lambda: not actor_processes(cluster), timeout=60)


def remote_branches(remote: Path) -> dict[str, str]:
    """The ``swarm/*`` branches of the bare repository *remote*: {branch: tip}."""
    out = git(
        remote, "for-each-ref", "--format=%(refname:short) %(objectname)", "refs/heads/swarm/"
    )
    return dict(line.split(" ", 1) for line in out.splitlines())


def test_clean_deletes_the_branches_a_ray_run_pushed_on_its_remote_unless_moved_there(
    cluster: raykit.Cluster, tmp_path: Path
) -> None:
    tasks = ["d1", "d2", "d3", "d4"]
    repo, remote, ctl = setup_repo(tmp_path, tasks)
    (ctl / "release").write_text("")
    out = swarm(repo, "run", str(tmp_path / "tasks.toml"), "--ray-address", cluster.address)
    assert out.returncode == 0, out.stdout + out.stderr
    pushed = remote_branches(remote)
    assert set(pushed) == {f"swarm/{t}" for t in tasks}
    # Someone else moves d3 on the remote after the run: not this run's to delete any more.
    main = git(repo, "rev-parse", "main")
    git(remote, "update-ref", "refs/heads/swarm/d3", main)
    # A pull request `swarm pr` opened from d4's branch there: deleting it would close it.
    with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as conn:
        conn.execute("UPDATE tasks SET pr_number = 7, pr_state = 'open' WHERE task_id = 'd4'")
    out = swarm(repo, "clean", "--force")  # the plan lists the remote branches it would delete
    assert out.returncode == 1, out.stdout + out.stderr
    assert "remote branch (4)" in out.stdout
    assert (
        "pull request #7 was opened from it\n    kept: deleting it would close the pull "
        "request; delete it there once closed\n"
    ) in out.stdout
    for task in tasks[:3]:
        tip = git(repo, "rev-parse", f"swarm/{task}")
        assert f"  swarm/{task} on origin: task {task} is done; not merged (--force); run " in (
            out.stdout
        )
        assert f"    would: delete it there if it is still at {tip[:12]}" in out.stdout
    assert remote_branches(remote) == pushed | {"swarm/d3": main}  # a dry run changes nothing
    out = swarm(repo, "clean", "--force", "--yes", "--json")
    assert out.returncode == 1, out.stdout + out.stderr
    report = json.loads(out.stdout)
    there = {f["task_id"]: f for f in report["findings"] if f["kind"] == "remote_branch"}
    assert {t: (f["fixed"], f["remote"]) for t, f in there.items()} == {
        "d1": (True, str(remote)),
        "d2": (True, str(remote)),
        "d3": (False, str(remote)),
        "d4": (False, str(remote)),  # kept
    }
    d3 = pushed["swarm/d3"]
    assert there["d3"]["result"] == (
        f"there it is at {main[:12]}, not at {d3[:12]}: moved since; kept"
    )
    assert there["d1"]["result"] == f"deleted (was {pushed['swarm/d1'][:12]})"
    assert remote_branches(remote) == {"swarm/d3": main, "swarm/d4": pushed["swarm/d4"]}
    assert not git(repo, "for-each-ref", "refs/heads/swarm/")  # here, all of them went


def test_clean_with_its_remote_unreachable_cleans_here_and_deletes_there_next_time(
    cluster: raykit.Cluster, tmp_path: Path
) -> None:
    repo, remote, ctl = setup_repo(tmp_path, ["e1"])
    (ctl / "release").write_text("")
    out = swarm(repo, "run", str(tmp_path / "tasks.toml"), "--ray-address", cluster.address)
    assert out.returncode == 0, out.stdout + out.stderr
    tip = git(repo, "rev-parse", "swarm/e1")
    away = tmp_path / "remote-away.git"
    remote.rename(away)  # the remote cannot be reached now
    out = swarm(repo, "clean", "--force", "--yes")
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stderr == ""  # one line in the report, no traceback
    lines = [line for line in out.stdout.splitlines() if "cannot reach" in line]
    assert lines == [
        (
            f"    left: cannot reach {remote} (fatal: '{remote}' does not appear to be a git "
            "repository); kept there: run `swarm clean --yes` again later"
        )
    ]
    assert not git(repo, "for-each-ref", "refs/heads/swarm/")  # the clean here was done
    # Unreachable by a URL with a password in it: the password is not in what clean says.
    password = "Pa55w0rd-kept-out"  # noqa: S105 - made up for the test
    git(repo, "remote", "set-url", "origin", f"https://swarm:{password}@127.0.0.1:9/r.git")
    out = swarm(repo, "clean", "--yes")
    assert out.returncode == 1, out.stdout + out.stderr
    assert password not in out.stdout + out.stderr
    assert "cannot reach https://127.0.0.1:9/r.git" in out.stdout, out.stdout
    git(repo, "remote", "set-url", "origin", str(remote))
    away.rename(remote)
    assert remote_branches(remote) == {"swarm/e1": tip}
    out = swarm(repo, "clean")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "  swarm/e1 on origin: task e1 is done; its branch here was deleted before" in out.stdout
    out = swarm(repo, "clean", "--yes")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"    done: deleted (was {tip[:12]})" in out.stdout
    assert remote_branches(remote) == {}
    assert swarm(repo, "clean").stdout.strip() == "nothing to clean"


def test_doctor_deleting_a_merged_branch_of_a_ray_run_deletes_it_on_the_remote_too(
    cluster: raykit.Cluster, tmp_path: Path
) -> None:
    repo, remote, ctl = setup_repo(tmp_path, ["g1"])
    (ctl / "release").write_text("")
    out = swarm(repo, "run", str(tmp_path / "tasks.toml"), "--ray-address", cluster.address)
    assert out.returncode == 0, out.stdout + out.stderr
    git(repo, "merge", "-q", "--ff-only", "swarm/g1")  # landed by hand
    out = swarm(repo, "doctor", "--yes")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "  swarm/g1 on origin: task g1 is done; merged into main; run " in out.stdout
    assert remote_branches(remote) == {}
    assert not git(repo, "for-each-ref", "refs/heads/swarm/")


def test_a_lost_node_s_tasks_finish_on_another_node(
    cluster: raykit.Cluster, tmp_path: Path
) -> None:
    # Last in this module: it takes the worker node away.
    tasks = ["n1", "n2", "n3", "n4"]
    repo, remote, ctl = setup_repo(tmp_path, tasks)
    manager = spawn_swarm(
        repo, "run", str(tmp_path / "tasks.toml"), "--ray-address", cluster.address
    )
    try:
        wait_for("every agent to start", lambda: agents_started(ctl, len(tasks)))
        on_worker = sorted(t for t, r in status(repo).items() if r["node"] == "w0")
        assert on_worker  # four tasks, two slots per node
        # A periodic checkpoint of the work so far reaches the remote while the agents run.
        for task in on_worker:
            wait_for(
                f"a checkpoint of {task}",
                lambda task=task: subprocess.run(
                    ["git", "-C", str(remote), "cat-file", "-e", f"swarm/{task}:{task}.txt"],
                    check=False,
                ).returncode == 0,
            )  # fmt: skip
        worker = next(n for n in cluster.nodes if n.name == "w0")
        raylet = worker.raylet()
        assert raylet is not None
        machine = worker.tree()  # before its processes are orphaned
        raylet.kill()  # by the PID of the raylet we started, then the rest of that machine
        cluster.kill_node(worker, machine)
        (ctl / "release").write_text("")
        manager.wait(timeout=400)
    finally:
        if manager.poll() is None:
            manager.kill()
    assert manager.returncode == 0, output(manager)
    rows = status(repo)
    assert {t: r["state"] for t, r in rows.items()} == dict.fromkeys(tasks, "done")
    lost = sorted({task for task, _data in events(repo, "node_lost")})
    assert lost == on_worker
    for task in on_worker:
        assert rows[task]["node"] == "head"
        assert rows[task]["attempt"] == 2
        assert git(repo, "show", f"swarm/{task}:{task}.done") == "head"
        assert git(repo, "show", f"swarm/{task}:{task}.txt") == f"work of {task}"


def test_bad_input_says_so_before_anything_is_created(
    cluster: raykit.Cluster, tmp_path: Path
) -> None:
    repo, _remote, _ctl = setup_repo(tmp_path, ["b1"])
    git(repo, "remote", "set-url", "origin", str(tmp_path / "nowhere.git"))
    out = swarm(repo, "run", str(tmp_path / "tasks.toml"), "--ray-address", cluster.address)
    assert out.returncode == 2
    assert out.stderr.startswith("swarm: remote 'origin' (")
    assert "cannot be reached" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (repo / ".git" / "swarm" / "state.db").exists()
    assert git(repo, "branch", "--list", "swarm/*") == ""


def test_more_memory_than_any_node_offers_is_refused_before_anything(
    cluster: raykit.Cluster, tmp_path: Path
) -> None:
    repo, _remote, _ctl = setup_repo(tmp_path, ["b1"])
    manifest = tmp_path / "tasks.toml"
    manifest.write_text(manifest.read_text().replace('ray_memory = "64M"', 'ray_memory = "64G"'))
    out = swarm(repo, "run", str(manifest), "--ray-address", cluster.address)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.startswith(
        "swarm: ray_memory 64G is more than any node with agent slots offers (at most "
    )
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (repo / ".git" / "swarm" / "state.db").exists()


def test_without_ray_installed_executor_ray_is_refused(tmp_path: Path) -> None:
    repo, _remote, _ctl = setup_repo(tmp_path, ["b1"])
    shadow = tmp_path / "shadow"
    (shadow / "ray").mkdir(parents=True)
    (shadow / "ray" / "__init__.py").write_text("raise ImportError('no ray here')\n")
    env = os.environ | {"PYTHONPATH": f"{shadow}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run(
        [sys.executable, "-m", "worktree_swarm.cli", "run", str(tmp_path / "tasks.toml")],
        cwd=repo, capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == (
        "swarm: executor `ray` needs Ray on this machine: pip install 'worktree-swarm[ray]'"
    )
    assert not (repo / ".git" / "swarm" / "state.db").exists()


def test_a_secret_in_a_task_env_is_refused_before_it_reaches_ray(tmp_path: Path) -> None:
    repo, _remote, _ctl = setup_repo(tmp_path, ["e1"])
    manifest = tmp_path / "tasks.toml"
    manifest.write_text(manifest.read_text() + 'env = { API_TOKEN = "s3cr3t-value" }\n')
    out = swarm(repo, "run", str(manifest))
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == (
        "swarm: task e1: env API_TOKEN looks like a secret; with executor `ray` provision it in "
        "the nodes' environment instead (docs/cluster.md)"
    )
    assert "s3cr3t" not in out.stdout + out.stderr
    assert not (repo / ".git" / "swarm" / "state.db").exists()
