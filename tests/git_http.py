"""A smart-HTTP git server on 127.0.0.1 (``git http-backend``) that wants one user's login.

A request without it gets 401, as a hosted remote's does: git then asks its credential
helpers, or uses the ``user:password@`` of the URL.
"""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from tests.localhost import listening


@contextmanager
def serving(root: Path, user: str, password: str) -> Iterator[str]:
    """Serve the repositories under *root*; yields ``http://127.0.0.1:<port>``."""
    login = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._serve()

        def do_POST(self) -> None:
            self._serve()

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = b""
            while size := int(self.rfile.readline().strip(), 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
            return body

        def _serve(self) -> None:
            if self.headers.get("Authorization") != login:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            path, _, query = self.path.partition("?")
            body = self._body()
            env = {
                "PATH": os.environ["PATH"],
                "GIT_PROJECT_ROOT": str(root),
                "GIT_HTTP_EXPORT_ALL": "1",
                "REMOTE_USER": user,  # receive-pack is on for a logged-in user
                "REQUEST_METHOD": self.command,
                "PATH_INFO": path,
                "QUERY_STRING": query,
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(len(body)),
                "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
            }
            out = subprocess.run(
                ["git", "http-backend"], input=body, env=env, capture_output=True, check=True
            ).stdout
            head, _, payload = out.partition(b"\r\n\r\n")
            headers = [line.split(":", 1) for line in head.decode().splitlines()]
            status = next((v.strip() for k, v in headers if k.lower() == "status"), "200")
            self.send_response(int(status.split()[0]))
            for key, value in headers:
                if key.lower() != "status":
                    self.send_header(key, value.strip())
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    with listening(Handler) as url:
        yield url
