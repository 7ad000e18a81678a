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
    |                             Retriable after its ``until``; the engine holds or parks the
    |                             location's events meanwhile.
    +-- OAuthError                (consumer.highlevel.oauth) an /oauth/* call failed: ``status``
    |   |                         (None: no answer) and ``retriable`` (a transport failure, 429,
    |   |                         5xx). Never carries a token or the client secret.
    |   +-- InvalidGrant          400 ``invalid_grant``: the code or refresh token is spent,
    |                             superseded or unknown. Not retriable with the same token.
    +-- InstallationBroken        (consumer.state.oauth_tokens) an installation's stored refresh
    |                             token no longer works (or nothing was stored): every replica
    |                             stops refreshing it until ``ghl-consumer oauth reconnect``.
    +-- TokenStoreError           (consumer.state.token_store) the shared token store (Redis) did
                                  not answer. Retriable: no token is guessed meanwhile.

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


class OAuthError(ConsumerError):
    """An ``/oauth/*`` call failed. ``status`` is the HTTP status (None when no answer came);
    ``retriable``: the same call may succeed later (transport failure, 429, 5xx)."""

    def __init__(self, message: str, *, status: int | None, retriable: bool) -> None:
        super().__init__(message)
        self.status = status
        self.retriable = retriable


class InvalidGrant(OAuthError):
    """HighLevel refused the code or refresh token (400 ``invalid_grant``, e.g. ``Invalid grant:
    refresh token is invalid``): it was used, superseded or never issued."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=400, retriable=False)


class InstallationBroken(ConsumerError):
    """The installation ``company_id`` cannot get tokens: its stored refresh token was refused
    after the store was read again (``reason``), or it was never installed. Recovered by
    ``ghl-consumer oauth reconnect`` (or ``oauth exchange``)."""

    def __init__(self, company_id: str, reason: str) -> None:
        super().__init__(f"OAuth installation {company_id} is broken: {reason}")
        self.company_id = company_id
        self.reason = reason


class TokenStoreError(ConsumerError):
    """The shared token store did not answer (Redis unreachable or failing). Retriable."""
