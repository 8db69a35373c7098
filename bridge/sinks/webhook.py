"""The HTTP webhook sink: each batch as one JSON request, signed per Standard Webhooks
(`webhook-id`, `webhook-timestamp`, `webhook-signature`) and/or with a body HMAC-SHA256."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from bridge.core.events import DownstreamEvent
from bridge.errors import SinkError
from bridge.secrets import Secret, Url
from bridge.sinks.base import SinkConfigBase, SinkContext
from bridge.sinks.http import Endpoint, check_url, encoding_batch, json_text

BATCH_SIZE_HEADER = "X-Bridge-Batch-Size"
CONTENT_TYPE = "application/json"

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP header name (RFC 9110)
STANDARD_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
_RESERVED = frozenset(
    {"content-type", "content-length", "transfer-encoding", "host", "connection"}
    | {BATCH_SIZE_HEADER.lower(), *STANDARD_HEADERS}
)
_KEY_PREFIX = "whsec_"
# Standard Webhooks: secrets are 24 to 64 random bytes, base64, with a `whsec_` prefix.
_MIN_KEY_BYTES = 24


def standard_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret (`whsec_` and base64); ValueError if not one."""
    text = secret.removeprefix(_KEY_PREFIX)
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a Standard Webhooks secret is whsec_ and base64") from None
    if len(key) < _MIN_KEY_BYTES:
        raise ValueError(f"a Standard Webhooks secret holds at least {_MIN_KEY_BYTES} bytes")
    return key


def standard_signature(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: `v1,<base64 HMAC-SHA256 of id.timestamp.body>` per key,
    space-separated, so a receiver holding any one of the keys can verify."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode("ascii")
        for key in keys
    )


def delivery_id(body: bytes) -> str:
    """The `webhook-id` of a request: derived from the body, so the same batch sent again (a
    retry, a redelivery after a restart, a replayed dead letter) keeps its id."""
    return "msg_" + hashlib.sha256(body).hexdigest()[:32]


def _standard_secret(secret: Secret) -> Secret:
    standard_key(secret.reveal())
    return secret


class StandardWebhooksConfig(BaseModel):
    """Standard Webhooks signing: each request is signed with every secret listed.

    List the new secret beside the old one while receivers move over, then drop the old.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    secrets: tuple[Annotated[Secret, AfterValidator(_standard_secret)], ...] = Field(min_length=1)


class WebhookConfig(SinkConfigBase):
    """`type: webhook`: send each batch as `{"events": [...]}` to `url`.

    `standard_webhooks.secrets` signs per the Standard Webhooks spec. With `signature_secret`,
    `signature_header` carries `sha256=` and the lowercase hex HMAC-SHA256 of the exact body
    bytes, keyed by the secret (as GitHub webhooks do). Both may be on at once.
    """

    # The URL, headers and secrets may hold credentials: keep them out of errors.
    model_config = ConfigDict(hide_input_in_errors=True)

    # One kept-alive connection per lane from the endpoint's pool; a send holds no state of its own.
    concurrent: ClassVar[bool] = True

    type: Literal["webhook"]
    url: Url = Field(repr=False)
    method: Literal["POST", "PUT"] = "POST"
    headers: dict[str, Secret] = Field(default_factory=dict)
    timeout: float = Field(default=10.0, gt=0)
    standard_webhooks: StandardWebhooksConfig | None = None
    signature_secret: Secret | None = None
    signature_header: str = "X-Bridge-Signature"
    verify_tls: bool = True
    direct: bool = True
    """With one lane, while nothing of this sink waits in the spool, the intake posts each
    group's events itself before the group's commit, sparing the outbox rows."""
    direct_budget: float = Field(default=0.25, gt=0, le=60)
    """Seconds a group's direct requests may take: the request that ends past it is the
    group's last, and the sink's events go through the outbox for a while
    (`bridge.delivery.Gate`)."""

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        where = "put credentials in headers (with ${NAME}), not in the URL"
        return check_url(value, credentials=where, query=True)

    @field_validator("method", mode="before")
    @classmethod
    def _upper_method(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("headers")
    @classmethod
    def _usable_headers(cls, value: dict[str, Secret]) -> dict[str, Secret]:
        seen: set[str] = set()
        for name, text in value.items():
            if not _TOKEN.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if name.lower() in _RESERVED:
                raise ValueError(f"the sink sets {name} itself")
            if name.lower() in seen:
                raise ValueError(f"header {name} is given twice")
            seen.add(name.lower())
            if any(ch in text.reveal() for ch in "\r\n\x00"):
                raise ValueError(f"the value of header {name} holds a line break or NUL")
        return value

    @field_validator("signature_secret")
    @classmethod
    def _usable_secret(cls, value: Secret | None) -> Secret | None:
        if value is not None and not value.reveal():
            raise ValueError("the secret is empty")
        return value

    @field_validator("signature_header")
    @classmethod
    def _usable_signature_header(cls, value: str) -> str:
        if not _TOKEN.fullmatch(value):
            raise ValueError(f"{value!r} is not a valid header name")
        if value.lower() in _RESERVED:
            raise ValueError(f"the sink sets {value} itself")
        return value

    @model_validator(mode="after")
    def _signature_header_free(self) -> WebhookConfig:
        if self.signature_secret is not None and self.signature_header.lower() in {
            name.lower() for name in self.headers
        }:
            raise ValueError(f"headers cannot set {self.signature_header}, the signature header")
        return self

    def build(self, context: SinkContext) -> WebhookSink:
        """Open the HTTP client."""
        standard = self.standard_webhooks
        return WebhookSink(
            self.name or f"webhook:{urlsplit(self.url).hostname}",
            self.url,
            method=self.method,
            headers={name: text.reveal() for name, text in self.headers.items()},
            timeout=self.timeout,
            signature_secret=(
                None if self.signature_secret is None else self.signature_secret.reveal()
            ),
            signature_header=self.signature_header,
            standard_secrets=() if standard is None else [s.reveal() for s in standard.secrets],
            verify_tls=self.verify_tls,
            # A receiver worth lanes is a round trip away: the intake would wait on it.
            direct=self.direct and self.lanes == 1,
        )

    def handover_budget(self) -> float | None:
        """The direct hand-over's budget (`direct_budget`)."""
        return self.direct_budget


class WebhookSink:
    """Sends each batch in one request over a pool of kept-alive connections.

    2xx: taken. 408, 429, 5xx, a network error or a timeout: transient. Anything
    else (redirects are not followed): permanent. `send` and `send_json` may be called
    from several threads at once (each request takes a connection of the pool). With
    `direct`, the intake posts caught-up groups itself (docs/delivery.md).
    """

    concurrent = True

    def __init__(
        self,
        name: str,
        url: str,
        *,
        method: str = "POST",
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        signature_secret: str | None = None,
        signature_header: str = "X-Bridge-Signature",
        standard_secrets: Sequence[str] = (),
        verify_tls: bool = True,
        direct: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.direct = direct
        self._url = url
        self._method = method
        self._key = signature_secret.encode("utf-8") if signature_secret is not None else None
        self._signature_header = signature_header
        self._standard_keys = [standard_key(secret) for secret in standard_secrets]
        self._clock = clock
        self._http = Endpoint(
            "webhook", url, headers=headers or {}, timeout=timeout, verify_tls=verify_tls
        )

    def __repr__(self) -> str:
        return f"WebhookSink(name={self.name!r}, method={self._method!r}, host={self._http.host!r})"

    def body(self, events: Sequence[DownstreamEvent]) -> bytes:
        """The request body of a batch: `{"events": [SPEC 7 objects]}` as UTF-8 JSON."""
        with encoding_batch():
            return json_text({"events": [event.to_dict() for event in events]}).encode("utf-8")

    def body_of_json(self, bodies: Sequence[str]) -> bytes:
        """The request body of events the spool holds encoded: their text joined, not re-encoded.

        The spool's encoding is the one `body` uses, so the bytes are the same; an event with
        NaN or infinity (which JSON has not, and which the intake never stores, but a spool
        row may hold from elsewhere) is refused as `body` refuses it.
        """
        text = '{"events":[' + ",".join(bodies) + "]}"
        if "NaN" in text or "Infinity" in text:
            # Most likely inside a string; only a decode can tell a constant from text.
            self.body([DownstreamEvent.from_dict(json.loads(body)) for body in bodies])
        with encoding_batch():
            return text.encode("utf-8")

    def body_of_encoded(self, bodies: Sequence[bytes]) -> bytes:
        """The request body of events the intake has just encoded (a digest's bytes): joined as
        they are. The intake's encoder writes no NaN or infinity, so nothing is looked for."""
        return b'{"events":[' + b",".join(bodies) + b"]}"

    def signature(self, body: bytes) -> str | None:
        """The body HMAC header's value for `body`, or None without a secret."""
        if self._key is None:
            return None
        return "sha256=" + hmac.new(self._key, body, hashlib.sha256).hexdigest()

    def signed_headers(self, body: bytes) -> dict[str, str]:
        """The signature headers of one attempt to send `body` (none without secrets)."""
        headers: dict[str, str] = {}
        if self._standard_keys:
            msg_id = delivery_id(body)
            # The timestamp is the attempt's: a receiver refuses a signature that is too old.
            timestamp = int(self._clock())
            headers["webhook-id"] = msg_id
            headers["webhook-timestamp"] = str(timestamp)
            headers["webhook-signature"] = standard_signature(
                self._standard_keys, msg_id, timestamp, body
            )
        signature = self.signature(body)
        if signature is not None:
            headers[self._signature_header] = signature
        return headers

    def send(self, events: Sequence[DownstreamEvent]) -> None:
        """Send the batch in one request; an empty batch sends nothing."""
        if events:
            self._post(self.body(events), len(events))

    def send_json(self, bodies: Sequence[str]) -> None:
        """Send events the spool holds as encoded JSON, in one request; nothing if empty."""
        if bodies:
            self._post(self.body_of_json(bodies), len(bodies))

    def send_encoded(self, bodies: Sequence[bytes]) -> None:
        """Send events the intake has just encoded (a direct hand-over's), in one request."""
        if bodies:
            self._post(self.body_of_encoded(bodies), len(bodies))

    def _post(self, body: bytes, records: int) -> None:
        headers = {
            "Content-Type": CONTENT_TYPE,
            BATCH_SIZE_HEADER: str(records),
            **self.signed_headers(body),
        }
        http = self._http
        answer = http.exchange(self._method, self._url, read=False, content=body, headers=headers)
        if answer.ok:
            return
        answer.raise_if_later(http.where)
        raise SinkError(f"{http.where} answered {answer.status}", permanent=True)

    def close(self) -> None:
        """Close the HTTP client and its connections."""
        self._http.close()
