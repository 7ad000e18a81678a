"""ContactUpsert: exact payload shape, schema-only fields, coalescing (merged_with)."""

from __future__ import annotations

import pytest

from consumer.core.events import ContactUpsert, Reason, TagMode
from tests.unit.upsert_schema import validate_payload


def upsert(**overrides: object) -> ContactUpsert:
    values: dict[str, object] = {
        "integration_id": "default",
        "location_id": "LOC",
        "contact_key": "u1",
        "fields": {"email": "a@example.com"},
    }
    values.update(overrides)
    return ContactUpsert(**values)  # type: ignore[arg-type]


def test_payload_has_location_first_and_only_fields_with_values() -> None:
    contact = upsert(
        fields={"dnd": True, "source": "Form", "phone": "+14155550142", "email": "a@example.com"},
        tags=("t1", "t2"),
        custom_fields={"f1": "x", "f2": 3, "f3": ("a", "b")},
    )
    payload = contact.payload()
    assert payload == {
        "locationId": "LOC",
        "email": "a@example.com",
        "phone": "+14155550142",
        "source": "Form",
        "tags": ["t1", "t2"],
        "dnd": True,
        "customFields": [
            {"id": "f1", "field_value": "x"},
            {"id": "f2", "field_value": 3},
            {"id": "f3", "field_value": ["a", "b"]},
        ],
    }
    assert list(payload) == [
        "locationId",
        "email",
        "phone",
        "source",
        "tags",
        "dnd",
        "customFields",
    ]
    validate_payload(payload)


def test_payload_omits_empty_tags_and_custom_fields_and_false_is_a_value() -> None:
    assert upsert(fields={"email": "a@example.com", "dnd": False}).payload() == {
        "locationId": "LOC",
        "email": "a@example.com",
        "dnd": False,
    }


def test_tag_mode_add_moves_tags_out_of_the_body() -> None:
    contact = upsert(tags=("t",), tag_mode=TagMode.ADD)
    assert "tags" not in contact.payload()
    assert contact.tags_to_add() == ("t",)
    assert upsert(tags=("t",)).tags_to_add() == ()


def test_fields_outside_the_schema_are_refused() -> None:
    with pytest.raises(ValueError, match="additionalEmails"):
        upsert(fields={"email": "a@example.com", "additionalEmails": "b@example.com"})


def test_fields_cannot_be_changed_after_construction() -> None:
    source = {"email": "a@example.com"}
    contact = upsert(fields=source)
    source["email"] = "changed@example.com"
    assert contact.fields["email"] == "a@example.com"
    with pytest.raises(TypeError):
        contact.fields["email"] = "x"  # type: ignore[index]


def test_merged_with_newest_field_wins_tags_union_custom_by_id() -> None:
    older = upsert(
        fields={"email": "a@example.com", "firstName": "Old", "dnd": False},
        tags=("a", "b"),
        custom_fields={"f1": "old", "f2": 1},
    )
    newer = upsert(
        fields={"email": "a@example.com", "firstName": "New", "source": "Form"},
        tags=("b", "c", "c"),
        custom_fields={"f2": 2, "f3": "new"},
    )
    merged = older.merged_with(newer)
    assert dict(merged.fields) == {
        "email": "a@example.com",
        "firstName": "New",
        "dnd": False,
        "source": "Form",
    }
    assert merged.tags == ("a", "b", "c")
    assert dict(merged.custom_fields) == {"f1": "old", "f2": 2, "f3": "new"}
    assert (merged.integration_id, merged.contact_key) == ("default", "u1")


@pytest.mark.parametrize(
    "other",
    [
        {"integration_id": "other"},
        {"location_id": "OTHER"},
        {"contact_key": "u2"},
        {"tag_mode": TagMode.ADD},
    ],
)
def test_merged_with_refuses_another_contact(other: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="different"):
        upsert().merged_with(upsert(**other))


def test_reasons_are_a_small_closed_set() -> None:
    assert {r.value for r in Reason} >= {
        "not_mapped",
        "duplicate",
        "invalid_json",
        "invalid_event",
        "no_identifier",
    }
    assert len(Reason) <= 16


def test_merged_with_keeps_the_names_of_folded_events_which_never_reach_the_payload() -> None:
    merged = upsert(events=("identify",)).merged_with(upsert(events=("Lead Generated",)))
    assert merged.events == ("identify", "Lead Generated")
    assert "events" not in merged.payload()
    assert upsert(events=("identify",)) == upsert(events=("page",))  # provenance, not value
