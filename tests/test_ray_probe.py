"""`--ray-address` where something other than a Ray head listens: refused in seconds, exit 2.

A real listener on 127.0.0.1 each time (no cluster needed); a real head is the slow tests'.
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import git, make_repo
from worktree_swarm.run.ray_cluster import head_problem

pytest.importorskip("ray")


@contextmanager
def silent_listener() -> Iterator[str]:
    """A port that accepts connections and never says a word."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        held: list[socket.socket] = []
        stop = threading.Event()

        def accept() -> None:
            server.settimeout(0.2)
            while not stop.is_set():
                try:
                    held.append(server.accept()[0])
                except TimeoutError:
                    continue

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        try:
            yield f"127.0.0.1:{server.getsockname()[1]}"
        finally:
            stop.set()
            thread.join()
            for conn in held:
                conn.close()


@contextmanager
def web_server() -> Iterator[str]:
    """An HTTP/1.1 server, as on a dashboard's or an app's port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def grpc_server() -> Iterator[str]:
    """A gRPC server of another service, as on the port of Ray's client server (10001)."""
    grpc = pytest.importorskip("grpc")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


_SAYS = {
    "silent": "(it does not speak gRPC)",
    "http": "(it does not speak gRPC)",
    "grpc": "(a gRPC server without the service of a Ray head)",
}


@pytest.mark.parametrize(
    "listener",
    [pytest.param(silent_listener, marks=pytest.mark.slow), web_server, grpc_server],
    ids=["silent", "http", "grpc"],  # silent: long
)
def test_an_address_where_no_ray_head_listens_is_refused_before_anything_is_made(
    tmp_path: Path,
    listener: Callable[[], contextlib.AbstractContextManager[str]],
    request: pytest.FixtureRequest,
) -> None:
    # A gRPC server of another service took 20 s and printed Ray's own errors by the screen.
    repo = make_repo(tmp_path / "repo")
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(remote)], check=True)
    git(repo, "remote", "add", "origin", str(remote))
    (tmp_path / "tasks.toml").write_text(
        '[defaults]\nagent = ["true"]\nexecutor = "ray"\n\n[[task]]\nid = "a"\nprompt = "x"\n'
    )
    with listener() as address:
        out = subprocess.run(
            [sys.executable, "-m", "worktree_swarm.cli", "run", str(tmp_path / "tasks.toml"),
             "--ray-address", address],
            cwd=repo, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert out.returncode == 2, out.stdout + out.stderr
    says = _SAYS[request.node.callspec.id]
    assert out.stderr == (
        f"swarm: cannot reach a Ray cluster at {address}: what listens there is not a Ray head "
        f"{says}; pass the address `ray start --head` printed\n"
    )
    assert not (repo / ".git" / "swarm" / "state.db").exists()
    assert git(repo, "branch", "--list", "swarm/*") == ""


def test_an_unreachable_remote_is_named_without_the_token_in_its_url(tmp_path: Path) -> None:
    # Git hides a URL's user info in its messages; swarm's own line showed it whole.
    token = "0123456789abcdef0123456789abcdef01234567"  # noqa: S105 - a fake
    repo = make_repo(tmp_path / "repo")
    git(repo, "remote", "add", "origin", f"https://{token}@127.0.0.1:9/acme/w.git")
    (tmp_path / "tasks.toml").write_text(
        '[defaults]\nagent = ["true"]\nexecutor = "ray"\n\n[[task]]\nid = "a"\nprompt = "x"\n'
    )
    out = subprocess.run(
        [sys.executable, "-m", "worktree_swarm.cli", "run", str(tmp_path / "tasks.toml")],
        cwd=repo, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.startswith(
        "swarm: remote 'origin' (https://127.0.0.1:9/acme/w.git) cannot be reached: "
    ), out.stderr
    assert token not in out.stdout + out.stderr
    assert not (repo / ".git" / "swarm" / "state.db").exists()


def test_an_ipv6_address_is_tried_as_such_and_a_port_out_of_range_is_said_to_be_one() -> None:
    # `[::1]:6379` was looked up as a host name "[::1]"; port 99999 said "Connection refused".
    with socket.create_server(("127.0.0.1", 0)) as server:
        free = server.getsockname()[1]  # nothing listens there once closed
    problem = head_problem(f"[::1]:{free}", timeout=2.0)
    assert problem is not None
    assert "Name or service not known" not in problem, problem
    assert head_problem("127.0.0.1:99999") == "99999 is no port (at most 65535)"
