"""Fault test (issue 12, observation 4): personal data under other keys, through a running
bridge with the log sink, and in what the CLI prints about it afterwards.

The campaign found 1 of 7 cases masked (`mobile`, `Phone`, `idCard`, `meta.tel`, a phone in
`remark`, phones in `spaceIds`; and `name`, `address` printed by the log sink).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from brokers import Mosquitto
from faultkit import (
    PROFILE,
    REPORT_TS,
    Bridges,
    Message,
    Publisher,
    bridge_config,
    read_jsonl,
    wait_until,
)

CUSTOM_TOPIC = "acme/proj_42/v2-customization-vendor-customer"
CASES: dict[str, dict[str, Any]] = {
    "mobile": {"mobile": "13911110001"},
    "Phone": {"Phone": "13911110002"},
    "idCard": {"idCard": "11010519491231002X"},
    "meta.tel": {"meta": {"tel": "13911110004", "contact": {"wechat": "+86 139 1111 0005"}}},
    "phone in remark": {"remark": "白天请打 139-1111-0006"},
    "phones in spaceIds": {"spaceIds": ["s-1", "13911110007", "座机 010-62345678"]},
    "name and address": {"name": "欧阳娜娜", "address": "上海市徐汇区漕溪北路88号"},
    "e-mail in an unknown field": {"contactInfo": "ouyang.nana@example.com.cn"},
}
SECRETS = [
    "13911110001",
    "13911110002",
    "11010519491231002X",
    "13911110004",
    "139 1111 0005",
    "139-1111-0006",
    "13911110007",
    "010-62345678",
    "欧阳娜娜",
    "上海市徐汇区漕溪北路88号",
    "ouyang.nana@example.com.cn",
    "13800138000",  # the phone every record carries
]


def case_message(n: int, case: str, fields: dict[str, Any]) -> Message:
    """One add of one record carrying `fields` on the customization topic (meta allowed)."""
    record = {
        "id": f"pii-{n}",
        "projectId": "1117745722292428800",
        "name": "张三",
        "phone": "13800138000",
        **fields,
    }
    document = {
        "msgId": f"pii-msg-{n}",
        "reportTs": REPORT_TS,
        "profile": PROFILE,
        "events": {"add": {"eventTs": 1661154622000, "eventType": 1, "customerList": [record]}},
    }
    payload = json.dumps(document, ensure_ascii=False).encode()
    return Message(f"pii-msg-{n}", record["id"], 0, True, payload, topic=CUSTOM_TOPIC)


def bridge_cli(*args: str, stdin: bytes | None = None) -> str:
    """Run a `bridge` command; its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr.decode()
    return done.stdout.decode()


def test_personal_data_under_any_key_never_reaches_the_log_or_the_cli(
    mosquitto: Mosquitto, bridges: Bridges, tmp_path: Path
) -> None:
    """The observed cases through a running bridge with the log sink: none in clear in its log,
    nor in `dead-letters list/show` of an unreadable payload quoting them, nor in `validate`."""
    messages = [case_message(n, case, fields) for n, (case, fields) in enumerate(CASES.items())]
    torn = Message(
        "pii-torn",
        "",
        0,
        False,
        b'{"phone": "13911110001", "name": "\xe6\xac\xa7\xe9\x98\xb3',
        CUSTOM_TOPIC,
    )
    out = tmp_path / "crm.jsonl"
    spool = tmp_path / "state" / "spool.db"
    sinks = [
        {"type": "jsonl", "name": "crm", "path": str(out)},
        {"type": "log", "name": "audit"},
    ]
    cfg = bridge_config(mosquitto, sinks, spool, client_id="pii")
    bridge = bridges(cfg, "pii-").start().wait_ready()
    publisher = Publisher(mosquitto, [*messages, torn]).start()
    try:
        wait_until(lambda: len(read_jsonl(out).events) >= len(messages), 30, "every record", bridge)
        bridge.wait_event("customer_event", count=len(messages))
        assert bridge.terminate() == 0
    finally:
        publisher.close()
    assert "13911110002" in out.read_text(encoding="utf-8")  # the sink itself gets the data
    log = bridge.log()
    listed = bridge_cli("dead-letters", "-c", str(bridge.config_path), "list")
    (letter,) = [json.loads(line) for line in listed.splitlines()]
    shown = bridge_cli("dead-letters", "-c", str(bridge.config_path), "show", str(letter["id"]))
    validated = "".join(
        bridge_cli("validate", "--topic", CUSTOM_TOPIC, "-", stdin=m.payload) for m in messages
    )
    for value in SECRETS:
        for where, text in (
            ("log", log),
            ("list", listed),
            ("show", shown),
            ("validate", validated),
        ):
            assert value not in text, f"{value} in clear in {where}"
    logged = bridge.events("customer_event")
    assert sorted(e["customer"]["id"] for e in logged) == sorted(f"pii-{n}" for n in range(8))
    print(
        f"\n[faults] 4. personal data: {len(CASES)} cases of 8 masked in the log sink, the log,"
        f" dead-letters list/show and validate ({len(SECRETS)} values never in clear)"
    )
