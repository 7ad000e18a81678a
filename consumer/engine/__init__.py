"""The streaming engine: records in, upserts out, offsets committed only after.

Lives here: the ports (``ports``: every seam the engine talks through, as Protocols), the
engine's lifecycle, intake, commits and rebalance handling (``engine``), dispatch per location
lane with delivery, retry and parking decisions (``dispatch``), pure backpressure
(``backpressure``), the produces of its own records (``outbox``), the delivery records, one
per HighLevel call, batched best effort (``deliveries``), its counters and snapshot
(``stats``), its background tasks (``tasks``), the keyed scheduler (``scheduler``), the offset
tracker and its commit metadata (``offsets``) and the parking state and record format
(``parking``).

May import: ``consumer.core``, ``consumer.errors``, ``consumer.highlevel.verdicts`` (the
meaning of an answer, no HTTP), ``consumer.ratelimit`` (the limiter's permit and errors) and
asyncio. Never: confluent_kafka, aiohttp, redis, prometheus_client, ``consumer.config``, or the
adapters and commands above it. Adapters reach the engine through ``ports`` only.
"""
