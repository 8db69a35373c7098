"""The Node-RED peer: installed locally under bench/.node-red, a flow doing the bridge's job.

mqtt in (QoS 1, persistent session) -> switch (drop error topics) -> change (msg.schema = the
customer envelope's JSON Schema) -> json (parse, validate against msg.schema) -> file (append
one line per valid envelope). A catch node on the json node builds an alarm and an mqtt out
node publishes it (QoS 1) on the error topic.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from common import BENCH

from bridge.testing import free_port
from bridge.testing.recorder import LOOPBACK

NODE_RED_VERSION = "4.1.15"
PREFIX = BENCH / ".node-red"
CLIENT_ID = "bench-node-red"
FILTER = "+/+/+"

_ALARM = r"""
const p = msg.payload;
const parsed = p !== null && typeof p === "object";
const op = parsed && p.events && typeof p.events === "object" && Object.keys(p.events).length
    ? Object.keys(p.events)[0] : "unknown";
const now = Date.now();
const alarm = {
    msgId: RED.util.generateId(),
    reportTs: now,
    profile: {poiCode: "s0140001", appType: "customer", modelId: 140001},
    events: {},
    errors: msg.schemaError || [{reason: msg.error ? msg.error.message : "invalid"}],
};
const customers = parsed && p.events && p.events[op] && Array.isArray(p.events[op].customerList)
    ? p.events[op].customerList : [];
alarm.events[op + "_error"] = {
    eventTs: now, eventType: 2, code: 400,
    msg: msg.error ? msg.error.message : "invalid",
    status: op === "unknown" ? "CUSTOMER_MESSAGE_ERROR" : "CUSTOMER_" + op.toUpperCase() + "_ERROR",
    customerList: customers,
};
if (parsed && typeof p.msgId === "string") { alarm.sourceMsgId = p.msgId; }
return {topic: msg.topic.replace(/customer$/, "error-customer"), payload: alarm};
"""


def node_red_script() -> Path:
    """The red.js of the local install (None-safe: check `.exists()`)."""
    return PREFIX / "node_modules" / "node-red" / "red.js"


def ensure_installed(log: Any = print) -> Path:
    """Install node-red under bench/.node-red on first use (npm install --prefix)."""
    script = node_red_script()
    if script.exists():
        return script
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed: install Node.js 18+ or pass --skip-node-red")
    log(f"installing node-red@{NODE_RED_VERSION} under {PREFIX} (first use) ...")
    PREFIX.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            npm,
            "install",
            "--prefix",
            str(PREFIX),
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            f"node-red@{NODE_RED_VERSION}",
        ],
        check=True,
    )
    if not script.exists():
        raise RuntimeError(f"npm install finished but {script} is missing")
    return script


def installed_version() -> str:
    """The installed node-red version."""
    package = PREFIX / "node_modules" / "node-red" / "package.json"
    try:
        return str(json.loads(package.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return "?"


def node_version() -> str:
    """`node --version`."""
    node = shutil.which("node")
    if node is None:
        return "?"
    out = subprocess.run([node, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip()


def flow(port: int, out_file: Path, schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The flow, wired to the broker on `port`, writing valid envelopes to `out_file`."""
    nodes = _nodes(port, out_file, schema)
    # Node-RED takes a node without x and y for a config node: give the flow's nodes a place.
    for index, node in enumerate(nodes):
        if "z" in node:
            node.setdefault("x", 150 + 180 * index)
            node.setdefault("y", 100)
    return nodes


def _nodes(port: int, out_file: Path, schema: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"id": "bench", "type": "tab", "label": "customer bridge peer"},
        {
            "id": "broker",
            "type": "mqtt-broker",
            "name": "loopback",
            "broker": LOOPBACK,
            "port": str(port),
            "clientid": CLIENT_ID,
            "autoConnect": True,
            "usetls": False,
            "protocolVersion": "5",
            "keepalive": "60",
            "cleansession": False,
            "autoUnsubscribe": False,
            "sessionExpiry": "3600",
            "birthTopic": "",
            "closeTopic": "",
            "willTopic": "",
        },
        {
            "id": "in",
            "type": "mqtt in",
            "z": "bench",
            "name": "customer events",
            "topic": FILTER,
            "qos": "1",
            "datatype": "utf8",
            "broker": "broker",
            "nl": False,
            "rap": True,
            "rh": 0,
            "inputs": 0,
            "wires": [["route"]],
        },
        {
            "id": "route",
            "type": "switch",
            "z": "bench",
            "name": "not an error topic",
            "property": "topic",
            "propertyType": "msg",
            "rules": [
                {"t": "regex", "v": "-error-customer$", "vt": "str", "case": False},
                {"t": "else"},
            ],
            "checkall": "false",
            "repair": False,
            "outputs": 2,
            "wires": [[], ["schema"]],
        },
        {
            "id": "schema",
            "type": "change",
            "z": "bench",
            "name": "msg.schema",
            "rules": [
                {
                    "t": "set",
                    "p": "schema",
                    "pt": "msg",
                    "to": json.dumps(schema),
                    "tot": "json",
                }
            ],
            "wires": [["json"]],
        },
        {
            "id": "json",
            "type": "json",
            "z": "bench",
            "name": "parse and validate",
            "property": "payload",
            "action": "obj",
            "pretty": False,
            "wires": [["file"]],
        },
        {
            "id": "file",
            "type": "file",
            "z": "bench",
            "name": "valid envelopes",
            "filename": str(out_file),
            "filenameType": "str",
            "appendNewline": True,
            "createDir": True,
            "overwriteFile": "false",
            "encoding": "utf8",
            "wires": [[]],
        },
        {
            "id": "catch",
            "type": "catch",
            "z": "bench",
            "name": "invalid",
            "scope": ["json"],
            "uncaught": False,
            "wires": [["alarm"]],
        },
        {
            "id": "alarm",
            "type": "function",
            "z": "bench",
            "name": "alarm envelope",
            "func": _ALARM,
            "outputs": 1,
            "wires": [["out"]],
        },
        {
            "id": "out",
            "type": "mqtt out",
            "z": "bench",
            "name": "error topic",
            "topic": "",
            "qos": "1",
            "retain": "false",
            "broker": "broker",
            "wires": [],
        },
    ]


def prepare(workdir: Path, port: int, out_file: Path, schema: dict[str, Any]) -> list[str]:
    """Write settings and flow into `workdir`; return the command line that runs Node-RED."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "flows.json").write_text(json.dumps(flow(port, out_file, schema), indent=1))
    settings = {
        "flowFile": "flows.json",
        "uiHost": LOOPBACK,
        "uiPort": free_port(),
        "httpAdminRoot": False,
        "httpNodeRoot": False,
        "credentialSecret": False,
        "logging": {"console": {"level": "warn", "metrics": False, "audit": False}},
        "diagnostics": {"enabled": False, "ui": False},
        "runtimeState": {"enabled": False, "ui": False},
        "telemetry": {"enabled": False, "updateNotification": False},
        "externalModules": {"autoInstall": False},
    }
    (workdir / "settings.js").write_text("module.exports = " + json.dumps(settings) + ";\n")
    node = shutil.which("node") or "node"
    return [
        node,
        str(node_red_script()),
        "--userDir",
        str(workdir),
        "--settings",
        str(workdir / "settings.js"),
    ]
