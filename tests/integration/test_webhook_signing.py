"""Standard Webhooks signing, checked by the reference library on a real loopback receiver."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from bridge.config import parse
from bridge.core.events import DownstreamEvent
from bridge.core.records import Op
from bridge.core.topics import TopicKind
from bridge.errors import BrokerError, ConfigError, SinkError
from bridge.sinks import SinkContext, build_sinks
from bridge.sinks.webhook import WebhookSink, delivery_id, standard_key, standard_signature
from bridge.testing import Recorder, Request

# The published vector of the Standard Webhooks libraries (libraries/python/tests).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_PAYLOAD = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
NEW_SECRET = "whsec_dGhlLW5ldy1zZWNyZXQtb2YtdGhlLXJvdGF0aW9uLTMyYg=="
OLD_SECRET = "whsec_b2xkLXNlY3JldC10aGF0LWlzLWJlaW5nLXJldGlyZWQ="


def _no_publish(_topic: str, _payload: bytes, _qos: int, _retain: bool) -> None:
    raise BrokerError("the webhook sink does not publish")


CONTEXT = SinkContext(publish=_no_publish, logger=structlog.get_logger())


class Verifier(Recorder):
    """A loopback receiver that accepts a request only if the reference library verifies it
    with one of its secrets; it answers from `statuses` first (to force retries)."""

    def __init__(self, *secrets: str) -> None:
        super().__init__(path="/hooks", status=204)
        self.webhooks = [Webhook(secret) for secret in secrets]
        self.contract = lambda request: None if self.verified(request) else 401
        self.start()

    @property
    def checked(self) -> list[tuple[dict[str, str], bytes, bool]]:
        """Each request's headers and body, and whether it verified."""
        return [(r.headers, r.body, r.status != 401) for r in self.recorded()]

    def verified(self, request: Request) -> bool:
        """Whether any of the receiver's secrets verifies the request."""
        for webhook in self.webhooks:
            try:
                webhook.verify(request.body, request.headers, json_parse=False)
            except WebhookVerificationError:
                continue
            return True
        return False


# Loopback requests must not be sent to a proxy from the environment.
pytestmark = pytest.mark.usefixtures("no_proxies")


@pytest.fixture
def new_only() -> Iterator[Verifier]:
    """A receiver that already moved to the new secret."""
    server = Verifier(NEW_SECRET)
    yield server
    server.stop()


@pytest.fixture
def old_only() -> Iterator[Verifier]:
    """A receiver still on the old secret."""
    server = Verifier(OLD_SECRET)
    yield server
    server.stop()


def sink(url: str, *secrets: str, **settings: Any) -> WebhookSink:
    """A webhook sink built from a config document, as `run` builds it."""
    document = {
        "sinks": [
            {
                "type": "webhook",
                "url": url,
                "standard_webhooks": {"secrets": list(secrets)},
                **settings,
            }
        ]
    }
    (built,) = build_sinks(parse(document, environ={}).sinks, CONTEXT)
    assert isinstance(built, WebhookSink)
    return built


def event(customer_id: str) -> DownstreamEvent:
    """A downstream event of a standard topic."""
    return DownstreamEvent(
        op=Op.EDIT,
        kind=TopicKind.STANDARD,
        tenant="acme",
        project_id="42",
        version=None,
        vendor=None,
        msg_id=f"msg-{customer_id}",
        report_ts=1_700_000_000_000,
        event_ts=1_700_000_000_000,
        customer={"id": customer_id, "remark": "note"},
    )


def test_signature_matches_the_published_vector() -> None:
    """Our signer gives the published signature, and so does the reference library."""
    key = standard_key(VECTOR_SECRET)
    assert standard_signature([key], VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_PAYLOAD) == (
        VECTOR_SIGNATURE
    )
    reference = Webhook(VECTOR_SECRET).sign(
        VECTOR_ID, datetime.fromtimestamp(VECTOR_TIMESTAMP, UTC), VECTOR_PAYLOAD.decode()
    )
    assert reference == VECTOR_SIGNATURE


def test_the_library_verifies_what_the_sink_sends(new_only: Verifier) -> None:
    """A batch sent to a real receiver carries the three headers and verifies."""
    hook = sink(new_only.url, NEW_SECRET)
    before = time.time()
    try:
        hook.send([event("c-1"), event("c-2")])
    finally:
        hook.close()
    ((headers, body, ok),) = new_only.checked
    assert ok
    assert headers["webhook-id"] == delivery_id(body)
    assert before - 1 <= int(headers["webhook-timestamp"]) <= time.time()
    assert headers["webhook-signature"].startswith("v1,")


def test_every_secret_signs_so_rotation_needs_no_flag_day(
    new_only: Verifier, old_only: Verifier
) -> None:
    """With the new and the old secret listed, receivers on either one verify the request."""
    for receiver in (new_only, old_only):
        hook = sink(receiver.url, NEW_SECRET, OLD_SECRET)
        try:
            hook.send([event("c-1")])
        finally:
            hook.close()
        ((headers, _body, ok),) = receiver.checked
        assert ok
        assert len(headers["webhook-signature"].split(" ")) == 2
    only_new = sink(old_only.url, NEW_SECRET)
    try:
        with pytest.raises(SinkError, match="401"):
            only_new.send([event("c-1")])
    finally:
        only_new.close()


def test_a_retry_and_a_redelivery_keep_the_id(new_only: Verifier) -> None:
    """The same batch sent again (after a 503, or by a restarted bridge) has the same
    `webhook-id`, so the receiver can drop the second; another batch has another id."""
    batch = [event("c-1"), event("c-2")]
    new_only.statuses.extend([503])
    hook = sink(new_only.url, NEW_SECRET)
    try:
        with pytest.raises(SinkError, match="503"):
            hook.send(batch)
        hook.send(batch)
    finally:
        hook.close()
    restarted = sink(new_only.url, NEW_SECRET)
    try:
        restarted.send(batch)
        restarted.send(batch[:1])
    finally:
        restarted.close()
    ids = [headers["webhook-id"] for headers, _body, _ok in new_only.checked]
    assert all(ok for _headers, _body, ok in new_only.checked)
    assert ids[0] == ids[1] == ids[2] != ids[3]


def test_body_hmac_and_standard_signature_can_go_together(new_only: Verifier) -> None:
    """The body HMAC header stays available beside the Standard Webhooks headers."""
    hook = sink(new_only.url, NEW_SECRET, signature_secret="legacy-secret")
    try:
        hook.send([event("c-1")])
    finally:
        hook.close()
    ((headers, body, ok),) = new_only.checked
    assert ok
    assert headers["x-bridge-signature"] == hook.signature(body)


@pytest.mark.parametrize(
    ("secrets", "settings", "path"),
    [
        (["whsec_not base64!"], {}, "sinks[0].standard_webhooks.secrets[0]"),
        ([NEW_SECRET, "whsec_c2hvcnQ="], {}, "sinks[0].standard_webhooks.secrets[1]"),
        ([], {}, "sinks[0].standard_webhooks.secrets"),
        ([NEW_SECRET], {"headers": {"Webhook-Id": "x"}}, "sinks[0].headers"),
    ],
    ids=["not-base64", "too-short", "none", "header-clash"],
)
def test_unusable_standard_settings_are_config_errors(
    secrets: list[str], settings: dict[str, Any], path: str
) -> None:
    """A secret that is not base64, shorter than 24 bytes, an empty list, or a header that
    would overwrite a signature header is refused at its path."""
    with pytest.raises(ConfigError) as caught:
        sink("https://hooks.example.com/in", *secrets, **settings)
    assert caught.value.path == path
    assert not any(secret.removeprefix("whsec_") in str(caught.value) for secret in secrets)
