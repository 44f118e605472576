"""The GitHub client swarm uses: the endpoints `swarm pr` and `swarm run --issues` call.

Pull requests found, opened, updated and read, issues read and listed page by page, the access
checked before any push; :func:`connect` validates everything (URL, proxy, repository, token)
before the first request. The requests themselves, their waits and errors: ``session``.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from worktree_swarm.core.errors import BadInputError
from worktree_swarm.git import repo as git
from worktree_swarm.github.access import api_url_from, parse_slug, resolve_token, slug_from_remote
from worktree_swarm.github.errors import GitHubError, RateLimitError
from worktree_swarm.github.proxy import proxy_for
from worktree_swarm.github.session import MOVED, OnWait, Session

# Issues and pull requests share one sequence of numbers; none is this far (a task id, a
# branch and the store's 64-bit integers hold it).
MAX_NUMBER = 10**9


@dataclass(slots=True, kw_only=True)
class Client(Session):
    """GitHub REST for one repository; safe to share between threads (requests are serial).

    *max_wait* bounds a single rate-limit wait (longer waits raise RateLimitError instead of
    sleeping for an hour); *secondary_wait* is the first back-off on a secondary rate limit
    that names no wait, doubled on each retry (GitHub asks for at least a minute). *timeout*
    bounds each wait for bytes, *deadline* a whole request: a server (or proxy) that sends a
    byte now and then would hold it for ever under *timeout* alone. *drop_waits*: the waits
    before each new try of a request refused, or (one that changes nothing) dropped, by an
    API that answered before. *proxy*: the one to go through (:func:`connect` reads it from
    the environment); none, a direct connection.
    """

    # -- endpoints used by swarm --------------------------------------------------------------

    def check_access(self) -> None:
        """Refuse a token GitHub rejects, or a repository it cannot see, before any push.

        Raises BadInputError for 401, 403 and 404, and GitHubError for an API that does not
        answer at all (or errs): nothing is worth pushing then.
        """
        try:
            self.request("GET", self._repo_path("pulls"), params={"state": "open", "per_page": "1"})
        except RateLimitError:
            raise
        except GitHubError as exc:
            if exc.status in {HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN}:
                raise BadInputError(str(exc)) from exc  # it says what to check
            if exc.status in MOVED:
                raise BadInputError(str(exc)) from exc  # it names the fix
            if exc.status == HTTPStatus.NOT_FOUND:
                raise BadInputError(
                    f"GitHub at {self.api_url} has no repository {self.repo} the token can see"
                    " (404); check its name (--github-repo OWNER/NAME) and the token's access"
                ) from exc
            raise

    def find_pull(self, head_branch: str) -> dict[str, Any] | None:
        """The open pull request whose head is *head_branch* of this repository, if any."""
        found = self._pulls_of(head_branch, "open", per_page=10)
        return found[0] if found else None

    def find_closed_pull(self, head_branch: str, sha: str) -> dict[str, Any] | None:
        """A closed (or merged) pull request of *head_branch* whose head was commit *sha*.

        The pull request of exactly that work: one swarm opened and could not record (killed,
        its answer lost) that was closed since. An older one of the branch (an earlier run's
        task of the same id) had another head.
        """
        for pull in self._pulls_of(head_branch, "closed", per_page=100):
            head = pull.get("head")
            if isinstance(head, dict) and head.get("sha") == sha:
                return pull
        return None

    def owns_pull(self, pull: Mapping[str, Any], head_branch: str) -> bool:
        """Whether *pull* (a reply of GitHub's) has *head_branch* of this repository as head."""
        head = pull.get("head")
        if not isinstance(head, dict) or head.get("ref") != head_branch:
            return False
        named = head.get("label")  # "owner:branch"; GitHub spells owners in any case
        label = f"{self.repo.owner}:{head_branch}"
        return not isinstance(named, str) or named.casefold() == label.casefold()

    def _pulls_of(self, head_branch: str, state: str, *, per_page: int) -> list[dict[str, Any]]:
        pulls = self.request(
            "GET",
            self._repo_path("pulls"),
            params={
                "head": f"{self.repo.owner}:{head_branch}",
                "state": state,
                "per_page": str(per_page),
            },
        ).data
        # Only those whose head is that branch: a server that ignores the filter lists others,
        # a fork's branch of the same name among them (its label names its owner).
        if not isinstance(pulls, list):  # taken for "none", a second pull request would open
            raise GitHubError(f"GitHub's list of pull requests of {head_branch} is not a list")
        return [
            dict(pull)
            for pull in pulls
            if isinstance(pull, dict)
            and self.owns_pull(pull, head_branch)
            and pull.get("state", state) == state
        ]

    def get_pull(self, number: int) -> dict[str, Any] | None:
        """Pull request *number*, or None when it does not exist (any more)."""
        return self._get_or_none(f"pulls/{number:d}")

    def create_pull(
        self, *, title: str, head: str, base: str, body: str, draft: bool = False
    ) -> dict[str, Any]:
        """Open a pull request of *head* into *base*."""
        payload = {"title": title, "head": head, "base": base, "body": body, "draft": draft}
        return _object(self.request("POST", self._repo_path("pulls"), body=payload).data)

    def update_pull(
        self, number: int, *, title: str, body: str, base: str | None = None
    ) -> dict[str, Any]:
        """Replace the title and body of pull request *number* (and its base, when given)."""
        path = self._repo_path(f"pulls/{number:d}")
        fields = {"title": title, "body": body, **({"base": base} if base is not None else {})}
        return _object(self.request("PATCH", path, body=fields).data)

    def get_issue(self, number: int) -> dict[str, Any] | None:
        """Issue (or pull request) *number*, or None when it does not exist."""
        return self._get_or_none(f"issues/{number:d}")

    def _get_or_none(self, rest: str) -> dict[str, Any] | None:
        """The object at the repository's *rest*, or None when GitHub has none (404, 410)."""
        try:
            return _object(self.request("GET", self._repo_path(rest)).data)
        except GitHubError as exc:
            if exc.status in {404, 410}:
                return None
            raise

    def list_issues(self, *, labels: str, state: str = "open") -> Iterator[dict[str, Any]]:
        """Issues (pull requests included, as GitHub returns them) with all of *labels*.

        Oldest first, asked for explicitly: GitHub's default is newest first.
        """
        params = {
            "labels": labels,
            "state": state,
            "sort": "created",
            "direction": "asc",
            "per_page": "100",
        }
        url: str | None = self._url(self._repo_path("issues"), params)
        seen: set[str] = set()
        while url is not None:
            if url in seen or len(seen) >= MAX_PAGES:  # a Link back, or no end to them
                raise GitHubError(f"GitHub's issue list does not end (page {len(seen) + 1})")
            seen.add(url)
            reply = self._send("GET", url, None)
            if not isinstance(reply.data, list):  # a proxy's page: the batch would be cut short
                raise GitHubError(
                    f"GitHub's issue list (page {len(seen)}) is not a list of issues; "
                    "is --api-url GitHub's API?"
                )
            for item in reply.data:
                if isinstance(item, dict):
                    yield item
            url = self._next_page(reply.headers)


MAX_PAGES = 100  # of 100 issues each: far above any batch worth running


def _object(data: object) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise GitHubError(f"GitHub returned {type(data).__name__}, expected a JSON object")
    return data


def connect(
    repo: git.Repo,
    *,
    remote: str = "origin",
    github_repo: str | None = None,
    api_url: str | None = None,
    on_wait: OnWait | None = None,
    env: Mapping[str, str] | None = None,
) -> Client:
    """A client for the GitHub repository behind *remote* (or *github_repo*, ``OWNER/NAME``).

    Validates everything (URL, proxy, repository, token) before any request is made.
    """
    url = api_url_from(api_url, env)
    proxy = proxy_for(url, os.environ if env is None else env)
    slug = parse_slug(github_repo) if github_repo else slug_from_remote(repo, remote)
    host = urllib.parse.urlsplit(url).hostname
    # gh knows github.com by that name, an Enterprise server by its own host name.
    gh_host = None if host in {None, "api.github.com"} else host
    token = resolve_token(env, host=gh_host)
    return Client(api_url=url, token=token, repo=slug, proxy=proxy, on_wait=on_wait)
