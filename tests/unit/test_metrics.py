"""consumer.observe.metrics: the closed list, bounded labels, scrape-time gauges."""

from __future__ import annotations

import re

import pytest

from consumer.core.events import OmitReason, Reason
from consumer.engine.parking import ParkReason
from consumer.engine.ports import Endpoint, RebalanceKind
from consumer.highlevel.verdicts import Answer, classify
from consumer.observe.metrics import (
    OTHER,
    Metrics,
    RetryReason,
    StateSnapshot,
    StatusClass,
    retry_reason,
    status_class,
)
from consumer.ratelimit.budget import LimiterState
from tests.harness.engine import partition_stats

INTEGRATIONS = {"acme": "loc-acme", "beta": "loc-beta"}


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(integrations=INTEGRATIONS, topics=["events"])


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def answer(status: int | None, latency: float = 0.05, error: str | None = None) -> Answer:
    return Answer(verdict=classify(status), status=status, latency_s=latency, error=error)


def series_label_values(m: Metrics, label: str) -> set[str]:
    return {
        sample.labels[label]
        for family in m.registry.collect()
        for sample in family.samples
        if label in sample.labels
    }


def limiter(
    location: str, *, remaining: int = 7, daily: int = 1234, fallback: bool = False
) -> LimiterState:
    return LimiterState(
        location_id=location,
        remaining=remaining,
        in_flight=0,
        waiting=0,
        paused_until=None,
        daily_remaining=daily,
        daily_exhausted_until=None,
        fallback_active=fallback,
    )


# -- the closed list ----------------------------------------------------------------------------

EXPECTED_SERIES = {
    "ghl_events_consumed_total",
    "ghl_events_skipped_total",
    "ghl_events_dropped_total",
    "ghl_events_rejected_total",
    "ghl_upserts_total",
    "ghl_http_request_duration_seconds_bucket",
    "ghl_events_coalesced_total",
    "ghl_ratelimit_wait_seconds_bucket",
    "ghl_ratelimit_remaining",
    "ghl_ratelimit_daily_remaining",
    "ghl_ratelimit_fallback_active",
    "ghl_responses_429_total",
    "ghl_retries_total",
    "ghl_dead_letters_total",
    "ghl_parked_events_total",
    "ghl_replayed_events_total",
    "ghl_partition_committed_offset",
    "ghl_partition_lag",
    "ghl_partition_incomplete",
    "ghl_partition_stalled",
    "ghl_partitions_paused",
    "ghl_rebalances_total",
    "ghl_profile_store_size",
    "ghl_profile_restore_seconds",
    "ghl_profile_restore_records_total",
    "ghl_profile_state_profiles",
    "ghl_profile_cache_hits_total",
    "ghl_profile_cache_misses_total",
    "ghl_integration_healthy",
    "ghl_ignored_fields_total",
    "ghl_fields_omitted_total",
    "ghl_permanent_dnd_kept_total",
    "ghl_delivery_records_total",
    "ghl_stitch_requests_total",
    "ghl_stitch_merges_total",
    "ghl_buffered_records",
    "ghl_buffered_bytes",
    "ghl_requests_in_flight",
    "ghl_oauth_refreshes_total",
    "ghl_oauth_failures_total",
    "ghl_oauth_token_expiry_seconds",
    "ghl_oauth_installation_broken",
    "ghl_oauth_locations",
    "ghl_oauth_reconnects_total",
}


def test_series_names_are_the_closed_list(metrics: Metrics) -> None:
    names = metrics.series_names()
    assert names >= EXPECTED_SERIES
    bases = {re.sub(r"_(total|created|bucket|sum|count)$", "", n) for n in names}
    expected_bases = {re.sub(r"_(total|bucket)$", "", n) for n in EXPECTED_SERIES}
    assert bases == expected_bases
    assert all(n.startswith("ghl_") for n in names)


def test_fresh_instances_have_their_own_registry() -> None:
    first = Metrics(integrations=INTEGRATIONS)
    second = Metrics(integrations=INTEGRATIONS)
    first.consumed("events")
    assert value(first, "ghl_events_consumed_total", topic=OTHER) == 1
    assert value(second, "ghl_events_consumed_total", topic=OTHER) == 0


# -- counters -------------------------------------------------------------------------------------


def test_consumed_skipped_dropped_rejected(metrics: Metrics) -> None:
    metrics.consumed("events")
    metrics.consumed("events")
    metrics.skipped("events")
    metrics.dropped(Reason.NOT_MAPPED)
    metrics.rejected(Reason.INVALID_JSON)
    assert value(metrics, "ghl_events_consumed_total", topic="events") == 2
    assert value(metrics, "ghl_events_skipped_total", topic="events") == 1
    assert value(metrics, "ghl_events_dropped_total", reason="not_mapped") == 1
    assert value(metrics, "ghl_events_rejected_total", reason="invalid_json") == 1


def test_omitted_fields_by_field_and_reason(metrics: Metrics) -> None:
    metrics.omitted_field("firstName", OmitReason.WRONG_TYPE)
    metrics.omitted_field("firstName", OmitReason.WRONG_TYPE)
    metrics.omitted_field("phone", OmitReason.NO_REGION)
    assert value(metrics, "ghl_fields_omitted_total", field="firstName", reason="wrong_type") == 2
    assert value(metrics, "ghl_fields_omitted_total", field="phone", reason="no_region") == 1


def test_label_values_outside_configuration_collapse_to_other(metrics: Metrics) -> None:
    metrics.consumed("user-42@example.com")
    metrics.dropped("made-up reason")
    metrics.rejected(Reason.NOT_MAPPED)  # a drop reason is not a reject reason
    metrics.coalesced("tenant-from-event")
    metrics.http("unknown", Endpoint.UPSERT, answer(429))
    metrics.rate_wait("loc-unknown", 0.2)
    metrics.ignored_field("acme", "favouriteColour")
    metrics.omitted_field("traits.favouriteColour", "made-up")
    assert value(metrics, "ghl_fields_omitted_total", field=OTHER, reason=OTHER) == 1
    metrics.permanent_dnd_kept("acme", "Pigeon")
    metrics.permanent_dnd_kept("nobody", "SMS")
    assert value(metrics, "ghl_events_consumed_total", topic=OTHER) == 1
    assert value(metrics, "ghl_events_dropped_total", reason=OTHER) == 1
    assert value(metrics, "ghl_events_rejected_total", reason=OTHER) == 1
    assert value(metrics, "ghl_events_coalesced_total", integration=OTHER) == 1
    assert value(metrics, "ghl_upserts_total", integration=OTHER, status_class="429") == 1
    assert value(metrics, "ghl_responses_429_total", location=OTHER) == 1
    assert value(metrics, "ghl_ratelimit_wait_seconds_count", location=OTHER) == 1
    assert value(metrics, "ghl_ignored_fields_total", integration="acme", field=OTHER) == 1
    assert value(metrics, "ghl_permanent_dnd_kept_total", integration="acme", channel=OTHER) == 1
    assert value(metrics, "ghl_permanent_dnd_kept_total", integration=OTHER, channel="SMS") == 1
    assert series_label_values(metrics, "topic") <= {"events", OTHER}
    assert series_label_values(metrics, "integration") <= {"acme", "beta", OTHER}
    assert series_label_values(metrics, "location") <= {"loc-acme", "loc-beta", OTHER}


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, StatusClass.OK),
        (201, StatusClass.OK),
        (400, StatusClass.CLIENT_ERROR),
        (401, StatusClass.AUTH),
        (403, StatusClass.AUTH),
        (422, StatusClass.CLIENT_ERROR),
        (429, StatusClass.RATE_LIMITED),
        (500, StatusClass.SERVER_ERROR),
        (503, StatusClass.SERVER_ERROR),
        (None, StatusClass.ERROR),
    ],
)
def test_status_class(status: int | None, expected: StatusClass) -> None:
    assert status_class(status) is expected


def test_http_records_latency_status_class_and_429_per_location(metrics: Metrics) -> None:
    metrics.http("acme", Endpoint.UPSERT, answer(201, latency=0.03))
    metrics.http("acme", Endpoint.UPSERT, answer(429, latency=0.2))
    metrics.http("acme", Endpoint.ADD_TAGS, answer(200, latency=0.04))
    metrics.http("beta", Endpoint.UPSERT, answer(None, latency=15.0, error="timeout"))
    assert value(metrics, "ghl_upserts_total", integration="acme", status_class="2xx") == 1
    assert value(metrics, "ghl_upserts_total", integration="acme", status_class="429") == 1
    assert value(metrics, "ghl_upserts_total", integration="beta", status_class="error") == 1
    # tag requests are timed but are not upserts
    assert value(metrics, "ghl_http_request_duration_seconds_count",
                 integration="acme", endpoint="add_tags") == 1
    assert value(metrics, "ghl_http_request_duration_seconds_count",
                 integration="acme", endpoint="upsert") == 2
    assert value(metrics, "ghl_http_request_duration_seconds_sum",
                 integration="acme", endpoint="upsert") == pytest.approx(0.23)
    assert value(metrics, "ghl_http_request_duration_seconds_bucket",
                 integration="acme", endpoint="upsert", le="0.05") == 1
    assert value(metrics, "ghl_responses_429_total", location="loc-acme") == 1
    assert value(metrics, "ghl_responses_429_total", location="loc-beta") == 0


@pytest.mark.parametrize(
    ("status", "error", "reason"),
    [
        (429, None, RetryReason.RATE_LIMITED),
        (401, None, RetryReason.UNAUTHORIZED),
        (503, None, RetryReason.SERVER_ERROR),
        (None, "timeout", RetryReason.TIMEOUT),
        (None, "connection: ClientConnectorError", RetryReason.CONNECTION),
    ],
)
def test_retry_reasons(
    metrics: Metrics, status: int | None, error: str | None, reason: RetryReason
) -> None:
    assert retry_reason(answer(status, error=error)) is reason
    metrics.retry("beta", answer(status, error=error))
    assert value(metrics, "ghl_retries_total", integration="beta", reason=reason) == 1


def test_dead_letters_parking_replay_rebalances(metrics: Metrics) -> None:
    metrics.dead_lettered("rejected_by_highlevel", count=3)
    metrics.dead_lettered(Reason.INVALID_JSON)
    metrics.parked("acme", ParkReason.UNAUTHORIZED, count=5)
    metrics.replayed("acme", count=5)
    metrics.rebalance(RebalanceKind.ASSIGNED)
    metrics.rebalance(RebalanceKind.REVOKED)
    metrics.rebalance(RebalanceKind.ASSIGNED)
    assert value(metrics, "ghl_dead_letters_total", reason="rejected_by_highlevel") == 3
    assert value(metrics, "ghl_dead_letters_total", reason="invalid_json") == 1
    assert value(metrics, "ghl_parked_events_total", integration="acme",
                 reason="unauthorized") == 5
    assert value(metrics, "ghl_replayed_events_total", integration="acme") == 5
    assert value(metrics, "ghl_rebalances_total", kind="assigned") == 2
    assert value(metrics, "ghl_rebalances_total", kind="lost") == 0


def test_profile_restore(metrics: Metrics) -> None:
    metrics.profile_restored(None, 2.5, 1300, 1200)
    assert value(metrics, "ghl_profile_restore_seconds", partition="all") == 2.5
    assert value(metrics, "ghl_profile_restore_records_total", partition="all") == 1300
    assert value(metrics, "ghl_profile_store_size") == 1200


def test_partitioned_restores_are_per_partition_and_go_with_it(metrics: Metrics) -> None:
    metrics.profile_restored(3, 1.5, 40, 30)
    metrics.profile_restored(3, 0.5, 2, 31)  # a second restore: a tail
    metrics.profile_restored(4, 0.25, 7, 7)
    assert value(metrics, "ghl_profile_restore_seconds", partition="3") == 0.5
    assert value(metrics, "ghl_profile_restore_records_total", partition="3") == 42
    assert value(metrics, "ghl_profile_state_profiles", partition="3") == 31
    metrics.profile_released(3)
    for name in ("ghl_profile_restore_seconds", "ghl_profile_state_profiles"):
        assert value(metrics, name, partition="3") is None
    assert value(metrics, "ghl_profile_restore_records_total", partition="3") is None
    assert value(metrics, "ghl_profile_state_profiles", partition="4") == 7


def test_the_profile_cache_counts_follow_the_store(metrics: Metrics) -> None:
    metrics.refresh(
        StateSnapshot(profile_partitions={0: 5}, profile_cache_hits=90, profile_cache_misses=10)
    )
    metrics.refresh(
        StateSnapshot(profile_partitions={0: 6}, profile_cache_hits=95, profile_cache_misses=12)
    )
    assert value(metrics, "ghl_profile_cache_hits_total") == 95
    assert value(metrics, "ghl_profile_cache_misses_total") == 12
    assert value(metrics, "ghl_profile_state_profiles", partition="0") == 6


# -- scrape-time gauges ---------------------------------------------------------------------------


def test_refresh_sets_partition_limiter_and_process_gauges(metrics: Metrics) -> None:
    metrics.refresh(
        StateSnapshot(
            partitions=[partition_stats(0, incomplete=3, committed=100, commit=100),
                        partition_stats(1, committed=None, commit=5)],
            high_watermarks={("events", 0): 150, ("events", 1): 9},
            stalled=[("events", 0)],
            paused_partitions=1,
            limiters=[limiter("loc-acme", remaining=42, daily=199_000),
                      limiter("loc-stranger", remaining=1)],
            unhealthy={"beta"},
            buffered_records=17,
            buffered_bytes=17_000,
            requests_in_flight=4,
            profile_store_size=88,
        )
    )
    assert value(metrics, "ghl_partition_committed_offset", topic="events", partition="0") == 100
    assert value(metrics, "ghl_partition_lag", topic="events", partition="0") == 50
    assert value(metrics, "ghl_partition_incomplete", topic="events", partition="0") == 3
    assert value(metrics, "ghl_partition_stalled", topic="events", partition="0") == 1
    assert value(metrics, "ghl_partition_stalled", topic="events", partition="1") == 0
    # nothing committed yet: lag is measured from where consumption would resume
    assert value(metrics, "ghl_partition_committed_offset", topic="events", partition="1") is None
    assert value(metrics, "ghl_partition_lag", topic="events", partition="1") == 4
    assert value(metrics, "ghl_partitions_paused") == 1
    assert value(metrics, "ghl_ratelimit_remaining", location="loc-acme") == 42
    assert value(metrics, "ghl_ratelimit_daily_remaining", location="loc-acme") == 199_000
    assert "loc-stranger" not in series_label_values(metrics, "location")
    assert value(metrics, "ghl_ratelimit_fallback_active") == 0
    assert value(metrics, "ghl_integration_healthy", integration="acme") == 1
    assert value(metrics, "ghl_integration_healthy", integration="beta") == 0
    assert value(metrics, "ghl_buffered_records") == 17
    assert value(metrics, "ghl_buffered_bytes") == 17_000
    assert value(metrics, "ghl_requests_in_flight") == 4
    assert value(metrics, "ghl_profile_store_size") == 88


def test_refresh_drops_series_of_partitions_no_longer_owned(metrics: Metrics) -> None:
    metrics.refresh(StateSnapshot(partitions=[partition_stats(0), partition_stats(1)],
                                  high_watermarks={("events", 1): 20}))
    metrics.refresh(StateSnapshot(partitions=[partition_stats(0)], limiters=[
        limiter("loc-beta", fallback=True)]))
    assert value(metrics, "ghl_partition_incomplete", topic="events", partition="0") == 0
    assert value(metrics, "ghl_partition_incomplete", topic="events", partition="1") is None
    assert value(metrics, "ghl_partition_lag", topic="events", partition="1") is None
    assert value(metrics, "ghl_partition_stalled", topic="events", partition="1") is None
    assert value(metrics, "ghl_ratelimit_fallback_active") == 1


def test_integrations_start_healthy_and_recover(metrics: Metrics) -> None:
    assert value(metrics, "ghl_integration_healthy", integration="acme") == 1
    metrics.refresh(StateSnapshot(unhealthy=["acme"]))
    assert value(metrics, "ghl_integration_healthy", integration="acme") == 0
    metrics.refresh(StateSnapshot())
    assert value(metrics, "ghl_integration_healthy", integration="acme") == 1


def test_exposition_is_text_format_without_secrets(metrics: Metrics) -> None:
    metrics.consumed("events")
    text = metrics.exposition().decode()
    assert 'ghl_events_consumed_total{topic="events"} 1.0' in text
    assert "# TYPE ghl_http_request_duration_seconds histogram" in text


def test_oauth_series_are_per_installation_and_bounded() -> None:
    metrics = Metrics(integrations=INTEGRATIONS, installations=["agency"])
    metrics.oauth_refreshed("agency", 2)
    metrics.oauth_failed("agency", "broken")
    metrics.oauth_failed("elsewhere", "no-such-kind")
    metrics.oauth_state("agency", expires_in=12.5, broken=True, locations=20)
    metrics.oauth_state("agency", expires_in=None, broken=True, locations=20)
    assert value(metrics, "ghl_oauth_refreshes_total", installation="agency") == 2
    assert value(metrics, "ghl_oauth_failures_total", installation="agency", kind="broken") == 1
    assert (
        value(metrics, "ghl_oauth_failures_total", installation=OTHER, kind="highlevel") == 1
    )
    assert value(metrics, "ghl_oauth_token_expiry_seconds", installation="agency") == 12.5
    assert value(metrics, "ghl_oauth_installation_broken", installation="agency") == 1
    assert value(metrics, "ghl_oauth_locations", installation="agency") == 20


def test_oauth_reconnects_are_counted_by_trigger_and_result() -> None:
    metrics = Metrics(integrations=INTEGRATIONS, installations=["agency"])
    metrics.oauth_reconnected("agency", "auto", "ok", 2)
    metrics.oauth_reconnected("agency", "command", "refused", 1)
    metrics.oauth_reconnected("elsewhere", "someone", "odd", 1)
    labels = {"installation": "agency", "trigger": "auto", "result": "ok"}
    assert value(metrics, "ghl_oauth_reconnects_total", **labels) == 2
    labels = {"installation": "agency", "trigger": "command", "result": "refused"}
    assert value(metrics, "ghl_oauth_reconnects_total", **labels) == 1
    labels = {"installation": OTHER, "trigger": "command", "result": "failed"}
    assert value(metrics, "ghl_oauth_reconnects_total", **labels) == 1
    labels = {"installation": "agency", "trigger": "auto", "result": "too_soon"}
    assert value(metrics, "ghl_oauth_reconnects_total", **labels) == 0


def test_stitch_counters_have_closed_labels(metrics: Metrics) -> None:
    metrics.stitch_requests("sent", 2)
    metrics.stitch_requests("handled")
    metrics.stitch_merges("folded")
    metrics.stitch_merges("made-up")  # never a new series
    assert value(metrics, "ghl_stitch_requests_total", direction="sent") == 2
    assert value(metrics, "ghl_stitch_requests_total", direction="handled") == 1
    assert value(metrics, "ghl_stitch_merges_total", result="folded") == 1
    assert value(metrics, "ghl_stitch_merges_total", result=OTHER) == 1
    assert value(metrics, "ghl_stitch_merges_total", result="empty") == 0  # present from start
    assert series_label_values(metrics, "result") >= {"sent", "empty", "folded", "unchanged"}
