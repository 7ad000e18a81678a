"""The consumer's HTTP side: two aiohttp servers in the engine's event loop.

``serve_web``, the metrics listener (``metrics.host``/``metrics.port``), for Prometheus and the
kubelet; no access control, nothing personal:

- ``GET /metrics``: Prometheus text format; the state gauges are refreshed first (``state``).
- ``GET /healthz`` (liveness): 200 ``{"status": "ok"}``, or 503 ``{"status": "stuck",
  "reasons": [...]}`` when the event loop or the Kafka client is stuck
  (``consumer.observe.readiness.Liveness``).
- ``GET /readyz``: 200 ``{"ready": true}``, or 503 ``{"ready": false, "reasons": [...]}`` when
  the broker is unreachable, the member has not joined its group yet, or it is shutting down
  (``consumer.observe.readiness.Readiness``; a member holding no partition is ready).

``serve_debugger``, the Event Debugger's own listener (``debug.host``/``debug.port``,
127.0.0.1 by default):

- ``GET /debug``: the page (recent deliveries, filters, live updates); without access, a login
  form (401). ``POST /debug`` (form field ``token``) logs in: 303 back to ``/debug`` with a
  session cookie (HttpOnly, SameSite=Strict, Path=/debug, ``session_seconds`` long, signed
  with a key of this process: it never holds the token, a restart ends every session).
- ``GET /debug/deliveries.json``: recent deliveries, newest first; query ``integration``,
  ``outcome``, ``after`` (seq), ``limit``.
- ``GET /debug/outcomes.json``: recent outcomes other than requests (dropped, duplicate,
  rejected, dead-lettered, parked, replayed), newest first; query ``kind``, ``integration``,
  ``limit``.
- ``GET /debug/search.json?q=...``: this member's recent deliveries and outcomes of one user
  key, userId, anonymousId or messageId (exact match); 400 without ``q``. Only what this
  member holds in memory: ``ghl-consumer trace`` searches the topic itself.
- ``GET /debug/events``: Server-Sent Events, each new delivery as one ``data:`` JSON line
  (``id:`` is its seq; ``after`` or ``Last-Event-ID`` resumes). At most ``max_streams`` at
  once: 503 beyond.

Access, checked in this order on every debugger request: the Host header must name an allowed
host (the loopback names, the bound host, ``allowed_hosts``), else 421, so a DNS-rebound name
never reaches the page; a ``token`` query parameter is refused (400): the token never travels
in a URL; with ``access_token`` set, an ``Authorization: Bearer`` header (when present, the
only thing that counts) or the session cookie is required, else 401 (compared in constant
time). The access log is off. Deliveries are masked by ``consumer.observe.recent_deliveries``
before they get here.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from consumer.errors import ConfigError
from consumer.highlevel.verdicts import Verdict
from consumer.observe.metrics import Metrics, StateSnapshot
from consumer.observe.readiness import Health, Readiness
from consumer.observe.recent_deliveries import OUTCOME_KINDS, DeliveryEntry, RecentDeliveries

logger = logging.getLogger(__name__)

DEFAULT_HOST: Final = "127.0.0.1"
LOOPBACK_NAMES: Final = frozenset(("localhost", "127.0.0.1", "::1"))
HEARTBEAT_S: Final = 15.0  # SSE comment line interval: proxies keep the stream, dead peers show
MAX_LIMIT: Final = 1000
MAX_QUERY_CHARS: Final = 1024  # a search query: a user key or messageId, at most a field's size
MAX_STREAMS: Final = 8
SESSION_S: Final = 900.0
SESSION_COOKIE: Final = "ghl_debug_session"
# The classic text format: what ``generate_latest`` writes for our (all legacy-valid) names,
# and what every Prometheus version parses.
METRICS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True, slots=True)
class WebServer:
    """A running server: where it listens."""

    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


# -- the metrics listener ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Probes:
    metrics: Metrics
    readiness: Callable[[], Readiness]
    liveness: Callable[[], Health] | None
    state: Callable[[], Awaitable[StateSnapshot]] | None

    async def metrics_page(self, request: web.Request) -> web.Response:
        if self.state is not None:
            try:
                self.metrics.refresh(await self.state())
            except Exception:
                # Counters are still worth serving; the gauges keep their previous values.
                logger.exception("reading state for /metrics failed")
        return web.Response(
            body=self.metrics.exposition(), headers={"Content-Type": METRICS_CONTENT_TYPE}
        )

    async def healthz(self, request: web.Request) -> web.Response:
        health = Health() if self.liveness is None else self.liveness()
        if health.alive:
            return _json({"status": "ok"})
        return _json({"status": "stuck", "reasons": list(health.reasons)}, status=503)

    async def readyz(self, request: web.Request) -> web.Response:
        readiness = self.readiness()
        if readiness.ready:
            return _json({"ready": True})
        return _json({"ready": False, "reasons": readiness.reasons()}, status=503)


@contextlib.asynccontextmanager
async def serve_web(
    *,
    port: int,
    metrics: Metrics,
    readiness: Callable[[], Readiness],
    host: str = DEFAULT_HOST,
    state: Callable[[], Awaitable[StateSnapshot]] | None = None,
    liveness: Callable[[], Health] | None = None,
) -> AsyncIterator[WebServer]:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` until the block exits; yields the bound
    ``WebServer`` (``port=0``: a free port).

    ``readiness`` is called per ``/readyz`` request, ``liveness`` per ``/healthz`` request
    (None: always alive); neither may block. ``state`` is awaited per
    ``/metrics`` scrape to refresh the state gauges (its failure is logged; the scrape still
    answers). Raises ConfigError naming the address when it cannot be bound (in use, not
    local).
    """
    probes = _Probes(metrics, readiness, liveness, state)
    app = web.Application()
    app.router.add_get("/metrics", probes.metrics_page)
    app.router.add_get("/healthz", probes.healthz)
    app.router.add_get("/readyz", probes.readyz)
    async with _serving(app, host, port, "metrics.host/port (METRICS_HOST/METRICS_PORT)") as srv:
        logger.info("serving /metrics, /healthz, /readyz on %s", srv.url)
        yield srv


@contextlib.asynccontextmanager
async def _serving(
    app: web.Application, host: str, port: int, where: str
) -> AsyncIterator[WebServer]:
    # access_log=None: nothing a client sends (paths, headers) reaches a log line.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            raise ConfigError(
                f"{where}: cannot listen on {host}:{port}: {exc.strerror or exc}"
            ) from None
        bound_host, bound_port = runner.addresses[0][:2]
        yield WebServer(bound_host, bound_port)
    finally:
        await runner.cleanup()


# -- the debugger listener ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class _Sessions:
    """Login cookies: ``<expiry>.<HMAC of it>`` under a key of this process (never the token),
    valid until the expiry (wall-clock seconds)."""

    lifetime_s: float
    key: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    def issue(self, now: float) -> str:
        expiry = str(int(now + self.lifetime_s))
        return f"{expiry}.{self._sign(expiry)}"

    def valid(self, cookie: str, now: float) -> bool:
        expiry, _, signature = cookie.partition(".")
        if not expiry.isdigit() or not hmac.compare_digest(signature, self._sign(expiry)):
            return False
        return now < int(expiry) <= now + self.lifetime_s

    def _sign(self, expiry: str) -> str:
        return hmac.new(self.key, expiry.encode(), hashlib.sha256).hexdigest()


@dataclass(slots=True, eq=False)
class _Debugger:
    debugger: RecentDeliveries
    token: bytes | None
    allowed_hosts: frozenset[str]
    sessions: _Sessions
    max_streams: int
    heartbeat_s: float
    closing: bool = False
    streams: set[asyncio.Event] = field(default_factory=set)

    @web.middleware
    async def guard(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        if _host_name(request.host) not in self.allowed_hosts:
            # DNS rebinding: a page on another name must not reach this one.
            return web.Response(
                status=421,
                text="Host not allowed: add it to debug.allowed_hosts (DEBUG_ALLOWED_HOSTS)",
            )
        if "token" in request.query:
            return web.Response(
                status=400,
                text="the access token is never accepted in a URL: send it as "
                "Authorization: Bearer, or log in at /debug",
            )
        return await handler(request)

    def _authorized(self, request: web.Request) -> bool:
        if self.token is None:
            return True
        header = request.headers.get("Authorization")
        if header is not None:
            scheme, _, offered = header.partition(" ")
            return scheme.lower() == "bearer" and hmac.compare_digest(
                offered.strip().encode(), self.token
            )
        return self.sessions.valid(request.cookies.get(SESSION_COOKIE, ""), time.time())

    def _require_access(self, request: web.Request) -> None:
        if not self._authorized(request):
            raise web.HTTPUnauthorized(
                text='{"error": "access token required"}',
                content_type="application/json",
                headers={"WWW-Authenticate": "Bearer"},
            )

    async def page(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _login_page(status=401)
        shown = self.debugger.show_personal_data
        return web.Response(text=_page(shown), content_type="text/html", headers=_PAGE_HEADERS)

    async def login(self, request: web.Request) -> web.Response:
        # A browser sends Origin with a form POST: another page's (or "null") is refused.
        origin = request.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != request.host:
            raise web.HTTPForbidden(text="login from another origin")
        form = await request.post()
        offered = form.get("token")
        if self.token is not None and not (
            isinstance(offered, str) and hmac.compare_digest(offered.encode(), self.token)
        ):
            return _login_page(status=401, failed=True)
        # relative: GET /debug, behind any path prefix
        response = web.Response(status=303, headers={"Location": "debug"})
        response.set_cookie(
            SESSION_COOKIE,
            self.sessions.issue(time.time()),
            max_age=int(self.sessions.lifetime_s),
            path="/debug",
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )
        return response

    async def deliveries(self, request: web.Request) -> web.Response:
        self._require_access(request)
        query = request.query
        entries = self.debugger.recent(
            integration=query.get("integration") or None,
            outcome=query.get("outcome") or None,
            after=_int_param(query.get("after"), 0),
            limit=min(_int_param(query.get("limit"), MAX_LIMIT), MAX_LIMIT),
        )
        return _json(
            {
                "integrations": self.debugger.integrations,
                "outcomes": [str(v) for v in Verdict],
                "last_seq": self.debugger.last_seq,
                "deliveries": [e.to_json() for e in entries],
            }
        )

    async def outcomes(self, request: web.Request) -> web.Response:
        self._require_access(request)
        query = request.query
        entries = self.debugger.outcomes(
            kind=query.get("kind") or None,
            integration=query.get("integration") or None,
            limit=min(_int_param(query.get("limit"), MAX_LIMIT), MAX_LIMIT),
        )
        return _json({"kinds": list(OUTCOME_KINDS), "outcomes": [e.to_json() for e in entries]})

    async def search(self, request: web.Request) -> web.Response:
        self._require_access(request)
        text = request.query.get("q", "").strip()
        if not text or len(text) > MAX_QUERY_CHARS:
            raise web.HTTPBadRequest(
                text=f"q: a user id, anonymous id or messageId of 1 to {MAX_QUERY_CHARS} "
                "characters"
            )
        found = self.debugger.search(text, limit=MAX_LIMIT)
        return _json(
            {
                "scope": "this member's recent records in memory; ghl-consumer trace searches "
                "the topic",
                "deliveries": [e.to_json() for e in found.deliveries],
                "outcomes": [e.to_json() for e in found.outcomes],
            }
        )

    async def events(self, request: web.Request) -> web.StreamResponse:
        self._require_access(request)
        after = _int_param(request.query.get("after") or request.headers.get("Last-Event-ID"), 0)
        if len(self.streams) >= self.max_streams:
            return _json(
                {"error": f"at most {self.max_streams} live streams (debug.max_streams)"},
                status=503,
                headers={"Retry-After": "10"},
            )
        wake = asyncio.Event()
        self.streams.add(wake)  # before the first await: the cap holds under concurrency
        unsubscribe = self.debugger.subscribe(lambda _entry: wake.set())
        try:
            response = web.StreamResponse(
                headers={
                    "Content-Type": "text/event-stream",
                    "Cache-Control": "no-cache",
                    "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
                }
            )
            await response.prepare(request)
            with contextlib.suppress(ConnectionResetError):  # the page went away
                while not self.closing:
                    wake.clear()  # before reading: an entry recorded during the writes wakes us
                    for entry in reversed(self.debugger.recent(after=after, limit=MAX_LIMIT)):
                        await response.write(_sse(entry))
                        after = entry.seq
                    try:
                        async with asyncio.timeout(self.heartbeat_s):
                            await wake.wait()
                    except TimeoutError:
                        await response.write(b": ping\n\n")
        finally:
            unsubscribe()
            self.streams.discard(wake)
        return response

    async def on_shutdown(self, app: web.Application) -> None:
        self.closing = True
        for wake in self.streams:
            wake.set()


@contextlib.asynccontextmanager
async def serve_debugger(
    *,
    port: int,
    debugger: RecentDeliveries,
    host: str = DEFAULT_HOST,
    access_token: str | None = None,
    allowed_hosts: Collection[str] = (),
    max_streams: int = MAX_STREAMS,
    session_seconds: float = SESSION_S,
    heartbeat_s: float = HEARTBEAT_S,
) -> AsyncIterator[WebServer]:
    """Serve the Event Debugger (``/debug``...) until the block exits; yields the bound
    ``WebServer`` (``port=0``: a free port).

    ``access_token`` (None or empty: none) guards every path; the caller refuses a host that is
    not loopback without one (``consumer.config``). ``allowed_hosts``: Host header names
    answered besides ``LOOPBACK_NAMES`` and ``host``. Raises ConfigError naming the address
    when it cannot be bound. On exit, live streams end and the socket closes.
    """
    allowed = {*LOOPBACK_NAMES, *(h.lower() for h in allowed_hosts)}
    if host not in ("0.0.0.0", "::", ""):
        allowed.add(host.strip("[]").lower())
    handlers = _Debugger(
        debugger=debugger,
        token=access_token.encode() if access_token else None,
        allowed_hosts=frozenset(allowed),
        sessions=_Sessions(session_seconds),
        max_streams=max_streams,
        heartbeat_s=heartbeat_s,
    )
    app = web.Application(middlewares=[handlers.guard], client_max_size=4096)
    app.router.add_get("/debug", handlers.page)
    app.router.add_post("/debug", handlers.login)
    app.router.add_get("/debug/deliveries.json", handlers.deliveries)
    app.router.add_get("/debug/outcomes.json", handlers.outcomes)
    app.router.add_get("/debug/search.json", handlers.search)
    app.router.add_get("/debug/events", handlers.events)
    app.on_shutdown.append(handlers.on_shutdown)
    async with _serving(app, host, port, "debug.host/port (DEBUG_HOST/DEBUG_PORT)") as srv:
        logger.info(
            "serving the event debugger on %s/debug (%s)",
            srv.url,
            "access token required" if handlers.token is not None else "no access token",
        )
        yield srv


def _host_name(host: str) -> str:
    """The name of a Host header, without its port, lowercased (``[::1]:9465`` -> ``::1``)."""
    if host.startswith("["):
        return host[1:].partition("]")[0].lower()
    name, colon, port = host.rpartition(":")
    return (name if colon and port.isdigit() else host).lower()


def _json(
    body: object, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def _int_param(text: str | None, default: int) -> int:
    if not text:
        return default
    try:
        return max(0, int(text))
    except ValueError:
        raise web.HTTPBadRequest(text="expected a non-negative integer") from None


def _sse(entry: DeliveryEntry) -> bytes:
    return b"id: %d\ndata: %s\n\n" % (entry.seq, orjson.dumps(entry.to_json()))


# -- the page ------------------------------------------------------------------------------------
# One self-contained document (no package data to ship). Rows are built with textContent only:
# payload values are user input and must never be parsed as HTML.

_STYLE: Final = """
:root { --bg:#f6f7f9; --fg:#1d2430; --muted:#6b7686; --line:#e2e6ec; --ok:#127a3e;
        --warn:#a25b00; --bad:#b3261e; --chip:#eef1f5; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       background:var(--bg); color:var(--fg); }
header { display:flex; align-items:center; gap:16px; padding:12px 20px; background:#14213d;
         color:#fff; }
header h1 { font-size:18px; margin:0; font-weight:600; }
header .sub { color:#c9d2e3; font-size:13px; }
#live { margin-left:auto; font-size:13px; color:#c9d2e3; }
#live.on::before { content:"\\25CF "; color:#4ade80; }
#live.off::before { content:"\\25CF "; color:#f87171; }
.bar { display:flex; gap:16px; align-items:center; padding:10px 20px;
       border-bottom:1px solid var(--line); background:#fff; }
.bar label { color:var(--muted); font-size:13px; }
.bar select { margin-left:6px; padding:3px 6px; font:inherit; }
#count { margin-left:auto; color:var(--muted); font-size:13px; }
#error { display:none; margin:12px 20px; padding:10px; background:#fde8e7; color:var(--bad);
         border-radius:6px; }
table { width:100%; border-collapse:collapse; background:#fff; }
th, td { text-align:left; padding:7px 10px; border-bottom:1px solid var(--line);
         vertical-align:top; }
th { font-size:12px; text-transform:uppercase; letter-spacing:.04em; color:var(--muted);
     background:#fafbfc; position:sticky; top:0; }
td.mono { white-space:nowrap; }
td.mono, td.trace, pre { font-family:ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
               font-size:12px; }
pre { margin:0; white-space:pre-wrap; overflow-wrap:anywhere; min-width:340px;
      max-width:560px; }
.chip { display:inline-block; padding:1px 7px; margin:0 4px 2px 0; border-radius:10px;
        background:var(--chip); font-size:12px; white-space:nowrap; }
.outcome { font-weight:600; }
tr.delivered .outcome { color:var(--ok); }
tr.rate_limited .outcome, tr.retry .outcome { color:var(--warn); }
tr.rejected .outcome, tr.unauthorized .outcome { color:var(--bad); }
.muted { color:var(--muted); }
#empty, #outcome-empty { padding:24px 20px; color:var(--muted); }
form.login { max-width:360px; margin:48px auto; padding:20px; background:#fff;
             border:1px solid var(--line); border-radius:8px; }
form.login input { display:block; width:100%; margin:8px 0 12px; padding:6px; font:inherit; }
.failed { color:var(--bad); }
h2 { font-size:15px; margin:0; padding:14px 20px 8px; font-weight:600; }
.bar input { padding:3px 6px; font:inherit; width:320px; }
.note { color:var(--muted); font-size:12px; }
#results { display:none; border-bottom:3px solid var(--line); }
tr.kind-dropped .outcome, tr.kind-duplicate .outcome, tr.kind-replayed .outcome
  { color:var(--muted); }
tr.kind-parked .outcome { color:var(--warn); }
tr.kind-rejected .outcome, tr.kind-dead_lettered .outcome { color:var(--bad); }
"""

_SCRIPT: Final = """
"use strict";
const KEEP = 1000;
let entries = [];
let lastSeq = 0;
const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function fillSelect(select, values) {
  for (const value of values) {
    if (![...select.options].some((o) => o.value === value)) {
      select.appendChild(el("option", value)).value = value;
    }
  }
}

function row(d) {
  const tr = el("tr", null, "delivery " + d.outcome);
  tr.dataset.seq = d.seq;
  tr.dataset.integration = d.integration;
  tr.dataset.outcome = d.outcome;
  tr.appendChild(el("td", new Date(d.at * 1000).toLocaleTimeString([], {hour12: false}), "mono"));
  const integ = el("td");
  integ.appendChild(el("div", d.integration));
  integ.appendChild(el("div", d.location_id, "muted mono"));
  tr.appendChild(integ);
  const events = el("td");
  for (const name of d.events) events.appendChild(el("span", name, "chip"));
  if (d.event_count > d.events.length) events.appendChild(el("span", "x" + d.event_count, "muted"));
  tr.appendChild(events);
  tr.appendChild(el("td", d.contact_key, "mono contact"));
  const payload = el("td");
  const lines = Object.entries(d.payload).map(([k, v]) => k + ": " + JSON.stringify(v));
  payload.appendChild(el("pre", lines.join("\\n"), "payload"));
  for (const o of d.omitted || []) {
    payload.appendChild(el("div", "omitted " + o.field + " (" + o.reason + ", " + o.path + ")",
                           "muted omitted"));
  }
  tr.appendChild(payload);
  const outcome = el("td");
  outcome.appendChild(el("div", d.status === null ? "no answer" : d.status, "outcome status"));
  outcome.appendChild(el("div", d.outcome, "muted"));
  tr.appendChild(outcome);
  tr.appendChild(el("td", d.message || d.error || "", "message"));
  tr.appendChild(el("td", d.trace_id || "", "trace"));
  tr.appendChild(el("td", d.latency_ms.toFixed(1) + " ms", "mono"));
  tr.appendChild(el("td", d.attempts, "mono"));
  return tr;
}

function outcomeRow(o) {
  const tr = el("tr", null, "outcome-entry kind-" + o.kind);
  tr.dataset.kind = o.kind;
  tr.appendChild(el("td", new Date(o.at * 1000).toLocaleTimeString([], {hour12: false}), "mono"));
  const kind = el("td");
  kind.appendChild(el("div", o.kind, "outcome"));
  if (o.reason) kind.appendChild(el("div", o.reason, "muted reason"));
  tr.appendChild(kind);
  const where = el("td", null, "mono");
  where.appendChild(el("div", o.topic + "/" + o.partition + "/" + o.offset, "coordinates"));
  if (o.original_topic) where.appendChild(el("div", "as " + o.original_topic, "muted"));
  if (o.record_time !== null) {
    where.appendChild(el("div", "record " + new Date(o.record_time * 1000).toISOString(), "muted"));
  }
  tr.appendChild(where);
  tr.appendChild(el("td", o.integration || "(record)"));
  const events = el("td");
  for (const name of o.events) events.appendChild(el("span", name, "chip"));
  tr.appendChild(events);
  tr.appendChild(el("td", o.contact_key || "", "mono contact"));
  tr.appendChild(el("td", o.message_ids.join(" "), "mono message-id"));
  const detail = el("td", null, "detail");
  if (o.error) detail.appendChild(el("div", o.error, "error"));
  if (o.status !== null) detail.appendChild(el("div", "HighLevel " + o.status + " " +
                                               (o.message || ""), "message"));
  if (o.trace_id) detail.appendChild(el("div", "traceId " + o.trace_id, "muted trace"));
  for (const s of o.sources) detail.appendChild(el("div", "from " + s, "muted mono"));
  tr.appendChild(detail);
  return tr;
}

async function loadOutcomes() {
  const kind = $("kind").value;
  const response = await fetch("debug/outcomes.json?limit=200" +
                               (kind ? "&kind=" + encodeURIComponent(kind) : ""));
  if (!response.ok) return;
  const data = await response.json();
  fillSelect($("kind"), data.kinds);
  $("outcome-rows").replaceChildren(...data.outcomes.map(outcomeRow));
  $("outcome-empty").style.display = data.outcomes.length ? "none" : "block";
}

async function search() {
  const q = $("q").value.trim();
  if (!q) { $("results").style.display = "none"; return; }
  const response = await fetch("debug/search.json?q=" + encodeURIComponent(q));
  if (!response.ok) { fail("Search failed (" + response.status + ")."); return; }
  const data = await response.json();
  $("found-deliveries").replaceChildren(...data.deliveries.map(row));
  $("found-outcomes").replaceChildren(...data.outcomes.map(outcomeRow));
  $("found-deliveries").parentElement.style.display = data.deliveries.length ? "" : "none";
  $("found-outcomes").parentElement.style.display = data.outcomes.length ? "" : "none";
  $("found-count").textContent = data.deliveries.length + " deliveries, " +
                                 data.outcomes.length + " other outcomes";
  $("results").style.display = "block";
}

function render() {
  const integration = $("integration").value;
  const outcome = $("outcome").value;
  const shown = entries.filter((d) => (!integration || d.integration === integration) &&
                                      (!outcome || d.outcome === outcome));
  const body = $("rows");
  body.replaceChildren(...shown.map(row));
  $("count").textContent = shown.length + " of " + entries.length + " deliveries";
  $("empty").style.display = shown.length ? "none" : "block";
}

function add(d) {
  if (d.seq <= lastSeq) return;
  lastSeq = d.seq;
  entries.unshift(d);
  if (entries.length > KEEP) entries.length = KEEP;
}

function fail(message) {
  $("error").textContent = message;
  $("error").style.display = "block";
  $("live").className = "off";
  $("live").textContent = "offline";
}

async function start() {
  // Same origin: the session cookie (or nothing, without a token) goes along; no token in URLs.
  const response = await fetch("debug/deliveries.json");
  if (!response.ok) { fail(response.status === 401 ? "Session expired: reload to log in." :
                           "Could not load deliveries (" + response.status + ")."); return; }
  const data = await response.json();
  fillSelect($("integration"), data.integrations);
  fillSelect($("outcome"), data.outcomes);
  for (const d of data.deliveries.slice().reverse()) add(d);
  render();
  const source = new EventSource("debug/events?after=" + lastSeq);
  source.onopen = () => { $("live").className = "on"; $("live").textContent = "live"; };
  source.onerror = () => {
    $("live").className = "off";
    // CLOSED: refused (session expired, or too many live pages); otherwise it retries.
    $("live").textContent = source.readyState === EventSource.CLOSED ? "offline" : "reconnecting";
  };
  source.onmessage = (message) => { add(JSON.parse(message.data)); render(); };
  await loadOutcomes();
  setInterval(() => loadOutcomes().catch(() => {}), 3000);
}

$("integration").addEventListener("change", render);
$("outcome").addEventListener("change", render);
$("kind").addEventListener("change", () => loadOutcomes().catch((e) => fail(String(e))));
$("find").addEventListener("click", () => search().catch((e) => fail(String(e))));
$("q").addEventListener("keydown", (e) => {
  if (e.key === "Enter") search().catch((err) => fail(String(err)));
});
start().catch((e) => fail(String(e)));
"""


def _csp_hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


_PAGE_HEADERS: Final = {
    # Only this page's own inline script and style run; data comes from this origin only.
    "Content-Security-Policy": (
        f"default-src 'none'; script-src {_csp_hash(_SCRIPT)}; style-src {_csp_hash(_STYLE)}; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
_LOGIN_HEADERS: Final = {
    **_PAGE_HEADERS,
    # The form's POST then carries its Origin (no-referrer makes it "null"), checked by login.
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": (
        f"default-src 'none'; style-src {_csp_hash(_STYLE)}; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
}

_HEAD: Final = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Event Debugger - ghl-consumer</title>
<style>{_STYLE}</style>
</head>
<body>
"""


def _page(show_personal_data: bool) -> str:
    shown = (
        "email and phone masked, other personal data shown (debug.show_personal_data)"
        if show_personal_data
        else "personal data masked"
    )
    return f"""{_HEAD}<header>
  <h1>Event Debugger</h1>
  <span class="sub">recent HighLevel deliveries and other outcomes, {shown}</span>
  <span id="live" class="off">connecting</span>
</header>
<div class="bar">
  <label>Integration<select id="integration"><option value="">all</option></select></label>
  <label>Outcome<select id="outcome"><option value="">all</option></select></label>
  <span id="count"></span>
</div>
<div class="bar">
  <label for="q">Search</label>
  <input id="q" type="search" placeholder="user id, anonymous id or messageId">
  <button id="find" type="button">Find</button>
  <span class="note">Searches this member's recent records only (what it holds in memory);
  <code>ghl-consumer trace</code> searches the topic.</span>
</div>
<div id="error"></div>
<section id="results">
  <h2>Search results <span id="found-count" class="note"></span></h2>
  <table>
    <thead><tr><th>Time</th><th>Integration</th><th>Events</th><th>Contact</th>
    <th>Payload sent</th><th>HighLevel</th><th>Message</th><th>traceId</th><th>Latency</th>
    <th>Attempt</th></tr></thead>
    <tbody id="found-deliveries"></tbody>
  </table>
  <table>
    <thead><tr><th>Time</th><th>Outcome</th><th>Record</th><th>Integration</th><th>Events</th>
    <th>Contact</th><th>messageId</th><th>Detail</th></tr></thead>
    <tbody id="found-outcomes"></tbody>
  </table>
</section>
<h2>Deliveries</h2>
<table>
  <thead><tr><th>Time</th><th>Integration</th><th>Events</th><th>Contact</th><th>Payload sent</th>
  <th>HighLevel</th><th>Message</th><th>traceId</th><th>Latency</th><th>Attempt</th></tr></thead>
  <tbody id="rows"></tbody>
</table>
<div id="empty">No deliveries yet.</div>
<h2>Other outcomes</h2>
<div class="bar">
  <label>Outcome<select id="kind"><option value="">all</option></select></label>
  <span class="note">dropped, duplicate, rejected, dead-lettered, parked and replayed records;
  refreshed every 3 s</span>
</div>
<table>
  <thead><tr><th>Time</th><th>Outcome</th><th>Record</th><th>Integration</th><th>Events</th>
  <th>Contact</th><th>messageId</th><th>Detail</th></tr></thead>
  <tbody id="outcome-rows"></tbody>
</table>
<div id="outcome-empty">No other outcomes yet.</div>
<script>{_SCRIPT}</script>
</body>
</html>
"""


def _login_page(*, status: int, failed: bool = False) -> web.Response:
    # POST to the page's own URL (relative: works behind a path prefix); never a GET form, so
    # the token is never in a URL or the history.
    notice = '<p class="failed">Wrong access token.</p>' if failed else ""
    text = f"""{_HEAD}<header><h1>Event Debugger</h1></header>
<form class="login" method="post" action="debug">
  <label for="token">Access token (DEBUG_ACCESS_TOKEN)</label>
  <input id="token" name="token" type="password" autocomplete="current-password" required>
  {notice}<button type="submit">Log in</button>
</form>
</body>
</html>
"""
    return web.Response(
        text=text, status=status, content_type="text/html", headers=_LOGIN_HEADERS
    )
