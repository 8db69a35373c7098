"""The mirror's tables and the two SQL dialects (SQLite, PostgreSQL) that hold them.

Everything that differs between the backends lives here: placeholders, column types,
how a batch is locked, which driver errors mean "later" and which mean "this record".
The semantics (which event wins) live in `mirror.py` and are the same for both.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from bridge.core.records import ADD_EDIT_FIELDS, Type

SCHEMA_VERSION = 1
"""The version of the mirror table layout this code writes; recorded in `bridge_mirror`."""

META_TABLE = "bridge_mirror"
ROWS_PER_STATEMENT = 500
Key = tuple[str, str, str]
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def snake(name: str) -> str:
    """`customerGradeId` -> `customer_grade_id`."""
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


@dataclass(frozen=True, slots=True)
class Column:
    """One data column: the record field it holds and its SQL kind."""

    field: str
    name: str
    kind: str  # "text" | "int" | "bigint" | "json"


def _kind(field: str) -> str:
    spec = ADD_EDIT_FIELDS[field]
    if spec.type in {Type.STRING_LIST, Type.OBJECT}:
        return "json"
    if spec.type is Type.INT:
        small = spec.maximum is not None and spec.maximum < 2**31
        return "int" if small else "bigint"
    return "text"  # strings, and "longs", which SPEC 3 keeps as strings


# The key's projectId comes from the topic (SPEC 7); the record's own is kept in `extra`
# only when it differs.
DATA_COLUMNS: tuple[Column, ...] = tuple(
    Column(field, snake(field), _kind(field))
    for field in ADD_EDIT_FIELDS
    if field not in {"id", "projectId"}
)
KNOWN_FIELDS = frozenset(ADD_EDIT_FIELDS)
KEY_COLUMNS = ("tenant", "project_id", "id")
STATE_COLUMNS = (
    "extra",
    "kind",
    "version",
    "vendor",
    "msg_id",
    "event_ts",
    "report_ts",
    "updated_at",
    "deleted",
)
ALL_COLUMNS: tuple[str, ...] = (
    KEY_COLUMNS + tuple(column.name for column in DATA_COLUMNS) + STATE_COLUMNS
)
JSON_COLUMNS = frozenset(c.name for c in DATA_COLUMNS if c.kind == "json") | {"extra"}
COLUMN_KINDS: Mapping[str, str] = {
    **dict.fromkeys(KEY_COLUMNS, "text"),
    **{c.name: c.kind for c in DATA_COLUMNS},
    "extra": "json",
    **dict.fromkeys(("kind", "version", "vendor", "msg_id"), "text"),
    **dict.fromkeys(("event_ts", "report_ts"), "bigint"),
    "updated_at": "time",
    "deleted": "bool",
}


def quote(name: str) -> str:
    """A quoted identifier (`character` is a reserved word in PostgreSQL)."""
    return '"' + name.replace('"', '""') + '"'


class DataRefused(Exception):
    """The database refused one record's row (a constraint, a type, a range); `reason` is safe."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SchemaTooNew(Exception):
    """The table was written by a newer bridge."""


class Unavailable(Exception):
    """The database cannot take the batch now; `reason` is safe to log (no values)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Dialect(Protocol):
    """One backend: a connection, its SQL spellings and its error classes."""

    placeholder: str
    label: str
    converts_in: frozenset[str]
    """Columns whose values `encode` changes (the others go to the driver as they are)."""
    converts_out: frozenset[str]
    """Columns whose stored values `decode` changes."""
    column_arrays: bool
    """Whether a batch of rows is written as one array per column (else a multi-row VALUES)."""

    def types(self) -> Mapping[str, str]:
        """SQL type per column kind (text, int, bigint, json, bool, time)."""

    def table_suffix(self) -> str:
        """What follows the closing parenthesis of CREATE TABLE."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement; the rows it returns."""

    @contextmanager
    def transaction(self, keys: Sequence[tuple[str, str, str]]) -> Iterator[None]:
        """A write transaction holding the locks of `keys` until it ends."""
        yield  # pragma: no cover - protocol

    def key_match(self, count: int) -> tuple[str, Callable[[Sequence[Key]], list[Any]]]:
        """A WHERE condition matching `count` keys, and how to turn keys into its parameters."""

    def savepoint(self) -> Any:
        """A context manager: a nested transaction that rolls back alone on error."""

    def encode(self, column: str, value: Any) -> Any:
        """A Python value as the driver takes it for `column`."""

    def decode(self, column: str, value: Any) -> Any:
        """A stored value back as the record value."""

    def classify(self, exc: BaseException) -> Exception | None:
        """DataRefused, Unavailable, or None for an exception that is not the database's."""

    def close(self) -> None:
        """Close the connection."""


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class SqliteDialect:
    """A SQLite file; writers serialise on BEGIN IMMEDIATE."""

    placeholder = "?"
    label = "sqlite"
    column_arrays = False
    converts_in = converts_out = JSON_COLUMNS | {"deleted", "updated_at"}

    def __init__(self, path: Path, *, busy_timeout: float = 10.0) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        except (OSError, sqlite3.Error) as exc:
            raise Unavailable(f"cannot open {path}: {exc}") from None
        self._depth = 0

    def types(self) -> Mapping[str, str]:
        """STRICT tables: a value of the wrong type is refused, as PostgreSQL refuses it."""
        return {
            "text": "TEXT",
            "int": "INTEGER",
            "bigint": "INTEGER",
            "json": "TEXT",
            "bool": "INTEGER",
            "time": "TEXT",
        }

    def table_suffix(self) -> str:
        """STRICT: SQLite's type affinity would otherwise store anything anywhere."""
        return " STRICT"

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement."""
        return self._db.execute(sql, params).fetchall()

    @contextmanager
    def transaction(self, keys: Sequence[tuple[str, str, str]]) -> Iterator[None]:
        """BEGIN IMMEDIATE takes the write lock at once, so the rows read stay current."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def key_match(self, count: int) -> tuple[str, Callable[[Sequence[Key]], list[Any]]]:
        """A row-value IN list of `count` keys."""
        columns = ", ".join(quote(k) for k in KEY_COLUMNS)
        values = ", ".join("(?, ?, ?)" for _ in range(count))
        return f"({columns}) IN (VALUES {values})", lambda keys: [p for k in keys for p in k]

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A SAVEPOINT released on success, rolled back to on error."""
        self._depth += 1
        name = f"r{self._depth}"
        self._db.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            self._db.execute(f"ROLLBACK TO {name}")
            self._db.execute(f"RELEASE {name}")
            raise
        else:
            self._db.execute(f"RELEASE {name}")
        finally:
            self._depth -= 1

    def encode(self, column: str, value: Any) -> Any:
        """JSON as text, booleans as 0/1."""
        if value is None:
            return None
        if column in JSON_COLUMNS:
            return _json_text(value)
        if column == "deleted":
            return int(bool(value))
        if column == "updated_at":
            return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return value

    def decode(self, column: str, value: Any) -> Any:
        """The reverse of `encode`."""
        if value is None:
            return None
        if column in JSON_COLUMNS:
            return json.loads(value)
        if column == "deleted":
            return bool(value)
        if column == "updated_at":
            return datetime.fromisoformat(value)
        return value

    def classify(self, exc: BaseException) -> Exception | None:
        """Constraints and types refuse a record; anything else of sqlite3 means later."""
        if isinstance(exc, sqlite3.IntegrityError | OverflowError):
            return DataRefused(f"sqlite refused the row: {exc}")
        if isinstance(exc, sqlite3.Error):
            return Unavailable(f"sqlite: {exc}")
        return None

    def close(self) -> None:
        """Close the file."""
        self._db.close()


def _lock_id(key: tuple[str, ...]) -> int:
    digest = hashlib.blake2b("\x1f".join(key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class PostgresDialect:
    """A PostgreSQL server through psycopg 3; a batch locks its customers' keys."""

    placeholder = "%s"
    label = "postgresql"
    column_arrays = True
    """Rows go as one array per column through unnest: 45 parameters, whatever the batch."""
    converts_in = JSON_COLUMNS
    converts_out: frozenset[str] = frozenset()

    def __init__(self, conninfo: str, table: str) -> None:
        try:
            import psycopg  # noqa: PLC0415 - an extra: only a PostgreSQL mirror needs it
        except ImportError:
            raise Unavailable(
                "PostgreSQL needs psycopg: pip install 'customer-bridge[postgres]'"
            ) from None
        self._psycopg = psycopg
        self._table = table
        try:
            self._db = psycopg.connect(conninfo, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise Unavailable(f"cannot connect: {_pg_reason(exc)}") from None

    def types(self) -> Mapping[str, str]:
        """Native types: jsonb for lists, meta and unknown fields."""
        return {
            "text": "TEXT",
            "int": "INTEGER",
            "bigint": "BIGINT",
            "json": "JSONB",
            "bool": "BOOLEAN",
            "time": "TIMESTAMPTZ",
        }

    def table_suffix(self) -> str:
        """Nothing: PostgreSQL checks types itself."""
        return ""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement."""
        cursor = self._db.execute(sql, params)
        return cursor.fetchall() if cursor.description is not None else []

    @contextmanager
    def transaction(self, keys: Sequence[tuple[str, str, str]]) -> Iterator[None]:
        """A transaction that first takes an advisory lock per customer, in one fixed order.

        Two bridges of a share group writing the same customer then take turns, and the
        fixed order keeps them from deadlocking.
        """
        with self._db.transaction():
            ids = sorted({_lock_id((self._table, *key)) for key in keys})
            if ids:
                self._db.execute(
                    "SELECT pg_advisory_xact_lock(k) FROM"
                    " (SELECT k FROM unnest(%s::bigint[]) AS k ORDER BY k) AS ordered",
                    [ids],
                )
            yield

    def key_match(self, count: int) -> tuple[str, Callable[[Sequence[Key]], list[Any]]]:
        """Three arrays whatever the count: one statement, prepared once by psycopg."""
        del count
        columns = ", ".join(quote(k) for k in KEY_COLUMNS)
        return (
            f"({columns}) IN (SELECT * FROM unnest(%s::text[], %s::text[], %s::text[]))",
            lambda keys: [[k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]],
        )

    def savepoint(self) -> Any:
        """psycopg's nested transaction is a SAVEPOINT."""
        return self._db.transaction()

    def encode(self, column: str, value: Any) -> Any:
        """JSON through psycopg's Jsonb adapter."""
        if value is not None and column in JSON_COLUMNS:
            from psycopg.types.json import Jsonb  # noqa: PLC0415 - the extra again

            return Jsonb(value)
        return value

    def decode(self, column: str, value: Any) -> Any:
        """psycopg already gives Python values."""
        return value

    def classify(self, exc: BaseException) -> Exception | None:
        """Integrity and data errors refuse a record; other database errors mean later."""
        psycopg = self._psycopg
        if isinstance(exc, psycopg.errors.IntegrityError | psycopg.errors.DataError):
            return DataRefused(f"postgresql refused the row: {_pg_reason(exc)}")
        if isinstance(exc, psycopg.Error):
            return Unavailable(f"postgresql: {_pg_reason(exc)}")
        return None

    def close(self) -> None:
        """Close the connection."""
        self._db.close()


def _pg_reason(exc: Any) -> str:
    # The server's DETAIL can quote the row ("Failing row contains ..."): personal data.
    # The SQLSTATE, the error class and the constraint's name are enough to act on.
    diag = getattr(exc, "diag", None)
    state = getattr(diag, "sqlstate", None) or getattr(exc, "sqlstate", None)
    constraint = getattr(diag, "constraint_name", None)
    column = getattr(diag, "column_name", None)
    parts = [type(exc).__name__]
    if state:
        parts.append(state)
    if constraint:
        parts.append(f"constraint {constraint}")
    if column:
        parts.append(f"column {column}")
    if state is None:
        # A connection failure has no SQLSTATE; libpq's text names the host, never the password.
        parts.append(str(exc).strip().splitlines()[0] if str(exc).strip() else "")
    return " ".join(part for part in parts if part)


def now() -> datetime:
    """The write time of a row."""
    return datetime.now(UTC)


class Store:
    """The mirror table of one backend: schema, reads and writes, in the dialect's SQL."""

    def __init__(self, dialect: Dialect, table: str) -> None:
        self.dialect = dialect
        self.table = table
        p = dialect.placeholder
        columns = ", ".join(quote(name) for name in ALL_COLUMNS)
        values = ", ".join(p for _ in ALL_COLUMNS)
        keys = ", ".join(quote(name) for name in KEY_COLUMNS)
        updates = ", ".join(
            f"{quote(name)} = excluded.{quote(name)}"
            for name in ALL_COLUMNS
            if name not in KEY_COLUMNS
        )
        self._insert = f"INSERT INTO {quote(table)} ({columns}) VALUES "
        self._row = f"({values})"
        self._conflict = f" ON CONFLICT ({keys}) DO UPDATE SET {updates}"
        self._statements: dict[int, str] = {}
        types = dialect.types()
        # %b: psycopg dumps arrays in binary, far cheaper than quoting each element as text.
        arrays = ", ".join(f"%b::{types[COLUMN_KINDS[name]]}[]" for name in ALL_COLUMNS)
        self._by_columns = (
            f"INSERT INTO {quote(table)} ({columns}) SELECT * FROM unnest({arrays})"
            + self._conflict
        )
        self._select = f"SELECT {columns} FROM {quote(table)} WHERE "
        self._encoded = [(i, n) for i, n in enumerate(ALL_COLUMNS) if n in dialect.converts_in]
        self._decoded = [n for n in ALL_COLUMNS if n in dialect.converts_out]

    def prepare(self) -> None:
        """Create what is missing and check the schema version; SchemaTooNew if it is newer."""
        d, p, t = self.dialect, self.dialect.placeholder, self.table
        types = d.types()
        with d.transaction([("", "", f"schema:{t}")]):
            d.execute(
                f"CREATE TABLE IF NOT EXISTS {META_TABLE} ("
                " table_name TEXT PRIMARY KEY, schema_version INTEGER NOT NULL,"
                f" events_applied {types['bigint']} NOT NULL DEFAULT 0,"
                f" stale_skipped {types['bigint']} NOT NULL DEFAULT 0,"
                f" tombstones_purged {types['bigint']} NOT NULL DEFAULT 0,"
                f" records_refused {types['bigint']} NOT NULL DEFAULT 0){d.table_suffix()}"
            )
            found = d.execute(
                f"SELECT schema_version FROM {META_TABLE} WHERE table_name = {p}", [t]
            )
            if found and int(found[0][0]) > SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"table {t} has mirror schema version {found[0][0]}, newer than this"
                    f" bridge's {SCHEMA_VERSION}: upgrade the bridge or point it at another table"
                )
            definition = [
                f"{quote('tenant')} {types['text']} NOT NULL",
                f"{quote('project_id')} {types['text']} NOT NULL",
                f"{quote('id')} {types['text']} NOT NULL",
                *(f"{quote(c.name)} {types[c.kind]}" for c in DATA_COLUMNS),
                f"{quote('extra')} {types['json']}",
                f"{quote('kind')} {types['text']} NOT NULL",
                f"{quote('version')} {types['text']}",
                f"{quote('vendor')} {types['text']}",
                f"{quote('msg_id')} {types['text']}",
                f"{quote('event_ts')} {types['bigint']} NOT NULL",
                f"{quote('report_ts')} {types['bigint']} NOT NULL",
                f"{quote('updated_at')} {types['time']} NOT NULL",
                f"{quote('deleted')} {types['bool']} NOT NULL",
                "PRIMARY KEY (" + ", ".join(quote(k) for k in KEY_COLUMNS) + ")",
            ]
            d.execute(
                f"CREATE TABLE IF NOT EXISTS {quote(t)} ({', '.join(definition)}){d.table_suffix()}"
            )
            d.execute(
                f"CREATE INDEX IF NOT EXISTS {quote(t + '_updated_at')}"
                f" ON {quote(t)} ({quote('updated_at')})"
            )
            d.execute(
                f"CREATE INDEX IF NOT EXISTS {quote(t + '_tombstones')}"
                f" ON {quote(t)} ({quote('deleted')}, {quote('updated_at')})"
            )
            if not found:
                d.execute(
                    f"INSERT INTO {META_TABLE} (table_name, schema_version) VALUES ({p}, {p})",
                    [t, SCHEMA_VERSION],
                )

    def read(
        self, keys: Sequence[tuple[str, str, str]]
    ) -> dict[tuple[str, str, str], dict[str, Any]]:
        """The stored rows of `keys`, decoded, by key."""
        found: dict[Key, dict[str, Any]] = {}
        unique = list(dict.fromkeys(keys))
        # Bounded statements: SQLite allows 32766 parameters, and plans stay small.
        for start in range(0, len(unique), 1000):
            chunk = unique[start : start + 1000]
            match, params = self.dialect.key_match(len(chunk))
            for values in self.dialect.execute(self._select + match, params(chunk)):
                row = dict(zip(ALL_COLUMNS, values, strict=True))
                for name in self._decoded:
                    if row[name] is not None:
                        row[name] = self.dialect.decode(name, row[name])
                found[(row["tenant"], row["project_id"], row["id"])] = row
        return found

    def encoded(self, row: Mapping[str, Any]) -> list[Any]:
        """A row's values in column order, as the driver takes them."""
        values = [row.get(name) for name in ALL_COLUMNS]
        encode = self.dialect.encode
        for index, name in self._encoded:
            if values[index] is not None:
                values[index] = encode(name, values[index])
        return values

    def write(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Upsert whole rows (the caller merged them under the batch's locks)."""
        # Multi-row statements: one round trip per chunk, under both backends' parameter
        # limits (SQLite 32766, PostgreSQL 65535). A key occurs once: the caller merged them.
        if self.dialect.column_arrays and rows:
            encoded = [self.encoded(row) for row in rows]
            self.dialect.execute(
                self._by_columns, [list(column) for column in zip(*encoded, strict=True)]
            )
            return
        step = ROWS_PER_STATEMENT
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            statement = self._statements.get(len(chunk))
            if statement is None:
                statement = self._insert + ", ".join([self._row] * len(chunk)) + self._conflict
                self._statements[len(chunk)] = statement
            self.dialect.execute(statement, [v for row in chunk for v in self.encoded(row)])

    def count(self, column: str, amount: int, **more: int) -> None:
        """Add to counters of `bridge_mirror` (in the batch's transaction), in one statement."""
        amounts = {column: amount, **more}
        amounts = {name: n for name, n in amounts.items() if n}
        if amounts:
            p = self.dialect.placeholder
            sets = ", ".join(f"{name} = {name} + {p}" for name in amounts)
            self.dialect.execute(
                f"UPDATE {META_TABLE} SET {sets} WHERE table_name = {p}",
                [*amounts.values(), self.table],
            )

    def purge(self, before: datetime) -> int:
        """Delete tombstones written before `before`; how many went."""
        d, p = self.dialect, self.dialect.placeholder
        with d.transaction([]):
            gone = d.execute(
                f"DELETE FROM {quote(self.table)} WHERE {quote('deleted')} = {p}"
                f" AND {quote('updated_at')} < {p} RETURNING 1",
                [d.encode("deleted", True), d.encode("updated_at", before)],
            )
            self.count("tombstones_purged", len(gone))
        return len(gone)

    def stats(self) -> dict[str, int]:
        """Rows, tombstones and the counters, for `mirror stats`."""
        d, p = self.dialect, self.dialect.placeholder
        live, dead = d.execute(
            f"SELECT COALESCE(SUM(CASE WHEN {quote('deleted')} = {p} THEN 0 ELSE 1 END), 0),"
            f" COALESCE(SUM(CASE WHEN {quote('deleted')} = {p} THEN 1 ELSE 0 END), 0)"
            f" FROM {quote(self.table)}",
            [d.encode("deleted", True), d.encode("deleted", True)],
        )[0]
        counters = d.execute(
            "SELECT schema_version, events_applied, stale_skipped, tombstones_purged,"
            " records_refused"
            f" FROM {META_TABLE} WHERE table_name = {p}",
            [self.table],
        )
        version, applied, stale, purged, refused = counters[0] if counters else (0,) * 5
        return {
            "schema_version": int(version),
            "rows": int(live),
            "tombstones": int(dead),
            "events_applied": int(applied),
            "stale_skipped": int(stale),
            "tombstones_purged": int(purged),
            "records_refused": int(refused),
        }
