"""Which partition a keyed record went to, as the producers' default partitioners decide it:
what lets ``ghl-consumer trace`` read one partition of a topic instead of all of it.

``crc32``: librdkafka's default (``consistent_random``; also confluent-kafka-python, the Go
and .NET clients, and this consumer's own producer): CRC-32 of the key modulo the partition
count. ``murmur2``: the Java client's default (also librdkafka's ``murmur2_random``): the
positive murmur2 hash of the key modulo the partition count. A record without a key (or with an
empty one) goes to a random partition under both: it can only be found by reading them all.
Pure functions, no Kafka client.
"""

from __future__ import annotations

import zlib
from typing import Final, Literal

Partitioner = Literal["crc32", "murmur2"]
PARTITIONERS: Final[tuple[Partitioner, ...]] = ("crc32", "murmur2")

_M: Final = 0x5BD1E995
_MASK: Final = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash of ``data`` (``org.apache.kafka.common.utils.Utils.murmur2``), as an
    unsigned 32-bit value."""
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length % 4
    if rest == 3:
        h ^= data[whole + 2] << 16
    if rest >= 2:
        h ^= data[whole + 1] << 8
    if rest >= 1:
        h ^= data[whole]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def partition_for(key: bytes, partitions: int, partitioner: Partitioner) -> int:
    """The partition ``partitioner`` gives a record keyed ``key`` (non-empty) among
    ``partitions``."""
    if partitioner == "crc32":
        return zlib.crc32(key) % partitions
    return (murmur2(key) & 0x7FFFFFFF) % partitions
