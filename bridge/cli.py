"""Command line: run | check-config | validate | demo. `main(argv)` returns the exit status."""

from __future__ import annotations

import argparse
import base64
import faulthandler
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bridge import __version__, config, logs, masking
from bridge.errors import BridgeError, BrokerError, ConfigError
from bridge.pipeline import Disposition, Pipeline
from bridge.sinks import SinkContext, build_sinks
from bridge.spool import DeadLetter, Spool, SpoolError
from bridge.topics import Selection
from bridge.validate import Mode, Rules

EXIT_OK = 0
EXIT_ALARM = 1
EXIT_USAGE = 2
EXIT_SOFTWARE = 70  # sysexits EX_SOFTWARE
EXIT_CANTCREAT = 73  # sysexits EX_CANTCREAT: the spool cannot be opened or written
EXIT_CONFIG = 78  # sysexits EX_CONFIG; the unit file's RestartPreventExitStatus


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bridge", description="Customer event bridge: MQTT in, validated records out."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the bridge until SIGTERM / SIGINT")
    run.add_argument("-c", "--config", type=Path, required=True, help="YAML config file")

    check = commands.add_parser("check-config", help="validate a config file and print it")
    check.add_argument("-c", "--config", type=Path, required=True, help="YAML config file")

    validate = commands.add_parser(
        "validate", help="validate one payload offline and print what the bridge would do"
    )
    validate.add_argument("--topic", required=True, help="the inbound topic it arrived on")
    validate.add_argument("--strict", action="store_true", help="strict validation")
    validate.add_argument("--timezone", default="Asia/Shanghai", help="for date-time eventTs")
    validate.add_argument("file", nargs="?", default="-", help="payload file, or - for stdin")
    validate.add_argument(
        "--reveal", action="store_true", help="show personal data in clear (it is printed!)"
    )

    dead = commands.add_parser(
        "dead-letters", help="list, show, replay or purge what sinks gave up on"
    )
    dead.add_argument("-c", "--config", type=Path, required=True, help="YAML config file")
    actions = dead.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="one JSON line per dead letter (no record content)")
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--after", type=int, default=0, help="only ids above this")
    show = actions.add_parser("show", help="one dead letter with its content (masked)")
    show.add_argument("id", type=int)
    show.add_argument(
        "--reveal", action="store_true", help="show personal data in clear (it is printed!)"
    )
    for name, text in (("replay", "put back in the outbox"), ("purge", "delete for good")):
        action = actions.add_parser(name, help=text)
        which = action.add_mutually_exclusive_group(required=True)
        which.add_argument("ids", type=int, nargs="*", default=[], help="dead letter ids")
        which.add_argument("--all", action="store_true", help="every dead letter")
        if name == "replay":
            action.add_argument(
                "--skip-superseded",
                action="store_true",
                help="delete, instead of replaying, letters a later event of the same"
                " customer has already overtaken at their sink",
            )

    mirror = commands.add_parser("mirror", help="look at a mirror sink's table without SQL")
    views = mirror.add_subparsers(dest="action", required=True)
    look = views.add_parser("show", help="one customer's row (personal data masked)")
    look.add_argument("tenant")
    look.add_argument("project")
    look.add_argument("id")
    look.add_argument(
        "--reveal", action="store_true", help="show personal data in clear (it is printed!)"
    )
    counts = views.add_parser("stats", help="rows, tombstones and stale events skipped")
    for view in (look, counts):
        view.add_argument("-c", "--config", type=Path, required=True, help="YAML config file")
        view.add_argument("--sink", help="the mirror sink's name (when there are several)")

    demo = commands.add_parser(
        "demo", help="run the bridge on the embedded broker and feed it sample traffic"
    )
    demo.add_argument("--port", type=int, default=0, help="embedded broker port (0: any free)")
    demo.add_argument("--rounds", type=int, default=0, help="rounds of traffic (0: until Ctrl-C)")
    demo.add_argument("--interval", type=float, default=5.0, help="seconds between rounds")
    demo.add_argument("--out", type=Path, default=Path("out"), help="where the jsonl file goes")
    demo.add_argument(
        "--platforms",
        action="store_true",
        help="also report to local stand-ins of Quick Audience (3.0, 2.0) and the mobile API",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `bridge` console script."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args.config)
        if args.command == "check-config":
            return _check_config(args.config)
        if args.command == "validate":
            return _validate(args.topic, args.file, args.strict, args.timezone, args.reveal)
        if args.command == "dead-letters":
            return _dead_letters(args)
        if args.command == "mirror":
            from bridge.sinks.mirror_cli import mirror_command  # noqa: PLC0415 - its own room

            return mirror_command(config.load(args.config), args)
        from bridge.demo import run_demo  # noqa: PLC0415 - only the demo needs paho's test client

        return run_demo(
            port=args.port,
            rounds=args.rounds,
            interval=args.interval,
            out=args.out,
            platforms=args.platforms,
        )
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except SpoolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CANTCREAT
    except BridgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_SOFTWARE


def _run(path: Path) -> int:
    from bridge.runtime import Bridge  # noqa: PLC0415 - keeps `validate` free of paho

    cfg = config.load(path)
    level = os.environ.get("BRIDGE_LOG_LEVEL", cfg.logging.level).lower()
    if level not in logs.LEVELS:
        raise ConfigError("BRIDGE_LOG_LEVEL", f"one of {sorted(logs.LEVELS)}")
    logs.configure(level, cfg.logging.format, redact_personal=cfg.logging.redact)
    # systemd's watchdog kills with SIGABRT: every thread's stack then lands in the journal.
    faulthandler.enable()
    return Bridge(cfg, logs.get_logger()).run(path)


def _no_publish(_topic: str, _payload: bytes, _qos: int, _retain: bool) -> None:
    raise BrokerError("check-config does not connect to the broker")


def _check_config(path: Path) -> int:
    cfg = config.load(path)
    # Build the sinks as `run` would (an operator's handler class is imported and made).
    context = SinkContext(publish=_no_publish, logger=logs.get_logger())
    for sink in build_sinks(cfg.sinks, context):
        sink.close()
    shown = cfg.model_dump(mode="json")
    broker = shown["broker"]
    if broker.get("password") is not None:
        broker["password"] = "***"  # noqa: S105 - the mask, not a password
    print(json.dumps(shown, indent=2, ensure_ascii=False))
    print(f"{path}: ok; subscribes {cfg.subscription.selection().filters()}", file=sys.stderr)
    return EXIT_OK


def _dead_letters(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    spool = Spool(cfg.spool.path, synchronous=cfg.spool.synchronous)
    try:
        if args.action == "list":
            for letter in spool.dead_letters(limit=args.limit, after=args.after):
                print(json.dumps(_describe(letter), ensure_ascii=False))
            return EXIT_OK
        if args.action == "show":
            found = spool.dead_letter(args.id)
            if found is None:
                print(f"no dead letter {args.id}", file=sys.stderr)
                return EXIT_USAGE
            shown = _describe(found)
            try:
                content = json.loads(found.body)
                shown["content"] = content if args.reveal else masking.redact(content)
            except ValueError:
                if args.reveal:
                    shown["content_base64"] = base64.b64encode(found.body).decode()
                else:
                    shown["content_masked"] = masking.mask_text(found.body.decode(errors="replace"))
            print(json.dumps(shown, ensure_ascii=False, indent=2))
            return EXIT_OK
        ids = None if args.all else list(args.ids)
        if args.action == "replay":
            return _replay(spool, ids, skip=args.skip_superseded)
        else:
            print(f"purged {spool.purge(ids)}")
        return EXIT_OK
    finally:
        spool.close()


def _replay(spool: Spool, ids: list[int] | None, *, skip: bool) -> int:
    done = spool.replay_in_order(ids, skip_overtaken=skip)
    print(f"replayed {done.replayed} in arrival order (unreadable payloads cannot be replayed)")
    if done.overtaken:
        # A replayed stale event may overwrite a newer one downstream: say which, by id.
        what = "dropped" if skip else "replayed although"
        print(
            f"{what} {len(done.overtaken)} overtaken by a later event of the same customer"
            f" at their sink: {' '.join(str(i) for i in done.overtaken)}"
        )
    return EXIT_OK


def _describe(letter: DeadLetter) -> dict[str, Any]:
    return {
        "id": letter.id,
        "sink": letter.target,
        "kind": letter.kind,
        "reason": masking.mask_text(letter.reason),  # a sink's answer may quote a record
        "topic": letter.topic,
        "msgId": letter.msg_id,
        "attempts": letter.attempts,
        "created": datetime.fromtimestamp(letter.created, UTC).isoformat(),
        "bytes": len(letter.body),
        # tenant/project/customer id: the key the sink orders by (an id, not personal data)
        "customer": letter.okey.replace("\x1f", "/") or None,
        "arrival": letter.seq,
        "overtaken": letter.overtaken_at is not None,
        **_payload_fields(letter),
    }


def _payload_fields(letter: DeadLetter) -> dict[str, Any]:
    if letter.kind != "payload":
        return {}
    return {
        "kept": "metadata" if letter.metadata_only else "raw",
        "size": letter.size,
        "sha256": letter.digest,
    }


def _validate(topic: str, source: str, strict: bool, timezone: str, reveal: bool = False) -> int:
    try:
        payload = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as exc:
        print(f"cannot read {source}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    try:
        rules = Rules(mode=Mode.STRICT if strict else Mode.LENIENT, timezone=timezone)
    except (KeyError, ValueError):
        print(f"unknown time zone {timezone!r}", file=sys.stderr)
        return EXIT_USAGE
    outcome = Pipeline(rules, Selection()).process(topic, payload)
    if outcome.disposition is not Disposition.PROCESSED:
        print(f"{topic!r} is not an inbound customer topic", file=sys.stderr)
        return EXIT_USAGE
    result: dict[str, Any] = {
        "forward": [event.to_dict() for event in outcome.forward],
        "alarms": [alarm.to_dict() for alarm in outcome.alarms],
    }
    shown = result if reveal else masking.redact(result)
    print(json.dumps(shown, ensure_ascii=False, indent=2))
    return EXIT_ALARM if outcome.alarms else EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
