"""`swarm run --sandbox` end to end: real bubblewrap, the real CLI, fake agents that probe it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests import anthropic_stub as stub_module
from tests import test_resilience
from tests.anthropic_stub import AnthropicStub, Text, ToolUse
from tests.conftest import git, script_interpreter
from tests.test_claude_e2e import CLAUDE
from tests.test_resilience import calls, plan
from tests.test_run import (
    argv_toml,
    branch_file,
    checkout_snapshot,
    manifest,
    pid_alive,
    status_json,
    swarm,
    swarm_bg,
    wait_for,
)
from tests.test_swarm_claude_e2e import swarm_with_claude
from worktree_swarm.core.errors import BadInputError
from worktree_swarm.guard import sandbox
from worktree_swarm.infra import boxinit

AgentFactory = Callable[[str], list[str]]
fake_claude = test_resilience.fake_claude
anthropic_stub = stub_module.anthropic_stub


def _unavailable() -> str | None:
    try:
        sandbox.check_available()
    except BadInputError as exc:
        return str(exc)
    return None


UNAVAILABLE = _unavailable()
needs_bwrap = pytest.mark.skipif(
    UNAVAILABLE is not None, reason=f"bubblewrap cannot sandbox here: {UNAVAILABLE}"
)

# Tries every write in $PROBE_TARGETS (name -> path) and records what happened to each in
# results.json in its worktree, the one place it may write; then the ordinary work of an agent.
PROBE_AGENT = r"""
import ctypes, errno, json, os, pathlib, subprocess, sys
results = {}
# Escapes first: had one worked, the writes below would get through.
try:
    os.kill(int(os.environ["PROBE_TEST_PID"]), 0)
    results["signal_host_process"] = "sent"
except OSError as exc:
    results["signal_host_process"] = errno.errorcode.get(exc.errno, str(exc.errno))
libc = ctypes.CDLL(None, use_errno=True)
MS_REMOUNT, MS_BIND = 32, 4096  # mount -o remount,bind,rw /
if libc.mount(b"none", b"/", None, MS_REMOUNT | MS_BIND, None) == 0:
    results["remount_rw"] = "remounted"
else:
    results["remount_rw"] = errno.errorcode.get(ctypes.get_errno(), "?")
targets = json.loads(os.environ["PROBE_TARGETS"])
config_dir = pathlib.Path(os.environ["SWARM_CONTEXT"]).parent / os.environ["SWARM_TASK_ID"]
targets["config_dir"] = str(config_dir / "agent-config" / "settings.json")
targets["tmpdir"] = os.path.join(os.environ["TMPDIR"], "scratch.txt")
targets["worktree"] = "work.txt"
# A daemon left running when the agent exits: the kernel ends it with the sandbox.
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", os.environ["PROBE_TOKEN"]],
                 start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)
for name, path in targets.items():
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)  # what is missing
        with open(path, "a") as fh:
            fh.write("written by the agent\n")
        results[name] = "written"
    except OSError as exc:
        results[name] = errno.errorcode.get(exc.errno, str(exc.errno))
note = subprocess.run([sys.executable, "-m", "worktree_swarm.cli", "note", "sandbox fact"],
                      capture_output=True, text=True)
results["note"] = note.returncode if note.returncode else "written"
subprocess.run(["git", "add", "work.txt"], check=True)
commit = subprocess.run(["git", "commit", "-q", "-m", "agent commit inside the sandbox"],
                        capture_output=True, text=True)
results["commit"] = commit.returncode if commit.returncode else "written"
results["TMPDIR"] = os.environ["TMPDIR"]
pathlib.Path("results.json").write_text(json.dumps(results, indent=1, sort_keys=True))
"""

SIBLING_AGENT = "import pathlib\npathlib.Path('sibling.txt').write_text('mine\\n')\n"


def user_files(repo: Path) -> dict[str, bytes]:
    """The bytes of every file of the user's checkout plus the git files that are theirs."""
    git_dir = repo / ".git"
    found = {}
    for path in sorted(repo.rglob("*")):
        rel = path.relative_to(repo)
        theirs = rel.parts[0] != ".git" or rel.parts[1:2] in {("config",), ("HEAD",), ("hooks",)}
        if theirs and path.is_file():
            found[str(rel)] = path.read_bytes()
    assert (git_dir / "config").is_file()  # the walk really covered .git
    return found


@needs_bwrap
def test_sandboxed_agent_writes_only_in_its_own_places(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    (repo / "notes.txt").write_text("the user's uncommitted edit\n")
    common = repo / ".git"
    # A repository made without git's template: protected directories it lacks are made
    # empty before the run, so the agent cannot make them (and plant attributes or hooks).
    shutil.rmtree(common / "hooks", ignore_errors=True)
    shutil.rmtree(common / "info", ignore_errors=True)
    before, before_files = checkout_snapshot(repo), user_files(repo)
    sibling = repo.parent / "repo.swarm" / "sib"
    own = repo.parent / "repo.swarm" / "probe"
    in_tmp = Path("/tmp") / f"swarm-sandbox-test-{uuid.uuid4().hex}"
    home = Path(os.environ["HOME"])
    (home / "cache").mkdir()
    token = f"swarm-sandbox-daemon-{uuid.uuid4().hex}"
    outside = {
        "main_checkout": str(repo / "README.md"),
        "main_new_file": str(repo / "new.txt"),
        "sibling_worktree": str(sibling / "sibling.txt"),
        "git_hook": str(common / "hooks" / "pre-commit"),
        "git_config": str(common / "config"),
        "swarm_state": str(common / "swarm" / "state.db"),
        "home": str(Path(os.environ["HOME"]) / ".agent-was-here"),
        "tmp": str(in_tmp),
        "git_info": str(common / "info" / "attributes"),
        "git_modules": str(common / "modules" / "planted" / "config"),
        "alternates": str(common / "objects" / "info" / "alternates"),
        "checkout_head": str(common / "HEAD"),
        "checkout_index": str(common / "index"),
        "sibling_admin_dir": str(common / "worktrees" / "sib" / "HEAD"),
        "own_dotgit_file": str(own / ".git"),
        "own_commondir": str(common / "worktrees" / "probe" / "commondir"),
        "own_gitdir": str(common / "worktrees" / "probe" / "gitdir"),
    }
    targets = {**outside, "writable": str(home / "cache" / "x")}  # through sandbox_writable
    path = manifest(
        repo,
        f"""
[defaults]
sandbox = true
sandbox_writable = ["~/cache", "~/no-such-dir"]
[[task]]
id = "sib"
prompt = "write your own file"
agent = {argv_toml(write_agent(SIBLING_AGENT))}
[[task]]
id = "probe"
prompt = "try to write everywhere"
depends_on = ["sib"]
agent = {argv_toml(write_agent(PROBE_AGENT))}
env = {{ PROBE_TARGETS = {json.dumps(json.dumps(targets))}, PROBE_TEST_PID = "{os.getpid()}", \
PROBE_TOKEN = "{token}" }}
""",
    )
    out = swarm(repo, "run", path)
    assert out.returncode == 0, out.stdout + out.stderr
    results = json.loads(branch_file(repo, "swarm/probe", "results.json"))
    run_dir = Path(results.pop("TMPDIR")).parents[1]
    # /tmp is the box's own (written there, never here): so is $HOME where it lies in /tmp.
    private = {"tmp", *(["home"] if home.is_relative_to("/tmp") else [])}
    assert results == {
        **dict.fromkeys(outside, "EROFS"),
        **dict.fromkeys(private, "written"),
        "worktree": "written",
        "writable": "written",
        "tmpdir": "written",
        "config_dir": "written",
        "note": "written",
        "commit": "written",
        "signal_host_process": "ESRCH",
        "remount_rw": "EPERM",
    }
    assert {t: row["state"] for t, row in status_json(repo).items()} == {
        "sib": "done",
        "probe": "done",
    }
    assert checkout_snapshot(repo) == before
    assert user_files(repo) == before_files
    assert not in_tmp.exists()
    assert not (home / ".agent-was-here").exists()
    assert not (home / "no-such-dir").exists()
    assert not [p for p in psutil.process_iter(["cmdline"]) if token in (p.info["cmdline"] or [])]
    assert (sibling / "sibling.txt").read_text() == "mine\n"
    assert "agent commit inside the sandbox" in git(repo, "log", "--format=%s", "swarm/probe")
    assert "[probe] sandbox fact" in (run_dir / "findings.md").read_text()
    settings = run_dir / "probe" / "agent-config" / "settings.json"
    assert settings.read_text() == "written by the agent\n"
    assert not (run_dir / "probe" / "tmp").exists()  # the private temp dir is removed


# Connects to the socket in $PROBE_SOCKET as a client of the server there would: tmux's
# `run-shell` (which runs a command in the server, outside the box), or a bare connect.
SOCKET_AGENT = r"""
import errno, os, pathlib, socket, subprocess
path, marker = os.environ["PROBE_SOCKET"], os.environ["PROBE_MARKER"]
if os.environ["PROBE_HOW"] == "tmux":
    done = subprocess.run(["tmux", "-S", path, "run-shell", f"touch {marker}"],
                          capture_output=True, text=True)
    result = f"tmux exit {done.returncode}"
else:
    try:
        socket.socket(socket.AF_UNIX).connect(path)
        result = "connected"
    except OSError as exc:
        result = errno.errorcode.get(exc.errno, str(exc.errno))
pathlib.Path("result.txt").write_text(result)
"""


@needs_bwrap
@pytest.mark.parametrize("how", ["tmux", "listening socket"])
def test_a_sandboxed_agent_cannot_reach_your_tmux_or_any_socket_in_tmp(
    repo: Path, write_agent: AgentFactory, how: str
) -> None:
    """A socket is reachable on a read-only mount: through your tmux server's, `tmux run-shell`
    ran any command outside the box, as you (an overnight run is started from tmux)."""
    if how == "tmux" and shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (.ci/run installs it)")
    place = Path("/tmp") / f"swarm-sandbox-test-{uuid.uuid4().hex}"  # like /tmp/tmux-UID/
    place.mkdir(mode=0o700)
    path, marker = place / "default", place / "escaped"
    server: socket.socket | None = None
    try:
        if how == "tmux":
            subprocess.run(["tmux", "-S", str(path), "new-session", "-d", "sleep 600"], check=True)
        else:
            server = socket.socket(socket.AF_UNIX)
            server.bind(str(path))
            server.listen()
        env = f'PROBE_SOCKET = "{path}", PROBE_MARKER = "{marker}", PROBE_HOW = "{how}"'
        agent = argv_toml(write_agent(SOCKET_AGENT))
        text = f'[defaults]\nsandbox = true\n[[task]]\nid = "t"\nprompt = "x"\nagent = {agent}\n'
        out = swarm(repo, "run", manifest(repo, f"{text}env = {{ {env} }}\n"))
        assert out.returncode == 0, out.stdout + out.stderr
        result = branch_file(repo, "swarm/t", "result.txt")
        assert result == ("tmux exit 1" if how == "tmux" else "ENOENT")
        assert not marker.exists()
    finally:
        if how == "tmux":
            subprocess.run(["tmux", "-S", str(path), "kill-server"], check=False)
        if server is not None:
            server.close()
        shutil.rmtree(place, ignore_errors=True)


@needs_bwrap
def test_a_sandboxed_agent_runs_from_a_venv_in_tmp_and_has_a_tmp_of_its_own(repo: Path) -> None:
    """The box's /tmp is private: what the agent's command names there comes back read-only,
    for a venv's `bin/python` (a link out of it) the whole venv, its packages with it."""
    place = Path("/tmp") / f"swarm-sandbox-test-{uuid.uuid4().hex}"
    try:
        venv = place / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        (site,) = venv.glob("lib/python*/site-packages")
        (site / "probe_module.py").write_text("WHERE = 'the venv'\n")
        (place / "yours.txt").write_text("yours\n")
        code = (
            "import pathlib, probe_module\n"
            "pathlib.Path('/tmp/scratch').write_text('mine')\n"
            f"seen = [probe_module.WHERE, pathlib.Path('/tmp/scratch').read_text(),\n"
            f"        str(pathlib.Path({str(place / 'yours.txt')!r}).exists())]\n"
            "pathlib.Path('seen.txt').write_text('|'.join(seen))\n"
        )
        agent = argv_toml([str(venv / "bin" / "python"), "-c", code])
        text = f'[defaults]\nsandbox = true\n[[task]]\nid = "v"\nprompt = "x"\nagent = {agent}\n'
        out = swarm(repo, "run", manifest(repo, text))
        assert out.returncode == 0, out.stdout + out.stderr
        assert branch_file(repo, "swarm/v", "seen.txt") == "the venv|mine|False"
        assert not Path("/tmp/scratch").exists() or Path("/tmp/scratch").read_text() != "mine"
    finally:
        shutil.rmtree(place, ignore_errors=True)


@pytest.mark.parametrize("how", ["flag", "manifest", "swarm.toml"])
def test_sandbox_without_bubblewrap_is_refused_before_anything_is_created(
    repo: Path, tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"  # git but no bwrap
    bin_dir.mkdir()
    real_git = shutil.which("git")
    assert real_git is not None
    (bin_dir / "git").symlink_to(real_git)
    monkeypatch.setenv("PATH", str(bin_dir))
    if how == "flag":
        out = swarm(repo, "run", "--sandbox", "--agent", "scripted", "-t", "a=hi")
    elif how == "manifest":
        path = manifest(repo, '[defaults]\nsandbox = true\n[[task]]\nid = "a"\nprompt = "hi"\n')
        out = swarm(repo, "run", "--agent", "scripted", path)
    else:
        (repo / "swarm.toml").write_text("sandbox = true\n")
        out = swarm(repo, "run", "--agent", "scripted", "-t", "a=hi")
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.count("\n") == 1
    assert "bubblewrap" in out.stderr
    assert "--sandbox" in out.stderr
    assert not git(repo, "branch", "--list", "swarm/*")
    assert not (repo / ".git" / "swarm").exists()
    assert not (repo.parent / "repo.swarm").exists()


def test_hard_linked_copy_files_with_the_sandbox_are_refused_before_anything_is_created(
    repo: Path,
) -> None:
    (repo / ".env").write_text("API_URL=https://example.invalid\n")
    path = manifest(
        repo,
        '[defaults]\nsandbox = true\ncopy_mode = "hardlink"\ncopy = [".env"]\n'
        '[[task]]\nid = "a"\nprompt = "hi"\n',
    )
    out = swarm(repo, "run", "--agent", "scripted", path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr == (
        'swarm: copy_mode = "hardlink" with sandbox: a hard-linked `copy` file is your '
        "checkout's own file, which the sandboxed agent could write through the link; use "
        'copy_mode = "auto" or "copy"\n'
    )
    assert not (repo / ".git" / "swarm").exists()


def test_bubblewrap_that_cannot_create_namespaces_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("the sandbox is Linux only")
    fake = tmp_path / "bwrap"  # what bwrap says where user namespaces are disabled
    fake.write_text(
        "#!/bin/sh\necho 'bwrap: No permissions to create new namespace, likely because "
        "the kernel does not allow non-privileged user namespaces.' >&2\nexit 1\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(BadInputError, match="No permissions to create new namespace") as info:
        sandbox.check_available()
    assert "\n" not in str(info.value)
    assert "run without --sandbox" in str(info.value)


# Forks a grandchild that leaves the process group; both only ever write in the worktree.
HANGING_TREE = r"""
import os, pathlib, time
pathlib.Path("partial.txt").write_text("half done")
if os.fork() == 0:
    os.setsid()
    pathlib.Path("grandchild.txt").write_text("up")
    while True:
        time.sleep(1)
while True:
    time.sleep(1)
"""


@needs_bwrap
@pytest.mark.parametrize("manager", ["alive", "killed"])
def test_stop_kills_the_whole_sandboxed_tree(
    repo: Path, write_agent: AgentFactory, manager: str
) -> None:
    path = manifest(
        repo,
        f"[defaults]\nsandbox = true\nagent = {argv_toml(write_agent(HANGING_TREE))}\n"
        'kill_grace = "1s"\n[[task]]\nid = "hang"\nprompt = "never ends"\n',
    )
    proc = swarm_bg(repo, "run", path)
    try:
        worktree = repo.parent / "repo.swarm" / "hang"
        wait_for((worktree / "grandchild.txt").exists, what="the sandboxed tree")
        leader = psutil.Process(int(str(status_json(repo)["hang"]["pid"])))
        tree = [leader, *leader.children(recursive=True)]
        # bwrap, its reaper in the new PID namespace, the agent and its grandchild.
        assert len(tree) >= 4, [p.cmdline() for p in tree]
        if manager == "killed":
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            assert all(pid_alive(p.pid) for p in tree)  # no --die-with-parent
        out = swarm(repo, "stop", "hang")
        assert out.returncode == 0, out.stdout + out.stderr
        if manager == "alive":
            assert proc.wait(timeout=60) == 1
    finally:
        proc.kill()
    survivors = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert survivors == []
    assert status_json(repo)["hang"]["state"] == "stopped"
    assert branch_file(repo, "swarm/hang", "partial.txt") == "half done"


@needs_bwrap
def test_resume_adopts_a_live_sandboxed_agent(
    repo: Path, tmp_path: Path, fake_claude: Path
) -> None:
    # The fake claude records its calls in fake_claude/: writable through sandbox_writable.
    plan(fake_claude, "wait", "wait")
    path = manifest(
        repo,
        f'[defaults]\nagent = "claude"\nsandbox = true\nsandbox_writable = ["{fake_claude}"]\n'
        '[[task]]\nid = "wait"\nprompt = "wait for the go file"\n',
    )
    proc = swarm_bg(repo, "run", path)
    wait_for((fake_claude / "wait.pid").exists, what="the sandboxed agent")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    bin_dir = tmp_path / "nobwrap"  # git but no bwrap
    bin_dir.mkdir()
    real_git = shutil.which("git")
    assert real_git is not None
    (bin_dir / "git").symlink_to(real_git)
    refused = subprocess.run(
        [sys.executable, "-m", "worktree_swarm.cli", "resume"],
        cwd=repo, env={**os.environ, "PATH": str(bin_dir)},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "bubblewrap" in refused.stderr
    assert status_json(repo)["wait"]["state"] == "running"  # untouched, resumable later
    resumed = swarm_bg(repo, "resume")
    try:
        wait_for(lambda: bool(status_json(repo)["wait"]["alive"]), what="adoption")
        (fake_claude / "go").touch()
        assert resumed.wait(timeout=60) == 0
    finally:
        resumed.kill()
    assert status_json(repo)["wait"]["state"] == "done"
    assert branch_file(repo, "swarm/wait", "wait.txt") == "finished"
    assert len(calls(fake_claude, "wait")) == 1  # adopted, never launched again
    assert not list((repo / ".git" / "swarm" / "runs").glob("*/wait/tmp"))


@needs_bwrap
@pytest.mark.slow
@pytest.mark.skipif(CLAUDE is None, reason="Claude Code CLI not installed (see .ci/run)")
def test_real_claude_works_in_the_sandbox_and_cannot_write_outside(
    repo: Path, anthropic_stub: AnthropicStub
) -> None:
    # IS_SANDBOX=1: Claude Code refuses bypassPermissions as root unless told it is sandboxed.
    worktree = repo.parent / "repo.swarm" / "greet"
    # Not in /tmp, where the box writes a /tmp of its own (and where this test's checkout is).
    outside = Path("/etc") / f"swarm-escaped-{uuid.uuid4().hex}.txt"
    anthropic_stub.queue(
        ToolUse(name="Write", input={"file_path": str(outside), "content": "escaped\n"}),
        ToolUse(name="Write", input={"file_path": str(worktree / "hello.txt"), "content": "hi\n"}),
        Text(text="Wrote hello.txt."),
    )
    out = swarm_with_claude(
        repo,
        anthropic_stub,
        '[defaults]\nsandbox = true\nagent = ["claude", "-p", "{prompt}", "--output-format",'
        ' "stream-json", "--verbose", "--permission-mode", "bypassPermissions"]\n'
        'env = { IS_SANDBOX = "1" }\n'
        '[[task]]\nid = "greet"\nprompt = "Create hello.txt saying hi"\n',
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert git(repo, "show", "swarm/greet:hello.txt") == "hi"
    assert not outside.exists()
    # bypassPermissions: claude itself allows the write, the sandbox refuses it.
    first = anthropic_stub.agent_requests()[1].tool_results()[0]
    assert first["is_error"] is True
    assert str(first["content"]).startswith("EROFS: read-only file system")


# An agent in a clone of its own (a Ray node's): tries each write in argv[1] (name -> path),
# commits in its clone, and records what happened in results.json there.
CLONE_PROBE = r"""
import errno, json, pathlib, subprocess, sys
results = {}
for name, path in json.loads(sys.argv[1]).items():
    try:
        with open(path, "a") as fh:
            fh.write("written by the agent\n")
        results[name] = "written"
    except OSError as exc:
        results[name] = errno.errorcode.get(exc.errno, str(exc.errno))
subprocess.run(["git", "add", "work.txt"], check=True)
commit = subprocess.run(["git", "commit", "-q", "-m", "agent commit in its clone"],
                        capture_output=True, text=True)
results["commit"] = commit.returncode if commit.returncode else "written"
pathlib.Path("results.json").write_text(json.dumps(results, sort_keys=True))
"""


@needs_bwrap
def test_an_agent_in_a_clone_of_its_own_commits_there_and_writes_nothing_else(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    # As a Ray node lays it out: a mirror, a clone whose objects come from it, the logs beside.
    node = tmp_path / "node"
    mirror, clone, logs = node / "mirror.git", node / "runs" / "r1" / "t1", node / "logs" / "t1"
    git(tmp_path, "clone", "--quiet", "--bare", str(repo), str(mirror))
    git(
        tmp_path,
        "clone",
        "--quiet",
        "--no-local",
        "--reference",
        str(mirror),
        str(repo),
        str(clone),
    )
    dotgit = clone / ".git"
    assert (dotgit / "objects" / "info" / "alternates").is_file()
    (dotgit / "hooks").mkdir(exist_ok=True)
    guarded = {p: p.read_bytes() for p in (dotgit / "config", dotgit / "objects/info/alternates")}
    box = sandbox.Confinement(
        worktree=clone,
        common_dir=dotgit,
        state_dir=logs,
        task_dir=logs,
        config_dir=logs / "agent-config",
        temp_dir=logs / "tmp",
        findings=logs / "findings.md",
    )
    targets = {
        "clone": str(clone / "work.txt"),
        "config_dir": str(box.config_dir / "settings.json"),
        "findings": str(box.findings),
        "git_config": str(dotgit / "config"),
        "git_hook": str(dotgit / "hooks" / "x"),
        "alternates": str(dotgit / "objects" / "info" / "alternates"),
        "outside": str(node / "outside.txt"),
        "mirror": str(mirror / "config"),
        "user_repo": str(repo / "README.md"),
    }
    argv, env = sandbox.confine([*write_agent(CLONE_PROBE), json.dumps(targets)], os.environ, box)
    assert argv[0] == shutil.which("bwrap")

    done = subprocess.run(
        argv, check=False, env=env, cwd=clone, capture_output=True, text=True, timeout=120
    )

    assert done.returncode == 0, done.stderr
    results = json.loads((clone / "results.json").read_text())
    assert results == {
        "clone": "written",
        "config_dir": "written",
        "findings": "written",
        "commit": "written",
        "git_config": "EROFS",
        "git_hook": "EROFS",
        "alternates": "EROFS",
        "outside": "EROFS",
        "mirror": "EROFS",
        "user_repo": "EROFS",
    }
    assert git(clone, "log", "-1", "--format=%s") == "agent commit in its clone"
    assert git(clone, "show", "HEAD:work.txt") == "written by the agent"
    assert {p: p.read_bytes() for p in guarded} == guarded
    assert not (dotgit / "hooks" / "x").exists()
    assert not (node / "outside.txt").exists()
    assert (repo / "README.md").read_text() == "hello\n"
    assert git(repo, "log", "--format=%s") == "initial"
    assert (box.config_dir / "settings.json").read_text() == "written by the agent\n"


# A `claude` that refreshes its sign-in, as the CLI does: its own copy of it, replaced whole.
REFRESHING_CLAUDE = """#!PYTHON
import json, os, pathlib, sys, time
config = pathlib.Path(os.environ["CLAUDE_CONFIG_DIR"])
soon = int((time.time() + 3600) * 1000)
(config / ".credentials.json").write_text(json.dumps({"claudeAiOauth": {
    "accessToken": "refreshed-in-the-task", "refreshToken": "r2", "expiresAt": soon}}))
pathlib.Path("w.txt").write_text("w\\n")
print(json.dumps({"type": "result", "subtype": "success", "is_error": False, "result": "ok",
                  "session_id": "0b5c2d55-1111-4222-8333-444455556666", "total_cost_usd": 0.0,
                  "usage": {"input_tokens": 1, "output_tokens": 1}}))
"""


@pytest.mark.parametrize("boxed", [pytest.param(True, marks=needs_bwrap), False])
def test_a_sandboxed_claudes_sign_in_never_reaches_your_home(
    repo: Path, tmp_path: Path, boxed: bool
) -> None:
    home = tmp_path / "user-claude"
    user = home / ".credentials.json"
    home.mkdir()
    mine = {"claudeAiOauth": {"accessToken": "mine", "refreshToken": "r1", "expiresAt": 1000}}
    user.write_text(json.dumps(mine))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "claude").write_text(REFRESHING_CLAUDE.replace("#!PYTHON", f"#!{sys.executable}"))
    (bin_dir / "claude").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CLAUDE_CONFIG_DIR": str(home)}
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN"):
        env.pop(name, None)
    args = ["run", "--agent", "claude", "-t", "t=x", *(["--sandbox"] if boxed else [])]
    out = subprocess.run(
        [sys.executable, "-m", "worktree_swarm.cli", *args],
        cwd=repo, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    token = json.loads(user.read_text())["claudeAiOauth"]["accessToken"]
    # Unboxed, a task's refresh keeps your own `claude` signed in (the agent runs as you).
    assert token == ("mine" if boxed else "refreshed-in-the-task")


# Attempt 1 leaves a file in its private temp dir and waits for the file `go` in its worktree
# (the test's own directories are hidden in the sandbox), then is rate limited; attempt 2
# writes what it finds in its temp dir into seen.txt.
TEMP_LEFT = """
import os, pathlib, sys, time
if not pathlib.Path('first.txt').exists():
    pathlib.Path(os.environ['TMPDIR'], 'left.txt').write_text('from attempt 1')
    pathlib.Path('first.txt').write_text('started')
    while not pathlib.Path('go').exists():
        time.sleep(0.02)
    print('Error: 429 Too Many Requests', flush=True)
    sys.exit(1)
pathlib.Path('seen.txt').write_text(' '.join(sorted(os.listdir(os.environ['TMPDIR']))))
"""


@needs_bwrap
def test_the_private_temp_dir_is_emptied_before_an_attempt_after_a_killed_manager(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    # The manager died during attempt 1, so nothing removed that attempt's temp dir when it
    # ended: the next attempt (after `swarm resume`) still starts with an empty one.
    agent = write_agent(TEMP_LEFT)
    path = manifest(
        repo,
        f'[defaults]\nagent = {argv_toml(agent)}\nrate_limit_backoff = "0.1s"\n'
        '[[task]]\nid = "a"\nprompt = "x"\n',
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "worktree_swarm.cli", "run", "--sandbox", path],
        cwd=repo, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    worktree = repo.parent / "repo.swarm" / "a"
    try:
        wait_for((worktree / "first.txt").exists, what="attempt 1")
        os.killpg(proc.pid, signal.SIGKILL)  # the manager dies; its agent works on
        proc.wait(timeout=30)
    finally:
        (worktree / "go").touch()
    task_dir = next((repo / ".git" / "swarm" / "runs").glob("*/a"))
    # Its shim writes down how it ended (its pid is the sandbox's own, not this machine's).
    wait_for((task_dir / "attempt-1.exit.json").exists, what="attempt 1 to end")
    temp = task_dir / "tmp"
    assert (temp / "left.txt").exists()  # nobody removed it: its manager was gone
    out = swarm(repo, "resume")
    assert out.returncode == 0, out.stdout + out.stderr
    assert status_json(repo)["a"]["state"] == "done"
    assert status_json(repo)["a"]["attempt"] == 2
    assert branch_file(repo, "swarm/a", "seen.txt") == ""


# Opens and locks swarm's own files (a lock needs no write access), reads its own prompt and
# gitconfig and a sibling's prompt, and records what happened in results.json.
STATE_PROBE = r"""
import errno, fcntl, json, os, pathlib, subprocess, sys
state = pathlib.Path(os.environ["SWARM_CONTEXT"]).parents[2]
run_dir = pathlib.Path(os.environ["SWARM_CONTEXT"]).parent
results = {}
def attempt(name, action):
    try:
        results[name] = action()
    except OSError as exc:
        results[name] = errno.errorcode.get(exc.errno, str(exc.errno))
def lock(name, how):
    fd = os.open(state / name, os.O_RDONLY)
    how(fd)  # held until the agent exits
    return "locked"
# SQLite's write lock: a read lock on this byte of the shared memory fails every write.
attempt("store_write_lock", lambda: lock(
    "state.db-shm", lambda fd: fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, 120)))
attempt("store", lambda: lock("state.db", lambda fd: fcntl.flock(fd, fcntl.LOCK_SH)))
attempt("repo_lock", lambda: lock(
    "repo.lock", lambda fd: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)))
# Where the findings file is, nothing but the file itself: no lock file to hold, and the
# file cannot be swapped for a symlink or a FIFO.
attempt("findings_lock", lambda: os.open(run_dir / "findings.md.lock", os.O_RDONLY) and "opened")
attempt("unlink_findings", lambda: os.unlink(os.environ["SWARM_CONTEXT"]) or "unlinked")
attempt("sibling_prompt", lambda: len((run_dir / "sib" / "prompt-1.md").read_text()) and "read")
attempt("own_prompt", lambda: pathlib.Path(sys.argv[1]).read_text().splitlines()[0])
config = subprocess.run(["git", "config", "--global", "--list"], capture_output=True)
results["own_gitconfig"] = config.returncode
pathlib.Path("results.json").write_text(json.dumps(results, sort_keys=True))
"""


@needs_bwrap
def test_a_sandboxed_agent_can_neither_lock_nor_read_swarms_state(
    repo: Path, write_agent: AgentFactory
) -> None:
    # A file the agent can open, it can lock. Held, a read lock on the store's shared memory
    # failed the manager's next write ("database is locked" after 30 s): a sibling that
    # finished meanwhile ended as an internal error, its work uncommitted. One on
    # `repo.lock` held off every worktree swarm makes or removes. Only its own task's files
    # are there for it to read. The run's findings file it can write but not replace (nor
    # any lock file beside it: one held silenced every other agent's `swarm note`).
    path = manifest(
        repo,
        f"""
[defaults]
sandbox = true
[[task]]
id = "sib"
prompt = "the sibling's prompt"
agent = {argv_toml(write_agent(SIBLING_AGENT))}
[[task]]
id = "probe"
prompt = "probe the state"
depends_on = ["sib"]
agent = {argv_toml([*write_agent(STATE_PROBE), "{prompt_file}"])}
""",
    )
    out = swarm(repo, "run", path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(branch_file(repo, "swarm/probe", "results.json")) == {
        "store_write_lock": "ENOENT",
        "store": "ENOENT",
        "repo_lock": "ENOENT",
        "findings_lock": "ENOENT",
        "unlink_findings": "EROFS",
        "sibling_prompt": "ENOENT",
        "own_prompt": "probe the state",
        "own_gitconfig": 0,
    }


# A fake `gemini`: its first attempt swaps the system-defaults file swarm writes into its
# config dir (outside the box, before every attempt) for a symlink to a file of yours, and
# hits a rate limit; its second does the work.
GEMINI_LINK = """
import os, pathlib, sys
defaults = os.environ["GEMINI_CLI_SYSTEM_DEFAULTS_PATH"]
if not pathlib.Path("first.txt").exists():
    pathlib.Path("first.txt").write_text("planted")
    os.unlink(defaults)
    os.symlink(sys.argv[-1], defaults)
    print("Error: 429 Too Many Requests", flush=True)
    sys.exit(1)
pathlib.Path("done.txt").write_text("done")
"""


@needs_bwrap
def test_swarm_never_writes_a_gemini_agents_settings_through_a_link_it_planted(
    repo: Path, tmp_path: Path
) -> None:
    yours = tmp_path / "yours.txt"  # outside the repository: the guard does not watch it
    yours.write_text("your file\n")
    gemini = tmp_path / "bin" / "gemini"
    gemini.parent.mkdir()
    gemini.write_text(f"{script_interpreter()}\n{GEMINI_LINK}")
    gemini.chmod(0o755)
    path = manifest(
        repo,
        f'[defaults]\nsandbox = true\nrate_limit_backoff = "0.1s"\n'
        f'[[task]]\nid = "g"\nprompt = "x"\nagent = {argv_toml([str(gemini), str(yours)])}\n',
    )
    out = swarm(repo, "run", path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert status_json(repo)["g"]["attempt"] == 2
    assert yours.read_text() == "your file\n"


# Locks the git dir and every file at its top as soon as the manager is gone (a lock needs no
# write access), then works on forever.
GIT_DIR_LOCKS = """
import fcntl, os, pathlib, subprocess, time
common = pathlib.Path(subprocess.run(
    ["git", "rev-parse", "--path-format=absolute", "--git-common-dir"],
    capture_output=True, text=True, check=True).stdout.strip())
paths = [common, *(p for p in common.iterdir() if p.is_file())]
fds = [os.open(p, os.O_RDONLY) for p in paths]
pathlib.Path("started").write_text("waiting for the manager to go")
for fd in fds:
    fcntl.flock(fd, fcntl.LOCK_EX)
pathlib.Path("held").write_text("\\n".join(p.name for p in paths))
time.sleep(600)
"""


@needs_bwrap
def test_a_sandboxed_agent_cannot_hold_off_swarm_once_its_manager_died(
    repo: Path, write_agent: AgentFactory
) -> None:
    # With the manager's lock on the git dir itself, the agent took it when the manager died:
    # `swarm stop` waited for a manager that was gone and gave up, `swarm resume` said the
    # state directory was deleted under a live one, and nothing of swarm could end the agent.
    path = manifest(
        repo,
        f'[defaults]\nsandbox = true\nkill_grace = "1s"\n'
        f'[[task]]\nid = "a"\nprompt = "x"\nagent = {argv_toml(write_agent(GIT_DIR_LOCKS))}\n',
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "worktree_swarm.cli", "run", path],
        cwd=repo, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    worktree = repo.parent / "repo.swarm" / "a"
    wait_for((worktree / "started").exists, what="the agent")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    wait_for((worktree / "held").exists, what="the agent to lock everything", timeout=30)
    out = swarm(repo, "stop")
    assert out.returncode == 0, out.stdout + out.stderr
    assert status_json(repo)["a"]["state"] == "stopped"
    assert not pid_alive(int(str(status_json(repo)["a"]["pid"])))


# Starts a process of its own session, then stops the box's PID 1 with PTRACE_ATTACH, and
# exits. bwrap's own init, stopped, never saw the agent end: the box and what the agent left
# in it lived on, and the task ran until its timeout.
PTRACE_INIT = r"""
import ctypes, errno, os, pathlib, subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import pathlib, time\n"
                  "pathlib.Path('child.txt').write_text('up')\n"
                  "for _ in range(600): time.sleep(0.1)", os.environ["PROBE_TOKEN"]],
                 start_new_session=True)
while not pathlib.Path("child.txt").exists():
    time.sleep(0.01)
libc = ctypes.CDLL(None, use_errno=True)
PTRACE_ATTACH = 16
attached = libc.ptrace(PTRACE_ATTACH, 1, 0, 0) == 0
pathlib.Path("attach.txt").write_text(
    "attached" if attached else errno.errorcode.get(ctypes.get_errno(), "?"))
"""


# A process it leaves behind seizes the agent itself (PTRACE_SEIZE of its parent), and the
# agent exits: the kernel keeps that exit from the box's init until the tracer lets go, and the
# box lived on until the task's timeout. (Where Yama forbids tracing a parent, it cannot.)
PTRACE_AGENT = r"""
import os, pathlib, subprocess, sys, time
code = ("import ctypes, os, pathlib, time\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "ok = libc.ptrace(0x4206, os.getppid(), 0, 0) == 0\n"
        "pathlib.Path('seized.txt').write_text('seized' if ok else str(ctypes.get_errno()))\n"
        "for _ in range(600): time.sleep(0.1)\n")
subprocess.Popen([sys.executable, "-c", code, os.environ["PROBE_TOKEN"]], start_new_session=True)
while not pathlib.Path("seized.txt").exists():
    time.sleep(0.01)
"""


@needs_bwrap
@pytest.mark.parametrize("tracing", ["init", "agent"])
def test_the_box_ends_with_its_agent_even_after_it_ptraced_the_boxs_init(
    repo: Path, write_agent: AgentFactory, tracing: str
) -> None:
    token = f"box-child-{uuid.uuid4()}"
    agent = write_agent(PTRACE_INIT if tracing == "init" else PTRACE_AGENT)
    path = manifest(
        repo,
        f'[defaults]\nsandbox = true\nkill_grace = "1s"\ntimeout = "30s"\n'
        f'[[task]]\nid = "t"\nprompt = "x"\nagent = {argv_toml(agent)}\n'
        f'env = {{ PROBE_TOKEN = "{token}" }}\n',
    )
    try:
        out = swarm(repo, "run", path)
        assert out.returncode == 0, out.stdout + out.stderr
        assert status_json(repo)["t"]["state"] == "done"
        if tracing == "init":
            assert branch_file(repo, "swarm/t", "attach.txt") == "EPERM"
    finally:
        left = [p for p in psutil.process_iter(["cmdline"]) if token in (p.info["cmdline"] or [])]
        for process in left:
            process.kill()
    assert left == []


def box_init(*command: str) -> subprocess.Popen[str]:
    """The sandbox's PID 1 as bubblewrap starts it, here without a box, running *command*."""
    return subprocess.Popen(
        sandbox.under_init(command),  # the very command line the box runs
        stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("script", "code"),
    [("exit 3", 3), ("kill -9 $$", 128 + signal.SIGKILL), (":", 0)],
)
def test_the_box_init_exits_as_its_command_did(script: str, code: int) -> None:
    with box_init("sh", "-c", script) as init:
        assert init.wait(timeout=60) == code


def test_the_box_init_passes_a_stop_on_to_its_command(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    with box_init(
        sys.executable, "-c",
        "import pathlib, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(5))\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "time.sleep(600)\n",
    ) as init:  # fmt: skip
        wait_for(ready.exists, what="the command")
        init.send_signal(signal.SIGTERM)
        assert init.wait(timeout=60) == 5


def test_the_box_init_without_a_command_says_how_it_is_used() -> None:
    with box_init() as init:
        _, err = init.communicate(timeout=60)
    assert (init.returncode, err) == (2, "usage: boxinit.py -- ARGV...\n")


def test_the_box_init_says_what_it_could_not_start() -> None:
    with box_init("no-such-agent-program") as init:
        _, err = init.communicate(timeout=60)
    assert init.returncode == 127
    assert err == "swarm: cannot start 'no-such-agent-program': No such file or directory\n"


def test_the_box_init_tells_an_exit_its_tracer_hides_from_a_pidfd_and_the_kernels_record(
    tmp_path: Path,
) -> None:
    # Traced, an exited agent is a zombie its parent cannot reap: the init tells its end from
    # a pidfd, and its code from /proc (what the kernel recorded), not from waitpid.
    gone = tmp_path / "gone"
    child = subprocess.Popen(["sh", "-c", f"while [ ! -e {gone} ]; do sleep 0.05; done; exit 3"])
    watch = boxinit._ended_watch(child.pid)
    assert watch is not None
    try:
        assert not boxinit._readable(watch)  # running
        gone.touch()
        wait_for(
            lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE,
            what="the child to exit, not reaped",
        )
        assert boxinit._readable(watch)
        assert os.waitstatus_to_exitcode(boxinit._exit_status(child.pid)) == 3
    finally:
        os.close(watch)
        child.wait(timeout=60)
    # Gone whole (reaped): nothing to read, taken for killed.
    assert boxinit._exit_status(child.pid) == signal.SIGKILL


# Runs the commands that change swarm's state from inside the box, and records what each said.
MANAGING_AGENT = r"""
import json, pathlib, subprocess, sys
said = {}
for command in (["stop"], ["clean"], ["merge"]):
    out = subprocess.run([sys.executable, "-m", "worktree_swarm.cli", *command],
                         capture_output=True, text=True)
    said[command[0]] = [out.returncode, out.stderr]
pathlib.Path("said.json").write_text(json.dumps(said))
"""


@needs_bwrap
def test_swarm_commands_an_agent_runs_in_the_box_say_its_state_is_out_of_reach(
    repo: Path, write_agent: AgentFactory
) -> None:
    path = manifest(
        repo,
        f'[defaults]\nsandbox = true\n[[task]]\nid = "t"\nprompt = "x"\n'
        f"agent = {argv_toml(write_agent(MANAGING_AGENT))}\n",
    )
    out = swarm(repo, "run", path)
    assert out.returncode == 0, out.stdout + out.stderr
    said = json.loads(branch_file(repo, "swarm/t", "said.json"))
    for command, (code, err) in said.items():
        assert code == 2, (command, err)
        assert err.endswith(
            "; under --sandbox swarm's state is out of an agent's reach "
            "(only `swarm note` and `swarm notes` work there)\n"
        ), (command, err)
