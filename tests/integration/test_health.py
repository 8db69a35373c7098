"""The health listener: /healthz, /readyz and /metrics of a running bridge process."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable

from brokers import Mosquitto
from test_bridge_run import (  # the fixture is used by name
    STANDARD_TOPIC,
    BridgeProcess,
    bridges,  # noqa: F401
    config,
    customer,
    envelope,
    publish,
    wait_until,
)


def get(port: int, path: str) -> tuple[int, str]:
    """GET a path of the health listener on loopback."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_health_ready_and_metrics(
    mosquitto: Mosquitto,
    bridges: Callable[..., BridgeProcess],  # noqa: F811
) -> None:
    """Ready once subscribed, not ready while the broker is down; metrics count what happened
    and hold no personal data."""
    bridge = bridges(config(mosquitto, [{"type": "log"}])).start().wait_ready()
    port = bridge.wait_event("started")[0]["health_port"]
    assert get(port, "/healthz") == (200, '{"status":"ok"}')
    status, body = get(port, "/readyz")
    assert status == 200, body
    phone = "13700001111"
    publish(
        mosquitto,
        (STANDARD_TOPIC, envelope("add", [customer(phone=phone)], msg_id="h1")),
        (STANDARD_TOPIC, envelope("add", [customer(phone=phone)], msg_id="h1")),
        (STANDARD_TOPIC, envelope("add", [customer(age=999)], msg_id="h2")),
    )
    bridge.wait_event("duplicate")
    bridge.wait_event("delivered", sink="log")
    status, metrics = get(port, "/metrics")
    assert status == 200
    assert 'bridge_messages_received_total{disposition="processed"} 2.0' in metrics
    assert 'bridge_messages_received_total{disposition="duplicate"} 1.0' in metrics
    assert "bridge_dedup_hits_total 1.0" in metrics
    assert 'bridge_alarms_total{code="400",status="CUSTOMER_ADD_ERROR"} 1.0' in metrics
    assert 'bridge_rejections_total{field="age"} 1.0' in metrics
    assert 'bridge_records_forwarded_total{sink="log"} 1.0' in metrics
    assert "bridge_spool_pending" in metrics
    assert "bridge_broker_connected 1.0" in metrics
    assert phone not in metrics

    mosquitto.stop()
    wait_until(lambda: get(port, "/readyz")[0] == 503, 10, lambda: "readyz to turn 503", bridge)
    assert '"subscribed": false' in get(port, "/readyz")[1]
    assert get(port, "/nope")[0] == 404
