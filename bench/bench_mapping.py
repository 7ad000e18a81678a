"""Benchmark of the pure mapping core (decode + route + dedupe + map + profile), one core.

Workload: a realistic mix over 100,000 users: 80% analytics events (page views, product views,
cart events) and 20% identity events (identify with phones in national and international
formats, "Signed Up", "Lead Generated"), with SDK-like context (library, page, user agent,
consent). The ceiling is ``orjson.loads`` alone over the same lines, in the same run. Phone
parsing, the known slow step, is measured uncached and through the LRU cache. Also timed: the
hot path's analytics workload (``samples.generate``: analytics events only, consent on every
event, 20 per user, keyed by user), the mapper's share of ``bench_e2e.py --scenario hotpath``.

Usage: ``.venv/bin/python bench/bench_mapping.py [--events N] [--repeats R]``. Prints a table
and writes ``bench/results/mapping.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from consumer.commands.samples import generate as samples_generate
from consumer.core.dedupe import MessageDeduper
from consumer.core.mapping import Mapper
from consumer.core.normalise import PhoneNormaliser, parse_phone
from consumer.core.profiles import InMemoryProfileStore
from consumer.core.targets import Target

RESULTS = Path(__file__).parent / "results" / "mapping.json"
USERS = 100_000
SEED = 20260501

FIRST = ["Sam", "Jane", "Alex", "Maria", "Wei", "Olu", "Priya", "Lars", "Ana", "Tom"]
LAST = ["Rivera", "Doe", "Smith", "Garcia", "Chen", "Okafor", "Patel", "Berg", "Silva", "Lee"]
PAGES = ["/", "/pricing", "/blog/how-to", "/product/123", "/checkout", "/docs/start"]
ANALYTICS = ["Product Viewed", "Product Added", "Cart Viewed", "Checkout Started", "Search"]


def _context(rng: random.Random, user: int, with_consent: bool) -> dict[str, Any]:
    context: dict[str, Any] = {
        "library": {"name": "datafly.js", "version": "2.4.1"},
        "page": {
            "path": rng.choice(PAGES),
            "url": "https://shop.example.com" + rng.choice(PAGES),
            "referrer": "https://www.google.com/",
            "title": "Example Shop",
        },
        "userAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Version/17.4 Safari/605.1.15",
        "locale": "en-US",
        "ip": f"203.0.113.{rng.randrange(256)}",
    }
    if with_consent:
        context["consent"] = {
            # a user's decision is stable: 70% of users grant marketing
            "canonical": {"marketing": user % 10 < 7, "analytics": True},
        }
    return context


def _phone(rng: random.Random, user: int) -> tuple[str, str | None]:
    """The user's phone as typed, and a country trait when the format needs one."""
    digits = f"{user:07d}"[-7:]
    style = user % 4
    if style == 0:
        return f"+1 415 {digits[:3]} {digits[3:]}", None
    if style == 1:
        return f"(212) {digits[:3]}-{digits[3:]}", None  # national: the integration's region
    if style == 2:
        return f"+44 7700 9{digits[1:6]}", None
    return f"07700 9{digits[1:6]}", "GB"


def make_events(count: int, rng: random.Random) -> list[bytes]:
    lines = []
    for index in range(count):
        user = rng.randrange(USERS)
        base: dict[str, Any] = {
            "userId": f"user-{user}",
            "anonymousId": f"anon-{user:08x}-4b1c-9d2e-{index:012x}",
            "messageId": f"msg-{index:012d}-{rng.getrandbits(32):08x}",
            "timestamp": "2026-05-01T12:00:00.000Z",
            "context": _context(rng, user, with_consent=rng.random() < 0.3),
        }
        roll = rng.random()
        if roll < 0.8:
            if rng.random() < 0.3:
                event = {**base, "type": "page", "name": "Home", "properties": {"path": "/"}}
            else:
                event = {
                    **base,
                    "type": "track",
                    "event": rng.choice(ANALYTICS),
                    "properties": {
                        "product_id": f"sku-{rng.randrange(5000)}",
                        "price": round(rng.uniform(5, 500), 2),
                        "currency": "USD",
                        "quantity": rng.randrange(1, 4),
                    },
                }
        else:
            phone, country = _phone(rng, user)
            traits: dict[str, Any] = {
                "email": f"User.{user}@Example.com",
                "phone": phone,
                "first_name": FIRST[user % len(FIRST)],
                "last_name": LAST[user % len(LAST)],
            }
            if country:
                traits["country"] = country
            kind = rng.random()
            if kind < 0.5:
                event = {**base, "type": "identify", "traits": traits}
            elif kind < 0.75:
                base["context"]["traits"] = traits
                event = {
                    **base,
                    "type": "track",
                    "event": "Signed Up",
                    "properties": {"method": "email"},
                }
            else:
                event = {
                    **base,
                    "type": "track",
                    "event": "Lead Generated",
                    "properties": {"source": "Pricing Page Form", "lead_tag": "website-lead"},
                }
        lines.append(orjson.dumps(event))
    return lines


def new_mapper() -> Mapper:
    target = Target(id="default", location_id="ve9EPM428h8vShlRW1KT", default_phone_region="US")
    return Mapper(
        [target],
        profiles=InMemoryProfileStore(),
        deduper=MessageDeduper(max_entries=100_000, ttl_seconds=86_400),
        phone_cache_size=65_536,
    )


def time_it(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def summary(seconds: list[float], count: int) -> dict[str, float]:
    median = statistics.median(seconds)
    return {
        "median_s": median,
        "min_s": min(seconds),
        "max_s": max(seconds),
        "stdev_s": statistics.stdev(seconds) if len(seconds) > 1 else 0.0,
        "spread_pct": (max(seconds) - min(seconds)) / median * 100,
        "events_per_s": count / median,
        "us_per_event": median / count * 1e6,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS, help="results file (%(default)s)")
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error("--repeats: at least 5 for a median and spread")

    load_before = os.getloadavg()[0]
    rng = random.Random(SEED)
    lines = make_events(args.events, rng)
    mean_bytes = sum(map(len, lines)) / len(lines)

    # Untimed pass: what the workload produces, and how the phone cache fares in one pass.
    mapper = new_mapper()
    outcomes: Counter[str] = Counter()
    for index, line in enumerate(lines):
        for outcome in mapper.map_record(value=line, key=None, topic="events", now=float(index)):
            reason = getattr(outcome, "reason", None)
            outcomes[str(reason) if reason else "upsert"] += 1
    phone_hits, phone_misses, _ = mapper.phones.cache_info()

    # Timed passes. Results are not kept: holding 100k+ parsed objects alive makes the cyclic
    # GC traverse them over and over, which measures the list, not the code.
    def loads_all() -> None:
        loads = orjson.loads
        for line in lines:
            loads(line)

    def map_all(mapper: Mapper) -> None:
        map_record = mapper.map_record
        for index, line in enumerate(lines):
            map_record(value=line, key=None, topic="events", now=float(index))

    loads_times: list[float] = []
    map_times: list[float] = []
    for _ in range(args.repeats):
        loads_times.append(time_it(loads_all))
        fresh = new_mapper()  # cold profiles, dedupe and phone cache every repeat
        map_times.append(time_it(lambda: map_all(fresh)))  # noqa: B023

    # Phone parsing alone: every distinct (phone, region) the workload parses.
    samples = []
    for line in lines:
        event = orjson.loads(line)
        traits = event.get("traits") or event["context"].get("traits")
        if traits:
            samples.append((traits["phone"], traits.get("country") or "US"))
    uncached_times, cached_times = [], []
    for _ in range(args.repeats):
        uncached_times.append(time_it(lambda: [parse_phone(p, r) for p, r in samples]))
        phones = PhoneNormaliser(65_536)
        for phone, region in samples:
            phones(phone, region)
        # hits take well under a microsecond: repeat them to time more than timer noise
        cached_times.append(
            time_it(lambda: [phones(p, r) for _ in range(10) for p, r in samples])  # noqa: B023
        )

    # The hot path's analytics workload (issue 21): analytics events only, consent on every
    # event as Datafly.js sends it, 20 per user, keyed by user as the engine maps them.
    analytics = [
        (r.key, r.value)
        for r in samples_generate(
            users=args.events // 20, events=args.events, identity_share=0.0, seed=SEED
        )
    ]

    def map_analytics(mapper: Mapper) -> None:
        map_record = mapper.map_record
        for index, (key, value) in enumerate(analytics):
            map_record(value=value, key=key, topic="events", now=float(index))

    analytics_times: list[float] = []
    for _ in range(args.repeats):
        fresh = new_mapper()
        analytics_times.append(time_it(lambda: map_analytics(fresh)))  # noqa: B023

    loads = summary(loads_times, len(lines))
    mapping = summary(map_times, len(lines))
    analytics_mapping = summary(analytics_times, len(analytics))
    uncached = summary(uncached_times, len(samples))
    cached = summary(cached_times, 10 * len(samples))
    results_doc = {
        "benchmark": "mapping core",
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "events": len(lines),
        "users": USERS,
        "repeats": args.repeats,
        "mean_event_bytes": round(mean_bytes, 1),
        "mix": {"analytics": 0.8, "identity": 0.2},
        "outcomes_first_repeat": dict(outcomes),
        "orjson_loads": loads,
        "map_record": mapping,
        "map_record_analytics_20_per_user": analytics_mapping,
        "ratio_to_orjson_ceiling": mapping["events_per_s"] / loads["events_per_s"],
        "phone_parse": {
            "calls": len(samples),
            "uncached_us_per_call": uncached["us_per_event"],
            "cached_us_per_call": cached["us_per_event"],
            "uncached": uncached,
            "cached_warm": cached,
            "cache_in_the_run": {"hits": phone_hits, "misses": phone_misses},
        },
        # The machine is shared: a load average above 1 means other work competed for the core.
        "load_average_1m": {"before": load_before, "after": os.getloadavg()[0]},
        "cpu_count": os.cpu_count(),
        "target_events_per_s": 50_000,
        "meets_target": mapping["events_per_s"] >= 50_000,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(results_doc, option=orjson.OPT_INDENT_2) + b"\n")

    print(f"{len(lines):,} events ({mean_bytes:.0f} B mean), {USERS:,} users, "
          f"{args.repeats} repeats, Python {results_doc['python']}")
    print(f"{'step':<28}{'events/s':>12}{'us/event':>10}{'spread %':>10}")
    for name, row in (("orjson.loads (ceiling)", loads), ("map_record (full core)", mapping)):
        print(f"{name:<28}{row['events_per_s']:>12,.0f}{row['us_per_event']:>10.2f}"
              f"{row['spread_pct']:>10.1f}")
    print(f"{'ratio to ceiling':<28}{results_doc['ratio_to_orjson_ceiling']:>12.3f}")
    print(f"{'phone parse, uncached':<28}{'':>12}{uncached['us_per_event']:>10.2f}"
          f"{uncached['spread_pct']:>10.1f}")
    print(f"{'phone parse, cached (warm)':<28}{'':>12}{cached['us_per_event']:>10.2f}"
          f"{cached['spread_pct']:>10.1f}")
    print(f"phone cache during the run: {phone_hits:,} hits, {phone_misses:,} misses")
    print(f"outcomes: {dict(outcomes)}")
    print(f"target 50,000 events/s: {'met' if results_doc['meets_target'] else 'NOT met'}")
    print(f"load average (1 min) before/after: {load_before:.2f} / {os.getloadavg()[0]:.2f}")
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
