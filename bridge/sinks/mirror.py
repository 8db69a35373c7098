"""The customer mirror (SPEC 9): the events applied to a SQL table of customers as they are now.

Which event wins is decided here, the same way for SQLite and PostgreSQL: each row keeps
the stamp of the event last applied to it, `(eventTs, reportTs, msgId)`, and an event
whose stamp is not greater is stale. The stamp comes from the message alone, so a
redelivery, a replayed dead letter, or the other bridge of a share group computes the
same one, and the table converges whatever order the events arrive in.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import ConfigDict, Field, field_validator, model_validator

from bridge.core.events import DownstreamEvent
from bridge.core.records import Op
from bridge.errors import ConfigError, SinkError
from bridge.secrets import Secret, Url, read_secret_file
from bridge.sinks.base import Refused, SinkConfigBase, SinkContext
from bridge.sinks.mirror_sql import (
    DATA_COLUMNS,
    IDENTIFIER,
    KNOWN_FIELDS,
    DataRefused,
    Dialect,
    PostgresDialect,
    SchemaTooNew,
    SqliteDialect,
    Store,
    Unavailable,
    now,
)

Key = tuple[str, str, str]
Stamp = tuple[int, int, str]
PURGE_EVERY = 3600.0
"""Seconds between two purges of old tombstones (the first one runs with the first batch)."""


def stamp(event: DownstreamEvent) -> Stamp:
    """The order of an event among the events of one customer: eventTs, then arrival order.

    Arrival order is `(reportTs in ms, msgId)`: both are in the message, so every bridge
    and every redelivery of it gives the same value (the broker's order does not).
    """
    report = event.report_ts or 0
    if 0 < report < 10**11:  # reportTs in seconds, as the platform's examples send it
        report *= 1000
    return (event.event_ts or 0, report, event.msg_id or "")


def row_stamp(row: Mapping[str, Any]) -> Stamp:
    """The stamp of the event a stored row last took."""
    return (int(row["event_ts"]), int(row["report_ts"]), row["msg_id"] or "")


def apply(row: Mapping[str, Any] | None, event: DownstreamEvent) -> dict[str, Any] | None:
    """The row after `event`, or None when the event is stale for `row`."""
    new_stamp = stamp(event)
    if row is not None and new_stamp <= row_stamp(row):
        return None
    record = event.customer
    merged: dict[str, Any] = {
        "tenant": event.tenant,
        "project_id": event.project_id,
        "id": event.customer_id,
    }
    if event.op is Op.DELETE or row is None or row["deleted"]:
        # A tombstone holds no personal data, and a customer coming back starts afresh.
        merged.update({column.name: None for column in DATA_COLUMNS})
        merged["extra"] = None
    else:
        merged.update({column.name: row.get(column.name) for column in DATA_COLUMNS})
        merged["extra"] = row.get("extra")
    if event.op is not Op.DELETE:
        for column in DATA_COLUMNS:
            if column.field in record:  # absent keeps, an explicit null clears
                merged[column.name] = _column_value(column.kind, record[column.field])
        extra = dict(merged["extra"] or {})
        for name, value in record.items():
            if name not in KNOWN_FIELDS:
                if value is None:
                    extra.pop(name, None)
                else:
                    extra[name] = value
        if "projectId" in record and str(record["projectId"]) != event.project_id:
            extra["projectId"] = record["projectId"]
        merged["extra"] = extra or None
    merged.update(
        kind=str(event.kind),
        version=event.version,
        vendor=event.vendor,
        msg_id=event.msg_id,
        event_ts=new_stamp[0],
        report_ts=new_stamp[1],
        deleted=event.op is Op.DELETE,
    )
    return merged


def _column_value(kind: str, value: Any) -> Any:
    # "Longs" arrive as integers or strings and are kept as strings (SPEC 3).
    if kind == "text" and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


class MirrorConfig(SinkConfigBase):
    """`type: mirror`: apply the events to `table` in `database` (sqlite:/// or postgresql://).

    The PostgreSQL password comes from `password` or `password_file`, never the URL.
    """

    model_config = ConfigDict(hide_input_in_errors=True)

    type: Literal["mirror"]
    batch_size: int = Field(default=500, ge=1, le=10_000)
    """One transaction per batch: larger batches than other sinks' amortise the commit."""
    database: Url
    table: str = "customers"
    password: Secret | None = None
    password_file: Path | None = None
    tombstone_days: float = Field(default=30.0, gt=0)
    """Tombstones older than this are purged; a later event older than the delete could then
    bring the customer back, so keep it longer than any redelivery or replay can be late."""

    @field_validator("database")
    @classmethod
    def _usable_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme == "sqlite":
            if parts.netloc or not parts.path.lstrip("/"):
                raise ValueError("write sqlite:///relative/path.db or sqlite:////absolute/path.db")
            return value
        if parts.scheme in {"postgresql", "postgres"}:
            if parts.password is not None:
                raise ValueError("put the password in password: ${NAME} or password_file")
            if not parts.hostname or not parts.path.strip("/"):
                raise ValueError("write postgresql://user@host:port/dbname")
            try:
                _ = parts.port
            except ValueError:
                raise ValueError("the port is not a number") from None
            return value
        raise ValueError("the database URL must start with sqlite:/// or postgresql://")

    @field_validator("table")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not IDENTIFIER.fullmatch(value):
            raise ValueError("a table name is letters, digits and _ (63 at most)")
        return value

    @model_validator(mode="after")
    def _one_password(self) -> MirrorConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        if (self.password or self.password_file) and self.backend == "sqlite":
            raise ValueError("a sqlite database takes no password")
        return self

    @property
    def backend(self) -> Literal["sqlite", "postgresql"]:
        """Which dialect the URL names."""
        return "sqlite" if self.database.startswith("sqlite:") else "postgresql"

    def connector(self) -> Callable[[], Dialect]:
        """A function that opens a connection; the password is resolved here, once."""
        if self.backend == "sqlite":
            # sqlite:///rel -> "rel"; sqlite:////abs -> "/abs"
            path = Path(unquote(urlsplit(self.database).path[1:]))
            return lambda: SqliteDialect(path)
        password = None
        if self.password is not None:
            password = self.password.reveal()
        elif self.password_file is not None:
            password = read_secret_file("password_file", self.password_file).reveal()
        from psycopg.conninfo import make_conninfo  # noqa: PLC0415 - the postgres extra

        extra: dict[str, Any] = {"application_name": "customer-bridge"}
        if password is not None:
            extra["password"] = password
        conninfo = make_conninfo(self.database.replace("postgres://", "postgresql://", 1), **extra)
        table = self.table
        return lambda: PostgresDialect(conninfo, table)

    def where(self) -> str:
        """The database as safe to show: no password can be in it."""
        parts = urlsplit(self.database)
        return f"{parts.scheme}://{parts.netloc}{parts.path}"

    def build(self, context: SinkContext) -> MirrorSink:
        """Open the database and check its schema; refuse to start on a newer schema."""
        try:
            connect = self.connector()
        except ImportError:
            raise ConfigError(
                "database", "PostgreSQL needs psycopg: pip install 'customer-bridge[postgres]'"
            ) from None
        sink = MirrorSink(
            self.name or f"mirror:{self.table}",
            connect,
            self.table,
            tombstone_age=timedelta(days=self.tombstone_days),
            logger=context.logger,
        )
        try:
            sink.connect()
        except SchemaTooNew as exc:
            raise ConfigError("table", str(exc)) from None
        except SinkError as exc:
            # A database that is down at start is an outage like any other: the spool holds
            # the events and the first batch connects again.
            context.logger.warning("mirror_unavailable", sink=sink.name, reason=str(exc))
        return sink


class MirrorSink:
    """Applies each batch in one transaction; stale events are skipped and counted."""

    direct = False
    concurrent = False  # one database connection

    def __init__(
        self,
        name: str,
        connect: Callable[[], Dialect],
        table: str,
        *,
        tombstone_age: timedelta = timedelta(days=30),
        logger: Any = None,
    ) -> None:
        self.name = name
        self._connect = connect
        self._table = table
        self._tombstone_age = tombstone_age
        self._log = logger
        self._store: Store | None = None
        self._next_purge = 0.0
        self.stale = 0
        self.applied = 0

    def __repr__(self) -> str:
        return f"MirrorSink(name={self.name!r}, table={self._table!r})"

    def connect(self) -> Store:
        """The open store, connecting and checking the schema first when needed."""
        if self._store is None:
            try:
                dialect = self._connect()
            except Unavailable as exc:
                raise SinkError(f"mirror {self._table}: {exc.reason}") from None
            store = Store(dialect, self._table)
            try:
                store.prepare()
            except SchemaTooNew:
                dialect.close()
                raise
            except Exception as exc:  # noqa: BLE001 - classified: the driver's errors vary
                dialect.close()
                raise self._failure(dialect, exc) from None
            self._store = store
        return self._store

    def _failure(self, dialect: Dialect, exc: Exception) -> Exception:
        known = dialect.classify(exc)
        if isinstance(known, DataRefused):
            return SinkError(f"mirror {self._table}: {known.reason}", permanent=True)
        if isinstance(known, Unavailable):
            return SinkError(f"mirror {self._table}: {known.reason}")
        return exc

    def send(self, events: Sequence[DownstreamEvent]) -> Refused | None:
        """Apply the batch; return `Refused` naming the records the database refused."""
        if not events:
            return None
        try:
            store = self.connect()
        except SchemaTooNew as exc:
            raise SinkError(str(exc)) from None  # not the records' fault: keep them spooled
        try:
            try:
                refused = self._apply_fast(store, events)
            except DataRefused:
                refused = self._apply_each(store, events)
        except SinkError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified below, or re-raised as it is
            self.close()  # a broken connection is opened afresh by the next batch
            raise self._failure(store.dialect, exc) from None
        self._purge(store)
        if not refused:
            return None
        return Refused({index: f"mirror {self._table}: {why}" for index, why in refused.items()})

    def _apply_fast(self, store: Store, events: Sequence[DownstreamEvent]) -> dict[int, str]:
        # The whole batch in one transaction and one multi-row upsert; a record the database
        # refuses sends the batch to `_apply_each`, which finds it.
        keys = [event.ordering_key for event in events]
        with store.dialect.transaction(keys):
            try:
                rows: dict[Key, dict[str, Any] | None] = dict(store.read(keys))
            except Exception as exc:
                known = store.dialect.classify(exc)
                if isinstance(known, DataRefused):
                    raise known from None
                raise
            changed: dict[Key, dict[str, Any]] = {}
            stale = 0
            written = now()
            for key, event in zip(keys, events, strict=True):
                after = apply(rows.get(key), event)
                if after is None:
                    stale += 1
                    continue
                after["updated_at"] = written
                rows[key] = changed[key] = after
            try:
                store.write(list(changed.values()))
            except Exception as exc:
                known = store.dialect.classify(exc)
                if isinstance(known, DataRefused):
                    raise known from None
                raise
            store.count("stale_skipped", stale, events_applied=len(events) - stale)
        self._counted(len(events) - stale, stale)
        return {}

    def _apply_each(self, store: Store, events: Sequence[DownstreamEvent]) -> dict[int, str]:
        # One savepoint per record, its read included: a refused record rolls back alone
        # (a key PostgreSQL cannot even read, with a NUL in it, too), the others commit.
        keys = [event.ordering_key for event in events]
        refused: dict[int, str] = {}
        with store.dialect.transaction(keys):
            rows: dict[Key, dict[str, Any] | None] = {}
            stale = 0
            written = now()
            for index, (key, event) in enumerate(zip(keys, events, strict=True)):
                try:
                    with store.dialect.savepoint():
                        if key not in rows:
                            rows[key] = store.read([key]).get(key)
                        after = apply(rows[key], event)
                        if after is None:
                            stale += 1
                            continue
                        after["updated_at"] = written
                        store.write([after])
                except Exception as exc:
                    known = store.dialect.classify(exc)
                    if not isinstance(known, DataRefused):
                        raise
                    refused[index] = known.reason
                    continue
                rows[key] = after
            store.count(
                "stale_skipped",
                stale,
                records_refused=len(refused),
                events_applied=len(events) - stale - len(refused),
            )
        self._counted(len(events) - stale - len(refused), stale)
        if refused and self._log is not None:
            self._log.warning("mirror_refused", sink=self.name, records=len(refused))
        return refused

    def _counted(self, applied: int, stale: int) -> None:
        self.applied += applied
        self.stale += stale
        if stale and self._log is not None:
            self._log.debug("mirror_stale", sink=self.name, records=stale)

    def _purge(self, store: Store) -> None:
        if time.monotonic() < self._next_purge:
            return
        self._next_purge = time.monotonic() + PURGE_EVERY
        try:
            purged = store.purge(now() - self._tombstone_age)
        except Exception as exc:  # noqa: BLE001 - the purge is housekeeping; the next hour retries
            known = store.dialect.classify(exc)
            if self._log is not None:
                reason = known.reason if isinstance(known, Unavailable | DataRefused) else "error"
                self._log.warning("mirror_purge_failed", sink=self.name, reason=reason)
            return
        if purged and self._log is not None:
            self._log.info("mirror_purged", sink=self.name, tombstones=purged)

    def purge_now(self) -> int:
        """Purge old tombstones at once (tests, `mirror purge`); how many went."""
        return self.connect().purge(now() - self._tombstone_age)

    def close(self) -> None:
        """Close the connection; the next batch opens another."""
        if self._store is not None:
            # A dead connection may fail to close; it is dropped all the same.
            with contextlib.suppress(Exception):
                self._store.dialect.close()
            self._store = None
