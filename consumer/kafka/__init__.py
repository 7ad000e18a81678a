"""The Kafka adapter: the only package that imports ``confluent_kafka``.

Map (each module's docstring states its contracts and threading model)::

    clients.py   what every client shares: librdkafka settings, its throttled log, Partition,
                 records, librdkafka errors -> consumer.errors, reading a group's commits
    source.py    KafkaSource: the consumer-group member the engine reads (AIOConsumer; rebalance
                 callbacks on the event loop)
    producer.py  KafkaProducer: the consumer's own topics (Producer + a delivery thread)
    admin.py     start_up (wait for the brokers, then ensure_topics or check_topics), TopicSpec,
                 TopicUse: the consumer's topics and their ACLs at start-up (AdminClient)
    reader.py    TopicReader, PartitionRange: the one-pass reader of the operator commands
                 (a plain Consumer run through asyncio.to_thread)
    parking.py   KafkaParkingLog: consumer.engine.ports.ParkingLog on Kafka
    partitioner.py  crc32 / murmur2: the partition a producer gave a key (for trace)

Errors raised here are ``consumer.errors``' ``KafkaAdapterError`` tree (and ``ConfigError``).

May import: ``consumer.core``, ``consumer.engine`` (its ports and offset types),
``consumer.errors`` and confluent_kafka. Never: the commands, observe or HighLevel.
"""
