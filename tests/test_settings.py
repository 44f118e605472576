"""The settings table is the only place a setting is defined.

Every field of Task and RunSettings that users can set is one entry; from it alone the key is
accepted in a [[task]] / [defaults] / swarm.toml / [tool.swarm], set by its `swarm run` flag,
stored with the run and read back, and listed in docs/manifest.md.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from worktree_swarm.cli import options, run_commands
from worktree_swarm.config import doc_table, resolved, tomlwrite
from worktree_swarm.config.manifest import (
    DEFAULTS_KEYS,
    RAY_FLAGS,
    TASK_KEYS,
    Overrides,
    build_run_spec,
)
from worktree_swarm.config.settings import FLAGGED, SETTINGS
from worktree_swarm.core.run_settings import RunSettings, RunSpec
from worktree_swarm.core.settings import Kind, Scope, Setting, settings_of
from worktree_swarm.core.task import Task

DOCS = Path(__file__).resolve().parent.parent / "docs" / "manifest.md"
AGENT = [sys.executable, "-c", "pass"]
SETTABLE = [e for e in SETTINGS if e.scope is not Scope.TASK_ONLY]
RUN = [e for e in SETTINGS if e.scope is Scope.RUN]


def sample(entry: Setting) -> object:
    """A valid value of *entry* as TOML holds it, other than its default."""
    if entry.kind is Kind.INT:
        low = entry.minimum or 0
        return low + 1 if entry.maximum is not None else low + 2
    if entry.kind is Kind.CHOICE:
        assert entry.choices is not None
        return next(c.value for c in reversed(list(entry.choices)) if c != entry.default)
    values: dict[Kind, object] = {
        Kind.TEXT: "some text",
        Kind.ADDRESS: "head:6379",
        Kind.REMOTE: "a-name",
        Kind.IDS: ["a", "b"],
        Kind.PATH: "elsewhere/wt",
        Kind.PATHS: ["/opt/cache"],
        Kind.NUMBER: 2.5,
        Kind.SHARE: 0.5,
        Kind.DURATION: "7m",
        Kind.SIZE: "3M",
        Kind.BOOL: True,
        Kind.AUTHOR: "Ada <ada@example.com>",
        Kind.GLOBS: ["src/**"],
        Kind.LOCAL_GLOBS: [".env"],
        Kind.DIRS: ["node_modules"],
        Kind.COMMANDS: ["git --version"],  # a program every machine here has
        Kind.ENV: {"A": "1"},
        Kind.AGENT: AGENT,
        Kind.AGENT_NAME: "scripted",
        Kind.AGENT_NAMES: ["scripted"],
    }
    return values[entry.kind]


def expected(entry: Setting, repo: Path) -> object:
    """What *sample* reads as, as the Task or RunSpec holds it."""
    value = sample(entry)
    if entry.kind is Kind.PATH:
        return Path(os.path.normpath(repo.absolute() / str(value)))
    if entry.kind is Kind.CHOICE:
        assert entry.choices is not None
        return entry.choices(value)
    converted: dict[Kind, object] = {
        Kind.DURATION: 420.0,
        Kind.SIZE: 3 * 2**20,
        Kind.COMMANDS: (("git", "--version"),),
        Kind.ENV: (("A", "1"),),
        Kind.AGENT: tuple(AGENT),
    }
    if entry.kind in converted:
        return converted[entry.kind]
    return tuple(value) if isinstance(value, list) else value


def read_back(spec: RunSpec, entry: Setting) -> object:
    holder = spec if entry.scope is Scope.RUN else spec.tasks[0]
    return holder.agent_argv if entry.kind is Kind.AGENT else getattr(holder, entry.key)


def test_every_field_users_set_is_one_entry_of_the_table() -> None:
    run_fields = {f.name for f in dataclasses.fields(RunSettings)}
    assert {e.key for e in settings_of(RunSettings)} == run_fields
    assert {e.key for e in RUN} == run_fields
    # A task's resolved argv is the only Task field no key sets (`agent` does).
    task_fields = {f.name for f in dataclasses.fields(Task)}
    assert task_fields - {e.key for e in settings_of(Task)} == {"agent_argv"}
    assert all(e.scope is not Scope.RUN for e in settings_of(Task))
    assert len({e.key for e in SETTINGS}) == len(SETTINGS)
    assert {e.key for e in SETTINGS if e.scope is not Scope.RUN} == TASK_KEYS
    assert {e.key for e in SETTABLE} == DEFAULTS_KEYS


@pytest.mark.parametrize(
    ("entry", "source"),
    [
        pytest.param(entry, source, id=f"{entry.key}-{source}")
        for entry in SETTABLE
        for source in ("defaults", "swarm.toml", "pyproject", "task")
        # Run-wide keys in a [[task]] are refused (test_manifest).
        if not (source == "task" and entry.scope is Scope.RUN)
    ],
)
def test_every_setting_is_read_from_every_file(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entry: Setting, source: str
) -> None:
    monkeypatch.chdir(tmp_path)
    if entry.kind is Kind.DIRS:
        (repo / "node_modules").mkdir()  # a `link` to a directory that is not there is refused
    line = f"{entry.key} = {tomlwrite.value(sample(entry))}\n"
    agent = "" if entry.key == "agent" else f"agent = {tomlwrite.value(AGENT)}\n"
    task = '[[task]]\nid = "a"\nprompt = "p"\n'
    if source == "defaults":
        text = f"[defaults]\n{agent}{line}{task}"
    elif source == "task":
        text = f"[defaults]\n{agent}{task}{line}"
    else:
        text = f"[defaults]\n{agent}{task}"
        if source == "swarm.toml":
            (repo / "swarm.toml").write_text(line)
        else:
            (repo / "pyproject.toml").write_text(f"[tool.swarm]\n{line}")
    (tmp_path / "tasks.toml").write_text(text)
    spec = build_run_spec(repo_root=repo, manifest=Path("tasks.toml"))
    assert read_back(spec, entry) == expected(entry, repo)
    assert read_back(spec, entry) != entry.default


def test_a_manifest_without_keys_gets_every_default(repo: Path, tmp_path: Path) -> None:
    (tmp_path / "tasks.toml").write_text('[[task]]\nid = "a"\nprompt = "p"\n')
    spec = build_run_spec(
        repo_root=repo, manifest=tmp_path / "tasks.toml", overrides=Overrides(agent="scripted")
    )
    for entry in SETTABLE:
        if entry.default_doc or entry.key == "agent":
            continue  # a default that depends on the repository or the user; test_manifest
        holder = spec if entry.scope is Scope.RUN else spec.tasks[0]
        assert getattr(holder, entry.key) == entry.default, entry.key


def cli_args(entry: Setting) -> list[str]:
    assert entry.flag is not None
    value = sample(entry)
    if entry.kind is Kind.BOOL:
        return [entry.flag.name]
    if entry.kind is Kind.AGENT:
        return [entry.flag.name, " ".join(AGENT)]
    items = value if isinstance(value, list) else [value]
    return [arg for item in items for arg in (entry.flag.name, str(item))]


@pytest.mark.parametrize("entry", FLAGGED, ids=lambda e: e.key)
def test_every_flag_is_a_swarm_run_option_that_sets_its_setting(repo: Path, entry: Setting) -> None:
    args = [*cli_args(entry), "-t", "a=p"]
    if entry.key != "agent":
        args += ["--agent", "scripted"]
    if entry.key in RAY_FLAGS:  # refused for a local run, where it would do nothing
        args += ["--executor", "ray"]
    with run_commands.run.make_context("run", args) as ctx:
        params = ctx.params
    spec = build_run_spec(
        repo_root=repo, manifest=None, inline=params["inline"], overrides=options.overrides(params)
    )
    assert read_back(spec, entry) == expected(entry, repo)


def test_options_not_given_set_nothing() -> None:
    with run_commands.run.make_context("run", ["-t", "a=p"]) as ctx:
        assert options.overrides(ctx.params).given == {}


def test_the_options_named_after_settings_are_the_flagged_ones() -> None:
    names = {p.name for p in run_commands.run.params}
    assert names & {e.key for e in SETTINGS} == {e.key for e in FLAGGED}
    for entry in FLAGGED:
        assert entry.flag is not None
        option = next(p for p in run_commands.run.params if p.name == entry.key)
        assert entry.flag.name in option.opts
        assert option.help == entry.flag.help


def test_negatable_flag_turns_a_file_setting_off(repo: Path) -> None:
    (repo / "swarm.toml").write_text("sandbox = true\n")
    with run_commands.run.make_context("run", ["--no-sandbox", "-t", "a=p"]) as ctx:
        overrides = options.overrides(ctx.params)
    assert overrides.given == {"sandbox": False}
    spec = build_run_spec(
        repo_root=repo,
        manifest=None,
        inline=["a=p"],
        overrides=Overrides(agent="scripted", **overrides.given),
    )
    assert spec.sandbox is False


def test_overrides_take_only_settings_that_have_a_flag() -> None:
    with pytest.raises(TypeError, match="no command-line flag sets kill_grace"):
        Overrides(kill_grace="5s")


@pytest.mark.parametrize("entry", RUN, ids=lambda e: e.key)
def test_every_run_setting_is_stored_and_read_back(repo: Path, entry: Setting) -> None:
    value = expected(entry, repo)
    settings = RunSettings(**{entry.key: value})
    assert RunSettings.from_json(settings.to_json()) == settings
    # A run stored before the setting existed gets its default.
    stored = json.loads(settings.to_json())
    del stored[entry.key]
    assert RunSettings.from_json(json.dumps(stored)) == RunSettings()


def test_docs_tables_are_the_generated_ones() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert doc_table.update(text) == text, (
        "run python -m worktree_swarm.config.doc_table --write docs/manifest.md"
    )
    for entry in SETTINGS:
        assert f"\n| `{entry.key}` | " in text


def test_doc_table_check_fails_on_a_drifted_file(tmp_path: Path) -> None:
    drifted = tmp_path / "manifest.md"
    drifted.write_text(
        DOCS.read_text(encoding="utf-8").replace("| `jobs` | integer >= 1 | 4 |", "| `jobs` | 9 |")
    )
    command = [sys.executable, "-m", "worktree_swarm.config.doc_table", "--check", str(drifted)]
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    assert out.returncode == 1
    assert out.stderr.startswith(f"{drifted}: the key tables differ from the settings; run ")
    fixed = subprocess.run([*command[:-2], "--write", str(drifted)], check=False)
    assert fixed.returncode == 0
    assert drifted.read_text(encoding="utf-8") == DOCS.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--timeout", "soon"),
        ("--idle-timeout", "banana"),
        ("--idle-timeout", "-1s"),
        ("--idle-timeout", "0"),
    ],
)
def test_a_bad_flag_value_is_one_line_and_exit_2(repo: Path, flag: str, value: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "worktree_swarm.cli", "run", flag, value, "-t", "a=p"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 2
    assert out.stderr == (
        f"swarm: {flag}: bad duration {value!r} (use seconds > 0 or e.g. '90s', '45m', '1h30m')\n"
    )
    assert not (repo / ".git" / "swarm").exists()  # no state store, no worktree
    assert not (repo.parent / "repo.swarm").exists()


@pytest.mark.parametrize("flag", ["--ray-address", "--remote"])
def test_an_empty_ray_flag_is_bad_input_not_the_default(repo: Path, flag: str) -> None:
    # `--ray-address "$HEAD"` with HEAD unset ran on RAY_ADDRESS's cluster, or this machine's.
    out = subprocess.run(
        [sys.executable, "-m", "worktree_swarm.cli", "run", "--executor", "ray", flag, "",
         "-t", "a=p"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == f"swarm: {flag}: must not be empty\n"
    assert not (repo / ".git" / "swarm").exists()


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (("--sandbox", "--no-sandbox"), "--sandbox and --no-sandbox exclude each other"),
        (("--no-sparse", "--sparse"), "--no-sparse and --sparse exclude each other"),
        (("-j", "2", "-j", "3"), "--jobs given 2 times (2, 3); give it once"),
        (("--agent", "scripted", "--agent", "codex"), "--agent given 2 times"),
    ],
)
def test_a_setting_given_twice_on_the_command_line_is_bad_input(
    repo: Path, flags: tuple[str, ...], said: str
) -> None:
    # Decided by whichever came last, silently: `--sandbox --no-sandbox` ran unsandboxed.
    out = subprocess.run(
        [sys.executable, "-m", "worktree_swarm.cli", "run", *flags, "-t", "a=p"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.startswith(f"swarm: {said}"), out.stderr
    assert out.stderr.count("\n") == 1
    assert not (repo / ".git" / "swarm").exists()


def test_doc_table_prints_the_blocks_and_refuses_bad_usage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert doc_table.main([]) == 0
    printed = capsys.readouterr().out
    assert "| `max_disk` | size | none | `--max-disk` |" in printed
    assert doc_table.main(["--fix", "docs/manifest.md"]) == 2
    assert capsys.readouterr().err.startswith("usage: python -m worktree_swarm.config.doc_table")
    with pytest.raises(ValueError, match="unknown generated block 'nope'"):
        doc_table.update("<!-- generated: nope -->\n<!-- end generated -->")


def test_the_resolved_manifest_reads_back_as_the_same_run(repo: Path, tmp_path: Path) -> None:
    # What `swarm run --dry-run` prints is a manifest: read back, every setting is the same,
    # but environment values, which it never shows.
    (repo / "node_modules").mkdir()
    lines = [f"{e.key} = {tomlwrite.value(sample(e))}" for e in SETTABLE]
    task = [f"{e.key} = {tomlwrite.value(sample(e))}" for e in SETTINGS if e.key == "title"]
    text = "[defaults]\n" + "\n".join(lines) + '\n[[task]]\nid = "a"\nprompt = "p\\nq"\n'
    text += "\n".join(task) + '\n[[task]]\nid = "b"\nprompt = "p"\ndepends_on = ["a"]\n'
    (tmp_path / "tasks.toml").write_text(text)
    spec = build_run_spec(repo_root=repo, manifest=tmp_path / "tasks.toml")
    shown = resolved.as_manifest(
        spec, worktrees={t.id: tmp_path / t.id for t in spec.tasks}, header="resolved"
    )
    assert "A = " in shown
    assert '"1"' not in shown  # the env value
    (tmp_path / "again.toml").write_text(shown)
    again = build_run_spec(repo_root=repo, manifest=tmp_path / "again.toml")
    hidden = (("A", resolved.HIDDEN),)
    assert again == dataclasses.replace(
        spec, tasks=tuple(dataclasses.replace(t, env=hidden) for t in spec.tasks)
    )
    assert resolved.as_manifest(again, worktrees={t.id: tmp_path / t.id for t in spec.tasks},
                                header="resolved") == shown  # fmt: skip
