"""The measurements: drains of a queued backlog, steady rates, the soak, the scale-out.

Each scenario starts its own mosquitto, so that one consumer's session never sees another's
traffic. Times are CLOCK_MONOTONIC (`time.monotonic_ns()`), shared by every process here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections import Counter as Tally
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nodered
import traffic
from common import (
    BENCH,
    ROOT,
    Counter,
    HostMeter,
    LineCounter,
    Mosquitto,
    cpu_seconds,
    prime_session,
    publish_all,
    rss_mb,
    rss_parts_mb,
    stop_process,
)
from hook import HookServer
from spy import Profiler
from traffic import Envelope

from bridge import testing

BRIDGE_ROOT = ROOT  # where `bridge` is imported from (--bridge-root / --bridge-ref change it)
OVERRIDES: dict[str, Any] = {}  # dotted config keys set on every bridge (--bridge-set)
WINDOW_KEYS = 0  # de-duplication keys already in a bridge's spool before a drain (--window-keys)
BRIDGE_FILTER = "+/+/+"  # what the bridge subscribes with the default subscription
SHARE_GROUP = "bench"
_MSG_ID = re.compile(rb'"msgId":"([^"]*)"')
_SOURCE_ID = re.compile(rb'"sourceMsgId":"([^"]*)"')


def log(text: str) -> None:
    """Progress on stderr (the table goes to stdout)."""
    print(text, file=sys.stderr, flush=True)


# --- the bridge as a process --------------------------------------------------------------------


def bridge_config(
    broker: Mosquitto,
    client_id: str,
    sinks: list[dict[str, Any]],
    spool: Path,
    *,
    share_group: str | None = None,
    broker_extra: dict[str, Any] | None = None,
    spool_extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The default config plus what a benchmark must set: broker, sinks, spool, quiet logs."""
    config: dict[str, Any] = {
        "broker": {
            "host": broker.host,
            "port": broker.port,
            "protocol": "5",
            "client_id": client_id,
            **(broker_extra or {}),
        },
        "sinks": sinks,
        "spool": {"path": str(spool), **(spool_extra or {})},
        "health": {"port": 0},
        "logging": {"level": "warning", "format": "json"},
    }
    if share_group is not None:
        config["subscription"] = {"share_group": share_group}
    for dotted, value in OVERRIDES.items():
        node: Any = config
        *parents, leaf = dotted.split(".")
        for key in parents:  # a number indexes a list: sinks.0.batch_size
            node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
        if leaf.isdigit():
            node[int(leaf)] = value
        else:
            node[leaf] = value
    return config


def bridge_env() -> dict[str, str]:
    """The environment of a bridge process: BRIDGE_ROOT first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(BRIDGE_ROOT), env.get("PYTHONPATH", "")) if p
    )
    env.pop("BRIDGE_LOG_LEVEL", None)  # the config's warning level holds
    return env


def bridge_location() -> str:
    """Where a bridge process imports `bridge` from (proof that --bridge-* took effect)."""
    out = subprocess.run(
        [sys.executable, "-c", "import bridge, os; print(os.path.dirname(bridge.__file__))"],
        env=bridge_env(),
        cwd=BENCH,
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or out.stderr.strip()[-300:]


class BridgeProcess(testing.BridgeProcess):
    """`python -m bridge run -c CONFIG` with BRIDGE_ROOT first on PYTHONPATH."""

    def start(self, wrapper: Sequence[str] = ()) -> BridgeProcess:  # type: ignore[override]
        """Start the process (under `wrapper`, e.g. a profiler, when given)."""
        self.env = bridge_env()
        return super().start(wrapper=wrapper)

    def alive(self) -> bool:
        """Whether it still runs."""
        return self.running

    def rss(self) -> float | None:
        """Resident memory, MiB."""
        return rss_mb(self.pid) if self.alive() else None

    def cpu(self) -> float | None:
        """CPU seconds used so far."""
        return cpu_seconds(self.pid) if self.alive() else None

    def stop(self) -> int | None:
        """SIGTERM: the bridge drains, stores and acks what it took, and exits 0."""
        return stop_process(self.proc, 60)

    def output(self) -> str:
        """Its stdout and stderr so far."""
        paths = (self.stdout_path, self.stderr_path)
        return "".join(path.read_text(errors="replace") for path in paths if path.exists())

    def log_events(self) -> dict[str, int]:
        """How many warning / error lines of each event the bridge logged."""
        found: Tally[str] = Tally()
        for line in self.output().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                found["(not json)"] += 1
                continue
            if isinstance(event, dict):
                found[f"{event.get('level', '?')}:{event.get('event', '?')}"] += 1
        return dict(found)

    def log_tail(self, size: int = 3000) -> str:
        """The end of its output."""
        return self.output()[-size:]


# --- results ------------------------------------------------------------------------------------


@dataclass
class Drain:
    """What one drain measured."""

    consumer: str
    messages: int
    finished: bool
    seconds: float  # from the consumer's start to the last output
    first_output_s: float | None  # from start to the first output (start-up and connect)
    outputs: int
    expected_outputs: int
    alarms: int = 0
    expected_alarms: int = 0
    rss_mb: float | None = None
    rss_parts_mb: list[float] = field(default_factory=list)
    """The consumer's process first, then its children (the bridge's workers)."""
    cpu_s: float | None = None
    broker_rss_mb: float | None = None
    check: dict[str, Any] = field(default_factory=dict)
    host: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    @property
    def rate(self) -> float:
        """Messages per second, start to finish."""
        return self.messages / self.seconds if self.finished and self.seconds > 0 else 0.0

    @property
    def rate_after_start(self) -> float:
        """Messages per second from the first output to the last (start-up left out)."""
        if not self.finished or self.first_output_s is None:
            return 0.0
        span = self.seconds - self.first_output_s
        return self.messages / span if span > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """For the results file."""
        return {
            "consumer": self.consumer,
            "messages": self.messages,
            "finished": self.finished,
            "seconds": round(self.seconds, 3),
            "msgs_per_s": round(self.rate, 1),
            "first_output_s": None
            if self.first_output_s is None
            else round(self.first_output_s, 3),
            "msgs_per_s_after_first_output": round(self.rate_after_start, 1),
            "outputs": self.outputs,
            "expected_outputs": self.expected_outputs,
            "alarms": self.alarms,
            "expected_alarms": self.expected_alarms,
            "rss_mb": None if self.rss_mb is None else round(self.rss_mb, 1),
            "rss_parts_mb": [round(r, 1) for r in self.rss_parts_mb],
            "cpu_s": None if self.cpu_s is None else round(self.cpu_s, 2),
            "cpu_us_per_msg": None
            if self.cpu_s is None
            else round(self.cpu_s / max(1, self.messages) * 1e6, 1),
            "broker_rss_mb": None if self.broker_rss_mb is None else round(self.broker_rss_mb, 1),
            "consumer_cores": None
            if self.cpu_s is None or not self.seconds
            else round(self.cpu_s / self.seconds, 2),
            "host": self.host,
            "check": self.check,
            "note": self.note,
        }


def _timeout_for(messages: int) -> float:
    return 120.0 + messages / 200.0


def _wait(
    done: Callable[[], bool],
    timeout: float,
    started_ns: int,
    first: Callable[[], bool],
    alive: Callable[[], bool] = lambda: True,
    interval: float = 0.01,
) -> tuple[bool, float, float | None]:
    """Poll until `done()`; return (finished, seconds since start, seconds to first output)."""
    first_s: float | None = None
    deadline = time.monotonic() + timeout
    while True:
        now_ns = time.monotonic_ns()
        if first_s is None and first():
            first_s = (now_ns - started_ns) / 1e9
        if done():
            if first_s is None:
                first_s = (now_ns - started_ns) / 1e9
            return True, (now_ns - started_ns) / 1e9, first_s
        if time.monotonic() > deadline or not alive():
            return False, (now_ns - started_ns) / 1e9, first_s
        time.sleep(interval)


def _backlog(broker: Mosquitto, envelopes: Sequence[Envelope]) -> None:
    seconds = publish_all(broker, [(e.topic, e.payload) for e in envelopes])
    log(f"  backlog of {len(envelopes):,} queued in {seconds:.1f} s")


def check_outputs(
    envelopes: Sequence[Envelope],
    forwarded: Tally[str],
    alarmed: Tally[str],
    anonymous_alarms: int,
    *,
    per_envelope: bool = False,
) -> dict[str, Any]:
    """Lost, duplicated and unexpected outputs, by msgId.

    `forwarded` counts output lines (records, or whole envelopes when `per_envelope`) per
    msgId, `alarmed` alarms per sourceMsgId; `anonymous_alarms` is how many alarms carried no
    sourceMsgId (payloads that are not JSON have none).
    """
    want: dict[str, int] = {}
    for e in envelopes:
        n = (1 if e.valid else 0) if per_envelope else e.records
        if n:
            want[e.msg_id] = n
    no_json = sum(1 for e in envelopes if not e.parsable)
    want_alarm = {e.msg_id for e in envelopes if e.alarms and e.parsable}
    lost = sum(max(0, n - forwarded.get(k, 0)) for k, n in want.items())
    extra = sum(max(0, c - want.get(k, 0)) for k, c in forwarded.items())
    lost_alarms = sum(1 for k in want_alarm if alarmed.get(k, 0) == 0) + max(
        0, no_json - anonymous_alarms
    )
    extra_alarms = sum(max(0, c - (1 if k in want_alarm else 0)) for k, c in alarmed.items())
    extra_alarms += max(0, anonymous_alarms - no_json)
    return {
        "lost_outputs": lost,
        "duplicate_or_unexpected_outputs": extra,
        "lost_alarms": lost_alarms,
        "duplicate_or_unexpected_alarms": extra_alarms,
        "ok": lost == extra == lost_alarms == extra_alarms == 0,
    }


def _ids_in_files(paths: Sequence[Path]) -> Tally[str]:
    found: Tally[str] = Tally()
    for path in paths:
        if not path.exists():
            continue
        with path.open("rb") as handle:
            for line in handle:
                match = _MSG_ID.search(line)
                found[match.group(1).decode() if match else "?"] += 1
    return found


def _alarm_ids(payloads: Sequence[bytes]) -> tuple[Tally[str], int]:
    found: Tally[str] = Tally()
    anonymous = 0
    for payload in payloads:
        match = _SOURCE_ID.search(payload)
        if match:
            found[match.group(1).decode()] += 1
        else:
            anonymous += 1
    return found, anonymous


# --- drains -------------------------------------------------------------------------------------


def drain_bare(workdir: Path, envelopes: Sequence[Envelope], receive_maximum: int) -> Drain:
    """(a) the limit: a bare paho QoS 1 subscriber with manual acks that only parses."""
    return _drain_subscriber(
        workdir, envelopes, receive_maximum, "bare_subscriber.py", "limit: bare paho subscriber"
    )


def drain_intake_receiver(
    workdir: Path, envelopes: Sequence[Envelope], receive_maximum: int
) -> Drain:
    """The bridge's own receive-only client doing the bare subscriber's work (parse, ack)."""
    return _drain_subscriber(
        workdir, envelopes, receive_maximum, "intake_subscriber.py", "bridge intake client"
    )


def _drain_subscriber(
    workdir: Path,
    envelopes: Sequence[Envelope],
    receive_maximum: int,
    script: str,
    consumer: str,
) -> Drain:
    client_id = "bench-bare"
    with Mosquitto(workdir / "broker") as broker:
        prime_session(broker, client_id, [BRIDGE_FILTER])
        _backlog(broker, envelopes)
        broker_rss = broker.rss_mb()
        meter = HostMeter(broker)
        started = time.monotonic_ns()
        proc = subprocess.run(
            [
                sys.executable,
                str(BENCH / script),
                "--port",
                str(broker.port),
                "--client-id",
                client_id,
                "--expect",
                str(len(envelopes)),
                "--receive-maximum",
                str(receive_maximum),
                "--timeout",
                str(_timeout_for(len(envelopes))),
            ],
            capture_output=True,
            text=True,
            check=False,
            env=bridge_env(),
        )
        ended = time.monotonic_ns()
        host = meter.stop()
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise RuntimeError(f"{script} failed:\n{proc.stdout}\n{proc.stderr}") from None
    last = result["last"] or ended
    first = result["first"]
    return Drain(
        consumer=consumer,
        messages=len(envelopes),
        finished=bool(result["finished"]),
        seconds=(last - started) / 1e9,
        first_output_s=None if first is None else (first - started) / 1e9,
        outputs=int(result["count"]),
        expected_outputs=len(envelopes),
        cpu_s=float(result.get("cpu_s", 0.0)) or None,
        rss_mb=result.get("rss_mb"),
        broker_rss_mb=broker_rss,
        check={"not_json": result["bad"]},
        host=host,
    )


def drain_mosquitto_sub(
    workdir: Path, envelopes: Sequence[Envelope], receive_maximum: int
) -> Drain:
    """The physical reference: the C client `mosquitto_sub` drains the backlog and prints
    one line per message (its topic); libmosquitto acknowledges on receipt."""
    binary = shutil.which("mosquitto_sub")
    if binary is None:
        raise RuntimeError("mosquitto_sub not found (Debian: apt-get install mosquitto-clients)")
    client_id = "bench-mosquitto-sub"
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "topics.txt"
    with Mosquitto(workdir / "broker") as broker:
        prime_session(broker, client_id, [BRIDGE_FILTER])
        _backlog(broker, envelopes)
        broker_rss = broker.rss_mb()
        meter = HostMeter(broker)
        command = [
            binary, "-h", broker.host, "-p", str(broker.port), "-V", "5", "-q", "1", "-c",
            "-x", "3600", "-i", client_id, "-t", BRIDGE_FILTER, "-F", "%t",
            "-C", str(len(envelopes)), "-W", str(int(_timeout_for(len(envelopes)))),
            "-D", "connect", "receive-maximum", str(receive_maximum),
        ]  # fmt: skip
        started = time.monotonic_ns()
        with out.open("wb") as sink:
            proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.PIPE)
            _pid, _status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(_status)
        ended = time.monotonic_ns()
        host = meter.stop()
    lines = out.read_bytes().count(b"\n")
    return Drain(
        consumer="mosquitto_sub (the C client)",
        messages=len(envelopes),
        finished=lines >= len(envelopes),
        seconds=(ended - started) / 1e9,
        first_output_s=None,
        outputs=lines,
        expected_outputs=len(envelopes),
        cpu_s=usage.ru_utime + usage.ru_stime,
        rss_mb=usage.ru_maxrss / 1024,
        broker_rss_mb=broker_rss,
        check={"exit": proc.returncode},
        host=host,
    )


class MirrorProbe:
    """The mirror's database for a drain (a file, or a throwaway PostgreSQL) and its counters."""

    def __init__(self, workdir: Path, backend: str) -> None:
        self.backend = backend
        self._server: Any = None
        if backend == "sqlite":
            self.url = f"sqlite:///{workdir / 'mirror.db'}"
            self._path = workdir / "mirror.db"
        else:
            sys.path.insert(0, str(ROOT / "tests"))
            from databases import Postgres  # noqa: PLC0415 - the tests' throwaway cluster

            self._server = Postgres()
            self._server.start()
            self.url = self._server.url
        self._db: Any = None

    def _query(self, sql: str) -> list[tuple[Any, ...]]:
        try:
            if self._db is None:
                if self.backend == "sqlite":
                    import sqlite3  # noqa: PLC0415

                    if not self._path.exists():
                        return []
                    self._db = sqlite3.connect(self._path, timeout=5)
                else:
                    import psycopg  # noqa: PLC0415

                    self._db = psycopg.connect(self.url, autocommit=True)
            return list(self._db.execute(sql).fetchall())
        except Exception:
            return []  # not created yet, or busy: the next poll asks again

    def counted(self) -> int:
        """Records the mirror has taken so far (applied, stale or refused)."""
        rows = self._query(
            "SELECT events_applied + stale_skipped + records_refused FROM bridge_mirror"
        )
        return int(rows[0][0]) if rows else 0

    def stats(self) -> dict[str, int]:
        """The counters and the table's size."""
        rows = self._query(
            "SELECT events_applied, stale_skipped, records_refused FROM bridge_mirror"
        )
        applied, stale, refused = rows[0] if rows else (0, 0, 0)
        table = self._query("SELECT COUNT(*) FROM customers")
        return {
            "applied": int(applied),
            "stale": int(stale),
            "refused": int(refused),
            "counted": int(applied) + int(stale) + int(refused),
            "rows": int(table[0][0]) if table else 0,
        }

    def stop(self) -> None:
        """Close the probe's connection and stop the cluster."""
        if self._db is not None:
            self._db.close()
        if self._server is not None:
            self._server.stop()


def prefill_window(spool: Path, keys: int) -> None:
    """Put `keys` de-duplication keys (none of the backlog's) into a new spool, as a bridge
    that has run for a while holds: the window's size sets what each new key costs. Only
    the `seen` table, whose layout every bridge version shares; the bridge makes the rest."""
    with sqlite3.connect(str(spool)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, at REAL NOT NULL)")
        db.execute("CREATE INDEX IF NOT EXISTS seen_by_age ON seen (at)")
        now = time.time()
        db.executemany(
            "INSERT INTO seen (key, at) VALUES (?, ?)",
            ((f"m:prefill-{n:09d}", now - keys + n) for n in range(keys)),
        )
    db.close()


def drain_bridge(
    workdir: Path,
    envelopes: Sequence[Envelope],
    *,
    sink: str = "jsonl",
    label: str | None = None,
    broker_extra: dict[str, Any] | None = None,
    spool_extra: dict[str, Any] | None = None,
    profiler: Profiler | None = None,
) -> Drain:
    """(b) jsonl, (c) webhook or a mirror: the bridge drains the backlog queued on its session.

    `mirror-sqlite` and `mirror-postgresql` write the mirror table (a throwaway cluster for
    PostgreSQL); the drain is over when the mirror has counted every record (applied or stale).
    """
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    client_id = f"bench-bridge-{sink}"
    expected = sum(e.records for e in envelopes)
    expected_alarms = sum(e.alarms for e in envelopes)
    out = workdir / "customers.jsonl"
    hook: HookServer | None = None
    mirror: MirrorProbe | None = None
    if sink == "jsonl":
        sinks: list[dict[str, Any]] = [{"type": "jsonl", "path": str(out)}]
    elif sink.startswith("mirror"):
        mirror = MirrorProbe(workdir, sink.removeprefix("mirror-"))
        sinks = [{"type": "mirror", "database": mirror.url, "table": "customers"}]
    else:
        hook = HookServer().start()
        sinks = [{"type": "webhook", "url": hook.url}]
    with Mosquitto(workdir / "broker") as broker:
        config = bridge_config(
            broker,
            client_id,
            sinks,
            workdir / "spool.db",
            broker_extra=broker_extra,
            spool_extra=spool_extra,
        )
        if WINDOW_KEYS:
            prefill_window(workdir / "spool.db", WINDOW_KEYS)
        bridge = BridgeProcess(workdir, "bridge", config)
        prime_session(broker, client_id, [BRIDGE_FILTER])
        probe = Counter(broker, "bench-alarms", traffic.error_topics()).open()
        try:
            _backlog(broker, envelopes)
            broker_rss = broker.rss_mb()
            meter = HostMeter(broker)
            bridge.start()
            if profiler is not None:
                profiler.attach(bridge.pid)
            if hook is not None:
                delivered: Callable[[], int] = lambda: hook.events  # noqa: E731
            elif mirror is not None:
                delivered = mirror.counted
            else:
                counter = LineCounter(out)
                delivered = counter.poll
            finished, seconds, first = _wait(
                lambda: delivered() >= expected and probe.count >= expected_alarms,
                _timeout_for(len(envelopes)),
                bridge.started_ns,
                lambda: delivered() > 0,
                bridge.alive,
            )
            parts = rss_parts_mb(bridge.pid)  # the intake, then each worker
            rss, cpu = (sum(parts) if parts else None), bridge.cpu()
            host = meter.stop()
            if profiler is not None:
                profiler.finish()
            code = bridge.stop()
            time.sleep(0.2)  # late duplicates, if any, would show in the check
            alarmed, anonymous = _alarm_ids(list(probe.payloads))
            if mirror is not None:
                # A table keeps one row per customer: the check is the mirror's own count
                # of the records it took (applied or stale), which must be exactly all.
                counts = mirror.stats()
                check = {
                    **counts,
                    "expected_records": expected,
                    "ok": counts["counted"] == expected,
                }
                forwarded = Tally({"records": counts["counted"]})
            else:
                if hook is not None:
                    forwarded = Tally(str(i) for i in hook.msg_ids())
                else:
                    forwarded = _ids_in_files([out])
                check = check_outputs(envelopes, forwarded, alarmed, anonymous)
            check["exit_status"] = code
            check["bridge_log"] = bridge.log_events()
            if not finished:
                log(bridge.log_tail())
            return Drain(
                consumer=label or f"bridge, {sink} sink",
                messages=len(envelopes),
                finished=finished,
                seconds=seconds,
                first_output_s=first,
                outputs=sum(forwarded.values()),
                expected_outputs=expected,
                alarms=probe.count,
                expected_alarms=expected_alarms,
                rss_mb=rss,
                rss_parts_mb=parts,
                cpu_s=cpu,
                broker_rss_mb=broker_rss,
                check=check,
                host=host,
            )
        finally:
            probe.close()
            if bridge.alive():
                bridge.stop()
            if hook is not None:
                hook.stop()
            if mirror is not None:
                mirror.stop()


def drain_node_red(workdir: Path, envelopes: Sequence[Envelope]) -> Drain:
    """(d) the peer: a Node-RED flow validating with the JSON node and msg.schema."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    out = workdir / "valid.jsonl"
    expected = sum(1 for e in envelopes if e.valid)
    expected_alarms = sum(1 for e in envelopes if not e.valid)
    with Mosquitto(workdir / "broker") as broker:
        command = nodered.prepare(workdir / "userdir", broker.port, out, traffic.envelope_schema())
        prime_session(broker, nodered.CLIENT_ID, [nodered.FILTER])
        probe = Counter(broker, "bench-alarms", traffic.error_topics()).open()
        proc: subprocess.Popen[bytes] | None = None
        try:
            _backlog(broker, envelopes)
            broker_rss = broker.rss_mb()
            counter = LineCounter(out)
            meter = HostMeter(broker)
            started = time.monotonic_ns()
            with (workdir / "node-red.log").open("ab") as output:
                proc = subprocess.Popen(
                    command,
                    cwd=workdir,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                )
            running = proc
            finished, seconds, first = _wait(
                lambda: counter.poll() >= expected and probe.count >= expected_alarms,
                _timeout_for(len(envelopes)),
                started,
                lambda: counter.lines > 0,
                lambda: running.poll() is None,
            )
            rss, cpu = rss_mb(proc.pid), cpu_seconds(proc.pid)
            host = meter.stop()
            stop_process(proc, 30)
            time.sleep(0.2)
            forwarded = _ids_in_files([out])
            alarmed, anonymous = _alarm_ids(list(probe.payloads))
            check = check_outputs(envelopes, forwarded, alarmed, anonymous, per_envelope=True)
            if not finished:
                log((workdir / "node-red.log").read_text(errors="replace")[-3000:])
            return Drain(
                consumer=f"peer: Node-RED {nodered.installed_version()}",
                messages=len(envelopes),
                finished=finished,
                seconds=seconds,
                first_output_s=first,
                outputs=counter.lines,
                expected_outputs=expected,
                alarms=probe.count,
                expected_alarms=expected_alarms,
                rss_mb=rss,
                cpu_s=cpu,
                broker_rss_mb=broker_rss,
                check=check,
                host=host,
                note="one line per valid envelope; MQTT.js acks on receipt (no durability)",
            )
        finally:
            probe.close()
            stop_process(proc, 10)


def drain_shared(workdir: Path, envelopes: Sequence[Envelope], processes: int = 2) -> Drain:
    """Scale-out: `processes` bridges in one $share group drain the same backlog."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    expected = sum(e.records for e in envelopes)
    expected_alarms = sum(e.alarms for e in envelopes)
    outs = [workdir / f"customers-{i}.jsonl" for i in range(processes)]
    with Mosquitto(workdir / "broker") as broker:
        bridges = []
        for i in range(processes):
            client_id = f"bench-shared-{i}"
            config = bridge_config(
                broker,
                client_id,
                [{"type": "jsonl", "path": str(outs[i])}],
                workdir / f"spool-{i}.db",
                share_group=SHARE_GROUP,
            )
            bridges.append(BridgeProcess(workdir, f"bridge-{i}", config))
            prime_session(broker, client_id, [f"$share/{SHARE_GROUP}/{BRIDGE_FILTER}"])
        probe = Counter(broker, "bench-alarms", traffic.error_topics()).open()
        try:
            _backlog(broker, envelopes)
            broker_rss = broker.rss_mb()
            counters = [LineCounter(p) for p in outs]
            meter = HostMeter(broker)
            for bridge in bridges:
                bridge.start()
            started = bridges[0].started_ns

            def lines() -> int:
                return sum(c.poll() for c in counters)

            finished, seconds, first = _wait(
                lambda: lines() >= expected and probe.count >= expected_alarms,
                _timeout_for(len(envelopes)),
                started,
                lambda: sum(c.lines for c in counters) > 0,
                lambda: all(b.alive() for b in bridges),
            )
            rss = [b.rss() for b in bridges]
            cpu = [b.cpu() for b in bridges]
            host = meter.stop()
            per_bridge = [c.lines for c in counters]
            for bridge in bridges:
                bridge.stop()
            time.sleep(0.2)
            forwarded = _ids_in_files(outs)
            both = set(_ids_in_files([outs[0]])) & set(_ids_in_files(outs[1:]))
            alarmed, anonymous = _alarm_ids(list(probe.payloads))
            check = check_outputs(envelopes, forwarded, alarmed, anonymous)
            check["records_per_bridge"] = per_bridge
            check["bridge_log"] = [b.log_events() for b in bridges]
            check["messages_forwarded_by_two_bridges"] = len(both)
            check["ok"] = bool(check["ok"]) and not both
            return Drain(
                consumer=f"{processes} bridges, $share group, jsonl",
                messages=len(envelopes),
                finished=finished,
                seconds=seconds,
                first_output_s=first,
                outputs=sum(forwarded.values()),
                expected_outputs=expected,
                alarms=probe.count,
                expected_alarms=expected_alarms,
                rss_mb=max((r for r in rss if r is not None), default=None),
                cpu_s=sum(c for c in cpu if c is not None) or None,
                broker_rss_mb=broker_rss,
                check=check,
                host=host,
            )
        finally:
            probe.close()
            for bridge in bridges:
                if bridge.alive():
                    bridge.stop()


# --- steady rate and soak ----------------------------------------------------------------------


def _percentile(values: Sequence[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))
    return ordered[index]


def _slope(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (x, y) points."""
    if len(points) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    if var == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in points) / var


def steady(
    workdir: Path,
    rate: float,
    seconds: float,
    *,
    rss_every: float = 1.0,
    label: str = "steady",
) -> dict[str, Any]:
    """Publish at `rate` msgs/s for `seconds` to a running bridge (jsonl sink).

    Latency of a message: from just before its publish call to the moment the harness saw its
    last record in the jsonl file (polled every 0.5 ms). Messages whose records are all invalid
    have no line and are not counted.
    """
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    pool = traffic.make(5000, seed=11, prefix="@@")
    templates = workdir / "templates.jsonl"
    with templates.open("w", encoding="utf-8") as handle:
        for e in pool:
            payload = e.payload.decode().replace(e.msg_id, "@@MSGID@@", 1)
            handle.write(json.dumps({"topic": e.topic, "payload": payload}) + "\n")
    records_of = [e.records for e in pool]
    out = workdir / "customers.jsonl"
    client_id = "bench-steady"
    with Mosquitto(workdir / "broker") as broker:
        config = bridge_config(
            broker, client_id, [{"type": "jsonl", "path": str(out)}], workdir / "spool.db"
        )
        prime_session(broker, client_id, [BRIDGE_FILTER])
        bridge = BridgeProcess(workdir, "bridge", config).start()
        publisher: subprocess.Popen[str] | None = None
        try:
            # Warm up: the bridge is up, subscribed and has written something.
            warm = traffic.make(200, seed=5, prefix="warm")
            publish_all(broker, [(e.topic, e.payload) for e in warm])
            counter = LineCounter(out)
            want = sum(e.records for e in warm)
            deadline = time.monotonic() + 60
            while counter.poll() < want:
                if time.monotonic() > deadline or not bridge.alive():
                    raise RuntimeError(f"bridge did not warm up:\n{bridge.log_tail()}")
                time.sleep(0.02)
            offset = out.stat().st_size
            publisher = subprocess.Popen(
                [
                    sys.executable,
                    str(BENCH / "rate_publisher.py"),
                    "--port",
                    str(broker.port),
                    "--templates",
                    str(templates),
                    "--rate",
                    str(rate),
                    "--seconds",
                    str(seconds),
                    "--prefix",
                    "r",
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            pending: dict[str, int] = {}
            last_line_ns = 0
            latencies: list[float] = []
            arrivals: list[int] = []
            lines = 0
            rss_points: list[tuple[float, float]] = []
            cpu_start = bridge.cpu() or 0.0
            t_start = time.monotonic()
            next_rss = t_start
            buffer = b""
            expected_total: int | None = None
            drain_deadline: float | None = None
            handle = out.open("rb")
            handle.seek(offset)
            try:
                while True:
                    chunk = handle.read()
                    now_ns = time.monotonic_ns()
                    if chunk:
                        buffer += chunk
                        *complete, buffer = buffer.split(b"\n")
                        if complete:
                            last_line_ns = now_ns
                        for line in complete:
                            lines += 1
                            match = _MSG_ID.search(line)
                            if not match:
                                continue
                            _, seq, stamp = match.group(1).decode().split("-")
                            key = match.group(1).decode()
                            left = pending.get(key, records_of[int(seq) % len(records_of)]) - 1
                            if left <= 0:
                                pending.pop(key, None)
                                latencies.append((now_ns - int(stamp)) / 1e6)
                                arrivals.append(now_ns)
                            else:
                                pending[key] = left
                    now = time.monotonic()
                    if now >= next_rss:
                        value = bridge.rss()
                        if value is not None:
                            rss_points.append((now - t_start, value))
                        next_rss += rss_every
                    if expected_total is None and publisher.poll() is not None:
                        published = json.loads(publisher.stdout.read().strip().splitlines()[-1])
                        count = published["published"]
                        expected_total = sum(records_of[n % len(records_of)] for n in range(count))
                        drain_deadline = now + 30
                    if expected_total is not None and (
                        lines >= expected_total or (drain_deadline and now > drain_deadline)
                    ):
                        break
                    if not bridge.alive():
                        raise RuntimeError(f"bridge exited:\n{bridge.log_tail()}")
                    if not chunk:
                        time.sleep(0.0005)
            finally:
                handle.close()
            elapsed = time.monotonic() - t_start
            cpu_used = (bridge.cpu() or 0.0) - cpu_start
            final_rss = bridge.rss()
        finally:
            stop_process(publisher, 10)
            bridge.stop()
        bridge_log = bridge.log_events()
    rss_values = [v for _, v in rss_points]
    window = 10.0 if seconds >= 120 else 5.0
    timeline: list[dict[str, Any]] = []
    if arrivals:
        origin = arrivals[0]
        buckets: dict[int, list[float]] = {}
        for at, value in zip(arrivals, latencies, strict=True):
            buckets.setdefault(int((at - origin) / 1e9 // window), []).append(value)
        for index in sorted(buckets):
            values = buckets[index]
            timeline.append(
                {
                    "t": index * window,
                    "n": len(values),
                    "p50": _round(_percentile(values, 0.5)),
                    "p99": _round(_percentile(values, 0.99)),
                    "max": _round(max(values)),
                }
            )
    half = [(t / 60.0, v) for t, v in rss_points if t >= seconds / 2]
    after_warmup = [(t / 60.0, v) for t, v in rss_points if t >= min(60.0, seconds / 3)]
    complete = expected_total is not None and lines >= expected_total
    # How long after the last publish the last record landed: a bridge that keeps up with
    # the rate finishes within its usual latency; one that does not works off a backlog.
    lag_s = (last_line_ns - published["ended_ns"]) / 1e9 if complete else None
    sustained = lag_s is not None and lag_s <= 1.0
    return {
        "label": label,
        "rate": rate,
        "seconds": seconds,
        "published": published,
        "sustained": sustained,
        "last_record_after_last_publish_s": None if lag_s is None else round(lag_s, 3),
        "records_expected": expected_total,
        "records_seen": lines,
        "records_per_s_seen": round(lines / elapsed, 1) if elapsed > 0 else None,
        "messages_measured": len(latencies),
        "latency_ms": {
            "p50": _round(_percentile(latencies, 0.50)),
            "p90": _round(_percentile(latencies, 0.90)),
            "p99": _round(_percentile(latencies, 0.99)),
            "p999": _round(_percentile(latencies, 0.999)),
            "max": _round(max(latencies) if latencies else None),
        },
        "latency_timeline": timeline,
        "bridge_cpu_share": round(cpu_used / elapsed, 3) if elapsed > 0 else None,
        "bridge_log": bridge_log,
        "rss_mb": {
            "first": _round(rss_values[0] if rss_values else None),
            "max": _round(max(rss_values) if rss_values else None),
            "final": _round(final_rss),
            "slope_mb_per_min_after_warmup": _round(_slope(after_warmup), 3),
            "growth_mb_second_half": _round(half[-1][1] - half[0][1]) if len(half) > 1 else None,
            "samples": [(round(t, 1), round(v, 1)) for t, v in rss_points]
            if seconds >= 120
            else [],
        },
    }


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)
