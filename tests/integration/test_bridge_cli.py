"""The `bridge` command line in a subprocess: check-config, run with a bad config, validate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SAMPLES = REPO / "bridge" / "samples"
EXAMPLE = REPO / "config.example.yaml"
EX_CONFIG = 78

STANDARD_TOPIC = "acme/proj_42/v1-business-model-customer"
CUSTOM_TOPIC = "acme/proj_42/v2-customization-海康威视-customer"
GOOD_SINKS = "sinks: [{type: jsonl, path: out.jsonl}]\n"


def bridge(*args: str, cwd: Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m bridge ARGS`, bounded in time, capturing text output.

    tests/integration is on its path, so `handlers:` python sinks import.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        cwd=cwd,
        env=env,
        input=stdin.decode() if stdin is not None else None,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=30,
        check=False,
    )


def write(tmp_path: Path, text: str) -> Path:
    """A config file holding `text`."""
    path = tmp_path / "bridge.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# --- check-config and run with a bad config ---------------------------------------------------

BAD_CONFIGS = {
    "missing-sink-path": ("sinks: [{type: jsonl}]\n", "sinks[0].path"),
    "unknown-key": ("broker: {hots: 127.0.0.1}\n" + GOOD_SINKS, "broker.hots"),
    "port-out-of-range": ("broker: {port: 70000}\n" + GOOD_SINKS, "broker.port"),
    "bad-protocol": ("broker: {protocol: '4'}\n" + GOOD_SINKS, "broker.protocol"),
    "embedded-needs-311": ("broker: {embedded: true, protocol: '5'}\n" + GOOD_SINKS, "broker"),
    "bad-mode": ("validation: {mode: fuzzy}\n" + GOOD_SINKS, "validation.mode"),
    "bad-timezone": ("validation: {timezone: Mars/Olympus}\n" + GOOD_SINKS, "validation"),
    "unknown-sink-type": ("sinks: [{type: kafka}]\n", "sinks[0]"),
    "sink-unknown-key": ("sinks: [{type: jsonl, path: o, colour: red}]\n", "sinks[0].colour"),
    "bad-template": ("sinks: [{type: mqtt, topic: 'out/{nope}'}]\n", "sinks[0].topic"),
    "no-sinks": ("sinks: []\n", "sinks"),
    "not-a-mapping": ("- just\n- a list\n", "top level"),
    "not-yaml": ("sinks: [{type: jsonl, path: x}\n", "not valid YAML"),
}


@pytest.mark.parametrize(("text", "where"), BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_check_config_rejects_bad_config_naming_its_path(
    tmp_path: Path, text: str, where: str
) -> None:
    """check-config exits 78 (EX_CONFIG) and names the YAML path that is wrong."""
    result = bridge("check-config", "-c", str(write(tmp_path, text)), cwd=tmp_path)
    assert result.returncode == EX_CONFIG, result.stderr
    assert result.stderr.startswith("config error: ")
    assert where in result.stderr
    assert result.stdout == ""


def test_check_config_missing_file_exits_78(tmp_path: Path) -> None:
    """A config file that cannot be read is a config error (78), naming the file."""
    result = bridge("check-config", "-c", str(tmp_path / "absent.yaml"), cwd=tmp_path)
    assert result.returncode == EX_CONFIG
    assert "absent.yaml" in result.stderr


def test_check_config_accepts_example(tmp_path: Path) -> None:
    """config.example.yaml passes check-config (exit 0), which prints the effective config."""
    result = bridge("check-config", "-c", str(EXAMPLE), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["broker"]["client_id"] == "customer-bridge"
    assert shown["validation"]["mode"] == "lenient"
    assert "ok" in result.stderr
    assert "+/+/+" in result.stderr


def test_check_config_hides_password(tmp_path: Path) -> None:
    """check-config never prints the broker password."""
    text = "broker: {username: u, password: s3cr3t-pw}\n" + GOOD_SINKS
    result = bridge("check-config", "-c", str(write(tmp_path, text)), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "s3cr3t-pw" not in result.stdout + result.stderr
    assert json.loads(result.stdout)["broker"]["password"] == "***"


@pytest.mark.parametrize(
    "name", ["missing-sink-path", "unknown-key", "bad-mode", "not-yaml", "no-sinks"]
)
def test_run_with_bad_config_exits_78_at_once(tmp_path: Path, name: str) -> None:
    """`bridge run` with a bad config exits 78 without connecting, naming the YAML path."""
    text, where = BAD_CONFIGS[name]
    started = time.monotonic()
    result = bridge("run", "-c", str(write(tmp_path, text)), cwd=tmp_path)
    assert result.returncode == EX_CONFIG, result.stdout + result.stderr
    assert where in result.stderr
    assert time.monotonic() - started < 10


def test_run_with_unimportable_handler_exits_78(tmp_path: Path) -> None:
    """`bridge run` with a python sink whose handler cannot be imported exits 78."""
    text = "sinks: [{type: python, handler: 'no_such_module_here:Handler'}]\n"
    result = bridge("run", "-c", str(write(tmp_path, text)), cwd=tmp_path)
    assert result.returncode == EX_CONFIG, result.stdout + result.stderr
    assert "cannot import no_such_module_here:Handler" in result.stderr


def test_unimportable_handler_error_names_its_sink_index(tmp_path: Path) -> None:
    """The config error for an unimportable handler names `sinks[N].handler`."""
    text = "sinks:\n  - {type: jsonl, path: o.jsonl}\n  - {type: python, handler: 'nope_mod:X'}\n"
    result = bridge("run", "-c", str(write(tmp_path, text)), cwd=tmp_path)
    assert result.returncode == EX_CONFIG
    assert "sinks[1].handler" in result.stderr


def test_python_sink_options_the_handler_rejects_exit_78(tmp_path: Path) -> None:
    """A python sink whose options its handler rejects is a config error (78), not a crash."""
    text = "sinks: [{type: python, handler: 'handlers:Slow', options: {bogus: 1}}]\n"
    result = bridge("run", "-c", str(write(tmp_path, text)), cwd=tmp_path)
    assert result.returncode == EX_CONFIG, result.stderr
    assert "Traceback" not in result.stderr
    assert "sinks[0]" in result.stderr


def test_vendor_ending_in_error_names_its_path(tmp_path: Path) -> None:
    """A vendor ending in -error is refused, the error naming subscription.customization.vendors."""
    text = "subscription: {customization: {vendors: [acme-error]}}\n" + GOOD_SINKS
    result = bridge("check-config", "-c", str(write(tmp_path, text)), cwd=tmp_path)
    assert result.returncode == EX_CONFIG
    assert "subscription.customization.vendors" in result.stderr


# --- validate ---------------------------------------------------------------------------------

# sample -> (topic, forwarded records, alarmed operation or None), in lenient mode
SAMPLE_OUTCOMES: dict[str, tuple[str, int, str | None]] = {
    "standard-add": (STANDARD_TOPIC, 0, "add"),  # "age": "年龄"
    "standard-edit": (STANDARD_TOPIC, 0, "edit"),
    "standard-delete": (STANDARD_TOPIC, 1, None),
    "customization-add": (CUSTOM_TOPIC, 0, "add"),
    "customization-edit": (CUSTOM_TOPIC, 0, "edit"),
    "customization-delete": (CUSTOM_TOPIC, 1, None),
}


def test_validate_masks_personal_data_unless_revealed(tmp_path: Path) -> None:
    """`bridge validate` prints records with phones, names and ID numbers masked by default."""
    record = {
        "id": "c1",
        "projectId": "1117745722292428800",
        "name": "王小明",
        "phone": "13912345678",
        "idNumber": "11010519491231002X",
        "remark": "备用电话 139-8765-4321",
        "mobile": "13711112222",
    }
    payload = {
        "msgId": "v1",
        "reportTs": 1661154622,
        "profile": {"poiCode": "s0140001", "appType": "customer", "modelId": 140001},
        "events": {"add": {"eventTs": 1661154622000, "eventType": 1, "customerList": [record]}},
    }
    path = tmp_path / "one.json"
    path.write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")
    result = bridge("validate", "--topic", STANDARD_TOPIC, str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for value in ("王小明", "13912345678", "11010519491231002X", "139-8765-4321", "13711112222"):
        assert value not in result.stdout
    (event,) = json.loads(result.stdout)["forward"]
    assert event["customer"]["id"] == "c1"
    assert event["customer"]["projectId"] == "1117745722292428800"


def _error_topic(topic: str) -> str:
    return topic[: -len("customer")] + "error-customer"


@pytest.mark.parametrize("sample", SAMPLE_OUTCOMES)
def test_validate_sample_prints_forward_and_alarms(tmp_path: Path, sample: str) -> None:
    """`bridge validate` prints {"forward", "alarms"}; exit 0 without an alarm, 1 with one."""
    topic, forwarded, alarmed = SAMPLE_OUTCOMES[sample]
    path = SAMPLES / f"{sample}.json"
    result = bridge("validate", "--reveal", "--topic", topic, str(path), cwd=tmp_path)
    assert result.returncode == (0 if alarmed is None else 1), result.stderr
    shown: dict[str, Any] = json.loads(result.stdout)
    assert set(shown) == {"forward", "alarms"}
    assert len(shown["forward"]) == forwarded
    if alarmed is None:
        assert shown["alarms"] == []
        (event,) = shown["forward"]
        records = json.loads(path.read_text(encoding="utf-8"))["events"]["delete"]["customerList"]
        assert event["customer"] == records[0]
        assert event["vendor"] == (None if topic == STANDARD_TOPIC else "海康威视")
    else:
        (alarm,) = shown["alarms"]
        assert alarm["topic"] == _error_topic(topic)
        body = alarm["payload"]["events"][f"{alarmed}_error"]
        assert body["status"] == f"CUSTOMER_{alarmed.upper()}_ERROR"
        assert body["code"] == 400
        assert "age" in body["msg"]


def test_validate_strict_alarms_sample_delete(tmp_path: Path) -> None:
    """`bridge validate --strict` alarms the sample delete's 12-digit eventTs (exit 1)."""
    path = SAMPLES / "standard-delete.json"
    result = bridge("validate", "--strict", "--topic", STANDARD_TOPIC, str(path), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    shown = json.loads(result.stdout)
    assert shown["forward"] == []
    (alarm,) = shown["alarms"]
    assert "eventTs" in alarm["payload"]["events"]["delete_error"]["msg"]


def test_validate_reads_stdin(tmp_path: Path) -> None:
    """`bridge validate` reads the payload from stdin when no file is given."""
    payload = (SAMPLES / "standard-delete.json").read_bytes()
    result = bridge("validate", "--topic", STANDARD_TOPIC, cwd=tmp_path, stdin=payload)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["forward"]) == 1


def test_validate_refuses_non_inbound_topic(tmp_path: Path) -> None:
    """`bridge validate` on an error or unrecognised topic is a usage error (exit 2)."""
    path = SAMPLES / "standard-delete.json"
    for topic in (_error_topic(STANDARD_TOPIC), "acme/elsewhere"):
        result = bridge("validate", "--topic", topic, str(path), cwd=tmp_path)
        assert result.returncode == 2, (topic, result.stderr)
        assert result.stdout == ""


def test_example_config_round_trips_through_yaml(tmp_path: Path) -> None:
    """The config check-config prints is itself a valid config (exit 0 when checked again)."""
    shown = json.loads(bridge("check-config", "-c", str(EXAMPLE), cwd=tmp_path).stdout)
    again = write(tmp_path, yaml.safe_dump(shown, allow_unicode=True))
    result = bridge("check-config", "-c", str(again), cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_log_level_from_environment_overrides_config(tmp_path: Path) -> None:
    """BRIDGE_LOG_LEVEL overrides logging.level; a bad value is a config error (exit 78)."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "broker: {port: 1}\nsinks: [{type: log}]\nspool: {path: " + str(tmp_path / "s.db") + "}\n"
    )
    bad = subprocess.run(
        [sys.executable, "-m", "bridge", "run", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "BRIDGE_LOG_LEVEL": "loud"},
        check=False,
    )
    assert bad.returncode == 78
    assert "BRIDGE_LOG_LEVEL" in bad.stderr
