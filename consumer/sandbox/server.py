"""The sandbox's HTTP side: HighLevel's contact endpoints and admin endpoints
(``ghl-consumer sandbox``, its command line, is ``consumer.commands.sandbox``).
Over 500 lines on purpose: one ``Sandbox`` holds a request's whole path (admission, endpoint,
log), which reads best in one place; the pure rules are in ``state``, ``schema`` and ``settings``.

API (HighLevel's, ``Version: 2021-07-28``, ``Authorization: Bearer <token>``):
  ``POST /contacts/upsert``, ``POST /contacts/{contactId}/tags``, ``GET /contacts/{contactId}``.
Admin (no auth; bound to loopback by default, ``--host`` changes it): under ``/_sandbox/``, see
:meth:`Sandbox.app`. Its changes (``PUT`` / ``POST``) need ``Content-Type: application/json``
(else 415), so a web page cannot make a browser send one (an HTML form cannot set that type, and
a script's cross-origin JSON request needs a CORS preflight the sandbox never grants). Its
listings mask email and phone (``s***@example.com``, ``+1******0142``: contacts, and request
bodies in the request log) unless ``?unmasked=1`` asks for them as stored (the audit does).

Each API request passes, in order: the Version header (401), the token (401), the token's scope
(401), the location's rate window (429), fault injection (latency, then hang / 5xx / reset), then
the endpoint's own rules (400 body, 403 location, 422 schema and custom fields, 400 permanent
DND; in race mode an upsert that finds no contact waits ``raceWindowMs`` before creating one,
see ``DuplicateSettings``). Only 2xx answers carry a
``traceId`` (error bodies quoted in highlevel-api-docs#262 and #213 have none); every answer past
the scope check carries the five ``X-RateLimit-*`` headers (a 401 is refused before any location
budget is counted, so none).

Auth and version answers, as callers report them from the live API (docs/highlevel.md, "Known
pitfalls" and "Sandbox fidelity"):
- Unknown or missing token: 401 ``{"statusCode":401,"message":"Invalid JWT"}``
  (highlevel-api-docs#213). An expired OAuth Location token too; its request log entry then
  names the location it was issued for (``tokenLocationId``; never the token).
- A known token without the endpoint's scope (``contacts.write`` for the upsert and the tags
  endpoint, ``contacts.readonly`` for ``GET /contacts/{id}``): 401 ``The token is not authorized
  for this scope.`` (live reports; not 403). Scopes are set per token with ``PUT
  /_sandbox/scopes``; a token has both by default.
- Missing Version header: 401 ``version header was not found.``; another value: 401 ``version
  header is invalid`` (callers' probes, 2026-08). Checked before the token, as a gateway would
  (a sandbox choice: the live order is unreported). The body shape, ``statusCode`` and
  ``message`` only, is the sandbox's choice (the ``Invalid JWT`` one).

Sandbox choices where HighLevel documents nothing:
- 429 body ``{"statusCode":429,"message":"Too Many Requests","error":"Too Many Requests"}``, the
  same for burst and daily exhaustion (tell them apart by ``X-RateLimit-Daily-Remaining: 0``);
  ``Retry-After`` (whole seconds until the window or the UTC day ends) only with ``retry_after``.
- A contact id unknown to the location: 400 ``Contact not found``; a contact of another
  location: 403, like a ``locationId`` the token does not own.
- An update that would lift a permanent DND (``state.PermanentDnd``): 400
  ``{"statusCode":400,"message":"Not authorized to update permanent dnd setting for SMS",
  "error":"Bad Request"}``, nothing applied. The message is HighLevel's (a caller's live report,
  2026-10); the status is the sandbox's choice: the report does not give it (not 401/403, which
  would read as a token problem).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from consumer.core.normalise import mask_email, mask_phone
from consumer.sandbox.custom_fields import FieldDefinition, convert, parse_definitions
from consumer.sandbox.oauth import (
    OAuthRefused,
    OAuthSettings,
    OAuthState,
    installation_locations,
)
from consumer.sandbox.rate_window import RateDecision
from consumer.sandbox.schema import (
    BadRequest,
    Unprocessable,
    e164,
    parse_object,
    validate_dnd_settings,
    validate_tags,
    validate_upsert,
)
from consumer.sandbox.settings import (
    DuplicateSettings,
    FaultKind,
    Faults,
    RateLimits,
)
from consumer.sandbox.state import (
    Contact,
    Location,
    PermanentDnd,
    SandboxState,
    iso_time,
)

logger = logging.getLogger(__name__)

API_VERSION = "2021-07-28"

_JSON = "application/json; charset=utf-8"
_INVALID_JWT = {"statusCode": 401, "message": "Invalid JWT"}
_NO_SCOPE = {"statusCode": 401, "message": "The token is not authorized for this scope."}
_NO_VERSION = {"statusCode": 401, "message": "version header was not found."}
_BAD_VERSION = {"statusCode": 401, "message": "version header is invalid"}
_READ, _WRITE = "contacts.readonly", "contacts.write"
_FORBIDDEN = {"statusCode": 403, "message": "The token does not have access to this location."}
_BAD_REQUEST = {"statusCode": 400, "message": "Bad Request"}
_NOT_FOUND = {"statusCode": 400, "message": "Contact not found"}
_TOO_MANY = {"statusCode": 429, "message": "Too Many Requests", "error": "Too Many Requests"}
_FAILED = {"statusCode": 500, "message": "Internal server error"}

_Handler = Callable[[web.Request, "_Admitted"], Awaitable[web.Response]]


@dataclass(frozen=True, slots=True)
class _Admitted:
    """A request that passed version, token and rate checks, ready for its endpoint."""

    location: Location
    trace_id: str
    headers: dict[str, str]
    fault: FaultKind
    now: float


class Sandbox:
    """One sandbox: its state, request log and aiohttp application.

    Build it, then serve :meth:`app` (``run_sandbox`` does both). ``url`` is set once listening.
    ``clock`` gives epoch seconds (tests move it); ``seed`` makes fault draws reproducible.
    In-process callers may read ``state`` directly and change settings with :meth:`configure`.
    """

    def __init__(
        self,
        state: SandboxState,
        *,
        clock: Callable[[], float] = time.time,
        seed: int | None = None,
        retry_after: bool = False,
        request_log_size: int = 10_000,
        state_file: Path | None = None,
        oauth: OAuthState | None = None,
    ) -> None:
        self.state = state
        self.oauth = oauth or OAuthState(OAuthSettings(), list(state.locations))
        self.url = ""
        self.retry_after = retry_after
        self.state_file = state_file
        self.requests: deque[dict[str, Any]] = deque(maxlen=request_log_size)
        self.unauthorized = 0
        self._clock = clock
        self._random = random.Random(seed).random
        self._stopping = asyncio.Event()
        self._saved_changes = -1

    def configure(
        self,
        location_id: str | None = None,
        *,
        limits: RateLimits | None = None,
        duplicates: DuplicateSettings | None = None,
        faults: Faults | None = None,
    ) -> None:
        """Replace settings of one location, or of all when ``location_id`` is None.

        KeyError for an unknown location. Takes effect on the next request.
        """
        targets = (
            [self.state.locations[location_id]]
            if location_id is not None
            else list(self.state.locations.values())
        )
        for location in targets:
            if limits is not None:
                location.limits = limits
            if duplicates is not None:
                location.duplicates = duplicates
            if faults is not None:
                location.faults = faults

    def contacts(self, location_id: str) -> list[dict[str, Any]]:
        """The location's contacts as the API renders them (KeyError for an unknown location)."""
        return [c.to_json() for c in self.state.locations[location_id].contacts.values()]

    def app(self) -> web.Application:
        app = web.Application(middlewares=[_admin_changes_are_json])
        app.router.add_post("/contacts/upsert", self._api(self._upsert, _WRITE))
        app.router.add_post("/contacts/{contactId}/tags", self._api(self._add_tags, _WRITE))
        app.router.add_get("/contacts/{contactId}", self._api(self._get_contact, _READ))
        app.router.add_delete("/contacts/{contactId}", self._api(self._delete_contact, _WRITE))
        app.router.add_get(
            "/contacts/search/duplicate", self._api(self._search_duplicate, _READ)
        )
        app.router.add_post("/oauth/token", self._oauth_token)
        app.router.add_post("/oauth/locationToken", self._oauth_location_token)
        app.router.add_get("/oauth/installedLocations", self._oauth_installed_locations)
        app.router.add_post("/oauth/reconnect", self._oauth_reconnect)
        app.router.add_get("/_sandbox/oauth", self._admin_oauth)
        app.router.add_put("/_sandbox/oauth", self._admin_oauth_update)
        app.router.add_post("/_sandbox/oauth/code", self._admin_oauth_code)
        app.router.add_post("/_sandbox/oauth/invalidate", self._admin_oauth_invalidate)
        app.router.add_post("/_sandbox/oauth/uninstall", self._admin_oauth_uninstall)
        app.router.add_get("/_sandbox/contacts", self._admin_contacts)
        app.router.add_get("/_sandbox/requests", self._admin_requests)
        app.router.add_get("/_sandbox/counters", self._admin_counters)
        app.router.add_get("/_sandbox/settings", self._admin_settings)
        app.router.add_put("/_sandbox/limits", self._admin_update)
        app.router.add_put("/_sandbox/duplicates", self._admin_update)
        app.router.add_put("/_sandbox/faults", self._admin_update)
        app.router.add_put("/_sandbox/scopes", self._admin_scopes)
        app.router.add_put("/_sandbox/dnd", self._admin_dnd)
        app.router.add_put("/_sandbox/custom-fields", self._admin_custom_fields)
        app.router.add_post("/_sandbox/reset-daily", self._admin_reset_daily)
        app.router.add_post("/_sandbox/reset", self._admin_reset)
        app.router.add_post("/_sandbox/save", self._admin_save)
        app.on_shutdown.append(self._release_hangs)
        return app

    # -- state file ------------------------------------------------------------------------

    def load(self) -> None:
        """Restore contacts and daily usage from ``state_file`` if it exists (startup)."""
        if self.state_file is None or not self.state_file.exists():
            return
        skipped = self.state.restore(orjson.loads(self.state_file.read_bytes()))
        if skipped:
            logger.warning("state file has unconfigured locations, skipped: %s", skipped)
        self._saved_changes = self.state.changes

    async def save(self) -> bool:
        """Write the state file (atomically) if anything changed since the last save.

        Serialises on the loop (consistent snapshot), writes in a thread. Returns whether it wrote.
        """
        if self.state_file is None or self.state.changes == self._saved_changes:
            return False
        changes = self.state.changes
        data = orjson.dumps(self.state.snapshot())
        await asyncio.to_thread(_write_atomically, self.state_file, data)
        self._saved_changes = changes
        return True

    async def autosave(self, interval: float) -> None:
        """Save every ``interval`` seconds while anything changes; runs until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.save()
            except OSError:
                logger.exception("could not write the sandbox state file")

    # -- API -------------------------------------------------------------------------------

    def _api(
        self, handler: _Handler, scope: str
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """Serve ``handler`` to requests whose token holds ``scope``."""

        async def serve(request: web.Request) -> web.StreamResponse:
            admitted = await self._admit(request, scope)
            if isinstance(admitted, web.StreamResponse):
                return admitted
            fault = admitted.fault
            location = admitted.location
            if fault is FaultKind.HANG:
                self._log(request, location.id, None, admitted.trace_id, fault="hang")
                await self._stopping.wait()
                _abort(request)
                return web.Response(status=503)  # never reaches the client: reset above
            if fault is FaultKind.FAIL:
                status = location.faults.fail_status
                body = {**_FAILED, "statusCode": status}
                self._log(request, location.id, status, admitted.trace_id, fault="fail")
                return _json(status, body, admitted.headers)
            response = await handler(request, admitted)
            if fault is FaultKind.RESET:
                return await _cut(request, response)
            return response

        return serve

    async def _admit(self, request: web.Request, scope: str) -> _Admitted | web.Response:
        trace_id = str(uuid.uuid4())
        version = request.headers.get("Version")
        if version != API_VERSION:
            self._log(request, None, 401, trace_id)
            return _json(401, _NO_VERSION if version is None else _BAD_VERSION, {})
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        now = self._clock()
        location, allowed = (
            self._authorise(token, scope, now) if scheme == "Bearer" else (None, False)
        )
        if location is None:
            self.unauthorized += 1
            issued_to = self.oauth.issued_to(token) if token else None
            extra = {} if issued_to is None else {"tokenLocationId": issued_to}
            self._log(request, None, 401, trace_id, **extra)
            return _json(401, _INVALID_JWT, {})
        if not allowed:
            self._log(request, location.id, 401, trace_id, missingScope=scope)
            return _json(401, _NO_SCOPE, {})
        decision = location.rate.take(now, location.limits)
        headers = _rate_headers(decision)
        if not decision.allowed:
            location.count(f"rateLimited.{decision.exhausted}")
            if self.retry_after:
                headers["Retry-After"] = str(max(1, math.ceil(decision.retry_after)))
            self._log(request, location.id, 429, trace_id)
            return _json(429, _TOO_MANY, headers)
        faults = location.faults
        fault = FaultKind.NONE
        if faults.active:
            fault = faults.pick(self._random())
            if fault is not FaultKind.NONE:
                location.count(f"fault.{fault.value}")
            if faults.latency_ms:
                await asyncio.sleep(faults.latency_ms / 1000)
        return _Admitted(location, trace_id, headers, fault, now)

    def _authorise(self, token: str, scope: str, now: float) -> tuple[Location | None, bool]:
        """The location ``token`` reaches (a Private Integration token, or an unexpired OAuth
        Location token) and whether it holds ``scope``; (None, False) for any other token (an
        expired one, a Company token)."""
        location = self.state.location_for_token(token)
        if location is not None:
            return location, self.state.has_scope(token, scope)
        grant = self.oauth.access(token, now)
        if grant is None or grant.location_id is None:
            return None, False
        return self.state.locations[grant.location_id], scope in grant.scopes

    async def _upsert(self, request: web.Request, admitted: _Admitted) -> web.Response:
        location, trace_id = admitted.location, admitted.trace_id
        try:
            body = parse_object(await request.read())
        except BadRequest:
            self._done(request, admitted, 400)
            return _json(400, _BAD_REQUEST, admitted.headers)
        requested = body.get("locationId")
        if isinstance(requested, str) and requested and requested != location.id:
            self._done(request, admitted, 403, body=body)
            return _json(403, _FORBIDDEN, admitted.headers)
        dropped: tuple[str, ...] = ()
        try:
            payload = validate_upsert(body)
            if location.custom_fields is not None and payload.get("customFields") is not None:
                payload["customFields"], dropped = convert(
                    location.custom_fields, payload["customFields"]
                )
        except Unprocessable as error:
            self._done(request, admitted, 422, body=body)
            return _unprocessable(error, admitted.headers)
        now, create = admitted.now, False
        race_window_ms = location.duplicates.race_window_ms
        if race_window_ms and self.state.match(location, payload) is None:
            # Race mode: the lookup missed; yield before inserting, so that an upsert for the
            # same new identifier arriving meanwhile misses too and both create (live reports).
            location.count("raceWindows")
            await asyncio.sleep(race_window_ms / 1000)
            now, create = self._clock(), True
        try:
            result = self.state.upsert(location, payload, now, create=create)
        except PermanentDnd as refusal:
            self._done(request, admitted, 400, body=body, permanentDnd=refusal.channel)
            answer = {"statusCode": 400, "message": refusal.message, "error": "Bad Request"}
            return _json(400, answer, admitted.headers)
        contact = result.contact
        self._done(
            request,
            admitted,
            200,
            body=body,
            contactId=contact.id,
            new=result.new,
            ignored=[*result.ignored, *(f"customFields.{field_id}" for field_id in dropped)],
        )
        answer = {"new": result.new, "contact": contact.to_json(), "traceId": trace_id}
        return _json(200, answer, admitted.headers)

    async def _add_tags(self, request: web.Request, admitted: _Admitted) -> web.Response:
        trace_id = admitted.trace_id
        contact_id = request.match_info["contactId"]
        try:
            body = parse_object(await request.read())
            tags = validate_tags(body)
        except BadRequest:
            self._done(request, admitted, 400)
            return _json(400, _BAD_REQUEST, admitted.headers)
        except Unprocessable as error:
            self._done(request, admitted, 422)
            return _unprocessable(error, admitted.headers)
        contact = self._find_contact(request, admitted, contact_id)
        if isinstance(contact, web.Response):
            return contact
        self.state.add_tags(contact, tags, admitted.now)
        self._done(request, admitted, 201, body=body, contactId=contact_id)
        answer = {"tags": list(contact.tags), "traceId": trace_id}
        return _json(201, answer, admitted.headers)

    async def _get_contact(self, request: web.Request, admitted: _Admitted) -> web.Response:
        contact_id = request.match_info["contactId"]
        contact = self._find_contact(request, admitted, contact_id)
        if isinstance(contact, web.Response):
            return contact
        self._done(request, admitted, 200, contactId=contact_id)
        answer = {"contact": contact.to_json(), "traceId": admitted.trace_id}
        return _json(200, answer, admitted.headers)

    async def _delete_contact(self, request: web.Request, admitted: _Admitted) -> web.Response:
        contact_id = request.match_info["contactId"]
        contact = self._find_contact(request, admitted, contact_id)
        if isinstance(contact, web.Response):
            return contact
        self.state.delete(contact)
        self._done(request, admitted, 200, contactId=contact_id)
        return _json(200, {"succeded": True}, admitted.headers)  # HighLevel's spelling

    async def _search_duplicate(self, request: web.Request, admitted: _Admitted) -> web.Response:
        """``GET /contacts/search/duplicate?locationId=&email=&number=``: the contact the
        location's duplicate rule would match, or ``{"contact": null}``. ``number`` is read as
        an upsert's ``phone`` is stored (E.164; a number that is not a phone matches none)."""
        query = request.query
        if query.get("locationId") != admitted.location.id:
            status, body = (403, _FORBIDDEN) if "locationId" in query else (400, _BAD_REQUEST)
            self._done(request, admitted, status)
            return _json(status, body, admitted.headers)
        number = query.get("number", "")
        contact = self.state.find(
            admitted.location,
            email=query.get("email", ""),
            phone=(e164(number) or "") if number else "",
        )
        self._done(request, admitted, 200, contactId=contact.id if contact else None)
        answer = {"contact": contact.to_json() if contact else None, "traceId": admitted.trace_id}
        return _json(200, answer, admitted.headers)

    # -- OAuth (consumer.sandbox.oauth holds the rules) ----------------------------------------

    async def _oauth_token(self, request: web.Request) -> web.Response:
        """``POST /oauth/token``, form-encoded (both grants)."""
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        return self._oauth_answer(request, lambda now: self.oauth.token(form, now))

    async def _oauth_location_token(self, request: web.Request) -> web.Response:
        """``POST /oauth/locationToken``: Bearer Company token, Version, form companyId and
        locationId."""
        refused = _version_refused(request)
        if refused is not None:
            return self._oauth_log(request, refused)
        form = await request.post()
        token = _bearer(request)
        company_id, location_id = str(form.get("companyId", "")), str(form.get("locationId", ""))
        return self._oauth_answer(
            request,
            lambda now: self.oauth.location_token(token, company_id, location_id, now),
        )

    async def _oauth_installed_locations(self, request: web.Request) -> web.Response:
        """``GET /oauth/installedLocations?companyId=&appId=``: Bearer Company token, Version."""
        refused = _version_refused(request)
        if refused is not None:
            return self._oauth_log(request, refused)
        token, query = _bearer(request), request.query
        company_id, app_id = query.get("companyId", ""), query.get("appId", "")
        return self._oauth_answer(
            request,
            lambda now: self.oauth.installed_locations(token, company_id, app_id, now),
        )

    async def _oauth_reconnect(self, request: web.Request) -> web.Response:
        """``POST /oauth/reconnect``, JSON ``{clientKey, clientSecret, companyId | locationId}``."""
        try:
            body = parse_object(await request.read())
        except BadRequest:
            return self._oauth_log(request, _json(400, _BAD_REQUEST, {}))
        return self._oauth_answer(request, lambda now: self.oauth.reconnect(body, now))

    def _oauth_answer(
        self, request: web.Request, answer: Callable[[float], dict[str, Any]]
    ) -> web.Response:
        """200 with ``answer(now)`` (and a traceId), or the refusal it raised; logged."""
        try:
            body = answer(self._clock())
        except OAuthRefused as refused:
            return self._oauth_log(request, _json(refused.status, refused.body, {}))
        return self._oauth_log(request, _json(200, {**body, "traceId": str(uuid.uuid4())}, {}))

    def _oauth_log(self, request: web.Request, response: web.Response) -> web.Response:
        """Log an OAuth request (path and status: never a token or a secret)."""
        self._log(request, None, response.status, str(uuid.uuid4()))
        return response

    async def _admin_oauth(self, request: web.Request) -> web.Response:
        return _admin_json(self.oauth.to_json(self._clock()))

    async def _admin_oauth_update(self, request: web.Request) -> web.Response:
        """``PUT /_sandbox/oauth``: ``{"accessTtlS"?: s, "refreshTtlS"?: s}`` for tokens issued
        from now on."""
        try:
            changes = parse_object(await request.read())
            self.oauth.settings = self.oauth.settings.with_lifetimes(changes)
        except BadRequest:
            return _admin_error(400, "body must be a JSON object")
        except ValueError as error:
            return _admin_error(400, str(error))
        return await self._admin_oauth(request)

    async def _admin_oauth_code(self, request: web.Request) -> web.Response:
        """``POST /_sandbox/oauth/code``: ``{"locationId"?: ID}``: the authorization code an
        install of the app (in the company, or in one location) redirects with; it installs
        the app again after ``/_sandbox/oauth/uninstall``."""
        try:
            body = parse_object(await request.read())
            code = self.oauth.issue_code(body.get("locationId"), self._clock())
        except BadRequest:
            return _admin_error(400, "body must be a JSON object")
        except KeyError:
            return _admin_error(404, "the app is not installed in that location")
        return _admin_json({"code": code})

    async def _admin_oauth_invalidate(self, request: web.Request) -> web.Response:
        """``POST /_sandbox/oauth/invalidate``: ``{"locationId"?: ID}``: the current refresh
        token of the company's grant (or the location's) stops working, behind the consumer's
        back. 404 when that grant holds none."""
        try:
            body = parse_object(await request.read())
        except BadRequest:
            return _admin_error(400, "body must be a JSON object")
        if not self.oauth.invalidate(body.get("locationId")):
            return _admin_error(404, "no refresh token issued for that grant")
        return await self._admin_oauth(request)

    async def _admin_oauth_uninstall(self, request: web.Request) -> web.Response:
        """``POST /_sandbox/oauth/uninstall``: the app is uninstalled from the company: its
        refresh token stops working and ``/oauth/reconnect`` answers 400 until an install
        (``POST /_sandbox/oauth/code``)."""
        self.oauth.uninstall()
        return await self._admin_oauth(request)

    def _find_contact(
        self, request: web.Request, admitted: _Admitted, contact_id: str
    ) -> Contact | web.Response:
        """The location's contact, or the answer: 400 unknown id, 403 another location's."""
        contact = self.state.contacts_by_id.get(contact_id)
        if contact is None:
            self._done(request, admitted, 400, contactId=contact_id)
            return _json(400, _NOT_FOUND, admitted.headers)
        if contact.location_id != admitted.location.id:
            self._done(request, admitted, 403, contactId=contact_id)
            return _json(403, _FORBIDDEN, admitted.headers)
        return contact

    def _done(
        self, request: web.Request, admitted: _Admitted, status: int, **extra: Any
    ) -> None:
        """Log an admitted request's answer (marked when a reset will cut it)."""
        fault = "reset" if admitted.fault is FaultKind.RESET else None
        self._log(request, admitted.location.id, status, admitted.trace_id, fault=fault, **extra)

    def _log(
        self,
        request: web.Request,
        location_id: str | None,
        status: int | None,
        trace_id: str,
        *,
        fault: str | None = None,
        **extra: Any,
    ) -> None:
        """Append to the request log and count the status (never the token)."""
        entry = {
            "time": iso_time(self._clock()),
            "method": request.method,
            "path": request.path,
            "locationId": location_id,
            "status": status,
            "traceId": trace_id,
            "fault": fault,
        }
        entry.update(extra)
        self.requests.append(entry)
        if location_id is not None:
            location = self.state.locations[location_id]
            location.count("requests")
            location.count(f"status.{status}" if status is not None else "status.none")

    # -- admin -----------------------------------------------------------------------------

    async def _admin_contacts(self, request: web.Request) -> web.Response:
        location = self._admin_location(request.query.get("locationId"))
        if isinstance(location, web.Response):
            return location
        contacts = self.contacts(location.id)
        if not _unmasked(request):
            contacts = [_masked(contact) for contact in contacts]
        return _admin_json({"locationId": location.id, "contacts": contacts})

    async def _admin_requests(self, request: web.Request) -> web.Response:
        location_id = request.query.get("locationId")
        entries = [e for e in self.requests if location_id in (None, e["locationId"])]
        try:
            limit = int(request.query.get("limit", len(entries)))
        except ValueError:
            return _admin_error(400, "limit must be an integer")
        entries = entries[-limit:] if limit > 0 else []
        if not _unmasked(request):
            entries = [
                {**e, "body": _masked(e["body"])} if isinstance(e.get("body"), dict) else e
                for e in entries
            ]
        return _admin_json({"requests": entries})

    async def _admin_counters(self, request: web.Request) -> web.Response:
        locations = {
            loc.id: {
                **loc.counters,
                "contacts": len(loc.contacts),
                "dailyUsed": loc.rate.daily_used,
            }
            for loc in self.state.locations.values()
        }
        return _admin_json({"locations": locations, "unauthorized": self.unauthorized})

    async def _admin_settings(self, request: web.Request) -> web.Response:
        return _admin_json({"locations": self._settings()})

    async def _admin_update(self, request: web.Request) -> web.Response:
        """``PUT /_sandbox/{limits|duplicates|faults}``: body ``{"locationId"?: ID, ...changes}``
        with the camelCase keys of ``GET /_sandbox/settings``; without locationId, every location.
        """
        kind = request.path.rsplit("/", 1)[1]
        try:
            changes = parse_object(await request.read())
        except BadRequest:
            return _admin_error(400, "body must be a JSON object")
        location_id = changes.pop("locationId", None)
        location = self._admin_location(location_id) if location_id is not None else None
        if isinstance(location, web.Response):
            return location
        targets = [location] if location else list(self.state.locations.values())
        try:
            # validate against every target first, so a bad value changes nothing
            updated = [(t.id, getattr(t, kind).updated(changes)) for t in targets]
        except ValueError as error:
            return _admin_error(400, str(error))
        for target_id, value in updated:
            self.configure(target_id, **{kind: value})
        logger.info("sandbox %s changed", kind, extra={"locationId": location_id})
        return _admin_json({"locations": self._settings()})

    async def _admin_scopes(self, request: web.Request) -> web.Response:
        """``PUT /_sandbox/scopes``: body ``{"token": TOKEN, "scopes": ["contacts.readonly",
        ...]}`` replaces a known token's scopes (404 for an unknown one; the token is never
        echoed or logged)."""
        try:
            body = parse_object(await request.read())
        except BadRequest:
            return _admin_error(400, "body must be a JSON object")
        token, scopes = body.get("token"), body.get("scopes")
        if not isinstance(token, str) or not (
            isinstance(scopes, list) and all(isinstance(s, str) for s in scopes)
        ):
            return _admin_error(400, "expected {\"token\": string, \"scopes\": [string]}")
        try:
            self.state.set_scopes(token, scopes)
        except KeyError:
            return _admin_error(404, "unknown token")
        logger.info("sandbox token scopes changed")
        return _admin_json({"scopes": sorted(set(scopes))})

    async def _admin_dnd(self, request: web.Request) -> web.Response:
        """``PUT /_sandbox/dnd``: body ``{"locationId": ID, "email" | "phone" | "contactId": ...,
        "dndSettings": {"SMS": {"status": "permanent"}}}`` sets the contact's DND channels as
        HighLevel itself does (an SMS STOP), permanent ones included; answers the contact
        (404 when the location has no such contact, 422 for invalid settings)."""
        try:
            body = parse_object(await request.read())
            settings = validate_dnd_settings(body.get("dndSettings"))
        except BadRequest:
            return _admin_error(400, "body must be a JSON object")
        except Unprocessable as error:
            return _admin_error(422, "; ".join(error.messages))
        location = self._admin_location(body.get("locationId"))
        if isinstance(location, web.Response):
            return location
        contact_id = body.get("contactId")
        if contact_id is not None:
            contact = location.contacts.get(str(contact_id))
        else:
            email, phone = body.get("email"), body.get("phone")
            contact = self.state.find(
                location,
                email=email if isinstance(email, str) else "",
                phone=phone if isinstance(phone, str) else "",
            )
        if contact is None:
            return _admin_error(404, "no such contact in the location")
        self.state.set_dnd_settings(contact, settings, self._clock())
        return _admin_json({"contact": contact.to_json()})

    async def _admin_custom_fields(self, request: web.Request) -> web.Response:
        """``PUT /_sandbox/custom-fields``: body ``{"locationId"?: ID, "customFields": [{"id",
        "dataType", "fieldKey"?, "picklistOptions"?}] | null}`` (the shape of HighLevel's ``GET
        /locations/{id}/customFields``) replaces the definitions of one location, or of all
        without ``locationId``; ``null`` goes back to storing any field. 400 when invalid."""
        try:
            body = parse_object(await request.read())
        except BadRequest:
            return _admin_error(400, "body must be a JSON object")
        location_id = body.get("locationId")
        location = self._admin_location(location_id) if location_id is not None else None
        if isinstance(location, web.Response):
            return location
        if "customFields" not in body:
            return _admin_error(400, "customFields is required (a list, or null)")
        try:
            definitions = parse_definitions(body["customFields"])
        except ValueError as error:
            return _admin_error(400, str(error))
        for target in [location] if location else self.state.locations.values():
            target.custom_fields = dict(definitions) if definitions is not None else None
        logger.info("sandbox custom fields changed", extra={"locationId": location_id})
        return _admin_json({"locations": self._settings()})

    async def _admin_reset_daily(self, request: web.Request) -> web.Response:
        location_id = request.query.get("locationId")
        location = self._admin_location(location_id) if location_id is not None else None
        if isinstance(location, web.Response):
            return location
        for target in [location] if location else self.state.locations.values():
            target.rate.reset_daily()
        return await self._admin_counters(request)

    async def _admin_reset(self, request: web.Request) -> web.Response:
        self.state.clear()
        self.requests.clear()
        self.unauthorized = 0
        return _admin_json({"reset": True})

    async def _admin_save(self, request: web.Request) -> web.Response:
        if self.state_file is None:
            return _admin_error(400, "the sandbox runs without --state-file")
        return _admin_json({"saved": await self.save(), "path": str(self.state_file)})

    def _admin_location(self, location_id: Any) -> Location | web.Response:
        if not location_id:
            return _admin_error(400, "locationId is required")
        location = self.state.locations.get(location_id)
        if location is None:
            return _admin_error(404, f"unknown location {location_id}")
        return location

    def _settings(self) -> dict[str, Any]:
        return {
            loc.id: {
                "limits": loc.limits.to_json(),
                "duplicates": loc.duplicates.to_json(),
                "faults": loc.faults.to_json(),
                "customFields": (
                    [d.to_json() for d in loc.custom_fields.values()]
                    if loc.custom_fields is not None
                    else None
                ),
            }
            for loc in self.state.locations.values()
        }

    async def _release_hangs(self, app: web.Application) -> None:
        self._stopping.set()


def _bearer(request: web.Request) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token if scheme == "Bearer" else ""


def _version_refused(request: web.Request) -> web.Response | None:
    """The 401 for a missing or other ``Version`` header, None when it is right."""
    version = request.headers.get("Version")
    if version == API_VERSION:
        return None
    return _json(401, _NO_VERSION if version is None else _BAD_VERSION, {})


def _rate_headers(decision: RateDecision) -> dict[str, str]:
    limits = decision.limits
    return {
        "X-RateLimit-Max": str(limits.burst),
        "X-RateLimit-Remaining": str(decision.remaining),
        "X-RateLimit-Interval-Milliseconds": str(limits.interval_ms),
        "X-RateLimit-Limit-Daily": str(limits.daily),
        "X-RateLimit-Daily-Remaining": str(decision.daily_remaining),
    }


def _json(status: int, body: Mapping[str, Any], headers: dict[str, str]) -> web.Response:
    """An API answer; a 2xx ``body`` carries its ``traceId`` itself, error bodies have none."""
    headers["Content-Type"] = _JSON
    return web.Response(status=status, body=orjson.dumps(body), headers=headers)


def _unprocessable(error: Unprocessable, headers: dict[str, str]) -> web.Response:
    body = {"statusCode": 422, "message": error.messages, "error": "Unprocessable Entity"}
    return _json(422, body, headers)


def _admin_json(body: Mapping[str, Any], status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _admin_error(status: int, message: str) -> web.Response:
    return _admin_json({"error": message}, status)


_ADMIN_READS = frozenset({"GET", "HEAD"})
_MASKS: dict[str, Callable[[str], str]] = {
    "email": mask_email,
    "emailLowerCase": mask_email,
    "phone": mask_phone,
}


@web.middleware
async def _admin_changes_are_json(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Refuse (415) an admin change that is not ``application/json`` (module docstring)."""
    if (
        request.path.startswith("/_sandbox/")
        and request.method not in _ADMIN_READS
        and request.content_type != "application/json"
    ):
        return _admin_error(
            415, "admin changes need Content-Type: application/json (a body of {} will do)"
        )
    return await handler(request)


def _unmasked(request: web.Request) -> bool:
    return request.query.get("unmasked") in ("1", "true")


def _masked(item: Mapping[str, Any]) -> dict[str, Any]:
    """``item`` (a contact, a request body) with its email and phone values masked."""
    return {
        k: _MASKS[k](v) if k in _MASKS and isinstance(v, str) else v for k, v in item.items()
    }


def _abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()


async def _cut(request: web.Request, response: web.Response) -> web.StreamResponse:
    """Send ``response``'s head and half its body, then reset the connection."""
    body = response.body
    assert isinstance(body, bytes)  # _json always builds bytes bodies
    cut = web.StreamResponse(status=response.status, headers=response.headers)
    cut.content_length = len(body)
    await cut.prepare(request)
    await cut.write(body[: len(body) // 2])
    _abort(request)
    return cut


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


@contextlib.asynccontextmanager
async def run_sandbox(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    locations: Mapping[str, str] | Iterable[tuple[str, str]],
    limits: RateLimits | None = None,
    duplicates: DuplicateSettings | None = None,
    faults: Faults | None = None,
    custom_fields: Iterable[FieldDefinition] | None = None,
    retry_after: bool = False,
    state_file: Path | None = None,
    autosave_interval: float = 1.0,
    seed: int | None = None,
    clock: Callable[[], float] = time.time,
    request_log_size: int = 10_000,
    oauth: OAuthSettings | None = None,
    oauth_locations: int = 0,
) -> AsyncIterator[Sandbox]:
    """Serve a sandbox in this event loop until the block exits; yields the :class:`Sandbox`.

    ``locations`` is ``{location_id: token}`` or ``(location_id, token)`` pairs; ``port=0``
    binds a free port (read ``sandbox.url``). ``custom_fields`` gives every location those
    definitions (``consumer.sandbox.custom_fields``; None: any field is stored). With
    ``state_file`` the state is loaded at start, saved every ``autosave_interval`` seconds when
    changed, and on exit. On exit hanging requests are released (their connections reset) and
    the socket is closed.

    OAuth (``consumer.sandbox.oauth``): the app ``oauth`` (default ``OAuthSettings()``) is
    installed in its company over every location served, plus ``oauth_locations`` more
    (``oauth-location-01``..., served without a Private Integration token).

    Usage::

        async with run_sandbox(locations={"loc1": "token1"}) as sandbox:
            ...  # POST f"{sandbox.url}/contacts/upsert"
    """
    state = SandboxState(
        locations,
        limits=limits,
        duplicates=duplicates,
        faults=faults,
        custom_fields={d.id: d for d in custom_fields} if custom_fields is not None else None,
    )
    installed = installation_locations(state.locations, oauth_locations)
    for location_id in installed:
        state.add_location(location_id)
    sandbox = Sandbox(
        state,
        clock=clock,
        seed=seed,
        retry_after=retry_after,
        request_log_size=request_log_size,
        state_file=state_file,
        oauth=OAuthState(oauth or OAuthSettings(), installed),
    )
    sandbox.load()
    runner = web.AppRunner(sandbox.app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    saver: asyncio.Task[None] | None = None
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
        sandbox.url = f"http://{url_host}:{bound_port}"
        if state_file is not None:
            saver = asyncio.create_task(sandbox.autosave(autosave_interval))
        yield sandbox
    finally:
        if saver is not None:
            saver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await saver
        await runner.cleanup()
        await sandbox.save()
