"""The node side of the Ray executor run as a node's actor runs it, without Ray: what it hands
the coordinator is redacted with the node's own secrets (the head does not know them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests import git_http
from tests.conftest import git, hang_git_at, killed_at_git, make_repo, script_interpreter
from worktree_swarm.core.errors import GitError, SwarmError
from worktree_swarm.core.task import Task
from worktree_swarm.git import quarantine
from worktree_swarm.guard import surface
from worktree_swarm.infra import redact
from worktree_swarm.run.ray_node import NodeAgent
from worktree_swarm.run.ray_node_clone import Assignment

# The value of a secret-named variable in the environment of the node's `ray start` only.
NODE_SECRET = "node-deploy-value-7b1e5d"  # noqa: S105 - a made-up secret

# Writes the node's secret in two pieces, the test's go file between them; a note and an error.
SPLIT_WRITER = """
import os, pathlib, sys, time
secret = os.environ['NODE_DEPLOY_TOKEN']
sys.stdout.write('starting\\nkey=' + secret[:9])
sys.stdout.flush()
pathlib.Path(sys.argv[1]).touch()
while not pathlib.Path(sys.argv[2]).exists():
    time.sleep(0.02)
sys.stdout.write(secret[9:] + ' done\\n')
sys.stdout.flush()
with open(os.environ['SWARM_CONTEXT'], 'a') as notes:
    notes.write('- deploy with ' + secret + '\\n')
pathlib.Path('work.txt').write_text('work')
"""

# A check that prints the node's secret and fails.
LEAKY_CHECK = "import os, sys; print('token', os.environ['NODE_DEPLOY_TOKEN']); sys.exit(1)"


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NodeAgent]:
    """A node whose environment holds a secret, and one attempt of a task there."""
    repo = make_repo(tmp_path / "repo")
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(remote)], check=True)
    git(remote, "branch", "swarm/t", "main")
    monkeypatch.setenv("NODE_DEPLOY_TOKEN", NODE_SECRET)
    monkeypatch.setattr(redact, "_current", None)  # the redactor is made again from it
    monkeypatch.setenv("SWARM_NODE_DIR", str(tmp_path / "node"))
    monkeypatch.setenv("SWARM_NODE_NAME", "n1")
    agent = tmp_path / "agent.py"
    agent.write_text(SPLIT_WRITER)
    argv = (sys.executable, str(agent), str(tmp_path / "half"), str(tmp_path / "go"))
    task = Task(
        id="t",
        prompt="p",
        agent="custom",
        agent_argv=argv,
        checks=((sys.executable, "-c", LEAKY_CHECK),),
    )
    assignment = Assignment(
        run_id="r",
        task=task,
        attempt=1,
        remote_url=str(remote),
        author="swarm <swarm@localhost>",
        identity=(),
        kill_grace=1.0,
        checkpoint_interval=0.0,
    )
    made = NodeAgent(assignment)
    try:
        yield made
    finally:
        made.discard()


def until(what: str, ready: Path | None = None, node: NodeAgent | None = None) -> None:
    """Wait for the file *ready*, or for *node*'s agent to end."""
    deadline = time.monotonic() + 60
    while not ((ready is not None and ready.exists()) or (node is not None and node.poll().ended)):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_what_a_node_hands_the_coordinator_holds_none_of_the_nodes_secrets(
    node: NodeAgent, tmp_path: Path
) -> None:
    node.prepare()
    node.start(prompt="p", session=None, resume_prompt=None)
    until("the secret's first half", ready=tmp_path / "half")
    # The agent is at work: only whole lines come back, not the first half of the secret.
    read_to, chunk = node.tail(0)
    assert chunk == b"starting\n"
    assert read_to == len(chunk)
    again, nothing = node.tail(read_to)
    assert (again, nothing) == (read_to, b"")
    (tmp_path / "go").touch()
    until("the agent's end", node=node)
    end, rest = node.tail(read_to)
    assert rest == f"key={redact.REDACTED} done\n".encode()
    assert end == node.log_path.stat().st_size  # where the node's own log ends
    assert NODE_SECRET in node.log_path.read_text()  # (the node's own copy is whole)
    assert node.tail(end) == (end, b"")
    assert NODE_SECRET not in node.log_text()
    assert node.notes_added() == f"- deploy with {redact.REDACTED}\n"
    node.finish(message="swarm: checkpoint t")
    failure, log = node.check(base="main")
    assert failure is not None
    assert "token" in log
    assert NODE_SECRET not in log + failure.summary + failure.detail


def test_a_key_over_several_lines_is_redacted_in_the_log_the_ended_attempt_hands_back(
    node: NodeAgent, tmp_path: Path
) -> None:
    # Two polls may each get part of a PEM block: each alone is no key. Once the agent has
    # ended, the node redacts its whole log and the coordinator copies it again.
    node.prepare()
    node.start(prompt="p", session=None, resume_prompt=None)
    (tmp_path / "go").touch()
    until("the agent's end", node=node)
    read_to, _ = node.tail(0)
    lines = ["MIIEowIBAAKCAQEAx5Kq" + "Zm9vYmFy" * 8, "Q2xhdWRlQ29kZVNlY3JldA" * 3]
    with node.log_path.open("a") as log:  # (as a daemon it left would write on)
        log.write(f"-----BEGIN RSA PRIVATE KEY-----\n{lines[0]}\n")
    read_to, first = node.tail(read_to)
    assert lines[0].encode() not in first  # with its BEGIN line: redacted to its end
    with node.log_path.open("a") as log:
        log.write(f"{lines[1]}\n-----END RSA PRIVATE KEY-----\n")
    _, second = node.tail(read_to)
    assert lines[1].encode() in second  # alone, the rest of a key's body is no secret
    node.scrub_log()
    _, whole = node.tail(0)
    assert not [line for line in lines if line.encode() in whole]
    assert NODE_SECRET.encode() not in whole
    assert whole.startswith(b"starting\n")


@pytest.mark.parametrize(
    ("chunk", "full", "kept"),
    [
        (b"one\ntwo\npart", False, b"one\ntwo\n"),
        (b"partial line", False, b""),
        (b"a\n" + b"x" * 100, True, b"a\n"),
        (b"word " * 2000, True, b"word " * (2000 - 4096 // 5 - 1)),  # to a blank before the end
        (b"x" * 10_000, True, b"x" * 10_000),  # no blank at all: all of it
    ],
)
def test_what_a_read_of_a_log_hands_back_ends_at_a_line_or_a_blank(
    chunk: bytes, full: bool, kept: bytes
) -> None:
    from worktree_swarm.run.ray_node import _whole_lines  # noqa: PLC0415

    assert _whole_lines(chunk, full=full) == kept


def test_a_file_over_max_file_is_pushed_by_no_checkpoint_of_a_node(
    node: NodeAgent, tmp_path: Path
) -> None:
    writes = (
        "import pathlib; pathlib.Path('work.txt').write_text('work'); "
        "pathlib.Path('big.bin').write_bytes(bytes(1025))"
    )
    task = dataclasses.replace(node.a.task, agent_argv=(sys.executable, "-c", writes))
    capped = NodeAgent(dataclasses.replace(node.a, max_file=1024, task=task))
    capped.prepare()
    capped.start(prompt="p", session=None, resume_prompt=None)
    until("the agent's end", node=capped)
    remote = tmp_path / "remote.git"
    capped._snapshot()  # the running checkpoint, every checkpoint_interval
    assert git(remote, "ls-tree", "-r", "--name-only", "swarm/t") == "README.md\nwork.txt"
    # Hashed apart: in no object of the clone's either, not even one no commit holds.
    big = git(capped.work, "hash-object", "big.bin")
    found = subprocess.run(["git", "cat-file", "-e", big], cwd=capped.work, check=False)
    assert found.returncode != 0
    with pytest.raises(GitError, match=r"max_file \(1.0K: big.bin \(1.0K\)\)") as caught:
        capped.finish(message="swarm: checkpoint t")
    assert "they stay in the clone on node n1 (removed with the attempt)" in str(caught.value)
    assert git(remote, "ls-tree", "-r", "--name-only", "swarm/t") == "README.md\nwork.txt"
    assert (capped.work / "big.bin").stat().st_size == 1025


def test_a_nodes_checkpoints_carry_the_swarm_trailers(node: NodeAgent, tmp_path: Path) -> None:
    # The pushed snapshot named no task, attempt or agent, as the attempt's last checkpoint did.
    writes = "import pathlib; pathlib.Path('work.txt').write_text('work')"
    task = dataclasses.replace(node.a.task, agent_argv=(sys.executable, "-c", writes))
    running = NodeAgent(dataclasses.replace(node.a, task=task, attempt=2))
    running.prepare()
    running.start(prompt="p", session=None, resume_prompt=None)
    until("the agent's end", node=running)
    running._snapshot()  # the running checkpoint, every checkpoint_interval
    made = git(tmp_path / "remote.git", "log", "-1", "--format=%(trailers:only,unfold)", "swarm/t")
    assert made.splitlines() == ["Swarm-Task: t", "Swarm-Attempt: 2", "Swarm-Agent: custom"]
    # And the last, whoever asks for it (`swarm stop` of a run no manager watches, say).
    running.finish(message="swarm: checkpoint t attempt 2 (stopped)")
    made = git(tmp_path / "remote.git", "log", "-1", "--format=%(trailers:only,unfold)", "swarm/t")
    assert made.splitlines() == ["Swarm-Task: t", "Swarm-Attempt: 2", "Swarm-Agent: custom"]


def test_an_attempt_stopped_before_its_agent_started_pushes_nothing_and_keeps_its_clone_whole(
    node: NodeAgent, tmp_path: Path
) -> None:
    # `swarm stop` of a run no manager watches finishes every actor it finds, one still in
    # its clone or setup too: git's own files had no baseline yet, and were all "put back"
    # (removed), the config naming the remote and the alternates its objects are in with them.
    tip = node.prepare()
    (node.work / "built.txt").write_text("what a setup step made")
    node.stop()
    assert node.finish(message="swarm: checkpoint t attempt 1 (stopped)") is None
    assert node.planted() == []
    assert git(tmp_path / "remote.git", "rev-parse", "swarm/t") == tip
    assert (node.work / ".git" / "objects" / "info" / "alternates").is_file()
    assert git(node.work, "config", "remote.origin.url") == str(tmp_path / "remote.git")


# Writes its work, then waits to be stopped.
WORKER = """
import pathlib, threading
pathlib.Path('work.txt').write_text('work')
threading.Event().wait()
"""


def working(node: NodeAgent, tmp_path: Path, *, interval: float) -> NodeAgent:
    """An attempt of *node*'s task whose agent has written its work and waits to be stopped."""
    agent = tmp_path / "worker.py"
    agent.write_text(WORKER)
    argv = (sys.executable, str(agent))
    task = dataclasses.replace(node.a.task, agent_argv=argv)
    made = NodeAgent(dataclasses.replace(node.a, task=task, checkpoint_interval=interval))
    made.prepare()
    made.start(prompt="p", session=None, resume_prompt=None)
    until("the agent's work", ready=made.work / "work.txt")
    return made


def test_running_checkpoints_a_node_cannot_push_are_reported_once_per_streak(
    node: NodeAgent, tmp_path: Path
) -> None:
    remote, gone = tmp_path / "remote.git", tmp_path / "remote-gone.git"
    running = working(node, tmp_path, interval=0)  # each checkpoint taken here
    try:
        running._push_running()
        assert (running.poll().push_failures, running.poll().push_failure) == (0, "")
        remote.rename(gone)
        running._push_running()
        running._push_running()  # the same streak: not a second one
        failed = running.poll()
        assert failed.push_failures == 1
        assert "does not appear to be a git repository" in failed.push_failure
        gone.rename(remote)
        running._push_running()
        assert (running.poll().push_failures, running.poll().push_failure) == (1, "")
        assert git(remote, "show", "swarm/t:work.txt") == "work"
        remote.rename(gone)
        running._push_running()  # a new streak
        assert running.poll().push_failures == 2
    finally:
        running.stop()
        running.discard()


def test_a_nodes_pusher_reports_a_remote_gone_and_pushes_again_once_it_is_back(
    node: NodeAgent, tmp_path: Path
) -> None:
    remote, gone = tmp_path / "remote.git", tmp_path / "remote-gone.git"
    running = working(node, tmp_path, interval=0.05)
    try:
        remote.rename(gone)  # the pushes from now on find it gone
        deadline = time.monotonic() + 60
        while not running.poll().push_failure:
            assert time.monotonic() < deadline, "timed out waiting for the failure"
            time.sleep(0.02)
        assert running.poll().push_failures == 1
        gone.rename(remote)
        while running.poll().push_failure:  # the pusher goes on, and pushes
            assert time.monotonic() < deadline, "timed out waiting for the push"
            time.sleep(0.02)
        assert git(remote, "show", "swarm/t:work.txt") == "work"
    finally:
        running.stop()
        running.discard()


def test_a_remote_s_credentials_are_kept_in_no_file_of_the_node(
    node: NodeAgent, tmp_path: Path
) -> None:
    # Each attempt clones, checkpoints and pushes over http with the login of the remote's
    # URL; the node's mirror (kept after the run) and the clone's config held it.
    token = "tok-" + "5e1f" * 8
    writes = "import pathlib; pathlib.Path('work.txt').write_text('work')"
    task = dataclasses.replace(node.a.task, agent_argv=(sys.executable, "-c", writes))
    with git_http.serving(tmp_path, "user", token) as server:
        url = server.replace("://", f"://user:{token}@") + "/remote.git"
        for number in (1, 2):  # the mirror made, then fetched
            attempt = NodeAgent(
                dataclasses.replace(node.a, task=task, attempt=number, remote_url=url)
            )
            attempt.prepare()
            attempt.start(prompt="p", session=None, resume_prompt=None)
            until("the agent's end", node=attempt)
            attempt.finish(message=f"swarm: checkpoint t attempt {number}")
            held = [
                str(path)
                for path in (tmp_path / "node").rglob("*")
                if path.is_file() and token.encode() in path.read_bytes()
            ]
            assert held == []
            assert git(attempt.work, "config", "remote.origin.url") == f"{server}/remote.git"
            attempt.discard()
    assert git(tmp_path / "remote.git", "show", "swarm/t:work.txt") == "work"
    mirrors = list((tmp_path / "node" / "mirrors").glob("*.git"))
    assert [git(m, "config", "remote.origin.url") for m in mirrors] == [f"{server}/remote.git"]


def test_a_node_snapshot_leaves_the_clones_split_index_readable(node: NodeAgent) -> None:
    # The snapshot's `write-tree` rewrote its own index, writing a new shared index (at once,
    # with splitIndex.maxPercentChange 0) and deleting those older than
    # splitIndex.sharedIndexExpire (`now`): the one the clone's index names among them. Every
    # git in the clone (the agent's, the attempt's last checkpoint) then failed.
    ended = _ended_writing_work(node)
    settings = {"splitIndex.maxPercentChange": "0", "splitIndex.sharedIndexExpire": "now"}
    for key, value in {"core.splitIndex": "true", **settings}.items():
        git(ended.work, "config", key, value)
    (ended.work / "mine.txt").write_text("mine\n")
    git(ended.work, "add", "mine.txt")  # the clone's index, split: its shared index in .git
    ended._surface = surface.read(ended.work / ".git", ())  # that config is the user's
    assert ended._snapshot()
    assert git(ended.work, "status", "--porcelain") == "A  mine.txt\n?? work.txt"


def test_a_node_snapshot_killed_half_way_leaves_nothing_outside_the_clone(
    node: NodeAgent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its index was in a directory of the node's /tmp, left there by a snapshot killed in its
    # `add` (the actor killed with its node); now it is in the clone, gone with the next one.
    ended = _ended_writing_work(node)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    script = (
        "import pickle, sys\n"
        "from worktree_swarm.run.ray_node_clone import NodeClone\n"
        "assignment, surface = pickle.loads(bytes.fromhex(sys.argv[1]))\n"
        "clone = NodeClone(assignment)\n"
        "clone._surface = surface\n"
        "clone._snapshot()\n"
    )
    state = pickle.dumps((ended.a, ended._surface)).hex()
    killed_at_git(tmp_path, monkeypatch, "add", [sys.executable, "-c", script, state])
    assert list(scratch.iterdir()) == []
    assert ended._snapshot()  # the next one, every checkpoint_interval
    assert git(tmp_path / "remote.git", "show", "swarm/t:work.txt") == "work"
    assert list((ended.work / ".git").glob(f"{quarantine.APART_PREFIX}*")) == []
    assert git(ended.work, "status", "--porcelain") == "?? work.txt"


def test_a_clone_discarded_while_it_is_made_is_stopped_and_leaves_nothing_on_the_node(
    node: NodeAgent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `swarm stop` with no manager discards an attempt whose actor still clones its branch.
    warm = NodeAgent(dataclasses.replace(node.a, attempt=0))
    warm.prepare()  # the node's mirror: the next `clone` is the task's own
    warm.discard()
    go = tmp_path / "go"
    hung = hang_git_at(
        tmp_path, monkeypatch, "clone", then=f"while [ ! -e {go} ]; do sleep 0.05; done"
    )
    failed: list[BaseException] = []

    def prepare() -> None:
        try:
            node.prepare()
        except Exception as exc:  # what the coordinator would be handed
            failed.append(exc)

    preparing = threading.Thread(target=prepare)
    preparing.start()
    until("the clone", ready=hung)
    discarding = threading.Thread(target=node.discard)
    discarding.start()
    discarding.join(timeout=60)  # a discard that waits for the clone for ever: let it go on
    go.touch()
    preparing.join()
    discarding.join()
    assert [type(exc) for exc in failed] == [SwarmError]
    assert str(failed[0]) == "stopped on node n1 while its clone of swarm/t was made"
    assert list((tmp_path / "node").glob("runs/*")) == []  # no clone, no logs, no task dir


def test_an_attempt_discarded_before_its_clone_makes_none(node: NodeAgent, tmp_path: Path) -> None:
    node.discard()
    with pytest.raises(SwarmError, match=r"^stopped on node n1 while its clone"):
        node.prepare()
    assert list((tmp_path / "node").glob("runs/*")) == []


# A `git` whose first *step* (`fetch`, `clone`) hangs in its ref update: its ref locks taken
# (git's hook `reference-transaction`, after the hardening's `core.hooksPath`), its pid noted.
HANGING_STEP = """
import os, sys
args, real, hooks, taken, step = sys.argv[1:], {real!r}, {hooks!r}, {taken!r}, {step!r}
if step in args and not os.path.exists(taken):
    os.mkdir(taken)
    args[args.index(step):args.index(step)] = ["-c", "core.hooksPath=" + hooks]
os.execv(real, ["git", *args])
"""

# The node's prepare of a task's clone, in a process of its own (an actor's worker).
PREPARE = """
import pickle, sys
from worktree_swarm.run.ray_node_clone import NodeClone
NodeClone(pickle.loads(bytes.fromhex(sys.argv[1]))).prepare()
"""


@pytest.mark.parametrize("killed", ["actor", "git"])
@pytest.mark.parametrize("step", ["fetch", "clone"])
def test_the_next_prepare_on_a_node_copes_with_its_mirror_s_git_killed_half_way(
    node: NodeAgent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, killed: str, step: str
) -> None:
    # Ray killing the actor left its fetch of the node's mirror running (a hung one holding
    # its ref locks for ever); a fetch killed itself left them behind. Either way every
    # later attempt on the node failed: "Unable to create '.../swarm/t.lock': File exists".
    # A clone killed so left a mirror with a HEAD, taken as whole, never set `gc.auto=0`.
    if step == "fetch":
        warm = NodeAgent(dataclasses.replace(node.a, attempt=0))
        warm.prepare()  # the node's mirror: the next prepare fetches it
        warm.discard()
    repo, remote = tmp_path / "repo", tmp_path / "remote.git"
    git(repo, "commit", "-q", "--allow-empty", "-m", "later")
    git(repo, "push", "-q", str(remote), "main:swarm/t")
    hooks, real = tmp_path / "hooks", shutil.which("git")
    hooks.mkdir()
    (hooks / "reference-transaction").write_text(
        script_interpreter() + "\nimport os, pathlib, sys, time\n"
        'if sys.argv[1] == "prepared":\n'
        f"    pathlib.Path({str(tmp_path / 'git.pid')!r}).write_text(str(os.getppid()))\n"
        f"    pathlib.Path({str(tmp_path / 'hook.tmp')!r}).write_text(str(os.getpid()))\n"
        f"    os.replace({str(tmp_path / 'hook.tmp')!r}, {str(tmp_path / 'hook.pid')!r})\n"
        "    os.closerange(0, 1024)  # no pipe of git's kept open (its upload-pack's input)\n"
        "    time.sleep(600)\n"
    )
    (hooks / "reference-transaction").chmod(0o755)
    wrapper = tmp_path / "gitbin" / "git"
    wrapper.parent.mkdir()
    wrapper.write_text(
        script_interpreter()
        + HANGING_STEP.format(real=real, hooks=str(hooks), taken=str(tmp_path / "taken"), step=step)
    )
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}")
    state = pickle.dumps(dataclasses.replace(node.a, attempt=2)).hex()
    preparing = subprocess.Popen([sys.executable, "-c", PREPARE, state], start_new_session=True)
    pids: list[int] = []
    try:
        until(f"the mirror's {step} in its ref update", ready=tmp_path / "hook.pid")
        pids = [int((tmp_path / f"{name}.pid").read_text()) for name in ("git", "hook")]
        os.kill(preparing.pid if killed == "actor" else pids[0], signal.SIGKILL)
        preparing.wait(timeout=60)
        if killed == "actor":  # its git ends with it (before anything else is asked of it)
            deadline = time.monotonic() + 60
            while running(pids[0]):
                assert time.monotonic() < deadline, "its git outlived the actor's process"
                time.sleep(0.02)
        tip = node.prepare()  # the next attempt on the node
    finally:
        for pid in pids:  # the hook's sleep (and a git left running)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if preparing.poll() is None:
            preparing.kill()
            preparing.wait(timeout=30)
    assert tip == git(remote, "rev-parse", "swarm/t")
    [mirror] = (tmp_path / "node" / "mirrors").glob("*.git")
    assert git(mirror, "rev-parse", "swarm/t") == tip
    assert list(mirror.rglob("*.lock")) == []
    assert git(mirror, "config", "gc.auto") == "0"


def running(pid: int) -> bool:
    """Whether process *pid* runs (a zombie, its parent killed, does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _ended_writing_work(node: NodeAgent) -> NodeAgent:
    """An attempt of *node*'s task whose agent wrote `work.txt` and ended."""
    writes = "import pathlib; pathlib.Path('work.txt').write_text('work')"
    task = dataclasses.replace(node.a.task, agent_argv=(sys.executable, "-c", writes))
    ended = NodeAgent(dataclasses.replace(node.a, task=task))
    ended.prepare()
    ended.start(prompt="p", session=None, resume_prompt=None)
    until("the agent's end", node=ended)
    return ended


def test_the_next_prepare_leaves_a_git_of_yours_in_the_node_s_mirror_alone(
    node: NodeAgent,
) -> None:
    # What a killed actor's git left is ended by the mark in its environment, not by its
    # name and place: yours, at work in the mirror, is not swarm's to kill.
    warm = NodeAgent(dataclasses.replace(node.a, attempt=0))
    warm.prepare()  # the node's mirror
    warm.discard()
    [mirror] = Path(os.environ["SWARM_NODE_DIR"], "mirrors").glob("*.git")
    yours = subprocess.Popen(
        ["git", "cat-file", "--batch"], cwd=mirror, stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        node.prepare()
        assert yours.poll() is None  # still at work
    finally:
        yours.kill()
        yours.communicate(timeout=30)  # its stdin closed too


# Switches its clone to another branch of the remote (argv[1]), then writes its work.
SWITCHER = """
import pathlib, subprocess, sys
subprocess.run(['git', 'checkout', '-q', *sys.argv[1:]], check=True)
pathlib.Path('work.txt').write_text('work')
"""


@pytest.mark.parametrize(
    ("how", "to"), [(("other",), "other"), (("--detach", "origin/other"), "a detached HEAD at ")]
)
def test_a_clone_its_agent_switched_pushes_its_work_on_the_task_branch_only(
    node: NodeAgent, tmp_path: Path, how: tuple[str, ...], to: str
) -> None:
    # The clone was checkpointed on whatever its agent switched to, force-pushed as the task's
    # branch: another branch's history (here one commit of it) became the task's work.
    remote = tmp_path / "remote.git"
    repo = tmp_path / "repo"
    git(repo, "checkout", "-q", "-b", "other")
    (repo / "other.txt").write_text("not the task's\n")
    git(repo, "add", "other.txt")
    git(repo, "commit", "-q", "-m", "other history")
    git(repo, "push", "-q", str(remote), "other")
    argv = (sys.executable, "-c", SWITCHER, *how)
    task = dataclasses.replace(node.a.task, agent_argv=argv)
    switching = NodeAgent(dataclasses.replace(node.a, task=task))
    tip = switching.prepare()
    switching.start(prompt="p", session=None, resume_prompt=None)
    until("the agent's end", node=switching)
    switching._snapshot()  # the running checkpoint: HEAD still where its agent left it
    assert git(remote, "rev-parse", "swarm/t^") == tip
    assert git(remote, "ls-tree", "--name-only", "swarm/t").splitlines()[-1] == "work.txt"
    pushed = switching.finish(message="swarm: checkpoint t attempt 1 (success)")
    assert pushed == git(remote, "rev-parse", "swarm/t")
    assert git(remote, "merge-base", "--is-ancestor", tip, "swarm/t") == ""
    assert "other history" not in git(remote, "log", "--format=%s", "swarm/t")
    assert git(remote, "show", "swarm/t:work.txt") == "work"
    assert git(switching.work, "symbolic-ref", "HEAD") == "refs/heads/swarm/t"
    assert str(switching.switched()).startswith(to)
