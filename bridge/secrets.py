"""Secrets in configuration: `${NAME}` from the environment, or `*_file` keys read from disk.

`*_file` works with systemd's LoadCredential (`${CREDENTIALS_DIRECTORY}/name`) and with
container secrets mounted as files. Secret values never appear in messages.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from bridge.errors import ConfigError

ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def check_references(value: str) -> None:
    """ValueError for a `${` that does not start a well-formed `${NAME}`."""
    if ENV_REF.sub("", value).count("${"):
        raise ValueError("a '${' must start a reference like ${NAME}")


def interpolate(path: str, value: str, environ: Mapping[str, str]) -> str:
    """Replace each `${NAME}` in `value` from `environ`; ConfigError at `path` if one is unset."""
    for name in ENV_REF.findall(value):
        if name not in environ:
            raise ConfigError(path, f"environment variable {name} is not set")
    return ENV_REF.sub(lambda match: environ[match.group(1)], value)


def read_secret_file(path: str, file: Path, environ: Mapping[str, str]) -> str:
    """The secret in `file` (its name may hold `${NAME}`), without a trailing newline."""
    name = Path(interpolate(path, str(file), environ))
    try:
        text = name.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, f"cannot read {name}: {exc.strerror}") from None
    return text.rstrip("\r\n")
