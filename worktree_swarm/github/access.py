"""What a GitHub client is given, each checked before its first request.

The API's base URL (``--api-url``, ``SWARM_GITHUB_API_URL``, else api.github.com), the
repository as ``OWNER/NAME`` (given, or read from a remote's URL), and the token (``GITHUB_TOKEN``,
``GH_TOKEN`` or ``gh auth token``), which never prints.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

from worktree_swarm.core.errors import BadInputError, CommandError
from worktree_swarm.core.text import is_http_url
from worktree_swarm.git import repo as git
from worktree_swarm.git.remotes import strip_userinfo
from worktree_swarm.infra import proc
from worktree_swarm.infra import redact as redaction

DEFAULT_API_URL = "https://api.github.com"
API_URL_ENV = "SWARM_GITHUB_API_URL"
TOKEN_ENVS = ("GITHUB_TOKEN", "GH_TOKEN")
REDACTED = "[REDACTED]"

# Owner and name as GitHub allows them: a name of letters, digits, `.`, `_` and `-` (not `.`
# nor `..`, checked apart); an owner of at most 39 letters, digits, `-` and `_` (managed users'
# `handle_shortcode`; old accounts keep double or trailing hyphens), not starting with `-`
# (`-a/b` is no owner, and would read as an option to a program it reached).
_SLUG_PART = r"[A-Za-z0-9_.-]+"
_SLUG_RE = re.compile(rf"(?P<owner>{_SLUG_PART})/(?P<name>{_SLUG_PART})")
_OWNER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,38}")
_OWNER_RULE = "at most 39 letters, digits, - and _, not starting with -"
# owner/name at the end of an https, ssh:// or scp-like (git@host:owner/name) remote URL.
_REMOTE_RE = re.compile(rf"[:/](?P<owner>{_SLUG_PART})/(?P<name>{_SLUG_PART}?)(?:\.git)?/?$")
# A token is one printable word; anything else could end up in a header error message.
_TOKEN_RE = re.compile(r"[\x21-\x7e]{1,1024}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RepoSlug:
    """A GitHub repository as ``owner/name``."""

    owner: str
    name: str

    def __str__(self) -> str:
        return f"{self.owner}/{self.name}"


class Token:
    """A secret that prints as ``[REDACTED]``: str(), repr() and f-strings never show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        value = value.strip()
        if _TOKEN_RE.fullmatch(value) is None:
            raise BadInputError(
                "the GitHub token is empty or contains spaces or control characters;"
                " check GITHUB_TOKEN / GH_TOKEN or `gh auth token`"
            )
        self._value = value

    def reveal(self) -> str:
        """The secret itself; only for the Authorization header."""
        return self._value

    def redact(self, text: str) -> str:
        """*text* with every occurrence of the token replaced."""
        return text.replace(self._value, REDACTED)

    def __repr__(self) -> str:
        return f"Token({REDACTED})"

    __str__ = __repr__


def parse_slug(text: str, *, where: str = "--github-repo") -> RepoSlug:
    """Parse ``OWNER/NAME``; BadInputError otherwise."""
    match = _SLUG_RE.fullmatch(text.strip())
    if match is None or not _names_a_repository(match):
        raise BadInputError(f"{where}: {text!r} is not of the form OWNER/NAME")
    if not _OWNER_RE.fullmatch(match["owner"]):
        owner = match["owner"]
        raise BadInputError(f"{where}: {text!r}: {owner!r} is no GitHub owner ({_OWNER_RULE})")
    return RepoSlug(owner=match["owner"], name=match["name"])


def _names_a_repository(match: re.Match[str]) -> bool:
    """Whether an owner and name matched are one; ``.`` and ``..`` would move up the API's path."""
    return bool(match["name"]) and not {match["owner"], match["name"]} & {".", ".."}


def slug_from_remote(repo: git.Repo, remote: str) -> RepoSlug:
    """Derive ``owner/name`` from the URL of *remote* (https, ssh or scp-like forms).

    A local-path remote has no owner: pass ``--github-repo OWNER/NAME`` then.
    """
    url = remote_url(repo, remote)
    if not _is_network_url(url):
        raise BadInputError(
            f"remote {remote!r} is a local path ({strip_userinfo(url)}); "
            "name the GitHub repository with --github-repo OWNER/NAME"
        )
    # A URL's host and port are not the owner: only its path names the repository.
    match = _REMOTE_RE.search(urllib.parse.urlsplit(url).path if "://" in url else url)
    if match is None or not _names_a_repository(match):
        raise BadInputError(
            f"cannot tell the GitHub repository from remote {remote!r} ({strip_userinfo(url)}); "
            "pass --github-repo OWNER/NAME"
        )
    if not _OWNER_RE.fullmatch(match["owner"]):
        raise BadInputError(
            f"remote {remote!r} ({strip_userinfo(url)}): {match['owner']!r} is no GitHub owner"
            f" ({_OWNER_RULE}); pass --github-repo OWNER/NAME"
        )
    return RepoSlug(owner=match["owner"], name=match["name"])


def _is_network_url(url: str) -> bool:
    if url.startswith("file:"):
        return False
    if "://" in url:
        return True
    # git's rule for scp-like syntax (host:path): a colon before the first slash.
    colon, slash = url.find(":"), url.find("/")
    return colon > 0 and (slash == -1 or colon < slash)


def remote_url(repo: git.Repo, remote: str) -> str:
    """The fetch URL of *remote*; BadInputError when no such remote is configured."""
    if not remote or remote.startswith("-"):
        raise BadInputError(f"--remote: {strip_userinfo(remote)!r} is not a remote name")
    try:
        return git.git(repo.root, "remote", "get-url", "--", remote).strip()
    except CommandError as exc:
        raise BadInputError(
            f"--remote: no remote named {strip_userinfo(remote)!r} in {repo.root}; "
            "add it with `git remote add`"
        ) from exc


def api_url_from(flag: str | None, env: Mapping[str, str] | None = None) -> str:
    """The API base URL: the flag, else ``SWARM_GITHUB_API_URL``, else api.github.com.

    Given empty (``--api-url "$GHES_URL"`` with the variable unset), either is bad input: the
    token, maybe an Enterprise server's, would go to api.github.com.
    """
    env = os.environ if env is None else env
    where, given = ("--api-url", flag) if flag is not None else (API_URL_ENV, env.get(API_URL_ENV))
    if given is not None and not given.strip():
        unset = "leave it out" if flag is not None else "unset it"
        raise BadInputError(
            f"{where} is empty; give the API's base URL, or {unset} for {DEFAULT_API_URL}"
        )
    url = (given or DEFAULT_API_URL).rstrip("/")
    if not is_http_url(url):
        raise BadInputError(f"{where}: {strip_userinfo(url)!r} is not an http(s) URL")
    parts = urllib.parse.urlsplit(url)
    if parts.query or parts.fragment or url.endswith(("?", "#")):  # every request would lose it
        raise BadInputError(
            f"{where}: {strip_userinfo(url)!r} has a query or fragment; give the API's base URL"
        )
    if "@" in parts.netloc:
        raise BadInputError(f"{where}: credentials in the URL are not accepted; use GITHUB_TOKEN")
    return url


def resolve_token(env: Mapping[str, str] | None = None, *, host: str | None = None) -> Token:
    """The token from ``GITHUB_TOKEN`` or ``GH_TOKEN``, else from ``gh auth token``.

    *host* names a GitHub Enterprise host for gh (``gh auth token --hostname HOST``).
    """
    env = os.environ if env is None else env
    for name in TOKEN_ENVS:
        if env.get(name, "").strip():
            return _known(name, Token(env[name]))
    hint = "set GITHUB_TOKEN (or GH_TOKEN), or log in with `gh auth login`"
    try:
        argv = ["gh", "auth", "token", *(["--hostname", host] if host else [])]
        out = proc.run(argv, env=proc.clean_env(), check=False, timeout=30)
    except FileNotFoundError as exc:
        raise BadInputError(f"no GitHub token: {hint}") from exc
    if out.returncode != 0 or not out.stdout.strip():
        raise BadInputError(f"no GitHub token (`gh auth token` found none): {hint}")
    return _known("GH_TOKEN", Token(out.stdout))


def _known(name: str, token: Token) -> Token:
    """*token*, known from now on to this process's redactor whatever its shape (40 hex digits).

    From gh it is in no environment; from one, it may have blanks around it there.
    """
    redaction.add_env([(name, token.reveal())])
    return token
