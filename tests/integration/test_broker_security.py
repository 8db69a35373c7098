"""TLS (mutual) and passwords against a real mosquitto; certificates made here with openssl."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from brokers import Mosquitto, in_ci
from test_bridge_run import (  # the fixture is used by name
    STANDARD_TOPIC,
    BridgeProcess,
    bridges,  # noqa: F401
    config,
    customer,
    envelope,
    wait_lines,
)

PASSWORD = "s3cret-for-tests"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(where: Path, name: str = "ca") -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, in `where`."""
    if shutil.which("openssl") is None:
        if in_ci():
            pytest.fail("openssl is needed for the TLS tests")
        pytest.skip("openssl is not installed")
    where.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             f"/CN={name}", "-keyout", "ca.key", "-out", "ca.crt", cwd=where)  # fmt: skip
    for role in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={role}",
                 "-keyout", f"{role}.key", "-out", f"{role}.csr", cwd=where)  # fmt: skip
        (where / f"{role}.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        _openssl("x509", "-req", "-in", f"{role}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", f"{role}.ext",
                 "-out", f"{role}.crt", cwd=where)  # fmt: skip
    return {
        n: where / n for n in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")
    }


@pytest.fixture
def secure_broker(tmp_path: Path) -> Mosquitto:
    """mosquitto with TLS, client certificates required, and a password file."""
    pki = make_pki(tmp_path / "pki")
    passwords = tmp_path / "passwd"
    passwords.write_text("")
    subprocess.run(
        ["mosquitto_passwd", "-b", str(passwords), "bridge", PASSWORD], check=True, timeout=30
    )
    passwords.chmod(0o600)
    server = Mosquitto(
        tmp_path / "mosquitto",
        extra_config=[
            f"cafile {pki['ca.crt']}",
            f"certfile {pki['server.crt']}",
            f"keyfile {pki['server.key']}",
            "require_certificate true",
            "allow_anonymous false",
            f"password_file {passwords}",
        ],
    )
    server.start()
    yield server
    server.stop()


def tls_config(server: Mosquitto, pki_dir: Path, **broker: object) -> dict[str, object]:
    """A bridge config using mutual TLS with the test PKI."""
    tls = {
        "ca_file": str(pki_dir / "ca.crt"),
        "cert_file": str(pki_dir / "client.crt"),
        "key_file": str(pki_dir / "client.key"),
    }
    settings: dict[str, object] = {"username": "bridge", "tls": tls, **broker}
    return settings


def publish_tls(server: Mosquitto, pki_dir: Path, topic: str, payload: bytes) -> None:
    """Publish one QoS 1 message over mutual TLS with the password."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="it-tls-publisher")
    client.tls_set(
        ca_certs=str(pki_dir / "ca.crt"),
        certfile=str(pki_dir / "client.crt"),
        keyfile=str(pki_dir / "client.key"),
    )
    client.username_pw_set("bridge", PASSWORD)
    client.connect(server.host, server.port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def test_mutual_tls_and_password_file(
    secure_broker: Mosquitto,
    bridges: Callable[..., BridgeProcess],  # noqa: F811
    tmp_path: Path,
) -> None:
    """With the right CA, client certificate and a password read from a file, records flow."""
    secret = tmp_path / "credentials" / "broker-password"
    secret.parent.mkdir()
    secret.write_text(PASSWORD + "\n")
    out = tmp_path / "out.jsonl"
    cfg = config(
        secure_broker,
        [{"type": "jsonl", "path": str(out)}],
        broker=tls_config(secure_broker, tmp_path / "pki", password_file=str(secret)),
    )
    bridge = bridges(cfg).start().wait_ready()
    publish_tls(secure_broker, tmp_path / "pki", STANDARD_TOPIC, envelope("add", [customer()]))
    (line,) = wait_lines(out, 1, bridge)
    assert line["customer"]["id"] == "c-1"
    assert PASSWORD not in bridge.log()


def test_password_from_environment(
    secure_broker: Mosquitto,
    bridges: Callable[..., BridgeProcess],  # noqa: F811
    tmp_path: Path,
) -> None:
    """`password: ${NAME}` is read from the environment and never logged."""
    cfg = config(
        secure_broker,
        [{"type": "log"}],
        broker=tls_config(secure_broker, tmp_path / "pki", password="${BROKER_PASSWORD}"),
    )
    bridge = bridges(cfg).start(BROKER_PASSWORD=PASSWORD).wait_ready()
    assert PASSWORD not in bridge.log()


@pytest.mark.parametrize("fault", ["wrong_ca", "wrong_password"])
def test_refused_connection_logs_once_and_retries(
    secure_broker: Mosquitto,
    bridges: Callable[..., BridgeProcess],  # noqa: F811
    tmp_path: Path,
    fault: str,
) -> None:
    """A wrong CA or a wrong password gives one clear error line and retries with backoff:
    no crash, no busy loop."""
    pki = tmp_path / "pki"
    broker = tls_config(secure_broker, pki, password=PASSWORD)
    if fault == "wrong_ca":
        other = make_pki(tmp_path / "other-pki", name="someone-else")
        broker["tls"] = {**broker["tls"], "ca_file": str(other["ca.crt"])}  # type: ignore[dict-item]
    else:
        broker["password"] = "not-the-password"
    cfg = config(secure_broker, [{"type": "log"}], broker=broker)
    bridge = bridges(cfg).start()
    bridge.wait_event("connect_failed" if fault == "wrong_ca" else "connect_refused")
    time.sleep(4)  # a few retries at min_delay 1 s
    assert bridge.running, bridge.log()
    errors = [e for e in bridge.events() if e.get("level") == "error"]
    assert len(errors) == 1, errors
    attempts = bridge.events("connect_failed") + bridge.events("connect_refused")
    assert 2 <= len(attempts) <= 8, f"{len(attempts)} attempts in ~4 s: not a capped backoff"
    assert "not-the-password" not in bridge.log()
    assert not bridge.events("subscribed")
    if fault == "wrong_ca":
        assert "CERTIFICATE_VERIFY_FAILED" in errors[0]["reason"]
