"""Publishes envelopes at a fixed rate, QoS 1, with the publish time inside each msgId.

The templates file holds one JSON object per line, `{"topic": ..., "payload": ...}`, whose
payload contains the placeholder `@@MSGID@@`. Message `n` uses template `n % len(templates)`
and gets msgId `{prefix}-{n}-{t}` where `t` is CLOCK_MONOTONIC in nanoseconds taken just
before the publish call (the harness reads the same clock when the record lands in the sink).
Prints one JSON line at the end: how many were published and how late the schedule ran.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

PLACEHOLDER = b"@@MSGID@@"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--templates", required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--prefix", default="r")
    args = parser.parse_args()

    templates: list[tuple[str, bytes]] = []
    with open(args.templates, encoding="utf-8") as handle:
        for line in handle:
            item = json.loads(line)
            templates.append((item["topic"], item["payload"].encode()))

    acked = 0
    lock = threading.Lock()

    def on_publish(*_args: Any) -> None:
        nonlocal acked
        with lock:
            acked += 1

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"bench-rate-{args.prefix}", protocol=mqtt.MQTTv311
    )
    client.max_inflight_messages_set(10_000)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.connect(args.host, args.port, 60)
    client.loop_start()

    total = int(args.rate * args.seconds)
    interval_ns = int(1e9 / args.rate)
    start_ns = time.monotonic_ns() + 50_000_000
    late_max = 0
    for n in range(total):
        due = start_ns + n * interval_ns
        now = time.monotonic_ns()
        if due > now:
            time.sleep((due - now) / 1e9)
        else:
            late_max = max(late_max, now - due)
        topic, template = templates[n % len(templates)]
        stamp = time.monotonic_ns()
        msg_id = f"{args.prefix}-{n}-{stamp}".encode()
        client.publish(topic, template.replace(PLACEHOLDER, msg_id), qos=1)
    end_ns = time.monotonic_ns()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with lock:
            if acked >= total:
                break
        time.sleep(0.01)
    client.disconnect()
    client.loop_stop()
    print(
        json.dumps(
            {
                "published": total,
                "acked": acked,
                "started_ns": start_ns,
                "ended_ns": end_ns,
                "achieved_rate": round(total / max(1e-9, (end_ns - start_ns) / 1e9), 1),
                "late_max_ms": round(late_max / 1e6, 2),
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
