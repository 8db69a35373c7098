"""The HTTP listener for probes and scrapes: /healthz, /readyz, /metrics (loopback by default)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from bridge.errors import UnavailableError

Readiness = Callable[[], dict[str, bool]]
"""Named conditions; the bridge is ready when all are true."""


class HealthServer:
    """Serves the three endpoints on its own thread."""

    def __init__(
        self, host: str, port: int, readiness: Readiness, metrics: Callable[[], bytes]
    ) -> None:
        handler = _handler(readiness, metrics)
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise UnavailableError(f"cannot listen on {host}:{port} for health: {exc}") from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health", daemon=True
        )

    @property
    def port(self) -> int:
        """The port listened on (useful with port 0)."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Start serving."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()


def _handler(readiness: Readiness, metrics: Callable[[], bytes]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "customer-bridge"
        _head = False

        def do_HEAD(self) -> None:
            """What GET would answer, without the body (uptime checkers and `curl -I`)."""
            self._answer(head=True)

        def do_GET(self) -> None:
            self._answer(head=False)

        def _answer(self, *, head: bool) -> None:
            self._head = head
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                self._send(200, "application/json", b'{"status":"ok"}')
            elif path == "/readyz":
                checks = readiness()
                ready = all(checks.values())
                body = json.dumps({"ready": ready, "checks": checks}).encode()
                self._send(200 if ready else 503, "application/json", body)
            elif path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, metrics())
            else:
                self._send(404, "application/json", b'{"error":"not found"}')

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not self._head:
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Probes every few seconds would flood the log; stay quiet."""

    return Handler
