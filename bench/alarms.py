"""The alarm worker draining a backlog of alarms: one PUBACK at a time vs all in flight.

Both modes drive the runtime's alarm worker over a real spool and the bridge's `Publisher`
on a loopback mosquitto (default config: it grants MQTT 5 clients a Receive Maximum of 20).
`one at a time` is the worker as it was (publish, wait for its PUBACK, next); `pipelined`
publishes the batch with every publish in flight and waits once.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import structlog
from common import Mosquitto

from bridge.config import BrokerConfig, DeliveryConfig
from bridge.delivery import Worker, alarm_sender
from bridge.mqtt import Publisher

try:
    from bridge.targets import ALARM_BATCH
except ImportError:  # a bridge from before the targets module (--bridge-ref)
    from bridge.runtime import ALARM_BATCH  # type: ignore[attr-defined,no-redef]
from bridge.spool import ALARMS, NewRow, Spool

TOPIC = "acme/proj_42/v1-business-model-error-customer"


def _alarm(n: int) -> NewRow:
    """An alarm row of a realistic size (one rejected record, its reasons)."""
    payload = {
        "msgId": f"bench-{n:08d}",
        "reportTs": 1_700_000_000_000 + n,
        "profile": "customer",
        "events": {
            "add_error": {
                "eventTs": 1_700_000_000_000 + n,
                "code": 400,
                "msg": "1 record rejected",
                "records": [{"id": f"c-{n}", "remark": "x" * 200}],
                "sourceMsgId": f"src-{n:08d}",
                "errors": [{"index": 0, "field": "phone", "reason": "not a phone number"}],
            }
        },
    }
    # Written as the bridge writes its alarm rows (`encoding.alarm_body`): compact JSON.
    body = json.dumps(
        {"topic": TOPIC, "payload": payload}, ensure_ascii=False, separators=(",", ":")
    )
    return NewRow(ALARMS, "", body)


def _sender(publisher: Publisher, pipelined: bool) -> Any:
    """The alarm worker's sender; a bridge from before pipelining (--bridge-ref) has one mode."""
    if not hasattr(publisher, "publish_many"):
        return alarm_sender(publisher.publish)  # type: ignore[arg-type]
    from bridge.sinks.base import one_by_one  # noqa: PLC0415 - absent before pipelining

    return alarm_sender(publisher.publish_many if pipelined else one_by_one(publisher.publish))


def _drain(workdir: Path, broker: Mosquitto, count: int, protocol: str, pipelined: bool) -> float:
    """Seconds the alarm worker takes to publish `count` alarms and empty the outbox."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = structlog.get_logger()
    spool = Spool(workdir / "spool.db", synchronous="NORMAL")
    config = BrokerConfig(host=broker.host, port=broker.port, protocol=protocol)  # type: ignore[arg-type]
    publisher = Publisher(config, log)
    publisher.start()
    try:
        if not publisher.connected.wait(10):
            raise RuntimeError("the publisher did not connect")
        spool.store([_alarm(n) for n in range(count)], [])
        worker = Worker(
            ALARMS,
            _sender(publisher, pipelined),
            spool,
            DeliveryConfig(),
            threading.Event(),
            log,
            batch_size=ALARM_BATCH,
            gave_up=lambda _rows, _reason: [],
            kind="alarm",
        )
        started = time.perf_counter()
        while worker.step():
            pass
        elapsed = time.perf_counter() - started
        if spool.pending or spool.dead_count() or worker.retries:
            raise RuntimeError(
                f"alarms left {spool.pending}, dead {spool.dead_count()}, retries {worker.retries}"
            )
        return elapsed
    finally:
        publisher.stop()
        spool.close()


def run(work: Path, count: int) -> dict[str, Any]:
    """alarms/s of both modes on MQTT 5 and 3.1.1, from one run."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    results: dict[str, Any] = {"alarms": count, "batch": ALARM_BATCH, "rows": []}
    with Mosquitto(work / "alarms-broker") as broker:
        for protocol in ("5", "3.1.1"):
            modes = (False, True) if hasattr(Publisher, "publish_many") else (False,)
            for pipelined in modes:
                mode = "pipelined" if pipelined else "one at a time"
                where = work / f"alarms-{protocol}-{'p' if pipelined else 's'}"
                seconds = _drain(where, broker, count, protocol, pipelined)
                results["rows"].append(
                    {
                        "protocol": protocol,
                        "mode": mode,
                        "seconds": round(seconds, 3),
                        "alarms_per_s": round(count / seconds),
                    }
                )
    return results


def table(results: dict[str, Any]) -> str:
    """The results as a markdown table."""
    lines = ["| MQTT | alarm publishing | alarms/s |", "|---|---|---:|"]
    lines += [f"| {r['protocol']} | {r['mode']} | {r['alarms_per_s']:,} |" for r in results["rows"]]
    return "\n".join(lines)
