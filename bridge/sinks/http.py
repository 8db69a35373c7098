"""What the HTTP sinks share: one pooled client each, the checks of URLs and values, and how an
answer or a network failure becomes a `SinkError`. Each sink keeps only its own API's rules.

A sink's `Endpoint` is safe to use from several threads at once: its connection pool locks
itself, and nothing in the endpoint changes after it is built.

The requests go out on the standard library's `http.client` (`bridge.sinks.connections`):
about a quarter of httpx's CPU per request. httpx stays for an endpoint that a proxy from
the environment applies to, and is imported only then: parsing any config imports every
sink's settings, and httpx (with what it pulls in) was about a tenth of the bridge's
start-up imports.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote, urlencode, urlsplit

import structlog

from bridge import __version__
from bridge.errors import SinkError
from bridge.secrets import Secret
from bridge.sinks.base import retry_after_of
from bridge.sinks.connections import Connections, TransportError, proxied

if TYPE_CHECKING:
    import httpx

USER_AGENT = f"customer-bridge/{__version__}"
TRANSIENT_STATUSES = frozenset({408, 429})
"""Besides 5xx, the statuses that say "later": the request timed out or was throttled."""
POOL_CONNECTIONS = 16
"""Connections a sink keeps to its server: enough for every lane of one sink in flight."""
KEEPALIVE_EXPIRY = 5.0
"""Seconds an idle connection is kept. Below the idle limit of common servers (Node.js: 5 s,
nginx: 75 s), so that a request rarely meets a connection the server is closing."""
NOT_JSON = "the batch is not representable as JSON"

# Enough for any acknowledgement; a longer answer costs its connection rather than our time.
_MAX_DRAIN = 64 * 1024
# What a request target keeps as it is; anything else (a non-ASCII letter) is %-encoded,
# as httpx did. `%` stays: an escape in the configured URL is already one.
_SAFE = "!#$%&'()*+,/:;=?@[]~"
_DIGITS = re.compile(r"\d{5,}")
_EMAIL = re.compile(r"[^\s@]+@[^\s@]+")
_CODE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_MAX_LOGGED = 200
_UNSET: Final = object()


def transient(status: int) -> bool:
    """Whether an HTTP status asks for a retry later (408, 429, 5xx)."""
    return status in TRANSIENT_STATUSES or 500 <= status < 600


# Checks of the settings, as pydantic validator bodies.


def check_url(
    value: str,
    *,
    credentials: str = "credentials go in their own settings, not in the URL",
    query: bool = False,
    root_only: bool = False,
) -> str:
    """An http(s) URL with a host and without credentials (`credentials` says where they go);
    a query or fragment only with `query`, a path only without `root_only`."""
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise ValueError("the URL cannot hold spaces or control characters")
    parts = urlsplit(value)
    if parts.scheme.lower() not in {"http", "https"}:
        raise ValueError("the URL must start with http:// or https://")
    if not parts.hostname:
        raise ValueError("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError(credentials)
    if not query and (parts.query or parts.fragment):
        raise ValueError("the URL cannot hold a query or fragment")
    if root_only and parts.path not in {"", "/"}:
        raise ValueError("the signed API lives at the root: give scheme, host and port only")
    try:
        _ = parts.port
        host = parts.hostname.encode("idna")  # UnicodeError: no valid international name
        if host.replace(b".", b"").isdigit():
            ipaddress.IPv4Address(host.decode("ascii"))
    except ValueError:
        raise ValueError("the URL is not valid") from None
    return value


def check_text(value: str) -> str:
    """A value for a header, a query or a form: not empty, no line break or NUL."""
    if not value.strip():
        raise ValueError("the value is empty")
    if any(ch in value for ch in "\r\n\x00"):
        raise ValueError("the value holds a line break or NUL")
    return value


def check_secret(value: Secret) -> Secret:
    """`check_text` for a credential, which stays masked."""
    check_text(value.reveal())
    return value


# Request bodies.


def json_text(value: object) -> str:
    """Compact JSON, non-ASCII as is; ValueError for NaN or infinity, which JSON has not."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


@contextlib.contextmanager
def encoding_batch() -> Iterator[None]:
    """Turn a batch that cannot become a request body into a permanent SinkError."""
    try:
        yield
    except (TypeError, ValueError):  # UnicodeEncodeError (a lone surrogate) is a ValueError
        raise SinkError(NOT_JSON, permanent=True) from None


# What a platform answered, made safe to show.


def safe_code(value: object) -> str:
    """A platform's error code as it may appear in our messages: a short token, or `?`."""
    text = str(value) if value is not None else ""
    return text if _CODE.fullmatch(text) else "?"


def scrub(value: object, secrets: Collection[str] = ()) -> str | None:
    """A platform's error text made safe to log: no secrets, digit runs or email addresses.

    A platform may quote the record it refused; the quote may hold a phone number.
    """
    if value is None:
        return None
    text = str(value)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = _EMAIL.sub("***@***", text)
    text = _DIGITS.sub(lambda match: "*" * len(match.group()), text)
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return text[:_MAX_LOGGED]


def answer_of(response: httpx.Response) -> dict[str, Any] | None:
    """The JSON object a platform answered (through httpx), or None for anything else."""
    return _json_object(response.content)


def _json_object(body: bytes) -> dict[str, Any] | None:
    """The JSON object in an answer's body, or None when it holds something else."""
    try:
        document = json.loads(body)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def field_of(answer: Mapping[str, Any], name: str) -> Any:
    """A field of an answer by its lowerCamel name, or its UpperCamel form (RPC answers)."""
    if name in answer:
        return answer[name]
    return answer.get(name[:1].upper() + name[1:])


@dataclass(frozen=True, slots=True)
class Answer:
    """A server's answer: its status, the wait it asked for, and its JSON object if read."""

    status: int
    retry_after: float | None
    document: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        """A 2xx status."""
        return 200 <= self.status < 300

    def raise_if_later(self, where: str) -> None:
        """Raise the transient SinkError of a status that asks for a retry later."""
        if transient(self.status):
            raise SinkError(f"{where} answered {self.status}", retry_after=self.retry_after)


class Endpoint:
    """A sink's HTTP client for one server: kept-alive pooled connections, no redirects
    followed, errors that name the sink kind and host but never the URL or a secret."""

    def __init__(
        self,
        kind: str,
        url: str,
        *,
        headers: Mapping[str, str],
        timeout: float,
        verify_tls: bool,
        secrets: Collection[str] = (),
    ) -> None:
        self.host = urlsplit(url).hostname or "?"
        self.where = f"{kind} {self.host}"
        """How errors and logs name the server: the sink kind and the host."""
        self._secrets = tuple(secrets)
        self._connections: Connections | None = None
        self._client: httpx.Client | None = None
        if not proxied(url):
            self._connections = Connections(
                url,
                timeout=timeout,
                verify_tls=verify_tls,
                limit=POOL_CONNECTIONS,
                expiry=KEEPALIVE_EXPIRY,
                headers={"User-Agent": USER_AGENT, **headers},
            )
            return
        import httpx  # noqa: PLC0415 - only behind a proxy (module docstring)

        self._client = httpx.Client(
            headers={"User-Agent": USER_AGENT, **headers},
            timeout=timeout,
            verify=verify_tls,
            follow_redirects=False,
            limits=httpx.Limits(
                max_connections=POOL_CONNECTIONS,
                max_keepalive_connections=POOL_CONNECTIONS,
                keepalive_expiry=KEEPALIVE_EXPIRY,
            ),
        )

    @property
    def through_proxy(self) -> bool:
        """Whether the requests go through a proxy from the environment (on httpx)."""
        return self._client is not None

    def exchange(
        self,
        method: str,
        url: str,
        *,
        read: bool = True,
        where: str | None = None,
        content: bytes | None = None,
        data: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """Make one request; with `read`, parse the answer's JSON object, else only drain it.

        A network failure or a timeout is a transient SinkError naming `where` (the
        endpoint's own by default) and the failure's class.
        """
        if self._client is not None:
            return self._exchange_httpx(method, url, read, where, content, data, params, headers)
        assert self._connections is not None
        parts = urlsplit(url)
        target = quote(parts.path, safe=_SAFE) or "/"
        query = "&".join(
            part for part in (quote(parts.query, safe=_SAFE), urlencode(params or {})) if part
        )
        if query:
            target = f"{target}?{query}"
        sent = dict(headers or {})
        if data is not None:
            content = urlencode(data).encode("ascii")
            sent.setdefault("Content-Type", "application/x-www-form-urlencoded")
        try:
            response = self._connections.request(
                method, target, body=content, headers=sent, read_limit=None if read else _MAX_DRAIN
            )
        except TransportError as exc:
            # The exception's text may quote the URL, whose query may hold a credential.
            raise SinkError(f"{where or self.where} failed: {type(exc).__name__}") from None
        retry_after = retry_after_of(response.headers)
        if not read:
            return Answer(response.status, retry_after)
        return Answer(response.status, retry_after, _json_object(response.body))

    def _exchange_httpx(
        self,
        method: str,
        url: str,
        read: bool,
        where: str | None,
        content: bytes | None,
        data: Mapping[str, str] | None,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
    ) -> Answer:
        import httpx  # noqa: PLC0415 - loaded already: the client is httpx's

        assert self._client is not None
        request = self._client.build_request(
            method, url, content=content, data=data, params=params, headers=headers
        )
        try:
            response = self._client.send(request, stream=not read)
        except httpx.TransportError as exc:
            raise SinkError(f"{where or self.where} failed: {type(exc).__name__}") from None
        try:
            answer = Answer(response.status_code, retry_after_of(response.headers))
            if read:
                return Answer(answer.status, answer.retry_after, answer_of(response))
            _drain(response)
            return answer
        finally:
            response.close()

    def scrub(self, value: object) -> str | None:
        """`scrub` with this endpoint's credentials masked."""
        return scrub(value, self._secrets)

    def log_refusal(
        self,
        log: structlog.typing.FilteringBoundLogger,
        status: int,
        code: str,
        description: object,
        records: int,
        *,
        action: str | None = None,
        trace_id: object = _UNSET,
    ) -> None:
        """The `platform_refused` warning: the code, the description scrubbed, the counts."""
        fields: dict[str, Any] = {} if action is None else {"action": action}
        fields.update(status=status, error_code=code, error_desc=self.scrub(description))
        if trace_id is not _UNSET:
            fields["trace_id"] = trace_id
        fields["records"] = records
        log.warning("platform_refused", **fields)

    def close(self) -> None:
        """Close the client and its connections."""
        if self._client is not None:
            self._client.close()
        if self._connections is not None:
            self._connections.close()


def refusal(
    where: str, status: int, code: str, *, permanent: bool, trace_id: str | None = None
) -> SinkError:
    """The SinkError of a platform that refused a batch, with its `traceId` when it gave one."""
    note = f", traceId {trace_id}" if trace_id else ""
    return SinkError(f"{where} refused the batch: {status} {code}{note}", permanent=permanent)


def _drain(response: httpx.Response) -> None:
    """Read a short answer to its end so that its connection can be reused."""
    import httpx  # noqa: PLC0415 - loaded already: the response came from it

    received = 0
    try:
        for chunk in response.iter_raw():
            received += len(chunk)
            if received > _MAX_DRAIN:
                return
    except httpx.HTTPError:
        return  # the status is what counts; the connection is simply not reused
