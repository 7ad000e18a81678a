"""A real Prometheus server (Debian's ``prometheus``) scrapes a running consumer's /metrics.

The web server runs in the test's event loop with a ``Metrics`` the test drives; Prometheus
scrapes it every second, loads grafana/alerts.yml, and its HTTP API must return the ``ghl_``
series with the values the test produced, evaluate the dashboard's kind of queries, and report
the alert rules healthy. Fails, never skips, when ``prometheus`` is not installed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from consumer.engine.offsets import PartitionStats
from consumer.engine.ports import Endpoint
from consumer.highlevel.verdicts import Answer, Verdict
from consumer.observe.metrics import Metrics, StateSnapshot
from consumer.observe.readiness import Readiness
from consumer.observe.web import WebServer, serve_web
from tests.integration.prometheus_server import api, prometheus_scraping, query_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # make check leaves it out

async def snapshot() -> StateSnapshot:
    return StateSnapshot(
        partitions=[PartitionStats("events", 0, 120, 120, 130, 4, 4, 0, 0, 0, 0.0)],
        high_watermarks={("events", 0): 200},
        buffered_records=4,
    )


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(integrations={"acme": "loc-acme"}, topics=["events"])


@pytest.fixture
async def consumer(metrics: Metrics) -> AsyncIterator[WebServer]:
    async with serve_web(
        port=0,
        metrics=metrics,
        readiness=lambda: Readiness(assigned=True, broker_reachable=True),
        state=snapshot,
    ) as server:
        yield server


@pytest.fixture
def prometheus(consumer: WebServer, tmp_path: Path) -> Iterator[str]:
    with prometheus_scraping(consumer.port, tmp_path) as url:
        yield url


async def test_prometheus_scrapes_the_consumer(metrics: Metrics, prometheus: str) -> None:
    for _ in range(7):
        metrics.consumed("events")
    metrics.dropped("not_mapped")
    for latency in (0.02, 0.04, 0.3):
        metrics.http("acme", Endpoint.UPSERT, Answer(
            verdict=Verdict.DELIVERED, status=200, latency_s=latency))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        result = await query_until(
            session, prometheus, 'ghl_events_consumed_total{topic="events"}', 7
        )
        assert result[0]["metric"]["job"] == "ghl-consumer"
        await query_until(session, prometheus, 'ghl_events_dropped_total{reason="not_mapped"}', 1)
        await query_until(
            session, prometheus,
            'ghl_upserts_total{integration="acme", status_class="2xx"}', 3,
        )
        # scrape-time gauges from the state snapshot
        await query_until(
            session, prometheus, 'ghl_partition_lag{topic="events", partition="0"}', 80
        )
        # a dashboard-style histogram query evaluates (the p50 of 20, 40, 300 ms is in 25-50 ms)
        await query_until(
            session,
            prometheus,
            "histogram_quantile(0.5, sum by (le) "
            '(ghl_http_request_duration_seconds_bucket{integration="acme"}))',
            lambda p50: 0.025 < p50 < 0.05,
        )
        # more events show up on the next scrape
        metrics.consumed("events")
        await query_until(session, prometheus, 'ghl_events_consumed_total{topic="events"}', 8)
        targets = await api(session, f"{prometheus}/api/v1/targets")
        (target,) = targets["activeTargets"]
        assert target["health"] == "up"
        rules = await api(session, f"{prometheus}/api/v1/rules")
        loaded = [rule for group in rules["groups"] for rule in group["rules"]]
        assert len(loaded) >= 5
        assert all(rule["health"] in {"ok", "unknown"} for rule in loaded), loaded
