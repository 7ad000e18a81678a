"""HighLevel's contacts API over aiohttp.

``HighLevelClient`` owns one ``aiohttp.ClientSession`` (pooled keep-alive connections) and sends
``POST /contacts/upsert`` and ``POST /contacts/{id}/tags`` (and, for ``ghl-consumer forget`` and
``trace``, ``GET /contacts/search/duplicate`` and ``DELETE /contacts/{id}``) with
``Authorization: Bearer`` and ``Version: 2021-07-28``. It never raises for an HTTP status or a
transport failure: every call returns an ``Answer`` whose ``verdict``
(``consumer.highlevel.verdicts``, which also tabulates what the engine does with each)
classifies it.

Tokens are passed per call and never stored in an ``Answer``, logged, or put in an exception.

A contact id is percent-escaped into its path segment (an id of HighLevel's answer, or of a
misbehaving gateway, cannot reach another path). A response body is read up to
``max_body_bytes`` (default ``MAX_BODY_BYTES``, 1 MiB, after decompression): HighLevel's answers
are a few KiB, and a larger one (a gateway's error page, a broken or hostile proxy) is not read
further: the answer is ``RETRY`` with ``error`` saying so, and memory stays bounded.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final
from urllib.parse import quote

import aiohttp
import orjson

from consumer.highlevel.verdicts import Answer, Verdict, classify

API_VERSION = "2021-07-28"
# A cap on how much of an error body is kept (HighLevel's error bodies are small JSON objects).
_MAX_MESSAGE_CHARS = 500
MAX_BODY_BYTES: Final = 1 << 20
"""The default cap on a response body (1 MiB); a larger body is an error, not read."""
_CHUNK_BYTES: Final = 64 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    """Per-request limits, in seconds. ``total`` bounds a hung request."""

    connect: float = 5.0
    total: float = 15.0


class HighLevelClient:
    """The HTTP client. Create inside a running loop; ``await close()`` when done.

    ``max_connections`` bounds open sockets across all locations (the engine's in-flight cap is
    the real concurrency limit; this keeps connections from outgrowing it). ``max_body_bytes``
    caps a response body (see the module docstring).
    """

    def __init__(
        self,
        *,
        base_url: str,
        timeouts: Timeouts = Timeouts(),
        max_connections: int = 100,
        user_agent: str = "ghl-consumer",
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._max_body_bytes = max_body_bytes
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(total=timeouts.total, sock_connect=timeouts.connect),
            headers={
                "Version": API_VERSION,
                "Accept": "application/json",
                "Content-Type": "application/json",
                "User-Agent": user_agent,
            },
            json_serialize=lambda obj: orjson.dumps(obj).decode(),
        )

    async def close(self) -> None:
        """Close the session and its connections."""
        await self._session.close()

    async def upsert(self, *, token: str, payload: Mapping[str, object]) -> Answer:
        """``POST /contacts/upsert`` with ``payload`` as the JSON body."""
        return await self._post("/contacts/upsert", token, payload)

    async def add_tags(self, *, token: str, contact_id: str, tags: Sequence[str]) -> Answer:
        """``POST /contacts/{contact_id}/tags`` adding ``tags`` (tag mode ``add``). The id is
        percent-escaped into its segment; an empty id or a dot segment (``.``, ``..``, which
        URLs resolve away) is not sent: the answer is ``REJECTED`` with ``error`` saying so."""
        segment = _contact_segment(contact_id)
        if segment is None:
            return _unsendable(contact_id)
        return await self._post(f"/contacts/{segment}/tags", token, {"tags": list(tags)})

    async def find_by_email(self, *, token: str, location_id: str, email: str) -> Answer:
        """``GET /contacts/search/duplicate``: the location's contact with ``email`` (HighLevel's
        own matching), in ``body["contact"]`` (None when there is none)."""
        return await self._find(token, {"locationId": location_id, "email": email})

    async def find_by_phone(self, *, token: str, location_id: str, phone: str) -> Answer:
        """``GET /contacts/search/duplicate`` with ``number`` (``phone`` in E.164, its ``+``
        percent-escaped as HighLevel requires): the location's contact with that phone, as
        ``find_by_email`` answers."""
        return await self._find(token, {"locationId": location_id, "number": phone})

    async def _find(self, token: str, params: Mapping[str, str]) -> Answer:
        return await self._send("GET", "/contacts/search/duplicate", token, params=params)

    async def delete_contact(self, *, token: str, contact_id: str) -> Answer:
        """``DELETE /contacts/{contact_id}``; the id is escaped as in ``add_tags``."""
        segment = _contact_segment(contact_id)
        if segment is None:
            return _unsendable(contact_id)
        return await self._send("DELETE", f"/contacts/{segment}", token)

    async def _post(self, path: str, token: str, body: Mapping[str, object]) -> Answer:
        return await self._send("POST", path, token, data=orjson.dumps(body))

    async def _send(
        self,
        method: str,
        path: str,
        token: str,
        *,
        data: bytes | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Answer:
        started = time.perf_counter()
        try:
            async with self._session.request(
                method,
                self._base_url + path,
                data=data,
                params=params,
                headers={"Authorization": f"Bearer {token}"},
            ) as response:
                status = response.status
                headers = response.headers  # aiohttp's read-only, case-insensitive view
                raw = await self._read_capped(response)
            if raw is None:
                return Answer(
                    verdict=Verdict.RETRY,
                    status=status,
                    latency_s=time.perf_counter() - started,
                    error=f"response body over {self._max_body_bytes} bytes: not read",
                    headers=headers,
                )
        except TimeoutError:  # asyncio's and aiohttp's timeouts are TimeoutError on 3.11+
            return Answer(
                verdict=Verdict.RETRY,
                status=None,
                latency_s=time.perf_counter() - started,
                error="timeout",
            )
        except (aiohttp.ClientError, OSError) as exc:
            # The exception text may carry the URL but never the headers; keep only its class.
            return Answer(
                verdict=Verdict.RETRY,
                status=None,
                latency_s=time.perf_counter() - started,
                error=f"connection: {type(exc).__name__}",
            )
        latency = time.perf_counter() - started
        parsed = _parse_body(raw)
        trace_id = parsed.get("traceId")
        ok = 200 <= status < 300
        return Answer(
            verdict=classify(status),
            status=status,
            latency_s=latency,
            trace_id=trace_id if isinstance(trace_id, str) else None,
            message="" if ok else _error_message(parsed, raw, token),
            headers=headers,
            body=MappingProxyType(parsed if ok else {}),
        )

    async def _read_capped(self, response: aiohttp.ClientResponse) -> bytes | None:
        """The body, or None when it is over the cap (announced or read so far)."""
        cap = self._max_body_bytes
        if response.content_length is not None:
            # Announced (HighLevel's answers are): one read of a known, bounded size.
            return await response.read() if response.content_length <= cap else None
        raw = bytearray()
        async for chunk in response.content.iter_chunked(_CHUNK_BYTES):
            raw += chunk
            if len(raw) > cap:
                return None
        return bytes(raw)


def _contact_segment(contact_id: str) -> str | None:
    """``contact_id`` percent-escaped as one URL path segment; None for an empty id or a dot
    segment (``.``, ``..``), which URLs resolve away."""
    if contact_id in ("", ".", ".."):
        return None
    return quote(contact_id, safe="")


def _unsendable(contact_id: str) -> Answer:
    return Answer(
        verdict=Verdict.REJECTED,
        status=None,
        latency_s=0.0,
        error=f"contact id {contact_id!r} cannot name a contact in a URL path",
    )


def _parse_body(raw: bytes) -> dict[str, object]:
    try:
        parsed = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _error_message(parsed: Mapping[str, object], raw: bytes, token: str) -> str:
    """HighLevel's error message, bounded, with the request's ``token`` starred out: a gateway
    that echoes the bad token ("invalid token pit-...") must not put it into the logs, the
    debugger or a dead-letter header."""
    message = parsed.get("message")
    if isinstance(message, list):
        text = "; ".join(str(part) for part in message)
    elif isinstance(message, str):
        text = message
    else:
        text = raw[: _MAX_MESSAGE_CHARS + len(token)].decode("utf-8", "replace")
    if token:
        text = text.replace(token, "***")
    return text[:_MAX_MESSAGE_CHARS]
