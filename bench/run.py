"""The bridge's benchmark: drain rate, steady-rate latency, memory, scale-out.

    python bench/run.py                 # the full run (100,000 messages), about 8 minutes
    python bench/run.py --quick         # a smoke run (5,000 messages, 5 s per rate)
    python bench/run.py --skip-node-red # without the Node-RED peer (no npm needed)
    python bench/run.py --soak          # only the 10-minute soak at 1,000 msgs/s
    python bench/run.py --profile       # only a drain of the bridge under py-spy

Every scenario runs mosquitto on loopback (`max_queued_messages 0`: nothing queued is
dropped). The table goes to stdout (Markdown), progress to stderr, and everything measured to
bench/results/<UTC time>[-quick|-soak|-profile].json. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import compileall
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import hook as hook_server
import nodered
import scenarios
import spy
import traffic
from common import BENCH, ROOT, mosquitto_binary, mosquitto_version
from scenarios import Drain, log

TARGETS = {
    # The fast-intake issue's targets: ratios within one run (docs/performance.md).
    "one_process_vs_limit": 1.5,
    "two_cores_vs_limit": 2.5,
    "vs_node_red": 6.0,
    "webhook_vs_limit": 1.0,
    "bulk_vs_bulk_limit": 0.35,
    "p99_ms": {1000: 10.0, 5000: 50.0},
    "rss_mb_after_drain": 100.0,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, help="backlog size of a drain (100000)")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--skip-node-red", action="store_true", help="leave out the peer")
    parser.add_argument("--rates", default="1000,5000", help="steady rates, msgs/s")
    parser.add_argument("--steady-seconds", type=float, help="seconds per steady rate (30)")
    parser.add_argument(
        "--receive-maximum",
        type=int,
        default=20,
        help="in-flight window of the bare subscriber (the bridge's default is 20)",
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated subset: limit,receiver,mosquitto_sub,jsonl,jsonl-one,bulk,webhook,"
        "mirror-sqlite,mirror-postgresql,node-red,shared,steady (jsonl-one: worker processes "
        "off; bulk: 100 records per envelope)",
    )
    parser.add_argument("--soak", action="store_true", help="only the soak (RSS over time)")
    parser.add_argument("--soak-minutes", type=float, default=10.0)
    parser.add_argument("--soak-rate", type=float, default=1000.0)
    parser.add_argument("--profile", action="store_true", help="only a py-spy profiled drain")
    parser.add_argument(
        "--profile-sink",
        choices=("jsonl", "webhook"),
        default="jsonl",
        help="the sink of the --profile drain",
    )
    parser.add_argument(
        "--alarms", type=int, metavar="N", help="only the alarm worker draining N alarms"
    )
    parser.add_argument(
        "--bridge-ref",
        help="measure the bridge/ of this git commit (exported with git archive), "
        "not the working tree",
    )
    parser.add_argument(
        "--bridge-root",
        type=Path,
        help="measure the bridge package found in this directory (e.g. a patched copy)",
    )
    parser.add_argument(
        "--bridge-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a config key on every bridge, e.g. broker.receive_maximum=200 "
        "(repeatable; the default config otherwise)",
    )
    parser.add_argument(
        "--hook-delay",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="the webhook receiver waits this long before each answer, as one across a "
        "network would (0: answers at once)",
    )
    parser.add_argument(
        "--window-keys",
        type=int,
        default=0,
        metavar="N",
        help="start each bridge drain with N de-duplication keys in its spool, as a bridge "
        "that has run for a while holds (0: a new spool)",
    )
    parser.add_argument(
        "--invalid-share",
        type=float,
        default=traffic.INVALID_SHARE,
        metavar="F",
        help="share of the drain traffic's envelopes that are invalid, each raising one alarm "
        f"({traffic.INVALID_SHARE}; 0 shows what the alarms cost a drain)",
    )
    parser.add_argument("--keep", action="store_true", help="keep bench/.work (logs, files)")
    parser.add_argument("--results", type=Path, default=BENCH / "results")
    args = parser.parse_args(argv)
    if args.messages is None:
        args.messages = 5_000 if args.quick else 100_000
    if args.steady_seconds is None:
        args.steady_seconds = 5.0 if args.quick else 30.0
    args.rate_list = [float(r) for r in args.rates.split(",") if r.strip()]
    args.only_set = {s.strip() for s in args.only.split(",") if s.strip()}
    for item in args.bridge_set:
        key, sep, text = item.partition("=")
        if not sep:
            parser.error(f"--bridge-set {item!r}: expected KEY=VALUE")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        scenarios.OVERRIDES[key.strip()] = value
    hook_server.DELAY = args.hook_delay
    scenarios.WINDOW_KEYS = args.window_keys
    return args


def environment() -> dict[str, Any]:
    """What the figures depend on."""

    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "?"

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
            ).stdout.strip()
        except OSError:
            return "?"

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "paho_mqtt": version("paho-mqtt"),
        "mosquitto": mosquitto_version(),
        "node": nodered.node_version(),
        "node_red": nodered.installed_version(),
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "git_dirty_bridge": bool(git("status", "--porcelain", "--", "bridge")),
    }


def compile_bridge(root: Path) -> None:
    """Compile the measured `bridge` package to bytecode, as `pip install` does.

    Otherwise a bridge started with PYTHONDONTWRITEBYTECODE=1 (set in some environments,
    and inherited) compiles every module of the package at each start, about 0.05 s of its
    start-up, while the bare subscriber's paho, installed by pip, is compiled already."""
    compileall.compile_dir(str(root / "bridge"), quiet=1)


def select_bridge(args: argparse.Namespace, work: Path) -> str:
    """Point the scenarios at the bridge to measure (its bytecode compiled); describe it."""
    described = _select_bridge(args, work)
    compile_bridge(scenarios.BRIDGE_ROOT)
    return described


def _select_bridge(args: argparse.Namespace, work: Path) -> str:
    if args.bridge_root is not None:
        root = args.bridge_root.resolve()
        if not (root / "bridge" / "__init__.py").exists():
            raise SystemExit(f"--bridge-root: no bridge package in {root}")
        scenarios.BRIDGE_ROOT = root
        return f"directory {root}"
    if args.bridge_ref:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", args.bridge_ref],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        root = work / f"bridge-{commit}"
        root.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "archive", commit, "bridge"], cwd=ROOT, capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
        scenarios.BRIDGE_ROOT = root
        return f"git {args.bridge_ref} ({commit})"
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "bridge"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return "working tree" + (" (bridge/ has uncommitted changes)" if dirty else "")


def fmt(value: float | None, digits: int = 1) -> str:
    """A number for the table, or a dash."""
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def drain_table(drains: list[Drain], limit_rate: float | None, peer: Drain | None) -> str:
    """The drain rows as Markdown."""
    rows = [
        "| consumer | msgs/s | seconds | first output s | msgs/s after first | x limit "
        "| x Node-RED | CPU µs/msg | cores used (host busy) | RSS MB | outputs | check |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    # Bulk rows compare with the bare subscriber on the same bulk backlog.
    bulk_limit = next((d.rate for d in drains if d.consumer == "bulk: bare paho subscriber"), 0)
    for d in drains:
        base = bulk_limit if d.consumer.startswith("bulk:") else limit_rate
        vs_limit = d.rate / base if base else None
        vs_peer = d.rate / peer.rate if peer and peer.rate else None
        summary = d.to_dict()
        check = d.check
        ok = "ok" if check.get("ok", True) else "LOSS/DUP " + json.dumps(check)
        if not d.finished:
            ok = f"UNFINISHED ({d.outputs}/{d.expected_outputs})"
        # A bridge with workers: its intake's RSS, then each worker's.
        parts = (
            " (" + " + ".join(f"{r:.0f}" for r in d.rss_parts_mb) + ")"
            if len(d.rss_parts_mb) > 1
            else ""
        )
        rows.append(
            f"| {d.consumer} | {fmt(d.rate, 0)} | {fmt(d.seconds)} | {fmt(d.first_output_s, 2)} "
            f"| {fmt(d.rate_after_start, 0)} | {fmt(vs_limit, 2)} | {fmt(vs_peer, 2)} "
            f"| {fmt(summary['cpu_us_per_msg'], 0)} "
            f"| {fmt(summary['consumer_cores'], 2)} ({fmt(d.host.get('host_busy_cores'), 2)}) "
            f"| {fmt(d.rss_mb)}{parts} "
            f"| {d.outputs:,} | {ok} |"
        )
    return "\n".join(rows)


def steady_table(results: list[dict[str, Any]]) -> str:
    """The steady-rate rows as Markdown."""
    rows = [
        "| rate msgs/s | seconds | sent | p50 ms | p90 ms | p99 ms | max ms | bridge CPU "
        "| RSS MB max | records seen | kept up |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        lat = r["latency_ms"]
        cpu = r["bridge_cpu_share"]
        sent = r["published"]
        lag = r["last_record_after_last_publish_s"]
        if lag is None:
            kept_up = (
                f"no: {r['records_expected'] - r['records_seen']:,} records still missing 30 s "
                "after the last publish (latencies are of those that arrived)"
            )
        elif r["sustained"]:
            kept_up = f"yes (last record {lag:.2f} s after the last publish)"
        else:
            kept_up = f"no: last record {lag:.1f} s after the last publish"
        rows.append(
            f"| {fmt(r['rate'], 0)} | {fmt(r['seconds'], 0)} "
            f"| {sent['published']:,} ({fmt(sent['achieved_rate'], 0)}/s) "
            f"| {fmt(lat['p50'])} | {fmt(lat['p90'])} | {fmt(lat['p99'])} | {fmt(lat['max'])} "
            f"| {'-' if cpu is None else f'{cpu * 100:.0f} %'} | {fmt(r['rss_mb']['max'])} "
            f"| {r['records_seen']:,} / {r['records_expected']:,} | {kept_up} |"
        )
    return "\n".join(rows)


def verdicts(
    limit_rate: float | None,
    drains: Mapping[str, Drain | None],
    steady: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Each target with the measured figure and pass / fail. `drains` by role: `bridge` (the
    default config, workers on), `one` (one process), `webhook`, `bulk` and `bulk-limit`,
    `peer` (Node-RED)."""
    out: list[dict[str, Any]] = []

    def ratio(name: str, label: str, over: float | None, target: float) -> None:
        drain = drains.get(name)
        if drain is None or not over:
            return
        value = drain.rate / over
        out.append(
            {
                "target": f"{label} >= {target:g} x",
                "measured": round(value, 3),
                "pass": value >= target and bool(drain.check.get("ok", True)),
            }
        )

    bridge, peer, bulk_limit = drains.get("bridge"), drains.get("peer"), drains.get("bulk-limit")
    ratio("one", "jsonl drain, one process, vs the bare subscriber", limit_rate,
          TARGETS["one_process_vs_limit"])  # fmt: skip
    ratio("bridge", "jsonl drain, default config (two cores), vs the bare subscriber",
          limit_rate, TARGETS["two_cores_vs_limit"])  # fmt: skip
    ratio("bridge", "jsonl drain vs Node-RED", peer.rate if peer else None, TARGETS["vs_node_red"])
    ratio("webhook", "webhook drain vs the bare subscriber", limit_rate,
          TARGETS["webhook_vs_limit"])  # fmt: skip
    ratio("bulk", "bulk (100 records per envelope) vs the bare subscriber's bulk",
          bulk_limit.rate if bulk_limit else None, TARGETS["bulk_vs_bulk_limit"])  # fmt: skip
    for r in steady:
        target = TARGETS["p99_ms"].get(int(r["rate"]))
        p99 = r["latency_ms"]["p99"]
        if target is not None and p99 is not None:
            out.append(
                {
                    "target": f"p99 <= {target:g} ms at {r['rate']:,.0f} msgs/s",
                    "measured": p99,
                    "pass": bool(r["sustained"]) and p99 <= target,
                }
            )
    if bridge and bridge.rss_mb is not None:
        out.append(
            {
                "target": f"RSS of all the bridge's processes <= 100 MB after "
                f"{bridge.messages:,} messages",
                "measured": round(bridge.rss_mb, 1),
                "pass": bridge.rss_mb <= TARGETS["rss_mb_after_drain"],
            }
        )
    return out


def alarm_drain(args: argparse.Namespace, work: Path, document: dict[str, Any]) -> int:
    """The alarm worker, one PUBACK at a time vs pipelined (bench/alarms.py)."""
    sys.path.insert(0, str(scenarios.BRIDGE_ROOT))  # --bridge-ref / --bridge-root, in-process
    import alarms  # noqa: PLC0415 - after the path: it imports the bridge measured

    result = alarms.run(work, args.alarms)
    document["alarms"] = result
    print(alarms.table(result))
    log(f"results: {write_results(args, 'alarms', document)}")
    return 0


def write_results(args: argparse.Namespace, kind: str, document: dict[str, Any]) -> Path:
    """bench/results/<UTC time>[-kind].json"""
    args.results.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    suffix = "" if kind == "full" else f"-{kind}"
    path = args.results / f"{stamp}{suffix}.json"
    path.write_text(json.dumps(document, ensure_ascii=False, indent=1) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mosquitto_binary()  # fail early and clearly
    work = BENCH / ".work"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    env = environment()
    env["bridge_source"] = select_bridge(args, work)
    env["bridge_imported_from"] = scenarios.bridge_location()
    env["bridge_config_overrides"] = dict(scenarios.OVERRIDES)
    env["window_keys"] = scenarios.WINDOW_KEYS
    env["invalid_share"] = args.invalid_share
    env["hook_delay_seconds"] = hook_server.DELAY
    log(f"bridge: {env['bridge_source']}, imported from {env['bridge_imported_from']}")
    command = "python bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    document: dict[str, Any] = {"command": command.strip(), "environment": env}
    started = time.monotonic()
    try:
        if args.soak:
            return soak(args, work, document)
        if args.profile:
            return profile(args, work, document)
        if args.alarms:
            return alarm_drain(args, work, document)
        return full(args, work, document, started)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def full(args: argparse.Namespace, work: Path, document: dict[str, Any], started: float) -> int:
    wanted = args.only_set or {
        "limit", "receiver", "mosquitto_sub", "jsonl", "jsonl-one", "bulk", "webhook",
        "mirror-sqlite", "mirror-postgresql", "node-red", "shared", "steady",
    }  # fmt: skip
    if args.skip_node_red:
        wanted.discard("node-red")
    log(f"traffic: generating {args.messages:,} envelopes ...")
    envelopes = traffic.make(args.messages, invalid_share=args.invalid_share)
    document["traffic"] = traffic.summary(envelopes)
    log(f"  {json.dumps(document['traffic'])}")
    drains: list[Drain] = []
    limit = bridge = peer = None
    if "limit" in wanted:
        log("drain (a): bare paho subscriber ...")
        limit = scenarios.drain_bare(work / "limit", envelopes, args.receive_maximum)
        drains.append(limit)
        log(f"  {limit.rate:,.0f} msgs/s")
    receiver = None
    if "receiver" in wanted:
        log("drain (a2): the bridge's own intake client, parse + ack only ...")
        receiver = scenarios.drain_intake_receiver(
            work / "receiver", envelopes, args.receive_maximum
        )
        drains.append(receiver)
        log(f"  {receiver.rate:,.0f} msgs/s")
    sub = None
    if "mosquitto_sub" in wanted:
        log("drain (a3): mosquitto_sub, the C client (the physical reference) ...")
        sub = scenarios.drain_mosquitto_sub(work / "mosquitto_sub", envelopes, args.receive_maximum)
        drains.append(sub)
        log(f"  {sub.rate:,.0f} msgs/s")
    if "jsonl" in wanted:
        log("drain (b): bridge, jsonl sink, spool on (default config) ...")
        bridge = scenarios.drain_bridge(work / "jsonl", envelopes, sink="jsonl")
        drains.append(bridge)
        log(f"  {bridge.rate:,.0f} msgs/s")
    one = None
    if "jsonl-one" in wanted:
        log("drain (b1): bridge, jsonl sink, one process (validation.workers=0) ...")
        one = one_process(lambda: scenarios.drain_bridge(work / "jsonl-one", envelopes))
        one.consumer += " (one process)"
        drains.append(one)
        log(f"  {one.rate:,.0f} msgs/s")
    bulk: dict[str, Drain] = {}
    if "bulk" in wanted:
        bulk = drain_bulk(args, work)
        drains.extend(bulk.values())
    hook = None
    if "webhook" in wanted:
        log("drain (c): bridge, webhook sink to a loopback server ...")
        hook = scenarios.drain_bridge(work / "webhook", envelopes, sink="webhook")
        drains.append(hook)
        log(f"  {hook.rate:,.0f} msgs/s")
    mirrors: dict[str, Drain] = {}
    for backend in ("sqlite", "postgresql"):
        if f"mirror-{backend}" in wanted:
            log(f"drain: bridge, mirror sink on {backend} ...")
            mirrors[backend] = scenarios.drain_bridge(
                work / f"mirror-{backend}", envelopes, sink=f"mirror-{backend}"
            )
            drains.append(mirrors[backend])
            log(f"  {mirrors[backend].rate:,.0f} msgs/s")
    if "node-red" in wanted:
        nodered.ensure_installed(log)
        log("drain (d): Node-RED flow ...")
        peer = scenarios.drain_node_red(work / "node-red", envelopes)
        drains.append(peer)
        log(f"  {peer.rate:,.0f} msgs/s")
    if "shared" in wanted:
        log("scale-out: 2 bridges in one $share group ...")
        shared = scenarios.drain_shared(work / "shared", envelopes, 2)
        drains.append(shared)
        log(f"  {shared.rate:,.0f} msgs/s")
    limit_rate = limit.rate if limit else None
    if limit is not None and len(drains) > 1:
        # The host is shared and noisy: measure the limit again after the others, and compare
        # with the mean of the two.
        log("drain (a) again: bare paho subscriber ...")
        again = scenarios.drain_bare(work / "limit-again", envelopes, args.receive_maximum)
        again.consumer += " (again, last)"
        drains.append(again)
        log(f"  {again.rate:,.0f} msgs/s")
        limit_rate = (limit.rate + again.rate) / 2
    steady_results = []
    if "steady" in wanted:
        for rate in args.rate_list:
            log(f"steady: {rate:,.0f} msgs/s for {args.steady_seconds:.0f} s ...")
            result = scenarios.steady(work / f"steady-{int(rate)}", rate, args.steady_seconds)
            steady_results.append(result)
            log(f"  p50 {result['latency_ms']['p50']} ms, p99 {result['latency_ms']['p99']} ms")
    document["drains"] = [d.to_dict() for d in drains]
    document["steady"] = steady_results
    document["limit_msgs_per_s_mean"] = None if limit_rate is None else round(limit_rate, 1)
    document["ratios"] = {
        "bridge_vs_limit": round(bridge.rate / limit_rate, 3) if bridge and limit_rate else None,
        "intake_client_vs_limit": round(receiver.rate / limit_rate, 3)
        if receiver and limit_rate
        else None,
        "bridge_one_process_vs_limit": round(one.rate / limit_rate, 3)
        if one and limit_rate
        else None,
        "mosquitto_sub_vs_limit": round(sub.rate / limit_rate, 3) if sub and limit_rate else None,
        **{
            f"bulk_{name}_vs_bulk_limit": round(d.rate / bulk["limit"].rate, 3)
            for name, d in bulk.items()
            if name != "limit" and bulk["limit"].rate
        },
        "bridge_vs_node_red": round(bridge.rate / peer.rate, 3)
        if bridge and peer and peer.rate
        else None,
        **{
            f"mirror_{backend}_vs_jsonl": round(m.rate / bridge.rate, 3)
            if bridge and bridge.rate
            else None
            for backend, m in mirrors.items()
        },
    }
    roles = {"bridge": bridge, "one": one, "webhook": hook, "peer": peer}
    roles |= {"bulk": bulk.get("jsonl"), "bulk-limit": bulk.get("limit")}
    document["targets"] = verdicts(limit_rate, roles, steady_results)
    for backend, m in mirrors.items():
        if bridge is not None and bridge.rate:
            ratio = m.rate / bridge.rate
            document["targets"].append(
                {
                    "target": f"mirror drain on {backend} >= 0.5 x jsonl sink",
                    "measured": f"{ratio:.2f} x ({m.rate:,.0f} vs {bridge.rate:,.0f} msgs/s)",
                    "pass": ratio >= 0.5 and bool(m.check.get("ok")),
                }
            )
    document["wall_seconds"] = round(time.monotonic() - started, 1)
    kind = "quick" if args.quick else "full"
    path = write_results(args, kind, document)
    print(report(document, drains, limit_rate, peer, steady_results))
    print(f"\nresults: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


def one_process(run: Callable[[], Drain]) -> Drain:
    """Run a bridge drain with the worker processes off (whatever --bridge-set says)."""
    saved = dict(scenarios.OVERRIDES)
    scenarios.OVERRIDES["validation.workers"] = 0
    try:
        return run()
    finally:
        scenarios.OVERRIDES.clear()
        scenarios.OVERRIDES.update(saved)


def drain_bulk(args: argparse.Namespace, work: Path) -> dict[str, Drain]:
    """A bulk import: envelopes of 100 records each (one per 50 messages of the run), drained
    by the bare subscriber and by the bridge (default config and one process); records/s
    ratios are msgs/s ratios, every envelope holding the same 100 records."""
    count = max(args.messages // 50, 20)
    log(f"bulk: {count:,} envelopes of 100 records ...")
    envelopes = traffic.make_bulk(count)
    limit = scenarios.drain_bare(work / "bulk-limit", envelopes, args.receive_maximum)
    limit.consumer = "bulk: bare paho subscriber"
    bridge = scenarios.drain_bridge(work / "bulk-jsonl", envelopes)
    bridge.consumer = "bulk: bridge, jsonl sink"
    one = one_process(lambda: scenarios.drain_bridge(work / "bulk-jsonl-one", envelopes))
    one.consumer = "bulk: bridge, jsonl sink (one process)"
    for drain in (limit, bridge, one):
        log(f"  {drain.consumer}: {drain.rate * 100:,.0f} records/s")
    return {"limit": limit, "jsonl": bridge, "jsonl_one": one}


def report(
    document: dict[str, Any],
    drains: list[Drain],
    limit_rate: float | None,
    peer: Drain | None,
    steady_results: list[dict[str, Any]],
) -> str:
    """The printed report: traffic, drains, steady rates, ratios, targets."""
    t = document["traffic"]
    env = document["environment"]
    lines = [
        f"## drain of {t['messages']:,} queued messages "
        f"({t['records_forwarded']:,} valid records, {t['alarms']:,} alarms, "
        f"{t['payload_bytes_mean']} B mean payload)",
        "",
        f"{env['cpus']} CPUs ({env['cpu']}), load at start {env['loadavg_at_start']}, "
        f"Python {env['python']}, {env['mosquitto']}, bridge: {env['bridge_source']}"
        + (
            f", config overrides {env['bridge_config_overrides']}"
            if env["bridge_config_overrides"]
            else ""
        )
        + (
            f", webhook receiver delay {env['hook_delay_seconds']} s"
            if env.get("hook_delay_seconds")
            else ""
        )
        + ",",
        "",
        drain_table(drains, limit_rate, peer),
        "",
        "x limit: against the mean of the limit's runs"
        + (f" ({limit_rate:,.0f} msgs/s)" if limit_rate else "")
        + "; cores used: the consumer's CPU seconds per second (host busy: every process on "
        "the host, the broker and this harness included).",
    ]
    if steady_results:
        lines += ["", "## steady rate (bridge, jsonl sink, default config)", ""]
        lines.append(steady_table(steady_results))
    if document.get("targets"):
        lines += ["", "## targets", ""]
        for v in document["targets"]:
            lines.append(f"- {'PASS' if v['pass'] else 'FAIL'}  {v['target']}: {v['measured']}")
    return "\n".join(lines)


def soak(args: argparse.Namespace, work: Path, document: dict[str, Any]) -> int:
    seconds = args.soak_minutes * 60
    log(f"soak: {args.soak_rate:,.0f} msgs/s for {args.soak_minutes:g} minutes ...")
    result = scenarios.steady(work / "soak", args.soak_rate, seconds, rss_every=5.0, label="soak")
    document["soak"] = result
    path = write_results(args, "soak", document)
    rss = result["rss_mb"]
    print("## soak\n")
    print(steady_table([result]))
    samples = rss["samples"]
    minute = [v for t, v in samples if 55 <= t <= 65]
    print(
        f"\nRSS MB: first {rss['first']}, at 1 min {minute[0] if minute else '-'}, "
        f"max {rss['max']}, final {rss['final']}, "
        f"slope after warm-up {rss['slope_mb_per_min_after_warmup']} MB/min, "
        f"growth over the second half {rss['growth_mb_second_half']} MB"
    )
    worst = sorted(result["latency_timeline"], key=lambda w: w["max"] or 0)[-5:]
    print(
        "worst 10-s windows (t s: p50 / p99 / max ms): "
        + ", ".join(
            f"{w['t']:.0f}: {w['p50']} / {w['p99']} / {w['max']}"
            for w in sorted(worst, key=lambda w: w["t"])
        )
    )
    print(f"\nresults: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


def profile(args: argparse.Namespace, work: Path, document: dict[str, Any]) -> int:
    envelopes = traffic.make(args.messages, invalid_share=args.invalid_share)
    document["traffic"] = traffic.summary(envelopes)
    raw = work / "py-spy.txt"
    profiler = spy.Profiler(raw)
    log(f"profiled drain of {args.messages:,} messages (py-spy attached) ...")
    drain = scenarios.drain_bridge(
        work / "profiled",
        envelopes,
        sink=args.profile_sink,
        label=f"bridge, {args.profile_sink} (under py-spy)",
        profiler=profiler,
    )
    summary = spy.summarise(raw)
    document["drain"] = drain.to_dict()
    document["profile"] = summary
    args.results.mkdir(parents=True, exist_ok=True)
    path = write_results(args, "profile", document)
    text = spy.render(summary)
    print(f"## profile of a drain ({drain.rate:,.0f} msgs/s under py-spy)\n")
    print(text)
    stacks = path.with_suffix(".stacks.tmp")  # large: bench/.gitignore keeps it out of git
    shutil.copyfile(raw, stacks)
    shown = [p.relative_to(ROOT) if p.is_relative_to(ROOT) else p for p in (path, stacks)]
    print(f"\nresults: {shown[0]}, collapsed stacks: {shown[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
