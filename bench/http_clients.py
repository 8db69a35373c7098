"""CPU per request of the HTTP clients a sink could use, against a bare loopback responder.

    .venv/bin/python bench/http_clients.py [--requests 3000] [--body 30000] [--rounds 3]

The responder runs in a process of its own (a raw socket server answering 204 to each
request, kept alive), so the client's process measures only the client. Each round runs
every client once, in turn; the table gives each client's CPU µs per request and requests
per second, one figure per round. Clients: httpx (`build_request` + `send`, as the sinks used
it before `bridge.sinks.connections`), httpcore's `ConnectionPool`, the bare
`http.client.HTTPConnection`, and the bridge's own `Endpoint` (which uses `http.client`).
"""

from __future__ import annotations

import argparse
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

_NO_CONTENT = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
_HEADERS = {"Content-Type": "application/json", "webhook-id": "msg_1", "webhook-timestamp": "1"}


def respond(listener: socket.socket) -> None:
    """Serve until killed: read each request (headers, then Content-Length bytes), send 204."""

    def serve(sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = b""
        while data := sock.recv(1 << 20):
            buffer += data
            while (end := buffer.find(b"\r\n\r\n")) >= 0:
                length = 0
                for line in buffer[:end].split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if len(buffer) < end + 4 + length:
                    break
                buffer = buffer[end + 4 + length :]
                sock.sendall(_NO_CONTENT)

    while True:
        sock, _ = listener.accept()
        threading.Thread(target=serve, args=(sock,), daemon=True).start()


def clients(url: str, body: bytes) -> dict[str, Callable[[], int]]:
    """One request function per client, each returning the status."""
    import http.client  # noqa: PLC0415
    from urllib.parse import urlsplit  # noqa: PLC0415

    import httpcore  # noqa: PLC0415
    import httpx  # noqa: PLC0415

    from bridge.sinks.http import Endpoint  # noqa: PLC0415

    parts = urlsplit(url)
    client = httpx.Client(headers={"User-Agent": "bench"}, timeout=5, follow_redirects=False)

    def with_httpx() -> int:
        request = client.build_request("POST", url, content=body, headers=_HEADERS)
        response = client.send(request, stream=True)
        for _chunk in response.iter_raw():
            pass
        response.close()
        return response.status_code

    pool = httpcore.ConnectionPool(max_connections=4, keepalive_expiry=5)
    raw_headers = [
        (b"Host", parts.netloc.encode()),
        (b"User-Agent", b"bench"),
        (b"Content-Length", str(len(body)).encode()),
        *((name.encode(), value.encode()) for name, value in _HEADERS.items()),
    ]
    timeouts = {"timeout": {"connect": 5, "read": 5, "write": 5, "pool": 5}}

    def with_httpcore() -> int:
        return pool.request(
            "POST", url, headers=raw_headers, content=body, extensions=timeouts
        ).status

    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)

    def with_http_client() -> int:
        connection.request(
            "POST", parts.path, body=body, headers={"User-Agent": "bench", **_HEADERS}
        )
        response = connection.getresponse()
        response.read()
        return response.status

    endpoint = Endpoint("webhook", url, headers={}, timeout=5, verify_tls=True)

    def with_endpoint() -> int:
        return endpoint.exchange("POST", url, read=False, content=body, headers=_HEADERS).status

    return {
        "httpx": with_httpx,
        "httpcore": with_httpcore,
        "http.client": with_http_client,
        "bridge Endpoint": with_endpoint,
    }


def measure(request: Callable[[], int], count: int) -> tuple[float, float]:
    """CPU µs per request and requests per second, after 50 requests of warm-up."""
    for _ in range(50):
        request()
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    for _ in range(count):
        if request() != 204:
            raise SystemExit("the responder did not answer 204")
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return cpu / count * 1e6, count / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--body", type=int, default=30_000, help="request body bytes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the responder's fd
    args = parser.parse_args()
    if args.serve is not None:
        respond(socket.socket(fileno=args.serve))
        return
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    responder = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(listener.fileno())],
        pass_fds=(listener.fileno(),),
    )
    try:
        body = b'{"events":["' + b"x" * max(0, args.body - 15) + b'"]}'
        made = clients(f"http://127.0.0.1:{port}/hook", body)
        rows: dict[str, list[tuple[float, float]]] = {name: [] for name in made}
        for _ in range(args.rounds):
            for name, request in made.items():
                rows[name].append(measure(request, args.requests))
    finally:
        responder.kill()
        responder.wait()
    print(f"| client ({len(body):,} byte bodies) | CPU µs per request | requests/s |")
    print("|---|---:|---:|")
    for name, figures in rows.items():
        cpu = ", ".join(f"{c:.0f}" for c, _ in figures)
        rate = ", ".join(f"{r:,.0f}" for _, r in figures)
        print(f"| {name} | {cpu} | {rate} |")


if __name__ == "__main__":
    main()
