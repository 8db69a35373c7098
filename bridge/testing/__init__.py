"""Test doubles shipped with the package, for our tests and for integrators' own.

One module a double: `connection` (an in-memory broker connection), `recorder` (a loopback
HTTP server that records requests), a stand-in per platform (`quick_audience`,
`quick_audience_openapi`, `mobile_events`) on the shared `standin`, `mosquitto` (a real
broker in a subprocess) and `process` (a real `bridge run`). See docs/testing.md.
The runtime never imports this package (an import-linter contract says so).
"""

from bridge.testing.connection import FakeConnection
from bridge.testing.mobile_events import MOBILE_PATHS, MobileEventsStandIn
from bridge.testing.mosquitto import Mosquitto, MosquittoMissing, free_port
from bridge.testing.process import BridgeProcess, wait_until
from bridge.testing.quick_audience import QUICK_AUDIENCE_PATH, QuickAudienceStandIn
from bridge.testing.quick_audience_openapi import QuickAudienceOpenApiStandIn
from bridge.testing.recorder import Answer, Recorder, Request
from bridge.testing.standin import Refusal, StandIn

__all__ = [
    "MOBILE_PATHS",
    "QUICK_AUDIENCE_PATH",
    "Answer",
    "BridgeProcess",
    "FakeConnection",
    "MobileEventsStandIn",
    "Mosquitto",
    "MosquittoMissing",
    "QuickAudienceOpenApiStandIn",
    "QuickAudienceStandIn",
    "Recorder",
    "Refusal",
    "Request",
    "StandIn",
    "free_port",
    "wait_until",
]
