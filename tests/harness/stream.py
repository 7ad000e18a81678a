"""The versioned stream the reliability suites produce, the checks they run on what the sandbox
saw and what the group committed, and real consumer groups to run it through.

Used by ``tests/integration/test_engine_guarantees.py`` (where the stream and each check are
explained), ``test_faults.py``, ``test_delivery_guarantees.py`` and ``test_bad_input.py``.
Every stream is made of versioned identifies: user ``u`` (Kafka key ``user-u``, email
``user-u@example.com``) says ``first_name = "vNNN"`` with NNN counting up in produce order.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from consumer.sandbox import RateLimits
from tests.integration.consumer_harness import (
    CommitSampler,
    ProcessLog,
    end_offsets,
    produce_rounds,
    run_command,
    start_consumer,
)

LOCATION, TOKEN = "ve9EPM428h8vShlRW1KT", "pit-engine-guarantees-token"
# Rate limits out of the way on both sides. The sandbox still sends X-RateLimit-* headers, and
# the consumer adopts a stricter window from them, so it must announce a generous one.
UNLIMITED = RateLimits(burst=1_000_000, interval_ms=1000, daily=100_000_000, enforced=False)
UNLIMITED_ARGS = (
    *("--unlimited", "--burst", "1000000", "--interval-ms", "1000", "--daily", "100000000"),
)
FAST_DELIVERY = {"rate_burst": 1_000_000, "rate_sustained": 1_000_000, "rate_interval_seconds": 1}

Records = list[tuple[bytes | None, bytes | None]]

FAULT_CYCLES = int(os.environ.get("GHL_FAULT_CYCLES", "3"))
"""How many fault cycles the fault tests run: SIGKILLs here; broker outages, Redis kills and
rebalances in ``test_faults.py``. Small by default so CI stays short; ``GHL_FAULT_CYCLES=10``
(or more) for a long run."""


# -- the stream ----------------------------------------------------------------------------------


def identify(user: int, version: int, run: str) -> bytes:
    return orjson.dumps(
        {
            "type": "identify",
            "userId": f"user-{user}",
            "messageId": f"{run}-{user}-{version}",
            "traits": {"email": f"user-{user}@example.com", "first_name": f"v{version:03d}"},
            "context": {"consent": {"canonical": {"marketing": True}}},
        }
    )


def page(user: int) -> bytes:
    return orjson.dumps({"type": "page", "userId": f"user-{user}", "name": "Pricing"})


def versions_round(users: int, version: int, run: str, *, pages: bool = False) -> Records:
    """Version ``version`` of every user (and a page view each, when ``pages``)."""
    batch: Records = []
    for user in range(users):
        key = f"user-{user}".encode()
        batch.append((key, identify(user, version, run)))
        if pages:
            batch.append((key, page(user)))
    return batch


@dataclass(frozen=True, slots=True)
class Produced:
    """Where every versioned identify went: (user, version) -> (partition, offset), and the
    offsets of everything else (dropped by the engine)."""

    identifies: dict[tuple[int, int], tuple[int, int]]
    others: set[tuple[int, int]]

    @classmethod
    def of(cls, records: Records, positions: Sequence[tuple[int, int]]) -> Produced:
        identifies: dict[tuple[int, int], tuple[int, int]] = {}
        others: set[tuple[int, int]] = set()
        for (_, value), position in zip(records, positions, strict=True):
            event = orjson.loads(value or b"{}")
            if event.get("type") == "identify":
                user = int(event["userId"].removeprefix("user-"))
                identifies[user, _version(event["traits"]["first_name"])] = position
            else:
                others.add(position)
        return cls(identifies, others)

    def merged(self, other: Produced) -> Produced:
        return Produced({**self.identifies, **other.identifies}, self.others | other.others)

    def last_versions(self) -> dict[int, int]:
        last: dict[int, int] = {}
        for user, version in self.identifies:
            last[user] = max(version, last.get(user, -1))
        return last

    def by_partition(self) -> dict[int, list[tuple[int, tuple[int, int] | None]]]:
        """partition -> [(offset, (user, version) or None for a dropped event)], by offset."""
        rows: dict[int, list[tuple[int, tuple[int, int] | None]]] = defaultdict(list)
        for uv, (partition, offset) in self.identifies.items():
            rows[partition].append((offset, uv))
        for partition, offset in self.others:
            rows[partition].append((offset, None))
        return {p: sorted(r, key=lambda row: row[0]) for p, r in rows.items()}


async def produce_live(
    bootstrap: str, topic: str, rounds: Sequence[Records], *, interval_s: float = 0.0
) -> Produced:
    """Produce ``rounds`` ``interval_s`` apart in a thread (the loop keeps serving)."""
    positions = await asyncio.to_thread(
        produce_rounds, bootstrap, topic, rounds, interval_s=interval_s
    )
    return Produced.of([record for batch in rounds for record in batch], positions)


def _version(first_name: str) -> int:
    return int(first_name.removeprefix("v"))


# -- what the sandbox saw --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Landed:
    """One successful upsert as the sandbox applied it."""

    at: float  # epoch seconds, when the sandbox applied it (millisecond resolution)
    user: int
    version: int


def at(entry: Mapping[str, Any]) -> float:
    """When the sandbox logged a request (epoch seconds)."""
    return datetime.fromisoformat(entry["time"].replace("Z", "+00:00")).timestamp()


def landed_upserts(requests: Iterable[Mapping[str, Any]]) -> list[Landed]:
    """The successful ``POST /contacts/upsert`` of the request log, in the order applied."""
    landed = []
    for entry in requests:
        if entry["path"] == "/contacts/upsert" and entry["status"] == 200:
            body = entry["body"]
            user = int(body["email"].removeprefix("user-").removesuffix("@example.com"))
            landed.append(Landed(at(entry), user, _version(body["firstName"])))
    return landed


def sequences(landed: Iterable[Landed]) -> dict[int, list[int]]:
    per_user: dict[int, list[int]] = defaultdict(list)
    for upsert in landed:
        per_user[upsert.user].append(upsert.version)
    return per_user


async def sandbox_get(http: aiohttp.ClientSession, url: str, path: str) -> Any:
    async with http.get(f"{url}{path}") as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def landed_at(http: aiohttp.ClientSession, url: str) -> list[Landed]:
    """``landed_upserts`` of a sandbox child, over its admin endpoint."""
    log = await sandbox_get(http, url, "/_sandbox/requests?unmasked=1")
    return landed_upserts(log["requests"])


# -- the checks ------------------------------------------------------------------------------------


def strictly_increasing(per_user: Mapping[int, Sequence[int]]) -> list[str]:
    """Users whose received versions ever repeat or go back."""
    return [
        f"user-{user}: {versions}"
        for user, versions in sorted(per_user.items())
        if any(b <= a for a, b in itertools.pairwise(versions))
    ]


def backward_commits(samples: Sequence[tuple[float, Mapping[int, int]]]) -> list[str]:
    """Partitions whose committed offset ever decreased between two samples: a commit from a
    member that no longer owned the partition (the new owner only commits at or above the
    offset it was handed)."""
    problems = []
    highest: dict[int, int] = {}
    for at, offsets in samples:
        for partition, offset in offsets.items():
            if offset < highest.get(partition, -1001):
                problems.append(f"p{partition}: {highest[partition]} -> {offset} at {at:.3f}")
            highest[partition] = max(offset, highest.get(partition, -1001))
    return problems


def stale_writes(
    landed: Sequence[Landed],
    produced: Produced,
    samples: Sequence[tuple[float, Mapping[int, int]]],
) -> list[str]:
    """Upserts that set a contact back to a version older than one the group had already
    committed before the upsert landed (commit samples are stamped after they were read, the
    sandbox stamps when it applied: a sample older than the landing proves the order)."""
    partition_of = {user: p for (user, _), (p, _) in produced.identifies.items()}
    versions_below: dict[int, list[tuple[int, int]]] = defaultdict(list)  # user -> (offset, v)
    for (user, version), (_, offset) in produced.identifies.items():
        versions_below[user].append((offset, version))
    for rows in versions_below.values():
        rows.sort()
    problems = []
    index, committed = 0, {}
    for upsert in sorted(landed, key=lambda u: u.at):
        while index < len(samples) and samples[index][0] < upsert.at:
            for partition, offset in samples[index][1].items():
                committed[partition] = max(offset, committed.get(partition, -1001))
            index += 1
        floor = committed.get(partition_of[upsert.user], -1001)
        done = [v for offset, v in versions_below[upsert.user] if offset < floor]
        if done and upsert.version < max(done):
            problems.append(
                f"user-{upsert.user}: v{upsert.version} landed at {upsert.at:.3f} after "
                f"v{max(done)} was committed"
            )
    return problems


def undelivered_commits(
    landed: Sequence[Landed],
    produced: Produced,
    samples: Sequence[tuple[float, Mapping[int, int]]],
) -> list[str]:
    """Commits that covered a record not delivered by the time the commit was read. With one
    consumer and key order, record (user, v) is delivered once an upsert carrying v or a newer
    version of that user landed (coalescing folds older versions into newer ones)."""
    rows = produced.by_partition()
    problems = []
    ordered = sorted(landed, key=lambda u: u.at)
    for at, offsets in samples:
        delivered: dict[int, int] = {}
        for upsert in ordered:
            if upsert.at >= at:
                break
            delivered[upsert.user] = max(upsert.version, delivered.get(upsert.user, -1))
        for partition, committed in offsets.items():
            for offset, uv in rows.get(partition, []):
                if offset >= committed:
                    break
                if uv is not None and delivered.get(uv[0], -1) < uv[1]:
                    problems.append(
                        f"p{partition} committed {committed} at {at:.3f} but offset {offset} "
                        f"(user-{uv[0]} v{uv[1]}) was not delivered"
                    )
                    break
    return problems


def final_states(contacts: Iterable[Mapping[str, Any]], produced: Produced) -> list[str]:
    """Users whose contact is missing, duplicated or not at their last version."""
    expected = {f"user-{u}@example.com": f"v{v:03d}" for u, v in produced.last_versions().items()}
    seen: dict[str, list[str]] = defaultdict(list)
    for contact in contacts:
        seen[contact["email"]].append(contact.get("firstName", ""))
    return [
        f"{email}: expected [{want}], sandbox has {seen.get(email, [])}"
        for email, want in sorted(expected.items())
        if seen.get(email) != [want]
    ] + [f"{email}: unexpected contact" for email in sorted(set(seen) - set(expected))]


# -- running consumers -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Group:
    """One consumer group on one topic, and how its members are started."""

    bootstrap: str
    topic: str
    partitions: int
    id: str
    env: dict[str, str]
    config: Path

    async def start(self) -> ProcessLog:
        process = await start_consumer(self.env, "--config", str(self.config))
        return ProcessLog(process)

    @property
    def assigned(self) -> str:
        """What the engine logs when a member is given partitions of the topic."""
        return f"assigned [('{self.topic}',"

    def sampler(self) -> CommitSampler:
        return CommitSampler(self.bootstrap, self.id, self.topic, self.partitions)

    def ends(self) -> dict[int, int]:
        return end_offsets(self.bootstrap, self.topic, self.partitions)


def make_group(
    bootstrap: str,
    topic: str,
    partitions: int,
    api_url: str,
    config_dir: Path,
    *,
    engine: Mapping[str, object] = {},
    delivery: Mapping[str, object] = FAST_DELIVERY,
    env: Mapping[str, str] = {},
) -> Group:
    group = f"engine-{uuid.uuid4().hex[:8]}"
    config = config_dir / f"{group}.toml"
    config.write_text(_toml({"engine": engine, "delivery": delivery}))
    return Group(
        bootstrap,
        topic,
        partitions,
        group,
        {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_TOPICS": topic,
            "KAFKA_GROUP_ID": group,
            "GHL_LOCATION_ID": LOCATION,
            "GHL_ACCESS_TOKEN": TOKEN,
            "GHL_API_BASE_URL": api_url,
            **env,
        },
        config,
    )


def _toml(sections: Mapping[str, Mapping[str, object]]) -> str:
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {orjson.dumps(value).decode()}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


async def until(condition: Callable[[], bool], members: Sequence[ProcessLog] = ()) -> None:
    """Poll ``condition`` until true; AssertionError, with its log, if a member exits first.
    Bound it with asyncio.timeout."""
    while not condition():
        for member in members:
            if member.process.returncode is not None:
                raise AssertionError(
                    f"consumer exited ({member.process.returncode}):\n{member.text()[-3000:]}"
                )
        await asyncio.sleep(0.05)


async def until_committed(
    sampler: CommitSampler, ends: Mapping[int, int], members: Sequence[ProcessLog]
) -> None:
    """Wait until the group committed ``ends`` (see ``until``)."""
    await until(lambda: sampler.latest() == ends, members)


async def stop_cleanly(*members: ProcessLog) -> None:
    """SIGTERM every member; each must drain, commit and exit 0."""
    for member in members:
        if member.process.returncode is None:
            member.process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(40):
        codes = [await member.finished() for member in members]
    for number, member in enumerate(members):
        print(f"--- consumer {number} (pid {member.process.pid}) ---\n{member.text()}")
    for member, code in zip(members, codes, strict=True):
        assert code == 0, member.text()[-3000:]


async def audit_clean(env: Mapping[str, str], sandbox_url: str) -> dict[str, Any]:
    """Run ``ghl-consumer audit --json`` (a real subprocess) with the consumers' ``env`` against
    the sandbox they delivered to; assert that it exits 0 with nothing unaccounted; print and
    return its report. Call it once the group has committed the end offsets."""
    code, out, err = await run_command(env, "audit", "--sandbox", sandbox_url, "--json")
    assert code in (0, 1), f"audit could not run ({code}): {err[-3000:]}"
    report: dict[str, Any] = orjson.loads(out)
    print(
        f"audit: {report['records']} records, {report['identity_events']} identity events, "
        f"{report['delivered_events']} delivered, {report['dead_lettered']} dead-lettered, "
        f"{report['parked']} parked, dropped {report['dropped']}, "
        f"{len(report['unaccounted'])} unaccounted"
    )
    assert report["unaccounted"] == [], report["unaccounted"][:20]
    assert code == 0, out + err
    return report
