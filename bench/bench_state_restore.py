"""The partitioned profile state restored from a real changelog (issue 19): how much memory,
disk and time a member's share of the profiles costs, from scratch and after a restart.

1. ``--profiles`` realistic profiles (``bench_state``'s: email, phone, names, consent; about
   155 B encoded) generated straight into a compacted changelog topic of ``--partitions``
   partitions on the local broker (``bench.common.broker``: ``KAFKA_BOOTSTRAP_SERVERS`` or the
   test suite's launcher), keyed by user, spread by librdkafka's key hash; the generation rate
   is reported.
2. A member's share (the first half of the partitions) restored with
   ``state.changelog.restore_partitions`` into a fresh ``PartitionedProfileStore``, one
   partition after the other (as a rebalance hands them over), in a child process of its own
   (its RSS is the member's state and the interpreter, nothing of the generator): peak RSS,
   anonymous memory, disk use, each partition's records, seconds and rate.
   With ``--compare-page-cache-kib``, the same cold restore again into a fresh directory with
   that SQLite page cache per partition (the store's default is 8 MB), for comparison.
3. ``--tail`` new records written to every partition (changed profiles of existing users),
   then the same member restarted on the same state directory: the records it read (only the
   tail written since its checkpoint) and the time.
4. ``--pair-profiles`` profiles over the same partition count and two members, each a child
   restoring its half at the same time: RSS and profiles of each. The baseline, in the same
   run: one child restoring that whole changelog into memory as the engine does today
   (``ProfileChangelog.restore`` into a ``ChangelogProfileStore``).

    PYTHONPATH=$PWD .venv/bin/python bench/bench_state_restore.py [--profiles 10000000] \
        [--pair-profiles 1000000] [--out bench/results/state_restore.json]

With ``--members``, the same figures taken with real ``ghl-consumer run`` members instead
(``bench/results/state_members.json``): ``--profiles`` generated into a changelog as above, a
backlog of ``--events`` (a fifth of the profiles) of those users on an event topic of the
same partition count, keyed by user (95% page views, 5% "Lead Generated" without traits,
which only the user's profile turns into an upsert), the sandbox unlimited, then:

a. two members (one group, each its own ``[profiles] state_dir``) start together: each one's
   peak RSS (restore, then the drain), partitions, profiles held, restores (from its log and
   ``/metrics``);
b. a live producer (``--live-rate`` events/s) and a third member joins (cooperative-sticky,
   the consumer's assignor under ``kafka.group_protocol = "classic"``): what it restores
   (only the partitions that moved?), what the first two restore again (nothing?), and each
   partition's longest gap between advances of its committed offset (sampled every 0.2 s),
   during the third member's restore, over the whole rebalance, and before the join;
c. the producer stops, the second and third members leave, the first owns every partition
   and stops cleanly; ``--tail`` changed profiles are written to the changelog; the first
   restarts on its state directory: records read per partition against the tail, seconds;
d. the baseline, in the same run: one member in whole-changelog mode (no state directory,
   its own group) over the same changelog and event topic: peak RSS, restore, drain.

Without ``--profiles`` the scale comes from ``BENCH_STATE_PROFILES`` (default 200,000: a CI
run in under a minute); BENCHMARKS.md's figures are of ``--profiles 10000000``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from confluent_kafka import Consumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bench_e2e import ENGINE, LOCATION, TOKEN, UNLIMITED, sandbox  # noqa: E402
from bench.bench_state import _disk, _memory, _profiles  # noqa: E402
from bench.common import (  # noqa: E402
    LOGS,
    broker,
    consumer_config,
    end_offsets,
    loadavg,
    machine_facts,
    memory_mb,
    produce,
    write_result,
)
from bench.soak import SteadyProducer  # noqa: E402
from consumer.core.profiles import ChangelogProfileStore, Profile  # noqa: E402
from consumer.state.changelog import ProfileChangelog, restore_partitions  # noqa: E402
from consumer.state.profile_state import PartitionedProfileStore  # noqa: E402
from tests.kafka_broker import create_topic, free_port  # noqa: E402

_CI_PROFILES = 200_000


def _tail(profiles: int, count: int) -> Iterator[tuple[bytes, bytes]]:
    """``count`` changed profiles of random existing users (a new phone and consent)."""
    rng = random.Random(7)
    for _ in range(count):
        key = f"user{rng.randrange(profiles):08d}"
        profile = Profile(
            fields={"email": f"{key}@example.org", "phone": f"+1212{rng.randrange(10**7):07d}"},
            consent={"marketing": rng.random() < 0.5},
        )
        yield key.encode(), memoryview(profile.to_bytes()).tobytes()


def _generate(bootstrap: str, profiles: int, partitions: int) -> dict[str, Any]:
    topic = create_topic(
        bootstrap, partitions=partitions, prefix="bench-profiles", **{"cleanup.policy": "compact"}
    )
    count, seconds = produce(bootstrap, topic, _profiles(profiles, 1))
    return {
        "topic": topic,
        "profiles": count,
        "generate_s": round(seconds, 1),
        "generate_per_s": round(count / seconds),
        "records_per_partition": end_offsets(bootstrap, topic),
    }


def _member(bootstrap: str, topic: str, owned: Sequence[int], state_dir: Path,
            extra: Sequence[str] = ()) -> subprocess.Popen[str]:
    """A child process restoring ``owned`` into ``state_dir`` (see ``_restore_child``);
    ``owned`` empty: the whole changelog into memory (``_whole_child``)."""
    return subprocess.Popen(
        [sys.executable, __file__, "--child", "--bootstrap", bootstrap, "--topic", topic,
         "--owned", ",".join(map(str, owned)), "--state-dir", str(state_dir), *extra],
        stdout=subprocess.PIPE, text=True,
    )


class _NoMetrics:
    def profile_restored(self, seconds: float, size: int) -> None:
        pass


async def _whole_child(args: argparse.Namespace) -> dict[str, Any]:
    """Today's mode, the baseline: every profile of the changelog read into memory."""
    store = ChangelogProfileStore()
    changelog = ProfileChangelog(
        store=store, topic=args.topic, bootstrap=args.bootstrap, metrics=_NoMetrics(),
        extra=_reader(args),
    )
    rss_before = _memory()["VmRSS"]
    started = time.perf_counter()
    await changelog.restore()
    seconds = time.perf_counter() - started
    memory = _memory()
    return {
        "owned": "all",
        "records_read": sum(end_offsets(args.bootstrap, args.topic).values()),
        "restore_s": round(seconds, 2),
        "rss_before_mb": rss_before,
        "peak_rss_mb": memory["VmHWM"],
        "rss_anon_mb": memory["RssAnon"],
        "rss_file_mb": memory["RssFile"],
    }


def _result(child: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"member child exited with {child.returncode}")
    result: dict[str, Any] = json.loads(out)
    return result


def _reader(args: argparse.Namespace) -> dict[str, str]:
    """librdkafka settings of the restore's reader: its prefetch, when given."""
    if not args.reader_queued_kib:
        return {}
    return {"queued.max.messages.kbytes": str(args.reader_queued_kib)}


async def _restore_child(args: argparse.Namespace) -> dict[str, Any]:
    """The member: restore each owned partition in turn, then close the store cleanly."""
    store = PartitionedProfileStore(
        args.state_dir, args.topic, cache_entries=args.cache_entries,
        page_cache_kib=args.page_cache_kib,
    )
    rss_before = _memory()["VmRSS"]
    parts = []
    started = time.perf_counter()
    for partition in args.owned:
        began = time.perf_counter()
        [restored] = await restore_partitions(
            store, [partition], topic=args.topic, bootstrap=args.bootstrap, extra=_reader(args)
        )
        seconds = time.perf_counter() - began
        read = restored.end - restored.start
        parts.append({
            "partition": partition,
            "from_checkpoint": restored.rebuilt is None,
            "records_read": read,
            "applied": restored.applied,
            "seconds": round(seconds, 2),
            "per_s": round(read / seconds) if read else 0,
        })
    total_s = time.perf_counter() - started
    memory = _memory()
    store.close_all()
    return {
        "owned": list(args.owned),
        "records_read": sum(p["records_read"] for p in parts),
        "restore_s": round(total_s, 2),
        "partitions": parts,
        "rss_before_mb": rss_before,
        "peak_rss_mb": _memory()["VmHWM"],
        "rss_anon_mb": memory["RssAnon"],
        "rss_file_mb": memory["RssFile"],
        "disk_mb": round(_disk(args.state_dir), 1),
        "cache_entries": args.cache_entries,
        "page_cache_kib": args.page_cache_kib,
        "reader_queued_kib": args.reader_queued_kib,
    }


def _store_options(args: argparse.Namespace) -> list[str]:
    return ["--cache-entries", str(args.cache_entries),
            "--page-cache-kib", str(args.page_cache_kib),
            "--reader-queued-kib", str(args.reader_queued_kib)]


def _run(args: argparse.Namespace, bootstrap: str, root: Path) -> dict[str, Any]:
    half = list(range(args.partitions // 2))
    generated = _generate(bootstrap, args.profiles, args.partitions)
    print(json.dumps(generated), flush=True)
    topic = generated["topic"]
    state = root / "member"
    cold = _result(_member(bootstrap, topic, half, state, _store_options(args)))
    print(json.dumps(cold), flush=True)
    compared = None
    if args.compare_page_cache_kib:
        options = [*_store_options(args)[:2], "--page-cache-kib",
                   str(args.compare_page_cache_kib), *_store_options(args)[4:]]
        compared = _result(_member(bootstrap, topic, half, root / "compare", options))
        shutil.rmtree(root / "compare")
        print(json.dumps(compared), flush=True)
    before = end_offsets(bootstrap, topic)
    produce(bootstrap, topic, _tail(args.profiles, args.tail))
    after = end_offsets(bootstrap, topic)
    warm = _result(_member(bootstrap, topic, half, state, _store_options(args)))
    print(json.dumps(warm), flush=True)
    result: dict[str, Any] = {
        "generated": generated,
        "cold": cold,
        "cold_page_cache_compared": compared,
        "tail": {"records": args.tail, "written_to_owned": sum(after[p] - before[p] for p in half)},
        "warm": warm,
    }
    if args.pair_profiles:
        pair = _generate(bootstrap, args.pair_profiles, args.partitions)
        print(json.dumps(pair), flush=True)
        owned = [half, list(range(len(half), args.partitions))]
        children = [
            _member(bootstrap, pair["topic"], parts, root / f"pair{n}", _store_options(args))
            for n, parts in enumerate(owned)
        ]
        members = [_result(child) for child in children]
        print(json.dumps(members), flush=True)
        whole = _result(_member(bootstrap, pair["topic"], [], root / "whole",
                                _store_options(args)))
        print(json.dumps(whole), flush=True)
        result["pair"] = {"generated": pair, "members": members, "whole": whole}
    return result


# -- real members: `ghl-consumer run` processes with partitioned state (--members) ---------------


def _events(profiles: int, count: int, seed: int) -> Iterator[tuple[bytes, bytes]]:
    """``count`` events of random known users, keyed by user (so in their profiles'
    partition): 95% page views (not mapped: no upsert, no profile write), 5% "Lead Generated"
    without traits, which only the user's profile turns into an upsert."""
    live = _LiveEvents(profiles, seed)
    for _ in range(count):
        key, value, _kind = live.next()
        yield key, value


class _LiveEvents:
    """``_events``' mix, one record at a time, for ``soak.SteadyProducer``."""

    def __init__(self, profiles: int, seed: int) -> None:
        self._rng, self._profiles, self._seed, self._n = random.Random(seed), profiles, seed, 0

    def next(self) -> tuple[bytes, bytes, str]:
        rng, n = self._rng, self._n
        self._n += 1
        key = f"user{rng.randrange(self._profiles):08d}"
        base = {"userId": key, "messageId": f"pstate-{self._seed}-{n}",
                "timestamp": "2026-12-01T10:00:00Z"}
        if rng.random() < 0.05:
            event, kind = {**base, "type": "track", "event": "Lead Generated"}, "lead"
        else:
            event = {**base, "type": "page", "name": "Pricing", "properties": {"path": "/p"}}
            kind = "page"
        return key.encode(), orjson.dumps(event), kind


class _Member:
    """One ``ghl-consumer run`` process of the bench's group, with its own state directory
    (none: whole-changelog mode), metrics port and log file. ``start`` may be called again
    after ``stop`` (the same state directory: a restart)."""

    def __init__(self, name: str, env: dict[str, str], config: Path) -> None:
        self.name, self._env, self._config = name, env, config
        self.process: asyncio.subprocess.Process | None = None
        self.log = LOGS / f"pstate-{name}-{time.strftime('%H%M%S')}-{os.getpid()}.log"
        self.url = ""
        self.stopped = False

    async def start(self) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/metrics"
        LOGS.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as err:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "consumer", "run", "--config", str(self._config),
                env={**os.environ, **self._env, "METRICS_PORT": str(port), "DEBUG_PORT": "0"},
                stdout=err, stderr=err, cwd=ROOT,
            )
        self.stopped = False

    async def stop(self) -> int:
        """SIGTERM (a clean leave: the files are closed clean), wait; its exit code."""
        assert self.process is not None
        self.stopped = True
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(120):
                return await self.process.wait()
        except TimeoutError:
            self.process.kill()
            return await self.process.wait()

    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def check(self) -> None:
        """Raise RuntimeError, with its log's tail, when it exited without being stopped."""
        if self.process is not None and not self.stopped and not self.alive():
            tail = self.log.read_text(errors="replace").splitlines()[-30:]
            raise RuntimeError(f"member {self.name} exited:\n" + "\n".join(tail))

    def _logged(self) -> Iterator[tuple[float, str]]:
        """(epoch seconds, message) of every JSON log line so far (all its runs)."""
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                entry = orjson.loads(line)
                at = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00"))
                yield at.timestamp(), entry["message"]

    def restores(self) -> list[dict[str, Any]]:
        """Every partition restore it logged so far (all its runs): partition, how (``tail``
        or ``rebuilt: why``), records applied. (The line's offsets are not read: the log's
        masking takes an offset range such as 5015-6678 for a phone number.)"""
        return [
            {"partition": int(hit["partition"]), "how": hit["how"],
             "applied": int(hit["applied"])}
            for _, message in self._logged()
            if (hit := _RESTORE_LINE.search(message))
        ]

    def restored_at(self) -> list[float]:
        """Epoch seconds at which each of its restores (a batch of partitions) ended."""
        return [at for at, message in self._logged() if ": profiles restored for" in message]

    def peak_rss_mb(self) -> float:
        assert self.process is not None
        return round(memory_mb(self.process.pid)[1], 1)

    async def metrics(self, http: aiohttp.ClientSession) -> dict[str, dict[str, float]]:
        """Per-partition series of the profile state: name -> {partition label: value}
        ({} while the metrics server is not up yet). Raises RuntimeError when it exited."""
        self.check()
        try:
            async with http.get(self.url) as response:
                text = await response.text()
        except aiohttp.ClientError:
            return {}
        found: dict[str, dict[str, float]] = {name: {} for name in _SERIES}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in _SERIES:
                    found[sample.name][sample.labels["partition"]] = sample.value
        return found


_HELD = "ghl_profile_state_profiles"
_RESTORE_S = "ghl_profile_restore_seconds"
_RESTORED = "ghl_profile_restore_records_total"
_SERIES = (_HELD, _RESTORE_S, _RESTORED)
_RESTORE_LINE = re.compile(
    r"profile changelog \S+\[(?P<partition>\d+)\]: offsets \S+ read "
    r"\((?P<how>tail|rebuilt: [^)]*)\), (?P<applied>\d+) applied"
)


class _Group:
    """The bench's view of the group from outside: committed offsets of every event partition
    and each member's RSS, sampled every ``interval`` s by ``run`` (a task) into ``rows``:
    ``[seconds, {partition: committed}, {member: RSS MB}]``."""

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: int) -> None:
        self._reader = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                                 "enable.auto.commit": False})
        self._wanted = [TopicPartition(topic, p) for p in range(partitions)]
        self.members: list[_Member] = []
        self.rows: list[list[Any]] = []
        self.started = time.monotonic()
        self.started_wall = time.time()

    def now(self) -> float:
        return round(time.monotonic() - self.started, 2)

    def committed(self) -> dict[int, int]:
        found = self._reader.committed(self._wanted, timeout=10)
        return {tp.partition: max(0, tp.offset) for tp in found}

    async def run(self, interval: float = 0.2) -> None:
        while True:
            at = self.now()
            committed = await asyncio.to_thread(self.committed)
            rss = {m.name: round(memory_mb(m.process.pid)[0], 1)
                   for m in self.members if m.process is not None and m.alive()}
            self.rows.append([at, committed, rss])
            await asyncio.sleep(interval)

    async def until_committed(self, ends: dict[int, int], seconds: float) -> float:
        """Wait until every partition's commit reached ``ends``; the time since start."""
        async with asyncio.timeout(seconds):
            while True:
                if self.rows and all(self.rows[-1][1].get(p, 0) >= e for p, e in ends.items()):
                    return self.rows[-1][0]
                for member in self.members:
                    member.check()
                await asyncio.sleep(0.2)

    def longest_gaps(self, since: float, until: float) -> dict[int, float]:
        """Per partition: the longest time within [since, until] during which its committed
        offset did not advance (the ends of the window count as advances)."""
        gaps = {}
        for p in range(len(self._wanted)):
            moves, last = [since], None
            for at, committed, _ in self.rows:
                if last is not None and committed.get(p, 0) > last and since < at <= until:
                    moves.append(at)
                last = committed.get(p, 0)
            moves.append(until)
            gaps[p] = round(max(b - a for a, b in pairwise(moves)), 2)
        return gaps

    def close(self) -> None:
        self._reader.close()


async def _settled(http: aiohttp.ClientSession, members: Sequence[_Member], partitions: int,
                   seconds: float = 600) -> dict[str, dict[str, dict[str, float]]]:
    """Wait until ``members`` hold every partition between them, each once, each member
    some, each partition restored (its restore duration published); their metrics then."""
    async with asyncio.timeout(seconds):
        while True:
            seen = {m.name: await m.metrics(http) for m in members}
            held = [set(s.get(_HELD, {})) for s in seen.values()]
            restored = all(set(s.get(_HELD, {})) <= set(s.get(_RESTORE_S, {}))
                           for s in seen.values())
            shared = all(held) and sum(map(len, held)) == len(set().union(*held))
            if restored and shared and len(set().union(*held)) == partitions:
                return seen
            await asyncio.sleep(0.25)


def _owned(seen: dict[str, dict[str, dict[str, float]]]) -> dict[str, list[int]]:
    return {name: sorted(int(p) for p in s[_HELD]) for name, s in seen.items()}


def _member_figures(member: _Member, seen: dict[str, dict[str, float]]) -> dict[str, Any]:
    return {
        "partitions": sorted(int(p) for p in seen[_HELD]),
        "profiles_held": int(sum(seen[_HELD].values())),
        "restore_s": {p: round(v, 2) for p, v in sorted(seen[_RESTORE_S].items())},
        "restore_records": {p: int(v) for p, v in sorted(seen[_RESTORED].items())},
        "restores": member.restores(),
        "peak_rss_mb": member.peak_rss_mb(),
    }


async def _members_run(args: argparse.Namespace, bootstrap: str, root: Path) -> dict[str, Any]:
    generated = _generate(bootstrap, args.profiles, args.partitions)
    print(json.dumps(generated), flush=True)
    changelog = generated["topic"]
    events = create_topic(bootstrap, partitions=args.partitions, prefix="bench-pstate-events")
    backlog = args.events or args.profiles // 5
    produce(bootstrap, events, _events(args.profiles, backlog, 11))
    ends = end_offsets(bootstrap, events)
    group = f"bench-pstate-{uuid.uuid4().hex[:8]}"
    result: dict[str, Any] = {"generated": generated, "backlog_events": backlog,
                              "live_rate": args.live_rate, "tail": {"records": args.tail}}
    async with sandbox() as probe, aiohttp.ClientSession() as http:

        def member(name: str, group_id: str = group, state: bool = True) -> _Member:
            config = root / f"{name}.toml"
            text = consumer_config(engine=ENGINE, delivery=UNLIMITED)
            if state:
                text += f'[profiles]\nstate_dir = "{root / name}"\n'
            config.write_text(text)
            env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_TOPICS": events,
                   "KAFKA_GROUP_ID": group_id, "KAFKA_PROFILE_TOPIC": changelog,
                   "GHL_LOCATION_ID": LOCATION, "GHL_ACCESS_TOKEN": TOKEN,
                   "GHL_API_BASE_URL": probe.url}
            return _Member(name, env, config)

        watch = _Group(bootstrap, group, events, args.partitions)
        sampler = asyncio.create_task(watch.run())
        try:
            result.update(await _phases(
                args, http, watch, member, (bootstrap, changelog, events), ends
            ))
            result["upserts"] = (await probe.answers()).get("status.200", 0)
        finally:
            sampler.cancel()
            for m in watch.members:
                if m.alive():
                    await m.stop()
            watch.close()
        print("baseline: one member, whole changelog in memory", flush=True)
        whole = member("whole", group_id=f"{group}-whole", state=False)
        await whole.start()
        solo = _Group(bootstrap, f"{group}-whole", events, args.partitions)
        solo.members.append(whole)
        sampler = asyncio.create_task(solo.run())
        try:
            drained = await solo.until_committed(end_offsets(bootstrap, events), args.timeout)
            seen = await whole.metrics(http)
            result["whole"] = {
                "events": sum(end_offsets(bootstrap, events).values()),
                "drained_s": drained,
                "restore_s": seen[_RESTORE_S].get("all"),
                "records_read": int(seen[_RESTORED].get("all", 0)),
                "peak_rss_mb": whole.peak_rss_mb(),
            }
        finally:
            sampler.cancel()
            await whole.stop()
            solo.close()
        print(json.dumps(result["whole"]), flush=True)
    return result


async def _phases(
    args: argparse.Namespace, http: aiohttp.ClientSession, watch: _Group,
    member: Callable[[str], _Member], topics: tuple[str, str, str], ends: dict[int, int],
) -> dict[str, Any]:
    """The three measurements of ``--members`` over the group ``watch`` observes (see the
    module docstring); ``topics``: bootstrap, changelog, event topic."""
    bootstrap, changelog, events = topics
    out: dict[str, Any] = {}
    # 1. two members start together over the backlog: restore, then drain
    a, b = member("a"), member("b")
    watch.members += [a, b]
    await asyncio.gather(a.start(), b.start())
    began = watch.now()
    drained = await watch.until_committed(ends, args.timeout)
    seen = await _settled(http, [a, b], args.partitions)
    out["pair"] = {"drained_s": round(drained - began, 1),
                   "members": {m.name: _member_figures(m, seen[m.name]) for m in (a, b)}}
    print(json.dumps(out["pair"]), flush=True)

    # 2. a live producer, then a third member joins: what moves is restored alone there
    producer = SteadyProducer(bootstrap, events, _LiveEvents(args.profiles, 12), args.live_rate)
    producer.start()
    try:
        await asyncio.sleep(args.steady_s)
        before = _owned(seen)
        restored_before = {m.name: m.restores() for m in (a, b)}
        c = member("c")
        watch.members.append(c)
        joined = watch.now()
        await c.start()
        seen = await _settled(http, [a, b, c], args.partitions)
        settled = watch.now()
        await asyncio.sleep(args.steady_s)
        after = _owned(seen)
        moved = after["c"]
        kept = [p for p in range(args.partitions) if p not in moved]
        gaps = watch.longest_gaps(joined, settled)
        steady = watch.longest_gaps(joined - args.steady_s, joined)
        # c's restore: from its log's end time back by its duration (the gauge)
        restore_s = max(seen["c"][_RESTORE_S].values())
        restore_end = c.restored_at()[0] - watch.started_wall
        during = watch.longest_gaps(restore_end - restore_s, restore_end)
        out["join"] = {
            "owned_before": before,
            "owned_after": after,
            "moved": moved,
            "kept": kept,
            "restored_by_c": c.restores(),
            "restore_s_c": {p: round(v, 2) for p, v in sorted(seen["c"][_RESTORE_S].items())},
            "restored_again_by_a_b": [r for m in (a, b)
                                      for r in m.restores()[len(restored_before[m.name]):]],
            "restore_records_c": {p: int(v) for p, v in sorted(seen["c"][_RESTORED].items())},
            "window_s": round(settled - joined, 2),
            "restore_window_s": [round(restore_end - restore_s, 2), round(restore_end, 2)],
            "longest_commit_gap_kept_during_restore_s": max(during[p] for p in kept),
            "longest_commit_gap_kept_s": max(gaps[p] for p in kept),
            "longest_commit_gap_moved_s": max(gaps[p] for p in moved),
            "longest_commit_gap_before_join_s": max(steady.values()),
            "gaps_s": gaps,
            "c_peak_rss_mb": c.peak_rss_mb(),
        }
        print(json.dumps(out["join"]), flush=True)
    finally:
        producer.stop()
    out["live_events"] = producer.produced

    # 3. b and c leave; a owns every partition; a restarts with its state directory intact
    for m in (b, c):
        await m.stop()
    await watch.until_committed(end_offsets(bootstrap, events), args.timeout)
    seen = await _settled(http, [a], args.partitions)
    if await a.stop() != 0:
        raise RuntimeError(f"member a did not stop cleanly: see {a.log}")
    runs = len(a.restores())
    written_before = end_offsets(bootstrap, changelog)
    produce(bootstrap, changelog, _tail(args.profiles, args.tail))
    written = {p: e - written_before[p] for p, e in end_offsets(bootstrap, changelog).items()}
    launched = watch.now()
    await a.start()
    seen = await _settled(http, [a], args.partitions)
    out["restart"] = {
        "tail_written": sum(written.values()),
        "changelog_records": sum(end_offsets(bootstrap, changelog).values()),
        "restores": a.restores()[runs:],
        "records_read": int(sum(seen["a"][_RESTORED].values())),
        "restore_records": {p: int(v) for p, v in sorted(seen["a"][_RESTORED].items())},
        "tail_per_partition": {str(p): n for p, n in sorted(written.items())},
        "restore_s": {p: round(v, 2) for p, v in sorted(seen["a"][_RESTORE_S].items())},
        "launch_to_restored_s": round(watch.now() - launched, 1),
        "peak_rss_mb": a.peak_rss_mb(),
    }
    print(json.dumps(out["restart"]), flush=True)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    scale = int(os.environ.get("BENCH_STATE_PROFILES", _CI_PROFILES))
    parser.add_argument("--profiles", type=int, default=scale)
    parser.add_argument("--pair-profiles", type=int, default=scale // 10)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--tail", type=int, default=10_000)
    parser.add_argument("--cache-entries", type=int, default=100_000)
    parser.add_argument("--page-cache-kib", type=int, default=8192)
    parser.add_argument("--compare-page-cache-kib", type=int, default=0)
    parser.add_argument(
        "--reader-queued-kib", type=int, default=0,
        help="the restore reader's queued.max.messages.kbytes (0: librdkafka's default)",
    )
    parser.add_argument("--members", action="store_true",
                        help="real `ghl-consumer run` members instead of the store alone")
    parser.add_argument("--events", type=int, default=0,
                        help="--members: the event backlog (0: a fifth of --profiles)")
    parser.add_argument("--live-rate", type=float, default=300.0,
                        help="--members: events/s produced while the third member joins")
    parser.add_argument("--steady-s", type=float, default=5.0,
                        help="--members: seconds of live load before the join and after")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="--members: seconds allowed for each drain")
    parser.add_argument("--out", type=Path,
                        help="default bench/results/state_restore.json (--members: "
                             "state_members.json)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--owned", type=lambda s: [int(p) for p in s.split(",") if p],
                        help=argparse.SUPPRESS)
    parser.add_argument("--state-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child = _restore_child if args.owned else _whole_child
        print(json.dumps(asyncio.run(child(args))))
        return
    started, load_start = time.time(), loadavg()
    root = Path(tempfile.mkdtemp(prefix="bench-state-restore-"))
    try:
        with broker() as bootstrap:
            if args.members:
                result = asyncio.run(_members_run(args, bootstrap, root))
            else:
                result = _run(args, bootstrap, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    shown = ["bench/bench_state_restore.py", *(argv if argv is not None else sys.argv[1:])]
    out = args.out or ROOT / "bench/results" / (
        "state_members.json" if args.members else "state_restore.json"
    )
    write_result(out, {
        "command": " ".join(shown),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "loadavg_start": load_start,
        "loadavg_end": loadavg(),
        "machine": machine_facts(),
        "partitions": args.partitions,
        **result,
    })


if __name__ == "__main__":
    main()
