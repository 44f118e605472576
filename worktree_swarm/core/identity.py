"""Commit identities: the one ``Name <email>`` form swarm accepts and how it splits."""

from __future__ import annotations

import re
from dataclasses import dataclass

# One line, a name, a space, then <email>; each with a character git does not strip from an
# identity (it refuses a name of only blanks and `.,:;"'\`: every commit would fail).
_KEPT = r"[^<>\s.,:;\"'\\]"
_AUTHOR_RE = re.compile(rf"(?P<name>[^<>\n]*{_KEPT}[^<>\n]*) <(?P<email>[^<>\s]*{_KEPT}[^<>\s]*)>")


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    """A commit author or committer."""

    name: str
    email: str


def parse_author(text: str) -> Identity | None:
    """*text* (``Name <email>``) as an Identity, or None when it is not of that form."""
    match = _AUTHOR_RE.fullmatch(text)
    if match is None:
        return None
    return Identity(name=match["name"].strip(), email=match["email"])
