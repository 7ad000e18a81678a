"""The producers' default partitioners, reproduced for ``trace``."""

from __future__ import annotations

import zlib

import pytest

from consumer.commands.run import source_partitions_of
from consumer.kafka.partitioner import murmur2, partition_for


@pytest.mark.parametrize(
    ("key", "signed"),
    [  # org.apache.kafka.common.utils.UtilsTest.testMurmur2
        (b"21", -973932308),
        (b"foobar", -790332482),
        (b"a-little-bit-long-string", -985981536),
        (b"a-little-bit-longer-string", -1486304829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        (b"abc", 479470107),
    ],
)
def test_murmur2_matches_the_java_clients_hash(key: bytes, signed: int) -> None:
    assert murmur2(key) == signed & 0xFFFFFFFF


def test_partitions_stay_within_the_count_and_the_two_partitioners_differ() -> None:
    keys = [f"user-{n}".encode() for n in range(200)]
    for partitioner in ("crc32", "murmur2"):
        assert {partition_for(k, 12, partitioner) for k in keys} == set(range(12))
    differ = [k for k in keys if partition_for(k, 12, "crc32") != partition_for(k, 12, "murmur2")]
    assert len(differ) > 100


def test_crc32_is_the_ieee_crc_librdkafka_uses() -> None:
    # rd_crc32's check value; the partition a real librdkafka producer picks is checked in
    # tests/integration/test_trace.py
    assert partition_for(b"123456789", 0xFFFFFFFF, "crc32") == 0xCBF43926 % 0xFFFFFFFF


def test_trace_reads_the_partitions_of_each_key_and_none_of_a_missing_topic() -> None:
    from consumer.commands.trace import partitions_of

    counts = {"events": 12, "missing": 0}
    one = partitions_of(["lead-987"], counts, ("crc32",))
    assert one == {("events", partition_for(b"lead-987", 12, "crc32"))}
    both = partitions_of(["lead-987"], counts, ("crc32", "murmur2"))
    assert one <= both
    assert len(both) <= 2
    assert partitions_of(["lead-987"], counts, None) == {("events", p) for p in range(12)}


def test_a_stitch_request_goes_to_every_partition_either_default_partitioner_gives() -> None:
    """``run`` does not know the input producers' partitioner: a profile to stitch is asked
    for in the partitions of both defaults (one when they agree)."""
    for key in ("anon-1", "u1", "a-much-longer-anonymous-id-0123456789"):
        expected = {zlib.crc32(key.encode()) % 6, (murmur2(key.encode()) & 0x7FFFFFFF) % 6}
        assert source_partitions_of(key, topic="events", partitions=6) == expected
