"""The trust boundary, attacked through git config that swarm's own later git steps read.

A real agent in a real run plants config, left in place (outside writes allowed, as they are
while a run goes on beside swarm's other commands): a hook defined in config, or the remote
pointed at a repository of its making whose hooks would run. swarm's checkpoint, `swarm merge`
and `swarm pr` then run, and the program the agent planted never does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import git, make_repo
from tests.github_server import TOKEN, FakeGitHub, serve
from tests.test_git_runner import needs_configured_hooks
from tests.test_run import status_json, swarm

PLANT = """
import pathlib, subprocess, sys
evil, origin, marker = sys.argv[1:4]
subprocess.run(['git', 'init', '-q', '--bare', evil], check=True)
for name in ('pre-receive', 'update', 'post-receive', 'post-update', 'reference-transaction'):
    hook = pathlib.Path(evil) / 'hooks' / name
    hook.write_text(f'#!/bin/sh\\ntouch {marker}-{name}\\ncat >/dev/null\\n')
    hook.chmod(0o755)
common = subprocess.run(['git', 'rev-parse', '--path-format=absolute', '--git-common-dir'],
                        capture_output=True, text=True, check=True).stdout.strip()
subprocess.run(['git', 'config', '--file', common + '/config',
                f'url.{evil}.insteadOf', origin], check=True)
pathlib.Path('work.txt').write_text('own work\\n')
"""


@pytest.fixture
def fake_github() -> Iterator[FakeGitHub]:
    with serve() as fake:
        yield fake


def test_swarm_pr_to_a_remote_an_agent_redirected_runs_none_of_its_hooks(
    repo: Path,
    tmp_path: Path,
    write_agent: Callable[[str], list[str]],
    fake_github: FakeGitHub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", str(origin))
    git(repo, "remote", "add", "origin", str(origin))
    git(repo, "push", "-q", "origin", "main")
    evil, marker = tmp_path / "evil.git", tmp_path / "pwned"
    agent = " ".join([*write_agent(PLANT), str(evil), str(origin), str(marker)])
    # Outside writes allowed: the plant is recorded and left, as it is while a run goes on.
    out = swarm(repo, "run", "--allow-outside-writes", "--agent", agent, "-t", "bad=p")
    assert out.returncode == 0, out.stderr
    assert status_json(repo)["bad"]["state"] == "done"
    report = swarm(repo, "report", "--json")
    writes = json.loads(report.stdout)["outside_writes"]
    assert [w["suspects"] for w in writes] == [["bad"]], writes
    assert "config" in json.dumps(writes), writes
    assert git(repo, "config", f"url.{evil}.insteadOf") == str(origin)  # left, as allowed
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    monkeypatch.delenv("GH_TOKEN", raising=False)
    out = swarm(repo, "pr", "--github-repo", "acme/widgets", "--api-url", fake_github.url)
    assert out.returncode == 0, out.stderr
    assert not list(tmp_path.glob("pwned-*"))
    # The push went where the config says, and the repository there ran none of its hooks.
    assert git(evil, "rev-parse", "swarm/bad") == git(repo, "rev-parse", "swarm/bad")


HOOK = """
import pathlib, subprocess, sys
marker = sys.argv[1]
common = subprocess.run(['git', 'rev-parse', '--path-format=absolute', '--git-common-dir'],
                        capture_output=True, text=True, check=True).stdout.strip()
def config(*args):
    subprocess.run(['git', 'config', '--file', common + '/config', *args], check=True)
config('hook.x.command', f'touch {marker} #')
for event in ('reference-transaction', 'post-index-change', 'pre-commit', 'commit-msg',
              'post-commit', 'post-checkout', 'pre-merge-commit', 'post-merge', 'post-rewrite'):
    config('--add', 'hook.x.event', event)
pathlib.Path('work.txt').write_text('own work\\n')
"""


@needs_configured_hooks
def test_a_hook_an_agent_defined_in_config_never_runs_in_swarms_checkpoint_or_merge(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]]
) -> None:
    marker = tmp_path / "pwned"
    agent = " ".join([*write_agent(HOOK), str(marker)])
    out = swarm(repo, "run", "--allow-outside-writes", "--agent", agent, "-t", "bad=p")
    assert out.returncode == 0, out.stderr
    assert status_json(repo)["bad"]["state"] == "done"
    assert git(repo, "show", "swarm/bad:work.txt") == "own work"  # swarm's checkpoint
    writes = json.loads(swarm(repo, "report", "--json").stdout)["outside_writes"]
    assert [w["suspects"] for w in writes] == [["bad"]], writes
    out = swarm(repo, "merge", "bad")
    assert out.returncode == 0, out.stderr
    merged = git(repo, "for-each-ref", "--format=%(refname)", "refs/heads/swarm/integration-*")
    assert git(repo, "show", f"{merged}:work.txt") == "own work"
    assert not marker.exists()
    git(repo, "commit", "-q", "--allow-empty", "-m", "yours")  # your git runs it: the test is real
    assert marker.exists()


GLOBAL_FILTER = """
import os, pathlib, subprocess, sys
marker = sys.argv[1]
# Not this agent's own git config (GIT_CONFIG_GLOBAL): yours, which swarm's git reads.
mine = pathlib.Path(os.environ['HOME']) / '.gitconfig'
for leaf in ('clean', 'smudge'):
    subprocess.run(['git', 'config', '--file', str(mine), f'filter.x.{leaf}',
                    f'touch {marker}-{leaf}; cat'], check=True)
pathlib.Path('.gitattributes').write_text('*.txt filter=x\\n')
pathlib.Path('a.txt').write_text('data\\n')
subprocess.run(['git', 'add', '.gitattributes', 'a.txt'], check=True)
subprocess.run(['git', 'commit', '-q', '-m', 'attributes'], check=True)
# Same bytes, another time: git reads the file through its filter to compare it.
later = os.stat('a.txt').st_mtime + 10
os.utime('a.txt', (later, later))
pathlib.Path('work.md').write_text('own work\\n')
"""


def test_a_filter_an_agent_plants_in_your_global_config_never_runs_in_swarms_git(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]]
) -> None:
    marker = tmp_path / "pwned"
    agent = " ".join([*write_agent(GLOBAL_FILTER), str(marker)])
    out = swarm(repo, "run", "--allow-outside-writes", "--agent", agent, "-t", "bad=p")
    assert out.returncode == 0, out.stderr
    assert status_json(repo)["bad"]["state"] == "done"
    assert git(repo, "show", "swarm/bad:work.md") == "own work"  # swarm's checkpoint
    writes = json.loads(swarm(repo, "report", "--json").stdout)["outside_writes"]
    assert [w["suspects"] for w in writes] == [["bad"]], writes
    assert ".gitconfig: filter.x.clean" in json.dumps(writes), writes
    out = swarm(repo, "merge", "bad")  # its worktree checks a.txt out: the smudge filter
    assert out.returncode == 0, out.stderr
    merged = git(repo, "for-each-ref", "--format=%(refname)", "refs/heads/swarm/integration-*")
    assert git(repo, "show", f"{merged}:a.txt") == "data"
    assert swarm(repo, "clean", "--yes").returncode == 0, out.stderr
    assert not list(tmp_path.glob("pwned-*"))
    git(repo, "checkout", "-q", merged)  # your git runs it: the test is real
    assert list(tmp_path.glob("pwned-*"))


def test_a_filter_of_your_global_config_from_before_the_run_runs_in_swarms_git(
    tmp_path: Path, write_agent: Callable[[str], list[str]]
) -> None:
    git(tmp_path, "config", "--global", "filter.up.clean", "tr a-z A-Z")
    repo = make_repo(tmp_path / "repo", {".gitattributes": "*.txt filter=up\n"})
    agent = " ".join(write_agent("import pathlib\npathlib.Path('work.txt').write_text('own\\n')"))
    out = swarm(repo, "run", "--agent", agent, "-t", "t=p")
    assert out.returncode == 0, out.stderr
    assert git(repo, "show", "swarm/t:work.txt") == "OWN"  # swarm's checkpoint ran it
    assert json.loads(swarm(repo, "report", "--json").stdout)["outside_writes"] == []
    out = swarm(repo, "merge", "t")
    assert out.returncode == 0, out.stderr
    merged = git(repo, "for-each-ref", "--format=%(refname)", "refs/heads/swarm/integration-*")
    assert git(repo, "show", f"{merged}:work.txt") == "OWN"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_the_record_of_your_global_config_holds_only_what_runs_a_program(
    tmp_path: Path, write_agent: Callable[[str], list[str]]
) -> None:
    header = "AUTHORIZATION: bearer s3cr3t-value"
    git(tmp_path, "config", "--global", "filter.up.clean", "tr a-z A-Z")
    git(tmp_path, "config", "--global", "http.extraheader", header)
    git(tmp_path, "config", "--global", "http.https://me:pw@example.com/.extraheader", header)
    git(tmp_path, "config", "--global", "user.email", "me@example.com")
    repo = make_repo(tmp_path / "repo", {".gitattributes": "*.txt filter=up\n"})
    agent = " ".join(write_agent("import pathlib\npathlib.Path('work.txt').write_text('own\\n')"))
    out = swarm(repo, "run", "--agent", agent, "-t", "t=p")
    assert out.returncode == 0, out.stderr
    assert git(repo, "show", "swarm/t:work.txt") == "OWN"  # your filter: trusted
    record = json.loads((repo / ".git" / "swarm" / "user-config.json").read_text())
    assert record["trusted"] == [_sha256("filter.up.clean\ntr a-z A-Z")]
    kept = json.dumps(record)
    for name, value in [
        ("http.extraheader", header),
        ("http.https://me:pw@example.com/.extraheader", header),
        ("user.email", "me@example.com"),
    ]:
        assert _sha256(f"{name}\n{value}") not in kept
    assert "pw@" not in kept


TAMPER = (
    GLOBAL_FILTER
    + """
import hashlib, json, time
how = sys.argv[2]
common = subprocess.run(['git', 'rev-parse', '--path-format=absolute', '--git-common-dir'],
                        capture_output=True, text=True, check=True).stdout.strip()
record = pathlib.Path(common) / 'swarm' / 'user-config.json'
mine = [hashlib.sha256(f'filter.x.{leaf}\\ntouch {marker}-{leaf}; cat'.encode()).hexdigest()
        for leaf in ('clean', 'smudge')]
deadline = time.monotonic() + 60
# Once the guard recorded the filter as planted: nothing of swarm's writes the record again.
while not set(mine) <= set(json.loads(record.read_text())['planted']):
    if time.monotonic() > deadline:
        sys.exit('the guard never recorded the filter')
    time.sleep(0.05)
if how == 'delete':
    record.unlink()
else:
    run = json.loads(record.read_text())['run']
    record.write_text(json.dumps({'run': run, 'trusted': mine, 'planted': []}))
"""
)


@pytest.mark.parametrize("how", ["delete", "rewrite"])
def test_the_record_of_your_global_config_an_agent_deletes_or_rewrites_is_written_back(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]], how: str
) -> None:
    marker = tmp_path / "pwned"
    agent = " ".join([*write_agent(TAMPER), str(marker), how])
    out = swarm(repo, "run", "--allow-outside-writes", "--agent", agent, "-t", "bad=p")
    assert out.returncode == 0, out.stderr
    assert status_json(repo)["bad"]["state"] == "done"
    writes = json.loads(swarm(repo, "report", "--json").stdout)["outside_writes"]
    told = [w for w in writes if w["git_files"] == ["swarm/user-config.json"]]
    assert [(w["suspects"], w["restored"]) for w in told] == [(["bad"], True)], writes
    out = swarm(repo, "merge", "bad")  # its worktree checks a.txt out: the smudge filter
    assert out.returncode == 0, out.stderr
    merged = git(repo, "for-each-ref", "--format=%(refname)", "refs/heads/swarm/integration-*")
    assert git(repo, "show", f"{merged}:a.txt") == "data"
    assert swarm(repo, "clean", "--yes").returncode == 0
    assert not list(tmp_path.glob("pwned-*"))


PLANT_FILTER = """
import os, pathlib, subprocess, sys
mine = pathlib.Path(os.environ['HOME']) / '.gitconfig'
subprocess.run(['git', 'config', '--file', str(mine), 'filter.x.clean', 'cat'], check=True)
pathlib.Path('.gitattributes').write_text('*.txt filter=x\\n')
pathlib.Path('new.txt').write_text('data\\n')
"""


def test_a_file_left_out_for_a_filter_planted_in_your_global_config_says_so(
    repo: Path, write_agent: Callable[[str], list[str]]
) -> None:
    agent = " ".join(write_agent(PLANT_FILTER))
    out = swarm(repo, "run", "--allow-outside-writes", "--agent", agent, "-t", "t=p")
    assert out.returncode == 1, out.stderr
    row = status_json(repo)["t"]
    assert row["state"] == "failed"
    assert str(row["reason"]).startswith(
        "changed files whose filter comes from your global or system git config (new there"
        " since the run began), which swarm's git never runs (new.txt (filter x)): left out"
    ), row["reason"]
