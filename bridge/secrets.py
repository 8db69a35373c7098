"""Secrets in configuration: one type that never shows its value, `${NAME}` from the environment
in every string of the file, and `*_file` keys read from disk.

`*_file` works with systemd's LoadCredential (`${CREDENTIALS_DIRECTORY}/name`) and with
container secrets mounted as files. Secret values never appear in dumps, reprs or messages.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import GetCoreSchemaHandler, PlainSerializer
from pydantic_core import core_schema

from bridge.errors import ConfigError

MASK = "***"
# `$${` is a literal `${`; `${NAME}` a reference; any other `${` a mistake.
_TOKEN = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$\{")


class Secret:
    """A configured secret: `***` in dumps, reprs and messages; `reveal()` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The value itself, for the one place that sends it."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)

    @classmethod
    def __get_pydantic_core_schema__(
        cls, _source: Any, _handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls._coerce,
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda _value: MASK, when_used="always"
            ),
        )

    @classmethod
    def _coerce(cls, value: object) -> Secret:
        if isinstance(value, Secret):
            return value
        if not isinstance(value, str):
            # pydantic turns a ValueError (not a TypeError) into a validation error
            raise ValueError("a secret must be text (quote it in YAML)")  # noqa: TRY004
        return cls(value)


def masked_url(url: str) -> str:
    """`url` as safe to show: the password (or a lone user, often a token), query values and
    fragment replaced by `***`; scheme, host, port and path kept."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if at:
        user, colon, _password = userinfo.partition(":")
        userinfo = f"{user}:{MASK}" if colon else MASK
    netloc = f"{userinfo}@{hostport}" if at else hostport
    query = "&".join(
        f"{item.partition('=')[0]}={MASK}" if item else item for item in parts.query.split("&")
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, MASK if parts.fragment else ""))


Url = Annotated[str, PlainSerializer(masked_url, when_used="always")]
"""A URL that may carry credentials or tokens: kept as text, shown by `masked_url`."""

_SECRET_NAME = re.compile(r"pass|secret|token|key|auth|credential|cookie|signature", re.I)


def masked_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Free-form settings (a handler's options) as safe to show: the value of every key that
    names a credential (`password`, `api_key`, `token`, ...) is `***`, at any depth."""
    shown: dict[str, Any] = {}
    for key, value in options.items():
        if _SECRET_NAME.search(str(key)):
            shown[key] = MASK
        elif isinstance(value, Mapping):
            shown[key] = masked_options(value)
        else:
            shown[key] = value
    return shown


def interpolate_document(
    document: object, environ: Mapping[str, str]
) -> tuple[object, list[tuple[str, str]]]:
    """`document` with `${NAME}` replaced in every string value, and the problems found (YAML
    path, message): an unset variable, a `${` that starts no reference."""
    problems: list[tuple[str, str]] = []

    def walk(node: object, path: str) -> object:
        if isinstance(node, str):
            text, problem = _substitute(node, environ)
            if problem is not None:
                problems.append((path, problem))
            return text
        if isinstance(node, dict):
            return {key: walk(value, _join(path, key)) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(item, f"{path}[{index}]") for index, item in enumerate(node)]
        return node

    return walk(document, ""), problems


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _substitute(text: str, environ: Mapping[str, str]) -> tuple[str, str | None]:
    problem: str | None = None

    def one(match: re.Match[str]) -> str:
        nonlocal problem
        found = match.group(0)
        if found == "$${":
            return "${"
        name = match.group(1)
        if name is None:
            problem = problem or "a '${' must start a reference like ${NAME} (write $${ for '${')"
            return found
        if name not in environ:
            problem = problem or f"environment variable {name} is not set"
            return found
        return environ[name]

    return _TOKEN.sub(one, text), problem


def read_secret_file(path: str, file: Path) -> Secret:
    """The secret in `file`, without a trailing newline; ConfigError at `path` if unreadable."""
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, f"cannot read {file}: {exc.strerror}") from None
    return Secret(text.rstrip("\r\n"))
