"""Every Prometheus metric of the consumer, defined once, with bounded labels.

The closed list (all names start with ``ghl_``; ``integration`` / ``location`` / ``topic`` take
only configured values, anything else is counted as ``other``; every ``reason`` / ``kind`` /
``status_class`` / ``endpoint`` / ``field`` label comes from a closed set below):

==========================================  =========  ==========================================
metric                                      type       labels
==========================================  =========  ==========================================
ghl_events_consumed_total                   counter    topic
ghl_events_skipped_total                    counter    topic (done per a restored offset map)
ghl_events_dropped_total                    counter    reason (``DROP_REASONS``)
ghl_events_rejected_total                   counter    reason (``REJECT_REASONS``)
ghl_upserts_total                           counter    integration, status_class
ghl_http_request_duration_seconds           histogram  integration, endpoint (upsert | add_tags)
ghl_events_coalesced_total                  counter    integration
ghl_ratelimit_wait_seconds                  histogram  location
ghl_ratelimit_remaining                     gauge      location (window slots free)
ghl_ratelimit_daily_remaining               gauge      location
ghl_ratelimit_fallback_active               gauge      (1: Redis unreachable, local budgets)
ghl_responses_429_total                     counter    location
ghl_retries_total                           counter    integration, reason (``RETRY_REASONS``)
ghl_dead_letters_total                      counter    reason (``DEAD_LETTER_REASONS``)
ghl_parked_events_total                     counter    integration, reason (``PARK_REASONS``)
ghl_replayed_events_total                   counter    integration
ghl_partition_committed_offset              gauge      topic, partition
ghl_partition_lag                           gauge      topic, partition
ghl_partition_incomplete                    gauge      topic, partition
ghl_partition_stalled                       gauge      topic, partition (1: work waits, no
                                                       progress for ``metrics.stall_seconds``)
ghl_partitions_paused                       gauge
ghl_rebalances_total                        counter    kind (assigned | revoked | lost)
ghl_profile_store_size                      gauge      (profiles held by this member)
ghl_profile_restore_seconds                 gauge      partition (changelog partition, "all":
                                                       the whole changelog; the last restore)
ghl_profile_restore_records_total           counter    partition (changelog records read)
ghl_profile_state_profiles                  gauge      partition (partitioned state: profiles
                                                       held for an owned changelog partition)
ghl_profile_cache_hits_total                counter    (partitioned state: lookups answered
ghl_profile_cache_misses_total              counter    from memory, or read from disk)
ghl_integration_healthy                     gauge      integration (0 while answering 401/403)
ghl_ignored_fields_total                    counter    integration, field (HighLevel field names)
ghl_fields_omitted_total                    counter    field (``OMITTABLE_FIELDS``), reason
                                                       (``OmitReason``: wrong_type | too_long |
                                                       invalid | no_region)
ghl_permanent_dnd_kept_total                counter    integration, channel (``DND_CHANNELS``)
ghl_delivery_records_total                  counter    result (written | failed)
ghl_stitch_requests_total                   counter    direction (``STITCH_DIRECTIONS``: sent,
                                                       confirmed on the stitch topic | handled,
                                                       read and answered here)
ghl_stitch_merges_total                     counter    result (``STITCH_MERGE_RESULTS``: sent,
                                                       a held profile handed over, confirmed |
                                                       empty, a request found none | folded, a
                                                       merge changed the user's profile |
                                                       unchanged, it did not: read again)
ghl_buffered_records                        gauge
ghl_buffered_bytes                          gauge      (keys, values, headers of those records)
ghl_requests_in_flight                      gauge
ghl_oauth_refreshes_total                   counter    installation (``[[oauth]]`` id; refreshes
                                                       of its company token by this process)
ghl_oauth_failures_total                    counter    installation, kind (``OAUTH_FAILURES``)
ghl_oauth_token_expiry_seconds              gauge      installation (company token's time left)
ghl_oauth_installation_broken               gauge      installation (1: needs ``oauth reconnect``)
ghl_oauth_locations                         gauge      installation (locations served)
ghl_oauth_reconnects_total                  counter    installation, trigger (auto | command),
                                                       result (``RECONNECT_RESULTS``)
==========================================  =========  ==========================================

Two kinds of input. Counters and histograms are driven by the engine's hot path through small
typed methods (``consumed``, ``dropped``, ``http`` ...) that look up label children bound once
at construction, so an increment costs a dict lookup and a locked add. Gauges describing state
(partitions, limiter budgets, buffers) are set by ``refresh(StateSnapshot)``, which the web
server calls just before each scrape (``consumer.observe.readiness.Observed`` builds it):
nothing is computed between scrapes. ``Metrics`` satisfies the engine's ``EngineMetrics`` port.

Each ``Metrics`` owns its own ``CollectorRegistry`` (tests build fresh ones). Not thread-safe
beyond what prometheus_client guarantees; the engine calls it from the event loop thread.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from consumer.core.deadletter import REJECTED_BY_HIGHLEVEL
from consumer.core.events import OMITTABLE_FIELDS, STANDARD_FIELDS, OmitReason, Reason
from consumer.engine.offsets import PartitionStats
from consumer.engine.parking import ParkReason
from consumer.engine.ports import Endpoint, RebalanceKind
from consumer.highlevel.verdicts import DND_CHANNELS, Answer
from consumer.ratelimit.budget import LimiterState
from consumer.state.oauth_tokens import RECONNECT_RESULTS

_V = TypeVar("_V")

OTHER: Final = "other"
"""The label value that stands for anything outside a label's configured or closed set."""

DROP_REASONS: Final = (Reason.NOT_ROUTED, Reason.NOT_MAPPED, Reason.DUPLICATE)
OAUTH_FAILURES: Final = ("broken", "highlevel", "token_store")
"""Why an OAuth token could not be had: the installation is broken, HighLevel's OAuth endpoints
failed or refused, Redis did not answer."""
RECONNECT_TRIGGERS: Final = ("auto", "command")
"""Who reconnected an installation: a ``run`` replica whose refresh token was lost, or
``ghl-consumer oauth reconnect`` (counted by the first ``run`` replica to see its result)."""
STITCH_DIRECTIONS: Final = ("sent", "handled")
"""``ghl_stitch_requests_total``: requests this member sent (confirmed on the stitch topic),
or read and answered (handing a profile over or finding none)."""
STITCH_MERGE_RESULTS: Final = ("sent", "empty", "folded", "unchanged")
"""``ghl_stitch_merges_total``: on the answering side a merge ``sent`` (a held profile handed
over, confirmed) or none (``empty``: nothing held, or handed over before); on the asking side
a merge received ``folded`` into the user's profile, or ``unchanged`` (folded before)."""
REJECT_REASONS: Final = tuple(r for r in Reason if r not in DROP_REASONS)
DEAD_LETTER_REASONS: Final = (*REJECT_REASONS, REJECTED_BY_HIGHLEVEL)
_OMIT_REASONS: Final = frozenset(OmitReason)


class StatusClass(StrEnum):
    """``status_class`` label of ``ghl_upserts_total``: how HighLevel answered."""

    OK = "2xx"
    AUTH = "401_403"
    RATE_LIMITED = "429"
    CLIENT_ERROR = "4xx"
    SERVER_ERROR = "5xx"
    ERROR = "error"  # no HTTP answer: timeout or connection failure


def status_class(status: int | None) -> StatusClass:
    """The class of an HTTP status; None (no answer) is ``error``."""
    if status is None:
        return StatusClass.ERROR
    if 200 <= status < 300:
        return StatusClass.OK
    if status in (401, 403):
        return StatusClass.AUTH
    if status == 429:
        return StatusClass.RATE_LIMITED
    if 400 <= status < 500:
        return StatusClass.CLIENT_ERROR
    if status >= 500:
        return StatusClass.SERVER_ERROR
    return StatusClass.ERROR  # 1xx/3xx never reach the client's caller as final answers


class RetryReason(StrEnum):
    """``reason`` label of ``ghl_retries_total``."""

    RATE_LIMITED = "rate_limited"
    UNAUTHORIZED = "unauthorized"
    SERVER_ERROR = "server_error"  # 5xx, 408, 425
    TIMEOUT = "timeout"
    CONNECTION = "connection"


def retry_reason(answer: Answer) -> RetryReason:
    """Why ``answer`` (an answer the engine retries) is retried."""
    if answer.status is None:
        return RetryReason.TIMEOUT if answer.error == "timeout" else RetryReason.CONNECTION
    if answer.status == 429:
        return RetryReason.RATE_LIMITED
    if answer.status in (401, 403):
        return RetryReason.UNAUTHORIZED
    return RetryReason.SERVER_ERROR


# Fields HighLevel may answer about (``ignored_fields``): the upsert schema's names we send.
FIELD_NAMES: Final = frozenset((*STANDARD_FIELDS, "locationId", "tags", "customFields"))

HTTP_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0)
WAIT_BUCKETS: Final = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class StateSnapshot:
    """State read at scrape time; the composition root builds one per scrape.

    ``high_watermarks``: (topic, partition) -> the partition's high watermark (from
    ``KafkaSource.lag()``); lag is the watermark minus the committed offset (else the current
    commit point). ``unhealthy``: integration ids currently answered 401/403.
    ``stalled``: the owned partitions ``StallDetector`` finds stalled.
    ``profile_store_size`` None leaves the gauge as it was. Partitioned profile state:
    ``profile_partitions`` (changelog partition -> profiles held) and the cache's lookups so
    far, ``profile_cache_hits`` and ``profile_cache_misses`` (None: not partitioned).
    """

    partitions: Sequence[PartitionStats] = ()
    high_watermarks: Mapping[tuple[str, int], int] = field(default_factory=dict)
    stalled: Collection[tuple[str, int]] = ()
    paused_partitions: int = 0
    limiters: Sequence[LimiterState] = ()
    unhealthy: Collection[str] = ()
    buffered_records: int = 0
    buffered_bytes: int = 0
    requests_in_flight: int = 0
    profile_store_size: int | None = None
    profile_partitions: Mapping[int, int] = field(default_factory=dict)
    profile_cache_hits: int | None = None
    profile_cache_misses: int | None = None


def _bound(values: Iterable[str]) -> tuple[str, ...]:
    """Configured label values plus ``other``, deduplicated, order kept."""
    return tuple(dict.fromkeys((*values, OTHER)))


class Metrics:
    """The metrics of one consumer process (see the module docstring).

    ``integrations``: configured integration id -> its location id. ``topics``: configured
    topics. Label values outside these are counted under ``other`` (never a new series), so a
    bug or a hostile input cannot grow the series count.
    """

    def __init__(
        self,
        *,
        integrations: Mapping[str, str],
        topics: Iterable[str] = (),
        installations: Iterable[str] = (),
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._location_of = dict(integrations)
        self._integrations = _bound(integrations)
        self._locations = _bound(integrations.values())
        self._topics = _bound(topics)
        reg = self.registry

        def counter(name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
            return Counter(name, doc, labels, registry=reg)

        def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
            return Gauge(name, doc, labels, registry=reg)

        consumed = counter("ghl_events_consumed", "Records read from Kafka.", ["topic"])
        skipped = counter(
            "ghl_events_skipped", "Records skipped: done per a restored offset map.", ["topic"]
        )
        dropped = counter("ghl_events_dropped", "Events deliberately not sent.", ["reason"])
        rejected = counter("ghl_events_rejected", "Events that cannot be used.", ["reason"])
        upserts = counter(
            "ghl_upserts",
            "Upsert requests sent to HighLevel, by answer.",
            ["integration", "status_class"],
        )
        http = Histogram(
            "ghl_http_request_duration_seconds",
            "HighLevel request latency.",
            ["integration", "endpoint"],
            buckets=HTTP_BUCKETS,
            registry=reg,
        )
        coalesced = counter(
            "ghl_events_coalesced",
            "Events folded into an upsert already pending for the same contact.",
            ["integration"],
        )
        wait = Histogram(
            "ghl_ratelimit_wait_seconds",
            "Time a delivery waited for its location's rate permit.",
            ["location"],
            buckets=WAIT_BUCKETS,
            registry=reg,
        )
        self._remaining = gauge(
            "ghl_ratelimit_remaining", "Requests the location's window allows now.", ["location"]
        )
        self._daily_remaining = gauge(
            "ghl_ratelimit_daily_remaining", "Requests left in the location's day.", ["location"]
        )
        self._fallback = gauge(
            "ghl_ratelimit_fallback_active",
            "1 while the shared (Redis) limiter is unreachable and local budgets are used.",
        )
        responses_429 = counter(
            "ghl_responses_429", "429 answers from HighLevel.", ["location"]
        )
        retries = counter(
            "ghl_retries", "Deliveries scheduled again.", ["integration", "reason"]
        )
        dead_letters = counter(
            "ghl_dead_letters", "Records written to the dead-letter topic.", ["reason"]
        )
        parked = counter(
            "ghl_parked_events", "Events held on the parking topic.", ["integration", "reason"]
        )
        replayed = counter(
            "ghl_replayed_events", "Parked events replayed for delivery.", ["integration"]
        )
        self._committed = gauge(
            "ghl_partition_committed_offset",
            "Last committed offset of an owned partition.",
            ["topic", "partition"],
        )
        self._lag = gauge(
            "ghl_partition_lag",
            "High watermark minus committed offset of an owned partition.",
            ["topic", "partition"],
        )
        self._incomplete = gauge(
            "ghl_partition_incomplete",
            "Records admitted and not done yet, per owned partition.",
            ["topic", "partition"],
        )
        self._stalled = gauge(
            "ghl_partition_stalled",
            "1 while an owned partition has work but its commit point has not moved for "
            "metrics.stall_seconds (the rate limiter not holding it), else 0.",
            ["topic", "partition"],
        )
        self._paused = gauge("ghl_partitions_paused", "Owned partitions paused (backpressure).")
        rebalances = counter("ghl_rebalances", "Rebalance callbacks.", ["kind"])
        self._profile_size = gauge("ghl_profile_store_size", "Profiles remembered.")
        self._profile_restore = gauge(
            "ghl_profile_restore_seconds",
            "Duration of the last profile restore, per changelog partition (all: whole).",
            ["partition"],
        )
        self._profile_restore_records = counter(
            "ghl_profile_restore_records",
            "Profile changelog records read by restores, per changelog partition.",
            ["partition"],
        )
        self._profile_state = gauge(
            "ghl_profile_state_profiles",
            "Profiles held for an owned changelog partition (partitioned state).",
            ["partition"],
        )
        self._cache_hits = counter(
            "ghl_profile_cache_hits", "Profile lookups answered from memory (partitioned state)."
        )
        self._cache_misses = counter(
            "ghl_profile_cache_misses", "Profile lookups read from disk (partitioned state)."
        )
        self._cache_seen = (0, 0)  # the store's hits and misses at the last refresh
        self._healthy = gauge(
            "ghl_integration_healthy",
            "0 while the integration's token is refused (401/403), else 1.",
            ["integration"],
        )
        ignored = counter(
            "ghl_ignored_fields",
            "Fields sent that HighLevel's answer did not reflect.",
            ["integration", "field"],
        )
        self._omitted = counter(
            "ghl_fields_omitted",
            "Event fields left out of an upsert: wrong type, too long or invalid.",
            ["field", "reason"],
        )  # children made on first use: both labels are closed sets
        dnd_kept = counter(
            "ghl_permanent_dnd_kept",
            "Upserts HighLevel refused to lift a permanent DND for, sent again without dnd.",
            ["integration", "channel"],
        )
        delivery_records = counter(
            "ghl_delivery_records",
            "Delivery records (one per HighLevel call) written to the delivery topic, or not.",
            ["result"],
        )
        stitch_requests = counter(
            "ghl_stitch_requests",
            "Identity stitching requests across partitions: sent, or handled here.",
            ["direction"],
        )
        stitch_merges = counter(
            "ghl_stitch_merges",
            "Identity stitching merges: sent or empty (answering), folded or unchanged (asking).",
            ["result"],
        )
        self._buffered = gauge("ghl_buffered_records", "Records admitted and not done yet.")
        self._buffered_bytes = gauge(
            "ghl_buffered_bytes", "Bytes of the records admitted and not done yet."
        )
        self._in_flight = gauge("ghl_requests_in_flight", "HighLevel requests in flight.")
        installs = _bound(installations)
        refreshes = counter(
            "ghl_oauth_refreshes", "Company token refreshes made by this process.", ["installation"]
        )
        failures = counter(
            "ghl_oauth_failures", "OAuth tokens that could not be had.", ["installation", "kind"]
        )
        expiry = gauge(
            "ghl_oauth_token_expiry_seconds",
            "Seconds until the installation's company access token expires.",
            ["installation"],
        )
        broken = gauge(
            "ghl_oauth_installation_broken",
            "1 while the installation needs `ghl-consumer oauth reconnect`.",
            ["installation"],
        )
        served = gauge(
            "ghl_oauth_locations", "Locations the installation serves.", ["installation"]
        )
        reconnects = counter(
            "ghl_oauth_reconnects",
            "Reconnects of the installation (a new grant from POST /oauth/reconnect), by result.",
            ["installation", "trigger", "result"],
        )
        self._oauth_reconnects = {
            (i, t, r): reconnects.labels(i, t, r)
            for i in installs
            for t in RECONNECT_TRIGGERS
            for r in RECONNECT_RESULTS
        }
        self._oauth_refreshes = {i: refreshes.labels(i) for i in installs}
        self._oauth_failures = {
            (i, k): failures.labels(i, k) for i in installs for k in OAUTH_FAILURES
        }
        self._oauth_expiry = {i: expiry.labels(i) for i in installs}
        self._oauth_broken = {i: broken.labels(i) for i in installs}
        self._oauth_locations = {i: served.labels(i) for i in installs}

        # Label children bound once: the hot path is a dict lookup plus an increment.
        self._consumed = {t: consumed.labels(t) for t in self._topics}
        self._skipped = {t: skipped.labels(t) for t in self._topics}
        self._dropped = {r: dropped.labels(r) for r in _bound(DROP_REASONS)}
        self._rejected = {r: rejected.labels(r) for r in _bound(REJECT_REASONS)}
        self._dead_letters = {r: dead_letters.labels(r) for r in _bound(DEAD_LETTER_REASONS)}
        self._rebalances = {k: rebalances.labels(k) for k in RebalanceKind}
        self._coalesced = {i: coalesced.labels(i) for i in self._integrations}
        self._replayed = {i: replayed.labels(i) for i in self._integrations}
        self._upserts = {
            (i, c): upserts.labels(i, c) for i in self._integrations for c in StatusClass
        }
        self._http = {(i, e): http.labels(i, e) for i in self._integrations for e in Endpoint}
        self._retries = {
            (i, r): retries.labels(i, r) for i in self._integrations for r in RetryReason
        }
        self._parked = {
            (i, r): parked.labels(i, r) for i in self._integrations for r in _bound(ParkReason)
        }
        self._wait = {loc: wait.labels(loc) for loc in self._locations}
        self._429 = {loc: responses_429.labels(loc) for loc in self._locations}
        self._dnd_kept = {
            (i, c): dnd_kept.labels(i, c) for i in self._integrations for c in _bound(DND_CHANNELS)
        }
        self._delivery_records = {r: delivery_records.labels(r) for r in ("written", "failed")}
        self._stitch_requests = {d: stitch_requests.labels(d) for d in _bound(STITCH_DIRECTIONS)}
        self._stitch_merges = {r: stitch_merges.labels(r) for r in _bound(STITCH_MERGE_RESULTS)}
        self._ignored = ignored  # children made on first use: field names are a closed set
        self._partition_labels: set[tuple[str, str]] = set()
        for integration in integrations:
            self._healthy.labels(integration).set(1)

    # -- names ----------------------------------------------------------------------------------

    def series_names(self) -> frozenset[str]:
        """Every series name this registry can export (``_total``, ``_bucket`` ... included);
        what dashboards and alert rules may query."""
        names: set[str] = set()
        for family in self.registry.collect():
            if family.type == "counter":
                names.update((family.name + "_total", family.name + "_created"))
            elif family.type == "histogram":
                names.update(family.name + s for s in ("_bucket", "_sum", "_count", "_created"))
            else:
                names.add(family.name)
        return frozenset(names)

    def exposition(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)

    # -- hot path: called by the engine ---------------------------------------------------------

    def consumed(self, topic: str, count: int = 1) -> None:
        """``count`` records were read from Kafka."""
        _child(self._consumed, topic).inc(count)

    def skipped(self, topic: str, count: int = 1) -> None:
        """``count`` records were skipped: the restored offset map says they are done."""
        _child(self._skipped, topic).inc(count)

    def dropped(self, reason: str, count: int = 1) -> None:
        """``count`` events were deliberately not sent (a ``DROP_REASONS`` value)."""
        _child(self._dropped, reason).inc(count)

    def rejected(self, reason: str, count: int = 1) -> None:
        """``count`` events could not be used (a ``REJECT_REASONS`` value)."""
        _child(self._rejected, reason).inc(count)

    def coalesced(self, integration: str) -> None:
        """An upsert folded into one already pending for the same contact."""
        _child(self._coalesced, integration).inc()

    def http(self, integration: str, endpoint: Endpoint, answer: Answer) -> None:
        """One HighLevel request finished: latency, and for upserts the answer's class; a 429
        counts for the integration's location."""
        key = (integration, endpoint) if integration in self._location_of else (OTHER, endpoint)
        self._http[key].observe(answer.latency_s)
        cls = status_class(answer.status)
        if endpoint is Endpoint.UPSERT:
            self._upserts[key[0], cls].inc()
        if cls is StatusClass.RATE_LIMITED:
            _child(self._429, self._location_of.get(integration, OTHER)).inc()

    def retry(self, integration: str, answer: Answer) -> None:
        """A delivery was scheduled again after ``answer``."""
        integration = integration if integration in self._location_of else OTHER
        self._retries[integration, retry_reason(answer)].inc()

    def rate_wait(self, location: str, seconds: float) -> None:
        """A delivery waited ``seconds`` for its location's rate permit."""
        _child(self._wait, location).observe(seconds)

    def dead_lettered(self, reason: str, count: int = 1) -> None:
        """``count`` records were confirmed on the dead-letter topic."""
        _child(self._dead_letters, reason).inc(count)

    def parked(self, integration: str, reason: ParkReason, count: int = 1) -> None:
        """``count`` events were confirmed on the parking topic."""
        integration = integration if integration in self._location_of else OTHER
        self._parked[integration, reason].inc(count)

    def replayed(self, integration: str, count: int = 1) -> None:
        """``count`` parked events were taken back for delivery."""
        _child(self._replayed, integration).inc(count)

    def rebalance(self, kind: RebalanceKind) -> None:
        """A rebalance callback ran."""
        self._rebalances[kind].inc()

    def ignored_field(self, integration: str, field_name: str) -> None:
        """HighLevel's answer did not reflect ``field_name`` that was sent."""
        integration = integration if integration in self._location_of else OTHER
        name = field_name if field_name in FIELD_NAMES else OTHER
        self._ignored.labels(integration, name).inc()

    def oauth_refreshed(self, installation: str, count: int) -> None:
        """This process refreshed ``installation``'s company token ``count`` more times."""
        _child(self._oauth_refreshes, installation).inc(count)

    def oauth_failed(self, installation: str, kind: str) -> None:
        """A token of ``installation`` could not be had (``kind``: one of ``OAUTH_FAILURES``)."""
        installation = installation if installation in self._oauth_broken else OTHER
        self._oauth_failures[installation, kind if kind in OAUTH_FAILURES else "highlevel"].inc()

    def oauth_reconnected(self, installation: str, trigger: str, result: str, count: int) -> None:
        """``count`` more reconnects of ``installation`` by ``trigger`` ended with ``result``
        (one of ``RECONNECT_RESULTS``)."""
        installation = installation if installation in self._oauth_broken else OTHER
        trigger = trigger if trigger in RECONNECT_TRIGGERS else "command"
        result = result if result in RECONNECT_RESULTS else "failed"
        self._oauth_reconnects[installation, trigger, result].inc(count)

    def oauth_state(
        self, installation: str, *, expires_in: float | None, broken: bool, locations: int
    ) -> None:
        """``installation`` as last checked: its company token's seconds left (None: unknown,
        left as it was), broken or not, how many locations it serves."""
        if expires_in is not None:
            _child(self._oauth_expiry, installation).set(expires_in)
        _child(self._oauth_broken, installation).set(1 if broken else 0)
        _child(self._oauth_locations, installation).set(locations)

    def omitted_field(self, field_name: str, reason: str) -> None:
        """A field of a mapped event was left out of its upsert (``Omitted``)."""
        name = field_name if field_name in OMITTABLE_FIELDS else OTHER
        why = reason if reason in _OMIT_REASONS else OTHER
        self._omitted.labels(name, why).inc()

    def permanent_dnd_kept(self, integration: str, channel: str) -> None:
        """HighLevel refused to lift a permanent DND on ``channel``; the upsert went again
        without ``dnd``."""
        integration = integration if integration in self._location_of else OTHER
        channel = channel if channel in DND_CHANNELS else OTHER
        self._dnd_kept[integration, channel].inc()

    def delivery_records(self, result: str, count: int) -> None:
        """``count`` delivery records were ``written`` to the delivery topic, or ``failed``."""
        self._delivery_records["written" if result == "written" else "failed"].inc(count)

    def stitch_requests(self, direction: str, count: int = 1) -> None:
        """``count`` stitch requests were ``sent`` (confirmed) or ``handled`` here."""
        _child(self._stitch_requests, direction).inc(count)

    def stitch_merges(self, result: str, count: int = 1) -> None:
        """``count`` stitch merges, by ``result`` (``STITCH_MERGE_RESULTS``)."""
        _child(self._stitch_merges, result).inc(count)

    def profile_restored(
        self, partition: int | None, seconds: float, records: int, size: int
    ) -> None:
        """A restore of changelog ``partition`` (None: the whole changelog) read ``records``
        in ``seconds``; ``size`` profiles are held for it (for every partition when None)."""
        label = "all" if partition is None else str(partition)
        self._profile_restore.labels(label).set(seconds)
        self._profile_restore_records.labels(label).inc(records)
        if partition is None:
            self._profile_size.set(size)
        else:
            self._profile_state.labels(label).set(size)

    def profile_released(self, partition: int) -> None:
        """Changelog ``partition``'s profiles left this member: its series go."""
        for metric in (self._profile_restore, self._profile_restore_records, self._profile_state):
            metric.remove(str(partition))  # a label set never set is ignored

    # -- scrape time ----------------------------------------------------------------------------

    def refresh(self, snapshot: StateSnapshot) -> None:
        """Set every state gauge from ``snapshot``; partitions no longer owned lose their
        series. Called by the web server before each exposition."""
        seen: set[tuple[str, str]] = set()
        stalled = set(snapshot.stalled)
        for p in snapshot.partitions:
            labels = (p.topic if p.topic in self._consumed else OTHER, str(p.partition))
            seen.add(labels)
            self._incomplete.labels(*labels).set(p.incomplete)
            self._stalled.labels(*labels).set(1 if (p.topic, p.partition) in stalled else 0)
            position = p.committed_offset if p.committed_offset is not None else p.commit_offset
            if p.committed_offset is not None:
                self._committed.labels(*labels).set(p.committed_offset)
            high = snapshot.high_watermarks.get((p.topic, p.partition))
            if high is not None and position is not None:
                self._lag.labels(*labels).set(max(0, high - position))
        for labels in self._partition_labels - seen:
            for gauge in (self._incomplete, self._committed, self._lag, self._stalled):
                gauge.remove(*labels)  # a label set never set is ignored
        self._partition_labels = seen
        self._paused.set(snapshot.paused_partitions)
        fallback = False
        for state in snapshot.limiters:
            fallback = fallback or state.fallback_active
            if state.location_id in self._wait and state.location_id != OTHER:
                self._remaining.labels(state.location_id).set(state.remaining)
                self._daily_remaining.labels(state.location_id).set(state.daily_remaining)
        self._fallback.set(1 if fallback else 0)
        unhealthy = set(snapshot.unhealthy)
        for integration in self._location_of:
            self._healthy.labels(integration).set(0 if integration in unhealthy else 1)
        self._buffered.set(snapshot.buffered_records)
        self._buffered_bytes.set(snapshot.buffered_bytes)
        self._in_flight.set(snapshot.requests_in_flight)
        if snapshot.profile_store_size is not None:
            self._profile_size.set(snapshot.profile_store_size)
        for partition, size in snapshot.profile_partitions.items():
            self._profile_state.labels(str(partition)).set(size)
        if snapshot.profile_cache_hits is not None and snapshot.profile_cache_misses is not None:
            hits, misses = snapshot.profile_cache_hits, snapshot.profile_cache_misses
            self._cache_hits.inc(max(0, hits - self._cache_seen[0]))
            self._cache_misses.inc(max(0, misses - self._cache_seen[1]))
            self._cache_seen = (hits, misses)


def _child(children: Mapping[str, _V], value: str) -> _V:
    child = children.get(value)
    return child if child is not None else children[OTHER]
