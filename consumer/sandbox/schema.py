"""Request validation with HighLevel's answers: 400 for a body that is not a JSON object,
422 with class-validator style messages for everything the schema rejects.

The rules are the official ``UpsertContactDto`` (``highlevel/spec/apps_contacts.json``) compiled
by hand into one checker per property, so validating a request is one dictionary walk rather
than a generic JSON-schema evaluation. Message shapes follow NestJS/class-validator, as the
observed answers do (``property X should not exist``, ``X must be a string``,
``email must be an email``, ``each value in tags must be a string``). ``email`` is checked like
class-validator's ``IsEmail``: validator.js ``isEmail`` defaults (``consumer.sandbox.email``).

Sandbox choices where HighLevel documents nothing (listed in the report and README):
- ``null`` passes for every optional property (class-validator's IsOptional); the state clears
  nullable fields on ``null`` and ignores it on the others.
- ``phone`` must parse as a *possible* number (numbers without ``+`` are read as US numbers,
  a location's default country in HighLevel); it is stored in E.164.
- An upsert with neither email nor phone is refused (the integration guide lists it as a 422).
- ``customFields`` items are not checked beyond ``id``: unknown item keys are ignored and an item
  without ``field_value``/``fieldValue`` changes nothing (the silent failure n8n#20474 reports).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Any

import orjson
import phonenumbers

from consumer.sandbox.email import is_email

PHONE_DEFAULT_REGION = "US"

_DATE_YMD = re.compile(r"(\d{4})([/\-._])(\d{2})\2(\d{2})")
_DATE_MDY = re.compile(r"(\d{2})([/\-._])(\d{2})\2(\d{4})")
_DND_CHANNELS = frozenset({"Call", "Email", "SMS", "WhatsApp", "GMB", "FB"})
_DND_STATUSES = ("active", "inactive", "permanent")
_INBOUND_DND_STATUSES = ("active", "inactive")


class BadRequest(Exception):
    """The body is not a JSON object: HighLevel's 400 ``{"message": "Bad Request"}``."""


class Unprocessable(Exception):
    """The body breaks the schema: HighLevel's 422; ``messages`` is the answer's message array."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("; ".join(messages))
        self.messages = messages


def parse_object(raw: bytes) -> dict[str, Any]:
    """Decode a request body that must be a JSON object; BadRequest otherwise."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest from None
    if not isinstance(body, dict):
        raise BadRequest
    return body


def validate_upsert(body: dict[str, Any]) -> dict[str, Any]:
    """Return the normalised upsert payload (phone E.164, dateOfBirth ``YYYY-MM-DD``,
    customFields as ``(id, value)`` pairs, non-nullable ``null`` dropped); Unprocessable if the
    body breaks ``UpsertContactDto``. Called by the server for ``POST /contacts/upsert``.
    """
    errors: list[str] = []
    payload: dict[str, Any] = {}
    for key, value in body.items():
        check = _UPSERT.get(key)
        if check is None:
            errors.append(f"property {key} should not exist")
        elif value is None and key != "locationId":
            # IsOptional: null skips validation; only nullable fields keep it (to clear).
            if key in _NULLABLE:
                payload[key] = None
        else:
            payload[key] = check(key, value, errors)
    if "locationId" not in body:
        _location_id("locationId", None, errors)
    if not errors and not payload.get("email") and not payload.get("phone"):
        errors.append("email or phone must be provided")
    if errors:
        raise Unprocessable(errors)
    return payload


def validate_tags(body: dict[str, Any]) -> list[str]:
    """Return the tags of a ``TagsDTO`` body (``{"tags": [...]}``); Unprocessable otherwise."""
    errors = [f"property {key} should not exist" for key in body if key != "tags"]
    tags: list[str] = _string_list("tags", body.get("tags"), errors)
    if errors:
        raise Unprocessable(errors)
    return tags


def validate_dnd_settings(value: Any) -> dict[str, Any]:
    """Return ``value`` if it is a valid ``dndSettings`` object (channels ``Call``, ``Email``,
    ``SMS``, ``WhatsApp``, ``GMB``, ``FB``, each ``{status, message?, code?}``); Unprocessable
    otherwise. For the admin endpoint that sets a contact's DND as HighLevel would."""
    errors: list[str] = []
    _dnd_settings("dndSettings", value, errors)
    if errors:
        raise Unprocessable(errors)
    return dict(value)


def _string(name: str, value: Any, errors: list[str]) -> Any:
    if not isinstance(value, str):
        errors.append(f"{name} must be a string")
    return value


def _location_id(name: str, value: Any, errors: list[str]) -> Any:
    _string(name, value, errors)
    if not value:
        errors.append(f"{name} should not be empty")
    return value


def _boolean(name: str, value: Any, errors: list[str]) -> Any:
    if not isinstance(value, bool):
        errors.append(f"{name} must be a boolean value")
    return value


def _email(name: str, value: Any, errors: list[str]) -> Any:
    if not is_email(value):
        errors.append(f"{name} must be an email")
    return value


def _phone(name: str, value: Any, errors: list[str]) -> Any:
    phone = e164(value) if isinstance(value, str) else None
    if phone is None:
        errors.append(f"{name} must be a valid phone number")
        return value
    return phone


def e164(value: str) -> str | None:
    """``value`` in E.164, as an upsert's ``phone`` is stored (national numbers in
    ``PHONE_DEFAULT_REGION``); None when it is not a possible phone number."""
    try:
        number = phonenumbers.parse(value, PHONE_DEFAULT_REGION)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def parse_date(value: Any) -> str | None:
    """``YYYY-MM-DD`` for a date in one of the spec's ``dateOfBirth`` formats (``YYYY/MM/DD``,
    ``MM/DD/YYYY`` and the same with ``-``, ``.`` or ``_``); None for anything else."""
    if isinstance(value, str):
        if match := _DATE_YMD.fullmatch(value):
            year, month, day = match.group(1, 3, 4)
        elif match := _DATE_MDY.fullmatch(value):
            month, day, year = match.group(1, 3, 4)
        else:
            return None
        try:
            return dt.date(int(year), int(month), int(day)).isoformat()
        except ValueError:
            return None
    return None


def _date_of_birth(name: str, value: Any, errors: list[str]) -> Any:
    date = parse_date(value)
    if date is None:
        errors.append(f"{name} must be a valid date")
        return value
    return date


def _string_list(name: str, value: Any, errors: list[str]) -> Any:
    if not isinstance(value, list):
        errors.append(f"{name} must be an array")
    elif not all(isinstance(item, str) for item in value):
        errors.append(f"each value in {name} must be a string")
    return value


def _status_object(
    name: str, value: Any, errors: list[str], statuses: tuple[str, ...], keys: frozenset[str]
) -> None:
    if not isinstance(value, dict):
        errors.append(f"{name} must be an object")
        return
    errors.extend(f"property {name}.{key} should not exist" for key in value if key not in keys)
    if value.get("status") not in statuses:
        errors.append(f"{name}.status must be one of the following values: {', '.join(statuses)}")
    for key in keys - {"status"}:
        if key in value and not isinstance(value[key], str):
            errors.append(f"{name}.{key} must be a string")


def _dnd_settings(name: str, value: Any, errors: list[str]) -> Any:
    if not isinstance(value, dict):
        errors.append(f"{name} must be an object")
        return value
    for channel, setting in value.items():
        if channel not in _DND_CHANNELS:
            errors.append(f"property {name}.{channel} should not exist")
        else:
            keys = frozenset({"status", "message", "code"})
            _status_object(f"{name}.{channel}", setting, errors, _DND_STATUSES, keys)
    return value


def _inbound_dnd_settings(name: str, value: Any, errors: list[str]) -> Any:
    if not isinstance(value, dict):
        errors.append(f"{name} must be an object")
        return value
    for key, setting in value.items():
        if key != "all":
            errors.append(f"property {name}.{key} should not exist")
        else:
            keys = frozenset({"status", "message"})
            _status_object(f"{name}.all", setting, errors, _INBOUND_DND_STATUSES, keys)
    return value


def _custom_fields(name: str, value: Any, errors: list[str]) -> Any:
    if not isinstance(value, list):
        errors.append(f"{name} must be an array")
        return value
    pairs: list[tuple[str, Any]] = []
    for position, item in enumerate(value):
        if not isinstance(item, dict):
            errors.append(f"each value in {name} must be an object")
            continue
        field_id = item.get("id")
        if not isinstance(field_id, str) or not field_id:
            errors.append(f"{name}.{position}.id must be a string")
            continue
        for value_key in ("field_value", "fieldValue"):
            field_value = item.get(value_key)
            if field_value is None:
                continue
            if isinstance(field_value, bool) or not isinstance(
                field_value, str | int | float | list | dict
            ):
                errors.append(f"{name}.{position}.{value_key} has an unsupported type")
            else:
                pairs.append((field_id, field_value))
            break
    return pairs


_Check = Callable[[str, Any, list[str]], Any]

_UPSERT: dict[str, _Check] = {
    "locationId": _location_id,
    "firstName": _string,
    "lastName": _string,
    "name": _string,
    "email": _email,
    "gender": _string,
    "phone": _phone,
    "address1": _string,
    "city": _string,
    "state": _string,
    "postalCode": _string,
    "website": _string,
    "timezone": _string,
    "dnd": _boolean,
    "dndSettings": _dnd_settings,
    "inboundDndSettings": _inbound_dnd_settings,
    "tags": _string_list,
    "customFields": _custom_fields,
    "source": _string,
    "dateOfBirth": _date_of_birth,
    "country": _string,
    "companyName": _string,
    "assignedTo": _string,
    "createNewIfDuplicateAllowed": _boolean,
}

_NULLABLE = frozenset(
    {
        "firstName",
        "lastName",
        "name",
        "email",
        "phone",
        "address1",
        "city",
        "state",
        "website",
        "timezone",
        "dateOfBirth",
        "companyName",
    }
)
