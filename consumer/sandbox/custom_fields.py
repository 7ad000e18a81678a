"""Per-location custom field definitions, and what an upsert's ``customFields`` become under them.

HighLevel knows each location's custom fields (``GET /locations/{locationId}/customFields``:
``id``, ``fieldKey``, ``dataType``, ``picklistOptions``; spec ``apps/locations.json``,
``CustomFieldSchema``). Callers of the live API report (docs/highlevel.md, "Known pitfalls")
that an upsert's custom field with an id the location does not have is dropped silently, that
values are converted by the field's type, and that picklist values are checked. The sandbox
reproduces this once a location has definitions (``PUT /_sandbox/custom-fields``,
``--custom-fields``); a location without any keeps storing every id and value as sent, which is
what tests written before them rely on.

Conversions (the types are the spec's ``dataType`` enum; where the reports say nothing precise,
the rule is the sandbox's choice):

==========================================  ==============================================
data type                                   value stored
==========================================  ==============================================
``TEXT``, ``LARGE_TEXT``, ``PHONE``,        a string; a number becomes its JavaScript text
``EMAIL``                                   (``100``, ``100.5``); a list or object is 422
``NUMERICAL``, ``MONETORY``                 a number; a numeric string is parsed (``"42"``
                                            -> ``42``, ``"100.50"`` -> ``100.5``); an
                                            integral value is stored as an integer; else 422
``SINGLE_OPTIONS``, ``RADIO``               a string that is one of ``picklistOptions``
                                            (exact spelling); else 422
``CHECKBOX``, ``MULTIPLE_OPTIONS``          a list of strings, each one of
                                            ``picklistOptions``; a single string becomes a
                                            one-item list; else 422
``DATE``                                    ``YYYY-MM-DD`` from the ``dateOfBirth`` formats,
                                            or from epoch milliseconds (UTC); else 422
``TEXTBOX_LIST``, ``FILE_UPLOAD``           as sent
==========================================  ==============================================

A refused value answers 422 ``customFields.<id> must be ...`` and nothing of the request is
applied (a sandbox choice: the live answer is unreported).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from consumer.sandbox.schema import Unprocessable, parse_date

_TEXT = frozenset({"TEXT", "LARGE_TEXT", "PHONE", "EMAIL"})
_NUMBER = frozenset({"NUMERICAL", "MONETORY"})
_ONE_OPTION = frozenset({"SINGLE_OPTIONS", "RADIO"})
_OPTIONS = frozenset({"CHECKBOX", "MULTIPLE_OPTIONS"})
_AS_SENT = frozenset({"TEXTBOX_LIST", "FILE_UPLOAD"})
DATA_TYPES = _TEXT | _NUMBER | _ONE_OPTION | _OPTIONS | _AS_SENT | {"DATE"}
"""The spec's ``dataType`` values (``apps/custom-fields.json``, ``CreateCustomFieldsDTO``)."""


@dataclass(frozen=True, slots=True)
class FieldDefinition:
    """One custom field of a location, as ``GET /locations/{id}/customFields`` lists it."""

    id: str
    data_type: str
    field_key: str = ""
    picklist_options: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("a custom field needs an id")
        if self.data_type not in DATA_TYPES:
            raise ValueError(
                f"custom field {self.id}: dataType must be one of {', '.join(sorted(DATA_TYPES))}"
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "fieldKey": self.field_key,
            "dataType": self.data_type,
            "picklistOptions": list(self.picklist_options),
        }

    @classmethod
    def from_json(cls, item: Any) -> FieldDefinition:
        """From ``{"id", "dataType", "fieldKey"?, "picklistOptions"?}`` (other keys of
        HighLevel's listing are ignored); ValueError when it is not one."""
        if not isinstance(item, Mapping):
            raise ValueError("each custom field must be an object")
        field_id, data_type = item.get("id"), item.get("dataType")
        field_key, options = item.get("fieldKey", ""), item.get("picklistOptions", [])
        if not isinstance(field_id, str) or not isinstance(data_type, str):
            raise ValueError("a custom field needs a string id and dataType")
        if not isinstance(field_key, str):
            raise ValueError(f"custom field {field_id}: fieldKey must be a string")
        if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
            raise ValueError(f"custom field {field_id}: picklistOptions must be strings")
        return cls(field_id, data_type, field_key, tuple(options))


def parse_definitions(value: Any) -> dict[str, FieldDefinition] | None:
    """Definitions by id from a JSON list (None for ``null``: the location keeps any field);
    ValueError for anything else or a repeated id."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise ValueError("customFields must be a list or null")
    definitions: dict[str, FieldDefinition] = {}
    for item in value:
        definition = FieldDefinition.from_json(item)
        if definition.id in definitions:
            raise ValueError(f"custom field {definition.id} is defined twice")
        definitions[definition.id] = definition
    return definitions


def convert(
    definitions: Mapping[str, FieldDefinition], pairs: Sequence[tuple[str, Any]]
) -> tuple[list[tuple[str, Any]], tuple[str, ...]]:
    """The ``(id, value)`` pairs an upsert stores under ``definitions`` (values converted), and
    the ids dropped because the location has no such field. Raises Unprocessable, listing every
    refused value, when a value does not fit its field (rules in the module docstring)."""
    kept: list[tuple[str, Any]] = []
    dropped: list[str] = []
    errors: list[str] = []
    for field_id, value in pairs:
        definition = definitions.get(field_id)
        if definition is None:
            dropped.append(field_id)
            continue
        converted, problem = _convert(definition, value)
        if problem:
            errors.append(f"customFields.{field_id} must be {problem}")
        else:
            kept.append((field_id, converted))
    if errors:
        raise Unprocessable(errors)
    return kept, tuple(dropped)


def _convert(definition: FieldDefinition, value: Any) -> tuple[Any, str]:
    """The stored value and "" or, when refused, None and what it must be."""
    data_type, options = definition.data_type, definition.picklist_options
    if data_type in _TEXT:
        if isinstance(value, str):
            return value, ""
        if isinstance(value, int | float):
            return _js_number_text(value), ""
        return None, "a string"
    if data_type in _NUMBER:
        number = _number(value)
        return (number, "") if number is not None else (None, "a number")
    if data_type in _ONE_OPTION:
        if isinstance(value, str) and value in options:
            return value, ""
        return None, f"one of: {', '.join(options)}"
    if data_type in _OPTIONS:
        chosen = [value] if isinstance(value, str) else value
        if isinstance(chosen, list) and all(isinstance(c, str) and c in options for c in chosen):
            return chosen, ""
        return None, f"a list of: {', '.join(options)}"
    if data_type == "DATE":
        date = _date(value)
        return (date, "") if date is not None else (None, "a valid date")
    return value, ""  # _AS_SENT


def _number(value: Any) -> int | float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return int(value) if float(value).is_integer() else float(value)


def _js_number_text(value: int | float) -> str:
    """``String(value)`` in JavaScript for ordinary numbers: ``100``, ``100.5``."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _date(value: Any) -> str | None:
    if isinstance(value, int | float) and math.isfinite(value):
        try:
            return dt.datetime.fromtimestamp(value / 1000, dt.UTC).date().isoformat()
        except (OverflowError, OSError, ValueError):
            return None
    return parse_date(value)
