"""Realistic customer envelopes for the benchmark, with what each should become.

An envelope holds one operation (add 60 %, edit 30 %, delete 10 %) of 1 to 5 records, on a
standard topic (60 %) or a customization topic (40 %, with a `meta` object per record), for
two tenants and three projects. About 5 % of the envelopes are invalid:

- one record of the batch breaks a rule (a non-numeric age, a 16-digit phone, no name, an id
  longer than 36, a delete phone longer than 11): the others are forwarded, one alarm;
- the envelope breaks a rule (a wrong profile): no record is forwarded, one alarm;
- the payload is not JSON (1 in 20 of the invalid ones): one `unknown_error` alarm.

`Envelope.records` is what the bridge forwards (jsonl lines), `Envelope.alarms` the alarms it
publishes; `Envelope.valid` says whether the whole envelope passes the JSON Schema in
`envelope_schema()`, which is what the Node-RED peer checks.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

TENANTS = ("acme", "globex")
PROJECTS = ("1001", "1002", "2001")
VENDORS = (("v2", "hikvision"), ("v2", "海康威视"), ("v3", "dahua"))
PROFILE = {"poiCode": "s0140001", "appType": "customer", "modelId": 140001}
SURNAMES = "王李张刘陈杨赵黄周吴徐孙胡朱高林何郭马罗"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂"
CITIES = ("上海市浦东新区", "北京市朝阳区", "深圳市南山区", "杭州市西湖区", "成都市武侯区")
INVALID_SHARE = 0.05
CUSTOMERS = 20_000  # distinct customer ids: events of one customer recur, as in real traffic


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message and what it should become."""

    topic: str
    payload: bytes
    msg_id: str
    records: int  # valid records the bridge forwards
    alarms: int  # alarms the bridge publishes
    valid: bool  # passes the envelope's JSON Schema as a whole
    parsable: bool = True  # False: not JSON, so its alarm cannot name it (no sourceMsgId)

    @property
    def error_topic(self) -> str:
        """The topic its alarms go to."""
        return error_topic(self.topic)


def inbound_topics() -> list[str]:
    """Every inbound topic the traffic uses."""
    topics = []
    for tenant in TENANTS:
        for project in PROJECTS:
            topics.append(f"{tenant}/proj_{project}/v1-business-model-customer")
            topics.extend(
                f"{tenant}/proj_{project}/{version}-customization-{vendor}-customer"
                for version, vendor in VENDORS
            )
    return topics


def error_topic(topic: str) -> str:
    """Insert `error-` before the final `customer` (SPEC 1)."""
    return topic[: -len("customer")] + "error-customer"


def error_topics() -> list[str]:
    """The error topics of every inbound topic the traffic uses."""
    return [error_topic(t) for t in inbound_topics()]


def _record(rng: random.Random, op: str, project: str, customization: bool) -> dict[str, Any]:
    cid = f"cust-{rng.randrange(CUSTOMERS):06d}"
    phone = f"13{rng.randrange(10**9):09d}"
    if op == "delete":
        record: dict[str, Any] = {"id": cid}
        if rng.random() < 0.5:
            record["phone"] = phone
    else:
        name = rng.choice(SURNAMES) + "".join(rng.choice(GIVEN) for _ in range(rng.randint(1, 2)))
        record = {
            "id": cid,
            "projectId": f"111774572229242{project}",
            "name": name,
            "phone": phone,
            "idType": 1,
            "idNumber": f"31011519{rng.randrange(10**10):010d}",
            "sex": rng.randint(1, 2),
            "age": rng.randint(18, 80),
            "spaceIds": [f"space-{rng.randrange(100)}" for _ in range(rng.randint(0, 2))],
            "companyIds": [f"company-{rng.randrange(50)}"],
            "customerGradeId": str(rng.randint(1, 5)),
            "customerTypeId": rng.randint(1, 3),
            "address": rng.choice(CITIES) + f"{rng.randint(1, 999)}号",
            "email": f"user{rng.randrange(10**6)}@example.com",
            "remark": "VIP" if rng.random() < 0.1 else "",
            "bornDate": rng.randint(10**11, 10**12) * 1000 // 1000,
            "nation": "汉族",
            "profession": "工程师",
            "marriage": rng.randint(0, 4),
            "education": rng.randint(0, 7),
            "facePhoto": f"https://cdn.example.com/faces/{cid}/{rng.randrange(10**8)}.jpg",
        }
    if customization:
        record["meta"] = {"level": rng.randint(1, 5), "source": "gate-3", "tags": ["a", "b"]}
    return record


def _break_record(rng: random.Random, record: dict[str, Any], op: str) -> None:
    if op == "delete":
        if rng.random() < 0.5:
            record["id"] = "x" * 37
        else:
            record["phone"] = "138001380001"
        return
    fault = rng.randrange(4)
    if fault == 0:
        record["age"] = "年龄"
    elif fault == 1:
        record["phone"] = "1380013800012345"
    elif fault == 2:
        del record["name"]
    else:
        record["id"] = "y" * 37


def make(
    count: int, *, seed: int = 7, prefix: str = "m", invalid_share: float = INVALID_SHARE
) -> list[Envelope]:
    """`count` envelopes with unique msgIds `{prefix}-{n}`, about `invalid_share` of them
    invalid (one alarm each)."""
    rng = random.Random(seed)
    topics = inbound_topics()
    standard = [t for t in topics if "business-model" in t]
    custom = [t for t in topics if "customization" in t]
    made = []
    for n in range(count):
        msg_id = f"{prefix}-{n:07d}"
        made.append(_one(rng, msg_id, standard, custom, invalid_share))
    return made


def _one(
    rng: random.Random, msg_id: str, standard: list[str], custom: list[str], invalid_share: float
) -> Envelope:
    customization = rng.random() < 0.4
    topic = rng.choice(custom if customization else standard)
    project = topic.split("/")[1].removeprefix("proj_")
    op = rng.choices(("add", "edit", "delete"), (6, 3, 1))[0]
    size = rng.randint(1, 5)
    records = [_record(rng, op, project, customization) for _ in range(size)]
    document: dict[str, Any] = {
        "msgId": msg_id,
        "reportTs": 1661154622,
        "profile": dict(PROFILE),
        "events": {op: {"eventTs": 1661154622000, "eventType": 1, "customerList": records}},
    }
    forwarded, alarms, valid = size, 0, True
    if rng.random() < invalid_share:
        valid, alarms = False, 1
        kind = rng.random()
        if kind < 0.05:
            payload = b'{"msgId": "' + msg_id.encode() + b'", "events": {"add": [not json'
            return Envelope(topic, payload, msg_id, 0, 1, False, parsable=False)
        if kind < 0.20:
            document["profile"]["modelId"] = 120001  # the seed's copy error
            forwarded = 0
        else:
            _break_record(rng, rng.choice(records), op)
            forwarded = size - 1
    payload = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
    return Envelope(topic, payload, msg_id, forwarded, alarms, valid)


def summary(envelopes: list[Envelope]) -> dict[str, Any]:
    """What the traffic holds and what should come out of it."""
    sizes = [len(e.payload) for e in envelopes]
    return {
        "messages": len(envelopes),
        "records_forwarded": sum(e.records for e in envelopes),
        "alarms": sum(e.alarms for e in envelopes),
        "valid_envelopes": sum(e.valid for e in envelopes),
        "invalid_envelopes": sum(not e.valid for e in envelopes),
        "customization_share": round(
            sum("customization" in e.topic for e in envelopes) / max(1, len(envelopes)), 3
        ),
        "payload_bytes_mean": round(sum(sizes) / max(1, len(sizes))),
        "payload_bytes_max": max(sizes, default=0),
    }


# --- the JSON Schema the Node-RED peer validates against ----------------------------------------


def _string(max_length: int, *, required: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "maxLength": max_length}
    if required:
        schema["minLength"] = 1
    else:
        schema["type"] = ["string", "null"]
    return schema


def _int(low: int | None = None, high: int | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": ["integer", "null"]}
    if low is not None:
        schema["minimum"] = low
    if high is not None:
        schema["maximum"] = high
    return schema


def _long(*, required: bool = False) -> dict[str, Any]:
    text: dict[str, Any] = {"type": "string", "maxLength": 36}
    if required:
        return {"anyOf": [{"type": "integer"}, {**text, "minLength": 1}]}
    return {"anyOf": [{"type": "integer"}, text, {"type": "null"}]}


def envelope_schema() -> dict[str, Any]:
    """SPEC 2 and 3 (add/edit/delete, both topic kinds) as a draft-07 JSON Schema."""
    strings = ["nativePlace", "nation", "profession", "interest", "character"]
    strings += ["postalCode", "jobNum"]
    record_add: dict[str, Any] = {
        "type": "object",
        "required": ["id", "projectId", "name", "phone"],
        "properties": {
            "id": _string(36, required=True),
            "projectId": _long(required=True),
            "name": _string(20, required=True),
            "phone": _string(15, required=True),
            "idType": _int(0, 4),
            "idNumber": _string(45),
            "sex": _int(0, 2),
            "age": _int(0, 200),
            "spaceIds": {"type": ["array", "null"], "items": {"type": "string"}},
            "companyIds": {"type": ["array", "null"], "items": {"type": "string"}},
            "customerGradeId": _long(),
            "customerTypeId": _long(),
            "roleId": _long(),
            "contractName": _string(50),
            "contractPhone": _string(15),
            "address": _string(50),
            "email": _string(50),
            "remark": _string(100),
            "bornDate": _int(),
            **{name: _string(20) for name in strings},
            "speciality": _string(50),
            "marriage": _int(0, 4),
            "education": _int(0, 7),
            "facePhoto": _string(255),
            "meta": {"type": ["object", "null"]},
        },
    }
    record_delete: dict[str, Any] = {
        "type": "object",
        "required": ["id"],
        "properties": {
            "id": _string(36, required=True),
            "phone": _string(11),
            "meta": {"type": ["object", "null"]},
        },
    }

    def operation(record: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "object",
            "required": ["eventTs", "eventType", "customerList"],
            "properties": {
                "eventTs": {"type": "integer", "minimum": 1},
                "eventType": {"const": 1},
                "customerList": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 1000,
                    "items": record,
                },
            },
        }

    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "customer envelope (eventType 1)",
        "type": "object",
        "required": ["reportTs", "profile", "events"],
        "properties": {
            "msgId": {"type": "string", "minLength": 1, "maxLength": 64},
            "reportTs": {"type": "integer", "minimum": 1},
            "profile": {
                "type": "object",
                "required": ["poiCode", "appType", "modelId"],
                "properties": {
                    "poiCode": {"const": "s0140001"},
                    "appType": {"const": "customer"},
                    "modelId": {"const": 140001},
                },
            },
            "events": {
                "type": "object",
                "minProperties": 1,
                "additionalProperties": False,
                "properties": {
                    "add": operation(record_add),
                    "edit": operation(record_add),
                    "delete": operation(record_delete),
                },
            },
        },
    }


def make_bulk(count: int, *, records: int = 100, seed: int = 11) -> list[Envelope]:
    """`count` valid add envelopes of `records` records each: a bulk import."""
    rng = random.Random(seed)
    standard = [t for t in inbound_topics() if "business-model" in t]
    made = []
    for n in range(count):
        msg_id = f"bulk-{n:07d}"
        topic = rng.choice(standard)
        project = topic.split("/")[1].removeprefix("proj_")
        document: dict[str, Any] = {
            "msgId": msg_id,
            "reportTs": 1661154622,
            "profile": dict(PROFILE),
            "events": {
                "add": {
                    "eventTs": 1661154622000,
                    "eventType": 1,
                    "customerList": [_record(rng, "add", project, False) for _ in range(records)],
                }
            },
        }
        payload = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
        made.append(Envelope(topic, payload, msg_id, records, 0, True))
    return made
