"""Loading the configuration: every problem at once, `${NAME}` anywhere, checks across fields."""

from __future__ import annotations

import io
import json

import pytest
import structlog

from bridge import logs
from bridge.config import parse
from bridge.errors import ConfigError
from bridge.secrets import Secret, masked_url

SINKS = [{"type": "jsonl", "path": "out.jsonl"}]


def problems(document: dict[str, object], environ: dict[str, str] | None = None) -> list[str]:
    """The YAML paths `parse` reports for `document`, in order."""
    with pytest.raises(ConfigError) as caught:
        parse(document, environ=environ or {})
    return [path for path, _ in caught.value.problems]


def test_every_problem_is_reported_at_once_with_its_path() -> None:
    """Problems in several sections and sinks come in one error, each at its YAML path, in
    the order of the file."""
    document = {
        "broker": {"port": 70000, "hots": "x"},
        "validation": {"mode": "fuzzy"},
        "sinks": [{"type": "jsonl"}, {"type": "webhook", "url": "ftp://x"}],
    }
    with pytest.raises(ConfigError) as caught:
        parse(document, environ={})
    found = dict(caught.value.problems)
    assert list(found) == [
        "broker.port",
        "broker.hots",
        "validation.mode",
        "sinks[0].path",
        "sinks[1].url",
    ]
    assert found["broker.hots"] == "unknown key"
    assert str(caught.value).startswith("5 problems:\n  ")
    assert "  sinks[1].url: the URL must start with http:// or https://" in str(caught.value)


def test_a_single_problem_reads_as_one_line() -> None:
    """One problem keeps the `path: message` form that scripts and tests grep for."""
    with pytest.raises(ConfigError) as caught:
        parse({"sinks": [{"type": "jsonl"}]}, environ={})
    assert str(caught.value) == "sinks[0].path: Field required"


def test_variables_work_in_every_string_value() -> None:
    """`${NAME}` works in any value: a host, a number, a list item, a sink setting."""
    environ = {"MQTT_HOST": "mqtt.internal", "MQTT_PORT": "8883", "TENANT": "acme", "OUT": "o"}
    cfg = parse(
        {
            "broker": {"host": "${MQTT_HOST}", "port": "${MQTT_PORT}"},
            "subscription": {"tenants": ["${TENANT}", "beta"]},
            "sinks": [{"type": "jsonl", "path": "/var/${OUT}.jsonl"}],
        },
        environ=environ,
    )
    assert (cfg.broker.host, cfg.broker.port) == ("mqtt.internal", 8883)
    assert cfg.subscription.tenants == ("acme", "beta")
    assert str(cfg.sinks[0].path) == "/var/o.jsonl"  # type: ignore[union-attr]


def test_an_unset_variable_fails_at_its_path_and_hides_nothing_else() -> None:
    """Each unset variable is reported where it is used, beside the other problems, and its
    literal text is not reported again as a wrong value."""
    found = problems(
        {
            "broker": {"host": "${NOPE_HOST}", "port": "${NOPE_PORT}"},
            "validation": {"mode": "fuzzy"},
            "sinks": SINKS,
        }
    )
    assert found == ["broker.host", "broker.port", "validation.mode"]


def test_dollar_dollar_brace_is_a_literal_and_a_stray_brace_is_an_error() -> None:
    """`$${` stands for a literal `${`; a `${` that starts no reference is a problem."""
    cfg = parse({"broker": {"client_id": "id-$${x}"}, "sinks": SINKS}, environ={})
    assert cfg.broker.client_id == "id-${x}"
    assert problems({"broker": {"client_id": "id-${"}, "sinks": SINKS}) == ["broker.client_id"]


def test_an_environment_value_is_taken_as_is() -> None:
    """A value from the environment is not interpolated a second time."""
    cfg = parse({"broker": {"client_id": "${ID}"}, "sinks": SINKS}, environ={"ID": "a${B}"})
    assert cfg.broker.client_id == "a${B}"


def test_initial_backoff_longer_than_max_backoff_is_refused() -> None:
    """Delivery backoffs must be ordered."""
    document = {"delivery": {"initial_backoff": 60, "max_backoff": 30}, "sinks": SINKS}
    with pytest.raises(ConfigError) as caught:
        parse(document, environ={})
    assert caught.value.path == "delivery"
    assert "initial_backoff (60) is longer than max_backoff (30)" in caught.value.message


def test_dedup_window_shorter_than_session_expiry_is_refused() -> None:
    """A redelivery may come as late as the broker session lives: the window must cover it."""
    document = {
        "broker": {"session_expiry": 7 * 86400},
        "spool": {"dedup_max_age": 86400},
        "sinks": SINKS,
    }
    with pytest.raises(ConfigError) as caught:
        parse(document, environ={})
    assert caught.value.path == "spool.dedup_max_age"
    assert "broker.session_expiry" in caught.value.message
    document["broker"] = {"session_expiry": 3600}
    assert parse(document, environ={}).spool.dedup_max_age == 86400


def test_a_sink_name_used_twice_points_at_the_second() -> None:
    """The second sink of a repeated name is the one reported, naming the first."""
    sinks = [
        {"type": "jsonl", "path": "a", "name": "out"},
        {"type": "log", "name": "other"},
        {"type": "jsonl", "path": "b", "name": "out"},
    ]
    with pytest.raises(ConfigError) as caught:
        parse({"sinks": sinks}, environ={})
    assert caught.value.problems == (("sinks[2].name", "'out' is already sinks[0]"),)


def test_a_secret_shows_as_stars_everywhere_but_reveal() -> None:
    """repr, str, JSON dumps and Python dumps of a Secret never hold its value."""
    cfg = parse({"broker": {"password": "${PW}"}, "sinks": SINKS}, environ={"PW": "hunter2-long"})
    password = cfg.broker.password
    assert isinstance(password, Secret)
    assert password.reveal() == "hunter2-long"
    shown = [repr(cfg), str(cfg), json.dumps(cfg.model_dump(mode="json")), repr(password)]
    shown.append(str(cfg.model_dump()))
    assert not any("hunter2" in text for text in shown)
    assert cfg.model_dump(mode="json")["broker"]["password"] == "***"


def test_a_secret_must_be_text() -> None:
    """A number where a secret goes asks to be quoted, instead of being turned into text."""
    with pytest.raises(ConfigError) as caught:
        parse({"broker": {"password": 123456}, "sinks": SINKS}, environ={})
    assert caught.value.path == "broker.password"
    assert "quote it" in caught.value.message
    assert "123456" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://h.example/p?token=abc&x=1", "https://h.example/p?token=***&x=***"),
        ("https://u:pw@h.example:8443/p", "https://u:***@h.example:8443/p"),
        ("https://tok3n@h.example/p", "https://***@h.example/p"),
        ("https://h.example/p#frag", "https://h.example/p#***"),
        ("https://h.example/p", "https://h.example/p"),
    ],
)
def test_a_url_is_shown_without_credentials_or_query_values(url: str, shown: str) -> None:
    """Userinfo, query values and the fragment of a URL are masked; host and path stay."""
    assert masked_url(url) == shown


def test_handler_options_that_name_a_credential_are_masked() -> None:
    """A python sink's options are free-form: those named like a credential dump as `***`."""
    options = {"api_token": "tok-123456", "path": "/srv/x", "db": {"password": "pw-123456"}}
    cfg = parse({"sinks": [{"type": "python", "handler": "m:C", "options": options}]}, environ={})
    shown = cfg.model_dump(mode="json")["sinks"][0]["options"]
    assert shown == {"api_token": "***", "path": "/srv/x", "db": {"password": "***"}}
    assert "tok-123456" not in repr(cfg)


def test_a_secret_logged_by_mistake_stays_masked() -> None:
    """The JSON log renders a Secret (or a config holding one) as `***`."""
    stream = io.StringIO()
    logs.configure("info", "json", stream=stream)
    try:
        cfg = parse(
            {
                "broker": {"password": "pw-in-the-log"},
                "sinks": [{"type": "webhook", "url": "https://h.example/x?token=tok-in-the-log"}],
            },
            environ={},
        )
        logs.get_logger().info("oops", password=cfg.broker.password, config=cfg, sink=cfg.sinks[0])
    finally:
        structlog.reset_defaults()
    line = stream.getvalue()
    assert "oops" in line
    assert "pw-in-the-log" not in line
    assert "tok-in-the-log" not in line


def test_unset_variables_and_wrong_values_come_in_file_order() -> None:
    """An unset variable late in the file is listed after a wrong value earlier in it."""
    document = {
        "broker": {"port": 70000},
        "delivery": {"initial_backoff": 60, "max_backoff": 30},
        "sinks": [{"type": "jsonl", "path": "${NOPE}"}],
    }
    assert problems(document) == ["broker.port", "delivery", "sinks[0].path"]


def test_an_unset_variable_in_a_list_is_not_also_a_short_list() -> None:
    """A list item whose variable is unset is reported once, not again as a list too short."""
    hook = {
        "type": "webhook",
        "url": "https://h.example/x",
        "standard_webhooks": {"secrets": ["${NOPE}"]},
    }
    assert problems({"sinks": [hook]}) == ["sinks[0].standard_webhooks.secrets[0]"]
    assert problems({"sinks": []}) == ["sinks"]
