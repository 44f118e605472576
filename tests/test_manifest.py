from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from worktree_swarm.config.manifest import (
    Overrides,
    build_run_spec,
    load_config,
)
from worktree_swarm.core.errors import BadInputError
from worktree_swarm.core.paths import RUN_DIR_NAMES
from worktree_swarm.core.run_settings import Executor, RunSettings
from worktree_swarm.core.scheduler import dependency_cycle
from worktree_swarm.core.task import is_valid_task_id
from worktree_swarm.core.units import parse_duration, parse_size

AGENT = [sys.executable, "-c", "pass"]
AGENT_TOML = json.dumps(AGENT)


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in tmp_path so a manifest given as 'tasks.toml' is named exactly that."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def manifest(cwd: Path, text: str, *, with_agent: bool = True) -> Path:
    head = "[defaults]\n" + (f"agent = {AGENT_TOML}\n" if with_agent else "")
    (cwd / "tasks.toml").write_text(head + text)
    return Path("tasks.toml")


def build(repo: Path, path: Path | None = None, **kwargs: object) -> object:
    return build_run_spec(repo_root=repo, manifest=path, **kwargs)  # type: ignore[arg-type]


def error(repo: Path, path: Path | None = None, **kwargs: object) -> str:
    with pytest.raises(BadInputError) as info:
        build(repo, path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


TWO_TASKS = """
[[task]]
id = "fix-login"
prompt = "Fix the login loop"
files = ["src/auth/**"]

[[task]]
id = "login-tests"
prompt = "Add tests"
depends_on = ["fix-login"]
"""


# --- happy paths -----------------------------------------------------------------------------


def test_manifest_tasks_become_a_run_spec(
    repo: Path, cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GIT_AUTHOR_NAME")  # no identity anywhere: swarm's own
    spec = build_run_spec(repo_root=repo, manifest=manifest(cwd, TWO_TASKS))
    assert [t.id for t in spec.tasks] == ["fix-login", "login-tests"]
    first, second = spec.tasks
    assert first.prompt == "Fix the login loop"
    assert first.files == ("src/auth/**",)
    assert first.agent == "command"
    assert first.agent_argv == tuple(AGENT)
    assert second.depends_on == ("fix-login",)
    assert spec.jobs == 4
    assert spec.worktree_root == repo.absolute().parent / "repo.swarm"
    assert spec.worktree_root.is_absolute()
    assert spec.commit_author == "worktree-swarm <swarm@localhost>"
    assert (spec.port_base, spec.port_block, spec.kill_grace) == (20000, 10, 5.0)
    assert not spec.worktree_root.exists()


def test_inline_and_prompt_file_tasks_follow_manifest_order(repo: Path, cwd: Path) -> None:
    (cwd / "p.md").write_text("from a file\n")
    spec = build_run_spec(
        repo_root=repo,
        manifest=manifest(cwd, TWO_TASKS),
        inline=["inline-one=do a=b thing"],
        prompt_files=["from-file=p.md"],
    )
    assert [t.id for t in spec.tasks] == ["fix-login", "login-tests", "inline-one", "from-file"]
    assert spec.tasks[2].prompt == "do a=b thing"
    assert spec.tasks[3].prompt == "from a file\n"
    # inline tasks get the manifest defaults
    assert spec.tasks[2].agent_argv == tuple(AGENT)


def test_hostile_prompt_text_is_kept_byte_for_byte(repo: Path, cwd: Path) -> None:
    hostile = "$(touch pwned) `touch pwned2` 'single' \"double\" ; rm -rf / && echo {prompt}\r\n\\x"
    (cwd / "hostile.md").write_bytes(hostile.encode())
    (cwd / "tasks.toml").write_text(
        f"[[task]]\nid = 'm'\nagent = {AGENT_TOML}\nprompt = {json.dumps(hostile)}\n"
    )
    spec = build_run_spec(
        repo_root=repo,
        manifest=Path("tasks.toml"),
        inline=[f"i={hostile}"],
        prompt_files=["f=hostile.md"],
        overrides=Overrides(agent=shlex.join(AGENT)),
    )
    assert [t.prompt for t in spec.tasks] == [hostile, hostile, hostile]
    assert not (cwd / "pwned").exists()
    assert not (cwd / "pwned2").exists()
    assert not (repo / "pwned").exists()


def test_default_agent_is_claude_profile(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    claude = bin_dir / "claude"
    claude.write_text("#!/bin/sh\nexit 0\n")
    claude.chmod(claude.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    spec = build_run_spec(repo_root=repo, manifest=None, inline=["a=do it"])
    assert spec.tasks[0].agent == "claude"
    assert spec.tasks[0].agent_argv[0] == "claude"


def test_missing_default_agent_says_what_to_do(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    message = error(repo, inline=["a=do it"])
    assert "'claude' not found on PATH" in message
    assert "--agent" in message


def test_agent_override_profile_name_and_command_line(repo: Path, cwd: Path) -> None:
    spec = build_run_spec(
        repo_root=repo, manifest=None, inline=["a=x"], overrides=Overrides(agent="scripted")
    )
    assert spec.tasks[0].agent == "scripted"
    line = f"{sys.executable} -c 'print(1)' {{prompt_file}}"
    spec = build_run_spec(
        repo_root=repo, manifest=None, inline=["a=x"], overrides=Overrides(agent=line)
    )
    assert spec.tasks[0].agent == "command"
    assert spec.tasks[0].agent_argv == (sys.executable, "-c", "print(1)", "{prompt_file}")


def test_checks_setup_copy_env_parse(repo: Path, cwd: Path) -> None:
    path = manifest(
        cwd,
        """
checks = ["pytest -q 'tests/a b.py'", ["ruff", "check", "."]]
copy = [".env", "config/*.local"]
setup = [["npm", "ci"], "make build"]
env = { A = "1", B = "two" }

[[task]]
id = "t"
prompt = "p"
env = { B = "task", C = "3" }
retries = 2
priority = -5
""",
    )
    # the [defaults] header is already open, so the keys above land in it
    (task,) = build_run_spec(repo_root=repo, manifest=path).tasks
    assert task.checks == (("pytest", "-q", "tests/a b.py"), ("ruff", "check", "."))
    assert task.copy == (".env", "config/*.local")
    assert task.setup == (("npm", "ci"), ("make", "build"))
    assert dict(task.env) == {"A": "1", "B": "task", "C": "3"}
    assert (task.retries, task.priority) == (2, -5)


# --- precedence ------------------------------------------------------------------------------


def test_step_timeouts_from_defaults_and_task(repo: Path, cwd: Path) -> None:
    path = manifest(
        cwd,
        'setup_timeout = "10m"\ncheck_timeout = "90s"\n'
        '[[task]]\nid = "own"\nprompt = "p"\ncheck_timeout = 5\nresolve_timeout = "1h"\n'
        '[[task]]\nid = "inherits"\nprompt = "p"\n',
    )
    own, inherits = build_run_spec(repo_root=repo, manifest=path).tasks
    assert (own.setup_timeout, own.check_timeout, own.resolve_timeout) == (600.0, 5.0, 3600.0)
    assert (inherits.setup_timeout, inherits.check_timeout) == (600.0, 90.0)
    assert inherits.resolve_timeout is None  # the task's `timeout`, else 30 minutes


def test_an_unknown_agent_is_refused_where_it_is_written_even_when_overridden(
    repo: Path, cwd: Path
) -> None:
    # Every other bad value is refused though a flag overrides it; `agent = "claud"` was not.
    (repo / "swarm.toml").write_text('agent = "claud"\n')
    message = error(repo, inline=["a=x"], overrides=Overrides(agent="scripted"))
    assert "swarm.toml: agent: unknown agent 'claud'" in message, message


def test_a_swarm_toml_written_like_a_manifest_says_so(repo: Path, cwd: Path) -> None:
    # It said "unknown key 'defaults' (allowed: ...)", a line of 700 characters.
    (repo / "swarm.toml").write_text("[defaults]\njobs = 2\n")
    message = error(repo, inline=["a=x"], overrides=Overrides(agent="scripted"))
    assert message.endswith(
        "swarm.toml: [defaults] is a manifest's table; here the settings go at the top level"
        " (tasks in a manifest: `swarm run tasks.toml`)"
    ), message


def test_an_empty_argument_is_one_in_an_argv_array_as_in_a_command_string(
    repo: Path, cwd: Path
) -> None:
    # `test -z ''` ran; `["test", "-z", ""]` was refused ("must not be empty").
    path = manifest(
        cwd, '[[task]]\nid = "a"\nprompt = "p"\nchecks = [["test", "-z", ""], "test -z \'\'"]\n'
    )
    spec = build_run_spec(repo_root=repo, manifest=path)
    assert spec.tasks[0].checks == (("test", "-z", ""), ("test", "-z", ""))
    path = manifest(cwd, '[[task]]\nid = "a"\nprompt = "p"\nchecks = [["", "x"]]\n')
    assert "checks[0][0]: must not be empty" in error(repo, path)


def test_the_one_argument_limit_is_linuxs_and_applies_there_only(
    repo: Path, cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 128 KiB is Linux's MAX_ARG_STRLEN; macOS has only a total limit, so it was refused there too.
    big = "x" * 200_000
    path = manifest(cwd, f'[[task]]\nid = "a"\nprompt = "p"\nenv = {{ A = "{big}" }}\n')
    monkeypatch.setattr(sys, "platform", "linux")
    assert "env: A's value: 195K long" in error(repo, path)
    monkeypatch.setattr(sys, "platform", "darwin")
    (task,) = build_run_spec(repo_root=repo, manifest=path).tasks
    assert dict(task.env)["A"] == big


def test_precedence_task_over_cli_over_defaults_over_config(repo: Path, cwd: Path) -> None:
    (repo / "swarm.toml").write_text(
        f'agent = {AGENT_TOML}\ntimeout = "1m"\nidle_timeout = "2m"\nretries = 1\njobs = 2\n'
        'checks = ["true from-config"]\npriority = 7\n'
    )
    path = manifest(
        cwd,
        """timeout = "10m"
jobs = 3
checks = ["true from-defaults"]

[[task]]
id = "own"
prompt = "p"
timeout = 30
checks = []

[[task]]
id = "inherits"
prompt = "p"
""",
        with_agent=False,
    )
    spec = build_run_spec(repo_root=repo, manifest=path)
    own, inherits = spec.tasks
    assert spec.jobs == 3
    assert (own.timeout, inherits.timeout) == (30.0, 600.0)
    assert inherits.idle_timeout == 120.0  # only the config sets it
    assert (inherits.retries, inherits.priority) == (1, 7)
    assert own.checks == ()
    assert inherits.checks == (("true", "from-defaults"),)

    spec = build_run_spec(
        repo_root=repo,
        manifest=path,
        overrides=Overrides(jobs=8, timeout="1h", checks=("true test",), idle_timeout="5s"),
    )
    own, inherits = spec.tasks
    assert spec.jobs == 8
    assert (own.timeout, inherits.timeout) == (30.0, 3600.0)
    assert inherits.idle_timeout == 5.0
    assert own.checks == ()
    assert inherits.checks == (("true", "test"),)


def test_run_wide_settings_from_config_and_defaults(repo: Path, cwd: Path) -> None:
    (repo / "swarm.toml").write_text(
        f'agent = {AGENT_TOML}\nworktree_root = "../trees"\nkill_grace = "2s"\n'
        'commit_author = "Bot <bot@example.com>"\nport_base = 30000\n'
    )
    path = manifest(cwd, 'port_block = 20\n[[task]]\nid = "a"\nprompt = "p"\n', with_agent=False)
    spec = build_run_spec(repo_root=repo, manifest=path)
    assert spec.worktree_root == repo.absolute().parent / "trees"
    assert spec.kill_grace == 2.0
    assert spec.commit_author == "Bot <bot@example.com>"
    assert (spec.port_base, spec.port_block) == (30000, 20)


# --- config files ----------------------------------------------------------------------------


def test_load_config_prefers_swarm_toml_then_pyproject(repo: Path) -> None:
    assert load_config(repo) == {}
    (repo / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert load_config(repo) == {}
    (repo / "pyproject.toml").write_text('[tool.swarm]\njobs = 6\ntimeout = "5m"\n')
    assert load_config(repo) == {"jobs": 6, "timeout": "5m"}
    (repo / "swarm.toml").write_text("jobs = 2\n")
    assert load_config(repo) == {"jobs": 2}


def test_pyproject_tool_swarm_is_used(repo: Path, cwd: Path) -> None:
    (repo / "pyproject.toml").write_text(f"[tool.swarm]\njobs = 6\nagent = {AGENT_TOML}\n")
    spec = build_run_spec(repo_root=repo, manifest=None, inline=["a=p"])
    assert spec.jobs == 6
    assert spec.tasks[0].agent_argv == tuple(AGENT)


def test_pyproject_tool_swarm_unknown_key(repo: Path, cwd: Path) -> None:
    (repo / "pyproject.toml").write_text("[tool.swarm]\njbos = 6\n")
    message = error(repo, inline=["a=p"])
    assert "pyproject.toml [tool.swarm]: unknown key 'jbos' (did you mean 'jobs'?)" in message


def test_broken_pyproject_without_swarm_section_is_ignored(repo: Path, cwd: Path) -> None:
    (repo / "pyproject.toml").write_text("[project\nname=")
    spec = build_run_spec(
        repo_root=repo, manifest=None, inline=["a=p"], overrides=Overrides(agent="scripted")
    )
    assert spec.jobs == 4
    (repo / "pyproject.toml").write_text("[tool.swarm\njobs=")
    assert "pyproject.toml: invalid TOML" in error(repo, inline=["a=p"])


def test_swarm_toml_bad_value_names_file_and_field(repo: Path, cwd: Path) -> None:
    (repo / "swarm.toml").write_text('timeout = "soon"\n')
    message = error(repo, inline=["a=p"])
    assert "swarm.toml: timeout: bad duration 'soon'" in message


# --- validation errors -----------------------------------------------------------------------


def test_unknown_task_key(repo: Path, cwd: Path) -> None:
    path = manifest(cwd, '[[task]]\nid = "fix-login"\npromt = "x"\n')
    assert error(repo, path).startswith(
        "tasks.toml: task \"fix-login\": unknown key 'promt' (did you mean 'prompt'?)"
    )


def test_unknown_keys_elsewhere(repo: Path, cwd: Path) -> None:
    path = manifest(cwd, "tasks = 1\n")
    assert "tasks.toml: [defaults]: unknown key 'tasks'" in error(repo, path)
    (cwd / "tasks.toml").write_text('jobs = 2\n[[task]]\nid = "a"\nprompt = "p"\n')
    assert error(repo, Path("tasks.toml")) == "tasks.toml: key 'jobs' belongs in [defaults]"
    path = manifest(cwd, 'files = ["a"]\n[[task]]\nid = "a"\nprompt = "p"\n')
    assert error(repo, path) == "tasks.toml: [defaults]: key 'files' belongs in a [[task]]"
    # in swarm.toml, a task's key says where tasks go
    (repo / "swarm.toml").write_text('id = "x"\n')
    assert error(repo, manifest(cwd, '[[task]]\nid = "a"\nprompt = "p"\n')).endswith(
        "swarm.toml: key 'id' belongs in a [[task]] of a manifest (`swarm run tasks.toml`)"
    )
    (repo / "swarm.toml").unlink()
    path = manifest(cwd, '[[task]]\nid = "a"\nprompt = "p"\njobs = 3\n')
    assert "tasks.toml: task \"a\": key 'jobs' is run-wide" in error(repo, path)


def test_bad_task_id_names_index_and_regex(repo: Path, cwd: Path) -> None:
    path = manifest(
        cwd,
        '[[task]]\nid = "a"\nprompt = "p"\n[[task]]\nid = "b"\nprompt = "p"\n'
        '[[task]]\nid = "Bad_ID"\nprompt = "p"\n',
    )
    message = error(repo, path)
    assert message.startswith(
        "tasks.toml: task[3]: id 'Bad_ID' must match [a-z0-9][a-z0-9._-]{0,62}"
    )


@pytest.mark.parametrize(
    "bad", ["../up", "a..b", "x.lock", "-dash", "a/b", "", "x" * 64, "integration-tests"]
)
def test_unsafe_inline_ids(repo: Path, cwd: Path, bad: str) -> None:
    assert "must match" in error(repo, inline=[f"{bad}=p"])


@pytest.mark.parametrize("name", sorted(n for n in RUN_DIR_NAMES if is_valid_task_id(n)))
def test_ids_swarm_keeps_its_own_files_under_are_refused(repo: Path, cwd: Path, name: str) -> None:
    # A task `merge` had its logs where `swarm merge` ends the programs a killed merge left.
    assert error(repo, inline=[f"{name}=p"]) == (
        f'-t "{name}": id {name!r} is reserved (swarm keeps its own files of a run under that'
        " name); choose another"
    )


def test_missing_id_and_prompt(repo: Path, cwd: Path) -> None:
    assert error(repo, manifest(cwd, '[[task]]\nprompt = "p"\n')) == (
        "tasks.toml: task[1]: missing key 'id'"
    )
    assert error(repo, manifest(cwd, '[[task]]\nid = "a"\n')) == (
        "tasks.toml: task \"a\": missing key 'prompt'"
    )


@pytest.mark.parametrize("prompt", ["", "   \n\t"])
def test_empty_prompt(repo: Path, cwd: Path, prompt: str) -> None:
    path = manifest(cwd, f'[[task]]\nid = "a"\nprompt = {json.dumps(prompt)}\n')
    assert error(repo, path) == 'tasks.toml: task "a": prompt is empty'
    assert error(repo, inline=[f"b={prompt}"]) == '-t "b": prompt is empty'


def test_duplicate_ids_across_sources(repo: Path, cwd: Path) -> None:
    path = manifest(cwd, TWO_TASKS)
    message = error(repo, path, inline=["fix-login=again"])
    assert (
        message == '-t "fix-login": duplicate id \'fix-login\' (also tasks.toml: task "fix-login")'
    )
    path = manifest(cwd, TWO_TASKS + '[[task]]\nid = "fix-login"\nprompt = "p"\n')
    assert "duplicate id 'fix-login'" in error(repo, path)


def test_unknown_and_self_dependencies(repo: Path, cwd: Path) -> None:
    path = manifest(cwd, '[[task]]\nid = "a"\nprompt = "p"\ndepends_on = ["ghost"]\n')
    assert (
        error(repo, path) == "tasks.toml: task \"a\": depends_on 'ghost' is not a task of this run"
    )
    path = manifest(cwd, '[[task]]\nid = "a"\nprompt = "p"\ndepends_on = ["a"]\n')
    assert error(repo, path) == 'tasks.toml: task "a": depends on itself'


def test_cycle_is_named(repo: Path, cwd: Path) -> None:
    path = manifest(
        cwd,
        '[[task]]\nid = "a"\nprompt = "p"\ndepends_on = ["b"]\n'
        '[[task]]\nid = "b"\nprompt = "p"\ndepends_on = ["c"]\n'
        '[[task]]\nid = "c"\nprompt = "p"\ndepends_on = ["a"]\n',
    )
    assert error(repo, path) == "dependency cycle: a -> b -> c -> a"


def test_no_tasks(repo: Path, cwd: Path) -> None:
    expected = "no tasks: give a manifest, -t ID=PROMPT or --prompt-file ID=FILE"
    assert error(repo) == expected
    assert error(repo, manifest(cwd, "")) == expected


def test_malformed_inline_and_prompt_file(repo: Path, cwd: Path) -> None:
    assert error(repo, inline=["fix the bug"]) == '-t "fix the bug": expected ID=PROMPT'
    assert error(repo, prompt_files=["a"]) == '--prompt-file "a": expected ID=FILE'
    message = error(repo, prompt_files=["a=missing.md"])
    assert message == '--prompt-file "a": missing.md: cannot read: No such file or directory'


def test_unreadable_manifest(repo: Path, cwd: Path) -> None:
    assert error(repo, Path("nope.toml")) == "nope.toml: cannot read: No such file or directory"
    (cwd / "dir.toml").mkdir()
    assert error(repo, Path("dir.toml")) == "dir.toml: not a regular file"
    (cwd / "bin.toml").write_bytes(b"\xff\xfe")
    assert error(repo, Path("bin.toml")) == (
        "bin.toml: not UTF-8 text (byte 0xff at line 1, column 1); save it as UTF-8"
    )


def test_a_manifest_saved_with_a_byte_order_mark_and_crlf_loads(repo: Path, cwd: Path) -> None:
    # Windows editors save one: it was refused as "invalid TOML ... line 1, column 1".
    text = f'[defaults]\r\nagent = {AGENT_TOML}\r\n[[task]]\r\nid = "a"\r\nprompt = "p"\r\n'
    (cwd / "tasks.toml").write_bytes(b"\xef\xbb\xbf" + text.encode())
    spec = build_run_spec(repo_root=repo, manifest=Path("tasks.toml"))
    assert [t.id for t in spec.tasks] == ["a"]


def test_toml_syntax_error_is_one_line(repo: Path, cwd: Path) -> None:
    (cwd / "tasks.toml").write_text('[[task]]\nid = "a"\nprompt = \n')
    message = error(repo, Path("tasks.toml"))
    assert message.startswith("tasks.toml: invalid TOML: ")
    assert "line 3" in message


# An integer past a float's range, and how bad input shows it (cut to 40 characters).
BIG = str(10**400)
BIG_SHOWN = BIG[:39] + "…"


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ('retries = "3"', 'task "a": retries: expected an integer, got a string'),
        ("retries = -1", 'task "a": retries: must be >= 0, got -1'),
        ("priority = true", 'task "a": priority: expected an integer, got a boolean'),
        ('timeout = "forever"', "task \"a\": timeout: bad duration 'forever'"),
        ("idle_timeout = 0", 'task "a": idle_timeout: bad duration 0'),
        ('setup_timeout = "later"', "task \"a\": setup_timeout: bad duration 'later'"),
        ("check_timeout = 0", 'task "a": check_timeout: bad duration 0'),
        ("resolve_timeout = true", 'task "a": resolve_timeout: bad duration'),
        ('checks = "pytest"', 'task "a": checks: expected an array of command strings'),
        ("checks = [1]", 'task "a": checks[0]: expected a command string or an argv array'),
        ('checks = ["echo \'open"]', 'task "a": checks[0]: cannot split'),
        ("checks = [[]]", 'task "a": checks[0]: empty command'),
        ('setup = [""]', 'task "a": setup[0]: empty command'),
        ('files = ["../outside"]', "task \"a\": files[0]: '../outside' must be a relative path"),
        ('copy = ["/etc/passwd"]', "task \"a\": copy[0]: '/etc/passwd' must be a relative path"),
        ("env = { A = 1 }", 'task "a": env: A\'s value: expected a string, got an integer'),
        ('env = { "A-B" = "x" }', "task \"a\": env: 'A-B' is not a valid environment variable"),
        ('depends_on = "b"', 'task "a": depends_on: expected an array of strings, got a string'),
        (  # dropped silently: a typo for another task's id went unnoticed
            'depends_on = ["b", "b"]',
            "task \"a\": depends_on: 'b' is given twice; list it once",
        ),
        ("title = 3", 'task "a": title: expected a string, got an integer'),
        ("agent = 3", 'task "a": agent: expected a profile name or an argv array'),
        ('agent = "nosuch"', "task \"a\": agent: unknown agent 'nosuch'"),
        (
            'agent = ["/no/such/agent"]',
            "task \"a\": agent: agent program '/no/such/agent' not found",
        ),
    ],
)
def test_bad_task_fields_name_task_and_field(
    repo: Path, cwd: Path, snippet: str, expected: str
) -> None:
    path = manifest(cwd, f'[[task]]\nid = "a"\nprompt = "p"\n{snippet}\n')
    message = error(repo, path)
    assert message.startswith(f"tasks.toml: {expected}"), message


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("jobs = 0", "tasks.toml: [defaults]: jobs: must be >= 1, got 0"),
        (
            'commit_author = "nobody"',
            "tasks.toml: [defaults]: commit_author: expected 'Name <email>'",
        ),
        (  # git refuses a name of only such characters: every checkpoint would fail
            'commit_author = ". <a@b>"',
            "tasks.toml: [defaults]: commit_author: expected 'Name <email>'",
        ),
        ("port_base = 80", "tasks.toml: [defaults]: port_base: must be between 1024 and 65535"),
        (
            "port_base = 65460",  # 65460 + 10 x 2 x 4 - 1 = 65539: the tasks in flight
            "port_base 65460 + port_block 10 x 2 x jobs 4 (the tasks in flight) goes past port",
        ),
        ('kill_grace = "-1s"', "tasks.toml: [defaults]: kill_grace: bad duration '-1s'"),
        ('worktree_root = ""', "tasks.toml: [defaults]: worktree_root: must not be empty"),
        ('remote = ""', "tasks.toml: [defaults]: remote: must not be empty"),
        ('ray_address = ""', "tasks.toml: [defaults]: ray_address: must not be empty"),
        ("max_log = 1.5", "tasks.toml: [defaults]: max_log: bad size 1.5: bytes are whole"),
        ('max_file = "1.5"', "tasks.toml: [defaults]: max_file: bad size '1.5': bytes are whole"),
        ('agent = "nosuch"', "tasks.toml: [defaults]: agent: unknown agent 'nosuch'"),
    ],
)
def test_bad_defaults(repo: Path, cwd: Path, snippet: str, expected: str) -> None:
    text = f'{snippet}\n[[task]]\nid = "a"\nprompt = "p"\n'
    path = manifest(cwd, text, with_agent=not snippet.startswith("agent"))
    assert error(repo, path).startswith(expected)


def test_bad_defaults_and_task_shapes(repo: Path, cwd: Path) -> None:
    (cwd / "tasks.toml").write_text("defaults = 1\n")
    assert (
        error(repo, Path("tasks.toml")) == "tasks.toml: defaults: expected a table, got an integer"
    )
    (cwd / "tasks.toml").write_text('[task]\nid = "a"\nprompt = "p"\n')
    assert (
        error(repo, Path("tasks.toml")) == "tasks.toml: task: write each task as a [[task]] table"
    )
    (cwd / "tasks.toml").write_text("task = [1]\n")
    assert (
        error(repo, Path("tasks.toml")) == "tasks.toml: task[1]: expected a table, got an integer"
    )


def test_bad_overrides_name_the_flag(repo: Path, cwd: Path) -> None:
    assert error(repo, inline=["a=p"], overrides=Overrides(jobs=0)) == "--jobs: must be >= 1, got 0"
    assert error(repo, inline=["a=p"], overrides=Overrides(timeout="x")).startswith(
        "--timeout: bad duration 'x'"
    )
    assert error(repo, inline=["a=p"], overrides=Overrides(agent="claud")).startswith(
        "--agent: unknown agent 'claud'"
    )
    assert error(repo, inline=["a=p"], overrides=Overrides(agent="'open")).startswith(
        "--agent: cannot split"
    )
    message = error(repo, inline=["a=p"], overrides=Overrides(agent="scripted", checks=("",)))
    assert message == "--check[0]: empty command"


# --- durations and cycles --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("45m", 2700.0),
        ("90s", 90.0),
        ("1h30m", 5400.0),
        ("2h", 7200.0),
        ("1.5m", 90.0),
        ("1h 2m 3s", 3723.0),
        ("30", 30.0),
        ("2.5", 2.5),
        ("10M", 600.0),
        (45, 45.0),
        (0.5, 0.5),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value, where="x") == seconds


@pytest.mark.parametrize(
    "value",
    # digits of another script: Python's float() and \\d take them (`٣m` was 3 minutes)
    ["", "m", "45x", "1m1h", "-5", "0s", "nan", "inf", 0, -3, True, None, [1], "h30", "\u0663m",
     "\u0663"],
)  # fmt: skip
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(BadInputError, match=r"^where: bad duration"):
        parse_duration(value, where="where")


@pytest.mark.parametrize(
    ("value", "size"),
    [(2, 2), (2.0, 2), ("2", 2), ("2B", 2), ("1.5K", 1536), ("1.5MiB", 3 << 19), ("20G", 20 << 30)],
)
def test_parse_size(value: object, size: int) -> None:
    assert parse_size(value, where="x") == size


@pytest.mark.parametrize("value", [1.5, "1.5", "2.5B", 1e-3])
def test_a_size_of_part_of_a_byte_is_refused(value: object) -> None:
    # `max_log = 1.5` was 1 byte: a unit left out, most likely.
    with pytest.raises(BadInputError) as info:
        parse_size(value, where="max_log")
    assert str(info.value).startswith(f"max_log: bad size {value!r}"), info.value


@pytest.mark.parametrize(
    ("value", "said"),
    [(True, "true"), (dt.date(1979, 5, 27), "1979-05-27"), ({"a": 1}, "a table"), ([], "an array")],
)
def test_a_bad_duration_is_named_as_toml_writes_it(value: object, said: str) -> None:
    with pytest.raises(BadInputError, match=rf"^where: bad duration {said} \("):
        parse_duration(value, where="where")


def test_dependency_cycle() -> None:
    assert dependency_cycle({}) is None
    assert dependency_cycle({"a": ["b"], "b": ["c"], "c": []}) is None
    assert dependency_cycle({"a": ["b", "c"], "b": ["d"], "c": ["d"], "d": []}) is None
    assert dependency_cycle({"a": ["a"]}) == ["a", "a"]
    assert dependency_cycle({"x": [], "a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert dependency_cycle({"a": ["b"], "b": ["c"], "c": ["b"]}) == ["b", "c", "b"]
    assert dependency_cycle({"a": ["ghost"]}) is None


def test_dependency_cycle_long_chain_does_not_recurse() -> None:
    n = 5000
    chain = {f"t{i}": [f"t{i + 1}"] for i in range(n)}
    chain[f"t{n}"] = []
    assert dependency_cycle(chain) is None
    chain[f"t{n}"] = ["t0"]
    cycle = dependency_cycle(chain)
    assert cycle is not None
    assert (cycle[0], cycle[-1], len(cycle)) == ("t0", "t0", n + 2)


def test_rate_limit_defaults_retries_flag_and_fallback_keys(
    repo: Path, cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = cwd / "bin"
    bin_dir.mkdir()
    for name in ("codex", "gemini"):
        exe = bin_dir / name
        exe.write_text("#!/bin/sh\n")
        exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    path = manifest(
        cwd,
        'fallback = ["codex", "gemini"]\nbudget_agent = "gemini"\nbudget_share = 0.5\n'
        'max_wait = "2h"\n[[task]]\nid = "a"\nprompt = "p"\n'
        '[[task]]\nid = "b"\nprompt = "p"\nfallback = []\nmax_wait = "10m"\n',
    )
    spec = build(repo, path)
    a, b = spec.tasks  # type: ignore[attr-defined]
    assert (a.retries, a.fallback, a.budget_agent, a.max_wait) == (
        5,
        ("codex", "gemini"),
        "gemini",
        7200.0,
    )
    assert (b.fallback, b.max_wait) == ((), 600.0)
    assert spec.budget_share == 0.5  # type: ignore[attr-defined]
    spec = build(repo, path, overrides=Overrides(retries=0))
    assert [t.retries for t in spec.tasks] == [0, 0]  # type: ignore[attr-defined]
    assert build(repo, manifest(cwd, '[[task]]\nid = "a"\nprompt = "p"\n')).tasks[0].max_wait == (  # type: ignore[attr-defined]
        4 * 3600.0
    )


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        (
            'fallback = ["nope"]',
            "tasks.toml: [defaults]: fallback[0]: unknown agent 'nope' (known:",
        ),
        (
            'fallback = "codex"',
            "[defaults]: fallback: expected a list of agent names, got a string",
        ),
        ('fallback = ["aider"]', "fallback[0]: agent program 'aider' not found on PATH"),
        ('budget_agent = ["codex"]', "[defaults]: budget_agent: expected a string, got an array"),
        (
            "budget_share = 1.5",
            "[defaults]: budget_share: must be a share between 0 and 1, got 1.5",
        ),
        ("budget_share = 0", "[defaults]: budget_share: expected a positive number, got 0"),
        ("budget_share = nan", "[defaults]: budget_share: expected a positive number, got nan"),
        ("max_cost_usd = nan", "[defaults]: max_cost_usd: expected a positive number, got nan"),
        ("max_cost_usd = inf", "[defaults]: max_cost_usd: expected a positive number, got inf"),
        # TOML takes any integer: one past a float's range was an internal error (exit 1).
        (
            f"max_cost_usd = {BIG}",
            f"[defaults]: max_cost_usd: expected a positive number, got {BIG_SHOWN}",
        ),
        (f"max_disk = {BIG}", f"[defaults]: max_disk: bad size {BIG_SHOWN} (use"),
        (f"max_wait = {BIG}", f"[defaults]: max_wait: bad duration {BIG_SHOWN} (use"),
        (f"jobs = {BIG}", f"x 2 x jobs {BIG_SHOWN} (the tasks in flight) goes past port"),
        ('max_wait = "soon"', "[defaults]: max_wait:"),
    ],
)
def test_bad_fallback_settings(
    repo: Path, cwd: Path, monkeypatch: pytest.MonkeyPatch, snippet: str, expected: str
) -> None:
    monkeypatch.setenv("PATH", str(cwd / "empty"))
    message = error(repo, manifest(cwd, f'{snippet}\n[[task]]\nid = "a"\nprompt = "p"\n'))
    assert expected in message


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_cost_cap_that_caps_nothing_exits_2_before_anything(repo: Path, value: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "worktree_swarm.cli", "run", "--max-cost-usd", value, "-t", "a=p"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    )
    assert (out.returncode, out.stderr.count("\n")) == (2, 1), out.stderr
    assert "max_cost_usd" in out.stderr or "--max-cost-usd" in out.stderr
    assert not (repo / ".git" / "swarm").exists()


def test_bad_retries_flag_exits_2_before_anything(repo: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "worktree_swarm.cli", "run", "--retries", "-1", "-t", "a=p"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 2
    assert "--retries" in out.stderr
    assert not (repo / ".git" / "swarm").exists()


def test_executor_settings_come_from_defaults_and_flags_and_survive_the_store(
    repo: Path, cwd: Path
) -> None:
    path = manifest(
        cwd,
        'executor = "ray"\nray_address = "head:6379"\nremote = "shared"\nray_memory = "512M"\n'
        'checkpoint_interval = "30s"\n[[task]]\nid = "a"\nprompt = "x"\n',
    )
    spec = build(repo, path)
    assert spec.executor is Executor.RAY  # type: ignore[attr-defined]
    assert (spec.ray_address, spec.remote) == ("head:6379", "shared")  # type: ignore[attr-defined]
    assert spec.ray_memory == 512 * 2**20  # type: ignore[attr-defined]
    assert spec.checkpoint_interval == 30.0  # type: ignore[attr-defined]
    back = RunSettings.from_json(spec.settings.to_json())  # type: ignore[attr-defined]
    assert back.executor is Executor.RAY
    assert back.remote == "shared"
    spec = build(repo, path, overrides=Overrides(remote="other"))
    assert (spec.executor, spec.remote) == (Executor.RAY, "other")  # type: ignore[attr-defined]
    spec = build(repo, path, overrides=Overrides(executor="local"))
    assert spec.executor is Executor.LOCAL  # type: ignore[attr-defined]
    assert build(repo, manifest(cwd, '[[task]]\nid = "a"\nprompt = "x"\n')).executor is (  # type: ignore[attr-defined]
        Executor.LOCAL
    )


def _swarm_run(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worktree_swarm.cli", "run", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--limit", "3"), "--limit works only with --issues or --issues-label"),
        (("--github-repo", "o/r"), "--github-repo works only with --issues or --issues-label"),
        (("--api-url", "http://127.0.0.1:9"), "--api-url works only with --issues or"),
        (
            ("--ray-address", "127.0.0.1:6379"),
            '--ray-address is for the Ray executor; add --executor ray (or executor = "ray"',
        ),
        (("--remote", "shared"), "--remote is for the Ray executor; add --executor ray"),
        (("--executor", "local", "--remote", "shared"), "--remote is for the Ray executor"),
    ],
)
def test_an_option_that_would_do_nothing_exits_2_before_anything(
    repo: Path, args: tuple[str, ...], message: str
) -> None:
    out = _swarm_run(repo, *args, "-t", "a=p")
    assert (out.returncode, out.stderr.count("\n")) == (2, 1), out.stderr
    assert out.stderr.startswith(f"swarm: {message}")
    assert not (repo / ".git" / "swarm").exists()


@pytest.mark.parametrize("kind", ["directory", "dangling symlink", "fifo"])
def test_a_swarm_toml_that_is_no_file_is_refused_not_skipped(repo: Path, kind: str) -> None:
    # Skipped, the run would quietly take [tool.swarm] (or the defaults) instead.
    (repo / "pyproject.toml").write_text("[tool.swarm]\njobs = 1\n")
    config = repo / "swarm.toml"
    if kind == "directory":
        config.mkdir()
    elif kind == "fifo":
        os.mkfifo(config)
    else:
        config.symlink_to(repo / "gone.toml")
    out = _swarm_run(repo, "-t", "a=p")
    assert (out.returncode, out.stderr.count("\n")) == (2, 1), out.stderr
    assert out.stderr.startswith("swarm: swarm.toml: ")
    assert not (repo / ".git" / "swarm").exists()


@pytest.mark.parametrize("kind", ["fifo", "too big"])
@pytest.mark.parametrize("which", ["manifest", "swarm.toml"])
def test_a_manifest_or_config_past_its_bounds_is_one_line_before_anything(
    repo: Path, kind: str, which: str
) -> None:
    # A FIFO would hang the run waiting for a writer; /dev/zero-like sizes would eat memory.
    path = repo / ("swarm.toml" if which == "swarm.toml" else "tasks.toml")
    if kind == "fifo":
        os.mkfifo(path)
    else:  # valid TOML, one byte past the limit
        head = '[[task]]\nid = "a"\nprompt = "p"\n'
        path.write_text(head + "# " + "x" * (16 * 2**20 + 1 - len(head) - 3) + "\n")
        assert path.stat().st_size == 16 * 2**20 + 1
    args = ("-t", "a=p") if which == "swarm.toml" else (str(path),)
    out = _swarm_run(repo, *args)
    assert (out.returncode, out.stderr.count("\n")) == (2, 1), out.stderr
    why = "not a regular file" if kind == "fifo" else "larger than 16 MiB"
    assert out.stderr.startswith("swarm: "), out.stderr
    assert out.stderr.endswith(f": {why}\n"), out.stderr
    assert not (repo / ".git" / "swarm").exists()


def test_a_misspelt_placeholder_in_an_agent_is_refused_and_braces_of_its_own_are_not(
    repo: Path, cwd: Path
) -> None:
    # `{promt}` stayed as typed: every agent of the night got no prompt.
    typo = '[[task]]\nid = "a"\nprompt = "p"\nagent = ["sh", "-c", "run {promt}"]\n'
    assert error(repo, manifest(cwd, typo)) == (
        "tasks.toml: task \"a\": agent: argument 'run {promt}' has {promt}, which is no "
        "placeholder (did you mean {prompt}? known: {prompt}, {prompt_file}, {task_id}, "
        "{worktree}, {branch})"
    )
    shell = "awk '{print}' ${HOME} {root} {bash}"  # braces of the program's own
    own = f'[[task]]\nid = "a"\nprompt = "p"\nagent = ["sh", "-c", "{shell}"]\n'
    assert build(repo, manifest(cwd, own)).tasks[0].agent_argv[2] == shell


def test_an_unknown_executor_is_one_line(repo: Path, cwd: Path) -> None:
    path = manifest(cwd, 'executor = "k8s"\n[[task]]\nid = "a"\nprompt = "x"\n')
    assert error(repo, path) == "tasks.toml: [defaults]: executor: 'k8s' is not one of local, ray"


# --- programs the tasks' commands need -------------------------------------------------------


def test_a_check_program_not_on_path_is_refused_with_where_it_is(repo: Path, cwd: Path) -> None:
    path = manifest(cwd, '[[task]]\nid = "a"\nprompt = "p"\nchecks = ["pytset -q"]\n')
    message = error(repo, path)
    assert message.startswith('tasks.toml: task "a"')
    assert "checks[0]: program 'pytset' not found on PATH" in message


def test_a_missing_program_or_link_names_the_level_that_set_it(repo: Path, cwd: Path) -> None:
    # The line to fix is where the value was written, not the task that inherited it.
    task = '[[task]]\nid = "a"\nprompt = "p"\n'
    (repo / "swarm.toml").write_text('checks = ["pytset -q"]\n')
    assert error(repo, manifest(cwd, task)).startswith(
        "repo/swarm.toml: checks[0] (inherited by tasks.toml: task \"a\"): program 'pytset'"
    )
    (repo / "swarm.toml").write_text('link = ["node_modules"]\n')
    assert error(repo, manifest(cwd, task)).startswith(
        "repo/swarm.toml: link 'node_modules' (inherited by tasks.toml: task \"a\"): "
    )
    (repo / "swarm.toml").unlink()
    defaults = 'setup = ["npx-typo ci"]\n' + task
    assert error(repo, manifest(cwd, defaults)).startswith(
        'tasks.toml: [defaults]: setup[0] (inherited by tasks.toml: task "a"): program'
    )
    flagged = error(repo, manifest(cwd, task), overrides=Overrides(checks=("tsett-typo",)))
    assert flagged.startswith('--check: checks[0] (inherited by tasks.toml: task "a"): program')
    # a task's own value is named as its own, whatever the levels below it set
    own = task + 'checks = ["mine-typo"]\nlink = []\n'
    assert error(repo, manifest(cwd, own)).startswith(
        "tasks.toml: task \"a\": checks[0]: program 'mine-typo' not found"
    )


def test_a_setup_program_is_looked_for_only_in_the_first_step(repo: Path, cwd: Path) -> None:
    # The first step cannot have been installed by an earlier one; the later steps and every
    # check may be what it installs (a virtualenv's tools, `npm ci`'s binaries).
    later = '[[task]]\nid = "a"\nprompt = "p"\nsetup = ["true", "made-by-setup"]\n'
    checks = 'checks = ["installed-by-setup --all"]\n'
    spec = build_run_spec(repo_root=repo, manifest=manifest(cwd, later + checks))
    assert spec.tasks[0].checks == (("installed-by-setup", "--all"),)
    first = '[[task]]\nid = "a"\nprompt = "p"\nsetup = ["npx-typo ci", "true"]\n'
    assert "setup[0]: program 'npx-typo' not found" in error(repo, manifest(cwd, first))


def test_a_program_is_looked_for_on_the_path_the_task_sets(
    repo: Path, cwd: Path, tmp_path: Path
) -> None:
    tools = tmp_path / "tools"
    tools.mkdir()
    tool = tools / "lint-it"
    tool.write_text("#!/bin/sh\n")
    task = '[[task]]\nid = "a"\nprompt = "p"\nchecks = ["lint-it"]\n'
    assert "program 'lint-it' not found" in error(repo, manifest(cwd, task))
    tool.chmod(0o755)
    on_path = f'env = {{ PATH = "{tools}" }}\n'
    assert build(repo, manifest(cwd, task + on_path)) is not None
    # a PATH entry relative to the worktree cannot be looked in before the worktree exists
    relative = 'env = { PATH = "node_modules/.bin" }\n'
    assert build(repo, manifest(cwd, task.replace("lint-it", "jest") + relative)) is not None


def test_an_absolute_program_must_be_there_and_a_relative_one_is_the_worktrees(
    repo: Path, cwd: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere" / "check.sh"
    task = f'[[task]]\nid = "a"\nprompt = "p"\nchecks = [["{missing}"]]\n'
    assert f"program '{missing}' is missing or not executable" in error(repo, manifest(cwd, task))
    own = '[[task]]\nid = "a"\nprompt = "p"\nchecks = [["./scripts/check"]]\n'
    assert build(repo, manifest(cwd, own)) is not None


def test_a_ray_tasks_programs_are_the_nodes(repo: Path, cwd: Path) -> None:
    task = '[[task]]\nid = "a"\nprompt = "p"\nchecks = ["only-on-the-nodes"]\n'
    spec = build_run_spec(
        repo_root=repo, manifest=manifest(cwd, task), overrides=Overrides(executor="ray")
    )
    assert spec.tasks[0].checks == (("only-on-the-nodes",),)
