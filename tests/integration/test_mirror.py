"""The mirror sink on real databases: one suite, run against SQLite and a PostgreSQL server."""

from __future__ import annotations

import itertools
import json
import random
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from brokers import free_port
from databases import Postgres
from test_bridge_run import (  # the fixture is used by name
    BridgeProcess,
    bridges,  # noqa: F401
    config,
    envelope,
    publish,
    wait_until,
)

from bridge.config import parse
from bridge.core.events import DownstreamEvent
from bridge.core.records import Op
from bridge.core.topics import TopicKind
from bridge.errors import ConfigError, SinkError
from bridge.sinks import SinkContext
from bridge.sinks.mirror import MirrorConfig, MirrorSink, stamp

TENANT = "acme"
PROJECT = "42"
T0 = 1_700_000_000_000
_ids = itertools.count(1)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One throwaway PostgreSQL cluster for the session; each test takes a table of its own."""
    server = Postgres()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """The `database` and `table` of a fresh mirror, on each backend in turn."""
    table = f"customers_{uuid.uuid4().hex[:8]}"
    if request.param == "sqlite":
        return {"database": f"sqlite:///{tmp_path / 'mirror.db'}", "table": table}
    server: Postgres = request.getfixturevalue("postgres")
    return {"database": server.url, "table": table}


def _no_publish(_topic: str, _payload: bytes, _qos: int, _retain: bool) -> None:
    raise AssertionError("the mirror never publishes")


CONTEXT = SinkContext(publish=_no_publish, logger=structlog.get_logger())


@pytest.fixture
def mirror(database: dict[str, str]) -> Iterator[Callable[..., MirrorSink]]:
    """Build mirror sinks on the test's database; closes them at the end."""
    made: list[MirrorSink] = []

    def make(**settings: Any) -> MirrorSink:
        cfg = MirrorConfig.model_validate({"type": "mirror", **database, **settings})
        sink = cfg.build(CONTEXT)
        made.append(sink)
        return sink

    yield make
    for sink in made:
        sink.close()


def event(
    op: str,
    cid: str = "c-1",
    ts: int = T0,
    *,
    report_ts: int | None = None,
    msg_id: str | None = None,
    **fields: Any,
) -> DownstreamEvent:
    """A downstream event of customer `cid` at eventTs `ts`."""
    record: dict[str, Any] = {"id": cid}
    if op != "delete":
        record.update(projectId=PROJECT, name="张三", phone="13800138000")
    record.update(fields)
    return DownstreamEvent(
        op=Op(op),
        kind=TopicKind.STANDARD,
        tenant=TENANT,
        project_id=PROJECT,
        version=None,
        vendor=None,
        msg_id=msg_id or f"m-{next(_ids)}",
        report_ts=report_ts if report_ts is not None else ts // 1000,
        event_ts=ts,
        customer=record,
    )


def row(sink: MirrorSink, cid: str = "c-1") -> dict[str, Any] | None:
    """The stored row of customer `cid`."""
    return sink.connect().read([(TENANT, PROJECT, cid)]).get((TENANT, PROJECT, cid))


def stats(sink: MirrorSink) -> dict[str, int]:
    """The mirror's counters."""
    return sink.connect().stats()


def test_add_creates_a_row_with_a_column_per_field(mirror: Callable[..., MirrorSink]) -> None:
    """An add writes the key, each field in its snake_case column, and the event's stamp."""
    sink = mirror()
    sink.send([event("add", age=30, spaceIds=["s1"], bornDate=631152000000, roleId=7)])
    stored = row(sink)
    assert stored is not None
    assert (stored["tenant"], stored["project_id"], stored["id"]) == (TENANT, PROJECT, "c-1")
    assert stored["name"] == "张三"
    assert stored["age"] == 30
    assert stored["space_ids"] == ["s1"]
    assert stored["born_date"] == 631152000000
    assert stored["role_id"] == "7"  # a "long" is kept as a string
    assert stored["event_ts"] == T0
    assert stored["deleted"] is False
    assert stats(sink)["rows"] == 1


def test_out_of_order_edits_keep_the_newest(mirror: Callable[..., MirrorSink]) -> None:
    """An edit older than the one applied is skipped and counted as stale."""
    sink = mirror()
    sink.send([event("add", ts=T0)])
    sink.send([event("edit", ts=T0 + 2000, remark="newer")])
    sink.send([event("edit", ts=T0 + 1000, remark="older")])
    stored = row(sink)
    assert stored is not None
    assert stored["remark"] == "newer"
    assert stored["event_ts"] == T0 + 2000
    assert stats(sink)["stale_skipped"] == 1


def test_late_add_after_delete_does_not_bring_the_customer_back(
    mirror: Callable[..., MirrorSink],
) -> None:
    """A delete leaves a tombstone without personal data; an older add arriving later is stale."""
    sink = mirror()
    sink.send([event("add", ts=T0, email="a@example.com")])
    sink.send([event("delete", ts=T0 + 5000, msg_id="del-1")])
    sink.send([event("add", ts=T0 + 1000, remark="late")])
    stored = row(sink)
    assert stored is not None
    assert stored["deleted"] is True
    assert stored["msg_id"] == "del-1"
    assert stored["event_ts"] == T0 + 5000
    assert stored["name"] is None
    assert stored["email"] is None
    assert stored["remark"] is None
    counted = stats(sink)
    assert (counted["rows"], counted["tombstones"], counted["stale_skipped"]) == (0, 1, 1)


def test_delete_of_an_unknown_customer_leaves_a_tombstone(
    mirror: Callable[..., MirrorSink],
) -> None:
    """A delete that overtook its add still blocks that add."""
    sink = mirror()
    sink.send([event("delete", ts=T0 + 1000), event("add", ts=T0)])
    stored = row(sink)
    assert stored is not None
    assert stored["deleted"] is True


def test_newer_add_after_delete_recreates_the_customer(mirror: Callable[..., MirrorSink]) -> None:
    """An add newer than the tombstone brings the customer back with that add's fields only."""
    sink = mirror()
    sink.send([event("add", ts=T0, remark="old")])
    sink.send([event("delete", ts=T0 + 1000)])
    sink.send([event("add", ts=T0 + 2000)])
    stored = row(sink)
    assert stored is not None
    assert stored["deleted"] is False
    assert stored["remark"] is None
    assert stored["name"] == "张三"


def test_redelivered_batch_changes_nothing(mirror: Callable[..., MirrorSink]) -> None:
    """The same events sent twice leave the row (its write time included) as the first time."""
    sink = mirror()
    batch = [event("add", ts=T0), event("edit", ts=T0 + 1000, remark="r")]
    sink.send(batch)
    first = row(sink)
    sink.send(batch)
    assert row(sink) == first
    assert stats(sink)["stale_skipped"] == 2


def test_edit_writes_only_its_fields_and_explicit_null_clears(
    mirror: Callable[..., MirrorSink],
) -> None:
    """A field absent from an edit keeps its value; a field given as null is cleared."""
    sink = mirror()
    sink.send([event("add", ts=T0, email="a@example.com", remark="keep", age=40)])
    sink.send([event("edit", ts=T0 + 1000, email=None, age=41)])
    stored = row(sink)
    assert stored is not None
    assert stored["email"] is None
    assert stored["remark"] == "keep"
    assert stored["age"] == 41


def test_unknown_fields_are_kept_in_one_json_column(mirror: Callable[..., MirrorSink]) -> None:
    """Unknown fields land in `extra`, merged key by key on edit; null removes one."""
    sink = mirror()
    sink.send([event("add", ts=T0, vip=True, tags={"a": [1, 2]}, meta={"k": "v"})])
    sink.send([event("edit", ts=T0 + 1000, vip=None, level=3)])
    stored = row(sink)
    assert stored is not None
    assert stored["extra"] == {"tags": {"a": [1, 2]}, "level": 3}
    assert stored["meta"] == {"k": "v"}


def test_equal_event_ts_is_ordered_by_report_ts_then_msg_id(
    mirror: Callable[..., MirrorSink],
) -> None:
    """Two events at one eventTs: the later reportTs wins, then the greater msgId."""
    sink = mirror()
    sink.send([event("add", ts=T0, report_ts=T0 + 5, msg_id="a", remark="later report")])
    sink.send([event("edit", ts=T0, report_ts=T0 + 1, msg_id="z", remark="earlier report")])
    stored = row(sink)
    assert stored is not None
    assert stored["remark"] == "later report"


def test_report_ts_in_seconds_compares_with_milliseconds() -> None:
    """reportTs in seconds and in milliseconds give the same arrival order."""
    seconds = event("add", ts=T0, report_ts=1_700_000_001, msg_id="x")
    millis = event("add", ts=T0, report_ts=1_700_000_001_000, msg_id="x")
    assert stamp(seconds) == stamp(millis)


def test_a_record_the_database_refuses_is_refused_alone(
    mirror: Callable[..., MirrorSink], database: dict[str, str], request: pytest.FixtureRequest
) -> None:
    """A row breaking a constraint is named in the Refused result; the others commit."""
    sink = mirror()
    sink.send([event("add", "c-0", ts=T0)])
    _add_check(database, request, "age < 150")
    batch = [event("add", "c-1", ts=T0), event("add", "c-2", ts=T0, age=180), event("add", "c-3")]
    refused = sink.send(batch)
    assert refused is not None
    assert list(refused.records) == [1]
    assert "180" not in str(refused.records)
    assert row(sink, "c-1") is not None
    assert row(sink, "c-2") is None
    assert row(sink, "c-3") is not None
    assert stats(sink)["records_refused"] == 1


def _add_check(database: dict[str, str], request: pytest.FixtureRequest, check: str) -> None:
    # SQLite cannot add a constraint to a table: the table is rebuilt with it.
    table = database["table"]
    if database["database"].startswith("sqlite"):
        path = database["database"].removeprefix("sqlite:///")
        db = sqlite3.connect(path)
        (ddl,) = db.execute("SELECT sql FROM sqlite_master WHERE name = ?", [table]).fetchone()
        db.executescript(
            f'ALTER TABLE "{table}" RENAME TO old_{table};'
            + ddl.replace("PRIMARY KEY (", f"CHECK ({check}), PRIMARY KEY (", 1)
            + f';INSERT INTO "{table}" SELECT * FROM old_{table}; DROP TABLE old_{table};'
        )
        db.close()
    else:
        server: Postgres = request.getfixturevalue("postgres")
        server.sql(f'ALTER TABLE "{table}" ADD CHECK ({check})', "mirror")


def test_a_newer_schema_refuses_to_start(
    mirror: Callable[..., MirrorSink], database: dict[str, str], request: pytest.FixtureRequest
) -> None:
    """A table recorded with a schema version above the code's stops the start with its reason."""
    mirror()
    statement = (
        f"UPDATE bridge_mirror SET schema_version = 99 WHERE table_name = '{database['table']}'"
    )
    if database["database"].startswith("sqlite"):
        db = sqlite3.connect(database["database"].removeprefix("sqlite:///"))
        db.execute(statement)
        db.commit()
        db.close()
    else:
        request.getfixturevalue("postgres").sql(statement, "mirror")
    with pytest.raises(ConfigError, match="schema version 99"):
        mirror()


def test_tombstones_past_their_age_are_purged(mirror: Callable[..., MirrorSink]) -> None:
    """A purge removes tombstones older than `tombstone_days` and counts them; live rows stay."""
    sink = mirror(tombstone_days=1e-9)
    sink.send([event("add", "c-1", ts=T0), event("add", "c-2", ts=T0)])
    sink.send([event("delete", "c-2", ts=T0 + 1000)])
    time.sleep(0.01)  # past the age, at the millisecond precision of SQLite's text times
    assert sink.purge_now() == 1
    counted = stats(sink)
    assert (counted["rows"], counted["tombstones"], counted["tombstones_purged"]) == (1, 0, 1)


def test_unreachable_postgres_is_a_transient_failure(tmp_path: Path) -> None:
    """A server that does not answer: the sink builds, and each batch fails for a retry."""
    cfg = MirrorConfig.model_validate(
        {"type": "mirror", "database": f"postgresql://bridge@127.0.0.1:{free_port()}/mirror"}
    )
    sink = cfg.build(CONTEXT)
    with pytest.raises(SinkError) as caught:
        sink.send([event("add")])
    assert not caught.value.permanent
    sink.close()


def test_password_comes_from_the_environment_and_never_shows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`password: ${NAME}` is read from the environment; the config's repr, dump and URL never
    hold it."""
    monkeypatch.setenv("MIRROR_PW", "s3cr3t-pw")
    sink = {
        "type": "mirror",
        "database": "postgresql://bridge@127.0.0.1:1/mirror",
        "password": "${MIRROR_PW}",
    }
    cfg = parse({"sinks": [sink]}).sinks[0]
    assert isinstance(cfg, MirrorConfig)
    assert cfg.password is not None
    assert cfg.password.reveal() == "s3cr3t-pw"
    assert "s3cr3t-pw" not in repr(cfg)
    assert "s3cr3t-pw" not in cfg.where()
    assert cfg.model_dump(mode="json")["password"] == "***"
    literal = MirrorConfig.model_validate(
        {"type": "mirror", "database": "postgresql://bridge@127.0.0.1:1/mirror", "password": "pw1"}
    )
    assert literal.model_dump(mode="json")["password"] == "***"
    with pytest.raises(ValueError, match="password"):
        MirrorConfig.model_validate(
            {"type": "mirror", "database": "postgresql://bridge:pw@127.0.0.1:1/mirror"}
        )


@pytest.mark.parametrize(
    "url",
    ["sqlite://", "sqlite://host/x.db", "mysql://x/y", "postgresql:///nohost", "postgresql://h"],
)
def test_unusable_database_urls_are_config_errors(url: str) -> None:
    """A URL the mirror cannot use is refused when the config is read."""
    with pytest.raises(ValueError, match=r"URL|write"):
        MirrorConfig.model_validate({"type": "mirror", "database": url})


# --- the mirror in a running bridge -----------------------------------------------------------

STANDARD_TOPIC = f"{TENANT}/proj_{PROJECT}/v1-business-model-customer"


def table_of(database: dict[str, str]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Every row of the mirror table, without the write time (which differs between runs)."""
    cfg = MirrorConfig.model_validate({"type": "mirror", **database})
    sink = MirrorSink("probe", cfg.connector(), cfg.table)
    try:
        store = sink.connect()
        keys = [
            (t, p, i)
            for t, p, i in store.dialect.execute(
                f'SELECT tenant, project_id, id FROM "{cfg.table}"'
            )
        ]
        rows = store.read(keys)
    finally:
        sink.close()
    return {
        key: {k: v for k, v in value.items() if k != "updated_at"} for key, value in rows.items()
    }


def traffic(customers: int, rounds: int, seed: int = 7) -> tuple[list[bytes], dict[str, Any]]:
    """Shuffled messages (several customers each) and the final state each customer must reach.

    Every add and edit carries the same fields, so the newest event alone decides a row, and
    the expected table does not depend on the order the events are applied in.
    """

    rand = random.Random(seed)
    events: list[tuple[int, str, str, dict[str, Any]]] = []
    for n in range(customers):
        cid = f"c-{n:03d}"
        for r in range(rounds):
            ts = T0 + r * 1000 + n
            op = "add" if r == 0 else rand.choice(["edit", "edit", "edit", "delete", "add"])
            record: dict[str, Any] = {"id": cid}
            if op != "delete":
                record.update(
                    projectId=PROJECT, name=f"客户{n}", phone="13800138000", remark=f"r{r}", age=r
                )
            events.append((ts, op, cid, record))
    final: dict[str, Any] = {}
    for ts, op, cid, record in sorted(events, key=lambda e: e[0]):
        final[cid] = (op, ts, record.get("remark"))
    rand.shuffle(events)
    messages = []
    for start in range(0, len(events), 4):
        chunk = events[start : start + 4]
        ops: dict[str, Any] = {}
        for ts, op, _cid, record in chunk:
            # One operation key per event: each keeps its own eventTs (repeated keys are kept).
            ops.setdefault(op, []).append((ts, record))
        for op, items in ops.items():
            for ts, record in items:
                body = {
                    "msgId": f"msg-{ts}-{record['id']}",
                    "reportTs": ts // 1000,
                    "profile": {"poiCode": "s0140001", "appType": "customer", "modelId": 140001},
                    "events": {op: {"eventTs": ts, "eventType": 1, "customerList": [record]}},
                }
                messages.append(json.dumps(body, ensure_ascii=False).encode())
    return messages, final


def matches(rows: dict[tuple[str, str, str], dict[str, Any]], final: dict[str, Any]) -> bool:
    """Whether the table holds exactly the expected final state of each customer."""
    if len(rows) != len(final):
        return False
    for cid, (op, ts, remark) in final.items():
        stored = rows.get((TENANT, PROJECT, cid))
        if stored is None or stored["event_ts"] != ts:
            return False
        if stored["deleted"] != (op == "delete") or stored["remark"] != remark:
            return False
    return True


def _bridge_config(server: Any, database: dict[str, str], **sections: Any) -> dict[str, Any]:
    sink = {"type": "mirror", "name": "mirror", "batch_size": 50, **database}
    return config(server, [sink], **sections)


@pytest.mark.mosquitto
def test_share_group_bridges_converge_to_the_single_bridge_table(
    mosquitto: Any,
    bridges: Callable[..., BridgeProcess],  # noqa: F811
    postgres: Postgres,
) -> None:
    """Two bridges of one $share group writing one PostgreSQL reach the table one bridge writes."""
    messages, final = traffic(customers=30, rounds=6)
    single = {"database": postgres.url, "table": f"single_{uuid.uuid4().hex[:6]}"}
    shared = {"database": postgres.url, "table": f"shared_{uuid.uuid4().hex[:6]}"}
    alone = bridges(_bridge_config(mosquitto, single), "alone").start().wait_ready()
    publish(mosquitto, *((STANDARD_TOPIC, body) for body in messages))
    wait_until(lambda: matches(table_of(single), final), 60, alone.log, alone)
    assert alone.terminate() == 0
    pair = [
        bridges(
            _bridge_config(mosquitto, shared, subscription={"share_group": "mirrors"}),
            f"shared-{n}",
        ).start()
        for n in range(2)
    ]
    for bridge in pair:
        bridge.wait_ready()
    publish(mosquitto, *((STANDARD_TOPIC, body) for body in messages))
    wait_until(
        lambda: matches(table_of(shared), final),
        60,
        lambda: f"{len(table_of(shared))} rows\n{pair[0].log()}\n{pair[1].log()}",
    )
    for bridge in pair:
        assert bridge.terminate() == 0
    taken = [len(bridge.events("message")) for bridge in pair]
    assert all(taken), f"one bridge took nothing: {taken}"
    assert table_of(shared) == table_of(single)


@pytest.mark.mosquitto
def test_kill_9_mid_batch_loses_and_duplicates_nothing(
    mosquitto: Any,
    bridges: Callable[..., BridgeProcess],  # noqa: F811
    database: dict[str, str],
) -> None:
    """A bridge killed while it writes the mirror, restarted, ends with the exact table."""
    messages, final = traffic(customers=40, rounds=8, seed=11)
    cfg = _bridge_config(mosquitto, database, broker={"client_id": "it-mirror-kill"})
    first = bridges(cfg, "doomed").start().wait_ready()
    publish(mosquitto, *((STANDARD_TOPIC, body) for body in messages))
    wait_until(lambda: len(table_of(database)) >= 10, 60, first.log, first)
    first.kill()
    second = bridges(cfg, "again").start().wait_ready()
    wait_until(lambda: matches(table_of(database), final), 60, second.log, second)
    assert second.terminate() == 0
    rows = table_of(database)
    assert sorted(cid for _t, _p, cid in rows) == sorted(final)


@pytest.mark.mosquitto
def test_replayed_dead_letter_is_applied_and_a_superseded_one_is_stale(
    mosquitto: Any,
    bridges: Callable[..., BridgeProcess],  # noqa: F811
    database: dict[str, str],
    request: pytest.FixtureRequest,
) -> None:
    """A record the database refused is a dead letter; replayed once the table takes it, it
    is applied, unless a newer event of that customer was applied meanwhile."""
    cfg = _bridge_config(mosquitto, database)
    bridge = bridges(cfg, "replay").start().wait_ready()
    base = {"projectId": PROJECT, "name": "张三", "phone": "13800138000"}
    publish(mosquitto, (STANDARD_TOPIC, envelope("add", [{"id": "seed", **base}], msg_id="s")))
    wait_until(lambda: table_of(database), 30, bridge.log, bridge)
    _add_check(database, request, "age < 150")
    bad = [{"id": "old", **base, "age": 180}, {"id": "kept", **base, "age": 170}]
    publish(mosquitto, (STANDARD_TOPIC, envelope("add", bad, msg_id="bad", event_ts=T0)))
    publish(mosquitto, (STANDARD_TOPIC, envelope("add", [{"id": "ok", **base}], msg_id="ok")))
    bridge.wait_event("sink_gave_up", count=1)
    wait_until(lambda: (TENANT, PROJECT, "ok") in table_of(database), 30, bridge.log, bridge)
    newer = [{"id": "old", **base, "age": 20}]
    publish(mosquitto, (STANDARD_TOPIC, envelope("edit", newer, msg_id="new", event_ts=T0 + 1)))
    wait_until(lambda: (TENANT, PROJECT, "old") in table_of(database), 30, bridge.log, bridge)
    _drop_check(database, request)
    command = [sys.executable, "-m", "bridge", "dead-letters", "-c", str(bridge.config_path)]
    listed = subprocess.run([*command, "list"], capture_output=True, text=True, check=True)
    assert len(listed.stdout.splitlines()) == 2
    subprocess.run([*command, "replay", "--all"], capture_output=True, text=True, check=True)
    wait_until(lambda: (TENANT, PROJECT, "kept") in table_of(database), 30, bridge.log, bridge)
    assert bridge.terminate() == 0
    rows = table_of(database)
    assert rows[(TENANT, PROJECT, "kept")]["age"] == 170
    assert rows[(TENANT, PROJECT, "old")]["age"] == 20  # the replayed add was older: stale
    show = [sys.executable, "-m", "bridge", "mirror", "show", TENANT, PROJECT, "kept"]
    shown = subprocess.run(
        [*show, "-c", str(bridge.config_path)], capture_output=True, text=True, check=True
    )
    assert "13800138000" not in shown.stdout
    assert "张三" not in shown.stdout
    assert json.loads(shown.stdout)["age"] == 170
    revealed = subprocess.run(
        [*show, "-c", str(bridge.config_path), "--reveal"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(revealed.stdout)["phone"] == "13800138000"
    stats_out = subprocess.run(
        [sys.executable, "-m", "bridge", "mirror", "stats", "-c", str(bridge.config_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    counted = json.loads(stats_out.stdout)
    assert (counted["rows"], counted["tombstones"]) == (4, 0)
    assert counted["stale_skipped"] >= 1
    assert counted["records_refused"] == 2


def _drop_check(database: dict[str, str], request: pytest.FixtureRequest) -> None:
    table = database["table"]
    if database["database"].startswith("sqlite"):
        path = database["database"].removeprefix("sqlite:///")
        db = sqlite3.connect(path)
        (ddl,) = db.execute("SELECT sql FROM sqlite_master WHERE name = ?", [table]).fetchone()
        start = ddl.index("CHECK (")
        end = ddl.index("), PRIMARY KEY") + 3
        db.executescript(
            f'ALTER TABLE "{table}" RENAME TO old_{table};'
            + ddl[:start]
            + ddl[end:]
            + f';INSERT INTO "{table}" SELECT * FROM old_{table}; DROP TABLE old_{table};'
        )
        db.close()
    else:
        server: Postgres = request.getfixturevalue("postgres")
        server.sql(f'ALTER TABLE "{table}" DROP CONSTRAINT "{table}_age_check"', "mirror")
