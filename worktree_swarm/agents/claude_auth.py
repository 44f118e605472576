"""A Claude Code sign-in carried into every task's own ``CLAUDE_CONFIG_DIR``.

Each task gets its own config dir (parallel instances corrupt a shared ``.claude.json``), which
would leave a user signed in with ``claude`` / ``/login`` unauthenticated. On Linux the CLI keeps
that sign-in in ``<config dir>/.credentials.json`` (``claudeAiOauth``: access token, refresh
token, ``expiresAt`` in epoch ms) and the account in ``.claude.json`` (``oauthAccount``).

The CLI replaces ``.credentials.json`` by writing a temporary file and renaming it over the
old one, so a symlink to the user's file would be replaced by a private copy at the first token
refresh, and the user's file would keep a refresh token the server may already have retired.
So every task gets a copy, and a :class:`CredentialSync` keeps all copies and the user's file
at the newest sign-in (the one that expires last), under a lock shared by every swarm of the
user: a token one task refreshed reaches the others (the CLI re-reads the file when its mtime
changes) and the user's own ``claude``. Nothing else of the user's config is shared.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import filelock

from worktree_swarm.core.errors import BadInputError

CREDENTIALS = ".credentials.json"
CONFIG = ".claude.json"
OAUTH_KEY = "claudeAiOauth"
LOCK_NAME = ".swarm-credentials.lock"
SYNC_INTERVAL_S = 2.0
_LIFETIME_MS = 7 * 24 * 3600 * 1000  # far beyond any access token's life
# Any of these makes the CLI authenticate without a sign-in (API key, long-lived token, a
# cloud provider): then nothing is copied.
AUTH_ENV = (
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "CLAUDE_CODE_OAUTH_TOKEN",
    "CLAUDE_CODE_USE_BEDROCK",
    "CLAUDE_CODE_USE_VERTEX",
)
FIX = (
    "claude is not signed in: run `claude` and `/login` once (or export ANTHROPIC_API_KEY, "
    "or CLAUDE_CODE_OAUTH_TOKEN from `claude setup-token`)"
)


def user_config_dir(environ: Mapping[str, str]) -> Path:
    """Where the user's own ``claude`` keeps its config: ``$CLAUDE_CONFIG_DIR`` or ``~/.claude``."""
    configured = environ.get("CLAUDE_CONFIG_DIR")
    if configured:
        return Path(configured).expanduser()
    home = environ.get("HOME")
    return (Path(home) if home else Path.home()) / ".claude"


def user_config_file(environ: Mapping[str, str]) -> Path:
    """The user's ``.claude.json``: inside ``$CLAUDE_CONFIG_DIR``, else ``~/.claude.json``."""
    if environ.get("CLAUDE_CONFIG_DIR"):
        return user_config_dir(environ) / CONFIG
    home = environ.get("HOME")
    return (Path(home) if home else Path.home()) / CONFIG


def uses_env_auth(environ: Mapping[str, str]) -> bool:
    """Whether the environment authenticates the CLI by itself (no sign-in needed)."""
    return any(environ.get(name, "").strip() for name in AUTH_ENV)


def _api_key_helper(environ: Mapping[str, str]) -> bool:
    settings = _read_json(user_config_dir(environ) / "settings.json")
    return bool(settings and settings.get("apiKeyHelper"))


def signed_in(environ: Mapping[str, str]) -> bool:
    """Whether ``claude`` started with *environ* can authenticate (env, helper or sign-in)."""
    if uses_env_auth(environ) or _api_key_helper(environ):
        return True
    oauth = _oauth(_read_json(user_config_dir(environ) / CREDENTIALS))
    return bool(oauth and (oauth.get("accessToken") or oauth.get("refreshToken")))


def prepare(config_dir: Path, environ: Mapping[str, str]) -> None:
    """Give a task's *config_dir* the user's sign-in (newest copy) and account; keep it synced."""
    if uses_env_auth(environ):
        return
    source = user_config_dir(environ) / CREDENTIALS
    if not source.is_file():
        return
    with _lock(environ):
        _sync([source, config_dir / CREDENTIALS], primary=source)
        _seed_account(config_dir / CONFIG, user_config_file(environ))
    _SYNC.track(config_dir / CREDENTIALS, source, environ)


def confine(config_dir: Path) -> None:
    """Never carry the sign-in of *config_dir* (a sandboxed agent's) into the user's file.

    Its refreshes still reach the other tasks; your own ``claude`` may then ask you to sign
    in again after the run, when a task's refresh retired the token your file holds.
    """
    _SYNC.confine(config_dir / CREDENTIALS)


def release(config_dir: Path, *, confined: bool = False) -> None:
    """Take the sign-in out of a task's *config_dir* once its agent has ended.

    What that agent refreshed reaches your file first (not from a *confined*, sandboxed,
    agent's), then the other tasks; the next attempt gets a copy again (:func:`prepare`). Also
    for an agent this process did not start (adopted after a restart): no copy of your tokens
    stays in the repository after.
    """
    _SYNC.release(config_dir / CREDENTIALS, os.environ, confined=confined)


def forget(config_dir: Path) -> None:
    """Delete a sign-in left in *config_dir* by an agent no manager saw end (a killed one)."""
    with contextlib.suppress(OSError):
        (config_dir / CREDENTIALS).unlink()


def sync_now() -> None:
    """Propagate the newest sign-in among every tracked copy and the user's file, once."""
    _SYNC.run_once()


# -- the copies --------------------------------------------------------------------------------


def _expires(data: dict[str, Any] | None) -> int:
    """When the sign-in expires (epoch ms); -1 without one, or one no real sign-in has.

    A token lives hours: an expiry further out than ``_LIFETIME_MS`` is made up (an agent
    that wrote its copy to win every sync), and never the newest.
    """
    oauth = _oauth(data)
    value = oauth.get("expiresAt") if oauth else None
    if not isinstance(value, int) or value > time.time() * 1000 + _LIFETIME_MS:
        return -1
    return value


def _oauth(data: dict[str, Any] | None) -> dict[str, Any] | None:
    value = data.get(OAUTH_KEY) if data else None
    return value if isinstance(value, dict) else None


def _sync(paths: list[Path], *, primary: Path, confined: frozenset[Path] = frozenset()) -> None:
    """Write the newest ``claudeAiOauth`` among *paths* into every older one (caller locks).

    The *primary* (the user's own file) is never written from a *confined* copy: what a
    sandboxed agent writes must not reach your home.
    """
    found = {path: _read_json(path) for path in paths}
    newest = max(paths, key=lambda p: (_expires(found[p]), p == primary))
    best = found[newest]
    if _oauth(best) is None:
        return
    for path in paths:
        current = found[path]
        if path == newest or _oauth(current) == _oauth(best):
            continue
        if path == primary and (current is None or newest in confined):
            continue  # the user signed out (or moved the file): never sign them back in
        if path == primary or current is not None:
            # Only the sign-in moves: the user's file may hold other entries (MCP servers).
            merged = {**(current or {}), OAUTH_KEY: _oauth(best)}
        else:
            merged = dict(best or {})
        write_json(path, merged)


def _seed_account(task_config: Path, user_config: Path) -> None:
    """Copy ``oauthAccount`` into the task's ``.claude.json`` (nothing else of the user's)."""
    account = (_read_json(user_config) or {}).get("oauthAccount")
    if not isinstance(account, dict):
        return
    current = _read_json(task_config) or {}
    if current.get("oauthAccount") != account:
        write_json(task_config, {**current, "oauthAccount": account})


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic replace with mode 0600: a reader (the CLI) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
        os.chmod(tmp, 0o600)  # noqa: PTH101 - the temp file is only a name here
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _lock(environ: Mapping[str, str]) -> filelock.FileLock:
    # Beside the user's credentials, so swarms of every repository of this user share it.
    folder = user_config_dir(environ)
    return filelock.FileLock(folder / LOCK_NAME, timeout=30, thread_local=False)


class CredentialSync:
    """A background thread that keeps tracked copies and the user's file at the newest sign-in."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._copies: dict[Path, tuple[Path, dict[str, str]]] = {}
        self._confined: set[Path] = set()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()

    def track(self, copy: Path, source: Path, environ: Mapping[str, str]) -> None:
        """Keep *copy* in step with *source* from now on (for this process's lifetime)."""
        with self._lock:
            self._copies[copy] = (source, dict(environ))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="swarm-claude-credentials", daemon=True
                )
                self._thread.start()
                atexit.register(self.run_once)  # a refresh in the last seconds is kept too

    def confine(self, copy: Path) -> None:
        """*copy* belongs to a sandboxed agent: it never reaches the user's own file."""
        with self._lock:
            self._confined.add(copy)

    def release(self, copy: Path, environ: Mapping[str, str], *, confined: bool) -> None:
        """A last sync of *copy* (its agent ended) with its source, then it is gone.

        One this process never tracked (an adopted agent's) goes with the user's file that
        *environ* names. Deleted under the file lock :meth:`run_once` looks under.
        """
        with self._lock:
            source, env = self._copies.pop(copy, (None, dict(environ)))
            confined = confined or copy in self._confined
            self._confined.discard(copy)
        if not copy.is_file():
            return  # nothing was copied there (an API key, a sandbox without one)
        source = source or user_config_dir(env) / CREDENTIALS
        try:
            with _lock(env):
                kept = frozenset({copy}) if confined else frozenset()
                _sync([source, copy], primary=source, confined=kept)
                copy.unlink(missing_ok=True)
        except (OSError, filelock.Timeout):
            with contextlib.suppress(OSError):
                copy.unlink()  # its refresh not carried over: gone all the same

    def run_once(self) -> None:
        """One pass over every source and its copies."""
        with self._lock:
            groups: dict[Path, tuple[list[Path], dict[str, str]]] = {}
            for copy, (source, environ) in self._copies.items():
                groups.setdefault(source, ([], environ))[0].append(copy)
            confined = frozenset(self._confined)
        for source, (copies, environ) in groups.items():
            with contextlib.suppress(OSError, filelock.Timeout), _lock(environ):
                # Looked at under the lock: a copy released meanwhile is not written back.
                paths = [source, *(c for c in copies if c.is_file())]
                _sync(paths, primary=source, confined=confined)

    def _loop(self) -> None:
        while not self._wake.wait(SYNC_INTERVAL_S):
            self.run_once()


_SYNC = CredentialSync()


def require_signed_in(
    agents: Iterable[tuple[str, Mapping[str, str]]], environ: Mapping[str, str]
) -> None:
    """Refuse a run with a Claude task whose ``claude`` could not authenticate (one line).

    *agents* are each task's agent and its own ``env``, which adds to *environ*: a key there
    signs that task's agent in.
    """
    for agent, env in agents:
        if agent == "claude" and not signed_in({**environ, **env}):
            raise BadInputError(FIX)
