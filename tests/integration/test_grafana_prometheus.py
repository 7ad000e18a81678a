"""A real Prometheus server (Debian's ``prometheus``) scrapes a running consumer's /metrics.

The web server runs in the test's event loop with a ``Metrics`` the test drives; Prometheus
scrapes it every second, loads grafana/alerts.yml, and its HTTP API must return the ``ghl_``
series with the values the test produced, evaluate the dashboard's kind of queries, and report
the alert rules healthy. Fails, never skips, when ``prometheus`` is not installed.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from consumer.delivery import Answer, Verdict
from consumer.metrics import Endpoint, Metrics, Readiness, StateSnapshot
from consumer.offsets import PartitionStats
from consumer.web import WebServer, serve_web

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
QUERY_TIMEOUT_S = 30  # Prometheus start-up plus a few 1 s scrapes, with room for a slow CI


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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
    binary = shutil.which("prometheus")
    assert binary, "prometheus not found: apt-get install prometheus (tools/system-deps.sh)"
    shutil.copy(ROOT / "grafana" / "alerts.yml", tmp_path / "alerts.yml")
    (tmp_path / "prometheus.yml").write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  evaluation_interval: 1s\n"
        "rule_files: [alerts.yml]\n"
        "scrape_configs:\n"
        "  - job_name: ghl-consumer\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{consumer.port}']\n"
    )
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            "--config.file=prometheus.yml",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("wb"),
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def api(session: aiohttp.ClientSession, url: str, **params: str) -> Any:
    async with session.get(url, params=params) as response:
        body = await response.json()
    assert body["status"] == "success", body
    return body["data"]


async def query_until(
    session: aiohttp.ClientSession,
    base: str,
    promql: str,
    expected: float | Callable[[float], bool],
) -> list[dict[str, Any]]:
    """Poll an instant query until its (single) result equals ``expected`` (or satisfies it,
    when a predicate)."""
    check = expected if callable(expected) else (lambda value: value == expected)
    result: list[dict[str, Any]] = []
    async with asyncio.timeout(QUERY_TIMEOUT_S):
        while True:
            try:
                result = (await api(session, f"{base}/api/v1/query", query=promql))["result"]
            except aiohttp.ClientConnectionError:
                result = []  # Prometheus still starting
            if len(result) == 1 and check(float(result[0]["value"][1])):
                return result
            await asyncio.sleep(0.5)


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
