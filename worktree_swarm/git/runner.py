"""The one git runner: every git command swarm runs for itself goes through :func:`run`.

Each command is one :func:`subprocess.run` (no shell, stdin closed, messages in English)
with ``-c`` overrides that switch off what a repository's own files could make git execute
(hooks, fsmonitor, filter/diff/merge drivers, signing, transport commands), so an agent that
plants config in the repository cannot run code through swarm's checkpoints, scans or
merges; nor, where a push lands, the receiving repository's (:mod:`.push_target`). The
overrides are :mod:`worktree_swarm.git.config_overrides`; starting git and reading its
output, :mod:`worktree_swarm.git.process`; object reads through one hardened ``cat-file
--batch``, :mod:`worktree_swarm.git.object_reader`. docs/guard.md lists them.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from worktree_swarm.git import push_target
from worktree_swarm.git.config_overrides import (
    NO_LAZY_FETCH,
    PACK_KEYS,
    PACK_OPTIONS,
    PACK_TRANSPORTS_OFF,
    lazy_fetches,
    overrides,
    planted_packs,
)
from worktree_swarm.git.process import execute, execute_bytes, subcommand


def hardened(
    cwd: Path, args: Sequence[str], env: Mapping[str, str] | None
) -> tuple[list[str], int, dict[str, str]]:
    """The argv to run, where the command as asked starts in it (for error messages), the env."""
    at = subcommand(args)
    receiving: list[str] = []
    transports: tuple[str, ...] = ()
    if at is not None:
        added = []
        # An empty diff.external breaks `git diff`, so the external diff is refused per command.
        if args[at] in _PATCH_COMMANDS:  # and no colour, whatever color.diff says
            added += ["--no-ext-diff", "--no-textconv", "--no-color"]
        # Looking inside a populated submodule (or a repository an agent made and added) starts
        # git there, under that repository's own config, which these overrides do not cover.
        if args[at] in _WORKTREE_COMMANDS:
            added.append("--ignore-submodules=dirty")
        if args[at] == "push":  # the receiving repository's hooks, where git sends it
            receiving, transports = push_target.hardening(cwd, args[at + 1 :])
            added += receiving
        if args[at] in PACK_OPTIONS and not receiving:
            leaf, option = PACK_OPTIONS[args[at]]
            if leaf in planted_packs(cwd):
                added.append(f"{option}={PACK_KEYS[leaf]}")
        args = [*args[: at + 1], *added, *args[at + 1 :]]
    prefix, values = overrides(cwd)
    prefix = [*prefix, *transports]
    if NO_LAZY_FETCH in values and (
        at is None or args[at] not in PACK_OPTIONS or lazy_fetches(cwd)
    ):  # a lazy fetch, in a git that ignores the variable
        prefix = [*prefix, *PACK_TRANSPORTS_OFF]
    if at is not None and args[at] in _LINE_DIFF_COMMANDS:
        prefix = [*prefix, "-c", f"core.bigFileThreshold={BIG_FILE}"]
    return [*prefix, *args], len(prefix), {**(env or {}), **values}


# git's core.bigFileThreshold (512m by default) for swarm's diffs, logs and stats: a file past
# it is binary to them, never loaded to count or show its lines. An agent's sparse or
# repetitive file of gigabytes costs it no disk and its branch a few KiB, while `diff
# --numstat` of a 500 MB text file held 11 GB (up to 8 run at once). Not for merges, packs or
# pushes: those keep git's own threshold (deltas of big files, line merges).
BIG_FILE = "16m"
_PATCH_COMMANDS = frozenset({"diff", "log", "show"})
_LINE_DIFF_COMMANDS = frozenset({*_PATCH_COMMANDS, "diff-tree"})
_WORKTREE_COMMANDS = frozenset({"status", "diff"})


def run(
    cwd: Path,
    *args: str,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    input_text: str | None = None,
    stop: threading.Event | None = None,
    tied: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run ``git *args`` in *cwd*, hardened, with stdout/stderr as text.

    Raises CommandError when *check* and git exits non-zero, GitError when *cwd* is unusable,
    BadInputError when git is missing, StoppedError when *stop* is set before git ends.
    *tied*: git is sent SIGTERM if this process dies meanwhile.
    """
    data = None if input_text is None else as_bytes(input_text)
    argv, shown_from, full_env = hardened(cwd, args, env)
    return execute(
        cwd,
        argv,
        check=check,
        env=full_env,
        input_bytes=data,
        shown_from=shown_from,
        stop=stop,
        tied=tied,
    )


def run_names(
    cwd: Path,
    *args: str,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    input_text: str | None = None,
    stop: threading.Event | None = None,
) -> subprocess.CompletedProcess[str]:
    """Like :func:`run` (*stop* too), its output read as file names are (:func:`os.fsdecode`).

    For output that names files (``-z`` listings, ``add --verbose``): each name keeps its
    bytes, so it opens its file and goes back to git as it came, in any locale (read as UTF-8,
    a name Latin-1 cannot spell, ``文档.md``, named no file there). Show one with
    :func:`core.text.path_text`.
    """
    data = None if input_text is None else as_bytes(input_text)
    res = run_bytes(cwd, *args, check=check, env=env, input_bytes=data, stop=stop)
    return subprocess.CompletedProcess(
        res.args, res.returncode, os.fsdecode(res.stdout), os.fsdecode(res.stderr)
    )


def as_bytes(text: str) -> bytes:
    """*text* (a file name as :func:`run_names` reads it, or swarm's own) as git gets it.

    A name keeps its bytes (:func:`os.fsencode`); text the locale's encoding cannot spell
    never came from a file name, and goes as UTF-8 (surrogates as the bytes they hold).
    """
    try:
        return os.fsencode(text)
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape")


def run_bytes(
    cwd: Path,
    *args: str,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    input_bytes: bytes | None = None,
    stop: threading.Event | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Like :func:`run` (*stop* too), with stdout and stderr as bytes (blobs, -z listings)."""
    argv, shown_from, full_env = hardened(cwd, args, env)
    return execute_bytes(
        cwd,
        argv,
        check=check,
        env=full_env,
        input_bytes=input_bytes,
        shown_from=shown_from,
        stop=stop,
    )


def run_into(cwd: Path, out: IO[bytes], *args: str, input_text: str | None = None) -> None:
    """Like :func:`run` (checked), with git's stdout written to *out* (a pack of any size)."""
    data = None if input_text is None else as_bytes(input_text)
    argv, shown_from, full_env = hardened(cwd, args, None)
    execute_bytes(
        cwd, argv, check=True, env=full_env, input_bytes=data, shown_from=shown_from, stdout=out
    )
