"""The Kafka adapter: the only package that imports ``confluent_kafka``.

Lives here: the consumer-group source the engine reads (``source``), the producer of the
consumer's own topics (``producer``), topic creation (``admin``), the one-pass reader of the
operator commands (``reader``), client settings and librdkafka log handling (``clients``), and
the translation of librdkafka errors into ``consumer.errors`` (``errors``).

May import: ``consumer.core``, ``consumer.engine`` (its ports and offset types),
``consumer.errors`` and confluent_kafka. Never: the commands, observe or HighLevel.
"""
