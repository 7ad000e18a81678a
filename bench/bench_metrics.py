"""What a metric costs on the engine's hot path, in nanoseconds per call.

Run: ``.venv/bin/python bench/bench_metrics.py``. Times the per-event calls (``consumed``,
``dropped``, ``coalesced``), a delivery's ``http`` call (histogram + counter), the collapse of an
unknown label to ``other``, and for scale a bare ``dict`` lookup plus a prometheus-client child
``inc()`` with no wrapper, and ``refresh`` + exposition of a 12-partition snapshot (per scrape,
not per event). Best of five runs of N calls each; prints one line per case.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter

from consumer.core.events import Reason
from consumer.engine.offsets import PartitionStats
from consumer.engine.ports import Endpoint
from consumer.highlevel.verdicts import Answer, Verdict
from consumer.observe.metrics import Metrics, StateSnapshot

N = 200_000


def best_ns(call: Callable[[], None], n: int = N) -> float:
    runs = []
    for _ in range(5):
        started = time.perf_counter_ns()
        for _ in range(n):
            call()
        runs.append((time.perf_counter_ns() - started) / n)
    return min(runs)


def main() -> None:
    metrics = Metrics(integrations={"acme": "loc-acme", "beta": "loc-beta"}, topics=["events"])
    ok = Answer(verdict=Verdict.DELIVERED, status=200, latency_s=0.05)
    child = Counter("bare", "bare", ["topic"], registry=CollectorRegistry()).labels("events")
    snapshot = StateSnapshot(
        partitions=[
            PartitionStats("events", p, 100, 100, 120, 20, 20, 0, 0, 0, 0.01) for p in range(12)
        ],
        high_watermarks={("events", p): 200 for p in range(12)},
        buffered_records=240,
    )

    def scrape() -> None:
        metrics.refresh(snapshot)
        metrics.exposition()

    cases: dict[str, tuple[Callable[[], None], int]] = {
        "bare child.inc() (no wrapper)": (child.inc, N),
        "consumed(topic)": (lambda: metrics.consumed("events"), N),
        "dropped(reason)": (lambda: metrics.dropped(Reason.NOT_MAPPED), N),
        "coalesced(integration)": (lambda: metrics.coalesced("acme"), N),
        "consumed(unknown topic -> other)": (lambda: metrics.consumed("nope"), N),
        "http(integration, upsert, answer)": (
            lambda: metrics.http("acme", Endpoint.UPSERT, ok),
            N,
        ),
        "refresh + exposition (12 partitions, per scrape)": (scrape, 500),
    }
    for name, (call, n) in cases.items():
        print(f"{name:<50} {best_ns(call, n):>12,.0f} ns/op")


if __name__ == "__main__":
    main()
