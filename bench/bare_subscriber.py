"""The limit: a bare paho-mqtt QoS 1 subscriber with manual acks that only parses the JSON.

It resumes the persistent session the harness primed (same client id, clean start off), takes
messages until `--expect` have come, acknowledging each after `json.loads`, and prints one JSON
line: when the first and the last message came (CLOCK_MONOTONIC, comparable with the
harness's `time.monotonic_ns()`), how many, how many did not parse.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--receive-maximum", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()

    state: dict[str, Any] = {"count": 0, "bad": 0, "first": None, "last": None}
    done = threading.Event()

    def on_message(client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            json.loads(message.payload)
        except ValueError:
            state["bad"] += 1
        client.ack(message.mid, message.qos)
        now = time.monotonic_ns()
        if state["first"] is None:
            state["first"] = now
        state["count"] += 1
        if state["count"] >= args.expect:
            state["last"] = now
            done.set()

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=args.client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=True,
    )
    client.on_message = on_message
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = args.receive_maximum
    client.connect(args.host, args.port, 30, clean_start=False, properties=props)
    client.loop_start()
    finished = done.wait(args.timeout)
    client.disconnect()
    client.loop_stop()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    state["cpu_s"] = usage.ru_utime + usage.ru_stime
    with open("/proc/self/status", encoding="ascii") as status:  # ru_maxrss survives exec
        for line in status:
            if line.startswith("VmRSS:"):
                state["rss_mb"] = int(line.split()[1]) / 1024.0
    print(json.dumps({**state, "finished": finished}), flush=True)
    return 0 if finished else 1


if __name__ == "__main__":
    sys.exit(main())
