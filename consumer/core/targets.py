"""Where an event may go and how it maps there, as plain values: no tokens, no settings.

A ``Target`` is one HighLevel location (sub-account) as the core sees it: what routing and
mapping read of an integration, and nothing else. The settings (``config.py``) build them
from the configured integrations (``Integration.target``, ``Settings.targets()``); the
access token stays in the configuration and never reaches the core.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from consumer.core.events import ConsentMode, PresetEvent, TagMode


@dataclass(frozen=True, slots=True)
class Routing:
    """Which events a target receives. ``topics`` empty = every topic; ``field`` (a path into
    the event) set = only events whose value there is a string in ``values``. Both set = both
    must match."""

    topics: frozenset[str] = frozenset()
    field: tuple[str, ...] | None = None
    values: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class CustomFieldMapping:
    """``customFields`` entry: HighLevel field id <- value at ``source`` (a path in the event)."""

    field_id: str
    source: tuple[str, ...]

    @property
    def source_text(self) -> str:
        return ".".join(self.source)


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """One integration as routing and mapping read it: its id (the outcomes' ``integration_id``),
    the location the upserts go to (or the event path naming it), and the mapping choices.
    Defaults are the Default preset's.

    ``static_tags`` go on every upsert (with the event's own); ``static_source`` is every
    upsert's ``source``, ``default_source`` the one used when the event names none."""

    id: str
    location_id: str
    consent_category: str = "marketing"
    consent_mode: ConsentMode = ConsentMode.BOTH
    static_tags: tuple[str, ...] = ()
    static_source: str | None = None
    default_source: str | None = None
    default_phone_region: str | None = None
    tag_mode: TagMode = TagMode.UPSERT
    removed_fields: frozenset[str] = frozenset()
    custom_fields: tuple[CustomFieldMapping, ...] = ()
    aliases: Mapping[str, PresetEvent] = field(default_factory=lambda: MappingProxyType({}))
    routing: Routing = Routing()
    location_path: tuple[str, ...] | None = None
    """Set: each event names its location at this path (an OAuth integration reaching every
    location of an installation); ``location_id`` is then empty."""
