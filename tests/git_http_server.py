"""A real git smart-HTTP server on 127.0.0.1 for tests: `git http-backend` behind basic auth.

`GitHttpServer(root, tokens={"secret"})` serves every bare repository under `root` at
`http://127.0.0.1:<port>/<name>.git`. Requests without a valid token (as the basic-auth password,
any user name) get 401, exactly what a hosted git server answers. The set of accepted tokens can be
changed while it runs (token rotation). It runs `git http-backend` as a CGI program per request,
in a thread of this process; `start()` returns once the port accepts connections.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _user(self) -> str | None:
        """The basic-auth user when the password is an accepted token, else None."""
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return None
        return user if password in self.server.tokens else None

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _serve(self) -> None:
        path, _, query = self.path.partition("?")
        user = self._user()
        self.server.requests.append((self.command, path, user))
        body = self._body() if self.command == "POST" else b""
        if self.server.tokens is not None and user is None:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.server.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GIT_CONFIG_NOSYSTEM": "1",
            "HOME": str(self.server.root),
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.client_address[0],
            "REMOTE_USER": user or "",
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
        }
        result = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True, check=False)
        raw = result.stdout
        ends = [(raw.find(sep), sep) for sep in (b"\r\n\r\n", b"\n\n") if raw.find(sep) >= 0]
        end, sep = min(ends) if ends else (len(raw), b"")
        head, payload = raw[:end], raw[end + len(sep):]
        status, headers = 200, []
        for line in head.decode("latin-1").splitlines():
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.split()[0])
            elif key:
                headers.append((key, value.strip()))
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    root: Path
    tokens: set[str] | None
    requests: list[tuple[str, str, str | None]]


class GitHttpServer:
    """Start with `start()` (or as a context manager); `url(name)` is a repository's clone URL."""

    def __init__(self, root: Path, tokens: set[str] | None = None) -> None:
        self.root = Path(root)
        self.tokens = tokens
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return self._server.server_address[1]

    @property
    def requests(self) -> list[tuple[str, str, str | None]]:
        assert self._server is not None
        return self._server.requests

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def set_tokens(self, tokens: set[str] | None) -> None:
        self.tokens = tokens
        if self._server is not None:
            self._server.tokens = tokens

    def start(self) -> "GitHttpServer":
        server = _Server(("127.0.0.1", 0), _Handler)
        server.root, server.tokens, server.requests = self.root, self.tokens, []
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        self._wait_ready()
        return self

    def _wait_ready(self, attempts: int = 1000) -> None:
        for _ in range(attempts):
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                continue
        raise RuntimeError(f"git HTTP server on port {self.port} did not accept connections")

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join()
            self._server = None

    def __enter__(self) -> "GitHttpServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def free_port() -> int:
    """A TCP port nothing listens on (bound once, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
