"""The HTTP sinks' connections (`bridge.sinks.connections`, through `Endpoint`) against real
servers on loopback: a raw socket server whose every answer a test chooses, a TLS one with
certificates made by openssl, and a forward proxy."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from test_broker_security import make_pki

from bridge.errors import SinkError
from bridge.sinks.connections import Connections, ReadTimeout
from bridge.sinks.http import Endpoint

NO_CONTENT = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"


@dataclass
class Seen:
    """One request as the server read it, and the connection (by number) it came on."""

    connection: int
    line: str
    headers: dict[str, str]
    body: bytes
    names: list[str]
    """Every header name as it came, in order (a repeated one shows twice)."""


@dataclass
class Server:
    """A threaded HTTP/1.1 server on a free loopback port. `answer(seen)` gives the bytes to
    send back (a list: pieces sent 0.2 s apart), or None to close the connection without a
    word; with `close_after`, each connection ends after its first answer."""

    answer: Callable[[Seen], bytes | list[bytes] | None] = lambda _seen: NO_CONTENT
    tls: ssl.SSLContext | None = None
    close_after: bool = False
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}/hook"

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            number = self.connections
            threading.Thread(target=self._serve, args=(sock, number), daemon=True).start()

    def _serve(self, sock: socket.socket, number: int) -> None:
        try:
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_side=True)
            reader = sock.makefile("rb")
            while True:
                line = reader.readline()
                if not line:
                    return
                headers: dict[str, str] = {}
                names: list[str] = []
                while (header := reader.readline()) not in (b"\r\n", b""):
                    name, _, value = header.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                    names.append(name.strip().lower())
                body = reader.read(int(headers.get("content-length", "0")))
                seen = Seen(number, line.decode("latin-1").strip(), headers, body, names)
                self.seen.append(seen)
                reply = self.answer(seen)
                if reply is None:
                    return
                for number_of, piece in enumerate([reply] if isinstance(reply, bytes) else reply):
                    if number_of:
                        time.sleep(0.2)
                    sock.sendall(piece)
                if self.close_after:
                    return
        except (OSError, ssl.SSLError):
            return
        finally:
            sock.close()

    def close(self) -> None:
        """Stop accepting: the shutdown wakes the accepting thread, which then ends."""
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()


@pytest.fixture
def server() -> Iterator[Server]:
    made = Server()
    yield made
    made.close()


def endpoint(url: str, *, timeout: float = 2.0, verify_tls: bool = True) -> Endpoint:
    return Endpoint(
        "webhook", url, headers={"X-Tenant": "acme"}, timeout=timeout, verify_tls=verify_tls
    )


def post(http: Endpoint, url: str, body: bytes = b'{"events":[]}') -> int:
    return http.exchange("POST", url, read=False, content=body).status


def test_requests_share_one_kept_alive_connection(server: Server) -> None:
    """Three requests, one after the other: one TCP connection carries them all, each with
    the same headers as before (Host, Accept, User-Agent, Content-Length, the sink's own)."""
    http = endpoint(server.url)
    try:
        assert [post(http, server.url) for _ in range(3)] == [204, 204, 204]
    finally:
        http.close()
    assert server.connections == 1
    assert [seen.connection for seen in server.seen] == [1, 1, 1]
    first = server.seen[0]
    assert first.line == "POST /hook HTTP/1.1"
    assert first.body == b'{"events":[]}'
    assert first.headers["host"] == f"127.0.0.1:{server.port}"
    assert first.headers["content-length"] == "13"
    assert first.headers["x-tenant"] == "acme"
    assert first.headers["user-agent"].startswith("customer-bridge/")
    assert first.headers["accept-encoding"] == "identity"
    assert sorted(first.names) == sorted(
        [
            "host",
            "accept",
            "accept-encoding",
            "connection",
            "user-agent",
            "x-tenant",
            "content-length",
        ]
    )


def test_a_header_of_the_sink_replaces_the_default_of_its_name(server: Server) -> None:
    """A configured User-Agent or Accept goes out instead of the default, once."""
    http = Endpoint(
        "webhook",
        server.url,
        headers={"user-agent": "crm-gateway/2", "Accept": "application/json"},
        timeout=2.0,
        verify_tls=True,
    )
    try:
        assert post(http, server.url) == 204
    finally:
        http.close()
    [seen] = server.seen
    assert seen.names.count("user-agent") == 1 and seen.names.count("accept") == 1
    assert (seen.headers["user-agent"], seen.headers["accept"]) == (
        "crm-gateway/2",
        "application/json",
    )


def test_an_idle_connection_the_server_closed_is_not_used(server: Server) -> None:
    """The server answers, then closes the connection without saying so (an idle timeout):
    each next request goes on a new connection and is sent once."""
    server.close_after = True
    http = endpoint(server.url)
    try:
        for _ in range(3):
            assert post(http, server.url) == 204
            time.sleep(0.05)  # the server's close has arrived
    finally:
        http.close()
    assert [seen.connection for seen in server.seen] == [1, 2, 3]


def test_a_request_on_a_connection_closed_under_it_goes_again_once(server: Server) -> None:
    """The server takes the second request on a kept-alive connection and closes without an
    answer (as a server does when its idle timeout fires as the request arrives): the request
    goes again on a new connection. On a new connection the same silence is an error:
    `RemoteProtocolError`, transient, with no third attempt."""
    answers: list[bytes | None] = [NO_CONTENT, None, NO_CONTENT]
    server.answer = lambda seen: answers.pop(0) if answers else None
    http = endpoint(server.url)
    try:
        assert post(http, server.url) == 204
        assert post(http, server.url) == 204
        assert [seen.connection for seen in server.seen] == [1, 1, 2]
        with pytest.raises(SinkError) as caught:
            post(http, server.url)  # on connection 2 again, then on a new connection 3
    finally:
        http.close()
    assert str(caught.value) == "webhook 127.0.0.1 failed: RemoteProtocolError"
    assert not caught.value.permanent
    assert [seen.connection for seen in server.seen] == [1, 1, 2, 2, 3]


def test_a_silent_server_is_a_read_timeout(server: Server) -> None:
    """A server that reads the request and never answers: `ReadTimeout` after the timeout."""
    hold = threading.Event()

    def never(_seen: Seen) -> bytes | None:
        hold.wait(5)
        return None

    server.answer = never
    connections = Connections(
        server.url, timeout=0.3, verify_tls=True, limit=2, expiry=5, headers={"User-Agent": "t"}
    )
    started = time.monotonic()
    try:
        with pytest.raises(ReadTimeout):
            connections.request("POST", "/hook", body=b"{}", headers={}, read_limit=None)
    finally:
        hold.set()
        connections.close()
    assert 0.25 < time.monotonic() - started < 2


def test_a_long_answer_is_read_to_the_limit_and_costs_its_connection(server: Server) -> None:
    """An answer longer than the drain limit: the status counts, the rest is not read, and
    the connection is closed rather than kept (the next request opens another)."""
    big = b"x" * 200_000
    server.answer = lambda _seen: (
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
        % (
            len(big),
            big,
        )
    )
    http = endpoint(server.url)
    try:
        assert post(http, server.url) == 200
        assert post(http, server.url) == 200
    finally:
        http.close()
    assert [seen.connection for seen in server.seen] == [1, 2]


def test_a_chunked_json_answer_is_read_whole(server: Server) -> None:
    """A platform that answers in chunks: the JSON object is read whole and parsed, and the
    connection is kept for the next request."""
    chunks = [b'{"code":', b'"OK","data":{"n":1}}']
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    server.answer = lambda _seen: (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + body
    )
    http = endpoint(server.url)
    try:
        first = http.exchange("POST", server.url, content=b"{}")
        second = http.exchange("GET", server.url, params={"page": "2"})
    finally:
        http.close()
    assert first.document == {"code": "OK", "data": {"n": 1}}
    assert second.document == first.document
    assert server.seen[1].line == "GET /hook?page=2 HTTP/1.1"
    assert server.connections == 1


def test_retry_after_and_a_form_body(server: Server) -> None:
    """A 429 with Retry-After gives the wait; a form is sent url-encoded with its type; a
    path with a non-ASCII letter goes %-encoded, its query as configured."""
    server.answer = lambda _seen: (
        b"HTTP/1.1 429 Too Many\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n"
    )
    http = endpoint(server.url)
    url = f"http://127.0.0.1:{server.port}/客户?token=a%20b"
    try:
        answer = http.exchange("POST", url, data={"grant": "x y", "n": "1"})
    finally:
        http.close()
    assert (answer.status, answer.retry_after) == (429, 7.0)
    [seen] = server.seen
    assert seen.line == "POST /%E5%AE%A2%E6%88%B7?token=a%20b HTTP/1.1"
    assert seen.headers["content-type"] == "application/x-www-form-urlencoded"
    assert seen.body == b"grant=x+y&n=1"


def test_a_busy_pool_makes_the_caller_wait_then_gives_up(server: Server) -> None:
    """With its one connection in use (an answer that trickles in for 1.6 s, each piece well
    within the timeout), a request waits for the connection and gives up after the timeout
    as `PoolTimeout`; once the connection is back, requests go through again."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n"
    server.answer = lambda seen: [head, *[b"x"] * 8] if seen.body == b"slow" else NO_CONTENT
    connections = Connections(
        server.url, timeout=0.5, verify_tls=True, limit=1, expiry=5, headers={"User-Agent": "t"}
    )
    answers: list[int] = []

    def slow() -> None:
        answers.append(
            connections.request("POST", "/", body=b"slow", headers={}, read_limit=None).status
        )

    first = threading.Thread(target=slow)
    try:
        first.start()
        time.sleep(0.2)
        started = time.monotonic()
        with pytest.raises(OSError) as caught:
            connections.request("POST", "/", body=b"{}", headers={}, read_limit=None)
        assert type(caught.value).__name__ == "PoolTimeout"
        assert 0.4 < time.monotonic() - started < 1.2
        first.join(5)
        assert answers == [200]
        again = connections.request("POST", "/", body=b"{}", headers={}, read_limit=None)
        assert again.status == 204
    finally:
        first.join(5)
        connections.close()
    assert [seen.connection for seen in server.seen] == [1, 1]


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    return make_pki(tmp_path / "pki")


def tls_server(pki: dict[str, Path]) -> Server:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki["server.crt"], pki["server.key"])
    return Server(tls=context)


def test_https_checks_the_certificate(
    pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server whose certificate no known authority signed is refused (`ConnectError`);
    with its authority in `SSL_CERT_FILE` it is taken, over one kept-alive connection; with
    `verify_tls: false` nothing is checked."""
    server = tls_server(pki)
    try:
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        monkeypatch.delenv("SSL_CERT_DIR", raising=False)
        http = endpoint(server.url)
        with pytest.raises(SinkError) as caught:
            post(http, server.url)
        http.close()
        assert str(caught.value) == "webhook 127.0.0.1 failed: ConnectError"

        monkeypatch.setenv("SSL_CERT_FILE", str(pki["ca.crt"]))
        http = endpoint(server.url)
        try:
            assert [post(http, server.url) for _ in range(2)] == [204, 204]
        finally:
            http.close()
        monkeypatch.delenv("SSL_CERT_FILE")
        http = endpoint(server.url, verify_tls=False)
        try:
            assert post(http, server.url) == 204
        finally:
            http.close()
    finally:
        server.close()
    assert [seen.line for seen in server.seen] == ["POST /hook HTTP/1.1"] * 3
    assert [seen.connection for seen in server.seen] == [2, 2, 3]


def test_a_proxy_from_the_environment_is_used(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With HTTP_PROXY set the endpoint goes through the proxy (httpx, as before this
    transport): the proxy sees the absolute URL. NO_PROXY naming the host goes direct."""
    proxy = Server()
    target = "http://receiver.invalid:8080/hook"
    try:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        http = endpoint(target)
        try:
            assert http.through_proxy
            assert post(http, target) == 204
        finally:
            http.close()
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        http = endpoint(server.url)
        try:
            assert not http.through_proxy
            assert post(http, server.url) == 204
        finally:
            http.close()
    finally:
        proxy.close()
    assert [seen.line for seen in proxy.seen] == [f"POST {target} HTTP/1.1"]
    assert len(server.seen) == 1
