"""A batch of digests -> what the spool stores, what goes straight to a sink, what is a repeat.

Pure: the intake asks the spool which de-duplication keys it has already seen and which
local sinks are caught up, then calls `plan`, stores what it returns in one transaction,
and acknowledges the batch in receive order.
"""

from __future__ import annotations

from collections.abc import Sequence, Set
from dataclasses import dataclass, field

from bridge.core.digest import Digest, Forward
from bridge.core.outbox import NewRow, alarm_outbox_row
from bridge.core.routes import Route


@dataclass(frozen=True, slots=True)
class Destination:
    """A sink by name with the route that feeds it, in config order."""

    name: str
    route: Route


@dataclass
class Plan:
    """What one batch turns into.

    `direct` holds, per caught-up local sink, the records to hand over before the commit;
    `duplicates` the positions of messages already stored once.
    """

    rows: list[NewRow] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    raws: list[tuple[str, bytes, str]] = field(default_factory=list)
    direct: dict[str, list[Forward]] = field(default_factory=dict)
    duplicates: set[int] = field(default_factory=set)

    @property
    def writes(self) -> bool:
        """Whether the spool has anything to store for this batch."""
        return bool(self.rows or self.keys or self.raws)


def plan(
    batch: Sequence[Digest],
    payloads: Sequence[bytes],
    seen: Set[str],
    destinations: Sequence[Destination],
    caught_up: Set[str],
) -> Plan:
    """Plan a batch (`payloads[i]` is the payload of `batch[i]`): `seen` are the keys the
    spool already holds, `caught_up` the local sinks that may take records directly."""
    result = Plan(direct={d.name: [] for d in destinations if d.name in caught_up})
    known = set(seen)
    rows = result.rows
    # Where every route takes everything (the usual config), a message's records go to each
    # sink whole, without a match per record and sink; each sink's order is the same.
    wholesale = (
        [(d.name, result.direct.get(d.name)) for d in destinations]
        if all(d.route.everything for d in destinations)
        else []
    )
    for index, item in enumerate(batch):
        if item.raw is not None and item.key is None:
            # Our own bug, or a topic SPEC 1 refuses: kept raw rather than dropped.
            result.raws.append((item.topic, payloads[index], item.raw))
            continue
        key = item.key
        if key is None:
            continue
        if key in known:
            result.duplicates.add(index)
            continue
        known.add(key)
        result.keys.append(key)
        if wholesale:
            for name, whole in wholesale:
                if whole is not None:
                    whole.extend(item.forward)
                else:
                    rows.extend(NewRow(name, r.okey, r.body) for r in item.forward)
        else:
            for record in item.forward:
                for destination in destinations:
                    if not destination.route.matches(record):
                        continue
                    direct = result.direct.get(destination.name)
                    if direct is not None:
                        direct.append(record)
                    else:
                        rows.append(NewRow(destination.name, record.okey, record.body))
        rows.extend(alarm_outbox_row(body) for body in item.alarm_bodies)
        if item.raw is not None:
            result.raws.append((item.topic, payloads[index], item.raw))
    return result
