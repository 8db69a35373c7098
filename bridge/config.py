"""The YAML configuration: frozen models that reject unknown keys, and one load function."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bridge.core.topics import ANY, Selection, check_segments, check_share_group
from bridge.core.validate import Mode, Rules
from bridge.errors import ConfigError
from bridge.secrets import Secret, interpolate_document, read_secret_file
from bridge.sinks import SinkConfig
from bridge.spool import Storage


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ReconnectConfig(_Model):
    """Capped exponential backoff between connection attempts, in seconds."""

    min_delay: int = Field(default=1, ge=1)
    max_delay: int = Field(default=60, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> ReconnectConfig:
        if self.max_delay < self.min_delay:
            raise ValueError("max_delay must be at least min_delay")
        return self


class TlsConfig(_Model):
    """TLS to the broker: a CA bundle (system CAs when absent), and a client certificate for
    mutual TLS. Hostname verification stays on unless turned off explicitly."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    verify_hostname: bool = True

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class BrokerConfig(_Model):
    """Where the broker is and how the session is kept.

    `embedded: true` starts the bundled amqtt broker on host:port first (demo and
    development; it speaks MQTT 3.1.1 only and does not keep queued messages for
    offline sessions, so production uses a real broker such as mosquitto).
    """

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=0, le=65535)
    protocol: Literal["5", "3.1.1"] = "5"
    client_id: str = Field(default="customer-bridge", min_length=1, max_length=128)
    session_expiry: int = Field(default=7 * 24 * 3600, ge=0)
    keepalive: int = Field(default=30, ge=5, le=65535)
    receive_maximum: int = Field(default=1000, ge=1, le=65535)
    max_packet_size: int | None = Field(default=None, ge=16, le=268_435_460)
    publish_timeout: float = Field(default=10.0, gt=0)
    username: str | None = None
    password: Secret | None = None
    password_file: Path | None = None
    tls: TlsConfig | None = None
    reconnect: ReconnectConfig = ReconnectConfig()
    embedded: bool = False

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int | float) else value

    def credentials(self) -> tuple[str | None, str | None]:
        """Username and password, `password_file` read now (a rotated file is read again)."""
        password = None
        if self.password is not None:
            password = self.password.reveal()
        elif self.password_file is not None:
            password = read_secret_file("broker.password_file", self.password_file).reveal()
        return self.username, password

    @model_validator(mode="after")
    def _one_password(self) -> BrokerConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        return self

    @model_validator(mode="after")
    def _embedded_speaks_311(self) -> BrokerConfig:
        if self.embedded and self.protocol != "3.1.1":
            raise ValueError("the embedded broker speaks MQTT 3.1.1 only: set protocol: '3.1.1'")
        return self


class CustomizationConfig(_Model):
    """Which customization topics to take: versions and vendors, `+` for any."""

    enabled: bool = True
    versions: tuple[str, ...] = (ANY,)
    vendors: tuple[str, ...] = (ANY,)

    @field_validator("versions", "vendors")
    @classmethod
    def _usable(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        check_segments(str(info.field_name), value)
        return value


class SubscriptionConfig(_Model):
    """Which inbound topics to subscribe to; each list may be literal values or `+`."""

    tenants: tuple[str, ...] = (ANY,)
    projects: tuple[str, ...] = (ANY,)
    standard: bool = True
    customization: CustomizationConfig = CustomizationConfig()
    share_group: str | None = None

    @field_validator("tenants", "projects")
    @classmethod
    def _usable(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        check_segments(str(info.field_name), value)
        return value

    @field_validator("share_group")
    @classmethod
    def _usable_group(cls, value: str | None) -> str | None:
        if value is not None:
            check_share_group(value)
        return value

    @field_validator("tenants", "projects", mode="before")
    @classmethod
    def _scalars_to_lists(cls, value: object) -> object:
        return [value] if isinstance(value, str | int) else value

    @field_validator("projects", mode="before")
    @classmethod
    def _project_ids_as_text(cls, value: object) -> object:
        if isinstance(value, list | tuple):
            return [str(item) if isinstance(item, int) else item for item in value]
        return value

    def selection(self) -> Selection:
        """The topic selection these settings describe."""
        return Selection(
            tenants=self.tenants,
            projects=self.projects,
            standard=self.standard,
            customization=self.customization.enabled,
            versions=self.customization.versions,
            vendors=self.customization.vendors,
            share_group=self.share_group,
        )

    @model_validator(mode="after")
    def _valid_selection(self) -> SubscriptionConfig:
        self.selection()
        return self


class ValidationConfig(_Model):
    """Validation mode and payload limits (SPEC 2 and 3)."""

    mode: Mode = Mode.LENIENT
    timezone: str = "Asia/Shanghai"
    max_batch: int = Field(default=1000, ge=1)
    workers: Annotated[int, Field(ge=0, le=64)] | Literal["auto"] = "auto"
    """Worker processes that decode, validate and encode beside the intake, whose own thread
    digests a balanced share of each group: `auto` is one fewer than the cores (none on a
    single core); 0 does it all in the intake's own thread."""
    max_payload_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_depth: int = Field(default=32, ge=4, le=256)

    def rules(self) -> Rules:
        """The validation rules these settings describe."""
        return Rules(
            mode=self.mode,
            timezone=self.timezone,
            max_batch=self.max_batch,
            max_payload_bytes=self.max_payload_bytes,
            max_depth=self.max_depth,
        )

    @model_validator(mode="after")
    def _known_timezone(self) -> ValidationConfig:
        try:
            self.rules()
        except (KeyError, ValueError) as exc:
            raise ValueError(f"unknown time zone {self.timezone!r}") from exc
        return self


class DeliveryConfig(_Model):
    """Retries of a sink that fails: capped exponential backoff with full jitter.

    A record goes to the dead letters after `max_attempts` tries (none: no limit)
    or once it has waited `max_age` seconds, whichever comes first.
    """

    max_attempts: int | None = Field(default=None, ge=1)
    max_age: float = Field(default=24 * 3600.0, gt=0)
    initial_backoff: float = Field(default=0.5, gt=0)
    max_backoff: float = Field(default=30.0, gt=0)
    max_retry_after: float = Field(default=300.0, gt=0)
    """The longest wait a sink's `Retry-After` may ask for; longer answers are cut to it."""
    alarm_on_give_up: bool = True

    @model_validator(mode="after")
    def _ordered(self) -> DeliveryConfig:
        if self.initial_backoff > self.max_backoff:
            raise ValueError(
                f"initial_backoff ({self.initial_backoff:g}) is longer than"
                f" max_backoff ({self.max_backoff:g})"
            )
        return self


class SpoolConfig(_Model):
    """The on-disk outbox, de-duplication window and dead letters (SQLite)."""

    path: Path = Path("state/spool.db")
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    max_pending: int = Field(default=1_000_000, ge=1)
    intake_batch: int = Field(default=1000, ge=1)
    intake_linger: float = Field(default=0.002, ge=0, le=1.0)
    """Seconds a small group waits for more messages before its commit (fewer fsyncs)."""
    dedup_max_keys: int = Field(default=1_000_000, ge=1)
    dedup_max_age: float = Field(default=8 * 24 * 3600.0, gt=0)
    # The volume: a floor the intake stops at, a reserve for deleting, a quota for garbage.
    min_free: ByteSize | None = None
    """Free space (`64MiB`) below which nothing more is taken; none: 10 % of the volume."""
    reserve: ByteSize | None = None
    """Space held in a file, given up when the disk is full; none: 2 % of the volume."""
    unreadable_max_count: int = Field(default=1000, ge=0)
    unreadable_max_bytes: ByteSize = ByteSize(4 * 1024 * 1024)
    unreadable_max_metadata: int = Field(default=100_000, ge=0)
    """Unreadable payloads past the quota kept as metadata; beyond it only counted."""

    def storage(self) -> Storage:
        """The volume's rules as the spool takes them."""
        return Storage(
            min_free=None if self.min_free is None else int(self.min_free),
            reserve=None if self.reserve is None else int(self.reserve),
            unreadable_max_count=self.unreadable_max_count,
            unreadable_max_bytes=int(self.unreadable_max_bytes),
            unreadable_max_metadata=self.unreadable_max_metadata,
        )


class HealthConfig(_Model):
    """The HTTP listener for /healthz, /readyz and /metrics; loopback unless told otherwise."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9108, ge=0, le=65535)


class LoggingConfig(_Model):
    """Log level and format; `auto` is JSON unless stdout is a terminal."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"
    redact: bool = True
    progress_interval: float = Field(default=60.0, ge=0.5)
    """Seconds between `progress` lines (counters) at info, while messages come."""


class Config(_Model):
    """The whole configuration file."""

    broker: BrokerConfig = BrokerConfig()
    subscription: SubscriptionConfig = SubscriptionConfig()
    validation: ValidationConfig = ValidationConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    spool: SpoolConfig = SpoolConfig()
    health: HealthConfig = HealthConfig()
    sinks: tuple[SinkConfig, ...] = Field(min_length=1)
    logging: LoggingConfig = LoggingConfig()


def _inconsistencies(config: Config) -> list[tuple[str, str]]:
    """Problems between sections, each at the path an operator would change."""
    problems: list[tuple[str, str]] = []
    expiry = config.broker.session_expiry
    if config.spool.dedup_max_age < expiry:
        # The broker may redeliver a message as late as its session lives: a shorter window
        # forgets the message first and forwards the redelivery a second time.
        problems.append(
            (
                "spool.dedup_max_age",
                f"{config.spool.dedup_max_age:g}s is shorter than broker.session_expiry"
                f" ({expiry}s): a late redelivery would be forwarded twice",
            )
        )
    first: dict[str, int] = {}
    for index, sink in enumerate(config.sinks):
        if sink.name is None:
            continue  # a default name is checked when the sinks are built
        if sink.name in first:
            problems.append(
                (f"sinks[{index}].name", f"{sink.name!r} is already sinks[{first[sink.name]}]")
            )
        first.setdefault(sink.name, index)
    return problems


def _path_of(location: tuple[int | str, ...], document: Any) -> str:
    """Turn a pydantic error location into a YAML path like `sinks[0].path`.

    Discriminated unions add the tag (`jsonl`) to the location; it is skipped by
    walking the document alongside.
    """
    parts: list[str] = []
    node = document
    for item in location:
        if isinstance(item, int):
            parts.append(f"[{item}]")
            node = node[item] if isinstance(node, list) and item < len(node) else None
        elif isinstance(node, dict) or node is None:
            if isinstance(node, dict) and item not in node and item == node.get("type"):
                continue  # the union's tag, not a key
            parts.append(f".{item}" if parts else str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts)


def _echo(error: Any, errors: list[Any]) -> bool:
    """Whether `error` only says that a list came out too short because items in it failed
    (a sink, a secret): the items' own errors say the cause."""
    if error["type"] != "too_short":
        return False
    loc = tuple(error["loc"])
    return any(len(other["loc"]) > len(loc) and other["loc"][: len(loc)] == loc for other in errors)


def _problem(error: Any, document: object) -> tuple[str, str]:
    path = _path_of(tuple(error["loc"]), document)
    if error["type"] == "extra_forbidden":
        return path, "unknown key"
    message = str(error["msg"])
    return path, message.removeprefix("Value error, ")


def parse(
    document: object, source: str = "config", environ: Mapping[str, str] | None = None
) -> Config:
    """Validate a parsed YAML document with `${NAME}` read from `environ` (the process's by
    default); one ConfigError holds every problem, each at its YAML path."""
    if not isinstance(document, dict):
        raise ConfigError("", f"{source}: the top level must be a mapping")
    resolved, problems = interpolate_document(document, os.environ if environ is None else environ)
    unresolved = [path for path, _ in problems]
    try:
        config = Config.model_validate(resolved)
    except ValidationError as exc:
        errors = exc.errors()
        for error in errors:
            if _echo(error, errors):
                continue
            path, message = _problem(error, resolved)
            # A value whose variable is unset is reported as such, not as its literal text.
            if not any(path == u or path.startswith((u + ".", u + "[")) for u in unresolved):
                problems.append((path, message))
    else:
        problems.extend(_inconsistencies(config))
    if problems:
        raise ConfigError.of(_in_file_order(problems, resolved))
    return config


def _in_file_order(problems: list[tuple[str, str]], document: object) -> list[tuple[str, str]]:
    """`problems` sorted as their paths come in the file; a missing key comes after the keys
    its mapping holds."""
    starts: dict[str, int] = {}
    ends: dict[str, int] = {}

    def walk(node: object, path: str) -> None:
        starts[path] = len(starts)
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{path}.{key}" if path else str(key))
        elif isinstance(node, list):
            for index, item in enumerate(node):
                walk(item, f"{path}[{index}]")
        ends[path] = len(starts) - 1

    walk(document, "")

    def place(problem: tuple[str, str]) -> float:
        path = problem[0]
        if path in starts:
            return starts[path]
        while path not in starts:
            path = path[: max(path.rfind("."), path.rfind("["), 0)]
        return ends[path] + 0.5

    return sorted(problems, key=place)


def load(path: Path) -> Config:
    """Read and validate a YAML config file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read {path}: {exc.strerror}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("", f"{path} is not valid YAML: {exc}") from None
    return parse(document, str(path))
