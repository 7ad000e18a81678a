"""``bench/bench_fidelity.py``'s core on payloads of our own (never the third-party corpus), so
the fidelity report cannot silently rot: counting through the real mapper, and each definition
(wrong-country phones, identity misses, crashes, schema failures) through fake mappers whose
outcomes are fixed, so these tests hold whatever the mapping rules become."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from bench.bench_fidelity import (
    REGIONS,
    Line,
    MapLine,
    fresh_mapper_per_event,
    measure,
    omissions,
    read_corpus,
    resolve_country,
)
from bench.report import fidelity_section
from consumer.core.events import ContactUpsert, Outcome, Reason, Reject

LOCATION = "ve9EPM428h8vShlRW1KT"


def lines(*events: dict[str, Any] | bytes) -> list[Line]:
    return [
        Line("own", number, e if isinstance(e, bytes) else orjson.dumps(e))
        for number, e in enumerate(events, 1)
    ]


def upsert(**fields: Any) -> ContactUpsert:
    return ContactUpsert(
        integration_id="default", location_id=LOCATION, contact_key="u1", fields=fields
    )


def fixed(*outcomes: Outcome) -> MapLine:
    """A mapper that answers every line with ``outcomes``."""

    def map_line(_value: bytes) -> Sequence[Outcome]:
        return outcomes

    return map_line


NO_IDENTIFIER = Reject(Reason.NO_IDENTIFIER, "neither a usable email nor phone", "default")


def identify(**traits: Any) -> dict[str, Any]:
    return {"type": "identify", "userId": "u1", "traits": traits}


def test_the_real_mapper_counts_actions_fields_and_identity_events_per_run() -> None:
    runs = measure(
        lines(
            identify(email="sam@example.com", first_name="Sam"),
            {"type": "page", "userId": "u1", "name": "Home"},
            b"{not json",
            {"type": "track", "userId": "u1", "event": "Lead Generated",
             "properties": {"email": "kim@example.com"}},
            {"type": "track", "userId": "u1", "event": "Signed Up"},
        ),
        {region: fresh_mapper_per_event(region) for region in REGIONS},
    )
    assert set(runs) == {"none", "US"}
    for run in runs.values():
        assert run["actions"]["by_file"]["own"] == {
            "upsert": 2, "drop: not_mapped": 1, "reject: invalid_json": 1,
            "reject: no_identifier": 1,
        }
        assert run["totals"] == {
            "events": 5, "upserts": 2, "drops": 1, "rejects": 2, "crashes": 0,
            "schema_failures": 0, "wrong_country_phones": 0, "identity_misses": 0,
            "identity_misses_to_fix": 0,
        }
        assert run["fields"]["email"] == 2
        assert run["fields"]["firstName"] == 1
        assert "locationId" not in run["fields"]
        identity = run["identity"]
        assert (identity["events"], identity["with_usable_email_or_phone"]) == (3, 2)
        assert identity["upserted"] == 2


def test_a_phone_given_the_default_regions_code_against_the_stated_country_is_listed() -> None:
    event = identify(phone="9876543212", country="India")
    runs = measure(
        lines(event), {None: fixed(NO_IDENTIFIER), "US": fixed(upsert(phone="+19876543212"))}
    )
    assert runs["US"]["wrong_country_phones"] == [
        {"event": "own:1", "phone": "+1******3212", "stated_country": "India",
         "kind": "calling_code"}
    ]
    assert runs["none"]["wrong_country_phones"] == []
    # India names the region, so the national number is usable: not upserting it is a miss
    miss = runs["none"]["identity"]["misses"][0]
    assert (miss["reason"], miss["class"], miss["found"]) == (
        "reject: no_identifier", "to_fix", ["traits.phone"]
    )


def test_a_phone_the_sender_wrote_with_its_own_country_code_is_not_listed() -> None:
    event = identify(phone="+1 415 555 0142", country="IN")
    runs = measure(lines(event), {None: fixed(upsert(phone="+14155550142")),
                                  "US": fixed(upsert(phone="+14155550142"))})
    assert all(run["wrong_country_phones"] == [] for run in runs.values())


def test_the_default_region_used_although_the_event_names_another_country_is_listed() -> None:
    guessed = fixed(upsert(phone="+14155550142"))
    runs = measure(
        lines(identify(phone="415 555 0142", country="Atlantis"),
              identify(phone="415 555 0142")),
        {None: fixed(NO_IDENTIFIER), "US": guessed},
    )
    # the first names a country (unknown); the second names none, where the default applies
    assert [w["event"] for w in runs["US"]["wrong_country_phones"]] == ["own:1"]
    assert runs["US"]["wrong_country_phones"][0]["kind"] == "default_region"
    # the same phone upserted with no default region was not the default region's doing
    runs = measure(
        lines(identify(phone="415 555 0142", country="Atlantis")), {None: guessed, "US": guessed}
    )
    assert runs["US"]["wrong_country_phones"] == []


def test_a_crash_is_counted_and_listed_and_the_other_run_goes_on() -> None:
    def crash(_value: bytes) -> Sequence[Outcome]:
        raise KeyError("boom")

    runs = measure(lines(identify(email="sam@example.com")),
                   {None: fixed(upsert(email="sam@example.com")), "US": crash})
    assert runs["US"]["crashes"] == [{"event": "own:1", "error": "KeyError: 'boom'"}]
    assert runs["US"]["actions"]["total"] == {"crash": 1}
    assert runs["US"]["identity"]["misses"][0]["reason"] == "crash"
    assert runs["none"]["totals"]["upserts"] == 1
    assert runs["none"]["totals"]["crashes"] == 0


def test_a_payload_that_breaks_the_schema_is_listed_without_its_values() -> None:
    runs = measure(lines(identify(email="sam@example.com")),
                   {None: fixed(upsert(email="sam@example.com", dnd="yes"))})
    assert runs["none"]["schema_failures"] == [{"event": "own:1", "errors": ["dnd: type"]}]


@pytest.mark.parametrize(
    ("event", "outcome", "kind"),
    [
        (identify(Email="sam@example.com"), NO_IDENTIFIER, "to_fix"),
        ({"type": "Identify", "userId": "u1", "traits": {"email": "sam@example.com"}},
         Reject(Reason.UNKNOWN_TYPE, "type"), "to_fix"),
        ({"type": "identify", "traits": {"email": "sam@example.com"}},
         Reject(Reason.INVALID_EVENT, "no user"), "envelope"),
        (identify(user_name="sam@example.com"), NO_IDENTIFIER, "elsewhere"),
        (identify(refiner_email="sam@example.com"), NO_IDENTIFIER, "elsewhere"),
        (identify(Email_Address="sam@example.com"), NO_IDENTIFIER, "to_fix"),
        (identify(emails=[{"email": "sam@example.com"}]), NO_IDENTIFIER, "elsewhere"),
        ({"type": "identify", "userId": "u1", "properties": {"email": "sam@example.com"}},
         NO_IDENTIFIER, "elsewhere"),
        ({"type": "track", "userId": "u1", "event": "Signed Up",
          "properties": {"email": "mailto:sam@example.com"}}, NO_IDENTIFIER, "to_fix"),
    ],
)
def test_identity_misses_are_classed(event: dict[str, Any], outcome: Outcome, kind: str) -> None:
    runs = measure(lines(event), {None: fixed(outcome)})
    (miss,) = runs["none"]["identity"]["misses"]
    assert miss["class"] == kind
    assert runs["none"]["totals"]["identity_misses_to_fix"] == (kind == "to_fix")


@pytest.mark.parametrize(
    "event",
    [
        identify(email="not an email", phone="12"),  # nothing usable
        identify(phone="415 555 0142"),  # national, and no region to read it with
        {"type": "page", "userId": "u1", "properties": {"email": "sam@example.com"}},
        {"type": "track", "userId": "u1", "event": "Order Completed",
         "properties": {"email": "sam@example.com"}},
    ],
)
def test_no_miss_without_a_usable_value_or_an_identity_event(event: dict[str, Any]) -> None:
    runs = measure(lines(event), {None: fixed(NO_IDENTIFIER)})
    assert runs["none"]["identity"]["misses"] == []


def test_omissions_reads_pairs_or_objects_and_tolerates_outcomes_without_them() -> None:
    outcome = SimpleNamespace(
        omitted=[("dateOfBirth", "invalid"), SimpleNamespace(field="timezone", reason="invalid")]
    )
    assert omissions(outcome) == [("dateOfBirth", "invalid"), ("timezone", "invalid")]
    assert omissions(upsert(email="sam@example.com")) == []


def test_stated_countries_resolve_by_code_name_and_alias() -> None:
    assert [resolve_country(c) for c in ("India", " usa", "GBR", "UK", "de", "Atlantis")] == [
        "IN", "US", "GB", "GB", "DE", None
    ]


def test_the_corpus_is_every_jsonl_but_provenance(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_corpus(tmp_path)
    (tmp_path / "a.jsonl").write_bytes(b'{"type": "page"}\n\n{"type": "track"}\n')
    (tmp_path / "a.provenance.jsonl").write_bytes(b'{"line": 1}\n{"line": 2}\n')
    found, files = read_corpus(tmp_path)
    assert [(line.where, line.value) for line in found] == [
        ("a:1", b'{"type": "page"}'), ("a:2", b'{"type": "track"}')
    ]
    assert files["a"]["events"] == 2


def test_the_report_section_renders_every_table() -> None:
    runs = measure(
        lines(identify(phone="9876543212", country="India"), identify(Email="sam@example.com")),
        {None: fixed(NO_IDENTIFIER), "US": fixed(upsert(phone="+19876543212"))},
    )
    doc = {"events": 2, "runs": runs, "met": False, "command": "cmd",
           "corpus": {"directory": "x", "files": {"own": {"events": 2}}}}
    text = "\n".join(fidelity_section(doc))
    for heading in ("Outcomes by file", "Identity fields recovered", "Fields omitted",
                    "Wrong-country phones", "did not upsert", "**NOT met**"):
        assert heading in text
    assert "| default region US | own:1 | +1******3212 | India | calling_code |" in text
