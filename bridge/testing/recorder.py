"""A loopback HTTP server that records every request and answers the way a test tells it.

`Recorder` answers from, in order: `contract` (a check that may refuse the request), the
statuses queued in `statuses`, `refuse` (a predicate that turns a 2xx into `refuse_status`)
and `status`. It can wait `delay` seconds first, add a `Retry-After`, and counts the
connections it accepted; `stop` cuts them, so a sink sees a receiver that is gone.
"""

from __future__ import annotations

import collections
import contextlib
import json
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Self
from urllib.parse import parse_qsl, urlsplit

LOOPBACK = "127.0.0.1"
NO_BODY = frozenset({204, 304})
"""Statuses whose answer carries no body (HTTP says so; a client would misread one)."""


@dataclass(frozen=True, slots=True)
class Request:
    """One request as the recorder saw it and what it answered; header names are lower case."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    client_port: int
    status: int = 0
    answer: Any = None
    """The JSON value answered, None for an empty body (and before the answer)."""

    @property
    def path(self) -> str:
        """The target without its query."""
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, str]:
        """The query parameters (the last of a repeated name)."""
        return dict(parse_qsl(urlsplit(self.target).query, keep_blank_values=True))

    def form(self) -> dict[str, str]:
        """The body as a URL-encoded form."""
        return dict(parse_qsl(self.body.decode("utf-8"), keep_blank_values=True))

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


@dataclass(frozen=True, slots=True)
class Answer:
    """What the recorder sends back: a status, a JSON body (None: no body) and headers."""

    status: int
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)


class Recorder:
    """An HTTP/1.1 keep-alive server on 127.0.0.1 that keeps every request, with its answer.

    The port is bound when the recorder is made but only listened on from `start`, so a
    sink pointed at `url` before then is refused, as by a receiver that is down; `stop` and
    `start` again serve the same port. Subclasses answer their own way by overriding `respond`.
    """

    content_type: ClassVar[str] = "application/json"

    def __init__(self, *, port: int = 0, path: str = "", status: int = 200) -> None:
        self.path = path
        self.status = status
        """The answer once nothing else decides."""
        self.statuses: collections.deque[int] = collections.deque()
        """Statuses to answer, one per request, before `status`."""
        self.contract: Callable[[Request], int | None] | None = None
        """Checked first: a status that refuses the request, or None to go on."""
        self.refuse: Callable[[Request], bool] | None = None
        """While set, a request it is true for gets `refuse_status` instead of a 2xx."""
        self.refuse_status = 400
        self.delay = 0.0
        """Seconds to wait before answering (cut short by `stop`)."""
        self.retry_after: str | None = None
        """Sent as `Retry-After` with every answer of 400 or more."""
        self.requests: list[Request] = []
        self.connections = 0
        """Connections accepted so far."""
        self.most_in_flight = 0
        """The most requests it has had in hand at once (several lanes, a pool)."""
        self._in_flight = 0
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._open: set[socket.socket] = set()
        self._thread: threading.Thread | None = None
        self._server: _Server | None = self._bind(port)
        self.port: int = self._server.server_port

    @property
    def url(self) -> str:
        """`http://127.0.0.1:{port}{path}`."""
        return f"http://{LOOPBACK}:{self.port}{self.path}"

    @property
    def running(self) -> bool:
        """Whether it is serving."""
        return self._thread is not None

    def start(self, status: int | None = None) -> Self:
        """Listen and serve on a background thread; `status`, when given, becomes `status`."""
        if status is not None:
            self.status = status
        if self.running:
            return self
        if self._server is None:
            self._server = self._bind(self.port)
        self._released.clear()
        self._server.server_activate()
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name=f"recorder-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening, end any delayed answer and cut every open connection."""
        self._released.set()
        server, self._server = self._server, None
        if server is None:
            return
        if self._thread is not None:
            server.shutdown()
            self._thread = None
        server.server_close()
        with self._lock:
            connections = list(self._open)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def recorded(self) -> list[Request]:
        """A copy of the requests so far, in arrival order."""
        with self._lock:
            return list(self.requests)

    @property
    def answered(self) -> collections.Counter[int]:
        """How many requests got each status."""
        with self._lock:
            return collections.Counter(request.status for request in self.requests)

    @property
    def open_connections(self) -> int:
        """Connections open right now."""
        with self._lock:
            return len(self._open)

    def respond(self, request: Request) -> Answer:
        """The answer to `request`; runs under the recorder's lock, one request at a time."""
        status = self.contract(request) if self.contract is not None else None
        if status is None:
            if self.statuses:
                status = self.statuses.popleft()
            elif 200 <= self.status < 300 and self.refuse is not None and self.refuse(request):
                status = self.refuse_status
            else:
                status = self.status
        headers: dict[str, str] = {}
        if 300 <= status < 400:
            # A client that follows redirects would show up as a request to this path.
            headers["Location"] = "/elsewhere"
        if self.retry_after is not None and status >= 400:
            headers["Retry-After"] = self.retry_after
        body = None if status in NO_BODY else {"status": status}
        return Answer(status, body, headers)

    def _bind(self, port: int) -> _Server:
        server = _Server((LOOPBACK, port), _Handler, bind_and_activate=False)
        server.recorder = self
        try:
            server.server_bind()
        except OSError:
            server.server_close()
            raise
        return server

    def _answer(self, request: Request) -> Answer:
        with self._lock:
            self._in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self._in_flight)
        if self.delay:
            self._released.wait(self.delay)
        with self._lock:
            self._in_flight -= 1
            answer = self.respond(request)
            self.requests.append(replace(request, status=answer.status, answer=answer.body))
        return answer

    def _opened(self, connection: socket.socket) -> None:
        with self._lock:
            self.connections += 1
            self._open.add(connection)

    def _closed(self, connection: socket.socket) -> None:
        with self._lock:
            self._open.discard(connection)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    recorder: Recorder

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up, or a connection `stop` cut, is expected: stay quiet."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the sinks' clients expect
    # An answer goes out in two writes (headers, body): without TCP_NODELAY the second waits
    # for the client's delayed ACK, about 40 ms a request.
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.recorder._opened(self.connection)

    def finish(self) -> None:
        self.server.recorder._closed(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def _any(self) -> None:
        recorder = self.server.recorder
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        if len(body) < length:
            # The client went away mid-request (a bridge killed between its header and body
            # writes): a real receiver never sees such a request, so it is not recorded.
            self.close_connection = True
            return
        headers = {name.lower(): value for name, value in self.headers.items()}
        request = Request(self.command, self.path, headers, body, self.client_address[1])
        answer = recorder._answer(request)
        payload = b""
        if answer.body is not None:
            payload = json.dumps(answer.body, ensure_ascii=False).encode("utf-8")
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        if payload:
            self.send_header("Content-Type", recorder.content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: the records say what arrived."""
