"""Git config read and written without a process per key, and the commit identity."""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from pathlib import Path

from worktree_swarm.core.errors import BadInputError
from worktree_swarm.core.identity import parse_author
from worktree_swarm.git.repo import git


def config_values(root: Path, keys: Collection[str]) -> dict[str, str]:
    """What git config says of each of *keys* (lower-case, no subsection) in *root*, if set.

    The last value set wins, as with ``git config --get``; one git process for all of them.
    """
    out = git(root, "config", "--list", "-z", check=False)
    found = {}
    for entry in out.split("\0"):
        name, _, value = entry.partition("\n")
        if name.lower() in keys:
            found[name.lower()] = value
    return found


def config_path(root: Path, key: str, value: str) -> str:
    """*value*, the path setting *key*'s, expanded as ``git config --path`` does (``~``)."""
    if value.startswith("%("):  # relative to git's own prefix: git knows where it is
        return git(root, "config", "--path", "--get", key, check=False).strip()
    return str(Path(value).expanduser()) if value.startswith("~") else value


def user_identity(root: Path) -> str | None:
    """The user's ``Name <email>`` as git config resolves it in *root*, or None when unset.

    An agent CLI that commits itself uses this identity, so swarm's checkpoints do too: as for
    git, ``GIT_AUTHOR_NAME`` / ``GIT_AUTHOR_EMAIL`` in swarm's environment beat the config.
    """
    found = config_values(root, {"user.name", "user.email"})
    name = (os.environ.get("GIT_AUTHOR_NAME") or found.get("user.name", "")).strip()
    email = (os.environ.get("GIT_AUTHOR_EMAIL") or found.get("user.email", "")).strip()
    author = f"{name} <{email}>"
    if not name or not email or parse_author(author) is None:
        return None
    return author


def identity_env(author: str) -> dict[str, str]:
    """Environment making *author* (``Name <email>``) both author and committer."""
    identity = parse_author(author.strip())
    if identity is None:
        raise BadInputError(f"author {author!r} is not of the form `Name <email>`")
    name, email = identity.name, identity.email
    # Environment variables beat -c user.name: a user's GIT_AUTHOR_* must not leak in.
    return {
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": name,
        "GIT_COMMITTER_EMAIL": email,
    }


def write_config_file(path: Path, items: Mapping[str, str]) -> None:
    """Write a git config file of ``section[.subsection].name = value`` items, without git.

    One file per task would otherwise cost a `git config` process per key. Values are always
    quoted and escaped, so no value can start a section or a comment.
    """
    sections: dict[tuple[str, str | None], list[str]] = {}
    for key, value in items.items():
        section, _, rest = key.partition(".")
        sub, _, name = rest.rpartition(".")
        if not section or not name or "\n" in key:
            raise ValueError(f"not a git config key: {key!r}")
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        sections.setdefault((section, sub or None), []).append(f'\t{name} = "{escaped}"')
    text = ""
    for (section, subsection), rows in sections.items():
        head = f"[{section}]"
        if subsection is not None:
            head = f'[{section} "{_escape_sub(subsection)}"]'
        text += head + "\n" + "\n".join(rows) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _escape_sub(sub: str) -> str:
    return sub.replace("\\", "\\\\").replace('"', '\\"')
