"""A remote's credentials kept out of every git config: given to each git that needs them.

An http(s) URL with ``user:token@`` in it is kept in a config without them (git writes the
URL it clones from into the clone's config); each fetch, clone or push is given them by a
credential helper on its own command line, which reads them from that git's environment.
The list of helpers is cleared first: no other helper is asked, nor told to store them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from worktree_swarm.git.remotes import holds_credentials, strip_userinfo

_USER, _PASSWORD = "SWARM_GIT_USERNAME", "SWARM_GIT_PASSWORD"
# Answers `get` only; the values reach no shell's parser, only printf's `%s`.
_HELPER = (
    '!f() { test "$1" = get || exit 0; '
    f'printf "username=%s\\n" "${_USER}"; '
    f'test -z "${_PASSWORD}" || printf "password=%s\\n" "${_PASSWORD}"; }}; f'
)


@dataclass(frozen=True, slots=True)
class RemoteLogin:
    """A remote's URL as configs keep it, and what a git that contacts it is given."""

    url: str
    args: tuple[str, ...] = ()  # git's options, before its command
    env: Mapping[str, str] = field(default_factory=dict)


def login_for(url: str) -> RemoteLogin:
    """*url* without its credentials, and the helper that gives them (none to give: as is).

    Only http(s): an ssh URL's user name is its login, and git asks no helper for ssh.
    """
    try:
        parts = urlsplit(url)
    except ValueError:  # not a URL git reads either
        return RemoteLogin(url=url)
    if parts.scheme.lower() not in {"http", "https"} or not holds_credentials(url):
        return RemoteLogin(url=url)
    user, password = unquote(parts.username or ""), unquote(parts.password or "")
    if any(c in user + password for c in "\n\r\0"):  # git refuses the URL itself
        return RemoteLogin(url=url)
    return RemoteLogin(
        url=strip_userinfo(url),
        args=("-c", "credential.helper=", "-c", f"credential.helper={_HELPER}"),
        env={_USER: user, _PASSWORD: password},
    )
