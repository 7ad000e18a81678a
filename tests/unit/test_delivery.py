"""Status -> verdict classification (docs/architecture.md, "Delivery verdicts and retries")."""

from __future__ import annotations

import pytest

from consumer.highlevel.verdicts import Verdict, classify, ignored_fields


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


def test_an_answer_reflecting_everything_sent_ignores_nothing() -> None:
    contact = {
        "id": "c1",
        "email": "sam@example.com",
        "phone": "+1 415-555-0142",
        "firstName": "Sam",
        "tags": ["old", "lead"],
        "dnd": False,
        "customFields": [{"id": "f1", "value": "pro"}],
    }
    assert ignored_fields(SENT, contact) == []


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
