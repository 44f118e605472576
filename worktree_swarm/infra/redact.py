"""The one redactor: keys, tokens, passwords and secret environment values become ``[REDACTED]``.

Every writer of text that leaves the process (terminal output, the state store, logs shown by
``swarm logs``, notes, reports, pull-request bodies) passes it through :func:`redact` first.
What counts as a secret (docs/secrets.md):

- the value of every environment variable whose name says it holds one (:func:`is_secret_name`),
  taken from this process's environment and from each task's ``env`` (:func:`add_env`), and
  the secrets of the ``copy`` files (:func:`file_secrets`);
- the password of a URL (``scheme://user:PASSWORD@host``), and its user name when that is a
  token (``https://TOKEN@host``);
- known credential formats: Anthropic and OpenAI keys, GitHub and GitLab tokens, AWS access
  key ids, Slack tokens, Google API keys, JWTs, private-key blocks;
- ``NAME=value`` / ``NAME: value`` / ``"name": "value"`` where NAME says secret, and the
  credential of ``Bearer x`` / ``Authorization: token x``.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping

REDACTED = "[REDACTED]"
# Literal secret values shorter than this are not replaced everywhere: "1" or "true" would
# mangle every text while protecting nothing.
MIN_SECRET_LEN = 6
# A key-like known value (one word of at least FRAGMENT_OF characters) is also found by its
# first or last FRAGMENT characters: a tool that shortens what it prints (pytest's
# `'sk-ant-api03...6789abcdefXYZ'`) shows both ends of it, neither of them the whole value.
FRAGMENT, FRAGMENT_OF = 12, 24
_KEY_LIKE = re.compile(r"[A-Za-z0-9_\-.+/=~]+")

# A name holds a secret when one of these is in it; AUTH only as a word of its own (OAUTH,
# AUTH_TOKEN, HTTP_AUTH), not in AUTHOR (GIT_AUTHOR_NAME is a person, not a credential); PWD
# only after an underscore (DB_PWD), never the shell's PWD or OLDPWD (a directory); PAT (a
# personal access token: GH_PAT, AZURE_DEVOPS_EXT_PAT) only as a word, not PATH; PASS not
# in BYPASS, PASSTHROUGH, PASSIVE or PASSENGER, nor ASKPASS (the program that asks for one);
# KEY not in KEYRING, KEYBOARD or KEYMAP (PIP_KEYRING_PROVIDER=subprocess names a mode: its
# value redacted would cut the word "subprocess" out of every log).
_SECRET_NAME = re.compile(
    r"KEY(?!RING|BOARD|MAP)|TOKEN|SECRET|(?<!BY)(?<!ASK)PASS(?!THROUGH|IVE|ENGER)|COOKIE"
    r"|CREDENTIAL|PRIVATE|WEBHOOK"
    r"|(?<![A-Z])DSN|_PWD|(?<![A-Z])PAT(?![A-Z])"
    r"|(?<![A-Z])O?AUTH(?!OR)",
    re.IGNORECASE,
)
_KEYWORDS = r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|COOKIE|CREDENTIALS?|PRIVATE"
# Credential formats strong enough to act on anywhere.
_FORMATS = (
    r"-----BEGIN [A-Z ]*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?(?:-----END [A-Z ]*-----|\Z)"
    r"|sk-ant-[A-Za-z0-9_\-]{3,}|\bsk-[A-Za-z0-9_\-]{20,}|\bgh[poursa]_[A-Za-z0-9]{16,}"
    r"|\bgithub_pat_[A-Za-z0-9_]{16,}|\bxox[abposr]-[A-Za-z0-9\-]{10,}"
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b|\bAIza[0-9A-Za-z_\-]{35}|\bglpat-[A-Za-z0-9_\-]{20,}"
)
_JWT = r"\beyJ[A-Za-z0-9_\-]{6,}\.eyJ[A-Za-z0-9_\-]{6,}\.[A-Za-z0-9_\-]*"
# A URL's user info, as URL parsers read it: up to the last `@` before the path (a password
# may hold a raw `@`, and any of RFC 3986's sub-delimiters: `'`), the user up to its first `:`
# (the password may be empty: `https://<token>:@host`). The look for an `@` first: most URLs
# have none, and fail there at once.
_USERINFO = (
    r"(?P<url>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?=[^\s/]*@)(?P<user>[^\s/:\"'<>]*)"
    r"(?::(?P<password>[^\s/\"<>]*))?(?P<at>@)"
)
# A URL's user name that is a token (`https://<40 hex>@github.com/...`, an Azure DevOps PAT):
# one word of this many characters, with a letter and a digit. Not `git`, `x-access-token`,
# `oauth2` or `gitlab-ci-token`, which name how the password is used.
_TOKEN_USER = re.compile(r"(?=[A-Za-z0-9_\-]*[0-9])(?=[A-Za-z0-9_\-]*[A-Za-z])[A-Za-z0-9_\-]{20,}")
# One pass over each text: credential shapes, URL passwords, `Bearer <x>`, `Authorization:
# token <x>`, and NAME=value / NAME: value / "name": "value" where NAME says it holds a secret.
_SHAPES = (
    f"(?P<shape>{_FORMATS}|{_JWT})"
    rf"|{_USERINFO}"
    r"|(?P<scheme>\b(?i:bearer\s+|authorization:\s*(?:token|basic)\s+))[A-Za-z0-9._~+/=\-]{8,}"
    rf"|(?P<kw>(?i:{_KEYWORDS}))(?P<suffix>[A-Za-z0-9_]*)"
    # On the same line: `key=` at a line's end is no setting of the next line's first word.
    r"""(?P<sep>["']?[ \t]*[:=][ \t]*["']?)(?P<value>[^\s"',;}]+)"""
)

# Every match of _SHAPES contains one of these (lowercased).
_TRIGGERS = (
    "-----begin",
    "sk-",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "gha_",
    "github_pat_",
    "xox",
    "akia",
    "asia",
    "aiza",
    "glpat-",
    "eyj",
    "://",  # a URL password: the match starts at the scheme, before this
    "bearer",
    "authorization",
    "token",
    "key",
    "secret",
    "passw",
    "cookie",
    "credential",
    "private",
)


# A setting in a local file: `NAME=value`, `export NAME="value"`, `name: value`, `"name": "value",`.
_SETTING = re.compile(
    r"""^\s*(?:export\s+)?["']?(?P<name>[A-Za-z_][A-Za-z0-9_.\-]*)["']?\s*[:=]\s*"""
    r"""(?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<bare>[^\s#,;]+))""",
    re.MULTILINE,
)
# The user may be empty: `redis://:PASSWORD@cache:6379`.
_URL_USERINFO = re.compile(_USERINFO)


def file_secrets(text: str) -> list[tuple[str, str]]:
    """The secrets a local file (``.env``, YAML, JSON, INI) holds, as ``(name, value)`` pairs.

    A value counts when its name says secret (:func:`is_secret_name`) or it is a URL's
    password, and it looks made up rather than a word: at least 8 characters with a letter and
    a digit, or at least 16 (``POSTGRES_PASSWORD=postgres`` is the name of half a
    docker-compose file, not a secret worth refusing a branch over); and a URL's user name
    that is a key (a known format, or 32 characters or more with a letter and a digit).
    """
    found: list[tuple[str, str]] = []
    for m in _SETTING.finditer(text):
        name, value = m.group("name"), m.group("dq") or m.group("sq") or m.group("bare") or ""
        if is_secret_name(name) and _made_up(value):
            found.append((name, value))
    for m in _URL_USERINFO.finditer(text):
        if _is_key_user(m.group("user")):
            found.append(("a URL's user name (a token)", m.group("user")))
        if _made_up(password := m.group("password") or ""):
            found.append(("a URL's password", password))
    return found


def _is_token_user(user: str) -> bool:
    """Whether a URL's user name *user* may be a credential (a token): hidden where shown."""
    return _TOKEN_USER.fullmatch(user) is not None or _SHAPES_RE.fullmatch(user) is not None


# A local file's URL user name is a secret that refuses a branch from this length on (with a
# letter and a digit), or in a known format: `warehouse_loader_2024` is an account's name.
_KEY_USER_LEN = 32


def _is_key_user(user: str) -> bool:
    """Whether a local file's URL user name *user* is a key (a secret to keep off branches)."""
    if _SHAPES_RE.fullmatch(user) is not None:
        return True
    return len(user) >= _KEY_USER_LEN and _TOKEN_USER.fullmatch(user) is not None


# A local file's value is taken for a credential from this length with a letter and a digit,
# or from the longer one without.
_MADE_UP_MIXED = 8
_MADE_UP_ANY = 16


def _made_up(value: str) -> bool:
    """Whether *value* looks like a generated credential, not a word or a placeholder.

    Blanks count like other characters: a passphrase (`correct horse battery staple`) is one.
    """
    if len(value) < _MADE_UP_MIXED:
        return False
    mixed = any(c.isalpha() for c in value) and any(c.isdigit() for c in value)
    return mixed or len(value) >= _MADE_UP_ANY


def made_up(value: str) -> bool:
    """Whether a secret's *value* looks generated (a key), not a word (``postgres``)."""
    return _made_up(value)


def is_token_user(user: str) -> bool:
    """Whether a URL's user name *user* may be a credential (a token), as the redactor reads it."""
    return _is_token_user(user)


def is_secret_name(name: str) -> bool:
    """Whether an environment variable called *name* holds a secret (API_KEY, GH_TOKEN, ...)."""
    return _SECRET_NAME.search(name) is not None


def secret_settings(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Value -> the first name, of *pairs*' secret-named settings long enough to be secrets.

    A value without the blanks around it: `GITHUB_TOKEN=" ghp_x "` is the token ghp_x to the
    program that reads it, and shows up without them.
    """
    found: dict[str, str] = {}
    for name, value in pairs:
        bare = value.strip()
        if is_secret_name(name) and len(bare) >= MIN_SECRET_LEN:
            found.setdefault(bare, name)
    return found


class Redactor:
    """Replace API keys, tokens and secret environment values with ``[REDACTED]``."""

    def __init__(self, env: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        """Also redact the literal values of *env* variables whose names look secret."""
        pairs = env.items() if isinstance(env, Mapping) else env
        whole = set(secret_settings(pairs))
        # A value of several lines (a PEM key) is found a line at a time too: a log's tail, a
        # live view or a stream redacted line by line holds one line of it, not the whole.
        # Only its lines of one made-up word: not `-----END PRIVATE KEY-----` or a JSON
        # file's `"type": "service_account",`, in every such key (and some files).
        lines = {
            line.strip()
            for value in whole
            if "\n" in value or "\r" in value
            for line in value.splitlines()
            if _KEY_LIKE.fullmatch(line.strip()) and _made_up(line.strip())
        }
        self.values = frozenset(whole | lines)
        # As written, and as a JSON string holds it (agents print JSON: `"` and `\` escaped).
        forms = {f for v in self.values for f in (v, *_json_forms(v))}
        literal = "|".join(map(re.escape, sorted(forms, key=len, reverse=True)))
        self._literal = re.compile(literal) if literal else None
        self._literal_triggers = tuple({_lower(v) for v in forms})
        ends = {
            end
            for v in self.values
            if len(v) >= FRAGMENT_OF and _KEY_LIKE.fullmatch(v)
            for end in (v[:FRAGMENT], v[-FRAGMENT:])
        }
        either = "|".join(map(re.escape, sorted(ends)))
        # From a first or last part on, as far as the word goes.
        self._ends = re.compile(f"(?:{either})[A-Za-z0-9_\\-]*") if either else None
        self._end_triggers = tuple({_lower(v) for v in ends})

    def __call__(self, text: str) -> str:
        """Return *text* with every secret replaced."""
        # The values known first: a `NAME=` match would stop at a `,` or blank inside one
        # (`DB_PASSWORD=ab,cdefgh1234`), take the short piece for prose, and hide the rest.
        if self._literal is not None:
            text = _sweep(text, self._literal, self._literal_triggers, lambda _m: REDACTED)
        if self._ends is not None:
            text = _sweep(text, self._ends, self._end_triggers, lambda _m: REDACTED)
        return _sweep(text, _SHAPES_RE, _TRIGGERS, self._replace)

    def _replace(self, m: re.Match[str]) -> str:
        if m.group("scheme"):
            value = m.group(0)[len(m.group("scheme")) :]
            if value.isalpha() and value.islower():  # prose: "missing bearer authentication"
                return m.group(0)
            return m.group("scheme") + REDACTED
        if m.group("url"):
            user = m.group("user")
            # Git hides a URL's whole user info in its messages: the user name can be a token.
            head = m.group("url") + (REDACTED if _is_token_user(user) else self(user))
            password = m.group("password")
            if password is None:
                return head + m.group("at")
            return head + ":" + (REDACTED if password else "") + m.group("at")
        if m.group("kw") is None:
            return REDACTED
        head = m.group(0)[: m.end("sep") - m.start()]
        # A short value is prose ("token: set GITHUB_TOKEN"), not a credential.
        if _names_secret(m) and not _is_count(m) and len(m.group("value")) >= MIN_SECRET_LEN:
            return head + REDACTED
        # Not a secret's name ("keyboard=", "max_tokens=100"), but the value may hold one.
        return head + self(m.group("value"))


_SHAPES_RE = re.compile(_SHAPES)


def _sweep(
    text: str,
    pattern: re.Pattern[str],
    triggers: Iterable[str],
    replace: Callable[[re.Match[str]], str],
) -> str:
    """*text* with each match of *pattern* at one of its *triggers* replaced, left to right."""
    # Python's regex engine tries every alternative at every position: 3 s per MB of an
    # agent log. Every match starts at a trigger (or at the scheme before "://"), so
    # str.find (in C) finds the few places worth trying and the pattern runs only there.
    low = _lower(text)
    starts: set[int] = set()
    for trigger in triggers:
        at = low.find(trigger)
        while at != -1:
            starts.update(_scheme_starts(low, at) if trigger == "://" else (at,))
            at = low.find(trigger, at + 1)
    if not starts:
        return text
    pieces: list[str] = []
    done = 0
    for at in sorted(starts):
        if at < done:
            continue
        m = pattern.match(text, at)
        if m is None:
            continue
        pieces += [text[done:at], replace(m)]
        done = m.end()
    pieces.append(text[done:])
    return "".join(pieces)


def _json_forms(value: str) -> tuple[str, str]:
    """*value* inside a JSON string: with non-ASCII characters escaped, and without."""
    return json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]


def _lower(text: str) -> str:
    """*text* lowercased character for character: positions in it are positions in *text*.

    ``str.lower`` makes two characters of one ("İ"): every secret after it would be looked
    for one place off, and not found.
    """
    low = text.lower()
    if len(low) == len(text):
        return low
    low = text.replace("\u0130", "I").lower()
    if len(low) == len(text):
        return low
    return "".join(c.lower() if len(c.lower()) == 1 else c for c in text)


def _scheme_starts(low: str, colon: int) -> tuple[int, ...]:
    """Where a URL whose ``://`` is at *colon* may start: the scheme's first letters."""
    start = colon
    while start > 0 and (low[start - 1].isalnum() or low[start - 1] in "+.-"):
        start -= 1
    return tuple(i for i in range(start, colon) if low[i].isalpha())[:3]


def _names_secret(m: re.Match[str]) -> bool:
    """Whether the keyword is a word of the name: API_KEY, apiKey, api-key; not monkey, keyboard."""
    start, word, suffix = m.start("kw"), m.group("kw"), m.group("suffix")
    before = m.string[start - 1] if start else ""
    starts_word = not before.isalnum() or (before.islower() and word[0].isupper())
    return starts_word and (not suffix or suffix[0] in "_0123456789" or suffix.lower() == "s")


def _is_count(m: re.Match[str]) -> bool:
    """``"input_tokens": 1234`` is a count, not a credential."""
    return m.group("suffix").lower().startswith("s") and m.group("value").isdigit()


# -- the process-wide redactor ----------------------------------------------------------------

_lock = threading.Lock()
_extra: dict[str, str] = {}
_current: Redactor | None = None


def current() -> Redactor:
    """The redactor of this process: its environment plus every :func:`add_env` pair."""
    global _current  # noqa: PLW0603 - one cache per process, rebuilt when secrets are added
    with _lock:
        if _current is None:
            _current = Redactor([*os.environ.items(), *_extra.items()])
        return _current


def add_env(pairs: Iterable[tuple[str, str]]) -> None:
    """From now on also redact the values of *pairs* (a task's ``env``) whose names say secret."""
    global _current  # noqa: PLW0603
    with _lock:
        fresh = {f"{name}\0{value}": value for name, value in pairs if is_secret_name(name)}
        if fresh.keys() - _extra.keys():
            _extra.update(fresh)
            _current = None


def redact(text: str) -> str:
    """*text* with every secret replaced (see the module docstring)."""
    return current()(text)


def redact_bytes(data: bytes) -> bytes:
    """*data* (a log's bytes, UTF-8 or not) with every secret replaced."""
    text = data.decode("utf-8", errors="surrogateescape")
    return redact(text).encode("utf-8", errors="surrogateescape")


def redact_data(value: object) -> object:
    """A JSON-like value with every string in it redacted (keys stay)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list | tuple):
        return [redact_data(v) for v in value]
    if isinstance(value, dict):
        return {k: redact_data(v) for k, v in value.items()}
    return value
