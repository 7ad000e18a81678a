"""How many done offsets fit in the commit metadata, and what encoding and tracking cost.

Run: ``.venv/bin/python bench/bench_offsets.py``. For each pattern of done offsets above a stuck
commit point, finds (by bisection) the largest count whose encoded map fits the default budget
(4000 characters), then times encode/decode of that map and of PartitionOffsets bookkeeping.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from functools import partial

from consumer.engine.offsets import OffsetBudget, OffsetMap, PartitionOffsets

LIMIT = OffsetBudget().max_metadata_chars
Pattern = Callable[[int, random.Random], list[int]]


def every_other(n: int, rng: random.Random) -> list[int]:
    return list(range(1, 2 * n, 2))


def random_density(density: float) -> Pattern:
    def make(n: int, rng: random.Random) -> list[int]:
        out: list[int] = []
        offset = 0
        while len(out) < n:
            offset += 1
            if rng.random() < density:
                out.append(offset)
        return out

    return make


def contiguous(n: int, rng: random.Random) -> list[int]:
    return list(range(1, n + 1))


PATTERNS: dict[str, Pattern] = {
    "all done but the head (one run)": contiguous,
    "every other offset": every_other,
    "random 90% done": random_density(0.9),
    "random 50% done": random_density(0.5),
    "random 10% done": random_density(0.1),
    "random 1% done": random_density(0.01),
    "random 0.01% done": random_density(0.0001),
}


def fits(make: Pattern, n: int) -> bool:
    return len(OffsetMap.from_offsets(0, make(n, random.Random(n))).encode()) <= LIMIT


def capacity(make: Pattern, ceiling: int = 2_000_000) -> int:
    lo, hi = 0, 1
    while hi <= ceiling and fits(make, hi):
        lo, hi = hi, hi * 2
    if hi > ceiling:
        return lo
    while hi - lo > max(1, lo // 200):
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(make, mid) else (lo, mid)
    return lo


def timed(fn: Callable[[], object], repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    print(f"budget: {LIMIT} characters of commit metadata")
    print(f"{'pattern':36} {'fits':>9} {'span':>10} {'kind':>4} {'encode ms':>9} {'decode ms':>9}")
    for name, make in PATTERNS.items():
        n = capacity(make)
        done = make(n, random.Random(n))
        m = OffsetMap.from_offsets(0, done)
        text = m.encode()
        kind = text.split(";", 3)[2]
        enc = timed(m.encode) * 1000
        dec = timed(partial(OffsetMap.decode, text, commit_offset=0)) * 1000
        span = max(done) + 1
        shown = f">={n}" if n >= 1_000_000 else str(n)
        print(f"{name:36} {shown:>9} {span:>10} {kind:>4} {enc:9.2f} {dec:9.2f}")

    # Bookkeeping: admit + complete (random order within windows of 1000) + a commit point
    # every 1000 records, on one partition.
    rng = random.Random(1)
    p = PartitionOffsets("t", 0, committed=0)
    total = 200_000
    start = time.perf_counter()
    window: list[int] = []
    for offset in range(total):
        p.admit(offset)
        window.append(offset)
        if len(window) == 1000:
            rng.shuffle(window)
            for o in window:
                p.complete(o)
            window.clear()
            p.commit_point()
    elapsed = time.perf_counter() - start
    print(f"PartitionOffsets: {total / elapsed:,.0f} records/s (admit+complete, commit per 1000)")


if __name__ == "__main__":
    main()
