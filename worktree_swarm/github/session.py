"""The GitHub client's requests, one repository's at a time, under GitHub's rate-limit rules.

One request at a time (a lock), at least one second between writes, ``retry-after`` and
``x-ratelimit-remaining``/``x-ratelimit-reset`` honoured, and a back-off on secondary rate limits
(403/429), as GitHub's "Best practices for using the REST API" asks; a dropped connection tried
again, and every failure said in one line that names the API and never the token.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

from worktree_swarm.core import units
from worktree_swarm.core.text import one_line
from worktree_swarm.git.remotes import strip_userinfo
from worktree_swarm.github.access import API_URL_ENV, RepoSlug, Token
from worktree_swarm.github.errors import (
    DroppedError,
    GitHubError,
    RateLimitError,
    UnreachableError,
)
from worktree_swarm.github.proxy import Proxy
from worktree_swarm.github.transport import (
    WRITE_METHODS,
    HTTPHandler,
    HTTPSHandler,
    NoRedirect,
    PastDeadlineError,
    Request,
    epoch_wait,
    error_detail,
    fetch_within,
    rate_limit_wait,
    worth_retrying,
)
from worktree_swarm.infra.redact import redact

API_VERSION = "2022-11-28"

_LINK_NEXT_RE = re.compile(r'<(?P<url>[^>]+)>\s*;\s*rel="next"')
MOVED = frozenset({301, 302, 303, 307, 308})
# What a request that never got an answer raises.
_UNREACHABLE = (urllib.error.URLError, OSError, http.client.HTTPException)
DROP_WAITS = (2.0, 8.0)  # seconds before each new try of a refused or dropped request


Sleep = Callable[[float], None]
OnWait = Callable[[float, str], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    """A decoded JSON reply."""

    status: int
    data: Any
    headers: Message


@dataclass(slots=True, kw_only=True)
class Session:
    """The request loop under the GitHub client: client.Client, whose docstring tells its fields."""

    api_url: str
    token: Token
    repo: RepoSlug
    write_interval: float = 1.0
    max_wait: float = 900.0
    secondary_wait: float = 60.0
    max_retries: int = 4
    timeout: float = 30.0
    deadline: float = 120.0
    drop_waits: tuple[float, ...] = DROP_WAITS
    proxy: Proxy | None = None
    sleep: Sleep = time.sleep
    on_wait: OnWait | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _last_write: float | None = field(default=None, repr=False)
    _blocked_until: float = field(default=0.0, repr=False)
    _blocked_by: tuple[int, str] = field(default=(0, ""), repr=False)  # status, what it said
    _answered: bool = field(default=False, repr=False)
    _opener: urllib.request.OpenerDirector = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Redirects are not followed: the token must not reach another host, and a renamed
        # repository's new name belongs in the remote (urllib turns a redirected write into a
        # GET). Only the proxy given: none of the environment's that connect() did not choose.
        scheme = urllib.parse.urlsplit(self.api_url).scheme
        proxies = (
            urllib.request.ProxyHandler({}) if self.proxy is None else self.proxy.handler(scheme)
        )
        self._opener = urllib.request.build_opener(NoRedirect, proxies, HTTPHandler, HTTPSHandler)

    # -- transport ----------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, object] | None = None,
    ) -> Response:
        """Send one request to ``api_url + path`` and decode the JSON reply."""
        return self._send(method, self._url(path, params), body)

    def _repo_path(self, rest: str) -> str:
        owner = urllib.parse.quote(self.repo.owner, safe="")
        name = urllib.parse.quote(self.repo.name, safe="")
        return f"/repos/{owner}/{name}/{rest}"

    def _url(self, path: str, params: Mapping[str, str] | None) -> str:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        return f"{self.api_url}{path}{query}"

    def _next_page(self, headers: Message) -> str | None:
        match = _LINK_NEXT_RE.search(headers.get("link", ""))
        if match is None:
            return None
        url = match["url"]
        # The token goes only to the configured API host: a Link elsewhere is not followed,
        # and the list is not silently cut short either.
        here = urllib.parse.urlsplit(self.api_url)
        try:
            there = urllib.parse.urlsplit(url)
        except ValueError:  # `http://[x/`: no URL at all
            raise GitHubError("GitHub's link to the next page is no URL; not followed") from None
        if (here.scheme, here.netloc) != (there.scheme, there.netloc):
            host = there.netloc.rpartition("@")[2]  # never a user:password@ it holds
            shown = one_line(redact(self._hide(f"{there.scheme}://{host}")), controls=True)
            raise GitHubError(
                f"GitHub's next page is on {shown[:100]}, not on the API's {self.api_url};"
                " not followed (the token goes to the API host only): set --api-url to the"
                " address GitHub uses"
            )
        return url

    def _send(self, method: str, url: str, body: Mapping[str, object] | None) -> Response:
        with self._lock:
            attempt = drops = 0
            while True:
                self._pause_before(method, url)
                try:
                    status, headers, raw = self._exchange(method, url, body)
                except DroppedError:
                    # A blip (a proxy restarting, a connection reset) ends no batch at once;
                    # an API that never answered is a wrong URL or no network, said at once.
                    if not self._answered or drops == len(self.drop_waits):
                        raise
                    self._wait(self.drop_waits[drops], "GitHub connection dropped")
                    drops += 1
                    continue
                self._answered = True
                if method in WRITE_METHODS:
                    self._last_write = time.monotonic()
                self._note_primary_limit(status, headers, raw)
                wait = rate_limit_wait(status, headers, raw, attempt, self.secondary_wait)
                if wait is None:
                    return self._decode(method, url, status, headers, raw)
                if wait > self.max_wait or attempt == self.max_retries:
                    said = (status, self._limit_said(status, raw))
                    raise self._give_up(method, url, said, wait, tries=attempt + 1)
                self._wait(wait, "GitHub rate limit")
                attempt += 1

    def _give_up(
        self, method: str, url: str, said: tuple[int, str], wait: float, *, tries: int
    ) -> RateLimitError:
        """The error of a rate limit swarm does not wait out; *said*: GitHub's status and words."""
        # Past a day, no limit of GitHub's (its quota resets hourly): `retry-after: 1e300` or
        # `inf` is said as such, not as 300 digits or a date a century away.
        far = wait > _DAY
        if wait > self.max_wait:
            asked = "more than a day" if far else f"{wait:.0f}s"
            why = f"asks to wait {asked}, longer than the {self.max_wait:.0f}s swarm waits"
        else:
            why = f"still limited after {tries} tries"
        when = "later" if far else f"after {_when(wait)}"
        status, words = said
        return RateLimitError(
            f"GitHub rate limit ({words}): {method} {self._display(url)} {why}; try again {when}",
            status=status if status in _LIMITED else 0,  # 0: no refusal (a quota used up)
        )

    def _limit_said(self, status: int, raw: bytes) -> str:
        """A rate-limiting reply in a few words: its status and message, or the quota's end."""
        if 200 <= status < 300:  # noqa: PLR2004 - a success that spent the last request
            return "quota used up: x-ratelimit-remaining 0"
        detail = self._detail(raw, _json(raw))[:120]
        return f"{status}: {detail}" if detail else str(status)

    def _pause_before(self, method: str, url: str) -> None:
        now = time.monotonic()
        if self._blocked_until > now:
            wait = self._blocked_until - now
            if wait > self.max_wait:  # the quota resets later than swarm waits: say so now
                raise self._give_up(method, url, self._blocked_by, wait, tries=0)
            self._wait(wait, "GitHub rate limit")
        if method in WRITE_METHODS and self._last_write is not None:
            self._sleep_until(self._last_write + self.write_interval)

    def _wait(self, seconds: float, why: str) -> None:
        if self.on_wait is not None:
            self.on_wait(seconds, why)
        self._sleep_until(time.monotonic() + seconds)

    def _sleep_until(self, deadline: float) -> None:
        # Sleep in a loop: a sleep may return early (signals), the deadline is what counts.
        while (left := deadline - time.monotonic()) > 0:
            self.sleep(left)

    def _note_primary_limit(self, status: int, headers: Message, raw: bytes) -> None:
        if headers.get("x-ratelimit-remaining") == "0":
            reset = epoch_wait(headers.get("x-ratelimit-reset"))
            if reset is not None:
                self._blocked_until = time.monotonic() + reset
                self._blocked_by = (status, self._limit_said(status, raw))

    def _exchange(
        self, method: str, url: str, body: Mapping[str, object] | None
    ) -> tuple[int, Message, bytes]:
        data = None if body is None else json.dumps(body).encode()
        req = Request(url, data=data, method=method)
        req.add_header("Accept", "application/vnd.github+json")
        req.add_header("X-GitHub-Api-Version", API_VERSION)
        req.add_header("User-Agent", "worktree-swarm")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        req.add_header("Authorization", f"Bearer {self.token.reveal()}")
        try:
            return fetch_within(self._opener, req, timeout=self.timeout, deadline=self.deadline)
        except PastDeadlineError as late:
            if late.connected:
                raise UnreachableError(self._unanswered(method, url, self.deadline)) from None
            raise UnreachableError(
                self._unreachable(f"no connection within {self.deadline:g}s")
            ) from None
        except _UNREACHABLE as exc:
            reason = getattr(exc, "reason", exc)
            # urllib wraps what fails while connecting and sending; not what fails after.
            sent = not isinstance(exc, urllib.error.URLError)
            if isinstance(reason, TimeoutError) and sent:  # then no byte for `timeout`
                raise UnreachableError(self._unanswered(method, url, self.timeout)) from None
            dropped = worth_retrying(reason, method)
            if not dropped and sent and method in WRITE_METHODS and self._answered:
                raise UnreachableError(
                    self._hide(
                        f"{self._api} dropped {method} {self._display(url)} ({reason}){_MAYBE_DONE}"
                    )
                ) from None
            error = DroppedError if dropped else UnreachableError
            raise error(self._unreachable(reason)) from None

    def _unreachable(self, reason: object) -> str:
        """What to say of a request that did not reach the API, for *reason*."""
        check = "" if self.proxy is None else "that proxy setting, "
        return self._hide(
            f"cannot reach {self._api} ({reason}); "
            f"check {check}the network or --api-url / {API_URL_ENV}"
        )

    def _unanswered(self, method: str, url: str, seconds: float) -> str:
        """What to say of a request the API took and did not answer within *seconds*."""
        after = _MAYBE_DONE if method in WRITE_METHODS else "; try again later"
        return self._hide(
            f"{self._api} did not answer {method} {self._display(url)} within {seconds:g}s{after}"
        )

    @property
    def _api(self) -> str:
        """The API as a failure names it: with the proxy in between, if any."""
        through = "" if self.proxy is None else f" through the proxy {self.proxy}"
        return f"the GitHub API at {self.api_url}{through}"

    def _decode(self, method: str, url: str, status: int, headers: Message, raw: bytes) -> Response:
        data = _json(raw)
        if 200 <= status < 300:  # noqa: PLR2004
            return Response(status=status, data=data, headers=headers)
        detail = self._detail(raw, data)
        if status in MOVED:
            location = headers.get("location") or ""
            shown = strip_userinfo(self._hide(location or "nowhere"))
            where = one_line(redact(shown), limit=200, controls=True)
            said = f"GitHub {method} {self._display(url)} answered {status}"
            if not self._on_api_host(location, relative_to=url):
                raise GitHubError(
                    f"{said}, redirecting to {where}, not to the API at {self.api_url}; not"
                    " followed (the token goes to the API host only): set --api-url to the"
                    " address GitHub uses",
                    status=status,
                )
            raise GitHubError(
                f"{said}, moved to {where}: {self.repo} was renamed or transferred; point the"
                " remote at its new name or pass --github-repo OWNER/NAME",
                status=status,
                moved_to=where,
            )
        hint = {
            401: "; the token was rejected: check GITHUB_TOKEN / GH_TOKEN or `gh auth login`",
            403: "; the token lacks permission for this repository",
            404: f"; check that {self.repo} exists and the token can see it",
        }.get(status, "")
        raise GitHubError(
            self._hide(
                f"GitHub {method} {self._display(url)} failed with {status}: {detail}{hint}"
            ),
            status=status,
        )

    def _detail(self, raw: bytes, data: object) -> str:
        """What an error reply says (its message, else its page): one line, redacted, cut."""
        # Redacted before it is cut: a page that echoes the token never shows part of it.
        page = self._hide(raw.decode("utf-8", "replace"))
        # One line of printable text: a proxy's HTML page, or escapes an answer carries, never
        # break a task's line or reach your terminal.
        said = redact(self._hide(error_detail(data)) or page)
        return one_line(said, controls=True)[:200]

    def _on_api_host(self, location: str, *, relative_to: str) -> bool:
        """Whether *location* (relative to *relative_to*) has the API's scheme, host and port."""
        here = urllib.parse.urlsplit(self.api_url)
        try:
            there = urllib.parse.urlsplit(urllib.parse.urljoin(relative_to, location))
        except ValueError:  # `http://[x/`: no URL, no host
            return False
        return (here.scheme, here.netloc) == (there.scheme, there.netloc)

    def _hide(self, text: str) -> str:
        """*text* without the token, nor the proxy's password and login (a proxy may echo it)."""
        text = self.token.redact(text)
        return text if self.proxy is None else self.proxy.redact(text)

    def _display(self, url: str) -> str:
        return url.removeprefix(self.api_url).split("?", 1)[0]


# A write the API took and never answered: `swarm pr` looks for a branch's pull request first.
_MAYBE_DONE = (
    "; it may have been carried out all the same: run `swarm pr` again, which finds a pull"
    " request by its branch and opens none twice"
)


_DAY = 86400.0


def _when(wait: float) -> str:
    """The local time *wait* seconds (a day at most) from now: with its date when not today."""
    now = time.time()
    return units.clock_time(now + wait, now=now)


_LIMITED = frozenset({403, 429})  # the statuses GitHub refuses a rate-limited request with


def _json(raw: bytes) -> object:
    """A reply's JSON; None when empty, not JSON, or nested deeper than Python goes."""
    try:
        return json.loads(raw) if raw.strip() else None
    except (ValueError, RecursionError):
        return None
