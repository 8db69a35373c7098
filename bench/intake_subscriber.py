"""The bridge's own receive-only client (`bridge.intake.client`) doing what the bare paho
subscriber does: take the primed backlog, `json.loads` each payload, acknowledge it.

Same arguments and output line as `bare_subscriber.py`, so the two are compared on the same
backlog: the difference is the cost of the receive path alone.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import threading
import time
from typing import Any

import structlog

from bridge.intake.client import ConnectSettings, IntakeClient
from bridge.intake.message import InboundMessage

FILTER = "+/+/+"


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
    client: IntakeClient

    def on_batch(batch: list[InboundMessage]) -> None:
        loads = json.loads
        for message in batch:
            try:
                loads(message.payload)
            except ValueError:
                state["bad"] += 1
        client.ack(batch[0].generation, [m.mid for m in batch if m.qos])
        now = time.monotonic_ns()
        if state["first"] is None:
            state["first"] = now
        state["count"] += len(batch)
        if state["count"] >= args.expect:
            state["last"] = now
            done.set()

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    settings = ConnectSettings(
        args.host, args.port, args.client_id, receive_maximum=args.receive_maximum
    )
    client = IntakeClient(settings, [FILTER], on_batch, structlog.get_logger("bench"))
    client.start()
    finished = done.wait(args.timeout)
    client.stop()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    state["cpu_s"] = usage.ru_utime + usage.ru_stime
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                state["rss_mb"] = int(line.split()[1]) / 1024.0
    print(json.dumps({**state, "finished": finished}), flush=True)
    return 0 if finished else 1


if __name__ == "__main__":
    sys.exit(main())
