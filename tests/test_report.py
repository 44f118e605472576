"""`swarm report`: numbers from real runs checked against the store, HTML in real Chromium."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.test_resilience import HEADER, fake_claude, plan  # noqa: F401 - fixture import
from tests.test_run import argv_toml, manifest, status_json, swarm, swarm_bg, wait_for
from worktree_swarm.core.scheduler import Scheduler
from worktree_swarm.core.task import Task
from worktree_swarm.infra.logtail import tail
from worktree_swarm.infra.redact import REDACTED, Redactor

AgentFactory = Callable[[str], list[str]]

# Fake credentials: the report must never show them.
SECRET_ENV = "MY_SERVICE_API_TOKEN"  # noqa: S105
SECRET_VALUE = "s3cr3t-v4lue-from-env"  # noqa: S105
PROMPT_KEY = "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUv"
BEARER = "Bearer abcdefghijklmnop0123456789"
GH_TOKEN = "ghp_0123456789abcdefghijABCDEFGHIJklmnop"  # noqa: S105
SECRETS = (SECRET_VALUE, PROMPT_KEY, BEARER.split()[1], GH_TOKEN)

FAILING_AGENT = "import sys; print('cannot do it'); sys.exit(3)"
WAITING_AGENT = """
import os, pathlib, time
go = pathlib.Path(os.environ['GO_FILE'])
pathlib.Path(os.environ['SWARM_TASK_ID'] + '.txt').write_text('started\\n')
(go.parent / 'started').touch()
while not go.exists():
    time.sleep(0.05)
pathlib.Path(os.environ['SWARM_TASK_ID'] + '.txt').write_text('finished\\n')
"""


def _check_printing_secrets() -> str:
    code = (
        "import os; print('using', os.environ['" + SECRET_ENV + "']); "
        f"print('GITHUB_TOKEN={GH_TOKEN}'); print('all good')"
    )
    return argv_toml([sys.executable, "-c", code])


@pytest.fixture
def finished_run(
    repo: Path,
    fake_claude: Path,  # noqa: F811 - the fixture imported above
    write_agent: AgentFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> Path:
    """A real run: a rate limit and resume, a repair retry, a failure, a dependency chain."""
    monkeypatch.setenv(SECRET_ENV, SECRET_VALUE)
    plan(fake_claude, "limited", "limit", "finish")
    plan(fake_claude, "repaired", "todo", "fix")
    bad = argv_toml(write_agent(FAILING_AGENT))
    text = (
        HEADER
        + '[[task]]\nid = "limited"\nprompt = "first"\n'
        + f'[[task]]\nid = "base"\nprompt = "base {PROMPT_KEY}"\n'
        + f"checks = [{_check_printing_secrets()}]\n"
        + f'[[task]]\nid = "child"\nprompt = "header {BEARER}"\ndepends_on = ["base"]\n'
        + '[[task]]\nid = "repaired"\nprompt = "x"\nrepair = 1\nno_placeholders = true\n'
        + f'[[task]]\nid = "broken"\nprompt = "x"\nagent = {bad}\n'
        + '[[task]]\nid = "after-broken"\nprompt = "x"\ndepends_on = ["broken"]\n'
    )
    out = swarm(repo, "run", manifest(repo, text))
    assert out.returncode == 1, out.stdout + out.stderr
    return repo


def report_json(repo: Path, *args: str) -> dict[str, object]:
    out = swarm(repo, "report", "--json", *args)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def _rows(repo: Path, sql: str, *params: object) -> list[sqlite3.Row]:
    with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as db:
        db.row_factory = sqlite3.Row
        return db.execute(sql, params).fetchall()


def _tasks(report: dict[str, object]) -> dict[str, dict[str, object]]:
    tasks = report["tasks"]
    assert isinstance(tasks, list)
    return {t["task_id"]: t for t in tasks}


def test_json_numbers_match_the_store(finished_run: Path) -> None:
    repo = finished_run
    report = report_json(repo)
    (run,) = _rows(repo, "SELECT * FROM runs")
    tasks = {r["task_id"]: r for r in _rows(repo, "SELECT * FROM tasks")}
    attempts = _rows(repo, "SELECT * FROM attempts ORDER BY id")
    events = _rows(repo, "SELECT * FROM events WHERE kind = 'state' ORDER BY id")
    approx = lambda x: pytest.approx(x, abs=2e-3)  # noqa: E731 - JSON rounds to 3 decimals

    assert report["run_id"] == run["run_id"]
    assert report["status"] == "finished"
    assert report["live"] is False
    assert report["jobs"] == run["jobs"]
    got = _tasks(report)
    assert list(got) == ["limited", "base", "child", "repaired", "broken", "after-broken"]
    agent_s: dict[str, float] = {}
    for task_id, row in tasks.items():
        mine = [a for a in attempts if a["task_id"] == task_id]
        agent_s[task_id] = sum(a["ended_at"] - a["started_at"] for a in mine)
        t = got[task_id]
        assert t["state"] == row["state"]
        assert len(t["attempts"]) == row["attempts"] == len(mine)
        assert [a["outcome"] for a in t["attempts"]] == [a["outcome"] for a in mine]
        assert t["agent_s"] == approx(agent_s[task_id])
        assert t["cost_usd"] == (None if row["cost_usd"] is None else approx(row["cost_usd"]))
        assert t["tokens_in"] == row["tokens_in"]
        assert t["tokens_out"] == row["tokens_out"]
        assert t["cache_read_tokens"] == row["cache_read_tokens"]
        assert t["files_changed"] == row["diff_files"]
        assert t["insertions"] == row["diff_insertions"]
        starts = [a["started_at"] for a in mine] + [row["started_at"]] * bool(row["started_at"])
        wall = row["ended_at"] - min(starts) if starts else None
        assert t["wall_s"] == (None if wall is None else approx(wall))

    # What the run did, as the store recorded it.
    assert [a["outcome"] for a in got["limited"]["attempts"]] == ["rate_limited", "succeeded"]
    assert got["broken"]["state"] == "failed"
    assert got["after-broken"]["state"] == "blocked"
    assert got["after-broken"]["attempts"] == []
    assert got["child"]["depends_on"] == ["base"]
    assert got["repaired"]["retries"] == 1
    assert got["limited"]["retries"] == 0

    # Rate-limit wait: from the `rate_limited` state event to the task's next state event.
    limited = [
        (e["ts"], json.loads(e["data"])["state"]) for e in events if e["task_id"] == "limited"
    ]
    i = next(k for k, (_, s) in enumerate(limited) if s == "rate_limited")
    wait = limited[i + 1][0] - limited[i][0]
    assert wait > 0
    assert got["limited"]["rate_limit_wait_s"] == approx(wait)
    assert [s["kind"] for s in got["limited"]["spans"]] == ["rate_limit"]
    assert "checks" in [s["kind"] for s in got["base"]["spans"]]

    totals = report["totals"]
    assert isinstance(totals, dict)
    makespan = run["ended_at"] - run["created_at"]
    total_agent = sum(agent_s.values())
    specs = [Task(id=i, prompt="", depends_on=("base",) if i == "child" else ()) for i in tasks]
    specs = [t if t.id != "after-broken" else Task(id=t.id, prompt="", depends_on=("broken",))
             for t in specs]  # fmt: skip
    ideal = Scheduler(specs).ideal_makespan(agent_s, run["jobs"])
    assert totals["tasks"] == 6
    assert totals["done"] == 4
    assert totals["makespan_s"] == approx(makespan)
    assert totals["agent_time_s"] == approx(total_agent)
    assert totals["achieved_speedup"] == approx(total_agent / makespan)
    assert totals["ideal_makespan_s"] == approx(ideal)
    assert totals["ideal_speedup"] == approx(total_agent / ideal)
    assert totals["rate_limit_wait_s"] == approx(wait)
    assert totals["retries"] == 1
    assert totals["resumes"] == 1
    costs = [r["cost_usd"] for r in tasks.values() if r["cost_usd"] is not None]
    assert totals["total_cost_usd"] == approx(sum(costs))
    assert totals["cost_per_done_usd"] == approx(sum(costs) / 4)
    assert totals["tokens_in"] == sum(r["tokens_in"] or 0 for r in tasks.values())
    reads = [a["cache_read_tokens"] for a in attempts if a["cache_read_tokens"]]
    assert totals["token_overhead_tokens"] == min(reads) * (len(reads) - 1)
    assert totals["states"] == {"blocked": 1, "done": 4, "failed": 1}


def test_terminal_report_lists_tasks_and_totals(finished_run: Path) -> None:
    out = swarm(finished_run, "report")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("run ")
    rows = {line.split()[0]: line.split() for line in lines[2:8]}
    assert rows["limited"][1:3] == ["done", "2"]
    assert rows["broken"][1:3] == ["failed", "1"]
    assert rows["after-broken"][1:3] == ["blocked", "0"]
    assert rows["broken"][4] == "-"  # no cost reported by a plain command
    assert rows["limited"][4] == "$0.60"
    text = out.stdout
    assert re.search(r"^speedup +\d+\.\d\dx achieved, \d+\.\d\dx ideal", text, re.MULTILINE)
    # Not "1 retries": and a resume after a limit is told apart from the manifest's `retries`.
    waits = r"^waits +\d+\.\ds on rate limits; 1 resume after one, 1 retry after other ends"
    assert re.search(waits, text, re.MULTILINE)
    assert re.search(r"^cost +\$\d+\.\d\d total, \$\d+\.\d\d per done task", text, re.MULTILINE)
    assert re.search(r"^overhead +\d+ tokens", text, re.MULTILINE)
    assert not any(secret in text for secret in SECRETS)


def test_html_is_self_contained_and_redacted(finished_run: Path, tmp_path: Path) -> None:
    target = tmp_path / "out" / "report.html"
    target.parent.mkdir()
    out = swarm(finished_run, "report", "--html", str(target))
    assert out.returncode == 0, out.stderr
    assert f"wrote {target}" in out.stdout
    html = target.read_text()
    assert "Content-Security-Policy" in html
    assert "default-src 'none'" in html
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", html)
    assert "@import" not in html
    assert "prefers-color-scheme:dark" in html
    for secret in SECRETS:
        assert secret not in html
    assert REDACTED in html
    assert "all good" in html  # the check output tail is there, minus its secrets
    assert [p.name for p in target.parent.iterdir()] == ["report.html"]  # no temp file left behind


def test_html_data_holds_placeholders_of_its_template_as_text(
    repo: Path, write_agent: AgentFactory, tmp_path: Path
) -> None:
    prompt = "fill {{js}} and {{data}} and {{title}} in"
    agent = write_agent("open('a.txt', 'w').write('a')\nprint('my last line: {{js}} {{css}}')")
    assert swarm(repo, "run", "--agent", " ".join(agent), "-t", f"t={prompt}").returncode == 0
    target = tmp_path / "report.html"
    assert swarm(repo, "report", "--html", str(target)).returncode == 0
    html = target.read_text()

    block = html.split('<script type="application/json" id="swarm-data">')[1]
    data = json.loads(block.split("</script>")[0])

    (task,) = data["tasks"]
    assert task["prompt"] == prompt
    assert html.count("<script>") == 1  # the report's own script, once


def test_report_of_a_live_run(repo: Path, write_agent: AgentFactory, tmp_path: Path) -> None:
    go = tmp_path / "go"
    agent = argv_toml(write_agent(WAITING_AGENT))
    text = (
        f"[defaults]\nagent = {agent}\nenv = {{ GO_FILE = {json.dumps(str(go))} }}\n"
        '[[task]]\nid = "slow"\nprompt = "x"\n[[task]]\nid = "next"\nprompt = "x"\n'
        'depends_on = ["slow"]\n'
    )
    proc = swarm_bg(repo, "run", manifest(repo, text))
    try:
        wait_for((tmp_path / "started").exists, what="the agent to start")
        # The manager records the attempt once its launch returns: maybe after the agent began.
        wait_for(lambda: bool(_rows(repo, "SELECT 1 FROM attempts")), what="its attempt")
        live = report_json(repo)
        assert live["status"] == "running"
        assert live["live"] is True
        assert live["ended_at"] is None
        got = _tasks(live)
        assert got["slow"]["state"] == "running"
        assert [a["outcome"] for a in got["slow"]["attempts"]] == ["running"]
        assert got["slow"]["attempts"][0]["ended_at"] is None
        assert got["next"]["state"] == "pending"
        totals = live["totals"]
        assert isinstance(totals, dict)
        assert totals["makespan_s"] > 0
        assert totals["agent_time_s"] > 0
    finally:
        go.touch()
        assert proc.wait(timeout=60) == 0
    done = report_json(repo)
    assert done["status"] == "finished"
    assert [t["state"] for t in _tasks(done).values()] == ["done", "done"]


def test_a_run_whose_manager_died_is_reported_so(
    repo: Path, write_agent: AgentFactory, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    agent = argv_toml(write_agent(WAITING_AGENT))
    text = f"[defaults]\nagent = {agent}\nenv = {{ GO_FILE = {json.dumps(str(go))} }}\n"
    text += '[[task]]\nid = "slow"\nprompt = "x"\n'
    proc = swarm_bg(repo, "run", manifest(repo, text))
    wait_for((tmp_path / "started").exists, what="the agent to start")
    proc.kill()  # the agent runs on under its shim
    proc.wait(timeout=30)
    try:
        gone = report_json(repo)
        assert (gone["status"], gone["live"]) == ("manager_gone", False)  # not "running"
        shown = swarm(repo, "report")
        assert shown.stdout.startswith("run "), shown.stderr
        assert "(manager_gone)" in shown.stdout.splitlines()[0]
        # The agent worked on after its manager's last record: its time counts until it ended
        # (as `swarm status` says), not until the manager's last record (0.09 s of a 20 s run).
        go.touch()
        wait_for(lambda: status_json(repo)["slow"]["alive"] is False, what="the agent to end")
        elapsed = status_json(repo)["slow"]["elapsed_s"]
        assert isinstance(elapsed, float)
        ended = report_json(repo)
        slow = _tasks(ended)["slow"]
        assert slow["wall_s"] == pytest.approx(elapsed, abs=0.01)
        totals = ended["totals"]
        assert isinstance(totals, dict)
        assert totals["makespan_s"] >= elapsed - 0.01
    finally:
        go.touch()
        swarm(repo, "resume")


def test_the_makespan_leaves_out_the_time_between_a_run_s_end_and_its_retry(
    repo: Path, write_agent: AgentFactory
) -> None:
    agent = argv_toml(write_agent(FAILING_AGENT))
    text = f'[defaults]\nagent = {agent}\n[[task]]\nid = "a"\nprompt = "x"\n'
    assert swarm(repo, "run", manifest(repo, text)).returncode == 1
    assert swarm(repo, "retry").returncode == 1  # the next morning, as it were
    query = "SELECT kind, ts FROM events WHERE kind IN (?, ?) ORDER BY ts"
    sessions = _rows(repo, query, "run_started", "run_finished")
    assert [r["kind"] for r in sessions] == ["run_started", "run_finished"] * 2
    gap = sessions[2]["ts"] - sessions[1]["ts"]  # nothing of the run ran
    run = _rows(repo, "SELECT created_at, ended_at FROM runs")[0]
    totals = report_json(repo)["totals"]
    assert isinstance(totals, dict)
    span = run["ended_at"] - run["created_at"]
    assert totals["makespan_s"] == pytest.approx(span - gap, abs=1e-3)


def test_unknown_run_is_bad_input_and_writes_nothing(finished_run: Path, tmp_path: Path) -> None:
    target = tmp_path / "never.html"
    out = swarm(finished_run, "report", "--run", "nope", "--html", str(target))
    assert out.returncode == 2
    assert out.stderr == "swarm: unknown run 'nope'; `swarm runs` lists the recorded runs\n"
    assert not target.exists()


def test_an_error_line_carries_no_escape_sequence_to_your_terminal(
    finished_run: Path, tmp_path: Path
) -> None:
    """A path (or an API's message) with a window title's escape sequence went out raw."""
    target = tmp_path / "\x1b]0;TITLE\x07" / "x.html"
    out = swarm(finished_run, "report", "--html", str(target))
    assert out.returncode == 2
    assert len(out.stderr.splitlines()) == 1
    assert out.stderr.startswith("swarm: ")
    assert "\x1b" not in out.stderr
    assert "\x07" not in out.stderr


def test_no_runs_yet_is_bad_input(repo: Path) -> None:
    out = swarm(repo, "report")
    assert out.returncode == 2
    assert out.stderr.startswith("swarm: no swarm runs in ")
    assert len(out.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        ("key sk-ant-api03-abcdefghijklmnopqrstuvwxyz", "abcdefghijklmnop"),
        ("openai sk-proj-abcdefghijklmnopqrstuvwxyz0123", "abcdefghijklmnop"),
        ("push with ghp_abcdefghijklmnopqrstuvwxyz0123456789", "ghp_"),
        ("github_pat_11ABCDEFG0123456789_abcdefghijklmnop", "abcdefghijklmnop"),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig", "eyJhbGci"),
        ("Authorization: token 0123456789abcdef0123", "0123456789abcdef"),
        ("hotkey=ok apiKey: camelCaseSecret99", "camelCaseSecret99"),
        ("monkey=ghp_abcdefghijklmnopqrstuvwxyz0123456789", "ghp_"),
        ("export ANTHROPIC_API_KEY=not-a-pattern-but-named", "not-a-pattern"),
        ('{"client_secret": "hunter2hunter2"}', "hunter2"),
        ("DB_PASSWORD: correct-horse", "correct-horse"),
        ("the value plain-env-secret-123 leaked", "plain-env-secret-123"),
    ],
)
def test_redactor_removes_secrets(text: str, leak: str) -> None:
    redact = Redactor({"SOME_TOKEN": "plain-env-secret-123", "HOME": "/home/me"})
    result = redact(text)
    assert leak not in result
    assert REDACTED in result


def test_redactor_keeps_ordinary_text() -> None:
    redact = Redactor({"SHORT_KEY": "1", "PATH": "/usr/bin"})
    text = (
        'ran 12 tests in /usr/bin; "input_tokens": 1234, tokens_out=56; keyboard=ok; '
        "monkey: banana; the token overhead of bearer bonds"
    )
    assert redact(text) == text


def test_tail_reads_the_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "checks.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert tail(log, lines=3) == "line 97\nline 98\nline 99"
    assert tail(tmp_path / "missing.log") == ""


# -- in a real browser ---------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    """Headless Chromium driven by selenium, offline, with a fresh profile."""
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("chromium and chromium-driver are not installed (CI installs them)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is a dev dependency")
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def test_html_renders_in_chromium(finished_run: Path, tmp_path: Path, browser: object) -> None:
    from selenium.webdriver.remote.webdriver import WebDriver  # noqa: PLC0415

    assert isinstance(browser, WebDriver)
    target = tmp_path / "report.html"
    assert swarm(finished_run, "report", "--html", str(target)).returncode == 0
    browser.get(target.as_uri())
    wait_for(lambda: browser.execute_script("return window.swarmReport !== undefined"),
             what="the report script")  # fmt: skip
    lanes = browser.execute_script(
        "return [...document.querySelectorAll('[data-lane]')].map(e => e.dataset.lane)"
    )
    assert lanes == ["limited", "base", "child", "repaired", "broken", "after-broken"]
    counts = browser.execute_script(
        "return {bars: document.querySelectorAll('rect.bar').length,"
        " waits: document.querySelectorAll('rect.rl').length,"
        " checks: document.querySelectorAll('rect.chk').length,"
        " edges: document.querySelectorAll('path.edge').length,"
        " rows: document.querySelectorAll('#summary tbody tr').length}"
    )
    assert counts["bars"] == 7  # 2 + 1 + 1 + 2 + 1 + 0 attempts
    assert counts["waits"] == 1
    assert counts["checks"] >= 2
    assert counts["edges"] == 2  # base -> child, broken -> after-broken
    assert counts["rows"] == 6
    shot = tmp_path / "report.png"
    browser.save_screenshot(str(shot))
    # Clicking a lane opens that task's details, filled with its redacted prompt.
    browser.execute_script(
        "document.querySelector('[data-lane=\"base\"] .lane-bg')"
        ".dispatchEvent(new MouseEvent('click', {bubbles: true}))"
    )
    details = browser.execute_script("return document.getElementById('task-base').innerText")
    assert "base [REDACTED]" in details
    assert "all good" in details
    assert "diff: 1 file changed, " in details  # not "1 files"
    errors = [e for e in browser.get_log("browser") if e["level"] in {"SEVERE", "ERROR"}]
    assert errors == []
    browser.execute_cdp_cmd(
        "Emulation.setEmulatedMedia",
        {"features": [{"name": "prefers-color-scheme", "value": "dark"}]},
    )
    background = browser.execute_script("return getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(13, 17, 23)"
    dark = tmp_path / "report-dark.png"
    browser.save_screenshot(str(dark))
    print(f"screenshots: {shot} {dark}")
    assert shot.stat().st_size > 0


def test_names_from_the_repository_reach_the_terminal_printable_in_status_and_report(
    repo: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # A branch an agent made outside its worktree is named in the report's outside writes
    # line: its bidi override (or an escape sequence) reached the terminal as it was.
    agent = write_agent(
        "import subprocess\n"
        "open('w.txt', 'w').write('w')\n"
        "subprocess.run(['git', 'branch', 'evil\\u202etxt.exe'], check=True)\n"
    )
    out = swarm(repo, "run", "--agent", " ".join(agent), "-t", "a=x")
    assert out.returncode == 1, out.stdout + out.stderr
    for command in ("report", "status"):
        shown = swarm(repo, command).stdout
        assert "\u202e" not in shown, command
    assert "evil txt.exe" in swarm(repo, "report").stdout
