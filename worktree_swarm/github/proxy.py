"""The proxy the GitHub client goes through, from the variables git, curl and gh read.

``https_proxy`` for an https API (``http_proxy`` for an http one), else ``all_proxy`` (but a
socks one, set for other programs, is passed over); none for a host ``no_proxy`` names. Each
may be spelt in capitals too: the lowercase spelling wins and an empty one unsets, as in
Python's urllib, whose ``no_proxy`` rules apply. Under CGI
(``REQUEST_METHOD`` set) ``HTTP_PROXY`` counts for nothing: a request's ``Proxy:`` header sets it.
"""

from __future__ import annotations

import base64
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass

from worktree_swarm.core.errors import BadInputError
from worktree_swarm.core.text import is_http_url, one_line
from worktree_swarm.infra.redact import MIN_SECRET_LEN, REDACTED

SCHEMES = frozenset({"http", "https"})  # what urllib speaks to a proxy: no socks


@dataclass(frozen=True, slots=True, kw_only=True)
class Proxy:
    """A proxy: its URL (with the ``user:password@`` urllib logs in with) and its variable."""

    url: str
    variable: str

    def __repr__(self) -> str:
        """``HTTPS_PROXY=http://host:3128``: never the user and password."""
        return f"{self.variable}={_shown(self.url)}"

    __str__ = __repr__

    def redact(self, text: str) -> str:
        """*text* without this proxy's password, nor the login urllib sends it (its base64).

        A proxy's error page, or the reason of its refusal, may echo ``Proxy-Authorization``.
        """
        user, _, password = _userinfo(self.url).partition(":")
        if not password:
            return text
        plain = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}"
        secrets = {base64.b64encode(plain.encode()).decode("ascii")}
        secrets |= {
            p for p in (password, urllib.parse.unquote(password)) if len(p) >= MIN_SECRET_LEN
        }
        for secret in sorted(secrets, key=len, reverse=True):
            text = text.replace(secret, REDACTED)
        return text

    def handler(self, scheme: str) -> urllib.request.ProxyHandler:
        """What sends the requests of *scheme* (the API's) through this proxy."""
        return urllib.request.ProxyHandler({scheme: self.url})


def proxy_for(api_url: str, env: Mapping[str, str]) -> Proxy | None:
    """The proxy that requests to *api_url* go through, or None to connect directly.

    BadInputError for a proxy the client cannot speak to (socks) or no proxy's URL at all.
    """
    api = urllib.parse.urlsplit(api_url)
    settings = _settings(env)
    if "no" in settings and _bypassed(api.netloc, settings["no"][1]):
        return None
    chosen = settings.get(api.scheme) or settings.get("all")
    if chosen is None:
        return None
    variable, value = chosen
    url = value if "://" in value else f"http://{value}"  # a bare HOST:PORT, as curl reads it
    scheme, _, rest = url.partition("://")
    url = f"{scheme.lower()}://{rest}"  # urllib knows `http`, not `HTTP`
    if scheme.lower() not in SCHEMES and chosen is not settings.get(api.scheme):
        return None  # a socks ALL_PROXY, set for other programs: passed over, as before
    if scheme.lower() not in SCHEMES:
        raise BadInputError(
            f"{variable}={_shown(url)}: swarm's GitHub client speaks to HTTP(S) proxies only;"
            f" point {variable} at one, or add {api.hostname} to NO_PROXY to connect directly"
        )
    if not is_http_url(url):
        raise BadInputError(f"{variable}={_shown(url)}: not a proxy's URL (http://HOST:PORT)")
    return Proxy(url=url, variable=variable)


def _settings(env: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """What the ``*_proxy`` variables set: ``{"https": ("HTTPS_PROXY", url), "no": ...}``."""
    found: dict[str, tuple[str, str]] = {}
    for name, value in env.items():
        if value and name.lower().endswith("_proxy"):
            found[name.lower().removesuffix("_proxy")] = (name, value)
    if "REQUEST_METHOD" in env:
        found.pop("http", None)
    for name, value in env.items():  # the lowercase spelling last: it wins
        if name.endswith("_proxy"):
            kind = name.lower().removesuffix("_proxy")
            if value:
                found[kind] = (name, value)
            else:
                found.pop(kind, None)
    return found


def _bypassed(netloc: str, no_proxy: str) -> bool:
    """Whether *no_proxy* names *netloc*: ``*``, or ``host``, ``.domain``, ``host:port``, ..."""
    if no_proxy.strip() == "*":
        return True
    host = netloc.lower()
    hostonly = host.rpartition(":")[0] if host.rpartition(":")[2].isdigit() else host
    for entry in no_proxy.lower().split(","):
        name = entry.strip().lstrip(".")
        if name and any(h == name or h.endswith(f".{name}") for h in (hostonly, host)):
            return True
    return False


def _netloc(url: str) -> str:
    """What comes between *url*'s ``://`` and its path, as urllib reads a proxy's URL."""
    rest = url.partition("://")[2]
    end = rest.find("/", max(rest.find("@"), 0))
    return rest if end == -1 else rest[:end]


def _userinfo(url: str) -> str:
    """*url*'s ``user:password`` (``""`` without any)."""
    return _netloc(url).rpartition("@")[0]


def _shown(url: str) -> str:
    """*url*'s scheme and host, without what comes before its host (urllib's reading)."""
    host = _netloc(url).rpartition("@")[2]
    return one_line(f"{url.partition('://')[0]}://{host}", limit=100, controls=True)
