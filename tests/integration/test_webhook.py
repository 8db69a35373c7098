"""The webhook sink against a real HTTP server on loopback that enforces the webhook contract.

The server rejects a missing or wrong signature with 401 and a body that is not
`application/json` with 415, records every request, answers a status sequence it
is given (200 once that runs out), and can be stopped to play a receiver that is down.
"""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from bridge.config import parse
from bridge.core.events import DownstreamEvent
from bridge.core.records import Op
from bridge.core.topics import TopicKind
from bridge.errors import BrokerError, ConfigError, SinkError
from bridge.sinks import SinkContext, build_sinks
from bridge.sinks.webhook import WebhookConfig, WebhookSink
from bridge.testing import Recorder, Request

SECRET = "s3cr3t-hmac-key"
TOKEN = "t0ken-in-the-environment"
QUERY_TOKEN = "q-token-in-the-url"


class Receiver(Recorder):
    """A contract-enforcing webhook receiver on a free loopback port."""

    def __init__(self, secret: str | None) -> None:
        # The query string is one that error messages must not repeat.
        super().__init__(path=f"/hooks/customers?token={QUERY_TOKEN}")
        self.secret = secret
        self.contract = self.verdict

    def verdict(self, request: Request) -> int | None:
        """The status the contract refuses a request with, before any status from the sequence."""
        if request.headers.get("content-type") != "application/json":
            return 415
        if self.secret is not None:
            digest = hmac.new(self.secret.encode(), request.body, hashlib.sha256).hexdigest()
            given = request.headers.get("x-bridge-signature", "")
            if not hmac.compare_digest(given, "sha256=" + digest):
                return 401
        return None


# Loopback requests must not be sent to a proxy from the environment.
pytestmark = pytest.mark.usefixtures("no_proxies")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A signing receiver that expects SECRET."""
    server = Receiver(SECRET)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _no_publish(_topic: str, _payload: bytes, _qos: int, _retain: bool) -> None:
    raise BrokerError("the webhook sink does not publish")


CONTEXT = SinkContext(publish=_no_publish, logger=structlog.get_logger())


def webhook(url: str, **settings: Any) -> WebhookSink:
    """Build a webhook sink as the runtime does, signed with SECRET unless told otherwise."""
    settings.setdefault("signature_secret", SECRET)
    return WebhookConfig.model_validate({"type": "webhook", "url": url, **settings}).build(CONTEXT)


def event(customer_id: str = "c-1", *, vendor: str | None = None) -> DownstreamEvent:
    """A downstream event of a standard topic, or a customization one with `vendor`."""
    return DownstreamEvent(
        op=Op.ADD,
        kind=TopicKind.STANDARD if vendor is None else TopicKind.CUSTOMIZATION,
        tenant="acme",
        project_id="42",
        version=None if vendor is None else "v2",
        vendor=vendor,
        msg_id=f"msg-{customer_id}",
        report_ts=1661154622,
        event_ts=1661154622000,
        customer={"id": customer_id, "name": "张三", "tags": ["vip"]},
    )


def send_error(sink: WebhookSink, events: list[DownstreamEvent] | None = None) -> SinkError:
    """The SinkError that sending a batch raises."""
    with pytest.raises(SinkError) as caught:
        sink.send(events or [event()])
    return caught.value


def test_body_and_headers_are_the_contract(receiver: Receiver) -> None:
    """One POST carries {"events": [SPEC 7 objects]} as UTF-8 JSON, sized and signed."""
    sink = webhook(receiver.url, headers={"X-Tenant": "acme"})
    batch = [event("c-1"), event("c-2", vendor="海康威视")]
    try:
        sink.send(batch)
    finally:
        sink.close()
    [request] = receiver.requests
    assert request.method == "POST"
    assert request.target == f"/hooks/customers?token={QUERY_TOKEN}"
    assert json.loads(request.body.decode("utf-8")) == {"events": [e.to_dict() for e in batch]}
    assert "海康威视".encode() in request.body  # raw UTF-8, not \u escapes
    expected = "sha256=" + hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
    assert request.headers["x-bridge-signature"] == expected
    assert request.headers["content-type"] == "application/json"
    assert request.headers["content-length"] == str(len(request.body))
    assert request.headers["x-bridge-batch-size"] == "2"
    assert request.headers["x-tenant"] == "acme"
    assert request.headers["user-agent"].startswith("customer-bridge/")
    assert set(request.headers) == {
        "host",
        "accept",
        "accept-encoding",
        "connection",
        "user-agent",
        "content-type",
        "content-length",
        "x-bridge-batch-size",
        "x-bridge-signature",
        "x-tenant",
    }


def test_put_and_a_custom_signature_header() -> None:
    """`method: PUT` sends PUT; no secret means no signature header at all."""
    server = Receiver(secret=None)
    server.start()
    sink = webhook(server.url, method="put", signature_secret=None)
    try:
        sink.send([event()])
    finally:
        sink.close()
        server.stop()
    [request] = server.requests
    assert request.method == "PUT"
    assert "x-bridge-signature" not in request.headers


def test_signature_header_name_is_configurable() -> None:
    """`signature_header` renames the header; the value stays sha256=<hex>."""
    server = Receiver(secret=None)
    server.start()
    sink = webhook(server.url, signature_header="X-Hub-Signature-256")
    try:
        sink.send([event()])
    finally:
        sink.close()
        server.stop()
    [request] = server.requests
    expected = "sha256=" + hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
    assert request.headers["x-hub-signature-256"] == expected


@pytest.mark.parametrize("secret", ["not-the-secret", None], ids=["wrong", "missing"])
def test_a_bad_signature_is_refused_for_good(receiver: Receiver, secret: str | None) -> None:
    """The receiver's 401 to a wrong or missing signature is a permanent failure."""
    sink = webhook(receiver.url, signature_secret=secret)
    try:
        error = send_error(sink)
    finally:
        sink.close()
    assert error.permanent
    assert "401" in str(error)


def test_header_and_secret_come_from_the_environment(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`${NAME}` in a header value or the secret is read from the environment at load."""
    monkeypatch.setenv("HOOK_TOKEN", TOKEN)
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    cfg = parse(
        {
            "sinks": [
                {
                    "type": "webhook",
                    "url": receiver.url,
                    "headers": {"Authorization": "Bearer ${HOOK_TOKEN}"},
                    "signature_secret": "${HOOK_SECRET}",
                }
            ]
        }
    )
    (sink,) = build_sinks(cfg.sinks, CONTEXT)
    try:
        sink.send([event()])  # the receiver checks the signature with SECRET
    finally:
        sink.close()
    assert receiver.requests[0].headers["authorization"] == f"Bearer {TOKEN}"


def test_an_unset_variable_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A `${NAME}` that the environment lacks names every header (or secret) that needs it."""
    monkeypatch.delenv("HOOK_TOKEN", raising=False)
    monkeypatch.delenv("HOOK_SECRET", raising=False)
    url = "https://hooks.example.com/customers"
    sink = {
        "type": "webhook",
        "url": url,
        "headers": {"Authorization": "Bearer ${HOOK_TOKEN}"},
        "signature_secret": "${HOOK_SECRET}",
    }
    with pytest.raises(ConfigError) as caught:
        parse({"sinks": [sink]})
    assert caught.value.problems == (
        ("sinks[0].headers.Authorization", "environment variable HOOK_TOKEN is not set"),
        ("sinks[0].signature_secret", "environment variable HOOK_SECRET is not set"),
    )


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_2xx_is_taken(receiver: Receiver, status: int) -> None:
    """Any 2xx answer means the batch was taken."""
    receiver.statuses.append(status)
    sink = webhook(receiver.url)
    try:
        sink.send([event()])
    finally:
        sink.close()
    assert len(receiver.requests) == 1


@pytest.mark.parametrize("status", [408, 429, 500, 503])
def test_transient_statuses_are_retried(receiver: Receiver, status: int) -> None:
    """408, 429 and 5xx are transient, and the same batch goes through once the server recovers."""
    receiver.statuses.extend([status, 200])
    sink = webhook(receiver.url)
    try:
        error = send_error(sink)
        sink.send([event()])
    finally:
        sink.close()
    assert not error.permanent
    assert str(error) == f"webhook 127.0.0.1 answered {status}"
    assert len(receiver.requests) == 2


@pytest.mark.parametrize(
    ("status", "header", "seconds"),
    [
        (429, "7", 7.0),
        (503, "0", 0.0),
        (503, "Fri, 31 Dec 1999 23:59:59 GMT", 0.0),  # a date gone by: at once
        (503, "soon", None),  # not a delay: the backoff decides
        (503, "99999999", 24 * 3600.0),
        (400, "7", None),  # a permanent refusal is not retried at all
    ],
)
def test_retry_after_is_read_from_a_refusal(
    receiver: Receiver, status: int, header: str, seconds: float | None
) -> None:
    """A `Retry-After` of seconds or an HTTP date travels with a transient SinkError."""
    receiver.statuses.append(status)
    receiver.retry_after = header
    sink = webhook(receiver.url)
    try:
        error = send_error(sink)
    finally:
        sink.close()
    assert error.retry_after == seconds


def test_retry_after_as_a_future_date_is_the_time_until_then(receiver: Receiver) -> None:
    """An HTTP-date `Retry-After` becomes the seconds from now until that date."""
    receiver.statuses.append(503)
    receiver.retry_after = email.utils.formatdate(time.time() + 120, usegmt=True)
    sink = webhook(receiver.url)
    try:
        error = send_error(sink)
    finally:
        sink.close()
    assert error.retry_after is not None
    assert 110 <= error.retry_after <= 121


@pytest.mark.parametrize("status", [400, 401, 404, 415, 301])
def test_other_statuses_are_permanent(receiver: Receiver, status: int) -> None:
    """Other 4xx, and 3xx (redirects are not followed), are permanent."""
    receiver.statuses.append(status)
    sink = webhook(receiver.url)
    try:
        error = send_error(sink)
    finally:
        sink.close()
    assert error.permanent
    assert str(error) == f"webhook 127.0.0.1 answered {status}"
    assert len(receiver.requests) == 1  # no request to the redirect's Location


def test_a_receiver_that_is_down_is_transient() -> None:
    """Connection refused is a transient failure."""
    server = Receiver(SECRET)
    server.start()
    url = server.url
    server.stop()
    sink = webhook(url)
    try:
        error = send_error(sink)
    finally:
        sink.close()
    assert not error.permanent
    assert str(error) == "webhook 127.0.0.1 failed: ConnectError"


def test_a_slow_receiver_times_out_transiently(receiver: Receiver) -> None:
    """A receiver that answers later than `timeout` is a transient failure."""
    receiver.delay = 2.0
    sink = webhook(receiver.url, timeout=0.2)
    try:
        error = send_error(sink)
    finally:
        sink.close()
    assert not error.permanent
    assert str(error) == "webhook 127.0.0.1 failed: ReadTimeout"


def test_the_connection_is_kept_alive(receiver: Receiver) -> None:
    """Batches of one sink reuse one connection; an empty batch sends nothing."""
    sink = webhook(receiver.url)
    try:
        sink.send([event("c-1")])
        sink.send([])
        sink.send([event("c-2")])
    finally:
        sink.close()
    assert [r.headers["x-bridge-batch-size"] for r in receiver.requests] == ["1", "1"]
    assert receiver.requests[0].client_port == receiver.requests[1].client_port


def test_secrets_stay_out_of_errors_and_repr(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Error messages name the host and status only; repr shows neither secret nor URL."""
    monkeypatch.setenv("HOOK_TOKEN", TOKEN)
    config = WebhookConfig.model_validate(
        {
            "type": "webhook",
            "url": receiver.url,
            "headers": {"Authorization": "Bearer ${HOOK_TOKEN}", "X-Literal": TOKEN},
            "signature_secret": SECRET,
        }
    )
    sink = config.build(CONTEXT)
    receiver.statuses.extend([500, 400])
    try:
        errors = [send_error(sink), send_error(sink)]
    finally:
        sink.close()
    receiver.stop()
    down = webhook(receiver.url)
    errors.append(send_error(down))
    down.close()
    shown = [str(e) for e in errors] + [repr(e) for e in errors]
    shown += [repr(sink), str(sink), repr(config), str(config), sink.name]
    shown.append(json.dumps(config.model_dump(mode="json")["signature_secret"]))
    for text in shown:
        for secret in (SECRET, TOKEN, QUERY_TOKEN, "hooks/customers"):
            assert secret not in text, (secret, text)
    assert "127.0.0.1" in repr(sink)


def test_config_rejects_unknown_keys_and_bad_urls() -> None:
    """`bridge.config.parse` takes a webhook sink, rejects unknown keys and non-HTTP URLs."""
    good = {"type": "webhook", "url": "https://hooks.example.com/customers"}
    cfg = parse({"sinks": [good]})
    [sink] = cfg.sinks
    assert isinstance(sink, WebhookConfig)
    assert (sink.method, sink.timeout, sink.batch_size, sink.linger) == ("POST", 10.0, 100, 0.0)
    assert (sink.signature_header, sink.verify_tls, sink.headers) == (
        "X-Bridge-Signature",
        True,
        {},
    )
    with pytest.raises(ConfigError) as caught:
        parse({"sinks": [{**good, "retries": 3}]})
    assert (caught.value.path, caught.value.message) == ("sinks[0].retries", "unknown key")
    for bad in ("ftp://hooks.example.com/", "https:///no-host", f"https://u:{SECRET}@h.example/"):
        with pytest.raises(ConfigError) as caught:
            parse({"sinks": [{**good, "url": bad}]})
        assert caught.value.path == "sinks[0].url"
        assert SECRET not in str(caught.value)
    for key, value in (
        ("method", "PATCH"),
        ("batch_size", 0),
        ("timeout", 0),
        ("headers", {"Content-Type": "text/plain"}),
    ):
        with pytest.raises(ConfigError) as caught:
            parse({"sinks": [{**good, key: value}]})
        assert caught.value.path.startswith(f"sinks[0].{key}")
