"""The consumer's exceptions, in one tree.

::

    ConsumerError                 base of every exception this package raises on purpose
    +-- ConfigError               bad configuration; start-up stops. Not retriable: fix the config.
    +-- ProfileDecodeError        a stored profile's bytes are not a profile. Not retriable for that
    |                             record; the caller decides (drop the stored profile, log, go on).
    +-- KafkaAdapterError         (consumer.kafka) a Kafka operation failed; ``retriable`` says
    |   |                         whether trying again may help. Raised by KafkaSource.poll_batch
    |   |                         (fatal client errors), ensure_topics, start_up, TopicReader.
    |   +-- CommitFailedError     a synchronous commit failed for some partitions (``failed``):
    |   |                         KafkaSource.commit, TopicReader.commit.
    |   +-- ProduceFailedError    a record was not delivered: KafkaProducer (set on the delivery
    |                             future, or raised by ``send``).
    +-- AuditError                (consumer.commands.audit) a source topic of ``ghl-consumer audit``
    |                             does not exist: the audit cannot run, exit 2.
    +-- SandboxError              (consumer.sandbox.admin) the sandbox's admin API did not answer
    |                             with what was asked (unreachable, not 200, not a contact list).
    +-- DailyBudgetExhausted      (consumer.ratelimit) a location's daily request budget is spent.
                                  Retriable after its ``until``; the engine holds or parks the
                                  location's events meanwhile.

Bad *events* are not exceptions: decoding and mapping return ``Reject`` values (see
``consumer.core.events``), because a poison record is data to dead-letter, not a crash.
"""

from __future__ import annotations

from collections.abc import Sequence


class ConsumerError(Exception):
    """Base class of the consumer's own exceptions."""


class ConfigError(ConsumerError):
    """The configuration is invalid. The message names the field, e.g.
    ``integrations[1].location_id: required``, and never contains a secret's value."""


class ProfileDecodeError(ConsumerError, ValueError):
    """``Profile.from_bytes`` was given bytes that are not an encoded profile."""


class KafkaAdapterError(ConsumerError):
    """A Kafka operation failed. ``retriable``: trying again later may succeed."""

    def __init__(self, message: str, *, retriable: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable


class CommitFailedError(KafkaAdapterError):
    """A synchronous commit failed; ``failed`` pairs each ``(topic, partition)`` with
    librdkafka's reason. Offsets are not marked committed: the next commit point includes them
    again."""

    def __init__(self, failed: Sequence[tuple[tuple[str, int], str]], *, retriable: bool) -> None:
        names = ", ".join(f"{topic}[{partition}]: {why}" for (topic, partition), why in failed)
        super().__init__(f"commit failed for {names}", retriable=retriable)
        self.failed = tuple(failed)


class ProduceFailedError(KafkaAdapterError):
    """A record was not delivered (after librdkafka's own retries, or the producer closed)."""


class AuditError(ConsumerError):
    """``ghl-consumer audit`` cannot run: a source topic does not exist. Raised by
    ``consumer.commands.audit``; the command exits 2."""


class SandboxError(ConsumerError):
    """The sandbox's admin API did not answer as asked; the message names the sandbox's URL.
    Raised by ``consumer.sandbox.admin``; ``ghl-consumer audit`` exits 2."""


class DailyBudgetExhausted(ConsumerError):
    """A location's daily budget is spent. Retriable after ``until`` (event-loop time):
    the delivery layer parks the location's events instead of waiting on the loop."""

    def __init__(self, location_id: str, until: float) -> None:
        super().__init__(f"daily budget exhausted for location {location_id} until {until:.0f}")
        self.location_id = location_id
        self.until = until
