"""worktree-swarm: parallel coding agents, each in its own git worktree and branch."""

from __future__ import annotations

__version__ = "0.1.0"
