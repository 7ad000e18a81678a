"""Route step: which integrations receive an event (by topic and/or an event field)."""

from __future__ import annotations

from collections.abc import Sequence

from consumer.config import Integration, Routing
from consumer.events import Event


def matches(routing: Routing, event: Event, topic: str) -> bool:
    """True when ``routing`` accepts an event read from ``topic``: the topic is listed (or no
    topics are), and the event's value at ``routing.field`` (if set) is one of the values."""
    if routing.topics and topic not in routing.topics:
        return False
    if routing.field is None:
        return True
    value = event.lookup(routing.field)
    return isinstance(value, str) and value in routing.values


class Router:
    """Selects integrations for an event, in configuration order. Pure; cheap when no
    integration restricts routing (the common single-integration case)."""

    def __init__(self, integrations: Sequence[Integration]) -> None:
        self.route_all = tuple(integrations)  # returned as is (same object) when all match
        unrestricted = Routing()
        self._everything = all(i.routing == unrestricted for i in self.route_all)

    def route(self, event: Event, topic: str) -> tuple[Integration, ...]:
        if self._everything:
            return self.route_all
        return tuple(i for i in self.route_all if matches(i.routing, event, topic))
