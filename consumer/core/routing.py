"""Route step: which targets receive an event (by topic and/or an event field)."""

from __future__ import annotations

from collections.abc import Sequence

from consumer.core.events import Event
from consumer.core.targets import Routing, Target


class Router:
    """Selects targets for an event, in configuration order. Pure.

    Cheap at any scale: targets routed by an event field are indexed by (field, value), so
    routing costs one lookup per distinct field path, not one check per target (1,000
    locations routed by ``context.site`` cost one lookup). With no restriction at all (the
    common single-integration case) ``route`` returns ``route_all`` itself."""

    def __init__(self, targets: Sequence[Target]) -> None:
        self.route_all = tuple(targets)  # returned as is (same object) when all match
        unrestricted = Routing()
        self._everything = all(t.routing == unrestricted for t in self.route_all)
        self._unconditional: list[int] = []  # no field: only the topic decides
        self._by_field: dict[tuple[str, ...], dict[str, list[int]]] = {}
        for index, target in enumerate(self.route_all):
            routing = target.routing
            if routing.field is None:
                self._unconditional.append(index)
                continue
            by_value = self._by_field.setdefault(routing.field, {})
            for value in routing.values:
                by_value.setdefault(value, []).append(index)

    def route(self, event: Event, topic: str) -> tuple[Target, ...]:
        if self._everything:
            return self.route_all
        chosen = list(self._unconditional)
        for path, by_value in self._by_field.items():
            value = event.lookup(path)
            if isinstance(value, str):
                chosen.extend(by_value.get(value, ()))
        targets = self.route_all
        return tuple(
            targets[i]
            for i in sorted(chosen)
            if not targets[i].routing.topics or topic in targets[i].routing.topics
        )
