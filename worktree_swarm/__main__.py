"""``python -m worktree_swarm``: the `swarm` command, as the entry point runs it."""

from __future__ import annotations

import sys

from worktree_swarm.cli import main

if __name__ == "__main__":
    sys.exit(main())
