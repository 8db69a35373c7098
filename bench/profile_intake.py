"""The intake's hot path in one process, under cProfile: no broker, no bench harness.

    python bench/profile_intake.py [--messages 20000] [--group 1000] [--top 25]

Feeds the bench traffic to `Intake.process` in groups (a `FakeConnection` stands in for the
broker) with the default config, a jsonl sink and a durable spool, and prints the CPU per
message and the functions that take it, by own time and by cumulative time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import traffic

from bridge import logs
from bridge.config import Config
from bridge.runtime import Bridge
from bridge.testing import FakeConnection


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--group", type=int, default=1000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--no-profile", action="store_true", help="time only")
    args = parser.parse_args()
    envelopes = traffic.make(args.messages)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = Config.model_validate(
            {
                "spool": {"path": str(work / "spool.db")},
                "health": {"enabled": False},
                "logging": {"level": "warning", "format": "json"},
                "validation": {"workers": 0},
                "sinks": [{"type": "jsonl", "path": str(work / "out.jsonl")}],
            }
        )
        logs.configure("warning", "json", stream=io.StringIO())
        bridge = Bridge(config, logs.get_logger(), connection=FakeConnection.of)
        fake = bridge.connection
        assert isinstance(fake, FakeConnection)
        bridge.intake.attach(fake)
        fake.reconnect()
        messages = [fake.message(e.topic, e.payload, qos=1) for e in envelopes]
        groups = [messages[i : i + args.group] for i in range(0, len(messages), args.group)]
        profiler = cProfile.Profile()
        started, cpu = time.perf_counter(), time.process_time()
        if not args.no_profile:
            profiler.enable()
        for group in groups:
            bridge.intake.process(group)
        profiler.disable()
        cpu = time.process_time() - cpu
        wall = time.perf_counter() - started
        for target in bridge.targets:
            target.sink.close()
        bridge.spool.close()
    per = cpu / len(messages) * 1e6
    print(f"{len(messages):,} messages: {len(messages) / wall:,.0f} msgs/s, {per:.0f} µs CPU/msg")
    if not args.no_profile:
        for order in ("tottime", "cumulative"):
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats(order).print_stats(args.top)
            print("\n".join(out.getvalue().splitlines()[6:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
