"""Status -> verdict classification (docs/architecture.md, "Delivery verdicts and retries")."""

from __future__ import annotations

import pytest

from consumer.highlevel.verdicts import (
    Answer,
    Verdict,
    classify,
    custom_value_applied,
    ignored_fields,
    permanent_dnd_refusal,
    tags_applied,
)


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, Verdict.DELIVERED),
        (201, Verdict.DELIVERED),
        (429, Verdict.RATE_LIMITED),
        (500, Verdict.RETRY),
        (502, Verdict.RETRY),
        (503, Verdict.RETRY),
        (504, Verdict.RETRY),
        (None, Verdict.RETRY),
        (408, Verdict.RETRY),
        (401, Verdict.UNAUTHORIZED),
        (403, Verdict.UNAUTHORIZED),
        (400, Verdict.REJECTED),
        (404, Verdict.REJECTED),
        (422, Verdict.REJECTED),
    ],
)
def test_every_answer_has_the_verdict_design_md_gives_it(
    status: int | None, verdict: Verdict
) -> None:
    assert classify(status) is verdict


SENT = {
    "locationId": "L",
    "email": "Sam@Example.com",
    "phone": "+14155550142",
    "firstName": "Sam",
    "tags": ["lead"],
    "dnd": False,
    "customFields": [{"id": "f1", "field_value": "pro"}],
}


CONTACT = {
    "id": "c1",
    "email": "sam@example.com",
    "phone": "+1 415-555-0142",
    "firstName": "Sam",
    "tags": ["old", "lead"],
    "dnd": False,
    "customFields": [{"id": "f1", "value": "pro"}],
}


def test_an_answer_reflecting_everything_sent_ignores_nothing() -> None:
    assert ignored_fields(SENT, CONTACT) == []


def test_fields_highlevel_did_not_apply_are_named() -> None:
    contact = {
        "email": "sam@example.com",
        "phone": "+14155550199",  # the phone belongs to another contact: not applied
        "firstName": "Sam",
        "tags": [],
        "dnd": True,
        "customFields": [],
    }
    assert ignored_fields(SENT, contact) == ["phone", "tags", "dnd", "customFields"]


def test_no_contact_in_the_answer_ignores_nothing() -> None:
    assert ignored_fields(SENT, None) == []


def test_tags_compare_as_highlevel_stores_them_trimmed_and_lowercased() -> None:
    sent = {**SENT, "tags": [" VIP ", "Website-Lead"]}
    assert ignored_fields(sent, {**CONTACT, "tags": ["vip", "website-lead", "old"]}) == []
    assert ignored_fields(sent, {**CONTACT, "tags": ["vip"]}) == ["tags"]
    assert tags_applied(["A"], ["a"])
    assert tags_applied([], None)
    assert not tags_applied(["a"], None)
    assert not tags_applied(["a b"], ["ab"])


@pytest.mark.parametrize(
    ("sent", "got"),
    [
        ("pro", "pro"),
        (12, 12),
        ("12", 12),  # NUMERICAL parses numeric text
        (" 12 ", 12),
        ("100.50", 100.5),  # MONETORY
        (12, "12"),  # TEXT writes a number as its text
        (100.5, "100.5"),
        (12.0, "12"),
        ("gold", ["gold"]),  # CHECKBOX / MULTIPLE_OPTIONS: one string, one-item list
        (["gold", "silver"], ["gold", "silver"]),
        ("03/05/2024", "2024-03-05"),  # DATE, dateOfBirth formats
        ("2024.03.05", "2024-03-05"),
        (1709596800000, "2024-03-05"),  # epoch milliseconds
    ],
)
def test_custom_values_converted_by_highlevel_count_as_applied(sent: object, got: object) -> None:
    assert custom_value_applied(sent, got)
    body = {"locationId": "L", "customFields": [{"id": "f", "field_value": sent}]}
    assert ignored_fields(body, {"customFields": [{"id": "f", "value": got}]}) == []


@pytest.mark.parametrize(
    ("sent", "got"),
    [
        ("pro", "free"),
        ("pro", None),  # dropped: the location has no such field
        ("Gold", "gold"),  # picklists are never respelt
        ("Gold", ["gold"]),
        ("12", 13),
        ("12abc", 12),
        (True, 1),
        (True, "true"),
        (["a", "b"], ["a"]),
        ("03/05/2024", "2024-05-03"),
        ("not a date", "2024-03-05"),
        ("2024-02-30", "2024-03-01"),
    ],
)
def test_custom_values_highlevel_did_not_keep_are_not_applied(sent: object, got: object) -> None:
    assert not custom_value_applied(sent, got)


def _answer(status: int, message: str) -> Answer:
    return Answer(verdict=classify(status), status=status, latency_s=0.0, message=message)


def test_the_permanent_dnd_refusal_is_recognised_by_status_and_message() -> None:
    refusal = "Not authorized to update permanent dnd setting for SMS"
    assert permanent_dnd_refusal(_answer(400, refusal)) == "SMS"
    assert permanent_dnd_refusal(_answer(400, refusal.replace("SMS", "Email"))) == "Email"
    assert permanent_dnd_refusal(_answer(422, refusal)) is None
    assert permanent_dnd_refusal(_answer(400, "email must be an email")) is None
    assert permanent_dnd_refusal(_answer(200, "")) is None
