"""Where a push of swarm's lands: the repository that receives it runs none of its programs.

A push to a path (or ``file://``) starts ``git receive-pack`` in the receiving repository,
under that repository's config and hooks: the ``-c`` overrides of swarm's own git do not
reach it (git clears them for another repository). An agent that points a remote's ``url``
or ``pushurl``, or a ``url.<base>.insteadOf``, at a repository of its making would have that
repository's hooks (``pre-receive``, ``post-receive`` ...) run by swarm's push (`swarm pr`).
So a push that git sends to a path names a receive-pack run with the overrides
(:data:`RECEIVE_PACK`), and any other push is refused the file transport: a redirect planted
after swarm looked where the push goes fails instead of reaching such a repository.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from worktree_swarm.git.config_overrides import ALWAYS
from worktree_swarm.git.process import execute

# What the receiving repository could still run: `gc --auto` after the push, a worktree
# updated in place (`updateInstead`, which runs its filters), the command that lists its
# alternates' refs. `true` lists none.
_RECEIVING = (
    ("receive.autogc", "false"),
    ("receive.denyCurrentBranch", "refuse"),
    ("core.alternateRefsCommand", "true"),
    # Hooks its config defines (git 2.54 on), which core.hooksPath leaves on: per event (2.55).
    *(
        (f"hook.{event}.enabled", "false")
        for event in (
            "pre-receive", "update", "proc-receive", "post-receive", "post-update",
            "reference-transaction", "push-to-checkout", "pre-auto-gc",
        )
    ),
)  # fmt: skip
_SETTINGS = [arg for key, value in (*ALWAYS, *_RECEIVING) for arg in ("-c", f"{key}={value}")]
RECEIVE_PACK = shlex.join(["git", *_SETTINGS, "receive-pack"])
FILE_TRANSPORT_OFF = ("-c", "protocol.file.allow=never")
# A push's options that take their value as the next argument (swarm's own use `--opt=value`).
_VALUED = frozenset({"-o", "--push-option", "--repo", "--receive-pack", "--exec"})


def destination(args: Sequence[str]) -> str | None:
    """The repository a push's *args* (after ``push``) name: a remote's name, a URL or a path."""
    skip = False
    for i, arg in enumerate(args):
        if skip:
            skip = False
        elif arg == "--":
            return args[i + 1] if i + 1 < len(args) else None
        elif arg in _VALUED:
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def is_local(url: str) -> bool:
    """Whether git reaches *url* through the file transport: a path, or a ``file://`` URL.

    As git tells: no ``://``, and no ``:`` before the first ``/`` (``host:path`` is ssh).
    """
    if url.lower().startswith("file://"):
        return True
    return "://" not in url and ":" not in url.split("/", 1)[0]


def push_urls(cwd: Path, name: str) -> list[str]:
    """Where a push in *cwd* to *name* goes, git's rewriting of URLs applied.

    A remote's push URLs (``remote get-url --push --all``), else *name* as a URL is rewritten
    (``ls-remote --get-url``). Only config is read: no hook or driver runs, nothing is contacted.
    """
    out = execute(cwd, ["remote", "get-url", "--push", "--all", "--", name], check=False)
    if out.returncode != 0:
        out = execute(cwd, ["ls-remote", "--get-url", "--", name], check=False)
    return [line for line in out.stdout.splitlines() if line] or [name]


def hardening(cwd: Path, args: Sequence[str]) -> tuple[list[str], tuple[str, ...]]:
    """For a push of *args* (after ``push``) in *cwd*: its added options, and git's ``-c``s.

    Any URL git sends it to a path: ``--receive-pack`` with the overrides (a planted
    ``receivepack`` is ignored then); else the file transport is refused.
    """
    name = destination(args)
    if name is not None and any(is_local(url) for url in push_urls(cwd, name)):
        return [f"--receive-pack={RECEIVE_PACK}"], ()
    return [], FILE_TRANSPORT_OFF
