"""The router's index gives exactly what checking every target's routing would."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.core.decode import decode
from consumer.core.events import Event
from consumer.core.routing import Router
from consumer.core.targets import Routing, Target

TOPICS = ("events", "events-eu", "other")
FIELDS = (("context", "site"), ("properties", "brand"))
VALUES = ("a", "b", "c")


def naive(targets: list[Target], event: Event, topic: str) -> tuple[Target, ...]:
    """Each target's rule checked one by one: the reference."""

    def accepts(routing: Routing) -> bool:
        if routing.topics and topic not in routing.topics:
            return False
        if routing.field is None:
            return True
        value = event.lookup(routing.field)
        return isinstance(value, str) and value in routing.values

    return tuple(t for t in targets if accepts(t.routing))


routings = st.builds(
    lambda topics, field, values: Routing(
        topics=frozenset(topics),
        field=field,
        values=frozenset(values) if field is not None else frozenset(),
    ),
    st.sets(st.sampled_from(TOPICS), max_size=2),
    st.one_of(st.none(), st.sampled_from(FIELDS)),
    st.sets(st.sampled_from(VALUES), min_size=1, max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(routings, min_size=1, max_size=8),
    st.sampled_from(TOPICS),
    st.sampled_from((*VALUES, "z")),
    st.sampled_from((*VALUES, "z")),
)
def test_indexed_routing_equals_checking_every_target(
    rules: list[Routing], topic: str, site: str, brand: str
) -> None:
    targets = [
        Target(id=f"i{n}", location_id=f"loc{n}", routing=rule) for n, rule in enumerate(rules)
    ]
    event = decode(
        b'{"type": "identify", "userId": "u", "context": {"site": "%s"},'
        b' "properties": {"brand": "%s"}}' % (site.encode(), brand.encode())
    )
    assert isinstance(event, Event)
    assert Router(targets).route(event, topic) == naive(targets, event, topic)
