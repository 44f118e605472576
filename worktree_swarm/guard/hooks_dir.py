"""Where git looks for hooks outside the git dir: the directories ``core.hooksPath`` names.

And the names of the hooks git runs, looked up one by one in such a directory while it
refuses its listing (the surface read, surface.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from worktree_swarm.git import repo as git

# The hooks git runs, by name (githooks(5)): looked up one by one in a directory not listed.
HOOK_NAMES = (
    "applypatch-msg", "pre-applypatch", "post-applypatch", "pre-commit", "pre-merge-commit",
    "prepare-commit-msg", "commit-msg", "post-commit", "pre-rebase", "post-checkout",
    "post-merge", "pre-push", "pre-receive", "update", "proc-receive", "post-receive",
    "post-update", "reference-transaction", "push-to-checkout", "pre-auto-gc", "post-rewrite",
    "sendemail-validate", "fsmonitor-watchman", "p4-changelist", "p4-prepare-changelist",
    "p4-post-changelist", "p4-pre-submit", "post-index-change",
)  # fmt: skip


def hooks_paths(root: Path, linked: Iterable[Path] = ()) -> tuple[Path, ...]:
    """The directories ``core.hooksPath`` names, when it is set: one, or one per checkout.

    A relative value is taken in the checkout git runs in: in *root* and in each of your
    *linked* worktrees (`core.hooksPath = .husky/_`, an ignored directory of each). The git
    runner passes ``-c core.hooksPath=/dev/null`` to every command, so the value asked for is
    the last one set in a config file, not on the command line.
    """
    out = git.git(root, "config", "--show-scope", "--get-all", "core.hooksPath", check=False)
    values = [
        value for scope, _, value in (line.partition("\t") for line in out.splitlines())
        if scope != "command"
    ]  # fmt: skip
    if not values or not values[-1]:
        return ()
    named = Path(values[-1]).expanduser()
    if named.is_absolute():
        return (named,)
    return tuple(checkout / named for checkout in (root, *linked))
