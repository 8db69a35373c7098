"""The mirror sink on real databases: one suite, run against SQLite and a PostgreSQL server."""

from __future__ import annotations

import itertools
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from databases import Postgres

from bridge.errors import ConfigError, Rejected, SinkError
from bridge.events import DownstreamEvent
from bridge.records import Op
from bridge.sinks import SinkContext
from bridge.sinks.mirror import MirrorConfig, MirrorSink, stamp
from bridge.topics import TopicKind

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
    """A row breaking a constraint is named in Rejected; the batch's other records commit."""
    sink = mirror()
    sink.send([event("add", "c-0", ts=T0)])
    _add_check(database, request, "age < 150")
    batch = [event("add", "c-1", ts=T0), event("add", "c-2", ts=T0, age=180), event("add", "c-3")]
    with pytest.raises(Rejected) as caught:
        sink.send(batch)
    assert caught.value.indexes == [1]
    assert caught.value.cause.permanent
    assert "180" not in str(caught.value)
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
    from brokers import free_port  # noqa: PLC0415

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
    """`password: ${NAME}` is read at build; the config's repr and the URL never hold it."""
    monkeypatch.setenv("MIRROR_PW", "s3cr3t-pw")
    cfg = MirrorConfig.model_validate(
        {
            "type": "mirror",
            "database": "postgresql://bridge@127.0.0.1:1/mirror",
            "password": "${MIRROR_PW}",
        }
    )
    assert "s3cr3t-pw" not in repr(cfg)
    assert "s3cr3t-pw" not in cfg.where()
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
