"""Reading TOML values into typed settings, for the loader's modules: every failure is a
``ConfigError`` naming the field (``where``: ``kafka.topics``, ``integrations[0].fields``...)."""

from __future__ import annotations

import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from consumer.config.settings import Secret
from consumer.errors import ConfigError


def subtable(parent: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    """``parent[key]`` as a table (absent: empty); ConfigError naming ``where`` otherwise."""
    value = parent.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a table")
    return value


def reject_unknown_keys(table: Mapping[str, Any], known: typing.Iterable[str], where: str) -> None:
    """ConfigError for the first key of ``table`` not in ``known`` (a typo is not ignored)."""
    known = set(known)
    for key in table:
        if key not in known:
            raise ConfigError(f"{where}.{key}: unknown setting (known: {', '.join(sorted(known))})")


def string_list(value: object, where: str) -> list[str]:
    """``value`` as a list of non-empty strings, each stripped."""
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"{where}: expected a list of non-empty strings")
    return [v.strip() for v in value]


def read_secret(spec: object, where: str, environ: Mapping[str, str], read: bool) -> Secret:
    """``{ env = "NAME" }`` or ``{ file = "PATH" }``; literal strings are refused for tokens so
    they do not end up in version control."""
    if isinstance(spec, str):
        raise ConfigError(
            f'{where}: give {{ env = "NAME" }} or {{ file = "PATH" }}, not the secret itself'
        )
    if not isinstance(spec, dict) or len(spec) != 1 or not ({"env", "file"} & set(spec)):
        raise ConfigError(f'{where}: expected {{ env = "NAME" }} or {{ file = "PATH" }}')
    kind, name = next(iter(spec.items()))
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}.{kind}: expected a non-empty string")
    source = f"environment variable {name}" if kind == "env" else f"file {name}"
    if not read:
        return Secret.unread(source)
    if kind == "file":
        return Secret(read_secret_file(name, where), source, file=name)
    value = environ.get(name, "").strip()
    if not value:
        raise ConfigError(f"{where}: environment variable {name} is not set")
    return Secret(value, source)


def read_secret_file(path: str, where: str) -> str:
    """The secret held in file ``path``, stripped. ConfigError naming ``where`` and the file
    (never its content) when it cannot be read, is not UTF-8 or is empty."""
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"{where}: cannot read file {path}: {reason}") from None
    if not value:
        raise ConfigError(f"{where}: file {path} is empty")
    return value


def dotted_path(text: object, where: str) -> tuple[str, ...]:
    """A path into an event, ``properties.plan``, as its steps."""
    if not isinstance(text, str):
        raise ConfigError(f"{where}: expected a dotted path such as properties.plan")
    steps = tuple(text.strip().split("."))
    if not all(steps):
        raise ConfigError(f"{where}: {text!r} is not a dotted path such as properties.plan")
    return steps
