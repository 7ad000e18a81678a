"""Reading a running sandbox's admin API (``/_sandbox/``, see ``consumer.sandbox.server``) from
another process, over HTTP: what ``ghl-consumer audit`` compares its expected contacts with,
and the duplicate settings it matches them by."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp
import orjson

from consumer.errors import SandboxError


async def read_contacts(
    url: str, location_ids: Iterable[str], *, timeout_s: float = 30.0
) -> dict[str, list[dict[str, Any]]]:
    """Every contact of each location from the sandbox's ``GET /_sandbox/contacts``, unmasked
    (``?unmasked=1``: the audit compares emails and phones). Raises ``SandboxError`` when it
    does not answer 200 with a contact list."""
    requests = {
        location_id: ("contacts", {"locationId": location_id, "unmasked": "1"})
        for location_id in dict.fromkeys(location_ids)
    }
    answers = await _get_all(url, requests, timeout_s)
    result: dict[str, list[dict[str, Any]]] = {}
    for location_id, body in answers.items():
        contacts = body.get("contacts") if isinstance(body, dict) else None
        if not isinstance(contacts, list):
            raise SandboxError(f"sandbox {url}: location {location_id}: no contact list")
        result[location_id] = contacts
    return result


async def read_match_priorities(
    url: str, location_ids: Iterable[str], *, timeout_s: float = 30.0
) -> dict[str, tuple[str, ...]]:
    """Each location's duplicate setting as upserts are matched by it: the identifiers
    (``email``, ``phone``) in priority order, from ``GET /_sandbox/settings``. Raises
    ``SandboxError`` when it does not answer 200 with a priority for every location."""
    body = (await _get_all(url, {"": ("settings", {})}, timeout_s))[""]
    locations = body.get("locations") if isinstance(body, dict) else None
    result: dict[str, tuple[str, ...]] = {}
    for location_id in dict.fromkeys(location_ids):
        settings = locations.get(location_id) if isinstance(locations, Mapping) else None
        duplicates = settings.get("duplicates") if isinstance(settings, Mapping) else None
        priority = duplicates.get("priority") if isinstance(duplicates, Mapping) else None
        if not isinstance(priority, list) or not all(isinstance(p, str) for p in priority):
            raise SandboxError(f"sandbox {url}: location {location_id}: no duplicate setting")
        result[location_id] = tuple(priority)
    return result


async def read_locations(url: str, *, timeout_s: float = 30.0) -> frozenset[str]:
    """The ids of the locations the sandbox serves, from ``GET /_sandbox/settings``. Raises
    ``SandboxError`` when it does not answer 200 with a location table."""
    body = (await _get_all(url, {"": ("settings", {})}, timeout_s))[""]
    locations = body.get("locations") if isinstance(body, dict) else None
    if not isinstance(locations, Mapping):
        raise SandboxError(f"sandbox {url}: /_sandbox/settings: no location table")
    return frozenset(str(location_id) for location_id in locations)


async def _get_all(
    url: str, requests: Mapping[str, tuple[str, Mapping[str, str]]], timeout_s: float
) -> dict[str, Any]:
    """``GET /_sandbox/PATH?PARAMS`` for each name -> (PATH, PARAMS), in one session; the
    decoded JSON answers by name. Raises ``SandboxError`` for an answer other than 200, a
    body that is not JSON, or a transport failure."""
    answers: dict[str, Any] = {}
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for name, (path, params) in requests.items():
                async with session.get(
                    f"{url.rstrip('/')}/_sandbox/{path}", params=params
                ) as response:
                    if response.status != 200:
                        where = f"location {name}" if name else f"/_sandbox/{path}"
                        raise SandboxError(f"sandbox {url}: {where}: HTTP {response.status}")
                    answers[name] = orjson.loads(await response.read())
    except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
        raise SandboxError(f"sandbox {url}: {exc or type(exc).__name__}") from exc
    return answers
