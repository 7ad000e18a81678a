"""A running `ghl-consumer run` process, observed the way operators do: a real Prometheus
scrapes its /metrics, /readyz says ready once partitions are assigned, and the Event Debugger
shows the deliveries masked and without the token."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Callable
from pathlib import Path

import aiohttp
import orjson
import pytest

from consumer.sandbox.server import run_sandbox
from tests.integration.consumer_harness import (
    committed_offsets,
    end_offsets,
    produce,
    start_consumer,
)
from tests.integration.prometheus_server import prometheus_scraping, query_until
from tests.kafka_broker import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # make check leaves it out

LOCATION, TOKEN = "ve9EPM428h8vShlRW1KT", "pit-observed-secret"


async def test_prometheus_scrapes_a_running_consumer_and_the_debugger_shows_deliveries(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = new_topic(partitions=2)
    group = f"observed-{uuid.uuid4().hex[:8]}"
    records = [
        (
            f"u{i}".encode(),
            orjson.dumps(
                {"type": "identify", "userId": f"u{i}", "traits": {"email": f"u{i}@example.com"}}
            ),
        )
        for i in range(10)
    ] + [(b"u0", orjson.dumps({"type": "page", "userId": "u0"}))] * 5
    produce(kafka_bootstrap, topic, records)
    ends = end_offsets(kafka_bootstrap, topic, 2)
    metrics_port, debug_port = free_port(), free_port()
    base = f"http://127.0.0.1:{metrics_port}"
    async with run_sandbox(locations={LOCATION: TOKEN}) as sandbox:
        process = await start_consumer(
            {
                "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
                "KAFKA_TOPICS": topic,
                "KAFKA_GROUP_ID": group,
                "GHL_LOCATION_ID": LOCATION,
                "GHL_ACCESS_TOKEN": TOKEN,
                "GHL_API_BASE_URL": sandbox.url,
                "METRICS_PORT": str(metrics_port),
                "DEBUG_PORT": str(debug_port),
            }
        )
        try:
            with prometheus_scraping(metrics_port, tmp_path) as prometheus:
                async with aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=5)
                ) as http:
                    await query_until(
                        http, prometheus, f'ghl_events_consumed_total{{topic="{topic}"}}', 15
                    )
                    await query_until(
                        http,
                        prometheus,
                        'ghl_upserts_total{integration="default", status_class="2xx"}',
                        lambda calls: 1 <= calls <= 10,
                    )
                    await query_until(
                        http, prometheus, 'ghl_events_dropped_total{reason="not_mapped"}', 5
                    )
                    async with asyncio.timeout(30):
                        while committed_offsets(kafka_bootstrap, group, topic, 2) != ends:
                            await asyncio.sleep(0.3)
                    await query_until(
                        http, prometheus, f"sum(ghl_partition_lag{{topic=\"{topic}\"}})", 0
                    )
                    async with http.get(f"{base}/readyz") as ready:
                        assert ready.status == 200, await ready.text()
                    debugger = f"http://127.0.0.1:{debug_port}/debug/deliveries.json"
                    async with http.get(debugger) as deliveries:
                        shown = await deliveries.text()
                    async with http.get(f"{base}/debug/deliveries.json") as absent:
                        assert absent.status == 404  # not on the port Prometheus scrapes
                    async with http.get(f"{base}/metrics") as exposition:
                        scraped = await exposition.text()
        finally:
            process.send_signal(signal.SIGTERM)
            _, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()[-2000:]
    entries = orjson.loads(shown)
    assert entries, shown
    assert "u3@example.com" not in shown
    assert "u***@example.com" in shown
    assert '"contact_key":"hidden:' in shown  # the user id is not shown
    for channel in (shown, scraped, stderr.decode()):
        assert TOKEN not in channel
