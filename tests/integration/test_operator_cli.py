"""The command as an operator meets it: its name, --version, completion, dead-letter options,
exit statuses, pipes, Ctrl-C, HEAD on the health port and a lean `run`."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from brokers import free_port
from test_bridge_run import (  # the fixtures are used by name
    STANDARD_TOPIC,
    BridgeProcess,
    bridges,  # noqa: F401
    config,
    customer,
    envelope,
    publish,
    wait_until,
)

from bridge.broker import EmbeddedBroker

ROOT = Path(__file__).resolve().parents[2]
ENTRY_POINT = Path(sys.executable).with_name("customer-bridge")
VERSION_LINE = re.compile(
    r"^customer-bridge \d+\.\d+\.\d+\S* \(commit ([0-9a-f]{7,40}(-dirty)?|unknown)\)$"
)


def cli(*args: str, cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run the installed `customer-bridge` entry point with ARGS."""
    return subprocess.run(
        [str(ENTRY_POINT), *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def lean_config(tmp_path: Path, **sections: Any) -> Path:
    """A config on a broker port nothing listens on, a log sink, spool and health in tmp_path."""
    document: dict[str, Any] = {
        "broker": {"port": free_port(), "reconnect": {"min_delay": 1, "max_delay": 2}},
        "sinks": [{"type": "log"}],
        "spool": {"path": str(tmp_path / "spool.db")},
        "health": {"port": 0},
        "logging": {"level": "debug", "format": "json"},
    }
    document.update(sections)
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


# --- the command's name and version ------------------------------------------------------------


def test_installed_entry_point_is_customer_bridge_and_prints_version_and_commit(
    tmp_path: Path,
) -> None:
    """`customer-bridge --version` (the installed script) prints the version and the commit."""
    assert ENTRY_POINT.exists(), "pip install put no customer-bridge script next to python"
    assert not ENTRY_POINT.with_name("bridge").exists(), "a `bridge` script shadows iproute2"
    result = cli("--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert VERSION_LINE.match(line), line
    if (ROOT / ".git").exists() and shutil.which("git"):
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert f"(commit {head}" in line


def test_version_prefers_the_commit_recorded_at_build_and_says_unknown_without_one(
    tmp_path: Path,
) -> None:
    """A copy of the package outside a checkout says `unknown`; a recorded COMMIT file wins."""
    shutil.copytree(ROOT / "bridge", tmp_path / "bridge", ignore=shutil.ignore_patterns("COMMIT"))
    show = [sys.executable, "-c", "from bridge import version; print(version.describe())"]
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    bare = subprocess.run(show, cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert bare.stdout.strip().endswith("(commit unknown)")
    (tmp_path / "bridge" / "COMMIT").write_text("0123456789ab\n", encoding="utf-8")
    built = subprocess.run(show, cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert built.stdout.strip().endswith("(commit 0123456789ab)")


def test_shell_completion_scripts_name_every_command(tmp_path: Path) -> None:
    """`completion bash` prints a script bash accepts that completes the commands and actions."""
    result = cli("completion", "bash", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for word in ("check-config", "dead-letters", "replay", "--skip-superseded", "--config"):
        assert word in result.stdout
    assert "_shtab_compgen_files" in result.stdout  # -c and the payload complete file names
    script = tmp_path / "customer-bridge.bash"
    script.write_text(result.stdout, encoding="utf-8")
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    assert "customer-bridge" in cli("completion", "zsh", cwd=tmp_path).stdout


def test_the_shells_offered_are_the_ones_shtab_writes_for() -> None:
    """`completion` names its shells without importing shtab at start-up: shtab writes a
    script for each of them."""
    import shtab  # noqa: PLC0415 - the comparison is the point

    from bridge.cli import SHELLS  # noqa: PLC0415

    assert set(SHELLS) <= set(shtab.SUPPORTED_SHELLS)


def test_a_run_imports_neither_httpx_nor_shtab_without_an_http_sink(tmp_path: Path) -> None:
    """What `run` loads to parse a config without an HTTP sink: not httpx, not shtab."""
    code = (
        "import sys, bridge.cli, bridge.runtime, bridge.config\n"
        "bridge.config.Config.model_validate({'sinks': [{'type': 'jsonl', 'path': 'x'}]})\n"
        "print(sorted(m for m in ('httpx', 'shtab') if m in sys.modules))\n"
    )
    found = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "[]"


# --- dead letters ---------------------------------------------------------------------------


@pytest.fixture
def three_dead_letters(
    embedded_broker: EmbeddedBroker,
    bridges: Callable[..., BridgeProcess],  # noqa: F811
) -> Path:
    """A stopped bridge's config whose spool holds three dead letters (unreadable payloads)."""
    bridge = bridges(config(embedded_broker, [{"type": "log"}]), "dead")
    bridge.start().wait_ready()
    publish(
        embedded_broker,
        *((STANDARD_TOPIC, f"not json {n}".encode()) for n in range(3)),
    )

    def stored() -> list[str] | None:
        found = cli(
            "dead-letters", "list", "-c", str(bridge.config_path), cwd=bridge.config_path.parent
        )
        lines = found.stdout.splitlines()
        return lines if len(lines) == 3 else None

    wait_until(stored, 20, lambda: "three dead letters", bridge)
    assert bridge.terminate() == 0
    return bridge.config_path


def test_dead_letters_take_the_config_option_after_the_action(three_dead_letters: Path) -> None:
    """`dead-letters list -c FILE` works as `dead-letters -c FILE list` does."""
    before = cli(
        "dead-letters", "-c", str(three_dead_letters), "list", cwd=three_dead_letters.parent
    )
    after = cli(
        "dead-letters", "list", "-c", str(three_dead_letters), cwd=three_dead_letters.parent
    )
    assert before.returncode == after.returncode == 0, after.stderr
    assert before.stdout == after.stdout
    assert len(after.stdout.splitlines()) == 3


def test_dead_letters_list_says_when_it_stops_at_the_limit(three_dead_letters: Path) -> None:
    """--limit 2 of 3 lists two and says on stderr how to see the rest; --limit 0 lists all."""
    where = three_dead_letters.parent
    first = cli("dead-letters", "list", "--limit", "2", "-c", str(three_dead_letters), cwd=where)
    assert first.returncode == 0
    ids = [json.loads(line)["id"] for line in first.stdout.splitlines()]
    assert len(ids) == 2
    assert f"--after {ids[-1]}" in first.stderr
    rest = cli(
        "dead-letters", "list", "--after", str(ids[-1]), "-c", str(three_dead_letters), cwd=where
    )
    assert len(rest.stdout.splitlines()) == 1
    assert rest.stderr == ""
    every = cli("dead-letters", "list", "--limit", "0", "-c", str(three_dead_letters), cwd=where)
    assert len(every.stdout.splitlines()) == 3
    assert every.stderr == ""
    assert "0 for all" in cli("dead-letters", "list", "--help", cwd=where).stdout


def test_unknown_dead_letter_ids_exit_2_for_show_purge_and_replay(three_dead_letters: Path) -> None:
    """show, purge and replay of an id that does not exist exit 2 and name it; known ids are
    still purged."""
    where = three_dead_letters.parent
    ids = [
        json.loads(line)["id"]
        for line in cli(
            "dead-letters", "list", "-c", str(three_dead_letters), cwd=where
        ).stdout.splitlines()
    ]
    missing = str(max(ids) + 100)
    for action in ("show", "purge", "replay"):
        result = cli("dead-letters", action, missing, "-c", str(three_dead_letters), cwd=where)
        assert result.returncode == 2, (action, result.stdout, result.stderr)
        assert f"no dead letter {missing}" in result.stderr
    mixed = cli(
        "dead-letters", "purge", str(ids[0]), missing, "-c", str(three_dead_letters), cwd=where
    )
    assert mixed.returncode == 2
    assert "purged 1" in mixed.stdout
    left = cli("dead-letters", "list", "-c", str(three_dead_letters), cwd=where)
    assert len(left.stdout.splitlines()) == 2


def test_dead_letters_on_a_missing_spool_exit_66_and_create_nothing(tmp_path: Path) -> None:
    """A mistyped spool.path: exit 66 (EX_NOINPUT) naming it, and no empty spool appears."""
    cfg = lean_config(tmp_path, spool={"path": str(tmp_path / "typo" / "spool.db")})
    result = cli("dead-letters", "list", "-c", str(cfg), cwd=tmp_path)
    assert result.returncode == 66
    assert "no spool at" in result.stderr
    assert not (tmp_path / "typo").exists()


# --- pipes, Ctrl-C, exit statuses ---------------------------------------------------------------


def test_validate_into_a_closed_pipe_ends_without_a_traceback(tmp_path: Path) -> None:
    """`validate | head`: the reader leaving ends the command quietly."""
    records = [customer(id=f"p-{n}") for n in range(2000)]  # far more than a pipe buffer
    payload = tmp_path / "big.json"
    payload.write_bytes(envelope("add", records))
    with subprocess.Popen(
        [str(ENTRY_POINT), "validate", "--topic", STANDARD_TOPIC, str(payload)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.read(10)
        proc.stdout.close()  # what `head` does once it has its lines
        err = proc.stderr.read().decode()
        status = proc.wait(30)
    assert "Traceback" not in err, err
    assert status in (0, -signal.SIGPIPE)


def test_demo_interrupted_twice_ends_without_a_traceback(tmp_path: Path) -> None:
    """Two Ctrl-C in a row (the second during the drain) end the demo without a traceback."""
    proc = subprocess.Popen(
        [str(ENTRY_POINT), "demo", "--interval", "60", "--out", str(tmp_path / "out")],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "platform publishes" in line:
            break
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    assert "Traceback" not in out
    assert proc.returncode in (0, 130)


def test_busy_health_port_exits_69_naming_the_port(tmp_path: Path) -> None:
    """A health port another process holds: exit 69 (EX_UNAVAILABLE) with the address."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        cfg = lean_config(tmp_path, health={"port": port})
        result = cli("run", "-c", str(cfg), cwd=tmp_path)
    assert result.returncode == 69, result.stderr
    assert f"127.0.0.1:{port}" in result.stderr


def test_head_on_the_health_port_answers_like_get_without_a_body(
    bridges: Callable[..., BridgeProcess],  # noqa: F811
    embedded_broker: EmbeddedBroker,
) -> None:
    """HEAD /healthz, /readyz and /metrics: GET's status and headers, no body; not 501."""
    port = free_port()
    bridge = bridges(config(embedded_broker, [{"type": "log"}], health={"port": port}))
    bridge.start().wait_ready()
    for path in ("/healthz", "/readyz", "/metrics", "/nothing"):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", path)
        get = connection.getresponse()
        body = get.read()
        connection.request("HEAD", path)
        head = connection.getresponse()
        assert head.status == get.status != 501
        assert head.getheader("Content-Type") == get.getheader("Content-Type")
        assert head.read() == b""
        assert int(head.getheader("Content-Length") or -1) >= 0
        assert body or path == "/nothing"
        connection.close()
    assert bridge.terminate() == 0


# --- a lean run ----------------------------------------------------------------------------------

_MODULES_AFTER_START = """
import os, signal, sys, threading
from bridge import cli

def report():
    loaded = sorted(m for m in sys.modules if m == "amqtt" or m.startswith("amqtt."))
    print("AMQTT_MODULES=" + ",".join(loaded), file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)

threading.Timer(2.0, report).start()
sys.exit(cli.main(["run", "-c", sys.argv[1]]))
"""


@pytest.mark.parametrize("embedded", [False, True], ids=["external-broker", "embedded"])
def test_run_imports_the_embedded_broker_only_when_configured(
    tmp_path: Path, embedded: bool
) -> None:
    """`run` against an external broker never imports amqtt; `broker.embedded: true` does."""
    cfg = lean_config(tmp_path)
    if embedded:
        document = yaml.safe_load(cfg.read_text())
        document["broker"].update(embedded=True, protocol="3.1.1")
        cfg.write_text(yaml.safe_dump(document))
    result = subprocess.run(
        [sys.executable, "-c", _MODULES_AFTER_START, str(cfg)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    found = re.search(r"^AMQTT_MODULES=(.*)$", result.stderr, re.MULTILINE)
    assert found is not None, result.stderr
    assert bool(found.group(1)) is embedded, found.group(1)


# --- one type per log key ---------------------------------------------------------------------


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"  # one numeric mapping; an int field printing 2.0 would still be a number
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def test_every_log_key_keeps_one_type_across_events(
    embedded_broker: EmbeddedBroker,
    bridges: Callable[..., BridgeProcess],  # noqa: F811
) -> None:
    """Across the events of a run fed the demo's traffic, each key has one JSON type (null
    aside), as an Elasticsearch-style mapping needs."""
    import random  # noqa: PLC0415

    from bridge.demo import traffic  # noqa: PLC0415

    refusing = {"type": "python", "name": "crm", "handler": "handlers:Refusing"}
    bridge = bridges(
        config(
            embedded_broker,
            [{"type": "log"}, refusing],
            logging={"level": "debug", "format": "json", "progress_interval": 1},
        ),
        "types",
    )
    bridge.start().wait_ready()
    rng = random.Random(14)
    publish(embedded_broker, *((topic, payload) for _what, topic, payload in traffic(rng)))
    bridge.wait_event("sink_gave_up", sink="crm")
    time.sleep(1.5)  # a progress line
    publish(embedded_broker, *((topic, payload) for _what, topic, payload in traffic(rng)))
    bridge.wait_event("progress")
    assert bridge.terminate() == 0
    seen: dict[str, dict[str, str]] = {}
    for event in bridge.events():
        for key, value in event.items():
            if value is not None:
                seen.setdefault(key, {}).setdefault(_json_type(value), event["event"])
    mixed = {key: types for key, types in seen.items() if len(types) > 1}
    assert not mixed, f"keys with several types (type: first event): {mixed}"
    assert {"message", "progress", "stopped", "sink_gave_up"} <= {
        e["event"] for e in bridge.events()
    }


_WITHOUT_AMQTT = """
import sys
sys.modules["amqtt"] = None  # what a lean install looks like to `import amqtt`: ImportError
from bridge import cli
sys.exit(cli.main(["run", "-c", sys.argv[1]]))
"""


def test_embedded_broker_without_the_extra_is_a_config_error_naming_it(tmp_path: Path) -> None:
    """broker.embedded on an install without amqtt: exit 78 saying which extra to install."""
    cfg = lean_config(tmp_path)
    document = yaml.safe_load(cfg.read_text())
    document["broker"].update(embedded=True, protocol="3.1.1")
    cfg.write_text(yaml.safe_dump(document))
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_AMQTT, str(cfg)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 78, result.stderr
    assert "customer-bridge[embedded]" in result.stderr
    assert "Traceback" not in result.stderr
