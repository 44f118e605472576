"""A GitHub request past its deadline, against real sockets on 127.0.0.1: cut off, not left on."""

from __future__ import annotations

import socket

import pytest

from tests.github_server import TOKEN
from worktree_swarm.github import access, errors
from worktree_swarm.github import client as github

HANG_GUARD = 60.0  # seconds a socket of the test waits before the test fails instead of hanging


def _client(url: str, *, deadline: float) -> github.Client:
    return github.Client(
        api_url=url,
        token=access.Token(TOKEN),
        repo=access.RepoSlug(owner="o", name="n"),
        timeout=10 * HANG_GUARD,  # the deadline ends the request, the test fails before this
        deadline=deadline,
    )


def _read_request(conn: socket.socket) -> bytes:
    """The whole request on *conn* (headers and its Content-Length of body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += conn.recv(65536)
    return head


def test_a_write_past_its_deadline_has_its_connection_closed_before_the_call_returns() -> None:
    # It went on in a thread of its own: its answer, however late, could still come, and the
    # next request ran beside it.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(HANG_GUARD)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        c = _client(url, deadline=0.3)
        with pytest.raises(errors.UnreachableError) as info:
            c.create_pull(title="T", head="swarm/a", base="main", body="B")
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(HANG_GUARD)
            assert _read_request(conn).startswith(b"POST /repos/o/n/pulls ")
            assert conn.recv(1) == b""  # closed by the client: it waits for no answer
    assert str(info.value) == (
        f"the GitHub API at {url} did not answer POST /repos/o/n/pulls within 0.3s;"
        " it may have been carried out all the same: run `swarm pr` again, which finds a pull"
        " request by its branch and opens none twice"
    )


def test_a_write_not_connected_by_its_deadline_is_never_sent() -> None:
    # Sent when the connection was made at last, after swarm had said the API did not answer:
    # the next `swarm pr` found no pull request and opened one, and then this one arrived.
    with socket.create_server(("127.0.0.1", 0), backlog=0) as full:
        full.settimeout(HANG_GUARD)
        address = full.getsockname()
        url = f"http://127.0.0.1:{address[1]}"
        waiting = socket.create_connection(address, timeout=HANG_GUARD)  # the queue's one
        c = _client(url, deadline=0.3)
        c._answered = True  # an earlier request was answered
        try:
            with pytest.raises(errors.UnreachableError) as info:
                c.create_pull(title="T", head="swarm/a", base="main", body="B")
        finally:
            waiting.close()
        first, _ = full.accept()  # the one that waited, closed
        first.close()
        late, _ = full.accept()  # the client's, let in now that the queue has room
        with late:
            late.settimeout(HANG_GUARD)
            assert late.recv(65536) == b""  # nothing of the request
    assert str(info.value) == (
        f"cannot reach the GitHub API at {url} (no connection within 0.3s);"
        " check the network or --api-url / SWARM_GITHUB_API_URL"
    )
