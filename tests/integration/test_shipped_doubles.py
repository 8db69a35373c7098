"""The test doubles of `bridge.testing` as an integrator uses them (docs/testing.md).

The recorder's answers (queued statuses, a predicate, a delay, Retry-After, connections and a
restart on the same port) are pinned against httpx, the client the HTTP sinks use; then a
handler of the kind docs/testing.md shows is tested against a recorder, in-process and
through a real `bridge run`.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import structlog
from test_bridge_run import STANDARD_TOPIC, config, customer, envelope, publish
from test_webhook import event

from bridge.broker import EmbeddedBroker
from bridge.config import parse
from bridge.errors import BrokerError, SinkError
from bridge.sinks import SinkContext, build_sinks
from bridge.testing import BridgeProcess, Recorder, free_port, wait_until

# Loopback requests must not be sent to a proxy from the environment.
pytestmark = pytest.mark.usefixtures("no_proxies")


@pytest.fixture
def crm() -> Iterator[Recorder]:
    """A recorder playing the CRM."""
    with Recorder(path="/crm/customers") as recorder:
        yield recorder


def _no_publish(_topic: str, _payload: bytes, _qos: int, _retain: bool) -> None:
    raise BrokerError("the handler does not publish")


def test_queued_statuses_come_first_then_the_default(crm: Recorder) -> None:
    """`statuses` answers one request each, in order; then `status` answers the rest."""
    crm.statuses.extend([503, 429])
    with httpx.Client() as client:
        got = [client.post(crm.url, json={}).status_code for _ in range(3)]
    assert got == [503, 429, 200]
    assert [request.status for request in crm.requests] == got
    assert crm.answered == {503: 1, 429: 1, 200: 1}


def test_a_predicate_refuses_a_request_that_would_be_taken(crm: Recorder) -> None:
    """`refuse` turns a 2xx into `refuse_status`, and leaves other answers alone."""
    crm.refuse = lambda request: b"bad" in request.body
    with httpx.Client() as client:
        refused = client.post(crm.url, content=b"bad").status_code
        taken = client.post(crm.url, content=b"good").status_code
        crm.status = 503
        failing = client.post(crm.url, content=b"bad").status_code
    assert (refused, taken, failing) == (400, 200, 503)


def test_a_contract_check_answers_before_the_queue(crm: Recorder) -> None:
    """`contract` refuses a request before a queued status is spent on it."""
    crm.contract = lambda request: None if request.headers.get("x-key") == "k" else 401
    crm.statuses.append(503)
    with httpx.Client() as client:
        unsigned = client.post(crm.url, json={}).status_code
        signed = client.post(crm.url, json={}, headers={"X-Key": "k"}).status_code
    assert (unsigned, signed) == (401, 503)


def test_retry_after_goes_with_refusals_only(crm: Recorder) -> None:
    """`Retry-After` is sent with an answer of 400 or more, not with a 2xx."""
    crm.retry_after = "7"
    crm.statuses.append(503)
    with httpx.Client() as client:
        refused = client.post(crm.url, json={})
        taken = client.post(crm.url, json={})
    assert refused.headers.get("retry-after") == "7"
    assert "retry-after" not in taken.headers


def test_a_204_has_no_body_and_keeps_the_connection_usable(crm: Recorder) -> None:
    """A 204 carries no body, so the next answer on the kept-alive connection reads cleanly."""
    crm.statuses.append(204)
    with httpx.Client() as client:
        first = client.post(crm.url, json={})
        second = client.post(crm.url, json={})
    assert (first.status_code, first.content) == (204, b"")
    assert second.json() == {"status": 200}
    assert crm.connections == 1


def test_a_request_cut_before_its_whole_body_is_not_recorded(crm: Recorder) -> None:
    """A client that dies between its headers and the end of its body (a kill -9 mid-request)
    leaves no request behind; the next one on a new connection is recorded as usual."""
    target = urlsplit(crm.url)
    with socket.create_connection((target.hostname or "127.0.0.1", target.port or 80)) as sock:
        sock.sendall(
            f"POST {target.path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 100\r\n\r\n".encode() + b'{"events": ['
        )
    with httpx.Client() as client:
        assert client.post(crm.url, json={"events": []}).status_code == 200
    wait_until(lambda: crm.requests, 5, lambda: "a request")
    assert [request.json() for request in crm.requests] == [{"events": []}]


def test_a_delay_holds_the_answer_past_a_client_timeout(crm: Recorder) -> None:
    """With `delay` the client's read times out; `stop` ends the wait at once."""
    crm.delay = 5.0
    with httpx.Client(timeout=0.2) as client, pytest.raises(httpx.ReadTimeout):
        client.post(crm.url, json={})


def test_stopped_it_refuses_connections_and_starts_again_on_the_same_port() -> None:
    """Made but not started, or stopped, it refuses; `start` serves the same URL again."""
    recorder = Recorder(port=free_port())
    with httpx.Client() as client:
        with pytest.raises(httpx.ConnectError):
            client.post(recorder.url, json={})
        recorder.start()
        assert client.post(recorder.url, json={}).status_code == 200
        recorder.stop()
        with pytest.raises(httpx.ConnectError):
            client.post(recorder.url, json={})
        recorder.start(503)
        try:
            assert client.post(recorder.url, json={}).status_code == 503
        finally:
            recorder.stop()
    assert recorder.connections == 2


def test_a_handler_is_tested_in_process_against_a_recorder(crm: Recorder) -> None:
    """The docs' handler, built as `bridge run` builds it: it posts, and maps statuses."""
    document = {
        "sinks": [
            {
                "type": "python",
                "handler": "handlers:CrmHandler",
                "options": {"url": crm.url},
            }
        ]
    }
    context = SinkContext(publish=_no_publish, logger=structlog.get_logger())
    (sink,) = build_sinks(parse(document, environ={}).sinks, context)
    crm.statuses.extend([503, 422])
    try:
        with pytest.raises(SinkError) as transient:
            sink.send([event("c-1")])
        with pytest.raises(SinkError) as permanent:
            sink.send([event("c-1")])
        sink.send([event("c-1"), event("c-2")])
    finally:
        sink.close()
    assert (transient.value.permanent, permanent.value.permanent) == (False, True)
    assert [customer["id"] for customer in crm.requests[-1].json()["customers"]] == ["c-1", "c-2"]


def test_a_handler_is_tested_through_a_real_bridge(crm: Recorder, tmp_path: Path) -> None:
    """A real `bridge run` on the embedded broker hands a published record to the handler,
    which meets a 503, is retried, and reaches the recorder."""
    crm.statuses.append(503)
    sink = {
        "type": "python",
        "handler": "handlers:CrmHandler",
        "options": {"url": crm.url},
    }
    with EmbeddedBroker(port=0) as broker:
        document = config(
            broker,
            [sink],
            spool={"path": str(tmp_path / "spool.db")},
            delivery={"initial_backoff": 0.05, "max_backoff": 0.2},
            health={"port": 0},
        )
        bridge = BridgeProcess(tmp_path, "bridge", document)
        bridge.start(env={"PYTHONPATH": str(Path(__file__).parent)}).wait_ready()
        try:
            publish(broker, (STANDARD_TOPIC, envelope(records=[customer(id="c-9")])))
            taken = wait_until(
                lambda: [r for r in crm.recorded() if r.status == 200], 30, "a taken batch", bridge
            )
        finally:
            assert bridge.terminate() == 0
    assert [c["id"] for c in taken[0].json()["customers"]] == ["c-9"]
    assert crm.answered[503] == 1
