"""The consumer's exceptions, in one tree.

::

    ConsumerError                 base of every exception this package raises on purpose
    +-- ConfigError               bad configuration; start-up stops. Not retriable: fix the config.
    +-- ProfileDecodeError        a stored profile's bytes are not a profile. Not retriable for that
    |                             record; the caller decides (drop the stored profile, log, go on).
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


class DailyBudgetExhausted(ConsumerError):
    """A location's daily budget is spent. Retriable after ``until`` (event-loop time):
    the delivery layer parks the location's events instead of waiting on the loop."""

    def __init__(self, location_id: str, until: float) -> None:
        super().__init__(f"daily budget exhausted for location {location_id} until {until:.0f}")
        self.location_id = location_id
        self.until = until
