"""`swarm pr` end to end: the real CLI, a real bare `origin`, a real HTTP server as GitHub."""

from __future__ import annotations

import errno
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import agent_command, git
from tests.github_server import TOKEN, FakeGitHub, Scripted, serve
from tests.test_guard_lock import wait_for
from tests.test_run import checkout_snapshot, status_json, swarm, swarm_bg
from worktree_swarm.github import pr_text
from worktree_swarm.github.pr_conflicts import HEADING, Clash, section
from worktree_swarm.infra.store import Store

AGENT = (
    "import os, pathlib\n"
    "tid = os.environ['SWARM_TASK_ID']\n"
    "pathlib.Path(tid + '.txt').write_text('work of ' + tid + '\\n')\n"
)


@pytest.fixture
def fake_github() -> Iterator[FakeGitHub]:
    with serve() as fake:
        yield fake


@pytest.fixture
def origin(repo: Path, tmp_path: Path) -> Path:
    bare = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    git(repo, "remote", "add", "origin", str(bare))
    git(repo, "push", "-q", "origin", "main")
    return bare


@pytest.fixture
def done_run(repo: Path, tmp_path: Path, origin: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two done tasks (one made from issue #7) with a check, and GITHUB_TOKEN set."""
    agent = tmp_path / "agent.py"
    agent.write_text(AGENT)
    out = swarm(
        repo,
        "run",
        "--agent",
        f"{agent_command()} {agent}",
        "--check",
        f"{sys.executable} -c pass",
        "-t",
        "one=Add the one file\n\nwith details @someone Closes #1\u202e\x1b[2J",
        "-t",
        "issue-7=Resolve GitHub issue #7: Login loops",
    )
    assert out.returncode == 0, out.stderr
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    monkeypatch.delenv("GH_TOKEN", raising=False)
    monkeypatch.delenv("SWARM_GITHUB_API_URL", raising=False)
    return origin


def swarm_pr(repo: Path, fake: FakeGitHub, *args: str) -> subprocess.CompletedProcess[str]:
    return swarm(repo, "pr", "--github-repo", "acme/widgets", "--api-url", fake.url, *args)


def remote_branches(bare: Path) -> list[str]:
    return git(bare, "for-each-ref", "--format=%(refname:short)", "refs/heads/").split()


def test_pr_pushes_and_opens_one_pull_request_per_done_task(
    repo: Path, done_run: Path, fake_github: FakeGitHub
) -> None:
    fake_github.bare = done_run
    git(repo, "config", "push.autoSetupRemote", "true")  # no `-u` of yours either
    before = checkout_snapshot(repo)
    out = swarm_pr(repo, fake_github)
    assert out.returncode == 0, out.stderr
    # A plain push: no upstream configured for the pushed branches.
    upstreams = subprocess.run(
        ["git", "config", "--get-regexp", r"^branch\.swarm/"],
        cwd=repo, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert upstreams.stdout == "", upstreams.stdout
    assert out.stdout.splitlines() == [
        "one  created  #1  https://github.test/acme/widgets/pull/1",
        "issue-7  created  #2  https://github.test/acme/widgets/pull/2",
    ]
    assert sorted(remote_branches(done_run)) == ["main", "swarm/issue-7", "swarm/one"]
    assert git(done_run, "rev-parse", "swarm/one") == git(repo, "rev-parse", "swarm/one")
    assert checkout_snapshot(repo) == before
    one, issue = fake_github.pulls[1], fake_github.pulls[2]
    assert (one["title"], one["head"]["ref"], one["base"]["ref"]) == (
        "Add the one file",
        "swarm/one",
        "main",
    )
    assert one["draft"] is False
    assert issue["title"] == "Resolve GitHub issue #7: Login loops"
    body = one["body"]
    # The prompt is fenced, so "Closes #1" and @mentions in it are inert on GitHub.
    # Shown as an issue's text: no escape sequence, no invisible character reordering it.
    assert "```text\nAdd the one file\n\nwith details @someone Closes #1<U+202E> [2J\n```" in body
    assert "**Diff:** 1 file changed, +1 -0 (against `" in body
    assert "**Checks:** passed" in body
    assert f"- `{sys.executable} -c pass`: passed" in body
    assert "\nCloses #" not in body
    assert "**Cost:**" not in body
    assert issue["body"].endswith("\n\nCloses #7\n")
    # Pull requests are recorded as events of the run.
    with Store(repo / ".git" / "swarm" / "state.db") as store:
        run_id = store.latest_run_id()
        assert run_id is not None
        kinds = [(e.kind, e.task_id, e.data) for e in store.events(run_id)]
    assert (
        "pull_request",
        "one",
        {"action": "created", "number": 1, "url": "https://github.test/acme/widgets/pull/1"},
    ) in kinds


def test_second_run_updates_instead_of_duplicating(
    repo: Path, done_run: Path, fake_github: FakeGitHub
) -> None:
    assert swarm_pr(repo, fake_github).returncode == 0
    # More work lands on the branch (e.g. a resumed task) and a cost was recorded.
    worktree = repo.parent / "repo.swarm" / "one"
    (worktree / "more.txt").write_text("a\nb\n")
    git(worktree, "add", "more.txt")
    git(worktree, "commit", "-q", "-m", "more")
    with Store(repo / ".git" / "swarm" / "state.db") as store:
        run_id = store.latest_run_id()
        assert run_id is not None
        store.update_task(run_id, "one", cost_usd=0.4213)
    out = swarm_pr(repo, fake_github)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "one  updated  #1  https://github.test/acme/widgets/pull/1",
        "issue-7  updated  #2  https://github.test/acme/widgets/pull/2",
    ]
    assert len(fake_github.pulls) == 2
    assert len(fake_github.calls("POST")) == 2
    assert len(fake_github.calls("PATCH")) == 2
    body = fake_github.pulls[1]["body"]
    assert "**Diff:** 2 files changed, +3 -0" in body
    assert "**Cost:** $0.42" in body
    assert git(done_run, "rev-parse", "swarm/one") == git(repo, "rev-parse", "swarm/one")


def test_a_pull_request_made_after_its_answer_was_lost_is_found_not_opened_twice(
    repo: Path, done_run: Path, fake_github: FakeGitHub
) -> None:
    # GitHub made the pull request, but the answer never reached swarm (a proxy's 502, a
    # request given up at its deadline): that task failed; the next `swarm pr` finds it.
    fake_github.lost_creates = 1
    first = swarm_pr(repo, fake_github)
    assert first.returncode == 1, first.stdout + first.stderr
    assert first.stdout.splitlines()[0].startswith("one  failed  GitHub POST ")
    assert len(fake_github.pulls) == 2
    out = swarm_pr(repo, fake_github)
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(fake_github.pulls) == 2  # none opened twice
    assert out.stdout.splitlines()[0] == "one  updated  #1  https://github.test/acme/widgets/pull/1"
    assert sorted(p["head"]["ref"] for p in fake_github.pulls.values()) == [
        "swarm/issue-7",
        "swarm/one",
    ]


def test_a_pull_request_opened_since_swarm_looked_is_updated_not_failed(
    repo: Path, done_run: Path, fake_github: FakeGitHub
) -> None:
    # A killed `swarm pr` whose request GitHub carried out late (or another one at once)
    # opened it between this one's look and its own request: GitHub's 422 "already exists"
    # failed the task, and only the `swarm pr` after it updated the pull request.
    fake_github.opened_meanwhile = 1
    out = swarm_pr(repo, fake_github)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines()[0] == "one  updated  #1  https://github.test/acme/widgets/pull/1"
    ones = [p for p in fake_github.pulls.values() if p["head"]["ref"] == "swarm/one"]
    assert len(ones) == 1
    assert ones[0]["title"] != "opened meanwhile"  # swarm's title and body replace its own


@pytest.mark.parametrize("how", ["merged", "closed"])
def test_a_pull_request_merged_or_closed_on_github_is_never_opened_again(
    repo: Path, done_run: Path, fake_github: FakeGitHub, how: str
) -> None:
    assert swarm_pr(repo, fake_github).returncode == 0
    fake_github.pulls[1]["state"] = "closed"  # by a person, on GitHub
    fake_github.pulls[1]["merged_at"] = "2026-12-02T10:00:00Z" if how == "merged" else None
    git(done_run, "branch", "-D", "swarm/one")  # GitHub deletes the merged head branch

    out = swarm_pr(repo, fake_github)

    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "one  kept  #1  https://github.test/acme/widgets/pull/1"
    assert len(fake_github.pulls) == 2
    assert "swarm/one" not in remote_branches(done_run)  # not pushed back
    assert status_json(repo)["one"]["pr_state"] == how


@pytest.mark.parametrize("same_tip", [True, False])
def test_a_pull_request_opened_unrecorded_and_closed_since_is_kept_not_opened_again(
    repo: Path, done_run: Path, fake_github: FakeGitHub, same_tip: bool
) -> None:
    # GitHub made #1 but swarm never heard (killed, its answer lost); a person closed it.
    fake_github.bare = done_run
    fake_github.lost_creates = 1
    assert swarm_pr(repo, fake_github).returncode == 1
    fake_github.pulls[1]["state"] = "closed"
    if not same_tip:  # an earlier run's pull request of a task of the same id: other work
        fake_github.pulls[1]["head"]["sha"] = "0" * 40

    out = swarm_pr(repo, fake_github)

    assert out.returncode == 0, out.stdout + out.stderr
    first = out.stdout.splitlines()[0]
    if same_tip:
        assert first == "one  kept  #1  https://github.test/acme/widgets/pull/1"
        assert len(fake_github.pulls) == 2
        assert status_json(repo)["one"]["pr_state"] == "closed"
    else:
        assert first == "one  created  #3  https://github.test/acme/widgets/pull/3"


@pytest.mark.long
def test_a_recorded_number_that_is_someone_elses_pull_request_is_not_taken_for_the_tasks(
    repo: Path, done_run: Path, fake_github: FakeGitHub
) -> None:
    assert swarm_pr(repo, fake_github).returncode == 0
    # The same number names another branch's closed pull request now (another API, another
    # repository behind it): not the task's, which is opened there.
    fake_github.pulls[1].update(
        state="closed", head={"ref": "feature-x", "label": "someone:feature-x"}
    )

    out = swarm_pr(repo, fake_github)

    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines()[0] == "one  created  #3  https://github.test/acme/widgets/pull/3"
    assert status_json(repo)["one"]["pr_number"] == 3


def test_a_rate_limit_github_already_told_stops_pr_before_any_push(
    repo: Path, done_run: Path, fake_github: FakeGitHub
) -> None:
    reset = str(int(time.time()) + 3600)
    limited = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": reset}
    fake_github.scripted.append(Scripted("GET", "/pulls$", 200, limited, []))  # the access check

    out = swarm_pr(repo, fake_github)

    assert out.returncode != 0
    assert "rate limit" in out.stdout + out.stderr
    assert remote_branches(done_run) == ["main"]  # nothing pushed for a pull request not opened
    assert fake_github.pulls == {}


def test_a_reply_without_a_pull_request_number_fails_that_task_only(
    repo: Path, done_run: Path, fake_github: FakeGitHub
) -> None:
    fake_github.scripted.append(Scripted("POST", "/pulls$", 201, {}, {"html_url": "x"}))
    out = swarm_pr(repo, fake_github)
    assert out.returncode == 1, out.stderr
    first, second = out.stdout.splitlines()
    assert first.startswith("one  failed  GitHub replied with no pull request number")
    assert second.startswith("issue-7  created  #")


def test_a_pull_request_number_past_any_fails_its_task_now_and_when_found_again(
    repo: Path, done_run: Path, fake_github: FakeGitHub
) -> None:
    # 2**70 did not fit the store: an internal error, then again on every `swarm pr`, which
    # found that pull request by its branch.
    head = {"ref": "swarm/one", "label": "acme:swarm/one"}
    base = {"ref": "main"}
    huge = {"number": 2**70, "state": "open", "html_url": "x", "head": head, "base": base}
    fake_github.scripted.append(Scripted("POST", "/pulls$", 201, {}, huge))
    said = "one  failed  GitHub replied with a pull request number of 22 digits, past any it gives"
    out = swarm_pr(repo, fake_github)
    assert (out.returncode, out.stderr) == (1, ""), out.stdout + out.stderr
    assert out.stdout.splitlines() == [
        said,
        "issue-7  created  #1  https://github.test/acme/widgets/pull/1",
    ]
    fake_github.scripted += [
        Scripted("GET", "/pulls$", 200, {}, []),  # the look before anything is pushed
        Scripted("GET", "/pulls$", 200, {}, [huge]),  # task one's own pull request
    ]
    again = swarm_pr(repo, fake_github)
    assert (again.returncode, again.stderr) == (1, ""), again.stdout + again.stderr
    assert again.stdout.splitlines()[0] == said
    assert status_json(repo)["one"]["pr_number"] is None


@pytest.mark.parametrize(
    ("status", "headers", "body"),
    [
        # A proxy's page of many lines, and a message whose escapes and lines would write your
        # clipboard (OSC 52) and forge the next task's line.
        (502, {}, b"<html>\n<head><title>502 Bad Gateway</title></head>\n</html>\n"),
        (422, {}, {"message": "Invalid\n\x1b]52;c;cm0gLXJmIH4K\x07\ntwo  created  #9  x"}),
        (422, {}, {"message": "Validation Failed", "errors": 5}),  # a traceback, mid-batch
    ],
)
def test_a_refused_pull_request_is_one_printable_line_and_the_rest_carry_on(
    repo: Path,
    done_run: Path,
    fake_github: FakeGitHub,
    status: int,
    headers: dict[str, str],
    body: dict[str, object] | bytes,
) -> None:
    fake_github.scripted.append(Scripted("POST", "/pulls$", status, headers, body))
    out = swarm_pr(repo, fake_github)
    assert out.returncode == 1, out.stderr
    first, second = out.stdout.splitlines()
    assert first.startswith(
        f"one  failed  GitHub POST /repos/acme/widgets/pulls failed with {status}"
    )
    assert "\x1b" not in out.stdout + out.stderr
    assert second.startswith("issue-7  created  #")


@pytest.mark.parametrize(
    "reply",
    [
        {"number": True, "html_url": "x"},  # stored as pull request #1, someone else's
        {"number": 5, "html_url": "https://x/\ud800\x1b]0;title\x07", "state": ["open"]},
        {"html_url": "x", "authorization": f"Bearer {TOKEN}"},  # cut before it was redacted
    ],
)
def test_an_odd_pull_request_reply_is_stored_printable_or_fails_its_task_only(
    repo: Path, done_run: Path, fake_github: FakeGitHub, reply: dict[str, object]
) -> None:
    fake_github.scripted.append(Scripted("POST", "/pulls$", 201, {}, reply))
    out = swarm_pr(repo, fake_github)
    assert "internal error" not in out.stderr
    first, second = out.stdout.splitlines()
    assert second.startswith("issue-7  created  #")
    assert "\x1b" not in out.stdout
    assert TOKEN[:6] not in out.stdout + out.stderr
    if reply.get("number") == 5:
        assert first == "one  created  #5  https://x/? ]0;title"
        assert status_json(repo)["one"]["pr_url"] == "https://x/? ]0;title"
    else:
        assert first.startswith("one  failed  GitHub replied with no pull request number")


def test_a_file_name_cannot_end_the_code_span_it_is_named_in() -> None:
    name = "a.txt\n\nCloses #1 @victim\n\n`b"  # an agent names its files as it likes
    heading, blank, line = section([Clash(task_id="other", number=2, files=(name,))])
    assert (heading, blank) == (HEADING, "")
    assert line == '- #2 (task `other`): `"a.txt\\n\\nCloses #1 @victim\\n\\n\'b"`'


def test_a_conflict_section_stays_bounded_however_many_files_and_pull_requests_clash() -> None:
    # Two branches that touch every file of a big repository conflict in thousands: GitHub
    # refuses a body past 65,536 characters, and that task would never get its pull request.
    files = tuple(f"src/{'deep/' * 30}module_{i}.py" for i in range(2000))
    found = [Clash(task_id=f"t{n}", number=n, files=files) for n in range(1, 41)]
    lines = section(found)
    assert sum(len(line) + 1 for line in lines) < 45_000
    assert lines[2].endswith(" and 1990 more files")
    assert lines[-1] == "- and 10 more pull requests"
    assert "…" in lines[2]  # a long path is cut, marked
    assert len(pr_text._bounded("line\n" * 20_000)) <= pr_text.GITHUB_BODY_LIMIT


MANY_AGENT = (
    "import os, pathlib\n"
    "tid = os.environ['SWARM_TASK_ID']\n"
    "for i in range(40):\n"
    "    pathlib.Path(f'f{i}.txt').write_text(tid + '\\n')\n"
)


def test_a_pull_request_clashing_on_many_files_names_ten_and_counts_the_rest(
    repo: Path,
    tmp_path: Path,
    origin: Path,
    fake_github: FakeGitHub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = tmp_path / "agent.py"
    agent.write_text(MANY_AGENT)
    out = swarm(repo, "run", "--agent", f"{agent_command()} {agent}", "-t", "aa=a", "-t", "bb=b")
    assert out.returncode == 0, out.stderr
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    fake_github.bare = origin
    assert swarm_pr(repo, fake_github).returncode == 0
    listed = fake_github.pulls[2]["body"].split(HEADING, 1)[1]
    assert "- #1 (task `aa`): `f0.txt`, `f1.txt`, " in listed
    assert listed.count(".txt`") == 10
    assert " and 30 more files\n" in listed


def _run_for_prs(repo: Path, tmp_path: Path, tasks: str) -> None:
    """A run of the manifest's *tasks* (each writes its own file with AGENT); all done."""
    agent = tmp_path / "agent.py"
    agent.write_text(AGENT)
    manifest = tmp_path / "tasks.toml"
    argv = json.dumps([*agent_command().split(), str(agent)])
    manifest.write_text(f"[defaults]\nagent = {argv}\n{tasks}")
    assert swarm(repo, "run", str(manifest)).returncode == 0


def test_a_dependent_tasks_pull_request_names_the_work_it_carries(
    repo: Path,
    tmp_path: Path,
    origin: Path,
    fake_github: FakeGitHub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _run_for_prs(repo, tmp_path, '[[task]]\nid = "base-work"\nprompt = "a"\n'
                 '[[task]]\nid = "on-top"\nprompt = "b"\ndepends_on = ["base-work"]\n')  # fmt: skip
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    fake_github.bare = origin

    assert swarm_pr(repo, fake_github, "on-top").returncode == 0
    body = fake_github.pulls[1]["body"]
    # Into main it carries both tasks' commits: counted so, and the other task named.
    assert "**Diff:** 2 files changed, +2 -0" in body
    assert "**Builds on**" in body
    assert "- task `base-work` (no pull request yet)" in body

    assert swarm_pr(repo, fake_github, "base-work").returncode == 0
    assert swarm_pr(repo, fake_github, "on-top").returncode == 0
    assert "- #2 (task `base-work`)" in fake_github.pulls[1]["body"]
    assert "**Builds on**" not in fake_github.pulls[2]["body"]


def test_a_pull_request_names_the_work_of_its_dependencies_dependencies_too(
    repo: Path,
    tmp_path: Path,
    origin: Path,
    fake_github: FakeGitHub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # c builds on b, which builds on a: c's pull request carries a's commits too, and named
    # only b.
    _run_for_prs(repo, tmp_path, '[[task]]\nid = "a"\nprompt = "a"\n'
                 '[[task]]\nid = "b"\nprompt = "b"\ndepends_on = ["a"]\n'
                 '[[task]]\nid = "c"\nprompt = "c"\ndepends_on = ["b"]\n'
                 '[[task]]\nid = "other"\nprompt = "o"\n')  # fmt: skip
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    fake_github.bare = origin
    for task in ("a", "b", "other", "c"):
        assert swarm_pr(repo, fake_github, task).returncode == 0
    body = fake_github.pulls[4]["body"]
    assert "- #2 (task `b`)\n- #1 (task `a`)" in body
    assert "task `other`" not in body  # its commits are not in c's branch


def test_an_earlier_run_never_pushes_or_updates_what_a_later_run_reused(
    repo: Path, done_run: Path, fake_github: FakeGitHub, tmp_path: Path
) -> None:
    fake_github.bare = done_run
    assert swarm_pr(repo, fake_github, "one").returncode == 0
    first = json.loads(swarm(repo, "runs", "--json").stdout)["runs"][0]["run_id"]
    assert swarm(repo, "clean", "--force", "--yes").returncode == 0
    # The next night's batch reuses the id "one": its branch and pull request are that run's.
    agent = tmp_path / "agent.py"
    out = swarm(repo, "run", "--agent", f"{agent_command()} {agent}", "-t", "one=Again")
    assert out.returncode == 0, out.stderr
    second = json.loads(swarm(repo, "runs", "--json").stdout)["runs"][1]["run_id"]
    pushed = git(done_run, "rev-parse", "swarm/one")

    out = swarm_pr(repo, fake_github, "--run", first, "one")
    assert out.returncode == 1
    assert (
        f"branch swarm/one is run {second}'s now (it reused the task id)" in out.stdout + out.stderr
    )
    assert git(done_run, "rev-parse", "swarm/one") == pushed
    assert len(fake_github.calls("PATCH")) == 0
    assert len(fake_github.calls("POST")) == 1  # the first run's own pull request only


def test_named_task_draft_and_base_flags(
    repo: Path, done_run: Path, fake_github: FakeGitHub
) -> None:
    git(repo, "branch", "release")
    out = swarm_pr(repo, fake_github, "issue-7", "--draft", "--base", "release")
    assert out.returncode == 0, out.stderr
    [pull] = fake_github.pulls.values()
    assert (pull["head"]["ref"], pull["base"]["ref"], pull["draft"]) == (
        "swarm/issue-7",
        "release",
        True,
    )
    assert sorted(remote_branches(done_run)) == ["main", "swarm/issue-7"]


def test_a_base_named_again_moves_the_open_pull_requests_onto_it(
    repo: Path, done_run: Path, fake_github: FakeGitHub
) -> None:
    git(repo, "branch", "develop")
    assert swarm_pr(repo, fake_github, "one").returncode == 0
    assert fake_github.pulls[1]["base"]["ref"] == "main"
    assert swarm_pr(repo, fake_github, "one").stdout.endswith("pull/1\n")  # no --base: kept
    out = swarm_pr(repo, fake_github, "one", "--base", "develop")
    assert out.returncode == 0, out.stderr
    assert (
        out.stdout
        == "one  updated  #1  https://github.test/acme/widgets/pull/1  base now develop\n"
    )
    assert fake_github.pulls[1]["base"]["ref"] == "develop"
    assert [c.body.get("base") for c in fake_github.calls("PATCH")] == [None, "develop"]


def test_base_defaults_to_the_checked_out_branch(
    repo: Path, done_run: Path, fake_github: FakeGitHub
) -> None:
    git(repo, "switch", "-q", "-c", "dev")
    assert swarm_pr(repo, fake_github, "one").returncode == 0
    assert fake_github.pulls[1]["base"]["ref"] == "dev"


def test_secondary_rate_limit_is_waited_out(
    repo: Path, done_run: Path, fake_github: FakeGitHub
) -> None:
    fake_github.fail_next("POST", "/pulls$", 403, {"retry-after": "1"})
    out = swarm_pr(repo, fake_github, "one")
    assert out.returncode == 0, out.stderr
    assert out.stderr == "waiting 1s: GitHub rate limit\n"
    first, second = fake_github.calls("POST")
    assert second.at - first.at >= 1.0
    assert len(fake_github.pulls) == 1


def test_a_failed_push_is_reported_and_the_rest_carry_on(
    repo: Path, done_run: Path, fake_github: FakeGitHub, tmp_path: Path
) -> None:
    # The remote already has a different swarm/one: a plain push is refused, never forced.
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", str(done_run), str(other))
    (other / "x.txt").write_text("x\n")
    git(other, "add", "x.txt")
    git(other, "commit", "-q", "-m", "elsewhere")
    git(other, "push", "-q", "origin", "HEAD:refs/heads/swarm/one")
    foreign = git(done_run, "rev-parse", "swarm/one")
    out = swarm_pr(repo, fake_github)
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert lines[0].startswith("one  failed  pushing swarm/one to origin failed: ")
    assert "run `swarm pr` again" in lines[0]
    # What was refused and why, not git's advice after it.
    assert "[rejected]" in lines[0]
    assert "swarm/one -> swarm/one" in lines[0]
    assert "hint:" not in lines[0]
    assert lines[1] == "issue-7  created  #1  https://github.test/acme/widgets/pull/1"
    assert git(done_run, "rev-parse", "swarm/one") == foreign


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("nope",), "no task 'nope' in run "),
        (("--remote", "upstream"), "--remote: no remote named 'upstream' in "),
        # A URL's user name can be a token: shown as git shows a remote, without it.
        (
            ("--remote", f"https://{'0a1b2c3d4e' * 4}@github.com/acme/w.git"),
            "--remote: no remote named 'https://github.com/acme/w.git' in ",
        ),
        (
            ("--api-url", f"ftp://{'0a1b2c3d4e' * 4}@x"),
            "--api-url: 'ftp://x' is not an http(s) URL",
        ),
        (("--github-repo", "not-a-slug"), "--github-repo: 'not-a-slug' is not of the form"),
        (("--github-repo", "-a/b"), "--github-repo: '-a/b': '-a' is no GitHub owner"),
        (("--api-url", "ftp://x"), "--api-url: 'ftp://x' is not an http(s) URL"),
        (("--api-url", "http://a b"), "--api-url: 'http://a b' is not an http(s) URL"),
        (("--api-url", "http://host:99999"), "--api-url: 'http://host:99999' is not an http(s)"),
        (("--base", "no such..branch"), "--base 'no such..branch' is not a valid branch name"),
        (("--base", "-x"), "--base '-x' is not a valid branch name"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_happens(
    repo: Path, done_run: Path, fake_github: FakeGitHub, args: tuple[str, ...], error: str
) -> None:
    out = swarm(repo, "pr", "--api-url", fake_github.url, "--github-repo", "acme/widgets", *args)
    assert out.returncode == 2
    assert out.stderr.startswith(f"swarm: {error}")
    assert len(out.stderr.splitlines()) == 1
    assert fake_github.requests == []
    assert remote_branches(done_run) == ["main"]


def test_a_detached_head_without_base_is_bad_input_before_github_is_asked_anything(
    repo: Path, done_run: Path, fake_github: FakeGitHub
) -> None:
    # The base is the branch your checkout is on: with none, GitHub's access was checked
    # first, and an unreachable API was said instead of what to pass.
    git(repo, "switch", "-q", "--detach")
    out = swarm_pr(repo, fake_github)
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == f"swarm: HEAD of {repo} is detached; pass --base BRANCH\n"
    assert fake_github.requests == []
    assert remote_branches(done_run) == ["main"]
    assert swarm_pr(repo, fake_github, "--base", "main").returncode == 0


def test_an_empty_api_url_is_bad_input_not_the_default(
    repo: Path, done_run: Path, fake_github: FakeGitHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `--api-url "$GHES_URL"` with the variable unset: the token went to the variable's API
    # (or api.github.com), not to the one meant.
    monkeypatch.setenv("SWARM_GITHUB_API_URL", fake_github.url)
    out = swarm(repo, "pr", "--github-repo", "acme/widgets", "--api-url", "")
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == (
        "swarm: --api-url is empty; give the API's base URL, or leave it out for"
        " https://api.github.com\n"
    )
    assert fake_github.requests == []
    assert remote_branches(done_run) == ["main"]


def test_local_remote_without_github_repo_and_missing_token(
    repo: Path,
    done_run: Path,
    fake_github: FakeGitHub,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    out = swarm(repo, "pr", "--api-url", fake_github.url)
    assert out.returncode == 2
    assert out.stderr == (
        f"swarm: remote 'origin' is a local path ({done_run}); name the GitHub repository with"
        " --github-repo OWNER/NAME\n"
    )
    # A PATH with git but without gh.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    git_exe = shutil.which("git")
    assert git_exe is not None
    (bindir / "git").symlink_to(git_exe)
    monkeypatch.delenv("GITHUB_TOKEN")
    monkeypatch.setenv("PATH", str(bindir))
    out = swarm_pr(repo, fake_github)
    assert out.returncode == 2
    assert out.stderr == (
        "swarm: no GitHub token: set GITHUB_TOKEN (or GH_TOKEN), or log in with `gh auth login`\n"
    )
    assert fake_github.requests == []
    assert remote_branches(done_run) == ["main"]


def test_task_that_is_not_done_is_refused(
    repo: Path, done_run: Path, fake_github: FakeGitHub
) -> None:
    with Store(repo / ".git" / "swarm" / "state.db") as store:
        run_id = store.latest_run_id()
        assert run_id is not None
        store.update_task(run_id, "one", state="failed")
    out = swarm_pr(repo, fake_github, "one")
    assert out.returncode == 2
    assert out.stderr == (
        "swarm: task 'one' is failed, not done; only done tasks get a pull request\n"
    )
    # Without names, only done tasks are taken.
    out = swarm_pr(repo, fake_github)
    assert out.returncode == 0, out.stderr
    assert [p["head"]["ref"] for p in fake_github.pulls.values()] == ["swarm/issue-7"]


@pytest.mark.long
def test_the_token_never_appears_in_output_state_logs_or_pull_requests(
    repo: Path, done_run: Path, fake_github: FakeGitHub, tmp_path: Path
) -> None:
    fake_github.fail_next("POST", "/pulls$", 403, {"retry-after": "1"})
    fake_github.fail_next("PATCH", "/pulls/", 422, message=f"token {TOKEN} rejected")
    outputs = [swarm_pr(repo, fake_github), swarm_pr(repo, fake_github)]
    assert [o.returncode for o in outputs] == [0, 1]
    assert "[REDACTED]" in outputs[1].stdout
    # The token was used (the server checks it) ...
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in fake_github.requests)
    # ... and shows up nowhere: output, state dir, logs, worktrees, remote, pull requests.
    for out in outputs:
        assert TOKEN not in out.stdout
        assert TOKEN not in out.stderr
    for pull in fake_github.pulls.values():
        assert TOKEN not in pull["title"]
        assert TOKEN not in pull["body"]
    needle = TOKEN.encode()
    scanned = 0
    for path in tmp_path.rglob("*"):
        if path.is_file() and not path.is_symlink():
            scanned += 1
            assert needle not in path.read_bytes(), path
    assert scanned > 20
    assert (repo / ".git" / "swarm" / "state.db").is_file()


# Commits the value of its task's secret itself (no checkpoint sees it), in another file.
SELF_COMMITTING_AGENT = r"""
import os, pathlib, subprocess
tid = os.environ["SWARM_TASK_ID"]
pathlib.Path(tid + ".txt").write_text("work of " + tid + "\n")
if tid == "leaky":
    pathlib.Path("cfg.txt").write_text("db=" + os.environ["DB_PASSWORD"] + "\n")
    subprocess.run(["git", "add", "-A"], check=True)
    subprocess.run(["git", "commit", "-q", "-m", "config"], check=True)
"""


def test_a_tasks_env_secret_reaches_no_pull_request_and_no_branch(
    repo: Path,
    origin: Path,
    fake_github: FakeGitHub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only `swarm pr`'s own environment was taken: the value was in a body, and a branch an
    agent had committed it to was pushed (and merged by `swarm merge`)."""
    secret = "Zq9vX2mK8pL4"  # noqa: S105 - made up, as a password would be
    agent = tmp_path / "agent.py"
    agent.write_text(SELF_COMMITTING_AGENT)
    (tmp_path / "tasks.toml").write_text(
        f'[defaults]\nagent = ["{sys.executable}", "{agent}"]\n'
        f'env = {{ DB_PASSWORD = "{secret}" }}\n'
        f'[[task]]\nid = "quoting"\nprompt = "Use the key {secret} to connect"\n'
        '[[task]]\nid = "leaky"\nprompt = "write the config"\n'
    )
    out = swarm(repo, "run", str(tmp_path / "tasks.toml"))
    assert out.returncode == 0, out.stdout + out.stderr
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    monkeypatch.delenv("GH_TOKEN", raising=False)
    monkeypatch.delenv("DB_PASSWORD", raising=False)  # only the task's `env` has it
    out = swarm_pr(repo, fake_github)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "not pushing swarm/leaky: cfg.txt" in out.stdout
    assert remote_branches(origin) == ["main", "swarm/quoting"]
    (pull,) = fake_github.pulls.values()
    assert secret not in pull["body"]
    assert "[REDACTED]" in pull["body"]
    merged = swarm(repo, "merge")
    assert merged.returncode == 1, merged.stdout + merged.stderr
    assert "not merging swarm/leaky: cfg.txt" in merged.stdout
    assert secret not in out.stdout + out.stderr + merged.stdout + merged.stderr


SHARED_AGENT = (
    "import os, pathlib\n"
    "tid = os.environ['SWARM_TASK_ID']\n"
    "pathlib.Path(tid + '.txt').write_text(tid + '\\n')\n"
    "pathlib.Path('shared.txt').write_text('written by ' + tid + '\\n')\n"
)


@pytest.fixture
def clashing_run(repo: Path, tmp_path: Path, origin: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two done tasks that both create shared.txt, and GITHUB_TOKEN set."""
    agent = tmp_path / "agent.py"
    agent.write_text(SHARED_AGENT)
    out = swarm(repo, "run", "--agent", f"{agent_command()} {agent}", "-t", "aa=a", "-t", "bb=b")
    assert out.returncode == 0, out.stderr
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    monkeypatch.delenv("GH_TOKEN", raising=False)
    return origin


def status_rows(repo: Path) -> dict[str, dict[str, object]]:
    out = swarm(repo, "status", "--json")
    assert out.returncode == 0, out.stderr
    return {t["task_id"]: t for t in json.loads(out.stdout)["tasks"]}


def test_pr_after_a_local_merge_opens_pull_requests_for_every_done_task(
    repo: Path, clashing_run: Path, fake_github: FakeGitHub
) -> None:
    fake_github.bare = clashing_run
    merged = swarm(repo, "merge")
    assert merged.returncode == 1  # bb conflicts with the integration branch
    out = swarm_pr(repo, fake_github)
    assert out.returncode == 0, out.stderr
    assert [ln.split()[:2] for ln in out.stdout.splitlines()] == [
        ["aa", "created"],
        ["bb", "created"],
    ]
    rows = status_rows(repo)
    assert (rows["aa"]["state"], rows["bb"]["state"]) == ("done", "done")
    assert (rows["aa"]["merge_result"], rows["bb"]["merge_result"]) == ("merged", "conflicted")
    assert (rows["bb"]["pr_number"], rows["bb"]["pr_state"]) == (2, "open")
    assert rows["bb"]["pr_url"] == "https://github.test/acme/widgets/pull/2"
    text = swarm(repo, "status").stdout
    assert "merged into swarm/integration-" in text
    assert "PR #2 open" in text


@pytest.mark.slow  # long: runs in `scripts/check --slow` (CI runs both)
def test_pr_bodies_name_the_open_pull_requests_they_conflict_with(
    repo: Path, clashing_run: Path, fake_github: FakeGitHub
) -> None:
    fake_github.bare = clashing_run
    out = swarm_pr(repo, fake_github)
    assert out.returncode == 0, out.stderr
    first, second = fake_github.pulls[1]["body"], fake_github.pulls[2]["body"]
    heading = "**Predicted conflicts with other open swarm pull requests**"
    # #1 was opened before #2 existed: it was updated once #2's number was known.
    assert f"{heading}\n\n- #2 (task `bb`): `shared.txt`\n" in first
    assert f"{heading}\n\n- #1 (task `aa`): `shared.txt`\n" in second

    # bb stops touching shared.txt; updating the pull requests updates that section.
    worktree = repo.parent / "repo.swarm" / "bb"
    git(worktree, "rm", "-q", "shared.txt")
    git(worktree, "commit", "-q", "-m", "leave shared.txt alone")
    again = swarm_pr(repo, fake_github)
    assert again.returncode == 0, again.stderr
    assert heading not in fake_github.pulls[1]["body"]
    assert heading not in fake_github.pulls[2]["body"]
    assert len(fake_github.pulls) == 2


def test_a_failed_update_with_predicted_conflicts_leaves_the_pull_requests_open(
    repo: Path, clashing_run: Path, fake_github: FakeGitHub
) -> None:
    # The update of #1 that names #2 is a courtesy: its failure used to end the command with
    # an error after both pull requests were open, skipping the other updates.
    fake_github.bare = clashing_run
    fake_github.fail_next("PATCH", r"pulls/1$", 422, message="Validation Failed")
    out = swarm_pr(repo, fake_github)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [ln.split()[:2] for ln in lines[:2]] == [["aa", "created"], ["bb", "created"]]
    assert lines[2] == (
        "aa  note  #1 lacks its predicted conflicts: "
        "GitHub PATCH /repos/acme/widgets/pulls/1 failed with 422: Validation Failed"
    )
    assert sorted(fake_github.pulls) == [1, 2]


@pytest.mark.parametrize(
    ("token", "slug", "why"),
    [
        (
            "ghp_" + "w" * 36,
            "acme/widgets",
            "401: Bad credentials; the token was rejected",
        ),
        (
            TOKEN,
            "acme/gadgets",
            (
                "has no repository acme/gadgets the token can see (404); check its name"
                " (--github-repo OWNER/NAME) and the token's access\n"
            ),
        ),
    ],
)
def test_a_token_or_repository_github_refuses_pushes_nothing(
    repo: Path,
    done_run: Path,
    fake_github: FakeGitHub,
    monkeypatch: pytest.MonkeyPatch,
    token: str,
    slug: str,
    why: str,
) -> None:
    # Asked first: the branches used to be pushed, then every pull request failed.
    monkeypatch.setenv("GITHUB_TOKEN", token)
    out = swarm(repo, "pr", "--api-url", fake_github.url, "--github-repo", slug)
    assert (out.returncode, out.stdout, out.stderr.count("\n")) == (2, "", 1), out.stderr
    assert why in out.stderr
    assert token not in out.stderr
    assert remote_branches(done_run) == ["main"]
    assert [r.method for r in fake_github.requests] == ["GET"]


def test_an_api_that_does_not_answer_pushes_nothing(
    repo: Path, done_run: Path, fake_github: FakeGitHub
) -> None:
    # A typo in --api-url, or no network: every branch used to be pushed first.
    fake_github.fail_next("GET", "/pulls$", 502, message="Bad Gateway")
    out = swarm_pr(repo, fake_github)
    assert (out.returncode, out.stdout, out.stderr.count("\n")) == (1, "", 1), out.stderr
    assert "502" in out.stderr
    assert remote_branches(done_run) == ["main"]
    nowhere = swarm(repo, "pr", "--github-repo", "acme/widgets", "--api-url", "http://127.0.0.1:9")
    assert (nowhere.returncode, nowhere.stdout, nowhere.stderr.count("\n")) == (1, "", 1)
    assert "cannot reach the GitHub API at http://127.0.0.1:9" in nowhere.stderr
    assert remote_branches(done_run) == ["main"]


@pytest.fixture
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No proxy variable but those a test sets."""
    for kind in ("http", "https", "all", "no"):
        monkeypatch.delenv(f"{kind}_proxy", raising=False)
        monkeypatch.delenv(f"{kind.upper()}_PROXY", raising=False)
    return monkeypatch


def test_a_socks_proxy_is_bad_input_before_any_push(
    repo: Path, done_run: Path, fake_github: FakeGitHub, no_proxies: pytest.MonkeyPatch
) -> None:
    # It tried, and said `cannot reach the GitHub API at URL (unknown url type: socks5)`.
    no_proxies.setenv("HTTP_PROXY", "socks5://swarm:S3cretPw@127.0.0.1:1080")
    out = swarm_pr(repo, fake_github)
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == (
        "swarm: HTTP_PROXY=socks5://127.0.0.1:1080: swarm's GitHub client speaks to HTTP(S)"
        " proxies only; point HTTP_PROXY at one, or add 127.0.0.1 to NO_PROXY to connect"
        " directly\n"
    )
    assert fake_github.requests == []
    assert remote_branches(done_run) == ["main"]


def test_a_dead_proxy_is_named_and_nothing_is_pushed(
    repo: Path, done_run: Path, fake_github: FakeGitHub, no_proxies: pytest.MonkeyPatch
) -> None:
    # The API up, its proxy down: it was taken for the API out of reach.
    with socket.create_server(("127.0.0.1", 0)) as gone:
        dead = f"127.0.0.1:{gone.getsockname()[1]}"
    no_proxies.setenv("HTTP_PROXY", f"http://swarm:S3cretPw@{dead}")
    out = swarm_pr(repo, fake_github)
    assert (out.returncode, out.stdout) == (1, "")
    assert out.stderr == (
        f"swarm: cannot reach the GitHub API at {fake_github.url} through the proxy"
        f" HTTP_PROXY=http://{dead} ([Errno {errno.ECONNREFUSED}] Connection refused); check"
        " that proxy setting, the network or --api-url / SWARM_GITHUB_API_URL\n"
    )
    assert fake_github.requests == []
    assert remote_branches(done_run) == ["main"]


def test_a_prompt_cannot_close_its_code_fence_and_is_cut_to_4000_characters(
    repo: Path, origin: Path, tmp_path: Path, fake_github: FakeGitHub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # Issue text is anyone's: fences of its own must not end the one it is quoted in.
    evil = "Fix it\n```\n\nCloses #99 @victim\n\n````\nthe rest"
    long = "Do this\n" + "x" * 4988 + "TAIL"  # 5000 characters
    agent = tmp_path / "agent.py"
    agent.write_text(AGENT)
    out = swarm(
        repo, "run", "--agent", f"{agent_command()} {agent}", "-t", f"evil={evil}",
        "-t", f"long={long}",
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    monkeypatch.delenv("GH_TOKEN", raising=False)

    pr = swarm_pr(repo, fake_github)

    assert pr.returncode == 0, pr.stdout + pr.stderr
    bodies = {p["head"]["ref"]: p["body"] for p in fake_github.pulls.values()}
    fenced = f"`````text\n{evil}\n`````"  # longer than the longest run of backticks inside
    body = bodies["swarm/evil"]
    assert fenced in body
    assert "Closes #99" not in body.replace(fenced, "")
    body = bodies["swarm/long"]
    assert f"```text\nDo this\n{'x' * (4000 - 8)}\n… (1000 more characters)\n```" in body
    assert "TAIL" not in body


@pytest.mark.parametrize(
    "stranger",
    [
        {"ref": "swarm/other"},  # another branch: a server that ignores the `head` filter
        {"ref": "swarm/one", "label": "someone:swarm/one"},  # a fork's branch of that name
    ],
    ids=["other-branch", "fork"],
)
def test_only_a_pull_request_whose_head_is_the_tasks_branch_is_updated(
    repo: Path, done_run: Path, fake_github: FakeGitHub, stranger: dict[str, str]
) -> None:
    theirs = {"number": 50, "state": "open", "head": stranger, "base": {"ref": "main"},
              "html_url": "https://github.test/acme/widgets/pull/50"}  # fmt: skip
    fake_github.scripted += [
        Scripted("GET", "/pulls$", 200, {}, []),  # the look before anything is pushed
        Scripted("GET", "/pulls$", 200, {}, [theirs]),  # task one's own pull request?
    ]

    out = swarm_pr(repo, fake_github)

    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines()[0] == "one  created  #1  https://github.test/acme/widgets/pull/1"
    assert not [r for r in fake_github.requests if r.method == "PATCH" and "/50" in r.path]
    assert status_json(repo)["one"]["pr_number"] == 1


def test_an_odd_pull_request_object_or_list_fails_its_task_and_opens_no_second_one(
    repo: Path, done_run: Path, fake_github: FakeGitHub
) -> None:
    # `"base": "main"` (no object) was an internal error after the push; a list of pull
    # requests that is no list was taken for "none open", and a second one opened.
    fake_github.bare = done_run
    ours = {"number": 50, "state": "open", "head": {"ref": "swarm/one", "label": "acme:swarm/one"},
            "base": "main", "html_url": "https://github.test/acme/widgets/pull/50"}  # fmt: skip
    fake_github.scripted += [
        Scripted("GET", "/pulls$", 200, {}, []),  # the look before anything is pushed
        Scripted("GET", "/pulls$", 200, {}, [ours]),  # task one's own pull request
        Scripted("GET", "/pulls$", 200, {}, b"<html>a proxy's page</html>"),  # issue-7's
    ]

    out = swarm_pr(repo, fake_github)

    assert "internal error" not in out.stderr, out.stdout + out.stderr
    lines = dict(line.split("  ", 1) for line in out.stdout.splitlines())
    assert lines["one"].startswith("failed  GitHub PATCH /repos/acme/widgets/pulls/50 ")  # tried
    assert (
        lines["issue-7"] == "failed  GitHub's list of pull requests of swarm/issue-7 is not a list"
    )
    assert not [r for r in fake_github.requests if r.method == "POST" and "/pulls" in r.path]


def test_an_api_that_stops_answering_properly_ends_pr_instead_of_each_task_waiting(
    repo: Path, done_run: Path, fake_github: FakeGitHub
) -> None:
    # A server that stalls (or answers without end) would cost its wait again for every task.
    fake_github.bare = done_run
    fake_github.scripted += [
        Scripted("GET", "/pulls$", 200, {}, []),  # the look before anything is pushed
        Scripted("GET", "/pulls$", 200, {}, b"[" + b" " * (33 * 2**20) + b"]"),  # endless
    ]

    out = swarm_pr(repo, fake_github)

    assert (out.returncode, out.stderr.count("\n")) == (1, 1), out.stdout + out.stderr
    assert out.stderr == "swarm: the GitHub API answered more than 32 MiB\n"
    asked = [r for r in fake_github.requests if "/pulls" in r.path]
    assert len(asked) == 2  # the second task was not tried
    assert remote_branches(done_run) == ["main"]  # asked before its push: nothing pushed


def test_pr_during_a_run_keeps_the_remote_tracking_ref_its_push_moved(
    repo: Path, done_run: Path, fake_github: FakeGitHub, tmp_path: Path
) -> None:
    # `git push origin swarm/one` also moves refs/remotes/origin/swarm/one: swarm's own move,
    # which the guard of a run going on meanwhile must not put back as an agent's fetch.
    fake_github.bare = done_run
    first = json.loads(swarm(repo, "status", "--json").stdout)["run_id"]
    go = tmp_path / "go"
    waiter = tmp_path / "waiter.py"
    waiter.write_text(
        "import pathlib, time\n"
        "pathlib.Path('waited.txt').write_text('waited\\n')\n"
        f"go = pathlib.Path({str(go)!r})\n"
        "pathlib.Path(str(go) + '.waiting').touch()\n"
        "while not go.exists():\n"
        "    time.sleep(0.05)\n"
    )
    manager = swarm_bg(repo, "run", "--agent", f"{agent_command()} {waiter}", "-t", "waiter=p")
    try:
        wait_for(Path(str(go) + ".waiting").exists, what="the waiting agent")
        out = swarm_pr(repo, fake_github, "--run", first, "one")
        assert out.returncode == 0, out.stderr
    finally:
        go.touch()
    assert manager.wait(timeout=60) == 0, (repo.parent / "bg.log").read_text()
    tip = git(repo, "rev-parse", "swarm/one")
    assert git(repo, "rev-parse", "refs/remotes/origin/swarm/one") == tip
    status = json.loads(swarm(repo, "status", "--json").stdout)
    assert status["tasks"][0]["state"] == "done"
    assert status["remote_refs_put_back"] == []
