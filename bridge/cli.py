"""Command line of `customer-bridge` (also `python -m bridge`); `main(argv)` returns the status."""

from __future__ import annotations

import argparse
import base64
import faulthandler
import json
import os
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bridge import config, logs, version
from bridge.core import masking
from bridge.core.pipeline import Disposition, Pipeline
from bridge.core.topics import Selection
from bridge.core.validate import Mode, Rules
from bridge.errors import BridgeError, BrokerError, ConfigError, UnavailableError
from bridge.intake.workers import start_workers
from bridge.memory import fix_mmap_threshold
from bridge.sinks import SinkContext, build_sinks
from bridge.spool import DeadLetter, Spool, SpoolError

PROG = "customer-bridge"
EXIT_OK = 0
EXIT_ALARM = 1
EXIT_USAGE = 2  # also: a dead letter id that does not exist
EXIT_NOINPUT = 66  # sysexits EX_NOINPUT: the spool file named in the config does not exist
EXIT_UNAVAILABLE = 69  # sysexits EX_UNAVAILABLE: the health port is taken
EXIT_SOFTWARE = 70  # sysexits EX_SOFTWARE
EXIT_CANTCREAT = 73  # sysexits EX_CANTCREAT: the spool cannot be opened or written
EXIT_CONFIG = 78  # sysexits EX_CONFIG; the unit file's RestartPreventExitStatus
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C

# Commands that only print: a closed pipe (`| head`) ends them quietly, as it ends `cat`.
_PRINTING = frozenset({"check-config", "validate", "dead-letters", "mirror", "completion"})


SHELLS = ("bash", "zsh", "tcsh", "fish", "powershell")
"""The shells `completion` writes a script for (shtab's)."""


def _config_option(parser: argparse.ArgumentParser, files: object) -> None:
    # SUPPRESS: the option may be given at either level of `dead-letters -c F list -c F` and a
    # nested parser's default must not overwrite what the outer one parsed; main() checks it.
    option = parser.add_argument(
        "-c", "--config", type=Path, default=argparse.SUPPRESS, help="YAML config file (required)"
    )
    _complete_files(option, files)


def _complete_files(option: argparse.Action, files: object) -> None:
    """Mark an argument as a file name for the completion script (`files` is shtab's FILE;
    None when the parser is not built for one: shtab is imported by `completion` only)."""
    if files is not None:
        option.complete = files  # type: ignore[attr-defined]


class _Version(argparse.Action):
    """--version, asking git (in a checkout) only when it is given."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *_args: object) -> None:
        print(version.describe(PROG))
        parser.exit()


def _parser(files: object = None) -> argparse.ArgumentParser:
    """The command line; `files` (shtab's FILE) marks the file arguments for completion."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Customer event bridge: MQTT in, validated records out."
    )
    parser.add_argument(
        "--version",
        action=_Version,
        help="print the version and the git commit it was built from, then exit",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the bridge until SIGTERM / SIGINT")
    _config_option(run, files)

    check = commands.add_parser("check-config", help="validate a config file and print it")
    _config_option(check, files)

    validate = commands.add_parser(
        "validate", help="validate one payload offline and print what the bridge would do"
    )
    validate.add_argument("--topic", required=True, help="the inbound topic it arrived on")
    validate.add_argument("--strict", action="store_true", help="strict validation")
    validate.add_argument("--timezone", default="Asia/Shanghai", help="for date-time eventTs")
    payload = validate.add_argument(
        "file", nargs="?", default="-", help="payload file, or - for stdin"
    )
    _complete_files(payload, files)
    validate.add_argument(
        "--reveal", action="store_true", help="show personal data in clear (it is printed!)"
    )

    dead = commands.add_parser(
        "dead-letters", help="list, show, replay or purge what sinks gave up on"
    )
    _config_option(dead, files)
    actions = dead.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="one JSON line per dead letter (no record content)")
    listing.add_argument(
        "--limit",
        type=int,
        default=100,
        help="at most this many (default 100; 0 for all); stderr says when more are left",
    )
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
    for action in actions.choices.values():
        _config_option(action, files)

    mirror = commands.add_parser("mirror", help="look at a mirror sink's table without SQL")
    views = mirror.add_subparsers(dest="action", required=True, metavar="ACTION")
    look = views.add_parser("show", help="one customer's row (personal data masked)")
    look.add_argument("tenant")
    look.add_argument("project")
    look.add_argument("id")
    look.add_argument(
        "--reveal", action="store_true", help="show personal data in clear (it is printed!)"
    )
    counts = views.add_parser("stats", help="rows, tombstones and stale events skipped")
    for view in (look, counts):
        _config_option(view, files)
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

    completion = commands.add_parser(
        "completion",
        help="print a shell completion script",
        description="Print a completion script, e.g. `customer-bridge completion bash >"
        " /etc/bash_completion.d/customer-bridge`.",
    )
    completion.add_argument("shell", choices=SHELLS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `customer-bridge` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    needs_config = args.command in {"run", "check-config", "dead-letters", "mirror"}
    if needs_config and getattr(args, "config", None) is None:
        parser.error(f"{args.command}: the following arguments are required: -c/--config")
    if args.command in _PRINTING and hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
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
        if args.command == "completion":
            import shtab  # noqa: PLC0415 - a tenth of the start-up imports, for this command only

            print(shtab.complete(_parser(shtab.FILE), shell=args.shell), end="")
            return EXIT_OK
        return _demo(args)
    except ConfigError as exc:
        _fail(f"config error: {exc}")
        return EXIT_CONFIG
    except SpoolError as exc:
        _fail(f"error: {exc}")
        return EXIT_CANTCREAT
    except UnavailableError as exc:
        _fail(f"error: {exc}")
        return EXIT_UNAVAILABLE
    except BridgeError as exc:
        _fail(f"error: {exc}")
        return EXIT_SOFTWARE


def _fail(text: str) -> None:
    # Under systemd stderr is the journal stream too: mark the reason the service stops as an
    # error, so `journalctl -p err` shows it next to the log's own errors.
    prefix = f"<{logs.PRIORITIES['error']}>" if logs.connected_to_journald(sys.stderr) else ""
    print(prefix + text, file=sys.stderr)


def _demo(args: argparse.Namespace) -> int:
    from bridge.demo import run_demo  # noqa: PLC0415 - only the demo needs amqtt and paho

    try:
        return run_demo(
            port=args.port,
            rounds=args.rounds,
            interval=args.interval,
            out=args.out,
            platforms=args.platforms,
        )
    except KeyboardInterrupt:
        # A second Ctrl-C while the first one drains: stop now, without a traceback.
        print("\ninterrupted again: stopped without draining", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `demo | head`: the reader left; nothing more to show.
        _silence_stdout()
        return EXIT_OK


def _silence_stdout() -> None:
    # Python flushes stdout once more at exit: point it at /dev/null so that flush is quiet.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _run(path: Path) -> int:
    fix_mmap_threshold()  # before the spool, the workers and the first messages
    cfg = config.load(path)
    level = os.environ.get("BRIDGE_LOG_LEVEL", cfg.logging.level).lower()
    if level not in logs.LEVELS:
        raise ConfigError("BRIDGE_LOG_LEVEL", f"one of {sorted(logs.LEVELS)}")
    logs.configure(level, cfg.logging.format, redact_personal=cfg.logging.redact)
    # The workers load the core (about 70 ms) while this process imports the runtime and
    # opens the spool, instead of the start waiting for them afterwards.
    pool = start_workers(cfg)
    try:
        from bridge.runtime import Bridge  # noqa: PLC0415 - keeps `validate` free of paho

        bridge = Bridge(cfg, logs.get_logger(), pool=pool)
    except BaseException:
        if pool is not None:
            pool.close()
        raise
    # systemd's watchdog kills with SIGABRT: every thread's stack then lands in the journal.
    faulthandler.enable()
    return bridge.run(path)


def _no_publish(_topic: str, _payload: bytes, _qos: int, _retain: bool) -> None:
    raise BrokerError("check-config does not connect to the broker")


def _check_config(path: Path) -> int:
    cfg = config.load(path)
    # Build the sinks as `run` would (an operator's handler class is imported and made).
    context = SinkContext(publish=_no_publish, logger=logs.get_logger())
    for sink in build_sinks(cfg.sinks, context):
        sink.close()
    # Secrets, header values and URL credentials dump as `***` (bridge.secrets).
    print(json.dumps(cfg.model_dump(mode="json"), indent=2, ensure_ascii=False))
    print(f"{path}: ok; subscribes {cfg.subscription.selection().filters()}", file=sys.stderr)
    return EXIT_OK


def _dead_letters(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    # Opening a spool creates it: a mistyped spool.path must not leave an empty one behind.
    if not cfg.spool.path.exists():
        print(
            f"no spool at {cfg.spool.path} (spool.path in {args.config}): nothing to look at",
            file=sys.stderr,
        )
        return EXIT_NOINPUT
    spool = Spool(cfg.spool.path, synchronous=cfg.spool.synchronous)
    try:
        if args.action == "list":
            return _list(spool, args.limit, args.after)
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
        # Like `show`: an id that does not exist is an error (exit 2), named on stderr; the
        # ids that do exist are still acted on, as `rm a b` removes `a` when `b` is missing.
        missing = [] if ids is None else [i for i in ids if spool.dead_letter(i) is None]
        if ids is not None:
            ids = [i for i in ids if i not in missing]
        if ids is None or ids:
            if args.action == "replay":
                _replay(spool, ids, skip=args.skip_superseded)
            else:
                print(f"purged {spool.purge(ids)}")
        for letter_id in missing:
            print(f"no dead letter {letter_id}", file=sys.stderr)
        return EXIT_USAGE if missing else EXIT_OK
    finally:
        spool.close()


def _list(spool: Spool, limit: int, after: int) -> int:
    if limit < 0:
        print("--limit must be 0 (all) or more", file=sys.stderr)
        return EXIT_USAGE
    last = after
    page = 1000 if limit == 0 else limit
    shown = 0
    while True:
        letters = spool.dead_letters(limit=page, after=last)
        for letter in letters:
            print(json.dumps(_describe(letter), ensure_ascii=False))
        shown += len(letters)
        if letters:
            last = letters[-1].id
        if len(letters) < page or limit != 0:
            break
    if limit and shown == limit and spool.dead_letters(limit=1, after=last):
        print(
            f"listed the first {limit}; more after id {last}: --after {last} for the next,"
            " --limit 0 for all",
            file=sys.stderr,
        )
    return EXIT_OK


def _replay(spool: Spool, ids: list[int] | None, *, skip: bool) -> None:
    done = spool.replay_in_order(ids, skip_overtaken=skip)
    print(f"replayed {done.replayed} in arrival order (unreadable payloads cannot be replayed)")
    if done.overtaken:
        # A replayed stale event may overwrite a newer one downstream: say which, by id.
        what = "dropped" if skip else "replayed although"
        print(
            f"{what} {len(done.overtaken)} overtaken by a later event of the same customer"
            f" at their sink: {' '.join(str(i) for i in done.overtaken)}"
        )


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
