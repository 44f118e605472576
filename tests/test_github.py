"""The GitHub client against a real HTTP server on 127.0.0.1: headers, limits, tokens, errors."""

from __future__ import annotations

import base64
import contextlib
import errno
import http.server
import itertools
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import git
from tests.github_server import DROP, NAME, OWNER, TOKEN, FakeGitHub, Scripted, serve
from tests.localhost import forwarding_proxy, listening
from worktree_swarm.core.errors import BadInputError, ExitCode
from worktree_swarm.git.remotes import strip_userinfo
from worktree_swarm.git.repo import open_repo
from worktree_swarm.github import access, errors
from worktree_swarm.github import client as github
from worktree_swarm.github.proxy import proxy_for
from worktree_swarm.infra.redact import REDACTED


@pytest.fixture
def fake_github() -> Iterator[FakeGitHub]:
    with serve() as fake:
        yield fake


class Waits(list[tuple[float, str]]):
    """The rate-limit waits a client announced."""


def client(fake: FakeGitHub, waits: Waits | None = None, **kwargs: object) -> github.Client:
    sink = Waits() if waits is None else waits
    return github.Client(
        api_url=fake.url,
        token=access.Token(TOKEN),
        repo=access.RepoSlug(owner=OWNER, name=NAME),
        on_wait=lambda s, why: sink.append((s, why)),
        **kwargs,  # type: ignore[arg-type]
    )


def test_requests_carry_token_version_and_json(fake_github: FakeGitHub) -> None:
    c = client(fake_github)
    created = c.create_pull(title="T", head="swarm/a", base="main", body="B", draft=True)
    assert created["number"] == 1
    assert c.find_pull("swarm/a") == created
    assert c.find_pull("swarm/other") is None
    post = fake_github.calls("POST")[0]
    assert post.headers["authorization"] == f"Bearer {TOKEN}"
    assert post.headers["accept"] == "application/vnd.github+json"
    assert post.headers["x-github-api-version"] == "2022-11-28"
    assert post.body == {
        "title": "T",
        "head": "swarm/a",
        "base": "main",
        "body": "B",
        "draft": True,
    }
    get = fake_github.calls("GET")[0]
    assert get.query == {"head": [f"{OWNER}:swarm/a"], "state": ["open"], "per_page": ["10"]}


def test_token_never_prints() -> None:
    token = access.Token(TOKEN)
    c = github.Client(
        api_url="http://127.0.0.1:9", token=token, repo=access.RepoSlug(owner="o", name="n")
    )
    for text in (str(token), repr(token), f"{token}", repr(c)):
        assert TOKEN not in text
    assert token.redact(f"x {TOKEN} y") == "x [REDACTED] y"


def test_secondary_limit_with_retry_after_is_waited_out(fake_github: FakeGitHub) -> None:
    fake_github.fail_next("POST", "/pulls$", 403, {"retry-after": "1"})
    waits = Waits()
    c = client(fake_github, waits)
    created = c.create_pull(title="T", head="swarm/a", base="main", body="")
    assert created["number"] == 1
    first, second = fake_github.calls("POST")
    assert second.at - first.at >= 1.0
    assert waits == [(1.0, "GitHub rate limit")]
    assert len(fake_github.pulls) == 1


def test_429_is_a_rate_limit_too(fake_github: FakeGitHub) -> None:
    fake_github.fail_next("GET", "/issues/", 429, {"retry-after": "0"}, message="slow down")
    number = fake_github.add_issue("hello")
    assert client(fake_github).get_issue(number) == fake_github.issues[number]
    assert len(fake_github.calls("GET")) == 2


@pytest.mark.slow  # long: runs in `scripts/check --slow` (CI runs both)
def test_secondary_limit_without_retry_after_backs_off_exponentially(
    fake_github: FakeGitHub,
) -> None:
    for _ in range(2):
        fake_github.fail_next("PATCH", "/pulls/", 403)
    waits = Waits()
    c = client(fake_github, waits, secondary_wait=0.1)
    c.create_pull(title="T", head="swarm/a", base="main", body="")
    assert c.update_pull(1, title="T2", body="B2")["title"] == "T2"
    assert [w for w, _ in waits] == [0.1, 0.2]


def test_exhausted_primary_limit_waits_for_reset(fake_github: FakeGitHub) -> None:
    reset = int(time.time()) + 1
    fake_github.fail_next(
        "GET",
        "/issues/",
        403,
        {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)},
        message="API rate limit exceeded for user.",
    )
    number = fake_github.add_issue("hello")
    assert client(fake_github).get_issue(number) is not None
    assert fake_github.calls("GET")[-1].wall >= reset


def test_wait_longer_than_allowed_fails_with_when_to_retry(fake_github: FakeGitHub) -> None:
    fake_github.fail_next("POST", "/pulls$", 403, {"retry-after": "3600"})
    waits = Waits()
    c = client(fake_github, waits, max_wait=5)
    with pytest.raises(errors.RateLimitError) as info:
        c.create_pull(title="T", head="swarm/a", base="main", body="")
    assert "asks to wait 3600s, longer than the 5s swarm waits" in str(info.value)
    assert "try again after" in str(info.value)
    assert info.value.exit_code == ExitCode.TASK_FAILED
    assert waits == []


def test_a_quota_that_resets_later_than_swarm_waits_fails_at_once_saying_when(
    fake_github: FakeGitHub,
) -> None:
    # A success that spends the last request of the hour: the next one would be refused.
    reset = int(time.time()) + 3600
    headers = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)}
    fake_github.scripted.append(Scripted("GET", "/issues/", 200, headers, {"number": 1}))
    waits = Waits()
    c = client(fake_github, waits, max_wait=5)
    c.get_issue(1)
    with pytest.raises(errors.RateLimitError) as info:
        c.get_issue(1)
    assert str(info.value).startswith(
        "GitHub rate limit (quota used up: x-ratelimit-remaining 0): GET /repos/acme/widgets/"
    )
    assert "longer than the 5s swarm waits" in str(info.value)
    assert info.value.status == 0  # no refusal of GitHub's: swarm did not send it
    assert waits == []
    assert len(fake_github.calls("GET")) == 1  # not sent before the quota resets


def test_a_rate_limit_not_waited_out_names_what_github_said_and_when_it_resets(
    fake_github: FakeGitHub,
) -> None:
    # It named no status, and the next request, not sent until the reset, said 403.
    reset = int(time.time()) + 3600
    headers = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)}
    fake_github.fail_next("POST", "/pulls$", 429, headers, message="API rate limit exceeded.")
    c = client(fake_github, max_wait=5)
    said = r"GitHub rate limit \(429: API rate limit exceeded\.\): "
    later = r"asks to wait \d+s, longer than the 5s swarm waits; try again after \d\d:\d\d:\d\d"
    with pytest.raises(errors.RateLimitError) as info:
        c.create_pull(title="T", head="swarm/a", base="main", body="")
    assert re.fullmatch(f"{said}POST /repos/acme/widgets/pulls {later}", str(info.value))
    assert info.value.status == 429
    with pytest.raises(errors.RateLimitError) as info:
        c.get_issue(1)
    assert re.fullmatch(f"{said}GET /repos/acme/widgets/issues/1 {later}", str(info.value))
    assert info.value.status == 429
    assert fake_github.calls("GET") == []  # not sent before the reset


@pytest.mark.parametrize("retry_after", ["inf", "1e12", "1e300", "86401"])
def test_an_absurd_retry_after_is_one_clear_error(
    fake_github: FakeGitHub, retry_after: str
) -> None:
    # `1e300` was a wait of 300 digits; `inf` "infs", to try again in a century.
    fake_github.fail_next("POST", "/pulls$", 403, {"retry-after": retry_after})
    with pytest.raises(errors.RateLimitError) as info:
        client(fake_github, max_wait=5).create_pull(title="T", head="swarm/a", base="main", body="")
    assert str(info.value) == (
        "GitHub rate limit (403: You have exceeded a secondary rate limit.): POST"
        " /repos/acme/widgets/pulls asks to wait more than a day, longer than the 5s swarm"
        " waits; try again later"
    )


def test_a_retry_after_that_is_no_number_is_backed_off_like_none(fake_github: FakeGitHub) -> None:
    # `nan` was waited as "nan s" four times, then an internal error.
    fake_github.fail_next("POST", "/pulls$", 403, {"retry-after": "nan"})
    waits = Waits()
    c = client(fake_github, waits, secondary_wait=0.01)
    c.create_pull(title="T", head="swarm/a", base="main", body="")
    assert [w[0] for w in waits] == [0.01], waits  # the first back-off a limit naming no wait gets


def test_a_remote_urls_password_holding_an_at_sign_is_never_shown() -> None:
    url = "https://user:Pa@ss4Word9xyzQ@github.com/acme/widgets.git"
    assert strip_userinfo(url) == "https://github.com/acme/widgets.git"


def test_an_error_page_that_echoes_the_token_shows_none_of_it(fake_github: FakeGitHub) -> None:
    # The token where the quote of the page is cut: half of it would be shown.
    page = f"<html><pre>{'x' * 160} Authorization: Bearer {TOKEN}</pre></html>".encode()
    fake_github.fail_next("POST", "/pulls$", 502, raw=page)
    with pytest.raises(errors.GitHubError) as info:
        client(fake_github).create_pull(title="T", head="swarm/a", base="main", body="")
    assert "Authorization: Bearer [REDAC" in str(info.value)  # redacted, then cut
    assert "ghp_" not in str(info.value)


def test_writes_are_at_least_a_second_apart(fake_github: FakeGitHub) -> None:
    c = client(fake_github)
    c.create_pull(title="T", head="swarm/a", base="main", body="")
    c.update_pull(1, title="T2", body="")
    c.update_pull(1, title="T3", body="")
    times = [r.at for r in fake_github.requests]
    assert all(b - a >= 1.0 for a, b in itertools.pairwise(times))


def test_plain_403_is_an_error_not_a_retry(fake_github: FakeGitHub) -> None:
    fake_github.fail_next("POST", "/pulls$", 403, message="Resource not accessible by token")
    with pytest.raises(errors.GitHubError) as info:
        client(fake_github).create_pull(title="T", head="h", base="main", body="")
    assert str(info.value) == (
        "GitHub POST /repos/acme/widgets/pulls failed with 403: Resource not accessible by"
        " token; the token lacks permission for this repository"
    )
    assert len(fake_github.calls("POST")) == 1


def test_error_messages_never_carry_the_token(fake_github: FakeGitHub) -> None:
    fake_github.fail_next("POST", "/pulls$", 422, message=f"token {TOKEN} is odd")
    with pytest.raises(errors.GitHubError) as info:
        client(fake_github).create_pull(title="T", head="h", base="main", body="")
    assert TOKEN not in str(info.value)
    assert "[REDACTED]" in str(info.value)


def test_wrong_token_says_what_to_do(fake_github: FakeGitHub) -> None:
    c = github.Client(
        api_url=fake_github.url,
        token=access.Token("wrong"),
        repo=access.RepoSlug(owner=OWNER, name=NAME),
    )
    with pytest.raises(errors.GitHubError, match="check GITHUB_TOKEN / GH_TOKEN") as info:
        c.find_pull("swarm/a")
    assert info.value.status == 401


def test_unreachable_api_names_the_url() -> None:
    c = github.Client(
        api_url="http://127.0.0.1:9",
        token=access.Token(TOKEN),
        repo=access.RepoSlug(owner="o", name="n"),
    )
    with pytest.raises(
        errors.GitHubError, match=r"cannot reach the GitHub API at http://127\.0\.0\.1:9"
    ):
        c.find_pull("x")


@pytest.fixture
def silent_api() -> Iterator[str]:
    """An address that takes connections (into its backlog) and never answers."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_a_request_not_answered_is_named_and_a_write_may_have_been_done(silent_api: str) -> None:
    # Both said "cannot reach the GitHub API at URL (timed out); check the network".
    c = github.Client(
        api_url=silent_api,
        token=access.Token(TOKEN),
        repo=access.RepoSlug(owner="o", name="n"),
        timeout=0.2,
        deadline=60,
    )
    with pytest.raises(errors.UnreachableError) as info:
        c.find_pull("x")
    assert str(info.value) == (
        f"the GitHub API at {silent_api} did not answer GET /repos/o/n/pulls within 0.2s;"
        " try again later"
    )
    with pytest.raises(errors.UnreachableError) as info:
        c.create_pull(title="T", head="swarm/a", base="main", body="B")
    assert str(info.value) == (
        f"the GitHub API at {silent_api} did not answer POST /repos/o/n/pulls within 0.2s;"
        " it may have been carried out all the same: run `swarm pr` again, which finds a pull"
        " request by its branch and opens none twice"
    )


def test_a_connection_not_made_in_time_is_out_of_reach_not_a_request_unanswered() -> None:
    # A server whose queue of connections is full takes no more: no request reached it, so
    # none "may have been carried out".
    with socket.create_server(("127.0.0.1", 0), backlog=0) as full:
        waiting = [socket.create_connection(full.getsockname(), timeout=5)]  # the queue's one
        url = f"http://127.0.0.1:{full.getsockname()[1]}"
        c = github.Client(
            api_url=url,
            token=access.Token(TOKEN),
            repo=access.RepoSlug(owner="o", name="n"),
            timeout=0.2,
            deadline=60,
        )
        c._answered = True  # an earlier request was answered
        try:
            with pytest.raises(errors.UnreachableError) as info:
                c.create_pull(title="T", head="swarm/a", base="main", body="B")
        finally:
            for conn in waiting:
                conn.close()
    assert str(info.value).startswith(f"cannot reach the GitHub API at {url} (timed out)")


@pytest.fixture
def trickling_api() -> Iterator[str]:
    """An HTTP server that answers every request one header byte at a time, for ever."""
    stop = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))

    def trickle(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            with contextlib.suppress(OSError):
                while not stop.wait(0.05):
                    conn.sendall(b"X")  # a header line that never ends

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                threading.Thread(target=trickle, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    listener.close()


def test_a_request_has_a_deadline_however_the_bytes_trickle(trickling_api: str) -> None:
    # Each byte comes well within the wait for bytes; the request as a whole does not.
    c = github.Client(
        api_url=trickling_api,
        token=access.Token(TOKEN),
        repo=access.RepoSlug(owner="o", name="n"),
        timeout=30,
        deadline=0.5,
    )
    with pytest.raises(errors.GitHubError, match=r"did not answer GET /repos/o/n/pulls.* within"):
        c.find_pull("x")


def test_issue_listing_follows_pages_on_the_same_host(fake_github: FakeGitHub) -> None:
    for i in range(5):
        fake_github.add_issue(f"bug {i}", labels=("bug",))
    fake_github.add_issue("other", labels=("docs",))
    fake_github.page_size = 2
    titles = [i["title"] for i in client(fake_github).list_issues(labels="bug")]
    assert titles == [f"bug {i}" for i in range(5)]
    assert len(fake_github.calls("GET", "/issues$")) == 3


def test_a_next_page_on_another_host_is_an_error_not_a_short_list(
    fake_github: FakeGitHub,
) -> None:
    fake_github.add_issue("one", labels=("bug",))
    with serve() as elsewhere:
        there = f"{elsewhere.url}/repos/{OWNER}/{NAME}/issues?labels=bug&page=2"
        fake_github.scripted.append(
            Scripted("GET", "/issues$", 200, {"link": f'<{there}>; rel="next"'}, [])
        )
        with pytest.raises(errors.GitHubError) as info:
            list(client(fake_github).list_issues(labels="bug"))
        assert elsewhere.requests == []
    assert str(info.value) == (
        f"GitHub's next page is on {elsewhere.url}, not on the API's {fake_github.url};"
        " not followed (the token goes to the API host only): set --api-url to the address"
        " GitHub uses"
    )


@pytest.mark.parametrize(
    ("link", "error"),
    [
        # urlsplit's ValueError ("Invalid IPv6 URL") was an internal error.
        (
            "http://u@evil.example\x1b[2J/x",
            "GitHub's link to the next page is no URL; not followed",
        ),
        # Its user and password were shown, the token among them.
        (
            f"http://{TOKEN}:pw@evil.example:8443/x",
            "GitHub's next page is on http://evil.example:8443,",
        ),
    ],
)
def test_a_next_page_link_is_shown_without_credentials_or_not_at_all(
    fake_github: FakeGitHub, link: str, error: str
) -> None:
    fake_github.add_issue("one", labels=("bug",))
    headers = {"link": f'<{link}>; rel="next"'}
    fake_github.scripted.append(Scripted("GET", "/issues$", 200, headers, []))
    with pytest.raises(errors.GitHubError) as info:
        list(client(fake_github).list_issues(labels="bug"))
    assert str(info.value).startswith(error)
    assert TOKEN not in str(info.value)
    assert "pw" not in str(info.value)
    assert "\x1b" not in str(info.value)


def test_a_reply_nested_deeper_than_python_goes_is_no_json_not_a_crash(
    fake_github: FakeGitHub,
) -> None:
    fake_github.scripted.append(Scripted("GET", "/pulls$", 200, {}, b"[" * 200_000))
    with pytest.raises(errors.GitHubError, match="list of pull requests of swarm/a is not a list"):
        client(fake_github).find_pull("swarm/a")


def test_token_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert access.resolve_token({"GITHUB_TOKEN": "a1", "GH_TOKEN": "b2"}).reveal() == "a1"
    assert access.resolve_token({"GH_TOKEN": " b2\n"}).reveal() == "b2"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    gh = bindir / "gh"
    gh.write_text(
        f"#!{sys.executable}\nimport sys\n"
        "assert sys.argv[1:] == ['auth', 'token'], sys.argv\nprint('gho_fromgh')\n"
    )
    gh.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    assert access.resolve_token({}).reveal() == "gho_fromgh"
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(BadInputError, match="no GitHub token: set GITHUB_TOKEN"):
        access.resolve_token({})


@pytest.mark.parametrize(
    ("api_url", "asked"),
    [
        (None, ["auth", "token"]),
        ("https://ghe.example/api/v3", ["auth", "token", "--hostname", "ghe.example"]),
    ],
)
def test_gh_is_asked_for_the_token_of_the_host_the_api_is_on(
    repo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    api_url: str | None,
    asked: list[str],
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    gh = bindir / "gh"
    gh.write_text(
        f"#!{sys.executable}\nimport sys\n"
        f"print('gho_' + ('right' if sys.argv[1:] == {asked!r} else 'wrong'))\n"
    )
    gh.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    env = {"PATH": os.environ["PATH"]}
    made = github.connect(open_repo(repo), github_repo="acme/widgets", api_url=api_url, env=env)
    assert made.token.reveal() == "gho_right"


def test_malformed_token_is_refused_without_echoing_it() -> None:
    with pytest.raises(BadInputError) as info:
        access.resolve_token({"GITHUB_TOKEN": "abc\ndef"})
    assert "abc" not in str(info.value)
    assert info.value.exit_code == ExitCode.BAD_INPUT


@pytest.mark.parametrize(
    ("url", "slug"),
    [
        ("https://github.com/acme/widgets.git", "acme/widgets"),
        ("https://github.com/acme/widgets", "acme/widgets"),
        ("https://x-access-token:s3cret@ghe.example/acme/my.repo.git", "acme/my.repo"),
        ("git@github.com:acme/widgets.git", "acme/widgets"),
        ("ssh://git@github.com:22/acme/widgets.git", "acme/widgets"),
        ("https://ghe.example:8443/acme/widgets", "acme/widgets"),
    ],
)
def test_owner_and_name_come_from_the_remote(repo: Path, url: str, slug: str) -> None:
    git(repo, "remote", "add", "origin", url)
    assert str(access.slug_from_remote(open_repo(repo), "origin")) == slug


@pytest.mark.parametrize(
    "url",
    [
        "https://ghe.example:9/notaslug",
        "ssh://git@host:2222/alone.git",
        "git@host:alone",
        # `.` and `..` are no owner or name: requests would go to `/repos/acme/../...`.
        "https://github.com/acme/..",
        "https://github.com/acme/..git",
        "https://github.com/acme/...git",
        "git@host:../x.git",
        "ssh://git@host/./x.git",
    ],
)
def test_a_remote_naming_no_owner_and_name_is_refused_not_guessed(repo: Path, url: str) -> None:
    git(repo, "remote", "add", "origin", url)
    with pytest.raises(BadInputError, match="cannot tell the GitHub repository from remote"):
        access.slug_from_remote(open_repo(repo), "origin")


OWNER_RULE = "at most 39 letters, digits, - and _, not starting with -"
NO_OWNERS = ["-a", "-", "a.b", "a" * 40]


@pytest.mark.parametrize("owner", NO_OWNERS)
def test_an_owner_github_would_not_take_is_refused_given_or_from_the_remote(
    repo: Path, owner: str
) -> None:
    # They were taken, and the first request failed on them (a 404 after a token was sent).
    with pytest.raises(BadInputError) as info:
        access.parse_slug(f"{owner}/x")
    assert (
        str(info.value)
        == f"--github-repo: '{owner}/x': '{owner}' is no GitHub owner ({OWNER_RULE})"
    )
    url = f"git@github.com:{owner}/x.git"
    git(repo, "remote", "add", "origin", url)
    with pytest.raises(BadInputError) as info:
        access.slug_from_remote(open_repo(repo), "origin")
    assert str(info.value) == (
        f"remote 'origin' ({url}): '{owner}' is no GitHub owner ({OWNER_RULE}); pass"
        " --github-repo OWNER/NAME"
    )


def test_owners_and_names_github_takes_are_taken() -> None:
    for slug in (
        "a/b",
        "a-b-c/x",
        "A1/my.repo_-x",
        f"{'a' * 39}/.x",
        "a/..x",
        "a_b/x",
        "a-/x",
        "a--b/x",
    ):
        assert str(access.parse_slug(slug)) == slug


def test_local_remote_needs_github_repo(repo: Path, tmp_path: Path) -> None:
    git(repo, "remote", "add", "origin", str(tmp_path / "bare.git"))
    with pytest.raises(BadInputError, match="with --github-repo OWNER/NAME"):
        access.slug_from_remote(open_repo(repo), "origin")
    with pytest.raises(BadInputError, match="no remote named 'upstream'"):
        access.slug_from_remote(open_repo(repo), "upstream")
    # A file:// URL may name a user too: never shown.
    git(repo, "remote", "add", "mirror", "file://Sup3rS3cretUserTok3n0123@/srv/x.git")
    with pytest.raises(BadInputError) as info:
        access.slug_from_remote(open_repo(repo), "mirror")
    assert str(info.value) == (
        "remote 'mirror' is a local path (file:///srv/x.git); name the GitHub repository with"
        " --github-repo OWNER/NAME"
    )
    assert access.parse_slug("acme/widgets") == access.RepoSlug(owner="acme", name="widgets")
    for bad in ("acme", "a/b/c", "../x", "a/..", "a b/c"):
        with pytest.raises(BadInputError, match="is not of the form OWNER/NAME"):
            access.parse_slug(bad)


def test_api_url_precedence() -> None:
    assert access.api_url_from(None, {}) == "https://api.github.com"
    env = {"SWARM_GITHUB_API_URL": "https://ghe.example/api/v3/"}
    assert access.api_url_from(None, env) == "https://ghe.example/api/v3"
    assert access.api_url_from("http://127.0.0.1:8000", env) == "http://127.0.0.1:8000"
    with pytest.raises(BadInputError, match="is not an http"):
        access.api_url_from("ftp://x", {})
    with pytest.raises(BadInputError, match="credentials in the URL"):
        access.api_url_from("https://user:pw@ghe.example", {})
    # Said of where it came from: the variable's value is not the flag's.
    with pytest.raises(BadInputError, match=r"^SWARM_GITHUB_API_URL: 'http://a b' is not"):
        access.api_url_from(None, {"SWARM_GITHUB_API_URL": "http://a b"})
    # Empty (`SWARM_GITHUB_API_URL=$GHES_URL` with that unset) is no choice of api.github.com.
    with pytest.raises(BadInputError, match=r"^SWARM_GITHUB_API_URL is empty; .* or unset it"):
        access.api_url_from(None, {"SWARM_GITHUB_API_URL": ""})
    with pytest.raises(BadInputError, match=r"^--api-url is empty; .* or leave it out for https"):
        access.api_url_from(" ", env)


def test_secondary_limit_gives_up_after_max_retries(fake_github: FakeGitHub) -> None:
    for _ in range(2):
        fake_github.fail_next("GET", "/pulls$", 403)
    with pytest.raises(errors.RateLimitError, match="still limited after 2 tries; try again"):
        client(fake_github, secondary_wait=0.01, max_retries=1).find_pull("swarm/a")
    assert len(fake_github.requests) == 2


def test_a_redirect_is_not_followed_and_names_the_move(fake_github: FakeGitHub) -> None:
    with serve() as elsewhere:
        target = f"{elsewhere.url}/repositories/42/pulls"
        fake_github.fail_next("GET", "/pulls$", 307, {"location": target})
        with pytest.raises(errors.GitHubError) as info:
            client(fake_github).find_pull("swarm/a")
        assert elsewhere.requests == []  # neither the token nor the request went there
    # Another port (or host): no rename of the repository, whatever it is.
    assert str(info.value) == (
        f"GitHub GET /repos/{OWNER}/{NAME}/pulls answered 307, redirecting to {target}, not to"
        f" the API at {fake_github.url}; not followed (the token goes to the API host only):"
        " set --api-url to the address GitHub uses"
    )
    assert info.value.moved_to == ""  # an issue there is not one moved to another repository


def test_a_renamed_repository_is_bad_input_before_any_push(fake_github: FakeGitHub) -> None:
    # GitHub answers the old name's API with 301 to /repositories/<id>/...
    moved = f"{fake_github.url}/repositories/42/pulls?state=open&per_page=1"
    fake_github.fail_next("GET", "/pulls$", 301, {"location": moved})
    with pytest.raises(BadInputError, match=r"answered 301, moved to .*/repositories/42/pulls"):
        client(fake_github).check_access()


def test_a_dropped_connection_is_tried_again_and_a_refused_one_given_up_on_after_two(
    fake_github: FakeGitHub,
) -> None:
    waits = Waits()
    c = client(fake_github, waits, drop_waits=(0.01, 0.02))
    c.check_access()
    # A proxy restarting closes one connection without an answer: the look is asked again.
    fake_github.scripted.append(Scripted("GET", "/pulls$", DROP, {}, b""))
    assert c.find_pull("swarm/a") is None
    assert waits == [(0.01, "GitHub connection dropped")]
    assert len(fake_github.calls("GET", "/pulls$")) == 3  # the access check, the look twice

    # A write dropped mid-way may have been done: not sent again (the next `swarm pr` finds it).
    fake_github.scripted.append(Scripted("POST", "/pulls$", DROP, {}, b""))
    with pytest.raises(
        errors.UnreachableError,
        match=r"dropped POST /repos/acme/widgets/pulls \(.*\); it may have been carried out",
    ):
        c.create_pull(title="T", head="swarm/a", base="main", body="B")
    assert len(fake_github.calls("POST")) == 1

    # Refused (never reached the server: a write too) by an API that answered before; given up
    # on after the waits. One that never answered is a wrong URL or no network: said at once.
    with serve() as gone:
        refused = Waits()
        c = client(gone, refused, drop_waits=(0.01, 0.02))
        c.check_access()
    with pytest.raises(errors.UnreachableError, match="Connection refused"):
        c.create_pull(title="T", head="swarm/a", base="main", body="B")
    assert refused == [(0.01, "GitHub connection dropped"), (0.02, "GitHub connection dropped")]
    never = Waits()
    with pytest.raises(errors.UnreachableError, match="Connection refused"):
        client(gone, never, drop_waits=(0.01, 0.02)).check_access()
    assert never == []


PROXY_VARIABLES = ("http", "https", "all", "no")


@pytest.fixture
def proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No proxy variable but those a test sets, and a token for connect()."""
    for kind in PROXY_VARIABLES:
        for name in (f"{kind}_proxy", f"{kind.upper()}_PROXY"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("REQUEST_METHOD", raising=False)
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    return monkeypatch


def connected(repo: Path, api_url: str) -> github.Client:
    return github.connect(open_repo(repo), github_repo=f"{OWNER}/{NAME}", api_url=api_url)


def test_all_proxy_is_gone_through_unless_a_schemes_own_proxy_or_no_proxy_says_otherwise(
    repo: Path, fake_github: FakeGitHub, proxy_env: pytest.MonkeyPatch
) -> None:
    # ALL_PROXY was ignored: swarm went straight to the API (no DNS behind such a proxy).
    asked = f"{fake_github.url}/repos/{OWNER}/{NAME}/pulls?state=open&per_page=1"
    with forwarding_proxy() as proxy:
        address = proxy.url.removeprefix("http://")
        proxy_env.setenv("ALL_PROXY", f"http://swarm:Pr0xy%40pw@{address}")
        connected(repo, fake_github.url).check_access()
        login = "Basic " + base64.b64encode(b"swarm:Pr0xy@pw").decode()
        assert proxy.seen == [("GET", asked, login)]
        assert len(fake_github.requests) == 1  # forwarded by the proxy

        # NO_PROXY names the API's host: straight there.
        proxy_env.setenv("no_proxy", "example.com,127.0.0.1")
        connected(repo, fake_github.url).check_access()
        assert (len(proxy.seen), len(fake_github.requests)) == (1, 2)

        # The scheme's own proxy comes first (ALL_PROXY, a socks one, is not even looked at),
        # and its lowercase spelling before the capitals.
        proxy_env.delenv("no_proxy")
        proxy_env.setenv("ALL_PROXY", "socks5h://127.0.0.1:1")
        proxy_env.setenv("HTTP_PROXY", "http://127.0.0.1:1")
        proxy_env.setenv("http_proxy", proxy.url)
        connected(repo, fake_github.url).check_access()
        assert proxy.seen[1:] == [("GET", asked, None)]


@pytest.mark.parametrize(
    ("variable", "value", "api_url", "error"),
    [
        (
            "HTTPS_PROXY",
            "socks5://swarm:S3cretPw@proxy.example:1080",
            "https://ghe.example/api/v3",
            (
                "HTTPS_PROXY=socks5://proxy.example:1080: swarm's GitHub client speaks to HTTP(S)"
                " proxies only; point HTTPS_PROXY at one, or add ghe.example to NO_PROXY to connect"
                " directly"
            ),
        ),
        (
            "HTTP_PROXY",
            "socks4://swarm:S3cretPw@proxy.example:1080",
            "http://127.0.0.1:9",
            (
                "HTTP_PROXY=socks4://proxy.example:1080: swarm's GitHub client speaks to HTTP(S)"
                " proxies only; point HTTP_PROXY at one, or add 127.0.0.1 to NO_PROXY to connect"
                " directly"
            ),
        ),
        # A port out of range was an internal error (OverflowError) at the first request.
        (
            "HTTPS_PROXY",
            "swarm:S3cretPw@proxy.example:99999",
            "https://api.github.com",
            "HTTPS_PROXY=http://proxy.example:99999: not a proxy's URL (http://HOST:PORT)",
        ),
    ],
)
def test_a_proxy_the_client_cannot_speak_to_is_bad_input_naming_its_variable(
    repo: Path,
    proxy_env: pytest.MonkeyPatch,
    variable: str,
    value: str,
    api_url: str,
    error: str,
) -> None:
    # A socks proxy failed at the first request: `unknown url type: socks5`.
    proxy_env.setenv(variable, value)
    with pytest.raises(BadInputError) as info:
        connected(repo, api_url)
    assert str(info.value) == error
    assert info.value.exit_code == ExitCode.BAD_INPUT
    # Not the one that applies: no matter.
    proxy_env.setenv("NO_PROXY", "*")
    assert connected(repo, api_url).proxy is None


def test_a_socks_all_proxy_set_for_other_tools_is_passed_over(
    repo: Path, proxy_env: pytest.MonkeyPatch
) -> None:
    # ALL_PROXY=socks5h://... is often set for other programs; it stopped every `swarm pr`.
    proxy_env.setenv("all_proxy", "SOCKS5H://swarm:S3cretPw@proxy.example:1080/")
    assert connected(repo, "https://api.github.com").proxy is None
    proxy_env.setenv("HTTPS_PROXY", "http://proxy.example:3128")  # the scheme's own applies
    assert str(connected(repo, "https://api.github.com").proxy) == (
        "HTTPS_PROXY=http://proxy.example:3128"
    )


def test_a_dead_proxy_is_named_not_taken_for_the_api(
    repo: Path, fake_github: FakeGitHub, proxy_env: pytest.MonkeyPatch
) -> None:
    # It said `cannot reach the GitHub API at URL (...); check the network or --api-url`:
    # the API was up, only the proxy was not.
    with socket.create_server(("127.0.0.1", 0)) as gone:
        dead = f"127.0.0.1:{gone.getsockname()[1]}"
    proxy_env.setenv("HTTP_PROXY", f"http://swarm:S3cretPw@{dead}")
    c = connected(repo, fake_github.url)
    with pytest.raises(errors.UnreachableError) as info:
        c.check_access()
    assert str(info.value) == (
        f"cannot reach the GitHub API at {fake_github.url} through the proxy"
        f" HTTP_PROXY=http://{dead} ([Errno {errno.ECONNREFUSED}] Connection refused); check"
        " that proxy setting, the network or --api-url / SWARM_GITHUB_API_URL"
    )
    assert "S3cretPw" not in repr(c)
    assert fake_github.requests == []


class _EchoingProxy(http.server.BaseHTTPRequestHandler):
    """A proxy that refuses every request (407), echoing the login it was sent."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:  # a request for an http API
        said = f"you sent Proxy-Authorization {self.headers.get('proxy-authorization')}"
        page = f"<html><p>{said}</p></html>".encode()
        self.send_response(407, said)
        self.send_header("content-length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    do_CONNECT = do_GET  # a tunnel to an https API: refused, the reason echoing it  # noqa: N815


def test_a_proxys_password_echoed_back_by_it_is_in_no_failure(
    repo: Path, fake_github: FakeGitHub, proxy_env: pytest.MonkeyPatch
) -> None:
    # A proxy's refusal (its page, the reason of a refused tunnel) that echoes the login
    # urllib sent it showed `Basic <base64 of user:password>` in the failure line, which
    # `swarm pr` prints and stores.
    password = "Pr0xy/pw@2024"  # noqa: S105 - a fake
    login = base64.b64encode(f"swarm:{password}".encode()).decode()
    with listening(_EchoingProxy) as proxy:
        address = proxy.removeprefix("http://")
        for variable in ("HTTP_PROXY", "HTTPS_PROXY"):  # the password as a URL spells it
            proxy_env.setenv(variable, f"http://swarm:Pr0xy%2Fpw%402024@{address}")
        failures = []
        for api in (fake_github.url, "https://ghe.example/api/v3"):
            with pytest.raises(errors.GitHubError) as info:
                connected(repo, api).check_access()
            failures.append(str(info.value))
    assert "407" in failures[0], failures
    assert "Tunnel connection failed: 407" in failures[1], failures
    for said in failures:
        assert f"Basic {REDACTED}" in said, said
        assert login not in said, said
        assert "Pr0xy" not in said, said
    assert fake_github.requests == []


def test_a_proxy_that_never_answers_is_named_in_the_line(
    silent_api: str, fake_github: FakeGitHub
) -> None:
    proxy = proxy_for(fake_github.url, {"HTTP_PROXY": silent_api})
    c = client(fake_github, proxy=proxy, timeout=0.2, deadline=60)
    with pytest.raises(errors.UnreachableError) as info:
        c.find_pull("x")
    assert str(info.value) == (
        f"the GitHub API at {fake_github.url} through the proxy HTTP_PROXY={silent_api} did not"
        " answer GET /repos/acme/widgets/pulls within 0.2s; try again later"
    )
