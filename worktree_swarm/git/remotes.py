"""Remotes: their URLs (credentials found, and kept out of what is shown) and their branches.

A push's remote-tracking ref, the tips a remote has of branches, and branches deleted there
while still at the commit expected, on plain `git`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from worktree_swarm.git import runner
from worktree_swarm.git.repo import Repo, git
from worktree_swarm.infra import redact

# Up to the last `@` before the path, as URL parsers read it (a password may hold a raw `@`).
_USERINFO_RE = re.compile(r"(?<=://)[^/\s]*@")


def tracking_ref(repo: Repo, remote: str, ref: str) -> str | None:
    """The remote-tracking ref a push of *ref* to the remote named *remote* updates, if any.

    git maps it through the remote's fetch refspecs (``refs/heads/*:refs/remotes/origin/*``);
    a URL, or a remote without such a refspec, has none.
    """
    specs = git(repo.root, "config", "--get-all", f"remote.{remote}.fetch", check=False)
    for spec in specs.splitlines():
        src, _, dst = spec.strip().removeprefix("+").partition(":")
        head, star, tail = src.partition("*")
        if not star:
            if src == ref and dst:
                return dst
        elif ref.startswith(head) and ref.endswith(tail) and len(ref) >= len(head + tail):
            return dst.replace("*", ref[len(head) : len(ref) - len(tail)], 1)
    return None


def strip_userinfo(url: str) -> str:
    """*url* without ``user:password@``, as git shows a remote's URL (the user can be a token)."""
    return _USERINFO_RE.sub("", url)


def holds_credentials(url: str) -> bool:
    """Whether *url*'s user info holds a password, or a user name that is a token.

    A name (``ssh://git@host``, ``https://alice@host``) is no credential.
    """
    found = _USERINFO_RE.search(url)
    if found is None:
        return False
    user, _, password = found.group(0).removesuffix("@").partition(":")
    return bool(password) or redact.is_token_user(user)


def remote_location(repo: Repo, remote: str) -> str:
    """What *remote* (a remote's name, else a URL or a path) fetches from, as the nodes see it.

    A path is made absolute (relative ones are to the repository root); nothing is contacted.
    """
    out = git(repo.root, "remote", "get-url", "--", remote, check=False).strip()
    url = out or remote
    if "://" not in url and ":" not in url.split("/", 1)[0]:
        url = str((repo.root / url).resolve())
    return url


def remote_tips(repo: Repo, url: str, branches: Sequence[str]) -> dict[str, str]:
    """The tips *url* has of *branches* (those it does not have are left out).

    Raises CommandError when it cannot be reached.
    """
    wanted = {f"refs/heads/{branch}": branch for branch in branches}
    out = git(repo.root, "ls-remote", "--heads", "--", url, *wanted)
    tips = {}
    for line in out.splitlines():
        sha, _, ref = line.partition("\t")
        if ref in wanted:  # a pattern matches any ref ending in it: only the exact ones
            tips[wanted[ref]] = sha
    return tips


def delete_remote_branches(repo: Repo, url: str, leases: Mapping[str, str]) -> dict[str, str]:
    """Delete each branch of *leases* on *url* that is still at its commit there.

    *leases* maps a branch to the commit it is expected at: one push with a
    ``--force-with-lease`` per branch, so a branch someone moved meanwhile stays. Returns
    ``{branch: ""}`` for each one deleted and ``{branch: why not}`` for the others (git's own
    words: a push the remote refused, or one that could not reach it).
    """
    refs = {f"refs/heads/{branch}": branch for branch in leases}
    res = runner.run(
        repo.root,
        "push", "--porcelain", "--no-verify",
        *(f"--force-with-lease=refs/heads/{branch}:{sha}" for branch, sha in leases.items()),
        "--", url, *(f":{ref}" for ref in refs),
        check=False,
    )  # fmt: skip
    done: dict[str, str] = {}
    for line in res.stdout.splitlines():
        flag, _, rest = line.partition("\t")
        spec, _, summary = rest.partition("\t")
        branch = refs.get(spec.removeprefix(":"))
        if branch is not None:
            done[branch] = "" if flag == "-" else summary.strip() or "refused"
    errors = [line for line in res.stderr.splitlines() if line.strip()]
    failed = next((line for line in errors if line.startswith(("fatal:", "error:"))), "")
    why = (failed or (errors[0] if errors else f"git push exited {res.returncode}")).strip()
    return {branch: done.get(branch, why) for branch in leases}
