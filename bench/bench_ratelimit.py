"""The rate limiter: its CPU cost per request, and how much of a budget a backlog gets.

(a) cost: the pure core (``LocationBudget``: acquire + release, fake clock), the asyncio front
    over the local backend, and over Redis (a real ``redis-server`` started here), for 1 and
    1,000 locations with budgets to spare. Front figures are sequential ns/op (wall and this
    process's CPU) and concurrent throughput (256 tasks) with CPU per request, Redis's own CPU
    per request included for the Redis backend.
(b) pace: a backlogged location against simulated servers that answer 429 past their window
    (a sliding log and a fixed window): achieved rate / configured budget and 429 count, for
    HighLevel's limits (100 / 10 s) and the default pace (80 / 10 s), one simulated hour at
    0.2 s latency; then in real time (scaled to 20 per 1 s, 10 s) for the local front and for
    three Redis-sharing instances, checked against a sliding window on arrival times.

Median and spread (min..max) over ``--repeats``. Prints a table; writes
``bench/results/ratelimit.json``. Exit 1 if any simulated server rejected a request.

    .venv/bin/python bench/bench_ratelimit.py [--repeats 5] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from consumer.ratelimit.budget import ACQUIRED, Budget, LocationBudget, Wait
from consumer.ratelimit.limiter import LocalBackend, RateLimiter
from consumer.ratelimit.redis_backend import RedisBackend
from tests.integration.redis_server import RedisServer

RESULTS = Path(__file__).parent / "results" / "ratelimit.json"
SPARE = Budget(burst_max=10**9, sustained_per_interval=10**9, daily=10**12)


def spread(values: list[float], digits: int = 1) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


# (a) cost ---------------------------------------------------------------------------------


def core_ns_per_op(locations: int, ops: int) -> float:
    """acquire + release on the pure core; the clock moves so no budget ever refuses."""
    budgets = [LocationBudget(Budget()) for _ in range(locations)]
    step = 1.0 / locations  # each location sees one request per second: 10 per window
    now = 0.0
    start = time.perf_counter_ns()
    for i in range(ops):
        lb = budgets[i % locations]
        if lb.try_acquire(now) is not ACQUIRED:
            raise AssertionError("the cost benchmark must never wait")
        lb.release(now)
        now += step
    return (time.perf_counter_ns() - start) / ops


def process_cpu(pid: int | None = None) -> float:
    if pid is None:
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def front_sequential(limiter: RateLimiter, locations: int, ops: int) -> tuple[float, float]:
    """(wall ns/op, CPU ns/op) of ``acquire`` + ``release``, one at a time."""
    names = [f"loc{i:04d}" for i in range(locations)]
    cpu, wall = time.process_time(), time.perf_counter_ns()
    for i in range(ops):
        (await limiter.acquire(names[i % locations])).release()
    return (time.perf_counter_ns() - wall) / ops, (time.process_time() - cpu) * 1e9 / ops


async def front_concurrent(
    limiter: RateLimiter, locations: int, seconds: float, redis_pid: int | None
) -> dict[str, float]:
    """256 tasks acquire/release round-robin over ``locations`` for ``seconds``."""
    names = [f"loc{i:04d}" for i in range(locations)]
    done = 0
    deadline = time.monotonic() + seconds

    async def worker(offset: int) -> None:
        nonlocal done
        i = offset
        while time.monotonic() < deadline:
            (await limiter.acquire(names[i % locations])).release()
            done += 1
            i += 256

    cpu, redis_cpu = process_cpu(), process_cpu(redis_pid) if redis_pid else 0.0
    started = time.monotonic()
    await asyncio.gather(*(worker(k) for k in range(256)))
    elapsed = time.monotonic() - started
    result = {
        "requests_per_s": done / elapsed,
        "cpu_us_per_request": (process_cpu() - cpu) * 1e6 / done,
    }
    if redis_pid:
        result["redis_cpu_us_per_request"] = (process_cpu(redis_pid) - redis_cpu) * 1e6 / done
    return result


# (b) pace ---------------------------------------------------------------------------------


class SlidingServer:
    """Answers 429 when an arrival would be the (max+1)-th inside (t - interval, t]."""

    def __init__(self, max_: int, interval: float) -> None:
        self.max, self.interval = max_, interval
        self.log: deque[float] = deque()
        self.rejected = 0

    def arrive(self, t: float) -> None:
        while self.log and self.log[0] <= t - self.interval + 1e-9:
            self.log.popleft()
        if len(self.log) >= self.max:
            self.rejected += 1
        else:
            self.log.append(t)


class FixedServer:
    """Answers 429 past ``max`` arrivals in a fixed window (boundaries at an offset)."""

    def __init__(self, max_: int, interval: float, offset: float) -> None:
        self.max, self.interval, self.offset = max_, interval, offset
        self.window, self.count, self.rejected = -1, 0, 0

    def arrive(self, t: float) -> None:
        window = int((t - self.offset) // self.interval)
        if window != self.window:
            self.window, self.count = window, 0
        if self.count >= self.max:
            self.rejected += 1
        else:
            self.count += 1


def simulate_backlog(budget: Budget, seconds: float, latency: float, seed: int) -> dict[str, Any]:
    """Discrete-event run of the pure core; each request reaches the servers at a random
    point of [grant, answer] (the network's share of the latency)."""
    rng = random.Random(seed)
    lb = LocationBudget(budget)
    sliding = SlidingServer(budget.burst_max, budget.interval_s)
    fixed = FixedServer(budget.burst_max, budget.interval_s, rng.uniform(0, budget.interval_s))
    now, answers, arrivals = 0.0, deque[float](), []
    while now < seconds:
        while answers and answers[0] <= now:
            lb.release(answers.popleft())
        decision = lb.try_acquire(now)
        if decision is ACQUIRED:
            arrivals.append(now + rng.uniform(0.0, latency))
            answers.append(now + latency)
            continue
        assert isinstance(decision, Wait)
        wake = now + decision.seconds
        now = min(wake, answers[0]) if answers else wake
    arrivals.sort()
    for t in arrivals:
        sliding.arrive(t)
        fixed.arrive(t)
    warm = budget.interval_s * 2  # past the idle location's initial burst
    steady = sum(1 for t in arrivals if warm <= t < seconds - budget.interval_s)
    rate = steady / (seconds - budget.interval_s - warm)
    configured = budget.sustained_per_interval / budget.interval_s
    return {
        "achieved_per_s": round(rate, 3),
        "of_configured": round(rate / configured, 4),
        "rejected_sliding": sliding.rejected,
        "rejected_fixed": fixed.rejected,
    }


def max_in_window(times: list[float], interval: float) -> int:
    times = sorted(times)
    edge = interval - 1e-9
    return max((bisect_right(times, t) - bisect_right(times, t - edge) for t in times), default=0)


async def realtime_backlog(
    limiters: list[RateLimiter], budget: Budget, seconds: float
) -> dict[str, Any]:
    """Four senders per limiter, 0-30 ms answers, one location, wall clock."""
    grants: list[float] = []
    answers: list[float] = []
    rng = random.Random(3)
    deadline = time.time() + seconds

    async def sender(limiter: RateLimiter) -> None:
        while time.time() < deadline:
            permit = await limiter.acquire("backlogged")
            grants.append(time.time())
            await asyncio.sleep(rng.uniform(0.0, 0.03))
            answers.append(time.time())
            permit.release()

    await asyncio.gather(*(sender(lim) for lim in limiters for _ in range(4)))
    grants.sort()
    # Grants come in window-sized batches: rate over whole batches, first to last.
    rate = (len(grants) - budget.burst_max) / (grants[-1] - grants[0])
    configured = budget.sustained_per_interval / budget.interval_s
    return {
        "of_configured": round(rate / configured, 4),
        "max_in_any_window": max(
            max_in_window(grants, budget.interval_s), max_in_window(answers, budget.interval_s)
        ),
    }


# driver -----------------------------------------------------------------------------------


async def with_limiters(
    n: int, make: Callable[[], RateLimiter], body: Callable[[list[RateLimiter]], Awaitable[Any]]
) -> Any:
    limiters = [make() for _ in range(n)]
    try:
        return await body(limiters)
    finally:
        for limiter in limiters:
            await limiter.aclose()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    repeats = args.repeats
    ops = 20_000 if args.quick else 200_000
    seconds = 2.0 if args.quick else 5.0
    out: dict[str, Any] = {"cost": {}, "pace": {}}

    for locations in (1, 1000):
        out["cost"][f"core_{locations}_ns_per_op"] = spread(
            [core_ns_per_op(locations, ops) for _ in range(repeats)]
        )

    async def local_seq(locations: int) -> list[tuple[float, float]]:
        return [
            await front_sequential(RateLimiter(LocalBackend(SPARE)), locations, ops)
            for _ in range(repeats)
        ]

    for locations in (1, 1000):
        rows = await local_seq(locations)
        out["cost"][f"local_front_{locations}_wall_ns_per_op"] = spread([r[0] for r in rows])
        out["cost"][f"local_front_{locations}_cpu_ns_per_op"] = spread([r[1] for r in rows])
        conc = [
            await front_concurrent(RateLimiter(LocalBackend(SPARE)), locations, seconds, None)
            for _ in range(repeats)
        ]
        for key in conc[0]:
            out["cost"][f"local_concurrent_{locations}_{key}"] = spread([c[key] for c in conc])

    with RedisServer() as server:
        for locations in (1, 1000):
            seq, conc = [], []
            for _ in range(repeats):
                backend = RedisBackend.from_url(server.url, SPARE, max_connections=64)
                limiter = RateLimiter(backend)
                try:
                    seq.append(await front_sequential(limiter, locations, ops // 20))
                    conc.append(await front_concurrent(limiter, locations, seconds, server.pid))
                    assert not backend.fallback_active
                finally:
                    await limiter.aclose()
            out["cost"][f"redis_{locations}_wall_ns_per_op"] = spread([r[0] for r in seq])
            out["cost"][f"redis_{locations}_cpu_ns_per_op"] = spread([r[1] for r in seq])
            for key in conc[0]:
                out["cost"][f"redis_concurrent_{locations}_{key}"] = spread([c[key] for c in conc])

        hour = 600.0 if args.quick else 3600.0
        for name, budget in (
            ("highlevel_100_per_10s", Budget(sustained_per_interval=100)),
            ("default_80_per_10s", Budget()),
        ):
            runs = [simulate_backlog(budget, hour, 0.2, seed) for seed in range(repeats)]
            out["pace"][f"sim_{name}"] = {
                "of_configured": spread([r["of_configured"] for r in runs], 4),
                "rejected_sliding": sum(r["rejected_sliding"] for r in runs),
                "rejected_fixed": sum(r["rejected_fixed"] for r in runs),
            }

        fast = Budget(burst_max=20, interval_s=1.0, sustained_per_interval=20, pause_jitter=0.0)
        rt_seconds = 4.0 if args.quick else 10.0
        rt_repeats = min(repeats, 3)
        for name, n, make in (
            ("realtime_local_1_instance", 1, lambda: RateLimiter(LocalBackend(fast))),
            (
                "realtime_redis_3_instances",
                3,
                lambda: RateLimiter(RedisBackend.from_url(server.url, fast)),
            ),
        ):
            runs = []
            for _ in range(rt_repeats):
                await asyncio.sleep(1.1)  # let the previous run's window drain

                async def body(limiters: list[RateLimiter]) -> dict[str, Any]:
                    return await realtime_backlog(limiters, fast, rt_seconds)

                runs.append(await with_limiters(n, make, body))
            out["pace"][name] = {
                "of_configured": spread([r["of_configured"] for r in runs], 4),
                "max_in_any_window": max(r["max_in_any_window"] for r in runs),
                "window_max": fast.burst_max,
            }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="smaller runs, for a smoke test")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results file (%(default)s)")
    args = parser.parse_args()
    load_start = os.getloadavg()
    results = asyncio.run(run(args))
    summary = {
        "benchmark": "ratelimit",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "repeats": args.repeats,
        "quick": args.quick,
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        **results,
    }
    print(f"{'measure':<52} {'median':>12} {'min':>12} {'max':>12}")
    for section in ("cost", "pace"):
        for key, value in results[section].items():
            if "median" in value:
                row = value
            else:
                row = value["of_configured"]
                extra = {k: v for k, v in value.items() if k != "of_configured"}
                key = f"{key} of_configured {extra}"
            print(f"{key:<52} {row['median']:>12} {row['min']:>12} {row['max']:>12}")
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"wrote {args.out}")
    failed = any(
        v.get("rejected_sliding", 0) or v.get("rejected_fixed", 0)
        for v in results["pace"].values()
    ) or any(
        v.get("max_in_any_window", 0) > v.get("window_max", 0)
        for v in results["pace"].values()
        if "window_max" in v
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
