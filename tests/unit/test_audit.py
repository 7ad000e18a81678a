"""The audit's accounting: folding records into expected contacts, finding them in the dead-letter
and parking topics, and comparing with HighLevel's contacts (rendered by the sandbox's state)."""

from __future__ import annotations

import io
import itertools
from typing import Any

import orjson

from consumer.commands.audit_ledger import (
    ALLOWED_RULES,
    MISMATCH,
    MISSING,
    NOT_DEAD_LETTERED,
    Calls,
    Comparison,
    Expected,
    ExpectedContacts,
    Ledger,
    Report,
    SourceIndex,
    compare,
    contact_mismatches,
)
from consumer.config import load_settings
from consumer.core.deadletter import REJECTED_BY_HIGHLEVEL, Failure, dead_letter_headers
from consumer.core.dedupe import MessageDeduper
from consumer.core.events import ContactUpsert, Drop, Record, TagMode
from consumer.core.mapping import Mapper, build_mapper
from consumer.core.profiles import InMemoryProfileStore
from consumer.core.targets import CustomFieldMapping, Routing, Target
from consumer.engine.deliveries import DeliveryRecord, contact_digest
from consumer.engine.parking import ParkReason, encode_parked
from consumer.sandbox.schema import validate_upsert
from consumer.sandbox.settings import DuplicateSettings
from consumer.sandbox.state import SandboxState

LOCATION = "ve9EPM428h8vShlRW1KT"
OTHER_LOCATION = "otherLocation000000X"


def target(id: str = "default", **overrides: Any) -> Target:
    values: dict[str, Any] = {"location_id": LOCATION}
    values.update(overrides)
    return Target(id=id, **values)


def mapper(*targets: Target) -> Mapper:
    return Mapper(
        targets or (target(),),
        profiles=InMemoryProfileStore(),
        deduper=MessageDeduper(max_entries=1000, ttl_seconds=3600),
    )


def identify(user: int, version: int, **traits: Any) -> dict[str, Any]:
    return {
        "type": "identify",
        "userId": f"user-{user}",
        "messageId": f"m-{user}-{version}",
        "traits": {
            "email": f"User{user}@Example.com",
            "phone": f"+1 415 555 {user:04d}",
            "first_name": f"v{version}",
            **traits,
        },
        "context": {"consent": {"marketing": "granted"}},
    }


def lead(user: int, version: int, tag: str) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Lead Generated",
        "userId": f"user-{user}",
        "messageId": f"lead-{user}-{version}",
        "properties": {"source": "Pricing Page Form", "lead_tag": tag, "plan": "pro"},
    }


class Stream:
    """Records of one partition of topic ``events``, offsets from 0, keyed by userId (else
    anonymousId)."""

    def __init__(self, partition: int = 0) -> None:
        self.partition = partition
        self.records: list[Record] = []

    def add(self, value: dict[str, Any] | bytes, key: bytes | None = None) -> Record:
        raw = value if isinstance(value, bytes) else orjson.dumps(value)
        if key is None and isinstance(value, dict):
            key = str(value.get("userId") or value.get("anonymousId")).encode()
        record = Record(
            "events", self.partition, len(self.records), key, raw, (), 1_700_000_000_000
        )
        self.records.append(record)
        return record


def dead_letters(*entries: tuple[Record, Failure]) -> SourceIndex:
    index = SourceIndex()
    index.add(
        Record("dlq", 0, n, r.key, r.value, tuple(dead_letter_headers(r, f, now=0.0)))
        for n, (r, f) in enumerate(entries)
    )
    return index


def ledger_of(
    stream: Stream,
    the_mapper: Mapper | None = None,
    *,
    dlq: SourceIndex | None = None,
    parked: SourceIndex | None = None,
) -> Ledger:
    expected = ExpectedContacts(
        the_mapper or mapper(),
        dead_letters=dlq or SourceIndex(),
        parked=parked or SourceIndex(),
    )
    expected.add(stream.records)
    return expected.ledger()


def upserts_of(stream: Stream, the_mapper: Mapper) -> list[ContactUpsert]:
    """The upserts the consumer sends for ``stream`` when nothing coalesces."""
    return [
        outcome
        for r in stream.records
        for outcome in the_mapper.map_record(value=r.value or b"", key=r.key, topic=r.topic, now=0)
        if isinstance(outcome, ContactUpsert)
    ]


def delivered(
    *upserts: ContactUpsert, duplicates: DuplicateSettings | None = None
) -> dict[str, list[dict[str, Any]]]:
    """The contacts a sandbox holds after receiving ``upserts`` (tags added in tag mode add),
    its locations matching by ``duplicates``."""
    state = SandboxState({LOCATION: "t1", OTHER_LOCATION: "t2"}, duplicates=duplicates)
    for upsert in upserts:
        location = state.locations[upsert.location_id]
        result = state.upsert(location, validate_upsert(upsert.payload()), now=0.0)
        if upsert.tags_to_add():
            state.add_tags(result.contact, upsert.tags_to_add(), now=0.0)
    return {
        location_id: [c.to_json() for c in location.contacts.values()]
        for location_id, location in state.locations.items()
    }


# -- folding --------------------------------------------------------------------------------------


def test_upserts_fold_in_offset_order_per_contact_key() -> None:
    stream = Stream()
    for version in range(3):
        stream.add(identify(1, version))
        stream.add(identify(2, version))
    ledger = ledger_of(stream)
    assert ledger.records == 6
    assert ledger.identity_events == 6
    assert set(ledger.contacts) == {("default", "user-1"), ("default", "user-2")}
    want = ledger.contacts[("default", "user-1")]
    assert want.events == 3
    assert want.last == "events/0/4"
    assert want.upsert.fields["firstName"] == "v2"
    assert want.upsert.fields["email"] == "user1@example.com"
    assert want.upsert.fields["dnd"] is False


def test_later_events_use_the_profile_and_tags_accumulate() -> None:
    stream = Stream()
    stream.add(identify(1, 0))
    stream.add(lead(1, 0, "website-lead"))
    stream.add(lead(1, 1, "pricing"))
    want = ledger_of(stream).contacts[("default", "user-1")]
    assert want.upsert.fields["source"] == "Pricing Page Form"
    assert want.upsert.tags == ("website-lead", "pricing")
    assert want.events == 3


def test_drops_count_by_reason_and_duplicates_are_accounted_as_duplicate() -> None:
    stream = Stream()
    stream.add(identify(1, 0))
    stream.add(identify(1, 0))  # same messageId
    stream.add({"type": "page", "userId": "user-1", "name": "Home"})
    ledger = ledger_of(stream)
    assert ledger.dropped == {"duplicate": 1, "not_mapped": 1}
    assert ledger.identity_events == 1
    assert ledger.contacts[("default", "user-1")].events == 1
    assert ledger.unaccounted == ()


def test_a_replayed_dead_letter_is_expected_in_highlevel_not_counted_as_a_duplicate() -> None:
    """The replay of a dead letter (same messageId, ``ghl.replayed_from``) must reach
    HighLevel: the audit expects it, it does not account for it as a duplicate."""
    stream = Stream()
    rejected = stream.add(identify(1, 0, first_name="Bad"))
    dlq = dead_letters((rejected, Failure(reason="rejected_by_highlevel", error="422")))
    copy = Record(
        "events", 0, 1, rejected.key, rejected.value, (("ghl.replayed_from", b"dlq/0/0"),)
    )
    stream.records.append(copy)
    ledger = ledger_of(stream, dlq=dlq)
    assert ledger.dropped == {}
    assert ledger.dead_lettered == 1
    assert ledger.contacts[("default", "user-1")].last == "events/0/1"


def test_a_copy_in_the_replay_topic_folds_as_a_record_of_its_original_topic() -> None:
    """``dlq replay`` writes copies to the replay topic: the audit reads them after the source
    records, each as a record of the topic its ``ghl.original_topic`` names (an integration
    restricted to ``events`` expects it), never as a duplicate of its original."""
    stream = Stream()
    stream.add(identify(1, 0))
    rejected = stream.add(identify(1, 1, first_name="Fixed"))
    dlq = dead_letters((rejected, Failure(reason="rejected_by_highlevel", error="422")))
    copy = Record(
        "grp.replay",
        0,
        0,
        rejected.key,
        rejected.value,
        (("ghl.replayed_from", b"dlq/0/0"), ("ghl.original_topic", b"events")),
    )
    expected = ExpectedContacts(
        mapper(target(routing=Routing(topics=frozenset({"events"})))),
        dead_letters=dlq,
        parked=SourceIndex(),
        source_topics=("events",),
    )
    expected.add(stream.records)
    expected.add_replays([copy])
    ledger = expected.ledger()
    assert (ledger.records, ledger.replays, ledger.dead_lettered) == (2, 1, 1)
    assert ledger.dropped == {}
    want = ledger.contacts[("default", "user-1")]
    assert (want.last, want.events) == ("grp.replay/0/0", 2)
    assert want.upsert.fields["firstName"] == "Fixed"
    assert ledger.unaccounted == ()


def test_a_replay_copy_naming_no_source_topic_must_be_dead_lettered() -> None:
    """The consumer dead-letters (``invalid_replay``) a copy whose ``ghl.original_topic`` is
    absent or not configured: the audit accounts for it only when it is there."""
    forged = [
        Record("grp.replay", 0, offset, b"user-1", orjson.dumps(identify(1, 0)), headers)
        for offset, headers in enumerate([(("ghl.original_topic", b"payments"),), ()])
    ]
    dlq = dead_letters((forged[0], Failure(reason="invalid_replay", error="not configured")))
    expected = ExpectedContacts(
        mapper(), dead_letters=dlq, parked=SourceIndex(), source_topics=("events",)
    )
    expected.add_replays(forged)
    ledger = expected.ledger()
    assert (ledger.replays, ledger.dead_lettered, ledger.contacts) == (2, 1, {})
    [missing] = ledger.unaccounted
    assert (missing.subject, missing.problem) == (
        "grp.replay/0/1",
        f"{NOT_DEAD_LETTERED} (invalid_replay)",
    )


def test_rejects_are_accounted_only_when_dead_lettered() -> None:
    stream = Stream()
    poison = stream.add(b"{broken json", key=b"user-1")
    stream.add({"type": "identify", "userId": "user-2", "traits": {"first_name": "No Email"}})
    dlq = dead_letters((poison, Failure(reason="invalid_json", error="not JSON")))
    ledger = ledger_of(stream, dlq=dlq)
    assert ledger.dead_lettered == 1
    [missing] = ledger.unaccounted
    assert missing.subject == "events/0/1"
    assert missing.problem == f"{NOT_DEAD_LETTERED} (no_identifier)"


def test_upserts_dead_lettered_or_parked_are_not_expected_in_highlevel() -> None:
    stream = Stream()
    stream.add(identify(1, 0))
    rejected = stream.add(identify(1, 1, first_name="Bad"))
    parked_record = stream.add(identify(2, 0))
    dlq = dead_letters(
        (rejected, Failure(reason=REJECTED_BY_HIGHLEVEL, error="422", integration_id="default"))
    )
    parked = dead_letters(
        (parked_record, Failure(reason="unauthorized", error="401", integration_id="default"))
    )
    ledger = ledger_of(stream, dlq=dlq, parked=parked)
    assert (ledger.dead_lettered, ledger.parked) == (1, 1)
    assert set(ledger.contacts) == {("default", "user-1")}
    assert ledger.contacts[("default", "user-1")].upsert.fields["firstName"] == "v0"


def test_a_contact_may_hold_what_a_parked_upsert_of_its_key_sent() -> None:
    """A member delivers v1 and dies before committing it; the member that reads it again
    parks it (the installation broke meanwhile): HighLevel holds v1, the audit expects v0
    and allows v1 as ``parked``. A value no upsert of the key sent is still a mismatch."""
    stream = Stream()
    stream.add(identify(1, 0))
    parked_record = stream.add(identify(1, 1, city="Lyon"))
    parked = dead_letters(
        (parked_record, Failure(reason="installation_broken", error="", integration_id="default"))
    )
    ledger = ledger_of(stream, parked=parked)
    want = ledger.contacts[("default", "user-1")]
    assert (want.upsert.fields["firstName"], len(want.parked)) == ("v0", 1)
    contacts = delivered(*upserts_of(stream, mapper()))
    result = compare(ledger.contacts, contacts)
    assert result.unaccounted == ()
    assert result.allowed["parked"] == 1  # firstName; city is not expected, so not compared
    assert compare(ledger.contacts, delivered(want.upsert)).allowed["parked"] == 0

    contacts[LOCATION][0]["firstName"] = "v7"
    [wrong] = compare(ledger.contacts, contacts).unaccounted
    assert wrong.fields == ("firstName",)


def test_a_dead_letter_for_one_integration_does_not_account_for_another() -> None:
    stream = Stream()
    record = stream.add(identify(1, 0))
    two = mapper(target("a"), target("b", location_id=OTHER_LOCATION))
    dlq = dead_letters(
        (record, Failure(reason=REJECTED_BY_HIGHLEVEL, error="422", integration_id="a"))
    )
    ledger = ledger_of(stream, two, dlq=dlq)
    assert ledger.dead_lettered == 1
    assert set(ledger.contacts) == {("b", "user-1")}


def test_source_index_ignores_records_without_source_headers() -> None:
    index = SourceIndex()
    index.add([Record("parking", 0, 0, None, b"x", (("ghl.reason", b"held"),))])
    assert (index.records, index.unmatched) == (1, 1)
    assert not index.holds(("events", 0, 0), None)


def test_a_parking_record_accounts_for_every_source_record_folded_into_it() -> None:
    upsert = ContactUpsert(
        integration_id="default", location_id="L", contact_key="u1", fields={"email": "a@b.co"}
    )
    sources = [Record("events", 0, 3, b"u1", b"{}"), Record("events", 0, 7, b"u1", b"{}")]
    key, value, headers = encode_parked(upsert, sources, ParkReason.UNAUTHORIZED)
    index = SourceIndex()
    index.add([Record("parking", 0, 0, key, value, tuple(headers))])
    assert index.holds(("events", 0, 3), "default")
    assert index.holds(("events", 0, 7), "default")
    assert not index.holds(("events", 0, 7), "other")
    assert not index.holds(("events", 0, 5), None)


# -- comparison ---------------------------------------------------------------------------------


def expected_after(*events: dict[str, Any], the_mapper: Mapper | None = None) -> Ledger:
    stream = Stream()
    for event in events:
        stream.add(event)
    return ledger_of(stream, the_mapper)


def test_what_the_consumer_would_deliver_matches() -> None:
    ledger = expected_after(identify(1, 0), identify(1, 1), lead(1, 0, "website-lead"))
    # The sandbox received each upsert as the engine sends them (here, uncoalesced).
    stream = Stream()
    for event in (identify(1, 0), identify(1, 1), lead(1, 0, "website-lead")):
        stream.add(event)
    result = compare(ledger.contacts, delivered(*upserts_of(stream, mapper())))
    allowed_nothing = dict.fromkeys(ALLOWED_RULES, 0)
    assert result == Comparison(1, 3, (), contacts=1, allowed=allowed_nothing)


def test_an_integration_whose_events_choose_the_location_is_audited_per_location() -> None:
    """OAuth: ``location_path`` names the location in each event; one user key's events in
    two locations are two contacts, each compared with its own location's."""
    oauth = target("agency", location_id="", location_path=("context", "groupId"))
    events = [
        {**identify(1, version), "context": {"groupId": location}}
        for version, location in ((0, LOCATION), (1, OTHER_LOCATION), (2, LOCATION))
    ]
    stream = Stream()
    for event in events:
        stream.add(event)
    expected = ExpectedContacts(
        mapper(oauth),
        dead_letters=SourceIndex(),
        parked=SourceIndex(),
        located_by_event=["agency"],
    )
    expected.add(stream.records)
    ledger = expected.ledger()
    assert ledger.locations() == {LOCATION, OTHER_LOCATION}
    here = ledger.contacts[(f"agency/{LOCATION}", "user-1")]
    there = ledger.contacts[(f"agency/{OTHER_LOCATION}", "user-1")]
    assert (here.events, here.upsert.fields["firstName"]) == (2, "v2")
    assert (there.events, there.upsert.fields["firstName"]) == (1, "v1")

    contacts = delivered(*upserts_of(stream, mapper(oauth)))
    result = compare(ledger.contacts, contacts)
    assert (result.contacts, result.matching, result.delivered_events) == (2, 2, 3)
    assert result.unaccounted == ()

    # The other location's contact lost: only that location's key is unaccounted.
    result = compare(ledger.contacts, {LOCATION: contacts[LOCATION]})
    [missing] = result.unaccounted
    assert (missing.subject, missing.problem) == (f"agency/{OTHER_LOCATION}/user-1", MISSING)
    # A contact of the right person in the wrong location does not count.
    swapped = {LOCATION: contacts[OTHER_LOCATION], OTHER_LOCATION: contacts[LOCATION]}
    assert {u.problem for u in compare(ledger.contacts, swapped).unaccounted} == {MISMATCH}


def test_a_missing_contact_is_unaccounted_with_its_events() -> None:
    ledger = expected_after(identify(1, 0), identify(1, 1), identify(2, 0))
    only_user_2 = delivered(ledger.contacts[("default", "user-2")].upsert)
    result = compare(ledger.contacts, only_user_2)
    assert result.matching == 1
    [missing] = result.unaccounted
    assert (missing.subject, missing.problem, missing.events) == ("default/user-1", MISSING, 2)


def test_a_wrong_field_is_a_mismatch_naming_the_field() -> None:
    ledger = expected_after(identify(1, 0), identify(1, 1))
    contacts = delivered(ledger.contacts[("default", "user-1")].upsert)
    contacts[LOCATION][0]["firstName"] = "v0"
    [wrong] = compare(ledger.contacts, contacts).unaccounted
    assert (wrong.subject, wrong.problem) == ("default/user-1", MISMATCH)
    assert wrong.fields == ("firstName",)


def test_field_rules() -> None:
    upsert = ContactUpsert(
        integration_id="default",
        location_id=LOCATION,
        contact_key="u",
        fields={"email": "sam@example.com", "phone": "+14155550142", "dnd": False},
        tags=("a", "b"),
        custom_fields={"plan-id": "pro", "ints": ("x", "y")},
    )
    contact = {
        "email": "Sam@Example.com",  # case does not matter
        "phone": "+14155550142",
        "dnd": False,
        "tags": ["b", "c", "a"],  # expected tags must be a subset
        "customFields": [{"id": "ints", "value": ["x", "y"]}, {"id": "plan-id", "value": "pro"}],
    }
    assert contact_mismatches(upsert, contact) == ()
    assert contact_mismatches(upsert, {**contact, "dnd": True}) == ("dnd",)
    assert contact_mismatches(upsert, {**contact, "phone": "+14155550143"}) == ("phone",)
    assert contact_mismatches(upsert, {**contact, "tags": ["a"]}) == ("tags",)
    # HighLevel stores tags trimmed and lowercased; converts custom values by field type
    mixed = ContactUpsert(
        integration_id="default",
        location_id=LOCATION,
        contact_key="u",
        fields={"email": "sam@example.com"},
        tags=(" VIP ", "Website-Lead"),
        custom_fields={"seats": "12", "colours": "red"},
    )
    stored = {
        "email": "sam@example.com",
        "tags": ["vip", "website-lead"],
        "customFields": [{"id": "seats", "value": 12}, {"id": "colours", "value": ["red"]}],
    }
    assert contact_mismatches(mixed, stored) == ()
    assert contact_mismatches(mixed, {**stored, "tags": ["vip"]}) == ("tags",)
    # HighLevel keeps a permanent DND whatever the event says: dnd is not a mismatch then
    permanent = {**contact, "dnd": True, "dndSettings": {"SMS": {"status": "permanent"}}}
    assert contact_mismatches(upsert, permanent) == ()
    inactive = {**permanent, "dndSettings": {"SMS": {"status": "inactive"}}}
    assert contact_mismatches(upsert, inactive) == ("dnd",)
    assert contact_mismatches(upsert, {**contact, "customFields": []}) == (
        "customFields.plan-id",
        "customFields.ints",
    )
    assert contact_mismatches(upsert, {}) == (
        "email",
        "phone",
        "dnd",
        "tags",
        "customFields.plan-id",
        "customFields.ints",
    )


def test_contacts_are_found_by_email_else_phone_in_the_integrations_location() -> None:
    by_phone = ContactUpsert(
        integration_id="default",
        location_id=LOCATION,
        contact_key="u",
        fields={"phone": "+14155550142", "firstName": "Sam"},
    )
    contacts = {LOCATION: [{"phone": "+14155550142", "firstName": "Sam", "email": "x@y.io"}]}
    expected = {("default", "u"): Expected(by_phone, 1, "events/0/0")}
    assert compare(expected, contacts).matching == 1
    assert compare(expected, {OTHER_LOCATION: contacts[LOCATION]}).unaccounted[0].problem == MISSING
    assert compare(expected, {}).unaccounted[0].problem == MISSING


def test_tag_overwrite_in_upsert_mode_shows_as_a_tags_mismatch() -> None:
    # HighLevel's pitfall: each upsert replaces the tags, so an earlier event's tag is lost.
    ledger = expected_after(identify(1, 0), lead(1, 0, "website-lead"), lead(1, 1, "pricing"))
    stream = Stream()
    for event in (identify(1, 0), lead(1, 0, "website-lead"), lead(1, 1, "pricing")):
        stream.add(event)
    separately = upserts_of(stream, mapper())
    [wrong] = compare(ledger.contacts, delivered(*separately)).unaccounted
    assert wrong.fields == ("tags",)

    # In tag mode add, the same deliveries keep every tag.
    add_mode = mapper(target(tag_mode=TagMode.ADD))
    ledger = expected_after(
        identify(1, 0), lead(1, 0, "website-lead"), lead(1, 1, "pricing"), the_mapper=add_mode
    )
    separately = upserts_of(stream, mapper(target(tag_mode=TagMode.ADD)))
    assert compare(ledger.contacts, delivered(*separately)).unaccounted == ()


def test_custom_fields_are_compared_by_id() -> None:
    custom = target(custom_fields=(CustomFieldMapping("plan-field", ("properties", "plan")),))
    ledger = expected_after(identify(1, 0), lead(1, 0, "t"), the_mapper=mapper(custom))
    upsert = ledger.contacts[("default", "user-1")].upsert
    assert dict(upsert.custom_fields) == {"plan-field": "pro"}
    contacts = delivered(upsert)
    assert compare(ledger.contacts, contacts).unaccounted == ()
    contacts[LOCATION][0]["customFields"] = [{"id": "plan-field", "value": "free"}]
    [wrong] = compare(ledger.contacts, contacts).unaccounted
    assert wrong.fields == ("customFields.plan-field",)


# -- several keys, several partitions (issue 20) ---------------------------------------------------


_MESSAGE_IDS = itertools.count()


def person(user: str, email: str | None, **traits: Any) -> dict[str, Any]:
    """An identify of ``user`` (no consent) with a fresh messageId unless one is given."""
    message_id = traits.pop("messageId", f"m-{next(_MESSAGE_IDS)}")
    body = {"email": email, **traits} if email else traits
    return {"type": "identify", "userId": user, "messageId": message_id, "traits": body}


def ledger_across(*streams: Stream, dlq: SourceIndex | None = None) -> Ledger:
    """The ledger of ``streams`` read one partition after another, as the audit does."""
    expected = ExpectedContacts(mapper(), dead_letters=dlq or SourceIndex(), parked=SourceIndex())
    for stream in streams:
        expected.add(stream.records)
    return expected.ledger()


def consumed(
    *records: Record, duplicates: DuplicateSettings | None = None
) -> tuple[dict[str, list[dict[str, Any]]], SourceIndex]:
    """What the consumer leaves when it reads ``records`` in this order, each upsert sent as
    it comes: the sandbox's contacts, and its dead letters."""
    the_mapper = mapper()
    upserts, rejected = [], []
    for r in records:
        where = (r.topic, r.partition, r.offset)
        for outcome in the_mapper.map_record(
            value=r.value or b"", key=r.key, topic=r.topic, now=0, origin=where
        ):
            if isinstance(outcome, ContactUpsert):
                upserts.append(outcome)
            elif not isinstance(outcome, Drop):
                rejected.append((r, Failure(reason=outcome.reason.value, error="rejected")))
    return delivered(*upserts, duplicates=duplicates), dead_letters(*rejected)


def test_a_message_id_reused_by_two_users_on_two_partitions_is_no_duplicate_in_any_order() -> None:
    """Fixtures reuse messageIds across users: both events are delivered, whichever partition
    is read first, so the engine and the audit agree; a repeat for the same user still is a
    duplicate."""
    zero, one = Stream(0), Stream(1)
    zero.add(person("ann", "ann@example.com", messageId="shared"))
    one.add(person("bob", "bob@example.com", messageId="shared"))
    one.add(person("bob", "bob@example.com", messageId="shared"))
    for order in ((zero, one), (one, zero)):
        ledger = ledger_across(*order)
        assert ledger.dropped == {"duplicate": 1}
        assert set(ledger.contacts) == {("default", "ann"), ("default", "bob")}
        assert ledger.unaccounted == ()


def test_user_ids_sharing_an_email_expect_one_contact_and_either_order_is_accepted() -> None:
    """Two user ids on two partitions write the same email: one HighLevel contact, whose
    firstName is whichever the consumer applied last; both orders account for everything."""
    zero, one = Stream(0), Stream(1)
    zero.add(person("web-7", "Sam@Example.com", first_name="Sam"))
    one.add(person("crm-7", "sam@example.com", first_name="Samuel", last_name="Rivera"))
    ledger = ledger_across(zero, one)
    for order in ((zero, one), (one, zero)):
        contacts, _ = consumed(*order[0].records, *order[1].records)
        assert len(contacts[LOCATION]) == 1
        result = compare(ledger.contacts, contacts)
        assert result.unaccounted == ()
        assert (result.contacts, result.matching, result.delivered_events) == (1, 1, 2)
        assert result.allowed["other_writer"] == 1  # the firstName of the earlier writer


def test_on_one_partition_only_the_later_writer_is_accepted() -> None:
    """Two keys of one contact on one partition: offset order is the order HighLevel saw, so
    only the later key's value is a valid final state, and a contact holding the earlier one
    is a mismatch for the later key."""
    stream = Stream(0)
    stream.add(person("web-7", "sam@example.com", first_name="Sam"))
    stream.add(person("crm-7", "sam@example.com", first_name="Samuel"))
    ledger = ledger_across(stream)
    contacts, _ = consumed(*stream.records)
    assert compare(ledger.contacts, contacts).unaccounted == ()
    contacts[LOCATION][0]["firstName"] = "Sam"  # as if crm-7's update was lost
    [wrong] = compare(ledger.contacts, contacts).unaccounted
    assert (wrong.subject, wrong.fields) == ("default/crm-7", ("firstName",))


def test_a_value_no_writer_sent_is_still_a_mismatch() -> None:
    zero, one = Stream(0), Stream(1)
    zero.add(person("web-7", "sam@example.com", first_name="Sam"))
    one.add(person("crm-7", "sam@example.com", first_name="Samuel"))
    ledger = ledger_across(zero, one)
    contacts, _ = consumed(*zero.records, *one.records)
    contacts[LOCATION][0]["firstName"] = "Edited"
    assert [u.subject for u in compare(ledger.contacts, contacts).unaccounted] == [
        "default/crm-7",
        "default/web-7",
    ]


def test_keys_cluster_by_the_identifiers_the_duplicate_setting_matches_on() -> None:
    """Two keys sharing only a phone are one contact when the location matches on phone too,
    two when it matches on email only (HighLevel then creates a second contact)."""
    zero, one = Stream(0), Stream(1)
    zero.add(person("ann", "ann@example.com", phone="+1 415 555 0100"))
    one.add(person("bob", "bob@example.com", phone="+1 415 555 0100"))
    ledger = ledger_across(zero, one)
    email_only = DuplicateSettings(priority=("email",))
    for priority, duplicates, count in (
        (("email", "phone"), None, 1),
        (("email",), email_only, 2),
    ):
        contacts, _ = consumed(*zero.records, *one.records, duplicates=duplicates)
        assert len(contacts[LOCATION]) == count
        result = compare(ledger.contacts, contacts, {LOCATION: priority})
        assert (result.contacts, result.unaccounted) == (count, ())


def test_a_phone_held_by_another_contact_is_allowed_as_highlevel_ignores_it() -> None:
    """bob's contact exists by email; his later event carries ann's phone, which HighLevel
    does not apply (it belongs to ann's contact)."""
    zero, one = Stream(0), Stream(1)
    zero.add(person("ann", "ann@example.com", phone="+1 415 555 0100"))
    one.add(person("bob", "bob@example.com"))
    one.add(person("bob", "bob@example.com", phone="+1 415 555 0100"))
    ledger = ledger_across(zero, one)
    contacts, _ = consumed(*zero.records, *one.records)
    bob = next(c for c in contacts[LOCATION] if c["email"] == "bob@example.com")
    assert "phone" not in bob
    result = compare(ledger.contacts, contacts)
    assert result.unaccounted == ()
    assert result.allowed["identifier_on_another_contact"] == 1


def test_gender_is_applied_only_when_the_contact_is_created() -> None:
    stream = Stream(0)
    stream.add(person("ann", "ann@example.com", first_name="Ann"))
    stream.add(person("ann", "ann@example.com", gender="female"))
    ledger = ledger_across(stream)
    contacts, _ = consumed(*stream.records)
    assert "gender" not in contacts[LOCATION][0]
    result = compare(ledger.contacts, contacts)
    assert (result.unaccounted, result.allowed["create_only"]) == ((), 1)
    contacts[LOCATION][0]["gender"] = "male"  # nobody sent that
    assert compare(ledger.contacts, contacts).unaccounted[0].fields == ("gender",)


def test_fields_sent_before_a_key_changed_its_email_may_be_on_the_older_contact() -> None:
    """Sent one at a time, a key's events before and after an email change reach two
    contacts; folded into one upsert (the engine coalesces), one. Both are accepted."""
    stream = Stream(0)
    stream.add(person("ann", "ann@old.example", city="Lyon"))
    lead = {"type": "track", "event": "Lead Generated", "userId": "ann", "messageId": "lead"}
    stream.add({**lead, "properties": {"source": "Pricing Page Form"}})
    stream.add(person("ann", "ann@new.example", first_name="Ann"))
    ledger = ledger_across(stream)
    contacts, _ = consumed(*stream.records)
    assert len(contacts[LOCATION]) == 2  # identity fields (city) follow the profile to both
    result = compare(ledger.contacts, contacts)
    assert (result.unaccounted, result.allowed["earlier_identity"]) == ((), 1)  # source
    contacts[LOCATION][0]["source"] = "elsewhere"
    assert compare(ledger.contacts, contacts).unaccounted[0].fields == ("source",)
    folded = delivered(ledger.contacts[("default", "ann")].upsert)
    assert compare(ledger.contacts, folded).unaccounted == ()


def test_a_profile_stitched_across_partitions_makes_the_outcome_depend_on_read_order() -> None:
    """The device's anonymous profile (partition 1) holds the email; the user's event
    (partition 0) names the device. Read after the device, it is delivered with that email;
    the audit reads partition 0 first and finds it rejected: accounted as ``stitch_order``.
    On one partition the order is known, and a missing dead letter stays unaccounted."""
    device = {"type": "identify", "anonymousId": "dev-1", "traits": {"email": "ann@example.com"}}
    user = {"type": "identify", "userId": "ann", "anonymousId": "dev-1"}
    zero, one = Stream(0), Stream(1)
    one.add(device)
    zero.add({**user, "traits": {"first_name": "Ann"}})
    contacts, dlq = consumed(*one.records, *zero.records)
    assert dlq.records == 0
    ledger = ledger_across(zero, one, dlq=dlq)
    assert (ledger.stitch_order, ledger.unaccounted) == (1, ())
    assert compare(ledger.contacts, contacts).unaccounted == ()

    same = Stream(0)
    same.add({**user, "traits": {"first_name": "Ann"}})
    same.add(device)
    [lost] = ledger_across(same).unaccounted
    assert lost.problem == f"{NOT_DEAD_LETTERED} (no_identifier)"


def test_values_a_stitched_profile_gave_may_be_missing_when_the_consumer_read_it_later() -> None:
    """The user's later event carries the device's city only if the device was read first;
    the audit expects it, the consumer (device read last) did not send it."""
    zero, one = Stream(0), Stream(1)
    device = {"email": "d@example.com", "city": "Lyon"}
    one.add({"type": "identify", "anonymousId": "dev-1", "traits": device})
    user = {"email": "ann@example.com"}
    zero.add({"type": "identify", "userId": "ann", "anonymousId": "dev-1", "traits": user})
    ledger = ledger_across(one, zero)
    assert ledger.contacts[("default", "ann")].upsert.fields["city"] == "Lyon"
    contacts, _ = consumed(*zero.records, *one.records)
    result = compare(ledger.contacts, contacts)
    assert (result.unaccounted, result.allowed["stitch_order"]) == ((), 1)


# -- report ---------------------------------------------------------------------------------------


def test_report_names_unaccounted_keys_and_fields_never_values() -> None:
    stream = Stream()
    stream.add(identify(1, 0))
    stream.add(identify(2, 0))
    stream.add({"type": "page", "userId": "user-1"})
    ledger = ledger_of(stream)
    contacts = delivered(ledger.contacts[("default", "user-1")].upsert)
    contacts[LOCATION][0]["firstName"] = "tampered"
    report = Report(ledger, compare(ledger.contacts, contacts), {"events": 3}, ("g.parking",))
    out = io.StringIO()
    report.render(out)
    text = out.getvalue()
    assert "UNACCOUNTED default/user-1: field mismatch: firstName (1 event(s))" in text
    assert "UNACCOUNTED default/user-2: missing contact (1 event(s))" in text
    assert "topic g.parking does not exist: treated as empty" in text
    assert "user1@example.com" not in text.lower()
    assert "tampered" not in text
    data = report.to_json()
    assert data["ok"] is False
    assert data["contacts"] == {"expected": 2, "matching": 0}
    assert data["contact_keys"] == 2
    assert data["allowed_differences"] == dict.fromkeys(ALLOWED_RULES, 0)
    assert data["stitch_order_rejects"] == 0
    assert "contacts expected        2 (2 contact key(s))" in text
    assert "allowed differences      0" in text
    assert data["dropped"] == {"not_mapped": 1}
    assert [u["subject"] for u in data["unaccounted"]] == ["default/user-1", "default/user-2"]


def call(user: int, offsets: tuple[int, ...], *, time: float, integration: str = "default",
         status: int = 200, verdict: str = "delivered") -> DeliveryRecord:
    """The delivery record of one call carrying ``offsets`` of partition 0 for ``user-N``."""
    return DeliveryRecord(
        time=time,
        integration=integration,
        location=LOCATION,
        endpoint="upsert",
        status=status,
        verdict=verdict,
        trace_id=f"trace-{integration}-{offsets[0]}",
        latency_ms=12.0,
        attempt=1,
        contact=contact_digest(f"user-{user}"),
        sources=tuple(("events", 0, offset) for offset in offsets),
        contact_id=f"contact-{user}",
    )


def delivery_topic(*calls: DeliveryRecord | bytes) -> Calls:
    index = Calls()
    records = []
    for n, item in enumerate(calls):
        key, value = item.encode() if isinstance(item, DeliveryRecord) else (None, item)
        records.append(Record("g.deliveries", 0, n, key, value, ()))
    index.add(records)
    return index


def three_users_two_unaccounted() -> tuple[Ledger, Comparison]:
    """user-1 (offsets 0, 1) mismatches, user-2 (2) is missing, user-3 (3) matches."""
    stream = Stream()
    for event in (identify(1, 0), identify(1, 1), identify(2, 0), identify(3, 0)):
        stream.add(event)
    ledger = ledger_of(stream)
    contacts = delivered(
        ledger.contacts[("default", "user-1")].upsert, ledger.contacts[("default", "user-3")].upsert
    )
    contacts[LOCATION][0]["firstName"] = "tampered"
    return ledger, compare(ledger.contacts, contacts)


def test_report_names_the_highlevel_calls_of_each_unaccounted_contact_key() -> None:
    ledger, comparison = three_users_two_unaccounted()
    calls = delivery_topic(
        call(1, (1,), time=1_700_000_002.5),  # out of time order on the topic
        call(1, (0,), time=1_700_000_001.0, status=201),
        call(1, (0,), time=1_700_000_003.0, integration="legacy", status=401,
             verdict="unauthorized"),  # another integration's call: not user-1's of default
        call(3, (3,), time=1_700_000_004.0),
        b"not a delivery record",
    )
    report = Report(ledger, comparison, {"events": 4, "g.deliveries": 5}, (), calls)
    out = io.StringIO()
    report.render(out)
    lines = out.getvalue().splitlines()
    first = lines.index("UNACCOUNTED default/user-1: field mismatch: firstName (2 event(s))")
    assert lines[first + 1 : first + 4] == [
        "  call upsert 201 delivered at 2023-11-14T22:13:21.000Z "
        "(traceId trace-default-0, contact contact-1, 1 record(s))",
        "  call upsert 200 delivered at 2023-11-14T22:13:22.500Z "
        "(traceId trace-default-1, contact contact-1, 1 record(s))",
        "UNACCOUNTED default/user-2: missing contact (1 event(s))",
    ]
    assert lines[-1] == "  no delivery record"
    assert "delivery records         5 (1 unreadable)" in lines
    assert "no delivery records" not in "\n".join(lines[:first])
    data = report.to_json()
    assert data["delivery_records"] == 5
    mismatch, missing = data["unaccounted"]
    assert [c["time"] for c in mismatch["calls"]] == [
        "2023-11-14T22:13:21.000Z", "2023-11-14T22:13:22.500Z"
    ]
    assert mismatch["calls"][0] == {
        "endpoint": "upsert", "status": 201, "verdict": "delivered",
        "traceId": "trace-default-0", "time": "2023-11-14T22:13:21.000Z",
        "contactId": "contact-1", "sources": 1,
    }
    assert missing["calls"] == []
    # --json names the calls of every expected contact, matching ones too.
    assert [(e["subject"], len(e["calls"])) for e in data["expected"]] == [
        ("default/user-1", 2), ("default/user-2", 0), ("default/user-3", 1)
    ]


def test_without_a_delivery_topic_the_report_says_no_delivery_records_once() -> None:
    ledger, comparison = three_users_two_unaccounted()
    report = Report(ledger, comparison, {"events": 4}, ("g.deliveries",))
    out = io.StringIO()
    report.render(out)
    text = out.getvalue()
    assert text.count("no delivery records") == 1
    assert "no delivery record\n" not in text
    assert "  call " not in text
    assert "delivery records         none (no delivery topic)" in text
    assert "topic g.deliveries does not exist: treated as empty" in text
    data = report.to_json()
    assert data["delivery_records"] is None
    assert [u["calls"] for u in data["unaccounted"]] == [None, None]
    assert [e["calls"] for e in data["expected"]] == [None, None, None]
    assert data["ok"] is False


def test_build_mapper_follows_the_configuration() -> None:
    settings = load_settings(
        None,
        {"GHL_LOCATION_ID": LOCATION, "GHL_DEFAULT_PHONE_REGION": "GB"},
        read_secrets=False,
    )
    the_mapper = build_mapper(settings.targets(), settings.mapping.options())
    [upsert] = the_mapper.map_record(
        value=orjson.dumps(
            {"type": "identify", "userId": "u", "traits": {"phone": "07700 900123"}}
        ),
        key=None,
        topic="events",
        now=0,
    )
    assert isinstance(upsert, ContactUpsert)
    assert upsert.fields["phone"] == "+447700900123"
    assert upsert.location_id == LOCATION
