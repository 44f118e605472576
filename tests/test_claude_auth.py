"""A Claude Code sign-in carried into per-task config dirs and kept in step (real files)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from worktree_swarm.agents import claude_auth
from worktree_swarm.agents.claude import ClaudeAdapter
from worktree_swarm.core.errors import BadInputError


def oauth(token: str, expires: int) -> dict[str, object]:
    return {"accessToken": token, "refreshToken": f"r-{token}", "expiresAt": expires}


def write(path: Path, data: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def read(path: Path) -> dict[str, object]:
    return dict(json.loads(path.read_text()))


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return Path(os.environ["HOME"])


def env_of(home: Path) -> dict[str, str]:
    return {"HOME": str(home), "PATH": os.environ["PATH"]}


def test_each_task_gets_a_copy_and_a_refresh_reaches_the_user_and_the_other_tasks(
    home: Path, tmp_path: Path
) -> None:
    user = home / ".claude" / ".credentials.json"
    write(user, {"claudeAiOauth": oauth("old", 1000), "mcpOAuth": {"server": "kept"}})
    write(home / ".claude.json", {"oauthAccount": {"emailAddress": "me@x"}, "projects": {"a": 1}})
    adapter = ClaudeAdapter()
    one, two = tmp_path / "one", tmp_path / "two"
    env_one = adapter.env(base=env_of(home), task_id="one", config_dir=one)
    adapter.env(base=env_of(home), task_id="two", config_dir=two)
    assert env_one["CLAUDE_CONFIG_DIR"] == str(one)
    assert read(one / ".credentials.json") == read(user)
    assert (one / ".credentials.json").stat().st_mode & 0o777 == 0o600
    assert read(one / ".claude.json") == {"oauthAccount": {"emailAddress": "me@x"}}

    # Task one's CLI refreshes its token (it replaces the file, as the CLI does).
    write(one / ".credentials.json", {"claudeAiOauth": oauth("new", 2000)})
    claude_auth.sync_now()
    assert read(user) == {"claudeAiOauth": oauth("new", 2000), "mcpOAuth": {"server": "kept"}}
    assert read(two / ".credentials.json")["claudeAiOauth"] == oauth("new", 2000)

    # The user signs in again outside swarm: the tasks follow; an older copy never wins.
    write(user, {"claudeAiOauth": oauth("relogin", 3000)})
    write(two / ".credentials.json", {"claudeAiOauth": oauth("stale", 500)})
    claude_auth.sync_now()
    for path in (user, one / ".credentials.json", two / ".credentials.json"):
        assert read(path)["claudeAiOauth"] == oauth("relogin", 3000)


def test_a_copy_goes_once_its_agent_ended_its_last_refresh_kept(home: Path, tmp_path: Path) -> None:
    # Three copies of the access and refresh tokens stayed under .git/swarm after the run
    # and `swarm clean`.
    user = home / ".claude" / ".credentials.json"
    write(user, {"claudeAiOauth": oauth("old", 1000)})
    adapter = ClaudeAdapter()
    one, two = tmp_path / "one", tmp_path / "two"
    adapter.env(base=env_of(home), task_id="one", config_dir=one)
    adapter.env(base=env_of(home), task_id="two", config_dir=two)
    write(one / ".credentials.json", {"claudeAiOauth": oauth("refreshed", 2000)})
    claude_auth.release(one)  # its agent ended right after its refresh
    assert not (one / ".credentials.json").exists()
    assert read(user)["claudeAiOauth"] == oauth("refreshed", 2000)
    claude_auth.sync_now()  # the next pass: to the others; the released one not written back
    assert read(two / ".credentials.json")["claudeAiOauth"] == oauth("refreshed", 2000)
    assert not (one / ".credentials.json").exists()
    # An agent a restarted manager adopted: its copy was never tracked here, synced all the
    # same (not a sandboxed one's into your file).
    adopted, boxed = tmp_path / "adopted", tmp_path / "boxed"
    write(adopted / ".credentials.json", {"claudeAiOauth": oauth("adopted", 3000)})
    write(boxed / ".credentials.json", {"claudeAiOauth": oauth("boxed", 4000)})
    claude_auth.release(boxed, confined=True)
    claude_auth.release(adopted)
    assert read(user)["claudeAiOauth"] == oauth("adopted", 3000)
    assert not (adopted / ".credentials.json").exists()
    assert not (boxed / ".credentials.json").exists()
    write(user, {"claudeAiOauth": oauth("refreshed", 2000)})
    adapter.env(base=env_of(home), task_id="one", config_dir=one)  # its next attempt
    assert read(one / ".credentials.json")["claudeAiOauth"] == oauth("refreshed", 2000)
    claude_auth.release(two)
    claude_auth.forget(one)  # what a killed manager left
    assert not (one / ".credentials.json").exists()
    assert not (two / ".credentials.json").exists()


def test_a_sign_out_is_never_undone_by_a_tasks_copy(home: Path, tmp_path: Path) -> None:
    user = home / ".claude" / ".credentials.json"
    soon = int(time.time() * 1000) + 3_600_000
    write(user, {"claudeAiOauth": oauth("mine", soon)})
    ClaudeAdapter().env(base=env_of(home), task_id="t", config_dir=tmp_path / "t")
    user.unlink()  # `claude /logout`, or you removed the file
    write(tmp_path / "t" / ".credentials.json", {"claudeAiOauth": oauth("refreshed", soon + 1)})

    claude_auth.sync_now()

    assert not user.exists()  # not signed back in by a task's (newer) copy


def test_nothing_is_copied_when_the_environment_authenticates(home: Path, tmp_path: Path) -> None:
    write(home / ".claude" / ".credentials.json", {"claudeAiOauth": oauth("t", 1)})
    env = {**env_of(home), "ANTHROPIC_API_KEY": "sk-test"}
    ClaudeAdapter().env(base=env, task_id="t", config_dir=tmp_path / "cfg")
    # Only swarm's own settings (the worktree hook), nothing of the user's.
    assert [path.name for path in (tmp_path / "cfg").iterdir()] == ["settings.json"]
    assert set(json.loads((tmp_path / "cfg" / "settings.json").read_text())) == {"hooks"}


def test_signed_in_and_the_one_line_fix(home: Path) -> None:
    env = env_of(home)
    assert not claude_auth.signed_in(env)
    with pytest.raises(BadInputError) as err:
        claude_auth.require_signed_in([("claude", {}), ("command", {})], env)
    assert str(err.value) == claude_auth.FIX
    claude_auth.require_signed_in([("codex", {})], env)  # only claude tasks need it
    assert claude_auth.signed_in({**env, "CLAUDE_CODE_OAUTH_TOKEN": "tok"})
    write(home / ".claude" / "settings.json", {"apiKeyHelper": "~/bin/key"})
    assert claude_auth.signed_in(env)
    (home / ".claude" / "settings.json").unlink()
    write(home / ".claude" / ".credentials.json", {"claudeAiOauth": oauth("t", 1)})
    assert claude_auth.signed_in(env)
    # A CLAUDE_CONFIG_DIR of the user's own is where their sign-in lives.
    other = home / "elsewhere"
    assert not claude_auth.signed_in({**env, "CLAUDE_CONFIG_DIR": str(other)})
    write(other / ".credentials.json", {"claudeAiOauth": oauth("t", 1)})
    assert claude_auth.signed_in({**env, "CLAUDE_CONFIG_DIR": str(other)})


def test_a_sign_in_no_real_token_has_never_wins(home: Path, tmp_path: Path) -> None:
    user = home / ".claude" / ".credentials.json"
    write(user, {"claudeAiOauth": oauth("mine", 1000)})
    adapter = ClaudeAdapter()
    one, two = tmp_path / "one", tmp_path / "two"
    adapter.env(base=env_of(home), task_id="one", config_dir=one)
    adapter.env(base=env_of(home), task_id="two", config_dir=two)
    # An agent writes its copy a sign-in of its own that "expires" in a century.
    forever = int((time.time() + 100 * 365 * 86400) * 1000)
    write(one / ".credentials.json", {"claudeAiOauth": oauth("attacker", forever)})
    claude_auth.sync_now()
    assert read(user)["claudeAiOauth"] == oauth("mine", 1000)
    assert read(two / ".credentials.json")["claudeAiOauth"] == oauth("mine", 1000)


def test_a_sandboxed_tasks_refresh_reaches_the_other_tasks_but_never_your_file(
    home: Path, tmp_path: Path
) -> None:
    user = home / ".claude" / ".credentials.json"
    write(user, {"claudeAiOauth": oauth("mine", 1000)})
    adapter = ClaudeAdapter()
    boxed, other = tmp_path / "boxed", tmp_path / "other"
    adapter.env(base=env_of(home), task_id="boxed", config_dir=boxed)
    claude_auth.confine(boxed)
    adapter.env(base=env_of(home), task_id="other", config_dir=other)
    soon = int((time.time() + 3600) * 1000)
    write(boxed / ".credentials.json", {"claudeAiOauth": oauth("refreshed", soon)})
    claude_auth.sync_now()
    assert read(other / ".credentials.json")["claudeAiOauth"] == oauth("refreshed", soon)
    assert read(user)["claudeAiOauth"] == oauth("mine", 1000)  # the box reaches not your home
