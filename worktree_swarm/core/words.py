"""Small wording helpers shared by every text output."""

from __future__ import annotations


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 file``, ``2 files`` (*many* when the plural is not *word* + ``s``)."""
    return f"{n} {word}" if n == 1 else f"{n} {many or word + 's'}"


# The heading of the shared-findings paragraph appended to every agent's prompt (the scripted
# agent tells its own prompt from it).
FINDINGS_HEADING = "## Shared findings"
