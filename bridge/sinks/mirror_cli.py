"""`mirror show` and `mirror stats`: an operator looks at a mirror table without writing SQL."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Any

from bridge import logs
from bridge.config import Config
from bridge.core import masking
from bridge.errors import BridgeError, ConfigError, SinkError
from bridge.sinks.mirror import MirrorConfig, MirrorSink
from bridge.sinks.mirror_sql import SchemaTooNew

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2

# SPEC 8: masked in any output, unless the operator asks for them in clear.
MASKED_COLUMNS = frozenset(
    {"name", "contract_name", "phone", "contract_phone", "id_number", "email", "address"}
    | {"born_date"}
)
HIDDEN_COLUMNS = frozenset({"face_photo"})


def _mirrors(cfg: Config, wanted: str | None) -> list[tuple[str, MirrorConfig]]:
    found = []
    for sink in cfg.sinks:
        if isinstance(sink, MirrorConfig):
            name = sink.name or f"mirror:{sink.table}"
            if wanted is None or wanted == name:
                found.append((name, sink))
    if not found:
        which = f"named {wanted!r}" if wanted else "at all"
        raise ConfigError("sinks", f"no mirror sink {which}")
    return found


def _open(name: str, sink: MirrorConfig) -> MirrorSink:
    try:
        mirror = MirrorSink(name, sink.connector(), sink.table)
        mirror.connect()
    except SchemaTooNew as exc:
        raise ConfigError(f"{name}.table", str(exc)) from None
    except SinkError as exc:
        raise BridgeError(str(exc)) from None
    return mirror


def masked(row: dict[str, Any]) -> dict[str, Any]:
    """A row as `mirror show` prints it by default: personal columns masked, the photo hidden."""
    shown: dict[str, Any] = {}
    for column, value in row.items():
        if value is None:
            shown[column] = None
        elif column in HIDDEN_COLUMNS:
            shown[column] = "(hidden)"
        elif column in MASKED_COLUMNS:
            shown[column] = logs.mask(value)
        elif column in {"extra", "meta"}:
            shown[column] = logs.redact(value)
        else:  # a phone in `remark` or `space_ids` is masked where it stands
            shown[column] = masking.redact_field(column, value)
    return shown


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


def mirror_command(cfg: Config, args: argparse.Namespace) -> int:
    """Run `mirror show` or `mirror stats`; the exit status."""
    chosen = _mirrors(cfg, args.sink)
    if args.action == "stats":
        for name, sink in chosen:
            mirror = _open(name, sink)
            try:
                counted = mirror.connect().stats()
            finally:
                mirror.close()
            print(json.dumps({"sink": name, "table": sink.table, **counted}, ensure_ascii=False))
        return EXIT_OK
    if len(chosen) > 1:
        names = ", ".join(name for name, _ in chosen)
        print(f"several mirror sinks ({names}): pick one with --sink", file=sys.stderr)
        return EXIT_USAGE
    name, sink = chosen[0]
    mirror = _open(name, sink)
    try:
        key = (args.tenant, args.project, args.id)
        row = mirror.connect().read([key]).get(key)
    finally:
        mirror.close()
    if row is None:
        print(f"no customer {args.id!r} in {args.tenant}/{args.project}", file=sys.stderr)
        return EXIT_NOT_FOUND
    shown = _plain(row if args.reveal else masked(row))
    print(json.dumps(shown, ensure_ascii=False, indent=2))
    return EXIT_OK
