"""Custom field definitions in the sandbox: unknown ids dropped, values converted by type,
picklists checked (callers' live reports; the rules in consumer/sandbox/custom_fields)."""

from __future__ import annotations

from typing import Any

import pytest

from consumer.sandbox.custom_fields import FieldDefinition, convert, parse_definitions
from consumer.sandbox.schema import Unprocessable

DEFINITIONS = parse_definitions(
    [
        {"id": "txt", "fieldKey": "contact.note", "dataType": "TEXT"},
        {"id": "num", "dataType": "NUMERICAL"},
        {"id": "money", "dataType": "MONETORY"},
        {"id": "plan", "dataType": "SINGLE_OPTIONS", "picklistOptions": ["Gold", "Silver"]},
        {"id": "langs", "dataType": "CHECKBOX", "picklistOptions": ["en", "de", "fr"]},
        {"id": "born", "dataType": "DATE"},
        {"id": "files", "dataType": "FILE_UPLOAD", "position": 3},  # other keys are ignored
    ]
)


@pytest.mark.parametrize(
    ("field_id", "sent", "stored"),
    [
        ("txt", "hello", "hello"),
        ("txt", 100, "100"),
        ("txt", 100.5, "100.5"),
        ("num", "42", 42),
        ("num", 42.0, 42),
        ("num", " 7.25 ", 7.25),
        ("money", "100.50", 100.5),
        ("money", 100, 100),
        ("plan", "Gold", "Gold"),
        ("langs", ["en", "fr"], ["en", "fr"]),
        ("langs", "de", ["de"]),
        ("born", "09/25/1990", "1990-09-25"),
        ("born", "1990.09.25", "1990-09-25"),
        ("born", 654_220_800_000, "1990-09-25"),  # epoch milliseconds
        ("files", {"url": "x"}, {"url": "x"}),
    ],
)
def test_values_are_converted_by_type(field_id: str, sent: Any, stored: Any) -> None:
    assert DEFINITIONS is not None
    assert convert(DEFINITIONS, [(field_id, sent)]) == ([(field_id, stored)], ())


def test_unknown_ids_are_dropped_silently_and_the_rest_kept() -> None:
    assert DEFINITIONS is not None
    kept, dropped = convert(DEFINITIONS, [("nope", "x"), ("num", "1"), ("gone", 2)])
    assert kept == [("num", 1)]
    assert dropped == ("nope", "gone")


@pytest.mark.parametrize(
    ("field_id", "sent", "message"),
    [
        ("num", "forty-two", "customFields.num must be a number"),
        ("money", "NaN", "customFields.money must be a number"),
        ("num", ["1"], "customFields.num must be a number"),
        ("txt", ["a"], "customFields.txt must be a string"),
        ("plan", "gold", "customFields.plan must be one of: Gold, Silver"),  # exact spelling
        ("langs", ["en", "es"], "customFields.langs must be a list of: en, de, fr"),
        ("born", "25.09.90", "customFields.born must be a valid date"),
    ],
)
def test_values_the_type_refuses_are_422(field_id: str, sent: Any, message: str) -> None:
    assert DEFINITIONS is not None
    with pytest.raises(Unprocessable) as refused:
        convert(DEFINITIONS, [(field_id, sent), ("num", 1)])
    assert refused.value.messages == [message]


@pytest.mark.parametrize(
    "value",
    [
        {"id": "x"},
        [{"id": "x", "dataType": "COLOUR"}],
        [{"id": "", "dataType": "TEXT"}],
        [{"id": "x", "dataType": "TEXT"}, {"id": "x", "dataType": "DATE"}],
        [{"id": "x", "dataType": "RADIO", "picklistOptions": "a,b"}],
        ["x"],
    ],
)
def test_invalid_definitions_are_refused(value: Any) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the messages are for people
        parse_definitions(value)


def test_null_means_no_definitions_and_definitions_round_trip() -> None:
    assert parse_definitions(None) is None
    assert DEFINITIONS is not None
    rendered = [d.to_json() for d in DEFINITIONS.values()]
    assert parse_definitions(rendered) == DEFINITIONS
    assert DEFINITIONS["plan"] == FieldDefinition("plan", "SINGLE_OPTIONS", "", ("Gold", "Silver"))
