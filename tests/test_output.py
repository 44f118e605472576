"""What a user reads: plain progress lines, the live table, help, and who authored checkpoints."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console

from tests.conftest import git
from tests.test_run import argv_toml, manifest, swarm
from worktree_swarm import cli
from worktree_swarm.core.models import ProcessIdentity
from worktree_swarm.core.paths import store_path
from worktree_swarm.core.task import Task
from worktree_swarm.core.units import format_count
from worktree_swarm.git.repo import open_repo
from worktree_swarm.infra import store as store_module
from worktree_swarm.infra.logtail import last_lines
from worktree_swarm.infra.proctree import identity_of
from worktree_swarm.infra.store import Store
from worktree_swarm.report.status import task_status
from worktree_swarm.ui.live import LiveTable, PlainObserver

LIVE = identity_of(os.getpid())  # a manager that runs: this test's own process

WRITER = "import os, pathlib\npathlib.Path(os.environ['SWARM_TASK_ID'] + '.txt').write_text('x')\n"


def test_plain_output_never_shows_more_running_tasks_than_jobs(
    repo: Path, write_agent: Callable[[str], list[str]]
) -> None:
    agent = write_agent(WRITER)
    tasks = "".join(f'[[task]]\nid = "t{i}"\nprompt = "p"\n' for i in range(5))
    check = argv_toml([sys.executable, "-c", "pass"])
    path = manifest(repo, f"[defaults]\nagent = {argv_toml(agent)}\njobs = 2\n"
                    f"checks = [{check}]\n{tasks}")  # fmt: skip
    out = swarm(repo, "run", path)
    assert out.returncode == 0, out.stderr
    latest: dict[str, str] = {}
    for line in out.stdout.splitlines():
        task_id, _, rest = line.partition(": ")
        if task_id.startswith("t") and rest:
            latest[task_id] = rest.split(" - ")[0]
            running = sum(state == "running" for state in latest.values())
            assert running <= 2, out.stdout
    assert set(latest.values()) == {"done"}


def test_a_reason_equal_to_the_state_is_not_repeated() -> None:
    out = io.StringIO()
    observe = PlainObserver(out)
    observe("state", "a", {"state": "stopped", "reason": "stopped"})
    observe("state", "b", {"state": "failed", "reason": "[agent] giving up"})
    assert out.getvalue().splitlines() == ["a: stopped", "b: failed - [agent] giving up"]


def test_a_task_named_like_a_secret_setting_shows_its_state() -> None:
    # `api-token: running` reads as a setting to the redactor: the id is not part of it.
    out = io.StringIO()
    observe = PlainObserver(out)
    observe("state", "api-token", {"state": "running"})
    observe("state", "db-password", {"state": "failed", "reason": "token: sk-ant-abc123secret"})
    assert out.getvalue().splitlines() == [
        "api-token: running",
        "db-password: failed - token: [REDACTED]",
    ]


def test_plain_lines_say_how_the_run_began_and_ended() -> None:
    out = io.StringIO()
    lines = PlainObserver(out)
    lines("run_started", None, {"run_id": "20261202-000000-abcd"})
    lines("run_finished", None, {"status": "interrupted"})
    lines("run_finished", None, {"status": "finished"})
    # Not "run interrupted: finished", which read as if the run had finished.
    assert out.getvalue().splitlines() == [
        "run 20261202-000000-abcd: started",
        "run interrupted",
        "run finished",
    ]


def test_live_table_shows_brackets_as_typed_and_what_pending_tasks_wait_for(
    repo: Path,
) -> None:
    with Store(store_path(open_repo(repo))) as store:
        store.create_run(
            run_id="r", base_commit="abc", repo_root=str(repo), jobs=1, manager=LIVE,
            spec_json="{}",
        )  # fmt: skip
        store.add_tasks(
            "r",
            [
                (Task(id="a", prompt="p"), "swarm/a", "/w/a"),
                (Task(id="b", prompt="p", depends_on=("a",)), "swarm/b", "/w/b"),
                (Task(id="c", prompt="p"), "swarm/c", "/w/c"),
            ],
        )
        store.update_task("r", "a", state="running", reason="[agent] giving up on list[str]")
        console = Console(file=io.StringIO(), width=160, color_system=None)
        table = LiveTable(store, console)
        table("run_started", None, {"run_id": "r"})
        console.print(table._table())
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "[agent] giving up on list[str]" in text
    assert "waits for a" in text
    assert "waits for a free slot (1 running, jobs 1)" in text


def test_live_table_reads_the_gate_events_recorded_since_its_last_refresh_only(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `swarm run`'s table is drawn four times a second: each drawing read every gate event of
    # the run (thousands in a long one whose gate was narrowed and widened all night).
    with Store(store_path(open_repo(repo))) as store:
        store.create_run(
            run_id="r", base_commit="abc", repo_root=str(repo), jobs=1, manager=LIVE,
            spec_json="{}",
        )  # fmt: skip
        store.add_tasks("r", [(Task(id="a", prompt="p"), "swarm/a", "/w/a")])
        gate = {"provider": "anthropic", "jobs": 4, "waiting_until": None, "why": ""}
        for limit in range(3000):
            store.add_event("r", "gate", data={**gate, "limit": limit % 4 + 1})
        console = Console(file=io.StringIO(), width=160, color_system=None)
        table = LiveTable(store, console)
        table("run_started", None, {"run_id": "r"})
        console.print(table._table())
        read: list[int] = []
        parse = store_module.event_row
        monkeypatch.setattr(store_module, "event_row", lambda row: read.append(1) or parse(row))
        console.print(table._table())
        assert read == []  # nothing recorded since
        store.add_event("r", "gate", data={**gate, "limit": 3})
        console.print(table._table())
        assert len(read) == 1
    assert "anthropic" in console.file.getvalue()  # type: ignore[attr-defined]


def test_a_rate_limited_task_past_its_wait_says_it_waits_for_its_providers_slot(
    repo: Path,
) -> None:
    # "resuming after 11:38:21" stayed for minutes past that time while the task waited for
    # one of its throttled provider's slots.
    with Store(store_path(open_repo(repo))) as store:
        store.create_run(
            run_id="r", base_commit="abc", repo_root=str(repo), jobs=4, manager=LIVE,
            spec_json="{}",
        )  # fmt: skip
        store.add_tasks(
            "r",
            [
                (Task(id="a", prompt="p", agent="claude"), "swarm/a", "/w/a"),
                (Task(id="b", prompt="p", agent="claude"), "swarm/b", "/w/b"),
            ],
        )
        for task, wait in (("a", -5.0), ("b", 600.0)):
            attempt = store.record_attempt("r", task, number=1, identity=LIVE, log_path="/l")
            store.end_attempt(attempt, exit_code=1, outcome="rate_limited")
            store.set_retry_at("r", task, 1, time.time() + wait)
            store.update_task("r", task, state="rate_limited", reason="resuming after 11:38:21")
        store.add_event(
            "r", "gate",
            data={"provider": "anthropic", "limit": 1, "jobs": 4, "waiting_until": None,
                  "why": "throttled"},
        )  # fmt: skip
        rows = {r.task_id: r for r in task_status(store, "r")}
    assert rows["a"].why == "resumes once one of anthropic's 1 agent slots is free"
    assert rows["b"].why == "resuming after 11:38:21"  # still in its wait


def test_a_pending_task_of_a_run_whose_manager_died_says_so_not_that_slots_are_full(
    repo: Path,
) -> None:
    # Its manager killed, its agents gone: "waits for a free slot (1 running, jobs 1)" said
    # something would start it; nothing will, until `swarm resume`.
    gone = ProcessIdentity(pid=LIVE.pid, create_time=LIVE.create_time - 1000, pgid=LIVE.pgid)
    with Store(store_path(open_repo(repo))) as store:
        store.create_run(
            run_id="r", base_commit="abc", repo_root=str(repo), jobs=1, manager=gone,
            spec_json="{}",
        )  # fmt: skip
        store.add_tasks(
            "r",
            [(Task(id="a", prompt="p"), "swarm/a", "/w/a"), (Task(id="b", prompt="p"), "b", "/b")],
        )
        store.update_task("r", "a", state="running")
        rows = {r.task_id: r for r in task_status(store, "r")}
    assert rows["b"].why == "not started: its manager is not running (`swarm resume`)"


@pytest.mark.parametrize(("wait", "fmt"), [(3600, "%H:%M:%S"), (3 * 86400, "%Y-%m-%d %H:%M")])
def test_a_pending_task_held_by_its_providers_limit_says_so_not_that_slots_are_full(
    repo: Path, wait: int, fmt: str
) -> None:
    # jobs = 1, the one task that ran waits out a usage window: it holds no agent slot, and
    # what holds the next task is the provider's gate, until its reset.
    with Store(store_path(open_repo(repo))) as store:
        store.create_run(
            run_id="r", base_commit="abc", repo_root=str(repo), jobs=1, manager=LIVE,
            spec_json="{}",
        )  # fmt: skip
        store.add_tasks(
            "r",
            [
                (Task(id="a", prompt="p", agent="claude"), "swarm/a", "/w/a"),
                (Task(id="b", prompt="p", agent="claude"), "swarm/b", "/w/b"),
                (Task(id="c", prompt="p", agent="codex"), "swarm/c", "/w/c"),
            ],
        )
        store.update_task("r", "a", state="rate_limited", reason="resuming after 23:00:00")
        until = time.time() + wait
        store.add_event(
            "r",
            "gate",
            data={"provider": "anthropic", "limit": 1, "jobs": 1, "waiting_until": until,
                  "why": "usage limit"},
        )  # fmt: skip
        rows = {r.task_id: r for r in task_status(store, "r")}
    # A reset days away with its date: "23:01:00" alone reads as a time already past today.
    when = time.strftime(fmt, time.localtime(until))
    assert rows["b"].why == f"waits for anthropic: launches wait until {when} (usage limit)"
    assert rows["c"].why == "starting"  # another provider: nothing holds it


def test_a_guard_failure_that_keeps_coming_back_is_one_line_with_a_count(repo: Path) -> None:
    # A job that fails, scans well once, and fails again for the same reason is one failure
    # to the user, however many times the guard recorded it beginning; so is a reason that
    # differs only by git's random temporary file name.
    pack = "`git pack-objects` exited 128: fatal: sha1 file '.git/objects/pack/tmp_pack_{}'"
    began = time.time() - 60
    with Store(store_path(open_repo(repo))) as store:
        store.create_run(
            run_id="r", base_commit="abc", repo_root=str(repo), jobs=1, manager=None,
            spec_json="{}",
        )  # fmt: skip
        for n, name in enumerate(("uOZemM", "IM6oBL", "uOZemM"), start=1):
            data = {"job": "objects", "reason": pack.format(name), "count": n}
            store.add_event("r", "guard_error", data=data, ts=began + n)
        store.add_event("r", "guard_error", data={"job": "refs", "reason": "bad"}, ts=began + 9)
    told = [line for line in swarm(repo, "status").stdout.splitlines() if "guard:" in line]
    since, then = (time.strftime("%H:%M:%S", time.localtime(began + n)) for n in (1, 9))
    assert told == [
        f"guard: objects scan failed: {pack.format('XXXXXX')} (3 times since {since})",
        f"guard: refs scan failed: bad (since {then})",
    ]
    errors = json.loads(swarm(repo, "status", "--json").stdout)["guard_errors"]
    assert [(e["job"], e["count"], e["ts"], e["last_ts"]) for e in errors] == [
        ("objects", 3, began + 1, began + 3),
        ("refs", 1, began + 9, began + 9),
    ]
    report = swarm(repo, "report").stdout
    assert "guard scans that failed (2):" in report
    assert f"  objects: {pack.format('XXXXXX')} (3 times since {since})" in report
    # The run's own output tells the first time only.
    out = io.StringIO()
    observe = PlainObserver(out)
    for n in (1, 2):
        observe("guard_error", None, {"job": "objects", "reason": "full", "count": n})
    assert out.getvalue() == "guard: objects scan failed: full\n"


def test_every_command_help_has_an_example_and_merge_strategy_a_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, command in cli.cli.commands.items():
        assert cli.main([name, "--help"]) == 0
        text = capsys.readouterr().out
        assert "Examples:\n    swarm " in text, name
        assert command.help, name
    cli.main(["merge", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "squash: one squashed commit per task. [default: merge]" in text


def test_help_keeps_its_text_under_python_oo() -> None:
    # PYTHONOPTIMIZE=2 strips docstrings, which is where click reads a command's help from.
    def helped(*args: str, optimize: str) -> str:
        env = {**os.environ, "PYTHONOPTIMIZE": optimize}
        out = subprocess.run(
            [sys.executable, "-m", "worktree_swarm.cli", *args, "--help"],
            env=env, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        return out.stdout

    for args in [(), ("run",), ("merge",)]:
        assert helped(*args, optimize="2") == helped(*args, optimize="")
    assert "Create a worktree per task" in helped("run", optimize="2")


def test_an_extra_argument_with_a_line_break_is_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["status", "a\nb"]) == 2
    err = capsys.readouterr().err
    assert err == "swarm: Got unexpected extra argument (a\\nb)\n"


@pytest.mark.parametrize("args", [["run", ""], ["report", "--html", ""]])
def test_an_empty_path_is_named_empty_not_taken_for_the_directory(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # `swarm run ""` said ".: not a regular file".
    assert cli.main(args) == 2
    assert capsys.readouterr().err.endswith(": an empty path; name one\n")


@pytest.mark.parametrize(
    "setting",
    ['worktree_root = "/tmp/{long}"', 'link = ["{long}"]', 'checks = ["/{long}"]', "--agent"],
)
def test_a_path_with_a_name_too_long_is_bad_input_not_a_crash(repo: Path, setting: str) -> None:
    # Python's is_dir() and is_file() say False for a missing file but raise ENAMETOOLONG:
    # an internal error with a traceback file, exit 1.
    long = "x" * 256
    args = ["run", "--dry-run", "-t", "a=x", "--agent", "scripted"]
    if setting == "--agent":
        args[-1] = f"/{long}"
    else:
        (repo / "swarm.toml").write_text(setting.format(long=long) + "\n")
    out = swarm(repo, *args)
    assert (out.returncode, out.stderr.count("\n")) == (2, 1), out.stderr
    assert out.stderr.endswith(": File name too long; give a shorter path\n"), out.stderr
    assert not (repo / ".git" / "swarm").exists()


@pytest.mark.parametrize("args", [[], ["-C", "."]])
def test_swarm_without_a_command_says_so_in_one_line(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(args) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("swarm: no command given; one of: clean, demo, diff")
    assert err.count("\n") == 1
    assert " run, " in err


def test_quick_commands_start_without_loading_the_runner(repo: Path) -> None:
    # `swarm status` (run in a loop, in a prompt, by `watch`) loads only what it prints: not
    # the runner, the manifest reader, the live table or GitPython.
    probe = (
        "import sys\n"
        "from worktree_swarm import cli\n"
        "code = cli.main(['status'])\n"
        "heavy = ['worktree_swarm.run.runner', 'worktree_swarm.config.manifest',\n"
        "         'worktree_swarm.ui.live', 'git', 'anthropic', 'textual']\n"
        "print(code, [name for name in heavy if name in sys.modules])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=repo, capture_output=True, text=True, check=True
    )
    assert out.stdout.splitlines()[-1] == "2 []"  # no run yet: one line, exit 2


def test_resume_of_a_finished_run_says_so_and_starts_nothing(
    repo: Path, write_agent: Callable[[str], list[str]]
) -> None:
    assert swarm(repo, "run", "--agent", " ".join(write_agent(WRITER)), "-t", "a=p").returncode == 0
    out = swarm(repo, "resume")
    assert out.returncode == 0, out.stderr
    assert "started" not in out.stdout
    assert out.stdout.startswith("run ")
    assert "has finished; nothing to resume" in out.stdout


def test_checkpoints_are_authored_by_the_user_with_trailers(
    repo: Path, write_agent: Callable[[str], list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GIT_AUTHOR_NAME")
    monkeypatch.delenv("GIT_AUTHOR_EMAIL")
    git(repo, "config", "user.name", "Ada Lovelace")
    git(repo, "config", "user.email", "ada@example.com")
    agent = " ".join(write_agent(WRITER))
    assert swarm(repo, "run", "--agent", agent, "-t", "a=p").returncode == 0
    log = git(repo, "log", "-1", "--format=%an <%ae>|%cn <%ce>|%B", "swarm/a")
    author, committer, body = log.split("|", 2)
    assert author == committer == "Ada Lovelace <ada@example.com>"
    trailers = git(repo, "log", "-1", "--format=%(trailers:only,unfold)", "swarm/a")
    assert trailers.splitlines() == ["Swarm-Task: a", "Swarm-Attempt: 1", "Swarm-Agent: command"]
    assert body.startswith("swarm: checkpoint a attempt 1")

    (repo / "swarm.toml").write_text('commit_author = "Night Shift <night@x.org>"\n')
    git(repo, "add", "swarm.toml")
    git(repo, "commit", "-q", "-m", "config")
    assert swarm(repo, "run", "--agent", agent, "-t", "b=p").returncode == 0
    assert git(repo, "log", "-1", "--format=%an <%ae>", "swarm/b") == "Night Shift <night@x.org>"


def test_checkpoints_take_the_author_from_git_author_variables_as_git_does(
    repo: Path, write_agent: Callable[[str], list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # In CI the identity often comes from the environment: the agent's own commits use it.
    git(repo, "config", "user.name", "Ada Lovelace")
    git(repo, "config", "user.email", "ada@example.com")
    monkeypatch.setenv("GIT_AUTHOR_NAME", "CI Bot")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "ci@example.com")
    agent = " ".join(write_agent(WRITER))
    assert swarm(repo, "run", "--agent", agent, "-t", "a=p").returncode == 0
    log = git(repo, "log", "-1", "--format=%an <%ae>|%cn <%ce>", "swarm/a")
    assert log == "CI Bot <ci@example.com>|CI Bot <ci@example.com>"
    monkeypatch.delenv("GIT_AUTHOR_EMAIL")  # each part taken as git takes it
    assert swarm(repo, "run", "--agent", agent, "-t", "b=p").returncode == 0
    log = git(repo, "log", "-1", "--format=%an <%ae>", "swarm/b")
    assert log == "CI Bot <ada@example.com>"


def test_a_failing_check_is_named_with_its_quoting(
    repo: Path, write_agent: Callable[[str], list[str]]
) -> None:
    agent = " ".join(write_agent(WRITER))
    check = f"{sys.executable} -c 'import sys; sys.exit(3)'"
    out = swarm(repo, "run", "--agent", agent, "--check", check, "-t", "a=p")
    assert out.returncode == 1
    reason = json.loads(swarm(repo, "status", "--json").stdout)["tasks"][0]["reason"]
    assert reason.startswith(f"check `{sys.executable} -c 'import sys; sys.exit(3)'` exited 3")


def test_status_shows_the_run_and_each_task_once(
    repo: Path, write_agent: Callable[[str], list[str]]
) -> None:
    agent = " ".join(write_agent(WRITER))
    assert swarm(repo, "run", "--agent", agent, "-t", "a=p", "-t", "b=p").returncode == 0
    lines = swarm(repo, "status").stdout.splitlines()
    assert sum(line.startswith("run ") for line in lines) == 1
    for task in ("a", "b"):
        assert sum(line.split()[:2] == [task, "done"] for line in lines) == 1
    assert sum(line.startswith("total: ") for line in lines) == 1
    # Plain commands report no cost or tokens: `-` as in the rows, not a made-up $0.00.
    assert "total: 2 attempts, cost -, tokens -" in lines


def test_status_rows_name_tokens_and_the_worktree(
    repo: Path, write_agent: Callable[[str], list[str]]
) -> None:
    assert swarm(repo, "run", "--agent", " ".join(write_agent(WRITER)), "-t", "a=p").returncode == 0
    header, row = swarm(repo, "status").stdout.splitlines()[1:3]
    names = header.split()
    assert names[names.index("cost") + 1] == "tokens"
    assert names[names.index("branch") + 1] == "worktree"
    assert str(repo.parent / "repo.swarm" / "a") in row.split()  # where the work is
    assert format_count(950) == "950"
    assert (format_count(12_345), format_count(4_100_000), format_count(None)) == (
        "12.3k",
        "4.1M",
        "-",
    )


def test_status_plurals(repo: Path, write_agent: Callable[[str], list[str]]) -> None:
    assert swarm(repo, "run", "--agent", " ".join(write_agent(WRITER)), "-t", "a=p").returncode == 0
    text = swarm(repo, "status").stdout
    assert " 1 file +1 -0 " in text
    assert "1 attempt," in text
    assert "1 files" not in text
    assert "1 worktrees" not in text
    assert subprocess.run(["git", "--version"], check=True, capture_output=True).returncode == 0


def test_a_reason_made_of_an_agents_last_lines_keeps_no_part_of_an_escape_sequence() -> None:
    said = (
        "step 1\n\x1b]0;REASONTITLE\x07failed \x1b]52;c;cm0gLXJmCg==\x07here\n\x1b[31mred\x1b[0m\n"
    )
    lines = last_lines(said)
    assert lines == ["step 1", "failed here", "red"]


def test_python_dash_m_worktree_swarm_is_the_swarm_command(repo: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "worktree_swarm", "runs", "--json"],
        cwd=repo, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert (out.returncode, json.loads(out.stdout)) == (0, {"runs": []})
    bad = subprocess.run(
        [sys.executable, "-m", "worktree_swarm", "no-such-command"],
        cwd=repo, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert bad.returncode == 2
