"""Field extraction: what one event says, field by field, type- and size-checked.

Rules (``docs/architecture.md``, "Mapping rules"):

- Identity fields come from, highest precedence first: ``traits`` (not on group/alias calls,
  whose traits describe a group), ``context.traits``, ``properties`` (only for track events a
  target maps), then the stored profile. Per field the first *usable* value wins (an invalid
  email in ``traits`` falls through to ``context.traits``). snake_case wins over camelCase
  within one container; a top-level ``city`` wins over ``address.city``.
- Consent for a target's category (names matched ignoring case): first decision on the event
  (``context.consent`` views, then RudderStack's ``context.consentManagement``), else the last
  known one, else none.
- A field the mapping reads with the wrong JSON type, or a string over ``max_field_chars``,
  rejects the whole record: the readers here raise ``InvalidField`` carrying that ``Reject``.

Pure functions of their arguments; ``consumer.core.mapping`` calls them and decides.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from consumer.core.decode import Limits, too_long, wrong_type
from consumer.core.events import IDENTITY_FIELDS, CustomValue, Event, PresetEvent, Reject
from consumer.core.normalise import (
    PHONE_REGIONS,
    normalise_country,
    normalise_date_of_birth,
    normalise_email,
    normalise_text,
    normalise_timezone,
)
from consumer.core.profiles import Profile
from consumer.core.targets import Target

# The one table of trait names collectors write, per HighLevel field, highest precedence
# first within one container (snake_case before camelCase). Each name is also accepted
# lowercased and capitalised (``firstName``, ``firstname``, ``FirstName``, ``Firstname``).
TRAIT_NAMES: Final[Mapping[str, tuple[str, ...]]] = {
    "email": ("email", "email_address", "emailAddress"),
    "phone": ("phone", "phone_number", "phoneNumber", "mobile", "mobile_phone", "mobilePhone"),
    "firstName": ("first_name", "firstName", "given_name", "givenName"),
    "lastName": ("last_name", "lastName", "family_name", "familyName", "surname"),
    "name": ("name", "full_name", "fullName"),
    "companyName": ("company_name", "companyName"),  # and ``company``: see _read_traits
    "address1": ("address1", "address_1", "address_line1", "addressLine1", "street"),
    "city": ("city",),
    "state": ("state", "province"),
    "postalCode": (
        "postal_code", "postalCode", "zip", "zipcode", "zip_code", "zipCode", "postcode",
        "post_code",
    ),
    "country": ("country", "country_code", "countryCode"),
    "website": ("website",),
    "dateOfBirth": ("birthday", "date_of_birth", "dateOfBirth", "dob", "birthdate", "birth_date"),
    "timezone": ("timezone", "time_zone", "timeZone"),
    "gender": ("gender",),
}
# Inside ``address`` (Segment's reserved trait): the same, with ``line1``/``line2``.
ADDRESS_NAMES: Final[Mapping[str, tuple[str, ...]]] = {
    "address1": ("line1", "line_1", "street", "address1", "street1"),
    "city": TRAIT_NAMES["city"],
    "state": TRAIT_NAMES["state"],
    "postalCode": TRAIT_NAMES["postalCode"],
    "country": TRAIT_NAMES["country"],
}
_LINE2: Final = ("line2", "line_2", "street2", "address2")


def _spellings(names: Mapping[str, tuple[str, ...]]) -> dict[str, tuple[int, str]]:
    """key as sent -> (rank, HighLevel field): every name with its lower/capitalised variants."""
    table: dict[str, tuple[int, str]] = {}
    for field_name, bases in names.items():
        for base in bases:
            for key in (base, base.lower(), base[:1].upper() + base[1:], base.capitalize()):
                table.setdefault(key, (len(table), field_name))
    return table


_TRAIT_KEYS: Final = _spellings(TRAIT_NAMES)
_ADDRESS_KEYS: Final = _spellings(ADDRESS_NAMES)
_COMPANY_KEYS: Final = frozenset(("company", "Company"))
_ADDRESS_OBJECT_KEYS: Final = frozenset(("address", "Address"))
_LINE2_KEYS: Final = frozenset(k for base in _LINE2 for k in (base, base.capitalize()))
# Ranks: top-level names first, then ``company``, then ``address`` (and its fields).
_COMPANY_RANK: Final = len(_TRAIT_KEYS)
_ADDRESS_RANK: Final = _COMPANY_RANK + 1
_OBJECT: Final = "a string or an object"
# Fields where a JSON number is accepted and used as its decimal text.
_NUMERIC_OK: Final = frozenset(("phone", "postalCode"))
# Every identity field but phone (its normalisation depends on a region): text is trimmed.
_NORMALISERS: Final[dict[str, Callable[[str], str | None]]] = {
    **{name: normalise_text for name in IDENTITY_FIELDS if name != "phone"},
    "email": normalise_email,
    "country": normalise_country,
    "dateOfBirth": normalise_date_of_birth,
    "timezone": normalise_timezone,
}

# (source, tags, custom fields) of a mapped event for one target
Extras = tuple[str | None, tuple[str, ...], dict[str, CustomValue]]


class InvalidField(Exception):
    """A field the mapping reads is unusable: carries the record-level Reject to return."""

    def __init__(self, reject: Reject) -> None:
        super().__init__(reject.error)
        self.reject = reject


@dataclass(frozen=True, slots=True)
class Candidate:
    """One value for an identity field, as found on the event."""

    path: str  # where it was read, for error messages
    value: str


def _wrong_type(path: str, expected: str, value: object) -> InvalidField:
    return InvalidField(wrong_type(path, expected, value))


def _check_length(path: str, value: str, limits: Limits) -> None:
    if len(value) > limits.max_field_chars:
        raise InvalidField(too_long(path, value, limits))


# -- identity ------------------------------------------------------------------------------


def read_candidates(
    event: Event, limits: Limits, *, with_properties: bool
) -> dict[str, list[Candidate]]:
    """Identity values by HighLevel field, in precedence order. Raises ``InvalidField``."""
    candidates: dict[str, list[Candidate]] = {}
    if event.traits and event.type not in ("group", "alias"):
        _read_traits(event.traits, "traits", candidates, limits)
    context_traits = event.context.get("traits")
    if context_traits is not None:
        if not isinstance(context_traits, dict):
            raise _wrong_type("context.traits", "an object", context_traits)
        _read_traits(context_traits, "context.traits", candidates, limits)
    if with_properties and event.properties:
        _read_traits(event.properties, "properties", candidates, limits)
    return candidates


def _read_traits(
    container: Mapping[str, object],
    prefix: str,
    out: dict[str, list[Candidate]],
    limits: Limits,
) -> None:
    # Walk the container's keys (few) rather than the table (many), then add in table order.
    found: list[tuple[int, str, str, object, str]] = []
    for key, value in container.items():
        if value is None:
            continue
        spec = _TRAIT_KEYS.get(key)
        if spec is not None:
            found.append((*spec, f"{prefix}.{key}", value, "a string"))
        elif key in _COMPANY_KEYS:
            if isinstance(value, dict):
                name = value.get("name")
                if name is not None:
                    found.append(
                        (_COMPANY_RANK, "companyName", f"{prefix}.{key}.name", name, "a string")
                    )
            else:
                found.append((_COMPANY_RANK, "companyName", f"{prefix}.{key}", value, _OBJECT))
        elif key in _ADDRESS_OBJECT_KEYS:
            if isinstance(value, dict):
                found.extend(_read_address(value, f"{prefix}.{key}", limits))
            else:
                found.append((_ADDRESS_RANK, "address1", f"{prefix}.{key}", value, _OBJECT))
    found.sort(key=lambda item: item[0])
    for _rank, field_name, path, value, expected in found:
        _add(out, field_name, path, value, limits, expected)


def _read_address(
    address: Mapping[str, object], prefix: str, limits: Limits
) -> list[tuple[int, str, str, object, str]]:
    """Fields of an ``address`` object, ranked after every top-level trait; ``line2`` joined to
    the street line with ``", "``."""
    found: list[tuple[int, str, str, object, str]] = []
    line2: str | None = None
    for key, value in address.items():
        if value is None:
            continue
        spec = _ADDRESS_KEYS.get(key)
        if spec is not None:
            rank, field_name = spec
            path = f"{prefix}.{key}"
            found.append((_ADDRESS_RANK + 1 + rank, field_name, path, value, "a string"))
        elif key in _LINE2_KEYS and isinstance(value, str):
            _check_length(f"{prefix}.{key}", value, limits)
            line2 = normalise_text(value)
    if line2 is not None:
        found = [
            (rank, name, path, f"{value.strip()}, {line2}", expected)
            if name == "address1" and isinstance(value, str) and value.strip()
            else (rank, name, path, value, expected)
            for rank, name, path, value, expected in found
        ]
    return found


def _add(
    out: dict[str, list[Candidate]],
    field_name: str,
    path: str,
    value: object,
    limits: Limits,
    expected: str = "a string",
) -> None:
    if isinstance(value, str):
        _check_length(path, value, limits)
        text = value
    elif field_name in _NUMERIC_OK and isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    else:
        raise _wrong_type(path, expected, value)
    out.setdefault(field_name, []).append(Candidate(path, text))


def resolve_common(candidates: Mapping[str, list[Candidate]], stored: Profile) -> dict[str, str]:
    """Every identity field but phone: first usable event value, else the stored one."""
    fields: dict[str, str] = {}
    for field_name, values in candidates.items():
        if field_name == "phone":
            continue
        normalise = _NORMALISERS[field_name]
        for candidate in values:
            normalised = normalise(candidate.value)
            if normalised is not None:
                fields[field_name] = normalised
                break
    for field_name, value in stored.fields.items():
        if field_name != "phone" and field_name not in fields:
            fields[field_name] = value
    return fields


def phone_region(common: Mapping[str, str], default: str | None) -> str | None:
    """Phone region: the resolved country when phonenumbers knows it, else the default."""
    country = common.get("country")
    if country is not None and country in PHONE_REGIONS:
        return country
    return default


def no_identifier_error(
    candidates: Mapping[str, list[Candidate]],
    removed: frozenset[str],
    phone_problems: Sequence[str],
) -> str:
    """The ``no_identifier`` reject's message: why no email or phone was usable."""
    details = [f"{c.path} is not a valid email address" for c in candidates.get("email", ())]
    details += phone_problems
    details += [f"the {name} mapping is removed" for name in ("email", "phone") if name in removed]
    message = "neither a usable email nor phone on the event or in the stored profile"
    return f"{message}: {'; '.join(details)}" if details else message


# -- per-target extras ---------------------------------------------------------------------


def read_extras(event: Event, target: Target, action: PresetEvent, limits: Limits) -> Extras:
    """(source, tags, custom fields) of an event mapped as ``action`` for ``target``.
    Raises ``InvalidField``."""
    source: str | None = None
    tags: tuple[str, ...] = ()
    if action is PresetEvent.SIGNED_UP:
        source = _text_property(event, "method", limits)
    elif action is PresetEvent.LEAD_GENERATED:
        source = _text_property(event, "source", limits)
        tag = _text_property(event, "lead_tag", limits)
        if tag is not None:
            tags = (tag,)
    custom: dict[str, CustomValue] = {}
    for mapping in target.custom_fields:
        value = _custom_value(mapping.source_text, event.lookup(mapping.source), limits)
        if value is not None:
            custom[mapping.field_id] = value
    return source, tags, custom


def _text_property(event: Event, key: str, limits: Limits) -> str | None:
    value = event.properties.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _wrong_type(f"properties.{key}", "a string", value)
    _check_length(f"properties.{key}", value, limits)
    return normalise_text(value)


def _custom_value(path: str, value: object, limits: Limits) -> CustomValue | None:
    if value is None:
        return None
    if isinstance(value, str):
        _check_length(path, value, limits)
        return normalise_text(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        for item in value:
            _check_length(path, item, limits)
        return tuple(value)
    raise _wrong_type(path, "a string, number or list of strings", value)


# -- consent -------------------------------------------------------------------------------


def consent_decisions(event: Event, categories: frozenset[str]) -> dict[str, bool]:
    """Consent decisions on the event for ``categories`` (granted -> True). First match wins:
    ``context.consent.canonical``, ``.categories``, ``context.consent[cat]``,
    ``.categoryPreferences``, then RudderStack's ``context.consentManagement`` (denied ids
    checked before allowed ones, so a contradiction errs on the side of do-not-disturb).
    Raises ``InvalidField``."""
    context = event.context
    consent = context.get("consent")
    management = context.get("consentManagement")
    if consent is None and management is None:
        return {}
    if consent is not None and not isinstance(consent, dict):
        raise _wrong_type("context.consent", "an object", consent)
    if management is not None and not isinstance(management, dict):
        raise _wrong_type("context.consentManagement", "an object", management)
    decisions: dict[str, bool] = {}
    for category in sorted(categories):
        decision = _consent_decision(consent or {}, management or {}, category)
        if decision is not None:
            decisions[category] = decision
    return decisions


def _consent_decision(
    consent: Mapping[str, object], management: Mapping[str, object], category: str
) -> bool | None:
    for view in ("canonical", "categories"):
        decision = _bool_view(consent, view, category)
        if decision is not None:
            return decision
    direct = _get_category(consent, category)
    if direct is not None:
        if isinstance(direct, bool):
            return direct
        if direct in ("granted", "denied"):
            return direct == "granted"
        raise _wrong_type(f"context.consent.{category}", 'a boolean, "granted" or "denied"', direct)
    decision = _bool_view(consent, "categoryPreferences", category)
    if decision is not None:
        return decision
    for ids_key, granted in (("deniedConsentIds", False), ("allowedConsentIds", True)):
        ids = management.get(ids_key)
        if ids is None:
            continue
        # A list of ids; older RudderStack SDKs send an object keyed by id.
        if not isinstance(ids, list | dict):
            raise _wrong_type(f"context.consentManagement.{ids_key}", "an array", ids)
        if category in ids or any(
            isinstance(id_, str) and id_.casefold() == category.casefold() for id_ in ids
        ):
            return granted
    return None


def _bool_view(consent: Mapping[str, object], view: str, category: str) -> bool | None:
    table = consent.get(view)
    if table is None:
        return None
    if not isinstance(table, dict):
        raise _wrong_type(f"context.consent.{view}", "an object", table)
    value = _get_category(table, category)
    if value is None or isinstance(value, bool):
        return value
    raise _wrong_type(f"context.consent.{view}.{category}", "a boolean", value)


def _get_category(table: Mapping[str, object], category: str) -> object | None:
    """``table[category]``, else the first key equal to it ignoring case (Segment's docs
    capitalise category ids: ``Marketing``)."""
    value = table.get(category)
    if value is not None:
        return value
    folded = category.casefold()
    for key, candidate in table.items():
        if key.casefold() == folded and candidate is not None:
            return candidate
    return None
