"""Which events a sink receives: its route, and what a route looks at (pure)."""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel, ConfigDict

from bridge.core.records import Op
from bridge.core.topics import TopicKind


class Routable(Protocol):
    """What a route looks at: a `DownstreamEvent`, or a record digested for the intake."""

    @property
    def op(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def tenant(self) -> str: ...
    @property
    def project_id(self) -> str: ...
    @property
    def vendor(self) -> str | None: ...


class Route(BaseModel):
    """Which events a sink receives; an absent list means any."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ops: tuple[Op, ...] | None = None
    tenants: tuple[str, ...] | None = None
    projects: tuple[str, ...] | None = None
    kinds: tuple[TopicKind, ...] | None = None
    vendors: tuple[str, ...] | None = None

    @property
    def everything(self) -> bool:
        """Whether this route lets every event through (no list given)."""
        return (
            self.ops is None
            and self.tenants is None
            and self.projects is None
            and self.kinds is None
            and self.vendors is None
        )

    def matches(self, event: Routable) -> bool:
        """Whether this route lets `event` through."""
        return (
            (self.ops is None or event.op in self.ops)
            and (self.tenants is None or event.tenant in self.tenants)
            and (self.projects is None or event.project_id in self.projects)
            and (self.kinds is None or event.kind in self.kinds)
            and (self.vendors is None or event.vendor in self.vendors)
        )
