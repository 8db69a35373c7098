"""Micro-benchmark of `validate` on the bench traffic and the documented samples (A/B).

Run it once per tree to compare, e.g. before and after a change to validation:

    .venv/bin/python bench/validate_ab.py                       # this tree
    .venv/bin/python bench/validate_ab.py --bridge /tmp/old     # a tree holding bridge/ and bench/

It prints microseconds per message (best of `--rounds`) for each payload family. Every
`traffic` payload holds a URL (a colon inside a string), so it takes the second, exact count
of the repeated-key check; `samples` take the first; `traffic-repeated-key` the slow parse.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main() -> None:
    """Time validation of the same payloads with the bridge found under `--bridge`."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--bridge", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    sys.path.insert(0, str(args.bridge))
    sys.path.insert(0, str(args.bridge / "bench"))
    import traffic  # noqa: PLC0415 - from the tree under test

    from bridge.core.validate import Mode, Rules, validate  # noqa: PLC0415

    envelopes = traffic.make(args.messages)
    families: dict[str, list[tuple[bytes, bool]]] = {
        "traffic": [(e.payload, "customization" in e.topic) for e in envelopes],
        "traffic-standard": [(e.payload, False) for e in envelopes if "business" in e.topic],
        "traffic-customization": [(e.payload, True) for e in envelopes if "custom" in e.topic],
        "samples": [
            (p.read_bytes(), p.name.startswith("customization"))
            for p in sorted((args.bridge / "bridge" / "samples").glob("*.json"))
        ]
        * 200,
    }
    records = [json.loads(e.payload)["events"] for e in envelopes if e.parsable and e.valid]
    batch = [
        r
        for events in records
        for body in events.values()
        if isinstance(body, dict)
        for r in body.get("customerList", [])
        if "name" in r and "meta" not in r
    ][:1000]
    document = {
        "msgId": "bench-1",
        "reportTs": 1661154622,
        "profile": {"poiCode": "s0140001", "appType": "customer", "modelId": 140001},
        "events": {"add": {"eventTs": 1661154622000, "eventType": 1, "customerList": batch}},
    }
    families["batch-1000"] = [(json.dumps(document, ensure_ascii=False).encode(), False)] * 5
    # The slow path: the same traffic with msgId given twice (the old code kept the last).
    families["traffic-repeated-key"] = [
        (p.replace(b'{"msgId":', b'{"msgId":"x","msgId":', 1), c)
        for p, c in families["traffic"]
        if p.startswith(b'{"msgId":')
    ]
    result = {"bridge": str(args.bridge)}
    for mode in (Mode.LENIENT, Mode.STRICT):
        rules = Rules(mode=mode)
        for name, payloads in families.items():
            best = float("inf")
            for _ in range(args.rounds):
                started = time.perf_counter()
                for payload, customization in payloads:
                    validate(payload, rules, customization=customization)
                best = min(best, time.perf_counter() - started)
            result[f"{mode}/{name}"] = f"{best / len(payloads) * 1e6:.1f} us/msg"
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
