"""Upsert/tags validation with HighLevel's 400/422 answers, and the sandbox settings values."""

from __future__ import annotations

from typing import Any

import pytest

from consumer.sandbox.schema import (
    BadRequest,
    Unprocessable,
    parse_object,
    validate_tags,
    validate_upsert,
)
from consumer.sandbox.settings import DuplicateSettings, FaultKind, Faults, RateLimits
from tests.harness.guide import GUIDE_UPSERT

LOC = {"locationId": "ve9EPM428h8vShlRW1KT"}


def messages(body: dict[str, Any]) -> list[str]:
    with pytest.raises(Unprocessable) as caught:
        validate_upsert(body)
    return caught.value.messages


def test_the_guide_payload_is_accepted_unchanged() -> None:
    body = {**GUIDE_UPSERT, **LOC}
    assert validate_upsert(body) == body


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ("+44 7700 900123", "+447700900123"),  # the guide's example: reserved range, possible
        ("+1 888-888-8888", "+18888888888"),  # the spec's example
        ("(415) 555-0142", "+14155550142"),  # no country code: read as a US number
    ],
)
def test_phone_is_stored_in_e164(sent: str, stored: str) -> None:
    assert validate_upsert({**LOC, "phone": sent})["phone"] == stored


@pytest.mark.parametrize("phone", ["12", "not a phone", "+44 12", 4155550142])
def test_impossible_phone_is_422(phone: Any) -> None:
    assert messages({**LOC, "phone": phone}) == ["phone must be a valid phone number"]


@pytest.mark.parametrize("email", ["sam", "sam@", "sam@example", "sam @example.com", "", 7])
def test_malformed_email_is_422(email: Any) -> None:
    assert messages({**LOC, "email": email, "phone": "+14155550142"}) == ["email must be an email"]


def test_unknown_properties_and_wrong_types_are_all_reported() -> None:
    body = {
        **LOC,
        "email": "sam@example.com",
        "additionalEmails": ["x@example.com"],
        "firstName": 5,
        "dnd": "yes",
        "tags": "vip",
        "fieldId": "x",
    }
    assert messages(body) == [
        "property additionalEmails should not exist",
        "firstName must be a string",
        "dnd must be a boolean value",
        "tags must be an array",
        "property fieldId should not exist",
    ]
    assert messages({**LOC, "email": "a@b.co", "tags": ["ok", 1]}) == [
        "each value in tags must be a string"
    ]


def test_location_id_is_required() -> None:
    assert messages({"email": "sam@example.com"}) == [
        "locationId must be a string",
        "locationId should not be empty",
    ]
    assert messages({"locationId": "", "email": "sam@example.com"}) == [
        "locationId should not be empty"
    ]


def test_an_upsert_without_email_or_phone_is_422() -> None:
    assert messages({**LOC, "firstName": "Sam"}) == ["email or phone must be provided"]
    assert messages({**LOC, "email": None, "phone": None}) == ["email or phone must be provided"]


def test_null_is_kept_on_nullable_fields_and_dropped_elsewhere() -> None:
    payload = validate_upsert({**LOC, "email": "a@b.co", "city": None, "tags": None, "dnd": None})
    assert payload == {**LOC, "email": "a@b.co", "city": None}


def test_dnd_settings_are_checked_per_channel() -> None:
    ok = {
        "Email": {"status": "active", "message": "m", "code": "103"},
        "SMS": {"status": "inactive"},
    }
    assert validate_upsert({**LOC, "email": "a@b.co", "dndSettings": ok})["dndSettings"] == ok
    bad = {"RCS": {"status": "active"}, "Call": {"status": "off", "extra": 1}}
    assert messages({**LOC, "email": "a@b.co", "dndSettings": bad}) == [
        "property dndSettings.RCS should not exist",
        "property dndSettings.Call.extra should not exist",
        "dndSettings.Call.status must be one of the following values: active, inactive, permanent",
    ]
    inbound = {"all": {"status": "permanent"}}
    assert messages({**LOC, "email": "a@b.co", "inboundDndSettings": inbound}) == [
        "inboundDndSettings.all.status must be one of the following values: active, inactive"
    ]


def test_custom_fields_accept_both_value_spellings_and_ignore_items_without_value() -> None:
    fields = [
        {"id": "f1", "field_value": "text"},
        {"id": "f2", "fieldValue": ["a", "b"]},
        {"id": "f3", "key": "my_field", "field_value": 100.5},
        {"id": "f4", "value": "ignored: not a value key"},
    ]
    payload = validate_upsert({**LOC, "email": "a@b.co", "customFields": fields})
    assert payload["customFields"] == [("f1", "text"), ("f2", ["a", "b"]), ("f3", 100.5)]
    assert messages({**LOC, "email": "a@b.co", "customFields": [{"field_value": "x"}]}) == [
        "customFields.0.id must be a string"
    ]
    assert messages({**LOC, "email": "a@b.co", "customFields": {"id": "f1"}}) == [
        "customFields must be an array"
    ]


@pytest.mark.parametrize(
    "sent", ["1990-09-25", "1990/09/25", "09/25/1990", "09-25-1990", "1990.09.25", "09_25_1990"]
)
def test_date_of_birth_formats_are_normalised(sent: str) -> None:
    assert validate_upsert({**LOC, "email": "a@b.co", "dateOfBirth": sent})["dateOfBirth"] == (
        "1990-09-25"
    )


@pytest.mark.parametrize("sent", ["25/09/1990", "1990-13-01", "1990-09/25", 19900925])
def test_invalid_date_of_birth_is_422(sent: Any) -> None:
    assert messages({**LOC, "email": "a@b.co", "dateOfBirth": sent}) == [
        "dateOfBirth must be a valid date"
    ]


@pytest.mark.parametrize("raw", [b"", b"{", b"[1]", b'"text"', b"null"])
def test_a_body_that_is_not_a_json_object_is_400(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_object(raw)


def test_tags_body() -> None:
    assert validate_tags({"tags": ["a", "b"]}) == ["a", "b"]
    with pytest.raises(Unprocessable) as caught:
        validate_tags({"tag": ["a"]})
    assert caught.value.messages == ["property tag should not exist", "tags must be an array"]


# -- settings -----------------------------------------------------------------------------


def test_fault_draws_map_to_kinds_in_proportion() -> None:
    faults = Faults(hang_rate=0.1, fail_rate=0.2, reset_rate=0.3)
    assert [faults.pick(d) for d in (0.05, 0.11, 0.29, 0.31, 0.59, 0.61, 0.99)] == [
        FaultKind.HANG,
        FaultKind.FAIL,
        FaultKind.FAIL,
        FaultKind.RESET,
        FaultKind.RESET,
        FaultKind.NONE,
        FaultKind.NONE,
    ]
    assert not Faults().active
    assert Faults(latency_ms=5).active


@pytest.mark.parametrize(
    "changes",
    [
        {"failRate": 1.5},
        {"failRate": 0.6, "hangRate": 0.6},
        {"failStatus": 404},
        {"latencyMs": -1},
        {"failRate": "0.5"},
        {"unknown": 1},
    ],
)
def test_invalid_fault_changes_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"."):
        Faults().updated(changes)


def test_settings_update_from_camel_case_json() -> None:
    assert RateLimits().updated({"burst": 5, "enforced": False}) == RateLimits(
        burst=5, enforced=False
    )
    assert Faults().updated({"failRate": 1, "latencyMs": 20}).to_json() == {
        "failRate": 1.0,
        "failStatus": 500,
        "latencyMs": 20.0,
        "hangRate": 0.0,
        "resetRate": 0.0,
    }
    assert DuplicateSettings().updated({"priority": ["phone"]}).priority == ("phone",)
    for bad in ({"burst": 0}, {"burst": True}, {"intervalMs": 1.5}):
        with pytest.raises(ValueError, match=r"."):
            RateLimits().updated(bad)
    for bad_priority in ([], ["email", "email"], ["name"], "email"):
        with pytest.raises(ValueError, match=r"."):
            DuplicateSettings().updated({"priority": bad_priority})
    assert DuplicateSettings().updated({"raceWindowMs": 50}).to_json() == {
        "allowDuplicates": False,
        "priority": ["email", "phone"],
        "raceWindowMs": 50.0,
    }
    with pytest.raises(ValueError, match="raceWindowMs"):
        DuplicateSettings().updated({"raceWindowMs": -1})
