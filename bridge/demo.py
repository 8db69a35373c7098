"""`customer-bridge demo`: the bridge on the embedded broker, fed traffic a newcomer can watch.

A stand-in for the platform publishes valid and invalid envelopes (the source
document's samples among them); the demo prints what the bridge forwarded (via
its mqtt republish sink) and the alarms it published, with personal data masked.
With `platforms`, the bridge also reports to local stand-ins of Quick Audience
(API 3.0 and the 2.0 OpenAPI) and of the mobile event API, and the demo prints
what each of them took.
"""

from __future__ import annotations

import json
import random
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from bridge import config, logs
from bridge.config import BrokerConfig
from bridge.errors import BrokerError
from bridge.intake import codec
from bridge.intake.client import ConnectSettings, IntakeClient
from bridge.intake.message import InboundMessage
from bridge.mqtt import Publisher
from bridge.runtime import Bridge
from bridge.testing import (
    MobileEventsStandIn,
    QuickAudienceOpenApiStandIn,
    QuickAudienceStandIn,
    StandIn,
)

TENANT = "demo-tenant"
PROJECT = "1001"
STANDARD = f"{TENANT}/proj_{PROJECT}/v1-business-model-customer"
CUSTOM = f"{TENANT}/proj_{PROJECT}/v2-customization-海康威视-customer"
FORWARDED = "demo/forwarded/{tenant}/{op}"
_PROFILE = {"poiCode": "s0140001", "appType": "customer", "modelId": 140001}
_NAMES = ["李雷", "韩梅梅", "王芳", "张伟", "Chen Jing", "Liu Yang"]
# Made-up credentials that the stand-ins check signatures against.
_APP_ID = "demo-app"
_ACCESS_ID = "demo-access-id"
_ORGANIZATION_ID = "demo-organization"
_ACCESS_KEY = "demo-access-key"
_ACCESS_SECRET = "demo-access-secret"  # noqa: S105 - a stand-in's, not a real secret
_API_KEY = "demo-api-key"


def _sample(name: str) -> bytes:
    return resources.files("bridge").joinpath("samples", name).read_bytes()


def _customer(rng: random.Random) -> dict[str, Any]:
    return {
        "id": f"c-{rng.randrange(10**6):06d}",
        "projectId": PROJECT,
        "name": rng.choice(_NAMES),
        "phone": f"13{rng.randrange(10**9):09d}",
        "sex": rng.choice([0, 1, 2]),
        "age": rng.randrange(18, 80),
        "email": "someone@example.com",
    }


def _envelope(op: str, records: list[dict[str, Any]]) -> bytes:
    now = time.time_ns() // 1_000_000
    document = {
        "msgId": str(uuid.uuid4()),
        "reportTs": now,
        "profile": _PROFILE,
        "events": {op: {"eventTs": now, "eventType": 1, "customerList": records}},
    }
    return json.dumps(document, ensure_ascii=False).encode()


def traffic(rng: random.Random) -> Iterator[tuple[str, str, bytes]]:
    """One round of demo traffic: (what it is, topic, payload)."""
    yield "a valid add", STANDARD, _envelope("add", [_customer(rng)])
    yield "a valid edit from vendor 海康威视", CUSTOM, _envelope("edit", [_customer(rng)])
    bad = dict(_customer(rng), phone="1380013800012345678")
    yield (
        "a batch of three, one phone too long",
        STANDARD,
        _envelope("add", [_customer(rng), bad, _customer(rng)]),
    )
    yield "the documented add sample (age is text)", STANDARD, _sample("standard-add.json")
    yield "the documented delete sample", STANDARD, _sample("standard-delete.json")
    yield "the documented customization delete", CUSTOM, _sample("customization-delete.json")
    yield "a payload that is not JSON", STANDARD, b"this is not json"


class _Watcher:
    """Subscribes to what the bridge forwards and to the error topics, and prints both.

    It uses the bridge's own receive-only client: the demo needs no MQTT library of its own.
    """

    def __init__(self, port: int) -> None:
        self.seen = 0
        self._lock = threading.Lock()
        settings = ConnectSettings(
            "127.0.0.1", port, f"demo-watch-{uuid.uuid4()}", version=codec.MQTT_311
        )
        self.client = IntakeClient(
            settings, ["demo/forwarded/#", "+/+/+"], self._on_batch, logs.get_logger()
        )
        self.client.start()
        self.client.subscribed.wait(10)

    def _on_batch(self, batch: list[InboundMessage]) -> None:
        for message in batch:
            self._show(message.topic or "", message.payload)
        self.client.ack(batch[0].generation, [m.mid for m in batch if m.qos])

    def _show(self, topic: str, payload: bytes) -> None:
        try:
            if topic.startswith("demo/forwarded/"):
                event = json.loads(payload)
                shown = logs.redact(event["customer"])
                print(f"    forwarded {event['op']:<6} {json.dumps(shown, ensure_ascii=False)}")
            elif topic.endswith("-error-customer"):
                alarm = json.loads(payload)
                for key, body in alarm["events"].items():
                    print(
                        f"    ALARM {body['status']} code {body['code']} on {topic}\n"
                        f"          {key}: {body['msg']} ({len(body['customerList'])} record(s))"
                    )
            else:
                return
            with self._lock:
                self.seen += 1
        except Exception:  # noqa: BLE001 - the demo's printer must not stop the watcher
            print("    (could not show a message)")

    def close(self) -> None:
        self.client.stop()


def _free_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _platform_sinks(
    qa: QuickAudienceStandIn, openapi: QuickAudienceOpenApiStandIn, mobile: MobileEventsStandIn
) -> list[dict[str, Any]]:
    """Sink configs that report to the three stand-ins."""
    account = {"access_id": _ACCESS_ID, "organization_id": _ORGANIZATION_ID}
    return [
        {
            "type": "quick_audience",
            "name": "quick_audience",
            "endpoint": qa.url,
            "app_id": _APP_ID,
            "access_key": _ACCESS_KEY,
            "access_secret": _ACCESS_SECRET,
            **account,
        },
        {
            "type": "quick_audience_openapi",
            "name": "quick_audience_openapi",
            "endpoint": openapi.url,
            "access_key_id": _ACCESS_KEY,
            "access_key_secret": _ACCESS_SECRET,
            **account,
        },
        {
            "type": "mobile_events",
            "name": "mobile_events",
            "base_url": mobile.url,
            "api_key": _API_KEY,
            "app_id": "io.example.customer-bridge",
            "platform": "server",
        },
    ]


def _masked(item: dict[str, Any]) -> str:
    """An item a stand-in took, with identities and personal fields masked."""
    shown = dict(item)
    if isinstance(shown.get("customerIdList"), list):
        shown["customerIdList"] = [
            {**entry, "customerId": logs.mask(entry.get("customerId", ""))}
            for entry in shown["customerIdList"]
        ]
    return json.dumps(logs.redact(shown), ensure_ascii=False, separators=(",", ":"))


def _settle(standins: list[StandIn], timeout: float = 10.0) -> None:
    """Wait until the stand-ins have seen no request for a second (or `timeout` passed)."""
    deadline = time.monotonic() + timeout
    seen, quiet_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        count = sum(len(standin.requests) for standin in standins)
        if count != seen:
            seen, quiet_since = count, time.monotonic()
        elif time.monotonic() - quiet_since >= 1.0:
            return
        time.sleep(0.1)


def _show_platforms(standins: list[StandIn]) -> None:
    for standin in standins:
        refused = sum(1 for request in standin.requests if request.status != 200)
        print(
            f"\n{standin.kind} stand-in on 127.0.0.1:{standin.port}: "
            f"{len(standin.requests)} request(s), {refused} refused, "
            f"took {len(standin.accepted)} event(s), {standin.duplicates} duplicate(s) dropped"
        )
        if isinstance(standin, QuickAudienceOpenApiStandIn):
            for identity in standin.identities:
                print(f"    identity {_masked(identity)}")
        for item in standin.accepted:
            print(f"    event    {_masked(item)}")


def run_demo(*, port: int, rounds: int, interval: float, out: Path, platforms: bool = False) -> int:
    """Run the demo; `rounds=0` keeps going until Ctrl-C."""
    port = port or _free_port()
    standins: list[StandIn] = []
    sinks: list[dict[str, Any]] = []
    if platforms:
        qa = QuickAudienceStandIn(
            app_id=_APP_ID,
            access_key=_ACCESS_KEY,
            access_secret=_ACCESS_SECRET,
            access_id=_ACCESS_ID,
            organization_id=_ORGANIZATION_ID,
        )
        openapi = QuickAudienceOpenApiStandIn(
            access_key_id=_ACCESS_KEY,
            access_key_secret=_ACCESS_SECRET,
            access_id=_ACCESS_ID,
            organization_id=_ORGANIZATION_ID,
        )
        mobile = MobileEventsStandIn(api_key=_API_KEY)
        standins = [qa, openapi, mobile]
        for standin in standins:
            standin.start()
        sinks = _platform_sinks(qa, openapi, mobile)
    try:
        return _run(port, rounds, interval, out, sinks, standins)
    finally:
        for standin in standins:
            standin.stop()


def _run(
    port: int,
    rounds: int,
    interval: float,
    out: Path,
    platform_sinks: list[dict[str, Any]],
    standins: list[StandIn],
) -> int:
    # A fresh spool each run: the documented samples carry no msgId, so a spool kept
    # from an earlier run would drop them as duplicates.
    spool_dir = Path(tempfile.mkdtemp(prefix="bridge-demo-"))
    jsonl = out / "customers.jsonl"
    cfg = config.parse(
        {
            "broker": {
                "embedded": True,
                "port": port,
                "protocol": "3.1.1",
                "client_id": "customer-bridge-demo",
            },
            "sinks": [
                {"type": "jsonl", "name": "file", "path": str(jsonl)},
                {"type": "mqtt", "name": "republish", "topic": FORWARDED},
                *platform_sinks,
            ],
            "spool": {"path": str(spool_dir / "spool.db")},
            "health": {"port": 0},
            "logging": {"level": "warning", "format": "console"},
        }
    )
    logs.configure("warning", "console")
    bridge = Bridge(cfg, logs.get_logger())
    print(f"customer-bridge demo: embedded MQTT broker on 127.0.0.1:{port}")
    print(f"  subscribed to {cfg.subscription.selection().filters()}; records also go to {jsonl}")
    for standin in standins:
        print(f"  {standin.kind} stand-in on {standin.url}")
    bridge.start()
    watcher: _Watcher | None = None
    try:
        if not bridge.wait_ready(15):
            raise BrokerError("the bridge did not subscribe within 15 s")
        watcher = _Watcher(port)
        platform = Publisher(
            BrokerConfig(
                host="127.0.0.1",
                port=port,
                protocol="3.1.1",
                client_id=f"demo-platform-{uuid.uuid4()}",
            ),
            logs.get_logger(),
        )
        platform.start()
        platform.connected.wait(10)
        rng = random.Random()  # noqa: S311 - sample data, not secrets
        done = 0
        while rounds == 0 or done < rounds:
            done += 1
            print(f"\nround {done}")
            for what, topic, payload in traffic(rng):
                print(f"  platform publishes {what}\n    on {topic}")
                platform.publish(topic, payload, qos=1)
                time.sleep(0.3)  # let the output of one message print before the next
            if rounds == 0 or done < rounds:
                time.sleep(interval)
        time.sleep(1.0)
        _settle(standins)
        platform.stop()
    except KeyboardInterrupt:
        print("\ninterrupted")
    finally:
        if watcher is not None:
            watcher.close()
        bridge.stop()
    _show_platforms(standins)
    stats = bridge.summary()
    print(
        f"\ncustomer-bridge summary: received {stats['received']}, forwarded {stats['forwarded']} "
        f"record(s), rejected {stats['rejected']}, duplicates dropped {stats['duplicates']}, "
        f"alarms {stats['alarms']} {stats['alarms_by_status']}"
    )
    return 0
