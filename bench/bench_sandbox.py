"""Throughput of the HighLevel sandbox: upserts per second on loopback.

Starts ``python -m consumer sandbox --unlimited`` as a child process (so server and load
generator do not share an interpreter), then drives it with a lean HTTP/1.1 keep-alive client
(raw asyncio streams, one request in flight per connection, no client library overhead) that
upserts distinct contacts (distinct email and phone per request) for ``--seconds`` per repeat.
Prints a table and writes ``bench/results/sandbox.json`` (median and spread over the repeats,
latency percentiles, the machine's load average at start and end).

    .venv/bin/python bench/bench_sandbox.py [--seconds 10] [--repeats 3] [--connections 64]

Every answer must be a 200: anything else is counted as an error and fails the run (exit 1),
so a figure is never reported for a sandbox that refused work.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from consumer.sandbox import sandbox_process

LOCATION, TOKEN = "benchLocation0000001", "bench-token"
RESULTS = Path(__file__).parent / "results" / "sandbox.json"


@dataclass
class Run:
    requests: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)


def request_bytes(host: str, repeat: int, n: int) -> bytes:
    # distinct contact per request (up to 2,000,000 per repeat): distinct email and US number
    phone = f"+1415{((repeat - 1) * 2_000_000 + n) % 10_000_000:07d}"
    body = (
        f'{{"locationId":"{LOCATION}","email":"user{repeat}-{n}@example.com",'
        f'"phone":"{phone}","firstName":"User","lastName":"N{n}",'
        f'"source":"bench","tags":["bench","r{repeat}"],"dnd":false}}'
    ).encode()
    head = (
        f"POST /contacts/upsert HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Version: 2021-07-28\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def connection(
    host: str, port: int, repeat: int, counter: list[int], deadline: float, run: Run
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    clock = time.perf_counter
    try:
        while clock() < deadline:
            counter[0] += 1
            writer.write(request_bytes(host, repeat, counter[0]))
            started = clock()
            head = await reader.readuntil(b"\r\n\r\n")
            length_at = head.find(b"Content-Length: ") + 16
            length = int(head[length_at : head.find(b"\r\n", length_at)])
            await reader.readexactly(length)
            run.latencies.append(clock() - started)
            run.requests += 1
            if head[9:12] != b"200":
                run.errors += 1
    finally:
        writer.close()


async def load(url: str, repeat: int, seconds: float, connections: int) -> tuple[Run, float]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    counter = [0]
    run = Run()
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(
        *(connection(host, port, repeat, counter, deadline, run) for _ in range(connections))
    )
    return run, time.perf_counter() - started


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (Linux /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


async def main(args: argparse.Namespace) -> int:
    load_before = os.getloadavg()
    rows = []
    async with sandbox_process({LOCATION: TOKEN}, ["--unlimited"]) as sandbox:
        await load(sandbox.url, 0, 1.0, args.connections)  # warm-up, not reported
        for repeat in range(1, args.repeats + 1):
            server_cpu, generator_cpu = cpu_seconds(sandbox.pid), time.process_time()
            run, elapsed = await load(sandbox.url, repeat, args.seconds, args.connections)
            server_cpu = cpu_seconds(sandbox.pid) - server_cpu
            generator_cpu = time.process_time() - generator_cpu
            rows.append(
                {
                    "repeat": repeat,
                    "requests": run.requests,
                    "errors": run.errors,
                    "seconds": round(elapsed, 3),
                    "upserts_per_s": round(run.requests / elapsed, 1),
                    "p50_ms": round(percentile(run.latencies, 0.50) * 1000, 2),
                    "p99_ms": round(percentile(run.latencies, 0.99) * 1000, 2),
                    # share of one core each process used: ~1.0 for the sandbox means it is
                    # CPU-bound; the generator must stay below that to not be the bottleneck
                    "server_cpu": round(server_cpu / elapsed, 2),
                    "generator_cpu": round(generator_cpu / elapsed, 2),
                }
            )
    load_after = os.getloadavg()
    rates = [row["upserts_per_s"] for row in rows]
    summary = {
        "benchmark": "sandbox upserts on loopback",
        "median_upserts_per_s": round(statistics.median(rates), 1),
        "min_upserts_per_s": min(rates),
        "max_upserts_per_s": max(rates),
        "repeats": rows,
        "seconds_per_repeat": args.seconds,
        "connections": args.connections,
        "generator": "raw asyncio HTTP/1.1 keep-alive, one request in flight per connection",
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_start": [round(x, 2) for x in load_before],
        "loadavg_end": [round(x, 2) for x in load_after],
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    columns = ("repeat", "requests", "errors", "upserts_per_s", "p50_ms", "p99_ms")
    columns += ("server_cpu", "generator_cpu")
    print(" ".join(f"{name:>13}" for name in columns))
    for row in rows:
        print(" ".join(f"{row[name]:>13}" for name in columns))
    print(
        f"median {summary['median_upserts_per_s']} upserts/s "
        f"(min {summary['min_upserts_per_s']}, max {summary['max_upserts_per_s']}); "
        f"load average {summary['loadavg_start'][0]} -> {summary['loadavg_end'][0]} "
        f"on {summary['cpus']} CPUs"
    )
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 1 if any(row["errors"] for row in rows) else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="load time per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--no-write", action="store_true", help="do not write the results file")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results file (%(default)s)")
    sys.exit(asyncio.run(main(parser.parse_args())))
