"""Webhook lanes against a real, slow HTTP server on loopback: several requests in flight at once,
each customer's events still in order at the receiver, one lane behaving as before."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import structlog

from bridge.config import DeliveryConfig, parse
from bridge.core.events import DownstreamEvent
from bridge.core.records import Op
from bridge.core.topics import TopicKind
from bridge.delivery import Target, event_row, sink_workers
from bridge.errors import BrokerError
from bridge.metrics import Metrics
from bridge.sinks import SinkContext, build_sinks
from bridge.spool import Spool

LOG = structlog.get_logger()
DELAY = 0.05  # seconds the receiver takes per request
WAIT = 60.0


class SlowReceiver:
    """A webhook receiver that takes `delay` per request and counts requests in flight.

    A batch's events are kept when its answer is about to go, in that order; `fail` names
    customers whose batches are answered 503 while their count lasts.
    """

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.events: list[dict[str, Any]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.answered: dict[int, int] = defaultdict(int)
        self.fail: dict[str, int] = {}
        self.lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.receiver = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """Where the sink sends."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/hooks"

    def take(self, body: bytes) -> int:
        """Answer one request: wait, then keep its events (200) or refuse it (503)."""
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        time.sleep(self.delay)
        events = json.loads(body)["events"]
        with self.lock:
            self.in_flight -= 1
            failing = {
                e["customer"]["id"] for e in events if self.fail.get(e["customer"]["id"], 0) > 0
            }
            status = 503 if failing else 200
            for customer in failing:
                self.fail[customer] -= 1
            if status == 200:
                self.events.extend(events)
            self.answered[status] += 1
            return status

    def by_customer(self) -> dict[str, list[int]]:
        """Each customer's event numbers in the order they were taken."""
        with self.lock:
            taken = list(self.events)
        order: dict[str, list[int]] = defaultdict(list)
        for event in taken:
            order[event["customer"]["id"]].append(int(event["customer"]["remark"]))
        return dict(order)

    def start(self) -> None:
        """Listen."""
        self._thread.start()

    def stop(self) -> None:
        """Stop listening."""
        self._server.shutdown()
        self._server.server_close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: SlowReceiver


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:
        """Take the batch as the receiver says."""
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        status = self.server.receiver.take(body)
        answer = b"{}"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output clean."""


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loopback requests must not be sent to a proxy from the environment."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("all_proxy", raising=False)


@pytest.fixture
def receiver() -> Iterator[SlowReceiver]:
    """A receiver taking DELAY per request."""
    server = SlowReceiver(DELAY)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    """A fresh spool file in tmp_path, closed afterwards."""
    opened = Spool(tmp_path / "spool.db", synchronous="NORMAL")
    try:
        yield opened
    finally:
        opened.close()


def _no_publish(_topic: str, _payload: bytes, _qos: int, _retain: bool) -> None:
    raise BrokerError("the webhook sink does not publish")


def event(customer_id: str, n: int) -> DownstreamEvent:
    """Event number `n` of a customer (the number in `remark`)."""
    return DownstreamEvent(
        op=Op.EDIT,
        kind=TopicKind.STANDARD,
        tenant="acme",
        project_id="42",
        version=None,
        vendor=None,
        msg_id=f"msg-{customer_id}-{n}",
        report_ts=1661154622,
        event_ts=1661154622000 + n,
        customer={"id": customer_id, "remark": str(n)},
    )


def drain(
    spool: Spool, receiver: SlowReceiver, customers: int, events: int, **sink: Any
) -> Metrics:
    """Spool `events` per customer (interleaved), deliver them through the webhook sink built
    from `sink` settings by the runtime's own wiring, and wait for the spool to empty."""
    config = parse({"sinks": [{"type": "webhook", "name": "crm", "url": receiver.url, **sink}]})
    (entry,) = config.sinks
    (built,) = build_sinks(config.sinks, SinkContext(publish=_no_publish, logger=LOG))
    target = Target(built, entry.route, entry.batch_size, lanes=entry.lanes)
    spool.store(
        [
            event_row("crm", event(f"c-{c:02}", n))
            for n in range(1, events + 1)
            for c in range(customers)
        ],
        [],
    )
    metrics = Metrics(process=False)
    metrics.declare_sinks(["crm"], [target.lanes])
    workers = sink_workers(
        target, spool, DeliveryConfig(initial_backoff=0.05, max_backoff=0.2), LOG,
        gave_up=lambda _rows, _reason: [], metrics=metrics,
    )  # fmt: skip
    workers.start()
    try:
        deadline = time.monotonic() + WAIT
        while spool.pending and time.monotonic() < deadline:
            time.sleep(0.05)
        assert spool.pending == 0, f"{spool.pending} rows left"
    finally:
        workers.stop()
        workers.join(10.0)
        built.close()
    return metrics


def test_four_lanes_keep_several_requests_in_flight_and_each_customer_in_order(
    spool: Spool, receiver: SlowReceiver
) -> None:
    """40 customers x 25 events, batches of 10, lanes: 4, a receiver taking 50 ms a request:
    more than one request is in flight at once, and every customer's 25 events arrive once,
    in order."""
    metrics = drain(spool, receiver, 40, 25, lanes=4, batch_size=10)
    assert 1 < receiver.most_in_flight <= 4
    expected = list(range(1, 26))
    order = receiver.by_customer()
    assert len(order) == 40
    assert all(numbers == expected for numbers in order.values()), order
    assert metrics.registry.get_sample_value("bridge_sink_lanes", {"sink": "crm"}) == 4
    assert metrics.registry.get_sample_value("bridge_sink_in_flight", {"sink": "crm"}) == 0
    assert metrics.registry.get_sample_value("bridge_records_forwarded_total", {"sink": "crm"}) == (
        1000
    )


def test_one_lane_sends_one_request_at_a_time(spool: Spool, receiver: SlowReceiver) -> None:
    """The default, one lane: never two requests at once, as before lanes existed."""
    drain(spool, receiver, 10, 5, batch_size=10)
    assert receiver.most_in_flight == 1
    assert all(numbers == [1, 2, 3, 4, 5] for numbers in receiver.by_customer().values())


def test_a_failing_customer_waits_in_its_lane_while_the_others_flow(
    spool: Spool, receiver: SlowReceiver
) -> None:
    """Batches holding one customer are answered 503 three times: they are retried, that
    customer's events still arrive in order, and every other customer's too, each once."""
    receiver.fail["c-03"] = 3
    drain(spool, receiver, 12, 10, lanes=4, batch_size=5)
    assert receiver.answered[503] == 3
    order = receiver.by_customer()
    assert len(order) == 12
    assert all(numbers == list(range(1, 11)) for numbers in order.values()), order
