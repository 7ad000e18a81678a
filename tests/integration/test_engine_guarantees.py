"""The streaming engine's guarantees (issue 5, "Done when"), end to end: a real broker, the
sandbox over HTTP, real ``python -m consumer run`` processes.

Every stream is made of versioned identifies: user ``u`` (Kafka key ``user-u``, email
``user-u@example.com``) says ``first_name = "vNNN"`` with NNN counting up in produce order, so
the sandbox's request log shows which version of each contact every successful upsert carried,
and in which order they landed. Page events are mixed in: the engine drops them
(``not_mapped``), and their offsets must complete all the same.

What is checked, and against what:
- order: the versions a contact receives never go back (``strictly_increasing``), and after a
  rebalance never below what the group had already committed (``stale_writes``);
- commit after delivery: every record below a committed offset was delivered (or dropped)
  before that commit was read (``undelivered_commits``);
- no commit from a revoked partition: the group's committed offsets, sampled every 200 ms,
  never go backwards (``backward_commits``);
- nothing lost: every contact ends at its last version.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import signal
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import aiohttp
import orjson
import pytest

from consumer.sandbox import Faults, run_sandbox
from tests.harness.guide import GUIDE_IDENTIFY, GUIDE_LEAD, GUIDE_UPSERT
from tests.harness.stream import (
    FAST_DELIVERY,
    FAULT_CYCLES,
    LOCATION,
    TOKEN,
    UNLIMITED,
    UNLIMITED_ARGS,
    Landed,
    Records,
    at,
    audit_clean,
    backward_commits,
    final_states,
    landed_at,
    landed_upserts,
    make_group,
    produce_live,
    sandbox_get,
    sequences,
    stale_writes,
    stop_cleanly,
    strictly_increasing,
    undelivered_commits,
    until,
    until_committed,
    versions_round,
)
from tests.integration.consumer_harness import (
    ProcessLog,
    produce_rounds,
    start_sandbox,
    stop_process,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # make check leaves it out

# -- the tests -------------------------------------------------------------------------------------


async def test_per_contact_order_holds_under_concurrent_delivery(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    """A live stream of 40 versions for each of 24 users over 4 partitions, no coalescing
    window, 15 ms per request, so different contacts' requests overlap: each contact
    receives its versions strictly in event order (none twice: one consumer, no faults) and
    ends at its last one."""
    users, versions, latency = 24, 40, 0.015
    topic = new_topic(partitions=4)
    run = uuid.uuid4().hex[:6]
    rounds = [versions_round(users, v, run, pages=v % 5 == 0) for v in range(versions)]
    async with run_sandbox(
        locations={LOCATION: TOKEN},
        limits=UNLIMITED,
        faults=Faults(latency_ms=latency * 1000),
        request_log_size=100_000,
    ) as sandbox:
        group = make_group(
            kafka_bootstrap, topic, 4, sandbox.url, tmp_path, engine={"coalesce_window_ms": 0}
        )
        with group.sampler() as sampler:
            member = await group.start()
            try:
                async with asyncio.timeout(90):
                    await member.wait_for(group.assigned)
                    produced = await produce_live(kafka_bootstrap, topic, rounds, interval_s=0.06)
                    await until_committed(sampler, group.ends(), [member])
            finally:
                await stop_cleanly(member)
        requests = list(sandbox.requests)
        contacts = sandbox.contacts(LOCATION)

    assert [r for r in requests if r["status"] != 200] == []
    landed = landed_upserts(requests)
    per_user = sequences(landed)
    assert strictly_increasing(per_user) == []
    assert final_states(contacts, produced) == []
    assert {u: seq[-1] for u, seq in per_user.items()} == produced.last_versions()
    # The stream exercised ordering: most versions went out on their own, not coalesced...
    assert len(landed) >= users * versions // 2, len(landed)
    # ...and requests overlapped: at one at a time they would need len(landed) * latency.
    span = landed[-1].at - landed[0].at
    assert len(landed) * latency > 2 * span, (len(landed), span)
    assert backward_commits(sampler.samples) == []


async def test_guides_identify_then_lead_generated_costs_one_http_call(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    """The integration guide's example: identify then "Lead Generated" for lead-987, back to
    back, default 250 ms window: one upsert, exactly the guide's payload
    (docs/architecture.md, "Mapping rules")."""
    topic = new_topic(partitions=1)
    identify_event = {**GUIDE_IDENTIFY, "messageId": "guide-identify"}
    lead_event = {**GUIDE_LEAD, "messageId": "guide-lead"}
    records: Records = [
        (b"lead-987", orjson.dumps(identify_event)),
        (b"lead-987", orjson.dumps(lead_event)),
    ]
    await asyncio.to_thread(produce_rounds, kafka_bootstrap, topic, [records])
    async with run_sandbox(locations={LOCATION: TOKEN}) as sandbox:
        # Default settings: the 250 ms window, HighLevel's rate budget.
        group = make_group(kafka_bootstrap, topic, 1, sandbox.url, tmp_path, delivery={})
        with group.sampler() as sampler:
            member = await group.start()
            try:
                async with asyncio.timeout(60):
                    await until_committed(sampler, group.ends(), [member])
            finally:
                await stop_cleanly(member)
        requests = list(sandbox.requests)

    assert [(r["method"], r["path"], r["status"]) for r in requests] == [
        ("POST", "/contacts/upsert", 200)
    ]
    assert requests[0]["body"] == GUIDE_UPSERT


async def test_no_offset_is_committed_before_its_event_is_delivered(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    """HighLevel goes away mid-stream: the sandbox (a child process) first stops answering
    (100 % hangs, so its request log is final), then is SIGKILLed. For 3 s the consumer finds
    nothing listening; every commit read during the whole run covers only delivered records
    (or dropped page views). A new sandbox on the same port, with the first one's state
    file, then receives the rest: offsets reach the end, every contact its last version."""
    users, versions = 60, 4
    topic = new_topic(partitions=2)
    run = uuid.uuid4().hex[:6]
    records = [r for v in range(versions) for r in versions_round(users, v, run, pages=True)]
    produced = await produce_live(kafka_bootstrap, topic, [records])
    state_file = tmp_path / "sandbox-state.json"
    sandbox_args = (*UNLIMITED_ARGS, "--latency-ms", "20", "--state-file", str(state_file))
    sandbox, url = await start_sandbox({LOCATION: TOKEN}, *sandbox_args)
    port = int(url.rsplit(":", 1)[1])
    group = make_group(
        kafka_bootstrap,
        topic,
        2,
        url,
        tmp_path,
        # 20 upserts/s stretches the backlog over seconds; commits every 200 ms follow
        # deliveries closely; a dead HighLevel is retried at least every second.
        engine={"coalesce_window_ms": 0, "commit_interval_ms": 200},
        delivery={
            "rate_burst": 20,
            "rate_sustained": 20,
            "rate_interval_seconds": 1,
            "retry_base_seconds": 0.2,
            "retry_max_seconds": 1,
            "timeout_seconds": 2,
        },
    )
    ends = group.ends()
    async with aiohttp.ClientSession() as http:
        try:
            with group.sampler() as sampler:
                member = await group.start()
                try:
                    async with asyncio.timeout(60):
                        while (
                            len(await landed_at(http, url)) < 15
                            or sum(max(0, o) for o in sampler.latest().values()) == 0
                        ):
                            await asyncio.sleep(0.1)
                    async with http.put(f"{url}/_sandbox/faults", json={"hangRate": 1.0}) as r:
                        assert r.status == 200
                    # Requests admitted before the change land within their 20 ms latency.
                    async with asyncio.timeout(10):
                        before: list[Landed] = []
                        while True:
                            await asyncio.sleep(0.3)
                            now = await landed_at(http, url)
                            if now == before:
                                break
                            before = now
                    async with http.post(f"{url}/_sandbox/save", json={}) as r:
                        assert r.status == 200
                    assert await stop_process(sandbox, signal.SIGKILL) == -signal.SIGKILL
                    outage_started = len(sampler.samples)
                    await asyncio.sleep(3)  # observing that nothing happens takes time
                    during_outage = sampler.samples[outage_started:]
                    delivered_first = before

                    sandbox, _ = await start_sandbox({LOCATION: TOKEN}, *sandbox_args, port=port)
                    async with asyncio.timeout(60):
                        await until_committed(sampler, ends, [member])
                    contacts = (
                        await sandbox_get(
                            http, url, f"/_sandbox/contacts?locationId={LOCATION}&unmasked=1"
                        )
                    )["contacts"]
                    delivered_after = await landed_at(http, url)
                finally:
                    await stop_cleanly(member)
        finally:
            await stop_process(sandbox)

    # While HighLevel was away, commits stayed within what it had received before.
    first_samples = sampler.samples[: outage_started + len(during_outage)]
    assert undelivered_commits(delivered_first, produced, first_samples) == []
    held = during_outage[-1][1]
    assert held != ends, "the stream was over before the outage: nothing was tested"
    assert any(c > 0 for c in held.values()), "nothing was committed before the outage"
    # ...and stopped advancing (the last second of the outage saw one committed state).
    last_second = [o for at, o in during_outage if at > during_outage[-1][0] - 1]
    assert len(last_second) >= 3, during_outage
    assert all(o == held for o in last_second), during_outage
    # Then everything arrived, and the rest of the run kept the rule too.
    assert final_states(contacts, produced) == []
    assert undelivered_commits(delivered_first + delivered_after, produced, sampler.samples) == []
    assert backward_commits(sampler.samples) == []


def resends(landed: Sequence[Landed]) -> list[Landed]:
    """Upserts that brought a contact nothing new: a version it had already received (or an
    older one). After a crash these are the records delivered but not yet committed."""
    newest: dict[int, int] = {}
    repeated = []
    for upsert in landed:
        if upsert.version <= newest.get(upsert.user, -1):
            repeated.append(upsert)
        newest[upsert.user] = max(upsert.version, newest.get(upsert.user, -1))
    return repeated


async def test_sigkilled_consumers_lose_nothing_and_resend_only_uncommitted_deliveries(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    """A backlog (4 versions of 200 users, more with more cycles, page views between)
    delivered at 15 upserts/s. ``FAULT_CYCLES`` times a consumer starts, delivers for a
    random moment and is SIGKILLed (no drain, no commit, no goodbye); a last consumer then
    finishes. Every contact ends at its last version; every commit sample stayed within what
    HighLevel had received; the upserts sent again (a version the contact already had) are no
    more than those that landed in the last commit interval (plus margin) before each kill:
    the offset map committed with each offset spares the next owner everything delivered
    before that. Then the audit accounts for every event."""
    kills, versions, commit_interval = FAULT_CYCLES, 4, 1.0
    users = max(200, 50 * kills)  # a cycle delivers up to ~30 contacts: the backlog outlasts it
    started = time.monotonic()
    topic = new_topic(partitions=4)
    run = uuid.uuid4().hex[:6]
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    records = [r for v in range(versions) for r in versions_round(users, v, run, pages=True)]
    produced = await produce_live(kafka_bootstrap, topic, [records])
    killed_at: list[float] = []
    async with run_sandbox(
        locations={LOCATION: TOKEN},
        limits=UNLIMITED,
        faults=Faults(latency_ms=10),
        request_log_size=100_000,
    ) as sandbox:
        group = make_group(
            kafka_bootstrap,
            topic,
            4,
            sandbox.url,
            tmp_path,
            engine={
                "coalesce_window_ms": 0,
                "max_in_flight": 8,
                "commit_interval_ms": int(commit_interval * 1000),
            },
            # 15 upserts/s: the backlog takes many seconds, so every kill lands mid-stream.
            delivery={"rate_burst": 15, "rate_sustained": 15, "rate_interval_seconds": 1},
            # A killed member's partitions move after 6 s of silence (librdkafka: 45 s).
            env={"KAFKA_SESSION_TIMEOUT_MS": "6000"},
        )

        def landed_count() -> int:
            return len(landed_upserts(sandbox.requests))

        with group.sampler() as sampler:
            for _ in range(kills):
                member = await group.start()
                try:
                    before = landed_count()
                    async with asyncio.timeout(60):  # includes the dead member's 6 s
                        await until(lambda: landed_count() >= before + 5, [member])  # noqa: B023
                    await asyncio.sleep(rng.uniform(0.2, 1.5))  # a random moment mid-stream
                finally:
                    killed_at.append(time.time())  # the sandbox log's clock
                    code = await stop_process(member.process, signal.SIGKILL)
                    await member.finished()
                assert code == -signal.SIGKILL, member.text()[-3000:]
            done = {u.user for u in landed_upserts(sandbox.requests) if u.version == versions - 1}
            assert len(done) < users, "the backlog was delivered before the last kill"
            last = await group.start()
            try:
                async with asyncio.timeout(30 + users * versions / 15):  # 15 upserts/s at worst
                    await until_committed(sampler, group.ends(), [last])
            finally:
                await stop_cleanly(last)
        requests = list(sandbox.requests)
        contacts = sandbox.contacts(LOCATION)
        report = await audit_clean(group.env, sandbox.url)

    landed = landed_upserts(requests)
    repeated = resends(landed)
    window = commit_interval + 0.5  # a delivery is committed within one interval (+ the commit)
    exposed = [u for u in landed if any(k - window < u.at <= k for k in killed_at)]
    print(
        f"seed {seed}, {kills} SIGKILL cycles: {len(records)} records produced, "
        f"{len(produced.identifies)} identifies, {len(landed)} upserts for {users} contacts, "
        f"{len(repeated)} re-sent; {len(exposed)} landed within {window}s before a kill; "
        f"{report['records']} records audited, {len(report['unaccounted'])} unaccounted; "
        f"{time.monotonic() - started:.1f}s"
    )
    assert report["records"] == len(records)
    assert report["identity_events"] == len(produced.identifies)
    assert final_states(contacts, produced) == []
    assert undelivered_commits(landed, produced, sampler.samples) == []
    assert backward_commits(sampler.samples) == []
    assert len(landed) - len(repeated) >= users  # each contact got its versions at least once
    assert len(repeated) <= len(exposed), (seed, repeated, exposed)


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
async def test_members_joining_and_leaving_mid_stream_lose_nothing_and_keep_order(
    protocol: str, kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    """A live stream (50 versions of 36 users over 6 partitions, ~15 s). Member A starts;
    B joins, then C (three members); then A leaves (SIGTERM) while the stream goes on; B and
    C finish it.

    What at-least-once delivery with per-key order guarantees across rebalances, and so what
    is asserted:
    - every contact ends at its last version, and nothing is lost;
    - a new owner resumes at the committed offset (skipping done offsets recorded in the
      commit's map), so a contact may receive again versions that were delivered but not yet
      committed: its version sequence may step back, but never below a version the group had
      already committed when that upsert landed (``stale_writes``);
    - committed offsets never go backwards (no commit from a member that lost the
      partition), and every member exits 0 (drained and committed on SIGTERM).
    """
    users, versions, partitions = 36, 50, 6
    topic = new_topic(partitions=partitions)
    run = uuid.uuid4().hex[:6]
    rounds = [versions_round(users, v, run, pages=v % 5 == 0) for v in range(versions)]
    async with run_sandbox(
        locations={LOCATION: TOKEN},
        limits=UNLIMITED,
        faults=Faults(latency_ms=20),
        request_log_size=100_000,
    ) as sandbox:
        group = make_group(
            kafka_bootstrap,
            topic,
            partitions,
            sandbox.url,
            tmp_path,
            engine={"coalesce_window_ms": 0},
            env={"KAFKA_GROUP_PROTOCOL": protocol},
        )
        members: list[ProcessLog] = []
        with group.sampler() as sampler:
            try:
                async with asyncio.timeout(120):
                    a = await group.start()
                    members.append(a)
                    await a.wait_for(group.assigned)
                    producing = asyncio.create_task(
                        produce_live(kafka_bootstrap, topic, rounds, interval_s=0.3)
                    )
                    await until(lambda: len(sandbox.requests) >= 100, members)
                    for _ in range(2):  # B, then C
                        members.append(await group.start())
                        await members[-1].wait_for(group.assigned)
                    left_mid_stream = not producing.done()
                    a.process.send_signal(signal.SIGTERM)
                    assert await a.finished() == 0, a.text()[-3000:]
                    produced = await producing
                    await until_committed(sampler, group.ends(), members[1:])
            finally:
                await stop_cleanly(*members)
        requests = list(sandbox.requests)
        contacts = sandbox.contacts(LOCATION)

    landed = landed_upserts(requests)
    stepped_back = sum(
        newer < older
        for seq in sequences(landed).values()
        for older, newer in itertools.pairwise(seq)
    )
    print(f"{protocol}: {len(landed)} upserts, {stepped_back} steps back after rebalances")
    assert left_mid_stream, "the stream ended before A left: slow machine, nothing tested"
    assert [r for r in requests if r["status"] != 200] == []
    assert final_states(contacts, produced) == []
    assert stale_writes(landed, produced, sampler.samples) == []
    assert backward_commits(sampler.samples) == []
    for member in members[1:]:  # B and C each owned partitions, A gave all of its away
        assert member.count(group.assigned) >= 1
    assert a.count(f"revoked [Partition(topic='{topic}'") >= 1


async def test_a_member_joining_while_highlevel_hangs_never_sets_a_contact_back(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    """HighLevel hangs. Member A sends version 0 of every contact; its requests hang. Member B
    joins and takes one of A's two partitions. A must not let its hung requests for the lost
    partition land (or be retried) after B delivered newer versions: it hands the partition
    over only once those requests have answered or timed out, and drops, never re-sends, what
    failed. Then HighLevel recovers and version 1 of every contact arrives. Every contact must
    end at version 1, and none may be set back after a commit."""
    users, hang_timeout = 12, 15  # B is assigned ~7 s after A (two cooperative rounds)
    topic = new_topic(partitions=2)
    run = uuid.uuid4().hex[:6]
    first = await produce_live(kafka_bootstrap, topic, [versions_round(users, 0, run)])
    assert {p for p, _ in first.identifies.values()} == {0, 1}
    async with run_sandbox(
        locations={LOCATION: TOKEN},
        limits=UNLIMITED,
        faults=Faults(hang_rate=1.0),
        request_log_size=100_000,
    ) as sandbox:
        group = make_group(
            kafka_bootstrap,
            topic,
            2,
            sandbox.url,
            tmp_path,
            # The drain outlasts a hung request, so a SIGTERMed member finishes all its work.
            engine={"coalesce_window_ms": 0, "drain_timeout_seconds": 3 * hang_timeout},
            delivery={
                **FAST_DELIVERY,
                "timeout_seconds": hang_timeout,
                "retry_base_seconds": 0.2,
                "retry_max_seconds": 1,
            },
        )
        members: list[ProcessLog] = []
        with group.sampler() as sampler:
            try:
                async with asyncio.timeout(90):
                    a = await group.start()
                    members.append(a)
                    await a.wait_for(group.assigned)
                    await until(
                        lambda: sum(r["fault"] == "hang" for r in sandbox.requests) >= users,
                        members,
                    )
                    b = await group.start()
                    members.append(b)
                    await b.wait_for(group.assigned)
                    sandbox.configure(faults=Faults())  # HighLevel is back
                    b_assigned = time.time()
                    second = await produce_live(
                        kafka_bootstrap, topic, [versions_round(users, 1, run)]
                    )
                    await until_committed(sampler, group.ends(), members)
            finally:
                await stop_cleanly(*members)  # A drains: whatever it still holds is sent
        requests = list(sandbox.requests)
        contacts = sandbox.contacts(LOCATION)

    produced = first.merged(second)
    landed = landed_upserts(requests)
    print(f"upserts in landing order: {[(u.user, u.version) for u in landed]}")
    assert a.count(f"revoked [Partition(topic='{topic}'") >= 1
    first_hang = min(at(r) for r in requests if r["fault"] == "hang")
    # A held the partition until its in-flight requests for it had timed out (the revoke wait).
    assert b_assigned >= first_hang + hang_timeout - 1, "B took the partition while A's hung"
    problems = {
        "final states": final_states(contacts, produced),
        "set back after a commit": stale_writes(landed, produced, sampler.samples),
        "commits going back": backward_commits(sampler.samples),
    }
    assert problems == {k: [] for k in problems}
