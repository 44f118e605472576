"""Redaction of API keys, tokens and secret environment values from text meant for people."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

REDACTED = "[REDACTED]"
# Literal secret values shorter than this are not replaced everywhere: "1" or "true" would
# mangle every text while protecting nothing.
MIN_SECRET_LEN = 6

_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD", re.IGNORECASE)
# One pass over each text: well-known credential shapes, `Bearer <x>`, `Authorization: token <x>`,
# and NAME=value / NAME: value / "name": "value" where NAME says it holds a secret.
_SHAPES = (
    r"(?P<shape>sk-ant-[A-Za-z0-9_\-]{8,}|\bsk-[A-Za-z0-9_\-]{20,}|\bgh[poursa]_[A-Za-z0-9]{16,}"
    r"|\bgithub_pat_[A-Za-z0-9_]{16,}|\bxox[abposr]-[A-Za-z0-9\-]{10,}|\bAKIA[0-9A-Z]{16}\b)"
    r"|(?P<scheme>\b(?i:bearer\s+|authorization:\s*token\s+))[A-Za-z0-9._~+/=\-]{8,}"
    r"|(?P<kw>(?i:KEY|TOKEN|SECRET|PASSWORD|PASSWD))(?P<suffix>[A-Za-z0-9_]*)"
    r"""(?P<sep>["']?\s*[:=]\s*["']?)(?P<value>[^\s"',;}]+)"""
)

# Every match of _SHAPES contains one of these (lowercased).
_TRIGGERS = (
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
    "bearer",
    "token",
    "key",
    "secret",
    "passw",
)


class Redactor:
    """Replace API keys, tokens and secret environment values with ``[REDACTED]``."""

    def __init__(self, env: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        """Also redact the literal values of *env* variables whose names look secret."""
        pairs = env.items() if isinstance(env, Mapping) else env
        values = {
            value
            for name, value in pairs
            if _SECRET_NAME.search(name) and len(value) >= MIN_SECRET_LEN
        }
        literal = "|".join(map(re.escape, sorted(values, key=len, reverse=True)))
        self._pattern = re.compile(f"(?P<literal>{literal})|{_SHAPES}" if literal else _SHAPES)
        self._triggers = (*_TRIGGERS, *{v.lower() for v in values})

    def __call__(self, text: str) -> str:
        """Return *text* with every secret replaced."""
        # Python's regex engine is slow on long texts with alternations; substring tests in
        # C skip the (usual) texts that hold nothing that could be a secret.
        low = text.lower()
        if not any(trigger in low for trigger in self._triggers):
            return text
        return self._pattern.sub(self._replace, text)

    def _replace(self, m: re.Match[str]) -> str:
        if m.group("scheme"):
            return m.group("scheme") + REDACTED
        if m.group("kw") is None:
            return REDACTED
        head = m.group(0)[: m.end("sep") - m.start()]
        if _names_secret(m) and not _is_count(m):
            return head + REDACTED
        # Not a secret's name ("keyboard=", "max_tokens=100"), but the value may hold one.
        return head + self(m.group("value"))


def _names_secret(m: re.Match[str]) -> bool:
    """Whether the keyword is a word of the name: API_KEY, apiKey, api-key; not monkey, keyboard."""
    start, word, suffix = m.start("kw"), m.group("kw"), m.group("suffix")
    before = m.string[start - 1] if start else ""
    starts_word = not before.isalnum() or (before.islower() and word[0].isupper())
    return starts_word and (not suffix or suffix[0] in "_0123456789" or suffix.lower() == "s")


def _is_count(m: re.Match[str]) -> bool:
    """``"input_tokens": 1234`` is a count, not a credential."""
    return m.group("suffix").lower().startswith("s") and m.group("value").isdigit()
