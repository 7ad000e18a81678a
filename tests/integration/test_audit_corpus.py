"""The audit holds on real data (issue 20): the real-world corpus (other projects' events, read
from ``../shared/corpus/realworld`` at run time, never copied here), produced to a topic keyed
by user id and drained by ``ghl-consumer run`` into the sandbox, leaves nothing unaccounted.

The corpus reuses messageIds across user ids (so across partitions) and user ids that share an
email or phone: the engine's duplicate decisions must not depend on the order partitions are
read in, and the audit must fold contacts by HighLevel identity as the matching rules do.

The corpus directory: ``GHL_CORPUS_DIR``, else ``../shared/corpus/realworld`` beside the
repository, else ``/work/shared/corpus/realworld``; none of them: the test fails (it never
skips, so that CI cannot pass without running it)."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from consumer.sandbox.server import run_sandbox
from consumer.sandbox.settings import RateLimits
from tests.integration.consumer_harness import (
    committed_offsets,
    end_offsets,
    produce,
    run_command,
    start_consumer,
)
from tests.kafka_broker import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # make check leaves it out

LOCATION, TOKEN = "ve9EPM428h8vShlRW1KT", "pit-audit-corpus-token"
PARTITIONS = 3
# The consumer's own budget raised (the sandbox does not throttle either): the test is about
# accounting, not pacing.
CONFIG = "[delivery]\nrate_burst = 10000\nrate_sustained = 10000\n"


def corpus_dir() -> Path:
    """The corpus directory, in the order the module docstring gives; fails when none exists."""
    candidates = [
        *([Path(os.environ["GHL_CORPUS_DIR"])] if os.environ.get("GHL_CORPUS_DIR") else []),
        ROOT.parent / "shared" / "corpus" / "realworld",
        Path("/work/shared/corpus/realworld"),
    ]
    for candidate in candidates:
        if sorted(candidate.glob("*.jsonl")):
            return candidate
    pytest.fail(
        "real-world corpus not found (no *.jsonl in any of: "
        + ", ".join(str(c) for c in candidates)
        + "); set GHL_CORPUS_DIR to the directory holding it"
    )


def user_key(event: object) -> bytes | None:
    """The record key: the event's userId, else anonymousId (a string, or an integer as text);
    None when it has neither."""
    if not isinstance(event, dict):
        return None
    for name in ("userId", "anonymousId"):
        value = event.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str) and value:
            return value.encode()
    return None


def corpus_records(directory: Path) -> Iterator[tuple[bytes | None, bytes]]:
    """Every event of every file (provenance files excepted), in file and line order."""
    for path in sorted(directory.glob("*.jsonl")):
        if path.name.endswith(".provenance.jsonl"):
            continue
        for line in path.read_bytes().splitlines():
            if line.strip():
                yield user_key(orjson.loads(line)), line


@pytest.mark.timeout(240)
async def test_the_real_world_corpus_drained_by_run_leaves_nothing_unaccounted(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    records = list(corpus_records(corpus_dir()))
    topic = new_topic(partitions=PARTITIONS)
    group = f"audit-corpus-{uuid.uuid4().hex[:8]}"
    total = produce(kafka_bootstrap, topic, records)
    ends = end_offsets(kafka_bootstrap, topic, PARTITIONS)
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_TOPICS": topic,
        "KAFKA_GROUP_ID": group,
        "GHL_LOCATION_ID": LOCATION,
    }
    unlimited = RateLimits(enforced=False)
    async with run_sandbox(locations={LOCATION: TOKEN}, limits=unlimited) as sandbox:
        consumer = await start_consumer(
            {**env, "GHL_ACCESS_TOKEN": TOKEN, "GHL_API_BASE_URL": sandbox.url},
            "--config",
            str(config),
        )
        try:
            async with asyncio.timeout(120):
                while committed_offsets(kafka_bootstrap, group, topic, PARTITIONS) != ends:
                    assert consumer.returncode is None, await consumer.stderr.read()  # type: ignore[union-attr]
                    await asyncio.sleep(0.5)
        finally:
            if consumer.returncode is None:
                consumer.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                _, consumer_log = await consumer.communicate()
        assert consumer.returncode == 0, consumer_log.decode()[-4000:]

        code, out, err = await run_command(
            env, "audit", "--config", str(config), "--sandbox", sandbox.url, "--json"
        )
    report = orjson.loads(out) if out else {}
    assert report.get("unaccounted") == [], out[-6000:] + err[-2000:]
    assert code == 0, err
    assert report["records"] == total
    assert report["delivered_events"] > 0
