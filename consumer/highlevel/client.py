"""HighLevel's contacts API over aiohttp, and what each answer means for the engine.

``HighLevelClient`` owns one ``aiohttp.ClientSession`` (pooled keep-alive connections) and sends
``POST /contacts/upsert`` and ``POST /contacts/{id}/tags`` with ``Authorization: Bearer`` and
``Version: 2021-07-28``. It never raises for an HTTP status or a transport failure: every call
returns an ``Answer`` whose ``verdict`` follows DESIGN.md section 5:

=================================  ===============  =========================================
answer                             verdict          the engine then
=================================  ===============  =========================================
2xx                                DELIVERED        completes the offsets
429                                RATE_LIMITED     pauses the location, retries
5xx, timeout, connection error     RETRY            backs off (per contact), retries
401 / 403                          UNAUTHORIZED     marks the integration unhealthy, parks
400 / 422 / other 4xx              REJECTED         dead-letters with status, message, traceId
=================================  ===============  =========================================

Tokens are passed per call and never stored in an ``Answer``, logged, or put in an exception.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

import aiohttp
import orjson

API_VERSION = "2021-07-28"
# A cap on how much of an error body is kept (HighLevel's error bodies are small JSON objects).
_MAX_MESSAGE_CHARS = 500


class Verdict(StrEnum):
    """What an answer means; also the ``outcome`` label of delivery metrics."""

    DELIVERED = "delivered"
    RATE_LIMITED = "rate_limited"
    RETRY = "retry"
    UNAUTHORIZED = "unauthorized"
    REJECTED = "rejected"


def classify(status: int | None) -> Verdict:
    """The verdict for an HTTP status; ``None`` stands for a timeout or connection error."""
    if status is None or status >= 500:
        return Verdict.RETRY
    if 200 <= status < 300:
        return Verdict.DELIVERED
    if status == 429:
        return Verdict.RATE_LIMITED
    if status in (401, 403):
        return Verdict.UNAUTHORIZED
    if status in (408, 425):  # request timeout / too early: transient by definition
        return Verdict.RETRY
    return Verdict.REJECTED


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    """Per-request limits, in seconds. ``total`` bounds a hung request."""

    connect: float = 5.0
    total: float = 15.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    """One HTTP exchange with HighLevel, reduced to what the engine, the dead-letter records
    and the debugger need. ``status`` is None when no HTTP answer arrived (``error`` says why:
    ``timeout`` or ``connection: <exception class>``). ``message`` is HighLevel's error
    message (a 422's message array joined with "; "), empty on success."""

    verdict: Verdict
    status: int | None
    latency_s: float
    trace_id: str | None = None
    message: str = ""
    error: str | None = None
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # A successful answer's JSON (its contact: personal data, so not in the repr); empty for
    # errors, whose body may echo the request (``message`` keeps what is needed, token starred).
    body: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}), repr=False)

    @property
    def contact(self) -> Mapping[str, object] | None:
        """The ``contact`` object of a successful upsert answer, if any."""
        contact = self.body.get("contact")
        return contact if isinstance(contact, dict) else None


class HighLevelClient:
    """The HTTP client. Create inside a running loop; ``await close()`` when done.

    ``max_connections`` bounds open sockets across all locations (the engine's in-flight cap is
    the real concurrency limit; this keeps connections from outgrowing it).
    """

    def __init__(
        self,
        *,
        base_url: str,
        timeouts: Timeouts = Timeouts(),
        max_connections: int = 100,
        user_agent: str = "ghl-consumer",
    ) -> None:
        self._base_url = base_url.rstrip("/")
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
        """``POST /contacts/{contact_id}/tags`` adding ``tags`` (tag mode ``add``)."""
        return await self._post(f"/contacts/{contact_id}/tags", token, {"tags": list(tags)})

    async def _post(self, path: str, token: str, body: Mapping[str, object]) -> Answer:
        started = time.perf_counter()
        try:
            async with self._session.post(
                self._base_url + path,
                data=orjson.dumps(body),
                headers={"Authorization": f"Bearer {token}"},
            ) as response:
                raw = await response.read()
                status = response.status
                headers = MappingProxyType({k: v for k, v in response.headers.items()})
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



def ignored_fields(sent: Mapping[str, object], contact: Mapping[str, object] | None) -> list[str]:
    """Names of the fields of ``sent`` (an upsert body) that HighLevel's returned ``contact``
    does not reflect: what it silently ignored (NOTES.md: a phone belonging to another contact,
    ``gender`` on an existing contact, ...). Emails compare case-insensitively, phones by their
    digits, ``tags`` as a subset (tag mode ``upsert`` replaces, so all sent tags must be there),
    custom fields by id. Names only: never values, so the result is safe to log. An answer
    without a contact (an add-tags call) ignores nothing."""
    if contact is None:
        return []
    ignored = []
    for name, value in sent.items():
        if name == "locationId":
            continue
        got = contact.get(name)
        if name == "tags":
            have = got if isinstance(got, list) else []
            if not set(value if isinstance(value, list) else []) <= set(have):
                ignored.append(name)
        elif name == "customFields":
            returned = {
                item.get("id"): item.get("value")
                for item in (got if isinstance(got, list) else [])
                if isinstance(item, dict)
            }
            for item in value if isinstance(value, list) else []:
                if isinstance(item, dict) and returned.get(item.get("id")) != item.get(
                    "field_value"
                ):
                    ignored.append(name)
                    break
        elif not _same(name, value, got):
            ignored.append(name)
    return ignored


def _same(name: str, sent: object, got: object) -> bool:
    if isinstance(sent, str) and isinstance(got, str):
        if name == "email":
            return sent.strip().lower() == got.strip().lower()
        if name == "phone":
            return _digits(sent) == _digits(got)
        return sent.strip() == got.strip()
    return sent == got


def _digits(phone: str) -> str:
    return "".join(ch for ch in phone if ch.isdigit())
