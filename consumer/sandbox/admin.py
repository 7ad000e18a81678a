"""Reading a running sandbox's admin API (``/_sandbox/``, see ``consumer.sandbox.server``) from
another process, over HTTP: what ``ghl-consumer audit`` compares its expected contacts with."""

from __future__ import annotations

from collections.abc import Iterable
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
    result: dict[str, list[dict[str, Any]]] = {}
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for location_id in dict.fromkeys(location_ids):
                async with session.get(
                    f"{url.rstrip('/')}/_sandbox/contacts",
                    params={"locationId": location_id, "unmasked": "1"},
                ) as response:
                    if response.status != 200:
                        raise SandboxError(
                            f"sandbox {url}: location {location_id}: HTTP {response.status}"
                        )
                    body = orjson.loads(await response.read())
                contacts = body.get("contacts") if isinstance(body, dict) else None
                if not isinstance(contacts, list):
                    raise SandboxError(f"sandbox {url}: location {location_id}: no contact list")
                result[location_id] = contacts
    except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
        raise SandboxError(f"sandbox {url}: {exc or type(exc).__name__}") from exc
    return result
