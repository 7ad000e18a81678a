"""Soak: the consumer under a steady event stream for a long time, with faults injected on a
schedule; then the audit. What it reports: RSS over time, lag, faults, and whether every event
is accounted for.

Set-up (all private to the run, on free ports): a ``LocalBroker`` (so it can be stopped and
killed), the sandbox as a process at HighLevel's limits (100 requests / 10 s per location, 4
locations routed by ``context.site``), one ``RedisServer`` shared by ``--members`` (2)
``ghl-consumer run`` processes in one group over a 6-partition topic
(``KAFKA_SESSION_TIMEOUT_MS=6000``), and a producer thread at ``--rate`` events/s: keyed by
user, about 60% track and 29% page analytics, 10% identity (identify, "Signed Up",
"Lead Generated") whose ``first_name`` carries a per-user version (so order matters), 0.5%
malformed (broken JSON, identify without email or phone) that must dead-letter.

``--partitioned``: partitioned profile state, each member its own ``[profiles] state_dir``
(one per slot, kept across that slot's restarts: a SIGKILL leaves its files open, so they are
rebuilt; a SIGTERM closes them clean, so only the tail is read), and 1% of the mix anonymous
visitors: a page view keyed by an anonymousId with a phone, later an identify by a userId
naming it with an email only (stitched across partitions through the stitch topic), half of
them a "Lead Generated" later still. The result counts the stitch topic's records, which the
audit must not count as events.

Fault schedule: every ``--fault-gap`` seconds the next of, in turn: SIGKILL a member and restart
it; SIGTERM a member (a clean leave: rebalance) and restart it (never the last member, whose RSS
over the whole run shows any growth); a ``--fault-window`` of sandbox
5xx / hangs / connection resets; Redis SIGKILLed, restarted after the window; the broker
SIGKILLed (odd turns: the first) or stopped (even turns), started 5 s later. The schedule
runs at least one full cycle, even past ``--duration``; a fault starts only while
``--fault-gap`` seconds of the duration remain. A member that exits on its own is an
unexpected exit: recorded and restarted, and it fails the run.

Every ``--sample-interval`` seconds: each member's RSS (/proc), the lag (end offsets minus the
group's committed offsets), produced and committed counts. At the end: the producer stops,
every fault is undone, the group drains (lag 0, bounded by ``--drain-timeout``), the members
stop with SIGTERM, and ``python -m consumer audit`` runs with the consumers' configuration.

    .venv/bin/python bench/soak.py --duration 3600 --rate 100 [--seed 1] [--out PATH]

Writes ``bench/results/soak.json`` (or ``--out``), prints a summary. Exit status 0 when the
audit found nothing unaccounted, the group drained, and no member exited unexpectedly; 1
otherwise; 130 when interrupted (Ctrl-C / SIGTERM: every child is stopped first). Members, the
sandbox and Redis get PR_SET_PDEATHSIG (they die with this process); the broker (a daemon of
``tools/kafka/kafka.sh``) is stopped in ``finally`` only, so a SIGKILLed soak leaves it behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import orjson
from confluent_kafka import KafkaException, Producer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    LOGS,
    RESULTS,
    consumer_config,
    end_offsets,
    loadavg,
    machine_facts,
    memory_mb,
    percentile,
    write_result,
)
from tests.integration.consumer_harness import (
    committed_offsets,
    run_command,
    start_consumer,
    start_sandbox,
    stop_process,
)
from tests.integration.redis_server import RedisServer
from tests.kafka_broker import LocalBroker, create_topic

KINDS = ("sigkill_member", "sigterm_member", "sandbox_faults", "redis_kill", "broker_restart")
LOCATIONS = {f"soakLocation{i:08d}": f"soak-token-{i}" for i in range(4)}
SANDBOX_FAULTS = {"failRate": 0.3, "hangRate": 0.05, "resetRate": 0.15}
NO_FAULTS = dict.fromkeys(SANDBOX_FAULTS, 0.0)
VISITOR_SHARE = 0.01  # --partitioned: anonymous visitors who sign up later (EventMix._visitor)
STOP_GRACE = 60.0  # a SIGTERMed member drains (engine.drain_timeout_seconds, 10 s) and commits


@dataclass(frozen=True, slots=True)
class SoakOptions:
    duration: float
    rate: float
    seed: int = 1
    out: Path = RESULTS / "soak.json"
    members: int = 2
    partitions: int = 6
    users: int = 2000  # < 10,000: phones are +1 415 555 NNNN, one per user
    fault_gap: float = 30.0
    fault_window: float = 20.0
    sample_interval: float = 5.0
    drain_timeout: float = 600.0
    partitioned: bool = False  # each member its own [profiles] state_dir; visitors in the mix


# -- the event stream ---------------------------------------------------------------------------


class EventMix:
    """The soak's records, reproducible from ``seed`` (see the module docstring for the mix).
    Not thread-safe: one producer thread calls ``next``."""

    def __init__(self, seed: int, users: int, *, visitors: bool = False) -> None:
        self._rng = random.Random(seed)
        self._seed = seed
        self._users = users
        self._versions = [0] * users
        self._n = 0
        self._visitors = visitors
        self._due: list[tuple[int, bytes, bytes, str]] = []  # (due at n, key, value, kind)

    def next(self) -> tuple[bytes, bytes, str]:
        """(key, value, kind) of the next record."""
        if self._due and self._due[0][0] <= self._n:
            self._n += 1
            _, key, value, kind = self._due.pop(0)
            return key, value, kind
        if self._visitors and self._rng.random() < VISITOR_SHARE:
            return self._visitor()
        return self._user()

    def _visitor(self) -> tuple[bytes, bytes, str]:
        """An anonymous page view (keyed by its anonymousId, so usually on another partition
        than the user's) whose traits carry a phone; 20-200 records later the visitor signs
        up under a userId naming that anonymousId, with an email only (a stitch across
        partitions: the phone reaches HighLevel with the user's next upsert, if any); half of
        them send a "Lead Generated" without traits 200-400 records after that."""
        rng, n = self._rng, self._n
        self._n += 1
        visitor = n % (10_000 - self._users)  # phones after the users': one per visitor id
        anonymous, user_id = f"anon-{self._seed}-{n}", f"visitor-{visitor}"
        stamp = datetime.now(UTC).isoformat()
        context = {"site": f"site-{visitor % len(LOCATIONS)}",
                   "consent": {"marketing": "granted"}}
        page = {"type": "page", "name": "Pricing", "anonymousId": anonymous,
                "messageId": f"soak-{self._seed}-{n}", "timestamp": stamp,
                "context": {**context,
                            "traits": {"phone": f"+1 415 555 {self._users + visitor:04d}"}}}
        sign_up = {"type": "identify", "userId": user_id, "anonymousId": anonymous,
                   "messageId": f"soak-{self._seed}-{n}-identify", "timestamp": stamp,
                   "context": context,
                   "traits": {"email": f"visitor{visitor}@example.com", "first_name": "Visitor"}}
        signed_up_at = n + rng.randrange(20, 200)
        self._due.append((signed_up_at, user_id.encode(), orjson.dumps(sign_up), "visitor"))
        if rng.random() < 0.5:
            lead = {"type": "track", "event": "Lead Generated", "userId": user_id,
                    "messageId": f"soak-{self._seed}-{n}-lead", "timestamp": stamp,
                    "context": context, "properties": {"source": "Contact Form"}}
            due = signed_up_at + rng.randrange(200, 400)
            self._due.append((due, user_id.encode(), orjson.dumps(lead), "visitor"))
        self._due.sort(key=lambda d: d[0])
        return anonymous.encode(), orjson.dumps(page), "visitor"

    def _user(self) -> tuple[bytes, bytes, str]:
        rng, n = self._rng, self._n
        self._n += 1
        user = rng.randrange(self._users)
        user_id = f"user-{user}"
        base: dict[str, Any] = {
            "userId": user_id,
            "messageId": f"soak-{self._seed}-{n}",
            "timestamp": datetime.now(UTC).isoformat(),
            "context": {
                "site": f"site-{user % len(LOCATIONS)}",
                "consent": {"marketing": "granted"},
            },
        }
        roll = rng.random()
        if roll < 0.0025:
            return user_id.encode(), b'{"type": "identify", "userId": ', "malformed"
        if roll < 0.005:
            # an identify without email or phone from a user never seen (a known user's profile
            # would supply them): no_identifier
            event = {**base, "type": "identify", "userId": f"anon-{n}", "traits": {"title": "x"}}
            return f"anon-{n}".encode(), orjson.dumps(event), "malformed"
        if roll < 0.105:
            self._versions[user] += 1
            traits = {
                "email": f"soak{user}@example.com",
                "phone": f"+1 415 555 {user:04d}",
                "first_name": f"v{self._versions[user]}",
                "last_name": f"Soak{user}",
            }
            if roll < 0.065:
                event = {**base, "type": "identify", "traits": traits}
                kind = "identify"
            elif roll < 0.085:
                event = {**base, "type": "track", "event": "Signed Up",
                         "properties": {"method": "email"}}
                event["context"] = {**base["context"], "traits": traits}
                kind = "signed_up"
            else:
                event = {**base, "type": "track", "event": "Lead Generated",
                         "properties": {"source": "Contact Form", "lead_tag": "website-lead"}}
                event["context"] = {**base["context"], "traits": traits}
                kind = "lead"
            return user_id.encode(), orjson.dumps(event), kind
        if roll < 0.4:
            event = {**base, "type": "page", "name": "Pricing", "properties": {"path": "/pricing"}}
            return user_id.encode(), orjson.dumps(event), "page"
        event = {**base, "type": "track", "event": "Product Viewed",
                 "properties": {"sku": f"sku-{rng.randrange(500)}"}}
        return user_id.encode(), orjson.dumps(event), "track"


class RecordSource(Protocol):
    """What ``SteadyProducer`` produces: ``EventMix`` here, ``bench_state_restore``'s events."""

    def next(self) -> tuple[bytes, bytes, str]:
        """(key, value, kind) of the next record."""
        ...


class SteadyProducer(threading.Thread):
    """Produces ``rate`` records per second (idempotent, acks=all) until ``stop``. While the
    broker is away records wait in librdkafka's queue (up to 15 min) and the schedule catches
    up, so the average rate holds. ``produced`` counts acknowledged records."""

    def __init__(self, bootstrap: str, topic: str, mix: RecordSource, rate: float) -> None:
        super().__init__(name="soak-producer", daemon=True)
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "linger.ms": 20,
                "message.timeout.ms": 900_000,
                "log_level": 2,  # no line per refused connection while the broker is away
            }
        )
        self._topic, self._mix, self._rate = topic, mix, rate
        self._stopping = threading.Event()
        self._flush_seconds = 120.0
        self.produced = 0
        self.failed = 0
        self.unflushed = 0
        self.by_kind: Counter[str] = Counter()
        self.seconds = 0.0

    def _acked(self, err: object, _msg: object) -> None:
        if err is None:
            self.produced += 1
        else:
            self.failed += 1

    def run(self) -> None:
        started = time.monotonic()
        sent = 0
        while not self._stopping.is_set():
            due = int((time.monotonic() - started) * self._rate)
            while sent < due:
                key, value, kind = self._mix.next()
                try:
                    self._producer.produce(
                        self._topic, key=key, value=value, on_delivery=self._acked
                    )
                except BufferError:
                    self._producer.poll(0.1)  # queue full (a long outage): retry
                    continue
                self.by_kind[kind] += 1
                sent += 1
            self._producer.poll(0.05)
        self.seconds = time.monotonic() - started
        self.unflushed = self._producer.flush(self._flush_seconds)

    def stop(self, flush_seconds: float = 120.0) -> None:
        """Stop producing and wait until every record is acknowledged (at most
        ``flush_seconds``); a no-op once stopped."""
        if self._stopping.is_set():
            return
        self._flush_seconds = flush_seconds
        self._stopping.set()
        self.join()


# -- the consumer group ---------------------------------------------------------------------------


class Members:
    """``ghl-consumer run`` processes in one group, by slot, one per configuration file of
    ``configs`` (the same file, or one per slot: each its own state directory, kept across its
    restarts). Their stdout and stderr go to ``logs/member-<slot>.log``. Faults mark a slot
    busy while they stop and restart it; ``revive`` restarts any other slot whose process
    exited (an unexpected exit)."""

    def __init__(self, configs: list[Path], env: dict[str, str], logs: Path) -> None:
        self._env, self._configs, self._logs = env, configs, logs
        self.processes: list[asyncio.subprocess.Process | None] = [None] * len(configs)
        self._pumps: list[asyncio.Task[None]] = []
        self._busy: set[int] = set()
        self.unexpected: list[dict[str, Any]] = []

    async def start(self, slot: int) -> None:
        process = await start_consumer(
            self._env, "--config", str(self._configs[slot]), "--log-level", "WARNING"
        )
        self.processes[slot] = process
        log = self._logs / f"member-{slot}.log"
        for stream in (process.stdout, process.stderr):
            assert stream is not None  # start_consumer pipes both
            self._pumps.append(asyncio.create_task(_pump(stream, log)))

    async def stop(self, slot: int, sig: int) -> int:
        """Send ``sig`` and wait for the exit (SIGKILL after ``STOP_GRACE`` s); its code."""
        process = self.processes[slot]
        assert process is not None
        self._busy.add(slot)
        try:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
            try:
                async with asyncio.timeout(STOP_GRACE):
                    return await process.wait()
            except TimeoutError:
                return await stop_process(process, signal.SIGKILL)
        finally:
            self.processes[slot] = None

    async def restart(self, slot: int) -> None:
        await self.start(slot)
        self._busy.discard(slot)

    async def revive(self, at: float) -> None:
        for slot, process in enumerate(self.processes):
            if slot in self._busy or process is None or process.returncode is None:
                continue
            tail = (self._logs / f"member-{slot}.log").read_text(errors="replace")
            self.unexpected.append(
                {"t": round(at, 1), "slot": slot, "exit_code": process.returncode,
                 "log_tail": tail.splitlines()[-20:]}
            )
            await self.start(slot)

    def rss(self) -> list[float | None]:
        values: list[float | None] = []
        for process in self.processes:
            try:
                values.append(round(memory_mb(process.pid)[0], 1) if process else None)
            except OSError:  # exited between the check and the read
                values.append(None)
        return values

    async def close(self) -> list[int]:
        """SIGTERM every running member, wait (SIGKILL after ``STOP_GRACE`` s); exit codes."""
        codes = []
        for slot, process in enumerate(self.processes):
            if process is not None and process.returncode is None:
                codes.append(await self.stop(slot, signal.SIGTERM))
        for pump in self._pumps:
            pump.cancel()
        return codes


async def _pump(stream: asyncio.StreamReader, log: Path) -> None:
    with log.open("ab") as out:
        async for line in stream:
            out.write(line)
            out.flush()


# -- the soak -------------------------------------------------------------------------------------


class Soak:
    """One soak run: ``await Soak(options).run()`` returns the result document (also written to
    ``options.out``). Every child process and server is stopped before ``run`` returns or
    raises, including on cancellation."""

    def __init__(self, options: SoakOptions) -> None:
        self.o = options
        self.rng = random.Random(options.seed)
        self.started = time.monotonic()
        self.faults: list[dict[str, Any]] = []
        self.lag_series: list[list[float | None]] = []
        self.rss_series: list[list[float | None]] = []
        self.broker = LocalBroker()
        self.redis = RedisServer()
        self.logs = LOGS / f"soak-{time.strftime('%Y%m%d-%H%M%S')}"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.group = f"soak-{options.seed}-{int(time.time())}"
        self.topic = ""
        self.sandbox_url = ""
        self.producer: SteadyProducer | None = None
        self.members: Members | None = None

    def now(self) -> float:
        return round(time.monotonic() - self.started, 1)

    # -- observation

    def _lag_now(self) -> tuple[int, int] | None:
        """(end offsets total, committed total), None while the broker cannot answer."""
        try:
            ends = end_offsets(self.broker.bootstrap, self.topic)
            committed = committed_offsets(
                self.broker.bootstrap, self.group, self.topic, self.o.partitions
            )
        except KafkaException:
            return None
        return sum(ends.values()), sum(max(0, committed.get(p, 0)) for p in ends)

    async def _sample(self) -> int | None:
        """Take one sample (RSS, lag); return the lag (None: unknown right now)."""
        assert self.members is not None
        at = self.now()
        self.rss_series.append([at, *self.members.rss()])
        counts = await asyncio.to_thread(self._lag_now)
        produced = self.producer.produced if self.producer else 0
        if counts is None:
            self.lag_series.append([at, None, produced, None])
            return None
        end, committed = counts
        self.lag_series.append([at, end - committed, produced, committed])
        return end - committed

    async def _sampler(self) -> None:
        assert self.members is not None
        while True:
            await self._sample()
            await self.members.revive(self.now())
            await asyncio.sleep(self.o.sample_interval)

    # -- faults

    async def _fault_member(self, sig: int) -> str:
        assert self.members is not None
        # the last member is never signalled: its RSS over the whole run is the leak witness
        slot = self.rng.randrange(max(1, self.o.members - 1))
        code = await self.members.stop(slot, sig)
        await asyncio.sleep(3)  # the group notices (SIGKILL: after the 6 s session timeout)
        await self.members.restart(slot)
        return f"member {slot}, exit code {code}"

    async def _fault_sandbox(self, session: aiohttp.ClientSession) -> str:
        async with session.put(f"{self.sandbox_url}/_sandbox/faults", json=SANDBOX_FAULTS) as r:
            r.raise_for_status()
        try:
            await asyncio.sleep(self.o.fault_window)
        finally:
            async with session.put(f"{self.sandbox_url}/_sandbox/faults", json=NO_FAULTS) as r:
                r.raise_for_status()
        return f"{self.o.fault_window:.0f} s of {SANDBOX_FAULTS}"

    async def _fault_redis(self) -> str:
        self.redis.stop()  # SIGKILL
        await asyncio.sleep(self.o.fault_window)
        await asyncio.to_thread(self.redis.start)
        return f"down {self.o.fault_window:.0f} s"

    async def _fault_broker(self, turn: int) -> str:
        how = "kill" if turn % 2 else "stop"
        await asyncio.to_thread(self.broker.stop if how == "stop" else self.broker.kill)
        await asyncio.sleep(5)
        await asyncio.to_thread(self.broker.start)
        return how

    async def _schedule(self, session: aiohttp.ClientSession) -> None:
        """Inject faults in turn until the duration is over and every kind ran once."""
        actions: dict[str, Callable[[int], Awaitable[str]]] = {
            "sigkill_member": lambda _: self._fault_member(signal.SIGKILL),
            "sigterm_member": lambda _: self._fault_member(signal.SIGTERM),
            "sandbox_faults": lambda _: self._fault_sandbox(session),
            "redis_kill": lambda _: self._fault_redis(),
            "broker_restart": self._fault_broker,
        }
        turn = 0
        while turn < len(KINDS) or self.now() + self.o.fault_gap < self.o.duration:
            await asyncio.sleep(self.o.fault_gap)
            kind = KINDS[turn % len(KINDS)]
            began = self.now()
            detail = await actions[kind](turn // len(KINDS) + 1)
            self.faults.append(
                {"t": began, "kind": kind, "seconds": round(self.now() - began, 1),
                 "detail": detail}
            )
            print(f"[{began:7.1f}s] {kind}: {detail}", flush=True)
            turn += 1

    async def _drain(self) -> float | None:
        """Wait until the lag is 0; seconds it took, None when ``drain_timeout`` passed."""
        began = time.monotonic()
        while time.monotonic() - began < self.o.drain_timeout:
            if await self._sample() == 0:
                return round(time.monotonic() - began, 1)
            await asyncio.sleep(2)
        return None

    # -- the run

    async def run(self) -> dict[str, Any]:
        o = self.o
        machine = machine_facts()
        load_start = loadavg()
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(self.broker.close)  # blocking, but only at the very end
            await asyncio.to_thread(self.broker.start)
            self.topic = create_topic(self.broker.bootstrap, partitions=o.partitions, prefix="soak")
            stack.callback(self.redis.__exit__, None, None, None)
            await asyncio.to_thread(self.redis.start)
            sandbox, self.sandbox_url = await start_sandbox(LOCATIONS, "--seed", str(o.seed))
            stack.push_async_callback(stop_process, sandbox)
            configs = _configs(self.logs, o)
            config = configs[0]  # the audit's: the state directory is no concern of it
            env = {
                "KAFKA_BOOTSTRAP_SERVERS": self.broker.bootstrap,
                "KAFKA_TOPICS": self.topic,
                "KAFKA_GROUP_ID": self.group,
                "KAFKA_SESSION_TIMEOUT_MS": "6000",
                "GHL_API_BASE_URL": self.sandbox_url,
                "REDIS_URL": self.redis.url,
                **{f"SOAK_TOKEN_{i}": token for i, token in enumerate(LOCATIONS.values())},
            }
            members = self.members = Members(configs, env, self.logs)
            exit_codes: list[int] = []

            async def close_members() -> None:
                exit_codes.extend(await members.close())

            stack.push_async_callback(close_members)
            for slot in range(o.members):
                await members.start(slot)
            session = await stack.enter_async_context(aiohttp.ClientSession())

            print(f"soak: {o.duration:.0f} s at {o.rate:g} ev/s, topic {self.topic}, "
                  f"logs in {self.logs}", flush=True)
            producer = self.producer = SteadyProducer(
                self.broker.bootstrap, self.topic,
                EventMix(o.seed, o.users, visitors=o.partitioned), o.rate,
            )
            self.started = time.monotonic()  # the clock of the samples and faults: the load
            producer.start()
            stack.callback(producer.stop, 1.0)  # interrupted: do not wait for a broker away
            sampler = asyncio.create_task(self._sampler())
            try:
                await self._schedule(session)
                await asyncio.sleep(max(0.0, o.duration - self.now()))
                await asyncio.to_thread(producer.stop)
                produced_seconds = producer.seconds
                # restore: no sandbox fault, Redis and the broker up, every member running
                # (each fault undoes itself; this covers a crash mid-fault)
                await members.revive(self.now())
            finally:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
            drain_seconds = await self._drain()
            print(f"drained in {drain_seconds} s" if drain_seconds is not None
                  else f"NOT drained after {o.drain_timeout:.0f} s", flush=True)
            await close_members()
            ends = await asyncio.to_thread(end_offsets, self.broker.bootstrap, self.topic)
            stitches = (
                sum((await asyncio.to_thread(
                    end_offsets, self.broker.bootstrap, f"{self.group}.stitch"
                )).values())
                if o.partitioned else None
            )
            audit = await self._audit(env, config)
        return self._document(
            machine=machine, load_start=load_start, produced_seconds=produced_seconds,
            drain_seconds=drain_seconds, exit_codes=exit_codes, ends=sum(ends.values()),
            audit=audit, stitches=stitches,
        )

    async def _audit(self, env: dict[str, str], config: Path) -> dict[str, Any]:
        code, out, err = await run_command(
            env, "audit", "--config", str(config), "--sandbox", self.sandbox_url, "--json",
            seconds=1800,
        )
        (self.logs / "audit.json").write_text(out)
        if code == 2 or not out.strip():
            return {"exit_code": code, "error": err[-2000:]}
        report = orjson.loads(out)
        unaccounted = report["unaccounted"]
        return {
            "exit_code": code,
            "records": report["records"],
            "identity_events": report["identity_events"],
            "delivered_events": report["delivered_events"],
            "dead_lettered": report["dead_lettered"],
            "parked": report["parked"],
            "dropped": report["dropped"],
            "contacts": report["contacts"],
            "allowed_differences": report["allowed_differences"],
            "stitch_order_rejects": report["stitch_order_rejects"],
            "unaccounted_events": sum(u["events"] for u in unaccounted),
            "unaccounted": unaccounted[:20],
        }

    def _document(
        self, *, machine: dict[str, Any], load_start: list[float], produced_seconds: float,
        drain_seconds: float | None, exit_codes: list[int], ends: int, audit: dict[str, Any],
        stitches: int | None,
    ) -> dict[str, Any]:
        o = self.o
        assert self.producer is not None
        assert self.members is not None
        lags = [row[1] for row in self.lag_series if row[1] is not None]
        problems = []
        if audit.get("exit_code") != 0 or audit.get("unaccounted_events", 1) != 0:
            problems.append("audit: unaccounted events or the audit failed")
        if drain_seconds is None:
            problems.append(f"the group did not drain within {o.drain_timeout:.0f} s")
        if self.members.unexpected:
            problems.append(f"{len(self.members.unexpected)} unexpected member exit(s)")
        if self.producer.failed or self.producer.unflushed or ends != self.producer.produced:
            problems.append("the producer lost records")
        return {
            "scenario": "soak",
            "command": " ".join(["bench/soak.py", *sys.argv[1:]])
            if sys.argv[0].endswith("soak.py") else f"bench/soak.py {_argv_of(o)}",
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine,
            "loadavg_start": load_start,
            "loadavg_end": loadavg(),
            "duration_s": o.duration,
            "rate_ev_per_s": o.rate,
            "seed": o.seed,
            "members": o.members,
            "partitions": o.partitions,
            # each member its own state directory; None: every profile in memory
            "profile_state": "partitioned" if o.partitioned else "whole changelog",
            "stitch_records": stitches,  # records of the stitch topic (not events)
            "locations": len(LOCATIONS),
            "logs": str(self.logs),
            "events": {
                "produced": self.producer.produced,
                "produce_seconds": round(produced_seconds, 1),
                "failed": self.producer.failed,
                "in_topic": ends,
                "by_kind": dict(sorted(self.producer.by_kind.items())),
            },
            "faults": {
                "by_kind": {kind: sum(f["kind"] == kind for f in self.faults) for kind in KINDS},
                "log": self.faults,
            },
            "unexpected_exits": self.members.unexpected,
            "shutdown_exit_codes": exit_codes,
            "rss_mb": _rss_summary(self.rss_series),
            "lag": {
                "series": self.lag_series,
                "columns": ["seconds", "lag", "produced", "committed"],
                "max": max(lags, default=0),
                "p99": percentile(lags, 0.99),
                "unknown_samples": sum(row[1] is None for row in self.lag_series),
            },
            "drain_seconds": drain_seconds,
            "drained": drain_seconds is not None,
            "audit": audit,
            "problems": problems,
            "ok": not problems,
            "exit_status": 0 if not problems else 1,
        }


def _rss_summary(series: list[list[float | None]]) -> dict[str, Any]:
    """Per member: medians of its RSS over the first and the last quarter of the samples, and its
    maximum. The top-level medians are the last member's, the one no fault restarts (the
    others' RSS starts low again after every restart); ``max`` is over every member."""
    quarter = max(1, len(series) // 4)
    members = len(series[0]) - 1 if series else 0

    def median(rows: list[list[float | None]], column: int) -> float:
        found = [row[column] for row in rows if row[column] is not None]
        return round(statistics.median(found), 1) if found else 0.0

    per_member = [
        {
            "first_quarter_median": median(series[:quarter], column),
            "last_quarter_median": median(series[-quarter:], column),
            "max": max((r[column] for r in series if r[column] is not None), default=0.0),
        }
        for column in range(1, members + 1)
    ]
    witness = per_member[-1] if per_member else {"first_quarter_median": 0.0,
                                                 "last_quarter_median": 0.0}
    return {
        "series": series,
        "columns": ["seconds", *[f"member {i}" for i in range(members)]],
        "witness": members - 1,
        "first_quarter_median": witness["first_quarter_median"],
        "last_quarter_median": witness["last_quarter_median"],
        "max": max((m["max"] for m in per_member), default=0.0),
        "per_member": per_member,
    }


def _configs(logs: Path, o: SoakOptions) -> list[Path]:
    """The members' configuration files: one for all, or (``partitioned``) one per slot with
    its own ``[profiles] state_dir`` under ``logs``."""
    if not o.partitioned:
        config = logs / "consumer.toml"
        config.write_text(_config_toml())
        return [config] * o.members
    configs = []
    for slot in range(o.members):
        config = logs / f"consumer-{slot}.toml"
        config.write_text(_config_toml() + f'[profiles]\nstate_dir = "{logs / f"state-{slot}"}"\n')
        configs.append(config)
    return configs


def _config_toml() -> str:
    integrations = [
        {
            "id": f"site-{i}",
            "location_id": location,
            "access_token_env": f"SOAK_TOKEN_{i}",
            "routing": {"field": "context.site", "values": [f"site-{i}"]},
        }
        for i, location in enumerate(LOCATIONS)
    ]
    # two instances share each location's budget through Redis; without Redis each takes half
    return consumer_config(delivery={"redis_expected_instances": 2}, integrations=integrations)


def _argv_of(o: SoakOptions) -> str:
    return (f"--duration {o.duration:g} --rate {o.rate:g} --seed {o.seed} "
            f"--fault-gap {o.fault_gap:g} --fault-window {o.fault_window:g}"
            + (" --partitioned" if o.partitioned else ""))


def summary(doc: dict[str, Any]) -> str:
    events, rss, lag, audit = doc["events"], doc["rss_mb"], doc["lag"], doc["audit"]
    faults = ", ".join(f"{k} {v}" for k, v in doc["faults"]["by_kind"].items())
    lines = [
        f"soak {'OK' if doc['ok'] else 'FAILED'}: {doc['duration_s']:g} s at "
        f"{doc['rate_ev_per_s']:g} ev/s, {events['produced']:,} events produced, profile state "
        f"{doc['profile_state']}"
        + (f" ({doc['stitch_records']:,} stitch records)" if doc["stitch_records"] else ""),
        f"faults        {faults}",
        f"RSS MB        member {rss['witness']} (never restarted): first-quarter median "
        f"{rss['first_quarter_median']}, last-quarter median {rss['last_quarter_median']}; "
        f"max of all {rss['max']}",
        f"lag           max {lag['max']:,}, p99 {lag['p99']:,}; drained in "
        f"{doc['drain_seconds']} s",
        f"audit         exit {audit.get('exit_code')}, {audit.get('records', '?')} records, "
        f"{audit.get('unaccounted_events', '?')} unaccounted, dead-lettered "
        f"{audit.get('dead_lettered', '?')}, delivered {audit.get('delivered_events', '?')}, "
        f"allowed differences {audit.get('allowed_differences', '?')}",
    ]
    lines += [f"PROBLEM       {p}" for p in doc["problems"]]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> SoakOptions:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, required=True, help="seconds of load")
    parser.add_argument("--rate", type=float, required=True, help="events per second")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "soak.json")
    parser.add_argument("--fault-gap", type=float, default=30.0, help="seconds between faults")
    parser.add_argument("--fault-window", type=float, default=20.0,
                        help="seconds of sandbox faults, and of the Redis outage")
    parser.add_argument("--sample-interval", type=float, default=5.0)
    parser.add_argument("--drain-timeout", type=float, default=600.0)
    parser.add_argument(
        "--partitioned", action="store_true",
        help="partitioned profile state: each member its own [profiles] state_dir (kept "
             "across its restarts), and anonymous visitors stitched across partitions in the mix",
    )
    a = parser.parse_args(argv)
    return SoakOptions(
        duration=a.duration, rate=a.rate, seed=a.seed, out=a.out, fault_gap=a.fault_gap,
        fault_window=a.fault_window, sample_interval=a.sample_interval,
        drain_timeout=a.drain_timeout, partitioned=a.partitioned,
    )


async def _main(options: SoakOptions) -> dict[str, Any]:
    # SIGTERM cancels the run like Ctrl-C does, so the cleanup runs either way
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await Soak(options).run()


def main(argv: list[str]) -> int:
    options = parse_args(argv)
    try:
        doc = asyncio.run(_main(options))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("soak interrupted; every child stopped", file=sys.stderr)
        return 130
    write_result(options.out, doc)
    print(summary(doc))
    print(f"wrote {options.out}")
    return int(doc["exit_status"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
