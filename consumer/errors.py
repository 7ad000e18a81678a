"""The consumer's exceptions, in one tree.

::

    ConsumerError                 base of every exception this package raises on purpose
    +-- ConfigError               bad configuration; start-up stops. Not retriable: fix the config.
    +-- ProfileDecodeError        a stored profile's bytes are not a profile. Not retriable for that
    |                             record; the caller decides (drop the stored profile, log, go on).
    +-- AuditError                (consumer.commands.audit) a source topic of ``ghl-consumer audit``
    |                             does not exist: the audit cannot run, exit 2.
    +-- SandboxError              (consumer.sandbox.admin) the sandbox's admin API did not answer
    |                             with what was asked (unreachable, not 200, not a contact list).
    +-- DailyBudgetExhausted      (consumer.ratelimit.limiter) a location's daily request budget
                                  is spent.
                                  Retriable after its ``until``; the engine holds or parks the
                                  location's events meanwhile.

Bad *events* are not exceptions: decoding and mapping return ``Reject`` values (see
``consumer.core.events``), because a poison record is data to dead-letter, not a crash.
"""

from __future__ import annotations


class ConsumerError(Exception):
    """Base class of the consumer's own exceptions."""


class ConfigError(ConsumerError):
    """The configuration is invalid. The message names the field, e.g.
    ``integrations[1].location_id: required``, and never contains a secret's value."""


class ProfileDecodeError(ConsumerError, ValueError):
    """``Profile.from_bytes`` was given bytes that are not an encoded profile."""


class AuditError(ConsumerError):
    """``ghl-consumer audit`` cannot run: a source topic does not exist. Raised by
    ``consumer.commands.audit``; the command exits 2."""


class SandboxError(ConsumerError):
    """The sandbox's admin API did not answer as asked; the message names the sandbox's URL.
    Raised by ``consumer.sandbox.admin``; ``ghl-consumer audit`` exits 2."""
