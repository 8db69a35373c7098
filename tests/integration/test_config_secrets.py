"""`check-config` in a subprocess on a config full of secrets: none of them is printed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from databases import Postgres

EX_CONFIG = 78
# Each secret is distinct and long enough that finding it in the output cannot be chance.
SECRETS = {
    "broker_password": "brokerpw-6f1c2a",
    "bearer": "bearer-token-93ab41",
    "api_header": "header-value-55d0e2",
    "query_token": "query-token-0c7e19",
    "hmac": "hmac-secret-e4b8a0",
    "standard": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "qa_app": "qa-app-id-71f3c9",
    "qa_key": "qa-access-key-2a9d4e",
    "qa_secret": "qa-access-secret-8b1f07",
    "openapi_id": "openapi-key-id-4c6e21",
    "openapi_secret": "openapi-key-secret-d3a590",
    "mobile_key": "mobile-api-key-1e7b3f",
    "mirror_password": "mirror-pw-90c4d8",
    "env_secret": "from-environment-5a2f6c",
}


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    """A throwaway PostgreSQL cluster (trust authentication: any password is taken)."""
    server = Postgres()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def check_config(tmp_path: Path, document: object) -> subprocess.CompletedProcess[str]:
    """Write `document` as YAML and run `python -m bridge check-config` on it."""
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    env = dict(os.environ, HOOK_SECRET=SECRETS["env_secret"])
    return subprocess.run(
        [sys.executable, "-m", "bridge", "check-config", "-c", str(path)],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
        check=False,
    )


def assert_no_secret(text: str) -> None:
    """None of SECRETS (nor the base64 body of the Standard Webhooks one) is in `text`."""
    leaked = [name for name, value in SECRETS.items() if value.removeprefix("whsec_") in text]
    assert leaked == []


@pytest.mark.postgres
def test_check_config_prints_no_secret_of_any_sink(tmp_path: Path, postgres: Postgres) -> None:
    """Header values, URL tokens, passwords, platform keys and the mirror password are masked,
    while the settings that are not secret stay readable."""
    account = {"access_id": "acc", "organization_id": "org"}
    document = {
        "broker": {"username": "bridge", "password": SECRETS["broker_password"]},
        "sinks": [
            {
                "type": "webhook",
                "name": "hook",
                "url": f"https://hooks.example.com/in?token={SECRETS['query_token']}",
                "headers": {
                    "Authorization": f"Bearer {SECRETS['bearer']}",
                    "X-Api-Key": SECRETS["api_header"],
                    "X-From-Env": "${HOOK_SECRET}",
                },
                "signature_secret": SECRETS["hmac"],
                "standard_webhooks": {"secrets": [SECRETS["standard"]]},
            },
            {
                "type": "quick_audience",
                "endpoint": "https://qa.example.com",
                "app_id": SECRETS["qa_app"],
                "access_key": SECRETS["qa_key"],
                "access_secret": SECRETS["qa_secret"],
                **account,
            },
            {
                "type": "quick_audience_openapi",
                "endpoint": "https://openapi.example.com",
                "access_key_id": SECRETS["openapi_id"],
                "access_key_secret": SECRETS["openapi_secret"],
                **account,
            },
            {
                "type": "mobile_events",
                "base_url": "https://mobile.example.com",
                "api_key": SECRETS["mobile_key"],
                "app_id": "app",
                "platform": "server",
            },
            {
                "type": "mirror",
                "database": postgres.url,
                "password": SECRETS["mirror_password"],
                "table": "customers_secrets",
            },
        ],
    }
    result = check_config(tmp_path, document)
    assert result.returncode == 0, result.stderr
    assert_no_secret(result.stdout + result.stderr)
    shown = json.loads(result.stdout)
    hook = shown["sinks"][0]
    assert hook["url"] == "https://hooks.example.com/in?token=***"
    assert hook["headers"] == {"Authorization": "***", "X-Api-Key": "***", "X-From-Env": "***"}
    assert shown["broker"]["username"] == "bridge"
    assert shown["sinks"][4]["password"] == "***"


def test_a_refused_url_with_credentials_is_not_quoted(tmp_path: Path) -> None:
    """A webhook URL carrying a password is refused, and the refusal does not repeat it."""
    document = {
        "sinks": [
            {
                "type": "webhook",
                "url": f"https://user:{SECRETS['bearer']}@hooks.example.com/in",
                "headers": {"X-Api-Key": "x\n" + SECRETS["api_header"]},
            }
        ],
        "broker": {"password": 1234567, "username": SECRETS["query_token"] + "${"},
    }
    result = check_config(tmp_path, document)
    assert result.returncode == EX_CONFIG
    assert "sinks[0].url" in result.stderr
    assert "sinks[0].headers" in result.stderr
    assert "broker.password" in result.stderr
    assert "1234567" not in result.stderr
    assert_no_secret(result.stdout + result.stderr)
