"""Customer event topics: parse one, derive its error topic, build subscription filters (pure).

Topic shapes (SPEC 1)::

    {tenant}/proj_{projectId}/v1-business-model-customer                       standard
    {tenant}/proj_{projectId}/v1-business-model-error-customer                 standard error
    {tenant}/proj_{projectId}/{version}-customization-{vendor}-customer        customization
    {tenant}/proj_{projectId}/{version}-customization-{vendor}-error-customer  customization error
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

ANY = "+"
STANDARD_LEAF = "v1-business-model-customer"
STANDARD_ERROR_LEAF = "v1-business-model-error-customer"
_CUSTOM_LEAF = re.compile(r"(v[0-9]+)-customization-(.+)-customer", re.DOTALL)
_VERSION = re.compile(r"v[0-9]+")
_PROJECT_PREFIX = "proj_"
_SHARE_GROUP = re.compile(r"[A-Za-z0-9_.-]+")


class TopicKind(StrEnum):
    """Which family of inbound topic a message came on."""

    STANDARD = "standard"
    CUSTOMIZATION = "customization"


class TopicRole(StrEnum):
    """What the bridge does with a topic: take it as input, or leave it alone."""

    INBOUND = "inbound"
    ERROR = "error"
    UNRECOGNISED = "unrecognised"
    REFUSED = "refused"
    """An inbound topic holding a control character or noncharacter: kept, never processed."""


def _refused_characters() -> re.Pattern[str]:
    # C0 and C1 controls (DEL included), the 66 noncharacters, and surrogates (which no
    # UTF-8 topic can hold, but a str can).
    planes = "".join(f"{chr(p * 0x10000 + 0xFFFE)}{chr(p * 0x10000 + 0xFFFF)}" for p in range(17))
    return re.compile(f"[\x00-\x1f\x7f-\x9f\ufdd0-\ufdef\ud800-\udfff{planes}]")


_REFUSED = _refused_characters()


def escape(topic: str) -> str:
    """A topic fit for a log line: refused characters written as `\\xNN` or `\\uNNNN`."""
    return _REFUSED.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), topic)


def _in_grammar(segment: str) -> bool:
    # The grammar's own rule (SPEC 1): one or more characters other than / + # (and NUL,
    # which is also a control character, refused rather than ignored).
    return bool(segment) and "/" not in segment and "+" not in segment and "#" not in segment


def is_safe_segment(segment: str) -> bool:
    """A topic segment we may echo into a published topic: in the grammar, no refused character.

    Everything else is fine: letters of any script, format characters (soft hyphen, the
    joiner of emoji sequences), private-use and unassigned code points; the answer does not
    depend on the interpreter's Unicode tables.
    """
    return _in_grammar(segment) and _REFUSED.search(segment) is None


def is_valid_vendor(vendor: str) -> bool:
    """A vendor name the bridge accepts in config and on the wire (SPEC 1)."""
    # "error" itself would make the leaf end in "-error-customer", an error topic.
    return is_safe_segment(vendor) and not f"-{vendor}".endswith("-error")


def topic_of(
    tenant: str, project_id: str, version: str | None, vendor: str | None, *, error: bool = False
) -> str:
    """The topic of these parts: standard when `vendor` is None, customization otherwise;
    its error topic with `error`. The one place a topic is spelled out."""
    suffix = "error-customer" if error else "customer"
    project = f"{tenant}/{_PROJECT_PREFIX}{project_id}"
    if vendor is None:
        return f"{project}/v1-business-model-{suffix}"
    return f"{project}/{version}-customization-{vendor}-{suffix}"


@dataclass(frozen=True, slots=True)
class InboundTopic:
    """A parsed inbound customer topic; only ever built from a topic that passed `parse`."""

    topic: str
    kind: TopicKind
    tenant: str
    project_id: str
    version: str | None = None
    vendor: str | None = None

    @property
    def customization(self) -> bool:
        """True for a customization topic."""
        return self.kind is TopicKind.CUSTOMIZATION

    @property
    def error_topic(self) -> str:
        """The topic this message's alarms go to: `error-` inserted before the final `customer`."""
        return topic_of(self.tenant, self.project_id, self.version, self.vendor, error=True)


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    """The role of a topic, and its parts when it is an inbound one."""

    role: TopicRole
    inbound: InboundTopic | None = None


_UNRECOGNISED = ParsedTopic(TopicRole.UNRECOGNISED)
_ERROR = ParsedTopic(TopicRole.ERROR)


def parse(topic: str) -> ParsedTopic:
    """Classify a topic and split an inbound one into its parts.

    An inbound topic holding a refused character is REFUSED, with its parts, so the
    selection still applies to it; an error topic stays an error topic whatever it holds.
    """
    parts = topic.split("/")
    if len(parts) != 3:
        return _UNRECOGNISED
    tenant, project, leaf = parts
    if not (_in_grammar(tenant) and _in_grammar(leaf)):
        return _UNRECOGNISED
    if not project.startswith(_PROJECT_PREFIX) or not _in_grammar(project):
        return _UNRECOGNISED
    project_id = project[len(_PROJECT_PREFIX) :]
    if not project_id:
        return _UNRECOGNISED
    if leaf == STANDARD_LEAF:
        inbound = InboundTopic(topic, TopicKind.STANDARD, tenant, project_id)
    elif leaf == STANDARD_ERROR_LEAF:
        return _ERROR
    else:
        match = _CUSTOM_LEAF.fullmatch(leaf)
        if match is None:
            return _UNRECOGNISED
        version, vendor = match.group(1), match.group(2)
        if f"-{vendor}".endswith("-error"):
            return _ERROR
        inbound = InboundTopic(topic, TopicKind.CUSTOMIZATION, tenant, project_id, version, vendor)
    if _REFUSED.search(topic) is not None:
        return ParsedTopic(TopicRole.REFUSED, inbound)
    return ParsedTopic(TopicRole.INBOUND, inbound)


def error_topic(topic: str) -> str:
    """The error topic of an inbound topic; ValueError for anything else."""
    parsed = parse(topic)
    if parsed.inbound is None or parsed.role is not TopicRole.INBOUND:
        raise ValueError(f"not an inbound customer topic ({parsed.role})")
    return parsed.inbound.error_topic


@dataclass(frozen=True, slots=True)
class Selection:
    """Which tenants, projects, versions and vendors to take; `+` in a list means any."""

    tenants: tuple[str, ...] = (ANY,)
    projects: tuple[str, ...] = (ANY,)
    standard: bool = True
    customization: bool = True
    versions: tuple[str, ...] = (ANY,)
    vendors: tuple[str, ...] = (ANY,)
    share_group: str | None = None

    def __post_init__(self) -> None:
        check_segments("tenants", self.tenants)
        check_segments("projects", self.projects)
        check_segments("versions", self.versions)
        check_segments("vendors", self.vendors)
        if not (self.standard or self.customization):
            raise ValueError("at least one of standard and customization must be on")
        if self.share_group is not None:
            check_share_group(self.share_group)

    def accepts(self, inbound: InboundTopic) -> bool:
        """Whether a parsed inbound topic is one this selection takes."""
        if not (
            _matches(self.tenants, inbound.tenant) and _matches(self.projects, inbound.project_id)
        ):
            return False
        if inbound.kind is TopicKind.STANDARD:
            return self.standard
        return (
            self.customization
            and _matches(self.versions, inbound.version or "")
            and _matches(self.vendors, inbound.vendor or "")
        )

    def filters(self) -> list[str]:
        """The MQTT subscription filters for this selection, without overlaps.

        Overlapping filters would make some brokers deliver a message twice, so a
        wildcard leaf (needed for "any version" or "any vendor", which MQTT cannot
        match inside a segment) replaces every literal leaf; `accepts` then
        filters locally.
        """
        leaves: list[str] = []
        wildcard_leaf = self.customization and (ANY in self.versions or ANY in self.vendors)
        if wildcard_leaf:
            leaves = [ANY]
        else:
            if self.standard:
                leaves.append(STANDARD_LEAF)
            if self.customization:
                leaves.extend(
                    f"{version}-customization-{vendor}-customer"
                    for version in self.versions
                    for vendor in self.vendors
                )
        tenants = _collapse(self.tenants)
        projects = [p if p == ANY else _PROJECT_PREFIX + p for p in _collapse(self.projects)]
        prefix = f"$share/{self.share_group}/" if self.share_group else ""
        return [
            f"{prefix}{tenant}/{project}/{leaf}"
            for tenant in tenants
            for project in projects
            for leaf in _dedupe(leaves)
        ]


def check_segments(name: str, values: Sequence[str]) -> None:
    """ValueError unless `values` is a usable list of tenants, projects, versions or vendors."""
    if not values:
        raise ValueError(f"{name}: at least one value, or '+' for any")
    for value in values:
        if value == ANY:
            continue
        if not is_safe_segment(value):
            raise ValueError(f"{name}: {value!r} is not a usable topic segment")
        if name == "versions" and not _VERSION.fullmatch(value):
            raise ValueError(f"{name}: {value!r} is not 'v' followed by digits")
        if name == "vendors" and not is_valid_vendor(value):
            raise ValueError(f"{name}: {value!r} must not be 'error' or end in '-error'")


def check_share_group(group: str) -> None:
    """ValueError unless `group` can name an MQTT shared subscription."""
    if not _SHARE_GROUP.fullmatch(group):
        raise ValueError(f"share_group: {group!r} is not a usable name (letters, digits, _ . -)")


def _matches(allowed: Sequence[str], value: str) -> bool:
    return ANY in allowed or value in allowed


def _collapse(values: Sequence[str]) -> list[str]:
    return [ANY] if ANY in values else _dedupe(values)


def _dedupe(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))
