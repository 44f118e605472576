"""Secrets never leave the machine, and input that would reach outside the repository is refused.

Real runs of the real CLI on real repositories, with small agent programs that print keys,
commit local files, or get handed an over-long prompt; a local HTTP server stands in for
GitHub. Each secret value is looked for in every output, every file under ``.git/swarm``
(state.db bytes included), every commit of the task's branch and the pushed remote.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rich.console import Console

from tests.conftest import git, make_repo
from tests.github_server import TOKEN, FakeGitHub, serve
from tests.test_run import _no_trace, argv_toml, manifest, status_json, swarm, wait_for
from tests.test_sandbox import needs_bwrap
from worktree_swarm.agents.base import is_session_id
from worktree_swarm.core.paths import SCRUB_SKIP
from worktree_swarm.git.staged import holding_secrets
from worktree_swarm.infra import redact as redact_module
from worktree_swarm.infra.logtail import Follower, copy_log, last_line, read_end, read_log_end
from worktree_swarm.infra.redact import REDACTED, Redactor, file_secrets, is_secret_name
from worktree_swarm.infra.scrub import RedactingWriter, scrub_file, scrub_tree
from worktree_swarm.infra.store import Store
from worktree_swarm.run import checks
from worktree_swarm.ui.live import LiveTable

AgentFactory = Callable[[str], list[str]]

SECRETS = {
    "ANTHROPIC_API_KEY": "sk-ant-api03-" + "A1b2C3d4" * 5,
    "GITHUB_TOKEN": "ghp_" + "Zy9" * 12,
    "SESSION_COOKIE": "session-cookie-value-7f3a9c",
    "MY_SERVICE_AUTH": "plain-auth-value-5d2e",
}
DB_PASSWORD = "db-password-4e8b1c"  # noqa: S105 - a test value
DATABASE_URL = f"postgres://app:{DB_PASSWORD}@db.internal:5432/prod"
# Every value that must never show up: the secret env values and the URL's password.
NEEDLES = [*SECRETS.values(), DB_PASSWORD]

# Prints every secret it was given, writes them into the run's notes (directly and through
# `swarm note`), commits nothing secret itself, and fails with a key in its last line.
LEAKY_AGENT = r"""
import os, pathlib, subprocess, sys
names = ["ANTHROPIC_API_KEY", "GITHUB_TOKEN", "SESSION_COOKIE", "MY_SERVICE_AUTH", "DATABASE_URL"]
for name in names:
    print(f"debug: {name}={os.environ[name]}", flush=True)
    print(f"value alone: {os.environ[name]}", flush=True)
with open(os.environ["SWARM_CONTEXT"], "a") as fh:
    fh.write("- found the key " + os.environ["ANTHROPIC_API_KEY"] + "\n")
subprocess.run([sys.executable, "-m", "worktree_swarm.cli", "note",
                "db is at " + os.environ["DATABASE_URL"]], check=True)
pathlib.Path("work.txt").write_text("done\n")
print("fatal: cannot authenticate with " + os.environ["GITHUB_TOKEN"], file=sys.stderr)
sys.exit(int(os.environ.get("LEAKY_EXIT", "1")))
"""


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DATABASE_URL", DATABASE_URL)


@pytest.fixture
def fake_github() -> Iterator[FakeGitHub]:
    with serve() as fake:
        yield fake


def assert_nowhere(texts: list[str], repo: Path, branch: str | None = None) -> None:
    """No secret value in *texts*, under ``.git/swarm`` or in *branch*'s commits."""
    for text in texts:
        for needle in NEEDLES:
            assert needle not in text, (needle, text[:2000])
    scanned = 0
    for path in (repo / ".git" / "swarm").rglob("*"):
        if path.is_file() and not path.is_symlink():
            scanned += 1
            data = path.read_bytes()
            for needle in NEEDLES:
                assert needle.encode() not in data, (needle, path)
    assert scanned > 5
    if branch is not None:
        history = git(repo, "log", "-p", "--all", "--format=%H %s%n%b")
        for needle in NEEDLES:
            assert needle not in history, needle


def _outputs(repo: Path, task: str) -> list[str]:
    texts = []
    for args in (
        ("status",),
        ("status", "--json"),
        ("notes",),
        ("logs", task),
        ("report",),
        ("report", "--json"),
        ("diff",),
    ):
        out = swarm(repo, *args)
        assert out.returncode == 0, (args, out.stderr)
        texts += [out.stdout, out.stderr]
    return texts


@pytest.mark.slow  # long: runs in `scripts/check --slow` (CI runs both)
def test_a_failure_reason_cut_short_keeps_no_part_of_a_secret_and_no_escape(
    repo: Path, write_agent: AgentFactory
) -> None:
    # The agent's last line becomes the reason, cut to 240 characters: the secret starts
    # before the cut and ends after it. An OSC 52 escape would write the user's clipboard.
    agent = write_agent(
        "import os, sys\n"
        "print('\\x1b]52;c;ZXZpbA==\\x07' + 'x' * 210 + ' ' + os.environ['DEPLOY_TOKEN'])\n"
        "sys.exit(3)\n"
    )
    value = "deploy-token-from-manifest-91ac-5be0-77d2"
    path = manifest(
        repo,
        f'[[task]]\nid = "t"\nprompt = "go"\nagent = {argv_toml(agent)}\n'
        f'env = {{ DEPLOY_TOKEN = "{value}" }}\n',
    )
    out = swarm(repo, "run", path)
    reason = str(status_json(repo)["t"]["reason"])
    assert reason.startswith("agent exited 3: ")
    for text in (out.stdout, swarm(repo, "status").stdout, reason):
        assert value[:12] not in text
        assert "\x1b" not in text


ESCAPES = "\x1b]52;c;ZXZpbA==\x07 \x1b]0;owned\x1b\\ \x1b[2J \u202e \x9b31m"


@pytest.mark.parametrize("source", ["check output", "a file name"])
def test_escapes_from_an_agent_or_its_checks_never_reach_the_terminal(
    repo: Path, write_agent: AgentFactory, source: str
) -> None:
    # A failing check prints them; or the agent names a file with them in the user's checkout.
    check = write_agent(f"import sys\nprint({ESCAPES!r})\nsys.exit(1)\n")
    agent = write_agent(
        "import pathlib, sys\npathlib.Path('work.txt').write_text('w')\n"
        f"if sys.argv[1] == 'a file name':\n"
        f"    (pathlib.Path({str(repo)!r}) / ('evil' + {ESCAPES!r} + '.txt')).write_text('x')\n"
    )
    checks = f"checks = [{argv_toml(check)}]\n" if source == "check output" else ""
    path = manifest(
        repo,
        f'[[task]]\nid = "t"\nprompt = "go"\nagent = {argv_toml([*agent, source])}\n{checks}',
    )
    out = swarm(repo, "run", path)
    assert out.returncode == 1, out.stdout + out.stderr
    reason = str(status_json(repo)["t"]["reason"])
    assert ("exited 1" if source == "check output" else "evil") in reason
    for text in (out.stdout, swarm(repo, "status").stdout, reason, swarm(repo, "report").stdout):
        assert not [c for c in "\x1b\x07\x9b\u202e" if c in text], text


@pytest.mark.parametrize("sandboxed", [False, pytest.param(True, marks=needs_bwrap)])
@pytest.mark.usefixtures("secret_env")
def test_secrets_an_agent_prints_appear_in_no_output_file_or_commit(
    repo: Path, write_agent: AgentFactory, *, sandboxed: bool
) -> None:
    agent = write_agent(LEAKY_AGENT)
    flags = ["--sandbox"] if sandboxed else []
    out = swarm(repo, "run", *flags, "--agent", " ".join(agent), "-t", "leak=print everything")
    assert out.returncode == 1, out.stderr
    texts = [out.stdout, out.stderr, *_outputs(repo, "leak")]
    assert_nowhere(texts, repo, branch="swarm/leak")
    # Redacted, not dropped: the user still sees where a secret was and what else was said.
    logs = swarm(repo, "logs", "leak").stdout
    assert f"debug: ANTHROPIC_API_KEY={REDACTED}" in logs
    assert f"postgres://app:{REDACTED}@db.internal:5432/prod" in logs
    assert f"value alone: {REDACTED}" in logs
    notes = swarm(repo, "notes").stdout
    assert f"found the key {REDACTED}" in notes
    assert f"db is at postgres://app:{REDACTED}@db.internal" in notes
    # The reason (the agent's last words) is kept with the token taken out.
    status = swarm(repo, "status", "--json").stdout
    assert "cannot authenticate with [REDACTED]" in status, status
    assert git(repo, "show", "swarm/leak:work.txt") == "done"


def test_the_final_scrub_skips_only_the_folders_it_names_at_their_depth(tmp_path: Path) -> None:
    # A run's end skips each task's own `tmp` and `agent-config`: it skipped the whole
    # directory of a task named `tmp` or `agent-config`, logs and all.
    key = SECRETS["ANTHROPIC_API_KEY"]
    files = ["tmp/attempt-1.log", "agent-config/checks.log", "a/tmp/x", "a/agent-config/y"]
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(f"key={key}\n")
    scrub_tree(tmp_path, skip=SCRUB_SKIP)
    assert [name for name in files if key in (tmp_path / name).read_text()] == files[2:]


def test_the_final_scrub_leaves_a_merges_guard_and_the_objects_it_holds(tmp_path: Path) -> None:
    # A `swarm merge` beside the run holds your object files by hard links in its guard's
    # folder: the run's last redaction rewrote them in place, corrupting a loose object kept
    # uncompressed (core.looseCompression=0) with a key in it (reproduced end to end).
    key = SECRETS["ANTHROPIC_API_KEY"]
    obj = tmp_path / "objects" / "be" / "8bd8"
    obj.parent.mkdir(parents=True)
    obj.write_text(f"blob 60\0key {key}\n")
    run = tmp_path / "run"
    for held in (run / "merge" / "guard" / "held" / "be", run / "guard" / "held" / "be"):
        held.mkdir(parents=True)
        os.link(obj, held / obj.name)
    (run / "merge" / "checks.log").write_text(f"key={key}\n")
    scrub_tree(run, skip=SCRUB_SKIP)
    assert key in obj.read_text()
    assert key not in (run / "merge" / "checks.log").read_text()
    # Nor anywhere else: a file with another link is never rewritten, whatever folder it is in.
    elsewhere = run / "a" / "8bd8"
    elsewhere.parent.mkdir()
    os.link(obj, elsewhere)
    scrub_tree(run, skip=SCRUB_SKIP)
    assert key in obj.read_text()


@pytest.mark.usefixtures("secret_env")
def test_task_env_secrets_are_redacted_from_run_output_and_state(
    repo: Path, write_agent: AgentFactory
) -> None:
    agent = write_agent(
        "import os, sys\nprint('token is', os.environ['DEPLOY_TOKEN'])\n"
        "print('bye ' + os.environ['DEPLOY_TOKEN'], file=sys.stderr)\nsys.exit(3)\n"
    )
    value = "deploy-token-from-manifest-91ac"
    path = manifest(
        repo,
        f'[[task]]\nid = "t"\nprompt = "go"\nagent = {argv_toml(agent)}\n'
        f'env = {{ DEPLOY_TOKEN = "{value}" }}\n',
    )
    out = swarm(repo, "run", "--json", path)
    assert out.returncode == 1
    assert "bye [REDACTED]" in out.stdout
    for text in (out.stdout, out.stderr, swarm(repo, "logs", "t").stdout):
        assert value not in text
    log = next((repo / ".git" / "swarm" / "runs").rglob("attempt-1.log"))
    assert value not in log.read_text()
    # Read back later by processes whose own environment never held it: the task's env is
    # what names it a secret.
    html = repo.parent / "report.html"
    shown = [
        swarm(repo, *argv)
        for argv in (["status"], ["status", "--json"], ["report"], ["report", "--json"],
                     ["report", "--html", str(html)])
    ]  # fmt: skip
    assert "[REDACTED]" in json.loads(shown[3].stdout)["tasks"][0]["reason"]
    for out in shown:
        assert out.returncode == 0, out.stdout + out.stderr
        assert value not in out.stdout + out.stderr
    assert value not in html.read_text()


def test_a_repair_hands_the_checks_output_back_redacted_on_the_command_line_too(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, secret_env: None
) -> None:
    # A failing check's output went back to the agent raw: in its argv (`{prompt}`, which any
    # user reads in `ps`), its prompt file and the store until the run's final scrub.
    value = "deploy-token-from-manifest-3c1d"
    seen = tmp_path / "argv.txt"
    agent = write_agent(
        f"import pathlib, sys\nwith open({str(seen)!r}, 'a') as fh:\n"
        "    fh.write(repr(sys.argv[1:]) + '\\n')\n"
        "pathlib.Path('a.txt').write_text(str(len(sys.argv)))\n"
    )
    check = write_agent(
        "import os, sys\nprint('deploy', os.environ['DEPLOY_TOKEN'], os.environ['GITHUB_TOKEN'])\n"
        "sys.exit(1)\n"
    )
    path = manifest(
        repo,
        f'[[task]]\nid = "t"\nprompt = "go"\nagent = {argv_toml([*agent, "{prompt}"])}\n'
        f'env = {{ DEPLOY_TOKEN = "{value}" }}\nchecks = [{argv_toml(check)}]\nrepair = 1\n',
    )
    assert swarm(repo, "run", path).returncode == 1
    attempts = seen.read_text().splitlines()
    assert len(attempts) == 2
    assert "deploy [REDACTED] [REDACTED]" in attempts[1]
    for needle in (value, SECRETS["GITHUB_TOKEN"]):
        assert needle not in seen.read_text()


def test_a_raw_checks_log_a_killed_manager_left_is_reported_without_the_tasks_env_secret(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    # The checks' log is rewritten redacted when they end; the manager died before that.
    value = "deploy-token-from-manifest-77fe"
    started, gate = tmp_path / "started", tmp_path / "gate"
    check = write_agent(
        "import os, pathlib, time\n"
        "print('deploying with', os.environ['DEPLOY_TOKEN'], flush=True)\n"
        f"pathlib.Path({str(started)!r}).write_text(str(os.getpid()))\n"
        f"while not pathlib.Path({str(gate)!r}).exists():\n    time.sleep(0.02)\n"
    )
    agent = write_agent("open('a.txt', 'w').write('a')\n")
    path = manifest(
        repo,
        f'[[task]]\nid = "t"\nprompt = "go"\nagent = {argv_toml(agent)}\n'
        f'env = {{ DEPLOY_TOKEN = "{value}" }}\nchecks = [{argv_toml(check)}]\n',
    )
    manager = subprocess.Popen(
        [sys.executable, "-m", "worktree_swarm.cli", "run", path], cwd=repo,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(lambda: started.exists() and started.read_text() != "", what="the check")
        os.killpg(manager.pid, signal.SIGKILL)
        manager.wait(timeout=30)
        (log,) = (repo / ".git" / "swarm" / "runs").rglob("checks.log")
        assert value in log.read_text()  # raw: the test is real

        html = tmp_path / "report.html"
        shown = [swarm(repo, "report", "--json"), swarm(repo, "report", "--html", str(html))]
    finally:
        gate.touch()  # the check ends whatever happened
    tail = json.loads(shown[0].stdout)["tasks"][0]["checks_tail"]
    assert "deploying with [REDACTED]" in tail
    for out in shown:
        assert out.returncode == 0, out.stdout + out.stderr
        assert value not in out.stdout + out.stderr
    assert value not in html.read_text()


def test_a_log_swarm_stop_ends_without_a_manager_is_redacted_as_the_manager_would(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, secret_env: None
) -> None:
    # With its manager dead, `swarm stop` ended the attempt and the run but its log stayed raw
    # for good: nothing else ever rewrote it, and `swarm logs` from a shell without the
    # manager's variables showed them.
    value = "deploy-token-from-manifest-5a0e"
    started = tmp_path / "started"
    agent = write_agent(
        "import os, pathlib, time\n"
        "print('deploying with', os.environ['DEPLOY_TOKEN'], os.environ['GITHUB_TOKEN'], "
        "flush=True)\n"
        "pathlib.Path('deploy.env').write_text(os.environ['DEPLOY_TOKEN'])\n"
        f"pathlib.Path({str(started)!r}).touch()\ntime.sleep(600)\n"
    )
    path = manifest(
        repo,
        f'[[task]]\nid = "t"\nprompt = "go"\nagent = {argv_toml(agent)}\n'
        f'env = {{ DEPLOY_TOKEN = "{value}" }}\n',
    )
    manager = subprocess.Popen(
        [sys.executable, "-m", "worktree_swarm.cli", "run", path], cwd=repo,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    wait_for(started.exists, what="the agent")
    os.killpg(manager.pid, signal.SIGKILL)
    manager.wait(timeout=30)
    (log,) = (repo / ".git" / "swarm" / "runs").rglob("attempt-1.log")
    assert value in log.read_text()  # raw while it runs: the test is real
    out = swarm(repo, "stop", "t")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "deploying with [REDACTED] [REDACTED]" in log.read_text()
    # Nor is the file holding it committed by the stop's checkpoint (the task's own secret).
    history = subprocess.run(
        ["git", "log", "-p", "--all"], cwd=repo, capture_output=True, check=True
    ).stdout
    assert value.encode() not in history
    assert (repo.parent / "repo.swarm" / "t" / "deploy.env").read_text() == value  # kept
    shown = subprocess.run(
        [sys.executable, "-m", "worktree_swarm.cli", "logs", "t"], cwd=repo, capture_output=True,
        text=True, timeout=60, check=True,
        env={k: v for k, v in os.environ.items() if k != "GITHUB_TOKEN"},
    )  # fmt: skip
    assert "deploying with [REDACTED] [REDACTED]" in shown.stdout
    assert_nowhere([shown.stdout], repo)
    assert value not in shown.stdout


def open_prs(
    repo: Path, tmp_path: Path, fake: FakeGitHub, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """`swarm pr` to a bare `origin` under *tmp_path* and *fake* GitHub: the remote, the run."""
    bare = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    git(repo, "remote", "add", "origin", str(bare))
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    return bare, swarm(repo, "pr", "--github-repo", "acme/widgets", "--api-url", fake.url)


@pytest.mark.long
@pytest.mark.parametrize("sandboxed", [False, pytest.param(True, marks=needs_bwrap)])
def test_copy_files_stay_off_the_branch_and_pr_refuses_one_committed_anyway(
    repo: Path, write_agent: AgentFactory, tmp_path: Path, fake_github: FakeGitHub,
    monkeypatch: pytest.MonkeyPatch, *, sandboxed: bool,
) -> None:  # fmt: skip
    key = "local-env-secret-value-3c9d"
    (repo / ".env").write_text(f"API_KEY={key}\n")  # untracked and not ignored
    (repo / "conf").mkdir()
    (repo / "conf" / "db.local").write_text(f"password={key}\n")
    agent = write_agent(
        "import os, pathlib, subprocess\n"
        "pathlib.Path('feature.txt').write_text('feature\\n')\n"
        "pathlib.Path('conf/new.local').write_text('made by the agent\\n')\n"
        "if os.environ['SWARM_TASK_ID'] == 'sneaky':\n"
        "    subprocess.run(['git', 'add', '-f', '.env'], check=True)\n"
        "    subprocess.run(['git', 'commit', '-q', '-m', 'add env'], check=True)\n"
    )
    path = manifest(
        repo,
        f'[defaults]\nagent = {argv_toml(agent)}\ncopy = [".env", "conf/*.local"]\n'
        '[[task]]\nid = "clean"\nprompt = "x"\n[[task]]\nid = "sneaky"\nprompt = "y"\n',
    )
    out = swarm(repo, "run", *(["--sandbox"] if sandboxed else []), path)
    assert out.returncode == 0, out.stdout + out.stderr
    # The copies were there for the agent, but the checkpoint left them out of the branch.
    wt = repo.parent / "repo.swarm" / "clean"
    assert (wt / ".env").read_text() == f"API_KEY={key}\n"
    files = git(repo, "ls-tree", "-r", "--name-only", "swarm/clean").split()
    assert files == ["README.md", "feature.txt"]
    assert key not in git(repo, "log", "-p", "swarm/clean")
    # An agent that committed .env itself: the tip no longer has it, the history does,
    # so `swarm pr` refuses to push that branch and names the file.
    assert ".env" not in git(repo, "ls-tree", "-r", "--name-only", "swarm/sneaky").split()
    bare, pr = open_prs(repo, tmp_path, fake_github, monkeypatch)
    assert pr.returncode == 1, pr.stdout + pr.stderr
    refused = [line for line in pr.stdout.splitlines() if line.startswith("sneaky")]
    assert len(refused) == 1
    assert "not pushing swarm/sneaky: .env (commit " in refused[0]
    assert "matches copy pattern '.env'" in refused[0]
    pushed = git(bare, "for-each-ref", "--format=%(refname:short)", "refs/heads/").split()
    assert pushed == ["swarm/clean"]
    assert key not in git(bare, "log", "-p", "--all")
    assert [p["head"]["ref"] for p in fake_github.pulls.values()] == ["swarm/clean"]
    # What the agent made under a copy pattern is work no checkpoint holds: kept with its
    # worktree. The copies as they came go with the worktrees (git refused to remove a
    # worktree holding untracked files), yours stay.
    out = swarm(repo, "clean", "--yes")
    assert (wt / "conf" / "new.local").read_text() == "made by the agent\n", out.stdout
    (wt / "conf" / "new.local").unlink()
    (repo.parent / "repo.swarm" / "sneaky" / "conf" / "new.local").unlink()
    (wt / ".env").write_text("API_KEY=changed-by-the-agent\n")  # a copy changed: work too
    out = swarm(repo, "clean", "--yes")
    assert (wt / ".env").exists(), out.stdout
    assert not (repo.parent / "repo.swarm" / "sneaky").exists(), out.stdout
    (wt / ".env").write_text(f"API_KEY={key}\n")
    out = swarm(repo, "clean", "--yes")
    assert out.returncode == 0, out.stdout + out.stderr
    assert not wt.exists()
    assert (repo / ".env").read_text() == f"API_KEY={key}\n"  # yours stays


def test_the_secrets_of_a_copy_file_that_is_a_symlink_are_known_too(
    repo: Path, write_agent: AgentFactory
) -> None:
    # `.env` a link to your real file: its secrets were never read (a link was skipped), and
    # the agent's copy of it was committed on a done branch.
    key = "sk_live_51Hq8TzLmX2b7cQ"
    real = repo / "private" / "real.env"
    real.parent.mkdir()
    real.write_text(f"STRIPE_SECRET_KEY={key}\n")
    (repo / ".gitignore").write_text("private/\n.env\n")
    git(repo, "add", ".gitignore")
    git(repo, "commit", "-q", "-m", "ignore")
    (repo / ".env").symlink_to(real)
    agent = write_agent("import shutil\nshutil.copy('.env', 'leaked.txt')\n")
    path = manifest(
        repo, f'[[task]]\nid = "a"\nprompt = "x"\nagent = {argv_toml(agent)}\ncopy = [".env"]\n'
    )
    swarm(repo, "run", path)
    row = status_json(repo)["a"]
    assert row["state"] == "failed", row
    assert str(row["reason"]).startswith("wrote the value of a secret into leaked.txt"), row
    assert key not in git(repo, "log", "-p", "swarm/a")


def test_copy_file_secrets_under_another_name_are_redacted_and_never_pushed(
    repo: Path, write_agent: AgentFactory, tmp_path: Path, fake_github: FakeGitHub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    stripe = "sk_live_51Hq8TzLmX2b7c"  # no known format: only the copy file says it is secret
    password = "pw9Kq2xLm4"  # noqa: S105 - a test value
    (repo / ".env").write_text(
        f"STRIPE_KEY={stripe}\nDATABASE_URL=postgres://app:{password}@db/x\n"
        "POSTGRES_PASSWORD=postgres\nDEBUG=true\n"
    )
    agent = write_agent(
        "import os, pathlib, shutil\n"
        "if os.environ['SWARM_TASK_ID'] == 'leaky':\n"
        "    shutil.copy('.env', '.env.example')  # the values, under a name copy does not know\n"
        "    import subprocess  # committed by the agent itself (swarm's commit leaves it out)\n"
        "    subprocess.run(['git', 'add', '.env.example'], check=True)\n"
        "    subprocess.run(['git', 'commit', '-qm', 'example'], check=True)\n"
        "    key = pathlib.Path('.env').read_text().split()[0].split('=')[1]\n"
        "    print('using', key, flush=True)\n"
        "else:\n"  # a word that is also a value in .env: not a reason to refuse
        "    pathlib.Path('compose.yml').write_text('services:\\n  db:\\n    image: postgres\\n')\n"
    )
    path = manifest(
        repo,
        f'[defaults]\nagent = {argv_toml(agent)}\ncopy = [".env"]\n'
        '[[task]]\nid = "leaky"\nprompt = "x"\n[[task]]\nid = "fine"\n'
        f'prompt = "payments fail with key {stripe}"\n',  # its PR's title and body quote it
    )
    out = swarm(repo, "run", path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert stripe in git(repo, "show", "swarm/leaky:.env.example")  # the agent's commit
    # Redacted wherever swarm writes: the agent's log, and `swarm logs` of it.
    shown = swarm(repo, "logs", "leaky").stdout
    assert f"using {REDACTED}" in shown
    for log in (repo / ".git" / "swarm").rglob("*.log"):
        assert stripe not in log.read_text(errors="replace")
    bare, pr = open_prs(repo, tmp_path, fake_github, monkeypatch)
    assert pr.returncode == 1, pr.stdout + pr.stderr
    (refused,) = [line for line in pr.stdout.splitlines() if line.startswith("leaky")]
    assert "not pushing swarm/leaky: .env.example (commit " in refused
    assert re.search(r"holds the value of (STRIPE_KEY|a URL's password) in \.env \(a copy", refused)
    assert stripe not in pr.stdout + pr.stderr
    pushed = git(bare, "for-each-ref", "--format=%(refname:short)", "refs/heads/").split()
    assert pushed == ["swarm/fine"]
    assert stripe not in git(bare, "log", "-p", "--all")
    assert len(fake_github.pulls) == 1
    assert stripe not in json.dumps(list(fake_github.pulls.values()))
    assert "payments fail with key" in json.dumps(list(fake_github.pulls.values()))
    report = swarm(repo, "report", "--json")
    assert "payments fail with key" in report.stdout
    assert stripe not in report.stdout


@pytest.mark.parametrize("password", ["Str0ng@Passw0rd99", "Pa'ssw0rd99x"])
def test_a_url_password_holding_an_at_sign_or_a_quote_is_a_secret_whole(
    repo: Path, write_agent: AgentFactory, password: str
) -> None:
    # Taken up to its first `@`, or not at all with a `'` (RFC 3986 allows both in a
    # password): the rest was shown, and config.py was committed with the whole password.
    url = f"postgres://app:{password}@db.internal:5432/app"
    (repo / ".env").write_text(f"DATABASE_URL={url}\n")
    agent = write_agent(
        "import os, pathlib\n"
        "url = pathlib.Path('.env').read_text().split('=', 1)[1].strip()\n"
        "print('connecting to', url, flush=True)\n"
        "pathlib.Path('config.py').write_text(f'DB = {url!r}\\n')\n"
    )
    path = manifest(
        repo, f'[[task]]\nid = "a"\nprompt = "x"\nagent = {argv_toml(agent)}\ncopy = [".env"]\n'
    )
    swarm(repo, "run", path)
    row = status_json(repo)["a"]
    assert row["state"] == "failed", row
    assert str(row["reason"]).startswith("wrote the value of a secret into config.py"), row
    assert "config.py" not in git(repo, "ls-tree", "-r", "--name-only", "swarm/a")
    shown = swarm(repo, "logs", "a").stdout
    assert f"connecting to postgres://app:{REDACTED}@db.internal:5432/app" in shown, shown
    tail = password[-8:]  # past the `@` or the `'`
    for file in (repo / ".git" / "swarm").rglob("*"):
        if file.is_file() and not file.is_symlink():
            assert tail.encode() not in file.read_bytes(), file


@pytest.mark.parametrize("colon", ["", ":"])
def test_a_token_as_a_urls_user_name_is_redacted_where_an_agent_prints_it(
    repo: Path, write_agent: AgentFactory, colon: str
) -> None:
    # `git remote -v`, a failing push: the token was in the reason, the logs and state.db.
    # With an empty password after it (`https://<token>:@host`) it was not seen at all.
    token = "0123456789abcdef0123456789abcdef01234567"  # noqa: S105 - a fake
    agent = write_agent(
        "import sys\n"
        f"print('origin\\thttps://{token}{colon}@git.example/acme/w.git (push)', flush=True)\n"
        f"sys.exit('fatal: unable to access https://{token}{colon}@git.example/acme/w.git/')\n"
    )
    swarm(repo, "run", "--agent", " ".join(agent), "-t", "a=x")
    row = status_json(repo)["a"]
    assert row["state"] == "failed", row
    assert f"https://{REDACTED}{colon}@git.example/acme/w.git" in str(row["reason"]), row
    assert f"https://{REDACTED}{colon}@git.example" in swarm(repo, "logs", "a").stdout
    for file in (repo / ".git" / "swarm").rglob("*"):
        if file.is_file() and not file.is_symlink():
            assert token.encode() not in file.read_bytes(), file


@pytest.mark.parametrize(
    "userinfo",
    ["x-access-token:Zq9rT2mW8vK4", "0123456789abcdef0123456789abcdef01234567"],
)
def test_a_remote_url_with_credentials_is_refused_not_stored(repo: Path, userinfo: str) -> None:
    # `remote = "https://user:token@host/..."` in swarm.toml (or --remote) was kept in the
    # run's settings in state.db, as given.
    url = f"https://{userinfo}@127.0.0.1:9/acme/w.git"
    (repo / "swarm.toml").write_text(f'remote = "{url}"\n')
    out = swarm(repo, "run", "--agent", "true", "-t", "a=x")
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr == (
        "swarm: swarm.toml: remote: 'https://127.0.0.1:9/acme/w.git' is given with credentials"
        " in its URL, which the run would store; add it as a remote (`git remote add NAME"
        " URL`) and give NAME, or let a git credential helper log in\n"
    )
    assert not (repo / ".git" / "swarm" / "state.db").exists()
    (repo / "swarm.toml").unlink()
    out = swarm(repo, "run", "--agent", "true", "-t", "a=x", "--executor", "ray", "--remote", url)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.startswith("swarm: --remote: 'https://127.0.0.1:9/acme/w.git' is given")
    assert userinfo.rsplit(":", maxsplit=1)[-1] not in out.stdout + out.stderr
    # A user name is no credential: stored as given.
    (repo / "swarm.toml").write_text('remote = "ssh://git@127.0.0.1:9/acme/w.git"\n')
    swarm(repo, "run", "--agent", "true", "-t", "a=x")
    assert status_json(repo)["a"]["state"] == "no_changes"


def test_a_copy_files_token_user_name_is_redacted_where_an_agent_prints_it_bare(
    repo: Path, write_agent: AgentFactory
) -> None:
    # Known as a copy file's secret under a name no secret word was in: never redacted.
    token = "9f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c"  # noqa: S105 - a fake
    (repo / ".env").write_text(f"MIRROR=https://{token}@git.example/acme/w.git\n")
    agent = write_agent(
        "import pathlib, sys\n"
        "user = pathlib.Path('.env').read_text().split('//')[1].split('@')[0]\n"
        "sys.exit(f'fatal: authentication failed for user {user}')\n"
    )
    text = f'[defaults]\nagent = {argv_toml(agent)}\ncopy = [".env"]\n[[task]]\nid = "a"\n'
    swarm(repo, "run", manifest(repo, text + 'prompt = "x"\n'))
    row = status_json(repo)["a"]
    assert f"authentication failed for user {REDACTED}" in str(row["reason"]), row
    assert f"user {REDACTED}" in swarm(repo, "logs", "a").stdout
    for file in (repo / ".git" / "swarm").rglob("*"):
        if file.is_file() and not file.is_symlink():
            assert token.encode() not in file.read_bytes(), file


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("STRIPE_KEY=sk_live_51Hq8TzLm\n", [("STRIPE_KEY", "sk_live_51Hq8TzLm")]),
        ('export API_TOKEN="a1b2c3d4e5"  # ci\n', [("API_TOKEN", "a1b2c3d4e5")]),
        ("api_key: 'q9w8e7r6t5'\n", [("api_key", "q9w8e7r6t5")]),
        ('  "client_secret": "abcdefghijklmnopq",\n', [("client_secret", "abcdefghijklmnopq")]),
        ("URL=mysql://u:x7y8z9w0v@h/db\n", [("a URL's password", "x7y8z9w0v")]),
        # Up to the last `@` before the host (a raw `@` in it), a `'` too; the user may hold `@`.
        ("U=amqp://u:p@ss'w0rd@h:5672/v\n", [("a URL's password", "p@ss'w0rd")]),
        ("U=imap://me@corp.example:x7y8z9w0v@h\n", [("a URL's password", "x7y8z9w0v")]),
        (
            "U=https://0a1b2c3d4e5f0a1b2c3d4e5f0a1b2c3d@git.example/a https://git@git.example/b\n",
            [("a URL's user name (a token)", "0a1b2c3d4e5f0a1b2c3d4e5f0a1b2c3d")],
        ),
        # An account's name, however long, is no key: a GRANT naming it is no leak.
        ("DATABASE_URL=postgres://warehouse_loader_2024@db:5432/dw\n", []),
        (
            'GPG_PASSPHRASE="correct horse battery staple 42"\n',
            [("GPG_PASSPHRASE", "correct horse battery staple 42")],
        ),
        ("POSTGRES_PASSWORD=postgres\nSECRET_KEY=changeme\nTOKEN=ab12\n", []),
        ("DEBUG=true\nPORT=8080\nNAME=ab12cd34ef\n", []),
    ],
)
def test_the_secrets_of_a_local_file(text: str, found: list[tuple[str, str]]) -> None:
    # Secret-named values and URL passwords that look generated; words and short values not.
    assert file_secrets(text) == found


@pytest.mark.parametrize(
    ("name", "content", "why"),
    [
        ("deploy/id_rsa", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n", "a private key"),
        ("ci.yml", "token: ghp_" + "a1B2" * 9 + "\n", "a GitHub token"),
        ("aws.cfg", "key = AKIA" + "ABCDEFGHIJKLMNOP" + "\n", "an AWS access key id"),
        ("app.py", "KEY = 'sk-ant-api03-" + "x" * 30 + "'\n", "an Anthropic API key"),
        (
            "ci.sh",
            "git clone https://oauth2:glpat-" + "a1B2" * 5 + "@gl.example/a\n",
            "a GitLab token",
        ),
    ],
)
def test_pr_refuses_a_branch_holding_a_credential(
    repo: Path, write_agent: AgentFactory, tmp_path: Path, fake_github: FakeGitHub,
    monkeypatch: pytest.MonkeyPatch, name: str, content: str, why: str,
) -> None:  # fmt: skip
    agent = write_agent(
        "import pathlib, sys\n"
        f"p = pathlib.Path({name!r}); p.parent.mkdir(parents=True, exist_ok=True)\n"
        f"p.write_text({content!r})\n"
    )
    assert swarm(repo, "run", "--agent", " ".join(agent), "-t", "t=x").returncode == 0
    bare, pr = open_prs(repo, tmp_path, fake_github, monkeypatch)
    assert pr.returncode == 1
    line = pr.stdout.strip()
    assert line.startswith(f"t  failed  not pushing swarm/t: {name} (commit ")
    assert line.endswith(f"holds {why}; remove it from the branch's history")
    assert "\n" not in line
    assert git(bare, "for-each-ref") == ""
    assert fake_github.pulls == {}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ANTHROPIC_API_KEY", "sk-ant-api03-" + "d" * 30),
        ("GPG_PASSPHRASE", "correct horse battery staple"),  # blanks: taken for no secret
        ("WEIRD_TOKEN", "abc\udcffdef123456"),  # not UTF-8: every checkpoint failed on it
    ],
)
def test_a_file_holding_a_secret_value_is_left_out_of_swarms_commit_and_the_task_fails(
    repo: Path, write_agent: AgentFactory, monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    agent = write_agent(
        "import os\n"
        "env = b'\\n'.join(k + b'=' + v for k, v in os.environb.items())\n"
        "open('env.txt', 'wb').write(env)\n"
        f"open('README.md', 'ab').write(b'key: ' + os.environb[{name.encode()!r}])\n"
        "open('work.txt', 'w').write('work')\n"
    )
    assert swarm(repo, "run", "--agent", " ".join(agent), "-t", "t=x").returncode == 1
    row = status_json(repo)["t"]
    assert row["state"] == "failed"
    assert str(row["reason"]).startswith(
        "wrote the value of a secret into README.md, env.txt: left out of its commit, it stays in "
    )
    assert git(repo, "ls-tree", "-r", "--name-only", "swarm/t") == "README.md\nwork.txt"
    assert git(repo, "show", "swarm/t:README.md") == "hello"  # as it was: yours, unchanged
    raw = os.fsencode(value)
    history = subprocess.run(
        ["git", "log", "-p", "--all"], cwd=repo, capture_output=True, check=True
    )
    assert raw not in history.stdout
    assert raw in (repo.parent / "repo.swarm" / "t" / "env.txt").read_bytes()  # not lost


def test_a_file_whose_filter_swarm_does_not_run_is_left_out_of_its_commit(
    repo: Path, write_agent: AgentFactory, tmp_path: Path
) -> None:
    # git-crypt's filter lives in the repository's config, which swarm's git never runs: the
    # agent's line added to an encrypted file was committed in the clear.
    marker = tmp_path / "filter-ran"
    rot13 = f"touch {marker}; tr a-zA-Z n-za-mN-ZA-M"
    git(repo, "config", "filter.crypt.clean", rot13)
    git(repo, "config", "filter.crypt.smudge", rot13)
    git(repo, "config", "filter.crypt.required", "true")
    (repo / ".gitattributes").write_text("*.secret filter=crypt\n")
    (repo / "db.secret").write_text("password=hunter2\n")
    git(repo, "add", ".gitattributes", "db.secret")
    git(repo, "commit", "-q", "-m", "encrypted")
    stored = git(repo, "rev-parse", "HEAD:db.secret")
    marker.unlink()
    agent = write_agent(
        "import pathlib\n"
        "with open('db.secret', 'a') as f:\n"
        "    f.write('token=abc123\\n')\n"
        "pathlib.Path('new.secret').write_text('key=k3y\\n')\n"
        "pathlib.Path('work.txt').write_text('work')\n"
    )
    assert swarm(repo, "run", "--agent", " ".join(agent), "-t", "t=x").returncode == 1
    row = status_json(repo)["t"]
    assert row["state"] == "failed"
    assert str(row["reason"]).startswith(
        "changed files whose filter comes from the repository's own config, which swarm's git "
        "never runs (db.secret (filter crypt), new.secret (filter crypt)): left out of its commit"
    )
    assert git(repo, "rev-parse", "swarm/t:db.secret") == stored  # as it was: encrypted
    assert git(repo, "ls-tree", "-r", "--name-only", "swarm/t") == (
        ".gitattributes\nREADME.md\ndb.secret\nwork.txt"
    )
    worktree = repo.parent / "repo.swarm" / "t"
    assert "token=abc123" in (worktree / "db.secret").read_text()  # not lost
    assert not marker.exists()  # and the filter never ran


def test_a_secret_in_a_name_with_a_newline_one_the_agent_staged_or_a_file_name_is_left_out(
    repo: Path, write_agent: AgentFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The checkpoint read the names `git add --verbose` printed: printed as they are, a name
    # with a newline was two lines, neither read; a file the agent had staged itself was not
    # printed at all; and a name was never looked at, only contents.
    value = "sk-ant-api03-" + "n" * 30
    monkeypatch.setenv("ANTHROPIC_API_KEY", value)
    agent = write_agent(
        "import os, subprocess\n"
        "v = os.environb[b'ANTHROPIC_API_KEY']\n"
        "open('nl\\nx.txt', 'wb').write(v)\n"
        "open('staged.txt', 'wb').write(v)\n"
        "subprocess.run(['git', 'add', 'staged.txt'], check=True)\n"
        "open(b'f-' + v + b'.txt', 'wb').write(b'plain')\n"
        "open('work.txt', 'w').write('work')\n"
    )
    assert swarm(repo, "run", "--agent", " ".join(agent), "-t", "t=x").returncode == 1
    assert status_json(repo)["t"]["state"] == "failed"
    assert git(repo, "ls-tree", "-r", "--name-only", "swarm/t") == "README.md\nwork.txt"
    raw = value.encode()
    history = subprocess.run(
        ["git", "log", "-p", "--all"], cwd=repo, capture_output=True, check=True
    )
    assert raw not in history.stdout
    state = repo / ".git" / "swarm"
    assert not [p for p in state.glob("state.db*") if raw in p.read_bytes()]
    kept = repo.parent / "repo.swarm" / "t"
    assert {p.name for p in kept.iterdir()} >= {"nl\nx.txt", "staged.txt", f"f-{value}.txt"}


def test_a_secret_a_commit_would_hold_otherwise_than_the_worktree_shows_is_left_out(
    repo: Path, write_agent: AgentFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A symbolic link's target (the worktree's read followed it), a file git converts from
    # UTF-16 as its `working-tree-encoding` asks (the worktree's bytes never held the value).
    value = "Zq8xV3mP9tL2wR7kJ4nB"
    monkeypatch.setenv("MY_API_KEY", value)
    agent = write_agent(
        "import os\n"
        "v = os.environ['MY_API_KEY']\n"
        "os.symlink('/nowhere/' + v, 'link')\n"
        "open('.gitattributes', 'w').write('wide.txt working-tree-encoding=UTF-16LE\\n')\n"
        "open('wide.txt', 'wb').write(('k=' + v + '\\n').encode('utf-16-le'))\n"
        "open('work.txt', 'w').write('work')\n"
    )
    assert swarm(repo, "run", "--agent", " ".join(agent), "-t", "t=x").returncode == 1
    row = status_json(repo)["t"]
    assert row["state"] == "failed"
    assert str(row["reason"]).startswith("wrote the value of a secret into link, wide.txt:")
    names = git(repo, "ls-tree", "-r", "--name-only", "swarm/t").split("\n")
    assert names == [".gitattributes", "README.md", "work.txt"]
    history = subprocess.run(
        ["git", "log", "-p", "--all"], cwd=repo, capture_output=True, check=True
    )
    assert value.encode() not in history.stdout


def test_a_secret_named_setting_of_a_word_or_a_value_already_committed_leaves_nothing_out(
    repo: Path, write_agent: AgentFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DB_PASSWORD", "postgres")  # a word: in half the files of a repository
    monkeypatch.setenv("API_TOKEN", "tok3n-f00-bar42")
    (repo / ".env.example").write_text("API_TOKEN=tok3n-f00-bar42\n")  # yours, tracked
    git(repo, "add", ".env.example")
    git(repo, "commit", "-qm", "example")
    agent = write_agent(
        "open('compose.yml', 'w').write('image: postgres\\n')\n"
        "open('.env.example', 'a').write('DEBUG=1\\n')\n"
    )
    assert swarm(repo, "run", "--agent", " ".join(agent), "-t", "t=x").returncode == 0
    assert git(repo, "show", "swarm/t:compose.yml") == "image: postgres"
    assert git(repo, "show", "swarm/t:.env.example").endswith("DEBUG=1")


def test_merge_refuses_a_branch_holding_a_credential_as_pr_does(
    repo: Path, write_agent: AgentFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A careless agent dumps its environment into a file and commits it itself.
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-api03-" + "k" * 30)
    leaky = write_agent(
        "import json, os, subprocess\n"
        "open('env.json', 'w').write(json.dumps(dict(os.environ)))\n"
        "subprocess.run(['git', 'add', 'env.json'], check=True)\n"
        "subprocess.run(['git', 'commit', '-qm', 'debug'], check=True)\n"
    )
    fine = write_agent("open('fine.txt', 'w').write('fine')\n")
    path = manifest(
        repo,
        f'[[task]]\nid = "leaky"\nprompt = "p"\nagent = {argv_toml(leaky)}\n'
        f'[[task]]\nid = "fine"\nprompt = "p"\nagent = {argv_toml(fine)}\n',
    )
    assert swarm(repo, "run", path).returncode == 0
    out = swarm(repo, "merge")
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    (refused,) = [line for line in lines if line.split()[:2] == ["skipped", "leaky"]]
    assert "not merging swarm/leaky: env.json (commit " in refused
    assert refused.endswith("holds an Anthropic API key; remove it from the branch's history")
    target = git(repo, "for-each-ref", "--format=%(refname)", "refs/heads/swarm/integration-*")
    assert git(repo, "ls-tree", "-r", "--name-only", target) == "README.md\nfine.txt"
    assert "k" * 30 not in out.stdout + out.stderr


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_merges_word_on_a_leak_shows_the_files_name_redacted_and_without_its_escapes(
    repo: Path, write_agent: AgentFactory, monkeypatch: pytest.MonkeyPatch, as_json: bool
) -> None:
    # The file's name was shown as it is: its escape sequence retitled your terminal, and
    # a name made of a secret's value showed that value.
    value = "DeployTok3nXYZ987"
    monkeypatch.setenv("MY_DEPLOY_TOKEN", value)
    leaky = write_agent(
        "import os, subprocess\n"
        "name = 'k\\x1b]0;PWNED\\x07-' + os.environ['MY_DEPLOY_TOKEN'] + '.txt'\n"
        "open(name, 'w').write('x')\n"
        "subprocess.run(['git', 'add', '--', name], check=True)\n"
        "subprocess.run(['git', 'commit', '-qm', 'debug'], check=True)\n"
    )
    assert swarm(repo, "run", "--agent", " ".join(leaky), "-t", "leaky=x").returncode == 0
    out = swarm(repo, "merge", "--dry-run", *(["--json"] if as_json else []))
    assert out.returncode == 1, out.stdout + out.stderr
    assert "not merging swarm/leaky: " in out.stdout
    assert "is named after the value of a secret" in out.stdout
    assert value not in out.stdout + out.stderr
    assert not {"\x1b", "\x07"} & set(out.stdout)


# Run a command, then print the largest resident set of any process it waited for (KiB).
PEAK = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
    "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


# (`swarm diff`'s patch is git's: git loads a new file once even to say it is binary.)
@pytest.mark.long
@pytest.mark.parametrize("command", [("merge", "--dry-run"), ("diff", "--stat"), ("merge",)])
def test_a_huge_file_on_a_branch_is_never_held_in_memory_whole(
    repo: Path, write_agent: AgentFactory, command: tuple[str, ...]
) -> None:
    # A sparse file costs the agent no disk and its branch little: git stores it compressed.
    agent = write_agent("import os\nwith open('big.bin', 'wb') as f:\n    f.truncate(128 << 20)\n")
    text = f'[defaults]\nagent = {argv_toml(agent)}\nmax_file = "1G"\n'
    path = manifest(repo, text + '[[task]]\nid = "big"\nprompt = "x"\n')
    assert swarm(repo, "run", path).returncode == 0
    argv = [sys.executable, "-m", "worktree_swarm.cli", *command]
    done = subprocess.run(
        [sys.executable, "-c", PEAK, *argv], cwd=repo, capture_output=True, text=True, check=True
    )
    code, peak_kib = map(int, done.stdout.split())
    assert code == 0, done.stderr
    # The leak scan read all 128 MiB and copied it, git's stat loaded it: 280 MiB and more.
    assert peak_kib < 96 << 10, peak_kib


@pytest.mark.parametrize("how", ["--name-only", "--json"])
def test_diff_shows_a_file_named_after_a_secret_redacted(
    repo: Path, write_agent: AgentFactory, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    value = "DeployTok3nXYZ987"
    monkeypatch.setenv("MY_DEPLOY_TOKEN", value)
    agent = write_agent(
        "import os, subprocess\n"
        "name = 'f-' + os.environ['MY_DEPLOY_TOKEN'] + '.txt'\n"
        "open(name, 'w').write('x')\n"
        "subprocess.run(['git', 'add', '--', name], check=True)\n"
        "subprocess.run(['git', 'commit', '-qm', 'named'], check=True)\n"
    )
    assert swarm(repo, "run", "--agent", " ".join(agent), "-t", "t=x").returncode == 0
    out = swarm(repo, "diff", how)
    assert out.returncode == 0, out.stderr
    assert "f-[REDACTED" in out.stdout
    assert value not in out.stdout


@pytest.mark.parametrize("named", [[], ["child"]], ids=["all", "only-the-dependent"])
def test_merge_skips_a_task_built_on_a_branch_that_carries_a_credential(
    repo: Path, write_agent: AgentFactory, monkeypatch: pytest.MonkeyPatch, named: list[str]
) -> None:
    # The dependent starts from the leaky task's branch: its own commits hold no key, but
    # merging its branch would land its dependency's.
    key = "sk-ant-api03-" + "c" * 30
    monkeypatch.setenv("ANTHROPIC_API_KEY", key)
    leaky = write_agent(
        "import json, os, subprocess\n"
        "open('env.json', 'w').write(json.dumps(dict(os.environ)))\n"
        "subprocess.run(['git', 'add', 'env.json'], check=True)\n"
        "subprocess.run(['git', 'commit', '-qm', 'debug'], check=True)\n"
    )
    child = write_agent("open('child.txt', 'w').write('child')\n")
    path = manifest(
        repo,
        f'[[task]]\nid = "leaky"\nprompt = "p"\nagent = {argv_toml(leaky)}\n'
        f'[[task]]\nid = "child"\nprompt = "p"\ndepends_on = ["leaky"]\n'
        f"agent = {argv_toml(child)}\n",
    )
    assert swarm(repo, "run", path).returncode == 0
    assert "env.json" in git(repo, "ls-tree", "--name-only", "swarm/child")  # it carries it

    out = swarm(repo, "merge", *named)

    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    (refused,) = [line for line in lines if line.split()[:2] == ["skipped", "child"]]
    assert "env.json (commit " in refused
    assert lines[-1].startswith("0 merged, 0 conflicted, 0 failed")
    branches = git(repo, "for-each-ref", "--format=%(refname)", "refs/heads/swarm/integration-*")
    for branch in branches.split():
        assert key not in git(repo, "log", "-p", branch)
    assert key not in out.stdout + out.stderr


# A merge commit whose own content (not either parent's) holds the key: a conflict resolved
# with a pasted key is the same.
MERGE_ADDING = """
run = lambda *a: subprocess.run(['git', *a], check=True, capture_output=True)
run('checkout', '-q', '-b', 'side')
open('side.txt', 'w').write('s')
run('add', 'side.txt'); run('commit', '-qm', 'side')
run('checkout', '-q', '-'); run('merge', '-q', '--no-ff', '--no-commit', 'side')
open('settings.py', 'w').write('KEY = "{key}"')
run('add', 'settings.py'); run('commit', '-qm', 'merge side'); run('branch', '-D', 'side')
"""


# The key's blob replaced by a harmless one (`git replace`): git shows the harmless one,
# a push sends the real one.
REPLACED = """
run = lambda *a, **k: subprocess.run(['git', *a], check=True, capture_output=True, **k).stdout
open('settings.py', 'w').write('KEY = "{key}"')
run('add', 'settings.py'); run('commit', '-qm', 'settings')
bad = run('rev-parse', 'HEAD:settings.py').strip()
good = run('hash-object', '-w', '--stdin', input=b'KEY = None').strip()
run('replace', bad, good)
"""


# A commit written by hand with a header line of its own (git keeps and pushes it).
OWN_HEADER = """
run = lambda *a, **k: subprocess.run(['git', *a], check=True, capture_output=True, **k).stdout
open('notes.txt', 'w').write('n')
run('add', 'notes.txt')
tree = run('write-tree').decode().strip()
head = run('rev-parse', 'HEAD').decode().strip()
raw = (f'tree {tree}\\nparent {head}\\nauthor A <a@x> 1 +0000\\ncommitter A <a@x> 1 +0000\\n'
       'x-note {key}\\n\\nnotes\\n')
new = run('hash-object', '-t', 'commit', '-w', '--literally', '--stdin', input=raw.encode())
run('update-ref', 'HEAD', new.decode().strip())
"""


@pytest.mark.parametrize("where", ["message", "file name", "merge", "replaced", "author", "header"])
def test_pr_refuses_a_credential_in_a_commit_message_or_a_file_name(
    repo: Path, write_agent: AgentFactory, tmp_path: Path, fake_github: FakeGitHub,
    monkeypatch: pytest.MonkeyPatch, where: str,
) -> None:  # fmt: skip
    key = "sk-ant-api03-" + "m" * 30
    commit = (
        "import os, subprocess\n"
        + {
            "message": "open('notes.txt', 'w').write('n')\n"
            "subprocess.run(['git', 'add', 'notes.txt'], check=True)\n"
            f"subprocess.run(['git', 'commit', '-qm', 'use {key}'], check=True)\n",
            "file name": f"open({key!r}, 'w').write('n')\n",
            "merge": MERGE_ADDING.replace("{key}", key),
            "replaced": REPLACED.replace("{key}", key),
            "author": "open('notes.txt', 'w').write('n')\n"
            "subprocess.run(['git', 'add', 'notes.txt'], check=True)\n"
            "subprocess.run(['git', 'commit', '-qm', 'n'], check=True,\n"
            f"               env={{**os.environ, 'GIT_AUTHOR_NAME': {key!r}}})\n",
            "header": OWN_HEADER.replace("{key}", key),
        }[where]
    )
    agent = write_agent(commit)
    # A replace ref is an outside write the guard undoes: allowed here, it stays for the pr.
    allow = ["--allow-outside-writes"] if where == "replaced" else []
    assert swarm(repo, "run", *allow, "--agent", " ".join(agent), "-t", "t=x").returncode == 0
    bare, pr = open_prs(repo, tmp_path, fake_github, monkeypatch)
    assert pr.returncode == 1
    line = pr.stdout.strip()
    named = {
        "message": "its message", "file name": "[REDACTED]", "merge": "settings.py",
        "replaced": "settings.py", "author": "its author, committer or headers",
        "header": "its author, committer or headers",
    }[where]  # fmt: skip
    assert line.startswith(f"t  failed  not pushing swarm/t: {named} (commit "), line
    assert "an Anthropic API key" in line
    assert key not in pr.stdout + pr.stderr
    assert git(bare, "for-each-ref") == ""
    if where == "replaced":  # the reviewer sees what the branch holds
        assert 'KEY = "[REDACTED]"' in swarm(repo, "diff", "t").stdout


def test_copy_never_follows_a_symlink_out_of_the_repository(repo: Path, tmp_path: Path) -> None:
    ssh = tmp_path / "dot-ssh"
    ssh.mkdir()
    (ssh / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nsecret\n")
    (repo / "cfg").symlink_to(ssh, target_is_directory=True)  # untracked
    path = manifest(repo, '[defaults]\nagent = "scripted"\ncopy = ["cfg/*"]\n'
                    '[[task]]\nid = "a"\nprompt = "x"\n')  # fmt: skip
    out = swarm(repo, "run", path)
    assert out.returncode == 2, out.stdout + out.stderr
    expected = (
        f"swarm: copy 'cfg/*': cfg/id_rsa is reached through a symlink that leads outside "
        f"{repo}; copy never follows one out of the repository"
    )
    assert out.stderr.strip().splitlines() == [expected]
    _no_trace(repo)


def _fifo(tmp_path: Path) -> str:
    fifo = tmp_path / "prompt.fifo"
    os.mkfifo(fifo)
    return str(fifo)


def _big(tmp_path: Path) -> str:
    big = tmp_path / "big.md"
    big.write_bytes(b"x" * (2**20 + 1))
    return str(big)


@pytest.mark.parametrize(
    ("setting", "needle"),
    [
        ('worktree_root = "/"', "is a system or home directory"),
        ('worktree_root = "~"', "is a system or home directory"),
        ('worktree_root = "/usr"', "is a system or home directory"),
        ('worktree_root = "/var/tmp"', "is a system or home directory"),
        ('worktree_root = "/dev/shm"', "is a system or home directory"),
        # Root may write anywhere, as far as access checks go: /proc still makes nothing.
        ('worktree_root = "/proc/wt"', "/proc"),
        ('worktree_root = "../a\\nb"', "set `worktree_root` to a plain path"),
        # not a control character, and no space either: said so, not "a control character"
        ('worktree_root = "../a\\u00a0b"', "holds a character that does not print (a control"),
        ('worktree_root = "."', "is inside"),
        ('worktree_root = "src"', "is inside"),
        ('worktree_root = ".git"', "is inside"),
        ('worktree_root = ".git/wt"', "is inside"),
        ('worktree_root = "../tasks.toml"', "tasks.toml is not a directory; name a directory"),
        ('worktree_root = "../tasks.toml/wt"', "tasks.toml, which is not a directory"),
        ('link = ["."]', "names the checkout itself"),
        ('link = [".git"]', "reaches into .git"),
        ('link = ["sub/.git"]', "reaches into .git"),
        ('copy = ["./"]', "names the checkout itself"),
        ('copy = [".git/config"]', "reaches into .git"),
        ('env = { GIT_DIR = "/tmp/elsewhere" }', "GIT_DIR points git elsewhere"),
        ('env = { GIT_WORK_TREE = "/" }', "GIT_WORK_TREE points git elsewhere"),
        ('env = { GIT_CONFIG_GLOBAL = "/tmp/x" }', "GIT_CONFIG_GLOBAL points git elsewhere"),
        # Swarm's own: one SWARM_PORT in swarm.toml gave every task the same port.
        ('env = { SWARM_PORT = "1" }', "SWARM_PORT is swarm's to set"),
        ('env = { GIT_CONFIG_KEY_0 = "core.fsmonitor" }', "GIT_CONFIG_KEY_0 points git"),
        ('env = { git_index_file = "/tmp/i" }', "git_index_file points git elsewhere"),
    ],
)
def test_settings_that_reach_outside_are_refused_before_anything_is_created(
    repo: Path, setting: str, needle: str
) -> None:
    path = manifest(
        repo, f'[defaults]\nagent = "scripted"\n{setting}\n[[task]]\nid = "a"\nprompt = "x"\n'
    )
    out = swarm(repo, "run", path)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert needle in lines[0]
    _no_trace(repo)
    assert not Path("/a").exists()


def test_a_worktree_root_on_a_read_only_file_system_is_refused_before_anything(
    repo: Path, tmp_path: Path
) -> None:
    # (A directory's mode does not bind root, which runs this suite; a read-only mount does.)
    frozen = tmp_path / "frozen"
    frozen.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a file system needs root and mount(8)")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(frozen)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        setting = f"worktree_root = {json.dumps(str(frozen / 'wt'))}"
        path = manifest(
            repo, f'[defaults]\nagent = "scripted"\n{setting}\n[[task]]\nid = "a"\nprompt = "x"\n'
        )
        out = swarm(repo, "run", path)
    finally:
        subprocess.run(["umount", str(frozen)], check=True)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr == (
        f"swarm: worktree_root {frozen / 'wt'}: {frozen} is not writable; name a directory you"
        " can write\n"
    )
    _no_trace(repo)


def test_a_bad_value_of_a_secret_named_variable_is_said_in_words_the_redactor_keeps(
    repo: Path,
) -> None:
    # `env.DB_PASSWORD: expected a string` read as a setting: "env.DB_PASSWORD: [REDACTED] a
    # string, got an integer".
    path = manifest(repo, '[[task]]\nid = "a"\nprompt = "p"\nenv = { DB_PASSWORD = 123456789 }\n')
    out = swarm(repo, "run", path, "--agent", "scripted")
    assert out.returncode == 2
    assert out.stderr.endswith(
        'task "a": env: DB_PASSWORD\'s value: expected a string, got an integer\n'
    ), out.stderr


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda _tmp: "/dev/zero", "/dev/zero: not a regular file"),
        (_fifo, "prompt.fifo: not a regular file"),
        (_big, "big.md: larger than 1 MiB"),
        (str, "not a regular file"),  # a directory
    ],
)
def test_prompt_files_must_be_small_regular_files(
    repo: Path, tmp_path: Path, make: Callable[[Path], str], needle: str
) -> None:
    out = swarm(repo, "run", "--agent", "scripted", "--prompt-file", f"a={make(tmp_path)}")
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert needle in lines[0]
    _no_trace(repo)


# Writes the prompt it got to prompt.out: argv[1] itself, or the file argv[1] points to.
PROMPT_AGENT = r"""
import pathlib, re, sys
arg = sys.argv[1]
pointer = re.search(r"it is in the file (\S+)\. Read", arg)
text = pathlib.Path(pointer.group(1)).read_text() if pointer else arg
pathlib.Path("prompt.out").write_text(text)
pathlib.Path("how.txt").write_text("file" if pointer else "argv")
"""


@pytest.mark.slow  # long: runs in `scripts/check --slow` (CI runs both)
@pytest.mark.parametrize("sandboxed", [False, pytest.param(True, marks=needs_bwrap)])
def test_long_prompts_reach_the_agent_through_a_file(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, *, sandboxed: bool
) -> None:
    agent = write_agent(PROMPT_AGENT)
    short = "a short prompt"
    long_file = tmp_path / "long.md"
    long_file.write_text("do this: " + "y" * (2**20 - 100))  # 1 MiB: 8x one argv string's cap
    huge = "z" * (10 * 2**20)  # 10 MB from a manifest
    path = manifest(
        repo,
        f"[defaults]\nagent = {argv_toml([*agent, '{prompt}'])}\n"
        f'[[task]]\nid = "short"\nprompt = "{short}"\n'
        f'[[task]]\nid = "huge"\nprompt = "{huge}"\n',
    )
    flags = ["--sandbox"] if sandboxed else []
    out = swarm(repo, "run", *flags, path, "--prompt-file", f"long={long_file}", timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Argument list too long" not in out.stdout + out.stderr
    got = {t: git(repo, "show", f"swarm/{t}:how.txt") for t in ("short", "long", "huge")}
    assert got == {"short": "argv", "long": "file", "huge": "file"}
    # The whole prompt, byte for byte (plus the run's note about the findings file).
    for task, text in (("short", short), ("long", long_file.read_text()), ("huge", huge)):
        wt = repo.parent / "repo.swarm" / task
        assert (wt / "prompt.out").read_text().startswith(text)


def test_a_long_prompt_reaches_the_agent_through_its_file_after_a_rate_limit(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    # The attempt after a rate limit gives an agent without sessions the task again: that
    # text went into {prompt} whole, and the agent could not start (Argument list too long).
    agent = write_agent(
        "import pathlib, sys\n"
        "if not pathlib.Path('limited').exists():\n"
        "    pathlib.Path('limited').write_text('x')\n"
        "    print('Error: 429 Too Many Requests')\n"
        "    sys.exit(1)\n" + PROMPT_AGENT
    )
    long_file = tmp_path / "long.md"
    long_file.write_text("do this: " + "y" * 200_000)
    path = manifest(
        repo,
        f'[defaults]\nagent = {argv_toml([*agent, "{prompt}"])}\nrate_limit_backoff = "0.1s"\n',
    )
    out = swarm(repo, "run", path, "--prompt-file", f"long={long_file}")
    assert out.returncode == 0, out.stdout + out.stderr
    assert status_json(repo)["long"]["attempt"] == 2
    assert git(repo, "show", "swarm/long:how.txt") == "file"
    got = (repo.parent / "repo.swarm" / "long" / "prompt.out").read_text()
    assert got.startswith(long_file.read_text())  # the task again, then what to do now


def test_report_html_into_a_missing_directory_is_one_line(repo: Path) -> None:
    assert swarm(repo, "run", "--agent", "scripted", "-t", "a=hello").returncode == 0
    out = swarm(repo, "report", "--html", "no/such/dir/report.html")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"swarm: --html no/such/dir/report.html: directory {repo}/no/such/dir does not exist"
    ]
    (repo / "ro").mkdir()
    (repo / "ro").chmod(0o555)
    try:
        if os.access(repo / "ro", os.W_OK):
            return  # root ignores permissions
        out = swarm(repo, "report", "--html", "ro/report.html")
        assert out.returncode == 2
        assert out.stderr.strip().endswith("is not writable")
    finally:
        (repo / "ro").chmod(0o755)


def test_report_html_writes_through_a_symlink_and_refuses_a_fifo(
    repo: Path, tmp_path: Path
) -> None:
    assert swarm(repo, "run", "--agent", "scripted", "-t", "a=hello").returncode == 0
    real, link, fifo = tmp_path / "real.html", tmp_path / "link.html", tmp_path / "pipe.html"
    real.write_text("old\n")
    link.symlink_to(real)
    os.mkfifo(fifo)
    assert swarm(repo, "report", "--html", str(link)).returncode == 0
    assert link.is_symlink()
    assert "<html" in real.read_text()
    out = swarm(repo, "report", "--html", str(fifo))
    assert (out.returncode, out.stderr) == (
        2, f"swarm: --html {fifo}: is not a regular file; name a file\n"
    )  # fmt: skip
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_run_merge_and_pr_from_a_linked_worktree_start_from_its_head(
    repo: Path, tmp_path: Path, fake_github: FakeGitHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    user_wt = tmp_path / "feature-wt"
    git(repo, "worktree", "add", "-q", "-b", "feature", str(user_wt))
    (user_wt / "feature.txt").write_text("feature work\n")
    git(user_wt, "add", "feature.txt")
    git(user_wt, "commit", "-q", "-m", "feature commit")
    feature_head = git(user_wt, "rev-parse", "HEAD")
    assert feature_head != git(repo, "rev-parse", "HEAD")
    out = swarm(user_wt, "run", "--agent", "scripted", "-t", "a=hello")
    assert out.returncode == 0, out.stderr
    assert git(repo, "rev-parse", "swarm/a~1") == feature_head
    assert git(repo, "show", "swarm/a:feature.txt") == "feature work"
    # The worktrees go next to the main checkout, as from there.
    assert (repo.parent / "repo.swarm" / "a").is_dir()
    # Your main checkout moves on meanwhile: a merge from the linked worktree builds on its
    # branch (the integration branch holds feature, not main's new commit), and a pull
    # request's base is that branch.
    (repo / "README.md").write_text("main only\n")
    git(repo, "commit", "-q", "-am", "main only")
    out = swarm(user_wt, "merge")
    assert out.returncode == 0, out.stdout + out.stderr
    tips = git(repo, "branch", "--list", "swarm/integration-*", "--format=%(refname:short)")
    assert git(repo, "merge-base", "--is-ancestor", feature_head, tips) == ""
    main_only = subprocess.run(
        ["git", "merge-base", "--is-ancestor", "main", tips], cwd=repo, check=False
    )
    assert main_only.returncode == 1
    assert git(repo, "show", f"{tips}:README.md") == "hello"
    _, pr = open_prs(user_wt, tmp_path, fake_github, monkeypatch)
    assert pr.returncode == 0, pr.stdout + pr.stderr
    assert [p["base"]["ref"] for p in fake_github.pulls.values()] == ["feature"]


def test_swarm_logs_follow_redacts_while_the_agent_runs(
    repo: Path, write_agent: AgentFactory, secret_env: None, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    agent = write_agent(
        "import os, pathlib, time\n"
        "print('key', os.environ['ANTHROPIC_API_KEY'], flush=True)\n"
        f"while not pathlib.Path({str(gate)!r}).exists():\n    time.sleep(0.05)\n"
        "pathlib.Path('x.txt').write_text('x')\n"
    )
    run = subprocess.Popen(
        [sys.executable, "-m", "worktree_swarm.cli", "run", "--agent", " ".join(agent), "-t",
         "t=x"], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    logs_dir = repo / ".git" / "swarm" / "runs"
    wait_for(lambda: any(logs_dir.rglob("attempt-1.log")), what="the attempt log")
    log = next(logs_dir.rglob("attempt-1.log"))
    wait_for(lambda: log.stat().st_size > 0, what="agent output")
    wait_for(lambda: swarm(repo, "logs", "t").returncode == 0, what="the attempt's record")
    follow = subprocess.Popen(
        [sys.executable, "-m", "worktree_swarm.cli", "logs", "-f", "t"],
        cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    gate.touch()
    out, _ = follow.communicate(timeout=60)
    run.communicate(timeout=60)
    assert f"key {REDACTED}" in out
    assert SECRETS["ANTHROPIC_API_KEY"] not in out
    assert SECRETS["ANTHROPIC_API_KEY"] not in log.read_text()  # scrubbed once it ended


def test_a_secret_streamed_in_pieces_reaches_a_follower_redacted() -> None:
    key = SECRETS["ANTHROPIC_API_KEY"]  # redacted by its shape (sk-ant-...)
    shown = io.BytesIO()
    out = RedactingWriter(shown)
    out.write(b"working 10%\rworking 50%\rkey " + key[:9].encode())
    out.flush_quiet()  # the agent went quiet half-way through the key: its progress shows
    assert shown.getvalue() == b"working 10%\rworking 50%\r"
    out.write(key[9:].encode() + b" done\n")
    out.flush_quiet()
    assert shown.getvalue().decode().endswith(f"key {REDACTED} done\n")
    assert key[:9] not in shown.getvalue().decode()


def test_a_setting_with_nothing_after_it_takes_no_word_of_the_next_line() -> None:
    """`key=` at a line's end redacted the next line's first word (in every log it ran over)."""
    text = "key=\nhello-world rest\ntoken:\n  nextline_word\n"
    assert Redactor([])(text) == text
    assert Redactor([])("api_key: abcdef123456\n") == f"api_key: {REDACTED}\n"


def test_a_secret_in_pieces_at_the_end_of_a_long_line_is_never_cut_in_two() -> None:
    """A partial line past 64 KiB went out whole: the secret's first half unredacted."""
    key = SECRETS["ANTHROPIC_API_KEY"]  # redacted by its shape (sk-ant-...)
    shown = io.BytesIO()
    out = RedactingWriter(shown)
    out.write(b"word " * 14_000 + b"key " + key[:9].encode())
    out.flush_quiet()  # quiet half-way through the key
    assert shown.getvalue().startswith(b"word " * 13_000)  # the long line shows as it comes
    out.write(key[9:].encode() + b" tail\n")
    out.close()
    text = shown.getvalue().decode()
    assert text.endswith(f"key {REDACTED} tail\n")
    assert key[:9] not in text


@pytest.mark.parametrize("said_ended", ["at the next look", "at once"])
def test_swarm_logs_reads_a_log_redacted_under_it_again_after_the_lines_it_wrote(
    tmp_path: Path, said_ended: str
) -> None:
    """Its attempt over, a log is rewritten redacted, in place: a follower kept its byte
    offset and printed the rest from there (`E` for `FINAL LINE`, or nothing)."""
    key = SECRETS["ANTHROPIC_API_KEY"]
    log = tmp_path / "attempt-1.log"
    many = "".join(f"line {n}\n" for n in range(20_000))  # more than one block to read again
    log.write_text(f"{many}my key is {key}\nnext\n")
    shown = io.BytesIO()
    calls = iter(range(3))

    def ended() -> bool:
        if next(calls) == 0:  # the attempt ends: its last lines, then the log is redacted
            with log.open("a") as fh:
                fh.write("FINAL LINE\nno newline at end")
            scrub_file(log)
            assert key not in log.read_text()
            return said_ended == "at once"
        return True

    copy_log(log, RedactingWriter(shown), ended=ended)
    assert shown.getvalue().decode() == (
        f"{many}my key is {REDACTED}\nnext\nFINAL LINE\nno newline at end"
    )


def test_a_log_an_agent_swapped_for_a_link_or_a_pipe_is_neither_read_nor_rewritten(
    tmp_path: Path,
) -> None:
    """The manager redacted the file a symlink named (outside the repository), and `swarm
    logs` waited for ever on a pipe."""
    secret = f"password={SECRETS['ANTHROPIC_API_KEY']}\n"
    victim = tmp_path / "victim.txt"
    victim.write_text(secret)
    linked, piped, hard = tmp_path / "linked.log", tmp_path / "piped.log", tmp_path / "hard.log"
    linked.symlink_to(victim)
    os.mkfifo(piped)
    os.link(victim, hard)
    for log in (linked, piped, hard):
        scrub_file(log)
    assert victim.read_text() == secret
    for log in (linked, piped):
        with pytest.raises(OSError):
            copy_log(log, RedactingWriter(io.BytesIO()))


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("ANTHROPIC_API_KEY", True),
        ("GH_TOKEN", True),
        ("SESSION_COOKIE", True),
        ("AWS_SECRET_ACCESS_KEY", True),
        ("DB_PASSWD", True),
        ("GOOGLE_APPLICATION_CREDENTIALS", True),
        ("HTTP_AUTH", True),
        ("OAUTH_CLIENT", True),
        ("SSH_PRIVATE", True),
        ("DB_PASS", True),
        ("SSHPASS", True),
        ("GPG_PASSPHRASE", True),
        ("MYSQL_ROOT_PWD", True),
        ("SENTRY_DSN", True),
        ("SLACK_WEBHOOK_URL", True),
        ("GIT_AUTHOR_NAME", False),
        ("HOME", False),
        ("PATH", False),
        ("PWD", False),
        ("OLDPWD", False),
        ("NO_PROXY_BYPASS", False),
        ("PASSTHROUGH_ENV", False),
        ("PIP_KEYRING_PROVIDER", False),
        ("SSH_ASKPASS", False),
        ("XKB_KEYMAP", False),
        ("KEYRING_PASSWORD", True),
        ("SSH_KEY", True),
        ("GH_PAT", True),
        ("AZURE_DEVOPS_EXT_PAT", True),
        ("PAT_FOR_CI", True),
        ("MANPATH", False),
        ("PATCH_LEVEL", False),
        ("PATTERN", False),
    ],
)
def test_secret_names(name: str, secret: bool) -> None:
    assert is_secret_name(name) is secret


def test_a_personal_access_tokens_value_is_redacted_from_a_run(
    repo: Path, write_agent: AgentFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An Azure DevOps PAT is 52 characters of base32: no format the redactor knows.
    pat = "q7xk2mzp4bnd6wvr3hjt5cyl2fse7gua4onk6tiq3bmr5zdx7wpa"
    monkeypatch.setenv("AZURE_DEVOPS_EXT_PAT", pat)
    agent = write_agent(
        "import os, sys\nprint('az: using', os.environ['AZURE_DEVOPS_EXT_PAT'])\n"
        "sys.exit('az: refused ' + os.environ['AZURE_DEVOPS_EXT_PAT'])\n"
    )
    out = swarm(repo, "run", "--agent", " ".join(agent), "-t", "t=x")
    assert out.returncode == 1, out.stdout + out.stderr
    assert status_json(repo)["t"]["reason"] == f"agent exited 1: az: refused {REDACTED}"
    logs = swarm(repo, "logs", "t").stdout
    assert f"az: using {REDACTED}" in logs, logs
    texts = [out.stdout, out.stderr, logs, swarm(repo, "status").stdout]
    assert not [text for text in texts if pat in text]
    assert not [
        p
        for p in (repo / ".git" / "swarm").rglob("*")
        if p.is_file() and pat.encode() in p.read_bytes()
    ]


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        ("db postgres://app:s3cr3t-pw@db:5432/x", "s3cr3t-pw"),
        ("https://user:tok-123456@github.com/a/b.git", "tok-123456"),
        ("REDIS_URL=redis://:r3dis-pw-77@cache:6379/0", "r3dis-pw-77"),  # no user: Redis's way
        ("db postgres://app:Str0ng@Passw0rd99@db:5432/x", "Passw0rd99"),  # a raw `@` in it
        ("db postgres://app:Pa'ssw0rd99x@db:5432/x", "ssw0rd99x"),  # RFC 3986 allows a `'`
        # A token as the user name: `git remote -v`, a failing push's URL.
        ("origin https://0123456789abcdef0123456789abcdef01234567@github.com/a/b", "456789ab"),
        ("https://glpat-Ab3dEf6hIj9kLm2oPq5s@gitlab.example/a/b.git", "Ab3dEf6h"),
        (
            "https://dq3x7vpk2mzr5tb9wn4hy6cj8fl1sa0ge3ui7kq2xo5nv8bd1rm4@dev.azure.com/o",
            "dq3x7vpk",
        ),
        ("gitlab glpat-Ab3dEf6hIj9kLm2oPq5s", "Ab3dEf6h"),
        ("google AIza" + "B" * 35, "BBBBBBBB"),
        ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJl", "eyJzdWIi"),
        ("slack xoxb-1234567890-abcdefghij", "abcdefghij"),
        ("aws ASIAABCDEFGHIJKLMNOP", "ASIAABCD"),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----", "MIIEow"),
        ("Cookie: session_cookie=abcdef123456", "abcdef123456"),
        ("the value session-cookie-value-7f3a9c leaked", "session-cookie-value-7f3a9c"),
    ],
)
def test_redactor_knows_more_formats(text: str, leak: str) -> None:
    redact = Redactor(
        {"SESSION_COOKIE": "session-cookie-value-7f3a9c", "GIT_AUTHOR_NAME": "Test Author"}
    )
    assert leak not in redact(text)
    assert REDACTED in redact(text)


@pytest.mark.parametrize("before", ["İstanbul ", "İ" * 3, "x" * 10 + "İ\n" * 50])
def test_a_character_whose_lowercase_is_longer_hides_no_secret_after_it(before: str) -> None:
    value = "env-secret-value-9f8e7d6c"
    redact = Redactor({"DEPLOY_TOKEN": value})
    key = "sk-ant-api03-" + "A1b2C3d4" * 5
    text = f"{before} failed: {value} / {key} / ghp_{'x' * 36}"
    assert redact(text) == f"{before} failed: {REDACTED} / {REDACTED} / {REDACTED}"


def test_a_secret_value_with_blanks_around_it_is_known_without_them() -> None:
    # `GITHUB_TOKEN=" <40 hex> "`: the program that reads it strips it and prints it bare.
    token = "0123456789abcdef0123456789abcdef01234567"  # noqa: S105 - a fake
    redact = Redactor({"GITHUB_TOKEN": f" {token}\t\n", "DB_PASSWORD": " Pa55,w0rd "})
    said = f"sent {token}; login Pa55,w0rd refused"
    assert redact(said) == f"sent {REDACTED}; login {REDACTED} refused"


def test_a_secret_value_is_redacted_inside_json_output_too() -> None:
    value = 'Tr0ub4dor"&3\\x-é'
    redact = Redactor({"DB_PASSWORD": value})
    said = {"error": f"login {value} refused"}
    for dumped in (json.dumps(said), json.dumps(said, ensure_ascii=False)):
        assert json.loads(redact(dumped)) == {"error": f"login {REDACTED} refused"}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DB_PASSWORD", "P@ss,w0rd!2024"),
        ("API_KEY", "ab,cdefgh12345678"),
        ("GPG_X_PASSWORD", "correct horse battery staple"),
        ("DB_PASSWORD", 'ab"cdefgh123'),
        ("SIGNING_KEY", "k1;k2}k3'k4"),
    ],
)
def test_a_secret_value_after_its_name_is_redacted_whole_whatever_it_holds(
    name: str, value: str
) -> None:
    # `NAME=` took the value up to its first `,` `;` `}` quote or blank: a short piece was
    # taken for prose and kept, and the known value that started inside it was never looked at.
    redact = Redactor({name: value})
    for said in (f"{name}={value}", f"{name}: {value}", json.dumps({name: value})):
        assert value not in redact(said)
        assert REDACTED in redact(said)
    assert redact(f"export {name}='{value}' # set") == f"export {name}='{REDACTED}' # set"


def test_redactor_keeps_people_urls_and_prose() -> None:
    redact = Redactor({"GIT_AUTHOR_NAME": "Test Author", "SHORT_TOKEN": "abc"})
    text = (
        "Test Author pushed to https://github.com/acme/widgets; no GitHub token: set "
        "GITHUB_TOKEN; ssh git@github.com:acme/w.git; abc; 401: Missing bearer authentication; "
        "ssh://git@example.com:2222/acme/w.git https://alice@bitbucket.org/acme/w.git "
        "https://x-access-token@github.com https://jenkins-ci-user@ci.example/job"
    )
    assert redact(text) == text
    assert redact("Authorization: Bearer abcdefgh1234") == f"Authorization: Bearer {REDACTED}"


def test_live_table_shows_a_running_agents_output_redacted(
    repo: Path, write_agent: AgentFactory, tmp_path: Path
) -> None:
    key = "sk-ant-api03-" + "L1v3" * 8
    gate = tmp_path / "gate"
    agent = write_agent(
        "import pathlib, time\n"
        f"print('using {key}', flush=True)\n"
        f"while not pathlib.Path({str(gate)!r}).exists():\n    time.sleep(0.05)\n"
        "pathlib.Path('x.txt').write_text('x')\n"
    )
    run = subprocess.Popen(
        [sys.executable, "-m", "worktree_swarm.cli", "run", "--agent", " ".join(agent), "-t",
         "t=x"], cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: swarm(repo, "logs", "t").stdout.strip() != "", what="agent output")
        with Store(repo / ".git" / "swarm" / "state.db") as store:
            screen = io.StringIO()
            table = LiveTable(store, Console(file=screen, width=200, force_terminal=False))
            table("run_started", None, {"run_id": store.latest_run_id()})
            table._live.console.print(table._table())
        shown = screen.getvalue()
        assert f"using {REDACTED}" in shown
        assert key not in shown
    finally:
        gate.touch()
        run.communicate(timeout=60)


@pytest.mark.long
def test_pr_title_and_body_never_carry_a_token_from_the_prompt(
    repo: Path, write_agent: AgentFactory, tmp_path: Path, fake_github: FakeGitHub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    pasted = "github_pat_" + "P4st3d" * 5
    # Both tasks rewrite fix.txt: t's pull request, opened first, is updated once u's exists
    # to name it among its predicted conflicts, with a body made again from the prompt.
    agent = write_agent(
        "import os, pathlib\npathlib.Path('fix.txt').write_text(os.environ['SWARM_TASK_ID'])\n"
    )
    prompt = f"Fix auth with {pasted}\n\nThe log said: Authorization: token {pasted}"
    ran = swarm(repo, "run", "--agent", " ".join(agent), "-t", f"t={prompt}", "-t", "u=Fix it")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    _, pr = open_prs(repo, tmp_path, fake_github, monkeypatch)
    assert pr.returncode == 0, pr.stdout + pr.stderr
    pull = next(p for p in fake_github.pulls.values() if p["head"]["ref"] == "swarm/t")
    assert pull["title"] == f"Fix auth with {REDACTED}"
    assert pasted not in pull["body"]
    assert f"Authorization: token {REDACTED}" in pull["body"]
    assert "#2" in pull["body"]  # the update that names u's pull request
    sent = [json.dumps(r.body) for r in fake_github.requests]
    assert [r.method for r in fake_github.requests].count("PATCH") == 1
    assert not [body for body in sent if pasted in body]


def test_a_key_where_a_prompt_is_cut_short_reaches_neither_a_pull_request_nor_the_report(
    repo: Path, write_agent: AgentFactory, tmp_path: Path, fake_github: FakeGitHub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    keys = ["sk-ant-api03-" + c * 40 for c in "QRS"]
    # Each key straddles a limit: the title's (200), the PR body's prompt (4000), the report's.
    prompt = "t" * 190 + keys[0] + "\n" + "b" * 3750 + " " + keys[1] + "r" * 15_950 + " " + keys[2]
    agent = write_agent("import pathlib\npathlib.Path('fix.txt').write_text('fixed')\n")
    assert swarm(repo, "run", "--agent", " ".join(agent), "-t", f"t={prompt}").returncode == 0
    _, pr = open_prs(repo, tmp_path, fake_github, monkeypatch)
    report = swarm(repo, "report", "--json")

    assert pr.returncode == 0, pr.stdout + pr.stderr
    (pull,) = fake_github.pulls.values()
    sent = pull["title"] + pull["body"] + report.stdout
    assert not [key for key in keys if key[:8] in sent]
    assert pull["title"].endswith(REDACTED)
    assert f"b {REDACTED}" in pull["body"]


def test_an_ignored_copy_file_an_agent_force_adds_stays_off_the_tip(
    repo: Path, write_agent: AgentFactory
) -> None:
    (repo / ".gitignore").write_text(".env\n")
    git(repo, "add", ".gitignore")
    git(repo, "commit", "-q", "-m", "ignore .env")
    (repo / ".env").write_text("API_KEY=ignored-but-forced-value\n")
    agent = write_agent(
        "import pathlib, subprocess\n"
        "pathlib.Path('work.txt').write_text('w\\n')\n"
        "subprocess.run(['git', 'add', '-f', '.env'], check=True)\n"
    )
    path = manifest(
        repo,
        f'[defaults]\nagent = {argv_toml(agent)}\ncopy = [".env"]\n'
        '[[task]]\nid = "t"\nprompt = "x"\n',
    )
    out = swarm(repo, "run", path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert git(repo, "ls-tree", "-r", "--name-only", "swarm/t").split() == [
        ".gitignore",
        "README.md",
        "work.txt",
    ]
    assert "ignored-but-forced-value" not in git(repo, "log", "-p", "swarm/t")


# As a task: edits line 2 of f.txt. As the resolver `swarm merge --resolve` runs: keeps both
# sides, and prints every secret it was given, as the check after it does.
LEAKY_RESOLVER = r"""
import os, pathlib, re
f = pathlib.Path("f.txt")
if "<<<<<<<" in f.read_text():
    f.write_text(re.sub(r"^(<<<<<<<|=======|>>>>>>>).*\n", "", f.read_text(), flags=re.M))
    for name in ("ANTHROPIC_API_KEY", "GITHUB_TOKEN", "DATABASE_URL"):
        print(f"resolving with {name}={os.environ[name]}", flush=True)
else:
    f.write_text("a\n" + os.environ["SWARM_TASK_ID"] + "\nc\n")
"""


def test_secrets_a_merges_resolver_and_checks_print_are_redacted_from_their_logs(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, secret_env: None
) -> None:
    # A run's agent and checks logs are rewritten redacted when they end; `swarm merge` kept
    # its checks log and its resolver's log raw under .git/swarm.
    (repo / "f.txt").write_text("a\nb\nc\n")
    git(repo, "add", "f.txt")
    git(repo, "commit", "-qm", "f")
    agent = write_agent(LEAKY_RESOLVER)
    out = swarm(repo, "run", "--agent", " ".join(agent), "-t", "one=edit", "-t", "two=edit")
    assert out.returncode == 0, out.stdout + out.stderr
    check = tmp_path / "check.py"
    check.write_text("import os\nprint('checked with', os.environ['GITHUB_TOKEN'])\n")

    out = swarm(repo, "merge", "--resolve", "--check", f"{sys.executable} {check}")

    assert out.returncode == 0, out.stdout + out.stderr
    assert_nowhere([out.stdout, out.stderr], repo)
    merge_logs = next((repo / ".git" / "swarm" / "runs").glob("*/merge"))
    assert f"resolving with GITHUB_TOKEN={REDACTED}" in "".join(
        p.read_text() for p in merge_logs.glob("resolve-*.log")
    )
    assert f"checked with {REDACTED}" in (merge_logs / "checks.log").read_text()


def test_secrets_of_a_tasks_copy_files_its_checks_print_at_the_merge_are_redacted(
    repo: Path, write_agent: AgentFactory
) -> None:
    # A task's checks at `swarm merge` get its `copy` files first (its `.env`), as in its run.
    # The run redacts the secrets of those files from every log; the merge knew only the
    # task's `env`: a check that printed the `.env` it was given left the key in checks.log.
    key = "local-env-secret-value-77e1"
    (repo / ".env").write_text(f"API_KEY={key}\n")
    agent = write_agent("import pathlib\npathlib.Path('feature.txt').write_text('x\\n')\n")
    check = "import pathlib; print('using', pathlib.Path('.env').read_text().split('=')[1])"
    path = manifest(
        repo,
        f'[defaults]\nagent = {argv_toml(agent)}\ncopy = [".env"]\n'
        f"checks = [{json.dumps([sys.executable, '-c', check])}]\n"
        '[[task]]\nid = "t"\nprompt = "x"\n',
    )
    out = swarm(repo, "run", path)
    assert out.returncode == 0, out.stdout + out.stderr
    run_logs = next((repo / ".git" / "swarm" / "runs").glob("*/t"))
    assert f"using {REDACTED}" in "".join(p.read_text() for p in run_logs.glob("checks*.log"))

    out = swarm(repo, "merge", "t")

    assert out.returncode == 0, out.stdout + out.stderr
    checks = next((repo / ".git" / "swarm" / "runs").glob("*/merge/checks.log")).read_text()
    assert f"using {REDACTED}" in checks
    assert key not in checks


def test_the_secret_scan_looks_at_the_index_it_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Ray node's periodic checkpoint builds its commit in an index of its own, and pushed
    # it with no look: a file holding a secret reached the shared remote within a minute.
    value = "sk-ant-api03-" + "q" * 30
    monkeypatch.setenv("ANTHROPIC_API_KEY", value)
    monkeypatch.setattr(redact_module, "_current", None)  # read again, as a new process would
    repo = make_repo(tmp_path / "repo")
    (repo / "env.txt").write_text(f"key={value}\n")
    env = {"GIT_INDEX_FILE": str(tmp_path / "own-index")}
    for args in (["read-tree", "HEAD"], ["add", "--all"]):
        subprocess.run(["git", *args], cwd=repo, env={**os.environ, **env}, check=True)
    assert holding_secrets(repo, env=env) == ["env.txt"]
    assert holding_secrets(repo) == []  # the repository's own index holds nothing of it


def test_an_error_no_command_caught_writes_its_traceback_redacted_and_says_where(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile  # noqa: PLC0415

    from tests.conftest import swarm_here  # noqa: PLC0415
    from worktree_swarm.run import runs  # noqa: PLC0415

    monkeypatch.setenv("DEPLOY_TOKEN", DB_PASSWORD)

    def broken(summaries: object) -> list[str]:
        raise RuntimeError(f"a bug while the token {DB_PASSWORD} was at hand")

    monkeypatch.setattr(runs, "format_runs", broken)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    out = swarm_here(repo, "runs")
    assert out.returncode == 1
    (crash,) = tmp_path.glob("swarm-crash-*.log")
    assert out.stderr == f"swarm: internal error; traceback written to {crash}\n"
    assert out.stdout == ""
    text = crash.read_text()
    assert "RuntimeError: a bug while the token [REDACTED] was at hand" in text
    assert text.startswith("Traceback (most recent call last):")
    assert ", in broken\n" in text  # down to where it failed
    assert DB_PASSWORD not in text


def test_debug_shows_an_unexpected_errors_traceback_redacted(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `swarm --debug` shows the traceback on stderr (a detached manager's, in its log): the
    # exception's message can hold a key, as the crash file's does.
    import tempfile  # noqa: PLC0415

    from tests.conftest import swarm_here  # noqa: PLC0415
    from worktree_swarm.run import runs  # noqa: PLC0415

    monkeypatch.setenv("DEPLOY_TOKEN", DB_PASSWORD)

    def broken(summaries: object) -> list[str]:
        raise RuntimeError(f"a bug while the token {DB_PASSWORD} was at hand")

    monkeypatch.setattr(runs, "format_runs", broken)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    out = swarm_here(repo, "--debug", "runs")
    assert out.returncode == 1
    assert out.stderr.startswith("Traceback (most recent call last):")
    assert "RuntimeError: a bug while the token [REDACTED] was at hand\n" in out.stderr
    assert out.stderr.splitlines()[-1].startswith("swarm: internal error; traceback written to ")
    assert DB_PASSWORD not in out.stderr + out.stdout


def test_a_copy_globs_file_an_agent_named_in_bytes_that_are_not_utf8_is_left_out(
    repo: Path, write_agent: AgentFactory
) -> None:
    # Its name reached git as text with surrogates; encoded strictly, every checkpoint failed.
    (repo / ".gitignore").write_text("")
    git(repo, "add", ".gitignore")
    git(repo, "commit", "-qm", "ignore")
    (repo / ".env").write_text("KEY=value-of-the-user\n")
    agent = argv_toml(
        write_agent(
            "import os\n"
            "open(os.fsencode('.env') + b'\\xff', 'wb').write(b'copied by hand')\n"
            "open('work.txt', 'w').write('work')\n"
        )
    )
    text = f'[defaults]\nagent = {agent}\ncopy = [".env*"]\n[[task]]\nid = "a"\nprompt = "p"\n'
    out = swarm(repo, "run", manifest(repo, text))
    assert out.returncode == 0, out.stdout + out.stderr
    assert status_json(repo)["a"]["state"] == "done"
    assert git(repo, "show", "swarm/a:work.txt") == "work"
    names = git(repo, "ls-tree", "-r", "--name-only", "swarm/a").split()
    assert names == [".gitignore", "README.md", "work.txt"]  # no copy file, whatever its name


def test_a_key_a_tool_shortened_shows_neither_of_its_ends() -> None:
    # pytest shows a long string cut in the middle: both ends of the key, never the whole.
    key = "sk-ant-api03-0123456789abcdef0123456789abcdefXYZ"
    token = "tok_" + "Zq8Wv3Lm" * 4
    redact = Redactor({"ANTHROPIC_API_KEY": key, "DEPLOY_TOKEN": token})
    said = redact(f"assert '{key[:12]}...{key[-13:]}' == x; '{token[:14]}…{token[-14:]}'")
    assert key[-12:] not in said
    assert "api03" not in said
    assert token[:12] not in said
    assert token[-12:] not in said
    # A word that only shares a short part, or a value that is no key (a sentence), is kept.
    assert redact("sk-ant- prose, the tok_ prefix") == "sk-ant- prose, the tok_ prefix"
    phrase = "correct horse battery staple and more words"
    assert Redactor({"DB_PASSWORD": phrase})(phrase[:14]) == phrase[:14]


def known_secret(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    """*name*=*value* in this process's environment, known to its redactor from now on."""
    monkeypatch.setenv(name, value)
    redact_module._current = None


MULTI_LINE_KEY = "firstLINEaaaa1111\nsecondLINEbbbb2222"
SHORT_TOKEN = "Zq9xW2vB7nL4kP0s"  # noqa: S105 - too short to be found by its ends alone


def test_a_secret_of_several_lines_is_redacted_a_line_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An agent's last line was the second line of a PEM-like key: the reason, the live view
    # and a follower (each a line at a time) showed it.
    known_secret(monkeypatch, "MULTI_PRIVATE_KEY", MULTI_LINE_KEY)
    assert redact_module.redact("x secondLINEbbbb2222 y") == f"x {REDACTED} y"
    assert redact_module.redact(MULTI_LINE_KEY) == REDACTED
    # Not the lines every such key (or file) has: a branch holding them is no leak.
    pem = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU=\n"
    known_secret(monkeypatch, "DEPLOY_PRIVATE_KEY", pem + "-----END OPENSSH PRIVATE KEY-----\n")
    assert "-----END OPENSSH PRIVATE KEY-----" not in redact_module.current().values
    assert "b3BlbnNzaC1rZXktdjEAAAAABG5vbmU=" in redact_module.current().values
    shown = io.BytesIO()
    out = RedactingWriter(shown)
    for line in MULTI_LINE_KEY.splitlines():
        out.write(line.encode() + b"\n")
    assert "LINE" not in shown.getvalue().decode()


def test_a_window_into_a_log_never_starts_inside_a_word(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The end of a log read from 4 characters into a short key showed the other 12 of them:
    # in a reason (8 MiB window), a check's tail (64 KiB), the live table and `swarm watch`.
    known_secret(monkeypatch, "MY_SVC_TOKEN", SHORT_TOKEN)
    log = tmp_path / "attempt-1.log"
    log.write_text("start\n" + SHORT_TOKEN + "D" * 2000 + "\nlast words\n")
    window = 2000 + len("\nlast words\n") + len(SHORT_TOKEN) - 4
    assert read_end(log, window) == "last words\n"
    assert last_line(log, max_bytes=window) == "last words"
    follow = Follower(log, limit=window)
    assert follow.read() == (False, "last words\n")
    # A line the view started inside is not shown until the next one starts.
    log.write_text("start\n" + "D" * 5000)
    follow = Follower(log, limit=1000)
    assert follow.read() == (False, "")
    with log.open("a") as fh:
        fh.write(SHORT_TOKEN[4:] + "\nnext\n")
    assert follow.read() == (False, "next\n")
    # A progress bar that never ends its line shows once it redraws (a carriage return).
    log.write_text("D" * 70_000)
    follow = Follower(log)
    assert follow.read() == (False, "")
    shown = ""
    for part in ("\rprogress " + "p" * 40_000, "p" * 40_000):
        with log.open("a") as fh:
            fh.write(part)
        shown += follow.read()[1]
    assert shown.startswith("progress ")
    # The end of one long line still shows, from its first whole word on; a window with no
    # blank in it is one cut word, and shows nothing.
    log.write_text("x" * 100_000 + " error: build failed\n")
    assert last_line(log) == "error: build failed"
    log.write_text("q" * 5 + SHORT_TOKEN + "z" * 990)
    assert read_end(log, 1000) == ""
    # A failing check's tail: its last 64 KiB.
    log.write_text("start\npad " + SHORT_TOKEN + "\n" + "B" * (64 * 1024 - 8) + "\nfailed\n")
    assert checks._tail(log, 0).splitlines() == ["B" * (64 * 1024 - 8), "failed"]


def test_a_last_line_longer_than_the_window_is_read_whole_its_long_strings_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Claude Code's result line quoting a reply of MiBs: what the adapter needs (session, cost)
    # is in it, around the reply, and the window held only the reply's end.
    known_secret(monkeypatch, "MY_SVC_TOKEN", SHORT_TOKEN)
    reply = (
        SHORT_TOKEN + ' "quoted" \\ \u00e9\n' * 60_000
    )  # escapes across every boundary, blocks of 1 MiB too
    result = {"type": "result", "result": reply, "session_id": "s-1", "total_cost_usd": 0.5}
    log = tmp_path / "attempt-1.log"
    log.write_text("start\n" + json.dumps(result) + "\n")
    text = read_log_end(log, 1000)
    dropped = len(json.dumps(reply)) - 2
    assert json.loads(text) == {**result, "result": f"({dropped} bytes not read)"}
    assert SHORT_TOKEN[4:] not in text
    # Short strings, and lines inside the window, are as they were.
    log.write_text(json.dumps({"a": "x" * 30, "b": "y"}) + "\n" + "z" * 30 + "\n")
    assert read_log_end(log, 60) == log.read_text()
    # A line of no JSON longer than the window is cut as read_end cuts it.
    log.write_text("start\n" + "q" * 5 + SHORT_TOKEN + " word" * 1000 + "\nend\n")
    assert read_log_end(log, 1000) == read_end(log, 1000)


def test_a_line_that_never_ends_is_shown_in_a_follower_cut_outside_a_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    known_secret(monkeypatch, "MY_SVC_TOKEN", SHORT_TOKEN)
    log = tmp_path / "attempt-1.log"
    log.write_text("")
    follow = Follower(log)
    shown, written = "", 0
    with log.open("a") as fh:
        for n in range(20_000):  # 400 KB in one line, read now and then half-way into a key
            fh.write(f"w{n} {SHORT_TOKEN[:6]}")
            if n % 500 == 0:
                fh.flush()
                shown += follow.read()[1]
            fh.write(f"{SHORT_TOKEN[6:]} ")
            written += 1
    shown += follow.read(ended=True)[1]
    assert SHORT_TOKEN[:8] not in shown
    assert SHORT_TOKEN[-8:] not in shown
    assert shown.count(REDACTED) == written


def test_a_long_partial_line_is_never_cut_at_a_blank_inside_a_known_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    password = "P@ss,w0rd! 9"  # noqa: S105 - a test value
    known_secret(monkeypatch, "DB_PASSWORD", password)
    shown = io.BytesIO()
    out = RedactingWriter(shown)
    out.write(b"A" * 66_000 + b" " + password.encode() + b"F" * 5_000)
    out.flush_quiet()  # quiet: the long line goes out up to a safe place
    out.close()
    text = shown.getvalue().decode()
    assert "P@ss" not in text
    assert REDACTED in text


def test_a_secret_is_never_taken_for_a_session_id(monkeypatch: pytest.MonkeyPatch) -> None:
    known_secret(monkeypatch, "MY_SVC_TOKEN", SHORT_TOKEN)
    assert not is_session_id(SHORT_TOKEN)
    assert is_session_id("4f1c2a9e-0d1b-4c55-9a7e-3b1f0c8d2e6a")


@pytest.mark.long
def test_a_huge_log_is_redacted_a_piece_at_a_time_lines_and_key_blocks_whole(
    tmp_path: Path,
) -> None:
    # The whole log was read and redacted in memory: an agent that printed 6 GB took the
    # manager to 12 GB. Pieces of whole lines now; a key block across a piece's end stays whole.
    key = SECRETS["ANTHROPIC_API_KEY"]
    word = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQ"
    body = "\n".join(f"{word}{n:02d}" for n in range(30))
    pem = f"-----BEGIN RSA PRIVATE KEY-----\n{body}\n-----END RSA PRIVATE KEY-----\n"
    line = "progress " * 11 + "\n"
    head = f"first {key}\n" + line * ((4 << 20) // len(line) - 3)  # the block spans 4 MiB
    tail = line * ((80 << 20) // len(line))
    log = tmp_path / "attempt-1.log"
    log.write_text(f"{head}{pem}{tail}last {key}\n")
    inode = log.stat().st_ino

    tracemalloc.start()
    try:
        scrub_file(log)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 48 << 20  # an 84 MB log, never whole in memory
    assert log.stat().st_ino == inode  # in place: an appending writer keeps its file
    with log.open(encoding="utf-8") as fh:
        assert fh.readline() == f"first {REDACTED}\n"
        text = fh.read()
    assert "PRIVATE KEY" not in text
    assert word not in text
    assert text.endswith(f"{line}last {REDACTED}\n")
    assert text.count(line) == len(head.splitlines()) - 1 + len(tail.splitlines())


def test_a_log_on_a_full_disk_is_still_redacted_in_place(small_disk: Path) -> None:
    # Through a temporary file, a log on a full disk kept its secrets until the run's end.
    key = SECRETS["ANTHROPIC_API_KEY"]
    log = small_disk / "attempt-1.log"
    log.write_text(f"working\nmy key is {key}\ndone\n")
    with (small_disk / "filler.bin").open("wb", buffering=0) as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"x" * 65536)
    scrub_file(log)
    assert log.read_text() == f"working\nmy key is {REDACTED}\ndone\n"


def test_a_fresh_retry_leaves_the_copy_files_out_of_what_it_commits(
    repo: Path, write_agent: AgentFactory
) -> None:
    # Its commit of the worktree before starting over took the copied .env (untracked, not
    # ignored) into the old tip its retry event names.
    (repo / ".env").write_text("STRIPE_KEY=sk_live_51Hq8TzLmX2b7c\n")
    agent = write_agent(
        "import pathlib, sys\npathlib.Path('a.txt').write_text('work\\n')\nsys.exit(3)\n"
    )
    path = manifest(
        repo, f'[[task]]\nid = "a"\nprompt = "x"\nagent = {argv_toml(agent)}\ncopy = [".env"]\n'
    )
    assert swarm(repo, "run", path).returncode == 1
    worktree = repo.parent / "repo.swarm" / "a"
    assert (worktree / ".env").exists()
    (worktree / "userfix.txt").write_text("my manual fix\n")
    swarm(repo, "retry", "a", "--fresh")
    with contextlib.closing(sqlite3.connect(repo / ".git" / "swarm" / "state.db")) as db:
        (row,) = db.execute("SELECT data FROM events WHERE kind = 'retry'").fetchall()
    previous = json.loads(row[0])["previous_tip"]
    files = git(repo, "ls-tree", "-r", "--name-only", previous).split()
    assert files == ["README.md", "a.txt", "userfix.txt"]
    assert "sk_live_51Hq8TzLmX2b7c" not in git(repo, "log", "-p", previous)
    assert (repo / ".env").read_text() == "STRIPE_KEY=sk_live_51Hq8TzLmX2b7c\n"  # yours stays
