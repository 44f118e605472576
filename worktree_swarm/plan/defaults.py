"""`swarm plan`'s defaults, one place for each: its help shows them, the library applies them."""

from __future__ import annotations

DEFAULT_MODEL = "claude-sonnet-5-5"
DEFAULT_MAX_TASKS = 8
MAX_TASKS = 50  # the most tasks --max-tasks allows
