"""``ghl-consumer sandbox``: serve the HighLevel emulator (``consumer.sandbox``) until SIGINT or
SIGTERM. The first stdout line is the base URL (``consumer.sandbox.process`` reads it); the
options set the sandbox's locations, rate limits, duplicate matching (and the race mode), fault
injection and custom field definitions.

Exit status: 0 after a signal, 2 when the options are invalid (one stderr line).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any, Final

import orjson

from consumer.commands.preamble import add_log_level_argument, configure_logging, stop_on_signals
from consumer.sandbox.custom_fields import FieldDefinition, parse_definitions
from consumer.sandbox.oauth import OAuthSettings
from consumer.sandbox.server import run_sandbox
from consumer.sandbox.settings import IDENTIFIERS, DuplicateSettings, Faults, RateLimits

DEFAULT_PORT: Final = 8900
DEMO_LOCATION: Final = ("ve9EPM428h8vShlRW1KT", "sandbox-token")
"""Served when no location is configured on the command line."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ghl-consumer sandbox`` (``docs/highlevel.md``, "Sandbox fidelity")."""
    defaults = RateLimits()
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default %(default)s: loopback only, since the admin API under "
        "/_sandbox/ has no authentication)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help="port (default %(default)s; 0 picks a free one). The first stdout line is the URL.",
    )
    parser.add_argument(
        "--location",
        action="append",
        default=[],
        type=_location_argument,
        metavar="LOCATION_ID:TOKEN",
        help="a location and a token valid for it only (repeatable; default "
        f"{DEMO_LOCATION[0]}:{DEMO_LOCATION[1]})",
    )
    limits = parser.add_argument_group("rate limits (per location)")
    limits.add_argument(
        "--burst", type=int, default=defaults.burst, help="requests per window (%(default)s)"
    )
    limits.add_argument(
        "--interval-ms", type=int, default=defaults.interval_ms, help="window length (%(default)s)"
    )
    limits.add_argument(
        "--daily", type=int, default=defaults.daily, help="requests per UTC day (%(default)s)"
    )
    limits.add_argument(
        "--unlimited", action="store_true", help="count and report, but never answer 429"
    )
    limits.add_argument(
        "--retry-after",
        action="store_true",
        help="add Retry-After to 429 answers (HighLevel does not document one)",
    )
    matching = parser.add_argument_group("duplicate contacts (per location)")
    matching.add_argument(
        "--duplicate-priority",
        type=_priority_argument,
        default=IDENTIFIERS,
        metavar="email,phone",
        help="identifiers matched, in priority order (default email,phone)",
    )
    matching.add_argument(
        "--allow-duplicates",
        action="store_true",
        help="location allows duplicates (honours createNewIfDuplicateAllowed)",
    )
    matching.add_argument(
        "--race-window-ms",
        type=float,
        default=0.0,
        help="race mode: an upsert that finds no contact waits this long, then creates one "
        "without looking again, so concurrent upserts for one new email or phone create "
        "duplicates as the live API can (default 0: off)",
    )
    faults = parser.add_argument_group("fault injection (per location, changeable at runtime)")
    faults.add_argument("--fail-rate", type=float, default=0.0, help="share answered 5xx")
    faults.add_argument("--fail-status", type=int, default=500, help="status of those answers")
    faults.add_argument("--latency-ms", type=float, default=0.0, help="delay added to answers")
    faults.add_argument("--hang-rate", type=float, default=0.0, help="share never answered")
    faults.add_argument(
        "--reset-rate", type=float, default=0.0, help="share cut mid-response (after applying)"
    )
    faults.add_argument("--seed", type=int, default=None, help="seed of the fault draws")
    fields = parser.add_argument_group("custom fields (per location, changeable at runtime)")
    fields.add_argument(
        "--custom-fields",
        type=Path,
        default=None,
        metavar="FILE",
        help="JSON definitions for every location, as GET /locations/{id}/customFields answers "
        '({"customFields": [{"id", "dataType", "picklistOptions"?}]}): unknown ids are then '
        "dropped and values converted by type (default: any field is stored as sent)",
    )
    oauth_defaults = OAuthSettings()
    oauth = parser.add_argument_group(
        "OAuth app (installed in one company over every location served)"
    )
    oauth.add_argument("--oauth-client-id", default=oauth_defaults.client_id)
    oauth.add_argument("--oauth-client-secret", default=oauth_defaults.client_secret)
    oauth.add_argument("--oauth-app-id", default=oauth_defaults.app_id)
    oauth.add_argument("--oauth-company", default=oauth_defaults.company_id, help="company id")
    oauth.add_argument(
        "--oauth-locations",
        type=int,
        default=0,
        metavar="N",
        help="N more locations in the installation (oauth-location-01...), reachable only "
        "with OAuth tokens (default 0)",
    )
    oauth.add_argument(
        "--access-token-ttl",
        type=float,
        default=oauth_defaults.access_ttl_s,
        metavar="SECONDS",
        help="access token lifetime (%(default)s; PUT /_sandbox/oauth changes it)",
    )
    oauth.add_argument(
        "--refresh-token-ttl",
        type=float,
        default=oauth_defaults.refresh_ttl_s,
        metavar="SECONDS",
        help="refresh token lifetime (%(default)s)",
    )
    parser.add_argument(
        "--state-file", type=Path, default=None, help="load contacts from / save them to this file"
    )
    parser.add_argument(
        "--request-log-size", type=int, default=10_000, help="requests kept for /_sandbox/requests"
    )
    add_log_level_argument(parser, default="WARNING")


def main(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; print the base URL as the first stdout line. Exit code 0,
    or 2 when the settings are invalid."""
    configure_logging(args.log_level, log_format=args.log_format, timestamps=True)
    try:
        limits = RateLimits(args.burst, args.interval_ms, args.daily, enforced=not args.unlimited)
        faults = Faults(
            fail_rate=args.fail_rate,
            fail_status=args.fail_status,
            latency_ms=args.latency_ms,
            hang_rate=args.hang_rate,
            reset_rate=args.reset_rate,
        )
        duplicates = DuplicateSettings(
            args.allow_duplicates, args.duplicate_priority, args.race_window_ms
        )
        custom_fields = _custom_fields(args.custom_fields)
        oauth = OAuthSettings(
            client_id=args.oauth_client_id,
            client_secret=args.oauth_client_secret,
            app_id=args.oauth_app_id,
            company_id=args.oauth_company,
            access_ttl_s=args.access_token_ttl,
            refresh_ttl_s=args.refresh_token_ttl,
        )
        if args.oauth_locations < 0:
            raise ValueError("--oauth-locations must not be negative")
    except (ValueError, OSError) as error:
        print(f"ghl-consumer sandbox: {error}", file=sys.stderr)
        return 2
    locations: list[tuple[str, str]] = args.location or [DEMO_LOCATION]
    if not args.location:
        print(
            f"no --location given: serving {DEMO_LOCATION[0]} with token {DEMO_LOCATION[1]}",
            file=sys.stderr,
        )
    asyncio.run(
        _serve(
            args.host,
            args.port,
            locations=locations,
            limits=limits,
            duplicates=duplicates,
            faults=faults,
            custom_fields=custom_fields,
            retry_after=args.retry_after,
            state_file=args.state_file,
            seed=args.seed,
            request_log_size=args.request_log_size,
            oauth=oauth,
            oauth_locations=args.oauth_locations,
        )
    )
    return 0


async def _serve(host: str, port: int, **options: Any) -> None:
    stop = stop_on_signals()
    async with run_sandbox(host, port, **options) as sandbox:
        print(sandbox.url, flush=True)
        ids = ", ".join(sorted(sandbox.state.locations))
        print(f"sandbox listening on {sandbox.url} for locations {ids}", file=sys.stderr)
        await stop.wait()


def _custom_fields(path: Path | None) -> list[FieldDefinition] | None:
    """The definitions in ``path`` (None without one). OSError when unreadable, ValueError when
    not ``{"customFields": [...]}`` JSON."""
    if path is None:
        return None
    try:
        document = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as error:
        raise ValueError(f"{path}: not JSON ({error})") from None
    if not isinstance(document, dict) or not isinstance(document.get("customFields"), list):
        raise ValueError(f'{path}: expected {{"customFields": [...]}}')
    definitions = parse_definitions(document["customFields"])
    return list(definitions.values()) if definitions is not None else None


def _location_argument(text: str) -> tuple[str, str]:
    location_id, _, token = text.partition(":")
    if not location_id or not token:
        raise argparse.ArgumentTypeError("expected LOCATION_ID:TOKEN")
    return location_id, token


def _priority_argument(text: str) -> tuple[str, ...]:
    priority = tuple(part.strip() for part in text.split(",") if part.strip())
    try:
        DuplicateSettings(priority=priority)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return priority
