"""The test harness itself: a real broker over TCP, keyed produce, group consume, commit."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

pytestmark = pytest.mark.integration


def test_keyed_records_round_trip_and_committed_offsets_read_back(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    topic = new_topic(partitions=3)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    keys = [f"user-{i % 7}" for i in range(60)]
    for i, key in enumerate(keys):
        producer.produce(topic, key=key, value=f"{key}:{i}".encode())
    assert producer.flush(30) == 0

    group = f"harness-{topic}"
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    seen: dict[str, list[int]] = {}
    last: dict[int, int] = {}
    partition_of_key: dict[str, int] = {}
    try:
        while sum(len(v) for v in seen.values()) < len(keys):
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            key = msg.key().decode()
            seen.setdefault(key, []).append(int(msg.value().decode().split(":")[1]))
            # The same key always lands in the same partition.
            assert partition_of_key.setdefault(key, msg.partition()) == msg.partition()
            last[msg.partition()] = msg.offset()
        consumer.commit(
            offsets=[TopicPartition(topic, p, o + 1) for p, o in last.items()],
            asynchronous=False,
        )
    finally:
        consumer.close()

    # Per key, records arrive in the order produced.
    for key, indexes in seen.items():
        assert indexes == sorted(indexes), key
        assert len(indexes) == keys.count(key)

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    request = [TopicPartition(topic, p) for p in range(3)]
    futures = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group, request)])
    committed = futures[group].result(timeout=30).topic_partitions
    by_partition = {tp.partition: tp.offset for tp in committed}
    assert by_partition == {p: o + 1 for p, o in last.items()} | {
        p: -1001 for p in range(3) if p not in last
    }
    assert sum(o + 1 for o in last.values()) == len(keys)
