"""What every subcommand does around its work, written once: the ``--config``, ``--log-level``
and ``--log-format`` flags, logging on stderr (``consumer.observe.logs``), reading the settings,
and turning the errors a command expects into one stderr line and an exit status instead of a
traceback.

A subcommand's ``main`` reads::

    def main(args: argparse.Namespace) -> int:
        configure_logging(args.log_level, log_format=args.log_format, timestamps=True)
        return run_command("ghl-consumer", lambda: work(load(args.config)), KAFKA_DOWN)

``run_command`` always maps ``ConfigError`` to ``<prog>: configuration error: <message>``, exit
2; every other expected error is a ``Failure`` the command passes. This module imports only
``consumer.config``, ``consumer.errors``, ``consumer.state.encryption`` and
``consumer.observe.logs``, so that ``ghl-consumer map`` loads neither librdkafka nor aiohttp:
a command names its adapters' errors itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from consumer.config import Settings, load_settings
from consumer.errors import ConfigError
from consumer.observe import logs
from consumer.observe.logs import LOG_FORMATS
from consumer.state.encryption import ProfileCipher

CONFIG_HELP: Final = "TOML configuration file (default: $GHL_CONFIG; the environment overrides it)"
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True, slots=True)
class Failure:
    """An error a command expects: when its body raises one of ``kinds``, ``run_command``
    prints ``<prog>: <label>: <error>`` on stderr and returns ``code``."""

    kinds: tuple[type[Exception], ...]
    label: str
    code: int


_CONFIG_FAILURE: Final = Failure((ConfigError,), "configuration error", 2)


def add_config_argument(
    parser: argparse.ArgumentParser, *, from_environment: bool = True, help: str = CONFIG_HELP
) -> None:
    """``--config FILE``; its default is ``$GHL_CONFIG`` unless ``from_environment`` is False
    (then None: environment only)."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=os.environ.get("GHL_CONFIG") if from_environment else None,
        help=help,
    )


def add_log_level_argument(parser: argparse.ArgumentParser, *, default: str) -> None:
    """``--log-level LEVEL``, one of ``LOG_LEVELS`` in any case, and ``--log-format FORMAT``
    (``json`` or ``console``); read them with ``configure_logging``."""
    parser.add_argument(
        "--log-level",
        default=default,
        type=str.upper,
        choices=LOG_LEVELS,
        help="stderr log level (default %(default)s)",
    )
    parser.add_argument(
        "--log-format",
        type=str.lower,
        choices=LOG_FORMATS,
        help="stderr log lines: JSON objects or aligned text (default: $LOG_FORMAT, else "
        "console on a terminal and json otherwise)",
    )


def configure_logging(
    level: str, *, log_format: str | None = None, timestamps: bool = False
) -> None:
    """Log to stderr at ``level`` through ``consumer.observe.logs`` (masked, ``extra=`` fields
    as keys) in ``log_format``, else ``$LOG_FORMAT``, else console on a terminal and JSON
    otherwise; with the time for the long-running commands (``timestamps``). A bad
    ``LOG_FORMAT`` exits with status 2 and one stderr line."""
    try:
        fmt = logs.log_format(log_format, os.environ, sys.stderr)
    except ValueError as exc:
        print(f"ghl-consumer: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    logs.configure_logging(level, fmt, timestamps=timestamps)


def needs_placeholder(config: str | None) -> bool:
    """True when neither a file nor ``GHL_LOCATION_ID`` configures an integration: the
    commands that need no real location (``map``, ``dlq``) then pass ``load`` a
    ``placeholder_location``."""
    return config is None and "GHL_LOCATION_ID" not in os.environ


def load(
    config: str | None,
    *,
    placeholder_location: str | None = None,
    read_secrets: bool = True,
    kafka_secrets: bool | None = None,
    profile_keys: bool | None = None,
    oauth_secrets: bool | None = None,
    token_store: bool | None = None,
    integrations_required: bool = True,
) -> Settings:
    """``load_settings`` over ``config`` and ``os.environ``; when ``needs_placeholder``,
    ``placeholder_location`` (if given) stands in for ``GHL_LOCATION_ID``. Raises ConfigError
    (``run_command`` reports it)."""
    environ = dict(os.environ)
    if placeholder_location is not None and needs_placeholder(config):
        environ["GHL_LOCATION_ID"] = placeholder_location
    return load_settings(
        config,
        environ,
        read_secrets=read_secrets,
        kafka_secrets=kafka_secrets,
        profile_keys=profile_keys,
        oauth_secrets=oauth_secrets,
        token_store=token_store,
        integrations_required=integrations_required,
    )


def profile_cipher(settings: Settings) -> ProfileCipher:
    """The profile changelog's cipher from ``[profiles]`` (no keys: values plain both ways)."""
    profiles = settings.profiles
    return ProfileCipher(profiles.keys(), profiles.encryption_key_id or None)


def stop_on_signals() -> asyncio.Event:
    """An event that SIGTERM or SIGINT sets: the long-running commands wait on it and then shut
    down in order. Call from inside the running loop (main thread)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


def run_command(prog: str, body: Callable[[], int], *failures: Failure) -> int:
    """``body()``'s exit status; a ``ConfigError`` or an error of ``failures`` (first match
    wins) becomes one stderr line, ``<prog>: ...``, and that failure's code. Anything else
    propagates with its traceback."""
    expected = (_CONFIG_FAILURE, *failures)
    try:
        return body()
    except tuple(kind for failure in expected for kind in failure.kinds) as exc:
        failure = next(f for f in expected if isinstance(exc, f.kinds))
        print(f"{prog}: {failure.label}: {exc}", file=sys.stderr)
        return failure.code
