"""Mapping rules (``docs/architecture.md``, "Mapping rules"), one test (or table) per rule.
Every payload any test produces is validated against HighLevel's strict upsert schema (see
``map_events``)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.core.decode import Limits
from consumer.core.dedupe import MessageDeduper
from consumer.core.events import (
    ConsentMode,
    ContactUpsert,
    Drop,
    OmitReason,
    Omitted,
    Outcome,
    PresetEvent,
    Reason,
    Reject,
    TagMode,
)
from consumer.core.mapping import Mapper
from consumer.core.normalise import normalise_country
from consumer.core.profiles import ChangelogProfileStore, InMemoryProfileStore, Profile
from consumer.core.targets import CustomFieldMapping, Routing, Target
from tests.harness.guide import GUIDE_UPSERT
from tests.unit.upsert_schema import validate_payload

LOCATION = "ve9EPM428h8vShlRW1KT"
DEFAULT_LIMITS = Limits()
GRANTED = {"consent": {"canonical": {"marketing": True}}}


def target(id: str = "default", **overrides: Any) -> Target:
    values: dict[str, Any] = {"location_id": LOCATION}
    values.update(overrides)
    return Target(id=id, **values)


class Harness:
    """A mapper with an in-memory profile store; validates every payload it produces."""

    def __init__(self, *targets: Target, limits: Limits = DEFAULT_LIMITS) -> None:
        self.profiles = InMemoryProfileStore()
        self.deduper = MessageDeduper(max_entries=1000, ttl_seconds=3600)
        self.mapper = Mapper(
            targets or (target(),),
            profiles=self.profiles,
            deduper=self.deduper,
            limits=limits,
            phone_cache_size=128,
        )

    def record(
        self, value: bytes, *, topic: str = "events", key: bytes | None = None, now: float = 0.0
    ) -> list[Outcome]:
        outcomes = self.mapper.map_record(value=value, key=key, topic=topic, now=now)
        for outcome in outcomes:
            if isinstance(outcome, ContactUpsert):
                validate_payload(outcome.payload())
        return outcomes

    def one(self, event: dict[str, Any], **kwargs: Any) -> Outcome:
        outcomes = self.record(orjson.dumps(event), **kwargs)
        assert len(outcomes) == 1, outcomes
        return outcomes[0]

    def payload(self, event: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        outcome = self.one(event, **kwargs)
        assert isinstance(outcome, ContactUpsert), outcome
        return outcome.payload()


def identify(traits: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "identify", "userId": "u1"}
    if traits is not None:
        event["traits"] = traits
    event.update(extra)
    return event


def track(name: str, properties: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "track", "userId": "u1", "event": name}
    if properties is not None:
        event["properties"] = properties
    event.update(extra)
    return event


# -- the integration guide's examples, exactly --------------------------------------------------


def test_guide_lead_generated_example_produces_the_documented_payload() -> None:
    h = Harness()
    h.one(
        identify(
            {
                "email": "sam@example.com",
                "phone": "+1 415 555 0142",
                "first_name": "Sam",
                "last_name": "Rivera",
            },
            userId="lead-987",
            context=GRANTED,
        )
    )
    payload = h.payload(
        track(
            "Lead Generated",
            {"source": "Pricing Page Form", "lead_tag": "website-lead"},
            userId="lead-987",
        )
    )
    expected = GUIDE_UPSERT
    assert payload == expected
    assert list(payload) == list(expected)


def test_upserts_name_the_event_they_came_from() -> None:
    h = Harness()
    first = h.one(identify({"email": "sam@example.com"}))
    lead = h.one(track("Lead Generated", {"source": "Form"}))
    assert isinstance(first, ContactUpsert)
    assert isinstance(lead, ContactUpsert)
    assert (first.events, lead.events) == (("identify",), ("Lead Generated",))


def test_guide_identify_example_produces_the_documented_fields() -> None:
    payload = Harness().payload(
        identify(
            {
                "email": "jane.doe@example.com",
                "phone": "+44 7700 900123",
                "first_name": "Jane",
                "last_name": "Doe",
                "company": "Acme Ltd",
                "city": "London",
                "country": "GB",
            },
            userId="user-123",
        )
    )
    assert payload == {
        "locationId": LOCATION,
        "email": "jane.doe@example.com",
        "phone": "+447700900123",
        "firstName": "Jane",
        "lastName": "Doe",
        "companyName": "Acme Ltd",
        "city": "London",
        "country": "GB",
    }


# -- trait table ---------------------------------------------------------------------------------

BASE = {"email": "x@example.com"}


@pytest.mark.parametrize(
    ("traits", "expected"),
    [
        ({"email": "  Sam@Example.COM "}, {"email": "sam@example.com"}),
        ({"email": "mailto:Sam@Example.com"}, {"email": "sam@example.com"}),
        ({"email": "sam\u200b@example.com"}, {"email": "sam@example.com"}),
        ({"first_name": " Sam "}, {"firstName": "Sam"}),
        ({"firstName": "Sam"}, {"firstName": "Sam"}),
        ({"last_name": "Rivera"}, {"lastName": "Rivera"}),
        ({"lastName": "Rivera"}, {"lastName": "Rivera"}),
        ({"first_name": "Snake", "firstName": "Camel"}, {"firstName": "Snake"}),
        ({"name": " Sam Rivera "}, {"name": "Sam Rivera"}),
        ({"company": "Acme"}, {"companyName": "Acme"}),
        ({"company": {"name": "Acme", "id": 7}}, {"companyName": "Acme"}),
        ({"address": "1 Main St"}, {"address1": "1 Main St"}),
        (
            {
                "address": {
                    "street": "1 Main St",
                    "city": "Springfield",
                    "state": "IL",
                    "postal_code": "62701",
                    "country": "us",
                }
            },
            {
                "address1": "1 Main St",
                "city": "Springfield",
                "state": "IL",
                "postalCode": "62701",
                "country": "US",
            },
        ),
        ({"address": {"postalCode": "62701"}}, {"postalCode": "62701"}),
        ({"city": "Top", "address": {"city": "Nested"}}, {"city": "Top"}),
        ({"city": "London", "state": "LDN"}, {"city": "London", "state": "LDN"}),
        ({"postal_code": "SW1A 1AA"}, {"postalCode": "SW1A 1AA"}),
        ({"postalCode": 10115}, {"postalCode": "10115"}),
        ({"country": "gb"}, {"country": "GB"}),
        ({"country": "United Kingdom"}, {"country": "GB"}),
        ({"country": "UK"}, {"country": "GB"}),
        ({"country": "USA"}, {"country": "US"}),
        ({"country": "XX"}, {}),
        ({"website": "https://acme.test"}, {"website": "https://acme.test"}),
        ({"first_name": "   "}, {}),
        ({"first_name": None}, {}),
        # names real collectors write (RudderStack, Segment, hand-written trackers)
        ({"firstname": "Sam", "lastname": "Rivera"}, {"firstName": "Sam", "lastName": "Rivera"}),
        ({"FirstName": "Sam", "Lastname": "Rivera"}, {"firstName": "Sam", "lastName": "Rivera"}),
        ({"firstname": "Lower", "firstName": "Camel"}, {"firstName": "Camel"}),
        ({"Phone": "+14155550142"}, {"phone": "+14155550142"}),
        ({"phone_number": "+14155550142"}, {"phone": "+14155550142"}),
        ({"mobile": "+14155550142"}, {"phone": "+14155550142"}),
        ({"phone": "+14155550143", "mobile": "+14155550142"}, {"phone": "+14155550143"}),
        ({"zip": "62701"}, {"postalCode": "62701"}),
        ({"zipcode": "62701"}, {"postalCode": "62701"}),
        ({"postcode": "SW1A 1AA"}, {"postalCode": "SW1A 1AA"}),
        ({"company_name": "Acme"}, {"companyName": "Acme"}),
        ({"companyName": "Named", "company": "Plain"}, {"companyName": "Named"}),
        ({"Company": {"name": "Acme"}}, {"companyName": "Acme"}),
        ({"address": {"line1": "1 Main St"}}, {"address1": "1 Main St"}),
        ({"address": {"line1": "1 Main St", "line2": "Apt 4"}}, {"address1": "1 Main St, Apt 4"}),
        ({"address": {"street": "1 Main St", "line2": " "}}, {"address1": "1 Main St"}),
        ({"street": "1 Main St"}, {"address1": "1 Main St"}),
        (
            {"address": {"zip": "62701", "City": "Springfield"}},
            {"postalCode": "62701", "city": "Springfield"},
        ),
        ({"birthday": "1990-09-25"}, {"dateOfBirth": "1990-09-25"}),
        ({"dateOfBirth": "09/25/1990"}, {"dateOfBirth": "1990-09-25"}),
        ({"dob": "1990.9.5"}, {"dateOfBirth": "1990-09-05"}),
        ({"birthday": "1990-09-25T00:00:00.000Z"}, {"dateOfBirth": "1990-09-25"}),
        ({"birthday": "1990-02-30"}, {}),
        ({"birthday": "25/09/1990"}, {}),  # day first is not a HighLevel format
        ({"timezone": "Europe/London"}, {"timezone": "Europe/London"}),
        ({"timezone": "america/new_york"}, {"timezone": "America/New_York"}),
        ({"timezone": "GMT+1 Berlin"}, {}),
        ({"gender": " female "}, {"gender": "female"}),
    ],
)
def test_trait_table(traits: dict[str, Any], expected: dict[str, Any]) -> None:
    payload = Harness().payload(identify({**BASE, **traits}))
    expected = {"locationId": LOCATION, "email": "x@example.com", **expected}
    assert payload == expected


@pytest.mark.parametrize(
    "bad",
    [
        "not-an-email",
        "a@b",
        "a b@example.com",
        "@example.com",
        "a@@x.io",
        "peter..gibbons@example.com",
        "sam@example.test",
    ],
)
def test_invalid_email_is_omitted(bad: str) -> None:
    outcome = Harness().one(identify({"email": bad, "phone": "+14155550142"}))
    assert isinstance(outcome, ContactUpsert)
    assert "email" not in outcome.payload()
    assert outcome.payload()["phone"] == "+14155550142"
    assert outcome.omitted == (Omitted("email", OmitReason.INVALID, "traits.email"),)
    rejected = Harness().one(identify({"email": bad}))
    assert isinstance(rejected, Reject)
    assert rejected.reason is Reason.NO_IDENTIFIER


@pytest.mark.parametrize(
    ("traits", "region", "expected"),
    [
        ({"phone": "+44 7700 900123"}, None, "+447700900123"),  # possible, not valid: kept
        ({"phone": "+1 (415) 555-0142"}, None, "+14155550142"),
        ({"phone": "07700 900123", "country": "GB"}, "US", "+447700900123"),  # country wins
        ({"phone": "(415) 555-0142"}, "US", "+14155550142"),  # default region
        ({"phone": 14155550142}, "US", "+14155550142"),  # a number is read as its digits
        # a country is named: it alone picks the region, never the default
        ({"phone": "07700 900123", "country": "UK"}, "US", "+447700900123"),
        ({"phone": "9876543212", "country": "India"}, "US", "+919876543212"),
        ({"phone": "07700 900123", "country": "Narnia"}, "GB", None),  # unknown: omitted
        ({"phone": "07700 900123", "country": "AQ"}, "GB", None),  # no phone region
        ({"phone": "+44 7700 900123", "country": "Narnia"}, "US", "+447700900123"),
        ({"phone": "tel:+1-415-555-0142"}, None, "+14155550142"),
        ({"phone": "555-0142"}, "US", None),  # local-only
        ({"phone": 9876543212, "country": "IN"}, "US", "+919876543212"),
        ({"phone": 9876543212.0, "country": "IN"}, "US", "+919876543212"),
        ({"phone": "415 555 0142"}, None, None),  # national format, no region
        ({"phone": "0142"}, "US", None),  # too short to be possible
        ({"phone": "call me"}, "US", None),
    ],
)
def test_phone_normalisation(
    traits: dict[str, Any], region: str | None, expected: str | None
) -> None:
    h = Harness(target(default_phone_region=region))
    payload = h.payload(identify({**BASE, **traits}))
    assert payload.get("phone") == expected


# -- precedence ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("traits", "region", "reason"),
    [
        ({"phone": "07700 900123", "country": "Narnia"}, "GB", OmitReason.NO_REGION),
        ({"phone": "415 555 0142"}, None, OmitReason.NO_REGION),
        ({"phone": "555-0142"}, "US", OmitReason.INVALID),
        ({"phone": "+1 555"}, None, OmitReason.INVALID),
    ],
)
def test_an_unusable_phone_is_omitted_with_why(
    traits: dict[str, Any], region: str | None, reason: OmitReason
) -> None:
    outcome = Harness(target(default_phone_region=region)).one(identify({**BASE, **traits}))
    assert isinstance(outcome, ContactUpsert)
    assert "phone" not in outcome.payload()
    assert Omitted("phone", reason, "traits.phone") in outcome.omitted


def test_the_profile_country_picks_the_region_when_the_event_names_none() -> None:
    h = Harness(target(default_phone_region="US"))
    h.one(identify({**BASE, "country": "India"}))
    assert h.payload(identify({"phone": "9876543212"}))["phone"] == "+919876543212"


@settings(max_examples=200, deadline=None)
@given(
    country=st.sampled_from(["IN", "India", "GB", "UK", "United Kingdom", "DE", "Deutschland"]),
    national=st.from_regex(r"0?[1-9][0-9]{6,10}", fullmatch=True),
    default=st.sampled_from([None, "US", "GB", "IN"]),
)
def test_a_phone_never_lands_outside_the_named_country(
    country: str, national: str, default: str | None
) -> None:
    outcome = Harness(target(default_phone_region=default)).one(
        identify({**BASE, "country": country, "phone": national})
    )
    assert isinstance(outcome, ContactUpsert)
    phone = outcome.payload().get("phone")
    if phone is not None:
        expected = {"IN": "+91", "GB": "+44", "DE": "+49"}[normalise_country(country) or ""]
        assert str(phone).startswith(expected)


def test_traits_beat_context_traits_beat_properties_beat_profile() -> None:
    h = Harness()
    h.one(
        identify(
            {
                "email": "p@example.com",
                "first_name": "Profile",
                "last_name": "Profile",
                "name": "Profile",
                "city": "Profile",
            }
        )
    )
    payload = h.payload(
        track(
            "Signed Up",
            {"first_name": "Props", "last_name": "Props", "name": "Props"},
            traits={"first_name": "Traits"},
            context={"traits": {"first_name": "Context", "last_name": "Context"}},
        )
    )
    assert payload["firstName"] == "Traits"
    assert payload["lastName"] == "Context"
    assert payload["name"] == "Props"
    assert payload["city"] == "Profile"
    assert payload["email"] == "p@example.com"


def test_an_unusable_value_falls_through_to_the_next_source() -> None:
    payload = Harness().payload(
        identify({"email": "broken"}, context={"traits": {"email": "ok@example.com"}})
    )
    assert payload["email"] == "ok@example.com"


def test_properties_count_only_for_mapped_track_events() -> None:
    h = Harness()
    assert h.one(track("Product Viewed", {"email": "viewer@example.com"})) == Drop(
        Reason.NOT_MAPPED, "default"
    )
    assert h.profiles.get("u1") is None
    outcome = h.one(track("Identified", {"first_name": "Only"}))
    assert outcome == Reject(Reason.NO_IDENTIFIER, outcome.error, "default")  # type: ignore[union-attr]
    payload = h.payload(track("Signed Up", {"email": "signup@example.com"}))
    assert payload["email"] == "signup@example.com"
    assert payload["firstName"] == "Only"  # remembered from the Identified event's properties


def test_group_traits_describe_the_group_not_the_user() -> None:
    h = Harness()
    h.one(identify({"email": "u@example.com"}))
    assert h.one({"type": "group", "userId": "u1", "traits": {"name": "Acme Inc"}}) == Drop(
        Reason.NOT_MAPPED, "default"
    )
    assert "name" not in h.payload(identify())


def test_profile_stores_normalised_fields_and_is_keyed_by_record_key_first() -> None:
    h = Harness(target(default_phone_region="US"))
    h.one(identify({"email": " A@Example.com ", "phone": "(415) 555-0142"}), key=b"k-1")
    profile = h.profiles.get("k-1")
    assert profile is not None
    assert dict(profile.fields) == {"email": "a@example.com", "phone": "+14155550142"}
    assert h.profiles.get("u1") is None
    h.one({"type": "identify", "anonymousId": "anon-1", "traits": {"email": "b@example.com"}})
    assert h.profiles.get("anon-1") is not None


def test_profile_is_updated_even_when_the_event_has_no_identifier() -> None:
    h = Harness()
    outcome = h.one(identify({"first_name": "Early"}))
    assert isinstance(outcome, Reject)
    assert outcome.reason is Reason.NO_IDENTIFIER
    assert h.payload(identify({"email": "late@example.com"}))["firstName"] == "Early"


# -- identity stitching --------------------------------------------------------------------------


def anonymous(traits: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "identify", "anonymousId": "anon-1", **extra}
    if traits is not None:
        event["traits"] = traits
    return event


def test_a_login_carries_the_anonymous_profile_over() -> None:
    h = Harness()
    h.one(anonymous({"email": "early@example.com", "first_name": "Early"}, context=GRANTED))
    login = {"type": "track", "event": "Signed Up", "userId": "u1", "anonymousId": "anon-1"}
    payload = h.payload(login)
    assert (payload["email"], payload["firstName"], payload["dnd"]) == (
        "early@example.com",
        "Early",
        False,
    )
    # the anonymous profile is merged once: another person logging in on the device later
    # does not inherit it
    other = {"type": "identify", "userId": "u2", "anonymousId": "anon-1"}
    assert isinstance(h.one(other), Reject)


def test_the_users_own_values_win_over_the_anonymous_ones() -> None:
    h = Harness()
    h.one(identify({"email": "known@example.com"}))
    h.one(anonymous({"email": "typo@example.com", "last_name": "Rivera"}))
    payload = h.payload(identify(anonymousId="anon-1"))
    assert (payload["email"], payload["lastName"]) == ("known@example.com", "Rivera")


def test_alias_merges_the_previous_ids_profile() -> None:
    h = Harness()
    h.one(identify({"email": "old@example.com", "city": "Leeds"}, userId="old-id"))
    alias = {"type": "alias", "userId": "new-id", "previousId": "old-id"}
    assert h.one(alias) == Drop(Reason.NOT_MAPPED, "default")
    assert h.payload(identify(userId="new-id"))["city"] == "Leeds"
    assert h.one({"type": "alias", "userId": "x", "previousId": ["odd"]}) == Drop(
        Reason.NOT_MAPPED, "default"
    )


def test_stitching_is_written_to_the_durable_store() -> None:
    store = ChangelogProfileStore(max_entries=10)
    mapper = Mapper(
        (target(),),
        profiles=store,
        deduper=MessageDeduper(max_entries=10, ttl_seconds=60),
    )
    mapper.map_record(
        value=orjson.dumps(anonymous({"email": "a@example.com"})), key=None, topic="t", now=0
    )
    store.take_writes()
    event = {"type": "page", "userId": "u1", "anonymousId": "anon-1"}
    mapper.map_record(value=orjson.dumps(event), key=None, topic="t", now=1)
    writes = dict(store.take_writes())
    assert Profile.from_bytes(writes["u1"]).fields == {"email": "a@example.com"}
    assert Profile.from_bytes(writes["anon-1"]) == Profile()


# -- consent -------------------------------------------------------------------------------------

CONSENT_SOURCES = {
    "canonical": lambda v: {"consent": {"canonical": {"marketing": v}}},
    "categories": lambda v: {"consent": {"categories": {"marketing": v}}},
    "direct_bool": lambda v: {"consent": {"marketing": v}},
    "direct_word": lambda v: {"consent": {"marketing": "granted" if v else "denied"}},
    "categoryPreferences": lambda v: {"consent": {"categoryPreferences": {"marketing": v}}},
    "consentManagement": lambda v: {
        "consentManagement": {
            "allowedConsentIds": ["marketing"] if v else [],
            "deniedConsentIds": [] if v else ["marketing"],
        }
    },
}


@pytest.mark.parametrize("source", sorted(CONSENT_SOURCES))
@pytest.mark.parametrize("granted", [True, False])
def test_each_consent_source_sets_dnd(source: str, granted: bool) -> None:
    payload = Harness().payload(identify(BASE, context=CONSENT_SOURCES[source](granted)))
    assert payload["dnd"] is (not granted)


@pytest.mark.parametrize("source", sorted(CONSENT_SOURCES))
@pytest.mark.parametrize("spelling", ["Marketing", "MARKETING"])
def test_consent_categories_match_ignoring_case(source: str, spelling: str) -> None:
    denied = json.loads(json.dumps(CONSENT_SOURCES[source](False)).replace("marketing", spelling))
    assert Harness().payload(identify(BASE, context=denied))["dnd"] is True
    # and a configured category matches the event's spelling
    h = Harness(target(consent_category="Email_Marketing"))
    context = {"consent": {"canonical": {"email_marketing": False}}}
    assert h.payload(identify(BASE, context=context))["dnd"] is True


def test_an_exact_category_name_beats_one_differing_in_case() -> None:
    context = {"consent": {"canonical": {"Marketing": True, "marketing": False}}}
    assert Harness().payload(identify(BASE, context=context))["dnd"] is True


ORDER = ["canonical", "categories", "direct_bool", "categoryPreferences", "consentManagement"]


@pytest.mark.parametrize(
    ("first", "second"), [(a, b) for i, a in enumerate(ORDER) for b in ORDER[i + 1 :]]
)
def test_first_consent_source_wins(first: str, second: str) -> None:
    context: dict[str, Any] = {"consent": {}}
    for name, value in ((second, False), (first, True)):
        part = CONSENT_SOURCES[name](value)
        context["consent"].update(part.get("consent", {}))
        if "consentManagement" in part:
            context["consentManagement"] = part["consentManagement"]
    assert Harness().payload(identify(BASE, context=context))["dnd"] is False


def test_consent_management_object_form_and_contradiction() -> None:
    h = Harness()
    legacy = {"consentManagement": {"allowedConsentIds": {"marketing": "Marketing"}}}
    assert h.payload(identify(BASE, context=legacy))["dnd"] is False
    both = {
        "consentManagement": {
            "allowedConsentIds": ["marketing"],
            "deniedConsentIds": ["marketing"],
        }
    }
    assert h.payload(identify(BASE, context=both))["dnd"] is True


def test_no_decision_uses_last_known_and_never_known_means_no_dnd_key() -> None:
    h = Harness()
    assert "dnd" not in h.payload(identify(BASE))
    # a page view carrying consent is remembered though it is not mapped
    denied = {"consent": {"canonical": {"marketing": False}}}
    assert h.one({"type": "page", "userId": "u1", "context": denied}) == Drop(
        Reason.NOT_MAPPED, "default"
    )
    assert h.payload(identify(BASE))["dnd"] is True
    assert h.payload(identify(BASE, context=GRANTED))["dnd"] is False
    assert h.payload(track("Signed Up"))["dnd"] is False


def test_consent_category_is_per_integration() -> None:
    h = Harness(target(consent_category="email_marketing"))
    context = {"consent": {"canonical": {"marketing": False, "email_marketing": True}}}
    assert h.payload(identify(BASE, context=context))["dnd"] is False
    assert "dnd" not in Harness(target(consent_category="sms")).payload(
        identify(BASE, context=context)
    )


@pytest.mark.parametrize(
    ("context", "path"),
    [
        ({"consent": "yes"}, "context.consent"),
        ({"consent": {"canonical": []}}, "context.consent.canonical"),
        (
            {"consent": {"categories": {"marketing": "true"}}},
            "context.consent.categories.marketing",
        ),
        ({"consent": {"marketing": "maybe"}}, "context.consent.marketing"),
        (
            {"consentManagement": {"allowedConsentIds": "marketing"}},
            "context.consentManagement.allowedConsentIds",
        ),
    ],
)
def test_malformed_consent_is_omitted_not_guessed(context: dict[str, Any], path: str) -> None:
    h = Harness()
    outcome = h.one(identify(BASE, context=context))
    assert isinstance(outcome, ContactUpsert)
    assert "dnd" not in outcome.payload()
    assert outcome.omitted == (Omitted("dnd", OmitReason.WRONG_TYPE, path),)
    # no decision on the event: the last known one still applies
    h.one(identify(BASE, context={"consent": {"canonical": {"marketing": False}}}))
    outcome = h.one(identify(BASE, context=context))
    assert isinstance(outcome, ContactUpsert)
    assert outcome.payload()["dnd"] is True


def test_a_malformed_consent_source_falls_through_to_the_next() -> None:
    context = {"consent": {"canonical": "x", "categories": {"marketing": False}}}
    outcome = Harness().one(identify(BASE, context=context))
    assert isinstance(outcome, ContactUpsert)
    assert outcome.payload()["dnd"] is True
    assert [o.path for o in outcome.omitted] == ["context.consent.canonical"]


# -- Default preset and aliases ------------------------------------------------------------------


def test_preset_actions() -> None:
    h = Harness()
    h.one(identify({"email": "u@example.com"}))
    assert "source" not in h.payload(track("Identified"))
    assert h.payload(track("Signed Up", {"method": "Google"}))["source"] == "Google"
    lead = h.payload(track("Lead Generated", {"source": "Form"}))
    assert lead["source"] == "Form"
    assert "tags" not in lead
    for other in (
        track("Product Viewed"),
        track("signed up"),
        {"type": "page", "userId": "u1"},
        {"type": "screen", "userId": "u1"},
        {"type": "alias", "userId": "u1", "previousId": "a"},
    ):
        assert h.one(other) == Drop(Reason.NOT_MAPPED, "default")


def test_aliases_map_other_event_names_onto_the_preset() -> None:
    h = Harness(
        target(
            aliases={"sign_up": PresetEvent.SIGNED_UP, "generate_lead": PresetEvent.LEAD_GENERATED}
        )
    )
    h.one(identify({"email": "u@example.com"}))
    assert h.payload(track("sign_up", {"method": "email"}))["source"] == "email"
    assert h.payload(track("generate_lead", {"lead_tag": "ga4"}))["tags"] == ["ga4"]
    assert h.payload(track("Signed Up", {"method": "still works"}))["source"] == "still works"


def test_no_identifier_is_rejected_with_what_was_wrong() -> None:
    outcome = Harness(target(default_phone_region="US")).one(
        identify({"email": "nope", "phone": "12", "first_name": "A"})
    )
    assert isinstance(outcome, Reject)
    assert outcome.reason is Reason.NO_IDENTIFIER
    assert outcome.integration_id == "default"
    assert "traits.email is not a valid email address" in outcome.error
    assert "traits.phone is not a possible phone number" in outcome.error
    assert "nope" not in outcome.error  # identity values are never quoted


def test_event_without_any_user_is_invalid() -> None:
    outcome = Harness().one({"type": "identify", "traits": BASE})
    assert isinstance(outcome, Reject)
    assert outcome.reason is Reason.INVALID_EVENT
    assert Harness().payload({"type": "identify", "traits": BASE}, key=b"kafka-key")


# -- field mappings ------------------------------------------------------------------------------


def test_dnd_mapping_removed() -> None:
    h = Harness(target(removed_fields=frozenset({"dnd"})))
    assert "dnd" not in h.payload(identify(BASE, context=GRANTED))
    profile = h.profiles.get("u1")
    assert profile is not None
    assert profile.consent == {"marketing": True}  # still remembered


def test_other_default_mappings_removed() -> None:
    h = Harness(target(removed_fields=frozenset({"tags", "source", "email"})))
    h.one(identify({"email": "u@example.com", "phone": "+14155550142"}))
    payload = h.payload(track("Lead Generated", {"source": "Form", "lead_tag": "t"}))
    assert payload == {"locationId": LOCATION, "phone": "+14155550142"}
    outcome = h.one(identify({"email": "only@example.com"}, userId="u2"))
    assert isinstance(outcome, Reject)
    assert "the email mapping is removed" in outcome.error


def test_custom_fields_from_source_paths() -> None:
    h = Harness(
        target(
            custom_fields=(
                CustomFieldMapping("fPlan", ("properties", "plan")),
                CustomFieldMapping("fSeats", ("properties", "seats")),
                CustomFieldMapping("fInterests", ("properties", "interests")),
                CustomFieldMapping("fPage", ("context", "page", "url")),
                CustomFieldMapping("fMissing", ("properties", "nothing", "here")),
            )
        )
    )
    h.one(identify(BASE))
    payload = h.payload(
        track(
            "Signed Up",
            {"plan": " pro ", "seats": 5, "interests": ["a", "b"]},
            context={"page": {"url": "https://acme.test/pricing"}},
        )
    )
    assert payload["customFields"] == [
        {"id": "fPlan", "field_value": "pro"},
        {"id": "fSeats", "field_value": 5},
        {"id": "fInterests", "field_value": ["a", "b"]},
        {"id": "fPage", "field_value": "https://acme.test/pricing"},
    ]
    assert "customFields" not in h.payload(track("Signed Up"))


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({"a": 1}, OmitReason.WRONG_TYPE),
        (True, OmitReason.WRONG_TYPE),
        ([1, 2], OmitReason.WRONG_TYPE),
        ("x" * 65, OmitReason.TOO_LONG),
        (["ok", "x" * 65], OmitReason.TOO_LONG),
    ],
)
def test_custom_field_of_unusable_type_is_omitted(value: object, reason: OmitReason) -> None:
    h = Harness(
        target(custom_fields=(CustomFieldMapping("f1", ("traits", "plan")),)),
        limits=Limits(max_field_chars=64),
    )
    outcome = h.one(identify({**BASE, "plan": value}))
    assert isinstance(outcome, ContactUpsert)
    assert "customFields" not in outcome.payload()
    assert outcome.omitted == (Omitted("customFields", reason, "traits.plan"),)


def test_consent_mode_deny_only_never_sends_dnd_false() -> None:
    h = Harness(target(consent_mode=ConsentMode.DENY_ONLY))
    assert "dnd" not in h.payload(identify(BASE, context=GRANTED))
    denied = {"consent": {"canonical": {"marketing": False}}}
    assert h.payload(identify(BASE, context=denied))["dnd"] is True
    # a later grant clears nothing: HighLevel keeps its DND
    assert "dnd" not in h.payload(identify(BASE, context=GRANTED))


def test_static_tags_go_on_every_upsert_with_the_events_own() -> None:
    h = Harness(target(static_tags=("website", "lead")))
    assert h.payload(identify(BASE))["tags"] == ["website", "lead"]
    lead = h.payload(track("Lead Generated", {"lead_tag": "ga4"}))
    assert lead["tags"] == ["website", "lead", "ga4"]
    assert h.payload(track("Lead Generated", {"lead_tag": "lead"}))["tags"] == ["website", "lead"]
    removed = Harness(target(static_tags=("website",), removed_fields=frozenset({"tags"})))
    assert "tags" not in removed.payload(identify(BASE))


def test_tags_are_sent_as_highlevel_stores_them_trimmed_and_lowercased() -> None:
    h = Harness(target(static_tags=("Website",)))
    lead = h.payload(track("Lead Generated", {**BASE, "lead_tag": "  Pricing-Page "}))
    assert lead["tags"] == ["website", "pricing-page"]
    shouting = track("Lead Generated", {**BASE, "lead_tag": "WEBSITE"})
    assert h.payload(shouting)["tags"] == ["website"]


LEAD_FROM_FORM = track("Lead Generated", {**BASE, "source": "Form"})


@pytest.mark.parametrize(
    ("options", "event", "expected"),
    [
        ({"default_source": "Website"}, identify(BASE), "Website"),
        ({"default_source": "Website"}, LEAD_FROM_FORM, "Form"),
        ({"static_source": "Website"}, LEAD_FROM_FORM, "Website"),
        ({"static_source": "Website"}, identify(BASE), "Website"),
        ({}, identify(BASE), None),
    ],
)
def test_static_and_default_source(
    options: dict[str, str], event: dict[str, Any], expected: str | None
) -> None:
    assert Harness(target(**options)).payload(event).get("source") == expected


def test_tag_mode_add_keeps_tags_out_of_the_upsert_body() -> None:
    h = Harness(target(tag_mode=TagMode.ADD))
    h.one(identify(BASE))
    outcome = h.one(track("Lead Generated", {"lead_tag": "website-lead"}))
    assert isinstance(outcome, ContactUpsert)
    assert "tags" not in outcome.payload()
    assert outcome.tags_to_add() == ("website-lead",)


# -- deduplication -------------------------------------------------------------------------------


def test_duplicate_message_ids_are_dropped_within_the_ttl() -> None:
    h = Harness()
    event = orjson.dumps(identify(BASE, messageId="m-1"))
    assert isinstance(h.record(event, now=0.0)[0], ContactUpsert)
    assert h.record(event, now=10.0) == [Drop(Reason.DUPLICATE)]
    assert isinstance(h.record(event, now=3601.0)[0], ContactUpsert)
    assert isinstance(h.record(orjson.dumps(identify(BASE)), now=3602.0)[0], ContactUpsert)
    assert isinstance(h.record(orjson.dumps(identify(BASE)), now=3603.0)[0], ContactUpsert)


def test_a_message_id_is_a_duplicate_only_for_the_same_contact_key() -> None:
    """Ids are remembered per contact key (record key, else userId, else anonymousId): another
    user's event with the same messageId is delivered; a repeat under the same key, whether
    the key comes from the record or the event, is a duplicate."""
    h = Harness()
    first = orjson.dumps(identify(BASE, messageId="shared"))
    other = orjson.dumps(identify(BASE, userId="u2", messageId="shared"))
    assert isinstance(h.record(first)[0], ContactUpsert)
    assert isinstance(h.record(other)[0], ContactUpsert)
    assert h.record(other, key=b"u2") == [Drop(Reason.DUPLICATE)]
    assert isinstance(h.record(other, key=b"u3")[0], ContactUpsert)
    # no user key at all: rejected as such, whatever the id
    rejected = h.one({"type": "identify", "messageId": "shared", "traits": BASE})
    assert isinstance(rejected, Reject)
    assert rejected.reason is Reason.INVALID_EVENT


def test_identity_of_names_the_user_key_and_the_profiles_a_record_stitches() -> None:
    """What the audit learns about a record without mapping it: its user key and the keys
    whose profiles mapping it may fold in (anonymousId, an alias's previousId)."""
    mapper = Harness().mapper
    event = identify(BASE, anonymousId="dev-1")
    assert mapper.identity_of(value=orjson.dumps(event), key=None) == ("u1", ("dev-1",))
    assert mapper.identity_of(value=orjson.dumps(event), key=b"crm-1") == ("crm-1", ("dev-1",))
    alias = {"type": "alias", "userId": "u1", "previousId": "old-id", "anonymousId": "u1"}
    assert mapper.identity_of(value=orjson.dumps(alias), key=None) == ("u1", ("old-id",))
    anonymous = {"type": "identify", "anonymousId": "dev-1"}
    assert mapper.identity_of(value=orjson.dumps(anonymous), key=None) == ("dev-1", ())
    assert mapper.identity_of(value=b"{broken", key=b"u1") == ("", ())
    assert mapper.identity_of(value=orjson.dumps({"type": "identify"}), key=None) == ("", ())
    assert mapper.profile("u1") is None  # nothing was mapped


# -- routing -------------------------------------------------------------------------------------


def test_routing_by_topic_and_by_event_field() -> None:
    eu = target("eu", location_id="LOC-EU", routing=Routing(topics=frozenset({"events-eu"})))
    shop = target(
        "shop",
        location_id="LOC-SHOP",
        routing=Routing(field=("context", "app", "name"), values=frozenset({"shop"})),
    )
    both = target(
        "both",
        location_id="LOC-BOTH",
        routing=Routing(
            topics=frozenset({"events-eu"}),
            field=("context", "app", "name"),
            values=frozenset({"shop"}),
        ),
    )
    h = Harness(eu, shop, both)
    shop_event = identify(BASE, context={"app": {"name": "shop"}})
    outcomes = h.record(orjson.dumps(shop_event), topic="events-eu")
    assert [o.integration_id for o in outcomes] == ["eu", "shop", "both"]
    assert [o.payload()["locationId"] for o in outcomes if isinstance(o, ContactUpsert)] == [
        "LOC-EU",
        "LOC-SHOP",
        "LOC-BOTH",
    ]
    assert [o.integration_id for o in h.record(orjson.dumps(shop_event), topic="other")] == ["shop"]
    assert [
        o.integration_id for o in h.record(orjson.dumps(identify(BASE)), topic="events-eu")
    ] == ["eu"]
    assert h.record(orjson.dumps(identify(BASE)), topic="other") == [Drop(Reason.NOT_ROUTED)]
    numeric = identify(BASE, context={"app": {"name": 5}})
    assert h.record(orjson.dumps(numeric), topic="other") == [Drop(Reason.NOT_ROUTED)]


def test_multi_integration_outcomes_differ_per_integration() -> None:
    us = target("us", location_id="LOC-US", default_phone_region="US")
    gb = target(
        "gb",
        location_id="LOC-GB",
        default_phone_region="GB",
        consent_category="email",
        aliases={"lead": PresetEvent.LEAD_GENERATED},
    )
    h = Harness(us, gb)
    context = {"consent": {"canonical": {"marketing": True, "email": False}}}
    outcomes = h.record(orjson.dumps(identify({"phone": "07700 900123"}, context=context)))
    assert isinstance(outcomes[0], Reject)  # not a possible US number: no identifier for "us"
    assert outcomes[0].integration_id == "us"
    assert isinstance(outcomes[1], ContactUpsert)
    assert outcomes[1].payload() == {"locationId": "LOC-GB", "phone": "+447700900123", "dnd": True}
    outcomes = h.record(orjson.dumps(track("lead")))
    assert outcomes[0] == Drop(Reason.NOT_MAPPED, "us")
    assert isinstance(outcomes[1], ContactUpsert)
    assert outcomes[1].payload()["phone"] == "+447700900123"
    # the profile remembers the phone in E.164, parsed with the first region where it is possible
    profile = h.profiles.get("u1")
    assert profile is not None
    assert profile.fields["phone"] == "+447700900123"


# -- bad input -----------------------------------------------------------------------------------


WT, LONG, BAD = OmitReason.WRONG_TYPE, OmitReason.TOO_LONG, OmitReason.INVALID
PHONE = {"phone": "+14155550142"}


@pytest.mark.parametrize(
    ("event", "omitted"),
    [
        (identify({**PHONE, "email": 42}), [("email", WT, "traits.email")]),
        (identify({**BASE, "first_name": {"x": 1}}), [("firstName", WT, "traits.first_name")]),
        (identify({**BASE, "firstName": True}), [("firstName", WT, "traits.firstName")]),
        (identify({**BASE, "company": 12345}), [("companyName", WT, "traits.company")]),
        (identify({**BASE, "address": ["x"]}), [("address1", WT, "traits.address")]),
        (identify({**BASE, "phone": True}), [("phone", WT, "traits.phone")]),
        (identify({**BASE, "postalCode": 94103.5}), [("postalCode", BAD, "traits.postalCode")]),
        (identify(BASE, context={"traits": "x"}), [("traits", WT, "context.traits")]),
        (track("Lead Generated", {**BASE, "source": 5}), [("source", WT, "properties.source")]),
        (
            track("Lead Generated", {**BASE, "lead_tag": ["a", "b"]}),
            [("tags", WT, "properties.lead_tag")],
        ),
        (track("Signed Up", {**PHONE, "email": ["a"]}), [("email", WT, "properties.email")]),
        (identify({**BASE, "name": "x" * 65}), [("name", LONG, "traits.name")]),
        (
            track("Lead Generated", {**BASE, "lead_tag": "t" * 65}),
            [("tags", LONG, "properties.lead_tag")],
        ),
        (identify({**BASE, "birthday": "31/12/1990"}), [("dateOfBirth", BAD, "traits.birthday")]),
        (identify({**BASE, "timezone": "Mars/Base"}), [("timezone", BAD, "traits.timezone")]),
        (
            identify({"email": "nope", "phone": "+1 415 555 0142"}, context={"traits": BASE}),
            [],  # the invalid email falls through to a valid one: nothing is left out
        ),
        (
            identify({"email": 7}, context={"traits": {"email": "nope", **PHONE}}),
            [("email", WT, "traits.email")],  # the first unusable value names the reason
        ),
        (identify({**BASE, "first_name": "  "}), []),  # blank is absent, not invalid
    ],
)
def test_a_bad_field_is_omitted_and_reported_the_event_still_upserts(
    event: dict[str, Any], omitted: list[tuple[str, OmitReason, str]]
) -> None:
    h = Harness(limits=Limits(max_event_bytes=10_000, max_field_chars=64))
    outcome = h.one(event)
    assert isinstance(outcome, ContactUpsert), outcome
    assert [(o.field, o.reason, o.path) for o in outcome.omitted] == omitted
    payload = outcome.payload()
    assert "email" in payload or "phone" in payload
    for item in outcome.omitted:
        if item.field != "traits":
            assert item.field not in payload or item.field in ("email", "phone")


def test_removed_fields_are_not_reported_as_omitted() -> None:
    h = Harness(target(removed_fields=frozenset({"firstName", "dnd"})))
    outcome = h.one(identify({**BASE, "firstName": True}, context={"consent": "x"}))
    assert isinstance(outcome, ContactUpsert)
    assert outcome.omitted == ()


def test_omitted_fields_merge_without_repeats() -> None:
    h = Harness()
    first = h.one(identify({**BASE, "firstName": True}))
    second = h.one(identify({**BASE, "firstName": True, "gender": 1}))
    assert isinstance(first, ContactUpsert)
    assert isinstance(second, ContactUpsert)
    assert [o.field for o in first.merged_with(second).omitted] == ["firstName", "gender"]


@pytest.mark.parametrize(
    "context_traits",
    [{"email": 42}, {"firstName": True, "company": 1}, {"consent": "x"}, "not an object"],
)
@pytest.mark.parametrize(
    "event",
    [{"type": "page", "userId": "u1"}, {"type": "track", "userId": "u1", "event": "Viewed"}],
)
def test_an_event_that_maps_to_nothing_is_not_mapped_whatever_its_traits_hold(
    event: dict[str, Any], context_traits: object
) -> None:
    outcome = Harness().one({**event, "context": {"traits": context_traits, "consent": "?"}})
    assert outcome == Drop(Reason.NOT_MAPPED, "default")


def test_record_level_rejects_from_decode() -> None:
    h = Harness()
    assert h.record(b"{")[0].reason is Reason.INVALID_JSON  # type: ignore[union-attr]
    assert h.record(b"[]")[0] == Reject(Reason.NOT_AN_OBJECT, "expected a JSON object, got array")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_yield_exactly_one_outcome(value: bytes) -> None:
    outcomes = Harness().record(value)
    assert len(outcomes) == 1


_json_leaf = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
)
_json = st.recursive(
    _json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_trait_keys = st.sampled_from(
    [
        "email",
        "phone",
        "first_name",
        "lastName",
        "name",
        "company",
        "address",
        "city",
        "postal_code",
        "country",
        "website",
        "firstname",
        "Phone",
        "zip",
        "birthday",
        "timezone",
        "gender",
    ]
)
_good_values = st.sampled_from(
    [
        "a@example.com",
        " B@Example.com",
        "+44 7700 900123",
        "(415) 555-0142",
        "GB",
        "us",
        "x",
        "",
        "1990-09-25",
        "Europe/London",
    ]
)
# Mostly well-formed, sometimes junk: both the upsert path and every reject path get exercised.
_trait_values = st.one_of(_good_values, _good_values, _good_values, st.text(max_size=12), _json)
_traits = st.one_of(
    st.dictionaries(_trait_keys, _trait_values, max_size=5),
    st.dictionaries(_trait_keys, _good_values, max_size=5),
    _json,
)
_consent = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "canonical": st.dictionaries(st.just("marketing"), st.booleans()),
            "categories": st.dictionaries(st.just("marketing"), st.booleans()),
            "marketing": st.sampled_from([True, False, "granted", "denied"]),
            "categoryPreferences": st.dictionaries(st.just("marketing"), st.booleans()),
        },
    ),
    _json,
)
_good_events = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["identify", "track", "page", "group"]),
        "userId": st.sampled_from(["u1", "u2"]),
        "event": st.sampled_from(["Signed Up", "Lead Generated", "Identified", "x"]),
        "traits": st.fixed_dictionaries(
            {"email": _good_values},
            optional={k: _good_values for k in ("phone", "first_name", "country", "address")},
        ),
    },
    optional={
        "messageId": st.sampled_from(["m1", "m2", "m3", "m4"]),
        "properties": st.dictionaries(
            _trait_keys | st.sampled_from(["source", "method", "lead_tag"]), _good_values
        ),
        "context": st.fixed_dictionaries(
            {},
            optional={
                "traits": st.dictionaries(_trait_keys, _good_values, max_size=3),
                "consent": _consent,
            },
        ),
    },
)
_junk_events = st.fixed_dictionaries(
    {
        "type": st.one_of(
            st.sampled_from(["identify", "track", "page", "group"]), st.just("nope"), _json_leaf
        )
    },
    optional={
        "userId": st.one_of(st.just("u1"), st.just("u2"), _json_leaf),
        "messageId": st.sampled_from(["m1", "m2"]),
        "event": st.one_of(
            st.sampled_from(["Signed Up", "Lead Generated", "Identified", "x"]), _json_leaf
        ),
        "traits": _traits,
        "properties": st.dictionaries(
            _trait_keys | st.sampled_from(["source", "method", "lead_tag"]), _trait_values
        ),
        "context": st.fixed_dictionaries(
            {}, optional={"traits": _traits, "consent": _consent, "consentManagement": _json}
        ),
    },
)
_events = st.one_of(_good_events, _junk_events)


@settings(max_examples=300, deadline=None)
@given(st.lists(_events, min_size=1, max_size=4))
def test_event_shaped_input_never_raises_and_payloads_are_schema_valid(
    events: list[dict[str, Any]],
) -> None:
    h = Harness(target(default_phone_region="US"))
    for event in events:
        # json, not orjson: hypothesis makes integers beyond 64 bits, which orjson cannot write
        outcomes = h.record(json.dumps(event).encode())
        assert len(outcomes) == 1
        outcome = outcomes[0]
        if isinstance(outcome, ContactUpsert):
            assert "email" in outcome.fields or "phone" in outcome.fields


def test_build_mapper_uses_the_store_it_is_given_even_an_empty_one() -> None:
    from consumer.config import load_settings
    from consumer.core.mapping import build_mapper
    from consumer.core.profiles import ChangelogProfileStore

    store = ChangelogProfileStore()
    settings = load_settings(None, {"GHL_LOCATION_ID": "L", "GHL_ACCESS_TOKEN": "t"})
    mapper = build_mapper(settings.targets(), settings.mapping.options(), store)
    mapper.map_record(
        value=orjson.dumps(identify({"email": "sam@example.com"})), key=None, topic="events", now=0
    )
    assert store.get("u1") is not None
    assert store.take_writes()


def test_an_oauth_target_takes_its_location_from_the_event() -> None:
    harness = Harness(target(location_id="", location_path=("context", "groupId")))
    event = {"type": "identify", "userId": "u1", "traits": {"email": "ada@example.com"}}
    chosen = harness.one({**event, "context": {"groupId": " loc-7 "}})
    assert isinstance(chosen, ContactUpsert)
    assert chosen.location_id == "loc-7"
    assert chosen.payload()["locationId"] == "loc-7"
    for context in ({}, {"groupId": ""}, {"groupId": 7}):
        rejected = harness.one({**event, "userId": "u2", "context": context})
        assert rejected == Reject(
            Reason.UNKNOWN_LOCATION,
            "context.groupId: expected a location id (a non-empty string)",
            "default",
        )
