"""A remote's login kept out of git's configs and given to each git on its command line."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests import git_http
from tests.conftest import git, make_repo
from worktree_swarm.git.remote_login import login_for

TOKEN = "tok-" + "9c3a" * 8  # a made-up secret


def _git(cwd: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", *args],
        check=False,
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )


def test_a_clone_through_the_login_keeps_the_token_out_of_its_config(tmp_path: Path) -> None:
    make_repo(tmp_path / "work")
    git(tmp_path, "clone", "-q", "--bare", "work", "remote.git")
    with git_http.serving(tmp_path, "user", TOKEN) as server:
        login = login_for(server.replace("://", f"://user:{TOKEN}@") + "/remote.git")
        assert login.url == f"{server}/remote.git"
        done = _git(tmp_path, *login.args, "clone", "-q", login.url, "clone", env={**login.env})
        assert done.returncode == 0, done.stderr
    assert git(tmp_path / "clone", "log", "--format=%s") == "initial"
    config = (tmp_path / "clone" / ".git" / "config").read_text()
    assert TOKEN not in config
    assert f"url = {server}/remote.git" in config


def test_a_url_git_refuses_is_left_as_it_is_for_git_to_refuse(tmp_path: Path) -> None:
    # Not split into a helper's values: git names what is wrong with the URL itself, and a
    # login in a value would reach no shell through the helper either way.
    for url in ("http://us%0Aer:pw@127.0.0.1:9/x", "http://user:pw@[::1/x"):
        login = login_for(url)
        assert (login.url, login.args, dict(login.env)) == (url, (), {})
        refused = _git(tmp_path, "ls-remote", url, env={})
        assert refused.returncode == 128, refused.stderr
        assert "url" in refused.stderr.lower(), refused.stderr


def test_a_url_without_a_login_or_not_over_http_is_kept_as_it_is() -> None:
    for url in ("https://github.com/acme/w.git", "ssh://git@host/acme/w.git", "/srv/w.git"):
        assert login_for(url).url == url
        assert login_for(url).args == ()
