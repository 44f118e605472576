"""A real HTTP server on 127.0.0.1 that speaks the GitHub REST endpoints swarm uses.

Single-threaded (like GitHub's advice to clients: one request at a time, so the server would
notice overlap as queued requests), it records every request and can be told to answer the
next matching requests with a scripted error (rate limits).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import re
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.localhost import listening

TOKEN = "ghp_SWARMTESTsecret0123456789abcdefXYZ"  # noqa: S105 - a fake, to grep for leaks
OWNER, NAME = "acme", "widgets"
BODY_LIMIT = 65_536  # GitHub refuses a longer pull request body
DROP = 0  # a scripted status: close the connection without an answer


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any
    at: float  # time.monotonic() on arrival
    wall: float  # time.time() on arrival


@dataclass
class Scripted:
    method: str
    path_re: str
    status: int
    headers: dict[str, str]
    body: dict[str, Any] | list[Any] | bytes  # bytes: sent as they are (an HTML error page)


@dataclass
class FakeGitHub:
    """State of the fake: issues and pulls share one number sequence, as on GitHub."""

    url: str = ""
    token: str = TOKEN
    bare: Path | None = None  # when set, a PR's head must exist there (GitHub checks that too)
    requests: list[Recorded] = field(default_factory=list)
    issues: dict[int, dict[str, Any]] = field(default_factory=dict)
    pulls: dict[int, dict[str, Any]] = field(default_factory=dict)
    scripted: list[Scripted] = field(default_factory=list)
    page_size: int | None = None  # force pagination
    lost_creates: int = 0  # the next N pull requests are made, then answered 502 (a proxy)
    # the next N pull requests are opened by someone else just before swarm's own request
    # arrives (a killed `swarm pr`'s request carried out late, another one at once): 422
    opened_meanwhile: int = 0
    next_number: int = 1
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_issue(self, title: str, body: str = "", labels: tuple[str, ...] = ()) -> int:
        number = self._number()
        self.issues[number] = {
            "number": number,
            "title": title,
            "body": body,
            "state": "open",
            "labels": [{"name": name} for name in labels],
            "html_url": f"https://github.test/{OWNER}/{NAME}/issues/{number}",
        }
        return number

    def add_pull_as_issue(self, title: str, labels: tuple[str, ...] = ()) -> int:
        number = self.add_issue(title, "a pull request", labels)
        self.issues[number]["pull_request"] = {"url": f"{self.url}/repos/{OWNER}/{NAME}/pulls/1"}
        return number

    def fail_next(
        self,
        method: str,
        path_re: str,
        status: int,
        headers: dict[str, str] | None = None,
        message: str = "You have exceeded a secondary rate limit.",
        raw: bytes | None = None,
    ) -> None:
        body = {"message": message} if raw is None else raw
        self.scripted.append(Scripted(method, path_re, status, headers or {}, body))

    def calls(self, method: str, path_re: str = ".*") -> list[Recorded]:
        return [r for r in self.requests if r.method == method and re.search(path_re, r.path)]

    def _number(self) -> int:
        number = self.next_number
        self.next_number += 1
        return number


def _handler(state: FakeGitHub) -> type[http.server.BaseHTTPRequestHandler]:
    prefix = f"/repos/{OWNER}/{NAME}"

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def do_PATCH(self) -> None:
            self._handle("PATCH")

        def _handle(self, method: str) -> None:
            parts = urllib.parse.urlsplit(self.path)
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            with state.lock:
                state.requests.append(
                    Recorded(
                        method,
                        parts.path,
                        urllib.parse.parse_qs(parts.query),
                        {k.lower(): v for k, v in self.headers.items()},
                        body,
                        time.monotonic(),
                        time.time(),
                    )
                )
                status, headers, reply = self._answer(method, parts.path, parts.query, body)
            if status == DROP:  # the connection closed with no answer (a proxy restarting)
                self.close_connection = True
                return
            data = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def _answer(
            self, method: str, path: str, query: str, body: Any
        ) -> tuple[int, dict[str, str], Any]:
            if self.headers.get("authorization") != f"Bearer {state.token}":
                return 401, {}, {"message": "Bad credentials"}
            for i, script in enumerate(state.scripted):
                if script.method == method and re.search(script.path_re, path):
                    del state.scripted[i]
                    return script.status, script.headers, script.body
            if not path.startswith(prefix + "/"):
                return 404, {}, {"message": "Not Found"}
            rest = path[len(prefix) + 1 :]
            params = urllib.parse.parse_qs(query)
            if rest == "pulls" and method == "GET":
                return 200, {}, self._list_pulls(params)
            if rest == "pulls" and method == "POST":
                return self._create_pull(body)
            if (m := re.fullmatch(r"pulls/(\d+)", rest)) and method == "GET":
                pull = state.pulls.get(int(m[1]))
                return (200, {}, pull) if pull else (404, {}, {"message": "Not Found"})
            if (m := re.fullmatch(r"pulls/(\d+)", rest)) and method == "PATCH":
                pull = state.pulls.get(int(m[1]))
                if pull is None:
                    return 404, {}, {"message": "Not Found"}
                pull.update({k: body[k] for k in ("title", "body", "state") if k in body})
                if "base" in body:
                    pull["base"] = {"ref": body["base"]}
                return 200, {}, pull
            if rest == "issues" and method == "GET":
                return self._list_issues(params)
            if (m := re.fullmatch(r"issues/(\d+)", rest)) and method == "GET":
                issue = state.issues.get(int(m[1]))
                return (200, {}, issue) if issue else (404, {}, {"message": "Not Found"})
            return 404, {}, {"message": "Not Found"}

        def _list_pulls(self, params: dict[str, list[str]]) -> list[dict[str, Any]]:
            head = params.get("head", [""])[0]
            wanted_state = params.get("state", ["open"])[0]
            return [
                p
                for p in state.pulls.values()
                if (not head or f"{OWNER}:{p['head']['ref']}" == head)
                and (wanted_state == "all" or p["state"] == wanted_state)
            ]

        def _create_pull(self, body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
            missing = [k for k in ("title", "head", "base") if not body.get(k)]
            if missing:
                return 422, {}, {"message": "Validation Failed", "errors": missing}
            head = body["head"]
            if state.opened_meanwhile:
                state.opened_meanwhile -= 1
                self._create_pull({**body, "title": "opened meanwhile"})
            if any(p["head"]["ref"] == head and p["state"] == "open" for p in state.pulls.values()):
                msg = f"A pull request already exists for {OWNER}:{head}."
                return 422, {}, {"message": "Validation Failed", "errors": [{"message": msg}]}
            if state.bare is not None and not _ref_exists(state.bare, f"refs/heads/{head}"):
                return 422, {}, {"message": "Validation Failed", "errors": [{"field": "head"}]}
            if len(body.get("body") or "") > BODY_LIMIT:
                msg = f"body is too long (maximum is {BODY_LIMIT} characters)"
                return 422, {}, {"message": "Validation Failed", "errors": [{"message": msg}]}
            number = state._number()
            pull = {
                "number": number,
                "state": "open",
                "title": body["title"],
                "body": body.get("body") or "",
                "draft": bool(body.get("draft")),
                "head": {"ref": head, **_head_sha(state.bare, head)},
                "base": {"ref": body["base"]},
                "html_url": f"https://github.test/{OWNER}/{NAME}/pull/{number}",
            }
            state.pulls[number] = pull
            if state.lost_creates:  # made, but the answer is lost on its way back
                state.lost_creates -= 1
                return 502, {"content-type": "text/html"}, b"<html>502 Bad Gateway</html>"
            return 201, {}, pull

        def _list_issues(self, params: dict[str, list[str]]) -> tuple[int, dict[str, str], Any]:
            labels = {x for x in params.get("labels", [""])[0].split(",") if x}
            # GitHub's default order is newest first (sort=created, direction=desc).
            oldest_first = params.get("direction", ["desc"])[0] == "asc"
            items = [
                i
                for i in sorted(
                    state.issues.values(), key=lambda i: i["number"], reverse=not oldest_first
                )
                if labels <= {lab["name"] for lab in i["labels"]} and i["state"] == "open"
            ]
            size = state.page_size or int(params.get("per_page", ["30"])[0])
            page = int(params.get("page", ["1"])[0])
            chunk = items[(page - 1) * size : page * size]
            headers = {}
            if page * size < len(items):
                query = {k: v[0] for k, v in params.items()} | {"page": str(page + 1)}
                url = f"{state.url}{prefix}/issues?{urllib.parse.urlencode(query)}"
                headers["link"] = f'<{url}>; rel="next"'
            return 200, headers, chunk

    return Handler


def _head_sha(bare: Path | None, branch: str) -> dict[str, str]:
    """The ``sha`` of a pull request's head as GitHub records it: the branch's tip then."""
    if bare is None:
        return {}
    out = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"],
        cwd=bare,
        capture_output=True,
        text=True,
        check=False,
    )
    return {"sha": out.stdout.strip()} if out.returncode == 0 else {}


def _ref_exists(bare: Path, ref: str) -> bool:
    probe = ["git", "-C", str(bare), "rev-parse", "--verify", "--quiet", ref]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


@contextlib.contextmanager
def serve() -> Iterator[FakeGitHub]:
    """A FakeGitHub listening on 127.0.0.1 (its base URL in ``.url``) while in the block."""
    state = FakeGitHub()
    with listening(_handler(state)) as url:
        state.url = url
        yield state
