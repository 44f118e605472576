"""The GitHub client's errors: a request refused or failed, a rate limit, an API that is silent."""

from __future__ import annotations

from worktree_swarm.core.errors import SwarmError


class GitHubError(SwarmError):
    """The GitHub API refused or failed a request; ``status`` is the HTTP status (0: no reply)."""

    def __init__(self, message: str, *, status: int = 0, moved_to: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.moved_to = moved_to  # a redirect's Location (redacted, one line)


class RateLimitError(GitHubError):
    """GitHub asks for a wait longer than the client is allowed to sleep."""


class UnreachableError(GitHubError):
    """The API did not answer (in time, or at all): no later request is worth its wait."""


class DroppedError(UnreachableError):
    """The connection was refused, or (a request that changes nothing) dropped: tried again."""
