"""The durable outbox, the de-duplication window and the dead letters, in one SQLite file.

A message is acknowledged to the broker only after the transaction that holds its
outbox rows (one per routed sink and record, one per alarm) and its de-duplication
key has committed. Delivery workers then take rows from the outbox, oldest first,
and delete them once their sink has them.

WAL mode with `synchronous=FULL` by default: a commit survives power loss, so an
ack never goes out for something a power cut could take back. `NORMAL` is faster
and survives a crash of the process, but may lose the last commits on power loss.
The level applies to the intake's commits, which precede acks; the workers' commits
(delivered rows deleted, retries counted, dead letters) always run at `NORMAL`: a power
cut can only undo them, and an undone one means a repeat, never a loss.

The volume is watched (`Storage`): below a free-space floor the intake is told there is no
room (it stops taking messages, the broker keeps them), a reserve file is given up when a
worker's write finds the disk full, so that deleting delivered rows always works, and the
log is checkpointed in steps small against the volume. Unreadable payloads are kept raw up to
a quota, then as metadata only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bridge.core.outbox import ALARMS, NewRow
from bridge.errors import BridgeError

__all__ = ["ALARMS", "NewRow"]
"""The outbox target of alarms; sinks have their configured names."""

RAW_PAYLOAD_LIMIT = 4096
MiB = 1024 * 1024
_SQLITE_FULL = 13
_ROW = "id, target, okey, body, created, attempts, next_at"
# The claim scan: keys and retry times only, through the (target, id) index. With lanes, the
# lane predicate filters what that index walk finds; it is never a condition of its own to plan.
_DUE_PAGE = "SELECT id, okey, next_at FROM outbox WHERE target = ? AND id > ?"
_IN_LANE = " AND lane_of(okey, ?) = ?"
_BY_ID = " ORDER BY id LIMIT ?"
_NEXT_RETRY = "SELECT MIN(next_at) FROM outbox WHERE target = ? AND attempts > 0"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    target TEXT NOT NULL,
    okey TEXT NOT NULL,
    body TEXT NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS outbox_by_target ON outbox (target, id);
CREATE TABLE IF NOT EXISTS seen (
    key TEXT PRIMARY KEY,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS seen_by_age ON seen (at);
CREATE TABLE IF NOT EXISTS dead (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    target TEXT NOT NULL,
    kind TEXT NOT NULL,
    okey TEXT NOT NULL DEFAULT '',
    body BLOB NOT NULL,
    reason TEXT NOT NULL,
    topic TEXT,
    msg_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
-- The metrics count dead letters by kind at each scrape: the index keeps that off the bodies.
CREATE INDEX IF NOT EXISTS dead_by_kind ON dead (kind);
"""


def _migrate_order(db: sqlite3.Connection) -> None:
    """Give the dead letters their place in arrival order and an overtaken mark.

    `seq` is the outbox id the record had (ids only grow, so it is the arrival order and
    the place a replay puts it back in); `overtaken_at` is when a later event of the same
    customer reached the same sink. Spools written before these columns keep working: their
    dead letters simply have neither.
    """
    columns = {str(row[1]) for row in db.execute("PRAGMA table_info(dead)")}
    if "seq" not in columns:
        db.execute("ALTER TABLE dead ADD COLUMN seq INTEGER")
    if "overtaken_at" not in columns:
        db.execute("ALTER TABLE dead ADD COLUMN overtaken_at REAL")
    db.execute("CREATE INDEX IF NOT EXISTS dead_by_customer ON dead (target, okey)")


def _migrate_payload_metadata(db: sqlite3.Connection) -> None:
    """Give unreadable payloads their size and digest, kept even when the body is not."""
    columns = {str(row[1]) for row in db.execute("PRAGMA table_info(dead)")}
    if "size" not in columns:
        db.execute("ALTER TABLE dead ADD COLUMN size INTEGER")
    if "digest" not in columns:
        db.execute("ALTER TABLE dead ADD COLUMN digest TEXT")
    db.execute("CREATE TABLE IF NOT EXISTS tally (name TEXT PRIMARY KEY, n INTEGER NOT NULL)")


def lane_of(okey: str, lanes: int) -> int:
    """The delivery lane (0 to `lanes` - 1) of an ordering key: CRC-32 of its UTF-8, so the
    same customer has the same lane in every process, version and restart."""
    return zlib.crc32(okey.encode("utf-8")) % lanes if lanes > 1 else 0


@dataclass(frozen=True, slots=True)
class Lane:
    """One of `count` lanes of a sink: it owns the customers whose key hashes to `index`."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"lane {self.index} is not one of {self.count}")

    def owns(self, okey: str) -> bool:
        """Whether rows with this ordering key go through this lane."""
        return lane_of(okey, self.count) == self.index

    def where(self) -> tuple[str, tuple[int, ...]]:
        """The SQL predicate (and its parameters) of this lane's rows; none for a lone lane."""
        if self.count == 1:
            return "", ()
        return _IN_LANE, (self.count, self.index)


WHOLE = Lane()
"""The only lane of a sink without lanes: every row."""


class SpoolError(BridgeError):
    """The spool could not be opened or written (unwritable directory, disk full)."""


class SpoolFull(SpoolError):
    """A write found the volume full even after the reserve and a checkpoint."""


@dataclass(frozen=True, slots=True)
class Storage:
    """What the spool may take of its volume, and of it for unreadable payloads.

    `min_free` and `reserve` are bytes; None sizes them to the volume (10 % of it between
    256 KiB and 256 MiB, and 2 % between 256 KiB and 16 MiB), so a small volume is not held
    back whole and a large one not left to fill.
    """

    min_free: int | None = None
    reserve: int | None = None
    unreadable_max_count: int = 1000
    unreadable_max_bytes: int = 4 * MiB
    unreadable_max_metadata: int = 100_000
    """Metadata-only payload letters kept beyond the quota; older ones are only counted."""

    def sized(self, volume: int) -> tuple[int, int]:
        """The floor and the reserve, in bytes, for a volume of `volume` bytes."""
        floor = self.min_free
        if floor is None:
            floor = min(max(volume // 10, MiB // 4), 256 * MiB)
        reserve = self.reserve
        if reserve is None:
            reserve = min(max(volume // 50, MiB // 4), 16 * MiB)
        return floor, reserve


@dataclass(frozen=True, slots=True)
class Room:
    """Space on the spool's volume, as the intake's floor sees it."""

    free: int
    """Bytes free on the volume (for an unprivileged writer)."""
    reusable: int
    """Bytes of free pages inside the spool, which new rows take before the volume."""
    floor: int
    reserve: int
    reserve_held: bool
    enough: bool
    """Whether the intake may write (below the floor it waits; it resumes a quarter above)."""

    @property
    def available(self) -> int:
        """What new rows can take: free on the volume plus free inside the spool."""
        return self.free + self.reusable

    def why(self) -> str:
        """A short reason for readiness and logs (no path, no data)."""
        state = "room" if self.enough else "below the floor"
        return f"{state}: {self.available} bytes available, floor {self.floor}"


@dataclass(frozen=True, slots=True)
class Row:
    """A pending outbox row."""

    id: int
    target: str
    okey: str
    body: str
    created: float
    attempts: int
    next_at: float

    def decoded(self) -> Any:
        """The row's JSON body."""
        return json.loads(self.body)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record a sink gave up on, or a payload that could not be read."""

    id: int
    target: str
    kind: Literal["event", "alarm", "payload"]
    body: bytes
    reason: str
    topic: str | None
    msg_id: str | None
    attempts: int
    created: float
    okey: str = ""
    """The customer key (tenant, project, id) of an event; empty for alarms and payloads."""
    seq: int | None = None
    """The record's place in arrival order (its outbox id), None in spools older than it."""
    overtaken_at: float | None = None
    """When a later event of the same customer reached the same sink, if one has."""
    size: int | None = None
    """An unreadable payload's length as it came (its body may be cut, or not kept)."""
    digest: str | None = None
    """An unreadable payload's SHA-256 (hex), to match reports without its content."""

    @property
    def metadata_only(self) -> bool:
        """Whether only the metadata of this payload was kept (past the quota)."""
        return self.kind == "payload" and not self.body and bool(self.size)


@dataclass(frozen=True, slots=True)
class Replayed:
    """What a replay did: letters put back, and those a later event had overtaken."""

    replayed: int
    overtaken: list[int]
    dropped: int


class Spool:
    """One SQLite database; every method is safe to call from any thread."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        dedup_max_keys: int = 100_000,
        dedup_max_age: float = 7 * 24 * 3600.0,
        storage: Storage | None = None,
        logger: Any = None,
        hold_reserve: bool = False,
    ) -> None:
        self.path = path
        self.storage = storage or Storage()
        self._log = logger
        self._dedup_max_keys = dedup_max_keys
        self._dedup_max_age = dedup_max_age
        self._lock = threading.Lock()
        # One lock, a condition per target: a worker is woken only by rows for its target
        # (and by poke), not by every commit of the intake.
        self._changed_lock = threading.Lock()
        self._changed = threading.Condition(self._changed_lock)
        self._target_changed: dict[str, threading.Condition] = {}
        self._version = 0
        self._versions: dict[str, int] = {}
        self._synchronous = synchronous
        self._sync_now = synchronous
        self._reserve_path = path.with_name(path.name + ".reserve")
        self._room_ok = True
        self._batch_bytes = 0  # a decaying maximum of what one intake commit wrote
        self._room_lock = threading.Lock()  # the intake and a scrape may both look
        self._raw_usage: tuple[int, int] | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            volume = os.statvfs(path.parent)
            self.floor, self.reserve = self.storage.sized(volume.f_blocks * volume.f_frsize)
            self._db = sqlite3.connect(
                str(path), check_same_thread=False, isolation_level=None, timeout=30.0
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            # Nothing of the spool's in temporary files elsewhere, and the log checkpointed
            # in steps a fraction of the floor: a checkpoint must fit in what the floor
            # keeps free, and a log grown once (a large replay) is cut back after it.
            self._db.execute("PRAGMA temp_store=MEMORY")
            self._page = int(self._db.execute("PRAGMA page_size").fetchone()[0])
            pages = min(max(self.floor // (2 * self._page), 16), 1000)
            self._db.execute(f"PRAGMA wal_autocheckpoint={pages}")
            self._log_limit = 2 * pages * self._page
            self._db.execute(f"PRAGMA journal_size_limit={self._log_limit}")
            # Lanes are computed when rows are read, never stored: no column, no migration,
            # and a sink's lane count may change between runs with nothing to rewrite.
            self._db.create_function("lane_of", 2, lane_of, deterministic=True)
            self._db.executescript(_SCHEMA)
            _migrate_order(self._db)
            _migrate_payload_metadata(self._db)
            self._data_version = -1
            self._pending = 0
            self._refresh()
            # Prove now that we can write, rather than at the first message.
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM seen WHERE 0")
            self._db.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            raise SpoolError(f"cannot open the spool at {path}: {exc}") from None
        # The daemon's; a CLI run beside it (as root, perhaps) leaves the volume as it is.
        self._holds_reserve = hold_reserve
        self._hold_reserve()

    # sizes

    @property
    def pending(self) -> int:
        """Rows waiting in the outbox, true across processes (a CLI replay beside us)."""
        with self._lock:
            self._refresh()
            return self._pending

    def _refresh(self) -> None:
        # Called with the lock held. `data_version` changes only when another connection
        # (another process) committed: then the counts kept here are read again.
        version = int(self._db.execute("PRAGMA data_version").fetchone()[0])
        if version != self._data_version:
            self._data_version = version
            self._pending = int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
            self._raw_usage = None

    # room

    def room(self) -> Room:
        """Free space as the floor counts it, and whether the intake may write."""
        try:
            volume = os.statvfs(self.path.parent)
            free = volume.f_bavail * volume.f_frsize
        except OSError:
            free = 0
        with self._lock:
            reusable = self._page * int(self._db.execute("PRAGMA freelist_count").fetchone()[0])
        available = free + reusable
        with self._room_lock:
            # The next commit must fit above the floor too (its table and index pages; the
            # log keeps room for it, below), up to a second floor: on a small volume with
            # large batches the room inside the spool alone must still let the intake on.
            # A quarter above before taking again, so the intake does not flap.
            needed = self.floor + min(2 * self._batch_bytes, self.floor)
            if not self._room_ok:
                needed += self.floor // 4
            enough = available >= needed
            if enough != self._room_ok:
                self._room_ok = enough
                if not enough:
                    with self._lock:
                        self._checkpoint()  # nothing left in the log needing room later
                self._emit(
                    "info" if enough else "warning",
                    "spool_room_regained" if enough else "spool_room_low",
                    available=available,
                    floor=self.floor,
                )
            held = self._reserve_path.exists()
            if enough and not held:
                held = self._hold_reserve()
        return Room(free, reusable, self.floor, self.reserve, held, enough)

    def has_room(self) -> bool:
        """Whether the intake may store more (the volume is above the floor)."""
        return self.room().enough

    @property
    def room_ok(self) -> bool:
        """The last answer of `room`, without looking again (for probes)."""
        return self._room_ok

    @property
    def reserve_held(self) -> bool:
        """Whether the reserve file still holds its space."""
        return self._reserve_path.exists()

    def _hold_reserve(self) -> bool:
        """Create the reserve file if the volume can spare it above the floor."""
        if self._reserve_path.exists():
            return True
        if not self._holds_reserve:
            return False
        try:
            volume = os.statvfs(self.path.parent)
            if volume.f_bavail * volume.f_frsize < self.reserve + self.floor:
                return False
            fd = os.open(self._reserve_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.reserve)
            finally:
                os.close(fd)
        except OSError:
            with contextlib.suppress(OSError):
                self._reserve_path.unlink()
            return False
        self._emit("info", "spool_reserve_held", bytes=self.reserve)
        return True

    def _release_reserve(self) -> bool:
        try:
            self._reserve_path.unlink()
        except OSError:
            return False
        self._emit("warning", "spool_reserve_released", bytes=self.reserve)
        return True

    def _emit(self, level: str, event: str, **fields: Any) -> None:
        if self._log is not None:
            with contextlib.suppress(Exception):  # a log line must not break a write
                getattr(self._log, level)(event, spool=str(self.path), **fields)

    def oldest_age(self, now: float | None = None) -> float:
        """Seconds the oldest pending row has waited (0 when empty)."""
        with self._lock:
            row = self._db.execute("SELECT MIN(created) FROM outbox").fetchone()
        if row is None or row[0] is None:
            return 0.0
        return max(0.0, (now or time.time()) - float(row[0]))

    def targets(self) -> dict[str, int]:
        """Pending rows per target."""
        with self._lock:
            rows = self._db.execute("SELECT target, COUNT(*) FROM outbox GROUP BY target")
            return {str(target): int(count) for target, count in rows}

    # intake

    def store(
        self,
        rows: Sequence[NewRow],
        seen_keys: Sequence[str],
        raw_payloads: Sequence[tuple[str, bytes, str]] = (),
        now: float | None = None,
    ) -> None:
        """Insert outbox rows, de-duplication keys and unreadable payloads in one transaction.

        `raw_payloads` are (topic, payload, reason); payloads are truncated to 4 KiB, and
        past the quota (`Storage.unreadable_max_*`) only their size and digest are kept.
        Raises SpoolError when the commit fails: nothing of it is stored then.
        """
        at = now or time.time()
        with self._lock:
            try:
                self._refresh()
                self._set_sync(self._synchronous)
                self._db.execute("BEGIN IMMEDIATE")
                # A digest's body is its UTF-8 bytes: stored as text, as read back (no
                # decode in Python; the bytes are valid UTF-8, checked when they were parsed).
                self._db.executemany(
                    "INSERT INTO outbox (target, okey, body, created)"
                    " VALUES (?, ?, CAST(? AS TEXT), ?)",
                    [(r.target, r.okey, r.body, at) for r in rows],
                )
                self._db.executemany(
                    "INSERT OR REPLACE INTO seen (key, at) VALUES (?, ?)",
                    [(key, at) for key in seen_keys],
                )
                usage = self._store_payloads(raw_payloads, at) if raw_payloads else None
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                self._raw_usage = None
                if _disk_full(exc):
                    self._checkpoint()  # the next try may then fit in the log as it is
                raise SpoolError(f"cannot write the spool: {exc}") from None
            self._pending += len(rows)
            if usage is not None:
                self._raw_usage = usage
            written = sum(len(r.body) + len(r.okey) + 64 for r in rows)
            written += sum(len(k) + 32 for k in seen_keys)
            written += sum(min(len(p), RAW_PAYLOAD_LIMIT) + 160 for _, p, _ in raw_payloads)
            self._batch_bytes = max(written, self._batch_bytes * 15 // 16)
            self._keep_log_room(2 * self._batch_bytes)
        if rows:
            self._notify({r.target for r in rows})

    def _store_payloads(
        self, payloads: Sequence[tuple[str, bytes, str]], at: float
    ) -> tuple[int, int]:
        # Called inside the intake's transaction. Raw up to the quota, then metadata only;
        # metadata rows beyond their own bound are deleted oldest first and only counted.
        storage = self.storage
        count, size = self._raw_usage or self._payload_usage()
        kept: list[tuple[bytes, str, str, float, int, str]] = []
        for topic, payload, why in payloads:
            body = payload[:RAW_PAYLOAD_LIMIT]
            digest = hashlib.sha256(payload).hexdigest()
            if (
                count < storage.unreadable_max_count
                and size + len(body) <= storage.unreadable_max_bytes
            ):
                count, size = count + 1, size + len(body)
            else:
                body = b""
            kept.append((body, why, topic, at, len(payload), digest))
        self._db.executemany(
            "INSERT INTO dead (target, kind, body, reason, topic, created, size, digest)"
            " VALUES ('', 'payload', ?, ?, ?, ?, ?, ?)",
            kept,
        )
        if any(not body for body, *_ in kept):
            excess = self._db.execute(
                "DELETE FROM dead WHERE id IN (SELECT id FROM dead WHERE kind = 'payload'"
                " AND LENGTH(body) = 0 ORDER BY id DESC LIMIT -1 OFFSET ?)",
                (storage.unreadable_max_metadata,),
            ).rowcount
            if excess:
                self._db.execute(
                    "INSERT INTO tally (name, n) VALUES ('payloads_forgotten', ?)"
                    " ON CONFLICT (name) DO UPDATE SET n = n + excluded.n",
                    (excess,),
                )
        return count, size

    def _keep_log_room(self, size: int) -> None:
        # Called with the lock held. The log is cut back after a checkpoint to this size,
        # never below: the space it keeps takes the next commits even on a full volume.
        if size > self._log_limit:
            self._log_limit = size
            with contextlib.suppress(sqlite3.Error):
                self._db.execute(f"PRAGMA journal_size_limit={size}")

    def _payload_usage(self) -> tuple[int, int]:
        # Called with the lock held: the raw payload letters and the bytes they keep.
        row = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM dead"
            " WHERE kind = 'payload' AND LENGTH(body) > 0"
        ).fetchone()
        return int(row[0]), int(row[1])

    def unreadable(self) -> dict[str, int]:
        """Unreadable payloads: kept raw, kept as metadata only, and forgotten past both."""
        with self._lock:
            rows = dict(
                self._db.execute(
                    "SELECT LENGTH(body) > 0, COUNT(*) FROM dead WHERE kind = 'payload'"
                    " GROUP BY LENGTH(body) > 0"
                ).fetchall()
            )
            forgotten = self._db.execute(
                "SELECT n FROM tally WHERE name = 'payloads_forgotten'"
            ).fetchone()
        return {
            "raw": int(rows.get(1, 0)),
            "metadata": int(rows.get(0, 0)),
            "forgotten": int(forgotten[0]) if forgotten else 0,
        }

    def seen(self, keys: Iterable[str]) -> set[str]:
        """Which of `keys` are inside the de-duplication window."""
        wanted = list(keys)
        if not wanted:
            return set()
        found: set[str] = set()
        with self._lock:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                marks = ",".join("?" * len(chunk))
                query = f"SELECT key FROM seen WHERE key IN ({marks})"  # noqa: S608 - only '?'
                found.update(str(k) for (k,) in self._db.execute(query, chunk))
        return found

    def prune_seen(self, now: float | None = None) -> int:
        """Drop keys older than the window's age, then the oldest beyond its size."""
        at = now or time.time()
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                gone = self._db.execute(
                    "DELETE FROM seen WHERE at < ?", (at - self._dedup_max_age,)
                ).rowcount
                gone += self._db.execute(
                    "DELETE FROM seen WHERE key IN (SELECT key FROM seen ORDER BY at DESC"
                    " LIMIT -1 OFFSET ?)",
                    (self._dedup_max_keys,),
                ).rowcount
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise SpoolError(f"cannot prune the de-duplication window: {exc}") from None
        return int(gone)

    # delivery

    def due(
        self,
        target: str,
        limit: int,
        now: float | None = None,
        scan: int = 5000,
        *,
        hold: bool = False,
        lane: Lane = WHOLE,
    ) -> list[Row]:
        """Up to `limit` rows of `target` in `lane` that may be sent now, oldest first.

        A row waits while an earlier row with the same ordering key is waiting (for
        its retry time, or outside this batch), so one customer's events never
        overtake each other; other customers' rows go on. With `hold`, a customer
        with a dead letter at `target` waits too, until it is replayed or purged.
        A customer's rows are all in one lane, so each lane keeps this for its own.
        """
        at = now or time.time()
        chosen: list[int] = []
        after, scanned = 0, 0
        chunk = max(2 * limit, 64)
        in_lane, lane_args = lane.where()
        query = _DUE_PAGE + in_lane + _BY_ID
        with self._lock:
            blocked = self._held_keys(target) if hold else set()
            # Scan keys and retry times only, in chunks, until the batch is full; the
            # bodies are read for the chosen rows alone.
            while len(chosen) < limit and scanned < scan:
                page = self._db.execute(query, (target, after, *lane_args, chunk)).fetchall()
                if not page:
                    break
                for row_id, okey, next_at in page:
                    if okey in blocked:
                        continue
                    if next_at > at:
                        blocked.add(okey)
                        continue
                    chosen.append(row_id)
                    if len(chosen) >= limit:
                        break
                after, scanned = page[-1][0], scanned + len(page)
            if not chosen:
                return []
            marks = ",".join("?" * len(chosen))  # only '?' placeholders are joined in
            query = f"SELECT {_ROW} FROM outbox WHERE id IN ({marks}) ORDER BY id"  # noqa: S608
            rows = self._db.execute(query, chosen).fetchall()
        return [Row(*r) for r in rows]

    def has_pending(self, target: str) -> bool:
        """Whether any row of `target` waits (in hand of its worker, or for a retry)."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM outbox WHERE target = ? LIMIT 1", (target,)
            ).fetchone()
        return row is not None

    def next_due(self, target: str, lane: Lane = WHOLE) -> float | None:
        """When the earliest retry of `target` in `lane` falls due (None when nothing waits)."""
        # Only rows waiting for a retry: rows never tried (next_at 0) that wait behind a
        # customer's retrying row would otherwise make an idle worker spin.
        in_lane, lane_args = lane.where()
        query = _NEXT_RETRY + in_lane
        with self._lock:
            row = self._db.execute(query, (target, *lane_args)).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def done(self, ids: Sequence[int]) -> None:
        """Delete delivered rows (marking the dead letters they overtook)."""

        gone = 0

        def delete(db: sqlite3.Connection) -> None:
            nonlocal gone
            _mark_overtaken(db, ids, time.time())
            gone = db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids]).rowcount

        try:
            # Counted as deleted, not as asked: a batch half deleted before is asked again whole.
            self._write(delete, lambda: -gone, frees=True)
        except SpoolFull:
            if len(ids) == 1:
                raise
            # Rows spread over many pages (a sink's lanes each delete every Nth row) may need
            # more log than a full volume has: in halves, each a smaller transaction.
            middle = len(ids) // 2
            self.done(ids[:middle])
            self.done(ids[middle:])

    def retry(self, ids: Sequence[int], next_at: float, error: str) -> None:
        """Count a failed attempt and set when to try again."""
        self._write(
            lambda db: db.executemany(
                "UPDATE outbox SET attempts = attempts + 1, next_at = ?, last_error = ?"
                " WHERE id = ?",
                [(next_at, error, i) for i in ids],
            ),
            0,
        )

    def give_up(
        self, rows: Sequence[Row], reason: str, alarms: Sequence[NewRow] = (), *, kind: str
    ) -> None:
        """Move rows to the dead letters and queue their alarms, in one transaction."""
        now = time.time()

        def move(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT INTO dead"
                " (target, kind, okey, body, reason, msg_id, attempts, created, seq)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        r.target,
                        kind,
                        r.okey,
                        r.body.encode(),
                        reason,
                        _msg_id(r),
                        r.attempts + 1,
                        now,
                        r.id,
                    )
                    for r in rows
                ],
            )
            db.executemany("DELETE FROM outbox WHERE id = ?", [(r.id,) for r in rows])
            db.executemany(
                "INSERT INTO outbox (target, okey, body, created) VALUES (?, ?, ?, ?)",
                [(a.target, a.okey, a.body, now) for a in alarms],
            )

        self._write(move, len(alarms) - len(rows), frees=True)
        if alarms:
            self._notify({a.target for a in alarms})

    # dead letters

    def dead_letters(self, limit: int = 100, after: int = 0) -> list[DeadLetter]:
        """Dead letters, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, target, kind, body, reason, topic, msg_id, attempts, created,"
                " okey, seq, overtaken_at, size, digest FROM dead WHERE id > ?"
                " ORDER BY id LIMIT ?",
                (after, limit),
            ).fetchall()
        return [
            DeadLetter(
                r[0],
                r[1],
                r[2],
                bytes(r[3]),
                r[4],
                r[5],
                r[6],
                r[7],
                r[8],
                r[9],
                r[10],
                r[11],
                r[12],
                r[13],
            )
            for r in rows
        ]

    def dead_letter(self, letter_id: int) -> DeadLetter | None:
        """One dead letter by id."""
        found = self.dead_letters(limit=1, after=letter_id - 1)
        return found[0] if found and found[0].id == letter_id else None

    def replay(self, ids: Sequence[int] | None) -> int:
        """Put dead letters (all when `ids` is None) back in the outbox; payloads stay."""
        return self.replay_in_order(ids).replayed

    def replay_in_order(
        self, ids: Sequence[int] | None, *, skip_overtaken: bool = False
    ) -> Replayed:
        """Put dead letters back in the outbox, each at its place in arrival order.

        A letter goes back under its old outbox id, so it is sent before the later events
        of its customer that wait (held) behind it. Letters that a later event of the same
        customer already overtook at their sink are reported, and with `skip_overtaken`
        deleted instead of replayed.
        """
        selector = "" if ids is None else f" AND id IN ({','.join('?' * len(ids))})"
        params: list[int] = [] if ids is None else list(ids)
        result = Replayed(0, [], 0)

        def move(db: sqlite3.Connection) -> None:
            nonlocal result
            rows = db.execute(
                # only '?' placeholders are joined in
                "SELECT id, target, okey, body, seq, overtaken_at FROM dead"  # noqa: S608
                " WHERE kind != 'payload'" + selector + " ORDER BY COALESCE(seq, 0), id",
                params,
            ).fetchall()
            overtaken = [int(r[0]) for r in rows if r[5] is not None]
            if skip_overtaken:
                rows = [r for r in rows if r[5] is None]
            at = time.time()
            for _, target, okey, body, seq, _ in rows:
                text = bytes(body).decode()
                placed = 0
                if seq is not None:
                    placed = db.execute(
                        "INSERT OR IGNORE INTO outbox (id, target, okey, body, created)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (seq, target, okey, text, at),
                    ).rowcount
                if not placed:  # an old letter without a place, or its place is taken
                    db.execute(
                        "INSERT INTO outbox (target, okey, body, created) VALUES (?, ?, ?, ?)",
                        (target, okey, text, at),
                    )
            db.executemany("DELETE FROM dead WHERE id = ?", [(r[0],) for r in rows])
            dropped = []
            if skip_overtaken:
                dropped = [(i,) for i in overtaken]
                db.executemany("DELETE FROM dead WHERE id = ?", dropped)
            result = Replayed(len(rows), overtaken, len(dropped))

        self._write(move, 0)
        with self._lock:
            self._pending += result.replayed
        self._notify(None)
        return result

    def has_dead(self, target: str) -> bool:
        """Whether `target` has dead letters of events."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM dead WHERE target = ? AND kind = 'event' LIMIT 1", (target,)
            ).fetchone()
        return row is not None

    def hasten(self, target: str, now: float | None = None) -> int:
        """Make every row of `target` waiting for a retry due now (its sink answers again)."""
        at = now or time.time()
        changed = 0

        def hurry(db: sqlite3.Connection) -> None:
            nonlocal changed
            changed = db.execute(
                "UPDATE outbox SET next_at = 0 WHERE target = ? AND next_at > ?", (target, at)
            ).rowcount

        self._write(hurry, 0)
        if changed:
            self._notify({target})
        return changed

    def _held_keys(self, target: str) -> set[str]:
        # Called with the lock held: the customers of `target` that wait behind a dead letter.
        rows = self._db.execute(
            "SELECT DISTINCT okey FROM dead WHERE target = ? AND kind = 'event'", (target,)
        )
        return {str(okey) for (okey,) in rows}

    def purge(self, ids: Sequence[int] | None) -> int:
        """Delete dead letters (all when `ids` is None)."""
        with self._lock:
            self._raw_usage = None
            try:
                if ids is None:
                    return int(self._db.execute("DELETE FROM dead").rowcount)
                return sum(
                    self._db.execute("DELETE FROM dead WHERE id = ?", (i,)).rowcount for i in ids
                )
            except sqlite3.Error as exc:
                raise SpoolError(f"cannot purge dead letters: {exc}") from None

    def dead_count(self) -> int:
        """How many dead letters there are."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM dead").fetchone()[0])

    def dead_by_kind(self) -> dict[str, int]:
        """Stored dead letters per kind (`event`, `alarm`, `payload`), as the file holds them:
        a replay or purge by another process shows at once."""
        with self._lock:
            rows = self._db.execute("SELECT kind, COUNT(*) FROM dead GROUP BY kind").fetchall()
        return {str(kind): int(count) for kind, count in rows}

    # waiting

    @property
    def version(self) -> int:
        """Grows whenever rows are added; pass it to `wait_for_change`."""
        return self._version

    def version_of(self, target: str) -> int:
        """Grows whenever rows are added for `target`; pass it to `wait_for_change`."""
        with self._changed_lock:
            return self._versions.setdefault(target, 0)  # known from now on to `poke`

    def wait_for_change(self, since: int, timeout: float, target: str | None = None) -> None:
        """Sleep until rows were added after the version (of `target`, or of the whole
        spool) was `since`, or until `timeout` passes."""
        with self._changed_lock:
            if target is None:
                if self._version == since:
                    self._changed.wait(timeout)
                return
            if self._versions.get(target, 0) == since:
                condition = self._target_changed.get(target)
                if condition is None:
                    condition = threading.Condition(self._changed_lock)
                    self._target_changed[target] = condition
                condition.wait(timeout)

    def poke(self) -> None:
        """Wake every waiting worker (to see a stop request)."""
        self._notify(None)

    def _notify(self, targets: set[str] | None) -> None:
        with self._changed_lock:
            self._version += 1
            self._changed.notify_all()
            woken = list(self._versions) if targets is None else targets
            for target in woken:
                self._versions[target] = self._versions.get(target, 0) + 1
                condition = self._target_changed.get(target)
                if condition is not None:
                    condition.notify_all()

    def _set_sync(self, level: Literal["FULL", "NORMAL"]) -> None:
        # Only the intake's commits precede acknowledgements; the workers' (a delivered row
        # deleted, a retry counted) may be lost to a power cut at the price of a repeat, so
        # they skip the fsync. A FULL commit syncs the whole log, earlier commits included.
        if level != self._sync_now:
            self._db.execute(f"PRAGMA synchronous={level}")
            self._sync_now = level

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
        self._notify(None)

    def _write(
        self, change: Any, pending_delta: int | Callable[[], int], *, frees: bool = False
    ) -> None:
        # The workers' writes (a delivered row deleted, a retry, a dead letter). When the
        # disk is full, a write that makes progress (`frees`: rows delivered or given up)
        # gets the reserve and is tried once more, so that delivering goes on and frees room
        # for the intake; a retry counted while the sink is down never spends it.
        with self._lock:
            for last in (False, True):
                try:
                    self._refresh()
                    self._set_sync("NORMAL")
                    self._db.execute("BEGIN IMMEDIATE")
                    change(self._db)
                    self._db.execute("COMMIT")
                except sqlite3.Error as exc:
                    self._rollback()
                    if not last and frees and _disk_full(exc):
                        # The log may hold pages the database file must grow for: with the
                        # reserve's room the checkpoint moves them and the log starts over.
                        released = self._release_reserve()
                        if self._checkpoint() or released:
                            continue
                    failed = SpoolFull if _disk_full(exc) else SpoolError
                    raise failed(f"cannot write the spool: {exc}") from None
                break
            self._pending += pending_delta if isinstance(pending_delta, int) else pending_delta()

    def _checkpoint(self) -> bool:
        # Called with the lock held: move the log into the database, so that no page waits
        # in it for room the volume may not have later, and have the next commit write the
        # log from its start. The log file keeps its size (not TRUNCATE): another program
        # on the volume could take that room, and the next commits need it.
        try:
            busy = self._db.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()[0]
        except sqlite3.Error:
            return False
        return not busy

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):  # no transaction was open
            self._db.execute("ROLLBACK")


def _mark_overtaken(db: sqlite3.Connection, ids: Sequence[int], at: float) -> None:
    """Mark the dead letters that the delivered rows `ids` overtake: same sink, same customer,
    later in arrival order. Found through the index on (target, okey): cheap when none."""
    for start in range(0, len(ids), 500):
        chunk = list(ids[start : start + 500])
        marks = ",".join("?" * len(chunk))  # only '?' placeholders are joined in
        db.execute(
            "UPDATE dead SET overtaken_at = ? WHERE id IN (SELECT d.id FROM outbox o"  # noqa: S608
            " JOIN dead d ON d.target = o.target AND d.okey = o.okey"
            f" WHERE o.id IN ({marks}) AND d.kind = 'event' AND d.seq < o.id"
            " AND d.overtaken_at IS NULL)",
            [at, *chunk],
        )


def _disk_full(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code == _SQLITE_FULL or "full" in str(exc)


def _msg_id(row: Row) -> str | None:
    try:
        body = json.loads(row.body)
    except ValueError:
        return None
    value = body.get("msgId") if isinstance(body, dict) else None
    return value if isinstance(value, str) else None
