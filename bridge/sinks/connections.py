"""Kept-alive HTTP/1.1 connections to one server, on the standard library's `http.client`.

An HTTP sink's requests go through here unless a proxy from the environment applies to its
URL (then `Endpoint` keeps httpx, which knows proxies). The reason is CPU: on loopback, a
request of 30 KB takes 470-680 µs of the process's CPU through httpx, 260-400 through
httpcore alone and 140-190 through `http.client` (`bench/http_clients.py`), and a direct
webhook posts from the intake's interpreter.

What it keeps of the client it replaces, so a receiver sees no difference:

- **Connections.** At most `limit` open at once per server, idle ones kept `expiry`
  seconds. A caller waits up to `timeout` for a free one. An idle connection the server has
  closed (its socket reads as ready) is dropped before use, not written to.
- **Timeouts.** `timeout` bounds the connect, each write and each read, as httpx's single
  timeout does.
- **TLS.** It checks the server's certificate against certifi's bundle, or the file or
  directory that `SSL_CERT_FILE` or `SSL_CERT_DIR` names, as httpx does. `verify_tls:
  false` checks nothing.
- **Redirects.** It follows none: a 3xx is an answer like any other.
- **Headers.** The same names as httpx sent, with `Accept-Encoding: identity` where httpx
  offered gzip: an answer is an acknowledgement, and nothing here decompresses one.

One thing httpx does not do: when a kept-alive connection fails before any answer arrives
(the server closed it as the request went out), the request goes again once, on a new
connection. A server that had taken the request would have answered it, and every sink's
receiver already sees a batch again after a retry (at-least-once, docs/delivery.md).
"""

from __future__ import annotations

import http.client
import os
import select
import ssl
import threading
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import urlsplit
from urllib.request import getproxies_environment

_RETRIED = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
"""How a kept-alive connection the server closed as the request went out fails."""


class _Stale(Exception):
    """A kept-alive connection failed before any answer: the request may go again."""


class TransportError(OSError):
    """A request that failed on the way: named by the phase it failed in, with the names
    httpx gave them (docs/platform-sinks.md), so that logs read as they did."""


class ConnectError(TransportError):
    """The connection (or its TLS handshake) could not be made."""


class ConnectTimeout(TransportError):
    """The connection was not made within the timeout."""


class WriteError(TransportError):
    """The request could not be sent whole."""


class WriteTimeout(TransportError):
    """The request could not be sent within the timeout."""


class ReadError(TransportError):
    """The answer could not be read."""


class ReadTimeout(TransportError):
    """The answer did not arrive within the timeout."""


class RemoteProtocolError(TransportError):
    """The server closed the connection without an answer, or broke HTTP/1.1."""


class PoolTimeout(TransportError):
    """Every connection was busy for as long as the timeout."""


def _failure(phase: str, exc: BaseException) -> TransportError:
    """`exc`, raised in `phase` (connect, write, read), as the TransportError that names it."""
    if isinstance(exc, http.client.HTTPException) and not isinstance(exc, OSError):
        return RemoteProtocolError(type(exc).__name__)
    if isinstance(exc, http.client.RemoteDisconnected):
        return RemoteProtocolError("the server closed the connection without an answer")
    timeout = isinstance(exc, TimeoutError)
    kind: type[TransportError] = {
        ("connect", False): ConnectError,
        ("connect", True): ConnectTimeout,
        ("write", False): WriteError,
        ("write", True): WriteTimeout,
        ("read", False): ReadError,
        ("read", True): ReadTimeout,
    }[phase, timeout]
    return kind(type(exc).__name__)


class _Request(NamedTuple):
    method: str
    target: str
    body: bytes | None
    headers: Mapping[str, str]
    read_limit: int | None


@dataclass(frozen=True, slots=True)
class Response:
    """A server's answer: its status, its headers (names in lower case), and its body as far
    as it was read (all of it, or up to the drain limit)."""

    status: int
    headers: Mapping[str, str]
    body: bytes


def proxied(url: str) -> bool:
    """Whether a proxy from the environment (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, less
    `NO_PROXY`) applies to `url`, as httpx decides it for a client that trusts the
    environment."""
    proxies = getproxies_environment()
    parts = urlsplit(url)
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return False
    # In the standard library since 3.0, and left out of its type stubs.
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    return not bypass(parts.netloc, proxies)


def tls_context(verify: bool) -> ssl.SSLContext:
    """The TLS settings httpx would use: certifi's bundle unless `SSL_CERT_FILE` or
    `SSL_CERT_DIR` names other authorities; with `verify` false, no checks at all."""
    if not verify:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    if os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    import certifi  # noqa: PLC0415 - httpx's own dependency, loaded only for https

    return ssl.create_default_context(cafile=certifi.where())


class Connections:
    """The kept-alive connections of one origin (scheme, host, port); safe across threads."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        verify_tls: bool,
        limit: int,
        expiry: float,
        headers: Mapping[str, str],
    ) -> None:
        parts = urlsplit(url)
        self._https = parts.scheme == "https"
        # An international name as its ASCII (IDNA) form, which DNS, Host and SNI need.
        self._host = (parts.hostname or "").encode("idna").decode("ascii")
        self._port = parts.port or (443 if self._https else 80)
        self._timeout = timeout
        self._expiry = expiry
        # An answer is short and never decompressed here: `identity`, where httpx offered gzip.
        # `headers` (the sink's) then each request's replace a default of the same name, in
        # any case, as httpx's merging did.
        self._defaults = _merged(
            {
                "accept": ("Accept", "*/*"),
                "accept-encoding": ("Accept-Encoding", "identity"),
                "connection": ("Connection", "keep-alive"),
            },
            headers,
        )
        self._tls = tls_context(verify_tls) if self._https else None
        self._free = threading.BoundedSemaphore(limit)
        self._lock = threading.Lock()
        self._idle: list[tuple[float, http.client.HTTPConnection]] = []
        self._closed = False

    def request(
        self,
        method: str,
        target: str,
        *,
        body: bytes | None,
        headers: Mapping[str, str],
        read_limit: int | None,
    ) -> Response:
        """Send one request and read its answer: the whole body, or with `read_limit` at most
        that many bytes (a longer answer costs its connection, not our time).

        A `TransportError` naming the phase when the request failed or timed out.
        """
        if not self._free.acquire(timeout=self._timeout):
            raise PoolTimeout(f"no free connection within {self._timeout} s")
        request = _Request(method, target, body, headers, read_limit)
        try:
            connection = self._checkout()
            if connection is not None:
                try:
                    return self._exchange(connection, True, request)
                except _Stale:
                    pass  # the server closed it as the request went out: once more, anew
            return self._exchange(self._connect(), False, request)
        finally:
            self._free.release()

    def _exchange(
        self, connection: http.client.HTTPConnection, reused: bool, request: _Request
    ) -> Response:
        method, target, body, headers, read_limit = request
        phase = "write"
        answered = False
        try:
            # Host comes from http.client.
            connection.putrequest(method, target, skip_accept_encoding=True)
            sent = _merged(self._defaults, headers)
            if body is not None or method in ("POST", "PUT", "PATCH"):
                sent.setdefault("content-length", ("Content-Length", str(len(body or b""))))
            for name, value in sent.values():
                connection.putheader(name, value)
            connection.endheaders(body)
            phase = "read"
            answer = connection.getresponse()
            answered = True
            if read_limit is None or (answer.length is not None and answer.length <= read_limit):
                content = answer.read()
                whole = True
            else:
                content = answer.read(read_limit)
                whole = answer.isclosed() or not answer.read(1)
            headers_in = {name.lower(): value for name, value in answer.getheaders()}
            keep = whole and not answer.will_close
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            if reused and not answered and isinstance(exc, _RETRIED):
                raise _Stale from None
            raise _failure(phase, exc) from None
        except BaseException:
            connection.close()
            raise
        if keep:
            self._checkin(connection)
        else:
            connection.close()
        return Response(answer.status, headers_in, content)

    def _checkout(self) -> http.client.HTTPConnection | None:
        """The most recently used idle connection that is still good, if there is one."""
        now = time.monotonic()
        while True:
            with self._lock:
                if not self._idle:
                    return None
                since, connection = self._idle.pop()
            if now - since < self._expiry and not _readable(connection):
                return connection
            connection.close()

    def _connect(self) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection
        if self._tls is not None:
            connection = http.client.HTTPSConnection(
                self._host, self._port, timeout=self._timeout, context=self._tls
            )
        else:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        try:
            connection.connect()
        except OSError as exc:
            connection.close()
            raise _failure("connect", exc) from None
        return connection

    def _checkin(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append((time.monotonic(), connection))
                return
        connection.close()

    def close(self) -> None:
        """Close every idle connection; one in use is closed when its request ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for _since, connection in idle:
            connection.close()


def _merged(
    defaults: Mapping[str, tuple[str, str]], headers: Mapping[str, str]
) -> dict[str, tuple[str, str]]:
    """`defaults` (by lower-case name) with `headers` put over them, names in any case."""
    merged = dict(defaults)
    for name, value in headers.items():
        merged[name.lower()] = (name, value)
    return merged


def _readable(connection: http.client.HTTPConnection) -> bool:
    """Whether an idle connection's socket has something to read: the server closed it (or
    sent what nobody asked for); either way it cannot carry another request."""
    sock = connection.sock
    if sock is None:
        return True
    try:
        ready, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(ready)
