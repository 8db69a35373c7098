"""The HTTP webhook sink: each batch as one JSON request, optionally signed with HMAC-SHA256."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Literal
from urllib.parse import urlsplit

import httpx
from pydantic import ConfigDict, Field, field_serializer, field_validator, model_validator

from bridge import __version__
from bridge.errors import ConfigError, SinkError
from bridge.events import DownstreamEvent
from bridge.secrets import ENV_REF as _ENV_REF
from bridge.secrets import check_references as _check_references
from bridge.secrets import interpolate as _interpolate
from bridge.sinks.base import SinkConfigBase, SinkContext, retry_after_of

BATCH_SIZE_HEADER = "X-Bridge-Batch-Size"
CONTENT_TYPE = "application/json"
# A status that says "later": the request timed out, was throttled, or the server failed.
TRANSIENT_STATUSES = frozenset({408, 429})
# Enough for any acknowledgement; a longer answer costs its connection rather than our time.
_MAX_DRAIN = 64 * 1024

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP header name (RFC 9110)
_RESERVED = frozenset(
    {"content-type", "content-length", "transfer-encoding", "host", "connection"}
    | {BATCH_SIZE_HEADER.lower()}
)


class WebhookConfig(SinkConfigBase):
    """`type: webhook`: send each batch as `{"events": [...]}` to `url`.

    With `signature_secret`, `signature_header` carries `sha256=` and the lowercase hex
    HMAC-SHA256 of the exact body bytes, keyed by the secret (as GitHub webhooks do).
    Header values and the secret may hold `${NAME}`, read from the environment at start.
    """

    # The URL, headers and secret may hold credentials: keep them out of repr and errors.
    model_config = ConfigDict(hide_input_in_errors=True)

    type: Literal["webhook"]
    url: str = Field(repr=False)
    method: Literal["POST", "PUT"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict, repr=False)
    timeout: float = Field(default=10.0, gt=0)
    signature_secret: str | None = Field(default=None, min_length=1, repr=False)
    signature_header: str = "X-Bridge-Signature"
    verify_tls: bool = True

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
            raise ValueError("the URL cannot hold spaces or control characters")
        parts = urlsplit(value)
        if parts.scheme.lower() not in {"http", "https"}:
            raise ValueError("the URL must start with http:// or https://")
        if not parts.hostname:
            raise ValueError("the URL has no host")
        if parts.username is not None or parts.password is not None:
            raise ValueError("put credentials in headers (with ${NAME}), not in the URL")
        try:
            _ = parts.port
            httpx.URL(value)
        except (ValueError, httpx.InvalidURL):
            raise ValueError("the URL is not valid") from None
        return value

    @field_validator("method", mode="before")
    @classmethod
    def _upper_method(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("headers")
    @classmethod
    def _usable_headers(cls, value: dict[str, str]) -> dict[str, str]:
        seen: set[str] = set()
        for name, text in value.items():
            if not _TOKEN.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if name.lower() in _RESERVED:
                raise ValueError(f"the sink sets {name} itself")
            if name.lower() in seen:
                raise ValueError(f"header {name} is given twice")
            seen.add(name.lower())
            if any(ch in text for ch in "\r\n\x00"):
                raise ValueError(f"the value of header {name} holds a line break or NUL")
            _check_references(text)
        return value

    @field_validator("signature_secret")
    @classmethod
    def _usable_secret(cls, value: str | None) -> str | None:
        if value is not None:
            _check_references(value)
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

    @field_serializer("signature_secret")
    def _masked_secret(self, value: str | None) -> str | None:
        # A reference is safe to show (check-config prints the config); a literal is not.
        if value is None or _ENV_REF.fullmatch(value):
            return value
        return "***"

    def build(self, context: SinkContext) -> WebhookSink:
        """Read `${NAME}` references from the environment and open the HTTP client."""
        headers = {
            name: _interpolate(f"headers.{name}", text, os.environ)
            for name, text in self.headers.items()
        }
        for name, text in headers.items():
            if any(ch in text for ch in "\r\n\x00"):
                raise ConfigError(f"headers.{name}", "the environment gives a line break or NUL")
        secret = None
        if self.signature_secret is not None:
            secret = _interpolate("signature_secret", self.signature_secret, os.environ)
            if not secret:
                raise ConfigError("signature_secret", "the environment gives an empty secret")
        return WebhookSink(
            self.name or f"webhook:{urlsplit(self.url).hostname}",
            self.url,
            method=self.method,
            headers=headers,
            timeout=self.timeout,
            signature_secret=secret,
            signature_header=self.signature_header,
            verify_tls=self.verify_tls,
        )


class WebhookSink:
    """Sends each batch in one request over a kept-alive connection.

    2xx: taken. 408, 429, 5xx, a network error or a timeout: transient. Anything
    else (redirects are not followed): permanent.
    """

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
        verify_tls: bool = True,
    ) -> None:
        self.name = name
        self._url = url
        self._host = urlsplit(url).hostname or "?"
        self._method = method
        self._key = signature_secret.encode("utf-8") if signature_secret is not None else None
        self._signature_header = signature_header
        self._client = httpx.Client(
            headers={"User-Agent": f"customer-bridge/{__version__}", **(headers or {})},
            timeout=timeout,
            verify=verify_tls,
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"WebhookSink(name={self.name!r}, method={self._method!r}, host={self._host!r})"

    def body(self, events: Sequence[DownstreamEvent]) -> bytes:
        """The request body of a batch: `{"events": [SPEC 7 objects]}` as UTF-8 JSON."""
        document = {"events": [event.to_dict() for event in events]}
        return json.dumps(
            document, ensure_ascii=False, separators=(",", ":"), allow_nan=False
        ).encode("utf-8")

    def signature(self, body: bytes) -> str | None:
        """The signature header's value for `body`, or None without a secret."""
        if self._key is None:
            return None
        return "sha256=" + hmac.new(self._key, body, hashlib.sha256).hexdigest()

    def send(self, events: Sequence[DownstreamEvent]) -> None:
        """Send the batch in one request; an empty batch sends nothing."""
        if not events:
            return
        try:
            body = self.body(events)
        except (TypeError, ValueError):
            raise SinkError("the batch is not representable as JSON", permanent=True) from None
        headers = {"Content-Type": CONTENT_TYPE, BATCH_SIZE_HEADER: str(len(events))}
        signature = self.signature(body)
        if signature is not None:
            headers[self._signature_header] = signature
        request = self._client.build_request(self._method, self._url, content=body, headers=headers)
        try:
            response = self._client.send(request, stream=True)
        except httpx.TransportError as exc:
            # The exception's text may quote the URL; its class says enough (ConnectError, ...).
            raise SinkError(f"webhook {self._host} failed: {type(exc).__name__}") from None
        try:
            status = response.status_code
            after = retry_after_of(response.headers)
            _drain(response)
        finally:
            response.close()
        if 200 <= status < 300:
            return
        transient = status in TRANSIENT_STATUSES or 500 <= status < 600
        raise SinkError(
            f"webhook {self._host} answered {status}",
            permanent=not transient,
            retry_after=after if transient else None,
        )

    def close(self) -> None:
        """Close the HTTP client and its connections."""
        self._client.close()


def _drain(response: httpx.Response) -> None:
    """Read a short answer to its end so that its connection can be reused."""
    received = 0
    try:
        for chunk in response.iter_raw():
            received += len(chunk)
            if received > _MAX_DRAIN:
                return
    except httpx.HTTPError:
        return  # the status is what counts; the connection is simply not reused
