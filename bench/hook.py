"""The webhook sink's loopback receiver: answers 200 at once and keeps the bodies.

Counting uses the bridge's `X-Bridge-Batch-Size` header so that nothing is parsed while the
clock runs; `msg_ids()` parses the kept bodies afterwards to check for loss and duplicates.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from common import LOOPBACK, free_port

DELAY = 0.0
"""Seconds each request takes before its answer (--hook-delay): a receiver across a network."""


class HookServer:
    """A ThreadingHTTPServer on a free loopback port, HTTP/1.1 keep-alive."""

    def __init__(self) -> None:
        self.port = free_port()
        self.events = 0
        self.requests = 0
        self.bodies: list[bytes] = []
        self.lock = threading.Lock()
        self._server = _Server((LOOPBACK, self.port), _Handler)
        self._server.hook = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """Where the bridge posts."""
        return f"http://{LOOPBACK}:{self.port}/hooks/customers"

    def start(self) -> HookServer:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()

    def msg_ids(self) -> Iterator[Any]:
        """The msgId of every event received, repeats included."""
        with self.lock:
            bodies = list(self.bodies)
        for body in bodies:
            for event in json.loads(body)["events"]:
                yield event.get("msgId")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    hook: HookServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The answer goes out in two writes (headers, body): without TCP_NODELAY the second waits
    # for the client's delayed ACK, about 40 ms per request, which would be our fault.
    disable_nagle_algorithm = True
    server: _Server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        size = int(self.headers.get("X-Bridge-Batch-Size", "0"))
        if DELAY:
            time.sleep(DELAY)
        hook = self.server.hook
        with hook.lock:
            hook.bodies.append(body)
            hook.events += size
            hook.requests += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""
