"""The pure core: one Kafka record's bytes in, the decisions about it out.

Lives here: the value types (``events``), the integrations as plain values without tokens
(``targets``), decoding and validation (``decode``), which targets an event goes to
(``routing``), reading an event's fields (``extract``), the mapping to HighLevel upserts
(``mapping``), value normalisation (``normalise``), the profile store that carries
identities forward (``profiles``), de-duplication by messageId (``dedupe``) and the
dead-letter record format (``deadletter``).

May import: the standard library, ``orjson``, ``phonenumbers``, ``consumer.errors`` and itself.
Never: an I/O library (asyncio, aiohttp, confluent_kafka, redis, prometheus_client), the
settings (``consumer.config``), or any other package of ``consumer``. Everything here takes
plain values and ``now`` as arguments; nothing reads a clock or a socket. Checked by
import-linter (``[tool.importlinter]`` in ``pyproject.toml``).
"""
