"""Find what must never leave a branch: ``copy`` files and known credentials in its history.

``swarm pr`` asks before each push, ``swarm merge`` before each merge. Every commit the push
would send (``base..tip``, merges aside: their content comes from commits that are scanned)
is looked at, not only the tip: a key committed and deleted again is still in the history
GitHub receives.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import PurePosixPath

from worktree_swarm.core.text import path_text
from worktree_swarm.git import repo as git
from worktree_swarm.git.object_reader import ObjectReader
from worktree_swarm.infra import redact

# Blobs larger than this are scanned by their first bytes only (a key file is small).
SCAN_LIMIT = 8 * 2**20

_KINDS = (
    ("a private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY(?: BLOCK)?-----")),
    ("an Anthropic API key", re.compile(r"sk-ant-[A-Za-z0-9_\-]{8,}")),
    ("an OpenAI API key", re.compile(r"\bsk-[A-Za-z0-9_\-]{20,}")),
    ("a GitHub token", re.compile(r"\bgh[poursa]_[A-Za-z0-9]{16,}|\bgithub_pat_[A-Za-z0-9_]{16,}")),
    ("a GitLab token", re.compile(r"\bglpat-[A-Za-z0-9_\-]{20,}")),
    ("an AWS access key id", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("a Slack token", re.compile(r"\bxox[abposr]-[A-Za-z0-9\-]{10,}")),
    ("a Google API key", re.compile(r"\bAIza[0-9A-Za-z_\-]{35}")),
)
_SHA_RE = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Leak:
    """A file (or the message) of a commit that must not leave the machine, and why."""

    path: str
    commit: str
    why: str

    def __str__(self) -> str:
        """One line naming the file (as git quotes it, redacted: a name can be the secret)."""
        return f"{redact.redact(path_text(self.path))} (commit {self.commit[:12]}) {self.why}"


def find_leak(
    repo: git.Repo,
    *,
    base: str | None,
    tip: str,
    copy_globs: Sequence[str],
    local_secrets: Sequence[tuple[str, str]] = (),
) -> Leak | None:
    """The first ``copy`` file or credential in the commits ``base..tip``, or None.

    Credentials are looked for in file contents, file names and commit objects (messages,
    authors, committers, any other header): known
    formats, the values of secret environment variables and *local_secrets*, ``(where,
    value)`` pairs such as the secrets of the ``copy`` files (copied under another name, a
    ``.env`` value is on the branch all the same).

    Without *base*, every commit reachable from *tip* is looked at.
    """
    env_values = [value for value in redact.current().values if redact.made_up(value)]
    secrets = dict.fromkeys(env_values, "the value of a secret environment variable")
    secrets |= {value: f"the value of {where} (a copy file)" for where, value in local_secrets}
    with contextlib.closing(_leaks(repo, base, tip, copy_globs, secrets, _KINDS)) as found:
        return next(found, None)


def value_leaks(
    repo: git.Repo, *, base: str | None, tip: str, secrets: Mapping[str, str]
) -> list[Leak]:
    """The first file (or commit object) of each commit of ``base..tip`` holding one of *secrets*.

    *secrets*: value -> what it is (``the value of ANTHROPIC_API_KEY``); exact values only,
    no known format: what an attempt's own commits hold of the run's environment.
    """
    if not secrets:
        return []
    by_commit: dict[str, Leak] = {}
    with contextlib.closing(_leaks(repo, base, tip, (), secrets, ())) as found:
        for leak in found:
            by_commit.setdefault(leak.commit, leak)
    return list(by_commit.values())


def _leaks(
    repo: git.Repo,
    base: str | None,
    tip: str,
    copy_globs: Sequence[str],
    secrets: Mapping[str, str],
    kinds: Sequence[tuple[str, re.Pattern[str]]],
) -> Generator[Leak]:
    """Every ``copy`` file, then every credential (*kinds*, *secrets*) in ``base..tip``."""
    out = git.git(
        # A merge's own content (a resolution, a file neither parent has) is what differs
        # from every parent: what `--diff-merges=combined` lists.
        repo.root, "log", "--diff-merges=combined", "--reverse", "--raw", "-z", "--no-renames",
        "--no-abbrev", "--format=%H", "--end-of-options", f"{base}..{tip}" if base else tip, "--",
    )  # fmt: skip
    changed = _parse_raw(out)
    for commit, path, _blob in changed:
        pattern = matching_glob(path, copy_globs)
        if pattern is not None:
            yield Leak(path=path, commit=commit, why=f"matches copy pattern {pattern!r}")
    with ObjectReader(repo.root) as objects:  # one `cat-file` for every blob
        for commit, path, blob in changed:
            # A file named after a key is pushed with its name.
            why = _credential(path, secrets, kinds)
            if why is not None:
                yield Leak(path=path, commit=commit, why=f"is named after {why}")
                continue
            # Bytes, not text: a binary file (a DER key, a keystore) must not stop the scan.
            # Only its head is read into memory: a sparse 1 GiB file costs the agent nothing.
            head = objects.read(blob, limit=SCAN_LIMIT).decode("utf-8", "surrogateescape")
            why = _credential(head, secrets, kinds)
            if why is not None:
                yield Leak(path=path, commit=commit, why=f"holds {why}")
        # The commit objects as stored: their messages, and their author, committer and any
        # other header line (an agent can write a commit with a header of its own).
        commits = git.git(
            repo.root, "rev-list", "--end-of-options", f"{base}..{tip}" if base else tip, "--"
        ).split()
        for commit in commits:
            raw = objects.read(commit).decode("utf-8", "surrogateescape")  # all of it, as pushed
            headers, _, message = raw.partition("\n\n")
            for part, text in (
                ("its message", message),
                ("its author, committer or headers", headers),
            ):
                why = _credential(text, secrets, kinds)
                if why is not None:
                    yield Leak(path=part, commit=commit, why=f"holds {why}")


def matching_glob(path: str, globs: Sequence[str]) -> str | None:
    """The first of *globs* that matches *path* or a directory above it (``copy`` semantics)."""
    parts = PurePosixPath(path).parts
    for pattern in globs:
        wanted = PurePosixPath(pattern).parts
        if any(_match(parts[:n], wanted) for n in range(1, len(parts) + 1)):
            return pattern
    return None


def _match(parts: Sequence[str], wanted: Sequence[str]) -> bool:
    """Whether path *parts* match glob *wanted* segment by segment (``**``: any depth)."""
    if not wanted:
        return not parts
    if wanted[0] == "**":
        return any(_match(parts[i:], wanted[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatchcase(parts[0], wanted[0]) and _match(parts[1:], wanted[1:])


def _parse_raw(out: str) -> list[tuple[str, str, str]]:
    """``(commit, path, new blob)`` of each added or modified file in ``log --raw -z``."""
    found: list[tuple[str, str, str]] = []
    fields = out.split("\0")
    commit = ""
    i = 0
    while i < len(fields):
        field = fields[i].strip("\n")
        i += 1
        if _SHA_RE.fullmatch(field):
            commit = field
        elif field.startswith(":"):
            # One colon, mode and blob per parent (a merge's combined form), then the new ones.
            parents = len(field) - len(field.lstrip(":"))
            meta, path = field.lstrip(":").split(), fields[i]
            i += 1
            new_mode, blob = meta[parents], meta[2 * parents + 1]
            # Submodules (160000) have no blob here; deletions (000000) add nothing.
            if new_mode not in {"000000", "160000"}:
                found.append((commit, path, blob))
    return found


def _credential(
    text: str, secrets: Mapping[str, str], kinds: Sequence[tuple[str, re.Pattern[str]]]
) -> str | None:
    """What credential *text* holds: one of *kinds* (known formats), or of *secrets*."""
    for what, pattern in kinds:
        if pattern.search(text):
            return what
    return next((what for value, what in secrets.items() if value in text), None)
